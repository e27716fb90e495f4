//! The control socket and `berth ctl`: tenants and admins act on a running
//! berth without root and without signals.
//!
//! The supervisor creates the socket (`[server] control_socket`, mode 0666:
//! anyone may connect, and each request is authorised by the caller's uid
//! from `SO_PEERCRED`, see [`auth`]) and serves it on a thread of its own
//! ([`server`]): a slow or hostile client never holds up the supervisor's
//! event loop. What needs the loop's state (apps, processes, the
//! configuration in use) goes to it as a typed [`server::Call`] with a
//! oneshot reply; slow work (reading logs, the usage database, loading the
//! configuration for `check`) runs on the control thread's blocking pool.
//!
//! - [`proto`]: the typed, versioned, length-prefixed protocol;
//! - [`auth`]: who may act on which tenant;
//! - [`audit`]: one line per request in `log_dir/audit.log`;
//! - [`logs`]: a tenant's log lines that concern one app;
//! - [`client`]: `berth ctl`, its output for people and `--json`.
//!
//! `reload` and `check` by a tenant's user concern its own file alone,
//! layered over the administrator's configuration in use; by root or an
//! admin, the whole configuration ([`check_for`]).

pub mod audit;
pub mod auth;
pub mod client;
pub mod logs;
pub mod proto;
pub mod server;

use std::path::Path;

use crate::config::{self, Config};
use proto::ProblemsReply;

pub use crate::config::DEFAULT_SOCKET;

/// `berth ctl check`: for a tenant's user, [`own_check`]; for root or an
/// admin, loads the configuration at `path` as a reload would, applies
/// nothing, and answers with every problem and what `tenant`'s own file
/// would become. Reads files: run it off the supervisor's loop.
pub fn check_for(path: &Path, current: &Config, tenant: &str, admin: bool) -> ProblemsReply {
    if !admin {
        return own_check(current, tenant);
    }
    match config::load(path) {
        Ok(cfg) => match cfg.tenants.iter().find(|t| t.name == tenant) {
            Some(t) if t.own.as_ref().is_some_and(|o| !o.problems.is_empty()) => {
                let own = t.own.as_ref().expect("checked");
                ProblemsReply {
                    ok: false,
                    problems: own.problems.iter().map(ToString::to_string).collect(),
                    message: format!(
                        "the configuration loads, but tenant {tenant}'s own file would be refused: {}",
                        own.summary()
                    ),
                }
            }
            Some(t) => ProblemsReply {
                ok: true,
                problems: Vec::new(),
                message: format!(
                    "the configuration loads: tenant {tenant} has {} site(s) and {} app(s)",
                    t.sites.len(),
                    t.apps.len()
                ),
            },
            None => ProblemsReply {
                ok: false,
                problems: Vec::new(),
                message: format!(
                    "the configuration loads, but has no tenant {tenant}: a reload would remove it"
                ),
            },
        },
        Err(problems) => ProblemsReply {
            ok: false,
            message: format!("a reload would be refused: {} problem(s)", problems.len()),
            problems: problems.iter().map(ToString::to_string).collect(),
        },
    }
}

/// `berth ctl check` by a tenant's user: its own file as it is on disk now,
/// layered over the administrator's configuration in use (not the one on
/// disk, which the administrator may be in the middle of editing), without
/// using it.
pub fn own_check(current: &Config, tenant: &str) -> ProblemsReply {
    let reply = |ok: bool, problems: Vec<String>, message: String| ProblemsReply {
        ok,
        problems,
        message,
    };
    match current.layers.check(tenant) {
        None => reply(
            false,
            Vec::new(),
            format!("tenant {tenant} has no own file: the administrator allows none"),
        ),
        Some(c) if !c.exists => reply(
            true,
            Vec::new(),
            format!(
                "there is no file at {}: the administrator's settings are in use",
                c.path.display()
            ),
        ),
        Some(c) if c.problems.is_empty() => reply(
            true,
            Vec::new(),
            format!(
                "{} would be accepted (berth ctl reload puts it to use)",
                c.path.display()
            ),
        ),
        Some(c) => reply(
            false,
            c.problems.iter().map(ToString::to_string).collect(),
            format!(
                "{} would be refused: {} problem(s); the version in use stays",
                c.path.display(),
                c.problems.len()
            ),
        ),
    }
}
