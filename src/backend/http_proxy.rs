//! HTTP apps: one request proxied to an app process over its Unix socket, both
//! bodies streaming, and HTTP/1.1 upgrades (WebSocket) tunnelled.
//!
//! Request flow position: handler → app route → (app lease) → here → the app's
//! socket, which berth bound and handed to the app by socket activation
//! (DESIGN.md "App sockets").
//!
//! Connections are kept alive: a response read to its end leaves its
//! connection with the process (in the lease, then the pool) for the process's
//! next request. A kept connection is used only if it is idle right away; one
//! the app closed meanwhile is noticed before the request is sent on it (hyper
//! hands the request back) and a fresh connection is made instead. Upgrades
//! are never kept: the connection becomes the tunnel.
//!
//! Apps that bind their own socket (`bind = "port"` or `"socket"`) are
//! checked on every new connection before a byte is sent: the listener on the
//! other end must belong to the tenant's uid ([`super::sock_owner`]), so a
//! tenant who grabs another's port gets nothing (DESIGN.md "App sockets").
//!
//! What the app sees:
//! - the request-target in origin form (path and query as the client sent
//!   them), `Host` as the client sent it (for HTTP/2 clients, the authority);
//! - no hop-by-hop headers: `Connection` and every header it names,
//!   `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`,
//!   `Upgrade`, `Proxy-Authenticate`, `Proxy-Authorization`, and `Expect`
//!   (the front end already answered it). Only an upgrade keeps
//!   `Connection: upgrade` and `Upgrade`;
//! - the proxy headers berth vouches for, whatever the client sent under those
//!   names: `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host`,
//!   `X-Real-IP` and `Forwarded` (RFC 7239). Other spoofable variants
//!   (`X-Forwarded-Port`, `-Prefix`, `-Ssl`, ...) are removed and not set.
//!
//! The response loses its hop-by-hop headers the same way; its framing is the
//! front end's business.

use std::error::Error as StdError;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::time::{Instant, timeout_at};
use tracing::debug;

use super::AppFailure;
use crate::front::apps::Lease;
use crate::front::body::Body;
use crate::front::request_body::Sent;

/// Who asked, as berth saw it: what the app is told in the proxy headers.
pub struct Forwarded<'a> {
    /// The client's address (the TCP peer of the front end).
    pub client: SocketAddr,
    /// The client came over TLS.
    pub proto_https: bool,
    /// The host the client asked for (its `Host`, or the HTTP/2 authority).
    pub host: &'a str,
    /// The farm's signed mark, on a request proxied to another node
    /// ([`crate::farm::mark`]); never on a request to an app.
    pub mark: Option<HeaderValue>,
}

/// A kept-alive connection to an app process.
pub type AppConn = hyper::client::conn::http1::SendRequest<ProxyBody>;

/// Request bodies as sent to apps (one type, so connections can be kept).
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

type BoxError = Box<dyn StdError + Send + Sync>;

/// What the proxy holds while a request runs (the lease): dropped when the
/// response ends, with a place for the connection to the process.
pub trait Held: Send + Unpin + 'static {
    /// An idle connection to the process kept from an earlier request.
    fn take_conn(&mut self) -> Option<AppConn> {
        None
    }
    /// The response ended cleanly: the connection may serve the next request.
    fn keep_conn(&mut self, _conn: AppConn) {}
}

#[cfg(test)]
impl Held for () {}

impl Held for Lease {
    fn take_conn(&mut self) -> Option<AppConn> {
        self.conn.take()
    }
    fn keep_conn(&mut self, conn: AppConn) {
        self.conn = Some(conn);
    }
}

/// Where an app process listens, and whom its listener must belong to.
pub struct Target<'a> {
    /// Its Unix socket (unused when `port` is set).
    pub socket: &'a Path,
    /// It listens on 127.0.0.1 at this port.
    pub port: Option<u16>,
    /// Another node of the farm, at this address (then `socket` and
    /// `port` are unused, and no owner is checked).
    pub node: Option<SocketAddr>,
    /// The app binds by itself: its listener must belong to this uid.
    pub owner: Option<u32>,
}

#[cfg(test)]
impl Target<'_> {
    /// A socket berth bound itself.
    pub fn unix(socket: &Path) -> Target<'_> {
        Target {
            socket,
            port: None,
            node: None,
            owner: None,
        }
    }
}

/// Removed from requests and responses; with the headers `Connection` names.
/// `Upgrade` and `Connection: upgrade` are put back for an upgrade.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Proxy headers a client may send to pass as someone else; never forwarded.
/// berth sets the first five itself. ([`never_forwarded`] matches them; a
/// test holds the two together.)
#[cfg(test)]
const PROXY_HEADERS: [HeaderName; 14] = [
    header::FORWARDED,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    X_REAL_IP,
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-protocol"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-url-scheme"),
    HeaderName::from_static("front-end-https"),
    crate::farm::mark::HEADER,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Proxies one request to the app process of `lease`.
///
/// `first_byte` bounds connecting and waiting for the response head (a fresh
/// process failing it is [`AppFailure::StartTimeout`]); `idle` bounds any
/// silence in the response body (the app's `timeout`, like nginx's
/// `proxy_read_timeout`; tunnels have no such limit). The lease is held
/// until the response body ends or is dropped; for an upgrade, until the
/// tunnel closes. On failure the lease comes back for the caller to mark
/// broken or retry; the request (and its body) is consumed either way.
///
/// Upgrades: `parts` must keep the extensions hyper put in the request (pass
/// `Request::into_parts().0`; the `OnUpgrade` in there is shared by clones). Only a request with `Connection: upgrade` and `Upgrade`
/// and that extension is forwarded as an upgrade; without the extension (the
/// fast lane, HTTP/2) the upgrade headers are dropped and the app sees an
/// ordinary request. The front end's hyper connection must be served with
/// upgrades (`serve_connection_with_upgrades`).
pub async fn request(
    lease: Lease,
    parts: &Parts,
    body: Option<Body>,
    forwarded: &Forwarded<'_>,
    first_byte: Duration,
    idle: Duration,
    sent: Option<Arc<Sent>>,
) -> Result<Response<Body>, (AppFailure, Lease)> {
    let socket = lease.socket.clone();
    let target = Target {
        socket: &socket,
        port: lease.port,
        node: None,
        owner: lease.owner,
    };
    let timing = Timing {
        first_byte,
        fresh: lease.fresh,
        idle,
        sent,
    };
    exchange(&target, lease, parts, body, forwarded, timing).await
}

