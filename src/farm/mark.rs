//! What one node of a farm vouches for to another, signed with the cluster's
//! secret (HMAC-SHA-256): the mark on a request it proxies, and the sticky
//! cookie that names a node.
//!
//! **The mark** (`berth-mark`) says "node FROM placed this request on node
//! TO; the client is FOR, over PROTO": the receiving node serves it itself
//! (no second placement, so no loops) and takes the client's address from it.
//! It is bound to the request (method, host, target) and to the receiving
//! node, and good for [`WINDOW`] seconds either way of the receiver's clock:
//! captured, it can only make the same node serve the same request again,
//! which any client can ask for. A mark that does not verify is removed
//! and ignored (counted): the request is served as any client's would be,
//! but for one whose signature holds and is only stale or for another node
//! ([`Refused::Stale`], [`Refused::NotForUs`]): a node placed it, so it is
//! served where it arrives, not placed again (`front::farm`).
//! The front end removes the header from every request before anything else
//! reads it, so apps never see it.
//!
//! `berth-mark: from=a;to=b;for=192.0.2.7:51234;proto=https;t=1764633600;sig=BASE64URL`
//!
//! **The sticky cookie** (`sticky = true`): `NODE.SIG`, SIG the first 16
//! bytes of the MAC of the node's name, so a client cannot pick a node of
//! its own (and `bySession` ignores values that do not verify).

use std::net::SocketAddr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use http::HeaderName;
use sha2::Sha256;

/// The header of the mark.
pub const HEADER: HeaderName = HeaderName::from_static("berth-mark");

/// How far (seconds) a mark's time may be from the receiver's clock.
pub const WINDOW: u64 = 30;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], domain: &str, parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(domain.as_bytes());
    for p in parts {
        mac.update(b"\n");
        mac.update(p);
    }
    mac
}

/// The request a mark is bound to.
#[derive(Debug, Clone, Copy)]
pub struct Bound<'a> {
    pub method: &'a str,
    /// The host as berth routes it (lowercase, no port).
    pub host: &'a str,
    /// The path and query as the client sent them.
    pub target: &'a str,
}

/// What a verified mark says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marked {
    /// The node that placed the request.
    pub from: String,
    /// The client's address.
    pub client: SocketAddr,
    /// The client came over TLS.
    pub https: bool,
}

/// The MAC of a mark: over the request it is bound to and its fields.
fn mark_mac(secret: &[u8], req: Bound<'_>, head: &str) -> HmacSha256 {
    let parts = [
        req.method.as_bytes(),
        req.host.as_bytes(),
        req.target.as_bytes(),
        head.as_bytes(),
    ];
    mac(secret, "berth-mark-v1", &parts)
}

fn head(from: &str, to: &str, client: SocketAddr, https: bool, time: u64) -> String {
    let proto = if https { "https" } else { "http" };
    format!("from={from};to={to};for={client};proto={proto};t={time}")
}

/// The mark for `req`, placed by `from` on `to` at unix time `now`.
pub fn sign(
    secret: &[u8],
    req: Bound<'_>,
    from: &str,
    to: &str,
    client: SocketAddr,
    https: bool,
    now: u64,
) -> String {
    let head = head(from, to, client, https, now);
    let sig = mark_mac(secret, req, &head).finalize().into_bytes();
    format!("{head};sig={}", URL_SAFE_NO_PAD.encode(sig))
}

/// Why a mark was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not of the form `sign` makes.
    Malformed,
    /// The signature does not match (another secret, or altered).
    BadSignature,
    /// For another node.
    NotForUs,
    /// Older or newer than [`WINDOW`].
    Stale,
}

/// Checks a mark on `req` arriving at node `me` at unix time `now`.
pub fn verify(
    secret: &[u8],
    value: &[u8],
    req: Bound<'_>,
    me: &str,
    now: u64,
) -> Result<Marked, Refused> {
    let value = std::str::from_utf8(value).map_err(|_| Refused::Malformed)?;
    let (head, sig) = value.rsplit_once(";sig=").ok_or(Refused::Malformed)?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| Refused::Malformed)?;
    mark_mac(secret, req, head)
        .verify_slice(&sig)
        .map_err(|_| Refused::BadSignature)?;
    // Signed by a node of the farm: the fields are as it wrote them.
    let mut fields = head
        .split(';')
        .map(|f| f.split_once('=').unwrap_or((f, "")));
    let mut take = |name: &str| match fields.next() {
        Some((n, v)) if n == name => Ok(v),
        _ => Err(Refused::Malformed),
    };
    let from = take("from")?.to_string();
    let to = take("to")?;
    let client = take("for")?.parse().map_err(|_| Refused::Malformed)?;
    let https = match take("proto")? {
        "https" => true,
        "http" => false,
        _ => return Err(Refused::Malformed),
    };
    let time: u64 = take("t")?.parse().map_err(|_| Refused::Malformed)?;
    if to != me {
        return Err(Refused::NotForUs);
    }
    if now.abs_diff(time) > WINDOW {
        return Err(Refused::Stale);
    }
    Ok(Marked {
        from,
        client,
        https,
    })
}

