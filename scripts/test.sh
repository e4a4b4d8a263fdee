#!/usr/bin/env bash
# The project's single test command: formatting, lints, unit and integration tests.
#
#   scripts/test.sh            # from anywhere inside the repository
#
# On Debian/Ubuntu as root it first installs what the integration tests need, but only what is
# missing (so it is quick on a prepared machine): systemd, dbus and util-linux tools for the
# sandboxed systemd the tests run, and promtool (Debian package `prometheus`) to lint /metrics;
# for the end-to-end tests Prometheus and Alertmanager (`prometheus`, `prometheus-alertmanager`),
# node and npm, and the reference StatsD server (npm package `statsd`, into target/npm); for the
# landing page test Chromium (`chromium`) and playwright-core (npm, into target/npm); for the
# package tests dpkg-dev, binutils, groff-base, man-db, lintian and logrotate. Also as root it
# fetches the systemd versions the sandbox runs besides the host's (254 and 257, into
# target/systemd; see scripts/lib/systemd-versions.sh), once: later runs find them cached.
# The Rust toolchain itself (cargo, rustfmt, clippy) is expected to be installed already.
#
# Without root the sandbox tests cannot run; they print why and count as skipped. With CI=true
# (as .ci/run sets) every skip is a failure, as is a missing rustfmt.
#
# Environment: CI=true (strict mode), CARGO_TARGET_DIR (respected), CRASHWATCH_TEST_KEEP=1
# (keep the tests' sandbox directories for post-mortems).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/lib/apt.sh
source scripts/lib/apt.sh

