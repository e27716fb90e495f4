//! The front end: the unprivileged process that handles every client byte.
//!
//! Request flow, one file per step: [`conn`] (accept, TLS handshake, HTTP/1.1 and
//! HTTP/2, timeouts) → [`tls`] (certificate by SNI) → [`vhost`] (host → site,
//! path → route) → [`handler`] (auth, then static files, redirect, or an app:
//! [`app_route`] → [`tenants`] → [`apps`]) → [`static_files`] →
//! [`access_log`]. Errors become responses in [`respond`].
//!
//! Lifecycle ([`run`]): adopt the IPC socket (fd 3) → wait for the first
//! [`Plan`] → serve. Each new plan becomes a new [`Generation`], swapped in
//! atomically: requests already running finish with the generation they started
//! with, the next request on the same connection sees the new one. When the
//! supervisor says `Shutdown` (or goes away), stop accepting and drain.

pub mod access_log;
pub mod admin;
pub mod app_route;
pub mod apps;
pub mod auth;
pub mod body;
pub mod buffer;
mod conn;
pub mod farm;
pub mod file_cache;
mod h1;
mod handler;
pub mod path;
pub mod request_body;
pub mod respond;
pub mod spool;
pub mod static_files;
pub mod tenants;
pub mod tls;
pub mod usage;
pub mod vhost;

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::config::{Action, ClientLimits, ErrorLogLimits};
use crate::ipc::{self, ListenerSpec, Plan, ToFront, ToSupervisor};
use crate::tenant_log::TenantLog;
use auth::Htpasswd;
use static_files::Root;
use vhost::Router;

