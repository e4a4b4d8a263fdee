#!/usr/bin/env bash
# Benchmarks crashwatch side by side with node_exporter's systemd collector and with the bus
# itself, on a real systemd, and writes the results as Markdown to stdout and BENCHMARKS.md.
#
#   sudo scripts/bench.sh            # the full run, about 13 minutes on 2 cores once built
#                                    # (8 of them the churn of 100,000 units)
#   sudo scripts/bench.sh --quick    # fewer runs and sizes, no cargo bench: about 3 minutes
#   (a first release build from a fresh clone adds about 5 minutes on 2 cores)
#   options: --runs N (repetitions of each timed figure), --no-micro (skip cargo bench),
#            --out FILE (instead of BENCHMARKS.md); CW_BENCH_KEEP=1 keeps the work directory
#            (logs, event record, raw figures) for a post-mortem
#
# Everything runs in one go so that the ratios compare figures taken on the same machine within
# minutes of each other: on a shared machine absolute figures move by ±20% from one run to the
# next, ratios much less. Each figure is repeated and reported as the median with the spread
# (min..max) of the repetitions.
#
# What it starts, all stopped and removed on exit:
#   - a real systemd 252 as PID 1 of fresh namespaces with its own system bus
#     (tests/support/systemd-sandbox.sh, the integration tests' harness), running up to 3,000
#     `sleep infinity` services and 7,000 process-less oneshot services;
#   - crashwatch (release build) and prometheus-node-exporter on that bus, each on a free port;
#   - for the churn figure, a second sandboxed systemd and crashwatch, through which 100,000
#     transient `/bin/true` services come and go (10,000 with --quick);
#   - for the throughput figures, a private dbus-daemon and a fake systemd (examples/benchtool.rs)
#     sending systemd-shaped PropertiesChanged signals.
# Measurements are made by examples/benchtool.rs (HTTP timing, /proc accounting, StatsD arrival
# stamps) so that no figure depends on the resolution of a shell's clock.
#
# Needs root (namespaces, cgroups, nsenter). On Debian/Ubuntu it installs what is missing:
# prometheus-node-exporter, dbus, systemd, util-linux, bsdutils. Network use is loopback only.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib/apt.sh
source scripts/lib/apt.sh
ROOT=$PWD

QUICK=0 RUNS="" MICRO=1 OUT=$ROOT/BENCHMARKS.md
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --runs) RUNS=$2; shift ;;
    --no-micro) MICRO=0 ;;
    --out) OUT=$2; shift ;;
    -h | --help) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "scripts/bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$QUICK" = 1 ]; then
  : "${RUNS:=3}"
  SIZES=(100 1000)
  MISSED_RUNS=1 LOOPS=20 IDLE_S=5 CYCLES=15 TP_RUNS=$RUNS
  MICRO=0
else
  : "${RUNS:=5}"
  SIZES=(100 1000 3000)
  # Loops: a p99 needs about 100 samples. Throughput runs: the bus rate moves most with the
  # machine's other load, so it gets more pairs.
  MISSED_RUNS=3 LOOPS=100 IDLE_S=10 CYCLES=30 TP_RUNS=$((RUNS * 2 - 1))
fi
FOOTPRINT_UNITS=10000 # RSS is also taken with this many units
# Unit churn: this many transient units come and go; an unloaded unit keeps its series this long.
# A short retention shows the steady state within seconds (the default, 15 minutes, would hold
# every unit of a run this short).
if [ "$QUICK" = 1 ]; then CHURN_UNITS=10000; else CHURN_UNITS=100000; fi
CHURN_RETENTION_S=5

say() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
  printf 'scripts/bench.sh: %s\n' "$*" >&2
  exit 1
}
T0=$SECONDS

# ------------------------------------------------------------------------------------ prerequisites
[ "$(id -u)" = 0 ] || die "needs root: it runs systemd in namespaces (see tests/support/systemd-sandbox.sh)"

missing_packages() {
  local pkgs=() sandbox
  have prometheus-node-exporter || pkgs+=(prometheus-node-exporter)
  # The scrapes over TLS: certificates, a bcrypt hash and a client that keeps its connection.
  have openssl || pkgs+=(openssl)
  have htpasswd || pkgs+=(apache2-utils)
  have curl || pkgs+=(curl)
  read -r -a sandbox <<<"$(sandbox_missing_packages)"
  pkgs+=("${sandbox[@]}")
  echo "${pkgs[@]}"
}
read -r -a pkgs <<<"$(missing_packages)"
if [ "${#pkgs[@]}" -gt 0 ]; then
  have apt-get || die "missing ${pkgs[*]} and no apt-get to install them"
  say "installing ${pkgs[*]}"
  apt_install_quietly "${pkgs[@]}" || die "apt-get install ${pkgs[*]} failed"
fi
NODE_EXPORTER=$(command -v prometheus-node-exporter)
NE_VERSION=$("$NODE_EXPORTER" --version 2>&1 | head -1 | awk '{print $3}')
SYSTEMD_VERSION=$(/lib/systemd/systemd --version | head -1 | awk '{print $2}')

# ------------------------------------------------------------------------------------ build
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
locked=()
if [ -f Cargo.lock ]; then locked=(--locked); fi
say "building crashwatch and examples/benchtool (release)"
cargo build --release "${locked[@]}" --bin crashwatch --example benchtool >&2
CW_BIN=$CARGO_TARGET_DIR/release/crashwatch
BT=$CARGO_TARGET_DIR/release/examples/benchtool

# ------------------------------------------------------------------------------------ clean-up
WORK=$(mktemp -d /tmp/cw-bench.XXXXXX)
PIDS=()
SDTEST_DIR=""
cleanup() {
  local p
  set +e
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  if [ -n "$SDTEST_DIR" ]; then
    SDTEST_DIR=$SDTEST_DIR bash "$ROOT/tests/support/systemd-sandbox.sh" stop >/dev/null 2>&1
  fi
  if [ -n "${CW_BENCH_KEEP:-}" ]; then
    echo "scripts/bench.sh: kept $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Stops one process started here and forgets it.
stop_pid() {
  local pid=$1 p keep=()
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

# ------------------------------------------------------------------------------------ helpers
# Retries "$@" every 0.1 s until it succeeds or $1 seconds pass.
wait_until() {
  local end=$((SECONDS + $1))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.1
  done
}
# Whether file $2 (which may not exist yet) contains $1.
has() { grep -q "$1" "$2" 2>/dev/null; }
# The value of key $1 in a `key=value key=value` line on stdin.
kv() { tr ' ' '\n' | sed -n "s/^$1=//p" | head -1; }
# Median, min and max of the numbers on stdin.
stats() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) {print "nan nan nan"; exit}; m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; print m, a[1], a[NR]}'; }
num() { LC_ALL=C printf "%.${2:-2}f" "$1"; }
# An integer with thousands separators: 100000 -> 100,000.
thousands() { sed -e ':a' -e 's/\([0-9]\)\([0-9]\{3\}\)\($\|,\)/\1,\2\3/' -e 'ta' <<<"$1"; }
# "median (min..max)" of the numbers on stdin, with $1 decimals.
spread() {
  local m lo hi
  read -r m lo hi < <(stats)
  echo "$(num "$m" "$1") ($(num "$lo" "$1")..$(num "$hi" "$1"))"
}
median() { stats | awk '{print $1}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "inf"; else printf "%.0f", a / b }'; }

REPORT=$WORK/report.md
md() { printf '%s\n' "$*" >>"$REPORT"; }

# ------------------------------------------------------------------------------------ sandbox
# Starts a fresh sandbox named $1 and sets ADDR, PID1, UNIT_DIR and SD_RUN to its bus, PID 1,
# unit directory and /run.
start_sandbox() {
  local env_out
  SDTEST_DIR=$WORK/$1-$$ # its basename names the sandbox's cgroups, so it must be unique
  # No journald in the sandbox: it would add its own work to systemd's on every change.
  env_out=$(SDTEST_DIR=$SDTEST_DIR SDTEST_JOURNAL=0 bash "$ROOT/tests/support/systemd-sandbox.sh" start 2>"$WORK/sandbox.err") ||
    die "the systemd sandbox did not start: $(cat "$WORK/sandbox.err")"
  ADDR=$(sed -n 's/^DBUS_SYSTEM_BUS_ADDRESS=//p' <<<"$env_out")
  PID1=$(sed -n 's/^SDTEST_PID1=//p' <<<"$env_out")
  UNIT_DIR=$(sed -n 's/^SDTEST_UNIT_DIR=//p' <<<"$env_out")
  SD_RUN=$SDTEST_DIR/run # /run inside the sandbox
}
stop_sandbox() {
  SDTEST_DIR=$SDTEST_DIR bash "$ROOT/tests/support/systemd-sandbox.sh" stop >/dev/null 2>&1 || true
  SDTEST_DIR=""
}
say "starting a sandboxed systemd"
start_sandbox cwbench

