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
//! `reload` and `check` answer with the problems that concern the caller's
//! tenant ([`problems_for`], [`check_for`]).

pub mod audit;
pub mod auth;
pub mod client;
pub mod logs;
pub mod proto;
pub mod server;

use std::path::{Path, PathBuf};

use crate::config::{self, Config, Problem, Problems};
use proto::ProblemsReply;

pub use crate::config::DEFAULT_SOCKET;

/// Whether `problem` concerns tenant `tenant`: a key of its block
/// (`tenant.NAME` and below), or a file of its own as a whole (unreadable,
/// not TOML) among `files`, the files its block is in (the main file
/// excepted: a problem there is the admin's).
pub fn concerns(problem: &Problem, tenant: &str, files: &[PathBuf], main: &Path) -> bool {
    let block = format!("tenant.{tenant}");
    let key = problem.key.as_str();
    let in_block = key == block
        || key
            .strip_prefix(block.as_str())
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['));
    let own_file = problem.file != main
        && files.contains(&problem.file)
        && !problem.key.starts_with("tenant.");
    in_block || own_file
}

/// The files tenant `tenant`'s block is in, by `config`.
fn files_of(config: &Config, tenant: &str) -> Vec<PathBuf> {
    config
        .tenants
        .iter()
        .filter(|t| t.name == tenant)
        .map(|t| t.origin.file.clone())
        .collect()
}

/// `problems` that concern `tenant` (one line each), judged by the files
/// of `current` (the configuration in use), and how many were left out.
pub fn problems_for(
    problems: &Problems,
    tenant: &str,
    current: &Config,
    main: &Path,
) -> (Vec<String>, usize) {
    let files = files_of(current, tenant);
    let mine: Vec<String> = problems
        .iter()
        .filter(|p| concerns(p, tenant, &files, main))
        .map(ToString::to_string)
        .collect();
    let elsewhere = problems.len() - mine.len();
    (mine, elsewhere)
}

/// `berth ctl check`: loads the configuration at `path` as a reload would,
/// applies nothing, and answers with the problems that concern `tenant`
/// (judged by `current`, the configuration in use). Reads files: run it
/// off the supervisor's loop.
pub fn check_for(path: &Path, current: &Config, tenant: &str) -> ProblemsReply {
    match config::load(path) {
        Ok(cfg) => match cfg.tenants.iter().find(|t| t.name == tenant) {
            Some(t) => ProblemsReply {
                ok: true,
                problems: Vec::new(),
                elsewhere: 0,
                message: format!(
                    "the configuration loads: tenant {tenant} has {} site(s) and {} app(s)",
                    t.sites.len(),
                    t.apps.len()
                ),
            },
            None => ProblemsReply {
                ok: false,
                problems: Vec::new(),
                elsewhere: 0,
                message: format!(
                    "the configuration loads, but has no tenant {tenant}: a reload would remove it"
                ),
            },
        },
        Err(problems) => {
            let (mine, elsewhere) = problems_for(&problems, tenant, current, path);
            ProblemsReply {
                ok: false,
                message: refused_message(
                    problems.len(),
                    mine.len(),
                    elsewhere,
                    tenant,
                    "a reload would be refused",
                ),
                problems: mine,
                elsewhere,
            }
        }
    }
}

/// "LEAD: N problem(s), M in tenant T's configuration": what a refused
/// load says.
pub fn refused_message(
    total: usize,
    mine: usize,
    elsewhere: usize,
    tenant: &str,
    lead: &str,
) -> String {
    if elsewhere == 0 {
        format!("{lead}: {total} problem(s)")
    } else {
        format!(
            "{lead}: {total} problem(s), {mine} in tenant {tenant}'s configuration, {elsewhere} elsewhere (not shown; the admin sees them with berth check)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(file: &str, key: &str) -> Problem {
        Problem {
            file: file.into(),
            line: 3,
            key: key.into(),
            why: "why".into(),
        }
    }

    #[test]
    fn a_problem_concerns_a_tenant_by_its_block_or_its_own_files() {
        let main = Path::new("/etc/berth/berth.toml");
        let files = vec![PathBuf::from("/etc/berth/tenants.d/alice.toml")];
        let yes = [
            p("/etc/berth/berth.toml", "tenant.alice"),
            p("/etc/berth/berth.toml", "tenant.alice.user"),
            p("/etc/berth/berth.toml", "tenant.alice.site[0].root"),
            p("/etc/berth/tenants.d/alice.toml", "(syntax)"),
            p("/etc/berth/tenants.d/alice.toml", "(file)"),
        ];
        let no = [
            p("/etc/berth/berth.toml", "tenant.alicex.user"),
            p("/etc/berth/berth.toml", "tenant.bob.user"),
            p("/etc/berth/berth.toml", "server.listen"),
            p("/etc/berth/berth.toml", "(syntax)"),
            p("/etc/berth/tenants.d/alice.toml", "tenant.bob.user"),
            p("/etc/berth/tenants.d/bob.toml", "(syntax)"),
        ];
        for q in yes {
            assert!(concerns(&q, "alice", &files, main), "{q}");
        }
        for q in no {
            assert!(!concerns(&q, "alice", &files, main), "{q}");
        }
        // The main file is never "the tenant's own".
        let files = vec![main.to_path_buf()];
        assert!(!concerns(
            &p("/etc/berth/berth.toml", "(syntax)"),
            "alice",
            &files,
            main
        ));
    }
}