/// Everything one configuration generation needs to answer requests.
pub struct Generation {
    pub number: u64,
    /// Tenant names in the order of the access logs.
    pub log_names: Vec<String>,
    pub limits: ClientLimits,
    /// How often the tenants' counts go to the supervisor (read at start).
    pub meter_interval: Option<Duration>,
    pub router: Router<SiteRt>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The host a TLS connection without SNI is treated as having named (its
    /// site's certificate was offered).
    pub default_tls_host: Option<String>,
    pub http: auto::Builder<TokioExecutor>,
    /// The directory for temporary files (request and response bodies).
    pub tmp: spool::TmpDir,
    /// Who may see the admin listener's pages (None: no admin listener).
    pub admin: Option<admin::AdminRt>,
    /// `[cluster]` and the gossip socket (the supervisor's copy; the running
    /// gossip keeps its own).
    pub gossip: Option<(crate::farm::ClusterPlan, OwnedFd)>,
}

/// A site as the front end serves it.
pub struct SiteRt {
    pub tenant: String,
    /// Index of the tenant's access log in [`Shared::logs`].
    pub log: usize,
    /// The first host name, used in the access log.
    pub canonical: Arc<str>,
    /// The open root, or why it could not be opened (then static requests
    /// get 500). Shared with the generation before when it is still the
    /// same directory ([`Root::is_still`]).
    pub root: Result<Arc<Root>, String>,
    /// Longest prefix first.
    pub routes: Vec<RouteRt>,
    /// The largest request body outside every route: the site's `max_body`,
    /// else the server's.
    pub max_body: u64,
}

pub struct RouteRt {
    pub path: String,
    pub action: Action,
    pub auth: Option<(String, Arc<Htpasswd>)>,
    /// The largest request body: the route's `max_body`, else the site's,
    /// else the server's.
    pub max_body: u64,
    /// For an app route, the app's name, made once here (its pool is found
    /// by it on every request).
    pub app: Option<crate::ipc::AppId>,
    /// Placement over the farm (`balance`), parsed once here.
    pub balance: Option<Arc<farm::Placement>>,
}

/// State shared by every connection.
pub struct Shared {
    pub current: ArcSwap<Generation>,
    /// Access and error logs, one each per tenant, indexed by [`SiteRt::log`].
    pub logs: ArcSwap<TenantLogs>,
    pub conn_limit: Arc<Semaphore>,
    /// Every open connection, by peer.
    pub conns: Arc<conn::Conns>,
    /// App processes and their pools.
    pub apps: Arc<apps::Apps>,
    /// Each tenant's places for requests in its apps (`concurrency`,
    /// `queue`), and its counters.
    pub tenants: tenants::Tenants,
    pub max_connections: std::sync::atomic::AtomicUsize,
    pub drain: watch::Receiver<bool>,
    /// The supervisor's last figures for the admin pages.
    pub status: arc_swap::ArcSwapOption<ipc::StatusSnapshot>,
    /// The farm, when `[cluster]` is configured and its gossip runs.
    pub farm: arc_swap::ArcSwapOption<farm::FarmRt>,
    /// The `[cluster]` the latest plan wants (running or starting), and a
    /// count of the changes to it.
    pub farm_wanted: std::sync::Mutex<(u64, Option<crate::farm::ClusterPlan>)>,
}

/// Runs the front end until told to stop.
pub fn run() -> anyhow::Result<()> {
    let sock = crate::sys::inherited_fd(crate::supervisor::FRONT_IPC_FD)
        .context("no IPC socket at fd 3 (the front end is started by `berth serve`)")?;
    let sock = Arc::new(sock);
    let (first, fds) = ipc::recv::<ToFront>(sock.as_fd()).context("waiting for the first plan")?;
    let ToFront::Plan(plan) = first else {
        bail!("the supervisor's first message was not a plan");
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(sock, *plan, fds))
}

/// How many workers: one per CPU this process may run on (the affinity mask,
/// so `taskset` and cgroup cpusets are honoured).
fn worker_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What the control loop tells a worker.
enum WorkerCmd {
    /// The listeners of the current plan (the worker's own duplicates of the fds).
    Listeners(Vec<(ListenerSpec, OwnedFd)>),
    /// Stop accepting (the drain); connections run on until the process exits.
    StopAccepting,
}

/// One worker: a single-threaded runtime with its own accept loops on every
/// listener. Like nginx's worker processes, but threads sharing one
/// configuration. A single-threaded runtime per core avoids the cross-thread
/// wake-ups of a work-stealing scheduler, which cost a quarter of the
/// throughput of small static files.
async fn worker(mut cmds: mpsc::UnboundedReceiver<WorkerCmd>, shared: Arc<Shared>) {
    let mut running: HashMap<ListenerSpec, JoinHandle<()>> = HashMap::new();
    while let Some(cmd) = cmds.recv().await {
        match cmd {
            WorkerCmd::Listeners(fds) => sync_listeners(&mut running, fds, &shared),
            WorkerCmd::StopAccepting => {
                for (_, task) in running.drain() {
                    task.abort();
                }
            }
        }
    }
}

/// Sends each worker its own copies of the listener fds.
fn dispatch_listeners(
    workers: &[mpsc::UnboundedSender<WorkerCmd>],
    fds: Vec<(ListenerSpec, OwnedFd)>,
) {
    for w in workers {
        let copies = fds
            .iter()
            .filter_map(|(spec, fd)| match fd.try_clone() {
                Ok(fd) => Some((*spec, fd)),
                Err(e) => {
                    error!("listener {}: {e}", spec.addr);
                    None
                }
            })
            .collect();
        let _ = w.send(WorkerCmd::Listeners(copies));
    }
}

enum Control {
    Msg(Box<ToFront>, Vec<OwnedFd>),
    /// A plan, built by the channel's reader thread.
    Plan(Box<NewPlan>),
    Gone,
}

/// A plan built into a generation off the workers (the control loop runs
/// on the first worker's thread: building 10,000 sites there held up its
/// connections for tens of milliseconds at every reload), and what of it
/// the control loop applies.
struct NewPlan {
    built: anyhow::Result<Built>,
    apps: Vec<ipc::AppPlan>,
    tenants: Vec<String>,
    limits: Vec<crate::config::Limits>,
}

impl NewPlan {
    /// Builds `plan` (site roots still the same directories as in
    /// `previous` are kept).
    fn build(plan: Plan, fds: Vec<OwnedFd>, previous: Option<&Generation>) -> NewPlan {
        let apps = plan.apps.clone();
        let (tenants, limits) = (plan.logs.clone(), plan.tenant_limits.clone());
        NewPlan {
            built: build(plan, fds, previous),
            apps,
            tenants,
            limits,
        }
    }
}

async fn serve(sock: Arc<OwnedFd>, plan: Plan, fds: Vec<OwnedFd>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // The supervisor handles these; the front end only must not die of them
    // (a terminal sends them to the whole process group).
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    let (drain_tx, drain_rx) = watch::channel(false);
    let max = plan.limits.max_connections;
    let app_plans = plan.apps.clone();
    let tenant_limits = (plan.logs.clone(), plan.tenant_limits.clone());
    let (generation, listener_fds, logs) = build(plan, fds, None)?;
    let shared = Arc::new(Shared {
        current: ArcSwap::from_pointee(generation),
        logs: ArcSwap::from_pointee(logs),
        conn_limit: Arc::new(Semaphore::new(max)),
        conns: Arc::default(),
        apps: Arc::new(apps::Apps::new(sock.clone())),
        tenants: tenants::Tenants::default(),
        max_connections: max.into(),
        drain: drain_rx,
        status: arc_swap::ArcSwapOption::empty(),
        farm: arc_swap::ArcSwapOption::empty(),
        farm_wanted: std::sync::Mutex::default(),
    });
    shared.apps.update(&app_plans);
    shared.tenants.update(&tenant_limits.0, &tenant_limits.1);
    sync_farm(&shared);

    // The supervisor's messages, read on a thread of their own; plans are
    // built there too.
    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel();
    let reader = sock.clone();
    let building = shared.clone();
    std::thread::Builder::new()
        .name("supervisor-channel".into())
        .spawn(move || {
            loop {
                let ctl = match ipc::recv::<ToFront>(reader.as_fd()) {
                    Ok((ToFront::Plan(plan), fds)) => Control::Plan(Box::new(NewPlan::build(
                        *plan,
                        fds,
                        Some(&building.current.load()),
                    ))),
                    Ok((msg, fds)) => Control::Msg(Box::new(msg), fds),
                    Err(e) => {
                        if !matches!(e, ipc::IpcError::Closed) {
                            error!("supervisor channel: {e}");
                        }
                        let _ = ctl_tx.send(Control::Gone);
                        return;
                    }
                };
                if ctl_tx.send(ctl).is_err() {
                    return;
                }
            }
        })?;

    let mut workers = Vec::new();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(worker(rx, shared.clone()));
    workers.push(tx);
    for i in 1..worker_count() {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = shared.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || rt.block_on(worker(rx, shared)))?;
        workers.push(tx);
    }
    info!("{} worker(s)", workers.len());
    dispatch_listeners(&workers, listener_fds);
    applied(&sock, &shared);

    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let metering = shared.current.load().meter_interval;
    let mut meter = tokio::time::interval(metering.unwrap_or(Duration::from_secs(3600)));
    let mut seen = usage::Seen::default();
    meter.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ctl = ctl_rx.recv() => {
                let flow = match ctl {
                    Some(Control::Msg(msg, fds)) => on_control(*msg, fds, &sock, &shared, &workers),
                    Some(Control::Plan(plan)) => on_plan(*plan, &sock, &shared, &workers),
                    Some(Control::Gone) | None => {
                        warn!("supervisor is gone; stopping");
                        shared.apps.fail_pending();
                        break;
                    }
                };
                if flow == Flow::Stop {
                    break;
                }
            }
            _ = sweep.tick() => shared.apps.sweep(),
            _ = meter.tick(), if metering.is_some() => {
                let tenants = usage::take_all(&shared.tenants.counters(), &mut seen);
                if !tenants.is_empty()
                    && let Err(e) = ipc::send(sock.as_fd(), &ToSupervisor::Usage { tenants }, &[])
                {
                    warn!("cannot send usage counts to the supervisor: {e}");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {}
            _ = usr1.recv() => {}
        }
    }

