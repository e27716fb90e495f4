//! `[discovery]`: drop-in mass hosting. Each directory `root/HOSTNAME/` that
//! a user at or above `min_uid` owns, with a `public/` directory of the same
//! user in it, is a site of that user's tenant, serving `public/`, with one
//! app per handler (`[discovery.handler.NAME]`) and a route sending the
//! handler's extensions to it. A `berth.toml` beside `public/` is the site's
//! own file (its path is recorded here; the own-file layer reads it).
//!
//! Two steps, so the supervisor's watcher (`supervisor::discovery`) can look
//! at the disk every few seconds without loading anything:
//! - [`scan`] looks at the root only: one `readdir` and at most three
//!   `lstat`s per entry, no user lookups. A [`Scan`] compares equal when
//!   nothing that matters changed.
//! - `merge` (in [`super::load`], after the administrator's tenants are
//!   read and found valid) turns a scan into sites: of the administrator's
//!   tenant with the owner's uid, else of a tenant made for the owner with
//!   `[defaults]`, named after the owner's user name.
//!
//! Nothing a tenant does in the root can make the configuration invalid:
//! whatever is not taken (a bad host name, a symlink, a host the
//! administrator's configuration serves, an owner that would break
//! isolation) is left out with a note (`berth check` prints them; the
//! supervisor logs each once, when it appears). The administrator's own
//! mistakes (`[discovery]` keys, a root others may write to) are problems as
//! everywhere.
//!
//! Who may create `root/HOSTNAME` decides who gets a host name, so the root
//! must be root's (berth's own user's when berth is not root) and writable
//! by nobody else, and so must every directory above it (unless sticky):
//! [`check_root`]. Tenants fill their own directories; the administrator
//! (or a provisioning tool running as root) creates and hands them out.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::app::{self, App, AppDir};
use super::isolation::Enforce;
use super::limits::Ceiling;
use super::reader::TableReader;
use super::{
    Action, Defaults, Origin, Problem, Route, Server, Site, SiteLines, Tenant, duration, route_path,
};

/// `[discovery]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovery {
    /// The directory of host-name directories (absolute).
    pub root: PathBuf,
    /// Owners below this uid (or whose user's primary group is below it)
    /// are not tenants. At least `[server] min_uid`.
    pub min_uid: u32,
    /// How often the root is scanned again whatever inotify said: the
    /// fallback for what no watch saw (past the watch limit, a full queue,
    /// a file system without inotify).
    pub rescan: Duration,
    /// In the order written.
    pub handlers: Vec<Handler>,
    /// The line of `root`, for problems found on disk.
    pub line: usize,
}

/// `[discovery.handler.NAME]`: an app every discovered tenant gets, and the
/// route each of its discovered sites gets for it.
#[derive(Debug, Clone)]
pub struct Handler {
    /// The app (named after the handler); its `dir` is filled in with the
    /// tenant's home.
    pub app: App,
    /// The route's path (`path`, default "/").
    pub path: String,
    pub extensions: Vec<String>,
}

impl PartialEq for Handler {
    /// (An [`App`] is not comparable; what the watcher compares is the root,
    /// `min_uid` and `rescan`.)
    fn eq(&self, other: &Self) -> bool {
        self.app.name == other.app.name
            && self.path == other.path
            && self.extensions == other.extensions
    }
}

/// What [`super::load`] found by discovery, kept in the [`super::Config`].
#[derive(Debug, Clone)]
pub struct Discovered {
    pub settings: Discovery,
    /// The scan the sites were made from: what the watcher compares its
    /// scans with.
    pub scan: Scan,
    /// Why each directory left out was left out (also in
    /// [`super::Config::notes`]).
    pub notes: Vec<Problem>,
    /// Sites made, and tenants made for them.
    pub sites: usize,
    pub tenants: usize,
}

/// The default `rescan`: inotify sees changes at once; the rescan only
/// catches what it missed, and costs a `readdir` and ~3 `lstat`s per site
/// (tens of milliseconds at 10,000 sites).
const DEFAULT_RESCAN: Duration = Duration::from_secs(30);

/// A site's own file, beside its `public/`.
pub const OWN_FILE: &str = "berth.toml";

/// The site root in a host's directory.
pub const PUBLIC: &str = "public";

