#!/usr/bin/env bash
# Limits and metering: what they cost (issue 8's benchmark).
#
#   sudo bash bench/limits.sh        # REPS=3 DUR=8 CONNS=16 TENANTS=1000 by default
#
# 1. Throughput: the PHP hello-world through berth twice in the same run,
#      on    the defaults: cgroups chosen automatically (v1 on a host whose
#            controllers are mounted separately), the built-in limits (memory
#            1GiB, tasks 256, cpu 1.0 per tenant) and meter_interval = "10s"
#      off   [server] cgroups = "none", meter_interval = "off" and
#            [defaults.limits] memory, tasks and cpu = "unlimited"
#    with nginx + php-fpm next to them as the anchor, all three as bench/php.sh
#    sets them up (8 PHP processes each, never recycled, access logs on), pinned
#    to CPU $SERVER_CPU, wrk -t1 -c$CONNS on CPU $CLIENT_CPU, runs alternating.
#    Each run also counts the CPU the server's own processes used (supervisor,
#    front end, PHP; nginx, php-fpm), as requests per server CPU-second, which
#    other users of the machine disturb less than req/s, and how busy CPU
#    $SERVER_CPU was in all (ours and others'). cpu = 1.0 caps the tenant at one
#    core; pinned to one CPU it should never bind, and the tenant's cpu.stat
#    (nr_throttled, throttled_time) over the runs says whether it did. Prints
#    req/s, p99 and req/CPU-s of each, on/off of the medians and of each rep
#    (target: within 3%), and on/nginx. With HALFWAY=1 (the default) three
#    more berths say which part costs what: cgroups + limits without the
#    meter, the meter without cgroups, and "on" whose PHP processes the script
#    moves back to berth's own group in the cpu controller's hierarchy (a
#    diagnostic: they keep their memory, pids, cpuacct and freezer groups).
# 2. Memory with $TENANTS tenants configured and idle: each tenant its own Unix
#    user (berth-b0001.., created once and kept for later runs), one site (a host
#    name and a root with a static file) and one php-cgi app with
#    min_processes = 0 (nothing runs). berth starts with the defaults (cgroups,
#    limits, meter_interval = "10s"); once the last tenant's static file
#    answers it idles $IDLE s, then the RSS, PSS and anonymous memory
#    (smaps_rollup) of the supervisor and of the front end, against 64 MiB
#    together, again after the CPU window and after each of $RELOADS SIGHUP
#    reloads. Also: how long `berth check` takes on the configuration, the
#    start (until the last tenant's file answers), each reload (until the front
#    end serves the next generation) and the SIGTERM stop.
# 3. The supervisor's CPU per meter interval at $TENANTS tenants: utime + stime
#    (/proc/PID/stat, every thread, ended ones too) over $WINDOW s idle, divided
#    by the intervals in it, and per thread (/proc/PID/task/*/stat, and the
#    nanoseconds of schedstat, as stat counts whole ticks) so the meter
#    thread's share shows; a second berth with the same tenants and
#    meter_interval = "off" runs over the same $WINDOW s. Then (NONE_METER=1,
#    the default) a third with cgroups = "none" and metering on, whose meter
#    looks for each tenant's processes in /proc, over $WINDOW s, and over
#    $NONE_WINDOW s more with one idle process per tenant running as the tenant.
# PARTS="1" or PARTS="2" runs one half only (e.g. PARTS=1 REPS=8 DUR=5 for a
# closer look at the on/off ratio).
# Loopback only; every load is bounded; whatever this starts is stopped by its
# pid, and cgroups a berth fails to remove are removed here.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
DUR=${DUR:-8}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-16}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
TENANTS=${TENANTS:-1000}
IDLE=${IDLE:-30}
WINDOW=${WINDOW:-60}
NONE_METER=${NONE_METER:-1}
NONE_WINDOW=${NONE_WINDOW:-30}   # 0: no window with one process per tenant
RELOADS=${RELOADS:-3}
PARTS=${PARTS:-"1 2"}   # 1: throughput; 2: the 1,000 tenants (memory, times, the meter's CPU)
PORT_ON=${PORT_ON:-18241}
PORT_OFF=${PORT_OFF:-18242}
PORT_NGINX=${PORT_NGINX:-18243}
PORT_CG=${PORT_CG:-18247}
PORT_METER=${PORT_METER:-18248}
PORT_NOCPU=${PORT_NOCPU:-18249}
HALFWAY=${HALFWAY:-1}   # also berth with cgroups + limits only, with metering only, and "on"
                        # with its PHP processes moved out of the cpu controller's groups
PORT_MANY=${PORT_MANY:-18244}      # 18244 metered, 18245 meter off, 18246 cgroups none
METER_SECS=10

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
((TENANTS >= 1 && TENANTS <= 9999)) || { echo "TENANTS must be 1..9999" >&2; exit 1; }
((DUR <= 10)) || { echo "DUR must be <= 10" >&2; exit 1; }
for p in $PORT_ON $PORT_OFF $PORT_NGINX $PORT_CG $PORT_METER $PORT_NOCPU $PORT_MANY $((PORT_MANY + 1)) $((PORT_MANY + 2)); do
  if [ -n "$(ss -ltnH "( sport = :$p )")" ]; then echo "port $p is in use" >&2; exit 1; fi
