//! Request bodies on their way to an app, held by berth so that a slow client
//! holds a connection and a buffer, never an app process.
//!
//! Request flow position: handler (which refused a declared `Content-Length`
//! over `max_body` already) → app route → here → the lease of a process.
//!
//! - FastCGI and CGI apps get the whole body, read before a process is taken
//!   ([`read_whole`]): in memory up to `request_buffer`, then in an unlinked
//!   temporary file, and passed with its `CONTENT_LENGTH`, as nginx does. So a
//!   body of unknown length (chunked HTTP/1.1, HTTP/2 without
//!   `content-length`) reaches them as one of known length, and an app never
//!   reads a body that was cut short: a client that stops sending gets 400 and
//!   no app hears of it.
//! - HTTP apps get it whole too by default (`request_buffering = true`, as
//!   nginx's `proxy_request_buffering`): a client trickling its body holds a
//!   connection and a buffer, not one of the app's few processes. With
//!   `request_buffering = false` it streams ([`read_prefix`]): up to
//!   `request_buffer` is read first (a small body whole), then the rest goes to
//!   the app as it comes, counted against `max_body`; a body that passes it
//!   ends in an error, which the app sees as an aborted body, never as a
//!   complete one, and the app's `timeout` for its answer counts from the end
//!   of the body ([`Sent`]).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::conn::Activity;
use super::respond::Reject;
use super::spool::{Peer, Spool, SpoolError, TmpDir};
use super::usage::TenantUsage;
use crate::backend::IdleTimer;

/// What bounds the reading of one request body.
#[derive(Clone)]
pub struct BodyLimits {
    /// `max_body` of the route.
    pub max: u64,
    /// Bytes held in memory (`request_buffer`); more go to a temporary file.
    pub buffer: usize,
    pub tmp: TmpDir,
    /// The longest the client may stay silent in the middle of its body.
    pub idle: Duration,
    /// The client's address's share of the budgets (`spool::Peer`).
    pub peer: Option<Arc<Peer>>,
    /// The connection: told while its body is read, and as bytes come, so
    /// a connection whose client only trickles a body may be closed to
    /// make room at the caps.
    pub conn: Option<Arc<Activity>>,
    /// The site's tenant's counters: the body bytes berth reads from the
    /// client count as its traffic in (what the client really sent, not
    /// what its Content-Length says).
    pub usage: Option<Arc<TenantUsage>>,
}

/// Reads the whole body (FastCGI and CGI apps).
pub async fn read_whole(body: Incoming, limits: &BodyLimits) -> Result<Spool, Reject> {
    let _reading = limits.conn.as_ref().map(|c| c.reading_body());
    let mut spool = Spool::new(limits.buffer, limits.tmp.clone(), limits.peer.clone());
    let mut body = body;
    let mut idle = IdleTimer::new(limits.idle);
    while let Some(data) = next_data(&mut body, &mut idle, limits).await? {
        if spool.unread() + data.len() as u64 > limits.max {
            return Err(Reject::PayloadTooLarge { max: limits.max });
        }
        spool.push(data).map_err(spool_refusal)?;
    }
    Ok(spool)
}

/// A body the budgets cannot hold is refused (503: berth is busy, the client
/// may try again), never kept in memory instead.
fn spool_refusal(e: SpoolError) -> Reject {
    match e {
        SpoolError::Full(what) => Reject::Unavailable {
            why: format!("request body: no room ({what})"),
            retry_after: 5,
        },
        SpoolError::Io(e) => Reject::Internal(format!("request body: temporary file: {e}")),
    }
}

/// What [`read_prefix`] read.
pub enum Prefix {
    /// The whole body (it fit in `request_buffer`).
    Whole(Spool),
    /// The first bytes; the rest is still to come.
    Partial(Spool, Incoming),
}

/// Reads the body up to `request_buffer` bytes, in memory (HTTP apps that
/// take bodies as they come). With no room left in the memory budgets, what
/// came so far goes on at once.
pub async fn read_prefix(body: Incoming, limits: &BodyLimits) -> Result<Prefix, Reject> {
    let _reading = limits.conn.as_ref().map(|c| c.reading_body());
    let mut spool = Spool::new(usize::MAX, None, limits.peer.clone());
    let mut body = body;
    let mut idle = IdleTimer::new(limits.idle);
    loop {
        let full = spool.unread() >= limits.buffer as u64 || !spool.has_room(16 * 1024);
        if full && !body.is_end_stream() {
            return Ok(Prefix::Partial(spool, body));
        }
        match next_data(&mut body, &mut idle, limits).await? {
            Some(data) => {
                if spool.unread() + data.len() as u64 > limits.max {
                    return Err(Reject::PayloadTooLarge { max: limits.max });
                }
                // One piece past the budget at most: it was asked above.
                spool.push_anyway(data).map_err(spool_refusal)?;
            }
            None => return Ok(Prefix::Whole(spool)),
        }
    }
}