sd() { nsenter -t "$PID1" -p -m -- timeout 300 systemctl "$@"; }
prop() { sd show -p "$2" --value "$1"; }
reload() {
  busctl --address="$ADDR" call org.freedesktop.systemd1 /org/freedesktop/systemd1 \
    org.freedesktop.systemd1.Manager Reload >/dev/null
}

mkdir -p "$SD_RUN/cwbench"
# A service that fails its first N runs and then stays up: a crash loop that ends by itself, so
# systemd's NRestarts is known exactly.
cat >"$SD_RUN/cwbench/fail-first.sh" <<'EOF'
#!/bin/sh
f=/run/cwbench/$1.count
n=$(cat "$f" 2>/dev/null || echo 0)
echo $((n + 1)) >"$f"
[ "$n" -ge "$2" ] && exec sleep infinity
exit 1
EOF
chmod 755 "$SD_RUN/cwbench/fail-first.sh"
printf '[Unit]\nDescription=bench load %%i\n[Service]\nExecStart=/bin/sleep infinity\n' >"$UNIT_DIR/bench@.service"
# No process at all: a oneshot that stays active, for the 10,000-unit footprint.
printf '[Unit]\nDescription=idle %%i\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStop=/bin/true\n' >"$UNIT_DIR/idle@.service"
printf '[Unit]\nDescription=crash loop %%i for detection latency\nStartLimitIntervalSec=0\n[Service]\nExecStart=/bin/false\nRestart=always\nRestartSec=100ms\n' >"$UNIT_DIR/latency@.service"
cp "$UNIT_DIR/latency@.service" "$UNIT_DIR/latencyctx@.service"
for r in $(seq "$MISSED_RUNS"); do
  printf '[Unit]\nStartLimitIntervalSec=0\n[Service]\nExecStart=/bin/sh /run/cwbench/fail-first.sh %%n 10\nRestart=on-failure\nRestartSec=100ms\n' >"$UNIT_DIR/auto-$r.service"
  printf '[Unit]\nStartLimitIntervalSec=0\n[Service]\nExecStart=/bin/sh /run/cwbench/fail-first.sh %%n 3\nRestart=on-failure\nRestartSec=100ms\n' >"$UNIT_DIR/flap-$r.service"
  # Manual starts count against the start limit too; 10 in a few seconds would hit it.
  printf '[Unit]\nStartLimitIntervalSec=0\n[Service]\nExecStart=/bin/false\n' >"$UNIT_DIR/ext-$r.service"
done
reload
SD_DBUS=$(ps -o pid=,comm= --ppid "$PID1" | awk '$2 == "dbus-daemon" {print $1; exit}')
[ -n "$SD_DBUS" ] || die "no dbus-daemon in the sandbox"

# ------------------------------------------------------------------------------------ daemons
"$BT" statsd-listen --out "$WORK/statsd.log" >"$WORK/statsd.port" &
PIDS+=($!)
wait_until 10 has port= "$WORK/statsd.port" || die "the StatsD listener did not start"
STATSD_PORT=$(kv port <"$WORK/statsd.port")

CW_PORT=$("$BT" free-port)
CW_URL=http://127.0.0.1:$CW_PORT/metrics
start_crashwatch() {
  DBUS_SYSTEM_BUS_ADDRESS=$ADDR "$CW_BIN" run --listen "127.0.0.1:$CW_PORT" \
    --statsd "127.0.0.1:$STATSD_PORT" --events "$WORK/events.jsonl" --max-units 12000 \
    2>"$WORK/crashwatch.log" &
  CWP=$!
  PIDS+=("$CWP")
  wait_until 20 has Watching "$WORK/crashwatch.log" || die "crashwatch did not start: $(cat "$WORK/crashwatch.log")"
}
start_crashwatch

NE_PORT=$("$BT" free-port)
DBUS_SYSTEM_BUS_ADDRESS=$ADDR "$NODE_EXPORTER" --web.listen-address="127.0.0.1:$NE_PORT" \
  --collector.disable-defaults --collector.systemd --collector.systemd.enable-restarts-metrics \
  >"$WORK/node_exporter.log" 2>&1 &
NEP=$!
PIDS+=("$NEP")
NE_URL=http://127.0.0.1:$NE_PORT/metrics
wait_until 20 "$BT" metric --url "$NE_URL" --name node_systemd_system_running >/dev/null 2>&1 ||
  die "node_exporter did not start: $(cat "$WORK/node_exporter.log")"

cwm() { "$BT" metric --url "$CW_URL" "$@"; }
nem() { "$BT" metric --url "$NE_URL" "$@"; }

# ------------------------------------------------------------------------------------ footprint, idle
say "idle: CPU, wake-ups and RSS over ${IDLE_S} s with nothing happening"
sleep 2
"$BT" proc --pids "$CWP,$NEP" --seconds "$IDLE_S" >"$WORK/idle0.txt"
CW_IDLE=$(grep "pid=$CWP " "$WORK/idle0.txt")
NE_IDLE=$(grep "pid=$NEP " "$WORK/idle0.txt")
RSS0=$(kv rss_kib <<<"$CW_IDLE")

# ------------------------------------------------------------------------------------ missed restarts
say "missed restarts: $MISSED_RUNS run(s) of three scenarios"
settled() { # unit, NRestarts wanted: the loop has ended and the unit is up
  [ "$(prop "$1" NRestarts)" = "$2" ] && [ "$(prop "$1" SubState)" = running ]
}
is_failed() { [ "$(prop "$1" ActiveState)" = failed ]; }
cw_restarts() { cwm --name crashwatch_unit_restarts_total --label "unit=$1"; }
ne_restarts() { nem --name node_systemd_service_restart_total --label "name=$1"; }
declare -A TRUTH CWC NEC
for s in auto ext flap; do TRUTH[$s]=0 CWC[$s]=0 NEC[$s]=0; done
add() { # scenario truth cw_before cw_after ne_before ne_after
  TRUTH[$1]=$((TRUTH[$1] + $2))
  CWC[$1]=$(awk -v a="${CWC[$1]}" -v b="$3" -v c="$4" 'BEGIN {print a + c - b}')
  NEC[$1]=$(awk -v a="${NEC[$1]}" -v b="$5" -v c="$6" 'BEGIN {print a + c - b}')
}
for r in $(seq "$MISSED_RUNS"); do
  # 1. Restart= loop: systemd restarts the unit 10 times, then it stays up.
  u=auto-$r.service
  nb=$(ne_restarts "$u") cb=$(cw_restarts "$u")
  sd start --no-block "$u"
  wait_until 60 settled "$u" 10 || die "$u did not settle: NRestarts $(prop "$u" NRestarts)"
  sleep 0.5
  add auto "$(prop "$u" NRestarts)" "$cb" "$(cw_restarts "$u")" "$nb" "$(ne_restarts "$u")"
  # 2. Driven from outside: Restart=no, started again by hand each time it fails, 10 starts.
  u=ext-$r.service
  nb=$(ne_restarts "$u") cb=$(cw_restarts "$u")
  for i in $(seq 10); do
    sd start "$u" || true # the start job may already see the exit
    wait_until 20 is_failed "$u" || die "$u did not fail"
  done
  sleep 0.5
  # Every start after the first followed a failure: 9 restarts (systemd's NRestarts stays 0).
  add ext 9 "$cb" "$(cw_restarts "$u")" "$nb" "$(ne_restarts "$u")"
  # 3. A loop that starts and ends between two scrapes: 3 automatic restarts, then up, then
  # stopped (and unloaded by systemd) before the next scrape.
  u=flap-$r.service
  nb=$(ne_restarts "$u") cb=$(cw_restarts "$u")
  sd start --no-block "$u"
  wait_until 60 settled "$u" 3 || die "$u did not settle"
  truth=$(prop "$u" NRestarts)
  sd stop "$u"
  sleep 0.5
  add flap "$truth" "$cb" "$(cw_restarts "$u")" "$nb" "$(ne_restarts "$u")"
done

# ------------------------------------------------------------------------------------ detection latency
say "detection latency: $LOOPS crash loops, then $LOOPS with crash context on"
# A second crashwatch with crash context on (a journal directory to read each crash's lines from)
# runs through both halves, so each half has the same two watchers on the bus; the first half is
# measured on the main crashwatch (no journal, context off), the second on this one. Its journal
# directory is empty: each lookup runs journalctl and finds nothing, which measures that lookups
# stay off the event path, not how fast journald reads.
mkdir -p "$WORK/journal"
printf '[history]\njournal_directory = "%s"\n' "$WORK/journal" >"$WORK/context.toml"
"$BT" statsd-listen --out "$WORK/statsd-ctx.log" >"$WORK/statsd-ctx.port" &
PIDS+=($!)
wait_until 10 has port= "$WORK/statsd-ctx.port" || die "the second StatsD listener did not start"
CWX_PORT=$("$BT" free-port)
DBUS_SYSTEM_BUS_ADDRESS=$ADDR "$CW_BIN" run --listen "127.0.0.1:$CWX_PORT" \
  --config "$WORK/context.toml" --statsd "127.0.0.1:$(kv port <"$WORK/statsd-ctx.port")" \
  --events "$WORK/events-ctx.jsonl" --max-units 12000 2>"$WORK/crashwatch-ctx.log" &
