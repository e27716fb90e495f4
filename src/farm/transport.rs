//! The gossip transport: chitchat's messages in authenticated UDP datagrams.
//!
//! [`SignedTransport`] implements chitchat's `Transport` on the socket the
//! supervisor bound at `[cluster] bind` (the front end cannot bind); the
//! gossip ([`super::gossip`]) runs chitchat over it.
//!
//! # The datagram
//! All integers big-endian:
//!
//! | bytes | what |
//! |---|---|
//! | 0..3 | magic `brt` |
//! | 3 | version, 1 |
//! | 4..12 | the sender's epoch: 64 random bits chosen when its gossip started |
//! | 12..20 | the sender's counter: 1 for its first datagram, +1 for each after |
//! | 20..28 | the sender's unix time in milliseconds |
//! | 28..30 | the length of the message that follows |
//! | 30..30+len | chitchat's serialized message |
//! | last 32 | HMAC-SHA-256 of everything before it |
//!
//! The MAC's key is not the cluster secret itself but HMAC-SHA-256(secret,
//! `"berth gossip 1"`), so a MAC made for gossip means nothing anywhere else
//! the secret signs (the proxy mark).
//!
//! # What is dropped, and counted ([`Dropped`])
//! Checked in this order, the first that fails names the reason:
//! 1. `not_accepted`: the source address is outside `accept_from` (an
//!    empty list accepts any address).
//! 2. `malformed`: shorter than a header and a MAC, another magic or
//!    version (chitchat's own unsigned datagrams land here), a length that
//!    does not match the datagram's (truncated, or no MAC), or a message
//!    chitchat cannot read even though its MAC is right.
//! 3. `bad_mac`: the MAC does not verify (a changed byte, another secret),
//!    compared in constant time.
//! 4. `stale`: the sender's time is more than max(30 s, 10 × interval) from
//!    ours (clocks of a farm are kept by NTP; a replay from before that is
//!    refused without remembering it).
//! 5. `replayed`: this (epoch, counter) was accepted before, is older than
//!    the last 128 counters seen from that epoch (IPsec's sliding window,
//!    RFC 4303 3.4.3), or carries this node's own epoch (its own datagram
//!    sent back).
//!
//! `too_big` counts datagrams this node did not send because they would
//! not fit in one UDP datagram (see [`MAX_MESSAGE`]).
//!
//! The MAC covers no address: behind NAT, or with seeds written as names,
//! the two ends do not agree on them. So a datagram captured on the way to
//! one node can be delivered once to each other node; what it carries is
//! genuine and fresh, and chitchat's answer goes to whoever sent it, which
//! `accept_from` limits.
//!
//! Nothing here panics on input or allocates per datagram: the receive
//! buffer, the send buffer and the replay windows are allocated once, and
//! the MAC works on the stack. (chitchat allocates the message it reads.)

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;

use super::Cidr;

const MAGIC: [u8; 3] = *b"brt";
const VERSION: u8 = 1;
/// Magic, version, epoch, counter, time, length.
pub const HEADER_LEN: usize = 3 + 1 + 8 + 8 + 8 + 2;
pub const MAC_LEN: usize = 32;
/// The most a UDP datagram carries over IPv4 (65,535 less the IP and UDP
/// headers); over IPv6 it is 20 bytes more, which we do not count on.
pub const MAX_DATAGRAM: usize = 65_507;
/// The longest chitchat message that fits in one datagram with our header
/// and MAC.
///
/// chitchat (0.11) sizes what it sends against the same 65,507 bytes and
/// leaves no room for an envelope: a SYN carries the digest of every node
/// (about 40 bytes and the node's name each, unbounded), a SYN-ACK's delta
/// is cut at 65,507 − 1 − the digest's length and an ACK's at 65,506 (its
/// 3-byte magic and version not counted, so even its own UDP transport can
/// overflow by 3). The limit is not configurable, so the room is left by
/// what berth publishes: 13 short values per node (see `gossip::key`),
/// under 600 bytes even at their longest, so a delta only comes near a
/// full datagram when a node joins a farm of more than about 100 nodes,
/// whose whole state no longer fits in one. Such a message is not sent
/// (counted as `too_big`, and warned about): chitchat's own transport
/// could not send it either, or barely, and the new node would not learn
/// the farm in one exchange anyway.
pub const MAX_MESSAGE: usize = MAX_DATAGRAM - HEADER_LEN - MAC_LEN;
/// What the receive buffer holds: any datagram the kernel can deliver, so
/// one that was cut short never looks whole.
const RECV_BUF: usize = 65_536;
/// Counters remembered per epoch below the highest seen.
const WINDOW: u64 = 128;
/// Epochs remembered at most. Only secret holders can make new ones (the
/// window is updated after the MAC and time checks); a farm's nodes and
/// their restarts within the stale bound are far fewer.
pub const MAX_EPOCHS: usize = 1024;
/// The least tolerated difference between the sender's clock and ours.
const MIN_SKEW: Duration = Duration::from_secs(30);

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NotAccepted,
    Malformed,
    BadMac,
    Stale,
    Replayed,
}

