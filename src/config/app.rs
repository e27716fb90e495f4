//! `[tenant.T.app.A]` and `[defaults.app]`: the apps a tenant runs, read from
//! the TOML walk into validated [`App`]s.
//!
//! Layering for pool settings, last wins: built-in defaults ([`Pool::default`])
//! → `[defaults.app]` → the app's own table.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::isolation::Layered;
use super::reader::{At, TableReader, Walk};
use super::{Origin, bounded, duration, resolve_path};

/// How the front end talks to an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// A pool of FastCGI responders; the listening socket is their fd 0.
    FastCgi,
    /// A pool of HTTP servers; the listening socket comes by socket activation.
    Http,
    /// One process per request (RFC 3875).
    Cgi,
}

/// Who binds an HTTP app's listening socket (DESIGN.md "App sockets").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Bind {
    /// berth binds it and passes it by socket activation (fd 3).
    Berth,
    /// The app binds 127.0.0.1:`$PORT` itself.
    Port,
    /// The app binds the Unix socket `$BERTH_SOCKET` itself.
    Socket,
}

/// Process-pool settings of an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    /// Processes kept running even when idle.
    pub min_processes: u32,
    /// Processes at most (for CGI: requests running at once).
    pub max_processes: u32,
    /// Requests one process is given at once (1: php-cgi and other
    /// one-at-a-time servers; more for threaded or evented apps).
    pub concurrency: u32,
    /// An idle process above `min_processes` is stopped after this.
    pub idle_timeout: Duration,
    /// A process is replaced after serving this many requests (0: never).
    pub max_requests: u64,
    /// A process that does not accept connections within this is given up on
    /// (a rolling restart's new processes must accept one within it).
    pub start_timeout: Duration,
    /// After a rolling restart, how long the old processes may go on with the
    /// requests they serve before they are stopped (SIGTERM, then SIGKILL
    /// after a grace).
    pub stop_timeout: Duration,
    /// Requests that may wait for a process when every process is busy
    /// (beyond `max_processes` × `concurrency` in flight); past it, 503 at once.
    pub queue: u32,
    /// How long an app may keep a request waiting: for FastCGI and HTTP apps
    /// the longest silence (before the response head, and between pieces of
    /// the body) before 504; a CGI script is killed once it has run this long.
    /// A request waits at most this long in the queue for a process (then 503).
    pub timeout: Duration,
    /// HTTP apps: the request body is read whole before a process is taken
    /// (as nginx's `proxy_request_buffering`), so a slow client holds no
    /// process. `false` streams it (after its first `request_buffer` bytes),
    /// for apps that must see an upload as it comes. FastCGI and CGI apps
    /// always get the whole body (CGI's `CONTENT_LENGTH`).
    pub request_buffering: bool,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            min_processes: 0,
            max_processes: 4,
            concurrency: 1,
            idle_timeout: Duration::from_secs(300),
            max_requests: 10_000,
            start_timeout: Duration::from_secs(10),
            stop_timeout: STOP_TIMEOUT_DEFAULT,
            queue: 64,
            request_buffering: true,
            timeout: Duration::from_secs(60),
        }
    }
}

/// `stop_timeout`'s default: as long as a request may keep the app silent
/// by default (`timeout`), so what was within its time when a restart came
/// may finish.
const STOP_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// `stop_timeout` at most: old processes a restart replaced hold their
/// memory (and their tenant's `tasks`) until they stop.
const STOP_TIMEOUT_MAX: Duration = Duration::from_secs(3600);

