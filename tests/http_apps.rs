//! HTTP apps end to end (`protocol = "http"`), as root with real users and
//! Debian's python3: who the app runs as and what it gets by socket activation
//! (invariant 1, DESIGN.md "App sockets"), the proxy headers berth vouches for
//! and the hop-by-hop headers it drops (issue 3, item 6), 10 MB bodies both
//! ways over HTTP/1.1 and h2c, a WebSocket-style upgrade tunnelled, a backend
//! that crashes or starts too slowly (invariant 8), another tenant kept away
//! from the app's socket and processes (invariant 2), clients that go away
//! mid-transfer, and nothing left running after SIGTERM (also what the app
//! started in a session of its own).
mod common;
use common::apps::*;
use common::*;

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Tenant A's user (member of [`GROUP_A`]); used by most tests.
const USER_A: &str = "berth-thttpa";
/// Tenant B's user (the other tenant of the isolation test).
const USER_B: &str = "berth-thttpb";
/// Only the SIGTERM test runs apps as this user, so "no process of this uid is
/// left" cannot be confused by tests running in parallel.
const USER_C: &str = "berth-thttpc";
/// A supplementary group of [`USER_A`].
const GROUP_A: &str = "berth-thttpg";
/// The interpreter of the test app (Debian's).
const PYTHON: &str = "/usr/bin/python3";

// ---------------------------------------------------------------------------
// The app
// ---------------------------------------------------------------------------

/// A socket-activated HTTP/1.1 server (stdlib only). Every path ending in one
/// of the names below does that; anything else echoes the request as JSON.
/// `app.py probe SOCKET PID` (run by hand) tries another tenant's socket and
/// process and prints what the kernel said, as JSON.
const APP_PY: &str = r#"#!/usr/bin/python3
import errno, hashlib, http.server, json, os, socket, subprocess, sys, time, urllib.parse


def err(e):
    return "fail:" + errno.errorcode.get(e.errno, str(e.errno))


def probe(sock, pid, destructive):
    out = {"uid": os.getuid()}
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(sock)
        out["connect"] = "ok"
    except OSError as e:
        out["connect"] = err(e)
    try:
        os.listdir(os.path.dirname(sock))
        out["list"] = "ok"
    except OSError as e:
        out["list"] = err(e)
    try:
        os.kill(pid, 0)
        out["kill0"] = "ok"
    except OSError as e:
        out["kill0"] = err(e)
    if destructive:
        try:
            os.unlink(sock)
            out["unlink"] = "ok"
        except OSError as e:
            out["unlink"] = err(e)
        try:
            os.kill(pid, 9)
            out["kill9"] = "ok"
        except OSError as e:
            out["kill9"] = err(e)
    return out


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
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = size
                while left:
                    b = self.rfile.read(min(left, 65536))
                    if not b:
                        raise EOFError("body cut short")
                    h.update(b)
                    n += len(b)
                    left -= len(b)
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                b = self.rfile.read(min(left, 65536))
                if not b:
                    raise EOFError("body cut short")
                h.update(b)
                n += len(b)
                left -= len(b)
        return n, h.hexdigest()

    def reply(self, status, body, extra=()):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def route(self):
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        name = url.path.rsplit("/", 1)[-1]
        if name == "ws":
            return self.ws()
        if name == "crash":
            self.read_body()
            os._exit(3)
        if name == "half":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(1 << 20))
            self.end_headers()
            self.wfile.write(b"x" * (100 * 1024))
            time.sleep(0.1)
            os._exit(3)
        if name == "big":
            return self.big(int(q.get("n", 10 << 20)), q.get("chunked") == "1")
        if name == "sleep":
            time.sleep(float(q.get("s", "1")))
        if name == "probe":
            out = probe(q["sock"], int(q["pid"]), False)
            return self.reply(200, json.dumps(out).encode())
        if name == "spawn":
            child = subprocess.Popen(
                ["/bin/sleep", "300"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=q.get("setsid") == "1",
            )
            return self.reply(200, json.dumps({"child": child.pid, "pid": os.getpid()}).encode())
        extra = []
        if name == "hop":
            extra = [
                ("Connection", "X-App-Hop, close"),
                ("X-App-Hop", "secret"),
                ("Keep-Alive", "timeout=99"),
                ("Proxy-Connection", "keep-alive"),
                ("X-App-E2E", "yes"),
            ]
        n, md5 = self.read_body()
        info = {
            "uid": os.getuid(),
            "euid": os.geteuid(),
            "gid": os.getgid(),
            "egid": os.getegid(),
            "groups": sorted(os.getgroups()),
            "pid": os.getpid(),
            "LISTEN_PID": os.environ.get("LISTEN_PID"),
            "LISTEN_FDS": os.environ.get("LISTEN_FDS"),
            "LISTEN_FDNAMES": os.environ.get("LISTEN_FDNAMES"),
            "env": dict(os.environ),
            "cwd": os.getcwd(),
            "method": self.command,
            "path": self.path,
            "version": self.request_version,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_len": n,
            "body_md5": md5,
        }
        self.reply(200, json.dumps(info).encode(), extra)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = route

    def big(self, n, chunked):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(n))
        self.end_headers()
        sent = 0
        i = 0
        while sent < n:
            k = min(65536, n - sent)
            block = bytes([97 + i % 26]) * k
            if chunked:
                self.wfile.write(b"%x\r\n" % k + block + b"\r\n")
            else:
                self.wfile.write(block)
            sent += k
            i += 1
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def ws(self):
        if self.headers.get("Upgrade", "").lower() != "websocket":
            return self.reply(426, b"{}")
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", "not-checked")
        self.send_header("X-Pid", str(os.getpid()))
        self.send_header("X-Seen-Connection", self.headers.get("Connection", ""))
        self.send_header("X-Seen-Upgrade", self.headers.get("Upgrade", ""))
        self.send_header("X-Seen-XFF", self.headers.get("X-Forwarded-For", ""))
        self.end_headers()
        self.wfile.flush()
        while True:
            data = self.rfile.read1(65536)
            if not data:
                break
            self.wfile.write(data)
        self.close_connection = True


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "probe":
        print(json.dumps(probe(sys.argv[2], int(sys.argv[3]), True)))
        return
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        sys.stderr.write("app.py: not socket-activated\n")
        sys.exit(2)
    listener = socket.socket(fileno=3)
    while True:
        conn, _ = listener.accept()
        try:
            Handler(conn, ("unix", 0), None)
        except Exception as e:
            sys.stderr.write("app.py: %r\n" % (e,))
        finally:
            conn.close()


main()
"#;

// ---------------------------------------------------------------------------
// Users, homes and configuration
// ---------------------------------------------------------------------------

/// Tenant A's user, a member of the supplementary group [`GROUP_A`].
fn user_a() -> (u32, u32) {
    user_in_group(USER_A, GROUP_A)
}

