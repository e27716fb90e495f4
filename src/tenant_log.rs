//! Tenants' error logs: what a tenant's apps write to stderr, on its way to
//! `log_dir/TENANT/error.log`, with limits, so that no tenant can fill the
//! disk or slow the others down (invariant 9).
//!
//! Both processes write there. The front end writes the FastCGI STDERR
//! records and CGI scripts' stderr lines it reads on the request path; the
//! supervisor writes what app processes write to their own fd 1 and 2, a pipe
//! it reads on a thread of its own ([`read_pipe`]). In each process a tenant
//! has one [`TenantLog`], found by name in a registry ([`open`], [`get`]) so
//! that its state outlives reloads and reopenings:
//!
//! - [`TenantLog::line`] never blocks and never touches the disk: it takes a
//!   token from the tenant's bucket (`error_log_rate` lines per second, a
//!   burst of [`BURST_SECONDS`] seconds' worth), formats the line
//!   (`[time] [tenant/app] text`, the text cut at [`MAX_LINE`] bytes) and
//!   appends it to the tenant's queue (at most [`QUEUE_BYTES`]). The text is
//!   escaped ([`escape_into`]): every byte of a control character (C0 but
//!   TAB, DEL, C1, U+2028 and U+2029) and every byte that is not UTF-8 is
//!   written `\xNN`, so that no app can end a line, forge another tenant's
//!   line or drive the terminal of an admin reading the log. A line
//!   without a token or room is counted and dropped. [`Lines`] takes the
//!   tokens for a whole piece of a stream at once, so dropping costs a scan
//!   for newlines, and says when it dropped: the reader then leaves the app's
//!   output unread for [`THROTTLE`] (the supervisor's pipes, FastCGI
//!   connections, CGI stderr), and the app waits in its writes.
//! - One writer thread per process empties the queues into the files. Before
//!   each write it asks the file its size (fstat): the cap is the file's own,
//!   so it holds whichever process writes. A file at `error_log_max` gets one
//!   "error log full; dropping until rotation" line, then nothing until it is
//!   reopened (SIGUSR1) smaller.
//! - Once a second the writer adds "N lines dropped" for every tenant that
//!   lost lines since the last such line (so once dropping stops, its count
//!   is written within a second).
//!
//! The two processes keep separate buckets: a tenant flooding both ways at
//! once gets up to twice its rate (the size cap still holds).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, Once, Weak};
use std::time::{Duration, Instant};

use crate::config::ErrorLogLimits;

/// A line's text is cut at this many bytes.
pub const MAX_LINE: usize = 8 * 1024;
/// Lines a tenant's queue holds for the writer, in bytes.
pub const QUEUE_BYTES: usize = 256 * 1024;
/// The bucket holds this many seconds of `error_log_rate`: a burst (a stack
/// trace, a few warnings at once) passes whole.
pub const BURST_SECONDS: u32 = 5;
/// How often the writer writes the "N lines dropped" lines.
const SUMMARY_EVERY: Duration = Duration::from_secs(1);
/// How long an app's output is left unread once its tenant is over its
/// rate (an app process's pipe here, FastCGI records and CGI stderr in the
/// front end): meanwhile the pipe or socket fills and the app waits in
/// write(2), so a flood costs berth little CPU instead of a core spent
/// reading and dropping.
pub const THROTTLE: Duration = Duration::from_millis(50);

/// One tenant's error log in this process.
pub struct TenantLog {
    tenant: String,
    state: Mutex<State>,
    /// Held from taking the queue to having written it, so that two
    /// flushes (the writer thread's and `flush_all`'s) cannot write their
    /// pieces out of order.
    writing: Mutex<()>,
}

struct State {
    file: Option<Arc<File>>,
    limits: ErrorLogLimits,
    bucket: Bucket,
    /// Formatted lines waiting for the writer.
    queue: Vec<u8>,
    /// Lines dropped since the last summary: over the rate, and for want of
    /// room in the queue (the writer fell behind).
    over_rate: u64,
    backlog: u64,
    /// The file reached `limits.max`: everything is dropped until reopened.
    full: bool,
    /// On the writer's list already.
    scheduled: bool,
}

