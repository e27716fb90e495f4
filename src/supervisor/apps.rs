//! App processes: the supervisor's half of "start a process of app T/A".
//!
//! The front end asks (`ToSupervisor::StartProcess`) and the supervisor decides
//! by its own configuration: the app must exist and have room under
//! `max_processes`. For each process the supervisor binds a fresh Unix socket in
//! `state_dir/apps` — a root-owned directory only the front end's group may
//! enter, so no tenant can connect to another's app or replace its socket
//! (invariant 2) — and starts the app as its tenant through [`spawn`], with the
//! socket as fd 0 (FastCGI's `FCGI_LISTENSOCK_FILENO`) or fd 3 (socket
//! activation for HTTP apps). The supervisor closes its copy of the listener, so
//! when a process dies its socket refuses connections instead of queueing them
//! (a rolling restart keeps one until the new process accepts: [`rolling`]).
//! A changed definition on reload, a touched program or `tmp/restart.txt`
//! ([`touch`]) and `berth ctl restart` replace an app's processes by a
//! rolling restart.
//!
//! Every process runs in its own session; stopping one signals its whole process
//! group, and when one ends, what it left in its group is killed. A group is
//! signalled only while its leader is not reaped, so its number cannot have
//! been reused ([`Leader`]). [`AppManager::reap`] collects exits and reports
//! them to the front end; [`AppManager::stop_all`] leaves nothing running at
//! shutdown.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::cgroup::{Cgroups, Group, Kind};
use super::spawn::{self, FrontId, Isolation, SpawnSpec};
use crate::config::{App, Bind, Config, Limits, Protocol, Tenant};
use crate::ipc::{AppId, AppProcess, AppStatus, EventKind, ProcessStatus, StartRefused};

mod rolling;
mod touch;

pub use rolling::RestartOutcome;
use rolling::{Probe, Program, Rollout, Run};
mod ctl;

/// One running process of an app.
struct Proc {
    leader: Leader,
    /// Found above `process_memory`; the front end was told to recycle it.
    recycling: bool,
    /// Replaced by a rolling restart: it takes no new requests, and is
    /// stopped when the front end retires it or at this time (its app's
    /// `stop_timeout`), whichever comes first.
    retiring: Option<Instant>,
    /// Its cgroup leaf: everything it starts, `setsid` or not.
    group: Option<Group>,
    /// Where the front end connects (its socket is removed when it ends).
    process: AppProcess,
    started: Instant,
}

/// What the supervisor knows of one app.
struct AppState {
    app: App,
    /// Processes that died young in a row, and when the next may start.
    failures: u32,
    retry_at: Option<Instant>,
    /// Young deaths not counted yet: if the front end retires the slot soon
    /// after, the process died in a request (a crashing page), which says
    /// nothing about start-up.
    suspects: Vec<(u32, Instant)>,
    user: String,
    uid: u32,
    home: PathBuf,
    /// The tenant's limits, applied to every process started from now on.
    limits: Limits,
    procs: BTreeMap<u32, Proc>,
    next_slot: u32,
    /// The last thing that went wrong (a start refused, a process that
    /// died), and when, for the status page.
    last_problem: Option<(SystemTime, String)>,
    /// The program configured, when a reload changed it and the processes
    /// still run the one above (`app`, `user`, `uid`, `home`): until a
    /// rolling restart to it has succeeded.
    next: Option<Box<Program>>,
    /// A rolling restart under way.
    rollout: Option<Rollout>,
}

impl AppState {
    /// Processes that take requests (not retiring after a restart).
    fn serving(&self) -> usize {
        self.procs.values().filter(|p| p.retiring.is_none()).count()
    }

    /// What its processes run now.
    fn program(&self) -> Program {
        Program {
            app: self.app.clone(),
            user: self.user.clone(),
            uid: self.uid,
            home: self.home.clone(),
        }
    }
}

/// How a CGI app is reached, from the supervisor's own configuration: the
/// front end may only ask for what a route allows.
#[derive(Debug, Default)]
struct CgiRoutes {
    /// Some route mounts it (it runs its own command).
    mounted: bool,
    /// Site roots whose extension routes send scripts to it, with the
    /// extensions.
    scripts: Vec<(PathBuf, Vec<String>)>,
}

fn cgi_routes(cfg: &Config) -> HashMap<AppId, CgiRoutes> {
    let mut out: HashMap<AppId, CgiRoutes> = HashMap::new();
    for t in &cfg.tenants {
        for site in &t.sites {
            for route in &site.routes {
                let crate::config::Action::App { app, extensions } = &route.action else {
                    continue;
                };
                let id = AppId {
                    tenant: t.name.clone(),
                    app: app.clone(),
                };
                let entry = out.entry(id).or_default();
                if extensions.is_empty() {
                    entry.mounted = true;
                } else {
                    entry.scripts.push((site.root.clone(), extensions.clone()));
                }
            }
        }
    }
    out
}

/// One CGI script running for one request.
struct CgiRun {
    id: AppId,
    leader: Leader,
    group: Option<Group>,
    /// Killed (its whole process group) when still running at this time.
    deadline: Instant,
}

/// Every app of every tenant, and their processes.
pub struct AppManager {
    dir: PathBuf,
    /// The group that may enter `dir` and connect to the sockets (the front
    /// end's); None when berth runs unprivileged.
    front_gid: Option<u32>,
    min_uid: u32,
    switch_user: bool,
    /// The front end's identity and every tenant's, which each start is
    /// checked against (None when berth runs unprivileged).
    isolation: Option<Isolation>,
    apps: HashMap<AppId, AppState>,
    /// How routes reach each CGI app: the only scripts it may run.
    cgi_routes: HashMap<AppId, CgiRoutes>,
    /// CGI scripts running now (they outlive reloads until they end or time out).
    cgi: Vec<CgiRun>,
    /// Numbers the cgroup leaves (never reused while berth runs: a leaf
    /// that is going may not be taken for a new one).
    leaves: u64,
    /// Tenants a reload removed, whose groups go at the given time (their
    /// processes have had their time to stop by then).
    tenants_gone: Vec<(String, Instant)>,
    /// Tenants whose limits the kernel refused (memory in use above a
    /// lowered limit): applied again every second until they hold.
    limits_pending: Vec<(String, Limits)>,
    /// Processes recycled for their memory, per tenant.
    recycles: HashMap<String, u64>,
    cgroups: Cgroups,
    /// Wakes the supervisor's loop to [`AppManager::roll`] (a rolling
    /// restart's process accepts, or died; a program was touched).
    wake: Arc<Notify>,
    /// Watches every app's program and `tmp/restart.txt` (None when its
    /// thread could not start: said once).
    touch: Option<touch::Watcher>,
    /// Apps held stopped by `berth ctl stop` (see `ctl.rs`): they start no
    /// process and run no script.
    held: HashSet<AppId>,
    /// What each tenant's apps see of the machine.
    views: crate::isolation::host::Views,
}

