//! Every site root, walked: what in it someone other than its tenant may
//! change, set-id files, executables no route runs, service files inside
//! the root (htpasswd files, private keys, berth's configuration, `.env`,
//! version control directories, SQL files, copies of scripts), app
//! programs served as files, and links the static file rules refuse.
//!
//! The walk never follows a link: each directory is opened relative to
//! its parent's descriptor with `O_NOFOLLOW` and checked to be the one
//! that was listed, so a tenant who swaps a directory for a link meanwhile
//! sends the audit nowhere else. It stays on the root's file system (a
//! tenant's FUSE mount could hold a read forever) and stops after
//! [`MAX_ENTRIES`] entries and [`MAX_DEPTH`] levels per root, saying so.
//!
//! Whether a file is served, and whether a link is refused, is decided by
//! the front end's own code: the route lookup ([`crate::front::vhost::route`],
//! [`crate::front::app_route::split_script`]), the static file rules for a
//! link ([`crate::front::static_files::script_path`] for one to a file,
//! [`crate::front::static_files::serve`] of a `HEAD` for one to a
//! directory), and the front end's user's permissions along the way.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, OsStr};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::access::{Owner, Principal};
use super::{Context, Finding, Place, Severity};
use crate::config::{Action, Site, Tenant};
use crate::front::path::is_hidden;
use crate::front::respond::Reject;

/// Entries walked per root at most (a WordPress site has about 3,000; a
/// large shop some 100,000); past it, one info finding says where the walk
/// stopped.
pub const MAX_ENTRIES: usize = 200_000;
/// Directory levels walked below a root at most.
pub const MAX_DEPTH: usize = 64;
/// Findings of one check and severity listed per root; the rest are
/// counted in one finding with a `find` command that lists them all.
const MAX_LISTED: usize = 20;
/// How much of a `.key` or `.pem` file is read to see whether it holds a
/// private key.
const KEY_PROBE: usize = 64 << 10;

/// What the walks saw.
#[derive(Debug, Default)]
pub struct Walked {
    pub roots: usize,
    pub entries: usize,
}

pub(super) fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) -> Walked {
    let mut by_root: BTreeMap<PathBuf, Vec<(&Tenant, &Site)>> = BTreeMap::new();
    for t in &ctx.cfg.tenants {
        for s in &t.sites {
            by_root
                .entry(super::plain(&s.root))
                .or_default()
                .push((t, s));
        }
    }
    let configured = configured_files(ctx);
    let mut walked = Walked::default();
    for (root, sites) in &by_root {
        let mut w = Walk {
            ctx,
            root,
            sites,
            programs: programs(sites),
            configured: &configured,
            static_root: static_root(sites),
            canonical_root: std::fs::canonicalize(root).unwrap_or_else(|_| root.clone()),
            listed: BTreeMap::new(),
            more: BTreeMap::new(),
            entries: 0,
            out: Vec::new(),
        };
        w.walk();
        walked.roots += 1;
        walked.entries += w.entries;
        w.finish();
        out.append(&mut w.out);
    }
    walked
}

