//! Status and metrics on the admin listener (issue 8 item 6), as root with
//! real tenants, apps and cgroups: `/status`, `/status.json` and
//! `/metrics` show the tenants with their limits and use, each app's
//! processes (pid, uid, requests served), the queue, an OOM kill and the
//! 24-hour chart; the listener asks for its password, serves no site, and
//! no site serves it; `berth check` refuses it off loopback without a
//! password; markup in what the page shows is escaped.
mod common;
use common::apps::*;
use common::*;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use base64::Engine;

const USER_A: &str = "berth-tstata";
const USER_B: &str = "berth-tstatb";
const USER_C: &str = "berth-tstatc";

/// The admin listener's user and password.
const ADMIN: (&str, &str) = ("ops", "correct horse");

/// A socket-activated HTTP app: `/hello`, `/sleep?s=N` (answers after N
/// seconds; one connection at a time).
const APP_PL: &str = r#"#!/usr/bin/perl
use strict; use warnings; use IO::Socket; use IO::Handle;
my $l = IO::Handle->new_from_fd(3, "r") or die "fd 3: $!";
bless $l, "IO::Socket";
while (my $c = $l->accept) {
    my $req = "";
    while ($req !~ /\r\n\r\n/) { my $n = sysread($c, $req, 4096, length $req) or last; }
    my ($path) = $req =~ m{^\S+ (\S+)};
    $path //= "/";
    if ($path =~ m{^/app/sleep\?s=(\d+)}) { sleep $1; }
    my $body = "hello from $$\n";
    print $c "HTTP/1.1 200 OK\r\nContent-Length: " . length($body) . "\r\nConnection: close\r\n\r\n$body";
    close $c;
}
"#;

/// Allocates far more than its tenant may have.
const BOMB_CGI: &str = "#!/usr/bin/perl
my $x = 'x' x (200 * 1024 * 1024);
print \"Content-Type: text/plain\\n\\nsurvived\\n\";
";

fn home(dir: &Dir, rel: &str, user: &'static str) -> Home {
    let home = Home::new(dir, rel, user, ensure_user(user));
    home.write("public/index.html", format!("{rel}'s own index\n"), 0o644);
    home.write("app/app.pl", APP_PL, 0o755);
    home.write("public/cgi/bomb.cgi", BOMB_CGI, 0o755);
    home
}

/// A tenant with the app `pl` mounted at `/app/`, CGI scripts by
/// extension under `/cgi/`, and `limits` lines.
fn tenant(t: &str, home: &Home, host: &str, limits: &str) -> String {
    let app = home.join("app/app.pl");
    format!(
        "{site}
[[tenant.{t}.site.route]]
path = \"/app/\"
app = \"pl\"

[[tenant.{t}.site.route]]
path = \"/cgi/\"
extensions = [\"cgi\"]
app = \"cgi\"
{pl}
[tenant.{t}.app.cgi]
protocol = \"cgi\"
max_processes = 2

[tenant.{t}.limits]
{limits}
",
        site = tenant_site(t, home, host),
        pl = app_table(
            t,
            "pl",
            "http",
            &home.join("app"),
            &[app.to_str().unwrap()],
            "max_processes = 1",
        ),
    )
}

/// The `[server]` block with an admin listener on loopback (its password
/// file written into `dir`); returns it, the ports and the admin address.
fn server_with_admin(dir: &Dir, extra: &str) -> (String, u16, u16, SocketAddr) {
    let admin_port = free_port();
    let hash = bcrypt::hash(ADMIN.1, 4).unwrap();
    let htpasswd = dir.write("admin.htpasswd", format!("{}:{hash}\n", ADMIN.0));
    let (block, port, tls_port) = server_block(
        dir,
        &format!(
            "keepalive_timeout = \"5s\"\ndrain_timeout = \"5s\"\nmeter_interval = \"1s\"\n\
             admin_listen = \"127.0.0.1:{admin_port}\"\nadmin_htpasswd = \"{}\"\n{extra}",
            htpasswd.display()
        ),
    );
    (
        block,
        port,
        tls_port,
        SocketAddr::from(([127, 0, 0, 1], admin_port)),
    )
}

/// `method path` on the admin listener, as `user:password` when given.
fn admin_req(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    auth: Option<(&str, &str)>,
) -> Resp {
    let authorization = auth
        .map(|(u, p)| {
            let creds = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            format!("Authorization: Basic {creds}\r\n")
        })
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{authorization}Connection: close\r\n\r\n"
    );
    let (raw, closed) = exchange(addr, &head, &[], Duration::from_secs(30));
    assert!(closed && !raw.is_empty(), "{method} {path}: no response");
    parse(&raw)
}