impl TenantLog {
    /// A log for `tenant`, writing nowhere until [`TenantLog::reopen`].
    pub fn new(tenant: &str, limits: ErrorLogLimits) -> Arc<TenantLog> {
        let log = Arc::new(TenantLog {
            tenant: tenant.to_string(),
            state: Mutex::new(State {
                file: None,
                limits,
                bucket: Bucket::full(burst(limits)),
                queue: Vec::new(),
                over_rate: 0,
                backlog: 0,
                full: false,
                scheduled: false,
            }),
            writing: Mutex::new(()),
        });
        writer().register(&log);
        log
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves nothing half-done that
        // matters for a log.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes to `file` from now on (the log was reopened, perhaps after
    /// rotation): a full log starts taking lines again, unless `file` is
    /// the file it writes already (logs are handed over whole: one
    /// tenant's rotation reopens the others' on their same files).
    pub fn reopen(&self, file: File) {
        let same = |a: &File, b: &File| {
            use std::os::unix::fs::MetadataExt;
            match (a.metadata(), b.metadata()) {
                (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
                _ => false,
            }
        };
        let mut st = self.state();
        let still_full = st.full && st.file.as_deref().is_some_and(|old| same(old, &file));
        st.file = Some(Arc::new(file));
        st.full = still_full;
    }

    /// New limits (a reload); the bucket keeps its tokens, up to the new burst.
    pub fn set_limits(&self, limits: ErrorLogLimits) {
        let mut st = self.state();
        st.limits = limits;
        st.bucket.cap(burst(limits));
    }

    /// Queues one line from `app` (its text without the newline; an empty
    /// one is skipped). Returns false when the line was dropped: over the
    /// rate, no room in the queue, or the file full.
    pub fn line(self: &Arc<Self>, app: &str, text: &[u8]) -> bool {
        let mut budget = Budget::new(self, 1);
        budget.emit(app, text);
        budget.settle() == 0
    }

    /// Takes up to `wanted` tokens from the bucket (none while the file is
    /// full or missing).
    fn grant(&self, wanted: usize) -> usize {
        let mut st = self.state();
        if st.full || st.file.is_none() {
            return 0;
        }
        let (rate, burst) = (f64::from(st.limits.rate), burst(st.limits));
        st.bucket.take(wanted, rate, burst)
    }

    /// Ends a [`Budget`]: puts back the `unused` tokens that
    /// [`TenantLog::grant`] gave, and counts `over_rate` lines dropped for
    /// want of tokens (not while the file is full: its notice says it all).
    fn settle(&self, unused: usize, over_rate: usize) {
        let mut st = self.state();
        if unused > 0 {
            let burst = burst(st.limits);
            st.bucket.give_back(unused, burst);
        }
        if !st.full && st.file.is_some() {
            st.over_rate += over_rate as u64;
        }
    }

    /// Queues a line that has its token. False when there is no room (the
    /// writer fell behind: counted) or the file is full.
    fn queue(self: &Arc<Self>, app: &str, text: &[u8]) -> bool {
        let mut st = self.state();
        if st.full || st.file.is_none() {
            return false;
        }
        let cut = text.len() > MAX_LINE;
        let text = &text[..text.len().min(MAX_LINE)];
        let queue = &mut st.queue;
        let before = queue.len();
        stamp(queue, app);
        escape_into(queue, text);
        if cut {
            queue.extend_from_slice(CUT);
        }
        queue.push(b'\n');
        // (Measured once escaped: escaping can make a line four times longer.)
        if queue.len() > QUEUE_BYTES {
            queue.truncate(before);
            st.backlog += 1;
            return false;
        }
        let schedule = !st.scheduled;
        st.scheduled = true;
        drop(st);
        if schedule {
            writer().schedule(self.clone());
        }
        true
    }

    /// Writes what is queued, as much as the cap allows. Called by the writer
    /// thread (and [`flush_all`]); the lock is not held while writing.
    fn flush(&self) {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let (queue, file, max) = {
            let mut st = self.state();
            st.scheduled = false;
            (
                std::mem::take(&mut st.queue),
                st.file.clone(),
                st.limits.max,
            )
        };
        let Some(file) = file else { return };
        if queue.is_empty() {
            return;
        }
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let room = usize::try_from(max.saturating_sub(size)).unwrap_or(usize::MAX);
        if queue.len() <= room {
            let _ = (&*file).write_all(&queue);
            return;
        }
        // Whole lines up to the cap, then the notice, once.
        let fits = queue[..room]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let _ = (&*file).write_all(&queue[..fits]);
        let mut st = self.state();
        if st.full {
            return;
        }
        st.full = true;
        st.queue.clear();
        drop(st);
        let mut notice = Vec::new();
        stamp(&mut notice, &self.tenant);
        notice.extend_from_slice(
            format!(
                "error log full; dropping until rotation (error_log_max is {})\n",
                crate::config::show_size(max)
            )
            .as_bytes(),
        );
        let _ = (&*file).write_all(&notice);
    }

    /// Queues the "N lines dropped" lines for what was dropped since the last
    /// ones. Returns whether there were any.
    fn summarise(&self) -> bool {
        let mut st = self.state();
        if st.full || st.file.is_none() || st.over_rate + st.backlog == 0 {
            st.over_rate = 0;
            st.backlog = 0;
            return false;
        }
        let (over_rate, backlog, rate) = (st.over_rate, st.backlog, st.limits.rate);
        st.over_rate = 0;
        st.backlog = 0;
        // Past the queue's bound if need be: these lines say what was lost.
        if over_rate > 0 {
            stamp(&mut st.queue, &self.tenant);
            st.queue.extend_from_slice(
                format!(
                    "{over_rate} lines dropped: more than error_log_rate ({rate} lines a second)\n"
                )
                .as_bytes(),
            );
        }
        if backlog > 0 {
            stamp(&mut st.queue, &self.tenant);
            st.queue.extend_from_slice(
                format!("{backlog} lines dropped: the log writer fell behind\n").as_bytes(),
            );
        }
        true
    }
}

/// Appends `text` to `out` with every byte of a control character written
/// `\xNN` (lowercase hex): C0 controls but TAB (NUL, CR, LF, ESC, VT, FF,
/// ...), DEL, the C1 controls as UTF-8 encodes them (U+0080 to U+009F,
/// bytes 0xC2 0x80 to 0xC2 0x9F: NEL, CSI, OSC, ...), the line and
/// paragraph separators U+2028 and U+2029, and every byte that is not part
/// of valid UTF-8 (an 8-bit terminal takes a lone 0x9B for CSI). The rest of
/// UTF-8 passes as it is, and so does `\`. Such a line cannot end itself,
/// look like the start of another, or move an admin's terminal cursor.
pub fn escape_into(out: &mut Vec<u8>, text: &[u8]) {
    fn plain(b: u8) -> bool {
        (0x20..0x7f).contains(&b) || b == b'\t'
    }
    fn hex(out: &mut Vec<u8>, bytes: &[u8]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for &b in bytes {
            out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        }
    }
    if text.iter().all(|&b| plain(b)) {
        out.extend_from_slice(text);
        return;
    }
    for chunk in text.utf8_chunks() {
        for c in chunk.valid().chars() {
            let mut buf = [0u8; 4];
            let bytes = c.encode_utf8(&mut buf).as_bytes();
            let control = match c {
                '\t' => false,
                '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' => true,
                _ => false,
            };
            if control {
                hex(out, bytes);
            } else {
                out.extend_from_slice(bytes);
            }
        }
        hex(out, chunk.invalid());
    }
}

/// What ends a line that was cut at [`MAX_LINE`].
const CUT: &[u8] = b" [line cut]";

/// A token bucket: tokens come at a rate, up to a burst, and each line takes
/// one. The rate and burst are given at each call, so that they can change
/// (a reload) without touching the tokens. Shared with berth's own log
/// ([`crate::logging`]).
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    /// A bucket holding `burst` tokens.
    pub fn full(burst: f64) -> Bucket {
        Bucket {
            tokens: burst,
            refilled: Instant::now(),
        }
    }

    /// Refills for the time since the last call (`rate` a second, up to
    /// `burst`), then takes up to `wanted` whole tokens; returns how many.
    pub fn take(&mut self, wanted: usize, rate: f64, burst: f64) -> usize {
        let now = Instant::now();
        let since = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + since * rate).min(burst);
        self.refilled = now;
        let n = (self.tokens.floor() as usize).min(wanted);
        self.tokens -= n as f64;
        n
    }

