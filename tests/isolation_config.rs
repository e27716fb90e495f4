//! The isolation keys as `berth check` sees them (issue 10): every problem
//! as `file:line: key: why` in the file it is written in (an included one
//! too), `[enforce.isolation]` noted per app it changes, a tenant's own
//! file refused for loosening isolation and kept for tightening it, and
//! `--explain` naming where each app's isolation comes from.
mod common;
use common::apps::*;
use common::berth_check as check;
use common::*;

/// Tenant `ti` (berth-tiso1, site i.test; `keys` in its table) with the
/// FastCGI app `php` (php-cgi), then `extra`.
fn tenant(dir: &Dir, home: &Home, keys: &str, extra: &str) -> String {
    let (block, _, _) = server(dir);
    let site = tenant_site("ti", home, "i.test").replace(
        "\n\n[[tenant.ti.site]]",
        &format!("\n{keys}\n[[tenant.ti.site]]"),
    );
    format!(
        "{block}{site}{php}{extra}",
        php = app_table(
            "ti",
            "php",
            "fastcgi",
            &home.public(),
            &["/usr/bin/php-cgi"],
            ""
        ),
    )
}

fn home(dir: &Dir) -> Home {
    require_root();
    let home = Home::new(dir, "ti", "berth-tiso1", ensure_user("berth-tiso1"));
    home.own();
    home
}

#[test]
fn isolation_problems_are_reported_where_written_in_the_main_and_an_included_file() {
    let dir = Dir::new();
    let h = home(&dir);
    let shared = dir.mkdir("shared");
    let included = format!(
        "[tenant.tj]\nuser = \"berth-tiso2\"\n\n\
         [tenant.tj.isolation]\nnamespaces = false\n\n\
         [tenant.tj.app.cgi]\nprotocol = \"cgi\"\n\
         isolation = {{ bind = [\"{shared}\", \"{shared}/missing\"], read_only = [\"{shared}\"] }}\n",
        shared = shared.display()
    );
    ensure_user("berth-tiso2");
    dir.write("tenants.d/tj.toml", &included);
    let main_text = tenant(
        &dir,
        &h,
        "",
        "\n[defaults.isolation]\nnetwork = \"none\"\nallow = [\"read\"]\n\n\
         [tenant.ti.app.php.isolation]\nseccomp = \"loose\"\n\n\
         [enforce.isolation]\nseccomp = \"off\"\n",
    )
    .replace("[server]\n", "[server]\ninclude = [\"tenants.d/*.toml\"]\n");
    let main = dir.write("berth.toml", &main_text);
    let inc = dir.join("tenants.d/tj.toml");
    let (code, out, err) = check(&main, &[]);
    assert_eq!(code, Some(1), "{out}{err}");
    let m = main.display();
    let i = inc.display();
    let want = [
        format!(
            "{m}:{}: defaults.isolation.allow: \"read\" is not a call the seccomp filter refuses",
            line_of(&main_text, "allow = [\"read\"]")
        ),
        format!(
            "{m}:{}: tenant.ti.app.php.isolation.seccomp: \"loose\": expected \"on\" or \"off\"",
            line_of(&main_text, "\"loose\"")
        ),
        format!(
            "{m}:{}: enforce.isolation.seccomp: \"off\" would loosen isolation",
            line_of(&main_text, "seccomp = \"off\"")
        ),
        format!(
            "{i}:{}: tenant.tj.isolation.namespaces: false turns off the app's own view, but network = \"none\" ({m}:{}) needs it",
            line_of(&included, "namespaces = false"),
            line_of(&main_text, "network = \"none\"")
        ),
        format!(
            "{i}:{}: tenant.tj.app.cgi.isolation.bind: {}/missing: no such file or directory (the view could not be built)",
            line_of(&included, "isolation = "),
            shared.display()
        ),
        format!(
            "{i}:{}: tenant.tj.app.cgi.isolation.bind: {} is also in read_only (line {}): a path is added read-write or read-only, not both",
            line_of(&included, "isolation = "),
            shared.display(),
            line_of(&included, "isolation = ")
        ),
    ];
    for w in &want {
        assert!(
            out.lines().any(|l| l.starts_with(w.as_str())),
            "{w}\nnot in:\n{out}"
        );
    }
    assert_eq!(out.lines().count(), want.len(), "{out}");
}

#[test]
fn enforce_isolation_is_noted_for_each_app_it_changes_and_check_passes() {
    let dir = Dir::new();
    let h = home(&dir);
    let text = tenant(
        &dir,
        &h,
        "",
        "\n[tenant.ti.app.php.isolation]\nseccomp = \"off\"\nallow = [\"ptrace\"]\n\n\
         [enforce.isolation]\nseccomp = \"on\"\n",
    );
    let main = dir.write("berth.toml", &text);
    let (code, out, err) = check(&main, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    let note = format!(
        "note: {}:{}: enforce.isolation.seccomp: sets tenant ti's app php to \"on\" (its layers say \"off\")",
        main.display(),
        line_of(&text, "seccomp = \"on\"")
    );
    assert!(out.lines().any(|l| l == note), "{note}\nnot in:\n{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("note:")).count(),
        1,
        "{out}"
    );
}

#[test]
fn an_own_file_that_loosens_isolation_is_refused_and_one_that_tightens_it_is_used() {
    let dir = Dir::new();
    let h = home(&dir);
    let text = tenant(
        &dir,
        &h,
        "own_config = \"~/berth.toml\"\n",
        "\n[tenant.ti.isolation]\nnetwork = \"none\"\n",
    );
    let main = dir.write("berth.toml", &text);
    let own = h.join("berth.toml");
    let loosen = "[isolation]\nseccomp = \"off\"\n\n[app.php.isolation]\nnetwork = \"host\"\nread_only = [\"/srv\"]\n";
    h.write("berth.toml", loosen, 0o644);
    h.own();
    let (code, out, err) = check(&main, &["--tenant", "ti"]);
    assert_eq!(code, Some(1), "{out}{err}");
    let o = own.display();
    for w in [
        format!(
            "{o}:2: isolation.seccomp: \"off\" would turn off the seccomp filter: only the administrator loosens isolation"
        ),
        format!(
            "{o}:5: app.php.isolation.network: \"host\" would give app \"php\" the network the administrator took away (network = \"none\")"
        ),
        format!("{o}:6: app.php.isolation.read_only: only the administrator sets read_only"),
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(&w)),
            "{w}\nnot in:\n{out}"
        );
    }
    assert!(
        out.contains("refused (3 problem(s)); the administrator's settings alone are in use"),
        "{out}"
    );
    // The whole configuration still passes: a tenant's refused file stops
    // nothing but itself.
    let (code, out, _) = check(&main, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("tenant ti: own file"), "{out}");

    // Tightening is the tenant's to do, and --explain says whose it is.
    h.write(
        "berth.toml",
        "[app.php.isolation]\nnamespaces = true\nseccomp = \"on\"\n",
        0o644,
    );
    h.own();
    let (code, out, err) = check(&main, &["--tenant", "ti", "--explain"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let row = |key: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(&format!("isolation.{key} ")))
            .unwrap_or_else(|| panic!("no isolation.{key} in:\n{out}"))
            .to_string()
    };
    assert!(
        row("seccomp").contains("\"on\"") && row("seccomp").contains(&format!("own file {o}:3")),
        "{out}"
    );
    assert!(
        row("network").contains("\"none\"")
            && row("network").contains(&format!(
                "admin block {}:{}",
                main.display(),
                line_of(&text, "network = \"none\"")
            )),
        "{out}"
    );
    assert!(row("allow").contains("built-in"), "{out}");
}
