//! berth's own log (not the access logs): every event goes to stderr and, once
//! the supervisor has opened it, to `log_dir/error.log`.
//!
//! The file can be swapped at run time (SIGUSR1 reopen) without locking the hot
//! path: writers load the current file from an `ArcSwapOption`.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;

static ERROR_LOG: ArcSwapOption<File> = ArcSwapOption::const_empty();

/// Sets up tracing for this process. `process` names it in every line
/// ("supervisor" or "front").
pub fn init(process: &'static str, level: LevelFilter) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_target(false)
        .with_writer(Tee)
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

#[derive(Clone, Copy)]
struct Tee;

impl<'a> MakeWriter<'a> for Tee {
    type Writer = Tee;
    fn make_writer(&'a self) -> Tee {
        Tee
    }
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // One formatted event arrives in one call; prefix the process name so the
        // interleaved output of both processes stays readable.
        let mut line = Vec::with_capacity(buf.len() + 16);
        line.extend_from_slice(process().as_bytes());
        line.extend_from_slice(b": ");
        line.extend_from_slice(buf);
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
