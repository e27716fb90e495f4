//! cgroup v2 for real, in a guest with Debian's kernel under qemu (tests/vm):
//! this machine's kernel binds every controller to v1. These tests prove the
//! harness (layout, shares, users, port forwarding, deadlines, running this
//! binary inside) and the kernel behaviour berth's v2 backend relies on:
//! controllers at the root, `memory.max` with its OOM kill, `pids.max`,
//! `cgroup.kill` against a daemon, `cpu.max`. Then berth's v2 backend end to
//! end, as tests/limits.rs tests v1 on this machine: berth runs in the guest
//! (the test's body runs there) and says it chose v2, lays out its tree and
//! the limits, contains a memory bomb, a fork bomb and a busy loop, kills
//! what apps and CGI scripts leave behind, and sweeps what a crashed berth
//! left. One boot per test.

mod common;
mod vm;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::apps::{HOST_PIDS, Home, alive, app_table, get_host, start_tenants, tenant_site};
use common::{Dir, ensure_user, eventually, require_root};

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
        // Fresh, but for the build itself when it is under one of them
        // (a checkout under /tmp is shared in at its own path).
        let build_here = Path::new(env!("CARGO_MANIFEST_DIR")).starts_with(d)
            || std::env::current_exe().unwrap().starts_with(d);
        let most = if build_here { "1" } else { "0" };
        let n = field(o, &format!("empty {d}"));
        assert!(n == "0" || n == most, "{d} is fresh: {o}");
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

// ---------------------------------------------------------------------------
// berth's v2 backend, end to end: berth runs in a guest (the body of each test
// below runs there, see `in_a_guest`) and is talked to over the guest's
// loopback, as tests/limits.rs does on this machine's v1 controllers.
// ---------------------------------------------------------------------------

const USER_A: &str = "berth-tv2a";
const USER_B: &str = "berth-tv2b";
const USER_C: &str = "berth-tv2c";
const USER_D: &str = "berth-tv2d";
const USER_E: &str = "berth-tv2e";

const CGROUP: &str = "/sys/fs/cgroup";

/// A socket-activated HTTP app in Perl (python3 takes seconds to load over
/// 9p in a fresh guest): `/hello`, `/alloc?mb=N` (allocates N MiB and keeps
/// it), `/spin?s=N` (a busy loop; answers the share of a CPU it got),
/// `/fork?n=N` (forks N sleeping children; answers how many it could),
/// `/daemon` (double fork and setsid; answers the daemon's pid).
const APP_PL: &str = r#"#!/usr/bin/perl
use strict;
use warnings;
use POSIX ();
use Time::HiRes ();

my @held;
open(my $listener, '+<&=', 3) or die "fd 3: $!";

sub answer {
    my ($c, $status, $body) = @_;
    my $head = "HTTP/1.1 $status X\r\nContent-Length: " . length($body)
        . "\r\nConnection: close\r\n\r\n";
    syswrite($c, $head . $body);
}

sub cpu { my @t = times; $t[0] + $t[1] }