/// The most header lines an answer from another node of the farm may have
/// (hyper's default is 100). That node passes on what its CGI and FastCGI
/// apps write, up to 64 KiB of head with no count of lines: an answer it
/// serves its own clients must not fail the hop, where the request would
/// run again on the next node. (hyper then takes room for that many lines,
/// 64 KiB of heap, for each answer it reads.)
pub const NODE_MAX_HEADERS: usize = 1024;

/// Proxies one request to another node of the farm at `node`, like
/// [`request`] (no upgrades: the caller serves those where they arrive).
/// `guard` holds a kept connection to that node, if any, and gets it back
/// when the response ends cleanly.
pub async fn to_node<G: Held>(
    node: SocketAddr,
    guard: G,
    parts: &Parts,
    body: Option<hyper::body::Incoming>,
    forwarded: &Forwarded<'_>,
    first_byte: Duration,
    idle: Duration,
) -> Result<Response<Body>, (AppFailure, G)> {
    let target = Target {
        socket: Path::new(""),
        port: None,
        node: Some(node),
        owner: None,
    };
    let timing = Timing {
        first_byte,
        fresh: false,
        idle,
        sent: None,
    };
    exchange(&target, guard, parts, body, forwarded, timing).await
}

struct Timing {
    first_byte: Duration,
    /// Whether a missed `first_byte` is a start-up failure.
    fresh: bool,
    idle: Duration,
    /// A body streamed from the client: `first_byte` counts from its end.
    sent: Option<Arc<Sent>>,
}

impl Timing {
    /// Runs `fut` (sending the request, waiting for the head) until
    /// `deadline`; while a streamed body is still coming from the client, the
    /// deadline moves: the app's time to answer starts at the body's end (the
    /// client's own silence is bounded by `body_timeout` meanwhile).
    async fn in_time<F: std::future::Future>(
        &self,
        fut: F,
        deadline: Instant,
    ) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        let mut deadline = deadline;
        loop {
            match timeout_at(deadline, fut.as_mut()).await {
                Ok(out) => return Some(out),
                Err(_) => match self.sent.as_deref().map(Sent::finished_at) {
                    Some(None) => deadline = Instant::now() + self.first_byte,
                    Some(Some(at)) if at + self.first_byte > Instant::now() => {
                        deadline = at + self.first_byte;
                    }
                    _ => return None,
                },
            }
        }
    }
}

/// The exchange behind [`request`]. `guard` stands for the lease: anything
/// held until the response body ends (or the tunnel closes), given back on
/// failure.
async fn exchange<G, B>(
    target: &Target<'_>,
    mut guard: G,
    parts: &Parts,
    body: Option<B>,
    forwarded: &Forwarded<'_>,
    timing: Timing,
) -> Result<Response<Body>, (AppFailure, G)>
where
    G: Held,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let deadline = Instant::now() + timing.first_byte;
    let late = || {
        if timing.fresh {
            AppFailure::StartTimeout(timing.first_byte)
        } else {
            AppFailure::Timeout(timing.first_byte)
        }
    };
    let client_upgrade = if wants_upgrade(&parts.headers) {
        parts.extensions.get::<OnUpgrade>().cloned()
    } else {
        None
    };
    let upgrade = client_upgrade.is_some();
    // An upgrade gets a connection of its own; the kept one is let go first
    // (an app serving one connection at a time would not accept another).
    let pooled = guard.take_conn().filter(|_| !upgrade);
    // An idempotent request without a body may go again on a fresh
    // connection if the app closed the kept one as it was sent.
    let again = pooled.is_some() && body.is_none() && parts.method.is_idempotent();
    let req = to_app(parts, body, forwarded, upgrade);

    // A kept connection first, if it is idle now; a request it could not take
    // (the app closed it meanwhile) comes back and goes on a fresh one.
    let mut answer = Err(req);
    if let Some(mut sender) = pooled
        && idle_now(&mut sender).await
        && let Err(req) = answer
    {
        answer = match timing.in_time(sender.try_send_request(req), deadline).await {
            Some(Ok(resp)) => Ok((resp, sender)),
            Some(Err(mut e)) => match e.take_message() {
                Some(back) => Err(back),
                None if again && closed_early(e.error()) => {
                    debug!("kept connection to an HTTP app closed; sending again");
                    Err(to_app(parts, None::<B>, forwarded, false))
                }
                None => return Err((failure(e.into_error()), guard)),
            },
            None => return Err((late(), guard)),
        };
    }
    let (mut resp, sender) = match answer {
        Ok(answer) => answer,
        Err(req) => {
            let stream = match connect(target, deadline, timing.fresh).await {
                Ok(stream) => stream,
                Err(ConnectError::Late) => return Err((late(), guard)),
                Err(ConnectError::Failed(f)) => return Err((f, guard)),
            };
            let mut builder = hyper::client::conn::http1::Builder::new();
            if target.node.is_some() {
                builder.max_headers(NODE_MAX_HEADERS);
            }
            let (mut sender, conn) = match builder.handshake(TokioIo::new(stream)).await {
                Ok(pair) => pair,
                Err(e) => return Err((failure(e), guard)),
            };
            tokio::spawn(async move {
                // Ends when the sender is dropped and the connection is idle,
                // or hands the socket over to the tunnel on an upgrade.
                if let Err(e) = conn.with_upgrades().await {
                    debug!("connection to an HTTP app: {}", chain(&e));
                }
            });
            let answer = timing
                .in_time(
                    async {
                        sender.ready().await?;
                        sender.send_request(req).await
                    },
                    deadline,
                )
                .await;
            match answer {
                Some(Ok(resp)) => (resp, sender),
                Some(Err(e)) => return Err((failure(e), guard)),
                None => return Err((late(), guard)),
            }
        }
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err((
                AppFailure::Protocol("101 Switching Protocols without an upgrade request".into()),
                guard,
            ));
        };
        drop(sender);
        let app_upgrade = hyper::upgrade::on(&mut resp);
        let mut out = Response::new(crate::front::body::empty());
        *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *out.headers_mut() = upgrade_headers(resp.headers());
        tokio::spawn(tunnel(client_upgrade, app_upgrade, guard));
        return Ok(out);
    }

    let (head, inner) = resp.into_parts();
    let mut headers = head.headers;
    if headers.contains_key(header::TRANSFER_ENCODING) {
        // The body was decoded by its Transfer-Encoding, which overrides any
        // Content-Length (RFC 9112 §6.3); passing that on would misframe it.
        headers.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(&mut headers);
    // A fresh response: the app's version, reason phrase and extensions stay
    // behind.
    let mut out = Response::new(
        AppBody {
            inner,
            guard: Some(guard),
            conn: (!upgrade).then_some(sender),
            idle: super::IdleTimer::new(timing.idle),
        }
        .boxed_unsync(),
    );
    *out.status_mut() = head.status;
    *out.headers_mut() = headers;
    Ok(out)
}

