//! The typed channel between the supervisor (root) and the front end.
//!
//! One `AF_UNIX` stream socketpair. A frame is a 4-byte big-endian length and a JSON
//! message; file descriptors (listeners, log files) travel with the frame as
//! `SCM_RIGHTS`, split over several `sendmsg` calls when there are many, and are
//! collected by the reader until the frame is complete. Messages are a closed set:
//! the front end can only ask for what [`ToSupervisor`] names, never "run this".
//!
//! Each side reads on a thread of its own with the blocking [`recv`]. The front
//! end writes with the blocking [`send`]; the supervisor never waits on the front
//! end: it queues frames in an [`Outbox`] and sends them without blocking as the
//! socket drains (invariant 9).

use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::Instant;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

use crate::config::{ClientLimits, Route};

/// Messages from the supervisor to the front end.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToFront {
    /// A new configuration. Fds: one per `listeners` entry, then per `logs`
    /// entry its access log, then per `logs` entry its error log, then berth's
    /// error log.
    Plan(Box<Plan>),
    /// Reopened log files (SIGUSR1). Fds: as for a plan, without the listeners.
    Logs { tenants: Vec<String> },
    /// Stop accepting, finish requests in flight, exit.
    Shutdown,
    /// The answer to [`ToSupervisor::StartProcess`].
    Started {
        req: u64,
        result: Result<AppProcess, StartRefused>,
    },
    /// An app process ended (crashed, retired, or stopped by a reload).
    Exited { app: AppId, slot: u32, why: String },
    /// A process the front end did not ask for is running (kept warm for
    /// `min_processes`, or already running when the front end started).
    Spawned { app: AppId, process: AppProcess },
    /// A process uses more memory than its tenant's `process_memory`: it
    /// takes no more requests and is retired once those it serves have
    /// ended (a new one takes its place).
    Recycle { app: AppId, slot: u32 },
    /// A rolling restart of the app is ready: `started` (processes that
    /// accept connections already) take every new request from now on, and
    /// `retiring` take none and are retired once those they serve have
    /// ended. Applied at once, so no request goes to an old process after
    /// one went to a new one.
    Replace {
        app: AppId,
        started: Vec<AppProcess>,
        retiring: Vec<u32>,
    },
    /// The answer to [`ToSupervisor::RunCgi`]. Fds on success: the script's
    /// stdin (to write), stdout and stderr (to read).
    CgiStarted {
        req: u64,
        result: Result<(), String>,
    },
    /// What the supervisor knows for the status page and the metrics: sent
    /// every `meter_interval` (every 10 s when metering is off) while an
    /// admin listener is configured. A newer one replaces one not sent yet.
    Status(Box<StatusSnapshot>),
}

/// Why the supervisor started no process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StartRefused {
    /// The app already runs `max_processes`, some of which the front end
    /// may not have heard of yet (a process kept warm for `min_processes`
    /// just started: its `Spawned` came before this answer).
    #[error("{0}")]
    Full(String),
    #[error("{0}")]
    Failed(String),
}

/// Names one app of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AppId {
    pub tenant: String,
    pub app: String,
}

impl std::fmt::Display for AppId {
    /// `tenant/app`. Names from the configuration are plain; one that is not
    /// (an id the front end made up, to forge a log line) is written quoted
    /// and escaped.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plain = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        if plain(&self.tenant) && plain(&self.app) {
            write!(f, "{}/{}", self.tenant, self.app)
        } else {
            write!(f, "{:?}/{:?}", self.tenant, self.app)
        }
    }
}

/// A running app process as the front end sees it: where to connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppProcess {
    /// Numbers the app's processes; unique among its live ones.
    pub slot: u32,
    /// Its Unix socket: bound by berth in the directory only the front end's
    /// group may enter, or (`bind = "socket"`) by the app at the path berth
    /// gave it. Empty for `bind = "port"`.
    pub socket: PathBuf,
    /// `bind = "port"`: the app listens on 127.0.0.1 at this port.
    pub port: Option<u16>,
    /// For an app that binds by itself: the uid its listener must belong to,
    /// checked on every new connection before a byte is sent.
    pub owner: Option<u32>,
}

