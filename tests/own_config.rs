//! A tenant's own file (`own_config`, DESIGN.md invariant 4): what it may
//! change, every key it may not refused at its line, read without following
//! a link to someone else's file, a broken one isolated to its tenant (which
//! keeps its last good file), and `berth check --tenant --explain`.
mod common;
use common::apps::*;
use common::berth_check as check;
use common::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

/// A config with tenant o1 (berth-to1, site o1.test, an admin app `php` and
/// an auth-protected `/admin` route, own file `~/berth.toml`) and tenant o2
/// (berth-to2, o2.test), plus `extra` at the end of the main file.
fn two_tenants(dir: &Dir, o1: &Home, o2: &Home, extra: &str) -> (String, u16, u16) {
    let htpasswd = dir.write(
        "admin.htpasswd",
        "boss:$2y$05$hxLoM2ORxLOY3HzqAST4EuTNVpK7DLCOyF1fQ2hUIKoaHwQDikuj2\n",
    );
    let (block, port, tls_port) = server(dir);
    let config = format!(
        r#"{block}
[defaults]
own_config = "~/berth.toml"

[defaults.limits]
memory = "512MiB"

{o1}
[tenant.o1.limits]
tasks = 100

[tenant.o1.app.php]
protocol = "fastcgi"
command = ["/usr/bin/php-cgi"]
dir = "{public}"

[[tenant.o1.site.route]]
path = "/admin"
auth = {{ realm = "admin", htpasswd = "{htpasswd}" }}

[[tenant.o1.site.route]]
path = "/"
app = "php"
extensions = ["php"]
{o2}
{extra}
"#,
        o1 = tenant_site("o1", o1, "o1.test"),
        o2 = tenant_site("o2", o2, "o2.test"),
        public = o1.public().display(),
        htpasswd = htpasswd.display(),
    );
    (config, port, tls_port)
}

fn homes(dir: &Dir) -> (Home, Home) {
    require_root();
    let o1 = Home::new(dir, "o1", "berth-to1", ensure_user("berth-to1"));
    let o2 = Home::new(dir, "o2", "berth-to2", ensure_user("berth-to2"));
    (o1, o2)
}