/// Reads `[discovery]` (after `[server]`, whose `min_uid` is the default
/// and the floor).
pub(super) fn read(
    mut t: TableReader<'_>,
    server: &Server,
    defaults: &Defaults,
) -> Option<Discovery> {
    let walk = t.walk();
    let root = t.string("root");
    let min_uid = t.integer("min_uid");
    let rescan = t.string("rescan");
    let handlers = t.table("handler");
    let mut settings = Discovery {
        root: PathBuf::new(),
        min_uid: server.min_uid,
        rescan: DEFAULT_RESCAN,
        handlers: Vec::new(),
        line: t.line(),
    };
    if let Some(n) = min_uid {
        match u32::try_from(n.value) {
            Ok(v) if v >= server.min_uid => settings.min_uid = v,
            _ => walk.problem(
                n.line,
                &n.key,
                format!(
                    "must be at least [server] min_uid ({}) and at most 4294967295: no tenant runs below it",
                    server.min_uid
                ),
            ),
        }
    }
    if let Some(at) = rescan {
        let (line, key) = (at.line, at.key.clone());
        match duration(walk, Some(at)) {
            Some(d) if d < Duration::from_secs(1) || d > Duration::from_secs(3600) => {
                walk.problem(line, &key, "must be between \"1s\" and \"1h\"")
            }
            Some(d) => settings.rescan = d,
            None => {}
        }
    }
    if let Some(h) = handlers {
        settings.handlers = read_handlers(h, defaults);
    }
    let ok = match root {
        None => {
            walk.problem(
                t.line(),
                "discovery.root",
                "is required: the directory whose subdirectories are sites, such as \"/srv/sites\"",
            );
            false
        }
        Some(r) if !r.value.starts_with('/') => {
            walk.problem(
                r.line,
                &r.key,
                format!("{:?} must be an absolute path", r.value),
            );
            false
        }
        Some(r) => {
            settings.root = PathBuf::from(&r.value);
            settings.line = r.line;
            if let Some(why) = check_root(&settings.root) {
                walk.problem(r.line, &r.key, why);
            }
            true
        }
    };
    t.finish();
    ok.then_some(settings)
}

/// Every `[discovery.handler.NAME]`: the app keys of `[tenant.T.app.NAME]`
/// but `dir` (each tenant's app runs in its home), over `[defaults.app]`,
/// plus `extensions` (required) and `path`. Each path takes one handler:
/// a route sends one app its extensions.
fn read_handlers(t: TableReader<'_>, defaults: &Defaults) -> Vec<Handler> {
    let mut out: Vec<Handler> = Vec::new();
    for (name, mut h) in t.into_named_tables() {
        let walk = h.walk();
        let (line, key) = (h.line(), h.key().to_string());
        let extensions = h.strings("extensions");
        let path = h.string("path");
        let mut ok = true;
        let mut exts = Vec::new();
        match &extensions {
            None => {
                walk.problem(
                    line,
                    &format!("{key}.extensions"),
                    "is required: the file extensions this handler runs, such as [\"php\"]",
                );
                ok = false;
            }
            Some(e) if e.value.is_empty() => {
                walk.problem(e.line, &e.key, "needs at least one extension");
                ok = false;
            }
            Some(e) => {
                let (valid, all) = super::read_extensions(walk, e);
                exts = valid;
                ok &= all;
            }
        }
        let route = match &path {
            None => Some("/".to_string()),
            Some(p) => route_path(&p.value)
                .map_err(|why| walk.problem(p.line, &p.key, why))
                .ok(),
        };
        let command_at = h.place("command");
        if h.place("isolation").is_some() {
            h.problem(
                "isolation",
                "discovered apps take [defaults.isolation]; a handler has no isolation table of its own",
            );
            h.skip("isolation");
        }
        let bind_at = h.place("bind");
        let Some(mut app) = app::read_app(name.clone(), h, &defaults.pool, AppDir::Home) else {
            continue;
        };
        super::isolation::check_bind(walk, &app, bind_at, &defaults.isolation);
        app.isolation = defaults.isolation.settings.clone();
        let (Some(route), true) = (route, ok) else {
            continue;
        };
        if let Some(other) = out.iter().find(|o| o.path == route) {
            let (l, k) = path
                .as_ref()
                .map_or((line, format!("{key}.path")), |p| (p.line, p.key.clone()));
            walk.problem(
                l,
                &k,
                format!(
                    "handlers {:?} and {name:?} both take the path {route:?}: a route sends one app its extensions (give one of them another `path`, such as \"/cgi-bin/\")",
                    other.app.name
                ),
            );
            continue;
        }
        // One program for every tenant: only root's may be it (a tenant's
        // own program would run for that tenant alone, and fail for the
        // others).
        if let Some(program) = app.command.first()
            && let Some(why) = root_program(Path::new(program))
        {
            let (l, k) = command_at.unwrap_or((line, format!("{key}.command")));
            walk.problem(l, &k, why);
            continue;
        }
        out.push(Handler {
            app,
            path: route,
            extensions: exts,
        });
    }
    out
}

