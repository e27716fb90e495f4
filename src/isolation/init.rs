//! berth's tiny init: what an isolated app process runs under.
//!
//! The supervisor forks as it does for any app (cgroup, session, the app's
//! descriptors, resource limits: [`crate::sys::spawn_app`]) and, instead of
//! the app, execs berth again as `berth app-init` with the [`Plan`] on
//! descriptor [`PLAN_FD`] and its report pipe on [`REPORT_FD`]. Three
//! processes follow, all in the app's cgroup:
//!
//! - the **outer** one (the pid the supervisor knows) makes the namespaces
//!   (a user namespace first when berth is unprivileged), builds the view
//!   ([`super::view`]), sets the host name, brings loopback up in a network
//!   namespace of its own, and forks; then it only waits, with every signal
//!   blocked, and ends as the app ended (the same exit code, or killed by the
//!   same signal), so the supervisor sees what it would have seen without
//!   isolation;
//! - the **init**, pid 1 of the new pid namespace, mounts `/proc` for it,
//!   forks the app, reaps every orphan, forwards the signals it gets to the
//!   app's process group, and hands the app's wait status to the outer one
//!   when the app ends (its own end then kills what is left in the
//!   namespace); it dies with the outer one (`PR_SET_PDEATHSIG`);
//! - the **app**: its own session, then the tenant's identity, `dir`,
//!   umask 022, no_new_privs, the seccomp filter, and execve.
//!
//! The supervisor's signals go to the outer one's process group, which holds
//! the outer one and the init (the app leads a session of its own): the
//! outer one holds them blocked, the init forwards them. A failure anywhere
//! before the app's execve is written to the report pipe as text, which the
//! supervisor logs as why the app did not start: an app whose isolation
//! cannot be set up never runs without it.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::mount::{MoveMountFlags, OpenTreeFlags};

use super::view::{Mount, Plan};

/// Where the init finds its plan (a memfd of JSON).
pub const PLAN_FD: RawFd = 100;
/// Where the init writes why it failed (the supervisor's report pipe): a
/// message starts with [`TEXT_REPORT`], then UTF-8.
pub const REPORT_FD: RawFd = 101;
/// The first four bytes of a text report (the supervisor's own reports are a
/// step index, never this).
pub const TEXT_REPORT: [u8; 4] = [0xff; 4];
/// Where the app's `cgroup.procs` descriptors are placed (one per
/// hierarchy, from here up).
pub const CGROUP_FD: RawFd = 102;
/// The largest plan the init reads.
const PLAN_MAX: u64 = 16 << 20;

/// `berth app-init`: never returns.
pub fn main() -> ! {
    if std::env::args_os().nth(2).is_some_and(|a| a == "--probe") {
        probe()
    }
    let plan = match read_plan() {
        Ok(p) => p,
        Err(e) => fail(&format!("reading the plan: {e}")),
    };
    outer(&plan)
}

/// `berth app-init --probe`, run by an unprivileged supervisor once: exits 0
/// when this user may make a view's namespaces, else says why on stderr.
fn probe() -> ! {
    let uid = rustix::process::geteuid().as_raw();
    let gid = rustix::process::getegid().as_raw();
    let tried = enter_user_namespace(uid, gid).and_then(|()| {
        let flags =
            libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
        // SAFETY: unshare on flags; single-threaded.
        if unsafe { libc::unshare(flags) } != 0 {
            return Err(errno("unshare", io::Error::last_os_error()));
        }
        rustix::mount::mount_change(
            "/",
            rustix::mount::MountPropagationFlags::DOWNSTREAM
                | rustix::mount::MountPropagationFlags::REC,
        )
        .map_err(|e| errno("mount propagation", e))
    });
    match tried {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1)
        }
    }
}

