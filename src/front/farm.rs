//! The farm in the request flow: placement on a route with `balance`, and
//! the handover to the chosen node (`crate::farm` has the parts).
//!
//! Request flow position: handler → (site, route) → here → another node
//! (proxied or redirected), or back to the handler to serve it here.
//!
//! - **Placement** runs [`place::place`] over every live node (this one
//!   included) with the figures gossip last brought, this node's own count
//!   of requests in flight to each, the request's sticky cookie and a
//!   random source. Nothing is placed twice: a request that carries a
//!   valid mark from another node is served where it arrives, and so is
//!   one that a redirect name already sent to this node. So is one whose
//!   mark a node of the farm signed but that is refused here (stale: the
//!   two clocks differ; or made for another name): another node placed
//!   it, and placed again it could go back there, and back, for ever. Its
//!   client's address is not taken from such a mark.
//! - **Proxy** (the default): over kept-alive connections to the node's
//!   proxy address, with the client's address in `Forwarded` and the signed
//!   mark ([`mark`]). A node that cannot be reached is skipped before any of
//!   the request was sent, so every request goes to the next candidate;
//!   one that fails after the request went out is tried on the next only
//!   for GET and HEAD without a body. A node that hangs fails a request
//!   when gossip holds it dead (it still takes connections into its
//!   backlog). When every candidate failed, the request is served here:
//!   none is lost.
//! - **Redirect** (`redirect ip`, `redirect name FORMAT`): a 302 to the node:
//!   `redirect name` with the scheme the client came by (https after TLS),
//!   `redirect ip` to its proxy address, a plain listener (http).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::request::Parts;
use http::{HeaderValue, Response, header};
use hyper::body::Incoming;
use tracing::{debug, warn};

use super::body::Body;
use super::conn::ConnInfo;
use super::respond::Reject;
use crate::backend::http_proxy::{self, AppConn, Forwarded, Held};
use crate::farm::gossip::Cluster;
use crate::farm::place::{self, Func};
use crate::farm::{Balance, ClusterPlan, Handover, Peer, handover, mark};

/// A route's placement, parsed once per configuration.
#[derive(Debug)]
pub struct Placement {
    pub funcs: Vec<Func>,
    pub handover: Handover,
    pub sticky: bool,
    pub self_redirect: bool,
    /// The cookie `bySession` reads and `sticky` sets.
    pub cookie: String,
}

impl Placement {
    /// From the configuration (checked by the supervisor; a function that
    /// does not parse after all turns placement off for the route).
    pub fn new(balance: &Balance) -> Result<Placement, String> {
        let funcs = balance
            .funcs
            .iter()
            .map(|f| place::parse(f))
            .collect::<Result<Vec<_>, _>>()?;
        let cookie = funcs
            .iter()
            .find_map(|f| match f {
                Func::BySession(c) => Some(c.clone()),
                _ => None,
            })
            .unwrap_or_else(|| place::DEFAULT_COOKIE.to_string());
        Ok(Placement {
            funcs,
            handover: balance.handover.clone(),
            sticky: balance.sticky,
            self_redirect: balance.self_redirect,
            cookie,
        })
    }
}

/// How long to wait for another node to accept a connection: it is on the
/// farm's network; a node that takes longer is treated as down for this
/// request (the next candidate gets it).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The other node answers in its own time: its routes have their own
/// limits, these only bound a node that hangs.
const HOP_FIRST_BYTE: Duration = Duration::from_secs(300);
const HOP_IDLE: Duration = Duration::from_secs(300);
/// Idle connections kept per node.
const POOL_PER_NODE: usize = 64;

/// The farm as the front end runs it.
pub struct FarmRt {
    pub plan: ClusterPlan,
    /// Gossip: every node's figures.
    cluster: Cluster,
    /// Requests in flight from here to each node, by name.
    flights: Mutex<HashMap<String, Arc<AtomicU32>>>,
    /// Requests being answered here (this node's own in flight, for
    /// `byInFlight` and `byTwoChoices`: 0 would keep every request here).
    here: Arc<AtomicU32>,
    /// Requests placed on each node (this one included), by name.
    placed: Mutex<HashMap<String, u64>>,
    /// Marks that did not verify (removed and ignored).
    pub marks_refused: AtomicU64,
    /// Nodes that could not be reached or failed a proxied request.
    pub handovers_failed: AtomicU64,
    pool: Arc<Pool>,
}

/// What placement decided.
pub enum Decision {
    /// Serve it here.
    Here,
    /// Redirect the client there.
    Redirect(String),
    /// Proxy it, to the first of these that can be reached.
    Proxy(Vec<Candidate>),
}

