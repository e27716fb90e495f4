//! The supervisor's side of isolation: what each tenant's view holds, worked
//! out from the configuration in use ([`Views`]), the tenants' private
//! directories under `state_dir/private/`, and whether an unprivileged berth
//! may make namespaces at all.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing::warn;

use super::Settings;
use super::view::{self, Inputs, Mount};
use crate::config::Config;

/// How one app process is isolated: what `spawn` needs.
#[derive(Debug, Clone)]
pub struct Isolate {
    /// The view (None: no namespaces, the filter only).
    pub view: Option<View>,
    /// The filter's `allow` list (None: no filter).
    pub seccomp: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct View {
    pub mounts: Arc<Vec<Mount>>,
    pub network_none: bool,
    /// Unprivileged berth: a user namespace mapping this uid and gid.
    pub userns: Option<(u32, u32)>,
}

/// What a view's mounts depend on besides the configuration: the tenant,
/// and the app's read-write and read-only binds.
type MountsKey = (String, Vec<PathBuf>, Vec<PathBuf>);

/// Every tenant's paths and berth's own, from the configuration in use.
pub struct Views {
    state_dir: PathBuf,
    /// Each tenant's home and site roots, symlinks of root's resolved.
    paths: Vec<(String, Vec<PathBuf>)>,
    /// Every tenant's paths and berth's hidden ones, sorted, each with its
    /// tenant (None: berth's): what lies inside a tenant's tree is found
    /// by a range.
    all: Vec<(PathBuf, Option<usize>)>,
    /// [`view::common_hides`] and berth's own directories.
    hidden: Vec<PathBuf>,
    hidden_files: Vec<PathBuf>,
    /// Unprivileged berth: the user namespace's ids, or why there is none.
    unprivileged: Option<Result<(u32, u32), String>>,
    /// The host's directories others may write, found once, at the first
    /// start of an app in its view (not before: a berth without one never
    /// reads the tree).
    shared: std::sync::OnceLock<view::Shared>,
    /// The front end's uid and groups, for that scan.
    front: Option<(u32, Vec<u32>)>,
    /// Mounts by tenant and the app's binds, until the next configuration.
    cache: Mutex<HashMap<MountsKey, Arc<Vec<Mount>>>>,
}

impl Views {
    /// `switch_user` false: berth runs unprivileged (probed here, once).
    pub fn new(cfg: &Config, front: Option<(u32, Vec<u32>)>, switch_user: bool) -> Views {
        let unprivileged = (!switch_user).then(probe_user_namespace);
        if let Some(Err(why)) = &unprivileged {
            warn!(
                "isolation is off: {why}; apps run without their own view of the machine (only the seccomp filter), unless [enforce.isolation] demands it"
            );
        }
        let mut v = Views {
            shared: std::sync::OnceLock::new(),
            front,
            state_dir: PathBuf::new(),
            paths: Vec::new(),
            all: Vec::new(),
            hidden: Vec::new(),
            hidden_files: Vec::new(),
            unprivileged,
            cache: Mutex::new(HashMap::new()),
        };
        v.update(cfg);
        v
    }

