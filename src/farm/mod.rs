//! A farm of berth nodes (issue 11): membership and load statistics over
//! gossip, and mod_backhand's placement.
//!
//! - [`gossip`]: membership and every node's figures, over [`transport`]
//!   (chitchat in datagrams signed with the cluster secret); [`figures`]:
//!   this node's own.
//! - [`place`]: the candidacy functions, one pure function.
//! - [`handover`]: mod_backhand's redirect names.
//! - [`mark`]: the signed mark on a request one node proxies to another, and
//!   the sticky cookie.
//!
//! The types here are what the parts share: what the supervisor hands the
//! front end (`[cluster]` as [`ClusterPlan`], a route's [`Balance`]), and
//! what gossip knows of every node ([`Peer`]).

pub mod figures;
pub mod gossip;
pub mod handover;
pub mod mark;
pub mod place;
pub mod transport;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A route's placement (`balance`, `handover`, `sticky`, `self_redirect`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Balance {
    /// The candidacy functions, in order, as written (each checked by
    /// [`place::parse`] when the configuration was read).
    pub funcs: Vec<String>,
    pub handover: Handover,
    /// Set a signed cookie naming the node that served (for `bySession`).
    pub sticky: bool,
    /// Requests placed on this very node go through the proxy path too
    /// (a light and a heavy instance on one machine).
    pub self_redirect: bool,
}

/// How a request placed on another node gets there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Handover {
    /// This node proxies it, marked so the other serves it itself.
    Proxy,
    /// A redirect to the node's proxy address (`redirect ip`).
    RedirectIp,
    /// A redirect to a name made from the node's name and the request's
    /// host (`redirect name FORMAT`, mod_backhand's `%-NS`, `%NS`, `%-NH`,
    /// `%NH`).
    RedirectName(String),
}

/// A network in `accept_from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts
    /// as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let bits = u32::from(self.prefix.min(32));
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let bits = u32::from(self.prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `[cluster]` as the front end runs it. The gossip socket (bound by the
/// supervisor at `bind`) comes with the plan, right after the listeners.
/// (Its `Debug` leaves the secret out.)
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterPlan {
    /// This node's name (`name`, default: the host name).
    pub name: String,
    /// Where the other nodes send gossip to this one (`advertise`).
    pub advertise: SocketAddr,
    /// Where the other nodes send the requests they proxy to this one.
    pub proxy: SocketAddr,
    /// Other nodes' gossip addresses, `host:port`, to join by.
    pub seeds: Vec<String>,
    /// How often this node gossips and renews its figures.
    pub interval: Duration,
    /// The cluster's secret (`secret_file`, read by the supervisor): every
    /// datagram and every proxied request's mark is signed with it.
    pub secret: Vec<u8>,
    /// Datagrams from elsewhere are dropped (empty: from anywhere).
    pub accept_from: Vec<Cidr>,
    /// A fingerprint of the effective configuration: every node of a farm
    /// should show the same.
    pub fingerprint: String,
}

impl std::fmt::Debug for ClusterPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPlan")
            .field("name", &self.name)
            .field("advertise", &self.advertise)
            .field("proxy", &self.proxy)
            .field("seeds", &self.seeds)
            .field("interval", &self.interval)
            .field("secret", &format_args!("({} bytes)", self.secret.len()))
            .field("accept_from", &self.accept_from)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// What a node announces about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub cpus: u32,
    /// 1-minute load average.
    pub load: f64,
    /// Fraction of CPU time idle since the figures before, 0..=1.
    pub cpu_idle: f64,
    /// Requests in flight in the node's apps, and how many more its tenants'
    /// `concurrency` allow.
    pub busy_slots: u32,
    pub free_slots: u32,
    pub mem_total: u64,
    pub mem_available: u64,
    /// The speed figure of a short CPU benchmark at start-up (mod_backhand's
    /// "arriba"): higher is faster.
    pub arriba: u32,
}

/// One node as this node knows it (itself included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    /// Whether it is this node.
    pub local: bool,
    /// Where requests proxied to it go.
    pub proxy: SocketAddr,
    /// Its gossip address.
    pub gossip: SocketAddr,
    /// Whether the failure detector holds it alive.
    pub live: bool,
    /// Seconds since this node got its latest figures (its own clock, not
    /// the other node's; 0 for itself).
    pub age: f64,
    pub figures: Figures,
    /// Its berth version and configuration fingerprint.
    pub version: String,
    pub fingerprint: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_contains() {
        let net = Cidr {
            addr: "10.1.0.0".parse().unwrap(),
            prefix: 16,
        };
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let all = Cidr {
            addr: "0.0.0.0".parse().unwrap(),
            prefix: 0,
        };
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let one = Cidr {
            addr: "fd00::1".parse().unwrap(),
            prefix: 128,
        };
        assert!(one.contains("fd00::1".parse().unwrap()));
        assert!(!one.contains("fd00::2".parse().unwrap()));
    }

    #[test]
    fn a_plans_debug_leaves_the_secret_out() {
        let plan = ClusterPlan {
            name: "a".into(),
            advertise: "127.0.0.1:7946".parse().unwrap(),
            proxy: "127.0.0.1:80".parse().unwrap(),
            seeds: Vec::new(),
            interval: Duration::from_secs(1),
            secret: b"very secret text".to_vec(),
            accept_from: Vec::new(),
            fingerprint: "f".into(),
        };
        let shown = format!("{plan:?}");
        assert!(
            !shown.contains("very secret") && !shown.contains("118, 101"),
            "{shown}"
        );
        assert!(shown.contains("(16 bytes)"), "{shown}");
    }
}
