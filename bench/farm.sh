#!/usr/bin/env bash
# A farm of berth nodes on this machine (issue 11's benchmark): a FastCGI app on
# one node against three, and what one proxy hop between nodes costs.
#
#   sudo bash bench/farm.sh                  # REPS=3 DUR=8 CONNS=18 HOP_REPS=10 by default
#   sudo SINGLE_ONLY=1 bash bench/farm.sh    # one node only (a berth without [cluster])
#
# The app is the PHP hello world over FastCGI as bench/php.sh runs it (8 php-cgi
# processes per node, started at once, never recycled), printing the address of
# the node that served it ($_SERVER["SERVER_ADDR"]): that is how the script sees
# where a request went. The nodes a, b and c are three berths on 127.0.0.1, .2
# and .3, each with its own state and log directories and the same tenant and
# sites; their configurations differ only in their addresses and names. [cluster]:
# gossip on UDP $GOSSIP_PORT of each address, the other two as seeds, one secret
# (32 random bytes, mode 0600), interval 1s, and the default balance
# ["byAge 6", "byLoad 0.5", "byInFlight"] for bench.test. Each node also has a
# site to-X.test (X = a, b, c) whose route pins its requests to node X
# (balance = ["byHostname ^X$"]); the farm is taken as formed once every node
# sends to-X.test to X, for every X.
#
# 1. Throughput, 1 node against 3 (wrk -t1 -c$CONNS -d${DUR}s, bench.test):
#      1 node         a berth without [cluster] (127.0.0.1:$SOLO_PORT)
#      3 nodes via a  wrk at a only: a serves some requests and proxies the rest
#                     to b and c, as the balance places them
#      3 nodes, all   a third of the connections at each of a, b and c (as DNS
#                     round robin spreads clients); p99 is the worst of the three
#    Every berth and its PHP processes are pinned to CPU $SERVER_CPU (children
#    inherit the affinity), wrk to CPU $CLIENT_CPU. So the three nodes share the
#    one CPU the single node has: "3 nodes / 1 node" is what placement and the
#    hop between nodes cost here (1.00 would be free; on three machines the three
#    have three times the CPU). Also printed: the share of the PHP work each node
#    did (php-cgi CPU time per node) and berth's own CPU per request (every
#    process of the berths but php-cgi). Runs alternate, medians of $REPS.
# 2. One hop: the extra latency of one proxy hop against serving locally, one
#    request at a time (to-b.test, which b serves itself), timed one by one by
#    curl on one kept-alive connection ($HOP_REQUESTS requests a run; wrk is
#    not used here: it "corrects" its latencies for coordinated omission,
#    adding made-up samples behind every slow one, which at one connection
#    makes up much of the p99):
#      b direct       wrk at b
#      berth a -> b   wrk at a, which proxies every request to b (the signed
#                     mark, pooled keep-alive connections)
#      haproxy -> b   haproxy in front of b (mode http, http-reuse always, one
#                     thread, access log on like berth's)
#      nginx -> b     nginx proxy_pass in front of b (upstream keepalive,
#                     HTTP/1.1, access log on)
#    $HOP_REPS rounds of one run each, alternating. A hop's cost is tens of
#    microseconds and this machine's latency drifts by more than that from one
#    minute to the next (other users of the CPUs, idle states), so each
#    round's figures are taken against b direct in the same round, and the
#    hop is the median of those differences: p50 and p99 of each setup, the
#    extra of each hop over b direct, and berth's hop against haproxy's and
#    nginx's. Target: berth's hop under 0.3 ms at p50.
# With SINGLE_ONLY=1, only the single node: its throughput, and the hop part
# with haproxy and nginx in front of it (no berth hop).
# Traffic stays on loopback; every load is bounded by -d.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
DUR=${DUR:-8}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-18}
HOP_REPS=${HOP_REPS:-10}
HOP_REQUESTS=${HOP_REQUESTS:-2000}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
PORT=${PORT:-18241}                 # a, b, c: each on its own address
ADMIN_PORT=${ADMIN_PORT:-18242}
GOSSIP_PORT=${GOSSIP_PORT:-18243}   # UDP
SOLO_PORT=${SOLO_PORT:-18244}       # the single node, on 127.0.0.1
HAPROXY_PORT=${HAPROXY_PORT:-18245}
NGINX_PORT=${NGINX_PORT:-18246}
SINGLE_ONLY=${SINGLE_ONLY:-0}
FORM_TIMEOUT=${FORM_TIMEOUT:-60}    # seconds for the farm to form

