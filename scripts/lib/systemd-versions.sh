# shellcheck shell=bash
# Fetches and caches the systemd versions the test sandbox can run besides the host's own.
#
# crashwatch must understand what systemd says on the bus, and that changes between versions
# (254 added SubStates such as auto-restart-queued). The sandbox (tests/support/systemd-sandbox.sh,
# SDTEST_SYSTEMD=252|254|257) runs the host's systemd by default; these are the others:
#
#   254  bookworm-backports, built for Debian 12: the packages systemd, libsystemd-shared and
#        libsystemd0 unpacked (dpkg-deb -x) and merged into target/systemd/254/usr, which the
#        sandbox lays over the host's /usr inside its own mount namespace.
#   257  trixie, built against a newer glibc, so it needs a root of its own:
#        `debootstrap --variant=minbase` into target/systemd/257/root, with systemd and dbus.
#
# Each version's directory gets a `.complete` marker only once everything in it is in place, so an
# interrupted fetch is done again from scratch and a cached one costs a few stat calls. The
# directory also keeps `version`, the exact Debian version string of the systemd it holds.
#
# Packages come from the Debian mirror the machine's apt already uses, read through a sources file
# and lists of our own under target/systemd/apt/: the host's apt configuration is never changed.
#
# Besides: `coredump`, the host version's systemd-coredump, unpacked into target/systemd/coredump
# for the crash-context test (see _sdv_fetch_coredump).
#
# Use:  bash scripts/lib/systemd-versions.sh [254] [257] [coredump]   (254 and 257 when none is
#       named; needs root)  or  source it and call `systemd_versions_fetch 254 257 coredump`.
# Environment: SDTEST_SYSTEMD_CACHE (default: target/systemd in the repository; the sandbox
# script reads the same variable).

_sdv_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SYSTEMD_CACHE=${SDTEST_SYSTEMD_CACHE:-$_sdv_repo/target/systemd}

_sdv_log() { printf '    [systemd-versions] %s\n' "$*" >&2; }

_sdv_now() { date +%s.%N; }
_sdv_since() { awk "BEGIN{printf \"%.1f\", $(_sdv_now) - $1}"; }

