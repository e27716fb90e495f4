//! The front end's view of app processes: which are running, how busy each is,
//! and asking the supervisor for more.
//!
//! Request flow position: the handler picked an app route; [`Apps::lease`] gives
//! it an idle process of that app, starting one through the supervisor when all
//! are busy and the pool has room; when it has none, a process serving fewer
//! than the app's `concurrency` requests (1 by default: one request per
//! process, the FastCGI model php-cgi needs); else the request queues and gets
//! the first process to come free, in order. Dropping the [`Lease`] returns the
//! process, with its kept connection; after `max_requests` requests (once its
//! requests in flight end), or after `idle_timeout` without one (above
//! `min_processes`), the process is retired.
//!
//! The supervisor decides what runs: the front end can only name an app the
//! configuration has, and ask for one more process of it or to stop one.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tracing::{debug, warn};

use crate::backend::http_proxy::AppConn;
use crate::config::Pool;
use crate::ipc::{self, AppId, AppPlan, AppProcess, ToSupervisor};

/// Why no process could be had.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("app {0} is not configured")]
    Unknown(AppId),
    #[error("app {app} could not be started: {why}")]
    StartFailed { app: AppId, why: String },
    #[error("app {0}: every process stayed busy for {1:?}")]
    Busy(AppId, Duration),
    #[error("the supervisor is gone")]
    SupervisorGone,
}

struct ProcState {
    slot: u32,
    socket: PathBuf,
    port: Option<u16>,
    owner: Option<u32>,
    /// Idle keep-alive connections (HTTP apps), at most `concurrency`.
    conns: Vec<AppConn>,
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
    plan: AppPlan,
    /// CGI scripts running at once, at most `max_processes`.
    runs: Arc<Semaphore>,
    procs: Vec<ProcState>,
    /// Start requests sent and not answered yet.
    starting: u32,
    /// Requests waiting for a process, oldest first: a process that comes
    /// free goes to the first of them (no newcomer can take it first).
    waiters: VecDeque<oneshot::Sender<Grant>>,
}

/// What a waiting request is handed.
enum Grant {
    /// A process, already marked busy for it.
    Process(Granted),
    /// Room to start a process (one ended, or a start failed): try again.
    Retry,
}

/// A process handed to one request: what its [`Lease`] needs.
struct Granted {
    slot: u32,
    socket: PathBuf,
    port: Option<u16>,
    owner: Option<u32>,
    fresh: bool,
    conn: Option<AppConn>,
    fcgi: Option<UnixStream>,
}

impl ProcState {
    /// Counts one more request on it and hands it out.
    fn grant(&mut self) -> Granted {
        self.active += 1;
        Granted {
            slot: self.slot,
            socket: self.socket.clone(),
            port: self.port,
            owner: self.owner,
            fresh: self.fresh,
            conn: self.conns.pop(),
            fcgi: self.fcgis.pop(),
        }
    }

