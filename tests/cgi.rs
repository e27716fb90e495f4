//! CGI apps end to end (`protocol = "cgi"`, RFC 3875), as root with real
//! users and plain shell and Perl scripts: each request runs its script as the
//! tenant through the supervisor (issue 3, item 7), with the CGI variables and
//! a clean environment (invariant 1), the request body on stdin and the
//! response streamed from stdout, `Status:` honoured, stderr in the tenant's
//! error log, suEXEC's checks refusing scripts others could change, the
//! `timeout` killing a script that runs too long, `max_processes` bounding
//! scripts at once, and nothing left running after SIGTERM.
mod common;
use common::apps::*;
use common::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

/// The tenant of most tests (member of [`GROUP`]).
const USER: &str = "berth-tcgia";
/// Owns a script in the tenant's site (which must not run).
const OTHER: &str = "berth-tcgib";
/// Only the SIGTERM test runs scripts as this user.
const USER_STOP: &str = "berth-tcgic";
/// A supplementary group of [`USER`].
const GROUP: &str = "berth-tcgig";

/// Prints who runs it, where, and its whole environment.
const ENV_CGI: &str = "#!/bin/sh
printf 'Content-Type: text/plain\\r\\nX-Script: env\\r\\n\\r\\n'
echo \"uid=$(id -u)\"
echo \"gid=$(id -g)\"
echo \"groups=$(id -G)\"
echo \"cwd=$(pwd)\"
env
";

/// Reads the body and answers 201 with its size and MD5.
const ECHO_CGI: &str = "#!/bin/sh
sum=$(md5sum | cut -d' ' -f1)
printf 'Status: 201 Created\\r\\nContent-Type: text/plain\\r\\n\\r\\n'
echo \"md5=$sum\"
echo \"length=$CONTENT_LENGTH\"
";

/// 10 MiB of zeros after the head.
const BIG_CGI: &str = "#!/bin/sh
printf 'Content-Type: application/octet-stream\\n\\n'
head -c 10485760 /dev/zero
";

/// Complains on stderr and exits without a head.
const BROKEN_CGI: &str = "#!/bin/sh
echo 'broken.cgi: something went wrong' >&2
exit 3
";

/// Runs for a long time.
const SLOW_CGI: &str = "#!/bin/sh
sleep 30
printf 'Content-Type: text/plain\\n\\nlate\\n'
";

/// Answers at once, then trickles output for about four seconds.
const TRICKLE_CGI: &str = "#!/bin/sh
printf 'Content-Type: text/plain\\n\\n'
i=0
while [ $i -lt 20 ]; do echo tick; sleep 0.2; i=$((i+1)); done
";

/// Holds a lock directory for a while; says so if another run held it.
const LOCK_CGI: &str = "#!/bin/sh
printf 'Content-Type: text/plain\\n\\n'
if mkdir \"$LOCK\" 2>/dev/null; then
  sleep 0.4
  rmdir \"$LOCK\"
  echo alone
else
  echo overlap
fi
";

/// A Perl script run through the app's command (not executable itself).
const HELLO_PL: &str =
    "print \"Content-Type: text/plain\\n\\nperl says hello to $ENV{QUERY_STRING}\\n\";\n";

/// The tenant's user, in the supplementary group [`GROUP`].
fn user() -> (u32, u32) {
    user_in_group(USER, GROUP)
}

/// A home with the scripts under `public/cgi/` (0755) and `public/pl/`.
fn home_with_scripts(dir: &Dir, rel: &str, user: &'static str, ids: (u32, u32)) -> Home {
    let home = Home::new(dir, rel, user, ids);
    home.write("public/index.html", "static\n", 0o644);
    for (name, text) in [
        ("env.cgi", ENV_CGI),
        ("echo.cgi", ECHO_CGI),
        ("big.cgi", BIG_CGI),
        ("broken.cgi", BROKEN_CGI),
        ("slow.cgi", SLOW_CGI),
        ("lock.cgi", LOCK_CGI),
        ("trickle.cgi", TRICKLE_CGI),
    ] {
        home.write(&format!("public/cgi/{name}"), text, 0o755);
    }
    home.write("public/pl/hello.pl", HELLO_PL, 0o644);
    home.write("bin/mounted.sh", ENV_CGI, 0o755);
    home
}

