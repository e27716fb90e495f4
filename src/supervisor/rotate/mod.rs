//! Built-in log rotation (`[server] log_rotate`, `log_keep`): every tenant's
//! `access.log` and `error.log`, berth's own `error.log` and the control
//! socket's `audit.log`, rotated by the
//! supervisor on its loop's one-second tick ([`Supervisor::rotate_logs`]).
//!
//! What is due:
//! - by size: each tick `fstat`s a share of the open log files (all of them
//!   within [`SIZE_ROUND`] seconds: a few thousand `fstat`s a second at
//!   10,000 tenants, never a check per line), and a file at its threshold
//!   is due. A tenant's `error.log` is due at the smaller of the size and
//!   its `error_log_max`, so a capped log rotates rather than staying full.
//! - by time: at local midnight (`"daily"`), or the one that begins a
//!   Monday (`"weekly"`), every log that is not empty is due
//!   ([`plan::next_turn`]; the zone is the system's, or `TZ`'s).
//!
//! A flood cannot make berth rotate in a loop: a log is looked at once per
//! round and rotated only once it holds its threshold, so each log rotates
//! at most once a second (and only as often as its writers fill the
//! threshold); each tick rotates for at most [`TICK_BUDGET`], and all that
//! rotated in a tick reach the front end in one `ToFront::Logs`.
//!
//! A rotation ([`rotate_one`]) works in the log's directory through the fd
//! the supervisor holds (`SafeDir`), never by path: the old files are shifted
//! by [`plan::plan`] with `renameat2(RENAME_NOREPLACE)` (nothing is ever
//! renamed over), the oldest are unlinked, the current file becomes `.1` and
//! a new one is created `O_CREAT | O_EXCL | O_NOFOLLOW`, root's with the
//! tenant's group, 0640. Anything in the way that berth did not put there
//! (a symlink, a file with another link or owner, a directory, a device) is
//! not touched: that log is not rotated, the reason is logged, and it is
//! tried again after [`HOLD`]. The tenants' log directories are root's, with
//! the tenant's group, 0750 ([`restrict`]): the tenant reads its logs and
//! cannot put anything there; other tenants cannot even list them.
//!
//! Then the writers switch ([`Supervisor::hand_over`], as SIGUSR1 does): the
//! supervisor's own writers at once, the front end when it reads the new
//! fds. Until then, and for a request whose response began before, lines go
//! to `.1`, which stays plain; [`compress`] gzips the older ones on a thread
//! of its own, each only once no process has it open for writing.
//!
//! Disk use per log is bounded by (`log_keep` + 1) × its threshold (plus
//! what writers add in the second before the check), before compression;
//! with `"daily"` or `"weekly"` alone, an access log is bounded only by a
//! day's or a week's traffic.

mod compress;
mod plan;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use tracing::{error, info};

use super::{Logs, SafeDir, Supervisor, dup_all};
use crate::config::LogRotation;
use crate::ipc::ToFront;
use plan::{Old, Step};

/// Every open log file's size is looked at within this many ticks (seconds).
const SIZE_ROUND: usize = 5;
/// ... but each tick looks at this many at least (all of them, on a host of
/// a hundred tenants or so: every second).
const MIN_CHECKS_PER_TICK: usize = 256;
/// The most time one tick spends rotating; what is left is rotated on the
/// next ticks. A log with 14 old files takes about 0.3 ms (ext4): at
/// midnight 1,000 busy tenants' logs are rotated within some 12 s, 10,000's
/// within two minutes (idle tenants' empty logs cost an `fstat`).
const TICK_BUDGET: Duration = Duration::from_millis(50);
/// A log whose rotation was refused is left alone this long.
const HOLD: Duration = Duration::from_secs(600);
/// More names than this in a line saying what rotated are counted, not named.
const NAMES_SAID: usize = 5;

/// Which log: a tenant's (by name) or berth's own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Access(String),
    Error(String),
    Berth,
    /// `log_dir/audit.log`: a line per control request.
    Audit,
}

impl Key {
    /// The file name in its directory.
    fn base(&self) -> &'static str {
        match self {
            Key::Access(_) => "access.log",
            Key::Error(_) | Key::Berth => "error.log",
            Key::Audit => "audit.log",
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Access(t) | Key::Error(t) => write!(f, "{t}/{}", self.base()),
            Key::Berth | Key::Audit => f.write_str(self.base()),
        }
    }
}

