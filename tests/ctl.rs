//! `berth ctl` and the control socket, as root with real users: who may act
//! on which tenant (root, `admin_group`, a tenant's user, anyone else) and
//! the audit line each request leaves; stop, start and restart seen in real
//! requests to php-cgi and a shell CGI script; `logs --follow` seeing a new
//! request; a hostile client (half a frame, a 1 GiB length, the per-uid
//! cap) while the supervisor keeps starting processes; another protocol
//! version; `reload` and `check` returning the problems of the caller's
//! tenant; what is at the socket's path before berth starts.
//!
//! `berth ctl` runs as the users through `setpriv`, so the kernel's
//! `SO_PEERCRED` is what berth sees.

mod common;

use common::apps::*;
use common::*;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PHP: &str = "/usr/bin/php-cgi";
/// Tenant ta's user, tenant tb's, and a user who is neither.
const USER_A: &str = "berth-tca";
const USER_B: &str = "berth-tcb";
const STRANGER: &str = "berth-tcx";
/// A member of [`ADMINS`] (listed in the group), and a user whose primary
/// group it is.
const ADMIN: &str = "berth-tcadm";
const ADMIN_PRIMARY: &str = "berth-tcadp";
const ADMINS: &str = "berth-tcops";

/// What one `berth ctl` run gave.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// A berth with tenants ta (a.test: php-cgi for `*.php`, a shell CGI
/// script under /cgi-bin) and tb (b.test: php-cgi), its control socket at
/// `dir/state/control.sock`.
struct Fixture {
    dir: Dir,
    s: Server,
    bin: PathBuf,
}

impl Fixture {
    fn start(extra: &str) -> Fixture {
        require_root();
        let dir = Dir::new();
        let (config, port, tls_port, _home) = make_config(&dir, extra);
        let s = Server::start(&dir, &config, port, tls_port);
        let bin = ctl_binary(&dir);
        Fixture { dir, s, bin }
    }

    /// [`Fixture::start`] with no view of their own for the apps
    /// ([`HOST_PIDS`]): for tests that follow a process by the pid it reports.
    fn start_host_pids() -> Fixture {
        require_root();
        let dir = Dir::new();
        let (config, port, tls_port, _home) = make_config(&dir, "");
        let s = Server::start(&dir, &(config + HOST_PIDS), port, tls_port);
        let bin = ctl_binary(&dir);
        Fixture { dir, s, bin }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("state/control.sock")
    }