fn read_plan() -> io::Result<Plan> {
    // SAFETY: the supervisor placed the plan's memfd at PLAN_FD for us and
    // nothing else in this process owns that number.
    let file = unsafe { std::fs::File::from_raw_fd(PLAN_FD) };
    let mut bytes = Vec::new();
    file.take(PLAN_MAX).read_to_end(&mut bytes)?;
    serde_json::from_slice(&bytes).map_err(io::Error::other)
}

/// Writes `msg` to the report pipe (once the app closed it, to its stderr,
/// the tenant's error log) and exits 127, running nothing else.
fn fail(msg: &str) -> ! {
    let mut buf = Vec::with_capacity(4 + msg.len());
    buf.extend_from_slice(&TEXT_REPORT);
    buf.extend_from_slice(msg.as_bytes());
    // SAFETY: write and _exit on our own buffer and descriptors.
    unsafe {
        if libc::write(REPORT_FD, buf.as_ptr().cast(), buf.len()) < 0 {
            let line = format!("berth: the app did not start: {msg}\n");
            libc::write(2, line.as_ptr().cast(), line.len());
        }
        libc::_exit(127)
    }
}

fn errno(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

fn block_all_signals() {
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: on a sigset_t of our own.
    unsafe {
        libc::sigfillset(&mut set);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// The outer process: namespaces, the view, then wait for the init.
fn outer(plan: &Plan) -> ! {
    block_all_signals();
    // What `ps` and /proc/PID/comm show (else "exe", from /proc/self/exe).
    let _ = rustix::thread::set_name(c"berth-init");
    if let Some((uid, gid)) = plan.userns
        && let Err(e) = enter_user_namespace(uid, gid)
    {
        fail(&e)
    }
    let mut flags =
        libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    if plan.network_none {
        flags |= libc::CLONE_NEWNET;
    }
    // Opened before the view exists: nothing mounted in it decides what
    // this is.
    let devnull = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        Ok(f) => OwnedFd::from(f),
        Err(e) => fail(&errno("/dev/null", e)),
    };
    // SAFETY: unshare on flags; this process is single-threaded.
    if unsafe { libc::unshare(flags) } != 0 {
        fail(&errno("unshare", io::Error::last_os_error()))
    }
    if let Err(e) = build_view(&plan.mounts) {
        fail(&e)
    }
    if let Err(e) = rustix::system::sethostname(plan.hostname.as_bytes()) {
        fail(&errno("sethostname", e))
    }
    if plan.network_none
        && let Err(e) = loopback_up()
    {
        fail(&errno("bringing loopback up", e))
    }
    let (status_r, status_w) = match rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) {
        Ok(p) => p,
        Err(e) => fail(&errno("pipe", e)),
    };
    // Held by this process until it ends: the init sees it end.
    let (alive_r, alive_w) = match rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) {
        Ok(p) => p,
        Err(e) => fail(&errno("pipe", e)),
    };
    // SAFETY: single-threaded; the child runs ordinary code from here on.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        fail(&errno("fork", io::Error::last_os_error()))
    }
    if pid == 0 {
        drop(status_r);
        drop(alive_w);
        init(plan, status_w, alive_r, &devnull)
    }
    drop(status_w);
    drop(alive_r);
    let _alive = alive_w;
    // Only the app keeps its descriptors (and the report pipe).
    release_fds(plan, &devnull);
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waitpid on our child into a local.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid || (r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)) {
            break;
        }
    }
    // The app's own status, when the init could hand it over.
    let mut app = [0u8; 4];
    if rustix::io::read(&status_r, &mut app) == Ok(4) {
        status = libc::c_int::from_ne_bytes(app);
    }
    end_as(status)
}

/// Exits as a process with wait status `status` did.
fn end_as(status: libc::c_int) -> ! {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // SAFETY: default disposition, unblock, raise: this process dies of
        // the signal (RLIMIT_CORE is 0: no core is written).
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(sig);
        }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        1
    };
    // SAFETY: ends the process.
    unsafe { libc::_exit(code) }
}

