//! The front end's view of app processes: which are running, how busy each is,
//! and asking the supervisor for more.
//!
//! Request flow position: the handler picked an app route; [`Apps::lease`] gives
//! it an idle process of that app, starting one through the supervisor when all
//! are busy and the pool has room; when it has none, a process serving fewer
//! than the app's `concurrency` requests (1 by default: one request per
//! process, the FastCGI model php-cgi needs); else the request queues and gets
//! the first process to come free, in order. The queue is bounded twice, so a
//! hung or flooded app holds no more than its share of the front end's
//! connections: at most the app's `queue` requests wait (past it, 503 at
//! once), and none longer than the app's `timeout`. The request took a place
//! in its tenant's gate (`tenants`) before it came here; the lease carries it.
//! Dropping the [`Lease`] returns the process, with its kept connection, and
//! then the tenant's place; after `max_requests` requests (once its
//! requests in flight end), or after `idle_timeout` without one (above
//! `min_processes`), the process is retired.
//!
//! The supervisor decides what runs: the front end can only name an app the
//! configuration has, and ask for one more process of it or to stop one.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustc_hash::FxBuildHasher;
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tracing::{debug, warn};

use crate::backend::http_proxy::AppConn;
use crate::config::Pool;
use crate::ipc::{self, AppId, AppPlan, AppProcess, StartRefused, ToSupervisor};

use super::tenants::Entry;

/// Why no process could be had.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("app {0} is not configured")]
    Unknown(AppId),
    #[error("app {app} could not be started: {why}")]
    StartFailed { app: AppId, why: String },
    #[error("app {0}: {1}")]
    Busy(AppId, Overload),
    #[error("the supervisor is gone")]
    SupervisorGone,
}

/// Why a request got no process of an app whose processes were all busy.
#[derive(Debug, thiserror::Error)]
pub enum Overload {
    /// It waited the app's `timeout` in the queue.
    #[error("every process stayed busy for {0:?}")]
    Waited(Duration),
    /// The app's `queue` was full.
    #[error("every process is busy and the queue is full ({0} waiting)")]
    QueueFull(u32),
}

struct ProcState {
    slot: u32,
    socket: Arc<Path>,
    port: Option<u16>,
    owner: Option<u32>,
    /// Idle keep-alive connections (HTTP apps), at most `concurrency`, with
    /// when each was last used.
    conns: Vec<(AppConn, Instant)>,
    /// Idle FCGI_KEEP_CONN connections (FastCGI apps), the same.
    fcgis: Vec<UnixStream>,
    /// Requests it is serving now (at most the app's `concurrency`).
    active: u32,
    /// Served `max_requests`: it takes no more and is retired once the
    /// requests it serves have ended.
    draining: bool,
    served: u64,
    idle_since: Instant,
    /// No request has been answered by it yet (its start-up is still running).
    fresh: bool,
}

struct AppPool {
    /// Shared with every lease of the app (a reference count per request,
    /// not a copy of the names).
    id: Arc<AppId>,
    plan: Arc<AppPlan>,
    /// CGI scripts running at once, at most `max_processes`.
    runs: Arc<Semaphore>,
    /// CGI requests waiting for room under `max_processes`.
    cgi_waiting: Arc<AtomicU32>,
    procs: Vec<ProcState>,
    /// Start requests sent and not answered yet.
    starting: u32,
    /// Requests waiting for a process, oldest first: a process that comes
    /// free goes to the first of them (no newcomer can take it first).
    waiters: VecDeque<oneshot::Sender<Grant>>,
    /// Requests its processes served, and CGI scripts it started, since
    /// the pool was made (for `/metrics`).
    requests: Arc<AtomicU64>,
}

/// An app as the front end sees it, for the status page.
#[derive(Debug, Clone, Default)]
pub struct AppFront {
    pub processes: Vec<ProcFront>,
    /// Requests waiting for one of its processes (or CGI runs).
    pub waiting: u32,
    /// Requests served (CGI: scripts started) since the pool was made.
    pub requests: u64,
    /// CGI scripts running now.
    pub cgi_running: u32,
    /// Processes asked of the supervisor and not there yet.
    pub starting: u32,
}

/// One process as the front end sees it.
#[derive(Debug, Clone)]
pub struct ProcFront {
    pub slot: u32,
    /// Requests it is serving now.
    pub active: u32,
    /// Requests it has served.
    pub served: u64,
    /// Retired once its requests end (`max_requests`, `process_memory`).
    pub draining: bool,
    /// It has not answered a request yet.
    pub fresh: bool,
    /// How long it has been without a request (zero while it serves).
    pub idle_for: Duration,
}

/// What a waiting request is handed. Either one, dropped unread (the request
/// gave up at that very moment), passes itself on: a lease returns its
/// process, a retry wakes the next waiter.
enum Grant {
    /// A process, already counted busy for it.
    Process(Lease),
    /// Room to start a process (one ended, or a start failed): try again.
    Retry(RetryToken),
}

