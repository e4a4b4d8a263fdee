#!/usr/bin/env bash
# Checks the Prometheus rules, the example Alertmanager configuration and the Grafana dashboards
# with Prometheus's and Alertmanager's own tools:
#
#   1. promtool check rules alerts/crashwatch.rules.yml
#   2. the thresholds tables at the top of the rules file match the rules: each alert's `for` and
#      severity, and each named threshold's value where the expressions use it
#   3. promtool test rules alerts/crashwatch.tests.yml
#   4. amtool check-config alerts/alertmanager.example.yml; `amtool config routes test` sends
#      every alert of the rules file to its receiver; a real Alertmanager (loopback, a free port)
#      with that configuration inhibits exactly the alerts its inhibit rules should
#   5. every `expr` in dashboards/*.json, with the dashboard variables replaced by concrete
#      values, parsed by promtool as a recording rule
#
# Needs promtool (Debian/Ubuntu: apt-get install prometheus), amtool and prometheus-alertmanager
# (apt-get install prometheus-alertmanager) and python3. Without Alertmanager's tools step 4 is
# skipped, saying so, except with CI=true, where their absence fails. Works from any directory.
# Exits non-zero on the first failing step.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

RULES=alerts/crashwatch.rules.yml
TESTS=alerts/crashwatch.tests.yml
AM_CONFIG=alerts/alertmanager.example.yml

if ! command -v promtool >/dev/null 2>&1; then
    echo "check-alerts: promtool not found (Debian/Ubuntu: apt-get install prometheus)" >&2
    exit 1
fi
if ! command -v python3 >/dev/null 2>&1; then
    echo "check-alerts: python3 not found" >&2
    exit 1
fi

tmpdir=$(mktemp -d)
trap 'rm -rf "$tmpdir"' EXIT

echo "==> promtool check rules $RULES"
promtool check rules "$RULES"

echo "==> thresholds tables in $RULES match the rules"
python3 - "$RULES" <<'PY'
import re
import sys

path = sys.argv[1]
text = open(path, encoding="utf-8").read()
problems = []

# The table rows: "#   <AlertName>  <condition ...>  <for>  <severity>".
table = {}
for line in text.splitlines():
    m = re.match(r"^#\s+(Crashwatch\w+)\s+.*\s(\d+[smhdw])\s+(critical|warning)\s*$", line)
    if m:
        table[m.group(1)] = (m.group(2), m.group(3))

# The alerts: "- alert: X", then its "for:" and "severity:" before the next rule.
alerts = {}
for block in re.split(r"\n\s*- (?=alert:|record:)", text):
    m = re.match(r"alert:\s*(\S+)", block)
    if not m:
        continue
    f = re.search(r"^\s+for:\s*(\S+)\s*$", block, re.M)
    s = re.search(r"^\s+severity:\s*(\S+)\s*$", block, re.M)
    alerts[m.group(1)] = (f.group(1) if f else "0s", s.group(1) if s else "")

for name, (for_, severity) in sorted(alerts.items()):
    if name not in table:
        problems.append(f"{name}: missing from the thresholds table")
    elif table[name] != (for_, severity):
        problems.append(f"{name}: table says for {table[name][0]} {table[name][1]}, "
                        f"rule says for {for_} {severity}")
    else:
        print(f"  {name}: for {for_}, {severity}")
for name in sorted(set(table) - set(alerts)):
    problems.append(f"{name}: in the thresholds table but no such alert")

# Named thresholds: the rows under "#   threshold  value  meaning", up to the next empty comment
# line, each "#   <name>  <number>  <meaning>". An expression uses one as a comparison followed by
# a PromQL comment with its name: ">= 3  # fleet_min_nodes".
thresholds = {}
rows = False
for line in text.splitlines():
    if re.match(r"^#\s+threshold\s+value\s+meaning\s*$", line):
        rows = True
    elif rows and line.strip() == "#":
        rows = False
    elif rows:
        m = re.match(r"^#\s+([a-z][a-z0-9_]*)\s+(\d+(?:\.\d+)?)\s", line)
        if m:
            thresholds[m.group(1)] = m.group(2)
        else:
            problems.append(f"thresholds table: cannot read the row {line!r}")
used = {}
for m in re.finditer(r"(?:==|!=|>=|<=|>|<)[ \t]*(\d+(?:\.\d+)?)[ \t]*#[ \t]*([a-z][a-z0-9_]*)", text):
    value, name = m.group(1), m.group(2)
    used.setdefault(name, []).append(value)
    if name not in thresholds:
        problems.append(f"{name}: used in an expression but not in the thresholds table")
    elif float(value) != float(thresholds[name]):
        problems.append(f"{name}: table says {thresholds[name]}, an expression compares with {value}")
