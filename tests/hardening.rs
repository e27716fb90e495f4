//! Review findings of issue 7 on the supervisor's side, as root with real
//! users, real apps and the real binary: identities checked at every start,
//! not only at load (finding 6); `state_dir` and `log_dir` under directories
//! a tenant could change (finding 7); berth's own log under a flood
//! (finding 8); a compromised front end talking to the supervisor
//! (finding 9).
mod common;
use common::apps::*;
use common::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

/// The front end's user in these tests (a group of its own to join).
const FRONT: &str = "berth-thfront";
/// A tenant that the tests put into other groups while berth runs.
const USER_C: &str = "berth-thc";
/// Another tenant, whose primary group tenant C is put into.
const USER_A: &str = "berth-tha";

/// Prints who it runs as, and leaves a mark in the tenant's home.
const WHO_CGI: &str = "#!/bin/sh
echo ran >> \"$HOME/ran\"
printf 'Content-Type: text/plain\\n\\n'
echo \"groups=$(id -G)\"
";

/// `usermod -aG GROUP USER` for as long as it lives; `gpasswd -d` after.
struct Membership {
    user: &'static str,
    group: &'static str,
}

impl Membership {
    fn add(user: &'static str, group: &'static str) -> Membership {
        let ok = Command::new("usermod")
            .args(["-a", "-G", group, user])
            .status()
            .unwrap()
            .success();
        assert!(ok, "usermod -a -G {group} {user}");
        Membership { user, group }
    }

    /// Takes `user` out of `group` if it is in it (a run that failed may
    /// have left it there).
    fn remove(user: &str, group: &str) {
        if names_of_groups(user).iter().any(|g| g == group) {
            let ok = Command::new("gpasswd")
                .args(["-d", user, group])
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap()
                .success();
            assert!(ok, "gpasswd -d {user} {group}");
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        Membership::remove(self.user, self.group);
    }
}

/// The users of the identity tests, with tenant C in none of the others'
/// groups.
fn identity_users() -> ((u32, u32), (u32, u32), (u32, u32)) {
    let front = ensure_user(FRONT);
    let a = ensure_user(USER_A);
    let c = ensure_user(USER_C);
    Membership::remove(USER_C, FRONT);
    Membership::remove(USER_C, USER_A);
    (front, a, c)
}

/// Tenants `ta` (a.test, static) and `tc` (c.test: `.cgi` scripts run by
/// themselves, `.php` through php-cgi), with [`FRONT`] as the front end.
fn start_a_and_c(dir: &Dir, a: &Home, c: &Home) -> Server {
    let (block, port, tls_port) = server(dir);
    let block = block.replace("user = \"berth-tfront\"", &format!("user = \"{FRONT}\""));
    let mut tenants = tenant_site("ta", a, "a.test");
    tenants.push_str(&tenant_site("tc", c, "c.test"));
    tenants.push_str(
        r#"
[[tenant.tc.site.route]]
path = "/cgi/"
extensions = ["cgi"]
app = "scripts"

[[tenant.tc.site.route]]
path = "/"
extensions = ["php"]
app = "php"

[tenant.tc.app.scripts]
protocol = "cgi"
"#,
    );
    tenants.push_str(&app_table(
        "tc",
        "php",
        "fastcgi",
        &c.public(),
        &["/usr/bin/php-cgi"],
        "",
    ));
    a.own();
    c.own();
    Server::start(dir, &format!("{block}{tenants}"), port, tls_port)
}

/// The finding: the identity rules ran only when the configuration was
/// loaded. An admin put tenant C's user into the front end's group while
/// berth ran; C's next CGI script got that group, could list
/// `state_dir/apps` and talk FastCGI to tenant A's php-cgi. Now every start
/// (CGI scripts and pool processes) checks the identity it is about to use.
#[test]
fn a_tenant_put_in_the_front_ends_group_while_berth_runs_starts_nothing() {
    require_root();
    let (_, (a_uid, a_gid), c_ids) = identity_users();
    let dir = Dir::new();
    let a = Home::new(&dir, "home-a", USER_A, (a_uid, a_gid));
    a.write("public/index.html", "static A\n", 0o644);
    let c = Home::new(&dir, "home-c", USER_C, c_ids);
    c.write("public/cgi/who.cgi", WHO_CGI, 0o755);
    c.write("public/hello.php", "<?php echo 'php C';", 0o644);
    let s = start_a_and_c(&dir, &a, &c);
    let ran = c.join("ran");
    // As configured, the script runs.
    let r = get_host(s.addr(), "c.test", "/cgi/who.cgi");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.output());
    assert!(ran.exists());
    fs::remove_file(&ran).unwrap();

