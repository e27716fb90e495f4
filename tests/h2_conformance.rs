//! Protocol conformance at the frame level, for what h2spec found: a broken
//! HTTP/2 preface (after ALPN `h2` and on h2c) answered with an HTTP/1.1 400
//! instead of GOAWAY(PROTOCOL_ERROR). Raw bytes over TCP, and over rustls as a
//! client.
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// Two tenants (a.test, b.test), both with certificates, `extra` in `[server]`.
fn two_sites(extra: &str) -> (Dir, Server) {
    require_root();
    let (uid_a, gid_a) = ensure_user("berth-ta");
    let (uid_b, gid_b) = ensure_user("berth-tb");
    let dir = Dir::new();
    dir.write("a/index.html", "site A\n");
    dir.write("b/index.html", "site B\n");
    dir.chown("a", uid_a, gid_a);
    dir.chown("b", uid_b, gid_b);
    let s = start_a_and_b_with(&dir, &Pki::new(), extra);
    (dir, s)
}

/// Accepts any certificate (signatures are still checked), so a test can look
/// at the one it was shown, whatever name it asked for or none.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection to `addr` with rustls's defaults or `provider`, offering
/// `alpn`. `sni` None sends no SNI (rustls sends none for an IP address).
fn tls_connect(
    addr: SocketAddr,
    sni: Option<&str>,
    alpn: &[&[u8]],
    provider: CryptoProvider,
) -> std::io::Result<Tls> {
    let provider = Arc::new(provider);
    let mut cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = match sni {
        Some(host) => ServerName::try_from(host.to_string()).unwrap(),
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let conn = ClientConnection::new(Arc::new(cfg), name).unwrap();
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Reads until the peer closes (or 10 s pass, which a test then reports).
fn read_all(r: &mut impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// HTTP/2 frames as (type, flags, stream, payload).
fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff;
        assert!(bytes.len() >= 9 + len, "a cut frame: {bytes:?}");
        out.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    assert!(bytes.is_empty(), "bytes after the last frame: {bytes:?}");
    out
}

/// The answer to a broken preface: the server's SETTINGS, then
/// GOAWAY(PROTOCOL_ERROR), then the end of the connection.
fn assert_goaway_protocol_error(answer: &[u8], what: &str) {
    assert!(
        !answer.starts_with(b"HTTP/"),
        "{what:?}: answered as HTTP/1: {}",
        String::from_utf8_lossy(answer)
    );
    let frames = frames(answer);
    assert_eq!(
        frames.first().map(|f| f.0),
        Some(0x4),
        "{what:?}: SETTINGS first: {frames:?}"
    );
    let goaway = frames.iter().find(|f| f.0 == 0x7);
    let goaway = goaway.unwrap_or_else(|| panic!("{what:?}: no GOAWAY in {frames:?}"));
    assert_eq!(goaway.2, 0, "{what:?}: GOAWAY is on stream 0");
    assert_eq!(
        goaway.3[4..8],
        [0, 0, 0, 1],
        "{what:?}: PROTOCOL_ERROR: {goaway:?}"
    );
}

const BAD_PREFACES: [&[u8]; 3] = [
    // h2spec http2/3.5/2
    b"INVALID CONNECTION PREFACE\r\n\r\n",
    // Right up to the last line.
    b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
    // An HTTP/1.1 request where HTTP/2 was agreed.
    b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
];

#[test]
fn invalid_preface_after_alpn_h2_gets_goaway_not_an_http1_400() {
    let (_dir, s) = two_sites("");
    for bad in BAD_PREFACES {
        let what = String::from_utf8_lossy(bad);
        let mut tls = tls_connect(
            s.tls_addr(),
            Some("a.test"),
            &[b"h2"],
            ring::default_provider(),
        )
        .unwrap();
        assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));
        tls.write_all(bad).unwrap();
        tls.flush().unwrap();
        assert_goaway_protocol_error(&read_all(&mut tls), &what);
    }
    // The HTTP/1.1 request is served when ALPN chose HTTP/1.1.
    let mut tls = tls_connect(
        s.tls_addr(),
        Some("a.test"),
        &[b"http/1.1"],
        ring::default_provider(),
    )
    .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let answer = String::from_utf8_lossy(&read_all(&mut tls)).into_owned();
    assert_eq!(status_of(&answer), 200, "{answer}");
}

#[test]
fn invalid_preface_on_h2c_gets_goaway_not_an_http1_400() {
    let (_dir, s) = two_sites("");
    for bad in &BAD_PREFACES[..2] {
        let mut c = TcpStream::connect(s.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(bad).unwrap();
        assert_goaway_protocol_error(&read_all(&mut c), &String::from_utf8_lossy(bad));
    }
    // On this listener HTTP/1.1 is served too: a malformed HTTP/1.1 request
    // still gets its 400, a good one its page.
    let r = raw(s.addr(), "GET / HTTP/1.1\r\nHost : a.test\r\n\r\n");
    assert_eq!(status_of(&r), 400, "{r}");
    let r = get_raw(s.addr(), "a.test", "/");
    assert!(r.ends_with("site A\n"), "{r}");
}
