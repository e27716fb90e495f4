//! `berth check`: the shipped examples pass, and every kind of problem is
//! reported as `file:line: key: why`, all of them at once, with exit code 1.
mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `berth check --config PATH`; returns (exit code, stdout, stderr).
fn check(path: &Path) -> (Option<i32>, String, String) {
    berth_check(path, &[])
}

/// Runs check and expects it to fail; returns the problem lines (stdout).
fn problems(path: &Path) -> Vec<String> {
    let (code, stdout, stderr) = check(path);
    assert_eq!(
        code,
        Some(1),
        "exit code; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout.lines().map(str::to_string).collect()
}

/// Asserts that exactly one line starts with `prefix` and returns it.
fn line_starting<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    let found: Vec<&String> = lines.iter().filter(|l| l.starts_with(prefix)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one line starting {prefix:?} in:\n{}",
        lines.join("\n")
    );
    found[0]
}

/// The 1-based line of the first line of `text` that starts with `start`.
fn line_no(text: &str, start: &str) -> usize {
    text.lines()
        .position(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("{start:?} not in:\n{text}"))
        + 1
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A `[server]` block that passes on its own.
fn server(dir: &Dir) -> String {
    ensure_user("berth-tfront");
    format!(
        r#"[server]
listen = ["127.0.0.1:18080"]
user = "berth-tfront"
state_dir = "{}"
log_dir = "{}"
"#,
        dir.join("state").display(),
        dir.join("log").display()
    )
}

/// A site root owned by `user`.
fn root_of(dir: &Dir, rel: &str, user: &str) -> PathBuf {
    let (uid, gid) = ensure_user(user);
    dir.write(&format!("{rel}/index.html"), "hi\n");
    dir.chown(rel, uid, gid);
    dir.join(rel)
}

#[test]
fn shipped_examples_pass() {
    require_root();
    ensure_any_user("berth-demo-front");
    ensure_any_user("berth-demo-alice");
    ensure_any_user("berth-demo-bob");
    let mut checked = Vec::new();
    for example in std::fs::read_dir(repo().join("examples")).unwrap() {
        let example = example.unwrap().path();
        if !example.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&example).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let text = std::fs::read_to_string(&f).unwrap();
            let is_main = text.lines().any(|l| l.trim() == "[server]");
            if !is_main {
                continue;
            }
            let (code, stdout, stderr) = check(&f);
            assert_eq!(
                code,
                Some(0),
                "{} fails berth check:\n{stdout}{stderr}",
                f.display()
            );
            assert!(stdout.contains(": ok ("), "{stdout}");
            checked.push(f);
        }
    }
    assert!(
        checked
            .iter()
            .any(|f| f.ends_with("examples/demo/berth.toml")),
        "the demo was not checked: {checked:?}"
    );
}

#[test]
fn every_problem_is_reported_with_its_line() {
    require_root();
    ensure_user("berth-tfront");
    let dir = Dir::new();
    let text = format!(
        r#"[server]
listen = ["127.0.0.1:18080", "127.0.0.1:notaport"]
user = "berth-tfront"
state_dir = "{state}"
log_dir = "{log}"
colour = "blue"

[tenant.ta]
user = "berth-tnosuchuser"

[[tenant.ta.site]]
hosts = ["a.test"]
root = "/nonexistent/berth-test-root"

[[tenant.ta.site.route]]
path = "private/"
"#,
        state = dir.join("state").display(),
        log = dir.join("log").display(),
    );
    let path = dir.write("berth.toml", &text);
    let lines = problems(&path);
    let f = path.display();
    let expected = [
        (2, "server.listen", "\"127.0.0.1:notaport\""),
        (6, "server.colour", "unknown key"),
        (9, "tenant.ta.user", "berth-tnosuchuser"),
        (13, "tenant.ta.site[0].root", "/nonexistent/berth-test-root"),
        (16, "tenant.ta.site[0].route[0].path", "must start with '/'"),
    ];
    for (line, key, why) in expected {
        let l = line_starting(&lines, &format!("{f}:{line}: {key}: "));
        assert!(l.contains(why), "{l:?} should mention {why:?}");
    }
    assert_eq!(
        lines.len(),
        expected.len(),
        "one line per problem, nothing else:\n{}",
        lines.join("\n")
    );
    // Line numbers agree with the file itself.
    assert_eq!(line_no(&text, "colour"), 6);
    assert_eq!(line_no(&text, "path = "), 16);
}

