//! Limits that hold (invariant 5, issue 8), as root on this machine's
//! cgroups (v1 controllers here; v2 runs in a guest, see cgroup_v2.rs): a
//! memory bomb in one tenant is contained at its limit and reported as an OOM
//! kill while another tenant keeps answering, a fork bomb stops at `tasks`,
//! `cpu` holds a busy loop, and what an app or a CGI script leaves running in
//! a session of its own is gone after a stop, a CGI run and berth's SIGTERM.
//! With `cgroups = "none"` the fallbacks are rlimits.
mod common;
use common::apps::*;
use common::*;

use std::fs;
use std::time::{Duration, Instant};

const USER_A: &str = "berth-tlima";
const USER_B: &str = "berth-tlimb";
const USER_C: &str = "berth-tlimc";
const USER_D: &str = "berth-tlimd";
const USER_E: &str = "berth-tlime";
const USER_F: &str = "berth-tlimf";
const USER_G: &str = "berth-tlimg";
const USER_H: &str = "berth-tlimh";
const USER_I: &str = "berth-tlimi";

/// A socket-activated HTTP app: `/hello`, `/alloc?mb=N` (allocates and
/// touches N MiB, keeps it), `/spin?s=N` (a busy loop; answers the share of
/// a core it got), `/fork?n=N` (forks N sleeping children; answers how many
/// it could), `/daemon` (double fork and setsid; answers the daemon's pid).
const APP_PY: &str = r#"#!/usr/bin/python3
import os, socket, sys, time, urllib.parse

held = []

def answer(conn, status, body):
    body = body.encode()
    conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (status, len(body), body))

def handle(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(4096)
        if not more:
            return
        data += more
    target = data.split(b" ")[1].decode()
    url = urllib.parse.urlparse(target)
    q = dict(urllib.parse.parse_qsl(url.query))
    if url.path == "/hello":
        answer(conn, 200, "hello %d" % os.getpid())
    elif url.path == "/alloc":
        mb = int(q["mb"])
        for _ in range(mb):
            held.append(bytearray(b"x" * (1 << 20)))
        answer(conn, 200, "held %d" % len(held))
    elif url.path == "/spin":
        wall0, cpu0 = time.monotonic(), time.process_time()
        while time.monotonic() - wall0 < float(q["s"]):
            pass
        share = (time.process_time() - cpu0) / (time.monotonic() - wall0)
        answer(conn, 200, "%.3f" % share)
    elif url.path == "/fork":
        ok, failed, kids = 0, "", []
        for _ in range(int(q["n"])):
            try:
                pid = os.fork()
            except OSError as e:
                failed = e.strerror
                break
            if pid == 0:
                time.sleep(5)
                os._exit(0)
            kids.append(pid)
            ok += 1
        for k in kids:
            os.kill(k, 9)
            os.waitpid(k, 0)
        answer(conn, 200, "forked %d failed %s" % (ok, failed))
    elif url.path == "/daemon":
        r, w = os.pipe()
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.write(w, b"%d" % os.getpid())
                os.closerange(0, 1024)
                time.sleep(300)
                os._exit(0)
            os._exit(0)
        os.close(w)
        pid = os.read(r, 32).decode()
        os.close(r)
        os.wait()
        answer(conn, 200, pid)
    else:
        answer(conn, 404, "no")

listener = socket.socket(fileno=3)
while True:
    conn, _ = listener.accept()
    try:
        handle(conn)
    except MemoryError:
        answer(conn, 500, "MemoryError")
    finally:
        conn.close()
"#;

/// Leaves a sleeping child in a session of its own, then answers with its pid.
const LEAVE_CHILD_CGI: &str = "#!/bin/sh
setsid sleep 300 </dev/null >/dev/null 2>&1 &
printf 'Content-Type: text/plain\\n\\n%s\\n' \"$!\"
";

/// Allocates far more than its tenant may have.
const BOMB_CGI: &str = "#!/usr/bin/perl
my $x = 'x' x (400 * 1024 * 1024);
print \"Content-Type: text/plain\\n\\nsurvived\\n\";
";

fn home(dir: &Dir, rel: &str, user: &'static str) -> Home {
    let home = Home::new(dir, rel, user, ensure_user(user));
    home.write("public/index.html", "static\n", 0o644);
    home.write("app/app.py", APP_PY, 0o755);
    home.write("public/cgi/leave.cgi", LEAVE_CHILD_CGI, 0o755);
    home.write("public/cgi/bomb.cgi", BOMB_CGI, 0o755);
    home
}

/// A tenant with the app `py` mounted at `/` and CGI scripts by extension,
/// with `limits` lines in its `limits` table.
fn tenant(t: &str, home: &Home, host: &str, limits: &str, app_extra: &str) -> String {
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
            &[home.app_py().to_str().unwrap()],
            &format!("max_processes = 1\n{app_extra}"),
        ),
    )
}

