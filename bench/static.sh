#!/usr/bin/env bash
# Static files: berth against nginx (Debian's package), same files, same CPU budget.
#
#   sudo bash bench/static.sh            # REPS=3 DUR=8 CONNS=50 by default
#
# Both servers serve the same 1 KiB and 100 KiB files from the same directory,
# each pinned to CPU $SERVER_CPU (children inherit the affinity); wrk -t1 runs on
# CPU $CLIENT_CPU. Runs alternate (rep 1: berth nginx, rep 2: berth nginx, ...) so
# that noise from other users of the machine hits both alike. Both write an
# access log (berth always does; nginx gets the same per-request write) and both
# serve over plain HTTP/1.1 keep-alive on 127.0.0.1. Prints the median req/s and
# p99 of each and the ratio berth/nginx. Traffic stays on loopback; every load is
# bounded by -d$DUR.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
DUR=${DUR:-8}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-50}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BERTH_PORT=${BERTH_PORT:-18201}
NGINX_PORT=${NGINX_PORT:-18202}
NGINX_LOG=${NGINX_LOG:-on}   # "off" to compare against nginx without an access log

[ "$(id -u)" = 0 ] || { echo "run as root (nginx and berth drop to www-data)" >&2; exit 1; }
need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
command -v taskset >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
id berth-bench >/dev/null 2>&1 || useradd --no-create-home --shell /usr/sbin/nologin berth-bench

cargo build --release --quiet
BERTH=$PWD/target/release/berth

WORK=$(mktemp -d /tmp/berth-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/docroot" "$WORK/nginx" "$WORK/berth"
# (cut reads all its input: no SIGPIPE for base64 under pipefail, as head gave)
head -c 1024 /dev/urandom | base64 -w 0 | cut -c 1-1024 | tr -d '\n' >"$WORK/docroot/1k.txt"
head -c 102400 /dev/urandom | base64 -w 0 | cut -c 1-102400 | tr -d '\n' >"$WORK/docroot/100k.txt"
chown -R berth-bench: "$WORK/docroot"
chmod -R a+rX "$WORK/docroot"

cat >"$WORK/nginx/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
user www-data;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
  include /etc/nginx/mime.types;
  access_log $( [ "$NGINX_LOG" = on ] && echo "$WORK/nginx/access.log combined" || echo off );
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    server_name bench.test;
    root $WORK/docroot;
  }
}
NGINX

cat >"$WORK/berth/berth.toml" <<TOML
[server]
listen = ["127.0.0.1:$BERTH_PORT"]
user = "www-data"
state_dir = "$WORK/berth/state"
log_dir = "$WORK/berth/log"
max_connections = 4096

[tenant.bench]
user = "berth-bench"

[[tenant.bench.site]]
hosts = ["bench.test"]
root = "$WORK/docroot"
TOML

taskset -c "$SERVER_CPU" nginx -c "$WORK/nginx/nginx.conf" >"$WORK/nginx/out.log" 2>&1 &
PIDS+=($!)
taskset -c "$SERVER_CPU" "$BERTH" serve --config "$WORK/berth/berth.toml" >"$WORK/berth/out.log" 2>&1 &
PIDS+=($!)

for port in $BERTH_PORT $NGINX_PORT; do
  for _ in $(seq 100); do
    curl -s -o /dev/null -H 'Host: bench.test' "http://127.0.0.1:$port/1k.txt" && break
    sleep 0.1
  done
  for f in 1k.txt 100k.txt; do
    if ! curl -s -H 'Host: bench.test' "http://127.0.0.1:$port/$f" | cmp -s - "$WORK/docroot/$f"; then
      echo "port $port does not serve $f correctly" >&2
      cat "$WORK"/*/out.log >&2
      exit 1
    fi
  done
done

# run NAME PORT FILE -> appends "NAME FILE req/s p99ms" to results
run() {
  local out
  out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" --latency \
    -H 'Host: bench.test' "http://127.0.0.1:$2/$3")
  local rps p99 non2xx
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {v = $2; if (v ~ /us$/) {sub(/us/, "", v); v /= 1000} else if (v ~ /ms$/) {sub(/ms/, "", v)} else if (v ~ /s$/) {sub(/s/, "", v); v *= 1000}; print v}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  echo "$1 $3 $rps $p99 ${non2xx:-0}" >>"$WORK/results"
  printf '  %-6s %-9s %10.0f req/s  p99 %7.2f ms%s\n' "$1" "$3" "$rps" "$p99" \
    "$( [ -n "$non2xx" ] && echo "  non-2xx: $non2xx")"
}

echo "warm-up (${WARMUP}s each)"
for f in 1k.txt 100k.txt; do
  taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" -H 'Host: bench.test' "http://127.0.0.1:$BERTH_PORT/$f" >/dev/null
  taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" -H 'Host: bench.test' "http://127.0.0.1:$NGINX_PORT/$f" >/dev/null
done
: >"$WORK/results"
for rep in $(seq "$REPS"); do
  echo "rep $rep/$REPS"
  for f in 1k.txt 100k.txt; do
    if (( rep % 2 )); then
      run berth "$BERTH_PORT" "$f"; run nginx "$NGINX_PORT" "$f"
    else
      run nginx "$NGINX_PORT" "$f"; run berth "$BERTH_PORT" "$f"
    fi
  done
done

echo
echo "static files, wrk -t1 -c$CONNS -d${DUR}s, median of $REPS; servers on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU; nginx access_log $NGINX_LOG"
printf '%-9s %12s %12s %8s %10s %10s\n' file "berth req/s" "nginx req/s" ratio "berth p99" "nginx p99"
for f in 1k.txt 100k.txt; do
  awk -v F="$f" '
    function median(a, n,   i, j, t) {
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    $2 == F && $1 == "berth" { br[++nb] = $3; bp[nb] = $4 }
    $2 == F && $1 == "nginx" { nr[++nn] = $3; np[nn] = $4 }
    END {
      b = median(br, nb); n = median(nr, nn)
      printf "%-9s %12.0f %12.0f %7.2fx %8.2fms %8.2fms\n", F, b, n, b / n, median(bp, nb), median(np, nn)
    }' "$WORK/results"
done
