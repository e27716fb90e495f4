//! Rolling restarts (issue 9, item 4), as root with real users, Debian's
//! php-cgi as a FastCGI app and a socket-activated Python HTTP app: a
//! restart triggered by a touched program, by `tmp/restart.txt` and by a
//! reload that changed the app's definition, each under constant load
//! (clients on keep-alive and on new connections) without one failed
//! request, every request sent after the first answer of the new program
//! answered by the new program, the old processes gone; a failed deploy (a
//! program that exits at once, one that never accepts) that keeps the old
//! processes serving and is reported in the tenant's error log, berth's log
//! and the status page; an old process that ignores SIGTERM and holds a
//! request past `stop_timeout` killed; `stop_timeout` read and bounded.
mod common;
use common::apps::*;
use common::*;

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PHP: &str = "/usr/bin/php-cgi";

/// The PHP page: the version its php-cgi was started with.
const VERSION_PHP: &str = "<?php echo 'version=', getenv('VERSION'), \"\\n\";\n";

/// A wrapper around php-cgi that starts it with `VERSION` (a program of
/// the tenant's own, as a deploy would replace it).
fn php_wrapper(version: &str) -> String {
    format!("#!/bin/sh\nexport VERSION={version}\nexec /usr/bin/php-cgi \"$@\"\n")
}

/// A socket-activated HTTP/1.1 app (stdlib only), one connection at a time.
/// It answers `version=V` and its pid; V is `@VERSION@` as the template is
/// filled in, or, left empty, what `version.txt` in its directory said
/// when it started. `.../slow?s=N` answers after N seconds (also to a
/// `POST`, which berth never sends twice). With `IGNORE_TERM` set it
/// ignores SIGTERM; with `START_DELAY` it sleeps that many seconds after
/// reading its version, before it accepts.
const APP_PY: &str = r#"#!/usr/bin/python3
import http.server, os, signal, socket, sys, time, urllib.parse

VERSION = "@VERSION@" or open("version.txt").read().strip()
if os.environ.get("IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(float(os.environ.get("START_DELAY", "0")))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def address_string(self):
        return "unix"

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path.endswith("/slow"):
            q = dict(urllib.parse.parse_qsl(url.query))
            time.sleep(float(q.get("s", "1")))
        body = ("version=%s\npid=%d\n" % (VERSION, os.getpid())).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET


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

fn py_app(version: &str) -> String {
    APP_PY.replace("@VERSION@", version)
}

/// Deploys `contents` to `rel` under the home as a deploy tool does: a new
/// file of the tenant's (0755), renamed over the old one.
fn deploy(home: &Home, rel: &str, contents: &str) {
    let tmp = format!("{rel}.new");
    let new = home.write(&tmp, contents, 0o755);
    std::os::unix::fs::chown(&new, Some(home.uid), Some(home.gid)).unwrap();
    fs::rename(&new, home.join(rel)).unwrap();
}

/// `touch DIR/tmp/restart.txt`, as the tenant.
fn touch_restart_txt(home: &Home, dir: &str) {
    let path = home.join(&format!("{dir}/tmp/restart.txt"));
    let out = run_as(home.user, &["touch", path.to_str().unwrap()]);
    assert!(path.exists(), "touch as {}: {out}", home.user);
}

fn error_log(s: &Server, tenant: &str) -> String {
    fs::read_to_string(s.log_dir.join(tenant).join("error.log")).unwrap_or_default()
}

/// Waits until berth's output contains `needle`; fails with the output.
fn expect_output(s: &Server, needle: &str, within: Duration) {
    assert!(
        s.wait_output(needle, within),
        "no {needle:?} in berth's output within {within:?}:\n{}",
        s.output()
    );
}

// ---------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------

/// One request of the load: when it was sent, when its answer was read,
/// and the version that answered (or why it failed).
#[derive(Debug)]
struct Sample {
    sent: Instant,
    done: Instant,
    version: Result<String, String>,
}

/// Clients sending `GET path` to `host` one request after another until
/// stopped: two on keep-alive connections, one on a new connection per
/// request.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    clients: Vec<JoinHandle<Vec<Sample>>>,
}

