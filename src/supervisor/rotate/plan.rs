//! The pure part of rotation: what the old files of a log are called, which
//! renames and removals make room for a new file, and when the next
//! daily or weekly rotation comes. No I/O here.
//!
//! A log `base` (`access.log`) has old files `base.1` (plain: a writer that
//! has not switched yet may still add lines to it, as with logrotate's
//! `delaycompress`), then `base.2.gz`, `base.3.gz`, ... up to `log_keep`.
//! A plain `base.N` with N ≥ 2 is one the compressor has not done yet.

use jiff::{ToSpan, ZonedDateTime as Zoned};

use crate::config::Period;

/// Old files of one log are numbered at most this high; a name with a
/// larger number is not one of them.
const MAX_INDEX: u32 = 1_000_000;

/// One old file of a log: `base.N`, or `base.N.gz` once compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Old {
    pub n: u32,
    pub gz: bool,
}

impl Old {
    /// Its file name, for the log `base`.
    pub fn name(self, base: &str) -> String {
        if self.gz {
            format!("{base}.{}.gz", self.n)
        } else {
            format!("{base}.{}", self.n)
        }
    }

    /// Which old file of `base` `name` is, if it is one: `base.N` or
    /// `base.N.gz` with N written plainly (no sign, no leading zero).
    pub fn parse(base: &str, name: &str) -> Option<Old> {
        let rest = name.strip_prefix(base)?.strip_prefix('.')?;
        let (num, gz) = match rest.strip_suffix(".gz") {
            Some(num) => (num, true),
            None => (rest, false),
        };
        if num.is_empty() || num.starts_with('0') || !num.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u32 = num.parse().ok()?;
        (n <= MAX_INDEX).then_some(Old { n, gz })
    }
}

/// One step of a rotation, in the order given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Unlink an old file that would be past `log_keep`.
    Remove(Old),
    /// Rename `base.N[.gz]` to `base.N+1[.gz]`.
    Shift(Old),
    /// Rename `base` to `base.1`; then a new `base` is created.
    Current,
}

/// The steps that rotate a log whose old files are `existing`, keeping
/// `keep` (at least 1) of them: remove those that would be numbered past
/// `keep`, and a plain `base.N` (N ≥ 2) that has its compressed twin
/// (berth stopped between writing `base.N.gz` and unlinking `base.N`); shift
/// the others up by one from the highest down (so every rename goes to a
/// name just freed), then move the current file to `.1` (when there is
/// one: a rotation that stopped half-way left none). Every step's
/// destination is free when it runs, so each rename can refuse to replace
/// anything (`RENAME_NOREPLACE`).
pub fn plan(existing: &[Old], keep: u32, current: bool) -> Vec<Step> {
    let keep = keep.max(1);
    let mut old = existing.to_vec();
    old.sort();
    old.dedup();
    let twin = |o: &Old| !o.gz && o.n >= 2 && old.contains(&Old { n: o.n, gz: true });
    let gone = |o: &Old| o.n >= keep || twin(o);
    let mut steps: Vec<Step> = old
        .iter()
        .filter(|o| gone(o))
        .map(|&o| Step::Remove(o))
        .collect();
    steps.extend(
        old.iter()
            .rev()
            .filter(|o| !gone(o))
            .map(|&o| Step::Shift(o)),
    );
    if current {
        steps.push(Step::Current);
    }
    steps
}

/// The old files after `steps` ran on `existing` (what the tests check
/// plans against).
#[cfg(test)]
pub fn after(existing: &[Old], steps: &[Step]) -> Vec<Old> {
    let mut files: Vec<Old> = existing.to_vec();
    for step in steps {
        match *step {
            Step::Remove(o) => files.retain(|&f| f != o),
            Step::Shift(o) => {
                for f in files.iter_mut().filter(|f| **f == o) {
                    f.n += 1;
                }
            }
            Step::Current => files.push(Old { n: 1, gz: false }),
        }
    }
    files.sort();
    files
}

