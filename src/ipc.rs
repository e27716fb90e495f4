//! The typed channel between the supervisor (root) and the front end.
//!
//! One `AF_UNIX` stream socketpair. A frame is a 4-byte big-endian length and a JSON
//! message; file descriptors (listeners, log files) travel with the frame as
//! `SCM_RIGHTS`, split over several `sendmsg` calls when there are many, and are
//! collected by the reader until the frame is complete. Messages are a closed set:
//! the front end can only ask for what [`ToSupervisor`] names, never "run this".

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

use crate::config::{ClientLimits, Route};

/// Messages from the supervisor to the front end.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToFront {
    /// A new configuration. Fds: one per `listeners` entry, then per `logs`
    /// entry its access log, then per `logs` entry its error log, then berth's
    /// error log.
    Plan(Plan),
    /// Reopened log files (SIGUSR1). Fds: as for a plan, without the listeners.
    Logs { tenants: Vec<String> },
    /// Stop accepting, finish requests in flight, exit.
    Shutdown,
    /// The answer to [`ToSupervisor::StartProcess`].
    Started {
        req: u64,
        result: Result<AppProcess, String>,
    },
    /// An app process ended (crashed, retired, or stopped by a reload).
    Exited { app: AppId, slot: u32, why: String },
    /// A process the front end did not ask for is running (kept warm for
    /// `min_processes`, or already running when the front end started).
    Spawned { app: AppId, process: AppProcess },
    /// The answer to [`ToSupervisor::RunCgi`]. Fds on success: the script's
    /// stdin (to write), stdout and stderr (to read).
    CgiStarted {
        req: u64,
        result: Result<(), String>,
    },
}

/// Names one app of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AppId {
    pub tenant: String,
    pub app: String,
}

impl std::fmt::Display for AppId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.tenant, self.app)
    }
}

/// A running app process as the front end sees it: where to connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppProcess {
    /// Numbers the app's processes; unique among its live ones.
    pub slot: u32,
    /// Its Unix socket: bound by berth in the directory only the front end's
    /// group may enter, or (`bind = "socket"`) by the app at the path berth
    /// gave it. Empty for `bind = "port"`.
    pub socket: PathBuf,
    /// `bind = "port"`: the app listens on 127.0.0.1 at this port.
    pub port: Option<u16>,
    /// For an app that binds by itself: the uid its listener must belong to,
    /// checked on every new connection before a byte is sent.
    pub owner: Option<u32>,
}

/// Messages from the front end to the supervisor.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToSupervisor {
    /// The plan with this generation is in effect.
    Applied { generation: u64 },
    /// Start one more process of this app (the supervisor checks its own
    /// configuration: the app must exist and have room under `max_processes`).
    StartProcess { req: u64, app: AppId },
    /// Stop this process: it served `max_requests` or was idle too long.
    Retire { app: AppId, slot: u32 },
    /// Run one request of a CGI app. `script` is the file under one of the
    /// tenant's site roots that an extension route chose (None: the app is
    /// mounted and runs its own command). The supervisor checks the script as
    /// suEXEC would (under a site root of the tenant, owned by it, not
    /// writable by others) and passes on only the CGI variables from `env`.
    RunCgi {
        req: u64,
        app: AppId,
        script: Option<PathBuf>,
        env: Vec<(String, String)>,
    },
}

/// What the front end needs to serve: everything already validated and read by
/// the supervisor, so the front end never opens a configuration file, key or
/// htpasswd file itself.
#[derive(Debug, Serialize, Deserialize)]
pub struct Plan {
    pub generation: u64,
    pub limits: ClientLimits,
    pub listeners: Vec<ListenerSpec>,
    /// Tenant names, in the order of the access-log fds.
    pub logs: Vec<String>,
    pub sites: Vec<SitePlan>,
    pub apps: Vec<AppPlan>,
    /// The host whose site's certificate answers TLS clients without SNI.
    pub default_tls_host: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ListenerSpec {
    pub addr: SocketAddr,
    pub tls: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SitePlan {
    pub tenant: String,
    pub hosts: Vec<String>,
    pub root: PathBuf,
    /// PEM certificate chain and key.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    pub routes: Vec<Route>,
}

/// What the front end knows of an app: how to talk to it and its pool limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppPlan {
    pub id: AppId,
    pub protocol: crate::config::Protocol,
    pub pool: crate::config::Pool,
    /// The program, for SCRIPT_FILENAME on mounted FastCGI apps.
    pub program: PathBuf,
}

/// Largest frame accepted; a plan for thousands of sites fits easily.
const MAX_FRAME: usize = 64 << 20;
/// Fds per `sendmsg` (the kernel's SCM_MAX_FD is 253).
const FDS_PER_SEND: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("peer closed the channel")]
    Closed,
    #[error("channel I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad message: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("frame of {0} bytes is too large")]
    TooLarge(usize),
    #[error("control data truncated: file descriptors lost")]
    FdsTruncated,
}

