//! The control socket and `berth ctl`: tenants and admins act on a running
//! berth without root and without signals.
//!
//! - [`proto`]: the typed, versioned, length-prefixed protocol;
//! - [`auth`]: who may act on which tenant;
//! - [`audit`]: one line per request in `log_dir/audit.log`;
//! - [`logs`]: a tenant's log lines that concern one app.

pub mod audit;
pub mod auth;
pub mod logs;
pub mod proto;
