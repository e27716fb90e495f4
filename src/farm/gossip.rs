//! Membership and load figures over gossip (issue 11, item 1): which nodes
//! make up the farm, which of them are alive, and what each announces.
//!
//! [`Cluster::start`] runs chitchat (scuttlebutt anti-entropy with a
//! phi-accrual failure detector, by Quickwit) on the front end's runtime,
//! over [`super::transport`], which signs every datagram with the cluster
//! secret and drops, and counts, what it cannot trust. [`Cluster::peers`]
//! is what placement ([`super::place`]) and the status page read.
//!
//! chitchat is held at 0.11: from 0.12 on, a transport of one's own
//! receives messages it cannot serialize (the envelope's encoding became
//! crate-private), so it could not be signed.
//!
//! # What a node publishes
//! Its chitchat id is its name, a generation (its gossip's start time in
//! unix milliseconds: a restarted node is a new member and its previous
//! self dies away) and its gossip address. Its key-value state, renewed
//! every `interval` (a value that did not change is not sent again):
//!
//! | key | value |
//! |---|---|
//! | `name` | the node's name |
//! | `proxy` | where proxied requests go, `ip:port` |
//! | `cpus`, `load`, `cpu_idle`, `busy_slots`, `free_slots`, `mem_total`, `mem_available`, `arriba` | [`Figures`], in decimal |
//! | `figures_at` | when the figures were made, unix milliseconds |
//! | `version` | berth's version |
//! | `fingerprint` | the effective configuration's fingerprint |
//!
//! A value that does not parse reads as the field's default (0, an empty
//! string, `0.0.0.0:0`), never as an error.
//!
//! # Alive, aged, forgotten
//! - `live` is the failure detector's word. A node's heartbeat goes up every
//!   round and reaches the others directly and through third nodes, so they
//!   see it go up at least about once an `interval`; phi (time since the
//!   last heartbeat over the mean time between heartbeats) passing 8 marks
//!   the node dead, within about 9 intervals of its last word (with a 1 s
//!   interval: about 5 to 9 s, checked once per round).
//! - `age` is the time since this node saw the other's `figures_at` change,
//!   on this node's clock (the two clocks are never compared), so a node
//!   that stops gossiping ages and `byAge` drops it before the failure
//!   detector does. Ages are reckoned when the list is refreshed, once an
//!   interval.
//! - A dead node stays in the list (`live: false`, for the status page)
//!   until 300 intervals after its death, then is forgotten. A node that
//!   came back under a newer generation replaces its earlier self once the
//!   failure detector holds that dead (both have the same name, and most
//!   often the same proxy address); while a node with a name is alive, a
//!   newer one with that name is left out, and this node's own name is
//!   always its own (a clone's, or a hostile node's, claim to a name is
//!   not taken). A node whose name is no host name is left out, and so is
//!   one whose proxy address this node would not send requests to
//!   (`proxy_allowed`: loopback or link-local only in a farm on one
//!   machine).

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use chitchat::{
    Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ListenerHandle,
    NodeState, spawn_chitchat,
};
use tokio::task::JoinHandle;

use super::figures::{self, Sampler};
pub use super::transport::Dropped;
use super::transport::{Counters, Seal, SignedTransport, unix_ms};
use super::{ClusterPlan, Figures, Peer};

/// chitchat's cluster id: every berth farm has the same; farms are told
/// apart by their secrets.
const CLUSTER_ID: &str = "berth";
/// The failure detector's phi threshold (chitchat's default).
const PHI: f64 = 8.0;
/// How many intervals a dead node stays listed.
const FORGET_AFTER: u32 = 300;

/// The keys a node publishes (see the module doc).
pub mod key {
    pub const NAME: &str = "name";
    pub const PROXY: &str = "proxy";
    pub const CPUS: &str = "cpus";
    pub const LOAD: &str = "load";
    pub const CPU_IDLE: &str = "cpu_idle";
    pub const BUSY_SLOTS: &str = "busy_slots";
    pub const FREE_SLOTS: &str = "free_slots";
    pub const MEM_TOTAL: &str = "mem_total";
    pub const MEM_AVAILABLE: &str = "mem_available";
    pub const ARRIBA: &str = "arriba";
    pub const FIGURES_AT: &str = "figures_at";
    pub const VERSION: &str = "version";
    pub const FINGERPRINT: &str = "fingerprint";
}

