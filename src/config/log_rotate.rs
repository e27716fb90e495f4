//! `[server] log_rotate` and `log_keep`: when berth rotates its log files
//! (every tenant's `access.log` and `error.log`, and its own `error.log`)
//! and how many old ones it keeps. The supervisor does the rotating
//! (`supervisor::rotate`); this is only what the admin wrote, validated.
//!
//! `log_rotate` is `"daily"` (at local midnight), `"weekly"` (at local
//! midnight before Monday), a size (`"100MiB"`: as soon as a file is that
//! large), both (`"daily or 100MiB"`: whichever comes first), or `"off"`
//! (an external logrotate moves the files and sends SIGUSR1).

use super::reader::TableReader;
use super::{bounded, parse_size, show_size};

/// When a time-based rotation comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// At local midnight.
    Daily,
    /// At local midnight between Sunday and Monday.
    Weekly,
}

/// `log_rotate` and `log_keep`, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotation {
    /// Rotate at the start of each day or week (local time).
    pub every: Option<Period>,
    /// Rotate a file once it holds this many bytes (a tenant's error log
    /// already at its `error_log_max`, which is smaller: then).
    pub size: Option<u64>,
    /// Old files kept of each log: `.1` (plain), `.2.gz` and older.
    pub keep: u32,
}

/// The smallest size `log_rotate` takes: below a few lines a file would
/// rotate at every check.
pub const MIN_ROTATE_SIZE: u64 = 4 << 10;
/// The largest (1 TiB, as for every size).
pub const MAX_ROTATE_SIZE: u64 = 1 << 40;
/// The most old files of one log `log_keep` may ask for.
pub const MAX_KEEP: i64 = 1000;

impl Default for LogRotation {
    /// Daily, as Debian's logrotate rules for nginx and Apache do, so that
    /// each old file is a day (what statistics tools and admins expect),
    /// or sooner at 100 MiB, as Caddy does, so that a busy or flooded site
    /// cannot grow one file without bound in a day; 14 old files, as
    /// Debian keeps. A tenant's logs then hold at most (14 + 1) × 100 MiB
    /// for `access.log` and (14 + 1) × `error_log_max` (64 MiB) for
    /// `error.log`, before compression.
    fn default() -> Self {
        LogRotation {
            every: Some(Period::Daily),
            size: Some(100 << 20),
            keep: 14,
        }
    }
}

impl LogRotation {
    /// "off": berth never rotates (an external logrotate does, with SIGUSR1).
    pub fn off(&self) -> bool {
        self.every.is_none() && self.size.is_none()
    }

    /// As written in the configuration (`"daily or 100MiB"`).
    pub fn show(&self) -> String {
        let mut terms = Vec::new();
        match self.every {
            Some(Period::Daily) => terms.push("daily".to_string()),
            Some(Period::Weekly) => terms.push("weekly".to_string()),
            None => {}
        }
        if let Some(size) = self.size {
            terms.push(show_size(size));
        }
        if terms.is_empty() {
            return "off".into();
        }
        terms.join(" or ")
    }
}

/// Reads `log_rotate` and `log_keep` of `[server]` over `base`.
pub(super) fn read(t: &mut TableReader<'_>, base: LogRotation) -> LogRotation {
    let walk = t.walk();
    let mut r = base;
    if let Some(at) = t.string("log_rotate") {
        match parse(&at.value) {
            Ok((every, size)) => {
                r.every = every;
                r.size = size;
            }
            Err(why) => walk.problem(at.line, &at.key, why),
        }
    }
    if let Some(n) = bounded(walk, t.integer("log_keep"), 1, MAX_KEEP) {
        r.keep = n as u32;
    }
    r
}

