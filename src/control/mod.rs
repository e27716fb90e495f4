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
            Some(t) if t.own_files().any(|o| o.refused()) => ProblemsReply {
                ok: false,
                problems: t
                    .own_files()
                    .flat_map(|o| o.problems.iter().map(ToString::to_string))
                    .collect(),
                message: format!(
                    "the configuration loads, but an own file of tenant {tenant} would be refused: {}",
                    t.own_files()
                        .filter(|o| o.refused())
                        .map(|o| o.summary())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            },
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

/// `berth ctl check` by a tenant's user: its own files (its own, and its
/// sites' `berth.toml`) as they are on disk now, layered over the
/// administrator's configuration in use (not the one on disk, which the
/// administrator may be in the middle of editing), without using them.
pub fn own_check(current: &Config, tenant: &str) -> ProblemsReply {
    let checks = current.layers.check(tenant);
    if checks.is_empty() {
        return ProblemsReply {
            ok: false,
            problems: Vec::new(),
            message: format!("tenant {tenant} has no own file: the administrator allows none"),
        };
    }
    let mut problems = Vec::new();
    let mut said = Vec::new();
    for c in &checks {
        let path = c.path.display();
        said.push(if !c.exists {
            format!("there is no file at {path}")
        } else if c.problems.is_empty() {
            format!("{path} would be accepted")
        } else {
            format!(
                "{path} would be refused: {} problem(s); the version in use stays",
                c.problems.len()
            )
        });
        problems.extend(c.problems.iter().map(ToString::to_string));
    }
    ProblemsReply {
        ok: problems.is_empty(),
        problems,
        message: said.join("; "),
    }
}