    fn new(p: AppProcess) -> ProcState {
        ProcState {
            slot: p.slot,
            socket: p.socket,
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
    pools: Mutex<HashMap<AppId, AppPool>>,
    channel: Arc<OwnedFd>,
    next_req: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<AppProcess, String>>>>,
    pending_cgi: Mutex<HashMap<u64, oneshot::Sender<CgiAnswer>>>,
}

/// What the supervisor answers to a CGI run: the script's pipes, or why not.
type CgiAnswer = Result<Vec<OwnedFd>, String>;

/// One running CGI script: its pipes, and the permit that counts it against
/// the app's `max_processes` until dropped.
pub struct CgiRun {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub permit: OwnedSemaphorePermit,
}

/// One process, held for one request.
pub struct Lease {
    apps: Arc<Apps>,
    pub app: AppId,
    pub slot: u32,
    /// Its Unix socket (empty when it listens on `port`).
    pub socket: PathBuf,
    /// The app listens on 127.0.0.1 at this port.
    pub port: Option<u16>,
    /// The app binds by itself: its listener must belong to this uid.
    pub owner: Option<u32>,
    /// The process has not answered a request yet: the first response may take
    /// as long as its start-up (`start_timeout`).
    pub fresh: bool,
    /// Set when talking to the process failed in a way that says it is gone.
    broken: bool,
    /// An idle keep-alive connection to the process (HTTP apps), taken from
    /// the pool and given back on release.
    pub(crate) conn: Option<AppConn>,
    /// The same for FastCGI apps (FCGI_KEEP_CONN).
    pub(crate) fcgi: Option<UnixStream>,
}

/// How long a request waits for a busy pool before 503.
const QUEUE_WAIT: Duration = Duration::from_secs(30);

impl Apps {
    pub fn new(channel: Arc<OwnedFd>) -> Apps {
        Apps {
            pools: Mutex::new(HashMap::new()),
            channel,
            next_req: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            pending_cgi: Mutex::new(HashMap::new()),
        }
    }

    /// Takes the apps of a new plan. Pools of apps that stay keep their
    /// processes (the supervisor reports the ones it stopped).
    pub fn update(&self, plans: &[AppPlan]) {
        let mut pools = self.pools.lock().expect("apps lock");
        pools.retain(|id, _| plans.iter().any(|p| p.id == *id));
        for plan in plans {
            match pools.get_mut(&plan.id) {
                Some(pool) => {
                    if pool.plan.pool.max_processes != plan.pool.max_processes {
                        // Runs under the old limit finish under it.
                        pool.runs = Arc::new(Semaphore::new(plan.pool.max_processes as usize));
                    }
                    pool.plan = plan.clone();
                }
                None => {
                    pools.insert(
                        plan.id.clone(),
                        AppPool {
                            runs: Arc::new(Semaphore::new(plan.pool.max_processes as usize)),
                            plan: plan.clone(),
                            procs: Vec::new(),
                            starting: 0,
                            waiters: VecDeque::new(),
                        },
                    );
                }
            }
        }
    }

    /// The plan of an app, if configured.
    pub fn plan(&self, id: &AppId) -> Option<AppPlan> {
        self.pools
            .lock()
            .expect("apps lock")
            .get(id)
            .map(|p| p.plan.clone())
    }

    /// An idle process of `id`, started if need be, or the first one to come
    /// free (requests are served in the order they queued).
    pub async fn lease(self: &Arc<Self>, id: &AppId) -> Result<Lease, LeaseError> {
        let deadline = Instant::now() + QUEUE_WAIT;
        loop {
            enum Next {
                Wait(oneshot::Receiver<Grant>),
                Start(u64, oneshot::Receiver<Result<AppProcess, String>>),
            }
            let next = {
                let mut pools = self.pools.lock().expect("apps lock");
                let pool = pools
                    .get_mut(id)
                    .ok_or_else(|| LeaseError::Unknown(id.clone()))?;
                // An idle process first; then a new one while there is room;
                // then the least busy one that can take another request.
                if let Some(p) = pool.procs.iter_mut().find(|p| !p.draining && p.active == 0) {
                    return Ok(self.lease_of(id, p.grant()));
                }
                let total = pool.procs.len() as u32 + pool.starting;
                let concurrency = pool.plan.pool.concurrency;
                let shared = pool
                    .procs
                    .iter_mut()
                    .filter(|p| !p.draining && p.active < concurrency)
                    .min_by_key(|p| p.active);
                if total >= pool.plan.pool.max_processes
                    && let Some(p) = shared
                {
                    return Ok(self.lease_of(id, p.grant()));
                }
                if total < pool.plan.pool.max_processes {
                    pool.starting += 1;
                    let req = self.next_req.fetch_add(1, Ordering::Relaxed);
                    let (tx, rx) = oneshot::channel();
                    self.pending.lock().expect("pending lock").insert(req, tx);
                    Next::Start(req, rx)
                } else {
                    let (tx, rx) = oneshot::channel();
                    pool.waiters.push_back(tx);
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
                    match rx.await {
                        Ok(Ok(process)) => {
                            debug!("app {id}: process {} ready", process.slot);
                            // The process is this request's: it asked for it.
                            if let Some(granted) = self.start_done(id, Some(process)) {
                                return Ok(self.lease_of(id, granted));
                            }
                        }
                        Ok(Err(why)) => {
                            self.start_done(id, None);
                            return Err(LeaseError::StartFailed {
                                app: id.clone(),
                                why,
                            });
                        }
                        Err(_) => {
                            self.start_done(id, None);
                            return Err(LeaseError::SupervisorGone);
                        }
                    }
                }
                Next::Wait(rx) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, rx).await {
                        Ok(Ok(Grant::Process(granted))) => return Ok(self.lease_of(id, granted)),
                        // Room to start one, or the pool changed: look again.
                        Ok(Ok(Grant::Retry)) | Ok(Err(_)) => {}
                        Err(_) => return Err(LeaseError::Busy(id.clone(), QUEUE_WAIT)),
                    }
                }
            }
        }
    }

    fn lease_of(self: &Arc<Self>, id: &AppId, g: Granted) -> Lease {
        Lease {
            apps: self.clone(),
            app: id.clone(),
            slot: g.slot,
            socket: g.socket,
            port: g.port,
            owner: g.owner,
            fresh: g.fresh,
            broken: false,
            conn: g.conn,
            fcgi: g.fcgi,
        }
    }