/// One app of a tenant.
#[derive(Debug, Clone)]
pub struct App {
    pub name: String,
    pub protocol: Protocol,
    /// argv; `command[0]` is an absolute path. Empty only for a CGI app that
    /// runs each script itself.
    pub command: Vec<String>,
    /// Working directory (for CGI scripts run by extension: their own
    /// directory instead, as RFC 3875 recommends).
    pub dir: PathBuf,
    /// Extra environment, in the order written.
    pub env: Vec<(String, String)>,
    /// Who binds the listening socket (HTTP apps; always berth for others).
    pub bind: Bind,
    /// `open_port = true`: the admin accepts that a `bind = "port"` app can
    /// be reached by every local user directly. Required for [`Bind::Port`].
    /// Only the admin's configuration may set it: a tenant's own file must
    /// refuse the key.
    pub open_port: bool,
    pub pool: Pool,
    /// Where the app's table is, for messages.
    pub origin: Origin,
    /// Defined by the tenant's own file (checked there, as the tenant's).
    pub own: bool,
    /// How its processes are isolated (see `config/isolation.rs`: built-in,
    /// `[defaults.isolation]`, the tenant's, its own, the own file's, then
    /// `[enforce.isolation]`). Filled in by the caller of `read_app`.
    pub isolation: crate::isolation::Settings,
}

/// Reads `[defaults.app]` over the built-in defaults.
pub fn read_defaults(t: TableReader<'_>) -> Pool {
    read_pool(t, Pool::default())
}

/// The keys of an app's table that are pool settings: what a tenant's own
/// file may tune on an app the administrator defined.
pub const POOL_KEYS: &[&str] = &[
    "min_processes",
    "max_processes",
    "concurrency",
    "idle_timeout",
    "max_requests",
    "start_timeout",
    "stop_timeout",
    "timeout",
    "queue",
    "request_buffering",
];

/// Reads the pool keys of `t` over `base` (the table's other keys were read
/// already, so the unknown-key check knows them).
pub(super) fn read_pool(mut t: TableReader<'_>, base: Pool) -> Pool {
    let walk = t.walk();
    let mut pool = base;
    if let Some(n) = bounded(walk, t.integer("min_processes"), 0, 1000) {
        pool.min_processes = n as u32;
    }
    let max_at = t.integer("max_processes");
    let max_line = max_at.as_ref().map(|a| (a.line, a.key.clone()));
    if let Some(n) = bounded(walk, max_at, 0, 1000) {
        pool.max_processes = n as u32;
    }
    if let Some(n) = bounded(walk, t.integer("concurrency"), 1, 10_000) {
        pool.concurrency = n as u32;
    }
    if let Some(d) = duration(walk, t.string("idle_timeout")) {
        pool.idle_timeout = d;
    }
    if let Some(n) = bounded(walk, t.integer("max_requests"), 0, i64::MAX) {
        pool.max_requests = n as u64;
    }
    if let Some(d) = duration(walk, t.string("start_timeout")) {
        pool.start_timeout = d;
    }
    if let Some(d) = duration(walk, t.string("timeout")) {
        pool.timeout = d;
    }
    let stop_at = t.string("stop_timeout");
    let written = stop_at
        .as_ref()
        .map(|a| (a.line, a.key.clone(), a.value.clone()));
    if let (Some(d), Some((line, key, value))) = (duration(walk, stop_at), written) {
        if d <= STOP_TIMEOUT_MAX {
            pool.stop_timeout = d;
        } else {
            walk.problem(
                line,
                &key,
                format!(
                    "{value:?} is too long: at most \"1h\" (the old processes a restart replaced hold their memory until they stop)"
                ),
            );
        }
    }
    if let Some(n) = bounded(walk, t.integer("queue"), 0, 100_000) {
        pool.queue = n as u32;
    }
    if let Some(b) = t.boolean("request_buffering") {
        pool.request_buffering = b.value;
    }
    if pool.max_processes == 0 || pool.min_processes > pool.max_processes {
        let (line, key) = max_line.unwrap_or((t.line(), format!("{}.max_processes", t.key())));
        walk.problem(
            line,
            &key,
            format!(
                "max_processes ({}) must be at least 1 and at least min_processes ({})",
                pool.max_processes, pool.min_processes
            ),
        );
    }
    t.finish();
    pool
}

/// Reads every `[tenant.T.app.NAME]` table; each app's `isolation` table
/// layers over `isolation` (the tenant's).
pub fn read_apps(t: TableReader<'_>, defaults: &Pool, isolation: &Layered) -> Vec<App> {
    t.into_named_tables()
        .into_iter()
        .filter_map(|(name, mut at)| {
            let walk = at.walk();
            let layer = at.table("isolation").map(super::isolation::read_layer);
            let layered = isolation.over(walk, layer.as_ref());
            let bind_at = at.place("bind");
            let mut app = read_app(name, at, defaults, AppDir::Written)?;
            super::isolation::check_bind(walk, &app, bind_at, &layered);
            app.isolation = layered.settings;
            Some(app)
        })
        .collect()
}

