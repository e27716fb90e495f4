//! Usage metering end to end (issue 8 item 4), as root with a real tenant and
//! its cgroup: the front end's request counts and the cgroup's memory and
//! CPU reach the usage database every `meter_interval`, `berth usage` reports
//! them, and a `kill -9` of berth loses at most the last interval; the next
//! start sweeps what the killed berth left running.
mod common;
use common::apps::*;
use common::*;

use std::process::Command;
use std::time::Duration;

const USER: &str = "berth-tmeter";
const USER_IN: &str = "berth-tmeterin";

/// Serves `/hello`, `/burn` (CPU for a moment) and `/hold` (keeps 32 MiB).
const APP_PL: &str = r#"#!/usr/bin/perl
use strict; use warnings; use IO::Socket; use IO::Handle;
my $l = IO::Handle->new_from_fd(3, "r") or die "fd 3: $!";
bless $l, "IO::Socket";
my @held;
while (my $c = $l->accept) {
    my $req = "";
    while ($req !~ /\r\n\r\n/) { my $n = sysread($c, $req, 4096, length $req) or last; }
    my ($path) = $req =~ m{^\S+ (\S+)};
    my $body = "hello\n";
    if ($path eq "/burn") { my $x = 0; $x += $_ for 1 .. 3_000_000; $body = "burnt $x\n"; }
    if ($path eq "/hold") { push @held, "x" x (32 << 20); $body = "held\n"; }
    my $status = $path eq "/missing" ? "404 Not Found" : "200 OK";
    print $c "HTTP/1.1 $status\r\nContent-Length: " . length($body) . "\r\nConnection: close\r\n\r\n$body";
    close $c;
}
"#;

