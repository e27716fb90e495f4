//! Configuration: what users write, and the validated form berth runs on.
//!
//! Two stages. [`reader`] walks the TOML files (the main file, then each `include`
//! glob in order) keeping every key's line, and reports every problem as
//! `file:line: key: why` — all of them, not just the first. This module turns what
//! it read into a [`Config`] that holds only valid, resolved values: addresses are
//! parsed, host names lowercased, users looked up, certificates and htpasswd files
//! read and checked. A `Config` is never written back out.
//!
//! Layering, last wins: built-in defaults → `[server]` of the main file → each
//! tenant's block (from the main file or an included file; a tenant may be defined
//! only once). App pool settings and tenants' limits layer built-in defaults →
//! `[defaults.app]` / `[defaults.limits]` → the app's or tenant's own table
//! (`app.rs`, `limits.rs`), a tenant's error log limits built-in defaults →
//! `[server]` → its block, an app's isolation built-in → `[defaults.isolation]`
//! → the tenant's → the app's (`isolation.rs`), a route's placement over a
//! farm `[cluster]`'s keys → the route's, key by key (`cluster.rs`).
//!
//! Disk checks (roots, certificates, htpasswd files, users) happen here too, so
//! `berth check` and `berth serve` agree on what is valid.

mod app;
pub mod cluster;
mod control;
pub mod discovery;
pub mod explain;
pub mod isolation;
mod limits;
mod log_rotate;
pub mod own;
mod problem;
mod reader;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use app::{App, Bind, Pool, Protocol};
pub use control::{ControlConfig, DEFAULT_SOCKET};
pub use limits::Limits;
pub use log_rotate::{LogRotation, Period};
pub use problem::{Problem, Problems};
use reader::{At, Source, TableReader, Walk};

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub tenants: Vec<Tenant>,
    /// Every file that was read, the main file first.
    pub files: Vec<PathBuf>,
    /// What `berth check` says without refusing: every limit that
    /// `[enforce.limits]` lowered, as `file:line: key: lowers ...`, and
    /// every directory discovery left out, as `DIR: discovery: why`.
    pub notes: Vec<Problem>,
    /// What the tenants' own files layer over, kept to re-layer one
    /// tenant when it reloads its file (`berth ctl reload`).
    pub layers: std::sync::Arc<own::Layers>,
    /// `[discovery]`, and what it found (None: no `[discovery]`).
    pub discovery: Option<discovery::Discovered>,
    /// `[cluster]`: this node in a farm (None: not in one).
    pub cluster: Option<cluster::Cluster>,
}

/// `[server]`: process-wide settings.
#[derive(Debug, Clone)]
pub struct Server {
    pub listen: Vec<SocketAddr>,
    pub tls_listen: Vec<SocketAddr>,
    /// The front end runs as this user when berth is started as root.
    pub user: String,
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
    /// How often usage is sampled and stored (`meter_interval`; None:
    /// "off", no metering at all).
    pub meter_interval: Option<Duration>,
    /// Whether berth manages cgroups for the tenants (`cgroups = "auto"`,
    /// the default) or leaves them alone (`"none"`: rlimits only).
    pub cgroups: bool,
    /// The lines of `state_dir` and `log_dir` in the main file (that of
    /// `[server]` when one is not set), for problems found on disk.
    pub dir_lines: (usize, usize),
    /// No tenant runs as a uid or gid below this.
    pub min_uid: u32,
    /// A front end that reads nothing of what the supervisor has for it for
    /// this long is killed and restarted (its queue is dropped).
    pub front_stall_timeout: Duration,
    pub limits: ClientLimits,
    /// Tenants' error logs, unless a tenant's block says otherwise.
    pub error_log: ErrorLogLimits,
    /// Lines a second berth's own log takes from each process (see
    /// [`crate::logging`]).
    pub log_rate: u32,
    /// `log_rotate` and `log_keep`: berth's own rotation of every log file.
    pub log_rotation: LogRotation,
    /// `default_tls_site`: a host whose site's certificate answers TLS clients
    /// that send no SNI (checked against the sites once they are read).
    pub default_tls_site: Option<DefaultTlsSite>,
    /// `usage_raw_days`: raw usage samples are kept this many days (never
    /// longer than `usage_keep_days`), then only their hourly rollups.
    pub usage_raw_days: u32,
    /// `usage_keep_days`: hourly usage rows are kept this many days.
    pub usage_keep_days: u32,
    /// `admin_listen` and `admin_htpasswd`: where the status page and the
    /// metrics are served (None: nowhere).
    pub admin: Option<Admin>,
    /// `control_socket` and `admin_group`: `berth ctl` ([`crate::control`]).
    pub control: ControlConfig,
}

/// The admin listener: `/status`, `/status.json` and `/metrics` (see
/// `docs/status.md`), served by the front end on an address of its own that
/// no site is served on.
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    pub listen: SocketAddr,
    /// `admin_htpasswd`: the file and its text, read (as root) and checked
    /// at load. None: no password, which only a loopback address may have.
    pub htpasswd: Option<(PathBuf, String)>,
}

/// How much of a tenant's stderr reaches its `error.log` (see
/// [`crate::tenant_log`]): `error_log_rate` and `error_log_max`, in
/// `[server]` for every tenant and in `[tenant.T]` for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorLogLimits {
    /// Lines per second, sustained; a burst of
    /// [`crate::tenant_log::BURST_SECONDS`] seconds' worth passes at once.
    pub rate: u32,
    /// Once the file is this large, lines are dropped until it is rotated
    /// (`log_rotate`, which then rotates it, or an external rotation and
    /// SIGUSR1).
    pub max: u64,
}

impl Default for ErrorLogLimits {
    /// 200 lines a second (a burst of 1000) keeps every line of an app that
    /// logs a few per request at a few dozen requests a second, and of a
    /// stack trace or two, while a flood costs at most ~200 lines (some tens
    /// of KiB) a second; 64 MiB is weeks of that normal logging, and what a
    /// flood can cost the disk before the log is rotated.
    fn default() -> Self {
        ErrorLogLimits {
            rate: 200,
            max: 64 << 20,
        }
    }
}

/// `[server] default_tls_site` as written, and its line in the main file.
#[derive(Debug, Clone)]
pub struct DefaultTlsSite {
    /// Lowercase.
    pub host: String,
    pub line: usize,
}

/// Limits that protect the front end from hostile or broken clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientLimits {
    /// Time allowed for a new connection's TLS handshake and first request headers.
    pub header_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    pub keepalive_timeout: Duration,
    /// A client that accepts no bytes of a response for this long is dropped.
    pub send_timeout: Duration,
    /// A client that sends nothing of its request body for this long gets
    /// 400 (nginx's `client_body_timeout`).
    pub body_timeout: Duration,
    /// On SIGTERM, requests in flight get this long to finish.
    pub drain_timeout: Duration,
    /// Largest request head (request line + headers) in bytes.
    pub max_header_bytes: usize,
    /// Most request header fields.
    pub max_headers: usize,
    /// Most client connections open at once. At the cap, connections without
    /// a request in flight for a moment are closed to make room; without
    /// such, further clients wait in the backlog.
    pub max_connections: usize,
    /// Largest request body in bytes (Apache's `LimitRequestBody`); a site
    /// or route may set its own.
    pub max_body: u64,
    /// Request bodies for FastCGI and CGI apps are read whole before the app
    /// gets them: in memory up to this many bytes, then in a temporary file.
    pub request_buffer: usize,
    /// An app's response is read at the app's pace: in memory up to this many
    /// bytes per response, then into a temporary file.
    pub response_buffer: usize,
    /// At most this many bytes of one response go to the temporary file;
    /// beyond it the app is read only as fast as the client takes.
    pub max_response_buffer: u64,
    /// Request and response bodies in memory, all clients together; one
    /// client address may hold a quarter of it. Past it, bodies go to files.
    pub max_buffer_memory: u64,
    /// Bytes in temporary files, all clients together (a quarter per client
    /// address). Past it, a request body is refused (503) and a response is
    /// read only as fast as its client takes it.
    pub max_buffer_disk: u64,
    /// Most connections open at once from one IPv4 address or IPv6 /64.
    pub max_connections_per_ip: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(75),
            send_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_connections: 4096,
            max_body: 1 << 30,
            request_buffer: 64 << 10,
            response_buffer: 256 << 10,
            max_response_buffer: 1 << 30,
            max_buffer_memory: 256 << 20,
            max_buffer_disk: 4 << 30,
            max_connections_per_ip: 256,
        }
    }
}

