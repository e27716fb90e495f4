//! `berth usage`: per tenant (and per app) figures over a window, from the
//! hourly rows where an hour is rolled up and the raw samples elsewhere, and
//! their rendering as a table, CSV or JSON. The formulas are in
//! `docs/usage.md` ("Billing formulas").

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use super::db::{read_meta, schema_version, select_series, sum_hourly, sum_raw};
use super::{HOUR_MS, SCHEMA_VERSION, Totals, UsageError, floor_hour, from_ms, to_ms};

/// What `berth usage` asks: samples whose interval ends in `(since, until]`,
/// of every tenant or one, with each app's own rows or not.
#[derive(Debug, Clone)]
pub struct Query {
    pub since: SystemTime,
    pub until: SystemTime,
    pub tenant: Option<String>,
    pub per_app: bool,
}

/// The report: one row per tenant (and per app with `per_app`) that has
/// samples in the window, sorted by tenant, the tenant's own row before its
/// apps'.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    #[serde(serialize_with = "rfc3339")]
    pub since: SystemTime,
    #[serde(serialize_with = "rfc3339")]
    pub until: SystemTime,
    pub window_seconds: f64,
    pub rows: Vec<Row>,
}

/// One tenant's (`app` = None) or one app's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub tenant: String,
    pub app: Option<String>,
    pub samples: u64,
    /// Σ seconds of the samples: the time the figures rest on.
    pub covered_seconds: f64,
    /// covered_seconds / window_seconds × 100, at most 100.
    pub coverage_percent: f64,
    /// Σ memory × seconds / Σ seconds (time not covered does not count).
    pub memory_avg_bytes: u64,
    pub memory_peak_bytes: u64,
    /// Σ memory × seconds.
    pub memory_byte_seconds: f64,
    /// memory_byte_seconds / 2^30 / 3600.
    pub memory_gib_hours: f64,
    pub cpu_seconds: f64,
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
    pub memory_events: u64,
    pub tasks_limit_hits: u64,
    pub cpu_throttled_seconds: f64,
    pub recycles: u64,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&show_time(*t))
}

/// RFC 3339 in UTC, e.g. `2026-11-01T00:00:00Z` (milliseconds when not whole).
pub fn show_time(t: SystemTime) -> String {
    match jiff::Timestamp::from_millisecond(to_ms(t)) {
        Ok(ts) => ts.to_string(),
        Err(_) => format!("{} ms after the Unix epoch", to_ms(t)),
    }
}

/// Reads the report for `q` from the database at `db` (read-only; berth may
/// be writing it meanwhile: the report reads one consistent snapshot).
///
/// Each hour wholly inside the window is read from its hourly rows once it
/// is rolled up, from the raw samples before; the hours the window's ends
/// cut are read from the raw samples, and, once those are deleted
/// (`usage_raw_days`), left out: coverage then shows it. Each piece of the
/// window is read from one source, so no time counts twice.
pub fn report(db: &Path, q: &Query) -> Result<Report, UsageError> {
    let (since, until) = (to_ms(q.since), to_ms(q.until));
    if until <= since {
        return Err(UsageError::EmptyWindow {
            since: show_time(q.since),
            until: show_time(q.until),
        });
    }
    if !db.exists() {
        return Err(UsageError::Missing {
            path: db.to_path_buf(),
        });
    }
    let sql = |source| UsageError::Sql {
        path: db.to_path_buf(),
        source,
    };
    let mut conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(sql)?;
    let version = schema_version(&conn, db)?;
    if version != SCHEMA_VERSION {
        return Err(UsageError::Version {
            path: db.to_path_buf(),
            found: version,
            known: SCHEMA_VERSION,
            why: "berth serve migrates it when it starts",
        });
    }
    // One read transaction: one snapshot of rows and watermarks together.
    let tx = conn.transaction().map_err(sql)?;
    let (rolled_until, raw_from) = read_meta(&tx).map_err(sql)?;
    let series = select_series(&tx, q.tenant.as_deref(), q.per_app).map_err(sql)?;
    let wanted: HashSet<i64> = series.keys().copied().collect();
    let mut totals: HashMap<i64, Totals> = HashMap::new();

    // Raw samples are complete only after `raw_from`.
    let raw = |from: i64, to: i64, totals: &mut HashMap<i64, Totals>| {
        sum_raw(&tx, from.max(raw_from), to, &wanted, totals).map_err(sql)
    };
    let first_whole = ceil_hour(since);
    let last_whole = floor_hour(until);
    if first_whole < last_whole {
        raw(since, first_whole, &mut totals)?;
        let hourly_to = last_whole.min(rolled_until);
        if first_whole < hourly_to {
            for &id in &wanted {
                let t = totals.entry(id).or_default();
                sum_hourly(&tx, id, first_whole, hourly_to, t).map_err(sql)?;
            }
        }
        raw(first_whole.max(rolled_until), last_whole, &mut totals)?;
        raw(last_whole, until, &mut totals)?;
    } else {
        raw(since, until, &mut totals)?;
    }

    let window_ms = (until - since) as f64;
    let mut rows: Vec<Row> = totals
        .into_iter()
        .filter(|(_, t)| t.samples > 0)
        .map(|(id, t)| {
            let (tenant, app) = series[&id].clone();
            row(tenant, app, &t, window_ms)
        })
        .collect();
    rows.sort_by(|a, b| (&a.tenant, &a.app).cmp(&(&b.tenant, &b.app)));
    Ok(Report {
        since: from_ms(since),
        until: from_ms(until),
        window_seconds: window_ms / 1000.0,
        rows,
    })
}

