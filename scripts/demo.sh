#!/usr/bin/env bash
# The whole crashwatch stack on loopback, without touching the host's own systemd:
#
#   sudo scripts/demo.sh            # Ctrl-C stops everything and removes what it made
#   sudo scripts/demo.sh --fast     # alerts wait 5s instead of their shipped `for:`; 30s window
#   sudo scripts/demo.sh --check    # exit 0 as soon as the crash-loop alert reached Alertmanager
#
# What runs:
#   - a throw-away systemd, PID 1 of fresh namespaces with its own dbus-daemon
#     (tests/support/systemd-sandbox.sh, the one the integration tests use), with these services:
#       crashy.service        exits at once; systemd restarts it (Restart=always)
#       outside-loop.service  exits at once, Restart=no; keepalive.service starts it again every
#                             2 s: a loop driven from outside systemd, invisible to NRestarts
#       healthy.service       runs quietly
#   - crashwatch (built with cargo, debug) watching that systemd;
#   - Prometheus scraping crashwatch with the shipped rules (alerts/crashwatch.rules.yml) and
#     sending to Alertmanager (Debian packages prometheus and prometheus-alertmanager; installed
#     with apt-get when missing, without starting their system services).
# Everything listens on 127.0.0.1 only. The script prints the URLs, then every alert that starts
# or stops firing in Alertmanager.
#
# Options:
#   --fast    Prometheus gets a copy of the rules in which every alert's `for:` line is rewritten
#             to `for: 5s` (the transform the end-to-end test uses; nothing else changes), and
#             crashwatch runs with `--window 30s`, so a fixed unit's alert resolves within a minute.
#   --check   non-interactive: exit 0 once CrashwatchUnitCrashLooping for crashy.service is in
#             Alertmanager, 1 if it does not arrive within DEMO_TIMEOUT seconds (default 300).
#             DEMO_EXIT_AFTER_ALERT=1 does the same.
# Environment: CRASHWATCH_BIN (use this binary instead of building), DEMO_TIMEOUT.
#
# Ports: 9863 (crashwatch), 9090 (Prometheus), 9093 (Alertmanager) when free, other free ports
# otherwise. On exit (Ctrl-C, SIGTERM, an error or --check) every process is stopped, the
# sandbox's cgroups are removed and the temporary directory is deleted.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/apt.sh
source "$REPO/scripts/lib/apt.sh"
SANDBOX_SCRIPT=$REPO/tests/support/systemd-sandbox.sh
RULES=$REPO/alerts/crashwatch.rules.yml

FAST="" CHECK=${DEMO_EXIT_AFTER_ALERT:-}
[ "$CHECK" = 1 ] || CHECK=""
DEMO_TIMEOUT=${DEMO_TIMEOUT:-300}
for arg in "$@"; do
  case "$arg" in
    --fast) FAST=1 ;;
    --check) CHECK=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "demo: unknown argument $arg (try --help)" >&2
      exit 2
      ;;
  esac
done

# Colours only on a terminal.
if [ -t 1 ]; then BOLD=$'\033[1m' RED=$'\033[31m' GREEN=$'\033[32m' PLAIN=$'\033[0m'; else
  BOLD="" RED="" GREEN="" PLAIN=""
fi
say() { printf '%s==> %s%s\n' "$BOLD" "$*" "$PLAIN"; }
note() { printf '    %s\n' "$*"; }
die() {
  printf 'demo: %s\n' "$*" >&2
  exit 1
}

[ "$(id -u)" = 0 ] || die "needs root to run a private systemd in namespaces: sudo $0 $*"

# ------------------------------------------------------------------------------------ teardown
# Everything the demo starts is recorded here; cleanup() undoes it in reverse order. It runs once,
# on any exit: Ctrl-C and SIGTERM exit through their traps, errors through `set -e`.
DEMO_DIR="" SANDBOX_DIR="" PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  [ -n "$DEMO_DIR" ] || exit "$rc"
  echo
  say "Stopping the demo"
  local i pid
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[i]}
    kill -TERM "$pid" 2>/dev/null
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [ -n "$SANDBOX_DIR" ]; then
    SDTEST_DIR=$SANDBOX_DIR bash "$SANDBOX_SCRIPT" stop
  fi
  rm -rf "$DEMO_DIR"
  note "stopped crashwatch, Prometheus, Alertmanager and the sandbox; removed $DEMO_DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------------------------ prerequisites