/// A node to proxy to.
pub struct Candidate {
    pub name: Arc<str>,
    pub addr: SocketAddr,
    /// This very node (reached only with `self_redirect`).
    pub local: bool,
}

/// How a handover ended.
pub enum Handed {
    /// The node answered.
    Served(Response<Body>, Arc<str>),
    /// Serve it here after all (every candidate failed before the request
    /// was sent, or the list came to this node); the body comes back.
    Here(Option<Incoming>),
    /// The request went out and the node failed it.
    Failed(Reject),
}

impl FarmRt {
    pub fn new(plan: ClusterPlan, cluster: Cluster) -> FarmRt {
        FarmRt {
            plan,
            cluster,
            flights: Mutex::default(),
            here: Arc::default(),
            placed: Mutex::default(),
            marks_refused: AtomicU64::new(0),
            handovers_failed: AtomicU64::new(0),
            pool: Arc::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.plan.name
    }

    /// Every node known, this one included.
    pub fn peers(&self) -> Arc<Vec<Peer>> {
        self.cluster.peers()
    }

    /// Gossip datagrams dropped so far, by reason.
    pub fn dropped(&self) -> Vec<(&'static str, u64)> {
        let d = self.cluster.dropped();
        vec![
            ("not_accepted", d.not_accepted),
            ("malformed", d.malformed),
            ("bad_mac", d.bad_mac),
            ("stale", d.stale),
            ("replayed", d.replayed),
            ("too_big", d.too_big),
        ]
    }

    /// A new configuration's fingerprint (the same farm otherwise).
    pub fn set_fingerprint(&self, fingerprint: &str) {
        self.cluster.set_fingerprint(fingerprint);
    }

    /// Stops gossip now (the configuration moved or ended the farm).
    pub fn stop(&self) {
        self.cluster.abort();
    }

    /// Requests placed per node so far.
    pub fn placed(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = lock(&self.placed)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        v.sort();
        v
    }

    /// Requests in flight from here, per node.
    pub fn in_flight(&self) -> Vec<(String, u32)> {
        let mut v: Vec<_> = lock(&self.flights)
            .iter()
            .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
            .collect();
        v.sort();
        v
    }

    /// Whether `ip` is another node's proxy address (its connections are
    /// the farm's, not one client's).
    pub fn is_node(&self, ip: IpAddr) -> bool {
        self.peers()
            .iter()
            .any(|p| !p.local && p.proxy.ip().to_canonical() == ip.to_canonical())
    }

    /// Checks the mark a request came with (already removed from it).
    pub fn verify(
        &self,
        value: &HeaderValue,
        parts: &Parts,
        host: &str,
    ) -> Result<mark::Marked, mark::Refused> {
        let bound = bound(parts, host);
        let checked = mark::verify(
            &self.plan.secret,
            value.as_bytes(),
            bound,
            self.name(),
            now(),
        );
        if let Err(why) = checked {
            self.marks_refused.fetch_add(1, Ordering::Relaxed);
            debug!("{} {}: farm mark ignored ({why:?})", parts.method, host);
        }
        checked
    }

    /// Counts a request as answered here until the guard is dropped.
    pub fn answering(&self) -> Answering {
        self.here.fetch_add(1, Ordering::Relaxed);
        Answering(self.here.clone())
    }

    fn flight(&self, node: &str) -> Arc<AtomicU32> {
        let mut flights = lock(&self.flights);
        if let Some(f) = flights.get(node) {
            return f.clone();
        }
        flights.entry(node.to_string()).or_default().clone()
    }

    fn count_placed(&self, node: &str) {
        let mut placed = lock(&self.placed);
        match placed.get_mut(node) {
            Some(n) => *n += 1,
            None => {
                placed.insert(node.to_string(), 1);
            }
        }
    }

    /// The node the request's sticky cookie names, if its signature holds.
    pub fn cookie_node(&self, parts: &Parts, cookie: &str) -> Option<String> {
        cookie_value(parts, cookie)
            .and_then(|v| mark::sticky_node(&self.plan.secret, &v).map(str::to_string))
    }

    /// The `Set-Cookie` naming `node`, unless the request already had it.
    pub fn sticky_cookie(
        &self,
        p: &Placement,
        parts: &Parts,
        node: &str,
        https: bool,
    ) -> Option<HeaderValue> {
        if !p.sticky || self.cookie_node(parts, &p.cookie).as_deref() == Some(node) {
            return None;
        }
        let value = mark::sticky_value(&self.plan.secret, node);
        let secure = if https { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Lax{secure}",
            p.cookie
        ))
        .ok()
    }

