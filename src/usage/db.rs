//! The usage database: its schema and migrations, recording samples, and the
//! hourly rollup and retention (`maintain`).
//!
//! Tables (schema version 1; times are milliseconds since the Unix epoch):
//! - `series (id, tenant, app)`: one row per tenant (`app` = '', the tenant
//!   as a whole) and per app of a tenant that was ever sampled; the other
//!   tables refer to it by id, so a name is stored once however many samples
//!   it has. A series with no samples left is deleted by `maintain`.
//! - `raw (at, series, ms, memory, memory_peak, tasks, cpu_usec, ..)`: the
//!   samples as recorded; `ms` is the interval's length. Keyed by
//!   `(at, series)` (a table ordered by time: new samples go at its end,
//!   retention cuts its start, with no separate index to keep), so a second
//!   sample of a series ending in the same millisecond is refused.
//! - `hourly (series, hour, samples, ms, memory_ms, memory_peak, tasks_max,
//!   cpu_usec, ..)`: per series and hour, the samples whose `at` is in
//!   `(hour, hour + 1 h]`: their count, covered milliseconds, Σ memory × ms,
//!   the largest peak and task count, and the sum of every delta counter.
//! - `meta (key, value)`: `rolled_until` (every hour ending at or before it
//!   has its final hourly rows) and `raw_from` (raw samples are complete
//!   only after it; older ones were deleted).
//!
//! Only values ever reach SQL through parameters; statement texts are
//! constants.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};

use super::{
    COUNTERS, HOUR_MS, Sample, Totals, UsageError, floor_hour, from_sql_int, hour_of, sql_int,
    to_ms,
};

/// The schema version this berth writes and reads (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

/// Each migration takes the schema from version `i` to `i + 1`. Never edit
/// one that has shipped; add the next.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [SCHEMA_V1];

const SCHEMA_V1: &str = "
CREATE TABLE series (
    id INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    app TEXT NOT NULL,
    UNIQUE (tenant, app)
);
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('rolled_until', 0), ('raw_from', 0);
CREATE TABLE raw (
    at INTEGER NOT NULL,
    series INTEGER NOT NULL,
    ms INTEGER NOT NULL,
    memory INTEGER NOT NULL,
    memory_peak INTEGER NOT NULL,
    tasks INTEGER NOT NULL,
    cpu_usec INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    status_2xx INTEGER NOT NULL,
    status_3xx INTEGER NOT NULL,
    status_4xx INTEGER NOT NULL,
    status_5xx INTEGER NOT NULL,
    bytes_in INTEGER NOT NULL,
    bytes_out INTEGER NOT NULL,
    queue_waits INTEGER NOT NULL,
    queue_overflows INTEGER NOT NULL,
    oom_kills INTEGER NOT NULL,
    memory_events INTEGER NOT NULL,
    tasks_limit_hits INTEGER NOT NULL,
    cpu_throttled_usec INTEGER NOT NULL,
    recycles INTEGER NOT NULL,
    PRIMARY KEY (at, series)
) WITHOUT ROWID;
CREATE TABLE hourly (
    series INTEGER NOT NULL,
    hour INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    ms INTEGER NOT NULL,
    memory_ms INTEGER NOT NULL,
    memory_peak INTEGER NOT NULL,
    tasks_max INTEGER NOT NULL,
    cpu_usec INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    status_2xx INTEGER NOT NULL,
    status_3xx INTEGER NOT NULL,
    status_4xx INTEGER NOT NULL,
    status_5xx INTEGER NOT NULL,
    bytes_in INTEGER NOT NULL,
    bytes_out INTEGER NOT NULL,
    queue_waits INTEGER NOT NULL,
    queue_overflows INTEGER NOT NULL,
    oom_kills INTEGER NOT NULL,
    memory_events INTEGER NOT NULL,
    tasks_limit_hits INTEGER NOT NULL,
    cpu_throttled_usec INTEGER NOT NULL,
    recycles INTEGER NOT NULL,
    PRIMARY KEY (series, hour)
) WITHOUT ROWID;
";

/// How long a statement waits for a lock another connection holds (a
/// report's read never blocks the writer in WAL mode; a checkpoint or a
/// second writer might, briefly).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The write-ahead log is truncated to this after a checkpoint, so one large
/// rollup does not leave a large file behind.
const WAL_SIZE_LIMIT: i64 = 64 << 20;

