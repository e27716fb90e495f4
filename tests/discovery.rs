//! Drop-in mass hosting (`[discovery]`): host directories under the root
//! become sites of their owners' tenants while berth runs, with no restart
//! and no request lost: a new directory (a static file, and PHP through the
//! handler, run as the owner), a removed one and a renamed one while another
//! site is under constant load; and what is left out, with a log line:
//! owners below min_uid, symlinks, bad host names, a host the
//! administrator's configuration serves.
mod common;
use common::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How long a change may take to be served. inotify sees it at once and the
/// watcher waits 0.1 s for quiet (and keeps reloads 1 s apart); the bound is
/// generous for a loaded 2-core machine running other tests.
const WITHIN: Duration = Duration::from_secs(20);

/// A berth with `[discovery]` over `dir/sites` (root's, 0755) and a PHP
/// handler; `extra` goes after the `[discovery]` keys' tables (tenants).
fn start(dir: &Dir, extra: &str) -> Server {
    require_root();
    let root = sites(dir);
    let (block, port, tls_port) = server_block(dir, "keepalive_timeout = \"5s\"");
    let config = format!(
        r#"{block}
[discovery]
root = "{root}"
rescan = "2s"

[discovery.handler.php]
extensions = ["php"]
protocol = "fastcgi"
command = ["/usr/bin/php-cgi"]
max_processes = 2
{extra}
"#,
        root = root.display(),
    );
    Server::start(dir, &config, port, tls_port)
}

/// The discovery root, `dir/sites`.
fn sites(dir: &Dir) -> PathBuf {
    let root = dir.mkdir("sites");
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
    root
}

/// Makes `root/HOST/public/` with `index.html` ("HOST\n") and `id.php`
/// (prints the uid it runs as), all owned by `user`. Built beside the root
/// and renamed into it, as a provisioning tool would, so the watcher sees
/// it whole.
fn make_site(root: &Path, host: &str, user: &str) -> (u32, u32) {
    let ids = ensure_user(user);
    let staging = root.parent().unwrap().join(format!(".new-{host}"));
    fs::create_dir_all(staging.join("public")).unwrap();
    fs::write(staging.join("public/index.html"), format!("{host}\n")).unwrap();
    fs::write(
        staging.join("public/id.php"),
        "<?php echo 'uid=', posix_getuid(), \"\\n\";\n",
    )
    .unwrap();
    for p in [&staging, &staging.join("public")] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    chown_r(&staging, ids);
    fs::rename(&staging, root.join(host)).unwrap();
    ids
}

fn chown_r(path: &Path, (uid, gid): (u32, u32)) {
    let ok = std::process::Command::new("chown")
        .args(["-R", "-h", &format!("{uid}:{gid}"), path.to_str().unwrap()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "chown {}", path.display());
}

/// The status and body of `GET path` for `host` on a new connection.
fn fetch(s: &Server, host: &str, path: &str) -> (u16, String) {
    let resp = get_raw(s.addr(), host, path);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status_of(&resp), body)
}

/// Waits until `host` answers `path` with `status`.
fn wait_for(s: &Server, host: &str, path: &str, status: u16) -> bool {
    eventually(WITHIN, || fetch(s, host, path).0 == status)
}

/// How many times berth's output has `needle`.
fn count(s: &Server, needle: &str) -> usize {
    s.output().matches(needle).count()
}

#[test]
fn a_new_directory_is_served_within_seconds_and_its_php_runs_as_its_owner() {
    let dir = Dir::new();
    let s = start(&dir, "");
    let root = dir.join("sites");
    assert_eq!(fetch(&s, "new.test", "/").0, 421, "not a site yet");
    let (uid, _) = make_site(&root, "new.test", "berth-tdisc1");
    assert!(
        wait_for(&s, "new.test", "/", 200),
        "new.test not served:\n{}",
        s.output()
    );
    assert_eq!(fetch(&s, "new.test", "/"), (200, "new.test\n".into()));
    let (status, body) = fetch(&s, "new.test", "/id.php");
    assert_eq!((status, body.trim()), (200, format!("uid={uid}").as_str()));
    // The tenant is named after the owner, and logs as such.
    assert!(eventually(WITHIN, || s
        .access_log("berth-tdisc1")
        .contains("new.test")));
    assert!(
        s.output()
            .contains("discovery: 1 sites (1 tenants made for them)"),
        "{}",
        s.output()
    );
}

