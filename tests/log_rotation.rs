//! Built-in log rotation (issue 9, item 5): `[server] log_rotate` and
//! `log_keep`. Real tenants, real requests through a real client, real
//! apps writing to the tenant's error log, the files read back with gzip:
//! under load every line is in exactly one file, `log_keep` drops the
//! oldest, daily rotation comes at local midnight (berth is given a `TZ`
//! in which midnight is seconds away), nothing planted in a log directory
//! is followed, and no tenant reads another's logs.
mod common;
use common::apps::*;
use common::*;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const USER_A: &str = "berth-trota";
const USER_B: &str = "berth-trotb";
const USER_C: &str = "berth-trotc";
const PHP: &str = "/usr/bin/php-cgi";

/// A tenant with a static site: its name, user and host.
type Static = (&'static str, &'static str, &'static str);

/// `[server]` lines every test here starts from (plus its rotation keys).
fn server_extra(rotate: &str) -> String {
    format!("keepalive_timeout = \"5s\"\ndrain_timeout = \"5s\"\n{rotate}")
}

/// Homes (an index page each) and `[tenant.*]` tables for `tenants`.
fn static_tenants(dir: &Dir, tenants: &[Static]) -> (Vec<Home>, String) {
    let mut homes = Vec::new();
    let mut tables = String::new();
    for &(name, user, host) in tenants {
        let home = Home::new(dir, &format!("home-{name}"), user, ensure_user(user));
        home.write("public/index.html", format!("{name}\n"), 0o644);
        tables.push_str(&tenant_site(name, &home, host));
        homes.push(home);
    }
    (homes, tables)
}

/// berth with static sites for `tenants` and `rotate` in `[server]`.
fn start_static(dir: &Dir, rotate: &str, tenants: &[Static]) -> Server {
    let (homes, tables) = static_tenants(dir, tenants);
    for home in &homes {
        home.own();
    }
    let (block, port, tls_port) = server_block(dir, &server_extra(rotate));
    Server::start(dir, &format!("{block}{tables}"), port, tls_port)
}

/// The old files of `base` in `dir`: `base.N` and `base.N.gz`.
fn rotated(dir: &Path, base: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.strip_prefix(base)
                        .and_then(|r| r.strip_prefix('.'))
                        .is_some_and(|r| r.trim_end_matches(".gz").parse::<u32>().is_ok())
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Every old file is compressed but `.1`, and no compression is half-done.
fn settled(dir: &Path, base: &str) -> bool {
    rotated(dir, base)
        .iter()
        .all(|n| n == &format!("{base}.1") || n.ends_with(".gz"))
        && !dir.join(format!(".{base}.gz.tmp")).exists()
}

/// Waits (a generous minute: compression runs at a low priority on a
/// loaded machine) until [`settled`].
fn wait_settled(s: &Server, dir: &Path, base: &str) {
    assert!(
        eventually(Duration::from_secs(60), || settled(dir, base)),
        "old logs not compressed: {:?}\n{}",
        rotated(dir, base),
        s.output()
    );
}

/// The text of a log file, gunzipped by gzip(1) if it ends in `.gz`.
fn read_log(path: &Path) -> String {
    if path.extension().is_some_and(|e| e == "gz") {
        let out = Command::new("gzip")
            .arg("-dc")
            .arg(path)
            .output()
            .expect("gzip");
        assert!(out.status.success(), "gzip -dc {}: {out:?}", path.display());
        String::from_utf8(out.stdout).unwrap()
    } else {
        fs::read_to_string(path).unwrap()
    }
}

/// Every line of the log `base` in `dir`: the current file and every old
/// one, oldest first.
fn every_line(dir: &Path, base: &str) -> Vec<String> {
    let mut files = rotated(dir, base);
    let number =
        |n: &String| -> u32 { n[base.len() + 1..].trim_end_matches(".gz").parse().unwrap() };
    files.sort_by_key(|n| std::cmp::Reverse(number(n)));
    files.push(base.to_string());
    files
        .iter()
        .flat_map(|f| {
            read_log(&dir.join(f))
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What an error-log line of the marking apps marks.
fn marker(line: &str) -> Option<&str> {
    line.split("] marker ").nth(1)
}

/// The request path of an access-log line.
fn path_of(line: &str) -> &str {
    line.split('"')
        .nth(1)
        .and_then(|r| r.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("not an access-log line: {line:?}"))
}

/// How often each of `lines`'s keys (by `key`) appears.
fn counts<'a>(
    lines: &'a [String],
    key: impl Fn(&'a str) -> Option<&'a str>,
) -> HashMap<&'a str, usize> {
    let mut seen = HashMap::new();
    for l in lines {
        if let Some(k) = key(l) {
            *seen.entry(k).or_insert(0) += 1;
        }
    }
    seen
}

/// Asserts that every name in `sent` appears exactly once in `seen`, and
/// nothing else does.
fn exactly_once(sent: &[String], seen: &HashMap<&str, usize>, what: &str) {
    let missing: Vec<&String> = sent
        .iter()
        .filter(|p| !seen.contains_key(p.as_str()))
        .collect();
    let twice: Vec<(&&str, &usize)> = seen.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        missing.is_empty() && twice.is_empty(),
        "{what}: {} of {} missing (first: {:?}), {} more than once (first: {:?})",
        missing.len(),
        sent.len(),
        missing.first(),
        twice.len(),
        twice.first()
    );
    assert_eq!(seen.len(), sent.len(), "{what}: lines nobody asked for");
}

/// Every file of a tenant's log directory is root's with the tenant's
/// group, 0640, and the directory 0750.
fn assert_tenant_modes(dir: &Path, gid: u32) {
    let m = fs::metadata(dir).unwrap();
    assert_eq!(
        (m.uid(), m.gid(), m.mode() & 0o7777),
        (0, gid, 0o750),
        "{}",
        dir.display()
    );
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (0, gid, 0o640),
            "{}",
            e.path().display()
        );
    }
}

/// Runs `clients` threads, each asking for unique paths (`/p/T-I`) with its
/// own keep-alive client (every other one over h2c), until `enough` says
/// so (asked every 200 ms with the number answered) or `most` requests
/// were answered. Every answer must be a 404 (a static site without those
/// files). Returns the paths asked for.
fn load(
    s: &Server,
    host: &'static str,
    clients: usize,
    most: usize,
    mut enough: impl FnMut(usize) -> bool,
) -> Vec<String> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let port = s.port;
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                let c = client(t % 2 == 1, None, &[host], port);
                let mut paths = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let path = format!("/p/{t}-{}", paths.len());
                    let r = c
                        .get(format!("http://{host}:{port}{path}"))
                        .send()
                        .unwrap_or_else(|e| panic!("{path}: {e}"));
                    assert_eq!(r.status().as_u16(), 404, "{path}");
                    paths.push(path);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                paths
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let n = done.load(Ordering::Relaxed);
        if enough(n) || n >= most || Instant::now() > deadline {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

/// A few thousand requests from four clients while access.log rotates at
/// 16 KiB: every path is in exactly one of access.log, access.log.1 and
/// the gzipped older files, whatever the front end was writing when each
/// rotation came; the files keep the tenant's group and mode.
#[test]
fn rotation_under_load_keeps_every_access_log_line_exactly_once() {
    require_root();
    let dir = Dir::new();
    let s = start_static(
        &dir,
        "log_rotate = \"16KiB\"\nlog_keep = 1000",
        &[("ta", USER_A, "a.test")],
    );
    let logs = s.log_dir.join("ta");
    let sent = load(&s, "a.test", 4, 40_000, |n| {
        n >= 3000 && rotated(&logs, "access.log").len() >= 3
    });
    let rotations = rotated(&logs, "access.log").len();
    assert!(
        rotations >= 3,
        "{rotations} rotations in {} requests:\n{}",
        sent.len(),
        s.output()
    );
    wait_settled(&s, &logs, "access.log");
    let files = rotated(&logs, "access.log");
    eprintln!(
        "{} requests, {} old files: {files:?}",
        sent.len(),
        files.len()
    );
    assert!(
        files.iter().filter(|f| f.ends_with(".gz")).count() >= 2,
        "{files:?}"
    );
    let lines = every_line(&logs, "access.log");
    exactly_once(&sent, &counts(&lines, |l| Some(path_of(l))), "access log");
    assert_tenant_modes(&logs, ensure_user(USER_A).1);
}

/// A socket-activated HTTP app: `?mark=X` writes "marker X" to its own
/// stderr (which the supervisor reads into the tenant's error log);
/// `?flood=S` writes lines as fast as it can for S seconds.
const MARK_PY: &str = r#"#!/usr/bin/python3
import socket, sys, time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        q = parse_qs(urlparse(self.path).query)
        if "flood" in q:
            end = time.time() + float(q["flood"][0])
            n = 0
            while time.time() < end:
                sys.stderr.write("flood %d %s\n" % (n, "x" * 3000))
                n += 1
        else:
            sys.stderr.write("marker %s\n" % q["mark"][0])
        sys.stderr.flush()
        body = b"ok\n"
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
"#;

/// `mark.php?m=X`: error_log() (a FastCGI STDERR record, which the front
/// end writes to the tenant's error log).
const MARK_PHP: &str = "<?php\nerror_log('marker ' . $_GET['m']);\necho \"ok\\n\";\n";

/// berth with tenant `ta` (a.test): php-cgi for `*.php` ([`MARK_PHP`])
/// and the Python app at `/py/` ([`MARK_PY`]); `extra` in `[server]`.
fn start_marking(dir: &Dir, extra: &str) -> Server {
    let a = Home::new(dir, "home-a", USER_A, ensure_user(USER_A));
    a.write("public/mark.php", MARK_PHP, 0o644);
    let py = a.write("app/mark.py", MARK_PY, 0o755);
    let tenants = format!(
        r#"{site}
[[tenant.ta.site.route]]
path = "/"
extensions = ["php"]
app = "php"

[[tenant.ta.site.route]]
path = "/py/"
app = "py"
{php}{py}"#,
        site = tenant_site("ta", &a, "a.test"),
        php = app_table("ta", "php", "fastcgi", &a.public(), &[PHP], ""),
        py = app_table(
            "ta",
            "py",
            "http",
            &a.join("app"),
            &[py.to_str().unwrap()],
            ""
        ),
    );
    a.own();
    let (block, port, tls_port) = server_block(dir, &server_extra(extra));
    Server::start(dir, &format!("{block}{tenants}"), port, tls_port)
}

/// An app's error log rotates at 16 KiB while two writers fill it: the
/// front end (php-cgi's FastCGI STDERR records) and the supervisor (the
/// Python app's own stderr). Every marker is in exactly one file.
#[test]
fn rotation_keeps_every_line_apps_write_to_the_error_log_exactly_once() {
    require_root();
    let dir = Dir::new();
    let s = start_marking(
        &dir,
        "log_rotate = \"16KiB\"\nlog_keep = 1000\n\
         error_log_rate = 1000000\nerror_log_max = \"1GiB\"",
    );
    let port = s.port;
    let logs = s.log_dir.join("ta");
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = ["php", "py"]
        .into_iter()
        .map(|app| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let c = client(false, None, &["a.test"], port);
                let mut marks = Vec::new();
                while !stop.load(Ordering::Relaxed) && marks.len() < 20_000 {
                    let mark = format!("{app}-{}", marks.len());
                    let url = match app {
                        "php" => format!("http://a.test:{port}/mark.php?m={mark}"),
                        _ => format!("http://a.test:{port}/py/?mark={mark}"),
                    };
                    let r = c.get(&url).send().unwrap_or_else(|e| panic!("{url}: {e}"));
                    assert_eq!(r.status().as_u16(), 200, "{url}");
                    marks.push(mark);
                }
                marks
            })
        })
        .collect();
    let started = Instant::now();
    while !(rotated(&logs, "error.log").len() >= 3 && started.elapsed() > Duration::from_secs(2))
        && started.elapsed() < Duration::from_secs(180)
        && !writers.iter().all(|w| w.is_finished())
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let sent: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let rotations = rotated(&logs, "error.log").len();
    assert!(rotations >= 3, "{rotations} rotations:\n{}", s.output());
    // The supervisor writes what it read of the pipe within a moment.
    assert!(
        eventually(Duration::from_secs(20), || {
            settled(&logs, "error.log")
                && counts(&every_line(&logs, "error.log"), marker).len() >= sent.len()
        }),
        "not every marker arrived ({} sent)",
        sent.len()
    );
    let lines = every_line(&logs, "error.log");
    eprintln!(
        "{} markers, {} error log lines, old files {:?}",
        sent.len(),
        lines.len(),
        rotated(&logs, "error.log")
    );
    exactly_once(&sent, &counts(&lines, marker), "error log");
    // Nothing dropped on the way either.
    assert!(
        !lines.iter().any(|l| l.contains("lines dropped")),
        "dropped lines"
    );
    assert_tenant_modes(&logs, ensure_user(USER_A).1);
}

