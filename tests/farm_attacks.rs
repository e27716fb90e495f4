//! Attacks on a farm of three berth nodes (issue 11), each tried for real
//! against running nodes on 127.0.0.1, 127.0.0.2 and 127.0.0.3, as root
//! with a real tenant and shell CGI scripts: a client steering or looping
//! requests, a node that fails or hangs mid-request, and a node that holds
//! the secret but announces figures or a name no honest node would. The
//! hostile nodes are berth's own gossip run in this process (berth as a
//! library) with a plan of the test's making, and a TCP listener of the
//! test as their proxy address.
//!
//! Which node served a request is what its script says: `SERVER_ADDR` is
//! the address of the listener that ran it (127.0.0.N).

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::farm::*;
use common::*;

/// What a hostile node's proxy listener does with a request.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Reads the request head and closes the connection: a node that dies
    /// with the request in hand.
    Close,
    /// Answers 200 with `rogue` as the body.
    Answer,
}

/// A node of the farm that holds the secret but is not berth: berth's own
/// gossip in this process with a plan of the test's, and a TCP listener of
/// the test as its proxy address.
struct Rogue {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The request heads its listener got.
    heads: Arc<Mutex<Vec<String>>>,
}

impl Rogue {
    /// Joins the farm through `seed` as `name`, announcing `slots` (busy,
    /// free); its proxy listener (on 127.0.0.4) does `behaviour`.
    fn start(name: &str, seed: SocketAddr, slots: (u32, u32), behaviour: Behaviour) -> Rogue {
        let listener = TcpListener::bind("127.0.0.4:0").unwrap();
        let proxy = listener.local_addr().unwrap();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        {
            let heads = heads.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { continue };
                    let heads = heads.clone();
                    std::thread::spawn(move || {
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                        let mut got = Vec::new();
                        let mut buf = [0u8; 4096];
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        heads
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&got).into_owned());
                        match behaviour {
                            Behaviour::Close => drop(stream),
                            Behaviour::Answer => {
                                let _ = stream.write_all(
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nrogue\n",
                                );
                            }
                        }
                    });
                }
            });
        }
        let socket = std::net::UdpSocket::bind("127.0.0.4:0").unwrap();
        let plan = berth::farm::ClusterPlan {
            name: name.into(),
            advertise: socket.local_addr().unwrap(),
            proxy,
            seeds: vec![seed.to_string()],
            interval: INTERVAL,
            secret: SECRET.trim_end().as_bytes().to_vec(),
            accept_from: Vec::new(),
            fingerprint: "rogue".into(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let cluster =
                    berth::farm::gossip::Cluster::start(&plan, socket, Arc::new(move || slots))
                        .await
                        .unwrap();
                let _ = stopped.await;
                cluster.shutdown().await;
            });
        });
        Rogue {
            stop: Some(stop),
            thread: Some(thread),
            heads,
        }
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_request_redirected_to_a_node_whose_name_has_capitals_is_served_there() {
    // Host names are case-blind and berth routes them lowercased; a node
    // name (by default the host name) may have capitals. With removeSelf no
    // node ever chooses itself: a redirected request must be known by its
    // name, or it is redirected on and on.
    let routes = r#"
[[tenant.tf.site.route]]
path = "/redirect/"
app = "scripts"
extensions = ["cgi"]
balance = ["removeSelf", "byRandom"]
handover = "redirect name %1S.%-2H"
"#;
    let farm = Farm::start(["A", "B", "C"], r#""off""#, routes, false);
    farm.wait_joined();
    // Node A sends the client on to B or C, by a lowercase name or not.
    let (status, head, _) = get(farm.addr(0), "farm.test", "/redirect/who.cgi", "");
    assert_eq!(status, 302, "{head}");
    let location = header(&head, "location").unwrap().to_ascii_lowercase();
    let (node, host) = if location.starts_with("http://b.farm.test/") {
        (1, "b.farm.test")
    } else {
        assert!(location.starts_with("http://c.farm.test/"), "{head}");
        (2, "c.farm.test")
    };
    // There (as DNS would send the client), it is served, not sent on.
    for host in [host, &host.to_ascii_uppercase()] {
        let (status, head, body) = get(farm.addr(node), host, "/redirect/who.cgi", "");
        assert_eq!(status, 200, "{host} redirected again: {head}");
        assert_eq!(field(&body, "node"), farm.nodes[node].ip.to_string());
    }
}

/// A client over TLS trusting `ca` that resolves `host` to `addr` and
/// speaks only `alpn` (b"http/1.1" or b"h2").
fn tls_client(ca: &str, host: &str, addr: SocketAddr, alpn: &[u8]) -> reqwest::blocking::Client {
    use rustls_pki_types::pem::PemObject;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let b = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .resolve(host, addr)
        .tls_backend_preconfigured(cfg);
    let b = if alpn == b"h2" {
        b.http2_prior_knowledge()
    } else {
        b.http1_only()
    };
    b.build().unwrap()
}

#[test]
fn a_tls_client_is_redirected_to_another_node_over_tls() {
    let routes = r#"
[[tenant.tf.site.route]]
path = "/redirect/"
app = "scripts"
extensions = ["cgi"]
balance = ["byHostname ^b$"]
handover = "redirect name %1S.%-2H"
"#;
    let farm = Farm::start(["a", "b", "c"], r#""off""#, routes, true);
    farm.wait_joined();
    let ca = farm.ca.as_deref().unwrap();
    let a = SocketAddr::from((farm.nodes[0].ip, farm.tls_port));
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let client = tls_client(ca, "farm.test", a, alpn);
        let resp = client
            .get(format!(
                "https://farm.test:{}/redirect/who.cgi?x=1",
                farm.tls_port
            ))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 302, "{alpn:?}");
        let location = resp.headers()["location"].to_str().unwrap();
        assert_eq!(
            location,
            "https://b.farm.test/redirect/who.cgi?x=1",
            "over {}",
            String::from_utf8_lossy(alpn)
        );
    }
}