CWXP=$!
PIDS+=("$CWXP")
wait_until 20 has Watching "$WORK/crashwatch-ctx.log" || die "crashwatch with context did not start: $(cat "$WORK/crashwatch-ctx.log")"
# One unit per loop, so every loop starts from a clean slate whatever the previous stop left.
flagged() { grep -qF "unit.$1_service.crashlooping:1|g" "$2"; }
# A subscriber next to crashwatch stamps when systemd's signals reach the bus's clients, to split
# each latency into systemd and the bus, then crashwatch.
latency_loops() { # template, StatsD log
  local i
  for i in $(seq "$LOOPS"); do
    sd start --no-block "$1@$i.service"
    wait_until 30 flagged "$1_$i" "$2" || die "the loop of $1@$i.service was not flagged"
    sd stop "$1@$i.service"
  done
}
"$BT" stamp --address "$ADDR" --units latency --out "$WORK/stamps.txt" >"$WORK/stamp.out" &
STAMP=$!
PIDS+=("$STAMP")
wait_until 10 has ready "$WORK/stamp.out" || die "the stamping subscriber did not start"
latency_loops latency "$WORK/statsd.log"
latency_loops latencyctx "$WORK/statsd-ctx.log"
sleep 1
stop_pid "$STAMP"
CTX_LOOKUPS=$("$BT" metric --url "http://127.0.0.1:$CWX_PORT/metrics" \
  --name crashwatch_crash_context_lookups_total --label result=empty 2>/dev/null || echo 0)
stop_pid "$CWXP"
"$BT" latency --events "$WORK/events.jsonl" --statsd "$WORK/statsd.log" --stamps "$WORK/stamps.txt" \
  --units latency@ >"$WORK/latency.txt"
"$BT" latency --events "$WORK/events-ctx.jsonl" --statsd "$WORK/statsd-ctx.log" --stamps "$WORK/stamps.txt" \
  --units latencyctx@ >"$WORK/latency-ctx.txt"