const STICKY_SIG: usize = 16;

/// The sticky cookie's value naming `node`.
pub fn sticky_value(secret: &[u8], node: &str) -> String {
    let sig = mac(secret, "berth-sticky-v1", &[node.as_bytes()])
        .finalize()
        .into_bytes();
    format!("{node}.{}", URL_SAFE_NO_PAD.encode(&sig[..STICKY_SIG]))
}

/// The node a sticky cookie's value names, if its signature holds.
pub fn sticky_node<'a>(secret: &[u8], value: &'a str) -> Option<&'a str> {
    let (node, sig) = value.rsplit_once('.')?;
    let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
    mac(secret, "berth-sticky-v1", &[node.as_bytes()])
        .verify_truncated_left(&sig)
        .ok()
        .filter(|()| sig.len() == STICKY_SIG)
        .map(|()| node)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123";
    const REQ: Bound<'static> = Bound {
        method: "GET",
        host: "site.test",
        target: "/a?b=1",
    };

    fn client() -> SocketAddr {
        "192.0.2.7:51234".parse().unwrap()
    }

    #[test]
    fn a_mark_verifies_for_its_request_and_node_only() {
        let m = sign(KEY, REQ, "a", "b", client(), true, 1000);
        let ok = verify(KEY, m.as_bytes(), REQ, "b", 1010).unwrap();
        assert_eq!(
            ok,
            Marked {
                from: "a".into(),
                client: client(),
                https: true
            }
        );
        assert_eq!(
            verify(KEY, m.as_bytes(), REQ, "c", 1000),
            Err(Refused::NotForUs)
        );
        for other in [
            Bound {
                method: "POST",
                ..REQ
            },
            Bound {
                host: "other.test",
                ..REQ
            },
            Bound {
                target: "/a?b=2",
                ..REQ
            },
        ] {
            assert_eq!(
                verify(KEY, m.as_bytes(), other, "b", 1000),
                Err(Refused::BadSignature)
            );
        }
        assert_eq!(
            verify(b"another secret of length", m.as_bytes(), REQ, "b", 1000),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            verify(KEY, m.as_bytes(), REQ, "b", 1000 + WINDOW + 1),
            Err(Refused::Stale)
        );
        assert_eq!(
            verify(KEY, m.as_bytes(), REQ, "b", 1000 - WINDOW - 1),
            Err(Refused::Stale)
        );
    }

    #[test]
    fn an_altered_or_made_up_mark_is_refused() {
        let m = sign(KEY, REQ, "a", "b", client(), false, 1000);
        let forged = m.replace("192.0.2.7", "10.0.0.1");
        assert_eq!(
            verify(KEY, forged.as_bytes(), REQ, "b", 1000),
            Err(Refused::BadSignature)
        );
        for junk in [
            "",
            "from=a;to=b",
            "from=a;to=b;for=1.2.3.4:5;proto=http;t=1000;sig=!!",
            "from=a;to=b;for=1.2.3.4:5;proto=http;t=1000;sig=",
        ] {
            assert!(
                verify(KEY, junk.as_bytes(), REQ, "b", 1000).is_err(),
                "{junk}"
            );
        }
        assert_eq!(
            verify(KEY, b"\xff\xfe", REQ, "b", 1000),
            Err(Refused::Malformed)
        );
    }

    #[test]
    fn sticky_cookies_name_a_node_only_when_signed() {
        let v = sticky_value(KEY, "node-2.farm");
        assert_eq!(sticky_node(KEY, &v), Some("node-2.farm"));
        assert_eq!(sticky_node(KEY, "node-2.farm"), None);
        assert_eq!(sticky_node(KEY, "node-3.AAAAAAAAAAAAAAAAAAAAAA"), None);
        assert_eq!(sticky_node(b"other key, long enough", &v), None);
        let (node, sig) = v.rsplit_once('.').unwrap();
        assert_eq!(sticky_node(KEY, &format!("{node}.{}", &sig[..4])), None);
    }
}