while (1) {
    accept(my $c, $listener) or next;
    my $head = '';
    while ($head !~ /\r\n\r\n/) {
        sysread($c, $head, 4096, length $head) or last;
    }
    my ($path, $query) = $head =~ m{^GET ([^? ]*)\??(\S*)};
    my %q = map { split /=/, $_, 2 } split /&/, ($query // '');
    $path //= '';
    if ($path eq '/hello') {
        answer($c, 200, "hello $$");
    } elsif ($path eq '/alloc') {
        push @held, 'x' x ($q{mb} << 20);
        answer($c, 200, 'held ' . scalar(@held));
    } elsif ($path eq '/spin') {
        my ($w0, $c0) = (Time::HiRes::time(), cpu());
        my $w;
        do { $w = Time::HiRes::time() } while ($w - $w0 < $q{s});
        answer($c, 200, sprintf('%.3f', (cpu() - $c0) / ($w - $w0)));
    } elsif ($path eq '/fork') {
        my ($ok, $failed, @kids) = (0, '');
        for (1 .. $q{n}) {
            my $pid = fork();
            if (!defined $pid) { $failed = "$!"; last }
            if ($pid == 0) { sleep 5; POSIX::_exit(0) }
            push @kids, $pid;
            $ok++;
        }
        kill 'KILL', @kids;
        waitpid($_, 0) for @kids;
        answer($c, 200, "forked $ok failed $failed");
    } elsif ($path eq '/daemon') {
        pipe(my $r, my $w) or die "pipe: $!";
        my $pid = fork() // die "fork: $!";
        if ($pid == 0) {
            POSIX::setsid();
            my $pid2 = fork() // POSIX::_exit(1);
            if ($pid2 == 0) {
                syswrite($w, "$$");
                POSIX::close($_) for 0 .. 63;
                sleep 300;
                POSIX::_exit(0);
            }
            POSIX::_exit(0);
        }
        close $w;
        my $daemon = '';
        sysread($r, $daemon, 32);
        close $r;
        waitpid($pid, 0);
        answer($c, 200, $daemon);
    } else {
        answer($c, 404, 'no');
    }
    close $c;
}
"#;

/// Leaves a sleeping child in a session of its own, then answers its pid
/// and (on a line of its own) its cgroup.
const LEAVE_CHILD_CGI: &str = "#!/bin/sh
setsid sleep 300 </dev/null >/dev/null 2>&1 &
printf 'Content-Type: text/plain\\n\\n%s\\n' \"$!\"
cat /proc/self/cgroup
";

/// Allocates far more than its tenant may have.
const BOMB_CGI: &str = "#!/usr/bin/perl
my $x = 'x' x (200 * 1024 * 1024);
print \"Content-Type: text/plain\\n\\nsurvived\\n\";
";

/// Runs the test `name` of this binary in a guest, its users made first
/// (the guest sees the host's /etc/passwd); prints the boot and run times
/// and the `figure:` lines the body printed.
fn in_a_guest(name: &str, users: &[&str]) {
    ensure_user("berth-tfront");
    for u in users {
        ensure_user(u);
    }
    let opts = vm::Opts::default().timeout(Duration::from_secs(300));
    let out = vm::run_self(name, &opts);
    let o = out.success();
    assert!(o.contains("1 passed"), "{o}");
    eprintln!(
        "{name}: boot {:.1?}, whole run {:.1?}",
        out.boot.unwrap_or_default(),
        out.elapsed
    );
    // A line may follow the harness's "test NAME ... ".
    for l in o
        .lines()
        .filter_map(|l| l.find("figure: ").map(|at| &l[at..]))
    {
        eprintln!("{l}");
    }
}

/// A tenant's home with the Perl app and the CGI scripts.
fn v2_home(dir: &Dir, rel: &str, user: &'static str) -> Home {
    let home = Home::new(dir, rel, user, ensure_user(user));
    home.write("public/index.html", "static\n", 0o644);
    home.write("app/app.pl", APP_PL, 0o755);
    home.write("public/cgi/leave.cgi", LEAVE_CHILD_CGI, 0o755);
    home.write("public/cgi/bomb.cgi", BOMB_CGI, 0o755);
    home
}

/// A tenant with the app `py` (the Perl app, one process) mounted at `/`
/// and CGI scripts by extension under `/cgi/`, with `limits` lines.
fn v2_tenant(t: &str, home: &Home, host: &str, limits: &str) -> String {
    format!(
        "{site}
[[tenant.{t}.site.route]]
path = \"/\"
app = \"py\"

[[tenant.{t}.site.route]]
path = \"/cgi/\"
extensions = [\"cgi\"]
app = \"cgi\"
{py}
[tenant.{t}.app.cgi]
protocol = \"cgi\"
max_processes = 4

[tenant.{t}.limits]
{limits}
",
        site = tenant_site(t, home, host),
        py = app_table(
            t,
            "py",
            "http",
            &home.join("app"),
            &[home.join("app/app.pl").to_str().unwrap()],
            "max_processes = 1\n",
        ),
    )
}

/// Starts berth with `tenants` and waits for its line saying it chose v2;
/// returns it and its instance directory (from that line).
/// These tests find app processes by the pids they report, so apps get no
/// view of their own ([`HOST_PIDS`]); `berth_serves_from_the_guest_...`
/// runs its app in one.
fn start_v2(dir: &Dir, homes: &[&Home], tenants: &str) -> (common::Server, PathBuf) {
    let s = start_tenants(dir, homes, &format!("{tenants}{HOST_PIDS}"));
    let instance = v2_instance(&s);
    (s, instance)
}

/// The instance directory berth said it uses: "cgroups: v2 (v2 at DIR)".
fn v2_instance(s: &common::Server) -> PathBuf {
    let said = "cgroups: v2 (v2 at ";
    assert!(
        s.wait_output(said, Duration::from_secs(10)),
        "berth did not choose v2:\n{}",
        s.output()
    );
    let out = s.output();
    let at = out.find(said).unwrap() + said.len();
    let end = at + out[at..].find(')').unwrap();
    PathBuf::from(&out[at..end])
}

/// A cgroup file's contents, trimmed ("" if it cannot be read).
fn cg(dir: &Path, file: &str) -> String {
    fs::read_to_string(dir.join(file))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The value of `key` in a flat-keyed cgroup file (memory.events, cpu.stat).
fn cg_key(dir: &Path, file: &str, key: &str) -> u64 {
    cg(dir, file)
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {}/{file}", dir.display()))
}

/// A process's v2 cgroup: the path in its `0::PATH` line.
fn cgroup_of(pid: u32) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("process {pid}: no v2 line in {text:?}"))
        .to_string()
}

/// The pid an app answered with ("hello PID" or "PID").
fn pid_in(text: &str) -> u32 {
    text.trim()
        .trim_start_matches("hello ")
        .parse()
        .unwrap_or_else(|_| panic!("no pid in {text:?}"))
}

fn tenant_error_log(s: &common::Server, tenant: &str) -> String {
    fs::read_to_string(s.log_dir.join(tenant).join("error.log")).unwrap_or_default()
}

/// The rest of `path` below the cgroup2 mount, with a leading slash.
fn below_mount(path: &Path) -> String {
    format!("/{}", path.strip_prefix(CGROUP).unwrap().display())
}

#[test]
fn berth_chooses_v2_lays_out_its_tree_and_contains_a_memory_bomb_while_another_tenant_answers() {
    require_root();
    if !vm::in_guest() {
        in_a_guest(
            "berth_chooses_v2_lays_out_its_tree_and_contains_a_memory_bomb_while_another_tenant_answers",
            &[USER_A, USER_B],
        );
        return;
    }
    let dir = Dir::new();
    let a = v2_home(&dir, "a", USER_A);
    let b = v2_home(&dir, "b", USER_B);
    let cfg = format!(
        "{}{}",
        v2_tenant(
            "ta",
            &a,
            "a.test",
            "memory = \"48MiB\"\ntasks = 32\ncpu = 0.5"
        ),
        v2_tenant("tb", &b, "b.test", ""),
    );
    let (s, instance) = start_v2(&dir, &[&a, &b], &cfg);
    let root = Path::new(CGROUP);

    // berth works in its own cgroup (the guest's root) from its leaf
    // `supervisor`, and enables the controllers on the way down. The root
    // may hold processes: the others there (this test's) stay.
    assert_eq!(instance.parent(), Some(root), "{}", instance.display());
    assert_eq!(cgroup_of(s.pid()), "/supervisor");
    assert_eq!(cgroup_of(std::process::id()), "/");
    let ta = instance.join("ta.tenant");
    for d in [root, instance.as_path(), ta.as_path()] {
        let on = cg(d, "cgroup.subtree_control");
        for c in ["memory", "pids", "cpu"] {
            assert!(
                on.split(' ').any(|x| x == c),
                "{c} not enabled in {}: {on:?}",
                d.display()
            );
        }
    }
    // The tenants' limits, A's configured, B's built in.
    assert_eq!(cg(&ta, "memory.max"), (48u64 << 20).to_string());
    assert_eq!(cg(&ta, "pids.max"), "32");
    assert_eq!(cg(&ta, "cpu.max"), "50000 100000");
    let tb = instance.join("tb.tenant");
    assert_eq!(cg(&tb, "memory.max"), (1u64 << 30).to_string());
    assert_eq!(cg(&tb, "pids.max"), "256");
    assert_eq!(cg(&tb, "cpu.max"), "max 100000");
    let swap = ta.join("memory.swap.max").exists();
    if swap {
        assert_eq!(cg(&ta, "memory.swap.max"), "0", "no swap beyond memory");
    }
    println!("figure: memory.swap.max present: {swap}");

    // An app process is in a leaf of its own under its tenant and app.
    let r = get_host(s.addr(), "a.test", "/hello");
    assert_eq!(r.status, 200, "{}", r.text());
    let pid = pid_in(&r.text());
    let path = cgroup_of(pid);
    let app = format!("{}/py.app/", below_mount(&ta));
    let leaf = path
        .strip_prefix(&app)
        .unwrap_or_else(|| panic!("process {pid} in {path}, not under {app}"));
    let n = leaf
        .strip_suffix(".proc")
        .unwrap_or_else(|| panic!("{path}"));
    assert!(n.parse::<u32>().is_ok(), "{path}");

    // Tenant A's app takes 200 MiB: the OOM killer ends it at 48 MiB and
    // the request gets a 502, three times over, while B answers.
    assert_eq!(get_host(s.addr(), "b.test", "/hello").status, 200);
    let calm: Vec<Duration> = (0..10)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(get_host(s.addr(), "b.test", "/hello").status, 200);
            t.elapsed()
        })
        .collect();
    let addr = s.addr();
    let bomber = std::thread::spawn(move || {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                let status = get_host(addr, "a.test", "/alloc?mb=200").status;
                (status, t.elapsed())
            })
            .collect::<Vec<_>>()
    });
    let mut during = Vec::new();
    while !bomber.is_finished() || during.len() < 10 {
        let t = Instant::now();
        let r = get_host(s.addr(), "b.test", "/hello");
        assert_eq!(r.status, 200, "B during A's bomb: {}", r.text());
        during.push(t.elapsed());
    }
    let bombs = bomber.join().unwrap();
    assert!(
        bombs.iter().all(|&(st, _)| st == 502),
        "A's bomb was answered {bombs:?}"
    );
    let max = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    println!(
        "figure: OOM: A's 200 MiB requests answered {bombs:?}; B's slowest of {} calm {:?}, of {} during {:?}",
        calm.len(),
        max(&calm),
        during.len(),
        max(&during)
    );
    // A CGI script of A's is held to the same limit.
    let r = get_host(s.addr(), "a.test", "/cgi/bomb.cgi");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(!r.text().contains("survived"));

    let mut log = String::new();
    eventually(Duration::from_secs(10), || {
        log = tenant_error_log(&s, "ta");
        log.contains("a CGI script was killed") && log.matches("[py] process").count() >= 3
    });
    assert!(
        log.contains("[py] process")
            && log.contains("killed by the OOM killer")
            && log.contains("memory limit (48MiB)"),
        "{log}"
    );
    assert!(
        log.contains("[cgi] a CGI script was killed by the OOM killer"),
        "{log}"
    );
    assert!(!tenant_error_log(&s, "tb").contains("OOM"));
    let kills = cg_key(&ta, "memory.events", "oom_kill");
    let peak: u64 = cg(&ta, "memory.peak").parse().unwrap();
    println!(
        "figure: OOM: tenant A's memory.events oom_kill {kills}, memory.peak {} KiB of 48 MiB",
        peak >> 10
    );
    assert!(kills >= 4, "{kills}");
    assert!(peak <= 48 << 20, "{peak}");
    assert_eq!(cg_key(&tb, "memory.events", "oom_kill"), 0);
    // A comes back.
    assert!(
        eventually(Duration::from_secs(20), || get_host(
            s.addr(),
            "a.test",
            "/hello"
        )
        .status
            == 200),
        "{}",
        s.output()
    );
}