/// A tenant: one Unix user owning sites.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub name: String,
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// Whether `user` was found (uid, gid and home are meaningful).
    pub resolved: bool,
    pub sites: Vec<Site>,
    pub apps: Vec<App>,
    /// What each of its processes may use.
    pub limits: Limits,
    /// Where the tenant was defined, for messages.
    pub origin: Origin,
    /// The line of its `user` key.
    pub user_line: usize,
    /// Its error log's limits: its own `error_log_rate` and `error_log_max`
    /// over `[server]`'s.
    pub error_log: ErrorLogLimits,
    /// Its own file (`own_config`), when the administrator allows one: what
    /// was read, and what of it is in use.
    pub own: Option<own::OwnFile>,
    /// Programs outside its home that its own file may run
    /// (`allowed_commands` of `[defaults]` and of its block).
    pub allowed_commands: Vec<PathBuf>,
    /// Keys of its own file the administrator locked for it (`locked` of its
    /// block; `[enforce] locked` applies to every tenant).
    pub locked: Vec<own::Lock>,
    /// What its apps' isolation starts from: `[defaults.isolation]` and its
    /// block's `isolation` (and its own file's, and `[enforce.isolation]`);
    /// each app has its own in [`App::isolation`].
    pub isolation: crate::isolation::Settings,
}

/// A name-based virtual host.
#[derive(Debug, Clone)]
pub struct Site {
    /// Lowercase; the first is canonical.
    pub hosts: Vec<String>,
    pub root: PathBuf,
    pub tls: Option<Tls>,
    /// Sorted longest path first, so the first match is the longest prefix.
    pub routes: Vec<Route>,
    /// The site's own `max_body`, if it sets one.
    pub max_body: Option<u64>,
    /// Where `hosts` and `root` were written, for problems found later
    /// (for a discovered site: its directory, line 0).
    pub lines: SiteLines,
    /// The site's own file: for a discovered site, the `berth.toml` beside
    /// its `public/`, when there is one (not read here).
    pub own_config: Option<PathBuf>,
    /// What became of that file (see [`own::OwnFile`]), once layered.
    pub own: Option<own::OwnFile>,
    /// A discovered site: the uid its root belongs to. The front end opens
    /// the root without following a symlink and refuses it if another user
    /// owns it (the tenant may swap it between the scan and the open).
    pub owner: Option<u32>,
}

/// A certificate chain and key, read and checked to match.
#[derive(Debug, Clone)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// A path prefix of a site and what serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// Starts with '/', no trailing '/' except for the root route.
    pub path: String,
    pub action: Action,
    pub auth: Option<Auth>,
    /// The route's own `max_body`, if it sets one.
    pub max_body: Option<u64>,
    /// Placement over the farm (`balance`, `handover`, ...; else
    /// `[cluster] balance`); None: served here.
    #[serde(default)]
    pub balance: Option<crate::farm::Balance>,
    /// Where `app` was written, for the check that the app exists.
    #[serde(skip)]
    pub app_at: Option<(usize, String)>,
    /// Where the route was written (its table's line), and whether in the
    /// tenant's own file, for `berth check --explain`.
    #[serde(skip)]
    pub line: usize,
    #[serde(skip)]
    pub own: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Static files from the site root.
    Static,
    /// Redirect to `to`, with the rest of the path after the prefix appended.
    Redirect { to: String, status: u16 },
    /// One of the tenant's apps. With `extensions`, only paths whose script part
    /// ends in one of them go to the app (PHP-style sites); the rest is static.
    App {
        app: String,
        extensions: Vec<String>,
    },
}

/// Basic authentication in front of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Auth {
    pub realm: String,
    pub htpasswd: PathBuf,
    /// The file's text, read (as root) and validated at load time.
    pub users: String,
}

/// The file and lines of a site's keys.
#[derive(Debug, Clone)]
pub struct SiteLines {
    pub file: PathBuf,
    pub hosts: usize,
    pub root: usize,
}

#[derive(Debug, Clone)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// The front end's user when `[server] user` is not set: a dedicated one
/// (DESIGN.md: not `www-data`, which other services on a host share, and
/// whose group may reach every tenant's app socket).
const SERVER_DEFAULT_USER: &str = "berth";

/// The front end reads the supervisor's messages on a thread that does nothing
/// else, within milliseconds even under load; 30 s without reading a byte means
/// it is stopped or wedged. Restarting drops every connection it holds, so the
/// bound stays far above any pause a swapping or overloaded machine causes.
const DEFAULT_FRONT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for Server {
    /// The built-in defaults, below `[server]`.
    fn default() -> Self {
        Server {
            listen: Vec::new(),
            tls_listen: Vec::new(),
            user: SERVER_DEFAULT_USER.into(),
            state_dir: "/var/lib/berth".into(),
            log_dir: "/var/log/berth".into(),
            cgroups: true,
            meter_interval: Some(Duration::from_secs(10)),
            dir_lines: (1, 1),
            min_uid: 1000,
            front_stall_timeout: DEFAULT_FRONT_STALL_TIMEOUT,
            limits: ClientLimits::default(),
            error_log: ErrorLogLimits::default(),
            log_rate: crate::logging::DEFAULT_RATE,
            log_rotation: LogRotation::default(),
            default_tls_site: None,
            usage_raw_days: 7,
            usage_keep_days: 400,
            admin: None,
            control: ControlConfig::default(),
        }
    }
}

/// Loads, layers and validates the configuration rooted at `path`, including
/// checks on disk. Returns every problem found.
pub fn load(path: &Path) -> Result<Config, Problems> {
    load_with(path, None)
}

