//! Gossip among three nodes in one process (berth as a library, on one
//! current-thread runtime like the front end's), on 127.0.0.1, 127.0.0.2
//! and 127.0.0.3: they find each other through one seed (by address, or by
//! name) and show each
//! other's figures; a forged, an unsigned, a stale, a replayed and an
//! out-of-range datagram are each dropped and counted under their reason
//! and change nothing; a node with another secret never appears; a node
//! shut down is seen dead.
//!
//! Every wait is a poll with a generous deadline (a loaded 2-core machine):
//! what is asserted is the outcome, never how fast it came.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::farm::gossip::{Cluster, Dropped};
use berth::farm::transport::{HEADER_LEN, MAC_LEN, Seal, Sender, unix_ms};
use berth::farm::{Cidr, ClusterPlan, Peer};
use tokio::net::UdpSocket;

const SECRET: &[u8] = b"the farm's secret, 32 bytes long";
const INTERVAL: Duration = Duration::from_secs(1);

fn plan(name: &str, socket: &std::net::UdpSocket, seeds: &[String], secret: &[u8]) -> ClusterPlan {
    let advertise = socket.local_addr().unwrap();
    ClusterPlan {
        name: name.into(),
        advertise,
        proxy: SocketAddr::new(advertise.ip(), 8080),
        seeds: seeds.to_vec(),
        interval: INTERVAL,
        secret: secret.to_vec(),
        // 127.0.0.0 to 127.0.0.7: the nodes, the capture socket and the
        // other farm; 127.0.0.9 is outside.
        accept_from: vec![Cidr {
            addr: "127.0.0.0".parse().unwrap(),
            prefix: 29,
        }],
        fingerprint: format!("fp-{name}"),
    }
}

fn bind(ip: &str) -> std::net::UdpSocket {
    std::net::UdpSocket::bind((ip, 0)).unwrap()
}

async fn start(plan: &ClusterPlan, socket: std::net::UdpSocket, busy: u32) -> Cluster {
    Cluster::start(plan, socket, Arc::new(move || (busy, 10 - busy)))
        .await
        .unwrap()
}

/// Polls `cond` every 100 ms until it holds or `within` has passed.
async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn names(c: &Cluster) -> Vec<(String, bool)> {
    c.peers().iter().map(|p| (p.name.clone(), p.live)).collect()
}

fn peer(c: &Cluster, name: &str) -> Option<Peer> {
    c.peers().iter().find(|p| p.name == name).cloned()
}

fn all_live(c: &Cluster) -> bool {
    names(c)
        == [
            ("n1".to_string(), true),
            ("n2".to_string(), true),
            ("n3".to_string(), true),
        ]
}

/// `after` less `before`, by reason.
fn delta(after: Dropped, before: Dropped) -> Dropped {
    Dropped {
        not_accepted: after.not_accepted - before.not_accepted,
        malformed: after.malformed - before.malformed,
        bad_mac: after.bad_mac - before.bad_mac,
        stale: after.stale - before.stale,
        replayed: after.replayed - before.replayed,
        too_big: after.too_big - before.too_big,
    }
}

/// No datagram comes to `socket` within a second (an answer to something
/// accepted comes within milliseconds; a slow machine only makes this
/// weaker, never wrong).
async fn no_answer(socket: &UdpSocket) -> bool {
    let mut buf = [0u8; 2048];
    tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buf))
        .await
        .is_err()
}

