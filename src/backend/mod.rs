//! Backends: how the front end talks to tenant apps (FastCGI, HTTP, CGI).
//!
//! Request flow position: after the handler picked an app route; the supervisor
//! has already started the app and handed over its socket.

pub mod cgi_conn;
pub mod cgi_env;
pub mod fastcgi;
pub mod fastcgi_conn;
pub mod http_proxy;
pub mod sock_owner;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Why an exchange with an app process (FastCGI or HTTP) failed; the app
/// route turns it into 502, 503 or 504 and decides the process's fate.
#[derive(Debug, thiserror::Error)]
pub enum AppFailure {
    /// The process is gone (connection refused, socket missing): try another.
    #[error("app process is gone: {0}")]
    Gone(io::Error),
    /// A fresh process did not answer within `start_timeout`.
    #[error("app did not start within {0:?}")]
    StartTimeout(Duration),
    #[error("app did not answer within {0:?}")]
    Timeout(Duration),
    /// The process is there but cannot take the connection now (its accept
    /// queue is full): busy, not broken.
    #[error("app is busy: {0}")]
    Busy(String),
    #[error("app closed the connection before a complete response head")]
    NoHead,
    /// The app answered something that is not FastCGI or HTTP, or closed
    /// the connection before a complete response head.
    #[error("app sent a bad response: {0}")]
    Protocol(String),
    #[error("talking to the app: {0}")]
    Io(#[from] io::Error),
    /// A self-bound listener that is not the tenant's (another tenant took
    /// the port or path): refused before anything was sent.
    #[error("refused: the listener at {at} belongs to {found}, not to the app's uid {expected}")]
    NotOwner {
        at: String,
        expected: u32,
        found: String,
    },
}

/// The address as text (an IPv4 address digit by digit, without the
/// formatting machinery).
pub(crate) fn write_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(digits.format(octet).as_bytes());
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// How a failed connect to an app process counts: the front end out of
/// descriptors or memory, or the app's accept queue full (EAGAIN on a Unix
/// socket), is being busy, not the app being gone: its process is not
/// blamed (and killed) for it.
pub(crate) fn connect_failed(e: io::Error) -> AppFailure {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
            AppFailure::Busy(format!("the front end is out of resources: {e}"))
        }
        Some(libc::EAGAIN) => AppFailure::Busy(format!("its accept queue is full: {e}")),
        _ => match e.kind() {
            // Permission denied: a self-bound socket the supervisor has not
            // opened to the front end yet (or one the app made again since).
            io::ErrorKind::ConnectionRefused
            | io::ErrorKind::NotFound
            | io::ErrorKind::PermissionDenied => AppFailure::Gone(e),
            _ => AppFailure::Io(e),
        },
    }
}

/// The longest silence an app may keep in the middle of a response body (the
/// app's `timeout`), for the bodies the backends stream to the client.
pub(crate) struct IdleTimer {
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    pub(crate) fn new(idle: Duration) -> IdleTimer {
        IdleTimer { idle, timer: None }
    }

    /// Something came: the clock starts again.
    pub(crate) fn progress(&mut self) {
        if let Some(timer) = self.timer.as_mut() {
            timer.as_mut().reset(Instant::now() + self.idle);
        }
    }