/// The files the configuration names that must not be in a web root:
/// htpasswd files, TLS keys, the tenants' own files (plain paths), each
/// with what it is.
fn configured_files(ctx: &Context<'_>) -> BTreeMap<PathBuf, &'static str> {
    let mut m = BTreeMap::new();
    let plain = super::plain;
    if let Some((path, _)) = ctx
        .cfg
        .server
        .admin
        .as_ref()
        .and_then(|a| a.htpasswd.as_ref())
    {
        m.insert(plain(path), HTPASSWD);
    }
    for t in &ctx.cfg.tenants {
        for own in t.own_files() {
            m.insert(plain(&own.path), OWN_CONFIG);
        }
        for s in &t.sites {
            if let Some(tls) = &s.tls {
                m.insert(plain(&tls.key), PRIVATE_KEY);
            }
            for r in &s.routes {
                if let Some(auth) = &r.auth {
                    m.insert(plain(&auth.htpasswd), HTPASSWD);
                }
            }
        }
    }
    m
}

/// The programs the apps of the root's tenants run.
fn programs(sites: &[(&Tenant, &Site)]) -> BTreeSet<PathBuf> {
    sites
        .iter()
        .flat_map(|(t, _)| &t.apps)
        .filter_map(|a| a.command.first())
        .map(|c| super::plain(Path::new(c)))
        .collect()
}

const HTPASSWD: &str = "an htpasswd file (password hashes)";
const PRIVATE_KEY: &str = "a private key";
const OWN_CONFIG: &str = "a berth configuration file";
const SQL: &str = "an SQL file (a dump's data, or a schema's structure)";

/// How a path of a site is answered, by the front end's route lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handling {
    /// Static files (behind a password when `auth`).
    Static {
        auth: bool,
    },
    /// A route with `extensions` runs it as a script.
    Runs,
    /// An app gets the request (a mounted app, or a script's PATH_INFO).
    App,
    Redirect,
}

fn handling(site: &Site, url: &str) -> Handling {
    let prefixes = site.routes.iter().map(|r| r.path.as_str());
    let Some(route) = crate::front::vhost::route(prefixes, url).map(|i| &site.routes[i]) else {
        return Handling::Static { auth: false };
    };
    let auth = route.auth.is_some();
    match &route.action {
        Action::Static => Handling::Static { auth },
        Action::Redirect { .. } => Handling::Redirect,
        Action::App { extensions, .. } if extensions.is_empty() => Handling::App,
        Action::App { extensions, .. } => {
            match crate::front::app_route::split_script(url, extensions) {
                Some((script, _)) if script == url => Handling::Runs,
                Some(_) => Handling::App,
                None => Handling::Static { auth },
            }
        }
    }
}

/// A directory still to be read.
struct Pending {
    parent: Rc<OwnedFd>,
    name: std::ffi::CString,
    rel: PathBuf,
    depth: usize,
    /// The front end's user may search every directory down to it.
    reach: bool,
    /// (dev, ino) as listed, to refuse a swapped one.
    id: (u64, u64),
}

struct Walk<'a> {
    ctx: &'a Context<'a>,
    root: &'a Path,
    sites: &'a [(&'a Tenant, &'a Site)],
    programs: BTreeSet<PathBuf>,
    configured: &'a BTreeMap<PathBuf, &'static str>,
    /// The root as the front end opens it, for the static file rules.
    static_root: Option<crate::front::static_files::Root>,
    /// The root with every link in its path resolved.
    canonical_root: PathBuf,
    /// Findings listed per (check, severity), and those past
    /// [`MAX_LISTED`].
    listed: BTreeMap<(&'static str, Severity), usize>,
    more: BTreeMap<(&'static str, Severity), usize>,
    entries: usize,
    out: Vec<Finding>,
}

/// One entry met in the walk.
struct Entry<'e> {
    rel: &'e Path,
    path: PathBuf,
    owner: Owner,
    /// The URL path it has (None: not UTF-8, so no URL reaches it).
    url: Option<String>,
    /// The front end's user may read it (and search down to it).
    front_reads: bool,
}

impl<'a> Walk<'a> {
    fn tenant(&self) -> Option<String> {
        self.sites.first().map(|(t, _)| t.name.clone())
    }

    fn push(
        &mut self,
        severity: Severity,
        check: &'static str,
        place: Place,
        what: String,
        fix: String,
    ) {
        let n = self.listed.entry((check, severity)).or_default();
        if *n >= MAX_LISTED {
            *self.more.entry((check, severity)).or_default() += 1;
            return;
        }
        *n += 1;
        let tenant = self.tenant();
        self.out.push(Finding {
            severity,
            check,
            place,
            tenant,
            what,
            fix,
        });
    }

    fn front(&self) -> Option<&Principal> {
        self.ctx.front.as_ref()
    }

