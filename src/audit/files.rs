//! The files berth reads as root and what it writes: its configuration
//! (writable by someone else: whoever writes it runs code as every
//! tenant; readable by others while it names secrets), TLS private keys,
//! htpasswd files (who may read or change them, and how strong their
//! hashes are), and `state_dir` and `log_dir` (what lies in them is
//! berth's, for root and each tenant's own eyes).

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::access::{Owner, unsafe_dirs};
use super::{Context, Finding, Place, Severity};

/// bcrypt below this cost is weak: OWASP's minimum for stored passwords.
/// A request with Basic credentials pays it each time (about 70 ms at 10
/// on one core of a current machine; `htpasswd -B`'s default, 5, about 2 ms).
pub const BCRYPT_MIN_COST: u32 = 10;

/// SHA-crypt below this many rounds is weak: GPUs test SHA-crypt far
/// faster than bcrypt at the same CPU cost, and `htpasswd -5`'s default of
/// 5,000 rounds takes about 2 ms; 100,000 rounds take about 40 ms, the
/// order of bcrypt at cost 10.
pub const SHA_CRYPT_MIN_ROUNDS: u32 = 100_000;

/// How deep and how far `state_dir` and `log_dir` are looked into (berth
/// makes them three levels deep at most: `log_dir/TENANT/access.log`,
/// `state_dir/bound/TENANT/socket`).
const BERTH_DIR_DEPTH: usize = 3;
const BERTH_DIR_ENTRIES: usize = 20_000;

pub(super) fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    config_files(ctx, out);
    keys(ctx, out);
    htpasswd_files(ctx, out);
    berth_dirs(ctx, out);
}

/// The main file and every include: root's, writable by no one else
/// (nor is any directory above them); readable by others only when they
/// name no secret.
fn config_files(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    let a = &ctx.accounts;
    for file in &ctx.cfg.files {
        let file = &super::plain(file);
        let Ok(meta) = std::fs::metadata(file) else {
            continue;
        };
        let o = Owner::of(&meta);
        let mut why = Vec::new();
        if o.uid != 0 {
            why.push(format!("owned by {}", a.user_name(o.uid)));
        }
        if o.others(2) {
            why.push(format!("writable by everyone (mode {:o})", o.bits()));
        } else if o.group(2) && !a.private_to(o.gid, 0) {
            why.push(format!(
                "writable by {} (mode {:o})",
                a.group_phrase(o.gid),
                o.bits()
            ));
        }
        if let Some(dirs) = unsafe_dirs(file, &[], a) {
            why.push(dirs);
        }
        if !why.is_empty() {
            out.push(Finding {
                severity: Severity::Critical,
                check: "config-writable",
                place: Place::path(file),
                tenant: None,
                what: format!(
                    "berth's configuration is {}: whoever changes it chooses what runs as every tenant, and which files root reads",
                    why.join("; ")
                ),
                fix: format!(
                    "chown root:root {0} && chmod 600 {0} (and keep every directory above it root's, writable by root only)",
                    file.display()
                ),
            });
        }
        let readable = o.others(4) || (o.group(4) && !a.private_to(o.gid, 0));
        if !readable {
            continue;
        }
        let secrets: Vec<(String, usize)> = ctx
            .cfg
            .tenants
            .iter()
            .flat_map(|t| t.apps.iter().map(move |app| (t, app)))
            .filter(|(_, app)| !app.own && super::plain(&app.origin.file) == *file)
            .flat_map(|(t, app)| {
                app.env
                    .iter()
                    .filter(|(k, v)| secret(k, v))
                    .map(move |(k, _)| {
                        (
                            format!("tenant.{}.app.{}.env.{k}", t.name, app.name),
                            app.origin.line,
                        )
                    })
            })
            .collect();
        let Some((first, line)) = secrets.first() else {
            continue;
        };
        let who = if o.others(4) {
            "everyone".to_string()
        } else {
            a.group_phrase(o.gid)
        };
        let names: Vec<&str> = secrets.iter().map(|(k, _)| k.as_str()).collect();
        out.push(Finding {
            severity: Severity::Medium,
            check: "config-secrets",
            place: Place::config(file, *line, first.clone()),
            tenant: None,
            what: format!(
                "{} is readable by {who} (mode {:o}) and holds secrets: {}",
                file.display(),
                o.bits(),
                names.join(", ")
            ),
            fix: format!("chmod 600 {}", file.display()),
        });
    }
}

