//! One FastCGI request over one connection to an app process: send the CGI
//! variables and the request body (read whole by the front end beforehand,
//! `front::request_body`) as STDIN, read STDOUT into a response whose body
//! streams on (to `front::buffer`), and send STDERR to the tenant's error log.
//!
//! Request flow position: handler → (app lease) → here → the app's socket.
//!
//! Requests without a body ask the app to keep the connection
//! (FCGI_KEEP_CONN, which php-cgi and libfcgi honour): once END_REQUEST has
//! been read with nothing after it, the connection stays with the process for
//! its next request, saving a connect and an accept per request. A kept
//! connection is checked before use (no EOF, nothing unread); one the app
//! closed at that very moment fails the write, and the request goes on a
//! fresh one. Once written, a request is never sent again. A
//! request with a body sends it on a fresh connection that the app closes;
//! a kept one is dropped first, since an app like php-cgi serves one
//! connection at a time and would never accept the new one.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::Response;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::AppFailure;
use super::fastcgi::{self, CgiHead, Decoder, Record};
use crate::front::apps::Lease;
use crate::front::body::Body;
use crate::front::spool::Spool;

/// Where the app's STDERR records go. Returns false when it dropped lines
/// (the tenant's error log is over its rate): the app is then read again
/// only after [`crate::tenant_log::THROTTLE`], so a flood waits in the app's
/// writes instead of costing the front end a core.
pub type StderrSink = Box<dyn FnMut(&[u8]) -> bool + Send>;

/// Id of the one request on each connection.
const REQUEST_ID: u16 = 1;

/// Runs one request. `first_byte` bounds the wait for the start of the answer;
/// `stderr` receives the app's STDERR records. The lease is held until the
/// response body has been read to the end (the process is busy until then).
pub async fn request(
    lease: Lease,
    params: &crate::backend::cgi_env::Vars<'_>,
    body: Option<Spool>,
    first_byte: Duration,
    idle: Duration,
    stderr: StderrSink,
) -> Result<Response<Body>, (AppFailure, Lease)> {
    let mut lease = lease;
    let keep = body.is_none();
    let mut head = BytesMut::with_capacity(1024);
    fastcgi::begin_request(&mut head, REQUEST_ID, keep);
    let pairs: Vec<(&[u8], &[u8])> = params.iter().map(|(k, v)| (&**k, &**v)).collect();
    fastcgi::params(&mut head, REQUEST_ID, &pairs);
    if keep {
        fastcgi::stdin(&mut head, REQUEST_ID, &[]);
    }
    // A kept connection is used only if the app has not closed it, nor sent
    // anything since its last answer.
    let kept = lease.fcgi.take().filter(|s| keep && untouched(s));
    let (mut read, mut write, reused) = match kept {
        Some(stream) => {
            let (read, write) = stream.into_split();
            (read, write, true)
        }
        None => match connect(&lease).await {
            Ok(halves) => (halves.0, halves.1, false),
            Err(e) => return Err((e, lease)),
        },
    };
    if let Err(e) = write.write_all(&head).await {
        if !reused {
            return Err((AppFailure::Io(e), lease));
        }
        // The app closed the kept connection just now (EPIPE: it read none
        // of this request), so the request goes on a fresh one. Once written,
        // a request is never sent twice.
        (read, write) = match connect(&lease).await {
            Ok(halves) => halves,
            Err(e) => return Err((e, lease)),
        };
        if let Err(e) = write.write_all(&head).await {
            return Err((AppFailure::Io(e), lease));
        }
    }
    let buf = BytesMut::with_capacity(4096);
    // Without a body the write half is kept, for the connection to be kept
    // when the answer ends cleanly. A body streams to STDIN while the answer
    // is read: an app may answer (or fail) before it has read everything.
    let mut write_back = None;
    match body {
        None => write_back = Some(write),
        Some(mut body) => {
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                loop {
                    let data = match body.pop() {
                        Ok(Some(data)) => data,
                        Ok(None) => break,
                        // The temporary file failed: the app must not
                        // take what it got for the whole body.
                        Err(_) => return,
                    };
                    buf.clear();
                    fastcgi::stdin(&mut buf, REQUEST_ID, &data);
                    if write.write_all(&buf).await.is_err() {
                        return;
                    }
                }
                buf.clear();
                fastcgi::stdin(&mut buf, REQUEST_ID, &[]);
                let _ = write.write_all(&buf).await;
            });
        }
    }

    let mut stream = RecordStream {
        read,
        buf,
        decoder: Decoder::new(REQUEST_ID),
        stderr,
        pause: None,
        ended: false,
    };
    let mut out = BytesMut::new();
    let parsed = tokio::time::timeout(first_byte, async {
        loop {
            match stream.next_stdout().await? {
                Some(data) => {
                    out.extend_from_slice(&data);
                    match fastcgi::parse_cgi_head(&out, fastcgi::MAX_HEAD) {
                        Ok(Some((head, used))) => return Ok((head, used)),
                        Ok(None) => {}
                        Err(e) => return Err(AppFailure::Protocol(e.to_string())),
                    }
                }
                None => return Err(AppFailure::NoHead),
            }
        }
    })
    .await;
    let (head, used) = match parsed {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return Err((e, lease)),
        Err(_) if lease.fresh => return Err((AppFailure::StartTimeout(first_byte), lease)),
        Err(_) => return Err((AppFailure::Timeout(first_byte), lease)),
    };
    // A local redirect (RFC 3875 §6.2.2) comes as a 302 with its Location,
    // which is what the client gets (as with nginx).
    let CgiHead {
        status, headers, ..
    } = head;
    let mut resp = Response::new(
        StdoutBody {
            stream: Some(stream),
            write_back,
            first: Some(out.split_off(used).freeze()).filter(|b| !b.is_empty()),
            idle: super::IdleTimer::new(idle),
            lease,
        }
        .boxed_unsync(),
    );
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// Records from the app, with STDERR diverted.
struct RecordStream {
    read: OwnedReadHalf,
    buf: BytesMut,
    decoder: Decoder,
    stderr: StderrSink,
    /// Set when `stderr` dropped lines: no read until it has elapsed.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    ended: bool,
}

