//! The supervisor's side of the control socket ([`crate::control`]): it
//! creates the socket, keeps the control thread told of the configuration
//! in use, opens the audit log, and answers on its loop the calls that need
//! the loop's state: `status`, `stop`, `start`, `restart` and `reload`,
//! each behind a method of its own ([`Supervisor::stop_app`],
//! [`Supervisor::start_app`], [`Supervisor::restart_app`],
//! [`Supervisor::reload_for`]). Nothing here waits on a client: a call
//! comes with a oneshot, and its answer is sent without waiting.
//!
//! The socket's directory is walked and created as `state_dir` is
//! ([`prepare_dir`]: root's all the way, no symlink); the socket is bound
//! through that directory's descriptor, made 0666 (each request is
//! authorised by `SO_PEERCRED`, not by the file's mode), and removed when
//! berth stops if it is still ours. An entry already at the path is
//! replaced only when it is a socket nobody listens on (left by a berth
//! that crashed): never a file, a directory or a symlink, and never a live
//! socket (another berth's: berth then runs without one, and says so).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustix::fs::{AtFlags, FileType, Mode};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::apps::RestartOutcome;
use super::{Error, Logs, SafeDir, Supervisor, open_log, prepare_dir};
use crate::config::{Config, Tenant};
use crate::control::audit::Audit;
use crate::control::proto::{self, ProblemsReply, Reply, TenantStatus};
use crate::control::server::{self, Call, Context, LoopOp};
use crate::ipc::{AppId, ToFront};

/// Calls from the control thread that may wait for the loop.
const CALLS: usize = 16;

/// The audit log's name in `log_dir`.
pub(super) const AUDIT_LOG: &str = "audit.log";

/// The control socket as the supervisor keeps it.
pub(super) struct Control {
    serving: Option<Serving>,
    context: Arc<ArcSwap<Context>>,
    calls_tx: mpsc::Sender<Call>,
    /// Taken by the loop when it starts.
    calls: Option<mpsc::Receiver<Call>>,
    pub(super) audit: Arc<Audit>,
}

/// A socket being served.
struct Serving {
    path: PathBuf,
    dir: SafeDir,
    name: OsString,
    /// Its device and inode: removed at the end only if still ours.
    id: (u64, u64),
    _server: server::Server,
}

impl Control {
    /// Nothing served yet; [`Control::sync`] creates the socket.
    pub(super) fn new(config: &Config, path: &Path) -> Control {
        let (calls_tx, calls) = mpsc::channel(CALLS);
        Control {
            serving: None,
            context: Arc::new(ArcSwap::from_pointee(context(config, path))),
            calls_tx,
            calls: Some(calls),
            audit: Arc::new(Audit::default()),
        }
    }

    /// The calls for the loop (once).
    pub(super) fn take_calls(&mut self) -> mpsc::Receiver<Call> {
        self.calls.take().expect("the loop takes the calls once")
    }

    /// Serves the socket `config` names (moving it when it changed, closing
    /// it when it is off), and gives the control thread `config`.
    pub(super) fn sync(&mut self, config: &Config, path: &Path, root: bool) {
        self.context.store(Arc::new(context(config, path)));
        let wanted = config.server.control.effective(root);
        // The same socket, still there: nothing to do (one removed by hand
        // is made again).
        if let Some(s) = &self.serving
            && Some(s.path.as_path()) == wanted
            && s.ours()
        {
            return;
        }
        self.close();
        let Some(path) = wanted else {
            if config.server.control.socket.is_some() {
                info!(
                    "no control socket: not started as root, and control_socket is not set (set it to a path of this user's to use berth ctl)"
                );
            } else {
                info!("no control socket (control_socket = \"off\")");
            }
            return;
        };
        match self.serve(path) {
            Ok(serving) => {
                info!("control socket {}", path.display());
                self.serving = Some(serving);
            }
            Err(why) => error!(
                "control socket {}: {why}; berth ctl is off until it can be created (at a reload)",
                path.display()
            ),
        }
    }