/// Whether an environment variable looks like a secret: its name has a
/// word such as PASSWORD, SECRET, TOKEN or KEY, or its value is a URL with
/// a password (`scheme://user:password@host`).
fn secret(name: &str, value: &str) -> bool {
    if value.is_empty() {
        return false;
    }
    const WORDS: &[&str] = &[
        "PASSWORD",
        "PASSWD",
        "PASS",
        "PWD",
        "SECRET",
        "SECRETS",
        "TOKEN",
        "KEY",
        "APIKEY",
        "CREDENTIAL",
        "CREDENTIALS",
        "PRIVATE",
        "SALT",
    ];
    let upper = name.to_ascii_uppercase();
    if upper
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| WORDS.contains(&w))
    {
        return true;
    }
    value.split_once("://").is_some_and(|(_, rest)| {
        let authority = rest.split('/').next().unwrap_or("");
        authority
            .rsplit_once('@')
            .is_some_and(|(userinfo, _)| userinfo.contains(':'))
    })
}

/// Every site's TLS private key: root's, readable and writable by root
/// only (berth reads it as root; nothing else needs it).
fn keys(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    let a = &ctx.accounts;
    let mut seen = BTreeSet::new();
    for t in &ctx.cfg.tenants {
        for site in &t.sites {
            let Some(tls) = &site.tls else { continue };
            if !seen.insert(tls.key.clone()) {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&tls.key) else {
                continue;
            };
            let o = Owner::of(&meta);
            let mut severity = Severity::Info;
            let mut why = Vec::new();
            let mut worse = |s: Severity, w: String| {
                severity = severity.max(s);
                why.push(w);
            };
            if o.others(4) {
                worse(
                    Severity::Critical,
                    format!("readable by everyone (mode {:o})", o.bits()),
                );
            } else if o.group(4) && !a.private_to(o.gid, 0) {
                worse(
                    Severity::High,
                    format!(
                        "readable by {} (mode {:o})",
                        a.group_phrase(o.gid),
                        o.bits()
                    ),
                );
            }
            if o.uid != 0 {
                worse(
                    Severity::High,
                    format!(
                        "owned by {}, who can read it and replace it",
                        a.user_name(o.uid)
                    ),
                );
            }
            if o.mode & 0o022 != 0 && !(o.group(2) && !o.others(2) && a.private_to(o.gid, 0)) {
                worse(
                    Severity::High,
                    format!("writable by group or others (mode {:o})", o.bits()),
                );
            }
            if let Some(dirs) = unsafe_dirs(&tls.key, &[], a) {
                worse(Severity::High, dirs);
            }
            if why.is_empty() {
                continue;
            }
            out.push(Finding {
                severity,
                check: "tls-key",
                place: Place::path(&tls.key),
                tenant: Some(t.name.clone()),
                what: format!(
                    "the private key of {} is {}: whoever reads it can pose as the site",
                    site.hosts[0],
                    why.join("; ")
                ),
                fix: format!(
                    "chown root:root {0} && chmod 600 {0}, in a directory only root may write (/etc/berth/tls); then replace the key and certificate, since it may have been read",
                    super::plain(&tls.key).display()
                ),
            });
        }
    }
}

/// One htpasswd file and who uses it.
struct HtpasswdUse {
    path: PathBuf,
    /// Its text as berth read it.
    text: String,
    /// Who may own it besides root: the tenant whose own file names it.
    tenant_uid: Option<u32>,
    tenant: Option<String>,
    /// Where it is named, for messages.
    used_by: String,
}

fn htpasswd_uses(ctx: &Context<'_>) -> Vec<HtpasswdUse> {
    let mut uses: Vec<HtpasswdUse> = Vec::new();
    if let Some(admin) = &ctx.cfg.server.admin
        && let Some((path, text)) = &admin.htpasswd
    {
        uses.push(HtpasswdUse {
            path: super::plain(path),
            text: text.clone(),
            tenant_uid: None,
            tenant: None,
            used_by: "admin_htpasswd".into(),
        });
    }
    for t in &ctx.cfg.tenants {
        for site in &t.sites {
            for route in &site.routes {
                let Some(auth) = &route.auth else { continue };
                if uses.iter().any(|u| u.path == super::plain(&auth.htpasswd)) {
                    continue;
                }
                uses.push(HtpasswdUse {
                    path: super::plain(&auth.htpasswd),
                    text: auth.users.clone(),
                    tenant_uid: route.own.then_some(t.uid),
                    tenant: Some(t.name.clone()),
                    used_by: format!("route {} of {}", route.path, site.hosts[0]),
                });
            }
        }
    }
    uses
}

