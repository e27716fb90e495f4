//! Shared helpers for the integration tests: test users, site trees, a running
//! `berth serve` with a temporary configuration, TLS material and HTTP clients.
//! In the spirit of ripgrep's `Dir`/`TestCommand`.
#![allow(dead_code)]

pub mod apps;
pub mod cgroups;
pub mod farm;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

pub const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// The suite runs as root in CI: the isolation tests need it and must not skip.
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (run the suite as the README says)"
    );
}

/// Creates a Unix user for tests if it does not exist (names start `berth-t`).
/// Returns (uid, gid).
pub fn ensure_user(name: &str) -> (u32, u32) {
    assert!(name.starts_with("berth-t"), "test users are named berth-t*");
    ensure_any_user(name)
}

/// [`ensure_user`] for a user that is not a test user (the demo's, which
/// `examples/demo/run.sh` creates the same way).
pub fn ensure_any_user(name: &str) -> (u32, u32) {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap();
    if nix::unistd::User::from_name(name).unwrap().is_none() {
        let st = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/usr/sbin/nologin", name])
            .status()
            .expect("useradd");
        // Another test binary may have created it in between.
        assert!(
            st.success() || nix::unistd::User::from_name(name).unwrap().is_some(),
            "useradd {name} failed"
        );
    }
    let u = nix::unistd::User::from_name(name).unwrap().unwrap();
    (u.uid.as_raw(), u.gid.as_raw())
}

/// `berth SUBCOMMAND --config CONFIG ARGS...`: (exit code, stdout, stderr).
pub fn berth_run(subcommand: &str, config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BERTH)
        .args([subcommand, "--config"])
        .arg(config)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run berth {subcommand}: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `berth check --config CONFIG ARGS...` ([`berth_run`]).
pub fn berth_check(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    berth_run("check", config, args)
}

/// The 1-based number of the first line of `text` that contains `needle`.
pub fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in:\n{text}"))
        + 1
}

/// Waits for `cond` for up to `within`.
pub fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A temporary directory readable by everyone (the front end runs as another user).
pub struct Dir {
    pub tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        let tmp = tempfile::Builder::new()
            .prefix("berth-test-")
            .tempdir()
            .unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        Dir { tmp }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// Writes a file, creating parent directories (mode 0755 / 0644).
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&p, contents).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        p
    }

    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.join(rel);
        fs::create_dir_all(&p).unwrap();
        p
    }

    pub fn symlink(&self, target: impl AsRef<Path>, rel: &str) -> PathBuf {
        let p = self.join(rel);
        std::os::unix::fs::symlink(target, &p).unwrap();
        p
    }

    /// chown -R to uid:gid (without following symlinks).
    pub fn chown(&self, rel: &str, uid: u32, gid: u32) {
        let st = Command::new("chown")
            .args([
                "-R",
                "-h",
                &format!("{uid}:{gid}"),
                self.join(rel).to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(st.success());
    }
}

/// A free TCP port on 127.0.0.1 for a server a test starts: bound and
/// released, never the same twice in one test binary, and below the
/// kernel's ephemeral range (32768 and up by default), where the tests'
/// own outgoing connections take their ports. A port from the ephemeral
/// range (as binding port 0 gave) could be taken by a client connection of
/// another test between its release and berth's bind ("Address already in
/// use").
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    // Start somewhere different in each test binary (they run one after
    // another, but a server of the last may be ending).
    let seed = std::process::id() as usize;
    for i in 0..12000 {
        let port = 20000 + ((seed * 7919 + i * 613) % 12000) as u16;
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port between 20000 and 32000")
}

/// A test certificate authority and certificates for host names.
pub struct Pki {
    pub ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "berth test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes `NAME.pem` and `NAME.key` for `hosts` into `dir`; returns their paths.
    pub fn issue(&self, dir: &Dir, name: &str, hosts: &[&str]) -> (PathBuf, PathBuf) {
        let params =
            rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let c = dir.write(&format!("{name}.pem"), cert.pem());
        let k = dir.write(&format!("{name}.key"), key.serialize_pem());
        fs::set_permissions(&k, fs::Permissions::from_mode(0o600)).unwrap();
        (c, k)
    }
}

/// A running `berth serve`. Stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Server {
    pub child: Option<Child>,
    pub config: PathBuf,
    pub port: u16,
    pub tls_port: u16,
    pub log_dir: PathBuf,
    output: Arc<Mutex<String>>,
}

/// The `[server]` block for a test: plain and TLS listeners on free ports, state,
/// logs and the control socket (`dir/state/control.sock`, not the shared
/// /run/berth's) inside `dir`, the front end as `berth-tfront`, short timeouts.
/// berth's own log rotation is off unless `extra` sets `log_rotate`: a test
/// that reads a log must not find it rotated because it ran at midnight.
pub fn server_block(dir: &Dir, extra: &str) -> (String, u16, u16) {
    ensure_user("berth-tfront");
    let port = free_port();
    let tls_port = free_port();
    let rotate = if extra.contains("log_rotate") {
        ""
    } else {
        "log_rotate = \"off\""
    };
    let block = format!(
        r#"[server]
listen = ["127.0.0.1:{port}"]
tls_listen = ["127.0.0.1:{tls_port}"]
user = "berth-tfront"
state_dir = "{state}"
log_dir = "{log}"
{rotate}
control_socket = "{control}"
{extra}
"#,
        state = dir.join("state").display(),
        log = dir.join("log").display(),
        control = dir.join("state/control.sock").display(),
    );
    (block, port, tls_port)
}