impl Load {
    fn start(addr: SocketAddr, host: &'static str, path: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let clients = [true, true, false]
            .into_iter()
            .map(|keep_alive| {
                let (stop, done) = (stop.clone(), done.clone());
                std::thread::spawn(move || client(addr, host, path, keep_alive, &stop, &done))
            })
            .collect();
        Load {
            stop,
            done,
            clients,
        }
    }

    /// Requests answered (or failed) so far.
    fn count(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Waits until `n` more requests have been made. Generous: only a
    /// berth that stopped answering takes minutes for a few hundred.
    fn wait_for(&self, n: u64) {
        let target = self.count() + n;
        assert!(
            eventually(Duration::from_secs(180), || self.count() >= target),
            "the load made {} of {target} requests",
            self.count()
        );
    }

    fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all: Vec<Sample> = self
            .clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        all.sort_by_key(|s| s.sent);
        all
    }
}

fn client(
    addr: SocketAddr,
    host: &str,
    path: &str,
    keep_alive: bool,
    stop: &AtomicBool,
    done: &AtomicU64,
) -> Vec<Sample> {
    let mut conn = None;
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let version = request(&mut conn, addr, host, path, keep_alive);
        out.push(Sample {
            sent,
            done: Instant::now(),
            version,
        });
        done.fetch_add(1, Ordering::Relaxed);
    }
    out
}

/// One `GET` on `conn` (a new connection if there is none): the version
/// that answered, or why the request failed (anything but a whole 200).
fn request(
    conn: &mut Option<TcpStream>,
    addr: SocketAddr,
    host: &str,
    path: &str,
    keep_alive: bool,
) -> Result<String, String> {
    let result = exchange_one(conn, addr, host, path, keep_alive);
    if result.is_err() {
        *conn = None;
    }
    let resp = result?;
    if resp.status != 200 {
        return Err(format!("status {}: {}", resp.status, resp.text()));
    }
    resp.vars()
        .get("version")
        .cloned()
        .ok_or_else(|| format!("no version in {resp:?}"))
}

fn exchange_one(
    conn: &mut Option<TcpStream>,
    addr: SocketAddr,
    host: &str,
    path: &str,
    keep_alive: bool,
) -> Result<Resp, String> {
    if conn.is_none() {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        *conn = Some(s);
    }
    let s = conn.as_mut().unwrap();
    let close = if keep_alive {
        ""
    } else {
        "Connection: close\r\n"
    };
    let head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{close}\r\n");
    s.write_all(head.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if find(&raw, b"\r\n\r\n").is_some() {
            let (r, _) = parse_one(&raw);
            let framed = r.chunked || r.header("content-length").is_some();
            if framed && r.complete {
                if !keep_alive
                    || r.header("connection")
                        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                {
                    *conn = None;
                }
                return Ok(r);
            }
        }
        match s.read(&mut buf) {
            Ok(0) => {
                // A close-delimited body ends here; anything else was cut.
                if find(&raw, b"\r\n\r\n").is_some() {
                    let r = parse(&raw);
                    if !r.chunked && r.header("content-length").is_none() {
                        *conn = None;
                        return Ok(r);
                    }
                }
                return Err(format!(
                    "closed after {} bytes: {:?}",
                    raw.len(),
                    String::from_utf8_lossy(&raw)
                ));
            }
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read after {} bytes: {e}", raw.len())),
        }
    }
}