/// The next data frame (trailers are dropped: CGI has no place for them),
/// or None at the end.
async fn next_data(
    body: &mut Incoming,
    idle: &mut IdleTimer,
    limits: &BodyLimits,
) -> Result<Option<Bytes>, Reject> {
    std::future::poll_fn(|cx| {
        loop {
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    idle.progress();
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        if let Some(c) = &limits.conn {
                            c.body_progress();
                        }
                        if let Some(u) = &limits.usage {
                            u.received(data.len() as u64);
                        }
                        return Poll::Ready(Ok(Some(data)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(Reject::BodyIncomplete(e.to_string())));
                }
                Poll::Ready(None) => return Poll::Ready(Ok(None)),
                Poll::Pending => {
                    return idle
                        .poll_expired(cx, "the client's body")
                        .map(|e| Err(Reject::BodyIncomplete(e.to_string())));
                }
            }
        }
    })
    .await
}

/// A body read whole, as the app gets it: exact length.
pub struct SpoolBody(pub Spool);

impl HttpBody for SpoolBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        Poll::Ready(self.0.pop().transpose().map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.unread())
    }
}

/// The first bytes of a body, then the rest as it comes, counted against
/// `max_body`. Passing it, a client that goes away or one silent for
/// `body_timeout` is an error for the app (an aborted body), and `fault`
/// keeps the client's share of it: the caller answers it (413, 400) and
/// does not hold the app process responsible.
pub struct Streamed {
    head: Spool,
    rest: Incoming,
    seen: u64,
    max: u64,
    timer: IdleTimer,
    usage: Option<Arc<TenantUsage>>,
    pub fault: ClientFault,
    /// Set once the body is all sent (or failed, or dropped).
    pub sent: Arc<Sent>,
}

/// Set when a streamed body failed by the client's doing.
pub type ClientFault = Arc<Mutex<Option<Reject>>>;

/// When a streamed body ended: until then the client, not the app, is the
/// one being waited for, so the app's `timeout` for its answer counts from
/// there (a slow upload is no app that does not answer).
#[derive(Default)]
pub struct Sent(OnceLock<Instant>);

impl Sent {
    fn finish(&self) {
        let _ = self.0.set(Instant::now());
    }

    /// When the body ended, if it has.
    pub fn finished_at(&self) -> Option<Instant> {
        self.0.get().copied()
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        self.sent.finish();
    }
}

impl Streamed {
    fn fail(&self, reject: Reject, why: String) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.sent.finish();
        let mut fault = self.fault.lock().expect("fault lock");
        fault.get_or_insert(reject);
        Poll::Ready(Some(Err(io::Error::other(why))))
    }
}

impl Streamed {
    pub fn new(head: Spool, rest: Incoming, limits: &BodyLimits) -> Streamed {
        Streamed {
            seen: head.unread(),
            head,
            rest,
            max: limits.max,
            timer: IdleTimer::new(limits.idle),
            usage: limits.usage.clone(),
            fault: ClientFault::default(),
            sent: Arc::default(),
        }
    }
}

impl HttpBody for Streamed {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if let Some(data) = this.head.pop()? {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        match Pin::new(&mut this.rest).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.timer.progress();
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if let Some(u) = &this.usage {
                        u.received(data.len() as u64);
                    }
                    if this.seen > this.max {
                        let max = this.max;
                        return this.fail(
                            Reject::PayloadTooLarge { max },
                            format!("the request body passed max_body ({max} bytes)"),
                        );
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let why = format!("the client's body failed: {e}");
                this.fail(Reject::BodyIncomplete(why.clone()), why)
            }
            Poll::Ready(None) => {
                this.sent.finish();
                Poll::Ready(None)
            }
            Poll::Pending => match this.timer.poll_expired(cx, "the client's body") {
                Poll::Ready(e) => {
                    let why = e.to_string();
                    this.fail(Reject::BodyIncomplete(why.clone()), why)
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.rest.size_hint().exact() {
            Some(n) => SizeHint::with_exact(self.head.unread() + n),
            None => {
                let mut hint = SizeHint::new();
                hint.set_lower(self.head.unread());
                hint
            }
        }
    }
}