/// Messages from the front end to the supervisor.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToSupervisor {
    /// The plan with this generation is in effect.
    Applied { generation: u64 },
    /// Start one more process of this app (the supervisor checks its own
    /// configuration: the app must exist and have room under `max_processes`).
    StartProcess { req: u64, app: AppId },
    /// Stop this process: it served `max_requests` or was idle too long.
    Retire { app: AppId, slot: u32 },
    /// Run one request of a CGI app. `script` is the file under one of the
    /// tenant's site roots that an extension route chose (None: the app is
    /// mounted and runs its own command). The supervisor checks the script as
    /// suEXEC would (under a site root of the tenant, owned by it, not
    /// writable by others) and passes on only the CGI variables from `env`.
    /// Each tenant's request counts since the last such message (sent
    /// every `meter_interval`; tenants with none are left out).
    Usage {
        tenants: Vec<(String, RequestCounts)>,
    },
    RunCgi {
        req: u64,
        app: AppId,
        script: Option<PathBuf>,
        env: Vec<(String, String)>,
    },
}

/// What one tenant's requests used since the front end last said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    pub requests: u64,
    pub status_2xx: u64,
    pub status_3xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    /// Request body bytes (as declared by Content-Length).
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Requests that waited for one of the tenant's `concurrency` places.
    pub queue_waits: u64,
    /// Requests refused at the tenant's limit (`overflow_status`).
    pub queue_overflows: u64,
}

/// What the front end needs to serve: everything already validated and read by
/// the supervisor, so the front end never opens a configuration file, key or
/// htpasswd file itself.
#[derive(Debug, Serialize, Deserialize)]
pub struct Plan {
    pub generation: u64,
    pub limits: ClientLimits,
    pub listeners: Vec<ListenerSpec>,
    /// Tenant names, in the order of the access-log fds.
    pub logs: Vec<String>,
    /// Each of those tenants' error-log limits, in the same order.
    pub error_logs: Vec<crate::config::ErrorLogLimits>,
    /// Each of those tenants' limits, in the same order (the front end keeps
    /// `concurrency`, `queue`, `queue_timeout` and `overflow_status`).
    pub tenant_limits: Vec<crate::config::Limits>,
    pub sites: Vec<SitePlan>,
    pub apps: Vec<AppPlan>,
    /// Where the front end keeps request and response bodies too large for
    /// memory (unlinked temporary files): a directory only it can write.
    pub tmp_dir: PathBuf,
    /// The host whose site's certificate answers TLS clients without SNI.
    pub default_tls_host: Option<String>,
    /// Lines a second the front end's own log takes (`[server] log_rate`).
    pub log_rate: u32,
    /// How often the front end sends its counts ([`ToSupervisor::Usage`]).
    pub meter_interval: Option<std::time::Duration>,
    /// The admin listener's htpasswd text (`admin_htpasswd`, read by the
    /// supervisor); None: no password is asked.
    pub admin_users: Option<String>,
    /// `[cluster]`; with it, the gossip socket's fd follows the listeners'.
    #[serde(default)]
    pub cluster: Option<crate::farm::ClusterPlan>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ListenerSpec {
    pub addr: SocketAddr,
    pub kind: ListenerKind,
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ListenerKind {
    /// The sites, over plain HTTP (`listen`).
    Plain,
    /// The sites, over TLS (`tls_listen`).
    Tls,
    /// Only berth's status page and metrics, over plain HTTP
    /// (`admin_listen`): no site is served here, and the admin pages
    /// nowhere else.
    Admin,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SitePlan {
    pub tenant: String,
    pub hosts: Vec<String>,
    pub root: PathBuf,
    /// PEM certificate chain and key.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    pub routes: Vec<Route>,
    /// The site's own `max_body`.
    pub max_body: Option<u64>,
    /// A discovered site's owner: its root is opened without following a
    /// symlink and refused unless this uid owns it.
    #[serde(default)]
    pub root_owner: Option<u32>,
    /// The tenant's own configuration files inside the root (its
    /// `own_config`, the site's `berth.toml`): never served.
    #[serde(default)]
    pub private_files: Vec<PathBuf>,
}

/// What the front end knows of an app: how to talk to it and its pool limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppPlan {
    pub id: AppId,
    pub protocol: crate::config::Protocol,
    pub pool: crate::config::Pool,
    /// The program, for SCRIPT_FILENAME on mounted FastCGI apps.
    pub program: PathBuf,
}

/// What the supervisor alone knows of berth now, for the front end's
/// `/status`, `/status.json` and `/metrics` (`front::admin`): the tenants'
/// limits and what their cgroups hold, each app's processes, the recent
/// limit events and 24 hours of usage from the database. Bounded: 24
/// points per tenant, [`EVENTS_KEPT`] events; about 2.5 KB a tenant with
/// two apps of two processes, so 1,000 tenants make a frame of 2.5 MB
/// (`MAX_FRAME` is 64 MiB), encoded off the supervisor's loop
/// ([`Frame::encode`]). The front end treats every string in it as
/// untrusted (escaped in HTML, encoded as label values in metrics).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    /// When the figures were read, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// When the supervisor started.
    pub started_ms: i64,
    /// The cgroup backend: "v2", "v1" or "none".
    pub cgroups: String,
    /// `meter_interval` in seconds; None: metering is off (no database,
    /// no charts).
    pub meter_interval_s: Option<f64>,
    pub tenants: Vec<TenantStatus>,
    /// The most recent limit events, newest first.
    pub events: Vec<LimitEvent>,
}

/// How many limit events a [`StatusSnapshot`] carries at most.
pub const EVENTS_KEPT: usize = 50;

/// One tenant in a [`StatusSnapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantStatus {
    pub name: String,
    pub user: String,
    pub uid: u32,
    pub limits: crate::config::Limits,
    /// What its cgroup (or, without cgroups, its user's processes) holds
    /// now; None when it is not measured.
    pub usage: Option<UsageNow>,
    pub apps: Vec<AppStatus>,
    /// Its hours in the usage database over the last 24 hours, oldest
    /// first; hours without samples are left out (empty when metering is
    /// off).
    pub history: Vec<HourPoint>,
}

