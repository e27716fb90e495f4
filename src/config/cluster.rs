//! `[cluster]`: this node's place in a farm of berth nodes (issue 11), and
//! the route keys that place requests over the farm (`balance`,
//! `handover`, `sticky`, `self_redirect`).
//!
//! `[cluster]` is read after `[server]` (the default `proxy` address takes
//! the port of its first plain `listen`) and before any tenant: its
//! `balance`, `handover`, `sticky` and `self_redirect` are every route's
//! defaults ([`Placement`]). Layering, last wins: `[cluster]`'s keys → the
//! administrator's route, key by key (`balance = "off"` turns placement off
//! for the route whatever `[cluster]` says). A tenant's own file may not set
//! any of the four: its routes, and those of discovered sites, get
//! `[cluster]`'s ([`RouteKeys`]). Without `[cluster]`, a route may only say
//! `balance = "off"`: there is no farm to place requests on.
//!
//! `secret_file` is read here, as root, at every load (start-up and each
//! reload), so that `berth check` refuses what `berth serve` would: it must
//! be a regular file of root's (of berth's own user when berth is not root)
//! that nobody else may read or write, of 16 to 4096 bytes ([`read_secret`]).

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::farm::{Balance, Cidr, Handover, handover, place};

use super::reader::{At, TableReader};
use super::{Server, duration, resolve_path, show_duration, valid_host};

/// `[cluster]`, validated.
#[derive(Clone, PartialEq)]
pub struct Cluster {
    /// This node's name (`name`, default: the host name).
    pub name: String,
    /// Where the gossip socket (UDP) is bound.
    pub bind: SocketAddr,
    /// Where the other nodes send gossip (default: `bind`).
    pub advertise: SocketAddr,
    /// Where the other nodes send the requests they proxy here.
    pub proxy: SocketAddr,
    /// Other nodes' gossip addresses, `host:port`, as written.
    pub seeds: Vec<String>,
    pub interval: Duration,
    pub secret_file: PathBuf,
    /// The secret, trailing whitespace trimmed (see [`read_secret`]).
    pub secret: Vec<u8>,
    /// Gossip is taken only from these networks (empty: from anywhere).
    pub accept_from: Vec<Cidr>,
    /// Every route's defaults.
    pub placement: Placement,
    /// The line of `[cluster]`.
    pub line: usize,
}

impl std::fmt::Debug for Cluster {
    /// Everything but the secret (a configuration printed with `{:?}` must
    /// not put it in a log).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("bind", &self.bind)
            .field("advertise", &self.advertise)
            .field("proxy", &self.proxy)
            .field("seeds", &self.seeds)
            .field("interval", &self.interval)
            .field("secret_file", &self.secret_file)
            .field("secret", &format_args!("({} bytes)", self.secret.len()))
            .field("accept_from", &self.accept_from)
            .field("placement", &self.placement)
            .field("line", &self.line)
            .finish()
    }
}

/// What a route places requests by when it does not say: `[cluster]`'s
/// `balance`, `handover`, `sticky` and `self_redirect`.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// The candidacy functions (None: `"off"`, the default).
    pub funcs: Option<Vec<String>>,
    pub handover: Handover,
    pub sticky: bool,
    pub self_redirect: bool,
}

impl Default for Placement {
    fn default() -> Self {
        Placement {
            funcs: None,
            handover: Handover::Proxy,
            sticky: false,
            self_redirect: false,
        }
    }
}

impl Placement {
    /// A route's placement with nothing of its own: None when off.
    pub fn balance(&self) -> Option<Balance> {
        self.funcs.as_ref().map(|funcs| Balance {
            funcs: funcs.clone(),
            handover: self.handover.clone(),
            sticky: self.sticky,
            self_redirect: self.self_redirect,
        })
    }
}

/// The route keys this module reads.
pub const ROUTE_KEYS: [&str; 4] = ["balance", "handover", "sticky", "self_redirect"];

/// The shortest and longest `interval`: gossip ten times a second at most
/// (a farm of a hundred nodes is then 1,000 datagrams a second per node),
/// and at least once a minute (`byAge`'s default drops a node not heard
/// from for 20 s).
const MIN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// The shortest secret: 16 bytes (128 bits, if random).
pub const MIN_SECRET: usize = 16;
/// The largest secret file.
pub const MAX_SECRET: usize = 4096;

/// Every candidacy function's name, for the message about one that is not.
const FUNCS: &str = "byAge, byLoad, byBusyChildren, byCPU, byRandom, byLogWindow, byCost, \
     byHostname, bySession, addSelf, removeSelf, byInFlight, byTwoChoices";