/// A listener list whose only entry is invalid is one problem, at its line:
/// not also a second, line-less "no listener" complaint about the same key.
#[test]
fn invalid_only_listener_is_one_problem_at_its_line() {
    require_root();
    let dir = Dir::new();
    let a = root_of(&dir, "a", "berth-ta");
    let text = server(&dir).replace("127.0.0.1:18080", "localhost:http")
        + &format!(
            "\n[tenant.ta]\nuser = \"berth-ta\"\n\n[[tenant.ta.site]]\nhosts = [\"a.test\"]\nroot = \"{}\"\n",
            a.display()
        );
    let path = dir.write("berth.toml", &text);
    let lines = problems(&path);
    let f = path.display();
    for l in &lines {
        assert!(
            l.starts_with(&format!("{f}:2: server.listen: ")),
            "every line must be `file:line: key: why` for the listen line:\n{}",
            lines.join("\n")
        );
    }
    assert_eq!(lines.len(), 1, "{}", lines.join("\n"));
}

#[test]
fn tenant_defined_twice_names_both_files() {
    require_root();
    let dir = Dir::new();
    let a = root_of(&dir, "a", "berth-ta");
    let tenant = format!(
        r#"[tenant.ta]
user = "berth-ta"

[[tenant.ta.site]]
hosts = ["a.test"]
root = "{}"
"#,
        a.display()
    );
    let main = dir.write(
        "berth.toml",
        format!(
            "{}include = [\"tenants.d/*.toml\"]\n\n{tenant}",
            server(&dir)
        ),
    );
    let inc = dir.write(
        "tenants.d/ta.toml",
        format!(
            "# the same tenant again\n{}",
            tenant.replace("a.test", "a2.test")
        ),
    );
    let lines = problems(&main);
    let l = line_starting(&lines, &format!("{}:2: tenant.ta", inc.display()));
    assert!(l.contains(&main.display().to_string()), "{l}");
    assert!(l.contains("twice"), "{l}");
    let main_line = line_no(&std::fs::read_to_string(&main).unwrap(), "[tenant.ta]");
    assert!(
        l.contains(&format!("{}:{main_line}", main.display())),
        "should point at the first definition: {l}"
    );
}

#[test]
fn invalid_toml_is_one_line_with_its_position() {
    require_root();
    let dir = Dir::new();
    let text = format!(
        "{}min_uid = = 1000\n\n[tenant.ta]\nuser = \"berth-ta\"\n",
        server(&dir)
    );
    let bad_line = line_no(&text, "min_uid");
    let path = dir.write("berth.toml", &text);
    let lines = problems(&path);
    assert_eq!(lines.len(), 1, "{}", lines.join("\n"));
    assert!(
        lines[0].starts_with(&format!("{}:{bad_line}: ", path.display())),
        "{} should start with file:{bad_line}",
        lines[0]
    );
}

#[test]
fn invalid_toml_in_an_included_file() {
    require_root();
    let dir = Dir::new();
    let main = dir.write(
        "main.toml",
        format!("{}include = [\"inc/*.toml\"]\n", server(&dir)),
    );
    let inc = dir.write("inc/bad.toml", "[tenant.tb]\nuser = \"berth-tb\nfoo = 1\n");
    let lines = problems(&main);
    assert_eq!(lines.len(), 1, "{}", lines.join("\n"));
    assert!(
        lines[0].starts_with(&format!("{}:2: ", inc.display())),
        "{}",
        lines[0]
    );
}

#[test]
fn mismatched_certificate_and_key() {
    require_root();
    let dir = Dir::new();
    let a = root_of(&dir, "a", "berth-ta");
    let pki = Pki::new();
    let (cert1, _key1) = pki.issue(&dir, "one", &["a.test"]);
    let (_cert2, key2) = pki.issue(&dir, "two", &["a.test"]);
    let text = format!(
        r#"{}
[tenant.ta]
user = "berth-ta"

[[tenant.ta.site]]
hosts = ["a.test"]
root = "{}"
tls = {{ cert = "{}", key = "{}" }}
"#,
        server(&dir),
        a.display(),
        cert1.display(),
        key2.display()
    );
    let path = dir.write("berth.toml", &text);
    let lines = problems(&path);
    assert_eq!(lines.len(), 1, "{}", lines.join("\n"));
    line_starting(
        &lines,
        &format!(
            "{}:{}: tenant.ta.site[0].tls.cert: ",
            path.display(),
            line_no(&text, "tls = ")
        ),
    );
    // The matching pair passes.
    let (cert3, key3) = pki.issue(&dir, "three", &["a.test"]);
    let good = text
        .replace(&cert1.display().to_string(), &cert3.display().to_string())
        .replace(&key2.display().to_string(), &key3.display().to_string());
    let path = dir.write("good.toml", &good);
    let (code, stdout, _) = check(&path);
    assert_eq!(code, Some(0), "{stdout}");
}

