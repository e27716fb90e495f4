//! The supervisor: the root side of berth. It reads and validates the
//! configuration, binds listeners, opens log files (never through symlinks), starts
//! the front end as `server.user` and sends it a [`Plan`]. It handles signals
//! (SIGHUP reload, SIGUSR1 reopen logs, SIGTERM/SIGINT drain) and restarts the front
//! end if it dies. It never reads a byte from a client.
//!
//! Lifecycle: [`run`] → `Listeners::sync` + `open_logs` → `spawn_front` → event loop.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{error, info, warn};
use tracing_subscriber::filter::LevelFilter;

mod apps;
pub mod cgroup;
pub mod cluster;
mod control;
mod discovery;
mod events;
mod meter;
mod rotate;
pub mod spawn;
mod status;

use crate::config::{self, Config, Problems};
use crate::ipc::{self, ListenerKind, ListenerSpec, Plan, SitePlan, ToFront, ToSupervisor};
use crate::sys::{self, Identity};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration")]
    Config(Problems),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("cannot bind the gossip socket (UDP) at {addr}: {source}")]
    Gossip { addr: SocketAddr, source: io::Error },
    #[error("log file {path}: {source}")]
    Log { path: PathBuf, source: io::Error },
    #[error("directory {path}: {why}")]
    Dir { path: PathBuf, why: String },
    #[error("front end user {user:?}: {why}")]
    FrontUser { user: String, why: String },
    #[error("cannot start the front end: {0}")]
    Spawn(io::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The fd of the IPC socket in the front end.
pub const FRONT_IPC_FD: i32 = 3;

/// Runs berth until SIGTERM/SIGINT. Returns after the front end has drained.
pub fn run(path: &Path, level: LevelFilter) -> Result<(), Error> {
    let config = config::load(path).map_err(Error::Config)?;
    crate::logging::set_rate(config.server.log_rate);
    let root = rustix::process::geteuid().is_root();
    if !root {
        let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| "?".into());
        warn!(
            "not started as root: running without switching users; the front end (and every app) runs as {me:?} (uid {})",
            rustix::process::geteuid().as_raw()
        );
    }
    let state = prepare_dir(&config.server.state_dir)?;
    let front = if root {
        Some(front_identity(&config.server.user)?)
    } else {
        None
    };
    tmp_dir(&state, front.as_ref())?;
    let cgroups = start_cgroups(&config);
    // The meter's figures for the status page; one waits at most (a newer
    // one comes every interval).
    let (views_tx, views) = mpsc::channel(1);
    let meter = start_meter(&config, cgroups.clone(), root, views_tx);
    let control = control::Control::new(&config, path);
    let cgroups_name = cgroups.kind().name();
    let apps =
        apps::AppManager::new(&config, front.as_ref(), root, cgroups).map_err(|e| Error::Dir {
            path: config.server.state_dir.join("apps"),
            why: e.to_string(),
        })?;
    let mut sup = Supervisor {
        path: path.to_path_buf(),
        config,
        root,
        level,
        listeners: Listeners::default(),
        gossip: cluster::Gossip::default(),
        generation: 0,
        apps,
        meter,
        front: FrontEnd::new(),
        started: std::time::SystemTime::now(),
        cgroups_name,
        last_view: None,
        status_frames: None,
        rotation: rotate::Rotation::default(),
        control,
        awaiting: Vec::new(),
        discovery: None,
        discovery_tx: None,
    };
    discovery::log_notes(&[], sup.config.discovery.as_ref());
    let logs = sup.open_logs()?;
    sup.use_logs(&logs)?;
    crate::logging::set_file(File::from(logs.error.try_clone()?));
    report_own_files(&sup.config, None);
    sup.listeners.sync(&sup.config)?;
    sup.gossip = sup.gossip.next(&sup.config)?;
    sup.control.sync(&sup.config, &sup.path, root);
    raise_nofile_limit();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(sup.serve(logs, views));
    sup.control.close();
    // Whatever way the loop ended, no app outlives berth (the front end goes
    // with the supervisor: its parent-death signal).
    drop(sup.front.current.take());
    sup.apps.stop_all();
    if let Some(meter) = sup.meter.take() {
        meter.stop();
    }
    if result.is_ok() {
        info!("stopped");
    }
    crate::tenant_log::flush_all();
    result
}

/// Says, in berth's log and in the tenant's error log, what became of each
/// tenant's own file that is refused now, or was refused before (`previous`:
/// the configuration it replaces; a file refused the same way again is not
/// said again).
fn report_own_files(config: &Config, previous: Option<&Config>) {
    for t in &config.tenants {
        let before = previous.and_then(|p| p.tenants.iter().find(|x| x.name == t.name));
        report_own_file(t, before);
    }
}

/// [`report_own_files`] for one tenant, which was `before`: its own file,
/// and each of its sites'.
fn report_own_file(t: &crate::config::Tenant, before: Option<&crate::config::Tenant>) {
    let mut pairs = vec![(t.own.as_ref(), before.and_then(|b| b.own.as_ref()))];
    for site in &t.sites {
        let was = before
            .and_then(|b| b.sites.iter().find(|s| s.hosts == site.hosts))
            .and_then(|s| s.own.as_ref());
        pairs.push((site.own.as_ref(), was));
    }
    for (own, was) in pairs {
        if let Some(own) = own {
            report_one(&t.name, own, was);
        }
    }
}

/// One own file of tenant `tenant`, which was `before`.
fn report_one(
    tenant: &str,
    own: &crate::config::own::OwnFile,
    before: Option<&crate::config::own::OwnFile>,
) {
    use crate::config::own::OwnState;
    let news = match before {
        _ if own.refused() => {
            before.is_none_or(|b| b.state != own.state || b.problems != own.problems)
        }
        // Mended: say so once.
        Some(b) => b.refused() && own.state == OwnState::InUse,
        None => false,
    };
    if !news {
        return;
    }
    let log = crate::tenant_log::get(tenant);
    let say = |text: String| {
        if let Some(log) = &log {
            log.line("berth", text.as_bytes());
        }
    };
    for p in &own.problems {
        warn!("tenant {tenant}: own file: {p}");
        say(format!("your file: {p}"));
    }
    if own.refused() {
        warn!("tenant {tenant}: own file {}", own.summary());
    } else {
        info!("tenant {tenant}: own file {}", own.summary());
    }
    say(format!("your file {}", own.summary()));
}

/// Chooses the cgroup backend (said once), and sweeps what a berth that did
/// not stop cleanly left in this one's cgroups.
fn start_cgroups(config: &Config) -> cgroup::Cgroups {
    let cg = if config.server.cgroups {
        cgroup::Cgroups::detect(&cgroup::instance_name(&config.server.state_dir))
    } else {
        cgroup::Cgroups::none("cgroups = \"none\" in [server]")
    };
    match cg.kind() {
        cgroup::Kind::None => warn!(
            "cgroups: none ({}); limits fall back to rlimits: memory per process (RLIMIT_DATA), tasks per user (RLIMIT_NPROC), cpu not limited",
            cg.about()
        ),
        kind => info!("cgroups: {} ({})", kind.name(), cg.about()),
    }
    cg.sweep();
    cg
}