impl Home {
    fn app_py(&self) -> std::path::PathBuf {
        self.join("app/app.py")
    }
}

fn p99(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() * 99 / 100]
}

/// 100 requests to `/hello` of `host`, each answered 200; their p99.
fn latency(s: &Server, host: &str) -> Duration {
    let mut samples = Vec::new();
    for _ in 0..100 {
        let t0 = Instant::now();
        let r = get_host(s.addr(), host, "/hello");
        assert_eq!(r.status, 200, "{host}: {}", r.text());
        samples.push(t0.elapsed());
    }
    p99(&mut samples)
}

fn error_log(s: &Server, tenant: &str) -> String {
    fs::read_to_string(s.log_dir.join(tenant).join("error.log")).unwrap_or_default()
}

#[test]
fn a_memory_bomb_is_contained_at_the_tenants_limit_and_reported_while_another_tenant_answers() {
    require_root();
    let dir = Dir::new();
    let a = home(&dir, "a", USER_A);
    let b = home(&dir, "b", USER_B);
    let cfg = format!(
        "{}{}",
        tenant("ta", &a, "a.test", "memory = \"64MiB\"", ""),
        tenant("tb", &b, "b.test", "", ""),
    );
    let s = start_tenants(&dir, &[&a, &b], &cfg);
    assert_eq!(get_host(s.addr(), "a.test", "/hello").status, 200);
    let calm = latency(&s, "b.test");

    // Tenant A's app takes 400 MiB, again and again; each time the kernel's
    // OOM killer ends it at 64 MiB and a new process takes the next request.
    let addr = s.addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bomber = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                statuses.push(get_host(addr, "a.test", "/alloc?mb=400").status);
            }
            statuses
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let bombed = latency(&s, "b.test");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = bomber.join().unwrap();
    assert!(!statuses.is_empty());
    assert!(
        statuses.iter().all(|&st| st == 502 || st == 503),
        "the bomb was never stopped: {statuses:?}"
    );
    assert!(
        bombed < calm * 20 + Duration::from_millis(300),
        "tenant B's p99 went from {calm:?} to {bombed:?} while A's app was OOM-killed"
    );
    // A CGI script of A's is held to the same limit.
    let r = get_host(s.addr(), "a.test", "/cgi/bomb.cgi");
    assert_ne!(r.text().trim(), "survived", "{}", r.status);

    let mut log = String::new();
    eventually(Duration::from_secs(5), || {
        log = error_log(&s, "ta");
        log.contains("a CGI script was killed")
    });
    assert!(
        log.contains("[py] process")
            && log.contains("killed by the OOM killer")
            && log.contains("memory limit (64MiB)"),
        "{log}"
    );
    assert!(
        log.contains("[cgi] a CGI script was killed by the OOM killer"),
        "{log}"
    );
    assert!(!error_log(&s, "tb").contains("OOM"));
    // A comes back.
    let mut again = 0;
    eventually(Duration::from_secs(10), || {
        again = get_host(s.addr(), "a.test", "/hello").status;
        again == 200
    });
    assert_eq!(again, 200);
}

#[test]
fn a_fork_bomb_stops_at_tasks_and_cpu_holds_a_busy_loop() {
    require_root();
    let dir = Dir::new();
    let c = home(&dir, "c", USER_C);
    let cfg = tenant("tc", &c, "c.test", "tasks = 16\ncpu = 0.2", "");
    let s = start_tenants(&dir, &[&c], &cfg);

    let r = get_host(s.addr(), "c.test", "/fork?n=100");
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let forked: u32 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        forked < 16 && text.contains("Resource temporarily unavailable"),
        "{text}"
    );

    // 20% of a core, measured by the app itself over three seconds.
    let r = get_host(s.addr(), "c.test", "/spin?s=3");
    assert_eq!(r.status, 200);
    let share: f64 = r.text().trim().parse().unwrap();
    assert!(
        (0.05..0.35).contains(&share),
        "a busy loop under cpu = 0.2 got {share} of a core"
    );
}