    /// Runs one request of CGI app `id`: waits for room under
    /// `max_processes`, then asks the supervisor to start the script.
    pub async fn run_cgi(
        &self,
        id: &AppId,
        script: Option<PathBuf>,
        env: Vec<(String, String)>,
    ) -> Result<CgiRun, LeaseError> {
        let runs = {
            let pools = self.pools.lock().expect("apps lock");
            let pool = pools
                .get(id)
                .ok_or_else(|| LeaseError::Unknown(id.clone()))?;
            pool.runs.clone()
        };
        let permit = match tokio::time::timeout(QUEUE_WAIT, runs.acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) | Err(_) => return Err(LeaseError::Busy(id.clone(), QUEUE_WAIT)),
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
                    permit,
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
    fn start_done(&self, id: &AppId, process: Option<AppProcess>) -> Option<Granted> {
        let mut pools = self.pools.lock().expect("apps lock");
        let pool = pools.get_mut(id)?;
        pool.starting = pool.starting.saturating_sub(1);
        match process {
            Some(p) => {
                let mut proc = ProcState::new(p);
                let granted = proc.grant();
                pool.procs.push(proc);
                // Room for more requests on it (concurrency > 1): waiters.
                let last = pool.procs.len() - 1;
                hand_off(pool, last);
                Some(granted)
            }
            None => {
                retry_one(pool);
                None
            }
        }
    }

    /// The supervisor answered a start request.
    pub fn started(&self, req: u64, result: Result<AppProcess, String>) {
        if let Some(tx) = self.pending.lock().expect("pending lock").remove(&req) {
            let _ = tx.send(result);
        }
    }

    /// The supervisor started a process on its own (warm pool, or one that was
    /// running before this front end started).
    pub fn spawned(&self, id: &AppId, process: AppProcess) {
        let mut pools = self.pools.lock().expect("apps lock");
        if let Some(pool) = pools.get_mut(id)
            && !pool.procs.iter().any(|p| p.slot == process.slot)
        {
            pool.procs.push(ProcState::new(process));
            let last = pool.procs.len() - 1;
            hand_off(pool, last);
        }
    }

    /// The supervisor says a process ended.
    pub fn exited(&self, id: &AppId, slot: u32) {
        let mut pools = self.pools.lock().expect("apps lock");
        if let Some(pool) = pools.get_mut(id) {
            pool.procs.retain(|p| p.slot != slot);
            retry_one(pool);
        }
    }

    /// Every pending start fails (the supervisor went away).
    pub fn fail_pending(&self) {
        self.pending.lock().expect("pending lock").clear();
        self.pending_cgi.lock().expect("pending lock").clear();
    }

    fn release(&self, lease: &mut Lease) {
        let mut pools = self.pools.lock().expect("apps lock");
        let Some(pool) = pools.get_mut(&lease.app) else {
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
        p.active = p.active.saturating_sub(1);
        p.served += 1;
        p.fresh = false;
        if p.active == 0 {
            p.idle_since = Instant::now();
        }
        let room = concurrency as usize;
        if let Some(conn) = lease.conn.take()
            && p.conns.len() < room
        {
            p.conns.push(conn);
        }
        if let Some(conn) = lease.fcgi.take()
            && p.fcgis.len() < room
        {
            p.fcgis.push(conn);
        }
        if max_requests > 0 && p.served >= max_requests {
            p.draining = true;
        }
        if lease.broken || (p.draining && p.active == 0) {
            pool.procs.remove(i);
            // Under the lock: the supervisor hears of the retirement before
            // any request can ask it for a replacement (it would still
            // count the old process against max_processes).
            self.retire(&lease.app, lease.slot);
            retry_one(pool);
        } else {
            hand_off(pool, i);
        }
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

/// Process `i` can take requests again: as many as it has room for go to the
/// oldest waiting requests still there.
fn hand_off(pool: &mut AppPool, i: usize) {
    let AppPool {
        procs,
        waiters,
        plan,
        ..
    } = pool;
    let p = &mut procs[i];
    while !p.draining && p.active < plan.pool.concurrency {
        let Some(w) = waiters.pop_front() else { return };
        if let Err(Grant::Process(back)) = w.send(Grant::Process(p.grant())) {
            // That request gave up waiting: its share comes back.
            p.active -= 1;
            p.conns.extend(back.conn);
            p.fcgis.extend(back.fcgi);
        }
    }
}

/// Room for one more process: the oldest waiting request may start it.
fn retry_one(pool: &mut AppPool) {
    while let Some(w) = pool.waiters.pop_front() {
        if w.send(Grant::Retry).is_ok() {
            break;
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
}

impl Drop for Lease {
    fn drop(&mut self) {
        let apps = self.apps.clone();
        apps.release(self);
    }
}