    fn walk(&mut self) {
        let Ok(meta) = std::fs::metadata(self.root) else {
            return;
        };
        let owner = Owner::of(&meta);
        // The front end reaches the root if it may search every directory
        // down to it.
        let reach = match self.front() {
            None => true,
            Some(front) => self
                .root
                .ancestors()
                .all(|d| std::fs::metadata(d).is_ok_and(|m| Owner::of(&m).allows(front, 1))),
        };
        let root_entry = Entry {
            rel: Path::new(""),
            path: self.root.to_path_buf(),
            owner,
            url: Some("/".into()),
            front_reads: reach,
        };
        self.writable(&root_entry);
        let Ok(fd) = rustix::fs::open(
            self.root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return;
        };
        let Ok(st) = rustix::fs::fstat(&fd) else {
            return;
        };
        let dev = st.st_dev;
        let mut stack = self.read_dir(Rc::new(fd), PathBuf::new(), 0, reach, dev);
        while let Some(p) = stack.pop() {
            if self.entries >= MAX_ENTRIES {
                break;
            }
            let Ok(fd) = rustix::fs::openat(
                &*p.parent,
                p.name.as_c_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) else {
                continue;
            };
            match rustix::fs::fstat(&fd) {
                Ok(st) if (st.st_dev, st.st_ino) == p.id => {}
                _ => continue,
            }
            let below = self.read_dir(Rc::new(fd), p.rel, p.depth, p.reach, dev);
            stack.extend(below);
        }
        if self.entries >= MAX_ENTRIES {
            let tenant = self.tenant();
            self.out.push(Finding {
                severity: Severity::Info,
                check: "root-walk",
                place: Place::path(self.root),
                tenant,
                what: format!(
                    "the walk stopped after {MAX_ENTRIES} entries: the rest of this root was not audited"
                ),
                fix: format!(
                    "audit the rest by hand ({}), or split the site",
                    find_hint("root-writable", &self.root.display().to_string())
                ),
            });
        }
    }