/// The rotation's state in the supervisor: what is due, what is held back,
/// when the next daily or weekly turn comes, and the compressor.
#[derive(Default)]
pub(super) struct Rotation {
    /// Where the staggered size checks go on from.
    cursor: usize,
    /// The period and instant of the next time-based rotation.
    turn: Option<(crate::config::Period, jiff::Timestamp)>,
    /// Logs to rotate, in order, without repeats.
    due: VecDeque<Key>,
    queued: HashSet<Key>,
    /// Logs whose rotation was refused, until when.
    held: HashMap<Key, Instant>,
    /// Held by the compressor while it puts a finished file in place, and
    /// by the loop while it renames: one never sees the other half-way.
    /// The loop only tries it (a tick that finds it taken rotates on the
    /// next one).
    lock: Arc<Mutex<()>>,
    compressor: Option<compress::Compressor>,
}

impl Rotation {
    /// Marks `key` due (once).
    fn push(&mut self, key: Key) {
        if self.queued.insert(key.clone()) {
            self.due.push_back(key);
        }
    }

    /// Time and size: pushes what is due now.
    fn find_due(&mut self, logs: &Logs, policy: &LogRotation, now: Instant) {
        self.held.retain(|_, until| *until > now);
        match policy.every {
            Some(period) => {
                let zoned = jiff::ZonedDateTime::now();
                let at = zoned.timestamp();
                match self.turn {
                    Some((p, turn)) if p == period && turn <= at => {
                        info!(
                            "log rotation: {} turn ({zoned})",
                            match period {
                                crate::config::Period::Daily => "daily",
                                crate::config::Period::Weekly => "weekly",
                            }
                        );
                        for key in all_keys(logs) {
                            if !self.held.contains_key(&key) {
                                self.push(key);
                            }
                        }
                        self.turn = Some((period, plan::next_turn(&zoned, period).timestamp()));
                    }
                    // Still to come (and not more than a week and a day
                    // away: else the clock was set back, and it is
                    // computed again).
                    Some((p, turn))
                        if p == period && turn.as_second() - at.as_second() <= 8 * 86_400 => {}
                    _ => self.turn = Some((period, plan::next_turn(&zoned, period).timestamp())),
                }
            }
            None => self.turn = None,
        }
        let Some(size) = policy.size else {
            return;
        };
        // 0: berth's error.log, 1: audit.log, then each tenant's two.
        let total = 2 * logs.tenants.len() + 2;
        let per_tick = total
            .div_ceil(SIZE_ROUND)
            .max(MIN_CHECKS_PER_TICK)
            .min(total);
        for _ in 0..per_tick {
            self.cursor = (self.cursor + 1) % total;
            let (fd, threshold) = match self.cursor {
                0 => (&logs.error, size),
                1 => (&logs.audit, size),
                k if k % 2 == 0 => (&logs.access[k / 2 - 1], size),
                k => (
                    &logs.errors[k / 2 - 1],
                    error_threshold(size, &logs.limits[k / 2 - 1]),
                ),
            };
            let Ok(st) = rustix::fs::fstat(fd) else {
                continue;
            };
            if u64::try_from(st.st_size).unwrap_or(0) < threshold {
                continue;
            }
            let key = match self.cursor {
                0 => Key::Berth,
                1 => Key::Audit,
                k if k % 2 == 0 => Key::Access(logs.tenants[k / 2 - 1].clone()),
                k => Key::Error(logs.tenants[k / 2 - 1].clone()),
            };
            if !self.held.contains_key(&key) {
                self.push(key);
            }
        }
    }

