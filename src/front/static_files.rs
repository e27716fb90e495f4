//! Serving files from a site's document root.
//!
//! The router hands [`serve`] a path already normalised by [`super::path::normalize`]
//! and an open [`Root`]; this module turns it into a response: `GET`/`HEAD` only,
//! hidden files refused, conditional requests (`If-None-Match`,
//! `If-Modified-Since`), single byte ranges (`Range`, `If-Range`), precompressed
//! `.br`/`.gz` siblings, `index.html` for directories and a redirect for directory
//! URLs missing their trailing slash. Errors come back as [`Reject`] and are turned
//! into responses by the caller.
//!
//! This is the hot path, so the common case costs one `openat2`, one `fstat` and
//! one `close`: files up to [`file_cache::MAX_FILE`] come from the shared
//! [`file_cache`] (one `pread` the first time). Path resolution is done by the kernel relative to the
//! root's fd with `RESOLVE_BENEATH`, so no path can leave the root and nothing can
//! be swapped under us between checking and opening. Symlinks are allowed only if
//! the link and its target have the same owner (Apache's `SymLinksIfOwnerMatch`),
//! which needs a slower component-by-component walk, taken only when the fast open
//! met a symlink; that walk also refuses a hidden name met through a link.
//!
//! `serve` is synchronous: reads come from the page cache, as in nginx, and files
//! too large for the cache are read lazily, [`CHUNK`] bytes per poll.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use percent_encoding::utf8_percent_encode;
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

use super::body::{self, Body};
use super::file_cache::{self, FileCache};
use super::path::{LOCATION_ENCODE, is_hidden};
use super::respond::Reject;

/// Bodies up to this size are read in one go; larger ones are streamed in reads
/// of this size.
pub const CHUNK: usize = 64 * 1024;

/// Contents of small files, shared by every worker.
static CACHE: std::sync::LazyLock<FileCache> = std::sync::LazyLock::new(FileCache::default);

/// Same limit as the kernel's MAXSYMLINKS, for the slow path's own walk.
const MAX_SYMLINKS: usize = 40;

/// Flags for opening the file that will be served. `NONBLOCK` keeps a FIFO from
/// blocking the open (and the worker thread with it); `NOCTTY` keeps a tty from
/// becoming our controlling terminal.
const READ_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::CLOEXEC)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY);

/// Fast path: the kernel resolves the whole path, refusing any symlink.
const FAST_RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_SYMLINKS);

/// An open site root: an `O_PATH|O_DIRECTORY` fd plus the path for messages.
///
/// Every file is opened relative to the fd, so renaming or replacing the root
/// directory after [`Root::open`] does not change what is served until the root
/// is reopened.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
    /// Opened by [`Root::open_owned`] for this uid.
    owner: Option<u32>,
    /// The tenant's own configuration files that lie inside the root: never
    /// served, under their name or another (invariant 3).
    private: Vec<PathBuf>,
}

impl Root {
    /// Opens the directory at `path` (following symlinks: the root itself comes
    /// from trusted configuration).
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
            owner: None,
            private: Vec::new(),
        })
    }

    /// Opens the directory at `path` for a root its tenant controls (a
    /// discovered site's `public/`): its last component is not followed if
    /// it is a symlink, and a directory that `uid` does not own is refused,
    /// so swapping it for a link to (or a directory of) someone else's
    /// publishes nothing of theirs. (The directories above it are the
    /// administrator's discovery root and the tenant's own host directory.)
    pub fn open_owned(path: &Path, uid: u32) -> io::Result<Root> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            return Err(io::Error::other("not a directory (a symbolic link?)"));
        }
        if st.st_uid != uid {
            return Err(io::Error::other(format!(
                "owned by uid {}, not by the site's owner (uid {uid})",
                st.st_uid
            )));
        }
        Ok(Root {
            fd,
            path: path.to_path_buf(),
            owner: Some(uid),
            private: Vec::new(),
        })
    }

    /// Whether opening `path` as [`Root::open`] (`owner` None) or
    /// [`Root::open_owned`] would give this very directory again: then a
    /// new configuration keeps this root instead of opening it anew. A
    /// `stat` instead of an `open` and a `close`, and no second descriptor
    /// for the same directory while two configurations overlap (10,000
    /// discovered sites are 10,000 roots).
    pub fn is_still(&self, path: &Path, owner: Option<u32>) -> bool {
        use rustix::fs::{AtFlags, CWD, statat};
        if self.path != path || self.owner != owner {
            return false;
        }
        let flags = match owner {
            Some(_) => AtFlags::SYMLINK_NOFOLLOW,
            None => AtFlags::empty(),
        };
        let (Ok(now), Ok(held)) = (statat(CWD, path, flags), rustix::fs::fstat(&self.fd)) else {
            return false;
        };
        FileType::from_raw_mode(now.st_mode) == FileType::Directory
            && (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)
            && owner.is_none_or(|uid| now.st_uid == uid)
    }

    /// The path the root was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root with `files` (the tenant's own configuration inside it)
    /// never served.
    pub fn with_private(mut self, files: Vec<PathBuf>) -> Root {
        self.private = files;
        self
    }

    /// The files [`Root::with_private`] keeps from being served.
    pub fn private(&self) -> &[PathBuf] {
        &self.private
    }
}

/// Serves the file named by `path` from `root`.
///
/// `path` is the output of [`super::path::normalize`] with the route prefix NOT
/// removed (the full normalised URL path, starting with `/`); `req` gives the
/// method, headers and (for directory redirects) the query string. A path ending
/// in `/` serves that directory's `index.html`; there are never listings.
///
/// Returns the response, or a [`Reject`] for 4xx/5xx.
pub fn serve(
    root: &Root,
    path: &str,
    req: &http::request::Parts,
) -> Result<Response<Body>, Reject> {
    let head = match req.method {
        Method::GET => false,
        Method::HEAD => true,
        _ => return Err(Reject::MethodNotAllowed("GET, HEAD")),
    };
    let Some(rel) = path.strip_prefix('/') else {
        return Err(Reject::BadRequest("path must start with '/'"));
    };
    // Also refuses any ".." segment, should an unnormalised path ever get here.
    if is_hidden(path) {
        return Err(Reject::NotFound);
    }

    // For "dir/" open "dir/index.html" directly: one open instead of opening the
    // directory and then the index in it. Containment is the same (the whole
    // path resolves beneath the root) and a missing directory or a non-directory
    // gives ENOENT/ENOTDIR, i.e. 404, either way.
    let wants_dir = rel.is_empty() || rel.ends_with('/');
    let rel: Cow<'_, str> = if wants_dir {
        Cow::Owned(format!("{rel}index.html"))
    } else {
        Cow::Borrowed(rel)
    };
    let name = rel.rsplit('/').next().unwrap_or(&rel);

    let (fd, st) = open(root, &rel)?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => {}
        FileType::Directory if !wants_dir => return Ok(redirect_to_dir(path, req.uri.query())),
        // FIFOs, sockets, devices, and an "index.html" that is a directory.
        _ => return Err(Reject::NotFound),
    }

    let content_type = content_type(name);
    let mut rep = Representation {
        fd,
        st,
        encoding: None,
    };
    let mut vary = false;
    if !name.ends_with(".br") && !name.ends_with(".gz") {
        let (variant, found) = precompressed(root, &rel, &req.headers);
        vary = found;
        if let Some(variant) = variant {
            rep = variant;
        }
    }
    respond(rep, content_type, vary, head, &req.headers)
}

/// The bytes chosen to be sent: the file itself or a precompressed sibling.
struct Representation {
    fd: OwnedFd,
    st: Stat,
    /// `Content-Encoding` and ETag suffix, for a precompressed sibling.
    encoding: Option<&'static str>,
}

