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
//!
//! Caps, and who gives way at them ([`Conns`]). Every connection counts against
//! `max_connections` and against `max_connections_per_ip` of its peer (an
//! IPv4 address, or an IPv6 /64: one host is given a whole /64, so counting
//! single IPv6 addresses would cap nothing). A connection without a request in
//! flight for [`SHED_GRACE`] — one still in its TLS handshake or reading its
//! first head (slowloris), or an idle keep-alive one — may be closed to make
//! room, oldest first: at the global cap before berth stops accepting (as
//! nginx closes its reusable connections when it runs out), at an address's
//! cap before a new connection of that address is refused. A request in
//! flight is never cut: its connection is closed only between requests, and
//! only when the bytes of its last response have been taken by the kernel.
//! In a farm, a connection from another node's proxy address is let in past
//! its address's cap (that node hands many clients' requests over), but
//! only for requests that node placed (`ConnInfo::node_only`): any other is
//! answered 503 and its connection closed, since a tenant's app on that
//! machine connects from the same address.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, TryAcquireError};
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tracing::{debug, warn};

use super::Shared;
use super::h1::Rewind;
use super::handler;
use crate::config::ClientLimits;
use crate::ipc::{ListenerKind, ListenerSpec};

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
    /// It came on the admin listener: only berth's status pages are
    /// served on it (`admin`), never a site.
    pub admin: bool,
    /// It was let in past `max_connections_per_ip` only because its address
    /// is another node's: its requests must come from that node (a tenant's
    /// app on that machine shares the address), or it is closed.
    pub node_only: bool,
}

/// Turns a listening socket fd from the supervisor into a tokio listener.
pub fn listener(fd: OwnedFd) -> std::io::Result<TcpListener> {
    let std = std::net::TcpListener::from(fd);
    std.set_nonblocking(true)?;
    TcpListener::from_std(std)
}

/// How long a connection must have been without a request in flight before
/// it may be closed to make room at a cap. Short, because it only matters at
/// a cap, where the alternative is that nobody new gets in; long enough for a
/// client on a slow link to finish a TLS handshake and send its head (three
/// round trips of 300 ms).
pub const SHED_GRACE: Duration = Duration::from_secs(1);

/// Most connections closed at once when the global cap is reached: an eighth
/// of those that may be, at least one, at most this (as nginx drains its
/// reusable connections), so one scan of every connection pays for several
/// accepts under attack, and an idle client is not closed for nothing.
const SHED_BATCH: usize = 32;

/// How long to wait for the connections asked to close before looking again
/// (one that started a request meanwhile stays open).
const SHED_WAIT: Duration = Duration::from_millis(50);

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
        let per_ip = shared.current.load().limits.max_connections_per_ip;
        let activity = Arc::new(Activity::new());
        // Another node of the farm proxies many clients' requests over its
        // connections: past its address's share they still count against
        // the total, but each must carry requests that node placed (the
        // handler checks the mark: `node_only`).
        let (registered, node_only) = match shared.conns.admit(peer.ip(), &activity, per_ip) {
            Some(registered) => (registered, false),
            None if shared
                .farm
                .load()
                .as_deref()
                .is_some_and(|f| f.is_node(peer.ip())) =>
            {
                let registered = shared
                    .conns
                    .admit(peer.ip(), &activity, usize::MAX)
                    .expect("no cap");
                (registered, true)
            }
            None => {
                debug!(
                    "{peer}: its address has {per_ip} connections open (max_connections_per_ip); closing"
                );
                continue;
            }
        };
        // The permit is taken after accept, so idle listeners hold none; at the
        // cap this loop makes room or stops accepting (then further clients
        // wait in the backlog).
        let Some(permit) = room(&shared).await else {
            return;
        };
        activity.start();
        let shared = shared.clone();
        tokio::spawn(async move {
            // Closing a connection to make room is dropping it here, which
            // `shed_asked` allows only between requests.
            tokio::select! {
                () = connection(stream, peer, spec, shared, activity.clone(), node_only) => {}
                () = activity.shed_asked() => debug!("{peer}: closed to make room"),
            }
            drop(registered);
            drop(permit);
        });
    }
}