/// A [`Grant::Retry`] not acted on yet.
struct RetryToken {
    apps: Arc<Apps>,
    app: Arc<AppId>,
    armed: bool,
}

impl Drop for RetryToken {
    fn drop(&mut self) {
        if self.armed
            && let Some(pool) = self
                .apps
                .pools
                .lock()
                .expect("apps lock")
                .get_mut(&*self.app)
        {
            retry_one(&self.apps, pool);
        }
    }
}

/// A process handed to one request: what its [`Lease`] needs.
struct Granted {
    slot: u32,
    socket: Arc<Path>,
    port: Option<u16>,
    owner: Option<u32>,
    fresh: bool,
    conn: Option<AppConn>,
    fcgi: Option<UnixStream>,
}

impl ProcState {
    /// Counts one more request on it and hands it out. The one that makes
    /// `max_requests` (with those in flight) is its last.
    fn grant(&mut self, max_requests: u64) -> Granted {
        self.active += 1;
        if max_requests > 0 && self.served + u64::from(self.active) >= max_requests {
            self.draining = true;
        }
        Granted {
            slot: self.slot,
            socket: self.socket.clone(),
            port: self.port,
            owner: self.owner,
            fresh: self.fresh,
            conn: self.fresh_conn(),
            fcgi: self.fcgis.pop(),
        }
    }

    /// A kept HTTP connection young enough that the app has not closed it
    /// for idleness (servers close idle ones after a few seconds).
    fn fresh_conn(&mut self) -> Option<AppConn> {
        while let Some((conn, since)) = self.conns.pop() {
            if since.elapsed() < KEPT_FOR {
                return Some(conn);
            }
        }
        None
    }

    fn new(p: AppProcess) -> ProcState {
        ProcState {
            slot: p.slot,
            socket: p.socket.into(),
            port: p.port,
            owner: p.owner,
            conns: Vec::new(),
            fcgis: Vec::new(),
            active: 0,
            draining: false,
            served: 0,
            idle_since: Instant::now(),
            fresh: true,
        }
    }
}

/// Every app's pool, shared by all workers.
pub struct Apps {
    pools: Mutex<HashMap<AppId, AppPool, FxBuildHasher>>,
    channel: Arc<OwnedFd>,
    next_req: AtomicU64,
    /// Start requests sent to the supervisor: for which app, and who waits.
    pending: Mutex<HashMap<u64, (AppId, oneshot::Sender<StartAnswer>)>>,
    pending_cgi: Mutex<HashMap<u64, oneshot::Sender<CgiAnswer>>>,
}

/// What the supervisor answers to a start request.
type StartAnswer = Result<AppProcess, StartRefused>;

/// What the supervisor answers to a CGI run: the script's pipes, or why not.
type CgiAnswer = Result<Vec<OwnedFd>, String>;

/// One running CGI script: its pipes, and what it holds until its response
/// ends.
pub struct CgiRun {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub hold: CgiHold,
}

/// What a running CGI script holds until dropped: its place under the app's
/// `max_processes` and its request's place in the tenant's gate.
pub struct CgiHold {
    _run: OwnedSemaphorePermit,
    _entry: Option<Entry>,
}

/// One process, held for one request.
pub struct Lease {
    apps: Arc<Apps>,
    pub app: Arc<AppId>,
    pub slot: u32,
    /// Its Unix socket (empty when it listens on `port`).
    pub socket: Arc<Path>,
    /// The app listens on 127.0.0.1 at this port.
    pub port: Option<u16>,
    /// The app binds by itself: its listener must belong to this uid.
    pub owner: Option<u32>,
    /// The process has not answered a request yet: the first response may take
    /// as long as its start-up (`start_timeout`).
    pub fresh: bool,
    /// Set when talking to the process failed in a way that says it is gone.
    broken: bool,
    /// Already given back by hand (see [`hand_off`]): the drop does nothing.
    defused: bool,
    /// A request failed on it in a way that may have left it in a bad state
    /// (a timeout, a bad answer) while it serves others: it takes no new
    /// requests and is retired when they end.
    drain: bool,
    /// An idle keep-alive connection to the process (HTTP apps), taken from
    /// the pool and given back on release.
    pub(crate) conn: Option<AppConn>,
    /// The same for FastCGI apps (FCGI_KEEP_CONN).
    pub(crate) fcgi: Option<UnixStream>,
    /// The request's place in its tenant's gate: given back with the
    /// process (after it, so a request of the tenant let in finds the
    /// process free), not when the client has read the response.
    pub(crate) entry: Option<Entry>,
}

/// How long an idle kept connection to an HTTP app is used again.
const KEPT_FOR: Duration = Duration::from_secs(1);

impl Apps {
    pub fn new(channel: Arc<OwnedFd>) -> Apps {
        Apps {
            pools: Mutex::new(HashMap::default()),
            channel,
            next_req: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            pending_cgi: Mutex::new(HashMap::new()),
        }
    }