impl RecordStream {
    async fn next_stdout(&mut self) -> Result<Option<Bytes>, AppFailure> {
        std::future::poll_fn(|cx| self.poll_stdout(cx)).await
    }

    fn poll_stdout(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, AppFailure>> {
        loop {
            if self.ended {
                return Poll::Ready(Ok(None));
            }
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(Record::Stdout(data))) => return Poll::Ready(Ok(Some(data))),
                Ok(Some(Record::Stderr(data))) => {
                    if !(self.stderr)(&data) && self.pause.is_none() {
                        let pause = tokio::time::sleep(crate::tenant_log::THROTTLE);
                        self.pause = Some(Box::pin(pause));
                    }
                    continue;
                }
                Ok(Some(Record::End { .. })) => {
                    self.ended = true;
                    return Poll::Ready(Ok(None));
                }
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(AppFailure::Protocol(e.to_string()))),
            }
            if let Some(pause) = &mut self.pause {
                ready!(pause.as_mut().poll(cx));
                self.pause = None;
            }
            // Room for a read; growing only when short keeps one allocation
            // per request in the common case.
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(16 * 1024);
            }
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut self.read),
                cx,
                &mut self.buf
            ))?;
            if n == 0 {
                // EOF: without END_REQUEST the app died mid-response.
                return Poll::Ready(match self.decoder.at_eof(&self.buf) {
                    Ok(()) => {
                        self.ended = true;
                        Ok(None)
                    }
                    Err(e) => Err(AppFailure::Protocol(e.to_string())),
                });
            }
        }
    }
}

/// Whether a kept connection is as the last answer left it: no EOF, no
/// bytes waiting.
fn untouched(stream: &UnixStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Connects to the process of `lease`.
async fn connect(lease: &Lease) -> Result<(OwnedReadHalf, OwnedWriteHalf), AppFailure> {
    match UnixStream::connect(&lease.socket).await {
        Ok(stream) => Ok(stream.into_split()),
        Err(e) => Err(super::connect_failed(e)),
    }
}

/// The response body: the rest of STDOUT, ending at END_REQUEST.
struct StdoutBody {
    /// None once the body has ended.
    stream: Option<RecordStream>,
    /// The write half of a connection to keep (FCGI_KEEP_CONN).
    write_back: Option<OwnedWriteHalf>,
    first: Option<Bytes>,
    idle: super::IdleTimer,
    lease: Lease,
}

impl StdoutBody {
    /// The answer ended: a kept connection with nothing left unread goes
    /// back to the lease for the process's next request.
    fn finish(&mut self) {
        let (Some(stream), Some(write)) = (self.stream.take(), self.write_back.take()) else {
            return;
        };
        if stream.ended
            && stream.buf.is_empty()
            && stream.decoder.is_finished()
            && let Ok(conn) = stream.read.reunite(write)
        {
            self.lease.fcgi = Some(conn);
        }
    }
}

impl HttpBody for StdoutBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        let this = &mut *self;
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(None);
        };
        match stream.poll_stdout(cx) {
            Poll::Ready(Ok(Some(data))) => {
                this.idle.progress();
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Ok(None)) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(io::Error::other(e.to_string())))),
            Poll::Pending => this.idle.poll_expired(cx, "app").map(|e| Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.stream.as_ref().is_none_or(|s| s.ended)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
