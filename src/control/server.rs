//! Serves the control socket on a thread of its own, with a single-threaded
//! runtime: the supervisor's event loop never reads from, writes to or
//! waits for a control client.
//!
//! Per connection: the caller's uid and pid from `SO_PEERCRED`; a place
//! among [`MAX_CONNECTIONS`] (and [`MAX_PER_UID`] of one uid; root's are
//! its own, besides the others'), else a refusal at once; one request
//! frame within [`REQUEST_TIMEOUT`] (a length
//! over [`proto::MAX_REQUEST`] is refused before its body is read); the
//! caller looked up (user, `admin_group`) on the blocking pool and
//! authorised ([`auth::decide`]); then the command:
//!
//! - `status`, `stop`, `start`, `restart` and `reload` go to the loop as a
//!   [`Call`] with a oneshot reply, bounded by [`LOOP_TIMEOUT`];
//! - `logs`, `usage` and `check` read files and run on the blocking pool;
//!   `logs --follow` then streams new lines until the client goes, among
//!   at most [`MAX_FOLLOWS`] ([`MAX_FOLLOWS_PER_UID`] of one uid);
//! - `reload` and `check` by a tenant's user come at most once a second
//!   from one uid (each loads the whole configuration).
//!
//! Every reply is written within [`WRITE_TIMEOUT`], and every request ends
//! in one audit line ([`Audit`]), refused ones too.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::audit::{Audit, Outcome};
use super::auth::{self, Grant, Who};
use super::logs::{self, Filter, Follow, Which};
use super::proto::{
    self, Command, DecodeError, LogsReply, MAX_LOG_BYTES, Reply, ReplyFrame, Request, UsageReply,
};
use crate::config::Config;

/// Connections at once, all callers but root together.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections at once of one uid.
pub const MAX_PER_UID: usize = 8;
/// `logs --follow` streams at once, all callers together.
pub const MAX_FOLLOWS: usize = 32;
/// `logs --follow` streams at once of one uid.
pub const MAX_FOLLOWS_PER_UID: usize = 4;
/// A client has this long to send its whole request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A reply frame must be taken within this.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The loop's answer to a call (a reload loads the whole configuration).
pub const LOOP_TIMEOUT: Duration = Duration::from_secs(60);
/// A tenant's user reloads or checks at most once in this.
pub const COOLDOWN: Duration = Duration::from_secs(1);
/// How often a followed log is looked at.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// Threads for blocking work (logs, SQLite, configuration loads).
const BLOCKING_THREADS: usize = 4;
/// `usage` without `--since`: the last 30 days.
const USAGE_DEFAULT: Duration = Duration::from_secs(30 * 86_400);

/// What the control thread knows of the running berth, replaced on reload.
pub struct Context {
    /// The configuration in use.
    pub config: Config,
    /// The main file it was loaded from.
    pub config_path: PathBuf,
    /// The uid berth runs as (an admin when not root).
    pub berth_uid: u32,
}

/// What the supervisor's loop does for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoopOp {
    Status,
    Stop(String),
    Start(String),
    Restart(String),
    Reload,
}

/// A request for the supervisor's loop: authorised, on `tenant`.
pub struct Call {
    pub tenant: String,
    /// By root or an admin (for `reload`: every problem is shown).
    pub admin: bool,
    pub op: LoopOp,
    pub reply: oneshot::Sender<Reply>,
}