done
need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
command -v php-cgi >/dev/null || need+=(php-cgi)
ls /usr/sbin/php-fpm* >/dev/null 2>&1 || need+=(php-fpm)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
FPM=$(ls /usr/sbin/php-fpm[0-9]* | sort -V | tail -n1)
PHP_CGI=$(command -v php-cgi)
CLK_TCK=$(getconf CLK_TCK)
id berth-bench >/dev/null 2>&1 || useradd --no-create-home --shell /usr/sbin/nologin berth-bench
tname() { printf 'b%04d' "$1"; }
made=0
for i in $(seq "$TENANTS"); do
  u=berth-$(tname "$i")
  if ! id "$u" >/dev/null 2>&1; then
    useradd --no-create-home --shell /usr/sbin/nologin "$u"
    made=$((made + 1))
  fi
done
echo "users berth-b0001..berth-$(tname "$TENANTS"): $made created, $((TENANTS - made)) already there"

cargo build --release --quiet
BERTH=$PWD/target/release/berth

WORK=$(mktemp -d /tmp/berth-bench-limits.XXXXXX)
chmod 755 "$WORK"
PIDS=()       # every server this script started
CGLOGS=()     # logs of berths with cgroups, to find and check their groups
declare -A SUP FRONT START_MS RELOAD_MS STOP_MS   # the 1,000-tenant berths: pids, times

now_ns() { date +%s%N; }
ms_since() { echo $((($(now_ns) - $1) / 1000000)); }
alive() { [ -e "/proc/$1" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
start_time() { awk '{sub(/^.*\) /, ""); print $20}' "/proc/$1/stat" 2>/dev/null; }
tree() {  # pid: it and its descendants, "pid:starttime" each
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { kids[$2] = kids[$2] " " $1 }
    END { q[1] = root; n = 1
      for (i = 1; i <= n; i++) { print q[i]; m = split(kids[q[i]], k, " "); for (j = 1; j <= m; j++) q[++n] = k[j] } }' |
    while read -r p; do s=$(start_time "$p") && [ -n "$s" ] && echo "$p:$s"; done
}
stop_pid() {  # pid[:starttime] [timeout_s]: SIGTERM, then SIGKILL for whatever of its tree is left
  local pid=${1%%:*} t=${2:-10} members e p i
  # a pid of ours that ended long ago may be someone else's by now
  if [ "$1" != "$pid" ] && [ "$(start_time "$pid")" != "${1#*:}" ]; then wait "$pid" 2>/dev/null || true; return 0; fi
  alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
  members=$(tree "$pid")
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < t * 20; i++)); do alive "$pid" || break; sleep 0.05; done
  for e in $members; do
    p=${e%%:*}
    if [ "$(start_time "$p")" = "${e#*:}" ] && alive "$p"; then
      echo "  pid $p still alive, SIGKILL" >&2
      kill -KILL "$p" 2>/dev/null || true
    fi
  done
  wait "$pid" 2>/dev/null || true
}
cg_dirs() {  # a berth's log -> its instance directories, one per hierarchy
  sed -n 's/.*cgroups: v1 (v1 (\(.*\)))$/\1/p; s/.*cgroups: v2 (v2 at \(.*\))$/\1/p' "$1" | head -n1 |
    tr ';' '\n' | sed 's/.* at //'
}
cg_cleanup() {  # log: groups its berth left behind are emptied and removed
  local d n
  for d in $(cg_dirs "$1"); do
    [ -d "$d" ] || continue
    n=$(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u | wc -l)
    echo "  $d was left behind ($n processes); removing it" >&2
    find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u | xargs -r kill -KILL 2>/dev/null || true
    sleep 0.2
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}
# One idle process per tenant, as the tenant (what a host whose tenants each
# run one app process holds in /proc), for the meter without cgroups.
IDLERS=()
start_idlers() {
  local i t
  for i in $(seq "$TENANTS"); do
    t=berth-$(tname "$i")
    setpriv --reuid="$t" --regid="$t" --clear-groups sleep $((WINDOW + 120)) </dev/null >/dev/null 2>&1 &
    IDLERS+=("$!:$(start_time $!)")
  done
}
stop_idlers() {
  local e
  for e in "${IDLERS[@]}"; do
    [ "$(start_time "${e%%:*}")" = "${e#*:}" ] && kill "${e%%:*}" 2>/dev/null || true
  done
  for e in "${IDLERS[@]}"; do wait "${e%%:*}" 2>/dev/null || true; done
  IDLERS=()
}