/// Checks a load run around a restart from `old` to `new`: no request
/// failed; every answer is one of the two versions, `old` for every
/// request sent before `trigger`; every request sent after the first
/// answer of `new` was read got `new` (the front end switched at once);
/// and some hundreds came after it.
fn check_switch(samples: &[Sample], trigger: Instant, old: &str, new: &str, output: &str) {
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.version.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, the first: {:?}\nberth:\n{output}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(5)]
    );
    let version = |s: &Sample| s.version.as_deref().unwrap().to_string();
    for s in samples.iter().filter(|s| s.sent < trigger) {
        assert_eq!(version(s), old, "{s:?}");
    }
    let first_new = samples
        .iter()
        .filter(|s| version(s) == new)
        .map(|s| s.done)
        .min()
        .unwrap_or_else(|| panic!("no answer of version {new}\nberth:\n{output}"));
    let after: Vec<&Sample> = samples.iter().filter(|s| s.sent > first_new).collect();
    for s in &after {
        assert_eq!(
            version(s),
            new,
            "sent after the first answer of {new}: {s:?}"
        );
    }
    for s in samples {
        assert!(
            version(s) == old || version(s) == new,
            "neither {old} nor {new}: {s:?}"
        );
    }
    assert!(
        after.len() >= 500,
        "{} requests after the switch",
        after.len()
    );
    eprintln!(
        "{} requests, {} after the switch, none failed",
        samples.len(),
        after.len()
    );
}

/// The pids of app `tenant/app` (listener at `fd`) of the berth `s`.
fn pids(s: &Server, tenant: &str, app: &str, fd: u32) -> BTreeSet<u32> {
    app_procs(s.pid(), tenant, app, fd).into_iter().collect()
}

/// Asserts that none of `old` is alive any more (retired once their
/// requests ended; generous for a loaded machine).
fn assert_gone(old: &BTreeSet<u32>, s: &Server) {
    let gone = eventually(Duration::from_secs(30), || {
        old.iter().all(|&pid| !alive(pid))
    });
    assert!(gone, "old processes {old:?} still run:\n{}", s.output());
}

// ---------------------------------------------------------------------------
// Restarts under load
// ---------------------------------------------------------------------------

/// Tenant `ta` (a.test) whose `*.php` go to app `php`, which runs
/// `command` with `pool` settings. These tests tell old processes from new
/// ones by the pid they report: no view of their own ([`HOST_PIDS`]).
fn php_tenant(home: &Home, command: &str, pool: &str) -> String {
    format!(
        r#"{site}
[[tenant.ta.site.route]]
path = "/"
extensions = ["php"]
app = "php"
{app}{HOST_PIDS}"#,
        site = tenant_site("ta", home, "a.test"),
        app = app_table("ta", "php", "fastcgi", &home.public(), &[command], pool),
    )
}

/// Tenant `ta` (a.test) with the Python app `py` at `/py/` (its directory
/// `home/app`), with `pool` settings; no view of its own, as above.
fn py_tenant(home: &Home, pool: &str) -> String {
    let program = home.join("app/app.py");
    format!(
        r#"{site}
[[tenant.ta.site.route]]
path = "/py/"
app = "py"
{app}{HOST_PIDS}"#,
        site = tenant_site("ta", home, "a.test"),
        app = app_table(
            "ta",
            "py",
            "http",
            &home.join("app"),
            &[program.to_str().unwrap()],
            pool
        ),
    )
}

#[test]
fn touching_a_php_apps_program_restarts_it_under_load_without_a_failed_request() {
    require_root();
    const USER: &str = "berth-trolla";
    let dir = Dir::new();
    let home = Home::new(&dir, "home", USER, ensure_user(USER));
    home.write("public/v.php", VERSION_PHP, 0o644);
    let wrapper = home.write("bin/php.sh", php_wrapper("1"), 0o755);
    // Every process the pool may have runs before the deploy, and none is
    // replaced for max_requests: one started after the deploy would run
    // the new program before the switch.
    let tenants = php_tenant(
        &home,
        wrapper.to_str().unwrap(),
        "min_processes = 3\nmax_processes = 3\nmax_requests = 0",
    );
    let s = start_tenants(&dir, &[&home], &tenants);
    let load = Load::start(s.addr(), "a.test", "/v.php");
    load.wait_for(1000);
    let old = pids(&s, "ta", "php", 0);
    assert!(!old.is_empty(), "php-cgi runs:\n{}", s.output());
    let trigger = Instant::now();
    deploy(&home, "bin/php.sh", &php_wrapper("2"));
    expect_output(
        &s,
        "app ta/php: restarted (its program",
        Duration::from_secs(60),
    );
    load.wait_for(1000);
    let samples = load.finish();
    check_switch(&samples, trigger, "1", "2", &s.output());
    assert_gone(&old, &s);
    let log = error_log(&s, "ta");
    assert!(log.contains("restarted (its program"), "{log}");
}