    /// Rotates what is due, for at most [`TICK_BUDGET`]. Returns the logs
    /// rotated (their new files now in `logs`), with their tenant's index.
    fn rotate_due(&mut self, logs: &mut Logs, keep: u32, root: bool) -> Vec<(Key, Option<usize>)> {
        let lock = self.lock.clone();
        let _finishing = match lock.try_lock() {
            Ok(guard) => guard,
            // (The lock guards no data: a panic while holding it left
            // nothing half-done that matters here.)
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Vec::new(),
        };
        let started = Instant::now();
        let index: HashMap<&str, usize> = logs
            .tenants
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        let mut rotated = Vec::new();
        while let Some(key) = self.due.pop_front() {
            self.queued.remove(&key);
            let (tenant, dir, current) = match &key {
                Key::Berth => (None, &logs.dir, &mut logs.error),
                Key::Audit => (None, &logs.dir, &mut logs.audit),
                Key::Access(t) | Key::Error(t) => {
                    // (A reload may have removed the tenant since.)
                    let Some(&i) = index.get(t.as_str()) else {
                        continue;
                    };
                    match key {
                        Key::Access(_) => (Some(i), &logs.dirs[i], &mut logs.access[i]),
                        _ => (Some(i), &logs.dirs[i], &mut logs.errors[i]),
                    }
                }
            };
            match rotate_one(dir, key.base(), keep, current, root) {
                Ok(Some(new)) => {
                    *current = new;
                    if keep >= 2 {
                        self.compress(dir, key.base());
                    }
                    rotated.push((key, tenant));
                }
                Ok(None) => {}
                Err(why) => {
                    error!(
                        "log rotation: {why}; {key} is not rotated (tried again in {} minutes)",
                        HOLD.as_secs() / 60
                    );
                    self.held.insert(key, Instant::now() + HOLD);
                }
            }
            if started.elapsed() >= TICK_BUDGET {
                break;
            }
        }
        rotated
    }

    /// Hands the old files of `base` in `dir` to the compressor (started
    /// on first use).
    fn compress(&mut self, dir: &SafeDir, base: &'static str) {
        let fd = match dir.fd.try_clone() {
            Ok(fd) => fd,
            Err(e) => {
                error!("log rotation: {}: {e}", dir.path.display());
                return;
            }
        };
        if self.compressor.is_none() {
            match compress::Compressor::start(self.lock.clone()) {
                Ok(c) => self.compressor = Some(c),
                Err(e) => {
                    error!("log rotation: cannot start the compressor: {e}; old logs stay plain");
                    return;
                }
            }
        }
        if let Some(c) = &self.compressor {
            c.queue(compress::Job {
                dir: fd,
                path: dir.path.clone(),
                base,
            });
        }
    }
}

/// How far short of `error_log_max` a full tenant error log may have
/// stopped: its writer writes whole lines up to the cap, then its notice, so
/// the line that did not fit (at most [`crate::tenant_log::MAX_LINE`]
/// bytes, each escaped to at most four) and the notice and stamps. Less
/// than the smallest `error_log_max` (64 KiB).
const FULL_MARGIN: u64 = 4 * crate::tenant_log::MAX_LINE as u64 + 4096;

/// The size at which a tenant's error log is due: the size `log_rotate`
/// gives, or sooner, once it may be full (within [`FULL_MARGIN`] of its
/// `error_log_max`), so that a capped log rotates instead of dropping lines
/// until the next day.
fn error_threshold(size: u64, limits: &crate::config::ErrorLogLimits) -> u64 {
    size.min(limits.max.saturating_sub(FULL_MARGIN).max(1))
}

/// Every log of `logs`: each tenant's two, then berth's own.
fn all_keys(logs: &Logs) -> Vec<Key> {
    let mut keys: Vec<Key> = logs
        .tenants
        .iter()
        .flat_map(|t| [Key::Access(t.clone()), Key::Error(t.clone())])
        .collect();
    keys.push(Key::Berth);
    keys.push(Key::Audit);
    keys
}

impl Supervisor {
    /// On each tick of the loop: rotates what is due (see the module's
    /// doc) and hands the new files to their writers.
    pub(super) fn rotate_logs(&mut self, logs: &mut Logs) {
        let policy = self.config.server.log_rotation;
        if policy.off() {
            // (A reload turned it off: nothing stays due.)
            self.rotation.turn = None;
            self.rotation.due.clear();
            self.rotation.queued.clear();
            return;
        }
        self.rotation.find_due(logs, &policy, Instant::now());
        if self.rotation.due.is_empty() {
            return;
        }
        let rotated = self.rotation.rotate_due(logs, policy.keep, self.root);
        if rotated.is_empty() {
            return;
        }
        self.hand_over(logs, &rotated);
        let mut names: Vec<String> = rotated
            .iter()
            .take(NAMES_SAID)
            .map(|(key, _)| key.to_string())
            .collect();
        if rotated.len() > NAMES_SAID {
            names.push(format!("and {} more", rotated.len() - NAMES_SAID));
        }
        info!("log rotated: {}", names.join(", "));
    }