# ------------------------------------------------------------------------------------ scrapes over TLS
# The same exporters again, each with the same web configuration file (TLS and basic auth, as
# exporter-toolkit reads it), scraped by curl over one kept-alive connection as Prometheus does,
# once with gzip and once without. The first GET of each run (the handshake and the one bcrypt
# check) is left out of the latency, as a long-lived scrape connection pays them once.
TLS_UNITS=1000
tls_scrapes() {
  say "scrapes over TLS with basic auth at $TLS_UNITS units: certificates and a second pair of exporters"
  TLS=$WORK/tls
  mkdir -p "$TLS"
  (
    cd "$TLS"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench CA" \
      -keyout ca-key.pem -out ca.pem -addext basicConstraints=critical,CA:TRUE 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
      -keyout server-key.pem -out server.csr 2>/dev/null
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
      -extfile server.ext -out server.pem 2>/dev/null
  )
  printf 'bench-password' >"$TLS/password"
  HASH=$(htpasswd -nbBC 10 prometheus bench-password | cut -d: -f2-)
  cat >"$TLS/web-config.yml" <<WEB
tls_server_config:
  cert_file: $TLS/server.pem
  key_file: $TLS/server-key.pem
basic_auth_users:
  prometheus: '$HASH'
WEB
  CWT_PORT=$("$BT" free-port)
  DBUS_SYSTEM_BUS_ADDRESS=$ADDR "$CW_BIN" run --web.listen-address "127.0.0.1:$CWT_PORT" \
    --web.config.file "$TLS/web-config.yml" --max-units 12000 2>"$WORK/crashwatch-tls.log" &
  CWTP=$!
  PIDS+=("$CWTP")
  NET_PORT=$("$BT" free-port)
  DBUS_SYSTEM_BUS_ADDRESS=$ADDR "$NODE_EXPORTER" --web.listen-address="127.0.0.1:$NET_PORT" \
    --web.config.file="$TLS/web-config.yml" \
    --collector.disable-defaults --collector.systemd --collector.systemd.enable-restarts-metrics \
    >"$WORK/node_exporter-tls.log" 2>&1 &
  NETP=$!
  PIDS+=("$NETP")
  tls_get() { # url, then curl's own options; the body on stdout
    local url=$1
    shift
    curl -sf --cacert "$TLS/ca.pem" -u "prometheus:$(cat "$TLS/password")" "$@" "$url"
  }
  tls_up() { tls_get "$1" >/dev/null; }
  wait_until 30 tls_up "https://127.0.0.1:$CWT_PORT/metrics" ||
    die "crashwatch did not answer over TLS: $(cat "$WORK/crashwatch-tls.log")"
  wait_until 30 tls_up "https://127.0.0.1:$NET_PORT/metrics" ||
    die "node_exporter did not answer over TLS: $(cat "$WORK/node_exporter-tls.log")"
  # The TLS crashwatch has the sandbox's running units from its start-up snapshot.
  tls_units() { [ "$(tls_get "https://127.0.0.1:$CWT_PORT/metrics" | grep -c '^crashwatch_unit_crashlooping{unit="bench@')" -ge "$TLS_UNITS" ]; }
  wait_until 60 tls_units || die "the TLS crashwatch does not show $TLS_UNITS units"
  cpu_ns() { # the summed on-CPU time of every thread of the given PIDs
    local p
    for p in "$@"; do cat /proc/"$p"/task/*/schedstat; done 2>/dev/null | awk '{s += $1} END {printf "%.0f", s}'
  }
  tls_scrape() { # url, GETs, PIDs (comma-separated), then curl's own options
    local url=$1 count=$2 pids c0 c1 urls=() times
    IFS=, read -r -a pids <<<"$3"
    shift 3
    for _ in $(seq "$count"); do urls+=(-o /dev/null "$url"); done
    # A first connection checks the password once: both exporters cache the bcrypt result.
    tls_get "$url" "$@" >/dev/null
    c0=$(cpu_ns "${pids[@]}")
    # One curl, one connection: --write-out prints each transfer's time, size and new connects.
    times=$(curl -s --cacert "$TLS/ca.pem" -u "prometheus:$(cat "$TLS/password")" "$@" \
      -w '%{time_total} %{size_download} %{num_connects}\n' "${urls[@]}" 2>/dev/null) || true
    c1=$(cpu_ns "${pids[@]}")
    # The first GET's time holds the handshake: left out of the latency, kept in the CPU.
    printf 'lat_median_ms=%s cpu_ms=%s bytes=%s\n' \
      "$(sed 1d <<<"$times" | awk '{printf "%.3f\n", $1 * 1000}' | median)" \
      "$(awk -v c0="$c0" -v c1="$c1" -v n="$count" 'BEGIN {printf "%.3f", (c1 - c0) / 1e6 / n}')" \
      "$(tail -1 <<<"$times" | awk '{print $2}')"
    printf 'connects=%s\n' "$(awk '{c += $3} END {print c}' <<<"$times")" >>"$WORK/tls-connects.txt"
  }
  for run in $(seq "$RUNS"); do
    order=(cw ne cwz nez)
    if [ $((run % 2)) = 0 ]; then order=(nez cwz ne cw); fi
    for who in "${order[@]}"; do
      case $who in
        cw) tls_scrape "https://127.0.0.1:$CWT_PORT/metrics" 51 "$CWTP,$SD_DBUS,$PID1" ;;
        cwz) tls_scrape "https://127.0.0.1:$CWT_PORT/metrics" 51 "$CWTP,$SD_DBUS,$PID1" --compressed ;;
        ne) tls_scrape "https://127.0.0.1:$NET_PORT/metrics" 4 "$NETP,$SD_DBUS,$PID1" ;;
        nez) tls_scrape "https://127.0.0.1:$NET_PORT/metrics" 4 "$NETP,$SD_DBUS,$PID1" --compressed ;;
      esac >>"$WORK/tls-$who.txt"
    done
  done
  stop_pid "$CWTP"
  stop_pid "$NETP"
}

# ------------------------------------------------------------------------------------ series per node
# What each exporter costs Prometheus per node: series (the non-comment lines of /metrics) and
# bytes per scrape, at 300 and 1,000 running units, crashwatch with its default series budget. A
# fresh crashwatch, as for the scrapes below: the loops above crashed units whose series it
# would keep for an hour. The units are stopped again at the end, so the scrapes start from none.
# Sink events crashwatch dropped, summed over the instances a restart ends.
DROPPED_BEFORE=0
restart_crashwatch() {
  DROPPED_BEFORE=$((DROPPED_BEFORE + $(cwm --name crashwatch_sink_events_dropped_total)))
  stop_pid "$CWP"
  start_crashwatch
}
# start_bench_units FROM TO: starts bench@FROM..TO and waits until crashwatch has the series of
# TO of them (the loop flag, which every unit has).
start_bench_units() {
  seq -f 'bench@%g.service' "$1" "$2" |
    xargs -n 500 nsenter -t "$PID1" -p -m -- timeout 300 systemctl start
  cw_units() { [ "$(cwm --name crashwatch_unit_crashlooping --label-prefix unit=bench@ --series)" -ge "$1" ]; }
  wait_until 120 cw_units "$2" || die "crashwatch did not hear $2 starts"
  sleep 1
}
SERIES_SIZES=(300 1000)
declare -A SER
restart_crashwatch
prev=0
for n in "${SERIES_SIZES[@]}"; do
  say "series per node at $n running units"
  start_bench_units $((prev + 1)) "$n"
  prev=$n
  for who in cw ne; do
    case $who in cw) url=$CW_URL ;; ne) url=$NE_URL ;; esac
    curl -sf -o "$WORK/series-$n-$who.txt" "$url" || die "GET $url failed"
    SER[$n,$who,series]=$(grep -vc '^#' "$WORK/series-$n-$who.txt")
    SER[$n,$who,bytes]=$(wc -c <"$WORK/series-$n-$who.txt")
  done
done
seq -f 'bench@%g.service' 1 "$prev" | xargs -n 500 nsenter -t "$PID1" -p -m -- timeout 300 systemctl stop

# ------------------------------------------------------------------------------------ scrapes
# A fresh crashwatch for the scrapes, as after an upgrade: the loops above stopped their units and
# systemd unloaded them, so node_exporter no longer lists them, while crashwatch would keep their
# series for --unloaded-retention (15 min). Restarted, both exporters list the same units.
restart_crashwatch
declare -A SCR
prev=0
for n in "${SIZES[@]}"; do
  say "scrapes at $n running units: starting units"
  start_bench_units $((prev + 1)) "$n"
  prev=$n
  say "scrapes at $n running units: $RUNS runs"
  if [ "$n" -ge 3000 ]; then ne_count=2; elif [ "$n" -ge 1000 ]; then ne_count=3; else ne_count=10; fi
  for run in $(seq "$RUNS"); do
    # Alternate who goes first, so a drift in the machine's load does not favour one side.
    order=(cw cwc ne)
    if [ $((run % 2)) = 0 ]; then order=(ne cwc cw); fi
    for who in "${order[@]}"; do
      case $who in
        cw) "$BT" scrape --url "$CW_URL" --count 50 --pids "$CWP,$SD_DBUS,$PID1" ;;
        cwc) "$BT" scrape --url "$CW_URL" --count 10 --pids "$CWP,$SD_DBUS,$PID1" --poke ;;
        ne) "$BT" scrape --url "$NE_URL" --count "$ne_count" --pids "$NEP,$SD_DBUS,$PID1" ;;
      esac >>"$WORK/scrape-$n-$who.txt"
    done
  done
  # D-Bus messages per scrape, in a separate pass: the monitor itself costs dbus-daemon time.
  dbus-monitor --address "$ADDR" --profile >"$WORK/monitor-$n.txt" 2>/dev/null &
  MON=$!
  PIDS+=("$MON")
  wait_until 10 test -s "$WORK/monitor-$n.txt"
  sleep 0.5
  l0=$(wc -l <"$WORK/monitor-$n.txt")
  "$BT" scrape --url "$CW_URL" --count 10 --pids "$CWP" --poke >/dev/null # 11 GETs with the warm-up
  sleep 0.5
  l1=$(wc -l <"$WORK/monitor-$n.txt")
  "$BT" scrape --url "$NE_URL" --count 1 --pids "$NEP" >/dev/null # 2 GETs
  sleep 0.5
  l2=$(wc -l <"$WORK/monitor-$n.txt")
  stop_pid "$MON"
  SCR[$n,cw_msgs]=$(awk -v a="$l0" -v b="$l1" 'BEGIN {printf "%.1f", (b - a) / 11}')
  SCR[$n,ne_msgs]=$(awk -v a="$l1" -v b="$l2" 'BEGIN {printf "%.0f", (b - a) / 2}')
  SCR[$n,cw_rss]=$("$BT" proc --pids "$CWP" --seconds 0 | kv rss_kib)
  SCR[$n,ne_rss]=$("$BT" proc --pids "$NEP" --seconds 0 | kv rss_kib)
  if [ "$n" = "$TLS_UNITS" ]; then tls_scrapes; fi
done

# ------------------------------------------------------------------------------------ start-up
# A fresh crashwatch, next to the one already running, started $RUNS times with the bench@ units
# of the largest size up: from exec until its /metrics lists them all, its CPU time until then,
# and that of the sandbox's systemd and dbus-daemon meanwhile. The D-Bus messages of its
# start-up are counted in a second pass, as the monitor costs dbus-daemon time. No journal
# history: the sandbox writes none, and the host's is not the sandbox's.
STARTUP_UNITS=${SIZES[-1]}
say "start-up at $STARTUP_UNITS running units: $RUNS runs"
schedstat_ms() { cat /proc/"$1"/task/*/schedstat /proc/"$2"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.3f", s / 1e6}'; }
fresh_crashwatch() {
  local port
  port=$("$BT" free-port)
  "$BT" start-up --url "http://127.0.0.1:$port/metrics" --prefix unit=bench@ --units "$STARTUP_UNITS" -- \
    env DBUS_SYSTEM_BUS_ADDRESS="$ADDR" "$CW_BIN" run --listen "127.0.0.1:$port" --no-journal-history --max-units 12000
}
for run in $(seq "$RUNS"); do
  s0=$(schedstat_ms "$PID1" "$SD_DBUS")
  line=$(fresh_crashwatch) || die "a fresh crashwatch did not list $STARTUP_UNITS units"
  s1=$(schedstat_ms "$PID1" "$SD_DBUS")
  echo "$line sd_cpu_ms=$(awk -v a="$s0" -v b="$s1" 'BEGIN {printf "%.1f", b - a}')" >>"$WORK/startup.txt"
  sleep 1
done
dbus-monitor --address "$ADDR" --profile >"$WORK/monitor-startup.txt" 2>/dev/null &
MON=$!
PIDS+=("$MON")
wait_until 10 test -s "$WORK/monitor-startup.txt"
for run in $(seq "$RUNS"); do fresh_crashwatch >/dev/null; done
sleep 0.5
stop_pid "$MON"
# Each start is one connection, known by its ListUnits call: the messages it sent or received.
awk -F'\t' 'NR == FNR { if ($1 == "mc" && $8 == "ListUnits") conn[$4] = 1; next }
  ($4 in conn) { n[$4]++; next } ($5 in conn) { n[$5]++ }
  END { for (c in n) print n[c] }' "$WORK/monitor-startup.txt" "$WORK/monitor-startup.txt" >"$WORK/startup-msgs.txt"

# ------------------------------------------------------------------------------------ footprint at 10,000
have_units=${SIZES[-1]}
say "footprint at $FOOTPRINT_UNITS units: starting $((FOOTPRINT_UNITS - have_units)) more"
seq -f 'idle@%g.service' 1 $((FOOTPRINT_UNITS - have_units)) |
  xargs -n 500 nsenter -t "$PID1" -p -m -- timeout 300 systemctl start
all_units() {
  local a b
  a=$(cwm --name crashwatch_unit_crashlooping --label-prefix unit=bench@ --series)
  b=$(cwm --name crashwatch_unit_crashlooping --label-prefix unit=idle@ --series)
  [ $((a + b)) -ge "$FOOTPRINT_UNITS" ]
}
wait_until 300 all_units || die "crashwatch did not hear $FOOTPRINT_UNITS units"
sleep 2
"$BT" proc --pids "$CWP" --seconds "$IDLE_S" >"$WORK/idle10k.txt"
RSS10K=$(kv rss_kib <"$WORK/idle10k.txt")
CW_BYTES_10K=$("$BT" scrape --url "$CW_URL" --count 1 --pids "$CWP" | kv bytes)
DROPPED_A=$(($(cwm --name crashwatch_sink_events_dropped_total) + DROPPED_BEFORE))

stop_pid "$NEP"
stop_pid "$CWP"
stop_sandbox

# ------------------------------------------------------------------------------------ unit churn
say "unit churn: $CHURN_UNITS transient units come and go, --unloaded-retention ${CHURN_RETENTION_S}s"
# A fresh systemd, so the 10,000 loaded units above do not slow it down; only crashwatch watches
# (node_exporter keeps nothing per unit between scrapes).
start_sandbox cwchurn
CW_PORT=$("$BT" free-port)
CW_URL=http://127.0.0.1:$CW_PORT/metrics
DBUS_SYSTEM_BUS_ADDRESS=$ADDR "$CW_BIN" run --listen "127.0.0.1:$CW_PORT" \
  --events "$WORK/churn-events.jsonl" --events-max-size 0 --unloaded-retention "${CHURN_RETENTION_S}s" \
  2>"$WORK/churn-crashwatch.log" &
CWP=$!
PIDS+=("$CWP")
wait_until 20 has Watching "$WORK/churn-crashwatch.log" ||
  die "crashwatch did not start: $(cat "$WORK/churn-crashwatch.log")"
sleep 2
CHURN_RSS0=$("$BT" proc --pids "$CWP" --seconds 0 | kv rss_kib)
CHURN_UNITS0=$(cwm --name crashwatch_units)
"$BT" churn --address "$ADDR" --count "$CHURN_UNITS" --in-flight 32 --pid "$CWP" \
  --sample-at "$(seq -s, "$((CHURN_UNITS / 10))" "$((CHURN_UNITS / 10))" "$CHURN_UNITS")" --metrics "$CW_URL" \
  >"$WORK/churn.txt" || die "the churn failed: $(tail -3 "$WORK/churn.txt")"
# Starts crashwatch heard: one `starting` record each in the event record (the per-unit counters
# leave with the units, so their sum cannot say), kept whole: rotation is off for this run, or the
# files rotated away would take their records with them. Wait until the record stops growing.
heard_starts() { grep -cF '"transition":"starting","unit":"churn-' "$WORK/churn-events.jsonl" || true; }
heard=$(heard_starts) still=0
while [ "$heard" -lt "$CHURN_UNITS" ] && [ "$still" -lt 10 ]; do
  sleep 1
  now=$(heard_starts)
  if [ "$now" = "$heard" ]; then still=$((still + 1)); else still=0 heard=$now; fi
done
CHURN_HEARD=$heard
# Then the retention passes and the table is back where it started.
back_to_start() { [ "$(cwm --name crashwatch_units)" = "$CHURN_UNITS0" ]; }
wait_until $((CHURN_RETENTION_S + 60)) back_to_start || say "crashwatch_units is not back to $CHURN_UNITS0"
CHURN_SETTLED_S=$(awk -v e="$(kv end_us <"$WORK/churn.txt")" -v n="$(date +%s%6N)" 'BEGIN {printf "%.1f", (n - e) / 1e6}')
sleep 1
CHURN_RSS_AFTER=$("$BT" proc --pids "$CWP" --seconds 0 | kv rss_kib)
CHURN_UNITS_END=$(cwm --name crashwatch_units)
CHURN_OVERFLOW=$(cwm --name crashwatch_units_overflow_total)
CHURN_SIG_DROPPED=$(cwm --name crashwatch_signals_dropped_total)
CHURN_SINK_DROPPED=$(cwm --name crashwatch_sink_events_dropped_total)
stop_pid "$CWP"
stop_sandbox

# ------------------------------------------------------------------------------------ throughput
say "throughput: $TP_RUNS runs of $CYCLES crash-restart cycles of 100 units through a private bus"
BUS=$WORK/bus.sock
cat >"$WORK/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=$BUS</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="signal"/>
    <allow receive_type="error"/>
  </policy>
</busconfig>
EOF
dbus-daemon --config-file="$WORK/bus.conf" --nofork >"$WORK/dbus.log" 2>&1 &
PIDS+=($!)
PADDR=unix:path=$BUS
wait_until 10 test -S "$BUS" || die "the private dbus-daemon did not start"
"$BT" fake-systemd --address "$PADDR" --units 100 >"$WORK/fake.out" 2>&1 &
PIDS+=($!)
wait_until 10 has ready "$WORK/fake.out" || die "the fake systemd did not start: $(cat "$WORK/fake.out")"
SENT=$((CYCLES * 100 * 14))
HOLE_PORT=$("$BT" free-port) # StatsD with nobody listening: datagrams are built and sent

tp_subscriber() {
  "$BT" subscribe --address "$PADDR" --count "$SENT" >"$WORK/sub.out" &
  local sp=$!
  PIDS+=("$sp")
  wait_until 10 has ready "$WORK/sub.out"
  "$BT" blast --address "$PADDR" --cycles "$CYCLES" >"$WORK/blast.out"
  wait "$sp" || true
  local start sent recv last c0 c1
  start=$(kv start_us <"$WORK/blast.out") sent=$(kv sent <"$WORK/blast.out")
  recv=$(tail -1 "$WORK/sub.out" | kv received) last=$(tail -1 "$WORK/sub.out" | kv last_us)
  c0=$(head -1 "$WORK/sub.out" | kv cpu_ms) c1=$(tail -1 "$WORK/sub.out" | kv cpu_ms)
  echo "rate=$(awk -v n="$recv" -v a="$start" -v b="$last" 'BEGIN {printf "%.0f", n / ((b - a) / 1e6)}') lost=$((sent - recv)) cpu_us=$(awk -v c0="$c0" -v c1="$c1" -v n="$recv" 'BEGIN {printf "%.2f", (c1 - c0) * 1e3 / n}')"
}
tp_crashwatch() { # extra crashwatch flags
  local port log cp
  port=$("$BT" free-port)
  log=$WORK/tp-crashwatch.log
  DBUS_SYSTEM_BUS_ADDRESS=$PADDR "$CW_BIN" run --listen "127.0.0.1:$port" "$@" 2>"$log" &
  cp=$!
  PIDS+=("$cp")
  wait_until 20 has Watching "$log" || die "crashwatch did not start on the private bus: $(cat "$log")"
  "$BT" blast --address "$PADDR" --cycles "$CYCLES" --metrics "127.0.0.1:$port" --pid "$cp" >"$WORK/blast.out"
  stop_pid "$cp"
  local start sent handled done lost dropped cpu tr etr
  start=$(kv start_us <"$WORK/blast.out") sent=$(kv sent <"$WORK/blast.out")
  handled=$(kv handled <"$WORK/blast.out") done=$(kv done_us <"$WORK/blast.out")
  dropped=$(kv dropped <"$WORK/blast.out") cpu=$(kv cpu_ms <"$WORK/blast.out")
  tr=$(kv transitions <"$WORK/blast.out") etr=$(kv expected_transitions <"$WORK/blast.out")
  lost=$(awk -v s="$sent" -v h="$handled" 'BEGIN {print s - h}')
  if [ "$done" = 0 ]; then
    echo "rate=0 lost=$lost dropped=$dropped cpu_us=nan transitions=$tr/$etr"
  else
    echo "rate=$(awk -v n="$handled" -v a="$start" -v b="$done" 'BEGIN {printf "%.0f", n / ((b - a) / 1e6)}') lost=$lost dropped=$dropped cpu_us=$(awk -v c="$cpu" -v n="$handled" 'BEGIN {printf "%.2f", c * 1e3 / n}') transitions=$tr/$etr"
  fi
}
for run in $(seq "$TP_RUNS"); do
  order=(sub cw cwall cwctx)
  if [ $((run % 2)) = 0 ]; then order=(cwctx cwall cw sub); fi
  for who in "${order[@]}"; do
    case $who in
      sub) tp_subscriber ;;
      cw) tp_crashwatch ;;
      cwall) tp_crashwatch --statsd "127.0.0.1:$HOLE_PORT" --events "$WORK/tp-events.jsonl" ;;
      cwctx) tp_crashwatch --config "$WORK/context.toml" ;;
    esac >>"$WORK/tp-$who.txt"
    rm -f "$WORK/tp-events.jsonl"
  done