/// Tenant `tc` (c.test): `.cgi` scripts by extension (run by themselves),
/// `.pl` through Perl, and `bin/mounted.sh` mounted at `/run/`; `extra` goes
/// into every app's table.
fn tenants(home: &Home, extra: &str) -> String {
    let mut out = tenant_site("tc", home, "c.test");
    for (path, app, ext) in [
        ("/cgi/", "scripts", "extensions = [\"cgi\"]"),
        ("/pl/", "perl", "extensions = [\"pl\"]"),
        ("/run/", "mounted", ""),
    ] {
        out.push_str(&format!(
            "\n[[tenant.tc.site.route]]\npath = \"{path}\"\napp = \"{app}\"\n{ext}\n"
        ));
    }
    out.push_str(&format!(
        "\n[tenant.tc.app.scripts]\nprotocol = \"cgi\"\nenv = {{ LOCK = \"{lock}\" }}\n{extra}\n",
        lock = home.join("lock").display()
    ));
    out.push_str(&app_table(
        "tc",
        "perl",
        "cgi",
        &home.path,
        &["/usr/bin/perl"],
        extra,
    ));
    out.push_str(&app_table(
        "tc",
        "mounted",
        "cgi",
        &home.join("bin"),
        &[home.join("bin/mounted.sh").to_str().unwrap()],
        extra,
    ));
    out
}

fn start(dir: &Dir, home: &Home, extra: &str) -> Server {
    start_tenants(dir, &[home], &tenants(home, extra))
}

fn get_c(s: &Server, path: &str) -> Resp {
    request(s, "GET", path, "", &[])
}

/// One request to c.test with `headers` (lines ending in \r\n) and `body`.
fn request(s: &Server, method: &str, path: &str, headers: &str, body: &[u8]) -> Resp {
    let length = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: c.test\r\n{length}{headers}Connection: close\r\n\r\n"
    );
    let (raw, closed) = exchange(s.addr(), &head, body, Duration::from_secs(30));
    assert!(
        closed,
        "{method} {path}: no end within 30 s\n{}",
        s.output()
    );
    assert!(
        !raw.is_empty(),
        "{method} {path}: no answer\n{}",
        s.output()
    );
    parse(&raw)
}

#[test]
fn a_script_runs_as_its_tenant_with_the_cgi_variables_and_nothing_else() {
    require_root();
    let ids = user();
    let dir = Dir::new();
    let home = home_with_scripts(&dir, "home/tc", USER, ids);
    let s = start(&dir, &home, "");
    let r = request(
        &s,
        "GET",
        "/cgi/env.cgi/extra/path?a=1&b=two",
        "X-Test: yes\r\nProxy: http://evil.example\r\n",
        &[],
    );
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    assert_eq!(r.header("x-script").as_deref(), Some("env"));
    let v = r.vars();
    assert_eq!(v["uid"], ids.0.to_string());
    assert_eq!(v["gid"], ids.1.to_string());
    let groups: std::collections::BTreeSet<u64> =
        v["groups"].split(' ').map(|g| g.parse().unwrap()).collect();
    assert_eq!(groups, groups_of(USER), "the tenant's groups, no more");
    let real = fs::canonicalize(home.join("public/cgi")).unwrap();
    assert_eq!(
        v["cwd"],
        real.display().to_string(),
        "runs in its directory"
    );
    assert_eq!(v["GATEWAY_INTERFACE"], "CGI/1.1");
    assert_eq!(v["REQUEST_METHOD"], "GET");
    assert_eq!(v["QUERY_STRING"], "a=1&b=two");
    assert_eq!(v["SCRIPT_NAME"], "/cgi/env.cgi");
    assert_eq!(v["PATH_INFO"], "/extra/path");
    assert_eq!(
        v["SCRIPT_FILENAME"],
        real.join("env.cgi").display().to_string()
    );
    let root = fs::canonicalize(home.public()).unwrap();
    assert_eq!(v["DOCUMENT_ROOT"], root.display().to_string());
    assert_eq!(
        v["PATH_TRANSLATED"],
        root.join("extra/path").display().to_string()
    );
    assert_eq!(v["SERVER_NAME"], "c.test");
    assert_eq!(v["REMOTE_ADDR"], "127.0.0.1");
    assert_eq!(v["HTTP_X_TEST"], "yes");
    assert!(!v.contains_key("HTTP_PROXY"), "httpoxy: {v:?}");
    assert_eq!(v["LOCK"], home.join("lock").display().to_string());
    assert_eq!(v["HOME"], home.path.display().to_string());
    assert_eq!(v["USER"], USER);
    assert_eq!(v["PATH"], "/usr/local/bin:/usr/bin:/bin");
    // Nothing of berth's own environment (the test's, which berth inherits).
    for name in ["CARGO_MANIFEST_DIR", "BERTH_LOG", "RUST_BACKTRACE"] {
        assert!(!v.contains_key(name), "{name} leaked: {v:?}");
    }
}

