//! A tenant's own file (`own_config`): the settings a tenant changes without
//! root and without waiting for the administrator (DESIGN.md
//! "Configuration", invariant 4).
//!
//! It uses the keys of the administrator's tenant block without the
//! `tenant.NAME.` prefix, and only some of them:
//! - `[app.NAME]`: new apps (programs inside the tenant's home, or listed in
//!   `allowed_commands`), and the pool settings of the administrator's apps;
//! - `[[route]]` with `host` naming one of the tenant's host names, or
//!   `[[site]] host = ...` with `[[site.route]]`: routes added to the
//!   administrator's sites, never replacing one of its routes nor reaching
//!   under a path it protects with a password;
//! - `[limits]`: lower only;
//! - `[isolation]` and `[app.NAME.isolation]`: tighten only
//!   (`namespaces = true`, `seccomp = "on"`, `network = "none"`; see
//!   `config/isolation.rs`).
//!
//! Nothing else: not host names, certificates, roots, its user, listeners,
//! nor anything of another tenant. The administrator can lock any key
//! (`[enforce] locked` for every tenant, `locked` in a tenant's block).
//!
//! Layering: the administrator's tenant (built-in → `[defaults]` → its
//! block) → this file → `[enforce]`. A file with any problem is refused
//! whole: the tenant keeps the last file it had accepted (or, with none, the
//! administrator's block alone), says why in its error log and to
//! `berth ctl reload`, and no other tenant notices.
//!
//! The file is read without following a symbolic link anywhere below the
//! tenant's home, must be a regular file the tenant owns, and is capped in
//! size: root never reads, on a tenant's word, a file the tenant could not
//! read itself.

use std::cell::{Cell, RefCell};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use toml_edit::{Item, TableLike, Value};

use super::app::{self, POOL_KEYS, Pool};
use super::limits::{Ceiling, Limits};
use super::reader::{At, Source, TableReader, Walk};
use super::{Problem, Problems, ReadFile, Tenant};

/// The largest own file berth reads (a tenant's file with hundreds of
/// routes is a few KiB).
pub const MAX_OWN_FILE: u64 = 256 << 10;

/// The most bytes the files an own file names (htpasswd files) hold
/// together: each route keeps its copy in the configuration the supervisor
/// holds and sends to the front end, so 256 routes naming one large file
/// would make it too large to send (and no site would be served).
pub const MAX_OWN_NAMED: u64 = 256 << 10;

/// The most apps and routes an own file adds: far more than a tenant needs,
/// and a bound on what one tenant's file costs the supervisor (which keeps
/// every app's `min_processes` running) and the front end (which matches
/// routes per request).
pub const MAX_OWN_APPS: usize = 32;
pub const MAX_OWN_ROUTES: usize = 256;

/// What `own_config` says: where a tenant's own file is.
#[derive(Debug, Clone, PartialEq)]
pub enum OwnPath {
    /// `"~/berth.toml"` (or `true`: `~/berth.toml`): under the tenant's home.
    Home(PathBuf),
    /// An absolute path, inside the tenant's home.
    Absolute(PathBuf),
    /// `false`: this tenant has none, whatever `[defaults]` says.
    Off,
}

/// A key of the own file the administrator locked: a dotted pattern such as
/// `limits`, `app.*.env` or `route`, where `*` is any one name; a key is
/// locked when the pattern is a prefix of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Lock {
    pub pattern: Vec<String>,
    pub file: PathBuf,
    pub line: usize,
}

impl Lock {
    /// Whether `key` (dotted, `route[0].path` written `route.path`) is locked.
    pub fn covers(&self, key: &[&str]) -> bool {
        self.pattern.len() <= key.len()
            && self
                .pattern
                .iter()
                .zip(key)
                .all(|(p, k)| p == "*" || p == k)
    }
}

/// What became of a tenant's own file at the last load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnState {
    /// There is no file (the tenant has not written one): the
    /// administrator's block alone.
    Absent,
    /// The file as it is on disk is in use.
    InUse,
    /// The file on disk was refused (see [`OwnFile::problems`]); `kept`:
    /// the last accepted text is still in use, else none is.
    Refused { kept: bool },
}

/// A tenant's own file: where it is, what of it is in use, and why the file
/// on disk was refused, if it was.
#[derive(Debug, Clone)]
pub struct OwnFile {
    pub path: PathBuf,
    pub state: OwnState,
    /// The text in use: the file as accepted now, or the last accepted one.
    pub used: Option<Arc<str>>,
    /// Why the file on disk was refused (empty unless `Refused`).
    pub problems: Vec<Problem>,
}

impl OwnFile {
    /// Whether the file on disk was refused.
    pub fn refused(&self) -> bool {
        matches!(self.state, OwnState::Refused { .. })
    }

    pub fn new(path: PathBuf) -> OwnFile {
        OwnFile {
            path,
            state: OwnState::Absent,
            used: None,
            problems: Vec::new(),
        }
    }

    /// One line for people: what is in use and why.
    pub fn summary(&self) -> String {
        let path = self.path.display();
        match &self.state {
            OwnState::Absent => format!("{path}: none (the administrator's settings alone)"),
            OwnState::InUse => format!("{path}: in use"),
            OwnState::Refused { kept: true } => format!(
                "{path}: refused ({} problem(s)); the last accepted version is still in use",
                self.problems.len()
            ),
            OwnState::Refused { kept: false } => format!(
                "{path}: refused ({} problem(s)); the administrator's settings alone are in use",
                self.problems.len()
            ),
        }
    }
}

