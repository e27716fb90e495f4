//! Helpers shared by the app tests (`apps.rs`, FastCGI, and `http_apps.rs`,
//! HTTP): tenant users and homes, the configuration around their apps, raw
//! HTTP responses as the client saw them on the wire, what `/proc` says about
//! processes (and the assertions both suites make on it), and a berth started
//! with extra environment.

use super::*;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Users, homes and configuration
// ---------------------------------------------------------------------------

/// Test user `user` (see [`ensure_user`]), made a member of the supplementary
/// group `group` (created if missing). Returns (uid, gid).
pub fn user_in_group(user: &str, group: &str) -> (u32, u32) {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap();
    let ids = ensure_user(user);
    if !names_of_groups(user).iter().any(|g| g == group) {
        let ok = Command::new("groupadd")
            .args(["-f", group])
            .status()
            .unwrap()
            .success();
        assert!(ok, "groupadd {group}");
        let ok = Command::new("usermod")
            .args(["-a", "-G", group, user])
            .status()
            .unwrap()
            .success();
        assert!(ok, "usermod -a -G {group} {user}");
    }
    ids
}

/// The names of the groups the system gives `user` (as `id -Gn` prints them).
pub fn names_of_groups(user: &str) -> Vec<String> {
    let out = Command::new("id").args(["-Gn", user]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// The groups the system gives `user` (as `id -G` prints them).
pub fn groups_of(user: &str) -> BTreeSet<u64> {
    let out = Command::new("id").args(["-G", user]).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect()
}

/// A tenant's home inside a test `Dir`: `dir/REL` (0755), with the site root
/// `public/` in it. Files are written as root; [`Home::own`] hands the tree to
/// the tenant.
pub struct Home {
    pub path: PathBuf,
    pub user: &'static str,
    pub uid: u32,
    pub gid: u32,
}

impl Home {
    /// The home `dir/REL` of `user` (uid, gid), with an empty `public/`.
    pub fn new(dir: &Dir, rel: &str, user: &'static str, (uid, gid): (u32, u32)) -> Home {
        let path = dir.mkdir(&format!("{rel}/public"));
        let path = path.parent().unwrap().to_path_buf();
        for p in [&path, &path.join("public")] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        Home {
            path,
            user,
            uid,
            gid,
        }
    }

    /// `rel` under the home.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// The site root.
    pub fn public(&self) -> PathBuf {
        self.join("public")
    }

    /// Writes `rel` (under the home) with `mode`, creating directories; every
    /// directory from the home down to the file's is made 0755.
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>, mode: u32) -> PathBuf {
        let p = self.join(rel);
        let mut parent = p.parent().unwrap().to_path_buf();
        fs::create_dir_all(&parent).unwrap();
        while parent.starts_with(&self.path) {
            fs::set_permissions(&parent, fs::Permissions::from_mode(0o755)).unwrap();
            parent.pop();
        }
        fs::write(&p, contents).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    /// chown -R the home to the tenant (call after writing its files).
    pub fn own(&self) {
        let st = Command::new("chown")
            .args([
                "-R",
                "-h",
                &format!("{}:{}", self.uid, self.gid),
                self.path.to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(st.success());
    }
}

/// `[tenant.T]` for `home`'s user and home, with one site `host` rooted at
/// `home/public`; the rest of the site (TLS, routes) and the apps follow.
pub fn tenant_site(t: &str, home: &Home, host: &str) -> String {
    format!(
        r#"
[tenant.{t}]
user = "{user}"
home = "{home}"

[[tenant.{t}.site]]
hosts = ["{host}"]
root = "{home}/public"
"#,
        user = home.user,
        home = home.path.display(),
    )
}

/// `[tenant.T.app.NAME]` with `protocol`, `command`, working directory `dir`,
/// then `extra` lines (pool settings).
pub fn app_table(
    t: &str,
    name: &str,
    protocol: &str,
    dir: &Path,
    command: &[&str],
    extra: &str,
) -> String {
    let command = command
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[tenant.{t}.app.{name}]
protocol = "{protocol}"
command = [{command}]
dir = "{dir}"
{extra}
"#,
        dir = dir.display(),
    )
}

/// The `[server]` block every app test uses, and its ports.
pub fn server(dir: &Dir) -> (String, u16, u16) {
    server_block(dir, "keepalive_timeout = \"5s\"\ndrain_timeout = \"5s\"")
}

/// Hands `homes` to their tenants and starts berth with [`server`]'s block
/// and `tenants` (whole `[tenant.*]` tables).
pub fn start_tenants(dir: &Dir, homes: &[&Home], tenants: &str) -> Server {
    for home in homes {
        home.own();
    }
    let (block, port, tls_port) = server(dir);
    Server::start(dir, &format!("{block}{tenants}"), port, tls_port)
}

// ---------------------------------------------------------------------------
// HTTP on the wire
// ---------------------------------------------------------------------------

/// One response, as the client saw it on the wire.
pub struct Resp {
    pub status: u16,
    pub head: String,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    pub chunked: bool,
    /// Whether the body ended as its framing announced (the last chunk, or
    /// Content-Length bytes). Close-delimited bodies count as complete.
    pub complete: bool,
}

impl Resp {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers(name).into_iter().next()
    }

    /// Every value of header `name`, in order.
    pub fn headers(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
            .collect()
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `KEY=value` lines of the body.
    pub fn vars(&self) -> BTreeMap<String, String> {
        self.text()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body: String = self.text().chars().take(600).collect();
        write!(f, "{}\n\n{body}", self.head)
    }
}

/// Where `needle` first starts in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses one response (head, then a chunked, sized or close-delimited body);
/// returns it and the bytes after it.
pub fn parse_one(raw: &[u8]) -> (Resp, &[u8]) {
    let end = find(raw, b"\r\n\r\n").unwrap_or_else(|| {
        panic!(
            "no complete response head in {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(500)])
        )
    });
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = status_of(&head);
    let mut resp = Resp {
        status,
        head,
        body: Vec::new(),
        chunked: false,
        complete: true,
    };
    let mut rest = &raw[end + 4..];
    resp.chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if resp.chunked {
        resp.complete = false;
        while let Some(eol) = find(rest, b"\r\n") {
            let line = String::from_utf8_lossy(&rest[..eol]);
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
            rest = &rest[eol + 2..];
            if size == 0 {
                if let Some(t) = find(rest, b"\r\n") {
                    // No trailers expected: the empty line ends the message.
                    resp.complete = t == 0;
                    rest = &rest[t + 2..];
                }
                break;
            }
            if rest.len() < size + 2 {
                resp.body.extend_from_slice(&rest[..rest.len().min(size)]);
                rest = &[];
                break;
            }
            resp.body.extend_from_slice(&rest[..size]);
            assert_eq!(&rest[size..size + 2], b"\r\n", "chunk not followed by CRLF");
            rest = &rest[size + 2..];
        }
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().unwrap();
        resp.complete = rest.len() >= len;
        resp.body = rest[..rest.len().min(len)].to_vec();
        rest = &rest[rest.len().min(len)..];
    } else if resp.status == 101 || resp.status == 204 || resp.status == 304 {
        // No body.
    } else {
        resp.body = rest.to_vec();
        rest = &[];
    }
    (resp, rest)
}

/// Parses a response; see [`parse_one`].
pub fn parse(raw: &[u8]) -> Resp {
    parse_one(raw).0
}

/// Sends `head` and `body`, reads until the server closes (or `within`).
/// Returns the bytes and whether the server closed the connection.
pub fn exchange(addr: SocketAddr, head: &str, body: &[u8], within: Duration) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s.write_all(head.as_bytes()).unwrap();
    for piece in body.chunks(64 * 1024) {
        s.write_all(piece).unwrap();
    }
    read_until_closed(&mut s, within)
}

/// Reads from `s` until the server closes (or `within`). Returns the bytes and
/// whether the server closed the connection (a read error counts as closed).
pub fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                eprintln!("read error after {} bytes: {e}", out.len());
                return (out, true);
            }
        }
        if Instant::now() >= deadline {
            return (out, false);
        }
    }
}

