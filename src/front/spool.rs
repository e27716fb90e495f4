//! Bytes kept in order for a while: in memory up to a budget, then in an
//! unlinked temporary file. The store behind request bodies read whole before
//! an app gets them ([`super::request_body`]) and app responses read at the
//! app's pace while the client drains them ([`super::buffer`]), as nginx's
//! `client_body_buffer_size` and `proxy_buffers` + `proxy_temp_path` do.
//!
//! The temporary file is made with `O_TMPFILE` in the front end's own
//! directory (`state_dir/tmp`, mode 0700, owned by the front end's user): it
//! has no name, so nothing can open it, and it disappears with its last fd.
//! Where the file system has no `O_TMPFILE`, a file with a random name is
//! created with `O_EXCL` and unlinked at once. File I/O is plain `pread` /
//! `pwrite` on the worker thread: the file lives in the page cache, as
//! nginx's temporary files do on its event loop.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use rustix::fs::{Mode, OFlags};

/// Where temporary files go (`None`: memory only).
pub type TmpDir = Option<Arc<Path>>;

/// Largest piece read back from the file at once.
const READ_CHUNK: usize = 64 * 1024;

/// Body bytes held in memory by every spool and buffered response of this
/// process, and the most there may be. Each body's own limit
/// (`request_buffer`, `response_buffer`) is per body; this bounds them all
/// together, so many clients each leaving a response untaken (an HTTP/2
/// connection opens 128 streams) cannot make berth hold gigabytes in memory:
/// past it, bodies go to their temporary files.
static HELD: AtomicUsize = AtomicUsize::new(0);
static HELD_LIMIT: AtomicUsize = AtomicUsize::new(256 << 20);

/// Sets the process-wide limit on body bytes in memory.
pub fn set_memory_limit(bytes: usize) {
    HELD_LIMIT.store(bytes, Ordering::Relaxed);
}

/// Body bytes in memory now, process-wide.
pub fn held() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// A share of the process-wide memory budget; given back when dropped.
#[derive(Default)]
pub struct Reservation(usize);

impl Reservation {
    /// Takes `n` more bytes of the budget, if there is room.
    pub fn try_add(&mut self, n: usize) -> bool {
        let limit = HELD_LIMIT.load(Ordering::Relaxed);
        let taken = HELD.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |held| {
            held.checked_add(n).filter(|&total| total <= limit)
        });
        if taken.is_ok() {
            self.0 += n;
        }
        taken.is_ok()
    }

    /// Takes `n` more bytes whatever the limit (memory is all there is).
    fn force_add(&mut self, n: usize) {
        HELD.fetch_add(n, Ordering::AcqRel);
        self.0 += n;
    }

    /// Gives `n` bytes back.
    pub fn release(&mut self, n: usize) {
        let n = n.min(self.0);
        HELD.fetch_sub(n, Ordering::AcqRel);
        self.0 -= n;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        HELD.fetch_sub(self.0, Ordering::AcqRel);
    }
}

enum Segment {
    Mem(Bytes),
    /// Bytes `start..end` of the file.
    File {
        start: u64,
        end: u64,
    },
}

/// Bytes appended at one end and taken from the other.
pub struct Spool {
    segments: VecDeque<Segment>,
    /// Bytes in memory segments, and their share of the process budget.
    mem: usize,
    reserved: Reservation,
    mem_limit: usize,
    tmp: TmpDir,
    file: Option<File>,
    /// Where the next byte goes in the file.
    file_end: u64,
    /// Bytes not taken yet, in memory and file.
    unread: u64,
    /// The file could not be made: memory only from then on.
    file_failed: bool,
}

impl Spool {
    /// An empty spool keeping up to `mem_limit` bytes in memory, the rest in
    /// a temporary file in `tmp`.
    pub fn new(mem_limit: usize, tmp: TmpDir) -> Spool {
        Spool {
            segments: VecDeque::new(),
            mem: 0,
            reserved: Reservation::default(),
            mem_limit,
            tmp,
            file: None,
            file_end: 0,
            unread: 0,
            file_failed: false,
        }
    }