/// What [`Layers::check`] found of a tenant's own file.
#[derive(Debug, Clone)]
pub struct OwnCheck {
    pub path: PathBuf,
    /// There is something at `path` (false: nothing to check).
    pub exists: bool,
    /// Why it would be refused (empty: it would be accepted).
    pub problems: Vec<Problem>,
}

/// What tenants' own files layer over, kept with the configuration so that
/// one tenant can be re-layered alone (`berth ctl reload`).
#[derive(Debug)]
pub struct Layers {
    /// The main file (where `[enforce]` is).
    pub main: PathBuf,
    /// `[defaults.app]`: what the pool of an app of an own file starts from.
    pub pool: Pool,
    pub ceiling: Ceiling,
    /// `[enforce.isolation]`.
    pub isolation: super::isolation::Enforce,
    /// `[enforce] locked`.
    pub locks: Vec<Lock>,
    /// Every tenant as the administrator's files define it, before its own
    /// file and `[enforce]`.
    pub admin: Vec<Tenant>,
    /// berth runs as root: an own file must be the tenant's (else the
    /// caller's, who is every tenant).
    pub root: bool,
    pub min_uid: u32,
    /// `[server] max_body`: no route of an own file takes more.
    pub max_body: u64,
    /// `[cluster]`'s placement, which the routes of own files get (they
    /// may not set their own); None: there is no `[cluster]`.
    pub placement: Option<super::cluster::Placement>,
}

impl Layers {
    /// Layers `t` (the administrator's tenant) with its own file, when it
    /// has one, then each of its sites' own files (a discovered site's
    /// `berth.toml`), then `[enforce]`. `previous` is the tenant as the
    /// configuration in use has it: the text of a file in use there stays
    /// in use if the file is now refused. Returns the notes of what
    /// `[enforce.limits]` lowered and `[enforce.isolation]` changed.
    pub fn finish(&self, t: &mut Tenant, previous: Option<&Tenant>) -> Vec<Problem> {
        let kept_text = |kept: Option<&OwnFile>, path: &Path| {
            kept.filter(|k| k.path == path).and_then(|k| k.used.clone())
        };
        if let Some(own) = t.own.take() {
            let kept = kept_text(previous.and_then(|p| p.own.as_ref()), &own.path);
            t.own = Some(self.layer(t, own.path, kept, Scope::Tenant));
        }
        for i in 0..t.sites.len() {
            let Some(path) = t.sites[i].own_config.clone() else {
                continue;
            };
            let before = previous
                .and_then(|p| p.sites.iter().find(|s| s.hosts == t.sites[i].hosts))
                .and_then(|s| s.own.as_ref());
            let kept = kept_text(before, &path);
            let own = self.layer(t, path, kept, Scope::Site(i));
            t.sites[i].own = Some(own);
        }
        let mut notes: Vec<Problem> = self
            .ceiling
            .apply(&t.name, &mut t.limits)
            .into_iter()
            .map(|l| Problem {
                file: self.main.clone(),
                line: l.line,
                key: l.key,
                why: format!(
                    "lowers tenant {}'s value from {} to {}",
                    l.tenant, l.from, l.to
                ),
            })
            .collect();
        notes.extend(self.isolation.apply_to(t));
        notes
    }

    /// Tenant `name` again, its own files read anew (`berth ctl reload`),
    /// over the administrator's tenant and under `[enforce]` as loaded.
    /// `current` is the tenant in use. None: no such tenant.
    pub fn reload(&self, name: &str, current: &Tenant) -> Option<Tenant> {
        let mut t = self.admin.iter().find(|t| t.name == name)?.clone();
        self.finish(&mut t, Some(current));
        Some(t)
    }

    /// What is wrong with tenant `name`'s own files (its own, then each
    /// site's) as they are on disk now, without using them (`berth ctl
    /// check`). Empty: the tenant has none (or there is no such tenant).
    pub fn check(&self, name: &str) -> Vec<OwnCheck> {
        let Some(t) = self.admin.iter().find(|t| t.name == name) else {
            return Vec::new();
        };
        let mut files: Vec<(PathBuf, Scope)> = Vec::new();
        if let Some(own) = &t.own {
            files.push((own.path.clone(), Scope::Tenant));
        }
        for (i, site) in t.sites.iter().enumerate() {
            if let Some(path) = &site.own_config {
                files.push((path.clone(), Scope::Site(i)));
            }
        }
        files
            .into_iter()
            .map(|(path, scope)| {
                let (exists, problems) =
                    match read_own_file(&scope.home(t, &path), &path, self.owner(t)) {
                        Ok(None) => (false, Vec::new()),
                        Ok(Some(text)) => (
                            true,
                            self.apply(t, &path, &text, scope).err().unwrap_or_default(),
                        ),
                        Err(why) => (true, vec![file_problem(&path, why)]),
                    };
                OwnCheck {
                    path,
                    exists,
                    problems,
                }
            })
            .collect()
    }

