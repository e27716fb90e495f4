//! Isolation beyond the uid (issue 10, invariant 10), as root with real
//! users, real apps and the kernel's own namespaces: every attack runs from
//! inside a real app of tenant A (a shell or Python CGI script, a php-cgi
//! page) and prints what happened; the test reads it.
//!
//! The homes live directly under `/home` (as on a real host), so "list
//! /home" means what it says; each test removes what it made.
mod common;
use common::apps::*;
use common::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const USER_A: &str = "berth-tisoa";
const USER_B: &str = "berth-tisob";

/// A home at `/home/NAME-PID`, removed when dropped.
struct HomeUnderHome(Home);

impl HomeUnderHome {
    fn new(user: &'static str) -> HomeUnderHome {
        HomeUnderHome::under("/home", user)
    }

    /// A home at `PARENT/NAME-PID-N`.
    fn under(parent: &str, user: &'static str) -> HomeUnderHome {
        let ids = ensure_user(user);
        // Tests run in parallel in one process: a number of its own each.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = PathBuf::from(format!("{parent}/{user}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(path.join("public")).unwrap();
        for p in [&path, &path.join("public")] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        HomeUnderHome(Home {
            path,
            user,
            uid: ids.0,
            gid: ids.1,
        })
    }
}

impl std::ops::Deref for HomeUnderHome {
    type Target = Home;
    fn deref(&self) -> &Home {
        &self.0
    }
}

impl Drop for HomeUnderHome {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0.path);
    }
}

/// Removes a file or a directory tree when dropped.
struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        if self.0.is_dir() {
            let _ = fs::remove_dir_all(&self.0);
        } else {
            let _ = fs::remove_file(&self.0);
        }
    }
}

/// `chown -R uid:gid path` (without following symlinks).
fn chown_tree(path: &Path, uid: u32, gid: u32) {
    let st = Command::new("chown")
        .args(["-R", "-h", &format!("{uid}:{gid}")])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success(), "chown -R {}", path.display());
}

/// What tenant A's shell script tries, one `key=value` line each.
const PROBE_CGI: &str = r#"#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
echo "uid=$(id -u)"
echo "hostname=$(hostname)"
echo "home_listing=$(ls /home | tr '\n' ' ')"
if cat "$OTHER_FILE" >/dev/null 2>&1; then echo "other_file=read"; else echo "other_file=refused"; fi
for p in "$STATE_DIR" "$LOG_DIR" "$CONFIG_FILE"; do
  if [ -e "$p" ]; then echo "visible=$p"; fi
done
pids=""
for d in /proc/[0-9]*; do pids="$pids $(basename $d):$(cat $d/comm 2>/dev/null)"; done
echo "processes=$pids"
echo "$MARK" > /tmp/berth-tiso-mark-$MARK
echo "tmp_mark=$(cat /tmp/berth-tiso-mark-$MARK)"
if touch /usr/berth-tiso-x 2>/dev/null; then echo "usr=written"; else echo "usr=refused"; fi
"#;

/// What tenant B's script sees of /tmp.
const B_TMP_CGI: &str = r#"#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
if [ -e /tmp/berth-tiso-mark-$MARK ]; then echo "b_sees=$(cat /tmp/berth-tiso-mark-$MARK)"; else echo "b_sees=nothing"; fi
"#;

/// Lines `key=value` of a probe's answer.
fn values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

fn value(text: &str, key: &str) -> String {
    values(text, key).into_iter().next().unwrap_or_default()
}

/// Tenants ta (a.test) and tb (b.test) with a CGI app by extension each,
/// and `extra` appended (more apps, routes, isolation settings).
fn config(a: &Home, b: &Home, extra: &str) -> String {
    let mut out = tenant_site("ta", a, "a.test");
    out.push_str(
        "\n[[tenant.ta.site.route]]\npath = \"/\"\napp = \"sh\"\nextensions = [\"cgi\"]\n",
    );
    out.push_str("\n[tenant.ta.app.sh]\nprotocol = \"cgi\"\n");
    out.push_str(&tenant_site("tb", b, "b.test"));
    out.push_str(
        "\n[[tenant.tb.site.route]]\npath = \"/\"\napp = \"sh\"\nextensions = [\"cgi\"]\n",
    );
    out.push_str("\n[tenant.tb.app.sh]\nprotocol = \"cgi\"\n");
    out.push_str(extra);
    out
}