#[test]
fn a_removed_or_renamed_directory_stops_being_served_while_another_site_under_load_loses_no_request()
 {
    let dir = Dir::new();
    let root = sites(&dir);
    make_site(&root, "busy.test", "berth-tdisc1");
    make_site(&root, "gone.test", "berth-tdisc2");
    make_site(&root, "old.test", "berth-tdisc2");
    let s = start(&dir, "");
    for h in ["busy.test", "gone.test", "old.test"] {
        assert_eq!(fetch(&s, h, "/").0, 200, "{h}");
    }
    // Constant load on busy.test: a keep-alive client (static) and one
    // through PHP, each counting every answer that is not a 200 with the
    // right body, and every request that fails outright.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = ["/", "/id.php"]
        .into_iter()
        .map(|path| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            let client = client(false, None, &["busy.test"], s.port);
            let url = format!("http://busy.test:{}{path}", s.port);
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let good = match client.get(&url).send() {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let body = r.text().unwrap_or_default();
                            let good = status == 200
                                && (body == "busy.test\n" || body.starts_with("uid="));
                            if !good {
                                errors.push(format!("{status} {body:?}"));
                            }
                            good
                        }
                        Err(e) => {
                            errors.push(e.to_string());
                            false
                        }
                    };
                    let counter = if good { &ok } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                errors
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    fs::remove_dir_all(root.join("gone.test")).unwrap();
    assert!(wait_for(&s, "gone.test", "/", 421), "{}", s.output());
    fs::rename(root.join("old.test"), root.join("renamed.test")).unwrap();
    assert!(wait_for(&s, "renamed.test", "/", 200), "{}", s.output());
    assert_eq!(fetch(&s, "old.test", "/").0, 421, "the old name is gone");
    // The renamed site keeps its content (public/ came along).
    assert_eq!(fetch(&s, "renamed.test", "/").1, "old.test\n");
    // And once more each way while the load goes on.
    make_site(&root, "gone.test", "berth-tdisc2");
    assert!(wait_for(&s, "gone.test", "/", 200), "{}", s.output());
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let errors: Vec<String> = load.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{ok} ok; failures: {errors:?}");
    assert!(ok >= 20, "only {ok} requests in the load");
    // Three reloads at least, each a new generation the front end took.
    assert!(
        count(&s, "serving configuration generation") >= 4,
        "{}",
        s.output()
    );
}