    /// Who must own a tenant's files: the tenant, or when berth runs as a
    /// normal user (every tenant is that user), that user.
    fn owner(&self, t: &Tenant) -> u32 {
        if self.root {
            t.uid
        } else {
            rustix::process::geteuid().as_raw()
        }
    }

    /// Reads and applies `path` to `t`; on a refusal, `kept` (the last text
    /// accepted) instead, when it still applies.
    fn layer(
        &self,
        t: &mut Tenant,
        path: PathBuf,
        kept: Option<Arc<str>>,
        scope: Scope,
    ) -> OwnFile {
        let problems = if !t.resolved {
            // (Its missing user is the administrator's problem, reported.)
            return OwnFile::new(path);
        } else {
            match read_own_file(&scope.home(t, &path), &path, self.owner(t)) {
                Ok(None) => return OwnFile::new(path),
                Ok(Some(text)) => match self.apply(t, &path, &text, scope) {
                    Ok(layered) => {
                        *t = layered;
                        return OwnFile {
                            path,
                            state: OwnState::InUse,
                            used: Some(text.into()),
                            problems: Vec::new(),
                        };
                    }
                    Err(problems) => problems,
                },
                Err(why) => vec![file_problem(&path, why)],
            }
        };
        if let Some(text) = kept
            && let Ok(layered) = self.apply(t, &path, &text, scope)
        {
            *t = layered;
            return OwnFile {
                path,
                state: OwnState::Refused { kept: true },
                used: Some(text),
                problems,
            };
        }
        OwnFile {
            path,
            state: OwnState::Refused { kept: false },
            used: None,
            problems,
        }
    }

    /// `base` with the own file `text` layered over it, or every problem.
    pub(super) fn apply(
        &self,
        base: &Tenant,
        path: &Path,
        text: &str,
        scope: Scope,
    ) -> Result<Tenant, Vec<Problem>> {
        let home = scope.home(base, path);
        let src = Source::new(path.to_path_buf(), text.to_string());
        let problems = RefCell::new(Problems::default());
        let Some(doc) = super::parse(&src, &problems) else {
            return Err(problems.into_inner().0);
        };
        let walk = Walk {
            src: &src,
            problems: &problems,
        };
        let mut t = base.clone();
        let top = doc.as_table();
        let mut r = TableReader::new(&walk, top, String::new(), 1);
        for k in r.keys() {
            let why = match k {
                "app" | "route" => continue,
                "site" | "limits" | "isolation" if scope == Scope::Tenant => continue,
                "site" | "limits" => {
                    "a site's berth.toml takes app and route (its routes are this site's); limits belong to the tenant"
                }
                "isolation" => {
                    "a site's berth.toml takes app and route; [isolation] belongs to the tenant (an app's own isolation table may tighten it)"
                }
                "user" | "home" | "own_config" | "allowed_commands" | "locked"
                | "error_log_rate" | "error_log_max" => {
                    "only the administrator sets this (in the tenant's block of berth's configuration)"
                }
                "server" | "defaults" | "enforce" | "tenant" | "include" | "discovery"
                | "listen" | "tls_listen" | "cluster" => {
                    "a tenant's own file cannot change berth's settings or another tenant's; it takes app, route, site, limits and isolation"
                }
                _ => "unknown key; a tenant's own file takes: app, route, site, limits, isolation",
            };
            r.problem(k, why);
        }
        let mut locked = Vec::new();
        leaves(&src, top, &mut Vec::new(), 0, &mut locked);
        for (key, line) in locked {
            let parts: Vec<&str> = key.split('.').collect();
            let other = other_spelling(&parts);
            if let Some(lock) = self
                .locks
                .iter()
                .chain(&t.locked)
                .find(|l| l.covers(&parts) || other.as_ref().is_some_and(|o| l.covers(o)))
            {
                walk.problem(
                    line,
                    &key,
                    format!(
                        "locked by the administrator ({}:{})",
                        lock.file.display(),
                        lock.line
                    ),
                );
            }
        }
        if scope == Scope::Tenant
            && let Some(lt) = r.table("limits")
        {
            let places: Vec<(String, usize)> = lt
                .keys()
                .into_iter()
                .filter_map(|k| lt.place(k).map(|(line, _)| (k.to_string(), line)))
                .collect();
            let admin = t.limits;
            let mine = super::limits::read_limits(lt, admin);
            for (k, m, a) in Limits::raised(&admin, &mine) {
                let line = places.iter().find(|(p, _)| p == k).map_or(1, |(_, l)| *l);
                walk.problem(
                    line,
                    &format!("limits.{k}"),
                    format!(
                        "{m} is above the administrator's {a}: your file may only lower limits"
                    ),
                );
            }
            t.limits = mine;
        }
        // `network = "none"` written here: [isolation]'s, and each app's.
        let mut closed: Vec<(Option<String>, super::isolation::Place)> = Vec::new();
        if scope == Scope::Tenant
            && let Some(it) = r.table("isolation")
        {
            let mut targets = vec![("your apps".to_string(), &base.isolation)];
            targets.extend(
                base.apps
                    .iter()
                    .map(|a| (format!("app {:?}", a.name), &a.isolation)),
            );
            let layer = super::isolation::read_own(it, &targets);
            layer.apply(&mut t.isolation);
            for app in &mut t.apps {
                layer.apply(&mut app.isolation);
            }
            if let Some(p) = layer.closes_network() {
                closed.push((None, p.clone()));
            }
        }
        if let Some(at) = r.table("app") {
            let apps = at.into_named_tables();
            if apps.len() > MAX_OWN_APPS {
                walk.problem(
                    apps[MAX_OWN_APPS].1.line(),
                    apps[MAX_OWN_APPS].1.key(),
                    format!("a tenant's own file defines at most {MAX_OWN_APPS} apps"),
                );
            }
            for (name, a) in apps {
                if let Some(p) = self.own_app(name.clone(), a, &mut t, base, &home) {
                    closed.push((Some(name), p));
                }
            }
        }
        for app in &t.apps {
            let place = closed
                .iter()
                .find(|(name, _)| name.as_ref() == Some(&app.name))
                .or_else(|| closed.iter().find(|(name, _)| name.is_none()));
            if let Some((_, p)) = place {
                super::isolation::check_own(&walk, app, p);
            }
        }
        // Kept running whatever the load: together, no more than the
        // tenant may run at all (else the supervisor would retry them every
        // second for nothing). Whether its file tunes apps or lowers tasks.
        if r.place("app").is_some() || r.place("limits").is_some() {
            let min: u64 = t.apps.iter().map(|a| u64::from(a.pool.min_processes)).sum();
            if let Some(tasks) = t.limits.tasks
                && min > u64::from(tasks)
            {
                walk.problem(
                    1,
                    "app",
                    format!("your apps' min_processes add up to {min}, more than your tasks limit ({tasks})"),
                );
            }
        }
        let files = TenantFiles {
            home: home.clone(),
            owner: self.owner(&t),
            read: Cell::new(0),
        };
        let routes = r.tables("route");
        let mut count = routes.len();
        for rt in routes {
            let at = match scope {
                Scope::Tenant => RouteSite::ByHost,
                Scope::Site(i) => RouteSite::Within(i),
            };
            self.own_route(rt, &mut t, at, &files);
        }
        for mut st in r
            .tables("site")
            .into_iter()
            .filter(|_| scope == Scope::Tenant)
        {
            let host = st.string("host");
            for k in ["hosts", "root", "tls", "max_body"] {
                if st.place(k).is_some() {
                    st.problem(
                        k,
                        format!("only the administrator sets a site's {k}; your file may add routes to it ([[site.route]])"),
                    );
                }
            }
            for k in ["hosts", "root", "tls", "max_body"] {
                st.skip(k);
            }
            let site = match host {
                Some(h) => site_of(&walk, &t, &h),
                None => {
                    st.problem(
                        "host",
                        "is required: which of your sites the routes are added to",
                    );
                    None
                }
            };
            let routes = st.tables("route");
            count += routes.len();
            for rt in routes {
                if let Some(i) = site {
                    self.own_route(rt, &mut t, RouteSite::Fixed(i), &files);
                }
            }
            st.finish();
        }
        if count > MAX_OWN_ROUTES {
            walk.problem(
                1,
                "route",
                format!("a tenant's own file adds at most {MAX_OWN_ROUTES} routes ({count} here)"),
            );
        }
        let problems = problems.into_inner();
        if problems.is_empty() {
            for site in &mut t.sites {
                site.routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
            }
            Ok(t)
        } else {
            Err(problems.0)
        }
    }