/// Why `program` cannot be a handler's: it must be a regular file of
/// root's, writable by nobody else, not setuid or setgid.
fn root_program(program: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let name = program.display();
    let meta = match std::fs::metadata(program) {
        Ok(m) => m,
        Err(e) => return Some(format!("{name}: {e}")),
    };
    if !meta.is_file() {
        return Some(format!("{name} is not a regular file"));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Some(format!(
            "{name} is owned by uid {}: a handler runs one program for every tenant, which must be root's",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Some(format!(
            "{name} is writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    if meta.mode() & (libc::S_ISUID | libc::S_ISGID) != 0 {
        return Some(format!("{name} is setuid or setgid"));
    }
    None
}

/// Why berth refuses `root` as the discovery root, if it does: it must be
/// reached without a symlink, be a directory of root's (of berth's own uid
/// when berth is not root) that nobody else may write to, sticky or not
/// (whoever can create an entry there claims a host name), and every
/// directory above it must be root's (or berth's) and writable by nobody
/// else unless sticky (whoever could rename the root could swap in one of
/// their own).
pub fn check_root(root: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    use std::path::Component;
    let me = rustix::process::geteuid().as_raw();
    let mut walked = PathBuf::from("/");
    let parts: Vec<_> = root
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    if root.components().any(|c| c == Component::ParentDir) {
        return Some(format!("{} must not contain \"..\"", root.display()));
    }
    for i in 0..=parts.len() {
        if i > 0 {
            walked.push(parts[i - 1]);
        }
        let last = i == parts.len();
        let name = walked.display();
        let meta = match std::fs::symlink_metadata(&walked) {
            Ok(m) => m,
            Err(e) => return Some(format!("{name}: {e}")),
        };
        if meta.file_type().is_symlink() {
            return Some(format!(
                "{name} is a symbolic link; berth refuses to follow it (give the real path)"
            ));
        }
        if !meta.is_dir() {
            return Some(format!("{name} is not a directory"));
        }
        let owner_ok = meta.uid() == 0 || meta.uid() == me;
        let writable = meta.mode() & 0o022 != 0;
        let sticky = meta.mode() & libc::S_ISVTX != 0;
        let mode = meta.mode() & 0o7777;
        let whose = if me == 0 {
            "root's".to_string()
        } else {
            format!("root's or berth's own (uid {me})")
        };
        if last {
            if !owner_ok {
                return Some(format!(
                    "{name} is owned by uid {}: it must be {whose}, since whoever can create a directory in it claims a host name",
                    meta.uid()
                ));
            }
            if writable {
                return Some(format!(
                    "{name} is writable by group or others (mode {mode:o}): any of them could claim any host name by creating a directory in it; make it 0755 and hand out host directories with mkdir and chown"
                ));
            }
        } else if !owner_ok || (writable && !sticky) {
            return Some(format!(
                "{name} (uid {}, mode {mode:o}) must be {whose} and writable by nobody else unless sticky: whoever can write there could put another directory in the root's place",
                meta.uid()
            ));
        }
    }
    None
}

/// What [`scan`] found in the root, sorted by name: everything a reload
/// would make of it (a directory's owner, its `public/`, its own file's
/// identity), so that an unchanged scan means an unchanged result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    pub entries: Vec<Entry>,
}

/// One entry of the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The directory's name, which is the host name when it is a site
    /// (lossy for a name that is not UTF-8, which is left out anyway).
    pub name: String,
    /// A real directory with a valid host name: the watcher watches it
    /// (for `public/` and `berth.toml` appearing), whether or not it is a
    /// site yet.
    pub watch: bool,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A site, owned by `uid` (both the directory and `public/`).
    Site {
        uid: u32,
        /// `public/`'s device and inode: one replaced by another directory
        /// is a change (the front end holds the old one open until a
        /// reload).
        public: (u64, u64),
        /// `berth.toml` beside `public/`: its inode, size and
        /// modification time (a new or changed own file is a change).
        own: Option<(u64, i64, i64, i64)>,
    },
    /// Left out, and why.
    Skipped(String),
}

/// Looks at `root`: which of its entries are sites (see the module doc).
/// Entries whose names start with '.' are not looked at. Err: the root
/// cannot be read.
pub fn scan(root: &Path, min_uid: u32) -> Result<Scan, String> {
    let fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("{}: {e}", root.display()))?;
    let mut entries = Vec::new();
    let dir = rustix::fs::Dir::read_from(&fd).map_err(|e| format!("{}: {e}", root.display()))?;
    for item in dir {
        let item = item.map_err(|e| format!("{}: {e}", root.display()))?;
        let raw = item.file_name().to_bytes();
        if raw.first() == Some(&b'.') {
            continue;
        }
        let name = String::from_utf8_lossy(raw).into_owned();
        if let Some(entry) = look_at(&fd, raw, name, min_uid) {
            entries.push(entry);
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Scan { entries })
}

/// What the entry `raw` of the root (`fd`) is; None when it vanished.
fn look_at(fd: &impl rustix::fd::AsFd, raw: &[u8], name: String, min_uid: u32) -> Option<Entry> {
    let skipped = |why: String, watch: bool| Entry {
        name: name.clone(),
        watch,
        kind: Kind::Skipped(why),
    };
    if let Err(why) = std::str::from_utf8(raw)
        .map_err(|_| "is not a host name (not UTF-8)".to_string())
        .and_then(valid_host)
    {
        return Some(skipped(why, false));
    }
    let st = rustix::fs::statat(fd, raw, AtFlags::SYMLINK_NOFOLLOW).ok()?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => {}
        FileType::Symlink => {
            return Some(skipped(
                "is a symbolic link; only real directories are sites".into(),
                false,
            ));
        }
        _ => return Some(skipped("is not a directory".into(), false)),
    }
    let uid = st.st_uid;
    if uid < min_uid {
        return Some(skipped(
            format!("is owned by uid {uid}, below min_uid ({min_uid}): not a tenant's"),
            true,
        ));
    }
    let mut under = raw.to_vec();
    under.push(b'/');
    let at = |file: &str| {
        let mut p = under.clone();
        p.extend_from_slice(file.as_bytes());
        rustix::fs::statat(fd, p.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
    };
    let public = match at(PUBLIC) {
        Ok(p) => p,
        Err(rustix::io::Errno::NOENT) => {
            return Some(skipped("has no public/ directory yet".into(), true));
        }
        Err(e) => return Some(skipped(format!("public/: {e}"), true)),
    };
    match FileType::from_raw_mode(public.st_mode) {
        FileType::Directory => {}
        FileType::Symlink => {
            return Some(skipped(
                "public is a symbolic link; the site root must be a real directory".into(),
                true,
            ));
        }
        _ => return Some(skipped("public is not a directory".into(), true)),
    }
    if public.st_uid != uid {
        return Some(skipped(
            format!(
                "public/ is owned by uid {}, not by the directory's owner (uid {uid})",
                public.st_uid
            ),
            true,
        ));
    }
    // (The fields' types differ between architectures.)
    #[allow(clippy::unnecessary_cast)]
    let own = at(OWN_FILE).ok().map(|s| {
        (
            s.st_ino as u64,
            s.st_size as i64,
            s.st_mtime as i64,
            s.st_mtime_nsec as i64,
        )
    });
    Some(Entry {
        name,
        watch: true,
        kind: Kind::Site {
            uid,
            public: (public.st_dev as u64, public.st_ino as u64),
            own,
        },
    })
}

/// Whether `name` may be a discovered host name: lowercase letters, digits,
/// '-' and '.', labels of 1 to 63 characters that neither start nor end
/// with '-', at most 253 in all. Refused (never folded, so two directories
/// cannot claim one name): upper case, a trailing dot, wildcards, IP
/// addresses (IPv6, dotted IPv4, and any name that a browser would take
/// for an IPv4 address: one whose last label is a number, decimal or
/// `0x` hexadecimal, as the WHATWG URL standard reads "127.1" or
/// "0x7f000001").
pub fn valid_host(name: &str) -> Result<(), String> {
    if name.parse::<std::net::Ipv6Addr>().is_ok() || name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err("is an IP address, not a host name".into());
    }
    if name.contains('*') {
        return Err("is a wildcard; a directory names one host".into());
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "has upper case; host names are lowercase, and berth does not fold them (rename the directory to {:?})",
            name.to_ascii_lowercase()
        ));
    }
    if name.ends_with('.') {
        return Err("ends with a dot (name the directory without it)".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.'))
    {
        return Err(format!("has {c:?}: host names use a-z, 0-9, '-' and '.'"));
    }
    if name.len() > 253 {
        return Err(format!("is {} characters long, over 253", name.len()));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("has an empty label (\"..\" or a leading dot)".into());
        }
        if label.len() > 63 {
            return Err(format!(
                "has a label of {} characters, over 63",
                label.len()
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "has a label that starts or ends with '-' ({label:?})"
            ));
        }
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    let hex = last
        .strip_prefix("0x")
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    if last.bytes().all(|b| b.is_ascii_digit()) || hex {
        return Err(format!(
            "ends in a number ({last:?}), which clients read as an IPv4 address"
        ));
    }
    Ok(())
}

/// A note about the root's entry `name`, as `berth check` prints it and the
/// supervisor logs it: `ROOT/NAME: discovery: WHY`.
fn note(root: &Path, name: &str, why: impl Into<String>) -> Problem {
    Problem {
        file: root.join(name),
        line: 0,
        key: "discovery".into(),
        why: why.into(),
    }
}

/// Owners past this many, the user and group databases are read whole,
/// once, instead of a lookup per owner: glibc reads `/etc/passwd` through
/// for each `getpwuid` and `/etc/group` for each `getgrouplist`, which at
/// 1,000 owners was three quarters of a reload of 10,000 sites.
const WALK_PAST: usize = 32;

/// The owners' users and the groups of those that become tenants, looked up
/// once per load.
struct Directory {
    users: HashMap<u32, Option<nix::unistd::User>>,
    /// With the databases read whole: each user's supplementary groups, by
    /// name (None: `getgrouplist` per user).
    member_of: Option<HashMap<String, Vec<u32>>>,
}

impl Directory {
    /// For the owners of `scan`: read whole when they are many.
    fn new(scan: &Scan) -> Directory {
        let owners: HashSet<u32> = scan
            .entries
            .iter()
            .filter_map(|e| match e.kind {
                Kind::Site { uid, .. } => Some(uid),
                Kind::Skipped(_) => None,
            })
            .collect();
        if owners.len() <= WALK_PAST {
            return Directory {
                users: HashMap::new(),
                member_of: None,
            };
        }
        Directory::walk(&owners)
    }

    /// The users with uids in `owners`, and every user's groups, from one
    /// walk of each database.
    fn walk(owners: &HashSet<u32>) -> Directory {
        let users = crate::sys::all_users()
            .into_iter()
            .filter(|u| owners.contains(&u.uid.as_raw()))
            .map(|u| (u.uid.as_raw(), Some(u)))
            .collect();
        let mut member_of: HashMap<String, Vec<u32>> = HashMap::new();
        for g in crate::sys::all_groups() {
            for m in g.mem {
                member_of.entry(m).or_default().push(g.gid.as_raw());
            }
        }
        Directory {
            users,
            member_of: Some(member_of),
        }
    }

    /// The user with `uid` (looked up when the walk did not list it).
    fn user(&mut self, uid: u32) -> Option<&nix::unistd::User> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
            })
            .as_ref()
    }

    /// `user`'s ids and groups. From a walk, its groups are those the group
    /// database lists it in: a source that does not enumerate (LDAP without
    /// `enumerate`) is not asked here, only when a process of the tenant
    /// starts (`spawn::check` then refuses it); meanwhile its site serves
    /// static files, which no process of the tenant's serves.
    fn identity(&self, user: &nix::unistd::User) -> nix::Result<crate::sys::Identity> {
        let Some(member_of) = &self.member_of else {
            return crate::sys::Identity::of(user);
        };
        let gid = user.gid.as_raw();
        let mut groups = vec![gid];
        for &g in member_of.get(&user.name).into_iter().flatten() {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        Ok(crate::sys::Identity {
            uid: user.uid.as_raw(),
            gid,
            groups,
        })
    }
}

