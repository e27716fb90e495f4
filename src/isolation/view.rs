//! What an app sees of the machine: the mounts its init makes, worked out by
//! the supervisor from the configuration (pure functions, tested here), and
//! the plan the supervisor hands the init ([`Plan`]).
//!
//! The view is the host's own tree, made read-only, with:
//! - an empty tmpfs over the parent of every other tenant's home and site
//!   root (`/home`, `/var/www`), or over the path itself when the parent is a
//!   system directory (`/srv/bob` under `/srv`) or inside this tenant's own
//!   tree; over `state_dir`, `log_dir` and berth's configuration (its files,
//!   keys and password files: their directory, or the files themselves when
//!   they sit in a system directory such as `/etc`);
//! - this tenant's home and site roots, and the admin's `bind` and
//!   `read_only` paths, bound back at their own place (captured before
//!   anything is hidden, so a path under a hidden parent comes back);
//! - a private directory of the tenant's over every directory that others
//!   can write (`/tmp`, `/var/tmp`, `/dev/shm`, and what [`shared_writable`]
//!   finds, such as `/run/lock` or `/var/lib/php/sessions`), kept in
//!   `state_dir/private/TENANT/`, so sessions survive a restart and nothing
//!   another user (the front end included) wrote there can be read, or run,
//!   by the app;
//! - a fresh `/proc` for the app's pid namespace.
//!
//! Mounts are applied shallowest first (a hide before a bind at the same
//! depth), so a path bound back inside a hidden parent reappears, and
//! another tenant's path inside this tenant's tree is hidden on top of it.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
#[cfg(test)]
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One mount of the view, in the order the init makes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mount {
    /// An empty read-only tmpfs over a directory, or `/dev/null` over a
    /// file. Skipped when the path does not exist.
    Hide(PathBuf),
    /// The path bound back at its own place (captured before any hide).
    /// A missing path is skipped unless `required`.
    Show {
        path: PathBuf,
        read_only: bool,
        required: bool,
    },
    /// The tenant's private directory `source` over `target` (skipped when
    /// `target` does not exist on the host).
    Private { source: PathBuf, target: PathBuf },
}

impl Mount {
    /// Where it is mounted.
    pub fn target(&self) -> &Path {
        match self {
            Mount::Hide(p) => p,
            Mount::Show { path, .. } => path,
            Mount::Private { target, .. } => target,
        }
    }
}

/// Everything the init needs, sent to it as JSON on a sealed memfd: the view
/// and the app's exec. Built by the supervisor from its own validated
/// configuration only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// The uts namespace's host name: the tenant's name.
    pub hostname: String,
    /// A network namespace of its own with loopback only.
    pub network_none: bool,
    /// Unprivileged berth: a user namespace mapping this uid and gid to
    /// themselves (the app runs as the caller).
    pub userns: Option<(u32, u32)>,
    pub mounts: Vec<Mount>,
    /// The file to execve, argv (argv[0] included) and the whole environment
    /// (bytes: values may be any bytes but NUL).
    pub program: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// `LISTEN_PID` is set to the app's own pid (socket activation).
    pub listen_pid: bool,
    pub dir: PathBuf,
    /// Who the app becomes: uid, gid, supplementary groups (None: stays who
    /// the init is, when berth runs unprivileged).
    pub identity: Option<(u32, u32, Vec<u32>)>,
    /// The seccomp filter's `allow` list (None: no filter).
    pub seccomp: Option<Vec<String>>,
    /// The descriptor numbers the app is given (0, 1, 2 included): the init's
    /// own copies go to /dev/null once the app has them, so a pipe's reader
    /// sees end-of-file when the app closes its end.
    pub fds: Vec<i32>,
    /// Descriptors of the app's `cgroup.procs` files: the app joins its
    /// cgroup just before it drops root, and berth's init and the process
    /// above it stay in berth's own (the tenant's CPU limit does not slow
    /// the building of its view while the supervisor waits for it, and the
    /// tenant is not billed for them).
    #[serde(default)]
    pub cgroup_fds: Vec<i32>,
}

/// Directories that are part of the system: never hidden whole (their
/// tenant-owned children are hidden one by one instead): `/` and every
/// top-level directory but `/home`, and the well-known ones below `/usr`,
/// `/var` and `/etc`.
pub fn is_system(p: &Path) -> bool {
    const WELL_KNOWN: &[&str] = &[
        "/usr/local",
        "/usr/share",
        "/usr/lib",
        "/usr/bin",
        "/usr/sbin",
        "/usr/include",
        "/usr/src",
        "/usr/libexec",
        "/var/lib",
        "/var/cache",
        "/var/log",
        "/var/spool",
        "/var/opt",
        "/var/mail",
        "/var/backups",
        "/var/local",
        "/var/run",
        "/var/tmp",
        "/etc/ssl",
        "/etc/default",
        "/etc/alternatives",
    ];
    match depth(p) {
        0 => true,
        1 => p != Path::new("/home"),
        _ => WELL_KNOWN.iter().any(|w| p == Path::new(w)),
    }
}

