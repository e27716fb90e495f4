//! Rotation and compression on real directories (as root in CI, where the
//! ownership checks see files of other users too).

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

use super::*;

/// A temporary log directory as the supervisor holds it.
fn log_dir() -> (tempfile::TempDir, SafeDir) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = super::super::prepare_dir(tmp.path()).unwrap();
    (tmp, dir)
}

/// Opens (creating) `name` in `dir` for appending, as `open_log` does.
fn open(dir: &SafeDir, name: &str) -> OwnedFd {
    super::super::open_log(dir, name, None).unwrap()
}

fn append(fd: &OwnedFd, text: &str) {
    let mut f = File::from(fd.try_clone().unwrap());
    f.write_all(text.as_bytes()).unwrap();
}

fn names(tmp: &tempfile::TempDir) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn gunzip(path: &std::path::Path) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text
}

/// Rotates `access.log` once, writing `line` first; returns the new fd.
fn rotate(dir: &SafeDir, current: OwnedFd, line: &str, keep: u32) -> OwnedFd {
    append(&current, line);
    let root = rustix::process::geteuid().is_root();
    rotate_one(dir, "access.log", keep, &current, root)
        .unwrap()
        .expect("not empty")
}

#[test]
fn a_rotation_shifts_the_old_files_up_and_drops_the_oldest() {
    let (tmp, dir) = log_dir();
    let mut fd = open(&dir, "access.log");
    // Empty: nothing to rotate.
    assert!(
        rotate_one(&dir, "access.log", 3, &fd, true)
            .unwrap()
            .is_none()
    );
    for i in 1..=4 {
        fd = rotate(&dir, fd, &format!("line {i}\n"), 3);
    }
    // Nothing was compressed (no compressor here): .1 .. .3 plain, line 1
    // gone with the oldest.
    assert_eq!(
        names(&tmp),
        ["access.log", "access.log.1", "access.log.2", "access.log.3"]
    );
    let read = |n: &str| fs::read_to_string(tmp.path().join(n)).unwrap();
    assert_eq!(read("access.log"), "");
    assert_eq!(read("access.log.1"), "line 4\n");
    assert_eq!(read("access.log.3"), "line 2\n");
    // The new file is the one being written, 0640.
    append(&fd, "line 5\n");
    assert_eq!(read("access.log"), "line 5\n");
    let m = fs::metadata(tmp.path().join("access.log")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o640);
}

/// Puts something at a path.
type Plant<'a> = dyn Fn(&std::path::Path) + 'a;

#[test]
fn anything_planted_where_a_rotated_file_goes_is_left_alone() {
    let (tmp, dir) = log_dir();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("precious");
    fs::write(&target, "precious\n").unwrap();
    let fd = open(&dir, "access.log");
    append(&fd, "a line\n");
    let at = |n: &str| tmp.path().join(n);
    let plants: [(&str, &Plant<'_>, &str); 3] = [
        (
            "access.log.1",
            &|p| std::os::unix::fs::symlink(&target, p).unwrap(),
            "is a symbolic link",
        ),
        (
            "access.log.2",
            &|p| fs::hard_link(&target, p).unwrap(),
            "is a file with 2 hard links",
        ),
        (
            "access.log.3.gz",
            &|p| fs::create_dir(p).unwrap(),
            "is a directory",
        ),
    ];
    for (name, plant, what) in plants {
        plant(&at(name));
        let why = rotate_one(&dir, "access.log", 5, &fd, true).unwrap_err();
        assert!(
            why.contains(&format!("{} {what}", at(name).display())),
            "{why}"
        );
        // Nothing moved, nothing written through it.
        assert_eq!(names(&tmp), ["access.log", name]);
        assert_eq!(fs::read_to_string(at("access.log")).unwrap(), "a line\n");
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o7777, 0o644);
        if at(name).is_dir() {
            fs::remove_dir(at(name)).unwrap();
        } else {
            fs::remove_file(at(name)).unwrap();
        }
    }
    // The current file itself swapped for a symlink.
    fs::rename(at("access.log"), at("elsewhere")).unwrap();
    std::os::unix::fs::symlink(&target, at("access.log")).unwrap();
    let why = rotate_one(&dir, "access.log", 5, &fd, true).unwrap_err();
    assert!(why.contains("access.log is a symbolic link"), "{why}");
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
}