    // Drain: stop accepting, ask every connection to finish, wait for them.
    for w in &workers {
        let _ = w.send(WorkerCmd::StopAccepting);
    }
    let _ = drain_tx.send(true);
    let limit = shared.current.load().limits.drain_timeout;
    let total = shared
        .max_connections
        .load(std::sync::atomic::Ordering::Relaxed) as u32;
    match tokio::time::timeout(limit, shared.conn_limit.acquire_many(total)).await {
        Ok(_) => info!("drained; exiting"),
        Err(_) => warn!("drain timeout ({limit:?}) reached; closing remaining connections"),
    }
    crate::tenant_log::flush_all();
    Ok(())
}

#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// Acts on one message from the supervisor.
fn on_control(
    msg: ToFront,
    fds: Vec<OwnedFd>,
    sock: &OwnedFd,
    shared: &Arc<Shared>,
    workers: &[mpsc::UnboundedSender<WorkerCmd>],
) -> Flow {
    match msg {
        // (The reader thread builds plans: see `on_plan`.)
        ToFront::Plan(plan) => {
            let plan = NewPlan::build(*plan, fds, Some(&shared.current.load()));
            return on_plan(plan, sock, shared, workers);
        }
        ToFront::Logs { tenants } if tenants != shared.current.load().log_names => {
            error!("reopened logs not applied: they are for other tenants than the configuration");
        }
        ToFront::Logs { tenants } => match take_logs(&tenants, fds, None) {
            Ok(logs) => {
                shared.logs.store(Arc::new(logs));
                info!("log files reopened");
            }
            Err(e) => error!("reopened logs not applied: {e:#}"),
        },
        ToFront::Shutdown => return Flow::Stop,
        ToFront::Started { req, result } => shared.apps.started(req, result),
        ToFront::Exited { app, slot, why } => {
            debug!("app {app}: process {slot} gone ({why})");
            shared.apps.exited(&app, slot);
        }
        ToFront::Spawned { app, process } => shared.apps.spawned(&app, process),
        ToFront::Recycle { app, slot } => shared.apps.recycle(&app, slot),
        ToFront::Replace {
            app,
            started,
            retiring,
        } => shared.apps.replace(&app, started, &retiring),
        ToFront::CgiStarted { req, result } => {
            shared.apps.cgi_started(req, result.map(|()| fds));
        }
        ToFront::Status(snapshot) => shared.status.store(Some(Arc::from(snapshot))),
    }
    Flow::Continue
}

