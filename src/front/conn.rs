//! Accepting connections: the first step of the request flow.
//!
//! Each accepted socket holds a permit of the connection cap, goes through the TLS
//! handshake (bounded by `header_timeout`) on TLS listeners, and is served by
//! hyper's HTTP/1.1 + HTTP/2 connection (h2c by prior knowledge on plain
//! listeners, ALPN on TLS). A watchdog closes connections that sit without a
//! request in flight: longer than `header_timeout` before the first request (a
//! client that connects and sends nothing, or trickles header bytes), longer than
//! `keepalive_timeout` after one (idle, or sending the next head slowly). It
//! works the same for both protocols, so hyper's own HTTP/1.1
//! `header_read_timeout`, which would also cut idle keep-alive connections at
//! `header_timeout`, is not used.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, warn};

use super::Shared;
use super::handler;
use crate::config::ClientLimits;
use crate::ipc::ListenerSpec;

/// What the handler needs to know about the connection a request came on.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
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
    if !spec.tls {
        let info = Arc::new(ConnInfo {
            peer,
            peer_ip: peer.ip().to_string().into(),
            tls: false,
            sni: None,
        });
        return super::h1::serve(stream, info, limits, shared).await;
    }
    let Some(acceptor) = shared.current.load().tls.clone() else {
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
    let sni = tls
        .get_ref()
        .1
        .server_name()
        .map(|s| s.to_ascii_lowercase());
    let info = Arc::new(ConnInfo {
        peer,
        peer_ip: peer.ip().to_string().into(),
        tls: true,
        sni,
    });
    serve(TokioIo::new(tls), info, &limits, shared).await
}

/// Requests in flight and when the connection last became idle.
pub struct Activity {
    base: Instant,
    in_flight: AtomicUsize,
    idle_since_ms: AtomicU64,
    served: AtomicBool,
    /// Wakes the watchdog when a response finishes, so it can move its deadline.
    changed: Notify,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            base: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            served: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    /// A request started.
    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// A response finished (sent or abandoned).
    pub fn end(&self) {
        let now = self.base.elapsed().as_millis() as u64;
        self.idle_since_ms.store(now, Ordering::Release);
        self.served.store(true, Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.changed.notify_one();
    }

    /// When the connection will have been idle too long if it stays idle; None
    /// while a request is in flight (then it is not idle).
    fn deadline(&self, limits: &ClientLimits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
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

/// Serves a connection with hyper (HTTP/1.1 and HTTP/2), under the watchdog.
pub async fn serve<I>(
    io: TokioIo<I>,
    info: Arc<ConnInfo>,
    limits: &ClientLimits,
    shared: Arc<Shared>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let generation = shared.current.load_full();
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
        // With a request in flight there is no idle deadline; `changed` wakes us
        // when it finishes.
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