/// Where an app runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AppDir {
    /// In its table's `dir` (required but for CGI apps).
    Written,
    /// In its tenant's home, always: the table has no `dir` (a discovery
    /// handler, one table for every tenant). Filled in once the home is known.
    Home,
}

/// Reads one app's table (`[tenant.T.app.NAME]`, a discovery handler's, or
/// `[app.NAME]` of a tenant's own file); None when it is not valid (the
/// problems are reported).
pub(super) fn read_app(
    name: String,
    mut at: TableReader<'_>,
    defaults: &Pool,
    in_dir: AppDir,
) -> Option<App> {
    {
        let walk = at.walk();
        if !super::valid_name(&name) {
            walk.problem(
                at.line(),
                at.key(),
                "app names use a-z, 0-9, '-' and '_', start with a letter, at most 32 characters",
            );
        }
        let origin = Origin {
            file: walk.file().to_path_buf(),
            line: at.line(),
        };
        let key = at.key().to_string();
        let protocol = at.string("protocol");
        let command = at.strings("command");
        let dir = match in_dir {
            AppDir::Written => at.string("dir"),
            AppDir::Home => None,
        };
        let env = at.table("env").map(read_env);
        let bind = at.string("bind");
        let open_port = at.boolean("open_port");
        let protocol = match protocol {
            Some(p) => match p.value.as_str() {
                "fastcgi" => Some(Protocol::FastCgi),
                "http" => Some(Protocol::Http),
                "cgi" => Some(Protocol::Cgi),
                other => {
                    walk.problem(
                        p.line,
                        &p.key,
                        format!(
                            "{other:?} is not a protocol: use \"fastcgi\", \"http\" or \"cgi\""
                        ),
                    );
                    None
                }
            },
            None => {
                walk.problem(
                    at.line(),
                    &format!("{key}.protocol"),
                    "is required: \"fastcgi\", \"http\" or \"cgi\"",
                );
                None
            }
        };
        // A program path with a '/' but not absolute is relative to this file's
        // directory (like every path in the configuration); a bare name is
        // refused, since there is no PATH search.
        let mut command = command;
        let command_ok = match &mut command {
            Some(c) if c.value.is_empty() => {
                walk.problem(c.line, &c.key, "must name a program");
                false
            }
            Some(c) if c.value.iter().any(|a| a.contains('\0')) => {
                walk.problem(c.line, &c.key, "arguments must not contain NUL");
                false
            }
            Some(c) if c.value[0].starts_with('/') => true,
            Some(c) if c.value[0].contains('/') => {
                let at = At {
                    value: c.value[0].clone(),
                    line: c.line,
                    key: c.key.clone(),
                };
                c.value[0] = resolve_path(walk, &at).to_string_lossy().into_owned();
                true
            }
            Some(c) => {
                walk.problem(
                    c.line,
                    &c.key,
                    format!(
                        "{:?} must be a path to the program, such as \"/usr/bin/php-cgi\" (no PATH search)",
                        c.value[0]
                    ),
                );
                false
            }
            // A CGI app without a command runs each script itself (by its
            // `#!` line); one mounted without `extensions` needs a command,
            // which the route check asks for.
            None if protocol == Some(Protocol::Cgi) => true,
            None => {
                walk.problem(
                    at.line(),
                    &format!("{key}.command"),
                    "is required: the program and its arguments",
                );
                false
            }
        };
        let dir = match dir {
            Some(d) => Some(resolve_path(walk, &d)),
            // CGI scripts run in their own directory; a mounted CGI program
            // without `dir` runs in the tenant's home (filled in once known).
            None if protocol == Some(Protocol::Cgi) || in_dir == AppDir::Home => {
                Some(PathBuf::new())
            }
            None => {
                walk.problem(
                    at.line(),
                    &format!("{key}.dir"),
                    "is required: the working directory",
                );
                None
            }
        };
        let bind_at = bind.as_ref().map(|b| (b.line, b.key.clone()));
        let bind = match bind {
            None => Bind::Berth,
            Some(b) if protocol != Some(Protocol::Http) => {
                walk.problem(
                    b.line,
                    &b.key,
                    "only HTTP apps may bind by themselves (FastCGI apps get their socket as fd 0)",
                );
                Bind::Berth
            }
            Some(b) => match b.value.as_str() {
                "berth" => Bind::Berth,
                "port" => Bind::Port,
                "socket" => Bind::Socket,
                other => {
                    walk.problem(
                        b.line,
                        &b.key,
                        format!(
                            "{other:?}: use \"berth\" (socket activation, the default), \"port\" ($PORT) or \"socket\" ($BERTH_SOCKET)"
                        ),
                    );
                    Bind::Berth
                }
            },
        };
        check_open_port(walk, bind, bind_at, open_port.as_ref());
        let table_line = at.line();
        let pool = read_pool(at, defaults.clone());
        if protocol == Some(Protocol::Cgi) && pool.concurrency != 1 {
            walk.problem(
                table_line,
                &format!("{key}.concurrency"),
                "a CGI app runs one process per request (max_processes bounds how many at once)",
            );
        }
        let (Some(protocol), true, Some(dir)) = (protocol, command_ok, dir) else {
            return None;
        };
        Some(App {
            name,
            protocol,
            command: command.map(|c| c.value).unwrap_or_default(),
            dir,
            env: env.unwrap_or_default(),
            bind,
            open_port: open_port.is_some_and(|o| o.value),
            pool,
            origin,
            own: false,
            isolation: crate::isolation::Settings::default(),
        })
    }
}