/// Reads `[cluster]`. The placement defaults come back whatever else is
/// wrong (so a mistake in `bind` does not make every route's `balance` a
/// second problem); the whole only when every required key is there.
pub(super) fn read(mut t: TableReader<'_>, server: &Server) -> (Option<Cluster>, Placement) {
    let walk = t.walk();
    let line = t.line();
    let name = t.string("name");
    let bind = t.string("bind");
    let advertise = t.string("advertise");
    let proxy = t.string("proxy");
    let seeds = t.strings("seeds");
    let interval = t.string("interval");
    let secret_file = t.string("secret_file");
    let accept_from = t.strings("accept_from");
    let placement = read_placement(&mut t, &Placement::default());
    t.finish();

    let name = match name {
        Some(n) => check_name(&n.value)
            .map_err(|why| walk.problem(n.line, &n.key, why))
            .ok()
            .map(|()| n.value),
        None => {
            let host = rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned();
            check_name(&host)
                .map_err(|why| {
                    walk.problem(
                        line,
                        "cluster.name",
                        format!("not set, and the host name will not do: {why}; set name"),
                    )
                })
                .ok()
                .map(|()| host)
        }
    };
    let address = |at: &At<String>| -> Option<SocketAddr> {
        match at.value.parse::<SocketAddr>() {
            Ok(a) if a.port() == 0 => {
                walk.problem(at.line, &at.key, format!("{a}: needs a port (not 0)"));
                None
            }
            Ok(a) => Some(a),
            Err(_) => {
                walk.problem(
                    at.line,
                    &at.key,
                    format!(
                        "{:?} is not an address:port such as \"10.0.0.1:7946\" or \"[fd00::1]:7946\"",
                        at.value
                    ),
                );
                None
            }
        }
    };
    // Somewhere the other nodes can send to: not 0.0.0.0 or ::.
    let reachable = |at: &At<String>| -> Option<SocketAddr> {
        let a = address(at)?;
        if a.ip().is_unspecified() {
            walk.problem(
                at.line,
                &at.key,
                format!(
                    "{a} is every address of this node, not one the others can send to: name one"
                ),
            );
            return None;
        }
        Some(a)
    };
    let bind = match &bind {
        Some(b) => address(b),
        None => {
            walk.problem(
                line,
                "cluster.bind",
                "is required: the address:port of the gossip socket (UDP), such as \"10.0.0.1:7946\"",
            );
            None
        }
    };
    let advertise = match (&advertise, bind) {
        (Some(a), _) => reachable(a),
        (None, Some(b)) if b.ip().is_unspecified() => {
            walk.problem(
                line,
                "cluster.advertise",
                format!(
                    "is required when bind ({b}) is every address: where the other nodes send gossip to this one"
                ),
            );
            None
        }
        (None, b) => b,
    };
    let proxy = match (&proxy, advertise) {
        (Some(p), _) => reachable(p),
        (None, Some(a)) => match server.listen.first() {
            Some(l) => Some(SocketAddr::new(a.ip(), l.port())),
            None => {
                walk.problem(
                    line,
                    "cluster.proxy",
                    "not set, and [server] has no plain `listen` to take the port of: set proxy to where the other nodes send the requests they hand to this one",
                );
                None
            }
        },
        (None, None) => None,
    };
    let seeds = seeds.map_or_else(Vec::new, |at| {
        let mut out: Vec<String> = Vec::new();
        for s in &at.value {
            match check_seed(s) {
                Err(why) => walk.problem(at.line, &at.key, why),
                Ok(()) if out.contains(s) => {
                    walk.problem(at.line, &at.key, format!("{s} is listed twice"))
                }
                Ok(()) => out.push(s.clone()),
            }
        }
        out
    });
    let interval = match interval {
        None => Some(DEFAULT_INTERVAL),
        Some(at) => {
            let (l, k) = (at.line, at.key.clone());
            match duration(walk, Some(at)) {
                Some(d) if (MIN_INTERVAL..=MAX_INTERVAL).contains(&d) => Some(d),
                Some(_) => {
                    walk.problem(
                        l,
                        &k,
                        format!(
                            "must be between {} and {}",
                            show_duration(MIN_INTERVAL),
                            show_duration(MAX_INTERVAL)
                        ),
                    );
                    None
                }
                None => None,
            }
        }
    };
    let secret = match &secret_file {
        Some(at) => {
            let path = resolve_path(walk, at);
            match read_secret(&path) {
                Ok(secret) => Some((path, secret)),
                Err(why) => {
                    walk.problem(at.line, &at.key, why);
                    None
                }
            }
        }
        None => {
            walk.problem(
                line,
                "cluster.secret_file",
                format!(
                    "is required: a file of at least {MIN_SECRET} random bytes, the same on every node (such as: head -c 32 /dev/urandom | base64 > /etc/berth/cluster.key; chmod 600 it)"
                ),
            );
            None
        }
    };
    let accept_from = accept_from.map_or_else(Vec::new, |at| {
        let mut out = Vec::new();
        for c in &at.value {
            match parse_cidr(c) {
                Ok(net) => out.push(net),
                Err(why) => walk.problem(at.line, &at.key, why),
            }
        }
        out
    });
    let cluster = match (name, bind, advertise, proxy, interval, secret) {
        (
            Some(name),
            Some(bind),
            Some(advertise),
            Some(proxy),
            Some(interval),
            Some((secret_file, secret)),
        ) => Some(Cluster {
            name,
            bind,
            advertise,
            proxy,
            seeds,
            interval,
            secret_file,
            secret,
            accept_from,
            placement: placement.clone(),
            line,
        }),
        _ => None,
    };
    (cluster, placement)
}

