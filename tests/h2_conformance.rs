//! Protocol conformance at the frame level, for what h2spec found: a broken
//! HTTP/2 preface (after ALPN `h2` and on h2c) answered with an HTTP/1.1 400
//! instead of GOAWAY(PROTOCOL_ERROR); TLS clients without SNI refused outright;
//! the client's cipher order winning over the server's. Raw bytes over TCP, and
//! over rustls as a client.
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use rustls_pki_types::pem::PemObject;
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

/// The end-entity certificate in a PEM file, as DER.
fn cert_der(dir: &Dir, name: &str) -> Vec<u8> {
    let pem = std::fs::read(dir.join(&format!("{name}.pem"))).unwrap();
    CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// `GET /` for `host` over HTTP/1.1 on a TLS connection; the status and body.
fn get_over(tls: &mut Tls, host: &str) -> String {
    write!(
        tls,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    tls.flush().unwrap();
    String::from_utf8_lossy(&read_all(tls)).into_owned()
}

fn no_sni(s: &Server) -> Tls {
    tls_connect(s.tls_addr(), None, &[b"http/1.1"], ring::default_provider())
        .expect("a TLS client without SNI is served")
}

#[test]
fn tls_client_without_sni_gets_the_first_tls_site_not_a_refusal() {
    let (dir, s) = two_sites("");
    let mut tls = no_sni(&s);
    let shown = tls.conn.peer_certificates().unwrap()[0].to_vec();
    assert_eq!(
        shown,
        cert_der(&dir, "a"),
        "a.test is the first site with TLS"
    );
    let r = get_over(&mut tls, "a.test");
    assert_eq!(status_of(&r), 200, "{r}");
    assert!(r.ends_with("site A\n"), "{r}");
    // The connection is a.test's: another site's Host is misdirected.
    let r = get_over(&mut no_sni(&s), "b.test");
    assert_eq!(status_of(&r), 421, "{r}");
}

#[test]
fn default_tls_site_chooses_the_certificate_for_clients_without_sni() {
    let (dir, s) = two_sites("default_tls_site = \"B.test\"");
    let mut tls = no_sni(&s);
    let shown = tls.conn.peer_certificates().unwrap()[0].to_vec();
    assert_eq!(shown, cert_der(&dir, "b"));
    let r = get_over(&mut tls, "b.test");
    assert!(r.ends_with("site B\n"), "{r}");
    let r = get_over(&mut no_sni(&s), "a.test");
    assert_eq!(status_of(&r), 421, "{r}");
    // A name no site has is still refused, not given the default.
    let unknown = tls_connect(
        s.tls_addr(),
        Some("c.test"),
        &[b"http/1.1"],
        ring::default_provider(),
    );
    assert!(unknown.is_err(), "c.test got a certificate");
    // And a client that names a site still gets that site.
    let mut tls = tls_connect(
        s.tls_addr(),
        Some("a.test"),
        &[b"http/1.1"],
        ring::default_provider(),
    )
    .unwrap();
    assert_eq!(
        tls.conn.peer_certificates().unwrap()[0].to_vec(),
        cert_der(&dir, "a")
    );
    assert!(get_over(&mut tls, "a.test").ends_with("site A\n"));
}

#[test]
fn default_tls_site_must_name_a_site_with_a_certificate() {
    require_root();
    ensure_user("berth-ta");
    let dir = Dir::new();
    dir.mkdir("a");
    let pki = Pki::new();
    let (cert, key) = pki.issue(&dir, "a", &["a.test"]);
    for (host, why) in [
        ("nowhere.test", "no site has the host \"nowhere.test\""),
        ("plain.test", "the site of \"plain.test\" (tenant ta, "),
    ] {
        let (server, _, _) = server_block(&dir, &format!("default_tls_site = \"{host}\""));
        let config = format!(
            r#"{server}
[tenant.ta]
user = "berth-ta"
[[tenant.ta.site]]
hosts = ["a.test"]
root = "{root}"
tls = {{ cert = "{cert}", key = "{key}" }}
[[tenant.ta.site]]
hosts = ["plain.test"]
root = "{root}"
"#,
            root = dir.join("a").display(),
            cert = cert.display(),
            key = key.display(),
        );
        let path = dir.write("berth.toml", config);
        let out = Command::new(BERTH)
            .args(["check", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
        // `default_tls_site` is the 7th line of the [server] block.
        let want = format!("{}:7: server.default_tls_site: {why}", path.display());
        assert!(
            stderr.contains(&want) || stdout.contains(&want),
            "want {want:?} in:\n{stdout}{stderr}"
        );
    }
}

#[test]
fn the_servers_cipher_order_wins_over_the_clients() {
    use rustls::crypto::ring::cipher_suite::*;
    let (_dir, s) = two_sites("");
    // Each client lists the suites weakest first; berth picks its own first
    // choice among them (AES-256-GCM), for TLS 1.3 and TLS 1.2.
    for (offered, want) in [
        (
            vec![
                TLS13_CHACHA20_POLY1305_SHA256,
                TLS13_AES_128_GCM_SHA256,
                TLS13_AES_256_GCM_SHA384,
            ],
            TLS13_AES_256_GCM_SHA384,
        ),
        (
            vec![
                TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            ],
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
    ] {
        let provider = CryptoProvider {
            cipher_suites: offered,
            ..ring::default_provider()
        };
        let tls = tls_connect(s.tls_addr(), Some("a.test"), &[b"http/1.1"], provider).unwrap();
        let chosen = tls.conn.negotiated_cipher_suite().unwrap().suite();
        assert_eq!(chosen, want.suite());
    }
}