/// Starts berth with tenant `ta` (user berth-ta; a.test and www.a.test,
/// root `dir/a`) and tenant `tb` (berth-tb; b.test, root `dir/b`), each site
/// with a certificate from `pki`.
pub fn start_a_and_b(dir: &Dir, pki: &Pki) -> Server {
    start_a_and_b_with(dir, pki, "")
}

/// [`start_a_and_b`] with `extra` lines in `[server]`.
pub fn start_a_and_b_with(dir: &Dir, pki: &Pki, extra: &str) -> Server {
    let (ca, ka) = pki.issue(dir, "a", &["a.test", "www.a.test"]);
    let (cb, kb) = pki.issue(dir, "b", &["b.test"]);
    let (server, port, tls_port) = server_block(dir, extra);
    let config = format!(
        r#"{server}
[tenant.ta]
user = "berth-ta"
[[tenant.ta.site]]
hosts = ["a.test", "www.a.test"]
root = "{a}"
tls = {{ cert = "{ca}", key = "{ka}" }}

[tenant.tb]
user = "berth-tb"
[[tenant.tb.site]]
hosts = ["b.test"]
root = "{b}"
tls = {{ cert = "{cb}", key = "{kb}" }}
"#,
        a = dir.join("a").display(),
        b = dir.join("b").display(),
        ca = ca.display(),
        ka = ka.display(),
        cb = cb.display(),
        kb = kb.display(),
    );
    Server::start(dir, &config, port, tls_port)
}

impl Server {
    /// Writes `config` (which must use the ports from `server_block`) to
    /// `dir/berth.toml` and starts berth, waiting until the plain port answers.
    pub fn start(dir: &Dir, config: &str, port: u16, tls_port: u16) -> Server {
        let path = dir.write("berth.toml", config);
        let mut s = Server::spawn(&path, port, tls_port, dir.join("log"));
        s.wait_ready();
        s
    }

    pub fn spawn(config: &Path, port: u16, tls_port: u16, log_dir: PathBuf) -> Server {
        Server::spawn_with(Command::new(BERTH), config, port, tls_port, log_dir)
    }

    /// [`Server::start`] with berth run by `cmd` (`setpriv ... BERTH`, to
    /// start it as a normal user): `serve --config` is added.
    pub fn start_with(cmd: Command, dir: &Dir, config: &str, port: u16, tls_port: u16) -> Server {
        let path = dir.write("berth.toml", config);
        let mut s = Server::spawn_with(cmd, &path, port, tls_port, dir.join("log"));
        s.wait_ready();
        s
    }

    fn spawn_with(
        mut cmd: Command,
        config: &Path,
        port: u16,
        tls_port: u16,
        log_dir: PathBuf,
    ) -> Server {
        let mut child = cmd
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("BERTH_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start berth");
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    output.lock().unwrap().push_str(&line);
                    output.lock().unwrap().push('\n');
                }
            });
        }
        Server {
            child: Some(child),
            config: config.to_path_buf(),
            port,
            tls_port,
            log_dir,
            output,
        }
    }

    /// Waits until a request on the plain port gets an HTTP answer.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("berth exited early ({status}):\n{}", self.output());
            }
            let probe = b"GET / HTTP/1.1\r\nHost: ready.invalid\r\nConnection: close\r\n\r\n";
            if try_raw(self.addr(), probe).is_ok_and(|resp| resp.starts_with("HTTP/1.1")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("berth did not answer within 20 s:\n{}", self.output());
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn tls_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.tls_port))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Everything berth printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until berth's output contains `needle`.
    pub fn wait_output(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.output().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    /// The front end's pid (the supervisor's only child).
    pub fn front_pid(&self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.pid()))
                .unwrap_or_default();
            if let Some(pid) = children.split_whitespace().next() {
                return pid.parse().unwrap();
            }
            assert!(Instant::now() < deadline, "no front end process");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Sends SIGTERM and waits for exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn access_log(&self, tenant: &str) -> String {
        fs::read_to_string(self.log_dir.join(tenant).join("access.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP connection to `to` from the local address `from` (any 127/8
/// address is loopback: another client address for berth's per-address
/// limits).
pub fn connect_from(from: std::net::Ipv4Addr, to: SocketAddr) -> TcpStream {
    use rustix::net::{AddressFamily, SocketType};
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    rustix::net::bind(&fd, &std::net::SocketAddrV4::new(from, 0)).unwrap();
    rustix::net::connect(&fd, &to).unwrap();
    TcpStream::from(fd)
}

/// Sends raw bytes and reads until the server closes the connection (or 5 s).
pub fn try_raw(addr: SocketAddr, request: &[u8]) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(request)?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Like [`try_raw`], but panics on connection errors.
pub fn raw(addr: SocketAddr, request: &str) -> String {
    try_raw(addr, request.as_bytes()).expect("raw request")
}

/// `GET path` for `host` over HTTP/1.1 with Connection: close; returns the whole
/// response text.
pub fn get_raw(addr: SocketAddr, host: &str, path: &str) -> String {
    raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
}

/// The status code of a raw response.
pub fn status_of(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {resp:?}"))
}

fn install_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A real HTTP client (reqwest) that resolves every name to 127.0.0.1.
/// `h2c` = HTTP/2 with prior knowledge on plain connections; `ca` = trust this CA
/// for HTTPS (ALPN offers h2 and http/1.1).
pub fn client(h2c: bool, ca: Option<&str>, hosts: &[&str], port: u16) -> reqwest::blocking::Client {
    install_crypto();
    let mut b = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .no_proxy();
    for h in hosts {
        b = b.resolve(h, SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if h2c {
        b = b.http2_prior_knowledge();
    }
    if let Some(ca) = ca {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        b = b.tls_backend_preconfigured(cfg);
    }
    b.build().unwrap()
}

use rustls_pki_types::pem::PemObject;
