//! Spawning app processes as their tenant (invariant 1): suEXEC's checks, then
//! fork/exec with a clean environment, the tenant's identity, no_new_privs and
//! only the descriptors berth gives.
//!
//! The supervisor builds a [`SpawnSpec`] from its own validated configuration
//! (never from anything the front end sends) and calls [`spawn`]: [`check`]
//! refuses with the first failed check, in suEXEC's order, and
//! [`crate::sys::spawn_app`] does the part between fork and exec.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Child;

use tracing::warn;

use crate::sys::{self, AppExec, AppStep, Identity};

/// The only PATH an app gets unless its own `env` sets another.
pub const SAFE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Everything needed to start one app process; built by the supervisor from its
/// own validated configuration (never from anything the front end sends).
pub struct SpawnSpec<'a> {
    /// The tenant's name, for messages.
    pub tenant: &'a str,
    /// The tenant's Unix user.
    pub user: &'a str,
    /// The tenant's home: `dir` and tenant-owned programs must be inside it.
    pub home: &'a Path,
    /// No app runs as a uid or gid below this.
    pub min_uid: u32,
    /// The command; `argv[0]` is an absolute path (there is no PATH search).
    pub argv: &'a [String],
    /// A script the program runs (a CGI script given to an interpreter): it
    /// passes the same checks as the program.
    pub script: Option<&'a Path>,
    /// The working directory.
    pub dir: &'a Path,
    /// The app's `env` and the protocol's variables, in order (later wins).
    pub env: &'a [(String, String)],
    /// Descriptors to place at the given numbers in the child (the listening
    /// socket at 0 for FastCGI or 3 for socket activation, a log at 1 and 2);
    /// whatever of 0, 1 and 2 is not given is /dev/null, and nothing else is
    /// open in the app.
    pub fds: Vec<(OwnedFd, RawFd)>,
    /// RLIMIT_NOFILE, soft and hard (the tenant's `open_files`): set in the
    /// child, so the app never inherits the supervisor's raised limit.
    pub open_files: u64,
    /// The app's cgroup: its `cgroup.procs` files, open for writing (empty
    /// without cgroups).
    pub cgroup: Vec<OwnedFd>,
    /// Limits set where cgroups are not used (`memory` as RLIMIT_DATA,
    /// `tasks` as RLIMIT_NPROC).
    pub rlimits: Vec<(sys::Rlimit, u64)>,
    /// False when berth runs unprivileged: the app runs as the caller, and
    /// the checks on the user (exists, not root, uid and gid >= `min_uid`) are
    /// skipped; the ownership checks then expect the caller's uid instead of
    /// the tenant's.
    pub switch_user: bool,
    /// The front end's identity and the other tenants', to check the
    /// tenant's identity against (see [`breaches`]) as it is read for this
    /// start. None skips those rules (`berth check` reports them itself).
    pub isolation: Option<&'a Isolation>,
    /// The app's own view of the machine and its seccomp filter (None:
    /// neither; see [`crate::isolation`]).
    pub isolate: Option<&'a crate::isolation::host::Isolate>,
}

/// What a tenant's identity must keep apart from: the front end's user and
/// the other tenants (see [`breaches`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    pub front: FrontId,
    /// Every tenant, this one included (skipped by name).
    pub tenants: Vec<Peer>,
}

/// The front end's user (`server.user`) and its ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontId {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
}

/// A tenant as the isolation rules see it: its user's uid and primary group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub tenant: String,
    pub user: String,
    pub uid: u32,
    pub gid: u32,
}

/// The tenants whose users exist, as [`breaches`] sees them (in config
/// order): the supervisor's [`Isolation::tenants`] and `berth check`'s.
pub fn peers(tenants: &[crate::config::Tenant]) -> Vec<Peer> {
    tenants
        .iter()
        .filter(|t| t.resolved)
        .map(|t| Peer {
            tenant: t.name.clone(),
            user: t.user.clone(),
            uid: t.uid,
            gid: t.gid,
        })
        .collect()
}

/// A way a tenant's identity breaks isolation (see [`breaches`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Breach {
    /// The tenant's uid is the front end's.
    FrontUser {
        user: String,
        front: FrontId,
        uid: u32,
    },
    /// The tenant has the front end's primary group (as its own primary
    /// group when `primary`, else as a supplementary one).
    FrontGroup {
        user: String,
        front: FrontId,
        primary: bool,
    },
    /// Another tenant has the same uid.
    SharedUser { user: String, uid: u32, other: Peer },
    /// Another tenant has the same primary group.
    SharedGroup { user: String, gid: u32, other: Peer },
    /// The tenant is a member of another tenant's primary group.
    OtherGroup { user: String, other: Peer },
}

/// A group's name, or its number when it has none.
fn group_of(gid: u32) -> String {
    match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) {
        Ok(Some(g)) => g.name,
        _ => gid.to_string(),
    }
}