for name, value in sorted(thresholds.items()):
    if name not in used:
        problems.append(f"{name}: in the thresholds table but no expression uses it")
    elif all(float(v) == float(value) for v in used[name]):
        print(f"  {name}: {value}")
if problems:
    for p in problems:
        print(f"  FAILED: {p}", file=sys.stderr)
    sys.exit(1)
PY

echo "==> promtool test rules $TESTS"
promtool test rules "$TESTS"

# Alertmanager's tools come in their own package; a developer may lack them, CI may not.
if ! command -v amtool >/dev/null 2>&1 || ! command -v prometheus-alertmanager >/dev/null 2>&1; then
    if [ "${CI:-}" = true ]; then
        echo "check-alerts: amtool or prometheus-alertmanager not found, and CI=true: cannot check $AM_CONFIG (apt-get install prometheus-alertmanager)" >&2
        exit 1
    fi
    echo "==> SKIPPED: $AM_CONFIG not checked: amtool or prometheus-alertmanager not found (apt-get install prometheus-alertmanager)"
else
    echo "==> amtool check-config $AM_CONFIG"
    amtool check-config "$AM_CONFIG"

    # Every alert of the rules file, with the labels it carries, must reach its receiver: the
    # fleet alert its own, the other unit alerts the per-node one, the rest the daemon one.
    # Anything else goes to the default receiver.
    echo "==> amtool config routes test: every alert in $RULES reaches its receiver"
    route_test() {
        local want=$1 out
        shift
        if out=$(amtool config routes test --config.file="$AM_CONFIG" --verify.receivers="$want" "$@" 2>&1); then
            printf '  %-40s -> %s\n' "${1#alertname=}" "$want"
        else
            printf '  FAILED: %s: expected receiver %s\n%s\n' "$*" "$want" "$out" >&2
            return 1
        fi
    }
    alert_names=$(sed -n 's/^[[:space:]]*- alert:[[:space:]]*\([A-Za-z0-9_]*\).*/\1/p' "$RULES")
    [ -n "$alert_names" ] || { echo "check-alerts: no alerts found in $RULES" >&2; exit 1; }
    for name in $alert_names; do
        case $name in
            CrashwatchUnitCrashLoopingFleetWide)
                route_test crashwatch-fleet alertname="$name" job=crashwatch unit=web.service severity=critical ;;
            CrashwatchUnit*)
                route_test crashwatch-node alertname="$name" job=crashwatch instance=node01:9863 unit=web.service source=systemd severity=warning ;;
            *)
                route_test crashwatch-daemon alertname="$name" job=crashwatch instance=node01:9863 severity=warning ;;
        esac
    done
    route_test default alertname=SomethingElseEntirely job=node instance=node01:9100 severity=critical

    # The inhibit rules, in a real Alertmanager: send it a set of firing alerts and compare what
    # it reports inhibited, and by which alert, with what the rules are meant to do. It runs a copy
    # of the configuration whose webhooks point at a port this check holds, so that nothing else
    # on the machine can receive a notification; it listens on a free loopback port, without
    # clustering, and is stopped before the step ends.
    echo "==> Alertmanager with $AM_CONFIG inhibits the right alerts"
    mkdir "$tmpdir/alertmanager"
    python3 - "$AM_CONFIG" "$tmpdir/alertmanager" <<'PY'
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

config, workdir = sys.argv[1], sys.argv[2]

fleet = {"alertname": "CrashwatchUnitCrashLoopingFleetWide", "job": "crashwatch",
         "unit": "web.service", "severity": "critical"}


def node(alertname, unit, instance, job="crashwatch"):
    severity = "critical" if alertname == "CrashwatchUnitCrashLooping" else "warning"
    return {"alertname": alertname, "job": job, "unit": unit, "instance": instance,
            "source": "systemd", "severity": severity}


