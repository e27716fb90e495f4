//! cgroup v2 for real, in a guest with Debian's kernel under qemu (tests/vm):
//! this machine's kernel binds every controller to v1. These tests prove the
//! harness (layout, shares, users, port forwarding, deadlines, running this
//! binary inside) and the kernel behaviour berth's v2 backend relies on:
//! controllers at the root, `memory.max` with its OOM kill, `pids.max`,
//! `cgroup.kill` against a daemon, `cpu.max`. One boot per test.

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

/// A leaf `t/app` under the root with the memory, pids and cpu controllers
/// enabled on the way (as berth's v2 backend lays out tenant and app).
const LEAF: &str = r#"set -e
cd /sys/fs/cgroup
echo "+memory +pids +cpu" > cgroup.subtree_control
mkdir t
echo "+memory +pids +cpu" > t/cgroup.subtree_control
mkdir t/app
"#;

/// Runs the rest of a `sh -c` line inside the leaf.
const IN_LEAF: &str = "echo $$ > /sys/fs/cgroup/t/app/cgroup.procs; exec";

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
fn memory_max_oom_kills_and_counts() {
    require_root();
    let script = format!(
        r#"{LEAF}echo 32M > t/app/memory.max
if [ -e t/app/memory.swap.max ]; then echo 0 > t/app/memory.swap.max; fi
set +e
sh -c '{IN_LEAF} perl -e "\$b = chr(1) x (200 << 20); print qq(allocated\n)"'
echo "status=$?"
sed 's/^/events: /' t/app/memory.events
echo "peak=$(cat t/app/memory.peak)"
echo "populated=$(grep populated t/app/cgroup.events)"
"#
    );
    let out = vm::run(&script, &vm::Opts::default());
    let o = out.success();
    assert!(!o.contains("allocated"), "200 MiB fit in 32M:\n{o}");
    assert_eq!(field(o, "status"), "137", "killed by SIGKILL:\n{o}");
    assert!(o.lines().any(|l| l == "events: oom_kill 1"), "{o}");
    let peak: u64 = field(o, "peak").parse().unwrap();
    assert!(peak <= 32 << 20, "peak {peak} above memory.max");
    assert!(
        peak >= 16 << 20,
        "peak {peak}: python got nowhere near the limit"
    );
    assert_eq!(field(o, "populated"), "populated 0");
}

#[test]
fn pids_max_stops_a_fork_loop() {
    require_root();
    let script = format!(
        r#"{LEAF}echo 8 > t/app/pids.max
cat > /tmp/forks.pl <<'PL'
my $n = 0;
while ($n < 100) {{
    my $pid = fork();
    if (!defined $pid) {{ print "fork failed after $n: $!\n"; last }}
    if ($pid == 0) {{ sleep 60; exit 0 }}
    $n++;
}}
PL
set +e
sh -c '{IN_LEAF} perl /tmp/forks.pl'
echo "current=$(cat t/app/pids.current)"
sed 's/^/events: /' t/app/pids.events
echo 1 > t/app/cgroup.kill
"#
    );
    let out = vm::run(&script, &vm::Opts::default());
    let o = out.success();
    // perl itself and 7 children make 8.
    assert!(
        o.contains("fork failed after 7: Resource temporarily unavailable"),
        "{o}"
    );
    assert_eq!(field(o, "current"), "7", "the children still sleep");
    let max: u64 = o
        .lines()
        .find_map(|l| l.strip_prefix("events: max "))
        .unwrap_or_else(|| panic!("no max in pids.events:\n{o}"))
        .parse()
        .unwrap();
    assert!(max > 0, "{o}");
}

#[test]
fn cgroup_kill_kills_a_double_forked_setsid_daemon() {
    require_root();
    let script = format!(
        r#"{LEAF}cat > /tmp/daemon.pl <<'PL'
use POSIX qw(setsid);
defined(my $pid = fork()) or die "fork: $!";
if ($pid) {{ waitpid($pid, 0); exit 0 }}
setsid() or die "setsid: $!";
defined(my $pid2 = fork()) or die "fork: $!";
if ($pid2) {{
    open(my $f, '>', '/tmp/daemon.pid') or die; print $f "$pid2\n"; close $f; exit 0;
}}
open STDIN, '<', '/dev/null'; open STDOUT, '>', '/dev/null'; open STDERR, '>&', \*STDOUT;
exec 'sleep', '1000';
PL
sh -c '{IN_LEAF} perl /tmp/daemon.pl'
pid=$(cat /tmp/daemon.pid)
echo "ppid=$(awk '/^PPid:/ {{print $2}}' /proc/$pid/status)"
echo "sid=$(awk '{{print $6}}' /proc/$pid/stat)"
echo "mysid=$(awk '{{print $6}}' /proc/$$/stat)"
echo "procs=$(cat t/app/cgroup.procs)"
echo "daemon=$pid"
echo "before=$(grep populated t/app/cgroup.events)"
echo 1 > t/app/cgroup.kill
i=0
while ! grep -q 'populated 0' t/app/cgroup.events && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "after=$(grep populated t/app/cgroup.events)"
sleep 0.2
if [ -e /proc/$pid ] && ! grep -q '^State:.*Z' /proc/$pid/status; then echo "daemon_state=alive"; else echo "daemon_state=gone"; fi
"#
    );
    let out = vm::run(&script, &vm::Opts::default());
    let o = out.success();
    let pid = field(o, "daemon");
    assert_eq!(field(o, "ppid"), "1", "the daemon was orphaned:\n{o}");
    assert_ne!(field(o, "sid"), field(o, "mysid"), "a session of its own");
    assert_eq!(
        field(o, "procs"),
        pid,
        "only the daemon is left in the leaf"
    );
    assert_eq!(field(o, "before"), "populated 1");
    assert_eq!(field(o, "after"), "populated 0");
    assert_eq!(field(o, "daemon_state"), "gone");
}

