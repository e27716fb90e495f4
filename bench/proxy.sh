#!/usr/bin/env bash
# HTTP reverse proxy: berth against nginx and haproxy (Debian's packages), in
# front of the same tiny app, with the same CPU budget.
#
#   sudo bash bench/proxy.sh            # REPS=3 DUR=8 CONNS=50 by default
#
# The app is bench/tiny_app.c, compiled here with gcc: one process, one thread,
# epoll, answering every request "200 OK" with a 14-byte body on kept-alive
# connections. It was picked because it is one program that takes its listening
# socket either way the setups need: by systemd socket activation (LISTEN_FDS,
# fd 3), as berth starts HTTP apps, or bound by itself on a Unix socket for
# nginx and haproxy; and because it is fast enough not to be the bottleneck.
# (A single-threaded Perl or Python server caps all three proxies at its own
# rate and proves nothing; nginx as the app cannot take an activated socket.)
# Each proxy gets its own instance, all three over a Unix socket.
#
#   berth    app protocol "http", socket activation (the default bind),
#            max_processes 1, concurrency 64 (one process, up to 64 connections
#            to it, kept alive by berth), max_requests 0 (never recycled)
#   nginx    upstream with keepalive 64 (keepalive_requests 100000),
#            proxy_http_version 1.1, proxy_set_header Connection ""
#   haproxy  mode http, http-reuse always, one thread
#
# Each proxy runs pinned to CPU $SERVER_CPU (one worker, one thread, one
# runtime). The app and wrk -t1 -c$CONNS share CPU $CLIENT_CPU: so the proxy
# is all that runs on its CPU, and per request the client CPU does the same
# work (wrk's and the app's) whichever proxy is measured. That CPU is only a
# fair referee while it has time to spare, so each repetition also runs wrk
# straight at an app instance on TCP ("direct", both on CPU $CLIENT_CPU: the
# most that CPU can give) and the summary says how close the proxies came to
# it; the busy share of both CPUs is sampled during every run. (An app on the
# proxies' CPU, as anchors.sh's s3 does, would charge the app's cost to every
# proxy alike and pull all the ratios towards 1.) berth's app inherits berth's
# affinity, so the app pins itself (--cpu), whoever starts it.
#
# nginx and haproxy add the forwarding headers berth always sets
# (X-Forwarded-For, -Proto, -Host, X-Real-IP; berth also sets RFC 7239's
# Forwarded) and pass the client's Host. All three write an
# access log (berth always does; PROXY_LOG=off turns nginx's and haproxy's
# off). Runs alternate (rep 1: berth nginx haproxy, rep 2: nginx haproxy
# berth, ...) so that noise from other users of the machine hits all alike.
# Prints the median req/s, p99, the proxy's share of its CPU (near 100%: the
# proxy is what limits, as it should be), requests per second of the proxy's
# own CPU time (less sensitive to other users of the machine than req/s), the
# ratios, and how many connections each proxy opened to its app. Traffic
# stays on loopback; every load is bounded by -d$DUR.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
DUR=${DUR:-8}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-50}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
APP_CPU=${APP_CPU:-$CLIENT_CPU}
BERTH_PORT=${BERTH_PORT:-18231}
NGINX_PORT=${NGINX_PORT:-18232}
HAPROXY_PORT=${HAPROXY_PORT:-18233}
DIRECT_PORT=${DIRECT_PORT:-18234}
PROXY_LOG=${PROXY_LOG:-on}   # "off": nginx and haproxy without an access log

[ "$(id -u)" = 0 ] || { echo "run as root (the proxies and the app drop to their users)" >&2; exit 1; }
need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
command -v curl >/dev/null || need+=(curl)
command -v setpriv >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
id berth-bench >/dev/null 2>&1 || useradd --no-create-home --shell /usr/sbin/nologin berth-bench
HAPROXY_USER=haproxy
id "$HAPROXY_USER" >/dev/null 2>&1 || HAPROXY_USER=www-data

cargo build --release --quiet
BERTH=$PWD/target/release/berth

