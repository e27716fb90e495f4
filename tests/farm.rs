//! A farm of three berth nodes on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (issue
//! 11), as root with a real tenant and shell CGI scripts: the nodes find
//! each other over authenticated gossip, place requests with mod_backhand's
//! candidacy functions and hand them over by proxy or redirect; a dead node
//! leaves every list and costs no request; forged, unsigned and replayed
//! datagrams and forged marks change nothing and are counted; the client's
//! address survives the hop and spoofed proxy headers do not; a node with
//! another configuration is flagged on the status page.
//!
//! Which node served a request is what its script says: `SERVER_ADDR` is the
//! address of the listener that ran it (127.0.0.N).

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::farm::*;
use common::*;

/// The routes every node serves (each under its own directory of the root).
const ROUTES: &str = r#"
[[tenant.tf.site.route]]
path = "/spread/"
app = "scripts"
extensions = ["cgi"]

[[tenant.tf.site.route]]
path = "/pinned/"
app = "scripts"
extensions = ["cgi"]
balance = ["byHostname ^c$"]

[[tenant.tf.site.route]]
path = "/sticky/"
app = "scripts"
extensions = ["cgi"]
balance = ["bySession", "byRandom"]
sticky = true

[[tenant.tf.site.route]]
path = "/redirect/"
app = "scripts"
extensions = ["cgi"]
balance = ["byHostname ^b$"]
handover = "redirect name %1S.%-2H"

[[tenant.tf.site.route]]
path = "/local/"
app = "scripts"
extensions = ["cgi"]
balance = "off"
"#;

#[test]
fn three_nodes_find_each_other_spread_a_stream_and_lose_no_request_when_one_dies() {
    let farm = Farm::start_spec(Spec {
        balance: r#"["byAge 3", "byRandom"]"#,
        routes: ROUTES,
        ..Spec::default()
    });
    farm.wait_joined();
    // Every node shows the other two with fresh figures.
    let seen = farm.seen_by(1);
    for n in ["a", "c"] {
        assert!(seen[n]["age_seconds"].as_f64().unwrap() < 3.0, "{seen:?}");
        assert!(
            seen[n]["figures"]["cpus"].as_u64().unwrap() >= 1,
            "{seen:?}"
        );
        assert_eq!(seen[n]["config_differs"], false, "{seen:?}");
    }

    // A constant stream to node a spreads over all three.
    let mut by_node: HashMap<String, u32> = HashMap::new();
    for _ in 0..45 {
        let (status, _, body) = get(farm.addr(0), "farm.test", "/spread/who.cgi", "");
        assert_eq!(status, 200, "{body}");
        *by_node.entry(field(&body, "node").to_string()).or_default() += 1;
    }
    for ip in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        assert!(by_node.get(ip).copied().unwrap_or(0) >= 3, "{by_node:?}");
    }
    // Node a counted what it placed; the others logged where it came from.
    let placed = farm.seen_by(0);
    assert!(placed["b"]["placed"].as_u64().unwrap() >= 3, "{placed:?}");
    let log_b = farm.nodes[1].server.access_log("tf");
    assert!(
        log_b.lines().any(|l| l.ends_with(" node=b from=a")),
        "{log_b}"
    );

    // Node c dies without a word. Requests keep coming to a: none fails,
    // and once c's figures are older than byAge (3 s), nothing is placed
    // on it any more.
    let mut farm = farm;
    let mut c = farm.nodes.pop().unwrap();
    c.server.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = c.server.child.as_mut().unwrap().wait();
    let died = Instant::now();
    let mut after_age = 0;
    let mut placed_on_c_late = None;
    while died.elapsed() < Duration::from_secs(7) {
        let (status, _, body) = get(farm.addr(0), "farm.test", "/spread/who.cgi", "");
        assert_eq!(status, 200, "a request failed after c died: {body}");
        assert_ne!(field(&body, "node"), "127.0.0.3");
        if died.elapsed() > Duration::from_secs(4) {
            after_age += 1;
            let seen = farm.seen_by(0);
            let now = seen.get("c").map_or(0, |c| c["placed"].as_u64().unwrap());
            match placed_on_c_late {
                None => placed_on_c_late = Some(now),
                Some(before) => assert_eq!(now, before, "placed on c past byAge: {seen:?}"),
            }
        }
    }
    assert!(after_age > 3);
    let seen = farm.seen_by(0);
    assert!(
        seen.get("c")
            .is_none_or(|c| c["age_seconds"].as_f64().unwrap() > 3.0),
        "{seen:?}"
    );
}

