//! The audit log, `log_dir/audit.log`: one line per control request,
//! refused ones too. The supervisor opens the file as it opens its other
//! logs (never through a symlink; root's, mode 0600, or 0640 with
//! `admin_group` as its group) and hands it here ([`Audit::set_file`]).
//!
//! A line: `TIME uid=N user="NAME" pid=N role=ROLE tenant="T" command="..."
//! result=ok|refused|error why="..."`. Every value a caller chose (names,
//! messages quoting them) is quoted and escaped, so no caller can end a line
//! or forge one. Any local user can connect, so each uid is held to
//! [`RATE`] requests a second (a burst of [`BURST`], [`Audit::admit`]):
//! past it, a request is refused without being run, counted, and the count
//! is written with that uid's next line. So every request that ran has its
//! line, and a hostile user can cost the disk little and never hides
//! another's lines.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::tenant_log::Bucket;

use super::auth::Who;

/// Lines a second per uid, sustained.
pub const RATE: f64 = 5.0;
/// Lines a uid may write at once.
pub const BURST: f64 = 100.0;

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Refused(String),
    Error(String),
}

/// The audit log of this berth.
#[derive(Default)]
pub struct Audit {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    file: Option<File>,
    /// Each uid's bucket, the lines it lost since its last line, and when
    /// it last asked.
    uids: HashMap<u32, (Bucket, u64, Instant)>,
}

impl Audit {
    /// Writes to `file` from now on (at start, on reload and on SIGUSR1).
    pub fn set_file(&self, file: File) {
        self.lock().file = Some(file);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a request of `uid` may go on (and have its line): false past
    /// [`RATE`] a second, when it is refused unrun and counted.
    pub fn admit(&self, uid: u32) -> bool {
        let mut st = self.lock();
        let (bucket, lost, last) = st
            .uids
            .entry(uid)
            .or_insert_with(|| (Bucket::full(BURST), 0, Instant::now()));
        *last = Instant::now();
        if bucket.take(1, RATE, BURST) == 0 {
            *lost += 1;
            return false;
        }
        true
    }

    /// Writes the line of one request [`Audit::admit`] let through: by
    /// `who`, on `tenant` (the one named or implied, when known), `command`
    /// as `berth ctl` was given it, and how it ended; before it, how many
    /// of `who`'s were refused since its last line.
    pub fn record(&self, who: &Who, tenant: Option<&str>, command: &str, outcome: &Outcome) {
        let mut st = self.lock();
        let lost = st
            .uids
            .get_mut(&who.uid)
            .map_or(0, |(_, lost, _)| std::mem::take(lost));
        let mut text = String::new();
        let now = stamp(SystemTime::now());
        if lost > 0 {
            text.push_str(&format!(
                "{now} uid={} refused={lost} why=\"more than {RATE} requests a second from this uid: refused unrun\"\n",
                who.uid
            ));
        }
        text.push_str(&line(&now, who, tenant, command, outcome));
        text.push('\n');
        if let Some(file) = &mut st.file {
            // One write per line: O_APPEND keeps lines whole.
            if let Err(e) = file.write_all(text.as_bytes()) {
                tracing::error!("audit log: {e}");
            }
        }
        // Uids whose bucket is full again are forgotten: the map holds the
        // uids active now, not every uid that ever connected.
        if st.uids.len() > 1024 {
            let refill = Duration::from_secs_f64(BURST / RATE);
            st.uids
                .retain(|_, (_, lost, last)| *lost > 0 || last.elapsed() < refill);
        }
    }
}

/// `2026-12-01T20:02:52.690Z`: UTC, always milliseconds, so lines align.
fn stamp(t: SystemTime) -> String {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(ts) => ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        Err(_) => format!("{ms}ms"),
    }
}

/// One line, without its newline.
pub fn line(
    now: &str,
    who: &Who,
    tenant: Option<&str>,
    command: &str,
    outcome: &Outcome,
) -> String {
    let pid = who.pid.map_or_else(|| "?".to_string(), |p| p.to_string());
    let user = who.user.as_deref().map_or_else(|| "?".to_string(), quote);
    let mut s = format!(
        "{now} uid={} user={user} pid={pid} role={} tenant={} command={}",
        who.uid,
        quote(&who.role(tenant.is_some())),
        tenant.map_or_else(|| "-".to_string(), quote),
        quote(command),
    );
    match outcome {
        Outcome::Ok => s.push_str(" result=ok"),
        Outcome::Refused(why) => s.push_str(&format!(" result=refused why={}", quote(why))),
        Outcome::Error(why) => s.push_str(&format!(" result=error why={}", quote(why))),
    }
    s
}