/// The control thread. Dropping it stops accepting (connections in
/// flight end with its runtime).
pub struct Server {
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

struct Shared {
    context: Arc<ArcSwap<Context>>,
    calls: mpsc::Sender<Call>,
    audit: Arc<Audit>,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_uid: HashMap<u32, usize>,
    follows: usize,
    follows_per_uid: HashMap<u32, usize>,
    /// When each uid last reloaded or checked (tenants' users only).
    last_load: HashMap<u32, Instant>,
}

impl Shared {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A connection's place (and a follow's), given back when dropped.
struct Place {
    shared: Arc<Shared>,
    uid: u32,
    follow: bool,
}

impl Counts {
    /// Takes a connection's place for `uid`, or says why not. Root is held
    /// to its own [`MAX_PER_UID`] only: any 8 local users can take every
    /// other place (each connection for up to [`REQUEST_TIMEOUT`], again and
    /// again), and must not lock the administrator out.
    fn connect(&mut self, uid: u32) -> Result<(), String> {
        let mine = self.per_uid.get(&uid).copied().unwrap_or(0);
        if mine >= MAX_PER_UID {
            return Err(format!(
                "uid {uid} has {mine} control connections open, the most one uid may have"
            ));
        }
        if self.total >= MAX_CONNECTIONS && uid != 0 {
            return Err(format!(
                "the control socket has {MAX_CONNECTIONS} connections open, the most it takes; try again"
            ));
        }
        self.total += 1;
        *self.per_uid.entry(uid).or_default() += 1;
        Ok(())
    }
}

impl Place {
    fn connection(shared: &Arc<Shared>, uid: u32) -> Result<Place, String> {
        shared.counts().connect(uid)?;
        Ok(Place {
            shared: shared.clone(),
            uid,
            follow: false,
        })
    }

    fn follow(shared: &Arc<Shared>, uid: u32) -> Result<Place, String> {
        let mut c = shared.counts();
        let mine = c.follows_per_uid.get(&uid).copied().unwrap_or(0);
        if mine >= MAX_FOLLOWS_PER_UID {
            return Err(format!(
                "uid {uid} follows {mine} logs already, the most one uid may"
            ));
        }
        if c.follows >= MAX_FOLLOWS {
            return Err(format!(
                "{MAX_FOLLOWS} logs are followed already, the most berth allows; try again later"
            ));
        }
        c.follows += 1;
        *c.follows_per_uid.entry(uid).or_default() += 1;
        Ok(Place {
            shared: shared.clone(),
            uid,
            follow: true,
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut guard = self.shared.counts();
        let c = &mut *guard;
        let (total, per_uid) = if self.follow {
            (&mut c.follows, &mut c.follows_per_uid)
        } else {
            (&mut c.total, &mut c.per_uid)
        };
        *total = total.saturating_sub(1);
        if let Some(n) = per_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                per_uid.remove(&self.uid);
            }
        }
    }
}

/// Serves `listener` on a thread of its own until the returned [`Server`]
/// is dropped: `context` says what berth runs now, `calls` reach the
/// supervisor's loop, `audit` takes a line per request.
pub fn start(
    listener: std::os::unix::net::UnixListener,
    context: Arc<ArcSwap<Context>>,
    calls: mpsc::Sender<Call>,
    audit: Arc<Audit>,
) -> std::io::Result<Server> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name("control-work")
        .build()?;
    let (stop_tx, stop_rx) = oneshot::channel();
    let shared = Arc::new(Shared {
        context,
        calls,
        audit,
        counts: Mutex::new(Counts::default()),
    });
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            runtime.block_on(accept(listener, shared, stop_rx));
            // Blocking work in flight (a log read, SQLite) gets a moment.
            runtime.shutdown_timeout(Duration::from_secs(1));
        })?;
    Ok(Server {
        stop: Some(stop_tx),
    })
}