/// Sends one message with its fds. Blocking.
pub fn send<T: Serialize>(
    sock: BorrowedFd<'_>,
    msg: &T,
    fds: &[BorrowedFd<'_>],
) -> Result<(), IpcError> {
    let payload = serde_json::to_vec(msg)?;
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);

    // Each batch of fds rides on its own slice of the frame.
    let batches: Vec<&[BorrowedFd<'_>]> = fds.chunks(FDS_PER_SEND).collect();
    let step = frame.len().div_ceil(batches.len().max(1));
    let mut off = 0;
    for batch in &batches {
        let end = (off + step).min(frame.len());
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(batch.len()))];
        let mut cmsg = SendAncillaryBuffer::new(&mut space);
        cmsg.push(SendAncillaryMessage::ScmRights(batch));
        let n = rustix::net::sendmsg(
            sock,
            &[IoSlice::new(&frame[off..end])],
            &mut cmsg,
            SendFlags::NOSIGNAL,
        )
        .map_err(std::io::Error::from)?;
        off += n;
    }
    while off < frame.len() {
        let n = rustix::net::send(sock, &frame[off..], SendFlags::NOSIGNAL)
            .map_err(std::io::Error::from)?;
        off += n;
    }
    Ok(())
}

/// Receives one message and the fds that came with it. Blocking.
pub fn recv<T: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
) -> Result<(T, Vec<OwnedFd>), IpcError> {
    let mut fds = Vec::new();
    let mut header = [0u8; 4];
    read_exact(sock, &mut header, &mut fds)?;
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(IpcError::TooLarge(len));
    }
    let mut payload = vec![0u8; len];
    read_exact(sock, &mut payload, &mut fds)?;
    Ok((serde_json::from_slice(&payload)?, fds))
}

fn read_exact(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<(), IpcError> {
    let mut off = 0;
    while off < buf.len() {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253))];
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let got = match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut buf[off..])],
            &mut cmsg,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(got) => got,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(std::io::Error::from(e).into()),
        };
        for msg in cmsg.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = msg {
                fds.extend(received);
            }
        }
        if got.flags.contains(ReturnFlags::CTRUNC) {
            return Err(IpcError::FdsTruncated);
        }
        if got.bytes == 0 {
            return Err(IpcError::Closed);
        }
        off += got.bytes;
    }
    Ok(())
}

/// A connected pair of stream sockets, both close-on-exec.
pub fn pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Borrows a list of owned fds for [`send`].
pub fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(AsFd::as_fd).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn frames_carry_many_fds_in_order() {
        let (a, b) = pair().unwrap();
        let mut files = Vec::new();
        for i in 0..450 {
            let mut f = tempfile::tempfile().unwrap();
            write!(f, "{i}").unwrap();
            files.push(OwnedFd::from(f));
        }
        let msg = ToFront::Logs {
            tenants: (0..450).map(|i| format!("t{i}")).collect(),
        };
        let (got, fds) = std::thread::scope(|s| {
            s.spawn(|| {
                send(a.as_fd(), &msg, &borrow_all(&files)).unwrap();
            });
            recv::<ToFront>(b.as_fd()).unwrap()
        });
        drop(a);
        let ToFront::Logs { tenants } = got else {
            panic!("wrong message")
        };
        assert_eq!(tenants.len(), 450);
        assert_eq!(fds.len(), 450);
        for (i, fd) in fds.into_iter().enumerate() {
            let mut f = std::fs::File::from(fd);
            f.rewind().unwrap();
            let mut s = String::new();
            f.read_to_string(&mut s).unwrap();
            assert_eq!(s, i.to_string());
        }
        assert!(matches!(recv::<ToFront>(b.as_fd()), Err(IpcError::Closed)));
    }
}