    /// Takes the apps of a new plan. Pools of apps that stay keep their
    /// processes (the supervisor reports the ones it stopped).
    pub fn update(self: &Arc<Self>, plans: &[AppPlan]) {
        let mut pools = self.pools.lock().expect("apps lock");
        pools.retain(|id, _| plans.iter().any(|p| p.id == *id));
        for plan in plans {
            match pools.get_mut(&plan.id) {
                Some(pool) => {
                    if pool.plan.pool.max_processes != plan.pool.max_processes {
                        // Runs under the old limit finish under it.
                        pool.runs = Arc::new(Semaphore::new(plan.pool.max_processes as usize));
                    }
                    pool.plan = Arc::new(plan.clone());
                    // A higher concurrency or max_processes: room for waiters.
                    for i in 0..pool.procs.len() {
                        hand_off(self, pool, i);
                    }
                    let total = pool.procs.len() as u32 + pool.starting;
                    for _ in total..plan.pool.max_processes {
                        retry_one(self, pool);
                    }
                }
                None => {
                    pools.insert(
                        plan.id.clone(),
                        AppPool {
                            runs: Arc::new(Semaphore::new(plan.pool.max_processes as usize)),
                            cgi_waiting: Arc::new(AtomicU32::new(0)),
                            id: Arc::new(plan.id.clone()),
                            plan: Arc::new(plan.clone()),
                            procs: Vec::new(),
                            starting: 0,
                            waiters: VecDeque::new(),
                            requests: Arc::default(),
                        },
                    );
                }
            }
        }
    }

    /// Every app's processes, queue and counts, for the status page (the
    /// lock is held while they are copied, nothing more).
    pub fn status(&self) -> HashMap<AppId, AppFront> {
        let pools = self.pools.lock().expect("apps lock");
        pools
            .iter()
            .map(|(id, pool)| {
                let processes = pool
                    .procs
                    .iter()
                    .map(|p| ProcFront {
                        slot: p.slot,
                        active: p.active,
                        served: p.served,
                        draining: p.draining,
                        fresh: p.fresh,
                        idle_for: if p.active == 0 {
                            p.idle_since.elapsed()
                        } else {
                            Duration::ZERO
                        },
                    })
                    .collect();
                let cgi_running = if pool.plan.protocol == crate::config::Protocol::Cgi {
                    let max = pool.plan.pool.max_processes as usize;
                    max.saturating_sub(pool.runs.available_permits()) as u32
                } else {
                    0
                };
                let front = AppFront {
                    processes,
                    waiting: pool.waiters.len() as u32 + pool.cgi_waiting.load(Ordering::Relaxed),
                    requests: pool.requests.load(Ordering::Relaxed),
                    cgi_running,
                    starting: pool.starting,
                };
                (id.clone(), front)
            })
            .collect()
    }

    /// The plan of an app, if configured.
    pub fn plan(&self, id: &AppId) -> Option<Arc<AppPlan>> {
        self.pools
            .lock()
            .expect("apps lock")
            .get(id)
            .map(|p| p.plan.clone())
    }

