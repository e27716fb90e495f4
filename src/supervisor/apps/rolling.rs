//! Rolling restarts: an app's processes replaced by new ones without a
//! request failing (Passenger's rolling restart and its "resist deployment
//! errors").
//!
//! Asked for by `berth ctl restart` ([`AppManager::restart`]), by a reload
//! that changed what the app runs ([`AppManager::update`]: `command`, `dir`,
//! `env`, the tenant's user or home), or by a touched program or
//! `tmp/restart.txt` ([`super::touch`]). The flow:
//!
//! 1. [`AppManager::begin_rollout`] starts as many new processes as take
//!    requests now (at least `min_processes`, at most `max_processes`) from
//!    the program configured. The front end hears nothing of them yet.
//! 2. A thread ([`await_ready`]) waits until each accepts connections: for a
//!    socket berth bound, the supervisor keeps a copy of the listener,
//!    connects to it and waits until the app has taken that connection off
//!    the listen queue (the listener no longer polls readable), so the app
//!    is in its accept loop; for one the app binds itself, until a
//!    connection succeeds. It wakes the loop ([`AppManager::waker`]), which
//!    never waits: [`AppManager::roll`] looks at where each rollout is.
//! 3. All ready within `start_timeout`: one [`ToFront::Replace`] makes the
//!    front end give every new request to the new processes and none to the
//!    old ones, which it retires as their requests end (`ToSupervisor::Retire`,
//!    then SIGTERM and SIGKILL after a grace). An old process still serving
//!    `stop_timeout` later is stopped all the same.
//! 4. A new process that exits, cannot be started, or does not accept within
//!    `start_timeout` fails the restart: the new ones are stopped, the old ones
//!    go on serving as if nothing happened, and the failure goes to berth's
//!    log, the tenant's error log, the app's `last_problem` (status page) and
//!    whoever asked. A reload's new definition stays pending: the processes
//!    started on demand run the old one until a restart to it succeeds.
//!
//! A restart asked for while one is under way is coalesced: one more follows
//! the current one (whatever its outcome), for every caller who asked
//! meanwhile, so the processes end up running what was on disk and in the
//! configuration at the last request. A CGI app has no resident processes:
//! a restart is a no-op that says so.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot};
use tracing::{info, warn};

use super::{AppManager, AppState, Proc, finish, oom_check, same_program, stop};
use crate::config::{App, Limits, Protocol};
use crate::ipc::{AppId, AppProcess, ToFront};

/// What a restart came to, for whoever asked (`berth ctl restart`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartOutcome {
    /// `started` new processes take the requests; `retiring` old ones finish
    /// theirs (within `stop_timeout`).
    Done { started: u32, retiring: u32 },
    /// Nothing needed restarting, and why (a CGI app; no process running).
    Nothing(String),
    /// The new processes did not start; the old ones keep serving.
    Failed(String),
}

impl std::fmt::Display for RestartOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestartOutcome::Done { started, retiring } => write!(
                f,
                "restarted: {started} new process(es) serve, {retiring} old one(s) finish their requests"
            ),
            RestartOutcome::Nothing(why) => write!(f, "nothing to restart: {why}"),
            RestartOutcome::Failed(why) => write!(f, "restart failed: {why}"),
        }
    }
}

/// Which program a process is started from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Run {
    /// The one the app's processes run now (a start the front end asked for).
    Serving,
    /// The one configured, for a rolling restart: a reload's new definition
    /// if there is one.
    Rollout,
}

/// What an app's processes run: its definition and its tenant's identity.
#[derive(Debug, Clone)]
pub(super) struct Program {
    pub app: App,
    pub user: String,
    pub uid: u32,
    pub home: PathBuf,
}

impl Program {
    /// Whether processes of `self` and `other` run the same thing.
    pub fn same(&self, other: &Program) -> bool {
        same_program(&self.app, &other.app)
            && self.user == other.user
            && self.uid == other.uid
            && self.home == other.home
    }
}