done

# ------------------------------------------------------------------------------------ in process
if [ "$MICRO" = 1 ]; then
  say "in-process benches (cargo bench)"
  cargo bench "${locked[@]}" --bench detect --bench systemd --bench render 2>/dev/null |
    grep -E '^(detector|pipeline|signal|tracker|source|render)/' >"$WORK/micro.txt" || true
fi

# ------------------------------------------------------------------------------------ report
col() { awk -v k="$1" '{for (i = 1; i <= NF; i++) if (index($i, k "=") == 1) print substr($i, length(k) + 2)}' "$2"; }
scr() { col "$1" "$WORK/scrape-$2-$3.txt" | spread "${4:-2}"; }
scrm() { col "$1" "$WORK/scrape-$2-$3.txt" | median; }

md "# crashwatch benchmarks"
md ""
md "Written by \`scripts/bench.sh$([ "$QUICK" = 1 ] && echo " --quick")\` on $(date -u +%F) ($(nproc) cores, $(uname -r), systemd $SYSTEMD_VERSION in a sandbox, node_exporter $NE_VERSION, $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo "crashwatch $($CW_BIN --version 2>/dev/null | awk '{print $2}')")). Figures are medians over $RUNS runs ($TP_RUNS for throughput) with the spread (min..max) in brackets; every ratio compares figures taken in this same run."
md ""
md "## Scrapes"
md ""
md "| units | exporter | latency ms | CPU ms/scrape | D-Bus msgs/scrape | bytes | RSS MiB |"
md "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"
for n in "${SIZES[@]}"; do
  md "| $n | node_exporter | $(scr lat_median_ms "$n" ne 1) | $(scr cpu_ms "$n" ne 1) | ${SCR[$n,ne_msgs]} | $(scrm bytes "$n" ne) | $(num "$(awk -v k="${SCR[$n,ne_rss]}" 'BEGIN {print k / 1024}')" 1) |"
  md "| $n | crashwatch, after a change | $(scr lat_median_ms "$n" cwc 2) | $(scr cpu_ms "$n" cwc 2) | ${SCR[$n,cw_msgs]} | $(scrm bytes "$n" cwc) | $(num "$(awk -v k="${SCR[$n,cw_rss]}" 'BEGIN {print k / 1024}')" 1) |"
  md "| $n | crashwatch, unchanged | $(scr lat_median_ms "$n" cw 3) | $(scr cpu_ms "$n" cw 3) | ${SCR[$n,cw_msgs]} | $(scrm bytes "$n" cw) | |"
