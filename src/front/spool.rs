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
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use rustix::fs::{Mode, OFlags};

/// Where temporary files go (`None`: memory only).
pub type TmpDir = Option<Arc<Path>>;

/// Largest piece read back from the file at once.
const READ_CHUNK: usize = 64 * 1024;

/// What all bodies held by this process may take together, and what one
/// client address may take of it. Each body's own limits (`request_buffer`,
/// `response_buffer`, `max_response_buffer`) are per body; these bound them
/// all together, so that many clients (an HTTP/2 connection alone opens 128
/// streams) cannot make berth hold gigabytes in memory, fill the disk or run
/// out of file descriptors:
/// - memory (`max_buffer_memory`): past it, bodies go to their files;
/// - temporary-file bytes (`max_buffer_disk`) and files open (a quarter of
///   the front end's `RLIMIT_NOFILE`): past them, a request body is refused
///   (503) and a response is read only as fast as its client takes it;
/// - one client address (an IPv4 address or IPv6 /64, as the connection caps
///   count them) may hold at most 1/[`PEER_SHARE`] of each, so it takes more
///   than one to crowd out the rest.
pub struct Budget {
    used: AtomicU64,
    limit: AtomicU64,
}

impl Budget {
    const fn new(limit: u64) -> Budget {
        Budget {
            used: AtomicU64::new(0),
            limit: AtomicU64::new(limit),
        }
    }

    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `n` if the total stays within `limit`.
    fn try_take(used: &AtomicU64, n: u64, limit: u64) -> bool {
        used.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
            u.checked_add(n).filter(|&t| t <= limit)
        })
        .is_ok()
    }
}

/// Body bytes in memory, process-wide (`max_buffer_memory`).
pub static MEMORY: Budget = Budget::new(256 << 20);
/// Bytes in temporary files, process-wide (`max_buffer_disk`).
pub static DISK: Budget = Budget::new(4 << 30);
/// Temporary files open, process-wide.
pub static FILES: Budget = Budget::new(1024);

/// One client address may hold at most this fraction of each budget.
pub const PEER_SHARE: u64 = 4;

/// What one client address holds (shared by its connections).
#[derive(Default, Debug)]
pub struct Peer {
    memory: AtomicU64,
    disk: AtomicU64,
    files: AtomicU64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Memory,
    Disk,
    Files,
}

impl Kind {
    fn global(self) -> &'static Budget {
        match self {
            Kind::Memory => &MEMORY,
            Kind::Disk => &DISK,
            Kind::Files => &FILES,
        }
    }

    fn of(self, peer: &Peer) -> &AtomicU64 {
        match self {
            Kind::Memory => &peer.memory,
            Kind::Disk => &peer.disk,
            Kind::Files => &peer.files,
        }
    }
}

/// A share of one budget (and of its client's part of it); given back when
/// dropped.
pub struct Reservation {
    kind: Kind,
    n: u64,
    peer: Option<Arc<Peer>>,
}

impl Reservation {
    /// Body bytes in memory, charged to `peer` too.
    pub fn memory(peer: Option<Arc<Peer>>) -> Reservation {
        Reservation::of(Kind::Memory, peer)
    }

    fn of(kind: Kind, peer: Option<Arc<Peer>>) -> Reservation {
        Reservation { kind, n: 0, peer }
    }

    /// Whether `n` more would fit now (nothing is taken).
    fn fits(&self, n: u64) -> bool {
        let global = self.kind.global();
        let limit = global.limit();
        global.used().saturating_add(n) <= limit
            && self.peer.as_deref().is_none_or(|p| {
                self.kind.of(p).load(Ordering::Relaxed).saturating_add(n) <= limit / PEER_SHARE
            })
    }