/// Puts a plan the reader thread built in effect.
fn on_plan(
    plan: NewPlan,
    sock: &OwnedFd,
    shared: &Arc<Shared>,
    workers: &[mpsc::UnboundedSender<WorkerCmd>],
) -> Flow {
    match plan.built {
        Ok((generation, listener_fds, logs)) => {
            shared.apps.update(&plan.apps);
            shared.tenants.update(&plan.tenants, &plan.limits);
            resize_limit(shared, generation.limits.max_connections);
            let old = shared.current.swap(Arc::new(generation));
            // Freeing 10,000 sites takes tens of milliseconds this thread
            // owes its connections (it is a worker too): another one does
            // it, or the last request still on it.
            let _ = std::thread::Builder::new()
                .name("old-generation".into())
                .spawn(move || drop(old));
            shared.logs.store(Arc::new(logs));
            sync_farm(shared);
            dispatch_listeners(workers, listener_fds);
            applied(sock, shared);
        }
        Err(e) => error!("new configuration not applied: {e:#}"),
    }
    Flow::Continue
}

/// Starts, moves or stops the farm's gossip to match the generation in
/// effect: the same `[cluster]` keeps it running (a new fingerprint is
/// published), another one (a moved `bind`, a new secret, ...) starts gossip
/// anew on the new socket and stops the old at once. Starting takes a
/// moment (seeds are resolved); what a later plan wants wins over a start
/// still under way.
fn sync_farm(shared: &Arc<Shared>) {
    let generation = shared.current.load_full();
    let mut wanted = shared.farm_wanted.lock().unwrap_or_else(|e| e.into_inner());
    let Some((plan, fd)) = &generation.gossip else {
        wanted.0 += 1;
        wanted.1 = None;
        if let Some(old) = shared.farm.swap(None) {
            old.stop();
            info!("farm: no [cluster] any more; gossip stopped");
        }
        return;
    };
    let same_farm = |other: &crate::farm::ClusterPlan| {
        let mut same = other.clone();
        same.fingerprint.clone_from(&plan.fingerprint);
        same == *plan
    };
    if wanted.1.as_ref().is_some_and(same_farm) {
        wanted.1 = Some(plan.clone());
        if let Some(farm) = shared.farm.load().as_deref() {
            farm.set_fingerprint(&plan.fingerprint);
        }
        return;
    }
    let socket = match fd.try_clone() {
        Ok(fd) => std::net::UdpSocket::from(fd),
        Err(e) => {
            error!("farm: the gossip socket: {e}; not in the farm");
            return;
        }
    };
    wanted.0 += 1;
    wanted.1 = Some(plan.clone());
    let epoch = wanted.0;
    let plan = plan.clone();
    let shared = shared.clone();
    tokio::spawn(async move {
        let tenants = shared.clone();
        let slots: crate::farm::gossip::Slots = Arc::new(move || tenants.tenants.slots());
        let cluster = match crate::farm::gossip::Cluster::start(&plan, socket, slots).await {
            Ok(cluster) => cluster,
            Err(e) => return error!("farm: gossip cannot start: {e:#}; not in the farm"),
        };
        let wanted = shared.farm_wanted.lock().unwrap_or_else(|e| e.into_inner());
        if wanted.0 != epoch {
            // A later plan moved or ended the farm meanwhile.
            return cluster.abort();
        }
        if let Some(latest) = &wanted.1 {
            cluster.set_fingerprint(&latest.fingerprint);
        }
        info!(
            "farm: node {} gossips on {}, takes proxied requests on {}",
            plan.name, plan.advertise, plan.proxy
        );
        let farm = Arc::new(farm::FarmRt::new(plan, cluster));
        if let Some(old) = shared.farm.swap(Some(farm)) {
            old.stop();
        }
    });
}