/// How the supervisor tells that a new process accepts connections.
pub(super) enum Probe {
    /// berth bound its socket: a copy of the listener, and where to connect.
    Listener { listener: OwnedFd, path: PathBuf },
    /// The app binds the Unix socket at `path` itself, as `uid`; the
    /// supervisor opens it to the front end's group (`front_gid`).
    Socket {
        path: PathBuf,
        uid: u32,
        front_gid: Option<u32>,
    },
    /// The app binds 127.0.0.1:port itself.
    Port(u16),
}

/// How often the readiness thread looks again.
const PROBE_EVERY: Duration = Duration::from_millis(10);

impl Probe {
    /// Whether the process accepts connections now. `conn` keeps the probe's
    /// connection between calls.
    fn ready(&self, conn: &mut Option<UnixStream>) -> bool {
        match self {
            Probe::Listener { listener, path } => {
                if conn.is_none() {
                    *conn = UnixStream::connect(path).ok();
                }
                // Connected (the kernel queued it), and no longer queued:
                // the app accepted it.
                conn.is_some() && !readable(listener)
            }
            Probe::Socket {
                path,
                uid,
                front_gid,
            } => {
                *conn = self_bound_ready(path, *uid, *front_gid);
                conn.is_some()
            }
            Probe::Port(port) => {
                let to = std::net::SocketAddr::from(([127, 0, 0, 1], *port));
                std::net::TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_ok()
            }
        }
    }
}

/// Whether a listening socket has a connection waiting to be accepted.
fn readable(listener: &OwnedFd) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(listener, PollFlags::IN)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match rustix::event::poll(&mut fds, Some(&now)) {
        Ok(n) => n > 0 && fds[0].revents().contains(PollFlags::IN),
        // Cannot tell: not ready (the deadline decides).
        Err(_) => true,
    }
}