/// [`load`], keeping from `previous` (the configuration in use) each tenant's
/// last good own file: a tenant whose file is now refused keeps serving
/// what it last accepted. Problems in a tenant's own file never make the
/// configuration invalid; they are in that tenant's [`own::OwnFile`].
pub fn load_with(path: &Path, previous: Option<&Config>) -> Result<Config, Problems> {
    let problems = RefCell::new(Problems::default());
    let mut files = Vec::new();
    let mut tenants: Vec<Tenant> = Vec::new();
    let mut server = None;
    let mut defaults = Defaults::default();
    let mut ceiling = limits::Ceiling::default();
    let mut enforced = isolation::Enforce::default();
    let mut locks = Vec::new();
    let mut discovery = None;
    let mut cluster = None;

    match read_source(path) {
        Ok(src) => {
            files.push(src.path.clone());
            if let Some(doc) = parse(&src, &problems) {
                let walk = Walk {
                    src: &src,
                    problems: &problems,
                };
                let mut top = TableReader::new(&walk, doc.as_table(), String::new(), 1);
                let mut includes = Vec::new();
                match top.table("server") {
                    Some(t) => {
                        let (s, inc) = read_server(t);
                        defaults.error_log = s.error_log;
                        server = Some(s);
                        includes = inc;
                    }
                    None => walk.problem(
                        1,
                        "server",
                        "missing: berth needs a [server] table with `listen` or `tls_listen`",
                    ),
                }
                // Before any tenant: its placement is every route's default.
                if let Some(t) = top.table("cluster") {
                    let (c, placement) =
                        cluster::read(t, server.as_ref().unwrap_or(&Server::default()));
                    cluster = c;
                    defaults.placement = Some(placement);
                }
                if let Some(mut d) = top.table("defaults") {
                    if let Some(t) = d.table("app") {
                        defaults.pool = app::read_defaults(t);
                    }
                    if let Some(t) = d.table("limits") {
                        defaults.limits = limits::read_limits(t, Limits::default());
                    }
                    let layer = d.table("isolation").map(isolation::read_layer);
                    defaults.isolation = defaults.isolation.over(&walk, layer.as_ref());
                    defaults.own_config = own::read_own_config(&mut d);
                    defaults.allowed_commands = own::read_allowed_commands(&mut d);
                    d.finish();
                }
                if let Some(t) = top.table("tenant") {
                    read_tenants(t, &defaults, &mut tenants);
                }
                if let Some(t) = top.table("discovery") {
                    let dserver = server.clone().unwrap_or_default();
                    discovery = discovery::read(t, &dserver, &defaults);
                }
                if let Some(mut e) = top.table("enforce") {
                    if let Some(t) = e.table("limits") {
                        ceiling = limits::read_ceiling(t);
                    }
                    if let Some(t) = e.table("isolation") {
                        enforced = isolation::read_enforce(t);
                    }
                    locks = own::read_locks(&mut e);
                    e.finish();
                }
                top.finish();
                for inc in includes {
                    load_include(&inc, &defaults, &problems, &mut files, &mut tenants);
                }
            }
        }
        Err(p) => problems.borrow_mut().0.push(p),
    }

    let server = server.unwrap_or_default();
    let mut problems = problems.into_inner();
    // The admin's problems first: own files layer over a valid admin layer.
    validate(&server, &tenants, &mut problems);
    let handlers = discovery.iter().flat_map(|d| &d.handlers);
    enforced.check_apps(
        tenants
            .iter()
            .flat_map(|t| {
                t.apps
                    .iter()
                    .map(move |a| (format!("tenant {}'s app {}", t.name, a.name), a))
            })
            .chain(handlers.map(|h| (format!("discovery handler {}", h.app.name), &h.app))),
        &mut problems,
    );
    let mut discovery_notes = Vec::new();
    // Discovered sites join a valid configuration, after the
    // administrator's tenants; nothing found there makes it invalid.
    let discovered = match discovery {
        Some(d) if problems.is_empty() => match discovery::scan(&d.root, d.min_uid) {
            Ok(scan) => {
                let found = discovery::merge(
                    &d,
                    &scan,
                    &server,
                    &defaults,
                    (&ceiling, &enforced),
                    &mut tenants,
                );
                discovery_notes = found.notes.clone();
                Some(found)
            }
            Err(why) => {
                problems.push(
                    path,
                    d.line,
                    "discovery.root",
                    format!("cannot read: {why}"),
                );
                None
            }
        },
        _ => None,
    };
    let layers = std::sync::Arc::new(own::Layers {
        main: path.to_path_buf(),
        pool: defaults.pool.clone(),
        ceiling,
        isolation: enforced,
        locks,
        admin: tenants.clone(),
        root: rustix::process::geteuid().is_root(),
        min_uid: server.min_uid,
        max_body: server.limits.max_body,
        placement: defaults.placement.clone(),
    });
    let mut notes = discovery_notes;
    if problems.is_empty() {
        for t in &mut tenants {
            // (A tenant given to another user keeps nothing of the last one's.)
            let kept = previous
                .and_then(|p| p.tenants.iter().find(|x| x.name == t.name))
                .filter(|k| k.uid == t.uid);
            notes.extend(layers.finish(t, kept));
        }
    }
    check_default_tls_site(path, &server, &tenants, &mut problems);
    check_dirs(path, &server, &mut problems);
    control::check(
        path,
        &server,
        rustix::process::geteuid().is_root(),
        &mut problems,
    );
    // Report in reading order: file by file, line by line.
    problems.0.sort_by_key(|p| {
        let file = files
            .iter()
            .position(|f| *f == p.file)
            .unwrap_or(usize::MAX);
        (file, p.line)
    });
    if problems.is_empty() {
        Ok(Config {
            server,
            tenants,
            files,
            notes,
            layers,
            discovery: discovered,
            cluster,
        })
    } else {
        Err(problems)
    }
}

fn read_source(path: &Path) -> Result<Source, Problem> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Source::new(path.to_path_buf(), text)),
        Err(e) => Err(Problem {
            file: path.to_path_buf(),
            line: 0,
            key: "(file)".into(),
            why: format!("cannot read: {e}"),
        }),
    }
}

fn parse(src: &Source, problems: &RefCell<Problems>) -> Option<toml_edit::Document<String>> {
    match toml_edit::Document::parse(src.text().to_string()) {
        Ok(doc) => Some(doc),
        Err(e) => {
            let line = e.span().map(|s| src.line_of(s.start)).unwrap_or(0);
            let msg = e.message().trim().replace('\n', " ");
            problems
                .borrow_mut()
                .push(&src.path, line, "(syntax)", format!("invalid TOML: {msg}"));
            None
        }
    }
}

/// What a tenant's tables layer over: `[defaults]`, and `[server]`'s
/// limits on the tenants' error logs (`[server]` is read before any tenant).
#[derive(Debug, Default)]
struct Defaults {
    pool: Pool,
    limits: Limits,
    error_log: ErrorLogLimits,
    /// `[defaults] own_config`: every tenant's own file, `~/` being its home.
    own_config: Option<At<own::OwnPath>>,
    allowed_commands: Vec<PathBuf>,
    /// `[defaults.isolation]` over the built-in settings.
    isolation: isolation::Layered,
    /// `[cluster]`'s placement, every route's default (None: there is no
    /// `[cluster]`).
    placement: Option<cluster::Placement>,
}

/// An included file may only define tenants.
fn load_include(
    path: &Path,
    defaults: &Defaults,
    problems: &RefCell<Problems>,
    files: &mut Vec<PathBuf>,
    tenants: &mut Vec<Tenant>,
) {
    let src = match read_source(path) {
        Ok(src) => src,
        Err(p) => {
            problems.borrow_mut().0.push(p);
            return;
        }
    };
    files.push(src.path.clone());
    let Some(doc) = parse(&src, problems) else {
        return;
    };
    let walk = Walk {
        src: &src,
        problems,
    };
    let mut top = TableReader::new(&walk, doc.as_table(), String::new(), 1);
    if let Some(t) = top.table("tenant") {
        read_tenants(t, defaults, tenants);
    }
    for (key, _) in doc.as_table().iter() {
        if key != "tenant" {
            top.problem(
                key,
                "an included file may only define tenants ([tenant.NAME])",
            );
        }
    }
}