fn admin_get(addr: SocketAddr, path: &str) -> Resp {
    admin_req(addr, "GET", "127.0.0.1", path, Some(ADMIN))
}

fn status_json(addr: SocketAddr) -> serde_json::Value {
    let r = admin_get(addr, "/status.json");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    r.json()
}

fn tenant_of<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tenant {name} in {v:#}"))
}

fn app_of<'a>(t: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    t["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no app {name} in {t:#}"))
}

/// The value of the metric line `series` (name and labels, exactly).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Every line of a scrape is a comment (`# HELP`/`# TYPE`) or a sample:
/// a metric name, labels in braces with quoted values, one value.
fn assert_prometheus_text(text: &str) {
    assert!(text.ends_with('\n'), "no final newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            assert!(
                rest.starts_with("HELP berth_") || rest.starts_with("TYPE berth_"),
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(
            value.parse::<f64>().is_ok() || value == "+Inf",
            "value of {line}"
        );
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            name.starts_with("berth_")
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "name of {line}"
        );
        let labels = &series[name_end..];
        if !labels.is_empty() {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            for pair in labels[1..labels.len() - 1].split("\",") {
                let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                assert!(
                    k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                    "{line}"
                );
                assert!(!v.contains('\n'), "{line}");
            }
        }
    }
}