/// Whether the socket an app bound at `path` accepts a connection. It lies
/// in a directory of the tenant's, so it is reached without following a
/// symlink and must be a socket of `uid` (root connects to nothing else the
/// tenant points at), opened to the front end's group already.
fn self_bound_ready(
    path: &std::path::Path,
    uid: u32,
    front_gid: Option<u32>,
) -> Option<UnixStream> {
    use rustix::fs::{FileType, Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Socket || st.st_uid != uid {
        return None;
    }
    if front_gid.is_some_and(|gid| st.st_gid != gid || st.st_mode & 0o060 != 0o060) {
        return None;
    }
    // Through the descriptor: the very socket checked above.
    UnixStream::connect(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()
}

/// How long a probe's connection is kept, half-closed, for the app to
/// answer it: an app that writes an error to a connection that sent
/// nothing must not find it closed (a Unix socket's closed peer is EPIPE,
/// and SIGPIPE ends an app that does not ignore it).
const PROBE_DRAIN: Duration = Duration::from_secs(5);

/// Ends a probe's connection politely: no more from us (the app reads the
/// end of it), and what the app writes back is read and dropped until it
/// closes or [`PROBE_DRAIN`] passes.
fn half_close(conn: UnixStream) -> Option<(UnixStream, Instant)> {
    conn.shutdown(std::net::Shutdown::Write).ok()?;
    conn.set_nonblocking(true).ok()?;
    Some((conn, Instant::now() + PROBE_DRAIN))
}

/// Reads what the app wrote to the half-closed probe connections; keeps
/// those it has not closed yet, until their time is up.
fn drain(draining: &mut Vec<(UnixStream, Instant)>) {
    use std::io::Read;
    let mut buf = [0u8; 4096];
    draining.retain_mut(|(conn, until)| {
        loop {
            match conn.read(&mut buf) {
                Ok(0) => return false,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return false,
            }
        }
        Instant::now() < *until
    });
}

/// Waits, on a thread of its own, until each process of `probes` accepts
/// connections, sending its slot to `ready` and waking the loop; gives up at
/// `deadline` or when `cancel` is set (the loop decides what that means).
fn await_ready(
    probes: Vec<(u32, Probe)>,
    deadline: Instant,
    cancel: Arc<AtomicBool>,
    ready: mpsc::Sender<u32>,
    wake: Arc<Notify>,
) {
    let mut pending: Vec<(u32, Probe, Option<UnixStream>)> = probes
        .into_iter()
        .map(|(slot, p)| (slot, p, None))
        .collect();
    let mut draining = Vec::new();
    while !pending.is_empty() {
        if cancel.load(Ordering::Relaxed) || Instant::now() >= deadline {
            break;
        }
        let before = pending.len();
        pending.retain_mut(|(slot, probe, conn)| {
            if !probe.ready(conn) {
                return true;
            }
            draining.extend(conn.take().and_then(half_close));
            let _ = ready.send(*slot);
            false
        });
        if pending.len() < before {
            wake.notify_one();
        }
        drain(&mut draining);
        if !pending.is_empty() {
            std::thread::sleep(PROBE_EVERY);
        }
    }
    // At the deadline the loop is woken to say so.
    wake.notify_one();
    while !draining.is_empty() {
        std::thread::sleep(PROBE_EVERY);
        drain(&mut draining);
    }
}

/// Restarts asked for while one is under way: one more follows it.
struct Queued {
    cause: String,
    waiters: Vec<oneshot::Sender<RestartOutcome>>,
}

/// A rolling restart under way.
pub(super) struct Rollout {
    /// What the new processes run.
    pub program: Program,
    cause: String,
    /// The new processes, not announced to the front end yet.
    pub procs: BTreeMap<u32, Proc>,
    ready: BTreeSet<u32>,
    readiness: mpsc::Receiver<u32>,
    /// Tells the readiness thread to give up.
    cancel: Arc<AtomicBool>,
    deadline: Instant,
    start_timeout: Duration,
    /// Why it failed, once a new process has exited.
    failed: Option<String>,
    waiters: Vec<oneshot::Sender<RestartOutcome>>,
    queued: Option<Queued>,
}

impl Rollout {
    /// Collects new processes that exited: the restart has failed (said by
    /// [`AppManager::roll`]). Returns whether one did.
    pub fn reap(&mut self, id: &AppId, limits: &Limits) -> bool {
        let dead: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, p)| p.leader.exited())
            .map(|(slot, _)| *slot)
            .collect();
        for &slot in &dead {
            let Some(proc) = self.procs.remove(&slot) else {
                continue;
            };
            let status = proc.leader.kill_and_reap();
            let what = format!("new process {slot}");
            oom_check(status, id, proc.group.as_ref(), &what, limits);
            finish(proc.group);
            let _ = std::fs::remove_file(&proc.process.socket);
            let status = status.map_or_else(|| "ended".into(), |s| s.to_string());
            let lived = proc.started.elapsed();
            self.failed.get_or_insert_with(|| {
                format!(
                    "new process {slot} exited ({status}) after {lived:.1?}, before it accepted a connection"
                )
            });
        }
        !dead.is_empty()
    }

    /// Its new processes, the readiness thread told to stop.
    pub fn into_procs(mut self) -> BTreeMap<u32, Proc> {
        std::mem::take(&mut self.procs)
    }

    /// Ends it without its processes taking a request (the app went away
    /// or changed protocol): they are stopped, and whoever waits is told `why`.
    pub fn abandon(mut self, id: &AppId, limits: Limits, why: &str) {
        for (slot, proc) in std::mem::take(&mut self.procs) {
            stop(id, slot, proc, limits);
        }
        let outcome = RestartOutcome::Failed(why.to_string());
        let queued = self.queued.take().map(|q| q.waiters).unwrap_or_default();
        tell(std::mem::take(&mut self.waiters), &outcome);
        tell(queued, &outcome);
    }
}

