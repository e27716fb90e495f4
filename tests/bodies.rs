//! Request and response bodies between hostile clients and tenants' apps
//! (issue 7, items 1–4; invariants 8 and 9), as root with real users, php-cgi,
//! shell CGI scripts and a socket-activated python3 app:
//! - bodies of unknown length (chunked HTTP/1.1, HTTP/2 without
//!   content-length) reach FastCGI and CGI apps whole, with their length,
//!   through memory and the temporary file;
//! - `max_body` (server, site, route) refuses a declared length at once and a
//!   streamed body as it passes it, and no app ever takes a cut body as whole;
//! - responses are read at the app's pace: a client that reads nothing, or an
//!   HTTP/2 client that grants no window, holds no app process;
//! - an app's own Content-Length frames its response and cannot make it end
//!   elsewhere (no response carries both a length and chunks).
mod common;
use common::apps::*;
use common::*;

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const USER_A: &str = "berth-tbodya";
const USER_B: &str = "berth-tbodyb";
const PHP: &str = "/usr/bin/php-cgi";
const PYTHON: &str = "/usr/bin/python3";

/// Reads the request body (length or chunks), notes in `$HOME/bodies.log`
/// whether it came whole, and answers its length and MD5; `/big?n=N` sends N
/// bytes with a Content-Length.
const APP_PY: &str = r#"#!/usr/bin/python3
import hashlib, http.server, json, os, socket, sys, time, urllib.parse

LOG = os.path.join(os.environ["HOME"], "bodies.log")