missing_packages() {
  local pkgs=() sandbox
  have prometheus || pkgs+=(prometheus)
  have prometheus-alertmanager || pkgs+=(prometheus-alertmanager)
  have python3 || pkgs+=(python3)
  read -r -a sandbox <<<"$(sandbox_missing_packages)"
  pkgs+=("${sandbox[@]}")
  echo "${pkgs[@]}"
}

read -r -a pkgs <<<"$(missing_packages)"
if [ "${#pkgs[@]}" -gt 0 ]; then
  have apt-get || die "missing ${pkgs[*]} (install them, then run the demo again)"
  say "Installing ${pkgs[*]} with apt-get"
  apt_install_quietly "${pkgs[@]}" || die "apt-get install ${pkgs[*]} failed"
fi

# ------------------------------------------------------------------------------------ crashwatch
# Under sudo the build runs as the invoking user, so that their clone gets no root-owned target/
# and their own Rust toolchain (~/.cargo/bin) is used.
as_builder() {
  if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
    runuser -u "$SUDO_USER" -- bash -lc 'cd "$1" && shift && "$@"' _ "$REPO" "$@"
  else
    (cd "$REPO" && "$@")
  fi
}

if [ -n "${CRASHWATCH_BIN:-}" ]; then
  BIN=$CRASHWATCH_BIN
else
  say "Building crashwatch (cargo build; the first build takes a few minutes)"
  as_builder cargo build --bin crashwatch || die "cargo build failed (is a Rust toolchain installed? https://rustup.rs)"
  target_dir=$(as_builder cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  BIN=$target_dir/debug/crashwatch
fi
[ -x "$BIN" ] || die "no crashwatch binary at $BIN"

# ------------------------------------------------------------------------------------ helpers
DEMO_DIR=$(mktemp -d /tmp/crashwatch-demo.XXXXXX)

# The first of `preferred` and a free ephemeral port that nothing listens on.
pick_port() {
  python3 - "$1" <<'PY'
import socket, sys
preferred = int(sys.argv[1])
s = socket.socket()
# As the servers do: a port whose old connections linger in TIME_WAIT is free to listen on.
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", preferred))
    port = preferred
except OSError:
    s.close()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
s.close()
print(port)
PY
}

# GET http://127.0.0.1:$1$2 and print the body; fails on anything but 200.
http_get() {
  python3 - "$1" "$2" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}{sys.argv[2]}", timeout=5) as r:
        sys.stdout.write(r.read().decode())
except Exception:
    sys.exit(1)
PY
}

wait_ready() { # name port path
  for _ in $(seq 300); do
    if http_get "$2" "$3" >/dev/null; then return 0; fi
    sleep 0.1
  done
  tail -n 20 "$DEMO_DIR/$1.log" >&2 || true
  die "$1 did not become ready on 127.0.0.1:$2"
}

# `systemctl` inside the sandbox (the private socket refuses clients outside its pid namespace).
sandbox_systemctl() { nsenter -t "$SDTEST_PID1" -p -m -- timeout 30 systemctl "$@"; }

# ------------------------------------------------------------------------------------ sandbox
say "Starting a private systemd (sandbox)"
# The sandbox's cgroup is named after this directory: cwtest-demo-<pid>.
SANDBOX_DIR=$DEMO_DIR/demo-$$
SDTEST_DIR=$SANDBOX_DIR bash "$SANDBOX_SCRIPT" start >"$DEMO_DIR/sandbox.env"
# shellcheck disable=SC1091
. "$DEMO_DIR/sandbox.env" # DBUS_SYSTEM_BUS_ADDRESS, SDTEST_PID1, SDTEST_UNIT_DIR

cat >"$SDTEST_UNIT_DIR/crashy.service" <<'EOF'
[Unit]
Description=crashes at once; systemd restarts it forever
StartLimitIntervalSec=0