/// A node's name: what `byHostname` matches, `bySession`'s cookie and a
/// redirect name (`%NS`) are made of, so a host name (letters, digits, '-',
/// '_' and dot-separated labels). Gossip holds other nodes' names to it too.
pub fn check_name(name: &str) -> Result<(), String> {
    if valid_host(&name.to_ascii_lowercase()) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a node name: a host name such as \"node1\" or \"www3.sanfran.hosting.com\" (letters, digits, '-', '_', dot-separated)"
        ))
    }
}

/// A seed: `address:port` or `host:port`.
fn check_seed(seed: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "{seed:?} is not host:port such as \"10.0.0.2:7946\", \"[fd00::2]:7946\" or \"node2.example.net:7946\""
        )
    };
    if let Ok(a) = seed.parse::<SocketAddr>() {
        return if a.port() == 0 {
            Err(format!("{seed}: needs a port (not 0)"))
        } else {
            Ok(())
        };
    }
    let (host, port) = seed.rsplit_once(':').ok_or_else(bad)?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 && valid_host(&host.to_ascii_lowercase()) => Ok(()),
        _ => Err(bad()),
    }
}

/// `ADDRESS/PREFIX`, or a bare address (one host: /32 or /128). The
/// address must be the network's first (no bits set past the prefix): a
/// `10.1.2.3/8` is more likely a mistake than a way to write `10.0.0.0/8`.
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let bad = || {
        format!(
            "{s:?} is not a network such as \"10.0.0.0/8\", \"fd00::/8\" or an address such as \"10.0.0.5\""
        )
    };
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => match p.trim().parse::<u8>() {
            Ok(n) if n <= max => n,
            Ok(_) => {
                return Err(format!(
                    "{s:?}: the prefix of an IPv{} network is 0 to {max}",
                    if max == 32 { 4 } else { 6 }
                ));
            }
            Err(_) => return Err(bad()),
        },
    };
    let net = Cidr { addr, prefix };
    let first = match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::from(std::net::Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::from(std::net::Ipv6Addr::from(u128::from(a) & mask))
        }
    };
    if first != addr {
        return Err(format!(
            "{s:?} has bits set past its /{prefix}: did you mean \"{first}/{prefix}\"?"
        ));
    }
    Ok(net)
}

/// Reads the farm's secret: a regular file of root's (of berth's own uid
/// when berth is not root) that nobody else may write or read, at most
/// [`MAX_SECRET`] bytes, at least [`MIN_SECRET`] once trailing whitespace
/// (a final newline) is trimmed. Whoever could read it could forge gossip
/// and proxied requests; whoever could write it could change it. Opened
/// once, non-blocking (a FIFO does not hold the load), and every check is
/// on what was opened.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("{shown}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("{shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        let whose = if me == 0 {
            "root's".to_string()
        } else {
            format!("root's or berth's own (uid {me})")
        };
        return Err(format!(
            "{shown} is owned by uid {}, but must be {whose}: its owner could change the farm's secret",
            meta.uid()
        ));
    }
    let mode = meta.mode();
    for (bit, what) in [
        (0o002, "writable by others"),
        (0o020, "writable by its group"),
        (0o004, "readable by others"),
        (0o040, "readable by its group"),
    ] {
        if mode & bit != 0 {
            return Err(format!("{shown} is {what} (chmod 600)"));
        }
    }
    let mut secret = Vec::new();
    file.take(MAX_SECRET as u64 + 1)
        .read_to_end(&mut secret)
        .map_err(|e| format!("{shown}: {e}"))?;
    if secret.len() > MAX_SECRET {
        return Err(format!("{shown} is larger than {MAX_SECRET} bytes"));
    }
    while secret.last().is_some_and(u8::is_ascii_whitespace) {
        secret.pop();
    }
    if secret.len() < MIN_SECRET {
        return Err(format!(
            "{shown} holds {} bytes (trailing whitespace aside); a secret needs at least {MIN_SECRET} (such as: head -c 32 /dev/urandom | base64 > {shown})",
            secret.len()
        ));
    }
    Ok(secret)
}

