//! Checks that need a configuration `berth check` refuses, or keys that
//! are not read yet: the configuration is loaded, then changed.

use std::os::unix::fs::PermissionsExt;

use super::*;

/// Tenants `ta` (daemon, home `ha` with its site's root) and `tb` (bin,
/// with a CGI app), the front end as nobody; `home_mode` for `ha`.
fn two_tenants(home_mode: u32) -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    for sub in ["ha/public", "hb/public"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::fs::set_permissions(d.join("ha"), std::fs::Permissions::from_mode(home_mode)).unwrap();
    // (Owned by root here: `berth check` lets a tenant publish root's.)
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:1\"]\nuser = \"nobody\"\nmin_uid = 1\ncontrol_socket = \"off\"\n\
         state_dir = \"{0}/state\"\nlog_dir = \"{0}/log\"\n\n\
         [tenant.ta]\nuser = \"daemon\"\nhome = \"{0}/ha\"\n\n\
         [[tenant.ta.site]]\nhosts = [\"a.test\"]\nroot = \"{0}/ha/public\"\n\n\
         [tenant.tb]\nuser = \"bin\"\nhome = \"{0}/hb\"\n\n\
         [tenant.tb.app.cgi]\nprotocol = \"cgi\"\n",
        d.display()
    );
    let path = d.join("berth.toml");
    std::fs::write(&path, text).unwrap();
    let cfg = crate::config::load(&path).unwrap_or_else(|p| panic!("{p}"));
    (dir, cfg)
}

fn of<'a>(report: &'a Report, check: &str) -> Vec<&'a Finding> {
    report
        .findings
        .iter()
        .filter(|f| f.check == check)
        .collect()
}

#[test]
fn homes_open_to_others_are_found_when_another_tenants_app_runs_without_isolation() {
    let (dir, mut cfg) = two_tenants(0o755);
    assert!(
        of(&run(&cfg), "isolation-off").is_empty(),
        "every app isolated: nothing to say"
    );
    cfg.tenants[1].apps[0].isolation.namespaces = false;
    let report = run(&cfg);
    let found = of(&report, "isolation-off");
    assert_eq!(found.len(), 1, "{found:#?}");
    let f = found[0];
    assert_eq!(f.severity, Severity::High);
    assert_eq!(f.place, Place::path(dir.path().join("ha")));
    assert_eq!(f.tenant.as_deref(), Some("ta"));
    assert!(f.what.contains("tenant tb's app cgi"), "{}", f.what);
    assert!(f.fix.contains("namespaces = true"), "{}", f.fix);

    // A home others may not enter: the root inside it is out of reach too.
    let (_dir, mut cfg) = two_tenants(0o750);
    cfg.tenants[1].apps[0].isolation.namespaces = false;
    assert!(of(&run(&cfg), "isolation-off").is_empty());
}

#[test]
fn tenants_sharing_a_user_are_found() {
    // (`berth check` refuses this as root; unprivileged it cannot tell.)
    let (_dir, mut cfg) = two_tenants(0o755);
    let mut twin = cfg.tenants[0].clone();
    twin.name = "tc".into();
    twin.user_line = 42;
    cfg.tenants.push(twin);
    let report = run(&cfg);
    let found = of(&report, "tenant-shared-user");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].severity, Severity::High);
    assert_eq!(found[0].tenant.as_deref(), Some("tc"));
    assert!(found[0].what.contains("tenant ta's"), "{}", found[0].what);
    assert!(matches!(&found[0].place, Place::Tenant { line: 42, .. }));
}

#[test]
fn severities_parse_and_order() {
    assert_eq!("high".parse::<Severity>(), Ok(Severity::High));
    assert!("severe".parse::<Severity>().is_err());
    assert!(Severity::Critical > Severity::High && Severity::Low > Severity::Info);
}
