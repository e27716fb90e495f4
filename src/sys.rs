//! The few system calls that need `unsafe`: what a forked child does between
//! `fork` and `exec` to become someone else, adopting inherited descriptors,
//! registering a descriptor with the runtime, asking the kernel whether a
//! file is open for writing anywhere (a lease), and walking the user and
//! group databases.
//!
//! Everything else in berth is `#![deny(unsafe_code)]`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The Unix identity a child process takes on before exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, set first (while still root).
    pub groups: Vec<u32>,
}

impl Identity {
    /// `user`'s ids and the groups the system gives it (getgrouplist).
    pub fn of(user: &nix::unistd::User) -> nix::Result<Identity> {
        let name = std::ffi::CString::new(user.name.as_str()).map_err(|_| nix::Error::EINVAL)?;
        let groups = nix::unistd::getgrouplist(&name, user.gid)?;
        Ok(Identity {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups: groups.iter().map(|g| g.as_raw()).collect(),
        })
    }
}

/// The password and group databases' iteration state (`setpwent`,
/// `getgrent_r`, ...) is one per process: one walk at a time.
static DATABASE_WALK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Grows `buf` after ERANGE, up to 1 MiB (a group with tens of thousands of
/// members); false past it.
fn grow(buf: &mut Vec<libc::c_char>) -> bool {
    if buf.len() >= 1 << 20 {
        return false;
    }
    let len = buf.len() * 2;
    buf.resize(len, 0);
    true
}

/// Every user the password database lists (`getpwent_r`): one pass over
/// it, where a lookup per user would read the whole file each time (at
/// 1,000 users, a million lines). The files always list theirs; other NSS
/// sources only when they enumerate (sssd's `enumerate = true`): look up a
/// user missing here by uid.
pub fn all_users() -> Vec<nix::unistd::User> {
    let _walk = DATABASE_WALK.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::new();
    let mut buf: Vec<libc::c_char> = vec![0; 16 << 10];
    // SAFETY: the walk is this thread's alone (DATABASE_WALK) from setpwent
    // to endpwent; `entry` and `buf` live across each call, and what
    // `found` points to (into them) is copied out before the next call
    // reuses them. On ERANGE glibc does not advance the walk.
    unsafe {
        libc::setpwent();
        loop {
            let mut entry: libc::passwd = std::mem::zeroed();
            let mut found: *mut libc::passwd = std::ptr::null_mut();
            let r = libc::getpwent_r(&mut entry, buf.as_mut_ptr(), buf.len(), &mut found);
            if r == libc::ERANGE && grow(&mut buf) {
                continue;
            }
            if r != 0 || found.is_null() {
                break;
            }
            out.push(nix::unistd::User::from(&*found));
        }
        libc::endpwent();
    }
    out
}

/// Every group the group database lists (`getgrent_r`), with its members:
/// as [`all_users`], one pass, and only what the sources enumerate.
pub fn all_groups() -> Vec<nix::unistd::Group> {
    let _walk = DATABASE_WALK.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::new();
    let mut buf: Vec<libc::c_char> = vec![0; 16 << 10];
    // SAFETY: as in `all_users`.
    unsafe {
        libc::setgrent();
        loop {
            let mut entry: libc::group = std::mem::zeroed();
            let mut found: *mut libc::group = std::ptr::null_mut();
            let r = libc::getgrent_r(&mut entry, buf.as_mut_ptr(), buf.len(), &mut found);
            if r == libc::ERANGE && grow(&mut buf) {
                continue;
            }
            if r != 0 || found.is_null() {
                break;
            }
            out.push(nix::unistd::Group::from(&*found));
        }
        libc::endgrent();
    }
    out
}

/// Which step of becoming the child failed; shown in the error.
#[derive(Debug, Clone, Copy)]
enum Step {
    Dup2,
    Setgroups,
    Setresgid,
    Setresuid,
    NoNewPrivs,
    Pdeathsig,
}

fn fail(step: Step) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{step:?}: {e}"))
}