# The Debian mirror the host's apt uses (its URI for the "debian" archive, not debian-security),
# from one-line and deb822 sources alike. Prints nothing when there is none.
_sdv_mirror() {
  local f files=()
  [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && files+=("$f")
  done
  [ "${#files[@]}" -gt 0 ] || return 0
  # Every URI on a line that is not a comment; deb lines may carry [options] before the URI.
  sed -e 's/#.*//' "${files[@]}" |
    grep -oE '(https?|file)://[^][ ]+' |
    sed -e 's:/*$::' |
    grep -E '/debian$' |
    head -n 1 || true
}

# apt-get and apt-cache on our own sources file, lists and archive directory.
_sdv_apt_opts() {
  local a=$SYSTEMD_CACHE/apt
  printf '%s\n' \
    -o "Dir::Etc::sourcelist=$a/sources.list" -o "Dir::Etc::sourceparts=-" \
    -o "Dir::State::Lists=$a/lists" -o "Dir::Cache::archives=$a/archives" \
    -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=" \
    -o "Dir::State::status=$a/empty-status" \
    -o "APT::Get::List-Cleanup=0"
}

# Writes the sources file for the suites given (bookworm-backports, ...) and updates its lists.
_sdv_apt_update() {
  local mirror=$1 a=$SYSTEMD_CACHE/apt suite opts
  shift
  mkdir -p "$a/lists/partial" "$a/archives/partial"
  : >"$a/empty-status"
  : >"$a/sources.list"
  for suite in "$@"; do
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" >>"$a/sources.list"
  done
  mapfile -t opts < <(_sdv_apt_opts)
  # The lists belong to root; apt's unprivileged download user could not write them.
  apt-get -qq "${opts[@]}" -o APT::Sandbox::User=root update >&2
}

# ------------------------------------------------------------------------------------------ 254
_sdv_fetch_254() {
  local dir=$SYSTEMD_CACHE/254 mirror=$1 t0 debs=() p d opts version
  t0=$(_sdv_now)
  rm -rf --one-file-system "$dir"
  mkdir -p "$dir/debs" "$dir/unpacked"
  _sdv_log "254: fetching systemd, libsystemd-shared, libsystemd0 from bookworm-backports"
  _sdv_apt_update "$mirror" bookworm-backports || return 1
  mapfile -t opts < <(_sdv_apt_opts)
  (cd "$dir/debs" && apt-get -qq "${opts[@]}" -o APT::Sandbox::User=root download \
    systemd/bookworm-backports libsystemd-shared/bookworm-backports libsystemd0/bookworm-backports) >&2 ||
    return 1
  for p in systemd libsystemd-shared libsystemd0; do
    debs=("$dir"/debs/"${p}"_*.deb)
    [ -f "${debs[0]}" ] || {
      _sdv_log "254: $p was not downloaded"
      return 1
    }
    dpkg-deb -x "${debs[0]}" "$dir/unpacked" || return 1
  done
  version=$(dpkg-deb -f "$dir"/debs/systemd_*.deb Version)
  case "$version" in
    254.*) ;;
    *)
      _sdv_log "254: bookworm-backports has systemd $version, not 254"
      return 1
      ;;
  esac
  # The packages still put files in /bin and /lib; on a merged-/usr system those are /usr/bin
  # and /usr/lib. The sandbox lays usr/ over the host's /usr inside its mount namespace, so that
  # /lib/systemd/systemd, systemctl, journalctl, systemd-journald and libsystemd.so.0 are all
  # 254's at their usual paths and every binary finds its own libraries without LD_LIBRARY_PATH.
  mkdir -p "$dir/usr"
  cp -a "$dir/unpacked/usr/." "$dir/usr/"
  for d in bin sbin lib; do
    if [ -d "$dir/unpacked/$d" ]; then
      mkdir -p "$dir/usr/$d"
      cp -a "$dir/unpacked/$d/." "$dir/usr/$d/"
    fi
  done
  echo "$version" >"$dir/version"
  # A smoke test: it must run with the host's glibc and its own libraries.
  LD_LIBRARY_PATH=$(systemd_254_library_path "$dir") "$dir/usr/lib/systemd/systemd" --version >/dev/null || {
    _sdv_log "254: the unpacked systemd does not run here"
    return 1
  }
  rm -rf "$dir/debs" "$dir/unpacked"
  touch "$dir/.complete"
  _sdv_log "254: systemd $version unpacked into $dir/usr in $(_sdv_since "$t0") s"
}

# The LD_LIBRARY_PATH that runs the unpacked 254 from the host's root: its private
# libsystemd-shared and its libsystemd0.
systemd_254_library_path() {
  local usr=${1:-$SYSTEMD_CACHE/254}/usr
  echo "$usr/lib/x86_64-linux-gnu/systemd:$usr/lib/x86_64-linux-gnu"
}

# ------------------------------------------------------------------------------------------ 257
_sdv_fetch_257() {
  local dir=$SYSTEMD_CACHE/257 mirror=$1 t0 version
  t0=$(_sdv_now)
  if ! command -v debootstrap >/dev/null 2>&1 && [ ! -x /usr/sbin/debootstrap ]; then
    _sdv_log "257: installing debootstrap"
    # shellcheck source=scripts/lib/apt.sh
    source "$_sdv_repo/scripts/lib/apt.sh"
    apt_install_quietly debootstrap || return 1
  fi
  rm -rf --one-file-system "$dir"
  mkdir -p "$dir"
  # procps: the tests' units use /bin/kill, which trixie's minbase does not have.
  _sdv_log "257: debootstrap --variant=minbase trixie (systemd, dbus, procps); about a minute"
  # A mount namespace of its own: the /proc and /sys debootstrap mounts in the new root go away
  # with it, even when it is interrupted.
  if ! unshare --mount --propagation private debootstrap --variant=minbase --include=systemd,dbus,procps trixie "$dir/root" "$mirror" \
    >"$dir/debootstrap.log" 2>&1; then
    _sdv_log "257: debootstrap failed; the end of its log:"
    tail -n 20 "$dir/debootstrap.log" >&2
    tail -n 20 "$dir/root/debootstrap/debootstrap.log" >&2 2>/dev/null || true
    return 1
  fi
  # shellcheck disable=SC2016 # ${Version} is dpkg-query's field, not the shell's
  version=$(dpkg-query --admindir="$dir/root/var/lib/dpkg" -W -f '${Version}' systemd) || return 1
  case "$version" in
    257.*) ;;
    *)
      _sdv_log "257: trixie has systemd $version, not 257"
      return 1
      ;;
  esac
  echo "$version" >"$dir/version"
  # Downloaded packages are not needed once installed.
  rm -rf "$dir/root/var/cache/apt/archives/"*.deb
  touch "$dir/.complete"
  _sdv_log "257: systemd $version in $dir/root ($(du -sm "$dir/root" | cut -f1) MiB) in $(_sdv_since "$t0") s"
}

