//! `berth audit`: the host checklist of a big site's security review, applied
//! to what berth serves. Each [`Finding`] has a [`Severity`], a [`Place`]
//! (a path, a `file:line` of the configuration, a listener, a tenant), what
//! is wrong and the fix; `docs/audit.md` lists every check.
//!
//! It runs on a configuration loaded exactly as `berth check` loads it
//! (what `check` refuses never gets here), reads what that configuration
//! names on disk and in the user database, and changes nothing:
//! - `roots`: every site root, walked without following links (bounded:
//!   200,000 entries and 64 levels per root, one file system): modes, set-id files, executables no route runs, service files
//!   inside the root, links the static file rules refuse;
//! - `files`: the files berth itself reads as root (its configuration,
//!   TLS keys, htpasswd files) and what it writes (`state_dir`, `log_dir`);
//! - `tls`: the sites' certificates: dates, host names, signatures;
//! - `exposure`: listeners, the admin listener, passwords over plain
//!   HTTP, the control socket, and what apps without isolation can read;
//! - `accounts`: the tenants' and the front end's users and groups.
//!
//! Run it as root, as berth runs: a normal user sees only part of it (said
//! once, as an info finding).

mod access;
mod accounts;
mod exposure;
mod files;
mod render;
mod roots;
mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Config;

/// How bad a finding is, least first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; nothing to fix.
    Info,
    /// A smell or a weakness that needs another mistake to matter.
    Low,
    /// A leak or a weakness a local user or a tenant can use.
    Medium,
    /// A tenant's files, passwords or keys are open to someone else.
    High,
    /// Root, or every tenant, is open to someone else.
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::Info,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Severity, String> {
        Severity::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| format!("{s:?} is not one of critical, high, medium, low, info"))
    }
}

/// Where a finding is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Place {
    /// A file or directory (and a line in it, for an htpasswd file).
    Path {
        path: PathBuf,
        #[serde(skip_serializing_if = "Option::is_none")]
        line: Option<usize>,
    },
    /// A key of the configuration.
    Config {
        file: PathBuf,
        line: usize,
        key: String,
    },
    /// A listening address, and the key that sets it.
    Listener {
        address: SocketAddr,
        file: PathBuf,
        line: usize,
        key: String,
    },
    /// A tenant as a whole (its user: the line of its `user` key).
    Tenant {
        tenant: String,
        file: PathBuf,
        line: usize,
    },
    /// The machine as a whole (how the audit itself ran).
    Host,
}

impl Place {
    /// A path, made plain (`a/../b` is shown as `b`, as berth resolves
    /// what the administrator wrote).
    pub fn path(path: impl AsRef<Path>) -> Place {
        Place::Path {
            path: plain(path.as_ref()),
            line: None,
        }
    }

    pub fn config(file: &Path, line: usize, key: impl Into<String>) -> Place {
        Place::Config {
            file: file.to_path_buf(),
            line,
            key: key.into(),
        }
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Path { path, line: None } => write!(f, "{}", path.display()),
            Place::Path {
                path,
                line: Some(l),
            } => write!(f, "{}:{l}", path.display()),
            Place::Config { file, line, key } => write!(f, "{}:{line}: {key}", file.display()),
            Place::Listener {
                address,
                file,
                line,
                key,
            } => write!(f, "{address} ({}:{line}: {key})", file.display()),
            Place::Tenant { tenant, file, line } => {
                write!(f, "tenant {tenant} ({}:{line})", file.display())
            }
            Place::Host => f.write_str("this host"),
        }
    }
}

/// One thing the audit found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Which check found it (the names of `docs/audit.md`).
    pub check: &'static str,
    pub place: Place,
    /// The tenant it concerns, if one.
    pub tenant: Option<String>,
    pub what: String,
    /// A command or a change of configuration.
    pub fix: String,
}