    /// `[app.NAME]`: the pool settings of the administrator's app NAME (and
    /// its isolation, tightened), or a new app, whose program and directory
    /// must be the tenant's. `base` is the tenant before this file. Returns
    /// where its `isolation` table sets `network = "none"`, if it does.
    fn own_app(
        &self,
        name: String,
        mut a: TableReader<'_>,
        t: &mut Tenant,
        base: &Tenant,
        home: &Path,
    ) -> Option<super::isolation::Place> {
        let walk = a.walk();
        if let Some(existing) = t.apps.iter().find(|x| x.name == name && x.own) {
            walk.problem(
                a.line(),
                a.key(),
                format!("app {name:?} is defined already, by {}", existing.origin),
            );
            return None;
        }
        let who = format!("app {name:?}");
        if let Some(existing) = t.apps.iter_mut().find(|x| x.name == name) {
            let mut tuned = true;
            for k in a.keys() {
                if !POOL_KEYS.contains(&k) && k != "isolation" {
                    a.problem(
                        k,
                        format!(
                            "app {name:?} is the administrator's ({}); your file may only tune its pool settings ({}) and tighten its isolation",
                            existing.origin,
                            POOL_KEYS.join(", ")
                        ),
                    );
                    tuned = false;
                }
            }
            let admin = base
                .apps
                .iter()
                .find(|x| x.name == name)
                .map_or(&existing.isolation, |x| &x.isolation);
            let layer = a
                .table("isolation")
                .map(|it| super::isolation::read_own(it, &[(who, admin)]));
            if tuned {
                existing.pool = app::read_pool(a, existing.pool.clone());
            }
            let layer = layer?;
            layer.apply(&mut existing.isolation);
            return layer.closes_network().cloned();
        }
        let layer = a
            .table("isolation")
            .map(|it| super::isolation::read_own(it, &[(who, &base.isolation)]));
        if a.place("open_port").is_some() {
            a.problem(
                "open_port",
                "only the administrator may open an app's port to every local user",
            );
            a.skip("open_port");
        }
        let command_at = a.place("command");
        let dir_at = a.place("dir");
        let mut app = app::read_app(name, a, &self.pool, app::AppDir::Written)?;
        app.own = true;
        app.isolation = t.isolation.clone();
        if let Some(layer) = &layer {
            layer.apply(&mut app.isolation);
        }
        if let (Some(program), Some((line, key))) = (app.command.first(), &command_at) {
            let program = PathBuf::from(program);
            if !inside(&program, home) && !t.allowed_commands.contains(&program) {
                let allowed = if t.allowed_commands.is_empty() {
                    "none are".to_string()
                } else {
                    t.allowed_commands
                        .iter()
                        .map(|c| c.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                walk.problem(
                    *line,
                    key,
                    format!(
                        "{} is outside your home {} and not one of the programs the administrator allows (allowed_commands: {allowed})",
                        program.display(),
                        home.display()
                    ),
                );
                return None;
            }
            // Checked as root from here on (suEXEC's checks): only where the
            // tenant could look itself, so that no answer tells it about a
            // file it cannot see. A program the administrator allows is the
            // administrator's word.
            if !t.allowed_commands.contains(&program)
                && let Err(why) = beneath(home, &program, false)
            {
                walk.problem(*line, key, why);
                return None;
            }
        }
        if !app.dir.as_os_str().is_empty()
            && inside(&app.dir, home)
            && let Err(why) = beneath(home, &app.dir, true)
        {
            let (line, key) = dir_at
                .clone()
                .unwrap_or((app.origin.line, format!("app.{}", app.name)));
            walk.problem(line, &key, why);
            return None;
        }
        if !app.dir.as_os_str().is_empty() && !inside(&app.dir, home) {
            let (line, key) = dir_at.unwrap_or((app.origin.line, format!("app.{}", app.name)));
            walk.problem(
                line,
                &key,
                format!(
                    "{} is outside your home {}",
                    app.dir.display(),
                    home.display()
                ),
            );
            return None;
        }
        if app.dir.as_os_str().is_empty() {
            app.dir = home.to_path_buf();
        }
        if !app.command.is_empty() {
            let spec = crate::supervisor::spawn::SpawnSpec {
                tenant: &t.name,
                user: &t.user,
                home: &t.home,
                min_uid: self.min_uid,
                argv: &app.command,
                script: None,
                dir: &app.dir,
                env: &app.env,
                fds: Vec::new(),
                open_files: t.limits.open_files,
                cgroup: Vec::new(),
                rlimits: Vec::new(),
                switch_user: self.root,
                isolation: None,
                isolate: None,
            };
            if let Err(refused) = crate::supervisor::spawn::check(&spec) {
                walk.problem(
                    app.origin.line,
                    &format!("app.{}", app.name),
                    format!("would not start: {refused}"),
                );
                return None;
            }
        }
        t.apps.push(app);
        layer.and_then(|l| l.closes_network().cloned())
    }

    /// One route of the own file, on the site `at` says.
    fn own_route(
        &self,
        mut rt: TableReader<'_>,
        t: &mut Tenant,
        at: RouteSite,
        files: &TenantFiles,
    ) {
        let walk = rt.walk();
        let site = match at {
            RouteSite::Fixed(i) => {
                if rt.place("host").is_some() {
                    rt.problem("host", "the site is the one its [[site]] names");
                    rt.skip("host");
                }
                Some(i)
            }
            RouteSite::Within(i) => match rt.string("host") {
                Some(h) if !t.sites[i].hosts.contains(&h.value.to_ascii_lowercase()) => {
                    walk.problem(
                        h.line,
                        &h.key,
                        format!(
                            "{:?} is not this site's host ({}): a site's berth.toml routes only its own site",
                            h.value,
                            t.sites[i].hosts.join(", ")
                        ),
                    );
                    None
                }
                _ => Some(i),
            },
            RouteSite::ByHost => match rt.string("host") {
                Some(h) => site_of(walk, t, &h),
                None if t.sites.len() == 1 => Some(0),
                None => {
                    let hosts = t
                        .sites
                        .iter()
                        .map(|s| s.hosts[0].as_str())
                        .collect::<Vec<_>>();
                    rt.problem(
                        "host",
                        format!(
                            "is required: which of your sites ({}) the route is for",
                            hosts.join(", ")
                        ),
                    );
                    None
                }
            },
        };
        let line = rt.line();
        let key = rt.key().to_string();
        let keys = super::cluster::RouteKeys::Tenant(self.placement.as_ref());
        let Some(mut route) = super::read_route(rt, files, &keys) else {
            return;
        };
        let Some(i) = site else {
            return;
        };
        route.own = true;
        let s = &t.sites[i];
        if let Some(r) = s.routes.iter().find(|r| r.path == route.path) {
            let why = if r.own {
                format!("path {:?} is routed twice", route.path)
            } else {
                format!(
                    "the administrator routes {:?} on {} ({}:{}); your file cannot replace it",
                    route.path,
                    s.hosts[0],
                    s.lines.file.display(),
                    r.line
                )
            };
            walk.problem(line, &key, why);
            return;
        }
        if let Some(r) = s
            .routes
            .iter()
            .find(|r| !r.own && r.auth.is_some() && under(&route.path, &r.path))
        {
            walk.problem(
                line,
                &key,
                format!(
                    "{:?} is under {:?}, which the administrator protects with a password ({}:{}); your file cannot route past it",
                    route.path,
                    r.path,
                    s.lines.file.display(),
                    r.line
                ),
            );
            return;
        }
        if let Some(why) = super::route_app_problem(&t.apps, &route, "app") {
            let (l, k) = route.app_at.clone().unwrap_or((line, key.clone()));
            walk.problem(l, &k, why);
            return;
        }
        let most = s.max_body.unwrap_or(self.max_body);
        if let Some(n) = route.max_body
            && n > most
        {
            walk.problem(
                line,
                &format!("{key}.max_body"),
                format!(
                    "{} is above the administrator's {} for this site",
                    super::show_size(n),
                    super::show_size(most)
                ),
            );
            return;
        }
        t.sites[i].routes.push(route);
    }
}

/// Which own file is being layered: the tenant's, or one of its sites'
/// (by index), which takes only apps and routes of that site, and whose
/// "home" is the site's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    Tenant,
    Site(usize),
}

impl Scope {
    /// Where the file's paths must lie: the tenant's home, or the site's
    /// directory (the file's own).
    fn home(self, t: &Tenant, path: &Path) -> PathBuf {
        match self {
            Scope::Tenant => t.home.clone(),
            Scope::Site(_) => path.parent().map(Path::to_path_buf).unwrap_or_default(),
        }
    }
}

/// Which site a route of an own file is for.
#[derive(Debug, Clone, Copy)]
enum RouteSite {
    /// The one its `host` names (the tenant's file's `[[route]]`).
    ByHost,
    /// This one, written `[[site]] host = ...` with `[[site.route]]`.
    Fixed(usize),
    /// This one, whose `berth.toml` it is (`host`, if written, must be its).
    Within(usize),
}

/// The index of the tenant's site that has host `h`, or a problem.
fn site_of(walk: &Walk<'_>, t: &Tenant, h: &At<String>) -> Option<usize> {
    let lower = h.value.trim_end_matches('.').to_ascii_lowercase();
    let found = t.sites.iter().position(|s| s.hosts.contains(&lower));
    if found.is_none() {
        let hosts: Vec<&str> = t
            .sites
            .iter()
            .flat_map(|s| s.hosts.iter().map(String::as_str))
            .collect();
        let yours = if hosts.is_empty() {
            "you have no sites".to_string()
        } else {
            format!("yours are: {}", hosts.join(", "))
        };
        walk.problem(
            h.line,
            &h.key,
            format!(
                "{:?} is not one of your sites' host names ({yours}); only the administrator adds host names",
                h.value
            ),
        );
    }
    found
}

/// Whether `path` (inside `home`) is there without a symbolic link on the
/// way from `home`, as a directory or not; else why not, in words that say
/// nothing about what lies outside the home.
fn beneath(home: &Path, path: &Path, dir: bool) -> Result<(), String> {
    let shown = path.display();
    let rel = path
        .strip_prefix(home)
        .map_err(|_| format!("{shown} is outside your home"))?;
    if rel.as_os_str().is_empty() {
        return if dir {
            Ok(())
        } else {
            Err(format!("{shown} is your home, not a program"))
        };
    }
    let base = rustix::fs::open(
        home,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("home {}: {e}", home.display()))?;
    let mut flags = OFlags::PATH | OFlags::CLOEXEC;
    if dir {
        flags |= OFlags::DIRECTORY;
    }
    match rustix::fs::openat2(
        &base,
        rel,
        flags,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(_) => Ok(()),
        Err(rustix::io::Errno::LOOP) | Err(rustix::io::Errno::XDEV) => Err(format!(
            "{shown} is a symbolic link or is reached through one: a program or directory of your file must be in your home itself (or the program one the administrator allows)"
        )),
        Err(rustix::io::Errno::NOENT) => Err(format!("{shown}: no such file or directory")),
        Err(rustix::io::Errno::NOTDIR) if dir => Err(format!("{shown} is not a directory")),
        Err(e) => Err(format!("{shown}: {e}")),
    }
}

/// The other way of writing a route's key: `[[route]]` and `[[site.route]]`
/// add the same routes, so `route.K` and `site.route.K` are one key, and a
/// lock on either spelling covers both.
fn other_spelling<'a>(parts: &[&'a str]) -> Option<Vec<&'a str>> {
    match parts {
        ["route", rest @ ..] => Some([&["site", "route"][..], rest].concat()),
        ["site", "route", rest @ ..] => Some([&["route"][..], rest].concat()),
        _ => None,
    }
}

