//! Basic authentication against Apache htpasswd files.
//!
//! Sits between route lookup and the route's handler: a route with `auth` runs
//! [`Htpasswd::check`] first. Supported hashes are the ones `htpasswd` writes with
//! `-B` (bcrypt) and `-5`/`-2` (SHA-256/SHA-512 crypt). MD5 (`$apr1$`), `{SHA}`,
//! DES crypt and plain text are refused when the file is loaded, not at request
//! time, so a weak file never goes live silently.

use std::collections::HashMap;

use base64::Engine;
use sha_crypt::{PasswordVerifier, ShaCrypt};

/// A parsed htpasswd file: user name → hash. The default has no users.
#[derive(Debug, Clone, Default)]
pub struct Htpasswd {
    users: HashMap<String, Hash>,
}

#[derive(Debug, Clone)]
enum Hash {
    Bcrypt(String),
    ShaCrypt(String),
}

/// A problem with one line of an htpasswd file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub why: String,
}

/// Verified against when the user does not exist, so that a wrong user name
/// costs as much time as a wrong password and names cannot be probed.
/// (Cost 5, as `htpasswd -B` writes by default.)
static DUMMY_BCRYPT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    bcrypt::hash_with_salt("berth-dummy", 5, [0x5a; 16])
        .map(|h| h.format_for_version(bcrypt::Version::TwoY))
        .unwrap_or_default()
});

impl Htpasswd {
    /// Parses the text of an htpasswd file; every bad line is reported.
    pub fn parse(text: &str) -> Result<Htpasswd, Vec<LineError>> {
        let mut users = HashMap::new();
        let mut errors = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let entry = raw.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = entry.split_once(':') else {
                errors.push(LineError {
                    line,
                    why: "expected `user:hash`".into(),
                });
                continue;
            };
            let hash = match classify(hash) {
                Ok(hash) => hash,
                Err(why) => {
                    errors.push(LineError {
                        line,
                        why: format!("user {user:?}: {why}"),
                    });
                    continue;
                }
            };
            if users.insert(user.to_string(), hash).is_some() {
                errors.push(LineError {
                    line,
                    why: format!("user {user:?} appears twice"),
                });
            }
        }
        if errors.is_empty() {
            Ok(Htpasswd { users })
        } else {
            Err(errors)
        }
    }

    /// Number of users in the file.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file names no user (then nobody can log in).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Checks a user name and password; takes about the same time whether or not
    /// the user exists. The hash libraries compare digests in constant time.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        match self.users.get(user) {
            Some(Hash::Bcrypt(h)) => bcrypt::verify(password, h).unwrap_or(false),
            Some(Hash::ShaCrypt(h)) => ShaCrypt::default()
                .verify_password(password.as_bytes(), h.as_str())
                .is_ok(),
            None => {
                let _ = bcrypt::verify(password, DUMMY_BCRYPT.as_str());
                false
            }
        }
    }

    /// Checks an `Authorization` header value. Returns the user name when the
    /// credentials are valid.
    pub fn check(&self, authorization: Option<&[u8]>) -> Option<String> {
        let value = authorization?;
        let value = std::str::from_utf8(value).ok()?.trim();
        let (scheme, creds) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(creds.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        self.verify(user, password).then(|| user.to_string())
    }
}

fn classify(hash: &str) -> Result<Hash, String> {
    if ["$2y$", "$2a$", "$2b$"].iter().any(|p| hash.starts_with(p)) {
        // bcrypt hashes are exactly 60 characters; catch truncated lines now.
        if hash.len() != 60 {
            return Err("malformed bcrypt hash".into());
        }
        return Ok(Hash::Bcrypt(hash.to_string()));
    }
    if hash.starts_with("$5$") || hash.starts_with("$6$") {
        if sha_crypt::PasswordHashRef::new(hash).is_err() {
            return Err("malformed SHA-crypt hash".into());
        }
        return Ok(Hash::ShaCrypt(hash.to_string()));
    }
    let scheme = if hash.starts_with("$apr1$") {
        "MD5 ($apr1$)"
    } else if hash.starts_with("{SHA}") {
        "unsalted SHA-1 ({SHA})"
    } else {
        "crypt(3) DES or plain text"
    };
    Err(format!(
        "{scheme} hashes are not accepted; use `htpasswd -B` (bcrypt), -5 or -2 (SHA-crypt)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        let alice = bcrypt::hash_with_salt("secret", 5, [7u8; 16])
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY);
        format!("# users\nalice:{alice}\n\n")
    }

    #[test]
    fn bcrypt_and_sha_crypt_verify() {
        let sha = ShaCrypt::from(sha_crypt::Algorithm::Sha512Crypt);
        let carol = sha_crypt::PasswordHasher::hash_password_with_salt(&sha, b"pw", b"saltsalt")
            .unwrap()
            .to_string();
        let text = format!("alice:{}\ncarol:{carol}\n", {
            bcrypt::hash_with_salt("secret", 5, [7u8; 16])
                .unwrap()
                .format_for_version(bcrypt::Version::TwoY)
        });
        let h = Htpasswd::parse(&text).unwrap();
        assert!(h.verify("alice", "secret"));
        assert!(!h.verify("alice", "Secret"));
        assert!(h.verify("carol", "pw"));
        assert!(!h.verify("carol", "pw "));
        assert!(!h.verify("nobody", "secret"));
        assert_eq!(bcrypt::verify("x", DUMMY_BCRYPT.as_str()).ok(), Some(false));
    }

    #[test]
    fn header_check() {
        let h = Htpasswd::parse(&sample()).unwrap();
        let good = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:secret")
        );
        assert_eq!(h.check(Some(good.as_bytes())).as_deref(), Some("alice"));
        let bad = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:nope")
        );
        assert_eq!(h.check(Some(bad.as_bytes())), None);
        assert_eq!(h.check(Some(b"Bearer xyz")), None);
        assert_eq!(h.check(Some(b"Basic !!!")), None);
        assert_eq!(h.check(None), None);
    }

    #[test]
    fn weak_and_malformed_lines_are_reported_with_line_numbers() {
        let text = "ok:$2y$05$Pe7hHpNGKVFkS5o0aJjuX.JBjNvCIGBkpyBjoqM1pxZzbiFv0nUmi\n\
                    md5:$apr1$abc$def\nnocolon\nsha1:{SHA}abc=\nshort:$2y$05$abc\n";
        let errs = Htpasswd::parse(text).unwrap_err();
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5]);
        assert!(errs[0].why.contains("htpasswd -B"), "{}", errs[0].why);
    }
}
