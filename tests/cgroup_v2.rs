//! cgroup v2 for real, in a guest with Debian's kernel under qemu (tests/vm):
//! this machine's kernel binds every controller to v1. These tests prove the
//! harness (layout, shares, users, port forwarding, deadlines, running this
//! binary inside). One boot per test.

mod common;
mod vm;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use common::{Dir, ensure_user, require_root};

/// The value of the first `key=value` line of `out`.
fn field<'a>(out: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    out.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key}= in the output:\n{out}"))
}

#[test]
fn guest_has_v2_controllers_fresh_tmpfs_and_shares() {
    require_root();
    let dir = Dir::new();
    dir.write("in/given.txt", "from the host\n");
    dir.mkdir("out");
    let probe = format!("/etc/berth-vm-probe-{}", std::process::id());
    let script = format!(
        r#"echo "controllers=$(cat /sys/fs/cgroup/cgroup.controllers)"
echo "subtree=$(cat /sys/fs/cgroup/cgroup.subtree_control)"
echo "self=$(cat /proc/self/cgroup)"
echo "v1=$(awk '$3 == "cgroup"' /proc/mounts | wc -l)"
for d in /tmp /run /dev/shm /var/lib/berth /var/log/berth; do
  echo "fs $d=$(awk -v d=$d '$2 == d {{print $3}}' /proc/mounts)"
  echo "empty $d=$(ls -A $d | wc -l)"
done
echo "fs cgroup=$(awk '$2 == "/sys/fs/cgroup" {{print $3}}' /proc/mounts)"
echo "given=$(cat /srv/in/given.txt)"
if echo x > /srv/in/new 2>/dev/null; then echo "in=writable"; else echo "in=read-only"; fi
echo "from the guest" > /srv/out/result.txt
echo probe > {probe} && echo "probe=$(cat {probe})"
echo "perl=$(perl -e 'print 6*7')"
exit 7
"#
    );
    let opts = vm::Opts::default()
        .share(dir.join("in"), "/srv/in", false)
        .share(dir.join("out"), "/srv/out", true);
    let out = vm::run(&script, &opts);
    eprintln!("boot {:?}, whole run {:?}", out.boot, out.elapsed);
    assert_eq!(out.code, 7, "{}", out.report());
    let o = &out.output;
    let controllers: Vec<&str> = field(o, "controllers").split(' ').collect();
    for c in ["memory", "pids", "cpu"] {
        assert!(controllers.contains(&c), "{c} missing in {controllers:?}");
    }
    assert_eq!(field(o, "subtree"), "", "the init enables no controller");
    assert_eq!(field(o, "self"), "0::/");
    assert_eq!(field(o, "v1"), "0", "no cgroup v1 hierarchy is mounted");
    for d in [
        "/tmp",
        "/run",
        "/dev/shm",
        "/var/lib/berth",
        "/var/log/berth",
    ] {
        assert_eq!(field(o, &format!("fs {d}")), "tmpfs", "{o}");
        assert_eq!(field(o, &format!("empty {d}")), "0", "{d} is fresh: {o}");
    }
    assert_eq!(field(o, "fs cgroup"), "cgroup2");
    assert_eq!(field(o, "given"), "from the host");
    assert_eq!(field(o, "in"), "read-only");
    assert_eq!(field(o, "perl"), "42");
    // The root is writable in the guest (an overlay on a tmpfs) and the
    // host's is untouched.
    assert_eq!(field(o, "probe"), "probe");
    assert!(!std::path::Path::new(&probe).exists());
    let result = dir.join("out/result.txt");
    assert_eq!(fs::read_to_string(&result).unwrap(), "from the guest\n");
    assert_eq!(
        fs::metadata(&result).unwrap().uid(),
        0,
        "root writes as root"
    );
}

