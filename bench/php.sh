#!/usr/bin/env bash
# PHP over FastCGI: berth + php-cgi against nginx + php-fpm and Apache + mod_fcgid.
#
#   sudo bash bench/php.sh        # REPS=3 DUR=8 CONNS=16 by default
#
# The same hello-world script through:
#   berth   berth, a pool of 8 php-cgi processes as the tenant (min_processes = 8,
#           max_requests = 0 like php-fpm's default; berth's own default of 10000
#           recycles a process every ~8 s at this rate, each restart a ~25 ms stall
#           for one request, which shows in p99)
#   nginx   nginx + php-fpm (pm = static, 8 children)
#   apache  Apache httpd (mpm_event) + mod_fcgid + php-cgi (8 processes)
# Each server with its PHP processes pinned to CPU $SERVER_CPU (children inherit
# the affinity), wrk -t1 -c$CONNS on CPU $CLIENT_CPU, runs alternating. All three
# write an access log. Then the cold start: the first request after a fresh start
# (no PHP process running yet) for berth (min_processes = 0) and mod_fcgid, next
# to php-cgi's own start-up time. Prints req/s, p99 and ratios. Loopback only;
# every load is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
DUR=${DUR:-8}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-16}
COLD_REPS=${COLD_REPS:-5}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
PORT_BERTH=${PORT_BERTH:-18211}
PORT_NGINX=${PORT_NGINX:-18212}
PORT_APACHE=${PORT_APACHE:-18213}

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
command -v php-cgi >/dev/null || need+=(php-cgi)
ls /usr/sbin/php-fpm* >/dev/null 2>&1 || need+=(php-fpm)
command -v apache2 >/dev/null || need+=(apache2)
[ -e /usr/lib/apache2/modules/mod_fcgid.so ] || need+=(libapache2-mod-fcgid)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
FPM=$(ls /usr/sbin/php-fpm[0-9]* | sort -V | tail -n1)
PHP_CGI=$(command -v php-cgi)
MODS=/usr/lib/apache2/modules
id berth-bench >/dev/null 2>&1 || useradd --no-create-home --shell /usr/sbin/nologin berth-bench

cargo build --release --quiet
BERTH=$PWD/target/release/berth

WORK=$(mktemp -d /tmp/berth-bench-php.XXXXXX)
chmod 755 "$WORK"
PIDS=()
stop_all() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
  pkill -f "$WORK" 2>/dev/null || true
  sleep 0.5
}
trap 'stop_all; rm -rf "$WORK"' EXIT

DOC=$WORK/home/public
mkdir -p "$DOC"
printf '<?php echo "Hello, world!\\n";\n' >"$DOC/hello.php"
chown -R berth-bench: "$WORK/home"
chmod -R a+rX "$WORK/home"

berth_conf() {  # port min_processes dir
  mkdir -p "$3"
  cat >"$3/berth.toml" <<TOML
[server]
listen = ["127.0.0.1:$1"]
user = "www-data"
state_dir = "$3/state"
log_dir = "$3/log"

[tenant.bench]
user = "berth-bench"
home = "$WORK/home"

[tenant.bench.app.php]
protocol = "fastcgi"
command = ["$PHP_CGI"]
dir = "$DOC"
min_processes = $2
max_processes = 8
max_requests = 0      # never recycled, as php-fpm's pm.max_requests = 0 (its default)

[[tenant.bench.site]]
hosts = ["bench.test"]
root = "$DOC"

[[tenant.bench.site.route]]
path = "/"
extensions = ["php"]
app = "php"
TOML
}

start_berth() {  # port min dir
  berth_conf "$1" "$2" "$3"
  taskset -c "$SERVER_CPU" "$BERTH" serve --config "$3/berth.toml" >"$3/out.log" 2>&1 &
  PIDS+=($!)
}