/// Whether a kept connection failed because the app closed it (before any
/// answer), rather than answering badly.
fn closed_early(e: &hyper::Error) -> bool {
    e.is_incomplete_message() || e.is_canceled() || e.is_closed()
}

/// Whether a kept connection can take a request at once. Just after a
/// response its connection task may not have run yet, so it gets a moment
/// (a timer only then: nearly always it is ready at the first look).
async fn idle_now(sender: &mut AppConn) -> bool {
    if let Poll::Ready(ready) = std::future::poll_fn(|cx| Poll::Ready(sender.poll_ready(cx))).await
    {
        return ready.is_ok();
    }
    matches!(
        tokio::time::timeout(Duration::from_millis(5), sender.ready()).await,
        Ok(Ok(()))
    )
}

/// A connection to an app, over a Unix socket or loopback TCP.
trait AppIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> AppIo for T {}

enum ConnectError {
    Late,
    Failed(AppFailure),
}

/// Connects to `target` by `deadline`, checking the owner of a self-bound
/// listener. A fresh process of a self-binding app may not have bound yet:
/// refused connections are tried again until the deadline.
async fn connect(
    target: &Target<'_>,
    deadline: Instant,
    fresh: bool,
) -> Result<Box<dyn AppIo>, ConnectError> {
    loop {
        let port = target
            .node
            .or_else(|| target.port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))));
        let attempt = match port {
            Some(at) => match timeout_at(deadline, tokio::net::TcpStream::connect(at)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    tcp_owner(&stream, target.owner)
                        .await
                        .map(|()| Box::new(stream) as Box<dyn AppIo>)
                }
                Ok(Err(e)) => Err(super::connect_failed(e)),
                Err(_) => return Err(ConnectError::Late),
            },
            None => match timeout_at(deadline, UnixStream::connect(target.socket)).await {
                Ok(Ok(stream)) => unix_owner(&stream, target.socket, target.owner)
                    .map(|()| Box::new(stream) as Box<dyn AppIo>),
                Ok(Err(e)) => Err(super::connect_failed(e)),
                Err(_) => return Err(ConnectError::Late),
            },
        };
        match attempt {
            Err(AppFailure::Gone(_)) if fresh && target.owner.is_some() => {
                if Instant::now() + Duration::from_millis(25) >= deadline {
                    return Err(ConnectError::Late);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(f) => return Err(ConnectError::Failed(f)),
            Ok(stream) => return Ok(stream),
        }
    }
}

/// Checks that the listener behind `stream` belongs to `owner`.
fn unix_owner(stream: &UnixStream, socket: &Path, owner: Option<u32>) -> Result<(), AppFailure> {
    let Some(expected) = owner else { return Ok(()) };
    let found = super::sock_owner::unix_peer_uid(std::os::fd::AsFd::as_fd(stream))
        .map_err(AppFailure::Io)?;
    refuse_unless(found == expected, socket.display(), expected, || {
        format!("uid {found}")
    })
}

/// The same for loopback TCP: the accepted socket of this very connection is
/// looked up, so the listener cannot change between check and use.
async fn tcp_owner(stream: &tokio::net::TcpStream, owner: Option<u32>) -> Result<(), AppFailure> {
    let Some(expected) = owner else { return Ok(()) };
    let (local, peer) = (
        stream.local_addr().map_err(AppFailure::Io)?,
        stream.peer_addr().map_err(AppFailure::Io)?,
    );
    // A connection the app has not accepted into its queue yet has no owner
    // to report (SYN_RECV); it settles within moments.
    let mut tries = 0;
    let found = loop {
        match super::sock_owner::tcp_server_uid(local, peer) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected && tries < 20 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                return Err(AppFailure::Busy(format!(
                    "connection not accepted into its queue: {e}"
                )));
            }
            other => break other.map_err(AppFailure::Io)?,
        }
    };
    refuse_unless(found == Some(expected), peer, expected, || match found {
        Some(uid) => format!("uid {uid}"),
        None => "no process (the connection vanished)".into(),
    })
}

fn refuse_unless(
    ok: bool,
    at: impl std::fmt::Display,
    expected: u32,
    found: impl FnOnce() -> String,
) -> Result<(), AppFailure> {
    if ok {
        return Ok(());
    }
    let failure = AppFailure::NotOwner {
        at: at.to_string(),
        expected,
        found: found(),
    };
    tracing::warn!("HTTP app: {failure}");
    Err(failure)
}