cleanup() {
  local p l
  stop_idlers
  for p in "${PIDS[@]}"; do stop_pid "$p" 30; done
  for l in "${CGLOGS[@]}"; do cg_cleanup "$l"; done
  rm -rf "$WORK"
}
trap cleanup EXIT
launch() {  # log cmd...: pinned to SERVER_CPU, in the background; pid in LAUNCHED
  local log=$1; shift
  taskset -c "$SERVER_CPU" "$@" >"$log" 2>&1 </dev/null &
  LAUNCHED=$!
  PIDS+=("$LAUNCHED:$(start_time "$LAUNCHED")")
}
front_of() { ps -o pid=,args= --ppid "$1" | awk '$2 == "berth" && $3 == "front" {print $1; exit}'; }
http_code() {  # host port path
  curl -s -o /dev/null --max-time 5 -w '%{http_code}' -H "Host: $1" "http://127.0.0.1:$2$3" || true
}
wait_200() {  # host port path [timeout_s]
  local i
  for ((i = 0; i < ${4:-30} * 20; i++)); do
    [ "$(http_code "$1" "$2" "$3")" = 200 ] && return 0
    sleep 0.05
  done
  return 1
}
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
LOADS=()
note_load() { LOADS+=("$1: $(loadavg)"); echo "load average ($1): $(loadavg)"; }
median() { sort -g | awk '{a[NR] = $1} END {if (!NR) {print "nan"; exit}; print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
spread() { sort -g | awk '{a[NR] = $1} END {printf "%s..%s", a[1], a[NR]}'; }

note_load start

# ---- 1. throughput: limits and metering on versus off ------------------------
if [[ " $PARTS " == *" 1 "* ]]; then
DOC=$WORK/home/public
mkdir -p "$DOC"
printf '<?php echo "Hello, world!\\n";\n' >"$DOC/hello.php"
chown -R berth-bench: "$WORK/home"
chmod -R a+rX "$WORK/home"

berth_php_conf() {  # port dir on|off|cg|meter
  mkdir -p "$2"
  {
    cat <<TOML
[server]
listen = ["127.0.0.1:$1"]
user = "www-data"
state_dir = "$2/state"
log_dir = "$2/log"
TOML
    case $3 in
      on | cg | nocpu) echo 'cgroups = "auto"           # the default' ;;
      *) echo 'cgroups = "none"' ;;
    esac
    case $3 in
      on | meter | nocpu) echo 'meter_interval = "10s"     # the default' ;;
      *) echo 'meter_interval = "off"' ;;
    esac
    case $3 in
      off | meter) printf '\n[defaults.limits]\nmemory = "unlimited"\ntasks = "unlimited"\ncpu = "unlimited"\n' ;;
    esac
    cat <<TOML

[tenant.bench]
user = "berth-bench"
home = "$WORK/home"

[tenant.bench.app.php]
protocol = "fastcgi"
command = ["$PHP_CGI"]
dir = "$DOC"
min_processes = 8
max_processes = 8
max_requests = 0

[[tenant.bench.site]]
hosts = ["bench.test"]
root = "$DOC"

[[tenant.bench.site.route]]
path = "/"
extensions = ["php"]
app = "php"
TOML
  } >"$2/berth.toml"
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
  launch "$d/fpm.log" "$FPM" -F -y "$d/fpm.conf"
  NGINX_ROOTS=$LAUNCHED
  for _ in $(seq 100); do [ -S "$d/fpm.sock" ] && break; sleep 0.1; done
  launch "$d/out.log" nginx -c "$d/nginx.conf"
  NGINX_ROOTS+=" $LAUNCHED"
}

echo
echo "== 1. PHP hello world: berth with limits and metering on, off; nginx + php-fpm"
SETUPS=(on off)
[ "$HALFWAY" = 1 ] && SETUPS+=(cg meter nocpu)
declare -A PORT=([on]=$PORT_ON [off]=$PORT_OFF [cg]=$PORT_CG [meter]=$PORT_METER [nocpu]=$PORT_NOCPU [nginx]=$PORT_NGINX)
declare -A ROOT
for name in "${SETUPS[@]}"; do
  berth_php_conf "${PORT[$name]}" "$WORK/$name" "$name"
  launch "$WORK/$name/out.log" "$BERTH" serve --config "$WORK/$name/berth.toml"
  ROOT[$name]=$LAUNCHED
  CGLOGS+=("$WORK/$name/out.log")
done
ON_PID=${ROOT[on]}
start_nginx_fpm
ROOT[nginx]=$NGINX_ROOTS
SETUPS+=(nginx)
for name in "${SETUPS[@]}"; do
  if ! wait_200 bench.test "${PORT[$name]}" /hello.php 30; then
    echo "$name: port ${PORT[$name]} never answered hello.php" >&2
    cat "$WORK"/*/out.log "$WORK"/*/error.log >&2 2>/dev/null || true
    exit 1
  fi
done
# berth starts min_processes one a second: wait for all 8 of each.
for name in "${SETUPS[@]}"; do
  [ "$name" = nginx ] && continue
  for _ in $(seq 200); do
    [ "$(ps -o comm= --ppid "${ROOT[$name]}" | grep -c '^php-cgi')" -ge 8 ] && break
    sleep 0.1
  done
done
for name in "${SETUPS[@]}"; do
  [ "$name" = nginx ] && continue
  echo "  $name: $(grep -ho 'cgroups: [a-z0-9]*' "$WORK/$name/out.log" | head -n1), metering $(grep -q 'usage metering off' "$WORK/$name/out.log" && echo off || echo "every 10s")"