# name: (labels, the alerts that may inhibit it; none: it must stay active). Alertmanager names
# one inhibiting alert, from the first rule that applies, so any of them will do.
CASES = {
    "fleet web.service": (fleet, []),
    # The fleet alert holds back the per-node loop and restart-rate alerts of its unit, on any
    # node of its job; on a looping node the loop alert holds back the restart rate as well.
    "loop web.service node01": (
        node("CrashwatchUnitCrashLooping", "web.service", "node01:9863"), ["fleet web.service"]),
    "loop web.service node02": (
        node("CrashwatchUnitCrashLooping", "web.service", "node02:9863"), ["fleet web.service"]),
    "restarts web.service node01": (
        node("CrashwatchUnitHighRestartRate", "web.service", "node01:9863"),
        ["fleet web.service", "loop web.service node01"]),
    "restarts web.service node03": (
        node("CrashwatchUnitHighRestartRate", "web.service", "node03:9863"), ["fleet web.service"]),
    # Not the fleet alert's targets: another alert of the unit, the unit in another job, another
    # unit. Of the rules only loop-over-restart-rate applies to them, on the same node.
    "down web.service node04": (
        node("CrashwatchUnitCrashedAndDown", "web.service", "node04:9863"), []),
    "loop web.service stage01": (
        node("CrashwatchUnitCrashLooping", "web.service", "stage01:9863", job="crashwatch-staging"),
        []),
    "loop worker.service node01": (
        node("CrashwatchUnitCrashLooping", "worker.service", "node01:9863"), []),
    "restarts worker.service node01": (
        node("CrashwatchUnitHighRestartRate", "worker.service", "node01:9863"),
        ["loop worker.service node01"]),
    "restarts worker.service node02": (
        node("CrashwatchUnitHighRestartRate", "worker.service", "node02:9863"), []),
}

# Notifications wait for group_wait (30 s) after an alert's start, longer than this check takes;
# should one go out all the same, it goes to this socket, which never answers.
sink = socket.socket()
sink.bind(("127.0.0.1", 0))
sink.listen()
with open(config, encoding="utf-8") as f:
    text = f.read()
urls = re.findall(r"url: (http://127\.0\.0\.1:\d+)/", text)
if not urls:
    sys.exit(f"  FAILED: no webhook on 127.0.0.1 in {config}")
for url in set(urls):
    text = text.replace(f"url: {url}/", f"url: http://127.0.0.1:{sink.getsockname()[1]}/")