/// How long a CGI script may outlive its `timeout` before it is killed.
const CGI_GRACE: Duration = Duration::from_secs(2);
/// How long a stopped process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// A process that fails within this of starting counts towards a crash loop.
const YOUNG: Duration = Duration::from_secs(10);
/// This many young deaths in a row are a crash loop.
const CRASH_LOOP: u32 = 3;
/// How long a young death waits for the front end to say it happened in a request.
const SUSPECT_WAIT: Duration = Duration::from_secs(1);
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl AppManager {
    /// Prepares `state_dir/apps` (root:front-group, mode 0750). `front` is
    /// the front end's identity (when berth switches users).
    pub fn new(
        cfg: &Config,
        front: Option<&crate::sys::Identity>,
        switch_user: bool,
        cgroups: Cgroups,
    ) -> std::io::Result<Self> {
        let front_gid = front.map(|id| id.gid);
        let dir = cfg.server.state_dir.join("apps");
        match front_gid {
            Some(gid) => own_dir(&dir, Some((0, gid)), 0o750)?,
            None => own_dir(&dir, None, 0o700)?,
        }
        // Sockets of an earlier run are stale.
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".sock") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let mut m = AppManager {
            dir,
            front_gid,
            min_uid: cfg.server.min_uid,
            switch_user,
            isolation: front.filter(|_| switch_user).map(|id| Isolation {
                front: FrontId {
                    user: cfg.server.user.clone(),
                    uid: id.uid,
                    gid: id.gid,
                },
                tenants: Vec::new(),
            }),
            apps: HashMap::new(),
            cgi_routes: HashMap::new(),
            cgi: Vec::new(),
            leaves: 0,
            tenants_gone: Vec::new(),
            limits_pending: Vec::new(),
            recycles: HashMap::new(),
            cgroups,
            wake: Arc::new(Notify::new()),
            touch: None,
            held: HashSet::new(),
            views: crate::isolation::host::Views::new(
                cfg,
                front.filter(|_| switch_user).map(|id| {
                    let mut groups = id.groups.clone();
                    groups.push(id.gid);
                    (id.uid, groups)
                }),
                switch_user,
            ),
        };
        m.touch = touch::Watcher::start(m.wake.clone())
            .inspect_err(|e| warn!("cannot watch apps' programs for touch-to-restart: {e}"))
            .ok();
        m.update(cfg);
        Ok(m)
    }

    /// What wakes the supervisor's loop to call [`AppManager::roll`].
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Takes a new configuration. An app whose program changed (`command`,
    /// `dir`, `env`, its tenant's user or home) gets a rolling restart to it
    /// ([`AppManager::roll`] carries it on); pool settings and limits apply
    /// at once (new processes get the new limits). Processes of apps that
    /// went away, or changed `protocol` or `bind` (the front end speaks to
    /// them as the new plan says), are stopped at once: returned, so the
    /// front end can be told.
    pub fn update(&mut self, cfg: &Config) -> Vec<(AppId, u32)> {
        self.min_uid = cfg.server.min_uid;
        self.cgi_routes = cgi_routes(cfg);
        self.views.update(cfg);
        if let Some(iso) = &mut self.isolation {
            iso.tenants = spawn::peers(&cfg.tenants);
        }
        let mut wanted: HashMap<AppId, (App, &Tenant)> = HashMap::new();
        let mut pending = Vec::new();
        for t in &cfg.tenants {
            if let Err(e) = self.cgroups.set_tenant(&t.name, &t.limits) {
                warn!("tenant {}: cgroup limits not all applied: {e}", t.name);
                pending.push((t.name.clone(), t.limits));
            }
            for a in &t.apps {
                let id = AppId {
                    tenant: t.name.clone(),
                    app: a.name.clone(),
                };
                wanted.insert(id, (a.clone(), t));
            }
        }
        let mut stopped = Vec::new();
        self.apps.retain(|id, state| {
            let keep = wanted
                .get(id)
                .is_some_and(|(a, _)| a.protocol == state.app.protocol && a.bind == state.app.bind);
            if !keep {
                if let Some(rollout) = state.rollout.take() {
                    let why = "the app was removed, or its protocol or bind changed, by a reload";
                    rollout.abandon(id, state.limits, why);
                }
                for (slot, proc) in std::mem::take(&mut state.procs) {
                    stop(id, slot, proc, state.limits);
                    stopped.push((id.clone(), slot));
                }
            }
            keep
        });
        // Tenants gone from the configuration: their groups go once their
        // processes have had their time to stop.
        let gone: Vec<String> = self
            .cgroups
            .tenants()
            .into_iter()
            .filter(|name| !cfg.tenants.iter().any(|t| t.name == *name))
            .collect();
        self.limits_pending = pending;
        self.held.retain(|id| wanted.contains_key(id));
        let due = Instant::now() + STOP_GRACE + Duration::from_secs(1);
        self.tenants_gone = gone.into_iter().map(|name| (name, due)).collect();
        let mut changed = Vec::new();
        for (id, (app, t)) in wanted {
            let program = Program {
                app,
                user: t.user.clone(),
                uid: t.uid,
                home: t.home.clone(),
            };
            match self.apps.get_mut(&id) {
                Some(state) => {
                    state.limits = t.limits;
                    if program.same(&state.program()) {
                        state.app = program.app;
                        state.next = None;
                    } else {
                        // What runs stays until the new program has started.
                        state.app.pool = program.app.pool.clone();
                        state.app.open_port = program.app.open_port;
                        state.app.origin = program.app.origin.clone();
                        // A definition that already failed is not tried
                        // again by every reload (a restart retries it).
                        let new = state.next.as_ref().is_none_or(|n| !n.same(&program));
                        state.next = Some(Box::new(program));
                        if new {
                            changed.push(id);
                        }
                    }
                }
                None => {
                    let app = program.app;
                    if app.bind == Bind::Port {
                        warn!(
                            "app {id}: bind = \"port\" with open_port = true: every local user can connect to its port directly, bypassing berth's auth routes and forwarded headers"
                        );
                    }
                    self.apps.insert(
                        id,
                        AppState {
                            app,
                            failures: 0,
                            retry_at: None,
                            suspects: Vec::new(),
                            user: program.user,
                            uid: program.uid,
                            home: program.home,
                            limits: t.limits,
                            procs: BTreeMap::new(),
                            next_slot: 1,
                            last_problem: None,
                            next: None,
                            rollout: None,
                        },
                    );
                }
            }
        }
        for id in changed {
            self.request_restart(&id, "its configuration changed", None);
        }
        // A rollout under way to a program the configuration no longer
        // has is followed by one to what it has now.
        let stale: Vec<AppId> = self
            .apps
            .iter()
            .filter(|(_, s)| {
                s.rollout
                    .as_ref()
                    .is_some_and(|r| !r.program.same(s.next.as_deref().unwrap_or(&s.program())))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            self.request_restart(&id, "its configuration changed", None);
        }
        self.watch();
        stopped
    }

    /// Starts one more process of `id` if its configuration allows it.
    pub fn start(&mut self, id: &AppId) -> Result<AppProcess, StartRefused> {
        self.settle();
        if self.held.contains(id) {
            return Err(StartRefused::Failed(format!(
                "app {id} is stopped (berth ctl stop)"
            )));
        }
        if let Some(state) = self.apps.get(id)
            && state.app.protocol != Protocol::Cgi
            && state.serving() >= state.app.pool.max_processes as usize
        {
            return Err(StartRefused::Full(format!(
                "app {id} already runs max_processes ({})",
                state.app.pool.max_processes
            )));
        }
        self.start_process(id).map_err(|why| {
            if let Some(state) = self.apps.get_mut(id) {
                state.last_problem = Some((SystemTime::now(), why.clone()));
            }
            StartRefused::Failed(why)
        })
    }

    /// Starts one more process of `id`, checked against its configuration,
    /// into its pool.
    fn start_process(&mut self, id: &AppId) -> Result<AppProcess, String> {
        let (proc, _) = self.spawn_process(id, Run::Serving)?;
        let process = proc.process.clone();
        if let Some(state) = self.apps.get_mut(id) {
            state.procs.insert(process.slot, proc);
        }
        Ok(process)
    }

    /// Starts a process of `id`: of the program it serves now (checked
    /// against the crash-loop backoff), or for a rolling restart
    /// ([`Run::Rollout`]: of the program configured, with what tells when
    /// it accepts connections). It joins no pool here.
    fn spawn_process(&mut self, id: &AppId, run: Run) -> Result<(Proc, Option<Probe>), String> {
        let dir = self.dir.clone();
        let front_gid = self.front_gid;
        let min_uid = self.min_uid;
        let switch_user = self.switch_user;
        let state = self
            .apps
            .get_mut(id)
            .ok_or_else(|| format!("no app {id} in the configuration"))?;
        if let Some(at) = state.retry_at
            && at > Instant::now()
            && run == Run::Serving
        {
            return Err(format!(
                "app {id} crashed {} times in a row at start-up; next start in {:.1?}",
                state.failures,
                at - Instant::now()
            ));
        }
        if state.app.protocol == Protocol::Cgi {
            return Err(format!(
                "app {id} is a CGI app: it has no resident processes"
            ));
        }
        let slot = state.next_slot;
        state.next_slot = state.next_slot.wrapping_add(1).max(1);
        let state = &*state;
        let (app, user, uid, home) = match (&state.next, run) {
            (Some(next), Run::Rollout) => (&next.app, &next.user, next.uid, &next.home),
            _ => (&state.app, &state.user, state.uid, &state.home),
        };
        // The uid a self-bound listener must belong to.
        let owner = if switch_user {
            uid
        } else {
            rustix::process::geteuid().as_raw()
        };
        let mut process = AppProcess {
            slot,
            socket: PathBuf::new(),
            port: None,
            owner: None,
        };
        let mut env: Vec<(String, String)> = Vec::new();
        let mut fds = Vec::new();
        let mut self_bound_socket = None;
        let mut probe = None;
        // Where an app that binds its own socket binds it: in its view too.
        let mut view_extra: Vec<PathBuf> = Vec::new();
        match app.bind {
            Bind::Berth => {
                let socket = dir.join(format!("{}.{}.{slot}.sock", id.tenant, id.app));
                let _ = std::fs::remove_file(&socket);
                let listener = UnixListener::bind(&socket)
                    .map_err(|e| format!("app {id}: cannot bind {}: {e}", socket.display()))?;
                if let Some(gid) = front_gid {
                    std::os::unix::fs::chown(&socket, Some(0), Some(gid))
                        .and_then(|()| {
                            std::fs::set_permissions(
                                &socket,
                                std::fs::Permissions::from_mode(0o660),
                            )
                        })
                        .map_err(|e| format!("app {id}: socket {}: {e}", socket.display()))?;
                }
                if run == Run::Rollout {
                    // A copy of the listener, to see when the app takes a
                    // connection off its queue; closed once it has.
                    let copy = listener
                        .try_clone()
                        .map_err(|e| format!("app {id}: socket {}: {e}", socket.display()))?;
                    probe = Some(Probe::Listener {
                        listener: OwnedFd::from(copy),
                        path: socket.clone(),
                    });
                }
                let at = if app.protocol == Protocol::FastCgi {
                    0
                } else {
                    // Socket activation; spawn sets LISTEN_PID to the child's pid.
                    env.push(("LISTEN_FDS".into(), "1".into()));
                    env.push(("LISTEN_FDNAMES".into(), "http".into()));
                    3
                };
                fds.push((OwnedFd::from(listener), at));
                process.socket = socket;
            }
            Bind::Port => {
                // A free port now; if someone else takes it before the app
                // does, the owner check refuses it.
                let port = std::net::TcpListener::bind(("127.0.0.1", 0))
                    .and_then(|l| l.local_addr())
                    .map_err(|e| format!("app {id}: no free port: {e}"))?
                    .port();
                env.push(("PORT".into(), port.to_string()));
                process.port = Some(port);
                process.owner = Some(owner);
                if run == Run::Rollout {
                    probe = Some(Probe::Port(port));
                }
            }
            Bind::Socket => {
                let tenant_dir = bound_dir(&dir, &id.tenant, owner, front_gid)
                    .map_err(|e| format!("app {id}: socket directory: {e}"))?;
                let socket = tenant_dir.join(format!("{}.{slot}.sock", id.app));
                view_extra.push(tenant_dir.clone());
                let _ = std::fs::remove_file(&socket);
                env.push(("BERTH_SOCKET".into(), socket.to_string_lossy().into_owned()));
                self_bound_socket = Some(socket.clone());
                if run == Run::Rollout {
                    probe = Some(Probe::Socket {
                        path: socket.clone(),
                        uid: owner,
                        front_gid,
                    });
                }
                process.socket = socket;
                process.owner = Some(owner);
            }
        }
        // The app's fd 1 and 2: a pipe read into the tenant's error log, with
        // its limits (a process writing to its own stderr must not bypass them).
        let output = match crate::tenant_log::get(&id.tenant) {
            Some(log) => {
                let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                    .map_err(|e| format!("app {id}: output pipe: {e}"))?;
                Some((log, r, w))
            }
            None => {
                warn!(
                    "app {id}: no error log for tenant {}; output discarded",
                    id.tenant
                );
                None
            }
        };
        tasks_room(&self.cgroups, id)?;
        self.leaves += 1;
        let group = self
            .cgroups
            .leaf(&id.tenant, &id.app, &format!("{}.proc", self.leaves))
            .map_err(|e| format!("app {id}: cgroup: {e}"))?;
        let cgroup = match &group {
            Some(g) => g
                .procs_files(state.limits.cpu_millis.is_some())
                .map_err(|e| format!("app {id}: cgroup: {e}"))?,
            None => Vec::new(),
        };
        let rlimits = fallback_rlimits(&self.cgroups, &state.limits, switch_user);
        let argv = app.command.clone();
        if app.protocol == Protocol::FastCgi {
            // php-cgi exits after PHP_FCGI_MAX_REQUESTS (500 by default);
            // make it agree with the pool's own max_requests.
            env.push((
                "PHP_FCGI_MAX_REQUESTS".into(),
                app.pool.max_requests.to_string(),
            ));
            env.push(("PHP_FCGI_CHILDREN".into(), "0".into()));
        }
        env.extend(app.env.iter().cloned());
        let (output, reader) = match output {
            Some((log, r, w)) => {
                let w2 = w
                    .try_clone()
                    .map_err(|e| format!("app {id}: output pipe: {e}"))?;
                (vec![(w, 1), (w2, 2)], Some((log, r)))
            }
            None => (Vec::new(), None),
        };
        let isolate = self
            .views
            .isolate(&id.tenant, &app.isolation, &view_extra)
            .map_err(|e| format!("app {id}: not started: {e}"))?;
        let spec = SpawnSpec {
            tenant: &id.tenant,
            user,
            home,
            min_uid,
            argv: &argv,
            script: None,
            dir: &app.dir,
            env: &env,
            fds: {
                fds.extend(output);
                fds
            },
            open_files: state.limits.open_files,
            cgroup,
            rlimits,
            switch_user,
            isolation: self.isolation.as_ref(),
            isolate: isolate.as_ref(),
        };
        let socket = process.socket.clone();
        let child = spawn::spawn(spec).map_err(|e| {
            let _ = std::fs::remove_file(&socket);
            if let Some(g) = &group {
                g.remove();
            }
            warn!("app {id}: not started: {e}");
            format!("app {id}: not started: {e}")
        })?;
        info!("app {id}: process {slot} started (pid {})", child.id());
        let leader = Leader(child, isolate.as_ref().is_some_and(|i| i.view.is_some()));
        if let Some((log, r)) = reader {
            crate::tenant_log::read_pipe(r, log, id.to_string());
        }
        if let (Some(socket), Some(gid)) = (self_bound_socket, front_gid) {
            // The app creates its socket with its own umask (022: not
            // connectable by the front end's group); root makes it so.
            let deadline = Instant::now() + app.pool.start_timeout;
            let id = id.clone();
            let _ = std::thread::Builder::new()
                .name("socket-mode".into())
                .spawn(move || open_socket_to_front(&id, &socket, owner, gid, deadline));
        }
        let proc = Proc {
            leader,
            recycling: false,
            retiring: None,
            group,
            process,
            started: Instant::now(),
        };
        Ok((proc, probe))
    }

    /// Runs one request of CGI app `id` (see [`crate::ipc::ToSupervisor::RunCgi`]):
    /// returns the parent's ends of the script's stdin, stdout and stderr.
    /// A refusal is logged here with its reason (what a confused or
    /// compromised front end looks like); the caller learns only that it was
    /// refused, which it tells the front end: the reasons say what exists
    /// among root's files.
    pub fn run_cgi(
        &mut self,
        id: &AppId,
        script: Option<PathBuf>,
        env: Vec<(String, String)>,
    ) -> Result<[OwnedFd; 3], ()> {
        self.try_run_cgi(id, script, env)
            .map_err(|why| warn!("CGI run refused: {why}"))
    }

    fn try_run_cgi(
        &mut self,
        id: &AppId,
        script: Option<PathBuf>,
        env: Vec<(String, String)>,
    ) -> Result<[OwnedFd; 3], String> {
        self.reap_cgi();
        let state = self
            .apps
            .get(id)
            .ok_or_else(|| format!("no app {id} in the configuration"))?;
        if state.app.protocol != Protocol::Cgi {
            return Err(format!("app {id} is not a CGI app"));
        }
        if self.held.contains(id) {
            return Err(format!("app {id} is stopped (berth ctl stop)"));
        }
        let routes = self.cgi_routes.get(id);
        // The front end keeps to max_processes; this is the backstop. A
        // script is free for the front end once its output ends, a moment
        // before it has exited, so twice as many may still be counted here.
        let running = self.cgi.iter().filter(|r| r.id == *id).count();
        if running >= 2 * state.app.pool.max_processes as usize {
            return Err(format!(
                "app {id} already runs {running} scripts (max_processes is {})",
                state.app.pool.max_processes
            ));
        }
        let app = &state.app;
        // What runs, and where: a script chosen by extension runs in its own
        // directory, by itself or through the app's command (an interpreter);
        // a mounted app runs its command in `dir`.
        let mut document_root = None;
        let mut script_path = None;
        let (argv, dir, filename) = match script {
            Some(script) => {
                // (Named as the front end sent it: escaped.)
                let (script, root) = script_allowed(routes, &script)
                    .map_err(|why| format!("app {id}: script {script:?}: {why}"))?;
                document_root = Some(root);
                script_path = Some(script.clone());
                let dir = script
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from("/"));
                let text = script.to_string_lossy().into_owned();
                let mut argv = app.command.clone();
                argv.push(text.clone());
                (argv, dir, text)
            }
            None if app.command.is_empty() || !routes.is_some_and(|r| r.mounted) => {
                return Err(format!("app {id} is not mounted by any route"));
            }
            None => (app.command.clone(), app.dir.clone(), app.command[0].clone()),
        };
        // The request's variables, then what the supervisor vouches for
        // (the script, its document root), then the admin's `env`: later wins.
        let mut vars: Vec<(String, String)> = Vec::new();
        let mut path_info = None;
        for (name, value) in env {
            if matches!(
                name.as_str(),
                "SCRIPT_FILENAME" | "DOCUMENT_ROOT" | "PATH_TRANSLATED"
            ) {
                continue;
            }
            if name == "PATH_INFO" {
                path_info = Some(value.clone());
            }
            if cgi_variable(&name) {
                vars.push((name, value));
            } else {
                warn!("app {id}: the front end sent CGI variable {name:?}; dropped");
            }
        }
        vars.push(("SCRIPT_FILENAME".into(), filename));
        if let Some(root) = &document_root {
            vars.push(("DOCUMENT_ROOT".into(), root.to_string_lossy().into_owned()));
            // PATH_INFO under the document root, only for a plain path.
            if let Some(info) = path_info.filter(|i| {
                i.starts_with('/') && !i.split('/').any(|seg| seg == ".." || seg == ".")
            }) {
                let translated = root.join(info.trim_start_matches('/'));
                vars.push((
                    "PATH_TRANSLATED".into(),
                    translated.to_string_lossy().into_owned(),
                ));
            }
        }
        vars.extend(app.env.iter().cloned());
        let pipe = || {
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(|e| format!("app {id}: pipe: {e}"))
        };
        let (stdin_r, stdin_w) = pipe()?;
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        tasks_room(&self.cgroups, id)?;
        let cpu_limited = state.limits.cpu_millis.is_some();
        self.leaves += 1;
        let group = self
            .cgroups
            .leaf(&id.tenant, &id.app, &format!("{}.cgi", self.leaves))
            .map_err(|e| format!("app {id}: cgroup: {e}"))?;
        let cgroup = match &group {
            Some(g) => g
                .procs_files(cpu_limited)
                .map_err(|e| format!("app {id}: cgroup: {e}"))?,
            None => Vec::new(),
        };
        let isolate = self
            .views
            .isolate(&id.tenant, &app.isolation, &[])
            .map_err(|e| format!("app {id}: not started: {e}"))?;
        let spec = SpawnSpec {
            tenant: &id.tenant,
            user: &state.user,
            home: &state.home,
            min_uid: self.min_uid,
            argv: &argv,
            // A script given to an interpreter passes the program's checks.
            script: script_path.as_deref().filter(|_| !app.command.is_empty()),
            dir: &dir,
            env: &vars,
            fds: vec![(stdin_r, 0), (stdout_w, 1), (stderr_w, 2)],
            open_files: state.limits.open_files,
            cgroup,
            rlimits: fallback_rlimits(&self.cgroups, &state.limits, self.switch_user),
            switch_user: self.switch_user,
            isolation: self.isolation.as_ref(),
            isolate: isolate.as_ref(),
        };
        let child = spawn::spawn(spec).map_err(|e| {
            if let Some(g) = &group {
                g.remove();
            }
            format!("app {id}: not started: {e}")
        })?;
        self.cgi.push(CgiRun {
            id: id.clone(),
            leader: Leader(child, isolate.as_ref().is_some_and(|i| i.view.is_some())),
            group,
            // The front end ends the response at `timeout`; this is the
            // backstop, a moment later.
            deadline: Instant::now() + app.pool.timeout + CGI_GRACE,
        });
        Ok([stdin_w, stdout_r, stderr_r])
    }

    /// Collects ended CGI scripts and kills those past their app's `timeout`.
    /// A script's process group goes with it: what it left running in the
    /// background does not outlive it. The group is killed before the script
    /// is reaped (see [`Leader`]).
    pub fn reap_cgi(&mut self) {
        let now = Instant::now();
        for run in std::mem::take(&mut self.cgi) {
            if run.leader.exited() {
                let status = run.leader.kill_and_reap();
                if let Some(state) = self.apps.get(&run.id) {
                    let leaf = run.group.as_ref();
                    oom_check(status, &run.id, leaf, "a CGI script", &state.limits);
                }
                finish(run.group);
            } else if now >= run.deadline {
                warn!(
                    "app {}: CGI script (pid {}) still running after its timeout; killed",
                    run.id,
                    run.leader.pid()
                );
                run.leader.signal_group(Signal::SIGKILL);
                // Reaped on a thread: one stuck in the kernel must not hold
                // up the supervisor.
                let _ = std::thread::Builder::new()
                    .name("cgi-reap".into())
                    .spawn(move || {
                        run.leader.kill_and_reap();
                        if let Some(g) = run.group {
                            g.kill_all();
                            g.remove();
                        }
                    });
            } else {
                self.cgi.push(run);
            }
        }
    }

    /// Starts processes of apps below `min_processes` (unless backing off).
    /// Returns the new ones, to announce to the front end.
    pub fn warm(&mut self) -> Vec<(AppId, AppProcess)> {
        self.settle();
        self.reap_cgi();
        let now = Instant::now();
        let cgroups = &self.cgroups;
        self.tenants_gone.retain(|(name, due)| {
            if *due > now {
                return true;
            }
            // On a thread: a process stuck in the kernel must not hold up
            // the supervisor while its group is killed.
            let (cgroups, name) = (cgroups.clone(), name.clone());
            let _ = std::thread::Builder::new()
                .name("cgroup-drop".into())
                .spawn(move || cgroups.drop_tenant(&name));
            false
        });
        self.limits_pending
            .retain(|(name, limits)| match cgroups.set_tenant(name, limits) {
                Ok(()) => {
                    info!("tenant {name}: cgroup limits applied");
                    false
                }
                Err(_) => true,
            });
        let want: Vec<AppId> = self
            .apps
            .iter()
            .filter(|(id, s)| {
                s.app.protocol != Protocol::Cgi
                    && !self.held.contains(*id)
                    && s.serving() < s.app.pool.min_processes as usize
                    && s.retry_at.is_none_or(|at| at <= Instant::now())
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut started = Vec::new();
        for id in want {
            match self.start(&id) {
                Ok(p) => started.push((id, p)),
                Err(e) => warn!("keeping {id} warm: {e}"),
            }
        }
        started
    }

    /// Processes above their tenant's `process_memory` (resident memory,
    /// as `ps` shows it): each is named once in the tenant's error log and
    /// returned, for the front end to retire gracefully. Counted per tenant.
    pub fn over_memory(&mut self) -> Vec<(AppId, u32)> {
        let mut out = Vec::new();
        for (id, state) in &mut self.apps {
            let Some(max) = state.limits.process_memory else {
                continue;
            };
            for (slot, proc) in &mut state.procs {
                if proc.recycling || proc.retiring.is_some() {
                    continue;
                }
                let Some(rss) = resident(proc.leader.app_pid()) else {
                    continue;
                };
                if rss <= max {
                    continue;
                }
                proc.recycling = true;
                *self.recycles.entry(id.tenant.clone()).or_default() += 1;
                let text = format!(
                    "process {slot} uses {} MiB, above process_memory ({}): recycled once its requests end",
                    rss >> 20,
                    crate::config::show_size(max)
                );
                info!("app {id}: {text}");
                if let Some(log) = crate::tenant_log::get(&id.tenant) {
                    log.line(&id.app, text.as_bytes());
                }
                super::events::record(&id.tenant, Some(&id.app), EventKind::Recycle, 1, text);
                out.push((id.clone(), *slot));
            }
        }
        out
    }

    /// What the status page shows of app `id`: its processes (with the
    /// resident memory the meter read, `rss`), its CGI runs and its last
    /// problem. `memory` is its group's, from the meter. None when it is
    /// not configured.
    pub fn status(
        &self,
        id: &AppId,
        rss: &HashMap<u32, u64>,
        memory: Option<u64>,
    ) -> Option<AppStatus> {
        let state = self.apps.get(id)?;
        let now = (SystemTime::now(), Instant::now());
        let ms = crate::usage::to_ms;
        let uid = if self.switch_user {
            state.uid
        } else {
            rustix::process::geteuid().as_raw()
        };
        let processes = state
            .procs
            .iter()
            .map(|(&slot, p)| {
                let pid = p.leader.app_pid();
                ProcessStatus {
                    slot,
                    pid,
                    uid,
                    memory: rss.get(&pid).copied(),
                    started_ms: ms(now.0 - now.1.duration_since(p.started)),
                    // Retired once its requests end, as after a restart.
                    recycling: p.recycling || p.retiring.is_some(),
                }
            })
            .collect();
        Some(AppStatus {
            name: id.app.clone(),
            protocol: state.app.protocol,
            max_processes: state.app.pool.max_processes,
            memory,
            processes,
            cgi_running: self.cgi.iter().filter(|r| r.id == *id).count() as u32,
            last_problem: state
                .last_problem
                .as_ref()
                .map(|(at, what)| (ms(*at), what.clone())),
        })
    }

    /// The pids of every app process running now (for the meter to read
    /// their memory).
    pub fn pids(&self) -> Vec<u32> {
        self.apps
            .values()
            .flat_map(|s| {
                let starting = s.rollout.iter().flat_map(|r| r.procs.values());
                s.procs.values().chain(starting).map(|p| p.leader.app_pid())
            })
            .collect()
    }

    /// Every process that takes requests, to tell a (re)started front end
    /// (not those retiring after a restart, which are stopped at their
    /// `stop_timeout`, nor those a restart is starting).
    pub fn live(&self) -> Vec<(AppId, AppProcess)> {
        let mut out = Vec::new();
        for (id, state) in &self.apps {
            for proc in state.procs.values().filter(|p| p.retiring.is_none()) {
                out.push((id.clone(), proc.process.clone()));
            }
        }
        out
    }

    /// Stops one process (the front end retires it). A process that already
    /// died was in a request when it did: not a start-up failure.
    pub fn retire(&mut self, id: &AppId, slot: u32) {
        let Some(state) = self.apps.get_mut(id) else {
            return;
        };
        match state.procs.remove(&slot) {
            // Dead already (the front end saw its connection fail): reaped
            // here, with the cause when it was the OOM killer.
            Some(proc) if proc.leader.exited() => {
                let status = proc.leader.kill_and_reap();
                let _ = std::fs::remove_file(&proc.process.socket);
                let what = format!("process {slot}");
                oom_check(status, id, proc.group.as_ref(), &what, &state.limits);
                finish(proc.group);
                info!("app {id}: process {slot} ended in a request");
            }
            Some(proc) => {
                info!("app {id}: retiring process {slot}");
                stop(id, slot, proc, state.limits);
            }
            None => state.suspects.retain(|(s, _)| *s != slot),
        }
    }

    /// Young deaths the front end did not claim within a second count towards
    /// the crash loop; from `CRASH_LOOP` in a row on, starts back off.
    fn settle(&mut self) {
        for (id, state) in &mut self.apps {
            let before = state.suspects.len();
            state.suspects.retain(|(_, at)| at.elapsed() < SUSPECT_WAIT);
            let counted = (before - state.suspects.len()) as u32;
            if counted == 0 {
                continue;
            }
            state.failures += counted;
            if state.failures >= CRASH_LOOP {
                let doublings = (state.failures - CRASH_LOOP).min(7);
                let wait = BACKOFF_START
                    .saturating_mul(1 << doublings)
                    .min(BACKOFF_MAX);
                state.retry_at = Some(Instant::now() + wait);
                warn!(
                    "app {id}: crashed {} times in a row at start-up; next start in {wait:?}",
                    state.failures
                );
            }
        }
    }

    /// Collects processes that exited; returns (app, slot, why) for each
    /// pool process (CGI runs end unannounced: the front end sees their
    /// output end).
    pub fn reap(&mut self) -> Vec<(AppId, u32, String)> {
        self.reap_cgi();
        let mut gone = Vec::new();
        for (id, state) in &mut self.apps {
            let dead: Vec<u32> = state
                .procs
                .iter()
                .filter(|(_, proc)| proc.leader.exited())
                .map(|(slot, _)| *slot)
                .collect();
            for slot in dead {
                if let Some(proc) = state.procs.remove(&slot) {
                    // What it left in its group goes with it.
                    let status = proc.leader.kill_and_reap();
                    let what = format!("process {slot}");
                    oom_check(status, id, proc.group.as_ref(), &what, &state.limits);
                    finish(proc.group);
                    let success = status.is_some_and(|s| s.success());
                    let status = status.map_or_else(|| "ended".into(), |s| s.to_string());
                    let _ = std::fs::remove_file(&proc.process.socket);
                    let lived = proc.started.elapsed();
                    // Dying young again and again is a crash loop: back off (see
                    // `settle`). One death (a crash, the OOM killer) just means
                    // a new process for the next request. (One a restart
                    // replaced says nothing of the program now.)
                    if proc.retiring.is_none() {
                        if lived < YOUNG && !success {
                            state.suspects.push((slot, Instant::now()));
                        } else {
                            state.failures = 0;
                            state.retry_at = None;
                        }
                    }
                    warn!("app {id}: process {slot} exited ({status}) after {lived:.1?}");
                    if !success {
                        let what = format!("process {slot} exited ({status}) after {lived:.1?}");
                        state.last_problem = Some((SystemTime::now(), what));
                    }
                    gone.push((id.clone(), slot, status));
                }
            }
            if let Some(rollout) = &mut state.rollout
                && rollout.reap(id, &state.limits)
            {
                self.wake.notify_one();
            }
        }
        gone
    }

    /// Stops every process: SIGTERM to each process group, SIGKILL to what is
    /// left after a grace period.
    pub fn stop_all(&mut self) {
        for run in self.cgi.drain(..) {
            run.leader.kill_and_reap();
        }
        let mut procs = Vec::new();
        for (id, state) in &mut self.apps {
            let starting = state.rollout.take().map(|r| r.into_procs());
            for (slot, proc) in std::mem::take(&mut state.procs)
                .into_iter()
                .chain(starting.into_iter().flatten())
            {
                proc.leader.signal_group(Signal::SIGTERM);
                procs.push((id.clone(), slot, proc));
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for (id, slot, proc) in procs {
            let _ = std::fs::remove_file(&proc.process.socket);
            end_or_kill(&id, slot, proc.leader, deadline);
            if let Some(g) = proc.group {
                g.kill_all();
                g.remove();
            }
        }
        // Whatever else is left (a daemon a process started and left behind
        // in a leaf of its own app) goes too.
        self.cgroups.shutdown();
    }
}

/// `script`, canonical, and the canonical site root it lies under, if a route
/// of the app sends scripts under that root with the script's extension (the
/// front end found it there; the supervisor does not take its word for it).
fn script_allowed(routes: Option<&CgiRoutes>, script: &Path) -> Result<(PathBuf, PathBuf), String> {
    let real = std::fs::canonicalize(script).map_err(|e| e.to_string())?;
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for (root, extensions) in routes.map(|r| r.scripts.as_slice()).unwrap_or_default() {
        let Ok(root) = std::fs::canonicalize(root) else {
            continue;
        };
        let ext_ok = name
            .rsplit_once('.')
            .is_some_and(|(stem, ext)| !stem.is_empty() && extensions.iter().any(|e| e == ext));
        if ext_ok && real.starts_with(&root) {
            return Ok((real, root));
        }
    }
    Err("not under a site root whose routes send such scripts to this app".into())
}

/// The CGI meta-variables (RFC 3875 §4.1, with Apache's and PHP's usual
/// additions) a script may be given. Anything else the front end sends is
/// dropped: a variable such as `LD_PRELOAD` would change what the tenant's
/// process runs. `HTTP_*` (request headers) is allowed separately.
const CGI_VARIABLES: &[&str] = &[
    "AUTH_TYPE",
    "CONTENT_LENGTH",
    "CONTENT_TYPE",
    "GATEWAY_INTERFACE",
    "HTTPS",
    "PATH_INFO",
    "QUERY_STRING",
    "REDIRECT_STATUS",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "REMOTE_USER",
    "REQUEST_METHOD",
    "REQUEST_SCHEME",
    "REQUEST_URI",
    "SCRIPT_NAME",
    "SERVER_ADDR",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "SERVER_SOFTWARE",
];

/// Whether the front end may set `name` for a CGI script.
fn cgi_variable(name: &str) -> bool {
    CGI_VARIABLES.contains(&name)
        || name.strip_prefix("HTTP_").is_some_and(|h| {
            !h.is_empty()
                && h != "PROXY"
                && h.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// Whether two configurations of an app run the same thing (else the running
/// processes are replaced).
fn same_program(a: &App, b: &App) -> bool {
    a.protocol == b.protocol
        && a.command == b.command
        && a.dir == b.dir
        && a.env == b.env
        && a.bind == b.bind
        && a.isolation == b.isolation
}

/// Waits (until `deadline`) for the app to bind its socket at `path`, then
/// gives the front end's group read and write on it. The socket is reached
/// through an `O_PATH | O_NOFOLLOW` descriptor and must be a socket owned by
/// `uid`: a symlink or other file the tenant puts there is left alone, so root
/// never changes the mode of anything else.
fn open_socket_to_front(id: &AppId, path: &Path, uid: u32, gid: u32, deadline: Instant) {
    use rustix::fs::{FileType, Mode, OFlags};
    loop {
        let opened = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        );
        if let Ok(fd) = opened {
            let Ok(st) = rustix::fs::fstat(&fd) else {
                return;
            };
            if FileType::from_raw_mode(st.st_mode) != FileType::Socket || st.st_uid != uid {
                warn!(
                    "app {id}: {} is not a socket of the app's user; left alone",
                    path.display()
                );
                return;
            }
            let through = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
            let done =
                rustix::fs::chown(through.as_str(), None, Some(rustix::fs::Gid::from_raw(gid)))
                    .and_then(|()| rustix::fs::chmod(through.as_str(), Mode::from_raw_mode(0o660)));
            if let Err(e) = done {
                warn!(
                    "app {id}: cannot open {} to the front end: {e}",
                    path.display()
                );
            }
            return;
        }
        if Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `state_dir/bound/TENANT`, where a tenant's apps bind their own Unix
/// sockets (`bind = "socket"`): `bound/` is root's and may only be passed
/// through (0711); the tenant's directory is the tenant's, with the front
/// end's group (setgid, so the sockets get it too) and nobody else (02750).
/// The app's socket is then made connectable by that group
/// ([`open_socket_to_front`]).
fn bound_dir(
    apps_dir: &Path,
    tenant: &str,
    uid: u32,
    front_gid: Option<u32>,
) -> std::io::Result<PathBuf> {
    let parent = apps_dir.parent().unwrap_or(apps_dir).join("bound");
    let tenant_dir = parent.join(tenant);
    own_dir(&parent, None, 0o711)?;
    match front_gid {
        Some(gid) => own_dir(&tenant_dir, Some((uid, gid)), 0o2750)?,
        None => own_dir(&tenant_dir, None, 0o700)?,
    }
    Ok(tenant_dir)
}

/// Makes `dir` a directory (created if missing; a symlink or other file is
/// refused) with `owner` (uid, gid) when given, and `mode`.
fn own_dir(dir: &Path, owner: Option<(u32, u32)>, mode: u32) -> std::io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() || !m.is_dir() => {
            return Err(std::io::Error::other(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        Ok(_) => {}
        Err(_) => std::fs::create_dir(dir)?,
    }
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// What [`Leader::peek`] sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peek {
    Running,
    /// Exited, not reaped: a zombie still holding its pid.
    Exited,
    /// Reaped already, or not a child of ours.
    Gone,
}

/// An app process or CGI script, which leads its own session and process
/// group (`setsid` in [`spawn`]), and the only way berth signals that group.
///
/// A group is named by its leader's pid, and a pid is free for reuse once its
/// process has been reaped: a `killpg` by that number afterwards could hit an
/// unrelated group (another tenant's, or root's) that got the number. So a
/// group is signalled only while its leader is not reaped (alive, or a zombie
/// still holding the number): the leader's exit is seen with
/// `waitid(WNOWAIT)`, which leaves it a zombie, the group is killed, and only
/// then is the leader reaped, which consumes the `Leader`, so no signal can
/// follow.
/// The second field: whether berth's init runs the app in its own view (the
/// leader is then the init's outer process; see `crate::isolation::init`).
struct Leader(Child, bool);

impl Leader {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// The app's own process, whose memory counts: the leader, or for an
    /// app in its own view the process two levels below it (the leader
    /// until the init has started it).
    fn app_pid(&self) -> u32 {
        if !self.1 {
            return self.pid();
        }
        let child_of = |pid: u32| -> Option<u32> {
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        child_of(self.pid())
            .and_then(child_of)
            .unwrap_or(self.pid())
    }

    /// The leader's state, seen with `waitid(WNOWAIT)`: without reaping it.
    fn peek(&self) -> Peek {
        use rustix::process::{WaitId, WaitIdOptions};
        let Some(pid) = rustix::process::Pid::from_raw(self.pid() as i32) else {
            return Peek::Gone;
        };
        match rustix::process::waitid(
            WaitId::Pid(pid),
            WaitIdOptions::EXITED | WaitIdOptions::NOWAIT | WaitIdOptions::NOHANG,
        ) {
            Ok(None) => Peek::Running,
            Ok(Some(_)) => Peek::Exited,
            Err(_) => Peek::Gone,
        }
    }

    /// Whether the leader is still ours to wait for: running, or exited and
    /// not reaped. Only then does its pid name its group.
    fn unreaped(&self) -> bool {
        self.peek() != Peek::Gone
    }

    /// Whether the leader has exited, without reaping it.
    fn exited(&self) -> bool {
        self.peek() != Peek::Running
    }

    /// Sends `sig` to the whole group.
    fn signal_group(&self, sig: Signal) {
        if self.unreaped() {
            let _ = killpg(Pid::from_raw(self.pid() as i32), sig);
        }
    }

    /// SIGKILL to what is left of the group, then reaps the leader (at once
    /// if it has exited; else once the signal has ended it). None if it was
    /// not ours to reap.
    fn kill_and_reap(mut self) -> Option<std::process::ExitStatus> {
        self.signal_group(Signal::SIGKILL);
        self.0.wait().ok()
    }
}

/// SIGTERM to the process group, then SIGKILL after the grace period, without
/// blocking the supervisor: a thread waits for it.
fn stop(id: &AppId, slot: u32, proc: Proc, limits: Limits) {
    proc.leader.signal_group(Signal::SIGTERM);
    let _ = std::fs::remove_file(&proc.process.socket);
    let id = id.clone();
    let _ = std::thread::Builder::new()
        .name("app-stop".into())
        .spawn(move || {
            let status = end_or_kill(&id, slot, proc.leader, Instant::now() + STOP_GRACE);
            let what = format!("process {slot}");
            oom_check(status, &id, proc.group.as_ref(), &what, &limits);
            // What it started and left running, in a session of its own or
            // not, is in its cgroup.
            if let Some(g) = proc.group {
                g.kill_all();
                g.remove();
            }
        });
}

/// After a process or CGI script was reaped: its leaf goes, at once when
/// nothing is left in it, else on a thread that kills what is left first.
fn finish(group: Option<Group>) {
    let Some(g) = group else {
        return;
    };
    if g.pids().is_empty() {
        g.remove();
    } else {
        let _ = std::thread::Builder::new()
            .name("cgroup-kill".into())
            .spawn(move || {
                g.kill_all();
                g.remove();
            });
    }
}

/// A process's resident memory in bytes (`/proc/PID/statm`).
pub(super) fn resident(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

/// Refuses a start while the tenant has all the tasks its `tasks` allows
/// (processes stopping count until they are gone): a process moved into
/// its cgroup would not be held to `pids.max`.
fn tasks_room(cgroups: &Cgroups, id: &AppId) -> Result<(), String> {
    match cgroups.tenant(&id.tenant) {
        Some(g) if g.at_tasks_limit() => Err(format!(
            "app {id}: not started: tenant {} is at its tasks limit",
            id.tenant
        )),
        _ => Ok(()),
    }
}

/// A process of `id` that ended (`status`): when it was by SIGKILL and the
/// OOM killer sent it (its leaf counts an OOM kill), it was at the tenant's
/// memory limit. Said in berth's log and in the tenant's own error log.
fn oom_check(
    status: Option<std::process::ExitStatus>,
    id: &AppId,
    leaf: Option<&Group>,
    what: &str,
    limits: &Limits,
) {
    let killed =
        status.is_some_and(|s| std::os::unix::process::ExitStatusExt::signal(&s) == Some(9));
    if !killed || leaf.is_none_or(|g| g.stats().oom_kills == 0) {
        return;
    }
    let limit = limits
        .memory
        .map_or_else(|| "unlimited".to_string(), crate::config::show_size);
    let text = format!(
        "{what} was killed by the OOM killer: the tenant reached its memory limit ({limit}); requests it was serving got 502"
    );
    warn!("app {id}: {text}");
    if let Some(log) = crate::tenant_log::get(&id.tenant) {
        log.line(&id.app, text.as_bytes());
    }
    super::events::record(&id.tenant, Some(&id.app), EventKind::OomKill, 1, text);
}

/// Where cgroups are off: the tenant's `memory` as each process's
/// RLIMIT_DATA, and its `tasks` as RLIMIT_NPROC (counted per user, so only
/// when each tenant has a user of its own).
fn fallback_rlimits(
    cgroups: &Cgroups,
    limits: &Limits,
    switch_user: bool,
) -> Vec<(crate::sys::Rlimit, u64)> {
    if cgroups.kind() != Kind::None {
        return Vec::new();
    }
    let mut out = Vec::new();
    if let Some(m) = limits.memory {
        out.push((crate::sys::Rlimit::Data, m));
    }
    if let (Some(t), true) = (limits.tasks, switch_user) {
        out.push((crate::sys::Rlimit::Nproc, u64::from(t)));
    }
    out
}

/// Waits for a process sent SIGTERM to exit, until `deadline`; then SIGKILL
/// to whatever is left in its process group (the process too, if it ignored
/// SIGTERM), and reaps it.
fn end_or_kill(
    id: &AppId,
    slot: u32,
    leader: Leader,
    deadline: Instant,
) -> Option<std::process::ExitStatus> {
    while !leader.exited() {
        if Instant::now() >= deadline {
            warn!("app {id}: process {slot} ignored SIGTERM; killing it");
            // Killed by us, not by the OOM killer.
            leader.kill_and_reap();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    leader.kill_and_reap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_run_only_where_a_route_sends_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("public");
        std::fs::create_dir_all(root.join("uploads")).unwrap();
        for f in ["ok.cgi", "uploads/evil.jpg", "x.cgi.txt"] {
            std::fs::write(root.join(f), "#!/bin/sh\n").unwrap();
        }
        std::fs::write(dir.path().join("outside.cgi"), "#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside.cgi"), root.join("link.cgi")).unwrap();
        let routes = CgiRoutes {
            mounted: false,
            scripts: vec![(root.clone(), vec!["cgi".into()])],
        };
        let real_root = std::fs::canonicalize(&root).unwrap();
        let (script, doc_root) = script_allowed(Some(&routes), &root.join("ok.cgi")).unwrap();
        assert_eq!(
            (script, doc_root),
            (real_root.join("ok.cgi"), real_root.clone())
        );
        for refused in [
            root.join("uploads/evil.jpg"),
            root.join("x.cgi.txt"),
            root.join("link.cgi"),
            root.join("uploads/../../outside.cgi"),
            dir.path().join("outside.cgi"),
            root.join("missing.cgi"),
        ] {
            assert!(
                script_allowed(Some(&routes), &refused).is_err(),
                "{}",
                refused.display()
            );
        }
        assert!(
            script_allowed(None, &root.join("ok.cgi")).is_err(),
            "no route, no script"
        );
    }

    /// The state letter of `/proc/PID/stat` (None once the pid is gone).
    fn state_of(pid: u32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(") ")?.1.chars().next()
    }

    #[test]
    fn a_group_is_killed_while_its_leader_is_a_zombie_then_the_leader_is_reaped() {
        use std::io::BufRead;
        // setsid(1) execs in place (the test is not a group leader): the
        // shell leads a new group and leaves a sleep in it.
        let mut child = std::process::Command::new("setsid")
            .args(["sh", "-c", "sleep 300 & echo $!"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let left: u32 = line.trim().parse().unwrap();
        let leader = Leader(child, false);
        let pid = leader.pid();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !leader.exited() {
            assert!(Instant::now() < deadline, "the leader did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Seen, not reaped: the zombie still holds the group's number.
        assert_eq!(state_of(pid), Some('Z'));
        assert!(leader.unreaped());
        assert!(
            matches!(state_of(left), Some(c) if c != 'Z'),
            "sleep {left}"
        );
        let status = leader.kill_and_reap().expect("reaped");
        assert!(status.success());
        assert_eq!(state_of(pid), None, "the leader is reaped");
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(state_of(left), Some(c) if c != 'Z') {
            assert!(Instant::now() < deadline, "sleep {left} outlived its group");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn only_cgi_variables_pass_from_the_front_end() {
        for ok in ["QUERY_STRING", "REMOTE_ADDR", "HTTP_USER_AGENT", "HTTP_X_1"] {
            assert!(cgi_variable(ok), "{ok}");
        }
        for refused in [
            "LD_PRELOAD",
            "PATH",
            "HOME",
            "SCRIPT_FILENAME_X",
            "HTTP_",
            "HTTP_PROXY",
            "HTTP_x",
            "HTTP_A=B",
            "PHPRC",
        ] {
            assert!(!cgi_variable(refused), "{refused}");
        }
    }
}
