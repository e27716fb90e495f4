//! Touch-to-restart: an app whose program (`command[0]`) or whose
//! `DIR/tmp/restart.txt` (Passenger's convention) changed gets a rolling
//! restart ([`super::rolling`]).
//!
//! A thread of its own looks once a second, one `stat` per file, never an
//! `open`: a thousand apps cost two thousand `stat`s a second off the
//! supervisor's loop. The paths are the tenant's, so the thread (not the
//! loop) takes the risk of a `stat` that hangs (a home on a stalled network
//! mount) and looks as root only at what the tenant could see anyway:
//! `restart.txt` is not followed if it is a symlink and counts only as a
//! regular file of the tenant's (or root's), so no tenant learns when
//! another's file changes; the program counts only if it is the tenant's
//! or everyone may execute it (php-cgi). A change is a different mtime,
//! inode or size; `restart.txt` appearing counts, disappearing does not.
//! The first look at a path only notes what is there.
//!
//! The loop takes the changes in [`AppManager::roll`](super::AppManager::roll)
//! (woken when there are some) and restarts the apps that have processes
//! running; one without any starts the new program on its next request anyway.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::ipc::AppId;

/// One app's files to watch.
#[derive(Debug, Clone)]
pub(in crate::supervisor) struct Watched {
    pub id: AppId,
    pub program: PathBuf,
    pub restart_txt: PathBuf,
    /// The uid whose files count (the tenant's).
    pub owner: u32,
}

/// How often the files are looked at.
const EVERY: Duration = Duration::from_secs(1);

/// The watching thread: give it the list, take the changes. Dropped, it
/// stops the thread.
pub(in crate::supervisor) struct Watcher {
    list: Arc<Mutex<Arc<Vec<Watched>>>>,
    /// Tells the thread the list changed: it looks at once.
    kick: mpsc::Sender<()>,
    changes: mpsc::Receiver<(AppId, String)>,
}

impl Watcher {
    /// Starts the thread; it wakes `wake` when it has changes.
    pub fn start(wake: Arc<Notify>) -> std::io::Result<Watcher> {
        let list = Arc::new(Mutex::new(Arc::new(Vec::new())));
        let (kick, kicked) = mpsc::channel();
        let (tx, changes) = mpsc::channel();
        {
            let list = list.clone();
            std::thread::Builder::new()
                .name("app-touch".into())
                .spawn(move || watch(&list, &kicked, &tx, &wake))?;
        }
        Ok(Watcher {
            list,
            kick,
            changes,
        })
    }

    /// What to watch from now on. The thread looks at once: what an app's
    /// processes start from is what it notes first, not what a deploy
    /// put there a second later.
    pub fn set(&self, list: Vec<Watched>) {
        *self.list.lock().expect("watch list lock") = Arc::new(list);
        let _ = self.kick.send(());
    }

    /// The apps whose files changed since the last call, with what changed.
    pub fn changes(&self) -> Vec<(AppId, String)> {
        self.changes.try_iter().collect()
    }
}