#[test]
fn requests_in_flight_spread_a_burst_that_stale_load_figures_would_keep_on_one_node() {
    // byLoad with a bias keeps requests here while the figures (a second
    // old, the same machine) say all nodes are alike; byInFlight, this
    // node's own fresh count, sends the burst on once it has some here.
    let farm = Farm::start_spec(Spec {
        balance: r#"["byAge 3", "byLoad 0.5", "byInFlight"]"#,
        routes: ROUTES,
        ..Spec::default()
    });
    farm.wait_joined();
    let addr = farm.addr(0);
    let burst: Vec<_> = (0..9)
        .map(|_| {
            std::thread::spawn(move || {
                let (status, _, body) = get(addr, "farm.test", "/spread/slow.cgi", "");
                assert_eq!(status, 200, "{body}");
                field(&body, "node").to_string()
            })
        })
        .collect();
    let mut by_node: HashMap<String, u32> = HashMap::new();
    for t in burst {
        *by_node.entry(t.join().unwrap()).or_default() += 1;
    }
    assert_eq!(by_node.len(), 3, "{by_node:?}");
}

#[test]
fn sticky_sessions_pinned_paths_and_redirect_names() {
    let farm = Farm::start_spec(Spec {
        routes: ROUTES,
        ..Spec::default()
    });
    farm.wait_joined();

    // byHostname pins /pinned/ to c, whichever node the client asks.
    for node in 0..3 {
        for _ in 0..3 {
            let (status, _, body) = get(farm.addr(node), "farm.test", "/pinned/who.cgi", "");
            assert_eq!(status, 200, "{body}");
            assert_eq!(field(&body, "node"), "127.0.0.3");
        }
    }
    // A route with balance = "off" is served where it arrives.
    let (_, _, body) = get(farm.addr(1), "farm.test", "/local/who.cgi", "");
    assert_eq!(field(&body, "node"), "127.0.0.2");

    // sticky: the first answer names its node in a signed cookie; with it,
    // every request goes there.
    let (status, head, body) = get(farm.addr(0), "farm.test", "/sticky/who.cgi", "");
    assert_eq!(status, 200, "{body}");
    let first = field(&body, "node").to_string();
    let cookie = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or(l.strip_prefix("Set-Cookie: "))
        })
        .unwrap_or_else(|| panic!("no cookie in {head}"))
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert!(cookie.starts_with("berth_node="), "{cookie}");
    for node in [0, 1, 2, 0, 1, 2] {
        let (_, head, body) = get(
            farm.addr(node),
            "farm.test",
            "/sticky/who.cgi",
            &format!("Cookie: {cookie}\r\n"),
        );
        assert_eq!(field(&body, "node"), first, "with {cookie}");
        assert!(!head.to_ascii_lowercase().contains("set-cookie"), "{head}");
    }
    // A cookie naming a node without the signature is no cookie at all:
    // the requests spread again.
    let forged = format!(
        "Cookie: berth_node={}\r\n",
        if first == "127.0.0.1" { "b" } else { "a" }
    );
    let mut nodes = std::collections::HashSet::new();
    for _ in 0..24 {
        let (_, _, body) = get(farm.addr(0), "farm.test", "/sticky/who.cgi", &forged);
        nodes.insert(field(&body, "node").to_string());
    }
    assert!(nodes.len() >= 2, "{nodes:?}");

    // redirect name: %1S.%-2H for node b and host farm.test is b.farm.test.
    let (status, head, _) = get(farm.addr(0), "farm.test", "/redirect/who.cgi?x=1", "");
    assert_eq!(status, 302, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("location: http://b.farm.test/redirect/who.cgi?x=1"),
        "{head}"
    );
    // Followed (b.farm.test is one of the site's names), it is served by b
    // and not redirected again.
    let mut s = TcpStream::connect(farm.addr(1)).unwrap();
    write!(
        s,
        "GET /redirect/who.cgi HTTP/1.1\r\nHost: b.farm.test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(resp.contains("node=127.0.0.2"), "{resp}");
}