fn usage_json(config: &std::path::Path, tenant: &str) -> Option<serde_json::Value> {
    let out = Command::new(BERTH)
        .args([
            "usage",
            "--config",
            config.to_str().unwrap(),
            "--since",
            "-1h",
        ])
        .args(["--tenant", tenant, "--format", "json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["tenant"] == tenant)
        .cloned()
}

fn num(row: &serde_json::Value, key: &str) -> f64 {
    row[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} in {row}"))
}

/// Starts berth with tenant `tm` (its app `pl` at `/`, static files under
/// `/static/`) metered every second; returns it and its configuration.
fn metered(dir: &Dir, user: &'static str) -> (Server, String) {
    let home = Home::new(dir, "m", user, ensure_user(user));
    home.write("public/index.html", "static\n", 0o644);
    home.write("app/app.pl", APP_PL, 0o755);
    let app = home.join("app/app.pl");
    let mut tenants = tenant_site("tm", &home, "m.test");
    tenants.push_str("\n[[tenant.tm.site.route]]\npath = \"/\"\napp = \"pl\"\n");
    tenants.push_str("\n[[tenant.tm.site.route]]\npath = \"/static/\"\n");
    tenants.push_str(&app_table(
        "tm",
        "pl",
        "http",
        &home.join("app"),
        &[app.to_str().unwrap()],
        "max_processes = 1",
    ));
    home.own();
    let (block, port, tls_port) = server_block(
        dir,
        "keepalive_timeout = \"5s\"\ndrain_timeout = \"5s\"\nmeter_interval = \"1s\"",
    );
    let config = format!("{block}{tenants}");
    let s = Server::start(dir, &config, port, tls_port);
    (s, config)
}

#[test]
fn requests_memory_and_cpu_reach_the_database_and_survive_a_kill_9() {
    require_root();
    let dir = Dir::new();
    let (mut s, config) = metered(&dir, USER);
    let (port, tls_port) = (s.port, s.tls_port);

    for _ in 0..20 {
        assert_eq!(get_host(s.addr(), "m.test", "/hello").status, 200);
    }
    for _ in 0..5 {
        assert_eq!(get_host(s.addr(), "m.test", "/missing").status, 404);
    }
    assert_eq!(get_host(s.addr(), "m.test", "/hold").status, 200);
    for _ in 0..3 {
        assert_eq!(get_host(s.addr(), "m.test", "/burn").status, 200);
    }
    // Two intervals on, everything above is in the database.
    let mut row = serde_json::Value::Null;
    let counted = eventually(Duration::from_secs(10), || {
        row = usage_json(&s.config, "tm").unwrap_or_default();
        row["requests"].as_f64().is_some_and(|n| n >= 29.0)
    });
    assert!(counted, "{row}");
    assert_eq!(num(&row, "status_2xx"), 24.0, "{row}");
    assert_eq!(num(&row, "status_4xx"), 5.0, "{row}");
    assert!(num(&row, "bytes_out") >= 24.0 * 6.0, "{row}");
    // The cgroup's figures: the app holds 32 MiB, and burnt some CPU.
    assert!(
        num(&row, "memory_peak_bytes") >= 32.0 * 1024.0 * 1024.0,
        "{row}"
    );
    assert!(num(&row, "memory_avg_bytes") > 0.0, "{row}");
    assert!(num(&row, "cpu_seconds") > 0.0, "{row}");
    assert!(num(&row, "coverage_percent") > 0.0, "{row}");

    // kill -9 of the supervisor and its front end, mid-run.
    for _ in 0..10 {
        assert_eq!(get_host(s.addr(), "m.test", "/hello").status, 200);
    }
    // The front end sends its counts every interval, the meter samples
    // every interval: within two, they are in the database.
    std::thread::sleep(Duration::from_millis(4000));
    let front = s.front_pid();
    s.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(front as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = s.child.take().map(|mut c| c.wait());
    let after = usage_json(&s.config, "tm").unwrap();
    assert!(
        num(&after, "requests") >= 39.0,
        "requests counted before the kill were lost: {after}"
    );

    // The app the killed berth left running is swept at the next start.
    let (uid, _) = ensure_user(USER);
    assert!(
        !processes_of(uid).is_empty(),
        "the app did not outlive its berth"
    );
    let s2 = Server::start(&dir, &config, port, tls_port);
    assert!(
        s2.wait_output("processes left by an earlier run", Duration::from_secs(5)),
        "{}",
        s2.output()
    );
    assert_eq!(get_host(s2.addr(), "m.test", "/hello").status, 200);
    drop(s2);
    assert_nothing_left(&dir, USER, uid);
}

/// Traffic in is what berth read of the request bodies, never what a
/// Content-Length claims: any client could otherwise bill any tenant for
/// petabytes it never sent, and a chunked upload went unbilled.
#[test]
fn traffic_in_is_the_body_bytes_received_not_the_declared_length() {
    require_root();
    let dir = Dir::new();
    let (s, _) = metered(&dir, USER_IN);
    let claim = "POST /static/index.html HTTP/1.1\r\nHost: m.test\r\n\
                 Content-Length: 1000000000000000\r\nConnection: close\r\n\r\n";
    for _ in 0..3 {
        assert_eq!(status_of(&raw(s.addr(), claim)), 413);
    }
    // 1 MiB sent chunked to the app.
    let mut upload = std::net::TcpStream::connect(s.addr()).unwrap();
    let head = "POST /hello HTTP/1.1\r\nHost: m.test\r\nTransfer-Encoding: chunked\r\n\
                Connection: close\r\n\r\n";
    std::io::Write::write_all(&mut upload, head.as_bytes()).unwrap();
    let piece = vec![b'x'; 64 * 1024];
    for _ in 0..16 {
        std::io::Write::write_all(&mut upload, format!("{:x}\r\n", piece.len()).as_bytes())
            .unwrap();
        std::io::Write::write_all(&mut upload, &piece).unwrap();
        std::io::Write::write_all(&mut upload, b"\r\n").unwrap();
    }
    std::io::Write::write_all(&mut upload, b"0\r\n\r\n").unwrap();
    let (answer, _) = read_until_closed(&mut upload, Duration::from_secs(10));
    assert_eq!(status_of(&String::from_utf8_lossy(&answer)), 200);
    let mut row = serde_json::Value::Null;
    let counted = eventually(Duration::from_secs(10), || {
        row = usage_json(&s.config, "tm").unwrap_or_default();
        row["requests"].as_f64().is_some_and(|n| n >= 4.0)
    });
    assert!(counted, "{row}");
    let bytes_in = num(&row, "bytes_in");
    assert!(
        (1048576.0..1048576.0 + 65536.0).contains(&bytes_in),
        "bytes_in {bytes_in}: {row}"
    );
}