impl std::fmt::Display for Breach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group_name = |gid: u32| format!("{:?} (gid {gid})", group_of(gid));
        match self {
            Breach::FrontUser { user, front, uid } => {
                let what = if *user == front.user {
                    format!("is server.user {user:?}")
                } else {
                    format!("has uid {uid}, as server.user {:?}", front.user)
                };
                write!(
                    f,
                    "user {user:?} {what}, the front end's user: its apps could connect to every tenant's app socket and read whatever the front end reads; give the tenant a user of its own"
                )
            }
            Breach::FrontGroup {
                user,
                front,
                primary,
            } => {
                let how = if *primary {
                    "has as its primary group"
                } else {
                    "is a member of"
                };
                write!(
                    f,
                    "user {user:?} {how} {}, the primary group of server.user {:?} (the front end): its apps would get that group and could connect to every tenant's app socket; take it out of the group (gpasswd -d {user} {}) or give the front end a dedicated user",
                    group_name(front.gid),
                    front.user,
                    group_of(front.gid)
                )
            }
            Breach::SharedUser { user, uid, other } => write!(
                f,
                "user {user:?} has uid {uid}, as tenant {:?} (user {:?}): two tenants may not share a Unix user (each could signal and read the other's processes and files)",
                other.tenant, other.user
            ),
            Breach::SharedGroup { user, gid, other } => write!(
                f,
                "user {user:?} has the primary group {}, as tenant {:?} (user {:?}): two tenants may not share a group (each could read and write the other's group-accessible files)",
                group_name(*gid),
                other.tenant,
                other.user
            ),
            Breach::OtherGroup { user, other } => write!(
                f,
                "user {user:?} is a member of {}, the primary group of tenant {:?} (user {:?}): its apps could read and write that tenant's group-accessible files; take it out of the group (gpasswd -d {user} {})",
                group_name(other.gid),
                other.tenant,
                other.user,
                group_of(other.gid)
            ),
        }
    }
}

/// The isolation rules on the identity of `tenant` (user `user`), as read
/// now: what `berth check` refuses in a configuration
/// (`config::check_identities`) and what [`check`] refuses before every
/// start, since groups can change while berth runs (`usermod -aG`).
///
/// - Its uid may not be the front end's (then nothing else is reported).
/// - It may not have the front end's primary group, as its primary group or
///   a supplementary one: that group may enter `state_dir/apps` and connect
///   to every tenant's app socket, and a member could name any file as
///   SCRIPT_FILENAME. (The front end in a tenant's group is sound: it reads
///   the tenant's 0640 files.)
/// - No other tenant may have its uid or its primary group.
/// - It may not be a member of another tenant's primary group (its apps
///   could read and write the other's group-accessible files).
///
/// `tenants` may include `tenant` itself (skipped by name). Each group is
/// reported once.
pub fn breaches(
    tenant: &str,
    user: &str,
    id: &Identity,
    front: Option<&FrontId>,
    tenants: &[Peer],
) -> Vec<Breach> {
    let mut found = Vec::new();
    // Groups already named.
    let mut reported = Vec::new();
    if let Some(front) = front {
        if id.uid == front.uid {
            return vec![Breach::FrontUser {
                user: user.into(),
                front: front.clone(),
                uid: id.uid,
            }];
        }
        if id.gid == front.gid || id.groups.contains(&front.gid) {
            reported.push(front.gid);
            found.push(Breach::FrontGroup {
                user: user.into(),
                front: front.clone(),
                primary: id.gid == front.gid,
            });
        }
    }
    for other in tenants.iter().filter(|p| p.tenant != tenant) {
        if other.uid == id.uid {
            found.push(Breach::SharedUser {
                user: user.into(),
                uid: id.uid,
                other: other.clone(),
            });
        } else if other.gid == id.gid {
            found.push(Breach::SharedGroup {
                user: user.into(),
                gid: id.gid,
                other: other.clone(),
            });
        } else if id.groups.contains(&other.gid) && !reported.contains(&other.gid) {
            reported.push(other.gid);
            found.push(Breach::OtherGroup {
                user: user.into(),
                other: other.clone(),
            });
        }
    }
    found
}

/// What [`check`] established: who the app runs as and the canonical paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The tenant's identity (supplementary groups from getgrouplist), or the
    /// caller's own when `switch_user` is false.
    pub identity: Identity,
    /// Whether the child switches to `identity` (false: it already is it).
    pub switch_user: bool,
    /// The program, symlinks resolved: what is exec'd.
    pub program: PathBuf,
    /// The working directory, symlinks resolved.
    pub dir: PathBuf,
    /// The home, symlinks resolved.
    pub home: PathBuf,
}