    /// Reads the directory `fd` (at `rel`, `depth` levels below the root),
    /// inspects each entry, and returns the directories to read next.
    fn read_dir(
        &mut self,
        fd: Rc<OwnedFd>,
        rel: PathBuf,
        depth: usize,
        reach: bool,
        dev: u64,
    ) -> Vec<Pending> {
        let mut below = Vec::new();
        let Ok(dir) = rustix::fs::Dir::read_from(&*fd) else {
            return below;
        };
        let names: Vec<std::ffi::CString> = dir
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_owned())
            .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
            .collect();
        for name in names {
            if self.entries >= MAX_ENTRIES {
                break;
            }
            self.entries += 1;
            let Ok(st) = rustix::fs::statat(&*fd, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
            else {
                continue;
            };
            let entry_rel = rel.join(OsStr::from_bytes(name.as_bytes()));
            let owner = Owner::from_stat(&st);
            let url = entry_rel.to_str().map(|r| format!("/{r}"));
            let front_reads = reach && self.front().is_none_or(|f| owner.allows(f, 4));
            let entry = Entry {
                rel: &entry_rel,
                path: self.root.join(&entry_rel),
                owner,
                url,
                front_reads,
            };
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Symlink => self.symlink(&entry, &fd, &name),
                FileType::Directory => {
                    self.writable(&entry);
                    if let Some(what) = repository(name.as_bytes()) {
                        self.service_file(&entry, what);
                        continue;
                    }
                    if st.st_dev != dev {
                        let tenant = self.tenant();
                        self.out.push(Finding {
                            severity: Severity::Info,
                            check: "root-walk",
                            place: Place::path(&entry.path),
                            tenant,
                            what: "another file system is mounted here: not walked (a tenant's FUSE mount could hold the audit's reads)".into(),
                            fix: "audit it by hand if it is part of the site".into(),
                        });
                        continue;
                    }
                    if depth + 1 > MAX_DEPTH {
                        let tenant = self.tenant();
                        self.out.push(Finding {
                            severity: Severity::Info,
                            check: "root-walk",
                            place: Place::path(&entry.path),
                            tenant,
                            what: format!(
                                "deeper than {MAX_DEPTH} levels below the root: not walked"
                            ),
                            fix: "audit it by hand".into(),
                        });
                        continue;
                    }
                    let search = self.front().is_none_or(|f| owner.allows(f, 1));
                    below.push(Pending {
                        parent: fd.clone(),
                        name,
                        rel: entry_rel.clone(),
                        depth: depth + 1,
                        reach: reach && search,
                        id: (st.st_dev, st.st_ino),
                    });
                }
                FileType::RegularFile => self.file(&entry, &fd, &name),
                // FIFOs, sockets, devices: never served, nothing to say.
                _ => {}
            }
        }
        below
    }

    /// Adds a finding for what is past [`MAX_LISTED`] of each check.
    fn finish(&mut self) {
        let root = self.root.display().to_string();
        let more: Vec<_> = std::mem::take(&mut self.more).into_iter().collect();
        for ((check, severity), n) in more {
            let tenant = self.tenant();
            self.out.push(Finding {
                severity,
                check,
                place: Place::path(self.root),
                tenant,
                what: format!(
                    "{n} more {severity} findings of {check} in this root, not listed one by one"
                ),
                fix: format!("list them all: {}", find_hint(check, &root)),
            });
        }
    }

    /// Where one of the root's sites serves `e` as a static file, or why
    /// none does.
    fn served(&self, e: &Entry<'_>) -> Result<String, String> {
        let Some(url) = &e.url else {
            return Err("its name is not UTF-8, so no URL reaches it".into());
        };
        if is_hidden(url) {
            return Err("berth never serves a hidden name".into());
        }
        let mut why = "every route of its sites sends the path elsewhere";
        for (_, site) in self.sites {
            match handling(site, url) {
                Handling::Static { auth } => {
                    if !e.front_reads {
                        why = "the front end's user may not read it now (one chmod away)";
                        continue;
                    }
                    let behind = if auth { " (behind a password)" } else { "" };
                    return Ok(format!("served at {}{url}{behind}", site.hosts[0]));
                }
                Handling::Runs | Handling::App | Handling::Redirect => {}
            }
        }
        Err(why.into())
    }

    /// Whether a route of the root's sites runs `e` as a script.
    fn runs(&self, e: &Entry<'_>) -> bool {
        e.url.as_ref().is_some_and(|url| {
            self.sites
                .iter()
                .any(|(_, s)| handling(s, url) == Handling::Runs)
        })
    }

    /// Who besides its owner may change `e`: everyone, the front end's
    /// user, or a group with others in it.
    fn writable(&mut self, e: &Entry<'_>) {
        let o = e.owner;
        let a = &self.ctx.accounts;
        let path = e.path.display();
        let found = if o.others(2) {
            Some((
                Severity::High,
                format!(
                    "writable by everyone (mode {:o}): any local user, every tenant's app among them, may change the site",
                    o.bits()
                ),
                format!("chmod o-w {path}"),
            ))
        } else if let Some(front) = self
            .front()
            .filter(|f| o.uid == f.uid || f.groups.contains(&o.gid))
            && o.allows(front, 2)
        {
            let how = if o.uid == front.uid {
                "as its owner".to_string()
            } else {
                format!("through {}", a.group_phrase(o.gid))
            };
            let fix = if o.uid == front.uid {
                let owner = self.tenant_user().unwrap_or_else(|| "TENANT".into());
                format!("chown {owner} {path}")
            } else {
                format!("chmod g-w {path}")
            };
            Some((
                Severity::High,
                format!(
                    "writable by the front end's user {} ({how}, mode {:o}): a flaw in the front end, which talks to every client, lets an attacker change the site",
                    front.name,
                    o.bits()
                ),
                fix,
            ))
        } else if o.group(2) && !a.private_to(o.gid, o.uid) {
            Some((
                Severity::Medium,
                format!(
                    "writable by {} (mode {:o}), not only by its owner",
                    a.group_phrase(o.gid),
                    o.bits()
                ),
                format!("chmod g-w {path}"),
            ))
        } else {
            None
        };
        if let Some((severity, what, fix)) = found {
            self.push(severity, "root-writable", Place::path(&e.path), what, fix);
        }
    }

    fn tenant_user(&self) -> Option<String> {
        self.sites.first().map(|(t, _)| t.user.clone())
    }

    fn file(&mut self, e: &Entry<'_>, dir: &OwnedFd, name: &CStr) {
        self.writable(e);
        let o = e.owner;
        let a = &self.ctx.accounts;
        let path = e.path.display().to_string();
        let setid = o.mode & 0o6000;
        if setid != 0 {
            let (severity, what) = if o.mode & 0o4000 != 0 && o.uid == 0 {
                (Severity::Critical, "setuid root: whoever runs it (any local user, any tenant's app) runs it as root, and one flaw in it is root".to_string())
            } else if o.mode & 0o4000 != 0 {
                (
                    Severity::High,
                    format!(
                        "setuid {}: whoever runs it runs it as {}",
                        a.user_name(o.uid),
                        a.user_name(o.uid)
                    ),
                )
            } else {
                (
                    Severity::High,
                    format!(
                        "setgid: whoever runs it runs it with {}",
                        a.group_phrase(o.gid)
                    ),
                )
            };
            self.push(
                severity,
                "root-setid",
                Place::path(&e.path),
                format!("{what} (mode {:o})", o.bits()),
                format!("chmod u-s,g-s {path}"),
            );
        }
        let plain = super::plain(&e.path);
        let program = self.programs.contains(&plain);
        if program && let Ok(how) = self.served(e) {
            self.push(
                Severity::Medium,
                "root-app-source",
                Place::path(&e.path),
                format!("an app's program lies in the web root and is {how}: anyone may download its source, and whatever it holds"),
                "move it out of the root (and change the app's command), or route its path to the app".into(),
            );
        }
        if setid == 0 && o.mode & 0o111 != 0 && !program && !self.runs(e) {
            self.push(
                Severity::Low,
                "root-executable",
                Place::path(&e.path),
                format!("executable (mode {:o}), but no route runs it: files of a static root need no execute bit, and one there is often an upload or a leftover meant to run", o.bits()),
                format!("chmod a-x {path}"),
            );
        }
        let bytes = e.rel.file_name().map_or(&b""[..], |n| n.as_bytes());
        let what = self
            .configured
            .get(&plain)
            .copied()
            .or_else(|| service_name(bytes))
            .or_else(|| key_file(bytes, dir, name).then_some(PRIVATE_KEY));
        if let Some(what) = what {
            self.service_file(e, what);
        } else if let Some(script) = backup_of(bytes) {
            // A copy of a script is served as its source.
            let runs = e.url.as_ref().is_some_and(|url| {
                let original = format!("{}/{script}", url.rsplit_once('/').map_or("", |(d, _)| d));
                self.sites
                    .iter()
                    .any(|(_, s)| handling(s, &original) == Handling::Runs)
            });
            if runs && let Ok(how) = self.served(e) {
                self.push(
                    Severity::Medium,
                    "root-service-file",
                    Place::path(&e.path),
                    format!("a copy of the script {script}, {how} as plain text: its source (passwords in it too) for anyone"),
                    format!("rm {path} (or move it out of the root)"),
                );
            }
        }
    }

    /// A file or directory that does not belong in a web root.
    fn service_file(&mut self, e: &Entry<'_>, what: &str) {
        let fix = format!(
            "move it out of every web root (mv {} DIR/) and point what uses it there{}",
            e.path.display(),
            if what == PRIVATE_KEY {
                "; if it was served, replace the key and its certificate"
            } else {
                ""
            }
        );
        match self.served(e) {
            Ok(how) => {
                // (An SQL file may be a schema an application ships.)
                let severity = match what {
                    PRIVATE_KEY => Severity::Critical,
                    SQL => Severity::Medium,
                    _ => Severity::High,
                };
                self.push(
                    severity,
                    "root-service-file",
                    Place::path(&e.path),
                    format!("{what} inside the web root, {how}"),
                    fix,
                );
            }
            Err(why) => self.push(
                Severity::Low,
                "root-service-file",
                Place::path(&e.path),
                format!("{what} inside the web root; not served ({why}), but a change of route, a copy, an app or another server away from it"),
                fix,
            ),
        }
    }

    /// A link the static file rules refuse: one to a file of another owner
    /// (403), out of the root, absolute or to a hidden name (404).
    fn symlink(&mut self, e: &Entry<'_>, dir: &OwnedFd, name: &CStr) {
        let Some(url) = &e.url else { return };
        let Ok(target) = rustix::fs::readlinkat(dir, name, Vec::new()) else {
            return;
        };
        let target = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
        let Some(static_root) = &self.static_root else {
            return;
        };
        let Ok(resolved) = std::fs::canonicalize(&e.path) else {
            // Dangling: refused, and harmless until it points somewhere.
            return;
        };
        // The front end's own rules: for a directory, what a request for
        // it gets (a redirect when allowed); for a file, whether a script
        // route could run it (the same resolution, without reading it).
        let verdict = if resolved.is_dir() {
            let head = http::Request::head("/").body(()).map(|r| r.into_parts().0);
            let Ok(head) = head else { return };
            crate::front::static_files::serve(static_root, url, &head).map(drop)
        } else {
            crate::front::static_files::script_path(static_root, url).map(drop)
        };
        let a = &self.ctx.accounts;
        let link_owner = a.user_name(e.owner.uid);
        let target_owner = std::fs::metadata(&resolved)
            .map(|m| Owner::of(&m).uid)
            .unwrap_or(e.owner.uid);
        let root = &self.canonical_root;
        let shown = format!("the link to {}", target.display());
        let fix = format!(
            "rm {}, and copy what it should serve into the root",
            e.path.display()
        );
        let (severity, what) = match verdict {
            Ok(_) => return,
            Err(Reject::Forbidden) => (
                Severity::Medium,
                format!(
                    "{shown} reaches {} of {}, not of the link's owner {link_owner}: berth refuses it (403), but the tenant's programs follow it",
                    resolved.display(),
                    a.user_name(target_owner)
                ),
            ),
            Err(_) if !resolved.starts_with(root) && target_owner != e.owner.uid => (
                Severity::Medium,
                format!(
                    "{shown} points out of the root to {} of {}: berth refuses it (404), but it is a door to another user's file for whatever the tenant runs (and for a front end without these rules)",
                    resolved.display(),
                    a.user_name(target_owner)
                ),
            ),
            Err(_) if !resolved.starts_with(root) => (
                Severity::Low,
                format!(
                    "{shown} points out of the root to {}: berth refuses it (404)",
                    resolved.display()
                ),
            ),
            Err(_) if is_hidden(url) => return,
            Err(_) if target.is_absolute() => (
                Severity::Low,
                format!(
                    "{shown} is absolute: berth resolves links within the root only and refuses it (404); make it relative"
                ),
            ),
            Err(_) => (
                Severity::Low,
                format!(
                    "{shown} reaches {} through a hidden name or above the root: berth refuses it (404); make it a relative link that stays inside",
                    resolved.display()
                ),
            ),
        };
        self.push(severity, "root-symlink", Place::path(&e.path), what, fix);
    }
}

