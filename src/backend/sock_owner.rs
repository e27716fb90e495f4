//! Who owns the app at the other end of a backend connection.
//!
//! DESIGN.md "App sockets": berth creates the listening socket for every app it
//! can, but an HTTP app that can only bind its own (`PORT`, `BERTH_SOCKET`)
//! listens on a socket berth did not make. Any tenant can bind a free loopback
//! port, so while such an app is down or still starting, another tenant could
//! listen on its port and receive its visitors' cookies, passwords and uploads.
//! Before a new backend connection carries a request, the caller checks here
//! that the socket at the other end belongs to the tenant's uid, and refuses to
//! route otherwise (logged, 502).
//!
//! Request flow position: handler → app route → backend connect → here → the
//! first request bytes.
//!
//! Two choices matter:
//! - The check is made on the established connection, never on the listener
//!   before connecting. "Who listens on port P?" followed by a connect leaves a
//!   window in which the port can change hands; the server side of an
//!   established connection cannot, and it is what will receive the bytes.
//! - A TCP connection is looked up by its exact 4-tuple with one
//!   `NETLINK_SOCK_DIAG` request, which the kernel answers from its hash of
//!   established sockets. `/proc/net/tcp` (or a sock_diag dump) lists every
//!   socket on the host: O(all sockets) per check, on exactly the kind of
//!   machine that has many. The lookup needs no privilege, so it works from the
//!   unprivileged front end.
//!
//! A Unix stream socket answers the same question itself: `SO_PEERCRED` on our
//! end reports the credentials the listener had when it called `listen()`.
//!
//! What the kernel calls the owner of a TCP socket is `sk_uid`: the fsuid of the
//! process that created the listening socket, inherited by every socket it
//! accepts. A socket created by someone else and handed to the app (socket
//! activation) reports its creator, so this check is for apps that bind their
//! own socket. The app must be in berth's network namespace.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::BorrowedFd;
use std::time::Duration;

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{
    AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, recvfrom, sendto, socket_with,
    sockopt,
};

// Wire layout, from linux/netlink.h, linux/sock_diag.h and linux/inet_diag.h
// (checked against the installed headers with offsetof/sizeof). Integers are in
// host byte order except ports and addresses, which are big-endian.

/// `sizeof(struct nlmsghdr)`: u32 len, u16 type, u16 flags, u32 seq, u32 pid.
const NLMSG_HDR_LEN: usize = 16;
/// `sizeof(struct inet_diag_sockid)`: be16 sport, be16 dport, be32 src[4],
/// be32 dst[4], u32 if, u32 cookie[2].
const SOCKID_LEN: usize = 48;
/// `sizeof(struct inet_diag_req_v2)`: u8 family, u8 protocol, u8 ext, u8 pad,
/// u32 states, then the sockid.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// Offset of the sockid in `struct inet_diag_msg` (after u8 family, state,
/// timer, retrans).
const MSG_SOCKID: usize = 4;
/// Offset of `idiag_uid` in `struct inet_diag_msg` (after the sockid come u32
/// expires, rqueue, wqueue).
const MSG_UID: usize = MSG_SOCKID + SOCKID_LEN + 12;
/// `sizeof(struct inet_diag_msg)`: `idiag_inode` follows the uid.
const MSG_LEN: usize = MSG_UID + 8;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
/// `INET_DIAG_NOCOOKIE`, in both cookie words: match by address, not cookie.
const NO_COOKIE: u32 = !0;
/// One socket per call, one request per socket: the sequence number only has to
/// match between the two.
const SEQ: u32 = 1;

// TCP states (include/net/tcp_states.h).
const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_RECV: u8 = 3;
const TCP_FIN_WAIT1: u8 = 4;
const TCP_FIN_WAIT2: u8 = 5;
const TCP_CLOSE_WAIT: u8 = 8;
const TCP_LAST_ACK: u8 = 9;
const TCP_CLOSING: u8 = 11;

/// The kernel answers before `sendto` returns; the timeout only guards against
/// a reply that never comes.
const RECV_TIMEOUT: Duration = Duration::from_secs(1);

/// Big enough for the reply and any attributes the kernel appends unasked
/// (a few dozen bytes today); only the fixed part is read.
const REPLY_BUF: usize = 1024;