/// Two tenants whose sites both claim a.test.
fn duplicate_host_config(dir: &Dir) -> (PathBuf, String) {
    let a = root_of(dir, "a", "berth-ta");
    let b = root_of(dir, "b", "berth-tb");
    let text = format!(
        r#"{}
[tenant.ta]
user = "berth-ta"

[[tenant.ta.site]]
hosts = ["a.test", "www.a.test"]
root = "{}"

[tenant.tb]
user = "berth-tb"

[[tenant.tb.site]]
hosts = ["b.test", "A.test"]
root = "{}"
"#,
        server(dir),
        a.display(),
        b.display()
    );
    (dir.write("berth.toml", &text), text)
}

#[test]
fn duplicate_host_names_the_other_site() {
    require_root();
    let dir = Dir::new();
    let (path, _) = duplicate_host_config(&dir);
    let lines = problems(&path);
    assert_eq!(lines.len(), 1, "{}", lines.join("\n"));
    let l = &lines[0];
    assert!(l.starts_with(&format!("{}:", path.display())), "{l}");
    assert!(l.contains("tenant.tb.site[0].hosts: "), "{l}");
    assert!(l.contains("\"a.test\""), "{l}");
    assert!(
        l.contains("tenant.ta.site[0]"),
        "should name the other site: {l}"
    );
}

/// The problem is about `tenant.tb.site[0].hosts`, so its line must be the line
/// of that key, not of `[tenant.tb]`.
#[test]
fn duplicate_host_points_at_the_hosts_line() {
    require_root();
    let dir = Dir::new();
    let (path, text) = duplicate_host_config(&dir);
    let lines = problems(&path);
    let hosts_line = line_no(&text, "hosts = [\"b.test\"");
    line_starting(
        &lines,
        &format!("{}:{hosts_line}: tenant.tb.site[0].hosts: ", path.display()),
    );
}

#[test]
fn tenant_users_below_min_uid_and_root_are_refused() {
    require_root();
    let dir = Dir::new();
    let a = root_of(&dir, "a", "berth-ta");
    let text = format!(
        r#"{}
[tenant.td]
user = "daemon"

[tenant.tr]
user = "root"

[tenant.ta]
user = "berth-ta"

[[tenant.ta.site]]
hosts = ["a.test"]
root = "{}"
"#,
        server(&dir),
        a.display()
    );
    let path = dir.write("berth.toml", &text);
    let lines = problems(&path);
    assert_eq!(lines.len(), 2, "{}", lines.join("\n"));
    let f = path.display();
    let l = line_starting(
        &lines,
        &format!(
            "{f}:{}: tenant.td.user: ",
            line_no(&text, "user = \"daemon\"")
        ),
    );
    assert!(l.contains("min_uid"), "{l}");
    let l = line_starting(
        &lines,
        &format!(
            "{f}:{}: tenant.tr.user: ",
            line_no(&text, "user = \"root\"")
        ),
    );
    assert!(l.contains("root"), "{l}");

    // With min_uid lowered to 1, daemon passes; root never does.
    let lowered = text.replace("[server]\n", "[server]\nmin_uid = 1\n");
    let path = dir.write("lowered.toml", &lowered);
    let lines = problems(&path);
    assert_eq!(lines.len(), 1, "{}", lines.join("\n"));
    assert!(lines[0].contains("tenant.tr.user: "), "{}", lines[0]);
}

