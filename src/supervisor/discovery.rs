//! The discovery watcher: sees host directories appear, move and go under
//! `[discovery] root` (and `public/` and `berth.toml` come and go in them),
//! and asks the supervisor's loop for the reload SIGHUP would do.
//!
//! It runs on a thread of its own, never on the loop: inotify on the root
//! (entries created, removed, renamed, chowned) and on each host directory
//! (`public/` made, `berth.toml` written), events gathered until
//! [`QUIET`] passes without one (at most [`MAX_WAIT`] after the first), then
//! a [`scan`] (a `readdir` and a few `lstat`s per entry). Only a scan that
//! differs from what the configuration was made of asks for a reload: an
//! editor's temporary files, a tenant's uploads or an unchanged rescan cost
//! the scan and nothing more. Reloads asked for this way are at least
//! [`RELOAD_GAP`] apart, so a tenant changing its directory in a loop costs
//! at most one reload per gap. Every `rescan` the root is scanned whatever
//! inotify said: the fallback for what no watch saw (past the kernel's
//! watch limit, after a full event queue, on a file system without
//! inotify, in a directory whose watch was refused).
//!
//! The loop hears of a change on a channel ([`Watcher::start`]) and runs
//! `Supervisor::on_reload`; after every reload it hands the watcher the
//! scan the new configuration was made of ([`Watcher::baseline`]).
//!
//! With 10,000 sites the watcher holds 10,001 watches (a few hundred bytes
//! of kernel memory each). Past `fs.inotify.max_user_watches` (the kernel's
//! limit for root, shared with every other process of root's) the
//! directories left without a watch are named in one warning; changes in
//! them are seen at the next rescan, and the watches are tried again then.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::Problem;
use crate::config::discovery::{Discovered, Discovery, Scan, scan};

/// Events are gathered until none came for this long: `mkdir -p` and a
/// `chown -R`, or a `git clone`, are one change, not dozens.
pub const QUIET: Duration = Duration::from_millis(100);
/// ... but no longer than this after the first of them.
pub const MAX_WAIT: Duration = Duration::from_secs(1);
/// Reloads the watcher asks for are at least this far apart.
pub const RELOAD_GAP: Duration = Duration::from_secs(1);

/// What the root watch reports: entries made, removed, renamed, their
/// owners and modes changed; the root itself going.
const ROOT_EVENTS: WatchFlags = WatchFlags::CREATE
    .union(WatchFlags::DELETE)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::ATTRIB)
    .union(WatchFlags::DELETE_SELF)
    .union(WatchFlags::MOVE_SELF)
    .union(WatchFlags::ONLYDIR)
    .union(WatchFlags::DONT_FOLLOW);

/// What a host directory's watch reports: `public/` and `berth.toml` made,
/// removed, renamed, chowned, and `berth.toml` written.
const SITE_EVENTS: WatchFlags = WatchFlags::CREATE
    .union(WatchFlags::DELETE)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::ATTRIB)
    .union(WatchFlags::CLOSE_WRITE)
    .union(WatchFlags::ONLYDIR)
    .union(WatchFlags::DONT_FOLLOW);

/// The watcher thread, as the supervisor holds it. Dropping it stops the
/// thread (without waiting for it).
pub struct Watcher {
    settings: Discovery,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What the loop hands the thread.
struct Shared {
    /// Written to wake the thread.
    wake: OwnedFd,
    state: Mutex<Handed>,
}

#[derive(Default)]
struct Handed {
    stop: bool,
    /// The scan the configuration now holds, after a reload.
    baseline: Option<Scan>,
}

impl Watcher {
    /// Starts watching for `found.settings`; the first comparison is with
    /// `found.scan` (what the configuration was made of), so a change made
    /// while the configuration was loading is not missed. `changed` gets a
    /// message when a reload is wanted (one waiting is enough).
    pub fn start(found: &Discovered, changed: mpsc::Sender<()>) -> io::Result<Watcher> {
        let wake = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        let shared = Arc::new(Shared {
            wake,
            state: Mutex::new(Handed::default()),
        });
        let ino = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        let settings = found.settings.clone();
        let thread = {
            let (shared, settings, last) = (shared.clone(), settings.clone(), found.scan.clone());
            std::thread::Builder::new()
                .name("discovery".into())
                .spawn(move || watch(ino, &settings, last, &shared, &changed))?
        };
        info!(
            "discovery: watching {} (rescan every {:?})",
            settings.root.display(),
            settings.rescan
        );
        Ok(Watcher {
            settings,
            shared,
            thread: Some(thread),
        })
    }