/// Turns `scan` into sites (see the module doc) after `tenants`, the
/// administrator's (valid already): a site of an administrator's tenant
/// joins it, other owners get tenants of their own, appended. Returns what
/// was left out, as notes.
pub(super) fn merge(
    d: &Discovery,
    scan: &Scan,
    server: &Server,
    defaults: &Defaults,
    (ceiling, enforced): (&Ceiling, &Enforce),
    tenants: &mut Vec<Tenant>,
) -> Discovered {
    let mut notes = Vec::new();
    // Host → the administrator's tenant serving it.
    let mut admin_hosts: HashMap<&str, (&str, &Path, usize)> = HashMap::new();
    for t in tenants.iter() {
        for s in &t.sites {
            for h in &s.hosts {
                admin_hosts.insert(h, (&t.name, &s.lines.file, s.lines.hosts));
            }
        }
    }
    let admin_by_uid: HashMap<u32, usize> = tenants
        .iter()
        .enumerate()
        .filter(|(_, t)| t.resolved)
        .map(|(i, t)| (t.uid, i))
        .collect();
    let admin_names: HashSet<&str> = tenants.iter().map(|t| t.name.as_str()).collect();
    let mut limits = defaults.limits;
    // (What [enforce] lowers in [defaults] is the same for every tenant
    // made here; `berth check` notes it for the administrator's.)
    let _ = ceiling.apply("", &mut limits);
    // And what [enforce.isolation] changes in [defaults.isolation]: the
    // handlers' apps and the tenants made here take it alone.
    let mut settings = defaults.isolation.settings.clone();
    let _ = enforced.apply(&mut settings);
    let handler_app = |h: &Handler, dir: &Path| {
        let mut app = h.app.clone();
        app.dir = dir.to_path_buf();
        app.isolation = settings.clone();
        app
    };
    let mut users = Directory::new(scan);
    // Sites by the administrator's tenant (index), and new tenants by name.
    let mut joined: Vec<(usize, Site)> = Vec::new();
    let mut made: Vec<Tenant> = Vec::new();
    let mut made_at: HashMap<String, usize> = HashMap::new();
    for entry in &scan.entries {
        let Kind::Site { uid, own, .. } = &entry.kind else {
            if let Kind::Skipped(why) = &entry.kind {
                notes.push(note(&d.root, &entry.name, format!("skipped: {why}")));
            }
            continue;
        };
        let host = entry.name.as_str();
        if let Some((tenant, file, line)) = admin_hosts.get(host) {
            notes.push(note(
                &d.root,
                host,
                format!(
                    "skipped: the host {host:?} is tenant {tenant}'s in the administrator's configuration ({}:{line}), which wins",
                    file.display()
                ),
            ));
            continue;
        }
        let dir = d.root.join(host);
        let site = Site {
            hosts: vec![host.to_string()],
            root: dir.join(PUBLIC),
            tls: None,
            routes: Vec::new(),
            max_body: None,
            lines: SiteLines {
                file: dir.clone(),
                hosts: 0,
                root: 0,
            },
            own_config: own.map(|_| dir.join(OWN_FILE)),
            own: None,
            owner: Some(*uid),
        };
        if let Some(&i) = admin_by_uid.get(uid) {
            joined.push((i, site));
            continue;
        }
        let Some(user) = users.user(*uid) else {
            notes.push(note(
                &d.root,
                host,
                format!("skipped: its owner, uid {uid}, has no user name"),
            ));
            continue;
        };
        let name = user.name.clone();
        let gid = user.gid.as_raw();
        if gid < d.min_uid {
            notes.push(note(
                &d.root,
                host,
                format!(
                    "skipped: its owner {name:?} has the primary group {gid}, below min_uid ({}); tenants need both ids at or above it",
                    d.min_uid
                ),
            ));
            continue;
        }
        if !super::valid_name(&name) {
            notes.push(note(
                &d.root,
                host,
                format!(
                    "skipped: its owner's user name {name:?} is not a valid tenant name (a-z, 0-9, '-' and '_', starting with a letter, at most 32 characters)"
                ),
            ));
            continue;
        }
        if admin_names.contains(name.as_str()) {
            notes.push(note(
                &d.root,
                host,
                format!(
                    "skipped: the tenant name {name:?} (its owner's user name) is taken by the administrator's tenant of that name, which runs as another user"
                ),
            ));
            continue;
        }
        if let Some(&i) = made_at.get(&name)
            && made[i].uid != *uid
        {
            notes.push(note(
                &d.root,
                host,
                format!(
                    "skipped: its owner, uid {uid}, has the user name {name:?} of uid {} too",
                    made[i].uid
                ),
            ));
            continue;
        }
        let i = *made_at.entry(name.clone()).or_insert_with(|| {
            made.push(Tenant {
                name: name.clone(),
                user: name.clone(),
                uid: *uid,
                gid,
                home: d.root.clone(),
                resolved: true,
                sites: Vec::new(),
                apps: d.handlers.iter().map(|h| handler_app(h, &d.root)).collect(),
                limits,
                origin: Origin {
                    file: dir.clone(),
                    line: 0,
                },
                user_line: 0,
                error_log: defaults.error_log,
                // Its files are its sites' berth.toml; `[defaults]
                // own_config` names a file in a home, and a discovered
                // tenant's "home" is the discovery root, everyone's.
                own: None,
                allowed_commands: defaults.allowed_commands.clone(),
                locked: Vec::new(),
                isolation: settings.clone(),
            });
            made.len() - 1
        });
        made[i].sites.push(site);
    }
    let mut sites = joined.len();
    for (i, mut site) in joined {
        let tenant = &mut tenants[i];
        for h in &d.handlers {
            // An app of the administrator's of that name serves it (the
            // administrator's configuration wins).
            if !tenant.apps.iter().any(|a| a.name == h.app.name) {
                let app = handler_app(h, &tenant.home);
                tenant.apps.push(app);
            }
        }
        site.routes = routes(d, defaults);
        tenant.sites.push(site);
    }
    let mut isolation = Isolation::new(server, tenants);
    let mut kept = 0;
    for mut tenant in made {
        if let Some(why) = isolation.refuses(&tenant, &mut users) {
            for s in &tenant.sites {
                notes.push(note(
                    &d.root,
                    &s.hosts[0],
                    format!("skipped: tenant {}: {why}", tenant.name),
                ));
            }
            continue;
        }
        for s in &mut tenant.sites {
            s.routes = routes(d, defaults);
        }
        sites += tenant.sites.len();
        kept += 1;
        tenants.push(tenant);
    }
    Discovered {
        settings: d.clone(),
        scan: scan.clone(),
        notes,
        sites,
        tenants: kept,
    }
}