def note(line):
    with open(LOG, "a") as f:
        f.write(line + "\n")

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def address_string(self):
        return "unix"

    def read_body(self):
        h = hashlib.md5()
        n = 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline()
                if not line:
                    raise EOFError("cut %d" % n)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = size
                while left:
                    b = self.rfile.read(min(left, 65536))
                    if not b:
                        raise EOFError("cut %d" % n)
                    h.update(b)
                    n += len(b)
                    left -= len(b)
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                b = self.rfile.read(min(left, 65536))
                if not b:
                    raise EOFError("cut %d" % n)
                h.update(b)
                n += len(b)
                left -= len(b)
        return n, h.hexdigest()

    def route(self):
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        if url.path.endswith("/events"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(int(q.get("n", "3"))):
                event = b"data: %d\n\n" % i
                self.wfile.write(b"%x\r\n" % len(event) + event + b"\r\n")
                self.wfile.flush()
                time.sleep(float(q.get("gap", "1")))
            self.wfile.write(b"0\r\n\r\n")
            return
        if url.path.endswith("/big"):
            n = int(q.get("n", "0"))
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            block = b"y" * 65536
            while n > 0:
                self.wfile.write(block[: min(n, 65536)])
                n -= 65536
            return
        try:
            n, md5 = self.read_body()
        except EOFError as e:
            note(str(e))
            raise
        note("complete %d %s" % (n, md5))
        body = json.dumps({"len": n, "md5": md5}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = route

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

/// Notes that it ran, then answers the body's length and MD5.
const UPLOAD_PHP: &str = r#"<?php
file_put_contents(getenv('HOME') . '/php-ran.log', "ran\n", FILE_APPEND);
header('Content-Type: text/plain');
$in = fopen('php://input', 'rb');
$h = hash_init('md5');
$n = 0;
while (!feof($in)) {
    $b = fread($in, 65536);
    if ($b === false || $b === '') { if (feof($in)) break; continue; }
    $n += strlen($b);
    hash_update($h, $b);
}
echo "len=$n\nmd5=", hash_final($h), "\ncontent_length=", $_SERVER['CONTENT_LENGTH'] ?? '(unset)', "\n";
"#;

/// The same for CGI: notes that it ran, then the body's MD5 and length.
const ECHO_CGI: &str = "#!/bin/sh\necho ran >> \"$HOME/cgi-ran.log\"\nsum=$(md5sum | cut -d' ' -f1)\necho 'Content-Type: text/plain'\necho\necho \"md5=$sum\"\necho \"content_length=$CONTENT_LENGTH\"\n";

/// `n` bytes of 'x' (default 2 MiB).
const BIG_PHP: &str = "<?php header('Content-Type: application/octet-stream'); echo str_repeat('x', (int)($_GET['n'] ?? 2097152));";

/// Declares 3 bytes, sends 6.
const LONG_PHP: &str = "<?php header('Content-Length: 3'); echo 'abcdef';";

/// A route `/pys` to a second HTTP app on the same program (`pys`) that
/// takes request bodies as they come (`request_buffering = false`).
const STREAMING_APP: &str = r#"
[[tenant.ta.site.route]]
path = "/pys"
app = "pys"

[tenant.ta.app.pys]
protocol = "http"
command = ["/usr/bin/python3", "APP_PY"]
dir = "HOME"
request_buffering = false
"#;

struct Setup {
    _dir: Dir,
    a: Home,
    b: Home,
    s: Server,
}

/// Tenant `ta` (a.test): `*.php` to php-cgi (`php`), `/cgi-bin/*.cgi` run as
/// CGI (`cgi`), `/py` mounted on the python app (`py`); `routes` adds
/// `[[tenant.ta.site.route]]` tables. Tenant `tb` (b.test): `*.php` to
/// php-cgi. Every pool has `pool` settings; `server` goes into `[server]`.
/// (`APP_PY` and `HOME` in `routes` stand for tenant a's app.py and home.)
fn start(server: &str, pool: &str, routes: &str) -> Setup {
    require_root();
    let dir = Dir::new();
    let a = Home::new(&dir, "home-a", USER_A, ensure_user(USER_A));
    let b = Home::new(&dir, "home-b", USER_B, ensure_user(USER_B));
    a.write("app.py", APP_PY, 0o755);
    for (rel, text) in [
        ("up.php", UPLOAD_PHP),
        ("big.php", BIG_PHP),
        ("long.php", LONG_PHP),
    ] {
        a.write(&format!("public/{rel}"), text, 0o644);
        b.write(&format!("public/{rel}"), text, 0o644);
    }
    a.write("public/cgi-bin/echo.cgi", ECHO_CGI, 0o755);
    a.write("public/static.txt", "static\n", 0o644);
    a.write("public/static-big.bin", vec![b's'; 300_000], 0o644);
    a.write(
        "public/cgi-bin/exact.cgi",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\nContent-Length: 5\\n\\nhello'\n",
        0o755,
    );
    a.write(
        "public/cgi-bin/long.cgi",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\nContent-Length: 5\\n\\nhello-and-then-some'\n",
        0o755,
    );
    a.write(
        "public/cgi-bin/slowlong.cgi",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\nContent-Length: 5\\n\\nhel'\nsleep 0.3\nprintf 'lo-and-then-some'\n",
        0o755,
    );
    a.write(
        "public/cgi-bin/short.cgi",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\nContent-Length: 100\\n\\nshort'\n",
        0o755,
    );
    a.write(
        "public/cgi-bin/slowshort.cgi",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\nContent-Length: 100\\n\\nsh'\nsleep 0.3\nprintf 'ort'\n",
        0o755,
    );
    let routes = routes
        .replace("APP_PY", a.join("app.py").to_str().unwrap())
        .replace("HOME", a.path.to_str().unwrap());
    let tenants = format!(
        r#"{site_a}
[[tenant.ta.site.route]]
path = "/"
extensions = ["php"]
app = "php"
[[tenant.ta.site.route]]
path = "/cgi-bin"
extensions = ["cgi"]
app = "cgi"
[[tenant.ta.site.route]]
path = "/py"
app = "py"
{routes}
{php_a}
[tenant.ta.app.cgi]
protocol = "cgi"
{pool}
{py}
{site_b}
[[tenant.tb.site.route]]
path = "/"
extensions = ["php"]
app = "php"
{php_b}"#,
        site_a = tenant_site("ta", &a, "a.test"),
        site_b = tenant_site("tb", &b, "b.test"),
        php_a = app_table("ta", "php", "fastcgi", &a.public(), &[PHP], pool),
        php_b = app_table("tb", "php", "fastcgi", &b.public(), &[PHP], pool),
        py = app_table(
            "ta",
            "py",
            "http",
            &a.path,
            &[PYTHON, a.join("app.py").to_str().unwrap()],
            pool
        ),
    );
    a.own();
    b.own();
    let (block, port, tls_port) = server_block(
        &dir,
        &format!("keepalive_timeout = \"5s\"\ndrain_timeout = \"5s\"\n{server}"),
    );
    let s = Server::start(&dir, &format!("{block}{tenants}"), port, tls_port);
    Setup { _dir: dir, a, b, s }
}

/// A POST of `body` in chunks of `chunk` bytes (HTTP/1.1, chunked framing).
fn post_chunked(addr: SocketAddr, host: &str, path: &str, body: &[u8], chunk: usize) -> Resp {
    post_chunked_from(Ipv4Addr::LOCALHOST, addr, host, path, body, chunk)
}

/// The same from the client address `from`.
fn post_chunked_from(
    from: Ipv4Addr,
    addr: SocketAddr,
    host: &str,
    path: &str,
    body: &[u8],
    chunk: usize,
) -> Resp {
    let mut framed = Vec::new();
    for piece in body.chunks(chunk) {
        framed.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        framed.extend_from_slice(piece);
        framed.extend_from_slice(b"\r\n");
    }
    framed.extend_from_slice(b"0\r\n\r\n");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let mut c = connect_from(from, addr);
    c.write_all(head.as_bytes()).unwrap();
    // berth may answer (413) and stop reading before the body is all sent.
    for piece in framed.chunks(64 * 1024) {
        if c.write_all(piece).is_err() {
            break;
        }
    }
    let (raw, closed) = read_until_closed(&mut c, Duration::from_secs(30));
    assert!(closed, "POST {path}: no end of response");
    parse(&raw)
}

fn lines(path: PathBuf) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn chunked_uploads_reach_fastcgi_and_cgi_apps_whole_with_their_length() {
    let t = start("", "", "");
    // Small (memory) and 3 MB (past request_buffer: the temporary file).
    for size in [11, 3 << 20] {
        let body = payload(size);
        let r = post_chunked(t.s.addr(), "a.test", "/up.php", &body, 7000);
        assert_eq!(r.status, 200, "{r:?}\n{}", t.s.output());
        let v = r.vars();
        assert_eq!(v["len"], size.to_string());
        assert_eq!(v["md5"], md5_of(&body));
        assert_eq!(v["content_length"], size.to_string());

        let r = post_chunked(t.s.addr(), "a.test", "/cgi-bin/echo.cgi", &body, 7000);
        assert_eq!(r.status, 200, "{r:?}\n{}", t.s.output());
        assert_eq!(r.vars()["md5"], md5_of(&body));
        assert_eq!(r.vars()["content_length"], size.to_string());
    }
    // HTTP/2 without content-length (a streamed body).
    let c = client(true, None, &["a.test"], t.s.port);
    let body = payload(200_000);
    for path in ["/up.php", "/cgi-bin/echo.cgi"] {
        let r = c
            .post(format!("http://a.test:{}{path}", t.s.port))
            .body(reqwest::blocking::Body::new(std::io::Cursor::new(
                body.clone(),
            )))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().unwrap();
        assert!(text.contains(&format!("md5={}", md5_of(&body))), "{text}");
        assert!(text.contains("content_length=200000"), "{text}");
    }
    // The temporary files have no name: nothing is left in the directory,
    // which only the front end's user may enter.
    let tmp = t.s.config.parent().unwrap().join("state/tmp");
    let meta = fs::metadata(&tmp).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o700);
    let (front_uid, _) = ensure_user("berth-tfront");
    assert_eq!(meta.uid(), front_uid);
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
}

#[test]
fn max_body_refuses_a_declared_length_at_once_for_every_handler() {
    let routes = r#"
[[tenant.ta.site.route]]
path = "/py/roomy"
app = "py"
max_body = "1MiB"
"#;
    let t = start("max_body = \"1KiB\"", "", routes);
    // A declared length over the limit: 413 without reading the body, and
    // without `100 Continue` first (the client never sends it).
    for path in ["/static.txt", "/up.php", "/cgi-bin/echo.cgi", "/py/x"] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
        );
        let (raw, _) = exchange(t.s.addr(), &head, &[], Duration::from_secs(5));
        let text = String::from_utf8_lossy(&raw);
        assert!(
            text.starts_with("HTTP/1.1 413"),
            "{path}: {text}\n{}",
            t.s.output()
        );
    }
    // A route's own max_body wins over the server's.
    let head = "POST /py/roomy HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n";
    let (raw, _) = exchange(t.s.addr(), head, &payload(5000), Duration::from_secs(10));
    let r = parse(&raw);
    assert_eq!(r.status, 200, "{r:?}\n{}", t.s.output());
    assert_eq!(r.json()["len"], 5000);
    assert!(
        lines(t.a.join("bodies.log"))
            .iter()
            .any(|l| l.starts_with("complete 5000"))
    );
    assert!(!t.a.join("php-ran.log").exists());
    assert!(!t.a.join("cgi-ran.log").exists());
}