#[test]
fn directories_below_min_uid_symlinks_and_bad_host_names_are_left_out_with_a_log_line() {
    let dir = Dir::new();
    let root = sites(&dir);
    let user = "berth-tdisc3";
    let ids = make_site(&root, "real.test", user);
    // Below min_uid: root's and daemon's (uid 1).
    for (host, owner) in [("rootowned.test", (0, 0)), ("daemon.test", (1, 1))] {
        make_site(&root, host, user);
        chown_r(&root.join(host), owner);
    }
    // A symlinked host directory, and a real one whose public/ is a symlink
    // (both to the real site).
    std::os::unix::fs::symlink(root.join("real.test"), root.join("link.test")).unwrap();
    fs::create_dir(root.join("linkpub.test")).unwrap();
    std::os::unix::fs::symlink(
        root.join("real.test/public"),
        root.join("linkpub.test/public"),
    )
    .unwrap();
    chown_r(&root.join("linkpub.test"), ids);
    // Names that are not host names.
    for name in ["127.0.0.1", "Upper.test", "wild*.test", "10.1", "fe80::1"] {
        make_site(&root, name, user);
    }
    let s = start(&dir, "");
    assert_eq!(fetch(&s, "real.test", "/").0, 200);
    for (host, why) in [
        ("rootowned.test", "is owned by uid 0, below min_uid"),
        ("daemon.test", "is owned by uid 1, below min_uid"),
        (
            "link.test",
            "is a symbolic link; only real directories are sites",
        ),
        ("linkpub.test", "public is a symbolic link"),
        ("127.0.0.1", "is an IP address"),
        ("Upper.test", "has upper case"),
        ("wild*.test", "is a wildcard"),
        (
            "10.1",
            "ends in a number (\"1\"), which clients read as an IPv4 address",
        ),
        ("fe80::1", "is an IP address"),
    ] {
        let line = format!("{}: discovery: skipped: {why}", root.join(host).display());
        assert_eq!(count(&s, &line), 1, "{line}\n{}", s.output());
    }
    for host in [
        "rootowned.test",
        "daemon.test",
        "link.test",
        "linkpub.test",
        "upper.test",
    ] {
        assert_eq!(fetch(&s, host, "/").0, 421, "{host}");
    }
    assert_eq!(fetch(&s, "127.0.0.1", "/").0, 421);
    // Rescans (every 2 s) and an unrelated change do not say it again.
    make_site(&root, "other.test", user);
    assert!(wait_for(&s, "other.test", "/", 200));
    std::thread::sleep(Duration::from_secs(5));
    let line = format!(
        "{}: discovery: skipped: has upper case",
        root.join("Upper.test").display()
    );
    assert_eq!(count(&s, &line), 1, "{}", s.output());
}