/// htpasswd files: readable by no one but their owner (root, or the
/// tenant whose own file names one) and the strength of every hash.
fn htpasswd_files(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    let a = &ctx.accounts;
    for u in htpasswd_uses(ctx) {
        for (line, user, why) in weak_hashes(&u.text) {
            out.push(Finding {
                severity: Severity::Low,
                check: "htpasswd-hash",
                place: Place::Path {
                    path: u.path.clone(),
                    line: Some(line),
                },
                tenant: u.tenant.clone(),
                what: format!(
                    "user {user:?} ({}) has a weak hash: {why}; a copy of the file gives up the password quickly",
                    u.used_by
                ),
                fix: format!(
                    "htpasswd -B -C {BCRYPT_MIN_COST} {} {user} (every request with the password pays the cost once)",
                    u.path.display()
                ),
            });
        }
        let Ok(meta) = std::fs::metadata(&u.path) else {
            continue;
        };
        let o = Owner::of(&meta);
        let owners: Vec<u32> = u.tenant_uid.into_iter().collect();
        let owner_ok = o.uid == 0 || owners.contains(&o.uid);
        let mut severity = Severity::Info;
        let mut why = Vec::new();
        let mut worse = |s: Severity, w: String| {
            severity = severity.max(s);
            why.push(w);
        };
        if !owner_ok {
            worse(
                Severity::High,
                format!(
                    "owned by {}, who can add a user of its own",
                    a.user_name(o.uid)
                ),
            );
        }
        if o.others(2) || (o.group(2) && !a.private_to(o.gid, o.uid)) {
            worse(
                Severity::High,
                format!(
                    "writable by {} (mode {:o}): they can add a user of their own",
                    if o.others(2) {
                        "everyone".to_string()
                    } else {
                        a.group_phrase(o.gid)
                    },
                    o.bits()
                ),
            );
        }
        if let Some(dirs) = unsafe_dirs(&u.path, &owners, a) {
            worse(Severity::High, dirs);
        }
        if o.others(4) {
            worse(
                Severity::Medium,
                format!(
                    "readable by everyone (mode {:o}): its hashes can be attacked offline",
                    o.bits()
                ),
            );
        } else if o.group(4) && !a.private_to(o.gid, o.uid) {
            worse(
                Severity::Low,
                format!(
                    "readable by {} (mode {:o}): its hashes can be attacked offline",
                    a.group_phrase(o.gid),
                    o.bits()
                ),
            );
        }
        if why.is_empty() {
            continue;
        }
        let owner = match u.tenant_uid {
            Some(uid) => a.user_name(uid),
            None => "root".into(),
        };
        out.push(Finding {
            severity,
            check: "htpasswd-file",
            place: Place::path(&u.path),
            tenant: u.tenant.clone(),
            what: format!("the htpasswd file of {} is {}", u.used_by, why.join("; ")),
            fix: format!(
                "chown {owner} {0} && chmod 600 {0} (berth reads it as root)",
                u.path.display()
            ),
        });
    }
}

/// (line, user, why) for every hash below [`BCRYPT_MIN_COST`] or
/// [`SHA_CRYPT_MIN_ROUNDS`]. (MD5, SHA-1, DES and plain text never load:
/// `berth check` refuses them.)
pub fn weak_hashes(text: &str) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let entry = raw.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = entry.split_once(':') else {
            continue;
        };
        let why = if let Some(rest) = ["$2y$", "$2a$", "$2b$"]
            .iter()
            .find_map(|p| hash.strip_prefix(p))
        {
            let cost: u32 = rest.get(..2).and_then(|c| c.parse().ok()).unwrap_or(0);
            (cost < BCRYPT_MIN_COST)
                .then(|| format!("bcrypt at cost {cost}, below {BCRYPT_MIN_COST}"))
        } else if let Some(rest) = hash
            .strip_prefix("$5$")
            .or_else(|| hash.strip_prefix("$6$"))
        {
            // `$6$rounds=N$salt$hash`, or `$6$salt$hash` at the default 5000.
            let rounds = rest
                .strip_prefix("rounds=")
                .and_then(|r| r.split('$').next())
                .and_then(|r| r.parse().ok())
                .unwrap_or(5000u32);
            (rounds < SHA_CRYPT_MIN_ROUNDS)
                .then(|| format!("SHA-crypt at {rounds} rounds, below {SHA_CRYPT_MIN_ROUNDS}"))
        } else {
            None
        };
        if let Some(why) = why {
            out.push((i + 1, user.to_string(), why));
        }
    }
    out
}

