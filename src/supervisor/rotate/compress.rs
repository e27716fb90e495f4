//! The compressor: a thread of its own (at a lower priority) that gzips the
//! old files of a log once a rotation has moved them to `.2` and beyond,
//! never on the supervisor's loop.
//!
//! A file is compressed only once no process has it open for writing
//! ([`crate::sys::has_writers`]): the front end writes a request's line to
//! the file that was current when its response began, so a long download
//! can add a line to a file rotated long ago, and such a line must not go
//! to a file already compressed and unlinked. A file still open is tried
//! again every [`RETRY`]. The gzip is written beside it (a dot-name berth
//! creates `O_EXCL`), synced, given the original's owner, group, mode and
//! times, and put in place under the rotation's lock: the loop never
//! renames while a finished file is put in place, so the compressor finds
//! where its file went (by inode: rotations may have shifted it meanwhile,
//! or removed it) and renames the gzip next to it, never over anything,
//! then unlinks the plain file.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use tracing::{debug, error, warn};

use super::plan::Old;
use super::{old_files, rename};

/// A file still open for writing is looked at again after this.
const RETRY: Duration = Duration::from_secs(5);
/// Where leases cannot tell whether a file is still written, it is
/// compressed once it has not been written to for this long.
const QUIET: Duration = Duration::from_secs(300);
/// The compressor's nice value: compressing waits for requests.
const NICE: i32 = 10;

/// The old files of one log to compress: those of `base` in `dir`.
pub struct Job {
    /// The log's directory (`O_PATH`, a copy of the supervisor's).
    pub dir: OwnedFd,
    /// For messages.
    pub path: PathBuf,
    pub base: &'static str,
}

/// The supervisor's handle on the compressor thread (which ends when this
/// is dropped).
pub struct Compressor {
    tx: mpsc::Sender<Job>,
}

impl Compressor {
    /// Starts the thread; `lock` is the rotation's.
    pub fn start(lock: Arc<Mutex<()>>) -> io::Result<Compressor> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("log-compress".into())
            .spawn(move || run(&rx, &lock))?;
        Ok(Compressor { tx })
    }

    /// Queues `job`; never waits.
    pub fn queue(&self, job: Job) {
        let _ = self.tx.send(job);
    }
}

/// The thread: jobs by log (a newer job for the same log replaces the one
/// waiting), each run when due, again after [`RETRY`] while a file is busy.
fn run(rx: &mpsc::Receiver<Job>, lock: &Mutex<()>) {
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), NICE);
    let mut pending: HashMap<(PathBuf, &'static str), (Job, Instant)> = HashMap::new();
    loop {
        let next = pending.values().map(|(_, at)| *at).min();
        let got = match next {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
        };
        let mut add = |job: Job| {
            pending.insert((job.path.clone(), job.base), (job, Instant::now()));
        };
        match got {
            Ok(job) => add(job),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while let Ok(job) = rx.try_recv() {
            add(job);
        }
        let now = Instant::now();
        pending.retain(|_, (job, at)| {
            if *at > now {
                return true;
            }
            if compress_log(job, lock) {
                *at = Instant::now() + RETRY;
                true
            } else {
                false
            }
        });
    }
}

/// What became of one file.
enum Outcome {
    Done,
    /// Still open for writing somewhere: later.
    Busy,
    /// Gone (rotated out meanwhile).
    Gone,
}

/// Compresses every plain old file of the job's log numbered 2 or more.
/// Returns whether to try again later (a file was still being written).
pub(super) fn compress_log(job: &Job, lock: &Mutex<()>) -> bool {
    let found = match old_files(&job.dir, &job.path, job.base) {
        Ok(found) => found,
        Err(why) => {
            warn!("log compression: {why}");
            return false;
        }
    };
    let mut again = false;
    for (old, st) in found.into_iter().filter(|(o, _)| !o.gz && o.n >= 2) {
        match compress_one(job, old, &st, lock) {
            Ok(Outcome::Busy) => again = true,
            Ok(Outcome::Done | Outcome::Gone) => {}
            Err(why) => error!("log compression: {why}"),
        }
    }
    again
}

fn locked(lock: &Mutex<()>) -> MutexGuard<'_, ()> {
    // (It guards no data.)
    lock.lock().unwrap_or_else(|e| e.into_inner())
}

