//! Usage metering's storage and the billing report (`berth usage`).
//!
//! The supervisor's sampler measures every tenant (and each of its apps) once
//! per `meter_interval` and hands the [`Sample`]s to a [`UsageWriter`], a
//! thread that owns the SQLite database `state_dir/usage.db` ([`DB_FILE`]), so
//! that nothing on the request path or in the supervisor's event loop ever
//! waits on SQLite. [`UsageDb`] is the database: raw samples, kept
//! `usage_raw_days`, rolled into exact hourly rows kept `usage_keep_days`.
//! [`History`] is the last 24 hours of each tenant, for the status page.
//! [`report`] reads it for `berth usage`: average and peak memory, memory
//! GiB-hours, CPU seconds, requests, traffic and limit events per tenant over a
//! window, with the share of the window the figures rest on (`docs/usage.md`
//! has the formulas).
//!
//! Time: every instant is stored as milliseconds since the Unix epoch. A
//! sample covers the interval `(at - seconds, at]` and belongs, whole, to the
//! hour that interval ends in, `(hour, hour + 1 h]`, and to a report window
//! `(since, until]` when `at` falls in it: nothing is split across hours, so an
//! hourly row holds exactly what its raw samples held.

mod db;
mod history;
mod report;
mod when;
mod writer;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

pub use db::{SCHEMA_VERSION, UsageDb};
pub use history::History;
pub use report::{Query, Report, Row, human_bytes, report, show_time};
pub use when::When;
pub use writer::UsageWriter;

/// The database's file name in `state_dir`.
pub const DB_FILE: &str = "usage.db";

/// One sample: what one tenant (`app == None`: the tenant as a whole) or one
/// app of it used over the interval that ends at `at`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The end of the interval.
    pub at: SystemTime,
    /// The length of the interval this sample covers (`meter_interval`, or
    /// less for the first after a start). Negative or not finite counts as 0.
    pub seconds: f64,
    pub tenant: String,
    pub app: Option<String>,
    /// Bytes in use at `at` (the working set).
    pub memory: u64,
    /// Peak bytes during the interval.
    pub memory_peak: u64,
    /// CPU microseconds used during the interval (a delta).
    pub cpu_usec: u64,
    /// Processes and threads at `at`.
    pub tasks: u32,
    // Deltas during the interval from here on.
    pub requests: u64,
    pub status_2xx: u64,
    pub status_3xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub queue_waits: u64,
    pub queue_overflows: u64,
    pub oom_kills: u64,
    /// `memory.high` / `memory.max` events.
    pub memory_events: u64,
    pub tasks_limit_hits: u64,
    pub cpu_throttled_usec: u64,
    pub recycles: u64,
}

impl Sample {
    /// A sample of `tenant` (or its `app`) over the `seconds` before `at`
    /// with every figure 0, to fill in (`Sample { memory: .., ..Sample::new(..) }`).
    pub fn new(tenant: &str, app: Option<&str>, at: SystemTime, seconds: f64) -> Sample {
        Sample {
            at,
            seconds,
            tenant: tenant.to_string(),
            app: app.map(str::to_string),
            memory: 0,
            memory_peak: 0,
            cpu_usec: 0,
            tasks: 0,
            requests: 0,
            status_2xx: 0,
            status_3xx: 0,
            status_4xx: 0,
            status_5xx: 0,
            bytes_in: 0,
            bytes_out: 0,
            queue_waits: 0,
            queue_overflows: 0,
            oom_kills: 0,
            memory_events: 0,
            tasks_limit_hits: 0,
            cpu_throttled_usec: 0,
            recycles: 0,
        }
    }

    /// The delta counters, in the order of [`COUNTERS`].
    fn counters(&self) -> [u64; COUNTERS.len()] {
        [
            self.cpu_usec,
            self.requests,
            self.status_2xx,
            self.status_3xx,
            self.status_4xx,
            self.status_5xx,
            self.bytes_in,
            self.bytes_out,
            self.queue_waits,
            self.queue_overflows,
            self.oom_kills,
            self.memory_events,
            self.tasks_limit_hits,
            self.cpu_throttled_usec,
            self.recycles,
        ]
    }

