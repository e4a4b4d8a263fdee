#!/usr/bin/env bash
# A throw-away, real systemd for integration tests.
#
# crashwatch talks to systemd over D-Bus, so its tests need a genuine systemd (job engine, restart
# logic, NRestarts, ActiveState signals); a mock would only test our idea of systemd. Test machines
# do not necessarily boot with systemd, and even when they do, tests must not touch the host's units.
# This script therefore runs systemd as PID 1 of fresh pid/mount/uts/ipc/net/cgroup namespaces
# ("container" mode, cgroup2-only view) together with its own system dbus-daemon, in well under a
# second. One instance per directory, so tests can run in parallel.
#
#   SDTEST_DIR=/tmp/x systemd-sandbox.sh start
#       Waits until Manager.SystemState is "running", then prints on stdout:
#         DBUS_SYSTEM_BUS_ADDRESS=unix:path=$SDTEST_DIR/run/dbus/system_bus_socket   (use from the host)
#         SDTEST_PID1=<host pid of the namespace's systemd>
#         SDTEST_UNIT_DIR=<unit directory; call Manager.Reload after adding files>
#   SDTEST_DIR=/tmp/x systemd-sandbox.sh stop      kill everything, remove cgroups and $SDTEST_DIR/run
#   SDTEST_DIR=/tmp/x systemd-sandbox.sh status
#
#   Run something inside (sees /run/dbus and /run/systemd/private at their usual paths). nsenter
#   does not forward signals, so put `timeout` inside it:
#       nsenter -t "$SDTEST_PID1" -p -m -- timeout 30 systemctl start foo.service
#   The private socket /run/systemd/private refuses host clients (their PID is not visible in the
#   namespace); from the host use the system bus address above.
#
# Knobs (env): SDTEST_DIR (instance dir, required to be unique per instance),
#              SDTEST_TIMEOUT (startup seconds, default 30), SDTEST_LOGLEVEL (systemd, default info),
#              SYSTEMD (path of the systemd binary, default /lib/systemd/systemd),
#              SDTEST_JOURNAL=1 (also run systemd-journald, see below),
#              SDTEST_OVERLAY_ROOT=1 (a copy-on-write root, for installing packages; see below),
#              SDTEST_SYSTEMD=252|254|257 (which systemd is PID 1; default the host's, see below),
#              SDTEST_SYSTEMD_CACHE (where scripts/lib/systemd-versions.sh keeps 254 and 257,
#              default target/systemd in this repository).
#
# SDTEST_SYSTEMD picks the systemd version, because what systemd says on the bus changes between
# versions. Unset or 252 is the host's systemd (Debian 12). The others are fetched beforehand by
# scripts/lib/systemd-versions.sh (scripts/test.sh does it):
#   254  bookworm-backports' systemd, built for Debian 12. Inside the mount namespace its files
#        are laid over the host's /usr (a copy-on-write overlayfs, upper layer in
#        $SDTEST_DIR/usr254), so /lib/systemd/systemd, systemctl, journalctl, systemd-journald and
#        libsystemd.so.0 are 254's at their usual paths: every binary finds its own libraries
#        through its RUNPATH, no LD_LIBRARY_PATH is set for PID 1 or inherited by anything it runs,
#        and daemon-reexec (which execs /lib/systemd/systemd) stays on 254. The rest (dbus-daemon,
#        /bin/sh, coreutils) is the host's.
#   257  trixie's systemd, built against a newer glibc, so the namespace's root is a copy-on-write
#        overlayfs of the cached trixie root (upper layer in $SDTEST_DIR/overlay/upper: the cache
#        stays clean, and sandboxes run side by side). systemd, dbus-daemon, journald and the
#        tools units run (/bin/sh, /bin/kill, ...) are trixie's. $SDTEST_DIR keeps its path inside,
#        and /run is the host directory $SDTEST_DIR/run as for 252, so host-side clients use the
#        same bus address.
# Privileged bus calls (Manager.Reload, ...) from a peer outside the pid namespace abort 254's
# PID 1 (an assertion on the peer's pid); make them from inside: nsenter ... systemctl daemon-reload.
#
# With SDTEST_JOURNAL=1 the host's systemd-journald.service and its two sockets join the boot, PID 1
# logs to the journal, and journald keeps it in memory only (Storage=volatile, 64M): the journal
# is $SDTEST_DIR/run/log/journal/<machine-id>, for `journalctl --directory=$SDTEST_DIR/run/log/journal`
# on the host. journald forwards to the console, so systemd.log still has the whole log.
#
# With SDTEST_OVERLAY_ROOT=1 the namespace's root is an overlayfs whose lower layer is the host's
# root file system and whose upper layer is $SDTEST_DIR/overlay/upper, so whatever systemd, its
# services and `nsenter -t $SDTEST_PID1 -m ...` write (dpkg -i, users, /etc, /var) lands there and
# the host's files stay as they were. The host's unit directories, /etc/systemd/system and
# /lib/systemd/system, appear empty (directories under $SDTEST_DIR/overlay/units) and are on the
# unit path: systemd sees its stub units plus what is installed inside, and never the host's
# boot (the real sysinit.target.wants would run systemd-tmpfiles). $SDTEST_DIR keeps its path
# inside, so files put there are visible to both sides. Only the root file system is layered:
# directories that are separate mounts on the host (a /var or /home of their own) look as they
# are on the root file system beneath them, usually empty. If the upper layer cannot be on
# $SDTEST_DIR's file system (overlayfs itself, in a container), it is kept in memory instead.
# Needs root with CAP_SYS_ADMIN and a cgroup2 hierarchy (unified or hybrid host).
# Nothing is mounted in the host mount namespace. Host-visible artefacts: $SDTEST_DIR and the
# cgroup directories named cwtest-<basename of SDTEST_DIR>; `stop` removes the cgroups and the run
# directory (systemd.log and the unit directory stay for post-mortems; the caller removes the rest).
set -euo pipefail