#[test]
fn what_apps_and_cgi_scripts_leave_running_is_gone_after_a_stop_a_run_and_sigterm() {
    require_root();
    let dir = Dir::new();
    let d = home(&dir, "d", USER_D);
    let uid = ensure_user(USER_D).0;
    let cfg = tenant("td", &d, "d.test", "", "");
    // Its processes are found by the pid they report.
    let mut s = start_tenants(&dir, &[&d], &(cfg + HOST_PIDS));

    // A CGI script's child in a session of its own goes when the script ends.
    let r = get_host(s.addr(), "d.test", "/cgi/leave.cgi");
    assert_eq!(r.status, 200);
    let left: u32 = r.text().trim().parse().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || !alive(left)),
        "the CGI script's child {left} outlived it"
    );

    // A daemon of the app's goes when the app is stopped (a reload that
    // changes the app's environment replaces its processes).
    let r = get_host(s.addr(), "d.test", "/daemon");
    assert_eq!(r.status, 200, "{}", r.text());
    let daemon: u32 = r.text().trim().parse().unwrap();
    assert!(alive(daemon));
    // It is in its app process's leaf, in every hierarchy, although it left
    // that process's session; but for `cpu`, since the tenant has no cpu
    // limit (a cpu cgroup costs throughput: docs/limits.md).
    let cgroup = fs::read_to_string(format!("/proc/{daemon}/cgroup")).unwrap();
    for c in ["memory", "pids", "cpuacct", "freezer", "cpu"] {
        let line = cgroup
            .lines()
            .find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|cs| cs.split(',').any(|x| x == c))
            })
            .unwrap_or_else(|| panic!("{c}: {cgroup}"));
        let in_leaf = line.contains("/td.tenant/py.app/") && line.ends_with(".proc");
        assert_eq!(in_leaf, c != "cpu", "{c}: {cgroup}");
    }
    let changed = fs::read_to_string(&s.config).unwrap().replace(
        "max_processes = 1\n",
        "max_processes = 1\nenv = { X = \"1\" }\n",
    );
    fs::write(&s.config, changed).unwrap();
    s.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        eventually(Duration::from_secs(15), || !alive(daemon)),
        "daemon {daemon} outlived its app's stop"
    );

    // And at berth's SIGTERM, everything of the tenant's is gone.
    let r = get_host(s.addr(), "d.test", "/daemon");
    assert_eq!(r.status, 200, "{}", r.text());
    let daemon: u32 = r.text().trim().parse().unwrap();
    assert!(alive(daemon));
    assert_eq!(s.stop(), Some(0));
    assert_nothing_left(&dir, USER_D, uid);
}

#[test]
fn without_cgroups_memory_and_tasks_fall_back_to_rlimits_and_cores_are_off() {
    require_root();
    let dir = Dir::new();
    let e = home(&dir, "e", USER_E);
    let cfg = tenant("te", &e, "e.test", "memory = \"96MiB\"\ntasks = 40", "");
    e.own();
    let (block, port, tls_port) = server_block(
        &dir,
        "keepalive_timeout = \"5s\"\ndrain_timeout = \"5s\"\ncgroups = \"none\"",
    );
    // Its processes are found by the pid they report.
    let s = Server::start(&dir, &format!("{block}{cfg}{HOST_PIDS}"), port, tls_port);
    assert!(
        s.wait_output(
            "cgroups: none (cgroups = \"none\" in [server])",
            Duration::from_secs(5)
        ),
        "{}",
        s.output()
    );
    let r = get_host(s.addr(), "e.test", "/hello");
    assert_eq!(r.status, 200);
    let pid: u32 = r
        .text()
        .trim()
        .trim_start_matches("hello ")
        .parse()
        .unwrap();
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let row = |name: &str| -> String {
        let line = limits.lines().find(|l| l.starts_with(name)).unwrap();
        line[name.len()..]
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(
        row("Max data size"),
        format!("{0} {0}", 96 << 20),
        "{limits}"
    );
    assert_eq!(row("Max processes"), "40 40", "{limits}");
    assert_eq!(row("Max core file size"), "0 0", "{limits}");
    // Past its memory, the app's allocation fails instead of the machine's.
    let r = get_host(s.addr(), "e.test", "/alloc?mb=200");
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.text(), "MemoryError");
    assert_eq!(get_host(s.addr(), "e.test", "/hello").status, 200);
}

