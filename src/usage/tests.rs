//! The usage database on known samples: the report's arithmetic, the
//! rollup's exactness, retention, migration, odd names, the writer thread,
//! and a `kill -9` in the middle of writing.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use super::*;

const MIB: u64 = 1 << 20;

/// 2026-11-01T00:00:00Z, the start of an hour.
const BASE: u64 = 1_793_491_200;

/// `BASE` plus `secs`.
fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(BASE + secs)
}

fn h(hours: u64) -> SystemTime {
    t(hours * 3600)
}

struct TestDb {
    _dir: tempfile::TempDir,
    path: PathBuf,
    db: UsageDb,
}

fn new_db() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    let db = UsageDb::open(&path).unwrap();
    TestDb {
        _dir: dir,
        path,
        db,
    }
}

/// Samples of `tenant`/`app` every `step` seconds over `(from, to]` (seconds
/// after BASE), each from `make` given its end.
fn series(
    tenant: &str,
    app: Option<&str>,
    from: u64,
    to: u64,
    step: u64,
    make: impl Fn(Sample) -> Sample,
) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut at = from + step;
    while at <= to {
        out.push(make(Sample::new(tenant, app, t(at), step as f64)));
        at += step;
    }
    out
}

fn query(since: SystemTime, until: SystemTime) -> Query {
    Query {
        since,
        until,
        tenant: None,
        per_app: false,
    }
}

fn row<'a>(r: &'a Report, tenant: &str, app: Option<&str>) -> &'a Row {
    r.rows
        .iter()
        .find(|x| x.tenant == tenant && x.app.as_deref() == app)
        .unwrap_or_else(|| panic!("no row {tenant}/{app:?} in {r:#?}"))
}