#[test]
fn a_streamed_body_past_max_body_is_refused_and_no_app_takes_it_as_whole() {
    let t = start(
        "max_body = \"100KiB\"\nrequest_buffer = \"16KiB\"",
        "",
        STREAMING_APP,
    );
    let body = payload(300_000);
    for path in ["/up.php", "/cgi-bin/echo.cgi", "/py/upload"] {
        let r = post_chunked(t.s.addr(), "a.test", path, &body, 4096);
        assert_eq!(r.status, 413, "{path}: {r:?}\n{}", t.s.output());
    }
    // Apps that get whole bodies never ran.
    assert!(!t.a.join("php-ran.log").exists());
    assert!(!t.a.join("cgi-ran.log").exists());
    assert!(lines(t.a.join("bodies.log")).is_empty());
    // One that takes it as it comes saw a cut body, never a complete one.
    let r = post_chunked(t.s.addr(), "a.test", "/pys/upload", &body, 4096);
    assert_eq!(r.status, 413, "{r:?}\n{}", t.s.output());
    assert!(
        eventually(Duration::from_secs(5), || !lines(t.a.join("bodies.log"))
            .is_empty()),
        "the streaming HTTP app heard nothing of the body\n{}",
        t.s.output()
    );
    let log = lines(t.a.join("bodies.log"));
    assert!(
        log.iter().all(|l| l.starts_with("cut ")),
        "the app took a body over max_body as complete: {log:?}"
    );
    // Within the limit, all is well.
    let small = payload(50_000);
    for path in ["/py/upload", "/pys/upload"] {
        let r = post_chunked(t.s.addr(), "a.test", path, &small, 4096);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.json()["md5"], md5_of(&small));
    }
}