[Service]
ExecStart=/bin/false
Restart=always
RestartSec=1s
EOF
cat >"$SDTEST_UNIT_DIR/outside-loop.service" <<'EOF'
[Unit]
Description=crashes at once; never restarted by systemd (keepalive.service starts it again)

[Service]
ExecStart=/bin/false
Restart=no
EOF
cat >"$SDTEST_UNIT_DIR/keepalive.service" <<'EOF'
[Unit]
Description=a keepalive script that starts outside-loop.service every 2 seconds

[Service]
ExecStart=/bin/sh -c 'while sleep 2; do systemctl start --no-block outside-loop.service; done'
EOF
cat >"$SDTEST_UNIT_DIR/healthy.service" <<'EOF'
[Unit]
Description=runs quietly, never crashes

[Service]
ExecStart=/bin/sleep infinity
Restart=always
EOF
busctl --address="$DBUS_SYSTEM_BUS_ADDRESS" call org.freedesktop.systemd1 /org/freedesktop/systemd1 \
  org.freedesktop.systemd1.Manager Reload >/dev/null

# ------------------------------------------------------------------------------------ servers
CW_PORT=$(pick_port 9863)
CW_WINDOW=5m # crashwatch's default
if [ -n "$FAST" ]; then CW_WINDOW=30s; fi
say "Starting crashwatch on 127.0.0.1:$CW_PORT (crash loop: 3 restarts within $CW_WINDOW)"
DBUS_SYSTEM_BUS_ADDRESS=$DBUS_SYSTEM_BUS_ADDRESS "$BIN" run --listen "127.0.0.1:$CW_PORT" \
  --window "$CW_WINDOW" --events "$DEMO_DIR/events.jsonl" >"$DEMO_DIR/crashwatch.log" 2>&1 </dev/null &
PIDS+=($!)
wait_ready crashwatch "$CW_PORT" /metrics

AM_PORT=$(pick_port 9093)
say "Starting Alertmanager on 127.0.0.1:$AM_PORT"
cat >"$DEMO_DIR/alertmanager.yml" <<'EOF'
# One receiver without integrations: the demo reads alerts from the API and prints them.
route:
  receiver: demo
  group_wait: 0s
  group_interval: 5s
  repeat_interval: 1h
receivers:
  - name: demo
EOF
prometheus-alertmanager --config.file="$DEMO_DIR/alertmanager.yml" \
  --storage.path="$DEMO_DIR/alertmanager" --web.listen-address="127.0.0.1:$AM_PORT" \
  --cluster.listen-address= >"$DEMO_DIR/alertmanager.log" 2>&1 </dev/null &
PIDS+=($!)
wait_ready alertmanager "$AM_PORT" /-/ready

PROM_PORT=$(pick_port 9090)
PROM_RULES=$RULES
if [ -n "$FAST" ]; then
  # The documented transform: only lines that are `for: <duration>` change, to `for: 5s`.
  PROM_RULES=$DEMO_DIR/crashwatch.rules.fast.yml
  sed -E 's/^([[:space:]]+)for:[[:space:]]*[0-9A-Za-z]+[[:space:]]*$/\1for: 5s/' "$RULES" >"$PROM_RULES"
fi
say "Starting Prometheus on 127.0.0.1:$PROM_PORT with $(basename "$PROM_RULES")"
cat >"$DEMO_DIR/prometheus.yml" <<EOF
global:
  scrape_interval: 2s
  scrape_timeout: 2s
  evaluation_interval: 2s
rule_files:
  - $PROM_RULES
alerting:
  alertmanagers:
    - static_configs:
        - targets: ['127.0.0.1:$AM_PORT']
scrape_configs:
  - job_name: crashwatch
    static_configs:
      - targets: ['127.0.0.1:$CW_PORT']
EOF
# resend-delay: firing alerts are sent again every 10 s rather than every minute, so an alert
# that fired before Prometheus had found Alertmanager arrives promptly.
prometheus --config.file="$DEMO_DIR/prometheus.yml" --storage.tsdb.path="$DEMO_DIR/prometheus" \
  --web.listen-address="127.0.0.1:$PROM_PORT" --rules.alert.resend-delay=10s \
  >"$DEMO_DIR/prometheus.log" 2>&1 </dev/null &
