//! URL path normalisation: the single place where a request-target's path is
//! decoded and checked.
//!
//! The connection code calls [`normalize`] on the raw path (query already split
//! off) before anything else looks at it; route matching, authentication and
//! [`super::static_files`] all work on its output only. So every way of smuggling
//! a different path past those layers (encoded dots or slashes, backslashes,
//! control characters, invalid UTF-8) is refused here, once. This module is pure:
//! no I/O.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, CONTROLS};

use super::respond::Reject;

/// Decodes and normalises the path of a request-target.
///
/// `raw` is the path exactly as received (percent-encoded, no query). The result
/// is an absolute, decoded path: it starts with `/`, has no empty, `.` or `..`
/// segments, and ends with `/` exactly when the request did (a trailing `.`
/// segment counts as a trailing slash, as in RFC 3986 dot-segment removal).
///
/// Refused with [`Reject::BadRequest`]: a path not starting with `/`, malformed
/// percent-escapes, invalid UTF-8 after decoding, NUL or any other control
/// character, a backslash (raw or `%5C`), an encoded slash (`%2F`), and any `..`
/// segment however it was spelled. Decoding happens exactly once, so `%252e`
/// becomes the literal text `%2e`, never a dot.
///
/// A path that is normal already (most are) is returned as it is, borrowed:
/// no copy per request.
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, Reject> {
    if !raw.starts_with('/') {
        return Err(Reject::BadRequest("path must start with '/'"));
    }
    if is_normal(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    normalize_slow(raw).map(Cow::Owned)
}

/// Whether [`normalize_slow`] would give `raw` (which starts with `/`) back
/// unchanged: printable ASCII without `%` or a backslash, and no empty (but a last
/// one), `.` or `..` segment. Anything else takes the slow path, which
/// decides; this only ever says yes to what it would return as it is.
fn is_normal(raw: &str) -> bool {
    if !raw
        .bytes()
        .all(|b| (0x21..0x7f).contains(&b) && b != b'%' && b != b'\\')
    {
        return false;
    }
    let mut segments = raw[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment == "." || segment == ".." || (segment.is_empty() && !last) {
            return false;
        }
    }
    true
}

/// [`normalize`] for a path that needs decoding or changing (or refusing).
fn normalize_slow(raw: &str) -> Result<String, Reject> {
    let decoded = decode(raw.as_bytes())?;
    let decoded =
        String::from_utf8(decoded).map_err(|_| Reject::BadRequest("path is not valid UTF-8"))?;
    // `char::is_control` covers C0 (including NUL), DEL and the C1 range.
    if decoded.chars().any(char::is_control) {
        return Err(Reject::BadRequest("control character in path"));
    }
    if decoded.contains('\\') {
        return Err(Reject::BadRequest("backslash in path"));
    }

    let mut out = String::with_capacity(decoded.len());
    let mut trailing_slash = false;
    for segment in decoded.split('/') {
        match segment {
            "" | "." => trailing_slash = true,
            ".." => return Err(Reject::BadRequest("path traversal")),
            _ => {
                out.push('/');
                out.push_str(segment);
                trailing_slash = false;
            }
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// Whether `path` (a [`normalize`]d path) names something hidden: any segment
/// starting with `.`, except a first segment that is exactly `.well-known`
/// (RFC 8615; ACME HTTP-01 challenges live there). `/.well-known/.x` is hidden.
pub fn is_hidden(path: &str) -> bool {
    path.split('/')
        .filter(|s| !s.is_empty())
        .enumerate()
        .any(|(i, s)| s.starts_with('.') && !(i == 0 && s == ".well-known"))
}

/// Percent-decodes `raw` once. Unlike `percent_encoding::percent_decode`, this
/// knows which bytes were escaped (an escaped `/` must be refused, a raw one is a
/// separator) and refuses malformed escapes instead of passing them through, so
/// that `%zz` or a lone `%` cannot mean different things to berth and to a
/// backend that decodes differently.
fn decode(raw: &[u8]) -> Result<Vec<u8>, Reject> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            raw.get(i + 1).and_then(|&c| hex(c)),
            raw.get(i + 2).and_then(|&c| hex(c)),
        ) else {
            return Err(Reject::BadRequest("invalid percent-encoding in path"));
        };
        let byte = hi << 4 | lo;
        if byte == b'/' {
            return Err(Reject::BadRequest("encoded slash in path"));
        }
        out.push(byte);
        i += 3;
    }
    Ok(out)
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Characters re-encoded when a decoded path goes back into a `Location` header
/// (directory redirects, `redirect` routes):
/// everything that is not allowed raw in a URL path, plus `%` (the path is
/// decoded, so a literal `%` must not start an escape) and `?`/`#`. Non-ASCII is
/// always encoded by `utf8_percent_encode`.
pub const LOCATION_ENCODE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        match normalize(raw) {
            Ok(p) => p.into_owned(),
            Err(e) => panic!("{raw:?} rejected: {e:?}"),
        }
    }

    fn bad(raw: &str) -> &'static str {
        match normalize(raw) {
            Ok(p) => panic!("{raw:?} accepted as {p:?}"),
            Err(Reject::BadRequest(why)) => why,
            Err(e) => panic!("{raw:?}: unexpected {e:?}"),
        }
    }

    #[test]
    fn plain_paths_pass_through() {
        assert_eq!(ok("/"), "/");
        assert_eq!(ok("/a"), "/a");
        assert_eq!(ok("/a/b/"), "/a/b/");
        assert_eq!(ok("/a/b.html"), "/a/b.html");
        assert_eq!(ok("/..."), "/...");
        assert_eq!(ok("/a..b/..c/c.."), "/a..b/..c/c..");
    }

    #[test]
    fn must_be_absolute() {
        bad("");
        bad("a/b");
        bad("*");
        bad("http://example.com/");
        bad("%2Fa");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(ok("/a%20b"), "/a b");
        assert_eq!(ok("/%41%62"), "/Ab");
        assert_eq!(ok("/caf%C3%A9"), "/café");
        assert_eq!(ok("/caf%c3%a9/"), "/café/");
        assert_eq!(ok("/q%3Fx%23y"), "/q?x#y");
        assert_eq!(ok("/100%25"), "/100%");
    }

    #[test]
    fn malformed_escapes_rejected() {
        bad("/%");
        bad("/a%2");
        bad("/a%zz");
        bad("/a%g0");
        bad("/%%2e");
    }

    #[test]
    fn invalid_utf8_rejected() {
        assert_eq!(bad("/%ff"), "path is not valid UTF-8");
        bad("/%C3");
        bad("/%C0%AE%C0%AE/"); // overlong "..", a classic
        bad("/%ED%A0%80"); // surrogate
    }

    #[test]
    fn nul_and_controls_rejected() {
        assert_eq!(bad("/a%00b"), "control character in path");
        bad("/a%0Ab");
        bad("/a%0d%0aSet-Cookie:x");
        bad("/a%09");
        bad("/a%7F");
        bad("/a%C2%85"); // U+0085, a C1 control
        bad("/a\u{1}b");
    }

    #[test]
    fn backslash_rejected() {
        assert_eq!(bad("/a\\b"), "backslash in path");
        bad("/a%5cb");
        bad("/a%5C..%5Cetc");
        bad("/\\evil.example");
    }

    #[test]
    fn encoded_slash_rejected() {
        assert_eq!(bad("/a%2fb"), "encoded slash in path");
        bad("/a%2Fb");
        bad("/%2F");
        bad("/..%2F..%2Fetc/passwd");
    }

    #[test]
    fn repeated_slashes_collapse() {
        assert_eq!(ok("//a///b"), "/a/b");
        assert_eq!(ok("//"), "/");
        assert_eq!(ok("///a//"), "/a/");
        // A leading "//" must never survive: it would read as a network-path
        // reference ("//host/") if echoed into a Location header.
        assert_eq!(ok("//evil.example/x"), "/evil.example/x");
    }

    #[test]
    fn dot_segments_dropped() {
        assert_eq!(ok("/./a/./b"), "/a/b");
        assert_eq!(ok("/a/."), "/a/");
        assert_eq!(ok("/a/./"), "/a/");
        assert_eq!(ok("/."), "/");
        assert_eq!(ok("/%2e/a"), "/a");
        assert_eq!(ok("/a/%2E"), "/a/");
    }

    #[test]
    fn traversal_rejected() {
        assert_eq!(bad("/.."), "path traversal");
        assert_eq!(bad("/../etc/passwd"), "path traversal");
        bad("/a/../b");
        bad("/a/..");
        bad("/a/../");
        bad("/a/b/../../..");
        bad("//..//");
    }

    #[test]
    fn encoded_traversal_rejected() {
        assert_eq!(bad("/%2e%2e/etc"), "path traversal");
        bad("/%2E%2E/etc");
        bad("/.%2e/etc");
        bad("/%2e./etc");
        bad("/a/%2e%2e");
        bad("/a/%2e%2e/");
    }

    #[test]
    fn double_encoding_decoded_once() {
        // "%252e%252e" is the literal file name "%2e%2e", not "..".
        assert_eq!(ok("/%252e%252e"), "/%2e%2e");
        assert_eq!(ok("/a/%252e%252e/b"), "/a/%2e%2e/b");
        // Likewise a double-encoded slash or backslash is just text.
        assert_eq!(ok("/a%252fb"), "/a%2fb");
        assert_eq!(ok("/a%255cb"), "/a%5cb");
    }

    #[test]
    fn trailing_slash_kept() {
        assert_eq!(ok("/a/"), "/a/");
        assert_eq!(ok("/a"), "/a");
        assert_eq!(ok("/a//"), "/a/");
    }

    #[test]
    fn hidden_segments() {
        assert!(!is_hidden("/"));
        assert!(!is_hidden("/a/b.c"));
        assert!(!is_hidden("/a./b"));
        assert!(is_hidden("/.git/config"));
        assert!(is_hidden("/.env"));
        assert!(is_hidden("/a/.htpasswd"));
        assert!(is_hidden("/a/.hidden/"));
        assert!(is_hidden("/a/.well-known/x"));
        assert!(is_hidden("/.well-knownx/x"));
        assert!(!is_hidden("/.well-known"));
        assert!(!is_hidden("/.well-known/"));
        assert!(!is_hidden("/.well-known/acme-challenge/tok"));
        assert!(is_hidden("/.well-known/.secret"));
        assert!(is_hidden("/.well-known/a/.secret/b"));
    }

    /// Random paths built from the pieces attackers combine: whatever
    /// `normalize` accepts must be absolute, single-slashed, free of dot
    /// segments, NUL, backslashes and control characters. (A deterministic
    /// stand-in for `cargo fuzz`, which needs a nightly toolchain.)
    #[test]
    fn random_hostile_paths_never_normalise_to_anything_unsafe() {
        const PIECES: &[&str] = &[
            "/",
            "//",
            ".",
            "..",
            "%2e",
            "%2E",
            "%2f",
            "%2F",
            "%5c",
            "\\",
            "%00",
            "%25",
            "%",
            "a",
            "b.txt",
            ".git",
            "%c0%ae",
            "%e2%80%ae",
            "%0a",
            "?",
            "#",
            ";",
            "%3b",
            "~",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..200_000 {
            let len = (next() % 10) as usize;
            let mut raw = String::from("/");
            for _ in 0..len {
                raw.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
            }
            // The borrowed fast path agrees with the full one, whatever the input.
            let fast = normalize(&raw);
            let slow = normalize_slow(&raw);
            match (&fast, &slow) {
                (Ok(f), Ok(s)) => assert_eq!(f, s, "{raw:?}"),
                (Err(_), Err(_)) => {}
                _ => panic!("{raw:?}: normalize {fast:?}, the full path {slow:?}"),
            }
            let Ok(out) = fast else { continue };
            assert!(out.starts_with('/'), "{raw:?} -> {out:?}");
            assert!(!out.contains("//"), "{raw:?} -> {out:?}");
            assert!(!out.contains('\\'), "{raw:?} -> {out:?}");
            assert!(!out.chars().any(char::is_control), "{raw:?} -> {out:?}");
            assert!(
                out.split('/').all(|seg| seg != ".." && seg != "."),
                "{raw:?} -> {out:?}"
            );
        }
    }
}