impl Home {
    /// A home as [`Home::new`] makes it, with `public/index.html` and the app
    /// `app/app.py` in it (written as root; [`Home::own`] hands them over).
    fn with_app(dir: &Dir, rel: &str, user: &'static str, ids: (u32, u32)) -> Home {
        let home = Home::new(dir, rel, user, ids);
        home.write("public/index.html", "static\n", 0o644);
        home.write("app/app.py", APP_PY, 0o755);
        home
    }

    fn app_py(&self) -> PathBuf {
        self.join("app/app.py")
    }
}

/// `[tenant.T]` with one site `host` rooted at `home/public` (with `tls`, a
/// `tls = {...}` line or ""), `routes` as (prefix, app), then `apps`.
fn tenant(
    t: &str,
    home: &Home,
    host: &str,
    tls: &str,
    routes: &[(&str, &str)],
    apps: &str,
) -> String {
    let mut out = format!("{}{tls}\n", tenant_site(t, home, host));
    for (prefix, app) in routes {
        out.push_str(&format!(
            "\n[[tenant.{t}.site.route]]\npath = \"{prefix}\"\napp = \"{app}\"\n"
        ));
    }
    out.push_str(apps);
    out
}

/// `[tenant.T.app.NAME]`: HTTP, `command`, working directory `home/app`, then
/// `extra` lines (pool settings).
fn http_app(t: &str, name: &str, home: &Home, command: &[&str], extra: &str) -> String {
    app_table(t, name, "http", &home.join("app"), command, extra)
}

/// Starts berth with tenant `ta` (a.test), app `py` (app.py) at `/py/` with
/// the pool settings in `pool`.
fn start_a(dir: &Dir, home: &Home, pool: &str) -> Server {
    start_a_with(dir, home, pool, "")
}

/// [`start_a`] with a `tls = {...}` line for the site (or "").
fn start_a_with(dir: &Dir, home: &Home, pool: &str, tls: &str) -> Server {
    let app_py = home.app_py();
    let apps = http_app("ta", "py", home, &[app_py.to_str().unwrap()], pool);
    let tenants = tenant("ta", home, "a.test", tls, &[("/py/", "py")], &apps);
    start_tenants(dir, &[home], &tenants)
}

/// [`start_a_with`] without the app's own view, for tests that tell its
/// processes apart by the pid it reports (see [`HOST_PIDS`]).
fn start_a_host_pids(dir: &Dir, home: &Home, pool: &str, tls: &str) -> Server {
    let app_py = home.app_py();
    let apps = http_app("ta", "py", home, &[app_py.to_str().unwrap()], pool);
    let tenants = tenant("ta", home, "a.test", tls, &[("/py/", "py")], &apps) + HOST_PIDS;
    start_tenants(dir, &[home], &tenants)
}

/// A certificate for a.test from a new test CA, as a site's `tls = {...}`.
fn tls_line(dir: &Dir, pki: &Pki) -> String {
    let (cert, key) = pki.issue(dir, "a", &["a.test"]);
    format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        cert.display(),
        key.display()
    )
}

// ---------------------------------------------------------------------------
// HTTP on the wire
// ---------------------------------------------------------------------------

