//! The last 24 hours of each tenant, hour by hour, for the status page's
//! charts: read once from the database ([`History::load`], read-only:
//! hourly rows where rolled up, raw samples after), then kept up to date by
//! the meter with each sample it records ([`History::add`]), so that the
//! page costs the database nothing per interval.
//!
//! A sample belongs to the hour its interval ends in, as in the rollup, so
//! an hour here is exactly what its hourly row holds (or will).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::SystemTime;

use rusqlite::{Connection, OpenFlags};

use super::db::{add_raw, raw_columns, read_meta, read_totals, schema_version};
use super::{HOUR_MS, SCHEMA_VERSION, Sample, Totals, UsageError, floor_hour, hour_of, to_ms};
use crate::ipc::HourPoint;

/// How many hours a chart shows: the current one and the 23 before.
pub const HOURS: i64 = 24;

/// Each tenant's hours (the tenant as a whole, not its apps).
#[derive(Debug, Default)]
pub struct History {
    hours: HashMap<String, BTreeMap<i64, Totals>>,
}

impl History {
    /// The `HOURS` up to `now` from the database at `db` (opened
    /// read-only; berth's writer may be writing meanwhile).
    pub fn load(db: &Path, now: SystemTime) -> Result<History, UsageError> {
        let sql = |source| UsageError::Sql {
            path: db.to_path_buf(),
            source,
        };
        let mut conn = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql)?;
        let version = schema_version(&conn, db)?;
        if version != SCHEMA_VERSION {
            return Err(UsageError::Version {
                path: db.to_path_buf(),
                found: version,
                known: SCHEMA_VERSION,
                why: "berth serve migrates it when it starts",
            });
        }
        let from = first_hour(now);
        let tx = conn.transaction().map_err(sql)?;
        let (rolled_until, raw_from) = read_meta(&tx).map_err(sql)?;
        let mut history = History::default();
        let mut read = || -> rusqlite::Result<()> {
            let mut stmt = tx.prepare(&format!(
                "SELECT series.tenant, hourly.hour, {} FROM hourly \
                 JOIN series ON series.id = hourly.series \
                 WHERE series.app = '' AND hourly.hour >= ?1 AND hourly.hour < ?2",
                super::db::hourly_columns()
            ))?;
            let mut rows = stmt.query([from, rolled_until])?;
            while let Some(r) = rows.next()? {
                let tenant: String = r.get(0)?;
                let hour: i64 = r.get(1)?;
                let t = read_totals(r, 2)?;
                history.tenant(&tenant).entry(hour).or_default().add(&t);
            }
            // Raw samples after what is rolled up (and complete only after
            // `raw_from`).
            let mut stmt = tx.prepare(&format!(
                "SELECT series.tenant, raw.at, {} FROM raw \
                 JOIN series ON series.id = raw.series \
                 WHERE series.app = '' AND raw.at > ?1",
                raw_columns()
            ))?;
            let after = from.max(rolled_until).max(raw_from);
            let mut rows = stmt.query([after])?;
            while let Some(r) = rows.next()? {
                let tenant: String = r.get(0)?;
                let at: i64 = r.get(1)?;
                let hour = history.tenant(&tenant).entry(hour_of(at)).or_default();
                add_raw(hour, r, 2)?;
            }
            Ok(())
        };
        read().map_err(sql)?;
        Ok(history)
    }

    fn tenant(&mut self, name: &str) -> &mut BTreeMap<i64, Totals> {
        if !self.hours.contains_key(name) {
            self.hours.insert(name.to_string(), BTreeMap::new());
        }
        self.hours.get_mut(name).expect("inserted above")
    }

    /// A sample the meter recorded; only a tenant's own (not an app's)
    /// counts.
    pub fn add(&mut self, s: &Sample) {
        if s.app.is_some() {
            return;
        }
        let at = to_ms(s.at);
        let t = self.tenant(&s.tenant).entry(hour_of(at)).or_default();
        t.add_sample(s.ms(), s.memory, s.memory_peak, s.tasks, &s.counters());
    }

    /// Forgets hours older than the chart as of `now`, and tenants `keep`
    /// does not want.
    pub fn trim(&mut self, now: SystemTime, keep: impl Fn(&str) -> bool) {
        let from = first_hour(now);
        self.hours.retain(|name, hours| {
            hours.retain(|&hour, _| hour >= from);
            keep(name) && !hours.is_empty()
        });
    }

    /// The hours of `tenant` that have samples, oldest first.
    pub fn points(&self, tenant: &str) -> Vec<HourPoint> {
        let Some(hours) = self.hours.get(tenant) else {
            return Vec::new();
        };
        hours
            .iter()
            .filter(|(_, t)| t.ms > 0)
            .map(|(&hour, t)| HourPoint {
                hour_ms: hour,
                memory_avg: u64::try_from(t.memory_ms / u128::from(t.ms)).unwrap_or(u64::MAX),
                memory_peak: t.memory_peak,
                // `cpu_usec` is the first of the counters.
                cpu_seconds: t.counters[0] as f64 / 1e6,
                covered_s: t.ms as f64 / 1000.0,
            })
            .collect()
    }
}