    /// Takes `n` more, if there is room process-wide and in the client's
    /// share.
    pub fn try_add(&mut self, n: usize) -> bool {
        let n = n as u64;
        let global = self.kind.global();
        let limit = global.limit();
        if !Budget::try_take(&global.used, n, limit) {
            return false;
        }
        if let Some(p) = &self.peer
            && !Budget::try_take(self.kind.of(p), n, limit / PEER_SHARE)
        {
            global.used.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        self.n += n;
        true
    }

    /// Takes `n` more whatever the limits (one piece past them, which the
    /// caller bounds).
    fn force_add(&mut self, n: usize) {
        let n = n as u64;
        self.kind.global().used.fetch_add(n, Ordering::AcqRel);
        if let Some(p) = &self.peer {
            self.kind.of(p).fetch_add(n, Ordering::AcqRel);
        }
        self.n += n;
    }

    /// Gives `n` back.
    pub fn release(&mut self, n: usize) {
        let n = (n as u64).min(self.n);
        self.kind.global().used.fetch_sub(n, Ordering::AcqRel);
        if let Some(p) = &self.peer {
            self.kind.of(p).fetch_sub(n, Ordering::AcqRel);
        }
        self.n -= n;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let n = self.n as usize;
        self.release(n);
    }
}

/// Why a spool took no more.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// No room: the memory, temporary-file or open-file budget is spent
    /// (process-wide, or this client's share), or no file could be made.
    #[error("no room for more body bytes: {0}")]
    Full(&'static str),
    #[error("temporary file: {0}")]
    Io(#[from] io::Error),
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
    /// Bytes in memory segments, and their share of the budget.
    mem: usize,
    reserved: Reservation,
    mem_limit: usize,
    tmp: TmpDir,
    file: Option<File>,
    /// The file's bytes on disk (up to `file_end`) and the file itself,
    /// counted against the budgets.
    disk: Reservation,
    file_slot: Reservation,
    /// Where the next byte goes in the file.
    file_end: u64,
    /// Bytes not taken yet, in memory and file.
    unread: u64,
}

impl Spool {
    /// An empty spool keeping up to `mem_limit` bytes in memory, the rest in
    /// a temporary file in `tmp`, charged to the process's budgets and to
    /// `peer`'s share of them.
    pub fn new(mem_limit: usize, tmp: TmpDir, peer: Option<Arc<Peer>>) -> Spool {
        Spool {
            segments: VecDeque::new(),
            mem: 0,
            reserved: Reservation::of(Kind::Memory, peer.clone()),
            mem_limit,
            tmp,
            file: None,
            disk: Reservation::of(Kind::Disk, peer.clone()),
            file_slot: Reservation::of(Kind::Files, peer),
            file_end: 0,
            unread: 0,
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

    /// Whether `n` more bytes would be taken now (in memory or the file),
    /// as far as the budgets go; nothing is reserved.
    pub fn has_room(&self, n: usize) -> bool {
        let file_waiting = matches!(self.segments.back(), Some(Segment::File { .. }));
        let memory =
            !file_waiting && self.mem + n <= self.mem_limit && self.reserved.fits(n as u64);
        let file = self.tmp.is_some()
            && self.disk.fits(n as u64)
            && (self.file.is_some() || self.file_slot.fits(1));
        memory || file
    }

    /// Appends `data`: in memory while it fits this spool's limit and the
    /// budgets (and nothing is waiting in the file, to keep the order), else
    /// to the file, while the budgets allow. [`SpoolError::Full`] when
    /// neither can take it: a body over the budgets is refused, never held
    /// in memory instead.
    pub fn push(&mut self, data: Bytes) -> Result<(), SpoolError> {
        if data.is_empty() {
            return Ok(());
        }
        if self.try_memory(&data) {
            self.push_memory(data);
            return Ok(());
        }
        if self.tmp.is_none() {
            return Err(SpoolError::Full("memory"));
        }
        self.reserve_file(data.len())?;
        self.write_file(data)
    }

    /// Appends `data` whatever the budgets (one piece past them: a
    /// response's pump, which asked [`Spool::has_room`] before reading it):
    /// where [`Spool::push`] would put it, else in memory, or in the file
    /// when something waits there (to keep the order).
    pub fn push_anyway(&mut self, data: Bytes) -> Result<(), SpoolError> {
        if data.is_empty() {
            return Ok(());
        }
        if self.try_memory(&data) {
            self.push_memory(data);
            return Ok(());
        }
        if self.tmp.is_some() && self.reserve_file(data.len()).is_ok() {
            return self.write_file(data);
        }
        if matches!(self.segments.back(), Some(Segment::File { .. })) {
            self.disk.force_add(data.len());
            return self.write_file(data);
        }
        self.reserved.force_add(data.len());
        self.push_memory(data);
        Ok(())
    }

    /// Whether `data` may go to memory (this spool's limit and the memory
    /// budgets, nothing waiting in the file before it); reserves it if so.
    fn try_memory(&mut self, data: &Bytes) -> bool {
        let file_waiting = matches!(self.segments.back(), Some(Segment::File { .. }));
        !file_waiting
            && self.mem + data.len() <= self.mem_limit
            && self.reserved.try_add(data.len())
    }

    fn push_memory(&mut self, data: Bytes) {
        self.mem += data.len();
        self.unread += data.len() as u64;
        self.segments.push_back(Segment::Mem(data));
    }

    /// Reserves `len` bytes of the disk budgets, and makes the file if
    /// there is none yet (within the open-files budgets); nothing is kept
    /// reserved when it fails.
    fn reserve_file(&mut self, len: usize) -> Result<(), SpoolError> {
        if !self.disk.try_add(len) {
            return Err(SpoolError::Full("temporary files"));
        }
        if self.file.is_none() {
            if !self.file_slot.try_add(1) {
                self.disk.release(len);
                return Err(SpoolError::Full("open temporary files"));
            }
            let dir = self.tmp.as_deref().expect("checked by the caller");
            match tmpfile(dir) {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    self.disk.release(len);
                    self.file_slot.release(1);
                    tracing::warn!("temporary file in {}: {e}", dir.display());
                    return Err(SpoolError::Full("a temporary file could not be made"));
                }
            }
        }
        Ok(())
    }

    /// Writes `data` at the end of the file (its bytes reserved already).
    fn write_file(&mut self, data: Bytes) -> Result<(), SpoolError> {
        let len = data.len();
        let file = self.file.as_ref().expect("a file was made");
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
            self.disk.release(self.file_end as usize);
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
        let mut s = Spool::new(10, Some(Arc::from(dir.path())), None);
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
        let mut s = Spool::new(4, Some(Arc::from(dir.path())), None);
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
        let mut s = Spool::new(0, Some(Arc::from(dir.path())), None);
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
    fn without_a_directory_a_body_past_its_memory_is_refused() {
        let mut s = Spool::new(4, None, None);
        s.push(Bytes::from_static(b"abc")).unwrap();
        assert!(matches!(
            s.push(Bytes::from_static(b"hello")),
            Err(SpoolError::Full(_))
        ));
        // A pump may put one piece past it.
        s.push_anyway(Bytes::from_static(b"hello")).unwrap();
        assert_eq!(drain(&mut s), b"abchello");
    }

    /// A client address that holds `memory`, `disk` and `files` already.
    fn client(memory: u64, disk: u64, files: u64) -> Arc<Peer> {
        Arc::new(Peer {
            memory: AtomicU64::new(memory),
            disk: AtomicU64::new(disk),
            files: AtomicU64::new(files),
        })
    }

    #[test]
    fn a_clients_share_sends_its_bodies_to_files_then_refuses_them() {
        // (The client's counters start full; the process-wide budgets, which
        // other tests share, are not touched.)
        let dir = tempfile::tempdir().unwrap();
        let memory_share = MEMORY.limit() / PEER_SHARE;
        let peer = client(memory_share, 0, 0);
        let mut s = Spool::new(1 << 20, Some(Arc::from(dir.path())), Some(peer.clone()));
        assert!(s.has_room(1000));
        s.push(Bytes::from(vec![1u8; 1000])).unwrap();
        assert_eq!(s.in_memory(), 0, "its memory share is spent: the file");
        assert_eq!(peer.disk.load(Ordering::Relaxed), 1000);
        assert_eq!(peer.files.load(Ordering::Relaxed), 1);
        // Its disk share spent too: refused, not held in memory instead.
        peer.disk
            .fetch_add(DISK.limit() / PEER_SHARE, Ordering::Relaxed);
        assert!(!s.has_room(1000));
        assert!(matches!(
            s.push(Bytes::from(vec![2u8; 1000])),
            Err(SpoolError::Full(_))
        ));
        peer.disk
            .fetch_sub(DISK.limit() / PEER_SHARE, Ordering::Relaxed);
        assert_eq!(drain(&mut s), vec![1u8; 1000]);
        assert_eq!(peer.disk.load(Ordering::Relaxed), 0, "given back once read");
        drop(s);
        assert_eq!(peer.files.load(Ordering::Relaxed), 0);
        assert_eq!(peer.memory.load(Ordering::Relaxed), memory_share);
    }

    #[test]
    fn a_client_at_its_share_of_open_files_gets_no_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let memory_share = MEMORY.limit() / PEER_SHARE;
        let files_share = FILES.limit() / PEER_SHARE;
        let peer = client(memory_share, 0, files_share);
        let mut s = Spool::new(0, Some(Arc::from(dir.path())), Some(peer.clone()));
        assert!(matches!(
            s.push(Bytes::from_static(b"x")),
            Err(SpoolError::Full(_))
        ));
        assert_eq!(peer.disk.load(Ordering::Relaxed), 0, "nothing kept of it");
    }

    #[test]
    fn temporary_files_have_no_name() {
        let dir = tempfile::tempdir().unwrap();
        let f = tmpfile(dir.path()).unwrap();
        f.write_all_at(b"x", 0).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
