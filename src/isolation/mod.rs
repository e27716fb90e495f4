//! Isolation beyond the uid (invariant 10): each app process in its own view
//! of the machine (mount, pid, ipc and uts namespaces, optionally a network
//! namespace with loopback only) under berth's tiny init, and a seccomp
//! filter that answers EPERM to what web apps never need.
//!
//! [`Settings`] is what the configuration resolves per app (built-in →
//! `[defaults.isolation]` → `[tenant.T.isolation]` → `[tenant.T.app.A.isolation]`
//! → `[enforce.isolation]`); the supervisor turns it into a plan for the
//! init (`view`, `init`) and a filter (`seccomp`).

pub mod host;
pub mod init;
pub mod seccomp;
pub mod view;

use std::path::PathBuf;

/// How one app is isolated, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Own mount, pid, ipc and uts namespaces: the app sees its tenant's
    /// files and processes only (`namespaces = true`, the default).
    pub namespaces: bool,
    /// `network = "host"` (default) or `"none"` (a network namespace with
    /// loopback only). Only with `namespaces`.
    pub network: Network,
    /// The seccomp deny list (`seccomp = "on"`, the default, or `"off"`).
    pub seccomp: bool,
    /// System call names let through the filter (each one of
    /// [`seccomp::DENIED`]).
    pub allow: Vec<String>,
    /// Paths the admin adds to the view, read-write and read-only
    /// (absolute; bound at the same place).
    pub bind: Vec<PathBuf>,
    pub read_only: Vec<PathBuf>,
    /// `[enforce.isolation] namespaces = true`: the view is demanded, so an
    /// app whose view cannot be built is never started without one (berth
    /// started unprivileged where the kernel allows no user namespace).
    pub required: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            namespaces: true,
            network: Network::Host,
            seccomp: true,
            allow: Vec::new(),
            bind: Vec::new(),
            read_only: Vec::new(),
            required: false,
        }
    }
}

impl Settings {
    /// No view and no filter: the app runs as it did before isolation.
    pub fn off() -> Settings {
        Settings {
            namespaces: false,
            seccomp: false,
            ..Settings::default()
        }
    }
}

/// `network =`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// The host's network.
    #[default]
    Host,
    /// A network namespace of its own with loopback only: no outbound
    /// connections (the app's listening socket, made by berth, still works).
    None,
}