async fn accept(
    listener: std::os::unix::net::UnixListener,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("control socket: {e}; berth ctl is off");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(shared.clone(), stream));
                }
                Err(e) => {
                    // Out of fds, most likely: wait rather than spin.
                    warn!("control socket: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// One connection, from accept to its last frame.
async fn connection(shared: Arc<Shared>, stream: UnixStream) {
    let Ok(cred) = stream.peer_cred() else {
        return;
    };
    let (uid, pid) = (cred.uid(), cred.pid());
    let (mut rd, mut wr) = stream.into_split();
    let place = match Place::connection(&shared, uid) {
        Ok(place) => place,
        Err(why) => {
            // Not audited: nothing was asked (and a flood of these must
            // cost nothing but the refusal).
            debug!("control connection of uid {uid} refused: {why}");
            let _ = write(&mut wr, Reply::Refused { message: why }).await;
            return;
        }
    };
    let read = tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut rd)).await;
    // Every request that runs has its audit line: past its rate, a uid's
    // request is refused unrun (and counted in its next line).
    if !shared.audit.admit(uid) {
        let message = format!(
            "uid {uid} asks more than {} times a second: refused (try again in a moment)",
            super::audit::RATE
        );
        let _ = write(&mut wr, Reply::Refused { message }).await;
        return;
    }
    let context = shared.context.load_full();
    let group = context.config.server.control.admin_group.clone();
    let berth_uid = context.berth_uid;
    let who =
        tokio::task::spawn_blocking(move || Who::resolve(uid, pid, berth_uid, group.as_deref()))
            .await
            .unwrap_or(Who {
                uid,
                pid,
                user: None,
                admin: None,
            });
    let unreadable = |e: DecodeError| {
        shared
            .audit
            .record(&who, None, "-", &Outcome::Error(e.to_string()));
        e.reply()
    };
    let request = match read {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => {
            let _ = write(&mut wr, unreadable(e)).await;
            return;
        }
        Err(_) => {
            let why = format!("no whole request within {REQUEST_TIMEOUT:?}");
            let _ = write(&mut wr, unreadable(DecodeError::Garbage { why })).await;
            return;
        }
    };
    let command = request.command.describe();
    let admin_group = context.config.server.control.admin_group.as_deref();
    let tenants: Vec<(&str, u32)> = context
        .config
        .tenants
        .iter()
        .filter(|t| t.resolved)
        .map(|t| (t.name.as_str(), t.uid))
        .collect();
    let grant = match auth::decide(&who, request.tenant.as_deref(), &tenants, admin_group) {
        Ok(grant) => grant,
        Err(why) => {
            let tenant = request.tenant.as_deref();
            shared
                .audit
                .record(&who, tenant, &command, &Outcome::Refused(why.clone()));
            let _ = write(&mut wr, Reply::Refused { message: why }).await;
            return;
        }
    };
    let (reply, follow) = run(&shared, &context, &who, &grant, request).await;
    let outcome = match &reply {
        Reply::Refused { message } => Outcome::Refused(message.clone()),
        Reply::Failed { message } => Outcome::Error(message.clone()),
        Reply::Reload(r) | Reply::Check(r) if !r.ok => Outcome::Error(r.message.clone()),
        _ => Outcome::Ok,
    };
    shared
        .audit
        .record(&who, Some(&grant.tenant), &command, &outcome);
    if write(&mut wr, reply).await.is_err() {
        return;
    }
    if let Some((follow, filter, follow_place)) = follow {
        stream_lines(follow, filter, rd, wr).await;
        drop(follow_place);
    }
    drop(place);
}

/// A log being followed, what it keeps, and its place among follows.
type Following = (Follow, Filter, Place);