    /// The new files in `logs` go to their writers: the tenants' error logs
    /// and berth's own in this process at once, every log to the front end
    /// (`ToFront::Logs`, as for SIGUSR1: those that did not rotate are the
    /// same files again).
    fn hand_over(&mut self, logs: &Logs, rotated: &[(Key, Option<usize>)]) {
        for (key, tenant) in rotated {
            match (key, tenant) {
                (Key::Error(t), Some(i)) => match logs.errors[*i].try_clone() {
                    Ok(fd) => {
                        crate::tenant_log::open(t, File::from(fd), None);
                    }
                    Err(e) => error!("log rotation: {key}: {e}"),
                },
                (Key::Berth, _) => match logs.error.try_clone() {
                    Ok(fd) => crate::logging::set_file(File::from(fd)),
                    Err(e) => error!("log rotation: {key}: {e}"),
                },
                (Key::Audit, _) => {
                    if let Err(e) = self.use_audit(logs) {
                        error!("log rotation: {key}: {e}");
                    }
                }
                _ => {}
            }
        }
        match dup_all(&logs.fds()) {
            Ok(fds) => {
                let msg = ToFront::Logs {
                    tenants: logs.tenants.clone(),
                };
                self.front.tell(&msg, fds);
            }
            Err(e) => error!("cannot pass rotated logs to the front end: {e}"),
        }
    }
}

/// Makes a tenant's log directory root's (berth's, when not root), with
/// the tenant's `group`, 0750: the tenant may list and read its logs and
/// write nothing there; other users may not enter.
pub(super) fn restrict(dir: &SafeDir, group: Option<u32>) -> Result<(), super::Error> {
    let fail = |e: rustix::io::Errno| super::Error::Dir {
        path: dir.path.clone(),
        why: e.to_string(),
    };
    // (An O_PATH fd cannot be chowned: "." of it, never a symlink, is opened.)
    let opened = rustix::fs::openat(
        &dir.fd,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail)?;
    if let Some(gid) = group {
        rustix::fs::fchown(
            &opened,
            Some(rustix::fs::Uid::ROOT),
            Some(rustix::fs::Gid::from_raw(gid)),
        )
        .map_err(fail)?;
    }
    rustix::fs::fchmod(&opened, Mode::from_raw_mode(0o750)).map_err(fail)
}

/// What a name in a log directory is, looked at without following it:
/// `Ok` for a regular file of ours with one link (its inode), else what it
/// is instead.
fn what_is(dir: &OwnedFd, name: &str) -> rustix::io::Result<Result<rustix::fs::Stat, String>> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    let me = rustix::process::geteuid().as_raw();
    Ok(match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile if st.st_nlink != 1 => {
            Err(format!("a file with {} hard links", st.st_nlink))
        }
        FileType::RegularFile if st.st_uid != me => {
            Err(format!("owned by uid {}, not berth's ({me})", st.st_uid))
        }
        FileType::RegularFile => Ok(st),
        FileType::Symlink => Err("a symbolic link".into()),
        FileType::Directory => Err("a directory".into()),
        other => Err(format!("not a regular file ({other:?})")),
    })
}

/// The old files of `base` in `dir` (by reading the directory), each
/// checked by [`what_is`]: Err names the first that is not a plain file of
/// berth's.
fn old_files(
    dir: &OwnedFd,
    path: &std::path::Path,
    base: &str,
) -> Result<Vec<(Old, rustix::fs::Stat)>, String> {
    let at = |e: rustix::io::Errno| format!("{}: {e}", path.display());
    let listing = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(at)?;
    let mut found = Vec::new();
    for entry in rustix::fs::Dir::new(listing).map_err(at)? {
        let entry = entry.map_err(at)?;
        let Ok(name) = entry.file_name().to_str() else {
            continue;
        };
        let Some(old) = Old::parse(base, name) else {
            continue;
        };
        match what_is(dir, name) {
            Ok(Ok(st)) => found.push((old, st)),
            // Gone meanwhile (the compressor finished it).
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(format!("{}: {e}", path.join(name).display())),
            Ok(Err(what)) => {
                return Err(format!(
                    "{} is {what}, not a log file berth made; refusing to touch it",
                    path.join(name).display()
                ));
            }
        }
    }
    found.sort_by_key(|(old, _)| *old);
    Ok(found)
}