/// A tenant's use now, and its limit events since the supervisor started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageNow {
    /// Bytes in use (the working set: less inactive file cache).
    pub memory: u64,
    /// Processes and threads.
    pub tasks: u64,
    /// Cores used over the last interval.
    pub cpu_cores: f64,
    // Counted since the supervisor started:
    pub cpu_seconds: f64,
    pub cpu_throttled_seconds: f64,
    pub oom_kills: u64,
    /// Times it reached its memory limit.
    pub memory_events: u64,
    /// Forks refused at its `tasks`.
    pub tasks_limit_hits: u64,
    /// Processes recycled for `process_memory`.
    pub recycles: u64,
}

/// One app in a [`StatusSnapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppStatus {
    pub name: String,
    pub protocol: crate::config::Protocol,
    pub max_processes: u32,
    /// Bytes its cgroup holds (None without cgroups).
    pub memory: Option<u64>,
    pub processes: Vec<ProcessStatus>,
    /// CGI scripts running now.
    pub cgi_running: u32,
    /// The last thing that went wrong with it (a start refused, a process
    /// that died), and when.
    pub last_problem: Option<(i64, String)>,
}

/// One process of an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessStatus {
    pub slot: u32,
    pub pid: u32,
    pub uid: u32,
    /// Resident bytes (None until the meter has read it).
    pub memory: Option<u64>,
    pub started_ms: i64,
    /// Found above `process_memory`: retired once its requests end.
    pub recycling: bool,
}

/// One hour of a tenant's usage (the samples that end in it). On the
/// channel, an array of its five figures: 24 of them for each of 1,000
/// tenants are most of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(into = "(i64, u64, u64, f64, f64)", from = "(i64, u64, u64, f64, f64)")]
pub struct HourPoint {
    /// The hour's start, milliseconds since the Unix epoch.
    pub hour_ms: i64,
    /// Time-weighted average bytes in use over the covered time.
    pub memory_avg: u64,
    pub memory_peak: u64,
    pub cpu_seconds: f64,
    /// Seconds of the hour the samples cover.
    pub covered_s: f64,
}

impl From<HourPoint> for (i64, u64, u64, f64, f64) {
    fn from(p: HourPoint) -> Self {
        (
            p.hour_ms,
            p.memory_avg,
            p.memory_peak,
            p.cpu_seconds,
            p.covered_s,
        )
    }
}

