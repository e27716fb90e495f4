//! The users and groups behind berth: the tenants' users (system accounts,
//! shared users, privileged groups, logins) and the front end's (who else
//! is in its group, which reaches every tenant's app socket).
//!
//! The user and group databases are read once ([`crate::sys::all_users`],
//! [`crate::sys::all_groups`]), `/etc/shadow` when the audit runs as root,
//! and `UID_MIN` from `/etc/login.defs` (the first uid `useradd` gives a
//! person; below it are the system's service accounts).

use std::collections::{BTreeSet, HashMap};

use nix::unistd::{Group, User};

use super::access::Principal;
use super::{Context, Finding, Place, Severity};

/// `UID_MIN` when `/etc/login.defs` does not say (Debian's and Red Hat's).
const DEFAULT_UID_MIN: u32 = 1000;

/// Groups whose members are root, or nearly: (group, severity, why).
const PRIVILEGED_GROUPS: &[(&str, Severity, &str)] = &[
    ("root", Severity::Critical, "owns system files"),
    (
        "docker",
        Severity::Critical,
        "starts containers that mount / (root without a password)",
    ),
    (
        "lxd",
        Severity::Critical,
        "starts containers that mount / (root without a password)",
    ),
    (
        "incus-admin",
        Severity::Critical,
        "starts containers that mount / (root without a password)",
    ),
    (
        "libvirt",
        Severity::Critical,
        "starts virtual machines on the host's disks (root without a password)",
    ),
    (
        "disk",
        Severity::Critical,
        "reads and writes the raw disks (root without a password)",
    ),
    (
        "sudo",
        Severity::High,
        "becomes root with sudo (with the user's password, or none where sudoers says NOPASSWD)",
    ),
    (
        "wheel",
        Severity::High,
        "becomes root with sudo or su (with the user's password)",
    ),
    (
        "admin",
        Severity::High,
        "becomes root with sudo (with the user's password)",
    ),
    (
        "shadow",
        Severity::High,
        "reads /etc/shadow: every user's password hash",
    ),
    (
        "staff",
        Severity::High,
        "writes /usr/local, whose programs come first in root's PATH",
    ),
    (
        "adm",
        Severity::Medium,
        "reads the system's logs (other tenants' requests and errors among them)",
    ),
    (
        "systemd-journal",
        Severity::Medium,
        "reads the whole journal (other tenants' messages among them)",
    ),
];

/// The user and group databases, read once.
pub struct Accounts {
    /// uid → name, gid → name, gid → the users in it (listed as members,
    /// or with it as their primary group).
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
    members: HashMap<u32, BTreeSet<String>>,
    /// The privileged groups ([`PRIVILEGED_GROUPS`]) this system has:
    /// (gid, name, severity, why).
    privileged: Vec<(u32, &'static str, Severity, &'static str)>,
    /// User name → the password field of `/etc/shadow` (None: not readable).
    shadow: Option<HashMap<String, String>>,
    /// `UID_MIN` of `/etc/login.defs`.
    pub uid_min: u32,
}

impl Accounts {
    pub fn load() -> Accounts {
        let shadow = std::fs::read_to_string("/etc/shadow").ok().map(|text| {
            text.lines()
                .filter_map(|l| {
                    let mut f = l.split(':');
                    Some((f.next()?.to_string(), f.next()?.to_string()))
                })
                .collect()
        });
        let uid_min = std::fs::read_to_string("/etc/login.defs")
            .ok()
            .and_then(|t| login_defs(&t, "UID_MIN"))
            .unwrap_or(DEFAULT_UID_MIN);
        let mut members: HashMap<u32, BTreeSet<String>> = HashMap::new();
        let mut users = HashMap::new();
        for u in crate::sys::all_users() {
            members
                .entry(u.gid.as_raw())
                .or_default()
                .insert(u.name.clone());
            users.entry(u.uid.as_raw()).or_insert(u.name);
        }
        let mut groups = HashMap::new();
        for g in crate::sys::all_groups() {
            members.entry(g.gid.as_raw()).or_default().extend(g.mem);
            groups.entry(g.gid.as_raw()).or_insert(g.name);
        }
        let privileged = PRIVILEGED_GROUPS
            .iter()
            .filter_map(|(name, severity, why)| {
                let gid = groups
                    .iter()
                    .find(|(_, n)| n.as_str() == *name)
                    .map(|(gid, _)| *gid)?;
                Some((gid, *name, *severity, *why))
            })
            .collect();
        Accounts {
            users,
            groups,
            members,
            privileged,
            shadow,
            uid_min,
        }
    }