    let front_group = Membership::add(USER_C, FRONT);
    for path in ["/cgi/who.cgi", "/hello.php"] {
        let r = get_host(s.addr(), "c.test", path);
        assert_eq!(r.status, 503, "{path}: {r:?}\n{}", s.output());
    }
    assert!(!ran.exists(), "the script ran with the front end's group");
    assert!(
        s.wait_output(
            &format!(
                "user \"{USER_C}\" is a member of \"{FRONT}\" (gid {}), the primary group of server.user",
                front_gid()
            ),
            Duration::from_secs(5)
        ),
        "the refusal is logged with its reason:\n{}",
        s.output()
    );
    let out = s.output();
    for what in ["/cgi/who.cgi", "/usr/bin/php-cgi"] {
        assert!(
            out.lines()
                .any(|l| l.contains("tenant tc: refused to start")
                    && l.contains(what)
                    && l.contains(FRONT)),
            "no refusal for {what}:\n{out}"
        );
    }
    assert!(
        processes_of(c_ids.0).is_empty(),
        "something of tenant C runs"
    );
    drop(front_group);

    // In another tenant's primary group: refused too.
    let a_group = Membership::add(USER_C, USER_A);
    let r = get_host(s.addr(), "c.test", "/cgi/who.cgi");
    assert_eq!(r.status, 503, "{r:?}\n{}", s.output());
    assert!(!ran.exists(), "the script ran in tenant A's group");
    assert!(
        s.wait_output(
            &format!("the primary group of tenant \"ta\" (user \"{USER_A}\")"),
            Duration::from_secs(5)
        ),
        "{}",
        s.output()
    );
    drop(a_group);

    // Out of both groups again, C's apps start as before.
    for path in ["/cgi/who.cgi", "/hello.php"] {
        let r = get_host(s.addr(), "c.test", path);
        assert_eq!(r.status, 200, "{path}: {r:?}\n{}", s.output());
    }
    assert!(ran.exists());
}

fn front_gid() -> u32 {
    nix::unistd::User::from_name(FRONT)
        .unwrap()
        .unwrap()
        .gid
        .as_raw()
}

/// php-cgi behind a wrapper the test can make group-writable, so that every
/// start is refused.
const WRAPPER_SH: &str = "#!/bin/sh\nexec /usr/bin/php-cgi \"$@\"\n";

/// The finding: berth's own `error.log` took every line, and clients and
/// tenants cause lines: 5 s of wrk against a full app queue (a warning per
/// 503) added 4.2 MB. Here each request is refused a process (its program
/// became group-writable), a few warnings each in both processes; with
/// `log_rate = 20`, the file keeps a burst and the rate, and says how many
/// lines it dropped.
#[test]
fn a_warning_per_request_does_not_flood_berths_own_log() {
    require_root();
    const RATE: u64 = 20;
    const REQUESTS: usize = 1000;
    let dir = Dir::new();
    let ids = ensure_user(USER_A);
    let home = Home::new(&dir, "home-a", USER_A, ids);
    home.write("public/index.php", "<?php echo 'php A';", 0o644);
    let wrapper = home.write("bin/php.sh", WRAPPER_SH, 0o755);
    home.own();
    let (block, port, tls_port) = server(&dir);
    let mut config = format!("{block}log_rate = {RATE}\n");
    config.push_str(&tenant_site("ta", &home, "a.test"));
    config.push_str(
        "[[tenant.ta.site.route]]\npath = \"/\"\nextensions = [\"php\"]\napp = \"php\"\n",
    );
    config.push_str(&app_table(
        "ta",
        "php",
        "fastcgi",
        &home.public(),
        &[wrapper.to_str().unwrap()],
        "",
    ));
    let s = Server::start(&dir, &config, port, tls_port);
    let log = s.log_dir.join("error.log");
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o775)).unwrap();
    let t0 = Instant::now();
    for _ in 0..REQUESTS {
        let r = get_host(s.addr(), "a.test", "/index.php");
        assert_eq!(r.status, 503, "{r:?}");
    }
    let took = t0.elapsed();
    assert!(
        s.wait_output(
            "lines of berth's log dropped: more than log_rate (20 lines a second)",
            Duration::from_secs(5)
        ),
        "{}",
        s.output()
    );
    let text = fs::read_to_string(&log).unwrap();
    let refused = text.matches("refused to start").count();
    // Each process keeps its burst (10 s of the rate) and the rate over the
    // time the flood took; a second more of it is slack for the start-up
    // and for the time the last summary took.
    let bound = 2 * (10 * RATE + RATE * (took.as_secs() + 2)) as usize;
    assert!(
        text.lines().count() <= bound,
        "{} lines in {took:?} ({refused} refusals; at most {bound}):\n{}",
        text.lines().count(),
        &text[..text.len().min(4000)]
    );
    assert!(refused > 0, "the refusals are logged at first:\n{text}");
    // The summary counts what is missing.
    let dropped: usize = text
        .lines()
        .filter_map(|l| {
            l.split(" lines of berth's log dropped")
                .next()?
                .rsplit(' ')
                .next()
        })
        .filter_map(|n| n.parse::<usize>().ok())
        .sum();
    assert!(
        dropped >= REQUESTS - refused,
        "{dropped} dropped, {refused} kept"
    );
    // And berth still answers.
    assert_eq!(get_host(s.addr(), "a.test", "/index.php").status, 503);
}