fn read_server(mut t: TableReader<'_>) -> (Server, Vec<PathBuf>) {
    let mut s = Server::default();
    let walk = t.walk();
    let base = walk
        .file()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let addrs = |at: Option<At<Vec<String>>>| -> Vec<SocketAddr> {
        let Some(at) = at else { return Vec::new() };
        let mut out = Vec::new();
        for a in &at.value {
            match a.parse::<SocketAddr>() {
                Ok(addr) if out.contains(&addr) => {
                    walk.problem(at.line, &at.key, format!("{a} is listed twice"))
                }
                Ok(addr) => out.push(addr),
                Err(_) => walk.problem(
                    at.line,
                    &at.key,
                    format!(
                        "{a:?} is not an address:port such as \"127.0.0.1:8080\" or \"[::1]:443\""
                    ),
                ),
            }
        }
        out
    };
    let listen = t.strings("listen");
    let tls_listen = t.strings("tls_listen");
    if listen.is_none() && tls_listen.is_none() {
        walk.problem(
            t.line(),
            "server.listen",
            "no listener: set `listen` or `tls_listen`",
        );
    }
    s.listen = addrs(listen);
    s.tls_listen = addrs(tls_listen);
    for a in &s.tls_listen {
        if s.listen.contains(a) {
            t.problem("tls_listen", format!("{a} is also in listen"));
        }
    }
    if let Some(u) = t.string("user") {
        match nix::unistd::User::from_name(&u.value) {
            Ok(Some(_)) => {}
            Ok(None) => walk.problem(
                u.line,
                &u.key,
                format!("no such user {:?} (the front end runs as it)", u.value),
            ),
            Err(e) => walk.problem(u.line, &u.key, format!("cannot look up {:?}: {e}", u.value)),
        }
        s.user = u.value;
    } else if rustix::process::geteuid().is_root()
        && matches!(nix::unistd::User::from_name(SERVER_DEFAULT_USER), Ok(None))
    {
        // (Started as a normal user, berth switches to no user at all.)
        walk.problem(
            t.line(),
            "server.user",
            format!(
                "not set, and there is no user {SERVER_DEFAULT_USER:?} to run the front end as: \
                 create a dedicated one (useradd --system --no-create-home --shell \
                 /usr/sbin/nologin {SERVER_DEFAULT_USER}) or name one"
            ),
        );
    }
    if t.peek_str("meter_interval") == Some("off") {
        t.string("meter_interval");
        s.meter_interval = None;
    } else if let Some(d) = duration(walk, t.string("meter_interval")) {
        if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
            t.problem("meter_interval", "must be between 1s and 1h, or \"off\"");
        } else {
            s.meter_interval = Some(d);
        }
    }
    if let Some(c) = t.string("cgroups") {
        match c.value.as_str() {
            "auto" => s.cgroups = true,
            "none" => s.cgroups = false,
            other => walk.problem(
                c.line,
                &c.key,
                format!("{other:?}: expected \"auto\" (v2, else v1, else none) or \"none\""),
            ),
        }
    }
    s.dir_lines = (t.line(), t.line());
    if let Some(d) = t.string("state_dir") {
        s.state_dir = resolve_path(walk, &d);
        s.dir_lines.0 = d.line;
    }
    if let Some(d) = t.string("log_dir") {
        s.log_dir = resolve_path(walk, &d);
        s.dir_lines.1 = d.line;
    }
    if let Some(n) = t.integer("min_uid") {
        match u32::try_from(n.value) {
            Ok(v) if v >= 1 => s.min_uid = v,
            _ => walk.problem(n.line, &n.key, "must be between 1 and 4294967295"),
        }
    }
    if let Some(at) = t.string("front_stall_timeout") {
        let (line, key) = (at.line, at.key.clone());
        match duration(walk, Some(at)) {
            Some(d) if d < Duration::from_secs(1) => walk.problem(
                line,
                &key,
                "must be at least \"1s\" (a front end busy for a moment must not be restarted)",
            ),
            Some(d) => s.front_stall_timeout = d,
            None => {}
        }
    }
    let l = &mut s.limits;
    if let Some(d) = duration(walk, t.string("header_timeout")) {
        l.header_timeout = d;
    }
    if let Some(d) = duration(walk, t.string("keepalive_timeout")) {
        l.keepalive_timeout = d;
    }
    if let Some(d) = duration(walk, t.string("send_timeout")) {
        l.send_timeout = d;
    }
    if let Some(d) = duration(walk, t.string("body_timeout")) {
        l.body_timeout = d;
    }
    if let Some(d) = duration(walk, t.string("drain_timeout")) {
        l.drain_timeout = d;
    }
    if let Some(n) = bounded(walk, t.integer("max_header_bytes"), 8192, 1 << 20) {
        l.max_header_bytes = n;
    }
    if let Some(n) = bounded(walk, t.integer("max_headers"), 8, 10_000) {
        l.max_headers = n;
    }
    if let Some(n) = bounded(walk, t.integer("max_connections"), 1, 1_000_000) {
        l.max_connections = n;
    }
    if let Some(n) = size_in(walk, t.size("max_body"), 0, MAX_SIZE) {
        l.max_body = n;
    }
    if let Some(n) = size_in(walk, t.size("request_buffer"), 0, 64 << 20) {
        l.request_buffer = n as usize;
    }
    if let Some(n) = size_in(walk, t.size("response_buffer"), 4 << 10, 64 << 20) {
        l.response_buffer = n as usize;
    }
    if let Some(n) = size_in(walk, t.size("max_response_buffer"), 0, MAX_SIZE) {
        l.max_response_buffer = n;
    }
    if let Some(n) = size_in(walk, t.size("max_buffer_memory"), 16 << 20, MAX_SIZE) {
        l.max_buffer_memory = n;
    }
    if let Some(n) = size_in(walk, t.size("max_buffer_disk"), 0, MAX_SIZE) {
        l.max_buffer_disk = n;
    }
    if let Some(n) = bounded(walk, t.integer("max_connections_per_ip"), 1, 1_000_000) {
        l.max_connections_per_ip = n;
    }
    if let Some(n) = bounded(walk, t.integer("log_rate"), 1, 1_000_000) {
        s.log_rate = n as u32;
    }
    s.error_log = read_error_log(&mut t, s.error_log);
    s.log_rotation = log_rotate::read(&mut t, s.log_rotation);
    if let Some(n) = bounded(walk, t.integer("usage_raw_days"), 1, 366) {
        s.usage_raw_days = n as u32;
    }
    if let Some(n) = bounded(walk, t.integer("usage_keep_days"), 1, 3660) {
        s.usage_keep_days = n as u32;
    }
    s.admin = read_admin(&mut t, &s);
    s.control = control::read(&mut t);
    if let Some(h) = t.string("default_tls_site") {
        s.default_tls_site = Some(DefaultTlsSite {
            host: h.value.trim_end_matches('.').to_ascii_lowercase(),
            line: h.line,
        });
    }
    let mut includes = Vec::new();
    if let Some(globs) = t.strings("include") {
        for g in &globs.value {
            let pattern = base.join(g);
            match glob::glob(&pattern.to_string_lossy()) {
                Ok(paths) => {
                    let mut found: Vec<PathBuf> = paths.filter_map(Result::ok).collect();
                    found.sort();
                    includes.extend(found);
                }
                Err(e) => walk.problem(
                    globs.line,
                    &globs.key,
                    format!("{g:?} is not a valid glob: {e}"),
                ),
            }
        }
    }
    t.finish();
    (s, includes)
}

/// `admin_listen` (one address, not one of the sites' listeners) and
/// `admin_htpasswd` (an htpasswd file, read and checked as a route's is).
/// An address other than loopback needs the password file: the page names
/// every tenant, its user and what it uses.
fn read_admin(t: &mut TableReader<'_>, s: &Server) -> Option<Admin> {
    let walk = t.walk();
    let listen = t.string("admin_listen");
    let htpasswd = t.string("admin_htpasswd");
    let Some(listen) = listen else {
        if let Some(h) = htpasswd {
            walk.problem(
                h.line,
                &h.key,
                "is set but admin_listen is not: there is no admin listener to protect",
            );
        }
        return None;
    };
    let addr = match listen.value.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            walk.problem(
                listen.line,
                &listen.key,
                format!(
                    "{:?} is not an address:port such as \"127.0.0.1:8081\" or \"[::1]:8081\"",
                    listen.value
                ),
            );
            return None;
        }
    };
    if s.listen.contains(&addr) || s.tls_listen.contains(&addr) {
        walk.problem(
            listen.line,
            &listen.key,
            format!("{addr} is also a site listener (listen or tls_listen); the admin listener needs an address of its own"),
        );
    }
    let htpasswd = match htpasswd {
        None => None,
        Some(h) => {
            let path = resolve_path(walk, &h);
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) => {
                    walk.problem(h.line, &h.key, format!("{}: {e}", h.value));
                    return None;
                }
            };
            match crate::front::auth::Htpasswd::parse(&text) {
                Ok(users) if users.is_empty() => {
                    walk.problem(h.line, &h.key, format!("{}: names no user", h.value));
                    return None;
                }
                Ok(_) => Some((path, text)),
                Err(errors) => {
                    for e in errors {
                        walk.problem(h.line, &h.key, format!("{}:{}: {}", h.value, e.line, e.why));
                    }
                    return None;
                }
            }
        }
    };
    if htpasswd.is_none() && !loopback(addr.ip()) {
        walk.problem(
            listen.line,
            &listen.key,
            format!(
                "{addr} is not a loopback address: set admin_htpasswd (the status page names every tenant and what it uses), or listen on 127.0.0.1 or [::1]"
            ),
        );
    }
    Some(Admin {
        listen: addr,
        htpasswd,
    })
}

