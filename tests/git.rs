//! A real client end to end: `git push` and `git clone` over smart HTTP
//! through Debian's `git-http-backend`, run by berth as a tenant's CGI app
//! (issue 7). git sends a pack larger than its `http.postBuffer` with
//! `Transfer-Encoding: chunked`, which berth used to answer with 411; nginx +
//! fcgiwrap serves it. The pushed commit carries 3 MB that do not compress.
mod common;
use common::apps::*;
use common::*;

use std::path::Path;
use std::process::Command;

const USER: &str = "berth-tgit";
const GIT: &str = "/usr/bin/git";
const BACKEND: &str = "/usr/lib/git-core/git-http-backend";

/// Runs git with `args` in `dir`; panics with its output if it fails.
fn git(dir: &Path, args: &[&str]) -> String {
    git_env(dir, args, &[])
}

fn git_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(GIT)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("run git");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "git {args:?} failed:\n{text}");
    text
}

#[test]
fn git_push_and_clone_a_3_mb_commit_through_git_http_backend() {
    require_root();
    let dir = Dir::new();
    let home = Home::new(&dir, "home-git", USER, ensure_user(USER));
    let repos = home.join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    git(
        &repos,
        &["init", "-q", "--bare", "-b", "main", "project.git"],
    );
    let bare = repos.join("project.git");
    git(&bare, &["config", "http.receivepack", "true"]);
    let tenants = format!(
        r#"{site}
[[tenant.tg.site.route]]
path = "/git"
app = "git"
[tenant.tg.app.git]
protocol = "cgi"
command = ["{BACKEND}"]
env = {{ GIT_PROJECT_ROOT = "{repos}", GIT_HTTP_EXPORT_ALL = "1" }}
"#,
        site = tenant_site("tg", &home, "git.test"),
        repos = repos.display(),
    );
    let s = start_tenants(&dir, &[&home], &tenants);
    let resolve = format!("http.curloptResolve=git.test:{}:127.0.0.1", s.port);
    let url = format!("http://git.test:{}/git/project.git", s.port);

    // A commit with 3 MB of random bytes, pushed.
    let work = dir.mkdir("work");
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["config", "user.email", "t@git.test"]);
    git(&work, &["config", "user.name", "t"]);
    let blob: Vec<u8> = {
        let mut f = std::fs::File::open("/dev/urandom").unwrap();
        let mut b = vec![0u8; 3 << 20];
        std::io::Read::read_exact(&mut f, &mut b).unwrap();
        b
    };
    std::fs::write(work.join("blob.bin"), &blob).unwrap();
    git(&work, &["add", "blob.bin"]);
    git(&work, &["commit", "-q", "-m", "three megabytes"]);
    // (GIT_TRACE_CURL shows the request heads git sent.)
    let pushed = git_env(
        &work,
        &["-c", &resolve, "push", &url, "main"],
        &[("GIT_TRACE_CURL", "1"), ("GIT_TRACE_CURL_NO_DATA", "1")],
    );
    assert!(pushed.contains("main -> main"), "{pushed}\n{}", s.output());
    assert!(
        pushed.contains("Transfer-Encoding: chunked"),
        "git sent the pack with a length this time; the test proves nothing:\n{pushed}"
    );
    let head = git(&work, &["rev-parse", "HEAD"]);

    // Cloned back: the same commit, the same bytes.
    let clone = dir.join("clone");
    git(
        dir.path(),
        &["-c", &resolve, "clone", "-q", &url, clone.to_str().unwrap()],
    );
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]), head);
    assert_eq!(std::fs::read(clone.join("blob.bin")).unwrap(), blob);
    let log = s.access_log("tg");
    assert!(
        log.contains("POST /git/project.git/git-receive-pack"),
        "{log}"
    );
}
