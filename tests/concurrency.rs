//! Each tenant's concurrency (issue 8, item 3: LVE's entry processes), as
//! root with real users, a socket-activated Python HTTP app, Debian's php-cgi
//! and a shell CGI script: at most `concurrency` requests of a tenant in its
//! apps, up to `queue` more waiting at most `queue_timeout`, past that
//! `overflow_status` with `Retry-After`; another tenant and the tenant's own
//! static files unaffected; a client that leaves the queue, or reads its
//! response slowly, holds no place; a WebSocket holds one for its life; a
//! reload's limits apply to new requests.
mod common;
use common::apps::*;
use common::*;

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const USER_A: &str = "berth-tconca";
const USER_B: &str = "berth-tconcb";
const PHP: &str = "/usr/bin/php-cgi";

/// A socket-activated HTTP/1.1 app (stdlib only), one request at a time:
/// `.../sleep?s=N` answers "slept" after N seconds, `.../big?n=N` sends N
/// bytes, `.../ws` upgrades and echoes; anything else answers "hello".
const APP_PY: &str = r#"#!/usr/bin/python3
import http.server, os, socket, sys, time, urllib.parse


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def address_string(self):
        return "unix"

    def reply(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        name = url.path.rsplit("/", 1)[-1]
        if name == "sleep":
            time.sleep(float(q.get("s", "1")))
            return self.reply(b"slept\n")
        if name == "big":
            n = int(q["n"])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            block = b"x" * 65536
            while n > 0:
                self.wfile.write(block[: min(n, len(block))])
                n -= len(block)
            return
        if name == "ws":
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            while True:
                data = self.rfile.read1(65536)
                if not data:
                    break
                self.wfile.write(data)
            self.close_connection = True
            return
        self.reply(b"hello\n")


listener = socket.socket(fileno=3)
while True:
    conn, _ = listener.accept()
    try:
        Handler(conn, ("unix", 0), None)
    except Exception as e:
        sys.stderr.write("app.py: %r\n" % (e,))
    finally:
        conn.close()
"#;

const HELLO_CGI: &str = "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\ncgi hello\\n'\n";

/// Tenant `ta` (a.test): a static `index.html`, the Python app at `/py/`,
/// `*.php` through php-cgi and `/cgi/*.cgi` as CGI scripts, with the limits
/// in berth.toml's `[tenant.ta.limits]`; tenant `tb` (b.test): the Python
/// app at `/py/`, with the default limits.
struct Tenants {
    dir: Dir,
    a: Home,
    b: Home,
}

impl Tenants {
    fn new() -> Tenants {
        let dir = Dir::new();
        let a = Home::new(&dir, "home-a", USER_A, ensure_user(USER_A));
        let b = Home::new(&dir, "home-b", USER_B, ensure_user(USER_B));
        for home in [&a, &b] {
            home.write("app/app.py", APP_PY, 0o755);
        }
        a.write("public/index.html", "a static\n", 0o644);
        a.write("public/hello.php", "<?php echo \"php hello\\n\";", 0o644);
        a.write("public/cgi/hello.cgi", HELLO_CGI, 0o755);
        Tenants { dir, a, b }
    }

    /// Starts berth with `limits` (lines of `[tenant.ta.limits]`).
    fn start(&self, limits: &str) -> Server {
        let py = |t: &str, home: &Home| {
            let app_py = home.join("app/app.py");
            app_table(
                t,
                "py",
                "http",
                &home.join("app"),
                &[app_py.to_str().unwrap()],
                "max_processes = 4",
            )
        };
        let tenants = format!(
            r#"{site_a}
[[tenant.ta.site.route]]
path = "/py/"
app = "py"

[[tenant.ta.site.route]]
path = "/cgi/"
app = "cgi"
extensions = ["cgi"]

[[tenant.ta.site.route]]
path = "/"
app = "php"
extensions = ["php"]
{py_a}{php}
[tenant.ta.app.cgi]
protocol = "cgi"

[tenant.ta.limits]
{limits}
{site_b}
[[tenant.tb.site.route]]
path = "/py/"
app = "py"
{py_b}"#,
            site_a = tenant_site("ta", &self.a, "a.test"),
            py_a = py("ta", &self.a),
            php = app_table("ta", "php", "fastcgi", &self.a.public(), &[PHP], ""),
            site_b = tenant_site("tb", &self.b, "b.test"),
            py_b = py("tb", &self.b),
        );
        start_tenants(&self.dir, &[&self.a, &self.b], &tenants)
    }
}

/// A moment for berth to take a request just sent (it enters the gate at
/// once), so that the next one comes after it.
fn pause() {
    std::thread::sleep(Duration::from_millis(300));
}

/// Sends `GET path` for `host` on a new keep-alive connection and returns it
/// unread.
fn send_get(to: SocketAddr, host: &str, path: &str) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s
}

