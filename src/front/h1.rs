//! The HTTP/1.1 fast lane for plain connections: the common request — `GET` or
//! `HEAD`, no body, no upgrade — is parsed (httparse) and answered here, and
//! every other request hands the connection to hyper.
//!
//! Position in the request flow: right after accept on a plain listener; it
//! calls the same [`handler::respond`] as hyper does, so routing, auth, static
//! files and logging are identical on both paths. What it saves is hyper's
//! general machinery (its dispatcher, header and buffer handling), which was
//! half of berth's own CPU time per static request — the difference between
//! 0.7× and 1× nginx on small files.
//!
//! Anything unusual goes to hyper with the bytes read so far replayed
//! ([`Rewind`]), and hyper keeps the connection from then on: a body
//! (`Content-Length` other than 0, `Transfer-Encoding`), `Upgrade`, `Expect`, an
//! absolute-form or `*` target, more than [`MAX_FAST_HEADERS`] headers, a head
//! larger than `max_header_bytes`, anything httparse or `http` refuses, and the
//! HTTP/2 prior-knowledge preface. So hyper remains the one judge of malformed
//! input; this lane never has to answer it.
//!
//! One exception, at the start of a connection: a first line that is not an
//! HTTP/1 request line (it does not end in `HTTP/1.x`), such as a broken HTTP/2
//! preface, is not HTTP/1.1 at all. This listener also speaks HTTP/2 by prior
//! knowledge, so it is refused the way HTTP/2 refuses a bad preface, with
//! GOAWAY(PROTOCOL_ERROR) (RFC 9113 §3.4), not with an HTTP/1.1 400 that an
//! HTTP/2 client would read as a broken frame ([`start`]).
//!
//! Timeouts are the watchdog's rules in `conn.rs`: the first request head must
//! be complete within `header_timeout`, later ones within `keepalive_timeout` of
//! the previous response; a client that accepts no bytes of a response for
//! `send_timeout` is dropped. The connection's [`Activity`] counts a request
//! from its complete head until its response is written: while the lane
//! waits for a head, the first one or the next, the connection may be closed
//! to make room at a connection cap.

use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::Interest;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};
use tracing::debug;

use super::Shared;
use super::access_log::Counted;
use super::conn::{self, Activity, ConnInfo, H2_PREFACE};
use super::handler;
use super::static_files::FileRange;
use crate::config::ClientLimits;
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};

/// Requests with more header fields than this go to hyper (which applies the
/// configured `max_headers`).
pub const MAX_FAST_HEADERS: usize = 64;

/// Response bytes up to this size are copied into one buffer and sent with one
/// `write`; larger bodies go out with `writev` straight from their `Bytes`.
const COALESCE: usize = 16 * 1024;

/// What the lane decided about one buffered request head. (Built once per
/// request and matched at once; boxing `Parts` would only add an allocation.)
#[allow(clippy::large_enum_variant)]
enum Head {
    /// Serve it here; the head is `len` bytes long.
    Fast {
        parts: http::request::Parts,
        len: usize,
        keep_alive: bool,
    },
    /// More bytes are needed.
    Partial,
    /// Not for this lane: give the connection to hyper.
    Hyper,
}

