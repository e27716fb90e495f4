//! The supervisor's side of `[cluster]` (issue 11): the gossip socket,
//! bound here as root at `bind` and handed to the front end right after the
//! listeners, and the [`ClusterPlan`] sent with it, with the
//! [`fingerprint`] of what every node of a farm must share.
//!
//! The socket is kept across reloads while `bind` stays the same (the
//! front end's gossip goes on with it), and bound anew when it changes;
//! [`Gossip::next`] binds before anything is given up, so a bind that fails
//! leaves the configuration in use as it was (like the listeners).
//!
//! Unlike the listeners, it has no `SO_REUSEADDR`: for UDP that option lets
//! any local user (a tenant's app) bind the same address too, if it sets the
//! option as well, and the kernel then hands it the datagrams meant for
//! berth. Without it, the address is berth's alone while it is bound.

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::info;

use super::Error;
use crate::config::{App, Config};
use crate::farm::ClusterPlan;

/// The gossip socket, while `[cluster]` is configured.
#[derive(Debug, Default)]
pub(super) struct Gossip {
    bound: Option<(SocketAddr, OwnedFd)>,
}

impl Gossip {
    /// The gossip socket `cfg` wants: a copy of this one when `bind` is the
    /// same, a socket bound now when it is new, none without `[cluster]`.
    /// Nothing here is given up: the caller replaces `self` with the result
    /// once the rest of the configuration is in use too.
    pub(super) fn next(&self, cfg: &Config) -> Result<Gossip, Error> {
        let Some(cluster) = &cfg.cluster else {
            if let Some((addr, _)) = &self.bound {
                info!("gossip socket at {addr} closed: [cluster] is gone");
            }
            return Ok(Gossip::default());
        };
        let addr = cluster.bind;
        let fd = match &self.bound {
            Some((was, fd)) if *was == addr => fd.try_clone()?,
            was => {
                let fd = bind(addr)?;
                match was {
                    Some((was, _)) => info!("gossip socket moved from {was} to {addr} (UDP)"),
                    None => info!("gossip socket bound at {addr} (UDP)"),
                }
                fd
            }
        };
        Ok(Gossip {
            bound: Some((addr, fd)),
        })
    }

    /// The socket, to send to the front end.
    pub(super) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.bound.as_ref().map(|(_, fd)| fd.as_fd())
    }
}

/// A UDP socket bound at `addr`: nonblocking, close-on-exec, IPv6 only for
/// an IPv6 address (as the listeners), no `SO_REUSEADDR` (see the module
/// doc).
fn bind(addr: SocketAddr) -> Result<OwnedFd, Error> {
    use rustix::net::{SocketFlags, SocketType};
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    super::socket_at(addr, SocketType::DGRAM, flags, false).map_err(|e| Error::Gossip {
        addr,
        source: e.into(),
    })
}

/// `[cluster]` as the front end runs it (None without one).
pub(super) fn plan(cfg: &Config) -> Option<ClusterPlan> {
    let c = cfg.cluster.as_ref()?;
    Some(ClusterPlan {
        name: c.name.clone(),
        advertise: c.advertise,
        proxy: c.proxy,
        seeds: c.seeds.clone(),
        interval: c.interval,
        secret: c.secret.clone(),
        accept_from: c.accept_from.clone(),
        fingerprint: fingerprint(cfg),
    })
}

/// Hex digits of the fingerprint: 64 bits tell configurations apart far
/// beyond what a farm has.
const FINGERPRINT_DIGITS: usize = 16;

