//! Accepting connections: the first step of the request flow.
//!
//! Each accepted socket holds a permit of the connection cap, goes through the TLS
//! handshake (bounded by `header_timeout`) on TLS listeners, and is served by
//! hyper's HTTP/1.1 + HTTP/2 connection (h2c by prior knowledge on plain
//! listeners, ALPN on TLS). After ALPN `h2` the connection is HTTP/2 only: a
//! client that does not start with the HTTP/2 preface gets GOAWAY(PROTOCOL_ERROR)
//! ([`expect_preface`]), never an HTTP/1.1 answer. A TLS client that sent no SNI
//! got the default site's certificate and is treated as if it had named that
//! site.
//!
//! A watchdog closes connections that sit without a
//! request in flight: longer than `header_timeout` before the first request (a
//! client that connects and sends nothing, or trickles header bytes), longer than
//! `keepalive_timeout` after one (idle, or sending the next head slowly). It
//! works the same for both protocols, so hyper's own HTTP/1.1
//! `header_read_timeout`, which would also cut idle keep-alive connections at
//! `header_timeout`, is not used. With a request in flight, a client that
//! accepts no response bytes for `send_timeout` is dropped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tracing::{debug, warn};

use super::Shared;
use super::h1::Rewind;
use super::handler;
use crate::config::ClientLimits;
use crate::ipc::ListenerSpec;

/// What the handler needs to know about the connection a request came on.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// Our address on this connection (SERVER_ADDR, SERVER_PORT).
    pub local: SocketAddr,
    /// The peer's IP address as text, for the access log.
    pub peer_ip: Arc<str>,
    pub tls: bool,
    /// The SNI name of a TLS connection, lowercased.
    pub sni: Option<String>,
}

/// Turns a listening socket fd from the supervisor into a tokio listener.
pub fn listener(fd: OwnedFd) -> std::io::Result<TcpListener> {
    let std = std::net::TcpListener::from(fd);
    std.set_nonblocking(true)?;
    TcpListener::from_std(std)
}

pub async fn accept_loop(listener: TcpListener, spec: ListenerSpec, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off instead of spinning.
                warn!("accept on {}: {e}", spec.addr);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // The permit is taken after accept, so idle listeners hold none; at the
        // cap this loop stops accepting and further clients wait in the backlog.
        let Ok(permit) = shared.conn_limit.clone().acquire_owned().await else {
            return;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            connection(stream, peer, spec, shared).await;
            drop(permit);
        });
    }
}

async fn connection(stream: TcpStream, peer: SocketAddr, spec: ListenerSpec, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let limits = shared.current.load().limits.clone();
    let local = stream.local_addr().unwrap_or(spec.addr);
    if !spec.tls {
        let info = Arc::new(ConnInfo {
            peer,
            local,
            peer_ip: peer.ip().to_string().into(),
            tls: false,
            sni: None,
        });
        return super::h1::serve(stream, info, limits, shared).await;
    }
    let generation = shared.current.load_full();
    let Some(acceptor) = generation.tls.clone() else {
        debug!("{peer}: TLS connection but no site has a certificate");
        return;
    };
    let tls = match timeout(limits.header_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!("{peer}: TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            debug!("{peer}: TLS handshake timed out");
            return;
        }
    };
    let session = tls.get_ref().1;
    let h2 = session.alpn_protocol() == Some(b"h2".as_slice());
    // Without SNI the client was shown the default site's certificate: the
    // connection belongs to that site as if the client had named it.
    let sni = match session.server_name() {
        Some(name) => Some(name.to_ascii_lowercase()),
        None => generation.default_tls_host.clone(),
    };
    drop(generation);
    let info = Arc::new(ConnInfo {
        peer,
        local,
        peer_ip: peer.ip().to_string().into(),
        tls: true,
        sni,
    });
    if !h2 {
        return serve(tls, info, &limits, shared).await;
    }
    match expect_preface(tls, limits.header_timeout).await {
        Ok(tls) => serve(tls, info, &limits, shared).await,
        Err(why) => debug!("{peer}: ALPN h2, but {why}; closed"),
    }
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The answer to a client that should have sent [`H2_PREFACE`] and sent
/// something else: the server's preface (an empty SETTINGS frame, which must be
/// the first frame a server sends) and GOAWAY(last stream 0, PROTOCOL_ERROR),
/// RFC 9113 §3.4 and §6.8.
const REFUSE_PREFACE: [u8; 26] = [
    0, 0, 0, 0x4, 0, 0, 0, 0, 0, // SETTINGS: length 0, no flags, stream 0
    0, 0, 8, 0x7, 0, 0, 0, 0, 0, // GOAWAY: length 8, no flags, stream 0
    0, 0, 0, 0, // last stream id
    0, 0, 0, 1, // PROTOCOL_ERROR
];

/// How long a refused client's remaining bytes are read and dropped before the
/// connection is closed.
const LINGER: Duration = Duration::from_secs(1);

/// Reads the HTTP/2 preface from a connection that must speak HTTP/2 (ALPN
/// `h2`) and returns the connection with the preface put back for hyper, which
/// then can only take it as HTTP/2. A client that sends anything else is
/// refused ([`refuse_h2`]) at its first wrong byte.
async fn expect_preface<I>(mut io: I, within: Duration) -> Result<Rewind<I>, &'static str>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = Instant::now() + within;
    let mut got = [0u8; H2_PREFACE.len()];
    let mut n = 0;
    while n < got.len() {
        let read = match timeout_at(deadline, io.read(&mut got[n..])).await {
            Ok(Ok(0)) => return Err("the client closed before its preface"),
            Ok(Ok(read)) => read,
            Ok(Err(_)) => return Err("reading the preface failed"),
            Err(_) => return Err("no preface within header_timeout"),
        };
        if got[n..n + read] != H2_PREFACE[n..n + read] {
            refuse_h2(io).await;
            return Err("it sent no HTTP/2 preface");
        }
        n += read;
    }
    Ok(Rewind::new(Bytes::from_static(H2_PREFACE), io))
}