WORK=$(mktemp -d /tmp/berth-bench-proxy.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The app: a tenant-owned program in the tenant's home (suEXEC's checks).
HOME_DIR=$WORK/home
APP=$HOME_DIR/bin/tiny_app
mkdir -p "$HOME_DIR/bin" "$HOME_DIR/public" "$WORK/app" "$WORK/nginx" "$WORK/haproxy" "$WORK/berth"
gcc -O2 -Wall -Wextra -Werror -o "$APP" bench/tiny_app.c
chown -R berth-bench: "$HOME_DIR"
chmod -R go-w,a+rX "$HOME_DIR"
chown berth-bench: "$WORK/app"

start_app() {  # ADDR LOG: an instance as the tenant's user, pinned to $APP_CPU
  setpriv --reuid=berth-bench --regid=berth-bench --init-groups \
    "$APP" --cpu "$APP_CPU" "$1" 2>"$2" &
  PIDS+=($!)
}
start_app "$WORK/app/nginx.sock" "$WORK/app/nginx.err"
APP_NGINX=$!
start_app "$WORK/app/haproxy.sock" "$WORK/app/haproxy.err"
APP_HAPROXY=$!
start_app "127.0.0.1:$DIRECT_PORT" "$WORK/app/direct.err"
for s in nginx haproxy; do
  for _ in $(seq 100); do [ -S "$WORK/app/$s.sock" ] && break; sleep 0.05; done
done

cat >"$WORK/nginx/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
user www-data;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log $( [ "$PROXY_LOG" = on ] && echo "$WORK/nginx/access.log combined" || echo off );
  keepalive_requests 100000;
  upstream app {
    server unix:$WORK/app/nginx.sock;
    keepalive 64;
    keepalive_requests 100000;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    server_name bench.test;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$host;
      proxy_set_header X-Real-IP \$remote_addr;
    }
  }
}
NGINX

# haproxy writes its log lines to stdout (out.log), one write per request.
log_global="" log_defaults=""
if [ "$PROXY_LOG" = on ]; then
  log_global="  log stdout format raw local0"
  log_defaults=$'  log global\n  option httplog'
fi
cat >"$WORK/haproxy/haproxy.cfg" <<HAPROXY
global
  maxconn 4096
  nbthread 1
  user $HAPROXY_USER
  group $HAPROXY_USER
$log_global
defaults
  mode http
$log_defaults
  option forwardfor
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 75s
frontend fe
  bind 127.0.0.1:$HAPROXY_PORT
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Real-IP %[src]
  default_backend be
backend be
  http-reuse always
  server app $WORK/app/haproxy.sock
HAPROXY

cat >"$WORK/berth/berth.toml" <<TOML
[server]
listen = ["127.0.0.1:$BERTH_PORT"]
user = "www-data"
state_dir = "$WORK/berth/state"
log_dir = "$WORK/berth/log"
max_connections = 4096

[tenant.bench]
user = "berth-bench"
home = "$HOME_DIR"

[tenant.bench.app.hello]
protocol = "http"
command = ["$APP", "--cpu", "$APP_CPU"]
dir = "$HOME_DIR"
min_processes = 1
max_processes = 1
concurrency = 64
max_requests = 0

[[tenant.bench.site]]
hosts = ["bench.test"]
root = "$HOME_DIR/public"

[[tenant.bench.site.route]]
path = "/"
app = "hello"
TOML

taskset -c "$SERVER_CPU" nginx -c "$WORK/nginx/nginx.conf" >"$WORK/nginx/out.log" 2>&1 &
PIDS+=($!)
NGINX_PID=$!
taskset -c "$SERVER_CPU" haproxy -db -f "$WORK/haproxy/haproxy.cfg" >"$WORK/haproxy/out.log" 2>&1 &
PIDS+=($!)
HAPROXY_PID=$!
taskset -c "$SERVER_CPU" "$BERTH" serve --config "$WORK/berth/berth.toml" >"$WORK/berth/out.log" 2>&1 &
PIDS+=($!)
BERTH_PID=$!

# Up when the app's answer comes through. (berth may answer 503 to a request
# that comes while its min_processes process is still starting.)
for port in $BERTH_PORT $NGINX_PORT $HAPROXY_PORT $DIRECT_PORT; do
  got=""
  for _ in $(seq 100); do
    got=$(curl -s -H 'Host: bench.test' "http://127.0.0.1:$port/" || true)
    [ "$got" = "Hello, world!" ] && break
    sleep 0.1
  done
  if [ "$got" != "Hello, world!" ]; then
    echo "port $port answered '$got', not the app's 'Hello, world!'" >&2
    tail -n 20 "$WORK"/*/out.log "$WORK"/*/error.log "$WORK"/app/*.err "$WORK"/berth/log/*/error.log >&2 2>/dev/null || true
    exit 1
  fi