/// Reads from `s` until `have(bytes)` says it is enough (or 20 s).
fn read_until(s: &mut impl Read, mut have: impl FnMut(&[u8]) -> bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    while !have(&out) {
        let n = s
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read after {} bytes: {e}", out.len()));
        assert!(n > 0, "closed after {} bytes", out.len());
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// A TCP connection whose reads give up after 20 s.
fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// A TLS connection to `addr` for `host` trusting `ca_pem`, offering only
/// HTTP/1.1 by ALPN (as browsers do for WebSocket).
fn connect_tls(
    addr: SocketAddr,
    ca_pem: &str,
    host: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls_pki_types::ServerName::try_from(host.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
    rustls::StreamOwned::new(conn, connect(addr))
}

/// The values of request header `name` as the app saw them (JSON echo).
fn seen(v: &Value, name: &str) -> Vec<String> {
    v["headers"]
        .as_array()
        .unwrap_or_else(|| panic!("no headers in {v}"))
        .iter()
        .filter(|kv| kv[0].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|kv| kv[1].as_str().unwrap().to_string())
        .collect()
}

/// What app.py's `big` sends: 64 KiB blocks of 'a', 'b', ... 'z', 'a', ...
fn check_big(body: &[u8], size: usize, what: &str) {
    assert_eq!(body.len(), size, "{what}: length");
    for (i, piece) in body.chunks(65536).enumerate() {
        let want = b'a' + (i % 26) as u8;
        assert!(
            piece.iter().all(|&b| b == want),
            "{what}: block {i} is wrong"
        );
    }
}

// ---------------------------------------------------------------------------
// 1. Who the app runs as, and what socket activation gives it (invariant 1)
// ---------------------------------------------------------------------------

#[test]
fn the_app_runs_as_the_tenant_socket_activated_with_a_clean_environment() {
    require_root();
    let (uid, gid) = user_a();
    let (_, front_gid) = ensure_user("berth-tfront");
    let dir = Dir::new();
    let home = Home::with_app(&dir, "home-a", USER_A, (uid, gid));
    home.own();
    let (block, port, _) = server(&dir);
    let app_py = home.app_py();
    let apps = http_app(
        "ta",
        "py",
        &home,
        &[app_py.to_str().unwrap()],
        "env = { APP_ENV = \"production\" }",
    );
    // Found as the supervisor's child.
    let config = format!(
        "{block}{}{HOST_PIDS}",
        tenant("ta", &home, "a.test", "", &[("/py/", "py")], &apps)
    );
    // berth itself has the variable: the app must not inherit it.
    let s = EnvServer::start(&dir, &config, port, &[("BERTH_TEST_SECRET", "1")]);

    // The path reaches the app unchanged, prefix, escapes and query included.
    let r = get_host(s.addr(), "a.test", "/py/echo/x%20y?a=1&b=%2F");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    let v = r.json();
    assert_eq!(v["path"], "/py/echo/x%20y?a=1&b=%2F", "{v}");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["version"], "HTTP/1.1");

    // What the app says about itself.
    assert_eq!(
        (v["uid"].as_u64(), v["euid"].as_u64()),
        (Some(uid.into()), Some(uid.into()))
    );
    assert_eq!(
        (v["gid"].as_u64(), v["egid"].as_u64()),
        (Some(gid.into()), Some(gid.into()))
    );
    let want_groups = groups_of(USER_A);
    assert!(
        want_groups.len() >= 2,
        "{USER_A} should have a supplementary group"
    );
    let groups: BTreeSet<u64> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_u64().unwrap())
        .collect();
    assert_eq!(groups, want_groups, "supplementary groups");
    let pid = v["pid"].as_u64().unwrap() as u32;
    assert_eq!(
        v["LISTEN_PID"],
        pid.to_string(),
        "LISTEN_PID is the app's own pid"
    );
    assert_eq!(v["LISTEN_FDS"], "1");
    assert_eq!(v["LISTEN_FDNAMES"], "http");
    assert_eq!(
        fs::canonicalize(v["cwd"].as_str().unwrap()).unwrap(),
        fs::canonicalize(home.join("app")).unwrap(),
        "working directory = the app's dir"
    );

    // The environment: nothing of berth's, HOME = the tenant's home.
    let env = v["env"].as_object().unwrap();
    let home_path = home.path.to_str().unwrap();
    let expect = [
        ("HOME", home_path),
        ("USER", USER_A),
        ("LOGNAME", USER_A),
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("APP_ENV", "production"),
    ];
    for (k, want) in expect {
        assert_eq!(env.get(k).and_then(Value::as_str), Some(want), "{k} in {v}");
    }
    for k in ["BERTH_TEST_SECRET", "BERTH_LOG", "RUST_LOG", "CARGO", "PWD"] {
        assert!(!env.contains_key(k), "{k} leaked into the app: {v}");
    }
    // What the kernel says about the process that answered.
    let st = proc_status(pid).expect("the app process that answered is alive");
    assert_runs_as(&st, s.child.id(), (uid, gid), &want_groups);
    // The environment berth gave it (python3 itself adds LC_CTYPE when the
    // locale is C, PEP 538, so the kernel's copy is the one to check): what
    // invariant 1 lists, socket activation's variables (and PORT/BERTH_SOCKET,
    // which DESIGN.md "App sockets" allows for apps that bind by themselves),
    // nothing else.
    let environ = environ_of(pid);
    assert!(
        environ.contains(&format!("LISTEN_PID={pid}")),
        "LISTEN_PID in /proc/{pid}/environ: {environ:?}"
    );
    assert!(
        environ.contains(&format!("HOME={home_path}")),
        "{environ:?}"
    );
    let allowed: BTreeSet<&str> = [
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "APP_ENV",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "PORT",
        "BERTH_SOCKET",
    ]
    .into_iter()
    .collect();
    let extra: Vec<&String> = environ
        .iter()
        .filter(|kv| !allowed.contains(kv.split_once('=').map_or(kv.as_str(), |(k, _)| k)))
        .collect();
    assert!(
        extra.is_empty(),
        "unexpected variables {extra:?} in {environ:?}"
    );
    // Its own session and process group (so berth can stop all of it).
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    assert_eq!(after_comm[3], after_comm[2], "session leader: sid = pgid");
    assert_eq!(after_comm[2], pid.to_string(), "its own process group");

    // fd 3 is the socket berth bound, in the root-owned apps directory; when
    // idle, the app holds 0, 1, 2 and 3, at most the one connection berth
    // keeps alive to it, and nothing of berth's.
    let sock = socket_of(pid, 3).expect("fd 3 is a Unix socket");
    assert_app_socket(&dir, &sock, "ta.py.", front_gid);
    let mut fds = BTreeSet::new();
    let only_listener = eventually(Duration::from_secs(3), || {
        fds = fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().parse::<u32>().unwrap())
            .collect();
        let extra: Vec<u32> = fds.iter().copied().filter(|&fd| fd > 3).collect();
        fds.is_superset(&BTreeSet::from([0, 1, 2, 3]))
            && extra.len() <= 1
            && extra.iter().all(|fd| {
                fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                    .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
            })
    });
    assert!(only_listener, "the idle app's descriptors: {fds:?}");
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/fd/0")).unwrap(),
        Path::new("/dev/null")
    );

    // The next request: the same process (the pool reuses it).
    let r = get_host(s.addr(), "a.test", "/py/again");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["pid"].as_u64(), Some(pid.into()));
}

// ---------------------------------------------------------------------------
// 2. Proxy headers and hop-by-hop headers
// ---------------------------------------------------------------------------

