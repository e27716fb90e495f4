//! Turns every refusal into an HTTP response, in exactly one place.
//!
//! Handlers return `Err(Reject)` for anything that is not a normal answer; the
//! connection code calls [`Reject::into_response`]. The variant says whose fault it
//! was (client → 4xx, overload → 503 or the tenant's `overflow_status`, us → 500),
//! so status codes stay consistent.

use http::{HeaderValue, Response, StatusCode, header};

use super::body::{self, Body};

/// Why a request gets an error response instead of content.
#[derive(Debug)]
pub enum Reject {
    /// The request itself is malformed: bad path encoding, missing Host, ...
    BadRequest(&'static str),
    /// Nothing to serve here (also used for hidden files, so they are
    /// indistinguishable from missing ones).
    NotFound,
    /// The file exists but policy forbids serving it (e.g. a symlink to a file of
    /// another owner).
    Forbidden,
    /// Only the listed methods are allowed here, e.g. `"GET, HEAD"`.
    MethodNotAllowed(&'static str),
    /// Basic auth failed; the realm goes into `WWW-Authenticate`.
    Unauthorized { realm: String },
    /// The Host (or TLS SNI name) is not served by this listener.
    Misdirected,
    /// A `Range` header that cannot be satisfied for a representation of `size` bytes.
    RangeNotSatisfiable { size: u64 },
    /// Something on our side failed (I/O error other than not-found, ...).
    Internal(String),
    /// The request body is larger than the route's `max_body`.
    PayloadTooLarge { max: u64 },
    /// The client stopped sending its body (closed, reset, or silent past
    /// the timeout).
    BodyIncomplete(String),
    /// The app failed or answered garbage; the reason is logged, not sent.
    BadGateway(String),
    /// The app did not answer in time.
    GatewayTimeout(String),
    /// No app process could serve now (starting failed, pool busy, crash
    /// loop); the client may retry after this many seconds.
    Unavailable { why: String, retry_after: u32 },
    /// The tenant is at its `concurrency` and its queue is full, or the
    /// request waited its `queue_timeout`: the tenant's `overflow_status`
    /// (503, 429 or a 5xx such as LVE's 508), with `Retry-After`.
    TenantBusy {
        status: u16,
        why: String,
        retry_after: u32,
    },
}

impl Reject {
    pub fn status(&self) -> StatusCode {
        match self {
            Reject::BadRequest(_) => StatusCode::BAD_REQUEST,
            Reject::NotFound => StatusCode::NOT_FOUND,
            Reject::Forbidden => StatusCode::FORBIDDEN,
            Reject::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Reject::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Reject::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Reject::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Reject::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Reject::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Reject::BodyIncomplete(_) => StatusCode::BAD_REQUEST,
            Reject::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Reject::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Reject::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Reject::TenantBusy { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
        }
    }

    /// The response sent to the client. Internal details never leak into it.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let text = match &self {
            Reject::BadRequest(why) => format!("400 Bad Request: {why}\n"),
            Reject::PayloadTooLarge { max } => format!(
                "413 Content Too Large: the request body may be at most {} bytes\n",
                max
            ),
            Reject::TenantBusy { retry_after, .. } => format!(
                "{} {}: this site is busy; retry in {retry_after} seconds\n",
                status.as_u16(),
                // LVE's words for its 508.
                match status.as_u16() {
                    508 => "Resource Limit Is Reached",
                    _ => status.canonical_reason().unwrap_or("Service Unavailable"),
                }
            ),
            _ => format!(
                "{} {}\n",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            ),
        };
        let mut resp = Response::new(body::full(text));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match self {
            Reject::MethodNotAllowed(allow) => {
                h.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            Reject::Unauthorized { realm } => {
                let realm = realm.replace(['"', '\\'], "");
                if let Ok(v) =
                    HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\""))
                {
                    h.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            Reject::RangeNotSatisfiable { size } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    h.insert(header::CONTENT_RANGE, v);
                }
            }
            Reject::Internal(why) => tracing::error!("internal error: {why}"),
            Reject::BodyIncomplete(why) => tracing::debug!("request body incomplete: {why}"),
            Reject::BadGateway(why) => tracing::warn!("bad gateway: {why}"),
            Reject::GatewayTimeout(why) => tracing::warn!("gateway timeout: {why}"),
            Reject::Unavailable { why, retry_after } => {
                tracing::warn!("unavailable: {why}");
                h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            Reject::TenantBusy {
                why, retry_after, ..
            } => {
                // The tenant's error log has it (rate-limited); at a flood of
                // refusals a warning each would only crowd berth's own log.
                tracing::debug!("refused: {why}");
                h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            _ => {}
        }
        resp
    }
}