/// What the audit found, most severe first, and what it looked at.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// Site roots walked, and the entries seen in them.
    pub roots: usize,
    pub entries: usize,
    pub tenants: usize,
    pub sites: usize,
}

impl Report {
    /// The findings at `severity` or above.
    pub fn at_or_above(&self, severity: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity >= severity)
            .count()
    }

    /// The findings as a JSON array of objects (`severity`, `check`,
    /// `place` {`kind`, ...}, `tenant`, `what`, `fix`).
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(&self.findings).unwrap_or_else(|_| "[]".into())
    }

    /// The findings for a person: grouped by severity, one line each and
    /// its fix, then a summary (`colour`: for a terminal).
    pub fn text(&self, config: &Path, fail_on: Severity, colour: bool) -> String {
        render::text(self, config, fail_on, colour)
    }
}

/// What every check may look at.
pub(crate) struct Context<'a> {
    pub cfg: &'a Config,
    pub accounts: accounts::Accounts,
    /// The front end's user and groups (None: no such user).
    pub front: Option<access::Principal>,
    /// The audit runs as root (it sees what berth sees).
    pub root: bool,
    /// Seconds since the epoch.
    pub now: i64,
}

impl Context<'_> {
    /// The line of `keys` (a table path, then a key) in the main file, else
    /// of its table, else 1.
    pub fn main_line(&self, keys: &[&str]) -> usize {
        let main = &self.cfg.files[0];
        key_line(main, keys).unwrap_or(1)
    }

    pub fn main(&self) -> &Path {
        &self.cfg.files[0]
    }
}

/// Audits what `cfg` (loaded as `berth check` loads it) serves.
pub fn run(cfg: &Config) -> Report {
    let accounts = accounts::Accounts::load();
    let front = accounts.principal(&cfg.server.user);
    let ctx = Context {
        cfg,
        accounts,
        front,
        root: rustix::process::geteuid().is_root(),
        now: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    };
    let mut out = Vec::new();
    if !ctx.root {
        out.push(Finding {
            severity: Severity::Info,
            check: "unprivileged",
            place: Place::Host,
            tenant: None,
            what: format!(
                "the audit ran as uid {}, not as root: files and directories it may not read, and the password database's shadow file, were not audited",
                rustix::process::geteuid().as_raw()
            ),
            fix: "run it as root (sudo berth audit ...), as berth itself runs".into(),
        });
    }
    let walked = roots::check(&ctx, &mut out);
    files::check(&ctx, &mut out);
    tls::check(&ctx, &mut out);
    exposure::check(&ctx, &mut out);
    accounts::check(&ctx, &mut out);
    // Most severe first; within a severity, by check, then by place.
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.check.cmp(b.check))
            .then_with(|| a.place.to_string().cmp(&b.place.to_string()))
    });
    out.dedup();
    Report {
        findings: out,
        roots: walked.roots,
        entries: walked.entries,
        tenants: cfg.tenants.len(),
        sites: cfg.tenants.iter().map(|t| t.sites.len()).sum(),
    }
}

#[cfg(test)]
mod tests;

/// `path` without `.` and `..` when it is absolute (as berth resolves
/// what the administrator wrote); a relative one as it is.
pub(crate) fn plain(path: &Path) -> PathBuf {
    if path.is_absolute() {
        crate::config::plain_path(path)
    } else {
        path.to_path_buf()
    }
}

/// The line of `keys` in the TOML file `file` (of the innermost table
/// found, when the key itself is not there).
pub(crate) fn key_line(file: &Path, keys: &[&str]) -> Option<usize> {
    let text = std::fs::read_to_string(file).ok()?;
    let doc = toml_edit::Document::parse(text.clone()).ok()?;
    let mut item = doc.as_item();
    let mut span = None;
    for key in keys {
        match item.get(key) {
            Some(next) => {
                item = next;
                span = next.span().or(span);
            }
            None => break,
        }
    }
    let start = span?.start;
    Some(text[..start].matches('\n').count() + 1)
}
