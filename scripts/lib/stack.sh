# Starting and stopping the local stack; sourced by scripts/dev and scripts/e2e (after
# scripts/lib/common.sh). Processes log to .run/logs/ and are stopped by stack_stop.

STACK_PIDS=()
NGINX_PREFIX="$PWD/.run/nginx"

ensure_nginx() {
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing nginx from the OS packages"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx) >/dev/null ||
      die "could not install nginx; install it with: sudo apt-get install -y nginx"
  else
    die "nginx is not installed: sudo apt-get install -y nginx"
  fi
}

nginx_bin() { command -v nginx 2>/dev/null || echo /usr/sbin/nginx; }

# render_nginx LISTEN_PORT AUTH_ADDR CHAT_ADDR GATEWAY_ADDR...
render_nginx() {
  local listen=$1 auth=$2 chat=$3; shift 3
  local servers="" a
  for a in "$@"; do servers+="server $a; "; done
  mkdir -p "$NGINX_PREFIX/logs" "$NGINX_PREFIX/tmp"
  local user_line=""
  [ "$(id -u)" = 0 ] && user_line="user root;"
  sed -e "s|\${LISTEN_PORT}|$listen|g" -e "s|\${AUTH_ADDR}|$auth|g" -e "s|\${CHAT_ADDR}|$chat|g" \
      -e "s|\${GATEWAY_SERVERS}|$servers|g" -e "s|\${ACCESS_LOG}|$NGINX_PREFIX/logs/access.log|g" \
      -e "s|\${WEB_ROOT}|${WEB_ROOT:-$PWD/web/dist}|g" -e "s|\${UPLOAD_ORIGINS}|${UPLOAD_ORIGINS:-}|g" \
      deploy/nginx/chatsphere.conf.template >"$NGINX_PREFIX/chatsphere.conf"
  cat >"$NGINX_PREFIX/nginx.conf" <<CONF
$user_line
worker_processes 1;
pid $NGINX_PREFIX/nginx.pid;
error_log $NGINX_PREFIX/logs/error.log warn;
events { worker_connections 4096; }
http {
  client_body_temp_path $NGINX_PREFIX/tmp/body;
  proxy_temp_path $NGINX_PREFIX/tmp/proxy;
  fastcgi_temp_path $NGINX_PREFIX/tmp/fastcgi;
  uwsgi_temp_path $NGINX_PREFIX/tmp/uwsgi;
  scgi_temp_path $NGINX_PREFIX/tmp/scgi;
  include $NGINX_PREFIX/chatsphere.conf;
}
CONF
}

# stack_start BIN_DIR NGINX_PORT: auth-service 8001, chat-service 8002, gateways 8003 and 8004,
# nginx on NGINX_PORT in front of them.
stack_start() {
  local bin=$1 port=$2 p
  for p in 8001 8002 8003 8004 "$port"; do
    port_open 127.0.0.1 "$p" && die "port $p is in use (is scripts/dev running?); stop it first"
  done
  mkdir -p .run/logs
  say "applying migrations"
  "$bin/auth-service" migrate >.run/logs/migrate.log 2>&1 || { cat .run/logs/migrate.log >&2; die "migrations failed"; }
  start_one() { # NAME PORT [ENV=VALUE...]
    local name=$1 p=$2; shift 2
    env PORT="$p" TRUSTED_PROXIES=127.0.0.1/32,::1/128 "$@" "$bin/$name" >".run/logs/$name-$p.log" 2>&1 &
    STACK_PIDS+=($!)
  }
  start_one auth-service 8001
  start_one chat-service 8002
  # GATEWAY_WORKER_THREADS, when set, is each gateway's number of runtime threads (tokio's own
  # TOKIO_WORKER_THREADS): with two gateways on one small machine, one each.
  local gateway_env=()
  [ -n "${GATEWAY_WORKER_THREADS:-}" ] && gateway_env=(TOKIO_WORKER_THREADS="$GATEWAY_WORKER_THREADS")
  start_one gateway 8003 "${gateway_env[@]}"
  start_one gateway 8004 "${gateway_env[@]}"
  for p in 8001 8002 8003 8004; do
    wait_healthy "http://127.0.0.1:$p/health" || die "the service on port $p did not become healthy; see .run/logs/"
  done
  # The browser app may connect to the object store (its Content-Security-Policy), wherever the
  # settings put it; UPLOAD_ORIGINS, when set, names the origins itself.
  if [ -z "${UPLOAD_ORIGINS+set}" ]; then
    UPLOAD_ORIGINS=$("$bin/chat-service" upload-origin) || die "chat-service upload-origin failed"
  fi
  render_nginx "$port" 127.0.0.1:8001 127.0.0.1:8002 127.0.0.1:8003 127.0.0.1:8004
  "$(nginx_bin)" -p "$NGINX_PREFIX" -c "$NGINX_PREFIX/nginx.conf" -g 'daemon off;' >.run/logs/nginx.log 2>&1 &
  STACK_PIDS+=($!)
  wait_healthy "http://127.0.0.1:$port/health" || die "nginx did not start; see .run/logs/nginx.log and $NGINX_PREFIX/logs/error.log"
}

wait_healthy() {
  local _
  for _ in $(seq 1 150); do
    curl -fsS "$1" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  return 1
}

stack_stop() {
  local pid
  for pid in "${STACK_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${STACK_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  STACK_PIDS=()
}