#[test]
fn on_v2_a_fork_bomb_stops_at_tasks_and_cpu_holds_a_busy_loop() {
    require_root();
    if !vm::in_guest() {
        in_a_guest(
            "on_v2_a_fork_bomb_stops_at_tasks_and_cpu_holds_a_busy_loop",
            &[USER_C],
        );
        return;
    }
    let dir = Dir::new();
    let c = v2_home(&dir, "c", USER_C);
    let cfg = v2_tenant("tc", &c, "c.test", "tasks = 16");
    let (mut s, instance) = start_v2(&dir, &[&c], &cfg);
    let tc = instance.join("tc.tenant");

    let r = get_host(s.addr(), "c.test", "/fork?n=100");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.output());
    let text = r.text();
    let forked: u32 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    println!("figure: fork bomb at tasks = 16: {text}");
    assert!(
        forked < 16 && text.contains("Resource temporarily unavailable"),
        "{text}"
    );
    // The kernel (before 6.13) counts the refusals in the forking process's
    // leaf, not in the tenant's group whose pids.max refused them.
    let leaves: u64 = fs::read_dir(tc.join("py.app"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| cg_key(&e.path(), "pids.events", "max"))
        .sum();
    println!(
        "figure: pids.events max: tenant {}, its leaves {leaves}",
        cg_key(&tc, "pids.events", "max")
    );

    // A reload sets the tenant's new cpu limit on the running process (set
    // only now: the app's first start, at a fifth of a slow CPU, would take
    // longer than its start_timeout).
    assert_eq!(cg(&tc, "cpu.max"), "max 100000");
    let config = fs::read_to_string(&s.config).unwrap();
    fs::write(
        &s.config,
        config.replace("tasks = 16", "tasks = 16\ncpu = 0.2"),
    )
    .unwrap();
    s.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        eventually(Duration::from_secs(20), || cg(&tc, "cpu.max")
            == "20000 100000"),
        "{}",
        s.output()
    );
    // 20% of a CPU, as the app measured it over three seconds.
    let r = get_host(s.addr(), "c.test", "/spin?s=3");
    assert_eq!(r.status, 200, "{}", r.text());
    let share: f64 = r.text().trim().parse().unwrap();
    let throttled = cg_key(&tc, "cpu.stat", "nr_throttled");
    println!("figure: busy loop at cpu = 0.2: {share} of a CPU, throttled {throttled} times");
    assert!(
        (0.05..0.35).contains(&share),
        "a busy loop under cpu = 0.2 got {share} of a CPU"
    );
    assert!(throttled > 0);
    assert_eq!(s.stop(), Some(0));

    // What berth reads for the meter counts the refusals of the tenant's
    // leaves, those gone too.
    let (kind, oom_kills, refusals) =
        common::cgroups::limit_events_stay_counted_when_their_leaves_go("berth-counts");
    assert_eq!(kind.name(), "v2");
    assert_eq!((oom_kills, refusals), (2, 2));
}

