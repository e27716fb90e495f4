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
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{error, info, warn};
use tracing_subscriber::filter::LevelFilter;

mod apps;
pub mod spawn;

use crate::config::{self, Config, Problems};
use crate::ipc::{self, ListenerSpec, Plan, SitePlan, ToFront, ToSupervisor};
use crate::sys::{self, Identity};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration")]
    Config(Problems),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
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
    prepare_dir(&config.server.state_dir, root)?;
    let front_gid = if root {
        Some(front_identity(&config.server.user)?.gid)
    } else {
        None
    };
    let apps = apps::AppManager::new(&config, front_gid, root).map_err(|e| Error::Dir {
        path: config.server.state_dir.join("apps"),
        why: e.to_string(),
    })?;
    let mut sup = Supervisor {
        path: path.to_path_buf(),
        config,
        root,
        level,
        listeners: Listeners::default(),
        generation: 0,
        apps,
    };
    prepare_dir(&sup.config.server.log_dir, root)?;
    let logs = sup.open_logs()?;
    crate::logging::set_file(File::from(logs.error.try_clone()?));
    sup.listeners.sync(&sup.config)?;
    raise_nofile_limit();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(sup.serve(logs));
    // Whatever way the loop ended, no app outlives berth.
    sup.apps.stop_all();
    result
}

struct Supervisor {
    path: PathBuf,
    config: Config,
    root: bool,
    level: LevelFilter,
    listeners: Listeners,
    generation: u64,
    apps: apps::AppManager,
}

/// Open log files: one access log per tenant (in config order) and the error log.
struct Logs {
    tenants: Vec<String>,
    access: Vec<OwnedFd>,
    /// Each tenant's `error.log` (its apps' stderr).
    errors: Vec<OwnedFd>,
    error: OwnedFd,
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

/// The running front end: its process and our end of the channel.
struct Front {
    child: Child,
    sock: Arc<OwnedFd>,
}

enum Event {
    FromFront(ToSupervisor),
    FrontGone,
}

impl Supervisor {
    async fn serve(&mut self, mut logs: Logs) -> Result<(), Error> {
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        let mut chld = signal(SignalKind::child())?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut front = self.spawn_front(&logs, tx.clone())?;
        let mut backoff = Duration::from_millis(500);
        let mut started = Instant::now();
        info!("berth started from {}", self.path.display());
        loop {
            tokio::select! {
                _ = hup.recv() => match self.reload() {
                    Ok(new_logs) => {
                        logs = new_logs;
                        if let Err(e) = self.send_plan(&front, &logs) {
                            error!("cannot send the new configuration to the front end: {e}");
                        }
                        for (app, slot) in self.apps.update(&self.config) {
                            let why = "stopped: its configuration changed".to_string();
                            tell(&front, &ToFront::Exited { app, slot, why });
                        }
                        self.warm(&front);
                    }
                    Err(Error::Config(problems)) => {
                        for p in problems.iter() {
                            error!("reload: {p}");
                        }
                        error!("reload refused: {} problem(s); still serving the previous configuration", problems.len());
                    }
                    Err(e) => error!("reload refused: {e}; still serving the previous configuration"),
                },
                _ = usr1.recv() => match self.open_logs() {
                    Ok(new_logs) => {
                        if let Ok(f) = new_logs.error.try_clone() {
                            crate::logging::set_file(File::from(f));
                        }
                        let fds = new_logs.fds();
                        let msg = ToFront::Logs { tenants: new_logs.tenants.clone() };
                        if let Err(e) = ipc::send(front.sock.as_fd(), &msg, &fds) {
                            error!("cannot pass reopened logs to the front end: {e}");
                        }
                        logs = new_logs;
                        info!("log files reopened");
                    }
                    Err(e) => error!("cannot reopen log files: {e}"),
                },
                _ = chld.recv() => {
                    for (app, slot, why) in self.apps.reap() {
                        tell(&front, &ToFront::Exited { app, slot, why });
                    }
                }
                _ = tick.tick() => self.warm(&front),
                _ = term.recv() => return self.stop(front).await,
                _ = int.recv() => return self.stop(front).await,
                ev = rx.recv() => match ev {
                    Some(Event::FromFront(ToSupervisor::Applied { generation })) => {
                        info!("front end serving configuration generation {generation}");
                    }
                    Some(Event::FromFront(ToSupervisor::StartProcess { req, app })) => {
                        let result = self.apps.start(&app);
                        tell(&front, &ToFront::Started { req, result });
                    }
                    Some(Event::FromFront(ToSupervisor::Retire { app, slot })) => {
                        self.apps.retire(&app, slot);
                    }
                    Some(Event::FromFront(ToSupervisor::RunCgi { req, app, script, env })) => {
                        let (result, fds) = match self.apps.run_cgi(&app, script, env) {
                            Ok(fds) => (Ok(()), Vec::from(fds)),
                            Err(e) => (Err(e), Vec::new()),
                        };
                        let borrowed = ipc::borrow_all(&fds);
                        if let Err(e) = ipc::send(front.sock.as_fd(), &ToFront::CgiStarted { req, result }, &borrowed) {
                            warn!("cannot pass a CGI run to the front end: {e}");
                        }
                    }
                    Some(Event::FrontGone) | None => {
                        let status = front.child.wait()?;
                        if started.elapsed() > Duration::from_secs(60) {
                            backoff = Duration::from_millis(500);
                        }
                        error!("front end exited ({status}); restarting in {backoff:?}");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = term.recv() => return Ok(()),
                            _ = int.recv() => return Ok(()),
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        // Drain stale events of the dead front end.
                        while rx.try_recv().is_ok() {}
                        front = self.spawn_front(&logs, tx.clone())?;
                        started = Instant::now();
                    }
                },
            }
        }
    }