/// A permit of the global cap: at once if one is free, else after closing
/// the connections that have been without a request longest, else when a
/// connection ends. None when the front end is shutting down.
async fn room(shared: &Shared) -> Option<OwnedSemaphorePermit> {
    loop {
        match shared.conn_limit.clone().try_acquire_owned() {
            Ok(permit) => return Some(permit),
            Err(TryAcquireError::Closed) => return None,
            Err(TryAcquireError::NoPermits) => {}
        }
        let look_again = match shared.conns.shed_oldest() {
            Shed::Asked(n) => {
                shared
                    .conns
                    .warn_at_cap(shared.max_connections.load(Ordering::Relaxed), n);
                Instant::now() + SHED_WAIT
            }
            Shed::NoneBefore(at) => at,
            Shed::AllBusy(at) => {
                shared
                    .conns
                    .warn_full(shared.max_connections.load(Ordering::Relaxed));
                at
            }
        };
        tokio::select! {
            permit = shared.conn_limit.clone().acquire_owned() => return permit.ok(),
            () = sleep_until(look_again) => {}
        }
    }
}

/// Whom a per-address cap counts: an IPv4 address (IPv4-mapped IPv6 ones
/// included), or the /64 of an IPv6 address, which is what one subscriber
/// or host is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKey {
    V4(Ipv4Addr),
    V6(u64),
}

impl PeerKey {
    pub fn of(ip: IpAddr) -> PeerKey {
        match ip {
            IpAddr::V4(a) => PeerKey::V4(a),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => PeerKey::V4(v4),
                None => PeerKey::V6((a.to_bits() >> 64) as u64),
            },
        }
    }
}

/// Every open client connection, by peer: for the per-address cap, and for
/// closing connections without a request in flight at a cap.
#[derive(Default)]
pub struct Conns {
    by_peer: Mutex<HashMap<PeerKey, Vec<Arc<Activity>>>>,
    /// When the cap was last reported (Unix time, seconds), so an attack
    /// does not flood the log.
    warned_at: AtomicU64,
}

/// What [`Conns::shed_oldest`] did.
enum Shed {
    /// Asked this many connections to close.
    Asked(usize),
    /// None can be closed before this instant.
    NoneBefore(Instant),
    /// None could be closed: every connection has a request in flight (or
    /// a response not yet taken). Look again at this instant.
    AllBusy(Instant),
}

/// A connection's place in [`Conns`], given up when dropped.
pub struct Registered {
    conns: Arc<Conns>,
    key: PeerKey,
    activity: Arc<Activity>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut by_peer = self.conns.by_peer.lock().expect("conns lock");
        if let Some(list) = by_peer.get_mut(&self.key) {
            if let Some(i) = list.iter().position(|a| Arc::ptr_eq(a, &self.activity)) {
                list.swap_remove(i);
            }
            if list.is_empty() {
                by_peer.remove(&self.key);
            }
        }
    }
}