done
# berth's instance is the one whose command line has no address.
APP_BERTH=$(pgrep -u berth-bench -fx "$APP --cpu $APP_CPU" || true)
if [ "$(wc -w <<<"$APP_BERTH")" != 1 ]; then
  echo "expected one app process started by berth, found '$APP_BERTH'" >&2
  exit 1
fi
for p in $APP_BERTH $APP_NGINX $APP_HAPROXY; do
  [ "$(taskset -pc "$p" | awk '{print $NF}')" = "$APP_CPU" ] || { echo "app $p is not on CPU $APP_CPU" >&2; exit 1; }
done

# cpu_ticks N -> "busy total" jiffies of CPU N so far
cpu_ticks() { awk -v c="cpu$1" '$1 == c {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t}' /proc/stat; }
# proxy_ticks PID -> user+system jiffies of PID and its descendants, apps excluded
proxy_ticks() {
  ps -e -o pid=,ppid=,comm= | awk -v root="$1" '
    { up[$1] = $2; comm[$1] = $3 }
    END { for (p in up) { q = p; while (q != root && q in up && q > 1) q = up[q]; if (q == root && comm[p] != "tiny_app") print p } }' |
    while read -r p; do sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}'; done |
    awk '{s += $1} END {print s + 0}'
}
HZ=$(getconf CLK_TCK)

# run NAME PORT PROXY_PID -> appends "NAME req/s p99ms cpu0% cpu1% req-per-proxy-cpu-s proxy-cpu%"
# to results
run() {
  local out s0 s1 c0 c1 p0 p1 t0 t1 rps p99 non2xx errs busy0 busy1 eff own
  s0=$(cpu_ticks "$SERVER_CPU"); c0=$(cpu_ticks "$CLIENT_CPU")
  p0=$( [ -n "$3" ] && proxy_ticks "$3" || echo 0)
  t0=$(date +%s%N)
  out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" --latency \
    -H 'Host: bench.test' "http://127.0.0.1:$2/")
  t1=$(date +%s%N)
  p1=$( [ -n "$3" ] && proxy_ticks "$3" || echo 0)
  s1=$(cpu_ticks "$SERVER_CPU"); c1=$(cpu_ticks "$CLIENT_CPU")
  busy0=$(awk -v a="$s0" -v b="$s1" 'BEGIN {split(a, x, " "); split(b, y, " "); print 100 * (y[1] - x[1]) / (y[2] - x[2])}')
  busy1=$(awk -v a="$c0" -v b="$c1" 'BEGIN {split(a, x, " "); split(b, y, " "); print 100 * (y[1] - x[1]) / (y[2] - x[2])}')
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {v = $2; if (v ~ /us$/) {sub(/us/, "", v); v /= 1000} else if (v ~ /ms$/) {sub(/ms/, "", v)} else if (v ~ /s$/) {sub(/s/, "", v); v *= 1000}; print v}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  errs=$(awk '/Socket errors/ {sub(/^ *Socket errors: */, ""); print}' <<<"$out")
  # requests per second of the proxy's own CPU time (wrk's total over the CPU
  # the proxy used meanwhile; 0 for direct)
  eff=$(awk -v n="$(awk '/ requests in / {print $1}' <<<"$out")" -v t=$((p1 - p0)) -v hz="$HZ" \
    'BEGIN {print (t > 0) ? n / (t / hz) : 0}')
  # the proxy's share of one CPU while wrk ran
  own=$(awk -v t=$((p1 - p0)) -v hz="$HZ" -v ns=$((t1 - t0)) 'BEGIN {print 100 * (t / hz) / (ns / 1e9)}')
  echo "$1 $rps $p99 $busy0 $busy1 $eff $own" >>"$WORK/results"
  printf '  %-7s %9.0f req/s  p99 %7.2f ms  proxy %4s of a CPU  CPU%s busy %3.0f%%  CPU%s busy %3.0f%%%s%s\n' \
    "$1" "$rps" "$p99" "$( [ -n "$3" ] && printf '%.0f%%' "$own" || echo -)" \
    "$SERVER_CPU" "$busy0" "$CLIENT_CPU" "$busy1" \
    "$( [ -n "$non2xx" ] && echo "  non-2xx: $non2xx")" "$( [ -n "$errs" ] && echo "  socket errors: $errs")"
}

