//! Static files end to end, against the real `berth serve`: directory indexes,
//! content types, HEAD and 405, conditional requests, byte ranges, precompressed
//! siblings, path traversal and symlinks (invariant 3), dotfiles, virtual hosts,
//! TLS by SNI, large bodies over HTTP/2, and FIFOs in the root.
//!
//! Every test starts its own server on the same fixture (two tenants, two sites
//! with certificates from a test CA, and files outside the roots that must never
//! be served). Raw TCP requests are used wherever a client library would
//! normalise the path.
mod common;
use common::*;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;

/// Content of the file just outside site A's root (`dir/secret.txt`).
const SECRET: &str = "TOP-SECRET-outside-the-root-4b1d";
/// Content of `dir/outside/file.txt`, reached only through a symlinked directory.
const OUTSIDE: &str = "OUTSIDE-DIRECTORY-SECRET-77e0";
/// Content of a file inside the root owned by another user.
const FOREIGN: &str = "FOREIGN-OWNER-CONTENT-c3a9";
const A_INDEX: &str = "<h1>site A index</h1>\n";
const A_SUB_INDEX: &str = "<h1>site A sub index</h1>\n";
const B_INDEX: &str = "<h1>site B index</h1>\n";
const PLAIN: &[u8] = b"PLAIN-TEXT-CONTENT of file.txt\n";
const BROTLI: &[u8] = b"BROTLI-VARIANT\x00\xff\x01 of file.txt";
const GZIP: &[u8] = b"\x1f\x8bGZIP-VARIANT\x00 of file.txt";
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR-not-really";
const RANGE_SIZE: usize = 100;

/// The whole test tree and a server running on it. The server is dropped first.
struct Fixture {
    s: Server,
    pki: Pki,
    dir: Dir,
    range: Vec<u8>,
    big: Vec<u8>,
}

fn range_data() -> Vec<u8> {
    (0..RANGE_SIZE).map(|i| b'a' + (i % 26) as u8).collect()
}