    /// Places a request for `host` (as berth routes it) that came over TLS
    /// or not (`https`).
    pub fn decide(&self, p: &Placement, parts: &Parts, host: &str, https: bool) -> Decision {
        // A redirect name already made for this node: it came by redirect.
        // (`host` is lowercased; a node's name may have capitals.)
        if let Handover::RedirectName(format) = &p.handover
            && handover::redirect_name(format, self.name(), host).eq_ignore_ascii_case(host)
        {
            return Decision::Here;
        }
        if p.handover == Handover::RedirectIp
            && host
                .trim_matches(['[', ']'])
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip == self.plan.proxy.ip())
        {
            return Decision::Here;
        }
        let peers = self.peers();
        let mut live: Vec<&Peer> = peers.iter().filter(|n| n.live || n.local).collect();
        // In an order of its own for each request: every function is a
        // stable sort, so ties would otherwise go to the same node from
        // every front end (the list is in the same order everywhere).
        for i in (1..live.len()).rev() {
            live.swap(i, random_below(i + 1));
        }
        let flights = lock(&self.flights);
        let nodes: Vec<place::Node> = live
            .iter()
            .map(|n| place::Node {
                name: &n.name,
                local: n.local,
                age: n.age,
                figures: n.figures,
                // (Less the request being placed, counted since it came.)
                in_flight: if n.local {
                    self.here.load(Ordering::Relaxed).saturating_sub(1)
                } else {
                    flights
                        .get(n.name.as_str())
                        .map_or(0, |f| f.load(Ordering::Relaxed))
                },
            })
            .collect();
        drop(flights);
        let cookie = |name: &str| self.cookie_node(parts, name);
        let mut random = |n: usize| random_below(n);
        let mut req = place::Request {
            cookie: &cookie,
            random: &mut random,
        };
        let order = place::place(&nodes, &p.funcs, &mut req);
        let Some(&first) = order.first() else {
            self.count_placed(self.name());
            return Decision::Here;
        };
        let chosen = live[first];
        self.count_placed(&chosen.name);
        if chosen.local && !p.self_redirect {
            return Decision::Here;
        }
        match &p.handover {
            Handover::Proxy => Decision::Proxy(
                order
                    .iter()
                    .map(|&i| Candidate {
                        name: live[i].name.as_str().into(),
                        addr: live[i].proxy,
                        local: live[i].local,
                    })
                    .collect(),
            ),
            // The proxy address is a plain listener (the nodes' hop).
            Handover::RedirectIp => Decision::Redirect(location(
                "http",
                parts,
                &match chosen.proxy {
                    SocketAddr::V4(a) => a.to_string(),
                    SocketAddr::V6(a) => a.to_string(),
                },
            )),
            // The site under another name: as the client came, over TLS or
            // not (an HTTP/1.1 request's target has no scheme to go by).
            Handover::RedirectName(format) => Decision::Redirect(location(
                if https { "https" } else { "http" },
                parts,
                &handover::redirect_name(format, &chosen.name, host),
            )),
        }
    }

    /// Proxies the request to the first candidate that takes it.
    #[allow(clippy::too_many_arguments)]
    pub async fn hand_over(
        &self,
        p: &Placement,
        candidates: Vec<Candidate>,
        parts: &Parts,
        body: Option<Incoming>,
        conn: &ConnInfo,
        host: &str,
        raw_host: &str,
    ) -> Handed {
        // A body already at its end is none: hyper gives every request one
        // (HTTP/2, and HTTP/1.1 off the fast lane), empty or not.
        let mut body = body.filter(|b| !http_body::Body::is_end_stream(b));
        let retry_after_send =
            body.is_none() && matches!(parts.method, http::Method::GET | http::Method::HEAD);
        for c in candidates {
            if c.local && !p.self_redirect {
                return Handed::Here(body);
            }
            let lease = match self.lease(&c).await {
                Ok(lease) => lease,
                Err(e) => {
                    self.handovers_failed.fetch_add(1, Ordering::Relaxed);
                    warn!("farm: node {} ({}) cannot be reached: {e}", c.name, c.addr);
                    continue;
                }
            };
            let signed = mark::sign(
                &self.plan.secret,
                bound(parts, host),
                self.name(),
                &c.name,
                conn.peer,
                conn.tls,
                now(),
            );
            let forwarded = Forwarded {
                client: conn.peer,
                proto_https: conn.tls,
                host: raw_host,
                mark: HeaderValue::from_str(&signed).ok(),
            };
            let sent = http_proxy::to_node(
                c.addr,
                lease,
                parts,
                body.take(),
                &forwarded,
                HOP_FIRST_BYTE,
                HOP_IDLE,
            );
            // A node that hangs (stopped, swapping) still takes connections
            // into its backlog: its answer is waited for only while gossip
            // holds it alive, not for HOP_FIRST_BYTE.
            let answer = tokio::select! {
                answer = sent => answer.map_err(|(failure, _lease)| failure.to_string()),
                () = self.dead(&c.name) => Err("held dead by gossip before it answered".into()),
            };
            match answer {
                Ok(resp) => return Handed::Served(resp, c.name),
                Err(failure) => {
                    self.handovers_failed.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        "farm: node {} ({}) failed a request: {failure}",
                        c.name, c.addr
                    );
                    if !retry_after_send {
                        return Handed::Failed(Reject::BadGateway(format!(
                            "node {}: {failure}",
                            c.name
                        )));
                    }
                }
            }
        }
        Handed::Here(body)
    }

    /// Returns once gossip no longer holds `node` alive (looked at once an
    /// interval; this node is always alive).
    async fn dead(&self, node: &str) {
        let mut tick = tokio::time::interval(self.plan.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let peers = self.peers();
            if !peers.iter().any(|p| p.name == node && (p.live || p.local)) {
                return;
            }
        }
    }

    /// A connection to `c`, kept or new (connected before any of the
    /// request is given away, so a node that is down costs nothing but time).
    async fn lease(&self, c: &Candidate) -> std::io::Result<NodeLease> {
        let flight = self.flight(&c.name);
        let conn = match self.pool.take(c.addr) {
            Some(conn) => conn,
            None => connect(c.addr).await?,
        };
        flight.fetch_add(1, Ordering::Relaxed);
        Ok(NodeLease {
            pool: self.pool.clone(),
            addr: c.addr,
            conn: Some(conn),
            flight,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn bound<'a>(parts: &'a Parts, host: &'a str) -> mark::Bound<'a> {
    mark::Bound {
        method: parts.method.as_str(),
        host,
        target: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
    }
}

/// `scheme://authority/target` of a redirect to another node.
fn location(scheme: &str, parts: &Parts, authority: &str) -> String {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    format!("{scheme}://{authority}{target}")
}

/// The value of the cookie `name` in the request's `Cookie` headers.
fn cookie_value(parts: &Parts, name: &str) -> Option<String> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_string())
}

/// A number in 0..n from a per-thread generator (placement's shuffles need
/// no secrecy, only spread).
fn random_below(n: usize) -> usize {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id()) | 1
        });
    }
    if n == 0 {
        return 0;
    }
    STATE.with(|s| {
        // xorshift64*
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    })
}

