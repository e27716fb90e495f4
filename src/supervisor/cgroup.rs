//! Cgroups: a group per tenant with its limits, a leaf per app process (and
//! per CGI run), so that limits hold for everything a tenant runs and
//! stopping a process stops everything it started (invariant 5).
//!
//! berth manages the directories itself, behind one interface with three
//! backends chosen once at start-up:
//! - **v2** when the unified hierarchy offers the `memory`, `pids` and `cpu`
//!   controllers in berth's own cgroup (read from `/proc/self/cgroup`):
//!   berth moves itself into the leaf `supervisor` (a cgroup other than the
//!   root with controllers enabled for its children may hold no process:
//!   whatever else is in berth's goes there too) and enables them below. A
//!   berth started from that leaf (a wrapper, moved there, starts it again)
//!   works in the cgroup above it.
//! - **v1** when those controllers are mounted separately (found in
//!   `/proc/self/mountinfo`): the same tree in each hierarchy, under berth's
//!   own cgroup there, with `freezer` (when mounted) for kills.
//! - **none**: berth says why once and falls back to rlimits.
//!
//! The tree, under berth's own cgroup in each hierarchy:
//! ```text
//! INSTANCE/                 "berth", or "berth-HASH" of a state_dir other than the default
//!   TENANT.tenant/          the tenant's limits: memory, tasks, cpu
//!     APP.app/
//!       SLOT.proc           one app process and whatever it starts
//!       N.cgi               one CGI run
//! ```
//! A child joins its leaf between fork and exec, before any tenant code runs
//! (see [`crate::sys::spawn_app`]): it writes "0" to the leaf's `cgroup.procs`
//! files, opened by the supervisor before the fork.
//!
//! The instance directory is named after `state_dir`, which no two berths
//! share, so berths on one machine (or one test run) never touch each other's
//! tenants; what a crashed berth left in its own is swept at start.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::config::Limits;

/// The controllers berth needs, by their v1 names; `cpuacct` and `freezer`
/// are used when mounted.
const NEEDED: [&str; 3] = ["memory", "pids", "cpu"];
const OPTIONAL: [&str; 2] = ["cpuacct", "freezer"];
/// The CFS period berth sets with a quota: 100 ms, the kernel's default.
const CPU_PERIOD_US: u64 = 100_000;
/// How long a kill waits for a group to empty.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Which backend is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    V2,
    V1,
    None,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::V2 => "v2",
            Kind::V1 => "v1",
            Kind::None => "none",
        }
    }
}

/// One v1 hierarchy berth uses: its controllers and berth's instance
/// directory in it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    controllers: Vec<String>,
    dir: PathBuf,
}

impl Hierarchy {
    fn has(&self, c: &str) -> bool {
        self.controllers.iter().any(|x| x == c)
    }
}

/// The cgroups berth manages: where, and through which backend.
#[derive(Debug, Clone)]
pub struct Cgroups {
    kind: Kind,
    /// v2: one entry, berth's instance directory; v1: one per hierarchy.
    hier: Vec<Hierarchy>,
    /// What was found, for the start-up line.
    about: String,
    /// What removed groups had counted where the kernel keeps counts locally.
    removed: Arc<Removed>,
    /// The limits last written for each tenant, so that a reload writes
    /// only those that changed (at 1,000 tenants, rewriting all of them
    /// was a tenth of a reload: the kernel recomputes CPU bandwidth on
    /// every `cpu.cfs_quota_us` write).
    applied: Arc<std::sync::Mutex<HashMap<String, Limits>>>,
}

/// Limit events the kernel counts in the cgroup where they happened (the
/// process's leaf) rather than in the group whose limit caused them: OOM
/// kills on v1, and forks refused at `pids.max` on v1 and on v2 before Linux
/// 6.13 (which counts them up the tree from the group at its limit, and has
/// `pids.events.local`). A tenant's or an app's figure is the sum over its
/// groups, and what the leaves removed from it had counted: it only grows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Local {
    oom_kills: u64,
    tasks_limit_hits: u64,
}

impl Local {
    fn add(&mut self, o: Local) {
        self.oom_kills += o.oom_kills;
        self.tasks_limit_hits += o.tasks_limit_hits;
    }
}

/// The [`Local`] counts of removed groups, added up by each group that was
/// above them (by its path below the instance directory).
#[derive(Debug, Default)]
struct Removed(Mutex<HashMap<PathBuf, Local>>);