/// Whether route path `p` is `prefix` or lies under it (whole segments).
fn under(p: &str, prefix: &str) -> bool {
    prefix == "/"
        || p == prefix
        || p.strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Whether `path` (absolute, as resolved) lies in `home`, without `..`.
pub fn inside(path: &Path, home: &Path) -> bool {
    path.is_absolute()
        && !path.components().any(|c| c == Component::ParentDir)
        && path.starts_with(home)
}

/// Every key of `table` that has a value (descending into tables and arrays
/// of tables), dotted without array indexes, with its line.
fn leaves(
    src: &Source,
    table: &dyn TableLike,
    prefix: &mut Vec<String>,
    fallback: usize,
    out: &mut Vec<(String, usize)>,
) {
    for (k, item) in table.iter() {
        let line = table
            .get_key_value(k)
            .and_then(|(key, _)| src.line(key.span()))
            .or_else(|| src.line(item.span()))
            .unwrap_or(fallback);
        prefix.push(k.to_string());
        match item {
            Item::Table(t) => leaves(src, t, prefix, line, out),
            Item::Value(Value::InlineTable(t)) => leaves(src, t, prefix, line, out),
            Item::ArrayOfTables(a) => {
                for t in a.iter() {
                    let l = src.line(t.span()).unwrap_or(line);
                    leaves(src, t, prefix, l, out);
                }
            }
            Item::Value(Value::Array(a))
                if a.iter().all(|v| v.is_inline_table()) && !a.is_empty() =>
            {
                for v in a.iter() {
                    if let Some(t) = v.as_inline_table() {
                        leaves(src, t, prefix, line, out);
                    }
                }
            }
            _ => out.push((prefix.join("."), line)),
        }
        prefix.pop();
    }
}

/// Every key of a document with a value, dotted, with its line.
pub(super) fn leaves_of(src: &Source, table: &dyn TableLike, out: &mut Vec<(String, usize)>) {
    leaves(src, table, &mut Vec::new(), 0, out);
}

fn file_problem(path: &Path, why: String) -> Problem {
    Problem {
        file: path.to_path_buf(),
        line: 0,
        key: "(file)".into(),
        why,
    }
}

/// Files an own file names (htpasswd files): inside the tenant's home, read
/// as its own file is.
pub(super) struct TenantFiles {
    home: PathBuf,
    owner: u32,
    /// Bytes read so far, at most [`MAX_OWN_NAMED`].
    read: Cell<u64>,
}

impl ReadFile for TenantFiles {
    fn read(&self, walk: &Walk<'_>, at: &At<String>) -> Result<(PathBuf, String), String> {
        let path = super::resolve_path(walk, at);
        if !inside(&path, &self.home) {
            return Err(format!(
                "{} is outside your home {}",
                path.display(),
                self.home.display()
            ));
        }
        let over = || {
            format!(
                "{}: the files your own file names (each route's copy counts) hold more than {} together",
                path.display(),
                super::show_size(MAX_OWN_NAMED)
            )
        };
        if self.read.get() >= MAX_OWN_NAMED {
            return Err(over());
        }
        match read_own_file(&self.home, &path, self.owner)? {
            Some(text) => {
                let total = self.read.get() + text.len() as u64;
                self.read.set(total);
                if total > MAX_OWN_NAMED {
                    return Err(over());
                }
                Ok((path, text))
            }
            None => Err(format!("{}: no such file", path.display())),
        }
    }
}

/// Reads the tenant's file `path` (inside `home`) as root would be allowed
/// to on the tenant's word: no symbolic link below `home` (openat2 with
/// RESOLVE_NO_SYMLINKS from the home the administrator named), a regular
/// file owned by `owner` with no other hard link, at most
/// [`MAX_OWN_FILE`] bytes of UTF-8. Ok(None): there is no such file.
pub fn read_own_file(home: &Path, path: &Path, owner: u32) -> Result<Option<String>, String> {
    use std::io::Read;
    let shown = path.display();
    let Ok(rel) = path.strip_prefix(home) else {
        return Err(format!("{shown} is outside the home {}", home.display()));
    };
    let dir = match rustix::fs::open(
        home,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(dir) => dir,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(format!("home {}: {e}", home.display())),
    };
    let fd: OwnedFd = match rustix::fs::openat2(
        &dir,
        rel,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
        // No mount point crossed either: a filesystem a tenant mounted in
        // its home (FUSE, with user_allow_other) could hold the read, and
        // berth reads on the supervisor's loop.
        ResolveFlags::BENEATH
            | ResolveFlags::NO_SYMLINKS
            | ResolveFlags::NO_MAGICLINKS
            | ResolveFlags::NO_XDEV,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP) => {
            return Err(format!(
                "{shown} is a symbolic link or is reached through one: berth does not follow links to a tenant's files"
            ));
        }
        Err(rustix::io::Errno::XDEV) => {
            return Err(format!(
                "{shown} lies across a mount point below {}: berth reads a tenant's files only from its home's own filesystem",
                home.display()
            ));
        }
        Err(e) => return Err(format!("{shown}: {e}")),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| format!("{shown}: {e}"))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(format!("{shown} is not a regular file"));
    }
    if st.st_uid != owner {
        return Err(format!(
            "{shown} is owned by uid {}, not by the tenant (uid {owner}): berth reads only the tenant's own files",
            st.st_uid
        ));
    }
    if st.st_nlink != 1 {
        return Err(format!(
            "{shown} has {} hard links: berth reads only a file that is not linked from elsewhere",
            st.st_nlink
        ));
    }
    let mut text = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_OWN_FILE + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("{shown}: {e}"))?;
    if text.len() as u64 > MAX_OWN_FILE {
        return Err(format!(
            "{shown} is larger than {}, the most berth reads of a tenant's file",
            super::show_size(MAX_OWN_FILE)
        ));
    }
    String::from_utf8(text)
        .map(Some)
        .map_err(|_| format!("{shown} is not UTF-8 text"))
}

