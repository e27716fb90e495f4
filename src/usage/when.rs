//! The times `berth usage --since/--until` accept: RFC 3339
//! (`2026-11-01T00:00:00Z`, `2026-11-01T01:00:00+01:00`), a date (`2026-11-01`,
//! midnight UTC), `now`, or a time ago (`-7d`, `-1h`, `-30m`, `-90s`, `-2w`).
//!
//! RFC 3339 is parsed by `jiff` (offsets, fractions and leap-year rules are
//! its business, not ours); the relative forms are a few lines here.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

/// A point in time as the command line gives it, resolved against one "now"
/// so that `--since -1h --until now` is exactly an hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Now,
    Ago(Duration),
    At(SystemTime),
}

impl When {
    pub fn resolve(self, now: SystemTime) -> SystemTime {
        match self {
            When::Now => now,
            When::Ago(d) => now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH),
            When::At(t) => t,
        }
    }
}

impl FromStr for When {
    type Err = String;

    fn from_str(s: &str) -> Result<When, String> {
        let bad = || {
            format!(
                "{s:?} is not a time: give RFC 3339 (2026-11-01T00:00:00Z), a date \
                 (2026-11-01, midnight UTC), `now`, or a time ago such as -7d, -1h, -30m"
            )
        };
        let t = s.trim();
        if t.eq_ignore_ascii_case("now") {
            return Ok(When::Now);
        }
        if let Some(rel) = t.strip_prefix('-') {
            let split = rel.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
            let (n, unit) = rel.split_at(split);
            let n: u64 = n.parse().map_err(|_| bad())?;
            let unit_secs = match unit {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86_400,
                "w" => 7 * 86_400,
                _ => return Err(bad()),
            };
            let secs = n.checked_mul(unit_secs).ok_or_else(bad)?;
            return Ok(When::Ago(Duration::from_secs(secs)));
        }
        let stamp = if t.len() == 10 && t.as_bytes()[4] == b'-' {
            format!("{t}T00:00:00Z").parse::<jiff::Timestamp>()
        } else {
            t.parse::<jiff::Timestamp>()
        };
        stamp
            .map(|ts| When::At(super::from_ms(ts.as_millisecond())))
            .map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        match s.parse::<When>() {
            Ok(When::At(t)) => t,
            other => panic!("{s}: {other:?}"),
        }
    }

    fn secs(t: SystemTime) -> u64 {
        t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn rfc3339_dates_and_relative_times_parse() {
        assert_eq!(secs(at("2026-11-01T00:00:00Z")), 1_793_491_200);
        assert_eq!(secs(at("2026-11-01T01:00:00+01:00")), 1_793_491_200);
        assert_eq!(secs(at("2026-11-01")), 1_793_491_200);
        assert_eq!("now".parse::<When>(), Ok(When::Now));
        for (s, d) in [
            ("-7d", 7 * 86_400),
            ("-1h", 3600),
            ("-30m", 1800),
            ("-90s", 90),
            ("-2w", 1_209_600),
        ] {
            assert_eq!(
                s.parse::<When>(),
                Ok(When::Ago(Duration::from_secs(d))),
                "{s}"
            );
        }
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(
            When::Ago(Duration::from_secs(3600)).resolve(now),
            SystemTime::UNIX_EPOCH + Duration::from_secs(6400)
        );
        assert_eq!(When::Now.resolve(now), now);
    }

    #[test]
    fn a_bad_time_is_refused_with_its_value_and_the_forms_that_work() {
        for bad in [
            "-7x",
            "yesterday",
            "7d",
            "-d",
            "2026-13-01",
            "2026-11-01T00:00:00",
            "",
        ] {
            let e = bad.parse::<When>().unwrap_err();
            assert!(
                e.starts_with(&format!("{bad:?} is not a time")),
                "{bad}: {e}"
            );
            assert!(e.contains("-7d"), "{e}");
        }
    }
}