/// Renames `from` to `to` in `dir`, never over an existing `to`.
fn rename(dir: &OwnedFd, from: &str, to: &str) -> rustix::io::Result<()> {
    use rustix::fs::RenameFlags;
    match rustix::fs::renameat_with(dir, from, dir, to, RenameFlags::NOREPLACE) {
        // A file system without RENAME_NOREPLACE: look first (the directory
        // is berth's alone, so nothing comes in between).
        Err(rustix::io::Errno::INVAL) => {
            match rustix::fs::statat(dir, to, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(_) => Err(rustix::io::Errno::EXIST),
                Err(rustix::io::Errno::NOENT) => rustix::fs::renameat(dir, from, dir, to),
                Err(e) => Err(e),
            }
        }
        other => other,
    }
}

/// Rotates the log `base` in `dir`, whose file being written is `current`:
/// the old files move up ([`plan::plan`]), `base` becomes `base.1`, and a
/// new `base` is created and returned. `Ok(None)` when `current` is empty
/// (an idle tenant's log is not rotated into empty files). Err: why not;
/// nothing was lost (a rotation that stopped half-way goes on next time).
fn rotate_one(
    dir: &SafeDir,
    base: &str,
    keep: u32,
    current: &OwnedFd,
    root: bool,
) -> Result<Option<OwnedFd>, String> {
    let path = |name: &str| dir.path.join(name).display().to_string();
    let st = rustix::fs::fstat(current).map_err(|e| format!("{}: {e}", path(base)))?;
    if st.st_size == 0 {
        return Ok(None);
    }
    let found = old_files(&dir.fd, &dir.path, base)?;
    let has_current = match what_is(&dir.fd, base) {
        Ok(Ok(_)) => true,
        Err(rustix::io::Errno::NOENT) => false,
        Err(e) => return Err(format!("{}: {e}", path(base))),
        Ok(Err(what)) => {
            return Err(format!(
                "{} is {what}, not a log file berth made; refusing to touch it",
                path(base)
            ));
        }
    };
    let olds: Vec<Old> = found.iter().map(|(old, _)| *old).collect();
    for step in plan::plan(&olds, keep, has_current) {
        let (from, result) = match step {
            Step::Remove(old) => {
                let name = old.name(base);
                let r = rustix::fs::unlinkat(&dir.fd, &name, AtFlags::empty());
                (name, r)
            }
            Step::Shift(old) => {
                let (name, to) = (
                    old.name(base),
                    Old {
                        n: old.n + 1,
                        ..old
                    }
                    .name(base),
                );
                let r = rename(&dir.fd, &name, &to);
                (name, r)
            }
            Step::Current => {
                let to = Old { n: 1, gz: false }.name(base);
                (base.to_string(), rename(&dir.fd, base, &to))
            }
        };
        result.map_err(|e| format!("{}: {e} ({step:?})", path(&from)))?;
    }
    let new = rustix::fs::openat(
        &dir.fd,
        base,
        OFlags::WRONLY
            | OFlags::APPEND
            | OFlags::CREATE
            | OFlags::EXCL
            | OFlags::NOFOLLOW
            | OFlags::CLOEXEC
            | OFlags::NOCTTY,
        Mode::from_raw_mode(0o640),
    )
    .map_err(|e| format!("cannot create {}: {e}", path(base)))?;
    let fail = |e: rustix::io::Errno| format!("{}: {e}", path(base));
    if root {
        // The group of the file it replaces: the tenant's (open_logs gave it).
        rustix::fs::fchown(
            &new,
            Some(rustix::fs::Uid::ROOT),
            Some(rustix::fs::Gid::from_raw(st.st_gid)),
        )
        .map_err(fail)?;
    }
    // The mode of the file it replaces (0640 for a tenant's log, 0600 for
    // the audit log without admin_group), never more than 0640.
    let mode = st.st_mode & 0o640;
    rustix::fs::fchmod(&new, Mode::from_raw_mode(mode)).map_err(fail)?;
    Ok(Some(new))
}

#[cfg(test)]
mod tests;