const DAY_MS: i64 = 24 * HOUR_MS;

/// The columns a raw sample's figures are read from, in [`Totals`] order.
pub(super) fn raw_columns() -> String {
    format!("ms, memory, memory_peak, tasks, {}", COUNTERS.join(", "))
}

/// The columns of an hourly row after `series, hour`, in [`Totals`] order.
pub(super) fn hourly_columns() -> String {
    format!(
        "samples, ms, memory_ms, memory_peak, tasks_max, {}",
        COUNTERS.join(", ")
    )
}

/// `?first, ?first+1, ..` for `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The usage database, opened for writing (one writer: the [`super::UsageWriter`]).
pub struct UsageDb {
    conn: Connection,
    path: PathBuf,
    /// Series ids by (tenant, app or '').
    series: HashMap<(String, String), i64>,
    rolled_until: i64,
    raw_from: i64,
    insert_raw: String,
    select_hourly: String,
    replace_hourly: String,
}

impl UsageDb {
    /// Opens the database at `path`, creating it (mode 0600) on first run and
    /// migrating its schema to [`SCHEMA_VERSION`]. Refuses a file of a newer
    /// berth and an SQLite file that is not a usage database.
    pub fn open(path: &Path) -> Result<UsageDb, UsageError> {
        // Created here rather than by SQLite so that its mode is 0600 from
        // the start (SQLite gives the -wal and -shm files the same mode) and
        // a symlink in its place is refused.
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| UsageError::Create {
                path: path.to_path_buf(),
                source,
            })?;
        let sql = |source| UsageError::Sql {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
        let version = schema_version(&conn, path)?;
        if version == 0 {
            // Only before the first table: pages freed by retention can
            // then be given back to the file system (see `maintain`).
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
                .map_err(sql)?;
        }
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(sql)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(UsageError::NoWal {
                path: path.to_path_buf(),
                mode,
            });
        }
        // In WAL mode a commit survives the process being killed at any
        // moment; only a power loss can take the last commits back.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql)?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
            .map_err(sql)?;
        let mut db = UsageDb {
            conn,
            path: path.to_path_buf(),
            series: HashMap::new(),
            rolled_until: 0,
            raw_from: 0,
            insert_raw: format!(
                "INSERT INTO raw (at, series, {}) VALUES ({}) ON CONFLICT DO NOTHING",
                raw_columns(),
                placeholders(1, 6 + COUNTERS.len())
            ),
            select_hourly: format!(
                "SELECT {} FROM hourly WHERE series = ?1 AND hour = ?2",
                hourly_columns()
            ),
            replace_hourly: format!(
                "INSERT OR REPLACE INTO hourly (series, hour, {}) VALUES ({})",
                hourly_columns(),
                placeholders(1, 7 + COUNTERS.len())
            ),
        };
        db.migrate(version)?;
        (db.rolled_until, db.raw_from) = read_meta(&db.conn).map_err(sql)?;
        Ok(db)
    }

    fn sql(&self, source: rusqlite::Error) -> UsageError {
        UsageError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    fn migrate(&mut self, from: i64) -> Result<(), UsageError> {
        for version in from..SCHEMA_VERSION {
            let tx = write(&mut self.conn).map_err(|e| UsageError::Sql {
                path: self.path.clone(),
                source: e,
            })?;
            let step = tx
                .execute_batch(MIGRATIONS[version as usize])
                .and_then(|()| tx.pragma_update(None, "user_version", version + 1))
                .and_then(|()| tx.commit());
            step.map_err(|e| self.sql(e))?;
        }
        Ok(())
    }

    /// Records a batch of samples in one transaction: all of it or, on an
    /// error, none of it. A sample that ends in an hour already rolled up
    /// (it arrived late) is added to that hour's row too, so hourly rows
    /// always hold exactly what their raw samples hold.
    ///
    /// A sample of a tenant (or app) that ends in the same millisecond as one
    /// already recorded is a sampler's mistake: it is ignored and logged.
    pub fn record(&mut self, batch: &[Sample]) -> Result<(), UsageError> {
        match self.record_in_one(batch) {
            Ok(0) => Ok(()),
            Ok(duplicates) => {
                tracing::warn!(
                    "usage: {duplicates} samples ignored: each ends in the same millisecond \
                     as one already recorded for its tenant or app"
                );
                Ok(())
            }
            Err(e) => {
                // Ids this transaction made are gone with it.
                self.series.clear();
                Err(self.sql(e))
            }
        }
    }

    /// Returns how many samples were duplicates.
    fn record_in_one(&mut self, batch: &[Sample]) -> rusqlite::Result<usize> {
        let mut duplicates = 0;
        let tx = write(&mut self.conn)?;
        {
            let mut insert = tx.prepare_cached(&self.insert_raw)?;
            for s in batch {
                let series = series_id(&tx, &mut self.series, s)?;
                let at = to_ms(s.at);
                let ms = s.ms();
                let counters = s.counters();
                if at > self.raw_from {
                    let mut values: Vec<i64> = vec![
                        at,
                        series,
                        sql_int(ms),
                        sql_int(s.memory),
                        sql_int(s.memory_peak),
                        i64::from(s.tasks),
                    ];
                    values.extend(counters.iter().map(|&c| sql_int(c)));
                    if insert.execute(rusqlite::params_from_iter(values))? == 0 {
                        duplicates += 1;
                        continue;
                    }
                }
                if at <= self.rolled_until {
                    let hour = hour_of(at);
                    let mut t = tx
                        .prepare_cached(&self.select_hourly)?
                        .query_row(params![series, hour], |r| read_totals(r, 0))
                        .optional()?
                        .unwrap_or_default();
                    t.add_sample(ms, s.memory, s.memory_peak, s.tasks, &counters);
                    write_hourly(&tx, &self.replace_hourly, series, hour, &t)?;
                }
            }
        }
        tx.commit()?;
        Ok(duplicates)
    }

    /// Rolls the raw samples of every complete hour (ending at or before
    /// `now`) not rolled yet into hourly rows, deletes raw samples older than
    /// `raw_days` (whole hours, and never more than `keep_days`) and hourly
    /// rows older than `keep_days`, and forgets series with no samples left.
    /// One transaction; running it again with the same `now` changes nothing.
    pub fn maintain(
        &mut self,
        now: SystemTime,
        raw_days: u32,
        keep_days: u32,
    ) -> Result<(), UsageError> {
        let result = self.maintain_in_one(to_ms(now), raw_days, keep_days);
        if result.is_err() {
            // The transaction's changes to the watermarks and series are gone.
            self.series.clear();
            if let Ok(meta) = read_meta(&self.conn) {
                (self.rolled_until, self.raw_from) = meta;
            }
        }
        result.map_err(|e| self.sql(e))?;
        self.give_back_free_pages().map_err(|e| self.sql(e))
    }

    fn maintain_in_one(&mut self, now: i64, raw_days: u32, keep_days: u32) -> rusqlite::Result<()> {
        let keep_days = keep_days.max(1);
        let raw_days = raw_days.clamp(1, keep_days);
        let tx = write(&mut self.conn)?;
        let target = floor_hour(now);
        if target > self.rolled_until {
            let mut hours: HashMap<(i64, i64), Totals> = HashMap::new();
            {
                let mut rows = tx.prepare(&format!(
                    "SELECT series, at, {} FROM raw WHERE at > ?1 AND at <= ?2",
                    raw_columns()
                ))?;
                let mut rows = rows.query(params![self.rolled_until, target])?;
                while let Some(r) = rows.next()? {
                    let key = (r.get(0)?, hour_of(r.get(1)?));
                    add_raw(hours.entry(key).or_default(), r, 2)?;
                }
            }
            for ((series, hour), t) in &hours {
                write_hourly(&tx, &self.replace_hourly, *series, *hour, t)?;
            }
            self.rolled_until = target;
        }
        let raw_cut = floor_hour(now - i64::from(raw_days) * DAY_MS).min(self.rolled_until);
        if raw_cut > self.raw_from {
            tx.execute("DELETE FROM raw WHERE at <= ?1", [raw_cut])?;
            self.raw_from = raw_cut;
        }
        let keep_cut = floor_hour(now - i64::from(keep_days) * DAY_MS);
        tx.execute(
            "DELETE FROM hourly WHERE series IN (SELECT id FROM series) AND hour < ?1",
            [keep_cut],
        )?;
        // A series with no hourly rows has no raw samples either, except
        // those not rolled up yet (after `rolled_until`).
        let forgotten = tx.execute(
            "DELETE FROM series WHERE NOT EXISTS (SELECT 1 FROM hourly WHERE hourly.series = series.id) \
             AND NOT EXISTS (SELECT 1 FROM raw WHERE raw.at > ?1 AND raw.series = series.id)",
            [self.rolled_until],
        )?;
        if forgotten > 0 {
            self.series.clear();
        }
        tx.execute(
            "UPDATE meta SET value = CASE key WHEN 'rolled_until' THEN ?1 ELSE ?2 END",
            params![self.rolled_until, self.raw_from],
        )?;
        tx.commit()
    }

    /// Deletes leave free pages that later inserts reuse, so in a steady
    /// state the file does not grow; when retention was shortened (or many
    /// tenants left) and a quarter of the file is free, the free pages go
    /// back to the file system.
    fn give_back_free_pages(&self) -> rusqlite::Result<()> {
        let free: i64 = self
            .conn
            .pragma_query_value(None, "freelist_count", |r| r.get(0))?;
        let pages: i64 = self
            .conn
            .pragma_query_value(None, "page_count", |r| r.get(0))?;
        if free > 0 && free * 4 > pages {
            // Each step frees one page.
            let mut vacuum = self.conn.prepare("PRAGMA incremental_vacuum")?;
            let mut steps = vacuum.query([])?;
            while steps.next()?.is_some() {}
        }
        Ok(())
    }

    /// The connection, for tests and measurements.
    #[cfg(test)]
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }
}