: "${SDTEST_DIR:?set SDTEST_DIR to a directory unique to this instance}"
SDTEST_TIMEOUT=${SDTEST_TIMEOUT:-30}
NAME=cwtest-$(basename "$SDTEST_DIR")
RUN=$SDTEST_DIR/run     # bind-mounted on /run inside, so host clients reach the sockets here
UNITS=$SDTEST_DIR/units # the only unit directory of the test systemd (besides its /run dirs)
SELF=$(readlink -f "${BASH_SOURCE[0]}")
SDTEST_SYSTEMD=${SDTEST_SYSTEMD:-252}
SDTEST_SYSTEMD_CACHE=$(readlink -m "${SDTEST_SYSTEMD_CACHE:-$(dirname "$SELF")/../../target/systemd}")
export SDTEST_SYSTEMD SDTEST_SYSTEMD_CACHE # for the script's own later stages, inside script(1)
# The root whose files systemd runs from (257's root is its own), and where the unit files for
# dbus and journald come from.
ROOTFS="" DBUS_UNITS_ROOT="" SYSTEMD_UNITS_ROOT=""
case "$SDTEST_SYSTEMD" in
  252) ;;
  254) SYSTEMD_UNITS_ROOT=$SDTEST_SYSTEMD_CACHE/254 ;;
  257) ROOTFS=$SDTEST_SYSTEMD_CACHE/257/root DBUS_UNITS_ROOT=$ROOTFS SYSTEMD_UNITS_ROOT=$ROOTFS ;;
  *)
    echo "[systemd-sandbox] SDTEST_SYSTEMD=$SDTEST_SYSTEMD: known versions are 252 (the host's), 254, 257" >&2
    exit 2
    ;;
esac
# The path systemd has inside the namespace (for 254 and 257 that path shows their binary).
SYSTEMD=${SYSTEMD:-/lib/systemd/systemd}

log() { echo "[systemd-sandbox] $*" >&2; }

fstype() { stat -f -c %T "$1" 2>/dev/null || true; }