#[test]
fn the_clients_address_survives_the_hop_and_spoofed_proxy_headers_and_marks_do_not() {
    let farm = Farm::start_spec(Spec {
        routes: ROUTES,
        ..Spec::default()
    });
    farm.wait_joined();

    // From 127.0.0.9 to a, pinned to c: c's script sees 127.0.0.9 as the
    // client (from a's mark), not a's address, and no spoofed header.
    let mut s = connect_from(Ipv4Addr::new(127, 0, 0, 9), farm.addr(0));
    let (status, _, body) = request_on(
        &mut s,
        "GET /pinned/who.cgi HTTP/1.1\r\nHost: farm.test\r\n\
         X-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(field(&body, "node"), "127.0.0.3");
    assert_eq!(field(&body, "remote"), "127.0.0.9");
    assert_eq!(field(&body, "forwarded"), "127.0.0.9");
    assert_eq!(
        field(&body, "marks"),
        "0",
        "the mark reached the app: {body}"
    );
    let log_c = farm.nodes[2].server.access_log("tf");
    assert!(
        log_c
            .lines()
            .any(|l| l.contains(" 127.0.0.9 ") && l.ends_with(" node=c from=a")),
        "{log_c}"
    );

    // A client's own mark, made up, is removed and ignored: the request is
    // placed as any other (pinned to c), the client is who it is.
    let made_up = "Berth-Mark: from=x;to=a;for=6.6.6.6:1;proto=https;t=1;sig=AAAA\r\n";
    let mut s = connect_from(Ipv4Addr::new(127, 0, 0, 9), farm.addr(0));
    let (_, _, body) = request_on(
        &mut s,
        &format!("GET /pinned/who.cgi HTTP/1.1\r\nHost: farm.test\r\n{made_up}"),
    );
    assert_eq!(field(&body, "node"), "127.0.0.3");
    assert_eq!(field(&body, "remote"), "127.0.0.9");
    assert_eq!(field(&body, "marks"), "0");

    // A mark signed with the farm's secret but for another node, or too
    // old, is refused: it does not name the client (a node placed the
    // request, so it is served here: tests/farm_attacks.rs).
    let secret = SECRET.trim_end().as_bytes();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let bound = berth::farm::mark::Bound {
        method: "GET",
        host: "farm.test",
        target: "/local/who.cgi",
    };
    let spoof: SocketAddr = "6.6.6.6:1".parse().unwrap();
    for (to, t) in [("b", now), ("a", now - 600)] {
        let mark = berth::farm::mark::sign(secret, bound, "c", to, spoof, true, t);
        let (_, _, body) = get(
            farm.addr(0),
            "farm.test",
            "/local/who.cgi",
            &format!("berth-mark: {mark}\r\n"),
        );
        assert_eq!(field(&body, "remote"), "127.0.0.1", "{mark}");
        assert_eq!(field(&body, "https"), "", "{mark}");
        assert_eq!(field(&body, "marks"), "0");
    }
    // The same mark made for a, fresh, is taken (this is what node c would
    // send): the test holds the secret, as every node does.
    let mark = berth::farm::mark::sign(secret, bound, "c", "a", spoof, true, now);
    let (_, _, body) = get(
        farm.addr(0),
        "farm.test",
        "/local/who.cgi",
        &format!("berth-mark: {mark}\r\n"),
    );
    assert_eq!(field(&body, "remote"), "6.6.6.6");
    assert_eq!(field(&body, "https"), "on");
    let refused = farm.status(0)["cluster"]["marks_refused"].as_u64().unwrap();
    assert!(refused >= 3, "marks refused: {refused}");
}

#[test]
fn forged_unsigned_and_replayed_datagrams_are_dropped_and_counted() {
    // A socket of the test is one of a's seeds: a gossips to it, and what
    // it gets is a genuine datagram to replay.
    let trap = UdpSocket::bind("127.0.0.1:0").unwrap();
    trap.set_read_timeout(Some(WITHIN)).unwrap();
    let farm = Farm::start_spec(Spec {
        routes: ROUTES,
        seeds_extra: &[trap.local_addr().unwrap()],
        ..Spec::default()
    });
    farm.wait_joined();
    let mut genuine = [0u8; 65536];
    let (len, from) = trap.recv_from(&mut genuine).unwrap();
    assert_eq!(from.ip(), Ipv4Addr::new(127, 0, 0, 1));
    let genuine = &genuine[..len];

    let b_gossip = SocketAddr::from(([127, 0, 0, 2], farm.gossip));
    let dropped = |reason: &str| -> u64 {
        farm.status(1)["cluster"]["dropped"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r[0] == reason)
            .map_or(0, |r| r[1].as_u64().unwrap())
    };
    let before: HashMap<&str, u64> = ["malformed", "bad_mac", "replayed"]
        .into_iter()
        .map(|r| (r, dropped(r)))
        .collect();
    // Forged: the genuine datagram with its last byte (of the MAC) changed.
    let mut forged = genuine.to_vec();
    *forged.last_mut().unwrap() ^= 1;
    trap.send_to(&forged, b_gossip).unwrap();
    // Unsigned: bytes that are no envelope at all.
    trap.send_to(b"\x00\x01hello, I am a node", b_gossip)
        .unwrap();
    // Replayed: the genuine one, twice (b never got it: it went to the
    // trap; the first copy may pass, the second is a replay).
    trap.send_to(genuine, b_gossip).unwrap();
    trap.send_to(genuine, b_gossip).unwrap();
    let counted = eventually(WITHIN, || {
        dropped("bad_mac") > before["bad_mac"]
            && dropped("malformed") > before["malformed"]
            && dropped("replayed") > before["replayed"]
    });
    assert!(counted, "{:#}", farm.status(1)["cluster"]);
    // And nothing changed: still the three nodes, all alive.
    farm.wait_joined();
    assert_eq!(farm.seen_by(1).len(), 3);
}

#[test]
fn a_node_with_another_configuration_is_flagged_on_the_status_page() {
    let extra = "\n[[tenant.tf.site.route]]\npath = \"/only-on-c/\"\n";
    let farm = Farm::start_spec(Spec {
        routes: ROUTES,
        extra: ["", "", extra],
        ..Spec::default()
    });
    farm.wait_joined();
    let seen = farm.seen_by(0);
    assert_eq!(seen["b"]["config_differs"], false, "{seen:?}");
    assert_eq!(seen["c"]["config_differs"], true, "{seen:?}");
    let addr = SocketAddr::from((farm.nodes[0].ip, farm.admin));
    let html = raw(
        addr,
        "GET /status HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    );
    assert!(
        html.contains("Not the same configuration or version as this node: c "),
        "{html}"
    );
    let metrics = raw(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    );
    assert!(
        metrics.contains("berth_cluster_node_config_differs{node=\"c\"} 1"),
        "{metrics}"
    );

    // c reloads the farm's configuration: the same gossip goes on (the
    // node is not restarted in the farm) with the new fingerprint, and the
    // flag goes.
    let c_file = farm.dir.join("c.toml");
    let text = std::fs::read_to_string(&c_file).unwrap().replace(extra, "");
    std::fs::write(&c_file, text).unwrap();
    farm.nodes[2]
        .server
        .signal(nix::sys::signal::Signal::SIGHUP);
    let agreed = eventually(WITHIN, || farm.seen_by(0)["c"]["config_differs"] == false);
    assert!(agreed, "{:#}", farm.status(0)["cluster"]);
    let out = farm.nodes[2].server.output();
    assert_eq!(out.matches("farm: node c gossips").count(), 1, "{out}");
}