    /// The interval's length in whole milliseconds.
    fn ms(&self) -> u64 {
        if self.seconds.is_finite() && self.seconds > 0.0 {
            (self.seconds * 1000.0).round() as u64
        } else {
            0
        }
    }
}

/// The columns of the delta counters, raw and hourly alike: summed by the
/// rollup and the report.
const COUNTERS: [&str; 15] = [
    "cpu_usec",
    "requests",
    "status_2xx",
    "status_3xx",
    "status_4xx",
    "status_5xx",
    "bytes_in",
    "bytes_out",
    "queue_waits",
    "queue_overflows",
    "oom_kills",
    "memory_events",
    "tasks_limit_hits",
    "cpu_throttled_usec",
    "recycles",
];

/// What went wrong with the usage database.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("cannot create the usage database {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no usage database at {path}: berth serve creates it when it first records usage")]
    Missing { path: PathBuf },
    #[error("usage database {path}: {source}")]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("usage database {path} has schema version {found}, this berth knows {known}: {why}")]
    Version {
        path: PathBuf,
        found: i64,
        known: i64,
        why: &'static str,
    },
    #[error("usage database {path}: cannot switch to WAL mode (journal_mode stays {mode})")]
    NoWal { path: PathBuf, mode: String },
    #[error("the window is empty: --until ({until}) must be after --since ({since})")]
    EmptyWindow { since: String, until: String },
    #[error("cannot start the usage writer thread: {0}")]
    Thread(std::io::Error),
}

/// The aggregate of some samples of one series: what the hourly rows store
/// and the report sums. Raw samples and hourly rows go through the same
/// integer arithmetic, so a report is the same whichever it reads.
#[derive(Debug, Clone, Default, PartialEq)]
struct Totals {
    samples: u64,
    /// Covered milliseconds.
    ms: u64,
    /// Σ memory × ms: byte-milliseconds.
    memory_ms: u128,
    /// The largest `memory_peak` (or `memory`, when larger).
    memory_peak: u64,
    tasks_max: u32,
    counters: [u64; COUNTERS.len()],
}

impl Totals {
    fn add_sample(&mut self, ms: u64, memory: u64, memory_peak: u64, tasks: u32, counters: &[u64]) {
        self.add(&Totals {
            samples: 1,
            ms,
            memory_ms: u128::from(memory) * u128::from(ms),
            memory_peak: memory_peak.max(memory),
            tasks_max: tasks,
            counters: counters.try_into().expect("one value per counter"),
        });
    }

    fn add(&mut self, o: &Totals) {
        self.samples = self.samples.saturating_add(o.samples);
        self.ms = self.ms.saturating_add(o.ms);
        self.memory_ms = self.memory_ms.saturating_add(o.memory_ms);
        self.memory_peak = self.memory_peak.max(o.memory_peak);
        self.tasks_max = self.tasks_max.max(o.tasks_max);
        for (a, b) in self.counters.iter_mut().zip(o.counters) {
            *a = a.saturating_add(b);
        }
    }
}

/// One hour in milliseconds.
const HOUR_MS: i64 = 3_600_000;

/// Milliseconds since the Unix epoch (0 for anything before it).
pub fn to_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn from_ms(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// The start of the hour `ms` is in.
fn floor_hour(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS) * HOUR_MS
}

/// The start of the hour a sample ending at `at` belongs to: `at` in
/// `(hour, hour + 1 h]`.
fn hour_of(at: i64) -> i64 {
    floor_hour(at - 1)
}

/// SQLite stores signed 64-bit integers; counters past that (never in
/// practice) are held at the largest.
fn sql_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn from_sql_int(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