/// The first hex digits of a SHA-256 of [`canonical`]: every node of a farm
/// serving the same configuration shows the same.
pub fn fingerprint(cfg: &Config) -> String {
    let text = canonical(cfg).to_string();
    let digest = Sha256::digest(text.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex[..FINGERPRINT_DIGITS].to_string()
}

/// What every node of a farm must share, in one order whatever the order
/// of the files (tenants by name, their sites by host, apps by name,
/// routes by path): tenants with their users and homes, limits, apps
/// (protocol, command, dir, env, how they are bound, pool, isolation),
/// sites (hosts, root, whether TLS, `max_body`, routes with their
/// placement and passwords). Left out is what is each node's own:
/// `[server]` (listeners, directories, client limits, logging),
/// `[cluster]` (name, addresses, seeds, secret), uids, the paths of app
/// sockets, where anything was written, and certificates (a node may have
/// its own, for the same host names).
pub fn canonical(cfg: &Config) -> Value {
    let mut tenants: Vec<_> = cfg.tenants.iter().collect();
    tenants.sort_by(|a, b| a.name.cmp(&b.name));
    let tenants: Vec<Value> = tenants
        .into_iter()
        .map(|t| {
            let mut apps: Vec<&App> = t.apps.iter().collect();
            apps.sort_by(|a, b| a.name.cmp(&b.name));
            let mut sites: Vec<_> = t.sites.iter().collect();
            sites.sort_by(|a, b| a.hosts.cmp(&b.hosts));
            json!({
                "name": t.name,
                "user": t.user,
                "home": t.home,
                "limits": t.limits,
                "apps": apps.into_iter().map(app).collect::<Vec<_>>(),
                "sites": sites.into_iter().map(|s| {
                    let mut routes: Vec<_> = s.routes.iter().collect();
                    routes.sort_by(|a, b| a.path.cmp(&b.path));
                    json!({
                        "hosts": s.hosts,
                        "root": s.root,
                        "tls": s.tls.is_some(),
                        "max_body": s.max_body,
                        "routes": routes,
                    })
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "tenants": tenants })
}

fn app(a: &App) -> Value {
    let i = &a.isolation;
    json!({
        "name": a.name,
        "protocol": a.protocol,
        "command": a.command,
        "dir": a.dir,
        "env": a.env,
        "bind": a.bind,
        "open_port": a.open_port,
        "pool": a.pool,
        "isolation": {
            "namespaces": i.namespaces,
            "network": format!("{:?}", i.network),
            "seccomp": i.seccomp,
            "allow": i.allow,
            "bind": i.bind,
            "read_only": i.read_only,
            "required": i.required,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    /// The tenant's part of the files: one site with a route and an app.
    const TENANTS: &str = r#"
[tenant.ta]
user = "daemon"
home = "HOME"

[tenant.ta.app.php]
protocol = "fastcgi"
command = ["/bin/sh"]
dir = "HOME"
env = { A = "1" }

[[tenant.ta.site]]
hosts = ["a.test", "www.a.test"]
root = "HOME"

[[tenant.ta.site.route]]
path = "/app/"
app = "php"
balance = ["byAge 6", "byLoad 0.5"]

[[tenant.ta.site.route]]
path = "/"
"#;

    /// Loads a node's main file: `server` and `cluster` (its own), then
    /// `tenants` (what the farm shares).
    fn node(dir: &Path, server: &str, cluster: &str, tenants: &str) -> Config {
        let home = dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let key = dir.join("cluster.key");
        std::fs::write(&key, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = format!(
            "[server]\nuser = \"nobody\"\nmin_uid = 1\nstate_dir = \"{0}/state\"\nlog_dir = \"{0}/log\"\n{server}\n\
             [cluster]\nsecret_file = \"cluster.key\"\n{cluster}\n{1}",
            dir.display(),
            tenants.replace("HOME", &home.display().to_string())
        );
        let path = dir.join("berth.toml");
        std::fs::write(&path, text).unwrap();
        crate::config::load(&path).unwrap_or_else(|p| panic!("{p}"))
    }

    #[test]
    fn nodes_differing_only_in_server_and_cluster_share_a_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let one = node(
            dir.path(),
            "listen = [\"127.0.0.1:18080\"]",
            "name = \"node1\"\nbind = \"127.0.0.1:7946\"",
            TENANTS,
        );
        let two = node(
            dir.path(),
            "listen = [\"127.0.0.2:28080\"]\ntls_listen = [\"127.0.0.2:28443\"]\nmax_connections = 10\nlog_rate = 7",
            "name = \"node2\"\nbind = \"127.0.0.2:7000\"\nseeds = [\"127.0.0.1:7946\"]\ninterval = \"2s\"\naccept_from = [\"127.0.0.0/8\"]",
            TENANTS,
        );
        let f = fingerprint(&one);
        assert_eq!(f.len(), FINGERPRINT_DIGITS);
        assert!(f.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(f, fingerprint(&two));
        // Written in another order, the same configuration.
        let reordered = TENANTS.replace(
            "protocol = \"fastcgi\"\ncommand = [\"/bin/sh\"]",
            "command = [\"/bin/sh\"]\nprotocol = \"fastcgi\"",
        );
        let reordered = reordered.replace(
            "[[tenant.ta.site.route]]\npath = \"/app/\"\napp = \"php\"\nbalance = [\"byAge 6\", \"byLoad 0.5\"]\n\n[[tenant.ta.site.route]]\npath = \"/\"\n",
            "[[tenant.ta.site.route]]\npath = \"/\"\n\n[[tenant.ta.site.route]]\npath = \"/app/\"\nbalance = [\"byAge 6\", \"byLoad 0.5\"]\napp = \"php\"\n",
        );
        assert_ne!(reordered, TENANTS);
        assert!(
            reordered.find("path = \"/\"\n") < reordered.find("path = \"/app/\""),
            "{reordered}"
        );
        let three = node(
            dir.path(),
            "listen = [\"127.0.0.1:18080\"]",
            "bind = \"127.0.0.1:7946\"",
            &reordered,
        );
        assert_eq!(f, fingerprint(&three), "{reordered}");
        // Nothing of [cluster] in it: not the secret either.
        let text = canonical(&one).to_string();
        for own in ["node1", "7946", "18080", "0123456789abcdef"] {
            assert!(!text.contains(own), "{own} in {text}");
        }
    }

    #[test]
    fn a_changed_route_or_app_changes_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let at = |tenants: &str| {
            fingerprint(&node(
                dir.path(),
                "listen = [\"127.0.0.1:18080\"]",
                "bind = \"127.0.0.1:7946\"",
                tenants,
            ))
        };
        let base = at(TENANTS);
        for (what, from, to) in [
            ("a route's path", "path = \"/app/\"", "path = \"/other/\""),
            ("a route's placement", "\"byLoad 0.5\"", "\"byLoad 0.7\""),
            (
                "a route's handover",
                "app = \"php\"\n",
                "app = \"php\"\nhandover = \"redirect ip\"\n",
            ),
            (
                "an app's command",
                "command = [\"/bin/sh\"]",
                "command = [\"/bin/sh\", \"-e\"]",
            ),
            ("an app's env", "A = \"1\"", "A = \"2\""),
            ("an app's pool", "env = {", "max_processes = 9\nenv = {"),
            (
                "an app's isolation",
                "env = {",
                "isolation = { seccomp = \"off\" }\nenv = {",
            ),
            ("a host", "\"www.a.test\"", "\"www2.a.test\""),
            (
                "a tenant's limits",
                "home = \"HOME\"\n",
                "home = \"HOME\"\nlimits = { tasks = 99 }\n",
            ),
        ] {
            assert!(TENANTS.contains(from), "{what}");
            let changed = TENANTS.replacen(from, to, 1);
            assert_ne!(at(&changed), base, "{what} left the fingerprint as it was");
        }
    }
}