/// `GET path` for `host` with Connection: close.
pub fn get_host(addr: SocketAddr, host: &str, path: &str) -> Resp {
    get_with(addr, host, path, String::new)
}

/// `GET path` for a.test with Connection: close; berth's output goes into
/// the failure message if no response comes.
pub fn get(s: &Server, path: &str) -> Resp {
    get_with(s.addr(), "a.test", path, || s.output())
}

fn get_with(addr: SocketAddr, host: &str, path: &str, output: impl FnOnce() -> String) -> Resp {
    let head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let (raw, closed) = exchange(addr, &head, &[], Duration::from_secs(30));
    assert!(closed, "GET {path}: no end of response within 30 s");
    assert!(
        !raw.is_empty(),
        "GET {path}: closed without a response\n{}",
        output()
    );
    parse(&raw)
}

/// `size` bytes that are not all alike.
pub fn payload(size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| b"0123456789abcdefghijklmnopqrstuvwxyz"[(i * 7 + i / 4096) % 36])
        .collect()
}

/// The MD5 of `data`, in hex (by md5sum).
pub fn md5_of(data: &[u8]) -> String {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// `/proc/PID/status`, if the process exists.
pub fn proc_status(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/status")).ok()
}

/// The numbers of a `/proc/PID/status` line such as `Uid:` or `Groups:`.
pub fn field(status: &str, key: &str) -> Vec<u64> {
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in status:\n{status}"));
    line[key.len() + 1..]
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

/// The text of a `/proc/PID/status` line such as `State:` ("" if missing).
pub fn field_str(status: &str, key: &str) -> String {
    status
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .map(|l| l[key.len() + 1..].trim().to_string())
        .unwrap_or_default()
}

/// Live (not zombie) processes: (pid, status text).
pub fn live_processes() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Some(st) = proc_status(pid) else { continue };
        if field_str(&st, "State").starts_with('Z') {
            continue;
        }
        out.push((pid, st));
    }
    out
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    proc_status(pid).is_some_and(|st| !field_str(&st, "State").starts_with('Z'))
}