#[test]
fn touching_restart_txt_restarts_an_http_app_under_load_without_a_failed_request() {
    require_root();
    const USER: &str = "berth-trollb";
    let dir = Dir::new();
    let home = Home::new(&dir, "home", USER, ensure_user(USER));
    home.write("app/app.py", py_app(""), 0o755);
    home.write("app/version.txt", "1\n", 0o644);
    home.write("app/tmp/.keep", "", 0o644);
    // (As above: no process started later reads the new version.txt.)
    let pool = "min_processes = 2\nmax_processes = 2\nmax_requests = 0";
    let s = start_tenants(&dir, &[&home], &py_tenant(&home, pool));
    let load = Load::start(s.addr(), "a.test", "/py/v");
    load.wait_for(1000);
    let old = pids(&s, "ta", "py", 3);
    assert!(!old.is_empty(), "the app runs:\n{}", s.output());
    // The deploy: new data, then the touch (the program is the same).
    home.write("app/version.txt", "2\n", 0o644);
    let trigger = Instant::now();
    touch_restart_txt(&home, "app");
    expect_output(
        &s,
        "tmp/restart.txt was touched): ",
        Duration::from_secs(60),
    );
    expect_output(&s, "app ta/py: restarted (", Duration::from_secs(60));
    load.wait_for(1000);
    let samples = load.finish();
    check_switch(&samples, trigger, "1", "2", &s.output());
    assert_gone(&old, &s);
}

#[test]
fn a_reload_that_changes_an_apps_env_restarts_it_under_load_without_a_failed_request() {
    require_root();
    const USER: &str = "berth-trollc";
    let dir = Dir::new();
    let home = Home::new(&dir, "home", USER, ensure_user(USER));
    home.write("public/v.php", VERSION_PHP, 0o644);
    // Processes started on demand while the restart is under way run the
    // old definition, and are replaced too.
    let pool = |v: &str| format!("max_processes = 3\nenv = {{ VERSION = \"{v}\" }}");
    let s = start_tenants(&dir, &[&home], &php_tenant(&home, PHP, &pool("1")));
    let load = Load::start(s.addr(), "a.test", "/v.php");
    load.wait_for(1000);
    let old = pids(&s, "ta", "php", 0);
    assert!(!old.is_empty(), "php-cgi runs:\n{}", s.output());
    // Only the app's env changes.
    let config = fs::read_to_string(&s.config).unwrap();
    let changed = config.replace("VERSION = \"1\"", "VERSION = \"2\"");
    assert_ne!(config, changed);
    fs::write(&s.config, changed).unwrap();
    let trigger = Instant::now();
    s.signal(nix::sys::signal::Signal::SIGHUP);
    expect_output(
        &s,
        "app ta/php: restarted (its configuration changed)",
        Duration::from_secs(60),
    );
    load.wait_for(1000);
    let samples = load.finish();
    check_switch(&samples, trigger, "1", "2", &s.output());
    assert_gone(&old, &s);
}

// ---------------------------------------------------------------------------
// Deployment errors
// ---------------------------------------------------------------------------

/// A program that fails at once (its message goes to the tenant's log).
const EXITS: &str = "#!/bin/sh\necho 'broken deploy: missing module' >&2\nexit 3\n";
/// A program that runs and never accepts a connection.
const NEVER_ACCEPTS: &str = "#!/bin/sh\nexec sleep 600\n";