done
md ""
md "| units | node_exporter / crashwatch: latency | CPU | (unchanged: latency | CPU) |"
md "| ---: | ---: | ---: | ---: | ---: |"
for n in "${SIZES[@]}"; do
  md "| $n | $(ratio "$(scrm lat_median_ms "$n" ne)" "$(scrm lat_median_ms "$n" cwc)")× | $(ratio "$(scrm cpu_ms "$n" ne)" "$(scrm cpu_ms "$n" cwc)")× | $(ratio "$(scrm lat_median_ms "$n" ne)" "$(scrm lat_median_ms "$n" cw)")× | $(ratio "$(scrm cpu_ms "$n" ne)" "$(scrm cpu_ms "$n" cw)")× |"
done
md ""
md "How: \`N\` instances of \`bench@.service\` (\`ExecStart=/bin/sleep infinity\`) running in the sandbox, started while both exporters ran, so crashwatch holds the series of every unit. Each run times sequential HTTP GETs of \`/metrics\` (plain HTTP/1.1, no compression, over one kept-alive connection as Prometheus scrapes; 50 for crashwatch unchanged, 10 after a change, $([ "${#SIZES[@]}" -gt 2 ] && echo "10/3/2" || echo "10/3") for node_exporter) after one untimed GET. *Latency* is the median GET time as the client sees it. *CPU* is on-CPU time per GET of the exporter **plus the sandbox's dbus-daemon and systemd**, from \`/proc/<pid>/task/*/schedstat\` before and after (nanosecond resolution; utime+stime agree to within their 10 ms ticks). *After a change*: before each GET a malformed request is sent on a connection of its own, which crashwatch answers with 400 and counts in \`crashwatch_errors_total\`, so \`/metrics\` has changed since the previous GET and is rendered afresh; *unchanged*: nothing happened since the previous GET, as on a quiet node between two Prometheus scrapes. *D-Bus messages* are counted with \`dbus-monitor --profile\` on the sandbox bus during separate GETs. node_exporter runs with \`--collector.disable-defaults --collector.systemd --collector.systemd.enable-restarts-metrics\`."
md ""

tls() { col "$1" "$WORK/tls-$2.txt" | spread "${3:-2}"; }
tlsm() { col "$1" "$WORK/tls-$2.txt" | median; }
md "### Over TLS with basic auth, at $TLS_UNITS units"
md ""
md "| exporter | gzip | latency ms | CPU ms/scrape | bytes on the wire |"
md "| --- | --- | ---: | ---: | ---: |"
for who in ne nez cw cwz; do
  case $who in ne | nez) name=node_exporter prec=1 ;; *) name=crashwatch prec=3 ;; esac
  case $who in *z) z=yes ;; *) z=no ;; esac
  md "| $name | $z | $(tls lat_median_ms "$who" "$prec") | $(tls cpu_ms "$who" "$prec") | $(tlsm bytes "$who") |"
done
md ""
md "| node_exporter / crashwatch over TLS | latency | CPU |"
md "| --- | ---: | ---: |"
md "| without gzip | $(ratio "$(tlsm lat_median_ms ne)" "$(tlsm lat_median_ms cw)")× | $(ratio "$(tlsm cpu_ms ne)" "$(tlsm cpu_ms cw)")× |"
md "| with gzip | $(ratio "$(tlsm lat_median_ms nez)" "$(tlsm lat_median_ms cwz)")× | $(ratio "$(tlsm cpu_ms nez)" "$(tlsm cpu_ms cwz)")× |"
md ""
md "How: a second crashwatch and a second node_exporter on the same sandbox bus, both started with the same \`--web.config.file\` (exporter-toolkit's format: TLS 1.3 with a P-256 certificate made for the run, and \`basic_auth_users\` with a bcrypt hash of cost 10 from \`htpasswd -nbBC 10\`). Each run is one curl process GETting \`/metrics\` over one kept-alive connection (51 times for crashwatch, 4 for node_exporter), with and without \`--compressed\` (\`Accept-Encoding: gzip\`, as Prometheus sends), after one GET on a connection of its own so that both exporters have checked and cached the password. *Latency* is curl's median \`time_total\` leaving out the first GET of the connection (the handshake); *CPU* is on-CPU time of the exporter plus the sandbox's dbus-daemon and systemd over the whole run, handshake included, per GET; *bytes* is what crossed the connection per GET (\`size_download\`). Nothing changes in the sandbox between GETs, so crashwatch's figure compares with *unchanged* above. New connections over all runs (one per curl, so the connection was kept): $(awk -F= '{c += $2; n++} END {printf "%d in %d curl runs", c, n}' "$WORK/tls-connects.txt")."
md ""

md "### Series and bytes per node"
md ""
md "| running units | exporter | series | bytes per scrape |"
md "| ---: | --- | ---: | ---: |"
for n in "${SERIES_SIZES[@]}"; do
  md "| $n | node_exporter | $(thousands "${SER[$n,ne,series]}") | $(thousands "${SER[$n,ne,bytes]}") |"
  md "| $n | crashwatch | $(thousands "${SER[$n,cw,series]}") | $(thousands "${SER[$n,cw,bytes]}") |"
done
md ""
md "How: one GET of each exporter's \`/metrics\` (no compression) with $(thousands "${SERIES_SIZES[0]}") and then $(thousands "${SERIES_SIZES[1]}") instances of \`bench@.service\` running and nothing else happening, after a fresh start of crashwatch with its default \`--unit-series=changed\`, so each healthy unit has two series; *series* are the lines that are not comments, the exporter's own metrics included. node_exporter lists every loaded unit whatever its type, crashwatch the \`*.service\` units."
md ""
md "## Start-up"
md ""
md "| at $(thousands "$STARTUP_UNITS") running units | crashwatch |"
md "| --- | ---: |"
md "| D-Bus messages of its start-up | $(spread 0 <"$WORK/startup-msgs.txt") |"
md "| from exec until \`/metrics\` lists every unit, ms | $(col ready_ms "$WORK/startup.txt" | spread 1) |"
md "| CPU until then, crashwatch, ms | $(col cpu_ms "$WORK/startup.txt" | spread 1) |"
md "| CPU meanwhile, systemd + dbus-daemon, ms | $(col sd_cpu_ms "$WORK/startup.txt" | spread 1) |"
md ""
md "How: with the \`bench@\` services of the scrapes running, a second crashwatch (\`--no-journal-history\`) is started $RUNS times by \`benchtool start-up\`, which GETs its \`/metrics\` every 2 ms from exec until all of them are listed, reads the process's CPU time from schedstat at that moment and stops it; systemd's and dbus-daemon's CPU time is taken from schedstat before and after each start. The D-Bus messages are counted with \`dbus-monitor --profile\` over $RUNS more starts: those sent or received by each start's connection, known by its \`ListUnits\` call."
md ""

