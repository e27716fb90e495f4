//! FastCGI apps end to end, as root with real users and Debian's php-cgi:
//! who the app runs as and what it sees (invariant 1), who else can reach its
//! socket or its processes (invariant 2), PHP-style routing (DESIGN.md
//! "Routes"), the pool's life (on-demand start, max_processes, max_requests,
//! idle stop, min_processes), backends that crash, die mid-response or start
//! too slowly (invariant 8), suEXEC refusals, streamed 10 MB bodies with the
//! front end's memory flat, and nothing left running after SIGTERM.
mod common;
use common::apps::*;
use common::*;

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Tenant A's user (member of [`GROUP_A`]); used by most tests.
const USER_A: &str = "berth-tappa";
/// Tenant B's user (the other tenant of the isolation test).
const USER_B: &str = "berth-tappb";
/// A user only the SIGTERM test uses, so "no process of this uid is left"
/// cannot be confused by other tests running in parallel.
const USER_C: &str = "berth-tappc";
/// A supplementary group of [`USER_A`].
const GROUP_A: &str = "berth-tappg";
const PHP: &str = "/usr/bin/php-cgi";

// ---------------------------------------------------------------------------
// Users, homes and configuration
// ---------------------------------------------------------------------------

/// Tenant A's user, a member of the supplementary group [`GROUP_A`].
fn user_a() -> (u32, u32) {
    user_in_group(USER_A, GROUP_A)
}

impl Home {
    /// A PHP page under the site root.
    fn page(&self, rel: &str, php: &str) -> PathBuf {
        self.write(&format!("public/{rel}"), php, 0o644)
    }
}

/// `[tenant.T]` with one site `host` rooted at `home/public` whose `*.php`
/// go to app `php`, then `apps` (whole `[tenant.T.app.*]` tables).
fn tenant(t: &str, home: &Home, host: &str, apps: &str) -> String {
    format!(
        r#"{site}
[[tenant.{t}.site.route]]
path = "/"
extensions = ["php"]
app = "php"
{apps}"#,
        site = tenant_site(t, home, host),
    )
}

/// `[tenant.T.app.NAME]`: FastCGI, `command`, working directory the site
/// root, then `extra` lines (pool settings).
fn app(t: &str, name: &str, home: &Home, command: &[&str], extra: &str) -> String {
    app_table(t, name, "fastcgi", &home.public(), command, extra)
}