/// The subdirectories (child cgroups) of `dir`.
fn children(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn on_v2_what_apps_and_cgi_scripts_leave_running_is_gone_after_a_stop_a_run_and_sigterm() {
    require_root();
    if !vm::in_guest() {
        in_a_guest(
            "on_v2_what_apps_and_cgi_scripts_leave_running_is_gone_after_a_stop_a_run_and_sigterm",
            &[USER_D],
        );
        return;
    }
    let dir = Dir::new();
    let d = v2_home(&dir, "d", USER_D);
    let uid = ensure_user(USER_D).0;
    let cfg = v2_tenant("td", &d, "d.test", "");
    let (mut s, instance) = start_v2(&dir, &[&d], &cfg);
    let td = instance.join("td.tenant");

    // A CGI script's child in a session of its own goes when the script
    // ends, and so does the run's leaf.
    let r = get_host(s.addr(), "d.test", "/cgi/leave.cgi");
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let (left, cgroup) = text.split_once('\n').unwrap();
    let left = pid_in(left);
    let run = cgroup.trim().strip_prefix("0::").unwrap_or(cgroup);
    let under = format!("{}/cgi.app/", below_mount(&td));
    assert!(
        run.strip_prefix(&under)
            .and_then(|leaf| leaf.strip_suffix(".cgi"))
            .is_some_and(|n| n.parse::<u32>().is_ok()),
        "the CGI run in {run}, not in a leaf under {under}"
    );
    assert!(
        eventually(Duration::from_secs(10), || !alive(left)),
        "the CGI script's child {left} outlived it"
    );
    assert!(
        eventually(Duration::from_secs(5), || children(&td.join("cgi.app"))
            .is_empty()),
        "{:?}",
        children(&td.join("cgi.app"))
    );

    // A daemon of the app's is in its process's leaf although it left that
    // process's session, and goes when the app is stopped (a reload that
    // changes the app's environment replaces its processes).
    let app = pid_in(&get_host(s.addr(), "d.test", "/hello").text());
    let r = get_host(s.addr(), "d.test", "/daemon");
    assert_eq!(r.status, 200, "{}", r.text());
    let daemon = pid_in(&r.text());
    assert!(alive(daemon));
    let leaf = cgroup_of(app);
    assert_eq!(cgroup_of(daemon), leaf);
    assert!(
        leaf.starts_with(&format!("{}/py.app/", below_mount(&td))),
        "{leaf}"
    );
    let changed = fs::read_to_string(&s.config).unwrap().replace(
        "max_processes = 1\n",
        "max_processes = 1\nenv = { X = \"1\" }\n",
    );
    fs::write(&s.config, changed).unwrap();
    s.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        eventually(Duration::from_secs(20), || !alive(daemon)),
        "daemon {daemon} outlived its app's stop\n{}",
        s.output()
    );
    assert!(!alive(app));
    let leaf_dir = Path::new(CGROUP).join(leaf.trim_start_matches('/'));
    assert!(
        eventually(Duration::from_secs(5), || !leaf_dir.exists()),
        "{} stays",
        leaf_dir.display()
    );

    // At berth's SIGTERM, everything of the tenant's is gone, and berth's
    // instance directory with it.
    let r = get_host(s.addr(), "d.test", "/daemon");
    assert_eq!(r.status, 200, "{}", r.text());
    let daemon = pid_in(&r.text());
    assert!(alive(daemon));
    assert_eq!(s.stop(), Some(0), "{}", s.output());
    assert!(!alive(daemon));
    common::apps::assert_nothing_left(&dir, USER_D, uid);
    assert!(
        !instance.exists(),
        "{} stays: {:?}",
        instance.display(),
        children(&instance)
    );
}