fn get_from(s: &Server, host: &str, path: &str) -> Resp {
    get_host(s.addr(), host, path)
}

#[test]
fn an_app_sees_its_own_tree_and_nothing_of_the_other_tenants() {
    require_root();
    let dir = Dir::new();
    let a = HomeUnderHome::new(USER_A);
    let b = HomeUnderHome::new(USER_B);
    a.write("public/probe.cgi", PROBE_CGI, 0o755);
    b.write("public/tmp.cgi", B_TMP_CGI, 0o755);
    // What most shared hosts leave world-readable.
    let secret = b.write(
        "public/wp-config.php",
        "<?php define('DB_PASSWORD', 'hunter2');",
        0o644,
    );
    let mark = format!("mark-{}", std::process::id());
    let env = format!(
        "env = {{ OTHER_FILE = \"{}\", STATE_DIR = \"{}\", LOG_DIR = \"{}\", CONFIG_FILE = \"{}\", MARK = \"{mark}\" }}\n",
        secret.display(),
        dir.join("state").display(),
        dir.join("log").display(),
        dir.join("berth.toml").display(),
    );
    let cfg = config(&a, &b, "")
        .replace(
            "[tenant.ta.app.sh]\nprotocol = \"cgi\"\n",
            &format!("[tenant.ta.app.sh]\nprotocol = \"cgi\"\n{env}"),
        )
        .replace(
            "[tenant.tb.app.sh]\nprotocol = \"cgi\"\n",
            &format!("[tenant.tb.app.sh]\nprotocol = \"cgi\"\nenv = {{ MARK = \"{mark}\" }}\n"),
        );
    let s = start_tenants(&dir, &[&a, &b], &cfg);

    let r = get_from(&s, "a.test", "/probe.cgi");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    let text = r.text();
    // The script really ran as the tenant (the probe is not answering for
    // berth), in its view.
    assert_eq!(value(&text, "uid"), a.uid.to_string(), "{text}");
    assert_eq!(value(&text, "hostname"), "ta", "{text}");
    assert_eq!(value(&text, "other_file"), "refused", "{text}");
    let home_name = a.path.file_name().unwrap().to_str().unwrap();
    assert_eq!(value(&text, "home_listing").trim(), home_name, "{text}");
    assert_eq!(values(&text, "visible"), Vec::<String>::new(), "{text}");
    assert_eq!(value(&text, "usr"), "refused", "{text}");
    // Only its own processes (and berth's init as pid 1).
    let procs = value(&text, "processes");
    let procs: Vec<&str> = procs.split_whitespace().collect();
    assert!(procs.contains(&"1:berth-init"), "{procs:?}");
    assert!(
        procs.len() <= 6,
        "more than the script's own processes: {procs:?}"
    );
    for p in &procs {
        assert!(
            !p.contains("php") && !p.contains(":berth") || *p == "1:berth-init",
            "{procs:?}"
        );
    }
    assert_eq!(value(&text, "tmp_mark"), mark, "{text}");
    // /tmp is the tenant's: not the host's, not B's.
    assert!(
        !Path::new(&format!("/tmp/berth-tiso-mark-{mark}")).exists(),
        "the app's /tmp is the host's"
    );
    let r = get_from(&s, "b.test", "/tmp.cgi");
    assert_eq!(value(&r.text(), "b_sees"), "nothing", "{r:?}");
    // And it is kept: the next run of A sees what the last one left.
    let private = dir.join(&format!("state/private/ta/tmp/berth-tiso-mark-{mark}"));
    assert_eq!(fs::read_to_string(&private).unwrap().trim(), mark);
}

/// A FastCGI client in Python: sends one request to the socket `argv[1]`
/// naming `argv[2]` as SCRIPT_FILENAME and prints what came back on stdout.
const FCGI_CLIENT_PY: &str = r#"
import socket, struct, sys
def rec(t, content):
    return struct.pack('!BBHHBx', 1, t, 1, len(content), 0) + content