/// The root as the front end opens it (a discovered site's without
/// following a link, and only if its owner's).
fn static_root(sites: &[(&Tenant, &Site)]) -> Option<crate::front::static_files::Root> {
    let site = sites.first()?.1;
    match site.owner {
        Some(uid) => crate::front::static_files::Root::open_owned(&site.root, uid).ok(),
        None => crate::front::static_files::Root::open(&site.root).ok(),
    }
}

/// A version control directory's description.
fn repository(name: &[u8]) -> Option<&'static str> {
    match name {
        b".git" | b".svn" | b".hg" | b".bzr" => Some(
            "a version control repository (the site's history, and every secret ever committed)",
        ),
        _ => None,
    }
}

/// What a file is by its name alone, if it is a service file.
fn service_name(name: &[u8]) -> Option<&'static str> {
    let name = std::str::from_utf8(name).ok()?;
    if name == ".htpasswd" || name == "htpasswd" || name.ends_with(".htpasswd") {
        return Some(HTPASSWD);
    }
    if name == ".env" || name.starts_with(".env.") {
        return Some("an environment file (where apps keep passwords and keys)");
    }
    if name == "berth.toml" {
        return Some(OWN_CONFIG);
    }
    const DUMPS: &[&str] = &[".sql", ".sql.gz", ".sql.bz2", ".sql.xz", ".sql.zst"];
    if DUMPS.iter().any(|s| name.ends_with(s)) {
        return Some(SQL);
    }
    None
}