    fn serve(&self, path: &Path) -> Result<Serving, String> {
        let (listener, dir, name, id) = bind(path)?;
        let server = server::start(
            listener,
            self.context.clone(),
            self.calls_tx.clone(),
            self.audit.clone(),
        )
        .map_err(|e| format!("cannot start its thread: {e}"))?;
        Ok(Serving {
            path: path.to_path_buf(),
            dir,
            name,
            id,
            _server: server,
        })
    }

    /// Stops serving; the socket is removed if it is still ours.
    pub(super) fn close(&mut self) {
        let Some(s) = self.serving.take() else {
            return;
        };
        if s.ours() {
            let _ = rustix::fs::unlinkat(&s.dir.fd, &s.name, AtFlags::empty());
        }
    }

    /// Whether a socket is served (the meter then keeps figures for it).
    pub(super) fn on(&self) -> bool {
        self.serving.is_some()
    }
}

impl Serving {
    /// Whether the socket at its path is still the one bound.
    fn ours(&self) -> bool {
        rustix::fs::statat(&self.dir.fd, &self.name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| (st.st_dev, st.st_ino) == self.id)
    }
}

fn context(config: &Config, path: &Path) -> Context {
    Context {
        config: config.clone(),
        config_path: path.to_path_buf(),
        berth_uid: rustix::process::geteuid().as_raw(),
    }
}

/// Creates the socket at `path` (see the module's doc): the listener, the
/// directory it is in, its name there and its (device, inode).
fn bind(path: &Path) -> Result<(UnixListener, SafeDir, OsString, (u64, u64)), String> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err("is not a file's path".into());
    };
    let dir = prepare_dir(parent).map_err(|e| e.to_string())?;
    // Reached through the directory's descriptor, never the path again.
    let through = PathBuf::from(format!("/proc/self/fd/{}", dir.fd.as_raw_fd())).join(name);
    match rustix::fs::statat(&dir.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.to_string()),
        Ok(st) => match FileType::from_raw_mode(st.st_mode) {
            FileType::Socket => match UnixStream::connect(&through) {
                Ok(live) => {
                    let pid = rustix::net::sockopt::socket_peercred(&live)
                        .map(|c| format!(" (pid {})", c.pid.as_raw_nonzero()))
                        .unwrap_or_default();
                    return Err(format!(
                        "is in use by a running process{pid}, another berth's? give each berth a control_socket of its own"
                    ));
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    info!("control socket {}: replacing a stale one", path.display());
                    rustix::fs::unlinkat(&dir.fd, name, AtFlags::empty())
                        .map_err(|e| format!("cannot remove the stale socket: {e}"))?;
                }
                Err(e) => return Err(format!("a socket is there already: {e}")),
            },
            other => {
                let what = match other {
                    FileType::Symlink => "a symbolic link",
                    FileType::Directory => "a directory",
                    FileType::RegularFile => "a regular file",
                    _ => "not a socket",
                };
                return Err(format!(
                    "exists and is {what}: berth replaces only a stale socket, never anything else"
                ));
            }
        },
    }
    let listener = UnixListener::bind(&through).map_err(|e| format!("cannot bind: {e}"))?;
    rustix::fs::chmodat(&dir.fd, name, Mode::from_raw_mode(0o666), AtFlags::empty())
        .map_err(|e| format!("cannot make it 0666: {e}"))?;
    let st =
        rustix::fs::statat(&dir.fd, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| e.to_string())?;
    Ok((listener, dir, name.to_os_string(), (st.st_dev, st.st_ino)))
}

/// Opens `log_dir/audit.log` in `dir` as the other logs are opened (no
/// symlink, a regular file with one link): root's, and 0600, or 0640 with
/// `admin_group` (when berth is root and the group exists) as its group.
pub(super) fn open_audit(dir: &SafeDir, config: &Config, root: bool) -> Result<OwnedFd, Error> {
    let group = config
        .server
        .control
        .admin_group
        .as_deref()
        .filter(|_| root)
        .and_then(|g| nix::unistd::Group::from_name(g).ok().flatten())
        .map(|g| g.gid.as_raw());
    let fd = open_log(dir, AUDIT_LOG, group)?;
    if group.is_none() {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600)).map_err(|e| Error::Log {
            path: dir.path.join(AUDIT_LOG),
            source: e.into(),
        })?;
    }
    Ok(fd)
}