def ln(n):
    return bytes([n]) if n < 128 else struct.pack('!I', n | 0x80000000)
def nv(k, v):
    k, v = k.encode(), v.encode()
    return ln(len(k)) + ln(len(v)) + k + v
body = sys.argv[3].encode() * 2000 if len(sys.argv) > 3 else b''
params = b''.join(nv(k, v) for k, v in [
    ('SCRIPT_FILENAME', sys.argv[2]), ('SCRIPT_NAME', '/x.php'), ('REQUEST_URI', '/x.php'),
    ('REQUEST_METHOD', 'POST' if body else 'GET'), ('CONTENT_LENGTH', str(len(body))),
    ('CONTENT_TYPE', 'application/octet-stream'),
    ('SERVER_PROTOCOL', 'HTTP/1.1'), ('GATEWAY_INTERFACE', 'CGI/1.1'),
    ('REDIRECT_STATUS', '200'), ('SERVER_NAME', 'a.test'), ('QUERY_STRING', '')])
stdin = b''.join(rec(5, body[i:i + 32768]) for i in range(0, len(body), 32768)) + rec(5, b'')
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(rec(1, struct.pack('!HB5x', 1, 0)) + rec(4, params) + rec(4, b'') + stdin)
buf, out = b'', b''
while True:
    d = s.recv(65536)
    if not d:
        break
    buf += d
    while len(buf) >= 8:
        _, t, _, n, pad = struct.unpack('!BBHHB', buf[:7])
        if len(buf) < 8 + n + pad:
            break
        if t == 6:
            out += buf[8:8 + n]
        buf = buf[8 + n + pad:]
        if t == 3:
            sys.stdout.write(out.decode('utf-8', 'replace'))
            sys.exit(0)
sys.stdout.write(out.decode('utf-8', 'replace'))
"#;

