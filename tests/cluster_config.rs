//! `[cluster]` and the route keys that place requests over a farm
//! (`balance`, `handover`, `sticky`, `self_redirect`), as `berth check`
//! reads them: a good farm configuration passes and shows the node's
//! configuration fingerprint (the same on nodes that differ only in
//! `[server]` and `[cluster]`), every bad key is `file:line: key: why`, a
//! secret others may read is refused, and so are placement without a farm
//! and placement in a tenant's own file; and as `berth serve` runs them:
//! the gossip socket, bound by the supervisor, reaches the front end, a
//! reload moving `bind` moves it, one that cannot bind changes nothing, and
//! no tenant can bind beside it.
mod common;
use common::apps::{Home, run_as};
use common::*;

use std::fs;
use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a reload or a new front end's plan may take to show: far more
/// than either needs, for a loaded 2-core machine running other tests.
const WITHIN: Duration = Duration::from_secs(20);

/// `dir/NAME` holding a 32-byte secret, mode `mode`.
fn secret(dir: &Dir, name: &str, mode: u32) -> PathBuf {
    let path = dir.write(name, "c2VjcmV0LWZvci10aGUtdGVzdC1mYXJtLTAxMjM0\n");
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// A UDP port free now on 127.0.0.1 (outside the ephemeral range, as
/// [`free_port`] gives).
fn free_udp_port() -> u16 {
    loop {
        let port = free_port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A node's main file: `server` (a whole `[server]` block), `[cluster]`
/// with `cluster` lines and the secret `dir/cluster.key`, and tenant tc
/// (berth-tcc1) with the site c.test rooted at `dir/c`, an app `sh` and
/// `routes`.
fn node(dir: &Dir, server: &str, cluster: &str, routes: &str) -> String {
    ensure_user("berth-tcc1");
    dir.mkdir("c");
    let key = dir.join("cluster.key");
    if !key.exists() {
        secret(dir, "cluster.key", 0o600);
    }
    format!(
        r#"{server}
[cluster]
secret_file = "{key}"
{cluster}

[tenant.tc]
user = "berth-tcc1"
home = "{root}"

[tenant.tc.app.sh]
protocol = "cgi"
command = ["/bin/sh"]
dir = "{root}"

[[tenant.tc.site]]
hosts = ["c.test"]
root = "{root}"
{routes}
"#,
        key = key.display(),
        root = dir.join("c").display(),
    )
}

/// The fingerprint line `berth check` prints for `main` (which must pass).
fn fingerprint(main: &Path) -> String {
    let (code, out, err) = berth_check(main, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("cluster: "))
        .unwrap_or_else(|| panic!("no cluster line in:\n{out}"));
    line.rsplit_once(' ').unwrap().1.to_string()
}

const ROUTES: &str = r#"
[[tenant.tc.site.route]]
path = "/app/"
app = "sh"
balance = ["byHostname ^node2$"]

[[tenant.tc.site.route]]
path = "/static/"
balance = "off"

[[tenant.tc.site.route]]
path = "/"
handover = "redirect name %-2S.%-2H"
sticky = true
"#;

#[test]
fn a_good_farm_config_passes_and_shows_each_routes_placement() {
    require_root();
    let dir = Dir::new();
    let (server, _, _) = server_block(&dir, "");
    let cluster = r#"name = "node1"
bind = "127.0.0.1:7946"
advertise = "127.0.0.1:7946"
proxy = "127.0.0.1:8080"
seeds = ["127.0.0.2:7946", "node3.farm.test:7946"]
interval = "1s"
accept_from = ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]
balance = ["byAge 6", "byLoad 0.5"]
handover = "proxy"
sticky = false
self_redirect = false"#;
    let main = dir.write("berth.toml", node(&dir, &server, cluster, ROUTES));
    let (code, out, err) = berth_check(&main, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    let f = fingerprint(&main);
    assert!(
        out.contains(&format!(
            "cluster: node node1, configuration fingerprint {f}"
        )),
        "{out}"
    );
    assert_eq!(f.len(), 16, "{f}");

    let (code, out, err) = berth_check(&main, &["--tenant", "tc", "--explain"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let row = |path: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(&format!("{path} ")))
            .unwrap_or_else(|| panic!("no route {path} in:\n{out}"))
            .to_string()
    };
    assert!(
        row("/app").contains("app sh, balance [byHostname ^node2$], handover proxy"),
        "{out}"
    );
    assert!(!row("/static").contains("balance"), "{out}");
    assert!(
        row("/").contains(
            "static files, balance [byAge 6, byLoad 0.5], handover redirect name %-2S.%-2H, sticky"
        ),
        "{out}"
    );
}

#[test]
fn nodes_differing_only_in_server_and_cluster_show_one_fingerprint_and_a_changed_route_another() {
    require_root();
    let dir = Dir::new();
    let (server1, _, _) = server_block(&dir, "");
    let server2 = format!(
        "[server]\nlisten = [\"127.0.0.2:18080\"]\ntls_listen = [\"127.0.0.2:18443\"]\nuser = \"berth-tfront\"\n\
         state_dir = \"{0}/state2\"\nlog_dir = \"{0}/log2\"\nmax_connections = 99\n",
        dir.path().display()
    );
    let one = dir.write(
        "node1.toml",
        node(
            &dir,
            &server1,
            "name = \"node1\"\nbind = \"127.0.0.1:7946\"",
            ROUTES,
        ),
    );
    let two = dir.write(
        "node2.toml",
        node(
            &dir,
            &server2,
            "name = \"node2\"\nbind = \"127.0.0.2:7000\"\nseeds = [\"127.0.0.1:7946\"]\ninterval = \"3s\"",
            ROUTES,
        ),
    );
    assert_eq!(fingerprint(&one), fingerprint(&two));
    let changed = dir.write(
        "node3.toml",
        node(
            &dir,
            &server1,
            "name = \"node1\"\nbind = \"127.0.0.1:7946\"",
            &ROUTES.replace("^node2$", "^node3$"),
        ),
    );
    assert_ne!(fingerprint(&one), fingerprint(&changed));
}

#[test]
fn each_bad_cluster_key_is_reported_at_its_line() {
    require_root();
    let dir = Dir::new();
    let (server, _, _) = server_block(&dir, "");
    let cluster = r#"name = "node one"
bind = "127.0.0.1:99999"
advertise = "0.0.0.0:7946"
seeds = ["node2"]
interval = "2m"
accept_from = ["10.1.2.3/8", "::1/129"]
balance = ["byAge 6", "byLoad half"]
handover = "redirect name www/%1S"
self_redirect = 1
members = 3"#;
    let text = node(&dir, &server, cluster, "");
    let main = dir.write("berth.toml", &text);
    let (code, out, err) = berth_check(&main, &[]);
    assert_eq!(code, Some(1), "{out}{err}");
    let at = |needle: &str| format!("{}:{}: ", main.display(), line_of(&text, needle));
    for (needle, key, why) in [
        ("name = ", "cluster.name", "\"node one\" is not a node name"),
        (
            "bind = ",
            "cluster.bind",
            "\"127.0.0.1:99999\" is not an address:port",
        ),
        (
            "advertise = ",
            "cluster.advertise",
            "0.0.0.0:7946 is every address of this node",
        ),
        ("seeds = ", "cluster.seeds", "\"node2\" is not host:port"),
        (
            "interval = ",
            "cluster.interval",
            "must be between 100ms and 1m",
        ),
        (
            "accept_from = ",
            "cluster.accept_from",
            "\"10.1.2.3/8\" has bits set past its /8: did you mean \"10.0.0.0/8\"?",
        ),
        (
            "accept_from = ",
            "cluster.accept_from",
            "\"::1/129\": the prefix of an IPv6 network is 0 to 128",
        ),
        (
            "balance = ",
            "cluster.balance[1]",
            "byLoad: \"half\" is not a number of 0 or more",
        ),
        ("handover = ", "cluster.handover", "redirect name: "),
        (
            "self_redirect = ",
            "cluster.self_redirect",
            "expected true or false, found integer",
        ),
        (
            "members = ",
            "cluster.members",
            "unknown key; expected one of: name, bind",
        ),
    ] {
        let want = format!("{}{key}: {why}", at(needle));
        assert!(
            out.lines().any(|l| l.starts_with(&want)),
            "{want}\nnot in:\n{out}"
        );
    }
    assert_eq!(out.lines().count(), 11, "{out}");
}

#[test]
fn a_world_readable_or_foreign_secret_is_refused() {
    require_root();
    let dir = Dir::new();
    let (server, _, _) = server_block(&dir, "");
    let text = node(&dir, &server, "bind = \"127.0.0.1:7946\"", "");
    let main = dir.write("berth.toml", &text);
    let key = dir.join("cluster.key");
    let line = line_of(&text, "secret_file = ");
    for (mode, why) in [
        (0o644, "is readable by others (chmod 600)"),
        (0o660, "is writable by its group (chmod 600)"),
    ] {
        fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
        let (code, out, _) = berth_check(&main, &[]);
        assert_eq!(code, Some(1), "{out}");
        assert_eq!(
            out,
            format!(
                "{}:{line}: cluster.secret_file: {} {why}\n",
                main.display(),
                key.display()
            )
        );
    }
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let (uid, gid) = ensure_user("berth-tcc1");
    std::os::unix::fs::chown(&key, Some(uid), Some(gid)).unwrap();
    let (code, out, _) = berth_check(&main, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("is owned by uid {uid}, but must be root's")),
        "{out}"
    );
    std::os::unix::fs::chown(&key, Some(0), Some(0)).unwrap();
    fs::write(&key, "short\n").unwrap();
    let (_, out, _) = berth_check(&main, &[]);
    assert!(
        out.contains("holds 5 bytes (trailing whitespace aside); a secret needs at least 16"),
        "{out}"
    );
}

#[test]
fn a_route_with_balance_and_no_cluster_is_refused() {
    require_root();
    let dir = Dir::new();
    let (server, _, _) = server_block(&dir, "");
    let text = node(&dir, &server, "bind = \"127.0.0.1:7946\"", ROUTES);
    // The same tenant without [cluster].
    let start = text.find("[cluster]").unwrap();
    let end = text.find("[tenant.tc]").unwrap();
    let text = format!("{}{}", &text[..start], &text[end..]);
    let main = dir.write("berth.toml", &text);
    let (code, out, _) = berth_check(&main, &[]);
    assert_eq!(code, Some(1), "{out}");
    let why = "needs a [cluster] section: without one this node is in no farm to place requests on";
    let want = [
        (
            "balance = [\"byHostname",
            "tenant.tc.site[0].route[0].balance",
        ),
        ("handover = ", "tenant.tc.site[0].route[2].handover"),
        ("sticky = ", "tenant.tc.site[0].route[2].sticky"),
    ]
    .map(|(needle, key)| {
        format!(
            "{}:{}: {key}: {why}",
            main.display(),
            line_of(&text, needle)
        )
    });
    // (`balance = "off"` is not a problem: it places nothing.)
    assert_eq!(out.lines().collect::<Vec<_>>(), want, "{out}");
}

#[test]
fn a_tenants_own_file_setting_placement_is_refused_and_its_routes_get_the_clusters() {
    require_root();
    let dir = Dir::new();
    let home = Home::new(&dir, "h", "berth-tcc2", ensure_user("berth-tcc2"));
    let (server, _, _) = server_block(&dir, "");
    let text = format!(
        r#"{server}
[cluster]
bind = "127.0.0.1:7946"
secret_file = "{key}"
balance = ["byAge 6", "byLoad 0.5"]

[tenant.own]
user = "berth-tcc2"
home = "{home}"
own_config = "~/berth.toml"

[[tenant.own.site]]
hosts = ["own.test"]
root = "{home}/public"
"#,
        key = secret(&dir, "cluster.key", 0o600).display(),
        home = home.path.display(),
    );
    let main = dir.write("berth.toml", &text);
    let own = "[[route]]\npath = \"/mine/\"\nbalance = \"off\"\nhandover = \"redirect ip\"\n\
               sticky = true\nself_redirect = true\n";
    home.write("berth.toml", own, 0o644);
    home.own();
    let (code, out, _) = berth_check(&main, &["--tenant", "own"]);
    assert_eq!(code, Some(1), "{out}");
    let why = "only the administrator places requests over the farm ([cluster] and its own routes); your routes get [cluster]'s placement";
    let file = home.join("berth.toml");
    for (line, key) in [
        (3, "balance"),
        (4, "handover"),
        (5, "sticky"),
        (6, "self_redirect"),
    ] {
        let want = format!("{}:{line}: route[0].{key}: {why}", file.display());
        assert!(out.lines().any(|l| l == want), "{want}\nnot in:\n{out}");
    }
    assert!(out.contains("refused (4 problem(s))"), "{out}");

    // Without them, its route is placed as [cluster] says.
    home.write("berth.toml", "[[route]]\npath = \"/mine/\"\n", 0o644);
    home.own();
    let (code, out, err) = berth_check(&main, &["--tenant", "own", "--explain"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let row = out
        .lines()
        .find(|l| l.trim_start().starts_with("/mine "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains("balance [byAge 6, byLoad 0.5], handover proxy"),
        "{out}"
    );
}

#[test]
fn discovered_sites_get_the_clusters_placement() {
    require_root();
    let dir = Dir::new();
    let root = dir.mkdir("sites");
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
    let ids = ensure_user("berth-tcc3");
    dir.write("sites/d.test/public/index.html", "d\n");
    dir.chown("sites/d.test", ids.0, ids.1);
    let (server, _, _) = server_block(&dir, "");
    let text = format!(
        r#"{server}
[cluster]
bind = "127.0.0.1:7946"
secret_file = "{key}"
balance = ["byLoad", "byInFlight"]
self_redirect = true

[discovery]
root = "{root}"

[discovery.handler.sh]
extensions = ["sh"]
protocol = "cgi"
"#,
        key = secret(&dir, "cluster.key", 0o600).display(),
        root = root.display(),
    );
    let main = dir.write("berth.toml", &text);
    let (code, out, err) = berth_check(&main, &["--tenant", "berth-tcc3", "--explain"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let row = out
        .lines()
        .find(|l| l.trim_start().starts_with("/ "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains("app sh for .sh, balance [byLoad, byInFlight], handover proxy, self_redirect"),
        "{out}"
    );
}

/// The inodes of the UDP sockets bound at 127.0.0.1:`port`.
fn udp_inodes(port: u16) -> Vec<String> {
    let local = format!("0100007F:{port:04X}");
    fs::read_to_string("/proc/net/udp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.get(1) == Some(&local.as_str())).then(|| cols[9].to_string())
        })
        .collect()
}

/// Whether process `pid` holds the socket `inode`.
fn holds(pid: u32, inode: &str) -> bool {
    let want = format!("socket:[{inode}]");
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == want))
        })
        .unwrap_or(false)
}

/// The one UDP socket at 127.0.0.1:`port`.
fn the_socket_at(port: u16) -> String {
    let inodes = udp_inodes(port);
    assert_eq!(inodes.len(), 1, "sockets at {port}: {inodes:?}");
    inodes[0].clone()
}

#[test]
fn serve_hands_the_gossip_socket_to_the_front_end_and_a_reload_moving_bind_moves_it() {
    require_root();
    let dir = Dir::new();
    let (server, port, tls_port) = server_block(&dir, "");
    let (first, second) = (free_udp_port(), free_udp_port());
    let config = |bind: u16| {
        node(
            &dir,
            &server,
            &format!("bind = \"127.0.0.1:{bind}\""),
            ROUTES,
        )
    };
    let mut s = Server::start(&dir, &config(first), port, tls_port);
    let front = s.front_pid();
    let inode = the_socket_at(first);
    assert!(
        holds(s.pid(), &inode),
        "the supervisor holds no gossip socket"
    );
    assert!(
        eventually(WITHIN, || holds(front, &inode)),
        "the front end never got the gossip socket:\n{}",
        s.output()
    );
    assert!(
        s.output()
            .contains(&format!("gossip socket bound at 127.0.0.1:{first} (UDP)")),
        "{}",
        s.output()
    );

    // A reload with the same bind keeps the very socket.
    s.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(eventually(WITHIN, || s
        .output()
        .matches("configuration reloaded")
        .count()
        == 1));
    assert_eq!(the_socket_at(first), inode);

    // Moved: bound at the new address, and the old one let go of.
    dir.write("berth.toml", config(second));
    s.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        s.wait_output(
            &format!("gossip socket moved from 127.0.0.1:{first} to 127.0.0.1:{second}"),
            WITHIN
        ),
        "{}",
        s.output()
    );
    let moved = the_socket_at(second);
    assert!(holds(s.pid(), &moved));
    assert!(
        eventually(WITHIN, || holds(front, &moved)
            && udp_inodes(first).is_empty()),
        "front end holds the new socket: {}, sockets still at {first}: {:?}",
        holds(front, &moved),
        udp_inodes(first)
    );
    // (The front end is the same one: it took the move from the plan.)
    assert_eq!(s.front_pid(), front);
    assert_eq!(s.stop(), Some(0), "{}", s.output());
}

#[test]
fn a_gossip_bind_that_fails_at_reload_keeps_the_configuration_in_use() {
    require_root();
    let dir = Dir::new();
    let (server, port, tls_port) = server_block(&dir, "");
    let (first, taken) = (free_udp_port(), free_udp_port());
    let config = |bind: u16, routes: &str| {
        node(
            &dir,
            &server,
            &format!("bind = \"127.0.0.1:{bind}\""),
            routes,
        )
    };
    let s = Server::start(&dir, &config(first, ""), port, tls_port);
    let inode = the_socket_at(first);
    let _holder = UdpSocket::bind(("127.0.0.1", taken)).unwrap();
    // The new configuration would also redirect /gone: it must not apply.
    let routes = "[[tenant.tc.site.route]]\npath = \"/gone/\"\nredirect = \"/elsewhere/\"\n";
    dir.write("berth.toml", config(taken, routes));
    s.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        s.wait_output(
            &format!("reload refused: cannot bind the gossip socket (UDP) at 127.0.0.1:{taken}: Address already in use"),
            WITHIN
        ),
        "{}",
        s.output()
    );
    assert_eq!(the_socket_at(first), inode);
    assert!(holds(s.pid(), &inode));
    assert!(holds(s.front_pid(), &inode));
    assert_eq!(status_of(&get_raw(s.addr(), "c.test", "/gone/x")), 404);
}

#[test]
fn a_tenant_cannot_bind_the_gossip_address_beside_berth() {
    require_root();
    let dir = Dir::new();
    let (server, port, tls_port) = server_block(&dir, "");
    let gossip = free_udp_port();
    let s = Server::start(
        &dir,
        &node(&dir, &server, &format!("bind = \"127.0.0.1:{gossip}\""), ""),
        port,
        tls_port,
    );
    // With SO_REUSEADDR on both sockets, Linux lets a second UDP socket of
    // any user bind the same address and hands it berth's datagrams.
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         try:\n    s.bind(('127.0.0.1', {gossip}))\n    print('bound')\n\
         except OSError as e:\n    print('refused', e.errno)\n"
    );
    let out = run_as("berth-tcc1", &["/usr/bin/python3", "-c", &script]);
    assert_eq!(
        out.trim(),
        format!("refused {}", libc::EADDRINUSE),
        "{}",
        s.output()
    );
    assert_eq!(udp_inodes(gossip).len(), 1);
}