/// A failed suEXEC check: one variant per check, each naming the offending value.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("user {user:?} cannot be looked up: {source}")]
    UserLookup { user: String, source: nix::Error },
    #[error("user {user:?} does not exist")]
    NoSuchUser { user: String },
    #[error("user {user:?} is root (uid 0)")]
    RootUser { user: String },
    #[error("user {user:?} has root (gid 0) as its primary group")]
    RootGroup { user: String },
    #[error("user {user:?} has uid {uid}, below min_uid {min_uid}")]
    UidBelowMin {
        user: String,
        uid: u32,
        min_uid: u32,
    },
    #[error("user {user:?} has gid {gid}, below min_uid {min_uid}")]
    GidBelowMin {
        user: String,
        gid: u32,
        min_uid: u32,
    },
    #[error("cannot read the groups of user {user:?}: {source}")]
    Groups { user: String, source: nix::Error },
    /// The identity read for this start breaks isolation ([`breaches`]).
    #[error("{0}")]
    Isolation(Breach),
    #[error("the command is empty")]
    EmptyCommand,
    #[error("program {program:?} is not an absolute path")]
    RelativeProgram { program: String },
    #[error("home {home} cannot be resolved: {source}")]
    Home { home: PathBuf, source: io::Error },
    #[error("program {program} cannot be resolved: {source}")]
    ProgramMissing { program: PathBuf, source: io::Error },
    #[error("program {program} is not a regular file (it is a {kind})")]
    NotRegularFile {
        program: PathBuf,
        kind: &'static str,
    },
    #[error("program {program} is setuid or setgid (mode {mode:04o})")]
    SetId { program: PathBuf, mode: u32 },
    #[error("program {program} is owned by uid {owner}, neither the tenant's (uid {uid}) nor root")]
    ProgramOwner {
        program: PathBuf,
        owner: u32,
        uid: u32,
    },
    #[error("program {program} is writable by group or others (mode {mode:04o})")]
    ProgramWritable { program: PathBuf, mode: u32 },
    #[error("program directory {dir} is writable by group or others (mode {mode:04o})")]
    ProgramDirWritable { dir: PathBuf, mode: u32 },
    #[error(
        "program directory {dir} is owned by uid {owner}, neither the tenant's (uid {uid}) nor root"
    )]
    ProgramDirOwner { dir: PathBuf, owner: u32, uid: u32 },
    #[error("program {program} belongs to the tenant but is outside its home {home}")]
    ProgramOutsideHome { program: PathBuf, home: PathBuf },
    #[error("working directory {dir} cannot be resolved: {source}")]
    DirMissing { dir: PathBuf, source: io::Error },
    #[error("working directory {dir} is not a directory")]
    NotADirectory { dir: PathBuf },
    #[error("working directory {dir} is outside the tenant's home {home}")]
    DirOutsideHome { dir: PathBuf, home: PathBuf },
    #[error("working directory {dir} is writable by group or others (mode {mode:04o})")]
    DirWritable { dir: PathBuf, mode: u32 },
    #[error(
        "working directory {dir} is owned by uid {owner}, neither the tenant's (uid {uid}) nor root"
    )]
    DirOwner { dir: PathBuf, owner: u32, uid: u32 },
    #[error("argument {index} of the command contains a NUL byte")]
    BadArgument { index: usize },
    #[error(
        "environment variable {name:?}: the name must be non-empty without '=' or NUL, the value without NUL"
    )]
    BadEnv { name: String },
}

/// Why an app process did not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// A suEXEC check failed; nothing was forked.
    #[error("refused: {0}")]
    Refused(#[from] Refused),
    /// Forking, becoming the tenant or exec failed, at `step`.
    #[error("{step} failed: {source}")]
    Exec { step: AppStep, source: io::Error },
}

/// Runs suEXEC's checks, in this order, each a distinct refusal:
/// 1. the user exists; it is not root (uid 0) and its primary gid is not 0;
///    its uid and gid are >= `min_uid`; its supplementary groups can be read;
///    with `isolation`, the identity so read (uid, gid, groups) breaks none
///    of the rules of [`breaches`] (all skipped when `switch_user` is false);
/// 2. the command is not empty and `argv[0]` is an absolute path;
/// 3. the home resolves (symlinks followed);
/// 4. the program resolves and is a regular file; it is not setuid or setgid;
///    it is owned by the tenant (the caller when not switching) or by root; it
///    is not writable by group or others; its directory is neither, and is
///    owned by the tenant or root; a program the tenant owns lies inside the
///    home;
/// 5. `dir` resolves, is a directory, lies inside the home, is not writable by
///    group or others and is owned by the tenant or root;
/// 6. arguments and environment can be passed to execve (no NUL, names without
///    `=`).
///
/// Paths are compared after canonicalisation, component by component
/// (`/home/al` does not contain `/home/alice2`).
pub fn check(spec: &SpawnSpec) -> Result<Checked, Refused> {
    let identity = if spec.switch_user {
        let identity = tenant_identity(spec.user, spec.min_uid)?;
        if let Some(iso) = spec.isolation
            && let Some(breach) = breaches(
                spec.tenant,
                spec.user,
                &identity,
                Some(&iso.front),
                &iso.tenants,
            )
            .into_iter()
            .next()
        {
            return Err(Refused::Isolation(breach));
        }
        identity
    } else {
        caller_identity()?
    };
    let (program, dir, home) = check_paths(spec, identity.uid)?;
    Ok(Checked {
        identity,
        switch_user: spec.switch_user,
        program,
        dir,
        home,
    })
}

/// The checks after the user's: command, program, `dir`, arguments and
/// environment, for an app running as `uid`. Returns the canonical program,
/// dir and home.
fn check_paths(spec: &SpawnSpec, uid: u32) -> Result<(PathBuf, PathBuf, PathBuf), Refused> {
    let program = spec.argv.first().ok_or(Refused::EmptyCommand)?;
    if !Path::new(program).is_absolute() {
        return Err(Refused::RelativeProgram {
            program: program.clone(),
        });
    }
    let home = fs::canonicalize(spec.home).map_err(|source| Refused::Home {
        home: spec.home.to_path_buf(),
        source,
    })?;

    let program = check_program(Path::new(program), uid, &home)?;
    if let Some(script) = spec.script {
        check_program(script, uid, &home)?;
    }

    let dir = fs::canonicalize(spec.dir).map_err(|source| Refused::DirMissing {
        dir: spec.dir.to_path_buf(),
        source,
    })?;
    let dmeta = fs::metadata(&dir).map_err(|source| Refused::DirMissing {
        dir: dir.clone(),
        source,
    })?;
    if !dmeta.is_dir() {
        return Err(Refused::NotADirectory { dir });
    }
    if !inside(&dir, &home) {
        return Err(Refused::DirOutsideHome { dir, home });
    }
    if writable_by_others(dmeta.mode()) {
        return Err(Refused::DirWritable {
            dir,
            mode: dmeta.mode() & 0o7777,
        });
    }
    if dmeta.uid() != uid && dmeta.uid() != 0 {
        return Err(Refused::DirOwner {
            dir,
            owner: dmeta.uid(),
            uid,
        });
    }

    if let Some(index) = spec.argv.iter().position(|a| a.contains('\0')) {
        return Err(Refused::BadArgument { index });
    }
    if let Some((name, _)) = spec.env.iter().find(|(k, v)| !valid_env(k, v)) {
        return Err(Refused::BadEnv { name: name.clone() });
    }

    Ok((program, dir, home))
}