impl From<(i64, u64, u64, f64, f64)> for HourPoint {
    fn from(
        (hour_ms, memory_avg, memory_peak, cpu_seconds, covered_s): (i64, u64, u64, f64, f64),
    ) -> Self {
        HourPoint {
            hour_ms,
            memory_avg,
            memory_peak,
            cpu_seconds,
            covered_s,
        }
    }
}

/// Something a limit did to a tenant. Repeats of one kind for one tenant
/// and app within a minute are counted in one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitEvent {
    /// The last time it happened (milliseconds since the Unix epoch).
    pub at_ms: i64,
    /// The first time, when `count` is more than one.
    pub first_ms: i64,
    pub count: u64,
    pub tenant: String,
    pub app: Option<String>,
    pub kind: EventKind,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The OOM killer ended a process at the tenant's `memory`.
    OomKill,
    /// The tenant's group reached its `memory` (reclaim, or a kill).
    MemoryLimit,
    /// A fork was refused at the tenant's `tasks`.
    TasksLimit,
    /// A process above `process_memory` was recycled.
    Recycle,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::OomKill => "OOM kill",
            EventKind::MemoryLimit => "memory limit",
            EventKind::TasksLimit => "tasks limit",
            EventKind::Recycle => "recycled",
        }
    }
}

/// Largest frame accepted; a plan for thousands of sites fits easily.
const MAX_FRAME: usize = 64 << 20;
/// Fds per `sendmsg` (the kernel's SCM_MAX_FD is 253).
const FDS_PER_SEND: usize = 200;
/// Most bytes the supervisor keeps waiting for a front end that does not
/// read: one largest frame. Plans and reopened logs replace their unsent
/// predecessors ([`Outbox::push`]), so only the small messages accumulate, and
/// a front end that lets this many pile up is as good as stalled.
pub const OUTBOX_LIMIT: usize = MAX_FRAME;

#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("peer closed the channel")]
    Closed,
    #[error("channel I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad message: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("frame of {0} bytes is too large")]
    TooLarge(usize),
    #[error("control data truncated: file descriptors lost")]
    FdsTruncated,
    #[error("{fds} file descriptors are too many for a frame of {bytes} bytes")]
    TooManyFds { fds: usize, bytes: usize },
    #[error("{queued} bytes are already waiting for the peer (at most {limit})")]
    QueueFull { queued: usize, limit: usize },
}

/// One message, encoded: a 4-byte big-endian length and the JSON.
fn encode<T: Serialize>(msg: &T, fds: usize) -> Result<Vec<u8>, IpcError> {
    // The JSON is written behind room for its length, not copied there.
    let mut frame = Vec::with_capacity(128);
    frame.extend_from_slice(&[0; 4]);
    serde_json::to_writer(&mut frame, msg)?;
    let len = frame.len() - 4;
    if len > MAX_FRAME {
        return Err(IpcError::TooLarge(len));
    }
    frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
    // Every batch of fds needs a byte of its own to ride on.
    if fds.div_ceil(FDS_PER_SEND) > frame.len() {
        return Err(IpcError::TooManyFds {
            fds,
            bytes: frame.len(),
        });
    }
    Ok(frame)
}

/// How far a frame has gone out: bytes sent and batches of fds sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Progress {
    off: usize,
    batches: usize,
}

impl Progress {
    fn started(&self) -> bool {
        self.off > 0
    }
}