#[test]
fn every_forbidden_key_in_an_own_file_is_refused_with_its_line() {
    let dir = Dir::new();
    let (o1, o2) = homes(&dir);
    let (config, _, _) = two_tenants(&dir, &o1, &o2, "[enforce]\nlocked = [\"app.*.env\"]\n");
    let main = dir.write("berth.toml", &config);
    let outside = dir.write("outside/run.sh", "#!/bin/sh\n");
    let own = format!(
        r#"user = "root"
home = "/"
allowed_commands = ["/bin/sh"]

[server]
listen = ["0.0.0.0:80"]

[tenant.o2]
user = "berth-to1"

[limits]
memory = "2GiB"
tasks = "unlimited"

[app.php]
command = ["/home/o1/evil"]
max_processes = 2

[app.escape]
protocol = "cgi"
command = ["{outside}"]
dir = "{home}"

[app.wander]
protocol = "http"
command = ["{home}/run.sh"]
dir = "/etc"

[app.opened]
protocol = "http"
command = ["{home}/run.sh"]
dir = "{home}"
bind = "port"
open_port = true

[app.secretive]
protocol = "http"
command = ["{home}/run.sh"]
dir = "{home}"
env = {{ A = "1" }}

[[route]]
host = "o2.test"
path = "/steal"
redirect = "/x"

[[route]]
host = "o1.test"
path = "/admin/open"
redirect = "/x"

[[route]]
host = "o1.test"
path = "/"
redirect = "/x"

[[route]]
host = "o1.test"
path = "/pw"
redirect = "/x"
auth = {{ htpasswd = "{htpasswd}" }}

[[site]]
host = "o1.test"
hosts = ["evil.test"]
root = "/"
tls = {{ cert = "/etc/ssl/a.pem", key = "/etc/ssl/a.key" }}
"#,
        outside = outside.display(),
        home = o1.path.display(),
        htpasswd = dir.join("admin.htpasswd").display(),
    );
    o1.write("run.sh", "#!/bin/sh\nexit 0\n", 0o755);
    o1.write("berth.toml", &own, 0o644);
    o1.own();
    let (code, out, err) = check(&main, &["--tenant", "o1"]);
    assert_eq!(code, Some(1), "stdout:\n{out}\nstderr:\n{err}");
    let file = o1.join("berth.toml");
    let expect = |needle: &str, key: &str, why: &str| {
        let line = line_of(&own, needle);
        let prefix = format!("{}:{line}: {key}: ", file.display());
        let found = out.lines().find(|l| l.starts_with(&prefix));
        let found = found.unwrap_or_else(|| panic!("no {prefix:?} in:\n{out}"));
        assert!(found.contains(why), "{found:?} should say {why:?}");
    };
    expect("user = \"root\"", "user", "only the administrator");
    expect("home = \"/\"", "home", "only the administrator");
    expect(
        "allowed_commands",
        "allowed_commands",
        "only the administrator",
    );
    expect("[server]", "server", "cannot change berth's settings");
    expect("[tenant.o2]", "tenant", "cannot change berth's settings");
    expect(
        "memory = \"2GiB\"",
        "limits.memory",
        "above the administrator's 512MiB",
    );
    expect(
        "tasks = \"unlimited\"",
        "limits.tasks",
        "above the administrator's 100",
    );
    expect(
        "command = [\"/home/o1/evil\"]",
        "app.php.command",
        "is the administrator's",
    );
    expect(
        &format!("command = [\"{}\"]", outside.display()),
        "app.escape.command",
        "outside your home",
    );
    expect("dir = \"/etc\"", "app.wander.dir", "outside your home");
    expect(
        "open_port = true",
        "app.opened.open_port",
        "only the administrator",
    );
    expect(
        "env = {",
        "app.secretive.env.A",
        "locked by the administrator",
    );
    expect(
        "host = \"o2.test\"",
        "route[0].host",
        "not one of your sites",
    );
    let header = line_of(&own, "path = \"/admin/open\"") - 2;
    let prefix = format!("{}:{header}: route[1]: ", file.display());
    assert!(
        out.lines()
            .any(|l| l.starts_with(&prefix) && l.contains("protects with a password")),
        "no {prefix:?} in:\n{out}"
    );
    // (The line of a route table is its header's.)
    let replaced = line_of(&own, "path = \"/\"") - 2;
    let prefix = format!("{}:{replaced}: route[2]: ", file.display());
    assert!(
        out.lines()
            .any(|l| l.starts_with(&prefix) && l.contains("cannot replace it")),
        "no {prefix:?} in:\n{out}"
    );
    expect("auth = {", "route[3].auth.htpasswd", "outside your home");
    expect(
        "hosts = [\"evil.test\"]",
        "site[0].hosts",
        "only the administrator",
    );
    expect("root = \"/\"", "site[0].root", "only the administrator");
    expect("tls = {", "site[0].tls", "only the administrator");
    // The administrator's whole check is not affected: berth would serve.
    let (code, out, _) = check(&main, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("tenant o1: own file"), "{out}");
}