# Where our cgroups go. systemd inside needs a cgroup2 tree of its own (it becomes the root of the
# new cgroup namespace). Hybrid hosts have cgroup2 at /sys/fs/cgroup/unified, plus the v1
# name=systemd hierarchy which we also use so the sandbox does not sit in the host's cgroups there.
cgroup_dirs() {
  CG2="" CG1=""
  if [ "$(fstype /sys/fs/cgroup)" = cgroup2fs ]; then
    CG2=/sys/fs/cgroup/$NAME
  elif [ "$(fstype /sys/fs/cgroup/unified)" = cgroup2fs ]; then
    CG2=/sys/fs/cgroup/unified/$NAME
    if [ "$(fstype /sys/fs/cgroup/systemd)" = cgroupfs ]; then CG1=/sys/fs/cgroup/systemd/$NAME; fi
  fi
}

write_units() {
  mkdir -p "$UNITS"
  # Stub targets: default dependencies resolve without pulling in the host's boot. In particular
  # the real sysinit.target would run systemd-tmpfiles, which cleans the machine's shared /tmp.
  for t in sysinit basic sockets timers paths slices local-fs local-fs-pre swap umount network multi-user; do
    printf '[Unit]\nDescription=sandbox stub %s.target\nDefaultDependencies=no\n' "$t" >"$UNITS/$t.target"
  done
  cat >"$UNITS/basic.target" <<'EOF'
[Unit]
Description=sandbox stub basic.target
DefaultDependencies=no
Requires=sysinit.target
After=sysinit.target sockets.target
EOF
  cat >"$UNITS/shutdown.target" <<'EOF'
[Unit]
Description=sandbox stub shutdown.target
DefaultDependencies=no
RefuseManualStart=yes
EOF
  cat >"$UNITS/sandbox.target" <<'EOF'
[Unit]
Description=sandbox boot target
Requires=dbus.socket
Wants=dbus.service
After=dbus.socket dbus.service
AllowIsolate=yes
EOF
  local d src=""
  for d in "$DBUS_UNITS_ROOT/lib/systemd/system" "$DBUS_UNITS_ROOT/usr/lib/systemd/system"; do
    if [ -f "$d/dbus.socket" ] && [ -f "$d/dbus.service" ]; then src=$d; break; fi
  done
  [ -n "$src" ] || { log "dbus.socket/dbus.service not found (install the dbus package)"; return 1; }
  cp "$src/dbus.socket" "$src/dbus.service" "$UNITS/"
  # Debian's dbus.service lowers its OOM score; that needs CAP_SYS_RESOURCE games we do not want.
  mkdir -p "$UNITS/dbus.service.d"
  printf '[Service]\nOOMScoreAdjust=0\n' >"$UNITS/dbus.service.d/sandbox.conf"
  if [ "${SDTEST_JOURNAL:-0}" = 1 ]; then
    local j
    # journald's own units come with the systemd that runs them.
    src=$SYSTEMD_UNITS_ROOT/lib/systemd/system
    [ -d "$src" ] || src=$SYSTEMD_UNITS_ROOT/usr/lib/systemd/system
    for j in systemd-journald.service systemd-journald.socket systemd-journald-dev-log.socket; do
      [ -f "$src/$j" ] || { log "$src/$j not found (install the systemd package)"; return 1; }
      cp "$src/$j" "$UNITS/"
    done
    # The audit socket is left out: its Wants= from the service then points at nothing, harmlessly.
    printf 'Wants=systemd-journald.socket systemd-journald-dev-log.socket systemd-journald.service\n' \
      >>"$UNITS/sandbox.target"
    # A drop-in in the sandbox's own /run: read after the host's /etc/systemd/journald.conf, and
    # last among drop-ins by its name.
    # The volatile journal's directory as systemd-tmpfiles makes it at boot (tmpfiles.d/systemd.conf:
    # `z /run/log/journal 2755 root systemd-journal`), which this boot does not run: the files
    # journald creates below inherit the group, so members of systemd-journal can read them.
    mkdir -p "$RUN/log/journal"
    if getent group systemd-journal >/dev/null 2>&1; then
      chgrp systemd-journal "$RUN/log/journal"
      chmod 2755 "$RUN/log/journal"
    fi
    mkdir -p "$RUN/systemd/journald.conf.d"
    printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=64M\nForwardToConsole=yes\nTTYPath=/dev/console\nForwardToSyslog=no\nForwardToWall=no\n' \
      >"$RUN/systemd/journald.conf.d/zz-sandbox.conf"
  fi
}