#[test]
fn proxy_headers_are_set_by_berth_and_hop_by_hop_headers_are_dropped() {
    require_root();
    let dir = Dir::new();
    let home = Home::with_app(&dir, "home-a", USER_A, user_a());
    home.own();
    let pki = Pki::new();
    let s = start_a_with(&dir, &home, "", &tls_line(&dir, &pki));
    let tls_port = s.tls_port;

    let spoof = "X-Forwarded-For: 6.6.6.6\r\n\
                 Forwarded: for=6.6.6.6;proto=https;host=evil.test\r\n\
                 X-Real-IP: 6.6.6.6\r\n\
                 X-Forwarded-Host: evil.test\r\n\
                 X-Forwarded-Proto: https\r\n\
                 X-Forwarded-Port: 443\r\n\
                 X-Forwarded-Ssl: on\r\n";
    let hop = "Connection: close, X-Secret-Hop\r\n\
               X-Secret-Hop: 1\r\n\
               Keep-Alive: timeout=300\r\n\
               TE: trailers\r\n\
               Proxy-Connection: keep-alive\r\n\
               Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
               Trailer: X-Checksum\r\n";
    // A GET (the fast lane takes it) and a POST with a body (hyper's).
    let requests = [
        format!(
            "GET /py/headers HTTP/1.1\r\nHost: a.test\r\n{spoof}{hop}X-End-To-End: kept\r\n\r\n"
        ),
        format!(
            "POST /py/headers HTTP/1.1\r\nHost: a.test\r\n{spoof}{hop}X-End-To-End: kept\r\nContent-Length: 2\r\n\r\nhi"
        ),
    ];
    for req in &requests {
        let what = req.lines().next().unwrap();
        let (raw, closed) = exchange(s.addr(), req, &[], Duration::from_secs(10));
        assert!(closed, "{what}: Connection: close was not honoured");
        let r = parse(&raw);
        assert_eq!(r.status, 200, "{what}: {r:?}\n{}", s.output());
        let v = r.json();
        let one = |name: &str| {
            let got = seen(&v, name);
            assert_eq!(got.len(), 1, "{what}: {name} seen as {got:?}\n{v}");
            got[0].clone()
        };
        assert_eq!(one("x-forwarded-for"), "127.0.0.1", "{what}");
        assert_eq!(one("x-real-ip"), "127.0.0.1", "{what}");
        assert_eq!(one("x-forwarded-proto"), "http", "{what}");
        assert_eq!(one("x-forwarded-host"), "a.test", "{what}");
        assert_eq!(
            one("forwarded"),
            "for=127.0.0.1;proto=http;host=\"a.test\"",
            "{what}"
        );
        assert_eq!(one("host"), "a.test", "{what}");
        assert_eq!(one("x-end-to-end"), "kept", "{what}");
        for gone in [
            "x-forwarded-port",
            "x-forwarded-ssl",
            "x-secret-hop",
            "keep-alive",
            "te",
            "proxy-connection",
            "proxy-authorization",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(
                seen(&v, gone).is_empty(),
                "{what}: {gone} reached the app: {:?}",
                seen(&v, gone)
            );
        }
        // berth's own connection to the app, one request long.
        for c in seen(&v, "connection") {
            assert!(
                c.eq_ignore_ascii_case("close"),
                "{what}: the app saw Connection: {c}"
            );
        }
        if what.starts_with("POST") {
            assert_eq!(
                (v["body_len"].as_u64(), v["method"].as_str()),
                (Some(2), Some("POST"))
            );
        }
    }

    // The app's hop-by-hop response headers stay between berth and the app,
    // and its `Connection: close` does not close the client's connection.
    let mut c = connect(s.addr());
    c.write_all(b"GET /py/hop HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    let raw = read_until(&mut c, |b| {
        find(b, b"\r\n\r\n").is_some() && {
            let (r, _) = parse_one(b);
            r.complete && !r.body.is_empty()
        }
    });
    let r = parse(&raw);
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    assert_eq!(r.header("x-app-e2e").as_deref(), Some("yes"), "{r:?}");
    for gone in ["x-app-hop", "keep-alive", "proxy-connection"] {
        assert!(r.header(gone).is_none(), "{gone} reached the client: {r:?}");
    }
    for v in r.headers("connection") {
        assert!(!v.to_ascii_lowercase().contains("x-app-hop"), "{r:?}");
        assert!(
            !v.eq_ignore_ascii_case("close"),
            "the app's Connection: close reached the client: {r:?}"
        );
    }
    // Same connection, next request.
    c.write_all(b"GET /py/again HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (raw, closed) = read_until_closed(&mut c, Duration::from_secs(10));
    assert!(closed);
    assert!(
        !raw.is_empty(),
        "the client's connection was closed after /py/hop"
    );
    assert_eq!(parse(&raw).status, 200);

    // Over TLS (ALPN h2): X-Forwarded-Proto https, proto=https.
    let tls = client(false, Some(&pki.ca_pem), &["a.test"], tls_port);
    let resp = tls
        .get(format!("https://a.test:{tls_port}/py/tls"))
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-for", "6.6.6.6")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = serde_json::from_slice(&resp.bytes().unwrap()).unwrap();
    let authority = format!("a.test:{tls_port}");
    assert_eq!(seen(&v, "x-forwarded-proto"), ["https"], "{v}");
    assert_eq!(seen(&v, "x-forwarded-for"), ["127.0.0.1"], "{v}");
    assert_eq!(seen(&v, "host"), [authority], "{v}");
    let fwd = seen(&v, "forwarded");
    assert_eq!(fwd.len(), 1, "{v}");
    assert!(
        fwd[0].starts_with("for=127.0.0.1;proto=https;host=\"a.test"),
        "{v}"
    );
    assert_eq!(seen(&v, "x-real-ip"), ["127.0.0.1"], "{v}");
}

/// RFC 7239 §5.3: `host=` carries "the original value of the Host header
/// field"; X-Forwarded-Host is, by the same convention (Apache's mod_proxy,
/// Traefik), the Host the client sent. An app that builds absolute URLs from
/// them (Django's USE_X_FORWARDED_HOST, Rails, Express's `trust proxy`) must
/// get the port the client used, or its redirects go to the wrong port.
#[test]
fn forwarded_host_is_the_host_the_client_sent_port_included() {
    require_root();
    let dir = Dir::new();
    let home = Home::with_app(&dir, "home-a", USER_A, user_a());
    let s = start_a(&dir, &home, "");
    let host = format!("a.test:{}", s.port);

    // HTTP/1.1 with Host: a.test:PORT.
    let r = get_host(s.addr(), &host, "/py/port");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    let v = r.json();
    assert_eq!(
        seen(&v, "host"),
        std::slice::from_ref(&host),
        "Host is kept: {v}"
    );
    assert_eq!(
        seen(&v, "forwarded"),
        [format!("for=127.0.0.1;proto=http;host=\"{host}\"")],
        "Forwarded host= as the client sent it: {v}"
    );
    assert_eq!(
        seen(&v, "x-forwarded-host"),
        std::slice::from_ref(&host),
        "{v}"
    );

    // HTTP/2: the authority.
    let h2c = client(true, None, &["a.test"], s.port);
    let resp = h2c.get(format!("http://{host}/py/port")).send().unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = serde_json::from_slice(&resp.bytes().unwrap()).unwrap();
    assert_eq!(seen(&v, "host"), std::slice::from_ref(&host), "{v}");
    assert_eq!(
        seen(&v, "x-forwarded-host"),
        std::slice::from_ref(&host),
        "{v}"
    );
    assert_eq!(
        seen(&v, "forwarded"),
        [format!("for=127.0.0.1;proto=http;host=\"{host}\"")],
        "{v}"
    );
}

// ---------------------------------------------------------------------------
// 3. Bodies both ways
// ---------------------------------------------------------------------------