#[test]
fn a_get_that_a_node_dropped_goes_to_the_next_node_over_every_path() {
    // The node a0 takes requests and dies with them in hand. A GET goes to the next candidate, c: over the HTTP/1.1 fast
    // lane, and just as well over hyper's path (an absolute-form target)
    // and HTTP/2, where the request has a body that is empty.
    let routes = r#"
[[tenant.tf.site.route]]
path = "/hop/"
app = "scripts"
extensions = ["cgi"]
balance = ["byHostname ^(a0|c)$"]
"#;
    let farm = Farm::start(["a", "b", "c"], r#""off""#, routes, false);
    let rogue = Rogue::start("a0", farm.gossip_addr(0), (0, 10), Behaviour::Close);
    farm.wait_seen(&["a", "a0", "b", "c"]);
    let a = farm.addr(0);
    // The list is in a random order per request: a0 comes first about half
    // the time, and then c answers all the same.
    let h2 = client(true, None, &["farm.test"], farm.port);
    for _ in 0..8 {
        let (status, _, body) = get(a, "farm.test", "/hop/who.cgi", "");
        assert_eq!(status, 200, "fast lane: {body}");
        assert_eq!(field(&body, "node"), "127.0.0.3");
        let mut s = TcpStream::connect(a).unwrap();
        let (status, _, body) = request_on(
            &mut s,
            &format!(
                "GET http://farm.test:{}/hop/who.cgi HTTP/1.1\r\nHost: farm.test\r\n",
                farm.port
            ),
        );
        assert_eq!(status, 200, "absolute form: {body}");
        assert_eq!(field(&body, "node"), "127.0.0.3");
        let resp = h2
            .get(format!("http://farm.test:{}/hop/who.cgi", farm.port))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200, "HTTP/2");
        assert_eq!(field(&resp.text().unwrap(), "node"), "127.0.0.3");
    }
    // a0 got a good part of them first (12 of 24 on average; fewer than 3
    // has a chance of about 1 in 50,000).
    assert!(rogue.heads.lock().unwrap().len() >= 3);
}