/// 200 KiB of deterministic, non-repeating-looking bytes.
fn big_data() -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..200 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// Builds the tree and starts berth:
///
/// ```text
/// dir/secret.txt                   SECRET (outside every root)
/// dir/outside/file.txt             OUTSIDE
/// dir/a/                           site A (a.test, www.a.test), owned by berth-ta
/// dir/b/                           site B (b.test), owned by berth-tb
/// ```
fn fixture() -> Fixture {
    require_root();
    let (uid_a, gid_a) = ensure_user("berth-ta");
    let (uid_b, gid_b) = ensure_user("berth-tb");
    let (uid_c, gid_c) = ensure_user("berth-tc");
    let dir = Dir::new();
    let range = range_data();
    let big = big_data();

    dir.write("secret.txt", SECRET);
    dir.write("outside/file.txt", OUTSIDE);

    // Site A.
    dir.write("a/index.html", A_INDEX);
    dir.write("a/sub/index.html", A_SUB_INDEX);
    dir.write("a/sub/page.html", "sub page\n");
    dir.write("a/sub/.hidden", "HIDDEN-FILE-CONTENT-1\n");
    dir.write("a/noindex/readme.txt", "no index here\n");
    dir.write("a/sp ace/index.html", "space dir\n");
    // Not readable by the front end's user.
    dir.write("a/private.txt", "PRIVATE-0600-CONTENT\n");
    dir.write("a/privdir/index.html", "PRIVATE-DIR-CONTENT\n");
    dir.write("a/style.css", "body { color: red }\n");
    dir.write("a/app.js", "console.log('hi');\n");
    dir.write("a/img.png", PNG);
    dir.write("a/blob.qqzz", b"\x00\x01unknown extension\xfe");
    dir.write("a/range.bin", &range);
    dir.write("a/big.bin", &big);
    dir.write("a/file.txt", PLAIN);
    dir.write("a/file.txt.br", BROTLI);
    dir.write("a/file.txt.gz", GZIP);
    dir.write("a/.env", "DOTENV-SECRET=hunter2\n");
    dir.write("a/.git/config", "[core] GIT-CONFIG-SECRET\n");
    dir.write("a/.htpasswd", "alice:HTPASSWD-SECRET-HASH\n");
    dir.write("a/.well-known/acme-challenge/token", "ACME-TOKEN-CONTENT\n");
    dir.write("a/link-target.txt", "LINK-TARGET-CONTENT\n");
    dir.write("a/foreign.txt", FOREIGN);
    dir.write("a/leak.txt", "leak.txt plain\n");
    // Symlinks.
    dir.symlink("link-target.txt", "a/same.txt");
    dir.symlink("sub", "a/subalias");
    dir.symlink("/etc/passwd", "a/passwd");
    dir.symlink("../secret.txt", "a/up.txt");
    dir.symlink("../outside", "a/outdir");
    dir.symlink(dir.join("outside"), "a/outdir-abs");
    dir.symlink(dir.join("secret.txt"), "a/secret-abs.txt");
    dir.symlink("foreign.txt", "a/other.txt");
    dir.symlink("loop", "a/loop");
    // Links whose names are plain but whose targets are hidden.
    dir.symlink(".env", "a/env.txt");
    dir.symlink("../.env", "a/sub/up-env.txt");
    dir.symlink(".git", "a/repo");
    dir.symlink("sub/../.git/config", "a/gitconfig.txt");
    dir.symlink(".well-known/acme-challenge", "a/acme");
    // A precompressed sibling that points outside the root.
    dir.symlink("../secret.txt", "a/leak.txt.gz");
    // A FIFO, and a link to it (slow path).
    nix::unistd::mkfifo(
        &dir.join("a/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .expect("mkfifo");
    dir.symlink("fifo", "a/fifolink");
    dir.chown("a", uid_a, gid_a);
    std::fs::set_permissions(dir.join("a/private.txt"), PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::set_permissions(dir.join("a/privdir"), PermissionsExt::from_mode(0o700)).unwrap();
    // Owned by someone else, but reachable by a link owned by the tenant.
    dir.chown("a/foreign.txt", uid_c, gid_c);

    // Site B.
    dir.write("b/index.html", B_INDEX);
    dir.write("b/b-only.txt", "B-ONLY-CONTENT\n");
    dir.chown("b", uid_b, gid_b);

    let pki = Pki::new();
    let s = start_a_and_b(&dir, &pki);
    Fixture {
        s,
        pki,
        dir,
        range,
        big,
    }
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1 with byte bodies

/// A parsed HTTP/1.x response (status 0 when the server sent no HTTP response).
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    raw: Vec<u8>,
}

impl Resp {
    fn parse(raw: Vec<u8>) -> Resp {
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n");
        let (head, body) = match split {
            Some(i) => (&raw[..i], raw[i + 4..].to_vec()),
            None => (&raw[..], Vec::new()),
        };
        let head = String::from_utf8_lossy(head).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status = if status_line.starts_with("HTTP/1.") {
            status_line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)
        } else {
            0
        };
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Resp {
            status,
            headers,
            body,
            raw,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The whole response as text, for messages.
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    fn contains(&self, needle: &str) -> bool {
        self.raw
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }
}

/// Sends `request` and reads until the server closes (or `wait` passes).
fn send_within(addr: SocketAddr, request: &[u8], wait: Duration) -> Resp {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(request).expect("send request");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    Resp::parse(out)
}

fn send(addr: SocketAddr, request: &[u8]) -> Resp {
    send_within(addr, request, Duration::from_secs(5))
}

/// `METHOD path` for `host` with extra headers, Connection: close.
fn request(addr: SocketAddr, method: &str, host: &str, path: &str, extra: &[(&str, &str)]) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    send(addr, req.as_bytes())
}

fn get(addr: SocketAddr, host: &str, path: &str, extra: &[(&str, &str)]) -> Resp {
    request(addr, "GET", host, path, extra)
}

// ---------------------------------------------------------------------------
// TLS with a chosen SNI name and HTTP/1.1 only

fn ca_roots(ca_pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

/// Connects with SNI `sni` (no SNI when it is an IP address), ALPN http/1.1 only,
/// sends `request` and reads the response. Err describes a failed handshake or
/// I/O before any response byte.
fn tls_http1(addr: SocketAddr, sni: &str, ca_pem: &str, request: &str) -> Result<Resp, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca_roots(ca_pem))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name =
        rustls_pki_types::ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(|e| e.to_string())?;
    let tcp =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(request.as_bytes())
        .map_err(|e| format!("handshake/write: {e}"))?;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // A peer closing without close_notify ends the response too.
            Err(_) if !out.is_empty() => break,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    if tls.conn.alpn_protocol() != Some(b"http/1.1") {
        return Err(format!(
            "ALPN was {:?}, not http/1.1",
            tls.conn.alpn_protocol()
        ));
    }
    Ok(Resp::parse(out))
}

// ---------------------------------------------------------------------------
// 1. Directory indexes

#[test]
fn directory_index_trailing_slash_redirect_and_no_listing() {
    let f = fixture();
    let a = f.s.addr();

    let r = get(a, "a.test", "/", &[]);
    assert_eq!(r.status, 200, "GET / must serve index.html:\n{}", r.text());
    assert_eq!(
        r.body,
        A_INDEX.as_bytes(),
        "GET / body is the root index.html"
    );

    let r = get(a, "a.test", "/sub/", &[]);
    assert_eq!(
        r.status,
        200,
        "GET /sub/ must serve sub/index.html:\n{}",
        r.text()
    );
    assert_eq!(
        r.body,
        A_SUB_INDEX.as_bytes(),
        "GET /sub/ body is sub/index.html"
    );

    let r = get(a, "a.test", "/sub", &[]);
    assert_eq!(
        r.status,
        301,
        "GET /sub (no slash) must redirect:\n{}",
        r.text()
    );
    assert_eq!(r.header("location"), Some("/sub/"), "Location of /sub");

    let r = get(a, "a.test", "/sub?x=1&y=two", &[]);
    assert_eq!(r.status, 301, "GET /sub?query must redirect:\n{}", r.text());
    assert_eq!(
        r.header("location"),
        Some("/sub/?x=1&y=two"),
        "the redirect keeps the query string"
    );

    let r = get(a, "a.test", "/sp%20ace", &[]);
    assert_eq!(
        r.status,
        301,
        "GET /sp%20ace (a directory) must redirect:\n{}",
        r.text()
    );
    assert_eq!(
        r.header("location"),
        Some("/sp%20ace/"),
        "the redirect re-encodes the decoded path"
    );

    let r = get(a, "a.test", "/noindex/", &[]);
    assert_eq!(
        r.status,
        404,
        "a directory without index.html is 404:\n{}",
        r.text()
    );
    assert!(
        !r.contains("readme.txt"),
        "a directory without index.html must never be listed:\n{}",
        r.text()
    );
    let r = get(a, "a.test", "/noindex", &[]);
    assert_eq!(
        r.status,
        301,
        "/noindex (a directory) still redirects to /noindex/:\n{}",
        r.text()
    );
}

// ---------------------------------------------------------------------------
// 2. Content-Type, Content-Length, HEAD, 405

#[test]
fn content_type_length_head_and_method_not_allowed() {
    let f = fixture();
    let a = f.s.addr();

    let cases: &[(&str, &str, &[u8])] = &[
        ("/index.html", "text/html", A_INDEX.as_bytes()),
        ("/style.css", "text/css", b"body { color: red }\n"),
        ("/app.js", "javascript", b"console.log('hi');\n"),
        ("/img.png", "image/png", PNG),
        (
            "/blob.qqzz",
            "application/octet-stream",
            b"\x00\x01unknown extension\xfe",
        ),
    ];
    for &(path, ctype, content) in cases {
        let r = get(a, "a.test", path, &[]);
        assert_eq!(r.status, 200, "GET {path}:\n{}", r.text());
        let got = r.header("content-type").unwrap_or("");
        let ok = if ctype == "javascript" {
            got.starts_with("text/javascript") || got.starts_with("application/javascript")
        } else {
            got.starts_with(ctype)
        };
        assert!(ok, "Content-Type of {path}: expected {ctype}, got {got:?}");
        assert_eq!(
            r.header("content-length"),
            Some(content.len().to_string().as_str()),
            "Content-Length of {path}"
        );
        assert_eq!(r.body, content, "body of {path} is the file's bytes");

        let h = request(a, "HEAD", "a.test", path, &[]);
        assert_eq!(h.status, 200, "HEAD {path}:\n{}", h.text());
        assert!(
            h.body.is_empty(),
            "HEAD {path} must have an empty body: {:?}",
            h.body
        );
        for name in ["content-type", "content-length", "etag", "last-modified"] {
            assert_eq!(
                h.header(name),
                r.header(name),
                "HEAD {path}: header {name} must equal GET's"
            );
        }
    }

    for path in ["/index.html", "/", "/missing.txt"] {
        let r = request(a, "POST", "a.test", path, &[]);
        assert_eq!(r.status, 405, "POST {path} must be 405:\n{}", r.text());
        assert_eq!(
            r.header("allow"),
            Some("GET, HEAD"),
            "Allow header of POST {path}"
        );
        assert!(!r.contains(A_INDEX), "POST {path} must not return the file");
    }
}

// ---------------------------------------------------------------------------
// 3. Conditional requests

#[test]
fn conditional_requests_etag_and_last_modified() {
    let f = fixture();
    let a = f.s.addr();

    let r = get(a, "a.test", "/index.html", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let etag = r.header("etag").expect("ETag present").to_string();
    let lm = r
        .header("last-modified")
        .expect("Last-Modified present")
        .to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "ETag is a quoted entity-tag: {etag:?}"
    );
    assert!(
        httpdate::parse_http_date(&lm).is_ok(),
        "Last-Modified is an HTTP date: {lm:?}"
    );

    let r = get(a, "a.test", "/index.html", &[("If-None-Match", &etag)]);
    assert_eq!(
        r.status,
        304,
        "If-None-Match with the current ETag:\n{}",
        r.text()
    );
    assert!(r.body.is_empty(), "304 has no body: {:?}", r.body);
    assert_eq!(
        r.header("etag"),
        Some(etag.as_str()),
        "304 repeats the ETag"
    );

    let weak = format!("W/{etag}");
    let r = get(a, "a.test", "/index.html", &[("If-None-Match", &weak)]);
    assert_eq!(
        r.status,
        304,
        "If-None-Match uses weak comparison:\n{}",
        r.text()
    );

    let r = get(a, "a.test", "/index.html", &[("If-Modified-Since", &lm)]);
    assert_eq!(
        r.status,
        304,
        "If-Modified-Since = Last-Modified:\n{}",
        r.text()
    );
    assert!(r.body.is_empty(), "304 has no body: {:?}", r.body);

    let r = get(
        a,
        "a.test",
        "/index.html",
        &[("If-Modified-Since", "Thu, 01 Jan 1970 00:00:00 GMT")],
    );
    assert_eq!(
        r.status,
        200,
        "an old If-Modified-Since gives the file:\n{}",
        r.text()
    );
    assert_eq!(r.body, A_INDEX.as_bytes());

    let r = get(
        a,
        "a.test",
        "/index.html",
        &[("If-None-Match", "\"stale-0\"")],
    );
    assert_eq!(
        r.status,
        200,
        "a stale If-None-Match gives the file:\n{}",
        r.text()
    );
    assert_eq!(
        r.body,
        A_INDEX.as_bytes(),
        "body after a stale If-None-Match"
    );

    // If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2).
    let r = get(
        a,
        "a.test",
        "/index.html",
        &[("If-None-Match", "\"stale-0\""), ("If-Modified-Since", &lm)],
    );
    assert_eq!(
        r.status,
        200,
        "a stale If-None-Match overrides a matching If-Modified-Since:\n{}",
        r.text()
    );
}

// ---------------------------------------------------------------------------
// 4. Ranges

#[test]
fn byte_ranges_and_if_range() {
    let f = fixture();
    let a = f.s.addr();
    let data = &f.range;
    let size = data.len();

    let r = get(a, "a.test", "/range.bin", &[("Range", "bytes=0-9")]);
    assert_eq!(r.status, 206, "bytes=0-9:\n{}", r.text());
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 0-9/{size}").as_str()),
        "Content-Range of bytes=0-9"
    );
    assert_eq!(
        r.header("content-length"),
        Some("10"),
        "Content-Length of bytes=0-9"
    );
    assert_eq!(r.body, &data[..10], "bytes=0-9 body");

    let r = get(a, "a.test", "/range.bin", &[("Range", "bytes=-5")]);
    assert_eq!(r.status, 206, "bytes=-5:\n{}", r.text());
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes {}-{}/{size}", size - 5, size - 1).as_str()),
        "Content-Range of bytes=-5"
    );
    assert_eq!(
        r.body,
        &data[size - 5..],
        "bytes=-5 body is the last 5 bytes"
    );

    let r = get(a, "a.test", "/range.bin", &[("Range", "bytes=10-")]);
    assert_eq!(r.status, 206, "bytes=10-:\n{}", r.text());
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 10-{}/{size}", size - 1).as_str()),
        "Content-Range of bytes=10-"
    );
    assert_eq!(r.body, &data[10..], "bytes=10- body");

    let unsat = format!("bytes={size}-");
    let r = get(a, "a.test", "/range.bin", &[("Range", &unsat)]);
    assert_eq!(r.status, 416, "{unsat} is unsatisfiable:\n{}", r.text());
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{size}").as_str()),
        "Content-Range of a 416"
    );
    assert!(
        !r.contains(std::str::from_utf8(&data[..20]).unwrap()),
        "a 416 does not carry the file"
    );

    let r = get(a, "a.test", "/range.bin", &[("Range", "bytes=0-1,5-6")]);
    assert_eq!(
        r.status,
        200,
        "two ranges give the whole file:\n{}",
        r.text()
    );
    assert_eq!(r.body, &data[..], "two ranges: full body");
    assert!(
        r.header("content-range").is_none(),
        "no Content-Range on a 200"
    );

    let r = get(
        a,
        "a.test",
        "/range.bin",
        &[("Range", "bytes=0-9"), ("If-Range", "\"wrong-etag\"")],
    );
    assert_eq!(
        r.status,
        200,
        "If-Range with a wrong ETag gives the whole file:\n{}",
        r.text()
    );
    assert_eq!(r.body, &data[..], "If-Range mismatch: full body");

    let etag = get(a, "a.test", "/range.bin", &[])
        .header("etag")
        .expect("ETag")
        .to_string();
    let r = get(
        a,
        "a.test",
        "/range.bin",
        &[("Range", "bytes=0-9"), ("If-Range", &etag)],
    );
    assert_eq!(
        r.status,
        206,
        "If-Range with the current ETag honours Range:\n{}",
        r.text()
    );
    assert_eq!(r.body, &data[..10], "If-Range match: the range");
}