#[test]
fn site_root_owned_by_another_user_is_refused() {
    require_root();
    let dir = Dir::new();
    let a = root_of(&dir, "a", "berth-ta");
    let foreign = root_of(&dir, "b", "berth-tb");
    dir.mkdir("rootowned");
    let text = format!(
        r#"{}
[tenant.ta]
user = "berth-ta"

[[tenant.ta.site]]
hosts = ["a.test"]
root = "{}"

[[tenant.ta.site]]
hosts = ["steal.test"]
root = "{}"

[[tenant.ta.site]]
hosts = ["shared.test"]
root = "{}"
"#,
        server(&dir),
        a.display(),
        foreign.display(),
        dir.join("rootowned").display()
    );
    let path = dir.write("berth.toml", &text);
    let lines = problems(&path);
    assert_eq!(lines.len(), 1, "{}", lines.join("\n"));
    let root_line = line_no(&text, &format!("root = \"{}\"", foreign.display()));
    let l = line_starting(
        &lines,
        &format!("{}:{root_line}: tenant.ta.site[1].root: ", path.display()),
    );
    assert!(l.contains("berth-ta"), "{l}");
}

#[test]
fn a_clean_config_passes() {
    require_root();
    let dir = Dir::new();
    let a = root_of(&dir, "a", "berth-ta");
    let text = format!(
        r#"{}header_timeout = "1s"
keepalive_timeout = "500ms"
max_connections = 10

[tenant.ta]
user = "berth-ta"

[[tenant.ta.site]]
hosts = ["a.test"]
root = "{}"
"#,
        server(&dir),
        a.display()
    );
    let path = dir.write("berth.toml", &text);
    let (code, stdout, stderr) = check(&path);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout.trim(),
        format!("{}: ok (1 files, 1 tenants, 1 sites)", path.display())
    );
}

/// App keys that only some protocols take are refused where they do not
/// apply, at their line: `bind` for FastCGI, an unknown `bind`, a bad
/// `timeout`.
#[test]
fn app_keys_are_checked_per_protocol() {
    require_root();
    ensure_user("berth-tfront");
    let dir = Dir::new();
    let text = format!(
        r#"[server]
listen = ["127.0.0.1:18081"]
user = "berth-tfront"
state_dir = "{state}"
log_dir = "{log}"

[tenant.ta]
user = "berth-tnosuchuser"

[tenant.ta.app.php]
protocol = "fastcgi"
command = ["/usr/bin/php-cgi"]
dir = "/tmp"
bind = "port"

[tenant.ta.app.web]
protocol = "http"
command = ["/usr/bin/python3"]
dir = "/tmp"
bind = "anywhere"
timeout = "soon"
colour = "blue"
concurrency = 0
"#,
        state = dir.join("state").display(),
        log = dir.join("log").display(),
    );
    let path = dir.write("berth.toml", &text);
    let lines = problems(&path);
    let f = path.display();
    for (line, key, why) in [
        (
            14,
            "tenant.ta.app.php.bind",
            "only HTTP apps may bind by themselves",
        ),
        (20, "tenant.ta.app.web.bind", "\"anywhere\": use \"berth\""),
        (21, "tenant.ta.app.web.timeout", ""),
        (22, "tenant.ta.app.web.colour", "unknown key"),
        (
            23,
            "tenant.ta.app.web.concurrency",
            "must be between 1 and 10000",
        ),
    ] {
        let l = line_starting(&lines, &format!("{f}:{line}: {key}: "));
        assert!(l.contains(why), "{l:?} should mention {why:?}");
    }
    // Every key the table takes is named once.
    let unknown = line_starting(&lines, &format!("{f}:22: "));
    assert_eq!(unknown.matches("protocol").count(), 1, "{unknown}");
}

// ---------------------------------------------------------------------------
// Identities (issue 7, item 5). Users of their own (berth-tid*), so the group
// memberships these tests add disturb no other test.
// ---------------------------------------------------------------------------

/// The front end's user in the identity tests; a member of the group of
/// `berth-tida` (the sound setup: the front end may read 0640 site files).
const ID_FRONT: &str = "berth-tidfront";

/// Test user `name`, created with `useradd ARGS` if missing. Returns (uid, gid).
fn user_made_with(name: &str, args: &[&str]) -> (u32, u32) {
    assert!(name.starts_with("berth-t"));
    if nix::unistd::User::from_name(name).unwrap().is_none() {
        let st = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/usr/sbin/nologin"])
            .args(args)
            .arg(name)
            .status()
            .unwrap();
        assert!(
            st.success() || nix::unistd::User::from_name(name).unwrap().is_some(),
            "useradd {name}"
        );
    }
    let u = nix::unistd::User::from_name(name).unwrap().unwrap();
    (u.uid.as_raw(), u.gid.as_raw())
}