/// Sends what the socket takes of `frame` from `at` on, advancing `at`: all of
/// it with blocking `flags`; with `DONTWAIT`, until the socket is full (then
/// `AGAIN`). Each batch of fds rides on the first `sendmsg` of its own slice
/// of the frame, and only on that one: once any byte of it is sent, the kernel
/// has the fds, and a partial send resumes without them. Every batch's slice
/// keeps at least one byte for each batch after it ([`encode`] made sure the
/// frame is long enough).
fn send_some(
    sock: BorrowedFd<'_>,
    frame: &[u8],
    fds: &[BorrowedFd<'_>],
    at: &mut Progress,
    flags: SendFlags,
) -> Result<(), rustix::io::Errno> {
    let batches = fds.len().div_ceil(FDS_PER_SEND);
    let step = frame.len().div_ceil(batches.max(1));
    while at.off < frame.len() {
        let sent = if at.batches < batches {
            let first = at.batches * FDS_PER_SEND;
            let batch = &fds[first..(first + FDS_PER_SEND).min(fds.len())];
            let after = batches - at.batches - 1;
            let end = ((at.batches + 1) * step)
                .min(frame.len() - after)
                .max(at.off + 1);
            let mut space =
                vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(batch.len()))];
            let mut cmsg = SendAncillaryBuffer::new(&mut space);
            cmsg.push(SendAncillaryMessage::ScmRights(batch));
            rustix::net::sendmsg(sock, &[IoSlice::new(&frame[at.off..end])], &mut cmsg, flags)
        } else {
            rustix::net::send(sock, &frame[at.off..], flags)
        };
        match sent {
            Ok(n) => {
                if at.batches < batches {
                    at.batches += 1;
                }
                at.off += n;
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends one message with its fds. Blocking: for the front end, whose
/// requests to the supervisor are small and read at once by the supervisor's
/// reader thread. The supervisor itself never blocks on the front end: it
/// queues in an [`Outbox`].
///
/// Frames of threads sending at the same time must not interleave on the
/// stream (a frame larger than one socket buffer goes out in several pieces),
/// so one frame is sent at a time per process. Only the front end sends this
/// way, on its one channel.
pub fn send<T: Serialize>(
    sock: BorrowedFd<'_>,
    msg: &T,
    fds: &[BorrowedFd<'_>],
) -> Result<(), IpcError> {
    static ONE_FRAME_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let frame = encode(msg, fds.len())?;
    let _sending = ONE_FRAME_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    send_some(
        sock,
        &frame,
        fds,
        &mut Progress::default(),
        SendFlags::NOSIGNAL,
    )
    .map_err(|e| IpcError::Io(e.into()))
}

/// Which messages make an unsent earlier one pointless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A whole configuration with its logs: replaces an unsent older plan
    /// and unsent reopened logs.
    Plan,
    /// Reopened logs: replace unsent older ones.
    Logs,
    /// A status snapshot: replaces an unsent older one.
    Status,
    Other,
}

/// A message to the front end, encoded for an [`Outbox`].
#[derive(Debug)]
pub struct Frame {
    kind: Kind,
    bytes: Vec<u8>,
}

impl Frame {
    /// Encodes `msg`, to go with `fds` descriptors.
    pub fn encode(msg: &ToFront, fds: usize) -> Result<Frame, IpcError> {
        let kind = match msg {
            ToFront::Plan(_) => Kind::Plan,
            ToFront::Logs { .. } => Kind::Logs,
            ToFront::Status(_) => Kind::Status,
            _ => Kind::Other,
        };
        Ok(Frame {
            kind,
            bytes: encode(msg, fds)?,
        })
    }
}

/// One frame waiting in an [`Outbox`], with its fds (kept open until the
/// kernel has them).
struct Queued {
    kind: Kind,
    frame: Vec<u8>,
    fds: Vec<OwnedFd>,
    at: Progress,
}

/// The supervisor's side of the channel to the front end: frames queue here
/// and go out as the socket takes them, with `MSG_DONTWAIT`, so a front end
/// that stops reading never stops the supervisor (invariant 9).
///
/// The queue is bounded ([`OUTBOX_LIMIT`] bytes) and knows how long it has
/// waited without the socket taking a byte ([`Outbox::waiting_since`]); what to
/// do with a front end that is full or stalled is the supervisor's decision.
pub struct Outbox {
    queue: VecDeque<Queued>,
    /// Unsent bytes.
    bytes: usize,
    limit: usize,
    /// When the socket last took a byte, or the queue last became non-empty.
    since: Instant,
}

impl Outbox {
    pub fn new(limit: usize) -> Outbox {
        Outbox {
            queue: VecDeque::new(),
            bytes: 0,
            limit,
            since: Instant::now(),
        }
    }

    /// Queues `msg` with `fds` (sent in one frame, in the order given). A plan
    /// takes the place of an older plan not begun yet and drops reopened logs
    /// not begun yet (it carries the current logs); reopened logs take the
    /// place of older ones not begun yet, and a status snapshot that of an
    /// older one. So however often the configuration is reloaded while the
    /// front end does not read, one plan waits, and one snapshot.
    ///
    /// Refused when the queue would hold more than its limit (a frame always
    /// fits an empty queue).
    pub fn push(&mut self, msg: &ToFront, fds: Vec<OwnedFd>) -> Result<(), IpcError> {
        self.push_frame(Frame::encode(msg, fds.len())?, fds)
    }

    /// [`Outbox::push`] of a message encoded beforehand (on another
    /// thread: a status snapshot of 1,000 tenants takes milliseconds).
    pub fn push_frame(&mut self, frame: Frame, fds: Vec<OwnedFd>) -> Result<(), IpcError> {
        let Frame { kind, bytes: frame } = frame;
        if fds.len().div_ceil(FDS_PER_SEND) > frame.len() {
            return Err(IpcError::TooManyFds {
                fds: fds.len(),
                bytes: frame.len(),
            });
        }
        let unsent = |q: &Queued, k: Kind| q.kind == k && !q.at.started();
        if kind == Kind::Plan {
            let before = self.queue.len();
            self.queue.retain(|q| !unsent(q, Kind::Logs));
            if self.queue.len() != before {
                self.bytes = self.queue.iter().map(|q| q.frame.len() - q.at.off).sum();
            }
        }
        let replaces = self.queue.iter().position(|q| unsent(q, kind));
        let freed = match (kind, replaces) {
            (Kind::Plan | Kind::Logs | Kind::Status, Some(i)) => self.queue[i].frame.len(),
            _ => 0,
        };
        let queued = self.bytes - freed;
        if queued > 0 && queued + frame.len() > self.limit {
            return Err(IpcError::QueueFull {
                queued: self.bytes,
                limit: self.limit,
            });
        }
        if self.queue.is_empty() {
            self.since = Instant::now();
        }
        self.bytes = queued + frame.len();
        let entry = Queued {
            kind,
            frame,
            fds,
            at: Progress::default(),
        };
        match (kind, replaces) {
            (Kind::Plan | Kind::Logs | Kind::Status, Some(i)) => self.queue[i] = entry,
            _ => self.queue.push_back(entry),
        }
        Ok(())
    }

    /// Sends what the socket takes without blocking. `Ok` once the queue is
    /// empty; `WouldBlock` when the socket is full (the rest waits for the
    /// next call); any other error means the channel is broken.
    pub fn flush(&mut self, sock: BorrowedFd<'_>) -> std::io::Result<()> {
        while let Some(front) = self.queue.front_mut() {
            let before = front.at.off;
            let result = send_some(
                sock,
                &front.frame,
                &borrow_all(&front.fds),
                &mut front.at,
                SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
            );
            if front.at.off > before {
                self.bytes -= front.at.off - before;
                self.since = Instant::now();
            }
            result?;
            self.queue.pop_front();
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Unsent bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Since when the queue has waited for the socket to take a byte (None
    /// when nothing waits).
    pub fn waiting_since(&self) -> Option<Instant> {
        (!self.queue.is_empty()).then_some(self.since)
    }
}

/// Receives one message and the fds that came with it. Blocking.
pub fn recv<T: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
) -> Result<(T, Vec<OwnedFd>), IpcError> {
    let mut fds = Vec::new();
    let mut header = [0u8; 4];
    read_exact(sock, &mut header, &mut fds)?;
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(IpcError::TooLarge(len));
    }
    let mut payload = vec![0u8; len];
    read_exact(sock, &mut payload, &mut fds)?;
    Ok((serde_json::from_slice(&payload)?, fds))
}

fn read_exact(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<(), IpcError> {
    let mut off = 0;
    while off < buf.len() {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253))];
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let got = match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut buf[off..])],
            &mut cmsg,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(got) => got,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(std::io::Error::from(e).into()),
        };
        for msg in cmsg.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = msg {
                fds.extend(received);
            }
        }
        if got.flags.contains(ReturnFlags::CTRUNC) {
            return Err(IpcError::FdsTruncated);
        }
        if got.bytes == 0 {
            return Err(IpcError::Closed);
        }
        off += got.bytes;
    }
    Ok(())
}

