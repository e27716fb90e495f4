//! `berth ctl logs APP`: the lines of a tenant's logs that concern one of
//! its apps, the last ones and then, with `--follow`, new ones as they come.
//!
//! - The error log (`--error`, `log_dir/TENANT/error.log`) names the app in
//!   every line it has from it (`[TENANT/APP]`, or `[APP]` for what berth
//!   says of it, such as an OOM kill); lines about the whole tenant
//!   (`[TENANT]`: lines dropped over its rate, the log full) are shown too,
//!   since they hide the app's lines.
//! - The access log has no app field: a line is the app's when the site it
//!   names (its canonical host) routes its path to the app by the tenant's
//!   routes as configured now (the longest prefix; for a route with
//!   `extensions`, a script path with one of them). A request served
//!   before a route changed is judged by the routes of now.
//!
//! Reading runs on the control thread's blocking pool, never on the
//! supervisor's loop. Files are opened without following a symlink and
//! must be regular files; at most [`MAX_SCAN`] bytes are read back from
//! the end for the last lines. Following notices a rotation (another file
//! at the path: the rest of the old one is read, then the new one from its
//! start) and a truncation (read again from the start).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::{Action, Tenant};

/// How far back from the end the last lines are looked for.
pub const MAX_SCAN: u64 = 32 << 20;
/// A line longer than this (no writer of berth's makes one) is cut.
const MAX_LINE: usize = 64 << 10;

/// Which log of the tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Access,
    Error,
}

impl Which {
    pub fn file_name(self) -> &'static str {
        match self {
            Which::Access => "access.log",
            Which::Error => "error.log",
        }
    }
}

/// The tenant's log file.
pub fn path(log_dir: &Path, tenant: &str, which: Which) -> PathBuf {
    log_dir.join(tenant).join(which.file_name())
}

/// Which lines are the app's.
#[derive(Debug, Clone)]
pub enum Filter {
    /// Error log lines whose second bracket is one of these.
    Tags(Vec<String>),
    /// Access log lines, by the tenant's sites.
    Routes(Vec<SiteRoutes>),
}

/// A site as [`Filter::Routes`] sees it.
#[derive(Debug, Clone)]
pub struct SiteRoutes {
    /// Its canonical host, which its access log lines name.
    host: String,
    /// Longest prefix first: each route's prefix, and when it sends to the
    /// app, its extensions (empty: the app is mounted there).
    routes: Vec<(String, Option<Vec<String>>)>,
}

impl Filter {
    /// The lines of `app` of `tenant` in its `which` log.
    pub fn new(tenant: &Tenant, app: &str, which: Which) -> Filter {
        match which {
            Which::Error => Filter::Tags(vec![
                format!("[{}/{app}]", tenant.name),
                format!("[{app}]"),
                format!("[{}]", tenant.name),
            ]),
            Which::Access => Filter::Routes(
                tenant
                    .sites
                    .iter()
                    .map(|site| {
                        let routes = site
                            .routes
                            .iter()
                            .map(|r| {
                                let ours = match &r.action {
                                    Action::App { app: a, extensions } if a == app => {
                                        Some(extensions.clone())
                                    }
                                    _ => None,
                                };
                                (r.path.clone(), ours)
                            })
                            .collect();
                        SiteRoutes {
                            host: site.hosts[0].clone(),
                            routes,
                        }
                    })
                    .collect(),
            ),
        }
    }

    /// What the filter keeps, in a sentence.
    pub fn note(&self) -> &'static str {
        match self {
            Filter::Tags(_) => {
                "the app's lines and the tenant's own ([TENANT/APP], [APP], [TENANT])"
            }
            Filter::Routes(_) => {
                "requests the tenant's routes send to the app, judged by the routes configured now"
            }
        }
    }

    pub fn matches(&self, line: &str) -> bool {
        match self {
            Filter::Tags(tags) => {
                // `[time] [who] text`: the second bracket.
                let Some(rest) = line.split_once("] ").map(|(_, r)| r) else {
                    return false;
                };
                tags.iter().any(|t| rest.starts_with(t.as_str()))
            }
            Filter::Routes(sites) => {
                let Some((host, path)) = access_host_path(line) else {
                    return false;
                };
                let Some(site) = sites.iter().find(|s| s.host == host) else {
                    return false;
                };
                let Ok(path) = crate::front::path::normalize(path) else {
                    return false;
                };
                let Some((_, ours)) = site
                    .routes
                    .iter()
                    .find(|(prefix, _)| crate::front::vhost::prefix_matches(prefix, &path))
                else {
                    return false;
                };
                match ours {
                    None => false,
                    Some(ext) if ext.is_empty() => true,
                    Some(ext) => crate::front::app_route::split_script(&path, ext).is_some(),
                }
            }
        }
    }
}