/// Starts berth with tenant `ta` (a.test) running `/usr/bin/php-cgi` with the
/// pool settings in `pool`.
fn start_a(dir: &Dir, home: &Home, pool: &str) -> Server {
    let apps = app("ta", "php", home, &[PHP], pool);
    // The pool's tests tell processes apart by the pid php-cgi reports.
    let tenants = format!("{}{HOST_PIDS}", tenant("ta", home, "a.test", &apps));
    start_tenants(dir, &[home], &tenants)
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// GETs `path` until it answers 200 (a crashed app may be backing off);
/// returns the last response.
fn get_until_ok(s: &Server, path: &str, within: Duration) -> Resp {
    let deadline = Instant::now() + within;
    loop {
        let r = get(s, path);
        if r.status == 200 || Instant::now() >= deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn error_log(s: &Server, tenant: &str) -> String {
    fs::read_to_string(s.log_dir.join(tenant).join("error.log")).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// 1. Who the app runs as, and what it sees (invariant 1)
// ---------------------------------------------------------------------------

const INFO_PHP: &str = r#"<?php
header('Content-Type: text/plain');
foreach (['SCRIPT_NAME', 'PATH_INFO', 'QUERY_STRING', 'REQUEST_METHOD', 'HTTP_HOST',
          'REMOTE_ADDR', 'SCRIPT_FILENAME', 'DOCUMENT_ROOT', 'REDIRECT_STATUS'] as $k) {
    echo $k, '=', $_SERVER[$k] ?? '(unset)', "\n";
}
foreach (['HOME', 'USER', 'PATH', 'APP_ENV', 'BERTH_TEST_SECRET', 'BERTH_LOG'] as $k) {
    echo 'env_', $k, '=', var_export(getenv($k), true), "\n";
}
echo 'pid=', getmypid(), "\n";
echo 'uid=', posix_getuid(), ' ', posix_geteuid(), "\n";
echo 'gid=', posix_getgid(), ' ', posix_getegid(), "\n";
$g = posix_getgroups(); sort($g);
echo 'groups=', implode(' ', $g), "\n";
echo 'cwd=', getcwd(), "\n";
error_log('berth-apps-test marker ' . getmypid());
"#;

#[test]
fn php_runs_as_the_tenant_with_a_clean_environment() {
    require_root();
    let (uid, gid) = user_a();
    let dir = Dir::new();
    let home = Home::new(&dir, "home-a", USER_A, (uid, gid));
    home.page("x.php", INFO_PHP);
    home.own();
    let (block, port, _) = server(&dir);
    // The process is found as the supervisor's child.
    let config = format!(
        "{block}{}{HOST_PIDS}",
        tenant(
            "ta",
            &home,
            "a.test",
            &app(
                "ta",
                "php",
                &home,
                &[PHP],
                "env = { APP_ENV = \"production\" }"
            ),
        )
    );
    // berth itself has the variable: the app must not inherit it.
    let s = EnvServer::start(&dir, &config, port, &[("BERTH_TEST_SECRET", "1")]);

    let r = get_host(s.addr(), "a.test", "/x.php/extra?a=1&b=two");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    let v = r.vars();
    let home_path = home.path.to_str().unwrap().to_string();
    let expect = [
        ("SCRIPT_NAME", "/x.php"),
        ("PATH_INFO", "/extra"),
        ("QUERY_STRING", "a=1&b=two"),
        ("REQUEST_METHOD", "GET"),
        ("HTTP_HOST", "a.test"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REDIRECT_STATUS", "200"),
        ("env_HOME", &format!("'{home_path}'")),
        ("env_USER", &format!("'{USER_A}'")),
        ("env_PATH", "'/usr/local/bin:/usr/bin:/bin'"),
        ("env_APP_ENV", "'production'"),
        ("env_BERTH_TEST_SECRET", "false"),
        ("env_BERTH_LOG", "false"),
    ];
    for (k, want) in expect {
        assert_eq!(v.get(k).map(String::as_str), Some(want), "{k} in {r:?}");
    }
    let script = fs::canonicalize(home.join("public/x.php")).unwrap();
    let script_seen = fs::canonicalize(&v["SCRIPT_FILENAME"]).unwrap();
    assert_eq!(script_seen, script);
    assert_eq!(
        fs::canonicalize(&v["cwd"]).unwrap(),
        fs::canonicalize(home.public()).unwrap(),
        "working directory = the app's dir"
    );
    assert_eq!(v["uid"], format!("{uid} {uid}"));
    assert_eq!(v["gid"], format!("{gid} {gid}"));

    // What the kernel says about the process that answered.
    let pid: u32 = v["pid"].parse().unwrap();
    let want_groups = groups_of(USER_A);
    assert!(
        want_groups.len() >= 2,
        "{USER_A} should have a supplementary group"
    );
    let st = proc_status(pid).expect("the php-cgi process that answered is alive");
    assert_runs_as(&st, s.child.id(), (uid, gid), &want_groups);
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        cmdline.starts_with(PHP.as_bytes()),
        "{}",
        String::from_utf8_lossy(&cmdline)
    );
    // The whole environment: PATH, HOME, USER, LOGNAME, the app's env and
    // FastCGI's variables, nothing of berth's.
    let names: BTreeSet<String> = environ_of(pid)
        .into_iter()
        .map(|kv| kv.split('=').next().unwrap().to_string())
        .collect();
    let want: BTreeSet<String> = [
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "APP_ENV",
        "PHP_FCGI_MAX_REQUESTS",
        "PHP_FCGI_CHILDREN",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(names, want, "the app's environment");

    // error_log() goes to the tenant's error log, with the app's name.
    let marker = format!("berth-apps-test marker {pid}");
    let log_path = dir.join("log/ta/error.log");
    let mut log = String::new();
    let found = eventually(Duration::from_secs(3), || {
        log = fs::read_to_string(&log_path).unwrap_or_default();
        log.contains(&marker)
    });
    assert!(found, "{marker:?} not in {}:\n{log}", log_path.display());
    let line = log.lines().find(|l| l.contains(&marker)).unwrap();
    assert!(line.contains("[ta/php]"), "no app name in {line:?}");
    assert!(line.starts_with('['), "no timestamp in {line:?}");
}

// ---------------------------------------------------------------------------
// 2. Another tenant cannot reach A's socket or processes (invariant 2)
// ---------------------------------------------------------------------------

const PROBE_PHP: &str = r#"<?php
header('Content-Type: text/plain');
$p = $_GET['sock']; $pid = (int)$_GET['pid'];
$s = @stream_socket_client("unix://$p", $errno, $errstr, 2);
echo 'connect=', $s ? 'ok' : "fail:$errstr", "\n";
echo 'kill=', posix_kill($pid, 0) ? 'ok' : 'fail:' . posix_get_last_error(), "\n";
echo 'list=', @scandir(dirname($p)) === false ? 'fail' : 'ok', "\n";
echo 'uid=', posix_getuid(), "\n";
"#;

const PROBE_PL: &str = r#"
use Socket;
my ($sock, $pid) = @ARGV;
(my $dir = $sock) =~ s{/[^/]*$}{};
socket(my $s, AF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
print "connect=", (connect($s, pack_sockaddr_un($sock)) ? "ok" : "fail:$!"), "\n";
print "list=", (opendir(my $d, $dir) ? "ok" : "fail:$!"), "\n";
print "unlink=", (unlink($sock) ? "ok" : "fail:$!"), "\n";
print "kill0=", (kill(0, $pid) ? "ok" : "fail:$!"), "\n";
print "kill9=", (kill(9, $pid) ? "ok" : "fail:$!"), "\n";
"#;

#[test]
fn another_tenant_cannot_reach_the_socket_or_the_processes() {
    require_root();
    let ids_a = user_a();
    let ids_b = ensure_user(USER_B);
    let (_, front_gid) = ensure_user("berth-tfront");
    let dir = Dir::new();
    let home_a = Home::new(&dir, "home-a", USER_A, ids_a);
    let home_b = Home::new(&dir, "home-b", USER_B, ids_b);
    home_a.page("x.php", "<?php echo getmypid();");
    home_b.page("probe.php", PROBE_PHP);
    let app_a = app("ta", "php", &home_a, &[PHP], "");
    let app_b = app("tb", "php", &home_b, &[PHP], "");
    // B aims at A's host pid (in its own view it could not even see it:
    // tests/isolation.rs).
    let tenants = tenant("ta", &home_a, "a.test", &app_a)
        + &tenant("tb", &home_b, "b.test", &app_b)
        + HOST_PIDS;
    let s = start_tenants(&dir, &[&home_a, &home_b], &tenants);

    let r = get(&s, "/x.php");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    let pid_a: u32 = r.text().trim().parse().unwrap();
    let sock = socket_of(pid_a, 0).expect("A's process has its socket at fd 0");
    // In state/apps; the directory root:front-group 0750, the socket
    // root:front-group 0660.
    assert_app_socket(&dir, &sock, "ta.php.", front_gid);

    // B's user, directly: no connect, no listing, no unlink, no signals.
    let pid = pid_a.to_string();
    let out = run_as(USER_B, &["perl", "-e", PROBE_PL, &sock, &pid]);
    for want in [
        "connect=fail:Permission denied",
        "list=fail:Permission denied",
        "unlink=fail:Permission denied",
        "kill0=fail:Operation not permitted",
        "kill9=fail:Operation not permitted",
    ] {
        assert!(out.contains(want), "as {USER_B}: {want:?} not in:\n{out}");
    }
    // A's own user cannot replace its socket either.
    let out = run_as(USER_A, &["perl", "-e", PROBE_PL, &sock, "1"]);
    for want in [
        "connect=fail:Permission denied",
        "unlink=fail:Permission denied",
    ] {
        assert!(out.contains(want), "as {USER_A}: {want:?} not in:\n{out}");
    }
    assert_survived(&sock, pid_a);

    // B's own PHP, through berth, tries the same.
    let r = get_host(
        s.addr(),
        "b.test",
        &format!("/probe.php?sock={sock}&pid={pid_a}"),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.vars();
    assert_eq!(v["uid"], ids_b.0.to_string(), "B's app runs as B");
    assert!(v["connect"].contains("Permission denied"), "{r:?}");
    assert_eq!(v["kill"], "fail:1", "EPERM; {r:?}");
    assert_eq!(v["list"], "fail", "{r:?}");
    assert!(alive(pid_a));

    // And A keeps answering, from the same process.
    let r = get(&s, "/x.php");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text().trim(), pid_a.to_string());
}

// ---------------------------------------------------------------------------
// 3. PHP-style routing (DESIGN.md "Routes")
// ---------------------------------------------------------------------------

#[test]
fn extension_routes_run_only_existing_scripts() {
    require_root();
    let dir = Dir::new();
    let home = Home::new(&dir, "home-a", USER_A, user_a());
    let css = "body { color: red }\n<?php echo 'CSS RAN'; ?>\n";
    let evil = "GIF89a<?php echo 'EVIL RAN'; ?>\n";
    home.page("index.php", "<?php echo 'INDEX ' . getmypid();");
    home.page("style.css", css);
    home.page("uploads/evil.jpg", evil);
    home.page("notes.php.txt", "<?php echo 'TXT RAN';");
    let s = start_a(&dir, &home, "");

    let r = get(&s, "/style.css");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), css, "static, not run");
    assert!(r.header("content-type").unwrap().starts_with("text/css"));
    let r = get(&s, "/notes.php.txt");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "<?php echo 'TXT RAN';")
    );
    let r = get(&s, "/uploads/evil.jpg");
    assert_eq!(r.text(), evil);
    for path in [
        "/missing.php",
        "/missing.php/extra",
        "/uploads/evil.jpg/x.php",
        "/uploads/x.php",
        "/uploads/evil.jpg/x.php/more",
    ] {
        let r = get(&s, path);
        assert_eq!(r.status, 404, "{path}: {r:?}");
        assert!(!r.text().contains("RAN"), "{path}: {r:?}");
    }
    // None of that started a process.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(app_procs(s.pid(), "ta", "php", 0), Vec::<u32>::new());
    assert!(
        !s.output().contains("app ta/php: process"),
        "{}",
        s.output()
    );
    assert_eq!(error_log(&s, "ta"), "");

    // A directory runs its index.php.
    let r = get(&s, "/");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    let text = r.text();
    let pid: u32 = text
        .strip_prefix("INDEX ")
        .unwrap_or_else(|| panic!("{r:?}"))
        .parse()
        .unwrap();
    assert_eq!(app_procs(s.pid(), "ta", "php", 0), vec![pid]);
}

// ---------------------------------------------------------------------------
// 4.–7. The pool's life
// ---------------------------------------------------------------------------

#[test]
fn a_process_starts_on_the_first_request() {
    require_root();
    let dir = Dir::new();
    let home = Home::new(&dir, "home-a", USER_A, user_a());
    home.page("pid.php", "<?php echo getmypid();");
    let s = start_a(&dir, &home, "");
    // Past a tick of the supervisor's warm-up loop: still nothing.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(app_procs(s.pid(), "ta", "php", 0), Vec::<u32>::new());
    let r = get(&s, "/pid.php");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    let pid: u32 = r.text().parse().unwrap();
    assert_eq!(app_procs(s.pid(), "ta", "php", 0), vec![pid]);
    // The next request reuses it.
    let r = get(&s, "/pid.php");
    assert_eq!(r.text(), pid.to_string());
}

#[test]
fn max_processes_caps_the_pool_and_every_request_is_served() {
    require_root();
    let dir = Dir::new();
    let home = Home::new(&dir, "home-a", USER_A, user_a());
    home.page("slow.php", "<?php sleep(1); echo getmypid();");
    let s = start_a(&dir, &home, "max_processes = 2");
    let done = AtomicBool::new(false);
    let most = AtomicUsize::new(0);
    let results: Vec<Resp> = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                most.fetch_max(app_procs(s.pid(), "ta", "php", 0).len(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let clients: Vec<_> = (0..6)
            .map(|_| scope.spawn(|| get(&s, "/slow.php")))
            .collect();
        let results = clients.into_iter().map(|c| c.join().unwrap()).collect();
        done.store(true, Ordering::Relaxed);
        results
    });
    let mut pids = BTreeSet::new();
    for r in &results {
        assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
        pids.insert(r.text());
    }
    assert!(pids.len() <= 2, "served by {pids:?}");
    let most = most.load(Ordering::Relaxed);
    assert!(most <= 2, "{most} processes at once");
    assert!(most >= 1);
}

#[test]
fn a_process_is_retired_after_max_requests() {
    require_root();
    let dir = Dir::new();
    let home = Home::new(&dir, "home-a", USER_A, user_a());
    home.page("pid.php", "<?php echo getmypid();");
    let s = start_a(&dir, &home, "max_processes = 1\nmax_requests = 3");
    let mut pids = Vec::new();
    for _ in 0..7 {
        let r = get(&s, "/pid.php");
        assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
        pids.push(r.text().parse::<u32>().unwrap());
    }
    let mut served: HashMap<u32, usize> = HashMap::new();
    for p in &pids {
        *served.entry(*p).or_default() += 1;
    }
    assert!(served.values().all(|&n| n <= 3), "{pids:?}");
    // One process at a time: three, three, one.
    assert_eq!(served.len(), 3, "{pids:?}");
    assert!(pids[..3].iter().all(|p| *p == pids[0]), "{pids:?}");
    assert!(pids[3..6].iter().all(|p| *p == pids[3]), "{pids:?}");
    // Retired processes do not linger.
    let old = [pids[0], pids[3]];
    assert!(
        eventually(Duration::from_secs(6), || !old.iter().any(|p| alive(*p))),
        "retired processes still running: {old:?}"
    );
}

#[test]
fn a_request_while_the_warm_process_starts_is_not_refused() {
    // min_processes = max_processes = 1: the first request may come while
    // the supervisor starts the warm process, before the front end has heard
    // of it; the supervisor's "already runs max_processes" was a 503.
    require_root();
    let dir = Dir::new();
    let home = Home::new(&dir, "home-a", USER_A, user_a());
    home.page("pid.php", "<?php echo getmypid();");
    let apps = app(
        "ta",
        "php",
        &home,
        &[PHP],
        "min_processes = 1\nmax_processes = 1",
    );
    home.own();
    let (block, port, tls_port) = server(&dir);
    let config = dir.write(
        "berth.toml",
        format!("{block}{}", tenant("ta", &home, "a.test", &apps)),
    );
    for round in 0..5 {
        let mut s = Server::spawn(&config, port, tls_port, dir.join("log"));
        // The first request as soon as the port answers.
        let addr = s.addr();
        let deadline = Instant::now() + Duration::from_secs(20);
        let first = loop {
            let head = "GET /pid.php HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
            if let Ok(raw) = try_raw(addr, head.as_bytes())
                && raw.starts_with("HTTP/1.1")
            {
                break raw;
            }
            assert!(Instant::now() < deadline, "berth did not answer");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(
            status_of(&first),
            200,
            "round {round}: {first}\n{}",
            s.output()
        );
        s.stop();
    }
}

#[test]
fn idle_processes_stop_and_min_processes_stay_warm() {
    require_root();
    let dir = Dir::new();
    let home = Home::new(&dir, "home-a", USER_A, user_a());
    home.page("pid.php", "<?php echo getmypid();");
    let apps = format!(
        "{}{}",
        app(
            "ta",
            "php",
            &home,
            &[PHP],
            "min_processes = 0\nidle_timeout = \"1s\""
        ),
        app(
            "ta",
            "warm",
            &home,
            &[PHP],
            "min_processes = 1\nidle_timeout = \"1s\""
        ),
    );
    let s = start_tenants(
        &dir,
        &[&home],
        &(tenant("ta", &home, "a.test", &apps) + HOST_PIDS),
    );

    // min_processes = 1: started without any request.
    let mut warm = Vec::new();
    assert!(
        eventually(Duration::from_secs(5), || {
            warm = app_procs(s.pid(), "ta", "warm", 0);
            !warm.is_empty()
        }),
        "no warm process:\n{}",
        s.output()
    );
    assert_eq!(warm.len(), 1, "{warm:?}");
    assert_eq!(app_procs(s.pid(), "ta", "php", 0), Vec::<u32>::new());

    let r = get(&s, "/pid.php");
    assert_eq!(r.status, 200, "{r:?}");
    let pid: u32 = r.text().parse().unwrap();
    assert_eq!(app_procs(s.pid(), "ta", "php", 0), vec![pid]);
    // idle_timeout = 1s, swept every second: gone within ~3 s.
    let t0 = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || {
            app_procs(s.pid(), "ta", "php", 0).is_empty() && !alive(pid)
        }),
        "idle process {pid} still running:\n{}",
        s.output()
    );
    // Well past idle_timeout, the warm process is still the same one.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(t0.elapsed()));
    assert_eq!(app_procs(s.pid(), "ta", "warm", 0), warm, "{}", s.output());
}

// ---------------------------------------------------------------------------
// 8.–10. Backends that crash, die mid-response, start too slowly
// ---------------------------------------------------------------------------

/// A served process is killed in its second request: 502 at once; the next
/// request gets a new process. Three rounds, because whether berth counts a
/// crash towards its start backoff depends on a race in the supervisor (the
/// front end's Retire against the SIGCHLD reap); see the idle-kill test below
/// for the deterministic case.
#[test]
fn a_crashing_process_gets_502_and_the_next_request_works() {
    require_root();
    let dir = Dir::new();
    let home = Home::new(&dir, "home-a", USER_A, user_a());
    home.page("crash.php", "<?php posix_kill(posix_getpid(), 9);");
    home.page("pid.php", "<?php echo getmypid();");
    let s = start_a(&dir, &home, "");

    let r = get(&s, "/pid.php");
    assert_eq!(r.status, 200, "{r:?}");
    let mut pid: u32 = r.text().parse().unwrap();
    for round in 1..=3 {
        let t0 = Instant::now();
        let r = get(&s, "/crash.php");
        assert_eq!(r.status, 502, "round {round}: {r:?}\n{}", s.output());
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(eventually(Duration::from_secs(2), || !alive(pid)));
        // The very next request: a new process.
        let r = get(&s, "/pid.php");
        assert_eq!(r.status, 200, "round {round}: {r:?}\n{}", s.output());
        let next: u32 = r.text().parse().unwrap();
        assert_ne!(pid, next);
        pid = next;
    }
}

/// A process killed during its very first request: 502, and the next
/// request is served by a new process (one crash is not a crash loop).
#[test]
fn a_process_crashing_on_its_first_request_does_not_block_the_next() {
    require_root();
    let dir = Dir::new();
    let home = Home::new(&dir, "home-a", USER_A, user_a());
    home.page("crash.php", "<?php posix_kill(posix_getpid(), 9);");
    home.page("pid.php", "<?php echo getmypid();");
    let s = start_a(&dir, &home, "");
    for round in 1..=3 {
        let r = get(&s, "/crash.php");
        assert_eq!(r.status, 502, "round {round}: {r:?}\n{}", s.output());
        let r = get(&s, "/pid.php");
        assert_eq!(r.status, 200, "round {round}: {r:?}\n{}", s.output());
        // Let it serve a while (so it is not young), then start over.
        let r = get(&s, "/pid.php");
        assert_eq!(r.status, 200, "round {round}: {r:?}\n{}", s.output());
    }
}

/// An idle process is killed from outside (as the OOM killer would), once:
/// the next request must get a new process, not a 503 from a crash-loop
/// backoff. Deterministic version of the two tests above.
#[test]
fn an_idle_process_killed_once_is_replaced_for_the_next_request() {
    require_root();
    let dir = Dir::new();
    let home = Home::new(&dir, "home-a", USER_A, user_a());
    home.page(
        "doomed.php",
        "<?php $p = getmypid(); exec(\"(sleep 0.3; kill -9 $p) > /dev/null 2>&1 &\"); echo $p;",
    );
    home.page("pid.php", "<?php echo getmypid();");
    let s = start_a(&dir, &home, "");
    let r = get(&s, "/doomed.php");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    let pid: u32 = r.text().parse().unwrap();
    assert!(
        eventually(Duration::from_secs(3), || !alive(pid)),
        "{pid} was not killed"
    );
    // Let the supervisor reap it and tell the front end.
    assert!(
        s.wait_output("exited (signal: 9", Duration::from_secs(3)),
        "{}",
        s.output()
    );
    std::thread::sleep(Duration::from_millis(100));
    let r = get(&s, "/pid.php");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    assert_ne!(r.text(), pid.to_string());
}

const HALF_PHP: &str = r#"<?php
header('Content-Type: text/plain');
while (ob_get_level()) { ob_end_flush(); }
echo str_repeat('x', 1 << 20);
flush();
usleep(100000);
posix_kill(posix_getpid(), 9);
"#;

#[test]
fn a_backend_dying_mid_response_gives_an_incomplete_response() {
    require_root();
    let dir = Dir::new();
    let home = Home::new(&dir, "home-a", USER_A, user_a());
    home.page("half.php", HALF_PHP);
    home.page("pid.php", "<?php echo getmypid();");
    let s = start_a(&dir, &home, "");

    // Keep-alive HTTP/1.1: the body must be framed, and the frame left open.
    let head = "GET /half.php HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let (raw, closed) = exchange(s.addr(), head, &[], Duration::from_secs(10));
    assert!(
        closed,
        "the connection was not closed after the backend died"
    );
    assert!(
        !raw.is_empty(),
        "closed without a response:\n{}",
        s.output()
    );
    let r = parse(&raw);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.chunked || r.header("content-length").is_some(),
        "unframed body on a keep-alive connection: {r:?}"
    );
    assert!(!r.complete, "the response looks complete: {r:?}");
    assert!(r.body.len() <= 1 << 20);
    // (A crash may put the app into its start backoff: wait it out.)
    let r = get_until_ok(&s, "/pid.php", Duration::from_secs(5));
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());

    // HTTP/1.1 with Connection: close: still framed, so the client can tell.
    let head = "GET /half.php HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    let (raw, closed) = exchange(s.addr(), head, &[], Duration::from_secs(10));
    assert!(closed);
    assert!(
        !raw.is_empty(),
        "closed without a response:\n{}",
        s.output()
    );
    let r = parse(&raw);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.chunked || r.header("content-length").is_some(),
        "a close-delimited body hides the truncation: {r:?}"
    );
    assert!(!r.complete, "the response looks complete: {r:?}");
    let r = get_until_ok(&s, "/pid.php", Duration::from_secs(5));
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());

    // HTTP/2: the stream ends in an error, not a clean end.
    let c = client(true, None, &["a.test"], s.port);
    let result = c
        .get(format!("http://a.test:{}/half.php", s.port))
        .send()
        .and_then(|resp| resp.bytes());
    assert!(
        result.is_err(),
        "HTTP/2 body looked complete ({} bytes)",
        result.map(|b| b.len()).unwrap_or(0)
    );

    // Nothing else broke.
    let r = get_until_ok(&s, "/pid.php", Duration::from_secs(5));
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
}