#[test]
fn status_json_and_metrics_show_tenants_processes_requests_the_queue_and_an_oom_kill() {
    require_root();
    let dir = Dir::new();
    let a = home(&dir, "a", USER_A);
    let b = home(&dir, "b", USER_B);
    let (uid_a, _) = ensure_user(USER_A);
    let tenants = format!(
        "{}{}",
        tenant("sa", &a, "sa.test", "memory = \"32MiB\""),
        tenant("sb", &b, "sb.test", "concurrency = 1\nqueue = 4"),
    );
    a.own();
    b.own();
    let (block, port, tls_port, admin) = server_with_admin(&dir, "");
    let s = Server::start(&dir, &format!("{block}{tenants}"), port, tls_port);
    // The meter's first reading is every counter's baseline: what happens
    // before it is not counted.
    assert!(
        eventually(Duration::from_secs(10), || {
            !status_json(admin)["figures_at"].is_null()
        }),
        "no figures from the supervisor"
    );

    for _ in 0..5 {
        assert_eq!(get_host(s.addr(), "sa.test", "/app/hello").status, 200);
    }
    assert_eq!(get_host(s.addr(), "sa.test", "/").status, 200);
    assert_eq!(get_host(s.addr(), "sa.test", "/missing").status, 404);
    // Tenant A's CGI script takes 200 MiB of its 32: the OOM killer ends it.
    let r = get_host(s.addr(), "sa.test", "/cgi/bomb.cgi");
    assert_ne!(r.text().trim(), "survived", "{}", r.status);
    // Tenant B: one request in its app (concurrency = 1), one waiting.
    let addr = s.addr();
    let slow: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || get_host(addr, "sb.test", "/app/sleep?s=4").status))
        .collect();

    let mut v = serde_json::Value::Null;
    let queued = eventually(Duration::from_secs(10), || {
        v = status_json(admin);
        let t = tenant_of(&v, "sb");
        t["in_flight"] == 1 && t["waiting"] == 1
    });
    assert!(queued, "tenant sb's queue: {:#}", tenant_of(&v, "sb"));
    let metrics = admin_get(admin, "/metrics");
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = metrics.text();
    assert_eq!(
        metric(&text, "berth_tenant_queue_waiting{tenant=\"sb\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "berth_tenant_in_flight{tenant=\"sb\"}"),
        Some(1.0)
    );
    for t in slow {
        assert_eq!(t.join().unwrap(), 200);
    }

    // The OOM kill, the process, and a chart once the database has
    // samples of the tenant (every second).
    let done = eventually(Duration::from_secs(20), || {
        v = status_json(admin);
        let sa = tenant_of(&v, "sa");
        let oom = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["tenant"] == "sa" && e["kind"] == "oom_kill");
        oom && sa["history"].as_array().is_some_and(|h| !h.is_empty())
            && sa["usage"]["oom_kills"].as_u64().is_some_and(|n| n >= 1)
            && app_of(sa, "pl")["processes"][0]["requests_served"] == 5
    });
    assert!(done, "{v:#}");
    let sa = tenant_of(&v, "sa");
    assert_eq!(sa["user"], USER_A);
    assert_eq!(sa["uid"], uid_a);
    assert_eq!(sa["limits"]["memory_bytes"], 32 << 20);
    assert!(sa["usage"]["memory"].as_u64().unwrap() > 0, "{sa:#}");
    assert!(sa["usage"]["tasks"].as_u64().unwrap() >= 1, "{sa:#}");
    assert_eq!(sa["requests"]["total"], 8, "{sa:#}");
    let pl = app_of(sa, "pl");
    assert_eq!(pl["protocol"], "http");
    let p = &pl["processes"][0];
    let pid = p["pid"].as_u64().unwrap() as u32;
    assert_eq!(p["uid"], uid_a);
    assert_eq!(p["state"], "idle", "{p:#}");
    assert!(p["memory"].as_u64().is_some_and(|m| m > 0), "{p:#}");
    assert!(p["uptime_seconds"].as_f64().is_some(), "{p:#}");
    // The pid is the app's process, running as the tenant.
    let st = proc_status(pid).expect("the process runs");
    assert_eq!(field(&st, "Uid")[0], u64::from(uid_a), "{st}");
    assert!(cmdline(pid).contains("app.pl"), "{}", cmdline(pid));
    let event = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "oom_kill")
        .unwrap();
    assert_eq!(event["app"], "cgi");
    assert!(
        event["text"].as_str().unwrap().contains("OOM killer")
            && event["text"].as_str().unwrap().contains("32MiB"),
        "{event:#}"
    );
    let sb = tenant_of(&v, "sb");
    assert_eq!(sb["queue_waits"], 1, "{sb:#}");
    assert_eq!(sb["limits"]["concurrency"], 1);

    // The page: a person's view of the same.
    let page = admin_get(admin, "/status");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert!(
        page.header("content-security-policy")
            .is_some_and(|c| c.contains("default-src 'none'")),
        "{page:?}"
    );
    let html = page.text();
    for want in [
        "<h1>berth status</h1>",
        ">sa</a>",
        ">sb</a>",
        USER_A,
        &format!("<td class=\"n\">{pid}</td>"),
        "<svg",
        "class=\"mem",
        "OOM kill",
        "32.0 MiB",
    ] {
        assert!(html.contains(want), "{want:?} not on the page:\n{html}");
    }
    assert!(!html.contains("<script"), "{html}");

    // The metrics: a few lines exactly, and the format as a whole.
    let text = admin_get(admin, "/metrics").text();
    assert_prometheus_text(&text);
    for (series, want) in [
        ("berth_tenant_memory_limit_bytes{tenant=\"sa\"}", 33554432.0),
        (
            "berth_tenant_requests_total{tenant=\"sa\",class=\"2xx\"}",
            6.0,
        ),
        (
            "berth_tenant_requests_total{tenant=\"sa\",class=\"4xx\"}",
            1.0,
        ),
        (
            "berth_tenant_requests_total{tenant=\"sb\",class=\"2xx\"}",
            2.0,
        ),
        ("berth_tenant_concurrency_limit{tenant=\"sb\"}", 1.0),
        ("berth_tenant_queue_waits_total{tenant=\"sb\"}", 1.0),
        ("berth_tenant_queue_waiting{tenant=\"sb\"}", 0.0),
        ("berth_app_processes{tenant=\"sa\",app=\"pl\"}", 1.0),
        ("berth_app_requests_total{tenant=\"sa\",app=\"pl\"}", 5.0),
        ("berth_request_duration_seconds_count{tenant=\"sa\"}", 8.0),
        (
            "berth_request_duration_seconds_bucket{tenant=\"sa\",le=\"+Inf\"}",
            8.0,
        ),
    ] {
        assert_eq!(metric(&text, series), Some(want), "{series} in\n{text}");
    }
    assert!(
        metric(&text, "berth_tenant_oom_kills_total{tenant=\"sa\"}").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        metric(&text, "berth_tenant_memory_bytes{tenant=\"sa\"}").is_some_and(|n| n > 0.0),
        "{text}"
    );
    assert!(
        metric(&text, "berth_tenant_cpu_seconds_total{tenant=\"sa\"}").is_some(),
        "{text}"
    );
    // Tenant B's slow requests took 4 s and more: above the 2.5 s bucket.
    let under = metric(
        &text,
        "berth_request_duration_seconds_bucket{tenant=\"sb\",le=\"2.5\"}",
    );
    let all = metric(&text, "berth_request_duration_seconds_count{tenant=\"sb\"}");
    assert_eq!((under, all), (Some(0.0), Some(2.0)), "{text}");
    for line in [
        "# TYPE berth_request_duration_seconds histogram",
        "# TYPE berth_tenant_requests_total counter",
        "# TYPE berth_tenant_memory_bytes gauge",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
}