done
# nocpu: "on", but its PHP processes go back to berth's own group in the cpu
# controller's hierarchy (they stay in their memory, pids, cpuacct and freezer
# groups and keep their limits but cpu): what the cpu controller's groups cost.
if [ -n "${ROOT[nocpu]:-}" ]; then
  cpu_dir=$(cg_dirs "$WORK/nocpu/out.log" | grep '^/sys/fs/cgroup/cpu/\|/cpu,' | head -n1 || true)
  if [ -z "$cpu_dir" ] || [ ! -e "$(dirname "$cpu_dir")/cgroup.procs" ]; then
    echo "  nocpu: no v1 cpu hierarchy found; it runs as on"
  else
    for p in $(ps -o pid=,comm= --ppid "${ROOT[nocpu]}" | awk '$2 ~ /^php-cgi/ {print $1}'); do
      echo "$p" >"$(dirname "$cpu_dir")/cgroup.procs"
    done
    echo "  nocpu: its php-cgi moved to $(dirname "$cpu_dir") in the cpu hierarchy"
  fi
fi
# The "on" tenant's cpu and cpuacct groups, from one of its php-cgi processes.
php_on=$(ps -o pid=,comm= --ppid "$ON_PID" | awk '$2 ~ /^php-cgi/ {print $1; exit}')
cg_cpu=/sys/fs/cgroup/cpu$(awk -F: '$2 == "cpu" || $2 ~ /(^|,)cpu(,|$)/ {print $3; exit}' "/proc/$php_on/cgroup")
cg_cpu=$(dirname "$(dirname "$cg_cpu")")   # .../TENANT.tenant/php.app/N.proc -> .../TENANT.tenant
cg_acct=/sys/fs/cgroup/cpuacct$(awk -F: '$2 == "cpuacct" || $2 ~ /(^|,)cpuacct(,|$)/ {print $3; exit}' "/proc/$php_on/cgroup")
cg_acct=$(dirname "$(dirname "$cg_acct")")
# Without a cpu limit (the default) the tenant is in no cpu group of its own.
if [[ "$cg_cpu" == */*.tenant && -e "$cg_cpu/cpu.cfs_quota_us" ]]; then
  echo "  on tenant's cpu group: $cg_cpu (cfs_quota_us $(cat "$cg_cpu/cpu.cfs_quota_us"), period $(cat "$cg_cpu/cpu.cfs_period_us"))"
else
  echo "  on tenant: no cpu limit, so in no cpu group of its own (docs/limits.md)"
  cg_cpu=/nonexistent
fi
cpu_stat() { awk '{v[$1] = $2} END {print v["nr_periods"] + 0, v["nr_throttled"] + 0, v["throttled_time"] + 0}' "$cg_cpu/cpu.stat" 2>/dev/null || echo 0 0 0; }

# CPU ticks (utime + stime + cutime + cstime) of the process trees under the given pids
tree_ticks() {
  local r e
  for r in "$@"; do
    for e in $(tree "$r"); do cat "/proc/${e%%:*}/stat" 2>/dev/null; echo; done
  done | awk 'NF {sub(/^.*\) /, ""); t += $12 + $13 + $14 + $15} END {print t + 0}'
}
cpu_busy() {  # "busy total" jiffies of CPU $1 from /proc/stat
  awk -v c="cpu$1" '$1 == c {t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t}' /proc/stat
}
run() {  # name port roots...: req/s, p99, and the server's CPU while wrk ran
  local name=$1 port=$2 out rps p99 non2xx t0 t1 b0 a0 b1 a1
  shift 2
  t0=$(tree_ticks "$@")
  read -r b0 a0 < <(cpu_busy "$SERVER_CPU")
  out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" --latency \
    -H 'Host: bench.test' "http://127.0.0.1:$port/hello.php")
  read -r b1 a1 < <(cpu_busy "$SERVER_CPU")
  t1=$(tree_ticks "$@")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {v = $2; if (v ~ /us$/) {sub(/us/, "", v); v /= 1000} else if (v ~ /ms$/) {sub(/ms/, "", v)} else if (v ~ /s$/) {sub(/s/, "", v); v *= 1000}; print v}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  # requests per CPU-second of the server's own processes (front end, PHP,
  # supervisor), which other users of the machine disturb far less than req/s
  local cpu_s per_cpu share busy
  cpu_s=$(awk -v d=$((t1 - t0)) -v t="$CLK_TCK" 'BEGIN {print d / t}')
  per_cpu=$(awk -v r="$(awk '/requests in/ {print $1}' <<<"$out")" -v c="$cpu_s" 'BEGIN {printf "%.0f", (c > 0 ? r / c : 0)}')
  share=$(awk -v c="$cpu_s" -v d="$DUR" 'BEGIN {printf "%.0f", 100 * c / d}')
  busy=$(awk -v b=$((b1 - b0)) -v a=$((a1 - a0)) 'BEGIN {printf "%.0f", (a > 0 ? 100 * b / a : 0)}')
  echo "$name $rep $rps $p99 ${non2xx:-0} $per_cpu $share $busy" >>"$WORK/results"
  printf '  %-6s %6.0f req/s  p99 %8.2f ms  %7.0f req per server CPU-s  server CPU %3s%%  CPU%s busy %3s%%%s\n' \
    "$name" "$rps" "$p99" "$per_cpu" "$share" "$SERVER_CPU" "$busy" "$([ -n "$non2xx" ] && echo "  non-2xx: $non2xx")"
}
echo "warm-up (${WARMUP}s each)"
for name in "${SETUPS[@]}"; do
  taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" -H 'Host: bench.test' "http://127.0.0.1:${PORT[$name]}/hello.php" >/dev/null
done
note_load "throughput"
: >"$WORK/results"
read -r per0 thr0 thrt0 < <(cpu_stat)
order=("${SETUPS[@]}")
for rep in $(seq "$REPS"); do
  echo "rep $rep/$REPS  (load average $(loadavg))"
  for name in "${order[@]}"; do
    if [ "$name" = on ]; then
      a=$(cat "$cg_acct/cpuacct.usage")
      run on "$PORT_ON" "$ON_PID"
      echo "$rep $(($(cat "$cg_acct/cpuacct.usage") - a))" >>"$WORK/on_cpu"
    else
      # shellcheck disable=SC2086 # nginx has two roots
      run "$name" "${PORT[$name]}" ${ROOT[$name]}
    fi
  done
  order=("${order[@]:1}" "${order[0]}")
done
read -r per1 thr1 thrt1 < <(cpu_stat)
THROTTLE="$((per1 - per0)) periods, $((thr1 - thr0)) throttled, $(((thrt1 - thrt0) / 1000000)) ms throttled"
# The on tenant's CPU while wrk loaded it, as a share of one core.
TENANT_CPU=$(awk -v d="$DUR" '{t += $2; n++} END {printf "%.0f%%", 100 * t / (n * d * 1e9)}' "$WORK/on_cpu")
echo "  on tenant's cpu.stat over all runs: $THROTTLE; its php-cgi used $TENANT_CPU of a core during its own runs"
note_load "after throughput"
for p in "${PIDS[@]}"; do stop_pid "$p" 20; done
PIDS=()
for name in "${SETUPS[@]}"; do [ "$name" = nginx ] || cg_cleanup "$WORK/$name/out.log"; done

fi

# ---- 2 and 3. 1,000 tenants: memory, start, reload, the meter's CPU -----------
if [[ " $PARTS " == *" 2 "* ]]; then
echo
echo "== 2/3. $TENANTS tenants, configured and idle"
MANY=$WORK/many
s=$(now_ns)
for i in $(seq "$TENANTS"); do
  t=$(tname "$i")
  mkdir -p "$MANY/$t/public"
  echo "$t" >"$MANY/$t/public/index.html"
  printf '<?php echo "Hello from %s\\n";\n' "$t" >"$MANY/$t/public/hello.php"
  chown -R "berth-$t:" "$MANY/$t"
done
chmod -R a+rX "$MANY"
echo "  $TENANTS homes made in $(ms_since "$s") ms"

many_conf() {  # port dir meter(10s|off) cgroups(auto|none)
  mkdir -p "$2"
  {
    cat <<TOML
[server]
listen = ["127.0.0.1:$1"]
user = "www-data"
state_dir = "$2/state"
log_dir = "$2/log"
meter_interval = "$3"
cgroups = "$4"
TOML
    for i in $(seq "$TENANTS"); do
      t=$(tname "$i")
      cat <<TOML

[tenant.$t]
user = "berth-$t"
home = "$MANY/$t"

[tenant.$t.app.php]
protocol = "fastcgi"
command = ["$PHP_CGI"]
dir = "$MANY/$t/public"
min_processes = 0

[[tenant.$t.site]]
hosts = ["$t.test"]
root = "$MANY/$t/public"

[[tenant.$t.site.route]]
path = "/"
extensions = ["php"]
app = "php"
TOML
    done
  } >"$2/berth.toml"
}

LAST=$(tname "$TENANTS")
start_many() {  # name port meter cgroups
  local d=$WORK/$1 s
  many_conf "$2" "$d" "$3" "$4"
  s=$(now_ns)
  launch "$d/out.log" "$BERTH" serve --config "$d/berth.toml"
  SUP[$1]=$LAUNCHED
  [ "$4" = auto ] && CGLOGS+=("$d/out.log")
  if ! wait_200 "$LAST.test" "$2" /index.html 120; then
    echo "$1: $LAST.test never answered" >&2
    tail -n 20 "$d/out.log" >&2
    exit 1
  fi
  START_MS[$1]=$(ms_since "$s")
  FRONT[$1]=$(front_of "$LAUNCHED")
  # The first tenant and a PHP script (started on demand, then idle) too.
  [ "$(http_code b0001.test "$2" /index.html)" = 200 ] || { echo "$1: b0001.test does not answer" >&2; exit 1; }
  echo "  $1 (meter_interval = \"$3\", cgroups = \"$4\"): serving $TENANTS tenants $((START_MS[$1])) ms after start; supervisor $LAUNCHED, front end ${FRONT[$1]}; $(grep -ho 'cgroups: [a-z0-9]*' "$d/out.log" | head -n1)"
}

# mem NAME WHEN: RSS, PSS, anonymous (KiB), fds and threads of the supervisor
# and of the front end, a line each in $WORK/mem
mem() {
  local p r
  for p in "supervisor:${SUP[$1]}" "front:${FRONT[$1]}"; do
    r=$(awk '/^Rss:/ {r = $2} /^Pss:/ {s = $2} /^Anonymous:/ {a = $2} END {print r + 0, s + 0, a + 0}' "/proc/${p#*:}/smaps_rollup")
    echo "$1 $2 ${p%%:*} $r $(ls "/proc/${p#*:}/fd" | wc -l) $(ls "/proc/${p#*:}/task" | wc -l)" >>"$WORK/mem"
  done
}
show_mem() {  # name when
  awk -v n="$1" -v w="$2" '$1 == n && $2 == w {
      printf "  %-10s %-9s RSS %6.1f MiB  PSS %6.1f MiB  anon %6.1f MiB  (%d fds, %d threads)\n", $3, w, $4 / 1024, $5 / 1024, $6 / 1024, $7, $8
      r += $4; p += $5 }
    END { printf "  %-10s %-9s RSS %6.1f MiB  PSS %6.1f MiB  (target: under 64 MiB together)\n", "together", w, r / 1024, p / 1024 }' "$WORK/mem"
}

ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "$1" 2>/dev/null; }
# snap NAME FILE: the supervisor's threads, "tid ticks ns comm" each (ticks:
# utime + stime from stat, ns: time on a CPU from schedstat), then "total"
# (the process's utime + stime, which keeps what ended threads used) and
# "front" (the front end's)
snap() {
  local pid=${SUP[$1]} t
  {
    for t in /proc/"$pid"/task/*; do
      [ -r "$t/stat" ] || continue
      printf '%s %s %s %s\n' "${t##*/}" "$(ticks "$t/stat")" \
        "$(awk '{print $1}' "$t/schedstat" 2>/dev/null)" "$(tr ' ' '_' <"$t/comm" 2>/dev/null)"
    done
    echo "total $(ticks "/proc/$pid/stat") 0 -"
    echo "sched 0 $(cat /proc/"$pid"/task/*/schedstat 2>/dev/null | awk '{t += $1} END {printf "%.0f", t}') -"
    echo "front $(ticks "/proc/${FRONT[$1]}/stat") 0 -"
  } >"$2"
}
# window "NAME..." SECONDS: snapshots at the start, every METER_SECS and at the end
window() {
  local names=$1 secs=$2 n k
  for n in $names; do snap "$n" "$WORK/cpu-$n-0"; done
  for ((k = 1; k * METER_SECS <= secs; k++)); do
    sleep "$METER_SECS"
    for n in $names; do snap "$n" "$WORK/cpu-$n-$k"; done
  done
}
# cpu_report NAME SECONDS LABEL: ms of CPU per interval, in all and per
# thread; a line "NAME|LABEL|per interval (stat)|per interval (schedstat)|meter
# thread|writer thread|front end|slices" in $WORK/cpu. The slices (one per
# METER_SECS) are the sum of the threads' schedstat: stat counts whole ticks.
cpu_report() {
  local n=$1 secs=$2 label=$3 k last=$(($2 / METER_SECS)) slices=""
  for ((k = 1; k <= last; k++)); do
    slices+="$(awk 'FNR == NR {if ($1 == "sched") a = $3; next} $1 == "sched" {printf "%.1f", ($3 - a) / 1e6}' \
      "$WORK/cpu-$n-$((k - 1))" "$WORK/cpu-$n-$k") "
  done
  awk -v t="$CLK_TCK" -v per="$(awk -v s="$secs" -v m="$METER_SECS" 'BEGIN {print s / m}')" -v n="$n" \
    -v label="$label" -v secs="$secs" -v m="$METER_SECS" -v slices="$slices" -v out="$WORK/cpu" '
    FNR == NR { ticks0[$1] = $2; ns0[$1] = $3; next }
    $1 == "total" { total = ($2 - ticks0["total"]) * 1000 / t; next }
    $1 == "front" { front = ($2 - ticks0["front"]) * 1000 / t; next }
    $1 == "sched" { sched = ($3 - ns0["sched"]) / 1e6; next }
    { th[$4] += ($2 - ticks0[$1]) * 1000 / t; thn[$4] += ($3 - ns0[$1]) / 1e6; names[$4] = 1 }
    END {
      printf "  %s (%s): supervisor %.0f ms of CPU in %d s (stat; %.1f ms by its threads'"'"' schedstat) = %.1f ms per %d s interval (per %d s slice: %s ms); front end %.0f ms\n", n, label, total, secs, sched, total / per, m, m, slices, front
      for (k in names) printf "    thread %-14s %6.0f ms (stat) %8.1f ms (schedstat) = %6.1f ms per interval\n", k, th[k], thn[k], thn[k] / per
      printf "%s|%s|%.1f|%.1f|%.1f|%.1f|%.1f|%s\n", n, label, total / per, sched / per, thn["meter"] / per, thn["usage-writer"] / per, front / per, slices >> out }' \
    "$WORK/cpu-$n-0" "$WORK/cpu-$n-$last"
}

