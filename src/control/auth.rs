//! Who may do what over the control socket, decided per request from the
//! caller's uid as the kernel gives it (`SO_PEERCRED`), never from anything
//! the caller says.
//!
//! - root, the user berth itself runs as, and members of `admin_group` act
//!   on every tenant, and name the one they act on (`--tenant`);
//! - a tenant's Unix user acts on its own tenant only (named or implied);
//! - anyone else is refused.
//!
//! Membership of `admin_group` is read from the group database at each
//! request (its member list, and users whose primary group it is), so a
//! change there takes effect at once. A caller who may not act learns
//! nothing of which tenants exist.

use nix::unistd::{Group, User};

/// Why a caller acts on every tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admin {
    Root,
    /// The user berth runs as (started by a normal user).
    Berth,
    /// A member of `admin_group`.
    Group(String),
}

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    pub uid: u32,
    /// From `SO_PEERCRED`: the process that connected.
    pub pid: Option<i32>,
    /// Its user's name (None when the uid has no passwd entry).
    pub user: Option<String>,
    pub admin: Option<Admin>,
}

impl Who {
    /// Looks the caller `uid` up: its user, and whether it is an admin
    /// (root, berth's own uid `berth_uid`, or in `admin_group`). May block
    /// on the user and group databases: call it off any event loop.
    pub fn resolve(uid: u32, pid: Option<i32>, berth_uid: u32, admin_group: Option<&str>) -> Who {
        let user = User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten();
        let admin = if uid == 0 {
            Some(Admin::Root)
        } else if uid == berth_uid {
            Some(Admin::Berth)
        } else {
            admin_group
                .filter(|g| user.as_ref().is_some_and(|u| member(u, g)))
                .map(|g| Admin::Group(g.to_string()))
        };
        Who {
            uid,
            pid,
            user: user.map(|u| u.name),
            admin,
        }
    }

    /// `uid 1001 (alice)`.
    pub fn describe(&self) -> String {
        match &self.user {
            Some(name) => format!("uid {} ({name})", self.uid),
            None => format!("uid {}", self.uid),
        }
    }

    /// The role, for the audit log.
    pub fn role(&self, tenant: bool) -> String {
        match &self.admin {
            Some(Admin::Root) => "root".into(),
            Some(Admin::Berth) => "berth".into(),
            Some(Admin::Group(g)) => format!("admin_group:{g}"),
            None if tenant => "tenant".into(),
            None => "none".into(),
        }
    }
}

/// Whether the user named `user` is in group `group` by the group
/// database: listed as a member, or with it as primary group.
pub fn in_group(user: &str, group: &str) -> bool {
    User::from_name(user)
        .ok()
        .flatten()
        .is_some_and(|u| member(&u, group))
}

fn member(user: &User, group: &str) -> bool {
    let Ok(Some(g)) = Group::from_name(group) else {
        return false;
    };
    g.gid == user.gid || g.mem.contains(&user.name)
}

/// What a request may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub tenant: String,
    /// It acts as an admin (root, berth, `admin_group`), not as the
    /// tenant's user.
    pub admin: bool,
}

