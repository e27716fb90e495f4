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
    let s = start_a_and_b(&dir, &pki);
    let (port, tls_port) = (s.addr().port(), s.tls_addr().port());

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
