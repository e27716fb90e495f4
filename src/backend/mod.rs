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