/// The front end's usage counts that the meter takes: one entry per
/// configured tenant (a reload may have just removed one: its counts are
/// dropped, the others kept). A message far longer than the configuration
/// is not believed at all (Err: its length): a compromised front end's
/// made-up names would cost the meter memory and time.
fn believable_usage<'a>(
    tenants: Vec<(String, ipc::RequestCounts)>,
    known: impl Iterator<Item = &'a str>,
) -> Result<Vec<(String, ipc::RequestCounts)>, usize> {
    let known: std::collections::HashSet<&str> = known.collect();
    if tenants.len() > 2 * known.len() + 16 {
        return Err(tenants.len());
    }
    let mut seen = std::collections::HashSet::new();
    Ok(tenants
        .into_iter()
        .filter(|(n, _)| known.contains(n.as_str()) && seen.insert(n.clone()))
        .collect())
}

/// The tenants and apps to meter, from a configuration.
fn metered(config: &Config, root: bool) -> Vec<meter::MeteredTenant> {
    config
        .tenants
        .iter()
        .map(|t| meter::MeteredTenant {
            name: t.name.clone(),
            apps: t.apps.iter().map(|a| a.name.clone()).collect(),
            uid: root.then_some(t.uid),
        })
        .collect()
}

/// Opens the usage database (in `state_dir`, root's and checked by
/// [`prepare_dir`]) and starts the meter: metering into the database, and
/// the status page's figures into `views` while an admin listener is
/// configured. Without a database, berth serves on unmetered and says why
/// (the status page keeps its figures, without charts).
fn start_meter(
    config: &Config,
    cgroups: cgroup::Cgroups,
    root: bool,
    views: mpsc::Sender<meter::MeterView>,
) -> Option<meter::Meter> {
    let s = &config.server;
    let path = s.state_dir.join(crate::usage::DB_FILE);
    let writer = match s.meter_interval {
        None => {
            info!("usage metering off (meter_interval = \"off\")");
            None
        }
        Some(interval) => {
            match crate::usage::UsageWriter::spawn(
                path.clone(),
                s.usage_raw_days,
                s.usage_keep_days,
            ) {
                Ok(w) => Some((w, interval)),
                Err(e) => {
                    error!(
                        "usage database {}: {e}; usage is not metered",
                        path.display()
                    );
                    None
                }
            }
        }
    };
    let status = meter::StatusOut {
        views,
        db: writer.as_ref().map(|_| path),
        // The status page's figures, and `berth ctl status`'s.
        on: s.admin.is_some() || s.control.effective(root).is_some(),
    };
    match meter::Meter::start(cgroups, writer, metered(config, root), status) {
        Ok(m) => Some(m),
        Err(e) => {
            error!("cannot start the usage meter: {e}; usage is not metered");
            None
        }
    }
}

struct Supervisor {
    path: PathBuf,
    config: Config,
    root: bool,
    level: LevelFilter,
    listeners: Listeners,
    /// The gossip socket (`[cluster] bind`).
    gossip: cluster::Gossip,
    generation: u64,
    apps: apps::AppManager,
    /// Usage metering into `state_dir/usage.db`, and the status page's
    /// figures (None when its thread could not start: berth serves on,
    /// and says why).
    meter: Option<meter::Meter>,
    front: FrontEnd,
    /// For the status page: when berth started, its cgroup backend, and
    /// the meter's last figures.
    started: std::time::SystemTime,
    cgroups_name: &'static str,
    last_view: Option<meter::MeterView>,
    /// Where snapshots come back to the loop once encoded (set by `serve`).
    status_frames: Option<mpsc::Sender<ipc::Frame>>,
    /// Built-in log rotation (`log_rotate`), on the loop's tick.
    rotation: rotate::Rotation,
    /// The control socket (`berth ctl`).
    control: control::Control,
    /// `berth ctl reload` answers held until the front end serves what
    /// they put to use (see `control_applied`).
    awaiting: Vec<control::Awaiting>,
    /// The discovery watcher, while `[discovery]` is configured, and where
    /// it says a reload is wanted (set by `serve`).
    discovery: Option<discovery::Watcher>,
    discovery_tx: Option<mpsc::Sender<()>>,
}

/// Open log files: one access log per tenant (in config order) and the error log.
struct Logs {
    tenants: Vec<String>,
    access: Vec<OwnedFd>,
    /// Each tenant's `error.log` (its apps' stderr).
    errors: Vec<OwnedFd>,
    /// Each tenant's limits on it.
    limits: Vec<crate::config::ErrorLogLimits>,
    error: OwnedFd,
    /// Each tenant's log directory, and `log_dir`: where rotation renames.
    dirs: Vec<SafeDir>,
    dir: SafeDir,
    /// `audit.log`: a line per control request.
    audit: OwnedFd,
}

impl Logs {
    /// The fds in the order the front end expects: access logs, tenant error
    /// logs, berth's error log.
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds = ipc::borrow_all(&self.access);
        fds.extend(ipc::borrow_all(&self.errors));
        fds.push(self.error.as_fd());
        fds
    }
}

/// The running front end: its process, our end of the channel and what waits
/// to be sent on it.
struct Front {
    child: Child,
    /// Numbers the front ends of this run; events of an earlier one are stale.
    id: u64,
    /// Our end of the channel, registered with the runtime for writability
    /// only: a thread of its own reads it.
    sock: AsyncFd<Arc<OwnedFd>>,
    out: ipc::Outbox,
    started: Instant,
    /// The newest generation it said it serves (`ToSupervisor::Applied`).
    applied: u64,
}

enum Event {
    FromFront(u64, ToSupervisor),
    /// The channel of this front end closed, or carried something unreadable.
    FrontGone(u64, ipc::IpcError),
}

/// Events the front end's reader thread may have waiting for the loop. When
/// they are this many the thread waits, and so, once the socket is full, do
/// the front end's sends: a front end that floods the supervisor (a
/// compromised one) holds up only itself, never the supervisor's memory.
const FRONT_EVENTS: usize = 1024;

/// What the front end is told when the supervisor refuses to run a CGI
/// script: nothing more, whatever the reason (logged here). The reasons
/// come from looking at paths as root ("no such file" or "not under a site
/// root"), which must not tell a compromised front end what exists.
const CGI_REFUSED: &str = "refused by the supervisor (the reason is in its log)";

/// Reads the front end `id`'s messages from `sock` into `events` until the
/// channel closes or breaks (then a last [`Event::FrontGone`]), or the loop
/// is gone. Runs on a thread of its own; waits while `events` is full.
fn read_front(sock: &OwnedFd, id: u64, events: &mpsc::Sender<Event>) {
    loop {
        let event = match ipc::recv::<ToSupervisor>(sock.as_fd()) {
            Ok((msg, _fds)) => Event::FromFront(id, msg),
            Err(e) => {
                let _ = events.blocking_send(Event::FrontGone(id, e));
                return;
            }
        };
        if events.blocking_send(event).is_err() {
            return;
        }
    }
}

/// The first wait before a lost front end is restarted; it doubles up to
/// [`FRONT_BACKOFF_MAX`] while front ends keep dying within a minute.
const FRONT_BACKOFF_START: Duration = Duration::from_millis(500);
const FRONT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A front end that closed its channel is exiting; after this it is killed.
const FRONT_EXIT_GRACE: Duration = Duration::from_secs(2);