/// A `berth ctl reload` answer waiting for the front end to serve
/// `generation`.
pub(super) struct Awaiting {
    generation: u64,
    since: std::time::Instant,
    reply: tokio::sync::oneshot::Sender<Reply>,
    answer: Reply,
}

/// How long a reload's answer waits for the front end to confirm: it
/// applies a plan within milliseconds, unless it is being restarted.
const AWAIT_APPLIED: std::time::Duration = std::time::Duration::from_secs(10);

impl Supervisor {
    /// A call from the control thread, answered at once.
    /// A call from the control thread, answered at once; a restart once it
    /// is over, from a task of the loop's runtime that waits for its outcome
    /// (the loop never waits).
    pub(super) fn on_control(&mut self, call: Call, logs: &mut Logs, stopping: bool) {
        let Call {
            tenant,
            admin,
            op,
            reply,
        } = call;
        let failed = |message: String| Reply::Failed { message };
        let Some(t) = self.config.tenants.iter().find(|t| t.name == tenant) else {
            let _ = reply.send(failed(format!(
                "no tenant {tenant:?} in the configuration in use"
            )));
            return;
        };
        let app = |name: &str| {
            if t.apps.iter().any(|a| a.name == name) {
                Ok(AppId {
                    tenant: t.name.clone(),
                    app: name.to_string(),
                })
            } else {
                Err(failed(server::no_such_app(t, name)))
            }
        };
        let answer = match op {
            LoopOp::Status => Reply::Status(Box::new(self.tenant_status(t))),
            LoopOp::Stop(name) => match app(&name) {
                Ok(id) => self.stop_app(&id),
                Err(answer) => answer,
            },
            LoopOp::Start(name) => match app(&name) {
                Ok(id) => self.start_app(&id),
                Err(answer) => answer,
            },
            LoopOp::Restart(name) => match app(&name) {
                Ok(id) => return self.restart_app(id, reply),
                Err(answer) => answer,
            },
            LoopOp::Reload if stopping => failed("berth is stopping: no reload".into()),
            LoopOp::Reload => {
                let before = self.generation;
                let answer = self.reload_for(&tenant, admin, logs);
                // What it put to use is served once the front end has it:
                // the answer waits for that (a request sent after `berth ctl
                // reload` returns meets the new configuration).
                if self.generation > before && self.front.current.is_some() {
                    self.awaiting.push(Awaiting {
                        generation: self.generation,
                        since: std::time::Instant::now(),
                        reply,
                        answer,
                    });
                    return;
                }
                answer
            }
        };
        let _ = reply.send(answer);
    }

    /// `status`: the tenant's apps and processes, its limits, and the
    /// meter's last figures.
    fn tenant_status(&self, tenant: &Tenant) -> TenantStatus {
        let view = self.last_view.as_ref();
        let figures = view.and_then(|v| v.tenants.get(&tenant.name));
        let no_rss = HashMap::new();
        let rss = view.map_or(&no_rss, |v| &v.rss);
        let ms = crate::usage::to_ms;
        let apps = tenant
            .apps
            .iter()
            .filter_map(|a| {
                let id = AppId {
                    tenant: tenant.name.clone(),
                    app: a.name.clone(),
                };
                let memory = figures.and_then(|f| f.apps.get(&a.name).copied());
                let s = self.apps.status(&id, rss, memory)?;
                Some(proto::AppStatus {
                    stopped: self.apps.is_stopped(&id),
                    name: s.name,
                    protocol: s.protocol,
                    max_processes: s.max_processes,
                    memory: s.memory,
                    processes: s
                        .processes
                        .into_iter()
                        .map(|p| proto::ProcessStatus {
                            slot: p.slot,
                            pid: p.pid,
                            uid: p.uid,
                            memory: p.memory,
                            started_ms: p.started_ms,
                            // Read by the control thread, off the loop.
                            state: None,
                            recycling: p.recycling,
                        })
                        .collect(),
                    cgi_running: s.cgi_running,
                    last_problem: s.last_problem,
                })
            })
            .collect();
        TenantStatus {
            tenant: tenant.name.clone(),
            user: tenant.user.clone(),
            uid: tenant.uid,
            limits: tenant.limits,
            usage: figures.and_then(|f| f.usage),
            measured_ms: view.and_then(|v| v.at).map(ms),
            apps,
        }
    }