/// The users of the identity tests: `berth-tida` (a tenant), the front end
/// [`ID_FRONT`] in its group, `berth-tidb` in its group too, `berth-tidc`
/// with its group as primary group, `berth-tidg` in the front end's group,
/// `berth-tide` on its own.
fn identity_users() {
    user_made_with("berth-tida", &[]);
    user_made_with("berth-tide", &[]);
    user_made_with("berth-tidc", &["-g", "berth-tida"]);
    apps::user_in_group(ID_FRONT, "berth-tida");
    apps::user_in_group("berth-tidb", "berth-tida");
    apps::user_in_group("berth-tidg", ID_FRONT);
}

fn identity_server(dir: &Dir) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:18082"]
user = "{ID_FRONT}"
state_dir = "{}"
log_dir = "{}"
"#,
        dir.join("state").display(),
        dir.join("log").display()
    )
}

/// The finding: a tenant whose user was in the front end's group got that
/// group in its apps and could connect to every tenant's app socket; a
/// tenant could run as `server.user`; two tenants could share a user.
#[test]
fn identities_that_break_isolation_are_refused() {
    require_root();
    identity_users();
    let dir = Dir::new();
    let text = format!(
        r#"{}
[tenant.front]
user = "{ID_FRONT}"

[tenant.member]
user = "berth-tidg"

[tenant.ta]
user = "berth-tida"

[tenant.tb]
user = "berth-tidb"

[tenant.tc]
user = "berth-tidc"

[tenant.td]
user = "berth-tida"

[tenant.te]
user = "berth-tide"
"#,
        identity_server(&dir)
    );
    let path = dir.write("berth.toml", &text);
    let lines = problems(&path);
    assert_eq!(lines.len(), 5, "{}", lines.join("\n"));
    let f = path.display();
    let at = |tenant: &str, user: &str| {
        let n = text
            .lines()
            .position(|l| l == format!("[tenant.{tenant}]"))
            .unwrap()
            + 2;
        assert_eq!(
            text.lines().nth(n - 1).unwrap(),
            format!("user = \"{user}\"")
        );
        line_starting(&lines, &format!("{f}:{n}: tenant.{tenant}.user: ")).to_string()
    };
    let l = at("front", ID_FRONT);
    assert!(l.contains("is server.user"), "{l}");
    let l = at("member", "berth-tidg");
    assert!(
        l.contains(&format!("is a member of \"{ID_FRONT}\""))
            && l.contains("the primary group of server.user")
            && l.contains("every tenant's app socket"),
        "{l}"
    );
    let l = at("tb", "berth-tidb");
    assert!(
        l.contains("is a member of \"berth-tida\"") && l.contains("tenant \"ta\""),
        "{l}"
    );
    let l = at("tc", "berth-tidc");
    assert!(
        l.contains("has the primary group \"berth-tida\"") && l.contains("tenant \"ta\""),
        "{l}"
    );
    let l = at("td", "berth-tida");
    assert!(
        l.contains("two tenants may not share a Unix user") && l.contains("tenant \"ta\""),
        "{l}"
    );
}

/// What stays allowed: the front end's user in a tenant's group (so it can
/// read the tenant's 0640 files), tenants with users and groups of their own.
#[test]
fn the_front_end_in_a_tenants_group_passes() {
    require_root();
    identity_users();
    let dir = Dir::new();
    let text = format!(
        r#"{}
[tenant.ta]
user = "berth-tida"

[tenant.te]
user = "berth-tide"
"#,
        identity_server(&dir)
    );
    let path = dir.write("berth.toml", &text);
    let (code, stdout, stderr) = check(&path);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}