# reload NAME PORT: SIGHUP, until the front end serves the next generation
# (from the log); its time goes to RELOAD_MS[NAME] (one figure per reload)
reload() {
  local d=$WORK/$1 s i t0 t1 gen ms
  gen=$(($(grep -c 'serving configuration generation' "$d/out.log") + 1))
  t0=$(ticks "/proc/${SUP[$1]}/stat")
  s=$(now_ns)
  kill -HUP "${SUP[$1]}"
  for ((i = 0; i < 1200; i++)); do
    grep -q "serving configuration generation $gen\$" "$d/out.log" && break
    sleep 0.05
  done
  ms=$(ms_since "$s")
  grep -q "serving configuration generation $gen\$" "$d/out.log" || ms="(none after 60 s)"
  t1=$(ticks "/proc/${SUP[$1]}/stat")
  RELOAD_MS[$1]="${RELOAD_MS[$1]:-}${RELOAD_MS[$1]:+ }$ms"
  echo "  $1: SIGHUP reload: front end serving generation $gen after $ms ms; supervisor CPU $(((t1 - t0) * 1000 / CLK_TCK)) ms"
  [ "$(http_code "$LAST.test" "$2" /index.html)" = 200 ] || echo "  $1: $LAST.test does not answer after the reload" >&2
}