start_nginx_fpm() {
  local d=$WORK/nginx
  mkdir -p "$d"
  cat >"$d/fpm.conf" <<FPM
[global]
pid = $d/fpm.pid
error_log = $d/fpm-error.log
daemonize = no
[app]
user = www-data
group = www-data
listen = $d/fpm.sock
listen.owner = www-data
listen.group = www-data
listen.mode = 0660
pm = static
pm.max_children = 8
FPM
  cat >"$d/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
user www-data;
pid $d/nginx.pid;
error_log $d/error.log;
events { worker_connections 4096; }
http {
  access_log $d/access.log combined;
  keepalive_requests 100000;
  server {
    listen 127.0.0.1:$PORT_NGINX;
    root $DOC;
    location ~ \.php\$ {
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME \$document_root\$fastcgi_script_name;
      fastcgi_pass unix:$d/fpm.sock;
    }
  }
}
NGINX
  taskset -c "$SERVER_CPU" "$FPM" -F -y "$d/fpm.conf" >"$d/fpm.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do [ -S "$d/fpm.sock" ] && break; sleep 0.1; done
  taskset -c "$SERVER_CPU" nginx -c "$d/nginx.conf" >"$d/out.log" 2>&1 &
  PIDS+=($!)
}

start_apache() {  # port dir
  local d=$2
  mkdir -p "$d/run" "$d/fcgid"
  chown www-data: "$d/fcgid"
  : >"$d/mime.types"
  cat >"$d/httpd.conf" <<HTTPD
ServerRoot "$d"
ServerName 127.0.0.1
Listen 127.0.0.1:$1
PidFile $d/httpd.pid
DefaultRuntimeDir $d/run
ErrorLog $d/error.log
LogLevel warn
User www-data
Group www-data
LoadModule mpm_event_module $MODS/mod_mpm_event.so
LoadModule authz_core_module $MODS/mod_authz_core.so
LoadModule mime_module $MODS/mod_mime.so
LoadModule fcgid_module $MODS/mod_fcgid.so
CustomLog $d/access.log combined
KeepAlive On
MaxKeepAliveRequests 100000
TypesConfig $d/mime.types
DocumentRoot "$DOC"
FcgidIPCDir $d/fcgid
FcgidProcessTableFile $d/fcgid/fcgid_shm
FcgidMaxProcesses 8
FcgidMaxProcessesPerClass 8
FcgidMaxRequestsPerProcess 10000
FcgidInitialEnv PHP_FCGI_MAX_REQUESTS 10000
<Directory "$DOC">
  Options +ExecCGI
  AddHandler fcgid-script .php
  FcgidWrapper $PHP_CGI .php
  Require all granted
</Directory>
HTTPD
  taskset -c "$SERVER_CPU" apache2 -f "$d/httpd.conf" -DFOREGROUND >"$d/out.log" 2>&1 &
  PIDS+=($!)
}

wait_port() {
  for _ in $(seq 200); do
    curl -s -o /dev/null -H 'Host: bench.test' "http://127.0.0.1:$1/" && return 0
    sleep 0.05
  done
  echo "port $1 never answered" >&2
  return 1
}

check_hello() {
  local got
  got=$(curl -s -H 'Host: bench.test' "http://127.0.0.1:$1/hello.php")
  if [ "$got" != "Hello, world!" ]; then
    echo "port $1 answered '$got'" >&2
    cat "$WORK"/*/out.log "$WORK"/*/error.log >&2 2>/dev/null || true
    exit 1
  fi
}

# ---- throughput ------------------------------------------------------------
start_berth "$PORT_BERTH" 8 "$WORK/berth"
start_nginx_fpm
start_apache "$PORT_APACHE" "$WORK/apache"
for p in $PORT_BERTH $PORT_NGINX $PORT_APACHE; do
  wait_port "$p"
  check_hello "$p"
done

run() {  # name port
  local out rps p99 non2xx
  out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" --latency \
    -H 'Host: bench.test' "http://127.0.0.1:$2/hello.php")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {v = $2; if (v ~ /us$/) {sub(/us/, "", v); v /= 1000} else if (v ~ /ms$/) {sub(/ms/, "", v)} else if (v ~ /s$/) {sub(/s/, "", v); v *= 1000}; print v}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  echo "$1 $rps $p99 ${non2xx:-0}" >>"$WORK/results"
  printf '  %-7s %9.0f req/s  p99 %8.2f ms%s\n' "$1" "$rps" "$p99" "$( [ -n "$non2xx" ] && echo "  non-2xx: $non2xx")"
}
echo "warm-up (${WARMUP}s each)"
for p in $PORT_BERTH $PORT_NGINX $PORT_APACHE; do
  taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" -H 'Host: bench.test' "http://127.0.0.1:$p/hello.php" >/dev/null