copy = os.path.join(workdir, "alertmanager.yml")
with open(copy, "w", encoding="utf-8") as f:
    f.write(text)

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
base = f"http://127.0.0.1:{port}"
log_path = os.path.join(workdir, "alertmanager.log")
with open(log_path, "w") as log:
    am = subprocess.Popen(
        ["prometheus-alertmanager", f"--config.file={copy}", f"--storage.path={workdir}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=log, stderr=subprocess.STDOUT)


def fail(problems):
    for p in problems:
        print(f"  FAILED: {p}", file=sys.stderr)
    with open(log_path) as log:
        tail = log.readlines()[-20:]
    sys.stderr.write("  Alertmanager's log:\n" + "".join("    " + line for line in tail))
    sys.exit(1)


try:
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(base + "/-/ready", timeout=2).read()
            break
        except OSError:
            if am.poll() is not None:
                fail([f"Alertmanager exited with status {am.returncode}"])
            if time.monotonic() > deadline:
                fail(["Alertmanager not ready within 30 s"])
            time.sleep(0.2)

    def stamp(t):
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

    now = time.time()
    posted = [{"labels": labels, "startsAt": stamp(now), "endsAt": stamp(now + 3600)}
              for labels, _ in CASES.values()]
    request = urllib.request.Request(base + "/api/v2/alerts", data=json.dumps(posted).encode(),
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).read()

    # Alertmanager works out each alert's inhibitions when the alerts are asked for.
    got = json.load(urllib.request.urlopen(base + "/api/v2/alerts", timeout=10))
    name_of, by_name = {}, {}
    for alert in got:
        for name, (labels, _) in CASES.items():
            if alert["labels"] == labels:
                name_of[alert["fingerprint"]] = name
                by_name[name] = alert
    problems = []
    for name, (_, want) in CASES.items():
        alert = by_name.get(name)
        if alert is None:
            problems.append(f"{name}: not among Alertmanager's alerts")
            continue
        inhibited_by = sorted(name_of.get(f, f) for f in alert["status"]["inhibitedBy"])
        if not want and inhibited_by:
            problems.append(f"{name}: inhibited by {', '.join(inhibited_by)}, expected active")
        elif want and (not inhibited_by or not set(inhibited_by) <= set(want)):
            problems.append(f"{name}: inhibited by {', '.join(inhibited_by) or 'nothing'}, "
                            f"expected by {' or '.join(want)}")
        elif want:
            print(f"  {name:31s} inhibited by {', '.join(inhibited_by)}")
        else:
            print(f"  {name:31s} active")
    if problems:
        fail(problems)
finally:
    am.terminate()
    try:
        am.wait(10)
    except subprocess.TimeoutExpired:
        am.kill()
        am.wait()
    sink.close()
PY
fi

shopt -s nullglob
dashboards=(dashboards/*.json)
if [ "${#dashboards[@]}" -eq 0 ]; then
    echo "check-alerts: no dashboards in dashboards/" >&2
    exit 1
fi

echo "==> dashboard expressions: ${dashboards[*]}"
dashboards_ok=1
python3 - "$tmpdir/dashboard-exprs.rules.yml" "${dashboards[@]}" <<'PY' || dashboards_ok=0
import json
import re
import sys

out_path, paths = sys.argv[1], sys.argv[2:]

# Grafana's interval variables become a concrete duration; every dashboard variable (and any
# other $name) becomes a regex that matches anything, as `=~"$instance"` uses it.
DURATIONS = {"__rate_interval": "5m", "__interval": "5m", "__range": "5m", "__auto": "5m"}
NUMBERS = {"__range_s": "300", "__range_ms": "300000", "__interval_ms": "300000"}
VAR = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")


def substitute(expr):
    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in DURATIONS:
            return DURATIONS[name]
        if name in NUMBERS:
            return NUMBERS[name]
        return ".*"
    return VAR.sub(repl, expr)


def walk(node, where, found):
    """Collects (where, expr) for every "expr" string anywhere in the dashboard."""
    if isinstance(node, dict):
        title = node.get("title") or node.get("name")
        here = f"{where} / {title}" if isinstance(title, str) and title else where
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                ref = node.get("refId")
                found.append((f"{here}" + (f" [{ref}]" if ref else ""), value))
            else:
                walk(value, here, found)
    elif isinstance(node, list):
        for item in node:
            walk(item, where, found)


problems = []
exprs = []
for path in paths:
    try:
        with open(path, encoding="utf-8") as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        problems.append(f"{path}: not valid JSON: {e}")
        continue
    found = []
    walk(dash, path, found)
    if not found:
        problems.append(f"{path}: no expressions found")
    exprs.extend(found)

    # Data sources must come from the ${datasource} variable, never a fixed UID.
    def check_ds(node, where):
        if isinstance(node, dict):
            title = node.get("title") or node.get("name")
            here = f"{where} / {title}" if isinstance(title, str) and title else where
            ds = node.get("datasource")
            if isinstance(ds, dict) and ds.get("type") == "prometheus" and ds.get("uid") != "${datasource}":
                problems.append(f"{here}: datasource uid {ds.get('uid')!r}, expected '${{datasource}}'")
            elif isinstance(ds, str) and ds not in ("${datasource}", "$datasource"):
                problems.append(f"{here}: datasource {ds!r}, expected '${{datasource}}'")
            for key, value in node.items():
                if key != "datasource":
                    check_ds(value, here)
        elif isinstance(node, list):
            for item in node:
                check_ds(item, where)
    check_ds(dash.get("panels", []), path)
    check_ds(dash.get("annotations", {}), path)
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            check_ds(var, f"{path} / variable {var.get('name')}")

    # Every panel target must have an expression.
    def check_targets(panels, where):
        for p in panels:
            for t in p.get("targets", []):
                if not str(t.get("expr", "")).strip():
                    problems.append(f"{where} / {p.get('title')}: target {t.get('refId')} has no expr")
            check_targets(p.get("panels", []), where)
    check_targets(dash.get("panels", []), path)

with open(out_path, "w", encoding="utf-8") as out:
    out.write("groups:\n  - name: dashboard-expressions\n    rules:\n")
    for i, (where, expr) in enumerate(exprs, 1):
        concrete = substitute(expr)
        print(f"  [{i:2d}] {where}\n       {concrete}")
        out.write(f"      - record: dashboard_expr_{i}\n")
        out.write(f"        expr: {json.dumps(concrete)}\n")

if problems:
    for p in problems:
        print(f"  FAILED: {p}", file=sys.stderr)
    sys.exit(1)
print(f"  {len(exprs)} expressions from {len(paths)} dashboard(s)")
PY

if [ -s "$tmpdir/dashboard-exprs.rules.yml" ]; then
    echo "==> promtool check rules (dashboard expressions as recording rules; [n] is dashboard_expr_n)"
    promtool check rules "$tmpdir/dashboard-exprs.rules.yml" || dashboards_ok=0
fi
if [ "$dashboards_ok" -ne 1 ]; then
    echo "check-alerts: dashboard check FAILED" >&2
    exit 1
fi

echo "check-alerts: all checks passed"