impl Drop for Rollout {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

fn tell(waiters: Vec<oneshot::Sender<RestartOutcome>>, outcome: &RestartOutcome) {
    for w in waiters {
        let _ = w.send(outcome.clone());
    }
}

/// Makes `program` what the app's processes run, keeping the pool settings
/// and admin-only flags the configuration gave last.
fn install(state: &mut AppState, program: Program) {
    let mut app = program.app;
    app.pool = state.app.pool.clone();
    app.open_port = state.app.open_port;
    app.origin = state.app.origin.clone();
    state.app = app;
    state.user = program.user;
    state.uid = program.uid;
    state.home = program.home;
}

impl AppManager {
    /// A rolling restart of app `id`, asked for by `asked_by` (named in the
    /// logs): the answer comes on the channel once it is over (done, or
    /// failed and why; at once for a CGI app or an unknown one). The loop
    /// carries it on ([`AppManager::roll`]); nothing here waits.
    pub fn restart(&mut self, id: &AppId, asked_by: &str) -> oneshot::Receiver<RestartOutcome> {
        let (tx, rx) = oneshot::channel();
        let cause = format!("asked for by {asked_by}");
        self.request_restart(id, &cause, Some(tx));
        rx
    }

    /// Starts a rolling restart of `id` for `cause`, or, while one is under
    /// way, queues one to follow it.
    pub(super) fn request_restart(
        &mut self,
        id: &AppId,
        cause: &str,
        reply: Option<oneshot::Sender<RestartOutcome>>,
    ) {
        let Some(state) = self.apps.get_mut(id) else {
            let outcome = RestartOutcome::Failed(format!("no app {id} in the configuration"));
            tell(reply.into_iter().collect(), &outcome);
            return;
        };
        if state.app.protocol == Protocol::Cgi {
            if let Some(next) = state.next.take() {
                install(state, *next);
            }
            let why = "a CGI app has no resident processes: each request runs the program as it is";
            tell(
                reply.into_iter().collect(),
                &RestartOutcome::Nothing(why.into()),
            );
            return;
        }
        if let Some(rollout) = &mut state.rollout {
            info!("app {id}: restart ({cause}) asked for while one is under way: it follows");
            let queued = rollout.queued.get_or_insert_with(|| Queued {
                cause: cause.to_string(),
                waiters: Vec::new(),
            });
            queued.waiters.extend(reply);
            return;
        }
        self.begin_rollout(id, cause.to_string(), reply.into_iter().collect());
    }

    /// Starts the new processes of a rolling restart of `id` and the thread
    /// that waits for them to accept.
    fn begin_rollout(
        &mut self,
        id: &AppId,
        cause: String,
        waiters: Vec<oneshot::Sender<RestartOutcome>>,
    ) {
        let Some(state) = self.apps.get_mut(id) else {
            let outcome = RestartOutcome::Failed(format!("no app {id} in the configuration"));
            tell(waiters, &outcome);
            return;
        };
        let program = state
            .next
            .as_deref()
            .cloned()
            .unwrap_or_else(|| state.program());
        let pool = &state.app.pool;
        let n = state
            .serving()
            .max(pool.min_processes as usize)
            .min(pool.max_processes as usize);
        let start_timeout = pool.start_timeout;
        if n == 0 {
            // Nothing runs the old program: the next start runs the new one.
            if let Some(next) = state.next.take() {
                install(state, *next);
            }
            let why = "no process was running; the next request starts the app as it is now";
            info!("app {id}: restart ({cause}): {why}");
            tell(waiters, &RestartOutcome::Nothing(why.into()));
            return;
        }
        let limits = state.limits;
        let mut procs = BTreeMap::new();
        let mut probes = Vec::new();
        for _ in 0..n {
            match self.spawn_process(id, Run::Rollout) {
                Ok((proc, probe)) => {
                    let slot = proc.process.slot;
                    probes.extend(probe.map(|p| (slot, p)));
                    procs.insert(slot, proc);
                }
                Err(why) => {
                    for (slot, proc) in procs {
                        stop(id, slot, proc, limits);
                    }
                    self.rollout_failed(id, &cause, &why, waiters);
                    return;
                }
            }
        }
        let (tx, rx) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + start_timeout;
        // Every process has a probe; one without is taken as ready.
        let unprobed: Vec<u32> = procs
            .keys()
            .filter(|slot| !probes.iter().any(|(s, _)| s == *slot))
            .copied()
            .collect();
        let thread = {
            let (cancel, wake) = (cancel.clone(), self.wake.clone());
            std::thread::Builder::new()
                .name("app-ready".into())
                .spawn(move || await_ready(probes, deadline, cancel, tx, wake))
        };
        if let Err(e) = thread {
            for (slot, proc) in procs {
                stop(id, slot, proc, limits);
            }
            let why = format!("cannot start a thread to wait for the new processes: {e}");
            self.rollout_failed(id, &cause, &why, waiters);
            return;
        }
        info!(
            "app {id}: restarting ({cause}): {} new process(es) starting",
            procs.len()
        );
        if let Some(state) = self.apps.get_mut(id) {
            state.rollout = Some(Rollout {
                program,
                cause,
                procs,
                ready: unprobed.into_iter().collect(),
                readiness: rx,
                cancel,
                deadline,
                start_timeout,
                failed: None,
                waiters,
                queued: None,
            });
        }
    }