    /// Puts back `n` tokens that were taken and not used (up to `burst`).
    pub fn give_back(&mut self, n: usize, burst: f64) {
        self.tokens = (self.tokens + n as f64).min(burst);
    }

    /// Keeps at most `burst` tokens (the burst became smaller).
    pub fn cap(&mut self, burst: f64) {
        self.tokens = self.tokens.min(burst);
    }
}

fn burst(limits: ErrorLogLimits) -> f64 {
    f64::from(limits.rate) * f64::from(BURST_SECONDS)
}

/// `[time] [who] ` at the end of `out`.
fn stamp(out: &mut Vec<u8>, who: &str) {
    out.push(b'[');
    use crate::front::access_log::{coarse_now, push_clf_time};
    push_clf_time(out, coarse_now());
    out.extend_from_slice(b"] [");
    out.extend_from_slice(who.as_bytes());
    out.extend_from_slice(b"] ");
}

fn trim_newline(mut text: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r'] = text {
        text = rest;
    }
    text
}

/// Tokens for the lines of one piece of a stream, taken from the bucket at
/// most once (the first line that needs one takes as many as the piece can
/// hold lines) and settled once ([`TenantLog::settle`]), so that dropping a
/// flood costs a scan for newlines and two locks per piece, not a lock per
/// line.
struct Budget<'a> {
    log: &'a Arc<TenantLog>,
    /// The most lines the piece can hold.
    most: usize,
    left: Option<usize>,
    over_rate: usize,
    not_queued: usize,
}