fn count(db: &UsageDb, sql: &str) -> i64 {
    db.conn().query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Tenant `a`: 100 MiB for hour 0, nothing in hour 1 (berth was down),
/// 300 MiB for hour 2, sampled every 10 s; every sample 1 ms of CPU, two
/// requests (a 200 and a 404), 1 KiB in, 10 KiB out. Its app `web` holds
/// half its memory. Tenant `b`: 50 MiB over all three hours.
fn known_samples() -> Vec<Sample> {
    let a = |memory: u64| {
        move |s: Sample| Sample {
            memory,
            memory_peak: memory + MIB,
            cpu_usec: 1000,
            tasks: 3,
            requests: 2,
            status_2xx: 1,
            status_4xx: 1,
            bytes_in: 1024,
            bytes_out: 10 * 1024,
            ..s
        }
    };
    let mut all = series("a", None, 0, 3600, 10, a(100 * MIB));
    all.extend(series("a", None, 7200, 10_800, 10, a(300 * MIB)));
    all.extend(series("a", Some("web"), 0, 3600, 10, |s| Sample {
        memory: 50 * MIB,
        ..s
    }));
    all.extend(series("b", None, 0, 10_800, 10, |s| Sample {
        memory: 50 * MIB,
        queue_waits: 1,
        ..s
    }));
    all
}

#[test]
fn average_memory_is_time_weighted_and_a_gap_is_excluded_and_shown_as_coverage() {
    let mut d = new_db();
    d.db.record(&known_samples()).unwrap();
    let r = report(&d.path, &query(h(0), h(3))).unwrap();
    assert_eq!(r.window_seconds, 10_800.0);
    assert_eq!(r.rows.len(), 2, "{r:#?}");
    let a = row(&r, "a", None);
    assert_eq!(a.samples, 720);
    assert_eq!(a.covered_seconds, 7200.0);
    assert!(
        (a.coverage_percent - 200.0 / 3.0).abs() < 1e-9,
        "{}",
        a.coverage_percent
    );
    assert_eq!(a.memory_avg_bytes, 200 * MIB, "the gap is not counted as 0");
    assert_eq!(a.memory_peak_bytes, 301 * MIB);
    assert_eq!(a.memory_byte_seconds, (400 * MIB * 3600) as f64);
    assert_eq!(a.memory_gib_hours, 0.390625, "400 MiB-hours");
    assert_eq!(a.cpu_seconds, 0.72);
    assert_eq!(
        (
            a.requests,
            a.status_2xx,
            a.status_3xx,
            a.status_4xx,
            a.status_5xx
        ),
        (1440, 720, 0, 720, 0)
    );
    assert_eq!((a.bytes_in, a.bytes_out), (720 * 1024, 7200 * 1024));
    let b = row(&r, "b", None);
    assert_eq!(b.coverage_percent, 100.0);
    assert_eq!(b.memory_avg_bytes, 50 * MIB);
    assert_eq!(b.memory_peak_bytes, 50 * MIB, "memory counts as a peak");
    assert_eq!(b.queue_waits, 1080);
    assert!((b.memory_gib_hours - 150.0 / 1024.0).abs() < 1e-12);

    // Only the second hour with samples: 300 MiB, all of it covered.
    let late = report(&d.path, &query(h(2), h(3))).unwrap();
    let a = row(&late, "a", None);
    assert_eq!(a.memory_avg_bytes, 300 * MIB);
    assert_eq!(a.coverage_percent, 100.0);
    assert!(
        (a.memory_gib_hours - 300.0 / 1024.0).abs() < 1e-12,
        "0.293 GiB-hours"
    );

    // The gap alone: a has nothing, and no row.
    let gap = report(&d.path, &query(h(1), h(2))).unwrap();
    assert!(gap.rows.iter().all(|r| r.tenant != "a"), "{gap:#?}");
}

#[test]
fn apps_and_one_tenant_are_reported_on_request() {
    let mut d = new_db();
    d.db.record(&known_samples()).unwrap();
    let all = report(
        &d.path,
        &Query {
            per_app: true,
            ..query(h(0), h(3))
        },
    )
    .unwrap();
    let order: Vec<_> = all
        .rows
        .iter()
        .map(|r| (r.tenant.as_str(), r.app.as_deref()))
        .collect();
    assert_eq!(order, [("a", None), ("a", Some("web")), ("b", None)]);
    let web = row(&all, "a", Some("web"));
    assert_eq!(web.memory_avg_bytes, 50 * MIB);
    assert!((web.coverage_percent - 100.0 / 3.0).abs() < 1e-9);

    let only_b = report(
        &d.path,
        &Query {
            tenant: Some("b".into()),
            per_app: true,
            ..query(h(0), h(3))
        },
    )
    .unwrap();
    assert_eq!(only_b.rows.len(), 1);
    assert_eq!(only_b.rows[0].tenant, "b");
}

#[test]
fn a_window_with_ends_inside_hours_counts_each_sample_once() {
    let mut d = new_db();
    d.db.record(&known_samples()).unwrap();
    // (0:30, 2:30]: 180 samples of a at 100 MiB, 180 at 300 MiB.
    let since = t(1800);
    let until = t(2 * 3600 + 1800);
    let before = report(&d.path, &query(since, until)).unwrap();
    let a = row(&before, "a", None);
    assert_eq!(a.samples, 360);
    assert_eq!(a.memory_avg_bytes, 200 * MIB);
    assert!((a.coverage_percent - 50.0).abs() < 1e-9);
    // A sample ending exactly at `since` is outside, one ending at `until` inside.
    let edge = report(&d.path, &query(t(3590), t(3600))).unwrap();
    assert_eq!(row(&edge, "a", None).samples, 1);

    // Rolled up (nothing deleted yet), the whole hours come from hourly
    // rows and the cut ones from raw samples: the same figures.
    d.db.maintain(h(5), 7, 400).unwrap();
    assert!(count(&d.db, "SELECT count(*) FROM hourly") > 0);
    assert_eq!(report(&d.path, &query(since, until)).unwrap(), before);
}

/// Samples that differ in every field and interval, so that a rollup that
/// dropped, doubled or misplaced one would show.
fn varied_samples() -> Vec<Sample> {
    let mut out = Vec::new();
    for (i, tenant) in ["a", "b", "c"].into_iter().enumerate() {
        let i = i as u64;
        let mut at = 0;
        let mut n = 0u64;
        // Seven hours of samples 7 to 13 s long, with a gap in hour 3.
        while at < 7 * 3600 {
            let seconds = 7 + (n + i) % 7;
            at += seconds;
            n += 1;
            if (3 * 3600..4 * 3600).contains(&at) {
                continue;
            }
            for (app, v) in [(None, n * (i + 1)), (Some("web"), n * (i + 2))] {
                out.push(Sample {
                    memory: (v % 97 + 1) * MIB + v,
                    memory_peak: (v % 89 + 2) * MIB,
                    cpu_usec: v * 13,
                    tasks: (v % 11) as u32,
                    requests: v % 5,
                    status_2xx: v % 3,
                    status_3xx: v % 2,
                    status_4xx: v % 7 / 3,
                    status_5xx: u64::from(v % 17 == 0),
                    bytes_in: v * 101,
                    bytes_out: v * 1009,
                    queue_waits: v % 4,
                    queue_overflows: u64::from(v % 31 == 0),
                    oom_kills: u64::from(v % 401 == 0),
                    memory_events: u64::from(v % 53 == 0),
                    tasks_limit_hits: u64::from(v % 61 == 0),
                    cpu_throttled_usec: v % 9 * 1000,
                    recycles: u64::from(v % 127 == 0),
                    ..Sample::new(tenant, app, t(at), seconds as f64)
                });
            }
        }
    }
    out
}

#[test]
fn reports_are_identical_before_and_after_the_rollup_and_after_raw_samples_are_deleted() {
    let mut d = new_db();
    let samples = varied_samples();
    // In several batches, as the sampler sends them.
    for batch in samples.chunks(500) {
        d.db.record(batch).unwrap();
    }
    let aligned = [(0, 7), (1, 3), (2, 6), (0, 1), (6, 7)];
    let cut = [(1800, 5 * 3600 + 17), (3599, 3601), (100, 200)];
    let windows: Vec<(SystemTime, SystemTime)> = aligned
        .iter()
        .map(|&(a, b)| (h(a), h(b)))
        .chain(cut.iter().map(|&(a, b)| (t(a), t(b))))
        .collect();
    let per_app = |since, until| Query {
        per_app: true,
        ..query(since, until)
    };
    let raw_only: Vec<Report> = windows
        .iter()
        .map(|&(s, u)| report(&d.path, &per_app(s, u)).unwrap())
        .collect();
    let whole = &raw_only[0];
    assert_eq!(
        whole.rows.iter().map(|r| r.samples).sum::<u64>() as usize,
        samples.len()
    );

    // Rolled up, raw samples kept.
    d.db.maintain(h(8), 7, 400).unwrap();
    assert!(count(&d.db, "SELECT count(*) FROM hourly") > 0);
    for (i, &(s, u)) in windows.iter().enumerate() {
        assert_eq!(
            report(&d.path, &per_app(s, u)).unwrap(),
            raw_only[i],
            "window {i}"
        );
    }
    // Running it again changes nothing.
    d.db.maintain(h(8), 7, 400).unwrap();
    assert_eq!(report(&d.path, &per_app(h(0), h(7))).unwrap(), raw_only[0]);

    // Two days later with one day of raw samples: they are gone, and every
    // hour-aligned window reads the same from the hourly rows alone.
    d.db.maintain(h(48 + 8), 1, 400).unwrap();
    assert_eq!(count(&d.db, "SELECT count(*) FROM raw"), 0);
    for (i, &(s, u)) in windows.iter().enumerate().take(aligned.len()) {
        assert_eq!(
            report(&d.path, &per_app(s, u)).unwrap(),
            raw_only[i],
            "window {i}"
        );
    }
    // A window that cuts hours now rests on its whole hours only, and its
    // coverage says so.
    let coarse = report(&d.path, &per_app(t(1800), t(5 * 3600 + 17))).unwrap();
    let exact = &raw_only[aligned.len()];
    assert!(row(&coarse, "a", None).covered_seconds < row(exact, "a", None).covered_seconds);
    let whole_hours = report(&d.path, &per_app(h(1), h(5))).unwrap();
    let without_coverage = |r: &Report| -> Vec<Row> {
        r.rows
            .iter()
            .map(|r| Row {
                coverage_percent: 0.0,
                ..r.clone()
            })
            .collect()
    };
    assert_eq!(
        without_coverage(&coarse),
        without_coverage(&whole_hours),
        "only the hours (1:00, 5:00]"
    );
    let a = row(&coarse, "a", None);
    assert!((a.coverage_percent - a.covered_seconds / coarse.window_seconds * 100.0).abs() < 1e-9);
}

#[test]
fn a_sample_that_arrives_after_its_hour_was_rolled_up_is_added_to_it() {
    let mut d = new_db();
    d.db.record(&known_samples()).unwrap();
    d.db.maintain(h(5), 7, 400).unwrap();
    let before = report(&d.path, &query(h(0), h(3))).unwrap();
    let late = Sample {
        memory: 1000 * MIB,
        requests: 5,
        ..Sample::new("a", None, t(1800 + 5), 5.0)
    };
    d.db.record(std::slice::from_ref(&late)).unwrap();
    let after = report(&d.path, &query(h(0), h(3))).unwrap();
    let (b, a) = (row(&before, "a", None), row(&after, "a", None));
    assert_eq!(a.samples, b.samples + 1);
    assert_eq!(a.requests, b.requests + 5);
    assert_eq!(a.memory_peak_bytes, 1000 * MIB);
    // And reads the same once its raw sample is gone.
    d.db.maintain(h(24 * 3), 1, 400).unwrap();
    assert_eq!(report(&d.path, &query(h(0), h(3))).unwrap(), after);
}

#[test]
fn a_second_sample_of_a_series_ending_in_the_same_millisecond_is_ignored() {
    let mut d = new_db();
    let sample = Sample {
        memory: 10 * MIB,
        requests: 3,
        ..Sample::new("a", None, t(10), 10.0)
    };
    d.db.record(&[sample.clone(), sample.clone()]).unwrap();
    d.db.record(std::slice::from_ref(&sample)).unwrap();
    // Another app, or another tenant, at the same time is not a duplicate.
    d.db.record(&[
        Sample::new("a", Some("web"), t(10), 10.0),
        Sample::new("b", None, t(10), 10.0),
    ])
    .unwrap();
    assert_eq!(count(&d.db, "SELECT count(*) FROM raw"), 3);
    // Nor is it added to its hour once that is rolled up.
    d.db.maintain(h(2), 7, 400).unwrap();
    d.db.record(std::slice::from_ref(&sample)).unwrap();
    let r = report(&d.path, &query(h(0), h(1))).unwrap();
    assert_eq!(
        (row(&r, "a", None).samples, row(&r, "a", None).requests),
        (1, 3)
    );
}

#[test]
fn retention_deletes_raw_after_raw_days_and_hourly_after_keep_days_and_the_file_stops_growing() {
    let mut d = new_db();
    let (raw_days, keep_days) = (1, 3);
    let mut sizes = Vec::new();
    // Ten days of 20 tenants sampled every minute, maintained each hour;
    // tenant `gone` only on the first day.
    for hour in 0..24 * 10u64 {
        let mut batch = Vec::new();
        for n in 0..20 {
            let tenant = format!("t{n}");
            batch.extend(series(
                &tenant,
                None,
                hour * 3600,
                (hour + 1) * 3600,
                60,
                |s| Sample {
                    memory: (n + 1) * MIB,
                    requests: hour,
                    ..s
                },
            ));
        }
        if hour < 24 {
            batch.extend(series(
                "gone",
                None,
                hour * 3600,
                (hour + 1) * 3600,
                60,
                |s| s,
            ));
        }
        d.db.record(&batch).unwrap();
        d.db.maintain(h(hour + 1), raw_days, keep_days).unwrap();
        if hour % 24 == 23 {
            d.db.conn()
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .unwrap();
            sizes.push(std::fs::metadata(&d.path).unwrap().len());
        }
    }
    let now = (BASE * 1000 + 240 * 3_600_000) as i64;
    let oldest_raw = count(&d.db, "SELECT min(at) FROM raw");
    assert!(oldest_raw > now - 86_400_000, "raw at {oldest_raw}");
    let oldest_hour = count(&d.db, "SELECT min(hour) FROM hourly");
    assert_eq!(
        oldest_hour,
        now - 3 * 86_400_000,
        "three days of hours kept"
    );
    assert_eq!(count(&d.db, "SELECT count(*) FROM hourly"), 20 * 72);
    assert_eq!(
        count(&d.db, "SELECT count(*) FROM series WHERE tenant = 'gone'"),
        0,
        "a tenant with nothing left is forgotten"
    );
    // From the fourth day on the file holds steady.
    let steady = sizes[3];
    for (day, &size) in sizes.iter().enumerate().skip(3) {
        assert!(
            size <= steady + steady / 10,
            "day {day}: {size} bytes, day 3: {steady}: {sizes:?}"
        );
    }
    assert_eq!(
        d.db.conn()
            .query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
            .unwrap(),
        "ok"
    );
    // Two days without samples: the raw ones are gone, and the file gives
    // their space back.
    d.db.maintain(h(240 + 48), raw_days, keep_days).unwrap();
    assert_eq!(count(&d.db, "SELECT count(*) FROM raw"), 0);
    d.db.conn()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    let shrunk = std::fs::metadata(&d.path).unwrap().len();
    assert!(shrunk < steady * 2 / 3, "{shrunk} bytes, was {steady}");
    assert_eq!(count(&d.db, "PRAGMA freelist_count"), 0);
}

#[test]
fn a_new_empty_file_is_migrated_and_an_existing_database_reopens_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    // A file that does not exist yet is created 0600.
    let fresh = dir.path().join("fresh.db");
    drop(UsageDb::open(&fresh).unwrap());
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // An empty file (as `touch` leaves it) becomes a database of this version.
    let path = dir.path().join(DB_FILE);
    std::fs::write(&path, b"").unwrap();
    let mut db = UsageDb::open(&path).unwrap();
    let version: i64 = db
        .conn()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let mode: String = db
        .conn()
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    db.record(&known_samples()).unwrap();
    db.maintain(h(2), 7, 400).unwrap();
    let before = report(&path, &query(h(0), h(3))).unwrap();
    drop(db);

    // Reopened: nothing migrates again, the data and watermarks are there,
    // and recording goes on with the same series.
    let mut db = UsageDb::open(&path).unwrap();
    assert_eq!(report(&path, &query(h(0), h(3))).unwrap(), before);
    db.record(&[Sample::new("a", None, t(10_810), 10.0)])
        .unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM series"), 3);
    assert_eq!(
        count(&db, "SELECT value FROM meta WHERE key = 'rolled_until'"),
        (BASE as i64 + 7200) * 1000
    );
    drop(db);

    // A newer berth's database, and someone else's, are left alone.
    let newer = dir.path().join("newer.db");
    rusqlite::Connection::open(&newer)
        .unwrap()
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    let e = UsageDb::open(&newer).err().unwrap().to_string();
    assert!(
        e.contains("schema version 99") && e.contains("newer berth"),
        "{e}"
    );
    let other = dir.path().join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let e = UsageDb::open(&other).err().unwrap().to_string();
    assert!(e.contains("something else"), "{e}");
    // A report on a file that is not there says so.
    let e = report(&dir.path().join("none.db"), &query(h(0), h(1)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no usage database at"), "{e}");
}

#[test]
fn names_with_odd_characters_are_stored_and_reported_as_given() {
    let mut d = new_db();
    let odd = [
        "x'); DROP TABLE raw; --",
        "quote\"comma,new\nline",
        "ünïcødé 名前",
        "%_*?\\",
    ];
    let mut batch = Vec::new();
    for (i, name) in odd.iter().enumerate() {
        batch.push(Sample {
            memory: (i as u64 + 1) * MIB,
            ..Sample::new(name, Some(name), t(10), 10.0)
        });
        batch.push(Sample::new(name, None, t(10), 10.0));
    }
    d.db.record(&batch).unwrap();
    assert_eq!(count(&d.db, "SELECT count(*) FROM raw"), 8);
    let r = report(
        &d.path,
        &Query {
            per_app: true,
            ..query(h(0), h(1))
        },
    )
    .unwrap();
    for (i, name) in odd.iter().enumerate() {
        assert_eq!(
            row(&r, name, Some(name)).memory_avg_bytes,
            (i as u64 + 1) * MIB
        );
    }
    // One tenant by a name with SQL in it matches only itself.
    let one = report(
        &d.path,
        &Query {
            tenant: Some(odd[0].into()),
            ..query(h(0), h(1))
        },
    )
    .unwrap();
    assert_eq!(one.rows.len(), 1);
    let csv = r.csv();
    assert!(csv.contains("\"quote\"\"comma,new\nline\""), "{csv}");
    let table = r.table();
    assert!(table.contains("quote\\\"comma,new\\nline"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
    assert!(
        json["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["tenant"] == odd[1])
    );
}

#[test]
fn the_writer_records_what_was_sent_and_drops_rather_than_blocks_when_the_database_is_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    let w = UsageWriter::spawn(path.clone(), 7, 400).unwrap();
    w.send(series("a", None, 0, 600, 10, |s| s));
    assert!(w.flush());
    assert_eq!(
        report(&path, &query(h(0), h(1))).unwrap().rows[0].samples,
        60
    );

    // Another connection holds the write lock: the thread waits on it, the
    // queue fills, and send drops and counts instead of waiting.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let sent = 2 * writer::QUEUE as u64;
    for i in 0..sent {
        w.send(series("b", None, 600 + i * 10, 610 + i * 10, 10, |s| s));
    }
    assert!(
        w.dropped() >= sent - writer::QUEUE as u64 - 1,
        "{}",
        w.dropped()
    );
    other.execute_batch("COMMIT").unwrap();
    let dropped = w.dropped();
    w.shutdown();
    let r = report(&path, &query(h(0), h(1))).unwrap();
    let b = r
        .rows
        .iter()
        .find(|r| r.tenant == "b")
        .map_or(0, |r| r.samples);
    // The batch the thread held while waiting may have timed out; every
    // other one is either recorded or counted as dropped.
    assert!(
        b + dropped == sent || b + dropped + 1 == sent,
        "{b} recorded, {dropped} dropped of {sent}"
    );
}

/// The environment variables that make [`crash_child`] write: the
/// database's path, the first batch's number, and the time batch 0 ends.
const CRASH_DB: &str = "BERTH_USAGE_CRASH_DB";
const CRASH_FROM: &str = "BERTH_USAGE_CRASH_FROM";
const CRASH_EPOCH: &str = "BERTH_USAGE_CRASH_EPOCH";
const CRASH_BATCH: u64 = 200;

/// Not a test on its own: with `BERTH_USAGE_CRASH_DB` set, the crash test
/// runs it in a child process, which writes numbered batches through a
/// [`UsageWriter`] and prints `written N` once batch N is recorded, until it
/// is killed.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CRASH_DB) else {
        return;
    };
    let var = |k| std::env::var(k).unwrap().parse::<u64>().unwrap();
    let (from, epoch) = (var(CRASH_FROM), var(CRASH_EPOCH));
    let w = UsageWriter::spawn(path.into(), 7, 400).unwrap();
    for n in from.. {
        w.send(crash_batch(epoch, n));
        assert!(w.flush());
        println!("written {n}");
    }
}

/// Batch `n`: one sample of each of `CRASH_BATCH` tenants, ending `10 n`
/// seconds after `epoch`.
fn crash_batch(epoch: u64, n: u64) -> Vec<Sample> {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(epoch + 10 * n);
    (0..CRASH_BATCH)
        .map(|i| Sample {
            memory: (n + i) * MIB,
            requests: n,
            ..Sample::new(&format!("tenant{i}"), None, at, 10.0)
        })
        .collect()
}

fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).unwrap();
    u64::from_le_bytes(b) % n
}