#[tokio::test(flavor = "current_thread")]
async fn three_nodes_find_each_other_and_drop_what_they_cannot_trust() {
    // The capture socket: node 1's only seed, so node 1 sends it genuine
    // datagrams.
    let capture = UdpSocket::bind("127.0.0.4:0").await.unwrap();
    let (s1, s2, s3) = (bind("127.0.0.1"), bind("127.0.0.2"), bind("127.0.0.3"));
    let a1 = s1.local_addr().unwrap();
    let p1 = plan(
        "n1",
        &s1,
        &[capture.local_addr().unwrap().to_string()],
        SECRET,
    );
    let p2 = plan("n2", &s2, &[a1.to_string()], SECRET);
    // A name, resolved by chitchat (to 127.0.0.1, and maybe ::1 too, which
    // this IPv4 socket cannot reach: it tries the other next round).
    let p3 = plan("n3", &s3, &[format!("localhost:{}", a1.port())], SECRET);
    let n1 = start(&p1, s1, 1).await;
    let n2 = start(&p2, s2, 2).await;
    let n3 = start(&p3, s3, 3).await;
    // Another farm's node, seeding node 1 with another secret.
    let sx = bind("127.0.0.5");
    let px = plan("x", &sx, &[a1.to_string()], b"another farm's secret");
    let nx = start(&px, sx, 0).await;

    // They find each other and show each other's figures.
    let t0 = Instant::now();
    let found = eventually(Duration::from_secs(20), || {
        [&n1, &n2, &n3].iter().all(|n| all_live(n))
    })
    .await;
    assert!(found, "{:?} {:?} {:?}", names(&n1), names(&n2), names(&n3));
    eprintln!("all three live everywhere after {:?}", t0.elapsed());
    for (n, me) in [(&n1, "n1"), (&n2, "n2"), (&n3, "n3")] {
        let list = n.peers();
        assert_eq!(list.iter().filter(|p| p.local).count(), 1);
        assert_eq!(list.iter().find(|p| p.local).unwrap().name, me);
    }
    let ok = eventually(Duration::from_secs(10), || {
        peer(&n1, "n2").is_some_and(|p| p.figures.busy_slots == 2)
    })
    .await;
    assert!(ok);
    let two = peer(&n1, "n2").unwrap();
    assert_eq!(two.proxy, p2.proxy);
    assert_eq!(two.gossip, p2.advertise);
    assert_eq!(two.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(two.fingerprint, "fp-n2");
    let f = &two.figures;
    assert_eq!((f.busy_slots, f.free_slots), (2, 8));
    assert!(f.cpus >= 1 && f.arriba > 0 && f.mem_total > 0);
    assert!(f.mem_available <= f.mem_total && (0.0..=1.0).contains(&f.cpu_idle));
    // Renewed every second; 5 s is generous.
    assert!(two.age < 5.0, "{}", two.age);
    assert_eq!(peer(&n3, "n1").unwrap().fingerprint, "fp-n1");

    // A new fingerprint reaches the others.
    n2.set_fingerprint("fp-n2-reloaded");
    let ok = eventually(Duration::from_secs(10), || {
        peer(&n3, "n2").is_some_and(|p| p.fingerprint == "fp-n2-reloaded")
    })
    .await;
    assert!(ok, "{:?}", peer(&n3, "n2"));

    // A genuine datagram from node 1, captured: a fresh one (those queued
    // since the start may be near the stale bound on a slow machine).
    let mut buf = vec![0u8; 65_536];
    while capture.try_recv_from(&mut buf).is_ok() {}
    let (len, from) = tokio::time::timeout(Duration::from_secs(20), capture.recv_from(&mut buf))
        .await
        .expect("node 1 gossips to its seed")
        .unwrap();
    assert_eq!(from, a1);
    let genuine = buf[..len].to_vec();
    eprintln!("a SYN from node 1 in a farm of three: {len} bytes");
    assert!(len > HEADER_LEN + MAC_LEN);
    let message = &genuine[HEADER_LEN..len - MAC_LEN];

    let raw = UdpSocket::bind("127.0.0.6:0").await.unwrap();
    let before = [n1.dropped(), n2.dropped(), n3.dropped()];

    // Node 1's own datagram sent back to it: replayed.
    raw.send_to(&genuine, p1.advertise).await.unwrap();
    // Forged: the genuine datagram with a random MAC.
    let mut forged = genuine.clone();
    let mut random = [0u8; MAC_LEN];
    rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty()).unwrap();
    forged[len - MAC_LEN..].copy_from_slice(&random);
    raw.send_to(&forged, p2.advertise).await.unwrap();
    // Unsigned: chitchat's own serialization, bare.
    raw.send_to(message, p2.advertise).await.unwrap();
    // Signed with the secret, but 40 s old.
    let seal = Seal::new(SECRET, Vec::new(), INTERVAL);
    let mut sender = Sender::new(0x5eed);
    let mut stale = Vec::new();
    seal.seal(&mut sender, unix_ms() - 40_000, &mut stale, |b| {
        b.extend_from_slice(message)
    })
    .unwrap();
    raw.send_to(&stale, p3.advertise).await.unwrap();
    // Signed and fresh, but not a chitchat message.
    let mut junk = Vec::new();
    seal.seal(&mut sender, unix_ms(), &mut junk, |b| {
        b.extend_from_slice(b"not chitchat")
    })
    .unwrap();
    raw.send_to(&junk, p3.advertise).await.unwrap();
    // The genuine datagram from outside accept_from.
    let outside = UdpSocket::bind("127.0.0.9:0").await.unwrap();
    outside.send_to(&genuine, p3.advertise).await.unwrap();

    let want = [
        Dropped {
            replayed: 1,
            ..Dropped::default()
        },
        Dropped {
            bad_mac: 1,
            malformed: 1,
            ..Dropped::default()
        },
        Dropped {
            stale: 1,
            malformed: 1,
            not_accepted: 1,
            ..Dropped::default()
        },
    ];
    let nodes = [&n1, &n2, &n3];
    let counted = eventually(Duration::from_secs(10), || {
        (0..3).all(|i| {
            let d = delta(nodes[i].dropped(), before[i]);
            // Node 1 also drops the other farm's datagrams (bad MAC).
            let d = if i == 0 {
                Dropped { bad_mac: 0, ..d }
            } else {
                d
            };
            d == want[i]
        })
    })
    .await;
    assert!(
        counted,
        "{:?}",
        (0..3)
            .map(|i| delta(nodes[i].dropped(), before[i]))
            .collect::<Vec<_>>()
    );
    // None of them was answered.
    assert!(no_answer(&raw).await);
    assert!(no_answer(&outside).await);

    // The captured datagram sent to node 2 twice: the second time (at the
    // latest) it is a replay. (The first time it is genuine news to node 2,
    // from node 1, and may be answered; if node 1 has since sent node 2 more
    // than the window's 128 datagrams, it is refused already.)
    let replay = UdpSocket::bind("127.0.0.7:0").await.unwrap();
    let before2 = n2.dropped();
    replay.send_to(&genuine, p2.advertise).await.unwrap();
    replay.send_to(&genuine, p2.advertise).await.unwrap();
    let counted = eventually(Duration::from_secs(10), || {
        n2.dropped().replayed > before2.replayed
    })
    .await;
    assert!(counted, "{:?}", n2.dropped());
    let d = delta(n2.dropped(), before2);
    assert!(d.replayed <= 2);
    assert_eq!(Dropped { replayed: 0, ..d }, Dropped::default());

    // The other farm's node: its datagrams were refused by node 1, and
    // nobody, itself included, ever saw the others.
    assert!(n1.dropped().bad_mac > 0);
    for n in [&n1, &n2, &n3] {
        assert!(peer(n, "x").is_none(), "{:?}", names(n));
    }
    assert_eq!(names(&nx), [("x".to_string(), true)]);
    // Nothing else changed either.
    for n in [&n1, &n2, &n3] {
        assert!(all_live(n), "{:?}", names(n));
        assert_eq!(n.dropped().too_big, 0);
    }

    // Node 3 stops: the others see it dead (the failure detector is tuned to
    // take about 5 to 9 s at a 1 s interval; 30 s is generous) and aged.
    n3.shutdown().await;
    let t0 = Instant::now();
    let dead = eventually(Duration::from_secs(30), || {
        [&n1, &n2].iter().all(|n| {
            peer(n, "n3").is_some_and(|p| !p.live) && peer(n, "n2").is_some_and(|p| p.live)
        })
    })
    .await;
    assert!(dead, "{:?} {:?}", names(&n1), names(&n2));
    eprintln!("node 3 dead on both others after {:?}", t0.elapsed());
    let gone = peer(&n1, "n3").unwrap();
    assert!(gone.age > 2.0, "{}", gone.age);
    assert!(peer(&n1, "n2").unwrap().age < 5.0);

    nx.shutdown().await;
    n2.shutdown().await;
    n1.shutdown().await;
}