/// Refuses a client that should have started with the HTTP/2 preface: sends
/// [`REFUSE_PREFACE`] and closes. The close lingers ([`LINGER`]), reading and
/// dropping what the client still sends: closing a socket with unread bytes
/// resets the connection, and a reset can destroy the GOAWAY before the client
/// reads it.
pub async fn refuse_h2<I>(mut io: I)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    if io.write_all(&REFUSE_PREFACE).await.is_err() || io.flush().await.is_err() {
        return;
    }
    let _ = io.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = timeout(LINGER, async {
        while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Requests in flight, when the connection last became idle, and since when a
/// write to the client has been blocked.
pub struct Activity {
    base: Instant,
    in_flight: AtomicUsize,
    idle_since_ms: AtomicU64,
    /// Milliseconds since `base` at which a write first returned Pending, or
    /// `NOT_STALLED`.
    stalled_since_ms: AtomicU64,
    served: AtomicBool,
    /// Wakes the watchdog when a request starts or its response finishes, so it
    /// can move its deadline.
    changed: Notify,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            base: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            stalled_since_ms: AtomicU64::new(NOT_STALLED),
            served: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    /// A request started.
    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        // The watchdog now watches writes instead of idleness.
        self.changed.notify_one();
    }

    /// A response finished (sent or abandoned).
    pub fn end(&self) {
        let now = self.base.elapsed().as_millis() as u64;
        self.idle_since_ms.store(now, Ordering::Release);
        self.served.store(true, Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.changed.notify_one();
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Notes whether the last write could make progress.
    fn write_progress(&self, progressed: bool) {
        if progressed {
            self.stalled_since_ms.store(NOT_STALLED, Ordering::Relaxed);
        } else if self.stalled_since_ms.load(Ordering::Relaxed) == NOT_STALLED {
            self.stalled_since_ms
                .store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// Whether writes to the client have been blocked for `send_timeout`.
    fn send_stalled(&self, limits: &ClientLimits) -> bool {
        let since = self.stalled_since_ms.load(Ordering::Relaxed);
        since != NOT_STALLED
            && self.now_ms().saturating_sub(since) >= limits.send_timeout.as_millis() as u64
    }

    /// When the watchdog must look again: when the connection will have been
    /// idle too long if it stays idle or, with a request in flight, when its
    /// writes would have been stalled for `send_timeout`.
    fn deadline(&self, limits: &ClientLimits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            let since = self.stalled_since_ms.load(Ordering::Relaxed);
            let from = if since == NOT_STALLED {
                Instant::now()
            } else {
                self.base + Duration::from_millis(since)
            };
            return Some(from + limits.send_timeout);
        }
        let idle_since =
            self.base + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        let allowed = if self.served.load(Ordering::Acquire) {
            limits.keepalive_timeout
        } else {
            limits.header_timeout
        };
        Some(idle_since + allowed)
    }
}

const NOT_STALLED: u64 = u64::MAX;

/// The client's stream, reporting write progress to the watchdog.
struct Watched<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.activity.write_progress(polled.is_ready());
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.write_progress(polled.is_ready());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        // A flush that completes says nothing of the client (a TCP flush always
        // does); only bytes accepted by a write count as progress.
        if polled.is_pending() {
            self.activity.write_progress(false);
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves a connection with hyper (HTTP/1.1 and HTTP/2), under the watchdog.
pub async fn serve<I>(io: I, info: Arc<ConnInfo>, limits: &ClientLimits, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let generation = shared.current.load_full();
    let io = TokioIo::new(Watched {
        inner: io,
        activity: activity.clone(),
    });
    let svc = {
        let shared = shared.clone();
        let info = info.clone();
        let activity = activity.clone();
        service_fn(move |req| {
            let shared = shared.clone();
            let info = info.clone();
            let activity = activity.clone();
            async move { Ok::<_, Infallible>(handler::handle(req, &info, &shared, activity).await) }
        })
    };
    let mut conn = pin!(generation.http.serve_connection_with_upgrades(io, svc));
    let mut drain = shared.drain.clone();
    // Once shut down gracefully, the connection gets until this instant to finish.
    let mut closing: Option<Instant> = None;
    if *drain.borrow() {
        conn.as_mut().graceful_shutdown();
        closing = Some(Instant::now() + limits.drain_timeout);
    }
    loop {
        // `changed` wakes us when a request starts or ends, to recompute this.
        let wake = match closing {
            Some(until) => Some(until),
            None => activity.deadline(limits),
        };
        let sleep = async {
            match wake {
                Some(at) => sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    debug!("{}: connection ended: {e}", info.peer);
                }
                return;
            }
            _ = activity.changed.notified() => {}
            _ = sleep => {
                if closing.is_some() {
                    debug!("{}: did not finish after shutdown; closing", info.peer);
                    return;
                }
                if activity.send_stalled(limits) {
                    debug!("{}: accepted no response bytes for {:?}; closing", info.peer, limits.send_timeout);
                    return;
                }
                if activity.deadline(limits).is_some_and(|at| at <= Instant::now()) {
                    debug!("{}: idle; closing", info.peer);
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + limits.header_timeout);
                }
            }
            _ = drain.changed(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + limits.drain_timeout);
            }
        }
    }
}