#[test]
fn a_slow_starting_app_gets_503_after_start_timeout() {
    require_root();
    let dir = Dir::new();
    let home = Home::new(&dir, "home-a", USER_A, user_a());
    home.page("pid.php", "<?php echo getmypid();");
    let slow = home.write(
        "bin/slow.sh",
        format!("#!/bin/sh\nsleep 5\nexec {PHP}\n"),
        0o755,
    );
    let apps = app(
        "ta",
        "php",
        &home,
        &[slow.to_str().unwrap()],
        "start_timeout = \"1s\"",
    );
    let s = start_tenants(
        &dir,
        &[&home],
        &(tenant("ta", &home, "a.test", &apps) + HOST_PIDS),
    );

    let t0 = Instant::now();
    let r = get(&s, "/pid.php");
    let took = t0.elapsed();
    assert_eq!(r.status, 503, "{r:?}\n{}", s.output());
    assert!(took < Duration::from_secs(3), "503 took {took:?}");
    assert!(r.header("retry-after").is_some(), "{r:?}");
    assert!(
        s.wait_output("start_timeout", Duration::from_secs(3)),
        "no log line about start_timeout:\n{}",
        s.output()
    );
    // The process that did not start in time is stopped, with its group
    // (the shell and its sleep).
    assert!(
        eventually(Duration::from_secs(8), || {
            app_procs(s.pid(), "ta", "php", 0).is_empty()
        }),
        "{}",
        s.output()
    );
    let (uid, _) = user_a();
    let sleeping = |pids: Vec<u32>| {
        pids.into_iter()
            .filter(|p| {
                fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep\x005"))
            })
            .filter(|p| {
                fs::read_link(format!("/proc/{p}/cwd")).is_ok_and(|c| c.starts_with(dir.path()))
            })
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(Duration::from_secs(8), || sleeping(processes_of(uid))
            .is_empty()),
        "the slow app's sleep is still running: {:?}",
        sleeping(processes_of(uid))
    );
}