    /// Takes a new configuration.
    pub fn update(&mut self, cfg: &Config) {
        self.state_dir = real(&cfg.server.state_dir);
        // A tenant discovery made has the discovery root as its home: its
        // own part of it is each of its sites' directories (`root/HOST`),
        // and the root's listing is as hidden as `/home`'s.
        let discovery_root = cfg.discovery.as_ref().map(|d| real(&d.settings.root));
        self.paths = cfg
            .tenants
            .iter()
            .map(|t| {
                let home = real(&t.home);
                let mut p = Vec::new();
                if discovery_root.as_ref() == Some(&home) {
                    p.extend(
                        t.sites
                            .iter()
                            .filter_map(|s| real(&s.root).parent().map(Path::to_path_buf)),
                    );
                } else {
                    p.push(home);
                }
                p.extend(t.sites.iter().map(|s| real(&s.root)));
                p.sort();
                p.dedup();
                (t.name.clone(), p)
            })
            .collect();
        let mut hidden = vec![self.state_dir.clone(), real(&cfg.server.log_dir)];
        let mut files: Vec<PathBuf> = cfg.files.clone();
        for t in &cfg.tenants {
            for s in &t.sites {
                if let Some(tls) = &s.tls {
                    files.push(tls.cert.clone());
                    files.push(tls.key.clone());
                }
                for r in &s.routes {
                    if let Some(auth) = &r.auth {
                        files.push(auth.htpasswd.clone());
                    }
                }
            }
        }
        if let Some((f, _)) = cfg.server.admin.as_ref().and_then(|a| a.htpasswd.as_ref()) {
            files.push(f.clone());
        }
        let mut hidden_files = Vec::new();
        let own_trees: Vec<&PathBuf> = self.paths.iter().flat_map(|(_, p)| p).collect();
        for f in files {
            let f = real(&f);
            // A tenant's own password file stays where the tenant keeps it.
            if own_trees.iter().any(|o| f.starts_with(o)) {
                continue;
            }
            match f.parent() {
                Some(dir) if !view::is_system(dir) => hidden.push(dir.to_path_buf()),
                _ => hidden_files.push(f),
            }
        }
        hidden.sort();
        hidden.dedup();
        hidden_files.sort();
        hidden_files.dedup();
        let mut all: Vec<(PathBuf, Option<usize>)> = self
            .paths
            .iter()
            .enumerate()
            .flat_map(|(i, (_, p))| p.iter().map(move |p| (p.clone(), Some(i))))
            .collect();
        let tenants_paths: Vec<PathBuf> = all.iter().map(|(p, _)| p.clone()).collect();
        all.extend(
            hidden
                .iter()
                .chain(&hidden_files)
                .map(|p| (p.clone(), None)),
        );
        all.sort();
        self.all = all;
        hidden.extend(view::common_hides(&tenants_paths));
        self.hidden = hidden;
        self.hidden_files = hidden_files;
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// How an app of `tenant` with `settings` is isolated; None: not at all.
    /// Err: it must not start (its view is demanded and cannot be built).
    /// `extra`: more paths bound read-write into the view (the directory an
    /// app that binds its own socket binds it in).
    pub fn isolate(
        &self,
        tenant: &str,
        settings: &Settings,
        extra: &[PathBuf],
    ) -> Result<Option<Isolate>, String> {
        let seccomp = settings.seccomp.then(|| settings.allow.clone());
        let mut namespaces = settings.namespaces;
        let mut userns = None;
        match &self.unprivileged {
            Some(Ok(ids)) => userns = Some(*ids),
            Some(Err(why)) if namespaces => {
                if settings.required {
                    return Err(format!(
                        "isolation is required ([enforce.isolation] namespaces = true) and cannot be set up: {why}"
                    ));
                }
                namespaces = false;
            }
            _ => {}
        }
        if !namespaces {
            return Ok(seccomp.map(|s| Isolate {
                view: None,
                seccomp: Some(s),
            }));
        }
        let mounts = self.mounts(tenant, settings, extra)?;
        Ok(Some(Isolate {
            view: Some(View {
                mounts,
                network_none: settings.network == super::Network::None,
                userns,
            }),
            seccomp,
        }))
    }

    fn mounts(
        &self,
        tenant: &str,
        settings: &Settings,
        extra: &[PathBuf],
    ) -> Result<Arc<Vec<Mount>>, String> {
        let mut bind = settings.bind.clone();
        bind.extend(extra.iter().cloned());
        let key = (tenant.to_string(), bind, settings.read_only.clone());
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if let Some(m) = cached {
            self.make_private(tenant, &m)?;
            return Ok(m);
        }
        let private = self.private(tenant);
        let index = self.paths.iter().position(|(t, _)| t == tenant);
        let own = index.map(|i| self.paths[i].1.clone()).unwrap_or_default();
        // What lies inside the tenant's own tree and is not its own: hidden
        // on top of it (the common hides only cover it from outside).
        let mut others: Vec<PathBuf> = Vec::new();
        for o in &own {
            let start = self.all.partition_point(|(p, _)| p < o);
            for (p, owner) in self.all[start..].iter() {
                if !p.starts_with(o) {
                    break;
                }
                if *owner != index || owner.is_none() {
                    others.push(p.clone());
                }
            }
        }
        others.sort();
        others.dedup();
        let bind: Vec<PathBuf> = key.1.iter().map(|p| real(p)).collect();
        let read_only: Vec<PathBuf> = settings.read_only.iter().map(|p| real(p)).collect();
        let m = Arc::new(view::mounts(&Inputs {
            own,
            others,
            hidden: self.hidden.clone(),
            hidden_files: self.hidden_files.clone(),
            bind: &bind,
            read_only: &read_only,
            private,
        }));
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, m.clone());
        self.make_private(tenant, &m)?;
        Ok(m)
    }