#[test]
fn a_failed_deploy_keeps_the_old_processes_serving_and_is_reported() {
    require_root();
    const USER: &str = "berth-trolld";
    let (uid, gid) = ensure_user(USER);
    let dir = Dir::new();
    let home = Home::new(&dir, "home", USER, (uid, gid));
    home.write("app/app.py", py_app("1"), 0o755);
    // Every process the pool may have runs all along, and none is replaced
    // for max_requests: no process is started from a broken program but
    // by the restarts.
    let tenants = py_tenant(
        &home,
        "min_processes = 2\nmax_processes = 2\nmax_requests = 0\nstart_timeout = \"3s\"",
    );
    home.own();
    let admin_port = free_port();
    let (block, port, tls_port) = server_block(
        &dir,
        &format!(
            "keepalive_timeout = \"5s\"\ndrain_timeout = \"5s\"\nmeter_interval = \"1s\"\n\
             admin_listen = \"127.0.0.1:{admin_port}\""
        ),
    );
    let s = Server::start(&dir, &format!("{block}{tenants}"), port, tls_port);
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let load = Load::start(s.addr(), "a.test", "/py/v");
    load.wait_for(500);
    let serving = pids(&s, "ta", "py", 3);
    assert_eq!(serving.len(), 2, "{}", s.output());

    // 1. The new program exits at once.
    deploy(&home, "app/app.py", EXITS);
    expect_output(&s, "exited (exit status: 3)", Duration::from_secs(60));
    expect_output(
        &s,
        "before it accepted a connection; the old processes keep serving",
        Duration::from_secs(30),
    );
    load.wait_for(300);
    let log = error_log(&s, "ta");
    assert!(log.contains("broken deploy: missing module"), "{log}");
    assert!(
        log.contains("[py] restart (its program") && log.contains("failed: new process"),
        "{log}"
    );

    // 2. The new program never accepts: given up at start_timeout.
    deploy(&home, "app/app.py", NEVER_ACCEPTS);
    expect_output(
        &s,
        "did not accept a connection within start_timeout (3s); the old processes keep serving",
        Duration::from_secs(60),
    );
    load.wait_for(300);
    let log = error_log(&s, "ta");
    assert!(
        log.contains("did not accept a connection within start_timeout (3s)"),
        "{log}"
    );
    // Its processes were stopped.
    let sleeping = || {
        processes_of(uid)
            .into_iter()
            .filter(|&p| cmdline(p).contains("sleep 600"))
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(Duration::from_secs(20), || sleeping().is_empty()),
        "left running: {:?}",
        sleeping()
    );
    // The status page says what went wrong last.
    let mut problem = String::new();
    let shown = eventually(Duration::from_secs(20), || {
        let (raw, _) = exchange(
            admin,
            "GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            &[],
            Duration::from_secs(10),
        );
        let v = parse(&raw).json();
        problem = v["tenants"][0]["apps"][0]["last_problem"]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        problem.contains("did not accept a connection")
    });
    assert!(shown, "last_problem: {problem:?}");
    assert_eq!(pids(&s, "ta", "py", 3), serving, "the same processes serve");

    // 3. A good program: the restart goes through.
    let trigger = Instant::now();
    deploy(&home, "app/app.py", &py_app("3"));
    expect_output(&s, "app ta/py: restarted (", Duration::from_secs(60));
    load.wait_for(500);
    let samples = load.finish();
    check_switch(&samples, trigger, "1", "3", &s.output());
    assert_gone(&serving, &s);
}

// ---------------------------------------------------------------------------
// Old processes that do not finish
// ---------------------------------------------------------------------------