[ "$(id -u)" = 0 ] || { echo "run as root (berth and the proxies drop to their users)" >&2; exit 1; }
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v php-cgi >/dev/null || need+=(php-cgi)
command -v haproxy >/dev/null || need+=(haproxy)
command -v nginx >/dev/null || need+=(nginx-light)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
PHP_CGI=$(command -v php-cgi)
id berth-bench >/dev/null 2>&1 || useradd --no-create-home --shell /usr/sbin/nologin berth-bench
HAPROXY_USER=haproxy
id "$HAPROXY_USER" >/dev/null 2>&1 || HAPROXY_USER=www-data

cargo build --release --quiet
BERTH=$PWD/target/release/berth

WORK=$(mktemp -d /tmp/berth-bench-farm.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

DOC=$WORK/home/public
mkdir -p "$DOC"
printf '<?php echo "Hello from ", $_SERVER["SERVER_ADDR"], "\\n";\n' >"$DOC/hello.php"
chown -R berth-bench: "$WORK/home"
chmod -R go-w,a+rX "$WORK/home"

NAMES=(a b c)
declare -A IP=([a]=127.0.0.1 [b]=127.0.0.2 [c]=127.0.0.3)
(umask 077 && head -c 32 /dev/urandom >"$WORK/cluster.key")
chmod 600 "$WORK/cluster.key"

# berth_conf DIR IP PORT [NAME]: a node's configuration; with NAME, a farm node
berth_conf() {
  local d=$1 ip=$2 port=$3 name=${4:-} x seeds=""
  mkdir -p "$d"
  {
    cat <<TOML
[server]
listen = ["$ip:$port"]
user = "www-data"
state_dir = "$d/state"
log_dir = "$d/log"
control_socket = "$d/control.sock"
TOML
    if [ -n "$name" ]; then
      for x in "${NAMES[@]}"; do
        [ "$x" = "$name" ] || seeds+="${seeds:+, }\"${IP[$x]}:$GOSSIP_PORT\""
      done
      cat <<TOML
admin_listen = "$ip:$ADMIN_PORT"

[cluster]
name = "$name"
bind = "$ip:$GOSSIP_PORT"
seeds = [$seeds]
secret_file = "$WORK/cluster.key"
interval = "1s"
balance = ["byAge 6", "byLoad 0.5", "byInFlight"]
TOML
    fi
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
max_requests = 0      # never recycled, as php-fpm's pm.max_requests = 0 (its default)

[[tenant.bench.site]]
hosts = ["bench.test"]
root = "$DOC"

[[tenant.bench.site.route]]
path = "/"
extensions = ["php"]
app = "php"
TOML
    if [ -n "$name" ]; then
      for x in "${NAMES[@]}"; do
        cat <<TOML

[[tenant.bench.site]]
hosts = ["to-$x.test"]
root = "$DOC"

[[tenant.bench.site.route]]
path = "/"
extensions = ["php"]
app = "php"
balance = ["byHostname ^$x\$"]   # every node sends these to $x
TOML
      done
    fi
  } >"$d/berth.toml"
}

start_berth() {  # DIR: starts it pinned, its pid in PIDS and LAST
  taskset -c "$SERVER_CPU" "$BERTH" serve --config "$1/berth.toml" >"$1/out.log" 2>&1 &
  LAST=$!
  PIDS+=("$LAST")
}

# served IP PORT HOST: the address the answer names ("" when none)
served() {
  curl -s --max-time 5 -H "Host: $3" "http://$1:$2/hello.php" 2>/dev/null | sed -n 's/^Hello from //p' || true
}

# wait_served IP PORT HOST WANT SECONDS: until the answer names WANT
wait_served() {
  local got="" i
  for i in $(seq $(($5 * 10))); do
    got=$(served "$1" "$2" "$3")
    [ "$got" = "$4" ] && return 0
    sleep 0.1
  done
  echo "$1:$2 (Host $3) was served by '${got:-nothing}' after $5 s, not by $4" >&2
  return 1
}

show_logs() {
  tail -n 20 "$WORK"/*/out.log "$WORK"/*/log/error.log "$WORK"/*/log/bench/error.log >&2 2>/dev/null || true
}

# ---- the nodes --------------------------------------------------------------
berth_conf "$WORK/solo" 127.0.0.1 "$SOLO_PORT"
declare -A PID=()
if [ "$SINGLE_ONLY" != 1 ]; then
  for x in "${NAMES[@]}"; do
    berth_conf "$WORK/$x" "${IP[$x]}" "$PORT" "$x"
    if ! "$BERTH" check --config "$WORK/$x/berth.toml" >"$WORK/check.out" 2>&1; then
      echo "berth check refuses node $x's configuration:" >&2
      cat "$WORK/check.out" >&2
      echo "(SINGLE_ONLY=1 runs the single node alone)" >&2
      exit 1
    fi
  done
fi
start_berth "$WORK/solo"
SOLO_PID=$LAST
if [ "$SINGLE_ONLY" != 1 ]; then
  for x in "${NAMES[@]}"; do
    start_berth "$WORK/$x"
    PID[$x]=$LAST
  done
fi

wait_served 127.0.0.1 "$SOLO_PORT" bench.test 127.0.0.1 30 || { show_logs; exit 1; }
if [ "$SINGLE_ONLY" != 1 ]; then
  s=$(date +%s%N)
  for x in "${NAMES[@]}"; do
    for y in "${NAMES[@]}"; do
      wait_served "${IP[$x]}" "$PORT" "to-$y.test" "${IP[$y]}" "$FORM_TIMEOUT" || { show_logs; exit 1; }
    done
  done
  e=$(date +%s%N)
  echo "the farm formed: every node sends to-X.test to X (after $(((e - s) / 1000000)) ms)"
fi

# ---- the proxies in front of the hop's target ----------------------------------
if [ "$SINGLE_ONLY" = 1 ]; then
  HOP_ADDR=127.0.0.1:$SOLO_PORT HOP_HOST=bench.test HOP_IP=127.0.0.1 HOP_NAME="1 node"
else
  HOP_ADDR=127.0.0.2:$PORT HOP_HOST=to-b.test HOP_IP=127.0.0.2 HOP_NAME="b"
fi
mkdir -p "$WORK/haproxy" "$WORK/nginx"
cat >"$WORK/haproxy/haproxy.cfg" <<HAPROXY
global
  maxconn 4096
  nbthread 1
  user $HAPROXY_USER
  group $HAPROXY_USER
  log stdout format raw local0
defaults
  mode http
  log global
  option httplog
  option forwardfor
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 75s
frontend fe
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend be
backend be
  http-reuse always
  server node $HOP_ADDR
HAPROXY
cat >"$WORK/nginx/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
user www-data;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log $WORK/nginx/access.log combined;
  keepalive_requests 100000;
  upstream node {
    server $HOP_ADDR;
    keepalive 16;
    keepalive_requests 100000;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://node;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
NGINX
taskset -c "$SERVER_CPU" haproxy -db -f "$WORK/haproxy/haproxy.cfg" >"$WORK/haproxy/out.log" 2>&1 &
PIDS+=($!)
taskset -c "$SERVER_CPU" nginx -c "$WORK/nginx/nginx.conf" >"$WORK/nginx/out.log" 2>&1 &
PIDS+=($!)
for port in $HAPROXY_PORT $NGINX_PORT; do
  wait_served 127.0.0.1 "$port" "$HOP_HOST" "$HOP_IP" 20 || {
    tail -n 20 "$WORK/haproxy/out.log" "$WORK/nginx/error.log" >&2 2>/dev/null || true
    exit 1
  }
done

# ---- measuring ------------------------------------------------------------------
HZ=$(getconf CLK_TCK)
# ticks ROOT php|berth: user+system jiffies of ROOT's process tree so far, of
# the php-cgi processes only (php) or of every other one (berth)
ticks() {
  ps -e -o pid=,ppid=,comm= | awk -v root="$1" -v want="$2" '
    { up[$1] = $2; comm[$1] = $3 }
    END { for (p in up) { q = p; while (q != root && q in up && q > 1) q = up[q]
          if (q == root && ((want == "php") == (comm[p] ~ /^php-cgi/))) print p } }' |
    while read -r p; do sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}'; done |
    awk '{s += $1} END {print s + 0}'
}
# per_req TICKS REQUESTS: microseconds of CPU per request
per_req() { awk -v t="$1" -v hz="$HZ" -v n="$2" 'BEGIN {printf "%.0f", (n > 0) ? 1e6 * t / hz / n : 0}'; }
# ms: wrk's "412.00us", "1.20ms" or "1.01s" in milliseconds
ms() { awk '{v = $1; if (v ~ /us$/) {sub(/us/, "", v); v /= 1000} else if (v ~ /ms$/) {sub(/ms/, "", v)} else if (v ~ /s$/) {sub(/s/, "", v); v *= 1000}; print v}'; }
pct() { awk -v p="$1" '$1 == p {print $2}' "$2" | ms; }
median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# throughput SETUP: one run; appends "SETUP req/s p99 non2xx+errors berth-us/req
# php-us/req php%a php%b php%c" (CPU per request over every node of the setup)
throughput() {
  local setup=$1 targets roots r i n conns rps p99 bad reqs b0 b1 total shares
  case $setup in
    solo) targets=("127.0.0.1:$SOLO_PORT"); roots=("$SOLO_PID") ;;
    via-a) targets=("127.0.0.1:$PORT"); roots=("${PID[a]}" "${PID[b]}" "${PID[c]}") ;;
    all) targets=("127.0.0.1:$PORT" "127.0.0.2:$PORT" "127.0.0.3:$PORT"); roots=("${PID[a]}" "${PID[b]}" "${PID[c]}") ;;
  esac
  n=${#targets[@]}
  conns=$((CONNS / n))
  declare -A php0=() php1=()
  b0=0
  for r in "${roots[@]}"; do php0[$r]=$(ticks "$r" php); b0=$((b0 + $(ticks "$r" berth))); done
  local wrks=()
  for i in "${!targets[@]}"; do
    taskset -c "$CLIENT_CPU" wrk -t1 -c"$conns" -d"${DUR}s" --latency \
      -H 'Host: bench.test' "http://${targets[$i]}/hello.php" >"$WORK/wrk.$i" &
    wrks+=($!)
  done
  wait "${wrks[@]}"
  b1=0
  for r in "${roots[@]}"; do php1[$r]=$(ticks "$r" php); b1=$((b1 + $(ticks "$r" berth))); done
  rps=0 p99=0 bad=0 reqs=0
  for i in $(seq 0 $((n - 1))); do
    rps=$(awk -v a="$rps" '/^Requests\/sec:/ {print a + $2}' "$WORK/wrk.$i")
    p99=$(awk -v a="$p99" -v b="$(pct 99% "$WORK/wrk.$i")" 'BEGIN {print (b > a) ? b : a}')
    bad=$((bad + $(awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(/[^0-9 ]/, " "); for (i = 1; i <= NF; i++) n += $i} END {print n + 0}' "$WORK/wrk.$i")))
    reqs=$((reqs + $(awk '/ requests in / {print $1}' "$WORK/wrk.$i")))
  done
  total=0
  for r in "${roots[@]}"; do total=$((total + php1[$r] - php0[$r])); done
  shares="- - -"
  if [ "$setup" != solo ]; then
    shares=""
    for r in "${roots[@]}"; do
      shares+="$(awk -v d=$((php1[$r] - php0[$r])) -v t="$total" 'BEGIN {printf "%.0f", (t > 0) ? 100 * d / t : 0}') "
    done
  fi
  local bus pus
  bus=$(per_req $((b1 - b0)) "$reqs")
  pus=$(per_req "$total" "$reqs")
  echo "$setup $rps $p99 $bad $bus $pus $shares" >>"$WORK/throughput"
  set -- $shares
  printf '  %-6s %7.0f req/s  p99 %6.2f ms  CPU per request: berth %3s us, PHP %3s us%s%s\n' "$setup" "$rps" "$p99" "$bus" "$pus" \
    "$( [ "$setup" != solo ] && echo "  PHP work a/b/c: $1/$2/$3%")" "$( [ "$bad" != 0 ] && echo "  non-2xx or errors: $bad")"
}

# hop SETUP ROUND: $HOP_REQUESTS requests one after the other on one kept-alive
# connection; appends "SETUP p50 p99 mean bad ROUND" (ms)
hop() {
  local addr
  case $1 in
    direct) addr=$HOP_ADDR ;;
    berth) addr=127.0.0.1:$PORT ;;
    haproxy) addr=127.0.0.1:$HAPROXY_PORT ;;
    nginx) addr=127.0.0.1:$NGINX_PORT ;;
  esac
  # curl's URL range: one request per number, each timed alone (bodies and
  # the timing lines share stdout; the timing lines are "CODE SECONDS")
  taskset -c "$CLIENT_CPU" curl -s -o /dev/null -w '%{http_code} %{time_total}\n' \
    -H "Host: $HOP_HOST" "http://$addr/hello.php?n=[1-$HOP_REQUESTS]" |
    awk 'NF == 2 && $1 ~ /^[0-9][0-9][0-9]$/' >"$WORK/hop.times" || true
  sort -g -k2 "$WORK/hop.times" | awk -v s="$1" -v r="$2" -v want="$HOP_REQUESTS" '
    { t[NR] = $2 * 1000; sum += t[NR]; if ($1 != 200) bad++ }
    END { n = NR; if (n == 0) { print s, 0, 0, 0, want, r; exit }
      i50 = int(0.5 * n + 0.999); i99 = int(0.99 * n + 0.999)
      print s, t[i50], t[i99], sum / n, bad + (want - n), r }' >>"$WORK/hop"
  tail -n1 "$WORK/hop" | awk '{printf "  %-8s p50 %6.3f ms  p99 %6.3f ms  mean %6.3f ms%s\n", $1, $2, $3, $4,
    ($5 > 0) ? "  failed or not 200: " $5 : ""}'
}

TP_SETUPS=(solo)
HOP_SETUPS=(direct haproxy nginx)
if [ "$SINGLE_ONLY" != 1 ]; then
  TP_SETUPS=(solo via-a all)
  HOP_SETUPS=(direct berth haproxy nginx)
  # berth's hop really goes to b.
  got=$(served 127.0.0.1 "$PORT" "$HOP_HOST")
  [ "$got" = 127.0.0.2 ] || { echo "a did not send $HOP_HOST to b (served by '$got')" >&2; exit 1; }
fi

echo "warm-up (${WARMUP}s each)"
warm=("127.0.0.1:$SOLO_PORT")
[ "$SINGLE_ONLY" = 1 ] || warm+=("127.0.0.1:$PORT" "127.0.0.2:$PORT" "127.0.0.3:$PORT")
for t in "${warm[@]}"; do
  taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" -H 'Host: bench.test' "http://$t/hello.php" >/dev/null
done
: >"$WORK/throughput"
order=("${TP_SETUPS[@]}")
for rep in $(seq "$REPS"); do
  echo "throughput, rep $rep/$REPS"
  for s in "${order[@]}"; do throughput "$s"; done
  order=("${order[@]:1}" "${order[0]}")
done
: >"$WORK/hop"
order=("${HOP_SETUPS[@]}")
for rep in $(seq "$HOP_REPS"); do
  echo "one hop, round $rep/$HOP_REPS"
  for s in "${order[@]}"; do hop "$s" "$rep"; done
  order=("${order[@]:1}" "${order[0]}")
done

# ---- summary ----------------------------------------------------------------------
col() { awk -v n="$2" -v c="$3" '$1 == n {print $c}' "$1" | median; }
sum_col() { awk -v n="$2" -v c="$3" '$1 == n {s += $c} END {print s + 0}' "$1"; }
echo
echo "PHP hello world over FastCGI (8 php-cgi per node), wrk -t1 -c$CONNS -d${DUR}s, median of $REPS;"
echo "every berth and its PHP on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU"
printf '%-28s %8s %7s %13s %11s %12s %12s\n' setup "req/s" "p99 ms" "berth us/req" "PHP us/req" "PHP a/b/c %" "non-2xx/err"
for s in "${TP_SETUPS[@]}"; do
  case $s in
    solo) label="1 node (no [cluster])" ;;
    via-a) label="3 nodes, wrk at a" ;;
    all) label="3 nodes, wrk at a, b and c" ;;
  esac
  printf '%-28s %8.0f %7.2f %13.0f %11.0f %12s %12s\n' "$label" "$(col "$WORK/throughput" "$s" 2)" "$(col "$WORK/throughput" "$s" 3)" \
    "$(col "$WORK/throughput" "$s" 5)" "$(col "$WORK/throughput" "$s" 6)" \
    "$( [ "$s" = solo ] && echo - || echo "$(col "$WORK/throughput" "$s" 7)/$(col "$WORK/throughput" "$s" 8)/$(col "$WORK/throughput" "$s" 9)")" \
    "$(sum_col "$WORK/throughput" "$s" 4)"
done
if [ "$SINGLE_ONLY" != 1 ]; then
  one=$(col "$WORK/throughput" solo 2)
  awk -v o="$one" -v a="$(col "$WORK/throughput" via-a 2)" -v l="$(col "$WORK/throughput" all 2)" 'BEGIN {
    printf "3 nodes / 1 node on the same CPU: %.2fx (wrk at a), %.2fx (wrk at all three)\n", a / o, l / o }'
fi
echo
echo "one hop in front of $HOP_NAME ($HOP_ADDR, Host $HOP_HOST), one request at a time (curl), $HOP_REPS rounds of $HOP_REQUESTS;"
echo "medians of the rounds; hop = median over the rounds of (the setup - $HOP_NAME direct in the same round)"
printf '%-26s %8s %8s %8s %10s %10s %12s\n' setup "p50 ms" "p99 ms" "mean ms" "hop p50" "hop p99" "non-200/err"
# hop_of SETUP COLUMN: the median over the rounds of SETUP's figure minus direct's
hop_of() {
  awk -v s="$1" -v c="$2" '$1 == "direct" {d[$6] = $c} $1 == s {v[$6] = $c}
    END {for (r in v) if (r in d) print v[r] - d[r]}' "$WORK/hop" | median
}
for s in "${HOP_SETUPS[@]}"; do
  case $s in
    direct) label="$HOP_NAME direct" ;;
    berth) label="berth a -> b" ;;
    haproxy) label="haproxy -> $HOP_NAME" ;;
    nginx) label="nginx -> $HOP_NAME" ;;
  esac
  p50=$(col "$WORK/hop" "$s" 2)
  p99=$(col "$WORK/hop" "$s" 3)
  printf '%-26s %8.3f %8.3f %8.3f %10s %10s %12s\n' "$label" "$p50" "$p99" "$(col "$WORK/hop" "$s" 4)" \
    "$( [ "$s" = direct ] && echo - || printf '%+.3f' "$(hop_of "$s" 2)")" \
    "$( [ "$s" = direct ] && echo - || printf '%+.3f' "$(hop_of "$s" 3)")" \
    "$(sum_col "$WORK/hop" "$s" 5)"
done
if [ "$SINGLE_ONLY" != 1 ]; then
  awk -v b="$(hop_of berth 2)" -v h="$(hop_of haproxy 2)" -v n="$(hop_of nginx 2)" 'BEGIN {
    printf "berth hop / haproxy hop = %s   berth hop / nginx hop = %s (p50)\n",
      (h > 0) ? sprintf("%.2fx", b / h) : "-", (n > 0) ? sprintf("%.2fx", b / n) : "-"
    printf "target, a berth hop under 0.3 ms at p50: %.3f ms, %s\n", b, (b < 0.3) ? "met" : "NOT met" }'
fi