/// `state_dir` and `log_dir`: nothing in them writable by others, and no
/// log or database readable by others (berth makes its files 0640 or
/// 0600; logs hold clients' addresses and URLs, queries included, and the
/// usage database every tenant's use).
fn berth_dirs(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    let server = &ctx.cfg.server;
    let mut seen = 0;
    for (key, dir) in [
        ("server.state_dir", &server.state_dir),
        ("server.log_dir", &server.log_dir),
    ] {
        let mut stack: Vec<(PathBuf, usize)> = vec![(dir.clone(), 0)];
        while let Some((path, depth)) = stack.pop() {
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            seen += 1;
            if seen > BERTH_DIR_ENTRIES {
                return;
            }
            let ft = meta.file_type();
            let o = Owner::of(&meta);
            use std::os::unix::fs::FileTypeExt;
            if ft.is_symlink() || ft.is_socket() {
                // (Sockets are reached through their directory's modes.)
                continue;
            }
            if o.others(2) {
                out.push(Finding {
                    severity: Severity::High,
                    check: "berth-dir",
                    place: Place::path(&path),
                    tenant: None,
                    what: format!(
                        "writable by everyone (mode {:o}) inside {key}, where berth (as root) keeps its state and logs",
                        o.bits()
                    ),
                    fix: format!("chmod o-w {}", path.display()),
                });
            } else if ft.is_file() && o.others(4) {
                out.push(Finding {
                    severity: Severity::Low,
                    check: "berth-dir",
                    place: Place::path(&path),
                    tenant: None,
                    what: format!(
                        "readable by everyone (mode {:o}) inside {key}: {}",
                        o.bits(),
                        if key == "server.log_dir" {
                            "logs hold clients' addresses and the URLs they asked for, queries (and the secrets some put there) included"
                        } else {
                            "what berth keeps there (the usage database: every tenant's use) is for root only"
                        }
                    ),
                    fix: format!("chmod o-r {}", path.display()),
                });
            }
            if ft.is_dir()
                && depth < BERTH_DIR_DEPTH
                && let Ok(entries) = std::fs::read_dir(&path)
            {
                for e in entries.flatten() {
                    stack.push((e.path(), depth + 1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_hashes_by_cost_and_rounds() {
        let text = "# admins\n\
            low:$2y$05$Pe7hHpNGKVFkS5o0aJjuX.JBjNvCIGBkpyBjoqM1pxZzbiFv0nUmi\n\
            ok:$2y$12$Pe7hHpNGKVFkS5o0aJjuX.JBjNvCIGBkpyBjoqM1pxZzbiFv0nUmi\n\
            sha:$6$3Gh8xPlrh3l5Wr0N$2OZWdkqsU8SXcoX\n\
            sharounds:$6$rounds=100000$iTfPv4tfcswWNUrl$Svyd8p\n\
            sha5:$5$rounds=20000$abc$def\n";
        let weak = weak_hashes(text);
        let users: Vec<(usize, &str)> = weak.iter().map(|(l, u, _)| (*l, u.as_str())).collect();
        assert_eq!(users, [(2, "low"), (4, "sha"), (6, "sha5")]);
        assert!(weak[0].2.contains("cost 5"), "{}", weak[0].2);
        assert!(weak[1].2.contains("5000 rounds"), "{}", weak[1].2);
        assert!(weak[2].2.contains("20000 rounds"), "{}", weak[2].2);
    }

    #[test]
    fn secrets_by_name_and_by_url() {
        for (k, v) in [
            ("DB_PASSWORD", "x"),
            ("SECRET_KEY_BASE", "x"),
            ("api_token", "x"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
            ("DATABASE_URL", "postgres://app:hunter2@db/app"),
        ] {
            assert!(secret(k, v), "{k}");
        }
        for (k, v) in [
            ("APP_ENV", "production"),
            ("MONKEY", "x"),
            ("DB_PASSWORD", ""),
            ("DATABASE_URL", "postgres://app@db/app"),
            ("HOME_URL", "https://a.test/x:y@z"),
        ] {
            assert!(!secret(k, v), "{k}");
        }
    }
}