/// Puts /dev/null at every number the app was given and closes the report
/// pipe: only the app holds those.
fn release_fds(plan: &Plan, devnull: &OwnedFd) {
    for &fd in &plan.fds {
        // SAFETY: dup2 onto numbers the plan names.
        unsafe { libc::dup2(devnull.as_raw_fd(), fd) };
    }
    for &fd in &plan.cgroup_fds {
        // SAFETY: our copies of the cgroup files.
        unsafe { libc::close(fd) };
    }
    // SAFETY: our copy of the report pipe.
    unsafe { libc::close(REPORT_FD) };
}

/// Pid 1 of the app's pid namespace.
fn init(plan: &Plan, status_w: OwnedFd, alive_r: OwnedFd, devnull: &OwnedFd) -> ! {
    // Dies with the outer process (whose death the supervisor sees); its own
    // death ends everything in the namespace. Had the outer one died before
    // this was set, its end of `alive` is closed already.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    let mut pfd = [rustix::event::PollFd::new(
        &alive_r,
        rustix::event::PollFlags::IN,
    )];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    if rustix::event::poll(&mut pfd, Some(&zero)).is_ok_and(|n| n > 0) {
        // SAFETY: ends the process.
        unsafe { libc::_exit(1) }
    }
    drop(alive_r);
    if let Err(e) = rustix::mount::mount(
        "proc",
        "/proc",
        "proc",
        rustix::mount::MountFlags::NOSUID
            | rustix::mount::MountFlags::NODEV
            | rustix::mount::MountFlags::NOEXEC,
        None,
    ) {
        fail(&errno("mounting /proc", e))
    }
    // SAFETY: single-threaded.
    let app = unsafe { libc::fork() };
    if app < 0 {
        fail(&errno("fork", io::Error::last_os_error()))
    }
    if app == 0 {
        drop(status_w);
        exec_app(plan)
    }
    release_fds(plan, devnull);
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: on our own sigset_t.
    unsafe { libc::sigfillset(&mut set) };
    loop {
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waits for one of the (all blocked) signals into a local.
        let sig = unsafe { libc::sigwaitinfo(&set, &mut info) };
        if sig < 0 {
            continue;
        }
        if sig != libc::SIGCHLD {
            // The app leads its own session and process group.
            // SAFETY: a signal to the app's group (or to the app).
            if unsafe { libc::kill(-app, sig) } != 0 {
                unsafe { libc::kill(app, sig) };
            }
            continue;
        }
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: reaps any child into a local.
            let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if r <= 0 {
                break;
            }
            if r == app {
                let _ = rustix::io::write(&status_w, &status.to_ne_bytes());
                // Pid 1's exit kills the rest of the namespace.
                end_as(status)
            }
        }
    }
}