#[test]
fn an_old_process_that_ignores_sigterm_and_holds_a_request_past_stop_timeout_is_killed() {
    require_root();
    const USER: &str = "berth-trolle";
    let dir = Dir::new();
    let home = Home::new(&dir, "home", USER, ensure_user(USER));
    home.write("app/app.py", py_app(""), 0o755);
    home.write("app/version.txt", "1\n", 0o644);
    home.write("app/tmp/.keep", "", 0o644);
    let pool = "min_processes = 1\nmax_processes = 1\nstop_timeout = \"2s\"\n\
                env = { IGNORE_TERM = \"1\" }";
    let s = start_tenants(&dir, &[&home], &py_tenant(&home, pool));
    let first = get_host(s.addr(), "a.test", "/py/v");
    assert_eq!(first.status, 200, "{first:?}");
    let old_pid: u32 = first.vars()["pid"].parse().unwrap();
    // A request the old process holds for a minute (a POST: when its
    // process goes, berth cannot send it to another).
    let addr = s.addr();
    let slow = std::thread::spawn(move || {
        let head = "POST /py/slow?s=60 HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\n\
                    Connection: close\r\n\r\n";
        let (raw, _) = exchange(addr, head, &[], Duration::from_secs(120));
        (!raw.is_empty()).then(|| parse(&raw))
    });
    std::thread::sleep(Duration::from_secs(1));
    home.write("app/version.txt", "2\n", 0o644);
    touch_restart_txt(&home, "app");
    expect_output(&s, "app ta/py: restarted (", Duration::from_secs(60));
    let next = get_host(s.addr(), "a.test", "/py/v");
    assert_eq!(next.vars()["version"], "2", "{next:?}");
    assert_ne!(next.vars()["pid"], old_pid.to_string());
    expect_output(
        &s,
        "was still serving after stop_timeout (2s): stopped",
        Duration::from_secs(30),
    );
    expect_output(&s, "ignored SIGTERM; killing it", Duration::from_secs(30));
    assert!(
        eventually(Duration::from_secs(20), || !alive(old_pid)),
        "the old process {old_pid} still runs"
    );
    // Cut when its process was killed: 502, not the app's answer.
    let held = slow.join().unwrap().expect("an answer to the held request");
    assert_eq!(held.status, 502, "{held:?}");
    let log = error_log(&s, "ta");
    assert!(
        log.contains("was still serving after stop_timeout (2s): stopped"),
        "{log}"
    );
    // The new process serves on.
    assert_eq!(get_host(s.addr(), "a.test", "/py/v").vars()["version"], "2");
}

// ---------------------------------------------------------------------------
// A restart asked for during one
// ---------------------------------------------------------------------------