/// Runs the FastCGI client as the front end's user (what a compromised
/// front end can do): its output.
fn fastcgi_as_front_end(socket: &Path, script: &str) -> String {
    let out = Command::new("runuser")
        .args(["-u", "berth-tfront", "--", "python3", "-c", FCGI_CLIENT_PY])
        .arg(socket)
        .arg(script)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_front_end_naming_a_script_outside_the_tenants_tree_runs_nothing() {
    require_root();
    let dir = Dir::new();
    let a = HomeUnderHome::new(USER_A);
    let b = HomeUnderHome::new(USER_B);
    a.write("public/a.php", "<?php echo 'A RAN';", 0o644);
    a.write("public/php/start.php", "<?php echo 'started';", 0o644);
    let b_php = b.write(
        "public/b.php",
        "<?php echo 'B RAN as ', posix_getuid();",
        0o644,
    );
    let extra = format!(
        "\n[[tenant.ta.site.route]]\npath = \"/php/\"\napp = \"php\"\nextensions = [\"php\"]\n{}",
        app_table(
            "ta",
            "php",
            "fastcgi",
            &a.public(),
            &["/usr/bin/php-cgi"],
            ""
        )
    );
    let s = start_tenants(&dir, &[&a, &b], &config(&a, &b, &extra));
    // A file the front end's user can write and anyone can read: in /tmp.
    let evil = format!("/tmp/berth-tiso-evil-{}.php", std::process::id());
    let st = Command::new("runuser")
        .args(["-u", "berth-tfront", "--", "sh", "-c"])
        .arg(format!(
            "echo \"<?php echo 'EVIL RAN as ', posix_getuid();\" > {evil} && chmod 644 {evil}"
        ))
        .status()
        .unwrap();
    assert!(st.success());
    let _rm = Removed(PathBuf::from(&evil));

    // Start the app through the front door, then find its socket.
    let r = get_from(&s, "a.test", "/php/start.php");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    let socket = fs::read_dir(dir.join("state/apps"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("ta.php.")
        })
        .expect("the php app's socket");
    // php-cgi serves one connection at a time and the front end keeps its
    // own open: the front end goes (it is restarted), as a compromised one
    // that drops its connections would.
    let front = s.front_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(front as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The client works: A's own page runs.
    let own = fastcgi_as_front_end(&socket, a.join("public/a.php").to_str().unwrap());
    assert!(own.contains("A RAN"), "{own}");
    // Whatever the front end planted, and B's scripts, do not.
    for script in [evil.as_str(), b_php.to_str().unwrap()] {
        let out = fastcgi_as_front_end(&socket, script);
        assert!(
            !out.contains("RAN"),
            "{script} ran as tenant A through its socket:\n{out}"
        );
        assert!(out.contains("No input file specified"), "{script}: {out}");
    }
}

/// Tries what the seccomp filter refuses, as raw system calls.
const SYSCALLS_PY: &str = r#"#!/usr/bin/python3
import ctypes, errno, platform, subprocess
libc = ctypes.CDLL(None, use_errno=True)
NR = {
    'x86_64': {'ptrace': 101, 'unshare': 272, 'keyctl': 250, 'finit_module': 313, 'getpid': 39},
    'aarch64': {'ptrace': 117, 'unshare': 97, 'keyctl': 219, 'finit_module': 273, 'getpid': 172},
}[platform.machine()]
def call(name, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(NR[name]), *[ctypes.c_long(a) for a in args])
    return 'ok' if r >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
print('Content-Type: text/plain\n')
sibling = subprocess.Popen(['sleep', '10'])
print('ptrace=' + call('ptrace', 16, sibling.pid, 0, 0))
sibling.kill()
print('unshare=' + call('unshare', 0x10000000))
print('keyctl=' + call('keyctl', 0, -4, 0))
print('finit_module=' + call('finit_module', -1, 0, 0))
print('getpid=' + call('getpid'))
"#;

#[test]
fn the_filter_answers_eperm_from_inside_an_app_and_its_escape_hatches_work() {
    require_root();
    let dir = Dir::new();
    let a = HomeUnderHome::new(USER_A);
    let b = HomeUnderHome::new(USER_B);
    for d in ["filtered", "ptrace", "off"] {
        a.write(&format!("public/{d}/calls.py"), SYSCALLS_PY, 0o755);
    }
    let mut extra = String::new();
    for (d, isolation) in [
        ("filtered", ""),
        ("ptrace", "allow = [\"ptrace\"]"),
        ("off", "seccomp = \"off\""),
    ] {
        extra.push_str(&format!(
            "\n[[tenant.ta.site.route]]\npath = \"/{d}/\"\napp = \"{d}\"\nextensions = [\"py\"]\n\n[tenant.ta.app.{d}]\nprotocol = \"cgi\"\n\n[tenant.ta.app.{d}.isolation]\n{isolation}\n"
        ));
    }
    let s = start_tenants(&dir, &[&a, &b], &config(&a, &b, &extra));
    let answers = |d: &str| {
        let r = get_from(&s, "a.test", &format!("/{d}/calls.py"));
        assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
        r.text()
    };
    let filtered = answers("filtered");
    for call in ["ptrace", "unshare", "keyctl", "finit_module"] {
        assert_eq!(value(&filtered, call), "EPERM", "{call}: {filtered}");
    }
    assert_eq!(value(&filtered, "getpid"), "ok", "{filtered}");
    // `allow` lets exactly the named call through.
    let ptrace = answers("ptrace");
    assert_eq!(value(&ptrace, "ptrace"), "ok", "{ptrace}");
    assert_eq!(value(&ptrace, "unshare"), "EPERM", "{ptrace}");
    // With the filter off, the kernel answers (the calls were refused by
    // the filter, not by the kernel; loading a module stays the kernel's
    // EPERM for a tenant).
    let off = answers("off");
    for call in ["ptrace", "unshare", "keyctl"] {
        assert_eq!(value(&off, call), "ok", "{call}: {off}");
    }
}

/// Connects to 127.0.0.1:$PORT_TO, which berth's listener holds on the host.
const CONNECT_PY: &str = r#"#!/usr/bin/python3
import errno, os, socket
print('Content-Type: text/plain\n')
s = socket.socket()
s.settimeout(5)
try:
    s.connect(('127.0.0.1', int(os.environ['PORT_TO'])))
    print('connect=ok')
except OSError as e:
    print('connect=' + str(errno.errorcode.get(e.errno, e)))
"#;

#[test]
fn network_none_refuses_an_outbound_connection() {
    require_root();
    let dir = Dir::new();
    let a = HomeUnderHome::new(USER_A);
    let b = HomeUnderHome::new(USER_B);
    for d in ["online", "offline"] {
        a.write(&format!("public/{d}/net.py"), CONNECT_PY, 0o755);
    }
    let (block, port, tls_port) = server(&dir);
    let mut extra = String::new();
    for (d, network) in [("online", "host"), ("offline", "none")] {
        extra.push_str(&format!(
            "\n[[tenant.ta.site.route]]\npath = \"/{d}/\"\napp = \"{d}\"\nextensions = [\"py\"]\n\n[tenant.ta.app.{d}]\nprotocol = \"cgi\"\nenv = {{ PORT_TO = \"{port}\" }}\n\n[tenant.ta.app.{d}.isolation]\nnetwork = \"{network}\"\n"
        ));
    }
    a.own();
    b.own();
    let s = Server::start(
        &dir,
        &format!("{block}{}", config(&a, &b, &extra)),
        port,
        tls_port,
    );
    let r = get_from(&s, "a.test", "/online/net.py");
    assert_eq!(value(&r.text(), "connect"), "ok", "{r:?}\n{}", s.output());
    let r = get_from(&s, "a.test", "/offline/net.py");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    assert_eq!(value(&r.text(), "connect"), "ECONNREFUSED", "{r:?}");
}

/// A CGI program mounted at a path: says it ran.
const RAN_CGI: &str = "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\nran\\n'\n";

#[test]
fn a_site_root_swapped_for_a_symlink_refuses_to_start_the_app_and_says_why() {
    require_root();
    let dir = Dir::new();
    let a = HomeUnderHome::new(USER_A);
    let b = HomeUnderHome::new(USER_B);
    a.write("bin/ran.cgi", RAN_CGI, 0o755);
    b.write("public/secret.txt", "B's secret\n", 0o644);
    // A's second site has its root outside A's home, in a directory A owns.
    let outside = PathBuf::from(format!("/home/berth-tisor-{}", std::process::id()));
    // (only this test makes it)
    let _ = fs::remove_dir_all(&outside);
    fs::create_dir_all(outside.join("public")).unwrap();
    let _rm = Removed(outside.clone());
    let extra = format!(
        "\n[[tenant.ta.site]]\nhosts = [\"a2.test\"]\nroot = \"{root}\"\n\n[[tenant.ta.site.route]]\npath = \"/run/\"\napp = \"ran\"\n{app}",
        root = outside.join("public").display(),
        app = app_table(
            "ta",
            "ran",
            "cgi",
            &a.join("bin"),
            &[a.join("bin/ran.cgi").to_str().unwrap()],
            ""
        ),
    );
    chown_tree(&outside, a.uid, a.gid);
    let s = start_tenants(&dir, &[&a, &b], &config(&a, &b, &extra));
    let r = get_from(&s, "a2.test", "/run/x");
    assert_eq!(r.text(), "ran\n", "{r:?}\n{}", s.output());
    // A swaps its root for a symlink to B's home: had the view followed it,
    // A's scripts would read B's files.
    fs::remove_dir(outside.join("public")).unwrap();
    std::os::unix::fs::symlink(&b.path, outside.join("public")).unwrap();
    rustix::fs::chownat(
        rustix::fs::CWD,
        outside.join("public"),
        Some(rustix::fs::Uid::from_raw(a.uid)),
        Some(rustix::fs::Gid::from_raw(a.gid)),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
    let r = get_from(&s, "a2.test", "/run/x");
    assert!(r.status >= 500, "{r:?}");
    assert!(!r.text().contains("secret"), "{r:?}");
    assert!(
        s.wait_output("a symlink on the way", Duration::from_secs(5)),
        "{}",
        s.output()
    );
}

#[test]
fn berth_started_as_a_normal_user_builds_the_view_in_a_user_namespace() {
    require_root();
    let user = "berth-tisou";
    let (uid, gid) = ensure_user(user);
    let dir = Dir::new();
    let home = Home::new(&dir, "home-u", user, (uid, gid));
    home.write("public/probe.cgi", PROBE_CGI, 0o755);
    let mark = format!("unprivileged-{}", std::process::id());
    let (block, port, tls_port) = server(&dir);
    let cfg = format!(
        "{block}{site}\n[[tenant.tu.site.route]]\npath = \"/\"\napp = \"sh\"\nextensions = [\"cgi\"]\n\n[tenant.tu.app.sh]\nprotocol = \"cgi\"\nenv = {{ STATE_DIR = \"{state}\", LOG_DIR = \"{log}\", CONFIG_FILE = \"{config}\", MARK = \"{mark}\", OTHER_FILE = \"/nonexistent\" }}\n",
        site = tenant_site("tu", &home, "u.test"),
        state = dir.join("state").display(),
        log = dir.join("log").display(),
        config = dir.join("berth.toml").display(),
    );
    // Everything of this berth is the user's.
    chown_tree(dir.path(), uid, gid);
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={uid}"),
        &format!("--regid={gid}"),
        "--clear-groups",
        "--",
        BERTH,
    ]);
    let s = Server::start_with(cmd, &dir, &cfg, port, tls_port);
    let r = get_from(&s, "u.test", "/probe.cgi");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    let text = r.text();
    assert_eq!(value(&text, "uid"), uid.to_string(), "{text}");
    assert_eq!(value(&text, "hostname"), "tu", "{text}");
    assert_eq!(values(&text, "visible"), Vec::<String>::new(), "{text}");
    let procs = value(&text, "processes");
    assert!(procs.contains("1:berth-init"), "{procs}");
    assert!(procs.split_whitespace().count() <= 6, "{procs}");
    assert!(!Path::new(&format!("/tmp/berth-tiso-mark-{mark}")).exists());
    assert!(!s.output().contains("isolation is off"), "{}", s.output());
}

/// Runs `argv[3:]` as uid `argv[1]`, gid `argv[2]`, in a user namespace of
/// its own that allows no further user namespace (`max_user_namespaces` 0
/// there): a kernel that lets this user make none, for berth started as a
/// normal user. A child left in the host's namespace writes the maps.
const NO_USERNS_PY: &str = r#"
import ctypes, os, sys
uid, gid, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
libc = ctypes.CDLL(None, use_errno=True)
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.close(w)
    os.read(r, 1)
    parent = os.getppid()
    # root stays root (berth checks that the directories above its own
    # are root's), the user stays itself.
    for f, line in (('uid_map', f'0 0 1\n{uid} {uid} 1\n'), ('gid_map', f'0 0 1\n{gid} {gid} 1\n')):
        with open(f'/proc/{parent}/{f}', 'w') as m:
            m.write(line)
    os._exit(0)
os.close(r)
if libc.unshare(0x10000000) != 0:
    sys.exit('unshare: errno %d' % ctypes.get_errno())
os.write(w, b'x')
os.waitpid(child, 0)
with open('/proc/sys/user/max_user_namespaces', 'w') as f:
    f.write('0\n')
os.setgroups([])
os.setresgid(gid, gid, gid)
os.setresuid(uid, uid, uid)
os.execv(argv[0], argv)
"#;

#[test]
fn where_no_user_namespace_is_allowed_isolation_is_said_off_once_or_refused_when_enforced() {
    require_root();
    let user = "berth-tisou";
    let (uid, gid) = ensure_user(user);
    for enforced in [false, true] {
        let dir = Dir::new();
        let home = Home::new(&dir, "home-u", user, (uid, gid));
        home.write("public/probe.cgi", PROBE_CGI, 0o755);
        let (block, port, tls_port) = server(&dir);
        let enforce = if enforced {
            "\n[enforce.isolation]\nnamespaces = true\n"
        } else {
            ""
        };
        let cfg = format!(
            "{block}{site}\n[[tenant.tu.site.route]]\npath = \"/\"\napp = \"sh\"\nextensions = [\"cgi\"]\n\n[tenant.tu.app.sh]\nprotocol = \"cgi\"\nenv = {{ MARK = \"m\", OTHER_FILE = \"/nonexistent\" }}\n{enforce}",
            site = tenant_site("tu", &home, "u.test"),
        );
        chown_tree(dir.path(), uid, gid);
        let mut cmd = Command::new("python3");
        cmd.args([
            "-c",
            NO_USERNS_PY,
            &uid.to_string(),
            &gid.to_string(),
            BERTH,
        ]);
        let s = Server::start_with(cmd, &dir, &cfg, port, tls_port);
        let r = get_from(&s, "u.test", "/probe.cgi");
        let said = s.output().matches("isolation is off").count();
        assert_eq!(said, 1, "said once at start-up:\n{}", s.output());
        if enforced {
            assert!(r.status >= 500, "{r:?}");
            assert!(
                s.wait_output(
                    "isolation is required ([enforce.isolation] namespaces = true) and cannot be set up",
                    Duration::from_secs(5)
                ),
                "{}",
                s.output()
            );
        } else {
            // It runs, without a view of its own: the host's name, its
            // processes.
            assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
            let text = r.text();
            assert_eq!(value(&text, "uid"), uid.to_string(), "{text}");
            assert_ne!(value(&text, "hostname"), "tu", "{text}");
        }
    }
}

#[test]
fn a_home_under_a_system_directory_is_writable_in_its_own_view() {
    // /srv is the system's: each home under it is hidden from the others by
    // itself, and its own view must not get it read-only.
    require_root();
    let dir = Dir::new();
    let a = HomeUnderHome::under("/srv", USER_A);
    let b = HomeUnderHome::under("/srv", USER_B);
    a.write(
        "public/write.cgi",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\nif touch \"$HOME/written\"; then echo written=yes; else echo written=no; fi\nif [ -e \"$OTHER/public\" ]; then echo other=seen; else echo other=hidden; fi\n",
        0o755,
    );
    let cfg = config(&a, &b, "").replace(
        "[tenant.ta.app.sh]\nprotocol = \"cgi\"\n",
        &format!(
            "[tenant.ta.app.sh]\nprotocol = \"cgi\"\nenv = {{ OTHER = \"{}\" }}\n",
            b.path.display()
        ),
    );
    let s = start_tenants(&dir, &[&a, &b], &cfg);
    let r = get_from(&s, "a.test", "/write.cgi");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    assert_eq!(value(&r.text(), "written"), "yes", "{r:?}");
    assert_eq!(value(&r.text(), "other"), "hidden", "{r:?}");
    assert!(a.join("written").exists());
}

#[test]
fn berths_init_stays_in_berths_cgroup_and_only_the_app_joins_the_tenants() {
    // A tenant that had throttled its own CPU to nothing made the supervisor
    // wait for seconds on every start: the init that builds its view ran in
    // the tenant's cgroup, under its CPU limit, while the supervisor waited.
    require_root();
    let dir = Dir::new();
    let a = HomeUnderHome::new(USER_A);
    let b = HomeUnderHome::new(USER_B);
    a.write(
        "public/slow.cgi",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\ncat /proc/self/cgroup\nsleep 3\n",
        0o755,
    );
    let s = start_tenants(&dir, &[&a, &b], &config(&a, &b, ""));
    let addr = s.addr();
    let request = std::thread::spawn(move || get_host(addr, "a.test", "/slow.cgi"));
    // The init's outer process: the supervisor's child, `berth app-init ta`.
    let sup = s.pid();
    let mut outer = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            outer = live_processes().into_iter().find_map(|(pid, st)| {
                (field(&st, "PPid") == [sup as u64]
                    && cmdline(pid).starts_with("berth app-init ta"))
                .then_some(pid)
            });
            outer.is_some()
        }),
        "no berth-init under the supervisor:\n{}",
        s.output()
    );
    let outer_cgroup = fs::read_to_string(format!("/proc/{}/cgroup", outer.unwrap())).unwrap();
    let r = request.join().unwrap();
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    let app_cgroup = r.text();
    if !app_cgroup.contains("ta.tenant") {
        // Without cgroups (none here) there is nothing to compare.
        assert!(
            s.output().contains("cgroups: none") || !s.output().contains("cgroups: v"),
            "{app_cgroup}"
        );
        return;
    }
    assert!(
        !outer_cgroup.contains("ta.tenant"),
        "berth's init is in the tenant's cgroup:\n{outer_cgroup}"
    );
}

