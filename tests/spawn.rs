//! Spawning app processes as their tenant (invariant 1), as root with real
//! users: what the kernel says about the started process (uid, gid, groups,
//! session, descriptors, no_new_privs, environment, working directory), and one
//! test per suEXEC refusal.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::Mutex;

use berth::supervisor::spawn::{self, Refused, SpawnError, SpawnSpec};
use berth::sys::AppStep;
use common::{Dir, ensure_user, require_root};

/// The supplementary group the first test tenant is a member of.
const GROUP: &str = "berth-tsgrp";

/// Test tenant A (with the supplementary group [`GROUP`]): (uid, gid).
fn tenant_a() -> (u32, u32) {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap();
    let ids = ensure_user("berth-tsa");
    let member = Command::new("id")
        .args(["-Gn", "berth-tsa"])
        .output()
        .unwrap();
    if !String::from_utf8_lossy(&member.stdout)
        .split_whitespace()
        .any(|g| g == GROUP)
    {
        assert!(
            Command::new("groupadd")
                .args(["-f", GROUP])
                .status()
                .unwrap()
                .success()
        );
        assert!(
            Command::new("usermod")
                .args(["-a", "-G", GROUP, "berth-tsa"])
                .status()
                .unwrap()
                .success()
        );
    }
    ids
}

fn tenant_b() -> (u32, u32) {
    ensure_user("berth-tsb")
}

/// What the test app prints about itself (and /proc about the shell).
const REPORT: &str = r#"#!/bin/sh
echo "pid $$"
echo "uid $(id -u)"
echo "gid $(id -g)"
echo "groups $(id -G)"
echo "sid $(cut -d' ' -f6 /proc/$$/stat)"
echo "cwd $(pwd -P)"
grep NoNewPrivs /proc/self/status
grep -E '^(Uid|Gid):' /proc/$$/status
ls -l /proc/self/fd | awk 'NR > 1 { print "fd", $9, $11 }'
tr '\0' '\n' < /proc/$$/environ | sed 's/^/env /'
"#;

/// A tenant's home: a `Dir` owned by the tenant holding `app.sh` (0755).
fn home_of(uid: u32, gid: u32) -> Dir {
    let d = Dir::new();
    d.write("app.sh", REPORT);
    d.chown("", uid, gid);
    chmod(&d.join("app.sh"), 0o755);
    d
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
}

/// The groups the system gives `user` (as `id -G` prints them).
fn groups_of(user: &str) -> BTreeSet<u32> {
    let out = Command::new("id").args(["-G", user]).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect()
}

/// One spawn, with owned data for a [`SpawnSpec`].
struct Case {
    user: String,
    home: PathBuf,
    argv: Vec<String>,
    dir: PathBuf,
    env: Vec<(String, String)>,
    min_uid: u32,
    open_files: u64,
    switch_user: bool,
}

impl Case {
    /// `home/app.sh` in `home`, as `user`.
    fn new(user: &str, home: &Path) -> Case {
        Case {
            user: user.into(),
            home: home.into(),
            argv: vec![home.join("app.sh").to_str().unwrap().into()],
            dir: home.into(),
            env: Vec::new(),
            min_uid: 1000,
            open_files: 1024,
            switch_user: true,
        }
    }

    fn program(mut self, p: &Path) -> Case {
        self.argv = vec![p.to_str().unwrap().into()];
        self
    }