/// A flooded error log reaches its `error_log_max` long before the size
/// `log_rotate` gives: it rotates there, rather than dropping every line
/// until the next day, and no file of it grows past the cap, so the
/// tenant's error logs hold at most (`log_keep` + 1) × `error_log_max`.
#[test]
fn a_full_error_log_rotates_at_its_cap() {
    require_root();
    let dir = Dir::new();
    let s = start_marking(
        &dir,
        "log_rotate = \"daily or 1GiB\"\nlog_keep = 3\n\
         error_log_rate = 1000000\nerror_log_max = \"64KiB\"",
    );
    let logs = s.log_dir.join("ta");
    let c = client(false, None, &["a.test"], s.port);
    let get = |query: &str| {
        let url = format!("http://a.test:{}/py/?{query}", s.port);
        let r = c.get(&url).send().unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(r.status().as_u16(), 200, "{url}");
    };
    get("flood=2");
    let full = "error log full; dropping until rotation (error_log_max is 64KiB)";
    let rotated_full = || {
        rotated(&logs, "error.log")
            .iter()
            .any(|f| read_log(&logs.join(f)).contains(full))
    };
    assert!(
        eventually(Duration::from_secs(20), rotated_full),
        "the full log was not rotated: {:?}\n{}",
        rotated(&logs, "error.log"),
        s.output()
    );
    // The new file takes lines again.
    assert!(
        eventually(Duration::from_secs(20), || {
            get("mark=after-the-flood");
            fs::read_to_string(logs.join("error.log"))
                .unwrap_or_default()
                .contains("] [ta/py] marker after-the-flood")
        }),
        "{}",
        s.output()
    );
    wait_settled(&s, &logs, "error.log");
    let files = rotated(&logs, "error.log");
    assert!(files.len() <= 3, "{files:?}");
    for f in files
        .iter()
        .map(|f| logs.join(f))
        .chain([logs.join("error.log")])
    {
        let size = read_log(&f).len();
        assert!(size <= (64 << 10) + 200, "{}: {size} bytes", f.display());
    }
}

