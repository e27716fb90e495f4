//! Response buffering: an app's response is read at the app's pace, and the
//! process goes back to its pool as soon as it has finished, while the client
//! drains the response from berth's buffer (nginx's `proxy_buffering` and
//! `fastcgi_buffering`). A slow client, or an HTTP/2 client that grants no
//! flow-control window, then holds memory and a temporary file for a while,
//! never an app process.
//!
//! Request flow position: app route → backend (the response head has been
//! read; its body holds the lease) → here → handler → the client.
//!
//! - A body that is complete at once (most pages: the app's last bytes came
//!   with its head) becomes a plain in-memory body of known length, so the
//!   client gets a `Content-Length` and no task is spawned.
//! - Otherwise a pump task reads the app's body into a [`Spool`]: memory up to
//!   `response_buffer`, then an unlinked temporary file up to
//!   `max_response_buffer`; beyond that the app is read only as fast as the
//!   client takes (as nginx does at `proxy_max_temp_file_size`).
//! - Streaming responses (`text/event-stream`, `X-Accel-Buffering: no`) are not
//!   buffered: the pump holds at most one piece at a time, so the app's writes
//!   reach the client at once.
//! - Either way, a client that takes nothing of a waiting response for
//!   `send_timeout` loses it with its connection: the fast lane's write times
//!   out, and hyper's connections are watched response by response
//!   (`conn::Progress`, which also sees an HTTP/2 stream whose window stays
//!   shut). The client's side of the body is dropped then, and with it the
//!   pump stops, lets go of the app body (the process) and frees the buffer.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use super::body::Body;
use super::respond::Reject;
use super::spool::{Peer, Reservation, Spool, TmpDir};

/// How one response may be buffered.
#[derive(Clone)]
pub struct BufferLimits {
    /// `response_buffer`: bytes in memory per response.
    pub memory: usize,
    /// `max_response_buffer`: bytes in the temporary file per response.
    pub file: u64,
    pub tmp: TmpDir,
    /// The client's address's share of the budgets (`spool::Peer`).
    pub peer: Option<Arc<Peer>>,
}

/// nginx's header for an app to turn buffering off (or on) per response.
const X_ACCEL_BUFFERING: &str = "x-accel-buffering";

/// Wraps an app's response so that its body is read at the app's pace.
/// An app body that fails before a byte of it could be sent becomes a 502.
pub fn response(resp: Response<Body>, limits: &BufferLimits) -> Result<Response<Body>, Reject> {
    let (mut head, mut body) = resp.into_parts();
    let streaming = is_streaming(&mut head.headers);
    let total = body.size_hint().exact();

    // What the app has sent already, without waiting (within this
    // response's memory and the process's budget). Most bodies are one
    // piece: it needs no queue.
    let mut ready = Pieces::default();
    let mut ready_len = 0;
    let mut reserved = Reservation::memory(limits.peer.clone());
    let mut trailers = None;
    let mut cx = Context::from_waker(Waker::noop());
    let ended = loop {
        if ready_len >= limits.memory {
            break false;
        }
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    let fits = reserved.try_add(data.len());
                    ready_len += data.len();
                    ready.push(data);
                    if !fits {
                        // The spool below puts it in the file.
                        break false;
                    }
                }
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
            Poll::Ready(Some(Err(e))) => {
                return Err(Reject::BadGateway(format!("app response body: {e}")));
            }
            Poll::Ready(None) => break true,
            Poll::Pending => break false,
        }
    };
    if ended {
        // Complete: the process has been let go with the body.
        drop(body);
        let whole = Ready {
            chunks: ready,
            len: ready_len as u64,
            trailers,
            _reserved: reserved,
        };
        return Ok(Response::from_parts(head, whole.boxed_unsync()));
    }

    let cap = if streaming {
        Cap::OnePiece
    } else {
        Cap::Bytes(limits.memory as u64 + if limits.tmp.is_some() { limits.file } else { 0 })
    };
    let mut spool = Spool::new(
        if streaming { usize::MAX } else { limits.memory },
        if streaming { None } else { limits.tmp.clone() },
        limits.peer.clone(),
    );
    drop(reserved);
    for data in ready.first.into_iter().chain(ready.rest) {
        // (At most `response_buffer`, read already.)
        spool
            .push_anyway(data)
            .map_err(|e| Reject::Internal(format!("response buffer: {e}")))?;
    }
    let shared = Arc::new(Mutex::new(State {
        spool,
        trailers,
        done: false,
        error: None,
        reader_gone: false,
        reader: None,
        pump: None,
    }));
    tokio::spawn(pump(body, shared.clone(), cap));
    let reader = Buffered {
        shared,
        remaining: total,
    };
    Ok(Response::from_parts(head, reader.boxed_unsync()))
}