/// The finding: an app with `bind = "port"` could be reached by every local
/// user directly, past berth's auth routes and with a forged
/// `X-Forwarded-For`. Such an app now needs `open_port = true` from the
/// admin, and the refusal says what the port means and what to use instead.
#[test]
fn an_app_on_an_open_port_needs_the_admins_open_port() {
    require_root();
    ensure_user("berth-tfront");
    let dir = Dir::new();
    let app = |name: &str, extra: &str| {
        format!(
            "\n[tenant.ta.app.{name}]\nprotocol = \"http\"\ncommand = [\"/usr/bin/python3\"]\ndir = \"/tmp\"\n{extra}\n"
        )
    };
    let text = format!(
        "{}\n[tenant.ta]\nuser = \"berth-tnosuchuser\"\n{}{}{}{}{}",
        server(&dir),
        app("unsaid", "bind = \"port\""),
        app("refused", "bind = \"port\"\nopen_port = false"),
        app("allowed", "bind = \"port\"\nopen_port = true"),
        app("socket", "bind = \"socket\"\nopen_port = true"),
        app("typo", "bind = \"port\"\nopen_port = \"yes\""),
    );
    let path = dir.write("berth.toml", &text);
    let lines = problems(&path);
    let f = path.display();
    let line_in = |table: &str, key: &str| {
        let start = line_no(&text, &format!("[tenant.ta.app.{table}]"));
        start
            + text
                .lines()
                .skip(start)
                .position(|l| l.starts_with(key))
                .unwrap()
            + 1
    };
    for app in ["unsaid", "refused", "typo"] {
        let l = line_starting(
            &lines,
            &format!("{f}:{}: tenant.ta.app.{app}.bind: ", line_in(app, "bind")),
        );
        for what in [
            "every local user",
            "bypassing berth's auth routes",
            "X-Forwarded-For",
            "bind = \"socket\"",
            "open_port = true",
        ] {
            assert!(l.contains(what), "{l:?} should say {what:?}");
        }
    }
    let l = line_starting(
        &lines,
        &format!(
            "{f}:{}: tenant.ta.app.socket.open_port: ",
            line_in("socket", "open_port")
        ),
    );
    assert!(
        l.contains("only applies to an HTTP app with bind = \"port\""),
        "{l}"
    );
    let l = line_starting(
        &lines,
        &format!(
            "{f}:{}: tenant.ta.app.typo.open_port: ",
            line_in("typo", "open_port")
        ),
    );
    assert!(l.contains("expected true or false"), "{l}");
    assert!(
        !lines.iter().any(|l| l.contains("app.allowed")),
        "open_port = true is accepted: {}",
        lines.join("\n")
    );
    // The five above and the tenant's unknown user.
    assert_eq!(lines.len(), 6, "{}", lines.join("\n"));
}

/// `error_log_rate` and `error_log_max`, in `[server]` and `[tenant.T]`:
/// out-of-range and malformed values are refused at their line.
#[test]
fn error_log_limits_are_checked_where_written() {
    require_root();
    let dir = Dir::new();
    let text = format!(
        r#"{}error_log_rate = 0
error_log_max = "64MiB"

[tenant.ta]
user = "berth-tnosuchuser"
error_log_rate = 50
error_log_max = "1KiB"

[tenant.tb]
user = "berth-tnosuchuser2"
error_log_max = "lots"
error_log_rate = "fast"
"#,
        server(&dir)
    );
    let path = dir.write("berth.toml", &text);
    let lines = problems(&path);
    let f = path.display();
    for (start, key, why) in [
        (
            "error_log_rate = 0",
            "server.error_log_rate",
            "must be between 1 and 1000000",
        ),
        (
            "error_log_max = \"1KiB\"",
            "tenant.ta.error_log_max",
            "must be between 64KiB and 1TiB",
        ),
        (
            "error_log_max = \"lots\"",
            "tenant.tb.error_log_max",
            "is not a size",
        ),
        (
            "error_log_rate = \"fast\"",
            "tenant.tb.error_log_rate",
            "expected an integer",
        ),
    ] {
        let l = line_starting(&lines, &format!("{f}:{}: {key}: ", line_no(&text, start)));
        assert!(l.contains(why), "{l:?} should say {why:?}");
    }
    // The four above and the two unknown users.
    assert_eq!(lines.len(), 6, "{}", lines.join("\n"));
}

#[test]
fn without_server_user_the_front_end_needs_a_dedicated_berth_user() {
    // The built-in default was www-data, which other services share and
    // whose group then reaches every tenant's app socket.
    require_root();
    let dir = Dir::new();
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:{}\"]\nstate_dir = \"{}\"\nlog_dir = \"{}\"\n",
        free_port(),
        dir.join("state").display(),
        dir.join("log").display()
    );
    let path = dir.write("berth.toml", &text);
    let exists = nix::unistd::User::from_name("berth").unwrap().is_some();
    let (code, stdout, stderr) = check(&path);
    if exists {
        assert_eq!(code, Some(0), "{stdout}{stderr}");
    } else {
        let lines = problems(&path);
        let l = line_starting(&lines, &format!("{}:1: server.user: ", path.display()));
        assert!(l.contains("useradd --system"), "{l}");
    }
}