#[test]
fn a_request_a_node_placed_here_is_not_placed_again_when_its_mark_is_refused() {
    // Node c's clock is 40 s behind (gossip still brings its figures
    // through the other nodes, or directly when the interval is long): its
    // marks are stale where they arrive. Placed again, the request went
    // back to c, whose own clock refuses a's mark the other way: where c
    // places it on a again (removeSelf, byRandom, byLoad), for ever. A mark
    // signed by a node of the farm but refused (stale, or for another
    // node) means only that a node placed the request here: it is served
    // here, and the client's address in it is not taken.
    let routes = r#"
[[tenant.tf.site.route]]
path = "/pinned/"
app = "scripts"
extensions = ["cgi"]
balance = ["byHostname ^c$"]
"#;
    let farm = Farm::start(["a", "b", "c"], r#""off""#, routes, false);
    farm.wait_joined();
    let secret = SECRET.trim_end().as_bytes();
    let bound = berth::farm::mark::Bound {
        method: "GET",
        host: "farm.test",
        target: "/pinned/who.cgi",
    };
    let spoof: SocketAddr = "6.6.6.6:1".parse().unwrap();
    let refused_before = farm.status(0)["cluster"]["marks_refused"].as_u64().unwrap();
    for (to, t) in [("a", unix_now() - 40), ("b", unix_now())] {
        let mark = berth::farm::mark::sign(secret, bound, "c", to, spoof, true, t);
        let mut s = connect_from(Ipv4Addr::new(127, 0, 0, 9), farm.addr(0));
        let (status, _, body) = request_on(
            &mut s,
            &format!("GET /pinned/who.cgi HTTP/1.1\r\nHost: farm.test\r\nberth-mark: {mark}\r\n"),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(field(&body, "node"), "127.0.0.1", "placed again: {mark}");
        assert_eq!(field(&body, "remote"), "127.0.0.9", "{mark}");
        assert_eq!(field(&body, "https"), "", "{mark}");
    }
    let refused = farm.status(0)["cluster"]["marks_refused"].as_u64().unwrap();
    assert_eq!(refused, refused_before + 2);
    // A mark no node signed is still no more than no mark: placed (on c).
    let mut s = connect_from(Ipv4Addr::new(127, 0, 0, 9), farm.addr(0));
    let forged = "from=c;to=a;for=6.6.6.6:1;proto=https;t=1;sig=AAAA";
    let (_, _, body) = request_on(
        &mut s,
        &format!("GET /pinned/who.cgi HTTP/1.1\r\nHost: farm.test\r\nberth-mark: {forged}\r\n"),
    );
    assert_eq!(field(&body, "node"), "127.0.0.3");
    assert_eq!(field(&body, "remote"), "127.0.0.9");
}

#[test]
fn slot_figures_that_overflow_when_added_do_not_break_by_cost() {
    // A node announces u32::MAX busy slots and one free: byCost adds the
    // two for its share of one request.
    let routes = r#"
[[tenant.tf.site.route]]
path = "/cost/"
app = "scripts"
extensions = ["cgi"]
balance = ["byCost", "byHostname ^[abc]$"]
"#;
    let farm = Farm::start(["a", "b", "c"], r#""off""#, routes, false);
    let _rogue = Rogue::start("z", farm.gossip_addr(0), (u32::MAX, 1), Behaviour::Close);
    farm.wait_seen(&["a", "b", "c", "z"]);
    assert_eq!(
        farm.seen_by(0)["z"]["figures"]["busy_slots"],
        u64::from(u32::MAX)
    );
    for _ in 0..3 {
        let mut s = TcpStream::connect(farm.addr(0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "GET /cost/who.cgi HTTP/1.1\r\nHost: farm.test\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp:?}");
    }
}

#[test]
fn a_node_whose_name_is_no_host_name_is_left_out() {
    // Every honest node's name is a host name (`berth check` refuses
    // anything else). One that announces another is not taken: its name
    // would go into redirects (here, to a host of its choosing), sticky
    // cookies and access logs as it is.
    let routes = r#"
[[tenant.tf.site.route]]
path = "/redirect/"
app = "scripts"
extensions = ["cgi"]
balance = ["byHostname ^evil"]
handover = "redirect name %-1S.%-2H"

[[tenant.tf.site.route]]
path = "/sticky/"
app = "scripts"
extensions = ["cgi"]
balance = ["byHostname ^x"]
sticky = true
"#;
    let farm = Farm::start(["a", "b", "c"], r#""off""#, routes, false);
    let evil = "evil.test/x.q";
    let cookie = "x; Domain=farm.test; Max-Age=99999999";
    let _r1 = Rogue::start(evil, farm.gossip_addr(0), (0, 10), Behaviour::Close);
    let _r2 = Rogue::start(cookie, farm.gossip_addr(0), (0, 10), Behaviour::Answer);
    // A node with a good name that joins with them: once it is seen, they
    // would have been too.
    let _r3 = Rogue::start("zz", farm.gossip_addr(0), (0, 10), Behaviour::Close);
    farm.wait_seen(&["a", "b", "c", "zz"]);
    let seen = farm.seen_by(0);
    assert!(!seen.contains_key(evil), "{seen:?}");
    assert!(!seen.contains_key(cookie), "{seen:?}");
    // Taken, the first was sent a client to http://evil.test/x.farm.test/...
    let (status, head, _) = get(farm.addr(0), "farm.test", "/redirect/who.cgi", "");
    assert_eq!(status, 200, "{head}");
    // ... and the second set a cookie for every site under farm.test.
    let (status, head, body) = get(farm.addr(0), "farm.test", "/sticky/who.cgi", "");
    assert_eq!(status, 200, "{head}");
    assert_eq!(field(&body, "node"), "127.0.0.1");
    assert!(!head.contains("Domain"), "{head}");
}

#[test]
fn a_node_cannot_take_the_name_of_a_live_node() {
    // A node that calls itself c (a clone of c's machine, or a hostile
    // one) joins after c: the real c stays in every list, requests pinned
    // to c go to c; one that calls itself a does not replace a in a's own
    // list.
    let routes = r#"
[[tenant.tf.site.route]]
path = "/pinned/"
app = "scripts"
extensions = ["cgi"]
balance = ["byHostname ^c$"]
"#;
    let farm = Farm::start(["a", "b", "c"], r#""off""#, routes, false);
    farm.wait_joined();
    let fake_c = Rogue::start("c", farm.gossip_addr(0), (0, 10), Behaviour::Close);
    let fake_a = Rogue::start("a", farm.gossip_addr(1), (0, 10), Behaviour::Close);
    // Both are known to every node once a third newcomer is.
    let _r3 = Rogue::start("zz", farm.gossip_addr(0), (0, 10), Behaviour::Close);
    farm.wait_seen(&["a", "b", "c", "zz"]);
    std::thread::sleep(INTERVAL * 4);
    for node in 0..3 {
        let seen = farm.seen_by(node);
        assert!(
            seen["c"]["proxy"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.3:"),
            "{seen:?}"
        );
        assert!(
            seen["a"]["proxy"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:"),
            "{seen:?}"
        );
    }
    assert_eq!(farm.seen_by(0)["a"]["local"], true);
    for node in 0..3 {
        let (status, _, body) = get(farm.addr(node), "farm.test", "/pinned/who.cgi", "");
        assert_eq!(status, 200, "{body}");
        assert_eq!(field(&body, "node"), "127.0.0.3");
    }
    assert!(fake_c.heads.lock().unwrap().is_empty());
    assert!(fake_a.heads.lock().unwrap().is_empty());

    // The real c restarted (a newer generation) gets its name back once
    // its earlier self is dead, and no request pinned to it fails meanwhile.
    drop((fake_c, fake_a));
    let mut farm = farm;
    farm.nodes[2].server.stop();
    let path = farm.dir.join("c.toml");
    let log = farm.dir.join("c").join("log");
    farm.nodes[2].server = Server::spawn(&path, farm.port, farm.tls_port, log);
    farm.wait_ready(2);
    let back = eventually(WITHIN, || {
        let (status, _, body) = get(farm.addr(0), "farm.test", "/pinned/who.cgi", "");
        assert_eq!(status, 200, "{body}");
        let seen = farm.seen_by(0);
        field(&body, "node") == "127.0.0.3"
            && seen["c"]["live"] == true
            && seen["c"]["age_seconds"].as_f64().unwrap() < 1.0
    });
    assert!(back, "{:#}", farm.status(0));
}

/// Stops a process (SIGSTOP) until dropped (SIGCONT).
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        Stopped(pid.as_raw() as u32)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0 as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
    }
}

#[test]
fn a_node_that_hangs_holds_a_request_only_until_gossip_holds_it_dead() {
    // Node b's front end stops (SIGSTOP: a machine swapping, a process
    // frozen): the kernel still takes connections into its backlog, and
    // its answer never comes. Requests placed on it were held for the hop's
    // five minutes; they end when gossip finds b dead (a few intervals):
    // a GET then goes to the next candidate (none is left here but b: so
    // this node, a, serves it), a POST is answered 502.
    let routes = r#"
[[tenant.tf.site.route]]
path = "/hop/"
app = "scripts"
extensions = ["cgi"]
balance = ["byHostname ^b$"]
"#;
    let farm = Farm::start(["a", "b", "c"], r#""off""#, routes, false);
    farm.wait_joined();
    let (status, _, body) = get(farm.addr(0), "farm.test", "/hop/who.cgi", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(field(&body, "node"), "127.0.0.2");
    let _stopped = Stopped::new(farm.nodes[1].server.front_pid());
    // Both sent at once: b is still alive as far as gossip knows. The
    // read timeout (60 s, in `request_on`) is the bound: a few seconds are
    // enough, five minutes are what it was.
    let a = farm.addr(0);
    let post = std::thread::spawn(move || {
        let mut s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "POST /hop/who.cgi HTTP/1.1\r\nHost: farm.test\r\nContent-Length: 5\r\n\
             Connection: close\r\n\r\nhello"
        )
        .unwrap();
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        String::from_utf8_lossy(&resp).into_owned()
    });
    let (status, _, body) = get(a, "farm.test", "/hop/who.cgi", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(field(&body, "node"), "127.0.0.1");
    let post = post.join().unwrap();
    assert!(post.starts_with("HTTP/1.1 502"), "{post:?}");
    assert!(
        farm.status(0)["cluster"]["handovers_failed"]
            .as_u64()
            .unwrap()
            >= 2
    );
}

#[test]
fn a_response_with_many_headers_crosses_the_hop_and_runs_once() {
    // A CGI answer of 120 header lines is served by a node to its own
    // clients; handed over, the node that placed it refused the answer
    // (hyper's 100 headers), ran the script a second time itself, and
    // answered with that.
    let routes = r#"
[[tenant.tf.site.route]]
path = "/hop/"
app = "scripts"
extensions = ["cgi"]
balance = ["byHostname ^b$"]
"#;
    let farm = Farm::start(["a", "b", "c"], r#""off""#, routes, false);
    let many = "#!/bin/sh
printf 'Content-Type: text/plain\\r\\n'
i=0
while [ $i -lt 120 ]; do printf 'X-N%s: v\\r\\n' $i; i=$((i+1)); done
printf '\\r\\n'
echo \"node=$SERVER_ADDR\"
";
    let script = farm.dir.write("site/hop/many.cgi", many);
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (uid, gid) = ensure_user(USER);
    chown_tree(&farm.dir.join("site"), uid, gid);
    farm.wait_joined();
    // HTTP/1.0: the body is not chunked (and reqwest takes 100 headers).
    let mut s = TcpStream::connect(farm.addr(0)).unwrap();
    let (status, head, body) =
        request_on(&mut s, "GET /hop/many.cgi HTTP/1.0\r\nHost: farm.test\r\n");
    assert_eq!(status, 200, "{head}");
    assert_eq!(head.lines().filter(|l| l.starts_with("x-n")).count(), 120);
    assert_eq!(field(&body, "node"), "127.0.0.2");
    let ran = |node: usize| {
        farm.nodes[node]
            .server
            .access_log("tf")
            .lines()
            .filter(|l| {
                l.contains("/hop/many.cgi")
                    && l.contains(&format!(" node={} ", ["a", "b", "c"][node]))
            })
            .count()
    };
    assert_eq!((ran(0), ran(1)), (0, 1));
}

#[test]
fn a_clients_mark_in_any_form_is_removed_and_ignored() {
    // Made-up marks in every spelling and number, over HTTP/1.1 and
    // HTTP/2, in a request that is handed over (pinned to c): it is placed
    // as any other, the client is who it is, and no app sees a mark.
    let routes = r#"
[[tenant.tf.site.route]]
path = "/pinned/"
app = "scripts"
extensions = ["cgi"]
balance = ["byHostname ^c$"]
"#;
    let farm = Farm::start(["a", "b", "c"], r#""off""#, routes, false);
    farm.wait_joined();
    let made_up = "from=c;to=a;for=6.6.6.6:1;proto=https;t=1;sig=AAAA";
    let forms = [
        format!("berth-mark: {made_up}\r\n"),
        format!("BERTH-MARK: {made_up}\r\nBerth-Mark: {made_up}\r\n"),
        format!("berth-mark: {made_up}\r\nberth-mark: \r\n"),
    ];
    for form in &forms {
        let mut s = connect_from(Ipv4Addr::new(127, 0, 0, 9), farm.addr(0));
        let (status, _, body) = request_on(
            &mut s,
            &format!("GET /pinned/who.cgi HTTP/1.1\r\nHost: farm.test\r\n{form}"),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(field(&body, "node"), "127.0.0.3", "{form:?}");
        assert_eq!(field(&body, "remote"), "127.0.0.9", "{form:?}");
        assert_eq!(field(&body, "https"), "", "{form:?}");
        assert_eq!(field(&body, "marks"), "0", "{form:?}");
    }
    let h2 = client(true, None, &["farm.test"], farm.port);
    let resp = h2
        .get(format!("http://farm.test:{}/pinned/who.cgi", farm.port))
        .header("berth-mark", made_up)
        .header("Berth-Mark", made_up)
        .send()
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let body = resp.text().unwrap();
    assert_eq!(field(&body, "node"), "127.0.0.3");
    assert_eq!(field(&body, "remote"), "127.0.0.1");
    assert_eq!(field(&body, "marks"), "0");
}

/// Sends `GET path` for farm.test to `to` from `from` and says whether it
/// was answered 200 and by which node (within 60 s).
fn answered(from: Ipv4Addr, to: SocketAddr, path: &str) -> Option<String> {
    let mut s = connect_from(from, to);
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: farm.test\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.starts_with("HTTP/1.1 200")
        .then(|| field(&resp, "node").to_string())
}

#[test]
fn a_process_at_another_nodes_address_is_held_to_max_connections_per_ip() {
    // Connections from another node's address count against no address's
    // share: that node hands many clients' requests over them. But a
    // tenant's app on that machine connects from the same address. Past
    // the share, a connection must carry requests another node placed
    // (marked), or it is refused; handed-over requests still all pass.
    let routes = r#"
[[tenant.tf.site.route]]
path = "/local/"
app = "scripts"
extensions = ["cgi"]
balance = "off"

[[tenant.tf.site.route]]
path = "/hop/"
app = "scripts"
extensions = ["cgi"]
balance = ["byHostname ^b$"]
"#;
    let farm = Farm::start_with(
        ["a", "b", "c"],
        r#""off""#,
        routes,
        false,
        "max_connections_per_ip = 3",
    );
    let slow = "#!/bin/sh
sleep 6
printf 'Content-Type: text/plain\\r\\n\\r\\n'
echo \"node=$SERVER_ADDR\"
";
    for dir in ["local", "hop"] {
        let p = farm.dir.write(&format!("site/{dir}/slow.cgi"), slow);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (uid, gid) = ensure_user(USER);
    chown_tree(&farm.dir.join("site"), uid, gid);
    farm.wait_joined();

    // From 127.0.0.1 (node a's address: on loopback every node connects to
    // the others from it), three slow requests to b take the share, one
    // after the other ...
    let b = farm.addr(1);
    let in_flight = || {
        farm.status(1)["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "tf")
            .map_or(0, |t| t["in_flight"].as_u64().unwrap())
    };
    let mut tenant = Vec::new();
    for n in 1..=3 {
        tenant.push(std::thread::spawn(move || {
            answered(Ipv4Addr::LOCALHOST, b, "/local/slow.cgi")
        }));
        assert!(eventually(WITHIN, || in_flight() >= n), "{n} not in flight");
    }
    // ... and a fourth connection's request, kept alive, over the fast lane
    // and hyper's path, is refused, and the connection closed.
    for target in ["/local/who.cgi", "http://farm.test/local/who.cgi"] {
        let mut s = connect_from(Ipv4Addr::LOCALHOST, b);
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(s, "GET {target} HTTP/1.1\r\nHost: farm.test\r\n\r\n").unwrap();
        let mut resp = Vec::new();
        let closed = s.read_to_end(&mut resp).is_ok();
        let resp = String::from_utf8_lossy(&resp);
        assert!(resp.starts_with("HTTP/1.1 503"), "{target}: {resp:?}");
        assert!(closed, "{target}: left open: {resp:?}");
    }
    for t in tenant {
        assert_eq!(t.join().unwrap().as_deref(), Some("127.0.0.2"));
    }

    // Eight clients (other addresses) ask a for what is pinned to b: a hands
    // them over on eight connections at once, all from 127.0.0.1.
    let a = farm.addr(0);
    let clients: Vec<_> = (10..18)
        .map(|i| {
            std::thread::spawn(move || answered(Ipv4Addr::new(127, 0, 0, i), a, "/hop/slow.cgi"))
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap().as_deref(), Some("127.0.0.2"));
    }
}