/// Whether the response streams (and is not buffered); removes nginx's
/// `X-Accel-Buffering`, which is meant for the web server only.
fn is_streaming(headers: &mut HeaderMap) -> bool {
    let accel = headers.remove(X_ACCEL_BUFFERING);
    if let Some(v) = &accel {
        if v.as_bytes().eq_ignore_ascii_case(b"no") {
            return true;
        }
        if v.as_bytes().eq_ignore_ascii_case(b"yes") {
            return false;
        }
    }
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .get(..17)
                .is_some_and(|t| t.eq_ignore_ascii_case("text/event-stream"))
        })
}

/// How much the pump holds before it waits for the client.
#[derive(Clone, Copy)]
enum Cap {
    /// Up to this many bytes not taken yet.
    Bytes(u64),
    /// One piece at a time (streaming).
    OnePiece,
}

/// The most one piece read from an app is expected to be (FastCGI records
/// and hyper's reads are smaller); the pump asks for this much room.
const PIECE: usize = 64 * 1024;

impl Cap {
    /// Whether the pump may read another piece. With nothing waiting, always
    /// (one piece, as when streaming): so a response makes progress however
    /// full the budgets are, and only at its client's pace.
    fn room(self, spool: &Spool) -> bool {
        match self {
            Cap::Bytes(n) => spool.is_empty() || (spool.unread() < n && spool.has_room(PIECE)),
            Cap::OnePiece => spool.is_empty(),
        }
    }
}

struct State {
    spool: Spool,
    trailers: Option<HeaderMap>,
    /// The app's body has ended.
    done: bool,
    error: Option<io::Error>,
    /// The client's side was dropped (it went away, or its connection was
    /// closed for leaving the response untaken): the pump stops.
    reader_gone: bool,
    reader: Option<Waker>,
    pump: Option<Waker>,
}

impl State {
    fn wake_reader(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }
}

/// Reads the app's body into the spool until it ends or fails and the
/// client has taken it all, or the client goes; the body (and the lease
/// inside it) is dropped as soon as it ends.
async fn pump(body: Body, shared: Arc<Mutex<State>>, cap: Cap) {
    // None once the app's body has ended or failed: the process is let go
    // then, while the client may still be draining what was read.
    let mut body = Some(body);
    std::future::poll_fn(|cx| {
        let mut st = shared.lock().expect("buffer lock");
        loop {
            if st.reader_gone {
                return Poll::Ready(());
            }
            let Some(app) = body.as_mut() else { break };
            if !cap.room(&st.spool) {
                break;
            }
            match Pin::new(app).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if let Err(e) = st.spool.push_anyway(data) {
                            st.error = Some(io::Error::other(format!("response buffer: {e}")));
                            body = None;
                        }
                        st.wake_reader();
                    }
                    Err(frame) => st.trailers = frame.into_trailers().ok(),
                },
                Poll::Ready(Some(Err(e))) => {
                    st.error = Some(e);
                    body = None;
                    st.wake_reader();
                }
                Poll::Ready(None) => {
                    st.done = true;
                    body = None;
                    st.wake_reader();
                }
                Poll::Pending => break,
            }
        }
        if body.is_none() && st.spool.is_empty() {
            // All handed to the client (or only the error is left for it).
            return Poll::Ready(());
        }
        // Waiting for the app, for room, or for the client to take the rest
        // (or to go).
        st.pump = Some(cx.waker().clone());
        Poll::Pending
    })
    .await;
}

/// The client's side of a buffered response.
struct Buffered {
    shared: Arc<Mutex<State>>,
    /// Bytes still to come, when the app said how many.
    remaining: Option<u64>,
}