/// The routes of a discovered site: one per handler, longest path first,
/// placed over the farm as `[cluster]` says.
fn routes(d: &Discovery, defaults: &Defaults) -> Vec<Route> {
    let balance = defaults.placement.as_ref().and_then(|p| p.balance());
    let mut routes: Vec<Route> = d
        .handlers
        .iter()
        .map(|h| Route {
            path: h.path.clone(),
            action: Action::App {
                app: h.app.name.clone(),
                extensions: h.extensions.clone(),
            },
            auth: None,
            max_body: None,
            balance: balance.clone(),
            app_at: None,
            line: 0,
            own: false,
        })
        .collect();
    routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
    routes
}

/// The isolation rules of [`crate::supervisor::spawn::breaches`] for the
/// tenants discovery makes (only when berth switches users, as root, as
/// `check_identities` does for the administrator's): a tenant that would
/// break them is left out, not the configuration.
struct Isolation {
    /// None when berth does not switch users.
    front: Option<Option<crate::supervisor::spawn::FrontId>>,
    /// The administrator's tenants and those kept so far.
    peers: Vec<crate::supervisor::spawn::Peer>,
}

impl Isolation {
    fn new(server: &Server, tenants: &[Tenant]) -> Isolation {
        use crate::sys::Identity;
        let on = rustix::process::geteuid().is_root();
        let front = on.then(|| {
            let u = nix::unistd::User::from_name(&server.user).ok().flatten()?;
            let id = Identity::of(&u).ok()?;
            Some(crate::supervisor::spawn::FrontId {
                user: server.user.clone(),
                uid: id.uid,
                gid: id.gid,
            })
        });
        Isolation {
            front,
            peers: crate::supervisor::spawn::peers(tenants),
        }
    }