# ---------------------------------------------------------------- inside script(1): join cgroups, unshare
launch() {
  cgroup_dirs
  echo $$ >"$CG2/cgroup.procs"
  if [ -n "$CG1" ]; then echo $$ >"$CG1/cgroup.procs"; fi
  echo $$ >"$SDTEST_DIR/unshare.pid"
  # --kill-child: if unshare dies, the namespace's init (and with it everything inside) dies too.
  exec unshare --kill-child=SIGKILL --pid --mount --uts --ipc --net --cgroup --mount-proc \
    --propagation private bash "$SELF" _inner
}

# ---------------------------------------------------------------- SDTEST_OVERLAY_ROOT=1, 257
# Makes a copy-on-write view of LOWER (the host's root, or 257's cached root) the root of this
# mount namespace (see the top).
enter_overlay_root() {
  local lower=$1 o=$SDTEST_DIR/overlay new d
  new=$o/root
  mkdir -p "$o/upper" "$o/work" "$new"
  if ! mount -t overlay sandbox-root -o "lowerdir=$lower,upperdir=$o/upper,workdir=$o/work,redirect_dir=on" "$new" 2>/dev/null; then
    mount -t tmpfs -o mode=755 sandbox-upper "$o"
    mkdir -p "$o/upper" "$o/work" "$new"
    mount -t overlay sandbox-root -o "lowerdir=$lower,upperdir=$o/upper,workdir=$o/work,redirect_dir=on" "$new"
  fi
  # The API file systems as they are now, and the instance directory itself rather than the
  # lower layer's snapshot of it.
  for d in /proc /sys /dev; do mount --rbind "$d" "$new$d"; done
  mkdir -p "$new$SDTEST_DIR"
  mount --bind "$SDTEST_DIR" "$new$SDTEST_DIR"
  # The old root is detached once pivoted away from, so nothing inside can reach the host's.
  mkdir -p "$SDTEST_DIR/old-root"
  pivot_root "$new" "$new$SDTEST_DIR/old-root"
  cd /
  umount -l "$SDTEST_DIR/old-root"
  rmdir "$SDTEST_DIR/old-root"
}

# With SDTEST_OVERLAY_ROOT=1: the root's own unit directories appear empty (see the top).
mask_unit_dirs() {
  local o=$SDTEST_DIR/overlay d real seen=" "
  for d in /etc/systemd/system /lib/systemd/system /usr/lib/systemd/system; do
    real=$(readlink -f "$d") # /lib is /usr/lib on merged-/usr systems: one directory, not two
    case "$seen" in *" $real "*) continue ;; esac
    seen="$seen$real "
    mkdir -p "$o/units$real" "$real"
    mount --bind "$o/units$real" "$real"
  done
}

# 254: its files over the host's /usr, copy-on-write so that nothing reaches the cache or the
# host (see the top).
layer_254() {
  local u=$SDTEST_DIR/usr254
  mkdir -p "$u/upper" "$u/work"
  if ! mount -t overlay sandbox-usr254 -o "lowerdir=$SDTEST_SYSTEMD_CACHE/254/usr:/usr,upperdir=$u/upper,workdir=$u/work" /usr 2>/dev/null; then
    mount -t tmpfs -o mode=755 sandbox-usr254 "$u"
    mkdir -p "$u/upper" "$u/work"
    mount -t overlay sandbox-usr254 -o "lowerdir=$SDTEST_SYSTEMD_CACHE/254/usr:/usr,upperdir=$u/upper,workdir=$u/work" /usr
  fi
}