md "## Missed restarts"
md ""
md "| scenario | systemd's truth | crashwatch counted | node_exporter counted |"
md "| --- | ---: | ---: | ---: |"
md "| \`Restart=on-failure\` loop: 10 automatic restarts, then up | ${TRUTH[auto]} | ${CWC[auto]} | ${NEC[auto]} |"
md "| driven from outside: \`Restart=no\`, 10 manual starts each after a failure | ${TRUTH[ext]} | ${CWC[ext]} | ${NEC[ext]} |"
md "| loop between two scrapes: 3 automatic restarts, up, stopped | ${TRUTH[flap]} | ${CWC[flap]} | ${NEC[flap]} |"
md ""
md "How: summed over $MISSED_RUNS run(s) with fresh units each. Truth is systemd's \`NRestarts\` read while the unit is still loaded, except for the outside-driven loop, whose restarts are the 9 starts of each run made while the unit was \`failed\` (systemd's own \`NRestarts\` stays 0 there). Counted is the increase of \`crashwatch_unit_restarts_total{unit}\` and of node_exporter's \`node_systemd_service_restart_total{name}\` between a scrape before and a scrape after the scenario; a series that is absent reads 0. The third unit is stopped before the second scrape and systemd unloads it, so node_exporter never lists it."
md ""

md "## Detection latency"
md ""
md "| from | to | p50 ms | p99 ms | max ms | samples |"
md "| --- | --- | ---: | ---: | ---: | ---: |"
LATENCY=$WORK/latency.txt # the figures lat_row reads: crash context off, then on
lat_row() {
  local line
  line=$(grep "^$1 " "$LATENCY")
  md "| $2 | $3 | $(num "$(kv p50_ms <<<"$line")" 2) | $(num "$(kv p99_ms <<<"$line")" 2) | $(num "$(kv max_ms <<<"$line")" 2) | $(kv n <<<"$line") |"
}
lat_row crash_to_crash_datagram "crash (\`ExecMainExitTimestamp\`)" "its StatsD \`crashes\` datagram received"
lat_row crash_to_bus "… of which: crash" "systemd's signal received by a bus client"
lat_row bus_to_crash_datagram "… and: signal received" "datagram received (crashwatch's share)"
lat_row restart_to_flag_datagram "the restart that completes the loop (its \`InactiveExitTimestamp\`)" "StatsD \`crashlooping:1\` received"
lat_row restart_to_bus "… of which: restart" "systemd's signal received by a bus client"
lat_row bus_to_flag_datagram "… and: signal received" "datagram received (crashwatch's share)"
lat_row crash_to_flag_datagram "the last crash before the loop is flagged" "StatsD \`crashlooping:1\` received"
if grep -q mismatch "$LATENCY"; then md "Warning: $(grep mismatch "$LATENCY")"; fi
md ""
md "With crash context on (a second crashwatch, each crash looked up through journalctl: $CTX_LOOKUPS lookups over both halves):"
md ""
md "| from | to | p50 ms | p99 ms | max ms | samples |"
md "| --- | --- | ---: | ---: | ---: | ---: |"
LATENCY=$WORK/latency-ctx.txt
lat_row crash_to_crash_datagram "crash" "its StatsD \`crashes\` datagram received"
lat_row bus_to_crash_datagram "… of which: signal received" "datagram received (crashwatch's share)"
lat_row restart_to_flag_datagram "the restart that completes the loop" "StatsD \`crashlooping:1\` received"
if grep -q mismatch "$LATENCY"; then md "Warning: $(grep mismatch "$LATENCY")"; fi
md ""
md "How: $LOOPS times, an instance of \`latency@.service\` (\`ExecStart=/bin/false\`, \`Restart=always\`, \`RestartSec=100ms\`) is started, crashwatch flags the loop at its third restart (default threshold), and the unit is stopped. crashwatch sends StatsD to a UDP listener on 127.0.0.1 that stamps each datagram on arrival (\`CLOCK_REALTIME\`, the clock systemd's timestamps use); datagrams are paired in order with the crash and \`crashloop_started\` records of the event record, whose \`timestamp_us\` are systemd's own times. The gauge on \`/metrics\` is set just before the datagram is handed to the StatsD thread, so the datagram's arrival bounds the gauge's change from above. The split rows come from a second subscriber on the same bus that stamps the arrival of the unit's \`PropertiesChanged\` signals carrying the same systemd timestamp: before it is systemd (reaping, forking, queueing its signals) and dbus-daemon, after it crashwatch and its StatsD thread. The last row includes systemd's own \`RestartSec\` wait (100 ms plus timer slack) between that crash and the restart that completes the loop: no watcher can flag a loop before the restart that makes it one."
md ""

md "## Throughput"
md ""
md "| receiver | signals/s | of the bare subscriber | lost | CPU µs/signal |"
md "| --- | ---: | ---: | ---: | ---: |"
tpm() { col rate "$WORK/tp-$1.txt" | median; }
lost_sum() { col lost "$WORK/tp-$1.txt" | awk '{s += $1} END {print s + 0}'; }
sub_rate=$(tpm sub)
md "| bare zbus subscriber (the bus ceiling) | $(col rate "$WORK/tp-sub.txt" | spread 0) | 100% | $(lost_sum sub) | $(col cpu_us "$WORK/tp-sub.txt" | spread 1) |"
for who in cw cwall cwctx; do
  case $who in
    cw) label="crashwatch (Prometheus only)" ;;
    cwall) label="crashwatch with StatsD and the event record" ;;
    cwctx) label="crashwatch with crash context on (Prometheus only)" ;;
  esac
  pct=$(paste -d' ' <(col rate "$WORK/tp-$who.txt") <(col rate "$WORK/tp-sub.txt") | awk '{printf "%.1f\n", 100 * $1 / $2}' | spread 1)
  md "| $label | $(col rate "$WORK/tp-$who.txt" | spread 0) | $pct% | $(lost_sum "$who") (dropped and resynced: $(col dropped "$WORK/tp-$who.txt" | awk '{s += $1} END {print s + 0}')) | $(col cpu_us "$WORK/tp-$who.txt" | spread 1) |"
done
md ""
md "How: a private dbus-daemon (system-bus limits), a fake systemd that owns \`org.freedesktop.systemd1\` and answers crashwatch's start-up calls (examples/benchtool.rs), and one receiver at a time. In each of $TP_RUNS runs the fake systemd sends $CYCLES crash-restart cycles of 100 services, $SENT \`PropertiesChanged\` signals of 1.06 kB on average, shaped like systemd 252's (full property sets, seven Service+Unit pairs per cycle, duplicates included), as fast as the bus takes them; the percentage compares with the bare subscriber of the same run. The bare subscriber adds crashwatch's match rule and decodes every body as crashwatch does; its rate is signals received over the time from the first send to the last arrival. crashwatch's rate is \`crashwatch_events_total\` over the time from the first send to the moment its CPU time stops moving (polled from /proc every millisecond, then confirmed on /metrics: every signal counted and all $((CYCLES * 100 * 4)) transitions and $((CYCLES * 100)) restarts expected are there). *Lost* is sent minus received or handled. *CPU* is the receiver's on-CPU time per signal."
md ""

md "## Footprint"
md ""
md "| | crashwatch | node_exporter |"
md "| --- | ---: | ---: |"
md "| RSS, 0 units (after start-up) | $(num "$(awk -v k="$RSS0" 'BEGIN {print k / 1024}')" 1) MiB | $(num "$(awk -v k="$(kv rss_kib <<<"$NE_IDLE")" 'BEGIN {print k / 1024}')" 1) MiB |"
for n in "${SIZES[@]}"; do
  md "| RSS, $n units | $(num "$(awk -v k="${SCR[$n,cw_rss]}" 'BEGIN {print k / 1024}')" 1) MiB | $(num "$(awk -v k="${SCR[$n,ne_rss]}" 'BEGIN {print k / 1024}')" 1) MiB |"
done
md "| RSS, $FOOTPRINT_UNITS units | $(num "$(awk -v k="$RSS10K" 'BEGIN {print k / 1024}')" 1) MiB ($((CW_BYTES_10K / 1024)) KiB of /metrics) | |"
md "| CPU while idle | $(kv cpu_ms_per_s <<<"$CW_IDLE") ms/s | $(kv cpu_ms_per_s <<<"$NE_IDLE") ms/s |"
md "| wake-ups while idle | $(kv wakeups_per_s <<<"$CW_IDLE")/s | $(kv wakeups_per_s <<<"$NE_IDLE")/s |"
md "| wake-ups while idle, $FOOTPRINT_UNITS units | $(kv wakeups_per_s <"$WORK/idle10k.txt")/s | |"
md ""
md "How: RSS is \`VmRSS\` from /proc/<pid>/status: at start-up before any unit changed, after the scrapes at each size (crashwatch then holds the series of every running unit), and with $FOOTPRINT_UNITS units (the sleep services plus process-less oneshot services, \`--max-units 12000\`). Idle CPU and wake-ups are taken over ${IDLE_S} s with nothing happening in the sandbox, right after start-up: on-CPU time from schedstat and context switches (voluntary plus involuntary, all threads) from /proc/<pid>/task/*/status; an idle thread blocked in the kernel switches only when woken. crashwatch ran with StatsD and the event record on (their threads count). Sink events dropped during the whole run: ${DROPPED_A:-0}."
md ""