#[test]
fn the_admin_listener_asks_for_its_password_and_serves_no_site_and_no_site_serves_it() {
    require_root();
    let dir = Dir::new();
    let a = home(&dir, "a", USER_A);
    // A file of the tenant's at /status of its site.
    a.write("public/status", "the tenant's own status\n", 0o644);
    let tenants = tenant("sa", &a, "sa.test", "");
    a.own();
    let (block, port, tls_port, admin) = server_with_admin(&dir, "");
    let s = Server::start(&dir, &format!("{block}{tenants}"), port, tls_port);

    for auth in [None, Some(("ops", "wrong")), Some(("nobody", ADMIN.1))] {
        let r = admin_req(admin, "GET", "127.0.0.1", "/status", auth);
        assert_eq!(r.status, 401, "{auth:?}: {r:?}");
        assert_eq!(
            r.header("www-authenticate").as_deref(),
            Some("Basic realm=\"berth admin\", charset=\"UTF-8\""),
            "{auth:?}"
        );
        assert!(!r.text().contains("sa"), "{r:?}");
    }
    for path in ["/status", "/status.json", "/metrics"] {
        assert_eq!(admin_get(admin, path).status, 200, "{path}");
    }
    assert_eq!(
        admin_req(admin, "POST", "127.0.0.1", "/status", Some(ADMIN)).status,
        405
    );
    // A tenant's host on the admin listener: berth's pages or nothing,
    // never the tenant's content.
    for path in [
        "/index.html",
        "/app/hello",
        "/cgi/bomb.cgi",
        "/status/../index.html",
    ] {
        let r = admin_req(admin, "GET", "sa.test", path, Some(ADMIN));
        assert_eq!(r.status, 404, "{path}: {r:?}");
        assert!(!r.text().contains("own index") && !r.text().contains("hello from"));
    }
    let r = admin_req(admin, "GET", "sa.test", "/", Some(ADMIN));
    assert!(r.text().contains("<h1>berth status</h1>") && !r.text().contains("own index"));
    // And berth's pages on a tenant's listener: the tenant's own, or 404.
    let r = get_host(s.addr(), "sa.test", "/status");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "the tenant's own status\n")
    );
    for path in ["/status.json", "/metrics"] {
        let r = get_host(s.addr(), "sa.test", path);
        assert_eq!(r.status, 404, "{path}: {r:?}");
        assert!(!r.text().contains("berth_") && !r.text().contains("tenants"));
    }
    // With no Host a listener knows: not berth's either.
    let r = get_host(s.addr(), "127.0.0.1", "/status");
    assert_eq!(r.status, 421, "{r:?}");
}

