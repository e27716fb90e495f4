//! `berth usage`: the real binary on a configuration whose `state_dir` holds a
//! usage database filled with known samples through the library: the table,
//! CSV and JSON, relative times, one tenant, apps, a gap in coverage, and
//! the refusals.
mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use berth::usage::{DB_FILE, Sample, UsageDb};

const MIB: u64 = 1 << 20;

/// 2026-11-01T00:00:00Z.
const BASE: u64 = 1_793_491_200;

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// Samples every 10 s ending in `(from, to]` (Unix seconds).
fn every_10s(
    tenant: &str,
    app: Option<&str>,
    from: u64,
    to: u64,
    fill: impl Fn(Sample) -> Sample,
) -> Vec<Sample> {
    (from / 10 + 1..=to / 10)
        .map(|n| fill(Sample::new(tenant, app, t(n * 10), 10.0)))
        .collect()
}

/// A configuration whose state_dir holds a usage database.
struct Setup {
    _dir: Dir,
    config: PathBuf,
    db: UsageDb,
}

fn setup() -> Setup {
    let (dir, config) = config();
    let db = UsageDb::open(&dir.join("state").join(DB_FILE)).unwrap();
    Setup {
        _dir: dir,
        config,
        db,
    }
}

/// A configuration whose state_dir holds no usage database yet.
fn config() -> (Dir, PathBuf) {
    let dir = Dir::new();
    let state = dir.mkdir("state");
    let log = dir.mkdir("log");
    let config = dir.write(
        "berth.toml",
        format!(
            "[server]\nlisten = [\"127.0.0.1:1\"]\nuser = \"daemon\"\nstate_dir = \"{}\"\nlog_dir = \"{}\"\n",
            state.display(),
            log.display()
        ),
    );
    (dir, config)
}

/// On 2026-11-01: tenant `alice` at 100 MiB from 00:00 to 01:00, not
/// sampled from 01:00 to 02:00 (berth was down), at 300 MiB from 02:00 to
/// 03:00; its app `blog` at 40 MiB the whole time it was sampled; 1 ms of
/// CPU, a 200 and a 500, 1 KiB in and 10 KiB out per sample. Tenant `bob`
/// at 64 MiB all three hours, one request queued per sample.
fn known(s: &mut Setup) {
    let alice = |memory| {
        move |s: Sample| Sample {
            memory,
            memory_peak: memory + MIB,
            cpu_usec: 1000,
            requests: 2,
            status_2xx: 1,
            status_5xx: 1,
            bytes_in: 1024,
            bytes_out: 10_240,
            ..s
        }
    };
    let mut batch = every_10s("alice", None, BASE, BASE + 3600, alice(100 * MIB));
    batch.extend(every_10s(
        "alice",
        None,
        BASE + 7200,
        BASE + 10_800,
        alice(300 * MIB),
    ));
    for (from, to) in [(BASE, BASE + 3600), (BASE + 7200, BASE + 10_800)] {
        batch.extend(every_10s("alice", Some("blog"), from, to, |s| Sample {
            memory: 40 * MIB,
            ..s
        }));
    }
    batch.extend(every_10s("bob", None, BASE, BASE + 10_800, |s| Sample {
        memory: 64 * MIB,
        queue_waits: 1,
        ..s
    }));
    s.db.record(&batch).unwrap();
}

/// Runs `berth usage --config CONFIG ARGS`; returns (exit code, stdout, stderr).
fn usage(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BERTH)
        .arg("usage")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run berth usage");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(s: &Setup, args: &[&str]) -> String {
    let (code, stdout, stderr) = usage(&s.config, args);
    assert_eq!(code, Some(0), "berth usage {args:?}: {stderr}");
    stdout
}

const WINDOW: [&str; 4] = [
    "--since",
    "2026-11-01T00:00:00Z",
    "--until",
    "2026-11-01T03:00:00Z",
];

/// The line of `text` that starts with `start`.
fn line<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{text}"))
}