/// Serves a plain TCP connection until it closes or is handed to hyper.
pub async fn serve(
    stream: TcpStream,
    info: Arc<ConnInfo>,
    activity: Arc<Activity>,
    limits: ClientLimits,
    shared: Arc<Shared>,
) {
    let mut stream = stream;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    let drain = shared.drain.clone();
    // One wait for the drain for the whole connection: a `changed()` made
    // per request registered and removed a waiter (a lock each) every time.
    let mut drain_wait = shared.drain.clone();
    let mut drained = pin!(drain_wait.changed());
    let mut served = false;
    let timer = pin!(sleep_until(Instant::now() + limits.header_timeout));
    let mut timer = timer;
    loop {
        if *drain.borrow() {
            return;
        }
        let allowed = if served {
            limits.keepalive_timeout
        } else {
            limits.header_timeout
        };
        timer.as_mut().reset(Instant::now() + allowed);

        // 1. A complete head in `buf`, or a reason to stop.
        let (parts, len, keep_alive) = loop {
            if !buf.is_empty() {
                let mut head = parse(&buf);
                if !served && !matches!(head, Head::Fast { .. }) {
                    match start(&buf, limits.max_header_bytes) {
                        Start::Http2 => {
                            return handoff(stream, buf, info, activity, &limits, shared).await;
                        }
                        Start::NotHttp1 => {
                            debug!(
                                "{}: neither HTTP/1 nor the HTTP/2 preface; GOAWAY",
                                info.peer
                            );
                            return conn::refuse_h2(stream).await;
                        }
                        Start::Partial => head = Head::Partial,
                        Start::Http1 => {}
                    }
                }
                match head {
                    Head::Fast {
                        parts,
                        len,
                        keep_alive,
                    } => break (parts, len, keep_alive),
                    Head::Hyper => {
                        return handoff(stream, buf, info, activity, &limits, shared).await;
                    }
                    Head::Partial if buf.len() >= limits.max_header_bytes => {
                        // hyper answers 431 once it has read the rest.
                        return handoff(stream, buf, info, activity, &limits, shared).await;
                    }
                    Head::Partial => {}
                }
            }
            buf.reserve(4096);
            tokio::select! {
                ready = stream.readable() => {
                    if ready.is_err() {
                        return;
                    }
                    match read_some(&stream, &mut buf) {
                        Ok(0) => return,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return,
                    }
                }
                _ = timer.as_mut() => {
                    debug!("{}: no complete request within {allowed:?}; closing", info.peer);
                    return;
                }
                _ = drained.as_mut(), if buf.is_empty() => return,
            }
        };

        // 2. Answer it. Until the response is written, the connection is not
        // closed to make room (between heads, it may be: see conn.rs).
        let busy = activity.busy();
        let head_only = parts.method == Method::HEAD;
        let http10 = parts.version == Version::HTTP_10;
        // A client that goes away before its response starts cancels the
        // request (as hyper does), so it no longer waits in an app's queue.
        let response = tokio::select! {
            // Most responses are ready at the first poll: no peek for them.
            biased;
            response = handler::respond(parts, None, &info, &shared, activity.clone()) => response,
            () = peer_gone(&stream) => {
                debug!("{}: closed by the client before its response; cancelled", info.peer);
                return;
            }
        };
        let keep_alive = keep_alive && !*drain.borrow();
        let sent = write_response(
            &mut stream,
            &mut out,
            response,
            head_only,
            http10,
            keep_alive,
            limits.send_timeout,
        )
        .await;
        drop(busy);
        buf.drain(..len);
        served = true;
        match sent {
            Ok(true) => {}
            Ok(false) | Err(_) => return,
        }
    }
}