    /// An idle process of `id`, started if need be, or the first one to come
    /// free (requests are served in the order they queued). A request waits
    /// at most the app's `timeout`, behind at most `queue` others.
    pub async fn lease(self: &Arc<Self>, id: &AppId) -> Result<Lease, LeaseError> {
        // Set when the request first has to wait, from the plan of that moment.
        let mut deadline: Option<(Instant, Duration)> = None;
        let mut full_answers = 0;
        loop {
            enum Next {
                Wait(oneshot::Receiver<Grant>),
                Start(u64, oneshot::Receiver<StartAnswer>),
            }
            let next = {
                let mut pools = self.pools.lock().expect("apps lock");
                let pool = pools
                    .get_mut(id)
                    .ok_or_else(|| LeaseError::Unknown(id.clone()))?;
                let max_requests = pool.plan.pool.max_requests;
                // An idle process first; then a new one while there is room;
                // then the least busy one that can take another request.
                if let Some(p) = pool.procs.iter_mut().find(|p| !p.draining && p.active == 0) {
                    return Ok(self.lease_of(&pool.id, p.grant(max_requests)));
                }
                let total = pool.procs.len() as u32 + pool.starting;
                let Pool {
                    max_processes,
                    concurrency,
                    queue,
                    timeout,
                    ..
                } = pool.plan.pool;
                if total < max_processes {
                    pool.starting += 1;
                    let req = self.next_req.fetch_add(1, Ordering::Relaxed);
                    let (tx, rx) = oneshot::channel();
                    self.pending
                        .lock()
                        .expect("pending lock")
                        .insert(req, (id.clone(), tx));
                    Next::Start(req, rx)
                } else if let Some(p) = pool
                    .procs
                    .iter_mut()
                    .filter(|p| !p.draining && p.active < concurrency)
                    .min_by_key(|p| p.active)
                {
                    return Ok(self.lease_of(&pool.id, p.grant(max_requests)));
                } else {
                    // Requests that went away leave no place behind.
                    pool.waiters.retain(|w| !w.is_closed());
                    // A request that is back from a retry it could not use
                    // keeps its place in the count (it was counted before).
                    if deadline.is_none() && pool.waiters.len() >= queue as usize {
                        return Err(LeaseError::Busy(id.clone(), Overload::QueueFull(queue)));
                    }
                    let (tx, rx) = oneshot::channel();
                    pool.waiters.push_back(tx);
                    deadline.get_or_insert((Instant::now() + timeout, timeout));
                    Next::Wait(rx)
                }
            };
            match next {
                Next::Start(req, rx) => {
                    let msg = ToSupervisor::StartProcess {
                        req,
                        app: id.clone(),
                    };
                    if let Err(e) = ipc::send(std::os::fd::AsFd::as_fd(&*self.channel), &msg, &[]) {
                        warn!("asking the supervisor to start {id}: {e}");
                        self.start_done(id, None);
                        return Err(LeaseError::SupervisorGone);
                    }
                    // If this request goes away while waiting, `started`
                    // takes the new process into the pool for the others.
                    match rx.await {
                        Ok(Ok(process)) => {
                            debug!("app {id}: process {} ready", process.slot);
                            // The process is this request's: it asked for it.
                            if let Some(lease) = self.start_done(id, Some(process)) {
                                return Ok(lease);
                            }
                        }
                        // The supervisor runs processes this end has not
                        // heard of when it asked (one kept warm, just
                        // started): they are in the pool by now, since
                        // their news came first. Look again, once or twice.
                        Ok(Err(StartRefused::Full(why))) if full_answers < 2 => {
                            debug!("{why}; looking again");
                            full_answers += 1;
                            self.start_done(id, None);
                        }
                        Ok(Err(refused)) => {
                            self.start_done(id, None);
                            return Err(LeaseError::StartFailed {
                                app: id.clone(),
                                why: refused.to_string(),
                            });
                        }
                        Err(_) => {
                            self.start_done(id, None);
                            return Err(LeaseError::SupervisorGone);
                        }
                    }
                }
                Next::Wait(rx) => {
                    let (until, timeout) = deadline.expect("set before waiting");
                    match tokio::time::timeout_at(until.into(), rx).await {
                        Ok(Ok(Grant::Process(lease))) => return Ok(lease),
                        // Room to start one, or the pool changed: look again.
                        Ok(Ok(Grant::Retry(mut token))) => token.armed = false,
                        Ok(Err(_)) => {}
                        Err(_) => {
                            return Err(LeaseError::Busy(id.clone(), Overload::Waited(timeout)));
                        }
                    }
                }
            }
        }
    }

    fn lease_of(self: &Arc<Self>, id: &Arc<AppId>, g: Granted) -> Lease {
        Lease {
            apps: self.clone(),
            app: id.clone(),
            slot: g.slot,
            socket: g.socket,
            port: g.port,
            owner: g.owner,
            fresh: g.fresh,
            broken: false,
            defused: false,
            drain: false,
            conn: g.conn,
            fcgi: g.fcgi,
            entry: None,
        }
    }