/// The request slots the front end reports: (busy, free).
pub type Slots = Arc<dyn Fn() -> (u32, u32) + Send + Sync>;

/// This node's gossip, running.
pub struct Cluster {
    chitchat: Option<ChitchatHandle>,
    renew: JoinHandle<()>,
    peers: Arc<ArcSwap<Vec<Peer>>>,
    fingerprint: Arc<ArcSwap<String>>,
    counters: Arc<Counters>,
    /// Keeps the `figures_at` listener subscribed.
    _listener: ListenerHandle,
}

/// What stays the same about this node while it runs.
struct Me {
    id: ChitchatId,
    name: String,
    proxy: SocketAddr,
}

/// When this node saw each node's figures change.
type Seen = Arc<Mutex<HashMap<ChitchatId, Instant>>>;

impl Cluster {
    /// Starts gossip on the current tokio runtime (the front end's,
    /// current-thread), on `socket`, bound by the supervisor at `bind`.
    /// `slots` is asked for the busy and free request slots at every renewal.
    pub async fn start(
        plan: &ClusterPlan,
        socket: std::net::UdpSocket,
        slots: Slots,
    ) -> anyhow::Result<Cluster> {
        if plan.secret.is_empty() {
            bail!("[cluster]: the secret is empty");
        }
        if plan.interval.is_zero() {
            bail!("[cluster]: the interval is zero");
        }
        let listen_addr = socket.local_addr().context("gossip socket: its address")?;
        // The benchmark takes 20 ms of CPU: not on the runtime's thread.
        let arriba = tokio::task::spawn_blocking(figures::arriba)
            .await
            .context("the arriba benchmark")?;
        let mut sampler = Sampler::new(arriba);
        let me = Me {
            id: ChitchatId::new(plan.name.as_str(), unix_ms(), plan.advertise),
            name: plan.name.clone(),
            proxy: plan.proxy,
        };
        let counters = Arc::new(Counters::default());
        let transport = SignedTransport::new(
            socket,
            Seal::new(&plan.secret, plan.accept_from.clone(), plan.interval),
            random_epoch()?,
            counters.clone(),
        );
        let figures = sampler.sample(slots());
        let config = ChitchatConfig {
            chitchat_id: me.id.clone(),
            cluster_id: CLUSTER_ID.to_string(),
            gossip_interval: plan.interval,
            listen_addr,
            seed_nodes: plan.seeds.clone(),
            failure_detector_config: failure_detector(plan.interval),
            // berth deletes no keys; chitchat's default.
            marked_for_deletion_grace_period: Duration::from_secs(15 * 60),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let initial = published(&me, &figures, unix_ms(), &plan.fingerprint);
        let handle = spawn_chitchat(config, initial, &transport)
            .await
            .context("starting gossip")?;

        let seen: Seen = Arc::default();
        let listener = {
            let seen = seen.clone();
            handle
                .chitchat()
                .lock()
                .await
                .subscribe_event(key::FIGURES_AT, move |event| {
                    // Called with chitchat's state locked: only this.
                    seen.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(event.node.clone(), Instant::now());
                })
        };
        let fingerprint = Arc::new(ArcSwap::from_pointee(plan.fingerprint.clone()));
        let first = {
            let chitchat = handle.chitchat();
            let guard = chitchat.lock().await;
            snapshot(&guard, &me, &figures, &plan.fingerprint, &seen)
        };
        let peers = Arc::new(ArcSwap::from_pointee(first));
        let renew = tokio::spawn(renew(
            handle.chitchat(),
            me,
            sampler,
            slots,
            plan.interval,
            fingerprint.clone(),
            peers.clone(),
            seen,
        ));
        Ok(Cluster {
            chitchat: Some(handle),
            renew,
            peers,
            fingerprint,
            counters,
            _listener: listener,
        })
    }

    /// Every node known, this one included (`local: true`), as of the last
    /// renewal (once an interval). Cheap: a shared snapshot.
    pub fn peers(&self) -> Arc<Vec<Peer>> {
        self.peers.load_full()
    }

    /// A new configuration fingerprint after a reload; published at the
    /// next renewal.
    pub fn set_fingerprint(&self, fingerprint: &str) {
        self.fingerprint.store(Arc::new(fingerprint.to_string()));
    }

    /// Datagrams dropped, by reason (for the status page and /metrics).
    pub fn dropped(&self) -> Dropped {
        self.counters.snapshot()
    }

    /// Stops gossiping and closes the socket.
    pub async fn shutdown(mut self) {
        self.renew.abort();
        if let Some(handle) = self.chitchat.take()
            && let Err(e) = handle.shutdown().await
        {
            tracing::warn!("gossip: stopping: {e:#}");
        }
    }
}

impl Cluster {
    /// Stops gossiping at once: the socket closes as its task ends (the
    /// front end's way when a new configuration moves or ends the farm).
    pub fn abort(&self) {
        self.renew.abort();
        if let Some(handle) = &self.chitchat {
            handle.abort();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Tuned for `interval` (see the module doc).
fn failure_detector(interval: Duration) -> FailureDetectorConfig {
    FailureDetectorConfig {
        phi_threshold: PHI,
        // The last 100 gaps between heartbeats: a farm that got busier
        // (slower rounds) is learnt within minutes.
        sampling_window_size: 100,
        // A longer gap (a partition, a suspended VM) is not a sample.
        max_interval: interval.saturating_mul(10),
        // The mean before any sample: one interval.
        initial_interval: interval,
        dead_node_grace_period: interval.saturating_mul(FORGET_AFTER),
    }
}

fn random_epoch() -> anyhow::Result<u64> {
    let mut b = [0u8; 8];
    let mut got = 0;
    while got < b.len() {
        got += rustix::rand::getrandom(&mut b[got..], rustix::rand::GetRandomFlags::empty())
            .context("getrandom for the gossip epoch")?;
    }
    Ok(u64::from_ne_bytes(b))
}

/// The key-values this node publishes.
fn published(me: &Me, f: &Figures, at_ms: u64, fingerprint: &str) -> Vec<(String, String)> {
    [
        (key::NAME, me.name.clone()),
        (key::PROXY, me.proxy.to_string()),
        (key::CPUS, f.cpus.to_string()),
        (key::LOAD, format!("{:.2}", f.load)),
        (key::CPU_IDLE, format!("{:.3}", f.cpu_idle)),
        (key::BUSY_SLOTS, f.busy_slots.to_string()),
        (key::FREE_SLOTS, f.free_slots.to_string()),
        (key::MEM_TOTAL, f.mem_total.to_string()),
        (key::MEM_AVAILABLE, f.mem_available.to_string()),
        (key::ARRIBA, f.arriba.to_string()),
        (key::FIGURES_AT, at_ms.to_string()),
        (key::VERSION, env!("CARGO_PKG_VERSION").to_string()),
        (key::FINGERPRINT, fingerprint.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Every interval: new figures published, then a new list of peers.
#[allow(clippy::too_many_arguments)]
async fn renew(
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    me: Me,
    mut sampler: Sampler,
    slots: Slots,
    interval: Duration,
    fingerprint: Arc<ArcSwap<String>>,
    peers: Arc<ArcSwap<Vec<Peer>>>,
    seen: Seen,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is now: start published already.
    tick.tick().await;
    loop {
        tick.tick().await;
        let figures = sampler.sample(slots());
        let fingerprint = fingerprint.load_full();
        let mut guard = chitchat.lock().await;
        let state = guard.self_node_state();
        for (k, v) in published(&me, &figures, unix_ms(), &fingerprint) {
            state.set(k, v);
        }
        let list = snapshot(&guard, &me, &figures, &fingerprint, &seen);
        drop(guard);
        peers.store(Arc::new(list));
    }
}

/// The list of peers as chitchat knows them now.
fn snapshot(
    chitchat: &Chitchat,
    me: &Me,
    figures: &Figures,
    fingerprint: &str,
    seen: &Mutex<HashMap<ChitchatId, Instant>>,
) -> Vec<Peer> {
    let now = Instant::now();
    let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
    let states = chitchat.node_states();
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    seen.retain(|id, _| states.contains_key(id));
    let mut list: Vec<(u64, Peer)> = vec![(
        me.id.generation_id,
        Peer {
            name: me.name.clone(),
            local: true,
            proxy: me.proxy,
            gossip: me.id.gossip_advertise_addr,
            live: true,
            age: 0.0,
            figures: *figures,
            version: env!("CARGO_PKG_VERSION").to_string(),
            fingerprint: fingerprint.to_string(),
        },
    )];
    for (id, state) in states {
        // Not yet heard from beyond its heartbeat: nothing to show. A name
        // that is no host name (which `berth check` refuses) is no node's:
        // it would go into redirects, cookies and logs as it is.
        if *id == me.id
            || state.get(key::FIGURES_AT).is_none()
            || crate::config::cluster::check_name(&id.node_id).is_err()
        {
            continue;
        }
        let since = *seen.entry(id.clone()).or_insert(now);
        let age = now.saturating_duration_since(since).as_secs_f64();
        let peer = peer_of(id, state, live.contains(id), age);
        if !proxy_allowed(peer.proxy, me.proxy) {
            continue;
        }
        list.push((id.generation_id, peer));
    }
    // One node per name. This node keeps its own. Otherwise the oldest
    // generation that is alive keeps it: a node that came back under a
    // newer generation replaces its earlier self once that is dead, and one
    // that calls itself by the name of a live node (a clone of its machine,
    // or a hostile one) does not take its requests. With none alive, the
    // newest.
    let rank = |g: u64, p: &Peer| (p.local, p.live, if p.live { u64::MAX - g } else { g });
    let mut best: HashMap<&str, (bool, bool, u64)> = HashMap::new();
    for (g, p) in &list {
        let r = rank(*g, p);
        let e = best.entry(p.name.as_str()).or_insert(r);
        *e = (*e).max(r);
    }
    let mut taken: HashSet<&str> = HashSet::new();
    let keep: Vec<bool> = list
        .iter()
        .map(|(g, p)| best[p.name.as_str()] == rank(*g, p) && taken.insert(p.name.as_str()))
        .collect();
    let mut keep = keep.into_iter();
    list.retain(|_| keep.next().unwrap_or(false));
    list.sort_by(|(ga, a), (gb, b)| a.name.cmp(&b.name).then(ga.cmp(gb)));
    list.into_iter().map(|(_, p)| p).collect()
}

/// Whether this node (whose own proxy address is `own`) sends requests to
/// another node at `proxy`. Requests go where a node says it takes them:
/// not to an address no node can have (unspecified, multicast, port 0), and
/// to a loopback or link-local one only when this node's own is such too (a
/// farm on one machine): else a node could point the others at their own
/// loopback services (the admin listener, tenants' app ports) or the cloud's
/// metadata address (169.254.169.254), and read them through any site.
fn proxy_allowed(proxy: SocketAddr, own: SocketAddr) -> bool {
    let (ip, own) = (proxy.ip().to_canonical(), own.ip().to_canonical());
    let link_local = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V4(v4) => v4.is_link_local(),
        std::net::IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    proxy.port() != 0
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && ip != std::net::IpAddr::V4(Ipv4Addr::BROADCAST)
        && (!ip.is_loopback() || own.is_loopback())
        && (!link_local(ip) || link_local(own))
}

/// Another node as its published state says, every value that does not
/// parse read as the default.
fn peer_of(id: &ChitchatId, state: &NodeState, live: bool, age: f64) -> Peer {
    let text = |k: &str| state.get(k).unwrap_or_default();
    let count = |k: &str| text(k).parse::<u32>().unwrap_or(0);
    let bytes = |k: &str| text(k).parse::<u64>().unwrap_or(0);
    let real = |k: &str| {
        text(k)
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .unwrap_or(0.0)
    };
    Peer {
        name: id.node_id.to_string(),
        local: false,
        proxy: text(key::PROXY)
            .parse()
            .unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))),
        gossip: id.gossip_advertise_addr,
        live,
        age,
        figures: Figures {
            cpus: count(key::CPUS),
            load: real(key::LOAD),
            cpu_idle: real(key::CPU_IDLE).min(1.0),
            busy_slots: count(key::BUSY_SLOTS),
            free_slots: count(key::FREE_SLOTS),
            mem_total: bytes(key::MEM_TOTAL),
            mem_available: bytes(key::MEM_AVAILABLE),
            arriba: count(key::ARRIBA),
        },
        version: text(key::VERSION).to_string(),
        fingerprint: text(key::FINGERPRINT).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Me {
        Me {
            id: ChitchatId::new("www1", 5, "10.0.0.1:7946".parse().unwrap()),
            name: "www1".into(),
            proxy: "10.0.0.1:8080".parse().unwrap(),
        }
    }

    fn figures() -> Figures {
        Figures {
            cpus: 8,
            load: 1.25,
            cpu_idle: 0.5,
            busy_slots: 3,
            free_slots: 13,
            mem_total: 1 << 34,
            mem_available: 1 << 33,
            arriba: 310,
        }
    }

    /// A chitchat state with `nodes`' published values, as if gossip had
    /// brought them.
    fn chitchat_with(nodes: &[(ChitchatId, Vec<(String, String)>)]) -> Chitchat {
        let me = me();
        let config = ChitchatConfig {
            chitchat_id: me.id.clone(),
            cluster_id: CLUSTER_ID.into(),
            gossip_interval: Duration::from_secs(1),
            listen_addr: me.id.gossip_advertise_addr,
            seed_nodes: Vec::new(),
            failure_detector_config: failure_detector(Duration::from_secs(1)),
            marked_for_deletion_grace_period: Duration::from_secs(60),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let seeds = tokio::sync::watch::channel(Default::default()).1;
        let mut c = Chitchat::with_chitchat_id_and_seeds(
            config,
            seeds,
            published(&me, &figures(), 1, "fp"),
        );
        for (id, kvs) in nodes {
            let values = kvs.iter().enumerate().map(|(i, (k, v))| {
                (
                    k.clone(),
                    chitchat::VersionedValue {
                        value: v.clone(),
                        version: i as u64 + 1,
                        status: chitchat::DeletionStatus::Set,
                    },
                )
            });
            c.reset_node_state_if_update(id, values, kvs.len() as u64, 0);
        }
        c
    }

    #[test]
    fn published_values_read_back_as_they_were() {
        let other = Me {
            id: ChitchatId::new("www2", 9, "10.0.0.2:7946".parse().unwrap()),
            name: "www2".into(),
            proxy: "[fd00::2]:8080".parse().unwrap(),
        };
        let c = chitchat_with(&[(other.id.clone(), published(&other, &figures(), 7, "abc"))]);
        let list = snapshot(&c, &me(), &figures(), "fp", &Mutex::default());
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name, "www1");
        assert!(list[0].local && list[0].live);
        let p = &list[1];
        assert_eq!(p.name, "www2");
        assert!(!p.local);
        // Never heard from by the failure detector in this test.
        assert!(!p.live);
        assert_eq!(p.proxy, other.proxy);
        assert_eq!(p.gossip, other.id.gossip_advertise_addr);
        assert_eq!(p.figures, figures());
        assert_eq!(p.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(p.fingerprint, "abc");
        assert!(p.age < 1.0);
    }

    #[test]
    fn values_that_do_not_parse_read_as_defaults() {
        let id = ChitchatId::new("odd", 1, "10.0.0.3:7946".parse().unwrap());
        let kvs: Vec<(String, String)> = [
            (key::PROXY, "not an address"),
            (key::CPUS, "-1"),
            (key::LOAD, "NaN"),
            (key::CPU_IDLE, "7"),
            (key::BUSY_SLOTS, "99999999999"),
            (key::FREE_SLOTS, ""),
            (key::MEM_TOTAL, "1e9"),
            (key::MEM_AVAILABLE, "12 kB"),
            (key::ARRIBA, "fast"),
            (key::FIGURES_AT, "yesterday"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let c = chitchat_with(&[(id.clone(), kvs)]);
        let p = peer_of(&id, &c.node_states()[&id], false, 0.0);
        assert_eq!(p.proxy, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        // (Such a node is not listed: nothing can be sent to it.)
        let list = snapshot(&c, &me(), &figures(), "fp", &Mutex::default());
        assert!(list.iter().all(|p| p.name != "odd"));
        assert_eq!(
            p.figures,
            Figures {
                cpu_idle: 1.0,
                ..Figures::default()
            }
        );
        assert_eq!((p.version.as_str(), p.fingerprint.as_str()), ("", ""));
    }

    #[test]
    fn a_node_cannot_point_this_one_at_its_own_loopback_or_the_clouds_metadata() {
        let at = |name: &str, proxy: &str| {
            let m = Me {
                id: ChitchatId::new(name, 1, "10.0.0.7:7946".parse().unwrap()),
                name: name.into(),
                proxy: proxy.parse().unwrap(),
            };
            let kvs = published(&m, &figures(), 1, "fp");
            (m.id, kvs)
        };
        let c = chitchat_with(&[
            at("admin", "127.0.0.1:8081"),
            at("v6admin", "[::1]:8081"),
            at("mapped", "[::ffff:127.0.0.1]:8081"),
            at("metadata", "169.254.169.254:80"),
            at("linklocal", "[fe80::1]:80"),
            at("nowhere", "0.0.0.0:8080"),
            at("portless", "10.0.0.8:0"),
            at("good", "10.0.0.9:8080"),
        ]);
        // This node (me(): 10.0.0.1:8080) is on a network.
        let list = snapshot(&c, &me(), &figures(), "fp", &Mutex::default());
        let names: Vec<&str> = list.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["good", "www1"]);
        // A farm on one machine: loopback is where the others are.
        let mut local = me();
        local.proxy = "127.0.0.2:8080".parse().unwrap();
        let list = snapshot(&c, &local, &figures(), "fp", &Mutex::default());
        let names: Vec<&str> = list.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["admin", "good", "mapped", "v6admin", "www1"]);
    }

    #[test]
    fn a_node_known_only_by_its_heartbeat_is_not_listed() {
        let id = ChitchatId::new("new", 1, "10.0.0.4:7946".parse().unwrap());
        let c = chitchat_with(&[(id, vec![("cpus".into(), "4".into())])]);
        let list = snapshot(&c, &me(), &figures(), "fp", &Mutex::default());
        assert_eq!(list.len(), 1);
        assert!(list[0].local);
    }

    #[test]
    fn a_restarted_node_replaces_its_earlier_self() {
        let at = |name: &str, generation: u64| {
            let m = Me {
                id: ChitchatId::new(name, generation, "10.0.0.5:7946".parse().unwrap()),
                name: name.into(),
                proxy: "10.0.0.5:8080".parse().unwrap(),
            };
            let kvs = published(&m, &figures(), 1, "fp");
            (m.id, kvs)
        };
        let c = chitchat_with(&[at("www2", 3), at("www2", 8), at("www1", 2), at("www3", 1)]);
        let list = snapshot(&c, &me(), &figures(), "fp", &Mutex::default());
        let names: Vec<(&str, bool)> = list.iter().map(|p| (p.name.as_str(), p.local)).collect();
        // www1 generation 2 is this node's earlier self (this one is 5).
        assert_eq!(names, [("www1", true), ("www2", false), ("www3", false)]);
    }

    #[test]
    fn age_counts_from_when_this_node_saw_the_figures_change() {
        let other = Me {
            id: ChitchatId::new("www2", 9, "10.0.0.2:7946".parse().unwrap()),
            name: "www2".into(),
            proxy: "10.0.0.2:8080".parse().unwrap(),
        };
        let c = chitchat_with(&[(other.id.clone(), published(&other, &figures(), 7, "abc"))]);
        let seen = Mutex::new(HashMap::from([(
            other.id.clone(),
            Instant::now() - Duration::from_secs(12),
        )]));
        let list = snapshot(&c, &me(), &figures(), "fp", &seen);
        let age = list[1].age;
        assert!((12.0..13.0).contains(&age), "{age}");
        // Forgotten nodes leave `seen`.
        let gone = ChitchatId::new("gone", 1, "10.0.0.9:7946".parse().unwrap());
        seen.lock().unwrap().insert(gone.clone(), Instant::now());
        snapshot(&c, &me(), &figures(), "fp", &seen);
        assert!(!seen.lock().unwrap().contains_key(&gone));
    }

    #[test]
    fn what_a_node_publishes_fits_many_times_in_a_datagram() {
        // The longest values berth publishes, with a long name: the room
        // the transport's MAX_MESSAGE comment counts on.
        let m = Me {
            id: ChitchatId::new("x".repeat(64), u64::MAX, "[fd00::1]:65535".parse().unwrap()),
            name: "x".repeat(64),
            proxy: "[fd00:1:2:3:4:5:6:7]:65535".parse().unwrap(),
        };
        let f = Figures {
            cpus: u32::MAX,
            load: 1234.56,
            cpu_idle: 1.0,
            busy_slots: u32::MAX,
            free_slots: u32::MAX,
            mem_total: u64::MAX,
            mem_available: u64::MAX,
            arriba: u32::MAX,
        };
        let bytes: usize = published(&m, &f, u64::MAX, &"f".repeat(64))
            .iter()
            // Key and value with their lengths, a version and a flag.
            .map(|(k, v)| k.len() + v.len() + 2 + 2 + 8 + 1)
            .sum();
        assert!(bytes < 600, "{bytes}");
        assert!(super::super::transport::MAX_MESSAGE / bytes >= 100);
    }
}