// ---------------------------------------------------------------------------
// 5. Precompressed siblings

#[test]
fn precompressed_br_and_gz_siblings() {
    let f = fixture();
    let a = f.s.addr();

    let cases: &[(Option<&str>, &[u8], Option<&str>)] = &[
        (Some("br, gzip"), BROTLI, Some("br")),
        (Some("gzip"), GZIP, Some("gzip")),
        (Some("br;q=0, gzip"), GZIP, Some("gzip")),
        (Some("gzip;q=0.5, br;q=0.9"), BROTLI, Some("br")),
        (Some("identity"), PLAIN, None),
        (None, PLAIN, None),
    ];
    for &(accept, want, encoding) in cases {
        let extra: Vec<(&str, &str)> = accept.map(|v| ("Accept-Encoding", v)).into_iter().collect();
        let r = get(a, "a.test", "/file.txt", &extra);
        assert_eq!(r.status, 200, "Accept-Encoding {accept:?}:\n{}", r.text());
        assert_eq!(
            r.body,
            want,
            "Accept-Encoding {accept:?}: wrong variant, got {:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            r.header("content-encoding"),
            encoding,
            "Content-Encoding for Accept-Encoding {accept:?}"
        );
        assert_eq!(
            r.header("content-length"),
            Some(want.len().to_string().as_str()),
            "Content-Length for Accept-Encoding {accept:?}"
        );
        let ctype = r.header("content-type").unwrap_or("");
        assert!(
            ctype.starts_with("text/plain"),
            "Content-Type for Accept-Encoding {accept:?} is file.txt's, got {ctype:?}"
        );
        if encoding.is_some() {
            let vary = r.header("vary").unwrap_or("");
            assert!(
                vary.to_ascii_lowercase().contains("accept-encoding"),
                "Vary: Accept-Encoding for Accept-Encoding {accept:?}, got {vary:?}"
            );
        }
    }

    // A precompressed sibling is served under the same rules: leak.txt.gz is a
    // symlink to a file outside the root.
    let r = get(a, "a.test", "/leak.txt", &[("Accept-Encoding", "gzip")]);
    assert_eq!(r.status, 200, "leak.txt itself is served:\n{}", r.text());
    assert!(
        !r.contains(SECRET),
        "a .gz sibling linking outside the root must not be served:\n{}",
        r.text()
    );
    assert_eq!(r.body, b"leak.txt plain\n", "leak.txt: the plain file");
}

