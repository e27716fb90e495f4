//! `[server] control_socket` and `admin_group`: where `berth ctl` connects,
//! and who besides root acts on every tenant through it (see
//! [`crate::control`]).
//!
//! Read with the rest of `[server]` ([`read`]); what is on disk is checked
//! once the whole file is read ([`check`]), with the same rule the
//! supervisor applies when it creates the socket: its directory is walked
//! like `state_dir`'s, and an entry already at the path must be a socket
//! (a stale one is replaced), never a file, a directory or a symbolic link.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use super::reader::TableReader;
use super::{Problems, Server, resolve_path};

/// Where the control socket goes unless `control_socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/berth/control.sock";

/// The longest path a Unix socket can be bound or reached at (`sun_path`
/// holds 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// `control_socket` and `admin_group` as validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlConfig {
    /// Where the socket is created (None: `"off"`).
    pub socket: Option<PathBuf>,
    /// Whether `control_socket` was written: a berth started by a normal
    /// user creates the default one only as root could (in /run/berth), so
    /// it has none unless the configuration names one.
    pub explicit: bool,
    /// The line of `control_socket` (of `[server]` when it is not set).
    pub line: usize,
    /// Members of this group (its member list, and users whose primary
    /// group it is) act on every tenant.
    pub admin_group: Option<String>,
    /// The line of `admin_group`.
    pub admin_group_line: usize,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: Some(PathBuf::from(DEFAULT_SOCKET)),
            explicit: false,
            line: 1,
            admin_group: None,
            admin_group_line: 1,
        }
    }
}

impl ControlConfig {
    /// The socket this berth serves: none when off, and none by default
    /// when berth does not run as root (it could not create /run/berth).
    pub fn effective(&self, root: bool) -> Option<&Path> {
        match &self.socket {
            Some(path) if root || self.explicit => Some(path),
            _ => None,
        }
    }
}

/// `control_socket` and `admin_group` of `[server]`.
pub(super) fn read(t: &mut TableReader<'_>) -> ControlConfig {
    let walk = t.walk();
    let mut c = ControlConfig {
        line: t.line(),
        admin_group_line: t.line(),
        ..ControlConfig::default()
    };
    if let Some(at) = t.string("control_socket") {
        c.explicit = true;
        c.line = at.line;
        if at.value == "off" {
            c.socket = None;
        } else {
            let path = resolve_path(walk, &at);
            let len = path.as_os_str().len();
            if at.value.ends_with('/') || path.file_name().is_none() {
                walk.problem(
                    at.line,
                    &at.key,
                    format!(
                        "{:?} names a directory; give the socket's own path, such as \"{DEFAULT_SOCKET}\", or \"off\"",
                        at.value
                    ),
                );
            } else if len > MAX_SOCKET_PATH {
                walk.problem(
                    at.line,
                    &at.key,
                    format!(
                        "{} is {len} bytes long; a Unix socket's path can be at most {MAX_SOCKET_PATH}",
                        path.display()
                    ),
                );
            }
            c.socket = Some(path);
        }
    }
    if let Some(at) = t.string("admin_group") {
        c.admin_group_line = at.line;
        match nix::unistd::Group::from_name(&at.value) {
            _ if at.value.is_empty() => walk.problem(at.line, &at.key, "must not be empty"),
            Ok(Some(_)) => c.admin_group = Some(at.value),
            Ok(None) => walk.problem(
                at.line,
                &at.key,
                format!(
                    "no such group {:?} (its members act on every tenant with berth ctl)",
                    at.value
                ),
            ),
            Err(e) => walk.problem(
                at.line,
                &at.key,
                format!("cannot look up group {:?}: {e}", at.value),
            ),
        }
    }
    c
}

/// What is on disk for the socket berth will create (as [`read`] gave it,
/// for a berth run as `root` or not), and whether the front end's user is
/// in `admin_group`.
pub(super) fn check(main: &Path, server: &Server, root: bool, problems: &mut Problems) {
    let c = &server.control;
    if let Some(group) = &c.admin_group
        && root
        && crate::control::auth::in_group(&server.user, group)
    {
        problems.push(
            main,
            c.admin_group_line,
            "server.admin_group",
            format!(
                "the front end's user {:?} is in group {group:?}: a compromised front end could act on every tenant through the control socket; choose a group it is not in",
                server.user
            ),
        );
    }
    let Some(path) = c.effective(root) else {
        return;
    };
    let key = "server.control_socket";
    if let Some(why) = socket_problem(path) {
        problems.push(main, c.line, key, why);
    }
}

/// Why berth would not create its socket at `path`: its directory fails the
/// rule for `state_dir` (see `supervisor::dir_rule`), or something other
/// than a socket is there already.
fn socket_problem(path: &Path) -> Option<String> {
    let parent = path.parent()?;
    if let Some(why) = super::unsafe_dir(parent) {
        return Some(why);
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(_) => return None,
    };
    let what = if meta.file_type().is_socket() {
        return None;
    } else if meta.file_type().is_symlink() {
        "a symbolic link"
    } else if meta.is_dir() {
        "a directory"
    } else if meta.is_file() {
        "a regular file"
    } else {
        "not a socket"
    };
    Some(format!(
        "{} exists and is {what}: berth replaces only a stale socket there, never anything else (remove it, or choose another path)",
        path.display()
    ))
}