#[test]
fn berth_check_refuses_an_admin_listen_off_loopback_without_a_password() {
    let dir = Dir::new();
    ensure_user("berth-tfront");
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:18080\"]\nuser = \"berth-tfront\"\nstate_dir = \"{}\"\nlog_dir = \"{}\"\nadmin_listen = \"0.0.0.0:18081\"\n",
        dir.join("state").display(),
        dir.join("log").display()
    );
    let path = dir.write("berth.toml", &text);
    let out = Command::new(BERTH)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let want = format!(
        "{}:6: server.admin_listen: 0.0.0.0:18081 is not a loopback address: set admin_htpasswd",
        path.display()
    );
    assert!(stdout.lines().any(|l| l.starts_with(&want)), "{stdout}");
    // With a password file it passes.
    let hash = bcrypt::hash("pw", 4).unwrap();
    let htpasswd = dir.write("admin.htpasswd", format!("ops:{hash}\n"));
    let text = format!("{text}admin_htpasswd = \"{}\"\n", htpasswd.display());
    dir.write("berth.toml", &text);
    let out = Command::new(BERTH)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn markup_in_an_apps_error_text_is_escaped_on_the_status_page() {
    require_root();
    let dir = Dir::new();
    let c = Home::new(&dir, "c", USER_C, ensure_user(USER_C));
    // A program whose name is markup; berth refuses to start it once it is
    // writable by others, and says so, naming it.
    let program = c.write("app/<script>alert(1)<.pl", APP_PL, 0o755);
    let mut tenants = tenant_site("sc", &c, "sc.test");
    tenants.push_str("\n[[tenant.sc.site.route]]\npath = \"/app/\"\napp = \"pl\"\n");
    tenants.push_str(&app_table(
        "sc",
        "pl",
        "http",
        &c.join("app"),
        &[program.to_str().unwrap()],
        "max_processes = 1",
    ));
    c.own();
    let (block, port, tls_port, admin) = server_with_admin(&dir, "");
    let s = Server::start(&dir, &format!("{block}{tenants}"), port, tls_port);
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    assert_eq!(get_host(s.addr(), "sc.test", "/app/x").status, 503);
    let mut html = String::new();
    let shown = eventually(Duration::from_secs(10), || {
        html = admin_get(admin, "/status").text();
        html.contains("last problem")
    });
    assert!(shown, "{html}");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;.pl"), "{html}");
    assert!(!html.contains("<script"), "{html}");
    // The JSON has it as it is, for a program to read.
    let v = status_json(admin);
    let problem = app_of(tenant_of(&v, "sc"), "pl")["last_problem"]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(problem.contains("<script>alert(1)<.pl"), "{problem}");
}

#[test]
fn an_admin_listener_added_by_a_reload_has_figures_without_metering_and_no_charts() {
    require_root();
    let dir = Dir::new();
    let a = home(&dir, "a", USER_A);
    let tenants = tenant("sa", &a, "sa.test", "");
    a.own();
    let (block, port, tls_port, admin) = server_with_admin(&dir, "");
    // First without the admin listener, and without metering.
    let without: String = block
        .lines()
        .filter(|l| !l.starts_with("admin_") && !l.starts_with("meter_interval"))
        .map(|l| format!("{l}\n"))
        .collect();
    let off = format!("{without}meter_interval = \"off\"\n");
    let s = Server::start(&dir, &format!("{off}{tenants}"), port, tls_port);
    assert!(std::net::TcpStream::connect(admin).is_err());
    assert_eq!(get_host(s.addr(), "sa.test", "/app/hello").status, 200);

    let with = off.replace(
        "meter_interval",
        &format!(
            "admin_listen = \"{admin}\"\nadmin_htpasswd = \"{}\"\nmeter_interval",
            dir.join("admin.htpasswd").display()
        ),
    );
    std::fs::write(&s.config, format!("{with}{tenants}")).unwrap();
    s.signal(nix::sys::signal::Signal::SIGHUP);
    let mut v = serde_json::Value::Null;
    let figures = eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(admin).is_ok() && {
            v = status_json(admin);
            !v["figures_at"].is_null()
        }
    });
    assert!(figures, "{v:#}\n{}", s.output());
    assert!(v["meter_interval_seconds"].is_null(), "{v:#}");
    let sa = tenant_of(&v, "sa");
    assert!(
        sa["usage"]["memory"].as_u64().is_some_and(|m| m > 0),
        "{sa:#}"
    );
    assert_eq!(sa["history"], serde_json::json!([]));
    assert_eq!(app_of(sa, "pl")["processes"][0]["requests_served"], 1);
    let html = admin_get(admin, "/status").text();
    assert!(
        html.contains("metering off") && !html.contains("<svg"),
        "{html}"
    );
    // No usage database was made.
    assert!(!dir.join("state/usage.db").exists());
}
