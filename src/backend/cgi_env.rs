//! The CGI meta-variables (RFC 3875 §4.1) a request becomes for a FastCGI or
//! CGI app. Pure: built from the request head and what routing found.
//!
//! Choices an administrator would expect from Apache/nginx:
//! - `HTTP_PROXY` is never set, whatever the client sends (httpoxy): apps take
//!   it for their outgoing proxy.
//! - When berth checked Basic auth itself, the app gets `AUTH_TYPE` and
//!   `REMOTE_USER`, never the password (`Authorization` is not passed on);
//!   otherwise `HTTP_AUTHORIZATION` is passed so apps can do their own auth.
//! - `REDIRECT_STATUS=200`, which php-cgi insists on (`cgi.force_redirect`).

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use http::request::Parts;
use http::{Version, header};

/// What routing found about the script that runs.
pub struct Script<'a> {
    /// The URL path of the script: the route prefix of a mounted app, or the
    /// path up to and including the `*.php` segment.
    pub name: &'a str,
    /// The rest of the decoded path after `name` (may be empty).
    pub path_info: &'a str,
    /// The file that runs (site root + `name`, or the app's program).
    pub filename: &'a Path,
    pub document_root: &'a Path,
}

/// The connection the request came on.
pub struct Peer<'a> {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
    pub server_name: &'a str,
    /// The user berth authenticated, if the route has `auth`.
    pub user: Option<&'a str>,
}

/// CGI variables: names and values borrowed from the request and the route
/// where they can be (a FastCGI request copies them into its records once).
pub type Vars<'a> = Vec<(Cow<'a, [u8]>, Cow<'a, [u8]>)>;

/// The variables, in a stable order.
///
/// `body_length` is the length of the body the app gets (read whole by the
/// front end, so known even when the client sent it chunked): it becomes
/// `CONTENT_LENGTH`, whatever the client's header said.
pub fn variables<'a>(
    parts: &'a Parts,
    script: &Script<'a>,
    peer: &Peer<'a>,
    body_length: Option<u64>,
) -> Vars<'a> {
    let mut v: Vars<'a> = Vec::with_capacity(24 + parts.headers.len());
    let mut set = |k: &'static str, val: Cow<'a, [u8]>| v.push((Cow::Borrowed(k.as_bytes()), val));
    let b = |val: &'a [u8]| Cow::Borrowed(val);
    set("GATEWAY_INTERFACE", b(b"CGI/1.1"));
    set("SERVER_SOFTWARE", b(b"berth"));
    set(
        "SERVER_PROTOCOL",
        b(match parts.version {
            Version::HTTP_10 => b"HTTP/1.0",
            Version::HTTP_2 => b"HTTP/2.0",
            _ => b"HTTP/1.1",
        }),
    );
    set("REQUEST_METHOD", b(parts.method.as_str().as_bytes()));
    set(
        "REQUEST_URI",
        b(parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .as_bytes()),
    );
    set(
        "QUERY_STRING",
        b(parts.uri.query().unwrap_or("").as_bytes()),
    );
    set("SCRIPT_NAME", b(script.name.as_bytes()));
    set(
        "SCRIPT_FILENAME",
        b(script.filename.as_os_str().as_encoded_bytes()),
    );
    if !script.path_info.is_empty() {
        set("PATH_INFO", b(script.path_info.as_bytes()));
        let translated = script
            .document_root
            .join(script.path_info.trim_start_matches('/'));
        set(
            "PATH_TRANSLATED",
            Cow::Owned(translated.into_os_string().into_encoded_bytes()),
        );
    }
    set(
        "DOCUMENT_ROOT",
        b(script.document_root.as_os_str().as_encoded_bytes()),
    );
    set("SERVER_NAME", b(peer.server_name.as_bytes()));
    set("SERVER_ADDR", Cow::Owned(ip_text(peer.local.ip())));
    set("SERVER_PORT", Cow::Owned(number(peer.local.port().into())));
    set("REMOTE_ADDR", Cow::Owned(ip_text(peer.remote.ip())));
    set("REMOTE_PORT", Cow::Owned(number(peer.remote.port().into())));
    set(
        "REQUEST_SCHEME",
        b(if peer.tls { b"https" } else { b"http" }),
    );
    if peer.tls {
        set("HTTPS", b(b"on"));
    }
    set("REDIRECT_STATUS", b(b"200"));
    if let Some(user) = peer.user {
        set("AUTH_TYPE", b(b"Basic"));
        set("REMOTE_USER", b(user.as_bytes()));
    }
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
        set("CONTENT_TYPE", b(ct.as_bytes()));
    }
    if let Some(n) = body_length {
        set("CONTENT_LENGTH", Cow::Owned(number(n)));
    }
    // HTTP_* for the other headers (`keys` gives each name once); repeated
    // headers are joined with ", ".
    for name in parts.headers.keys() {
        if name == header::CONTENT_TYPE || name == header::CONTENT_LENGTH {
            continue;
        }
        if name.as_str() == "proxy" {
            continue;
        }
        if name == header::AUTHORIZATION && peer.user.is_some() {
            continue;
        }
        let mut key = Vec::with_capacity(5 + name.as_str().len());
        key.extend_from_slice(b"HTTP_");
        key.extend(name.as_str().bytes().map(|c| {
            if c == b'-' {
                b'_'
            } else {
                c.to_ascii_uppercase()
            }
        }));
        let mut values = parts.headers.get_all(name).iter();
        let first = values.next().map_or(&b""[..], |val| val.as_bytes());
        let value = match values.next() {
            // One value (nearly always): borrowed.
            None => Cow::Borrowed(first),
            Some(second) => {
                let sep: &[u8] = if name == header::COOKIE { b"; " } else { b", " };
                let mut value = first.to_vec();
                for val in std::iter::once(second).chain(values) {
                    value.extend_from_slice(sep);
                    value.extend_from_slice(val.as_bytes());
                }
                Cow::Owned(value)
            }
        };
        // Names that could collide with the variables above (a header like
        // "Content_Type" maps onto HTTP_CONTENT_TYPE) are fine: they all start
        // with HTTP_, which none of the server's own variables do.
        v.push((Cow::Owned(key), value));
    }
    v
}