impl HttpBody for Buffered {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        let mut st = this.shared.lock().expect("buffer lock");
        match st.spool.pop() {
            Ok(Some(data)) => {
                // The pump may be waiting for room.
                if let Some(w) = st.pump.take() {
                    w.wake();
                }
                if let Some(n) = this.remaining.as_mut() {
                    *n = n.saturating_sub(data.len() as u64);
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Ok(None) => {}
            Err(e) => return Poll::Ready(Some(Err(e))),
        }
        if let Some(e) = st.error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if st.done {
            return Poll::Ready(st.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        st.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let st = self.shared.lock().expect("buffer lock");
        st.done && st.spool.is_empty() && st.trailers.is_none() && st.error.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for Buffered {
    fn drop(&mut self) {
        let mut st = self.shared.lock().expect("buffer lock");
        st.reader_gone = true;
        if let Some(w) = st.pump.take() {
            w.wake();
        }
    }
}

/// Pieces of a body in order: the first one apart, so that a body of one
/// piece allocates no queue.
#[derive(Default)]
struct Pieces {
    first: Option<Bytes>,
    rest: VecDeque<Bytes>,
}

impl Pieces {
    fn push(&mut self, data: Bytes) {
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(data);
        } else {
            self.rest.push_back(data);
        }
    }

    fn pop(&mut self) -> Option<Bytes> {
        self.first.take().or_else(|| self.rest.pop_front())
    }

    fn is_empty(&self) -> bool {
        self.first.is_none() && self.rest.is_empty()
    }
}

/// A response body complete in memory.
struct Ready {
    chunks: Pieces,
    len: u64,
    trailers: Option<HeaderMap>,
    /// Its share of the process's memory budget.
    _reserved: Reservation,
}

impl HttpBody for Ready {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(data) = self.chunks.pop() {
            self.len -= data.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::sync::mpsc;

    fn limits(memory: usize, file: u64, tmp: TmpDir) -> BufferLimits {
        BufferLimits {
            memory,
            file,
            tmp,
            peer: None,
        }
    }

    /// An app body fed by hand; the sender's drop ends it. The returned
    /// flag turns true once the body has been dropped (the lease with it).
    type Feed = mpsc::Sender<Result<Frame<Bytes>, io::Error>>;

    fn app_body() -> (Feed, Body, Arc<AtomicBool>) {
        let (tx, rx) = mpsc::channel(1);
        let dropped = Arc::new(AtomicBool::new(false));
        let body = ChanBody {
            rx,
            dropped: dropped.clone(),
        };
        (tx, body.boxed_unsync(), dropped)
    }

    struct ChanBody {
        rx: mpsc::Receiver<Result<Frame<Bytes>, io::Error>>,
        dropped: Arc<AtomicBool>,
    }

    impl HttpBody for ChanBody {
        type Data = Bytes;
        type Error = io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
            self.rx.poll_recv(cx)
        }
    }

    impl Drop for ChanBody {
        fn drop(&mut self) {
            self.dropped.store(true, SeqCst);
        }
    }

    fn ok(resp: Response<Body>, l: &BufferLimits) -> Response<Body> {
        response(resp, l).unwrap_or_else(|_| panic!("rejected"))
    }

    #[tokio::test]
    async fn a_complete_body_gets_a_length_and_lets_the_app_go() {
        let (tx, body, dropped) = app_body();
        tx.send(Ok(Frame::data(Bytes::from_static(b"hello "))))
            .await
            .unwrap();
        drop(tx);
        // The channel holds one frame; the end is seen at once too.
        let resp = ok(Response::new(body), &limits(1024, 0, None));
        assert!(dropped.load(SeqCst));
        assert_eq!(resp.body().size_hint().exact(), Some(6));
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"hello ");
    }

    #[tokio::test]
    async fn a_slow_client_does_not_hold_the_app() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, body, dropped) = app_body();
        let resp = ok(
            Response::new(body),
            &limits(1000, 1 << 20, Some(Arc::from(dir.path()))),
        );
        // The app writes 200 KB while the client reads nothing.
        let mut want = Vec::new();
        for i in 0..200u32 {
            let piece = vec![(i % 251) as u8; 1000];
            want.extend_from_slice(&piece);
            tx.send(Ok(Frame::data(Bytes::from(piece)))).await.unwrap();
        }
        drop(tx);
        for _ in 0..100 {
            if dropped.load(SeqCst) {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            dropped.load(SeqCst),
            "the app body is let go once read, before the client takes any"
        );
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got.len(), want.len());
        assert!(got[..] == want[..]);
    }

    #[tokio::test]
    async fn a_client_that_goes_lets_the_app_go_and_frees_the_buffer() {
        // (What ends a client that takes nothing: its connection is closed
        // for it, by the fast lane's write timeout or `conn::Progress`.)
        let (tx, body, dropped) = app_body();
        let resp = ok(Response::new(body), &limits(10, 0, None));
        // More than the memory budget, without a file: the pump waits.
        tx.send(Ok(Frame::data(Bytes::from_static(b"0123456789ab"))))
            .await
            .unwrap();
        tokio::task::yield_now().await;
        assert!(!dropped.load(SeqCst));
        drop(resp);
        for _ in 0..100 {
            if dropped.load(SeqCst) {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            dropped.load(SeqCst),
            "the app body is let go with the client"
        );
        drop(tx);
    }

    #[tokio::test]
    async fn event_streams_pass_one_piece_at_a_time() {
        let (tx, body, _dropped) = app_body();
        let mut resp = Response::new(body);
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        let resp = ok(resp, &limits(1 << 20, 0, None));
        let mut body = resp.into_body();
        for i in 0..3 {
            let event = Bytes::from(format!("data: {i}\n\n"));
            tx.send(Ok(Frame::data(event.clone()))).await.unwrap();
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), event);
        }
    }

    #[test]
    fn x_accel_buffering_is_read_and_removed() {
        let mut h = HeaderMap::new();
        h.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
        assert!(is_streaming(&mut h));
        assert!(!h.contains_key(X_ACCEL_BUFFERING));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("yes"));
        assert!(!is_streaming(&mut h));
        assert!(is_streaming(&mut h), "the header is gone; the type decides");
        let mut plain = HeaderMap::new();
        plain.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        assert!(!is_streaming(&mut plain));
    }

    #[tokio::test]
    async fn an_app_that_fails_before_any_byte_is_a_bad_gateway() {
        let (tx, body, _dropped) = app_body();
        tx.send(Err(io::Error::other("app died"))).await.unwrap();
        let result = response(Response::new(body), &limits(1024, 0, None));
        assert!(matches!(result, Err(Reject::BadGateway(_))));
    }
}