/// `log_keep = 2` with a 4 KiB threshold: after many rotations only
/// access.log, .1 and .2.gz remain, holding the newest requests without a
/// gap, and the oldest are gone.
#[test]
fn log_keep_drops_the_oldest_files() {
    require_root();
    let dir = Dir::new();
    let s = start_static(
        &dir,
        "log_rotate = \"4KiB\"\nlog_keep = 2",
        &[("ta", USER_A, "a.test")],
    );
    let logs = s.log_dir.join("ta");
    let rotations = || {
        s.output()
            .lines()
            .filter(|l| l.contains("log rotated: ") && l.contains("ta/access.log"))
            .count()
    };
    // One client, so that the lines are in the order sent.
    let sent = load(&s, "a.test", 1, 20_000, |_| rotations() >= 6);
    assert!(
        rotations() >= 6,
        "{} rotations:\n{}",
        rotations(),
        s.output()
    );
    wait_settled(&s, &logs, "access.log");
    assert_eq!(
        rotated(&logs, "access.log"),
        ["access.log.1", "access.log.2.gz"]
    );
    let lines = every_line(&logs, "access.log");
    let kept: Vec<&str> = lines.iter().map(|l| path_of(l)).collect();
    // The newest, in order, none twice: a suffix of what was sent.
    let first = sent.len() - kept.len();
    assert!(first > 0, "nothing was dropped");
    assert_eq!(
        kept,
        sent[first..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    eprintln!("{} sent, the newest {} kept", sent.len(), kept.len());
}

/// The local time zone (POSIX `TZ`) in which local midnight comes `lead`
/// after now; returns it and that instant.
fn tz_with_midnight_in(lead: Duration) -> (String, SystemTime) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let day = 86_400;
    // Local time = UTC + offset; local midnight at now + lead.
    let mut offset = (day - (now + lead.as_secs() as i64) % day) % day;
    if offset > day / 2 {
        offset -= day;
    }
    // POSIX writes the offset west of Greenwich: east is negative.
    let (sign, abs) = if offset >= 0 {
        ('-', offset)
    } else {
        ('+', -offset)
    };
    let tz = format!(
        "LOC{sign}{}:{:02}:{:02}",
        abs / 3600,
        abs / 60 % 60,
        abs % 60
    );
    let midnight = UNIX_EPOCH + Duration::from_secs((now + lead.as_secs() as i64) as u64);
    (tz, midnight)
}

/// Daily rotation, without waiting a day: berth runs in a time zone (its
/// `TZ`, as an admin's machine would have one) in which local midnight is
/// half a minute away. Nothing rotates before it; at it, every log that
/// has lines rotates (ta's access log and berth's own), the empty ones do
/// not (tb's, ta's error log); what was logged before is in `.1`, what
/// comes after the front end switched in the new file.
#[test]
fn daily_rotation_comes_at_local_midnight() {
    require_root();
    let dir = Dir::new();
    let (homes, tables) =
        static_tenants(&dir, &[("ta", USER_A, "a.test"), ("tb", USER_B, "b.test")]);
    for home in &homes {
        home.own();
    }
    let (block, port, _) = server_block(&dir, &server_extra("log_rotate = \"daily\""));
    // Long enough for berth to start on a loaded machine (it takes a
    // second or two): it must see the day before midnight.
    let (tz, midnight) = tz_with_midnight_in(Duration::from_secs(30));
    let s = EnvServer::start(&dir, &format!("{block}{tables}"), port, &[("TZ", &tz)]);
    assert!(
        SystemTime::now() < midnight,
        "berth took more than 30 s to start; the test cannot see it before midnight"
    );
    let logs = dir.join("log");
    let old = logs.join("ta/access.log.1");
    let c = client(false, None, &["a.test"], port);
    let get = |path: &str| {
        let r = c
            .get(format!("http://a.test:{port}{path}"))
            .send()
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(r.status().as_u16(), 404);
    };
    // Before midnight (by the clock read after each answer).
    let mut before = Vec::new();
    let mut answered_before_midnight = Vec::new();
    let deadline = midnight + Duration::from_secs(60);
    while !old.exists() {
        let path = format!("/before-{}", before.len());
        get(&path);
        let after_answer = SystemTime::now();
        let rotated_yet = old.exists();
        if SystemTime::now() < midnight {
            assert!(!rotated_yet, "rotated before midnight\n{}", s.output());
            answered_before_midnight.push(path.clone());
        }
        before.push(path);
        assert!(
            after_answer < deadline,
            "no rotation a minute after midnight ({tz})\n{}",
            s.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!answered_before_midnight.is_empty());
    // Once the front end has its new files, lines go to the new access.log.
    assert!(
        eventually(Duration::from_secs(20), || s.output().lines().any(|l| l
            .starts_with("front:")
            && l.contains("log files reopened"))),
        "{}",
        s.output()
    );
    let after: Vec<String> = (0..5).map(|i| format!("/after-{i}")).collect();
    for path in &after {
        get(path);
    }
    let current = |t: &str| fs::read_to_string(logs.join(t).join("access.log")).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(10), || current("ta")
            .contains("/after-4 ")),
        "{}",
        current("ta")
    );
    let rotated_text = fs::read_to_string(&old).unwrap();
    for path in &answered_before_midnight {
        assert!(
            rotated_text.contains(&format!(" {path} ")),
            "{path} answered before midnight is not in access.log.1"
        );
    }
    for path in &after {
        assert!(current("ta").contains(&format!(" {path} ")), "{path}");
    }
    let sent: Vec<String> = before.iter().chain(&after).cloned().collect();
    let lines = every_line(&logs.join("ta"), "access.log");
    exactly_once(&sent, &counts(&lines, |l| Some(path_of(l))), "access log");
    // One rotation: .1 stays plain (a late writer may still add to it).
    assert_eq!(rotated(&logs.join("ta"), "access.log"), ["access.log.1"]);
    // berth's own log had lines: rotated too. Empty logs are not.
    assert!(logs.join("error.log.1").exists());
    assert!(rotated(&logs.join("ta"), "error.log").is_empty());
    assert!(rotated(&logs.join("tb"), "access.log").is_empty());
    assert!(
        s.output().contains("log rotation: daily turn"),
        "{}",
        s.output()
    );
}