/// The request as the app gets it (see the module doc).
///
/// Built in one pass over the client's headers into a map sized for them and
/// the proxy headers: what the app must not see is skipped, not copied and
/// removed (a removal hashes and probes once per name; this ran for every
/// proxied request and was a quarter of berth's own work on it).
fn to_app<B>(
    parts: &Parts,
    body: Option<B>,
    forwarded: &Forwarded<'_>,
    upgrade: bool,
) -> Request<ProxyBody>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let Parts {
        method,
        uri,
        headers: client,
        ..
    } = parts;
    // Without a length hyper sends no body at all for GET and HEAD unless
    // told it is chunked; without a body, a client's length means nothing.
    let chunked = body
        .as_ref()
        .is_some_and(|b| b.size_hint().exact().is_none() && !b.is_end_stream());
    let keep_length = body.is_some() && !chunked;
    // Names the client's `Connection` lists are hop-by-hop too (never Host:
    // `Connection: host` would leave the app guessing the site).
    let named: Vec<&str> = if client.contains_key(header::CONNECTION) {
        connection_tokens(client).collect()
    } else {
        Vec::new()
    };
    let mut headers = HeaderMap::with_capacity(client.len() + PROXY_SET + 3);
    let mut has_host = false;
    for (name, value) in client {
        if never_forwarded(name)
            || (*name == header::CONTENT_LENGTH && !keep_length)
            || (!named.is_empty()
                && *name != header::HOST
                && named.iter().any(|t| t.eq_ignore_ascii_case(name.as_str())))
        {
            continue;
        }
        has_host |= *name == header::HOST;
        headers.append(name.clone(), value.clone());
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        for value in client.get_all(header::UPGRADE) {
            headers.append(header::UPGRADE, value.clone());
        }
    }
    if !has_host {
        // HTTP/2 clients (and HTTP/1.0 ones) may send none; HTTP/1.1 needs it.
        let host = uri.authority().map_or(forwarded.host, |a| a.as_str());
        if let Ok(value) = HeaderValue::from_str(host) {
            headers.insert(header::HOST, value);
        }
    }
    set_proxy_headers(&mut headers, forwarded);
    if chunked {
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }

    let body = match body {
        Some(body) => body.map_err(Into::<BoxError>::into).boxed_unsync(),
        // A zero-sized body: boxing it allocates nothing.
        None => Empty::new().map_err(|never| match never {}).boxed_unsync(),
    };
    let mut req = Request::new(body);
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri
        .path_and_query()
        .cloned()
        .map_or_else(|| Uri::from_static("/"), Uri::from);
    *req.headers_mut() = headers;
    req
}

/// How many headers [`set_proxy_headers`] adds.
const PROXY_SET: usize = 5;

/// Whether a client's header never reaches an app under its own name:
/// hop-by-hop ([`HOP_BY_HOP`]), `Expect` (the front end answered it), or a
/// proxy header (`Forwarded`, `X-Forwarded-*`, `X-Real-IP` and other
/// spoofable variants; berth sets its own). One `match`, not a
/// lookup per name.
fn never_forwarded(name: &HeaderName) -> bool {
    is_hop_by_hop(name)
        || matches!(
            name.as_str(),
            "expect"
                | "berth-mark"
                | "forwarded"
                | "x-forwarded-for"
                | "x-forwarded-proto"
                | "x-forwarded-host"
                | "x-real-ip"
                | "x-forwarded-port"
                | "x-forwarded-prefix"
                | "x-forwarded-protocol"
                | "x-forwarded-scheme"
                | "x-forwarded-ssl"
                | "x-forwarded-server"
                | "x-url-scheme"
                | "front-end-https"
        )
}

/// Whether `name` is one of [`HOP_BY_HOP`].
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-authorization"
    )
}

/// Sets the proxy headers berth vouches for. Their values are written into
/// one buffer and sliced from it: two allocations in all, no `format!`.
fn set_proxy_headers(headers: &mut HeaderMap, forwarded: &Forwarded<'_>) {
    // A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d.
    let ip = forwarded.client.ip().to_canonical();
    let proto = if forwarded.proto_https {
        "https"
    } else {
        "http"
    };
    let host = Some(forwarded.host).filter(|h| valid_value(h));
    let mut text = Vec::with_capacity(2 * 45 + 32 + 2 * forwarded.host.len());
    super::write_ip(&mut text, ip);
    let ip_end = text.len();
    write_forwarded(&mut text, ip, proto, host);
    let forwarded_end = text.len();
    if let Some(host) = host {
        text.extend_from_slice(host.as_bytes());
    }
    let text = Bytes::from(text);
    let value = |range: std::ops::Range<usize>| HeaderValue::from_maybe_shared(text.slice(range));
    if let Ok(ip_text) = value(0..ip_end) {
        headers.insert(X_FORWARDED_FOR, ip_text.clone());
        headers.insert(X_REAL_IP, ip_text);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if host.is_some()
        && let Ok(host) = value(forwarded_end..text.len())
    {
        headers.insert(X_FORWARDED_HOST, host);
    }
    if let Ok(value) = value(ip_end..forwarded_end) {
        headers.insert(header::FORWARDED, value);
    }
    if let Some(mark) = &forwarded.mark {
        headers.insert(crate::farm::mark::HEADER, mark.clone());
    }
}

/// Whether `s` may be a header value as it is (what `HeaderValue::from_str`
/// accepts).
fn valid_value(s: &str) -> bool {
    s.bytes().all(|b| (b >= 32 && b != 127) || b == b'\t')
}

/// `for=<ip>;proto=<proto>;host="<host>"`, an IPv6 address quoted and in
/// brackets (RFC 7239 §6).
fn write_forwarded(out: &mut Vec<u8>, ip: IpAddr, proto: &str, host: Option<&str>) {
    match ip {
        IpAddr::V4(_) => {
            out.extend_from_slice(b"for=");
            super::write_ip(out, ip);
        }
        IpAddr::V6(_) => {
            out.extend_from_slice(b"for=\"[");
            super::write_ip(out, ip);
            out.extend_from_slice(b"]\"");
        }
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(proto.as_bytes());
    if let Some(host) = host {
        out.extend_from_slice(b";host=\"");
        for b in host.bytes() {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    }
}

#[cfg(test)]
fn forwarded_value(ip: IpAddr, proto: &str, host: Option<&str>) -> String {
    let mut out = Vec::new();
    write_forwarded(&mut out, ip, proto, host);
    String::from_utf8(out).expect("ASCII")
}

/// The tokens of every `Connection` header.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most responses carry none: one pass over the names finds that out,
    // where the removals below would hash and probe for each.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    for name in named {
        // `Connection: host` would leave the app guessing the site.
        if name != header::HOST {
            headers.remove(&name);
        }
    }
}

/// The app's 101 headers for the client: end-to-end ones (such as
/// `Sec-WebSocket-Accept`) and the upgrade itself.
fn upgrade_headers(app: &HeaderMap) -> HeaderMap {
    let upgrade: Vec<HeaderValue> = app.get_all(header::UPGRADE).iter().cloned().collect();
    let mut headers = app.clone();
    strip_hop_by_hop(&mut headers);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    for value in upgrade {
        headers.append(header::UPGRADE, value);
    }
    headers
}

/// Copies bytes both ways between the client and the app once both sides have
/// switched protocols, holding `guard` until both directions are closed.
async fn tunnel<G>(client: OnUpgrade, app: OnUpgrade, guard: G) {
    let (client, app) = match tokio::try_join!(client, app) {
        Ok(pair) => pair,
        Err(e) => {
            debug!("upgrade to an HTTP app did not complete: {}", chain(&e));
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut app = TokioIo::new(app);
    match tokio::io::copy_bidirectional(&mut client, &mut app).await {
        Ok((up, down)) => debug!("tunnel to an HTTP app closed: {up} bytes up, {down} down"),
        Err(e) => debug!("tunnel to an HTTP app: {e}"),
    }
    drop(guard);
}

/// Classifies a hyper client error from before the response head.
fn failure(e: hyper::Error) -> AppFailure {
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        AppFailure::Protocol(format!("bad response head: {}", chain(&e)))
    } else if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        AppFailure::Protocol(format!(
            "app closed the connection before a complete response head ({})",
            chain(&e)
        ))
    } else {
        let mut kind = io::ErrorKind::Other;
        let mut source = e.source();
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<io::Error>() {
                kind = io.kind();
                break;
            }
            source = s.source();
        }
        AppFailure::Io(io::Error::new(kind, chain(&e)))
    }
}