#[test]
fn a_process_above_process_memory_is_recycled_after_its_request_and_named_once() {
    require_root();
    let dir = Dir::new();
    let f = home(&dir, "f", USER_F);
    let cfg = tenant("tf", &f, "f.test", "process_memory = \"64MiB\"", "");
    // Its processes are found by the pid they report.
    let s = start_tenants(&dir, &[&f], &(cfg + HOST_PIDS));
    let pid_of = |s: &Server| -> String {
        let r = get_host(s.addr(), "f.test", "/hello");
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
    };
    let first = pid_of(&s);
    // Below the limit, the process stays.
    assert_eq!(get_host(s.addr(), "f.test", "/alloc?mb=8").status, 200);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(pid_of(&s), first);
    // Above it, the request is answered in full, then the process goes.
    let r = get_host(s.addr(), "f.test", "/alloc?mb=100");
    assert_eq!((r.status, r.text()), (200, "held 108".to_string()));
    let mut now = first.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            now = pid_of(&s);
            now != first
        }),
        "still {now}"
    );
    let mut log = String::new();
    eventually(Duration::from_secs(5), || {
        log = error_log(&s, "tf");
        log.contains("above process_memory")
    });
    assert!(
        log.contains("[py] process 1 uses")
            && log.contains("above process_memory (64MiB): recycled"),
        "{log}"
    );
    assert_eq!(log.matches("above process_memory").count(), 1, "{log}");
}

#[test]
fn a_tenants_oom_kills_and_pids_refusals_count_those_of_its_leaves_gone_or_not() {
    require_root();
    // v1 counts both in the leaf where they happen, not in the tenant's group.
    let instance = format!("berth-counts-{}", std::process::id());
    let (kind, oom_kills, refusals) =
        common::cgroups::limit_events_stay_counted_when_their_leaves_go(&instance);
    assert_eq!(kind.name(), "v1");
    assert_eq!((oom_kills, refusals), (2, 2));
}

/// The group of `tenant` in the v1 hierarchy of `controller` (the only one
/// of that name under /sys/fs/cgroup/CONTROLLER).
fn tenant_group(controller: &str, tenant: &str) -> std::path::PathBuf {
    let mut found = Vec::new();
    let mut stack = vec![std::path::Path::new("/sys/fs/cgroup").join(controller)];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name() == format!("{tenant}.tenant").as_str() {
                found.push(e.path());
            } else if !e.file_name().to_string_lossy().ends_with(".tenant") {
                stack.push(e.path());
            }
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    found.pop().unwrap()
}

