# The alert rules and dashboard against a real Prometheus; sourced by scripts/e2e (after
# scripts/lib/common.sh) while the stack runs. monitoring_start checks the rules offline
# (promtool check + unit tests) and starts Debian's Prometheus scraping the stack every second
# with those rules; the load the e2e run puts on the stack meanwhile gives every metric data;
# monitoring_check then adds the rarer events (a refused frame, a failed login) and evaluates
# every dashboard and alert query, failing on any that returns no series.

PROM_PORT=${PROM_PORT:-9091}
PROM_PID=""

ensure_prometheus() {
  command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 && return 0
  say "installing prometheus (Debian's package: the server and promtool)"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 ||
    { $sudo apt-get update -qq >/dev/null 2>&1 && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null; } ||
    die "could not install prometheus: sudo apt-get install -y prometheus"
}

monitoring_start() {
  ensure_prometheus
  say "alert rules: promtool check rules, promtool test rules"
  promtool check rules deploy/prometheus/alerts.yml >/dev/null || die "deploy/prometheus/alerts.yml does not load"
  promtool test rules deploy/prometheus/alerts.test.yml || die "an alert rule's unit test failed"
  local dir=.run/prometheus
  rm -rf "$dir"; mkdir -p "$dir"
  cat >"$dir/prometheus.yml" <<CONF
global: { scrape_interval: 1s, evaluation_interval: 1s }
rule_files: ["$PWD/deploy/prometheus/alerts.yml"]
scrape_configs:
  - { job_name: chatsphere-auth, static_configs: [{ targets: ["127.0.0.1:8001"] }] }
  - { job_name: chatsphere-chat, static_configs: [{ targets: ["127.0.0.1:8002"] }] }
  - { job_name: chatsphere-gateway, static_configs: [{ targets: ["127.0.0.1:8003", "127.0.0.1:8004"] }] }
CONF
  promtool check config "$dir/prometheus.yml" >/dev/null || die "the generated Prometheus configuration is invalid"
  prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
    --web.listen-address="127.0.0.1:$PROM_PORT" >.run/logs/prometheus.log 2>&1 &
  PROM_PID=$!
  wait_port 127.0.0.1 "$PROM_PORT" 30 || die "Prometheus did not start; see .run/logs/prometheus.log"
}

monitoring_stop() {
  if [ -n "$PROM_PID" ]; then
    kill "$PROM_PID" 2>/dev/null || true
    wait "$PROM_PID" 2>/dev/null || true
  fi
  PROM_PID=""
}

# monitoring_check PUBLIC_URL
monitoring_check() {
  local url=$1 token
  # A refused frame (gateway_frame_errors_total{code}) and a failed login (a 401).
  curl -s -o /dev/null -X POST "$url/auth/login" -H 'content-type: application/json' -d '{"username":"nobody","password":"not-this-one"}'
  token=$(curl -fsS -X POST "$url/auth/login" -H 'content-type: application/json' \
    -d '{"username":"bob","password":"wonderland"}' | grep -o '"access_token":"[^"]*"' | cut -d'"' -f4)
  (cd clients/typescript && TOKEN="$token" node -e '
    const WebSocket = require("ws");
    const ws = new WebSocket(`ws://127.0.0.1:8003/ws?token=${process.env.TOKEN}`);
    ws.on("message", (m) => { const f = JSON.parse(m); if (f.type === "ready") ws.send("{not json"); if (f.type === "error") ws.close(); });
    ws.on("close", () => process.exit(0));
    setTimeout(() => process.exit(1), 10000);
  ') || die "could not send the refused frame"
  sleep 4  # a few scrapes and rule evaluations after it
  say "every dashboard and alert query returns series from the scraped stack"
  python3 scripts/lib/check_queries.py "http://127.0.0.1:$PROM_PORT" deploy/grafana/chatsphere.json deploy/prometheus/alerts.yml ||
    die "a dashboard panel or alert query returns nothing (Prometheus at 127.0.0.1:$PROM_PORT)"
  monitoring_stop
}