md "## Unit churn"
md ""
mib() { num "$(awk -v k="$1" 'BEGIN {print k / 1024}')" 1; }
churn_sample() { grep "^sample at=$1 " "$WORK/churn.txt" | kv "$2"; }
churn_marks=("$((CHURN_UNITS / 10))" "$((CHURN_UNITS / 2))" "$CHURN_UNITS")
md "| crashwatch, $(thousands "$CHURN_UNITS") transient units, \`--unloaded-retention ${CHURN_RETENTION_S}s\` | RSS MiB | \`crashwatch_units\` |"
md "| --- | ---: | ---: |"
md "| before the churn | $(mib "$CHURN_RSS0") | $CHURN_UNITS0 |"
for at in "${churn_marks[@]}"; do
  md "| $(thousands "$at") units started | $(mib "$(churn_sample "$at" rss_kib)") | $(churn_sample "$at" units) |"
done
md "| ${CHURN_SETTLED_S} s after the last start (retention passed) | $(mib "$CHURN_RSS_AFTER") | $CHURN_UNITS_END |"
md ""
md "systemd started $(thousands "$(kv started <"$WORK/churn.txt")") units at $(kv rate <"$WORK/churn.txt") units/s; crashwatch heard $(thousands "$CHURN_HEARD") of their starts (\`starting\` records in the event record), dropped ${CHURN_SIG_DROPPED:-0} signals and ${CHURN_SINK_DROPPED:-0} sink events, and left ${CHURN_OVERFLOW:-0} units out at the \`--max-units\` cap (default 10000)."
md ""
md "How: a fresh sandbox (the one above had 10,000 units loaded) and a fresh crashwatch with the event record on and \`--unloaded-retention ${CHURN_RETENTION_S}s\`, so the table reaches its steady state (the units unloaded in the last ${CHURN_RETENTION_S} s) within seconds; the default of 15 minutes would hold every unit of a run this short. examples/benchtool.rs calls systemd's \`StartTransientUnit\` for \`churn-N.service\` (\`ExecStart=/bin/true\`, what \`systemd-run /bin/true\` sends, without a process per unit) over one bus connection, keeping 32 start jobs in flight: a job leaves the flight at its \`JobRemoved\`. (Bounding unanswered calls instead would not do: systemd answers as soon as the job is queued, runs its queue only when the bus is quiet, and tracks each queued job's caller with a match rule of its own, so jobs pile up until dbus-daemon refuses systemd's 513th match rule and systemd drops its bus connection.) Each unit runs and exits, and systemd unloads it (\`UnitRemoved\`). RSS is \`VmRSS\` of crashwatch and \`crashwatch_units\` is read from \`/metrics\` each time the count of finished start jobs passes another tenth of the churn (three of the ten samples are shown; the targets table takes the peak of each half). RSS counts heap the allocator keeps for reuse once units have left, so it levels off rather than falling back to the figure before the churn. *Units/s* is start jobs done over the time from the first call to the last \`JobRemoved\`."
md ""

if [ "$MICRO" = 1 ] && [ -s "$WORK/micro.txt" ]; then
  md "## In process (cargo bench)"
  md ""
  md "\`cargo bench --bench detect --bench systemd --bench render\`: median time per operation over 7 runs [min .. max], operations per second on one core, allocations and bytes allocated per operation (a counting global allocator)."
  md ""
  md '```'
  cat "$WORK/micro.txt" >>"$REPORT"
  md '```'
  md ""
fi

md "## Targets"
md ""
cw1k_cpu=$(scrm cpu_ms 1000 cwc) ne1k_cpu=$(scrm cpu_ms 1000 ne)
cw1k_lat=$(scrm lat_median_ms 1000 cwc) ne1k_lat=$(scrm lat_median_ms 1000 ne)
cw1ku_cpu=$(scrm cpu_ms 1000 cw) cw1ku_lat=$(scrm lat_median_ms 1000 cw)
tp_pct=$(paste -d' ' <(col rate "$WORK/tp-cw.txt") <(col rate "$WORK/tp-sub.txt") | awk '{print 100 * $1 / $2}' | median)
p99=$(grep '^restart_to_flag_datagram ' "$WORK/latency.txt" | kv p99_ms)
p99_own=$(grep '^bus_to_flag_datagram ' "$WORK/latency.txt" | kv p99_ms)
p99_bus=$(grep '^restart_to_bus ' "$WORK/latency.txt" | kv p99_ms)
missed=$(( (TRUTH[auto] - ${CWC[auto]%.*}) + (TRUTH[ext] - ${CWC[ext]%.*}) + (TRUTH[flap] - ${CWC[flap]%.*}) ))
rss1k=$(awk -v k="${SCR[1000,cw_rss]}" 'BEGIN {printf "%.1f", k / 1024}')
wake=$(kv wakeups_per_s <<<"$CW_IDLE")
verdict() { if awk "BEGIN {exit !($1)}"; then echo met; else echo "**not met**"; fi; }
md "| target | result | |"
md "| --- | --- | --- |"
md "| scrape CPU at 1,000 units ≥100× lower than node_exporter's | $(ratio "$ne1k_cpu" "$cw1k_cpu")× after a change, $(ratio "$ne1k_cpu" "$cw1ku_cpu")× unchanged | unchanged: $(verdict "$ne1k_cpu >= 100 * $cw1ku_cpu"); after a change: $(verdict "$ne1k_cpu >= 100 * $cw1k_cpu") |"
md "| scrape latency at 1,000 units ≥100× lower | $(ratio "$ne1k_lat" "$cw1k_lat")× after a change, $(ratio "$ne1k_lat" "$cw1ku_lat")× unchanged | unchanged: $(verdict "$ne1k_lat >= 100 * $cw1ku_lat"); after a change: $(verdict "$ne1k_lat >= 100 * $cw1k_lat") |"
md "| 0 D-Bus messages per scrape | ${SCR[1000,cw_msgs]} | $(verdict "${SCR[1000,cw_msgs]} == 0") |"
md "| throughput ≥90% of the bare subscriber, 0 lost | $(num "$tp_pct" 1)%, $(lost_sum cw) lost | $(verdict "$tp_pct >= 90 && $(lost_sum cw) == 0") |"
md "| detection latency p99 < 5 ms (restart completing the loop → \`crashlooping:1\` received) | $(num "$p99" 2) ms in all, of which crashwatch $(num "$p99_own" 2) ms and systemd with the bus $(num "$p99_bus" 2) ms | $(verdict "$p99 < 5"); crashwatch's share: $(verdict "$p99_own < 5") |"
md "| 0 missed restarts | $missed | $(verdict "$missed == 0") |"
md "| RSS ≤ 15 MiB at 1,000 units | $rss1k MiB | $(verdict "$rss1k <= 15") |"
md "| 0 wake-ups/s idle | $wake | $(verdict "$wake == 0") |"
# Peak RSS over the samples of each half of the churn: a table that follows the units that exist
# stops growing once it holds the units of one retention period.
churn_peak() { awk -v lo="$1" -v hi="$2" '$1 == "sample" {split($2, a, "="); split($3, r, "="); if (a[2] > lo && a[2] <= hi && r[2] > m) m = r[2]} END {print m + 0}' "$WORK/churn.txt"; }
churn_peak1=$(churn_peak 0 "$((CHURN_UNITS / 2))") churn_peak2=$(churn_peak "$((CHURN_UNITS / 2))" "$CHURN_UNITS")
md "| memory bounded after $(thousands "$CHURN_UNITS") short-lived units (peak RSS of the second half within 10% of the first half's, \`crashwatch_units\` back where it started) | peak RSS $(mib "$churn_peak1") MiB over the first $(thousands "$((CHURN_UNITS / 2))") units, $(mib "$churn_peak2") MiB over the next $(thousands "$((CHURN_UNITS - CHURN_UNITS / 2))"), $(mib "$CHURN_RSS_AFTER") MiB once the retention passed; \`crashwatch_units\` $CHURN_UNITS0 before, $CHURN_UNITS_END after | $(verdict "$churn_peak2 <= 1.1 * $churn_peak1 && $CHURN_RSS_AFTER <= 1.1 * $churn_peak1 && $CHURN_UNITS_END == $CHURN_UNITS0") |"
md ""
md "Run time: $(((SECONDS - T0) / 60)) min $(((SECONDS - T0) % 60)) s including the build. Reproduce with \`sudo scripts/bench.sh\` (\`--quick\` for a shorter run)."

cat "$REPORT"
cp "$REPORT" "$OUT"
say "done in $((SECONDS - T0)) s; written to $OUT"