/// Arranges for `cmd`'s child to: get `keep` as file descriptor `at` (all other
/// descriptors are close-on-exec already, as Rust opens them), drop to
/// `identity` if given (supplementary groups, then gid, then uid — the order in
/// which root can still change them), set `no_new_privs` so no setuid binary can
/// give privileges back, and receive SIGTERM if the parent dies.
pub fn prepare_child(cmd: &mut Command, keep: &OwnedFd, at: RawFd, identity: Option<Identity>) {
    let src = keep.as_raw_fd();
    let groups: Vec<libc::gid_t> = identity
        .as_ref()
        .map(|id| id.groups.iter().map(|&g| g as libc::gid_t).collect())
        .unwrap_or_default();
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (dup2, fcntl, setgroups, setresgid, setresuid,
    // prctl) on memory prepared before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if src == at {
                let flags = libc::fcntl(at, libc::F_GETFD);
                if flags < 0 || libc::fcntl(at, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(fail(Step::Dup2));
                }
            } else if libc::dup2(src, at) < 0 {
                return Err(fail(Step::Dup2));
            }
            if let Some(id) = &identity {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
                    return Err(fail(Step::Setgroups));
                }
                if libc::setresgid(id.gid, id.gid, id.gid) != 0 {
                    return Err(fail(Step::Setresgid));
                }
                if libc::setresuid(id.uid, id.uid, id.uid) != 0 {
                    return Err(fail(Step::Setresuid));
                }
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(fail(Step::NoNewPrivs));
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                return Err(fail(Step::Pdeathsig));
            }
            Ok(())
        });
    }
}

/// Takes ownership of a descriptor inherited across exec (the front end's IPC
/// socket at fd 3), after checking that it is open; marks it close-on-exec.
pub fn inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on an arbitrary integer is harmless; it fails with EBADF if
    // the descriptor is not open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open (checked above) and nothing else in this
    // process owns it: it was placed at this number by our parent for us alone,
    // and this function is called once, at start-up.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Registers `fd` with the current tokio runtime for `interest` (the
/// supervisor waits for its channel to the front end to become writable).
/// Must be called within the runtime.
pub fn watch_fd(
    fd: std::sync::Arc<OwnedFd>,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<std::sync::Arc<OwnedFd>>> {
    // SAFETY: the AsyncFd owns a strong reference to the OwnedFd, so the
    // descriptor stays open, on the same file description, for as long as the
    // AsyncFd lives (nothing closes an OwnedFd but its drop); and
    // `Arc<OwnedFd>::as_raw_fd` returns that same descriptor every time.
    Ok(unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }?)
}

/// Whether any process (this one included) has the file behind `fd` open
/// for writing: the kernel grants a read lease (`F_SETLEASE`,
/// `F_RDLCK`) exactly when nobody has (`EAGAIN` otherwise). The lease is
/// given back at once. `fd` must be open read-only on a regular file that
/// this process owns or has `CAP_LEASE` for. An error other than `EAGAIN`
/// (leases off: `fs.leases-enable = 0`, a file system without them) means
/// the question cannot be answered this way.
///
/// Log rotation asks this before compressing an old log: the front end
/// writes a request's line to the file that was current when its response
/// began, so a long download may still add to a file rotated minutes ago.
pub fn has_writers(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<bool> {
    let fd = fd.as_raw_fd();
    // SAFETY: F_SETLEASE takes an int argument and touches no memory of
    // ours; `fd` is a descriptor borrowed for the call.
    if unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) } < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(true),
            _ => Err(e),
        };
    }
    // SAFETY: as above. (A lease left behind would only delay another
    // opener of this file for the lease-break time; nobody opens it.)
    unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
    Ok(false)
}

pub use app::{AppExec, AppStep, Rlimit, spawn_app};

