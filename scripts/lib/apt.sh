# shellcheck shell=bash
# Sourced by the project's scripts: installs Debian packages without starting their services.
#
# Several packages the scripts need (prometheus, prometheus-alertmanager, node_exporter) ship
# system services; the scripts run their own instances on loopback ports. A policy-rc.d that
# denies service starts keeps apt from starting them on machines that boot with systemd, unless
# the machine already has a policy of its own, which is then left as it is.

# apt_install_quietly PACKAGE...: apt-get update and install, with services kept from starting.
# Returns apt-get's status; prints apt's output to stderr.
apt_install_quietly() {
  local policy=/usr/sbin/policy-rc.d added_policy="" rc=0 caller_trap
  # The caller's own EXIT trap (a teardown, say) is put back afterwards.
  caller_trap=$(trap -p EXIT)
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    added_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT # also if apt-get is interrupted
  fi
  {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
  } >&2 || rc=$?
  if [ -n "$added_policy" ]; then
    rm -f "$policy"
    eval "${caller_trap:-trap - EXIT}"
  fi
  return "$rc"
}

# have COMMAND: whether COMMAND is installed, also in sbin directories a user's PATH may lack.
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

# sandbox_missing_packages: the Debian packages the test sandbox
# (tests/support/systemd-sandbox.sh) needs and the machine lacks, space-separated.
sandbox_missing_packages() {
  local pkgs=()
  { have dbus-daemon && have dbus-monitor && [ -f /lib/systemd/system/dbus.socket ] &&
    [ -f /lib/systemd/system/dbus.service ]; } || pkgs+=(dbus)
  { have busctl && have systemctl && [ -x /lib/systemd/systemd ]; } || pkgs+=(systemd)
  { have unshare && have nsenter && have setpriv && have pivot_root; } || pkgs+=(util-linux)
  have script || pkgs+=(bsdutils)
  have timeout || pkgs+=(coreutils)
  echo "${pkgs[@]}"
}