    /// Whether this watcher watches as `d` says (else it is replaced).
    pub fn watches(&self, d: &Discovery) -> bool {
        self.settings.root == d.root
            && self.settings.min_uid == d.min_uid
            && self.settings.rescan == d.rescan
    }

    /// After a reload: what the configuration was made of, compared with
    /// from now on.
    pub fn baseline(&self, scan: &Scan) {
        self.shared.lock().baseline = Some(scan.clone());
        self.shared.wake();
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake();
        // (Not joined: the thread ends within one poll.)
        drop(self.thread.take());
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Handed> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }
}

/// The watches held: the root's, and one per host directory by name.
struct Watches {
    ino: OwnedFd,
    root: PathBuf,
    root_wd: Option<i32>,
    by_name: HashMap<String, i32>,
    /// The limit was reported (once, until every directory has a watch).
    reported: bool,
}

impl Watches {
    /// Watches the root if it is not watched; false if it cannot be.
    fn root(&mut self) -> bool {
        if self.root_wd.is_none() {
            match inotify::add_watch(&self.ino, &self.root, ROOT_EVENTS) {
                Ok(wd) => self.root_wd = Some(wd),
                Err(e) => {
                    debug!("discovery: cannot watch {}: {e}", self.root.display());
                    return false;
                }
            }
        }
        true
    }

    /// Watches each host directory of `scan` that is not watched yet and
    /// drops the watches of those gone. Returns whether a watch was added
    /// (what happened in that directory before it is unseen: scan again).
    fn sync(&mut self, scan: &Scan) -> bool {
        let mut added = false;
        let mut unwatched = Vec::new();
        let wanted: HashMap<&str, ()> = scan
            .entries
            .iter()
            .filter(|e| e.watch)
            .map(|e| (e.name.as_str(), ()))
            .collect();
        for name in wanted.keys() {
            if self.by_name.contains_key(*name) {
                continue;
            }
            match inotify::add_watch(&self.ino, self.root.join(name), SITE_EVENTS) {
                Ok(wd) => {
                    self.by_name.insert(name.to_string(), wd);
                    added = true;
                }
                Err(rustix::io::Errno::NOSPC) => unwatched.push(*name),
                // Gone, or not a directory any more: the next scan says.
                Err(_) => {}
            }
        }
        // A directory renamed within the root keeps its watch (and wd)
        // under its new name: only a wd no name uses any more goes.
        let gone: Vec<String> = self
            .by_name
            .keys()
            .filter(|n| !wanted.contains_key(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(wd) = self.by_name.remove(&name)
                && !self.by_name.values().any(|&w| w == wd)
            {
                let _ = inotify::remove_watch(&self.ino, wd);
            }
        }
        if unwatched.is_empty() {
            self.reported = false;
        } else if !self.reported {
            self.reported = true;
            let limit = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "?".into());
            unwatched.sort_unstable();
            warn!(
                "discovery: the inotify watch limit (fs.inotify.max_user_watches = {limit}, for all of root's processes) is reached: {} host directories have no watch (such as {}); a public/ or berth.toml made in them is seen at the next rescan; raise the limit with sysctl",
                unwatched.len(),
                unwatched[..unwatched.len().min(3)].join(", ")
            );
        }
        added
    }

    /// Reads every event waiting. Returns whether any was about the root or
    /// a host directory (anything at all: the scan decides what changed).
    fn drain(&mut self) -> bool {
        let mut buf = [std::mem::MaybeUninit::uninit(); 8192];
        let mut reader = inotify::Reader::new(&self.ino, &mut buf);
        let mut any = false;
        loop {
            match reader.next() {
                Ok(event) => {
                    any = true;
                    let flags = event.events();
                    if flags.contains(ReadFlags::IGNORED) && Some(event.wd()) == self.root_wd {
                        // The root itself went (or was renamed): watched
                        // again when it is back.
                        self.root_wd = None;
                    }
                    if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                        debug!("discovery: inotify queue overflowed; scanning");
                    }
                }
                Err(rustix::io::Errno::WOULDBLOCK) => return any,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    warn!("discovery: reading inotify events: {e}");
                    return any;
                }
            }
        }
    }
}