/// How a route's placement keys are read.
pub(crate) enum RouteKeys<'a> {
    /// The administrator's route: each key over `[cluster]`'s (None: there
    /// is no `[cluster]`).
    Admin(Option<&'a Placement>),
    /// A route of a tenant's own file: the keys are refused; the route gets
    /// `[cluster]`'s placement (None: there is no `[cluster]`).
    Tenant(Option<&'a Placement>),
}

impl RouteKeys<'_> {
    /// The route's placement (None: served here), every key of
    /// [`ROUTE_KEYS`] read or refused.
    pub(crate) fn read(&self, t: &mut TableReader<'_>) -> Option<Balance> {
        match *self {
            RouteKeys::Tenant(cluster) => {
                for k in ROUTE_KEYS {
                    if t.place(k).is_some() {
                        t.problem(
                            k,
                            "only the administrator places requests over the farm ([cluster] and its own routes); your routes get [cluster]'s placement",
                        );
                    }
                    t.skip(k);
                }
                cluster.and_then(Placement::balance)
            }
            RouteKeys::Admin(None) => {
                let written: Vec<(usize, String)> =
                    ROUTE_KEYS.iter().filter_map(|k| t.place(k)).collect();
                let off = t.peek_str("balance") == Some("off");
                // (Still read, so that a mistake in them is reported too.)
                read_placement(t, &Placement::default());
                for (line, key) in written {
                    if off && key.ends_with(".balance") {
                        continue;
                    }
                    t.walk().problem(
                        line,
                        &key,
                        "needs a [cluster] section: without one this node is in no farm to place requests on",
                    );
                }
                None
            }
            RouteKeys::Admin(Some(cluster)) => read_placement(t, cluster).balance(),
        }
    }
}

/// `balance`, `handover`, `sticky` and `self_redirect` of `t` (`[cluster]`
/// or a route) over `base`.
fn read_placement(t: &mut TableReader<'_>, base: &Placement) -> Placement {
    let walk = t.walk();
    let mut p = base.clone();
    if t.peek_str("balance") == Some("off") {
        t.string("balance");
        p.funcs = None;
    } else if let Some(list) = t.string_items("balance") {
        if list.value.is_empty() {
            walk.problem(
                list.line,
                &list.key,
                "an empty list: name candidacy functions such as [\"byAge\", \"byLoad\"], or write \"off\" to serve here",
            );
        }
        let mut funcs = Vec::with_capacity(list.value.len());
        for f in list.value {
            match place::parse(&f.value) {
                Ok(_) => funcs.push(f.value.split_whitespace().collect::<Vec<_>>().join(" ")),
                Err(why) if why.ends_with("no such candidacy function") => {
                    walk.problem(f.line, &f.key, format!("{why}; expected one of: {FUNCS}"))
                }
                Err(why) => walk.problem(f.line, &f.key, why),
            }
        }
        p.funcs = Some(funcs);
    }
    if let Some(h) = t.string("handover") {
        match parse_handover(&h.value) {
            Ok(handover) => p.handover = handover,
            Err(why) => walk.problem(h.line, &h.key, why),
        }
    }
    if let Some(b) = t.boolean("sticky") {
        p.sticky = b.value;
    }
    if let Some(b) = t.boolean("self_redirect") {
        p.self_redirect = b.value;
    }
    p
}

