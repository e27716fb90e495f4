//! berth's own log (not the access logs): every event goes to stderr and, once
//! the supervisor has opened it, to `log_dir/error.log`.
//!
//! The file can be swapped at run time (SIGUSR1 reopen) without locking the hot
//! path: writers load the current file from an `ArcSwapOption`.
//!
//! Clients, tenants and a compromised front end can all cause lines here (a
//! 503 for a full queue, a refused start, a refused request of the front
//! end), so no line is trusted and none is free:
//! - each line is escaped as a tenant's are ([`crate::tenant_log::escape_into`]):
//!   a newline or an escape sequence in a message (a script path, a host
//!   name, a decoding error quoting its input) cannot forge a line;
//! - lines pass a token bucket ([`set_rate`]: `log_rate` lines a second, a
//!   burst of [`BURST_SECONDS`] seconds' worth); a line over the rate goes
//!   neither to the file nor to stderr, and once a second a warning says how
//!   many were dropped. Each process (supervisor, front end) has its own
//!   bucket, so the file can take up to twice the rate. Debug and trace
//!   lines are not held to it: they are on only while an administrator
//!   looks for something (`BERTH_LOG=debug`), and then every line counts.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Once};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::tenant_log::{Bucket, escape_into};

static ERROR_LOG: ArcSwapOption<File> = ArcSwapOption::const_empty();

/// Lines a second berth's log takes from one process unless `log_rate` says
/// otherwise. A quiet berth writes a few lines a minute and a reload or a
/// restart of many apps some dozens at once; 100 a second (with a burst of
/// 1000, what a reload with hundreds of problems needs) keeps all of that,
/// while a client or tenant causing a warning per request costs the disk at
/// most ~15 KB a second instead of megabytes.
pub const DEFAULT_RATE: u32 = 100;
/// The bucket holds this many seconds of the rate.
pub const BURST_SECONDS: u32 = 10;
/// How often the "lines dropped" warning is written (when lines were).
const SUMMARY_EVERY: Duration = Duration::from_secs(1);

/// Sets up tracing for this process. `process` names it in every line
/// ("supervisor" or "front").
pub fn init(process: &'static str, level: LevelFilter) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_target(false)
        .with_writer(Tee { limited: true })
        .fmt_fields(tracing_subscriber::fmt::format::DefaultFields::new())
        .event_format(
            tracing_subscriber::fmt::format()
                .with_ansi(false)
                .with_target(false)
                .compact(),
        )
        .try_init();
    PROCESS.set(process).ok();
}

static PROCESS: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// The name given to [`init`].
pub fn process() -> &'static str {
    PROCESS.get().copied().unwrap_or("berth")
}

/// Starts (or replaces) the error log file.
pub fn set_file(file: File) {
    ERROR_LOG.store(Some(Arc::new(file)));
}

/// Parses a level name as given to `BERTH_LOG` / `--log-level`.
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    s.parse().ok()
}

/// Lines a second this process may write from now on (`[server]
/// log_rate`); the bucket keeps its tokens, up to the new burst.
pub fn set_rate(rate: u32) {
    RATE.store(rate.max(1), Ordering::Relaxed);
    let burst = burst(rate);
    LIMITER.lock().unwrap_or_else(|e| e.into_inner()).cap(burst);
}

static RATE: AtomicU32 = AtomicU32::new(DEFAULT_RATE);
static LIMITER: LazyLock<Mutex<Bucket>> =
    LazyLock::new(|| Mutex::new(Bucket::full(burst(DEFAULT_RATE))));
/// Lines dropped since the last summary.
static DROPPED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set while [`summarise`] writes its warning, which no bucket may hold
    /// back.
    static SUMMARY: Cell<bool> = const { Cell::new(false) };
}

fn burst(rate: u32) -> f64 {
    f64::from(rate.max(1)) * f64::from(BURST_SECONDS)
}