#[test]
fn table_shows_each_tenant_with_coverage_and_sizes_for_people() {
    let mut s = setup();
    known(&mut s);
    let out = ok(&s, &WINDOW);
    assert!(
        out.starts_with("Usage from 2026-11-01T00:00:00Z to 2026-11-01T03:00:00Z (3.0 hours)"),
        "{out}"
    );
    let alice: Vec<&str> = line(&out, "alice ").split_whitespace().collect();
    // TENANT APP COVERAGE AVG PEAK GiB-h CPU REQUESTS 2xx 3xx 4xx 5xx IN OUT
    assert_eq!(
        alice,
        [
            "alice", "-", "66.7%", "200.0", "MiB", "301.0", "MiB", "0.391", "0.7", "1440", "720",
            "0", "0", "720", "720.0", "KiB", "7.0", "MiB"
        ],
        "{out}"
    );
    let bob: Vec<&str> = line(&out, "bob ").split_whitespace().collect();
    assert_eq!(&bob[..5], ["bob", "-", "100.0%", "64.0", "MiB"], "{out}");
    // The limits table: bob's queue waits.
    let header = line(&out, "TENANT  APP  QUEUED");
    assert!(header.contains("OOM KILLS"), "{out}");
    let bob_limits = out
        .lines()
        .filter(|l| l.starts_with("bob "))
        .nth(1)
        .unwrap();
    assert_eq!(bob_limits.split_whitespace().nth(2), Some("1080"), "{out}");
    assert!(out.contains("COVERAGE: the share of the window"), "{out}");
}

#[test]
fn csv_has_a_header_and_plain_numbers() {
    let mut s = setup();
    known(&mut s);
    let out = ok(&s, &[&WINDOW[..], &["--format", "csv"]].concat());
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(&header[..3], ["tenant", "app", "since"]);
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2, "{out}");
    let field = |row: &[&str], name: &str| -> String {
        row[header.iter().position(|h| *h == name).unwrap()].to_string()
    };
    let alice = &rows[0];
    assert_eq!(field(alice, "tenant"), "alice");
    assert_eq!(field(alice, "app"), "");
    assert_eq!(field(alice, "since"), "2026-11-01T00:00:00Z");
    assert_eq!(field(alice, "window_seconds"), "10800");
    assert_eq!(field(alice, "covered_seconds"), "7200");
    assert_eq!(field(alice, "memory_avg_bytes"), (200 * MIB).to_string());
    assert_eq!(field(alice, "memory_peak_bytes"), (301 * MIB).to_string());
    assert_eq!(field(alice, "memory_gib_hours"), "0.390625");
    assert_eq!(field(alice, "status_5xx"), "720");
    assert_eq!(field(&rows[1], "queue_waits"), "1080");
}

#[test]
fn json_parses_and_a_gap_is_left_out_of_the_average_and_shown_as_coverage() {
    let mut s = setup();
    known(&mut s);
    let out = ok(&s, &[&WINDOW[..], &["--format", "json"]].concat());
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["since"], "2026-11-01T00:00:00Z");
    assert_eq!(v["until"], "2026-11-01T03:00:00Z");
    assert_eq!(v["window_seconds"], 10_800.0);
    let rows = v["rows"].as_array().unwrap();
    let alice = &rows[0];
    assert_eq!(alice["tenant"], "alice");
    assert!(alice["app"].is_null());
    assert_eq!(alice["covered_seconds"], 7200.0);
    let coverage = alice["coverage_percent"].as_f64().unwrap();
    assert!((coverage - 200.0 / 3.0).abs() < 1e-9, "{coverage}");
    assert_eq!(
        alice["memory_avg_bytes"],
        200 * MIB,
        "not 400/3 MiB: the gap is not zero"
    );
    assert_eq!(alice["memory_gib_hours"], 0.390625);
    assert_eq!(alice["cpu_seconds"], 0.72);
    assert_eq!(alice["bytes_out"], 720 * 10_240);
    assert_eq!(rows[1]["coverage_percent"], 100.0);

    // The hour berth was down alone: nothing for alice, all of it for bob.
    let gap = ok(
        &s,
        &[
            "--since",
            "2026-11-01T01:00:00Z",
            "--until",
            "2026-11-01T02:00:00Z",
            "--format",
            "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&gap).unwrap();
    let tenants: Vec<&str> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["bob"]);
}