/// What hides `other` (another tenant's path) without hiding `own`: its
/// parent, so the parent's listing shows nothing of the other tenants,
/// unless that parent is a system directory (then `other` itself). When
/// `other` is inside this tenant's own tree (a discovered tenant's home is
/// the discovery root, which holds every site), binding the tree back would
/// show it again: then the entry of the deepest such own path that leads to
/// it (`root/b.test` for `root/b.test/public`).
fn hide_target(other: &Path, own: &[PathBuf]) -> PathBuf {
    if let Some(inner) = own
        .iter()
        .filter(|o| other.starts_with(o) && other != o.as_path())
        .max_by_key(|o| depth(o))
    {
        let rest = other.strip_prefix(inner).unwrap_or(other);
        return match rest.components().next() {
            Some(first) => inner.join(first),
            None => other.to_path_buf(),
        };
    }
    match other.parent() {
        Some(parent) if !is_system(parent) => parent.to_path_buf(),
        _ => other.to_path_buf(),
    }
}

/// The hides every view starts from, worked out once per configuration:
/// what keeps each of `all` (every tenant's home and site roots) out of
/// sight of a tenant that owns none of them, without those inside another.
/// A tenant's own view adds, on top, the hides for what lies inside its own
/// tree (see [`Inputs::others`]).
pub fn common_hides(all: &[PathBuf]) -> Vec<PathBuf> {
    let set: BTreeSet<PathBuf> = all.iter().map(|p| hide_target(p, &[])).collect();
    set.iter()
        .filter(|h| !h.ancestors().skip(1).any(|a| set.contains(a)))
        .cloned()
        .collect()
}

/// The paths that make one app's view, in the order to mount them.
#[derive(Debug, Clone, Default)]
pub struct Inputs<'a> {
    /// This tenant's home and site roots.
    pub own: Vec<PathBuf>,
    /// Other tenants' homes and site roots: all of them, or (what the
    /// supervisor gives, with [`common_hides`] in `hidden`) those inside this
    /// tenant's own tree.
    pub others: Vec<PathBuf>,
    /// Directories hidden themselves: `state_dir`, `log_dir`, the
    /// configuration's directories (and [`common_hides`]).
    pub hidden: Vec<PathBuf>,
    /// Files hidden one by one (configuration, keys, password files in a
    /// system directory).
    pub hidden_files: Vec<PathBuf>,
    /// The admin's `bind` and `read_only`.
    pub bind: &'a [PathBuf],
    pub read_only: &'a [PathBuf],
    /// (source, target) of the tenant's private directories.
    pub private: Vec<(PathBuf, PathBuf)>,
}

/// The mounts of a view, shallowest first, a hide before anything else at
/// the same depth; duplicates go.
pub fn mounts(i: &Inputs<'_>) -> Vec<Mount> {
    let mut hides: BTreeSet<PathBuf> = BTreeSet::new();
    for o in &i.others {
        if i.own.iter().any(|own| own == o) {
            continue;
        }
        hides.insert(hide_target(o, &i.own));
    }
    for h in i.hidden.iter().chain(&i.hidden_files) {
        if !is_system(h) {
            hides.insert(h.clone());
        }
    }
    // This tenant's own paths are never hidden (their parents may be).
    hides.retain(|h| !i.own.contains(h));
    // A hide inside another is redundant unless one of this tenant's paths
    // lies between them (bound back, it would show the inner one again).
    let redundant = |h: &PathBuf| {
        h.ancestors().skip(1).any(|outer| {
            hides.contains(outer)
                && !i
                    .own
                    .iter()
                    .any(|o| o.starts_with(outer) && h.starts_with(o))
        })
    };
    let kept: Vec<PathBuf> = hides.iter().filter(|h| !redundant(h)).cloned().collect();
    let mut out: Vec<Mount> = kept.iter().cloned().map(Mount::Hide).collect();
    // An own path inside another is already in the view, unless something
    // hidden lies between them. Not binding it again also means a symlink a
    // tenant put there resolves inside the view, not on the host.
    let covered = |p: &PathBuf| {
        i.own.iter().any(|outer| {
            outer != p
                && p.starts_with(outer)
                && !kept
                    .iter()
                    .any(|h| h.starts_with(outer) && h != outer && p.starts_with(h))
        })
    };
    let own: Vec<&PathBuf> = i.own.iter().filter(|p| !covered(p)).collect();
    let mut shown: BTreeSet<&Path> = BTreeSet::new();
    for p in own {
        if shown.insert(p) {
            out.push(Mount::Show {
                path: p.clone(),
                read_only: false,
                required: false,
            });
        }
    }
    for (list, read_only) in [(i.bind, false), (i.read_only, true)] {
        for p in list {
            if shown.insert(p) {
                out.push(Mount::Show {
                    path: p.clone(),
                    read_only,
                    required: true,
                });
            }
        }
    }
    for (source, target) in &i.private {
        // What is hidden and not shown again needs no private copy.
        let hidden = kept.iter().any(|h| target.starts_with(h))
            && !i.own.iter().any(|o| target.starts_with(o));
        if hidden {
            continue;
        }
        out.push(Mount::Private {
            source: source.clone(),
            target: target.clone(),
        });
    }
    out.sort_by_key(|m| {
        (
            depth(m.target()),
            match m {
                Mount::Hide(_) => 0,
                _ => 1,
            },
        )
    });
    out
}