/// Reads what the socket holds into the spare capacity of `buf` (which has
/// some). A read that leaves room has taken everything the kernel had (TCP's
/// recv returns all it holds up to the size asked): then the socket is
/// marked not readable, as a read returning EAGAIN would, and the next wait
/// goes to epoll instead of trying a read that fails (nginx does the same).
/// That saved one system call per request: the read after each response on a
/// kept connection, or the `peer_gone` peek while an app answers. New bytes
/// after this read still wake the lane: the socket is edge-triggered, and
/// tokio clears the readiness only if no event came in between.
fn read_some(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut drained = None;
    let read = stream.try_io(Interest::READABLE, || {
        let room = buf.capacity() - buf.len();
        let (n, _) = rustix::net::recv(
            stream,
            rustix::buffer::spare_capacity(buf),
            RecvFlags::empty(),
        )?;
        if n > 0 && n < room {
            drained = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (read, drained) {
        (_, Some(n)) => Ok(n),
        (read, None) => read,
    }
}

/// Completes when the client has closed the connection (or reset it). Bytes
/// that arrive meanwhile (a pipelined request) say nothing about it: then
/// this never completes.
async fn peer_gone(stream: &TcpStream) {
    match stream.peek(&mut [0u8; 1]).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// Parses the head at the start of `buf` and decides whether this lane takes it.
fn parse(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_FAST_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Hyper,
    };
    let method = match req.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        _ => return Head::Hyper,
    };
    let version = match req.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Head::Hyper,
    };
    let Some(path) = req.path.filter(|p| p.starts_with('/')) else {
        return Head::Hyper;
    };
    // The target and the header values are slices of one copy of the head:
    // one allocation for all of them, and cloning one later (the proxy's
    // request, the access log) is a reference count, not a copy.
    let head = Bytes::copy_from_slice(&buf[..len]);
    let within = |part: &[u8]| match offset_in(&buf[..len], part) {
        Some(start) => head.slice(start..start + part.len()),
        None => Bytes::copy_from_slice(part),
    };
    let Ok(uri) = Uri::from_maybe_shared(within(path.as_bytes())) else {
        return Head::Hyper;
    };
    let mut parts = http::Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    // HTTP/1.1 keeps the connection unless told otherwise; HTTP/1.0 closes it
    // unless asked to keep it.
    let mut keep_alive = version == Version::HTTP_11;
    parts.headers.reserve(req.headers.len());
    for h in req.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Head::Hyper;
        };
        if name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == header::EXPECT
            || (name == header::CONTENT_LENGTH && h.value != b"0")
        {
            return Head::Hyper;
        }
        if name == header::CONNECTION {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Head::Hyper;
                }
            }
        }
        let Ok(value) = HeaderValue::from_maybe_shared(within(h.value)) else {
            return Head::Hyper;
        };
        parts.headers.append(name, value);
    }
    Head::Fast {
        parts,
        len,
        keep_alive,
    }
}

/// How a plain connection starts, when its first bytes are no request for the
/// lane.
#[derive(Debug, PartialEq)]
enum Start {
    /// The HTTP/2 preface: h2c by prior knowledge, for hyper.
    Http2,
    /// The beginning of the preface, or of a first line: more bytes are needed.
    Partial,
    /// A first line that is not an HTTP/1 request line.
    NotHttp1,
    /// HTTP/1 (well-formed or not): the lane or hyper answers it.
    Http1,
}

fn start(buf: &[u8], max_header_bytes: usize) -> Start {
    if buf.starts_with(H2_PREFACE) {
        return Start::Http2;
    }
    if H2_PREFACE.starts_with(buf) {
        return Start::Partial;
    }
    // Empty lines before the request line are allowed (RFC 9112 §2.2).
    let text = match buf.iter().position(|&b| b != b'\r' && b != b'\n') {
        Some(at) => &buf[at..],
        None => return Start::Partial,
    };
    let Some(end) = text.iter().position(|&b| b == b'\n') else {
        // A line still arriving: wait for its end. Binary bytes (TLS on the
        // plain port) are hyper's to refuse, as is a line past the limit.
        let printable = text
            .iter()
            .all(|&b| b == b'\r' || b == b'\t' || (0x20..0x7f).contains(&b));
        return if printable && buf.len() < max_header_bytes {
            Start::Partial
        } else {
            Start::Http1
        };
    };
    let line = text[..end].strip_suffix(b"\r").unwrap_or(&text[..end]);
    // request-line = method SP request-target SP HTTP-version (RFC 9112 §3).
    let http1 = line.len() > 9
        && line[line.len() - 9..line.len() - 1] == *b" HTTP/1."
        && line[line.len() - 1].is_ascii_digit();
    if http1 { Start::Http1 } else { Start::NotHttp1 }
}