/// The checks on a program (or a script it runs) for an app running as
/// `uid`: it resolves to a regular file, not setuid or setgid, owned by `uid`
/// or root and writable by neither group nor others, in a directory of the
/// same kind; one `uid` owns lies inside `home`. Returns it canonical.
fn check_program(given: &Path, uid: u32, home: &Path) -> Result<PathBuf, Refused> {
    let program = fs::canonicalize(given).map_err(|source| Refused::ProgramMissing {
        program: given.to_path_buf(),
        source,
    })?;
    let meta = fs::metadata(&program).map_err(|source| Refused::ProgramMissing {
        program: program.clone(),
        source,
    })?;
    if !meta.is_file() {
        return Err(Refused::NotRegularFile {
            kind: kind_of(&meta.file_type()),
            program,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
        return Err(Refused::SetId { program, mode });
    }
    let owner = meta.uid();
    if owner != uid && owner != 0 {
        return Err(Refused::ProgramOwner {
            program,
            owner,
            uid,
        });
    }
    if writable_by_others(mode) {
        return Err(Refused::ProgramWritable { program, mode });
    }
    let parent = program.parent().unwrap_or(Path::new("/"));
    let pmeta = fs::metadata(parent).map_err(|source| Refused::ProgramMissing {
        program: parent.to_path_buf(),
        source,
    })?;
    if writable_by_others(pmeta.mode()) {
        return Err(Refused::ProgramDirWritable {
            dir: parent.to_path_buf(),
            mode: pmeta.mode() & 0o7777,
        });
    }
    if pmeta.uid() != uid && pmeta.uid() != 0 {
        return Err(Refused::ProgramDirOwner {
            dir: parent.to_path_buf(),
            owner: pmeta.uid(),
            uid,
        });
    }
    // A root-owned program (a system interpreter) may live anywhere.
    if owner != 0 && !inside(&program, home) {
        return Err(Refused::ProgramOutsideHome {
            program,
            home: home.to_path_buf(),
        });
    }
    Ok(program)
}

/// Checks `spec` and starts the app: exec'd as the canonical program with argv
/// as given, in its own session, as the tenant (when `switch_user`), in the
/// canonical `dir`, with the environment of [`environment`] and only the
/// descriptors in `spec.fds` (plus /dev/null on 0/1/2 where not given). See
/// [`sys::spawn_app`] for the child's steps. A refusal or failure is logged
/// here with the tenant's name and the failed check or step.
pub fn spawn(spec: SpawnSpec) -> Result<Child, SpawnError> {
    let program = spec.argv.first().map(String::as_str).unwrap_or("");
    let checked = check(&spec).map_err(|e| {
        warn!("tenant {}: refused to start {program:?}: {e}", spec.tenant);
        SpawnError::Refused(e)
    })?;
    let env = environment(spec.home, spec.user, spec.env);
    let fail = |step: AppStep, source: io::Error| {
        warn!(
            "tenant {}: cannot start {}: {step} failed: {source}",
            spec.tenant,
            checked.program.display()
        );
        SpawnError::Exec { step, source }
    };
    let filter = match spec.isolate.and_then(|i| i.seccomp.as_ref()) {
        Some(allow) => Some(std::sync::Arc::new(
            crate::isolation::seccomp::Filter::new(allow)
                .map_err(|e| fail(AppStep::Seccomp, io::Error::other(e)))?,
        )),
        None => None,
    };
    let open_files = open_files_limit(spec.open_files);
    let Some(view) = spec.isolate.and_then(|i| i.view.as_ref()) else {
        return sys::spawn_app(AppExec {
            program: &checked.program,
            argv: spec.argv,
            env: &env,
            dir: &checked.dir,
            fds: spec.fds,
            identity: checked.switch_user.then_some(&checked.identity),
            open_files,
            cgroup: spec.cgroup,
            rlimits: spec.rlimits,
            report_at: None,
            filter,
        })
        .map_err(|(step, source)| fail(step, source));
    };
    // In its own view: berth's init builds it, then execs the app (see
    // crate::isolation::init), which gets the filter there.
    use crate::isolation::init::{CGROUP_FD, PLAN_FD, REPORT_FD};
    use std::os::unix::ffi::OsStrExt;
    let mut targets: Vec<RawFd> = spec.fds.iter().map(|(_, at)| *at).collect();
    targets.extend(0..3);
    targets.sort_unstable();
    targets.dedup();
    let plan = crate::isolation::view::Plan {
        hostname: spec.tenant.to_string(),
        network_none: view.network_none,
        userns: view.userns,
        mounts: view.mounts.to_vec(),
        program: checked.program.clone(),
        argv: spec.argv.to_vec(),
        env: env
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect(),
        listen_pid: env.iter().any(|(k, _)| k == "LISTEN_FDS"),
        dir: checked.dir.clone(),
        identity: checked.switch_user.then(|| {
            (
                checked.identity.uid,
                checked.identity.gid,
                checked.identity.groups.clone(),
            )
        }),
        seccomp: spec.isolate.and_then(|i| i.seccomp.clone()),
        fds: targets,
        cgroup_fds: (0..spec.cgroup.len() as RawFd)
            .map(|i| CGROUP_FD + i)
            .collect(),
    };
    let memfd = plan_memfd(&plan).map_err(|e| fail(AppStep::Prepare, e))?;
    let mut fds = spec.fds;
    fds.push((memfd, PLAN_FD));
    fds.extend(spec.cgroup.into_iter().zip(CGROUP_FD..));
    let argv = [
        "berth".to_string(),
        "app-init".to_string(),
        spec.tenant.to_string(),
    ];
    sys::spawn_app(AppExec {
        program: Path::new("/proc/self/exe"),
        argv: &argv,
        env: &[],
        dir: Path::new("/"),
        fds,
        identity: None,
        open_files,
        cgroup: Vec::new(),
        rlimits: spec.rlimits,
        report_at: Some(REPORT_FD),
        filter: None,
    })
    .map_err(|(step, source)| fail(step, source))
}

/// The plan as JSON in a memfd, read from its start by the init.
fn plan_memfd(plan: &crate::isolation::view::Plan) -> io::Result<OwnedFd> {
    use std::io::{Seek, Write};
    let fd = rustix::fs::memfd_create("berth-plan", rustix::fs::MemfdFlags::CLOEXEC)?;
    let mut f = fs::File::from(fd);
    f.write_all(&serde_json::to_vec(plan).map_err(io::Error::other)?)?;
    f.rewind()?;
    Ok(OwnedFd::from(f))
}

/// The RLIMIT_NOFILE an app gets: `want`, unless that is above berth's own
/// hard limit and berth may not raise a hard limit (not root, or root without
/// CAP_SYS_RESOURCE, as in some containers); then berth's hard limit, said
/// once in the log.
fn open_files_limit(want: u64) -> u64 {
    use rustix::thread::CapabilitySet;
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    // Read once, not at every spawn (every CGI request): nothing changes
    // berth's capabilities while it runs. Its hard limit is read each time:
    // another process may lower it (prlimit).
    static MAY_RAISE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let may_raise = *MAY_RAISE.get_or_init(|| {
        rustix::thread::capabilities(None)
            .is_ok_and(|c| c.effective.contains(CapabilitySet::SYS_RESOURCE))
    });
    if may_raise {
        return want;
    }
    let Some(hard) = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum else {
        return want;
    };
    if want <= hard {
        return want;
    }
    if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        warn!(
            "open_files = {want} is above berth's own hard limit ({hard}), which berth may not raise (no CAP_SYS_RESOURCE): apps get {hard}"
        );
    }
    hard
}

/// The app's whole environment: PATH (safe), HOME, USER and LOGNAME, then
/// `extra` in order, a later value replacing an earlier one of the same name
/// in place. Nothing of berth's own environment.
pub fn environment(
    home: &Path,
    user: &str,
    extra: &[(String, String)],
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = vec![
        ("PATH".into(), SAFE_PATH.into()),
        ("HOME".into(), home.as_os_str().to_owned()),
        ("USER".into(), user.into()),
        ("LOGNAME".into(), user.into()),
    ];
    for (k, v) in extra {
        match env.iter_mut().find(|(name, _)| name == k.as_str()) {
            Some(slot) => slot.1 = v.into(),
            None => env.push((k.into(), v.into())),
        }
    }
    env
}

/// The tenant's identity after the user checks (exists, not root, not in
/// group 0 as primary, uid and gid >= `min_uid`).
fn tenant_identity(user: &str, min_uid: u32) -> Result<Identity, Refused> {
    let entry = nix::unistd::User::from_name(user)
        .map_err(|source| Refused::UserLookup {
            user: user.into(),
            source,
        })?
        .ok_or_else(|| Refused::NoSuchUser { user: user.into() })?;
    check_ids(user, entry.uid.as_raw(), entry.gid.as_raw(), min_uid)?;
    Identity::of(&entry).map_err(|source| Refused::Groups {
        user: user.into(),
        source,
    })
}

/// The checks on a user's ids alone.
fn check_ids(user: &str, uid: u32, gid: u32, min_uid: u32) -> Result<(), Refused> {
    let user = user.to_string();
    if uid == 0 {
        return Err(Refused::RootUser { user });
    }
    if gid == 0 {
        return Err(Refused::RootGroup { user });
    }
    if uid < min_uid {
        return Err(Refused::UidBelowMin { user, uid, min_uid });
    }
    if gid < min_uid {
        return Err(Refused::GidBelowMin { user, gid, min_uid });
    }
    Ok(())
}

/// Who berth runs as, when it does not switch users.
fn caller_identity() -> Result<Identity, Refused> {
    let groups = nix::unistd::getgroups().map_err(|source| Refused::Groups {
        user: "(caller)".into(),
        source,
    })?;
    Ok(Identity {
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
        groups: groups.iter().map(|g| g.as_raw()).collect(),
    })
}

/// Whether `path` is `root` or below it, comparing whole components (both
/// canonical).
fn inside(path: &Path, root: &Path) -> bool {
    path.starts_with(root)
}

/// Whether a mode lets the group or others write.
fn writable_by_others(mode: u32) -> bool {
    mode & 0o022 != 0
}

fn valid_env(name: &str, value: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0']) && !value.contains('\0')
}

fn kind_of(t: &fs::FileType) -> &'static str {
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() || t.is_char_device() {
        "device"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// The uid the test files belong to and the app "runs as": a uid nobody
    /// has when the tests run as root (files are chowned to it), else our own.
    fn tenant_uid() -> u32 {
        let me = rustix::process::geteuid().as_raw();
        if me == 0 { 4242 } else { me }
    }

    /// A home with a program `bin/app` (0755 in a 0755 dir) and a `work` dir,
    /// all owned by [`tenant_uid`].
    struct Home {
        tmp: tempfile::TempDir,
    }

    impl Home {
        fn new() -> Home {
            let home = Home {
                tmp: tempfile::tempdir().unwrap(),
            };
            home.mkdir(".");
            home.mkdir("bin");
            home.mkdir("work");
            home.file("bin/app");
            home
        }

        fn path(&self) -> &Path {
            self.tmp.path()
        }

        fn join(&self, rel: &str) -> PathBuf {
            self.tmp.path().join(rel)
        }

        fn mkdir(&self, rel: &str) {
            fs::create_dir_all(self.join(rel)).unwrap();
            self.own(rel);
            self.chmod(rel, 0o755);
        }

        fn file(&self, rel: &str) {
            fs::write(self.join(rel), "#!/bin/sh\n").unwrap();
            self.own(rel);
            self.chmod(rel, 0o755);
        }

        fn own(&self, rel: &str) {
            let uid = tenant_uid();
            std::os::unix::fs::chown(self.join(rel), Some(uid), None).unwrap();
        }

        fn chmod(&self, rel: &str, mode: u32) {
            fs::set_permissions(self.join(rel), fs::Permissions::from_mode(mode)).unwrap();
        }

        /// The checks after the user's, for `argv0` and `dir`, in this home.
        fn check(
            &self,
            argv0: &str,
            dir: &Path,
            env: &[(String, String)],
        ) -> Result<(PathBuf, PathBuf, PathBuf), Refused> {
            self.check_in(self.path(), argv0, dir, env)
        }

        fn check_in(
            &self,
            home: &Path,
            argv0: &str,
            dir: &Path,
            env: &[(String, String)],
        ) -> Result<(PathBuf, PathBuf, PathBuf), Refused> {
            let argv = vec![argv0.to_string(), "--flag".to_string()];
            let spec = SpawnSpec {
                tenant: "t",
                user: "u",
                home,
                min_uid: 1000,
                argv: &argv,
                script: None,
                dir,
                env,
                fds: Vec::new(),
                open_files: 1024,
                cgroup: Vec::new(),
                rlimits: Vec::new(),
                switch_user: true,
                isolation: None,
                isolate: None,
            };
            check_paths(&spec, tenant_uid())
        }

        fn app(&self) -> String {
            self.join("bin/app").to_str().unwrap().to_string()
        }
    }

    #[test]
    fn containment_compares_whole_components() {
        assert!(inside(Path::new("/home/alice"), Path::new("/home/alice")));
        assert!(inside(
            Path::new("/home/alice/x/y"),
            Path::new("/home/alice")
        ));
        assert!(!inside(Path::new("/home/alice2"), Path::new("/home/alice")));
        assert!(!inside(
            Path::new("/home/alice2/app"),
            Path::new("/home/al")
        ));
        assert!(!inside(Path::new("/home"), Path::new("/home/alice")));
        assert!(inside(Path::new("/anything"), Path::new("/")));
    }

    #[test]
    fn group_or_other_write_bits_are_refused() {
        for mode in [0o755, 0o700, 0o555, 0o1755, 0o4755] {
            assert!(!writable_by_others(mode), "{mode:o}");
        }
        for mode in [0o775, 0o757, 0o777, 0o1777, 0o720, 0o702] {
            assert!(writable_by_others(mode), "{mode:o}");
        }
    }

    #[test]
    fn isolation_rules_on_an_identity() {
        let front = FrontId {
            user: "front".into(),
            uid: 2000,
            gid: 2000,
        };
        let peer = |tenant: &str, uid, gid| Peer {
            tenant: tenant.into(),
            user: format!("u{tenant}"),
            uid,
            gid,
        };
        let tenants = [
            peer("a", 3000, 3000),
            peer("b", 3001, 3001),
            peer("c", 3002, 3001),
        ];
        let id = |uid, gid, groups: &[u32]| Identity {
            uid,
            gid,
            groups: groups.to_vec(),
        };
        let rules = |tenant, id: &Identity| breaches(tenant, "u", id, Some(&front), &tenants);
        // On its own, or with the front end in its group: nothing.
        assert_eq!(rules("a", &id(3000, 3000, &[3000])), []);
        // The front end's uid: that alone.
        let found = rules("a", &id(2000, 3000, &[3000, 3001]));
        assert!(
            matches!(found[..], [Breach::FrontUser { uid: 2000, .. }]),
            "{found:?}"
        );
        // The front end's group, as primary or supplementary group.
        let found = rules("a", &id(3000, 2000, &[2000]));
        assert!(
            matches!(found[..], [Breach::FrontGroup { primary: true, .. }]),
            "{found:?}"
        );
        let found = rules("a", &id(3000, 3000, &[3000, 2000]));
        assert!(
            matches!(found[..], [Breach::FrontGroup { primary: false, .. }]),
            "{found:?}"
        );
        // Another tenant's primary group (b's and c's, once).
        let found = rules("a", &id(3000, 3000, &[3000, 3001]));
        assert!(
            matches!(&found[..], [Breach::OtherGroup { other, .. }] if other.tenant == "b"),
            "{found:?}"
        );
        // Sharing a uid or a primary group, with each tenant that does.
        let found = rules("b", &id(3001, 3001, &[3001]));
        assert!(
            matches!(&found[..], [Breach::SharedGroup { other, .. }] if other.tenant == "c"),
            "{found:?}"
        );
        let found = rules("x", &id(3000, 3001, &[3001]));
        assert!(
            matches!(
                &found[..],
                [Breach::SharedUser { other: a, .. }, Breach::SharedGroup { other: b, .. }, Breach::SharedGroup { other: c, .. }]
                    if a.tenant == "a" && b.tenant == "b" && c.tenant == "c"
            ),
            "{found:?}"
        );
        // Without a front end (berth unprivileged) only the tenants count.
        assert_eq!(
            breaches("a", "u", &id(2000, 2000, &[2000]), None, &tenants),
            []
        );
    }

    #[test]
    fn user_id_checks() {
        assert!(matches!(
            check_ids("r", 0, 0, 1000),
            Err(Refused::RootUser { .. })
        ));
        assert!(matches!(
            check_ids("g", 1500, 0, 1000),
            Err(Refused::RootGroup { .. })
        ));
        assert!(matches!(
            check_ids("d", 1, 1, 1000),
            Err(Refused::UidBelowMin { uid: 1, .. })
        ));
        assert!(matches!(
            check_ids("u", 1500, 100, 1000),
            Err(Refused::GidBelowMin { gid: 100, .. })
        ));
        check_ids("ok", 1500, 1500, 1000).unwrap();
        let e = check_ids("daemon", 1, 1, 1000).unwrap_err().to_string();
        assert_eq!(e, "user \"daemon\" has uid 1, below min_uid 1000");
    }

    #[test]
    fn without_switching_the_app_is_the_caller_and_the_user_is_not_looked_up() {
        // Owned by whoever runs the tests: the caller is the "tenant".
        let h = tempfile::tempdir().unwrap();
        let argv = vec!["/bin/sh".to_string()];
        let c = check(&SpawnSpec {
            tenant: "t",
            user: "berth-no-such-user",
            home: h.path(),
            min_uid: u32::MAX,
            argv: &argv,
            script: None,
            dir: h.path(),
            env: &[],
            fds: Vec::new(),
            open_files: 1024,
            cgroup: Vec::new(),
            rlimits: Vec::new(),
            switch_user: false,
            isolation: None,
            isolate: None,
        })
        .unwrap();
        assert!(!c.switch_user);
        assert_eq!(c.identity.uid, rustix::process::geteuid().as_raw());
        assert_eq!(c.identity.gid, rustix::process::getegid().as_raw());
        assert_eq!(c.program, fs::canonicalize("/bin/sh").unwrap());
    }

    #[test]
    fn environment_is_exactly_the_safe_set_then_the_apps_in_order() {
        let extra = [
            ("APP_ENV".to_string(), "production".to_string()),
            ("FOO".to_string(), "1".to_string()),
            ("FOO".to_string(), "2".to_string()),
            ("PATH".to_string(), "/opt/app/bin".to_string()),
        ];
        let env = environment(Path::new("/home/alice"), "alice", &extra);
        let env: Vec<(String, String)> = env
            .into_iter()
            .map(|(k, v)| (k.into_string().unwrap(), v.into_string().unwrap()))
            .collect();
        let want = [
            ("PATH", "/opt/app/bin"),
            ("HOME", "/home/alice"),
            ("USER", "alice"),
            ("LOGNAME", "alice"),
            ("APP_ENV", "production"),
            ("FOO", "2"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(env, want);
    }

    #[test]
    fn a_good_program_passes_with_canonical_paths() {
        let h = Home::new();
        let link = h.join("link");
        std::os::unix::fs::symlink(h.join("bin/app"), &link).unwrap();
        let (program, dir, home) = h
            .check(link.to_str().unwrap(), &h.join("work/../work"), &[])
            .unwrap();
        let canonical = fs::canonicalize(h.path()).unwrap();
        assert_eq!(program, canonical.join("bin/app"));
        assert_eq!(dir, canonical.join("work"));
        assert_eq!(home, canonical);
    }

    #[test]
    fn a_system_program_outside_home_passes() {
        let h = Home::new();
        h.check("/bin/sh", &h.join("work"), &[]).unwrap();
    }

    #[test]
    fn empty_and_relative_commands_are_refused() {
        let h = Home::new();
        let r = check_paths(
            &SpawnSpec {
                tenant: "t",
                user: "u",
                home: h.path(),
                min_uid: 1000,
                argv: &[],
                script: None,
                dir: h.path(),
                env: &[],
                fds: Vec::new(),
                open_files: 1024,
                cgroup: Vec::new(),
                rlimits: Vec::new(),
                switch_user: true,
                isolation: None,
                isolate: None,
            },
            tenant_uid(),
        );
        assert!(matches!(r, Err(Refused::EmptyCommand)), "{r:?}");
        let r = h.check("bin/app", &h.join("work"), &[]);
        assert!(matches!(r, Err(Refused::RelativeProgram { .. })), "{r:?}");
    }

    #[test]
    fn a_missing_home_is_refused() {
        let h = Home::new();
        let r = h.check_in(&h.join("gone"), &h.app(), &h.join("work"), &[]);
        assert!(matches!(r, Err(Refused::Home { .. })), "{r:?}");
    }

    #[test]
    fn missing_and_irregular_programs_are_refused() {
        let h = Home::new();
        let r = h.check(h.join("bin/nope").to_str().unwrap(), &h.join("work"), &[]);
        assert!(matches!(r, Err(Refused::ProgramMissing { .. })), "{r:?}");
        let r = h.check(h.join("bin").to_str().unwrap(), &h.join("work"), &[]);
        assert!(
            matches!(
                r,
                Err(Refused::NotRegularFile {
                    kind: "directory",
                    ..
                })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn mode_checks_on_the_program_and_its_directory() {
        let h = Home::new();
        let app = h.app();
        let work = h.join("work");
        h.chmod("bin/app", 0o2755);
        let r = h.check(&app, &work, &[]);
        assert!(
            matches!(r, Err(Refused::SetId { mode: 0o2755, .. })),
            "{r:?}"
        );
        h.chmod("bin/app", 0o775);
        let e = h.check(&app, &work, &[]).unwrap_err();
        assert!(
            matches!(e, Refused::ProgramWritable { mode: 0o775, .. }),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .ends_with("/bin/app is writable by group or others (mode 0775)"),
            "{e}"
        );
        h.chmod("bin/app", 0o757);
        let r = h.check(&app, &work, &[]);
        assert!(matches!(r, Err(Refused::ProgramWritable { .. })), "{r:?}");
        h.chmod("bin/app", 0o755);
        h.chmod("bin", 0o775);
        let r = h.check(&app, &work, &[]);
        assert!(
            matches!(r, Err(Refused::ProgramDirWritable { mode: 0o775, .. })),
            "{r:?}"
        );
        h.chmod("bin", 0o1777);
        let r = h.check(&app, &work, &[]);
        assert!(
            matches!(r, Err(Refused::ProgramDirWritable { .. })),
            "{r:?}"
        );
        h.chmod("bin", 0o755);
        h.check(&app, &work, &[]).unwrap();
    }

    #[test]
    fn a_tenant_program_outside_home_is_refused_even_with_a_common_prefix() {
        let top = Home::new();
        top.mkdir("al");
        top.mkdir("alice2/bin");
        top.own("alice2");
        top.file("alice2/bin/app");
        let home = top.join("al");
        let app = top.join("alice2/bin/app");
        let r = top.check_in(&home, app.to_str().unwrap(), &home, &[]);
        assert!(
            matches!(r, Err(Refused::ProgramOutsideHome { .. })),
            "{r:?}"
        );
        let r = top.check_in(&home, "/bin/sh", &top.join("alice2"), &[]);
        assert!(matches!(r, Err(Refused::DirOutsideHome { .. })), "{r:?}");
        top.check_in(&home, "/bin/sh", &home, &[]).unwrap();
        // A symlink in the home to a program of the tenant outside it.
        std::os::unix::fs::symlink(&app, home.join("app")).unwrap();
        let r = top.check_in(&home, home.join("app").to_str().unwrap(), &home, &[]);
        assert!(
            matches!(r, Err(Refused::ProgramOutsideHome { .. })),
            "{r:?}"
        );
    }

    #[test]
    fn dir_checks() {
        let h = Home::new();
        let app = h.app();
        let r = h.check(&app, &h.join("nope"), &[]);
        assert!(matches!(r, Err(Refused::DirMissing { .. })), "{r:?}");
        let r = h.check(&app, &h.join("bin/app"), &[]);
        assert!(matches!(r, Err(Refused::NotADirectory { .. })), "{r:?}");
        let r = h.check(&app, Path::new("/"), &[]);
        assert!(matches!(r, Err(Refused::DirOutsideHome { .. })), "{r:?}");
        // A symlink inside the home that leads outside is outside.
        std::os::unix::fs::symlink("/usr", h.join("out")).unwrap();
        let r = h.check(&app, &h.join("out"), &[]);
        assert!(matches!(r, Err(Refused::DirOutsideHome { .. })), "{r:?}");
        h.chmod("work", 0o757);
        let r = h.check(&app, &h.join("work"), &[]);
        assert!(
            matches!(r, Err(Refused::DirWritable { mode: 0o757, .. })),
            "{r:?}"
        );
    }

    #[test]
    fn bad_arguments_and_environment_are_refused() {
        let h = Home::new();
        let app = h.app();
        let work = h.join("work");
        for (k, v) in [("A=B", "c"), ("", "c"), ("A", "c\0d"), ("A\0", "c")] {
            let r = h.check(&app, &work, &[(k.into(), v.into())]);
            assert!(matches!(r, Err(Refused::BadEnv { .. })), "{k:?}: {r:?}");
        }
        let r = h.check(&app, &work, &[("A".into(), "b=c".into())]);
        assert!(r.is_ok(), "{r:?}");
        let r = h.check(&format!("{app}\0"), &work, &[]);
        assert!(r.is_err(), "{r:?}");
    }
}
