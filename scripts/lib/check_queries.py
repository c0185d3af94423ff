"""Evaluates every query of the Grafana dashboard and every alert rule against a Prometheus that
scrapes a running stack, and fails on any that returns no series: no panel may silently show
nothing and no alert may watch a metric that does not exist. An alert's expression is evaluated
without its final comparison (`> 5000`), which would filter the series away while all is well.

    python3 scripts/lib/check_queries.py http://127.0.0.1:9091 deploy/grafana/chatsphere.json deploy/prometheus/alerts.yml
"""
import json
import re
import sys
import urllib.parse
import urllib.request

COMPARISON = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*-?[0-9.]+\s*$")


def queries(dashboard_path, rules_path):
    with open(dashboard_path) as f:
        dashboard = json.load(f)
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield f'panel "{panel["title"]}" {target["refId"]}', target["expr"]
    # The rules file is YAML; its alert expressions are read without a YAML library (the
    # checker runs on a bare Python): `- alert: NAME` then `expr: ...` (one line or a `|` block).
    with open(rules_path) as f:
        lines = f.read().splitlines()
    name = None
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("- alert:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("expr:") and name:
            expr = line.split(":", 1)[1].strip()
            if expr == "|":
                indent = len(lines[i + 1]) - len(lines[i + 1].lstrip())
                block = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) >= indent):
                    block.append(lines[i].strip())
                    i += 1
                expr = " ".join(block)
                i -= 1
            yield f"alert {name}", COMPARISON.sub("", expr)
            name = None
        i += 1


def main():
    base, dashboard, rules = sys.argv[1:4]
    empty, count = [], 0
    for what, expr in queries(dashboard, rules):
        count += 1
        url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        if body.get("status") != "success":
            empty.append(f"{what}: {body.get('error')}  [{expr}]")
        elif not body["data"]["result"]:
            empty.append(f"{what}: no series  [{expr}]")
    for line in empty:
        print(f"  {line}", file=sys.stderr)
    print(f"{count - len(empty)} of {count} queries return series")
    sys.exit(1 if empty else 0)


if __name__ == "__main__":
    main()