/// The thread: waits for events, a rescan or the loop; scans when due;
/// sends on `changed` when a scan differs from `last`.
fn watch(ino: OwnedFd, d: &Discovery, mut last: Scan, shared: &Shared, changed: &mpsc::Sender<()>) {
    let mut watches = Watches {
        ino,
        root: d.root.clone(),
        root_wd: None,
        by_name: HashMap::new(),
        reported: false,
    };
    if !watches.root() {
        warn!(
            "discovery: cannot watch {}; changes are seen every {:?} (rescan)",
            d.root.display(),
            d.rescan
        );
    }
    watches.sync(&last);
    let now = Instant::now();
    // The first scan compares the disk with the configuration now the
    // watches are in place.
    let mut first_event: Option<Instant> = Some(now);
    let mut last_event = now - QUIET;
    let mut next_rescan = now + d.rescan;
    let mut last_reload: Option<Instant> = None;
    let mut last_error: Option<String> = None;
    loop {
        let now = Instant::now();
        let due = match first_event {
            Some(first) => (last_event + QUIET)
                .min(first + MAX_WAIT)
                .max(last_reload.map_or(now, |at| at + RELOAD_GAP)),
            None => next_rescan,
        };
        let timeout = due.saturating_duration_since(now);
        let ts = rustix::time::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: timeout.subsec_nanos() as i64,
        };
        let mut fds = [
            PollFd::new(&watches.ino, PollFlags::IN),
            PollFd::new(&shared.wake, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                warn!("discovery: poll: {e}; watcher stopped (SIGHUP still reloads)");
                return;
            }
        }
        let (events, woken) = (!fds[0].revents().is_empty(), !fds[1].revents().is_empty());
        if woken {
            let mut buf = [0u8; 8];
            let _ = rustix::io::read(&shared.wake, &mut buf);
            let mut handed = shared.lock();
            if handed.stop {
                return;
            }
            if let Some(scan) = handed.baseline.take() {
                last = scan;
            }
        }
        let now = Instant::now();
        if events && watches.drain() {
            first_event.get_or_insert(now);
            last_event = now;
        }
        if now >= next_rescan {
            next_rescan = now + d.rescan;
            first_event.get_or_insert(now);
            watches.root();
        }
        let Some(first) = first_event else {
            continue;
        };
        let settled = now >= last_event + QUIET || now >= first + MAX_WAIT;
        let gap_over = last_reload.is_none_or(|at| now >= at + RELOAD_GAP);
        if !settled || !gap_over {
            continue;
        }
        first_event = None;
        let found = match scan(&d.root, d.min_uid) {
            Ok(found) => {
                last_error = None;
                found
            }
            Err(e) => {
                // Said once: the reload it asks for says why too.
                if last_error.as_ref() != Some(&e) {
                    warn!("discovery: cannot scan: {e}");
                    last_error = Some(e);
                    last_reload = Some(now);
                    let _ = changed.try_send(());
                }
                continue;
            }
        };
        if watches.sync(&found) {
            // A directory newly watched may have changed before its watch:
            // look again once things settle.
            first_event = Some(now);
            last_event = now;
        }
        if found != last {
            debug!("discovery: {} changed; reloading", d.root.display());
            last = found;
            last_reload = Some(now);
            // One waiting is enough: the reload scans again.
            let _ = changed.try_send(());
        }
    }
}

/// Logs what discovery left out that `before` (the notes of the
/// configuration replaced) did not: each reason once, when it appears, not
/// at every reload or rescan. With `found`, a line of what it found.
pub fn log_notes(before: &[Problem], found: Option<&Discovered>) {
    let Some(found) = found else {
        return;
    };
    let before: HashSet<&Problem> = before.iter().collect();
    for note in found.notes.iter().filter(|n| !before.contains(n)) {
        warn!("{note}");
    }
    info!(
        "discovery: {} sites ({} tenants made for them) from {}; {} directories left out",
        found.sites,
        found.tenants,
        found.settings.root.display(),
        found.notes.len()
    );
}