/// Whether the file `name` in `dir` is named `.key` or `.pem` and holds a
/// private key (a PEM `PRIVATE KEY` block in its first [`KEY_PROBE`]
/// bytes). Opened without following a link or blocking on a FIFO.
fn key_file(name: &[u8], dir: &OwnedFd, cname: &CStr) -> bool {
    if !(name.ends_with(b".key") || name.ends_with(b".pem")) {
        return false;
    }
    let Ok(fd) = rustix::fs::openat(
        dir,
        cname,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    if !rustix::fs::fstat(&fd)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
    {
        return false;
    }
    let mut buf = vec![0u8; KEY_PROBE];
    let mut len = 0;
    while len < buf.len() {
        match rustix::io::read(&fd, &mut buf[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    buf[..len]
        .windows(b"PRIVATE KEY-----".len())
        .any(|w| w == b"PRIVATE KEY-----")
}

/// The script a backup copy's name is of (`index.php.bak`, `index.php~`,
/// `.index.php.swp`): the name without the backup's ending.
fn backup_of(name: &[u8]) -> Option<&str> {
    let name = std::str::from_utf8(name).ok()?;
    if let Some(s) = name.strip_suffix('~') {
        return Some(s);
    }
    if let Some(s) = name.strip_prefix('.').and_then(|s| s.strip_suffix(".swp")) {
        return Some(s);
    }
    [".bak", ".old", ".orig", ".save", ".swp"]
        .iter()
        .find_map(|end| name.strip_suffix(end))
}

/// A `find` command that lists what a check reports in `root`.
fn find_hint(check: &str, root: &str) -> String {
    match check {
        "root-writable" => format!(r"find {root} \( -perm -o+w -o -perm -g+w \) ! -type l"),
        "root-setid" => format!("find {root} -type f -perm /6000"),
        "root-executable" => format!("find {root} -type f -perm /111"),
        "root-symlink" => format!(r"find {root} -type l -printf '%p -> %l\n'"),
        _ => format!("berth audit ... --format json (every finding of {check} under {root})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_service_files_and_backups() {
        for (name, what) in [
            (".htpasswd", HTPASSWD),
            ("admin.htpasswd", HTPASSWD),
            (
                ".env",
                "an environment file (where apps keep passwords and keys)",
            ),
            (
                ".env.production",
                "an environment file (where apps keep passwords and keys)",
            ),
            ("berth.toml", OWN_CONFIG),
            ("shop.sql.gz", SQL),
        ] {
            assert_eq!(service_name(name.as_bytes()), Some(what), "{name}");
        }
        for name in ["index.html", "env", "sql.txt", "berth.toml.sample"] {
            assert_eq!(service_name(name.as_bytes()), None, "{name}");
        }
        assert_eq!(backup_of(b"index.php.bak"), Some("index.php"));
        assert_eq!(backup_of(b"index.php~"), Some("index.php"));
        assert_eq!(backup_of(b".index.php.swp"), Some("index.php"));
        assert_eq!(backup_of(b"index.php"), None);
    }
}