    /// Runs one request of CGI app `id`: waits for room under
    /// `max_processes` (behind at most `queue` others, for at most the app's
    /// `timeout`), then asks the supervisor to start the script. The run
    /// holds `entry`, the request's place in its tenant's gate.
    pub async fn run_cgi(
        &self,
        id: &AppId,
        script: Option<PathBuf>,
        env: Vec<(String, String)>,
        entry: Option<Entry>,
    ) -> Result<CgiRun, LeaseError> {
        let (runs, waiting, queue, timeout, requests) = {
            let pools = self.pools.lock().expect("apps lock");
            let pool = pools
                .get(id)
                .ok_or_else(|| LeaseError::Unknown(id.clone()))?;
            let Pool { queue, timeout, .. } = pool.plan.pool;
            let requests = pool.requests.clone();
            (
                pool.runs.clone(),
                pool.cgi_waiting.clone(),
                queue,
                timeout,
                requests,
            )
        };
        let permit = match runs.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Counted while it waits, whichever way the wait ends.
                let Some(_place) = Place::take(&waiting, queue) else {
                    return Err(LeaseError::Busy(id.clone(), Overload::QueueFull(queue)));
                };
                match tokio::time::timeout(timeout, runs.acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) | Err(_) => {
                        return Err(LeaseError::Busy(id.clone(), Overload::Waited(timeout)));
                    }
                }
            }
        };
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending_cgi
            .lock()
            .expect("pending lock")
            .insert(req, tx);
        let msg = ToSupervisor::RunCgi {
            req,
            app: id.clone(),
            script,
            env,
        };
        if let Err(e) = ipc::send(std::os::fd::AsFd::as_fd(&*self.channel), &msg, &[]) {
            warn!("asking the supervisor to run {id}: {e}");
            self.pending_cgi.lock().expect("pending lock").remove(&req);
            return Err(LeaseError::SupervisorGone);
        }
        match rx.await {
            Ok(Ok(fds)) => {
                requests.fetch_add(1, Ordering::Relaxed);
                let [stdin, stdout, stderr]: [OwnedFd; 3] =
                    fds.try_into()
                        .map_err(|fds: Vec<OwnedFd>| LeaseError::StartFailed {
                            app: id.clone(),
                            why: format!("the supervisor passed {} pipes, not 3", fds.len()),
                        })?;
                Ok(CgiRun {
                    stdin,
                    stdout,
                    stderr,
                    hold: CgiHold {
                        _run: permit,
                        _entry: entry,
                    },
                })
            }
            Ok(Err(why)) => Err(LeaseError::StartFailed {
                app: id.clone(),
                why,
            }),
            Err(_) => Err(LeaseError::SupervisorGone),
        }
    }

    /// The supervisor answered a CGI run.
    pub fn cgi_started(&self, req: u64, result: CgiAnswer) {
        if let Some(tx) = self.pending_cgi.lock().expect("pending lock").remove(&req) {
            let _ = tx.send(result);
        }
    }

    /// A start request was answered: the new process joins the pool, busy
    /// for the request that asked for it; without one, a waiter may try.
    fn start_done(self: &Arc<Self>, id: &AppId, process: Option<AppProcess>) -> Option<Lease> {
        let mut pools = self.pools.lock().expect("apps lock");
        let pool = pools.get_mut(id)?;
        pool.starting = pool.starting.saturating_sub(1);
        match process {
            Some(p) => {
                let mut proc = ProcState::new(p);
                let lease = self.lease_of(&pool.id, proc.grant(pool.plan.pool.max_requests));
                pool.procs.push(proc);
                // Room for more requests on it (concurrency > 1): waiters.
                let last = pool.procs.len() - 1;
                hand_off(self, pool, last);
                Some(lease)
            }
            None => {
                retry_one(self, pool);
                None
            }
        }
    }

    /// The supervisor answered a start request.
    pub fn started(self: &Arc<Self>, req: u64, result: StartAnswer) {
        let Some((id, tx)) = self.pending.lock().expect("pending lock").remove(&req) else {
            return;
        };
        if let Err(result) = tx.send(result) {
            // The request that asked went away meanwhile: the process joins
            // the pool all the same, for the next request.
            drop(self.start_done(&id, result.ok()));
        }
    }

    /// The supervisor started a process on its own (warm pool, or one that was
    /// running before this front end started).
    pub fn spawned(self: &Arc<Self>, id: &AppId, process: AppProcess) {
        let mut pools = self.pools.lock().expect("apps lock");
        if let Some(pool) = pools.get_mut(id)
            && !pool.procs.iter().any(|p| p.slot == process.slot)
        {
            pool.procs.push(ProcState::new(process));
            let last = pool.procs.len() - 1;
            hand_off(self, pool, last);
        }
    }

    /// The supervisor says a process ended.
    pub fn exited(self: &Arc<Self>, id: &AppId, slot: u32) {
        let mut pools = self.pools.lock().expect("apps lock");
        if let Some(pool) = pools.get_mut(id) {
            pool.procs.retain(|p| p.slot != slot);
            retry_one(self, pool);
        }
    }

    /// Every pending start fails (the supervisor went away).
    pub fn fail_pending(&self) {
        self.pending.lock().expect("pending lock").clear();
        self.pending_cgi.lock().expect("pending lock").clear();
    }

    fn release(self: &Arc<Self>, lease: &mut Lease) {
        let mut pools = self.pools.lock().expect("apps lock");
        let Some(pool) = pools.get_mut(&*lease.app) else {
            return;
        };
        let Pool {
            max_requests,
            concurrency,
            ..
        } = pool.plan.pool;
        let Some(i) = pool.procs.iter().position(|p| p.slot == lease.slot) else {
            return;
        };
        let p = &mut pool.procs[i];
        let now = Instant::now();
        p.active = p.active.saturating_sub(1);
        p.served += 1;
        pool.requests.fetch_add(1, Ordering::Relaxed);
        p.fresh = false;
        if p.active == 0 {
            p.idle_since = now;
        }
        if let Some(conn) = lease.conn.take()
            && p.conns.len() < concurrency as usize
        {
            p.conns.push((conn, now));
        }
        // FastCGI servers such as php-cgi serve one connection at a time: a
        // kept one would block the next connection, so with several requests
        // per process none is kept.
        if let Some(conn) = lease.fcgi.take()
            && concurrency == 1
        {
            p.fcgis.push(conn);
        }
        if lease.drain || (max_requests > 0 && p.served >= max_requests) {
            p.draining = true;
        }
        if lease.broken || (p.draining && p.active == 0) {
            pool.procs.remove(i);
            // Under the lock: the supervisor hears of the retirement before
            // any request can ask it for a replacement (it would still
            // count the old process against max_processes).
            self.retire(&lease.app, lease.slot);
            retry_one(self, pool);
        } else {
            hand_off(self, pool, i);
        }
    }

    /// The supervisor found the process above its tenant's
    /// `process_memory`: it takes no more requests, and goes as soon as
    /// those it serves have ended (at once when idle).
    pub fn recycle(self: &Arc<Self>, id: &AppId, slot: u32) {
        let mut pools = self.pools.lock().expect("apps lock");
        let Some(pool) = pools.get_mut(id) else {
            return;
        };
        if self.drain_slot(id, pool, slot) {
            retry_one(self, pool);
        }
    }

    /// A rolling restart: the `started` processes (they accept connections
    /// already) join the pool and the `retiring` ones take no more requests,
    /// each retired once those it serves have ended, all under one lock,
    /// so that no request is given an old process after a new one.
    /// Waiting requests go to the new processes.
    pub fn replace(self: &Arc<Self>, id: &AppId, started: Vec<AppProcess>, retiring: &[u32]) {
        let mut pools = self.pools.lock().expect("apps lock");
        let Some(pool) = pools.get_mut(id) else {
            return;
        };
        for p in started {
            if !pool.procs.iter().any(|q| q.slot == p.slot) {
                pool.procs.push(ProcState::new(p));
            }
        }
        let mut gone = false;
        for &slot in retiring {
            gone |= self.drain_slot(id, pool, slot);
        }
        for i in 0..pool.procs.len() {
            hand_off(self, pool, i);
        }
        if gone {
            retry_one(self, pool);
        }
    }

    /// Process `slot` takes no more requests; when idle it leaves the pool
    /// at once (the supervisor is told to stop it) and this returns true.
    fn drain_slot(&self, id: &AppId, pool: &mut AppPool, slot: u32) -> bool {
        let Some(i) = pool.procs.iter().position(|p| p.slot == slot) else {
            return false;
        };
        let p = &mut pool.procs[i];
        p.draining = true;
        if p.active > 0 {
            return false;
        }
        pool.procs.remove(i);
        self.retire(id, slot);
        true
    }

    fn retire(&self, app: &AppId, slot: u32) {
        let msg = ToSupervisor::Retire {
            app: app.clone(),
            slot,
        };
        if let Err(e) = ipc::send(std::os::fd::AsFd::as_fd(&*self.channel), &msg, &[]) {
            warn!("asking the supervisor to retire {app} process {slot}: {e}");
        }
    }

    /// Retires processes idle longer than `idle_timeout`, keeping
    /// `min_processes`. Called periodically.
    pub fn sweep(&self) {
        let mut pools = self.pools.lock().expect("apps lock");
        for (id, pool) in pools.iter_mut() {
            let Pool {
                min_processes,
                idle_timeout,
                ..
            } = pool.plan.pool;
            while pool.procs.len() > min_processes as usize {
                let Some(i) = pool.procs.iter().position(|p| {
                    !p.draining && p.active == 0 && p.idle_since.elapsed() >= idle_timeout
                }) else {
                    break;
                };
                let p = pool.procs.remove(i);
                debug!("app {id}: process {} idle; retiring", p.slot);
                // Still under the lock: the supervisor hears of it before any
                // request can ask for a replacement.
                self.retire(id, p.slot);
            }
        }
    }
}