/// Whether `ip` reaches only this machine (`127.0.0.0/8`, `::1`, and
/// IPv4-mapped loopback). `0.0.0.0` and `::` are every address: not.
pub fn loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(a) => a.is_loopback(),
        std::net::IpAddr::V6(a) => {
            a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// `error_log_rate` (lines per second) and `error_log_max` (a size) of
/// `[server]` or `[tenant.T]`, over `base`.
fn read_error_log(t: &mut TableReader<'_>, base: ErrorLogLimits) -> ErrorLogLimits {
    let walk = t.walk();
    let rate = bounded(walk, t.integer("error_log_rate"), 1, 1_000_000).map(|n| n as u32);
    let max = size_in(walk, t.size("error_log_max"), 64 << 10, 1 << 40);
    ErrorLogLimits {
        rate: rate.unwrap_or(base.rate),
        max: max.unwrap_or(base.max),
    }
}

/// `default_tls_site` must name a host of a site that has a certificate.
fn check_default_tls_site(
    main: &Path,
    server: &Server,
    tenants: &[Tenant],
    problems: &mut Problems,
) {
    let Some(default) = &server.default_tls_site else {
        return;
    };
    let key = "server.default_tls_site";
    let site = tenants
        .iter()
        .flat_map(|t| t.sites.iter().map(move |s| (t, s)))
        .find(|(_, s)| s.hosts.contains(&default.host));
    match site {
        None => problems.push(
            main,
            default.line,
            key,
            format!(
                "no site has the host {:?}; name a host of a site with `tls`",
                default.host
            ),
        ),
        Some((tenant, site)) if site.tls.is_none() => problems.push(
            main,
            default.line,
            key,
            format!(
                "the site of {:?} (tenant {}, {}:{}) has no `tls` certificate to offer",
                default.host,
                tenant.name,
                site.lines.file.display(),
                site.lines.hosts
            ),
        ),
        Some(_) => {}
    }
}

/// `state_dir` and `log_dir` as the supervisor walks them before it
/// creates files there (`supervisor::prepare_dir`, with the same rule,
/// [`crate::supervisor::dir_rule`]): no symbolic link on the way, every
/// directory above them root's (or berth's own) and writable by nobody else
/// unless sticky, and the directories themselves berth's and writable by
/// nobody else. What does not exist yet is fine: berth creates it.
fn check_dirs(main: &Path, server: &Server, problems: &mut Problems) {
    for (key, path, line) in [
        ("server.state_dir", &server.state_dir, server.dir_lines.0),
        ("server.log_dir", &server.log_dir, server.dir_lines.1),
    ] {
        if let Some(why) = unsafe_dir(path) {
            problems.push(main, line, key, why);
        }
    }
}

/// Why berth would refuse to create files in `path` (see [`check_dirs`]).
fn unsafe_dir(path: &Path) -> Option<String> {
    let plain = crate::config::plain_path(path);
    let names: Vec<&std::ffi::OsStr> = plain.iter().skip(1).collect();
    let mut walked = PathBuf::from("/");
    for i in 0..=names.len() {
        if i > 0 {
            walked.push(names[i - 1]);
        }
        let meta = match std::fs::symlink_metadata(&walked) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => return Some(format!("{}: {e}", walked.display())),
        };
        let name = walked.display();
        if meta.file_type().is_symlink() {
            return Some(format!(
                "{name} is a symbolic link; berth refuses to follow it (give the real path)"
            ));
        }
        if !meta.is_dir() {
            return Some(format!("{name} is not a directory"));
        }
        if let Err(why) = crate::supervisor::dir_rule(meta.uid(), meta.mode(), i == names.len()) {
            return Some(format!("{name} {why}"));
        }
    }
    None
}

impl Tenant {
    /// Its own files as layered: its own, then its sites'.
    pub fn own_files(&self) -> impl Iterator<Item = &own::OwnFile> {
        self.own
            .iter()
            .chain(self.sites.iter().filter_map(|s| s.own.as_ref()))
    }
}

impl Config {
    /// The host whose certificate answers TLS clients without SNI:
    /// `default_tls_site`, else the first host of the first site with TLS.
    pub fn default_tls_host(&self) -> Option<&str> {
        if let Some(d) = &self.server.default_tls_site {
            return Some(&d.host);
        }
        self.tenants
            .iter()
            .flat_map(|t| &t.sites)
            .find(|s| s.tls.is_some())
            .map(|s| s.hosts[0].as_str())
    }
}

/// A path as written; a relative one is relative to the directory of the file
/// it is written in (so example trees work wherever they are checked out).
fn resolve_path(walk: &Walk<'_>, d: &At<String>) -> PathBuf {
    if d.value.is_empty() {
        walk.problem(d.line, &d.key, "must not be empty");
    }
    let p = PathBuf::from(&d.value);
    if p.is_absolute() {
        return p;
    }
    let base = walk.file().parent().unwrap_or(Path::new("."));
    let joined = base.join(p);
    std::path::absolute(&joined).unwrap_or(joined)
}

/// `p` (absolute) without `.` and `..` components, taken as written (the
/// administrator's paths: a `..` after a symbolic link means what it says
/// here, not what the kernel would make of it).
pub fn plain_path(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn bounded(walk: &Walk<'_>, n: Option<At<i64>>, min: i64, max: i64) -> Option<usize> {
    let n = n?;
    if n.value < min || n.value > max {
        walk.problem(n.line, &n.key, format!("must be between {min} and {max}"));
        return None;
    }
    usize::try_from(n.value).ok()
}

/// Parses a size: "1024", "64KiB", "64k", "1MiB", "1M", "1GiB", "1G" (powers
/// of 1024, as nginx and Apache read them; "B" may follow).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let shift = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

/// The largest size any key takes (1 TiB).
const MAX_SIZE: u64 = 1 << 40;

/// A size within `min..=max` bytes, or a problem at its line.
fn size_in(walk: &Walk<'_>, at: Option<At<u64>>, min: u64, max: u64) -> Option<u64> {
    let at = at?;
    if at.value < min || at.value > max {
        walk.problem(
            at.line,
            &at.key,
            format!("must be between {} and {}", show_size(min), show_size(max)),
        );
        return None;
    }
    Some(at.value)
}

/// A size as a user would write it ("64KiB", "1GiB", "100").
pub fn show_size(n: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// A duration as a user writes it ("500ms", "10s", "5m", "1h").
pub fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Parses "500ms", "10s", "5m", "1h".
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        "h" => Some(Duration::from_secs(n.checked_mul(3600)?)),
        _ => None,
    }
}

/// The longest duration a key takes: far beyond any timeout or interval
/// that makes sense, and small enough that "now + it" is a time berth can
/// represent (a tenant's own file sets pool timeouts: one that overflowed
/// would panic the supervisor or the front end).
const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

fn duration(walk: &Walk<'_>, at: Option<At<String>>) -> Option<Duration> {
    let at = at?;
    match parse_duration(&at.value) {
        Some(d) if d > MAX_DURATION => {
            walk.problem(
                at.line,
                &at.key,
                format!("{:?} is too long: at most \"8760h\" (a year)", at.value),
            );
            None
        }
        Some(d) if !d.is_zero() => Some(d),
        _ => {
            walk.problem(
                at.line,
                &at.key,
                format!(
                    "{:?} is not a duration such as \"500ms\", \"10s\", \"5m\" or \"1h\"",
                    at.value
                ),
            );
            None
        }
    }
}

fn read_tenants(t: TableReader<'_>, defaults: &Defaults, tenants: &mut Vec<Tenant>) {
    for (name, mut tt) in t.into_named_tables() {
        let walk = tt.walk();
        if !valid_name(&name) {
            walk.problem(
                tt.line(),
                tt.key(),
                "tenant names use a-z, 0-9, '-' and '_', start with a letter, at most 32 characters",
            );
        }
        if let Some(prev) = tenants.iter().find(|x| x.name == name) {
            walk.problem(
                tt.line(),
                tt.key(),
                format!("tenant {name:?} is defined twice: first at {}", prev.origin),
            );
            continue;
        }
        let origin = Origin {
            file: walk.file().to_path_buf(),
            line: tt.line(),
        };
        let user = tt.string("user");
        let home = tt.string("home");
        let own_config = own::read_own_config(&mut tt);
        let mut allowed_commands = defaults.allowed_commands.clone();
        for c in own::read_allowed_commands(&mut tt) {
            if !allowed_commands.contains(&c) {
                allowed_commands.push(c);
            }
        }
        let locked = own::read_locks(&mut tt);
        let error_log = read_error_log(&mut tt, defaults.error_log);
        let layer = tt.table("isolation").map(isolation::read_layer);
        let isolation = defaults.isolation.over(walk, layer.as_ref());
        let apps = tt
            .table("app")
            .map(|t| app::read_apps(t, &defaults.pool, &isolation))
            .unwrap_or_default();
        let limits = tt
            .table("limits")
            .map_or(defaults.limits, |t| limits::read_limits(t, defaults.limits));
        let sites: Vec<Site> = tt
            .tables("site")
            .into_iter()
            .filter_map(|s| read_site(s, defaults.placement.as_ref()))
            .collect();
        tt.finish();
        // Routes may only name this tenant's own apps; a CGI app without a
        // command runs scripts by extension and cannot be mounted.
        for site in &sites {
            for route in &site.routes {
                if let Some(why) = route_app_problem(&apps, route, &format!("tenant.{name}.app")) {
                    let (line, key) = route.app_at.clone().unwrap_or((tt.line(), tt.key().into()));
                    walk.problem(line, &key, why);
                }
            }
        }
        let Some(user) = user else {
            walk.problem(tt.line(), &format!("{}.user", tt.key()), "is required");
            continue;
        };
        // Written relative ("..") it is made plain, so that what lies inside
        // it can be told by its path alone (own files, their apps).
        let home = home.map(|h| plain_path(&resolve_path(walk, &h)));
        let mut tenant = Tenant {
            name,
            user: user.value.clone(),
            uid: 0,
            gid: 0,
            home: home.clone().unwrap_or_default(),
            resolved: false,
            sites,
            apps,
            limits,
            origin,
            user_line: 0,
            error_log,
            own: None,
            allowed_commands,
            locked,
            isolation: isolation.settings,
        };
        match nix::unistd::User::from_name(&user.value) {
            Ok(Some(u)) => {
                tenant.uid = u.uid.as_raw();
                tenant.gid = u.gid.as_raw();
                tenant.resolved = true;
                if home.is_none() {
                    tenant.home = u.dir;
                }
                for app in &mut tenant.apps {
                    if app.dir.as_os_str().is_empty() {
                        app.dir = tenant.home.clone();
                    }
                }
            }
            Ok(None) => walk.problem(
                user.line,
                &user.key,
                format!("no such user {:?}", user.value),
            ),
            Err(e) => walk.problem(
                user.line,
                &user.key,
                format!("cannot look up user {:?}: {e}", user.value),
            ),
        }
        tenant.user_line = user.line;
        let own_config = own_config.or_else(|| defaults.own_config.clone());
        if let Some(at) = own_config
            && let Some(path) = own::own_path(walk, &at, &tenant.home)
        {
            tenant.own = Some(own::OwnFile::new(path));
        }
        tenants.push(tenant);
    }
}