impl<'a> Budget<'a> {
    fn new(log: &'a Arc<TenantLog>, most: usize) -> Self {
        Budget {
            log,
            most,
            left: None,
            over_rate: 0,
            not_queued: 0,
        }
    }

    fn emit(&mut self, app: &str, text: &[u8]) {
        let text = trim_newline(text);
        if text.is_empty() {
            return;
        }
        let left = self.left.get_or_insert_with(|| self.log.grant(self.most));
        if *left == 0 {
            self.over_rate += 1;
            return;
        }
        *left -= 1;
        if !self.log.queue(app, text) {
            self.not_queued += 1;
        }
    }

    /// Returns unused tokens and counts what was dropped; returns how many
    /// lines were dropped.
    fn settle(self) -> usize {
        let unused = self.left.unwrap_or(0);
        if unused > 0 || self.over_rate > 0 {
            self.log.settle(unused, self.over_rate);
        }
        self.over_rate + self.not_queued
    }
}

/// Splits a stream of bytes (a pipe, FastCGI STDERR records) into lines for
/// one app's log. A line longer than [`MAX_LINE`] is cut and the rest of it
/// skipped; the last line without a newline is written when this is dropped.
pub struct Lines {
    log: Arc<TenantLog>,
    app: String,
    buf: Vec<u8>,
    /// Inside a line that was already cut: skip to its newline.
    skipping: bool,
}

impl Lines {
    pub fn new(log: Arc<TenantLog>, app: String) -> Lines {
        Lines {
            log,
            app,
            buf: Vec::new(),
            skipping: false,
        }
    }