/// Root plants, in tenants' log directories (which the tenants cannot
/// write: checked), a symlink where access.log.1 goes, a hard link to a
/// secret where a file to compress is, and a directory named like a
/// compressed file. berth follows none: each log is not rotated, the
/// reason is logged, the targets are untouched, and lines keep coming to
/// access.log.
#[test]
fn links_and_directories_planted_in_a_log_directory_are_not_followed() {
    require_root();
    let dir = Dir::new();
    let s = start_static(
        &dir,
        "log_rotate = \"4KiB\"\nlog_keep = 5",
        &[
            ("ta", USER_A, "a.test"),
            ("tb", USER_B, "b.test"),
            ("tc", USER_C, "c.test"),
        ],
    );
    let logs = s.log_dir.clone();
    // No tenant can write to its log directory.
    for (t, user) in [("ta", USER_A), ("tb", USER_B), ("tc", USER_C)] {
        let planted = logs.join(t).join("planted");
        let out = run_as(user, &["touch", planted.to_str().unwrap()]);
        assert!(out.contains("Permission denied"), "{user}: {out}");
        assert!(!planted.exists());
        assert_tenant_modes(&logs.join(t), ensure_user(user).1);
    }
    let target = dir.write("target.txt", "precious\n");
    let secret = dir.write("secret.txt", "root's secret\n");
    fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let symlink = logs.join("ta/access.log.1");
    std::os::unix::fs::symlink(&target, &symlink).unwrap();
    let hard = logs.join("tb/access.log.2");
    fs::hard_link(&secret, &hard).unwrap();
    let subdir = logs.join("tc/access.log.2.gz");
    fs::create_dir(&subdir).unwrap();

    let mut sent: HashMap<&str, Vec<String>> = HashMap::new();
    for host in ["a.test", "b.test", "c.test"] {
        let c = client(false, None, &[host], s.port);
        for i in 0..100 {
            let path = format!("/p/{i}");
            let r = c
                .get(format!("http://{host}:{}{path}", s.port))
                .send()
                .unwrap();
            assert_eq!(r.status().as_u16(), 404);
            sent.entry(host).or_default().push(path);
        }
    }
    for (what, path) in [
        ("is a symbolic link", &symlink),
        ("is a file with 2 hard links", &hard),
        ("is a directory", &subdir),
    ] {
        let said = format!("{} {what}, not a log file berth made", path.display());
        assert!(
            s.wait_output(&said, Duration::from_secs(20)),
            "no refusal for {}:\n{}",
            path.display(),
            s.output()
        );
    }
    // Untouched.
    assert_eq!(fs::read_link(&symlink).unwrap(), target);
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
    assert_eq!(fs::read_to_string(&secret).unwrap(), "root's secret\n");
    let m = fs::metadata(&secret).unwrap();
    assert_eq!((m.nlink(), m.uid(), m.mode() & 0o7777), (2, 0, 0o600));
    assert!(subdir.is_dir() && fs::read_dir(&subdir).unwrap().next().is_none());
    for (t, host, planted) in [
        ("ta", "a.test", "access.log.1"),
        ("tb", "b.test", "access.log.2"),
        ("tc", "c.test", "access.log.2.gz"),
    ] {
        let mut names: Vec<String> = fs::read_dir(logs.join(t))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want = vec!["access.log", "error.log", planted];
        want.sort();
        assert_eq!(names, want, "{t}");
        // Not rotated, nothing lost.
        let lines: Vec<String> = fs::read_to_string(logs.join(t).join("access.log"))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        exactly_once(&sent[host], &counts(&lines, |l| Some(path_of(l))), t);
    }
}