/// Builds the 200/206/304 response for `rep` (already known to be a regular file).
fn respond(
    rep: Representation,
    content_type: HeaderValue,
    vary: bool,
    head: bool,
    req: &HeaderMap,
) -> Result<Response<Body>, Reject> {
    let size = u64::try_from(rep.st.st_size).unwrap_or(0);
    let mtime = rep.st.st_mtime;
    let key = file_cache::Key::of(&rep.st, rep.encoding);
    let cached = match CACHE.get(&key) {
        Some(cached) => cached,
        None => {
            let etag = match rep.encoding {
                Some(enc) => format!("\"{mtime:x}-{size:x}-{enc}\""),
                None => format!("\"{mtime:x}-{size:x}\""),
            };
            let etag =
                HeaderValue::try_from(etag).map_err(|e| Reject::Internal(format!("etag: {e}")))?;
            // Small files are read whole now; a range is a slice of them.
            // `size` fits in usize: it is at most MAX_FILE.
            let bytes = if size <= file_cache::MAX_FILE {
                Some(
                    read_exact_at(&rep.fd, 0, size as usize)
                        .map_err(|e| Reject::Internal(format!("reading file: {e}")))?,
                )
            } else {
                None
            };
            let cached = file_cache::Cached {
                etag,
                last_modified: http_date(mtime),
                length: HeaderValue::from(size),
                bytes,
            };
            CACHE.insert(key, cached.clone());
            cached
        }
    };
    let etag = cached.etag.to_str().unwrap_or_default();

    let mut headers = HeaderMap::with_capacity(10);
    if let Some(lm) = cached.last_modified.clone() {
        headers.insert(header::LAST_MODIFIED, lm);
    }
    if vary {
        headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    headers.insert(header::ETAG, cached.etag.clone());

    if not_modified(req, etag, mtime) {
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        *resp.headers_mut() = headers;
        return Ok(resp);
    }

    let mut status = StatusCode::OK;
    let (mut start, mut end) = (0, size);
    if !head
        && let Some(range) = single_header(req, header::RANGE)
        && if_range_matches(req, etag, mtime)
    {
        match parse_range(range, size) {
            RangeRequest::Ignore => {}
            RangeRequest::Unsatisfiable => return Err(Reject::RangeNotSatisfiable { size }),
            RangeRequest::Bytes(s, e) => {
                status = StatusCode::PARTIAL_CONTENT;
                (start, end) = (s, e);
                let cr = format!("bytes {s}-{}/{size}", e - 1);
                headers.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::try_from(cr).map_err(|e| Reject::Internal(e.to_string()))?,
                );
            }
        }
    }

    let len = end - start;
    headers.insert(header::CONTENT_TYPE, content_type);
    let length = if len == size {
        cached.length.clone()
    } else {
        HeaderValue::from(len)
    };
    headers.insert(header::CONTENT_LENGTH, length);
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(enc) = rep.encoding {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(enc));
    }

    let sendfile = !head && len >= SENDFILE_MIN;
    // The fd is kept only by what reads from it: a small cached body (or a
    // HEAD) closes it here.
    let fd = (!head && (sendfile || cached.bytes.is_none())).then(|| Arc::new(rep.fd));
    let body = match (&cached.bytes, &fd) {
        // `end` <= `size` <= MAX_FILE: fits in usize.
        (Some(bytes), _) if !head => body::full(bytes.slice(start as usize..end as usize)),
        (None, Some(fd)) => FileBody {
            fd: fd.clone(),
            pos: start,
            end,
        }
        .boxed_unsync(),
        // HEAD
        _ => body::empty(),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    if sendfile && let Some(fd) = fd {
        resp.extensions_mut().insert(FileRange { fd, start, end });
    }
    Ok(resp)
}

/// Resolves the script a PHP-style route would run: `path` (normalised, the
/// script part only, e.g. "/lib/exe/css.php") must name a regular file under
/// the root by the same rules as static files (no escape, no symlink to another
/// owner's file, no dotfile). Returns its path for `SCRIPT_FILENAME`; anything
/// else is 404 and never reaches the app (an upload `/uploads/evil.jpg/x.php`
/// names no file, so nothing runs).
pub fn script_path(root: &Root, path: &str) -> Result<PathBuf, Reject> {
    let Some(rel) = path.strip_prefix('/') else {
        return Err(Reject::BadRequest("path must start with '/'"));
    };
    if rel.is_empty() || is_hidden(path) {
        return Err(Reject::NotFound);
    }
    let (_fd, st) = open(root, rel)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(Reject::NotFound);
    }
    Ok(root.path.join(rel))
}

/// Bodies at least this long are offered as a [`FileRange`] too.
pub const SENDFILE_MIN: u64 = 16 * 1024;

/// The file and byte range a response's body holds, attached to the response
/// so that a plain-TCP connection can `sendfile` it instead of copying the
/// body through user memory. The body itself carries the same bytes, for
/// every other path (TLS, HTTP/2).
#[derive(Debug, Clone)]
pub struct FileRange {
    pub fd: Arc<OwnedFd>,
    pub start: u64,
    pub end: u64,
}

/// 301 to the same path with a trailing slash, so that relative links in the
/// directory's index resolve inside it. The Location is a path (never an
/// absolute URL: we would have to trust Host to build one) and keeps the query.
fn redirect_to_dir(path: &str, query: Option<&str>) -> Response<Body> {
    let mut location: String = utf8_percent_encode(path, LOCATION_ENCODE).collect();
    location.push('/');
    let without_query = location.len();
    if let Some(q) = query {
        location.push('?');
        location.push_str(q);
    }
    let value = HeaderValue::try_from(location.as_str()).or_else(|_| {
        // Cannot happen for a query http::Uri accepted, but never fail a redirect
        // over it.
        HeaderValue::try_from(&location[..without_query])
    });
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(value) = value {
        resp.headers_mut().insert(header::LOCATION, value);
    }
    resp
}

/// Content-Type from the URL's file name. Text types get an explicit charset
/// because site files are overwhelmingly UTF-8 and browsers otherwise guess.
fn content_type(name: &str) -> HeaderValue {
    let ext = name.rsplit_once('.').map_or("", |(_, ext)| ext);
    // The common web types without a table lookup or an allocation.
    let fast = match ext {
        "html" | "htm" => Some("text/html; charset=utf-8"),
        "css" => Some("text/css; charset=utf-8"),
        "js" | "mjs" => Some("text/javascript; charset=utf-8"),
        "txt" => Some("text/plain; charset=utf-8"),
        "json" => Some("application/json; charset=utf-8"),
        "svg" => Some("image/svg+xml"),
        "png" => Some("image/png"),
        "jpg" | "jpeg" => Some("image/jpeg"),
        "gif" => Some("image/gif"),
        "webp" => Some("image/webp"),
        "ico" => Some("image/x-icon"),
        "woff2" => Some("font/woff2"),
        _ => None,
    };
    if let Some(v) = fast {
        return HeaderValue::from_static(v);
    }
    let mime = mime_guess::from_path(name)
        .first_raw()
        .unwrap_or("application/octet-stream");
    let textual =
        mime.starts_with("text/") || mime == "application/javascript" || mime == "application/json";
    if textual && let Ok(v) = HeaderValue::try_from(format!("{mime}; charset=utf-8")) {
        return v;
    }
    HeaderValue::from_static(mime)
}

/// An HTTP date for a Unix timestamp, or None outside 1970..=9999 (httpdate
/// panics there; a file with such an mtime just gets no Last-Modified).
fn http_date(secs: i64) -> Option<HeaderValue> {
    let secs = u64::try_from(secs).ok().filter(|&s| s < 253_402_300_800)?;
    let text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
    HeaderValue::try_from(text).ok()
}

/// Seconds since the epoch of an HTTP date header value.
fn parse_date(value: &HeaderValue) -> Option<i64> {
    let t = httpdate::parse_http_date(value.to_str().ok()?).ok()?;
    i64::try_from(t.duration_since(UNIX_EPOCH).ok()?.as_secs()).ok()
}

/// The value of header `name` if it occurs exactly once (a repeated Range or
/// If-Range is malformed and ignored).
fn single_header(req: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    let mut all = req.get_all(name).iter();
    let first = all.next()?;
    if all.next().is_some() {
        return None;
    }
    first.to_str().ok()
}

// ---------------------------------------------------------------------------
// Opening files

/// Opens `rel` (relative, no leading slash) beneath `root` for reading and
/// returns it with its metadata. Symlinks are followed only if the link's owner
/// owns the target.
fn open(root: &Root, rel: &str) -> Result<(OwnedFd, Stat), Reject> {
    let (fd, st) = open_any(root, rel)?;
    // The tenant's own configuration, reached by its name or through a
    // link: compared by inode, as it is now (a stat only for sites that
    // have such a file in their root).
    for p in &root.private {
        let now = rustix::fs::statat(rustix::fs::CWD, p, rustix::fs::AtFlags::empty());
        if now.is_ok_and(|now| (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)) {
            return Err(Reject::NotFound);
        }
    }
    Ok((fd, st))
}

/// [`open`] without the check on the tenant's own configuration.
fn open_any(root: &Root, rel: &str) -> Result<(OwnedFd, Stat), Reject> {
    let err = |e: Errno| open_error(root, rel, e);
    let fd =
        match retry(|| rustix::fs::openat2(&root.fd, rel, READ_FLAGS, Mode::empty(), FAST_RESOLVE))
        {
            Ok(fd) => fd,
            Err(Errno::LOOP) => return open_slow(root, rel),
            Err(e) => return Err(err(e)),
        };
    let st = rustix::fs::fstat(&fd).map_err(err)?;
    Ok((fd, st))
}