#[test]
fn a_client_that_stops_sending_its_body_never_reaches_the_app() {
    let t = start("body_timeout = \"1s\"", "", "");
    for path in ["/up.php", "/cgi-bin/echo.cgi"] {
        let mut c = TcpStream::connect(t.s.addr()).unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
        );
        c.write_all(head.as_bytes()).unwrap();
        c.write_all(&payload(400)).unwrap();
        let (raw, closed) = read_until_closed(&mut c, Duration::from_secs(10));
        assert!(closed);
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 400"), "{path}: {text}");
        // And one that closes half-way.
        let mut c = TcpStream::connect(t.s.addr()).unwrap();
        c.write_all(head.as_bytes()).unwrap();
        c.write_all(&payload(400)).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let _ = read_until_closed(&mut c, Duration::from_secs(10));
    }
    assert!(!t.a.join("php-ran.log").exists());
    assert!(!t.a.join("cgi-ran.log").exists());
}

/// Sends a request and reads nothing of the answer (a client on a slow
/// link); returns the connection so it stays open.
fn park(addr: SocketAddr, host: &str, path: &str) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    rustix::net::sockopt::set_socket_recv_buffer_size(&c, 4096).unwrap();
    let mut c = c;
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .unwrap();
    c
}

#[test]
fn slow_clients_do_not_hold_app_processes() {
    // One process per app, and a short app timeout: without buffering, the
    // second request would wait for the first client to read 16 MB, and get
    // 503 or 504.
    let t = start("", "max_processes = 1\ntimeout = \"5s\"", "");
    let big = 16 << 20;
    let _slow = [
        park(t.s.addr(), "a.test", &format!("/big.php?n={big}")),
        park(t.s.addr(), "a.test", &format!("/py/big?n={big}")),
    ];
    std::thread::sleep(Duration::from_millis(500));
    for path in ["/big.php?n=10", "/py/big?n=10"] {
        let r = get(&t.s, path);
        assert_eq!(r.status, 200, "{path}: {r:?}\n{}", t.s.output());
        assert_eq!(r.body.len(), 10);
    }
}