/// Runs an authorised request: its reply, and for `logs --follow` what to
/// stream after it.
async fn run(
    shared: &Arc<Shared>,
    context: &Arc<Context>,
    who: &Who,
    grant: &Grant,
    request: Request,
) -> (Reply, Option<Following>) {
    let failed = |message: String| Reply::Failed { message };
    let tenant = grant.tenant.clone();
    let reply = match request.command {
        Command::Status => match call(shared, grant, LoopOp::Status).await {
            Reply::Status(mut status) => {
                let filled = tokio::task::spawn_blocking(move || {
                    for p in status.apps.iter_mut().flat_map(|a| a.processes.iter_mut()) {
                        p.state = process_state(p.pid);
                    }
                    status
                })
                .await;
                match filled {
                    Ok(status) => Reply::Status(status),
                    Err(e) => failed(format!("status: {e}")),
                }
            }
            other => other,
        },
        Command::Stop { app } => call(shared, grant, LoopOp::Stop(app)).await,
        Command::Start { app } => call(shared, grant, LoopOp::Start(app)).await,
        Command::Restart { app } => call(shared, grant, LoopOp::Restart(app)).await,
        Command::Reload => match cooldown(shared, who, grant) {
            Err(reply) => reply,
            Ok(()) => call(shared, grant, LoopOp::Reload).await,
        },
        Command::Check => match cooldown(shared, who, grant) {
            Err(reply) => reply,
            Ok(()) => {
                let context = context.clone();
                let admin = grant.admin;
                let work = tokio::task::spawn_blocking(move || {
                    super::check_for(&context.config_path, &context.config, &tenant, admin)
                });
                match work.await {
                    Ok(r) => Reply::Check(r),
                    Err(e) => failed(format!("check: {e}")),
                }
            }
        },
        Command::Usage { since_ms } => {
            let db = context.config.server.state_dir.join(crate::usage::DB_FILE);
            let until = SystemTime::now();
            let since = match since_ms {
                Some(ms) => SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64),
                None => until - USAGE_DEFAULT,
            };
            let query = crate::usage::Query {
                since,
                until,
                tenant: Some(tenant),
                per_app: true,
            };
            let work = tokio::task::spawn_blocking(move || crate::usage::report(&db, &query));
            let ms = crate::usage::to_ms;
            match work.await {
                Ok(Ok(report)) => Reply::Usage(UsageReply {
                    since_ms: ms(report.since),
                    until_ms: ms(report.until),
                    window_seconds: report.window_seconds,
                    rows: report.rows,
                }),
                Ok(Err(e)) => failed(e.to_string()),
                Err(e) => failed(format!("usage: {e}")),
            }
        }
        Command::Logs {
            app,
            follow,
            lines,
            error,
        } => {
            let Some(t) = context.config.tenants.iter().find(|t| t.name == tenant) else {
                return (failed(format!("no tenant {tenant:?}")), None);
            };
            if !t.apps.iter().any(|a| a.name == app) {
                return (failed(no_such_app(t, &app)), None);
            }
            let place = if follow {
                match Place::follow(shared, who.uid) {
                    Ok(p) => Some(p),
                    Err(why) => return (Reply::Refused { message: why }, None),
                }
            } else {
                None
            };
            let which = if error { Which::Error } else { Which::Access };
            let filter = Filter::new(t, &app, which);
            let path = logs::path(&context.config.server.log_dir, &tenant, which);
            let shown = path.display().to_string();
            let work = tokio::task::spawn_blocking(move || {
                let mut file = logs::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let (found, end) = logs::tail(&mut file, lines as usize, MAX_LOG_BYTES, &filter)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok::<_, String>((found, Follow::new(path, file, end), filter))
            });
            match work.await {
                Ok(Ok((found, tail, filter))) => {
                    let reply = Reply::Logs(LogsReply {
                        file: shown,
                        lines: found,
                        follow,
                        note: filter.note().to_string(),
                    });
                    let following = place.map(|p| (tail, filter, p));
                    return (reply, following);
                }
                Ok(Err(why)) => failed(why),
                Err(e) => failed(format!("logs: {e}")),
            }
        }
    };
    (reply, None)
}

/// "tenant T has no app A (its apps: ...)".
pub fn no_such_app(t: &crate::config::Tenant, app: &str) -> String {
    let names: Vec<&str> = t.apps.iter().map(|a| a.name.as_str()).collect();
    format!(
        "tenant {} has no app {app:?} (its apps: {})",
        t.name,
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    )
}

/// A tenant's user reloads or checks at most once a [`COOLDOWN`]: each
/// loads the whole configuration.
fn cooldown(shared: &Shared, who: &Who, grant: &Grant) -> Result<(), Reply> {
    if grant.admin {
        return Ok(());
    }
    let mut c = shared.counts();
    let now = Instant::now();
    if let Some(last) = c.last_load.get(&who.uid)
        && now.duration_since(*last) < COOLDOWN
    {
        return Err(Reply::Refused {
            message: format!(
                "{} reloaded or checked less than {COOLDOWN:?} ago; try again in a moment",
                who.describe()
            ),
        });
    }
    c.last_load
        .retain(|_, at| now.duration_since(*at) < COOLDOWN);
    c.last_load.insert(who.uid, now);
    Ok(())
}