#[test]
fn on_v2_what_a_crashed_berth_left_is_swept_at_its_next_start() {
    require_root();
    if !vm::in_guest() {
        in_a_guest(
            "on_v2_what_a_crashed_berth_left_is_swept_at_its_next_start",
            &[USER_E],
        );
        return;
    }
    // berth in a service's cgroup with the controllers delegated to it (as
    // systemd's Delegate=yes gives), not at the root: the test's process is
    // in it too, as a service's wrapper would be.
    let root = Path::new(CGROUP);
    fs::write(root.join("cgroup.subtree_control"), "+memory +pids +cpu").unwrap();
    let svc = root.join("svc");
    fs::create_dir(&svc).unwrap();
    fs::write(svc.join("cgroup.procs"), "0").unwrap();
    assert_eq!(cgroup_of(std::process::id()), "/svc");

    let dir = Dir::new();
    let e = v2_home(&dir, "e", USER_E);
    let cfg = v2_tenant("te", &e, "e.test", "");
    let (mut s, instance) = start_v2(&dir, &[&e], &cfg);
    assert_eq!(instance.parent(), Some(svc.as_path()));
    assert_eq!(cgroup_of(s.pid()), "/svc/supervisor");
    // A cgroup but the root holds no process once it enables controllers:
    // berth moved this test's process (its parent) to its leaf too.
    assert_eq!(cgroup_of(std::process::id()), "/svc/supervisor");

    let app = pid_in(&get_host(s.addr(), "e.test", "/hello").text());
    let r = get_host(s.addr(), "e.test", "/daemon");
    assert_eq!(r.status, 200, "{}", r.text());
    let daemon = pid_in(&r.text());

    // berth and its front end die without a word; the app and its daemon
    // stay.
    let front = s.front_pid();
    let mut berth = s.child.take().unwrap();
    berth.kill().unwrap();
    berth.wait().unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(front as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    assert!(eventually(Duration::from_secs(5), || !alive(front)));
    std::thread::sleep(Duration::from_millis(500));
    assert!(alive(app) && alive(daemon), "{app} {daemon}");

    // The next berth on the same state_dir kills them at its start.
    let mut again = common::Server::spawn(&s.config, s.port, s.tls_port, s.log_dir.clone());
    again.wait_ready();
    assert_eq!(v2_instance(&again), instance);
    assert_eq!(cgroup_of(again.pid()), "/svc/supervisor", "not nested");
    assert!(
        again.wait_output(
            "killed 2 processes left by an earlier run",
            Duration::from_secs(5)
        ),
        "{}",
        again.output()
    );
    assert!(!alive(app) && !alive(daemon), "{app} {daemon}");
    // And serves.
    let r = get_host(again.addr(), "e.test", "/hello");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(again.stop(), Some(0), "{}", again.output());
    assert!(!instance.exists(), "{:?}", children(&instance));
}