    /// Bytes not taken yet.
    pub fn unread(&self) -> u64 {
        self.unread
    }

    pub fn is_empty(&self) -> bool {
        self.unread == 0
    }

    /// Bytes held in memory now.
    pub fn in_memory(&self) -> usize {
        self.mem
    }

    /// Whether more bytes may go to the file (one could be made).
    pub fn can_spill(&self) -> bool {
        self.tmp.is_some() && !self.file_failed
    }

    /// Appends `data`: in memory while it fits this spool's limit and the
    /// process-wide budget (and nothing is waiting in the file, to keep the
    /// order), else to the file. Without a file (none configured, or it
    /// could not be made), memory takes it all: the callers bound what they
    /// push by [`Spool::can_spill`].
    pub fn push(&mut self, data: Bytes) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let len = data.len();
        let file_waiting = matches!(self.segments.back(), Some(Segment::File { .. }));
        let in_memory = if !self.can_spill() {
            self.reserved.force_add(len);
            true
        } else {
            !file_waiting && self.mem + len <= self.mem_limit && self.reserved.try_add(len)
        };
        if in_memory {
            self.mem += len;
            self.unread += len as u64;
            self.segments.push_back(Segment::Mem(data));
            return Ok(());
        }
        let file = match &self.file {
            Some(f) => f,
            None => match self.tmp.as_deref().map(tmpfile) {
                Some(Ok(f)) => self.file.insert(f),
                Some(Err(e)) => {
                    self.file_failed = true;
                    tracing::error!("temporary file: {e}; holding bodies in memory");
                    return self.push(data);
                }
                None => unreachable!("can_spill() checked for a directory"),
            },
        };
        file.write_all_at(&data, self.file_end)?;
        let start = self.file_end;
        self.file_end += len as u64;
        self.unread += len as u64;
        match self.segments.back_mut() {
            Some(Segment::File { end, .. }) if *end == start => *end = self.file_end,
            _ => self.segments.push_back(Segment::File {
                start,
                end: self.file_end,
            }),
        }
        Ok(())
    }

    /// Takes the next piece, at most [`READ_CHUNK`] bytes when it comes
    /// from the file.
    pub fn pop(&mut self) -> io::Result<Option<Bytes>> {
        let Some(front) = self.segments.front_mut() else {
            return Ok(None);
        };
        let data = match front {
            Segment::Mem(_) => {
                let Some(Segment::Mem(data)) = self.segments.pop_front() else {
                    unreachable!("matched above")
                };
                self.mem -= data.len();
                self.reserved.release(data.len());
                data
            }
            Segment::File { start, end } => {
                let want = (*end - *start).min(READ_CHUNK as u64) as usize;
                let mut buf = vec![0u8; want];
                let file = self.file.as_ref().expect("a file segment has a file");
                file.read_exact_at(&mut buf, *start)?;
                *start += want as u64;
                if *start == *end {
                    self.segments.pop_front();
                }
                Bytes::from(buf)
            }
        };
        self.unread -= data.len() as u64;
        if self.segments.is_empty() && self.file_end > 0 {
            // All read: the file starts over (and gives its blocks back).
            if let Some(f) = &self.file {
                let _ = f.set_len(0);
            }
            self.file_end = 0;
        }
        Ok(Some(data))
    }
}

