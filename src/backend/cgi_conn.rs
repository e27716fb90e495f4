//! One CGI run (RFC 3875): the request body (read whole by the front end
//! beforehand, `front::request_body`) goes to the script's stdin,
//! its stdout becomes the response (head parsed as for FastCGI, body streamed),
//! its stderr goes line by line to the tenant's error log.
//!
//! Request flow position: handler → app route → (the supervisor started the
//! script as the tenant and passed its pipes) → here. The front end never
//! starts a process itself; it only holds the pipes and, through the
//! [`CgiRun`]'s hold, the app's count of running scripts and the request's
//! place in its tenant's gate until the response body ends or is dropped. Dropping the stdout pipe early (the client went
//! away) ends the script with SIGPIPE on its next write; the supervisor kills
//! one that runs past the app's `timeout` either way.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::Response;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use super::fastcgi::{self, CgiHead};
use super::fastcgi_conn::StderrSink;
use crate::front::apps::{CgiHold, CgiRun};
use crate::front::body::Body;
use crate::front::spool::Spool;

/// Why a CGI run gave no response; turned into 502/504 by the caller.
#[derive(Debug, thiserror::Error)]
pub enum CgiFailure {
    /// Apache's words for it, which administrators search for.
    #[error("premature end of script headers (the script printed no complete response head)")]
    NoHead,
    #[error("the script printed a bad response head: {0}")]
    Protocol(String),
    #[error("the script printed no response head within {0:?}")]
    Timeout(Duration),
    #[error("script pipes: {0}")]
    Io(#[from] io::Error),
}

/// A stderr line longer than this is written out in pieces.
const MAX_STDERR_LINE: usize = 8 * 1024;

/// Runs the exchange with a started script. `timeout` bounds the wait for
/// the response head and any silence in the body.
pub async fn exchange(
    run: CgiRun,
    body: Option<Spool>,
    timeout: Duration,
    stderr: StderrSink,
) -> Result<Response<Body>, CgiFailure> {
    let CgiRun {
        stdin,
        stdout,
        stderr: errors,
        hold,
    } = run;
    let stdout = pipe::Receiver::from_owned_fd(stdout)?;
    let errors = pipe::Receiver::from_owned_fd(errors)?;
    tokio::spawn(copy_stderr(errors, stderr));
    // The body is written while the answer is read: a script may answer
    // before (or without) reading all of it. No body: stdin is closed at once.
    let Some(mut body) = body else {
        drop(stdin);
        return read_answer(stdout, hold, timeout).await;
    };
    {
        let mut stdin = pipe::Sender::from_owned_fd(stdin)?;
        tokio::spawn(async move {
            // Stops when the script stops reading (it exited or closed
            // stdin), or if the temporary file fails (then the script sees
            // a body shorter than its CONTENT_LENGTH, never a whole one).
            while let Ok(Some(data)) = body.pop() {
                if stdin.write_all(&data).await.is_err() {
                    return;
                }
            }
        });
    }

    read_answer(stdout, hold, timeout).await
}

/// Reads the response head from the script's stdout; the rest streams.
async fn read_answer(
    mut stdout: pipe::Receiver,
    hold: CgiHold,
    timeout: Duration,
) -> Result<Response<Body>, CgiFailure> {
    // The script's whole run is bounded (the supervisor kills it a moment
    // later): the response ends in an error, not as if complete, when it is
    // cut short.
    let deadline = Box::pin(tokio::time::sleep(timeout));
    let mut out = BytesMut::with_capacity(4096);
    let parsed = tokio::time::timeout_at(deadline.deadline(), async {
        loop {
            if out.capacity() - out.len() < 1024 {
                out.reserve(8 * 1024);
            }
            if stdout.read_buf(&mut out).await? == 0 {
                return Err(CgiFailure::NoHead);
            }
            match fastcgi::parse_cgi_head(&out, fastcgi::MAX_HEAD) {
                Ok(Some(parsed)) => return Ok(parsed),
                Ok(None) => {}
                Err(e) => return Err(CgiFailure::Protocol(e.to_string())),
            }
        }
    })
    .await;
    let (head, used) = match parsed {
        Ok(result) => result?,
        Err(_) => return Err(CgiFailure::Timeout(timeout)),
    };
    let CgiHead {
        status, headers, ..
    } = head;
    let mut resp = Response::new(
        PipeBody {
            stdout,
            first: Some(out.split_off(used).freeze()).filter(|b| !b.is_empty()),
            buf: BytesMut::new(),
            deadline,
            timeout,
            ended: false,
            _hold: hold,
        }
        .boxed_unsync(),
    );
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// Hands the script's stderr to `sink` one line at a time (a last line
/// without a newline included); while the sink drops lines, the pipe is
/// read more slowly.
async fn copy_stderr(mut errors: pipe::Receiver, mut sink: StderrSink) {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(16 * 1024);
        }
        match errors.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let mut kept = true;
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line = buf.split_to(end + 1);
            kept &= sink(&line);
        }
        if buf.len() >= MAX_STDERR_LINE {
            kept &= sink(&buf.split());
        }
        if !kept {
            tokio::time::sleep(crate::tenant_log::THROTTLE).await;
        }
    }
    if !buf.is_empty() {
        sink(&buf);
    }
}

/// The rest of the script's stdout, ending at EOF.
struct PipeBody {
    stdout: pipe::Receiver,
    first: Option<Bytes>,
    buf: BytesMut,
    /// When the script's time is up.
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    ended: bool,
    _hold: CgiHold,
}

impl HttpBody for PipeBody {
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
        if this.ended {
            return Poll::Ready(None);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.ended = true;
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the script ran past its timeout ({:?})", this.timeout),
            ))));
        }
        if this.buf.capacity() < 1024 {
            this.buf.reserve(16 * 1024);
        }
        match tokio_util::io::poll_read_buf(Pin::new(&mut this.stdout), cx, &mut this.buf) {
            Poll::Ready(Ok(0)) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Ok(_)) => Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze())))),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.ended
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