/// The uid owning the server side of an established TCP connection `local` →
/// `remote`, as seen from our side: `local` is our socket's address, `remote`
/// the app's listening address (`TcpStream::local_addr`, `peer_addr`).
///
/// One exact `SOCK_DIAG_BY_FAMILY` lookup (no dump): the kernel finds the
/// accepted socket by its 4-tuple (source `remote`, destination `local`) and
/// reports its `idiag_uid`, which an accepted socket inherits from its
/// listener. IPv4, IPv6 and IPv4-mapped IPv6 addresses are accepted.
///
/// `Ok(None)` when no such connection exists (any more): the server side is
/// gone, closed, or in TIME_WAIT, which has no owner.
///
/// An error of kind [`io::ErrorKind::NotConnected`] when the server side exists
/// but is still a half-open request (SYN_RECV; the kernel reports uid 0 for
/// those). On loopback that happens when the app's accept queue was full when
/// our final ACK arrived; the owner is not known until the kernel completes the
/// connection, so the caller should treat it as unverified.
pub fn tcp_server_uid(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<u32>> {
    let query = Query::new(local, remote)?;
    let request = query.request();

    let fd = socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::SOCK_DIAG),
    )?;
    sockopt::set_socket_timeout(&fd, sockopt::Timeout::Recv, Some(RECV_TIMEOUT))?;
    let kernel = SocketAddrNetlink::new(0, 0);
    let sent = sendto(&fd, &request, SendFlags::empty(), &kernel)?;
    if sent != request.len() {
        return Err(invalid(format!(
            "sock_diag: sent {sent} of {} request bytes",
            request.len()
        )));
    }

    let mut buf = [MaybeUninit::<u8>::uninit(); REPLY_BUF];
    loop {
        // TRUNC: learn the datagram's full length even if it did not fit.
        match recvfrom(&fd, &mut buf, RecvFlags::TRUNC) {
            Ok(((reply, _), full_len, from)) => {
                // Only the kernel (port id 0) answers; anything else is not ours.
                let from_kernel = from
                    .and_then(|addr| SocketAddrNetlink::try_from(addr).ok())
                    .is_some_and(|addr| addr.pid() == 0);
                if from_kernel {
                    return query.parse_reply(reply, full_len);
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "sock_diag: no reply from the kernel",
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The uid of the process that bound and listened on the Unix socket at the
/// other end of the connected stream `fd`: `SO_PEERCRED`, which for a connected
/// stream reports the listener's credentials at `listen()` time.
pub fn unix_peer_uid(fd: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(sockopt::socket_peercred(fd)?.uid.as_raw())
}

/// One lookup: the server side of the connection, described from its own point
/// of view (its source is the app's address, its destination ours).
struct Query {
    family: u8,
    server: (IpAddr, u16),
    client: (IpAddr, u16),
}

impl Query {
    fn new(local: SocketAddr, remote: SocketAddr) -> io::Result<Query> {
        // An IPv4-mapped address names an IPv4 connection, which the kernel
        // finds by its IPv4 addresses whatever the family of the sockets.
        let server = (remote.ip().to_canonical(), remote.port());
        let client = (local.ip().to_canonical(), local.port());
        let family = match (server.0, client.0) {
            (IpAddr::V4(_), IpAddr::V4(_)) => AF_INET,
            (IpAddr::V6(_), IpAddr::V6(_)) => AF_INET6,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "no TCP connection joins {local} and {remote}: address families differ"
                    ),
                ));
            }
        };
        Ok(Query {
            family,
            server,
            client,
        })
    }

    /// `struct nlmsghdr` followed by `struct inet_diag_req_v2`.
    fn request(&self) -> [u8; NLMSG_HDR_LEN + REQ_LEN] {
        let mut req = [0u8; NLMSG_HDR_LEN + REQ_LEN];
        let len = req.len() as u32;
        req[0..4].copy_from_slice(&len.to_ne_bytes());
        req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        req[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        req[8..12].copy_from_slice(&SEQ.to_ne_bytes());
        // nlmsg_pid (12..16) stays 0: the kernel fills in our port id.
        let body = &mut req[NLMSG_HDR_LEN..];
        body[0] = self.family;
        body[1] = IPPROTO_TCP;
        // idiag_ext (no extensions) and pad stay 0. An exact lookup ignores the
        // state filter; the reply's state is checked instead.
        body[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
        let id = &mut body[8..8 + SOCKID_LEN];
        id[0..2].copy_from_slice(&self.server.1.to_be_bytes());
        id[2..4].copy_from_slice(&self.client.1.to_be_bytes());
        put_addr(&mut id[4..20], self.server.0);
        put_addr(&mut id[20..36], self.client.0);
        // idiag_if (36..40) stays 0: any interface.
        id[40..44].copy_from_slice(&NO_COOKIE.to_ne_bytes());
        id[44..48].copy_from_slice(&NO_COOKIE.to_ne_bytes());
        req
    }

    /// Reads the kernel's answer: `reply` is what was received, `full_len` the
    /// datagram's length (larger if it was truncated).
    fn parse_reply(&self, reply: &[u8], full_len: usize) -> io::Result<Option<u32>> {
        let Some(hdr) = reply.get(..NLMSG_HDR_LEN) else {
            return Err(invalid(format!(
                "sock_diag: reply of {} bytes is shorter than a netlink header",
                reply.len()
            )));
        };
        let msg_len = ne_u32(hdr, 0) as usize;
        let msg_type = u16::from_ne_bytes([hdr[4], hdr[5]]);
        let seq = ne_u32(hdr, 8);
        if msg_len < NLMSG_HDR_LEN || msg_len > full_len {
            return Err(invalid(format!(
                "sock_diag: netlink message length {msg_len} in a datagram of {full_len} bytes"
            )));
        }
        if seq != SEQ {
            return Err(invalid(format!(
                "sock_diag: reply to sequence number {seq}, expected {SEQ}"
            )));
        }
        let body = &reply[NLMSG_HDR_LEN..msg_len.min(reply.len())];
        match msg_type {
            NLMSG_ERROR => {
                // struct nlmsgerr: int error, then the request's header.
                let Some(error) = body.get(..4) else {
                    return Err(invalid(format!(
                        "sock_diag: error message of {} bytes has no error code",
                        body.len()
                    )));
                };
                let errno = i32::from_ne_bytes([error[0], error[1], error[2], error[3]]);
                match errno.checked_neg() {
                    Some(libc::ENOENT) => Ok(None),
                    Some(code) if code > 0 => Err(io::Error::from_raw_os_error(code)),
                    _ => Err(invalid(format!(
                        "sock_diag: error message with code {errno}, expected a negative errno"
                    ))),
                }
            }
            SOCK_DIAG_BY_FAMILY => self.parse_diag_msg(body),
            other => Err(invalid(format!(
                "sock_diag: unexpected netlink message type {other}"
            ))),
        }
    }

    /// Reads a `struct inet_diag_msg`.
    fn parse_diag_msg(&self, msg: &[u8]) -> io::Result<Option<u32>> {
        if msg.len() < MSG_LEN {
            return Err(invalid(format!(
                "sock_diag: inet_diag_msg of {} bytes, expected at least {MSG_LEN}",
                msg.len()
            )));
        }
        let family = msg[0];
        let state = msg[1];
        let id = &msg[MSG_SOCKID..MSG_SOCKID + SOCKID_LEN];
        let uid = ne_u32(msg, MSG_UID);

        // With no established socket for the 4-tuple, the kernel's lookup falls
        // back to a listener on the app's port, and request and TIME_WAIT
        // sockets report uid 0. Only a full, connected socket has an owner.
        match state {
            TCP_ESTABLISHED | TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_CLOSE_WAIT | TCP_LAST_ACK
            | TCP_CLOSING => {}
            TCP_SYN_RECV => {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "sock_diag: the server side of the connection is still in SYN_RECV \
                     (not yet accepted by the kernel); its owner is not known",
                ));
            }
            _ => return Ok(None),
        }

        let server = (
            get_addr(family, &id[4..20])?,
            u16::from_be_bytes([id[0], id[1]]),
        );
        let client = (
            get_addr(family, &id[20..36])?,
            u16::from_be_bytes([id[2], id[3]]),
        );
        if server != self.server || client != self.client {
            return Err(invalid(format!(
                "sock_diag: asked for {} -> {}, the kernel answered for {} -> {}",
                SocketAddr::from(self.server),
                SocketAddr::from(self.client),
                SocketAddr::from(server),
                SocketAddr::from(client),
            )));
        }
        Ok(Some(uid))
    }
}