// ---------------------------------------------------------------------------
// 11. suEXEC refusals
// ---------------------------------------------------------------------------

const WRAPPER_SH: &str = "#!/bin/sh\nexec /usr/bin/php-cgi \"$@\"\n";

#[test]
fn check_refuses_a_group_writable_program() {
    require_root();
    let dir = Dir::new();
    let home = Home::new(&dir, "home-a", USER_A, user_a());
    home.page("pid.php", "<?php echo getmypid();");
    let wrapper = home.write("bin/php.sh", WRAPPER_SH, 0o755);
    home.own();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o775)).unwrap();
    let (block, _, _) = server(&dir);
    let apps = app("ta", "php", &home, &[wrapper.to_str().unwrap()], "");
    let config = format!("{block}{}", tenant("ta", &home, "a.test", &apps));
    let path = dir.write("berth.toml", &config);
    let line = config
        .lines()
        .position(|l| l == "[tenant.ta.app.php]")
        .unwrap()
        + 1;
    let out = Command::new(BERTH)
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let want = format!(
        "{}:{line}: tenant.ta.app.php: would not start: program {} is writable by group or others (mode 0775)",
        path.display(),
        fs::canonicalize(&wrapper).unwrap().display()
    );
    assert!(text.contains(&want), "{want:?} not in:\n{text}");
}