#[test]
fn another_tenant_swapping_its_own_directory_for_a_symlink_does_not_stop_this_tenants_apps() {
    // B's site root lies below a directory B owns: every other view hides
    // the root's parent. B moved that directory away and put a symlink in
    // its place; the other views failed on "a symlink on the way" and no
    // app of theirs started.
    require_root();
    let dir = Dir::new();
    let a = HomeUnderHome::new(USER_A);
    let b = HomeUnderHome::new(USER_B);
    a.write("public/ran.cgi", RAN_CGI, 0o755);
    let b_sites = PathBuf::from(format!("/srv/berth-tisos-{}", std::process::id()));
    let _ = fs::remove_dir_all(&b_sites);
    fs::create_dir_all(b_sites.join("sites/b2.test/public")).unwrap();
    let _rm = Removed(b_sites.clone());
    chown_tree(&b_sites, b.uid, b.gid);
    let extra = format!(
        "\n[[tenant.tb.site]]\nhosts = [\"b2.test\"]\nroot = \"{}\"\n",
        b_sites.join("sites/b2.test/public").display()
    );
    let s = start_tenants(&dir, &[&a, &b], &config(&a, &b, &extra));
    assert_eq!(get_from(&s, "a.test", "/ran.cgi").text(), "ran\n");
    fs::rename(b_sites.join("sites"), b_sites.join("sites.old")).unwrap();
    std::os::unix::fs::symlink("/", b_sites.join("sites")).unwrap();
    let r = get_from(&s, "a.test", "/ran.cgi");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    assert_eq!(r.text(), "ran\n");
}