// ---------------------------------------------------------------------------
// 6. Traversal (invariant 3)

#[test]
fn traversal_never_leaves_the_root() {
    let f = fixture();
    let a = f.s.addr();

    let paths = [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/.%2e/secret.txt",
        "/%2e./secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/sub%2f..%2f..%2fsecret.txt",
        "/sub/../../secret.txt",
        "/..%5csecret.txt",
        "/sub\\..\\..\\secret.txt",
        "/index.html%00.txt",
        "//../secret.txt",
        "/./../secret.txt",
        "/sub/%2e%2e/%2e%2e/secret.txt",
        "/%252e%252e/secret.txt",
        "/%C0%AE%C0%AE/secret.txt",
    ];
    for path in paths {
        let req = format!("GET {path} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
        let r = send(a, req.as_bytes());
        assert!(
            !r.contains(SECRET),
            "GET {path} returned the secret outside the root:\n{}",
            r.text()
        );
        assert!(
            r.status == 400 || r.status == 404,
            "GET {path} must answer 400 or 404, got:\n{}",
            r.text()
        );
    }

    // Absolute-form request targets.
    for target in [
        "http://a.test/../secret.txt",
        "http://a.test/%2e%2e/secret.txt",
        "http://a.test/sub/../../secret.txt",
    ] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
        let r = send(a, req.as_bytes());
        assert!(
            !r.contains(SECRET),
            "GET {target} returned the secret:\n{}",
            r.text()
        );
        assert!(
            r.status == 400 || r.status == 404,
            "GET {target} must answer 400 or 404, got:\n{}",
            r.text()
        );
    }

    // One tenant's site cannot reach another's through "..".
    for path in ["/../a/index.html", "/%2e%2e/a/index.html"] {
        let r = get(a, "b.test", path, &[]);
        assert!(
            !r.contains(A_INDEX),
            "b.test{path} returned site A's file:\n{}",
            r.text()
        );
        assert!(
            r.status == 400 || r.status == 404,
            "b.test{path} must answer 400 or 404, got:\n{}",
            r.text()
        );
    }

    // The server is still fine.
    let r = get(a, "a.test", "/", &[]);
    assert_eq!(
        r.status, 200,
        "a normal request after the traversal attempts"
    );
}