#[test]
fn a_refused_spawn_is_logged_and_answered_503() {
    require_root();
    let dir = Dir::new();
    let home = Home::new(&dir, "home-a", USER_A, user_a());
    home.page("pid.php", "<?php echo getmypid();");
    let wrapper = home.write("bin/php.sh", WRAPPER_SH, 0o755);
    let apps = app("ta", "php", &home, &[wrapper.to_str().unwrap()], "");
    let s = start_tenants(
        &dir,
        &[&home],
        &(tenant("ta", &home, "a.test", &apps) + HOST_PIDS),
    );
    // The program became group-writable after berth checked the config.
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o775)).unwrap();
    let t0 = Instant::now();
    let r = get(&s, "/pid.php");
    assert_eq!(r.status, 503, "{r:?}\n{}", s.output());
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(
        s.wait_output("is writable by group or others", Duration::from_secs(3)),
        "{}",
        s.output()
    );
    let out = s.output();
    let line = out
        .lines()
        .find(|l| l.contains("is writable by group or others"))
        .unwrap();
    assert!(
        line.contains("refused") && line.contains("ta"),
        "the log line names the tenant and the refusal: {line}"
    );
    assert_eq!(app_procs(s.pid(), "ta", "php", 0), Vec::<u32>::new());
    // Fixed: the next request starts it.
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let mut last = None;
    let ok = eventually(Duration::from_secs(5), || {
        let r = get(&s, "/pid.php");
        let ok = r.status == 200;
        last = Some(r);
        ok
    });
    assert!(ok, "{:?}\n{}", last, s.output());
}

