#!/usr/bin/env bash
# Drop-in mass hosting at 10,000 sites: berth's [discovery] against nginx with
# 10,000 server blocks (issue 9's benchmark).
#
#   sudo bash bench/discovery.sh     # SITES=10000 USERS=1000 RELOADS=5 MKDIRS=5 DUR=10 by default
#
# $SITES host directories ROOT/sNNNNN.test/public (a 1-line index.html each),
# spread over the bench users berth-b0001..berth-b$USERS (created once and
# kept, as bench/limits.sh does), $SITES / $USERS sites each. The same
# directories are served by
#   berth   [discovery] root = ROOT with a PHP handler (min_processes = 0:
#           nothing runs); defaults otherwise (cgroups, metering)
#   nginx   one server block per site, generated: server_name, root, index
#           index.php index.html, and *.php to a FastCGI pool of the owner's
#           (php-fpm's, not running: no PHP is requested; berth's handler
#           starts none either); NGINX_PHP=0: server_name and root only
# both pinned to CPU $SERVER_CPU, clients (curl, wrk) on CPU $CLIENT_CPU.
# Measured, for each:
#   start     until the last site answers 200
#   reload    $RELOADS full reloads, each from the signal until the new
#             configuration serves: berth SIGHUP until it logs "front end
#             serving configuration generation N" (and the supervisor's and
#             the front end's CPU for it); nginx `nginx -s reload` with a new
#             server block added until that block answers 200
#   new site  $MKDIRS times, from `mkdir -p ROOT/new.test/public` (+ index.html,
#             chown) until it answers 200: berth sees it by itself; nginx gets a
#             generated block and `nginx -s reload` (what a provisioning tool
#             does), counted from the mkdir too
#   memory    PSS of berth's supervisor and front end (nginx: master + workers,
#             whose shared pages RSS would count once per process) after start
#             and after the reloads
#   latency   wrk -t1 -c$CONNS -d${DUR}s --latency on one site's index.html, once
#             quiet and once with a full reload every $EVERY s; p50, p99, max,
#             requests, errors and non-2xx of each
# Prints ratios berth/nginx. Target: a full berth reload under 1 s with no
# request failing during it. Loopback only; every load is bounded; whatever
# this starts is stopped by its pid.
#
# Measured on this machine (2 cores shared with other work; medians of 5,
# two runs), 10,000 sites of 1,000 users:
#   full reload until served    berth 184-204 ms (supervisor ~100 ms and front
#                               end ~80 ms of CPU); nginx 1,334 ms with the PHP
#                               location (0.14x), 280 ms without (0.73x)
#   mkdir until the first 200   berth 352-381 ms; nginx (block + reload) 1,356
#                               ms / 267 ms
#   start                       berth 537-747 ms; nginx 1,207 / 316 ms
#   memory (PSS)                berth 56 MiB after start (front end 21), 95-102
#                               after 5 reloads (front end 54, then flat); nginx
#                               333 / 139 MiB, 756 / 271 after 5 reloads
#   a full reload every second  berth p99 4.9-6.3 ms (quiet 3.0-3.7), max 20-28
#                               ms, no error; nginx p99 4.5-5.2 ms, max 12-16 ms,
#                               wrk counts 16 socket errors per reload (the old
#                               worker closing its keep-alive connections)
#   a directory made or removed every second: berth p99 5.7-6.6 ms, no error
set -euo pipefail
cd "$(dirname "$0")/.."

SITES=${SITES:-10000}
USERS=${USERS:-1000}
RELOADS=${RELOADS:-5}
NGINX_PHP=${NGINX_PHP:-1}   # 0: nginx's blocks without the PHP location (static files only)
MKDIRS=${MKDIRS:-5}
DUR=${DUR:-10}
EVERY=${EVERY:-1}
CONNS=${CONNS:-16}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
PORT_BERTH=${PORT_BERTH:-18261}
PORT_NGINX=${PORT_NGINX:-18262}

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
((USERS >= 1 && USERS <= 9999 && SITES >= USERS)) || { echo "need 1 <= USERS <= 9999 and SITES >= USERS" >&2; exit 1; }
((DUR <= 30)) || { echo "DUR must be <= 30" >&2; exit 1; }
for p in $PORT_BERTH $PORT_NGINX; do
  if [ -n "$(ss -ltnH "( sport = :$p )")" ]; then echo "port $p is in use" >&2; exit 1; fi
