//! The life of a running berth: privileges of the two processes, reload (good,
//! bad, new listeners), graceful drain on SIGTERM, restarts after a crash, a
//! front end that stops reading (the supervisor never waits on it), the
//! limits that protect the front end from hostile clients (slowloris, idle
//! keep-alive, oversized heads, the connection cap), access logs and their
//! reopening, log files that a tenant could redirect (invariant 7), and running
//! as a normal user.
mod common;
use common::apps::HOST_PIDS;
use common::*;

use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

/// Short client timeouts so that every test finishes quickly.
const LIMITS: &str = r#"header_timeout = "1s"
keepalive_timeout = "2s"
drain_timeout = "5s""#;

// ---------------------------------------------------------------------------
// Private helpers
// ---------------------------------------------------------------------------

/// The `[tenant.ta]` block: one site `a.test` (alias `www.a.test`) at `dir/ROOT`.
/// The root is chowned to berth-ta (call after writing its files).
fn tenant_a(dir: &Dir, root: &str, hosts: &str) -> String {
    let (uid, gid) = ensure_user("berth-ta");
    dir.chown(root, uid, gid);
    format!(
        r#"
[tenant.ta]
user = "berth-ta"

[[tenant.ta.site]]
hosts = [{hosts}]
root = "{root}"
"#,
        root = dir.join(root).display(),
    )
}

/// A server with tenant `ta` serving `dir/a` (index.html = "site A\n") for
/// a.test and www.a.test, with `extra` lines in `[server]`.
fn start_a(dir: &Dir, extra: &str) -> Server {
    dir.write("a/index.html", "site A\n");
    let (server, port, tls_port) = server_block(dir, extra);
    let config = format!(
        "{server}{}",
        tenant_a(dir, "a", r#""a.test", "www.a.test""#)
    );
    Server::start(dir, &config, port, tls_port)
}

/// One parsed HTTP/1.1 response.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw HTTP/1.1 client connection that can carry several requests.
struct Conn {
    r: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Conn {
            r: BufReader::new(s),
        }
    }

    fn stream(&mut self) -> &mut TcpStream {
        self.r.get_mut()
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream().write_all(bytes)
    }

    /// Sends a keep-alive GET and reads the response.
    fn get(&mut self, host: &str, path: &str) -> Resp {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .expect("send request");
        self.response().expect("read response")
    }

    /// Reads one response (head + Content-Length body).
    fn response(&mut self) -> std::io::Result<Resp> {
        let head = read_head(&mut self.r)?;
        let status = status_of(&head);
        let mut resp = Resp {
            status,
            head,
            body: Vec::new(),
        };
        let len: usize = resp
            .header("content-length")
            .map(|v| v.parse().expect("content-length"))
            .unwrap_or(0);
        resp.body = vec![0; len];
        self.r.read_exact(&mut resp.body)?;
        Ok(resp)
    }
}

/// Reads a response head up to and including the empty line.
fn read_head(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("connection closed in the response head: {head:?}"),
            ));
        }
        if line == "\r\n" {
            return Ok(head);
        }
        head.push_str(&line);
    }
}

/// Whether a read error is only a timeout.
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Reads (and discards) until the peer closes; returns how long that took from
/// `since`, or None if it is still open after `within`.
fn wait_closed(s: &mut TcpStream, since: Instant, within: Duration) -> Option<Duration> {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf = [0u8; 4096];
    while since.elapsed() < within {
        match s.read(&mut buf) {
            Ok(0) => return Some(since.elapsed()),
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(_) => return Some(since.elapsed()),
        }
    }
    None
}

/// `GET` with extra header lines, Connection: close.
fn get_with(addr: SocketAddr, host: &str, path: &str, headers: &str) -> String {
    raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n"),
    )
}

fn body_of(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

fn proc_status(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/status")).ok()
}

/// The numbers of a `/proc/PID/status` line such as `Uid:` or `Groups:`.
fn field(status: &str, key: &str) -> Vec<u64> {
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in status:\n{status}"));
    line[key.len() + 1..]
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

fn field_str(status: &str, key: &str) -> String {
    status
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .map(|l| l[key.len() + 1..].trim().to_string())
        .unwrap_or_default()
}

/// Whether the process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match proc_status(pid) {
        Some(st) => !field_str(&st, "State").starts_with('Z'),
        None => false,
    }
}

fn children(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// Every live process whose real, effective, saved or fs uid is `uid`.
fn processes_of(uid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Some(st) = proc_status(pid) else { continue };
        if field_str(&st, "State").starts_with('Z') {
            continue;
        }
        if field(&st, "Uid").contains(&(uid as u64)) {
            out.push(pid);
        }
    }
    out
}