    /// Tells the front end that `slots` of `id` are gone.
    fn gone(&mut self, id: &AppId, slots: &[u32], why: &str) {
        for &slot in slots {
            let msg = ToFront::Exited {
                app: id.clone(),
                slot,
                why: why.to_string(),
            };
            self.front.tell(&msg, Vec::new());
        }
    }

    /// `berth ctl stop APP`: its processes are stopped, and it starts none
    /// (requests get 503) until `start`.
    pub(super) fn stop_app(&mut self, id: &AppId) -> Reply {
        match self.apps.hold(id) {
            None => Reply::Done {
                message: format!("app {id} is stopped already"),
            },
            Some(slots) => {
                self.gone(id, &slots, "stopped by berth ctl stop");
                info!("app {id}: stopped by berth ctl ({} processes)", slots.len());
                Reply::Done {
                    message: format!(
                        "stopped app {id}: {} process(es) stopped; requests get 503 until `berth ctl start {}`",
                        slots.len(),
                        id.app
                    ),
                }
            }
        }
    }

    /// `berth ctl start APP`: a stopped app takes requests again.
    pub(super) fn start_app(&mut self, id: &AppId) -> Reply {
        if !self.apps.release(id) {
            return Reply::Done {
                message: format!("app {id} is not stopped: nothing to do"),
            };
        }
        info!("app {id}: started again by berth ctl");
        self.warm();
        Reply::Done {
            message: format!(
                "started app {id}: it takes requests again (its processes start as requests come, min_processes at once)"
            ),
        }
    }

    /// `berth ctl restart APP`: a rolling restart (new processes take the
    /// requests once they accept; the old ones finish theirs; if the new
    /// ones fail, the old ones keep serving). A stopped app is started
    /// again. The answer goes to `reply` once the restart is over.
    fn restart_app(&mut self, id: AppId, reply: tokio::sync::oneshot::Sender<Reply>) {
        let held = self.apps.release(&id);
        let outcome = self.apps.restart(&id, "berth ctl restart");
        if held {
            info!("app {id}: started again by berth ctl restart");
            self.warm();
        }
        tokio::spawn(async move {
            let answer = match outcome.await {
                Ok(RestartOutcome::Failed(why)) => Reply::Failed {
                    message: format!(
                        "app {id}: restart failed: {why}; the old processes keep serving"
                    ),
                },
                Ok(RestartOutcome::Nothing(why)) if held => Reply::Done {
                    message: format!(
                        "app {id}: started again ({why}); its processes start as requests come"
                    ),
                },
                Ok(done) => Reply::Done {
                    message: format!("app {id}: {done}"),
                },
                Err(_) => Reply::Failed {
                    message: format!("app {id}: berth stopped before the restart was over"),
                },
            };
            let _ = reply.send(answer);
        });
    }