    /// Loads the configuration again; on success it becomes current.
    fn reload(&mut self) -> Result<Logs, Error> {
        let config = config::load(&self.path).map_err(Error::Config)?;
        let old = std::mem::replace(&mut self.config, config);
        let result = (|| {
            prepare_dir(&self.config.server.log_dir, self.root)?;
            let logs = self.open_logs()?;
            self.listeners.sync(&self.config)?;
            Ok(logs)
        })();
        match result {
            Ok(logs) => {
                info!("configuration reloaded from {}", self.path.display());
                Ok(logs)
            }
            Err(e) => {
                self.config = old;
                Err(e)
            }
        }
    }

    /// Keeps `min_processes` of every app running and tells the front end.
    fn warm(&mut self, front: &Front) {
        for (app, process) in self.apps.warm() {
            tell(front, &ToFront::Spawned { app, process });
        }
    }

    async fn stop(&mut self, mut front: Front) -> Result<(), Error> {
        info!("stopping: draining requests in flight");
        let _ = ipc::send(front.sock.as_fd(), &ToFront::Shutdown, &[]);
        let limit = self.config.server.limits.drain_timeout + Duration::from_secs(5);
        let deadline = Instant::now() + limit;
        loop {
            match front.child.try_wait()? {
                Some(status) => {
                    info!("front end exited ({status}); stopping apps");
                    self.apps.stop_all();
                    info!("stopped");
                    return Ok(());
                }
                None if Instant::now() >= deadline => {
                    warn!("front end did not exit within {limit:?}; killing it");
                    let _ = front.child.kill();
                    let _ = front.child.wait();
                    self.apps.stop_all();
                    return Ok(());
                }
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    fn front_identity(&self) -> Result<Option<Identity>, Error> {
        if !self.root {
            return Ok(None);
        }
        front_identity(&self.config.server.user).map(Some)
    }

    fn spawn_front(
        &mut self,
        logs: &Logs,
        events: mpsc::UnboundedSender<Event>,
    ) -> Result<Front, Error> {
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
        let front = Front { child, sock };
        match &identity {
            Some(id) => info!(
                "front end started (pid {}) as {} (uid {}, gid {})",
                front.child.id(),
                self.config.server.user,
                id.uid,
                id.gid
            ),
            None => info!("front end started (pid {})", front.child.id()),
        }
        let reader = front.sock.clone();
        std::thread::Builder::new()
            .name("front-channel".into())
            .spawn(move || {
                loop {
                    match ipc::recv::<ToSupervisor>(reader.as_fd()) {
                        Ok((msg, _fds)) => {
                            if events.send(Event::FromFront(msg)).is_err() {
                                return;
                            }
                        }
                        Err(_) => {
                            let _ = events.send(Event::FrontGone);
                            return;
                        }
                    }
                }
            })?;
        self.send_plan(&front, logs)?;
        for (app, process) in self.apps.live() {
            tell(&front, &ToFront::Spawned { app, process });
        }
        Ok(front)
    }

    fn send_plan(&mut self, front: &Front, logs: &Logs) -> Result<(), Error> {
        self.generation += 1;
        let (plan, mut fds) = self.plan(logs);
        fds.extend(logs.fds());
        ipc::send(front.sock.as_fd(), &ToFront::Plan(plan), &fds)
            .map_err(|e| Error::Io(io::Error::other(e.to_string())))
    }

    fn plan(&self, logs: &Logs) -> (Plan, Vec<BorrowedFd<'_>>) {
        let cfg = &self.config;
        let mut listeners = Vec::new();
        let mut fds = Vec::new();
        for (spec, fd) in &self.listeners.bound {
            listeners.push(*spec);
            fds.push(fd.as_fd());
        }
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
                })
            })
            .collect();
        let plan = Plan {
            generation: self.generation,
            limits: cfg.server.limits.clone(),
            listeners,
            logs: logs.tenants.clone(),
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
        };
        (plan, fds)
    }