/// A tenant reads its own rotated and compressed logs; another tenant can
/// neither list the directory nor read a file of it.
#[test]
fn another_tenant_cannot_read_a_tenants_rotated_logs() {
    require_root();
    let dir = Dir::new();
    let s = start_static(
        &dir,
        "log_rotate = \"4KiB\"\nlog_keep = 5",
        &[("ta", USER_A, "a.test"), ("tb", USER_B, "b.test")],
    );
    let logs = s.log_dir.join("ta");
    let sent = load(&s, "a.test", 1, 20_000, |_| {
        rotated(&logs, "access.log").len() >= 2
    });
    wait_settled(&s, &logs, "access.log");
    let files = rotated(&logs, "access.log");
    assert!(files.contains(&"access.log.2.gz".to_string()), "{files:?}");
    assert_tenant_modes(&logs, ensure_user(USER_A).1);
    let at = |n: &str| -> PathBuf { logs.join(n) };
    let one = at("access.log.1");
    let gz = at("access.log.2.gz");
    // The tenant itself.
    let out = run_as(USER_A, &["cat", one.to_str().unwrap()]);
    assert!(out.contains(" /p/0-"), "{out}");
    let out = run_as(USER_A, &["gzip", "-dc", gz.to_str().unwrap()]);
    assert!(out.contains(" /p/0-"), "{out}");
    assert!(sent.len() > 1);
    let out = run_as(USER_A, &["ls", logs.to_str().unwrap()]);
    assert!(out.contains("access.log.2.gz"), "{out}");
    // Another tenant.
    for argv in [
        vec!["cat", one.to_str().unwrap()],
        vec!["gzip", "-dc", gz.to_str().unwrap()],
        vec!["cat", at("access.log").to_str().unwrap()],
        vec!["ls", logs.to_str().unwrap()],
    ] {
        let out = run_as(USER_B, &argv);
        assert!(out.contains("Permission denied"), "{argv:?}: {out}");
        assert!(!out.contains("/p/0-"), "{argv:?}: {out}");
    }
}