    /// Why `tenant` may not be added, if it may not; if it may, it is one
    /// of the peers of those checked after it.
    fn refuses(&mut self, tenant: &Tenant, users: &mut Directory) -> Option<String> {
        use crate::supervisor::spawn::{Peer, breaches};
        if let Some(front) = &self.front {
            let Some(user) = users.user(tenant.uid).cloned() else {
                return Some(format!("uid {} has no user name", tenant.uid));
            };
            let id = match users.identity(&user) {
                Ok(id) => id,
                Err(e) => {
                    return Some(format!("cannot read the groups of {:?}: {e}", tenant.user));
                }
            };
            if let Some(b) =
                breaches(&tenant.name, &tenant.user, &id, front.as_ref(), &self.peers).first()
            {
                return Some(b.to_string());
            }
        }
        self.peers.push(Peer {
            tenant: tenant.name.clone(),
            user: tenant.user.clone(),
            uid: tenant.uid,
            gid: tenant.gid,
        });
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host directory `root/HOST/public/` of `uid`.
    fn site(root: &Path, host: &str, uid: u32) {
        let public = root.join(host).join(PUBLIC);
        std::fs::create_dir_all(&public).unwrap();
        for p in [root.join(host), public] {
            rustix::fs::chown(
                &p,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(uid)),
            )
            .unwrap();
        }
    }