// ---------------------------------------------------------------------------
// 12. 10 MB each way, streamed
// ---------------------------------------------------------------------------

const UPLOAD_PHP: &str = r#"<?php
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
echo 'len=', $n, "\n";
echo 'md5=', hash_final($h), "\n";
"#;

const DOWNLOAD_PHP: &str = r#"<?php
header('Content-Type: application/octet-stream');
while (ob_get_level()) { ob_end_flush(); }
for ($i = 0; $i < 160; $i++) {
    echo str_repeat(chr(97 + $i % 26), 65536);
}
"#;

/// A `/proc/PID/status` size such as `VmRSS:  1234 kB`, in KiB.
fn vm_kib(pid: u32, key: &str) -> u64 {
    let st = proc_status(pid).unwrap();
    let v = field_str(&st, key);
    v.trim_end_matches("kB").trim().parse().unwrap()
}

#[test]
fn ten_megabytes_stream_both_ways_with_flat_front_end_memory() {
    require_root();
    let dir = Dir::new();
    let home = Home::new(&dir, "home-a", USER_A, user_a());
    home.page("up.php", UPLOAD_PHP);
    home.page("down.php", DOWNLOAD_PHP);
    home.page("pid.php", "<?php echo getmypid();");
    let s = start_a(&dir, &home, "");
    let front = s.front_pid();
    // Warm up (a process running, the front end's pools allocated).
    assert_eq!(get(&s, "/pid.php").status, 200);
    let before = vm_kib(front, "VmRSS");

    const SIZE: usize = 10 << 20;
    let payload = payload(SIZE);
    let head = format!(
        "POST /up.php HTTP/1.1\r\nHost: a.test\r\nContent-Type: application/octet-stream\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n"
    );
    let (raw, closed) = exchange(s.addr(), &head, &payload, Duration::from_secs(30));
    assert!(closed);
    let r = parse(&raw);
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    let v = r.vars();
    assert_eq!(v.get("len"), Some(&SIZE.to_string()), "{r:?}");
    assert_eq!(v.get("md5"), Some(&md5_of(&payload)), "{r:?}");

    // The download, read slowly enough that a buffering front end would
    // have to hold it.
    let mut sock = TcpStream::connect(s.addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    sock.write_all(b"GET /down.php HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut during = 0;
    loop {
        let n = sock.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() < SIZE / 2 {
            std::thread::sleep(Duration::from_millis(5));
        } else if during == 0 {
            during = vm_kib(front, "VmRSS");
        }
    }
    assert!(
        !raw.is_empty(),
        "closed without a response:\n{}",
        s.output()
    );
    let r = parse(&raw);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.complete, "{r:?}");
    assert_eq!(r.body.len(), SIZE);
    for (i, piece) in r.body.chunks(65536).enumerate() {
        let want = b'a' + (i % 26) as u8;
        assert!(piece.iter().all(|&b| b == want), "chunk {i} is wrong");
    }

    let after = vm_kib(front, "VmRSS");
    let peak = vm_kib(front, "VmHWM");
    eprintln!(
        "front end VmRSS: before {before} KiB, during {during} KiB, after {after} KiB, peak {peak} KiB"
    );
    assert!(
        after < 60 * 1024,
        "front end VmRSS {after} KiB after the transfers"
    );
    assert!(peak < 60 * 1024, "front end peak RSS {peak} KiB");
    assert!(
        peak < before + 8 * 1024,
        "front end peak RSS grew from {before} KiB to {peak} KiB: a 10 MB body was buffered"
    );
}

/// A request body without Content-Length (HTTP/1.1 chunked, or HTTP/2 without
/// the header) must reach the script whole — RFC 3875 §4.1.2 requires
/// CONTENT_LENGTH whenever there is a body, and php-cgi reads nothing without
/// it — or be refused (411); never run the script with an empty body.
#[test]
fn a_body_without_content_length_is_not_silently_emptied() {
    require_root();
    let dir = Dir::new();
    let home = Home::new(&dir, "home-a", USER_A, user_a());
    home.page("up.php", UPLOAD_PHP);
    let s = start_a(&dir, &home, "");
    let head = "POST /up.php HTTP/1.1\r\nHost: a.test\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let (raw, closed) = exchange(s.addr(), head, &[], Duration::from_secs(10));
    assert!(closed);
    let r = parse(&raw);
    assert_eq!(r.status, 200, "HTTP/1.1 chunked upload of 11 bytes: {r:?}");
    assert_eq!(r.vars()["len"], "11", "{r:?}");

    let c = client(true, None, &["a.test"], s.port);
    let r = c
        .post(format!("http://a.test:{}/up.php", s.port))
        .body(reqwest::blocking::Body::new(std::io::Cursor::new(
            b"hello world".to_vec(),
        )))
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    assert!(
        status == 200 && text.contains("len=11\n"),
        "HTTP/2 upload of 11 bytes without content-length: {status} {text}"
    );
}

// ---------------------------------------------------------------------------
// 13. Nothing left after SIGTERM
// ---------------------------------------------------------------------------

#[test]
fn sigterm_stops_every_app_process() {
    require_root();
    let ids = ensure_user(USER_C);
    let dir = Dir::new();
    let home = Home::new(&dir, "home-c", USER_C, ids);
    home.page("slow.php", "<?php usleep(300000); echo getmypid();");
    // A child in the app's process group, as scripts that shell out leave.
    home.page(
        "spawn.php",
        "<?php exec('sleep 300 > /dev/null 2>&1 &'); echo getmypid();",
    );
    let apps = app("tc", "php", &home, &[PHP], "max_processes = 3");
    let mut s = start_tenants(
        &dir,
        &[&home],
        &(tenant("tc", &home, "c.test", &apps) + HOST_PIDS),
    );
    let results: Vec<Resp> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| get_host(s.addr(), "c.test", "/slow.php")))
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for r in &results {
        assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    }
    let r = get_host(s.addr(), "c.test", "/spawn.php");
    assert_eq!(r.status, 200, "{r:?}");
    let running = processes_of(ids.0);
    assert!(
        running.len() >= 2,
        "expected app processes and a sleep: {running:?}"
    );
    assert_eq!(s.stop(), Some(0), "{}", s.output());
    assert_nothing_left(&dir, USER_C, ids.0);
}

