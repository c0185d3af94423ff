# Helpers sourced by the scripts in scripts/: find or start Postgres and Redis, or say exactly
# what is missing.

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# port_open HOST PORT: whether something accepts TCP connections there.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() { # HOST PORT SECONDS
  local i
  for ((i = 0; i < $3 * 10; i++)); do port_open "$1" "$2" && return 0; sleep 0.1; done
  return 1
}

ensure_postgres() {
  port_open 127.0.0.1 5432 && return 0
  if [ -d /etc/postgresql ] && command -v pg_ctlcluster >/dev/null 2>&1; then
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    say "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start ||
      sudo pg_ctlcluster --skip-systemctl-redirect "$version" main start ||
      die "could not start PostgreSQL; start it yourself and retry"
    wait_port 127.0.0.1 5432 30 || die "PostgreSQL did not open port 5432"
  else
    die "PostgreSQL is not installed or not on 127.0.0.1:5432. On Debian/Ubuntu: sudo apt-get install -y postgresql, and allow the postgres user on 127.0.0.1 (or set DATABASE_URL)."
  fi
}

ensure_redis() {
  port_open 127.0.0.1 6379 && return 0
  if command -v redis-server >/dev/null 2>&1; then
    say "starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null ||
      die "could not start redis-server"
    wait_port 127.0.0.1 6379 10 || die "Redis did not open port 6379"
  else
    die "Redis is not installed or not on 127.0.0.1:6379. On Debian/Ubuntu: sudo apt-get install -y redis-server"
  fi
}

ensure_cargo() {
  command -v cargo >/dev/null 2>&1 ||
    die "Rust is not installed: see https://rustup.rs (then open a new shell)"
}

# moto's S3 API server, which the attachment tests start on loopback (a real S3 API, no
# account). Installed from PyPI into the user's Python when missing.
ensure_moto() {
  command -v moto_server >/dev/null 2>&1 && return 0
  command -v python3 >/dev/null 2>&1 || die "python3 is needed for moto's S3 server (the attachment tests)"
  say "installing moto[server] (the S3 API the attachment tests run against)"
  python3 -m pip install --quiet --user 'moto[server]' || python3 -m pip install --quiet 'moto[server]' ||
    die "could not install moto[server]: pip install 'moto[server]'"
  if ! command -v moto_server >/dev/null 2>&1; then
    PATH="$(python3 -m site --user-base)/bin:$PATH"
    export PATH
  fi
  command -v moto_server >/dev/null 2>&1 || die "moto_server is not on PATH after installing moto[server]"
}

# schemathesis (PyPI): checks every operation of the OpenAPI document against the running stack.
ensure_schemathesis() {
  command -v schemathesis >/dev/null 2>&1 && return 0
  command -v python3 >/dev/null 2>&1 || die "python3 is needed for schemathesis (the API conformance run)"
  say "installing schemathesis"
  python3 -m pip install --quiet --user schemathesis || python3 -m pip install --quiet schemathesis ||
    die "could not install schemathesis: pip install schemathesis"
  if ! command -v schemathesis >/dev/null 2>&1; then
    PATH="$(python3 -m site --user-base)/bin:$PATH"
    export PATH
  fi
  command -v schemathesis >/dev/null 2>&1 || die "schemathesis is not on PATH after installing it"
}

# npm_ci DIR: installs DIR's locked Node packages into DIR/node_modules, unless they are there at
# the locked versions already (a copy of the lock file in node_modules marks the install).
npm_ci() {
  local dir=$1 stamp="$1/node_modules/.chatsphere-lock"
  command -v npm >/dev/null 2>&1 || die "npm is needed ($dir): sudo apt-get install -y nodejs npm"
  if [ -f "$stamp" ] && cmp -s "$dir/package-lock.json" "$stamp"; then
    return 0
  fi
  say "installing the Node packages of $dir"
  npm ci --prefix "$dir" --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null ||
    die "npm ci failed in $dir"
  cp "$dir/package-lock.json" "$stamp"
}

# Debian's Chromium, which the browser checks drive through playwright-core (never a browser
# download).
ensure_chromium() {
  # The emoji font: reactions in the browser test's screenshots are drawn, not empty boxes.
  [ -x "${CHROMIUM:-/usr/bin/chromium}" ] && [ -e /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] && return 0
  say "installing chromium and an emoji font (Debian's packages)"
  local sudo="" packages="chromium fonts-noto-color-emoji"
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get install -y --no-install-recommends $packages >/dev/null 2>&1 ||
    { $sudo apt-get update -qq >/dev/null 2>&1 && $sudo apt-get install -y --no-install-recommends $packages >/dev/null; } ||
    die "could not install chromium: sudo apt-get install -y $packages"
}