/// Writes an address into a 16-byte `__be32[4]` field: IPv4 in the first word.
fn put_addr(field: &mut [u8], ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => field[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => field.copy_from_slice(&v6.octets()),
    }
}

/// Reads a 16-byte `__be32[4]` address field of a socket of `family`.
fn get_addr(family: u8, field: &[u8]) -> io::Result<IpAddr> {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(field);
    match family {
        AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(
            octets[0], octets[1], octets[2], octets[3],
        ))),
        // A dual-stack socket that accepted an IPv4 connection reports the
        // IPv4-mapped form.
        AF_INET6 => Ok(Ipv6Addr::from(octets).to_canonical()),
        other => Err(invalid(format!(
            "sock_diag: reply for address family {other}, expected AF_INET or AF_INET6"
        ))),
    }
}

/// The native-endian u32 at `at`; callers have checked the length.
fn ne_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::process::{Child, ChildStdout, Command, Stdio};
    use std::time::Instant;

    /// The uid the other-tenant tests run their listener as (nobody).
    const OTHER_UID: u32 = 65534;

    fn euid() -> u32 {
        rustix::process::geteuid().as_raw()
    }

    /// Connects to `listener`, accepts, and asks who owns the accepted side.
    fn own_connection(listener: &TcpListener, connect_to: SocketAddr) -> Option<u32> {
        let stream = TcpStream::connect(connect_to).unwrap();
        // Accepting first makes sure the kernel has completed the server side.
        let (_accepted, _) = listener.accept().unwrap();
        tcp_server_uid(stream.local_addr().unwrap(), stream.peer_addr().unwrap()).unwrap()
    }

    #[test]
    fn tcp_v4_reports_our_uid() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(own_connection(&listener, addr), Some(euid()));
    }

    #[test]
    fn tcp_v6_reports_our_uid() {
        let listener = TcpListener::bind("[::1]:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(own_connection(&listener, addr), Some(euid()));
    }

    #[test]
    fn tcp_v4_mapped_reports_our_uid() {
        // A dual-stack listener accepting IPv4, and a client naming the
        // connection in IPv4-mapped form.
        let listener = TcpListener::bind("[::]:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        assert_eq!(own_connection(&listener, v4), Some(euid()));
        let mapped = SocketAddr::from((Ipv4Addr::LOCALHOST.to_ipv6_mapped(), port));
        assert_eq!(own_connection(&listener, mapped), Some(euid()));
    }

    #[test]
    fn tcp_other_uid_is_reported() {
        if euid() != 0 {
            eprintln!("tcp_other_uid_is_reported: only exercised as root (needs setpriv)");
            return;
        }
        let mut app = Nobody::spawn(TCP_APP, None);
        let port: u16 = app.line().parse().unwrap();
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert_eq!(app.line(), "accepted");
        let uid = tcp_server_uid(stream.local_addr().unwrap(), stream.peer_addr().unwrap());
        assert_eq!(uid.unwrap(), Some(OTHER_UID));
    }

    #[test]
    fn tcp_time_wait_has_no_owner() {
        // Regression guard: the kernel reports uid 0 for a TIME_WAIT socket,
        // which must not read as "owned by root".
        if euid() != 0 {
            eprintln!("tcp_time_wait_has_no_owner: only exercised as root (needs setpriv)");
            return;
        }
        let mut app = Nobody::spawn(TCP_APP, Some("close"));
        let port: u16 = app.line().parse().unwrap();
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (local, remote) = (stream.local_addr().unwrap(), stream.peer_addr().unwrap());
        assert_eq!(app.line(), "accepted");
        // The app closed first: once we close too, its side goes to TIME_WAIT.
        assert_eq!(stream.read(&mut [0u8; 1]).unwrap(), 0);
        drop(stream);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match tcp_server_uid(local, remote).unwrap() {
                None => break,
                // FIN_WAIT2 until our FIN arrives.
                Some(OTHER_UID) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                other => panic!("server side after close: {other:?}"),
            }
        }
    }

    #[test]
    fn tcp_unknown_connection_is_none() {
        // Nothing listens on the app's port: the kernel finds nothing.
        let free = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let local = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
        assert_eq!(tcp_server_uid(local, free).unwrap(), None);

        // Something listens there, but this connection does not exist: the
        // kernel falls back to the listener, which is not an answer.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let remote = listener.local_addr().unwrap();
        assert_eq!(tcp_server_uid(local, remote).unwrap(), None);
        let listener6 = TcpListener::bind("[::1]:0").unwrap();
        let remote6 = listener6.local_addr().unwrap();
        let local6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 1));
        assert_eq!(tcp_server_uid(local6, remote6).unwrap(), None);
    }

    #[test]
    fn tcp_mixed_families_are_rejected() {
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 2));
        let err = tcp_server_uid(v4, v6).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn unix_reports_our_uid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let stream = UnixStream::connect(&path).unwrap();
        assert_eq!(unix_peer_uid(stream.as_fd()).unwrap(), euid());
    }

    #[test]
    fn unix_other_uid_is_reported() {
        if euid() != 0 {
            eprintln!("unix_other_uid_is_reported: only exercised as root (needs setpriv)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let path = dir.path().join("app.sock");
        let mut app = Nobody::spawn(UNIX_APP, Some(path.to_str().unwrap()));
        assert_eq!(app.line(), "listening");
        let stream = UnixStream::connect(&path).unwrap();
        assert_eq!(unix_peer_uid(stream.as_fd()).unwrap(), OTHER_UID);
    }

    /// Listens on 127.0.0.1, prints its port, accepts one connection, says so,
    /// and keeps it open (or closes it, with the argument "close").
    const TCP_APP: &str = r#"
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
if sys.argv[1:] == ["close"]:
    c.close()
print("accepted", flush=True)
time.sleep(60)
"#;

    /// Listens on the Unix socket path given as argument, says so, and holds
    /// one connection.
    const UNIX_APP: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
time.sleep(60)
"#;

    /// A Python app running as `OTHER_UID`, killed and reaped when dropped.
    struct Nobody {
        child: Child,
        stdout: BufReader<ChildStdout>,
    }

    impl Nobody {
        fn spawn(script: &str, arg: Option<&str>) -> Nobody {
            let mut cmd = Command::new("setpriv");
            cmd.arg(format!("--reuid={OTHER_UID}"))
                .arg(format!("--regid={OTHER_UID}"))
                .arg("--clear-groups")
                // The system Python: a per-user one (pyenv under /root) is not
                // reachable for nobody.
                .args(["/usr/bin/python3", "-c", script])
                .args(arg)
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .current_dir("/")
                .stdin(Stdio::null())
                .stdout(Stdio::piped());
            let mut child = cmd.spawn().expect("spawn setpriv python3");
            let stdout = BufReader::new(child.stdout.take().unwrap());
            Nobody { child, stdout }
        }

        fn line(&mut self) -> String {
            let mut line = String::new();
            self.stdout.read_line(&mut line).unwrap();
            assert!(!line.is_empty(), "the app exited early (see its stderr)");
            line.trim_end().to_owned()
        }
    }

    impl Drop for Nobody {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// A reply as the kernel would send it for `query`.
    fn diag_reply(query: &Query, state: u8, uid: u32) -> Vec<u8> {
        let req = query.request();
        let mut msg = vec![0u8; NLMSG_HDR_LEN + MSG_LEN + 8];
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        msg[8..12].copy_from_slice(&SEQ.to_ne_bytes());
        let body = &mut msg[NLMSG_HDR_LEN..];
        body[0] = query.family;
        body[1] = state;
        // The sockid is echoed as asked for.
        body[MSG_SOCKID..MSG_SOCKID + SOCKID_LEN].copy_from_slice(&req[NLMSG_HDR_LEN + 8..]);
        body[MSG_UID..MSG_UID + 4].copy_from_slice(&uid.to_ne_bytes());
        msg
    }

    fn error_reply(errno: i32) -> Vec<u8> {
        let mut msg = vec![0u8; NLMSG_HDR_LEN + 4 + NLMSG_HDR_LEN];
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        msg[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        msg[8..12].copy_from_slice(&SEQ.to_ne_bytes());
        msg[16..20].copy_from_slice(&(-errno).to_ne_bytes());
        msg
    }

    fn query() -> Query {
        Query::new(
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:8000".parse().unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn request_layout() {
        let req = query().request();
        assert_eq!(req.len(), 72);
        assert_eq!(&req[0..4], &72u32.to_ne_bytes());
        assert_eq!(&req[4..6], &20u16.to_ne_bytes());
        assert_eq!(&req[6..8], &1u16.to_ne_bytes());
        assert_eq!(&req[16..20], &[AF_INET, IPPROTO_TCP, 0, 0]);
        // The server side's view: sport is the app's port, src its address.
        assert_eq!(&req[24..28], &[0x1f, 0x40, 0x9c, 0x40]);
        assert_eq!(&req[28..32], &[127, 0, 0, 1]);
        assert_eq!(&req[44..48], &[127, 0, 0, 1]);
        assert_eq!(&req[64..72], &[0xff; 8]);
    }

    #[test]
    fn parses_replies() {
        let q = query();
        let ok = diag_reply(&q, TCP_ESTABLISHED, 1234);
        assert_eq!(q.parse_reply(&ok, ok.len()).unwrap(), Some(1234));
        // Truncated attributes do not matter, the fixed part is there.
        assert_eq!(
            q.parse_reply(&ok[..NLMSG_HDR_LEN + MSG_LEN], ok.len())
                .unwrap(),
            Some(1234)
        );

        let listen = diag_reply(&q, 10, 1234);
        assert_eq!(q.parse_reply(&listen, listen.len()).unwrap(), None);
        let time_wait = diag_reply(&q, 6, 0);
        assert_eq!(q.parse_reply(&time_wait, time_wait.len()).unwrap(), None);
        let syn_recv = diag_reply(&q, TCP_SYN_RECV, 0);
        let err = q.parse_reply(&syn_recv, syn_recv.len()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotConnected);

        let other = Query::new(
            "127.0.0.1:40001".parse().unwrap(),
            "127.0.0.1:8000".parse().unwrap(),
        )
        .unwrap();
        let err = other.parse_reply(&ok, ok.len()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let enoent = error_reply(libc::ENOENT);
        assert_eq!(q.parse_reply(&enoent, enoent.len()).unwrap(), None);
        let eacces = error_reply(libc::EACCES);
        let err = q.parse_reply(&eacces, eacces.len()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES));
        let ack = error_reply(0);
        assert!(q.parse_reply(&ack, ack.len()).is_err());
    }

    #[test]
    fn odd_replies_are_errors_not_panics() {
        let q = query();
        let ok = diag_reply(&q, TCP_ESTABLISHED, 1234);
        for cut in 0..NLMSG_HDR_LEN + MSG_LEN {
            assert!(q.parse_reply(&ok[..cut], ok.len()).is_err(), "cut at {cut}");
            assert!(q.parse_reply(&ok[..cut], cut).is_err(), "cut at {cut}");
        }
        let enoent = error_reply(libc::ENOENT);
        for cut in 0..NLMSG_HDR_LEN + 4 {
            assert!(q.parse_reply(&enoent[..cut], cut).is_err(), "cut at {cut}");
        }

        let mut bad_len = ok.clone();
        bad_len[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(q.parse_reply(&bad_len, bad_len.len()).is_err());
        bad_len[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(q.parse_reply(&bad_len, bad_len.len()).is_err());

        let mut bad_seq = ok.clone();
        bad_seq[8..12].copy_from_slice(&7u32.to_ne_bytes());
        assert!(q.parse_reply(&bad_seq, bad_seq.len()).is_err());

        let mut bad_type = ok.clone();
        bad_type[4..6].copy_from_slice(&3u16.to_ne_bytes());
        assert!(q.parse_reply(&bad_type, bad_type.len()).is_err());

        let mut bad_family = ok.clone();
        bad_family[NLMSG_HDR_LEN] = 1;
        assert!(q.parse_reply(&bad_family, bad_family.len()).is_err());

        let mut min_errno = enoent.clone();
        min_errno[16..20].copy_from_slice(&i32::MIN.to_ne_bytes());
        assert!(q.parse_reply(&min_errno, min_errno.len()).is_err());
    }
}