/// The front end as the supervisor's loop sees it: the one running, if any;
/// those gone or killed but not reaped yet; when the next one starts. Nothing
/// here ever waits for a front end: messages queue in its [`ipc::Outbox`],
/// exits are collected with `try_wait` on SIGCHLD and every tick.
struct FrontEnd {
    current: Option<Front>,
    /// Front ends not reaped yet, and when one still running gets SIGKILL
    /// (None: it has had it).
    dying: Vec<(Child, Option<Instant>)>,
    restart_at: Option<Instant>,
    backoff: Duration,
    last_id: u64,
    /// berth is stopping: a lost front end is not replaced.
    stopping: bool,
}

impl FrontEnd {
    fn new() -> FrontEnd {
        FrontEnd {
            current: None,
            dying: Vec::new(),
            restart_at: None,
            backoff: FRONT_BACKOFF_START,
            last_id: 0,
            stopping: false,
        }
    }

    /// Queues `msg` for the running front end; dropped when none runs (a new
    /// one gets a fresh plan and every live process). A front end whose queue
    /// is full is lost.
    fn tell(&mut self, msg: &ToFront, fds: Vec<OwnedFd>) {
        match ipc::Frame::encode(msg, fds.len()) {
            Ok(frame) => self.tell_frame(frame, fds),
            Err(e) => error!("cannot send a message to the front end: {e}"),
        }
    }

    /// [`FrontEnd::tell`] of a message encoded beforehand.
    fn tell_frame(&mut self, frame: ipc::Frame, fds: Vec<OwnedFd>) {
        let Some(front) = &mut self.current else {
            return;
        };
        match front.out.push_frame(frame, fds) {
            Ok(()) => {}
            Err(e @ ipc::IpcError::QueueFull { .. }) => {
                self.lose(&format!("reads too slowly: {e}"), Duration::ZERO);
            }
            Err(e) => error!("cannot send a message to the front end: {e}"),
        }
    }