#[test]
fn bodies_stream_both_ways_and_status_is_honoured() {
    require_root();
    let dir = Dir::new();
    let home = home_with_scripts(&dir, "home/tc", USER, user());
    let s = start(&dir, &home, "");
    let body = payload(10 << 20);
    let r = request(&s, "POST", "/cgi/echo.cgi", "", &body);
    assert_eq!(r.status, 201, "{r:?}");
    let v = r.vars();
    assert_eq!(v["md5"], md5_of(&body));
    assert_eq!(v["length"], body.len().to_string());

    // Without a body, stdin is at its end at once (md5sum reads to EOF).
    let r = get_c(&s, "/cgi/echo.cgi");
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.vars()["md5"], md5_of(b""));

    let r = get_c(&s, "/cgi/big.cgi");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 10 << 20);
    assert!(r.body.iter().all(|&b| b == 0));

    // A chunked body is read whole first: the script gets it with its
    // CONTENT_LENGTH (it used to get 411, and `git push` failed).
    let head = "POST /cgi/echo.cgi HTTP/1.1\r\nHost: c.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let (raw, _) = exchange(
        s.addr(),
        head,
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        Duration::from_secs(10),
    );
    let r = parse(&raw);
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.vars()["md5"], md5_of(b"hello world"));
    assert_eq!(r.vars()["length"], "11");
}

#[test]
fn mounted_apps_and_interpreters() {
    require_root();
    let dir = Dir::new();
    let home = home_with_scripts(&dir, "home/tc", USER, user());
    let s = start(&dir, &home, "");
    let r = get_c(&s, "/run/some/where?x=1");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    let v = r.vars();
    assert_eq!(v["SCRIPT_NAME"], "/run");
    assert_eq!(v["PATH_INFO"], "/some/where");
    assert_eq!(v["QUERY_STRING"], "x=1");
    let bin = fs::canonicalize(home.join("bin")).unwrap();
    assert_eq!(v["cwd"], bin.display().to_string(), "runs in its dir");

    let r = get_c(&s, "/pl/hello.pl?you");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    assert_eq!(r.text(), "perl says hello to you\n");

    // A script that does not exist never runs anything: 404.
    assert_eq!(get_c(&s, "/cgi/missing.cgi").status, 404);
    // Static files beside the scripts stay static.
    assert_eq!(get_c(&s, "/index.html").text(), "static\n");
}

#[test]
fn scripts_others_could_change_are_refused_with_the_reason() {
    require_root();
    let dir = Dir::new();
    let (other_uid, other_gid) = ensure_user(OTHER);
    let home = home_with_scripts(&dir, "home/tc", USER, user());
    home.write("public/cgi/writable.cgi", ENV_CGI, 0o755);
    home.write("public/cgi/foreign.cgi", ENV_CGI, 0o755);
    home.write("public/pl/writable.pl", HELLO_PL, 0o644);
    home.own();
    let chmod = |rel: &str, mode| {
        fs::set_permissions(home.join(rel), fs::Permissions::from_mode(mode)).unwrap()
    };
    chmod("public/cgi/writable.cgi", 0o757);
    chmod("public/pl/writable.pl", 0o646);
    std::os::unix::fs::chown(
        home.join("public/cgi/foreign.cgi"),
        Some(other_uid),
        Some(other_gid),
    )
    .unwrap();
    let (block, port, tls_port) = server(&dir);
    let s = Server::start(
        &dir,
        &format!("{block}{}", tenants(&home, "")),
        port,
        tls_port,
    );
    for (path, why) in [
        ("/cgi/writable.cgi", "writable by group or others"),
        ("/cgi/foreign.cgi", &format!("owned by uid {other_uid}")),
        ("/pl/writable.pl", "writable by group or others"),
    ] {
        let r = get_c(&s, path);
        assert_eq!(r.status, 503, "{path}: {r:?}");
        assert!(
            s.wait_output(why, Duration::from_secs(5)),
            "{path}: the log names the check ({why}):\n{}",
            s.output()
        );
    }
    // The good ones still run.
    assert_eq!(get_c(&s, "/cgi/env.cgi").status, 200);
}

