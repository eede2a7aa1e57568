# Helpers the bench scripts share: sourced (`. bench/lib/common.sh`), not run. Each
# script calls bench_start first: a scratch directory in $tmp, and on exit every process
# listed in $pids is killed and the directory removed.

bench_start() {
  tmp=$(mktemp -d)
  pids=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}

# free_port: a loopback port nothing listens on, and (after bench_start) not one this
# script was given before: a port handed out but not listened on yet is free to the
# kernel too, and a second caller could get it (scripts/build-pgo did, 2026-12-03).
free_port() {
  python3 - "${tmp:+$tmp/ports}" <<'PORT'
import socket, sys
seen_file = sys.argv[1]
seen = set()
if seen_file:
    try:
        seen = set(open(seen_file).read().split())
    except FileNotFoundError:
        pass
held = []
while True:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = str(s.getsockname()[1])
    held.append(s)  # kept bound until one is found: the kernel picks another each time
    if port not in seen:
        break
if seen_file:
    with open(seen_file, "a") as f:
        f.write(port + "\n")
print(port)
PORT
}

# wait_port PORT [SECONDS]: until something accepts on 127.0.0.1:PORT (10 s by default).
wait_port() {
  local tries=$((${2:-10} * 10))
  for _ in $(seq "$tries"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1 after ${2:-10}s" >&2
  exit 1
}

# wait_ready ADMIN_PORT [SECONDS] [LOG]: until a weft component's /ready answers 200
# (10 s by default); prints LOG (a file) if it never does.
wait_ready() {
  local status tries=$((${2:-10} * 10))
  for _ in $(seq "$tries"); do
    status=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'GET /ready HTTP/1.0\r\n\r\n' >&3 && head -c 12 <&3) 2>/dev/null || true)
    [[ $status == *" 200"* ]] && return 0
    sleep 0.1
  done
  echo "nothing ready on admin port $1 after ${2:-10}s" >&2
  [[ -n ${3:-} ]] && cat "$3" >&2
  exit 1
}

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }

# cpu_ticks PID...: CPU time (user + system) of the processes, in clock ticks ($TICKS a
# second): fields 14 and 15 of /proc/PID/stat, counted after the command name (which is
# in parentheses).
TICKS=$(getconf CLK_TCK)
cpu_ticks() {
  local pid total=0
  for pid in "$@"; do
    total=$((total + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
  done
  echo "$total"
}

# start_controller BIN_DIR: a weft-controller issuing certificates for the mesh of the
# bench's two-hop mTLS paths: trust anchors from `weft identity init` in
# $tmp/identity, tokens for the service accounts web and nginx of namespace bench as
# `weft up` writes them ($tmp/tokens/bench/SA), its log in $tmp/controller.log. Sets
# CTL_PORT.
start_controller() {
  local sa
  "$1/weft" identity init --dir "$tmp/identity" >/dev/null
  mkdir -p "$tmp/tokens/bench"
  for sa in web nginx; do
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/tokens/bench/$sa"
  done
  CTL_PORT=$(free_port)
  "$1/weft-controller" --identity-dir "$tmp/identity" --tokens-dir "$tmp/tokens" \
    --listen "127.0.0.1:$CTL_PORT" --admin-listen "127.0.0.1:$(free_port)" >"$tmp/controller.log" 2>&1 &
  pids+=($!)
  wait_port "$CTL_PORT"
}

# mesh_flags SA: sets MESH_FLAGS, a proxy's flags for its identity as service account SA
# of namespace bench, its certificate from start_controller's controller with the token
# start_controller wrote.
mesh_flags() {
  MESH_FLAGS=(--namespace bench --service-account "$1" --trust-anchors "$tmp/identity/trust-anchors.pem"
    --controller "127.0.0.1:$CTL_PORT" --identity-token "$tmp/tokens/bench/$1")
}

# start_meshed SA FLAGS...: starts $PROXY in explicit mode with one worker thread and
# the identity of service account SA (mesh_flags), with FLAGS; its pid is $!.
start_meshed() {
  mesh_flags "$1"
  shift
  "$PROXY" --worker-threads 1 --log warn --mode explicit "${MESH_FLAGS[@]}" "$@" &
  pids+=($!)
}

# The identity `mesh_flags nginx` gives a proxy: what its callers' endpoints expect.
NGINX_IDENTITY=nginx.bench.serviceaccount.identity.weft.cluster.local

# nginx_endpoints FILE LISTEN-PORT UPSTREAM-PORT [IDENTITY]: writes a proxy's endpoints
# file (--endpoints) with one service, nginx, listening on 127.0.0.1:LISTEN-PORT and
# sending to 127.0.0.1:UPSTREAM-PORT; over mTLS, expecting IDENTITY there, when given.
nginx_endpoints() {
  {
    echo "services:"
    echo "  - name: nginx"
    echo "    listen: 127.0.0.1:$2"
    if [[ -n ${4:-} ]]; then
      echo "    identity: $4"
    fi
    echo "    endpoints: [\"127.0.0.1:$3\"]"
  } >"$1"
}

# start_server_proxy BACKEND-PORT: the two-hop mTLS paths' server proxy (start_meshed,
# identity nginx), its inbound side forwarding to 127.0.0.1:BACKEND-PORT. Sets
# SERVER_IN (its inbound port) and SERVER_ADMIN; its pid is $!.
start_server_proxy() {
  SERVER_IN=$(free_port) SERVER_ADMIN=$(free_port)
  start_meshed nginx --inbound-forward "127.0.0.1:$1" --inbound-listen "127.0.0.1:$SERVER_IN" \
    --outbound-listen "127.0.0.1:$(free_port)" --admin-listen "127.0.0.1:$SERVER_ADMIN"
}

# start_caller BACKEND-PORT SERVER-IN [FLAGS...]: a calling proxy (start_meshed, identity
# web) whose service listener sends to the server proxy on 127.0.0.1:SERVER-IN over mTLS
# (nginx_endpoints), its inbound side forwarding to 127.0.0.1:BACKEND-PORT, with FLAGS.
# Sets CALLER_PORT (the service listener) and CALLER_ADMIN; its pid is $!.
start_caller() {
  local backend=$1 server_in=$2
  shift 2
  CALLER_PORT=$(free_port) CALLER_ADMIN=$(free_port)
  nginx_endpoints "$tmp/endpoints-$CALLER_PORT.yaml" "$CALLER_PORT" "$server_in" "$NGINX_IDENTITY"
  start_meshed web --inbound-forward "127.0.0.1:$backend" --endpoints "$tmp/endpoints-$CALLER_PORT.yaml" \
    --inbound-listen "127.0.0.1:$(free_port)" --outbound-listen "127.0.0.1:$(free_port)" \
    --admin-listen "127.0.0.1:$CALLER_ADMIN" "$@"
}

# start_nginx: the backend every bench uses: nginx, one worker, a 17-byte body
# ("hello from nginx\n"), keep-alive for 300 s, as many connections as the shell's file
# limit allows. Sets NGINX_PORT.
start_nginx() {
  local nginx nofile
  nginx=$(command -v nginx || echo /usr/sbin/nginx)
  nofile=$(ulimit -n)
  NGINX_PORT=$(free_port)
  cat >"$tmp/nginx.conf" <<NGINX
worker_processes 1;
worker_rlimit_nofile $nofile;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx.err warn;
events { worker_connections $((nofile > 200 ? nofile - 100 : nofile)); }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$NGINX_PORT backlog=4096;
    location / { return 200 "hello from nginx\n"; }
  }
}
NGINX
  "$nginx" -c "$tmp/nginx.conf" -p "$tmp" &
  pids+=($!)
  wait_port "$NGINX_PORT"
}

# haproxy_config FILE PORT [GLOBAL-LINE...]: the one-hop haproxy every bench compares
# with: one thread, HTTP mode, listening on PORT, keep-alive and connection reuse to
# nginx (start_nginx first). Extra lines go in its global section (maxconn and such).
haproxy_config() {
  local file=$1 port=$2 line
  shift 2
  {
    echo "global"
    echo "  nbthread 1"
    for line in "$@"; do echo "  $line"; done
    cat <<HAPROXY
defaults
  mode http
  timeout connect 1s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  http-reuse always
frontend fe
  bind 127.0.0.1:$port
  default_backend be
backend be
  server nginx 127.0.0.1:$NGINX_PORT
HAPROXY
  } >"$file"
}