/// The slow path of [`open`], taken when the fast open met a symlink.
///
/// This walks the path itself, one component at a time, always relative to an fd
/// of the directory reached so far, never by re-resolving a path from the root.
/// Each component is opened `O_PATH|O_NOFOLLOW` and `fstat`ed, so a symlink's
/// owner, its content (`readlinkat` on that very fd) and the object its
/// resolution ends at are all the same inodes; nothing can be swapped between
/// the owner check and the open. A link's target is resolved by the same walk
/// (".." pops a directory; popping the root, or an absolute target, is an escape
/// and gives 404 just as `RESOLVE_BENEATH` would), and once it is fully resolved
/// its owner must equal the link's owner, else 403. A nested link is checked
/// against its own final target too, so chains need the same owner throughout.
/// A hidden name anywhere on the way, in a link's target too, is 404 like a
/// hidden URL.
///
/// Per-component opens use `RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS` as a second line
/// of defence: a single name relative to a directory fd cannot go anywhere else.
fn open_slow(root: &Root, rel: &str) -> Result<(OwnedFd, Stat), Reject> {
    enum Step<'a> {
        /// A path component to resolve relative to the current directory.
        Name(Cow<'a, [u8]>),
        /// The components of a link's target are resolved: the object reached
        /// must be owned by this uid (the link's owner).
        OwnerIs(u32),
    }
    struct Dir {
        fd: OwnedFd,
        uid: u32,
    }
    let err = |e: Errno| open_error(root, rel, e);
    let component_resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS;

    // Directories below the root on the resolved path, innermost last.
    let mut dirs: Vec<Dir> = Vec::new();
    // A resolved non-directory; only link-owner checks may follow it.
    let mut leaf: Option<(Cow<'_, [u8]>, OwnedFd, Stat)> = None;
    let mut links = 0;
    let mut steps: VecDeque<Step<'_>> = rel
        .split('/')
        .map(|c| Step::Name(Cow::Borrowed(c.as_bytes())))
        .collect();

    while let Some(step) = steps.pop_front() {
        let name = match step {
            Step::OwnerIs(link_uid) => {
                let target_uid = match (&leaf, dirs.last()) {
                    (Some((_, _, st)), _) => st.st_uid,
                    (None, Some(dir)) => dir.uid,
                    (None, None) => rustix::fs::fstat(&root.fd).map_err(err)?.st_uid,
                };
                if target_uid != link_uid {
                    return Err(Reject::Forbidden);
                }
                continue;
            }
            Step::Name(name) => name,
        };
        // Anything after a non-directory, even "" (a trailing slash) or ".".
        if leaf.is_some() {
            return Err(err(Errno::NOTDIR));
        }
        if name.is_empty() || *name == *b"." {
            continue;
        }
        if *name == *b".." {
            if dirs.pop().is_none() {
                return Err(err(Errno::XDEV));
            }
            continue;
        }
        // Every name met counts, a link's target included: the URL `x.txt`
        // must not reach `.env` through `x.txt -> .env`. The same rule as
        // `is_hidden`: only `.well-known` right under the root is public.
        if name.starts_with(b".") && !(dirs.is_empty() && *name == *b".well-known") {
            return Err(Reject::NotFound);
        }
        let parent = dirs.last().map_or(root.fd.as_fd(), |d| d.fd.as_fd());
        let fd = retry(|| {
            rustix::fs::openat2(
                parent,
                &*name,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                component_resolve,
            )
        })
        .map_err(err)?;
        let st = rustix::fs::fstat(&fd).map_err(err)?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => dirs.push(Dir { fd, uid: st.st_uid }),
            FileType::Symlink => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(err(Errno::LOOP));
                }
                let target = rustix::fs::readlinkat(&fd, "", Vec::new()).map_err(err)?;
                let target = target.into_bytes();
                if target.is_empty() {
                    return Err(err(Errno::NOENT));
                }
                if target.starts_with(b"/") {
                    return Err(err(Errno::XDEV));
                }
                steps.push_front(Step::OwnerIs(st.st_uid));
                for c in target.split(|&b| b == b'/').rev() {
                    steps.push_front(Step::Name(Cow::Owned(c.to_vec())));
                }
            }
            _ => leaf = Some((name, fd, st)),
        }
    }

    let parent = dirs.last().map_or(root.fd.as_fd(), |d| d.fd.as_fd());
    match leaf {
        // Non-regular files are refused by the caller from their metadata; no
        // need to open them for reading at all.
        Some((_, fd, st)) if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile => {
            Ok((fd, st))
        }
        Some((name, path_fd, checked)) => {
            let fd = retry(|| {
                rustix::fs::openat2(parent, &*name, READ_FLAGS, Mode::empty(), component_resolve)
            })
            .map_err(err)?;
            let st = rustix::fs::fstat(&fd).map_err(err)?;
            drop(path_fd);
            if (st.st_dev, st.st_ino) != (checked.st_dev, checked.st_ino) {
                // Replaced between the walk and this open: treat as missing
                // rather than serve something we have not checked.
                return Err(Reject::NotFound);
            }
            Ok((fd, st))
        }
        // A directory: the caller only needs its metadata (to redirect).
        None => match dirs.pop() {
            Some(dir) => {
                let st = rustix::fs::fstat(&dir.fd).map_err(err)?;
                Ok((dir.fd, st))
            }
            None => {
                let fd = rustix::fs::openat(
                    &root.fd,
                    ".",
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(err)?;
                let st = rustix::fs::fstat(&fd).map_err(err)?;
                Ok((fd, st))
            }
        },
    }
}

/// Maps an open/resolve error to a rejection.
///
/// EACCES is a 404, not a 403: a file berth may not read is not part of the site,
/// and a 403 would confirm that a private file exists. ENXIO/ENODEV come from
/// sockets and device nodes, which are never served anyway. Everything else
/// (EMFILE, ENOMEM, EIO, ...) is our problem: 500.
fn open_error(root: &Root, rel: &str, e: Errno) -> Reject {
    match e {
        Errno::NOENT
        | Errno::NOTDIR
        | Errno::XDEV
        | Errno::LOOP
        | Errno::ACCESS
        | Errno::NAMETOOLONG
        | Errno::NXIO
        | Errno::NODEV => Reject::NotFound,
        e => Reject::Internal(format!("{}: opening {rel:?}: {e}", root.path.display())),
    }
}

/// Retries on EINTR and on EAGAIN, which `openat2` returns with RESOLVE_BENEATH
/// when a concurrent rename might have let a ".." escape. Bounded, so a busy
/// renamer cannot keep us spinning.
fn retry<T>(mut f: impl FnMut() -> Result<T, Errno>) -> Result<T, Errno> {
    let mut tries = 0;
    loop {
        match f() {
            Err(Errno::INTR | Errno::AGAIN) if tries < 8 => tries += 1,
            r => return r,
        }
    }
}

// ---------------------------------------------------------------------------
// Precompressed siblings

/// Looks for a precompressed sibling (`<rel>.br`, `<rel>.gz`) the client accepts,
/// best q-value first (br on ties). Returns the variant to serve, if any, and
/// whether any sibling was found (which makes the response vary on
/// Accept-Encoding).
///
/// Only accepted encodings are probed: a client sending no Accept-Encoding costs
/// no extra syscalls. The price is that such a response carries no `Vary` even if
/// siblings exist; a shared cache may then give uncompressed bytes to a client
/// that could have had compressed ones, which is suboptimal but never wrong.
/// Compressed responses always carry `Vary`.
fn precompressed(root: &Root, rel: &str, req: &HeaderMap) -> (Option<Representation>, bool) {
    let accept = AcceptEncoding::parse(req);
    let mut candidates = [("br", ".br", accept.br), ("gzip", ".gz", accept.gzip)];
    // Stable: br stays first on equal q.
    candidates.sort_by_key(|&(_, _, q)| std::cmp::Reverse(q));
    let mut found = false;
    for (encoding, suffix, q) in candidates {
        if q == 0 {
            continue;
        }
        // Any failure (missing, forbidden link, not a regular file, even an I/O
        // error) just means this variant is not offered; the original is there.
        if let Ok((fd, st)) = open(root, &format!("{rel}{suffix}")) {
            found = true;
            if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile {
                let rep = Representation {
                    fd,
                    st,
                    encoding: Some(encoding),
                };
                return (Some(rep), true);
            }
        }
    }
    (None, found)
}