#[test]
fn failures_timeouts_and_the_error_log() {
    require_root();
    let (uid, _) = user();
    let dir = Dir::new();
    let home = home_with_scripts(&dir, "home/tc", USER, user());
    let s = start(&dir, &home, "timeout = \"2s\"");

    // No head: 502, and the script's stderr in the tenant's error log.
    let r = get_c(&s, "/cgi/broken.cgi");
    assert_eq!(r.status, 502, "{r:?}");
    let log = dir.join("log/tc/error.log");
    assert!(
        eventually(Duration::from_secs(5), || {
            fs::read_to_string(&log)
                .is_ok_and(|l| l.contains("[tc/scripts] broken.cgi: something went wrong"))
        }),
        "{:?}",
        fs::read_to_string(&log)
    );

    // Too slow: 504 after the timeout, and the script is killed.
    let started = Instant::now();
    let r = get_c(&s, "/cgi/slow.cgi");
    assert_eq!(r.status, 504, "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        eventually(Duration::from_secs(10), || {
            live_processes().iter().all(|(pid, st)| {
                !(field(st, "Uid")[0] == uid as u64 && cmdline(*pid).contains("sleep 30"))
            })
        }),
        "the slow script was not killed"
    );

    // Cut short by the timeout after it began to answer: the response ends in
    // an error (no last chunk), never as if it were complete.
    let head = "GET /cgi/trickle.cgi HTTP/1.1\r\nHost: c.test\r\nConnection: close\r\n\r\n";
    let (raw, closed) = exchange(s.addr(), head, &[], Duration::from_secs(20));
    assert!(closed);
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.contains("tick"),
        "{text}"
    );
    assert!(!text.ends_with("0\r\n\r\n"), "ended as if complete: {text}");
}

#[test]
fn max_processes_runs_scripts_one_after_the_other() {
    require_root();
    let dir = Dir::new();
    let home = home_with_scripts(&dir, "home/tc", USER, user());
    let s = start(&dir, &home, "max_processes = 1");
    // Two requests at once: the second script starts after the first ended.
    let addr = s.addr();
    let runs: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                let head =
                    "GET /cgi/lock.cgi HTTP/1.1\r\nHost: c.test\r\nConnection: close\r\n\r\n";
                parse(&exchange(addr, head, &[], Duration::from_secs(20)).0)
            })
        })
        .collect();
    for run in runs {
        let r = run.join().unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.text(), "alone\n");
    }
}

#[test]
fn sigterm_leaves_no_script_running() {
    require_root();
    let ids = ensure_user(USER_STOP);
    let dir = Dir::new();
    let home = home_with_scripts(&dir, "home/tc", USER_STOP, ids);
    let mut s = start(&dir, &home, "");
    let addr = s.addr();
    let pending = std::thread::spawn(move || {
        let head = "GET /cgi/slow.cgi HTTP/1.1\r\nHost: c.test\r\nConnection: close\r\n\r\n";
        exchange(addr, head, &[], Duration::from_secs(30))
    });
    assert!(
        eventually(Duration::from_secs(10), || !processes_of(ids.0).is_empty()),
        "the script did not start\n{}",
        s.output()
    );
    assert_eq!(s.stop(), Some(0), "{}", s.output());
    let _ = pending.join();
    assert_nothing_left(&dir, USER_STOP, ids.0);
}

/// Leaves a sleep running in its process group and answers with its pid.
const LEAVES_A_CHILD_CGI: &str = "#!/bin/sh
sleep 300 </dev/null >/dev/null 2>&1 &
printf 'Content-Type: text/plain\\n\\n%s\\n' $!
";

#[test]
fn what_a_script_leaves_in_its_group_ends_with_it() {
    require_root();
    let ids = user();
    let dir = Dir::new();
    let home = home_with_scripts(&dir, "home/tc", USER, ids);
    home.write("public/cgi/leaves.cgi", LEAVES_A_CHILD_CGI, 0o755);
    // The script reports the pid of what it leaves.
    let s = start_tenants(&dir, &[&home], &(tenants(&home, "") + HOST_PIDS));
    let r = get_c(&s, "/cgi/leaves.cgi");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    let left: u32 = r.text().trim().parse().unwrap();
    // Killed with the script's group, while the script was not yet reaped
    // (so the group's number could not have been reused).
    assert!(
        eventually(Duration::from_secs(10), || !alive(left)),
        "sleep {left}, left by a CGI script, outlived it"
    );
}

#[test]
fn config_check_knows_cgi_apps() {
    require_root();
    let dir = Dir::new();
    let home = home_with_scripts(&dir, "home/tc", USER, user());
    home.own();
    let (block, _, _) = server(&dir);
    let good = dir.write("good.toml", format!("{block}{}", tenants(&home, "")));
    let out = std::process::Command::new(BERTH)
        .args(["check", "--config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A CGI app without a command can only run scripts by extension.
    let bad = format!(
        "{block}{}\n[[tenant.tc.site.route]]\npath = \"/x/\"\napp = \"scripts\"\n",
        tenants(&home, "")
    );
    let bad = dir.write("bad.toml", bad);
    let out = std::process::Command::new(BERTH)
        .args(["check", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("bad.toml:")
            && text.contains("has no command, so it can only run scripts chosen by `extensions`"),
        "{text}"
    );
}
