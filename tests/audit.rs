//! `berth audit`: a tree with one planted problem per check reports each
//! with its place and severity; a clean tree reports nothing at or above
//! `low` and exits 0; `--fail-on` sets the exit status; `--format json`
//! parses and holds the same findings; a configuration that does not load
//! exits 2 with its problems. Real files, real users, real certificates.
mod common;
use common::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

/// Runs `berth audit --config PATH ARGS`; returns (exit code, stdout, stderr).
fn audit(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    berth_run("audit", config, args)
}

/// The findings of `--format json`.
fn findings(config: &Path) -> Vec<Value> {
    let (_, stdout, stderr) = audit(config, &["--format", "json"]);
    match serde_json::from_str::<Value>(&stdout) {
        Ok(Value::Array(all)) => all,
        other => panic!("not a JSON array ({other:?}):\n{stdout}\n{stderr}"),
    }
}

/// A finding's place as the text report writes it.
fn place(f: &Value) -> String {
    let p = &f["place"];
    let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
    let n = |k: &str| p[k].as_u64().unwrap_or_default();
    match p["kind"].as_str().unwrap() {
        "path" => match p["line"].as_u64() {
            Some(l) => format!("{}:{l}", s("path")),
            None => s("path"),
        },
        "config" => format!("{}:{}: {}", s("file"), n("line"), s("key")),
        "listener" => format!(
            "{} ({}:{}: {})",
            s("address"),
            s("file"),
            n("line"),
            s("key")
        ),
        "tenant" => format!("tenant {} ({}:{})", s("tenant"), s("file"), n("line")),
        "host" => "this host".into(),
        other => panic!("unknown place kind {other}"),
    }
}

/// Asserts that `all` has a finding of `check` at `severity` whose place
/// is `at`, and returns it.
fn expect<'a>(all: &'a [Value], severity: &str, check: &str, at: &str) -> &'a Value {
    all.iter()
        .find(|f| f["check"] == check && f["severity"] == severity && place(f) == at)
        .unwrap_or_else(|| {
            let listed: Vec<String> = all
                .iter()
                .map(|f| format!("{} {} {}", f["severity"], f["check"], place(f)))
                .collect();
            panic!(
                "no {severity} {check} at {at} among:\n{}",
                listed.join("\n")
            )
        })
}

fn none_at(all: &[Value], at: &str) {
    let found: Vec<&Value> = all.iter().filter(|f| place(f) == at).collect();
    assert!(found.is_empty(), "expected nothing at {at}: {found:#?}");
}

/// Held while this binary's tests change users and groups: two `usermod`s
/// at once fail to lock /etc/passwd.
static ACCOUNTS: Mutex<()> = Mutex::new(());

fn run(argv: &[&str]) {
    let st = Command::new(argv[0]).args(&argv[1..]).status().unwrap();
    assert!(st.success(), "{argv:?}");
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// chown (of the link itself, for a link) to `user`.
fn chown(path: &Path, owner: &str) {
    run(&["chown", "-h", owner, path.to_str().unwrap()]);
}

/// A system account (`useradd --system`: a uid below UID_MIN).
fn ensure_system_user(name: &str) -> (u32, u32) {
    assert!(name.starts_with("berth-t"));
    if nix::unistd::User::from_name(name).unwrap().is_none() {
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ])
            .status();
    }
    let u = nix::unistd::User::from_name(name).unwrap().unwrap();
    (u.uid.as_raw(), u.gid.as_raw())
}

