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