done
need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
command -v php-cgi >/dev/null || need+=(php-cgi)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
PHP_CGI=$(command -v php-cgi)
CLK_TCK=$(getconf CLK_TCK)
buser() { printf 'berth-b%04d' "$1"; }
made=0
for ((i = 1; i <= USERS; i++)); do
  u=$(buser "$i")
  if ! id "$u" >/dev/null 2>&1; then
    useradd --no-create-home --shell /usr/sbin/nologin "$u"
    made=$((made + 1))
  fi
done
echo "users berth-b0001..$(buser "$USERS"): $made created"

cargo build --release --quiet
BERTH=$PWD/target/release/berth

WORK=$(mktemp -d /tmp/berth-bench-discovery.XXXXXX)
chmod 755 "$WORK"
ROOT=$WORK/sites
PIDS=()
now_ns() { date +%s%N; }
ms_since() { echo $((($(now_ns) - $1) / 1000000)); }
alive() { [ -e "/proc/$1" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
start_time() { awk '{sub(/^.*\) /, ""); print $20}' "/proc/$1/stat" 2>/dev/null; }
ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat" 2>/dev/null; }
# PSS: nginx's workers share most of their pages with the master (fork);
# RSS would count them once per process
pss_kib() { awk '/^Pss:/ {r = $2} END {print r + 0}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
stop_pid() {  # pid:starttime: SIGTERM (SIGQUIT for nginx), then SIGKILL
  local pid=${1%%:*} i
  [ "$(start_time "$pid")" = "${1#*:}" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 400; i++)); do alive "$pid" || break; sleep 0.05; done
  alive "$pid" && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local p
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  rm -rf "$WORK"
}
trap cleanup EXIT
launch() {  # log cmd...: pinned to SERVER_CPU, in the background; pid in LAUNCHED
  local log=$1; shift
  taskset -c "$SERVER_CPU" "$@" >"$log" 2>&1 </dev/null &
  LAUNCHED=$!
  PIDS+=("$LAUNCHED:$(start_time "$LAUNCHED")")
}
code() {  # host port: status of GET /
  taskset -c "$CLIENT_CPU" curl -s -o /dev/null --max-time 5 -w '%{http_code}' -H "Host: $1" "http://127.0.0.1:$2/" || true
}
wait_code() {  # host port code timeout_s: polls every 5 ms
  local end=$(($(now_ns) + $4 * 1000000000))
  while (($(now_ns) < end)); do
    [ "$(code "$1" "$2")" = "$3" ] && return 0
    sleep 0.005
  done
  return 1
}
median() { sort -g | awk '{a[NR] = $1} END {if (!NR) {print "nan"; exit}; print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
spread() { sort -g | awk '{a[NR] = $1} END {printf "%s..%s", a[1], a[NR]}'; }
site() { printf 's%05d.test' "$1"; }

# ---- the sites -----------------------------------------------------------------
s=$(now_ns)
mkdir -m 0755 "$ROOT"
per=$((SITES / USERS))
publics=()
for ((i = 1; i <= SITES; i++)); do
  printf -v h 's%05d.test' "$i"
  publics+=("$ROOT/$h/public")
done
mkdir -p "${publics[@]}"
for ((i = 1; i <= SITES; i++)); do
  printf -v h 's%05d.test' "$i"
  printf '%s\n' "$h" >"$ROOT/$h/public/index.html"
done
for ((u = 1; u <= USERS; u++)); do
  dirs=()
  last=$((u == USERS ? SITES : u * per))
  for ((i = (u - 1) * per + 1; i <= last; i++)); do
    printf -v h 's%05d.test' "$i"
    dirs+=("$ROOT/$h")
  done
  printf -v owner 'berth-b%04d' "$u"
  chown -R "$owner:" "${dirs[@]}"
done
chmod -R a+rX "$ROOT"
FIRST=$(site 1)
LAST=$(site "$SITES")
echo "$SITES sites under $ROOT for $USERS users made in $(ms_since "$s") ms"

# new_site NAME OWNER: what an administrator does for a new host
new_site() {
  mkdir -p "$ROOT/$1/public"
  printf '%s\n' "$1" >"$ROOT/$1/public/index.html"
  chmod -R a+rX "$ROOT/$1"
  chown -R "$2:" "$ROOT/$1"
}

# wrk_run LABEL HOST PORT [reloader cmd...]: wrk on CPU CLIENT_CPU; with a
# command, it runs every EVERY s meanwhile (its count goes in the line)
wrk_run() {
  local label=$1 host=$2 port=$3 out n=0 end; shift 3
  taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" --latency -H "Host: $host" "http://127.0.0.1:$port/" >"$WORK/wrk.out" 2>&1 &
  local w=$!
  if [ $# -gt 0 ]; then
    end=$(($(now_ns) + (DUR - 1) * 1000000000))
    sleep 0.5
    while (($(now_ns) < end)); do "$@"; n=$((n + 1)); sleep "$EVERY"; done
  fi
  wait "$w"
  out=$WORK/wrk.out
  awk -v label="$label" -v n="$n" -v vals="$WORK/latv" '
    function ms(v) { if (v ~ /us$/) { sub(/us/, "", v); return v / 1000 } if (v ~ /ms$/) { sub(/ms/, "", v); return v } if (v ~ /s$/) { sub(/s/, "", v); return v * 1000 } return v }
    $1 == "50%" { p50 = ms($2) } $1 == "99%" { p99 = ms($2) } $1 == "Latency" && !max { max = ms($4) }
    /requests in/ { req = $1 } /Non-2xx/ { bad = $NF } /Socket errors/ { err = $0; sub(/.*Socket errors: /, "", err)
      k = split(err, e, /[ ,]+/); for (i = 2; i <= k; i += 2) failed += e[i] }
    END { printf "  %-44s %8d requests  p50 %6.2f ms  p99 %6.2f ms  max %7.2f ms  non-2xx %s  socket errors %s%s\n",
            label, req, p50, p99, max, bad ? bad : 0, err ? err : "none", n ? "  (" n " reloads)" : ""
          printf "%s|%s|%s|%d\n", label, p99, max, failed + bad >> vals }' "$out" | tee -a "$WORK/lat"
}
# lat_of LABEL FIELD: p99 (2), max (3) or failed requests (4) of a wrk_run
lat_of() { awk -F'|' -v l="$1" -v f="$2" '$1 == l {print $f}' "$WORK/latv"; }

# ---- berth ---------------------------------------------------------------------
echo
echo "== berth: [discovery] over $SITES sites"
B=$WORK/berth
mkdir -p "$B"
cat >"$B/berth.toml" <<TOML
[server]
listen = ["127.0.0.1:$PORT_BERTH"]
user = "www-data"
state_dir = "$B/state"
log_dir = "$B/log"

[discovery]
root = "$ROOT"

[discovery.handler.php]
extensions = ["php"]
protocol = "fastcgi"
command = ["$PHP_CGI"]
max_processes = 2
TOML
s=$(now_ns)
"$BERTH" check --config "$B/berth.toml" | tail -n1
echo "  berth check: $(ms_since "$s") ms"
s=$(now_ns)
launch "$B/out.log" "$BERTH" serve --config "$B/berth.toml"
SUP=$LAUNCHED
wait_code "$LAST" "$PORT_BERTH" 200 120 || { echo "berth: $LAST never answered" >&2; tail -n 20 "$B/out.log" >&2; exit 1; }
B_START=$(ms_since "$s")
FRONT=$(ps -o pid=,args= --ppid "$SUP" | awk '$2 == "berth" && $3 == "front" {print $1; exit}')
echo "  serving all $SITES sites $B_START ms after start"
sleep 2
B_MEM0="$(pss_kib "$SUP") $(pss_kib "$FRONT")"
echo "  PSS after start: supervisor $((${B_MEM0% *} / 1024)) MiB, front end $((${B_MEM0#* } / 1024)) MiB"

gen_now() { grep -c 'serving configuration generation' "$B/out.log"; }
# berth_reload: SIGHUP until the next generation is served; ms in LAST_MS
berth_reload() {
  local gen=$(($(gen_now) + 1)) s end
  s=$(now_ns)
  kill -HUP "$SUP"
  end=$((s + 60000000000))
  until grep -q "serving configuration generation $gen\$" "$B/out.log"; do
    (($(now_ns) < end)) || { LAST_MS="(none in 60 s)"; return; }
    sleep 0.005
  done
  LAST_MS=$(ms_since "$s")
}
: >"$WORK/b_reload"
for ((k = 1; k <= RELOADS; k++)); do
  t0=$(ticks "$SUP"); f0=$(ticks "$FRONT")
  berth_reload
  sleep 0.3
  t1=$(ticks "$SUP"); f1=$(ticks "$FRONT")
  echo "$LAST_MS" >>"$WORK/b_reload"
  echo "  SIGHUP $k: front end serving the new generation after $LAST_MS ms (supervisor CPU $(((t1 - t0) * 1000 / CLK_TCK)) ms, front end $(((f1 - f0) * 1000 / CLK_TCK)) ms)"
done
[ "$(code "$LAST" "$PORT_BERTH")" = 200 ] || echo "  $LAST does not answer after the reloads" >&2
B_MEM1="$(pss_kib "$SUP") $(pss_kib "$FRONT")"
echo "  PSS after $RELOADS reloads: supervisor $((${B_MEM1% *} / 1024)) MiB, front end $((${B_MEM1#* } / 1024)) MiB"

: >"$WORK/b_new"
for ((k = 1; k <= MKDIRS; k++)); do
  h=new$k.test
  s=$(now_ns)
  new_site "$h" "$(buser $((k % USERS + 1)))"
  if wait_code "$h" "$PORT_BERTH" 200 30; then
    ms=$(ms_since "$s"); echo "$ms" >>"$WORK/b_new"
    echo "  mkdir $h: first 200 after $ms ms"
  else
    echo "  mkdir $h: no 200 within 30 s" >&2
  fi
  s=$(now_ns)
  rm -rf "${ROOT:?}/$h"
  wait_code "$h" "$PORT_BERTH" 421 30 && echo "  rm -rf $h: 421 after $(ms_since "$s") ms"
  sleep 1.2
done

wrk_run "berth, quiet" "$FIRST" "$PORT_BERTH"
wrk_run "berth, SIGHUP every ${EVERY}s" "$FIRST" "$PORT_BERTH" kill -HUP "$SUP"
flap() {  # a host directory made or removed: the watcher's reload
  if [ -d "$ROOT/flap.test" ]; then rm -rf "$ROOT/flap.test"; else new_site flap.test "$(buser 1)"; fi
}
wrk_run "berth, a directory made/removed every ${EVERY}s" "$FIRST" "$PORT_BERTH" flap
rm -rf "$ROOT/flap.test"
B_MEM2="$(pss_kib "$SUP") $(pss_kib "$FRONT")"
echo "  PSS after the loads: supervisor $((${B_MEM2% *} / 1024)) MiB, front end $((${B_MEM2#* } / 1024)) MiB"
grep -c 'serving configuration generation' "$B/out.log" | xargs echo "  generations served:"
stop_pid "${PIDS[0]}"
PIDS=()

# ---- nginx ---------------------------------------------------------------------
echo
echo "== nginx: $SITES server blocks"
N=$WORK/nginx
mkdir -p "$N/sites" "$N/tmp"
block() {  # host owner: as berth serves it, static files and *.php to the owner's pool
  if [ "$NGINX_PHP" = 1 ]; then
    printf 'server { listen 127.0.0.1:%s; server_name %s; root %s/%s/public; index index.php index.html;\n  location ~ [^/]\\.php(/|$) { fastcgi_split_path_info ^(.+?\\.php)(/.*)$; include /etc/nginx/fastcgi_params; fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name; fastcgi_pass unix:%s/php-%s.sock; } }\n' \
      "$PORT_NGINX" "$1" "$ROOT" "$1" "$N" "$2"
  else
    printf 'server { listen 127.0.0.1:%s; server_name %s; root %s/%s/public; }\n' "$PORT_NGINX" "$1" "$ROOT" "$1"
  fi
}
# settle_nginx: until the workers an earlier reload replaced have finished
# (they close their keep-alive connections as they go)
settle_nginx() {
  local i calm=0
  for ((i = 0; i < 600 && calm < 10; i++)); do
    sleep 0.1
    # one worker, not shutting down, for a second
    if [ "$(ps -o args= --ppid "$NGX" | grep -c .)" = 1 ] && ! ps -o args= --ppid "$NGX" | grep -q 'shutting down'; then
      calm=$((calm + 1))
    else
      calm=0
    fi
  done
}
for ((i = 1; i <= SITES; i++)); do
  printf -v h 's%05d.test' "$i"
  u=$(((i - 1) / per + 1))
  printf -v owner 'berth-b%04d' $((u > USERS ? USERS : u))
  block "$h" "$owner"
done >"$N/sites/all.conf"
cat >"$N/nginx.conf" <<CONF
worker_processes 1;
pid $N/nginx.pid;
error_log $N/error.log;
events { worker_connections 4096; }
http {
  access_log $N/access.log;   # as berth writes its tenants' access logs
  keepalive_requests 1000000;  # (1000 by default: wrk counts the closes as errors)
  server_names_hash_max_size 65536;
  server_names_hash_bucket_size 128;
  client_body_temp_path $N/tmp; proxy_temp_path $N/tmp; fastcgi_temp_path $N/tmp;
  uwsgi_temp_path $N/tmp; scgi_temp_path $N/tmp;
  include $N/sites/*.conf;
}
CONF
nginx -t -c "$N/nginx.conf" -q
s=$(now_ns)
launch "$N/out.log" nginx -c "$N/nginx.conf" -g 'daemon off;'
NGX=$LAUNCHED
wait_code "$LAST" "$PORT_NGINX" 200 120 || { echo "nginx: $LAST never answered" >&2; cat "$N/error.log" >&2; exit 1; }
N_START=$(ms_since "$s")
echo "  serving all $SITES sites $N_START ms after start"
sleep 2
nginx_pss() { local p t=0; for p in $NGX $(ps -o pid= --ppid "$NGX"); do t=$((t + $(pss_kib "$p"))); done; echo "$t"; }
N_MEM0=$(nginx_pss)
echo "  PSS after start: master + workers $((N_MEM0 / 1024)) MiB"
# nginx_reload HOST: a block for HOST, `nginx -s reload`, until HOST answers
nginx_reload() {
  local s
  block "$1" "$(buser 1)" >"$N/sites/$1.conf"
  s=$(now_ns)
  nginx -c "$N/nginx.conf" -s reload 2>/dev/null
  wait_code "$1" "$PORT_NGINX" 200 60 && LAST_MS=$(ms_since "$s") || LAST_MS="(none in 60 s)"
}
: >"$WORK/n_reload"
for ((k = 1; k <= RELOADS; k++)); do
  h=reload$k.test
  new_site "$h" "$(buser 1)"
  t0=$(ticks "$NGX")
  nginx_reload "$h"
  t1=$(ticks "$NGX")
  echo "$LAST_MS" >>"$WORK/n_reload"
  echo "  nginx -s reload $k: the new block answers after $LAST_MS ms (master CPU $(((t1 - t0) * 1000 / CLK_TCK)) ms)"
  settle_nginx
done
N_MEM1=$(nginx_pss)
echo "  PSS after $RELOADS reloads (old workers gone): master + workers $((N_MEM1 / 1024)) MiB"
: >"$WORK/n_new"
for ((k = 1; k <= MKDIRS; k++)); do
  h=nnew$k.test
  s=$(now_ns)
  new_site "$h" "$(buser $((k % USERS + 1)))"
  block "$h" "$(buser $((k % USERS + 1)))" >"$N/sites/$h.conf"
  nginx -c "$N/nginx.conf" -s reload 2>/dev/null
  if wait_code "$h" "$PORT_NGINX" 200 60; then
    ms=$(ms_since "$s"); echo "$ms" >>"$WORK/n_new"
    echo "  mkdir $h + block + reload: first 200 after $ms ms"
  fi
  settle_nginx
done
wrk_run "nginx, quiet" "$FIRST" "$PORT_NGINX"
ngx_reload() { nginx -c "$N/nginx.conf" -s reload 2>/dev/null; }
wrk_run "nginx, nginx -s reload every ${EVERY}s" "$FIRST" "$PORT_NGINX" ngx_reload
settle_nginx
N_MEM2=$(nginx_pss)
echo "  PSS after the loads: master + workers $((N_MEM2 / 1024)) MiB"
kill -QUIT "$NGX" 2>/dev/null || true
stop_pid "${PIDS[0]}"
PIDS=()

# ---- summary -------------------------------------------------------------------
echo
echo "== $SITES sites: berth [discovery] against nginx server blocks (medians; ratio berth/nginx, lower is better)"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
br=$(median <"$WORK/b_reload"); nr=$(median <"$WORK/n_reload")
bn=$(median <"$WORK/b_new"); nn=$(median <"$WORK/n_new")
printf '  %-40s berth %7s ms (%s)   nginx %7s ms (%s)   %s\n' "full reload until served" "$br" "$(spread <"$WORK/b_reload")" "$nr" "$(spread <"$WORK/n_reload")" "$(ratio "$br" "$nr")"
printf '  %-40s berth %7s ms (%s)   nginx %7s ms (%s)   %s\n' "new site: mkdir until its first 200" "$bn" "$(spread <"$WORK/b_new")" "$nn" "$(spread <"$WORK/n_new")" "$(ratio "$bn" "$nn")"
printf '  %-40s berth %7s ms            nginx %7s ms            %s\n' "start until the last site answers" "$B_START" "$N_START" "$(ratio "$B_START" "$N_START")"
bm0=$(( (${B_MEM0% *} + ${B_MEM0#* }) / 1024 )); bm1=$(( (${B_MEM1% *} + ${B_MEM1#* }) / 1024 ))
printf '  %-40s berth %4s MiB (front end %s)   nginx %4s MiB   %s\n' "PSS after start" "$bm0" "$((${B_MEM0#* } / 1024))" "$((N_MEM0 / 1024))" "$(ratio "$bm0" "$((N_MEM0 / 1024))")"
printf '  %-40s berth %4s MiB (front end %s)   nginx %4s MiB   %s\n' "PSS after $RELOADS reloads" "$bm1" "$((${B_MEM1#* } / 1024))" "$((N_MEM1 / 1024))" "$(ratio "$bm1" "$((N_MEM1 / 1024))")"
B_RL="berth, SIGHUP every ${EVERY}s"; N_RL="nginx, nginx -s reload every ${EVERY}s"
printf '  %-40s berth %7s ms              nginx %7s ms              %s\n' "p99 latency, a full reload every ${EVERY}s" "$(lat_of "$B_RL" 2)" "$(lat_of "$N_RL" 2)" "$(ratio "$(lat_of "$B_RL" 2)" "$(lat_of "$N_RL" 2)")"
printf '  %-40s berth %7s ms              nginx %7s ms              %s\n' "max latency, a full reload every ${EVERY}s" "$(lat_of "$B_RL" 3)" "$(lat_of "$N_RL" 3)" "$(ratio "$(lat_of "$B_RL" 3)" "$(lat_of "$N_RL" 3)")"
printf '  %-40s berth %7s                 nginx %7s\n' "wrk socket errors + non-2xx then" "$(lat_of "$B_RL" 4)" "$(lat_of "$N_RL" 4)"
echo "  latency on one site (wrk -t1 -c$CONNS -d${DUR}s):"
cat "$WORK/lat"