    /// Opens `log_dir/TENANT/access.log` for every tenant and `log_dir/error.log`.
    fn open_logs(&self) -> Result<Logs, Error> {
        let dir = &self.config.server.log_dir;
        let mut tenants = Vec::new();
        let mut access = Vec::new();
        let mut errors = Vec::new();
        for t in &self.config.tenants {
            let tdir = dir.join(&t.name);
            prepare_dir(&tdir, self.root)?;
            let group = self.root.then_some(t.gid);
            access.push(open_log(&tdir, "access.log", group)?);
            errors.push(open_log(&tdir, "error.log", group)?);
            tenants.push(t.name.clone());
        }
        let error = open_log(dir, "error.log", None)?;
        Ok(Logs {
            tenants,
            access,
            errors,
            error,
        })
    }
}

/// Creates `path` if needed and checks that it is a real directory (not a
/// symlink) that nobody but its owner can write, owned by us. These are the
/// directories log files are created in: if a tenant could write to one, it
/// could plant a symlink for root to follow (invariant 7).
fn prepare_dir(path: &Path, root: bool) -> Result<(), Error> {
    let fail = |why: String| Error::Dir {
        path: path.to_path_buf(),
        why,
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path).map_err(|e| fail(format!("cannot create: {e}")))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| fail(e.to_string()))?;
        }
        Err(e) => return Err(fail(e.to_string())),
        Ok(_) => {}
    }
    let meta = std::fs::symlink_metadata(path).map_err(|e| fail(e.to_string()))?;
    if meta.file_type().is_symlink() {
        return Err(fail("is a symbolic link; refusing to use it".into()));
    }
    if !meta.is_dir() {
        return Err(fail("is not a directory".into()));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(fail(format!(
            "is owned by uid {}, not by uid {me}{}",
            meta.uid(),
            if root { " (root)" } else { "" }
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(fail(format!(
            "is writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Opens a log file for appending, refusing symlinks (O_NOFOLLOW) and anything
/// but a regular file. With `group`, the file is made readable by that group
/// (the tenant reads its own access log).
fn open_log(dir: &Path, name: &str, group: Option<u32>) -> Result<OwnedFd, Error> {
    let path = dir.join(name);
    let fail = |source: io::Error| Error::Log {
        path: path.clone(),
        source,
    };
    let dirfd = rustix::fs::open(
        dir,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::PATH,
        Mode::empty(),
    )
    .map_err(|e| fail(e.into()))?;
    let fd = rustix::fs::openat(
        &dirfd,
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
        let wanted: Vec<ListenerSpec> = cfg
            .server
            .listen
            .iter()
            .map(|&addr| ListenerSpec { addr, tls: false })
            .chain(
                cfg.server
                    .tls_listen
                    .iter()
                    .map(|&addr| ListenerSpec { addr, tls: true }),
            )
            .collect();
        let mut next = BTreeMap::new();
        for spec in &wanted {
            // The same address may move between listen and tls_listen.
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
    use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
    let fail = |e: rustix::io::Errno| Error::Listen {
        addr,
        source: e.into(),
    };
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)
        .map_err(fail)?;
    sockopt::set_socket_reuseaddr(&fd, true).map_err(fail)?;
    if addr.is_ipv6() {
        sockopt::set_ipv6_v6only(&fd, true).map_err(fail)?;
    }
    rustix::net::bind(&fd, &addr).map_err(fail)?;
    rustix::net::listen(&fd, 4096).map_err(fail)?;
    Ok(fd)
}

/// Lets the front end hold many connections: raise the soft open-file limit to
/// the hard one (children inherit it).
fn raise_nofile_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
}

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

/// Sends a message to the front end; a failure means it is gone, which the
/// event loop notices on its own.
fn tell(front: &Front, msg: &ToFront) {
    if let Err(e) = ipc::send(front.sock.as_fd(), msg, &[]) {
        warn!("front end channel: {e}");
    }
}