    /// Takes the next bytes of the stream. Returns how many lines were dropped.
    pub fn feed(&mut self, mut bytes: &[u8]) -> usize {
        let ends = bytes.iter().filter(|&&b| b == b'\n').count();
        let mut budget = Budget::new(&self.log, ends + bytes.len() / MAX_LINE + 1);
        while !bytes.is_empty() {
            let (piece, ended) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], Some(i + 1)),
                None => (bytes, None),
            };
            if !self.skipping {
                // One byte past the limit tells `queue` to mark the cut.
                let take = piece.len().min(MAX_LINE + 1 - self.buf.len());
                if ended.is_some() && self.buf.is_empty() && take == piece.len() {
                    budget.emit(&self.app, piece);
                } else {
                    self.buf.extend_from_slice(&piece[..take]);
                    if ended.is_some() || self.buf.len() > MAX_LINE {
                        budget.emit(&self.app, &self.buf);
                        self.buf.clear();
                        self.skipping = ended.is_none();
                    }
                }
            }
            match ended {
                Some(next) => {
                    self.skipping = false;
                    bytes = &bytes[next..];
                }
                None => bytes = &[],
            }
        }
        budget.settle()
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.log.line(&self.app, &self.buf);
        }
    }
}

/// The writer thread: empties the queues of the logs that have lines, and
/// writes the summaries once a second.
struct Writer {
    ready: Mutex<Vec<Arc<TenantLog>>>,
    wake: Condvar,
    every: Mutex<Vec<Weak<TenantLog>>>,
}

static WRITER: LazyLock<Writer> = LazyLock::new(|| Writer {
    ready: Mutex::new(Vec::new()),
    wake: Condvar::new(),
    every: Mutex::new(Vec::new()),
});

/// The writer, started on first use.
fn writer() -> &'static Writer {
    static START: Once = Once::new();
    let w: &'static Writer = &WRITER;
    START.call_once(|| {
        std::thread::Builder::new()
            .name("tenant-logs".into())
            .spawn(move || w.run())
            .expect("cannot start the tenant log writer");
    });
    w
}

impl Writer {
    fn register(&self, log: &Arc<TenantLog>) {
        let mut every = self.every.lock().unwrap_or_else(|e| e.into_inner());
        every.retain(|w| w.strong_count() > 0);
        every.push(Arc::downgrade(log));
    }

    fn schedule(&self, log: Arc<TenantLog>) {
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(log);
        self.wake.notify_one();
    }

    fn run(&self) {
        let mut next_summary = Instant::now() + SUMMARY_EVERY;
        loop {
            let batch = {
                let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
                while ready.is_empty() {
                    let now = Instant::now();
                    if now >= next_summary {
                        break;
                    }
                    ready = self
                        .wake
                        .wait_timeout(ready, next_summary - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                std::mem::take(&mut *ready)
            };
            for log in batch {
                log.flush();
            }
            if Instant::now() >= next_summary {
                next_summary = Instant::now() + SUMMARY_EVERY;
                for log in self.live() {
                    if log.summarise() {
                        log.flush();
                    }
                }
            }
        }
    }

    fn live(&self) -> Vec<Arc<TenantLog>> {
        let every = self.every.lock().unwrap_or_else(|e| e.into_inner());
        every.iter().filter_map(Weak::upgrade).collect()
    }
}

/// Writes everything queued in this process, now (at exit).
pub fn flush_all() {
    for log in writer().live() {
        log.summarise();
        log.flush();
    }
}

/// The tenants' logs of this process, by tenant name.
static LOGS: LazyLock<Mutex<HashMap<String, Arc<TenantLog>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// `tenant`'s log, now writing to `file`: the one this process has (reopened,
/// and given `limits` if any), or a new one (with `limits`, or the defaults).
pub fn open(tenant: &str, file: File, limits: Option<ErrorLogLimits>) -> Arc<TenantLog> {
    let mut logs = LOGS.lock().unwrap_or_else(|e| e.into_inner());
    let log = logs
        .entry(tenant.to_string())
        .or_insert_with(|| TenantLog::new(tenant, limits.unwrap_or_default()))
        .clone();
    drop(logs);
    if let Some(limits) = limits {
        log.set_limits(limits);
    }
    log.reopen(file);
    log
}

/// `tenant`'s log, if [`open`] made one.
pub fn get(tenant: &str) -> Option<Arc<TenantLog>> {
    LOGS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(tenant)
        .cloned()
}

/// Forgets the logs of tenants not in `tenants` (a reload removed them);
/// whoever still holds one writes on until done.
pub fn retain(tenants: &[String]) {
    LOGS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|name, _| tenants.contains(name));
}

/// Reads what an app process writes to its fd 1 and 2 (the other end of
/// `pipe`) into `log` as lines of `app`, until every writer has closed it.
/// Runs on a thread of its own (not the supervisor's loop); while the
/// tenant is over its rate the pipe is left unread for [`THROTTLE`].
pub fn read_pipe(pipe: OwnedFd, log: Arc<TenantLog>, app: String) {
    readers().spawn(async move {
        use tokio::io::AsyncReadExt;
        let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(pipe) else {
            return;
        };
        let mut lines = Lines::new(log, app);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if lines.feed(&buf[..n]) > 0 {
                        tokio::time::sleep(THROTTLE).await;
                    }
                }
            }
        }
    });
}