    /// `berth ctl --socket SOCKET ARGS` as `user` (None: root).
    fn ctl(&self, user: Option<&str>, args: &[&str]) -> Out {
        let out = ctl_command(&self.bin, &self.socket(), user, args)
            .output()
            .expect("berth ctl");
        Out {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// [`Fixture::ctl`] that must succeed; its stdout.
    fn ok(&self, user: Option<&str>, args: &[&str]) -> String {
        let out = self.ctl(user, args);
        assert_eq!(out.code, Some(0), "ctl {args:?} as {user:?}: {out:?}");
        out.stdout
    }

    /// [`Fixture::ctl`] that must fail; its stderr.
    fn fails(&self, user: Option<&str>, args: &[&str]) -> String {
        let out = self.ctl(user, args);
        assert_eq!(out.code, Some(1), "ctl {args:?} as {user:?}: {out:?}");
        out.stderr
    }

    fn audit(&self) -> String {
        fs::read_to_string(self.s.log_dir.join("audit.log")).unwrap_or_default()
    }

    /// `GET path` on a.test.
    fn get(&self, path: &str) -> Resp {
        get_host(self.s.addr(), "a.test", path)
    }
}

/// The configuration of [`Fixture`] with `extra` in `[server]`; the
/// tenants' homes are handed to them.
fn make_config(dir: &Dir, extra: &str) -> (String, u16, u16, Home) {
    let home_a = Home::new(dir, "home-a", USER_A, ensure_user(USER_A));
    home_a.write("public/pid.php", "<?php echo getmypid();", 0o644);
    home_a.write(
        "public/err.php",
        "<?php error_log('ctl-error-marker ' . $_SERVER['QUERY_STRING']); echo 'logged';",
        0o644,
    );
    home_a.write("public/x.txt", "static\n", 0o644);
    home_a.write(
        "public/cgi-bin/hello.cgi",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\npid %s\\n' $$\n",
        0o755,
    );
    let home_b = Home::new(dir, "home-b", USER_B, ensure_user(USER_B));
    home_b.write("public/pid.php", "<?php echo getmypid();", 0o644);
    home_a.own();
    home_b.own();
    let php = |t: &str, home: &Home| app_table(t, "php", "fastcgi", &home.public(), &[PHP], "");
    let tenants = format!(
        r#"{site_a}
[[tenant.ta.site.route]]
path = "/cgi-bin"
extensions = ["cgi"]
app = "cgi"

[[tenant.ta.site.route]]
path = "/"
extensions = ["php"]
app = "php"
{php_a}
[tenant.ta.app.cgi]
protocol = "cgi"
{site_b}
[[tenant.tb.site.route]]
path = "/"
extensions = ["php"]
app = "php"
{php_b}"#,
        site_a = tenant_site("ta", &home_a, "a.test").replace(
            "[tenant.ta]\n",
            "[tenant.ta]\nown_config = \"~/berth.toml\"\n",
        ),
        php_a = php("ta", &home_a),
        site_b = tenant_site("tb", &home_b, "b.test"),
        php_b = php("tb", &home_b),
    );
    let (block, port, tls_port) = server_block(
        dir,
        &format!("keepalive_timeout = \"5s\"\ndrain_timeout = \"5s\"\n{extra}"),
    );
    (format!("{block}{tenants}"), port, tls_port, home_a)
}

/// The berth binary where the test users can run it: where it is built if
/// every directory above it lets them through, else a copy in `dir`.
fn ctl_binary(dir: &Dir) -> PathBuf {
    let built = PathBuf::from(BERTH);
    let reachable = built
        .ancestors()
        .skip(1)
        .all(|d| fs::metadata(d).is_ok_and(|m| m.mode() & 0o001 != 0));
    if reachable && fs::metadata(&built).is_ok_and(|m| m.mode() & 0o005 == 0o005) {
        return built;
    }
    let copy = dir.join("berth");
    fs::copy(&built, &copy).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// `berth ctl --socket SOCKET ARGS`, as `user` (uid, gid and groups by
/// setpriv) or as root.
fn ctl_command(bin: &Path, socket: &Path, user: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = match user {
        Some(u) => {
            let user = nix::unistd::User::from_name(u).unwrap().unwrap();
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={}", user.uid),
                &format!("--regid={}", user.gid),
                "--init-groups",
            ])
            .arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .current_dir("/");
    cmd
}

fn uid_of(user: &str) -> u32 {
    ensure_user(user).0
}

/// The audit lines of `uid`.
fn audit_lines(text: &str, uid: u32) -> Vec<String> {
    text.lines()
        .filter(|l| l.contains(&format!(" uid={uid} ")))
        .map(String::from)
        .collect()
}

/// Asserts that one of `lines` contains every one of `parts`.
fn assert_line(lines: &[String], parts: &[&str]) {
    assert!(
        lines.iter().any(|l| parts.iter().all(|p| l.contains(p))),
        "no audit line with {parts:?} in:\n{}",
        lines.join("\n")
    );
}

/// Test user `user` whose primary group is `group` (created if missing).
fn user_with_primary_group(user: &str, group: &str) -> u32 {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap();
    let ok = Command::new("groupadd")
        .args(["-f", group])
        .status()
        .unwrap()
        .success();
    assert!(ok, "groupadd {group}");
    if nix::unistd::User::from_name(user).unwrap().is_none() {
        let st = Command::new("useradd")
            .args([
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "-g",
                group,
                user,
            ])
            .status()
            .unwrap();
        assert!(st.success() || nix::unistd::User::from_name(user).unwrap().is_some());
    }
    nix::unistd::User::from_name(user)
        .unwrap()
        .unwrap()
        .uid
        .as_raw()
}

#[test]
fn ctl_acts_by_the_callers_uid_and_every_request_leaves_an_audit_line() {
    let f = Fixture::start("");
    let (ua, ub, ux) = (uid_of(USER_A), uid_of(USER_B), uid_of(STRANGER));

    // The socket: root's, 0666 (the uid decides, not the mode).
    let st = fs::symlink_metadata(f.socket()).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&st.file_type()));
    assert_eq!((st.uid(), st.mode() & 0o7777), (0, 0o666));

    // Root names the tenant it acts on.
    let out = f.ok(None, &["--tenant", "ta", "status"]);
    assert!(
        out.contains(&format!("tenant ta: user {USER_A} (uid {ua})")),
        "{out}"
    );
    assert!(
        out.contains("app php (fastcgi)") && out.contains("app cgi (cgi)"),
        "{out}"
    );
    let e = f.fails(None, &["status"]);
    assert!(
        e.contains("acts on every tenant: name one with --tenant"),
        "{e}"
    );

    // A tenant's user acts on its own tenant, named or not, and only on it.
    let out = f.ok(Some(USER_A), &["status"]);
    assert!(out.contains("tenant ta:"), "{out}");
    assert!(
        f.ok(Some(USER_A), &["--tenant", "ta", "status"])
            .contains("tenant ta:")
    );
    let e = f.fails(Some(USER_A), &["--tenant", "tb", "status"]);
    assert!(
        e.contains("refused") && e.contains("acts only on its own tenant (ta), not \"tb\""),
        "{e}"
    );
    let e = f.fails(Some(USER_A), &["--tenant", "tb", "stop", "php"]);
    assert!(e.contains("refused"), "{e}");
    let out = f.ok(Some(USER_B), &["status"]);
    assert!(
        out.contains("tenant tb:") && !out.contains("tenant ta"),
        "{out}"
    );

    // Anyone else is refused, and learns nothing of the tenants.
    let e = f.fails(Some(STRANGER), &["status"]);
    assert!(
        e.contains(&format!("uid {ux} ({STRANGER}) may not use berth ctl"))
            && e.contains("no admin_group is configured"),
        "{e}"
    );
    assert_eq!(
        f.fails(Some(STRANGER), &["--tenant", "ta", "logs", "php"]),
        e
    );

    // --json is the typed reply.
    let out = f.ok(Some(USER_A), &["--json", "status"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["status"]["tenant"], "ta", "{out}");
    let apps: Vec<&str> = v["status"]["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(apps, ["php", "cgi"]);

    // Each request left its line: who (uid, name, pid), on what, the result.
    let audit = f.audit();
    let root = audit_lines(&audit, 0);
    assert_line(
        &root,
        &[
            "user=\"root\"",
            "role=\"root\"",
            "tenant=\"ta\"",
            "command=\"status\"",
            "result=ok",
        ],
    );
    assert_line(
        &root,
        &[
            "tenant=-",
            "result=refused why=\"uid 0 (root) acts on every tenant",
        ],
    );
    let a = audit_lines(&audit, ua);
    assert_line(
        &a,
        &[
            &format!("user=\"{USER_A}\""),
            "role=\"tenant\"",
            "tenant=\"ta\"",
            "result=ok",
        ],
    );
    assert_line(
        &a,
        &["tenant=\"tb\"", "command=\"status\"", "result=refused"],
    );
    assert_line(
        &a,
        &["tenant=\"tb\"", "command=\"stop php\"", "result=refused"],
    );
    assert!(
        a.iter()
            .all(|l| l.contains(" pid=") && !l.contains(" pid=?")),
        "{a:?}"
    );
    assert_line(&audit_lines(&audit, ub), &["tenant=\"tb\"", "result=ok"]);
    let x = audit_lines(&audit, ux);
    assert_line(
        &x,
        &[
            "role=\"none\"",
            "command=\"status\"",
            "result=refused why=\"uid",
        ],
    );
    assert_line(&x, &["command=\"logs php --lines 20\"", "result=refused"]);
    assert_eq!(audit.lines().count(), 10, "{audit}");
    // Root's, and nobody else may read it (no admin_group).
    let st = fs::metadata(f.s.log_dir.join("audit.log")).unwrap();
    assert_eq!((st.uid(), st.mode() & 0o777), (0, 0o600));

    // berth removes its socket when it stops.
    let mut f = f;
    assert_eq!(f.s.stop(), Some(0));
    assert!(
        fs::symlink_metadata(f.socket()).is_err(),
        "the socket was left"
    );
}

#[test]
fn admin_group_members_act_on_every_tenant_and_name_the_one() {
    let (gid, adm) = {
        let (uid, _) = user_in_group(ADMIN, ADMINS);
        let gid = nix::unistd::Group::from_name(ADMINS)
            .unwrap()
            .unwrap()
            .gid
            .as_raw();
        (gid, uid)
    };
    let primary = user_with_primary_group(ADMIN_PRIMARY, ADMINS);
    let f = Fixture::start(&format!("admin_group = \"{ADMINS}\""));
    for user in [ADMIN, ADMIN_PRIMARY] {
        let out = f.ok(Some(user), &["--tenant", "tb", "status"]);
        assert!(out.contains("tenant tb:"), "{out}");
        let out = f.ok(Some(user), &["--tenant", "ta", "status"]);
        assert!(out.contains("tenant ta:"), "{out}");
        let e = f.fails(Some(user), &["status"]);
        assert!(e.contains("name one with --tenant"), "{e}");
    }
    // Not a member: refused, naming the group.
    let e = f.fails(Some(STRANGER), &["--tenant", "ta", "status"]);
    assert!(e.contains(&format!("not in admin_group ({ADMINS})")), "{e}");
    let audit = f.audit();
    for uid in [adm, primary] {
        assert_line(
            &audit_lines(&audit, uid),
            &[
                &format!("role=\"admin_group:{ADMINS}\""),
                "tenant=\"tb\"",
                "result=ok",
            ],
        );
    }
    // The group may read the audit log; nobody else.
    let st = fs::metadata(f.s.log_dir.join("audit.log")).unwrap();
    assert_eq!((st.uid(), st.gid(), st.mode() & 0o777), (0, gid, 0o640));
}

#[test]
fn stop_holds_an_app_at_503_until_start_and_a_rolling_restart_gives_new_processes() {
    let f = Fixture::start_host_pids();
    let pid = |r: &Resp| -> u32 {
        assert_eq!(r.status, 200, "{r:?}");
        r.text().trim().parse().unwrap_or_else(|_| panic!("{r:?}"))
    };
    let first = pid(&f.get("/pid.php"));

    // restart (rolling): answered once a new process serves; the old one
    // goes once its requests have ended.
    let out = f.ok(Some(USER_A), &["restart", "php"]);
    assert!(
        out.contains("app ta/php: restarted: 1 new process(es) serve, 1 old one(s) finish"),
        "{out}"
    );
    let second = pid(&f.get("/pid.php"));
    assert_ne!(first, second);
    assert!(
        eventually(Duration::from_secs(15), || !alive(first)),
        "the old process {first} outlived the restart"
    );

    // stop: the process goes, and requests get 503 until start.
    let out = f.ok(Some(USER_A), &["stop", "php"]);
    assert!(
        out.contains("stopped app ta/php: 1 process(es) stopped"),
        "{out}"
    );
    assert!(eventually(Duration::from_secs(15), || !alive(second)));
    for _ in 0..3 {
        assert_eq!(f.get("/pid.php").status, 503);
    }
    let status = f.ok(Some(USER_A), &["status"]);
    assert!(
        status.contains("app php (fastcgi): stopped by berth ctl stop"),
        "{status}"
    );
    assert!(
        f.ok(Some(USER_A), &["stop", "php"])
            .contains("stopped already")
    );
    // Another tenant's app is not touched.
    assert_eq!(get_host(f.s.addr(), "b.test", "/pid.php").status, 200);
    // A reload keeps it stopped.
    f.ok(None, &["--tenant", "ta", "reload"]);
    assert_eq!(f.get("/pid.php").status, 503);

    let out = f.ok(Some(USER_A), &["start", "php"]);
    assert!(out.contains("started app ta/php"), "{out}");
    let third = pid(&f.get("/pid.php"));
    assert!(third != first && third != second);
    let status = f.ok(Some(USER_A), &["status"]);
    assert!(
        status.contains("app php (fastcgi): 1 of at most 4 processes")
            && status.contains(&format!("pid {third}, uid {}", uid_of(USER_A))),
        "{status}"
    );

    // A CGI app: each request runs a script; stopped, none runs.
    assert!(f.get("/cgi-bin/hello.cgi").text().starts_with("pid "));
    f.ok(Some(USER_A), &["stop", "cgi"]);
    assert_eq!(f.get("/cgi-bin/hello.cgi").status, 503);
    f.ok(Some(USER_A), &["start", "cgi"]);
    let r = f.get("/cgi-bin/hello.cgi");
    assert!(r.status == 200 && r.text().starts_with("pid "), "{r:?}");

    // An app the tenant does not have.
    let e = f.fails(Some(USER_A), &["stop", "nope"]);
    assert!(
        e.contains("tenant ta has no app \"nope\" (its apps: php, cgi)"),
        "{e}"
    );
    let audit = audit_lines(&f.audit(), uid_of(USER_A));
    assert_line(&audit, &["command=\"stop php\"", "result=ok"]);
    assert_line(
        &audit,
        &[
            "command=\"stop nope\"",
            "result=error why=\"tenant ta has no app",
        ],
    );
}

#[test]
fn logs_shows_the_apps_lines_and_follow_sees_a_new_requests_line() {
    let f = Fixture::start("");
    assert_eq!(f.get("/pid.php?before").status, 200);
    assert_eq!(f.get("/x.txt").status, 200);
    assert_eq!(f.get("/err.php?early").status, 200);
    assert!(eventually(Duration::from_secs(10), || {
        let log = f.s.access_log("ta");
        log.contains("/x.txt") && log.contains("/err.php?early")
    }));
    // The access log's lines of php: its routes' requests, not the static file's.
    let out = f.ok(Some(USER_A), &["logs", "php"]);
    assert!(
        out.contains("\"GET /pid.php?before HTTP/1.1\" 200"),
        "{out}"
    );
    assert!(!out.contains("/x.txt"), "{out}");
    assert_eq!(
        f.ok(Some(USER_A), &["logs", "php", "--lines", "1"])
            .lines()
            .count(),
        1
    );
    // The error log's lines of php.
    assert!(eventually(Duration::from_secs(10), || {
        f.ok(Some(USER_A), &["logs", "php", "--error"])
            .lines()
            .any(|l| l.contains("[ta/php]") && l.contains("ctl-error-marker early"))
    }));
    assert!(
        !f.ok(Some(USER_A), &["logs", "cgi", "--error"])
            .contains("ctl-error-marker")
    );
    // Not another tenant's.
    assert!(
        f.fails(Some(USER_B), &["--tenant", "ta", "logs", "php"])
            .contains("refused")
    );

    // --follow: a new request's line comes while it runs.
    let mut child = ctl_command(
        &f.bin,
        &f.socket(),
        Some(USER_A),
        &["logs", "php", "--follow"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    {
        let seen = seen.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                seen.lock().unwrap().push_str(&(line + "\n"));
            }
        });
    }
    // It has printed the last lines: it is following.
    assert!(
        eventually(Duration::from_secs(20), || seen
            .lock()
            .unwrap()
            .contains("/pid.php?before")),
        "{}",
        seen.lock().unwrap()
    );
    assert_eq!(f.get("/pid.php?followed").status, 200);
    assert_eq!(f.get("/x.txt?not-php").status, 200);
    let got = eventually(Duration::from_secs(20), || {
        seen.lock()
            .unwrap()
            .contains("GET /pid.php?followed HTTP/1.1")
    });
    kill(&mut child);
    let seen = seen.lock().unwrap().clone();
    assert!(got, "the follower never printed the new request:\n{seen}");
    assert!(!seen.contains("not-php"), "{seen}");
    assert_line(
        &audit_lines(&f.audit(), uid_of(USER_A)),
        &["command=\"logs php --lines 20 --follow\"", "result=ok"],
    );
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A raw connection to the control socket.
fn connect(socket: &Path) -> UnixStream {
    let s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// One reply frame's JSON (None: the connection closed).
fn read_frame(s: &mut UnixStream) -> Option<serde_json::Value> {
    let mut header = [0u8; 4];
    s.read_exact(&mut header).ok()?;
    let mut body = vec![0; u32::from_be_bytes(header) as usize];
    s.read_exact(&mut body).unwrap();
    Some(serde_json::from_slice(&body).unwrap())
}

fn frame(json: &str) -> Vec<u8> {
    let mut out = (json.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out
}

#[test]
fn a_hostile_control_client_does_not_stall_the_supervisor() {
    let f = Fixture::start("");
    // A 1 GiB length is refused at once: berth does not wait for the body.
    let mut huge = connect(&f.socket());
    huge.write_all(&(1u32 << 30).to_be_bytes()).unwrap();
    let reply = read_frame(&mut huge).expect("an answer before any body");
    let message = reply["reply"]["failed"]["message"].as_str().unwrap();
    assert!(
        message.contains("1073741824 bytes is larger than the 65536 allowed"),
        "{reply}"
    );
    assert!(read_frame(&mut huge).is_none(), "closed after it");

    // Root's connections, each with half a frame, hanging: all it may have.
    let mut hanging = Vec::new();
    for _ in 0..8 {
        let mut s = connect(&f.socket());
        s.write_all(&frame(r#"{"version":1,"command":"status"}"#)[..10])
            .unwrap();
        hanging.push(s);
    }
    let started = Instant::now();
    // Root's ninth is refused at once, saying why.
    let mut ninth = connect(&f.socket());
    let reply = read_frame(&mut ninth).expect("a refusal");
    assert!(
        reply["reply"]["refused"]["message"]
            .as_str()
            .unwrap()
            .contains("uid 0 has 8 control connections open"),
        "{reply}"
    );
    // Meanwhile, requests that each need a new process from the supervisor
    // (a CGI script each, and php-cgi restarted between them) are served,
    // and another uid has places of its own.
    for i in 0..10 {
        let r = f.get(&format!("/cgi-bin/hello.cgi?{i}"));
        assert!(r.status == 200 && r.text().starts_with("pid "), "{r:?}");
        if i % 3 == 0 {
            f.ok(Some(USER_A), &["restart", "php"]);
            assert_eq!(f.get("/pid.php").status, 200);
        }
    }
    // (A second or two of work, normally all of it while the others hang:
    // they have 5 s to send their request. On a machine slow enough for the
    // timeouts to fire first, what follows still holds.)
    let took = started.elapsed();
    // They are closed when their time is up, with a reply saying why.
    for mut s in hanging {
        let reply = read_frame(&mut s).expect("a reply before closing");
        assert!(
            reply["reply"]["failed"]["message"]
                .as_str()
                .unwrap()
                .contains("no whole request within 5s"),
            "{reply} (the requests took {took:?})"
        );
        assert!(read_frame(&mut s).is_none());
    }
    // Its places are free again.
    assert!(
        f.ok(None, &["--tenant", "ta", "status"])
            .contains("tenant ta:")
    );
    let audit = audit_lines(&f.audit(), 0);
    assert_line(
        &audit,
        &[
            "command=\"-\"",
            "result=error why=\"a request frame of 1073741824 bytes",
        ],
    );
    assert_line(
        &audit,
        &[
            "command=\"-\"",
            "result=error why=\"not a control protocol request: no whole request within 5s",
        ],
    );
}

#[test]
fn another_protocol_version_gets_a_message_naming_both() {
    let f = Fixture::start("");
    // A newer berth ctl against this berth.
    let mut s = connect(&f.socket());
    s.write_all(&frame(
        r#"{"version":2,"command":{"rollback":{"to":"yesterday"}}}"#,
    ))
    .unwrap();
    let reply = read_frame(&mut s).unwrap();
    let u = &reply["reply"]["unsupported"];
    assert_eq!(
        (u["berth_version"].as_u64(), u["request_version"].as_u64()),
        (Some(1), Some(2))
    );
    let m = u["message"].as_str().unwrap();
    assert!(
        m.contains("berth ctl speaks control protocol 2, this berth speaks 1"),
        "{m}"
    );
    // A command this berth does not know, in its own version.
    let mut s = connect(&f.socket());
    s.write_all(&frame(r#"{"version":1,"command":"frobnicate"}"#))
        .unwrap();
    let reply = read_frame(&mut s).unwrap();
    let m = reply["reply"]["unsupported"]["message"].as_str().unwrap();
    assert!(
        m.contains("has no command \"frobnicate\"") && m.contains("status, restart"),
        "{m}"
    );
    // Garbage.
    let mut s = connect(&f.socket());
    s.write_all(&frame("{\"version\":1,\"command\":\"status\""))
        .unwrap();
    let reply = read_frame(&mut s).unwrap();
    assert!(
        reply["reply"]["failed"]["message"]
            .as_str()
            .unwrap()
            .contains("not JSON")
    );

    // This berth ctl against a berth that answers in another version: a
    // socket of the test's own, answering as a newer berth would.
    let fake = f.dir.join("newer.sock");
    let listener = UnixListener::bind(&fake).unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o666)).unwrap();
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = listener.accept() {
            let mut header = [0u8; 4];
            let _ = c.read_exact(&mut header);
            let mut body = vec![0; u32::from_be_bytes(header) as usize];
            let _ = c.read_exact(&mut body);
            let _ = c.write_all(&frame(r#"{"version":2,"reply":{"teleported":{}}}"#));
        }
    });
    let out = ctl_command(&f.bin, &fake, Some(USER_A), &["status"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("berth answered in control protocol 2, this berth ctl speaks 1"),
        "{stderr}"
    );
    let audit = audit_lines(&f.audit(), 0);
    assert_line(
        &audit,
        &["result=error why=\"berth ctl speaks control protocol 2, this berth speaks 1"],
    );
    assert_line(
        &audit,
        &["result=error why=\"this berth (control protocol 1) has no command \\\"frobnicate\\\""],
    );
}

#[test]
fn a_tenants_reload_rereads_its_own_file_and_never_puts_the_administrators_edit_to_use() {
    let f = Fixture::start("");
    let path = f.dir.join("berth.toml");
    let good = fs::read_to_string(&path).unwrap();
    let own = f.dir.join("home-a/berth.toml");
    let write_own = |text: &str| {
        fs::write(&own, text).unwrap();
        std::os::unix::fs::chown(&own, Some(uid_of(USER_A)), None).unwrap();
    };
    let status_of = |p: &str| f.get(p).status;
    // The administrator is in the middle of an edit: a valid new route for
    // ta, and a problem in tb's block. Only the administrator's SIGHUP (or
    // reload) may put it to use; a tenant's reload must not.
    let editing = good
        .replace(
            "[[tenant.ta.site.route]]\npath = \"/cgi-bin\"",
            "[[tenant.ta.site.route]]\npath = \"/by-admin\"\nredirect = \"/x\"\n\n[[tenant.ta.site.route]]\npath = \"/cgi-bin\"",
        )
        .replace("[tenant.tb]\n", "[tenant.tb]\nbogus_key = 1\n");
    assert_ne!(editing, good);
    fs::write(&path, &editing).unwrap();

    // ta's own file, put to use by ta alone.
    write_own("[[route]]\npath = \"/mine\"\nredirect = \"/first\"\n");
    let out = f.ok(Some(USER_A), &["check"]);
    assert!(out.contains("would be accepted"), "{out}");
    std::thread::sleep(Duration::from_millis(1100)); // a tenant reloads once a second
    let out = f.ok(Some(USER_A), &["reload"]);
    assert!(
        out.contains(&format!("{} is in use", own.display())),
        "{out}"
    );
    assert_eq!(status_of("/mine/x"), 308);
    assert_eq!(
        status_of("/by-admin"),
        404,
        "the admin's edit was put to use by a tenant"
    );

    // A refused file: its problems come back with their lines, and the last
    // good one stays in use.
    write_own(
        "[[route]]\npath = \"/mine\"\nredirect = \"/second\"\n[limits]\nmemory = \"64GiB\"\n",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let e = f.fails(Some(USER_A), &["check"]);
    assert!(
        e.contains(&format!("{}:5: limits.memory:", own.display())),
        "{e}"
    );
    assert!(!e.contains("bogus_key"), "{e}");
    std::thread::sleep(Duration::from_millis(1100));
    let e = f.fails(Some(USER_A), &["reload"]);
    assert!(
        e.contains(&format!("{}:5: limits.memory:", own.display())),
        "{e}"
    );
    assert!(e.contains("last accepted version is still in use"), "{e}");
    let r = f.get("/mine/x");
    assert_eq!(
        (r.status, r.header("location")),
        (308, Some("/first/x".into()))
    );
    std::thread::sleep(Duration::from_millis(1100));
    let json = f.ctl(Some(USER_A), &["--json", "reload"]);
    assert_eq!(json.code, Some(1));
    let v: serde_json::Value = serde_json::from_str(json.stdout.trim()).unwrap();
    assert_eq!(v["reload"]["ok"], false);

    // Root's reload is the whole one: it sees the administrator's problem,
    // and changes nothing either.
    let e = f.fails(None, &["--tenant", "tb", "reload"]);
    let tb_problem = format!(
        "{}:{}: tenant.tb.bogus_key:",
        path.display(),
        editing
            .lines()
            .position(|l| l.contains("bogus_key"))
            .unwrap()
            + 1
    );
    assert!(e.contains(&tb_problem), "{e}");
    assert!(
        e.contains("still serving the previous configuration"),
        "{e}"
    );
    assert_eq!(status_of("/by-admin"), 404);
    assert_eq!(f.get("/pid.php").status, 200);

    // The administrator finishes; its reload puts both to use.
    fs::write(&path, editing.replace("bogus_key = 1\n", "")).unwrap();
    write_own("[[route]]\npath = \"/mine\"\nredirect = \"/third\"\n");
    let out = f.ok(None, &["--tenant", "ta", "reload"]);
    assert!(out.contains("configuration reloaded from"), "{out}");
    assert_eq!(status_of("/by-admin"), 308);
    let r = f.get("/mine/x");
    assert_eq!(
        (r.status, r.header("location")),
        (308, Some("/third/x".into()))
    );
    let audit = audit_lines(&f.audit(), uid_of(USER_A));
    assert_line(&audit, &["command=\"reload\"", "result=error"]);
    assert_line(&audit, &["command=\"reload\"", "result=ok"]);
    assert_line(&audit, &["command=\"check\"", "result=ok"]);
}

#[test]
fn usage_is_the_callers_tenants_per_app() {
    let f = Fixture::start("meter_interval = \"1s\"");
    for _ in 0..3 {
        assert_eq!(f.get("/pid.php").status, 200);
        assert_eq!(get_host(f.s.addr(), "b.test", "/pid.php").status, 200);
    }
    // Samples are in the database within a few intervals.
    let mut rows = Vec::new();
    let found = eventually(Duration::from_secs(30), || {
        let out = f.ctl(Some(USER_A), &["--json", "usage", "--since", "-1h"]);
        if out.code != Some(0) {
            return false;
        }
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
        rows = v["usage"]["rows"].as_array().cloned().unwrap_or_default();
        rows.iter().any(|r| r["requests"].as_u64() >= Some(3))
    });
    assert!(found, "{rows:?}");
    assert!(rows.iter().all(|r| r["tenant"] == "ta"), "{rows:?}");
    assert!(rows.iter().any(|r| r["app"] == "php"), "per app: {rows:?}");
    let table = f.ok(Some(USER_A), &["usage"]);
    assert!(
        table.starts_with("Usage from") && table.contains("ta "),
        "{table}"
    );
    assert!(!table.contains("tb "), "{table}");
}

#[test]
fn what_is_at_the_sockets_path_decides_whether_berth_replaces_it() {
    require_root();
    // A stale socket (a crashed berth's: nobody listens) is replaced.
    let dir = Dir::new();
    let (config, port, tls_port, _home) = make_config(&dir, "");
    dir.mkdir("state");
    drop(UnixListener::bind(dir.join("state/control.sock")).unwrap());
    let s = Server::start(&dir, &config, port, tls_port);
    let bin = ctl_binary(&dir);
    let out = ctl_command(
        &bin,
        &dir.join("state/control.sock"),
        Some(USER_A),
        &["status"],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}\n{}", s.output());
    assert!(
        s.output().contains("replacing a stale one"),
        "{}",
        s.output()
    );

    // A live one (this berth's) is not taken by a second berth: it serves
    // on without one, and says why.
    let dir2 = Dir::new();
    let (config2, port2, tls_port2, _home2) = make_config(&dir2, "");
    let config2 = config2.replace(
        &dir2.join("state/control.sock").display().to_string(),
        &dir.join("state/control.sock").display().to_string(),
    );
    let s2 = Server::start(&dir2, &config2, port2, tls_port2);
    assert!(
        s2.wait_output(
            "is in use by a running process (pid",
            Duration::from_secs(10)
        ),
        "{}",
        s2.output()
    );
    let out = ctl_command(
        &bin,
        &dir.join("state/control.sock"),
        None,
        &["--tenant", "ta", "status"],
    )
    .output()
    .unwrap();
    assert!(out.status.success());
    drop(s2);

    // A file, a directory or a symlink at the path is never touched:
    // berth check (and berth serve) refuse the configuration, naming it.
    let target = dir.write("precious.txt", "keep me\n");
    for what in ["a regular file", "a symbolic link", "a directory"] {
        let d = Dir::new();
        let (config, ..) = make_config(&d, "");
        let cfg = d.write("berth.toml", &config);
        d.mkdir("state");
        let at = d.join("state/control.sock");
        match what {
            "a regular file" => fs::write(&at, "not a socket\n").unwrap(),
            "a symbolic link" => std::os::unix::fs::symlink(&target, &at).unwrap(),
            _ => fs::create_dir(&at).unwrap(),
        }
        let out = Command::new(BERTH)
            .args(["check", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = config
            .lines()
            .position(|l| l.starts_with("control_socket"))
            .unwrap()
            + 1;
        assert_eq!(out.status.code(), Some(1), "{what}: {stdout}");
        assert!(
            stdout.contains(&format!(
                "{}:{line}: server.control_socket: {} exists and is {what}",
                cfg.display(),
                d.join("state/control.sock").display()
            )),
            "{stdout}"
        );
    }
    assert_eq!(fs::read_to_string(&target).unwrap(), "keep me\n");
}

#[test]
fn control_socket_and_admin_group_problems_name_their_line() {
    require_root();
    ensure_user("berth-tfront");
    let dir = Dir::new();
    let long = format!("/tmp/{}/control.sock", "x".repeat(120));
    let text = format!(
        r#"[server]
listen = ["127.0.0.1:18081"]
user = "berth-tfront"
state_dir = "{state}"
log_dir = "{log}"
control_socket = "{long}"
admin_group = "berth-no-such-group"
"#,
        state = dir.join("state").display(),
        log = dir.join("log").display(),
    );
    let cfg = dir.write("berth.toml", &text);
    let check = |cfg: &Path| {
        let out = Command::new(BERTH)
            .args(["check", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = check(&cfg);
    assert_eq!(code, Some(1));
    let f = cfg.display();
    assert!(
        out.contains(&format!(
            "{f}:6: server.control_socket: {long} is {} bytes long; a Unix socket's path can be at most 107",
            long.len()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{f}:7: server.admin_group: no such group \"berth-no-such-group\""
        )),
        "{out}"
    );
    // A directory, and the front end's own group.
    let text = text
        .replace(&long, &format!("{}/", dir.path().display()))
        .replace("berth-no-such-group", "berth-tfront");
    let cfg = dir.write("berth.toml", &text);
    let (code, out) = check(&cfg);
    assert_eq!(code, Some(1));
    assert!(
        out.contains(&format!("{f}:6: server.control_socket: "))
            && out.contains("names a directory"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{f}:7: server.admin_group: the front end's user \"berth-tfront\" is in group \"berth-tfront\"")),
        "{out}"
    );
    // "off" is no socket at all.
    let text = text
        .replace(&format!("{}/", dir.path().display()), "off")
        .replace("admin_group = \"berth-tfront\"\n", "");
    let cfg = dir.write("berth.toml", &text);
    assert_eq!(check(&cfg).0, Some(0), "{}", check(&cfg).1);
}

#[test]
fn the_audit_log_rotates_with_the_other_logs_and_keeps_its_owner_and_mode() {
    let f = Fixture::start("log_rotate = \"4KiB\"\nlog_keep = 3");
    let audit = f.s.log_dir.join("audit.log");
    let rotated = f.s.log_dir.join("audit.log.1");
    // At the rate a uid may keep up (five a second), until it rotates.
    let mut asked = 0;
    let found = (0..30).any(|_| {
        for _ in 0..4 {
            f.ok(None, &["--tenant", "ta", "status"]);
            asked += 1;
        }
        std::thread::sleep(Duration::from_secs(1));
        rotated.exists()
    });
    assert!(found, "audit.log never rotated after {asked} requests");
    // Every request is in one of the two files, once.
    let text = format!(
        "{}{}",
        fs::read_to_string(&rotated).unwrap(),
        fs::read_to_string(&audit).unwrap()
    );
    let lines = audit_lines(&text, 0)
        .into_iter()
        .filter(|l| l.contains("command=\"status\""))
        .count();
    assert_eq!(lines, asked, "{text}");
    for p in [&audit, &rotated] {
        let st = fs::symlink_metadata(p).unwrap();
        assert_eq!((st.uid(), st.mode() & 0o777), (0, 0o600), "{}", p.display());
    }
}

#[test]
fn a_request_past_its_uids_rate_is_refused_unrun_so_every_request_that_ran_has_its_audit_line() {
    let f = Fixture::start("");
    let (mut ran, mut refused) = (0, 0);
    for _ in 0..130 {
        let out = f.ctl(Some(USER_A), &["stop", "cgi"]);
        match out.code {
            Some(0) => ran += 1,
            _ => {
                assert!(out.stderr.contains("more than 5 times a second"), "{out:?}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "130 requests at once were all run");
    let lines = audit_lines(&f.audit(), uid_of(USER_A));
    let written = lines
        .iter()
        .filter(|l| l.contains("command=\"stop cgi\""))
        .count();
    assert_eq!(written, ran, "{lines:#?}");
    // Its next lines count what was refused, every one.
    std::thread::sleep(Duration::from_millis(500));
    f.ok(Some(USER_A), &["start", "cgi"]);
    let lines = audit_lines(&f.audit(), uid_of(USER_A));
    let counted: usize = lines
        .iter()
        .filter_map(|l| l.split("refused=").nth(1))
        .filter_map(|r| r.split(' ').next()?.parse::<usize>().ok())
        .sum();
    assert_eq!(counted, refused, "{lines:#?}");
}

#[test]
fn a_strangers_request_quoting_64kib_back_cannot_write_a_64kib_audit_line() {
    let f = Fixture::start("");
    let ux = uid_of(STRANGER);
    let user = nix::unistd::User::from_name(STRANGER).unwrap().unwrap();
    // An unknown field of 60,000 bytes: the message that refuses it quotes
    // it, and the audit line quoted the message whole, so any local user
    // wrote 64 KiB lines at 5 a second.
    let client = r#"
import json, socket, struct, sys
body = json.dumps({"version": 1, "command": "status", "k" * 60000: 1}).encode()
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(struct.pack(">I", len(body)) + body)
n = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
print(json.loads(s.recv(n, socket.MSG_WAITALL))["reply"]["failed"]["message"][:40])
"#;
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={}", user.uid),
            &format!("--regid={}", user.gid),
            "--init-groups",
            "/usr/bin/python3",
            "-c",
            client,
        ])
        .arg(f.socket())
        .current_dir("/")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("invalid status request"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = audit_lines(&f.audit(), ux);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].len() < 2048 && lines[0].contains("more bytes)"),
        "a line of {} bytes: {}",
        lines[0].len(),
        &lines[0][..lines[0].len().min(300)]
    );
}

#[test]
fn eight_local_users_filling_the_control_socket_do_not_lock_root_out() {
    let f = Fixture::start("");
    // Any 8 local users (no tenant's, no admin's) hold 8 connections each,
    // each with half a request: every one of the 64 places. Each is given
    // 5 s to finish its request, and can be opened again at once.
    let hold = r#"
import socket, sys, time
held = []
for _ in range(8):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.sendall(b"\x00\x00\x00\x20{")
    held.append(s)
print("held", flush=True)
time.sleep(30)
"#;
    let mut holders = Vec::new();
    for i in 1..=8 {
        let name = format!("berth-tch{i}");
        let (uid, gid) = ensure_user(&name);
        let mut child = Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                "--init-groups",
                "/usr/bin/python3",
                "-c",
                hold,
            ])
            .arg(f.socket())
            .current_dir("/")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "held");
        holders.push(child);
    }
    // A local user who is not root finds them all taken (refused before
    // it sends a byte)...
    let user = nix::unistd::User::from_name(STRANGER).unwrap().unwrap();
    let look = r#"
import json, socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
n = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
print(json.loads(s.recv(n, socket.MSG_WAITALL))["reply"]["refused"]["message"])
"#;
    let stranger = Command::new("setpriv")
        .args([
            &format!("--reuid={}", user.uid),
            &format!("--regid={}", user.gid),
            "--init-groups",
            "/usr/bin/python3",
            "-c",
            look,
        ])
        .arg(f.socket())
        .current_dir("/")
        .output()
        .unwrap();
    let stranger = String::from_utf8_lossy(&stranger.stdout).into_owned();
    // ...and root is still served.
    let root = f.ctl(None, &["--tenant", "ta", "status"]);
    for mut h in holders {
        kill(&mut h);
    }
    assert!(stranger.contains("64 connections open"), "{stranger:?}");
    assert_eq!(root.code, Some(0), "{root:?}");
    assert!(root.stdout.contains("tenant ta:"), "{root:?}");
}

#[test]
fn a_request_sent_after_ctl_reload_returns_meets_the_new_configuration() {
    let f = Fixture::start("");
    let own = f.dir.join("home-a/berth.toml");
    // The answer came once the supervisor had sent the plan, not once the
    // front end served it: a request sent right after could still meet the
    // old configuration.
    for i in 0..15 {
        fs::write(
            &own,
            format!("[[route]]\npath = \"/v\"\nredirect = \"/v{i}\"\n"),
        )
        .unwrap();
        std::os::unix::fs::chown(&own, Some(uid_of(USER_A)), None).unwrap();
        let out = f.ok(None, &["--tenant", "ta", "reload"]);
        assert!(out.contains("configuration reloaded"), "{out}");
        let r = f.get("/v/x");
        assert_eq!(
            (r.status, r.header("location")),
            (308, Some(format!("/v{i}/x"))),
            "reload {i}"
        );
    }
}
