//! Access logs: one per tenant, Combined Log Format plus the virtual host and
//! the request duration. The last step of the request flow.
//!
//! A line is written when the response body has been sent (or the client went
//! away), so the byte count is what was really sent. The files were opened by
//! the supervisor (as root, `O_NOFOLLOW`); the front end only appends to the fds.
//!
//! Line format (Apache's `%v %h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i" %D`):
//! `alice.test 127.0.0.1 - bob [21/Nov/2026:20:51:49 +0000] "GET / HTTP/1.1" 200 512 "-" "curl/8" 153`
//! with the duration in microseconds. In a farm (`[cluster]`), two more
//! fields: the node that served the request and the node that placed it
//! there (`-` when it came straight from the client): `... 153 node=b from=a`.

use std::cell::RefCell;
use std::fs::File;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::body::Body;
use super::conn::{Activity, Progress};
use super::usage::TenantUsage;

/// What is known of a request when its response starts. Fields are cheap
/// clones of what the request already holds; the line is formatted only when
/// the body is done.
#[derive(Debug)]
pub struct Entry {
    pub vhost: Arc<str>,
    /// The client address, formatted once per connection.
    pub remote: Arc<str>,
    pub user: Option<String>,
    pub time: SystemTime,
    pub started: Instant,
    pub method: Method,
    pub target: Option<PathAndQuery>,
    pub version: Version,
    pub status: u16,
    pub referer: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    /// In a farm: the node that served the request, and the node that
    /// placed it here (if another did).
    pub farm: Option<(Arc<str>, Option<Arc<str>>)>,
}

impl Entry {
    /// Formats the line; `bytes` is the number of body bytes sent.
    pub fn format(&self, bytes: u64) -> Vec<u8> {
        let mut line = Vec::with_capacity(192);
        self.format_into(&mut line, bytes);
        line
    }

    /// Appends the line to `line`.
    fn format_into(&self, line: &mut Vec<u8>, bytes: u64) {
        escape_into(line, self.vhost.as_bytes());
        line.push(b' ');
        line.extend_from_slice(self.remote.as_bytes());
        line.extend_from_slice(b" - ");
        match &self.user {
            Some(u) => escape_into(line, u.as_bytes()),
            None => line.push(b'-'),
        }
        line.extend_from_slice(b" [");
        push_clf_time(line, self.time);
        line.extend_from_slice(b"] \"");
        escape_into(line, self.method.as_str().as_bytes());
        line.push(b' ');
        escape_into(
            line,
            self.target
                .as_ref()
                .map_or(b"/".as_slice(), |t| t.as_str().as_bytes()),
        );
        line.extend_from_slice(match self.version {
            Version::HTTP_09 => b" HTTP/0.9\" ",
            Version::HTTP_10 => b" HTTP/1.0\" ",
            Version::HTTP_11 => b" HTTP/1.1\" ",
            Version::HTTP_2 => b" HTTP/2.0\" ",
            _ => b" HTTP/?\" ",
        });
        let mut num = itoa::Buffer::new();
        line.extend_from_slice(num.format(self.status).as_bytes());
        line.push(b' ');
        if bytes == 0 {
            line.push(b'-');
        } else {
            line.extend_from_slice(num.format(bytes).as_bytes());
        }
        for v in [&self.referer, &self.user_agent] {
            line.extend_from_slice(b" \"");
            match v {
                Some(v) => escape_into(line, v.as_bytes()),
                None => line.push(b'-'),
            }
            line.push(b'"');
        }
        line.push(b' ');
        line.extend_from_slice(num.format(self.started.elapsed().as_micros()).as_bytes());
        if let Some((node, from)) = &self.farm {
            line.extend_from_slice(b" node=");
            escape_into(line, node.as_bytes());
            line.extend_from_slice(b" from=");
            match from {
                Some(from) => escape_into(line, from.as_bytes()),
                None => line.push(b'-'),
            }
        }
        line.push(b'\n');
    }

    /// Appends the line to `file` in one write (O_APPEND keeps lines whole),
    /// formatted in a buffer each thread keeps.
    pub fn write(&self, file: &File, bytes: u64) {
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            self.format_into(&mut line, bytes);
            let _ = (&*file).write_all(&line);
        });
    }
}

/// The wall clock read cheaply (the kernel's last tick, no clock-source read):
/// enough for what has a second's resolution, the log's time and `Date`.
/// (Through libc's vDSO call, which valgrind knows, so the front end can still
/// be measured under callgrind.)
pub fn coarse_now() -> SystemTime {
    use nix::time::{ClockId, clock_gettime};
    match clock_gettime(ClockId::CLOCK_REALTIME_COARSE).map(|t| (t.tv_sec(), t.tv_nsec())) {
        Ok((secs, nanos)) => match (u64::try_from(secs), u32::try_from(nanos)) {
            (Ok(secs), Ok(nanos)) => UNIX_EPOCH + std::time::Duration::new(secs, nanos),
            _ => SystemTime::now(),
        },
        Err(_) => SystemTime::now(),
    }
}

thread_local! {
    /// The line being written, reused (a line per request, one allocation
    /// per thread).
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));

    /// The formatted time of the current second: one format per second, not per request.
    static CLF_TIME: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

/// Escapes quotes, backslashes and bytes outside printable ASCII the way Apache
/// does (`\"`, `\\`, `\xHH`), so a client cannot forge log lines.
fn escape_into(out: &mut Vec<u8>, s: &[u8]) {
    if s.iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.extend_from_slice(s);
        return;
    }
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x20..0x7f => out.push(b),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
}