#[test]
fn ten_megabytes_stream_both_ways_over_http1_and_h2c() {
    require_root();
    let dir = Dir::new();
    let home = Home::with_app(&dir, "home-a", USER_A, user_a());
    let s = start_a(&dir, &home, "");
    const SIZE: usize = 10 << 20;
    let data = payload(SIZE);
    let md5 = md5_of(&data);

    // A 10 MB upload with Content-Length.
    let head = format!(
        "POST /py/up HTTP/1.1\r\nHost: a.test\r\nContent-Type: application/octet-stream\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n"
    );
    let (raw, closed) = exchange(s.addr(), &head, &data, Duration::from_secs(30));
    assert!(closed);
    let r = parse(&raw);
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    let v = r.json();
    assert_eq!(v["body_len"].as_u64(), Some(SIZE as u64), "{r:?}");
    assert_eq!(v["body_md5"], md5.as_str());
    assert_eq!(seen(&v, "content-length"), [SIZE.to_string()]);

    // Chunked: chunks of odd sizes, forwarded whole.
    let small = &data[..300_001];
    let mut chunked = Vec::new();
    let mut rest = small;
    let mut n = 1;
    while !rest.is_empty() {
        let k = rest.len().min(n);
        chunked.extend_from_slice(format!("{k:x}\r\n").as_bytes());
        chunked.extend_from_slice(&rest[..k]);
        chunked.extend_from_slice(b"\r\n");
        rest = &rest[k..];
        n = n * 3 + 7;
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = "POST /py/up HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let (raw, closed) = exchange(s.addr(), head, &chunked, Duration::from_secs(30));
    assert!(closed);
    let r = parse(&raw);
    assert_eq!(r.status, 200, "chunked upload: {r:?}\n{}", s.output());
    let v = r.json();
    assert_eq!(v["body_len"].as_u64(), Some(small.len() as u64), "{r:?}");
    assert_eq!(v["body_md5"], md5_of(small).as_str());

    // 10 MB down over HTTP/1.1, sized and chunked by the app.
    for (path, what) in [
        ("/py/big", "sized"),
        ("/py/big?chunked=1", "chunked by the app"),
    ] {
        let head = format!("GET {path} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
        let (raw, closed) = exchange(s.addr(), &head, &[], Duration::from_secs(30));
        assert!(closed, "{what}");
        let r = parse(&raw);
        assert_eq!(r.status, 200, "{what}: {r:?}");
        assert!(r.complete, "{what}: {r:?}");
        check_big(&r.body, SIZE, what);
    }

    // And over h2c: up with and without content-length, down.
    let h2c = client(true, None, &["a.test"], s.port);
    let resp = h2c
        .get(format!("http://a.test:{}/py/big", s.port))
        .send()
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    check_big(&resp.bytes().unwrap(), SIZE, "h2c download");
    let resp = h2c
        .post(format!("http://a.test:{}/py/up", s.port))
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = serde_json::from_slice(&resp.bytes().unwrap()).unwrap();
    assert_eq!(v["body_len"].as_u64(), Some(SIZE as u64), "h2c upload: {v}");
    assert_eq!(v["body_md5"], md5.as_str());
    let resp = h2c
        .post(format!("http://a.test:{}/py/up", s.port))
        .body(reqwest::blocking::Body::new(std::io::Cursor::new(
            small.to_vec(),
        )))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = serde_json::from_slice(&resp.bytes().unwrap()).unwrap();
    assert_eq!(
        v["body_len"].as_u64(),
        Some(small.len() as u64),
        "h2c upload without content-length: {v}"
    );
    assert_eq!(v["body_md5"], md5_of(small).as_str());
}

// ---------------------------------------------------------------------------
// 4. Upgrades (WebSocket) are tunnelled
// ---------------------------------------------------------------------------

#[test]
fn a_websocket_upgrade_is_tunnelled_and_frees_the_process_after() {
    require_root();
    let dir = Dir::new();
    let home = Home::with_app(&dir, "home-a", USER_A, user_a());
    let pki = Pki::new();
    let s = start_a_host_pids(&dir, &home, "max_processes = 1", &tls_line(&dir, &pki));

    let mut ws = connect(s.addr());
    ws.write_all(
        b"GET /py/ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
          X-Forwarded-For: 6.6.6.6\r\n\r\n",
    )
    .unwrap();
    let raw = read_until(&mut ws, |b| find(b, b"\r\n\r\n").is_some());
    let (r, rest) = parse_one(&raw);
    assert_eq!(r.status, 101, "{r:?}\n{}", s.output());
    assert!(rest.is_empty(), "bytes after the 101: {rest:?}");
    assert_eq!(r.header("upgrade").as_deref(), Some("websocket"), "{r:?}");
    assert!(
        r.header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("upgrade")),
        "{r:?}"
    );
    assert_eq!(
        r.header("sec-websocket-accept").as_deref(),
        Some("not-checked")
    );
    // What the app was asked: an upgrade, with berth's proxy headers.
    assert!(
        r.header("x-seen-connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("upgrade")),
        "{r:?}"
    );
    assert_eq!(r.header("x-seen-upgrade").as_deref(), Some("websocket"));
    assert_eq!(r.header("x-seen-xff").as_deref(), Some("127.0.0.1"));
    let ws_pid: u32 = r.header("x-pid").unwrap().parse().unwrap();

    // Bytes both ways through the tunnel, binary and HTTP-looking included.
    let messages: [&[u8]; 4] = [
        b"hello",
        &[0, 255, 13, 10, 13, 10, 0x81, 0x05],
        b"GET /py/x HTTP/1.1\r\nHost: a.test\r\n\r\n",
        &[7u8; 200_000],
    ];
    for m in messages {
        ws.write_all(m).unwrap();
        let back = read_until(&mut ws, |b| b.len() >= m.len());
        assert!(back == m, "echoed {} bytes for {}", back.len(), m.len());
    }

    // While the tunnel is open the only process is taken: a request waits,
    // and is served once the tunnel closes.
    let waiting = std::thread::spawn({
        let addr = s.addr();
        move || {
            let t0 = Instant::now();
            (get_host(addr, "a.test", "/py/after"), t0.elapsed())
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !waiting.is_finished(),
        "served while the tunnel held the only process"
    );

    // Close our side: the app sees EOF and closes; so does the tunnel.
    ws.shutdown(Shutdown::Write).unwrap();
    let (tail, closed) = read_until_closed(&mut ws, Duration::from_secs(5));
    assert!(closed, "the tunnel did not close after the client's EOF");
    assert!(tail.is_empty(), "{tail:?}");
    drop(ws);

    let (r, waited) = waiting.join().unwrap();
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert_eq!(
        r.json()["pid"].as_u64(),
        Some(ws_pid.into()),
        "the same (only) process served it"
    );
    let r = get(&s, "/py/next");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(app_procs(s.pid(), "ta", "py", 3), vec![ws_pid]);

    // The app may refuse an upgrade: an ordinary answer, and the connection
    // goes on.
    let mut c = connect(s.addr());
    c.write_all(
        b"GET /py/plain HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .unwrap();
    let raw = read_until(&mut c, |b| {
        find(b, b"\r\n\r\n").is_some() && parse_one(b).0.complete
    });
    let r = parse(&raw);
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    let v = r.json();
    assert_eq!(v["path"], "/py/plain");
    assert_eq!(seen(&v, "upgrade"), ["websocket"], "the app was asked: {v}");
    assert!(r.header("upgrade").is_none(), "{r:?}");
    c.write_all(b"GET /py/pid HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (raw, closed) = read_until_closed(&mut c, Duration::from_secs(10));
    assert!(
        closed && !raw.is_empty(),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert_eq!(parse(&raw).status, 200);

    // wss://: the same over TLS (ALPN http/1.1).
    let mut wss = connect_tls(s.tls_addr(), &pki.ca_pem, "a.test");
    wss.write_all(
        b"GET /py/ws HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .unwrap();
    let raw = read_until(&mut wss, |b| find(b, b"\r\n\r\n").is_some());
    let (r, rest) = parse_one(&raw);
    assert_eq!(r.status, 101, "wss: {r:?}\n{}", s.output());
    assert!(rest.is_empty(), "{rest:?}");
    for m in [&b"over tls"[..], &[9u8; 100_000][..]] {
        wss.write_all(m).unwrap();
        let back = read_until(&mut wss, |b| b.len() >= m.len());
        assert!(
            back == m,
            "wss: echoed {} bytes for {}",
            back.len(),
            m.len()
        );
    }
    wss.conn.send_close_notify();
    wss.flush().unwrap();
    let mut tail = Vec::new();
    let end = wss.read_to_end(&mut tail);
    assert!(tail.is_empty(), "{tail:?}");
    drop(end);
    drop(wss);
    let t0 = Instant::now();
    let r = get(&s, "/py/after-wss");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());

    // Over HTTP/2 there is no upgrade: the app sees an ordinary request.
    let h2c = client(true, None, &["a.test"], s.port);
    let resp = h2c
        .get(format!("http://a.test:{}/py/echo", s.port))
        .header("upgrade", "websocket")
        .send();
    if let Ok(resp) = resp {
        assert_ne!(resp.status(), 101);
    }
    let r = get(&s, "/py/last");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
}

// ---------------------------------------------------------------------------
// 5. Crashes and slow starts (invariant 8)
// ---------------------------------------------------------------------------

#[test]
fn a_crash_is_502_and_the_next_request_works() {
    require_root();
    let dir = Dir::new();
    let home = Home::with_app(&dir, "home-a", USER_A, user_a());
    let s = start_a_host_pids(&dir, &home, "max_processes = 1", "");

    let r = get(&s, "/py/pid");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    let mut pid = r.json()["pid"].as_u64().unwrap() as u32;
    for round in 1..=2 {
        // Dies before answering.
        let t0 = Instant::now();
        let r = get(&s, "/py/crash");
        assert_eq!(r.status, 502, "round {round}: {r:?}\n{}", s.output());
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        assert!(eventually(Duration::from_secs(2), || !alive(pid)));
        let r = get(&s, "/py/pid");
        assert_eq!(r.status, 200, "round {round}: {r:?}\n{}", s.output());
        let next = r.json()["pid"].as_u64().unwrap() as u32;
        assert_ne!(next, pid);
        pid = next;
        // Let it be not young any more (crash-loop detection).
        std::thread::sleep(Duration::from_millis(300));
        let r = get(&s, "/py/pid");
        assert_eq!(r.status, 200, "round {round}: {r:?}");
    }

    // Dies in the middle of its body: the client can tell it is cut short.
    let head = "GET /py/half HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let (raw, closed) = exchange(s.addr(), head, &[], Duration::from_secs(10));
    assert!(closed, "the connection was not closed after the app died");
    assert!(!raw.is_empty(), "closed without a response\n{}", s.output());
    let r = parse(&raw);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.chunked || r.header("content-length").is_some(),
        "unframed body: {r:?}"
    );
    assert!(!r.complete, "the response looks complete: {r:?}");
    assert!(r.body.len() < 1 << 20);
    let mut last = None;
    let ok = eventually(Duration::from_secs(5), || {
        let r = get(&s, "/py/pid");
        let ok = r.status == 200;
        last = Some(r);
        ok
    });
    assert!(ok, "{last:?}\n{}", s.output());
}

#[test]
fn a_slow_starting_app_gets_503_after_start_timeout() {
    require_root();
    let dir = Dir::new();
    let home = Home::with_app(&dir, "home-a", USER_A, user_a());
    let slow = home.write(
        "app/slow.sh",
        format!(
            "#!/bin/sh\nsleep 5\nexec {PYTHON} {}\n",
            home.app_py().display()
        ),
        0o755,
    );
    let apps = http_app(
        "ta",
        "slow",
        &home,
        &[slow.to_str().unwrap()],
        "start_timeout = \"1s\"",
    );
    let tenants = tenant("ta", &home, "a.test", "", &[("/slow/", "slow")], &apps);
    let s = start_tenants(&dir, &[&home], &tenants);

    let t0 = Instant::now();
    let r = get(&s, "/slow/x");
    let took = t0.elapsed();
    assert_eq!(r.status, 503, "{r:?}\n{}", s.output());
    assert!(took < Duration::from_millis(2500), "503 took {took:?}");
    assert!(
        took >= Duration::from_millis(900),
        "503 before start_timeout: {took:?}"
    );
    assert!(r.header("retry-after").is_some(), "{r:?}");
    // The process that did not start in time is stopped (with its sleep).
    assert!(
        eventually(Duration::from_secs(8), || {
            app_procs(s.pid(), "ta", "slow", 3).is_empty()
        }),
        "{}",
        s.output()
    );
    let (uid, _) = user_a();
    let sleeping = || {
        processes_of(uid)
            .into_iter()
            .filter(|p| cmdline(*p).starts_with("sleep 5"))
            .filter(|p| {
                fs::read_link(format!("/proc/{p}/cwd")).is_ok_and(|c| c.starts_with(dir.path()))
            })
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(Duration::from_secs(8), || sleeping().is_empty()),
        "the slow app's sleep is still running: {:?}",
        sleeping()
    );
}

// ---------------------------------------------------------------------------
// 6. Another tenant cannot reach A's socket or processes (invariant 2)
// ---------------------------------------------------------------------------

#[test]
fn another_tenant_cannot_reach_the_socket_or_the_processes() {
    require_root();
    let ids_a = user_a();
    let ids_b = ensure_user(USER_B);
    let dir = Dir::new();
    let home_a = Home::with_app(&dir, "home-a", USER_A, ids_a);
    let home_b = Home::with_app(&dir, "home-b", USER_B, ids_b);
    let (py_a, py_b) = (home_a.app_py(), home_b.app_py());
    let tenants = format!(
        "{}{}",
        tenant(
            "ta",
            &home_a,
            "a.test",
            "",
            &[("/py/", "py")],
            &http_app("ta", "py", &home_a, &[py_a.to_str().unwrap()], "")
        ),
        tenant(
            "tb",
            &home_b,
            "b.test",
            "",
            &[("/py/", "py")],
            &http_app("tb", "py", &home_b, &[py_b.to_str().unwrap()], "")
        ),
    );
    let s = start_tenants(&dir, &[&home_a, &home_b], &(tenants + HOST_PIDS));

    let r = get(&s, "/py/pid");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    let pid_a = r.json()["pid"].as_u64().unwrap() as u32;
    let sock = socket_of(pid_a, 3).expect("A's process has its socket at fd 3");
    assert_eq!(Path::new(&sock).parent().unwrap(), dir.join("state/apps"));

    // B's user, directly.
    let pid = pid_a.to_string();
    let py_b = py_b.to_str().unwrap();
    let out = run_as(USER_B, &[PYTHON, py_b, "probe", &sock, &pid]);
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["uid"].as_u64(), Some(ids_b.0.into()), "{v}");
    for (k, want) in [
        ("connect", "fail:EACCES"),
        ("list", "fail:EACCES"),
        ("unlink", "fail:EACCES"),
        ("kill0", "fail:EPERM"),
        ("kill9", "fail:EPERM"),
    ] {
        assert_eq!(v[k], want, "as {USER_B}: {k} in {v}");
    }
    // A's own user cannot connect past berth or replace its socket either.
    let out = run_as(USER_A, &[PYTHON, py_b, "probe", &sock, "1"]);
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["connect"], "fail:EACCES", "as {USER_A}: {v}");
    assert_eq!(v["unlink"], "fail:EACCES", "as {USER_A}: {v}");
    assert_survived(&sock, pid_a);

    // B's own app, through berth, tries the same.
    let r = get_host(
        s.addr(),
        "b.test",
        &format!("/py/probe?sock={sock}&pid={pid_a}"),
    );
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    let v = r.json();
    assert_eq!(v["uid"].as_u64(), Some(ids_b.0.into()), "B's app runs as B");
    assert_eq!(v["connect"], "fail:EACCES", "{v}");
    assert_eq!(v["list"], "fail:EACCES", "{v}");
    assert_eq!(v["kill0"], "fail:EPERM", "{v}");

    // A keeps answering, from the same process.
    let r = get(&s, "/py/pid");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["pid"].as_u64(), Some(pid_a.into()));
}

// ---------------------------------------------------------------------------
// 7. Nothing left after SIGTERM
// ---------------------------------------------------------------------------

#[test]
fn sigterm_stops_every_process_of_the_tenant() {
    require_root();
    let ids = ensure_user(USER_C);
    let dir = Dir::new();
    let home = Home::with_app(&dir, "home-c", USER_C, ids);
    let app_py = home.app_py();
    let apps = http_app(
        "tc",
        "py",
        &home,
        &[app_py.to_str().unwrap()],
        "max_processes = 3",
    );
    let tenants = tenant("tc", &home, "c.test", "", &[("/py/", "py")], &apps) + HOST_PIDS;
    let mut s = start_tenants(&dir, &[&home], &tenants);
    // Three processes at once.
    let results: Vec<Resp> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| get_host(s.addr(), "c.test", "/py/sleep?s=0.5")))
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let mut pids = BTreeSet::new();
    for r in &results {
        assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
        pids.insert(r.json()["pid"].as_u64().unwrap());
    }
    assert_eq!(pids.len(), 3, "{pids:?}");
    // A child in the app's process group, as apps that shell out leave.
    let r = get_host(s.addr(), "c.test", "/py/spawn");
    assert_eq!(r.status, 200, "{r:?}");
    let child = r.json()["child"].as_u64().unwrap() as u32;
    assert!(alive(child));
    // A request in flight while berth stops.
    let in_flight = std::thread::spawn({
        let addr = s.addr();
        move || {
            let head = "GET /py/sleep?s=1 HTTP/1.1\r\nHost: c.test\r\nConnection: close\r\n\r\n";
            exchange(addr, head, &[], Duration::from_secs(20)).0
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(processes_of(ids.0).len() >= 4, "{:?}", processes_of(ids.0));

    assert_eq!(s.stop(), Some(0), "{}", s.output());
    let raw = in_flight.join().unwrap();
    assert!(
        !raw.is_empty() && parse(&raw).status == 200,
        "the request in flight was not drained: {:?}",
        String::from_utf8_lossy(&raw)
    );
    assert_nothing_left(&dir, USER_C, ids.0);
}

/// A client that goes away in the middle of a download or an upload must not
/// keep the app's only process: the next request is served.
#[test]
fn a_client_going_away_frees_the_process() {
    require_root();
    let dir = Dir::new();
    let home = Home::with_app(&dir, "home-a", USER_A, user_a());
    let s = start_a(&dir, &home, "max_processes = 1");
    let r = get(&s, "/py/pid");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());

    // Download: read a little of 10 MB, then hang up.
    let mut c = connect(s.addr());
    c.write_all(b"GET /py/big HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    read_until(&mut c, |b| b.len() >= 100_000);
    drop(c);
    let t0 = Instant::now();
    let r = get(&s, "/py/pid");
    assert_eq!(
        r.status,
        200,
        "after an abandoned download: {r:?}\n{}",
        s.output()
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());

    // Upload: announce 10 MB, send 1 MB, hang up.
    let mut c = connect(s.addr());
    c.write_all(
        format!(
            "POST /py/up HTTP/1.1\r\nHost: a.test\r\nContent-Length: {}\r\n\r\n",
            10 << 20
        )
        .as_bytes(),
    )
    .unwrap();
    c.write_all(&payload(1 << 20)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(c);
    let t0 = Instant::now();
    let r = get(&s, "/py/pid");
    assert_eq!(
        r.status,
        200,
        "after an abandoned upload: {r:?}\n{}",
        s.output()
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());

    // HEAD: the app's Content-Length, no body, the connection still usable.
    let mut c = connect(s.addr());
    c.write_all(b"HEAD /py/head HTTP/1.1\r\nHost: a.test\r\n\r\nGET /py/pid HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (raw, closed) = read_until_closed(&mut c, Duration::from_secs(10));
    assert!(closed);
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let second = text
        .find("\r\n\r\nHTTP/1.1 ")
        .unwrap_or_else(|| panic!("{text}"));
    let head = &text[..second];
    assert!(
        head.to_ascii_lowercase().contains("content-length:"),
        "HEAD answer without the app's Content-Length: {head}"
    );
    let r = parse(&raw[second + 4..]);
    assert_eq!(r.status, 200, "{text}");
    r.json();
}

// ---------------------------------------------------------------------------
// Apps that bind by themselves: `bind = "port"` and `bind = "socket"`
// ---------------------------------------------------------------------------

/// A stdlib HTTP/1.1 server (keep-alive) that binds by itself: `self.py port`
/// on 127.0.0.1:$PORT, `self.py socket` on $BERTH_SOCKET; `self.py wait`
/// writes $PORT to `port.txt` in its directory and never binds. Answers JSON:
/// who it is, what it was given, and the peer of the connection.
const SELF_PY: &str = r#"#!/usr/bin/python3
import http.server, json, os, socketserver, sys, threading, time


BARRIER = threading.Barrier(3, timeout=10)


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.endswith("/barrier"):
            # Answers once three requests are in here at the same time.
            try:
                BARRIER.wait()
            except threading.BrokenBarrierError:
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = json.dumps({
            "uid": os.getuid(),
            "pid": os.getpid(),
            "peer": repr(self.client_address),
            "port": os.environ.get("PORT"),
            "socket": os.environ.get("BERTH_SOCKET"),
            "listen_fds": os.environ.get("LISTEN_FDS"),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


mode = sys.argv[1]
if mode == "port":
    server = http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H)
elif mode == "threaded":
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H)
elif mode == "socket":
    server = socketserver.UnixStreamServer(os.environ["BERTH_SOCKET"], H)
else:
    with open("port.txt", "w") as f:
        f.write(os.environ["PORT"])
    while True:
        time.sleep(60)
server.serve_forever()
"#;

/// Starts tenant `ta` with `self.py MODE` mounted at `/py/`, bound by itself.
fn start_self_bound(dir: &Dir, home: &Home, bind: &str, mode: &str, pool: &str) -> Server {
    let program = home.write("app/self.py", SELF_PY, 0o755);
    let apps = http_app(
        "ta",
        "py",
        home,
        &[program.to_str().unwrap(), mode],
        &format!(
            "bind = \"{bind}\"\n{open}{pool}",
            open = if bind == "port" {
                "open_port = true\n"
            } else {
                ""
            }
        ),
    );
    let tenants = tenant("ta", home, "a.test", "", &[("/py/", "py")], &apps);
    start_tenants(dir, &[home], &tenants)
}

#[test]
fn an_app_binding_its_own_port_is_served_over_kept_alive_connections() {
    require_root();
    let (uid, gid) = user_a();
    let dir = Dir::new();
    let home = Home::with_app(&dir, "home-a", USER_A, (uid, gid));
    let s = start_self_bound(&dir, &home, "port", "port", "");
    let first = get(&s, "/py/");
    assert_eq!(first.status, 200, "{first:?}\n{}", s.output());
    let v = first.json();
    assert_eq!(v["uid"], uid, "{v}");
    assert!(
        v["port"].as_str().is_some_and(|p| p.parse::<u16>().is_ok()),
        "{v}"
    );
    assert_eq!(v["listen_fds"], Value::Null, "no socket activation: {v}");
    // The second request comes over the same connection (same peer port).
    let second = get(&s, "/py/").json();
    assert_eq!(second["pid"], v["pid"]);
    assert_eq!(second["peer"], v["peer"], "the connection was kept alive");
    // One Date, the app's.
    assert_eq!(first.headers("date").len(), 1, "{first:?}");
    // The admin allowed the open port, and berth says what that means.
    assert!(
        s.output()
            .contains("app ta/py: bind = \"port\" with open_port = true: every local user can connect to its port directly"),
        "{}",
        s.output()
    );
}

#[test]
fn an_app_binding_its_own_unix_socket_gets_a_directory_only_it_and_the_front_end_reach() {
    require_root();
    let (uid, gid) = user_a();
    let (_, front_gid) = ensure_user("berth-tfront");
    let dir = Dir::new();
    let home = Home::with_app(&dir, "home-a", USER_A, (uid, gid));
    let s = start_self_bound(&dir, &home, "socket", "socket", "");
    let r = get(&s, "/py/");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    let v = r.json();
    assert_eq!(v["uid"], uid, "{v}");
    let sock = PathBuf::from(v["socket"].as_str().unwrap());
    assert_eq!(sock.parent().unwrap(), dir.join("state/bound/ta"));
    use std::os::unix::fs::MetadataExt;
    let bound = fs::metadata(dir.join("state/bound")).unwrap();
    assert_eq!((bound.uid(), bound.mode() & 0o7777), (0, 0o711));
    let tenant_dir = fs::metadata(dir.join("state/bound/ta")).unwrap();
    assert_eq!(
        (
            tenant_dir.uid(),
            tenant_dir.gid(),
            tenant_dir.mode() & 0o7777
        ),
        (uid, front_gid, 0o2750)
    );
    let m = fs::metadata(&sock).unwrap();
    assert_eq!(
        (m.uid(), m.gid(), m.mode() & 0o777),
        (uid, front_gid, 0o660),
        "the app's, connectable by the front end's group"
    );
    // The app keeps the usual umask (022): its own files are writable by
    // nobody else.
    let status = fs::read_to_string(format!("/proc/{}/status", v["pid"])).unwrap();
    assert_eq!(field_str(&status, "Umask"), "0022");
    // Another tenant cannot even reach it.
    let (_, _) = ensure_user(USER_B);
    let out = run_as(
        USER_B,
        &[
            PYTHON,
            "-c",
            &format!(
                "import socket; s = socket.socket(socket.AF_UNIX); s.connect({:?}); print('connected')",
                sock.to_str().unwrap()
            ),
        ],
    );
    assert!(out.contains("PermissionError"), "{out}");
}

#[test]
fn a_port_taken_by_another_uid_is_refused() {
    require_root();
    let (uid, gid) = user_a();
    let (uid_b, _) = ensure_user(USER_B);
    let dir = Dir::new();
    let home = Home::with_app(&dir, "home-a", USER_A, (uid, gid));
    let s = start_self_bound(&dir, &home, "port", "wait", "start_timeout = \"20s\"");
    let addr = s.addr();
    let pending = std::thread::spawn(move || get_host(addr, "a.test", "/py/"));
    // The app got its port and has not bound it; another tenant takes it.
    let port_file = home.join("app/port.txt");
    assert!(
        eventually(Duration::from_secs(10), || port_file.exists()),
        "the app did not start\n{}",
        s.output()
    );
    let port = fs::read_to_string(&port_file).unwrap();
    let hijack = format!(
        "import socket\ns = socket.socket()\n# Like any server (and the app): a port some outgoing connection\n# used lately is fine.\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('127.0.0.1', {port}))\ns.listen()\nprint('ready', flush=True)\nwhile True:\n    c, _ = s.accept()\n    c.recv(65536)\n    c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 8\\r\\n\\r\\nHIJACKED')\n    c.close()\n"
    );
    let mut thief = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={USER_B}"),
            &format!("--regid={USER_B}"),
            "--init-groups",
            PYTHON,
            "-c",
            &hijack,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(thief.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(
        line.trim(),
        "ready",
        "the other user could not take the port"
    );
    let r = pending.join().unwrap();
    let _ = thief.kill();
    let _ = thief.wait();
    assert_eq!(r.status, 502, "{r:?}\n{}", s.output());
    assert!(!r.text().contains("HIJACKED"), "{r:?}");
    assert!(
        s.wait_output(
            &format!("belongs to uid {uid_b}, not to the app's uid {uid}"),
            Duration::from_secs(5)
        ),
        "{}",
        s.output()
    );
}

#[test]
fn one_process_serves_concurrent_requests_up_to_its_concurrency() {
    require_root();
    let dir = Dir::new();
    let home = Home::with_app(&dir, "home-a", USER_A, user_a());
    let s = start_self_bound(
        &dir,
        &home,
        "port",
        "threaded",
        "max_processes = 1\nconcurrency = 3",
    );
    let addr = s.addr();
    // Three requests that the app answers only when all three are in it at
    // once: one process must take them together.
    let runs: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(move || get_host(addr, "a.test", "/py/barrier")))
        .collect();
    let pids: BTreeSet<String> = runs
        .into_iter()
        .map(|r| {
            let r = r.join().unwrap();
            assert_eq!(r.status, 200, "{r:?}");
            r.json()["pid"].to_string()
        })
        .collect();
    assert_eq!(pids.len(), 1, "one process: {pids:?}\n{}", s.output());
}