    /// The running front end is gone or of no use: it is killed after
    /// `grace` if it still runs (and reaped whenever it ends), its queue is
    /// dropped, and unless berth is stopping another one starts after the
    /// backoff.
    fn lose(&mut self, why: &str, grace: Duration) {
        let Some(front) = self.current.take() else {
            return;
        };
        let pid = front.child.id();
        if self.stopping {
            info!("front end (pid {pid}) {why}");
        } else {
            if front.started.elapsed() > Duration::from_secs(60) {
                self.backoff = FRONT_BACKOFF_START;
            }
            error!(
                "front end (pid {pid}) {why}; restarting it in {:?}",
                self.backoff
            );
            self.restart_at = Some(Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(FRONT_BACKOFF_MAX);
        }
        self.dying.push((front.child, Some(Instant::now() + grace)));
        self.reap();
    }

    /// Collects front ends that ended, kills those past their grace, and
    /// notices the running one ending.
    fn reap(&mut self) {
        if let Some(front) = &mut self.current
            && !matches!(front.child.try_wait(), Ok(None))
        {
            // Its status is kept in `child`; reported below.
            self.lose("ended", Duration::ZERO);
            return;
        }
        let now = Instant::now();
        self.dying
            .retain_mut(|(child, kill_at)| match child.try_wait() {
                Ok(Some(status)) => {
                    warn!("front end (pid {}) exited ({status})", child.id());
                    false
                }
                Ok(None) => {
                    if kill_at.is_some_and(|at| now >= at) {
                        // Not reaped yet, so the pid is still this process's.
                        let _ = child.kill();
                        *kill_at = None;
                    }
                    true
                }
                Err(e) => {
                    error!("front end (pid {}): {e}", child.id());
                    false
                }
            });
    }

    /// A front end that has not read a byte for `timeout` of what waits for
    /// it is stopped or wedged: lost.
    fn check_stall(&mut self, timeout: Duration) {
        let Some(front) = &self.current else {
            return;
        };
        if let Some(since) = front.out.waiting_since()
            && since.elapsed() >= timeout
        {
            let why = format!(
                "has read nothing for {:.1?} ({} bytes wait for it; front_stall_timeout is {timeout:?})",
                since.elapsed(),
                front.out.bytes()
            );
            self.lose(&why, Duration::ZERO);
        }
    }

    /// Whether no front end runs or waits to be reaped.
    fn all_gone(&self) -> bool {
        self.current.is_none() && self.dying.is_empty()
    }

    /// At the end: SIGKILL to every front end left, and reap them.
    fn kill_all(&mut self) {
        if let Some(front) = self.current.take() {
            self.dying.push((front.child, None));
        }
        for (mut child, _) in self.dying.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends what waits for the front end as its socket takes it; returns when
/// nothing waits or the channel broke. Cancel-safe: the outbox records what
/// went out as it goes.
async fn flush(front: Option<&mut Front>) -> io::Result<()> {
    let Some(front) = front else {
        return std::future::pending().await;
    };
    loop {
        let mut ready = front.sock.writable().await?;
        match ready.try_io(|sock| front.out.flush(sock.get_ref().as_fd())) {
            Ok(result) => return result,
            // The socket is full: wait until the front end reads.
            Err(_would_block) => continue,
        }
    }
}

/// Sleeps until `at` (for ever without one).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Supervisor {
    /// The event loop. It never waits on the front end (invariant 9): what
    /// the front end is sent queues and goes out as it reads, one that stops
    /// reading is replaced after `front_stall_timeout`, and its exit is
    /// noticed on SIGCHLD. SIGTERM asks it to drain while the loop goes on
    /// serving its requests; berth ends when it has exited (or after
    /// `drain_timeout` + 5 s).
    async fn serve(
        &mut self,
        mut logs: Logs,
        mut views: mpsc::Receiver<meter::MeterView>,
    ) -> Result<(), Error> {
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        let mut chld = signal(SignalKind::child())?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (tx, mut rx) = mpsc::channel(FRONT_EVENTS);
        let (frames_tx, mut frames) = mpsc::channel(1);
        self.status_frames = Some(frames_tx);
        let rolling = self.apps.waker();
        let mut calls = self.control.take_calls();
        let (discovery_tx, mut rediscover) = mpsc::channel(1);
        self.discovery_tx = Some(discovery_tx);
        self.watch_discovery();
        self.spawn_front(&logs, tx.clone())?;
        // When berth is stopping: the time by which it ends regardless.
        let mut stopping: Option<Instant> = None;
        info!("berth started from {}", self.path.display());
        loop {
            let flushing = self
                .front
                .current
                .as_ref()
                .is_some_and(|f| !f.out.is_empty());
            let restart_at = self
                .front
                .restart_at
                .filter(|_| self.front.current.is_none() && stopping.is_none());
            tokio::select! {
                result = flush(self.front.current.as_mut()), if flushing => {
                    if let Err(e) = result {
                        self.front.lose(&format!("cannot be written to: {e}"), Duration::ZERO);
                    }
                }
                _ = sleep_until(restart_at), if restart_at.is_some() => {
                    self.front.restart_at = None;
                    self.spawn_front(&logs, tx.clone())?;
                }
                _ = hup.recv() => {
                    if stopping.is_some() {
                        info!("stopping: reload ignored");
                    } else {
                        self.on_reload(&mut logs);
                    }
                }
                _ = usr1.recv() => match self.open_logs().and_then(|l| self.use_logs(&l).map(|()| l)) {
                    Ok(new_logs) => {
                        if let Ok(f) = new_logs.error.try_clone() {
                            crate::logging::set_file(File::from(f));
                        }
                        match dup_all(&new_logs.fds()) {
                            Ok(fds) => {
                                let msg = ToFront::Logs { tenants: new_logs.tenants.clone() };
                                self.front.tell(&msg, fds);
                            }
                            Err(e) => error!("cannot pass reopened logs to the front end: {e}"),
                        }
                        logs = new_logs;
                        info!("log files reopened");
                    }
                    Err(e) => error!("cannot reopen log files: {e}"),
                },
                _ = chld.recv() => {
                    for (app, slot, why) in self.apps.reap() {
                        self.front.tell(&ToFront::Exited { app, slot, why }, Vec::new());
                    }
                    self.front.reap();
                }
                _ = tick.tick() => {
                    self.front.reap();
                    self.front.check_stall(self.config.server.front_stall_timeout);
                    if stopping.is_none() {
                        self.warm();
                        self.rotate_logs(&mut logs);
                        self.roll();
                        self.control_overdue();
                    } else {
                        self.apps.reap_cgi();
                    }
                }
                _ = term.recv() => stopping = stopping.or_else(|| Some(self.begin_stop())),
                _ = int.recv() => stopping = stopping.or_else(|| Some(self.begin_stop())),
                ev = rx.recv() => {
                    // `tx` lives as long as the loop: never None.
                    if let Some(ev) = ev {
                        self.on_event(ev);
                    }
                }
                _ = rolling.notified(), if stopping.is_none() => self.roll(),
                Some(view) = views.recv() => self.on_view(view),
                Some(call) = calls.recv() => self.on_control(call, &mut logs, stopping.is_some()),
                Some(()) = rediscover.recv(), if stopping.is_none() => self.on_reload(&mut logs),
                Some(frame) = frames.recv() => self.front.tell_frame(frame, Vec::new()),
            }
            if let Some(deadline) = stopping {
                let gone = self.front.all_gone();
                if gone || Instant::now() >= deadline {
                    if !gone {
                        warn!("the front end did not exit in time; killing it");
                        self.front.kill_all();
                    }
                    // (`run` stops the apps.)
                    return Ok(());
                }
            }
        }
    }

    /// SIGTERM/SIGINT: the front end is asked to drain. Returns the time by
    /// which berth ends whatever the front end does.
    fn begin_stop(&mut self) -> Instant {
        info!("stopping: draining requests in flight");
        self.front.stopping = true;
        self.front.restart_at = None;
        self.front.tell(&ToFront::Shutdown, Vec::new());
        Instant::now() + self.config.server.limits.drain_timeout + Duration::from_secs(5)
    }

    /// SIGHUP: a valid configuration becomes current and goes to the front
    /// end; an invalid one changes nothing.
    fn on_reload(&mut self, logs: &mut Logs) {
        let _ = self.apply_reload(logs);
    }

    /// The reload of SIGHUP (and `berth ctl reload`): on success the new
    /// configuration is in use; a refusal is logged and returned.
    fn apply_reload(&mut self, logs: &mut Logs) -> Result<(), Error> {
        let noted = self
            .config
            .discovery
            .as_ref()
            .map(|d| d.notes.clone())
            .unwrap_or_default();
        match self.reload() {
            Ok(new_logs) => {
                discovery::log_notes(&noted, self.config.discovery.as_ref());
                self.watch_discovery();
                *logs = new_logs;
                self.use_config(logs);
                Ok(())
            }
            Err(Error::Config(problems)) => {
                for p in problems.iter() {
                    error!("reload: {p}");
                }
                error!(
                    "reload refused: {} problem(s); still serving the previous configuration",
                    problems.len()
                );
                Err(Error::Config(problems))
            }
            Err(e) => {
                error!("reload refused: {e}; still serving the previous configuration");
                Err(e)
            }
        }
    }

    /// Puts `self.config`, just changed, to use: the front end's plan, the
    /// control socket's view, the meter's tenants, the apps (changed ones
    /// restart).
    fn use_config(&mut self, logs: &Logs) {
        self.send_plan(logs);
        self.control.sync(&self.config, &self.path, self.root);
        if let Some(m) = &self.meter {
            m.tenants(metered(&self.config, self.root));
            m.status(self.config.server.admin.is_some() || self.control.on());
        }
        for (app, slot) in self.apps.update(&self.config) {
            let why = "stopped: its configuration changed".to_string();
            self.front
                .tell(&ToFront::Exited { app, slot, why }, Vec::new());
        }
        self.warm();
    }

    /// Starts, replaces, stops or updates the discovery watcher to follow
    /// the configuration.
    fn watch_discovery(&mut self) {
        let Some(found) = &self.config.discovery else {
            self.discovery = None;
            return;
        };
        match &self.discovery {
            Some(w) if w.watches(&found.settings) => w.baseline(&found.scan),
            _ => {
                self.discovery = None;
                let Some(tx) = self.discovery_tx.clone() else {
                    return;
                };
                match discovery::Watcher::start(found, tx) {
                    Ok(w) => self.discovery = Some(w),
                    Err(e) => error!(
                        "discovery: cannot watch {}: {e}; new sites are seen at SIGHUP only",
                        found.settings.root.display()
                    ),
                }
            }
        }
    }

    /// The meter's figures after a sample: with what the loop knows, they
    /// become the front end's status snapshot (when an admin listener is
    /// configured); the meter is told which processes to read next.
    fn on_view(&mut self, view: meter::MeterView) {
        self.last_view = Some(view);
        self.send_status();
        if let Some(m) = &self.meter {
            m.procs(self.apps.pids());
        }
    }

    /// Queues the status snapshot of the last figures for the front end
    /// (replacing one it has not read yet).
    fn send_status(&mut self) {
        let (Some(view), Some(_)) = (&self.last_view, &self.config.server.admin) else {
            return;
        };
        let snapshot = status::snapshot(
            &self.config,
            &self.apps,
            view,
            self.started,
            self.cgroups_name,
        );
        // Encoded off the loop (tens of milliseconds at 1,000 tenants),
        // then queued by it; one that finds another waiting is dropped.
        let Some(frames) = self.status_frames.clone() else {
            return;
        };
        tokio::task::spawn_blocking(move || {
            match ipc::Frame::encode(&ToFront::Status(Box::new(snapshot)), 0) {
                Ok(frame) => {
                    let _ = frames.try_send(frame);
                }
                Err(e) => error!("cannot encode the status snapshot: {e}"),
            }
        });
    }

    /// What the front end's reader thread passed on. Events of a front end
    /// that has been replaced are dropped: their answers would go nowhere.
    fn on_event(&mut self, ev: Event) {
        let current = self.front.current.as_ref().map(|f| f.id);
        match ev {
            Event::FrontGone(id, e) if Some(id) == current => match e {
                ipc::IpcError::Closed => self.front.lose("closed its channel", FRONT_EXIT_GRACE),
                // (A decoding error quotes what the front end sent.)
                e => self.front.lose(
                    &format!("broke its channel: {:?}", e.to_string()),
                    Duration::ZERO,
                ),
            },
            Event::FromFront(id, msg) if Some(id) == current => self.on_request(msg),
            Event::FrontGone(..) | Event::FromFront(..) => {}
        }
    }

    /// One request of the front end, answered through its queue.
    fn on_request(&mut self, msg: ToSupervisor) {
        match msg {
            ToSupervisor::Applied { generation } => {
                // Said once per generation it was sent: repeats, older ones
                // and ones never sent (a front end flooding the channel) are
                // not worth a line each.
                if let Some(front) = &mut self.front.current
                    && generation > front.applied
                    && generation <= self.generation
                {
                    front.applied = generation;
                    info!("front end serving configuration generation {generation}");
                    self.control_applied(generation);
                }
            }
            ToSupervisor::StartProcess { req, app } => {
                let result = self.apps.start(&app);
                self.front
                    .tell(&ToFront::Started { req, result }, Vec::new());
            }
            ToSupervisor::Retire { app, slot } => self.apps.retire(&app, slot),
            ToSupervisor::Usage { tenants } => {
                let known = self.config.tenants.iter().map(|t| t.name.as_str());
                match believable_usage(tenants, known) {
                    Ok(tenants) => {
                        if let Some(m) = &self.meter {
                            m.front(tenants);
                        }
                    }
                    Err(n) => warn!("the front end sent usage counts for {n} tenants; dropped"),
                }
            }
            ToSupervisor::RunCgi {
                req,
                app,
                script,
                env,
            } => {
                let (result, fds) = match self.apps.run_cgi(&app, script, env) {
                    Ok(fds) => (Ok(()), Vec::from(fds)),
                    Err(()) => (Err(CGI_REFUSED.to_string()), Vec::new()),
                };
                self.front.tell(&ToFront::CgiStarted { req, result }, fds);
            }
        }
    }

    /// Loads the configuration again; on success it becomes current.
    fn reload(&mut self) -> Result<Logs, Error> {
        let config = config::load_with(&self.path, Some(&self.config)).map_err(Error::Config)?;
        let old = std::mem::replace(&mut self.config, config);
        let result = (|| {
            let state = prepare_dir(&self.config.server.state_dir)?;
            let front = self.front_identity()?;
            tmp_dir(&state, front.as_ref())?;
            let logs = self.open_logs()?;
            // Bound before the listeners change: a failure leaves both.
            let gossip = self.gossip.next(&self.config)?;
            self.listeners.sync(&self.config)?;
            self.use_logs(&logs)?;
            Ok((logs, gossip))
        })();
        match result {
            Ok((logs, gossip)) => {
                self.gossip = gossip;
                crate::logging::set_rate(self.config.server.log_rate);
                info!("configuration reloaded from {}", self.path.display());
                report_own_files(&self.config, Some(&old));
                Ok(logs)
            }
            Err(e) => {
                self.config = old;
                Err(e)
            }
        }
    }

    /// Carries rolling restarts on (`AppManager::roll`) and tells the front
    /// end what changed.
    fn roll(&mut self) {
        for msg in self.apps.roll() {
            self.front.tell(&msg, Vec::new());
        }
    }

    /// Keeps `min_processes` of every app running and tells the front end.
    fn warm(&mut self) {
        for (app, process) in self.apps.warm() {
            self.front
                .tell(&ToFront::Spawned { app, process }, Vec::new());
        }
        for (app, slot) in self.apps.over_memory() {
            if let Some(m) = &self.meter {
                m.recycled(&app.tenant);
            }
            self.front.tell(&ToFront::Recycle { app, slot }, Vec::new());
        }
    }

    fn front_identity(&self) -> Result<Option<Identity>, Error> {
        if !self.root {
            return Ok(None);
        }
        front_identity(&self.config.server.user).map(Some)
    }

    /// Starts a front end, with a thread reading its channel into `events`,
    /// and queues its plan and every live app process for it.
    fn spawn_front(&mut self, logs: &Logs, events: mpsc::Sender<Event>) -> Result<(), Error> {
        let identity = self.front_identity()?;
        let (ours, theirs) = ipc::pair()?;
        // Exec through an fd opened now: the front user may not be able to reach
        // the binary's directory (e.g. /root/.cargo/bin).
        let exe = File::open("/proc/self/exe")?;
        let exe_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&exe));
        let mut cmd = Command::new(&exe_path);
        cmd.arg0("berth")
            .arg("front")
            .arg("--log-level")
            .arg(self.level.to_string().to_lowercase())
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::from(io::stderr().as_fd().try_clone_to_owned()?))
            .stderr(Stdio::inherit());
        sys::prepare_child(&mut cmd, &theirs, FRONT_IPC_FD, identity.clone());
        let child = cmd.spawn().map_err(Error::Spawn)?;
        drop(theirs);
        drop(exe);
        let sock = Arc::new(ours);
        self.front.last_id += 1;
        let id = self.front.last_id;
        match &identity {
            Some(ident) => info!(
                "front end started (pid {}) as {} (uid {}, gid {})",
                child.id(),
                self.config.server.user,
                ident.uid,
                ident.gid
            ),
            None => info!("front end started (pid {})", child.id()),
        }
        let reader = sock.clone();
        let spawned = std::thread::Builder::new()
            .name("front-channel".into())
            .spawn(move || read_front(&reader, id, &events));
        let sock = spawned.and_then(|_| sys::watch_fd(sock, Interest::WRITABLE));
        let sock = match sock {
            Ok(sock) => sock,
            Err(e) => {
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
                return Err(e.into());
            }
        };
        self.front.current = Some(Front {
            child,
            id,
            sock,
            out: ipc::Outbox::new(ipc::OUTBOX_LIMIT),
            started: Instant::now(),
            applied: 0,
        });
        self.send_plan(logs);
        for (app, process) in self.apps.live() {
            self.front
                .tell(&ToFront::Spawned { app, process }, Vec::new());
        }
        self.send_status();
        Ok(())
    }

    /// Queues the current configuration for the front end, with copies of the
    /// listener and log fds (kept open until they are sent).
    fn send_plan(&mut self, logs: &Logs) {
        self.generation += 1;
        let (plan, mut fds) = self.plan(logs);
        fds.extend(logs.fds());
        match dup_all(&fds) {
            Ok(fds) => self.front.tell(&ToFront::Plan(Box::new(plan)), fds),
            Err(e) => error!("cannot pass the configuration to the front end: {e}"),
        }
    }

    fn plan(&self, logs: &Logs) -> (Plan, Vec<BorrowedFd<'_>>) {
        let cfg = &self.config;
        let mut listeners = Vec::new();
        let mut fds = Vec::new();
        for (spec, fd) in &self.listeners.bound {
            listeners.push(*spec);
            fds.push(fd.as_fd());
        }
        // The gossip socket right after the listeners.
        let cluster = match (cluster::plan(cfg), self.gossip.fd()) {
            (Some(plan), Some(fd)) => {
                fds.push(fd);
                Some(plan)
            }
            _ => None,
        };
        let sites = cfg
            .tenants
            .iter()
            .flat_map(|t| {
                t.sites.iter().map(|s| SitePlan {
                    tenant: t.name.clone(),
                    hosts: s.hosts.clone(),
                    root: s.root.clone(),
                    tls: s
                        .tls
                        .as_ref()
                        .map(|t| (t.cert_pem.clone(), t.key_pem.clone())),
                    routes: s.routes.clone(),
                    max_body: s.max_body,
                    root_owner: s.owner,
                    private_files: t
                        .own
                        .iter()
                        .map(|o| o.path.clone())
                        .chain(s.own.iter().map(|o| o.path.clone()))
                        .chain(s.own_config.clone())
                        .filter(|p| p.starts_with(&s.root))
                        .collect(),
                })
            })
            .collect();
        let plan = Plan {
            generation: self.generation,
            limits: cfg.server.limits.clone(),
            listeners,
            logs: logs.tenants.clone(),
            error_logs: logs.limits.clone(),
            tenant_limits: cfg.tenants.iter().map(|t| t.limits).collect(),
            sites,
            default_tls_host: cfg.default_tls_host().map(str::to_owned),
            apps: cfg
                .tenants
                .iter()
                .flat_map(|t| {
                    t.apps.iter().map(|a| ipc::AppPlan {
                        id: ipc::AppId {
                            tenant: t.name.clone(),
                            app: a.name.clone(),
                        },
                        protocol: a.protocol,
                        pool: a.pool.clone(),
                        program: a.command.first().cloned().unwrap_or_default().into(),
                    })
                })
                .collect(),
            tmp_dir: cfg.server.state_dir.join(TMP_DIR),
            log_rate: cfg.server.log_rate,
            meter_interval: cfg.server.meter_interval,
            admin_users: cfg
                .server
                .admin
                .as_ref()
                .and_then(|a| a.htpasswd.as_ref())
                .map(|(_, text)| text.clone()),
            cluster,
        };
        (plan, fds)
    }

    /// Opens `log_dir/TENANT/access.log` for every tenant and `log_dir/error.log`
    /// (each tenant's directory root's, with the tenant's group, 0750:
    /// `rotate::restrict`).
    fn open_logs(&self) -> Result<Logs, Error> {
        let dir = prepare_dir(&self.config.server.log_dir)?;
        let mut tenants = Vec::new();
        let mut access = Vec::new();
        let mut errors = Vec::new();
        let mut limits = Vec::new();
        let mut dirs = Vec::new();
        for t in &self.config.tenants {
            let tdir = sub_dir(&dir, &t.name)?;
            let group = self.root.then_some(t.gid);
            rotate::restrict(&tdir, group)?;
            access.push(open_log(&tdir, "access.log", group)?);
            errors.push(open_log(&tdir, "error.log", group)?);
            limits.push(t.error_log);
            tenants.push(t.name.clone());
            dirs.push(tdir);
        }
        let error = open_log(&dir, "error.log", None)?;
        let audit = control::open_audit(&dir, &self.config, self.root)?;
        Ok(Logs {
            tenants,
            access,
            errors,
            limits,
            error,
            dirs,
            dir,
            audit,
        })
    }

    /// Makes `logs` the tenants' error logs of this process (the app
    /// processes' output goes there, see [`crate::tenant_log`]).
    fn use_logs(&self, logs: &Logs) -> Result<(), Error> {
        for ((tenant, fd), limits) in logs.tenants.iter().zip(&logs.errors).zip(&logs.limits) {
            crate::tenant_log::open(tenant, File::from(fd.try_clone()?), Some(*limits));
        }
        crate::tenant_log::retain(&logs.tenants);
        self.use_audit(logs)
    }
}