fn ceil_hour(ms: i64) -> i64 {
    floor_hour(ms + HOUR_MS - 1)
}

fn row(tenant: String, app: Option<String>, t: &Totals, window_ms: f64) -> Row {
    let [
        cpu_usec,
        requests,
        status_2xx,
        status_3xx,
        status_4xx,
        status_5xx,
        bytes_in,
        bytes_out,
        queue_waits,
        queue_overflows,
        oom_kills,
        memory_events,
        tasks_limit_hits,
        cpu_throttled_usec,
        recycles,
    ] = t.counters;
    let ms = u128::from(t.ms);
    // Rounded to the nearest byte; 0 when nothing is covered.
    let memory_avg_bytes = (t.memory_ms + ms / 2)
        .checked_div(ms)
        .map_or(0, |avg| u64::try_from(avg).unwrap_or(u64::MAX));
    let memory_byte_seconds = t.memory_ms as f64 / 1000.0;
    Row {
        tenant,
        app,
        samples: t.samples,
        covered_seconds: t.ms as f64 / 1000.0,
        coverage_percent: (t.ms as f64 / window_ms * 100.0).min(100.0),
        memory_avg_bytes,
        memory_peak_bytes: t.memory_peak,
        memory_byte_seconds,
        memory_gib_hours: memory_byte_seconds / GIB / 3600.0,
        cpu_seconds: cpu_usec as f64 / 1e6,
        requests,
        status_2xx,
        status_3xx,
        status_4xx,
        status_5xx,
        bytes_in,
        bytes_out,
        queue_waits,
        queue_overflows,
        oom_kills,
        memory_events,
        tasks_limit_hits,
        cpu_throttled_seconds: cpu_throttled_usec as f64 / 1e6,
        recycles,
    }
}

const GIB: f64 = (1u64 << 30) as f64;