/// The virtual host and the path (without its query) of an access log
/// line: `HOST REMOTE - USER [TIME] "METHOD TARGET VERSION" ...`.
fn access_host_path(line: &str) -> Option<(&str, &str)> {
    let host = line.split(' ').next()?;
    let request = line.split_once("] \"")?.1;
    let mut parts = request.split(' ');
    let _method = parts.next()?;
    let target = parts.next()?;
    let path = target.split('?').next()?;
    path.starts_with('/').then_some((host, path))
}

/// Opens a log to read: not through a symlink, a regular file only (a FIFO
/// would block the reader).
pub fn open(path: &Path) -> std::io::Result<File> {
    use rustix::fs::{FileType, Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(File::from(fd))
}

/// The last `n` lines of `file` that `filter` keeps (oldest first), at
/// most `max_bytes` of them, looking back at most [`MAX_SCAN`] bytes; and
/// the offset after the last whole line (where following goes on). A last
/// line without its newline (being written) is left for following.
pub fn tail(
    file: &mut File,
    n: usize,
    max_bytes: usize,
    filter: &Filter,
) -> std::io::Result<(Vec<String>, u64)> {
    const CHUNK: u64 = 64 << 10;
    let len = file.metadata()?.len();
    let mut pos = len;
    let mut end: Option<u64> = None;
    // Bytes read back, from `pos` up to the first newline seen (a line cut
    // by the chunk's start stays here until its start is read).
    let mut carry: Vec<u8> = Vec::new();
    let mut found: Vec<String> = Vec::new();
    let mut bytes = 0;
    let lowest = len.saturating_sub(MAX_SCAN);
    while pos > lowest && found.len() < n && bytes < max_bytes {
        let take = CHUNK.min(pos - lowest);
        pos -= take;
        let mut chunk = vec![0; take as usize];
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&carry);
        let mut buf = chunk;
        if end.is_none() {
            match buf.iter().rposition(|&b| b == b'\n') {
                Some(i) => {
                    end = Some(pos + i as u64 + 1);
                    buf.truncate(i + 1);
                }
                None => {
                    carry = buf;
                    continue;
                }
            }
        }
        // Whole lines after the first newline; what is before it may be
        // the end of a line that starts in the previous chunk.
        let first = if pos == 0 {
            0
        } else {
            match buf.iter().position(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => {
                    carry = buf;
                    continue;
                }
            }
        };
        let whole = &buf[first..];
        for raw in whole.split(|&b| b == b'\n').rev().filter(|l| !l.is_empty()) {
            let line = text_of(raw);
            if filter.matches(&line) {
                bytes += line.len();
                found.push(line);
                if found.len() >= n || bytes >= max_bytes {
                    break;
                }
            }
        }
        carry = buf[..first].to_vec();
    }
    found.reverse();
    Ok((found, end.unwrap_or(len.min(pos))))
}

fn text_of(raw: &[u8]) -> String {
    let raw = &raw[..raw.len().min(MAX_LINE)];
    String::from_utf8_lossy(raw).into_owned()
}

/// A log being followed from an offset.
pub struct Follow {
    path: PathBuf,
    file: File,
    offset: u64,
    /// A line begun and not ended yet.
    partial: Vec<u8>,
}

impl Follow {
    /// Follows `file` (opened at `path`) from `offset`.
    pub fn new(path: PathBuf, file: File, offset: u64) -> Follow {
        Follow {
            path,
            file,
            offset,
            partial: Vec::new(),
        }
    }