/// A place in a CGI app's queue, given back when dropped.
struct Place<'a>(&'a AtomicU32);

impl<'a> Place<'a> {
    /// A place, if fewer than `queue` requests wait.
    fn take(waiting: &'a AtomicU32, queue: u32) -> Option<Place<'a>> {
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < queue).then_some(n + 1)
            })
            .ok()
            .map(|_| Place(waiting))
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Process `i` can take requests again: as many as it has room for go to the
/// oldest waiting requests still there. Called under the pools lock.
fn hand_off(apps: &Arc<Apps>, pool: &mut AppPool, i: usize) {
    let AppPool {
        id,
        procs,
        waiters,
        plan,
        ..
    } = pool;
    let p = &mut procs[i];
    while !p.draining && p.active < plan.pool.concurrency {
        let Some(w) = waiters.pop_front() else { return };
        let granted = p.grant(plan.pool.max_requests);
        if let Err(Grant::Process(mut back)) = w.send(Grant::Process(apps.lease_of(id, granted))) {
            // That request gave up waiting: its share comes back (here, not
            // in the lease's drop, which would take the lock again).
            back.defused = true;
            p.active -= 1;
            p.conns
                .extend(back.conn.take().map(|c| (c, Instant::now())));
            p.fcgis.extend(back.fcgi.take());
        }
    }
}

/// Room for one more process: the oldest waiting request may start it.
/// Called under the pools lock.
fn retry_one(apps: &Arc<Apps>, pool: &mut AppPool) {
    while let Some(w) = pool.waiters.pop_front() {
        let token = RetryToken {
            apps: apps.clone(),
            app: pool.id.clone(),
            armed: true,
        };
        match w.send(Grant::Retry(token)) {
            Ok(()) => break,
            Err(Grant::Retry(mut token)) => token.armed = false,
            Err(Grant::Process(_)) => unreachable!("a retry was sent"),
        }
    }
}