    fn spec(&self, fds: Vec<(OwnedFd, RawFd)>) -> SpawnSpec<'_> {
        SpawnSpec {
            tenant: "test",
            user: &self.user,
            home: &self.home,
            min_uid: self.min_uid,
            argv: &self.argv,
            script: None,
            dir: &self.dir,
            env: &self.env,
            fds,
            open_files: self.open_files,
            cgroup: Vec::new(),
            rlimits: Vec::new(),
            switch_user: self.switch_user,
            isolation: None,
            isolate: None,
        }
    }

    fn spawn(&self, fds: Vec<(OwnedFd, RawFd)>) -> Result<Child, SpawnError> {
        spawn::spawn(self.spec(fds))
    }

    /// The refusal, which must come from `check` and from `spawn` alike.
    fn refused(&self) -> Refused {
        let checked = spawn::check(&self.spec(Vec::new()));
        assert!(checked.is_err(), "check passed: {checked:?}");
        match self.spawn(Vec::new()) {
            Err(SpawnError::Refused(r)) => r,
            Err(e) => panic!("not a refusal: {e}"),
            Ok(mut c) => {
                let _ = c.kill();
                let _ = c.wait();
                panic!("spawned")
            }
        }
    }

    /// Runs the app with a pipe at 1 and 2 (plus `extra`); returns its pid,
    /// everything it wrote, and how it exited.
    fn run(&self, extra: Vec<(OwnedFd, RawFd)>) -> (u32, String, ExitStatus) {
        let (mut r, w) = std::io::pipe().unwrap();
        let mut fds = vec![
            (OwnedFd::from(w.try_clone().unwrap()), 1),
            (OwnedFd::from(w), 2),
        ];
        fds.extend(extra);
        let mut child = self.spawn(fds).unwrap_or_else(|e| panic!("spawn: {e}"));
        let mut out = String::new();
        r.read_to_string(&mut out).unwrap();
        let status = child.wait().unwrap();
        (child.id(), out, status)
    }
}

/// The app's report: `key` → values, in order.
fn report(out: &str) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in out.lines() {
        let (k, v) = line.split_once([' ', ':']).unwrap_or((line, ""));
        m.entry(k.to_string())
            .or_default()
            .push(v.trim().to_string());
    }
    m
}

fn one<'a>(r: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match r.get(key).map(Vec::as_slice) {
        Some([v]) => v,
        other => panic!("{key}: {other:?}"),
    }
}

/// The descriptors the app's `ls` saw, without ls's own directory handle.
fn fds_seen(r: &BTreeMap<String, Vec<String>>) -> BTreeMap<RawFd, String> {
    r["fd"]
        .iter()
        .filter_map(|l| {
            let (n, target) = l.split_once(' ').unwrap_or((l, ""));
            (!target.ends_with("/fd")).then(|| (n.parse().unwrap(), target.to_string()))
        })
        .collect()
}

#[test]
fn app_runs_as_the_tenant_in_its_own_session_with_a_clean_environment() {
    require_root();
    let (uid, gid) = tenant_a();
    let home = home_of(uid, gid);
    let work = home.mkdir("work");
    chown(&work, uid, gid);
    // A descriptor without close-on-exec in berth must not reach the app.
    let leaky = rustix::io::dup(fs::File::open("/etc/passwd").unwrap()).unwrap();
    let mut case = Case::new("berth-tsa", home.path());
    case.dir = work.clone();
    case.env = vec![
        ("APP_ENV".into(), "production".into()),
        ("FOO".into(), "first".into()),
        ("FOO".into(), "second".into()),
    ];
    // The test process's own environment (CARGO_*, HOME, ...) must not show.
    let (pid, out, status) = case.run(Vec::new());
    drop(leaky);
    assert!(status.success(), "{status}: {out}");
    let r = report(&out);

    assert_eq!(one(&r, "pid"), pid.to_string());
    assert_eq!(one(&r, "uid"), uid.to_string());
    assert_eq!(one(&r, "gid"), gid.to_string());
    let groups: BTreeSet<u32> = one(&r, "groups")
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    assert_eq!(groups, groups_of("berth-tsa"));
    let supplementary = nix::unistd::Group::from_name(GROUP)
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    assert!(groups.contains(&supplementary), "{groups:?}");
    assert!(!groups.contains(&0), "{groups:?}");
    // Real, effective, saved and filesystem ids all switched.
    assert_eq!(one(&r, "Uid"), format!("{uid}\t{uid}\t{uid}\t{uid}"));
    assert_eq!(one(&r, "Gid"), format!("{gid}\t{gid}\t{gid}\t{gid}"));
    assert_eq!(one(&r, "NoNewPrivs"), "1");
    assert_eq!(one(&r, "sid"), pid.to_string(), "own session");
    assert_eq!(
        one(&r, "cwd"),
        fs::canonicalize(&work).unwrap().to_str().unwrap()
    );

    let fds = fds_seen(&r);
    assert_eq!(
        fds.keys().copied().collect::<Vec<_>>(),
        [0, 1, 2],
        "{fds:?}"
    );
    assert_eq!(fds[&0], "/dev/null");
    assert!(fds[&1].starts_with("pipe:"), "{fds:?}");

    let env: BTreeSet<&str> = r["env"].iter().map(String::as_str).collect();
    let home_s = home.path().to_str().unwrap();
    let want: BTreeSet<String> = [
        "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
        format!("HOME={home_s}"),
        "USER=berth-tsa".into(),
        "LOGNAME=berth-tsa".into(),
        "APP_ENV=production".into(),
        "FOO=second".into(),
    ]
    .into_iter()
    .collect();
    assert_eq!(env, want.iter().map(String::as_str).collect());
}