/// Compresses `old` (as the directory listing saw it: `seen`) into
/// `old.N.gz`, then unlinks it.
fn compress_one(
    job: &Job,
    old: Old,
    seen: &rustix::fs::Stat,
    lock: &Mutex<()>,
) -> Result<Outcome, String> {
    let name = old.name(job.base);
    let path = |name: &str| job.path.join(name).display().to_string();
    let at = |e: rustix::io::Errno| format!("{}: {e}", path(&name));
    let src = match rustix::fs::openat(
        &job.dir,
        &name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(Outcome::Gone),
        Err(e) => return Err(at(e)),
    };
    let st = rustix::fs::fstat(&src).map_err(at)?;
    let me = rustix::process::geteuid().as_raw();
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
        || st.st_nlink != 1
        || st.st_uid != me
        || (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino)
    {
        // Changed since it was listed: the next rotation looks again.
        return Ok(Outcome::Gone);
    }
    if still_written(&src, &st, &name) {
        debug!(
            "log compression: {} is still open for writing; later",
            path(&name)
        );
        return Ok(Outcome::Busy);
    }
    let tmp = format!(".{}.gz.tmp", job.base);
    let written = write_gzip(job, &tmp, File::from(src), &st);
    if let Err(e) = written {
        let _ = rustix::fs::unlinkat(&job.dir, &tmp, AtFlags::empty());
        return Err(format!("{} into {}: {e}", path(&name), path(&tmp)));
    }
    let _finishing = locked(lock);
    // Where is it now? (A rotation may have shifted it up, or removed it.)
    let now = match old_files(&job.dir, &job.path, job.base) {
        Ok(found) => found
            .into_iter()
            .find(|(o, s)| !o.gz && (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino))
            .map(|(o, _)| o),
        Err(why) => {
            let _ = rustix::fs::unlinkat(&job.dir, &tmp, AtFlags::empty());
            return Err(why);
        }
    };
    let Some(now) = now else {
        let _ = rustix::fs::unlinkat(&job.dir, &tmp, AtFlags::empty());
        return Ok(Outcome::Gone);
    };
    let plain = now.name(job.base);
    let gz = Old { gz: true, ..now }.name(job.base);
    if let Err(e) = rename(&job.dir, &tmp, &gz) {
        let _ = rustix::fs::unlinkat(&job.dir, &tmp, AtFlags::empty());
        return Err(format!(
            "cannot put {} in place: {e}; {} stays plain",
            path(&gz),
            path(&plain)
        ));
    }
    rustix::fs::unlinkat(&job.dir, &plain, AtFlags::empty())
        .map_err(|e| format!("{}: {e}", path(&plain)))?;
    Ok(Outcome::Done)
}

/// Whether some process may still write to `src` (of `name`).
fn still_written(src: &OwnedFd, st: &rustix::fs::Stat, name: &str) -> bool {
    match crate::sys::has_writers(src.as_fd()) {
        Ok(busy) => busy,
        Err(e) => {
            static SAID: AtomicBool = AtomicBool::new(false);
            if !SAID.swap(true, Ordering::Relaxed) {
                warn!(
                    "log compression: cannot tell whether {name} is still written ({e}: file leases are off?); old logs are compressed once not written to for {} minutes",
                    QUIET.as_secs() / 60
                );
            }
            let mtime = SystemTime::UNIX_EPOCH
                + Duration::from_secs(u64::try_from(st.st_mtime).unwrap_or(0));
            mtime.elapsed().map_or(true, |quiet| quiet < QUIET)
        }
    }
}

/// Writes `src` gzipped to `tmp` in the job's directory (created
/// `O_EXCL`, a leftover of an earlier run removed first), with `st`'s
/// owner, group, mode and times, synced.
fn write_gzip(job: &Job, tmp: &str, mut src: File, st: &rustix::fs::Stat) -> io::Result<()> {
    match rustix::fs::unlinkat(&job.dir, tmp, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let out = rustix::fs::openat(
        &job.dir,
        tmp,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    rustix::fs::fchown(
        &out,
        Some(rustix::fs::Uid::from_raw(st.st_uid)),
        Some(rustix::fs::Gid::from_raw(st.st_gid)),
    )?;
    rustix::fs::fchmod(&out, Mode::from_raw_mode(st.st_mode & 0o777))?;
    let out = File::from(out);
    let mut gz = flate2::GzBuilder::new()
        .mtime(u32::try_from(st.st_mtime).unwrap_or(0))
        .write(
            io::BufWriter::with_capacity(64 << 10, &out),
            flate2::Compression::default(),
        );
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => gz.write_all(&buf[..n])?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    gz.finish()?.flush()?;
    out.sync_all()?;
    let times = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: st.st_atime as _,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: st.st_mtime as _,
            tv_nsec: st.st_mtime_nsec as _,
        },
    };
    rustix::fs::futimens(&out, &times)?;
    Ok(())
}