/// Appends [`clf_time`] of `t` to `out`, formatted once a second per thread
/// (the access log's lines and the tenants' error log stamps), not per line.
pub fn push_clf_time(out: &mut Vec<u8>, t: SystemTime) {
    CLF_TIME.with(|cache| {
        let mut cache = cache.borrow_mut();
        let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if cache.0 != secs || cache.1.is_empty() {
            *cache = (secs, clf_time(t));
        }
        out.extend_from_slice(cache.1.as_bytes());
    });
}

/// `21/Nov/2026:20:51:49 +0000` (always UTC).
pub fn clf_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// What ends a request once its response body has: its access-log line
/// (when its site is known), and the end of the request for its connection.
/// (Plain data, not a boxed closure: no allocation per request.)
pub struct Done {
    pub log: Option<(Arc<File>, Entry)>,
    pub activity: Arc<Activity>,
    /// The site's tenant's counters, the status, the request body's
    /// declared length and when the request began (for the usage database
    /// and the metrics).
    pub usage: Option<(Arc<TenantUsage>, u16, Instant)>,
}

impl Done {
    fn run(self, bytes: u64) {
        if let Some((usage, status, started)) = self.usage {
            usage.record(status, bytes, started.elapsed());
        }
        if let Some((file, entry)) = self.log {
            entry.write(&file, bytes);
        }
        self.activity.end();
    }
}

/// Wraps a response body, counts the bytes sent and runs its [`Done`] exactly
/// once: when the body ends, fails, or is dropped (client gone). With a
/// [`Progress`], tells the connection's watchdog whether the client is due
/// to take the next piece.
pub struct Counted {
    inner: Body,
    bytes: u64,
    done: Option<Done>,
    progress: Option<Arc<Progress>>,
}

impl Counted {
    pub fn new(inner: Body, done: Done, progress: Option<Arc<Progress>>) -> Counted {
        if let Some(p) = &progress
            && !inner.is_end_stream()
        {
            p.waiting();
        }
        Counted {
            inner,
            bytes: 0,
            done: Some(done),
            progress,
        }
    }

    /// Counts bytes sent around the body (by `sendfile`), as if it had sent them.
    pub fn add_sent(&mut self, n: u64) {
        self.bytes += n;
    }

    fn finish(&mut self) {
        if let Some(p) = self.progress.take() {
            p.not_waiting();
        }
        if let Some(done) = self.done.take() {
            done.run(self.bytes);
        }
    }
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.finish();
                } else if let Some(p) = &self.progress {
                    p.waiting();
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => self.finish(),
            Poll::Pending => {
                if let Some(p) = &self.progress {
                    p.not_waiting();
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clf_time_formats_utc() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_795_294_309);
        assert_eq!(clf_time(t), "21/Nov/2026:20:51:49 +0000");
        assert_eq!(clf_time(UNIX_EPOCH), "01/Jan/1970:00:00:00 +0000");
        let leap = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(clf_time(leap), "29/Feb/2000:00:00:00 +0000");
    }

    #[test]
    fn the_cached_time_follows_the_second_asked_for() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_795_294_309);
        let later = t + std::time::Duration::from_millis(1500);
        let mut out = Vec::new();
        for t in [t, t, later, t] {
            out.clear();
            push_clf_time(&mut out, t);
            assert_eq!(out, clf_time(t).as_bytes());
        }
    }

    #[test]
    fn the_coarse_clock_is_the_wall_clock() {
        // Generous: the coarse clock lags by at most one kernel tick (a few ms).
        let (before, coarse) = (SystemTime::now(), coarse_now());
        let gap = before
            .duration_since(coarse)
            .or_else(|e| Ok::<_, ()>(e.duration()))
            .unwrap();
        assert!(gap < std::time::Duration::from_secs(2), "{gap:?}");
    }

    #[test]
    fn lines_cannot_be_forged() {
        let e = Entry {
            vhost: "a.test".into(),
            remote: "127.0.0.1".into(),
            user: Some("bob\"x".into()),
            time: UNIX_EPOCH,
            started: Instant::now(),
            method: Method::GET,
            target: Some(PathAndQuery::from_static("/a%22b?q=x")),
            version: Version::HTTP_11,
            status: 200,
            referer: None,
            user_agent: Some(HeaderValue::from_bytes(b"ua\\\"x\xff").unwrap()),
            farm: None,
        };
        let line = String::from_utf8(e.format(5)).unwrap();
        assert_eq!(line.matches('\n').count(), 1);
        let expected = r#"a.test 127.0.0.1 - bob\"x [01/Jan/1970:00:00:00 +0000] "GET /a%22b?q=x HTTP/1.1" 200 5 "-" "ua\\\"x\xff" "#;
        assert!(line.starts_with(expected), "{line}");
        // In a farm: which node served it, and which placed it there.
        let e = Entry {
            farm: Some(("b".into(), Some("a\nx".into()))),
            ..e
        };
        let line = String::from_utf8(e.format(5)).unwrap();
        assert!(line.ends_with(" node=b from=a\\x0ax\n"), "{line}");
        let e = Entry {
            farm: Some(("b".into(), None)),
            ..e
        };
        let line = String::from_utf8(e.format(5)).unwrap();
        assert!(line.ends_with(" node=b from=-\n"), "{line}");
    }
}