/// Datagrams dropped, by reason (see the module doc), since gossip started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Dropped {
    pub not_accepted: u64,
    pub malformed: u64,
    pub bad_mac: u64,
    pub stale: u64,
    pub replayed: u64,
    /// Not sent: too big for a datagram with the envelope.
    pub too_big: u64,
}

/// The live counts behind [`Dropped`], shared by the socket and the cluster.
#[derive(Debug, Default)]
pub struct Counters {
    not_accepted: AtomicU64,
    malformed: AtomicU64,
    bad_mac: AtomicU64,
    stale: AtomicU64,
    replayed: AtomicU64,
    too_big: AtomicU64,
}

impl Counters {
    pub fn count(&self, reason: Reason) {
        let counter = match reason {
            Reason::NotAccepted => &self.not_accepted,
            Reason::Malformed => &self.malformed,
            Reason::BadMac => &self.bad_mac,
            Reason::Stale => &self.stale,
            Reason::Replayed => &self.replayed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Dropped {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Dropped {
            not_accepted: get(&self.not_accepted),
            malformed: get(&self.malformed),
            bad_mac: get(&self.bad_mac),
            stale: get(&self.stale),
            replayed: get(&self.replayed),
            too_big: get(&self.too_big),
        }
    }
}

/// The key and the rules: seals datagrams and opens them.
#[derive(Clone)]
pub struct Seal {
    /// Keyed once; cloned per datagram (a copy on the stack).
    mac: Hmac<Sha256>,
    accept_from: Vec<Cidr>,
    max_skew_ms: u64,
}

impl Seal {
    /// `interval` is the gossip interval: the stale bound is max(30 s, 10 ×
    /// interval).
    pub fn new(secret: &[u8], accept_from: Vec<Cidr>, interval: Duration) -> Seal {
        let mut derive = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
            .expect("HMAC takes a key of any length");
        derive.update(b"berth gossip 1");
        let key = derive.finalize().into_bytes();
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key)
            .expect("HMAC takes a key of any length");
        let skew = MIN_SKEW.max(interval.saturating_mul(10));
        Seal {
            mac,
            accept_from,
            max_skew_ms: u64::try_from(skew.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Writes one datagram into `out` (cleared first): the header, the
    /// message `write` appends, the MAC. Err (with the message's length) when
    /// the message is longer than [`MAX_MESSAGE`]; `out` then holds nothing
    /// to send.
    pub fn seal(
        &self,
        sender: &mut Sender,
        now_ms: u64,
        out: &mut Vec<u8>,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), usize> {
        sender.counter += 1;
        out.clear();
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&sender.epoch.to_be_bytes());
        out.extend_from_slice(&sender.counter.to_be_bytes());
        out.extend_from_slice(&now_ms.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        write(out);
        let len = out.len() - HEADER_LEN;
        if len > MAX_MESSAGE {
            out.clear();
            return Err(len);
        }
        let len16 = u16::try_from(len).expect("MAX_MESSAGE fits in 16 bits");
        out[HEADER_LEN - 2..HEADER_LEN].copy_from_slice(&len16.to_be_bytes());
        let mut mac = self.mac.clone();
        mac.update(out);
        let tag = mac.finalize().into_bytes();
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// The message in `datagram` from `from`, or why it is dropped. Marks
    /// (epoch, counter) seen in `replay` when it passes.
    pub fn open<'a>(
        &self,
        replay: &mut Replay,
        from: IpAddr,
        datagram: &'a [u8],
        now_ms: u64,
    ) -> Result<&'a [u8], Reason> {
        if !self.accept_from.is_empty() && !self.accept_from.iter().any(|c| c.contains(from)) {
            return Err(Reason::NotAccepted);
        }
        if datagram.len() < HEADER_LEN + MAC_LEN || datagram[..3] != MAGIC || datagram[3] != VERSION
        {
            return Err(Reason::Malformed);
        }
        let field = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&datagram[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let (epoch, counter, sent_ms) = (field(4), field(12), field(20));
        let len = usize::from(u16::from_be_bytes([datagram[28], datagram[29]]));
        if HEADER_LEN + len + MAC_LEN != datagram.len() {
            return Err(Reason::Malformed);
        }
        let (signed, tag) = datagram.split_at(HEADER_LEN + len);
        let mut mac = self.mac.clone();
        mac.update(signed);
        if mac.verify_slice(tag).is_err() {
            return Err(Reason::BadMac);
        }
        if sent_ms.abs_diff(now_ms) > self.max_skew_ms {
            return Err(Reason::Stale);
        }
        if !replay.accept(epoch, counter, sent_ms, now_ms, self.max_skew_ms) {
            return Err(Reason::Replayed);
        }
        Ok(&signed[HEADER_LEN..])
    }
}

/// What a node stamps on the datagrams it sends.
#[derive(Debug)]
pub struct Sender {
    epoch: u64,
    /// The last counter used.
    counter: u64,
}

impl Sender {
    pub fn new(epoch: u64) -> Sender {
        Sender { epoch, counter: 0 }
    }
}

/// The counters seen from one sender's epoch.
#[derive(Debug, Clone, Copy)]
struct Window {
    epoch: u64,
    /// The highest counter accepted.
    top: u64,
    /// Bit i: counter top − i was accepted.
    seen: u128,
    /// The latest sender time accepted from this epoch.
    newest_ms: u64,
    /// When it was last used, on `Replay::clock`.
    used: u64,
}

/// Which (epoch, counter) pairs were accepted: a sliding window per epoch,
/// at most [`MAX_EPOCHS`] epochs.
#[derive(Debug)]
pub struct Replay {
    /// This node's own epoch: nothing bearing it is accepted.
    own: u64,
    windows: Vec<Window>,
    clock: u64,
}

impl Replay {
    pub fn new(own: u64) -> Replay {
        Replay {
            own,
            windows: Vec::with_capacity(MAX_EPOCHS),
            clock: 0,
        }
    }

    /// Whether (epoch, counter) is new; if so it is marked seen.
    fn accept(
        &mut self,
        epoch: u64,
        counter: u64,
        sent_ms: u64,
        now_ms: u64,
        skew_ms: u64,
    ) -> bool {
        if epoch == self.own {
            return false;
        }
        self.clock += 1;
        let clock = self.clock;
        let Some(w) = self.windows.iter_mut().find(|w| w.epoch == epoch) else {
            let fresh = Window {
                epoch,
                top: counter,
                seen: 1,
                newest_ms: sent_ms,
                used: clock,
            };
            if self.windows.len() < MAX_EPOCHS {
                self.windows.push(fresh);
            } else {
                // Forget first an epoch whose every datagram is stale by now
                // (a replay of it is refused as stale), else the least
                // recently used.
                let victim = self
                    .windows
                    .iter_mut()
                    .min_by_key(|w| (w.newest_ms.saturating_add(skew_ms) >= now_ms, w.used))
                    .expect("MAX_EPOCHS windows");
                *victim = fresh;
            }
            return true;
        };
        if counter > w.top {
            let shift = counter - w.top;
            w.seen = if shift >= WINDOW { 0 } else { w.seen << shift };
            w.seen |= 1;
            w.top = counter;
        } else {
            let back = w.top - counter;
            if back >= WINDOW || w.seen & (1u128 << back) != 0 {
                return false;
            }
            w.seen |= 1u128 << back;
        }
        w.newest_ms = w.newest_ms.max(sent_ms);
        w.used = clock;
        true
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// chitchat's `Transport` on one already bound socket: `open` hands it out
/// once.
pub struct SignedTransport {
    pending: Mutex<Option<(std::net::UdpSocket, Seal)>>,
    epoch: u64,
    counters: Arc<Counters>,
}

impl SignedTransport {
    /// `epoch` must be random and new at every start (the replay windows of
    /// the other nodes key on it).
    pub fn new(
        socket: std::net::UdpSocket,
        seal: Seal,
        epoch: u64,
        counters: Arc<Counters>,
    ) -> SignedTransport {
        SignedTransport {
            pending: Mutex::new(Some((socket, seal))),
            epoch,
            counters,
        }
    }
}

#[async_trait]
impl Transport for SignedTransport {
    async fn open(&self, _listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let (socket, seal) = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .context("the gossip socket is in use already")?;
        socket
            .set_nonblocking(true)
            .context("gossip socket: O_NONBLOCK")?;
        let socket =
            tokio::net::UdpSocket::from_std(socket).context("gossip socket: registering it")?;
        Ok(Box::new(SignedSocket {
            socket,
            seal,
            sender: Sender::new(self.epoch),
            replay: Replay::new(self.epoch),
            counters: self.counters.clone(),
            send_buf: Vec::with_capacity(MAX_DATAGRAM),
            recv_buf: vec![0u8; RECV_BUF].into_boxed_slice(),
        }))
    }
}

struct SignedSocket {
    socket: tokio::net::UdpSocket,
    seal: Seal,
    sender: Sender,
    replay: Replay,
    counters: Arc<Counters>,
    send_buf: Vec<u8>,
    recv_buf: Box<[u8]>,
}

/// Errors of a UDP socket that say nothing about the socket itself (an ICMP
/// error from an earlier send, a momentary shortage).
fn transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::OutOfMemory
            | io::ErrorKind::Interrupted
    ) || err.raw_os_error() == Some(libc::ENOBUFS)
}

#[async_trait]
impl Socket for SignedSocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        let sealed = self
            .seal
            .seal(&mut self.sender, unix_ms(), &mut self.send_buf, |buf| {
                message.serialize(buf)
            });
        if let Err(len) = sealed {
            self.counters.too_big.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "gossip: a message of {len} bytes to {to} does not fit in a datagram \
                 (at most {MAX_MESSAGE}); not sent"
            );
            return Ok(());
        }
        match self.socket.send_to(&self.send_buf, to).await {
            Ok(_) => Ok(()),
            Err(e) if transient(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("gossip: sending to {to}")),
        }
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (n, from) = match self.socket.recv_from(&mut self.recv_buf).await {
                Ok(got) => got,
                Err(e) if transient(&e) => continue,
                Err(e) => return Err(e).context("gossip: receiving"),
            };
            let opened =
                self.seal
                    .open(&mut self.replay, from.ip(), &self.recv_buf[..n], unix_ms());
            let mut payload = match opened {
                Ok(payload) => payload,
                Err(reason) => {
                    tracing::debug!("gossip: dropped {n} bytes from {from}: {reason:?}");
                    self.counters.count(reason);
                    continue;
                }
            };
            match ChitchatMessage::deserialize(&mut payload) {
                Ok(message) => return Ok((from, message)),
                Err(e) => {
                    tracing::debug!("gossip: dropped a signed message from {from}: {e:#}");
                    self.counters.count(Reason::Malformed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;
    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    fn seal() -> Seal {
        Seal::new(b"the farm's secret", Vec::new(), Duration::from_secs(1))
    }

    fn sealed(seal: &Seal, sender: &mut Sender, at: u64, message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        seal.seal(sender, at, &mut out, |b| b.extend_from_slice(message))
            .unwrap();
        out
    }

    /// Opens `datagram` with a fresh receiver and counts the outcome.
    fn outcome(seal: &Seal, datagram: &[u8]) -> Result<Vec<u8>, Reason> {
        seal.open(&mut Replay::new(99), PEER, datagram, NOW)
            .map(<[u8]>::to_vec)
    }

    #[test]
    fn a_good_datagram_passes_with_its_message() {
        let s = seal();
        let d = sealed(&s, &mut Sender::new(7), NOW, b"hello");
        assert_eq!(d.len(), HEADER_LEN + 5 + MAC_LEN);
        assert_eq!(outcome(&s, &d), Ok(b"hello".to_vec()));
        // An empty message is a message too.
        let d = sealed(&s, &mut Sender::new(7), NOW, b"");
        assert_eq!(outcome(&s, &d), Ok(Vec::new()));
    }

    #[test]
    fn each_reason_is_named() {
        let s = seal();
        let good = sealed(&s, &mut Sender::new(7), NOW, b"a chitchat message");

        // Every single byte changed, header, message or MAC: bad MAC, or
        // malformed where the change breaks the framing itself.
        for i in 0..good.len() {
            let mut d = good.clone();
            d[i] ^= 0x20;
            let want = if i < 4 || (28..30).contains(&i) {
                Reason::Malformed
            } else {
                Reason::BadMac
            };
            assert_eq!(outcome(&s, &d), Err(want), "byte {i}");
        }
        // Another secret.
        let other = Seal::new(b"another secret", Vec::new(), Duration::from_secs(1));
        let d = sealed(&other, &mut Sender::new(7), NOW, b"a chitchat message");
        assert_eq!(outcome(&s, &d), Err(Reason::BadMac));
        // The secret itself as the key would not do either (the key is derived).
        let raw = {
            let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(b"the farm's secret").unwrap();
            m.update(&good[..good.len() - MAC_LEN]);
            m.finalize().into_bytes()
        };
        let mut d = good[..good.len() - MAC_LEN].to_vec();
        d.extend_from_slice(&raw);
        assert_eq!(outcome(&s, &d), Err(Reason::BadMac));
        // Truncated anywhere, down to nothing.
        for cut in 0..good.len() {
            assert_eq!(outcome(&s, &good[..cut]), Err(Reason::Malformed), "{cut}");
        }
        // No MAC at all.
        assert_eq!(
            outcome(&s, &good[..good.len() - MAC_LEN]),
            Err(Reason::Malformed)
        );
        // Bytes after the MAC.
        let mut d = good.clone();
        d.push(0);
        assert_eq!(outcome(&s, &d), Err(Reason::Malformed));
        // Unsigned: chitchat's own framing (its magic, 45139 little-endian).
        assert_eq!(
            outcome(&s, &[0x53, 0xb0, 0, 2, 0, 0, 0, 0]),
            Err(Reason::Malformed)
        );
        // Old, or from the future, by more than 30 s; within is fine.
        for (at, want) in [
            (NOW - 30_001, Err(Reason::Stale)),
            (NOW + 30_001, Err(Reason::Stale)),
            (NOW - 30_000, Ok(b"x".to_vec())),
            (NOW + 29_000, Ok(b"x".to_vec())),
            (0, Err(Reason::Stale)),
            (u64::MAX, Err(Reason::Stale)),
        ] {
            let d = sealed(&s, &mut Sender::new(7), at, b"x");
            assert_eq!(outcome(&s, &d), want, "sent at {at}");
        }
        // Outside accept_from, whatever the datagram; inside, it passes.
        let only = Seal::new(
            b"the farm's secret",
            vec![Cidr {
                addr: "10.0.0.0".parse().unwrap(),
                prefix: 24,
            }],
            Duration::from_secs(1),
        );
        let mut replay = Replay::new(99);
        let outside: IpAddr = "10.0.1.2".parse().unwrap();
        assert_eq!(
            only.open(&mut replay, outside, &good, NOW),
            Err(Reason::NotAccepted)
        );
        assert_eq!(
            only.open(&mut replay, outside, b"junk", NOW),
            Err(Reason::NotAccepted)
        );
        assert!(only.open(&mut replay, PEER, &good, NOW).is_ok());
    }

    #[test]
    fn each_reason_is_counted_under_its_own_name() {
        let c = Counters::default();
        let reasons = [
            Reason::NotAccepted,
            Reason::Malformed,
            Reason::BadMac,
            Reason::Stale,
            Reason::Replayed,
        ];
        for (i, r) in reasons.iter().enumerate() {
            for _ in 0..=i {
                c.count(*r);
            }
        }
        assert_eq!(
            c.snapshot(),
            Dropped {
                not_accepted: 1,
                malformed: 2,
                bad_mac: 3,
                stale: 4,
                replayed: 5,
                too_big: 0,
            }
        );
    }

    #[test]
    fn the_stale_bound_follows_a_long_interval() {
        let s = Seal::new(b"k", Vec::new(), Duration::from_secs(10));
        let d = sealed(&s, &mut Sender::new(7), NOW - 90_000, b"x");
        assert!(outcome(&s, &d).is_ok());
        let d = sealed(&s, &mut Sender::new(7), NOW - 100_001, b"x");
        assert_eq!(outcome(&s, &d), Err(Reason::Stale));
    }

    #[test]
    fn a_replayed_counter_is_refused_and_out_of_order_ones_pass_once() {
        let s = seal();
        let mut sender = Sender::new(7);
        let d: Vec<Vec<u8>> = (0..300)
            .map(|_| sealed(&s, &mut sender, NOW, b"m"))
            .collect();
        let mut replay = Replay::new(99);
        let mut open = |i: usize| s.open(&mut replay, PEER, &d[i], NOW).is_ok();
        // Counters 1..=300 are d[0..300]. Out of order, each once.
        for i in [4, 1, 3, 0, 2] {
            assert!(open(i), "first {i}");
        }
        for i in 0..5 {
            assert!(!open(i), "again {i}");
        }
        // A jump leaves the ones in between acceptable, once.
        assert!(open(100));
        assert!(open(50));
        assert!(!open(50));
        // Within the window (the last 128 counters), late is fine.
        assert!(open(200));
        assert!(open(200 - 127));
        assert!(!open(200 - 127));
        // Below it, refused even though never seen.
        assert!(!open(200 - 128));
        assert!(!open(60));
        // Far ahead: the whole window moves.
        assert!(open(299));
        assert!(open(299 - 127));
        assert!(!open(200));
    }

    #[test]
    fn the_own_epoch_is_refused() {
        let s = seal();
        let d = sealed(&s, &mut Sender::new(42), NOW, b"m");
        let mut replay = Replay::new(42);
        assert_eq!(s.open(&mut replay, PEER, &d, NOW), Err(Reason::Replayed));
    }

    #[test]
    fn epochs_are_bounded_and_stale_ones_forgotten_first() {
        let s = seal();
        let mut replay = Replay::new(0);
        // One epoch that stays busy, then enough others to fill the table.
        let mut busy = Sender::new(1);
        let first = sealed(&s, &mut busy, NOW, b"m");
        assert!(s.open(&mut replay, PEER, &first, NOW).is_ok());
        // An epoch heard from long ago (sent 40 s before it is filled in),
        // and the rest recent.
        let old = sealed(&s, &mut Sender::new(2), NOW - 25_000, b"m");
        assert!(s.open(&mut replay, PEER, &old, NOW - 25_000).is_ok());
        for epoch in 3..MAX_EPOCHS as u64 + 1 {
            let d = sealed(&s, &mut Sender::new(epoch), NOW, b"m");
            assert!(s.open(&mut replay, PEER, &d, NOW).is_ok());
        }
        assert_eq!(replay.windows.len(), MAX_EPOCHS);
        // The busy one is used again.
        let again = sealed(&s, &mut busy, NOW, b"m");
        assert!(s.open(&mut replay, PEER, &again, NOW).is_ok());
        // 10 s later a new epoch comes: the old one goes, being stale by
        // then, though it was used more recently than epoch 3.
        let later = NOW + 10_000;
        let d = sealed(&s, &mut Sender::new(5_000), later, b"m");
        assert!(s.open(&mut replay, PEER, &d, later).is_ok());
        assert_eq!(replay.windows.len(), MAX_EPOCHS);
        assert!(!replay.windows.iter().any(|w| w.epoch == 2));
        assert!(replay.windows.iter().any(|w| w.epoch == 3));
        // None stale: the least recently used goes (epoch 3, not the busy 1).
        let d = sealed(&s, &mut Sender::new(5_001), later, b"m");
        assert!(s.open(&mut replay, PEER, &d, later).is_ok());
        assert!(!replay.windows.iter().any(|w| w.epoch == 3));
        assert!(replay.windows.iter().any(|w| w.epoch == 1));
        // The busy epoch's window is intact: its first datagram is still a
        // replay.
        assert_eq!(
            s.open(&mut replay, PEER, &first, later),
            Err(Reason::Replayed)
        );
    }

    #[test]
    fn random_bytes_and_changed_datagrams_never_open_and_never_panic() {
        let s = seal();
        let mut replay = Replay::new(99);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let good = sealed(&s, &mut Sender::new(7), NOW, b"a chitchat message");
        for round in 0..20_000 {
            let len = (next() % 200) as usize;
            let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 {
                // Our framing, so the checks past it are reached.
                d = good.clone();
                for _ in 0..1 + next() % 4 {
                    let i = (next() as usize) % d.len();
                    d[i] ^= 1 + (next() % 255) as u8;
                }
                if d == good {
                    // Two changes that undid each other.
                    continue;
                }
            }
            assert!(s.open(&mut replay, PEER, &d, NOW).is_err(), "{d:?}");
        }
    }

    #[test]
    fn a_message_too_big_is_not_sealed() {
        let s = seal();
        let mut out = Vec::new();
        let big = vec![7u8; MAX_MESSAGE + 1];
        assert_eq!(
            s.seal(&mut Sender::new(1), NOW, &mut out, |b| b
                .extend_from_slice(&big)),
            Err(MAX_MESSAGE + 1)
        );
        assert!(out.is_empty());
        let fits = vec![7u8; MAX_MESSAGE];
        s.seal(&mut Sender::new(1), NOW, &mut out, |b| {
            b.extend_from_slice(&fits)
        })
        .unwrap();
        assert_eq!(out.len(), MAX_DATAGRAM);
        assert_eq!(outcome(&s, &out).map(|m| m.len()), Ok(MAX_MESSAGE));
    }
}