/// An app that dies at start-up again and again (here: kept warm by
/// `min_processes`, so no request claims the deaths) is a crash loop: after
/// three young deaths in a row its starts back off, instead of a restart every
/// second for ever.
#[test]
fn a_crash_loop_at_start_up_backs_off() {
    require_root();
    let dir = Dir::new();
    let home = Home::new(&dir, "home-a", USER_A, user_a());
    let broken = home.write("bin/broken.sh", "#!/bin/sh\nexit 3\n", 0o755);
    let apps = app(
        "ta",
        "php",
        &home,
        &[broken.to_str().unwrap()],
        "min_processes = 1",
    );
    let s = start_tenants(
        &dir,
        &[&home],
        &(tenant("ta", &home, "a.test", &apps) + HOST_PIDS),
    );
    assert!(
        s.wait_output("crashed 3 times in a row", Duration::from_secs(10)),
        "no back-off after repeated start-up crashes:\n{}",
        s.output()
    );
}

// ---------------------------------------------------------------------------
// FCGI_KEEP_CONN: one connection per process, kept between requests
// ---------------------------------------------------------------------------

/// The sockets a process holds besides its listener (fd 0), as inodes.
fn connections_of(pid: u32) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != "0")
        .filter_map(|e| fs::read_link(e.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .filter(|l| l.starts_with("socket:"))
        .collect()
}

#[test]
fn php_cgi_keeps_its_connection_between_requests() {
    require_root();
    let dir = Dir::new();
    let home = Home::new(&dir, "home-a", USER_A, user_a());
    home.page("pid.php", "<?php echo getmypid();");
    home.page("up.php", UPLOAD_PHP);
    let s = start_a(&dir, &home, "max_processes = 1");
    let first = get(&s, "/pid.php");
    assert_eq!(first.status, 200, "{first:?}\n{}", s.output());
    let pid: u32 = first.text().parse().unwrap();
    let mut kept = Vec::new();
    assert!(
        eventually(Duration::from_secs(3), || {
            kept = connections_of(pid);
            kept.len() == 1
        }),
        "one kept connection: {kept:?}"
    );
    for _ in 0..3 {
        assert_eq!(get(&s, "/pid.php").text(), pid.to_string());
    }
    assert_eq!(connections_of(pid), kept, "the same connection, reused");

    // A request with a body goes on a fresh connection (the kept one is
    // let go first, or php-cgi would never accept the new one).
    let body = payload(100_000);
    let head = format!(
        "POST /up.php HTTP/1.1\r\nHost: a.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let (raw, _) = exchange(s.addr(), &head, &body, Duration::from_secs(20));
    let r = parse(&raw);
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    assert_eq!(r.vars()["md5"], md5_of(&body));
    assert_eq!(get(&s, "/pid.php").text(), pid.to_string());
}