/// App processes: a tenant's program, started by the supervisor after
/// suEXEC's checks (`supervisor::spawn`).
mod app {
    use std::ffi::{CString, OsString};
    use std::io;
    use std::os::fd::{AsRawFd, OwnedFd, RawFd};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};

    use super::Identity;

    /// Which step of starting an app process failed; carried by
    /// [`crate::supervisor::spawn::SpawnError::Exec`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum AppStep {
        /// In the parent: opening /dev/null and the report pipe, building C
        /// strings, validating the descriptor plan.
        Prepare,
        /// `fork` (or anything std does in the child before our hook).
        Fork,
        /// Resetting the signal mask.
        Signals,
        /// Joining the app's cgroup (writing to its `cgroup.procs`).
        Cgroup,
        Setsid,
        /// Moving the given descriptors to their numbers (and /dev/null to 0/1/2).
        Dup,
        /// Closing every other descriptor.
        CloseFds,
        /// Setting RLIMIT_NOFILE.
        Limits,
        Setgroups,
        Setresgid,
        Setresuid,
        Chdir,
        NoNewPrivs,
        Execve,
        /// Installing the seccomp filter.
        Seccomp,
        /// In berth's init: building the app's view (the report says what).
        Isolation,
    }

    impl AppStep {
        /// In discriminant order: the child reports a step as its index.
        const ALL: [AppStep; 16] = [
            AppStep::Prepare,
            AppStep::Fork,
            AppStep::Signals,
            AppStep::Cgroup,
            AppStep::Setsid,
            AppStep::Dup,
            AppStep::CloseFds,
            AppStep::Limits,
            AppStep::Setgroups,
            AppStep::Setresgid,
            AppStep::Setresuid,
            AppStep::Chdir,
            AppStep::NoNewPrivs,
            AppStep::Execve,
            AppStep::Seccomp,
            AppStep::Isolation,
        ];
    }

    impl std::fmt::Display for AppStep {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(match self {
                AppStep::Prepare => "preparing the child",
                AppStep::Fork => "fork",
                AppStep::Signals => "resetting signals",
                AppStep::Cgroup => "joining the cgroup",
                AppStep::Setsid => "setsid",
                AppStep::Dup => "placing descriptors",
                AppStep::CloseFds => "closing descriptors",
                AppStep::Limits => "setting resource limits",
                AppStep::Setgroups => "setgroups",
                AppStep::Setresgid => "setresgid",
                AppStep::Setresuid => "setresuid",
                AppStep::Chdir => "chdir",
                AppStep::NoNewPrivs => "no_new_privs",
                AppStep::Execve => "execve",
                AppStep::Seccomp => "installing the seccomp filter",
                AppStep::Isolation => "isolation (berth's init)",
            })
        }
    }

    /// One app process to start. Paths are used as given: the caller has
    /// checked and canonicalised them.
    pub struct AppExec<'a> {
        /// The file to execve (no PATH search).
        pub program: &'a Path,
        /// The argument vector, `argv[0]` included (not empty).
        pub argv: &'a [String],
        /// The complete environment, in order (names are unique).
        pub env: &'a [(OsString, OsString)],
        /// The working directory, entered after dropping privileges.
        pub dir: &'a Path,
        /// Descriptors to place at the given numbers in the child.
        pub fds: Vec<(OwnedFd, RawFd)>,
        /// Who to become; `None` keeps the caller's identity.
        pub identity: Option<&'a Identity>,
        /// RLIMIT_NOFILE, soft and hard.
        pub open_files: u64,
        /// `cgroup.procs` of the app's cgroup in each hierarchy, open for
        /// writing: the child joins before it does anything else.
        pub cgroup: Vec<OwnedFd>,
        /// More limits, soft and hard (RLIMIT_CORE is always 0).
        pub rlimits: Vec<(Rlimit, u64)>,
        /// A copy of the report pipe's write end at this number, kept across
        /// execve: berth's init ([`crate::isolation::init`]) writes its own
        /// failures there, and the pipe ends when the app itself has exec'd.
        pub report_at: Option<RawFd>,
        /// The seccomp filter, installed last before execve.
        pub filter: Option<std::sync::Arc<crate::isolation::seccomp::Filter>>,
    }

    /// The resource limits an app may be given besides RLIMIT_NOFILE.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Rlimit {
        /// Private writable memory (malloc, anonymous mmap) per process.
        Data,
        /// Processes and threads of the user.
        Nproc,
    }

    /// How long the parent waits for the child to exec (berth's init builds
    /// the app's view first).
    const REPORT_WAIT: std::time::Duration = std::time::Duration::from_secs(15);
    /// The longest report kept.
    const REPORT_MAX: usize = 4096;

    /// `LISTEN_PID=` followed by room for any pid and a NUL.
    const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";
    type PidBuf = [u8; 32];

    /// A NULL-terminated array of C strings for execve, built before the fork,
    /// optionally with one entry (`LISTEN_PID`) that the child fills in.
    struct CArray {
        _strings: Vec<CString>,
        ptrs: Vec<*const libc::c_char>,
        /// From `Box::into_raw`; null when there is no such entry.
        pid: *mut PidBuf,
    }

    // SAFETY: the pointers point into heap buffers this array owns
    // (`_strings`, `pid`), which live as long as it does and which nothing but
    // the forked child (with its own copy of memory) ever writes.
    unsafe impl Send for CArray {}
    // SAFETY: as above.
    unsafe impl Sync for CArray {}

    impl CArray {
        fn new(strings: Vec<CString>) -> CArray {
            let mut ptrs: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
            ptrs.push(std::ptr::null());
            CArray {
                _strings: strings,
                ptrs,
                pid: std::ptr::null_mut(),
            }
        }

        /// Adds the entry [`CArray::fill_pid`] writes in the child.
        fn add_pid_slot(&mut self) {
            let buf = Box::into_raw(Box::new([0u8; 32]));
            let end = self.ptrs.len() - 1;
            self.ptrs.insert(end, buf.cast_const().cast());
            self.pid = buf;
        }

        /// In the child: `LISTEN_PID=<pid>`, without allocating.
        fn fill_pid(&mut self, pid: i32) {
            if self.pid.is_null() {
                return;
            }
            // SAFETY: `pid` came from Box::into_raw in `add_pid_slot` and is
            // freed only in Drop; nothing else refers to it as a reference.
            let buf = unsafe { &mut *self.pid };
            write_listen_pid(buf, pid);
        }
    }

    impl Drop for CArray {
        fn drop(&mut self) {
            if !self.pid.is_null() {
                // SAFETY: allocated by Box::into_raw in `add_pid_slot`, freed once.
                drop(unsafe { Box::from_raw(self.pid) });
            }
        }
    }

    fn cstring(bytes: &[u8]) -> io::Result<CString> {
        CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte"))
    }

    /// Writes `LISTEN_PID=<pid>\0` into `buf`.
    fn write_listen_pid(buf: &mut PidBuf, pid: i32) {
        let prefix = LISTEN_PID_PREFIX.len();
        buf[..prefix].copy_from_slice(LISTEN_PID_PREFIX);
        let mut digits = [0u8; 12];
        let mut n = pid.unsigned_abs();
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for i in 0..len {
            buf[prefix + i] = digits[len - 1 - i];
        }
        buf[prefix + len] = 0;
    }

    /// In the child: reports `step` and the current errno to the parent over
    /// `report`, then exits without running destructors or atexit handlers.
    fn child_fail(report: RawFd, step: AppStep) -> ! {
        let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&(step as u32).to_ne_bytes());
        msg[4..].copy_from_slice(&errno.to_ne_bytes());
        // SAFETY: write and _exit are async-signal-safe; `msg` is on the stack.
        unsafe {
            libc::write(report, msg.as_ptr().cast(), msg.len());
            libc::_exit(127)
        }
    }

    /// In the child: closes descriptors `first..=last`, with close_range(2)
    /// when the kernel has it (5.9+), else one close per number below
    /// RLIMIT_NOFILE.
    fn close_fds(first: RawFd, last: u32) -> bool {
        if first < 0 || first as u32 > last {
            return true;
        }
        // SAFETY: a system call on integers; the caller keeps every descriptor
        // it still needs out of the range.
        let r = unsafe { libc::syscall(libc::SYS_close_range, first as u32, last, 0u32) };
        if r == 0 {
            return true;
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
            return false;
        }
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct on our stack.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return false;
        }
        let end = lim.rlim_cur.min(u64::from(last) + 1).min(i32::MAX as u64) as RawFd;
        for fd in first..end {
            // SAFETY: as above; EBADF for numbers that are not open is fine.
            unsafe { libc::close(fd) };
        }
        true
    }

    /// Starts an app process, the way suEXEC does once its checks have passed.
    /// In the child, in this order: the signal mask is emptied and every
    /// signal's disposition reset; `setsid` (its own session and process group,
    /// so berth can signal the whole group); the `fds` are placed at their
    /// numbers (all are first copied above the highest target, so a source
    /// whose number is another one's target is not clobbered) and /dev/null
    /// fills 0, 1 and 2 where nothing was given; every other descriptor is
    /// closed, inherited ones without close-on-exec included; RLIMIT_NOFILE
    /// (soft and hard) becomes `open_files`; `setgroups` →
    /// `setresgid` → `setresuid` when `identity` is given; `chdir(dir)` as that
    /// identity; umask 022; `no_new_privs`; `execve(program, argv, env)`. When
    /// the environment has `LISTEN_FDS`, `LISTEN_PID` is set to the child's own
    /// pid (systemd socket activation), which only the child knows.
    ///
    /// The child does the execve itself and reports a failure as (step, errno)
    /// over a close-on-exec pipe of ours, then `_exit(127)`: std's own error
    /// channel is an ordinary descriptor that a target number may overwrite, so
    /// the child never hands control back to std. Returns once the child has
    /// exec'd (or failed).
    pub fn spawn_app(app: AppExec<'_>) -> Result<Child, (AppStep, io::Error)> {
        let prep = |e: io::Error| (AppStep::Prepare, e);
        let invalid = |why: &str| {
            (
                AppStep::Prepare,
                io::Error::new(io::ErrorKind::InvalidInput, why.to_string()),
            )
        };
        if app.argv.is_empty() {
            return Err(invalid("empty argv"));
        }
        let (report_r, report_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| prep(e.into()))?;
        let mut app = app;
        if let Some(at) = app.report_at {
            let copy = report_w.try_clone().map_err(prep)?;
            app.fds.push((copy, at));
        }

        // The descriptor plan: targets are distinct and non-negative; 0, 1 and
        // 2 are always kept (given, or /dev/null); everything else is closed.
        let srcs: Vec<RawFd> = app.fds.iter().map(|(fd, _)| fd.as_raw_fd()).collect();
        let targets: Vec<RawFd> = app.fds.iter().map(|&(_, at)| at).collect();
        if targets.iter().any(|&t| t < 0) {
            return Err(invalid("negative descriptor number"));
        }
        let mut distinct = targets.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != targets.len() {
            return Err(invalid("a descriptor number is given twice"));
        }
        let mut keep: Vec<RawFd> = distinct.into_iter().chain(0..3).collect();
        keep.sort_unstable();
        keep.dedup();
        let null_at: Vec<RawFd> = (0..3).filter(|k| !targets.contains(k)).collect();
        let highest = keep[keep.len() - 1];
        let base = highest
            .checked_add(1)
            .ok_or_else(|| invalid("descriptor number too large"))?;
        let mut tmp: Vec<RawFd> = vec![-1; srcs.len()];

        let devnull = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(prep)?;
        let devnull_fd = devnull.as_raw_fd();
        let report_fd = report_w.as_raw_fd();

        let program = cstring(app.program.as_os_str().as_bytes()).map_err(prep)?;
        let dir = cstring(app.dir.as_os_str().as_bytes()).map_err(prep)?;
        let argv = CArray::new(
            app.argv
                .iter()
                .map(|a| cstring(a.as_bytes()))
                .collect::<io::Result<_>>()
                .map_err(prep)?,
        );
        let listen = app.env.iter().any(|(k, _)| k == "LISTEN_FDS");
        let mut env = Vec::with_capacity(app.env.len() + 1);
        for (k, v) in app.env {
            if listen && k == "LISTEN_PID" {
                continue;
            }
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            env.push(cstring(&kv).map_err(prep)?);
        }
        let mut envp = CArray::new(env);
        if listen {
            envp.add_pid_slot();
        }
        let nofile = libc::rlimit {
            rlim_cur: app.open_files,
            rlim_max: app.open_files,
        };
        let core0 = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        let extra: Vec<(libc::__rlimit_resource_t, libc::rlimit)> = app
            .rlimits
            .iter()
            .map(|&(r, v)| {
                let res = match r {
                    Rlimit::Data => libc::RLIMIT_DATA,
                    Rlimit::Nproc => libc::RLIMIT_NPROC,
                };
                (
                    res,
                    libc::rlimit {
                        rlim_cur: v,
                        rlim_max: v,
                    },
                )
            })
            .collect();
        let cgroup_fds: Vec<RawFd> = app.cgroup.iter().map(|fd| fd.as_raw_fd()).collect();
        let ids = app.identity.map(|id| (id.uid, id.gid));
        let filter = app.filter.clone();
        let groups: Vec<libc::gid_t> = app.identity.map(|id| id.groups.clone()).unwrap_or_default();

        let mut cmd = Command::new(app.program);
        cmd.arg0(&app.argv[0])
            .args(&app.argv[1..])
            .env_clear()
            .stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        // SAFETY: the closure runs in the forked child and calls only
        // async-signal-safe functions (sigprocmask, write, sigaction, setsid, fcntl,
        // dup2, close_range/close, getrlimit, setrlimit, setgroups, setresgid, setresuid,
        // chdir, umask, prctl, getpid, execve, write, _exit) on memory prepared
        // before the fork (it writes only into `tmp` and the LISTEN_PID buffer,
        // which it owns); it allocates nothing and never returns: it execs or
        // exits.
        unsafe {
            cmd.pre_exec(move || {
                let mut report = report_fd;

                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
                    child_fail(report, AppStep::Signals);
                }
                // Into the app's cgroup before anything of the tenant's runs
                // ("0" is the writing process).
                for &fd in &cgroup_fds {
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        child_fail(report, AppStep::Cgroup);
                    }
                }
                // Handlers go at execve anyway; ignored signals would stay
                // ignored. Errors (SIGKILL, SIGSTOP, libc's own) do not matter.
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                for sig in 1..65 {
                    libc::sigaction(sig, &dfl, std::ptr::null_mut());
                }

                if libc::setsid() < 0 {
                    child_fail(report, AppStep::Setsid);
                }

                // Copy everything still needed above the highest target first.
                let r = libc::fcntl(report, libc::F_DUPFD_CLOEXEC, base);
                if r < 0 {
                    child_fail(report, AppStep::Dup);
                }
                report = r;
                let null_hi = libc::fcntl(devnull_fd, libc::F_DUPFD_CLOEXEC, base);
                if null_hi < 0 {
                    child_fail(report, AppStep::Dup);
                }
                for (i, &src) in srcs.iter().enumerate() {
                    tmp[i] = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, base);
                    if tmp[i] < 0 {
                        child_fail(report, AppStep::Dup);
                    }
                }
                // dup2 clears close-on-exec on the target.
                for (i, &at) in targets.iter().enumerate() {
                    if libc::dup2(tmp[i], at) < 0 {
                        child_fail(report, AppStep::Dup);
                    }
                }
                for &at in &null_at {
                    if libc::dup2(null_hi, at) < 0 {
                        child_fail(report, AppStep::Dup);
                    }
                }
                // Close the gaps between kept numbers, then everything above
                // them but the report pipe (close-on-exec: it goes at execve).
                let mut prev = -1;
                for &k in &keep {
                    if k > prev + 1 && !close_fds(prev + 1, (k - 1) as u32) {
                        child_fail(report, AppStep::CloseFds);
                    }
                    prev = k;
                }
                if !close_fds(prev + 1, (report - 1) as u32) || !close_fds(report + 1, u32::MAX) {
                    child_fail(report, AppStep::CloseFds);
                }
                // Still privileged: a hard limit above ours can be set too.
                if libc::setrlimit(libc::RLIMIT_NOFILE, &nofile) != 0
                    || libc::setrlimit(libc::RLIMIT_CORE, &core0) != 0
                {
                    child_fail(report, AppStep::Limits);
                }
                for (res, lim) in &extra {
                    if libc::setrlimit(*res, lim) != 0 {
                        child_fail(report, AppStep::Limits);
                    }
                }

                if let Some((uid, gid)) = ids {
                    if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
                        child_fail(report, AppStep::Setgroups);
                    }
                    if libc::setresgid(gid, gid, gid) != 0 {
                        child_fail(report, AppStep::Setresgid);
                    }
                    if libc::setresuid(uid, uid, uid) != 0 {
                        child_fail(report, AppStep::Setresuid);
                    }
                }
                if libc::chdir(dir.as_ptr()) != 0 {
                    child_fail(report, AppStep::Chdir);
                }
                libc::umask(0o022);
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    child_fail(report, AppStep::NoNewPrivs);
                }
                if let Some(f) = &filter
                    && f.install().is_err()
                {
                    child_fail(report, AppStep::Seccomp);
                }
                envp.fill_pid(libc::getpid());
                libc::execve(program.as_ptr(), argv.ptrs.as_ptr(), envp.ptrs.as_ptr());
                child_fail(report, AppStep::Execve)
            });
        }
        let spawned = cmd.spawn();
        // Our copies go now: the child has its own. The report pipe's write end
        // must be closed before reading, or the read never sees end-of-file.
        drop(cmd);
        drop(report_w);
        drop(devnull);
        drop(app.fds);
        let mut child = spawned.map_err(|e| (AppStep::Fork, e))?;

        // Until end-of-file: the child exec'd (berth's init: the app did).
        // A report is 8 bytes (step, errno), or a text from berth's init.
        let mut msg: Vec<u8> = Vec::new();
        let deadline = std::time::Instant::now() + REPORT_WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let mut pfd = [rustix::event::PollFd::new(
                &report_r,
                rustix::event::PollFlags::IN,
            )];
            let ready = rustix::event::poll(
                &mut pfd,
                Some(&rustix::time::Timespec::try_from(left).unwrap_or_default()),
            );
            match ready {
                Ok(0) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err((
                        AppStep::Isolation,
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the app's view was not built within 15 s",
                        ),
                    ));
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err((AppStep::Prepare, e.into()));
                }
                Ok(_) => {}
            }
            let mut buf = [0u8; 1024];
            match rustix::io::read(&report_r, &mut buf) {
                Ok(0) => break,
                Ok(n) if msg.len() < REPORT_MAX => msg.extend_from_slice(&buf[..n]),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err((AppStep::Prepare, e.into()));
                }
            }
        }
        if msg.is_empty() {
            // End-of-file without a report: the child exec'd (or was killed
            // before it could; its exit status says so).
            return Ok(child);
        }
        let _ = child.wait();
        if msg.starts_with(&crate::isolation::init::TEXT_REPORT) {
            let text = String::from_utf8_lossy(&msg[4..]).into_owned();
            return Err((AppStep::Isolation, io::Error::other(text)));
        }
        let got = msg.len();
        if got < 8 {
            return Err(invalid("short report from the child"));
        }
        let step = u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]);
        let errno = i32::from_ne_bytes([msg[4], msg[5], msg[6], msg[7]]);
        let step = AppStep::ALL
            .get(step as usize)
            .copied()
            .unwrap_or(AppStep::Execve);
        Err((step, io::Error::from_raw_os_error(errno)))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn listen_pid_is_written_in_place() {
            let mut buf = [0xffu8; 32];
            write_listen_pid(&mut buf, 4194304);
            assert_eq!(&buf[..19], b"LISTEN_PID=4194304\0");
            write_listen_pid(&mut buf, 7);
            assert_eq!(&buf[..13], b"LISTEN_PID=7\0");
        }

        #[test]
        fn steps_round_trip_through_their_index() {
            for (i, step) in AppStep::ALL.iter().enumerate() {
                assert_eq!(*step as usize, i);
            }
        }
    }
}