fn depth(p: &Path) -> usize {
    p.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count()
}

/// The name of a private directory for `target`: its path with `/` as `-`
/// and `-` and `%` escaped (`/var/lib/php/sessions` → `var-lib-php-sessions`).
pub fn private_name(target: &Path) -> String {
    let s = target.to_string_lossy();
    let mut out = String::new();
    for (i, part) in s.trim_start_matches('/').split('/').enumerate() {
        if i > 0 {
            out.push('-');
        }
        for ch in part.chars() {
            match ch {
                '-' => out.push_str("%2d"),
                '%' => out.push_str("%25"),
                c => out.push(c),
            }
        }
    }
    out
}

/// Where the host's directories that others may write are looked for, and
/// how deep.
const SCAN: &[&str] = &["/var", "/run", "/dev", "/srv", "/opt", "/etc", "/usr/local"];
const SCAN_DEPTH: usize = 4;
/// At most this many directories are read by one scan.
const SCAN_BUDGET: usize = 5_000;
/// At most this many directories are made private: each is a mount in
/// every view.
pub const PRIVATE_MAX: usize = 64;

/// What [`shared_writable`] found.
#[derive(Debug, Default)]
pub struct Shared {
    pub dirs: Vec<PathBuf>,
    /// More were found than [`PRIVATE_MAX`]: the rest stay as they are.
    pub left: usize,
}