/// A request answered here (see [`FarmRt::answering`]).
pub struct Answering(Arc<AtomicU32>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Kept-alive connections to other nodes, by address.
#[derive(Default)]
struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<AppConn>>>,
}

impl Pool {
    fn take(&self, addr: SocketAddr) -> Option<AppConn> {
        let mut idle = lock(&self.idle);
        let conns = idle.get_mut(&addr)?;
        while let Some(conn) = conns.pop() {
            if !conn.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, conn: AppConn) {
        if conn.is_closed() {
            return;
        }
        let mut idle = lock(&self.idle);
        let conns = idle.entry(addr).or_default();
        conns.retain(|c| !c.is_closed());
        if conns.len() < POOL_PER_NODE {
            conns.push(conn);
        }
    }
}

async fn connect(addr: SocketAddr) -> std::io::Result<AppConn> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_headers(http_proxy::NODE_MAX_HEADERS)
        .handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!("connection to a node: {e}");
        }
    });
    Ok(sender)
}

/// A request's hold on a node: its count in flight, and the connection,
/// back in the pool when the response ended cleanly.
struct NodeLease {
    pool: Arc<Pool>,
    addr: SocketAddr,
    conn: Option<AppConn>,
    flight: Arc<AtomicU32>,
}

impl Held for NodeLease {
    fn take_conn(&mut self) -> Option<AppConn> {
        self.conn.take()
    }
    fn keep_conn(&mut self, conn: AppConn) {
        self.conn = Some(conn);
    }
}

impl Drop for NodeLease {
    fn drop(&mut self) {
        self.flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(conn) = self.conn.take() {
            self.pool.put(self.addr, conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_name() {
        let (parts, ()) = http::Request::builder()
            .header("cookie", "a=1; berth_node=x.sig")
            .header("cookie", "b=\"2\"")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(cookie_value(&parts, "berth_node").as_deref(), Some("x.sig"));
        assert_eq!(cookie_value(&parts, "b").as_deref(), Some("2"));
        assert_eq!(cookie_value(&parts, "c"), None);
    }

    #[test]
    fn random_numbers_stay_below_n_and_spread() {
        let mut seen = [0u32; 4];
        for _ in 0..4000 {
            seen[random_below(4)] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
        assert_eq!(random_below(0), 0);
    }
}