// ---------------------------------------------------------------------------
// 7. Symlinks

#[test]
fn symlinks_only_inside_root_and_if_owner_matches() {
    let f = fixture();
    let a = f.s.addr();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let passwd_line = passwd.lines().next().unwrap().to_string();

    let r = get(a, "a.test", "/same.txt", &[]);
    assert_eq!(
        r.status,
        200,
        "a symlink to a file inside the root with the same owner is served:\n{}",
        r.text()
    );
    assert_eq!(
        r.body, b"LINK-TARGET-CONTENT\n",
        "same.txt serves its target"
    );

    let r = get(a, "a.test", "/subalias/page.html", &[]);
    assert_eq!(
        r.status,
        200,
        "a file under a same-owner symlinked directory inside the root:\n{}",
        r.text()
    );
    assert_eq!(r.body, b"sub page\n");

    let r = get(a, "a.test", "/passwd", &[]);
    assert_eq!(
        r.status,
        404,
        "a symlink to /etc/passwd is 404:\n{}",
        r.text()
    );
    assert!(
        !r.contains(&passwd_line),
        "/passwd leaked /etc/passwd:\n{}",
        r.text()
    );

    let r = get(a, "a.test", "/up.txt", &[]);
    assert_eq!(
        r.status,
        404,
        "a symlink to ../secret.txt is 404:\n{}",
        r.text()
    );
    assert!(
        !r.contains(SECRET),
        "/up.txt leaked the secret:\n{}",
        r.text()
    );

    let r = get(a, "a.test", "/secret-abs.txt", &[]);
    assert_eq!(
        r.status,
        404,
        "an absolute symlink to the secret is 404:\n{}",
        r.text()
    );
    assert!(!r.contains(SECRET), "/secret-abs.txt leaked the secret");

    for path in ["/outdir/file.txt", "/outdir-abs/file.txt"] {
        let r = get(a, "a.test", path, &[]);
        assert_eq!(
            r.status,
            404,
            "{path}: a file under a symlinked directory outside the root is 404:\n{}",
            r.text()
        );
        assert!(
            !r.contains(OUTSIDE),
            "{path} leaked a file outside the root"
        );
    }
    let r = get(a, "a.test", "/outdir/", &[]);
    assert_eq!(
        r.status,
        404,
        "/outdir/ (outside the root) is 404:\n{}",
        r.text()
    );

    let started = Instant::now();
    let r = get(a, "a.test", "/loop", &[]);
    assert_eq!(r.status, 404, "a symlink loop is 404:\n{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a symlink loop answered slowly"
    );

    let r = get(a, "a.test", "/other.txt", &[]);
    assert!(
        r.status == 403 || r.status == 404,
        "a symlink to a file of another owner must be 403 or 404 (SymLinksIfOwnerMatch), got:\n{}",
        r.text()
    );
    assert!(
        !r.contains(FOREIGN),
        "/other.txt served another owner's file:\n{}",
        r.text()
    );
}