/// A loopback port, unlike berth's sockets, can be reached by every local
/// user directly: past the auth routes and with forged `X-Forwarded-For`
/// and `Forwarded` headers. So `bind = "port"` needs the admin's explicit
/// `open_port = true`, and `open_port` means nothing elsewhere.
fn check_open_port(
    walk: &Walk<'_>,
    bind: Bind,
    bind_at: Option<(usize, String)>,
    open_port: Option<&At<bool>>,
) {
    match (bind, open_port) {
        (Bind::Port, Some(o)) if o.value => {}
        (Bind::Port, _) => {
            let (line, key) = bind_at.expect("bind = \"port\" was written");
            walk.problem(
                line,
                &key,
                "\"port\" lets every local user connect to the app's port directly, bypassing berth's auth routes and the X-Forwarded-For and Forwarded headers it sets (another tenant can read protected pages and pose as any client); use socket activation (no `bind`) or bind = \"socket\", or, if the app can only listen on a TCP port and that is acceptable, set open_port = true (admin's configuration only)",
            );
        }
        (_, Some(o)) => walk.problem(
            o.line,
            &o.key,
            "only applies to an HTTP app with bind = \"port\"",
        ),
        (_, None) => {}
    }
}

fn read_env(t: TableReader<'_>) -> Vec<(String, String)> {
    let walk = t.walk();
    let mut out = Vec::new();
    for (k, v) in t.into_values() {
        let valid_name = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        match v {
            Some(value) if valid_name && !value.value.contains('\0') => out.push((k, value.value)),
            Some(value) if !valid_name => walk.problem(
                value.line,
                &value.key,
                "environment names use A-Z, a-z, 0-9 and '_' and do not start with a digit",
            ),
            Some(value) => walk.problem(value.line, &value.key, "must not contain NUL"),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_defaults_match_the_design() {
        let p = Pool::default();
        assert_eq!((p.min_processes, p.max_processes), (0, 4));
        assert_eq!(p.concurrency, 1);
        assert_eq!(p.idle_timeout, Duration::from_secs(300));
        assert_eq!(p.max_requests, 10_000);
        assert_eq!(p.start_timeout, Duration::from_secs(10));
        assert_eq!(p.stop_timeout, Duration::from_secs(60));
        assert_eq!(p.timeout, Duration::from_secs(60));
        assert_eq!(p.queue, 64);
    }
}