    /// (Run as root, as the suite is: the sites belong to daemon (uid 1)
    /// and bin (uid 2), the front end is nobody, min_uid is 1.)
    #[test]
    fn a_scan_becomes_tenants_and_sites_after_the_administrators() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sites");
        std::fs::create_dir(&root).unwrap();
        site(&root, "b.test", 2);
        site(&root, "a.test", 1);
        site(&root, "a2.test", 1);
        site(&root, "admin.test", 2);
        std::fs::write(root.join("a.test").join(OWN_FILE), "").unwrap();
        std::fs::create_dir(dir.path().join("adm")).unwrap();
        let path = dir.path().join("berth.toml");
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:1\"]\nuser = \"nobody\"\nmin_uid = 1\n\n\
             [tenant.admin]\nuser = \"bin\"\nhome = \"{adm}\"\n\
             [[tenant.admin.site]]\nhosts = [\"admin.test\"]\nroot = \"{adm}\"\n\n\
             [discovery]\nroot = \"{root}\"\n\
             [discovery.handler.php]\nextensions = [\"php\"]\nprotocol = \"fastcgi\"\n\
             command = [\"/bin/sh\"]\nmax_processes = 3\n",
            adm = dir.path().join("adm").display(),
            root = root.display()
        );
        std::fs::write(&path, text).unwrap();
        let cfg = super::super::load(&path).unwrap_or_else(|p| panic!("{p}"));
        let found = cfg.discovery.as_ref().unwrap();
        assert_eq!((found.sites, found.tenants), (3, 1));
        // The administrator's tenant first, with bin's b.test joined to it.
        let names: Vec<&str> = cfg.tenants.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["admin", "daemon"]);
        let admin = &cfg.tenants[0];
        let hosts: Vec<&str> = admin.sites.iter().map(|s| s.hosts[0].as_str()).collect();
        assert_eq!(hosts, ["admin.test", "b.test"]);
        assert_eq!(admin.apps.len(), 1, "the handler's app joins too");
        assert_eq!(admin.apps[0].dir, dir.path().join("adm"));
        // daemon's tenant: made with [defaults], its sites in name order.
        let daemon = &cfg.tenants[1];
        assert_eq!(
            (daemon.uid, daemon.gid, daemon.home.as_path()),
            (1, 1, root.as_path())
        );
        let sites: Vec<(&str, Option<&Path>, Option<u32>)> = daemon
            .sites
            .iter()
            .map(|s| (s.hosts[0].as_str(), s.own_config.as_deref(), s.owner))
            .collect();
        let own = root.join("a.test").join(OWN_FILE);
        assert_eq!(
            sites,
            [
                ("a.test", Some(own.as_path()), Some(1)),
                ("a2.test", None, Some(1))
            ]
        );
        assert_eq!(daemon.sites[0].root, root.join("a.test").join(PUBLIC));
        let app = &daemon.apps[0];
        assert_eq!((app.name.as_str(), app.pool.max_processes), ("php", 3));
        let route = &daemon.sites[0].routes[0];
        assert_eq!(route.path, "/");
        assert_eq!(
            route.action,
            Action::App {
                app: "php".into(),
                extensions: vec!["php".into()]
            }
        );
        // admin.test stays the administrator's, with a note.
        let notes: Vec<String> = cfg.notes.iter().map(ToString::to_string).collect();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with(&format!(
                "{}: discovery: skipped: the host \"admin.test\" is tenant admin's",
                root.join("admin.test").display()
            )),
            "{notes:?}"
        );
        // An unchanged root scans the same; a new own file is a change.
        let again = scan(&root, 1).unwrap();
        assert_eq!(again, found.scan);
        std::fs::write(root.join("a2.test").join(OWN_FILE), "").unwrap();
        assert_ne!(scan(&root, 1).unwrap(), found.scan);
    }

    /// What the walk of the databases says a user's groups are is what
    /// `getgrouplist` says, for every user the files list (the test
    /// machines' users come from the files).
    #[test]
    fn a_walk_of_the_user_and_group_databases_gives_the_groups_getgrouplist_gives() {
        let users = crate::sys::all_users();
        assert!(users.iter().any(|u| u.uid.as_raw() == 0), "root is listed");
        let owners: HashSet<u32> = users.iter().map(|u| u.uid.as_raw()).collect();
        let mut walked = Directory::walk(&owners);
        for u in &users {
            let uid = u.uid.as_raw();
            let user = walked.user(uid).cloned().expect("listed");
            let mut got = walked.identity(&user).unwrap().groups;
            let mut want = crate::sys::Identity::of(u).unwrap().groups;
            got.sort_unstable();
            want.sort_unstable();
            want.dedup();
            assert_eq!(got, want, "{}", u.name);
        }
    }

    #[test]
    fn host_names_are_refused_with_the_reason() {
        for ok in [
            "a.test",
            "x",
            "www.example.com",
            "a-b.c1",
            "1.example.com",
            "xn--bcher-kva.example",
        ] {
            assert_eq!(valid_host(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("127.0.0.1", "IP address"),
            ("::1", "IP address"),
            ("10.1", "ends in a number"),
            ("0x7f000001", "ends in a number"),
            ("a.0x1f", "ends in a number"),
            ("1234", "ends in a number"),
            ("*.example.com", "wildcard"),
            ("Example.com", "upper case"),
            ("example.com.", "ends with a dot"),
            ("a..b", "empty label"),
            ("a_b.test", "'_'"),
            ("-a.test", "starts or ends with '-'"),
            ("a-.test", "starts or ends with '-'"),
            ("a b", "' '"),
        ] {
            let got = valid_host(bad).unwrap_err();
            assert!(got.contains(why), "{bad}: {got}");
        }
        let long_label = format!("{}.test", "a".repeat(64));
        assert!(valid_host(&long_label).unwrap_err().contains("over 63"));
        let long = format!("{}.test", vec!["a".repeat(60); 5].join("."));
        assert!(valid_host(&long).unwrap_err().contains("over 253"));
    }
}