/// An error and its sources, `: `-separated (hyper's own Display leaves the
/// cause out).
fn chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The app's response body, holding the lease until it ends.
struct AppBody<G: Held> {
    inner: Incoming,
    /// Dropped at the end of the body (or with it).
    guard: Option<G>,
    /// The connection, handed to the guard when the body ends cleanly.
    conn: Option<AppConn>,
    idle: super::IdleTimer,
}

impl<G: Held> HttpBody for AppBody<G> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.guard.is_none() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progress();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.guard = None;
                Poll::Ready(Some(Err(io::Error::other(format!(
                    "app response body: {}",
                    chain(&e)
                )))))
            }
            Poll::Ready(None) => {
                if let (Some(guard), Some(conn)) = (this.guard.as_mut(), this.conn.take()) {
                    guard.keep_conn(conn);
                }
                this.guard = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let e = std::task::ready!(this.idle.poll_expired(cx, "app"));
                this.guard = None;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.guard.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use http::Method;
    use http_body_util::combinators::UnsyncBoxBody;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    use super::*;

    /// Stands for the lease: raises its flag when dropped.
    struct Guard(Arc<AtomicBool>);

    impl Held for Guard {}

    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn guard() -> (Guard, Arc<AtomicBool>) {
        let flag = Arc::new(AtomicBool::new(false));
        (Guard(flag.clone()), flag)
    }

    fn released(flag: &AtomicBool) -> bool {
        flag.load(Ordering::SeqCst)
    }

    fn forwarded() -> Forwarded<'static> {
        Forwarded {
            client: "[2001:db8::7]:40000".parse().unwrap(),
            proto_https: true,
            host: "alice.test",
            mark: None,
        }
    }

    fn timing(first_byte: Duration, fresh: bool) -> Timing {
        Timing {
            first_byte,
            fresh,
            idle: Duration::from_secs(5),
            sent: None,
        }
    }

    /// `len` bytes of a pattern that shows misplaced or lost chunks, sent in
    /// 64 KiB frames of unknown total length (chunked on the wire).
    struct Pattern {
        sent: usize,
        len: usize,
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    impl HttpBody for Pattern {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            let n = (self.len - self.sent).min(64 * 1024);
            if n == 0 {
                return Poll::Ready(None);
            }
            let chunk: Bytes = (self.sent..self.sent + n)
                .map(|i| (i % 251) as u8)
                .collect();
            self.sent += n;
            Poll::Ready(Some(Ok(Frame::data(chunk))))
        }
    }

    type AppBody = UnsyncBoxBody<Bytes, hyper::Error>;

    fn text(s: String) -> AppBody {
        Full::new(Bytes::from(s))
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    /// The test app: `/head` answers with the request head it got (and some
    /// hop-by-hop headers of its own), `/echo` streams the request body back,
    /// `/big` sends 5 MB, `/hang` never answers, `/ws` upgrades and echoes.
    async fn app(req: Request<Incoming>) -> Result<Response<AppBody>, Infallible> {
        let resp = match req.uri().path() {
            "/head" => {
                let mut dump = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
                for (name, value) in req.headers() {
                    dump.push_str(&format!("{name}: {}\n", value.to_str().unwrap()));
                }
                Response::builder()
                    .header("connection", "x-app-hop")
                    .header("x-app-hop", "1")
                    .header("keep-alive", "timeout=5")
                    .header("proxy-connection", "keep-alive")
                    .header("x-app", "kept")
                    .body(text(dump))
                    .unwrap()
            }
            "/echo" => Response::new(req.into_body().boxed_unsync()),
            "/big" => Response::new(
                Pattern {
                    sent: 0,
                    len: 5 << 20,
                }
                .map_err(|never| match never {})
                .boxed_unsync(),
            ),
            "/hang" => std::future::pending().await,
            "/ws" if wants_upgrade(req.headers()) => {
                tokio::spawn(async move {
                    let upgraded = hyper::upgrade::on(req).await.unwrap();
                    let mut io = TokioIo::new(upgraded);
                    let mut buf = [0; 1024];
                    loop {
                        match io.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => io.write_all(&buf[..n]).await.unwrap(),
                        }
                    }
                });
                Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header("connection", "Upgrade")
                    .header("upgrade", "websocket")
                    .header("sec-websocket-accept", "test")
                    .body(text(String::new()))
                    .unwrap()
            }
            _ => Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(text(String::new()))
                .unwrap(),
        };
        Ok(resp)
    }

    /// Runs the test app on a socket in `dir`.
    fn start_app(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("app.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service_fn(app))
                        .with_upgrades(),
                );
            }
        });
        path
    }

    async fn send<G, B>(
        socket: &Path,
        guard: G,
        req: Request<B>,
        timing: Timing,
    ) -> Result<Response<Body>, (AppFailure, G)>
    where
        G: Held,
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let target = Target::unix(socket);
        exchange(&target, guard, &parts, Some(body), &forwarded(), timing).await
    }

    async fn body_bytes(resp: Response<Body>) -> Vec<u8> {
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec()
    }

    #[tokio::test]
    async fn headers_are_rewritten_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let socket = start_app(dir.path());
        let req = Request::post("http://ignored.example/head?a=1&b=2")
            .header("host", "alice.test:8080")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-proto", "http")
            .header("x-forwarded-host", "evil.test")
            .header("x-forwarded-ssl", "on")
            .header("x-real-ip", "6.6.6.6")
            .header("forwarded", "for=6.6.6.6")
            .header("connection", "keep-alive, X-Client-Hop")
            .header("x-client-hop", "1")
            .header("keep-alive", "300")
            .header("proxy-connection", "keep-alive")
            .header("te", "trailers")
            .header("trailer", "x-sum")
            .header("upgrade", "h2c")
            .header("expect", "100-continue")
            .header("cookie", "a=b")
            .header("content-length", "5")
            .body(Full::new(Bytes::from_static(b"hello")))
            .unwrap();
        let (g, flag) = guard();
        let resp = send(&socket, g, req, timing(Duration::from_secs(5), false))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let h = resp.headers();
        for gone in ["connection", "x-app-hop", "keep-alive", "proxy-connection"] {
            assert!(!h.contains_key(gone), "response kept {gone}");
        }
        assert_eq!(h["x-app"], "kept");
        let dump = String::from_utf8(body_bytes(resp).await).unwrap();
        assert!(released(&flag));
        let mut lines = dump.lines();
        assert_eq!(lines.next(), Some("POST /head?a=1&b=2 HTTP/1.1"));
        let headers: Vec<&str> = lines.collect();
        let expected = [
            "host: alice.test:8080",
            "x-forwarded-for: 2001:db8::7",
            "x-real-ip: 2001:db8::7",
            "x-forwarded-proto: https",
            "x-forwarded-host: alice.test",
            "forwarded: for=\"[2001:db8::7]\";proto=https;host=\"alice.test\"",
            "cookie: a=b",
            "content-length: 5",
        ];
        for line in expected {
            assert!(headers.contains(&line), "{line:?} missing in {dump}");
        }
        assert_eq!(
            headers.len(),
            expected.len(),
            "unexpected headers in {dump}"
        );
    }

    #[tokio::test]
    async fn host_comes_from_the_authority_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let socket = start_app(dir.path());
        // As an HTTP/2 request arrives: no Host, an absolute URI.
        let req = Request::get("https://alice.test:8443/head")
            .version(http::Version::HTTP_2)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send(&socket, (), req, timing(Duration::from_secs(5), false))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        let dump = String::from_utf8(body_bytes(resp).await).unwrap();
        assert!(dump.starts_with("GET /head HTTP/1.1\n"), "{dump}");
        assert!(dump.contains("\nhost: alice.test:8443\n"), "{dump}");
    }

    #[tokio::test]
    async fn an_upgrade_without_hypers_extension_is_an_ordinary_request() {
        let dir = tempfile::tempdir().unwrap();
        let socket = start_app(dir.path());
        let req = Request::get("/head")
            .header("host", "alice.test")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send(&socket, (), req, timing(Duration::from_secs(5), false))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        let dump = String::from_utf8(body_bytes(resp).await).unwrap();
        assert!(!dump.contains("connection:"), "kept alive: {dump}");
        assert!(!dump.contains("upgrade"), "{dump}");
    }

    #[tokio::test]
    async fn a_large_request_body_streams_through_intact() {
        let dir = tempfile::tempdir().unwrap();
        let socket = start_app(dir.path());
        let len = 1 << 20;
        // A chunked body on a method hyper would otherwise send without one.
        for method in [Method::POST, Method::GET] {
            let req = Request::builder()
                .method(method.clone())
                .uri("/echo")
                .header("host", "alice.test")
                .body(Pattern { sent: 0, len })
                .unwrap();
            let (g, flag) = guard();
            let resp = send(&socket, g, req, timing(Duration::from_secs(5), false))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
            let got = body_bytes(resp).await;
            assert!(got == pattern(len), "{method}: {} bytes back", got.len());
            assert!(released(&flag));
        }
    }

    #[tokio::test]
    async fn a_large_response_streams_and_the_guard_waits_for_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let socket = start_app(dir.path());
        let req = Request::get("/big")
            .header("host", "alice.test")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let (g, flag) = guard();
        let resp = send(&socket, g, req, timing(Duration::from_secs(5), false))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        assert!(!resp.headers().contains_key("transfer-encoding"));
        let mut body = resp.into_body();
        let mut got = Vec::new();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        got.extend_from_slice(&first);
        assert!(!released(&flag), "released with the body half read");
        while let Some(frame) = body.frame().await {
            got.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        assert!(released(&flag), "still held after the end");
        assert!(got == pattern(5 << 20), "{} bytes", got.len());
    }

    #[tokio::test]
    async fn dropping_the_response_body_releases_the_guard() {
        let dir = tempfile::tempdir().unwrap();
        let socket = start_app(dir.path());
        let req = Request::get("/big")
            .header("host", "alice.test")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let (g, flag) = guard();
        let resp = send(&socket, g, req, timing(Duration::from_secs(5), false))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        let mut body = resp.into_body();
        body.frame().await.unwrap().unwrap();
        assert!(!released(&flag));
        drop(body);
        assert!(released(&flag));
    }

    #[tokio::test]
    async fn a_missing_or_dead_socket_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        // A socket file nobody listens on any more: connection refused.
        let dead = dir.path().join("dead.sock");
        drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
        for socket in [dead, dir.path().join("missing.sock")] {
            let (g, flag) = guard();
            let req = Request::get("/").body(Empty::<Bytes>::new()).unwrap();
            match send(&socket, g, req, timing(Duration::from_secs(5), false)).await {
                Err((AppFailure::Gone(_), g)) => {
                    assert!(!released(&flag), "the guard comes back");
                    drop(g);
                }
                other => panic!("{socket:?}: {:?}", other.map(|_| ()).map_err(|e| e.0)),
            }
        }
    }

    #[tokio::test]
    async fn an_app_that_never_answers_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let socket = start_app(dir.path());
        let limit = Duration::from_millis(200);
        for fresh in [false, true] {
            let req = Request::get("/hang")
                .header("host", "alice.test")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let start = std::time::Instant::now();
            let failure = send(&socket, (), req, timing(limit, fresh))
                .await
                .map(|_| ())
                .unwrap_err()
                .0;
            let took = start.elapsed();
            assert!(took >= limit && took < limit * 5, "{took:?}");
            match (fresh, failure) {
                (false, AppFailure::Timeout(t)) | (true, AppFailure::StartTimeout(t)) => {
                    assert_eq!(t, limit)
                }
                (_, other) => panic!("fresh {fresh}: {other:?}"),
            }
        }
    }

    /// A "server" that reads the request head and closes (or, with `garbage`,
    /// answers something that is not HTTP).
    fn start_rude_app(dir: &Path, answer: &'static [u8]) -> std::path::PathBuf {
        let path = dir.join("rude.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                let mut buf = [0; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(answer).await;
            }
        });
        path
    }

    #[tokio::test]
    async fn an_app_closing_without_an_answer_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let socket = start_rude_app(dir.path(), b"");
        let (g, flag) = guard();
        let req = Request::get("/").body(Empty::<Bytes>::new()).unwrap();
        match send(&socket, g, req, timing(Duration::from_secs(5), false)).await {
            Err((AppFailure::Protocol(why), g)) => {
                assert!(why.contains("closed the connection"), "{why}");
                assert!(!released(&flag), "the guard comes back");
                drop(g);
            }
            other => panic!("{:?}", other.map(|_| ()).map_err(|e| e.0)),
        }
        assert!(released(&flag));
    }

    #[tokio::test]
    async fn an_app_answering_garbage_is_a_protocol_error() {
        let dir = tempfile::tempdir().unwrap();
        for answer in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 999999 No\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
        ] {
            let sub = dir.path().join(format!("{}", answer.len()));
            std::fs::create_dir(&sub).unwrap();
            let socket = start_rude_app(&sub, answer);
            let req = Request::get("/").body(Empty::<Bytes>::new()).unwrap();
            match send(&socket, (), req, timing(Duration::from_secs(5), false)).await {
                Err((AppFailure::Protocol(_), ())) => {}
                other => panic!(
                    "{:?}: {:?}",
                    String::from_utf8_lossy(answer),
                    other.map(|_| ()).map_err(|e| e.0)
                ),
            }
        }
    }

    #[tokio::test]
    async fn an_app_dying_mid_body_fails_the_body_and_releases_the_guard() {
        let dir = tempfile::tempdir().unwrap();
        let socket = start_rude_app(
            dir.path(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this",
        );
        let (g, flag) = guard();
        let req = Request::get("/").body(Empty::<Bytes>::new()).unwrap();
        let resp = send(&socket, g, req, timing(Duration::from_secs(5), false))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        assert!(resp.into_body().collect().await.is_err());
        assert!(released(&flag));
    }

    #[tokio::test]
    async fn content_length_beside_chunked_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let socket = start_rude_app(
            dir.path(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n",
        );
        let req = Request::get("/").body(Empty::<Bytes>::new()).unwrap();
        let resp = send(&socket, (), req, timing(Duration::from_secs(5), false))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        assert!(!resp.headers().contains_key("content-length"));
        assert!(!resp.headers().contains_key("transfer-encoding"));
        assert_eq!(body_bytes(resp).await, b"hello");
    }

    #[tokio::test]
    async fn an_app_silent_mid_body_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slow.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome")
                .await;
            std::future::pending::<()>().await;
        });
        let (g, flag) = guard();
        let req = Request::get("/").body(Empty::<Bytes>::new()).unwrap();
        let mut t = timing(Duration::from_secs(5), false);
        t.idle = Duration::from_millis(100);
        let resp = send(&path, g, req, t).await.map_err(|(e, _)| e).unwrap();
        let err = resp.into_body().collect().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(released(&flag));
    }

    /// A front end as berth's: hyper serving with upgrades, calling
    /// [`exchange`] with the request's parts as they come.
    fn start_front(
        dir: &Path,
        app: std::path::PathBuf,
        flag: Arc<AtomicBool>,
    ) -> std::path::PathBuf {
        let path = dir.join("front.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let app = app.clone();
                let flag = flag.clone();
                let svc = service_fn(move |req: Request<Incoming>| {
                    let app = app.clone();
                    let flag = flag.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let timing = timing(Duration::from_secs(5), false);
                        let fwd = forwarded();
                        let guard = Guard(flag);
                        Ok::<_, Infallible>(
                            match exchange(
                                &Target::unix(&app),
                                guard,
                                &parts,
                                Some(body),
                                &fwd,
                                timing,
                            )
                            .await
                            {
                                Ok(resp) => resp,
                                Err((e, _)) => {
                                    let mut resp =
                                        Response::new(crate::front::body::full(e.to_string()));
                                    *resp.status_mut() = StatusCode::BAD_GATEWAY;
                                    resp
                                }
                            },
                        )
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades(),
                );
            }
        });
        path
    }

    #[tokio::test]
    async fn websocket_upgrades_are_tunnelled() {
        let dir = tempfile::tempdir().unwrap();
        let app = start_app(dir.path());
        let flag = Arc::new(AtomicBool::new(false));
        let front = start_front(dir.path(), app, flag.clone());

        let stream = UnixStream::connect(&front).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        let req = Request::get("/ws")
            .header("host", "alice.test")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let mut resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(resp.headers()["upgrade"], "websocket");
        assert_eq!(resp.headers()["connection"], "upgrade");
        assert_eq!(resp.headers()["sec-websocket-accept"], "test");
        let upgraded = hyper::upgrade::on(&mut resp).await.unwrap();
        let mut io = TokioIo::new(upgraded);
        for message in [
            &b"ping"[..],
            &[0u8, 255, 13, 10, 13, 10][..],
            &[7; 100_000][..],
        ] {
            io.write_all(message).await.unwrap();
            let mut back = vec![0; message.len()];
            io.read_exact(&mut back).await.unwrap();
            assert_eq!(back, message);
        }
        assert!(!released(&flag), "released while the tunnel is open");
        io.shutdown().await.unwrap();
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        drop(io);
        for _ in 0..100 {
            if released(&flag) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("still held after the tunnel closed");
    }

    #[tokio::test]
    async fn a_refused_upgrade_is_an_ordinary_response() {
        let dir = tempfile::tempdir().unwrap();
        let app = start_app(dir.path());
        let flag = Arc::new(AtomicBool::new(false));
        let front = start_front(dir.path(), app, flag.clone());
        let stream = UnixStream::connect(&front).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        let req = Request::get("/head")
            .header("host", "alice.test")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(!resp.headers().contains_key("upgrade"));
        let dump = resp.into_body().collect().await.unwrap().to_bytes();
        let dump = String::from_utf8(dump.to_vec()).unwrap();
        assert!(
            dump.contains("\nconnection: upgrade\nupgrade: websocket\n"),
            "{dump}"
        );
        assert!(released(&flag));
    }

    #[test]
    fn forwarded_values_follow_rfc_7239() {
        let v4: IpAddr = "192.0.2.60".parse().unwrap();
        let v6: IpAddr = "2001:db8:cafe::17".parse().unwrap();
        assert_eq!(
            forwarded_value(v4, "http", Some("example.com")),
            "for=192.0.2.60;proto=http;host=\"example.com\""
        );
        assert_eq!(
            forwarded_value(v6, "https", Some("[::1]:8080")),
            "for=\"[2001:db8:cafe::17]\";proto=https;host=\"[::1]:8080\""
        );
        assert_eq!(
            forwarded_value(v4, "http", Some("a\"b\\c")),
            "for=192.0.2.60;proto=http;host=\"a\\\"b\\\\c\""
        );
        assert_eq!(
            forwarded_value(v4, "http", None),
            "for=192.0.2.60;proto=http"
        );
    }

    #[test]
    fn mapped_ipv4_clients_are_reported_as_ipv4() {
        let mut headers = HeaderMap::new();
        let fwd = Forwarded {
            client: "[::ffff:192.0.2.1]:1234".parse().unwrap(),
            proto_https: false,
            host: "alice.test",
            mark: None,
        };
        set_proxy_headers(&mut headers, &fwd);
        assert_eq!(headers["x-forwarded-for"], "192.0.2.1");
        assert_eq!(
            headers["forwarded"],
            "for=192.0.2.1;proto=http;host=\"alice.test\""
        );
    }

    #[test]
    fn the_name_matches_cover_the_lists() {
        for name in HOP_BY_HOP {
            assert!(is_hop_by_hop(&name) && never_forwarded(&name), "{name}");
        }
        for name in PROXY_HEADERS.iter().chain([&header::EXPECT]) {
            assert!(never_forwarded(name) && !is_hop_by_hop(name), "{name}");
        }
        for kept in ["host", "cookie", "x-forwarded", "x-app", "content-length"] {
            let name = HeaderName::from_static(kept);
            assert!(!never_forwarded(&name) && !is_hop_by_hop(&name), "{kept}");
        }
    }

    #[test]
    fn proxy_header_values_are_what_the_app_is_told() {
        let mut headers = HeaderMap::new();
        let fwd = Forwarded {
            client: "203.0.113.254:1".parse().unwrap(),
            proto_https: true,
            host: "Alice.test:8443",
            mark: None,
        };
        set_proxy_headers(&mut headers, &fwd);
        assert_eq!(headers["x-forwarded-for"], "203.0.113.254");
        assert_eq!(headers["x-real-ip"], "203.0.113.254");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "Alice.test:8443");
        assert_eq!(
            headers["forwarded"],
            "for=203.0.113.254;proto=https;host=\"Alice.test:8443\""
        );
        // A host that cannot be a header value is left out, not passed on.
        let mut headers = HeaderMap::new();
        let fwd = Forwarded {
            host: "a\nb",
            ..fwd
        };
        set_proxy_headers(&mut headers, &fwd);
        assert!(!headers.contains_key("x-forwarded-host"));
        assert_eq!(headers["forwarded"], "for=203.0.113.254;proto=https");
    }

    #[test]
    fn connection_cannot_remove_host() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("alice.test"));
        headers.insert(
            "connection",
            HeaderValue::from_static("Host, x-a, bad name, ,"),
        );
        headers.insert("x-a", HeaderValue::from_static("1"));
        headers.insert("x-b", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 2);
        assert!(headers.contains_key("host") && headers.contains_key("x-b"));
    }
}