/// The kernel's view of the exec'd process itself (no shell in between):
/// exactly the given descriptors, LISTEN_PID filled in with its own pid.
#[test]
fn the_exec_d_process_has_only_the_given_descriptors() {
    require_root();
    let (uid, gid) = tenant_a();
    let home = home_of(uid, gid);
    let leaky = rustix::io::dup(fs::File::open("/etc/hostname").unwrap()).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut case = Case::new("berth-tsa", home.path());
    case.argv = vec!["/bin/sleep".into(), "30".into()];
    case.env = vec![
        ("LISTEN_FDS".into(), "1".into()),
        ("LISTEN_PID".into(), "1".into()),
    ];
    let mut child = case.spawn(vec![(theirs.into(), 3)]).unwrap();
    let pid = child.id();
    let fds: BTreeMap<RawFd, String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let n = e.file_name().to_str().unwrap().parse().unwrap();
            (n, fs::read_link(e.path()).unwrap().display().to_string())
        })
        .collect();
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    drop(leaky);
    drop(ours);

    assert_eq!(
        fds.keys().copied().collect::<Vec<_>>(),
        [0, 1, 2, 3],
        "{fds:?}"
    );
    for n in 0..3 {
        assert_eq!(fds[&n], "/dev/null");
    }
    assert!(fds[&3].starts_with("socket:"), "{fds:?}");
    let environ: Vec<&str> = std::str::from_utf8(&environ)
        .unwrap()
        .split('\0')
        .filter(|s| !s.is_empty())
        .collect();
    assert!(
        environ.contains(&format!("LISTEN_PID={pid}").as_str()),
        "{environ:?}"
    );
    assert!(environ.contains(&"LISTEN_FDS=1"), "{environ:?}");
    assert_eq!(
        environ
            .iter()
            .filter(|e| e.starts_with("LISTEN_PID="))
            .count(),
        1
    );
    assert!(
        status.contains(&format!("\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")),
        "{status}"
    );
    assert!(status.contains("\nNoNewPrivs:\t1\n"), "{status}");
    let sid = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(3)
        .unwrap();
    assert_eq!(sid, pid.to_string());
}

#[test]
fn a_socket_given_at_0_is_the_apps_stdin() {
    require_root();
    let (uid, gid) = tenant_a();
    let home = home_of(uid, gid);
    home.write("app.sh", "#!/bin/sh\nread line\necho \"got $line\"\n");
    chown(&home.join("app.sh"), uid, gid);
    chmod(&home.join("app.sh"), 0o755);
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    ours.write_all(b"hello from berth\n").unwrap();
    let case = Case::new("berth-tsa", home.path());
    let (_, out, status) = case.run(vec![(theirs.into(), 0)]);
    assert!(status.success(), "{status}: {out}");
    assert_eq!(out, "got hello from berth\n");
}

/// Each source descriptor's number is the other's target: a naive dup2 in
/// order would clobber the second source before it is moved.
#[test]
fn descriptors_whose_numbers_collide_with_targets_land_where_asked() {
    require_root();
    let (uid, gid) = tenant_a();
    let home = home_of(uid, gid);
    home.write("app.sh", "#!/bin/bash\necho P >&$TP\necho Q >&$TQ\n");
    chown(&home.join("app.sh"), uid, gid);
    chmod(&home.join("app.sh"), 0o755);
    let (mut p_r, p_w) = std::io::pipe().unwrap();
    let (mut q_r, q_w) = std::io::pipe().unwrap();
    let (p, q): (OwnedFd, OwnedFd) = (p_w.into(), q_w.into());
    let (tp, tq) = (q.as_raw_fd(), p.as_raw_fd());
    let mut case = Case::new("berth-tsa", home.path());
    case.env = vec![("TP".into(), tp.to_string()), ("TQ".into(), tq.to_string())];
    let (_, out, status) = case.run(vec![(p, tp), (q, tq)]);
    assert!(status.success(), "{status}: {out}");
    let (mut a, mut b) = (String::new(), String::new());
    p_r.read_to_string(&mut a).unwrap();
    q_r.read_to_string(&mut b).unwrap();
    assert_eq!((a.as_str(), b.as_str()), ("P\n", "Q\n"));
}