/// Reads one (small) response from `s` within `within` (None if none came
/// whole).
fn read_response(s: &mut TcpStream, within: Duration) -> Option<Resp> {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + within;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while Instant::now() < deadline {
        if find(&raw, b"\r\n\r\n").is_some() {
            let (r, _) = parse_one(&raw);
            if r.complete {
                return Some(r);
            }
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    find(&raw, b"\r\n\r\n").map(|_| parse(&raw))
}

/// A connection to `to` whose receive buffer stays small (64 KiB, where the
/// kernel's autotuning would grow it to tens of MiB on loopback).
fn small_window(to: SocketAddr) -> TcpStream {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    sockopt::set_socket_recv_buffer_size(&fd, 64 << 10).unwrap();
    rustix::net::connect(&fd, &to).unwrap();
    TcpStream::from(fd)
}

/// Whether anything of a response has come on `s` yet (nothing is consumed).
fn answered_yet(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let peeked = s.peek(&mut [0u8; 1]);
    s.set_nonblocking(false).unwrap();
    !matches!(peeked, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Asserts that `r` is a refusal at the tenant's limit with `status`.
fn assert_refused(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {r:?}");
    assert_eq!(
        r.header("retry-after").as_deref(),
        Some("2"),
        "{what}: {r:?}"
    );
    assert!(r.text().contains("busy"), "{what}: {r:?}");
}

/// The tenant's error log, once it contains `needle` (or after 5 s).
fn error_log_with(s: &Server, tenant: &str, needle: &str) -> String {
    let path = s.log_dir.join(tenant).join("error.log");
    let mut text = String::new();
    eventually(Duration::from_secs(5), || {
        text = fs::read_to_string(&path).unwrap_or_default();
        text.contains(needle)
    });
    text
}

#[test]
fn past_concurrency_requests_wait_and_past_the_queue_are_refused_at_once() {
    require_root();
    let t = Tenants::new();
    let s = t.start("concurrency = 2\nqueue = 1\nqueue_timeout = \"1s\"");
    // Two requests in flight for 3 s: the tenant's places.
    let mut slow: Vec<TcpStream> = (0..2)
        .map(|_| {
            let c = send_get(s.addr(), "a.test", "/py/sleep?s=3");
            pause();
            c
        })
        .collect();
    // The third waits; the fourth finds the queue full and is refused.
    let mut third = send_get(s.addr(), "a.test", "/py/hello");
    let queued_at = Instant::now();
    pause();
    let fourth = get_host(s.addr(), "a.test", "/py/hello");
    assert_refused(&fourth, 503, "past the queue");
    let busy =
        "tenant ta: every place is taken (concurrency = 2) and the queue is full (1 waiting)";
    assert!(s.output().contains(busy), "{}", s.output());
    // No place comes free within the third's queue_timeout: refused after it.
    let r = read_response(&mut third, Duration::from_secs(20)).expect("the third is answered");
    let waited = queued_at.elapsed();
    assert_refused(&r, 503, "after queue_timeout");
    assert!(
        waited >= Duration::from_millis(900),
        "refused after {waited:?}, before its queue_timeout (1s)"
    );
    assert!(
        s.output().contains(
            "tenant ta: every place (concurrency = 2) stayed taken for queue_timeout (1s)"
        ),
        "{}",
        s.output()
    );
    // The two in flight were not disturbed, and their places come back.
    for c in &mut slow {
        let r = read_response(c, Duration::from_secs(20)).expect("in flight, answered");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.text(), "slept\n");
    }
    let r = get_host(s.addr(), "a.test", "/py/hello");
    assert_eq!(r.status, 200, "{r:?}");
    // The tenant is told, in its own error log.
    let line = "[ta/py] berth: request refused with 503: every place is taken \
                (concurrency = 2) and the queue is full (1 waiting)";
    let log = error_log_with(&s, "ta", line);
    assert!(log.contains(line), "{log}");
}

#[test]
fn a_tenant_at_its_limit_slows_neither_another_tenant_nor_its_own_static_files() {
    require_root();
    let t = Tenants::new();
    let s = t.start("concurrency = 1\nqueue = 0\noverflow_status = 508");
    // Warm b's app: its start-up is not what this test is about.
    assert_eq!(get_host(s.addr(), "b.test", "/py/hello").status, 200);
    let mut slow = send_get(s.addr(), "a.test", "/py/sleep?s=5");
    pause();
    // Every kind of app route of a takes a place: refused, with a's status.
    for path in ["/py/hello", "/hello.php", "/cgi/hello.cgi"] {
        let r = get_host(s.addr(), "a.test", path);
        assert_refused(&r, 508, path);
        assert!(
            r.text().starts_with("508 Resource Limit Is Reached"),
            "{r:?}"
        );
    }
    // a's static files and b's app take none of a's places.
    let r = get_host(s.addr(), "a.test", "/index.html");
    assert_eq!(r.status, 200, "a's static file: {r:?}");
    assert_eq!(r.text(), "a static\n");
    let r = get_host(s.addr(), "b.test", "/py/hello");
    assert_eq!(r.status, 200, "b's app: {r:?}");
    assert_eq!(r.text(), "hello\n");
    assert!(
        !answered_yet(&slow),
        "a's request was no longer in flight: the test proves nothing"
    );
    let r = read_response(&mut slow, Duration::from_secs(20)).expect("answered");
    assert_eq!(r.status, 200, "{r:?}");
    // Each kind of app gives its place back when it is done: one after the
    // other, each gets in (with a queue of 0, a place kept would refuse it).
    for (path, body) in [
        ("/hello.php", "php hello\n"),
        ("/cgi/hello.cgi", "cgi hello\n"),
        ("/py/hello", "hello\n"),
        ("/hello.php", "php hello\n"),
        ("/cgi/hello.cgi", "cgi hello\n"),
    ] {
        let r = get_host(s.addr(), "a.test", path);
        assert_eq!(r.status, 200, "{path}: {r:?}\n{}", s.output());
        assert_eq!(r.text(), body);
    }
}

#[test]
fn a_client_that_leaves_the_queue_gives_its_place_back() {
    require_root();
    let t = Tenants::new();
    let s = t.start("concurrency = 1\nqueue = 1\nqueue_timeout = \"30s\"");
    let mut slow = send_get(s.addr(), "a.test", "/py/sleep?s=3");
    pause();
    // Queued, then the client goes away.
    drop(send_get(s.addr(), "a.test", "/py/hello"));
    pause();
    // Its place in the queue is free: this one waits, and the next one is
    // refused, the queue being full again.
    let mut queued = send_get(s.addr(), "a.test", "/py/hello");
    pause();
    let r = get_host(s.addr(), "a.test", "/py/hello");
    assert_refused(&r, 503, "past the queue");
    // The one in the freed place gets the place in flight when it comes free.
    let r = read_response(&mut queued, Duration::from_secs(20)).expect("answered");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    assert_eq!(r.text(), "hello\n");
    let r = read_response(&mut slow, Duration::from_secs(20)).expect("answered");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        s.output().matches("the queue is full (1 waiting)").count(),
        1,
        "only the last was refused:\n{}",
        s.output()
    );
}

#[test]
fn a_slow_client_does_not_hold_its_tenants_place_after_the_app_is_done() {
    require_root();
    let t = Tenants::new();
    let s = t.start("concurrency = 1\nqueue = 1\nqueue_timeout = \"10s\"");
    // 32 MiB to a client that reads nothing for now, with a small receive
    // buffer (no autotuning): the sockets hold a few MiB of it, berth
    // buffers the rest (a temporary file).
    let size: usize = 32 << 20;
    let mut big = small_window(s.addr());
    let head = format!("GET /py/big?n={size} HTTP/1.1\r\nHost: a.test\r\n\r\n");
    big.write_all(head.as_bytes()).unwrap();
    pause();
    // The app is done with it at once: the next request gets the place, long
    // before its queue_timeout and the client's send_timeout (60s).
    let r = get_host(s.addr(), "a.test", "/py/hello");
    assert_eq!(
        r.status,
        200,
        "the slow client held the tenant's place: {r:?}\n{}",
        s.output()
    );
    assert_eq!(r.text(), "hello\n");
    // The big response is whole all the same.
    big.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let body_at = loop {
        let n = big.read(&mut buf).expect("the big response");
        assert!(n > 0, "closed after {} bytes", raw.len());
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = find(&raw, b"\r\n\r\n") {
            break end + 4;
        }
    };
    let (head, _) = parse_one(&raw[..body_at]);
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("content-length"), Some(size.to_string()));
    let mut body = raw.len() - body_at;
    while body < size {
        let n = big.read(&mut buf).expect("the rest of the body");
        assert!(n > 0, "closed after {body} of {size} bytes");
        body += n;
    }
    assert_eq!(body, size);
}

#[test]
fn a_websocket_holds_a_place_for_its_life() {
    require_root();
    let t = Tenants::new();
    let s = t.start("concurrency = 1\nqueue = 0");
    let mut ws = TcpStream::connect_timeout(&s.addr(), Duration::from_secs(2)).unwrap();
    ws.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    ws.write_all(
        b"GET /py/ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while find(&raw, b"\r\n\r\n").is_none() {
        let n = ws.read(&mut buf).expect("the upgrade's answer");
        assert!(n > 0, "closed: {raw:?}\n{}", s.output());
        raw.extend_from_slice(&buf[..n]);
    }
    assert_eq!(parse(&raw).status, 101, "{:?}", parse(&raw));
    // While the tunnel is open, the tenant's only place is taken.
    let r = get_host(s.addr(), "a.test", "/py/hello");
    assert_refused(&r, 503, "while the tunnel is open");
    ws.write_all(b"ping").unwrap();
    let mut echo = [0u8; 4];
    ws.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping");
    // Closed, it gives the place back.
    ws.shutdown(Shutdown::Write).unwrap();
    let (_, closed) = read_until_closed(&mut ws, Duration::from_secs(10));
    assert!(closed, "the tunnel did not close");
    let mut last = None;
    let served = eventually(Duration::from_secs(10), || {
        let r = get_host(s.addr(), "a.test", "/py/hello");
        let ok = r.status == 200;
        last = Some(r);
        ok
    });
    assert!(
        served,
        "the place was not given back: {last:?}\n{}",
        s.output()
    );
}

#[test]
fn a_reload_applies_new_limits_to_new_requests_and_keeps_the_places_in_flight() {
    require_root();
    let t = Tenants::new();
    let s = t.start("concurrency = 1\nqueue = 0");
    let mut slow = send_get(s.addr(), "a.test", "/py/sleep?s=4");
    pause();
    let r = get_host(s.addr(), "a.test", "/py/hello");
    assert_refused(&r, 503, "at the limit of 1");
    let config = fs::read_to_string(&s.config).unwrap();
    fs::write(
        &s.config,
        config.replace("concurrency = 1\n", "concurrency = 2\n"),
    )
    .unwrap();
    s.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        s.wait_output(
            "serving configuration generation 2",
            Duration::from_secs(10)
        ),
        "reload not applied:\n{}",
        s.output()
    );
    // The new limit lets a second request in beside the one in flight...
    let r = get_host(s.addr(), "a.test", "/py/hello");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    assert!(
        !answered_yet(&slow),
        "the first request was no longer in flight: the test proves nothing"
    );
    // ...which kept its place, and is answered.
    let r = read_response(&mut slow, Duration::from_secs(20)).expect("answered");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "slept\n");
}