// ---------------------------------------------------------------------------
// An HTTP/2 client that grants no window
// ---------------------------------------------------------------------------

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A header field as an HPACK literal without indexing (no Huffman).
fn hpack(out: &mut Vec<u8>, name: &str, value: &str) {
    assert!(name.len() < 127 && value.len() < 127);
    out.push(0);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

/// Opens an h2c connection whose every stream has a window of 0 bytes and
/// starts a GET on each of `targets` (host, path).
fn zero_window(addr: SocketAddr, targets: &[(&str, &str)]) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE = 0
    out.extend(h2_frame(4, 0, 0, &[0, 4, 0, 0, 0, 0]));
    for (i, (host, path)) in targets.iter().enumerate() {
        let mut block = Vec::new();
        hpack(&mut block, ":method", "GET");
        hpack(&mut block, ":scheme", "http");
        hpack(&mut block, ":authority", host);
        hpack(&mut block, ":path", path);
        // END_STREAM | END_HEADERS
        out.extend(h2_frame(1, 0x5, 2 * i as u32 + 1, &block));
    }
    c.write_all(&out).unwrap();
    c
}

#[test]
fn zero_window_h2_client_does_not_hold_app_processes() {
    // The review's attack: one connection with INITIAL_WINDOW_SIZE=0 and a
    // stream to every tenant's apps. Without buffering every app answered
    // 503 for as long as the connection stayed open.
    let t = start(
        "send_timeout = \"3s\"",
        "max_processes = 1\ntimeout = \"5s\"",
        "",
    );
    let big = "n=1000000";
    let mut attacker = zero_window(
        t.s.addr(),
        &[
            ("a.test", &format!("/big.php?{big}")),
            ("a.test", &format!("/py/big?{big}")),
            ("b.test", &format!("/big.php?{big}")),
            ("a.test", &format!("/big.php?{big}")),
            ("b.test", &format!("/big.php?{big}")),
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    for (host, path) in [
        ("a.test", "/big.php?n=10"),
        ("a.test", "/py/big?n=10"),
        ("b.test", "/big.php?n=10"),
    ] {
        let r = get_host(t.s.addr(), host, path);
        assert_eq!(r.status, 200, "{host}{path}: {r:?}\n{}", t.s.output());
        assert_eq!(r.body.len(), 10);
    }
    // The stalled streams are given up after send_timeout, and with them the
    // connection (its buffers freed).
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut attacker, Duration::from_secs(20));
    assert!(
        closed,
        "the zero-window connection is still open after 20 s"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        t.s.wait_output("left a response untaken", Duration::from_secs(5)),
        "{}",
        t.s.output()
    );
}

// ---------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------

/// Two requests pipelined on one connection; both responses, parsed.
fn pipelined(addr: SocketAddr, first: &str, second: &str) -> (Resp, Resp) {
    let head = format!(
        "GET {first} HTTP/1.1\r\nHost: a.test\r\n\r\nGET {second} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
    );
    let (raw, closed) = exchange(addr, &head, &[], Duration::from_secs(10));
    assert!(closed);
    let (one, rest) = parse_one(&raw);
    let (two, _) = parse_one(rest);
    (one, two)
}

#[test]
fn an_apps_content_length_frames_its_response_and_cannot_poison_the_next() {
    let t = start("", "", "");
    // As the app said: a length, never chunks beside it (the fast lane used
    // to send both).
    let r = get(&t.s, "/cgi-bin/exact.cgi");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length").as_deref(), Some("5"), "{r:?}");
    assert!(r.header("transfer-encoding").is_none(), "{r:?}");
    assert_eq!(r.body, b"hello");
    // Surplus bytes are dropped: the next response on the connection (here
    // another tenant could be next behind a proxy) is intact.
    for first in ["/cgi-bin/long.cgi", "/cgi-bin/slowlong.cgi", "/long.php"] {
        let (one, two) = pipelined(t.s.addr(), first, "/static.txt");
        let want: &[u8] = if first == "/long.php" {
            b"abc"
        } else {
            b"hello"
        };
        assert_eq!(one.body, want, "{first}: {one:?}");
        assert_eq!(
            one.header("content-length")
                .unwrap()
                .parse::<usize>()
                .unwrap(),
            want.len()
        );
        assert!(one.header("transfer-encoding").is_none(), "{one:?}");
        assert_eq!(two.status, 200, "{first}: {two:?}");
        assert_eq!(
            two.body, b"static\n",
            "{first}: the next response was poisoned"
        );
    }
    // Reported in the tenant's own (rate-limited) error log, not berth's.
    let error_log = t.s.log_dir.join("ta/error.log");
    assert!(
        eventually(Duration::from_secs(5), || fs::read_to_string(&error_log)
            .is_ok_and(|l| l.contains("past its Content-Length"))),
        "{}",
        fs::read_to_string(&error_log).unwrap_or_default()
    );
    // A body short of its length is never passed off as complete: 502 when
    // nothing was sent yet, else cut off with the connection closed.
    for path in ["/cgi-bin/short.cgi", "/cgi-bin/slowshort.cgi"] {
        let head = format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n");
        let (raw, closed) = exchange(t.s.addr(), &head, &[], Duration::from_secs(10));
        assert!(closed, "{path}: the connection stayed open");
        let r = parse(&raw);
        assert!(
            r.status == 502 || (r.status == 200 && !r.complete),
            "{path}: {r:?}"
        );
    }
    // The same over HTTP/2.
    let c = client(true, None, &["a.test"], t.s.port);
    let r = c
        .get(format!("http://a.test:{}/cgi-bin/long.cgi", t.s.port))
        .send()
        .unwrap();
    assert_eq!(r.content_length(), Some(5));
    assert_eq!(r.bytes().unwrap().as_ref(), b"hello");
    let r = c
        .get(format!("http://a.test:{}/cgi-bin/short.cgi", t.s.port))
        .send();
    match r {
        Ok(r) if r.status() == 502 => {}
        Ok(r) => assert!(r.bytes().is_err(), "a short body passed as complete"),
        Err(_) => {}
    }
    let _ = &t.b;
}

#[test]
fn zero_window_streams_of_complete_responses_and_static_files_are_given_up_too() {
    // A page complete at once (no pump) and a static file: nothing reads
    // them at the app's pace, yet a stream without window must not hold
    // them (and their memory) for as long as the client answers pings.
    let t = start("send_timeout = \"2s\"", "", "");
    let mut attacker = zero_window(
        t.s.addr(),
        &[
            ("a.test", "/big.php?n=100000"),
            ("a.test", "/static-big.bin"),
        ],
    );
    let (_, closed) = read_until_closed(&mut attacker, Duration::from_secs(20));
    assert!(
        closed,
        "the zero-window connection is still open after 20 s"
    );
    assert!(t.s.wait_output("left a response untaken", Duration::from_secs(5)));
}

#[test]
fn an_event_stream_quiet_longer_than_send_timeout_is_not_cut() {
    // The app, not the client, is slow: berth waits on the app.
    let t = start("send_timeout = \"1s\"", "", "");
    let c = client(true, None, &["a.test"], t.s.port);
    let mut r = c
        .get(format!("http://a.test:{}/py/events?n=3&gap=1.5", t.s.port))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut text = String::new();
    std::io::Read::read_to_string(&mut r, &mut text).unwrap();
    assert_eq!(text, "data: 0\n\ndata: 1\n\ndata: 2\n\n");
}

/// A POST to `path` declaring `len` bytes: `first` at once, then one byte
/// every `gap`, `drips` times, on a thread of its own; returns it.
fn slow_upload(
    addr: SocketAddr,
    path: &str,
    len: usize,
    first: usize,
    drips: usize,
    gap: Duration,
) -> std::thread::JoinHandle<()> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: a.test\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(head.as_bytes()).unwrap();
        c.write_all(&payload(first)).unwrap();
        for _ in 0..drips {
            std::thread::sleep(gap);
            if c.write_all(b"x").is_err() {
                return;
            }
        }
    })
}