/// Why `route` cannot use the app it names, if it cannot: there is no such
/// app among `apps` (defined under `[PREFIX.NAME]`), or it is a CGI app
/// without a command and the route chooses no scripts by extension.
fn route_app_problem(apps: &[App], route: &Route, prefix: &str) -> Option<String> {
    let Action::App { app, extensions } = &route.action else {
        return None;
    };
    match apps.iter().find(|a| a.name == *app) {
        None => Some(format!("there is no app {app:?} (define [{prefix}.{app}])")),
        Some(a) if a.command.is_empty() && extensions.is_empty() => Some(format!(
            "CGI app {app:?} has no command, so it can only run scripts chosen by `extensions` (give the route extensions, or the app a command)"
        )),
        Some(_) => None,
    }
}

fn valid_name(name: &str) -> bool {
    name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn read_site(mut t: TableReader<'_>, placement: Option<&cluster::Placement>) -> Option<Site> {
    let walk = t.walk();
    let hosts = t.strings("hosts");
    let root = t.string("root");
    let tls = t.table("tls").and_then(read_tls);
    let max_body = size_in(walk, t.size("max_body"), 0, MAX_SIZE);
    let mut routes: Vec<Route> = Vec::new();
    for r in t.tables("route") {
        let line = r.line();
        let key = r.key().to_string();
        if let Some(route) = read_route(r, &AdminFiles, &cluster::RouteKeys::Admin(placement)) {
            if routes.iter().any(|x| x.path == route.path) {
                walk.problem(line, &key, format!("path {:?} is routed twice", route.path));
            } else {
                routes.push(route);
            }
        }
    }
    t.finish();
    let Some(hosts) = hosts else {
        t_problem(walk, &t, "hosts", "is required: a list of host names");
        return None;
    };
    let mut clean = Vec::new();
    for h in &hosts.value {
        let lower = h.to_ascii_lowercase();
        if !valid_host(&lower) {
            walk.problem(
                hosts.line,
                &hosts.key,
                format!("{h:?} is not a host name (letters, digits, '-', '.', no port)"),
            );
        } else if clean.contains(&lower) {
            walk.problem(hosts.line, &hosts.key, format!("{h:?} is listed twice"));
        } else {
            clean.push(lower);
        }
    }
    if hosts.value.is_empty() {
        walk.problem(hosts.line, &hosts.key, "needs at least one host name");
    }
    let Some(root) = root else {
        t_problem(
            walk,
            &t,
            "root",
            "is required: the directory of static files",
        );
        return None;
    };
    let root_path = resolve_path(walk, &root);
    match std::fs::metadata(&root_path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => walk.problem(
            root.line,
            &root.key,
            format!("{} is not a directory", root_path.display()),
        ),
        Err(e) => walk.problem(
            root.line,
            &root.key,
            format!("{}: {e}", root_path.display()),
        ),
    }
    // Longest prefix first: route lookup takes the first match.
    routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
    Some(Site {
        hosts: clean,
        root: root_path,
        tls: tls.flatten(),
        routes,
        max_body,
        lines: SiteLines {
            file: walk.file().to_path_buf(),
            hosts: hosts.line,
            root: root.line,
        },
        own_config: None,
        own: None,
        owner: None,
    })
}

fn t_problem(walk: &Walk<'_>, t: &TableReader<'_>, k: &str, why: &str) {
    walk.problem(t.line(), &format!("{}.{k}", t.key()), why);
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// `tls = { cert, key }`. Returns Some(None) when the table was present but bad.
fn read_tls(mut t: TableReader<'_>) -> Option<Option<Tls>> {
    let walk = t.walk();
    let cert = t.string("cert");
    let key = t.string("key");
    t.finish();
    let (Some(cert), Some(key)) = (cert, key) else {
        t_problem(walk, &t, "cert", "tls needs both `cert` and `key`");
        return Some(None);
    };
    let read = |at: &At<String>| match std::fs::read(resolve_path(walk, at)) {
        Ok(b) => Some(b),
        Err(e) => {
            walk.problem(at.line, &at.key, format!("{}: {e}", at.value));
            None
        }
    };
    let (Some(cert_pem), Some(key_pem)) = (read(&cert), read(&key)) else {
        return Some(None);
    };
    if let Err(why) = crate::front::tls::certified_key(&cert_pem, &key_pem) {
        walk.problem(cert.line, &cert.key, why);
        return Some(None);
    }
    Some(Some(Tls {
        cert: resolve_path(walk, &cert),
        key: resolve_path(walk, &key),
        cert_pem,
        key_pem,
    }))
}

/// How a file a route names (an htpasswd file) is read: as root for the
/// administrator's configuration ([`AdminFiles`]), with the tenant's
/// ownership checked for its own file ([`own::TenantFiles`]).
pub(crate) trait ReadFile {
    /// The path as resolved, and the file's text.
    fn read(&self, walk: &Walk<'_>, at: &At<String>) -> Result<(PathBuf, String), String>;
}

/// Files the administrator names: read as root, as written.
pub(crate) struct AdminFiles;

impl ReadFile for AdminFiles {
    fn read(&self, walk: &Walk<'_>, at: &At<String>) -> Result<(PathBuf, String), String> {
        let path = resolve_path(walk, at);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok((path, text)),
            Err(e) => Err(format!("{}: {e}", at.value)),
        }
    }
}

fn read_route(
    mut t: TableReader<'_>,
    files: &dyn ReadFile,
    placement: &cluster::RouteKeys<'_>,
) -> Option<Route> {
    let walk = t.walk();
    let line = t.line();
    let path = t.string("path");
    let redirect = t.string("redirect");
    let status = t.integer("status");
    let app = t.string("app");
    let extensions = t.strings("extensions");
    let auth = t.table("auth").map(|a| read_auth(a, files));
    let max_body = size_in(walk, t.size("max_body"), 0, MAX_SIZE);
    let balance = placement.read(&mut t);
    t.finish();
    let Some(path) = path else {
        t_problem(
            walk,
            &t,
            "path",
            "is required: the URL path prefix, such as \"/blog/\"",
        );
        return None;
    };
    let clean = route_path(&path.value)
        .map_err(|why| walk.problem(path.line, &path.key, why))
        .ok();
    if let (Some(a), Some(_)) = (&app, &redirect) {
        walk.problem(
            a.line,
            &a.key,
            "a route has either `app` or `redirect`, not both",
        );
    }
    if let (Some(e), None) = (&extensions, &app) {
        walk.problem(
            e.line,
            &e.key,
            "`extensions` only applies to a route with `app`",
        );
    }
    let mut app_at = None;
    let action = match redirect {
        None if app.is_some() => {
            let app = app.expect("checked");
            app_at = Some((app.line, app.key.clone()));
            let exts = extensions
                .map(|e| read_extensions(walk, &e).0)
                .unwrap_or_default();
            if let Some(s) = &status {
                walk.problem(
                    s.line,
                    &s.key,
                    "`status` only applies to a route with `redirect`",
                );
            }
            Action::App {
                app: app.value,
                extensions: exts,
            }
        }
        Some(to) => {
            let valid = to.value.starts_with('/')
                || to.value.starts_with("https://")
                || to.value.starts_with("http://");
            if !valid || to.value.chars().any(|c| c.is_ascii_control() || c == ' ') {
                walk.problem(
                    to.line,
                    &to.key,
                    "must be an absolute URL (http:// or https://) or a path starting with '/'",
                );
            }
            let code = match status {
                None => 308,
                Some(s) if [301, 302, 303, 307, 308].contains(&s.value) => s.value as u16,
                Some(s) => {
                    walk.problem(s.line, &s.key, "must be one of 301, 302, 303, 307, 308");
                    308
                }
            };
            Action::Redirect {
                to: to.value,
                status: code,
            }
        }
        None => {
            if let Some(s) = status {
                walk.problem(
                    s.line,
                    &s.key,
                    "`status` only applies to a route with `redirect`",
                );
            }
            Action::Static
        }
    };
    Some(Route {
        path: clean?,
        action,
        auth: auth.flatten(),
        max_body,
        balance,
        app_at,
        line,
        own: false,
    })
}

/// The file extensions `e` lists (a leading '.' dropped), and whether all
/// were valid (each invalid one is reported).
fn read_extensions(walk: &Walk<'_>, e: &At<Vec<String>>) -> (Vec<String>, bool) {
    let mut exts = Vec::new();
    let mut ok = true;
    for x in &e.value {
        let x = x.trim_start_matches('.');
        if x.is_empty()
            || !x
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            walk.problem(
                e.line,
                &e.key,
                format!("{x:?} is not a file extension such as \"php\""),
            );
            ok = false;
        } else {
            exts.push(x.to_string());
        }
    }
    (exts, ok)
}

/// Validates a route path and returns it without a trailing slash ("/" stays "/").
fn route_path(p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with '/'"));
    }
    if p.contains("//")
        || p.chars()
            .any(|c| c.is_ascii_control() || c == '%' || c == '\\' || c == '?' || c == '#')
    {
        return Err(format!(
            "{p:?} must be a plain path: no '//', '%', '\\\\', '?', '#' or control characters"
        ));
    }
    if p.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!("{p:?} must not contain '.' or '..' segments"));
    }
    let trimmed = p.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    })
}