#[test]
fn a_tenant_frozen_in_its_cgroup_does_not_hold_the_supervisor() {
    // A tenant that throttled its own CPU to nothing held the supervisor
    // for seconds on every start: it waited for the app's execve, and the
    // app had joined the tenant's cgroup before it. A frozen cgroup (v1's
    // freezer) is the limit case: the app stops as it joins.
    require_root();
    let dir = Dir::new();
    let a = HomeUnderHome::new(USER_A);
    let b = HomeUnderHome::new(USER_B);
    a.write("public/ran.cgi", RAN_CGI, 0o755);
    b.write("public/ran.cgi", RAN_CGI, 0o755);
    let s = start_tenants(&dir, &[&a, &b], &config(&a, &b, ""));
    assert_eq!(get_from(&s, "a.test", "/ran.cgi").text(), "ran\n");
    let out = s.output();
    let Some(freezer) = out
        .split("freezer at ")
        .nth(1)
        .and_then(|rest| rest.split([')', ';']).next())
        .map(|p| PathBuf::from(p.trim()))
    else {
        panic!("this test needs cgroup v1's freezer (CI has it):\n{out}");
    };
    let state = freezer.join("ta.tenant/freezer.state");
    fs::write(&state, "FROZEN").unwrap();
    struct Thaw(PathBuf);
    impl Drop for Thaw {
        fn drop(&mut self) {
            let _ = fs::write(&self.0, "THAWED");
        }
    }
    let _thaw = Thaw(state);
    // A's request: its script freezes as it joins A's cgroup.
    let addr = s.addr();
    let _frozen = std::thread::spawn(move || get_host(addr, "a.test", "/ran.cgi"));
    std::thread::sleep(Duration::from_millis(300));
    // B is answered meanwhile. (The bound is generous: B answers in well
    // under a second; the supervisor held by A's start would answer it only
    // after its 15 s wait.)
    let started = std::time::Instant::now();
    let r = get_from(&s, "b.test", "/ran.cgi");
    assert_eq!(r.text(), "ran\n", "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "B waited {:?} behind A's frozen start",
        started.elapsed()
    );
}