/// A directory berth creates files in (`state_dir`, `log_dir` and the
/// tenants' log directories), reached from `/` without following a symlink
/// and checked all the way ([`prepare_dir`]); everything berth creates,
/// opens or changes in it goes through `fd`, never through the path again.
struct SafeDir {
    /// `O_PATH`: for `openat` and `mkdirat`.
    fd: OwnedFd,
    /// For messages.
    path: PathBuf,
}

/// Opens `path`, creating what is missing (0755), as a [`SafeDir`]. These
/// are the directories log files are created in: if a tenant could write
/// to one, or to any directory above it, it could make root write (or
/// chown) through a symlink (invariant 7).
///
/// The path is walked from `/` one component at a time, each opened
/// `O_PATH | O_NOFOLLOW` relative to the one before: a symbolic link
/// anywhere on the way is refused, naming it. As OpenSSH's `safe_path`
/// does, every directory above `path` must belong to root (or to berth's
/// own uid when not root) and be writable by nobody else unless it has the
/// sticky bit (like /tmp: there an entry owned by root cannot be renamed
/// away); `path` itself must be berth's and writable by nobody else
/// ([`dir_rule`]). Otherwise whoever can write to a directory on the way
/// could swap what is below it for a symlink between two steps of berth's,
/// as a tenant did with `renameat2(RENAME_EXCHANGE)` in a loop. `..` is
/// taken lexically, which is what it means when no component is a link.
fn prepare_dir(path: &Path) -> Result<SafeDir, Error> {
    use rustix::fs::openat;
    let fail = |why: String| Error::Dir {
        path: path.to_path_buf(),
        why,
    };
    if !path.is_absolute() {
        return Err(fail("is not an absolute path".into()));
    }
    let plain = crate::config::plain_path(path);
    let names: Vec<&std::ffi::OsStr> = plain.iter().skip(1).collect();
    let walk_flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::open("/", walk_flags | OFlags::DIRECTORY, Mode::empty())
        .map_err(|e| fail(format!("/: {e}")))?;
    let mut dir = SafeDir {
        fd,
        path: PathBuf::from("/"),
    };
    let last = names.len();
    check_dir(&dir, last == 0).map_err(fail)?;
    for (i, name) in names.into_iter().enumerate() {
        let walked = dir.path.join(name);
        let fd = match openat(&dir.fd, name, walk_flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => create_dir(&dir, name).map_err(fail)?,
            Err(e) => return Err(fail(format!("{}: {e}", walked.display()))),
        };
        dir = SafeDir { fd, path: walked };
        check_dir(&dir, i + 1 == last).map_err(fail)?;
    }
    Ok(dir)
}

