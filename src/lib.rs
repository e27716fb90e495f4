//! berth: a multi-tenant web application host.
//!
//! Two processes (see `docs/`): the [`supervisor`] runs as root, reads the
//! [`config`], binds listeners and opens logs, and starts the [`front`] end as an
//! unprivileged user; they talk over [`ipc`]. The front end is the request path:
//! accept → TLS/SNI → virtual host → route → handler → access log.
#![deny(unsafe_code)]

pub mod audit;
pub mod backend;
pub mod config;
pub mod control;
pub mod farm;
pub mod front;
pub mod ipc;
pub mod isolation;
pub mod logging;
pub mod supervisor;
pub mod sys;
pub mod tenant_log;
pub mod usage;