/// A write transaction, locked from its start: a deferred one that read
/// first could not write if another connection wrote in between.
fn write(conn: &mut Connection) -> rusqlite::Result<Transaction<'_>> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

/// `PRAGMA user_version`, checked: 0 for a new (empty) file, else a version
/// this berth can migrate from.
pub(super) fn schema_version(conn: &Connection, path: &Path) -> Result<i64, UsageError> {
    let sql = |source| UsageError::Sql {
        path: path.to_path_buf(),
        source,
    };
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sql)?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(sql)?;
    let refuse = |why| {
        Err(UsageError::Version {
            path: path.to_path_buf(),
            found: version,
            known: SCHEMA_VERSION,
            why,
        })
    };
    if version == 0 && tables > 0 {
        return refuse("it is an SQLite database of something else; berth leaves it alone");
    }
    if version > SCHEMA_VERSION {
        return refuse("a newer berth wrote it; this one leaves it alone");
    }
    Ok(version)
}

/// (`rolled_until`, `raw_from`).
pub(super) fn read_meta(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    let get = |key: &str| {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
            r.get::<_, i64>(0)
        })
    };
    Ok((get("rolled_until")?, get("raw_from")?))
}

/// The id of the sample's series, made on first sight.
fn series_id(
    tx: &Transaction<'_>,
    cache: &mut HashMap<(String, String), i64>,
    s: &Sample,
) -> rusqlite::Result<i64> {
    let app = s.app.as_deref().unwrap_or("");
    if let Some(&id) = cache.get(&(s.tenant.clone(), app.to_string())) {
        return Ok(id);
    }
    tx.prepare_cached("INSERT INTO series (tenant, app) VALUES (?1, ?2) ON CONFLICT DO NOTHING")?
        .execute(params![s.tenant, app])?;
    let id = tx
        .prepare_cached("SELECT id FROM series WHERE tenant = ?1 AND app = ?2")?
        .query_row(params![s.tenant, app], |r| r.get(0))?;
    if let Entry::Vacant(v) = cache.entry((s.tenant.clone(), app.to_string())) {
        v.insert(id);
    }
    Ok(id)
}