    /// `berth ctl reload` by a tenant's user: its own file read again and
    /// layered over the administrator's configuration in use (never the one
    /// on disk: the administrator may be in the middle of editing it, and
    /// only the administrator puts it to use). A refused file changes
    /// nothing; its problems come back. By root or an admin: the whole
    /// reload SIGHUP does, its problems all shown.
    pub(super) fn reload_for(&mut self, tenant: &str, admin: bool, logs: &mut Logs) -> Reply {
        if !admin {
            return Reply::Reload(self.reload_own(tenant, logs));
        }
        let serving = "; still serving the previous configuration";
        let reply = match self.apply_reload(logs) {
            Ok(()) => ProblemsReply {
                ok: true,
                problems: Vec::new(),
                message: format!(
                    "configuration reloaded from {} (generation {})",
                    self.path.display(),
                    self.generation
                ),
            },
            Err(Error::Config(problems)) => ProblemsReply {
                ok: false,
                message: format!("reload refused: {} problem(s){serving}", problems.len()),
                problems: problems.iter().map(ToString::to_string).collect(),
            },
            Err(e) => ProblemsReply {
                ok: false,
                problems: Vec::new(),
                message: format!("reload refused: {e}{serving}"),
            },
        };
        if !reply.ok {
            warn!("berth ctl reload (tenant {tenant}): {}", reply.message);
        }
        Reply::Reload(reply)
    }

    /// Tenant `tenant` with its own file read again (see [`Self::reload_for`]).
    fn reload_own(&mut self, tenant: &str, logs: &Logs) -> ProblemsReply {
        use crate::config::own::OwnState;
        let reply = |ok: bool, problems: Vec<String>, message: String| ProblemsReply {
            ok,
            problems,
            message,
        };
        let Some(i) = self.config.tenants.iter().position(|t| t.name == tenant) else {
            return reply(false, Vec::new(), format!("no tenant {tenant:?}"));
        };
        let current = &self.config.tenants[i];
        let before = current.clone();
        let Some(new) = self.config.layers.reload(tenant, current) else {
            return reply(false, Vec::new(), format!("no tenant {tenant:?}"));
        };
        let owns: Vec<crate::config::own::OwnFile> = new.own_files().cloned().collect();
        if owns.is_empty() {
            return reply(
                false,
                Vec::new(),
                format!("tenant {tenant} has no own file: the administrator allows none"),
            );
        }
        self.config.tenants[i] = new;
        self.use_config(logs);
        super::report_own_file(&self.config.tenants[i], Some(&before));
        let problems: Vec<String> = owns
            .iter()
            .flat_map(|o| o.problems.iter().map(ToString::to_string))
            .collect();
        let said: Vec<String> = owns
            .iter()
            .map(|o| match o.state {
                OwnState::InUse => format!("{} is in use", o.path.display()),
                OwnState::Absent => format!("there is no file at {}", o.path.display()),
                OwnState::Refused { .. } => o.summary(),
            })
            .collect();
        let ok = !owns.iter().any(|o| o.refused());
        let message = format!(
            "{} (configuration generation {})",
            said.join("; "),
            self.generation
        );
        if !ok {
            warn!("berth ctl reload (tenant {tenant}): {message}");
        }
        reply(ok, problems, message)
    }

    /// The front end serves `generation`: the reloads it puts to use are
    /// answered.
    pub(super) fn control_applied(&mut self, generation: u64) {
        let (done, waiting) = std::mem::take(&mut self.awaiting)
            .into_iter()
            .partition(|a| a.generation <= generation);
        self.awaiting = waiting;
        for a in done {
            let _ = a.reply.send(a.answer);
        }
    }

    /// Reload answers the front end has not confirmed within
    /// [`AWAIT_APPLIED`] are given anyway, saying so.
    pub(super) fn control_overdue(&mut self) {
        let (late, waiting) = std::mem::take(&mut self.awaiting)
            .into_iter()
            .partition(|a| a.since.elapsed() >= AWAIT_APPLIED);
        self.awaiting = waiting;
        for a in late {
            let mut answer = a.answer;
            if let Reply::Reload(r) = &mut answer {
                r.message.push_str(
                    " (the front end has not confirmed it serves it yet: it may take a moment)",
                );
            }
            let _ = a.reply.send(answer);
        }
    }

    /// The audit log goes to `logs`' file.
    pub(super) fn use_audit(&self, logs: &Logs) -> Result<(), Error> {
        self.control
            .audit
            .set_file(File::from(logs.audit.try_clone()?));
        Ok(())
    }
}