    /// A restart of `id` failed: said in berth's log, the tenant's error log
    /// and the status page, and to whoever asked.
    fn rollout_failed(
        &mut self,
        id: &AppId,
        cause: &str,
        why: &str,
        waiters: Vec<oneshot::Sender<RestartOutcome>>,
    ) {
        let text = format!("restart ({cause}) failed: {why}; the old processes keep serving");
        warn!("app {id}: {text}");
        if let Some(log) = crate::tenant_log::get(&id.tenant) {
            log.line(&id.app, text.as_bytes());
        }
        if let Some(state) = self.apps.get_mut(id) {
            state.last_problem = Some((SystemTime::now(), text.clone()));
        }
        tell(waiters, &RestartOutcome::Failed(text));
    }

    /// Carries rolling restarts on, without waiting for anything: restarts
    /// for touched programs, new processes that accept (the front end is
    /// told to switch to them) or failed, and old processes still serving
    /// past their `stop_timeout` (stopped). Returns what the front end must
    /// be told. Called when woken ([`AppManager::waker`]) and every second.
    pub fn roll(&mut self) -> Vec<ToFront> {
        let touched = self.touch.as_ref().map(|w| w.changes()).unwrap_or_default();
        for (id, cause) in touched {
            // Nothing runs the old program when no process runs.
            if self
                .apps
                .get(&id)
                .is_some_and(|s| s.serving() > 0 || s.rollout.is_some())
            {
                self.request_restart(&id, &cause, None);
            }
        }
        let mut out = Vec::new();
        let rolling: Vec<AppId> = self
            .apps
            .iter()
            .filter(|(_, s)| s.rollout.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        for id in rolling {
            out.extend(self.step(&id));
        }
        let now = Instant::now();
        for (id, state) in &mut self.apps {
            let late: Vec<u32> = state
                .procs
                .iter()
                .filter(|(_, p)| p.retiring.is_some_and(|at| at <= now))
                .map(|(slot, _)| *slot)
                .collect();
            for slot in late {
                let Some(proc) = state.procs.remove(&slot) else {
                    continue;
                };
                let text = format!(
                    "process {slot}, replaced by a restart, was still serving after stop_timeout ({:?}): stopped",
                    state.app.pool.stop_timeout
                );
                warn!("app {id}: {text}");
                if let Some(log) = crate::tenant_log::get(&id.tenant) {
                    log.line(&id.app, text.as_bytes());
                }
                stop(id, slot, proc, state.limits);
                out.push(ToFront::Exited {
                    app: id.clone(),
                    slot,
                    why: "stopped: stop_timeout after a restart".into(),
                });
            }
        }
        out
    }

    /// Where the rollout of `id` is: done (the front end is told to switch),
    /// failed, or still waiting.
    fn step(&mut self, id: &AppId) -> Option<ToFront> {
        let state = self.apps.get_mut(id)?;
        let rollout = state.rollout.as_mut()?;
        while let Ok(slot) = rollout.readiness.try_recv() {
            rollout.ready.insert(slot);
        }
        let result = if let Some(why) = rollout.failed.take() {
            Err(why)
        } else if rollout.procs.keys().all(|s| rollout.ready.contains(s)) {
            Ok(())
        } else if Instant::now() >= rollout.deadline {
            let late: Vec<String> = rollout
                .procs
                .keys()
                .filter(|s| !rollout.ready.contains(s))
                .map(|s| s.to_string())
                .collect();
            Err(format!(
                "new process(es) {} did not accept a connection within start_timeout ({:?})",
                late.join(", "),
                rollout.start_timeout
            ))
        } else {
            return None;
        };
        let mut rollout = state.rollout.take()?;
        let queued = rollout.queued.take();
        let waiters = std::mem::take(&mut rollout.waiters);
        let cause = std::mem::take(&mut rollout.cause);
        let msg = match result {
            Ok(()) => {
                if !rollout.program.same(&state.program()) {
                    install(state, rollout.program.clone());
                }
                if state
                    .next
                    .as_ref()
                    .is_some_and(|n| n.same(&rollout.program))
                {
                    state.next = None;
                }
                let stop_at = Instant::now() + state.app.pool.stop_timeout;
                let mut retiring = Vec::new();
                for (slot, p) in &mut state.procs {
                    if p.retiring.is_none() {
                        p.retiring = Some(stop_at);
                        retiring.push(*slot);
                    }
                }
                let procs = rollout.into_procs();
                let started: Vec<AppProcess> = procs.values().map(|p| p.process.clone()).collect();
                state.procs.extend(procs);
                state.failures = 0;
                state.retry_at = None;
                let outcome = RestartOutcome::Done {
                    started: started.len() as u32,
                    retiring: retiring.len() as u32,
                };
                let text = format!(
                    "restarted ({cause}): {} new process(es) serve, {} old one(s) finish their requests",
                    started.len(),
                    retiring.len()
                );
                info!("app {id}: {text}");
                if let Some(log) = crate::tenant_log::get(&id.tenant) {
                    log.line(&id.app, text.as_bytes());
                }
                tell(waiters, &outcome);
                Some(ToFront::Replace {
                    app: id.clone(),
                    started,
                    retiring,
                })
            }
            Err(why) => {
                let limits = state.limits;
                for (slot, proc) in rollout.into_procs() {
                    stop(id, slot, proc, limits);
                }
                self.rollout_failed(id, &cause, &why, waiters);
                None
            }
        };
        if let Some(q) = queued {
            self.begin_rollout(id, q.cause, q.waiters);
        }
        msg
    }

    /// Tells the touch watcher which programs and `tmp/restart.txt` files
    /// to watch: those of every app with resident processes.
    pub(super) fn watch(&self) {
        let Some(w) = &self.touch else {
            return;
        };
        let me = rustix::process::geteuid().as_raw();
        let list = self
            .apps
            .iter()
            .filter(|(_, s)| s.app.protocol != Protocol::Cgi && !s.app.command.is_empty())
            .map(|(id, s)| {
                // What a restart would run: the configured program.
                let p = s.next.as_deref().cloned().unwrap_or_else(|| s.program());
                super::touch::Watched {
                    id: id.clone(),
                    program: PathBuf::from(&p.app.command[0]),
                    restart_txt: p.app.dir.join("tmp/restart.txt"),
                    owner: if self.switch_user { p.uid } else { me },
                }
            })
            .collect();
        w.set(list);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A probe of a listener at `path`, with the listener itself.
    fn probe_at(dir: &std::path::Path) -> (UnixListener, Probe) {
        let path = dir.join("app.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let copy = OwnedFd::from(listener.try_clone().unwrap());
        (
            listener,
            Probe::Listener {
                listener: copy,
                path,
            },
        )
    }

    #[test]
    fn a_process_is_ready_only_once_it_has_accepted_a_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (listener, probe) = probe_at(dir.path());
        let mut conn = None;
        // Bound and listening (connect succeeds), but nobody accepts: not
        // ready, however often it is asked.
        for _ in 0..5 {
            assert!(!probe.ready(&mut conn));
        }
        assert!(conn.is_some(), "the probe's connection is queued");
        let (_accepted, _) = listener.accept().unwrap();
        assert!(probe.ready(&mut conn), "accepted: ready");
    }

    #[test]
    fn the_readiness_thread_reports_what_accepts_and_gives_up_at_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let (accepting, first) = probe_at(&dir.path().join("."));
        let other = dir.path().join("b");
        std::fs::create_dir(&other).unwrap();
        let (_never, second) = probe_at(&other);
        let (tx, rx) = mpsc::channel();
        let wake = Arc::new(Notify::new());
        let cancel = Arc::new(AtomicBool::new(false));
        // Generous: only the accepting one must be reported before it.
        let deadline = Instant::now() + Duration::from_secs(3);
        let thread = std::thread::spawn({
            let cancel = cancel.clone();
            move || await_ready(vec![(1, first), (2, second)], deadline, cancel, tx, wake)
        });
        let acceptor = std::thread::spawn(move || accepting.accept().map(|_| ()));
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)), Ok(1));
        acceptor.join().unwrap().unwrap();
        thread.join().unwrap();
        assert!(
            Instant::now() >= deadline,
            "the thread waited for the other until its deadline"
        );
        assert!(
            rx.try_recv().is_err(),
            "the one that never accepted is not ready"
        );
    }

    /// An `AppManager` for tenant `t` (run as berth does unprivileged: no
    /// user switch, no cgroups) with a CGI app `cgi` and a FastCGI app
    /// `php`, neither running.
    fn manager() -> (tempfile::TempDir, AppManager) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        for sub in ["public", "state"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let path = dir.path().join("berth.toml");
        let config = format!(
            "[server]\nlisten = [\"127.0.0.1:1\"]\nuser = \"root\"\nstate_dir = \"{d}/state\"\n\
             log_dir = \"{d}/log\"\ncgroups = \"none\"\n\
             [tenant.t]\nuser = \"nobody\"\nhome = \"{d}\"\n\
             [[tenant.t.site]]\nhosts = [\"t.test\"]\nroot = \"{d}/public\"\n\
             [[tenant.t.site.route]]\npath = \"/\"\napp = \"cgi\"\nextensions = [\"cgi\"]\n\
             [tenant.t.app.cgi]\nprotocol = \"cgi\"\n\
             [tenant.t.app.php]\nprotocol = \"fastcgi\"\ncommand = [\"/usr/bin/php-cgi\"]\n\
             dir = \"{d}/public\"\n"
        );
        std::fs::write(&path, config).unwrap();
        let cfg = crate::config::load(&path).unwrap();
        let cgroups = super::super::Cgroups::none("a test");
        let m = AppManager::new(&cfg, None, false, cgroups).unwrap();
        (dir, m)
    }

    #[test]
    fn a_restart_of_a_cgi_app_an_idle_app_or_an_unknown_one_is_answered_at_once() {
        let (_dir, mut m) = manager();
        let id = |app: &str| AppId {
            tenant: "t".into(),
            app: app.into(),
        };
        let cgi = m.restart(&id("cgi"), "a test").try_recv();
        assert!(
            matches!(&cgi, Ok(RestartOutcome::Nothing(why)) if why.contains("CGI app has no resident processes")),
            "{cgi:?}"
        );
        let idle = m.restart(&id("php"), "a test").try_recv();
        assert!(
            matches!(&idle, Ok(RestartOutcome::Nothing(why)) if why.contains("no process was running")),
            "{idle:?}"
        );
        let unknown = m.restart(&id("nope"), "a test").try_recv();
        assert_eq!(
            unknown,
            Ok(RestartOutcome::Failed(
                "no app t/nope in the configuration".into()
            ))
        );
    }

    #[test]
    fn a_self_bound_socket_is_probed_only_if_it_is_the_tenants_socket() {
        let dir = tempfile::tempdir().unwrap();
        let me = rustix::process::geteuid().as_raw();
        let path = dir.path().join("app.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        assert!(self_bound_ready(&path, me, None).is_some());
        assert!(
            self_bound_ready(&path, me + 1, None).is_none(),
            "a socket of another uid"
        );
        // A symlink the tenant put there to some other socket: not followed.
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(self_bound_ready(&link, me, None).is_none());
        // Not yet open to the front end's group.
        let gid = rustix::process::getegid().as_raw();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(self_bound_ready(&path, me, Some(gid)).is_none());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).unwrap();
        assert!(self_bound_ready(&path, me, Some(gid)).is_some());
    }
}