#[test]
fn slow_uploads_to_an_http_app_do_not_hold_its_processes() {
    // The review's attack: bodies that announce 100 kB, send 70 kB (past the
    // first request_buffer) and then a byte now and then held the app's only
    // process (streamed to it), for as long as the client liked; everyone
    // else waited for it.
    let t = start("", "max_processes = 1\ntimeout = \"30s\"", "");
    let uploads: Vec<_> = (0..2)
        .map(|_| {
            slow_upload(
                t.s.addr(),
                "/py/upload",
                100_000,
                70_000,
                8,
                Duration::from_millis(500),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let head = "GET /py/big?n=10 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    let (raw, closed) = exchange(t.s.addr(), head, &[], Duration::from_secs(10));
    assert!(
        closed && !raw.is_empty(),
        "no answer within 10 s: a slow upload holds the app\n{}",
        t.s.output()
    );
    assert_eq!(parse(&raw).status, 200);
    for u in uploads {
        u.join().unwrap();
    }
    // The uploads never reached the app: no body was cut at it.
    assert!(
        lines(t.a.join("bodies.log"))
            .iter()
            .all(|l| !l.starts_with("cut ")),
        "{:?}",
        lines(t.a.join("bodies.log"))
    );
}

#[test]
fn an_upload_slower_than_the_apps_timeout_is_not_cut() {
    // A real upload at 100 kB/s for 4 s, against an app `timeout` of 2 s:
    // the app was given its timeout from the first byte, so it got 504 (or,
    // fresh, `start_timeout`) and its process was killed, for the client's
    // slowness. Buffered (the default) and streamed (request_buffering =
    // false, where the timeout counts from the body's end).
    let t = start(
        "",
        "timeout = \"2s\"\nstart_timeout = \"2s\"",
        &format!("{STREAMING_APP}timeout = \"2s\"\nstart_timeout = \"2s\"\n"),
    );
    let body = payload(400_000);
    for path in ["/py/upload", "/pys/upload"] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: a.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut c = TcpStream::connect(t.s.addr()).unwrap();
        c.write_all(head.as_bytes()).unwrap();
        for piece in body.chunks(25_000) {
            c.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(250));
        }
        let (raw, closed) = read_until_closed(&mut c, Duration::from_secs(20));
        assert!(closed);
        let r = parse(&raw);
        assert_eq!(r.status, 200, "{path}: {r:?}\n{}", t.s.output());
        assert_eq!(r.json()["md5"], md5_of(&body), "{path}");
    }
}

/// Bytes in the front end's temporary files now (they have no name: found
/// through its open descriptors).
fn temp_bytes(s: &Server) -> u64 {
    let front = s.front_pid();
    let mut total = 0;
    for fd in fs::read_dir(format!("/proc/{front}/fd")).unwrap().flatten() {
        let Ok(target) = fs::read_link(fd.path()) else {
            continue;
        };
        if target.to_string_lossy().contains("/state/tmp/")
            && let Ok(meta) = fs::metadata(fd.path())
        {
            total += meta.len();
        }
    }
    total
}

#[test]
fn temporary_files_are_bounded_per_client_address_and_in_all() {
    // The review: one zero-window HTTP/2 connection with 8 streams of a
    // 256 MB response had berth write 2 GiB of temporary files in 3 s, and
    // uploads the same; nothing bounded them but each body's own limits.
    // Here the process may hold 8 MiB in files, a client address a quarter.
    let t = start(
        "max_buffer_disk = \"8MiB\"\nresponse_buffer = \"64KiB\"\nrequest_buffer = \"64KiB\"\nsend_timeout = \"30s\"",
        "max_processes = 8",
        "",
    );
    let targets: Vec<(&str, String)> = (0..8)
        .map(|_| ("a.test", "/py/big?n=3000000".to_string()))
        .collect();
    let targets: Vec<(&str, &str)> = targets.iter().map(|(h, p)| (*h, p.as_str())).collect();
    let _attacker = zero_window(t.s.addr(), &targets);
    // The responses are read as far as the client's share allows (plus a
    // piece each), no further.
    let share = 2 << 20;
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        peak = peak.max(temp_bytes(&t.s));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        peak > 0,
        "nothing went to temporary files: the test proves nothing"
    );
    assert!(
        peak <= share + 8 * (64 << 10),
        "{peak} bytes in temporary files for one client (its share is {share})"
    );
    // An upload from the same address past what is left of its share is
    // refused (503), not held in memory; one from another address is not.
    let body = payload(3 << 20);
    let r = post_chunked(t.s.addr(), "a.test", "/up.php", &body, 64 << 10);
    assert_eq!(r.status, 503, "{r:?}");
    let small = payload(1 << 20);
    let other = Ipv4Addr::new(127, 0, 0, 2);
    let r = post_chunked_from(other, t.s.addr(), "a.test", "/up.php", &small, 64 << 10);
    assert_eq!(r.status, 200, "{r:?}\n{}", t.s.output());
    assert_eq!(r.vars()["md5"], md5_of(&small));
}

#[test]
fn head_over_http2_to_a_cgi_script_that_prints_a_body_gets_no_body() {
    // The review: CGI output after the head went out as DATA on an HTTP/2
    // HEAD response (HTTP/1.1 dropped it), a protocol error for the client
    // (curl -I exited 92).
    let t = start("", "", "");
    let c = client(true, None, &["a.test"], t.s.port);
    for path in ["/cgi-bin/exact.cgi", "/cgi-bin/echo.cgi", "/big.php?n=5000"] {
        let r = c
            .head(format!("http://a.test:{}{path}", t.s.port))
            .send()
            .unwrap_or_else(|e| panic!("HEAD {path}: {e}"));
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.bytes().unwrap().is_empty(), "{path}");
    }
    // The app's length stays for HEAD; and the next request is served.
    let r = c
        .head(format!("http://a.test:{}/cgi-bin/exact.cgi", t.s.port))
        .send()
        .unwrap();
    assert_eq!(r.headers()["content-length"], "5");
    let r = c
        .get(format!("http://a.test:{}/cgi-bin/exact.cgi", t.s.port))
        .send()
        .unwrap();
    assert_eq!(r.bytes().unwrap().as_ref(), b"hello");
}