// ---------------------------------------------------------------------------
// 8. Dotfiles

#[test]
fn dotfiles_hidden_but_well_known_served() {
    let f = fixture();
    let a = f.s.addr();

    let hidden = [
        ("/.env", "DOTENV-SECRET"),
        ("/.git/config", "GIT-CONFIG-SECRET"),
        ("/.git/", "GIT-CONFIG-SECRET"),
        ("/.htpasswd", "HTPASSWD-SECRET"),
        ("/sub/.hidden", "HIDDEN-FILE-CONTENT"),
        ("/%2eenv", "DOTENV-SECRET"),
        ("/sub/%2Ehidden", "HIDDEN-FILE-CONTENT"),
    ];
    for (path, content) in hidden {
        let r = get(a, "a.test", path, &[]);
        assert_eq!(r.status, 404, "dotfile {path} must be 404:\n{}", r.text());
        assert!(!r.contains(content), "dotfile {path} leaked:\n{}", r.text());
        let h = request(a, "HEAD", "a.test", path, &[]);
        assert_eq!(h.status, 404, "HEAD of dotfile {path} must be 404");
    }

    let r = get(a, "a.test", "/.well-known/acme-challenge/token", &[]);
    assert_eq!(
        r.status,
        200,
        "ACME challenge under /.well-known/:\n{}",
        r.text()
    );
    assert_eq!(r.body, b"ACME-TOKEN-CONTENT\n", "ACME token body");
}

/// Asserts that `path` on a.test is 404 without `content`, for GET and HEAD.
fn assert_hidden(a: SocketAddr, path: &str, content: &str) {
    let r = get(a, "a.test", path, &[]);
    assert_eq!(r.status, 404, "{path} must be 404:\n{}", r.text());
    assert!(!r.contains(content), "{path} leaked:\n{}", r.text());
    let h = request(a, "HEAD", "a.test", path, &[]);
    assert_eq!(h.status, 404, "HEAD {path} must be 404");
}

#[test]
fn symlink_to_a_dotfile_does_not_serve_the_dotfile() {
    let f = fixture();
    let a = f.s.addr();
    // env.txt -> .env, sub/up-env.txt -> ../.env, gitconfig.txt ->
    // sub/../.git/config: the URL names no dotfile, the link's target does.
    assert_hidden(a, "/env.txt", "DOTENV-SECRET");
    assert_hidden(a, "/sub/up-env.txt", "DOTENV-SECRET");
    assert_hidden(a, "/gitconfig.txt", "GIT-CONFIG-SECRET");
    // A link to /.well-known/ is as public as the directory itself.
    let r = get(a, "a.test", "/acme/token", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, b"ACME-TOKEN-CONTENT\n");
}

#[test]
fn symlink_to_a_dot_directory_does_not_serve_its_files() {
    let f = fixture();
    let a = f.s.addr();
    // repo -> .git
    assert_hidden(a, "/repo/config", "GIT-CONFIG-SECRET");
    assert_hidden(a, "/repo/", "GIT-CONFIG-SECRET");
    let r = get(a, "a.test", "/repo", &[]);
    assert_eq!(
        r.status,
        404,
        "no redirect into a hidden directory:\n{}",
        r.text()
    );
}

// ---------------------------------------------------------------------------
// 9. Virtual hosts

