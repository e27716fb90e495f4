//! A cache of small files' contents, shared by every worker.
//!
//! Part of the static-file step of the request flow. Entries are keyed by what
//! `fstat` says of the file that was just opened (device, inode, size, mtime and
//! ctime to the nanosecond), so a hit is only ever possible after the file was
//! opened through every access check of `static_files::open`, and a file that
//! changed in any way is read again. Stale entries are never hit and go when
//! space is needed. What this saves is the copy from the page cache into user
//! memory on every request; the bytes are then shared (`Bytes`) by every
//! response that sends them.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use rustix::fs::Stat;

/// Files larger than this are streamed, never cached.
pub const MAX_FILE: u64 = 1 << 20;
/// Total bytes held at most.
pub const MAX_TOTAL: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    dev: u64,
    ino: u64,
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Key {
    pub fn of(st: &Stat) -> Key {
        Key {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec as i64),
            ctime: (st.st_ctime, st.st_ctime_nsec as i64),
        }
    }
}

#[derive(Default)]
pub struct FileCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Key, Bytes>,
    total: u64,
}

impl FileCache {
    pub fn get(&self, key: &Key) -> Option<Bytes> {
        self.inner.lock().ok()?.map.get(key).cloned()
    }

    /// Remembers `bytes` as the contents of `key`, evicting arbitrary entries
    /// (a hash map's order) when full.
    pub fn insert(&self, key: Key, bytes: Bytes) {
        let len = bytes.len() as u64;
        if len > MAX_FILE {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        while inner.total + len > MAX_TOTAL {
            let Some(victim) = inner.map.keys().next().copied() else {
                break;
            };
            if let Some(old) = inner.map.remove(&victim) {
                inner.total -= old.len() as u64;
            }
        }
        if let Some(old) = inner.map.insert(key, bytes) {
            inner.total -= old.len() as u64;
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

    #[test]
    fn a_changed_file_misses_and_space_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "one").unwrap();
        let cache = FileCache::default();
        let k1 = Key::of(&stat_of(&p));
        cache.insert(k1, Bytes::from_static(b"one"));
        assert_eq!(cache.get(&k1).as_deref(), Some(&b"one"[..]));
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&p, "two").unwrap();
        let k2 = Key::of(&stat_of(&p));
        assert_ne!(k1, k2, "same size, new mtime: a new key");
        assert!(cache.get(&k2).is_none());

        let big = Bytes::from(vec![0u8; MAX_FILE as usize]);
        for ino in 0..100 {
            let mut k = k1;
            k.ino = ino + 1000;
            cache.insert(k, big.clone());
        }
        assert!(cache.inner.lock().unwrap().total <= MAX_TOTAL);
    }
}