/// The most bytes of one value a line carries. Names are at most 256
/// bytes; a longer value is a message quoting what a caller sent (a 64 KiB
/// request's unknown field): past this it is counted, not written, so no
/// caller, whoever it is, writes more than a few KiB a line.
pub const MAX_VALUE: usize = 512;

/// `text` in double quotes: `"` and `\` escaped with a backslash, control
/// characters (and bytes that were not UTF-8, as U+FFFD's) as `\xNN`; cut
/// at [`MAX_VALUE`] bytes, saying how many more there were.
pub fn quote(text: &str) -> String {
    let cut = text.floor_char_boundary(MAX_VALUE);
    let mut out = String::with_capacity(cut + 2);
    out.push('"');
    for c in text[..cut].chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
            c => out.push(c),
        }
    }
    if cut < text.len() {
        out.push_str(&format!("...({} more bytes)", text.len() - cut));
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::auth::Admin;

    fn who(uid: u32) -> Who {
        Who {
            uid,
            pid: Some(42),
            user: Some("alice".into()),
            admin: None,
        }
    }

    #[test]
    fn a_line_says_who_what_on_which_tenant_and_how_it_ended() {
        let l = line(
            "T",
            &who(1001),
            Some("alice"),
            "stop php",
            &Outcome::Refused("nope".into()),
        );
        assert_eq!(
            l,
            r#"T uid=1001 user="alice" pid=42 role="tenant" tenant="alice" command="stop php" result=refused why="nope""#
        );
        let root = Who {
            uid: 0,
            pid: None,
            user: None,
            admin: Some(Admin::Root),
        };
        let l = line("T", &root, None, "status", &Outcome::Ok);
        assert_eq!(
            l,
            r#"T uid=0 user=? pid=? role="root" tenant=- command="status" result=ok"#
        );
    }

    #[test]
    fn times_are_utc_with_milliseconds_always() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_155_372_690);
        assert_eq!(stamp(t), "2026-12-01T20:02:52.690Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_155_372);
        assert_eq!(stamp(t), "2026-12-01T20:02:52.000Z");
    }

    #[test]
    fn names_a_caller_chose_cannot_forge_a_line() {
        let forged = "php\" result=ok\n2026-01-01 uid=0 user=\"root\u{1b}[2J\\";
        let l = line(
            "T",
            &who(1001),
            None,
            &format!("stop {forged}"),
            &Outcome::Ok,
        );
        assert!(!l.contains('\n') && !l.contains('\u{1b}'), "{l}");
        assert!(l.ends_with(" result=ok"));
        assert!(
            l.contains(
                r#"command="stop php\" result=ok\x0a2026-01-01 uid=0 user=\"root\x1b[2J\\""#
            ),
            "{l}"
        );
    }

    #[test]
    fn a_long_value_is_cut_so_no_caller_writes_a_huge_line() {
        let long = format!("{}\u{e9}{}", "k".repeat(MAX_VALUE - 1), "k".repeat(60_000));
        let l = line("T", &who(1001), None, "-", &Outcome::Error(long));
        assert!(l.len() < 1024, "{} bytes", l.len());
        assert!(l.ends_with(r#"k...(60002 more bytes)""#), "{l}");
    }

    #[test]
    fn a_flooding_uid_is_refused_and_counted_and_others_still_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let audit = Audit::default();
        audit.set_file(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap(),
        );
        for _ in 0..1000 {
            if audit.admit(2000) {
                audit.record(&who(2000), None, "status", &Outcome::Refused("no".into()));
            }
        }
        assert!(audit.admit(1001));
        audit.record(&who(1001), Some("alice"), "status", &Outcome::Ok);
        let text = std::fs::read_to_string(&path).unwrap();
        let flood = text.lines().filter(|l| l.contains("uid=2000")).count();
        assert!(
            (BURST as usize..BURST as usize + 20).contains(&flood),
            "{flood} lines of 1000 written"
        );
        assert_eq!(text.lines().filter(|l| l.contains("uid=1001")).count(), 1);
        // Once it may write again, what it lost is said.
        std::thread::sleep(std::time::Duration::from_millis(400));
        assert!(audit.admit(2000));
        audit.record(&who(2000), None, "status", &Outcome::Ok);
        let text = std::fs::read_to_string(&path).unwrap();
        let dropped = text
            .lines()
            .find_map(|l| l.split("refused=").nth(1))
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse::<usize>().ok())
            .expect("a dropped= line");
        assert_eq!(dropped + flood, 1000);
    }
}