#[test]
fn a_host_the_administrators_configuration_serves_stays_the_administrators_and_the_conflict_is_logged_once()
 {
    let dir = Dir::new();
    let root = sites(&dir);
    // The administrator's tenant ta serves taken.test from dir/admin.
    let (uid, gid) = ensure_user("berth-ta");
    dir.write("admin/index.html", "the administrator's\n");
    dir.chown("admin", uid, gid);
    let admin = format!(
        r#"
[tenant.ta]
user = "berth-ta"
[[tenant.ta.site]]
hosts = ["taken.test"]
root = "{}"
"#,
        dir.join("admin").display()
    );
    make_site(&root, "taken.test", "berth-tdisc1");
    let s = start(&dir, &admin);
    assert_eq!(
        fetch(&s, "taken.test", "/"),
        (200, "the administrator's\n".into())
    );
    let line = format!(
        "{}: discovery: skipped: the host \"taken.test\" is tenant ta's in the administrator's configuration",
        root.join("taken.test").display()
    );
    assert_eq!(count(&s, &line), 1, "{}", s.output());
    // Neither rescans, nor reloads for other changes, nor SIGHUP say it again.
    make_site(&root, "free.test", "berth-tdisc1");
    assert!(wait_for(&s, "free.test", "/", 200));
    s.signal(nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(count(&s, &line), 1, "{}", s.output());
    assert_eq!(fetch(&s, "taken.test", "/").1, "the administrator's\n");
}

/// A user whose name `useradd` takes only with `--badname` (names starting
/// `berth-t`, as every test user's).
fn bad_named_user(name: &str) -> (u32, u32) {
    assert!(name.starts_with("berth-t"));
    if nix::unistd::User::from_name(name).unwrap().is_none() {
        let _ = std::process::Command::new("useradd")
            .args([
                "--badname",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ])
            .status()
            .unwrap();
    }
    let u = nix::unistd::User::from_name(name).unwrap().expect(name);
    (u.uid.as_raw(), u.gid.as_raw())
}

#[test]
fn an_owner_whose_name_is_no_tenant_name_or_is_the_administrators_tenants_is_left_out_with_a_log_line()
 {
    let dir = Dir::new();
    let root = sites(&dir);
    make_site(&root, "fine.test", "berth-tdisc1");
    // Upper case: a valid user name (with --badname), not a tenant name.
    let upper = bad_named_user("berth-tDisc");
    make_site(&root, "upper-owner.test", "berth-tdisc2");
    chown_r(&root.join("upper-owner.test"), upper);
    // A user named like a tenant of the administrator's of another user.
    let (uid, gid) = ensure_user("berth-ta");
    dir.write("admin/index.html", "admin\n");
    dir.chown("admin", uid, gid);
    ensure_user("berth-tdisc4");
    let admin = format!(
        r#"
[tenant.berth-tdisc4]
user = "berth-ta"
[[tenant.berth-tdisc4.site]]
hosts = ["admin.test"]
root = "{}"
"#,
        dir.join("admin").display()
    );
    make_site(&root, "taken-name.test", "berth-tdisc4");
    let s = start(&dir, &admin);
    assert_eq!(fetch(&s, "fine.test", "/").0, 200);
    for (host, why) in [
        (
            "upper-owner.test",
            "its owner's user name \"berth-tDisc\" is not a valid tenant name",
        ),
        (
            "taken-name.test",
            "the tenant name \"berth-tdisc4\" (its owner's user name) is taken by the administrator's tenant",
        ),
    ] {
        assert_eq!(fetch(&s, host, "/").0, 421, "{host}");
        let line = format!("{}: discovery: skipped: {why}", root.join(host).display());
        assert_eq!(count(&s, &line), 1, "{line}\n{}", s.output());
    }
}

#[test]
fn a_directory_of_an_administrators_tenants_user_joins_that_tenant() {
    let dir = Dir::new();
    let root = sites(&dir);
    let (uid, gid) = ensure_user("berth-ta");
    dir.write("tahome/admin/index.html", "admin site\n");
    dir.chown("tahome", uid, gid);
    let admin = format!(
        r#"
[tenant.ta]
user = "berth-ta"
home = "{home}"
[[tenant.ta.site]]
hosts = ["admin.test"]
root = "{home}/admin"
"#,
        home = dir.join("tahome").display()
    );
    let s = start(&dir, &admin);
    make_site(&root, "joined.test", "berth-ta");
    assert!(wait_for(&s, "joined.test", "/", 200), "{}", s.output());
    let (status, body) = fetch(&s, "joined.test", "/id.php");
    assert_eq!((status, body.trim()), (200, format!("uid={uid}").as_str()));
    // Logged as tenant ta's; no tenant named after the user was made.
    assert!(eventually(WITHIN, || s
        .access_log("ta")
        .contains("joined.test")));
    assert!(!dir.join("log/berth-ta").exists());
}

#[test]
fn a_discovered_root_swapped_for_a_symlink_or_another_owners_directory_is_not_opened() {
    use berth::front::static_files::Root;
    require_root();
    let dir = Dir::new();
    let (uid, gid) = ensure_user("berth-tdisc1");
    let (other, other_gid) = ensure_user("berth-tdisc2");
    dir.mkdir("mine/public");
    dir.chown("mine", uid, gid);
    dir.mkdir("theirs/public");
    dir.chown("theirs", other, other_gid);
    assert!(Root::open_owned(&dir.join("mine/public"), uid).is_ok());
    // The tenant swaps its public/ for a link to another tenant's ...
    fs::remove_dir(dir.join("mine/public")).unwrap();
    dir.symlink(dir.join("theirs/public"), "mine/public");
    assert!(Root::open_owned(&dir.join("mine/public"), uid).is_err());
    // ... or for another tenant's directory moved in by someone who could.
    fs::remove_file(dir.join("mine/public")).unwrap();
    fs::rename(dir.join("theirs/public"), dir.join("mine/public")).unwrap();
    let e = Root::open_owned(&dir.join("mine/public"), uid).unwrap_err();
    assert!(
        e.to_string().contains(&format!("owned by uid {other}")),
        "{e}"
    );
}

#[test]
fn berth_check_refuses_a_discovery_root_others_may_write_and_bad_handlers_by_line() {
    require_root();
    let dir = Dir::new();
    let root = sites(&dir);
    // The status, the output, and the line of the first line starting
    // with each of `lines` in the file checked.
    let check = |body: &str, lines: &[&str]| {
        let (block, _, _) = server_block(&dir, "");
        let text = format!("{block}{body}");
        let path = dir.write("check.toml", &text);
        let out = std::process::Command::new(BERTH)
            .args(["check", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let at: Vec<usize> = lines
            .iter()
            .map(|l| text.lines().position(|x| x.starts_with(l)).unwrap() + 1)
            .collect();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            at,
        )
    };
    let discovery = format!("[discovery]\nroot = \"{}\"\n", root.display());
    let (code, out, _) = check(&discovery, &[]);
    assert_eq!(code, Some(0), "{out}");
    fs::set_permissions(&root, fs::Permissions::from_mode(0o1777)).unwrap();
    let (code, out, at) = check(&discovery, &["root ="]);
    assert_eq!(code, Some(1));
    let want = format!(
        ":{}: discovery.root: {} is writable by group or others (mode 1777): any of them could claim any host name",
        at[0],
        root.display()
    );
    assert!(out.contains(&want), "{want}\n{out}");
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
    let (code, out, at) = check(
        &format!(
            "{discovery}rescan = \"10ms\"\n\
         [discovery.handler.php]\nprotocol = \"fastcgi\"\ncommand = [\"/usr/bin/php-cgi\"]\n\
         [discovery.handler.cgi]\nextensions = [\"cgi\"]\nprotocol = \"cgi\"\n\
         [discovery.handler.pl]\nextensions = [\"pl\"]\nprotocol = \"cgi\"\npath = \"/\"\n"
        ),
        &["rescan", "[discovery.handler.php]", "path"],
    );
    assert_eq!(code, Some(1));
    for want in [
        format!(
            ":{}: discovery.rescan: must be between \"1s\" and \"1h\"",
            at[0]
        ),
        format!(":{}: discovery.handler.php.extensions: is required", at[1]),
        format!(
            ":{}: discovery.handler.pl.path: handlers \"cgi\" and \"pl\" both take the path \"/\"",
            at[2]
        ),
    ] {
        assert!(out.contains(&want), "{want}\n{out}");
    }
}

/// The descriptor number the front end `pid` holds `path` open as, if it
/// does.
fn fd_of(pid: u32, path: &Path) -> Option<String> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .find(|e| fs::read_link(e.path()).is_ok_and(|l| l == path))
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

/// The finding: at 10,000 discovered sites, the front end opened every site
/// root again at each reload while the old generation still held its own:
/// 20,000 roots against a limit of 20,000 descriptors, and 3,000 sites
/// answered 500 ("Too many open files") after the first SIGHUP. Now a root
/// that is still the same directory is kept (the same descriptor), one
/// replaced by another directory is opened anew (and the watcher sees the
/// replacement: the new public/ is served), and as root berth raises its
/// hard limit for the front end.
#[test]
fn reloads_keep_unchanged_site_roots_open_once_and_reopen_a_replaced_one() {
    let dir = Dir::new();
    let root = sites(&dir);
    make_site(&root, "kept.test", "berth-tdisc1");
    make_site(&root, "swapped.test", "berth-tdisc2");
    let s = start(&dir, "");
    assert_eq!(fetch(&s, "swapped.test", "/").1, "swapped.test\n");
    let front = s.front_pid();
    let kept = root.join("kept.test/public");
    let before = fd_of(front, &kept).expect("the root is open");
    for generation in 2..=4 {
        s.signal(nix::sys::signal::Signal::SIGHUP);
        let line = format!("serving configuration generation {generation}\n");
        assert!(s.wait_output(&line, WITHIN), "{}", s.output());
    }
    assert_eq!(fd_of(front, &kept), Some(before), "reopened at a reload");
    // The tenant replaces its public/ with a new directory.
    let public = root.join("swapped.test/public");
    let ids = ensure_user("berth-tdisc2");
    fs::remove_dir_all(&public).unwrap();
    fs::create_dir(&public).unwrap();
    fs::write(public.join("index.html"), "the new one\n").unwrap();
    fs::set_permissions(&public, fs::Permissions::from_mode(0o755)).unwrap();
    chown_r(&public, ids);
    assert!(
        eventually(WITHIN, || fetch(&s, "swapped.test", "/").1
            == "the new one\n"),
        "{}",
        s.output()
    );
    // Room for a descriptor per root of 10,000 sites and their clients,
    // where root may raise limits (CAP_SYS_RESOURCE; some containers drop
    // it: then the limit berth was given, and a warning).
    let limits = fs::read_to_string(format!("/proc/{front}/limits")).unwrap();
    let hard: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse().ok())
        .unwrap();
    let nr_open: u64 = fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    if caps & (1 << 24) != 0 {
        assert!(hard >= 524_288.min(nr_open), "{limits}");
    } else {
        let ours = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(Some(hard), ours.maximum, "{limits}");
        assert!(s.output().contains("cannot raise the open-file limit"));
    }
}

/// Writes `root/HOST/berth.toml` as `ids`' file.
fn site_file(root: &Path, host: &str, text: &str, ids: (u32, u32)) {
    let path = root.join(host).join("berth.toml");
    fs::write(&path, text).unwrap();
    std::os::unix::fs::chown(&path, Some(ids.0), Some(ids.1)).unwrap();
}

#[test]
fn a_discovered_sites_berth_toml_adds_its_routes_and_a_refused_one_keeps_the_last_good() {
    let dir = Dir::new();
    let s = start(&dir, "");
    let root = dir.join("sites");
    let ids = make_site(&root, "one.test", "berth-tdisc5");
    make_site(&root, "two.test", "berth-tdisc5");
    site_file(
        &root,
        "one.test",
        "[[route]]\npath = \"/go\"\nredirect = \"/first\"\n",
        ids,
    );
    assert!(wait_for(&s, "one.test", "/go", 308), "{}", s.output());
    assert!(wait_for(&s, "two.test", "/", 200));
    // The route is one.test's alone, though both sites are the same tenant's.
    assert_eq!(fetch(&s, "two.test", "/go").0, 404);

    // A site's file may route only its own site, and sets no limits: refused
    // whole, the last good one stays, the tenant is told.
    site_file(
        &root,
        "one.test",
        "[[route]]\nhost = \"two.test\"\npath = \"/go\"\nredirect = \"/second\"\n[limits]\nmemory = \"64MiB\"\n",
        ids,
    );
    let log = dir.join("log/berth-tdisc5/error.log");
    assert!(
        eventually(WITHIN, || fs::read_to_string(&log).is_ok_and(|t| t
            .contains("not this site's host")
            && t.contains("limits belong to the tenant"))),
        "{:?}\n{}",
        fs::read_to_string(&log),
        s.output()
    );
    let resp = get_raw(s.addr(), "one.test", "/go/x");
    assert!(resp.contains("location: /first/x"), "{resp}");
    assert_eq!(fetch(&s, "two.test", "/go").0, 404);

    // Mended, it applies.
    site_file(
        &root,
        "one.test",
        "[[route]]\npath = \"/go\"\nredirect = \"/third\"\n",
        ids,
    );
    assert!(
        eventually(WITHIN, || get_raw(s.addr(), "one.test", "/go/x")
            .contains("location: /third/x")),
        "{}",
        s.output()
    );
}