fn applied(sock: &OwnedFd, shared: &Shared) {
    let generation = shared.current.load().number;
    if let Err(e) = ipc::send(sock.as_fd(), &ToSupervisor::Applied { generation }, &[]) {
        warn!("cannot report to the supervisor: {e}");
    }
}

/// Adjusts the connection cap after a reload.
fn resize_limit(shared: &Shared, max: usize) {
    use std::sync::atomic::Ordering;
    let old = shared.max_connections.swap(max, Ordering::Relaxed);
    if max > old {
        shared.conn_limit.add_permits(max - old);
    } else if max < old {
        // Permits in use come back later; take what is free now and the cap
        // converges as connections close.
        shared.conn_limit.forget_permits(old - max);
    }
}

type Built = (Generation, Vec<(ListenerSpec, OwnedFd)>, TenantLogs);

/// Turns a plan and its fds into a generation, the listeners and the logs.
/// Site roots still the same directories as in `previous` are kept.
fn build(plan: Plan, fds: Vec<OwnedFd>, previous: Option<&Generation>) -> anyhow::Result<Built> {
    crate::logging::set_rate(plan.log_rate);
    let gossip = usize::from(plan.cluster.is_some());
    let expected = plan.listeners.len() + gossip + 2 * plan.logs.len() + 1;
    if fds.len() != expected {
        bail!("plan came with {} fds, expected {expected}", fds.len());
    }
    if plan.tenant_limits.len() != plan.logs.len() {
        bail!("limits for other tenants than the logs");
    }
    let mut fds = fds.into_iter();
    let listeners: Vec<(ListenerSpec, OwnedFd)> = plan
        .listeners
        .iter()
        .map(|spec| (*spec, fds.next().expect("counted above")))
        .collect();
    // The gossip socket, bound by the supervisor at `[cluster] bind`.
    let gossip = plan
        .cluster
        .clone()
        .map(|c| (c, fds.next().expect("counted above")));
    let logs = take_logs(&plan.logs, fds.collect(), Some(&plan.error_logs))?;

    let mut resolver = tls::SniResolver::default();
    let mut sites = Vec::with_capacity(plan.sites.len());
    let held: HashMap<&std::path::Path, &Arc<Root>> = previous
        .iter()
        .flat_map(|g| g.router.sites())
        .filter_map(|s| s.root.as_ref().ok())
        .map(|r| (r.path(), r))
        .collect();
    let log_of: HashMap<&str, usize> = plan
        .logs
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    for site in plan.sites {
        if let Some((cert, key)) = &site.tls {
            match tls::certified_key(cert, key) {
                Ok(ck) => {
                    let ck = Arc::new(ck);
                    for h in &site.hosts {
                        resolver.insert(h, ck.clone());
                    }
                }
                Err(e) => error!("site {}: certificate: {e}", site.hosts[0]),
            }
        }
        let root = match (held.get(site.root.as_path()), site.root_owner) {
            (Some(r), owner)
                if r.is_still(&site.root, owner) && r.private() == site.private_files =>
            {
                Ok(Arc::clone(r))
            }
            (_, None) => {
                Root::open(&site.root).map(|r| Arc::new(r.with_private(site.private_files.clone())))
            }
            (_, Some(uid)) => Root::open_owned(&site.root, uid)
                .map(|r| Arc::new(r.with_private(site.private_files.clone()))),
        };
        let root = root.map_err(|e| {
            let why = format!("cannot open root {}: {e}", site.root.display());
            error!("site {}: {why}", site.hosts[0]);
            why
        });
        let routes = site
            .routes
            .into_iter()
            .map(|r| {
                let auth = r.auth.as_ref().map(|a| {
                    // The supervisor validated the file; should it still fail, an
                    // empty user list locks the route rather than opening it.
                    let users = Htpasswd::parse(&a.users).unwrap_or_default();
                    (a.realm.clone(), Arc::new(users))
                });
                let app = match &r.action {
                    Action::App { app, .. } => Some(crate::ipc::AppId {
                        tenant: site.tenant.clone(),
                        app: app.clone(),
                    }),
                    _ => None,
                };
                let balance = r
                    .balance
                    .as_ref()
                    .and_then(|b| match farm::Placement::new(b) {
                        Ok(p) => Some(Arc::new(p)),
                        Err(e) => {
                            error!(
                                "site {} route {}: balance: {e}; served here",
                                site.hosts[0], r.path
                            );
                            None
                        }
                    });
                RouteRt {
                    app,
                    balance,
                    path: r.path,
                    action: r.action,
                    auth,
                    max_body: r.max_body.or(site.max_body).unwrap_or(plan.limits.max_body),
                }
            })
            .collect();
        let canonical: Arc<str> = site.hosts[0].as_str().into();
        sites.push((
            site.hosts,
            SiteRt {
                log: log_of
                    .get(site.tenant.as_str())
                    .copied()
                    .unwrap_or(usize::MAX),
                tenant: site.tenant,
                canonical,
                root,
                routes,
                max_body: site.max_body.unwrap_or(plan.limits.max_body),
            },
        ));
    }
    let tmp = Some(Arc::from(plan.tmp_dir.as_path()));
    // Bodies held, all clients together (see `spool::Budget`); temporary
    // files may take a quarter of the descriptors the front end may open.
    spool::MEMORY.set_limit(plan.limits.max_buffer_memory);
    spool::DISK.set_limit(plan.limits.max_buffer_disk);
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    spool::FILES.set_limit(nofile.unwrap_or(4096) / 4);
    let default_tls_host = plan.default_tls_host.filter(|host| {
        let found = resolver.set_default(host);
        if !found {
            error!(
                "default TLS site {host}: no certificate loaded; clients without SNI are refused"
            );
        }
        found
    });
    let tls = (!resolver.is_empty())
        .then(|| tokio_rustls::TlsAcceptor::from(tls::server_config(resolver)));
    let has_admin = listeners
        .iter()
        .any(|(spec, _)| spec.kind == ipc::ListenerKind::Admin);
    let admin = has_admin.then(|| admin::AdminRt {
        // The supervisor validated the file; should it still fail, an
        // empty user list locks the pages rather than opening them.
        users: plan
            .admin_users
            .as_deref()
            .map(|text| Arc::new(Htpasswd::parse(text).unwrap_or_default())),
    });
    let generation = Generation {
        number: plan.generation,
        log_names: plan.logs.clone(),
        meter_interval: plan.meter_interval,
        http: http_builder(&plan.limits),
        limits: plan.limits,
        router: Router::new(sites),
        tls,
        tmp,
        default_tls_host,
        admin,
        gossip,
    };
    Ok((generation, listeners, logs))
}