/// `own_config` of `[defaults]` or a tenant's block: `true` (`~/berth.toml`),
/// `false`, `"~/PATH"` or an absolute path.
pub(super) fn read_own_config(t: &mut TableReader<'_>) -> Option<At<OwnPath>> {
    if t.peek_str("own_config").is_none() {
        let b = t.boolean("own_config")?;
        let value = if b.value {
            OwnPath::Home("berth.toml".into())
        } else {
            OwnPath::Off
        };
        return Some(At {
            value,
            line: b.line,
            key: b.key,
        });
    }
    let s = t.string("own_config")?;
    let value = if let Some(rest) = s.value.strip_prefix("~/") {
        OwnPath::Home(rest.into())
    } else if s.value.starts_with('/') {
        OwnPath::Absolute(s.value.clone().into())
    } else {
        t.walk().problem(
            s.line,
            &s.key,
            "must be true, false, \"~/FILE\" (in the tenant's home) or an absolute path",
        );
        return None;
    };
    Some(At {
        value,
        line: s.line,
        key: s.key,
    })
}

/// The tenant's own file's path, checked to lie inside its home.
pub(super) fn own_path(walk: &Walk<'_>, at: &At<OwnPath>, home: &Path) -> Option<PathBuf> {
    let path = match &at.value {
        OwnPath::Off => return None,
        OwnPath::Home(rel) => home.join(rel),
        OwnPath::Absolute(p) => p.clone(),
    };
    if !inside(&path, home) || path == home {
        walk.problem(
            at.line,
            &at.key,
            format!(
                "{} is not a file inside the tenant's home {} (a tenant edits only its own files)",
                path.display(),
                home.display()
            ),
        );
        return None;
    }
    Some(path)
}