fn read_auth(mut t: TableReader<'_>, files: &dyn ReadFile) -> Option<Auth> {
    let walk = t.walk();
    let realm = t.string("realm");
    let htpasswd = t.string("htpasswd");
    t.finish();
    let Some(htpasswd) = htpasswd else {
        t_problem(
            walk,
            &t,
            "htpasswd",
            "is required: the path of an htpasswd file",
        );
        return None;
    };
    let realm = realm
        .map(|r| r.value)
        .unwrap_or_else(|| "restricted".into());
    if realm
        .chars()
        .any(|c| c == '"' || c == '\\' || c.is_control())
    {
        t_problem(
            walk,
            &t,
            "realm",
            "must not contain quotes, backslashes or control characters",
        );
    }
    let (htpasswd_path, text) = match files.read(walk, &htpasswd) {
        Ok(read) => read,
        Err(why) => {
            walk.problem(htpasswd.line, &htpasswd.key, why);
            return None;
        }
    };
    if let Err(errors) = crate::front::auth::Htpasswd::parse(&text) {
        for e in errors {
            walk.problem(
                htpasswd.line,
                &htpasswd.key,
                format!("{}:{}: {}", htpasswd.value, e.line, e.why),
            );
        }
        return None;
    }
    Some(Auth {
        realm,
        htpasswd: htpasswd_path,
        users: text,
    })
}

/// Checks that need the whole configuration: unique hosts, uids, identities,
/// root owners.
fn validate(server: &Server, tenants: &[Tenant], problems: &mut Problems) {
    if rustix::process::geteuid().is_root() {
        check_identities(server, tenants, problems);
    }
    let mut hosts: HashMap<String, String> = HashMap::new();
    for tenant in tenants {
        let user_key = format!("tenant.{}.user", tenant.name);
        if tenant.resolved && tenant.uid == 0 {
            problems.push(
                &tenant.origin.file,
                tenant.user_line,
                &user_key,
                "a tenant may not run as root",
            );
        } else if tenant.resolved && (tenant.uid < server.min_uid || tenant.gid < server.min_uid) {
            problems.push(
                &tenant.origin.file,
                tenant.user_line,
                &user_key,
                format!(
                    "user {:?} has uid {} and gid {}; tenants need both >= min_uid ({})",
                    tenant.user, tenant.uid, tenant.gid, server.min_uid
                ),
            );
        }
        // suEXEC's checks, as the supervisor will run them before every start.
        if tenant.resolved {
            let switch_user = rustix::process::geteuid().is_root();
            // (A CGI app without a command runs scripts, checked per run.)
            for app in tenant
                .apps
                .iter()
                .filter(|a| !a.command.is_empty() && !a.own)
            {
                let spec = crate::supervisor::spawn::SpawnSpec {
                    tenant: &tenant.name,
                    user: &tenant.user,
                    home: &tenant.home,
                    min_uid: server.min_uid,
                    argv: &app.command,
                    script: None,
                    dir: &app.dir,
                    env: &app.env,
                    fds: Vec::new(),
                    open_files: tenant.limits.open_files,
                    cgroup: Vec::new(),
                    rlimits: Vec::new(),
                    switch_user,
                    // Reported by check_identities, at the user's line.
                    isolation: None,
                    isolate: None,
                };
                if let Err(refused) = crate::supervisor::spawn::check(&spec) {
                    problems.push(
                        &app.origin.file,
                        app.origin.line,
                        format!("tenant.{}.app.{}", tenant.name, app.name),
                        format!("would not start: {refused}"),
                    );
                }
            }
        }
        for (i, site) in tenant.sites.iter().enumerate() {
            let here = format!("tenant.{}.site[{i}]", tenant.name);
            let at = format!(
                "{here} ({}:{})",
                site.lines.file.display(),
                site.lines.hosts
            );
            for h in &site.hosts {
                match hosts.get(h) {
                    Some(prev) => problems.push(
                        &site.lines.file,
                        site.lines.hosts,
                        format!("{here}.hosts"),
                        format!("host {h:?} is already served by {prev}"),
                    ),
                    None => {
                        hosts.insert(h.clone(), at.clone());
                    }
                }
            }
            // A tenant may only publish its own files (or root's, e.g. a shared
            // default page): a root owned by someone else would let one tenant
            // serve another's directory.
            if let Ok(meta) = std::fs::metadata(&site.root)
                && tenant.resolved
                && meta.uid() != 0
                && meta.uid() != tenant.uid
            {
                problems.push(
                    &site.lines.file,
                    site.lines.root,
                    format!("{here}.root"),
                    format!(
                        "{} is owned by uid {}, not by the tenant's user {:?} (uid {}) or root",
                        site.root.display(),
                        meta.uid(),
                        tenant.user,
                        tenant.uid
                    ),
                );
            }
        }
    }
}