#[test]
fn an_own_file_adds_apps_and_routes_tunes_pools_and_lowers_limits() {
    let dir = Dir::new();
    let (o1, o2) = homes(&dir);
    let (config, port, tls_port) = two_tenants(&dir, &o1, &o2, "");
    o1.write(
        "cgi/hello.sh",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\nid -u\n",
        0o755,
    );
    o1.write(
        "berth.toml",
        format!(
            r#"[limits]
memory = "128MiB"

[app.php]
max_processes = 2

[app.hello]
protocol = "cgi"
command = ["{home}/cgi/hello.sh"]
dir = "{home}/cgi"

[[route]]
path = "/hello"
app = "hello"

[[site]]
host = "o1.test"
[[site.route]]
path = "/old"
redirect = "/new"
"#,
            home = o1.path.display()
        ),
        0o644,
    );
    o1.own();
    o2.own();
    let mut s = Server::start(&dir, &config, port, tls_port);
    let c = client(false, None, &["o1.test", "o2.test"], port);
    let r = c
        .get(format!("http://o1.test:{port}/hello"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap().trim(), o1.uid.to_string());
    let r = c
        .get(format!("http://o1.test:{port}/old/x"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "/new/x");
    // The own file's routes are o1's: o2's site has none of them.
    let r = c
        .get(format!("http://o2.test:{port}/hello"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let (code, out, _) = check(&s.config, &["--tenant", "o1", "--explain"]);
    assert_eq!(code, Some(0), "{out}");
    let own = o1.join("berth.toml");
    let row = |key: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} in:\n{out}"))
            .to_string()
    };
    assert!(row("memory").contains("128MiB"), "{out}");
    assert!(
        row("memory").contains(&format!("own file {}:2", own.display())),
        "{out}"
    );
    s.stop();
}

#[test]
fn a_symlinked_or_foreign_own_file_is_refused_and_never_read() {
    let dir = Dir::new();
    let (o1, o2) = homes(&dir);
    let (config, _, _) = two_tenants(&dir, &o1, &o2, "");
    let main = dir.write("berth.toml", &config);
    // o2's own file, and a file of root's: both valid TOML whose text must
    // never reach o1 (a problem quoting them would).
    o2.write(
        "berth.toml",
        "[limits]\nmemory = \"64MiB\" # o2-secret\n",
        0o600,
    );
    let roots = dir.write("root-only.toml", "[limits]\nmemory = \"root-secret\"\n");
    fs::set_permissions(&roots, fs::Permissions::from_mode(0o600)).unwrap();
    o1.own();
    o2.own();
    let own = o1.join("berth.toml");
    type Plant<'a> = Box<dyn Fn() + 'a>;
    let cases: Vec<(&str, Plant)> = vec![
        (
            "symbolic link",
            Box::new(|| std::os::unix::fs::symlink(o2.join("berth.toml"), &own).unwrap()),
        ),
        (
            "symbolic link",
            Box::new(|| std::os::unix::fs::symlink(&roots, &own).unwrap()),
        ),
        (
            // A hard link made where the tenant could not (protected_hardlinks
            // stops a tenant linking a file it cannot write): owned by o2.
            "owned by uid",
            Box::new(|| fs::hard_link(o2.join("berth.toml"), &own).unwrap()),
        ),
        (
            "not a regular file",
            Box::new(|| {
                let st = Command::new("mkfifo").arg(&own).status().unwrap();
                assert!(st.success());
                std::os::unix::fs::chown(&own, Some(o1.uid), Some(o1.gid)).unwrap();
            }),
        ),
    ];
    for (why, plant) in cases {
        let _ = fs::remove_file(&own);
        plant();
        let (code, out, err) = check(&main, &["--tenant", "o1"]);
        assert_eq!(code, Some(1), "{why}: {out}{err}");
        assert!(out.contains(why), "expected {why:?} in:\n{out}");
        assert!(!out.contains("secret"), "leaked: {out}");
    }
    // A directory link on the way is not followed either.
    let _ = fs::remove_file(&own);
    std::os::unix::fs::symlink(&o2.path, o1.join("conf")).unwrap();
    let main2 = dir.write(
        "berth2.toml",
        config.replace(
            "[tenant.o1]\n",
            "[tenant.o1]\nown_config = \"~/conf/berth.toml\"\n",
        ),
    );
    let (code, out, _) = check(&main2, &["--tenant", "o1"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("symbolic link"), "{out}");
    // Too large a file is refused without reading it all.
    let _ = fs::remove_file(o1.join("conf"));
    let big = format!("# {}\n", "x".repeat(300 << 10));
    o1.write("berth.toml", big, 0o644);
    o1.own();
    let (code, out, _) = check(&main, &["--tenant", "o1"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("larger than 256KiB"), "{out}");
}

#[test]
fn a_broken_own_file_keeps_its_tenants_last_good_config_and_no_other_tenant_notices() {
    let dir = Dir::new();
    let (o1, o2) = homes(&dir);
    let (config, port, tls_port) = two_tenants(&dir, &o1, &o2, "");
    let good = "[[route]]\npath = \"/go\"\nredirect = \"/first\"\n";
    o1.write("berth.toml", good, 0o644);
    o2.write("public/index.html", "o2 here", 0o644);
    // o2's own file is broken from the start: berth starts anyway, and o2
    // serves the administrator's settings.
    o2.write("berth.toml", "[limits\n", 0o644);
    o1.own();
    o2.own();
    let mut s = Server::start(&dir, &config, port, tls_port);
    let c = client(false, None, &["o1.test", "o2.test"], port);
    let go = |c: &reqwest::blocking::Client| {
        let r = c.get(format!("http://o1.test:{port}/go")).send().unwrap();
        (
            r.status().as_u16(),
            r.headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_string()),
        )
    };
    assert_eq!(go(&c), (308, Some("/first".into())));
    let o2_page = |c: &reqwest::blocking::Client| {
        let r = c.get(format!("http://o2.test:{port}/")).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    assert_eq!(o2_page(&c), (200, "o2 here".into()));
    let o2_log = dir.join("log/o2/error.log");
    assert!(
        eventually(Duration::from_secs(5), || fs::read_to_string(&o2_log)
            .is_ok_and(|t| t.contains("invalid TOML"))),
        "o2's error log should say why: {:?}",
        fs::read_to_string(&o2_log)
    );

    // o1 breaks its file: it keeps the last good one, and is told why.
    o1.write(
        "berth.toml",
        "[[route]]\npath = \"/go\"\nredirect = \"/second\"\n[limits]\nmemory = \"8GiB\"\n",
        0o644,
    );
    o1.own();
    s.signal(nix::sys::signal::Signal::SIGHUP);
    let o1_log = dir.join("log/o1/error.log");
    assert!(
        eventually(Duration::from_secs(10), || fs::read_to_string(&o1_log)
            .is_ok_and(
                |t| t.contains("limits.memory") && t.contains("last accepted version")
            )),
        "o1's error log: {:?}\n{}",
        fs::read_to_string(&o1_log),
        s.output()
    );
    assert_eq!(go(&c), (308, Some("/first".into())));
    assert_eq!(o2_page(&c), (200, "o2 here".into()));

    // Mended, it applies.
    o1.write(
        "berth.toml",
        "[[route]]\npath = \"/go\"\nredirect = \"/third\"\n",
        0o644,
    );
    o1.own();
    s.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        eventually(Duration::from_secs(10), || go(&c)
            == (308, Some("/third".into()))),
        "{}",
        s.output()
    );
    assert_eq!(o2_page(&c), (200, "o2 here".into()));
    s.stop();
}

#[test]
fn explain_names_the_origin_of_every_value_and_every_refused_override() {
    let dir = Dir::new();
    let (o1, o2) = homes(&dir);
    let (config, _, _) = two_tenants(
        &dir,
        &o1,
        &o2,
        "[enforce.limits]\nconcurrency = 8\n\n[defaults.app]\nidle_timeout = \"1m\"\n",
    );
    let main = dir.write("berth.toml", &config);
    let own_text = "[limits]\ncpu = 0.5\n\n[app.php]\nmax_requests = 500\n";
    o1.write("berth.toml", own_text, 0o644);
    o1.own();
    let (code, out, err) = check(&main, &["--tenant", "o1", "--explain"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let row = |section: &str, key: &str| -> String {
        let start = out
            .lines()
            .position(|l| l.starts_with(section))
            .unwrap_or_else(|| panic!("no {section} in:\n{out}"));
        out.lines()
            .skip(start + 1)
            .take_while(|l| l.starts_with("  "))
            .find(|l| l.trim_start().starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} under {section} in:\n{out}"))
            .to_string()
    };
    let main_at = |needle: &str| format!("{}:{}", main.display(), line_of(&config, needle));
    let own = o1.join("berth.toml");
    // Built-in, [defaults], the admin block, the own file and [enforce].
    assert!(row("limits", "open_files").contains("built-in"), "{out}");
    assert!(
        row("limits", "memory").contains(&format!("defaults {}", main_at("memory = \"512MiB\""))),
        "{out}"
    );
    assert!(
        row("limits", "tasks").contains(&format!("admin block {}", main_at("tasks = 100"))),
        "{out}"
    );
    assert!(
        row("limits", "cpu").contains(&format!("own file {}:2", own.display())),
        "{out}"
    );
    assert!(row("limits", "concurrency").contains("enforce"), "{out}");
    assert!(row("limits", "concurrency").contains(" 8 "), "{out}");
    assert!(
        row("app php", "max_requests").contains(&format!("own file {}:5", own.display())),
        "{out}"
    );
    assert!(row("app php", "idle_timeout").contains("defaults"), "{out}");
    assert!(
        row("app php", "command").contains(&format!(
            "admin block {}",
            main_at("command = [\"/usr/bin/php-cgi\"]")
        )),
        "{out}"
    );

    // A refused override is listed, and the value stays the admin's.
    o1.write(
        "berth.toml",
        "[limits]\ncpu = 0.5\nmemory = \"4GiB\"\n",
        0o644,
    );
    o1.own();
    let (code, out, _) = check(&main, &["--tenant", "o1", "--explain"]);
    assert_eq!(code, Some(1), "{out}");
    let refused = &out[out.find("\nrefused").expect("a refused section")..];
    assert!(
        refused.contains(&format!("{}:3: limits.memory", own.display())),
        "{out}"
    );
    assert!(out.contains("enforce.limits.concurrency"), "{out}");
}

#[test]
fn an_own_apps_program_through_a_link_is_refused_without_a_word_about_what_lies_beyond() {
    let dir = Dir::new();
    let (o1, o2) = homes(&dir);
    let (config, _, _) = two_tenants(&dir, &o1, &o2, "");
    let main = dir.write("berth.toml", &config);
    // A directory only root may enter, with a program in it: whether it
    // exists, who owns it and its mode are none of o1's business.
    let hidden = dir.mkdir("hidden");
    fs::set_permissions(&hidden, fs::Permissions::from_mode(0o700)).unwrap();
    let program = dir.write("hidden/tool", "#!/bin/sh\n");
    fs::set_permissions(&program, fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::symlink(&hidden, o1.join("bin")).unwrap();
    for (target, dir_line) in [
        ("bin/tool", "dir = \"HOME\""),
        ("bin/missing", "dir = \"HOME\""),
        ("run.sh", "dir = \"HOME/bin\""),
    ] {
        o1.write(
            "berth.toml",
            format!("[app.x]\nprotocol = \"http\"\ncommand = [\"HOME/{target}\"]\n{dir_line}\n")
                .replace("HOME", o1.path.to_str().unwrap()),
            0o644,
        );
        o1.write("run.sh", "#!/bin/sh\n", 0o755);
        o1.own();
        let (code, out, _) = check(&main, &["--tenant", "o1"]);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("symbolic link"), "{target}: {out}");
        for leak in ["setuid", "owned by", "no such", "mode", "writable"] {
            assert!(!out.contains(leak), "{target}: says {leak:?}: {out}");
        }
    }
}

#[test]
fn an_own_file_cannot_make_the_supervisor_run_more_than_its_tenant_may() {
    let dir = Dir::new();
    let (o1, o2) = homes(&dir);
    let (config, _, _) = two_tenants(&dir, &o1, &o2, "");
    let main = dir.write("berth.toml", &config);
    o1.write("run.sh", "#!/bin/sh\n", 0o755);
    let home = o1.path.display().to_string();
    let app = |i: usize, min: u32| {
        format!(
            "[app.a{i}]\nprotocol = \"http\"\ncommand = [\"{home}/run.sh\"]\ndir = \"{home}\"\nmin_processes = {min}\nmax_processes = 60\n"
        )
    };
    // Too many apps.
    let many: String = (0..33).map(|i| app(i, 0)).collect();
    o1.write("berth.toml", many, 0o644);
    o1.own();
    let (code, out, _) = check(&main, &["--tenant", "o1"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("at most 32 apps"), "{out}");
    // min_processes beyond the tenant's tasks (100).
    o1.write("berth.toml", format!("{}{}", app(0, 60), app(1, 60)), 0o644);
    o1.own();
    let (code, out, _) = check(&main, &["--tenant", "o1"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("add up to 120"), "{out}");
    // Too many routes.
    let routes: String = (0..257)
        .map(|i| format!("[[route]]\npath = \"/r{i}\"\nredirect = \"/\"\n"))
        .collect();
    o1.write("berth.toml", routes, 0o644);
    o1.own();
    let (code, out, _) = check(&main, &["--tenant", "o1"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("at most 256 routes"), "{out}");
}

#[test]
fn a_huge_timeout_in_an_own_file_does_not_bring_berth_down() {
    let dir = Dir::new();
    let (o1, o2) = homes(&dir);
    let (config, port, tls_port) = two_tenants(&dir, &o1, &o2, "");
    o1.write("public/pid.php", "<?php echo getmypid();", 0o644);
    o1.write(
        "public/c/x.cgi",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\nran\\n'\n",
        0o755,
    );
    o2.write("public/index.html", "o2 here", 0o644);
    // "now + timeout" past what a clock can hold panicked the supervisor: a
    // rolling restart (start_timeout) or one CGI request (timeout) took
    // every tenant down.
    let own = "[app.php]\nstart_timeout = \"18446744073709551615s\"\n\n\
               [app.c]\nprotocol = \"cgi\"\ntimeout = \"18446744073709551615s\"\n\n\
               [[route]]\npath = \"/c\"\nextensions = [\"cgi\"]\napp = \"c\"\n";
    o1.write("berth.toml", own, 0o644);
    o1.own();
    o2.own();
    let main = dir.write("berth.toml", &config);
    let (code, out, _) = check(&main, &["--tenant", "o1"]);
    assert_eq!(code, Some(1), "{out}");
    let file = o1.join("berth.toml");
    for (line, key) in [
        (line_of(own, "start_timeout"), "app.php.start_timeout"),
        (line_of(own, "protocol = \"cgi\"") + 1, "app.c.timeout"),
    ] {
        let prefix = format!("{}:{line}: {key}: ", file.display());
        assert!(
            out.lines()
                .any(|l| l.starts_with(&prefix) && l.contains("too long")),
            "no {prefix:?} in:\n{out}"
        );
    }
    let mut s = Server::start(&dir, &config, port, tls_port);
    let pid = get_host(s.addr(), "o1.test", "/pid.php");
    assert_eq!(pid.status, 200, "{pid:?}");
    let cgi = get_host(s.addr(), "o1.test", "/c/x.cgi");
    assert!(cgi.status < 500, "{cgi:?}");
    let restart = Command::new(BERTH)
        .args(["ctl", "--socket"])
        .arg(dir.join("state/control.sock"))
        .args(["--tenant", "o1", "restart", "php"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&restart.stdout);
    assert!(
        restart.status.success() && said.contains("restarted"),
        "{said}{}",
        String::from_utf8_lossy(&restart.stderr)
    );
    assert!(
        s.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "berth exited:\n{}",
        s.output()
    );
    let page = get_host(s.addr(), "o2.test", "/");
    assert_eq!((page.status, page.text()), (200, "o2 here".into()));
    assert!(!s.output().contains("panicked"), "{}", s.output());
    s.stop();
}

#[test]
fn htpasswd_files_an_own_file_names_cannot_swell_the_configuration_and_cut_off_every_site() {
    let dir = Dir::new();
    let (o1, o2) = homes(&dir);
    let (config, port, tls_port) = two_tenants(&dir, &o1, &o2, "");
    o2.write("public/index.html", "o2 here", 0o644);
    // 255KiB of valid entries, named by 256 routes: each route kept its
    // copy, the configuration outgrew what the front end is sent, and no
    // site of any tenant was served.
    let hash = "$2y$05$hxLoM2ORxLOY3HzqAST4EuTNVpK7DLCOyF1fQ2hUIKoaHwQDikuj2";
    let mut big = String::new();
    for i in 0.. {
        let entry = format!("u{i}:{hash}\n");
        if big.len() + entry.len() > 255 << 10 {
            break;
        }
        big.push_str(&entry);
    }
    o1.write("big.htpasswd", &big, 0o644);
    o1.write("one.htpasswd", format!("me:{hash}\n"), 0o644);
    let routes: String = (0..256)
        .map(|i| {
            format!(
                "[[route]]\npath = \"/p{i}\"\nredirect = \"/\"\nauth = {{ realm = \"r\", htpasswd = \"big.htpasswd\" }}\n"
            )
        })
        .collect();
    o1.write("berth.toml", &routes, 0o644);
    o1.own();
    o2.own();
    let main = dir.write("berth.toml", &config);
    let (code, out, _) = check(&main, &["--tenant", "o1"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("route[1].auth.htpasswd") && out.contains("more than 256KiB together"),
        "{out}"
    );
    let mut s = Server::start(&dir, &config, port, tls_port);
    let page = get_host(s.addr(), "o2.test", "/");
    assert_eq!((page.status, page.text()), (200, "o2 here".into()));
    assert!(
        !s.output().contains("too large"),
        "the configuration reached the front end:\n{}",
        s.output()
    );
    // A few small files, as a tenant protects its pages, are taken.
    let few: String = (0..8)
        .map(|i| {
            format!(
                "[[route]]\npath = \"/p{i}\"\nredirect = \"/\"\nauth = {{ realm = \"r\", htpasswd = \"one.htpasswd\" }}\n"
            )
        })
        .collect();
    o1.write("berth.toml", &few, 0o644);
    o1.own();
    s.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        eventually(Duration::from_secs(10), || get_host(
            s.addr(),
            "o1.test",
            "/p7"
        )
        .status
            == 401),
        "{}",
        s.output()
    );
    s.stop();
}

#[test]
fn a_lock_on_a_routes_key_covers_it_written_under_site_too() {
    let dir = Dir::new();
    let (o1, o2) = homes(&dir);
    // [enforce] locks redirects in [[route]] spelling, the tenant's block
    // locks auth in [[site.route]] spelling: each was bypassed by writing
    // the same route the other way.
    let (config, _, _) = two_tenants(&dir, &o1, &o2, "[enforce]\nlocked = [\"route.redirect\"]\n");
    let config = config.replace(
        "[tenant.o1]\n",
        "[tenant.o1]\nlocked = [\"site.route.auth\"]\n",
    );
    let main = dir.write("berth.toml", &config);
    o1.write(
        "pw.htpasswd",
        "me:$2y$05$hxLoM2ORxLOY3HzqAST4EuTNVpK7DLCOyF1fQ2hUIKoaHwQDikuj2\n",
        0o644,
    );
    let own = "[[site]]\nhost = \"o1.test\"\n[[site.route]]\npath = \"/away\"\nredirect = \"https://elsewhere.example/\"\n\n\
               [[route]]\npath = \"/mine\"\nredirect = \"/\"\nauth = { realm = \"r\", htpasswd = \"pw.htpasswd\" }\n";
    o1.write("berth.toml", own, 0o644);
    o1.own();
    let (code, out, _) = check(&main, &["--tenant", "o1"]);
    assert_eq!(code, Some(1), "{out}");
    let file = o1.join("berth.toml");
    for (needle, key) in [
        ("redirect = \"https", "site.route.redirect"),
        ("auth = {", "route.auth.realm"),
        ("auth = {", "route.auth.htpasswd"),
    ] {
        let prefix = format!("{}:{}: {key}: ", file.display(), line_of(own, needle));
        assert!(
            out.lines()
                .any(|l| l.starts_with(&prefix) && l.contains("locked by the administrator")),
            "no {prefix:?} in:\n{out}"
        );
    }
}

#[test]
fn an_own_files_keys_cannot_write_escape_sequences_or_lines_to_the_administrators_terminal() {
    let dir = Dir::new();
    let (o1, o2) = homes(&dir);
    let (config, _, _) = two_tenants(&dir, &o1, &o2, "");
    let main = dir.write("berth.toml", &config);
    // A quoted key may hold any character; refused as unknown, it was
    // printed as written by `berth check` (the administrator's terminal).
    o1.write(
        "berth.toml",
        "\"\\u001b]0;owned\\u0007\\u001b[2J\\nforged: line\" = 1\n[app.\"\\u009b31m\"]\nprotocol = \"cgi\"\n",
        0o644,
    );
    o1.own();
    for args in [
        &[][..],
        &["--tenant", "o1"],
        &["--tenant", "o1", "--explain"],
    ] {
        let (_, out, err) = check(&main, args);
        for text in [&out, &err] {
            assert!(
                !text.chars().any(|c| c.is_control() && c != '\n'),
                "{args:?}: {text:?}"
            );
            assert!(!text.lines().any(|l| l.starts_with("forged")), "{text}");
        }
        assert!(out.contains(r"\u{1b}]0;owned\u{7}"), "{args:?}: {out}");
    }
}

#[test]
fn lowering_tasks_alone_below_the_apps_min_processes_is_refused() {
    let dir = Dir::new();
    let (o1, o2) = homes(&dir);
    // The administrator keeps 5 php-cgi processes running for o1.
    let (config, _, _) = two_tenants(
        &dir,
        &o1,
        &o2,
        "[defaults.app]\nmin_processes = 5\nmax_processes = 8\n",
    );
    let main = dir.write("berth.toml", &config);
    o1.write("berth.toml", "[limits]\ntasks = 4\n", 0o644);
    o1.own();
    let (code, out, _) = check(&main, &["--tenant", "o1"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("add up to 5, more than your tasks limit (4)"),
        "{out}"
    );
}

#[test]
fn an_own_file_across_a_mount_point_in_the_home_is_not_read() {
    let dir = Dir::new();
    let (o1, o2) = homes(&dir);
    let (config, _, _) = two_tenants(&dir, &o1, &o2, "");
    // A filesystem mounted in the home (a tenant's FUSE mount, with
    // user_allow_other, could stall a read on the supervisor's loop; a bind
    // mount stands in for it here): not crossed.
    o2.write("conf/berth.toml", "[limits]\nmemory = \"64MiB\"\n", 0o644);
    o1.write("conf/.keep", "", 0o644);
    o1.own();
    o2.own();
    std::os::unix::fs::chown(o2.join("conf/berth.toml"), Some(o1.uid), Some(o1.gid)).unwrap();
    let st = Command::new("mount")
        .args([
            "--bind",
            o2.join("conf").to_str().unwrap(),
            o1.join("conf").to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success(), "mount --bind");
    let main2 = dir.write(
        "berth2.toml",
        config.replace(
            "[tenant.o1]\n",
            "[tenant.o1]\nown_config = \"~/conf/berth.toml\"\n",
        ),
    );
    let (code, out, _) = check(&main2, &["--tenant", "o1"]);
    let _ = Command::new("umount").arg(o1.join("conf")).status();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("lies across a mount point"), "{out}");
}

#[test]
fn an_own_file_inside_the_site_root_is_never_served_by_its_name_or_a_link() {
    let dir = Dir::new();
    let (o1, o2) = homes(&dir);
    // A site whose root is the home itself, where the own file lives (the
    // app's environment in it may hold a database password).
    let own = "[app.x]\nprotocol = \"cgi\"\ncommand = [\"/bin/true\"]\ndir = \"/\"\nenv = { DB_PASSWORD = \"hunter2\" }\n";
    o2.write("berth.toml", own, 0o644);
    o2.write("index.html", "home page\n", 0o644);
    std::os::unix::fs::symlink("berth.toml", o2.join("conf.txt")).unwrap();
    o1.own();
    o2.own();
    let (config, port, tls_port) = two_tenants(&dir, &o1, &o2, "");
    let config = config.replace(
        &format!("root = \"{}/public\"", o2.path.display()),
        &format!("root = \"{}\"", o2.path.display()),
    );
    let s = Server::start(&dir, &config, port, tls_port);
    assert_eq!(get_host(s.addr(), "o2.test", "/index.html").status, 200);
    for path in ["/berth.toml", "/conf.txt"] {
        let r = get_host(s.addr(), "o2.test", path);
        assert_eq!(r.status, 404, "{path}: {r:?}");
        assert!(!r.text().contains("hunter2"), "{path}: {r:?}");
    }
}