/// `parent/name` as a [`SafeDir`] (a tenant's log directory), created if
/// missing; refused if it is a symlink or not berth's own, as in
/// [`prepare_dir`].
fn sub_dir(parent: &SafeDir, name: &str) -> Result<SafeDir, Error> {
    let path = parent.path.join(name);
    let fail = |why: String| Error::Dir {
        path: path.clone(),
        why,
    };
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(&parent.fd, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => create_dir(parent, name).map_err(fail)?,
        Err(e) => return Err(fail(e.to_string())),
    };
    let dir = SafeDir {
        fd,
        path: path.clone(),
    };
    check_dir(&dir, true).map_err(fail)?;
    Ok(dir)
}

/// Creates `parent/name` (0755 whatever the umask) and opens it `O_PATH`.
fn create_dir(parent: &SafeDir, name: impl AsRef<std::ffi::OsStr>) -> Result<OwnedFd, String> {
    use rustix::fs::{mkdirat, openat};
    let name = name.as_ref();
    let path = parent.path.join(name);
    match mkdirat(&parent.fd, name, Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
    }
    let at = |e: rustix::io::Errno| format!("{}: {e}", path.display());
    let fd = openat(
        &parent.fd,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(at)?;
    // (An O_PATH fd cannot be chmodded; a link found here is refused by the
    // caller's check, and "." of it is never opened.)
    if let Ok(opened) = openat(
        &fd,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        rustix::fs::fchmod(&opened, Mode::from_raw_mode(0o755)).map_err(at)?;
    }
    Ok(fd)
}

/// Checks what `dir.fd` is: a directory (not a symlink) that passes
/// [`dir_rule`]. The message names the directory.
fn check_dir(dir: &SafeDir, last: bool) -> Result<(), String> {
    use rustix::fs::FileType;
    let name = dir.path.display();
    let st = rustix::fs::fstat(&dir.fd).map_err(|e| format!("{name}: {e}"))?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => {}
        FileType::Symlink => {
            return Err(format!(
                "{name} is a symbolic link; refusing to follow it (give the real path)"
            ));
        }
        _ => return Err(format!("{name} is not a directory")),
    }
    dir_rule(st.st_uid, st.st_mode, last).map_err(
        |why| {
            if last { why } else { format!("{name} {why}") }
        },
    )
}