#[test]
fn a_file_of_another_owner_is_not_taken_for_a_log() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (only root gives a file away), as the suite runs"
    );
    let (tmp, dir) = log_dir();
    let fd = open(&dir, "access.log");
    append(&fd, "a line\n");
    let planted = tmp.path().join("access.log.2");
    fs::write(&planted, "someone's\n").unwrap();
    std::os::unix::fs::chown(&planted, Some(65534), None).unwrap();
    let why = rotate_one(&dir, "access.log", 5, &fd, true).unwrap_err();
    assert!(why.contains("is owned by uid 65534, not berth's"), "{why}");
}

#[test]
fn a_rotated_file_still_open_for_writing_is_not_compressed_until_closed() {
    let (tmp, dir) = log_dir();
    let mut fd = open(&dir, "access.log");
    fd = rotate(&dir, fd, "first\n", 5);
    // A writer that has not switched yet: it holds what is now .1, and
    // will hold .2 after the next rotation.
    let late = File::options()
        .append(true)
        .open(tmp.path().join("access.log.1"))
        .unwrap();
    let _fd = rotate(&dir, fd, "second\n", 5);
    assert_eq!(names(&tmp), ["access.log", "access.log.1", "access.log.2"]);
    let lock = Mutex::new(());
    let job = compress::Job {
        dir: dir.fd.try_clone().unwrap(),
        path: dir.path.clone(),
        base: "access.log",
    };
    // Busy: tried again later, nothing compressed.
    assert!(compress::compress_log(&job, &lock));
    assert!(!tmp.path().join("access.log.2.gz").exists());
    (&late).write_all(b"late line\n").unwrap();
    drop(late);
    assert!(!compress::compress_log(&job, &lock));
    assert_eq!(
        names(&tmp),
        ["access.log", "access.log.1", "access.log.2.gz"]
    );
    let gz = tmp.path().join("access.log.2.gz");
    assert_eq!(gunzip(&gz), "first\nlate line\n");
    // The original's mode (and owner, group, times) kept.
    let m = fs::metadata(&gz).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o640);
    assert_eq!(
        (m.uid(), m.gid()),
        (rustix::process::geteuid().as_raw(), {
            fs::metadata(tmp.path().join("access.log.1")).unwrap().gid()
        })
    );
    // gzip(1) reads it too.
    let out = std::process::Command::new("gzip")
        .args(["-dc", gz.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "first\nlate line\n");
    // Later rotations shift the compressed file along.
    let fd = open(&dir, "access.log");
    let _fd = rotate(&dir, fd, "third\n", 5);
    assert_eq!(
        names(&tmp),
        [
            "access.log",
            "access.log.1",
            "access.log.2",
            "access.log.3.gz"
        ]
    );
}

#[test]
fn the_kernel_says_whether_a_file_is_open_for_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("f");
    fs::write(&path, "x").unwrap();
    let reader = File::open(&path).unwrap();
    assert!(!crate::sys::has_writers(reader.as_fd()).unwrap());
    let writer = File::options().append(true).open(&path).unwrap();
    assert!(crate::sys::has_writers(reader.as_fd()).unwrap());
    // A second reader changes nothing.
    let _other = File::open(&path).unwrap();
    assert!(crate::sys::has_writers(reader.as_fd()).unwrap());
    drop(writer);
    assert!(!crate::sys::has_writers(reader.as_fd()).unwrap());
}

#[test]
fn a_tenants_error_log_is_due_before_it_can_be_full() {
    let limits = |max| crate::config::ErrorLogLimits { rate: 200, max };
    // The size, when the cap is far above it.
    assert_eq!(error_threshold(16 << 10, &limits(1 << 30)), 16 << 10);
    // Else a little below the cap: a full log stops at most a long line
    // short of it.
    assert_eq!(
        error_threshold(100 << 20, &limits(64 << 20)),
        (64 << 20) - FULL_MARGIN
    );
    let smallest = error_threshold(1 << 40, &limits(64 << 10));
    assert!(smallest > 0 && smallest <= (64 << 10) - FULL_MARGIN);
}