/// The next daily or weekly rotation after `now`: the next local midnight
/// (for weekly, the one that begins a Monday). Where a time zone skips
/// midnight (a DST change at 00:00), the day begins when its first
/// minute does.
pub fn next_turn(now: &Zoned, period: Period) -> Zoned {
    let today = now.date();
    let days: i64 = match period {
        Period::Daily => 1,
        // Monday is 0: a week from now on a Monday, tomorrow on a Sunday.
        Period::Weekly => 7 - i64::from(today.weekday().to_monday_zero_offset()),
    };
    let day = today.saturating_add(days.days());
    day.to_zoned_datetime(now.time_zone().clone())
        .unwrap_or_else(|_| now.saturating_add(days.days()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(n: u32, gz: bool) -> Old {
        Old { n, gz }
    }

    #[test]
    fn old_file_names_are_read_back_and_nothing_else_is_one() {
        for old in [o(1, false), o(2, true), o(14, true), o(300, false)] {
            assert_eq!(Old::parse("access.log", &old.name("access.log")), Some(old));
        }
        assert_eq!(o(2, true).name("error.log"), "error.log.2.gz");
        for name in [
            "access.log",
            "access.log.",
            "access.log.0",
            "access.log.01",
            "access.log.+1",
            "access.log.1.gz.tmp",
            "access.log.x.gz",
            "access.log.gz",
            "access.log.99999999999",
            "access.logs.1",
            "error.log.1",
            ".access.log.2.gz",
        ] {
            assert_eq!(Old::parse("access.log", name), None, "{name}");
        }
    }

    #[test]
    fn a_rotation_shifts_from_the_top_and_drops_what_passes_keep() {
        let existing = [o(1, false), o(2, true), o(3, true)];
        let steps = plan(&existing, 14, true);
        assert_eq!(
            steps,
            [
                Step::Shift(o(3, true)),
                Step::Shift(o(2, true)),
                Step::Shift(o(1, false)),
                Step::Current
            ]
        );
        assert_eq!(
            after(&existing, &steps),
            [o(1, false), o(2, false), o(3, true), o(4, true)]
        );
        // Full: the oldest goes first, then the rest move up.
        let existing = [o(1, false), o(2, true), o(3, true)];
        let steps = plan(&existing, 3, true);
        assert_eq!(
            steps,
            [
                Step::Remove(o(3, true)),
                Step::Shift(o(2, true)),
                Step::Shift(o(1, false)),
                Step::Current
            ]
        );
        assert_eq!(
            after(&existing, &steps),
            [o(1, false), o(2, false), o(3, true)]
        );
    }

    #[test]
    fn keep_one_leaves_only_the_plain_dot_one() {
        let steps = plan(&[o(1, false)], 1, true);
        assert_eq!(steps, [Step::Remove(o(1, false)), Step::Current]);
        assert_eq!(after(&[o(1, false)], &steps), [o(1, false)]);
        // keep 0 is not a value (config refuses it): taken as 1.
        assert_eq!(plan(&[o(1, false)], 0, true), steps);
    }

    #[test]
    fn leftovers_a_lowered_keep_or_a_crash_left_are_tidied() {
        // log_keep lowered from 30 to 3; a plain .2 and .5 the compressor
        // had not done; a .2 both plain and compressed (stopped between
        // the two steps of finishing).
        let existing = [
            o(1, false),
            o(2, false),
            o(2, true),
            o(5, false),
            o(30, true),
        ];
        let steps = plan(&existing, 3, true);
        assert_eq!(
            steps,
            [
                Step::Remove(o(2, false)),
                Step::Remove(o(5, false)),
                Step::Remove(o(30, true)),
                Step::Shift(o(2, true)),
                Step::Shift(o(1, false)),
                Step::Current
            ]
        );
        let left = after(&existing, &steps);
        assert_eq!(left, [o(1, false), o(2, false), o(3, true)]);
        // A plain .1 is never taken for a twin: writers may still add to it.
        let steps = plan(&[o(1, false), o(1, true)], 5, false);
        assert_eq!(steps, [Step::Shift(o(1, true)), Step::Shift(o(1, false))]);
    }

    #[test]
    fn a_rotation_that_stopped_half_way_goes_on_without_a_current_file() {
        // .1 was shifted to .2, then the process died before the current
        // file was moved: a missing current file is no step.
        let steps = plan(&[o(2, false)], 5, false);
        assert_eq!(steps, [Step::Shift(o(2, false))]);
        assert_eq!(after(&[o(2, false)], &steps), [o(3, false)]);
        assert_eq!(plan(&[], 5, true), [Step::Current]);
    }

    fn zoned(s: &str) -> Zoned {
        s.parse().unwrap()
    }

    #[test]
    fn daily_turns_at_the_next_local_midnight() {
        let now = zoned("2026-11-21T23:59:59+01:00[Europe/Paris]");
        assert_eq!(
            next_turn(&now, Period::Daily).to_string(),
            "2026-11-22T00:00:00+01:00[Europe/Paris]"
        );
        // Exactly at midnight: that day's rotation is the one being done;
        // the next is a day later.
        let now = zoned("2026-11-22T00:00:00+01:00[Europe/Paris]");
        assert_eq!(
            next_turn(&now, Period::Daily).to_string(),
            "2026-11-23T00:00:00+01:00[Europe/Paris]"
        );
        // A year's end and a leap day.
        let now = zoned("2028-02-28T12:00:00-05:00[America/New_York]");
        assert_eq!(
            next_turn(&now, Period::Daily).to_string(),
            "2028-02-29T00:00:00-05:00[America/New_York]"
        );
        let now = zoned("2026-12-31T18:00:00+00:00[UTC]");
        assert_eq!(
            next_turn(&now, Period::Daily).to_string(),
            "2027-01-01T00:00:00+00:00[UTC]"
        );
    }

    #[test]
    fn daylight_saving_changes_move_midnight_not_the_day() {
        // Spring forward in Paris (02:00 → 03:00): midnight is 23 hours
        // after the one before.
        let now = zoned("2026-03-28T10:00:00+01:00[Europe/Paris]");
        let turn = next_turn(&now, Period::Daily);
        assert_eq!(turn.to_string(), "2026-03-29T00:00:00+01:00[Europe/Paris]");
        let next = next_turn(&turn, Period::Daily);
        assert_eq!(next.to_string(), "2026-03-30T00:00:00+02:00[Europe/Paris]");
        assert_eq!(
            next.timestamp().as_second() - turn.timestamp().as_second(),
            23 * 3600
        );
        // A zone whose clocks skip from 00:00 to 01:00 (Sao Paulo's rule
        // until 2019, as a POSIX TZ string): the day begins at 01:00.
        let tz = jiff::tz::TimeZone::posix("<-03>3<-02>,M11.1.0/0,M2.3.0/0").unwrap();
        let now = jiff::civil::date(2018, 11, 3)
            .at(20, 0, 0, 0)
            .to_zoned_datetime(tz)
            .unwrap();
        let turn = next_turn(&now, Period::Daily);
        assert_eq!(
            turn.datetime(),
            jiff::civil::date(2018, 11, 4).at(1, 0, 0, 0)
        );
    }

    #[test]
    fn weekly_turns_at_the_midnight_that_begins_a_monday() {
        // 2026-11-21 is a Saturday.
        let cases = [
            (
                "2026-11-21T15:00:00+00:00[UTC]",
                "2026-11-23T00:00:00+00:00[UTC]",
            ),
            (
                "2026-11-22T23:59:59+00:00[UTC]",
                "2026-11-23T00:00:00+00:00[UTC]",
            ),
            (
                "2026-11-23T00:00:00+00:00[UTC]",
                "2026-11-30T00:00:00+00:00[UTC]",
            ),
            (
                "2026-11-23T09:00:00+00:00[UTC]",
                "2026-11-30T00:00:00+00:00[UTC]",
            ),
            (
                "2026-11-27T09:00:00+00:00[UTC]",
                "2026-11-30T00:00:00+00:00[UTC]",
            ),
        ];
        for (now, want) in cases {
            let turn = next_turn(&zoned(now), Period::Weekly);
            assert_eq!(turn.to_string(), want, "{now}");
            assert_eq!(turn.weekday(), jiff::civil::Weekday::Monday);
        }
    }
}
