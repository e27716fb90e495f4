//! A farm of three berth nodes on 127.0.0.1, 127.0.0.2 and 127.0.0.3 for the
//! farm's tests (`tests/farm.rs`, `tests/farm_attacks.rs`): one tenant, the
//! site `farm.test` with shell CGI scripts that say which node ran them
//! (`SERVER_ADDR` is the address of the listener that ran it), gossip every
//! 300 ms, and the helpers to ask the nodes.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

/// The tenant.
pub const USER: &str = "berth-tfarm1";
pub const SECRET: &str = "the-secret-of-the-attacked-farm-0123456789\n";
/// Generous bounds for a loaded 2-core machine running other tests: gossip
/// every 300 ms finds a node in about a second.
pub const WITHIN: Duration = Duration::from_secs(20);
pub const INTERVAL: Duration = Duration::from_millis(300);

/// Says which node ran it, whom it believes the client is, and whether it
/// came over TLS.
pub const WHO_CGI: &str = "#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
echo \"node=$SERVER_ADDR\"
echo \"remote=$REMOTE_ADDR\"
echo \"https=$HTTPS\"
echo \"marks=$(env | grep -ci mark)\"
echo \"forwarded=$HTTP_X_FORWARDED_FOR\"
";

/// [`WHO_CGI`] after a second's work.
pub const SLOW_CGI: &str = "#!/bin/sh
sleep 1
printf 'Content-Type: text/plain\\r\\n\\r\\n'
echo \"node=$SERVER_ADDR\"
";

/// The directories of the site's root with a `who.cgi` and a `slow.cgi` each.
const DIRS: [&str; 7] = [
    "pinned", "redirect", "hop", "cost", "sticky", "spread", "local",
];

pub struct Node {
    pub name: &'static str,
    pub ip: Ipv4Addr,
    pub server: Server,
}

pub struct Farm {
    pub dir: Dir,
    pub port: u16,
    pub tls_port: u16,
    pub admin: u16,
    pub gossip: u16,
    pub nodes: Vec<Node>,
    pub ca: Option<String>,
}

/// What [`Farm::start_spec`] starts.
pub struct Spec<'a> {
    /// The nodes' names, on 127.0.0.1-3.
    pub names: [&'static str; 3],
    /// `[cluster] balance`.
    pub balance: &'a str,
    /// Routes of the site `farm.test`.
    pub routes: &'a str,
    /// A TLS listener on each node, and a certificate for the site.
    pub tls: bool,
    /// More lines in each node's `[server]`.
    pub server: &'a str,
    /// The end of each node's file (another route: another configuration).
    pub extra: [&'a str; 3],
    /// More seeds for the first node.
    pub seeds_extra: &'a [SocketAddr],
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Spec {
            names: ["a", "b", "c"],
            balance: r#""off""#,
            routes: "",
            tls: false,
            server: "",
            extra: ["", "", ""],
            seeds_extra: &[],
        }
    }
}