/// The first hour a chart at `now` shows.
fn first_hour(now: SystemTime) -> i64 {
    floor_hour(to_ms(now)) - (HOURS - 1) * HOUR_MS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::UsageDb;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(ms: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    }

    fn sample(tenant: &str, app: Option<&str>, at_ms: i64, memory: u64, cpu_usec: u64) -> Sample {
        Sample {
            memory,
            memory_peak: memory,
            cpu_usec,
            ..Sample::new(tenant, app, at(at_ms), 10.0)
        }
    }

    #[test]
    fn the_chart_reads_hourly_rows_and_raw_samples_and_goes_on_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        let mut db = UsageDb::open(&path).unwrap();
        // Now is 10:30 on some day; 26 hours of a tenant at 100 MiB (and
        // its app, left out), 1 s of CPU per sample; the hours up to 09:00
        // rolled up, 09:00-10:30 raw.
        let h = 1_800_000_000_000 / HOUR_MS * HOUR_MS;
        let now = h + 10 * HOUR_MS + HOUR_MS / 2;
        let mut batch = Vec::new();
        let mut t = now - 26 * HOUR_MS;
        while t <= now {
            batch.push(sample("alice", None, t, 100 << 20, 1_000_000));
            batch.push(sample("alice", Some("blog"), t, 50 << 20, 0));
            t += 10_000;
        }
        db.record(&batch).unwrap();
        db.maintain(at(h + 9 * HOUR_MS + 60_000), 7, 400).unwrap();

        let mut history = History::load(&path, at(now)).unwrap();
        let points = history.points("alice");
        assert_eq!(points.len(), 24, "{points:?}");
        assert_eq!(points[0].hour_ms, h + 10 * HOUR_MS - 23 * HOUR_MS);
        assert_eq!(points[23].hour_ms, h + 10 * HOUR_MS);
        for p in &points[..23] {
            assert_eq!(p.memory_avg, 100 << 20);
            assert_eq!(p.covered_s, 3600.0, "{p:?}");
            assert_eq!(p.cpu_seconds, 360.0, "{p:?}");
        }
        // 10:00 to 10:30: 180 samples.
        assert_eq!(points[23].covered_s, 1800.0);
        assert!(history.points("nobody").is_empty());

        // The meter goes on: a sample at 10:30:10 of 300 MiB, and an app's.
        history.add(&sample("alice", None, now + 10_000, 300 << 20, 0));
        history.add(&sample("alice", Some("blog"), now + 10_000, 1 << 30, 0));
        let last = *history.points("alice").last().unwrap();
        assert_eq!(last.covered_s, 1810.0);
        assert_eq!(last.memory_avg, (180 * (100u64 << 20) + (300 << 20)) / 181);
        // An hour on, the first hour goes.
        history.trim(at(now + HOUR_MS), |_| true);
        assert_eq!(
            history.points("alice")[0].hour_ms,
            h + 11 * HOUR_MS - 23 * HOUR_MS
        );
        history.trim(at(now), |name| name != "alice");
        assert!(history.points("alice").is_empty());
    }
}
