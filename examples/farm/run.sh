#!/usr/bin/env bash
# Starts a farm of three berth nodes on this machine: a, b and c on 127.0.0.1,
# 127.0.0.2 and 127.0.0.3 (HTTP on :8080, the status page on :8081, gossip on UDP
# :7946 of each address), serving the same tenant: a FastCGI app in Perl
# (apps/hello.fcgi) that says which node served the request. The three find each
# other over gossip signed with a secret this script makes, and place every
# request by mod_backhand's candidacy functions (the routes below).
# Works as root (the tenant gets its own Unix user, berth-farm-shop, the front
# ends theirs: berth-farm-front) and as a normal user (everything runs as you).
# Ctrl-C stops all three.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

cargo build --release --manifest-path "$repo/Cargo.toml"
berth="$repo/target/release/berth"

# The farm's directory: the tenant's home (shared by the three nodes, as a
# shared file system would be), and per node its configuration, state and logs.
run=${BERTH_FARM_DIR:-/tmp/berth-farm-$(id -u)}
rm -rf "${run:?}/home"
mkdir -p "$run/home/site"
cp -r "$here/apps" "$run/home/"
chmod 755 "$run"
chmod -R go+rX,go-w "$run/home"   # berth refuses programs writable by group or others

# The cluster's secret: every gossip datagram and every proxied request's mark
# is signed with it; a node must not start with one others can read.
key=$run/cluster.key
[ -s "$key" ] || (umask 077 && head -c 32 /dev/urandom >"$key")
chmod 600 "$key"

if [ "$(id -u)" = 0 ]; then
  for u in berth-farm-front berth-farm-shop; do
    id "$u" >/dev/null 2>&1 || useradd --no-create-home --shell /usr/sbin/nologin "$u"
  done
  chown -R berth-farm-shop: "$run/home"
  front=berth-farm-front tenant=berth-farm-shop
else
  front=$(id -un) tenant=$(id -un)
fi

names=(a b c)
declare -A ip=([a]=127.0.0.1 [b]=127.0.0.2 [c]=127.0.0.3)
for n in "${names[@]}"; do
  seeds=""
  for m in "${names[@]}"; do
    [ "$m" = "$n" ] || seeds+="${seeds:+, }\"${ip[$m]}:7946\""
  done
  mkdir -p "$run/$n"
  cat >"$run/$n/berth.toml" <<TOML
# Node $n of the example farm, written by examples/farm/run.sh. The three
# nodes' files differ only in their addresses, names and directories: the
# status page flags a node whose configuration differs from this one's.

[server]
listen = ["${ip[$n]}:8080"]
admin_listen = "${ip[$n]}:8081"   # the status page, with the cluster
user = "$front"
state_dir = "$run/$n/state"
log_dir = "$run/$n/log"
control_socket = "$run/$n/control.sock"

[cluster]
name = "$n"
bind = "${ip[$n]}:7946"           # UDP, every datagram signed with the secret
seeds = [$seeds]
secret_file = "$run/cluster.key"
interval = "1s"                   # each node announces its figures every second
# Every route's placement unless it has its own: the nodes heard from within
# 6 s, by load (this node's lowered by 0.5, so it keeps the requests it is
# nearly best for), then by the requests this node has in flight to each
# (fresh, where everyone's load is up to a second old).
balance = ["byAge 6", "byLoad 0.5", "byInFlight"]

[tenant.shop]
user = "$tenant"
home = "$run/home"

[tenant.shop.app.hello]
protocol = "fastcgi"
command = ["$run/home/apps/hello.fcgi"]
dir = "$run/home/apps"
max_processes = 4
idle_timeout = "1m"

[[tenant.shop.site]]
hosts = ["farm.test"]
root = "$run/home/site"

[[tenant.shop.site.route]]        # placed by [cluster] balance
path = "/"
app = "hello"

[[tenant.shop.site.route]]        # at random over the live nodes
path = "/spread/"
app = "hello"
balance = ["byAge 6", "byRandom"]

[[tenant.shop.site.route]]        # always node b, whichever node it reaches
path = "/pinned/"
app = "hello"
balance = ["byHostname ^b\$"]

[[tenant.shop.site.route]]        # at random, then the node the signed cookie names
path = "/sticky/"
app = "hello"
balance = ["byAge 6", "byRandom", "bySession"]
sticky = true
TOML
done

for n in "${names[@]}"; do
  "$berth" check --config "$run/$n/berth.toml" >/dev/null || {
    echo "berth check refuses node $n's configuration ($run/$n/berth.toml)" >&2
    exit 1
  }
done

# Each node's own log lines, prefixed with its name. The prefixing sed ignores
# Ctrl-C, so it passes on a node's last lines while the node stops.
pids=()
for n in "${names[@]}"; do
  "$berth" serve --config "$run/$n/berth.toml" > >(trap '' INT TERM; exec sed -u "s/^/$n| /") 2>&1 &
  pids+=($!)
done
stop() {
  trap - INT TERM
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap 'stop; exit 0' INT TERM

jar=$run/cookies
cat <<MSG
berth farm: nodes a (127.0.0.1), b (127.0.0.2) and c (127.0.0.3); in a few seconds they know each other. Try
  for i in 1 2 3 4 5 6; do curl -s -H 'Host: farm.test' http://127.0.0.1:8080/spread/ | head -n1; done   # spread at random
  curl -s -H 'Host: farm.test' http://127.0.0.3:8080/pinned/          # always served by b (127.0.0.2), via c
  for i in 1 2 3; do curl -s -b $jar -c $jar -H 'Host: farm.test' http://127.0.0.1:8080/sticky/ | head -n1; done   # the same node each time
  seq 200 | xargs -P 16 -I{} curl -s -H 'Host: farm.test' http://127.0.0.1:8080/ | grep '^served' | sort | uniq -c   # a's default under load
  curl http://127.0.0.1:8081/status                  # node a's status page, with the cluster (open it in a browser)
  curl -s http://127.0.0.2:8081/status.json | jq .cluster    # node b's view of the farm
  curl http://127.0.0.3:8081/metrics                 # Prometheus metrics of node c
Logs: $run/{a,b,c}/log/  Configs: $run/{a,b,c}/berth.toml  Stop: Ctrl-C (stops all three)
MSG

# Until Ctrl-C, or until a node stops by itself (then the others too).
wait -n "${pids[@]}" || true
echo "a node stopped; stopping the others" >&2
stop
exit 1
