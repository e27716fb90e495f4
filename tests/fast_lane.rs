//! The HTTP/1.1 fast lane on plain connections (src/front/h1.rs): sendfile
//! bodies and ranges, pipelining, keep-alive rules, and handing a connection
//! over to hyper in the middle of its life.
mod common;
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Deterministic bytes that do not repeat on a short period.
fn data(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

struct Site {
    s: Server,
    _dir: Dir,
    medium: Vec<u8>,
    large: Vec<u8>,
}

fn site() -> Site {
    require_root();
    let (uid, gid) = ensure_user("berth-ta");
    let dir = Dir::new();
    let medium = data(300 * 1024);
    let large = data(3 * 1024 * 1024 + 17);
    dir.write("root/index.html", "index\n");
    dir.write("root/medium.bin", &medium);
    dir.write("root/large.bin", &large);
    dir.chown("root", uid, gid);
    let (server, port, tls_port) = server_block(&dir, "");
    let config = format!(
        "{server}\n[tenant.ta]\nuser = \"berth-ta\"\n[[tenant.ta.site]]\nhosts = [\"a.test\"]\nroot = \"{}\"\n",
        dir.join("root").display()
    );
    let s = Server::start(&dir, &config, port, tls_port);
    Site {
        s,
        _dir: dir,
        medium,
        large,
    }
}

/// Reads one response (head + Content-Length body) from a kept-alive stream.
fn read_response(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("read head");
        assert_eq!(
            n,
            1,
            "connection closed inside a head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![
        0u8;
        if head.starts_with("HTTP/1.1 304") {
            0
        } else {
            len
        }
    ];
    stream.read_exact(&mut body).expect("read body");
    (head, body)
}

fn connect(s: &Server) -> TcpStream {
    let c = TcpStream::connect(s.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

#[test]
fn sendfile_bodies_and_ranges_are_exact() {
    let t = site();
    let mut c = connect(&t.s);
    for (path, want) in [("/medium.bin", &t.medium), ("/large.bin", &t.large)] {
        write!(c, "GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
        let (head, body) = read_response(&mut c);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(body == *want, "{path}: body differs from the file");
    }
    // Ranges large enough for sendfile, at odd offsets, in both files.
    for (path, want, from, to) in [
        ("/medium.bin", &t.medium, 1usize, 200_000usize),
        ("/large.bin", &t.large, 1_000_003, 3 * 1024 * 1024 + 16),
        ("/large.bin", &t.large, 17, 40_000),
    ] {
        write!(
            c,
            "GET {path} HTTP/1.1\r\nHost: a.test\r\nRange: bytes={from}-{to}\r\n\r\n"
        )
        .unwrap();
        let (head, body) = read_response(&mut c);
        assert!(head.starts_with("HTTP/1.1 206"), "{head}");
        assert!(body == want[from..=to], "{path} {from}-{to}: wrong bytes");
    }
    // HEAD of a large file: the length, no body (the next response follows at once).
    write!(c, "HEAD /large.bin HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
    let (head, _) = {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            c.read_exact(&mut byte).unwrap();
            buf.push(byte[0]);
        }
        (String::from_utf8(buf).unwrap(), ())
    };
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {}", t.large.len())),
        "{head}"
    );
    write!(c, "GET /index.html HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
    let (head, body) = read_response(&mut c);
    assert!(head.starts_with("HTTP/1.1 200"), "after HEAD: {head}");
    assert_eq!(body, b"index\n");
    let log = t.s.access_log("ta");
    assert!(
        log.contains(&format!(
            "\"GET /large.bin HTTP/1.1\" 200 {}",
            t.large.len()
        )),
        "sendfile bytes counted in the access log:\n{log}"
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let t = site();
    let mut c = connect(&t.s);
    c.write_all(
        b"GET /index.html HTTP/1.1\r\nHost: a.test\r\n\r\n\
          GET /missing HTTP/1.1\r\nHost: a.test\r\n\r\n\
          HEAD /index.html HTTP/1.1\r\nHost: a.test\r\n\r\n\
          GET /medium.bin HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    .unwrap();
    let (h1, b1) = read_response(&mut c);
    assert!(h1.starts_with("HTTP/1.1 200") && b1 == b"index\n", "{h1}");
    let (h2, _) = read_response(&mut c);
    assert!(h2.starts_with("HTTP/1.1 404"), "{h2}");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "HEAD answered");
    let (h4, b4) = read_response(&mut c);
    assert!(h4.starts_with("HTTP/1.1 200") && b4 == t.medium, "{h4}");
}

#[test]
fn a_connection_moves_to_hyper_and_keeps_working() {
    let t = site();
    let mut c = connect(&t.s);
    // Fast lane first.
    c.write_all(b"GET /index.html HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    let (h, _) = read_response(&mut c);
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    // A request with a body goes to hyper (static files refuse POST), and the
    // request pipelined behind it must not be lost in the hand-over.
    c.write_all(
        b"POST /index.html HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello\
          GET /index.html HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    .unwrap();
    let (h, _) = read_response(&mut c);
    assert!(h.starts_with("HTTP/1.1 405"), "{h}");
    let (h, b) = read_response(&mut c);
    assert!(h.starts_with("HTTP/1.1 200") && b == b"index\n", "{h}");
    // Chunked bodies too.
    c.write_all(
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET /index.html HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    .unwrap();
    let (h, _) = read_response(&mut c);
    assert!(h.starts_with("HTTP/1.1 405"), "{h}");
    let (h, b) = read_response(&mut c);
    assert!(h.starts_with("HTTP/1.1 200") && b == b"index\n", "{h}");
}

#[test]
fn http10_closes_unless_asked_to_keep_alive() {
    let t = site();
    let r = raw(
        t.s.addr(),
        "GET /index.html HTTP/1.0\r\nHost: a.test\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.to_ascii_lowercase().contains("connection: close"), "{r}");
    assert!(
        r.ends_with("index\n"),
        "the server closed after the body: {r}"
    );

    let mut c = connect(&t.s);
    for _ in 0..2 {
        c.write_all(b"GET /index.html HTTP/1.0\r\nHost: a.test\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let (h, b) = read_response(&mut c);
        assert!(
            h.to_ascii_lowercase().contains("connection: keep-alive"),
            "{h}"
        );
        assert_eq!(b, b"index\n");
    }
    // HTTP/1.1 with Connection: close gets its answer, then EOF.
    c.write_all(b"GET /index.html HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (h, _) = read_response(&mut c);
    assert!(h.to_ascii_lowercase().contains("connection: close"), "{h}");
    let mut rest = Vec::new();
    assert_eq!(c.read_to_end(&mut rest).unwrap(), 0);
}

/// Reads everything until EOF or error; returns how many bytes came.
fn drain_count(c: &mut TcpStream) -> usize {
    let mut total = 0;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return total,
            Ok(n) => total += n,
        }
    }
}

#[test]
fn clients_that_stop_reading_are_dropped_after_send_timeout() {
    require_root();
    let (uid, gid) = ensure_user("berth-ta");
    let dir = Dir::new();
    let size = 64 << 20;
    dir.write("root/huge.bin", vec![7u8; size]);
    dir.chown("root", uid, gid);
    let (server, port, tls_port) = server_block(&dir, "send_timeout = \"1s\"");
    let config = format!(
        "{server}\n[tenant.ta]\nuser = \"berth-ta\"\n[[tenant.ta.site]]\nhosts = [\"a.test\"]\nroot = \"{}\"\n",
        dir.join("root").display()
    );
    let s = Server::start(&dir, &config, port, tls_port);
    // The fast lane (plain GET, sendfile) and hyper (a GET with a chunked,
    // empty body is handed over) must both give up on a client that reads nothing.
    for request in [
        "GET /huge.bin HTTP/1.1\r\nHost: a.test\r\n\r\n",
        "GET /huge.bin HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        let mut c = connect(&s);
        c.write_all(request.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_secs(4));
        let got = drain_count(&mut c);
        assert!(
            got < size,
            "{request:?}: the whole {size} bytes arrived ({got}): the server waited for a stalled client"
        );
        assert!(got > 0, "{request:?}: nothing was sent at all");
    }
    // The server still answers.
    assert_eq!(status_of(&get_raw(s.addr(), "a.test", "/huge.bin")), 200);
}
