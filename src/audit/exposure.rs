//! Who can reach what: passwords asked over plain HTTP on a network
//! address (routes with `auth`, the admin listener), the admin listener
//! open to every local user, listeners on every interface for sites only
//! this machine can name, the control socket (open to everyone by design,
//! and where it lives), and the tenants' homes and roots that an app
//! running without isolation can read.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::access::Owner;
use super::{Context, Finding, Place, Severity};
use crate::config::loopback;

pub(super) fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    plain_passwords(ctx, out);
    admin(ctx, out);
    all_interfaces(ctx, out);
    control_socket(ctx, out);
    without_isolation(ctx, out);
}

/// The plain listeners that other machines can reach.
fn open_plain(ctx: &Context<'_>) -> Vec<SocketAddr> {
    ctx.cfg
        .server
        .listen
        .iter()
        .filter(|a| !loopback(a.ip()))
        .copied()
        .collect()
}

/// A route with `auth` served on a plain listener that is not loopback:
/// Basic credentials are only base64, so the password crosses the network
/// as written (every site is served on every listener).
fn plain_passwords(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    let open = open_plain(ctx);
    let Some(first) = open.first() else { return };
    for t in &ctx.cfg.tenants {
        for (i, site) in t.sites.iter().enumerate() {
            for route in site.routes.iter().filter(|r| r.auth.is_some()) {
                let file = if route.own {
                    site.own
                        .as_ref()
                        .or(t.own.as_ref())
                        .map_or(site.lines.file.clone(), |o| o.path.clone())
                } else {
                    site.lines.file.clone()
                };
                out.push(Finding {
                    severity: Severity::High,
                    check: "auth-plain-http",
                    place: Place::config(
                        &file,
                        route.line,
                        format!("tenant.{}.site[{i}].route({}).auth", t.name, route.path),
                    ),
                    tenant: Some(t.name.clone()),
                    what: format!(
                        "route {} of {} asks for a password, and is served over plain HTTP on {first}, which is not loopback: Basic credentials cross the network readable by anyone on the way",
                        route.path, site.hosts[0]
                    ),
                    fix: format!(
                        "serve it over HTTPS only: give {} `tls` and listen for plain HTTP on loopback only (listen = [\"127.0.0.1:80\"]), or drop the plain listener",
                        site.hosts[0]
                    ),
                });
            }
        }
    }
}

/// The admin listener: plain HTTP only, so on a network address its
/// password crosses the network; on loopback without a password, every
/// local user (every tenant's app among them) reads it.
fn admin(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    let Some(admin) = &ctx.cfg.server.admin else {
        return;
    };
    let place = Place::Listener {
        address: admin.listen,
        file: ctx.main().to_path_buf(),
        line: ctx.main_line(&["server", "admin_listen"]),
        key: "server.admin_listen".into(),
    };
    if !loopback(admin.listen.ip()) {
        out.push(Finding {
            severity: Severity::High,
            check: "admin-plain-http",
            place,
            tenant: None,
            what: format!(
                "the admin listener {} is plain HTTP on an address that is not loopback: the admin password crosses the network readable by anyone on the way, and the page names every tenant",
                admin.listen
            ),
            fix: "admin_listen = \"127.0.0.1:8081\", reached through an SSH tunnel (ssh -L 8081:127.0.0.1:8081 HOST)".into(),
        });
    } else if admin.htpasswd.is_none() {
        out.push(Finding {
            severity: Severity::Medium,
            check: "admin-open",
            place,
            tenant: None,
            what: format!(
                "the admin listener {} has no password: every local user, every tenant's app among them (unless its isolation has network = \"none\"), reads every tenant's name, user, limits and use",
                admin.listen
            ),
            fix: "admin_htpasswd = \"/etc/berth/admin.htpasswd\" in [server] (htpasswd -c -B -C 10 /etc/berth/admin.htpasswd ops)".into(),
        });
    }
}