/// q-values (in thousandths, 0..=1000) the client gave br and gzip.
#[derive(Debug, PartialEq)]
struct AcceptEncoding {
    br: u16,
    gzip: u16,
}

impl AcceptEncoding {
    /// Parses all Accept-Encoding headers. An explicit entry beats `*`; a coding
    /// listed twice gets its lowest q; a malformed q-value counts as 0 (not
    /// acceptable), so garbage never gets a client an encoding it did not ask for.
    fn parse(req: &HeaderMap) -> AcceptEncoding {
        let (mut br, mut gzip, mut star) = (None, None, None);
        let values = req
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok());
        for item in values.flat_map(|v| v.split(',')) {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let mut q = Some(1000);
            for param in parts {
                if let Some((k, v)) = param.split_once('=')
                    && k.trim().eq_ignore_ascii_case("q")
                {
                    q = parse_qvalue(v.trim());
                }
            }
            let q = q.unwrap_or(0);
            let slot = if coding.eq_ignore_ascii_case("br") {
                &mut br
            } else if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                &mut gzip
            } else if coding == "*" {
                &mut star
            } else {
                continue;
            };
            *slot = Some(slot.map_or(q, |old: u16| old.min(q)));
        }
        AcceptEncoding {
            br: br.or(star).unwrap_or(0),
            gzip: gzip.or(star).unwrap_or(0),
        }
    }
}

