#!/usr/bin/env bash
# One tenant floods its stderr; how does another tenant fare, and how big does the
# flooding tenant's error.log get?
#
#   sudo bash bench/stderr_flood.sh          # DUR=8 CONNS=10 by default
#   sudo BERTH=path/to/berth bash bench/stderr_flood.sh   # another build (e.g. an older one)
#
# Tenant "flood" has a php-cgi pool (FastCGI: error_log() in a loop, each call a
# STDERR record) and a Python HTTP app (writes to its own fd 2 in a loop); tenant
# "quiet" has a static page. For each way of flooding (none, FastCGI records, fd 2),
# wrk -t1 -c$CONNS asks for the quiet tenant's page for $DUR s (wrk on CPU
# $CLIENT_CPU, berth and its apps on the others) while $FLOODERS requests flood.
# Prints the quiet tenant's req/s and p99 and how much the flooding tenant's
# error.log grew. Loopback only; every flood stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

DUR=${DUR:-8}
CONNS=${CONNS:-10}
FLOODERS=${FLOODERS:-2}
CLIENT_CPU=${CLIENT_CPU:-1}
PORT=${PORT:-18221}

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v php-cgi >/dev/null || need+=(php-cgi)
[ -x /usr/bin/python3 ] || need+=(python3)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
for u in berth-bench-front berth-bench berth-bench-flood; do
  id "$u" >/dev/null 2>&1 || useradd --no-create-home --shell /usr/sbin/nologin "$u"
done

if [ -z "${BERTH:-}" ]; then
  cargo build --release --quiet
  BERTH=$PWD/target/release/berth
fi

WORK=$(mktemp -d /tmp/berth-bench-stderr.XXXXXX)
chmod 755 "$WORK"
BERTH_PID=
cleanup() {
  if [ -n "$BERTH_PID" ]; then kill "$BERTH_PID" 2>/dev/null || true; wait "$BERTH_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/flood/public" "$WORK/flood/app" "$WORK/quiet/public"
cat >"$WORK/flood/public/flood.php" <<'PHP'
<?php
$end = microtime(true) + (float)($_GET['secs'] ?? 1);
$pad = str_repeat('x', 100);
$n = 0;
while (microtime(true) < $end) { error_log("flood $n $pad"); $n++; }
echo "done $n\n";
PHP
cat >"$WORK/flood/app/flood.py" <<'PY'
#!/usr/bin/python3
import socket, sys, time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        end = time.time() + float(parse_qs(urlparse(self.path).query).get("secs", ["1"])[0])
        pad = "x" * 100
        n = 0
        while time.time() < end:
            sys.stderr.write("flood %d %s\n" % (n, pad))
            n += 1
        body = ("done %d\n" % n).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

listener = socket.socket(fileno=3)
while True:
    conn, _ = listener.accept()
    try:
        H(conn, ("unix", 0), None)
    finally:
        conn.close()
PY
chmod 755 "$WORK/flood/app/flood.py"
echo "quiet tenant's page" >"$WORK/quiet/public/index.html"
chown -R berth-bench-flood: "$WORK/flood"
chown -R berth-bench: "$WORK/quiet"
chmod -R a+rX,go-w "$WORK/flood" "$WORK/quiet"

cat >"$WORK/berth.toml" <<TOML
[server]
listen = ["127.0.0.1:$PORT"]
user = "berth-bench-front"
state_dir = "$WORK/state"
log_dir = "$WORK/log"

[tenant.flood]
user = "berth-bench-flood"
home = "$WORK/flood"

[[tenant.flood.site]]
hosts = ["flood.test"]
root = "$WORK/flood/public"

[[tenant.flood.site.route]]
path = "/"
extensions = ["php"]
app = "php"

[[tenant.flood.site.route]]
path = "/py/"
app = "py"

[tenant.flood.app.php]
protocol = "fastcgi"
command = ["$(command -v php-cgi)"]
dir = "$WORK/flood/public"
min_processes = $FLOODERS
max_processes = $FLOODERS

[tenant.flood.app.py]
protocol = "http"
command = ["$WORK/flood/app/flood.py"]
dir = "$WORK/flood/app"
min_processes = $FLOODERS
max_processes = $FLOODERS

[tenant.quiet]
user = "berth-bench"
home = "$WORK/quiet"

[[tenant.quiet.site]]
hosts = ["quiet.test"]
root = "$WORK/quiet/public"
TOML

others=$(seq -s, 0 $(($(nproc) - 1)) | sed "s/\(^\|,\)$CLIENT_CPU\(,\|$\)/\1/; s/,,/,/; s/,$//; s/^,//")
[ -n "$others" ] || others=$CLIENT_CPU
taskset -c "$others" "$BERTH" serve --config "$WORK/berth.toml" >"$WORK/berth.out" 2>&1 &
BERTH_PID=$!
for _ in $(seq 100); do
  curl -sf -o /dev/null -H 'Host: quiet.test' "http://127.0.0.1:$PORT/" && break
  sleep 0.1
done
sleep 2   # min_processes started

log=$WORK/log/flood/error.log
run() {  # name path-or-empty
  local before after out rps p99
  before=$(stat -c %s "$log" 2>/dev/null || echo 0)
  local flooders=()
  if [ -n "$2" ]; then
    for _ in $(seq "$FLOODERS"); do
      curl -s -o /dev/null --max-time $((DUR + 30)) -H 'Host: flood.test' \
        "http://127.0.0.1:$PORT$2?secs=$((DUR + 2))" &
      flooders+=($!)
    done
    sleep 1
  fi
  out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" --latency \
    -H 'Host: quiet.test' "http://127.0.0.1:$PORT/")
  for p in "${flooders[@]}"; do wait "$p" || true; done
  sleep 1.5
  after=$(stat -c %s "$log" 2>/dev/null || echo 0)
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  printf '%-22s quiet tenant: %10s req/s  p99 %8s   flood error.log +%s bytes\n' \
    "$1" "$rps" "$p99" "$((after - before))"
}

echo "berth: $BERTH"
run "no flood" ""
run "FastCGI STDERR flood" "/flood.php"
run "fd 2 flood" "/py/"