echo "warm-up (${WARMUP}s each)"
for port in $BERTH_PORT $NGINX_PORT $HAPROXY_PORT $DIRECT_PORT; do
  taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" -H 'Host: bench.test' "http://127.0.0.1:$port/" >/dev/null
done
: >"$WORK/results"
order=(berth nginx haproxy)
for rep in $(seq "$REPS"); do
  echo "rep $rep/$REPS"
  for name in "${order[@]}" direct; do
    case $name in
      berth) run berth "$BERTH_PORT" "$BERTH_PID" ;;
      nginx) run nginx "$NGINX_PORT" "$NGINX_PID" ;;
      haproxy) run haproxy "$HAPROXY_PORT" "$HAPROXY_PID" ;;
      direct) run direct "$DIRECT_PORT" "" ;;
    esac
  done
  order=("${order[@]:1}" "${order[0]}")
done

# How many connections each proxy opened to its app (upstream keep-alive).
kill -USR1 "$APP_BERTH" "$APP_NGINX" "$APP_HAPROXY"
sleep 0.5
app_stats() { grep -h 'tiny_app:' "$@" 2>/dev/null | tail -n1 | sed 's/^.*tiny_app: //'; }

median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
col() { awk -v n="$1" -v c="$2" '$1 == n {print $c}' "$WORK/results" | median; }
echo
echo "HTTP reverse proxy to one tiny app (keep-alive), wrk -t1 -c$CONNS -d${DUR}s, median of $REPS;"
echo "proxies on CPU $SERVER_CPU, app and wrk on CPU $CLIENT_CPU; access logs: berth on, nginx and haproxy $PROXY_LOG"
printf '%-22s %10s %9s %9s %9s %9s %16s\n' setup "req/s" "p99 ms" "proxy CPU" "CPU$SERVER_CPU busy" "CPU$CLIENT_CPU busy" "req/proxy-CPU-s"
for name in berth nginx haproxy direct; do
  case $name in
    direct) label="app direct (no proxy)" ;;
    *) label=$name ;;
  esac
  printf '%-22s %10.0f %9.2f %9s %8.0f%% %8.0f%% %16s\n' "$label" "$(col $name 2)" "$(col $name 3)" \
    "$( [ $name = direct ] && echo - || printf '%.0f%%' "$(col $name 7)")" "$(col $name 4)" "$(col $name 5)" \
    "$( [ $name = direct ] && echo - || printf '%.0f' "$(col $name 6)")"
done
b=$(col berth 2); n=$(col nginx 2); h=$(col haproxy 2); d=$(col direct 2)
be=$(col berth 6); ne=$(col nginx 6); he=$(col haproxy 6)
awk -v b="$b" -v n="$n" -v h="$h" 'BEGIN {printf "req/s:           berth / nginx = %.2fx   berth / haproxy = %.2fx\n", b / n, b / h}'
awk -v b="$be" -v n="$ne" -v h="$he" 'BEGIN {printf "req/proxy-CPU-s: berth / nginx = %.2fx   berth / haproxy = %.2fx\n", b / n, b / h}'
awk -v b="$b" -v n="$n" -v h="$h" -v d="$d" -v c="$CLIENT_CPU" 'BEGIN {
  m = b; if (n > m) m = n; if (h > m) m = h
  printf "the fastest proxy reached %.0f%% of what CPU %s gives wrk and the app alone (direct)%s\n", 100 * m / d, c,
    (m > 0.8 * d) ? ": too close, the client CPU may be what limits the proxies" : "" }'
echo "connections to the app: berth: $(app_stats "$WORK"/berth/log/bench/error.log);" \
  "nginx: $(app_stats "$WORK/app/nginx.err"); haproxy: $(app_stats "$WORK/app/haproxy.err")"
