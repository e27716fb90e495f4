//! Who may read or write a file, from its owner, group and mode (ACLs are
//! not read: `getfacl` shows them), and the directories above it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::accounts::Accounts;

/// A user as the kernel checks it: its uid and every group it has.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Its primary group and supplementary groups.
    pub groups: Vec<u32>,
}

/// What a mode check needs of a file.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl Owner {
    pub fn of(meta: &std::fs::Metadata) -> Owner {
        Owner {
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode(),
        }
    }

    pub fn from_stat(st: &rustix::fs::Stat) -> Owner {
        Owner {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode,
        }
    }

    /// The permission bits and the set-id and sticky bits.
    pub fn bits(&self) -> u32 {
        self.mode & 0o7777
    }

    /// Whether `p` has `want` (4 read, 2 write, 1 execute or search) by
    /// the owner, group or other bits, as the kernel picks them (root
    /// aside).
    pub fn allows(&self, p: &Principal, want: u32) -> bool {
        if p.uid == self.uid {
            return (self.mode >> 6) & want == want;
        }
        if p.groups.contains(&self.gid) {
            return (self.mode >> 3) & want == want;
        }
        self.mode & want == want
    }

    pub fn others(&self, want: u32) -> bool {
        self.mode & want == want
    }

    pub fn group(&self, want: u32) -> bool {
        (self.mode >> 3) & want == want
    }
}

/// Why a directory on the way to a file berth reads as root lets someone
/// other than `owners` replace what is below it: the first such directory,
/// from `/` down (owned by another user, or writable by group or others
/// without the sticky bit, which keeps others from renaming what they do
/// not own).
pub fn unsafe_dirs(path: &Path, owners: &[u32], accounts: &Accounts) -> Option<String> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let plain = crate::config::plain_path(&absolute);
    let mut dir = plain.parent();
    let mut chain = Vec::new();
    while let Some(d) = dir {
        chain.push(d.to_path_buf());
        dir = d.parent();
    }
    for d in chain.iter().rev() {
        let Ok(meta) = std::fs::symlink_metadata(d) else {
            return None;
        };
        let o = Owner::of(&meta);
        if meta.file_type().is_symlink() {
            // (Links on the way are the administrator's to judge; what
            // they point to is checked when it is reached.)
            continue;
        }
        if o.uid != 0 && !owners.contains(&o.uid) {
            return Some(format!(
                "the directory {} above it is owned by {}, who can replace what is in it",
                d.display(),
                accounts.user_name(o.uid)
            ));
        }
        let sticky = o.mode & 0o1000 != 0;
        if o.mode & 0o022 != 0 && !sticky {
            return Some(format!(
                "the directory {} above it is writable by {} (mode {:o}): they can replace what is in it",
                d.display(),
                if o.others(2) {
                    "everyone".to_string()
                } else {
                    accounts.group_phrase(o.gid)
                },
                o.bits()
            ));
        }
    }
    None
}