/// The rule for a directory berth creates files in (`last`) or one above
/// it, given its owner and mode: why not, if it does not hold. Shared by
/// `prepare_dir` and `berth check` (`config`), so that both say the same.
///
/// - `last`: owned by berth's own uid, writable by nobody else;
/// - above it: owned by root or berth's own uid, and writable by nobody
///   else unless sticky (then nobody but root, berth and the owner of an
///   entry can rename it: what berth walks through stays put).
pub fn dir_rule(uid: u32, mode: u32, last: bool) -> Result<(), String> {
    let me = rustix::process::geteuid().as_raw();
    let owner = |uid: u32| match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("uid {uid} ({:?})", u.name),
        _ => format!("uid {uid}"),
    };
    let writable = mode & 0o022 != 0;
    let sticky = mode & libc::S_ISVTX != 0;
    let modes = mode & 0o7777;
    if last {
        if uid != me {
            let who = if me == 0 { " (root)" } else { "" };
            return Err(format!("is owned by {}, not by uid {me}{who}", owner(uid)));
        }
        if writable {
            return Err(format!("is writable by group or others (mode {modes:o})"));
        }
        return Ok(());
    }
    let why = "whoever can write there could swap a directory below it for a symlink while berth opens its files; every directory above state_dir and log_dir must be root's (or berth's own) and writable by nobody else unless sticky, like /tmp";
    if uid != 0 && uid != me {
        let allowed = if me == 0 {
            "root".to_string()
        } else {
            format!("root or berth's own uid {me}")
        };
        return Err(format!(
            "is owned by {} (mode {modes:o}), not {allowed}: {why}",
            owner(uid)
        ));
    }
    if writable && !sticky {
        return Err(format!(
            "is writable by group or others without the sticky bit (mode {modes:o}): {why}"
        ));
    }
    Ok(())
}

/// The front end's directory for temporary files, under `state_dir`.
const TMP_DIR: &str = "tmp";

/// Creates the front end's directory for temporary files (request and
/// response bodies too large for memory, kept as unlinked `O_TMPFILE`s) in
/// `state`: owned by the front end's user, mode 0700, so no tenant can read
/// what passes through it, nor plant anything in it. A leftover entry of
/// any other kind, or a symlink, is refused. Created, opened and chowned
/// through `state`'s fd.
fn tmp_dir(state: &SafeDir, front: Option<&Identity>) -> Result<(), Error> {
    use rustix::fs::{AtFlags, FileType, mkdirat, openat, statat};
    let path = state.path.join(TMP_DIR);
    let fail = |why: String| Error::Dir {
        path: path.clone(),
        why,
    };
    match statat(&state.fd, TMP_DIR, AtFlags::SYMLINK_NOFOLLOW) {
        Err(rustix::io::Errno::NOENT) => mkdirat(&state.fd, TMP_DIR, Mode::from_raw_mode(0o700))
            .map_err(|e| fail(format!("cannot create: {e}")))?,
        Err(e) => return Err(fail(e.to_string())),
        Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {
            return Err(fail(
                "is not a directory (a symlink?); refusing to use it".into(),
            ));
        }
        Ok(_) => {}
    }
    let dir = openat(
        &state.fd,
        TMP_DIR,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
        Mode::empty(),
    )
    .map_err(|e| fail(e.to_string()))?;
    if let Some(id) = front {
        rustix::fs::fchown(
            &dir,
            Some(rustix::fs::Uid::from_raw(id.uid)),
            Some(rustix::fs::Gid::from_raw(id.gid)),
        )
        .map_err(|e| fail(e.to_string()))?;
    }
    rustix::fs::fchmod(&dir, Mode::from_raw_mode(0o700)).map_err(|e| fail(e.to_string()))?;
    Ok(())
}

/// Opens `dir/name` for appending, through `dir`'s fd, refusing symlinks
/// (O_NOFOLLOW) and anything but a regular file. With `group`, the file is
/// made readable by that group (the tenant reads its own access log).
fn open_log(dir: &SafeDir, name: &str, group: Option<u32>) -> Result<OwnedFd, Error> {
    let path = dir.path.join(name);
    let fail = |source: io::Error| Error::Log {
        path: path.clone(),
        source,
    };
    let fd = rustix::fs::openat(
        &dir.fd,
        name,
        OFlags::WRONLY
            | OFlags::APPEND
            | OFlags::CREATE
            | OFlags::NOFOLLOW
            | OFlags::CLOEXEC
            | OFlags::NOCTTY
            | OFlags::NONBLOCK,
        Mode::from_raw_mode(0o640),
    )
    .map_err(|e| fail(e.into()))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| fail(e.into()))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(fail(io::Error::other("not a regular file")));
    }
    if st.st_nlink > 1 {
        return Err(fail(io::Error::other(
            "has more than one hard link; refusing to write to it",
        )));
    }
    // Back to blocking writes (NONBLOCK only guarded the open against FIFOs).
    rustix::fs::fcntl_setfl(&fd, OFlags::APPEND).map_err(|e| fail(e.into()))?;
    if let Some(gid) = group {
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::ROOT),
            Some(rustix::fs::Gid::from_raw(gid)),
        )
        .map_err(|e| fail(e.into()))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o640)).map_err(|e| fail(e.into()))?;
    }
    Ok(fd)
}

/// Bound listening sockets, kept across reloads so that a reload never closes a
/// socket that stays in the configuration.
#[derive(Default)]
struct Listeners {
    bound: BTreeMap<ListenerSpec, OwnedFd>,
}

