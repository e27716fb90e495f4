//! The basics end to end: two tenants, HTTP/1.1, h2c, TLS with ALPN h2.
mod common;
use common::*;

#[test]
fn two_tenants_over_http1_h2c_and_tls() {
    require_root();
    let (uid_a, gid_a) = ensure_user("berth-ta");
    let (uid_b, gid_b) = ensure_user("berth-tb");
    let dir = Dir::new();
    dir.write("a/index.html", "site A\n");
    dir.write("b/index.html", "site B\n");
    dir.chown("a", uid_a, gid_a);
    dir.chown("b", uid_b, gid_b);
    let pki = Pki::new();
    let (ca, ka) = pki.issue(&dir, "a", &["a.test", "www.a.test"]);
    let (cb, kb) = pki.issue(&dir, "b", &["b.test"]);
    let (server, port, tls_port) = server_block(&dir, "");
    let config = format!(
        r#"{server}
[tenant.ta]
user = "berth-ta"
[[tenant.ta.site]]
hosts = ["a.test", "www.a.test"]
root = "{a}"
tls = {{ cert = "{ca}", key = "{ka}" }}

[tenant.tb]
user = "berth-tb"
[[tenant.tb.site]]
hosts = ["b.test"]
root = "{b}"
tls = {{ cert = "{cb}", key = "{kb}" }}
"#,
        a = dir.join("a").display(),
        b = dir.join("b").display(),
        ca = ca.display(),
        ka = ka.display(),
        cb = cb.display(),
        kb = kb.display(),
    );
    let s = Server::start(&dir, &config, port, tls_port);

    let r = get_raw(s.addr(), "a.test", "/");
    assert_eq!(status_of(&r), 200, "{r}");
    assert!(r.ends_with("site A\n"), "{r}");
    let r = get_raw(s.addr(), "WWW.A.TEST:1234", "/");
    assert!(r.ends_with("site A\n"), "{r}");
    let r = get_raw(s.addr(), "b.test", "/index.html");
    assert!(r.ends_with("site B\n"), "{r}");

    let h2c = client(true, None, &["a.test"], port);
    let resp = h2c.get(format!("http://a.test:{port}/")).send().unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.text().unwrap(), "site A\n");

    let tls = client(false, Some(&pki.ca_pem), &["a.test", "b.test"], tls_port);
    let resp = tls
        .get(format!("https://b.test:{tls_port}/"))
        .send()
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.text().unwrap(), "site B\n");
    let resp = tls
        .get(format!("https://a.test:{tls_port}/"))
        .send()
        .unwrap();
    assert_eq!(resp.text().unwrap(), "site A\n");
}