#[test]
fn virtual_hosts_alias_case_port_unknown_and_missing_host() {
    let f = fixture();
    let a = f.s.addr();

    for host in [
        "a.test",
        "www.a.test",
        "A.TEST",
        "Www.A.Test",
        "a.test:8080",
        "WWW.A.TEST:1",
    ] {
        let r = get(a, host, "/", &[]);
        assert_eq!(r.status, 200, "Host {host:?}:\n{}", r.text());
        assert_eq!(r.body, A_INDEX.as_bytes(), "Host {host:?} serves site A");
    }
    let r = get(a, "b.test", "/", &[]);
    assert_eq!(r.body, B_INDEX.as_bytes(), "b.test serves site B");
    let r = get(a, "b.test", "/range.bin", &[]);
    assert_eq!(
        r.status,
        404,
        "site A's files are not under b.test:\n{}",
        r.text()
    );
    let r = get(a, "a.test", "/b-only.txt", &[]);
    assert_eq!(
        r.status,
        404,
        "site B's files are not under a.test:\n{}",
        r.text()
    );

    for host in ["c.test", "a.test.evil", "b.test.a.test", "127.0.0.1"] {
        let r = get(a, host, "/", &[]);
        assert!(
            r.status == 421 || r.status == 404,
            "unknown Host {host:?} must be 421 or 404, got:\n{}",
            r.text()
        );
        assert!(
            !r.contains(A_INDEX) && !r.contains(B_INDEX),
            "unknown Host {host:?} got a site's content:\n{}",
            r.text()
        );
    }

    let r = send(a, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 400, "HTTP/1.0 without Host:\n{}", r.text());
    assert!(
        !r.contains(A_INDEX) && !r.contains(B_INDEX),
        "no site for a missing Host"
    );

    let r = send(a, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 400, "HTTP/1.1 without Host:\n{}", r.text());
    assert!(
        !r.contains(A_INDEX) && !r.contains(B_INDEX),
        "no site for a missing Host"
    );
}

#[test]
fn duplicate_host_headers_are_400() {
    let f = fixture();
    let a = f.s.addr();
    // Two Host field lines: RFC 9112 section 3.2 requires 400. Answering from
    // either site lets a proxy or cache that reads the other one attribute one
    // tenant's response to another tenant's host.
    for (first, second) in [("a.test", "b.test"), ("b.test", "a.test")] {
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {first}\r\nHost: {second}\r\nConnection: close\r\n\r\n"
        );
        let r = send(a, req.as_bytes());
        assert_eq!(
            r.status,
            400,
            "two Host headers ({first}, then {second}) must be 400, got:\n{}",
            r.text()
        );
    }
}

// ---------------------------------------------------------------------------
// 10. TLS: SNI decides the site