/// RFC 9110 qvalue: `0[.ddd]` or `1[.000]`, as thousandths.
fn parse_qvalue(s: &str) -> Option<u16> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_value = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
    match int {
        "0" => Some(frac_value),
        "1" if frac_value == 0 => Some(1000),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Conditional requests and ranges

/// Whether the request's validators say the client's copy is current (304).
/// If-None-Match wins; If-Modified-Since counts only without it (RFC 9110 13.2.2).
fn not_modified(req: &HeaderMap, etag: &str, mtime: i64) -> bool {
    let mut inm = req.get_all(header::IF_NONE_MATCH).iter().peekable();
    if inm.peek().is_some() {
        return inm.any(|v| etag_list_matches(v.as_bytes(), etag));
    }
    match req.get(header::IF_MODIFIED_SINCE).and_then(parse_date) {
        Some(since) => mtime <= since,
        None => false,
    }
}

/// Weak comparison of `etag` (ours, strong) against an If-None-Match list.
fn etag_list_matches(list: &[u8], etag: &str) -> bool {
    let etag = etag.as_bytes();
    let mut rest = list;
    loop {
        while let [b' ' | b'\t' | b',', tail @ ..] = rest {
            rest = tail;
        }
        match rest {
            [] => return false,
            [b'*', ..] => return true,
            _ => {}
        }
        if let [b'W', b'/', tail @ ..] = rest {
            rest = tail;
        }
        if let [b'"', tail @ ..] = rest
            && let Some(close) = tail.iter().position(|&b| b == b'"')
        {
            let tag = &rest[..close + 2];
            if tag == etag {
                return true;
            }
            rest = &rest[close + 2..];
        } else {
            // Not an entity-tag: skip to the next list element.
            match rest.iter().position(|&b| b == b',') {
                Some(comma) => rest = &rest[comma..],
                None => return false,
            }
        }
    }
}

/// Whether a Range may be honoured given If-Range: true without If-Range, else
/// only if it names the current representation, strongly (RFC 9110 13.1.5). A
/// date must equal Last-Modified exactly.
fn if_range_matches(req: &HeaderMap, etag: &str, mtime: i64) -> bool {
    if req.get(header::IF_RANGE).is_none() {
        return true;
    }
    let Some(value) = single_header(req, header::IF_RANGE) else {
        return false;
    };
    let value = value.trim();
    if value.starts_with('"') {
        value == etag
    } else if value.starts_with("W/") {
        false
    } else {
        let parsed = HeaderValue::from_str(value).ok();
        parsed.as_ref().and_then(parse_date) == Some(mtime)
    }
}

#[derive(Debug, PartialEq)]
enum RangeRequest {
    /// Serve the whole representation (no usable single range).
    Ignore,
    /// 416.
    Unsatisfiable,
    /// Serve bytes `start..end` (end exclusive, non-empty).
    Bytes(u64, u64),
}

/// Parses a Range header for a representation of `size` bytes. Only a single
/// range is honoured: multiple ranges would need multipart/byteranges, which
/// RFC 9110 lets us skip by sending the whole thing, as do invalid headers.
fn parse_range(value: &str, size: u64) -> RangeRequest {
    let Some((unit, set)) = value.split_once('=') else {
        return RangeRequest::Ignore;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeRequest::Ignore;
    }
    let mut specs = set.split(',').map(str::trim).filter(|s| !s.is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else {
        return RangeRequest::Ignore;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return RangeRequest::Ignore;
    };
    if first.is_empty() {
        let Some(suffix) = parse_pos(last) else {
            return RangeRequest::Ignore;
        };
        if suffix == 0 {
            return RangeRequest::Unsatisfiable;
        }
        if size == 0 {
            // "The last N bytes" of nothing: satisfiable by RFC 9110 but there is
            // no byte to put in a Content-Range; just send the (empty) whole.
            return RangeRequest::Ignore;
        }
        return RangeRequest::Bytes(size.saturating_sub(suffix), size);
    }
    let Some(first) = parse_pos(first) else {
        return RangeRequest::Ignore;
    };
    let end = if last.is_empty() {
        size
    } else {
        match parse_pos(last) {
            Some(last) if last >= first => last.saturating_add(1).min(size),
            _ => return RangeRequest::Ignore,
        }
    };
    if first >= size {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Bytes(first, end)
}

/// A byte position: ASCII digits; too large for u64 means "beyond any file".
fn parse_pos(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(u64::MAX))
}

// ---------------------------------------------------------------------------
// Reading

/// One `pread` of up to `len` bytes at `offset` (fewer only at end of file).
fn read_at(fd: &OwnedFd, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    if len == 0 {
        // rustix's spare_capacity() insists on a non-zero capacity.
        return Ok(Vec::new());
    }
    let mut buf = Vec::with_capacity(len);
    retry(|| rustix::io::pread(fd, rustix::buffer::spare_capacity(&mut buf), offset))?;
    // with_capacity may have given more room than asked for.
    buf.truncate(len);
    Ok(buf)
}

/// Reads exactly `len` bytes at `offset`; a file that has shrunk below that is
/// an error (the Content-Length is already decided).
fn read_exact_at(fd: &OwnedFd, offset: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = read_at(fd, offset, len)?;
    while buf.len() < len {
        let more = read_at(fd, offset + buf.len() as u64, len - buf.len())?;
        if more.is_empty() {
            return Err(shrunk());
        }
        buf.extend_from_slice(&more);
    }
    Ok(buf.into())
}

fn shrunk() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while being sent")
}

/// A body streaming `pos..end` of a file, one [`CHUNK`] per poll, read
/// synchronously. It ends exactly at `end` however the file changes: growth is
/// not sent, and shrinking yields an error (hyper then aborts the response, so
/// the client sees a truncated message rather than padded or mixed content).
struct FileBody {
    fd: Arc<OwnedFd>,
    pos: u64,
    end: u64,
}

impl HttpBody for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if this.pos >= this.end {
            return Poll::Ready(None);
        }
        // At most CHUNK, so the cast cannot truncate.
        let want = (this.end - this.pos).min(CHUNK as u64) as usize;
        let result = match read_at(&this.fd, this.pos, want) {
            Ok(buf) if buf.is_empty() => Err(shrunk()),
            Ok(buf) => {
                this.pos += buf.len() as u64;
                Ok(Frame::data(Bytes::from(buf)))
            }
            Err(e) => Err(e),
        };
        if result.is_err() {
            this.pos = this.end;
        }
        Poll::Ready(Some(result))
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.end
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.end.saturating_sub(self.pos))
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{chown, lchown, symlink};

    use http::Request;
    use http_body_util::BodyExt;
    use tempfile::TempDir;

    use super::super::path::normalize;
    use super::*;

    const NOBODY: u32 = 65534;

    /// A site root inside a temp dir, with room for files "outside" it.
    struct Site {
        tmp: TempDir,
        root: Root,
    }

    impl Site {
        fn new() -> Site {
            let tmp = TempDir::new().unwrap();
            fs::create_dir(tmp.path().join("www")).unwrap();
            let root = Root::open(&tmp.path().join("www")).unwrap();
            Site { tmp, root }
        }

        /// Absolute path of `rel` inside the root.
        fn at(&self, rel: &str) -> PathBuf {
            self.tmp.path().join("www").join(rel)
        }

        fn file(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
            let p = self.at(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, contents).unwrap();
            p
        }

        fn dir(&self, rel: &str) -> PathBuf {
            let p = self.at(rel);
            fs::create_dir_all(&p).unwrap();
            p
        }

        fn link(&self, rel: &str, target: &str) -> PathBuf {
            let p = self.at(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            symlink(target, &p).unwrap();
            p
        }

        /// Serves `uri` the way the front end will: normalise, then serve.
        fn request(
            &self,
            method: &str,
            uri: &str,
            headers: &[(&str, &str)],
        ) -> Result<Response<Body>, Reject> {
            let mut b = Request::builder().method(method).uri(uri);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            let (parts, ()) = b.body(()).unwrap().into_parts();
            let path = normalize(parts.uri.path())?;
            serve(&self.root, &path, &parts)
        }

        fn get(&self, uri: &str, headers: &[(&str, &str)]) -> Result<Response<Body>, Reject> {
            self.request("GET", uri, headers)
        }
    }

    fn ok(r: Result<Response<Body>, Reject>) -> Response<Body> {
        match r {
            Ok(resp) => resp,
            Err(e) => panic!("rejected: {e:?}"),
        }
    }

    fn hdr<'a>(resp: &'a Response<Body>, name: &str) -> Option<&'a str> {
        resp.headers().get(name).map(|v| v.to_str().unwrap())
    }

    async fn text(resp: Response<Body>) -> Vec<u8> {
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec()
    }

    fn etag_of(site: &Site, uri: &str, headers: &[(&str, &str)]) -> String {
        hdr(&ok(site.get(uri, headers)), "etag").unwrap().to_owned()
    }

    fn set_mtime(path: &Path, secs: u64) {
        let f = fs::File::options().write(true).open(path).unwrap();
        f.set_modified(UNIX_EPOCH + Duration::from_secs(secs))
            .unwrap();
    }

    fn big(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[tokio::test]
    async fn index_html_for_root_and_subdir() {
        let site = Site::new();
        site.file("index.html", "<h1>home</h1>");
        site.file("sub/index.html", "<h1>sub</h1>");
        let resp = ok(site.get("/", &[]));
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(hdr(&resp, "content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(hdr(&resp, "content-length"), Some("13"));
        assert_eq!(text(resp).await, b"<h1>home</h1>");
        assert_eq!(text(ok(site.get("/sub/", &[]))).await, b"<h1>sub</h1>");
        assert_eq!(text(ok(site.get("/sub/?x=1", &[]))).await, b"<h1>sub</h1>");
    }

    #[test]
    fn content_types() {
        let site = Site::new();
        for (name, ct) in [
            ("a.css", "text/css; charset=utf-8"),
            ("a.js", "text/javascript; charset=utf-8"),
            ("a.mjs", "text/javascript; charset=utf-8"),
            ("a.json", "application/json; charset=utf-8"),
            ("a.txt", "text/plain; charset=utf-8"),
            ("a.png", "image/png"),
            ("a.svg", "image/svg+xml"),
            ("a.woff2", "font/woff2"),
            ("README", "application/octet-stream"),
            ("a.unknownext", "application/octet-stream"),
        ] {
            site.file(name, "x");
            let resp = ok(site.get(&format!("/{name}"), &[]));
            assert_eq!(hdr(&resp, "content-type"), Some(ct), "{name}");
        }
    }

    #[test]
    fn validators_and_headers() {
        let site = Site::new();
        let p = site.file("a.txt", "hello");
        set_mtime(&p, 1_700_000_000);
        let resp = ok(site.get("/a.txt", &[]));
        assert_eq!(hdr(&resp, "etag"), Some("\"6553f100-5\""));
        assert_eq!(
            hdr(&resp, "last-modified"),
            Some("Tue, 14 Nov 2023 22:13:20 GMT")
        );
        assert_eq!(hdr(&resp, "accept-ranges"), Some("bytes"));
        assert_eq!(hdr(&resp, "content-length"), Some("5"));
        assert_eq!(hdr(&resp, "cache-control"), None);
        assert_eq!(hdr(&resp, "vary"), None);
        assert_eq!(hdr(&resp, "content-encoding"), None);
    }

    #[test]
    fn pre_epoch_mtime_has_no_last_modified() {
        let site = Site::new();
        let p = site.file("old.txt", "x");
        let f = fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(UNIX_EPOCH - Duration::from_secs(10))
            .unwrap();
        let resp = ok(site.get("/old.txt", &[]));
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(hdr(&resp, "last-modified"), None);
    }

    #[tokio::test]
    async fn not_modified_by_etag() {
        let site = Site::new();
        site.file("a.txt", "hello");
        let etag = etag_of(&site, "/a.txt", &[]);
        let weak = format!("W/{etag}");
        let list = format!("\"nope\", {etag}");
        for inm in [etag.as_str(), &weak, &list, "*", "\"x\",*"] {
            let resp = ok(site.get("/a.txt", &[("if-none-match", inm)]));
            assert_eq!(resp.status(), StatusCode::NOT_MODIFIED, "{inm}");
            assert_eq!(hdr(&resp, "etag"), Some(etag.as_str()));
            assert!(hdr(&resp, "last-modified").is_some());
            assert_eq!(hdr(&resp, "content-length"), None);
            assert!(text(resp).await.is_empty());
        }
        for inm in ["\"nope\"", "W/\"nope\"", "garbage", "", "\"6553f100\""] {
            let resp = ok(site.get("/a.txt", &[("if-none-match", inm)]));
            assert_eq!(resp.status(), StatusCode::OK, "{inm}");
        }
        // HEAD gets 304 too.
        let resp = ok(site.request("HEAD", "/a.txt", &[("if-none-match", &etag)]));
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    }

    #[test]
    fn not_modified_by_date() {
        let site = Site::new();
        let p = site.file("a.txt", "hello");
        set_mtime(&p, 1_700_000_000);
        let same = "Tue, 14 Nov 2023 22:13:20 GMT";
        let later = "Tue, 14 Nov 2023 22:13:21 GMT";
        let earlier = "Tue, 14 Nov 2023 22:13:19 GMT";
        let st = |h: &[(&str, &str)]| ok(site.get("/a.txt", h)).status();
        assert_eq!(st(&[("if-modified-since", same)]), StatusCode::NOT_MODIFIED);
        assert_eq!(
            st(&[("if-modified-since", later)]),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(st(&[("if-modified-since", earlier)]), StatusCode::OK);
        assert_eq!(st(&[("if-modified-since", "yesterday")]), StatusCode::OK);
        // If-None-Match present (and not matching): the date is not consulted.
        assert_eq!(
            st(&[("if-none-match", "\"other\""), ("if-modified-since", later)]),
            StatusCode::OK
        );
    }

    async fn range(site: &Site, range: &str) -> (StatusCode, Option<String>, Vec<u8>) {
        let resp = ok(site.get("/r.txt", &[("range", range)]));
        let status = resp.status();
        let cr = hdr(&resp, "content-range").map(str::to_owned);
        let len: usize = hdr(&resp, "content-length").unwrap().parse().unwrap();
        let body = text(resp).await;
        assert_eq!(body.len(), len, "{range}");
        (status, cr, body)
    }

    #[tokio::test]
    async fn single_ranges() {
        let site = Site::new();
        site.file("r.txt", "0123456789");
        let partial = StatusCode::PARTIAL_CONTENT;
        let cases: &[(&str, &str, &[u8])] = &[
            ("bytes=0-4", "bytes 0-4/10", b"01234"),
            ("bytes=3-3", "bytes 3-3/10", b"3"),
            ("bytes=7-", "bytes 7-9/10", b"789"),
            ("bytes=-3", "bytes 7-9/10", b"789"),
            ("bytes=-100", "bytes 0-9/10", b"0123456789"),
            ("bytes=5-1000", "bytes 5-9/10", b"56789"),
            ("bytes=9-99999999999999999999999", "bytes 9-9/10", b"9"),
            ("BYTES = 1-2 ", "bytes 1-2/10", b"12"),
            ("bytes=1-2,", "bytes 1-2/10", b"12"),
        ];
        for &(r, cr, body) in cases {
            assert_eq!(
                range(&site, r).await,
                (partial, Some(cr.to_owned()), body.to_vec()),
                "{r}"
            );
        }
    }

    #[tokio::test]
    async fn ignored_ranges_give_full_content() {
        let site = Site::new();
        site.file("r.txt", "0123456789");
        for r in [
            "bytes=0-1,3-4",
            "bytes=0-1, 20-30",
            "bytes=5-2",
            "bytes=a-b",
            "bytes=1",
            "bytes=",
            "items=0-1",
            "0-1",
            "bytes=-",
            "bytes= 1 - 2",
        ] {
            assert_eq!(
                range(&site, r).await,
                (StatusCode::OK, None, b"0123456789".to_vec()),
                "{r}"
            );
        }
    }

    #[test]
    fn unsatisfiable_ranges() {
        let site = Site::new();
        site.file("r.txt", "0123456789");
        site.file("empty.txt", "");
        for r in [
            "bytes=10-",
            "bytes=10-20",
            "bytes=-0",
            "bytes=99999999999999999999999-",
        ] {
            match site.get("/r.txt", &[("range", r)]) {
                Err(Reject::RangeNotSatisfiable { size: 10 }) => {}
                other => panic!("{r}: {:?}", other.map(|r| r.status())),
            }
        }
        assert!(matches!(
            site.get("/empty.txt", &[("range", "bytes=0-")]),
            Err(Reject::RangeNotSatisfiable { size: 0 })
        ));
        let resp = ok(site.get("/empty.txt", &[("range", "bytes=-5")]));
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(hdr(&resp, "content-length"), Some("0"));
    }

    #[tokio::test]
    async fn if_range() {
        let site = Site::new();
        let p = site.file("r.txt", "0123456789");
        set_mtime(&p, 1_700_000_000);
        let etag = etag_of(&site, "/r.txt", &[]);
        let weak = format!("W/{etag}");
        let st =
            |ir: &str| ok(site.get("/r.txt", &[("range", "bytes=0-1"), ("if-range", ir)])).status();
        assert_eq!(st(&etag), StatusCode::PARTIAL_CONTENT);
        assert_eq!(st("\"stale-1\""), StatusCode::OK);
        assert_eq!(st(&weak), StatusCode::OK);
        assert_eq!(
            st("Tue, 14 Nov 2023 22:13:20 GMT"),
            StatusCode::PARTIAL_CONTENT
        );
        assert_eq!(st("Tue, 14 Nov 2023 22:13:21 GMT"), StatusCode::OK);
        assert_eq!(st("not a date"), StatusCode::OK);
    }

    #[tokio::test]
    async fn head_has_headers_but_no_body() {
        let site = Site::new();
        site.file("a.txt", "hello");
        site.file("big.bin", big(200 * 1024));
        let resp = ok(site.request("HEAD", "/a.txt", &[]));
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(hdr(&resp, "content-length"), Some("5"));
        assert_eq!(
            hdr(&resp, "content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert!(hdr(&resp, "etag").is_some());
        assert!(text(resp).await.is_empty());
        // Ranges are for GET only.
        let resp = ok(site.request("HEAD", "/big.bin", &[("range", "bytes=0-9")]));
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(hdr(&resp, "content-length"), Some("204800"));
        assert!(text(resp).await.is_empty());
    }

    #[test]
    fn other_methods_refused() {
        let site = Site::new();
        site.file("a.txt", "hello");
        for m in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
            assert!(matches!(
                site.request(m, "/a.txt", &[]),
                Err(Reject::MethodNotAllowed("GET, HEAD"))
            ));
        }
    }

    fn precompressed_site() -> Site {
        let site = Site::new();
        site.file("app.js", "plain");
        site.file("app.js.br", "BROTLI");
        site.file("app.js.gz", "GZIP");
        site.file("only-gz.css", "plain");
        site.file("only-gz.css.gz", "GZIP");
        site.file("none.txt", "plain");
        site
    }

    async fn encoded(
        site: &Site,
        uri: &str,
        ae: &str,
    ) -> (Option<String>, Option<String>, Vec<u8>) {
        let headers: &[(&str, &str)] = if ae.is_empty() {
            &[]
        } else {
            &[("accept-encoding", ae)]
        };
        let resp = ok(site.get(uri, headers));
        assert_eq!(
            hdr(&resp, "content-type"),
            Some(if uri.ends_with(".css") {
                "text/css; charset=utf-8"
            } else if uri.ends_with(".js") {
                "text/javascript; charset=utf-8"
            } else {
                "text/plain; charset=utf-8"
            })
        );
        let ce = hdr(&resp, "content-encoding").map(str::to_owned);
        let vary = hdr(&resp, "vary").map(str::to_owned);
        (ce, vary, text(resp).await)
    }

    #[tokio::test]
    async fn precompressed_selection() {
        let site = precompressed_site();
        let br = (
            Some("br".into()),
            Some("Accept-Encoding".into()),
            b"BROTLI".to_vec(),
        );
        let gz = (
            Some("gzip".into()),
            Some("Accept-Encoding".into()),
            b"GZIP".to_vec(),
        );
        let plain = (None, None, b"plain".to_vec());
        for (ae, want) in [
            ("gzip, deflate, br, zstd", &br),
            ("br", &br),
            ("gzip", &gz),
            ("x-gzip", &gz),
            ("br;q=0, gzip", &gz),
            ("br; q=0.000, gzip", &gz),
            ("br;q=0.5, gzip;q=0.8", &gz),
            ("br;q=0.8, gzip;q=0.8", &br),
            ("gzip;q=0.001, br;q=1.0", &br),
            ("*", &br),
            ("br;q=0, *", &gz),
            ("*;q=0", &plain),
            ("br;q=0, gzip;q=0", &plain),
            ("identity", &plain),
            ("deflate", &plain),
            ("br;q=2", &plain),
            ("br;q=abc, gzip;q=0.1", &gz),
            ("", &plain),
        ] {
            assert_eq!(&encoded(&site, "/app.js", ae).await, want, "{ae:?}");
        }
        // Only a .gz: br is probed, gzip chosen.
        assert_eq!(encoded(&site, "/only-gz.css", "br, gzip").await, gz);
        // No sibling at all: no Vary.
        assert_eq!(encoded(&site, "/none.txt", "br, gzip").await, plain);
        // br accepted but missing, gzip not accepted: the .gz was never probed.
        assert_eq!(encoded(&site, "/only-gz.css", "br").await, plain);
    }

    #[test]
    fn precompressed_variants_have_their_own_validators() {
        let site = precompressed_site();
        let plain = etag_of(&site, "/app.js", &[]);
        let br = etag_of(&site, "/app.js", &[("accept-encoding", "br")]);
        let gz = etag_of(&site, "/app.js", &[("accept-encoding", "gzip")]);
        assert!(
            br.ends_with("-br\"") && gz.ends_with("-gzip\""),
            "{br} {gz}"
        );
        assert!(plain != br && plain != gz && br != gz);
        // Sizes come from the variant.
        let resp = ok(site.get("/app.js", &[("accept-encoding", "br")]));
        assert_eq!(hdr(&resp, "content-length"), Some("6"));
        // The br ETag revalidates the br variant only.
        let h = [("accept-encoding", "br"), ("if-none-match", br.as_str())];
        let resp = ok(site.get("/app.js", &h));
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(hdr(&resp, "vary"), Some("Accept-Encoding"));
        let h = [("accept-encoding", "gzip"), ("if-none-match", br.as_str())];
        assert_eq!(ok(site.get("/app.js", &h)).status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn precompressed_ranges_apply_to_the_variant() {
        let site = precompressed_site();
        let h = [("accept-encoding", "br"), ("range", "bytes=1-2")];
        let resp = ok(site.get("/app.js", &h));
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(hdr(&resp, "content-range"), Some("bytes 1-2/6"));
        assert_eq!(text(resp).await, b"RO");
    }

    #[tokio::test]
    async fn compressed_files_requested_directly_are_not_reencoded() {
        let site = precompressed_site();
        site.file("app.js.gz.br", "NEVER");
        let resp = ok(site.get("/app.js.gz", &[("accept-encoding", "br, gzip")]));
        assert_eq!(hdr(&resp, "content-encoding"), None);
        assert_eq!(hdr(&resp, "vary"), None);
        assert_eq!(hdr(&resp, "content-type"), Some("application/gzip"));
        assert_eq!(text(resp).await, b"GZIP");
    }

    #[tokio::test]
    async fn precompressed_sibling_that_is_not_a_file_or_not_allowed_is_skipped() {
        let site = Site::new();
        site.file("a.txt", "plain");
        site.dir("a.txt.br");
        let other = site.file("b.txt.real", "OTHER");
        chown(&other, Some(NOBODY), Some(NOBODY)).unwrap();
        site.file("b.txt", "plain");
        site.link("b.txt.br", "b.txt.real");
        let resp = ok(site.get("/a.txt", &[("accept-encoding", "br")]));
        assert_eq!(hdr(&resp, "content-encoding"), None);
        assert_eq!(text(resp).await, b"plain");
        let resp = ok(site.get("/b.txt", &[("accept-encoding", "br")]));
        assert_eq!(hdr(&resp, "content-encoding"), None);
        assert_eq!(text(resp).await, b"plain");
    }

    #[tokio::test]
    async fn precompressed_index() {
        let site = Site::new();
        site.file("index.html", "plain");
        site.file("index.html.gz", "GZIP");
        let resp = ok(site.get("/", &[("accept-encoding", "gzip")]));
        assert_eq!(hdr(&resp, "content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(hdr(&resp, "content-encoding"), Some("gzip"));
        assert_eq!(text(resp).await, b"GZIP");
    }

    #[test]
    fn directory_redirect() {
        let site = Site::new();
        site.file("docs/index.html", "x");
        site.dir("a b/ü");
        site.dir("100%");
        let loc = |uri: &str| {
            let resp = ok(site.get(uri, &[]));
            assert_eq!(resp.status(), StatusCode::MOVED_PERMANENTLY, "{uri}");
            hdr(&resp, "location").unwrap().to_owned()
        };
        assert_eq!(loc("/docs"), "/docs/");
        assert_eq!(loc("/docs?x=1&y=%20"), "/docs/?x=1&y=%20");
        assert_eq!(loc("//docs"), "/docs/");
        assert_eq!(loc("/a%20b/%C3%BC"), "/a%20b/%C3%BC/");
        assert_eq!(loc("/100%25"), "/100%25/");
        let resp = ok(site.request("HEAD", "/docs", &[]));
        assert_eq!(resp.status(), StatusCode::MOVED_PERMANENTLY);
    }

    #[test]
    fn no_directory_listing() {
        let site = Site::new();
        site.file("empty/other.txt", "x");
        site.dir("weird/index.html");
        assert!(matches!(site.get("/empty/", &[]), Err(Reject::NotFound)));
        assert!(matches!(site.get("/", &[]), Err(Reject::NotFound)));
        // An "index.html" that is itself a directory is no index.
        assert!(matches!(site.get("/weird/", &[]), Err(Reject::NotFound)));
    }

    #[test]
    fn missing_and_not_a_directory() {
        let site = Site::new();
        site.file("a.txt", "x");
        for uri in ["/nope", "/nope/", "/a.txt/", "/a.txt/b", "/nope/a.txt"] {
            assert!(matches!(site.get(uri, &[]), Err(Reject::NotFound)), "{uri}");
        }
    }

    #[tokio::test]
    async fn hidden_files() {
        let site = Site::new();
        site.file(".env", "SECRET");
        site.file(".git/config", "SECRET");
        site.file("a/.htpasswd", "SECRET");
        site.file(".well-known/acme-challenge/tok", "challenge");
        site.file(".well-known/.secret", "SECRET");
        for uri in [
            "/.env",
            "/.git/config",
            "/.git/",
            "/a/.htpasswd",
            "/.well-known/.secret",
        ] {
            assert!(matches!(site.get(uri, &[]), Err(Reject::NotFound)), "{uri}");
        }
        let resp = ok(site.get("/.well-known/acme-challenge/tok", &[]));
        assert_eq!(text(resp).await, b"challenge");
    }

    #[tokio::test]
    async fn links_to_hidden_names_are_hidden() {
        let site = Site::new();
        site.file(".env", "SECRET");
        site.file(".git/config", "SECRET");
        site.file("sub/x", "x");
        site.file(".well-known/acme-challenge/tok", "challenge");
        site.link("env.txt", ".env");
        site.link("repo", ".git");
        site.link("sub/up.txt", "../.env");
        site.link("sub/dots", "../sub/../.git");
        site.link("acme", ".well-known/acme-challenge");
        site.link("sub/wk", "../sub/.well-known");
        for uri in [
            "/env.txt",
            "/repo/config",
            "/repo/",
            "/repo",
            "/sub/up.txt",
            "/sub/dots/config",
            "/sub/wk/x",
        ] {
            assert!(matches!(site.get(uri, &[]), Err(Reject::NotFound)), "{uri}");
        }
        assert_eq!(text(ok(site.get("/acme/tok", &[]))).await, b"challenge");
    }

    #[tokio::test]
    async fn symlink_same_owner_served() {
        let site = Site::new();
        site.file("real/file.txt", "real");
        site.link("alias.txt", "real/file.txt");
        site.link("dir-alias", "real");
        site.link("chain1", "chain2");
        site.link("chain2", "real/file.txt");
        site.link("sub/up.txt", "../real/file.txt");
        site.link("sub/dot", ".");
        for uri in [
            "/alias.txt",
            "/dir-alias/file.txt",
            "/chain1",
            "/sub/up.txt",
            "/sub/dot/up.txt",
            "/sub/dot/dot/up.txt",
        ] {
            assert_eq!(text(ok(site.get(uri, &[]))).await, b"real", "{uri}");
        }
        // Link and target both owned by someone else, but by the same someone.
        let p = site.file("theirs/f.txt", "theirs");
        chown(&p, Some(NOBODY), None).unwrap();
        let l = site.link("their-link", "theirs/f.txt");
        lchown(&l, Some(NOBODY), None).unwrap();
        assert_eq!(text(ok(site.get("/their-link", &[]))).await, b"theirs");
        // A symlinked directory without a slash redirects like a directory.
        let resp = ok(site.get("/dir-alias", &[]));
        assert_eq!(resp.status(), StatusCode::MOVED_PERMANENTLY);
    }

    #[test]
    fn symlink_to_other_owner_forbidden() {
        let site = Site::new();
        let p = site.file("theirs.txt", "theirs");
        chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
        site.link("mine.txt", "theirs.txt");
        assert!(matches!(site.get("/mine.txt", &[]), Err(Reject::Forbidden)));
        // Also a directory owned by someone else, reached through a link.
        let d = site.dir("theirdir");
        site.file("theirdir/f.txt", "x");
        chown(&d, Some(NOBODY), None).unwrap();
        site.link("d", "theirdir");
        assert!(matches!(site.get("/d/f.txt", &[]), Err(Reject::Forbidden)));
        // A link owned by someone else pointing at our file.
        site.file("ours.txt", "ours");
        let l = site.link("planted.txt", "ours.txt");
        lchown(&l, Some(NOBODY), None).unwrap();
        assert!(matches!(
            site.get("/planted.txt", &[]),
            Err(Reject::Forbidden)
        ));
        // Chains: every link must match its final target.
        site.link("chain", "mine.txt");
        assert!(matches!(site.get("/chain", &[]), Err(Reject::Forbidden)));
        // The directory index may be a link too, with the same check.
        site.dir("site2");
        site.link("site2/index.html", "../theirs.txt");
        assert!(matches!(site.get("/site2/", &[]), Err(Reject::Forbidden)));
        // The file itself stays reachable directly.
        assert!(site.get("/theirs.txt", &[]).is_ok());
    }

    #[test]
    fn symlinks_out_of_the_root_not_found() {
        let site = Site::new();
        let outside = site.tmp.path().join("outside.txt");
        fs::write(&outside, "OUTSIDE").unwrap();
        fs::create_dir(site.tmp.path().join("outdir")).unwrap();
        fs::write(site.tmp.path().join("outdir/secret.txt"), "OUTSIDE").unwrap();
        // Same owner as the links (root), so only containment stops these.
        site.link("abs.txt", outside.to_str().unwrap());
        site.link("etc-passwd", "/etc/passwd");
        site.link("rel.txt", "../outside.txt");
        site.link("deep/rel.txt", "../../outside.txt");
        site.link("deep/far.txt", "../../../../../../../../etc/passwd");
        site.link("escape-dir", "../outdir");
        site.link("abs-dir", site.tmp.path().join("outdir").to_str().unwrap());
        site.link("root-link", "/");
        // An absolute link to a path inside the root is refused as well.
        site.file("inside.txt", "x");
        site.link("abs-inside.txt", site.at("inside.txt").to_str().unwrap());
        site.link("loop1", "loop2");
        site.link("loop2", "loop1");
        site.link("self", "self");
        site.link("dangling", "nope");
        for uri in [
            "/abs.txt",
            "/etc-passwd",
            "/rel.txt",
            "/deep/rel.txt",
            "/deep/far.txt",
            "/escape-dir/secret.txt",
            "/escape-dir/",
            "/escape-dir",
            "/abs-dir/secret.txt",
            "/root-link/etc/passwd",
            "/abs-inside.txt",
            "/loop1",
            "/self",
            "/self/x",
            "/dangling",
        ] {
            match site.get(uri, &[]) {
                Err(Reject::NotFound) => {}
                other => panic!("{uri}: {:?}", other.map(|r| r.status())),
            }
        }
    }

    #[test]
    fn symlink_into_file_then_more_components() {
        let site = Site::new();
        site.file("f.txt", "x");
        site.link("l", "f.txt");
        site.link("trailing", "f.txt/");
        assert!(matches!(site.get("/l/x", &[]), Err(Reject::NotFound)));
        assert!(matches!(site.get("/trailing", &[]), Err(Reject::NotFound)));
    }

    #[tokio::test]
    async fn fifo_not_found_without_blocking() {
        let site = Site::new();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            site.at("pipe"),
            Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        site.link("pipe-link", "pipe");
        let root = Root::open(&site.at("")).unwrap();
        let task = tokio::task::spawn_blocking(move || {
            let parts = Request::get("/pipe").body(()).unwrap().into_parts().0;
            let a = serve(&root, "/pipe", &parts);
            let b = serve(&root, "/pipe-link", &parts);
            (
                matches!(a, Err(Reject::NotFound)),
                matches!(b, Err(Reject::NotFound)),
            )
        });
        let res = tokio::time::timeout(Duration::from_secs(5), task).await;
        assert_eq!(res.expect("serving a FIFO blocked").unwrap(), (true, true));
    }

    #[test]
    fn device_not_found() {
        let site = Site::new();
        site.link("null", "/dev/null");
        assert!(matches!(site.get("/null", &[]), Err(Reject::NotFound)));
    }

    #[tokio::test]
    async fn large_file_streamed() {
        let site = Site::new();
        // Larger than the file cache takes: streamed from the file.
        let len = file_cache::MAX_FILE as usize + 200 * 1024;
        let data = big(len);
        site.file("big.bin", &data);
        let resp = ok(site.get("/big.bin", &[]));
        assert_eq!(hdr(&resp, "content-length"), Some(len.to_string().as_str()));
        assert_eq!(resp.body().size_hint().exact(), Some(len as u64));
        // Streamed: several frames, none larger than CHUNK.
        let mut body = resp.into_body();
        let mut got = Vec::new();
        let mut frames = 0;
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data.len() <= CHUNK);
            got.extend_from_slice(&data);
            frames += 1;
        }
        assert!(frames >= 4, "{frames} frames");
        assert_eq!(got, data);
    }

    #[tokio::test]
    async fn large_range_across_chunks() {
        let site = Site::new();
        let data = big(200 * 1024);
        site.file("big.bin", &data);
        let resp = ok(site.get("/big.bin", &[("range", "bytes=65000-140000")]));
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            hdr(&resp, "content-range"),
            Some("bytes 65000-140000/204800")
        );
        assert_eq!(hdr(&resp, "content-length"), Some("75001"));
        assert_eq!(text(resp).await, &data[65000..=140000]);
        // Ranges ending at and just past a chunk boundary.
        let r = format!("bytes=10-{}", 10 + CHUNK - 1);
        assert_eq!(
            text(ok(site.get("/big.bin", &[("range", &r)]))).await,
            &data[10..10 + CHUNK]
        );
        let r = format!("bytes=10-{}", 10 + CHUNK);
        assert_eq!(
            text(ok(site.get("/big.bin", &[("range", &r)]))).await,
            &data[10..=10 + CHUNK]
        );
        let resp = ok(site.get("/big.bin", &[("range", "bytes=-70000")]));
        assert_eq!(text(resp).await, &data[data.len() - 70000..]);
    }

    #[tokio::test]
    async fn growing_file_ends_at_the_announced_length() {
        let site = Site::new();
        let data = big(200 * 1024);
        let p = site.file("grow.bin", &data);
        let resp = ok(site.get("/grow.bin", &[]));
        let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
        std::io::Write::write_all(&mut f, &big(100 * 1024)).unwrap();
        assert_eq!(text(resp).await, data);
    }

    #[tokio::test]
    async fn shrinking_file_is_an_error() {
        let site = Site::new();
        let p = site.file(
            "shrink.bin",
            big(file_cache::MAX_FILE as usize + 200 * 1024),
        );
        let resp = ok(site.get("/shrink.bin", &[]));
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(100 * 1024)
            .unwrap();
        let mut body = resp.into_body();
        let mut got = 0;
        let err = loop {
            match body.frame().await {
                Some(Ok(frame)) => got += frame.into_data().unwrap().len(),
                Some(Err(e)) => break e,
                None => panic!("body ended without error after {got} bytes"),
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(got, 100 * 1024);
        assert!(body.frame().await.is_none());
    }

    #[test]
    fn root_accessors() {
        let site = Site::new();
        assert_eq!(
            site.root.path(),
            site.at("").as_path().parent().unwrap().join("www")
        );
        assert!(Root::open(&site.tmp.path().join("missing")).is_err());
        let f = site.file("f", "x");
        assert!(Root::open(&f).is_err());
    }

    #[test]
    fn root_is_held_by_fd() {
        let site = Site::new();
        site.file("a.txt", "x");
        fs::rename(site.tmp.path().join("www"), site.tmp.path().join("moved")).unwrap();
        assert!(site.get("/a.txt", &[]).is_ok());
    }

    #[test]
    fn qvalues() {
        assert_eq!(parse_qvalue("1"), Some(1000));
        assert_eq!(parse_qvalue("1."), Some(1000));
        assert_eq!(parse_qvalue("1.000"), Some(1000));
        assert_eq!(parse_qvalue("0"), Some(0));
        assert_eq!(parse_qvalue("0.5"), Some(500));
        assert_eq!(parse_qvalue("0.05"), Some(50));
        assert_eq!(parse_qvalue("0.001"), Some(1));
        assert_eq!(parse_qvalue("1.001"), None);
        assert_eq!(parse_qvalue("0.0001"), None);
        assert_eq!(parse_qvalue("2"), None);
        assert_eq!(parse_qvalue(".5"), None);
        assert_eq!(parse_qvalue(""), None);
        assert_eq!(parse_qvalue("0.-1"), None);
    }

    #[test]
    fn accept_encoding_parsing() {
        let parse = |v: &[&str]| {
            let mut h = HeaderMap::new();
            for v in v {
                h.append(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            }
            let a = AcceptEncoding::parse(&h);
            (a.br, a.gzip)
        };
        assert_eq!(parse(&[]), (0, 0));
        assert_eq!(parse(&["gzip, br"]), (1000, 1000));
        assert_eq!(parse(&["GZIP;Q=0.5", "Br ; q=0.25"]), (250, 500));
        assert_eq!(parse(&["*;q=0.3, gzip"]), (300, 1000));
        assert_eq!(parse(&["br, br;q=0"]), (0, 0));
        assert_eq!(parse(&["br;level=5;q=0.7"]), (700, 0));
        assert_eq!(parse(&["brotli, gzipx"]), (0, 0));
    }

    #[test]
    fn etag_lists() {
        let e = "\"abc-1\"";
        assert!(etag_list_matches(b"\"abc-1\"", e));
        assert!(etag_list_matches(b"W/\"abc-1\"", e));
        assert!(etag_list_matches(b"\"x\", W/\"abc-1\"", e));
        assert!(etag_list_matches(b"  ,\"x\",,\"abc-1\"  ", e));
        assert!(etag_list_matches(b"*", e));
        assert!(!etag_list_matches(b"\"abc-1", e));
        assert!(!etag_list_matches(b"abc-1", e));
        assert!(!etag_list_matches(b"\"abc-1 \"", e));
        assert!(etag_list_matches(b"junk, \"abc-1\"", e));
        assert!(!etag_list_matches(b"", e));
    }

    #[test]
    fn ranges_parse() {
        use RangeRequest::*;
        assert_eq!(parse_range("bytes=0-0", 1), Bytes(0, 1));
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-1", 0), Ignore);
        assert_eq!(parse_range("bytes=-0", 5), Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 5), Bytes(0, 5));
        assert_eq!(parse_range("bytes=+1-2", 5), Ignore);
        assert_eq!(parse_range("bytes=1-+2", 5), Ignore);
        assert_eq!(parse_range("bytes=1--2", 5), Ignore);
        assert_eq!(parse_range("bytes=0-1,2-3", 5), Ignore);
    }

    #[test]
    fn time_helpers() {
        assert!(http_date(-1).is_none());
        assert!(http_date(253_402_300_800).is_none());
        assert!(http_date(253_402_300_799).is_some());
        assert_eq!(
            parse_date(&HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT")),
            Some(0)
        );
    }
}