note_load "before $TENANTS tenants"
many_conf "$PORT_MANY" "$WORK/metered" 10s auto
s=$(now_ns)
"$BERTH" check --config "$WORK/metered/berth.toml" >/dev/null
CHECK_MS=$(ms_since "$s")
echo "  berth check of the $TENANTS-tenant configuration: $CHECK_MS ms (what every start and reload reads)"
start_many metered "$PORT_MANY" 10s auto
# PHP once in one tenant (started on demand; min_processes = 0 lets it idle out later)
echo "  b0001.test/hello.php: $(curl -s --max-time 10 -H 'Host: b0001.test' "http://127.0.0.1:$PORT_MANY/hello.php")"
echo "  idle ${IDLE}s"
sleep "$IDLE"
mem metered "idle${IDLE}s"
show_mem metered "idle${IDLE}s"
note_load "memory"

start_many nometer $((PORT_MANY + 1)) off auto
sleep 2
mem nometer "idle2s"
echo "  CPU window: ${WINDOW}s, metered and nometer side by side"
note_load "cpu window"
window "metered nometer" "$WINDOW"
cpu_report metered "$WINDOW" "cgroups v1, meter 10s"
cpu_report nometer "$WINDOW" "cgroups v1, meter off"
note_load "after cpu window"
USAGE_ROWS=$("$BERTH" usage --config "$WORK/metered/berth.toml" --since -1h --format csv 2>/dev/null | tail -n +2 | wc -l || true)
echo "  berth usage on the metered berth's database: $USAGE_ROWS rows"
mem metered "+${WINDOW}s"
mem nometer "+${WINDOW}s"
for k in $(seq "$RELOADS"); do
  reload metered "$PORT_MANY"
  reload nometer $((PORT_MANY + 1))
  sleep 1
  mem metered "reload$k"
  mem nometer "reload$k"