/// `log_rotate`'s value: "off", or one or two terms joined by "or", each
/// "daily", "weekly" or a size. Err: why not, saying what is valid.
fn parse(value: &str) -> Result<(Option<Period>, Option<u64>), String> {
    let valid = "expected \"daily\", \"weekly\", a size such as \"100MiB\", \
                 both (\"daily or 100MiB\"), or \"off\"";
    let text = value.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok((None, None));
    }
    let (mut every, mut size) = (None, None);
    for term in text.split(" or ").map(str::trim) {
        let period = match term.to_ascii_lowercase().as_str() {
            "daily" => Some(Period::Daily),
            "weekly" => Some(Period::Weekly),
            _ => None,
        };
        if let Some(p) = period {
            if every.is_some() {
                return Err(format!(
                    "{value:?}: one of \"daily\" or \"weekly\", not both"
                ));
            }
            every = Some(p);
            continue;
        }
        let Some(n) = parse_size(term) else {
            return Err(format!(
                "{value:?}: {term:?} is not a period or a size; {valid}"
            ));
        };
        if size.is_some() {
            return Err(format!("{value:?}: one size, not two"));
        }
        if !(MIN_ROTATE_SIZE..=MAX_ROTATE_SIZE).contains(&n) {
            return Err(format!(
                "{value:?}: the size must be between {} and {}",
                show_size(MIN_ROTATE_SIZE),
                show_size(MAX_ROTATE_SIZE)
            ));
        }
        size = Some(n);
    }
    Ok((every, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with(dir: &tempfile::TempDir, lines: &str) -> Result<LogRotation, String> {
        let path = dir.path().join("berth.toml");
        let text = format!("[server]\nlisten = [\"127.0.0.1:1\"]\nuser = \"daemon\"\n{lines}\n");
        std::fs::write(&path, text).unwrap();
        super::super::load(&path)
            .map(|c| c.server.log_rotation)
            .map_err(|p| p.to_string())
    }

    #[test]
    fn log_rotate_and_log_keep_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let d = load_with(&dir, "").unwrap();
        assert_eq!(d, LogRotation::default());
        assert_eq!(d.show(), "daily or 100MiB");
        let cases = [
            ("\"daily\"", Some(Period::Daily), None),
            ("\"Weekly\"", Some(Period::Weekly), None),
            ("\"16KiB\"", None, Some(16 << 10)),
            ("\"1GiB or weekly\"", Some(Period::Weekly), Some(1 << 30)),
            ("\"off\"", None, None),
        ];
        for (value, every, size) in cases {
            let r = load_with(&dir, &format!("log_rotate = {value}\nlog_keep = 3")).unwrap();
            assert_eq!((r.every, r.size, r.keep), (every, size, 3), "{value}");
        }
        assert!(load_with(&dir, "log_rotate = \"off\"").unwrap().off());
    }

    #[test]
    fn bad_log_rotate_and_log_keep_say_file_line_key_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("berth.toml").display().to_string();
        let cases = [
            (
                "log_rotate = \"hourly\"",
                "log_rotate",
                "\"hourly\" is not a period or a size",
            ),
            (
                "log_rotate = \"1KiB\"",
                "log_rotate",
                "must be between 4KiB and 1TiB",
            ),
            ("log_rotate = \"daily or weekly\"", "log_rotate", "not both"),
            (
                "log_rotate = \"1MiB or 2MiB\"",
                "log_rotate",
                "one size, not two",
            ),
            (
                "log_rotate = \"\"",
                "log_rotate",
                "\"\" is not a period or a size",
            ),
            ("log_rotate = 100", "log_rotate", "expected a string"),
            ("log_keep = 0", "log_keep", "must be between 1 and 1000"),
            ("log_keep = 5000", "log_keep", "must be between 1 and 1000"),
            ("log_keep = \"7\"", "log_keep", "expected an integer"),
        ];
        for (line, key, why) in cases {
            let text = load_with(&dir, line).unwrap_err();
            let want = format!("{file}:4: server.{key}: ");
            assert!(text.contains(&want) && text.contains(why), "{line}: {text}");
        }
    }
}