#[test]
fn cpu_max_holds_a_busy_loop_near_its_share() {
    require_root();
    // The share of a CPU a busy loop in LEAF got over 2 s, by cpu.stat
    // (both clocks are the guest's).
    let measure = |leaf: &str| {
        format!(
            r#"sh -c 'echo $$ > /sys/fs/cgroup/t/{leaf}/cgroup.procs; exec perl -e "1 while 1"' &
loop=$!
sleep 1
u1=$(awk '/^usage_usec/ {{print $2}}' t/{leaf}/cpu.stat); t1=$(date +%s%N)
sleep 2
u2=$(awk '/^usage_usec/ {{print $2}}' t/{leaf}/cpu.stat); t2=$(date +%s%N)
kill $loop
echo "share {leaf}=$(awk -v u=$((u2 - u1)) -v t=$(((t2 - t1) / 1000)) 'BEGIN {{printf "%.3f", u / t}}')"
echo "throttled {leaf}=$(awk '/^nr_throttled/ {{print $2}}' t/{leaf}/cpu.stat)"
"#
        )
    };
    let script = format!(
        "{LEAF}echo '20000 100000' > t/app/cpu.max\nmkdir t/free\n{}{}",
        measure("app"),
        measure("free")
    );
    let out = vm::run(&script, &vm::Opts::default());
    let o = out.success();
    let share: f64 = field(o, "share app").parse().unwrap();
    let free: f64 = field(o, "share free").parse().unwrap();
    eprintln!("busy loop: {share} of a CPU at cpu.max 20000 100000, {free} without");
    assert!((0.08..=0.35).contains(&share), "{o}");
    assert!(field(o, "throttled app").parse::<u64>().unwrap() > 0, "{o}");
    assert!(free > 0.5, "the loop alone takes a CPU:\n{o}");
    assert_eq!(field(o, "throttled free"), "0");
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

/// GET `path` of `host` from 127.0.0.1:`port` (HTTP/1.0); the whole response.
fn get(port: u16, host: &str, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut r = String::new();
    s.read_to_string(&mut r)?;
    Ok(r)
}

/// GETs until the answer is a 200 (a server in the guest may not listen
/// yet: qemu accepts at once and closes without a response), for 60 s.
fn get_ok(guest: &vm::Guest, host: &str, path: &str) -> String {
    let port = guest.port(8000);
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        match get(port, host, path) {
            Ok(r) if r.get(8..).is_some_and(|t| t.starts_with(" 200 ")) => return r,
            _ if Instant::now() < until => std::thread::sleep(Duration::from_millis(200)),
            r => panic!("no 200 through port {port}: {r:?}\n{}", guest.console()),
        }
    }
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
    let response = get_ok(&guest, "guest", "/index.txt");
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

#[test]
fn berth_serves_from_the_guest_through_a_forwarded_port() {
    require_root();
    ensure_user("berth-tfront");
    let (uid, _) = ensure_user("berth-tvm");
    let script = format!(
        r#"set -e
home=/srv/tvm
mkdir -p $home/public/pl
echo "static in the guest" > $home/public/index.html
cat > $home/public/pl/hello.pl <<'PL'
print "Content-Type: text/plain\n\nperl as $< in ", `cat /proc/self/cgroup`;
PL
chown -R berth-tvm:berth-tvm $home
cat > /etc/berth.toml <<'TOML'
[server]
listen = ["0.0.0.0:8000"]
user = "berth-tfront"

[tenant.tvm]
user = "berth-tvm"
home = "/srv/tvm"

[[tenant.tvm.site]]
hosts = ["vm.test"]
root = "/srv/tvm/public"

[[tenant.tvm.site.route]]
path = "/pl/"
extensions = ["pl"]
app = "perl"

[tenant.tvm.app.perl]
protocol = "cgi"
command = ["/usr/bin/perl"]
dir = "/srv/tvm"
TOML
# Its log goes to the console, in the report of a failure.
{berth} serve --config /etc/berth.toml &
berth=$!
vm_signal started
vm_wait done 120
kill -TERM $berth
set +e
wait $berth
echo "berth=$?"
"#,
        berth = common::BERTH
    );
    let mut guest = vm::Guest::start(&script, &vm::Opts::default().forward(8000));
    assert!(
        guest.wait_file("started", Duration::from_secs(60)),
        "{}",
        guest.console()
    );
    let r = get_ok(&guest, "vm.test", "/index.html");
    assert!(r.ends_with("\r\n\r\nstatic in the guest\n"), "{r}");
    let r = get_ok(&guest, "vm.test", "/pl/hello.pl");
    assert!(r.contains(&format!("\r\n\r\nperl as {uid} in 0::/")), "{r}");
    guest.signal("done");
    let out = guest.wait();
    assert_eq!(field(out.success(), "berth"), "0", "stopped by SIGTERM");
}