    /// Nothing came this time: the error once `idle` has passed since the
    /// last progress (`what` names the silent party).
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>, what: &str) -> Poll<io::Error> {
        let idle = self.idle;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what} sent nothing for {idle:?}"),
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Frames the response of a FastCGI or CGI app, whose head went through
/// [`fastcgi::parse_cgi_head`]: the app's `Content-Length` leaves the header
/// fields and becomes the exact length of the body, which is held to it.
/// A body that ends short is an error (the client's response is cut off and
/// its connection closed, never passed off as complete); bytes past the
/// length are dropped and logged. So a response never carries both a
/// `Content-Length` and chunked framing, and an app cannot make its
/// response end elsewhere than where the client is told it ends. For HEAD
/// and 304 the app's `Content-Length` stays (it describes the GET response).
///
/// The surplus is reported in the tenant's error log (`log`), which is
/// rate-limited: it is the app's doing, and a line per response in berth's
/// own log would let a tenant flood that.
pub fn frame_cgi_response(
    resp: http::Response<crate::front::body::Body>,
    head_only: bool,
    app: &crate::ipc::AppId,
    log: Option<std::sync::Arc<crate::tenant_log::TenantLog>>,
) -> http::Response<crate::front::body::Body> {
    use http_body_util::BodyExt;
    let (mut head, body) = resp.into_parts();
    // 204 has no body and no length (RFC 9110 §8.6).
    if head.status == http::StatusCode::NO_CONTENT {
        head.headers.remove(http::header::CONTENT_LENGTH);
        return http::Response::from_parts(head, without_body(body));
    }
    // HEAD and 304 have no body either: what the app printed after the head
    // is read and dropped (RFC 3875 §6.3.3: HTTP/2 would send it as DATA),
    // and its Content-Length stays, describing the body GET would have.
    if head_only || head.status == http::StatusCode::NOT_MODIFIED {
        return http::Response::from_parts(head, without_body(body));
    }
    // The head parser accepted at most one, all digits.
    let declared = head
        .headers
        .remove(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let Some(length) = declared else {
        return http::Response::from_parts(head, body);
    };
    let body = Exact {
        inner: body,
        declared: length,
        remaining: length,
        surplus: 0,
        app: app.to_string(),
        log,
    };
    http::Response::from_parts(head, body.boxed_unsync())
}

/// An empty body for the client; what the app sends instead is read (up
/// to [`DRAIN_AT_MOST`], on a task of its own) and dropped, so the app ends
/// its answer as usual (and its process goes back to its pool) rather than
/// meeting a closed connection.
fn without_body(app: crate::front::body::Body) -> crate::front::body::Body {
    use http_body::Body as _;
    if !app.is_end_stream() {
        tokio::spawn(async move {
            let mut app = app;
            let mut read = 0;
            while read < DRAIN_AT_MOST {
                match http_body_util::BodyExt::frame(&mut app).await {
                    Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
                    _ => break,
                }
            }
        });
    }
    crate::front::body::empty()
}

/// The most of an app's unwanted body that is read before it is cut off.
const DRAIN_AT_MOST: usize = 1 << 20;

/// A body held to the length its app declared.
struct Exact {
    inner: crate::front::body::Body,
    declared: u64,
    remaining: u64,
    surplus: u64,
    app: String,
    log: Option<std::sync::Arc<crate::tenant_log::TenantLog>>,
}

impl Exact {
    /// The declared length is complete: reads what else is ready (the end
    /// of the app's output, so a kept connection can be kept) and drops it.
    fn drain_surplus(&mut self, cx: &mut Context<'_>) {
        use http_body::Body as _;
        while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut self.inner).poll_frame(cx) {
            if let Some(data) = frame.data_ref() {
                self.surplus += data.len() as u64;
            }
        }
        if self.surplus > 0 {
            let line = format!(
                "berth: the response had {} bytes past its Content-Length ({}); they were dropped",
                self.surplus, self.declared
            );
            match &self.log {
                Some(log) => {
                    log.line(&self.app, line.as_bytes());
                }
                None => tracing::warn!("app {}: {line}", self.app),
            }
            self.surplus = 0;
        }
    }
}