/// Identities that would break isolation, each reported at the tenant's
/// `user` line (only when berth switches users, as root: run unprivileged,
/// the front end and every app are the caller anyway). The rules are
/// [`crate::supervisor::spawn::breaches`], which the supervisor also runs
/// before every start (groups can change while berth runs); here a pair of
/// tenants sharing a uid or primary group is reported once, at the later
/// one, naming the first earlier one it shares with.
fn check_identities(server: &Server, tenants: &[Tenant], problems: &mut Problems) {
    use crate::supervisor::spawn::{Breach, FrontId, breaches, peers};
    use crate::sys::Identity;
    use nix::unistd::User;
    let identity = |name: &str| {
        let user = User::from_name(name).ok().flatten()?;
        Identity::of(&user).ok()
    };
    let front = identity(&server.user).map(|id| FrontId {
        user: server.user.clone(),
        uid: id.uid,
        gid: id.gid,
    });
    let peers = peers(tenants);
    let position = |name: &str| peers.iter().position(|p| p.tenant == name);
    // (The resolved tenants are `peers`, in the same order: `i` is the
    // tenant's place there.)
    for (i, tenant) in tenants.iter().filter(|t| t.resolved).enumerate() {
        let Some(id) = identity(&tenant.user) else {
            continue;
        };
        let mut shared_reported = false;
        for breach in breaches(&tenant.name, &tenant.user, &id, front.as_ref(), &peers) {
            if let Breach::SharedUser { other, .. } | Breach::SharedGroup { other, .. } = &breach {
                // At the later of the two, once.
                if shared_reported || position(&other.tenant).is_none_or(|j| j > i) {
                    continue;
                }
                shared_reported = true;
            }
            problems.push(
                &tenant.origin.file,
                tenant.user_line,
                format!("tenant.{}.user", tenant.name),
                breach.to_string(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_stall_timeout_is_read_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let load_with = |value: &str| {
            let path = dir.path().join("berth.toml");
            let text = format!(
                "[server]\nlisten = [\"127.0.0.1:1\"]\nuser = \"daemon\"\nfront_stall_timeout = {value}\n"
            );
            std::fs::write(&path, text).unwrap();
            load(&path)
        };
        let cfg = load_with("\"45s\"").unwrap();
        assert_eq!(cfg.server.front_stall_timeout, Duration::from_secs(45));
        for (bad, why) in [
            ("\"500ms\"", "must be at least \"1s\""),
            ("\"soon\"", "is not a duration"),
            ("30", "expected a string"),
        ] {
            let text = load_with(bad)
                .unwrap_err()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n");
            assert!(
                text.contains(":4: server.front_stall_timeout: ") && text.contains(why),
                "{bad}: {text}"
            );
        }
        let default = Server::default();
        assert_eq!(default.front_stall_timeout, Duration::from_secs(30));
    }

    #[test]
    fn a_tenants_error_log_limits_layer_over_the_servers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.toml");
        let text = "[server]\nlisten = [\"127.0.0.1:1\"]\nuser = \"nobody\"\nmin_uid = 1\n\
            error_log_rate = 50\nerror_log_max = \"1MiB\"\n\n\
            [tenant.ta]\nuser = \"daemon\"\nerror_log_rate = 7\n\n\
            [tenant.tb]\nuser = \"bin\"\n";
        std::fs::write(&path, text).unwrap();
        let cfg = load(&path).unwrap_or_else(|p| panic!("{p}"));
        let limits: Vec<_> = cfg
            .tenants
            .iter()
            .map(|t| (t.error_log.rate, t.error_log.max))
            .collect();
        assert_eq!(limits, [(7, 1 << 20), (50, 1 << 20)]);
    }

    #[test]
    fn meter_interval_and_cgroups_are_read_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.toml");
        let base = "[server]\nlisten = [\"127.0.0.1:1\"]\nuser = \"nobody\"\n";
        let with = |extra: &str| {
            std::fs::write(&path, format!("{base}{extra}")).unwrap();
            load(&path)
        };
        let s = with("").unwrap().server;
        assert_eq!(
            (s.meter_interval, s.cgroups),
            (Some(Duration::from_secs(10)), true)
        );
        let s = with("meter_interval = \"off\"\ncgroups = \"none\"\n")
            .unwrap()
            .server;
        assert_eq!((s.meter_interval, s.cgroups), (None, false));
        let s = with("meter_interval = \"1m\"\n").unwrap().server;
        assert_eq!(s.meter_interval, Some(Duration::from_secs(60)));
        let text = with("meter_interval = \"500ms\"\ncgroups = \"v3\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            text.contains(":4: server.meter_interval: must be between 1s and 1h, or \"off\""),
            "{text}"
        );
        assert!(
            text.contains(":5: server.cgroups: \"v3\": expected \"auto\""),
            "{text}"
        );
    }

    #[test]
    fn log_rate_is_read_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let load_with = |line: &str| {
            let path = dir.path().join("berth.toml");
            let text = format!("[server]\nlisten = [\"127.0.0.1:1\"]\nuser = \"daemon\"\n{line}\n");
            std::fs::write(&path, text).unwrap();
            load(&path)
        };
        assert_eq!(load_with("").unwrap().server.log_rate, 100);
        assert_eq!(load_with("log_rate = 5").unwrap().server.log_rate, 5);
        for bad in ["log_rate = 0", "log_rate = 2000000", "log_rate = \"fast\""] {
            let text = load_with(bad).unwrap_err().to_string();
            assert!(text.contains(":4: server.log_rate: "), "{bad}: {text}");
        }
    }

    #[test]
    fn admin_listen_off_loopback_needs_admin_htpasswd() {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("secret", 4).unwrap();
        std::fs::write(dir.path().join("admin.htpasswd"), format!("ops:{hash}\n")).unwrap();
        std::fs::write(dir.path().join("empty.htpasswd"), "# nobody\n").unwrap();
        let load_with = |lines: &str| {
            let path = dir.path().join("berth.toml");
            let text =
                format!("[server]\nlisten = [\"127.0.0.1:1\"]\nuser = \"daemon\"\n{lines}\n");
            std::fs::write(&path, text).unwrap();
            load(&path)
        };
        assert_eq!(load_with("").unwrap().server.admin, None);
        let open = load_with("admin_listen = \"127.0.0.1:8081\"").unwrap();
        assert_eq!(
            open.server.admin,
            Some(Admin {
                listen: "127.0.0.1:8081".parse().unwrap(),
                htpasswd: None
            })
        );
        assert!(load_with("admin_listen = \"[::1]:8081\"").is_ok());
        let guarded =
            load_with("admin_listen = \"0.0.0.0:8081\"\nadmin_htpasswd = \"admin.htpasswd\"")
                .unwrap();
        let admin = guarded.server.admin.unwrap();
        assert_eq!(admin.htpasswd.unwrap().0, dir.path().join("admin.htpasswd"));
        for (lines, want) in [
            (
                "admin_listen = \"0.0.0.0:8081\"",
                ":4: server.admin_listen: 0.0.0.0:8081 is not a loopback address: set admin_htpasswd",
            ),
            (
                "admin_listen = \"[::]:8081\"",
                ":4: server.admin_listen: [::]:8081 is not a loopback address",
            ),
            (
                "admin_listen = \"127.0.0.1:1\"",
                ":4: server.admin_listen: 127.0.0.1:1 is also a site listener",
            ),
            (
                "admin_listen = \"localhost:8081\"",
                ":4: server.admin_listen: \"localhost:8081\" is not an address:port",
            ),
            (
                "admin_htpasswd = \"admin.htpasswd\"",
                ":4: server.admin_htpasswd: is set but admin_listen is not",
            ),
            (
                "admin_listen = \"127.0.0.1:8081\"\nadmin_htpasswd = \"missing.htpasswd\"",
                ":5: server.admin_htpasswd: missing.htpasswd: No such file",
            ),
            (
                "admin_listen = \"127.0.0.1:8081\"\nadmin_htpasswd = \"empty.htpasswd\"",
                ":5: server.admin_htpasswd: empty.htpasswd: names no user",
            ),
        ] {
            let text = load_with(lines).unwrap_err().to_string();
            assert!(text.contains(want), "{lines}: {text}");
        }
    }

    #[test]
    fn usage_retention_days_are_read_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let load_with = |lines: &str| {
            let path = dir.path().join("berth.toml");
            let text =
                format!("[server]\nlisten = [\"127.0.0.1:1\"]\nuser = \"daemon\"\n{lines}\n");
            std::fs::write(&path, text).unwrap();
            load(&path)
        };
        let default = load_with("").unwrap().server;
        assert_eq!((default.usage_raw_days, default.usage_keep_days), (7, 400));
        let set = load_with("usage_raw_days = 30\nusage_keep_days = 3660")
            .unwrap()
            .server;
        assert_eq!((set.usage_raw_days, set.usage_keep_days), (30, 3660));
        for (bad, key) in [
            ("usage_raw_days = 0", "usage_raw_days"),
            ("usage_raw_days = 367", "usage_raw_days"),
            ("usage_keep_days = 3661", "usage_keep_days"),
            ("usage_keep_days = \"1y\"", "usage_keep_days"),
        ] {
            let text = load_with(bad).unwrap_err().to_string();
            assert!(
                text.contains(&format!(":4: server.{key}: ")),
                "{bad}: {text}"
            );
        }
    }

    #[test]
    fn sizes_read_as_nginx_and_apache_write_them() {
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("64KiB"), Some(64 << 10));
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size("1 MiB"), Some(1 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("2gb"), Some(2 << 30));
        assert_eq!(parse_size("1.5G"), None);
        assert_eq!(parse_size("KiB"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("99999999999T"), None, "overflow");
        assert_eq!(show_size(64 << 10), "64KiB");
        assert_eq!(show_size(1 << 30), "1GiB");
        assert_eq!(show_size(1000), "1000");
    }
}