/// The app: its own session, its identity, `dir`, no_new_privs, the filter,
/// execve.
fn exec_app(plan: &Plan) -> ! {
    // SAFETY: signal dispositions and mask back to the defaults for the app.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..65 {
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::setsid();
        libc::fcntl(REPORT_FD, libc::F_SETFD, libc::FD_CLOEXEC);
    }
    let cstr = |b: &[u8], what: &str| {
        CString::new(b).unwrap_or_else(|_| fail(&format!("NUL byte in {what}")))
    };
    let program = cstr(plan.program.as_os_str().as_bytes(), "the program");
    let dir = cstr(plan.dir.as_os_str().as_bytes(), "dir");
    let argv: Vec<CString> = plan
        .argv
        .iter()
        .map(|a| cstr(a.as_bytes(), "argv"))
        .collect();
    let mut env: Vec<CString> = Vec::with_capacity(plan.env.len() + 1);
    for (k, v) in &plan.env {
        if plan.listen_pid && k == b"LISTEN_PID" {
            continue;
        }
        let mut kv = k.clone();
        kv.push(b'=');
        kv.extend_from_slice(v);
        env.push(cstr(&kv, "the environment"));
    }
    if plan.listen_pid {
        env.push(cstr(
            format!("LISTEN_PID={}", std::process::id()).as_bytes(),
            "LISTEN_PID",
        ));
    }
    let filter = match &plan.seccomp {
        Some(allow) => match super::seccomp::Filter::new(allow) {
            Ok(f) => Some(f),
            Err(e) => fail(&format!("seccomp: {e}")),
        },
        None => None,
    };
    // The supervisor waits on the report pipe: it is done here, before
    // anything runs in the tenant's cgroup, where a tenant that throttled
    // its own CPU would make it wait. What fails from here on is said on
    // the app's stderr (the tenant's error log) and ends it with 127.
    // SAFETY: our copy of the report pipe.
    unsafe { libc::close(REPORT_FD) };
    // Into the app's cgroup ("0": this process), still as root.
    for &fd in &plan.cgroup_fds {
        // SAFETY: a write of our own bytes to a descriptor the plan names,
        // then its close (the app gets none of them).
        unsafe {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                fail(&errno(
                    "joining the app's cgroup",
                    io::Error::last_os_error(),
                ))
            }
            libc::close(fd);
        }
    }
    if let Some((uid, gid, groups)) = &plan.identity {
        // SAFETY: system calls on integers and our own array.
        unsafe {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
                fail(&errno("setgroups", io::Error::last_os_error()))
            }
            if libc::setresgid(*gid, *gid, *gid) != 0 {
                fail(&errno("setresgid", io::Error::last_os_error()))
            }
            if libc::setresuid(*uid, *uid, *uid) != 0 {
                fail(&errno("setresuid", io::Error::last_os_error()))
            }
        }
    }
    // SAFETY: chdir, umask and prctl on values of our own.
    unsafe {
        if libc::chdir(dir.as_ptr()) != 0 {
            fail(&errno(
                &format!("chdir {}", plan.dir.display()),
                io::Error::last_os_error(),
            ))
        }
        libc::umask(0o022);
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(&errno("no_new_privs", io::Error::last_os_error()))
        }
    }
    if let Some(f) = &filter
        && let Err(e) = f.install()
    {
        fail(&errno("installing the seccomp filter", e))
    }
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    env_p.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of C strings that outlive the call.
    unsafe { libc::execve(program.as_ptr(), argv_p.as_ptr(), env_p.as_ptr()) };
    fail(&errno(
        &format!("execve {}", plan.program.display()),
        io::Error::last_os_error(),
    ))
}