done
show_mem metered "reload$RELOADS"

if [ "$NONE_METER" = 1 ]; then
  start_many none $((PORT_MANY + 2)) 10s none
  sleep 2
  mem none "idle2s"
  NPROCS=$(find /proc -maxdepth 1 -name '[0-9]*' | wc -l)
  echo "  CPU window: ${WINDOW}s, cgroups = none with metering on (the meter reads /proc per tenant; $NPROCS processes)"
  note_load "none window"
  window "none" "$WINDOW"
  cpu_report none "$WINDOW" "cgroups none, meter 10s"
  echo "none $NPROCS" >>"$WORK/nprocs"
  mem none "+${WINDOW}s"
  if ((NONE_WINDOW > 0)); then
    start_idlers
    sleep 2
    NPROCS=$(find /proc -maxdepth 1 -name '[0-9]*' | wc -l)
    echo "  CPU window: ${NONE_WINDOW}s, the same with one idle process per tenant ($NPROCS processes)"
    note_load "none + processes window"
    window "none" "$NONE_WINDOW"
    cpu_report none "$NONE_WINDOW" "+$TENANTS processes"
    echo "none $NPROCS" >>"$WORK/nprocs"
    stop_idlers
  fi
  reload none $((PORT_MANY + 2))
fi

for n in metered nometer none; do
  [ -n "${SUP[$n]:-}" ] || continue
  s=$(now_ns)
  stop_pid "${SUP[$n]}" 60
  STOP_MS[$n]=$(ms_since "$s")
  echo "  $n: stopped (SIGTERM) in ${STOP_MS[$n]} ms"
  cg_cleanup "$WORK/$n/out.log"
done
fi
note_load end

# ---- summary -------------------------------------------------------------------
echo
echo "== Summary"
if [ -s "$WORK/results" ]; then
echo "PHP hello world, wrk -t1 -c$CONNS -d${DUR}s, $REPS alternating reps; servers + PHP on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU"
printf '%-43s %8s %15s %7s %13s %9s %15s %7s\n' setup "req/s" "(min..max)" "p99 ms" "(min..max)" "req/CPU-s" "(min..max)" "CPU0 %"
for name in "${SETUPS[@]}"; do
  case $name in
    on) label="berth on: cgroups v1 + limits, meter 10s" ;;
    off) label="berth off: no cgroups, unlimited, no meter" ;;
    cg) label="berth: cgroups v1 + limits, no meter" ;;
    nocpu) label="berth on, PHP out of the cpu groups" ;;
    meter) label="berth: no cgroups, unlimited, meter 10s" ;;
    nginx) label="nginx + php-fpm (8)" ;;
  esac
  col() { awk -v n=$name -v c="$1" '$1 == n {print $c}' "$WORK/results"; }
  printf '%-43s %8.0f %15s %7.2f %13s %9.0f %15s %7s\n' "$label" \
    "$(col 3 | median)" "($(col 3 | awk '{printf "%.0f\n", $1}' | spread))" \
    "$(col 4 | median)" "($(col 4 | spread))" \
    "$(col 6 | median)" "($(col 6 | spread))" "$(col 8 | median)"