    /// The user named `name` with every group it has.
    pub fn principal(&self, name: &str) -> Option<Principal> {
        let user = User::from_name(name).ok().flatten()?;
        let id = crate::sys::Identity::of(&user).ok()?;
        let mut groups = id.groups;
        if !groups.contains(&id.gid) {
            groups.push(id.gid);
        }
        Some(Principal {
            name: name.to_string(),
            uid: id.uid,
            gid: id.gid,
            groups,
        })
    }

    /// `uid`'s name, or `uid N`.
    pub fn user_name(&self, uid: u32) -> String {
        match self.users.get(&uid) {
            Some(name) => name.clone(),
            None => match User::from_uid(uid.into()) {
                Ok(Some(u)) => u.name,
                _ => format!("uid {uid}"),
            },
        }
    }

    pub fn group_name(&self, gid: u32) -> Option<String> {
        match self.groups.get(&gid) {
            Some(name) => Some(name.clone()),
            None => Group::from_gid(gid.into()).ok().flatten().map(|g| g.name),
        }
    }

    /// The users in group `gid`: listed as members, or with it as their
    /// primary group (those the databases enumerate).
    pub fn members(&self, gid: u32) -> BTreeSet<String> {
        self.members.get(&gid).cloned().unwrap_or_default()
    }

    /// Whether group `gid` has no one in it but the user `uid` (a user
    /// private group, as `useradd` makes by default): its bits are then
    /// the owner's alone.
    pub fn private_to(&self, gid: u32, uid: u32) -> bool {
        let Some(members) = self.members.get(&gid) else {
            return true;
        };
        match self.users.get(&uid) {
            Some(name) => members.iter().all(|m| m == name),
            None => members.is_empty(),
        }
    }

    /// "group G (members: a, b)" for messages.
    pub fn group_phrase(&self, gid: u32) -> String {
        let name = self.group_name(gid).unwrap_or_else(|| format!("gid {gid}"));
        let members: Vec<String> = self.members(gid).into_iter().collect();
        if members.is_empty() {
            format!("group {name}")
        } else {
            format!("group {name} (members: {})", members.join(", "))
        }
    }

    /// The password field of `user` in `/etc/shadow`, when readable.
    fn password(&self, user: &str) -> Option<&str> {
        self.shadow.as_ref()?.get(user).map(String::as_str)
    }
}

/// `KEY value` of a login.defs-style file.
fn login_defs(text: &str, key: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some(key)).then(|| f.next()?.parse().ok())?
    })
}

/// Whether `shell` lets its user log in (no shell is `/bin/sh`).
fn login_shell(shell: &std::path::Path) -> bool {
    let name = shell.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !matches!(name, "nologin" | "false" | "true")
}