# ---------------------------------------------------------------- PID 1 of the new namespaces
inner() {
  local tty unit_path="/run/systemd/system.control:/run/systemd/transient:/run/systemd/system:$UNITS"
  if [ -n "$ROOTFS" ]; then
    enter_overlay_root "$ROOTFS"
  elif [ "${SDTEST_OVERLAY_ROOT:-0}" = 1 ]; then
    enter_overlay_root /
  fi
  if [ "$SDTEST_SYSTEMD" = 254 ]; then layer_254; fi
  if [ "${SDTEST_OVERLAY_ROOT:-0}" = 1 ]; then
    mask_unit_dirs
    # Where packages put units and where `systemctl enable` puts its symlinks.
    unit_path="/run/systemd/system.control:/run/systemd/transient:/etc/systemd/system:/run/systemd/system:$UNITS:/lib/systemd/system"
  fi
  tty=$(readlink -f /proc/self/fd/0) # the pty script(1) allocated: systemd's console
  mount --bind "$tty" "$SDTEST_DIR/console" # stash it before /dev is replaced
  # Private /dev: nothing systemd does may touch the host's devtmpfs.
  mount -t tmpfs -o mode=755,nosuid,size=4m sandbox-dev /dev
  mknod -m 666 /dev/null c 1 3
  mknod -m 666 /dev/zero c 1 5
  mknod -m 666 /dev/full c 1 7
  mknod -m 666 /dev/random c 1 8
  mknod -m 666 /dev/urandom c 1 9
  mknod -m 666 /dev/tty c 5 0
  mkdir -p /dev/pts /dev/shm
  mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts /dev/pts
  ln -s pts/ptmx /dev/ptmx
  ln -s /proc/self/fd /dev/fd
  ln -s /proc/self/fd/0 /dev/stdin
  ln -s /proc/self/fd/1 /dev/stdout
  ln -s /proc/self/fd/2 /dev/stderr
  mount -t tmpfs -o mode=1777,nosuid,nodev,size=64m sandbox-shm /dev/shm
  touch /dev/console
  mount --bind "$SDTEST_DIR/console" /dev/console
  umount "$SDTEST_DIR/console"
  # cgroup2 whose root is our cgroup namespace root: systemd runs in unified mode inside it.
  mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
  # Read-only /sys and /proc/sys: as PID 1, systemd would otherwise raise machine-wide sysctls.
  mount -o remount,bind,ro /sys
  mount --bind /proc/sys /proc/sys
  mount -o remount,bind,ro /proc/sys
  if [ -e /proc/sysrq-trigger ]; then
    mount --bind /proc/sysrq-trigger /proc/sysrq-trigger
    mount -o remount,bind,ro /proc/sysrq-trigger
  fi
  # Private /run backed by a host directory, so host-side clients reach the bus socket.
  mount --bind "$RUN" /run
  local log_target=console
  if [ "${SDTEST_JOURNAL:-0}" = 1 ]; then
    log_target=journal-or-kmsg
    # Never the host's persistent journal, whatever the configuration says.
    if [ -d /var/log/journal ]; then mount -t tmpfs -o mode=755,size=1m sandbox-journal /var/log/journal; fi
  fi
  hostname sandbox
  exec env -i container=crashwatch-test TERM=dumb PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    SYSTEMD_UNIT_PATH="$unit_path" \
    setpriv --bounding-set -sys_module,-sys_time,-sys_rawio,-wake_alarm,-mac_admin,-mac_override \
    "$SYSTEMD" --system --unit=sandbox.target --log-target="$log_target" --log-level="${SDTEST_LOGLEVEL:-info}" \
    --show-status=no --log-color=no \
    --default-standard-output=null --default-standard-error=null
}

# ---------------------------------------------------------------- host side
pid1() {
  local u
  u=$(cat "$SDTEST_DIR/unshare.pid" 2>/dev/null) || return 1
  awk '{print $1; exit}' "/proc/$u/task/$u/children" 2>/dev/null
}