step() { printf '\n==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}
strict() { [ "${CI:-}" = true ]; }

is_root() { [ "$(id -u)" = 0 ]; }


# ------------------------------------------------------------------------------------------ system
missing_packages() {
  local pkgs=() sandbox
  # The end-to-end tests run the real servers: /usr/bin/prometheus comes with promtool.
  { have promtool && [ -x /usr/bin/prometheus ]; } || pkgs+=(prometheus)
  [ -x /usr/bin/prometheus-alertmanager ] || pkgs+=(prometheus-alertmanager)
  read -r -a sandbox <<<"$(sandbox_missing_packages)"
  pkgs+=("${sandbox[@]}")
  # node and npm run the reference StatsD server (npm package statsd, installed below).
  { have node && have npm; } || pkgs+=(nodejs npm)
  # scripts/package.sh and its tests: dpkg-shlibdeps, strip, groff and man to render the
  # manual pages, lintian to judge the package, logrotate to run the one it installs.
  have dpkg-shlibdeps || pkgs+=(dpkg-dev)
  have strip || pkgs+=(binutils)
  have groff || pkgs+=(groff-base)
  have man || pkgs+=(man-db)
  have lintian || pkgs+=(lintian)
  have logrotate || pkgs+=(logrotate)
  # The web tests: certificates made at test time, bcrypt hashes as operators make them.
  have openssl || pkgs+=(openssl)
  have htpasswd || pkgs+=(apache2-utils)
  # The landing page test opens the page in a real headless Chromium.
  [ -x /usr/bin/chromium ] || pkgs+=(chromium)
  # The actions' tests: an HTTPS receiver and a proxy in Python, curl to read a TLS Alertmanager,
  # and the system CA bundle the client trusts by default.
  have python3 || pkgs+=(python3)
  have curl || pkgs+=(curl)
  # The fleet test links each node's network namespace to the host with a veth pair.
  have ip || pkgs+=(iproute2)
  [ -f /etc/ssl/certs/ca-certificates.crt ] || pkgs+=(ca-certificates)
  echo "${pkgs[@]}"
}

install_packages() {
  local pkgs
  read -r -a pkgs <<<"$(missing_packages)"
  if [ "${#pkgs[@]}" -eq 0 ]; then
    note "all present (prometheus, promtool, alertmanager, node, npm, dbus-daemon, systemd, unshare, nsenter, setpriv, script, dpkg-dev, groff, man, lintian, logrotate, chromium)"
    return
  fi
  note "missing: ${pkgs[*]}"
  if ! is_root || ! have apt-get; then
    note "cannot install them here (needs root and apt-get); the tests that need them will skip"
    return
  fi
  note "installing with apt-get: ${pkgs[*]}"
  apt_install_quietly "${pkgs[@]}" || die "apt-get install ${pkgs[*]} failed"
  read -r -a pkgs <<<"$(missing_packages)"
  [ "${#pkgs[@]}" -eq 0 ] || die "still missing after install: ${pkgs[*]}"
}

step "System packages for the integration tests"
install_packages
if is_root; then
  note "running as root: sandboxed-systemd tests will run"
elif strict; then
  die "CI=true but not running as root: the sandboxed-systemd tests would be skipped"
else
  note "not root: sandboxed-systemd tests will be skipped (each prints its reason)"
fi

# The end-to-end StatsD test feeds crashwatch's output to the reference StatsD server, and the
# landing page test drives Chromium with playwright-core. Both live in target/npm (git-ignored
# with target/), where tests/support/servers.rs and tests/integration/landing.rs look for them.
# One npm install puts both there: an install with --no-save removes what it was not asked for.
STATSD_NPM=statsd@0.9.0
PLAYWRIGHT_NPM=playwright-core@1.65.2
step "npm packages for the tests ($STATSD_NPM, $PLAYWRIGHT_NPM)"
if [ -f target/npm/node_modules/statsd/stats.js ] &&
  [ -f target/npm/node_modules/playwright-core/package.json ]; then
  note "present in target/npm"
elif have npm; then
  # --omit=optional: statsd's optional syslog module builds native code the tests do not use.
  npm install --no-save --no-audit --no-fund --omit=optional --prefix target/npm \
    "$STATSD_NPM" "$PLAYWRIGHT_NPM" || die "npm install $STATSD_NPM $PLAYWRIGHT_NPM failed"
  note "installed in target/npm"
else
  note "npm not found: the StatsD end-to-end test and the landing page test will skip"
fi

# The sandbox runs systemd 254 and 257 as well as the host's; tests on those versions need them
# cached in target/systemd (git-ignored with target/).
step "systemd versions for the sandbox (254, 257 and the host's systemd-coredump in target/systemd)"
if is_root; then
  # shellcheck source=scripts/lib/systemd-versions.sh
  source scripts/lib/systemd-versions.sh
  if systemd_versions_fetch 254 257 coredump; then
    note "ok"
  elif strict; then
    die "could not fetch systemd 254, 257 and systemd-coredump: the tests needing them would be skipped"
  else
    note "could not fetch them: the tests on those versions will skip"
  fi
else
  note "not root: cannot fetch them; the tests on those versions will skip unless already cached"
fi

# ------------------------------------------------------------------------------------------ rust
have cargo || die "cargo not found; install a Rust toolchain (rustup) first"
note "$(cargo --version)"
# Build exactly the committed dependency versions when there is a lock file.
locked=()
if [ -f Cargo.lock ]; then locked=(--locked); fi

step "Formatting (cargo fmt --check)"
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all -- --check
  note "ok"
elif strict; then
  die "rustfmt is not installed (rustup component add rustfmt)"
else
  note "rustfmt not installed, skipping (rustup component add rustfmt)"
fi

step "Lints (cargo clippy --all-targets --test conformance -- -D warnings)"
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --all-targets --test conformance "${locked[@]}" -- -D warnings
  note "ok"
elif strict; then
  die "clippy is not installed (rustup component add clippy)"
else
  note "clippy not installed, skipping (rustup component add clippy)"
fi

step "Alert rules and dashboards (promtool)"
if have promtool; then
  bash scripts/check-alerts.sh
elif strict; then
  die "promtool is missing: cannot check alerts/ and dashboards/"
else
  note "promtool not installed, skipping"
fi

step "Tests"
if cargo nextest --version >/dev/null 2>&1; then
  note "runner: cargo nextest"
  # nextest does not run doctests; the crate has none, and its summary stays the last word.
  cargo nextest run "${locked[@]}" --no-fail-fast
else
  note "runner: cargo test (cargo-nextest not installed)"
  cargo test "${locked[@]}" --no-fail-fast
fi

# Real systemd behaviours x versions, crashwatch's verdicts against systemd's own account and the
# journal's (test = false keeps it out of the runs above); a failing case fails the script.
step "Conformance matrix (systemd 252, 254, 257; table in target/conformance/CONFORMANCE.md)"
bash scripts/conformance.sh --write target/conformance/CONFORMANCE.md

# Bounded fuzzing of the parsers that take outside input: always in CI, elsewhere on request.
fuzz_seconds=${CRASHWATCH_FUZZ_SECONDS:-}
if [ -z "$fuzz_seconds" ] && strict; then fuzz_seconds=20; fi
if [ -n "$fuzz_seconds" ]; then
  step "Fuzzing (${fuzz_seconds} s per target)"
  bash scripts/fuzz.sh "$fuzz_seconds"
fi

step "All checks passed"
