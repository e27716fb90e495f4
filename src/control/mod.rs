//! The control socket and `berth ctl`: tenants and admins act on a running
//! berth without root and without signals.
//!
//! - [`proto`]: the typed, versioned, length-prefixed protocol;
//! - [`auth`]: who may act on which tenant.

pub mod auth;
pub mod proto;