start() {
  [ "$(id -u)" = 0 ] || { log "needs root"; exit 1; }
  if [ -e "$SDTEST_DIR/unshare.pid" ] && kill -0 "$(cat "$SDTEST_DIR/unshare.pid")" 2>/dev/null; then
    log "already running in $SDTEST_DIR"
    exit 1
  fi
  case "$SDTEST_SYSTEMD" in
    252) [ -x "$SYSTEMD" ] || { log "$SYSTEMD not found (install the systemd package)"; exit 1; } ;;
    *)
      [ -f "$SDTEST_SYSTEMD_CACHE/$SDTEST_SYSTEMD/.complete" ] || {
        log "systemd $SDTEST_SYSTEMD is not in $SDTEST_SYSTEMD_CACHE (run scripts/lib/systemd-versions.sh $SDTEST_SYSTEMD as root)"
        exit 1
      }
      ;;
  esac
  cgroup_dirs
  [ -n "$CG2" ] || { log "no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified"; exit 1; }
  rm -rf "$SDTEST_DIR"
  mkdir -p "$RUN"
  touch "$SDTEST_DIR/console"
  write_units
  mkdir -p "$CG2"
  if [ -n "$CG1" ]; then mkdir -p "$CG1"; fi
  local t0
  t0=$(date +%s.%N)
  # script(1) gives the namespace a pty that becomes /dev/console; its transcript is systemd's log.
  # setsid: the sandbox must not receive the terminal's or the test runner's process-group signals.
  SDTEST_DIR=$SDTEST_DIR SDTEST_SELF=$SELF SHELL=/bin/bash setsid script -q -f -e -c 'exec bash "$SDTEST_SELF" _launch' \
    "$SDTEST_DIR/systemd.log" </dev/null >/dev/null 2>&1 &
  echo $! >"$SDTEST_DIR/script.pid"
  # Ready once systemd answers on the namespace's system bus.
  local addr="unix:path=$RUN/dbus/system_bus_socket" deadline st=""
  deadline=$(($(date +%s) + SDTEST_TIMEOUT))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    st=$(timeout 2 busctl --address="$addr" get-property org.freedesktop.systemd1 /org/freedesktop/systemd1 \
      org.freedesktop.systemd1.Manager SystemState 2>/dev/null || true)
    case "$st" in *running* | *degraded*) break ;; esac
    kill -0 "$(cat "$SDTEST_DIR/script.pid")" 2>/dev/null || break
    sleep 0.05
  done
  case "$st" in
    *running* | *degraded*) ;;
    *)
      log "systemd did not come up (state: ${st:-none}); log follows"
      tail -n 30 "$SDTEST_DIR/systemd.log" >&2 || true
      stop
      exit 1
      ;;
  esac
  log "systemd $SDTEST_SYSTEMD up in $(awk "BEGIN{printf \"%.2f\", $(date +%s.%N) - $t0}") s, state $st, pid1 (host pid) $(pid1)"
  echo "DBUS_SYSTEM_BUS_ADDRESS=$addr"
  echo "SDTEST_PID1=$(pid1)"
  echo "SDTEST_UNIT_DIR=$UNITS"
}

stop() {
  local p u s x cg
  p=$(pid1 || true)
  u=$(cat "$SDTEST_DIR/unshare.pid" 2>/dev/null || true)
  s=$(cat "$SDTEST_DIR/script.pid" 2>/dev/null || true)
  # SIGKILL of a pid namespace's init kills every process in that namespace.
  if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; fi
  for x in $u $s; do
    for _ in $(seq 50); do
      kill -0 "$x" 2>/dev/null || break
      sleep 0.1
    done
  done
  for x in $u $s; do
    if kill -0 "$x" 2>/dev/null; then
      log "SIGKILL $x"
      kill -KILL "$x" 2>/dev/null || true
    fi
  done
  # Remove the (now empty) cgroup trees, deepest first; retry while the kernel reaps the tasks.
  cgroup_dirs
  for cg in $CG2 $CG1; do
    [ -d "$cg" ] || continue
    for _ in $(seq 50); do
      find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
      [ -d "$cg" ] || break
      sleep 0.1
    done
    if [ -d "$cg" ]; then log "WARNING: could not remove $cg"; fi
  done
  rm -rf "$RUN" "$SDTEST_DIR/console" "$SDTEST_DIR"/*.pid
}

status() {
  local p
  p=$(pid1 || true)
  if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
    echo "running, pid1=$p"
  else
    echo "not running"
    return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  _launch) launch ;;
  _inner) inner ;;
  *)
    echo "usage: SDTEST_DIR=DIR $0 start|stop|status" >&2
    exit 2
    ;;
esac