/// `"proxy"`, `"redirect ip"` or `"redirect name FORMAT"`.
pub fn parse_handover(s: &str) -> Result<Handover, String> {
    let words: Vec<&str> = s.split_whitespace().collect();
    match words.as_slice() {
        ["proxy"] => Ok(Handover::Proxy),
        ["redirect", "ip"] => Ok(Handover::RedirectIp),
        ["redirect", "name", format] => handover::check_format(format)
            .map(|()| Handover::RedirectName((*format).to_string()))
            .map_err(|why| format!("redirect name: {why}")),
        ["redirect", "name"] => Err(
            "redirect name needs a FORMAT, such as \"redirect name %-2S.%-2H\" (mod_backhand's %-NS, %NS, %-NH, %NH)"
                .into(),
        ),
        _ => Err(format!(
            "{s:?}: expected \"proxy\", \"redirect ip\" or \"redirect name FORMAT\" (such as \"redirect name %-2S.%-2H\")"
        )),
    }
}

/// A route's placement as `berth check --explain` shows it.
pub fn describe(b: &Balance) -> String {
    let handover = match &b.handover {
        Handover::Proxy => "proxy".to_string(),
        Handover::RedirectIp => "redirect ip".to_string(),
        Handover::RedirectName(f) => format!("redirect name {f}"),
    };
    let mut out = format!("balance [{}], handover {handover}", b.funcs.join(", "));
    if b.sticky {
        out.push_str(", sticky");
    }
    if b.self_redirect {
        out.push_str(", self_redirect");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Loads a main file of `[server]` (listening on 127.0.0.1:18080),
    /// then `rest`, from `dir`.
    fn load(dir: &Path, rest: &str) -> Result<super::super::Config, String> {
        let path = dir.join("berth.toml");
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:18080\"]\nuser = \"nobody\"\nmin_uid = 1\nstate_dir = \"{0}/state\"\nlog_dir = \"{0}/log\"\n{rest}",
            dir.display()
        );
        std::fs::write(&path, text).unwrap();
        super::super::load(&path).map_err(|p| p.to_string())
    }

    fn secret(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn cidrs_are_networks_or_single_addresses() {
        let net = |s: &str| parse_cidr(s).map(|c| (c.addr.to_string(), c.prefix));
        assert_eq!(net("10.0.0.0/8"), Ok(("10.0.0.0".into(), 8)));
        assert_eq!(net("127.0.0.1"), Ok(("127.0.0.1".into(), 32)));
        assert_eq!(net("::1"), Ok(("::1".into(), 128)));
        assert_eq!(net("fd00::/8"), Ok(("fd00::".into(), 8)));
        assert_eq!(net("0.0.0.0/0"), Ok(("0.0.0.0".into(), 0)));
        assert_eq!(net("192.0.2.7/32"), Ok(("192.0.2.7".into(), 32)));
        let why = |s: &str| parse_cidr(s).unwrap_err();
        assert!(
            why("10.0.0.0/33").contains("0 to 32"),
            "{}",
            why("10.0.0.0/33")
        );
        assert!(why("::/129").contains("0 to 128"));
        assert!(why("10.1.2.3/8").contains("did you mean \"10.0.0.0/8\""));
        assert!(why("fd00::1/64").contains("did you mean \"fd00::/64\""));
        for bad in ["10.0.0/8", "example.net/24", "10.0.0.0/", "10.0.0.0/x", ""] {
            assert!(why(bad).contains("is not a network"), "{bad}: {}", why(bad));
        }
    }

    #[test]
    fn handover_is_proxy_or_a_redirect() {
        assert_eq!(parse_handover("proxy"), Ok(Handover::Proxy));
        assert_eq!(parse_handover("redirect  ip"), Ok(Handover::RedirectIp));
        assert_eq!(
            parse_handover("redirect name %-2S.%-2H"),
            Ok(Handover::RedirectName("%-2S.%-2H".into()))
        );
        assert!(
            parse_handover("redirect name")
                .unwrap_err()
                .contains("needs a FORMAT")
        );
        assert!(
            parse_handover("redirect name a/b")
                .unwrap_err()
                .starts_with("redirect name: ")
        );
        assert!(
            parse_handover("redirect")
                .unwrap_err()
                .contains("expected \"proxy\"")
        );
        assert!(parse_handover("Proxy").is_err());
    }

    #[test]
    fn seeds_and_names_are_host_names_and_ports() {
        for good in [
            "10.0.0.2:7946",
            "[fd00::2]:7946",
            "node2.example.net:7946",
            "n2:1",
        ] {
            assert_eq!(check_seed(good), Ok(()), "{good}");
        }
        for bad in [
            "10.0.0.2",
            "node2:0",
            "node 2:7946",
            ":7946",
            "10.0.0.2:0",
            "a..b:1",
        ] {
            assert!(check_seed(bad).is_err(), "{bad}");
        }
        assert!(check_name("www3.sanfran.hosting.com").is_ok());
        assert!(check_name("Node_1").is_ok());
        for bad in ["", "node 1", "a..b", "-x", "n\u{1b}"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_secret_must_be_private_and_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let good = secret(d, "good", "0123456789abcdef0123\n", 0o600);
        assert_eq!(read_secret(&good).unwrap(), b"0123456789abcdef0123");
        let ro = secret(d, "ro", "0123456789abcdef", 0o400);
        assert!(read_secret(&ro).is_ok());
        for (mode, why) in [
            (0o644, "is readable by others (chmod 600)"),
            (0o640, "is readable by its group (chmod 600)"),
            (0o602, "is writable by others (chmod 600)"),
            (0o620, "is writable by its group (chmod 600)"),
        ] {
            let p = secret(d, "loose", "0123456789abcdef0123", mode);
            let got = read_secret(&p).unwrap_err();
            assert_eq!(got, format!("{} {why}", p.display()), "{mode:o}");
        }
        let short = secret(d, "short", "0123456789abcde \n\n", 0o600);
        assert!(read_secret(&short).unwrap_err().contains("holds 15 bytes"));
        let long = secret(d, "long", &"x".repeat(MAX_SECRET + 1), 0o600);
        assert!(read_secret(&long).unwrap_err().contains("larger than 4096"));
        assert!(
            read_secret(&d.join("missing"))
                .unwrap_err()
                .contains("No such file")
        );
        assert!(
            read_secret(d)
                .unwrap_err()
                .contains("is not a regular file")
        );
        let fifo = d.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(
            read_secret(&fifo)
                .unwrap_err()
                .contains("is not a regular file")
        );
        if rustix::process::geteuid().is_root() {
            let theirs = secret(d, "theirs", "0123456789abcdef0123", 0o600);
            std::os::unix::fs::chown(&theirs, Some(1), None).unwrap();
            let why = read_secret(&theirs).unwrap_err();
            assert!(
                why.contains("is owned by uid 1, but must be root's"),
                "{why}"
            );
        }
    }

    #[test]
    fn cluster_keys_default_as_documented() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        secret(d, "cluster.key", "0123456789abcdef0123\n", 0o600);
        let cfg = load(
            d,
            "[cluster]\nbind = \"127.0.0.1:7946\"\nsecret_file = \"cluster.key\"\n",
        )
        .unwrap();
        let c = cfg.cluster.unwrap();
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        assert_eq!(c.name, host);
        assert_eq!(c.advertise, "127.0.0.1:7946".parse().unwrap());
        assert_eq!(c.proxy, "127.0.0.1:18080".parse().unwrap());
        assert_eq!(c.interval, Duration::from_secs(1));
        assert_eq!(c.secret, b"0123456789abcdef0123");
        assert_eq!(c.secret_file, d.join("cluster.key"));
        assert!(c.seeds.is_empty() && c.accept_from.is_empty());
        assert_eq!(c.placement, Placement::default());
        assert!(
            !format!("{c:?}").contains("0123456789abcdef"),
            "Debug shows the secret"
        );

        let cfg = load(
            d,
            "[cluster]\nname = \"www3.sanfran\"\nbind = \"0.0.0.0:7946\"\nadvertise = \"10.0.0.3:7000\"\n\
             proxy = \"10.0.0.3:80\"\nseeds = [\"10.0.0.1:7946\", \"node2.example:7946\"]\ninterval = \"250ms\"\n\
             secret_file = \"cluster.key\"\naccept_from = [\"10.0.0.0/8\", \"::1\"]\n\
             balance = [\"byAge 6\", \"byLoad   0.5\"]\nhandover = \"redirect ip\"\nsticky = true\nself_redirect = true\n",
        )
        .unwrap();
        let c = cfg.cluster.unwrap();
        assert_eq!(c.name, "www3.sanfran");
        assert_eq!(c.bind, "0.0.0.0:7946".parse().unwrap());
        assert_eq!(c.advertise, "10.0.0.3:7000".parse().unwrap());
        assert_eq!(c.proxy, "10.0.0.3:80".parse().unwrap());
        assert_eq!(c.seeds, ["10.0.0.1:7946", "node2.example:7946"]);
        assert_eq!(c.interval, Duration::from_millis(250));
        assert_eq!(c.accept_from.len(), 2);
        assert_eq!(
            c.placement.balance(),
            Some(Balance {
                funcs: vec!["byAge 6".into(), "byLoad 0.5".into()],
                handover: Handover::RedirectIp,
                sticky: true,
                self_redirect: true,
            })
        );
    }

    #[test]
    fn every_bad_cluster_key_is_reported_at_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        secret(d, "loose.key", "0123456789abcdef0123\n", 0o644);
        let text = "[cluster]\nname = \"node one\"\nbind = \"0.0.0.0:0\"\nproxy = \"[::]:80\"\n\
             seeds = [\"a:1\", \"a:1\", \"b\"]\ninterval = \"50ms\"\nsecret_file = \"loose.key\"\n\
             accept_from = [\"10.0.0.1/8\"]\nbalance = [\"byAge 6\",\n  \"byLod 0.5\"]\n\
             handover = \"redirect name\"\nsticky = \"yes\"\nnodes = 3\n";
        let err = load(d, text).unwrap_err();
        // Lines of `rest`, after the 6 lines of [server].
        for (line, key, why) in [
            (8, "cluster.name", "\"node one\" is not a node name"),
            (9, "cluster.bind", "0.0.0.0:0: needs a port"),
            (10, "cluster.proxy", "[::]:80 is every address of this node"),
            (11, "cluster.seeds", "a:1 is listed twice"),
            (11, "cluster.seeds", "\"b\" is not host:port"),
            (12, "cluster.interval", "must be between 100ms and 1m"),
            (
                13,
                "cluster.secret_file",
                "loose.key is readable by others (chmod 600)",
            ),
            (14, "cluster.accept_from", "did you mean \"10.0.0.0/8\"?"),
            (
                16,
                "cluster.balance[1]",
                "byLod: no such candidacy function; expected one of: byAge,",
            ),
            (17, "cluster.handover", "redirect name needs a FORMAT"),
            (18, "cluster.sticky", "expected true or false"),
            (19, "cluster.nodes", "unknown key"),
        ] {
            let want = format!("berth.toml:{line}: {key}: ");
            assert!(
                err.lines().any(|l| l.contains(&want) && l.contains(why)),
                "{want}{why} not in:\n{err}"
            );
        }
        let err = load(d, "[cluster]\nbind = \"[::]:7946\"\n").unwrap_err();
        assert!(
            err.contains(
                ":7: cluster.advertise: is required when bind ([::]:7946) is every address"
            ),
            "{err}"
        );
        assert!(
            err.contains(":7: cluster.secret_file: is required"),
            "{err}"
        );
        let err = load(d, "[cluster]\nsecret_file = \"loose.key\"\n").unwrap_err();
        assert!(err.contains(":7: cluster.bind: is required"), "{err}");
    }

    /// `[tenant.ta]` (user daemon) with a site in `d` and `routes`.
    fn tenant(d: &Path, routes: &str) -> String {
        format!(
            "[tenant.ta]\nuser = \"daemon\"\n[[tenant.ta.site]]\nhosts = [\"a.test\"]\nroot = \"{}\"\n{routes}",
            d.display()
        )
    }

    /// The placement of each route, by path.
    fn placements(cfg: &super::super::Config) -> Vec<(String, Option<Balance>)> {
        let mut out: Vec<_> = cfg.tenants[0].sites[0]
            .routes
            .iter()
            .map(|r| (r.path.clone(), r.balance.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn a_routes_keys_override_the_clusters_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        secret(d, "cluster.key", "0123456789abcdef0123\n", 0o600);
        let cluster = "[cluster]\nbind = \"127.0.0.1:7946\"\nsecret_file = \"cluster.key\"\n\
            balance = [\"byAge 6\", \"byLoad 0.5\"]\nsticky = true\n";
        let routes = "[[tenant.ta.site.route]]\npath = \"/\"\n\
            [[tenant.ta.site.route]]\npath = \"/off/\"\nbalance = \"off\"\n\
            [[tenant.ta.site.route]]\npath = \"/pinned/\"\nbalance = [\"byHostname ^node2$\"]\nsticky = false\n\
            [[tenant.ta.site.route]]\npath = \"/moved/\"\nhandover = \"redirect name %-2S.%-2H\"\nself_redirect = true\n";
        let cfg = load(d, &format!("{cluster}{}", tenant(d, routes))).unwrap();
        let balance = |funcs: &[&str], handover: Handover, sticky: bool, self_redirect: bool| {
            Some(Balance {
                funcs: funcs.iter().map(|f| f.to_string()).collect(),
                handover,
                sticky,
                self_redirect,
            })
        };
        let default = ["byAge 6", "byLoad 0.5"];
        assert_eq!(
            placements(&cfg),
            [
                ("/".into(), balance(&default, Handover::Proxy, true, false)),
                (
                    "/moved".into(),
                    balance(
                        &default,
                        Handover::RedirectName("%-2S.%-2H".into()),
                        true,
                        true
                    )
                ),
                ("/off".into(), None),
                (
                    "/pinned".into(),
                    balance(&["byHostname ^node2$"], Handover::Proxy, false, false)
                ),
            ]
        );
        // [cluster] without balance: off unless the route says.
        let cfg = load(
            d,
            &format!(
                "[cluster]\nbind = \"127.0.0.1:7946\"\nsecret_file = \"cluster.key\"\nhandover = \"redirect ip\"\n{}",
                tenant(d, routes)
            ),
        )
        .unwrap();
        let got = placements(&cfg);
        assert_eq!(got[0].1, None, "{got:?}");
        assert_eq!(
            got[3].1,
            balance(&["byHostname ^node2$"], Handover::RedirectIp, false, false)
        );
    }

    #[test]
    fn a_route_placed_over_no_farm_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let routes = "[[tenant.ta.site.route]]\npath = \"/a/\"\nbalance = [\"byAge\"]\n\
            [[tenant.ta.site.route]]\npath = \"/b/\"\nbalance = \"off\"\n\
            [[tenant.ta.site.route]]\npath = \"/c/\"\nsticky = true\nhandover = \"nowhere\"\n";
        let err = load(d, &tenant(d, routes)).unwrap_err();
        // [server] is 6 lines, the tenant's 5 before the routes.
        for want in [
            ":14: tenant.ta.site[0].route[0].balance: needs a [cluster] section",
            ":20: tenant.ta.site[0].route[2].sticky: needs a [cluster] section",
            ":21: tenant.ta.site[0].route[2].handover: \"nowhere\": expected \"proxy\"",
            ":21: tenant.ta.site[0].route[2].handover: needs a [cluster] section",
        ] {
            assert!(err.contains(want), "{want} not in:\n{err}");
        }
        assert_eq!(err.lines().count(), 4, "{err}");
        let cfg = load(
            d,
            &tenant(
                d,
                "[[tenant.ta.site.route]]\npath = \"/b/\"\nbalance = \"off\"\n",
            ),
        )
        .unwrap();
        assert_eq!(placements(&cfg), [("/b".into(), None)]);
    }

    #[test]
    fn every_balance_entry_is_checked_at_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        secret(d, "cluster.key", "0123456789abcdef0123\n", 0o600);
        let routes = "[[tenant.ta.site.route]]\npath = \"/\"\nbalance = [\n  \"byAge 6\",\n  \"byHostname\",\n  \"byLoad -1\",\n  7,\n]\n\
            [[tenant.ta.site.route]]\npath = \"/x/\"\nbalance = []\n";
        let text = format!(
            "[cluster]\nbind = \"127.0.0.1:7946\"\nsecret_file = \"cluster.key\"\n{}",
            tenant(d, routes)
        );
        let err = load(d, &text).unwrap_err();
        for want in [
            ":19: tenant.ta.site[0].route[0].balance[1]: byHostname needs a regular expression",
            ":20: tenant.ta.site[0].route[0].balance[2]: byLoad: \"-1\" is not a number of 0 or more",
            ":21: tenant.ta.site[0].route[0].balance[3]: expected a string, found integer",
            ":25: tenant.ta.site[0].route[1].balance: an empty list",
        ] {
            assert!(err.contains(want), "{want} not in:\n{err}");
        }
    }

    #[test]
    fn proxy_needs_a_plain_listener_to_default_to() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        secret(d, "cluster.key", "0123456789abcdef0123\n", 0o600);
        let path = d.join("berth.toml");
        let text = format!(
            "[server]\ntls_listen = [\"127.0.0.1:18443\"]\nuser = \"daemon\"\nstate_dir = \"{0}/state\"\nlog_dir = \"{0}/log\"\n\
             [cluster]\nbind = \"127.0.0.1:7946\"\nsecret_file = \"cluster.key\"\n",
            d.display()
        );
        std::fs::write(&path, text).unwrap();
        let err = super::super::load(&path).unwrap_err().to_string();
        assert!(
            err.contains(":6: cluster.proxy: not set, and [server] has no plain `listen`"),
            "{err}"
        );
    }
}