/// The runtime of the pipe readers: one thread, started on first use.
fn readers() -> &'static tokio::runtime::Handle {
    static READERS: LazyLock<tokio::runtime::Handle> = LazyLock::new(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cannot build the runtime of the app output readers");
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("app-output".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .expect("cannot start the app output readers");
        handle
    });
    &READERS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, max: u64) -> ErrorLogLimits {
        ErrorLogLimits { rate, max }
    }

    /// A log writing to a temporary file; returns the log and the file's path.
    fn log_in(
        dir: &tempfile::TempDir,
        limits: ErrorLogLimits,
    ) -> (Arc<TenantLog>, std::path::PathBuf) {
        let path = dir.path().join("error.log");
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .unwrap();
        let log = TenantLog::new("t", limits);
        log.reopen(file);
        (log, path)
    }

    fn written(path: &std::path::Path) -> String {
        flush_all();
        std::fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn the_bucket_lets_a_burst_through_then_the_rate() {
        let dir = tempfile::tempdir().unwrap();
        let (log, path) = log_in(&dir, limits(10, 1 << 20));
        let passed = (0..200)
            .filter(|i| log.line("t/a", format!("line {i}").as_bytes()))
            .count();
        // The burst (5 s of 10 a second), and perhaps a token that refilled
        // meanwhile.
        assert!((50..=52).contains(&passed), "{passed}");
        let text = written(&path);
        assert!(text.contains("] [t/a] line 0\n"), "{text}");
        assert!(
            text.contains("lines dropped: more than error_log_rate (10 lines a second)"),
            "{text}"
        );
        let dropped: u64 = text
            .lines()
            .filter_map(|l| l.split("] [t] ").nth(1))
            .filter_map(|l| l.split(" ").next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(dropped as usize, 200 - passed, "{text}");
    }

    #[test]
    fn a_full_log_says_so_once_and_takes_lines_again_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let (log, path) = log_in(&dir, limits(1_000_000, 64 << 10));
        let line = [b'x'; 1000];
        for _ in 0..200 {
            log.line("t/a", &line);
            log.flush();
        }
        let text = written(&path);
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size <= (64 << 10) + 200, "{size}");
        assert_eq!(
            text.matches("error log full; dropping until rotation (error_log_max is 64KiB)")
                .count(),
            1
        );
        assert!(!log.line("t/a", b"after"), "dropped while full");
        // Rotated: a new, empty file.
        std::fs::rename(&path, dir.path().join("error.log.1")).unwrap();
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .unwrap();
        log.reopen(file);
        assert!(log.line("t/a", b"after rotation"));
        let text = written(&path);
        assert!(text.ends_with("] [t/a] after rotation\n"), "{text}");
    }

    /// The logs are handed over whole when one of them rotates: a full log
    /// given its same file again stays full (no second notice, no line past
    /// the cap) until it gets a new file.
    #[test]
    fn a_full_log_reopened_on_its_same_file_stays_full() {
        let dir = tempfile::tempdir().unwrap();
        let (log, path) = log_in(&dir, limits(1_000_000, 64 << 10));
        let line = [b'x'; 1000];
        for _ in 0..100 {
            log.line("t/a", &line);
            log.flush();
        }
        let full = "error log full; dropping until rotation";
        let reopen_same = || {
            let file = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            log.reopen(file);
        };
        reopen_same();
        assert!(!log.line("t/a", b"still full"));
        for _ in 0..10 {
            log.line("t/a", &line);
            log.flush();
        }
        let text = written(&path);
        assert_eq!(text.matches(full).count(), 1, "{}", text.len());
        assert!(!text.contains("still full"));
        // A new file: lines again.
        std::fs::rename(&path, dir.path().join("error.log.1")).unwrap();
        reopen_new(&log, &path);
        assert!(log.line("t/a", b"new file"));
        assert!(written(&path).ends_with("] [t/a] new file\n"));
    }

    fn reopen_new(log: &Arc<TenantLog>, path: &std::path::Path) {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(path)
            .unwrap();
        log.reopen(file);
    }

    #[test]
    fn lines_are_split_cut_and_kept_whole_across_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let (log, path) = log_in(&dir, limits(1000, 1 << 20));
        let mut lines = Lines::new(log, "t/a".into());
        lines.feed(b"one\ntw");
        lines.feed(b"o\r\n\nthree");
        let long = vec![b'y'; MAX_LINE * 3];
        lines.feed(b"\n");
        lines.feed(&long);
        lines.feed(b"yyy\nfour\nlast");
        drop(lines);
        let text = written(&path);
        let got: Vec<&str> = text
            .lines()
            .map(|l| l.split("] [t/a] ").nth(1).unwrap())
            .collect();
        let cut = format!("{} [line cut]", "y".repeat(MAX_LINE));
        assert_eq!(got, ["one", "two", "three", cut.as_str(), "four", "last"]);
    }

    /// The finding: only CR was replaced; ESC, NUL, VT, FF, NEL, U+2028 and
    /// OSC sequences went to the file as they came, so `ESC[2K ESC[1G` made a
    /// line show in an admin's terminal as a line of another tenant.
    #[test]
    fn control_characters_in_a_tenants_line_are_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let (log, path) = log_in(&dir, limits(1000, 1 << 20));
        let forged = "\x1b[2K\x1b[1G[01/Jan/2026:00:00:00 +0000] [tb/app] forged";
        let lines: [&[u8]; 7] = [
            forged.as_bytes(),
            b"nul\0 vt\x0b ff\x0c cr\r del\x7f tab\tkept",
            "nel\u{85} csi\u{9b}[31m osc\x1b]0;title\x07 ls\u{2028} ps\u{2029}".as_bytes(),
            "caf\u{e9} \u{2192} \\x1b stays".as_bytes(),
            b"lone \x9b[31m and \xff",
            // A C1 control cut in half by the line's end.
            b"half \xc2",
            b"plain line",
        ];
        for line in lines {
            assert!(log.line("ta/app", line));
        }
        let text = written(&path);
        let got: Vec<&str> = text
            .lines()
            .map(|l| l.split("] [ta/app] ").nth(1).unwrap())
            .collect();
        assert_eq!(
            got,
            [
                r"\x1b[2K\x1b[1G[01/Jan/2026:00:00:00 +0000] [tb/app] forged",
                "nul\\x00 vt\\x0b ff\\x0c cr\\x0d del\\x7f tab\tkept",
                r"nel\xc2\x85 csi\xc2\x9b[31m osc\x1b]0;title\x07 ls\xe2\x80\xa8 ps\xe2\x80\xa9",
                "caf\u{e9} \u{2192} \\x1b stays",
                r"lone \x9b[31m and \xff",
                r"half \xc2",
                "plain line",
            ]
        );
        assert!(
            !text.bytes().any(|b| b < 0x20 && b != b'\n' && b != b'\t'),
            "{text:?}"
        );
    }

    #[test]
    fn a_log_without_a_file_drops_and_the_registry_reuses_logs() {
        let log = TenantLog::new("nowhere", limits(10, 1 << 20));
        assert!(!log.line("nowhere/a", b"lost"));
        let dir = tempfile::tempdir().unwrap();
        let file = || std::fs::File::create(dir.path().join("e.log")).unwrap();
        let a = open("registry-test", file(), Some(limits(7, 1 << 20)));
        let b = open("registry-test", file(), None);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.state().limits.rate, 7, "limits kept when none are given");
        retain(&[]);
        assert!(get("registry-test").is_none());
    }
}