fn kill(pid: u32, sig: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

/// Polls the server's process until it exits; returns its exit status. The
/// child is taken out of `s` (so dropping `s` does not signal a reaped pid).
fn wait_exit(s: &mut Server, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = s.child.as_mut().unwrap().try_wait().unwrap() {
            s.child.take();
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// 1. Privileges
// ---------------------------------------------------------------------------

#[test]
fn front_end_runs_unprivileged_with_no_new_privs() {
    require_root();
    let (fuid, fgid) = ensure_user("berth-tfront");
    let dir = Dir::new();
    let s = start_a(&dir, LIMITS);
    let front = s.front_pid();
    let st = proc_status(front).expect("front end status");
    assert_eq!(
        field(&st, "Uid"),
        vec![fuid as u64; 4],
        "front end uids:\n{st}"
    );
    assert_eq!(
        field(&st, "Gid"),
        vec![fgid as u64; 4],
        "front end gids:\n{st}"
    );
    let groups = field(&st, "Groups");
    assert!(!groups.contains(&0), "front end keeps group 0: {groups:?}");
    assert_eq!(field_str(&st, "NoNewPrivs"), "1", "front end:\n{st}");
    assert_eq!(
        field_str(&st, "CapEff"),
        "0000000000000000",
        "front end has capabilities:\n{st}"
    );
    assert_eq!(field_str(&st, "CapPrm"), "0000000000000000", "{st}");
    // The supervisor stays root (it must bind, open logs and spawn apps).
    let sup = proc_status(s.pid()).expect("supervisor status");
    assert_eq!(field(&sup, "Uid"), vec![0; 4], "supervisor:\n{sup}");
    // And the front end is its only child.
    assert_eq!(children(s.pid()), vec![front]);
    let r = get_raw(s.addr(), "a.test", "/");
    assert_eq!(status_of(&r), 200, "{r}");

    // The supervisor reads no client bytes: while a client is connected, its
    // only TCP sockets are listening ones; the connection is the front end's.
    let mut c = Conn::open(s.addr());
    assert_eq!(c.get("a.test", "/").status, 200);
    let sup_tcp = tcp_sockets_of(s.pid());
    assert!(!sup_tcp.is_empty(), "the supervisor holds the listeners");
    assert!(
        sup_tcp.iter().all(|(_, state)| state == "0A"),
        "the supervisor holds a non-listening TCP socket: {sup_tcp:?}"
    );
    assert!(
        tcp_sockets_of(front).iter().any(|(_, state)| state == "01"),
        "the front end holds the client connection"
    );
}

/// The TCP sockets a process has open: (inode, state in hex: 0A = LISTEN,
/// 01 = ESTABLISHED).
fn tcp_sockets_of(pid: u32) -> Vec<(u64, String)> {
    let inodes: Vec<u64> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let target = fs::read_link(e.path()).ok()?;
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                continue;
            }
            let inode: u64 = cols[9].parse().unwrap_or(0);
            if inode != 0 && inodes.contains(&inode) {
                out.push((inode, cols[3].to_string()));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// 2, 3. Reload
// ---------------------------------------------------------------------------

#[test]
fn reload_applies_a_good_config_and_refuses_a_bad_one() {
    require_root();
    let dir = Dir::new();
    dir.write("a1/index.html", "one\n");
    dir.write("a2/index.html", "two\n");
    let (server, port, tls_port) = server_block(
        &dir,
        r#"header_timeout = "2s"
keepalive_timeout = "20s"
drain_timeout = "5s""#,
    );
    let first = format!("{server}{}", tenant_a(&dir, "a1", r#""a.test""#));
    let second = format!(
        "{server}{}",
        tenant_a(&dir, "a2", r#""a.test", "new.a.test""#)
    );
    let mut s = Server::start(&dir, &first, port, tls_port);

    // A keep-alive connection opened before the reload.
    let mut conn = Conn::open(s.addr());
    let r = conn.get("a.test", "/");
    assert_eq!((r.status, r.text().as_str()), (200, "one\n"), "{r:?}");
    let r = get_raw(s.addr(), "new.a.test", "/");
    assert_eq!(status_of(&r), 421, "{r}");

    dir.write("berth.toml", &second);
    s.signal(Signal::SIGHUP);
    assert!(
        s.wait_output(
            "serving configuration generation 2",
            Duration::from_secs(10)
        ),
        "reload not applied:\n{}",
        s.output()
    );
    let r = get_raw(s.addr(), "a.test", "/");
    assert_eq!(body_of(&r), "two\n", "new connection after reload: {r}");
    let r = get_raw(s.addr(), "new.a.test", "/");
    assert_eq!(status_of(&r), 200, "added host: {r}");
    assert_eq!(body_of(&r), "two\n");
    // The old connection is still open and its next request sees the new config.
    let r = conn.get("a.test", "/");
    assert_eq!((r.status, r.text().as_str()), (200, "two\n"), "{r:?}");

    // A bad config: nothing changes, and berth says why.
    let bad = format!(
        "{server}bogus_key = 1\n{}",
        tenant_a(&dir, "a1", r#""a.test""#)
    );
    let line = line_of(&bad, "bogus_key");
    dir.write("berth.toml", &bad);
    s.signal(Signal::SIGHUP);
    assert!(
        s.wait_output("reload refused", Duration::from_secs(10)),
        "no refusal:\n{}",
        s.output()
    );
    let expected = format!("{}:{line}: server.bogus_key:", s.config.display());
    assert!(
        s.output().contains(&expected),
        "output lacks {expected:?}:\n{}",
        s.output()
    );
    assert!(!s.output().contains("generation 3"), "{}", s.output());
    let r = get_raw(s.addr(), "a.test", "/");
    assert_eq!(body_of(&r), "two\n", "old config must keep serving: {r}");
    let r = get_raw(s.addr(), "new.a.test", "/");
    assert_eq!(status_of(&r), 200, "{r}");
    let r = conn.get("new.a.test", "/");
    assert_eq!((r.status, r.text().as_str()), (200, "two\n"), "{r:?}");
    assert_eq!(s.stop(), Some(0), "{}", s.output());
}

#[test]
fn reload_adds_a_listener() {
    require_root();
    let dir = Dir::new();
    dir.write("a/index.html", "site A\n");
    let (server, port, tls_port) = server_block(&dir, LIMITS);
    let tenant = tenant_a(&dir, "a", r#""a.test""#);
    let mut s = Server::start(&dir, &format!("{server}{tenant}"), port, tls_port);
    let port2 = free_port();
    let addr2 = SocketAddr::from(([127, 0, 0, 1], port2));
    assert!(try_raw(addr2, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").is_err());

    let old = format!("\nlisten = [\"127.0.0.1:{port}\"]\n");
    assert!(server.contains(&old), "{server}");
    let server2 = server.replace(
        &old,
        &format!("\nlisten = [\"127.0.0.1:{port}\", \"127.0.0.1:{port2}\"]\n"),
    );
    dir.write("berth.toml", format!("{server2}{tenant}"));
    s.signal(Signal::SIGHUP);
    assert!(
        s.wait_output(
            "serving configuration generation 2",
            Duration::from_secs(10)
        ),
        "{}",
        s.output()
    );
    let r = get_raw(addr2, "a.test", "/");
    assert_eq!(status_of(&r), 200, "new listener: {r}");
    assert_eq!(body_of(&r), "site A\n");
    let r = get_raw(s.addr(), "a.test", "/");
    assert_eq!(status_of(&r), 200, "old listener: {r}");
    assert_eq!(s.stop(), Some(0), "{}", s.output());
}

/// A reload whose new listener cannot be bound changes nothing.
#[test]
fn reload_with_an_unbindable_listener_is_refused() {
    require_root();
    let dir = Dir::new();
    dir.write("a1/index.html", "one\n");
    dir.write("a2/index.html", "two\n");
    let (server, port, tls_port) = server_block(&dir, LIMITS);
    let mut s = Server::start(
        &dir,
        &format!("{server}{}", tenant_a(&dir, "a1", r#""a.test""#)),
        port,
        tls_port,
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port2 = taken.local_addr().unwrap().port();
    let old = format!("\nlisten = [\"127.0.0.1:{port}\"]\n");
    let server2 = server.replace(
        &old,
        &format!("\nlisten = [\"127.0.0.1:{port}\", \"127.0.0.1:{port2}\"]\n"),
    );
    dir.write(
        "berth.toml",
        format!("{server2}{}", tenant_a(&dir, "a2", r#""a.test""#)),
    );
    s.signal(Signal::SIGHUP);
    assert!(
        s.wait_output("reload refused", Duration::from_secs(10)),
        "{}",
        s.output()
    );
    assert!(
        s.output().contains(&format!("127.0.0.1:{port2}")),
        "{}",
        s.output()
    );
    let r = get_raw(s.addr(), "a.test", "/");
    assert_eq!(
        body_of(&r),
        "one\n",
        "the old config must keep serving: {r}"
    );
    assert_eq!(s.stop(), Some(0), "{}", s.output());
}

// ---------------------------------------------------------------------------
// 4. SIGTERM drains
// ---------------------------------------------------------------------------

const BIG: usize = 64 << 20;

fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

#[test]
fn sigterm_drains_a_slow_download_and_exits_zero() {
    require_root();
    let (duid, _) = ensure_user("berth-tdrain");
    let dir = Dir::new();
    dir.write("a/index.html", "site A\n");
    dir.write("a/big.bin", (0..BIG).map(pattern).collect::<Vec<u8>>());
    let (server, port, tls_port) = server_block(
        &dir,
        r#"header_timeout = "1s"
keepalive_timeout = "2s"
drain_timeout = "30s""#,
    );
    // A front-end user of its own, so that "no process of it remains" is exact.
    let server = server.replace("user = \"berth-tfront\"", "user = \"berth-tdrain\"");
    let config = format!("{server}{}", tenant_a(&dir, "a", r#""a.test""#));
    let mut s = Server::start(&dir, &config, port, tls_port);
    let front = s.front_pid();
    assert_eq!(field(&proc_status(front).unwrap(), "Uid")[0], duid as u64);

    let addr = s.addr();
    let (started_tx, started_rx) = mpsc::channel();
    let download = std::thread::spawn(move || -> Result<(u16, usize, usize), String> {
        let c = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        (&c).write_all(b"GET /big.bin HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut r = BufReader::with_capacity(1 << 16, c);
        let head = read_head(&mut r).map_err(|e| e.to_string())?;
        let status = status_of(&head);
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().unwrap())
            })
            .ok_or(format!("no content-length: {head}"))?;
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 20];
        let mut signalled = false;
        while got < len {
            // About 1 MiB, then a pause: ~64 pauses of 50 ms.
            let want = (len - got).min(buf.len());
            let mut n = 0;
            while n < want {
                match r.read(&mut buf[n..want]) {
                    Ok(0) => return Ok((status, got + n, len)),
                    Ok(k) => n += k,
                    Err(e) => return Err(format!("after {} bytes: {e}", got + n)),
                }
            }
            for (i, b) in buf[..n].iter().enumerate() {
                if *b != pattern(got + i) {
                    return Err(format!("wrong byte at {}", got + i));
                }
            }
            got += n;
            if !signalled {
                started_tx.send(()).unwrap();
                signalled = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Nothing after the body, and the server closes the connection.
        let mut rest = Vec::new();
        let _ = r.read_to_end(&mut rest);
        if !rest.is_empty() {
            return Err(format!("{} bytes after the body", rest.len()));
        }
        Ok((status, got, len))
    });
    started_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("download did not start");
    s.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));

    // New connections are no longer served.
    if let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
        c.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        assert!(
            !String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"),
            "a new connection was served after SIGTERM"
        );
    }

    let result = download.join().unwrap();
    assert_eq!(
        result,
        Ok((200, BIG, BIG)),
        "the download in flight must complete:\n{}",
        s.output()
    );
    let st = wait_exit(&mut s, Duration::from_secs(30)).expect("berth did not exit");
    assert_eq!(st.code(), Some(0), "exit status {st}:\n{}", s.output());
    assert!(
        eventually(Duration::from_secs(3), || processes_of(duid).is_empty()),
        "processes of berth-tdrain remain: {:?}",
        processes_of(duid)
    );
    assert!(!alive(front));
}

// ---------------------------------------------------------------------------
// 5. Crashes
// ---------------------------------------------------------------------------

#[test]
fn front_end_is_restarted_and_exits_with_the_supervisor() {
    require_root();
    let dir = Dir::new();
    let s = start_a(&dir, LIMITS);
    let front1 = s.front_pid();
    kill(front1, Signal::SIGKILL);
    let mut front2 = 0;
    assert!(
        eventually(Duration::from_secs(10), || {
            front2 = children(s.pid())
                .into_iter()
                .find(|&p| p != front1 && alive(p))
                .unwrap_or(0);
            front2 != 0
        }),
        "front end not restarted:\n{}",
        s.output()
    );
    assert!(
        eventually(Duration::from_secs(5), || {
            try_raw(
                s.addr(),
                b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
            )
            .map(|r| r.starts_with("HTTP/1.1 200"))
            .unwrap_or(false)
        }),
        "requests do not work after the restart:\n{}",
        s.output()
    );
    assert!(!alive(front1));

    // The supervisor dies: its front end must not live on.
    s.signal(Signal::SIGKILL);
    assert!(
        eventually(Duration::from_secs(5), || !alive(front2)),
        "front end {front2} outlived its supervisor:\n{}",
        s.output()
    );
}

/// Leaves a sleep running in its process group, notes its pid, and exits a
/// second later.
const LEAVES_A_CHILD_APP: &str = "#!/bin/sh
sleep 300 </dev/null >/dev/null 2>&1 &
echo $! >> \"$HOME/left.pids\"
exec sleep 1
";

#[test]
fn app_process_leaves_nothing_running_in_its_group_when_it_exits() {
    use common::apps::{Home, app_table, tenant_site};
    require_root();
    let dir = Dir::new();
    let user = "berth-tgroup";
    let home = Home::new(&dir, "home/tg", user, ensure_user(user));
    home.write("bin/app.sh", LEAVES_A_CHILD_APP, 0o755);
    home.own();
    let mut config = tenant_site("tg", &home, "g.test");
    config.push_str(&app_table(
        "tg",
        "leaves",
        "fastcgi",
        &home.path,
        &[home.join("bin/app.sh").to_str().unwrap()],
        "min_processes = 1",
    ));
    let (server, port, tls_port) = server_block(&dir, LIMITS);
    // Processes are found by the pid the app reports.
    let s = Server::start(
        &dir,
        &format!("{server}{config}{HOST_PIDS}"),
        port,
        tls_port,
    );
    let mut first = 0;
    assert!(
        eventually(Duration::from_secs(10), || {
            first = fs::read_to_string(home.join("left.pids"))
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.parse().ok()))
                .unwrap_or(0);
            first != 0
        }),
        "the app did not start:\n{}",
        s.output()
    );
    // The app exits after a second; its group is killed with it.
    assert!(
        eventually(Duration::from_secs(15), || !alive(first)),
        "sleep {first}, left by an app process that exited, still runs:\n{}",
        s.output()
    );
}

/// Prints its soft and hard RLIMIT_NOFILE.
const LIMITS_CGI: &str = "#!/bin/sh
printf 'Content-Type: text/plain\\n\\n%s %s\\n' \"$(ulimit -Sn)\" \"$(ulimit -Hn)\"
";

/// The soft and hard "Max open files" of `/proc/PID/limits`.
fn open_files_of(pid: u32) -> String {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace()
        .skip(3)
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn apps_get_the_tenants_open_files_not_berths_limit() {
    use common::apps::{Home, app_table, get_host, tenant_site};
    require_root();
    let dir = Dir::new();
    let mut config = String::from("\n[defaults.limits]\nopen_files = 2048\n");
    let mut homes = Vec::new();
    for (t, user, own) in [
        (
            "l1",
            "berth-tlim1",
            "\n[tenant.l1.limits]\nopen_files = 512\n",
        ),
        ("l2", "berth-tlim2", ""),
    ] {
        let home = Home::new(&dir, &format!("home/{t}"), user, ensure_user(user));
        home.write("public/cgi/limits.cgi", LIMITS_CGI, 0o755);
        home.write("public/x.php", "<?php echo \"ok\\n\";\n", 0o644);
        home.own();
        config.push_str(&tenant_site(t, &home, &format!("{t}.test")));
        config.push_str(&format!(
            "\n[[tenant.{t}.site.route]]\npath = \"/cgi/\"\napp = \"cgi\"\nextensions = [\"cgi\"]\n\n[[tenant.{t}.site.route]]\npath = \"/\"\napp = \"php\"\nextensions = [\"php\"]\n\n[tenant.{t}.app.cgi]\nprotocol = \"cgi\"\n"
        ));
        config.push_str(&app_table(
            t,
            "php",
            "fastcgi",
            &home.public(),
            &["/usr/bin/php-cgi"],
            "",
        ));
        config.push_str(own);
        homes.push(home);
    }
    let (server, port, tls_port) = server_block(&dir, LIMITS);
    // Processes are found by the pid the app reports.
    let s = Server::start(
        &dir,
        &format!("{server}{config}{HOST_PIDS}"),
        port,
        tls_port,
    );
    // berth's own limit, which its children used to inherit: set to a
    // value of its own (lowering needs no privilege).
    let berth = rustix::process::Pid::from_raw(s.pid() as i32);
    let own = rustix::process::Rlimit {
        current: Some(3000),
        maximum: Some(3000),
    };
    rustix::process::prlimit(berth, rustix::process::Resource::Nofile, own).unwrap();

    for (t, want) in [("l1", "512 512"), ("l2", "2048 2048")] {
        let r = get_host(s.addr(), &format!("{t}.test"), "/cgi/limits.cgi");
        assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
        assert_eq!(r.text().trim(), want, "CGI script of {t}");
        let r = get_host(s.addr(), &format!("{t}.test"), "/x.php");
        assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
        let (uid, _) = ensure_user(&format!("berth-tlim{}", &t[1..]));
        let php: Vec<u32> = children(s.pid())
            .into_iter()
            .filter(|&p| proc_status(p).is_some_and(|st| field(&st, "Uid")[0] == uid as u64))
            .collect();
        assert_eq!(php.len(), 1, "{php:?}");
        assert_eq!(open_files_of(php[0]), want, "php-cgi of {t}");
    }
}

// ---------------------------------------------------------------------------
// 6, 7. Slow and idle clients
// ---------------------------------------------------------------------------

#[test]
fn slowloris_connections_are_closed_and_others_keep_working() {
    require_root();
    let dir = Dir::new();
    let s = start_a(
        &dir,
        r#"header_timeout = "1s"
keepalive_timeout = "2s"
drain_timeout = "5s""#,
    );
    let addr = s.addr();
    let slow: Vec<_> = (0..20)
        .map(|_| {
            std::thread::spawn(move || -> Option<Duration> {
                let start = Instant::now();
                let mut c = TcpStream::connect(addr).expect("connect");
                c.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n").unwrap();
                c.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
                let header = b"X-Slow: ";
                let mut buf = [0u8; 1024];
                for i in 0.. {
                    if start.elapsed() > Duration::from_secs(8) {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(300));
                    let byte = header.get(i).copied().unwrap_or(b'a');
                    if c.write_all(&[byte]).is_err() {
                        return Some(start.elapsed());
                    }
                    match c.read(&mut buf) {
                        Ok(0) => return Some(start.elapsed()),
                        Ok(_) => {}
                        Err(e) if is_timeout(&e) => {}
                        Err(_) => return Some(start.elapsed()),
                    }
                }
                None
            })
        })
        .collect();
    // Meanwhile normal clients are served promptly.
    let normal = std::thread::spawn(move || {
        let mut worst = Duration::ZERO;
        let mut n = 0;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            let t = Instant::now();
            let r = get_raw(addr, "a.test", "/");
            worst = worst.max(t.elapsed());
            assert_eq!(status_of(&r), 200, "{r}");
            n += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        (n, worst)
    });
    // A connection that sends nothing at all.
    let idle_start = Instant::now();
    let mut idle = TcpStream::connect(addr).unwrap();
    let idle_closed = wait_closed(&mut idle, idle_start, Duration::from_secs(6));

    let (n, worst) = normal.join().unwrap();
    assert!(n >= 10, "only {n} normal requests in 3 s");
    assert!(
        worst < Duration::from_millis(1500),
        "a normal request took {worst:?}"
    );
    for (i, t) in slow.into_iter().enumerate() {
        let t = t.join().unwrap();
        assert!(
            t.is_some_and(|t| t <= Duration::from_secs(4)),
            "slow connection {i} not closed in time: {t:?}"
        );
    }
    let t = idle_closed.expect("a silent connection is never closed");
    assert!(
        t >= Duration::from_millis(500) && t <= Duration::from_millis(3500),
        "silent connection closed after {t:?} (header_timeout 1s)"
    );
}

/// Makes one request on a keep-alive connection and measures how long the
/// server keeps it open (None: still open after 8 s). Measured from before the
/// request, so a slow test machine can only lengthen it.
fn idle_close_after(s: &Server) -> Option<Duration> {
    let mut c = Conn::open(s.addr());
    let sent = Instant::now();
    let r = c.get("a.test", "/");
    assert_eq!(r.status, 200);
    wait_closed(c.stream(), sent, Duration::from_secs(8))
}

#[test]
fn idle_keepalive_connection_is_closed() {
    require_root();
    let dir = Dir::new();
    let s = start_a(
        &dir,
        r#"header_timeout = "1s"
keepalive_timeout = "1s"
drain_timeout = "5s""#,
    );
    let t = idle_close_after(&s).expect("idle keep-alive connection never closed");
    assert!(
        t >= Duration::from_millis(400) && t <= Duration::from_millis(3500),
        "closed after {t:?} (keepalive_timeout 1s)"
    );
}

/// keepalive_timeout shorter than header_timeout: the idle connection must go
/// after keepalive_timeout, not after header_timeout.
#[test]
fn short_keepalive_timeout_is_honoured() {
    require_root();
    let dir = Dir::new();
    let s = start_a(
        &dir,
        r#"header_timeout = "5s"
keepalive_timeout = "1s"
drain_timeout = "5s""#,
    );
    let t = idle_close_after(&s).expect("idle keep-alive connection never closed");
    assert!(
        t >= Duration::from_millis(400) && t <= Duration::from_millis(3500),
        "closed after {t:?} (keepalive_timeout 1s, header_timeout 5s)"
    );
}

/// keepalive_timeout longer than header_timeout: an idle keep-alive connection
/// stays usable for keepalive_timeout (header_timeout is for request heads).
#[test]
fn long_keepalive_timeout_is_honoured() {
    require_root();
    let dir = Dir::new();
    let s = start_a(
        &dir,
        r#"header_timeout = "1s"
keepalive_timeout = "4s"
drain_timeout = "5s""#,
    );
    let mut c = Conn::open(s.addr());
    assert_eq!(c.get("a.test", "/").status, 200);
    std::thread::sleep(Duration::from_millis(2500));
    // Measured from before the request is sent: the server's 4 s start when it
    // has answered, which is later, so a busy test machine can only make the
    // measured time longer, never shorter.
    let sent = Instant::now();
    let second = c
        .send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .and_then(|_| c.response());
    assert!(
        matches!(&second, Ok(r) if r.status == 200),
        "a keep-alive connection idle for 2.5 s (keepalive_timeout 4s, header_timeout 1s) \
         was closed: {second:?}"
    );
    let t = wait_closed(c.stream(), sent, Duration::from_secs(9)).expect("never closed");
    assert!(
        t >= Duration::from_millis(3900),
        "closed {t:?} after the second request\n{}",
        s.output()
    );
}

// ---------------------------------------------------------------------------
// 8, 9. Header limits and the connection cap
// ---------------------------------------------------------------------------

/// Sends `req` (ignoring write errors: the server may close early) and reads
/// what comes back until close or 5 s.
fn send_hostile(addr: SocketAddr, req: &[u8]) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = c.write_all(req);
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn oversized_heads_get_431() {
    require_root();
    let dir = Dir::new();
    let s = start_a(&dir, &format!("{LIMITS}\nmax_headers = 100"));
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(64 << 10)
    );
    let r = send_hostile(s.addr(), big.as_bytes());
    assert!(
        r.is_empty() || status_of(&r) == 431,
        "64 KiB header: {}",
        &r[..r.len().min(300)]
    );
    let mut many = String::from("GET / HTTP/1.1\r\nHost: a.test\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("Connection: close\r\n\r\n");
    let r = send_hostile(s.addr(), many.as_bytes());
    assert!(!r.is_empty(), "200 headers: no answer");
    assert_eq!(status_of(&r), 431, "200 headers: {r}");
    // 99 headers are fine.
    let mut ok = String::from("GET / HTTP/1.1\r\nHost: a.test\r\n");
    for i in 0..97 {
        ok.push_str(&format!("X-H{i}: v\r\n"));
    }
    ok.push_str("Connection: close\r\n\r\n");
    let r = send_hostile(s.addr(), ok.as_bytes());
    assert_eq!(status_of(&r), 200, "99 headers: {r}");
    let r = get_raw(s.addr(), "a.test", "/");
    assert_eq!(status_of(&r), 200, "server still answers: {r}");
}

/// With max_connections = 5: five open keep-alive connections are served; a
/// sixth is served too, by closing the one of them idle longest once they
/// have been idle for a moment (conn.rs), and the other four stay usable.
/// (tests/fairness.rs: requests in flight are never closed so.)
fn check_connection_cap(dir: &Dir, tls_listener: bool) {
    dir.write("a/index.html", "site A\n");
    let (server, port, tls_port) = server_block(
        dir,
        r#"header_timeout = "10s"
keepalive_timeout = "30s"
drain_timeout = "5s"
max_connections = 5"#,
    );
    let server: String = if tls_listener {
        server
    } else {
        server
            .lines()
            .filter(|l| !l.starts_with("tls_listen"))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let config = format!("{server}{}", tenant_a(dir, "a", r#""a.test""#));
    let s = Server::start(dir, &config, port, tls_port);
    let mut held: Vec<Conn> = Vec::new();
    for i in 0..5 {
        let mut c = Conn::open(s.addr());
        c.send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
        c.stream()
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let r = c.response();
        assert!(
            matches!(&r, Ok(r) if r.status == 200),
            "connection {} of max_connections = 5 (tls_listen: {tls_listener}) not served: {r:?}",
            i + 1
        );
        held.push(c);
    }
    let mut sixth = Conn::open(s.addr());
    sixth
        .send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    let r = sixth.response().expect("6th connection answered");
    assert_eq!(r.status, 200);
    // Exactly one of the five was closed: the cap counts every connection,
    // whichever listener and worker took it.
    let mut closed = 0;
    for c in &mut held {
        if wait_closed(c.stream(), Instant::now(), Duration::from_millis(300)).is_some() {
            closed += 1;
        } else {
            c.stream()
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            assert_eq!(c.get("a.test", "/").status, 200);
        }
    }
    assert_eq!(
        closed, 1,
        "one idle connection makes room (tls_listen: {tls_listener})"
    );
}

#[test]
fn max_connections_with_one_listener() {
    require_root();
    check_connection_cap(&Dir::new(), false);
}

/// The usual setup has a plain and a TLS listener; the cap counts client
/// connections, not listeners.
#[test]
fn max_connections_with_plain_and_tls_listeners() {
    require_root();
    check_connection_cap(&Dir::new(), true);
}

// ---------------------------------------------------------------------------
// 10, 11. Access logs
// ---------------------------------------------------------------------------

/// Two tenants: ta (a.test, www.a.test) and tb (b.test).
fn start_two(dir: &Dir) -> Server {
    let (uid_b, gid_b) = ensure_user("berth-tb");
    dir.write("a/index.html", "site A\n");
    dir.write("a/path.html", "path A\n");
    dir.write("b/index.html", "site B\n");
    dir.chown("b", uid_b, gid_b);
    let (server, port, tls_port) = server_block(dir, LIMITS);
    let config = format!(
        r#"{server}{}
[tenant.tb]
user = "berth-tb"

[[tenant.tb.site]]
hosts = ["b.test"]
root = "{b}"
"#,
        tenant_a(dir, "a", r#""a.test", "www.a.test""#),
        b = dir.join("b").display(),
    );
    Server::start(dir, &config, port, tls_port)
}

fn wait_log(s: &Server, tenant: &str, needle: &str) -> String {
    let mut log = String::new();
    eventually(Duration::from_secs(5), || {
        log = s.access_log(tenant);
        log.contains(needle)
    });
    assert!(
        log.contains(needle),
        "{tenant}'s log lacks {needle:?}:\n{log}"
    );
    log
}

/// Checks `vhost 127.0.0.1 - user [dd/Mon/yyyy:hh:mm:ss +0000] "REQ" STATUS BYTES "REF" "UA" MICROS`.
fn assert_log_line(line: &str, vhost: &str, user: &str, rest: &str) {
    let prefix = format!("{vhost} 127.0.0.1 - {user} [");
    assert!(
        line.starts_with(&prefix),
        "line {line:?} should start {prefix:?}"
    );
    let after = &line[prefix.len()..];
    let (time, tail) = after.split_once("] ").unwrap_or_else(|| panic!("{line:?}"));
    assert_eq!(time.len(), 26, "time {time:?}");
    assert!(time.ends_with(" +0000"), "time {time:?}");
    assert!(
        tail.starts_with(rest),
        "line {line:?}: expected {rest:?} after the time"
    );
    let micros = &tail[rest.len()..];
    assert!(
        !micros.is_empty() && micros.bytes().all(|b| b.is_ascii_digit()),
        "no duration at the end of {line:?}"
    );
}

#[test]
fn access_log_lines_per_tenant() {
    require_root();
    let dir = Dir::new();
    let s = start_two(&dir);
    let r = get_with(
        s.addr(),
        "www.a.test",
        "/path.html?x=1",
        "Referer: http://ref.test/page\r\nUser-Agent: berth-test/1.0 (lifecycle)\r\n",
    );
    assert_eq!(status_of(&r), 200, "{r}");
    let r = get_with(s.addr(), "b.test", "/", "User-Agent: b-agent\r\n");
    assert_eq!(status_of(&r), 200, "{r}");
    let r = get_with(s.addr(), "b.test", "/missing", "");
    assert_eq!(status_of(&r), 404, "{r}");

    let a = wait_log(&s, "ta", "berth-test/1.0");
    let b = wait_log(&s, "tb", "/missing");
    let line = a.lines().find(|l| l.contains("berth-test/1.0")).unwrap();
    assert_log_line(
        line,
        "a.test",
        "-",
        r#""GET /path.html?x=1 HTTP/1.1" 200 7 "http://ref.test/page" "berth-test/1.0 (lifecycle)" "#,
    );
    let line = b.lines().find(|l| l.contains("b-agent")).unwrap();
    assert_log_line(
        line,
        "b.test",
        "-",
        r#""GET / HTTP/1.1" 200 7 "-" "b-agent" "#,
    );
    let line = b.lines().find(|l| l.contains("/missing")).unwrap();
    assert!(line.contains(r#""GET /missing HTTP/1.1" 404 "#), "{line}");

    // An unknown host is logged in no tenant's log.
    let before = (s.access_log("ta"), s.access_log("tb"));
    let r = get_with(
        s.addr(),
        "unknown.test",
        "/",
        "User-Agent: nobody-agent\r\n",
    );
    assert_eq!(status_of(&r), 421, "{r}");
    let r = get_with(s.addr(), "a.test", "/after", "");
    assert_eq!(status_of(&r), 404, "{r}");
    let a = wait_log(&s, "ta", "/after");
    assert!(
        !a.contains("nobody-agent") && !a.contains("unknown.test"),
        "{a}"
    );
    assert_eq!(s.access_log("tb"), before.1);
    assert!(a.starts_with(&before.0));

    // Tenant A's lines never appear in B's log and vice versa.
    for l in a.lines() {
        assert!(l.starts_with("a.test "), "foreign line in ta's log: {l}");
    }
    for l in s.access_log("tb").lines() {
        assert!(l.starts_with("b.test "), "foreign line in tb's log: {l}");
    }
    // Nothing else was created in the log directory but the tenants' folders
    // (and the control socket's audit log).
    let mut names: Vec<String> = fs::read_dir(&s.log_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["audit.log", "error.log", "ta", "tb"]);
}

#[test]
fn sigusr1_reopens_access_logs() {
    require_root();
    let (_, gid_a) = ensure_user("berth-ta");
    let dir = Dir::new();
    let s = start_a(&dir, LIMITS);
    let r = get_raw(s.addr(), "a.test", "/first");
    assert_eq!(status_of(&r), 404);
    wait_log(&s, "ta", "/first");
    let log = s.log_dir.join("ta/access.log");
    let old = s.log_dir.join("ta/access.log.1");
    fs::rename(&log, &old).unwrap();
    let old_len = fs::metadata(&old).unwrap().len();

    s.signal(Signal::SIGUSR1);
    assert!(
        eventually(Duration::from_secs(10), || s.output().lines().any(|l| l
            .starts_with("front:")
            && l.contains("log files reopened"))),
        "the front end did not reopen its logs:\n{}",
        s.output()
    );
    assert!(log.exists(), "no new access.log");
    let r = get_raw(s.addr(), "a.test", "/second");
    assert_eq!(status_of(&r), 404);
    let new = wait_log(&s, "ta", "/second");
    assert!(!new.contains("/first"), "{new}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        fs::metadata(&old).unwrap().len(),
        old_len,
        "the old file grew"
    );
    assert!(!fs::read_to_string(&old).unwrap().contains("/second"));
    let m = fs::metadata(&log).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, gid_a, 0o640));
}

/// Someone (not a tenant: the directory is root's) replaces access.log by a
/// symlink: SIGUSR1 must not follow it, and the old descriptor keeps working.
#[test]
fn reopen_does_not_follow_a_planted_symlink() {
    require_root();
    let dir = Dir::new();
    let s = start_a(&dir, LIMITS);
    let target = dir.write("target.txt", "precious\n");
    let log = s.log_dir.join("ta/access.log");
    fs::rename(&log, s.log_dir.join("ta/access.log.1")).unwrap();
    std::os::unix::fs::symlink(&target, &log).unwrap();
    s.signal(Signal::SIGUSR1);
    assert!(
        s.wait_output("cannot reopen log files", Duration::from_secs(10)),
        "no refusal:\n{}",
        s.output()
    );
    let r = get_raw(s.addr(), "a.test", "/after-reopen");
    assert_eq!(status_of(&r), 404);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
    assert!(
        eventually(Duration::from_secs(5), || fs::read_to_string(
            s.log_dir.join("ta/access.log.1")
        )
        .unwrap()
        .contains("/after-reopen")),
        "the old log should keep receiving lines"
    );
}

// ---------------------------------------------------------------------------
// 12. Invariant 7: log files are never opened through symlinks
// ---------------------------------------------------------------------------

/// Starts berth with a config for tenant `ta` and expects it to refuse to
/// start; returns its output.
fn expect_refusal(dir: &Dir, what: &str) -> String {
    dir.write("a/index.html", "site A\n");
    let (server, port, tls_port) = server_block(dir, LIMITS);
    let config = format!("{server}{}", tenant_a(dir, "a", r#""a.test""#));
    let path = dir.write("berth.toml", config);
    let mut s = Server::spawn(&path, port, tls_port, dir.join("log"));
    let st = wait_exit(&mut s, Duration::from_secs(15))
        .unwrap_or_else(|| panic!("berth started despite {what}:\n{}", s.output()));
    // Let the output threads catch up.
    std::thread::sleep(Duration::from_millis(200));
    assert!(!st.success(), "{what}: exit {st}:\n{}", s.output());
    assert!(
        try_raw(s.addr(), b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").is_err(),
        "{what}: something answers"
    );
    s.output()
}

#[test]
fn access_log_symlink_is_refused() {
    require_root();
    let dir = Dir::new();
    let target = dir.write("target.txt", "precious\n");
    fs::create_dir_all(dir.join("log/ta")).unwrap();
    dir.symlink(&target, "log/ta/access.log");
    let before = fs::metadata(&target).unwrap();
    let out = expect_refusal(&dir, "an access.log symlink");
    let name = dir.join("log/ta/access.log");
    assert!(
        out.contains(&name.display().to_string()),
        "the message must name {}:\n{out}",
        name.display()
    );
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
    let after = fs::metadata(&target).unwrap();
    assert_eq!(
        (after.uid(), after.gid(), after.mode()),
        (before.uid(), before.gid(), before.mode())
    );
    assert!(
        fs::symlink_metadata(&name)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the symlink was replaced"
    );
}

#[test]
fn access_log_hard_link_is_refused() {
    require_root();
    let dir = Dir::new();
    let target = dir.write("target.txt", "precious\n");
    fs::create_dir_all(dir.join("log/ta")).unwrap();
    fs::hard_link(&target, dir.join("log/ta/access.log")).unwrap();
    let out = expect_refusal(&dir, "a hard-linked access.log");
    assert!(out.contains("access.log"), "{out}");
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
}

#[test]
fn tenant_owned_log_directory_is_refused() {
    require_root();
    let (uid_a, gid_a) = ensure_user("berth-ta");
    let dir = Dir::new();
    dir.mkdir("log/ta");
    dir.chown("log/ta", uid_a, gid_a);
    let out = expect_refusal(&dir, "a log directory owned by the tenant");
    let name = dir.join("log/ta");
    assert!(
        out.contains(&name.display().to_string()),
        "the message must name {}:\n{out}",
        name.display()
    );
    assert!(
        !dir.join("log/ta/access.log").exists(),
        "berth wrote into the tenant's directory"
    );
}

#[test]
fn symlinked_log_directory_is_refused() {
    require_root();
    let dir = Dir::new();
    dir.mkdir("elsewhere");
    dir.mkdir("log");
    dir.symlink(dir.join("elsewhere"), "log/ta");
    let out = expect_refusal(&dir, "a symlinked tenant log directory");
    assert!(out.contains("log/ta"), "{out}");
    assert!(!dir.join("elsewhere/access.log").exists());
}

/// Starts berth with `state_dir` and `log_dir` as given (relative to `dir`)
/// and expects it to refuse to start; returns its output.
fn expect_dir_refusal(dir: &Dir, state: &str, log: &str, what: &str) -> String {
    dir.write("a/index.html", "site A\n");
    let port = free_port();
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\nuser = \"berth-tfront\"\nstate_dir = \"{}\"\nlog_dir = \"{}\"\n{LIMITS}\n{}",
        dir.join(state).display(),
        dir.join(log).display(),
        tenant_a(dir, "a", r#""a.test""#)
    );
    ensure_user("berth-tfront");
    let path = dir.write("berth.toml", config);
    let mut s = Server::spawn(&path, port, free_port(), dir.join(log));
    let st = wait_exit(&mut s, Duration::from_secs(15))
        .unwrap_or_else(|| panic!("berth started despite {what}:\n{}", s.output()));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!st.success(), "{what}: exit {st}:\n{}", s.output());
    s.output()
}

#[test]
fn symlink_in_a_parent_of_state_dir_is_refused() {
    require_root();
    let dir = Dir::new();
    dir.mkdir("elsewhere");
    dir.symlink(dir.join("elsewhere"), "link");
    let out = expect_dir_refusal(&dir, "link/state", "log", "a symlink above state_dir");
    let link = dir.join("link").display().to_string();
    assert!(
        out.contains(&format!("{link} is a symbolic link")),
        "the message must name {link}:\n{out}"
    );
    assert!(
        !dir.join("elsewhere/state").exists(),
        "berth created state_dir through the link"
    );
}

#[test]
fn symlink_in_a_parent_of_log_dir_is_refused() {
    require_root();
    let dir = Dir::new();
    dir.mkdir("elsewhere/logs");
    dir.symlink("elsewhere", "link");
    let out = expect_dir_refusal(&dir, "state", "link/logs/berth", "a symlink above log_dir");
    let link = dir.join("link").display().to_string();
    assert!(
        out.contains(&format!("{link} is a symbolic link")),
        "the message must name {link}:\n{out}"
    );
    assert!(!dir.join("elsewhere/logs/berth").exists());
}

#[test]
fn log_files_are_root_owned_and_group_readable_by_the_tenant() {
    require_root();
    let (_, gid_a) = ensure_user("berth-ta");
    let dir = Dir::new();
    let s = start_a(&dir, LIMITS);
    let m = fs::metadata(s.log_dir.join("ta/access.log")).unwrap();
    assert_eq!(
        (m.uid(), m.gid(), m.mode() & 0o7777),
        (0, gid_a, 0o640),
        "access.log owner/group/mode"
    );
    let d = fs::symlink_metadata(s.log_dir.join("ta")).unwrap();
    assert!(d.is_dir());
    assert_eq!(d.uid(), 0, "tenant log directory owner");
    assert_eq!(
        d.mode() & 0o022,
        0,
        "tenant log directory is writable by others"
    );
    let e = fs::metadata(s.log_dir.join("error.log")).unwrap();
    assert_eq!(e.uid(), 0);
    assert_eq!(e.mode() & 0o002, 0, "error.log is world-writable");
}

// ---------------------------------------------------------------------------
// 13. Not root
// ---------------------------------------------------------------------------

/// A process that is killed when dropped, with its output collected.
struct Running {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Running {
    fn spawn(cmd: &mut Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let output = Arc::new(Mutex::new(String::new()));
        let out: Vec<Box<dyn Read + Send>> = vec![
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for stream in out {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let mut o = output.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        Running { child, output }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn runs_as_a_normal_user_without_switching_users() {
    require_root();
    let (uid, gid) = ensure_user("berth-tfront");
    let dir = Dir::new();
    dir.write("site/index.html", "as myself\n");
    dir.chown("site", uid, gid);
    for d in ["state", "log"] {
        dir.mkdir(d);
        dir.chown(d, uid, gid);
    }
    let (server, port, _) = server_block(&dir, LIMITS);
    let config = format!(
        r#"{server}
[tenant.me]
user = "berth-tfront"

[[tenant.me.site]]
hosts = ["me.test"]
root = "{}"
"#,
        dir.join("site").display()
    );
    let path = dir.write("berth.toml", config);
    let mut run = Running::spawn(
        Command::new("setpriv")
            .args([
                "--reuid=berth-tfront",
                "--regid=berth-tfront",
                "--init-groups",
                BERTH,
                "serve",
                "--config",
            ])
            .arg(&path),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let served = eventually(Duration::from_secs(20), || {
        if let Ok(Some(_)) = run.child.try_wait() {
            return false;
        }
        try_raw(
            addr,
            b"GET / HTTP/1.1\r\nHost: me.test\r\nConnection: close\r\n\r\n",
        )
        .map(|r| r.starts_with("HTTP/1.1 200") && r.ends_with("as myself\n"))
        .unwrap_or(false)
    });
    assert!(
        served,
        "berth as a normal user does not serve:\n{}",
        run.output()
    );
    let out = run.output();
    let lower = out.to_lowercase();
    assert!(
        lower.contains("without switching users")
            || lower.contains("not running as root")
            || lower.contains("not started as root"),
        "berth must say it runs without switching users:\n{out}"
    );
    assert_eq!(
        lower.matches("without switching users").count(),
        1,
        "said once:\n{out}"
    );
    let pid = run.child.id();
    let sup = proc_status(pid).unwrap();
    assert_eq!(field(&sup, "Uid"), vec![uid as u64; 4]);
    let front = children(pid);
    assert_eq!(front.len(), 1, "{front:?}");
    let st = proc_status(front[0]).unwrap();
    assert_eq!(field(&st, "Uid"), vec![uid as u64; 4]);
    assert_eq!(field_str(&st, "NoNewPrivs"), "1");
    assert!(Path::new(&dir.join("log/me/access.log")).exists());

    kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(st) = run.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "did not stop:\n{}", run.output());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{}", run.output());
}

// ---------------------------------------------------------------------------
// 13. Invariant 9: the supervisor never waits on the front end
// ---------------------------------------------------------------------------

/// The tenant of the stalled-front-end tests.
const STALL_USER: &str = "berth-tstall";

/// Writes its pid where the app's `PIDFILE` says, then sleeps.
const PID_THEN_SLEEP_CGI: &str = "#!/bin/sh\necho $$ > \"$PIDFILE\"\nexec sleep 300\n";

/// Sites in the stalled-front-end tests: a plan for them (~300 KB of JSON)
/// is larger than a socket buffer, so a front end that does not read leaves
/// the supervisor with most of it to send.
const MANY_SITES: usize = 3000;

/// Starts berth with `[server]` lines `extra` and tenant `ts` (user
/// [`STALL_USER`]): a.test with index.html, a CGI app `slow` for `/cgi/*.cgi`
/// (timeout 2 s) that writes its pid to `home/cgi.pid` and sleeps, a FastCGI
/// app `php` (php-cgi) kept warm, and [`MANY_SITES`] more sites.
fn start_with_many_sites(dir: &Dir, extra: &str) -> (Server, common::apps::Home) {
    use common::apps::{Home, app_table, tenant_site};
    let home = Home::new(dir, "home/ts", STALL_USER, ensure_user(STALL_USER));
    home.write("public/index.html", "site A\n", 0o644);
    home.write("public/cgi/slow.cgi", PID_THEN_SLEEP_CGI, 0o755);
    home.own();
    let mut config = tenant_site("ts", &home, "a.test");
    config.push_str(
        "\n[[tenant.ts.site.route]]\npath = \"/cgi/\"\napp = \"slow\"\nextensions = [\"cgi\"]\n",
    );
    for i in 0..MANY_SITES {
        config.push_str(&format!(
            "\n[[tenant.ts.site]]\nhosts = [\"s{i}.test\"]\nroot = \"{}\"\n",
            home.public().display()
        ));
    }
    config.push_str(&format!(
        "\n[tenant.ts.app.slow]\nprotocol = \"cgi\"\ntimeout = \"2s\"\nenv = {{ PIDFILE = \"{}\" }}\n",
        home.join("cgi.pid").display()
    ));
    config.push_str(&app_table(
        "ts",
        "php",
        "fastcgi",
        &home.public(),
        &["/usr/bin/php-cgi"],
        "min_processes = 1",
    ));
    let (server, port, tls_port) = server_block(dir, extra);
    // The warm php-cgi is found by its pid.
    let s = Server::start(dir, &format!("{server}{config}{HOST_PIDS}"), port, tls_port);
    (s, home)
}

/// The php-cgi processes the supervisor `sup` runs.
fn php_processes(sup: u32) -> Vec<u32> {
    children(sup)
        .into_iter()
        .filter(|&p| {
            fs::read_to_string(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.contains("php-cgi"))
        })
        .collect()
}

/// The front ends among the supervisor's children (it also runs the apps).
fn front_ends(sup: u32) -> Vec<u32> {
    children(sup)
        .into_iter()
        .filter(|&p| {
            alive(p)
                && fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| c.starts_with(b"berth\0front\0"))
        })
        .collect()
}

/// The one front end of the supervisor `sup`.
fn the_front_end(sup: u32) -> u32 {
    let mut fronts = Vec::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            fronts = front_ends(sup);
            fronts.len() == 1
        }),
        "front ends: {fronts:?}"
    );
    fronts[0]
}

/// SIGSTOPs the front end and reloads `n` times, each reload a big plan for
/// it (each SIGHUP once the reload before it is done: signals arriving
/// during a reload would merge). Panics if a reload is not handled. Returns
/// the front end's pid.
fn stop_front_and_reload(s: &Server, n: usize) -> u32 {
    let front = the_front_end(s.pid());
    kill(front, Signal::SIGSTOP);
    let reloads = || s.output().matches("configuration reloaded").count();
    let before = reloads();
    for i in 1..=n {
        s.signal(Signal::SIGHUP);
        assert!(
            eventually(Duration::from_secs(20), || reloads() == before + i),
            "reload {i} was not handled:\n{}",
            s.output()
        );
    }
    front
}

#[test]
fn stopped_front_end_and_reloads_do_not_block_the_supervisor() {
    require_root();
    let dir = Dir::new();
    let (uid, _) = ensure_user(STALL_USER);
    // No replacement during this test: the stalled front end stays.
    let (mut s, home) = start_with_many_sites(
        &dir,
        "front_stall_timeout = \"10m\"\ndrain_timeout = \"2s\"",
    );
    let mut php = Vec::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            php = php_processes(s.pid());
            php.len() == 1
        }),
        "no warm php-cgi: {php:?}\n{}",
        s.output()
    );
    // A CGI request in flight when the front end stops.
    let addr = s.addr();
    std::thread::spawn(move || {
        let _ = try_raw(
            addr,
            b"GET /cgi/slow.cgi HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        );
    });
    let mut cgi = 0;
    assert!(
        eventually(Duration::from_secs(10), || {
            cgi = fs::read_to_string(home.join("cgi.pid"))
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(0);
            cgi != 0
        }),
        "the CGI script did not start:\n{}",
        s.output()
    );

    // Every reload is handled, though no plan after the first can be sent.
    let front = stop_front_and_reload(&s, 5);
    // An app process that dies is reaped, and another is kept warm.
    kill(php[0], Signal::SIGKILL);
    assert!(
        eventually(Duration::from_secs(10), || {
            !Path::new(&format!("/proc/{}", php[0])).exists()
        }),
        "php-cgi {} was not reaped:\n{}",
        php[0],
        s.output()
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            php_processes(s.pid()).iter().any(|&p| p != php[0])
        }),
        "no new warm php-cgi:\n{}",
        s.output()
    );
    // The CGI script is killed at its timeout (2 s, then 2 s of grace; the
    // bound is generous for a loaded machine).
    assert!(
        eventually(Duration::from_secs(20), || !alive(cgi)),
        "CGI script {cgi} outlived its timeout:\n{}",
        s.output()
    );
    assert_eq!(
        front_ends(s.pid()),
        [front],
        "front end replaced before its stall timeout"
    );

    // SIGTERM: the front end cannot read its Shutdown; berth ends after
    // drain_timeout (2 s) + 5 s all the same (30 s is generous for that).
    let started = Instant::now();
    let code = s.stop();
    let took = started.elapsed();
    assert_eq!(code, Some(0), "{}", s.output());
    assert!(took < Duration::from_secs(30), "stopping took {took:?}");
    assert!(!alive(front), "the stopped front end outlived berth");
    assert!(
        eventually(Duration::from_secs(5), || processes_of(uid).is_empty()),
        "left running: {:?}",
        processes_of(uid)
    );
}

#[test]
fn front_end_that_stops_reading_is_replaced() {
    require_root();
    let dir = Dir::new();
    let (s, _home) =
        start_with_many_sites(&dir, "front_stall_timeout = \"2s\"\ndrain_timeout = \"2s\"");
    let started = Instant::now();
    let old = stop_front_and_reload(&s, 3);
    let mut new = 0;
    // 2 s of stall, up to 1 s until the check, 0.5 s of backoff: 30 s is
    // generous.
    assert!(
        eventually(Duration::from_secs(30), || {
            new = front_ends(s.pid())
                .into_iter()
                .find(|&p| p != old)
                .unwrap_or(0);
            new != 0
        }),
        "the stalled front end was not replaced:\n{}",
        s.output()
    );
    println!("replaced after {:?}", started.elapsed());
    assert!(
        eventually(Duration::from_secs(10), || !alive(old)),
        "the stalled front end {old} still runs"
    );
    assert!(
        s.output().contains("has read nothing for"),
        "{}",
        s.output()
    );
    // The new front end has the whole configuration.
    for host in ["a.test", "s2999.test"] {
        let ok = eventually(Duration::from_secs(10), || {
            try_raw(
                s.addr(),
                format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
        });
        assert!(ok, "{host} not served after the restart:\n{}", s.output());
    }
}