impl Conns {
    /// Counts a new connection from `ip`. At the address's cap, its
    /// connection longest without a request (past the grace) is asked to
    /// close to make room; without one, the new connection is refused (None).
    fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        activity: &Arc<Activity>,
        cap: usize,
    ) -> Option<Registered> {
        let key = PeerKey::of(ip);
        let mut by_peer = self.by_peer.lock().expect("conns lock");
        let list = by_peer.entry(key).or_default();
        // Those already asked to close are on their way out.
        let open = list.iter().filter(|a| !a.leaving()).count();
        if open >= cap {
            let now = Instant::now();
            let victim = list
                .iter()
                .filter(|a| a.sheddable(now))
                .min_by_key(|a| a.idle_since());
            match victim {
                Some(v) => {
                    debug!(
                        "{ip}: at max_connections_per_ip ({cap}); closing its connection idle longest"
                    );
                    v.ask_shed();
                }
                None => {
                    if list.is_empty() {
                        by_peer.remove(&key);
                    }
                    return None;
                }
            }
        }
        // The address's share of the body budgets, one for all its
        // connections.
        let peer = list
            .iter()
            .find_map(|a| a.peer.get().cloned())
            .unwrap_or_default();
        let _ = activity.peer.set(peer);
        list.push(activity.clone());
        Some(Registered {
            conns: self.clone(),
            key,
            activity: activity.clone(),
        })
    }

    /// Asks an eighth of the connections without a request in flight past
    /// the grace to close (at least one, at most [`SHED_BATCH`]), those idle
    /// longest.
    fn shed_oldest(&self) -> Shed {
        let now = Instant::now();
        // Any connection that ends a request from now on is a candidate only
        // a grace later.
        let mut first_candidate = now + SHED_GRACE;
        let mut any = false;
        let mut oldest: Vec<(Instant, &Arc<Activity>)> = Vec::with_capacity(SHED_BATCH + 1);
        let mut candidates = 0;
        let by_peer = self.by_peer.lock().expect("conns lock");
        for a in by_peer.values().flatten() {
            if !a.between_requests() {
                continue;
            }
            any = true;
            let since = a.idle_since();
            if since + SHED_GRACE > now {
                first_candidate = first_candidate.min(since + SHED_GRACE);
                continue;
            }
            candidates += 1;
            if oldest.len() == SHED_BATCH && oldest[SHED_BATCH - 1].0 <= since {
                continue;
            }
            let at = oldest.partition_point(|(t, _)| *t <= since);
            oldest.insert(at, (since, a));
            oldest.truncate(SHED_BATCH);
        }
        if oldest.is_empty() {
            return if any {
                Shed::NoneBefore(first_candidate)
            } else {
                Shed::AllBusy(first_candidate)
            };
        }
        oldest.truncate((candidates / 8).max(1));
        for (_, a) in &oldest {
            a.ask_shed();
        }
        Shed::Asked(oldest.len())
    }

    /// Says (at most every 10 s) that the cap was reached.
    fn warn_at_cap(&self, max: usize, closed: usize) {
        if self.time_to_warn() {
            warn!(
                "at max_connections ({max}): closing connections without a request for {SHED_GRACE:?} to make room ({closed} now)"
            );
        }
        debug!("at max_connections: asked {closed} connection(s) to close");
    }

    /// Says (at most every 10 s) that the cap was reached with no
    /// connection to close: new clients wait in the listen backlog.
    fn warn_full(&self, max: usize) {
        if self.time_to_warn() {
            warn!(
                "at max_connections ({max}) with every connection busy: new clients wait in the backlog"
            );
        }
    }

    /// Whether 10 s have passed since the last warning (and this one takes
    /// the turn).
    fn time_to_warn(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.warned_at.load(Ordering::Relaxed);
        now >= last + 10
            && self
                .warned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    spec: ListenerSpec,
    shared: Arc<Shared>,
    activity: Arc<Activity>,
    node_only: bool,
) {
    let _ = stream.set_nodelay(true);
    let limits = shared.current.load().limits.clone();
    let local = stream.local_addr().unwrap_or(spec.addr);
    if spec.kind != ListenerKind::Tls {
        let info = Arc::new(ConnInfo {
            peer,
            local,
            peer_ip: peer.ip().to_string().into(),
            tls: false,
            sni: None,
            admin: spec.kind == ListenerKind::Admin,
            node_only,
        });
        return super::h1::serve(stream, info, activity, limits, shared).await;
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
        admin: false,
        node_only,
    });
    if !h2 {
        return serve(tls, info, activity, &limits, shared).await;
    }
    match expect_preface(tls, limits.header_timeout).await {
        Ok(tls) => serve(tls, info, activity, &limits, shared).await,
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

/// One connection's state, from accept to close: requests in flight, when
/// the connection last became idle (its accept, or the end of its last
/// response), since when a write to the client has been blocked, and whether
/// it was asked to close to make room.
pub struct Activity {
    /// When the connection was accepted.
    base: Instant,
    in_flight: AtomicUsize,
    idle_since_ms: AtomicU64,
    /// Milliseconds since `base` at which a write first returned Pending, or
    /// `NOT_STALLED`.
    stalled_since_ms: AtomicU64,
    served: AtomicBool,
    /// Requests whose bodies berth is reading before any app has them, and
    /// when a byte of one last came (ms since `base`).
    reading: AtomicUsize,
    body_at_ms: AtomicU64,
    /// What the client's address holds of the body budgets (shared with its
    /// other connections); set when the connection is admitted.
    peer: std::sync::OnceLock<Arc<crate::front::spool::Peer>>,
    /// Whether responses are watched one by one (hyper's connections).
    watch_responses: AtomicBool,
    /// The responses in flight, when watched.
    responses: Mutex<Vec<Weak<Progress>>>,
    /// Wakes the watchdog when a request starts or its response finishes, so it
    /// can move its deadline.
    changed: Notify,
    /// `STARTING`, `RUNNING` or `ASKED`.
    shed_state: AtomicU8,
    /// Wakes the connection's task when it is asked to close.
    shed: Notify,
    /// Close it once no request is in flight ([`Activity::close_when_done`]).
    closing: AtomicBool,
}

/// Counted, but not served yet (waiting for room under the global cap).
const STARTING: u8 = 0;
/// Served.
const RUNNING: u8 = 1;
/// Asked to close to make room.
const ASKED: u8 = 2;

/// A request body berth is reading, for as long as this lives (see
/// [`Activity::reading_body`]).
pub struct ReadingBody(Arc<Activity>);

impl Drop for ReadingBody {
    fn drop(&mut self) {
        self.0.reading.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request being answered, for as long as this lives.
#[must_use = "the request counts only while this lives"]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            base: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            stalled_since_ms: AtomicU64::new(NOT_STALLED),
            served: AtomicBool::new(false),
            reading: AtomicUsize::new(0),
            body_at_ms: AtomicU64::new(0),
            peer: std::sync::OnceLock::new(),
            watch_responses: AtomicBool::new(false),
            responses: Mutex::new(Vec::new()),
            changed: Notify::new(),
            shed_state: AtomicU8::new(STARTING),
            shed: Notify::new(),
            closing: AtomicBool::new(false),
        }
    }

    /// Counts a request from the moment its head is complete, before the
    /// handler runs, until dropped: the connection is not closed to make room
    /// meanwhile. (The handler counts it too, until its response is sent.)
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.begin();
        Busy(self.clone())
    }

    /// The connection is served from now: its first head is due within
    /// `header_timeout`, and it may be closed to make room a grace later (the
    /// wait for room under the cap is not the client's doing).
    fn start(&self) {
        self.idle_since_ms.store(self.now_ms(), Ordering::Release);
        self.shed_state.store(RUNNING, Ordering::Release);
    }

    /// When the connection last had no request in flight.
    /// For one whose requests are all still sending their bodies, when a
    /// byte of a body last came.
    fn idle_since(&self) -> Instant {
        let ms = if self.reading.load(Ordering::Acquire) > 0 {
            self.body_at_ms.load(Ordering::Acquire)
        } else {
            self.idle_since_ms.load(Ordering::Acquire)
        };
        self.base + Duration::from_millis(ms)
    }

    /// Whether no request in flight has reached an app or a response yet,
    /// beyond berth reading its body (each request in the handler counts
    /// twice in `in_flight`: from its complete head, and in the handler).
    fn only_reading_bodies(&self) -> bool {
        let in_flight = self.in_flight.load(Ordering::Acquire);
        in_flight == 0 || in_flight == 2 * self.reading.load(Ordering::Acquire)
    }

    /// Whether it is served, has no request in flight but ones whose bodies
    /// berth is still reading (before any app has them: a slow body is as
    /// much a slowloris as a slow head), and the bytes of its last response
    /// were all taken by the kernel.
    fn between_requests(&self) -> bool {
        self.shed_state.load(Ordering::Acquire) == RUNNING
            && self.only_reading_bodies()
            && self.stalled_since_ms.load(Ordering::Relaxed) == NOT_STALLED
    }

    /// Counts a request whose body berth reads (before an app has it) until
    /// the guard is dropped; a connection with only such requests may be
    /// closed to make room once its bodies have been silent for the grace.
    pub fn reading_body(self: &Arc<Self>) -> ReadingBody {
        self.body_progress();
        self.reading.fetch_add(1, Ordering::AcqRel);
        ReadingBody(self.clone())
    }

    /// A byte of a request body came.
    pub fn body_progress(&self) {
        self.body_at_ms.store(self.now_ms(), Ordering::Release);
    }

    /// Whether it may be closed to make room at `now`.
    fn sheddable(&self, now: Instant) -> bool {
        self.between_requests() && self.idle_since() + SHED_GRACE <= now
    }

    /// Whether it was asked to close.
    fn leaving(&self) -> bool {
        self.shed_state.load(Ordering::Acquire) == ASKED
    }

    /// Asks the connection's task to close it.
    fn ask_shed(&self) {
        if self
            .shed_state
            .compare_exchange(RUNNING, ASKED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.shed.notify_one();
        }
    }

    /// Completes when the connection was asked to close and may be: checked
    /// again here, on the connection's own thread, where its requests start
    /// (one that started since it was asked keeps the connection open).
    async fn shed_asked(&self) {
        loop {
            self.shed.notified().await;
            if self.only_reading_bodies()
                && self.stalled_since_ms.load(Ordering::Relaxed) == NOT_STALLED
            {
                return;
            }
            let _ = self.shed_state.compare_exchange(
                ASKED,
                RUNNING,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
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
        let last = self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1;
        self.changed.notify_one();
        if last && self.closing.load(Ordering::Acquire) {
            self.ask_shed();
        }
    }

    /// Closes the connection once its requests are answered, as if to make
    /// room (between requests, its last response taken by the kernel).
    pub fn close_when_done(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// The client's address's share of the body budgets.
    pub fn peer(&self) -> Option<Arc<crate::front::spool::Peer>> {
        self.peer.get().cloned()
    }

    /// A [`Progress`] for a new response, when this connection watches
    /// them (see [`Progress`]).
    pub fn watch_response(&self) -> Option<Arc<Progress>> {
        if !self.watch_responses.load(Ordering::Relaxed) {
            return None;
        }
        let progress = Arc::new(Progress {
            base: self.base,
            waiting_since_ms: AtomicU64::new(NOT_WAITING),
        });
        let mut responses = self.responses.lock().expect("responses lock");
        responses.retain(|r| r.strong_count() > 0);
        responses.push(Arc::downgrade(&progress));
        Some(progress)
    }

    /// When a watched response will have waited `send_timeout` for the
    /// client to take its next piece, the earliest of them.
    fn response_deadline(&self, limits: &ClientLimits) -> Option<Instant> {
        let responses = self.responses.lock().expect("responses lock");
        responses
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|p| p.waiting_since())
            .min()
            .map(|since| since + limits.send_timeout)
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
const NOT_WAITING: u64 = u64::MAX;

/// How one response is getting on with the client: whether a piece of its
/// body has been handed over and the next one is not asked for yet. A
/// client that takes nothing makes the connection stop asking: hyper polls
/// an HTTP/2 stream's body only while the stream has flow-control window,
/// and an HTTP/1.1 body only once the last piece has been written. On
/// HTTP/1.1 a blocked write shows the stall too; on HTTP/2 nothing else does,
/// since the connection's other streams and its pings keep writing. The
/// watchdog closes a connection with a response waiting on its client for
/// `send_timeout`, as nginx's `send_timeout` does.
pub struct Progress {
    base: Instant,
    /// Milliseconds since `base` since which the client has been due to take
    /// the next piece, or `NOT_WAITING`.
    waiting_since_ms: AtomicU64,
}

impl Progress {
    /// A piece was handed over (or the head, and the body is not empty):
    /// the next move is the client's.
    pub fn waiting(&self) {
        let now = self.base.elapsed().as_millis() as u64;
        self.waiting_since_ms.store(now, Ordering::Relaxed);
    }

    /// The body is waiting for its source (an app), or has ended.
    pub fn not_waiting(&self) {
        self.waiting_since_ms.store(NOT_WAITING, Ordering::Relaxed);
    }

    fn waiting_since(&self) -> Option<Instant> {
        let ms = self.waiting_since_ms.load(Ordering::Relaxed);
        (ms != NOT_WAITING).then(|| self.base + Duration::from_millis(ms))
    }
}

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
pub async fn serve<I>(
    io: I,
    info: Arc<ConnInfo>,
    activity: Arc<Activity>,
    limits: &ClientLimits,
    shared: Arc<Shared>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
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
            // hyper calls this as soon as the head is complete; the handler
            // future may run later.
            let busy = activity.busy();
            let activity = activity.clone();
            async move {
                let response = handler::handle(req, &info, &shared, activity).await;
                drop(busy);
                Ok::<_, Infallible>(response)
            }
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
    activity.watch_responses.store(true, Ordering::Relaxed);
    loop {
        let response_at = activity.response_deadline(limits);
        let untaken = response_at.is_some_and(|at| at <= Instant::now());
        if untaken {
            debug!(
                "{}: left a response untaken for {:?}; closing",
                info.peer, limits.send_timeout
            );
            return;
        }
        // `changed` wakes us when a request starts or ends, to recompute this.
        let wake = match closing {
            Some(until) => Some(until),
            None => [activity.deadline(limits), response_at]
                .into_iter()
                .flatten()
                .min(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_addresses_for_ipv4_and_slash_64s_for_ipv6() {
        let key = |s: &str| PeerKey::of(s.parse().unwrap());
        assert_eq!(key("192.0.2.1"), PeerKey::V4(Ipv4Addr::new(192, 0, 2, 1)));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"), "IPv4-mapped");
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    }

    /// A served connection, idle (accepted, or its last response ended)
    /// `ago` before now.
    fn idle_for(ago: Duration) -> Arc<Activity> {
        let a = Activity::new();
        let a = Activity {
            base: a.base - ago,
            ..a
        };
        a.shed_state.store(RUNNING, Ordering::Release);
        Arc::new(a)
    }

    fn ip() -> IpAddr {
        "192.0.2.7".parse().unwrap()
    }

    #[test]
    fn at_an_address_cap_its_longest_idle_connection_makes_room() {
        let conns = Arc::new(Conns::default());
        let old = idle_for(Duration::from_secs(9));
        let older = idle_for(Duration::from_secs(10));
        let _a = conns.admit(ip(), &old, 2).unwrap();
        let _b = conns.admit(ip(), &older, 2).unwrap();
        let new = Arc::new(Activity::new());
        let _c = conns.admit(ip(), &new, 2).expect("room made");
        assert!(older.leaving(), "the one idle longest is asked to go");
        assert!(!old.leaving());
        // A request in flight keeps its connection; so does one not past the grace.
        let _busy = old.busy();
        new.start();
        assert!(conns.admit(ip(), &Arc::new(Activity::new()), 2).is_none());
        // Another address has its own count.
        let other = "192.0.2.8".parse().unwrap();
        assert!(conns.admit(other, &Arc::new(Activity::new()), 2).is_some());
    }

    #[test]
    fn a_connection_leaves_the_count_when_it_closes() {
        let conns = Arc::new(Conns::default());
        let a = Arc::new(Activity::new());
        let first = conns.admit(ip(), &a, 1).unwrap();
        assert!(conns.admit(ip(), &Arc::new(Activity::new()), 1).is_none());
        drop(first);
        assert!(conns.by_peer.lock().unwrap().is_empty());
        assert!(conns.admit(ip(), &Arc::new(Activity::new()), 1).is_some());
    }

    /// Registers `activities`, each from its own address.
    fn register(conns: &Arc<Conns>, activities: &[Arc<Activity>]) -> Vec<Registered> {
        activities
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let ip = IpAddr::from([10, 0, (i >> 8) as u8, i as u8]);
                conns.admit(ip, a, 10).unwrap()
            })
            .collect()
    }

    #[test]
    fn at_the_cap_the_longest_idle_connections_past_the_grace_are_asked_to_close() {
        let conns = Arc::new(Conns::default());
        let ages = [30, 2, 0, 20, 5];
        let named: Vec<_> = ages
            .iter()
            .map(|s| idle_for(Duration::from_secs(*s)))
            .collect();
        let _named = register(&conns, &named);
        let _busy = named[0].busy();
        // With few candidates, one is closed: the one idle longest.
        assert!(matches!(conns.shed_oldest(), Shed::Asked(1)));
        assert!(named[3].leaving(), "the oldest");
        assert!(!named[0].leaving(), "a request in flight");
        // Under attack, an eighth of them, at most SHED_BATCH, oldest first.
        let many: Vec<_> = (0..100).map(|_| idle_for(Duration::from_secs(3))).collect();
        let _many = register(&conns, &many);
        // Candidates now: 5 s, 2 s and the hundred of 3 s.
        assert!(matches!(conns.shed_oldest(), Shed::Asked(12)));
        assert!(named[4].leaving(), "5 s");
        assert_eq!(many.iter().filter(|a| a.leaving()).count(), 11, "3 s");
        assert!(!named[1].leaving(), "2 s: younger than those asked");
        assert!(!named[2].leaving(), "within the grace");
        let more: Vec<_> = (0..1000)
            .map(|_| idle_for(Duration::from_secs(4)))
            .collect();
        let _more = register(&conns, &more);
        assert!(matches!(conns.shed_oldest(), Shed::Asked(SHED_BATCH)));
    }

    #[test]
    fn with_nothing_to_close_the_cap_says_when_to_look_again() {
        let conns = Arc::new(Conns::default());
        let young = idle_for(Duration::from_millis(200));
        let _r = conns.admit(ip(), &young, 10).unwrap();
        match conns.shed_oldest() {
            Shed::NoneBefore(at) => assert_eq!(at, young.idle_since() + SHED_GRACE),
            Shed::Asked(_) | Shed::AllBusy(_) => panic!("nothing is past the grace"),
        }
        let waiting = Arc::new(Activity::new());
        let _w = conns.admit(ip(), &waiting, 10).unwrap();
        let _busy = young.busy();
        assert!(
            matches!(conns.shed_oldest(), Shed::AllBusy(_)),
            "neither a busy connection nor one not yet served"
        );
    }

    #[tokio::test]
    async fn a_request_that_starts_after_the_ask_keeps_its_connection() {
        let a = idle_for(Duration::from_secs(5));
        a.ask_shed();
        assert!(a.leaving());
        let busy = a.busy();
        let closed = tokio::time::timeout(Duration::from_millis(50), a.shed_asked()).await;
        assert!(closed.is_err(), "not closed with a request in flight");
        assert!(!a.leaving(), "back to serving");
        drop(busy);
        assert!(!a.sheddable(Instant::now()), "its request just ended");
        let a = idle_for(Duration::from_secs(5));
        a.ask_shed();
        let closed = tokio::time::timeout(Duration::from_secs(5), a.shed_asked()).await;
        assert!(closed.is_ok(), "an idle one closes");
    }
}