#[test]
fn tls_unknown_sni_fails_and_host_must_match_sni() {
    let f = fixture();
    let t = f.s.tls_addr();
    let tls_port = f.s.tls_port;
    let ca = &f.pki.ca_pem;

    // Unknown SNI name: the handshake fails, no response at all.
    let c = client(false, Some(ca), &["c.test"], tls_port);
    let res = c.get(format!("https://c.test:{tls_port}/")).send();
    match res {
        Err(e) => assert!(
            e.status().is_none(),
            "no HTTP status for an unknown SNI: {e}"
        ),
        Ok(r) => panic!(
            "unknown SNI c.test got a response: {} {:?}",
            r.status(),
            r.text()
        ),
    }
    let res = tls_http1(
        t,
        "c.test",
        ca,
        "GET / HTTP/1.1\r\nHost: c.test\r\nConnection: close\r\n\r\n",
    );
    let err = res
        .err()
        .expect("handshake for unknown SNI c.test must fail");
    assert!(
        err.contains("alert"),
        "unknown SNI: the server must refuse the handshake with an alert, got {err}"
    );
    // No SNI at all (an IP address is never sent as SNI): berth offers the
    // default site's certificate (tests/h2_conformance.rs), which a client that
    // checks for the name 127.0.0.1 refuses on its own side.
    let res = tls_http1(
        t,
        "127.0.0.1",
        ca,
        "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    );
    let err = res
        .err()
        .expect("a.test's certificate is not valid for 127.0.0.1");
    assert!(
        err.contains("not valid for name"),
        "no SNI: the default site's certificate, refused by the client, got {err}"
    );

    // Control: SNI a.test, Host a.test over HTTP/1.1.
    let r = tls_http1(
        t,
        "a.test",
        ca,
        "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .expect("TLS to a.test");
    assert_eq!(r.status, 200, "SNI a.test + Host a.test:\n{}", r.text());
    assert_eq!(r.body, A_INDEX.as_bytes());
    let r = tls_http1(
        t,
        "www.a.test",
        ca,
        "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .expect("TLS to www.a.test");
    assert_eq!(
        r.status,
        200,
        "SNI of an alias + Host of the same site:\n{}",
        r.text()
    );

    // SNI a.test, then Host b.test on the same connection.
    let r = tls_http1(
        t,
        "a.test",
        ca,
        "GET / HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    )
    .expect("TLS to a.test");
    assert_eq!(
        r.status,
        421,
        "SNI a.test + Host b.test must be 421:\n{}",
        r.text()
    );
    assert!(
        !r.contains(B_INDEX),
        "SNI a.test + Host b.test served site B:\n{}",
        r.text()
    );
    let r = tls_http1(
        t,
        "a.test",
        ca,
        "GET /b-only.txt HTTP/1.1\r\nHost: B.TEST:443\r\nConnection: close\r\n\r\n",
    )
    .expect("TLS to a.test");
    assert_eq!(
        r.status,
        421,
        "SNI a.test + Host B.TEST:443 must be 421:\n{}",
        r.text()
    );
    assert!(
        !r.contains("B-ONLY-CONTENT"),
        "site B's file over a.test's connection"
    );

    // The same through reqwest over TLS (h2): each name gets its own site.
    let c = client(false, Some(ca), &["a.test", "b.test"], tls_port);
    let resp = c.get(format!("https://b.test:{tls_port}/")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.text().unwrap(),
        B_INDEX,
        "b.test over TLS serves site B"
    );
}

// ---------------------------------------------------------------------------
// 11. Large files over HTTP/2

#[test]
fn large_file_identical_over_h2c_and_tls_h2() {
    let f = fixture();
    let port = f.s.port;
    let tls_port = f.s.tls_port;
    let on_disk = std::fs::read(f.dir.join("a/big.bin")).unwrap();
    assert_eq!(on_disk, f.big);
    assert_eq!(on_disk.len(), 200 * 1024);

    let h2c = client(true, None, &["a.test"], port);
    let resp = h2c
        .get(format!("http://a.test:{port}/big.bin"))
        .send()
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2, "h2c is HTTP/2");
    assert_eq!(resp.status(), 200, "big.bin over h2c");
    assert_eq!(
        resp.headers()
            .get("content-length")
            .map(|v| v.to_str().unwrap().to_string()),
        Some((200 * 1024).to_string()),
        "Content-Length over h2c"
    );
    let body = resp.bytes().unwrap();
    assert!(
        body[..] == on_disk[..],
        "big.bin over h2c differs from the file ({} bytes)",
        body.len()
    );

    let tls = client(false, Some(&f.pki.ca_pem), &["a.test"], tls_port);
    let resp = tls
        .get(format!("https://a.test:{tls_port}/big.bin"))
        .send()
        .unwrap();
    assert_eq!(
        resp.version(),
        reqwest::Version::HTTP_2,
        "TLS negotiated h2"
    );
    assert_eq!(resp.status(), 200, "big.bin over TLS h2");
    let body = resp.bytes().unwrap();
    assert!(
        body[..] == on_disk[..],
        "big.bin over TLS h2 differs from the file ({} bytes)",
        body.len()
    );

    // A range across the chunk boundary over h2 too.
    let resp = tls
        .get(format!("https://a.test:{tls_port}/big.bin"))
        .header("Range", "bytes=65000-140000")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 206, "range over TLS h2");
    assert!(
        resp.bytes().unwrap()[..] == on_disk[65000..=140000],
        "range body over h2"
    );

    // And over HTTP/1.1, raw.
    let r = get(f.s.addr(), "a.test", "/big.bin", &[]);
    assert!(
        r.body == on_disk,
        "big.bin over HTTP/1.1 differs ({} bytes)",
        r.body.len()
    );
}

// ---------------------------------------------------------------------------
// 12. FIFOs

#[test]
fn fifo_is_404_without_hanging() {
    let f = fixture();
    let a = f.s.addr();

    for path in ["/fifo", "/fifolink"] {
        let started = Instant::now();
        let req = format!("GET {path} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
        let r = send_within(a, req.as_bytes(), Duration::from_secs(3));
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "GET {path} (a FIFO) hung for {took:?}"
        );
        assert_eq!(
            r.status,
            404,
            "GET {path} (a FIFO) must be 404:\n{}",
            r.text()
        );
        let h = send_within(
            a,
            format!("HEAD {path} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(3),
        );
        assert_eq!(
            h.status,
            404,
            "HEAD {path} (a FIFO) must be 404:\n{}",
            h.text()
        );
    }

    let r = get(a, "a.test", "/", &[]);
    assert_eq!(
        r.status,
        200,
        "a request after the FIFO still works:\n{}",
        r.text()
    );
    assert_eq!(r.body, A_INDEX.as_bytes());
}

// ---------------------------------------------------------------------------
// Files the front end may not read

#[test]
fn unreadable_files_are_404_not_500() {
    let f = fixture();
    let a = f.s.addr();
    for (path, content) in [
        ("/private.txt", "PRIVATE-0600-CONTENT"),
        ("/privdir/", "PRIVATE-DIR-CONTENT"),
        ("/privdir/index.html", "PRIVATE-DIR-CONTENT"),
    ] {
        let r = get(a, "a.test", path, &[]);
        assert_eq!(
            r.status,
            404,
            "{path} is not readable by the front end: 404 (not 403/500):\n{}",
            r.text()
        );
        assert!(!r.contains(content), "{path} leaked:\n{}", r.text());
    }
}