#[test]
fn tenant_and_app_select_the_rows() {
    let mut s = setup();
    known(&mut s);
    let json = |args: &[&str]| -> serde_json::Value {
        serde_json::from_str(&ok(
            &s,
            &[&WINDOW[..], &["--format", "json"], args].concat(),
        ))
        .unwrap()
    };
    let names = |v: &serde_json::Value| -> Vec<(String, Option<String>)> {
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["tenant"].as_str().unwrap().to_string(),
                    r["app"].as_str().map(str::to_string),
                )
            })
            .collect()
    };
    assert_eq!(
        names(&json(&["--tenant", "bob"])),
        [("bob".to_string(), None)]
    );
    let apps = json(&["--app"]);
    assert_eq!(
        names(&apps),
        [
            ("alice".to_string(), None),
            ("alice".to_string(), Some("blog".to_string())),
            ("bob".to_string(), None)
        ]
    );
    assert_eq!(apps["rows"][1]["memory_avg_bytes"], 40 * MIB);
    let alice_apps = json(&["--tenant", "alice", "--app"]);
    assert_eq!(alice_apps["rows"].as_array().unwrap().len(), 2);
    // In the table, the app has its own line under the tenant's.
    let table = ok(&s, &[&WINDOW[..], &["--app", "--tenant", "alice"]].concat());
    let blog = table
        .lines()
        .find(|l| l.split_whitespace().take(2).eq(["alice", "blog"]))
        .unwrap_or_else(|| panic!("no line for alice's blog in:\n{table}"));
    assert!(blog.contains("40.0 MiB"), "{table}");
    // A tenant with nothing recorded: no rows, and the table says so.
    let none = ok(&s, &[&WINDOW[..], &["--tenant", "carol"]].concat());
    assert!(none.contains("No usage recorded in this window."), "{none}");
}

#[test]
fn since_one_hour_ago_reads_only_the_last_hour() {
    let mut s = setup();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // 300 MiB until 90 minutes ago, 100 MiB since.
    let mut batch = every_10s("alice", None, now - 3 * 3600, now - 5400, |s| Sample {
        memory: 300 * MIB,
        ..s
    });
    batch.extend(every_10s("alice", None, now - 5400, now, |s| Sample {
        memory: 100 * MIB,
        ..s
    }));
    s.db.record(&batch).unwrap();
    let last_hour: serde_json::Value =
        serde_json::from_str(&ok(&s, &["--since", "-1h", "--format", "json"])).unwrap();
    let alice = &last_hour["rows"][0];
    assert_eq!(alice["memory_avg_bytes"], 100 * MIB);
    let samples = alice["samples"].as_u64().unwrap();
    assert!((359..=360).contains(&samples), "{samples}");
    assert_eq!(last_hour["window_seconds"], 3600.0);
    // The default window (30 days) holds all of it.
    let month: serde_json::Value = serde_json::from_str(&ok(&s, &["--format", "json"])).unwrap();
    assert_eq!(month["window_seconds"], 30.0 * 86_400.0);
    assert_eq!(month["rows"][0]["samples"], batch.len());
    assert_eq!(month["rows"][0]["memory_avg_bytes"], 200 * MIB);
    // `--until now` is the same instant as the default.
    let explicit: serde_json::Value = serde_json::from_str(&ok(
        &s,
        &["--since", "-30m", "--until", "now", "--format", "json"],
    ))
    .unwrap();
    assert_eq!(explicit["window_seconds"], 1800.0);
}

#[test]
fn a_bad_since_is_refused_naming_the_value() {
    let s = setup();
    let (code, stdout, stderr) = usage(&s.config, &["--since", "-7x"]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("\"-7x\" is not a time"), "{stderr}");
    assert!(stderr.contains("--since"), "{stderr}");
    let (code, _, stderr) = usage(&s.config, &["--until", "yesterday"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("\"yesterday\" is not a time"), "{stderr}");
    // A window that ends before it starts.
    let (code, _, stderr) = usage(&s.config, &["--since", "now", "--until", "-1d"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("must be after --since"), "{stderr}");
}

#[test]
fn a_missing_database_is_explained() {
    let (_dir, config) = config();
    let (code, _, stderr) = usage(&config, &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no usage database at"), "{stderr}");
    assert!(stderr.contains("usage.db"), "{stderr}");
}
