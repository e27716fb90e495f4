#!/usr/bin/env bash
# Starts the demo: berth serving two tenants on 127.0.0.1:8080 (HTTP) and :8443 (TLS),
# and its status page and metrics on 127.0.0.1:8081.
# Works as root (tenants get their own Unix users, the front end its own: berth-demo-front)
# and as a normal user (everything runs as you). Ctrl-C stops it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

cargo build --release --manifest-path "$repo/Cargo.toml"
berth="$repo/target/release/berth"

# A copy of the demo tree that the front end's user can read wherever the
# repository is checked out (e.g. under /root).
run=${BERTH_DEMO_DIR:-/tmp/berth-demo-$(id -u)}
rm -rf "$run/sites" "$run/own"
mkdir -p "$run"
cp -r "$here/berth.toml" "$here/tenants.d" "$here/sites" "$here/apps" "$here/tls" "$here/own" "$here/alice.htpasswd" "$run/"
install -m 755 "$berth" "$run/berth"    # for berth ctl as a tenant's user, who may not reach the build
chmod -R go+rX "$run"
chmod 755 "$run"
chmod -R go-w "$run/apps" "$run/sites"   # berth refuses programs and scripts writable by group or others

if [ "$(id -u)" = 0 ]; then
  for u in berth-demo-front berth-demo-alice berth-demo-bob; do
    id "$u" >/dev/null 2>&1 || useradd --no-create-home --shell /usr/sbin/nologin "$u"
  done
  chown -R berth-demo-alice: "$run/sites/alice"
  chown -R berth-demo-bob: "$run/sites/bob" "$run/own"
  chmod 600 "$run"/tls/*.key "$run/alice.htpasswd"
else
  me=$(id -un)
  sed -i "s/\"berth-demo-\(front\|alice\|bob\)\"/\"$me\"/" "$run/berth.toml" "$run/tenants.d/bob.toml"
fi

sock="$run/run/control.sock"
if [ "$(id -u)" = 0 ]; then
  ctl="runuser -u berth-demo-bob -- $run/berth ctl --socket $sock"
else
  ctl="$run/berth ctl --socket $sock --tenant bob"
fi

cat <<MSG
berth demo: try
  curl -H 'Host: alice.test' http://127.0.0.1:8080/
  curl -H 'Host: bob.test' http://127.0.0.1:8080/
  curl -u demo:demo -H 'Host: alice.test' http://127.0.0.1:8080/private/
  curl -H 'Host: alice.test' 'http://127.0.0.1:8080/hello/there?x=1'   # a FastCGI app in Perl
  curl -H 'Host: alice.test' 'http://127.0.0.1:8080/cgi-bin/hello.cgi/x?y=1'  # a shell CGI script
  curl -H 'Host: bob.test' 'http://127.0.0.1:8080/app/there?x=1'       # an HTTP app in Perl
  curl -H 'Host: bob.test' --data-binary @FILE http://127.0.0.1:8080/app/echo   # its upload echo
  curl -i -H 'Host: bob.test' http://127.0.0.1:8080/docs               # a route from bob's own file
  curl -k --http2 --resolve alice.test:8443:127.0.0.1 https://alice.test:8443/
  curl http://127.0.0.1:8081/status          # berth's status page (open it in a browser)
  curl http://127.0.0.1:8081/status.json     # the same, as JSON
  curl http://127.0.0.1:8081/metrics         # Prometheus metrics
  $ctl status          # berth ctl as the tenant bob: his apps, processes, limits, use
  $ctl reload          # bob re-reads his own file ($run/own/bob.toml) after editing it
  $ctl logs hello-http --follow   # bob's app's access log lines as they come
Logs: $run/run/log/  Config: $run/berth.toml  Stop: Ctrl-C
MSG
exec "$berth" serve --config "$run/berth.toml"