done
: >"$WORK/results"
order=(berth nginx apache)
for rep in $(seq "$REPS"); do
  echo "rep $rep/$REPS"
  for name in "${order[@]}"; do
    case $name in
      berth) run berth "$PORT_BERTH" ;;
      nginx) run nginx "$PORT_NGINX" ;;
      apache) run apache "$PORT_APACHE" ;;
    esac
  done
  order=("${order[@]:1}" "${order[0]}")
done
stop_all

# ---- cold start --------------------------------------------------------------
# php-cgi's own start-up: start it, run hello.php once, exit.
own=()
for _ in $(seq "$COLD_REPS"); do
  s=$(date +%s%N)
  REDIRECT_STATUS=200 SCRIPT_FILENAME=$DOC/hello.php taskset -c "$SERVER_CPU" "$PHP_CGI" >/dev/null 2>&1
  e=$(date +%s%N)
  own+=($(((e - s) / 1000)))
done
cold() {  # name: appends the microseconds of the first request of each fresh start
  local name=$1 i d port t
  for i in $(seq "$COLD_REPS"); do
    d=$WORK/cold-$name-$i
    port=$((PORT_BERTH + 10 + i))
    case $name in
      berth) start_berth "$port" 0 "$d" ;;
      apache) start_apache "$port" "$d" ;;
    esac
    # Up when a static 404 answers; no PHP process runs yet.
    for _ in $(seq 200); do
      curl -s -o /dev/null -H 'Host: bench.test' "http://127.0.0.1:$port/none" && break
      sleep 0.05
    done
    sleep 1
    t=$(taskset -c "$CLIENT_CPU" curl -s -o /dev/null -w '%{time_total}' -H 'Host: bench.test' "http://127.0.0.1:$port/hello.php")
    echo "$name $(awk -v t="$t" 'BEGIN {printf "%d", t * 1000000}')" >>"$WORK/cold"
    stop_all
  done
}
: >"$WORK/cold"
cold berth
cold apache

median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
echo
echo "PHP hello world over FastCGI, wrk -t1 -c$CONNS -d${DUR}s, median of $REPS; servers + PHP on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU"
printf '%-24s %10s %9s\n' setup "req/s" "p99 ms"
for name in berth nginx apache; do
  case $name in
    berth) label="berth + php-cgi (8)" ;;
    nginx) label="nginx + php-fpm (8)" ;;
    apache) label="apache + mod_fcgid (8)" ;;
  esac
  printf '%-24s %10.0f %9.2f\n' "$label" \
    "$(awk -v n=$name '$1 == n {print $2}' "$WORK/results" | median)" \
    "$(awk -v n=$name '$1 == n {print $3}' "$WORK/results" | median)"
done
b=$(awk '$1 == "berth" {print $2}' "$WORK/results" | median)
n=$(awk '$1 == "nginx" {print $2}' "$WORK/results" | median)
a=$(awk '$1 == "apache" {print $2}' "$WORK/results" | median)
awk -v b="$b" -v n="$n" -v a="$a" 'BEGIN {printf "berth / nginx+php-fpm = %.2fx   berth / apache+mod_fcgid = %.2fx\n", b / n, b / a}'
ownm=$(printf '%s\n' "${own[@]}" | median)
cb=$(awk '$1 == "berth" {print $2}' "$WORK/cold" | median)
ca=$(awk '$1 == "apache" {print $2}' "$WORK/cold" | median)
echo
awk -v b="$cb" -v a="$ca" -v o="$ownm" -v n="$COLD_REPS" 'BEGIN {
  printf "cold start, first request (median of %d fresh starts): berth %.1f ms, mod_fcgid %.1f ms;\n", n, b / 1000, a / 1000
  printf "php-cgi own start-up %.1f ms, so berth adds %.1f ms\n", o / 1000, (b - o) / 1000 }'