/// Access logs and error logs, one each per tenant.
pub struct TenantLogs {
    pub access: Vec<Arc<File>>,
    /// The tenants' error logs: apps' stderr, rate-limited and capped, never
    /// written on the request path (see [`crate::tenant_log`]).
    pub errors: Vec<Arc<TenantLog>>,
    /// What each tenant's requests used (see [`usage`]).
    pub usage: Vec<Arc<usage::TenantUsage>>,
}

/// The logs of `tenants` from their fds (access logs, error logs, berth's
/// error log). The tenants' error logs keep their state (rate, full) across
/// reopenings; `limits` (one per tenant) come with a new plan.
fn take_logs(
    tenants: &[String],
    fds: Vec<OwnedFd>,
    limits: Option<&[ErrorLogLimits]>,
) -> anyhow::Result<TenantLogs> {
    if fds.len() != 2 * tenants.len() + 1 {
        bail!("{} log fds for {} tenants", fds.len(), tenants.len());
    }
    if limits.is_some_and(|l| l.len() != tenants.len()) {
        bail!("error log limits for other tenants than the logs");
    }
    let mut fds = fds.into_iter();
    let mut next = || File::from(fds.next().expect("counted"));
    let access = tenants.iter().map(|_| Arc::new(next())).collect();
    let errors = tenants
        .iter()
        .enumerate()
        .map(|(i, t)| crate::tenant_log::open(t, next(), limits.map(|l| l[i])))
        .collect();
    if limits.is_some() {
        crate::tenant_log::retain(tenants);
        usage::retain(tenants);
    }
    crate::logging::set_file(next());
    let usage = tenants.iter().map(|t| usage::of(t)).collect();
    Ok(TenantLogs {
        access,
        errors,
        usage,
    })
}