PIDS+=($!)
wait_ready prometheus "$PROM_PORT" /-/ready

say "Starting the services"
sandbox_systemctl start healthy.service crashy.service keepalive.service

loop_for=$(awk '/- alert: CrashwatchUnitCrashLooping/ {f=1} f && /for:/ {print $2; exit}' "$PROM_RULES")
cat <<EOF

Where to look:
    crashwatch /metrics      http://127.0.0.1:$CW_PORT/metrics
    Prometheus alerts        http://127.0.0.1:$PROM_PORT/alerts
    Prometheus graph         http://127.0.0.1:$PROM_PORT/graph?g0.expr=crashwatch_unit_crashlooping
    Alertmanager             http://127.0.0.1:$AM_PORT/#/alerts
    event record             tail -f $DEMO_DIR/events.jsonl
    the sandbox's systemd    sudo nsenter -t $SDTEST_PID1 -p -m systemctl status crashy.service
    Grafana                  import dashboards/crashwatch.json, data source http://127.0.0.1:$PROM_PORT
    (from another machine:   ssh -L $PROM_PORT:127.0.0.1:$PROM_PORT -L $AM_PORT:127.0.0.1:$AM_PORT <this host>)

crashwatch flags a loop at the 3rd restart within $CW_WINDOW; CrashwatchUnitCrashLooping then
waits $loop_for (its \`for:\`) before it fires.
Fix crashy.service and watch its alert resolve $CW_WINDOW later (crashwatch's window):
    sudo mkdir -p $SDTEST_UNIT_DIR/crashy.service.d
    printf '[Service]\nExecStart=\nExecStart=/bin/sleep infinity\n' | sudo tee $SDTEST_UNIT_DIR/crashy.service.d/fix.conf
    sudo nsenter -t $SDTEST_PID1 -p -m systemctl daemon-reload

EOF
if [ -z "$CHECK" ]; then say "Watching Alertmanager; Ctrl-C stops the demo and removes everything"; fi

# ------------------------------------------------------------------------------------ alerts
# One line per active alert in Alertmanager: "alertname unit|-" TAB a readable description.
active_alerts() {
  http_get "$AM_PORT" /api/v2/alerts 2>/dev/null | python3 -c '
import json, sys
for a in sorted(json.load(sys.stdin), key=lambda a: (a["labels"]["alertname"], a["labels"].get("unit", ""))):
    l = a["labels"]
    key = l["alertname"] + " " + l.get("unit", "-")
    print(key + "\t" + l["alertname"] + " [" + l.get("severity", "?") + "] " + a["annotations"].get("summary", ""))
' 2>/dev/null
}

started=$(date +%s)
declare -A shown=()
while :; do
  if now_active=$(active_alerts); then
    declare -A current=()
    while IFS=$'\t' read -r key text; do
      [ -n "$key" ] || continue
      current[$key]=$text
      if [ -z "${shown[$key]:-}" ]; then
        printf '%s  %sFIRING%s    %s\n' "$(date +%T)" "$RED" "$PLAIN" "$text"
        shown[$key]=$text
      fi
    done <<<"$now_active"
    for key in "${!shown[@]}"; do
      if [ -z "${current[$key]:-}" ]; then
        printf '%s  %sRESOLVED%s  %s\n' "$(date +%T)" "$GREEN" "$PLAIN" "${shown[$key]}"
        unset "shown[$key]"
      fi
    done
    unset current
    if [ -n "$CHECK" ] && [ -n "${shown[CrashwatchUnitCrashLooping crashy.service]:-}" ]; then
      say "CrashwatchUnitCrashLooping for crashy.service reached Alertmanager after $(($(date +%s) - started)) s"
      exit 0
    fi
  fi
  if [ -n "$CHECK" ] && [ $(($(date +%s) - started)) -ge "$DEMO_TIMEOUT" ]; then
    die "CrashwatchUnitCrashLooping for crashy.service did not reach Alertmanager within $DEMO_TIMEOUT s"
  fi
  sleep 1
done