# ------------------------------------------------------------------------------------- coredump
# systemd-coredump of the host's own systemd version, unpacked only: installing the package would
# point the host's kernel.core_pattern at it (its postinst runs systemd-sysctl), and that setting
# is one for the whole machine. The crash-context test runs it inside a sandbox, from here.
_sdv_fetch_coredump() {
  local dir=$SYSTEMD_CACHE/coredump mirror=$1 t0 version opts debs=()
  t0=$(_sdv_now)
  # shellcheck disable=SC2016 # ${Version} is dpkg-query's field, not the shell's
  version=$(dpkg-query -W -f '${Version}' systemd) || return 1
  rm -rf --one-file-system "$dir"
  mkdir -p "$dir/debs" "$dir/unpacked"
  _sdv_log "coredump: fetching systemd-coredump $version from bookworm"
  _sdv_apt_update "$mirror" bookworm bookworm-updates || return 1
  mapfile -t opts < <(_sdv_apt_opts)
  (cd "$dir/debs" && apt-get -qq "${opts[@]}" -o APT::Sandbox::User=root download \
    "systemd-coredump=$version") >&2 || return 1
  debs=("$dir"/debs/systemd-coredump_*.deb)
  [ -f "${debs[0]}" ] || return 1
  dpkg-deb -x "${debs[0]}" "$dir/unpacked" || return 1
  cp "$dir/unpacked/lib/systemd/systemd-coredump" "$dir/unpacked/lib/systemd/system/systemd-coredump.socket" \
    "$dir/unpacked/lib/systemd/system/systemd-coredump@.service" "$dir/" || return 1
  echo "$version" >"$dir/version"
  rm -rf "$dir/debs" "$dir/unpacked"
  touch "$dir/.complete"
  _sdv_log "coredump: systemd-coredump $version in $dir in $(_sdv_since "$t0") s"
}

# ------------------------------------------------------------------------------------------ entry
# systemd_versions_fetch [VERSION...]: makes sure each version (254, 257, coredump; the first two
# by default) is
# cached. Quick when they are; returns non-zero when one could not be had.
systemd_versions_fetch() {
  local versions=("$@") v mirror="" rc=0
  [ "${#versions[@]}" -gt 0 ] || versions=(254 257)
  for v in "${versions[@]}"; do
    case "$v" in
      254 | 257 | coredump) ;;
      *)
        _sdv_log "unknown version $v (known: 254 257 coredump)"
        return 2
        ;;
    esac
    if [ -f "$SYSTEMD_CACHE/$v/.complete" ]; then
      _sdv_log "$v: cached ($(cat "$SYSTEMD_CACHE/$v/version" 2>/dev/null))"
      continue
    fi
    if [ "$(id -u)" != 0 ]; then
      _sdv_log "$v: not cached, and fetching it needs root"
      rc=1
      continue
    fi
    if [ -z "$mirror" ]; then
      mirror=$(_sdv_mirror)
      if [ -z "$mirror" ]; then
        _sdv_log "no Debian mirror found in /etc/apt/sources.list or sources.list.d"
        return 1
      fi
    fi
    "_sdv_fetch_$v" "$mirror" || {
      _sdv_log "$v: fetch failed"
      rc=1
    }
  done
  return "$rc"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  systemd_versions_fetch "$@"
fi
