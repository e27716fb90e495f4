//! The few system calls that need `unsafe`: what a forked child does between
//! `fork` and `exec` to become someone else.
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