/// Every live process with `uid` as its real, effective, saved or fs uid.
pub fn processes_of(uid: u32) -> Vec<u32> {
    live_processes()
        .into_iter()
        .filter(|(_, st)| field(st, "Uid").contains(&(uid as u64)))
        .map(|(pid, _)| pid)
        .collect()
}

/// A process's command line, arguments separated by spaces.
pub fn cmdline(pid: u32) -> String {
    String::from_utf8_lossy(&fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
        .replace('\0', " ")
}

/// A process's environment, as `NAME=value` strings.
pub fn environ_of(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/environ"))
        .unwrap()
        .split(|&b| b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| String::from_utf8_lossy(kv).into_owned())
        .collect()
}

/// Asserts what `/proc/PID/status` text `st` says about an app process: a
/// child of the supervisor `sup`, with `uid` and `gid` as its real, effective,
/// saved and fs ids, exactly the supplementary `groups` (root's not among
/// them), and no_new_privs set.
pub fn assert_runs_as(st: &str, sup: u32, (uid, gid): (u32, u32), groups: &BTreeSet<u64>) {
    assert_eq!(field(st, "PPid"), [sup as u64], "child of the supervisor");
    assert_eq!(field(st, "Uid"), [uid as u64; 4], "{st}");
    assert_eq!(field(st, "Gid"), [gid as u64; 4], "{st}");
    let kernel_groups: BTreeSet<u64> = field(st, "Groups").into_iter().collect();
    assert_eq!(&kernel_groups, groups, "supplementary groups");
    assert!(!kernel_groups.contains(&0), "no root group");
    assert_eq!(field_str(st, "NoNewPrivs"), "1");
}

/// Asserts where berth put an app's listening socket `sock` and who may use
/// it: named `PREFIX*` in `dir/state/apps`, root:front-group 0660, in a
/// directory root:front-group 0750.
pub fn assert_app_socket(dir: &Dir, sock: &str, prefix: &str, front_gid: u32) {
    let apps_dir = dir.join("state/apps");
    assert_eq!(Path::new(sock).parent().unwrap(), apps_dir, "{sock}");
    assert!(
        Path::new(sock)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(prefix),
        "{sock}"
    );
    let m = fs::metadata(&apps_dir).unwrap();
    assert_eq!(
        (m.uid(), m.gid(), m.mode() & 0o7777),
        (0, front_gid, 0o750),
        "{}",
        apps_dir.display()
    );
    let m = fs::symlink_metadata(sock).unwrap();
    assert_eq!(
        (m.uid(), m.gid(), m.mode() & 0o7777),
        (0, front_gid, 0o660),
        "{sock}"
    );
}

/// Asserts that tenant A's app socket `sock` and process `pid` survived what
/// tenant B tried on them (unlink, SIGKILL).
pub fn assert_survived(sock: &str, pid: u32) {
    assert!(Path::new(sock).exists());
    assert!(alive(pid), "A's process survived B's SIGKILL attempt");
}

/// Asserts that berth left nothing behind: no process running as `uid`
/// (`user`), no socket in `dir/state/apps`.
pub fn assert_nothing_left(dir: &Dir, user: &str, uid: u32) {
    // Whatever berth killed on its way out has been sent SIGKILL; on a loaded
    // machine the kernel may take a moment to end it.
    let mut left = Vec::new();
    eventually(Duration::from_secs(5), || {
        left = processes_of(uid);
        left.is_empty()
    });
    assert!(
        left.is_empty(),
        "left running as {user}: {:?}",
        left.iter().map(|p| cmdline(*p)).collect::<Vec<_>>()
    );
    let sockets: Vec<_> = fs::read_dir(dir.join("state/apps"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(sockets.is_empty(), "sockets left: {sockets:?}");
}

/// The path of the Unix socket a process has as `fd` (an app's listener:
/// FastCGI's is fd 0, socket activation's fd 3).
pub fn socket_of(pid: u32, fd: u32) -> Option<String> {
    let link = fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let link = link.to_string_lossy();
    let inode = link
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .to_string();
    let table = fs::read_to_string("/proc/net/unix").ok()?;
    table.lines().skip(1).find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        (cols.len() >= 8 && cols[6] == inode).then(|| cols[7].to_string())
    })
}

/// The processes of app `tenant/app` of the berth with supervisor `sup`: its
/// children whose `fd` (see [`socket_of`]) is a socket named
/// `TENANT.APP.*.sock`.
pub fn app_procs(sup: u32, tenant: &str, app: &str, fd: u32) -> Vec<u32> {
    let prefix = format!("{tenant}.{app}.");
    live_processes()
        .into_iter()
        .filter(|(_, st)| field(st, "PPid") == [sup as u64])
        .filter(|(pid, _)| {
            socket_of(*pid, fd).is_some_and(|p| {
                Path::new(&p)
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            })
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// Runs `argv` as `user` (uid, gid and its groups) with setpriv; returns
/// stdout and stderr.
pub fn run_as(user: &str, argv: &[&str]) -> String {
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={user}"),
            &format!("--regid={user}"),
            "--init-groups",
        ])
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .expect("setpriv");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

// ---------------------------------------------------------------------------
// A berth with extra environment (Server::spawn passes only the test's own)
// ---------------------------------------------------------------------------

/// A running `berth serve` with extra environment variables, its output in
/// `dir/berth.out`. Stopped (SIGTERM, then SIGKILL) when dropped.
pub struct EnvServer {
    pub child: Child,
    pub port: u16,
    pub out: PathBuf,
}

impl EnvServer {
    /// Writes `config` to `dir/berth.toml` and starts berth with `env` added
    /// to its environment (checked in /proc, so a test can rely on berth
    /// having it), waiting until `port` answers.
    pub fn start(dir: &Dir, config: &str, port: u16, env: &[(&str, &str)]) -> EnvServer {
        let path = dir.write("berth.toml", config);
        let out = dir.join("berth.out");
        let f = fs::File::create(&out).unwrap();
        let child = Command::new(BERTH)
            .args(["serve", "--config", path.to_str().unwrap()])
            .env("BERTH_LOG", "debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("start berth");
        let mut s = EnvServer { child, port, out };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = s.child.try_wait().unwrap() {
                panic!("berth exited early ({st}):\n{}", s.output());
            }
            let probe = b"GET / HTTP/1.1\r\nHost: ready.invalid\r\nConnection: close\r\n\r\n";
            if try_raw(s.addr(), probe).is_ok_and(|r| r.starts_with("HTTP/1.1")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "berth did not answer:\n{}",
                s.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let berth_env = environ_of(s.child.id());
        for (k, v) in env {
            assert!(
                berth_env.contains(&format!("{k}={v}")),
                "the test did not give berth its variable"
            );
        }
        s
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Everything berth printed so far.
    pub fn output(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for EnvServer {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `[defaults.isolation] namespaces = false`, for tests that tell app
/// processes apart by the pid the app reports, or find them as the
/// supervisor's children: in its own view every app is pid 2 under berth's
/// init (see docs/isolation.md). Isolation itself is tested in
/// tests/isolation.rs; every other test runs with it on, as berth does.
pub const HOST_PIDS: &str = "\n[defaults.isolation]\nnamespaces = false\n";