done
ratio() {  # column what: NAME/off of the medians and of each rep, on/nginx
  local x on off ngx rr
  off=$(awk -v c="$1" '$1 == "off" {print $c}' "$WORK/results" | median)
  ngx=$(awk -v c="$1" '$1 == "nginx" {print $c}' "$WORK/results" | median)
  for x in on cg meter nocpu; do
    grep -q "^$x " "$WORK/results" || continue
    on=$(awk -v n=$x -v c="$1" '$1 == n {print $c}' "$WORK/results" | median)
    rr=$(awk -v n=$x -v c="$1" '{v[$1, $2] = $c} END {for (r = 1; ((n, r) in v); r++) printf "%.3f\n", v[n, r] / v["off", r]}' "$WORK/results")
    awk -v x="$x" -v a="$on" -v b="$off" -v n="$ngx" -v rr="$(echo "$rr" | tr '\n' ' ')" -v sp="$(echo "$rr" | spread)" -v what="$2" 'BEGIN {
      printf "%-10s berth-%s / berth-off = %.3f (%+.1f%%; per rep: %s= %s)", what, x, a / b, 100 * (a / b - 1), rr, sp
      if (x == "on") printf "   berth-on / nginx+php-fpm = %.2fx", a / n
      printf "\n" }'
  done
}
ratio 3 "req/s:"
ratio 6 "req/CPU-s:"
echo "(target: on within 3% of off)"
echo "on tenant: $THROTTLE; its php-cgi used $TENANT_CPU of a core under load"
echo
fi
if [ -n "${SUP[metered]:-}" ]; then
echo "$TENANTS tenants, configured and idle (one site and one php app each, min_processes = 0); berth check of the configuration: $CHECK_MS ms"
for n in metered nometer none; do
  [ -n "${SUP[$n]:-}" ] || continue
  case $n in
    metered) label="cgroups v1, meter 10s (defaults)" ;;
    nometer) label="cgroups v1, meter off" ;;
    none) label="cgroups none, meter 10s" ;;
  esac
  printf '  %-34s start %5s ms   SIGHUP reload %-16s ms   SIGTERM stop %5s ms\n' "$label" "${START_MS[$n]}" "${RELOAD_MS[$n]:-}" "${STOP_MS[$n]:-}"
done
echo "memory (MiB; idle${IDLE}s: the defaults alone, idle $IDLE s; +${WINDOW}s: after the CPU window; reloadN: after the Nth SIGHUP)"
printf '  %-8s %-10s %8s %8s %8s %8s %8s %8s %8s\n' berth when "sup RSS" "sup PSS" "sup anon" "front RSS" "fr PSS" "fr anon" "RSS sum"
awk '{k = $1 " " $2; if (!(k in seen)) {seen[k] = 1; ord[++n] = k}
    if ($3 == "supervisor") {sr[k] = $4; sp[k] = $5; sa[k] = $6} else {fr[k] = $4; fp[k] = $5; fa[k] = $6}}
  END {for (i = 1; i <= n; i++) {k = ord[i]; split(k, kk, " ")
    printf "  %-8s %-10s %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f%s\n", kk[1], kk[2], sr[k] / 1024, sp[k] / 1024, sa[k] / 1024,
      fr[k] / 1024, fp[k] / 1024, fa[k] / 1024, (sr[k] + fr[k]) / 1024, (sr[k] + fr[k] > 65536) ? "  > 64 MiB" : "  < 64 MiB"}}' "$WORK/mem"
echo "supervisor CPU per ${METER_SECS} s interval at $TENANTS tenants, idle (utime + stime of all its threads; meter and writer threads from schedstat)"
printf '  %-8s %-24s %11s %11s %10s %10s %10s  %s\n' berth config "ms (stat)" "ms (sched)" "meter thr" "writer thr" "front end" "per-slice ms (sched)"
awk -F'|' '{printf "  %-8s %-24s %11.1f %11.1f %10.1f %10.1f %10.1f  %s\n", $1, $2, $3, $4, $5, $6, $7, $8}' "$WORK/cpu"
if [ -s "$WORK/nprocs" ]; then
  # without cgroups the meter goes through /proc once per tenant
  paste -d'|' <(grep '^none|' "$WORK/cpu") "$WORK/nprocs" | awk -F'|' -v t="$TENANTS" '{
    printf "  cgroups none, %5d processes in /proc: the meter thread %.2f us per tenant per process\n", substr($9, 6), 1000 * $5 / (t * substr($9, 6)) }'
fi
fi
echo "load average: ${LOADS[*]}"