/// An address as text, an IPv4 one digit by digit (without the formatting
/// machinery, which cost more than the rest of the variables together).
fn ip_text(ip: IpAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(15);
    super::write_ip(&mut out, ip);
    out
}

fn number(n: u64) -> Vec<u8> {
    itoa::Buffer::new().format(n).as_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(v: &'a Vars<'_>, k: &str) -> Option<&'a str> {
        v.iter()
            .find(|(n, _)| **n == *k.as_bytes())
            .map(|(_, val)| std::str::from_utf8(val).unwrap())
    }

    #[test]
    fn variables_for_a_php_script() {
        let req = http::Request::builder()
            .method("POST")
            .uri("/app/index.php/extra?x=1")
            .header("host", "a.test")
            .header("content-type", "text/plain")
            .header("content-length", "3")
            .header("proxy", "http://evil:3128")
            .header("authorization", "Basic c2VjcmV0")
            .header("x-thing", "1")
            .header("x-thing", "2")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let script = Script {
            name: "/app/index.php",
            path_info: "/extra",
            filename: Path::new("/srv/a/app/index.php"),
            document_root: Path::new("/srv/a"),
        };
        let peer = Peer {
            remote: "127.0.0.1:4000".parse().unwrap(),
            local: "127.0.0.1:8080".parse().unwrap(),
            tls: false,
            server_name: "a.test",
            user: Some("bob"),
        };
        let v = variables(&parts, &script, &peer, Some(3));
        assert_eq!(lookup(&v, "REQUEST_METHOD"), Some("POST"));
        assert_eq!(lookup(&v, "SCRIPT_FILENAME"), Some("/srv/a/app/index.php"));
        assert_eq!(lookup(&v, "SCRIPT_NAME"), Some("/app/index.php"));
        assert_eq!(lookup(&v, "PATH_INFO"), Some("/extra"));
        assert_eq!(lookup(&v, "QUERY_STRING"), Some("x=1"));
        assert_eq!(lookup(&v, "REQUEST_URI"), Some("/app/index.php/extra?x=1"));
        assert_eq!(lookup(&v, "CONTENT_LENGTH"), Some("3"));
        assert_eq!(lookup(&v, "HTTP_HOST"), Some("a.test"));
        assert_eq!(lookup(&v, "HTTP_X_THING"), Some("1, 2"));
        let things = v.iter().filter(|(k, _)| **k == *b"HTTP_X_THING").count();
        assert_eq!(things, 1, "one variable for a repeated header");
        assert_eq!(lookup(&v, "REMOTE_USER"), Some("bob"));
        assert_eq!(lookup(&v, "HTTP_PROXY"), None, "httpoxy");
        assert_eq!(lookup(&v, "HTTP_AUTHORIZATION"), None, "berth did the auth");
        assert_eq!(lookup(&v, "HTTPS"), None);
        assert_eq!(lookup(&v, "REDIRECT_STATUS"), Some("200"));
        assert_eq!(lookup(&v, "REMOTE_ADDR"), Some("127.0.0.1"));
        assert_eq!(lookup(&v, "REMOTE_PORT"), Some("4000"));
        assert_eq!(lookup(&v, "SERVER_ADDR"), Some("127.0.0.1"));
        assert_eq!(lookup(&v, "SERVER_PORT"), Some("8080"));
        let v6 = Peer {
            remote: "[2001:db8::7]:4001".parse().unwrap(),
            ..peer
        };
        let v = variables(&parts, &script, &v6, Some(3));
        assert_eq!(lookup(&v, "REMOTE_ADDR"), Some("2001:db8::7"));
        // A chunked body read whole: its length, not the client's header.
        let v = variables(&parts, &script, &peer, Some(1234));
        assert_eq!(lookup(&v, "CONTENT_LENGTH"), Some("1234"));
        let v = variables(&parts, &script, &peer, None);
        assert_eq!(lookup(&v, "CONTENT_LENGTH"), None);
    }
}