impl Lease {
    /// Marks the process as unusable (connection refused, no answer within
    /// `start_timeout`, died mid-request): it leaves the pool and the
    /// supervisor is asked to stop it, if it still runs.
    pub fn broken(&mut self) {
        self.broken = true;
    }

    /// Marks the process to be retired once its other requests end.
    pub fn drain(&mut self) {
        self.drain = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.defused {
            let apps = self.apps.clone();
            apps.release(self);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;

    /// Pools for one app `t/a` with `max_processes`, talking to a supervisor
    /// that never answers (its end is returned, to keep the channel open).
    fn apps(max_processes: u32) -> (Arc<Apps>, AppId, std::os::unix::net::UnixStream) {
        apps_with(Pool {
            max_processes,
            ..Pool::default()
        })
    }

    fn apps_with(pool: Pool) -> (Arc<Apps>, AppId, std::os::unix::net::UnixStream) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let apps = Arc::new(Apps::new(Arc::new(OwnedFd::from(ours))));
        let id = AppId {
            tenant: "t".into(),
            app: "a".into(),
        };
        apps.update(&[AppPlan {
            id: id.clone(),
            protocol: Protocol::FastCgi,
            pool,
            program: PathBuf::from("/bin/true"),
        }]);
        (apps, id, theirs)
    }

    fn process(slot: u32) -> AppProcess {
        AppProcess {
            slot,
            socket: PathBuf::from(format!("/nonexistent/{slot}.sock")),
            port: None,
            owner: None,
        }
    }

    fn active(apps: &Apps, id: &AppId) -> Vec<u32> {
        let pools = apps.pools.lock().unwrap();
        pools[id].procs.iter().map(|p| p.active).collect()
    }

    #[tokio::test]
    async fn a_grant_dropped_unread_returns_its_process() {
        let (apps, id, _sup) = apps(1);
        apps.spawned(&id, process(1));
        let first = apps.lease(&id).await.unwrap();
        // A request queues; it goes away after the process was handed to it
        // but before it looked (its receiver dropped with the lease inside).
        let (tx, rx) = oneshot::channel();
        apps.pools
            .lock()
            .unwrap()
            .get_mut(&id)
            .unwrap()
            .waiters
            .push_back(tx);
        drop(first);
        assert_eq!(active(&apps, &id), [1], "handed to the waiter");
        drop(rx);
        assert_eq!(active(&apps, &id), [0], "and given back");
        let again = tokio::time::timeout(Duration::from_secs(1), apps.lease(&id)).await;
        assert!(
            again.is_ok_and(|l| l.is_ok()),
            "the process can be leased again"
        );
    }

    #[tokio::test]
    async fn a_waiter_gone_before_the_grant_is_skipped() {
        let (apps, id, _sup) = apps(1);
        apps.spawned(&id, process(1));
        let first = apps.lease(&id).await.unwrap();
        let (gone_tx, gone_rx) = oneshot::channel();
        let (tx, mut rx) = oneshot::channel();
        {
            let mut pools = apps.pools.lock().unwrap();
            let pool = pools.get_mut(&id).unwrap();
            pool.waiters.push_back(gone_tx);
            pool.waiters.push_back(tx);
        }
        drop(gone_rx);
        drop(first);
        assert!(
            matches!(rx.try_recv(), Ok(Grant::Process(_))),
            "the next waiter got it"
        );
        assert_eq!(active(&apps, &id), [0], "dropped with the receiver's value");
    }

    #[tokio::test]
    async fn a_process_started_for_a_request_that_went_away_joins_the_pool() {
        let (apps, id, _sup) = apps(1);
        // The request asks for a process and goes away while waiting.
        let asking = tokio::spawn({
            let apps = apps.clone();
            let id = id.clone();
            async move { apps.lease(&id).await.map(|_| ()) }
        });
        let req = loop {
            if let Some(req) = apps.pending.lock().unwrap().keys().next().copied() {
                break req;
            }
            tokio::task::yield_now().await;
        };
        asking.abort();
        let _ = asking.await;
        apps.started(req, Ok(process(7)));
        {
            let pools = apps.pools.lock().unwrap();
            let pool = &pools[&id];
            assert_eq!(pool.starting, 0, "the start is no longer pending");
            assert_eq!(pool.procs.len(), 1);
            assert_eq!(pool.procs[0].active, 0, "idle, for the next request");
        }
        let lease = tokio::time::timeout(Duration::from_secs(1), apps.lease(&id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(lease.slot, 7);
    }

    /// Starts `n` requests for `id` that queue (every process is busy), and
    /// waits until they are in the queue.
    async fn queue_up(apps: &Arc<Apps>, id: &AppId, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let apps = apps.clone();
                let id = id.clone();
                tokio::spawn(async move {
                    let _ = apps.lease(&id).await;
                })
            })
            .collect();
        while apps.pools.lock().unwrap()[id].waiters.len() < n {
            tokio::task::yield_now().await;
        }
        tasks
    }

    #[tokio::test]
    async fn requests_past_the_apps_queue_are_refused_at_once() {
        let (apps, id, _sup) = apps_with(Pool {
            max_processes: 1,
            queue: 2,
            ..Pool::default()
        });
        apps.spawned(&id, process(1));
        let _busy = apps.lease(&id).await.unwrap();
        let waiting = queue_up(&apps, &id, 2).await;
        let third = tokio::time::timeout(Duration::from_secs(5), apps.lease(&id)).await;
        match third {
            Ok(Err(LeaseError::Busy(_, Overload::QueueFull(2)))) => {}
            Ok(other) => panic!("not refused for a full queue: {:?}", other.map(|l| l.slot)),
            Err(_) => panic!("the request past the queue waited"),
        }
        // Requests that went away free their places: the next one waits.
        for t in &waiting {
            t.abort();
        }
        for t in waiting {
            let _ = t.await;
        }
        let next = tokio::time::timeout(Duration::from_millis(100), apps.lease(&id)).await;
        assert!(
            next.is_err(),
            "queued, not refused: {:?}",
            next.map(|r| r.err())
        );
    }

    #[tokio::test]
    async fn a_queue_of_zero_refuses_every_wait() {
        let (apps, id, _sup) = apps_with(Pool {
            max_processes: 1,
            queue: 0,
            ..Pool::default()
        });
        apps.spawned(&id, process(1));
        let busy = apps.lease(&id).await.unwrap();
        assert!(matches!(
            apps.lease(&id).await,
            Err(LeaseError::Busy(_, Overload::QueueFull(0)))
        ));
        drop(busy);
        assert!(apps.lease(&id).await.is_ok(), "an idle process is leased");
    }

    #[tokio::test]
    async fn a_wait_for_a_busy_app_ends_at_its_timeout_not_30s() {
        let (apps, id, _sup) = apps_with(Pool {
            max_processes: 1,
            timeout: Duration::from_millis(50),
            ..Pool::default()
        });
        apps.spawned(&id, process(1));
        let _busy = apps.lease(&id).await.unwrap();
        // Generous: the wait is 50 ms; the old fixed wait was 30 s.
        let waited = tokio::time::timeout(Duration::from_secs(10), apps.lease(&id)).await;
        assert!(
            matches!(
                waited,
                Ok(Err(LeaseError::Busy(_, Overload::Waited(t)))) if t == Duration::from_millis(50)
            ),
            "the wait is bounded by the app's timeout"
        );
    }

    /// What the front end asked the supervisor to retire, in order.
    fn retired(sup: &std::os::unix::net::UnixStream) -> Vec<u32> {
        use std::os::fd::AsFd;
        sup.set_nonblocking(true).unwrap();
        let mut out = Vec::new();
        while let Ok((msg, _)) = ipc::recv::<ToSupervisor>(sup.as_fd()) {
            if let ToSupervisor::Retire { slot, .. } = msg {
                out.push(slot);
            }
        }
        out
    }

    #[tokio::test]
    async fn a_rolling_restart_sends_new_requests_to_new_processes_and_retires_old_ones_as_they_end()
     {
        let (apps, id, sup) = apps_with(Pool {
            max_processes: 2,
            ..Pool::default()
        });
        apps.spawned(&id, process(1));
        apps.spawned(&id, process(2));
        let busy = apps.lease(&id).await.unwrap();
        let idle_slot = 3 - busy.slot;
        apps.replace(&id, vec![process(3), process(4)], &[1, 2]);
        assert_eq!(
            retired(&sup),
            [idle_slot],
            "the idle old process goes at once"
        );
        let a = apps.lease(&id).await.unwrap();
        let b = apps.lease(&id).await.unwrap();
        let mut slots = [a.slot, b.slot];
        slots.sort();
        assert_eq!(slots, [3, 4], "new requests go to the new processes only");
        assert!(
            retired(&sup).is_empty(),
            "the busy one finishes its request"
        );
        let busy_slot = busy.slot;
        drop(busy);
        assert_eq!(retired(&sup), [busy_slot], "and is retired when it has");
        assert_eq!(active(&apps, &id), [1, 1]);
    }

    #[tokio::test]
    async fn a_retry_dropped_unread_wakes_the_next_waiter() {
        let (apps, id, _sup) = apps(1);
        apps.spawned(&id, process(1));
        let (tx1, rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        {
            let mut pools = apps.pools.lock().unwrap();
            let pool = pools.get_mut(&id).unwrap();
            pool.waiters.push_back(tx1);
            pool.waiters.push_back(tx2);
        }
        // The process dies: room to start one, offered to the first waiter,
        // who goes away without reading it.
        apps.exited(&id, 1);
        drop(rx1);
        assert!(matches!(rx2.try_recv(), Ok(Grant::Retry(_))), "passed on");
    }
}