#[test]
fn a_system_interpreter_runs_as_the_tenant() {
    require_root();
    let (uid, gid) = tenant_a();
    let home = home_of(uid, gid);
    let mut case = Case::new("berth-tsa", home.path());
    case.argv = vec!["/bin/sh".into(), "-c".into(), "id -u; echo $0".into()];
    let (_, out, status) = case.run(Vec::new());
    assert!(status.success(), "{status}: {out}");
    assert_eq!(out, format!("{uid}\n/bin/sh\n"));
}

#[test]
fn without_switching_users_the_app_runs_as_the_caller_with_the_same_env_rules() {
    require_root();
    // The caller (root) is the "tenant": the user need not exist.
    let home = Dir::new();
    home.write("app.sh", REPORT);
    chmod(&home.join("app.sh"), 0o755);
    let mut case = Case::new("berth-tnobody-here", home.path());
    case.switch_user = false;
    case.env = vec![("APP_ENV".into(), "dev".into())];
    let (pid, out, status) = case.run(Vec::new());
    assert!(status.success(), "{status}: {out}");
    let r = report(&out);
    assert_eq!(one(&r, "uid"), "0");
    assert_eq!(one(&r, "sid"), pid.to_string());
    assert_eq!(one(&r, "NoNewPrivs"), "1");
    let env: BTreeSet<&str> = r["env"].iter().map(String::as_str).collect();
    let want: BTreeSet<String> = [
        "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
        format!("HOME={}", home.path().display()),
        "USER=berth-tnobody-here".into(),
        "LOGNAME=berth-tnobody-here".into(),
        "APP_ENV=dev".into(),
    ]
    .into_iter()
    .collect();
    assert_eq!(env, want.iter().map(String::as_str).collect());
    assert_eq!(fds_seen(&r).keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
}

#[test]
fn a_program_that_cannot_be_executed_fails_at_execve() {
    require_root();
    let (uid, gid) = tenant_a();
    let home = home_of(uid, gid);
    chmod(&home.join("app.sh"), 0o644);
    match Case::new("berth-tsa", home.path()).spawn(Vec::new()) {
        Err(SpawnError::Exec { step, source }) => {
            assert_eq!(step, AppStep::Execve);
            assert_eq!(source.raw_os_error(), Some(libc::EACCES));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_dir_the_tenant_cannot_enter_fails_at_chdir_as_the_tenant() {
    require_root();
    let (uid, gid) = tenant_a();
    let home = home_of(uid, gid);
    let locked = home.mkdir("locked");
    chown(&locked, 0, 0);
    chmod(&locked, 0o700);
    let mut case = Case::new("berth-tsa", home.path());
    case.dir = locked;
    match case.spawn(Vec::new()) {
        Err(SpawnError::Exec { step, source }) => {
            assert_eq!(step, AppStep::Chdir);
            assert_eq!(source.raw_os_error(), Some(libc::EACCES));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_app_gets_open_files_as_its_limit_not_berths() {
    use rustix::thread::CapabilitySet;
    require_root();
    let (uid, gid) = tenant_a();
    let home = home_of(uid, gid);
    let ours = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(1 << 19)
        .min(1 << 19);
    // Above our own hard limit only with CAP_SYS_RESOURCE (some containers'
    // root lacks it); else berth gives its own.
    let may_raise = rustix::thread::capabilities(None)
        .unwrap()
        .effective
        .contains(CapabilitySet::SYS_RESOURCE);
    let above = if may_raise { ours + 1 } else { ours };
    for (want, got) in [(512, 512), (ours + 1, above)] {
        let mut case = Case::new("berth-tsa", home.path());
        case.argv = ["/bin/sh", "-c", "ulimit -Sn; ulimit -Hn"]
            .map(String::from)
            .to_vec();
        case.open_files = want;
        let (_, out, status) = case.run(Vec::new());
        assert!(status.success(), "{status}: {out}");
        assert_eq!(out, format!("{got}\n{got}\n"), "soft and hard for {want}");
    }
}

// ---------------------------------------------------------------------------
// One test per refusal.

#[test]
fn refused_user_missing() {
    require_root();
    let home = Dir::new();
    let r = Case::new("berth-tnosuchuser", home.path()).refused();
    assert!(matches!(r, Refused::NoSuchUser { .. }), "{r:?}");
    assert_eq!(r.to_string(), "user \"berth-tnosuchuser\" does not exist");
}

#[test]
fn refused_root_user() {
    require_root();
    let home = Dir::new();
    let r = Case::new("root", home.path()).refused();
    assert!(matches!(r, Refused::RootUser { .. }), "{r:?}");
    assert!(r.to_string().contains("is root"), "{r}");
}

#[test]
fn refused_uid_below_min_uid() {
    require_root();
    let home = Dir::new();
    let r = Case::new("daemon", home.path()).refused();
    assert!(
        matches!(r, Refused::UidBelowMin { min_uid: 1000, .. }),
        "{r:?}"
    );
    // And a real tenant when min_uid is raised above it.
    let (uid, gid) = tenant_a();
    let home = home_of(uid, gid);
    let mut case = Case::new("berth-tsa", home.path());
    case.min_uid = uid + 1;
    let r = case.refused();
    assert!(matches!(r, Refused::UidBelowMin { .. }), "{r:?}");
    assert_eq!(
        r.to_string(),
        format!(
            "user \"berth-tsa\" has uid {uid}, below min_uid {}",
            uid + 1
        )
    );
}

#[test]
fn refused_relative_program() {
    require_root();
    let (uid, gid) = tenant_a();
    let home = home_of(uid, gid);
    let r = Case::new("berth-tsa", home.path())
        .program(Path::new("app.sh"))
        .refused();
    assert!(matches!(r, Refused::RelativeProgram { .. }), "{r:?}");
    assert_eq!(r.to_string(), "program \"app.sh\" is not an absolute path");
}

#[test]
fn refused_missing_program() {
    require_root();
    let (uid, gid) = tenant_a();
    let home = home_of(uid, gid);
    let r = Case::new("berth-tsa", home.path())
        .program(&home.join("nope.sh"))
        .refused();
    assert!(matches!(r, Refused::ProgramMissing { .. }), "{r:?}");
    assert!(r.to_string().contains("nope.sh"), "{r}");
}

#[test]
fn refused_setuid_program() {
    require_root();
    let (uid, gid) = tenant_a();
    let home = home_of(uid, gid);
    let copy = home.join("suid.sh");
    fs::copy(home.join("app.sh"), &copy).unwrap();
    chown(&copy, uid, gid);
    chmod(&copy, 0o4755);
    let r = Case::new("berth-tsa", home.path()).program(&copy).refused();
    assert!(matches!(r, Refused::SetId { mode: 0o4755, .. }), "{r:?}");
    assert!(
        r.to_string().ends_with("is setuid or setgid (mode 4755)"),
        "{r}"
    );
}

#[test]
fn refused_program_of_another_tenant() {
    require_root();
    let (uid, gid) = tenant_a();
    let (b_uid, b_gid) = tenant_b();
    let home = home_of(uid, gid);
    chown(&home.join("app.sh"), b_uid, b_gid);
    chmod(&home.join("app.sh"), 0o755);
    let r = Case::new("berth-tsa", home.path()).refused();
    assert!(
        matches!(r, Refused::ProgramOwner { owner, .. } if owner == b_uid),
        "{r:?}"
    );
}

#[test]
fn refused_group_writable_program() {
    require_root();
    let (uid, gid) = tenant_a();
    let home = home_of(uid, gid);
    chmod(&home.join("app.sh"), 0o775);
    let r = Case::new("berth-tsa", home.path()).refused();
    assert!(matches!(r, Refused::ProgramWritable { .. }), "{r:?}");
    let want = format!(
        "program {} is writable by group or others (mode 0775)",
        fs::canonicalize(home.join("app.sh")).unwrap().display()
    );
    assert_eq!(r.to_string(), want);
}

#[test]
fn refused_group_writable_program_directory() {
    require_root();
    let (uid, gid) = tenant_a();
    let home = home_of(uid, gid);
    let bin = home.mkdir("bin");
    fs::copy(home.join("app.sh"), bin.join("app.sh")).unwrap();
    home.chown("bin", uid, gid);
    chmod(&bin, 0o775);
    let r = Case::new("berth-tsa", home.path())
        .program(&bin.join("app.sh"))
        .refused();
    assert!(
        matches!(r, Refused::ProgramDirWritable { mode: 0o775, .. }),
        "{r:?}"
    );
}

#[test]
fn refused_program_directory_of_another_tenant() {
    require_root();
    let (uid, gid) = tenant_a();
    let (b_uid, b_gid) = tenant_b();
    let home = home_of(uid, gid);
    let bin = home.mkdir("bin");
    fs::copy(home.join("app.sh"), bin.join("app.sh")).unwrap();
    home.chown("bin", uid, gid);
    chown(&bin, b_uid, b_gid);
    let r = Case::new("berth-tsa", home.path())
        .program(&bin.join("app.sh"))
        .refused();
    assert!(
        matches!(r, Refused::ProgramDirOwner { owner, .. } if owner == b_uid),
        "{r:?}"
    );
}

#[test]
fn refused_tenant_program_outside_home() {
    require_root();
    let (uid, gid) = tenant_a();
    let home = home_of(uid, gid);
    let elsewhere = home_of(uid, gid);
    let r = Case::new("berth-tsa", home.path())
        .program(&elsewhere.join("app.sh"))
        .refused();
    assert!(matches!(r, Refused::ProgramOutsideHome { .. }), "{r:?}");
    // Also through a symlink inside the home.
    home.symlink(elsewhere.join("app.sh"), "link.sh");
    let r = Case::new("berth-tsa", home.path())
        .program(&home.join("link.sh"))
        .refused();
    assert!(matches!(r, Refused::ProgramOutsideHome { .. }), "{r:?}");
}

#[test]
fn refused_dir_outside_home() {
    require_root();
    let (uid, gid) = tenant_a();
    let home = home_of(uid, gid);
    let elsewhere = home_of(uid, gid);
    let mut case = Case::new("berth-tsa", home.path());
    case.dir = elsewhere.path().into();
    let r = case.refused();
    assert!(matches!(r, Refused::DirOutsideHome { .. }), "{r:?}");
}

#[test]
fn refused_dir_writable_by_others() {
    require_root();
    let (uid, gid) = tenant_a();
    let home = home_of(uid, gid);
    let open = home.mkdir("open");
    chown(&open, uid, gid);
    chmod(&open, 0o777);
    let mut case = Case::new("berth-tsa", home.path());
    case.dir = open;
    let r = case.refused();
    assert!(
        matches!(r, Refused::DirWritable { mode: 0o777, .. }),
        "{r:?}"
    );
}

#[test]
fn refused_dir_of_another_tenant() {
    require_root();
    let (uid, gid) = tenant_a();
    let (b_uid, b_gid) = tenant_b();
    let home = home_of(uid, gid);
    let theirs = home.mkdir("theirs");
    chown(&theirs, b_uid, b_gid);
    let mut case = Case::new("berth-tsa", home.path());
    case.dir = theirs;
    let r = case.refused();
    assert!(matches!(r, Refused::DirOwner { .. }), "{r:?}");
}

/// `/x/al` is not a prefix of `/x/alice2` for containment.
#[test]
fn refused_home_prefix_trick() {
    require_root();
    let (uid, gid) = tenant_a();
    let top = home_of(uid, gid);
    let al = top.mkdir("al");
    let alice2 = top.mkdir("alice2");
    fs::copy(top.join("app.sh"), alice2.join("app.sh")).unwrap();
    top.chown("", uid, gid);
    let r = Case::new("berth-tsa", &al)
        .program(&alice2.join("app.sh"))
        .refused();
    assert!(matches!(r, Refused::ProgramOutsideHome { .. }), "{r:?}");
    let mut case = Case::new("berth-tsa", &al).program(Path::new("/bin/true"));
    case.dir = alice2;
    let r = case.refused();
    assert!(matches!(r, Refused::DirOutsideHome { .. }), "{r:?}");
}