/// Decides which tenant `who` acts on, having named `asked`, among
/// `tenants` (name and uid of each tenant whose user exists). The refusal
/// says why, and tells a caller who is neither admin nor tenant nothing
/// about the tenants; `admin_group` names the group in it.
pub fn decide(
    who: &Who,
    asked: Option<&str>,
    tenants: &[(&str, u32)],
    admin_group: Option<&str>,
) -> Result<Grant, String> {
    let admin = who.admin.is_some();
    let own: Vec<&str> = tenants
        .iter()
        .filter(|(_, uid)| *uid == who.uid)
        .map(|(name, _)| *name)
        .collect();
    let nobody = || {
        let group = match admin_group {
            Some(g) => format!("not in admin_group ({g})"),
            None => "no admin_group is configured".to_string(),
        };
        format!(
            "{} may not use berth ctl: it is not root, {group}, and not the user of a tenant",
            who.describe()
        )
    };
    let only = |own: &[&str]| {
        format!(
            "{} acts only on its own tenant ({})",
            who.describe(),
            own.join(", ")
        )
    };
    match asked {
        Some(name) if admin => {
            if tenants.iter().any(|(n, _)| *n == name) {
                Ok(Grant {
                    tenant: name.to_string(),
                    admin,
                })
            } else {
                Err(format!("no tenant {name:?} in the configuration"))
            }
        }
        Some(name) if own.contains(&name) => Ok(Grant {
            tenant: name.to_string(),
            admin,
        }),
        Some(name) if !own.is_empty() => Err(format!("{}, not {name:?}", only(&own))),
        Some(_) => Err(nobody()),
        // An admin names the tenant even when it is the user of one: what
        // it acts on is never implied.
        None if admin => Err(format!(
            "{} acts on every tenant: name one with --tenant NAME",
            who.describe()
        )),
        None => match own.as_slice() {
            [one] => Ok(Grant {
                tenant: one.to_string(),
                admin,
            }),
            [] => Err(nobody()),
            several => Err(format!(
                "{} is the user of tenants {}: name one with --tenant NAME",
                who.describe(),
                several.join(", ")
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(uid: u32, admin: Option<Admin>) -> Who {
        Who {
            uid,
            pid: Some(1),
            user: Some(format!("u{uid}")),
            admin,
        }
    }

    const TENANTS: &[(&str, u32)] = &[("alice", 1001), ("bob", 1002), ("x", 1003), ("y", 1003)];

    fn grant(tenant: &str, admin: bool) -> Result<Grant, String> {
        Ok(Grant {
            tenant: tenant.into(),
            admin,
        })
    }

    #[test]
    fn admins_act_on_every_tenant_and_must_name_one() {
        for (uid, admin) in [
            (0, Admin::Root),
            (500, Admin::Berth),
            (501, Admin::Group("ops".into())),
            // The user of a tenant in admin_group.
            (1001, Admin::Group("ops".into())),
        ] {
            let w = who(uid, Some(admin));
            assert_eq!(decide(&w, Some("bob"), TENANTS, None), grant("bob", true));
            let e = decide(&w, None, TENANTS, None).unwrap_err();
            assert!(e.contains("--tenant"), "{e}");
            let e = decide(&w, Some("carol"), TENANTS, None).unwrap_err();
            assert!(e.contains("no tenant \"carol\""), "{e}");
        }
    }

    #[test]
    fn a_tenants_user_acts_on_its_own_tenant_only() {
        let alice = who(1001, None);
        assert_eq!(decide(&alice, None, TENANTS, None), grant("alice", false));
        assert_eq!(
            decide(&alice, Some("alice"), TENANTS, None),
            grant("alice", false)
        );
        let e = decide(&alice, Some("bob"), TENANTS, None).unwrap_err();
        assert!(
            e.contains("only on its own tenant (alice), not \"bob\""),
            "{e}"
        );
        // Whether a tenant exists is not told apart.
        let e2 = decide(&alice, Some("carol"), TENANTS, None).unwrap_err();
        assert_eq!(
            e.replace("\"bob\"", "?"),
            e2.replace("\"carol\"", "?"),
            "naming a tenant that does not exist reads the same"
        );
        // The user of two tenants names one.
        let xy = who(1003, None);
        let e = decide(&xy, None, TENANTS, None).unwrap_err();
        assert!(e.contains("tenants x, y"), "{e}");
        assert_eq!(decide(&xy, Some("y"), TENANTS, None), grant("y", false));
    }

    #[test]
    fn anyone_else_is_refused_and_learns_nothing() {
        let stranger = who(2000, None);
        let e = decide(&stranger, None, TENANTS, Some("ops")).unwrap_err();
        assert!(e.contains("uid 2000 (u2000) may not use berth ctl"), "{e}");
        assert!(e.contains("not in admin_group (ops)"), "{e}");
        assert_eq!(
            decide(&stranger, Some("alice"), TENANTS, Some("ops")).unwrap_err(),
            e
        );
        assert_eq!(
            decide(&stranger, Some("nobody"), TENANTS, Some("ops")).unwrap_err(),
            e
        );
        let e = decide(&stranger, None, TENANTS, None).unwrap_err();
        assert!(e.contains("no admin_group is configured"), "{e}");
    }

    #[test]
    fn root_is_an_admin_and_an_unknown_uid_is_nobody() {
        let w = Who::resolve(0, None, 12345, None);
        assert_eq!(w.admin, Some(Admin::Root));
        assert_eq!(w.user.as_deref(), Some("root"));
        // A uid without a passwd entry is in no group.
        let w = Who::resolve(3_999_999_999, None, 12345, Some("root"));
        assert_eq!((w.admin, w.user), (None, None));
    }
}
