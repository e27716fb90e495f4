//! What berth's cgroup groups count, checked on the backend of the machine
//! the test runs on (v1 here, v2 in a guest): a tenant's OOM kills and forks
//! refused at `pids.max` include those of the leaves below it, and stay
//! counted when the leaves go.

use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};

use berth::config::Limits;
use berth::supervisor::cgroup::{Cgroups, Group, Kind};

/// A command that runs `argv` in `group`: a shell joins it (by the
/// `cgroup.procs` files berth's children write to) before it execs `argv`.
pub fn in_group(group: &Group, argv: &[&str]) -> Command {
    let files = group.procs_files(true).unwrap();
    let paths: Vec<String> = files
        .iter()
        .map(|f| {
            let link = format!("/proc/self/fd/{}", f.as_raw_fd());
            std::fs::read_link(link)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        r#"for p in $PROCS; do echo 0 > "$p" || exit 99; done; exec "$@""#,
        "sh",
    ])
    .args(argv)
    .env("PROCS", paths.join(" "));
    cmd
}

/// Runs `argv` in `group` (see [`in_group`]); its exit status.
pub fn run_in(group: &Group, argv: &[&str]) -> ExitStatus {
    in_group(group, argv).status().unwrap()
}

/// In berth's cgroups for `instance` (made here, removed at the end): a
/// tenant at 32 MiB and 8 tasks, and two leaves of an app in turn, in each
/// a 200 MiB allocation (OOM-killed) and a fork loop (refused at the 8th
/// process).
/// After each, the tenant and the app count them, before and after the
/// leaf goes. Returns the backend and what the tenant counted at the end
/// (OOM kills, pids.max refusals).
pub fn limit_events_stay_counted_when_their_leaves_go(instance: &str) -> (Kind, u64, u64) {
    let cg = Cgroups::detect(instance);
    assert_ne!(cg.kind(), Kind::None, "{}", cg.about());
    cg.sweep();
    let limits = Limits {
        memory: Some(32 << 20),
        tasks: Some(8),
        ..Limits::default()
    };
    cg.set_tenant("t", &limits).unwrap();
    let tenant = cg.tenant("t").unwrap();
    // Its children are reaped here: an orphan's pid stays charged until
    // whoever adopts it reaps it.
    let forks = "my @k; for (1 .. 50) { my $p = fork; last unless defined $p; \
                 if (!$p) { sleep 60; exit } push @k, $p } \
                 kill 'KILL', @k; waitpid($_, 0) for @k; exit(@k == 7 ? 0 : 1)";
    for n in 1..=2u64 {
        let leaf = cg.leaf("t", "a", &format!("{n}.proc")).unwrap().unwrap();
        let app = cg.app("t", "a").unwrap();
        let bomb = run_in(&leaf, &["perl", "-e", "$x = 'x' x (200 << 20)"]);
        assert_eq!(bomb.signal(), Some(9), "{bomb:?}");
        assert!(run_in(&leaf, &["perl", "-e", forks]).success());
        for (what, g) in [("tenant", &tenant), ("app", &app), ("leaf", &leaf)] {
            let s = g.stats();
            let want = if what == "leaf" { 1 } else { n };
            assert_eq!(
                (s.oom_kills, s.tasks_limit_hits),
                (want, want),
                "{what} after run {n}"
            );
        }
        assert!(leaf.remove(), "leaf {n} stays");
        for (what, g) in [("tenant", &tenant), ("app", &app)] {
            let s = g.stats();
            assert_eq!(
                (s.oom_kills, s.tasks_limit_hits),
                (n, n),
                "{what} once leaf {n} went"
            );
        }
    }
    let s = tenant.stats();
    cg.drop_tenant("t");
    cg.shutdown();
    (cg.kind(), s.oom_kills, s.tasks_limit_hits)
}