/// Unprivileged berth: a user namespace where the caller is itself (and has
/// every capability over the namespaces it makes next).
fn enter_user_namespace(uid: u32, gid: u32) -> Result<(), String> {
    // SAFETY: unshare on flags; single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
        return Err(errno(
            "a user namespace (the kernel allows none to this user?)",
            io::Error::last_os_error(),
        ));
    }
    let write = |file: &str, text: String| {
        std::fs::write(file, text).map_err(|e| errno(&format!("writing {file}"), e))
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("{uid} {uid} 1\n"))?;
    write("/proc/self/gid_map", format!("{gid} {gid} 1\n"))?;
    Ok(())
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(2)`: `set` on the mount at `path` (relative to `dirfd`;
/// the empty path is `dirfd` itself), recursively or not.
fn mount_setattr(dirfd: RawFd, path: &Path, set: u64, recursive: bool) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let mut flags = if path.as_os_str().is_empty() {
        libc::AT_EMPTY_PATH as libc::c_uint
    } else {
        0
    };
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: the system call reads our C string and struct, which outlive it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            c.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// A detached copy of the mount tree at `path`, opened without following
/// any symlink on the way (a tenant could otherwise point its site root at
/// another tenant's home and have the view bind that). None when the path
/// does not exist.
fn capture(path: &Path) -> Result<Option<OwnedFd>, String> {
    let Some(fd) = open_nofollow(path)? else {
        return Ok(None);
    };
    rustix::mount::open_tree(
        &fd,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH
            | OpenTreeFlags::AT_RECURSIVE,
    )
    .map(Some)
    .map_err(|e| errno(&format!("copying the mount of {}", path.display()), e))
}

/// `path` opened `O_PATH` through no symlink at all: a symlink anywhere,
/// the last component included, is ELOOP (no `O_NOFOLLOW`, with which
/// `O_PATH` would open the link itself). Every source and target of the
/// view's mounts.
fn open_real(path: &Path) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        rustix::fs::CWD,
        path,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
}

/// [`open_real`], with None when `path` does not exist and a message
/// otherwise.
fn open_nofollow(path: &Path) -> Result<Option<OwnedFd>, String> {
    match open_real(path) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(rustix::io::Errno::LOOP) => Err(errno(
            &path.display().to_string(),
            "a symlink on the way (the view binds and mounts on real paths only)",
        )),
        Err(e) => Err(errno(&path.display().to_string(), e)),
    }
}

/// The mount id of what `fd` is on.
fn mount_id(fd: &OwnedFd) -> Option<u64> {
    use rustix::fs::{AtFlags, StatxFlags};
    rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)
        .ok()
        .map(|st| st.stx_mnt_id)
}

/// The mount point `target` (a directory, or a file when `file`), opened
/// without following symlinks. What is missing is created, but only on a
/// mount this view made (`ours`: a hiding tmpfs, or the tenant's private
/// directory when its home lies under `/tmp`), one component at a time
/// under a descriptor: anywhere else a missing mount point is an error, and
/// root never creates anything elsewhere on the host.
fn mount_point(target: &Path, file: bool, ours: &[u64]) -> Result<OwnedFd, String> {
    if let Some(fd) = open_nofollow(target)? {
        return Ok(fd);
    }
    let parent = target
        .parent()
        .ok_or_else(|| errno(&target.display().to_string(), "no parent"))?;
    let dir = match open_nofollow(parent)? {
        Some(fd) => fd,
        None => mount_point(parent, false, ours)?,
    };
    // Reopened as a directory to create in (O_PATH descriptors cannot).
    let dir = rustix::fs::openat(
        &dir,
        ".",
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| errno(&parent.display().to_string(), e))?;
    if !mount_id(&dir).is_some_and(|id| ours.contains(&id)) {
        return Err(errno(
            &target.display().to_string(),
            "No such file or directory (and not inside what the view hides)",
        ));
    }
    let name = target
        .file_name()
        .ok_or_else(|| errno(&target.display().to_string(), "no name"))?;
    let made = if file {
        rustix::fs::openat(
            &dir,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o644),
        )
        .map(drop)
    } else {
        rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755))
    };
    made.map_err(|e| errno(&format!("mount point {}", target.display()), e))?;
    open_nofollow(target)?.ok_or_else(|| errno(&target.display().to_string(), "vanished"))
}

/// Builds the view, in this process's new mount namespace. Every mount goes
/// onto a descriptor opened without following symlinks, so nothing a tenant
/// links or swaps (a path under its home, a directory others may write)
/// makes root mount, create or open anything elsewhere.
fn build_view(mounts: &[Mount]) -> Result<(), String> {
    use rustix::mount::MountPropagationFlags as P;
    // Nothing mounted here reaches the host; the host's new mounts still
    // reach the view.
    rustix::mount::mount_change("/", P::DOWNSTREAM | P::REC)
        .map_err(|e| errno("making / a downstream mount", e))?;
    // What is bound back is copied before anything is hidden.
    let mut copies: Vec<Option<OwnedFd>> = Vec::with_capacity(mounts.len());
    for m in mounts {
        copies.push(match m {
            Mount::Hide(_) => None,
            Mount::Show { path, required, .. } => match capture(path)? {
                Some(fd) => Some(fd),
                None if *required => {
                    return Err(errno(
                        &path.display().to_string(),
                        "No such file or directory",
                    ));
                }
                None => None,
            },
            Mount::Private { source, .. } => Some(capture(source)?.ok_or_else(|| {
                errno(&source.display().to_string(), "No such file or directory")
            })?),
        });
    }
    mount_setattr(libc::AT_FDCWD, Path::new("/"), MOUNT_ATTR_RDONLY, true)
        .map_err(|e| errno("making the system read-only", e))?;
    // The tmpfs mounts made here: their descriptors (made read-only once
    // everything is in place); and the mounts where mount points may be
    // made.
    let mut tmpfs: Vec<OwnedFd> = Vec::new();
    let mut ours: Vec<u64> = Vec::new();
    for (m, copy) in mounts.iter().zip(copies) {
        match m {
            Mount::Hide(path) => {
                // Another tenant's path (or berth's) as it is now: gone,
                // or made a symlink by the tenant whose it is (who moved
                // its own files out of the way), there is nothing of it to
                // hide, and no other tenant's view may fail for it.
                let at = match open_real(path) {
                    Ok(fd) => fd,
                    Err(
                        rustix::io::Errno::NOENT
                        | rustix::io::Errno::LOOP
                        | rustix::io::Errno::NOTDIR,
                    ) => continue,
                    Err(e) => return Err(errno(&path.display().to_string(), e)),
                };
                // What to put over it follows from what was opened.
                if is_dir_fd(&at) {
                    let fs = empty_tmpfs().map_err(|e| errno("a tmpfs", e))?;
                    attach(&fs, &at, path)?;
                    ours.extend(mount_id(&fs));
                    tmpfs.push(fs);
                } else {
                    let null = capture(Path::new("/dev/null"))?
                        .ok_or_else(|| errno("/dev/null", "No such file"))?;
                    attach(&null, &at, path)?;
                }
            }
            Mount::Show {
                path, read_only, ..
            } => {
                let Some(copy) = copy else { continue };
                let at = mount_point(path, !is_dir_fd(&copy), &ours)?;
                if *read_only {
                    mount_setattr(copy.as_raw_fd(), Path::new(""), MOUNT_ATTR_RDONLY, true)
                        .map_err(|e| errno(&format!("read-only {}", path.display()), e))?;
                }
                attach(&copy, &at, path)?;
            }
            Mount::Private { target, .. } => {
                let (Some(copy), Some(at)) = (copy, open_nofollow(target)?) else {
                    continue;
                };
                attach(&copy, &at, target)?;
                ours.extend(mount_id(&copy));
            }
        }
    }
    for fs in &tmpfs {
        mount_setattr(fs.as_raw_fd(), Path::new(""), MOUNT_ATTR_RDONLY, false)
            .map_err(|e| errno("making a hiding tmpfs read-only", e))?;
    }
    Ok(())
}

/// A new, detached, empty tmpfs (root's, 0755, small), for hiding.
fn empty_tmpfs() -> io::Result<OwnedFd> {
    use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};
    let fs = rustix::mount::fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC)?;
    rustix::mount::fsconfig_set_string(&fs, "mode", "0755")?;
    rustix::mount::fsconfig_set_string(&fs, "size", "1m")?;
    rustix::mount::fsconfig_set_string(&fs, "nr_inodes", "4096")?;
    rustix::mount::fsconfig_create(&fs)?;
    Ok(rustix::mount::fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )?)
}

fn is_dir_fd(fd: &OwnedFd) -> bool {
    rustix::fs::fstat(fd).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
    })
}

/// Attaches a detached mount on `at` (`target` is for messages).
fn attach(copy: &OwnedFd, at: &OwnedFd, target: &Path) -> Result<(), String> {
    rustix::mount::move_mount(
        copy,
        "",
        at,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| errno(&format!("mounting at {}", target.display()), e))
}

/// `ip link set lo up` in the new network namespace.
fn loopback_up() -> io::Result<()> {
    // SAFETY: a socket, and ioctls on it with an ifreq of our own.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err(io::Error::last_os_error());
        }
        let s = OwnedFd::from_raw_fd(s);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