#[test]
fn a_restart_asked_for_during_one_follows_it_and_the_last_deploy_serves() {
    require_root();
    const USER: &str = "berth-trollg";
    let dir = Dir::new();
    let home = Home::new(&dir, "home", USER, ensure_user(USER));
    home.write("app/app.py", py_app(""), 0o755);
    home.write("app/version.txt", "1\n", 0o644);
    home.write("app/tmp/.keep", "", 0o644);
    // Each process reads its version, then takes 4 s to accept.
    let pool = "min_processes = 1\nmax_processes = 1\nmax_requests = 0\n\
                env = { START_DELAY = \"4\" }";
    let s = start_tenants(&dir, &[&home], &py_tenant(&home, pool));
    let first = get_host(s.addr(), "a.test", "/py/v");
    assert_eq!(first.vars()["version"], "1", "{first:?}");
    home.write("app/version.txt", "2\n", 0o644);
    touch_restart_txt(&home, "app");
    expect_output(&s, "app ta/py: restarting (", Duration::from_secs(30));
    // The new process has read version 2 (generous: it reads it first
    // thing) and waits; another deploy comes meanwhile.
    std::thread::sleep(Duration::from_secs(1));
    home.write("app/version.txt", "3\n", 0o644);
    touch_restart_txt(&home, "app");
    expect_output(
        &s,
        "was touched) asked for while one is under way: it follows",
        Duration::from_secs(30),
    );
    let restarted = || s.output().matches("app ta/py: restarted (").count();
    assert!(
        eventually(Duration::from_secs(60), || restarted() == 2),
        "{}",
        s.output()
    );
    let last = get_host(s.addr(), "a.test", "/py/v");
    assert_eq!(last.vars()["version"], "3", "{last:?}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(restarted(), 2, "no restart more:\n{}", s.output());
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

#[test]
fn stop_timeout_is_read_and_bounded() {
    let dir = Dir::new();
    ensure_user("berth-trollf");
    let (block, _, _) = server_block(&dir, "");
    let config = format!(
        "{block}\n[defaults.app]\nstop_timeout = \"2h\"\n\n[tenant.ta]\nuser = \"berth-trollf\"\n\n\
         [tenant.ta.app.a]\nprotocol = \"http\"\ncommand = [\"/bin/true\"]\ndir = \"/tmp\"\n\
         stop_timeout = \"soon\"\n"
    );
    let path = dir.write("berth.toml", &config);
    let line = |key: &str| config.lines().position(|l| l.starts_with(key)).unwrap() + 1;
    let out = std::process::Command::new(BERTH)
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let file = path.display();
    let too_long = format!(
        "{file}:{}: defaults.app.stop_timeout: \"2h\" is too long: at most \"1h\"",
        line("stop_timeout = \"2h\"")
    );
    assert!(text.contains(&too_long), "{too_long}\n{text}");
    let not_a_duration = format!(
        "{file}:{}: tenant.ta.app.a.stop_timeout: \"soon\" is not a duration",
        line("stop_timeout = \"soon\"")
    );
    assert!(text.contains(&not_a_duration), "{not_a_duration}\n{text}");
}

/// A socket-activated HTTP app in Perl that, like many small servers, does
/// not ignore SIGPIPE, and answers a connection that sent nothing with a
/// 400 a moment later (after reading its end).
const APP_PL_PIPE: &str = r#"#!/usr/bin/perl
use strict;
use warnings;
open(my $listener, '+<&=', 3) or die "fd 3: $!";
my $version = '@VERSION@';
while (1) {
    accept(my $c, $listener) or next;
    my $head = '';
    while ($head !~ /\r\n\r\n/) {
        sysread($c, $head, 4096, length $head) or last;
    }
    if ($head eq '') {
        select(undef, undef, undef, 0.3);
        syswrite($c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        close $c;
        next;
    }
    my $body = "version=$version\n";
    syswrite($c, "HTTP/1.1 200 OK\r\nContent-Length: " . length($body) . "\r\nConnection: close\r\n\r\n$body");
    close $c;
}
"#;

#[test]
fn a_rolling_restart_does_not_kill_an_app_that_answers_the_readiness_probe_late() {
    require_root();
    const USER: &str = "berth-trolle";
    let dir = Dir::new();
    let home = Home::new(&dir, "home", USER, ensure_user(USER));
    home.write("app/app.py", APP_PL_PIPE.replace("@VERSION@", "1"), 0o755);
    let s = start_tenants(
        &dir,
        &[&home],
        &py_tenant(
            &home,
            "min_processes = 1\nmax_processes = 1\nmax_requests = 0",
        ),
    );
    let get = || get_host(s.addr(), "a.test", "/py/v");
    assert!(
        eventually(Duration::from_secs(20), || get()
            .text()
            .contains("version=1")),
        "{}",
        s.output()
    );
    // The probe's connection sends nothing; the app answers it 0.3 s later.
    // Closed by then, it was EPIPE, and SIGPIPE ended every new process: the
    // restart failed.
    deploy(&home, "app/app.py", &APP_PL_PIPE.replace("@VERSION@", "2"));
    expect_output(&s, "app ta/py: restarted (", Duration::from_secs(60));
    // (It answers the probe 0.3 s after reading its end.)
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !s.output().contains("SIGPIPE"),
        "a new process died of SIGPIPE:\n{}",
        s.output()
    );
    assert!(
        eventually(Duration::from_secs(20), || get()
            .text()
            .contains("version=2")),
        "{}",
        s.output()
    );
}