impl Report {
    /// An aligned table for people: the billing figures, then the queue and
    /// limit events, sizes in KiB/MiB/GiB.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let hours = self.window_seconds / 3600.0;
        let _ = writeln!(
            out,
            "Usage from {} to {} ({})",
            show_time(self.since),
            show_time(self.until),
            if hours >= 48.0 {
                format!("{:.1} days", hours / 24.0)
            } else {
                format!("{hours:.1} hours")
            }
        );
        if self.rows.is_empty() {
            out.push_str("\nNo usage recorded in this window.\n");
            return out;
        }
        let name = |r: &Row| r.app.as_deref().map_or_else(|| "-".into(), printable);
        let mut billing = Table::new(&[
            "TENANT", "APP", "COVERAGE", "AVG MEM", "PEAK MEM", "GiB-h", "CPU s", "REQUESTS",
            "2xx", "3xx", "4xx", "5xx", "IN", "OUT",
        ]);
        let mut limits = Table::new(&[
            "TENANT",
            "APP",
            "QUEUED",
            "OVERFLOWS",
            "OOM KILLS",
            "MEM EVENTS",
            "TASK LIMIT",
            "THROTTLED s",
            "RECYCLES",
        ]);
        for r in &self.rows {
            billing.push(vec![
                printable(&r.tenant),
                name(r),
                format!("{:.1}%", r.coverage_percent),
                human_bytes(r.memory_avg_bytes),
                human_bytes(r.memory_peak_bytes),
                format!("{:.3}", r.memory_gib_hours),
                format!("{:.1}", r.cpu_seconds),
                r.requests.to_string(),
                r.status_2xx.to_string(),
                r.status_3xx.to_string(),
                r.status_4xx.to_string(),
                r.status_5xx.to_string(),
                human_bytes(r.bytes_in),
                human_bytes(r.bytes_out),
            ]);
            limits.push(vec![
                printable(&r.tenant),
                name(r),
                r.queue_waits.to_string(),
                r.queue_overflows.to_string(),
                r.oom_kills.to_string(),
                r.memory_events.to_string(),
                r.tasks_limit_hits.to_string(),
                format!("{:.1}", r.cpu_throttled_seconds),
                r.recycles.to_string(),
            ]);
        }
        out.push('\n');
        billing.render(&mut out);
        out.push('\n');
        limits.render(&mut out);
        out.push_str(
            "\nCOVERAGE: the share of the window with samples; averages leave out the rest \
             (time berth was not running).\n",
        );
        out
    }

    /// CSV with a header row: one line per row, plain numbers (bytes,
    /// seconds), names quoted where needed (RFC 4180).
    pub fn csv(&self) -> String {
        let mut out = String::from(
            "tenant,app,since,until,window_seconds,samples,covered_seconds,coverage_percent,\
             memory_avg_bytes,memory_peak_bytes,memory_byte_seconds,memory_gib_hours,\
             cpu_seconds,requests,status_2xx,status_3xx,status_4xx,status_5xx,bytes_in,\
             bytes_out,queue_waits,queue_overflows,oom_kills,memory_events,tasks_limit_hits,\
             cpu_throttled_seconds,recycles\n",
        );
        let (since, until) = (show_time(self.since), show_time(self.until));
        for r in &self.rows {
            let fields = [
                csv_field(&r.tenant),
                csv_field(r.app.as_deref().unwrap_or("")),
                since.clone(),
                until.clone(),
                self.window_seconds.to_string(),
                r.samples.to_string(),
                r.covered_seconds.to_string(),
                format!("{:.3}", r.coverage_percent),
                r.memory_avg_bytes.to_string(),
                r.memory_peak_bytes.to_string(),
                r.memory_byte_seconds.to_string(),
                format!("{:.6}", r.memory_gib_hours),
                r.cpu_seconds.to_string(),
                r.requests.to_string(),
                r.status_2xx.to_string(),
                r.status_3xx.to_string(),
                r.status_4xx.to_string(),
                r.status_5xx.to_string(),
                r.bytes_in.to_string(),
                r.bytes_out.to_string(),
                r.queue_waits.to_string(),
                r.queue_overflows.to_string(),
                r.oom_kills.to_string(),
                r.memory_events.to_string(),
                r.tasks_limit_hits.to_string(),
                r.cpu_throttled_seconds.to_string(),
                r.recycles.to_string(),
            ];
            out.push_str(&fields.join(","));
            out.push('\n');
        }
        out
    }

    /// The report as JSON (the field names of [`Report`] and [`Row`]).
    pub fn json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("a report serialises");
        s.push('\n');
        s
    }
}

/// A name for a terminal: control characters escaped, so a name cannot
/// move the cursor or forge a line (berth's names are plain, but the
/// database takes any).
fn printable(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.chars().flat_map(char::escape_default).collect()
    } else {
        s.to_string()
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Bytes for people: `512 B`, `12.0 KiB`, `100.0 MiB`, `1.25 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (unit, shift) in UNITS {
        if n >= 1 << shift {
            let v = n as f64 / (1u64 << shift) as f64;
            let decimals = if unit == "GiB" || unit == "TiB" { 2 } else { 1 };
            return format!("{v:.decimals$} {unit}");
        }
    }
    format!("{n} B")
}

/// Columns aligned for a terminal: names left, figures right.
struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(head: &[&str]) -> Table {
        Table {
            head: head.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    fn render(&self, out: &mut String) {
        let width = |i: usize| {
            self.rows
                .iter()
                .map(|r| r[i].chars().count())
                .chain([self.head[i].len()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.head.len()).map(width).collect();
        for line in std::iter::once(&self.head).chain(&self.rows) {
            let mut text = String::new();
            for (i, cell) in line.iter().enumerate() {
                let w = widths[i];
                if i > 0 {
                    text.push_str("  ");
                }
                // The first two columns are names.
                if i < 2 {
                    let _ = write!(text, "{cell:<w$}");
                } else {
                    let _ = write!(text, "{cell:>w$}");
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
    }
}
