//! Protocol conformance at the frame level, for what h2spec found: a broken
//! HTTP/2 preface (after ALPN `h2` and on h2c) answered with an HTTP/1.1 400
//! instead of GOAWAY(PROTOCOL_ERROR); malformed frames on a stream berth had
//! answered before the request was complete, ignored after berth reset the
//! stream; TLS clients without SNI refused outright; the client's cipher order
//! winning over the server's.
//!
//! The HTTP/2 frames are sent by Debian's python3-h2 (its hpack and hyperframe)
//! through [`H2FRAMES`], written into each test's directory; the TLS checks use
//! rustls as a client.
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
        let line = config
            .lines()
            .position(|l| l.starts_with("default_tls_site"))
            .unwrap()
            + 1;
        let path = dir.write("berth.toml", config);
        let out = Command::new(BERTH)
            .args(["check", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
        let want = format!("{}:{line}: server.default_tls_site: {why}", path.display());
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

/// Runs [`H2FRAMES`] for `case`; the events it printed.
fn h2frames(dir: &Dir, addr: SocketAddr, case: &str, tls: bool) -> Vec<String> {
    let script = dir.write("h2frames.py", H2FRAMES);
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(&script)
        .args(["127.0.0.1", &addr.port().to_string(), "a.test", case]);
    if tls {
        cmd.arg("tls");
    }
    let out = cmd.output().expect("run /usr/bin/python3 (python3-h2)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{case}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_owned).collect()
}

/// Runs [`H2FRAMES`] for `case` and returns what berth sent after the
/// offending frames, having checked that it did not answer the request before
/// the request was complete.
fn after_offending_frames(dir: &Dir, addr: SocketAddr, case: &str, tls: bool) -> Vec<String> {
    let lines = h2frames(dir, addr, case, tls);
    let sent = lines.iter().position(|l| l == "sent");
    let sent = sent.unwrap_or_else(|| panic!("{case}: {lines:?}"));
    // Answered early, the stream is reset and what follows ignored.
    assert!(
        !lines[..sent]
            .iter()
            .any(|l| l.starts_with("headers 1") || l.starts_with("data 1")),
        "{case} (tls: {tls}): berth answered before the request was complete: {lines:?}"
    );
    lines[sent + 1..].to_vec()
}

#[test]
fn malformed_request_end_is_refused_not_ignored_after_an_early_answer() {
    let (dir, s) = two_sites("");
    for case in [
        "trailers-without-end-stream",   // h2spec http2/8.1/1
        "pseudo-header-in-trailers",     // h2spec http2/8.1.2.1/3
        "more-data-than-content-length", // h2spec http2/8.1.2.6/2
    ] {
        for (addr, tls) in [(s.addr(), false), (s.tls_addr(), true)] {
            let after = after_offending_frames(&dir, addr, case, tls);
            assert!(
                after.iter().any(|l| l == "rst 1 PROTOCOL_ERROR"
                    || l.starts_with("goaway") && l.ends_with("PROTOCOL_ERROR")),
                "{case} (tls: {tls}): refused with PROTOCOL_ERROR, not ignored: {after:?}"
            );
        }
    }
}

#[test]
fn window_past_the_limit_is_refused_not_ignored_after_an_early_answer() {
    // h2spec http2/6.9.1/3: h2 checks a stream's window only while it may still
    // send on it.
    let (dir, s) = two_sites("");
    for (addr, tls) in [(s.addr(), false), (s.tls_addr(), true)] {
        let after = after_offending_frames(&dir, addr, "window-past-the-limit", tls);
        assert!(
            after.iter().any(|l| l == "rst 1 FLOW_CONTROL_ERROR"),
            "tls: {tls}: {after:?}"
        );
    }
}

#[test]
fn headers_after_the_client_reset_a_stream_are_refused_not_ignored_after_an_early_answer() {
    // h2spec http2/5.1/9: STREAM_CLOSED for the stream, or a connection error.
    let (dir, s) = two_sites("");
    for (addr, tls) in [(s.addr(), false), (s.tls_addr(), true)] {
        let after = after_offending_frames(&dir, addr, "headers-after-client-reset", tls);
        assert!(
            after.iter().any(|l| l == "rst 1 STREAM_CLOSED")
                || after.last().is_some_and(|l| l == "closed"),
            "tls: {tls}: {after:?}"
        );
    }
}

#[test]
fn a_client_waiting_for_100_continue_is_answered_without_waiting_for_its_body() {
    // hyper's HTTP/2 sends no 100 (Continue): berth must not wait for a body
    // that the client holds back until it hears from berth. A header_timeout
    // far beyond the test's 10 s read timeout tells the two apart.
    let (dir, s) = two_sites("header_timeout = \"120s\"");
    for (addr, tls) in [(s.addr(), false), (s.tls_addr(), true)] {
        let lines = h2frames(&dir, addr, "expect-continue", tls);
        assert!(
            lines.iter().any(|l| l.starts_with("headers 1 ")),
            "tls: {tls}: {lines:?}"
        );
    }
}

/// Opens a request, waits a moment for an early answer, then sends frames
/// that berth must refuse on that stream, and prints what berth sends back
/// (Debian's python3-h2).
const H2FRAMES: &str = r#""""Opens a request whose body is still to come, gives the server a moment to
answer it early, then sends frames that a conformant server must refuse on
that stream, and prints what the server sends back.

usage: h2frames.py HOST PORT AUTHORITY CASE [tls]

Case `expect-continue` only opens a request that waits for 100-continue and
prints the answer (for up to the read timeout).

One event per line: `settings`, `headers STREAM STATUS [end]`,
`data STREAM LEN [end]`, `rst STREAM CODE`, `goaway LAST CODE`, `closed`,
`silent` (nothing within the read timeout); `sent` marks where the offending
frames went out.
"""
import socket
import ssl
import sys

import hpack
from h2.errors import ErrorCodes
from hyperframe.frame import (DataFrame, Frame, GoAwayFrame, HeadersFrame,
                              RstStreamFrame, SettingsFrame, WindowUpdateFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
TIMEOUT = 10.0
# How long the server gets to answer before the offending frames go out.
EARLY = 1.0


def code(c):
    try:
        return ErrorCodes(c).name
    except ValueError:
        return str(c)


class Conn:
    def __init__(self, host, port, tls, authority):
        sock = socket.create_connection((host, port), timeout=TIMEOUT)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            sock = ctx.wrap_socket(sock, server_hostname=authority)
            assert sock.selected_alpn_protocol() == "h2", "no ALPN h2"
        self.sock = sock
        self.buf = b""
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()

    def send(self, frame):
        self.sock.sendall(frame.serialize())

    def read_exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def next_frame(self):
        """The next frame, or 'closed' / 'silent'."""
        try:
            head = self.read_exact(9)
            frame, length = Frame.parse_frame_header(memoryview(head))
            frame.parse_body(memoryview(self.read_exact(length)))
            return frame
        except (EOFError, ConnectionResetError, ssl.SSLError):
            return "closed"
        except socket.timeout:
            return "silent"

    def event(self):
        """Reads one frame, answers SETTINGS, prints and returns the event."""
        f = self.next_frame()
        if isinstance(f, str):
            ev = f
        elif isinstance(f, SettingsFrame):
            if "ACK" in f.flags:
                return self.event()
            self.send(SettingsFrame(0, flags=["ACK"]))
            ev = "settings"
        elif isinstance(f, HeadersFrame):
            status = dict(self.dec.decode(f.data)).get(":status", "-")
            ev = f"headers {f.stream_id} {status}"
            if "END_STREAM" in f.flags:
                ev += " end"
        elif isinstance(f, DataFrame):
            ev = f"data {f.stream_id} {len(f.data)}"
            if "END_STREAM" in f.flags:
                ev += " end"
        elif isinstance(f, RstStreamFrame):
            ev = f"rst {f.stream_id} {code(f.error_code)}"
        elif isinstance(f, GoAwayFrame):
            ev = f"goaway {f.last_stream_id} {code(f.error_code)}"
        else:
            return self.event()  # WINDOW_UPDATE, PING: not what we wait for
        print(ev, flush=True)
        return ev

    def headers(self, stream, fields, end_stream):
        flags = ["END_HEADERS"] + (["END_STREAM"] if end_stream else [])
        self.send(HeadersFrame(stream, self.enc.encode(fields), flags=flags))

    def data(self, stream, payload, end_stream):
        self.send(DataFrame(stream, payload, flags=["END_STREAM"] if end_stream else []))


def main():
    host, port, authority, case = sys.argv[1:5]
    tls = sys.argv[5:] == ["tls"]
    c = Conn(host, int(port), tls, authority)
    c.sock.sendall(PREFACE)
    c.send(SettingsFrame(0))
    scheme = "https" if tls else "http"

    def request(method, extra=()):
        return [(":method", method), (":scheme", scheme), (":path", "/"),
                (":authority", authority)] + list(extra)

    # The request, its body still open, and what the server sends meanwhile:
    # an answer that comes now is an answer before the request was complete.
    if case in ("headers-after-client-reset", "window-past-the-limit"):
        c.headers(1, request("GET"), end_stream=False)
    elif case == "more-data-than-content-length":
        c.headers(1, request("POST", [("content-length", "1")]), end_stream=False)
    elif case == "expect-continue":
        c.headers(1, request("POST", [("expect", "100-continue")]), end_stream=False)
        while not (ev := c.event()).endswith(" end") and ev not in ("closed", "silent"):
            pass
        return
    else:
        c.headers(1, request("POST"), end_stream=False)
    c.sock.settimeout(EARLY)
    while c.event() not in ("closed", "silent"):
        pass
    c.sock.settimeout(TIMEOUT)

    # Then the frames the server must refuse.
    if case == "trailers-without-end-stream":  # h2spec http2/8.1/1
        c.data(1, b"test", end_stream=False)
        c.headers(1, [("x-test", "ok")], end_stream=False)
    elif case == "pseudo-header-in-trailers":  # h2spec http2/8.1.2.1/3
        c.data(1, b"test", end_stream=False)
        c.headers(1, [(":method", "POST")], end_stream=False)
    elif case == "more-data-than-content-length":  # h2spec http2/8.1.2.6/2
        c.data(1, b"test", end_stream=False)
        c.data(1, b"test", end_stream=True)
    elif case == "headers-after-client-reset":  # h2spec http2/5.1/9
        c.send(RstStreamFrame(1, error_code=ErrorCodes.CANCEL))
        c.headers(1, request("GET"), end_stream=True)
    elif case == "window-past-the-limit":  # h2spec http2/6.9.1/3
        c.send(WindowUpdateFrame(1, window_increment=2**31 - 1))
        c.send(WindowUpdateFrame(1, window_increment=2**31 - 1))
    else:
        sys.exit(f"unknown case {case}")
    print("sent", flush=True)
    # Until the server refuses the stream or closes (after a GOAWAY, it does).
    while True:
        ev = c.event()
        if ev in ("closed", "silent") or ev.startswith("rst 1 ") and "NO_ERROR" not in ev:
            break


main()
"#;