    /// The tenant's private directories, by target: in
    /// `state_dir/private/TENANT/` (root's, mode 0700, so nobody reaches them
    /// but through the view). Made by [`Views::make_private`], only for the
    /// ones the view mounts.
    fn private(&self, tenant: &str) -> Vec<(PathBuf, PathBuf)> {
        let dir = self.state_dir.join("private").join(tenant);
        let shared = self.shared.get_or_init(|| {
            let found = view::shared_writable(self.front.as_ref().map(|(u, g)| (*u, g.as_slice())));
            if found.left > 0 {
                warn!(
                    "{} more directories that others may write were found than the {} that apps get a private copy of; apps see those as they are",
                    found.left,
                    view::PRIVATE_MAX
                );
            }
            found
        });
        shared
            .dirs
            .iter()
            .map(|t| (dir.join(view::private_name(t)), t.clone()))
            .collect()
    }

    /// Makes the private directories `mounts` binds, when missing, each
    /// with the mode of the directory it stands for.
    fn make_private(&self, tenant: &str, mounts: &[Mount]) -> Result<(), String> {
        let base = self.state_dir.join("private");
        let dir = base.join(tenant);
        let mk = |d: &Path, mode: u32| -> std::io::Result<()> {
            match std::fs::create_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            let md = std::fs::symlink_metadata(d)?;
            if !md.is_dir() || md.uid() != rustix::process::geteuid().as_raw() {
                return Err(std::io::Error::other("not a directory of berth's"));
            }
            if md.mode() & 0o7777 != mode {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode))?;
            }
            Ok(())
        };
        let why = |d: &Path, e: std::io::Error| format!("private directory {}: {e}", d.display());
        mk(&base, 0o700).map_err(|e| why(&base, e))?;
        mk(&dir, 0o700).map_err(|e| why(&dir, e))?;
        for m in mounts {
            let Mount::Private { source, target } = m else {
                continue;
            };
            let Ok(md) = std::fs::metadata(target) else {
                continue;
            };
            mk(source, md.mode() & 0o7777).map_err(|e| why(source, e))?;
        }
        Ok(())
    }
}

/// Whether this (unprivileged) process may make the namespaces of a view:
/// a child tries, once.
fn probe_user_namespace() -> Result<(u32, u32), String> {
    let ids = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg("app-init")
        .arg("--probe")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    match cmd.output() {
        Ok(out) if out.status.success() => Ok(ids),
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        Err(e) => Err(format!("cannot run berth's init: {e}")),
    }
}

/// `path` with the symlinks that root owns resolved, and no others: an
/// admin's `/home` → `/data/home` is followed, a tenant's `public` →
/// `/home/bob` is left for the init to refuse (it binds nothing through a
/// symlink).
pub fn real(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    // What is left to walk, the next component last.
    let mut rest: Vec<OsString> = path
        .components()
        .rev()
        .map(|c| c.as_os_str().to_owned())
        .collect();
    let mut hops = 0;
    while let Some(c) = rest.pop() {
        if c == "/" {
            out = PathBuf::from("/");
            continue;
        }
        if c == "." {
            continue;
        }
        if c == ".." {
            out.pop();
            continue;
        }
        let next = out.join(&c);
        match std::fs::symlink_metadata(&next) {
            Ok(md) if md.file_type().is_symlink() && md.uid() == 0 && hops < 40 => {
                hops += 1;
                match std::fs::read_link(&next) {
                    // An absolute target starts again from "/".
                    Ok(target) => {
                        rest.extend(target.components().rev().map(|c| c.as_os_str().to_owned()))
                    }
                    Err(_) => out = next,
                }
            }
            _ => out = next,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_symlinks_are_resolved_and_others_are_not() {
        let d = tempfile::tempdir().unwrap();
        let base = real(d.path());
        std::fs::create_dir_all(base.join("data/home/alice/site")).unwrap();
        std::os::unix::fs::symlink(base.join("data/home"), base.join("home")).unwrap();
        std::os::unix::fs::symlink("site", base.join("data/home/alice/public")).unwrap();
        // Both links are root's here (the tests run as root): both resolve.
        assert_eq!(
            real(&base.join("home/alice/public")),
            base.join("data/home/alice/site")
        );
        // A tenant's link is left alone.
        std::os::unix::fs::lchown(base.join("data/home/alice/public"), Some(12345), None).unwrap();
        assert_eq!(
            real(&base.join("home/alice/public")),
            base.join("data/home/alice/public")
        );
        assert_eq!(
            real(&base.join("home/./alice/../alice")),
            base.join("data/home/alice")
        );
    }
}