impl Removed {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Local>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A line of `/proc/self/cgroup`: `ID:CONTROLLERS:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub id: u32,
    pub controllers: Vec<String>,
    pub path: String,
}

/// Parses `/proc/self/cgroup`.
pub fn parse_self_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let id = parts.next()?.parse().ok()?;
            let controllers = parts
                .next()?
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            let path = parts.next()?.to_string();
            Some(Membership {
                id,
                controllers,
                path,
            })
        })
        .collect()
}

/// A cgroup mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The cgroup mounted there (a container sees a part of the hierarchy).
    pub root: String,
    pub point: PathBuf,
    /// "cgroup" or "cgroup2".
    pub fstype: String,
    /// The super options: for v1, the controllers (and `name=...`).
    pub options: Vec<String>,
}

/// The cgroup mounts listed in `/proc/self/mountinfo`.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            // ID PARENT MAJ:MIN ROOT POINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let fstype = *right.first()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            Some(Mount {
                root: unescape(left.get(3)?),
                point: PathBuf::from(unescape(left.get(4)?)),
                fstype: fstype.to_string(),
                options: right
                    .get(2)
                    .map(|o| o.split(',').map(str::to_string).collect())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where berth's own cgroup of a hierarchy is: the mount point joined with
/// the path below the mount's root (None when berth's cgroup is outside
/// what is mounted).
fn own_dir(mount: &Mount, own: &str) -> Option<PathBuf> {
    let rel = if mount.root == "/" {
        own.trim_start_matches('/')
    } else {
        let rest = own.strip_prefix(mount.root.as_str())?;
        if !rest.is_empty() && !rest.starts_with('/') {
            return None;
        }
        rest.trim_start_matches('/')
    };
    Some(if rel.is_empty() {
        mount.point.clone()
    } else {
        mount.point.join(rel)
    })
}

/// What the host offers, before anything is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// berth's own v2 cgroup, whose `cgroup.controllers` has what berth needs.
    V2 {
        own: PathBuf,
    },
    /// berth's own cgroup in each v1 hierarchy berth uses.
    V1 {
        hier: Vec<(Vec<String>, PathBuf)>,
    },
    None {
        why: String,
    },
}

/// Chooses the backend from `/proc/self/cgroup` and `/proc/self/mountinfo`;
/// `controllers` reads a v2 cgroup's `cgroup.controllers`.
pub fn find(
    self_cgroup: &str,
    mountinfo: &str,
    controllers: impl Fn(&Path) -> Option<String>,
) -> Found {
    let member = parse_self_cgroup(self_cgroup);
    let mounts = parse_mountinfo(mountinfo);
    let mut why = Vec::new();

    // v2: the unified hierarchy, with every needed controller available.
    let unified = member
        .iter()
        .find(|m| m.id == 0 && m.controllers.is_empty());
    let v2_mount = mounts.iter().find(|m| m.fstype == "cgroup2");
    match (unified, v2_mount) {
        (Some(m), Some(mount)) => match own_dir(mount, &m.path) {
            Some(own) => {
                let have = controllers(&own).unwrap_or_default();
                let have: Vec<&str> = have.split_whitespace().collect();
                let missing: Vec<&str> = NEEDED
                    .iter()
                    .copied()
                    .filter(|c| !have.contains(c))
                    .collect();
                if missing.is_empty() {
                    return Found::V2 { own };
                }
                why.push(format!(
                    "v2 at {} lacks {}",
                    own.display(),
                    missing.join(", ")
                ));
            }
            None => why.push("berth's v2 cgroup is not under the cgroup2 mount".into()),
        },
        _ => why.push("no cgroup2 mount".into()),
    }

    // v1: each needed controller mounted in a hierarchy of its own (or
    // shared, as "cpu,cpuacct").
    let mut hier: Vec<(Vec<String>, PathBuf)> = Vec::new();
    let mut missing = Vec::new();
    for c in NEEDED.iter().chain(OPTIONAL.iter()) {
        let found = mounts
            .iter()
            .filter(|m| m.fstype == "cgroup" && m.options.iter().any(|o| o == c))
            .find_map(|mount| {
                let own = member
                    .iter()
                    .find(|m| m.controllers.iter().any(|x| x == c))?;
                Some((mount, own_dir(mount, &own.path)?))
            });
        match found {
            Some((_, dir)) => match hier.iter_mut().find(|(_, d)| *d == dir) {
                Some((cs, _)) => cs.push(c.to_string()),
                None => hier.push((vec![c.to_string()], dir)),
            },
            None if NEEDED.contains(c) => missing.push(*c),
            None => {}
        }
    }
    if missing.is_empty() {
        return Found::V1 { hier };
    }
    why.push(format!("v1 lacks {}", missing.join(", ")));
    Found::None {
        why: why.join("; "),
    }
}

/// The instance directory's name for a state directory: "berth" for the
/// default, else "berth-" and a stable hash of the path (FNV-1a, 32 bits).
pub fn instance_name(state_dir: &Path) -> String {
    if state_dir == Path::new("/var/lib/berth") {
        return "berth".into();
    }
    let mut h: u32 = 0x811c_9dc5;
    for b in state_dir.as_os_str().as_encoded_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("berth-{h:08x}")
}

/// A tenant's directory name.
fn tenant_dir(tenant: &str) -> String {
    format!("{tenant}.tenant")
}

/// An app's directory name.
fn app_dir(app: &str) -> String {
    format!("{app}.app")
}

impl Cgroups {
    /// Cgroups that berth does not use (berth runs unprivileged, or a test).
    pub fn none(why: &str) -> Cgroups {
        Cgroups {
            kind: Kind::None,
            hier: Vec::new(),
            about: why.to_string(),
            removed: Arc::default(),
            applied: Arc::default(),
        }
    }

    /// Finds the backend and prepares berth's instance directory: on v2,
    /// moves berth into its `supervisor` leaf and enables the controllers.
    /// Anything that fails makes it `none`, with the reason.
    pub fn detect(instance: &str) -> Cgroups {
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
        let found = find(
            &read("/proc/self/cgroup"),
            &read("/proc/self/mountinfo"),
            |dir| fs::read_to_string(dir.join("cgroup.controllers")).ok(),
        );
        match found {
            Found::V2 { own } => match prepare_v2(&own, instance) {
                Ok(dir) => Cgroups {
                    kind: Kind::V2,
                    about: format!("v2 at {}", dir.display()),
                    hier: vec![Hierarchy {
                        controllers: NEEDED.iter().map(|c| c.to_string()).collect(),
                        dir,
                    }],
                    removed: Arc::default(),
                    applied: Arc::default(),
                },
                Err(e) => Cgroups::none(&format!("v2 at {}: {e}", own.display())),
            },
            Found::V1 { hier } => {
                let mut out = Vec::new();
                for (controllers, own) in hier {
                    let dir = own.join(instance);
                    if let Err(e) = make_private_dir(&dir) {
                        return Cgroups::none(&format!("v1: {}: {e}", dir.display()));
                    }
                    out.push(Hierarchy { controllers, dir });
                }
                let about = format!(
                    "v1 ({})",
                    out.iter()
                        .map(|h| format!("{} at {}", h.controllers.join(","), h.dir.display()))
                        .collect::<Vec<_>>()
                        .join("; ")
                );
                Cgroups {
                    kind: Kind::V1,
                    hier: out,
                    about,
                    removed: Arc::default(),
                    applied: Arc::default(),
                }
            }
            Found::None { why } => Cgroups::none(&why),
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// What was found, for the start-up line.
    pub fn about(&self) -> &str {
        &self.about
    }

    fn active(&self) -> bool {
        self.kind != Kind::None
    }

    /// The directory of `rel` in the hierarchy that has controller `c`.
    fn dir_of(&self, c: &str, rel: &Path) -> Option<PathBuf> {
        self.hier.iter().find(|h| h.has(c)).map(|h| h.dir.join(rel))
    }

    fn rel_tenant(tenant: &str) -> PathBuf {
        PathBuf::from(tenant_dir(tenant))
    }

    /// Kills and removes whatever is under the instance directory: the
    /// tenants of a berth that did not stop cleanly (its apps outlived it).
    pub fn sweep(&self) {
        for h in &self.hier {
            let Ok(entries) = fs::read_dir(&h.dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let leftover = Group::at(self, &PathBuf::from(e.file_name()));
                    let n = leftover.kill_all();
                    if n > 0 {
                        warn!(
                            "cgroup {}: killed {n} processes left by an earlier run",
                            e.path().display()
                        );
                    }
                    leftover.remove();
                }
            }
        }
    }

    /// Creates (or updates) a tenant's group with its limits.
    pub fn set_tenant(&self, tenant: &str, limits: &Limits) -> io::Result<()> {
        if !self.active() {
            return Ok(());
        }
        let rel = Cgroups::rel_tenant(tenant);
        let applied = |limits: &Limits| {
            self.applied
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(tenant)
                .is_some_and(|l| l == limits)
        };
        // (One hierarchy looked at: berth makes and removes them together.)
        if applied(limits) && self.hier.first().is_some_and(|h| h.dir.join(&rel).is_dir()) {
            return Ok(());
        }
        for h in &self.hier {
            make_dir(&h.dir.join(&rel))?;
        }
        // Each limit on its own: one that cannot be applied (memory below
        // what the tenant holds now) must not keep the others from holding.
        let failed = std::cell::RefCell::new(Vec::<String>::new());
        let write = |c: &str, file: &str, value: &str| -> bool {
            let Some(dir) = self.dir_of(c, &rel) else {
                return true;
            };
            let path = dir.join(file);
            match fs::write(&path, value) {
                Ok(()) => true,
                Err(e) => {
                    failed.borrow_mut().push(format!("{}: {e}", path.display()));
                    false
                }
            }
        };
        match self.kind {
            Kind::V2 => {
                let v2 = self.hier[0].dir.join(&rel);
                enable_controllers(&v2)?;
                let max = |v: Option<u64>| v.map_or("max".to_string(), |v| v.to_string());
                write("memory", "memory.max", &max(limits.memory));
                // Swap held to the same limit: none beyond it (where the
                // kernel has swap accounting).
                if v2.join("memory.swap.max").exists() {
                    write("memory", "memory.swap.max", "0");
                }
                write("pids", "pids.max", &max(limits.tasks.map(u64::from)));
                let cpu = match limits.cpu_millis {
                    Some(m) => format!("{} {CPU_PERIOD_US}", u64::from(m) * CPU_PERIOD_US / 1000),
                    None => format!("max {CPU_PERIOD_US}"),
                };
                write("cpu", "cpu.max", &cpu);
            }
            Kind::V1 => {
                let mem = self.dir_of("memory", &rel).expect("v1 has memory");
                let has_memsw = mem.join("memory.memsw.limit_in_bytes").exists();
                let limit = limits.memory.map_or(-1i64, |v| v as i64).to_string();
                // memsw must stay >= the limit: lowering, the limit goes
                // first; raising, memsw does. Tried in both orders, quietly
                // first, so that one of them is valid whichever way it goes.
                let quiet = |file: &str| fs::write(mem.join(file), &limit).is_ok();
                let mut done = quiet("memory.limit_in_bytes");
                if has_memsw {
                    done &= quiet("memory.memsw.limit_in_bytes");
                }
                if !done {
                    if has_memsw {
                        quiet("memory.memsw.limit_in_bytes");
                    }
                    if !write("memory", "memory.limit_in_bytes", &limit) {
                        failed.borrow_mut().push(format!(
                            "memory in use is above the new limit ({}); tried again every second",
                            limits
                                .memory
                                .map_or_else(|| "unlimited".into(), crate::config::show_size)
                        ));
                    }
                    if has_memsw {
                        write("memory", "memory.memsw.limit_in_bytes", &limit);
                    }
                }
                let tasks = limits.tasks.map_or("max".to_string(), |v| v.to_string());
                write("pids", "pids.max", &tasks);
                write("cpu", "cpu.cfs_period_us", &CPU_PERIOD_US.to_string());
                let quota = limits
                    .cpu_millis
                    .map_or(-1i64, |m| (u64::from(m) * CPU_PERIOD_US / 1000) as i64);
                write("cpu", "cpu.cfs_quota_us", &quota.to_string());
            }
            Kind::None => {}
        }
        let failed = failed.into_inner();
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        if failed.is_empty() {
            applied.insert(tenant.to_string(), *limits);
            Ok(())
        } else {
            applied.remove(tenant);
            Err(io::Error::other(failed.join("; ")))
        }
    }

    /// Kills everything of a tenant no longer configured and removes its group.
    pub fn drop_tenant(&self, tenant: &str) {
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(tenant);
        if self.active() {
            let g = Group::at(self, &Cgroups::rel_tenant(tenant));
            g.kill_all();
            g.remove();
        }
    }

    /// The tenants whose groups exist (to drop those a reload removed).
    pub fn tenants(&self) -> Vec<String> {
        let Some(h) = self.hier.first() else {
            return Vec::new();
        };
        fs::read_dir(&h.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()?
                            .strip_suffix(".tenant")
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Creates the leaf `leaf` of app `app` of `tenant` (whose group exists).
    /// None when cgroups are off.
    pub fn leaf(&self, tenant: &str, app: &str, leaf: &str) -> io::Result<Option<Group>> {
        if !self.active() {
            return Ok(None);
        }
        let app_rel = Cgroups::rel_tenant(tenant).join(app_dir(app));
        let rel = app_rel.join(leaf);
        for h in &self.hier {
            let app = h.dir.join(&app_rel);
            make_dir(&app)?;
            // v2: the leaves get the controllers' files too (memory.events
            // says which process the OOM killer chose); the app's group
            // holds no process, so it may enable them.
            if self.kind == Kind::V2 {
                enable_controllers(&app)?;
            }
            make_dir(&h.dir.join(&rel))?;
        }
        Ok(Some(Group::at(self, &rel)))
    }

    /// The group of one app (all its processes).
    pub fn app(&self, tenant: &str, app: &str) -> Option<Group> {
        self.active()
            .then(|| Group::at(self, &Cgroups::rel_tenant(tenant).join(app_dir(app))))
    }

    /// What a tenant's group counts: limit events and use now.
    pub fn tenant_stats(&self, tenant: &str) -> Option<Stats> {
        self.tenant(tenant).map(|g| g.stats())
    }

    /// A tenant's group (None when cgroups are off).
    pub fn tenant(&self, tenant: &str) -> Option<Group> {
        self.active()
            .then(|| Group::at(self, &Cgroups::rel_tenant(tenant)))
    }

    /// At a clean stop: kills whatever is left and removes the instance
    /// directory.
    pub fn shutdown(&self) {
        if !self.active() {
            return;
        }
        self.sweep();
        for h in &self.hier {
            let _ = fs::remove_dir(&h.dir);
        }
    }
}

/// The leaf berth's own processes live in, in berth's v2 cgroup.
const LEAF: &str = "supervisor";

/// Moves berth into `own/supervisor`, enables the controllers for the
/// children of `own`, and makes `own/INSTANCE` with them enabled too.
fn prepare_v2(own: &Path, instance: &str) -> io::Result<PathBuf> {
    // Started from the leaf of an earlier berth (a wrapper that one moved
    // there starts it again): that one's cgroup is ours, or our tree would
    // nest in the leaf and what a crashed berth left would never be swept.
    // (That the leaf has the controllers means its parent enables them.)
    let own = match own.parent() {
        Some(parent) if own.file_name().is_some_and(|n| n == LEAF) => parent,
        _ => own,
    };
    let leaf = own.join(LEAF);
    make_dir(&leaf)?;
    let procs = leaf.join("cgroup.procs");
    fs::write(&procs, "0")
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", procs.display())))?;
    // A cgroup other than the root may not hold processes and enable
    // controllers for its children: whatever else is in ours (a service's
    // wrapper shell) goes to the leaf too, and again if it forked meanwhile.
    // The root may, and its processes (init, the rest of the machine) stay.
    let mut moves = 0;
    loop {
        match enable_controllers(own) {
            Err(e) if e.kind() == io::ErrorKind::ResourceBusy && moves < 5 => {
                moves += 1;
                for pid in fs::read_to_string(own.join("cgroup.procs"))?.split_whitespace() {
                    // A process that exited meanwhile is no error.
                    let _ = fs::write(&procs, pid);
                }
            }
            r => break r?,
        }
    }
    let dir = own.join(instance);
    make_private_dir(&dir)?;
    enable_controllers(&dir)?;
    Ok(dir)
}

/// The instance directory: made if missing, and 0700, so that no tenant
/// reads another's figures (memory, CPU, its processes' pids: a side
/// channel on its traffic, and the meter's sampling times) through it.
/// Children join their leaf through descriptors opened before they drop
/// privileges, so they need no way in.
fn make_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    make_dir(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))
}

/// Enables memory, pids and cpu for the children of a v2 cgroup.
fn enable_controllers(dir: &Path) -> io::Result<()> {
    let path = dir.join("cgroup.subtree_control");
    fs::write(&path, "+memory +pids +cpu")
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Creates `dir` if missing (its parent must exist).
fn make_dir(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display())))
        }
        _ => Ok(()),
    }
}

/// One cgroup in every hierarchy berth uses: a tenant, an app, or a leaf.
#[derive(Debug, Clone)]
pub struct Group {
    kind: Kind,
    /// Its directory in each hierarchy.
    dirs: Vec<PathBuf>,
    /// Its directory in a v1 hierarchy of `cpu` without `cpuacct`.
    cpu_only: Option<PathBuf>,
    /// Its directory in each hierarchy with the named controller.
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
    cpu: Option<PathBuf>,
    cpuacct: Option<PathBuf>,
    freezer: Option<PathBuf>,
    /// Its path below the instance directory.
    rel: PathBuf,
    /// `/INSTANCE/REL`: how `/proc/PID/cgroup` names it (after berth's own
    /// cgroup), to tell its members.
    marker: String,
    removed: Arc<Removed>,
}

/// Limit events and use of a group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes in use, all of it (v2 `memory.current`, v1 `usage_in_bytes`).
    pub memory: u64,
    /// Less the inactive file cache: the working set.
    pub working_set: u64,
    /// Processes and threads.
    pub tasks: u64,
    /// CPU used since the group was made, microseconds.
    pub cpu_usec: u64,
    /// Time the group's CPU quota held it back, microseconds.
    pub throttled_usec: u64,
    /// Processes the OOM killer ended in the group and the groups below it
    /// (those removed too).
    pub oom_kills: u64,
    /// Times the group reached its memory limit.
    pub memory_events: u64,
    /// Forks refused at `pids.max` in the group and below (those removed
    /// too).
    pub tasks_limit_hits: u64,
}

impl Group {
    fn at(cg: &Cgroups, rel: &Path) -> Group {
        Group {
            kind: cg.kind,
            dirs: cg.hier.iter().map(|h| h.dir.join(rel)).collect(),
            memory: cg.dir_of("memory", rel),
            pids: cg.dir_of("pids", rel),
            cpu: cg.dir_of("cpu", rel),
            cpu_only: cg
                .hier
                .iter()
                .find(|h| cg.kind == Kind::V1 && h.has("cpu") && !h.has("cpuacct"))
                .map(|h| h.dir.join(rel)),
            cpuacct: cg.dir_of("cpuacct", rel),
            freezer: cg.dir_of("freezer", rel),
            rel: rel.to_path_buf(),
            marker: format!(
                "/{}/{}",
                cg.hier
                    .first()
                    .and_then(|h| h.dir.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                rel.display()
            ),
            removed: cg.removed.clone(),
        }
    }

    /// Its `cgroup.procs` files, open for writing: a child writes "0" to
    /// each between fork and exec to join the group.
    ///
    /// `cpu`: whether the process joins the `cpu` controller's group too.
    /// Being in a cpu cgroup at all costs a fifth of the throughput of a
    /// PHP hello-world here (bench/limits.sh): on v1 a tenant without a
    /// `cpu` limit stays out of it (its CPU time is counted by `cpuacct`,
    /// unless that shares the hierarchy). On v2 the controller is the
    /// tenant's whatever this says.
    pub fn procs_files(&self, cpu: bool) -> io::Result<Vec<OwnedFd>> {
        self.dirs
            .iter()
            .filter(|d| cpu || self.cpu_only.as_ref() != Some(*d))
            .map(|d| {
                let path = d.join("cgroup.procs");
                fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
            })
            .collect()
    }

    /// Whether the group's directory exists.
    pub fn exists(&self) -> bool {
        self.dirs.first().is_some_and(|d| d.is_dir())
    }

    /// The processes in the group and every group below it.
    pub fn pids(&self) -> Vec<i32> {
        let mut out = Vec::new();
        if let Some(d) = self.dirs.first() {
            collect_pids(d, &mut out);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Kills every process in the group and below, and waits (a bounded
    /// time) until none is left. Returns how many it found at first.
    pub fn kill_all(&self) -> usize {
        let first = self.pids().len();
        if first == 0 {
            return 0;
        }
        let deadline = Instant::now() + KILL_WAIT;
        let kill_file = self
            .dirs
            .first()
            .map(|d| d.join("cgroup.kill"))
            .filter(|p| self.kind == Kind::V2 && p.exists());
        let by_kernel = kill_file.is_some();
        if let Some(kill) = kill_file {
            // v2 with cgroup.kill: the kernel kills the subtree, new forks included.
            let _ = fs::write(kill, "1");
        }
        // Otherwise pass after pass: frozen (where there is a freezer),
        // nothing forks while we kill, and a thawed process receives its
        // SIGKILL at once; without one a fork may race a pass.
        loop {
            if !by_kernel {
                self.freeze(true);
                for pid in self.pids() {
                    self.kill_member(pid);
                }
                // (Thawed even when the freeze was not confirmed.)
                self.freeze(false);
            }
            let left = self.pids();
            if left.is_empty() || Instant::now() >= deadline {
                if !left.is_empty() {
                    warn!(
                        "cgroup {}: {} processes still there after SIGKILL",
                        self.dirs[0].display(),
                        left.len()
                    );
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        first
    }

    /// SIGKILL to `pid`, read from the group's `cgroup.procs`, if it is
    /// still a member: through a pidfd opened first, so that a number
    /// reused by another process (of another tenant, or root's) after the
    /// read is never signalled.
    fn kill_member(&self, pid: i32) {
        use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
        let Some(p) = Pid::from_raw(pid) else {
            return;
        };
        let Ok(fd) = pidfd_open(p, PidfdFlags::empty()) else {
            return;
        };
        let Ok(cgroups) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            return;
        };
        let below = format!("{}/", self.marker);
        let member = cgroups.lines().any(|l| {
            let path = l.splitn(3, ':').nth(2).unwrap_or("");
            path.ends_with(&self.marker) || path.contains(&below)
        });
        if member {
            let _ = pidfd_send_signal(&fd, Signal::KILL);
        }
    }

    /// Freezes (or thaws) the group; whether it is frozen (thawed) as the
    /// kernel says, false without a freezer.
    fn freeze(&self, on: bool) -> bool {
        match self.kind {
            Kind::V2 => {
                let Some(d) = self.dirs.first() else {
                    return false;
                };
                let f = d.join("cgroup.freeze");
                if fs::write(&f, if on { "1" } else { "0" }).is_err() {
                    return false;
                }
                // Frozen only once the kernel says so.
                !on || wait_for(|| {
                    fs::read_to_string(d.join("cgroup.events"))
                        .is_ok_and(|e| e.lines().any(|l| l == "frozen 1"))
                })
            }
            Kind::V1 => {
                let Some(d) = &self.freezer else {
                    return false;
                };
                let state = d.join("freezer.state");
                if fs::write(&state, if on { "FROZEN" } else { "THAWED" }).is_err() {
                    return false;
                }
                !on || wait_for(|| fs::read_to_string(&state).is_ok_and(|s| s.trim() == "FROZEN"))
            }
            Kind::None => false,
        }
    }

    /// Removes the group and the groups below it (deepest first); a group
    /// that still has processes stays. What a removed group counted locally
    /// is kept for the groups above it.
    pub fn remove(&self) -> bool {
        let up = self.pids_events_up_the_tree();
        // Held throughout: a reading of the counts finds a group either in
        // the tree or in `removed`, never in both or neither.
        let mut removed = self.removed.lock();
        let mut counts: Vec<(PathBuf, Local)> = self
            .subtree()
            .into_iter()
            .map(|sub| {
                let c = self.local(&sub, up);
                (sub, c)
            })
            .collect();
        let mut ok = true;
        for d in &self.dirs {
            ok &= remove_tree(d);
        }
        // Deepest first: a group's own entry goes after its children added
        // to it.
        counts.reverse();
        for (sub, c) in counts {
            if self.dirs.first().is_none_or(|d| d.join(&sub).exists()) {
                continue;
            }
            let rel = self.rel.join(&sub);
            removed.retain(|k, _| !k.starts_with(&rel));
            for above in rel.ancestors().skip(1) {
                if !above.as_os_str().is_empty() {
                    removed.entry(above.to_path_buf()).or_default().add(c);
                }
            }
        }
        ok
    }

    /// The group ("") and the groups below it, as paths relative to it,
    /// parents first.
    fn subtree(&self) -> Vec<PathBuf> {
        let mut out = vec![PathBuf::new()];
        let Some(d) = self.dirs.first() else {
            return out;
        };
        let mut i = 0;
        while i < out.len() {
            if let Ok(rd) = fs::read_dir(d.join(&out[i])) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        let sub = out[i].join(e.file_name());
                        out.push(sub);
                    }
                }
            }
            i += 1;
        }
        out
    }

    /// Whether the kernel counts `pids.max` refusals in the group at its
    /// limit and above (v2 from Linux 6.13), not in the forking process's.
    fn pids_events_up_the_tree(&self) -> bool {
        self.kind == Kind::V2
            && self
                .pids
                .as_ref()
                .is_some_and(|d| d.join("pids.events.local").exists())
    }

    /// The [`Local`] counts of the group `sub` below this one ("": itself).
    fn local(&self, sub: &Path, pids_up_the_tree: bool) -> Local {
        let key = |d: &Option<PathBuf>, file: &str, k: &str| -> u64 {
            d.as_ref().map_or(0, |d| {
                flat_key(
                    &fs::read_to_string(d.join(sub).join(file)).unwrap_or_default(),
                    k,
                )
            })
        };
        Local {
            oom_kills: match self.kind {
                Kind::V1 => key(&self.memory, "memory.oom_control", "oom_kill"),
                _ => 0,
            },
            tasks_limit_hits: match self.kind {
                Kind::None => 0,
                _ if pids_up_the_tree => 0,
                _ => key(&self.pids, "pids.events", "max"),
            },
        }
    }

    /// The [`Local`] counts of the group and every group below it, those
    /// removed included.
    fn local_sum(&self) -> Local {
        let up = self.pids_events_up_the_tree();
        let removed = self.removed.lock();
        let mut sum = removed.get(&self.rel).copied().unwrap_or_default();
        for sub in self.subtree() {
            sum.add(self.local(&sub, up));
        }
        sum
    }

    /// The file of the group's peak memory: v1's `memory.max_usage_in_bytes`
    /// and v2's `memory.peak`, both of which a write resets (v2: for reads
    /// through the same open file, from Linux 6.12 on).
    pub fn peak_file(&self) -> Option<PathBuf> {
        let name = match self.kind {
            Kind::V2 => "memory.peak",
            Kind::V1 => "memory.max_usage_in_bytes",
            Kind::None => return None,
        };
        Some(self.memory.as_ref()?.join(name))
    }

    /// Whether the group has as many tasks as its `pids.max` allows. A
    /// process moved into a cgroup is not checked against `pids.max` (only
    /// forks are), so berth checks before it starts one.
    pub fn at_tasks_limit(&self) -> bool {
        let read = |f: &str| {
            fs::read_to_string(self.pids.as_ref()?.join(f))
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        };
        matches!((read("pids.current"), read("pids.max")), (Some(now), Some(max)) if now >= max)
    }

    /// Limit events and use.
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        let read = |d: &Option<PathBuf>, f: &str| -> Option<String> {
            fs::read_to_string(d.as_ref()?.join(f)).ok()
        };
        let num =
            |text: Option<String>| -> u64 { text.and_then(|t| t.trim().parse().ok()).unwrap_or(0) };
        let key = |text: &Option<String>, k: &str| text.as_deref().map_or(0, |t| flat_key(t, k));
        match self.kind {
            Kind::V2 => {
                s.memory = num(read(&self.memory, "memory.current"));
                let stat = read(&self.memory, "memory.stat");
                s.working_set = s.memory.saturating_sub(key(&stat, "inactive_file"));
                // memory.events counts up the tree.
                let events = read(&self.memory, "memory.events");
                s.oom_kills = key(&events, "oom_kill");
                s.memory_events = key(&events, "max");
                s.tasks = num(read(&self.pids, "pids.current"));
                s.tasks_limit_hits = if self.pids_events_up_the_tree() {
                    key(&read(&self.pids, "pids.events"), "max")
                } else {
                    self.local_sum().tasks_limit_hits
                };
                let cpu = read(&self.cpu, "cpu.stat");
                s.cpu_usec = key(&cpu, "usage_usec");
                s.throttled_usec = key(&cpu, "throttled_usec");
            }
            Kind::V1 => {
                s.memory = num(read(&self.memory, "memory.usage_in_bytes"));
                let stat = read(&self.memory, "memory.stat");
                s.working_set = s.memory.saturating_sub(key(&stat, "total_inactive_file"));
                let local = self.local_sum();
                s.oom_kills = local.oom_kills;
                // With swap accounting, memsw (held to the same limit) is
                // charged first and is the one that fails.
                s.memory_events = num(read(&self.memory, "memory.failcnt"))
                    + num(read(&self.memory, "memory.memsw.failcnt"));
                s.tasks = num(read(&self.pids, "pids.current"));
                s.tasks_limit_hits = local.tasks_limit_hits;
                s.cpu_usec = num(read(&self.cpuacct, "cpuacct.usage")) / 1000;
                s.throttled_usec = key(&read(&self.cpu, "cpu.stat"), "throttled_time") / 1000;
            }
            Kind::None => {}
        }
        s
    }
}

/// The number after `key` on its line of a flat-keyed file (`memory.events`).
fn flat_key(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// Polls `done` for up to a second.
/// Polls `done` for up to a second; whether it came true.
fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&e.path(), out);
            }
        }
    }
}

/// rmdir of `dir` and the directories below it, deepest first.
fn remove_tree(dir: &Path) -> bool {
    let mut ok = true;
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                ok &= remove_tree(&e.path());
            }
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => ok,
        Err(e) if e.kind() == io::ErrorKind::NotFound => ok,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine: controllers on v1, berth's memory cgroup nested, and a
    /// v2 mount with none.
    const V1_SELF: &str = "9:name=systemd:/\n8:pids:/\n6:freezer:/\n4:memory:/process_api/5f63\n2:cpuacct:/\n1:cpu:/\n0::/\n";
    const V1_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn this_machines_layout_is_v1_with_the_memory_cgroup_nested() {
        let found = find(V1_SELF, V1_MOUNTS, |_| Some(String::new()));
        let Found::V1 { hier } = found else {
            panic!("{found:?}");
        };
        let want: Vec<(Vec<String>, PathBuf)> = vec![
            (
                vec!["memory".into()],
                "/sys/fs/cgroup/memory/process_api/5f63".into(),
            ),
            (vec!["pids".into()], "/sys/fs/cgroup/pids".into()),
            (vec!["cpu".into()], "/sys/fs/cgroup/cpu".into()),
            (vec!["cpuacct".into()], "/sys/fs/cgroup/cpuacct".into()),
            (vec!["freezer".into()], "/sys/fs/cgroup/freezer".into()),
        ];
        assert_eq!(hier, want);
    }

    #[test]
    fn v2_is_chosen_only_when_its_controllers_are_available() {
        let self_cg = "0::/system.slice/berth.service\n";
        let mounts = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let found = find(self_cg, mounts, |dir| {
            assert_eq!(dir, Path::new("/sys/fs/cgroup/system.slice/berth.service"));
            Some("cpuset cpu io memory hugetlb pids rdma misc\n".into())
        });
        assert_eq!(
            found,
            Found::V2 {
                own: "/sys/fs/cgroup/system.slice/berth.service".into()
            }
        );
        // Not delegated (no pids, no memory): neither v2 nor v1.
        let found = find(self_cg, mounts, |_| Some("cpu io\n".into()));
        let Found::None { why } = found else {
            panic!("{found:?}");
        };
        assert_eq!(
            why,
            "v2 at /sys/fs/cgroup/system.slice/berth.service lacks memory, pids; v1 lacks memory, pids, cpu"
        );
    }

    #[test]
    fn a_v1_hierarchy_shared_by_cpu_and_cpuacct_is_used_once() {
        let self_cg = "5:cpu,cpuacct:/berth\n4:memory:/berth\n3:pids:/berth\n";
        let mounts = "\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";
        let Found::V1 { hier } = find(self_cg, mounts, |_| None) else {
            panic!()
        };
        assert_eq!(hier.len(), 3);
        assert!(hier.contains(&(
            vec!["cpu".into(), "cpuacct".into()],
            "/sys/fs/cgroup/cpu,cpuacct/berth".into()
        )));
    }

    #[test]
    fn a_container_sees_its_cgroup_at_the_mounts_root() {
        // In a container the mount's root is the container's own cgroup.
        let self_cg = "0::/docker/abc/sub\n";
        let mounts = "30 23 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let found = find(self_cg, mounts, |d| {
            (d == Path::new("/sys/fs/cgroup/sub")).then(|| "memory pids cpu".into())
        });
        assert_eq!(
            found,
            Found::V2 {
                own: "/sys/fs/cgroup/sub".into()
            }
        );
        // A cgroup outside the mounted part (a sibling with a common
        // prefix) is not taken for it.
        let m = &parse_mountinfo(mounts)[0];
        assert_eq!(own_dir(m, "/docker/abcd"), None);
    }

    #[test]
    fn mountinfo_escapes_are_read() {
        let m = parse_mountinfo("1 2 0:3 / /sys/fs/my\\040cgroup rw - cgroup2 none rw\n");
        assert_eq!(m[0].point, PathBuf::from("/sys/fs/my cgroup"));
    }

    #[test]
    fn instance_names_are_stable_and_distinct_per_state_dir() {
        assert_eq!(instance_name(Path::new("/var/lib/berth")), "berth");
        let a = instance_name(Path::new("/tmp/a/state"));
        assert_eq!(a, instance_name(Path::new("/tmp/a/state")));
        assert_ne!(a, instance_name(Path::new("/tmp/b/state")));
        assert!(
            a.starts_with("berth-") && a.len() == "berth-".len() + 8,
            "{a}"
        );
    }
}
