//! The admin listener (`[server] admin_listen`): berth's own pages, and
//! nothing else. Every request that comes on it is answered here, whatever
//! its Host; no site is ever served on it, and these pages on no other
//! listener (`handler::respond` sends a connection here by its listener).
//!
//! - `/status` (and `/`): the HTML page (`page`);
//! - `/status.json`: the same data ([`View`]);
//! - `/metrics`: the Prometheus text format (`metrics`).
//!
//! With `admin_htpasswd`, every request needs its Basic credentials (401
//! with `WWW-Authenticate` otherwise). Without it, requests are answered
//! only when they came to a loopback address (the configuration allows no
//! other without a password; this also holds for a connection that
//! outlives a reload that took the password away).
//!
//! The figures come from the supervisor's last [`crate::ipc::StatusSnapshot`]
//! (`Shared::status`) joined with the front end's own (`view`); building
//! and rendering run on a blocking thread, so a page of 1,000 tenants does
//! not hold up a worker's other connections.

mod cluster;
mod metrics;
mod page;
mod view;

use std::sync::Arc;

use http::{HeaderValue, Method, Response, header, request::Parts};

use super::body::{self, Body};
use super::conn::ConnInfo;
use super::respond::Reject;
use super::{Generation, Shared};
use crate::front::auth::Htpasswd;

pub use page::esc;
pub use view::View;

/// The realm the admin listener's `WWW-Authenticate` names.
pub const REALM: &str = "berth admin";

/// The admin listener's side of a generation.
#[derive(Debug, Clone)]
pub struct AdminRt {
    /// `admin_htpasswd`'s users; None: no password is asked (loopback only).
    pub users: Option<Arc<Htpasswd>>,
}

/// What a path on the admin listener is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Page {
    Html,
    Json,
    Metrics,
}

/// Answers one request that came on the admin listener.
pub async fn serve(
    parts: &Parts,
    conn: &ConnInfo,
    shared: &Shared,
    generation: &Generation,
) -> Result<Response<Body>, Reject> {
    // The listener outlived the configuration that had it.
    let Some(admin) = &generation.admin else {
        return Err(Reject::NotFound);
    };
    match &admin.users {
        Some(users) => {
            let authorization = parts
                .headers
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes().to_vec());
            let users = users.clone();
            // Password hashes are deliberately slow: keep them off the reactor.
            let checked =
                tokio::task::spawn_blocking(move || users.check(authorization.as_deref()))
                    .await
                    .ok()
                    .flatten();
            if checked.is_none() {
                return Err(Reject::Unauthorized {
                    realm: REALM.into(),
                });
            }
        }
        None if !crate::config::loopback(conn.local.ip()) => return Err(Reject::Forbidden),
        None => {}
    }
    if parts.method != Method::GET && parts.method != Method::HEAD {
        return Err(Reject::MethodNotAllowed("GET, HEAD"));
    }
    let page = match parts.uri.path() {
        "/" | "/status" => Page::Html,
        "/status.json" => Page::Json,
        "/metrics" => Page::Metrics,
        _ => return Err(Reject::NotFound),
    };
    let snapshot = shared.status.load_full();
    let view = View::build(snapshot.as_deref(), shared);
    let rendered = tokio::task::spawn_blocking(move || match page {
        Page::Html => page::render(&view),
        Page::Json => {
            let mut json = serde_json::to_string_pretty(&view).unwrap_or_default();
            json.push('\n');
            json
        }
        Page::Metrics => metrics::render(view),
    })
    .await
    .map_err(|e| Reject::Internal(format!("rendering the admin page: {e}")))?;
    let content_type = match page {
        Page::Html => "text/html; charset=utf-8",
        Page::Json => "application/json",
        Page::Metrics => metrics::CONTENT_TYPE,
    };
    Ok(reply(content_type, rendered, page == Page::Html))
}

fn reply(content_type: &'static str, text: String, html: bool) -> Response<Body> {
    let mut resp = Response::new(body::full(text));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if html {
        // No script may run on the page, whatever slipped into it; it
        // needs only its own inline style.
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
            ),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    resp
}