fn http_builder(limits: &ClientLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // The connection watchdog (conn.rs) bounds header reading instead.
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(128)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// Starts accept loops for new listeners and stops those no longer wanted.
fn sync_listeners(
    running: &mut HashMap<ListenerSpec, JoinHandle<()>>,
    fds: Vec<(ListenerSpec, OwnedFd)>,
    shared: &Arc<Shared>,
) {
    let wanted: Vec<ListenerSpec> = fds.iter().map(|(s, _)| *s).collect();
    running.retain(|spec, task| {
        let keep = wanted.contains(spec);
        if !keep {
            task.abort();
            debug!("stopped listening on {}", spec.addr);
        }
        keep
    });
    for (spec, fd) in fds {
        if running.contains_key(&spec) {
            continue;
        }
        match conn::listener(fd) {
            Ok(listener) => {
                debug!(
                    "listening on {}{}",
                    spec.addr,
                    match spec.kind {
                        ipc::ListenerKind::Plain => "",
                        ipc::ListenerKind::Tls => " (TLS)",
                        ipc::ListenerKind::Admin => " (admin: status and metrics)",
                    }
                );
                running.insert(
                    spec,
                    tokio::spawn(conn::accept_loop(listener, spec, shared.clone())),
                );
            }
            Err(e) => error!("listener {}: {e}", spec.addr),
        }
    }
}