#[test]
fn a_test_user_runs_perl_and_python_from_the_host_root() {
    require_root();
    let user = "berth-tvm";
    let (uid, gid) = ensure_user(user);
    let dir = Dir::new();
    let out_dir = dir.mkdir("out");
    fs::set_permissions(&out_dir, fs::Permissions::from_mode(0o777)).unwrap();
    let script = format!(
        r#"as() {{ setpriv --reuid={user} --regid={user} --clear-groups -- "$@"; }}
as /usr/bin/perl -e 'print "perl=$< $>\n"'
as /usr/bin/python3 -c 'import os; print("python=%d %d" % (os.getuid(), os.getgid()))'
as id -u
as cat /etc/shadow > /dev/null 2>&1; echo "shadow=$?"
as sh -c 'echo mine > /srv/out/by-user.txt'; echo "write=$?"
"#
    );
    let opts = vm::Opts::default().share(&out_dir, "/srv/out", true);
    let out = vm::run(&script, &opts);
    let o = out.success();
    assert_eq!(field(o, "perl"), format!("{uid} {uid}"));
    assert_eq!(field(o, "python"), format!("{uid} {gid}"));
    assert!(o.lines().any(|l| l == uid.to_string()), "{o}");
    assert_ne!(field(o, "shadow"), "0", "the host's permissions hold:\n{o}");
    assert_eq!(field(o, "write"), "0");
    let made = out_dir.join("by-user.txt");
    assert_eq!(fs::read_to_string(&made).unwrap(), "mine\n");
    let meta = fs::metadata(&made).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (uid, gid),
        "owned by the guest's user"
    );
}

/// GET `path` from 127.0.0.1:`port` (HTTP/1.0); the whole response.
fn get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: guest\r\n\r\n")?;
    let mut r = String::new();
    s.read_to_string(&mut r)?;
    Ok(r)
}

#[test]
fn a_forwarded_port_reaches_a_server_in_the_guest() {
    require_root();
    let script = r#"mkdir /tmp/www && echo "hello from the guest" > /tmp/www/index.txt
cd /tmp/www
python3 -m http.server 8000 --bind 0.0.0.0 > /tmp/http.log 2>&1 &
vm_signal started
vm_wait done 60 || exit 1
kill $!
grep -c 'GET /index.txt' /tmp/http.log | sed 's/^/requests=/'
"#;
    let mut guest = vm::Guest::start(script, &vm::Opts::default().forward(8000));
    assert!(
        guest.wait_file("started", Duration::from_secs(60)),
        "{}",
        guest.console()
    );
    let port = guest.port(8000);
    let until = Instant::now() + Duration::from_secs(30);
    let response = loop {
        // qemu accepts at once; until the server listens the connection is
        // closed without a response.
        match get(port, "/index.txt") {
            Ok(r) if r.starts_with("HTTP/1.0 200") => break r,
            _ if Instant::now() < until => std::thread::sleep(Duration::from_millis(200)),
            r => panic!("no answer through port {port}: {r:?}\n{}", guest.console()),
        }
    };
    assert!(
        response.ends_with("\r\n\r\nhello from the guest\n"),
        "{response}"
    );
    guest.signal("done");
    let out = guest.wait();
    let o = out.success();
    assert_ne!(field(o, "requests"), "0");
}

#[test]
fn a_hung_guest_is_killed_at_its_deadline() {
    require_root();
    let guest = vm::Guest::start("echo up; sleep 1000\n", &vm::Opts::default());
    assert!(
        guest.wait_console("up", Duration::from_secs(60)),
        "{}",
        guest.console()
    );
    let t = Instant::now();
    let out = guest.wait_within(Duration::from_secs(2));
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(out.timed_out);
    assert_eq!(out.code, -1);
    assert_eq!(out.output.trim(), "up", "{}", out.report());
}

#[test]
fn this_test_binary_runs_inside_a_guest() {
    require_root();
    if vm::in_guest() {
        // The shape of a test of berth's v2 backend: the body runs as root in
        // the guest, where the unified hierarchy has the controllers.
        let c = fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap();
        assert!(c.split_whitespace().any(|c| c == "memory"), "{c}");
        assert_eq!(fs::read_to_string("/proc/self/cgroup").unwrap(), "0::/\n");
        println!("inside: {}", c.trim());
        return;
    }
    let out = vm::run_self("this_test_binary_runs_inside_a_guest", &vm::Opts::default());
    let o = out.success();
    assert!(o.contains("inside: "), "{o}");
    assert!(o.contains("1 passed"), "{o}");
}