impl Listeners {
    /// Binds what the configuration adds and closes what it removed. Nothing
    /// changes if any new address cannot be bound.
    fn sync(&mut self, cfg: &Config) -> Result<(), Error> {
        let spec = |kind| move |&addr| ListenerSpec { addr, kind };
        let wanted: Vec<ListenerSpec> = cfg
            .server
            .listen
            .iter()
            .map(spec(ListenerKind::Plain))
            .chain(cfg.server.tls_listen.iter().map(spec(ListenerKind::Tls)))
            .chain(cfg.server.admin.iter().map(|a| ListenerSpec {
                addr: a.listen,
                kind: ListenerKind::Admin,
            }))
            .collect();
        let mut next = BTreeMap::new();
        for spec in &wanted {
            // The same address may move between listen, tls_listen and
            // admin_listen.
            let existing = self
                .bound
                .iter()
                .find(|(s, _)| s.addr == spec.addr)
                .map(|(s, _)| *s);
            let fd = match existing.and_then(|s| self.bound.get(&s)) {
                Some(fd) => fd.try_clone()?,
                None => bind(spec.addr)?,
            };
            next.insert(*spec, fd);
        }
        self.bound = next;
        Ok(())
    }
}

fn bind(addr: SocketAddr) -> Result<OwnedFd, Error> {
    use rustix::net::{SocketFlags, SocketType};
    let fail = |e: rustix::io::Errno| Error::Listen {
        addr,
        source: e.into(),
    };
    let fd = socket_at(addr, SocketType::STREAM, SocketFlags::CLOEXEC, true).map_err(fail)?;
    rustix::net::listen(&fd, 4096).map_err(fail)?;
    Ok(fd)
}

/// A socket of `kind` bound at `addr` (listeners and the gossip socket):
/// IPv6 only for an IPv6 address, `SO_REUSEADDR` when `reuse_addr`.
pub(super) fn socket_at(
    addr: SocketAddr,
    kind: rustix::net::SocketType,
    flags: rustix::net::SocketFlags,
    reuse_addr: bool,
) -> rustix::io::Result<OwnedFd> {
    use rustix::net::{AddressFamily, sockopt};
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = rustix::net::socket_with(family, kind, flags, None)?;
    if reuse_addr {
        sockopt::set_socket_reuseaddr(&fd, true)?;
    }
    if addr.is_ipv6() {
        sockopt::set_ipv6_v6only(&fd, true)?;
    }
    rustix::net::bind(&fd, &addr)?;
    Ok(fd)
}

/// Lets the front end hold many connections: raise the soft open-file limit to
/// the hard one (the front end inherits it; app processes get their tenant's
/// `open_files` instead, set by `spawn`). As root, the hard limit first goes
/// up to [`NOFILE_WANTED`] (as far as `fs.nr_open` allows): the front end
/// holds a descriptor per site root and two per tenant besides its clients'
/// (10,000 discovered sites of 1,000 tenants are 12,000).
fn raise_nofile_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if rustix::process::geteuid().is_root() && lim.maximum.is_some_and(|m| m < NOFILE_WANTED) {
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(NOFILE_WANTED);
        let raised = rustix::process::Rlimit {
            current: lim.current,
            maximum: Some(NOFILE_WANTED.min(nr_open)),
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => lim = getrlimit(Resource::Nofile),
            Err(e) => warn!(
                "cannot raise the open-file limit from {} to {} ({e}: no CAP_SYS_RESOURCE?); the front end holds a descriptor per site root and per client",
                lim.maximum.unwrap_or(0),
                NOFILE_WANTED.min(nr_open)
            ),
        }
    }
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
}

/// The open-file limit berth raises its own to, as root (nginx's
/// `worker_rlimit_nofile`, chosen for it): systemd's default hard limit.
const NOFILE_WANTED: u64 = 524_288;

/// The uid, gid and groups the front end runs as (when berth is root).
fn front_identity(name: &str) -> Result<Identity, Error> {
    let fail = |why: String| Error::FrontUser {
        user: name.to_string(),
        why,
    };
    let user = nix::unistd::User::from_name(name)
        .map_err(|e| fail(e.to_string()))?
        .ok_or_else(|| fail("no such user".into()))?;
    if user.uid.is_root() {
        return Err(fail("the front end must not run as root".into()));
    }
    Identity::of(&user).map_err(|e| fail(format!("cannot read its groups: {e}")))
}

/// Copies of `fds` that stay open while a frame waits to be sent.
fn dup_all(fds: &[BorrowedFd<'_>]) -> io::Result<Vec<OwnedFd>> {
    fds.iter().map(|fd| fd.try_clone_to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_front_ends_usage_counts_for_made_up_or_repeated_tenants_are_not_believed() {
        let c = ipc::RequestCounts {
            requests: 1,
            ..Default::default()
        };
        let known = ["a", "b"];
        let msg = vec![
            ("a".to_string(), c),
            ("zz".to_string(), c),
            ("a".to_string(), c),
            ("b".to_string(), c),
        ];
        let kept = believable_usage(msg, known.into_iter()).unwrap();
        let names: Vec<&str> = kept.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let flood: Vec<_> = (0..100_000).map(|i| (format!("x{i}"), c)).collect();
        assert_eq!(believable_usage(flood, known.into_iter()), Err(100_000));
    }
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The finding: a front end (a compromised one) flooding `Applied` frames
    /// grew the supervisor from 15 to 145 MB, the reader thread queueing
    /// every frame in an unbounded channel for a loop that could not keep
    /// up. Now the reader waits when `FRONT_EVENTS` wait, the socket fills,
    /// and the flooding front end waits in its sends.
    #[test]
    fn a_front_end_flooding_its_channel_waits_and_the_queue_stays_bounded() {
        const FRAMES: usize = 200_000;
        let (ours, theirs) = ipc::pair().unwrap();
        let (tx, mut rx) = mpsc::channel(FRONT_EVENTS);
        let reader = std::thread::spawn(move || read_front(&ours, 7, &tx));
        let sent = Arc::new(AtomicUsize::new(0));
        let flood = {
            let sent = sent.clone();
            std::thread::spawn(move || {
                for generation in 0..FRAMES as u64 {
                    let msg = ToSupervisor::Applied { generation };
                    ipc::send(theirs.as_fd(), &msg, &[]).unwrap();
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                theirs
            })
        };
        // Nobody takes events: the flood stops when the queue and the socket
        // are full (it has, once nothing more is sent for a while).
        let mut last = usize::MAX;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = sent.load(Ordering::Relaxed);
            if now == last || now == FRAMES || Instant::now() > deadline {
                break;
            }
            last = now;
        }
        let held = sent.load(Ordering::Relaxed);
        assert!(
            held < FRAMES,
            "the front end sent all {FRAMES} frames to a supervisor that took none"
        );
        assert_eq!(rx.len(), FRONT_EVENTS, "{held} frames sent");
        // Taken, every frame arrives, in order.
        for want in 0..FRAMES as u64 {
            match rx.blocking_recv() {
                Some(Event::FromFront(7, ToSupervisor::Applied { generation })) => {
                    assert_eq!(generation, want)
                }
                _ => panic!("frame {want} missing"),
            }
        }
        drop(flood.join().unwrap());
        assert!(matches!(
            rx.blocking_recv(),
            Some(Event::FrontGone(7, ipc::IpcError::Closed))
        ));
        reader.join().unwrap();
    }
}