    /// The whole lines written since the last call that `filter` keeps, at
    /// most `max_bytes` of them read at once (the rest comes next time).
    pub fn poll(&mut self, filter: &Filter, max_bytes: usize) -> std::io::Result<Vec<String>> {
        // Rotated away: another file at the path. What the old one got last
        // is read first, then the new one from its start.
        let ours = self.file.metadata()?;
        let moved = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.ino() != ours.ino() || m.dev() != ours.dev());
        let mut out = self.read_new(filter, max_bytes)?;
        let done = self.offset >= self.file.metadata()?.len();
        if moved
            && done
            && let Ok(file) = open(&self.path)
        {
            self.file = file;
            self.offset = 0;
            self.partial.clear();
            out.extend(self.read_new(filter, max_bytes)?);
        }
        Ok(out)
    }

    fn read_new(&mut self, filter: &Filter, max_bytes: usize) -> std::io::Result<Vec<String>> {
        let len = self.file.metadata()?.len();
        if len < self.offset {
            // Truncated: read again from the start.
            self.offset = 0;
            self.partial.clear();
        }
        let take = (len - self.offset).min(max_bytes as u64);
        if take == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0; take as usize];
        self.file.seek(SeekFrom::Start(self.offset))?;
        self.file.read_exact(&mut buf)?;
        self.offset += take;
        let mut all = std::mem::take(&mut self.partial);
        all.extend_from_slice(&buf);
        let cut = all.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.partial = all.split_off(cut);
        if self.partial.len() > MAX_LINE {
            self.partial.truncate(MAX_LINE);
        }
        Ok(all
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(text_of)
            .filter(|l| filter.matches(l))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn all() -> Filter {
        Filter::Tags(vec![String::new()])
    }

    fn file_with(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn tail_gives_the_last_lines_oldest_first_and_leaves_a_line_being_written() {
        let mut text = String::new();
        for i in 0..50_000 {
            text.push_str(&format!("[t] [a] line {i}\n"));
        }
        text.push_str("[t] [a] half");
        let (_d, path) = file_with(&text);
        let mut f = open(&path).unwrap();
        let (lines, end) = tail(&mut f, 3, 1 << 20, &all()).unwrap();
        assert_eq!(
            lines,
            [
                "[t] [a] line 49997",
                "[t] [a] line 49998",
                "[t] [a] line 49999"
            ]
        );
        assert_eq!(end, (text.len() - "[t] [a] half".len()) as u64);
        // More than the file has: all of it, across many chunks.
        let (lines, _) = tail(&mut f, 100_000, 64 << 20, &all()).unwrap();
        assert_eq!(lines.len(), 50_000);
        assert_eq!(lines[0], "[t] [a] line 0");
        // The byte cap keeps the newest.
        let (lines, _) = tail(&mut f, 100_000, 100, &all()).unwrap();
        assert!(lines.len() < 10 && lines.last().unwrap() == "[t] [a] line 49999");
    }

    #[test]
    fn error_lines_are_the_apps_by_their_tag() {
        let f = Filter::Tags(vec!["[t/php]".into(), "[php]".into(), "[t]".into()]);
        assert!(f.matches("[01/Dec/2026:10:00:00 +0000] [t/php] PHP Warning"));
        assert!(f.matches("[01/Dec/2026:10:00:00 +0000] [php] process 3 was killed"));
        assert!(f.matches("[01/Dec/2026:10:00:00 +0000] [t] 5 lines dropped"));
        assert!(!f.matches("[01/Dec/2026:10:00:00 +0000] [t/blog] x [t/php]"));
        assert!(!f.matches("[01/Dec/2026:10:00:00 +0000] [t/phpx] x"));
        assert!(!f.matches("garbage"));
    }

    fn tenant_with_routes() -> Tenant {
        let route = |path: &str, action: Action| crate::config::Route {
            path: path.into(),
            action,
            auth: None,
            max_body: None,
            balance: None,
            app_at: None,
            line: 1,
            own: false,
        };
        let app = |a: &str, ext: &[&str]| Action::App {
            app: a.into(),
            extensions: ext.iter().map(|s| s.to_string()).collect(),
        };
        Tenant {
            name: "t".into(),
            user: "u".into(),
            uid: 1,
            gid: 1,
            home: "/".into(),
            resolved: true,
            sites: vec![crate::config::Site {
                hosts: vec!["a.test".into(), "www.a.test".into()],
                root: "/".into(),
                tls: None,
                routes: vec![
                    route("/blog", app("blog", &[])),
                    route("/static", Action::Static),
                    route("/", app("php", &["php"])),
                ],
                max_body: None,
                lines: crate::config::SiteLines {
                    file: "/x".into(),
                    hosts: 1,
                    root: 1,
                },
                own_config: None,
                own: None,
                owner: None,
            }],
            own: None,
            allowed_commands: Vec::new(),
            locked: Vec::new(),
            isolation: Default::default(),
            apps: Vec::new(),
            limits: crate::config::Limits::default(),
            origin: crate::config::Origin {
                file: "/x".into(),
                line: 1,
            },
            user_line: 1,
            error_log: crate::config::ErrorLogLimits::default(),
        }
    }

    #[test]
    fn access_lines_are_the_apps_by_the_routes_of_now() {
        let t = tenant_with_routes();
        let php = Filter::new(&t, "php", Which::Access);
        let blog = Filter::new(&t, "blog", Which::Access);
        let line = |host: &str, target: &str| {
            format!(
                "{host} 127.0.0.1 - - [01/Dec/2026:10:00:00 +0000] \"GET {target} HTTP/1.1\" 200 5 \"-\" \"curl\" 100"
            )
        };
        assert!(php.matches(&line("a.test", "/index.php?x=1")));
        assert!(php.matches(&line("a.test", "/lib/css.php/x")));
        assert!(
            !php.matches(&line("a.test", "/style.css")),
            "static under /"
        );
        assert!(
            !php.matches(&line("a.test", "/static/x.php")),
            "a static route"
        );
        assert!(!php.matches(&line("a.test", "/blog/x.php")), "blog's");
        assert!(blog.matches(&line("a.test", "/blog/x.php")));
        assert!(blog.matches(&line("a.test", "/blog")));
        assert!(
            blog.matches(&line("a.test", "/%62log/x")),
            "decoded as the front end does"
        );
        assert!(!blog.matches(&line("a.test", "/blogger")));
        assert!(!blog.matches(&line("b.test", "/blog/x")), "another site");
        assert!(
            !blog.matches(&line("www.a.test", "/blog/x")),
            "logged by its canonical host"
        );
        assert!(!blog.matches("garbage"));
        assert!(!blog.matches(&line("a.test", "*")));
    }

    #[test]
    fn follow_reads_new_whole_lines_and_goes_on_across_a_rotation() {
        let (dir, path) = file_with("[t] [a] old 1\n");
        let mut f = open(&path).unwrap();
        let (_, end) = tail(&mut f, 10, 1 << 20, &all()).unwrap();
        let mut follow = Follow::new(path.clone(), f, end);
        let mut poll = || follow.poll(&all(), 1 << 20).unwrap();
        assert!(poll().is_empty());
        let mut w = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        w.write_all(b"[t] [a] old 2\n[t] [a] old 3 begun").unwrap();
        assert_eq!(poll(), ["[t] [a] old 2"]);
        w.write_all(b" and ended\n").unwrap();
        // Rotated: renamed away, a new file in its place.
        std::fs::rename(&path, dir.path().join("x.log.1")).unwrap();
        w.write_all(b"[t] [a] old 4, after the rename\n").unwrap();
        std::fs::write(&path, "[t] [a] new 1\n").unwrap();
        assert_eq!(
            poll(),
            [
                "[t] [a] old 3 begun and ended",
                "[t] [a] old 4, after the rename",
                "[t] [a] new 1"
            ]
        );
        // Truncated in place: read again from the start.
        std::fs::write(&path, "").unwrap();
        assert!(poll().is_empty());
        std::fs::write(&path, "[t] [a] again\n").unwrap();
        assert_eq!(poll(), ["[t] [a] again"]);
    }

    #[test]
    fn a_symlink_or_a_fifo_is_not_read() {
        let (dir, path) = file_with("x\n");
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(open(&link).is_err());
        let fifo = dir.path().join("fifo.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert!(open(&fifo).is_err());
    }
}