/// Where `part` (a slice httparse took from `buf`) starts in `buf`; None for
/// an empty part, whose pointer may lie anywhere.
fn offset_in(buf: &[u8], part: &[u8]) -> Option<usize> {
    let start = (part.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
    (!part.is_empty() && start + part.len() <= buf.len()).then_some(start)
}

/// Writes the response head and body. Returns whether the connection may carry
/// another request.
async fn write_response(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    response: http::Response<Counted>,
    head_only: bool,
    http10: bool,
    keep_alive: bool,
    send_timeout: Duration,
) -> io::Result<bool> {
    let (head, body) = response.into_parts();
    let status = head.status;
    // 1xx, 204 and 304 never have a body (RFC 9110 §6.4.1); HEAD sends none.
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let send_body = !head_only && !bodiless;
    let length = body.size_hint().exact();
    // Without a known length an HTTP/1.1 body is chunked; HTTP/1.0 has no
    // chunks, so there the end of the body is the end of the connection.
    let chunked = send_body && length.is_none() && !http10;
    let keep_alive = keep_alive && (length.is_some() || !send_body || chunked);

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &head.headers {
        // A body sent is framed by its own length alone: a Content-Length
        // field beside chunked framing, or one that disagrees with the body,
        // would let whoever set it decide where a proxy in front of berth
        // thinks this response ends (and smuggle the next one).
        if send_body && (name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !bodiless
        && (send_body || !head.headers.contains_key(header::CONTENT_LENGTH))
        && let Some(n) = length
    {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    // An app's own Date stays (as hyper does): one Date per response.
    if !head.headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&http_date_now());
        out.extend_from_slice(b"\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");

    if send_body
        && let Some(file) = head.extensions.get::<FileRange>()
        && length == Some(file.end - file.start)
    {
        send_with_file(stream, out, file, send_timeout, body).await?;
        return Ok(keep_alive);
    }
    if !send_body {
        // Dropping the body ends it: the access log gets its line now.
        drop(body);
        write_all(stream, [IoSlice::new(out)], send_timeout).await?;
        return Ok(keep_alive);
    }
    let mut body = pin!(body);
    // Frames are gathered into `out` while more are ready at once, and sent
    // when the body would wait (so a streaming app's output is not held back)
    // or `out` is full; large frames go out with writev, uncopied.
    loop {
        let ready = std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await;
        let next = match ready {
            Poll::Ready(next) => next,
            Poll::Pending => {
                if !out.is_empty() {
                    write_all(stream, [IoSlice::new(out)], send_timeout).await?;
                    out.clear();
                }
                body.as_mut().frame().await
            }
        };
        let Some(frame) = next else { break };
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        let mut size = [0u8; 20];
        let size = if chunked {
            let n = chunk_size_line(&mut size, data.len());
            &size[..n]
        } else {
            &size[..0]
        };
        let trailer: &[u8] = if chunked { b"\r\n" } else { b"" };
        if out.len() + data.len() <= COALESCE {
            out.extend_from_slice(size);
            out.extend_from_slice(&data);
            out.extend_from_slice(trailer);
        } else {
            write_all(
                stream,
                [
                    IoSlice::new(out),
                    IoSlice::new(size),
                    IoSlice::new(&data),
                    IoSlice::new(trailer),
                ],
                send_timeout,
            )
            .await?;
            out.clear();
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        write_all(stream, [IoSlice::new(out)], send_timeout).await?;
    }
    Ok(keep_alive)
}

/// Writes "HEX\r\n" for a chunk of `len` bytes into `buf`; returns its length.
fn chunk_size_line(buf: &mut [u8; 20], len: usize) -> usize {
    let mut rest = &mut buf[..];
    io::Write::write_fmt(&mut rest, format_args!("{len:x}\r\n"))
        .expect("16 hex digits and CRLF fit");
    20 - rest.len()
}

/// Sends the head with `MSG_MORE` (so it leaves in one packet with the first
/// file bytes) and the body straight from the file with `sendfile`: no copy
/// through user memory. The body is dropped unread; the access log counts the
/// bytes sendfile sent.
async fn send_with_file(
    stream: &TcpStream,
    out: &[u8],
    file: &FileRange,
    timeout: Duration,
    mut body: Counted,
) -> io::Result<()> {
    let mut written = 0;
    while written < out.len() {
        let rest = &out[written..];
        match io_op(stream, timeout, || {
            rustix::net::send(stream, rest, SendFlags::MORE | SendFlags::NOSIGNAL)
        })
        .await
        {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let mut offset = file.start;
    while offset < file.end {
        let want = usize::try_from(file.end - offset).unwrap_or(usize::MAX);
        match io_op(stream, timeout, || {
            rustix::fs::sendfile(stream, &*file.fd, Some(&mut offset), want)
        })
        .await
        {
            // The file shrank: the promised length cannot be sent.
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => body.add_sent(n as u64),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Runs a non-blocking write-side system call on the socket, waiting (at most
/// `timeout`) for writability while it would block. Going through tokio's
/// `async_io` keeps its readiness state right for raw calls.
async fn io_op<T>(
    stream: &TcpStream,
    timeout: Duration,
    mut op: impl FnMut() -> Result<T, Errno>,
) -> io::Result<T> {
    tokio::time::timeout(
        timeout,
        stream.async_io(Interest::WRITABLE, || op().map_err(io::Error::from)),
    )
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

async fn wait_writable(stream: &TcpStream, timeout: Duration) -> io::Result<()> {
    tokio::time::timeout(timeout, stream.writable())
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// Writes every byte of `bufs`, waiting at most `timeout` for the client to
/// accept more each time its socket buffer is full.
async fn write_all<const N: usize>(
    stream: &TcpStream,
    mut bufs: [IoSlice<'_>; N],
    timeout: Duration,
) -> io::Result<()> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let mut slices = &mut bufs[..];
    let mut written = 0;
    while written < total {
        match stream.try_write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                written += n;
                // Past what was written, in place.
                IoSlice::advance_slices(&mut slices, n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_writable(stream, timeout).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The `Date` value for now, formatted once a second per thread.
fn http_date_now() -> [u8; 29] {
    thread_local! {
        static CACHE: std::cell::Cell<(u64, [u8; 29])> = const { std::cell::Cell::new((0, [0; 29])) };
    }
    let now = super::access_log::coarse_now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let (at, text) = c.get();
        if at == secs {
            return text;
        }
        let mut fresh = [0u8; 29];
        let formatted = httpdate::fmt_http_date(now);
        fresh.copy_from_slice(&formatted.as_bytes()[..29]);
        c.set((secs, fresh));
        fresh
    })
}

/// Gives the connection to hyper, replaying what was read but not answered.
async fn handoff(
    stream: TcpStream,
    buffered: Vec<u8>,
    info: Arc<ConnInfo>,
    activity: Arc<Activity>,
    limits: &ClientLimits,
    shared: Arc<Shared>,
) {
    let io = Rewind::new(Bytes::from(buffered), stream);
    conn::serve(io, info, activity, limits, shared).await
}

/// A stream that first yields `prefix`, then reads from `inner`.
pub struct Rewind<I> {
    prefix: Bytes,
    inner: I,
}

impl<I> Rewind<I> {
    pub fn new(prefix: Bytes, inner: I) -> Rewind<I> {
        Rewind { prefix, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast(req: &str) -> (http::request::Parts, usize, bool) {
        match parse(req.as_bytes()) {
            Head::Fast {
                parts,
                len,
                keep_alive,
            } => (parts, len, keep_alive),
            Head::Partial => panic!("partial: {req:?}"),
            Head::Hyper => panic!("handed to hyper: {req:?}"),
        }
    }

    fn to_hyper(req: &str) -> bool {
        matches!(parse(req.as_bytes()), Head::Hyper)
    }

    #[test]
    fn plain_gets_stay_in_the_lane() {
        let (parts, len, keep) = fast("GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /next");
        assert_eq!(parts.uri.path(), "/a");
        assert_eq!(parts.uri.query(), Some("b=1"));
        assert_eq!(parts.headers["host"], "x");
        assert_eq!(len, "GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n".len());
        assert!(keep);
        let (parts, _, keep) = fast("HEAD / HTTP/1.0\r\nHost: x\r\n\r\n");
        assert_eq!(parts.method, Method::HEAD);
        assert!(!keep, "HTTP/1.0 closes by default");
        assert!(fast("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").2);
        assert!(!fast("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").2);
        assert!(fast("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").2);
        // Values are slices of one copy of the head; an empty one too.
        let (parts, _, _) = fast("GET /p HTTP/1.1\r\nHost: x\r\nX-Empty:\r\nX-B: 2\r\n\r\n");
        assert_eq!(parts.uri, "/p");
        assert_eq!(parts.headers["x-empty"], "");
        assert_eq!(parts.headers["x-b"], "2");
        let (parts, _, _) = fast("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
        assert_eq!(
            parts.headers.get_all("host").iter().count(),
            2,
            "kept for the handler to refuse"
        );
    }

    #[test]
    fn everything_unusual_goes_to_hyper() {
        for req in [
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
            "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            "GARBAGE\r\n\r\n",
        ] {
            assert!(to_hyper(req), "{req:?} should go to hyper");
        }
        let many: String = (0..MAX_FAST_HEADERS + 1)
            .map(|i| format!("X-{i}: y\r\n"))
            .collect();
        assert!(to_hyper(&format!("GET / HTTP/1.1\r\n{many}\r\n")));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Head::Partial
        ));
    }

    /// `read_some` marks a socket it drained as not readable; the next
    /// bytes (or the client's close) must still wake the lane.
    #[tokio::test]
    async fn a_drained_socket_still_wakes_for_the_next_request() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut buf = Vec::with_capacity(4096);
        // Generous bounds: each wait is for bytes already sent on loopback.
        let within = Duration::from_secs(10);
        for round in 0..3 {
            let request = format!("GET /{round} HTTP/1.1\r\nHost: x\r\n\r\n");
            client.write_all(request.as_bytes()).await.unwrap();
            let mut got = 0;
            while got < request.len() {
                tokio::time::timeout(within, server.readable())
                    .await
                    .expect("woken for the request")
                    .unwrap();
                match read_some(&server, &mut buf) {
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
            assert!(buf.ends_with(request.as_bytes()));
            // Drained: the socket is not tried again until epoll says so.
            assert_eq!(
                read_some(&server, &mut buf).unwrap_err().kind(),
                io::ErrorKind::WouldBlock
            );
        }
        drop(client);
        tokio::time::timeout(within, server.readable())
            .await
            .expect("woken for the close")
            .unwrap();
        assert_eq!(read_some(&server, &mut buf).unwrap(), 0, "end of stream");
    }

    #[test]
    fn a_first_line_that_is_not_http1_is_a_broken_h2_preface() {
        let start = |b: &str| start(b.as_bytes(), 16384);
        assert_eq!(start("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"), Start::Http2);
        assert_eq!(start("PRI * HTTP/2.0\r\n"), Start::Partial);
        assert_eq!(start("INVALID CONNECTION PRE"), Start::Partial);
        assert_eq!(start("\r\n"), Start::Partial);
        for not_http1 in [
            "INVALID CONNECTION PREFACE\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: x\r\n\r\n",
            "GARBAGE\r\n\r\n",
            "GET /\n",
        ] {
            assert_eq!(start(not_http1), Start::NotHttp1, "{not_http1:?}");
        }
        for http1 in [
            "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            "POST / HTTP/1.0\r\n",
            "\r\nGET / HTTP/1.1\r\nHost: x\r\n",
            "GET /\x01 HTTP/1.1\r\n",
            "\x16\x03\x01\x02\x00\x01",
        ] {
            assert_eq!(start(http1), Start::Http1, "{http1:?}");
        }
        let long = "GET /".to_string() + &"a".repeat(20000);
        assert_eq!(
            start(&long),
            Start::Http1,
            "past the limit: hyper's 414/431"
        );
    }

    #[test]
    fn chunk_size_lines_are_hex_and_crlf() {
        let mut buf = [0u8; 20];
        for (len, want) in [(1, "1\r\n"), (255, "ff\r\n"), (65536, "10000\r\n")] {
            let n = chunk_size_line(&mut buf, len);
            assert_eq!(&buf[..n], want.as_bytes());
        }
        let n = chunk_size_line(&mut buf, usize::MAX);
        assert_eq!(&buf[..n], b"ffffffffffffffff\r\n");
    }

    #[test]
    fn date_is_an_http_date() {
        let d = http_date_now();
        let s = std::str::from_utf8(&d).unwrap();
        assert!(httpdate::parse_http_date(s).is_ok(), "{s}");
    }
}