/// A new unlinked temporary file in `dir`, readable and writable by us only.
pub fn tmpfile(dir: &Path) -> io::Result<File> {
    let flags = OFlags::RDWR | OFlags::CLOEXEC;
    match rustix::fs::open(dir, flags | OFlags::TMPFILE, Mode::from_raw_mode(0o600)) {
        Ok(fd) => return Ok(File::from(fd)),
        // No O_TMPFILE on this file system (or kernel).
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR) => {}
        Err(e) => return Err(e.into()),
    }
    let dirfd = rustix::fs::open(
        dir,
        OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::PATH,
        Mode::empty(),
    )?;
    loop {
        let name = PathBuf::from(format!("spool-{:016x}", rand_u64()));
        match rustix::fs::openat(
            &dirfd,
            &name,
            flags | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => {
                rustix::fs::unlinkat(&dirfd, &name, rustix::fs::AtFlags::empty())?;
                return Ok(File::from(fd));
            }
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn rand_u64() -> u64 {
    let mut buf = [0u8; 8];
    // getrandom never fails for 8 bytes once the pool is initialised.
    let _ = rustix::rand::getrandom(&mut buf, rustix::rand::GetRandomFlags::empty());
    u64::from_ne_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(s: &mut Spool) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = s.pop().unwrap() {
            out.extend_from_slice(&b);
        }
        out
    }

    #[test]
    fn bytes_come_back_in_order_across_memory_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new(10, Some(Arc::from(dir.path())));
        let mut want = Vec::new();
        for i in 0..50u8 {
            let piece = vec![i; (i as usize % 7) + 1];
            want.extend_from_slice(&piece);
            s.push(Bytes::from(piece)).unwrap();
            assert!(s.in_memory() <= 10);
        }
        assert_eq!(s.unread(), want.len() as u64);
        assert_eq!(drain(&mut s), want);
        assert!(s.is_empty());
        // After draining, memory is used again first.
        s.push(Bytes::from_static(b"abc")).unwrap();
        assert_eq!(s.in_memory(), 3);
        assert_eq!(drain(&mut s), b"abc");
    }

    #[test]
    fn interleaved_pushes_and_pops_keep_the_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new(4, Some(Arc::from(dir.path())));
        let mut got = Vec::new();
        let mut want = Vec::new();
        for i in 0..200u32 {
            let piece = i.to_string().into_bytes();
            want.extend_from_slice(&piece);
            s.push(Bytes::from(piece)).unwrap();
            if i % 3 == 0 {
                got.extend_from_slice(&s.pop().unwrap().unwrap());
            }
        }
        got.extend(drain(&mut s));
        assert_eq!(got, want);
    }

    #[test]
    fn large_file_segments_come_back_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new(0, Some(Arc::from(dir.path())));
        let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        s.push(Bytes::from(big.clone())).unwrap();
        assert_eq!(s.in_memory(), 0);
        let first = s.pop().unwrap().unwrap();
        assert_eq!(first.len(), READ_CHUNK);
        let mut all = first.to_vec();
        all.extend(drain(&mut s));
        assert_eq!(all, big);
    }

    #[test]
    fn without_a_directory_memory_takes_it_all() {
        let mut s = Spool::new(4, None);
        assert!(!s.can_spill());
        s.push(Bytes::from_static(b"hello world")).unwrap();
        assert_eq!(s.in_memory(), 11);
        assert_eq!(drain(&mut s), b"hello world");
    }

    #[test]
    fn the_process_wide_budget_sends_bodies_to_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new(1 << 20, Some(Arc::from(dir.path())));
        s.push(Bytes::from(vec![1u8; 1000])).unwrap();
        assert_eq!(s.in_memory(), 1000);
        // No room left in the budget: the next bytes go to the file.
        set_memory_limit(0);
        s.push(Bytes::from(vec![2u8; 1000])).unwrap();
        assert!(!Reservation::default().try_add(1));
        set_memory_limit(256 << 20);
        assert_eq!(s.in_memory(), 1000);
        let mut all = drain(&mut s);
        assert_eq!(all.len(), 2000);
        all.dedup();
        assert_eq!(all, [1, 2]);
    }

    #[test]
    fn temporary_files_have_no_name() {
        let dir = tempfile::tempdir().unwrap();
        let f = tmpfile(dir.path()).unwrap();
        f.write_all_at(b"x", 0).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