/// A connected pair of stream sockets, both close-on-exec.
pub fn pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Borrows a list of owned fds for [`send`].
pub fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(AsFd::as_fd).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientLimits;
    use std::io::{Read, Seek, Write};

    #[test]
    fn frames_carry_many_fds_in_order() {
        let (a, b) = pair().unwrap();
        let mut files = Vec::new();
        for i in 0..450 {
            let mut f = tempfile::tempfile().unwrap();
            write!(f, "{i}").unwrap();
            files.push(OwnedFd::from(f));
        }
        let msg = ToFront::Logs {
            tenants: (0..450).map(|i| format!("t{i}")).collect(),
        };
        let (got, fds) = std::thread::scope(|s| {
            s.spawn(|| {
                send(a.as_fd(), &msg, &borrow_all(&files)).unwrap();
            });
            recv::<ToFront>(b.as_fd()).unwrap()
        });
        drop(a);
        let ToFront::Logs { tenants } = got else {
            panic!("wrong message")
        };
        assert_eq!(tenants.len(), 450);
        assert_eq!(fds.len(), 450);
        for (i, fd) in fds.into_iter().enumerate() {
            let mut f = std::fs::File::from(fd);
            f.rewind().unwrap();
            let mut s = String::new();
            f.read_to_string(&mut s).unwrap();
            assert_eq!(s, i.to_string());
        }
        assert!(matches!(recv::<ToFront>(b.as_fd()), Err(IpcError::Closed)));
    }

    fn plan(generation: u64, sites: usize) -> ToFront {
        ToFront::Plan(Box::new(Plan {
            generation,
            limits: ClientLimits::default(),
            listeners: Vec::new(),
            logs: Vec::new(),
            error_logs: Vec::new(),
            tenant_limits: Vec::new(),
            meter_interval: Some(std::time::Duration::from_secs(10)),
            sites: (0..sites)
                .map(|i| SitePlan {
                    tenant: "t".into(),
                    hosts: vec![format!("site{i}.test")],
                    root: "/srv/www".into(),
                    tls: None,
                    routes: Vec::new(),
                    max_body: None,
                    root_owner: None,
                    private_files: Vec::new(),
                })
                .collect(),
            apps: Vec::new(),
            tmp_dir: "/var/lib/berth/tmp".into(),
            default_tls_host: None,
            log_rate: 100,
            admin_users: None,
            cluster: None,
        }))
    }

    /// A file holding `text`, as an fd to pass.
    fn file_with(text: &str) -> OwnedFd {
        let mut f = tempfile::tempfile().unwrap();
        write!(f, "{text}").unwrap();
        OwnedFd::from(f)
    }

    fn text_of(fd: OwnedFd) -> String {
        let mut f = std::fs::File::from(fd);
        f.rewind().unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn outbox_does_not_block_on_a_peer_that_does_not_read() {
        let (a, b) = pair().unwrap();
        rustix::net::sockopt::set_socket_send_buffer_size(&a, 4096).unwrap();
        let mut out = Outbox::new(OUTBOX_LIMIT);
        // Far more than the socket holds: frames of ~40 KB, every other one
        // with 210 fds (two batches). (Few fds in all: the suite may run
        // with a soft limit of 1024.)
        const FRAMES: usize = 3;
        const FDS: usize = 210;
        let app = AppId {
            tenant: "t".into(),
            app: "a".into(),
        };
        for n in 0..FRAMES {
            let filler = format!("frame {n} ").repeat(4000);
            let why = filler.clone();
            let exited = ToFront::Exited {
                app: app.clone(),
                slot: n as u32,
                why,
            };
            out.push(&exited, Vec::new()).unwrap();
            let fds = (0..FDS).map(|i| file_with(&format!("{n}/{i}"))).collect();
            let started = ToFront::Started {
                req: n as u64,
                result: Err(StartRefused::Failed(filler)),
            };
            out.push(&started, fds).unwrap();
        }
        let queued = out.bytes();
        let err = out.flush(a.as_fd()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
        assert!(out.bytes() < queued, "the socket took nothing");
        assert!(out.bytes() > 0);
        assert!(out.waiting_since().is_some());

        // A reader drains; the rest goes out as the socket takes it,
        // partially sent frames resuming where they stopped.
        let reader = std::thread::spawn(move || {
            let mut order = Vec::new();
            for _ in 0..2 * FRAMES {
                let (msg, fds) = recv::<ToFront>(b.as_fd()).unwrap();
                match msg {
                    ToFront::Exited { slot, .. } => {
                        assert!(fds.is_empty());
                        order.push(format!("exited {slot}"));
                    }
                    ToFront::Started { req, .. } => {
                        assert_eq!(fds.len(), FDS);
                        for (i, fd) in fds.into_iter().enumerate() {
                            assert_eq!(text_of(fd), format!("{req}/{i}"));
                        }
                        order.push(format!("started {req}"));
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            order
        });
        while let Err(e) = out.flush(a.as_fd()) {
            assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(out.is_empty());
        assert_eq!(out.bytes(), 0);
        assert_eq!(out.waiting_since(), None);
        let want: Vec<String> = (0..FRAMES)
            .flat_map(|n| [format!("exited {n}"), format!("started {n}")])
            .collect();
        assert_eq!(reader.join().unwrap(), want);
    }

    #[test]
    fn unsent_plans_and_logs_are_replaced_not_queued() {
        let (a, b) = pair().unwrap();
        let mut out = Outbox::new(OUTBOX_LIMIT);
        let logs = |name: &str| ToFront::Logs {
            tenants: vec![name.into()],
        };
        out.push(&plan(1, 10), vec![file_with("plan 1")]).unwrap();
        out.push(&logs("logs 1"), vec![file_with("logs 1")])
            .unwrap();
        out.push(&ToFront::Shutdown, Vec::new()).unwrap();
        out.push(&logs("logs 2"), vec![file_with("logs 2")])
            .unwrap();
        let small = out.bytes();
        for generation in 2..=100 {
            out.push(
                &plan(generation, 10),
                vec![file_with(&format!("plan {generation}"))],
            )
            .unwrap();
        }
        assert!(out.bytes() < small + 200, "{} bytes queued", out.bytes());
        out.flush(a.as_fd()).unwrap();
        drop(a);
        // The newest plan where the first one was; the logs went with it.
        let (msg, fds) = recv::<ToFront>(b.as_fd()).unwrap();
        let ToFront::Plan(p) = msg else {
            panic!("not a plan")
        };
        assert_eq!(p.generation, 100);
        assert_eq!(
            fds.into_iter().map(text_of).collect::<Vec<_>>(),
            ["plan 100"]
        );
        assert!(matches!(
            recv::<ToFront>(b.as_fd()).unwrap().0,
            ToFront::Shutdown
        ));
        assert!(matches!(recv::<ToFront>(b.as_fd()), Err(IpcError::Closed)));
    }

    #[test]
    fn a_plan_partly_sent_is_finished_before_the_next() {
        let (a, b) = pair().unwrap();
        rustix::net::sockopt::set_socket_send_buffer_size(&a, 4096).unwrap();
        let mut out = Outbox::new(OUTBOX_LIMIT);
        out.push(&plan(1, 2000), Vec::new()).unwrap();
        assert!(out.flush(a.as_fd()).is_err());
        out.push(&plan(2, 2000), Vec::new()).unwrap();
        out.push(&plan(3, 2000), Vec::new()).unwrap();
        let reader = std::thread::spawn(move || {
            let mut generations = Vec::new();
            while let Ok((ToFront::Plan(p), _)) = recv::<ToFront>(b.as_fd()) {
                generations.push(p.generation);
            }
            generations
        });
        while out.flush(a.as_fd()).is_err() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(a);
        assert_eq!(reader.join().unwrap(), [1, 3]);
    }

    #[test]
    fn outbox_refuses_what_passes_its_limit() {
        let (a, _b) = pair().unwrap();
        rustix::net::sockopt::set_socket_send_buffer_size(&a, 4096).unwrap();
        let mut out = Outbox::new(100_000);
        // One frame always fits an empty queue, even a large one.
        out.push(&plan(1, 2000), Vec::new()).unwrap();
        let err = out
            .push(
                &ToFront::Exited {
                    app: AppId {
                        tenant: "t".into(),
                        app: "a".into(),
                    },
                    slot: 1,
                    why: "x".repeat(50_000),
                },
                Vec::new(),
            )
            .unwrap_err();
        assert!(
            matches!(err, IpcError::QueueFull { limit: 100_000, .. }),
            "{err}"
        );
        assert!(out.flush(a.as_fd()).is_err());
    }
}
