//! The usage database at scale: its size for 1,000 tenants metered every
//! 10 s for a day (8,640 samples each), the time `record` takes for a batch
//! of 1,000, the hourly rollup, and a report over the day.
//!
//!   cargo run --release --example usage_db [DIR]
use std::time::{Duration, Instant, SystemTime};

use berth::usage::{DB_FILE, Query, Sample, UsageDb, report};

const MIB: u64 = 1 << 20;

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_793_491_200 + secs)
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .map_or_else(std::env::temp_dir, Into::into);
    let dir = dir.join(format!("berth-usage-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(DB_FILE);
    let mut db = UsageDb::open(&path).unwrap();
    let tenants = 1000u64;
    let mut times = Vec::new();
    let mut maintains = Vec::new();
    for n in 1..=8640u64 {
        let batch: Vec<Sample> = (0..tenants)
            .map(|i| Sample {
                memory: (50 + i % 200) * MIB + n * 4096,
                memory_peak: (60 + i % 200) * MIB,
                cpu_usec: 20_000 + n % 1000,
                tasks: 5,
                requests: n % 13,
                status_2xx: n % 11,
                bytes_in: n % 13 * 700,
                bytes_out: n % 13 * 15_000,
                ..Sample::new(&format!("tenant{i}"), None, t(n * 10), 10.0)
            })
            .collect();
        let start = Instant::now();
        db.record(&batch).unwrap();
        times.push(start.elapsed());
        if n % 360 == 0 {
            let start = Instant::now();
            db.maintain(t(n * 10), 7, 400).unwrap();
            maintains.push(start.elapsed());
        }
    }
    drop(db);
    times.sort();
    maintains.sort();
    let size: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum();
    println!(
        "1000 tenants x 8640 samples: {:.1} MiB with its WAL ({:.1} bytes per sample)",
        size as f64 / MIB as f64,
        size as f64 / (tenants * 8640) as f64
    );
    println!(
        "record of 1000 samples: median {:?}, p99 {:?}, max {:?}",
        times[times.len() / 2],
        times[times.len() * 99 / 100],
        times[times.len() - 1]
    );
    println!(
        "hourly rollup of 360,000 samples: median {:?}, max {:?}",
        maintains[maintains.len() / 2],
        maintains[maintains.len() - 1]
    );
    let start = Instant::now();
    let q = Query {
        since: t(0),
        until: t(86_400),
        tenant: None,
        per_app: false,
    };
    let r = report(&path, &q).unwrap();
    println!(
        "report over the day: {:?} ({} rows)",
        start.elapsed(),
        r.rows.len()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