/// Directories of the host that another user may write (others' write bit;
/// the group's, for a group the front end is in; or the front end's own),
/// so that a file planted there could be read or run by an app, or a /tmp
/// race won against it: each becomes private to each tenant. Always `/tmp`,
/// `/var/tmp` and `/dev/shm` (when they exist); then a bounded scan of the
/// system's directories that descends only into root's directories that
/// nobody else may write, and takes only directories owned by root or the
/// front end: every directory it takes is reached through root's alone, so
/// no user can swap one for a symlink. (A directory a tenant owns is its
/// own business, and `/run/user` holds the users' sessions.)
pub fn shared_writable(front: Option<(u32, &[u32])>) -> Shared {
    use std::collections::HashSet;
    let mut taken: HashSet<PathBuf> = HashSet::new();
    let mut out = Shared::default();
    for p in ["/tmp", "/var/tmp", "/dev/shm"] {
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir() && m.uid() == 0) {
            taken.insert(PathBuf::from(p));
            out.dirs.push(PathBuf::from(p));
        }
    }
    let safe = |md: &std::fs::Metadata| md.is_dir() && md.uid() == 0 && md.mode() & 0o022 == 0;
    let mut budget = SCAN_BUDGET;
    let mut stack: Vec<(PathBuf, usize)> = SCAN
        .iter()
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| safe(&m)))
        .map(|p| (PathBuf::from(p), 0))
        .collect();
    while let Some((dir, d)) = stack.pop() {
        if budget == 0 {
            break;
        }
        budget -= 1;
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if taken.contains(&path) || path.starts_with("/run/user") {
                continue;
            }
            let Ok(md) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if !md.is_dir() {
                continue;
            }
            let mode = md.mode();
            let writable = mode & 0o002 != 0
                || front.is_some_and(|(uid, gids)| {
                    (md.uid() == uid && mode & 0o200 != 0)
                        || (gids.contains(&md.gid()) && mode & 0o020 != 0)
                });
            let owner_ok = md.uid() == 0 || front.is_some_and(|(uid, _)| md.uid() == uid);
            if writable && owner_ok {
                if out.dirs.len() < PRIVATE_MAX {
                    taken.insert(path.clone());
                    out.dirs.push(path);
                } else {
                    out.left += 1;
                }
            } else if safe(&md) && d + 1 < SCAN_DEPTH {
                stack.push((path, d + 1));
            }
        }
    }
    out.dirs.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    fn targets(m: &[Mount]) -> Vec<String> {
        m.iter()
            .map(|m| match m {
                Mount::Hide(p) => format!("hide {}", p.display()),
                Mount::Show {
                    path, read_only, ..
                } => format!(
                    "show{} {}",
                    if *read_only { " ro" } else { "" },
                    path.display()
                ),
                Mount::Private { target, .. } => format!("private {}", target.display()),
            })
            .collect()
    }

    #[test]
    fn other_homes_hide_their_parent_and_the_own_home_comes_back() {
        let i = Inputs {
            own: vec![p("/home/alice"), p("/home/alice/public")],
            others: vec![p("/home/bob"), p("/home/bob/public"), p("/var/www/carol")],
            hidden: vec![p("/var/lib/berth"), p("/var/log/berth"), p("/etc/berth")],
            private: vec![(p("/var/lib/berth/private/alice/tmp"), p("/tmp"))],
            ..Default::default()
        };
        assert_eq!(
            targets(&mounts(&i)),
            [
                "hide /home",
                "private /tmp",
                "hide /etc/berth",
                "hide /var/www",
                "show /home/alice",
                "hide /var/lib/berth",
                "hide /var/log/berth",
            ]
        );
    }

    #[test]
    fn an_own_path_below_a_hidden_one_inside_the_home_is_bound_again() {
        // The admin put bob's root inside alice's home, and alice's root
        // inside that.
        let i = Inputs {
            own: vec![p("/home/alice"), p("/home/alice/x/mine")],
            others: vec![p("/home/alice/x")],
            ..Default::default()
        };
        assert_eq!(
            targets(&mounts(&i)),
            [
                "show /home/alice",
                "hide /home/alice/x",
                "show /home/alice/x/mine"
            ]
        );
    }

    #[test]
    fn a_writable_directory_inside_a_hidden_one_gets_no_private_copy() {
        let i = Inputs {
            own: vec![p("/home/alice")],
            hidden: vec![p("/var/lib/berth")],
            private: vec![
                (p("/s/tmp"), p("/tmp")),
                (p("/s/var-lib-berth-tmp"), p("/var/lib/berth/tmp")),
            ],
            ..Default::default()
        };
        assert_eq!(
            targets(&mounts(&i)),
            ["private /tmp", "show /home/alice", "hide /var/lib/berth"]
        );
    }

    #[test]
    fn a_system_parent_is_never_hidden_whole() {
        let i = Inputs {
            own: vec![p("/srv/alice")],
            others: vec![p("/srv/bob"), p("/bob"), p("/usr/local/carol")],
            hidden_files: vec![p("/etc/berth.toml")],
            ..Default::default()
        };
        assert_eq!(
            targets(&mounts(&i)),
            [
                "hide /bob",
                "hide /etc/berth.toml",
                "hide /srv/bob",
                "show /srv/alice",
                "hide /usr/local/carol",
            ]
        );
    }

    #[test]
    fn another_tenants_path_inside_this_tenants_tree_is_hidden_on_top() {
        // A discovered tenant's home is the discovery root, which holds every
        // site: the others' host directories are hidden over it.
        let i = Inputs {
            own: vec![p("/srv/sites"), p("/srv/sites/a.test/public")],
            others: vec![p("/srv/sites/b.test/public"), p("/srv/sites")],
            ..Default::default()
        };
        assert_eq!(
            targets(&mounts(&i)),
            ["show /srv/sites", "hide /srv/sites/b.test"]
        );
    }

    #[test]
    fn admin_binds_come_back_read_only_or_not_and_are_required() {
        let ro = [p("/usr/share/php"), p("/home/shared")];
        let rw = [p("/srv/uploads")];
        let i = Inputs {
            own: vec![p("/home/alice")],
            others: vec![p("/home/bob")],
            bind: &rw,
            read_only: &ro,
            ..Default::default()
        };
        let m = mounts(&i);
        assert_eq!(
            targets(&m),
            [
                "hide /home",
                "show /home/alice",
                "show /srv/uploads",
                "show ro /home/shared",
                "show ro /usr/share/php",
            ]
        );
        assert!(m.iter().all(|m| match m {
            Mount::Show { path, required, .. } => *required == (path != Path::new("/home/alice")),
            _ => true,
        }));
    }

    #[test]
    fn common_hides_and_the_nested_others_make_the_same_view_as_all_others() {
        let all = [
            p("/home/alice"),
            p("/home/alice/public"),
            p("/home/bob"),
            p("/home/bob/public"),
            p("/home/alice/x/carol"),
            p("/var/www/dave"),
            p("/srv/erin"),
        ];
        let alice = [p("/home/alice"), p("/home/alice/public")];
        let others: Vec<PathBuf> = all.iter().filter(|o| !alice.contains(o)).cloned().collect();
        let hidden = vec![p("/var/lib/berth")];
        let whole = mounts(&Inputs {
            own: alice.to_vec(),
            others: others.clone(),
            hidden: hidden.clone(),
            ..Default::default()
        });
        let nested: Vec<PathBuf> = others
            .iter()
            .filter(|o| alice.iter().any(|a| o.starts_with(a)))
            .cloned()
            .collect();
        let mut common = common_hides(&all);
        common.extend(hidden);
        let fast = mounts(&Inputs {
            own: alice.to_vec(),
            others: nested,
            hidden: common,
            ..Default::default()
        });
        assert_eq!(targets(&fast), targets(&whole));
        assert!(
            targets(&whole).contains(&"hide /home/alice/x".to_string()),
            "{whole:?}"
        );
    }

    #[test]
    fn system_directories() {
        for s in [
            "/",
            "/usr",
            "/etc",
            "/var",
            "/srv",
            "/opt",
            "/var/lib",
            "/usr/local",
        ] {
            assert!(is_system(Path::new(s)), "{s}");
        }
        for s in [
            "/home",
            "/var/www",
            "/srv/www",
            "/opt/sites",
            "/home/alice",
            "/etc/berth",
        ] {
            assert!(!is_system(Path::new(s)), "{s}");
        }
    }

    #[test]
    fn private_names_are_unambiguous() {
        assert_eq!(private_name(Path::new("/tmp")), "tmp");
        assert_eq!(
            private_name(Path::new("/var/lib/php/sessions")),
            "var-lib-php-sessions"
        );
        assert_ne!(
            private_name(Path::new("/a-b")),
            private_name(Path::new("/a/b"))
        );
    }

    #[test]
    fn the_scan_finds_world_writable_directories_and_not_below_them() {
        let found = shared_writable(None).dirs;
        assert!(found.contains(&p("/tmp")), "{found:?}");
        for f in &found {
            // (Another test's directories come and go meanwhile.)
            let Ok(md) = std::fs::metadata(f) else {
                continue;
            };
            assert!(
                md.mode() & 0o002 != 0
                    || ["/tmp", "/var/tmp", "/dev/shm"].contains(&f.to_str().unwrap()),
                "{f:?}"
            );
            assert!(
                !found.iter().any(|o| o != f && f.starts_with(o)),
                "{f:?} is below another private directory"
            );
            // Reached through root's directories only, and root's itself.
            assert_eq!(md.uid(), 0, "{f:?}");
            for a in f.ancestors().skip(1) {
                let Ok(m) = std::fs::symlink_metadata(a) else {
                    continue;
                };
                assert!(m.is_dir() && m.uid() == 0, "{a:?} above {f:?}");
            }
        }
    }

    #[test]
    fn a_tenants_writable_directory_is_never_taken_and_never_descended_into() {
        // A tenant's world-writable directory in a place the scan reads (as
        // /run/user/UID/d was): were it a mount target in every view, the
        // tenant could swap it for a symlink and have root follow it.
        let base = PathBuf::from(format!("/run/berth-tscan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let mine = base.join("tenant/d");
        std::fs::create_dir_all(&mine).unwrap();
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::chown(base.join("tenant"), Some(54321), Some(54321)).unwrap();
        std::os::unix::fs::chown(&mine, Some(54321), Some(54321)).unwrap();
        let roots = base.join("roots");
        std::fs::create_dir_all(&roots).unwrap();
        std::fs::set_permissions(&roots, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let found = shared_writable(None).dirs;
        let _ = std::fs::remove_dir_all(&base);
        assert!(
            !found.iter().any(|f| f.starts_with(base.join("tenant"))),
            "{found:?}"
        );
        assert!(found.contains(&roots), "{found:?}");
    }
}