/// Adds the raw sample whose [`raw_columns`] start at column `first`.
pub(super) fn add_raw(t: &mut Totals, r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<()> {
    let int = |i: usize| r.get::<_, i64>(first + i).map(from_sql_int);
    let mut counters = [0; COUNTERS.len()];
    for (i, c) in counters.iter_mut().enumerate() {
        *c = int(4 + i)?;
    }
    let tasks = u32::try_from(int(3)?).unwrap_or(u32::MAX);
    t.add_sample(int(0)?, int(1)?, int(2)?, tasks, &counters);
    Ok(())
}

/// The hourly row whose [`hourly_columns`] start at column `first`.
pub(super) fn read_totals(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Totals> {
    let int = |i: usize| r.get::<_, i64>(first + i).map(from_sql_int);
    let memory_ms = match r.get_ref(first + 2)? {
        ValueRef::Integer(n) => u128::from(from_sql_int(n)),
        ValueRef::Real(f) => f as u128,
        _ => 0,
    };
    let mut counters = [0; COUNTERS.len()];
    for (i, c) in counters.iter_mut().enumerate() {
        *c = int(5 + i)?;
    }
    Ok(Totals {
        samples: int(0)?,
        ms: int(1)?,
        memory_ms,
        memory_peak: int(3)?,
        tasks_max: u32::try_from(int(4)?).unwrap_or(u32::MAX),
        counters,
    })
}

fn write_hourly(
    tx: &Transaction<'_>,
    sql: &str,
    series: i64,
    hour: i64,
    t: &Totals,
) -> rusqlite::Result<()> {
    // Byte-milliseconds stay exact integers up to 2^63 (a series averaging
    // 2.3 TiB over a whole hour); beyond, they are kept as a REAL.
    let memory_ms = match i64::try_from(t.memory_ms) {
        Ok(n) => Value::Integer(n),
        Err(_) => Value::Real(t.memory_ms as f64),
    };
    let mut values = vec![
        Value::Integer(series),
        Value::Integer(hour),
        Value::Integer(sql_int(t.samples)),
        Value::Integer(sql_int(t.ms)),
        memory_ms,
        Value::Integer(sql_int(t.memory_peak)),
        Value::Integer(i64::from(t.tasks_max)),
    ];
    values.extend(t.counters.iter().map(|&c| Value::Integer(sql_int(c))));
    tx.prepare_cached(sql)?
        .execute(rusqlite::params_from_iter(values))?;
    Ok(())
}

/// The series ids of a report: every tenant's, or one tenant's; apps' too
/// when `per_app`. Returns id → (tenant, app).
pub(super) fn select_series(
    conn: &Connection,
    tenant: Option<&str>,
    per_app: bool,
) -> rusqlite::Result<HashMap<i64, (String, Option<String>)>> {
    let mut out = HashMap::new();
    let mut stmt =
        conn.prepare("SELECT id, tenant, app FROM series WHERE ?1 IS NULL OR tenant = ?1")?;
    let mut rows = stmt.query([tenant])?;
    while let Some(r) = rows.next()? {
        let app: String = r.get(2)?;
        if !app.is_empty() && !per_app {
            continue;
        }
        out.insert(r.get(0)?, (r.get(1)?, (!app.is_empty()).then_some(app)));
    }
    Ok(out)
}

/// Adds the raw samples with `at` in `(from, to]` of the series in `wanted`.
pub(super) fn sum_raw(
    conn: &Connection,
    from: i64,
    to: i64,
    wanted: &HashSet<i64>,
    into: &mut HashMap<i64, Totals>,
) -> rusqlite::Result<()> {
    if from >= to {
        return Ok(());
    }
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT series, {} FROM raw WHERE at > ?1 AND at <= ?2",
        raw_columns()
    ))?;
    let mut rows = stmt.query([from, to])?;
    while let Some(r) = rows.next()? {
        let series: i64 = r.get(0)?;
        if wanted.contains(&series) {
            add_raw(into.entry(series).or_default(), r, 1)?;
        }
    }
    Ok(())
}

/// Adds the hourly rows of `series` for the hours starting in `[from, to)`.
pub(super) fn sum_hourly(
    conn: &Connection,
    series: i64,
    from: i64,
    to: i64,
    into: &mut Totals,
) -> rusqlite::Result<()> {
    if from >= to {
        return Ok(());
    }
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {} FROM hourly WHERE series = ?1 AND hour >= ?2 AND hour < ?3",
        hourly_columns()
    ))?;
    let mut rows = stmt.query([series, from, to])?;
    while let Some(r) = rows.next()? {
        into.add(&read_totals(r, 0)?);
    }
    Ok(())
}