/// The thread: a pass every [`EVERY`], and at once when the list changes,
/// until the [`Watcher`] is dropped (or nobody takes its changes).
fn watch(
    list: &Mutex<Arc<Vec<Watched>>>,
    kicked: &mpsc::Receiver<()>,
    tx: &mpsc::Sender<(AppId, String)>,
    wake: &Notify,
) {
    let mut seen = HashMap::new();
    loop {
        let began = Instant::now();
        let now = list.lock().expect("watch list lock").clone();
        let changed = pass(&mut seen, &now);
        if !changed.is_empty() {
            for c in changed {
                if tx.send(c).is_err() {
                    return;
                }
            }
            wake.notify_one();
        }
        match kicked.recv_timeout(EVERY.saturating_sub(began.elapsed())) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// What identifies a version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    dev: u64,
    ino: u64,
    mtime: (i64, i64),
    size: i64,
}

/// What was seen of one app's files last time.
struct Seen {
    program: PathBuf,
    restart_txt: PathBuf,
    program_key: Option<Key>,
    restart_key: Option<Key>,
}

/// One look at every app's files: the apps whose files changed since the
/// last look, and what changed. Apps no longer listed are forgotten.
fn pass(seen: &mut HashMap<AppId, Seen>, list: &[Watched]) -> Vec<(AppId, String)> {
    // Only when some are gone (more seen than listed: those are).
    if seen.len() > list.len() {
        let listed: HashSet<&AppId> = list.iter().map(|w| &w.id).collect();
        seen.retain(|id, _| listed.contains(id));
    }
    let mut changed = Vec::new();
    for w in list {
        let program_key = program_key(&w.program, w.owner);
        let restart_key = restart_key(&w.restart_txt, w.owner);
        let before = match seen.get_mut(&w.id) {
            // Other paths (a reload changed them) are noted, not a change.
            Some(s) if s.program == w.program && s.restart_txt == w.restart_txt => s,
            _ => {
                let fresh = Seen {
                    program: w.program.clone(),
                    restart_txt: w.restart_txt.clone(),
                    program_key,
                    restart_key,
                };
                seen.insert(w.id.clone(), fresh);
                continue;
            }
        };
        if restart_key.is_some() && restart_key != before.restart_key {
            changed.push((
                w.id.clone(),
                format!("{} was touched", w.restart_txt.display()),
            ));
        } else if program_key.is_some() && program_key != before.program_key {
            changed.push((
                w.id.clone(),
                format!("its program {} changed", w.program.display()),
            ));
        }
        before.program_key = program_key;
        before.restart_key = restart_key;
    }
    changed
}

fn key(st: &rustix::fs::Stat) -> Key {
    Key {
        dev: st.st_dev,
        ino: st.st_ino,
        mtime: (st.st_mtime, st.st_mtime_nsec as i64),
        size: st.st_size,
    }
}

fn regular(st: &rustix::fs::Stat) -> bool {
    rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
}

/// The program's version (through symlinks: `/usr/bin/php-cgi` is one), if
/// it is a regular file of `owner`'s or one everyone may execute.
fn program_key(path: &Path, owner: u32) -> Option<Key> {
    let st = rustix::fs::stat(path).ok()?;
    (regular(&st) && (st.st_uid == owner || st.st_mode & 0o001 != 0)).then(|| key(&st))
}

/// `restart.txt`'s version, if it is a regular file (not a symlink) of
/// `owner`'s or root's.
fn restart_key(path: &Path, owner: u32) -> Option<Key> {
    let st = rustix::fs::lstat(path).ok()?;
    (regular(&st) && (st.st_uid == owner || st.st_uid == 0)).then(|| key(&st))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::SystemTime;

    fn id(app: &str) -> AppId {
        AppId {
            tenant: "t".into(),
            app: app.into(),
        }
    }

    /// Sets `path`'s mtime `secs` after the epoch.
    fn set_mtime(path: &Path, secs: u64) {
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
            .unwrap();
    }

    struct App {
        dir: tempfile::TempDir,
        watched: Watched,
    }

    /// An app `name` with a program (0755) and a `tmp/` without restart.txt.
    fn app(name: &str) -> App {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("app.sh");
        std::fs::write(&program, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        let watched = Watched {
            id: id(name),
            program,
            restart_txt: dir.path().join("tmp/restart.txt"),
            owner: rustix::process::geteuid().as_raw(),
        };
        App { dir, watched }
    }

    #[test]
    fn touching_restart_txt_or_changing_the_program_is_seen_once() {
        let a = app("a");
        let list = vec![a.watched.clone()];
        let mut seen = HashMap::new();
        assert!(pass(&mut seen, &list).is_empty(), "the first look notes");
        assert!(pass(&mut seen, &list).is_empty(), "nothing changed");
        // restart.txt appears (`touch tmp/restart.txt`).
        std::fs::write(&a.watched.restart_txt, "").unwrap();
        set_mtime(&a.watched.restart_txt, 1000);
        let got = pass(&mut seen, &list);
        assert_eq!(got.len(), 1);
        assert!(got[0].1.ends_with("tmp/restart.txt was touched"), "{got:?}");
        assert!(pass(&mut seen, &list).is_empty(), "seen once");
        set_mtime(&a.watched.restart_txt, 2000);
        assert_eq!(pass(&mut seen, &list).len(), 1, "touched again");
        std::fs::remove_file(&a.watched.restart_txt).unwrap();
        assert!(pass(&mut seen, &list).is_empty(), "removed: no restart");
        // The program rewritten, then replaced by a rename (same mtime).
        set_mtime(&a.watched.program, 3000);
        let got = pass(&mut seen, &list);
        assert_eq!(got.len(), 1);
        assert!(got[0].1.starts_with("its program"), "{got:?}");
        let new = a.dir.path().join("app.sh.new");
        std::fs::write(&new, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).unwrap();
        set_mtime(&new, 3000);
        std::fs::rename(&new, &a.watched.program).unwrap();
        assert_eq!(pass(&mut seen, &list).len(), 1, "another inode");
    }

    #[test]
    fn restart_txt_through_a_symlink_or_of_another_user_is_not_looked_at() {
        let a = app("a");
        let list = vec![a.watched.clone()];
        let mut seen = HashMap::new();
        pass(&mut seen, &list);
        // A symlink to a file the tenant may not see (as root: any file).
        let elsewhere = a.dir.path().join("secret");
        std::fs::write(&elsewhere, "").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &a.watched.restart_txt).unwrap();
        assert!(pass(&mut seen, &list).is_empty(), "a symlink is no touch");
        set_mtime(&elsewhere, 5000);
        assert!(
            pass(&mut seen, &list).is_empty(),
            "its target is not looked at"
        );
        std::fs::remove_file(&a.watched.restart_txt).unwrap();
        // Another user's file (another tenant's restart.txt, reached through
        // a directory symlink): its changes are not this tenant's. (Root's
        // own would count: the admin may touch it.)
        std::fs::write(&a.watched.restart_txt, "").unwrap();
        std::os::unix::fs::chown(&a.watched.restart_txt, Some(4242), None).unwrap();
        assert!(pass(&mut seen, &list).is_empty());
        set_mtime(&a.watched.restart_txt, 6000);
        assert!(pass(&mut seen, &list).is_empty(), "uid 4242's file");
    }

    #[test]
    fn new_paths_after_a_reload_are_noted_not_taken_for_a_change() {
        let a = app("a");
        let b = app("b");
        let mut seen = HashMap::new();
        pass(&mut seen, std::slice::from_ref(&a.watched));
        let moved = Watched {
            id: a.watched.id.clone(),
            ..b.watched.clone()
        };
        assert!(pass(&mut seen, std::slice::from_ref(&moved)).is_empty());
        // Gone from the list: forgotten.
        pass(&mut seen, &[]);
        assert!(seen.is_empty());
    }
}