impl Farm {
    /// Three nodes named `names` on 127.0.0.1-3, each serving `routes` (of
    /// the site `farm.test`, with `a`, `b`, `c`, `www` and the nodes' own
    /// names lowercased as its other names, under `farm.test`); `balance` is
    /// `[cluster] balance`. With `tls`, each node also has a TLS listener
    /// and the site a certificate for all those names.
    pub fn start(names: [&'static str; 3], balance: &str, routes: &str, tls: bool) -> Farm {
        Farm::start_with(names, balance, routes, tls, "")
    }

    /// [`Farm::start`] with `server` lines in each node's `[server]`.
    pub fn start_with(
        names: [&'static str; 3],
        balance: &str,
        routes: &str,
        tls: bool,
        server: &str,
    ) -> Farm {
        Farm::start_spec(Spec {
            names,
            balance,
            routes,
            tls,
            server,
            ..Spec::default()
        })
    }

    /// The farm `spec` says.
    pub fn start_spec(spec: Spec<'_>) -> Farm {
        let Spec {
            names,
            balance,
            routes,
            tls,
            server,
            extra,
            seeds_extra,
        } = spec;
        require_root();
        let (uid, gid) = ensure_user(USER);
        ensure_user("berth-tfront");
        let dir = Dir::new();
        for sub in DIRS {
            for (name, text) in [("who.cgi", WHO_CGI), ("slow.cgi", SLOW_CGI)] {
                let script = dir.write(&format!("site/{sub}/{name}"), text);
                std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        chown_tree(&dir.join("site"), uid, gid);
        let key = dir.write("cluster.key", SECRET);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut hosts: Vec<String> = ["farm.test", "a.farm.test", "b.farm.test", "c.farm.test"]
            .map(String::from)
            .to_vec();
        for n in names {
            let h = format!("{}.farm.test", n.to_ascii_lowercase());
            if !hosts.contains(&h) {
                hosts.push(h);
            }
        }
        let (ca, site_tls) = if tls {
            let pki = Pki::new();
            let refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
            let (cert, key) = pki.issue(&dir, "farm", &refs);
            (
                Some(pki.ca_pem.clone()),
                format!(
                    "tls = {{ cert = \"{}\", key = \"{}\" }}",
                    cert.display(),
                    key.display()
                ),
            )
        } else {
            (None, String::new())
        };
        let (port, tls_port, admin, gossip) = (free_port(), free_port(), free_port(), free_port());
        let mut farm = Farm {
            dir,
            port,
            tls_port,
            admin,
            gossip,
            nodes: Vec::new(),
            ca,
        };
        let hosts: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
        for (i, name) in names.into_iter().enumerate() {
            let ip = Ipv4Addr::new(127, 0, 0, i as u8 + 1);
            let mut seeds: Vec<String> = (1..=3)
                .filter(|&j| j != i + 1)
                .map(|j| format!("\"127.0.0.{j}:{gossip}\""))
                .collect();
            if i == 0 {
                seeds.extend(seeds_extra.iter().map(|s| format!("\"{s}\"")));
            }
            let tls_listen = if tls {
                format!("tls_listen = [\"{ip}:{tls_port}\"]")
            } else {
                String::new()
            };
            let config = format!(
                r#"[server]
listen = ["{ip}:{port}"]
{tls_listen}
admin_listen = "{ip}:{admin}"
user = "berth-tfront"
state_dir = "{d}/state"
log_dir = "{d}/log"
control_socket = "{d}/state/control.sock"
log_rotate = "off"
{server}

[cluster]
name = "{name}"
bind = "{ip}:{gossip}"
seeds = [{seeds}]
interval = "300ms"
secret_file = "{key}"
balance = {balance}

[tenant.tf]
user = "{USER}"
home = "{root}"

[tenant.tf.app.scripts]
protocol = "cgi"

[[tenant.tf.site]]
hosts = [{hosts}]
root = "{root}"
{site_tls}
{routes}
{extra}
"#,
                d = farm.dir.join(name).display(),
                seeds = seeds.join(", "),
                key = key.display(),
                root = farm.dir.join("site").display(),
                hosts = hosts.join(", "),
                extra = extra[i],
            );
            let path = farm.dir.write(&format!("{name}.toml"), config);
            let server = Server::spawn(&path, port, tls_port, farm.dir.join(name).join("log"));
            farm.nodes.push(Node { name, ip, server });
        }
        for n in 0..3 {
            farm.wait_ready(n);
        }
        farm
    }

    pub fn addr(&self, node: usize) -> SocketAddr {
        SocketAddr::from((self.nodes[node].ip, self.port))
    }

    pub fn gossip_addr(&self, node: usize) -> SocketAddr {
        SocketAddr::from((self.nodes[node].ip, self.gossip))
    }

    pub fn wait_ready(&mut self, node: usize) {
        let addr = self.addr(node);
        let deadline = Instant::now() + WITHIN;
        loop {
            let probe = b"GET / HTTP/1.1\r\nHost: ready.invalid\r\nConnection: close\r\n\r\n";
            if try_raw(addr, probe).is_ok_and(|r| r.starts_with("HTTP/1.1")) {
                return;
            }
            let Node { name, server, .. } = &mut self.nodes[node];
            if let Some(st) = server.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("node {name} exited ({st}):\n{}", server.output());
            }
            assert!(Instant::now() < deadline, "node {node} not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `status.json` of a node, asked from 127.0.0.254 (an address no test
    /// counts the connections of).
    pub fn status(&self, node: usize) -> serde_json::Value {
        let addr = SocketAddr::from((self.nodes[node].ip, self.admin));
        let mut s = connect_from(Ipv4Addr::new(127, 0, 0, 254), addr);
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"GET /status.json HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {resp}"))
    }

    /// The cluster as `node` sees it: name → node object.
    pub fn seen_by(&self, node: usize) -> HashMap<String, serde_json::Value> {
        let status = self.status(node);
        status["cluster"]["nodes"]
            .as_array()
            .unwrap_or(&Vec::new())
            .iter()
            .map(|n| (n["name"].as_str().unwrap().to_string(), n.clone()))
            .collect()
    }

    /// Waits until every node sees every node of `names` alive.
    pub fn wait_seen(&self, names: &[&str]) {
        let ok = eventually(WITHIN, || {
            (0..self.nodes.len()).all(|i| {
                let seen = self.seen_by(i);
                names
                    .iter()
                    .all(|n| seen.get(*n).is_some_and(|v| v["live"] == true))
            })
        });
        assert!(ok, "the nodes did not see {names:?}: {:#}", self.status(0));
    }

    pub fn wait_joined(&self) {
        let names: Vec<&str> = self.nodes.iter().map(|n| n.name).collect();
        self.wait_seen(&names);
    }
}

/// `GET path` with `host` at `addr`, with `headers`; (status, head, body).
pub fn get(addr: SocketAddr, host: &str, path: &str, headers: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    request_on(
        &mut s,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}"),
    )
}

/// Sends `head` (without its closing `Connection: close` and empty line)
/// and reads the answer to the end.
pub fn request_on(s: &mut TcpStream, head: &str) -> (u16, String, String) {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "{head}Connection: close\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    (status_of(&resp), head.to_string(), body.to_string())
}

/// The `key=` line of a script's answer.
pub fn field<'a>(body: &'a str, key: &str) -> &'a str {
    body.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key} in {body:?}"))
}

/// The value of header `name` in a response head (any case).
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

pub fn chown_tree(path: &std::path::Path, uid: u32, gid: u32) {
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