pub(super) fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    let cfg = ctx.cfg;
    let a = &ctx.accounts;
    if cfg.server.min_uid < a.uid_min {
        out.push(Finding {
            severity: Severity::Medium,
            check: "min-uid",
            place: Place::config(
                ctx.main(),
                ctx.main_line(&["server", "min_uid"]),
                "server.min_uid",
            ),
            tenant: None,
            what: format!(
                "min_uid is {}, below UID_MIN {} of /etc/login.defs: a system account (a daemon's user, owning its files) may be made a tenant and run its code",
                cfg.server.min_uid, a.uid_min
            ),
            fix: format!("min_uid = {} in [server]", a.uid_min),
        });
    }
    let mut seen_uid: HashMap<u32, &str> = HashMap::new();
    for t in cfg.tenants.iter().filter(|t| t.resolved) {
        let place = Place::Tenant {
            tenant: t.name.clone(),
            file: t.origin.file.clone(),
            line: t.user_line,
        };
        let finding = |severity, check, what: String, fix: String| Finding {
            severity,
            check,
            place: place.clone(),
            tenant: Some(t.name.clone()),
            what,
            fix,
        };
        if t.uid < a.uid_min || t.gid < a.uid_min {
            out.push(finding(
                Severity::High,
                "tenant-system-user",
                format!(
                    "its user {} (uid {}, gid {}) is a system account (below UID_MIN {}): the files of the service it belongs to are the tenant's",
                    t.user, t.uid, t.gid, a.uid_min
                ),
                format!(
                    "give the tenant a user of its own (useradd --create-home {}-web) and raise min_uid to {}",
                    t.name, a.uid_min
                ),
            ));
        }
        // (`berth check` refuses this as root; run unprivileged it cannot
        // tell, and neither can berth, which then runs every app as itself.)
        if let Some(other) = seen_uid.insert(t.uid, &t.name) {
            out.push(finding(
                Severity::High,
                "tenant-shared-user",
                format!(
                    "its user {} (uid {}) is also tenant {other}'s: each can read, change and signal what the other runs",
                    t.user, t.uid
                ),
                format!("give tenant {} a Unix user of its own", t.name),
            ));
        }
        if let Some(p) = a.principal(&t.user) {
            privileged_groups(
                a,
                &p,
                &format!("tenant {}'s user", t.name),
                |s, what, fix| out.push(finding(s, "privileged-group", what, fix)),
            );
        }
        if let Ok(Some(user)) = User::from_name(&t.user)
            && login_shell(&user.shell)
            && let Some(pw) = a.password(&t.user)
        {
            let shell = user.shell.display();
            if pw.is_empty() {
                out.push(finding(
                    Severity::High,
                    "tenant-login",
                    format!(
                        "its user {} has an empty password and the login shell {shell}: anyone may log in or su to it",
                        t.user
                    ),
                    format!("passwd -l {} (or usermod -s /usr/sbin/nologin {})", t.user, t.user),
                ));
            } else if !pw.starts_with(['!', '*']) {
                out.push(finding(
                    Severity::Info,
                    "tenant-login",
                    format!(
                        "its user {} can log in with a password (login shell {shell}): its password guards everything the tenant's apps hold",
                        t.user
                    ),
                    format!(
                        "if the tenant needs no shell: usermod -s /usr/sbin/nologin {}; else prefer SSH keys (passwd -l {})",
                        t.user, t.user
                    ),
                ));
            }
        }
    }
    let Some(front) = &ctx.front else {
        return;
    };
    let place = Place::config(
        ctx.main(),
        ctx.main_line(&["server", "user"]),
        "server.user",
    );
    privileged_groups(a, front, "the front end's user", |s, what, fix| {
        out.push(Finding {
            severity: s,
            check: "privileged-group",
            place: place.clone(),
            tenant: None,
            what,
            fix,
        })
    });
    // Tenants in the front end's group are refused by `berth check`;
    // anyone else in it reaches every tenant's app socket too.
    let tenants: BTreeSet<&str> = cfg.tenants.iter().map(|t| t.user.as_str()).collect();
    let group = a
        .group_name(front.gid)
        .unwrap_or_else(|| format!("gid {}", front.gid));
    for member in a.members(front.gid) {
        if member == front.name || tenants.contains(member.as_str()) {
            continue;
        }
        out.push(Finding {
            severity: Severity::High,
            check: "front-group",
            place: place.clone(),
            tenant: None,
            what: format!(
                "user {member} is in group {group}, the front end's primary group, which enters the directory of every tenant's app socket: {member} can send any tenant's app a request of its own (a FastCGI SCRIPT_FILENAME, forged headers), bypassing berth's routes and passwords"
            ),
            fix: format!("gpasswd -d {member} {group} (or, for its primary group, usermod -g OTHER {member})"),
        });
    }
}

/// Reports each privileged group `p` is in.
fn privileged_groups(
    a: &Accounts,
    p: &Principal,
    who: &str,
    mut report: impl FnMut(Severity, String, String),
) {
    for (gid, name, severity, why) in &a.privileged {
        if p.groups.contains(gid) {
            report(
                *severity,
                format!(
                    "{who} {} is in group {name}, which {why}: whoever runs code as it (any app or request handler of its) has that too",
                    p.name
                ),
                format!("gpasswd -d {} {name}", p.name),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_defs_and_shells() {
        let text = "# comment\nUID_MIN\t\t\t 1000\nUID_MAX 60000\n#UID_MIN 5\n";
        assert_eq!(login_defs(text, "UID_MIN"), Some(1000));
        assert_eq!(login_defs(text, "UID_MAX"), Some(60000));
        assert_eq!(login_defs(text, "GID_MIN"), None);
        assert!(login_shell("/bin/bash".as_ref()));
        assert!(login_shell("".as_ref()), "no shell is /bin/sh");
        assert!(!login_shell("/usr/sbin/nologin".as_ref()));
        assert!(!login_shell("/bin/false".as_ref()));
    }
}