/// Names that only this machine resolves, or that no one can be given:
/// RFC 6761's `localhost` and `.localhost`, `.test`, `.invalid` and
/// `.example`.
fn local_only(host: &str) -> bool {
    const SUFFIXES: &[&str] = &["localhost", "test", "invalid", "example"];
    let last = host.rsplit('.').next().unwrap_or(host);
    SUFFIXES.contains(&last)
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A listener on a network address when every site's host names are ones
/// only this machine can name: the sites need no network, and berth is
/// reachable from it anyway (TLS clients without SNI get the default site).
fn all_interfaces(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    let hosts: Vec<&str> = ctx
        .cfg
        .tenants
        .iter()
        .flat_map(|t| &t.sites)
        .flat_map(|s| s.hosts.iter().map(String::as_str))
        .collect();
    if hosts.is_empty() || !hosts.iter().all(|h| local_only(h)) {
        return;
    }
    let server = &ctx.cfg.server;
    for (key, addrs) in [
        ("listen", &server.listen),
        ("tls_listen", &server.tls_listen),
    ] {
        for addr in addrs.iter().filter(|a| !loopback(a.ip())) {
            let everywhere = addr.ip().is_unspecified();
            out.push(Finding {
                severity: Severity::Low,
                check: "listen-exposed",
                place: Place::Listener {
                    address: *addr,
                    file: ctx.main().to_path_buf(),
                    line: ctx.main_line(&["server", key]),
                    key: format!("server.{key}"),
                },
                tenant: None,
                what: format!(
                    "{addr} listens on {}, but every site's host names ({}) are names only this machine uses: the network reaches berth for nothing",
                    if everywhere { "every interface" } else { "a network address" },
                    hosts.join(", ")
                ),
                fix: format!(
                    "{key} = [\"{}\"] in [server]",
                    SocketAddr::new(
                        if addr.is_ipv4() {
                            std::net::Ipv4Addr::LOCALHOST.into()
                        } else {
                            std::net::Ipv6Addr::LOCALHOST.into()
                        },
                        addr.port()
                    )
                ),
            });
        }
    }
}

/// The control socket: mode 0666 by design (every request is authorised
/// by the caller's uid, `SO_PEERCRED`), in a directory berth makes root's
/// and walks like `state_dir`'s (`berth check` refuses one that another
/// user owns or may write). What is left: a world-writable directory above
/// it (sticky, as /tmp), where another user may make a directory of that
/// name before berth does; and tenants' users in `admin_group`, which acts
/// on every tenant.
fn control_socket(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    let control = &ctx.cfg.server.control;
    if let Some(group) = &control.admin_group {
        let place = Place::config(ctx.main(), control.admin_group_line, "server.admin_group");
        for t in ctx
            .cfg
            .tenants
            .iter()
            .filter(|t| crate::control::auth::in_group(&t.user, group))
        {
            out.push(Finding {
                severity: Severity::High,
                check: "control-admin-group",
                place: place.clone(),
                tenant: Some(t.name.clone()),
                what: format!(
                    "tenant {}'s user {} is in admin_group {group}: it (and every app of the tenant) may restart, stop and reload every tenant, and read their logs, through berth ctl",
                    t.name, t.user
                ),
                fix: format!("gpasswd -d {} {group} (or usermod -g for its primary group)", t.user),
            });
        }
    }
    let Some(socket) = control.effective(ctx.root) else {
        return;
    };
    let place = Place::config(ctx.main(), control.line, "server.control_socket");
    out.push(Finding {
        severity: Severity::Info,
        check: "control-socket",
        place: place.clone(),
        tenant: None,
        what: format!(
            "{} is mode 0666 by design: every local user may connect, and berth authorises each request by the caller's uid (SO_PEERCRED): root{} on every tenant, a tenant's user on its own, anyone else is refused; its directory is root's, and no one else may write to it or above it",
            socket.display(),
            match &control.admin_group {
                Some(g) => format!(" and members of {g} act"),
                None => " acts".into(),
            }
        ),
        fix: "nothing to do; `control_socket = \"off\"` removes it".into(),
    });
    let mut dir = socket.parent();
    while let Some(d) = dir {
        if let Ok(meta) = std::fs::symlink_metadata(d) {
            let o = Owner::of(&meta);
            if o.others(2) {
                out.push(Finding {
                    severity: Severity::Low,
                    check: "control-socket-dir",
                    place: Place::path(d),
                    tenant: None,
                    what: format!(
                        "{} (mode {:o}) is writable by everyone and lies above the control socket {}: whenever the directory below it is missing (a reboot that empties it, a clean-up), another user may make it first, and berth then refuses to start",
                        d.display(),
                        o.bits(),
                        socket.display()
                    ),
                    fix: format!(
                        "control_socket = \"{}\" (the default, under /run, which only root may write)",
                        crate::config::DEFAULT_SOCKET
                    ),
                });
                break;
            }
        }
        dir = d.parent();
    }
}

/// An app without its own view of the machine (`isolation.namespaces =
/// false`) reads whatever other users may: every other tenant's home and
/// site roots that others may enter are open to it.
fn without_isolation(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    let tenants = &ctx.cfg.tenants;
    for b in tenants.iter().filter(|t| t.resolved) {
        let open_apps: Vec<&str> = b
            .apps
            .iter()
            .filter(|app| !app.isolation.namespaces)
            .map(|app| app.name.as_str())
            .collect();
        let Some(first) = open_apps.first() else {
            continue;
        };
        for a in tenants.iter().filter(|t| t.resolved && t.uid != b.uid) {
            let mut paths: Vec<PathBuf> = vec![a.home.clone()];
            for s in &a.sites {
                if !paths.iter().any(|p| s.root.starts_with(p)) {
                    paths.push(s.root.clone());
                }
            }
            for path in paths {
                let Some(how) = open_to_others(&path) else {
                    continue;
                };
                out.push(Finding {
                    severity: Severity::High,
                    check: "isolation-off",
                    place: Place::path(&path),
                    tenant: Some(a.name.clone()),
                    what: format!(
                        "tenant {}'s {} is {how}, and tenant {}'s app {} runs without isolation (namespaces = false): it reads {}'s files (configuration, passwords in it) with every request it serves",
                        a.name,
                        if path == a.home { "home" } else { "site root" },
                        b.name,
                        open_apps.join(", "),
                        a.name
                    ),
                    fix: format!(
                        "turn isolation on for tenant {}'s app {first} ([tenant.{}.app.{first}.isolation] namespaces = true), or chmod o-rwx {} (the front end reads the site through the tenant's group: usermod -aG {} {})",
                        b.name,
                        b.name,
                        path.display(),
                        ctx.accounts
                            .group_name(a.gid)
                            .unwrap_or_else(|| a.gid.to_string()),
                        ctx.cfg.server.user
                    ),
                });
            }
        }
    }
}

/// How others (users who are neither the owner nor in the group) reach
/// the directory `path`: every directory above it searchable by them, and
/// it listable or searchable. None: they do not.
fn open_to_others(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let mut dir = path.parent();
    while let Some(d) = dir {
        let m = std::fs::metadata(d).ok()?;
        if m.mode() & 0o001 == 0 {
            return None;
        }
        dir = d.parent();
    }
    let mode = meta.mode() & 0o7777;
    match (mode & 0o004 != 0, mode & 0o001 != 0) {
        (true, true) => Some(format!("open to every user (mode {mode:o})")),
        (false, true) => Some(format!(
            "searchable by every user (mode {mode:o}: files whose names are known or guessed, such as wp-config.php, can be read)"
        )),
        (true, false) => Some(format!("listable by every user (mode {mode:o})")),
        (false, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_only_names() {
        for h in [
            "localhost",
            "a.localhost",
            "a.test",
            "x.invalid",
            "www.example",
            "127.0.0.1",
        ] {
            assert!(local_only(h), "{h}");
        }
        for h in ["a.com", "example.com", "test.org", "10.0.0.5", "a.local"] {
            assert!(!local_only(h), "{h}");
        }
    }
}