/// A line of an htpasswd file for `user`, bcrypt at `cost`.
fn htpasswd_line(user: &str, cost: &str) -> String {
    let out = Command::new("htpasswd")
        .args(["-nbB", "-C", cost, user, "secret"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string() + "\n"
}

/// A self-signed certificate and key by openssl (`extra`: `-sha1`,
/// `-days 10`), written as `NAME.pem` and `NAME.key` (0600).
fn openssl_cert(dir: &Dir, name: &str, host: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(&format!("{name}.pem")),
        dir.join(&format!("{name}.key")),
    );
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args(extra)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args([
            "-subj",
            &format!("/CN={host}"),
            "-addext",
            &format!("subjectAltName=DNS:{host}"),
        ])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    chmod(&key, 0o600);
    (cert, key)
}

/// A self-signed certificate for `hosts` that expired in 2020.
fn expired_cert(dir: &Dir, name: &str, hosts: &[&str]) -> (PathBuf, PathBuf) {
    let mut params =
        rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.not_before = rcgen::date_time_ymd(2019, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let c = dir.write(&format!("{name}.pem"), cert.pem());
    let k = dir.write(&format!("{name}.key"), key.serialize_pem());
    chmod(&k, 0o600);
    (c, k)
}

/// The 1-based line of the first line of `text` that starts with `start`.
fn line_no(text: &str, start: &str) -> usize {
    text.lines()
        .position(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("{start:?} not in:\n{text}"))
        + 1
}

/// A tree with one planted problem per check, and its configuration.
struct Planted {
    dir: Dir,
    config: PathBuf,
    text: String,
}

fn planted() -> Planted {
    require_root();
    let dir = Dir::new();
    let d = dir.path().display().to_string();
    let accounts = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    ensure_user("berth-taudfd");
    let a = ensure_user("berth-tauda");
    let b = ensure_user("berth-taudb");
    ensure_system_user("berth-taudsys");
    ensure_user("berth-taudlog");
    run(&[
        "usermod",
        "-s",
        "/bin/bash",
        "-p",
        "$6$salt$notarealhash",
        "berth-taudlog",
    ]);
    ensure_user("berth-taudnil");
    run(&["usermod", "-s", "/bin/bash", "-p", "", "berth-taudnil"]);
    ensure_user("berth-taudadm");
    run(&["usermod", "-a", "-G", "adm", "berth-taudadm"]);
    ensure_user("berth-taudx");
    run(&["usermod", "-a", "-G", "berth-taudfd", "berth-taudx"]);
    run(&["groupadd", "-f", "berth-taudops"]);
    run(&["usermod", "-a", "-G", "berth-taudops", "berth-tauda"]);
    drop(accounts);

    // Tenant A: its home and root, and what is planted in the root.
    let home = dir.mkdir("a");
    let root = dir.mkdir("a/public");
    dir.write("a/public/index.html", "hello");
    dir.write("a/private.txt", "A's own, outside the root");
    dir.mkdir("a/public/upload");
    dir.write("a/public/front.html", "x");
    dir.write("a/public/group.html", "x");
    dir.write("a/public/tool", "#!/bin/sh\n");
    dir.write("a/public/rootshell", "#!/bin/sh\n");
    dir.write("a/public/notes.txt", "x");
    dir.write("a/public/cgi/run.cgi", "#!/bin/sh\necho\n");
    dir.write(
        "a/public/app.py",
        "#!/usr/bin/python3\n# DB_PASSWORD = 'hunter2'\n",
    );
    let key = rcgen::KeyPair::generate().unwrap();
    dir.write("a/public/site.key", key.serialize_pem());
    dir.write("a/public/.htpasswd", htpasswd_line("x", "10"));
    dir.write("a/public/.git/config", "[core]\n");
    dir.write("a/public/backup.sql", "INSERT INTO users ...");
    dir.write("a/public/index.php.bak", "<?php $password = 'x';");
    dir.write("a/public/theirs.txt", "B's");
    dir.symlink("/etc/passwd", "a/public/passwd");
    dir.symlink("../private.txt", "a/public/mine");
    dir.symlink("theirs.txt", "a/public/their");
    dir.chown("a", a.0, a.1);
    chmod(&root.join("upload"), 0o777);
    chown(&root.join("front.html"), "berth-taudfd");
    chown(&root.join("group.html"), "berth-tauda:berth-taudb");
    chmod(&root.join("group.html"), 0o664);
    chmod(&root.join("tool"), 0o4755);
    chown(&root.join("rootshell"), "root");
    chmod(&root.join("rootshell"), 0o4755);
    chmod(&root.join("notes.txt"), 0o755);
    chmod(&root.join("cgi/run.cgi"), 0o755);
    chmod(&root.join("app.py"), 0o755);
    chown(&root.join("theirs.txt"), "berth-taudb");

    // Tenant B: three sites, each certificate wrong in its own way.
    for r in ["b/public", "b/soon", "b/sha1"] {
        dir.write(&format!("{r}/index.html"), "b");
    }
    dir.chown("b", b.0, b.1);
    let pki = Pki::new();
    let (a_cert, a_key) = pki.issue(&dir, "a", &["a.test"]);
    chmod(&a_key, 0o644);
    let (b_cert, b_key) = expired_cert(&dir, "b", &["b.test"]);
    let (soon_cert, soon_key) = openssl_cert(&dir, "soon", "soon.test", &["-days", "10"]);
    let (sha1_cert, sha1_key) = openssl_cert(&dir, "sha1", "sha1.test", &["-sha1", "-days", "365"]);

    dir.write("admin.htpasswd", htpasswd_line("editor", "5"));
    let ops = dir.write("ops.htpasswd", htpasswd_line("ops", "10"));
    chmod(&ops, 0o600);
    let log = dir.write("log/ta/access.log", "127.0.0.1 - - ...\n");
    chmod(&log, 0o644);

    let text = format!(
        r#"[server]
listen = ["0.0.0.0:18080"]
tls_listen = ["127.0.0.1:18443"]
user = "berth-taudfd"
state_dir = "{d}/state"
log_dir = "{d}/log"
log_rotate = "off"
control_socket = "{d}/run/control.sock"
admin_group = "berth-taudops"
admin_listen = "0.0.0.0:18081"
admin_htpasswd = "{d}/ops.htpasswd"
min_uid = 100
include = ["tenants.d/*.toml"]

[tenant.ta]
user = "berth-tauda"
home = "{home}"

[tenant.ta.app.cgi]
protocol = "cgi"

[tenant.ta.app.web]
protocol = "http"
command = ["{home}/public/app.py"]
dir = "{home}"
env = {{ DB_PASSWORD = "hunter2", APP_ENV = "production" }}

[[tenant.ta.site]]
hosts = ["a.test"]
root = "{home}/public"
tls = {{ cert = "{a_cert}", key = "{a_key}" }}

[[tenant.ta.site.route]]
path = "/"
app = "cgi"
extensions = ["php", "cgi"]

[[tenant.ta.site.route]]
path = "/admin"
auth = {{ realm = "admin", htpasswd = "{d}/admin.htpasswd" }}

[[tenant.ta.site.route]]
path = "/app"
app = "web"

[tenant.tsys]
user = "berth-taudsys"

[tenant.tlog]
user = "berth-taudlog"

[tenant.tnil]
user = "berth-taudnil"

[tenant.tadm]
user = "berth-taudadm"
"#,
        home = home.display(),
        a_cert = a_cert.display(),
        a_key = a_key.display(),
    );
    let config = dir.write("berth.toml", &text);
    let include = dir.write(
        "tenants.d/b.toml",
        format!(
            r#"[tenant.tb]
user = "berth-taudb"

[[tenant.tb.site]]
hosts = ["b.test", "www.b.test"]
root = "{d}/b/public"
tls = {{ cert = "{b_cert}", key = "{b_key}" }}

[[tenant.tb.site]]
hosts = ["soon.test"]
root = "{d}/b/soon"
tls = {{ cert = "{soon_cert}", key = "{soon_key}" }}

[[tenant.tb.site]]
hosts = ["sha1.test"]
root = "{d}/b/sha1"
tls = {{ cert = "{sha1_cert}", key = "{sha1_key}" }}
"#,
            b_cert = b_cert.display(),
            b_key = b_key.display(),
            soon_cert = soon_cert.display(),
            soon_key = soon_key.display(),
            sha1_cert = sha1_cert.display(),
            sha1_key = sha1_key.display(),
        ),
    );
    chown(&include, "berth-taudb");
    Planted { dir, config, text }
}

#[test]
fn every_planted_problem_is_found_with_its_place_and_severity() {
    let t = planted();
    let (code, stdout, stderr) = audit(&t.config, &[]);
    assert_eq!(
        code,
        Some(1),
        "criticals fail the default --fail-on high:\n{stdout}\n{stderr}"
    );
    let all = findings(&t.config);
    let d = t.dir.path().display().to_string();
    let p = |rel: &str| format!("{d}/{rel}");
    let main = t.config.display().to_string();
    let at = |start: &str| line_no(&t.text, start);

    // Site roots.
    expect(&all, "high", "root-writable", &p("a/public/upload"));
    let front = expect(&all, "high", "root-writable", &p("a/public/front.html"));
    assert!(
        front["what"].as_str().unwrap().contains("berth-taudfd"),
        "{front}"
    );
    let group = expect(&all, "medium", "root-writable", &p("a/public/group.html"));
    assert!(
        group["what"].as_str().unwrap().contains("berth-taudb"),
        "{group}"
    );
    expect(&all, "high", "root-setid", &p("a/public/tool"));
    expect(&all, "critical", "root-setid", &p("a/public/rootshell"));
    expect(&all, "low", "root-executable", &p("a/public/notes.txt"));
    none_at(&all, &p("a/public/cgi/run.cgi"));
    expect(&all, "medium", "root-app-source", &p("a/public/app.py"));
    let key = expect(
        &all,
        "critical",
        "root-service-file",
        &p("a/public/site.key"),
    );
    assert!(
        key["what"]
            .as_str()
            .unwrap()
            .contains("served at a.test/site.key"),
        "{key}"
    );
    expect(&all, "low", "root-service-file", &p("a/public/.htpasswd"));
    expect(&all, "low", "root-service-file", &p("a/public/.git"));
    expect(
        &all,
        "medium",
        "root-service-file",
        &p("a/public/backup.sql"),
    );
    expect(
        &all,
        "medium",
        "root-service-file",
        &p("a/public/index.php.bak"),
    );
    expect(&all, "medium", "root-symlink", &p("a/public/passwd"));
    expect(&all, "low", "root-symlink", &p("a/public/mine"));
    let their = expect(&all, "medium", "root-symlink", &p("a/public/their"));
    assert!(their["what"].as_str().unwrap().contains("403"), "{their}");
    none_at(&all, &p("a/public/index.html"));

    // Keys, htpasswd files, certificates.
    expect(&all, "critical", "tls-key", &p("a.key"));
    expect(
        &all,
        "low",
        "htpasswd-hash",
        &format!("{}:1", p("admin.htpasswd")),
    );
    expect(&all, "medium", "htpasswd-file", &p("admin.htpasswd"));
    none_at(&all, &p("ops.htpasswd"));
    none_at(&all, &format!("{}:1", p("ops.htpasswd")));
    expect(&all, "high", "cert-expired", &p("b.pem"));
    let host = expect(&all, "medium", "cert-host", &p("b.pem"));
    assert!(
        host["what"].as_str().unwrap().contains("www.b.test"),
        "{host}"
    );
    expect(&all, "medium", "cert-expiring", &p("soon.pem"));
    expect(&all, "medium", "cert-signature", &p("sha1.pem"));
    none_at(&all, &p("a.pem"));

    // berth's own files.
    expect(&all, "critical", "config-writable", &p("tenants.d/b.toml"));
    expect(
        &all,
        "medium",
        "config-secrets",
        &format!(
            "{main}:{}: tenant.ta.app.web.env.DB_PASSWORD",
            at("[tenant.ta.app.web]")
        ),
    );
    expect(&all, "low", "berth-dir", &p("log/ta/access.log"));

    // Listeners and sockets.
    let admin_route = line_no(&t.text, "path = \"/admin\"") - 1;
    expect(
        &all,
        "high",
        "auth-plain-http",
        &format!("{main}:{admin_route}: tenant.ta.site[0].route(/admin).auth"),
    );
    expect(
        &all,
        "high",
        "admin-plain-http",
        &format!(
            "0.0.0.0:18081 ({main}:{}: server.admin_listen)",
            at("admin_listen")
        ),
    );
    expect(
        &all,
        "low",
        "listen-exposed",
        &format!("0.0.0.0:18080 ({main}:{}: server.listen)", at("listen")),
    );
    expect(&all, "low", "control-socket-dir", "/tmp");
    expect(
        &all,
        "info",
        "control-socket",
        &format!("{main}:{}: server.control_socket", at("control_socket")),
    );
    let ops = expect(
        &all,
        "high",
        "control-admin-group",
        &format!("{main}:{}: server.admin_group", at("admin_group")),
    );
    assert_eq!(ops["tenant"], "ta");

    // Users and groups.
    expect(
        &all,
        "medium",
        "min-uid",
        &format!("{main}:{}: server.min_uid", at("min_uid")),
    );
    let tenant = |name: &str, user: &str| {
        format!(
            "tenant {name} ({main}:{})",
            at(&format!("user = \"{user}\""))
        )
    };
    expect(
        &all,
        "high",
        "tenant-system-user",
        &tenant("tsys", "berth-taudsys"),
    );
    expect(
        &all,
        "medium",
        "privileged-group",
        &tenant("tadm", "berth-taudadm"),
    );
    expect(
        &all,
        "info",
        "tenant-login",
        &tenant("tlog", "berth-taudlog"),
    );
    expect(
        &all,
        "high",
        "tenant-login",
        &tenant("tnil", "berth-taudnil"),
    );
    let member = expect(
        &all,
        "high",
        "front-group",
        &format!("{main}:{}: server.user", at("user = \"berth-taudfd\"")),
    );
    assert!(
        member["what"].as_str().unwrap().contains("berth-taudx"),
        "{member}"
    );
}

#[test]
fn json_has_the_same_findings_as_the_text_report() {
    let t = planted();
    let (code, text, _) = audit(&t.config, &["--fail-on", "critical"]);
    assert_eq!(code, Some(1));
    let (json_code, json, _) = audit(&t.config, &["--format", "json", "--fail-on", "critical"]);
    assert_eq!(json_code, Some(1));
    let all: Vec<Value> = serde_json::from_str(&json).expect("JSON");
    // One line per finding in the text: "  PLACE: WHAT [CHECK]".
    let mut from_text: Vec<(String, String)> = text
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("    ") && l.ends_with(']'))
        .map(|l| {
            let check = l
                .rsplit_once('[')
                .unwrap()
                .1
                .trim_end_matches(']')
                .to_string();
            (check, l.trim_start().to_string())
        })
        .collect();
    let mut from_json: Vec<(String, String)> = all
        .iter()
        .map(|f| {
            let check = f["check"].as_str().unwrap().to_string();
            let line = format!("{}: {} [{check}]", place(f), f["what"].as_str().unwrap());
            (check, line)
        })
        .collect();
    from_text.sort();
    from_json.sort();
    assert_eq!(from_text, from_json);
    // The summary counts what the JSON holds.
    let critical = all.iter().filter(|f| f["severity"] == "critical").count();
    assert!(critical > 0);
    assert!(
        text.contains(&format!(
            "; {critical} at or above critical (--fail-on): exit 1"
        )),
        "{text}"
    );
    for f in &all {
        assert!(f["fix"].as_str().is_some_and(|s| !s.is_empty()), "{f}");
    }
}

/// A tree as it should be: roots and files the tenants', 0755 and 0644,
/// the key root's and 0600, a certificate valid for its host, an htpasswd
/// file root's, 0600, bcrypt at cost 10; loopback listeners, no control
/// socket.
fn clean(extra: &str) -> (Dir, PathBuf) {
    require_root();
    let dir = Dir::new();
    let d = dir.path().display().to_string();
    let accounts = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    ensure_user("berth-taudfc");
    let a = ensure_user("berth-taudca");
    let b = ensure_user("berth-taudcb");
    drop(accounts);
    dir.write("a/public/index.html", "a");
    dir.write("a/public/css/site.css", "body {}");
    dir.write("b/public/index.html", "b");
    dir.chown("a", a.0, a.1);
    dir.chown("b", b.0, b.1);
    let pki = Pki::new();
    let (cert, key) = pki.issue(&dir, "a", &["a.test", "www.a.test"]);
    let users = dir.write("private.htpasswd", htpasswd_line("editor", "10"));
    chmod(&users, 0o600);
    let config = dir.write(
        "berth.toml",
        format!(
            r#"[server]
listen = ["127.0.0.1:18080"]
tls_listen = ["127.0.0.1:18443"]
user = "berth-taudfc"
state_dir = "{d}/state"
log_dir = "{d}/log"
control_socket = "off"
{extra}

[tenant.ca]
user = "berth-taudca"

[[tenant.ca.site]]
hosts = ["a.test", "www.a.test"]
root = "{d}/a/public"
tls = {{ cert = "{cert}", key = "{key}" }}

[[tenant.ca.site.route]]
path = "/private"
auth = {{ realm = "private", htpasswd = "{users}" }}

[tenant.cb]
user = "berth-taudcb"

[[tenant.cb.site]]
hosts = ["b.test"]
root = "{d}/b/public"
"#,
            cert = cert.display(),
            key = key.display(),
            users = users.display(),
        ),
    );
    (dir, config)
}

#[test]
fn a_clean_tree_reports_nothing_at_or_above_low_and_exits_0() {
    let (_dir, config) = clean("");
    let (code, stdout, stderr) = audit(&config, &["--fail-on", "low"]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("0 critical, 0 high, 0 medium, 0 low"),
        "{stdout}"
    );
    assert!(
        stdout.contains("2 tenants, 2 sites, 4 entries in 2 site roots"),
        "{stdout}"
    );
    let all = findings(&config);
    assert!(all.iter().all(|f| f["severity"] == "info"), "{all:#?}");
}

#[test]
fn fail_on_sets_the_exit_status() {
    // One medium finding: an admin listener without a password.
    let (_dir, config) = clean("admin_listen = \"127.0.0.1:18081\"");
    let all = findings(&config);
    let line = line_no(&fs::read_to_string(&config).unwrap(), "admin_listen");
    let at = format!(
        "127.0.0.1:18081 ({}:{line}: server.admin_listen)",
        config.display()
    );
    expect(&all, "medium", "admin-open", &at);
    assert!(
        all.iter()
            .all(|f| f["severity"] == "medium" || f["severity"] == "info")
    );
    for (args, want) in [
        (&[][..], 0),
        (&["--fail-on", "critical"][..], 0),
        (&["--fail-on", "high"][..], 0),
        (&["--fail-on", "medium"][..], 1),
        (&["--fail-on", "low"][..], 1),
        (&["--fail-on", "info"][..], 1),
    ] {
        let (code, stdout, _) = audit(&config, args);
        assert_eq!(code, Some(want), "{args:?}:\n{stdout}");
    }
    let (code, _, stderr) = audit(&config, &["--fail-on", "severe"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("severe"), "{stderr}");
}

#[test]
fn a_configuration_that_does_not_load_exits_2_with_its_problems() {
    let dir = Dir::new();
    let config = dir.write(
        "berth.toml",
        "[server]\nlisten = [\"127.0.0.1:18080\"]\nuser = \"berth-tnobody-such\"\n",
    );
    let (code, stdout, stderr) = audit(&config, &[]);
    assert_eq!(code, Some(2), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "{}:3: server.user: no such user",
            config.display()
        )),
        "{stdout}"
    );
    assert!(stderr.contains("nothing audited"), "{stderr}");
}

#[test]
fn output_is_plain_text_without_a_terminal() {
    let t = planted();
    let (_, stdout, _) = audit(&t.config, &[]);
    assert!(!stdout.contains('\x1b'), "colours without a terminal");
    // A file name with an escape sequence is written escaped.
    let evil = t.dir.write("a/public/\x1b[2Jevil.sql", "x");
    let (_, stdout, _) = audit(&t.config, &[]);
    assert!(!stdout.contains('\x1b'), "{stdout}");
    assert!(stdout.contains("\\x1b[2Jevil.sql"), "{stdout}");
    fs::remove_file(evil).unwrap();
}

#[test]
fn a_reader_that_closes_early_changes_nothing_but_the_output() {
    // `berth audit | head -1`: the pipe's reader is gone before the report
    // is written; the exit status still says what was found, and nothing
    // panics.
    let (_dir, config) = clean("admin_listen = \"127.0.0.1:18081\"");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(BERTH)
        .args(["audit", "--fail-on", "medium", "--config"])
        .arg(&config)
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
