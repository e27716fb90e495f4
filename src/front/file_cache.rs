//! A cache of what berth computes per file — its validators (ETag,
//! Last-Modified) and, for small files, its contents — shared by every worker.
//!
//! Part of the static-file step of the request flow. Entries are keyed by what
//! `fstat` says of the file that was just opened (device, inode, size, mtime and
//! ctime to the nanosecond), so a hit is only ever possible after the file was
//! opened through every access check of `static_files::open`, and a file that
//! changed in any way is read again. Stale entries are never hit and go when
//! space is needed. What this saves is the copy from the page cache into user
//! memory on every request (the bytes are then shared, `Bytes`, by every
//! response that sends them) and formatting the validators.

use std::sync::Mutex;

use bytes::Bytes;
use http::HeaderValue;
use rustc_hash::FxHashMap;
use rustix::fs::Stat;

/// Files larger than this are streamed, never cached.
pub const MAX_FILE: u64 = 1 << 20;
/// Total bytes held at most (contents plus a fixed charge per entry).
pub const MAX_TOTAL: u64 = 64 << 20;
/// What an entry costs besides its contents, for the accounting.
const ENTRY_COST: u64 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    dev: u64,
    ino: u64,
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    /// The content coding this file is served as (a `.br` file is also
    /// servable as itself, with other validators).
    encoding: Option<&'static str>,
}

impl Key {
    pub fn of(st: &Stat, encoding: Option<&'static str>) -> Key {
        Key {
            encoding,
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec as i64),
            ctime: (st.st_ctime, st.st_ctime_nsec as i64),
        }
    }
}

/// What is known of one file.
#[derive(Debug, Clone)]
pub struct Cached {
    pub etag: HeaderValue,
    pub last_modified: Option<HeaderValue>,
    /// The `Content-Length` of the whole file (formatting it allocated a
    /// value per request).
    pub length: HeaderValue,
    /// The whole contents, for files up to [`MAX_FILE`].
    pub bytes: Option<Bytes>,
}

#[derive(Default)]
pub struct FileCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: FxHashMap<Key, Cached>,
    total: u64,
}

fn cost(c: &Cached) -> u64 {
    ENTRY_COST + c.bytes.as_ref().map_or(0, |b| b.len() as u64)
}

impl FileCache {
    pub fn get(&self, key: &Key) -> Option<Cached> {
        self.inner.lock().ok()?.map.get(key).cloned()
    }

    /// Remembers what is known of `key`, evicting arbitrary entries (a hash
    /// map's order) when full.
    pub fn insert(&self, key: Key, cached: Cached) {
        if cached
            .bytes
            .as_ref()
            .is_some_and(|b| b.len() as u64 > MAX_FILE)
        {
            return;
        }
        let len = cost(&cached);
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        while inner.total + len > MAX_TOTAL {
            let Some(victim) = inner.map.keys().next().copied() else {
                break;
            };
            if let Some(old) = inner.map.remove(&victim) {
                inner.total -= cost(&old);
            }
        }
        if let Some(old) = inner.map.insert(key, cached) {
            inner.total -= cost(&old);
        }
        inner.total += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_of(path: &std::path::Path) -> Stat {
        rustix::fs::stat(path).unwrap()
    }

    fn cached(bytes: &'static [u8]) -> Cached {
        Cached {
            etag: HeaderValue::from_static("\"x\""),
            last_modified: None,
            length: HeaderValue::from(bytes.len()),
            bytes: Some(Bytes::from_static(bytes)),
        }
    }

    #[test]
    fn a_changed_file_misses_and_space_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "one").unwrap();
        let cache = FileCache::default();
        let k1 = Key::of(&stat_of(&p), None);
        cache.insert(k1, cached(b"one"));
        assert_eq!(cache.get(&k1).unwrap().bytes.as_deref(), Some(&b"one"[..]));
        assert!(cache.get(&Key::of(&stat_of(&p), Some("br"))).is_none());
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&p, "two").unwrap();
        let k2 = Key::of(&stat_of(&p), None);
        assert_ne!(k1, k2, "same size, new mtime: a new key");
        assert!(cache.get(&k2).is_none());

        let big = Bytes::from(vec![0u8; MAX_FILE as usize]);
        for ino in 0..100 {
            let mut k = k1;
            k.ino = ino + 1000;
            cache.insert(
                k,
                Cached {
                    bytes: Some(big.clone()),
                    ..cached(b"")
                },
            );
        }
        assert!(cache.inner.lock().unwrap().total <= MAX_TOTAL);
    }
}