/// Hands `op` to the supervisor's loop and waits for its answer.
async fn call(shared: &Shared, grant: &Grant, op: LoopOp) -> Reply {
    let (tx, rx) = oneshot::channel();
    let msg = Call {
        tenant: grant.tenant.clone(),
        admin: grant.admin,
        op,
        reply: tx,
    };
    let stopping = || Reply::Failed {
        message: "berth is stopping".into(),
    };
    let busy = || Reply::Failed {
        message: format!("berth's supervisor did not answer within {LOOP_TIMEOUT:?}"),
    };
    match tokio::time::timeout(LOOP_TIMEOUT, shared.calls.send(msg)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return stopping(),
        Err(_) => return busy(),
    }
    match tokio::time::timeout(LOOP_TIMEOUT, rx).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => stopping(),
        Err(_) => busy(),
    }
}

/// `logs --follow`: new lines as they come, until the client closes its
/// end (or sends anything), a write times out, or berth stops.
async fn stream_lines(
    mut follow: Follow,
    filter: Filter,
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
) {
    let filter = Arc::new(filter);
    let mut byte = [0u8; 1];
    loop {
        tokio::select! {
            _ = rd.read(&mut byte) => return,
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
        }
        let f = filter.clone();
        let polled = tokio::task::spawn_blocking(move || {
            let lines = follow.poll(&f, MAX_LOG_BYTES);
            (follow, lines)
        })
        .await;
        let lines;
        (follow, lines) = match polled {
            Ok((follow, Ok(lines))) => (follow, lines),
            _ => return,
        };
        if !lines.is_empty() && write(&mut wr, Reply::More { lines }).await.is_err() {
            return;
        }
    }
}

/// Reads one request frame: its header, then (when its length is allowed)
/// its body.
async fn read_request(rd: &mut OwnedReadHalf) -> Result<Request, DecodeError> {
    let mut header = [0u8; 4];
    read_full(rd, &mut header).await?;
    let len = proto::frame_len(header, proto::MAX_REQUEST)?;
    let mut body = vec![0; len];
    read_full(rd, &mut body).await?;
    proto::decode_request(&body)
}

async fn read_full(rd: &mut OwnedReadHalf, buf: &mut [u8]) -> Result<(), DecodeError> {
    let mut got = 0;
    while got < buf.len() {
        match rd.read(&mut buf[got..]).await {
            Ok(0) | Err(_) => {
                return Err(DecodeError::Truncated {
                    got,
                    want: buf.len(),
                });
            }
            Ok(n) => got += n,
        }
    }
    Ok(())
}

/// Writes one reply frame within [`WRITE_TIMEOUT`].
async fn write(wr: &mut OwnedWriteHalf, reply: Reply) -> std::io::Result<()> {
    let frame = proto::encode(&ReplyFrame {
        version: proto::VERSION,
        reply,
    });
    match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&frame)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// What the kernel says a process is doing (`/proc/PID/stat`).
fn process_state(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(") ")?.1.chars().next()?;
    Some(
        match state {
            'R' => "running",
            'S' => "sleeping",
            'D' => "waiting on disk",
            'Z' => "exited, not reaped yet",
            'T' | 't' => "stopped",
            'I' => "idle",
            _ => "other",
        }
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_uids_filling_every_place_do_not_lock_root_out() {
        let mut c = Counts::default();
        for uid in 2000..2008 {
            for _ in 0..MAX_PER_UID {
                c.connect(uid).unwrap();
            }
        }
        assert_eq!(c.total, MAX_CONNECTIONS);
        let e = c.connect(2008).unwrap_err();
        assert!(e.contains("64 connections open"), "{e}");
        for _ in 0..MAX_PER_UID {
            c.connect(0).expect("root has its own places");
        }
        let e = c.connect(0).unwrap_err();
        assert!(e.contains("uid 0 has 8 control connections open"), "{e}");
    }
}
