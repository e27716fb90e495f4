//! The one response body type every handler returns, so handlers compose
//! without generics leaking into the connection code.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};

/// A boxed response body. Errors are `io::Error` because every streaming body
/// berth produces (files, backends) fails with one.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A body holding `bytes` in memory.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body with no bytes (HEAD, 304, redirects).
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}