fn as_user(user: &str, sh: &str) -> String {
    let out = std::process::Command::new("runuser")
        .args(["-u", user, "--", "sh", "-c", sh])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_tenant_cannot_read_another_tenants_cgroup() {
    require_root();
    let dir = Dir::new();
    let g = home(&dir, "g", USER_G);
    let h = home(&dir, "h", USER_H);
    let cfg = format!(
        "{}{}",
        tenant("tg", &g, "g.test", "", ""),
        tenant("th", &h, "h.test", "", "")
    );
    let s = start_tenants(&dir, &[&g, &h], &cfg);
    let r = get_host(s.addr(), "g.test", "/hello");
    assert_eq!(r.status, 200);
    let pid = r.text().trim().trim_start_matches("hello ").to_string();
    let mem = tenant_group("memory", "tg");
    let instance = mem.parent().unwrap();
    // Tenant th's user: neither the list of tenants, nor tg's pids, memory
    // or CPU (a side channel on its traffic and on the meter's samples).
    let out = as_user(
        USER_H,
        &format!(
            "ls {inst}; cat {m}/*.app/*/cgroup.procs; cat {m}/memory.usage_in_bytes; \
             cat {m}/memory.max_usage_in_bytes; echo end",
            inst = instance.display(),
            m = mem.display()
        ),
    );
    assert!(!out.contains(&format!("\n{pid}\n")), "{out}");
    assert!(
        out.lines()
            .all(|l| l == "end" || l.contains("Permission denied")),
        "{out}"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(instance).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700);
}

/// Ignores SIGTERM: a retired process of it lingers STOP_GRACE in its leaf.
const STUBBORN_PY: &str = r#"#!/usr/bin/python3
import os, signal, socket
signal.signal(signal.SIGTERM, signal.SIG_IGN)
listener = socket.socket(fileno=3)
while True:
    conn, _ = listener.accept()
    conn.recv(4096)
    body = b"hello %d" % os.getpid()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    conn.close()
"#;

#[test]
fn berths_own_spawns_cannot_take_a_tenant_past_tasks() {
    require_root();
    let dir = Dir::new();
    let i = home(&dir, "i", USER_I);
    i.write("app/app.py", STUBBORN_PY, 0o755);
    // One request per process, each retired process lingering for seconds:
    // without a check before each start, processes moved into the tenant's
    // cgroup would pile up past pids.max (a move is not held to it).
    let cfg = tenant("ti", &i, "i.test", "tasks = 8", "max_requests = 1");
    let s = start_tenants(&dir, &[&i], &cfg);
    let pids = tenant_group("pids", "ti");
    let mut most = 0u64;
    let mut statuses = std::collections::BTreeMap::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(6) {
        *statuses
            .entry(get_host(s.addr(), "i.test", "/hello").status)
            .or_insert(0) += 1;
        let now: u64 = fs::read_to_string(pids.join("pids.current"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        most = most.max(now);
    }
    assert!(
        most <= 8,
        "pids.current reached {most} under pids.max 8: {statuses:?}"
    );
    assert!(statuses.get(&200).is_some_and(|n| *n >= 2), "{statuses:?}");
    assert!(
        s.wait_output("is at its tasks limit", Duration::from_secs(2)),
        "{}",
        s.output()
    );
}

#[test]
fn a_memory_limit_that_cannot_be_applied_does_not_skip_tasks_and_cpu() {
    use berth::config::Limits;
    use berth::supervisor::cgroup::{Cgroups, Kind};
    require_root();
    let cg = Cgroups::detect("berth-test-limits-apart");
    assert_eq!(cg.kind(), Kind::V1, "{}", cg.about());
    cg.sweep();
    let before = Limits {
        memory: Some(512 << 20),
        tasks: Some(100),
        cpu_millis: Some(1000),
        ..Limits::default()
    };
    cg.set_tenant("tj", &before).unwrap();
    let leaf = cg.leaf("tj", "a", "1.proc").unwrap().unwrap();
    // A process of the tenant's holding 128 MiB.
    let mut holder = common::cgroups::in_group(
        &leaf,
        &[
            "perl",
            "-e",
            r#"$x = "x" x (128 << 20); print "ready\n"; $| = 1; sleep 30"#,
        ],
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "ready\n");
    let after = Limits {
        memory: Some(32 << 20),
        tasks: Some(8),
        cpu_millis: Some(100),
        ..Limits::default()
    };
    let r = cg.set_tenant("tj", &after);
    let read = |c: &str, f: &str| {
        fs::read_to_string(tenant_group(c, "tj").join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    let now = (
        read("pids", "pids.max"),
        read("cpu", "cpu.cfs_quota_us"),
        read("memory", "memory.limit_in_bytes"),
    );
    let _ = holder.kill();
    let _ = holder.wait();
    cg.drop_tenant("tj");
    cg.shutdown();
    let e = r.expect_err("memory below what is held cannot be applied");
    assert!(
        e.to_string()
            .contains("memory in use is above the new limit (32MiB)"),
        "{e}"
    );
    assert_eq!((now.0.as_str(), now.1.as_str()), ("8", "10000"), "{now:?}");
    assert_ne!(now.2, (32u64 << 20).to_string());
}

/// The finding: every reload wrote every tenant's cgroup limits again, a
/// tenth of a reload at 1,000 tenants (the kernel recomputes CPU bandwidth
/// at each `cpu.cfs_quota_us` write). Now limits unchanged since they were
/// last applied are not written again (what an administrator changed by
/// hand in the files stays until the limits change); changed ones are, and
/// so are the limits of a tenant whose last writing failed or whose group
/// was dropped.
#[test]
fn a_reload_writes_only_the_cgroup_limits_that_changed() {
    use berth::config::Limits;
    use berth::supervisor::cgroup::{Cgroups, Kind};
    require_root();
    let cg = Cgroups::detect("berth-test-limits-unchanged");
    assert_eq!(cg.kind(), Kind::V1, "{}", cg.about());
    cg.sweep();
    let limits = Limits {
        tasks: Some(100),
        ..Limits::default()
    };
    let pids_max = || {
        fs::read_to_string(tenant_group("pids", "tu").join("pids.max"))
            .unwrap()
            .trim()
            .to_string()
    };
    let by_hand = |v: &str| fs::write(tenant_group("pids", "tu").join("pids.max"), v).unwrap();
    cg.set_tenant("tu", &limits).unwrap();
    assert_eq!(pids_max(), "100");
    by_hand("7");
    cg.set_tenant("tu", &limits).unwrap();
    assert_eq!(pids_max(), "7", "unchanged limits were written again");
    let more = Limits {
        tasks: Some(200),
        ..limits
    };
    cg.set_tenant("tu", &more).unwrap();
    assert_eq!(pids_max(), "200", "a changed limit was not written");
    // A dropped group is made again, with its limits.
    cg.drop_tenant("tu");
    cg.set_tenant("tu", &more).unwrap();
    assert_eq!(pids_max(), "200");
    cg.drop_tenant("tu");
    cg.shutdown();
}