/// `allowed_commands`: absolute program paths.
pub(super) fn read_allowed_commands(t: &mut TableReader<'_>) -> Vec<PathBuf> {
    let Some(at) = t.strings("allowed_commands") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for c in &at.value {
        let p = PathBuf::from(c);
        if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
            t.walk().problem(
                at.line,
                &at.key,
                format!(
                    "{c:?} must be an absolute path to a program, such as \"/usr/bin/php-cgi\""
                ),
            );
        } else {
            out.push(p);
        }
    }
    out
}

/// `locked`: keys of the own file only the administrator sets.
pub(super) fn read_locks(t: &mut TableReader<'_>) -> Vec<Lock> {
    let Some(at) = t.strings("locked") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in &at.value {
        let pattern: Vec<String> = p.split('.').map(str::to_string).collect();
        let valid = pattern.iter().all(|s| {
            s == "*"
                || (!s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        }) && ["app", "route", "site", "limits", "isolation"]
            .contains(&pattern[0].as_str());
        if valid {
            out.push(Lock {
                pattern,
                file: t.walk().file().to_path_buf(),
                line: at.line,
            });
        } else {
            t.walk().problem(
                at.line,
                &at.key,
                format!(
                    "{p:?} is not a key of a tenant's own file: a dotted key such as \"limits\", \"app.*.env\" or \"route\" (app, route, site, limits or isolation first; * is any name)"
                ),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_covers_the_keys_under_its_pattern() {
        let lock = |p: &str| Lock {
            pattern: p.split('.').map(str::to_string).collect(),
            file: "main.toml".into(),
            line: 1,
        };
        assert!(lock("limits").covers(&["limits", "memory"]));
        assert!(lock("app.*.env").covers(&["app", "blog", "env", "A"]));
        assert!(!lock("app.*.env").covers(&["app", "blog", "command"]));
        assert!(!lock("app.*.env").covers(&["app", "blog"]));
        assert!(lock("route").covers(&["route", "path"]));
        assert!(!lock("route").covers(&["site", "route", "path"]));
    }

    #[test]
    fn a_routes_key_is_the_same_under_site() {
        assert_eq!(
            other_spelling(&["route", "auth", "htpasswd"]),
            Some(vec!["site", "route", "auth", "htpasswd"])
        );
        assert_eq!(
            other_spelling(&["site", "route", "redirect"]),
            Some(vec!["route", "redirect"])
        );
        assert_eq!(other_spelling(&["site", "host"]), None);
        assert_eq!(other_spelling(&["limits", "memory"]), None);
    }

    #[test]
    fn a_route_is_under_a_prefix_by_whole_segments() {
        assert!(under("/admin", "/admin"));
        assert!(under("/admin/x", "/admin"));
        assert!(!under("/adminx", "/admin"));
        assert!(under("/anything", "/"));
    }

    #[test]
    fn a_path_is_inside_a_home_only_without_dot_dot() {
        let home = Path::new("/home/alice");
        assert!(inside(Path::new("/home/alice/app/run"), home));
        assert!(!inside(Path::new("/home/alice/../bob/run"), home));
        assert!(!inside(Path::new("/home/alice2/run"), home));
        assert!(!inside(Path::new("relative"), home));
    }
}