/// Whether one more line may be written now; counts it when not.
fn admit() -> bool {
    if SUMMARY.with(Cell::get) {
        return true;
    }
    let rate = RATE.load(Ordering::Relaxed);
    let mut bucket = LIMITER.lock().unwrap_or_else(|e| e.into_inner());
    if bucket.take(1, f64::from(rate.max(1)), burst(rate)) == 1 {
        return true;
    }
    drop(bucket);
    DROPPED.fetch_add(1, Ordering::Relaxed);
    start_summaries();
    false
}

/// Once a second, a warning for the lines dropped since the last one (the
/// thread starts with the first line dropped).
fn start_summaries() {
    static START: Once = Once::new();
    START.call_once(|| {
        let _ = std::thread::Builder::new()
            .name("log-summary".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(SUMMARY_EVERY);
                    summarise();
                }
            });
    });
}

/// Writes the "lines dropped" warning if lines were dropped since the last.
fn summarise() {
    let n = DROPPED.swap(0, Ordering::Relaxed);
    if n > 0 {
        SUMMARY.with(|s| s.set(true));
        tracing::warn!(
            "{n} lines of berth's log dropped: more than log_rate ({} lines a second)",
            RATE.load(Ordering::Relaxed)
        );
        SUMMARY.with(|s| s.set(false));
    }
}

/// Writes each line to stderr and the file; `limited` lines (info and
/// above) pass the bucket first.
#[derive(Clone, Copy)]
struct Tee {
    limited: bool,
}

impl<'a> MakeWriter<'a> for Tee {
    type Writer = Tee;
    fn make_writer(&'a self) -> Tee {
        Tee { limited: true }
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Tee {
        Tee {
            limited: *meta.level() <= tracing::Level::INFO,
        }
    }
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // One formatted event arrives in one call.
        if self.limited && !admit() {
            return Ok(buf.len());
        }
        // Prefix the process name so the interleaved output of both
        // processes stays readable; only the event's own newline ends it.
        let text = buf.strip_suffix(b"\n").unwrap_or(buf);
        let mut line = Vec::with_capacity(buf.len() + 16);
        line.extend_from_slice(process().as_bytes());
        line.extend_from_slice(b": ");
        escape_into(&mut line, text);
        line.push(b'\n');
        let _ = io::stderr().write_all(&line);
        if let Some(f) = ERROR_LOG.load().as_ref() {
            let _ = (&**f).write_all(&line);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The finding: berth's own log took every line, so 5 s of requests
    /// against a full app queue (a warning each) added 4.2 MB. Lines over
    /// the rate are dropped and counted, and the count is written.
    #[test]
    fn berths_own_log_holds_a_flood_to_its_rate_and_says_what_it_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("error.log");
        set_file(File::create(&path).unwrap());
        init("test", LevelFilter::INFO);
        set_rate(10);
        // Empty the bucket first (other tests of this binary may have used it).
        LIMITER.lock().unwrap().take(usize::MAX, 10.0, burst(10));
        DROPPED.store(0, Ordering::Relaxed);
        for i in 0..1000 {
            tracing::warn!("flood line {i}\nforged line");
        }
        summarise();
        let text = std::fs::read_to_string(&path).unwrap();
        let kept = text.matches("flood line").count();
        // A token or two may refill while the loop runs.
        assert!(kept <= 5, "{kept} lines kept:\n{text}");
        // Counted (perhaps in two summaries: the summary thread's and ours),
        // and perhaps with lines of other tests running meanwhile.
        let dropped: usize = text
            .lines()
            .filter_map(|l| {
                l.split(" lines of berth's log dropped: ")
                    .next()?
                    .rsplit(' ')
                    .next()
            })
            .filter_map(|n| n.parse::<usize>().ok())
            .sum();
        assert!(kept + dropped >= 1000, "{kept} + {dropped}:\n{text}");
        assert!(
            text.contains("lines of berth's log dropped: more than log_rate (10 lines a second)"),
            "{text}"
        );
        assert!(!text.lines().any(|l| l.starts_with("forged")), "{text}");
        set_rate(DEFAULT_RATE);
    }
}
