//! Basic authentication against real `htpasswd` files (bcrypt, SHA-256 and
//! SHA-512 crypt), attempts to get around it by spelling the path differently,
//! refusal of weak hashes at load time, and redirect routes.
mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;

const LIMITS: &str = r#"header_timeout = "2s"
keepalive_timeout = "2s"
drain_timeout = "5s""#;

/// The text of every private file: must never appear in an unauthenticated answer.
const SECRET: &str = "SECRET-CONTENT";

/// Runs the real `htpasswd` with `args` (e.g. `-cbB file user pw`).
fn htpasswd(args: &[&str]) {
    let out = Command::new("htpasswd")
        .args(args)
        .output()
        .expect("htpasswd");
    assert!(
        out.status.success(),
        "htpasswd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An htpasswd file with bob (bcrypt), sam (SHA-256 crypt), sue (SHA-512 crypt).
fn write_users(dir: &Dir) -> PathBuf {
    let f = dir.join("staff.htpasswd");
    let f_str = f.to_str().unwrap();
    htpasswd(&["-cbB", f_str, "bob", "bob-pw"]);
    htpasswd(&["-b2", f_str, "sam", "sam-pw"]);
    htpasswd(&["-b5", f_str, "sue", "sue-pw"]);
    let text = std::fs::read_to_string(&f).unwrap();
    let hash = |user: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{user}:")))
            .unwrap_or_else(|| panic!("{user} not in {text}"))
            .to_string()
    };
    assert!(hash("bob").starts_with("$2"), "bcrypt: {text}");
    assert!(hash("sam").starts_with("$5$"), "SHA-256 crypt: {text}");
    assert!(hash("sue").starts_with("$6$"), "SHA-512 crypt: {text}");
    f
}

/// Site a.test with /private/ behind auth and a public area.
fn start(dir: &Dir, htpasswd: &Path) -> Server {
    let (uid, gid) = ensure_user("berth-ta");
    dir.write("a/index.html", "public home\n");
    dir.write("a/public/x.html", "public x\n");
    dir.write("a/private/index.html", format!("{SECRET} index\n"));
    dir.write("a/private/x", format!("{SECRET} x\n"));
    dir.write("a/privateer/index.html", "not private\n");
    dir.chown("a", uid, gid);
    let (server, port, tls_port) = server_block(dir, LIMITS);
    let config = format!(
        r#"{server}
[tenant.ta]
user = "berth-ta"

[[tenant.ta.site]]
hosts = ["a.test"]
root = "{root}"

[[tenant.ta.site.route]]
path = "/private/"
auth = {{ realm = "Staff", htpasswd = "{htpasswd}" }}
"#,
        root = dir.join("a").display(),
        htpasswd = htpasswd.display(),
    );
    Server::start(dir, &config, port, tls_port)
}

fn basic(user: &str, pw: &str) -> String {
    format!(
        "Authorization: Basic {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

/// A raw request with a literal request target and extra header lines.
fn request(s: &Server, target: &str, headers: &str) -> String {
    raw(
        s.addr(),
        &format!("GET {target} HTTP/1.1\r\nHost: a.test\r\n{headers}Connection: close\r\n\r\n"),
    )
}

fn header(resp: &str, name: &str) -> Option<String> {
    let head = resp.split("\r\n\r\n").next().unwrap_or("");
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

#[test]
fn basic_auth_with_bcrypt_and_sha_crypt() {
    require_root();
    let dir = Dir::new();
    let users = write_users(&dir);
    let s = start(&dir, &users);

    let r = request(&s, "/private/", "");
    assert_eq!(status_of(&r), 401, "{r}");
    let www = header(&r, "www-authenticate").expect("WWW-Authenticate");
    assert!(www.starts_with(r#"Basic realm="Staff""#), "{www}");
    assert!(!r.contains(SECRET), "{r}");

    for (user, pw) in [
        ("bob", "wrong"),
        ("bob", "sam-pw"),
        ("sam", "bob-pw"),
        ("nobody", "bob-pw"),
        ("bob", ""),
        ("", "bob-pw"),
    ] {
        let r = request(&s, "/private/", &basic(user, pw));
        assert_eq!(status_of(&r), 401, "{user}:{pw}: {r}");
        assert!(!r.contains(SECRET), "{r}");
    }
    // Malformed credentials are refused, not an error.
    for h in [
        "Authorization: Basic !!!\r\n",
        "Authorization: Bearer Ym9iOmJvYi1wdw==\r\n",
        "Authorization: Basic Ym9i\r\n", // "bob" without a colon
    ] {
        let r = request(&s, "/private/", h);
        assert_eq!(status_of(&r), 401, "{h}: {r}");
    }

    for (user, pw) in [("bob", "bob-pw"), ("sam", "sam-pw"), ("sue", "sue-pw")] {
        let r = request(&s, "/private/", &basic(user, pw));
        assert_eq!(status_of(&r), 200, "{user}: {r}");
        assert_eq!(body(&r), format!("{SECRET} index\n"));
        let r = request(&s, "/private/x", &basic(user, pw));
        assert_eq!(status_of(&r), 200, "{user}: {r}");
        assert_eq!(body(&r), format!("{SECRET} x\n"));
    }

    // The access log names the user.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = s.access_log("ta");
        let has = |u: &str| {
            log.lines()
                .any(|l| l.starts_with(&format!("a.test 127.0.0.1 - {u} [")) && l.contains(" 200 "))
        };
        if has("bob") && has("sam") && has("sue") {
            // Failed attempts are logged without a user.
            assert!(
                log.lines()
                    .any(|l| l.starts_with("a.test 127.0.0.1 - - [") && l.contains(" 401 ")),
                "{log}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "users missing from the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The same over HTTP/2 (h2c).
    let h2 = client(true, None, &["a.test"], s.port);
    let url = format!("http://a.test:{}/private/x", s.port);
    let resp = h2.get(&url).send().unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 401);
    assert!(!resp.text().unwrap().contains(SECRET));
    let resp = h2
        .get(&url)
        .basic_auth("sue", Some("sue-pw"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().unwrap(), format!("{SECRET} x\n"));

    // The public part needs nothing; a name that merely starts with the prefix
    // is not under it.
    let r = request(&s, "/", "");
    assert_eq!(status_of(&r), 200, "{r}");
    let r = request(&s, "/public/x.html", "");
    assert_eq!(status_of(&r), 200, "{r}");
    let r = request(&s, "/privateer/", "");
    assert_eq!(status_of(&r), 200, "{r}");
}

#[test]
fn auth_cannot_be_bypassed_by_spelling_the_path_differently() {
    require_root();
    let dir = Dir::new();
    let users = write_users(&dir);
    let s = start(&dir, &users);
    // 401: it is under the protected prefix; 400: refused as malformed;
    // 404/421: it is not the protected content at all.
    for (target, expected) in [
        ("/private", 401),
        ("/private/", 401),
        ("/private/x", 401),
        ("/private/index.html", 401),
        ("/private/./x", 401),
        ("/./private/x", 401),
        ("/public/../private/x", 400),
        ("/public/%2e%2e/private/x", 400),
        ("/public/.%2E/private/x", 400),
        ("//private/x", 401),
        ("///private//x", 401),
        ("/%70rivate/x", 401),
        ("/%70%72%69%76%61%74%65/x", 401),
        ("/private%2fx", 400),
        ("/private%2Fx", 400),
        ("/%2fprivate/x", 400),
        ("/private%5cx", 400),
        ("/private\\x", 400),
        ("/private;x", 404),
        ("/private/x?", 401),
        ("/private/x#frag", 401),
        ("/private/x%00", 400),
        ("/private/x%20", 401),
        ("/private./x", 404),
        ("/private/x/", 401),
        ("/private/.", 401),
        ("/private/%2e", 401),
        ("/PRIVATE/x", 404),
        ("http://a.test/private/x", 401),
        // Absolute-form target naming another host than Host: refused.
        ("http://other.test/private/x", 400),
    ] {
        let r = try_raw(
            s.addr(),
            format!("GET {target} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        assert!(
            !r.contains(SECRET),
            "{target}: content leaked without credentials:\n{r}"
        );
        assert!(!r.is_empty(), "{target}: no answer");
        assert_eq!(status_of(&r), expected, "{target}:\n{r}");
    }
    // The prefix without its slash is protected too (not a redirect to content).
    let r = request(&s, "/private", "");
    assert_eq!(status_of(&r), 401, "{r}");
    // HEAD does not leak the length of a private file either.
    let r = raw(
        s.addr(),
        "HEAD /private/x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), 401, "{r}");
}

#[test]
fn md5_htpasswd_is_refused_by_check() {
    require_root();
    ensure_user("berth-ta");
    let dir = Dir::new();
    let users = dir.join("weak.htpasswd");
    htpasswd(&["-cbB", users.to_str().unwrap(), "good", "pw"]);
    htpasswd(&["-bm", users.to_str().unwrap(), "weak", "pw"]);
    assert!(
        std::fs::read_to_string(&users)
            .unwrap()
            .contains("weak:$apr1$")
    );
    dir.mkdir("a");
    let (uid, gid) = ensure_user("berth-ta");
    dir.chown("a", uid, gid);
    let (server, _, _) = server_block(&dir, "");
    let config = format!(
        r#"{server}
[tenant.ta]
user = "berth-ta"

[[tenant.ta.site]]
hosts = ["a.test"]
root = "{root}"

[[tenant.ta.site.route]]
path = "/private/"
auth = {{ realm = "Staff", htpasswd = "{users}" }}
"#,
        root = dir.join("a").display(),
        users = users.display(),
    );
    let path = dir.write("berth.toml", &config);
    let out = Command::new(BERTH)
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let line_no = config
        .lines()
        .position(|l| l.starts_with("auth = "))
        .unwrap()
        + 1;
    let prefix = format!(
        "{}:{line_no}: tenant.ta.site[0].route[0].auth.htpasswd: ",
        path.display()
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(
        lines[0].starts_with(&prefix),
        "{stdout}\nexpected {prefix:?}"
    );
    assert!(
        lines[0].contains("-B"),
        "must say to use htpasswd -B: {stdout}"
    );
    assert!(
        lines[0].contains(":2:"),
        "must name the htpasswd line: {stdout}"
    );

    // And `serve` refuses to start with it.
    let out = Command::new(BERTH)
        .args(["serve", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-B"));
}

#[test]
fn redirect_routes() {
    require_root();
    let (uid, gid) = ensure_user("berth-ta");
    let dir = Dir::new();
    dir.write("a/index.html", "home\n");
    dir.write("a/new/x", "new x\n");
    dir.chown("a", uid, gid);
    let (server, port, tls_port) = server_block(&dir, LIMITS);
    let config = format!(
        r#"{server}
[tenant.ta]
user = "berth-ta"

[[tenant.ta.site]]
hosts = ["a.test"]
root = "{root}"

[[tenant.ta.site.route]]
path = "/old/"
redirect = "https://new.test/"

[[tenant.ta.site.route]]
path = "/moved/"
redirect = "https://new.test/m/"
status = 301

[[tenant.ta.site.route]]
path = "/rel/"
redirect = "/new/"
status = 302
"#,
        root = dir.join("a").display(),
    );
    let s = Server::start(&dir, &config, port, tls_port);
    let check = |target: &str, status: u16, location: &str| {
        let r = request(&s, target, "");
        assert_eq!(status_of(&r), status, "{target}: {r}");
        assert_eq!(
            header(&r, "location").as_deref(),
            Some(location),
            "{target}: {r}"
        );
    };
    check("/old/rest?query", 308, "https://new.test/rest?query");
    check("/old/a/b.html", 308, "https://new.test/a/b.html");
    check("/old/", 308, "https://new.test/");
    check("/old", 308, "https://new.test/");
    check("/old/a%20b?x=1&y=2", 308, "https://new.test/a%20b?x=1&y=2");
    check("/moved/rest?query", 301, "https://new.test/m/rest?query");
    check("/rel/x", 302, "/new/x");
    check("/rel/", 302, "/new/");
    // Followed, the relative target is served.
    let r = request(&s, "/new/x", "");
    assert_eq!(body(&r), "new x\n", "{r}");
    // Not under the prefix: not redirected.
    let r = request(&s, "/older", "");
    assert_eq!(status_of(&r), 404, "{r}");
    // A path that normalizes into the prefix is redirected the same way, and
    // one that escapes with .. is refused.
    check("//old//rest", 308, "https://new.test/rest");
    let r = request(&s, "/old/../etc/passwd", "");
    assert_eq!(status_of(&r), 400, "{r}");
    // Redirects are logged with their status.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s
        .access_log("ta")
        .contains("\"GET /old/rest?query HTTP/1.1\" 308 ")
    {
        assert!(Instant::now() < deadline, "{}", s.access_log("ta"));
        std::thread::sleep(Duration::from_millis(50));
    }
}