#[test]
fn a_kill_9_while_writing_leaves_a_sound_database_with_every_batch_reported_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    // A day ago: the hours are rolled up when each child starts, so most
    // samples are also added to their hourly rows as they are recorded.
    let epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 86_400;
    let mut next = 0u64;
    let mut reported = Vec::new();
    for round in 0..5 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "usage::tests::crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DB, &path)
            .env(CRASH_FROM, next.to_string())
            .env(CRASH_EPOCH, epoch.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Wait for the first batch, then kill at a random moment after it.
        let first = loop {
            let line = lines.next().expect("the child writes").unwrap();
            if let Some((_, n)) = line.split_once("written ") {
                break n.parse::<u64>().unwrap();
            }
        };
        std::thread::sleep(Duration::from_millis(random_below(400)));
        child.kill().unwrap();
        child.wait().unwrap();
        // Everything it printed before it died is still in the pipe.
        let mut last = first;
        for line in lines {
            // (libtest's "test crash_child ... " may stand before the first.)
            if let Some((_, n)) = line.unwrap().split_once("written ") {
                last = n.parse().unwrap();
            }
        }
        reported.push((round, first, last));

        let conn = rusqlite::Connection::open(&path).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok", "round {round}");
        let per_batch = |n: u64| -> i64 {
            let at = to_ms(crash_batch(epoch, n)[0].at);
            conn.query_row("SELECT count(*) FROM raw WHERE at = ?1", [at], |r| r.get(0))
                .unwrap()
        };
        for n in next..=last {
            assert_eq!(
                per_batch(n),
                CRASH_BATCH as i64,
                "round {round}: batch {n} of {next}..={last}"
            );
        }
        // A batch recorded but not yet reported may be there too, whole.
        let after = per_batch(last + 1);
        assert!(after == 0 || after == CRASH_BATCH as i64, "{after}");
        next = last + 1 + u64::from(after > 0);
        // Each sample of a rolled-up hour is in its hourly row exactly once.
        let (rolled, hourly, raw): (i64, i64, i64) = conn
            .query_row(
                "SELECT (SELECT value FROM meta WHERE key = 'rolled_until'), \
                 (SELECT sum(samples) FROM hourly), \
                 (SELECT count(*) FROM raw WHERE at <= (SELECT value FROM meta WHERE key = 'rolled_until'))",
                [],
                |r| Ok((r.get(0)?, r.get::<_, Option<i64>>(1)?.unwrap_or(0), r.get(2)?)),
            )
            .unwrap();
        assert!(rolled > 0);
        assert_eq!(hourly, raw, "round {round}");
    }
    println!("rounds (round, first, last written): {reported:?}");
    assert!(next > 5, "{reported:?}");
}