impl http_body::Body for Exact {
    type Data = bytes::Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, io::Error>>> {
        let this = &mut *self;
        if this.remaining == 0 {
            this.drain_surplus(cx);
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => {
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "app {} ended its body {} bytes short of its Content-Length ({})",
                        this.app, this.remaining, this.declared
                    ),
                ))));
            }
            Poll::Pending => return Poll::Pending,
        };
        let Ok(mut data) = frame.into_data() else {
            // CGI and FastCGI have no trailers.
            return Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::new()))));
        };
        if data.len() as u64 >= this.remaining {
            this.surplus += data.len() as u64 - this.remaining;
            data.truncate(this.remaining as usize);
            this.remaining = 0;
            this.drain_surplus(cx);
        } else {
            this.remaining -= data.len() as u64;
        }
        Poll::Ready(Some(Ok(http_body::Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn app_id() -> crate::ipc::AppId {
        crate::ipc::AppId {
            tenant: "t".into(),
            app: "a".into(),
        }
    }

    fn app_response(
        length: &str,
        pieces: &[&'static [u8]],
    ) -> http::Response<crate::front::body::Body> {
        let body = Pieces(
            pieces
                .iter()
                .map(|p| bytes::Bytes::from_static(p))
                .collect(),
        );
        let mut resp = http::Response::new(body.boxed_unsync());
        resp.headers_mut().insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from_str(length).unwrap(),
        );
        resp
    }

    /// A body of the given pieces, without a length.
    struct Pieces(std::collections::VecDeque<bytes::Bytes>);

    impl http_body::Body for Pieces {
        type Data = bytes::Bytes;
        type Error = io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, io::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
        }
    }

    #[test]
    fn a_front_end_out_of_descriptors_does_not_blame_the_app() {
        // The review: at its open-file limit, the front end took EMFILE on
        // connect for the app being gone, and had php-cgi killed.
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::EAGAIN] {
            let failure = connect_failed(io::Error::from_raw_os_error(errno));
            assert!(
                matches!(failure, AppFailure::Busy(_)),
                "{errno}: {failure:?}"
            );
        }
        for errno in [libc::ECONNREFUSED, libc::ENOENT, libc::EACCES] {
            let failure = connect_failed(io::Error::from_raw_os_error(errno));
            assert!(
                matches!(failure, AppFailure::Gone(_)),
                "{errno}: {failure:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_apps_length_frames_its_body() {
        let resp = frame_cgi_response(app_response("5", &[b"hel", b"lo"]), false, &app_id(), None);
        assert!(!resp.headers().contains_key(http::header::CONTENT_LENGTH));
        assert_eq!(http_body::Body::size_hint(resp.body()).exact(), Some(5));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
    }

    #[tokio::test]
    async fn bytes_past_the_length_are_dropped() {
        let resp = frame_cgi_response(
            app_response("3", &[b"ab", b"cdef", b"gh"]),
            false,
            &app_id(),
            None,
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"abc");
    }

    #[tokio::test]
    async fn a_body_short_of_its_length_ends_in_an_error() {
        let resp = frame_cgi_response(app_response("10", &[b"short"]), false, &app_id(), None);
        let err = resp.into_body().collect().await.err();
        assert!(err.is_some_and(|e| e.kind() == io::ErrorKind::UnexpectedEof));
    }

    #[tokio::test]
    async fn head_and_not_modified_keep_the_apps_length() {
        let resp = frame_cgi_response(
            app_response("42", &[b"not for HEAD"]),
            true,
            &app_id(),
            None,
        );
        assert_eq!(resp.headers()[http::header::CONTENT_LENGTH], "42");
        assert!(
            http_body::Body::is_end_stream(resp.body()),
            "HEAD has no body"
        );
        let mut not_modified = app_response("42", &[]);
        *not_modified.status_mut() = http::StatusCode::NOT_MODIFIED;
        let resp = frame_cgi_response(not_modified, false, &app_id(), None);
        assert_eq!(resp.headers()[http::header::CONTENT_LENGTH], "42");
        assert!(resp.into_body().collect().await.is_ok());
        // 204 has no length at all, HEAD or not.
        for head_only in [false, true] {
            let mut no_content = app_response("5", &[b"hello"]);
            *no_content.status_mut() = http::StatusCode::NO_CONTENT;
            let resp = frame_cgi_response(no_content, head_only, &app_id(), None);
            assert!(!resp.headers().contains_key(http::header::CONTENT_LENGTH));
            assert!(http_body::Body::is_end_stream(resp.body()));
        }
    }
}
