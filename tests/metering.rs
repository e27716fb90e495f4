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

#[test]
fn requests_memory_and_cpu_reach_the_database_and_survive_a_kill_9() {
    require_root();
    let dir = Dir::new();
    let home = Home::new(&dir, "m", USER, ensure_user(USER));
    home.write("public/index.html", "static\n", 0o644);
    home.write("app/app.pl", APP_PL, 0o755);
    let app = home.join("app/app.pl");
    let mut tenants = tenant_site("tm", &home, "m.test");
    tenants.push_str("\n[[tenant.tm.site.route]]\npath = \"/\"\napp = \"pl\"\n");
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
        &dir,
        "keepalive_timeout = \"5s\"\ndrain_timeout = \"5s\"\nmeter_interval = \"1s\"",
    );
    let config = format!("{block}{tenants}");
    let mut s = Server::start(&dir, &config, port, tls_port);

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
