#!/usr/bin/env bash
# Checks the Prometheus rules and the Grafana dashboards with Prometheus's own tools:
#
#   1. promtool check rules alerts/crashwatch.rules.yml
#   2. the thresholds tables at the top of the rules file match the rules: each alert's `for` and
#      severity, and each named threshold's value where the expressions use it
#   3. promtool test rules alerts/crashwatch.tests.yml
#   4. every `expr` in dashboards/*.json, with the dashboard variables replaced by concrete
#      values, parsed by promtool as a recording rule
#
# Needs promtool (Debian/Ubuntu: apt-get install prometheus) and python3. Works from any
# directory. Exits non-zero on the first failing step.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

RULES=alerts/crashwatch.rules.yml
TESTS=alerts/crashwatch.tests.yml

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
