//! `isolation` tables: how each app is isolated ([`crate::isolation`]),
//! read from the TOML walk into the [`Settings`] of every [`App`].
//!
//! Keys: `namespaces` (true: the app's own view of the machine),
//! `network` ("host" or "none": loopback only), `seccomp` ("on" or "off"),
//! `allow` (calls of the filter's deny list let through), `bind` and
//! `read_only` (paths added to the view, read-write and read-only).
//!
//! Layering, key by key, later wins (a list replaces the earlier list):
//! built-in ([`Settings::default`]) → `[defaults.isolation]` →
//! `[tenant.T.isolation]` → `[tenant.T.app.A.isolation]` → the tenant's own
//! file, which may only tighten (`[isolation]`, then `[app.A.isolation]`:
//! `namespaces = true`, `seccomp = "on"`, `network = "none"`) →
//! `[enforce.isolation]`, which can only demand the same three and
//! overrides every app's layers (`berth check` notes each app it changes).
//! A discovery handler's apps take `[defaults.isolation]` alone.
//!
//! What no layer may leave behind: `network = "none"` without the view
//! (the network namespace is part of it), `network = "none"` for an app
//! that binds its own port (`bind = "port"`: the front end could not reach
//! it), a path both in `bind` and `read_only`. Each is reported at the key
//! of the layer that made it so.

use std::fmt;
use std::path::PathBuf;

use crate::isolation::seccomp::DENIED;
use crate::isolation::{Network, Settings};

use super::app::{App, Bind};
use super::reader::{At, TableReader, Walk};
use super::{Problem, Problems, Tenant};

/// Where a value was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub file: PathBuf,
    pub line: usize,
    /// The full dotted key (`tenant.alice.isolation.network`).
    pub key: String,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

impl Place {
    fn of<T>(walk: &Walk<'_>, at: &At<T>) -> Place {
        Place {
            file: walk.file().to_path_buf(),
            line: at.line,
            key: at.key.clone(),
        }
    }
}

/// One `isolation` table as written: the keys it sets, each with its place.
#[derive(Debug, Clone, Default)]
pub struct Layer {
    namespaces: Option<(bool, Place)>,
    network: Option<(Network, Place)>,
    seccomp: Option<(bool, Place)>,
    allow: Option<(Vec<String>, Place)>,
    bind: Option<(Vec<PathBuf>, Place)>,
    read_only: Option<(Vec<PathBuf>, Place)>,
}

/// Settings with where each key was last set (None: built-in).
#[derive(Debug, Clone, Default)]
pub struct Layered {
    pub settings: Settings,
    pub from: Origins,
}

/// Where the keys of a [`Layered`] that problems name come from.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    pub namespaces: Option<Place>,
    pub network: Option<Place>,
    pub bind: Option<Place>,
    pub read_only: Option<Place>,
}

/// The keys an `isolation` table takes, in the documented order (and
/// `--explain`'s).
pub const KEYS: &[&str] = &[
    "namespaces",
    "network",
    "seccomp",
    "allow",
    "bind",
    "read_only",
];

/// What a tenant's own file may write, in words for its problems.
const TIGHTEN: &str = "your file may only tighten isolation (namespaces = true, seccomp = \"on\", network = \"none\")";

fn show_network(n: Network) -> &'static str {
    match n {
        Network::Host => "host",
        Network::None => "none",
    }
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// Every key of `s` with its value as a user writes it, in [`KEYS`]' order
/// (for `berth check --explain`).
pub fn shown(s: &Settings) -> Vec<(&'static str, String)> {
    let list = |v: Vec<String>| format!("{v:?}");
    let paths = |p: &[PathBuf]| list(p.iter().map(|p| p.display().to_string()).collect());
    let namespaces = if s.required {
        format!("{} (required)", s.namespaces)
    } else {
        s.namespaces.to_string()
    };
    vec![
        ("namespaces", namespaces),
        ("network", format!("{:?}", show_network(s.network))),
        ("seccomp", format!("{:?}", on_off(s.seccomp))),
        ("allow", list(s.allow.clone())),
        ("bind", paths(&s.bind)),
        ("read_only", paths(&s.read_only)),
    ]
}

/// A key that takes one of a few words: the value of the word written, or
/// a problem saying which words it takes (`expected`).
fn read_word<T: Copy>(
    t: &mut TableReader<'_>,
    key: &'static str,
    words: &[(&str, T)],
    expected: &str,
) -> Option<At<T>> {
    let at = t.string(key)?;
    let Some(&(_, value)) = words.iter().find(|(w, _)| *w == at.value) else {
        let why = format!("{:?}: expected {expected}", at.value);
        t.walk().problem(at.line, &at.key, why);
        return None;
    };
    Some(At {
        value,
        line: at.line,
        key: at.key,
    })
}

/// `network`: "host" or "none".
fn read_network(t: &mut TableReader<'_>) -> Option<At<Network>> {
    read_word(
        t,
        "network",
        &[("host", Network::Host), ("none", Network::None)],
        "\"host\" (the machine's network) or \"none\" (loopback only)",
    )
}

/// `seccomp`: "on" or "off" (a boolean is refused with what to write).
fn read_seccomp(t: &mut TableReader<'_>) -> Option<At<bool>> {
    if t.peek_str("seccomp").is_none() && t.place("seccomp").is_some() {
        t.problem("seccomp", "expected \"on\" or \"off\"");
        t.skip("seccomp");
        return None;
    }
    read_word(
        t,
        "seccomp",
        &[("on", true), ("off", false)],
        "\"on\" or \"off\"",
    )
}

/// Reads an administrator's `isolation` table (`[defaults.isolation]`,
/// a tenant's or an app's): every key, each checked on its own.
pub fn read_layer(mut t: TableReader<'_>) -> Layer {
    let walk = t.walk();
    let mut layer = Layer {
        namespaces: t
            .boolean("namespaces")
            .map(|b| (b.value, Place::of(walk, &b))),
        network: read_network(&mut t).map(|n| (n.value, Place::of(walk, &n))),
        seccomp: read_seccomp(&mut t).map(|s| (s.value, Place::of(walk, &s))),
        ..Layer::default()
    };
    if let Some(at) = t.strings("allow") {
        let mut names: Vec<String> = Vec::new();
        for name in &at.value {
            if !DENIED.contains(&name.as_str()) {
                walk.problem(
                    at.line,
                    &at.key,
                    format!(
                        "{name:?} is not a call the seccomp filter refuses: allow names calls of its deny list, such as \"ptrace\" or \"io_uring_setup\""
                    ),
                );
            } else if names.contains(name) {
                walk.problem(at.line, &at.key, format!("{name:?} is listed twice"));
            } else {
                names.push(name.clone());
            }
        }
        layer.allow = Some((names, Place::of(walk, &at)));
    }
    layer.bind = read_paths(&mut t, "bind");
    layer.read_only = read_paths(&mut t, "read_only");
    t.finish();
    layer
}

/// `bind` or `read_only`: absolute plain paths that exist, not `/`, none
/// twice.
fn read_paths(t: &mut TableReader<'_>, k: &'static str) -> Option<(Vec<PathBuf>, Place)> {
    let at = t.strings(k)?;
    let walk = t.walk();
    let mut out: Vec<PathBuf> = Vec::new();
    for p in &at.value {
        match view_path(p) {
            Err(why) => walk.problem(at.line, &at.key, why),
            Ok(path) if out.contains(&path) => {
                walk.problem(at.line, &at.key, format!("{p:?} is listed twice"))
            }
            Ok(path) => out.push(path),
        }
    }
    Some((out, Place::of(walk, &at)))
}

/// A path added to the view, at the same place: absolute, plain (as
/// [`super::plain_path`] would leave it, written so), not `/`, there, and
/// not reached through a symbolic link (the view binds what the path names
/// where it names it; through a link the two differ).
fn view_path(p: &str) -> Result<PathBuf, String> {
    if !p.starts_with('/') {
        return Err(format!(
            "{p:?} must be an absolute path, such as \"/usr/share/php\""
        ));
    }
    if p.chars().any(char::is_control) {
        return Err(format!("{p:?} must not contain control characters"));
    }
    if p == "/" {
        return Err(
            "\"/\" is the whole machine, which the view is made from: name the directories or files to add"
                .into(),
        );
    }
    if p[1..]
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(format!(
            "{p:?} must be a plain path: no '.' or '..', no '//', no '/' at the end"
        ));
    }
    let path = PathBuf::from(p);
    debug_assert_eq!(super::plain_path(&path), path);
    match std::fs::canonicalize(&path) {
        Ok(real) if real != path => Err(format!(
            "{p} is reached through a symbolic link (it is {}): give the real path",
            real.display()
        )),
        Ok(_) => Ok(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "{p}: no such file or directory (the view could not be built)"
        )),
        Err(e) => Err(format!("{p}: {e} (the view could not be built)")),
    }
}

impl Layered {
    /// `layer` over these settings, key by key. What the result leaves
    /// inconsistent because of `layer` is reported at `layer`'s key.
    pub fn over(&self, walk: &Walk<'_>, layer: Option<&Layer>) -> Layered {
        let Some(layer) = layer else {
            return self.clone();
        };
        let mut out = self.clone();
        let (s, from) = (&mut out.settings, &mut out.from);
        if let Some((v, at)) = &layer.namespaces {
            s.namespaces = *v;
            from.namespaces = Some(at.clone());
        }
        if let Some((v, at)) = &layer.network {
            s.network = *v;
            from.network = Some(at.clone());
        }
        if let Some((v, _)) = &layer.seccomp {
            s.seccomp = *v;
        }
        if let Some((v, _)) = &layer.allow {
            s.allow = v.clone();
        }
        if let Some((v, at)) = &layer.bind {
            s.bind = v.clone();
            from.bind = Some(at.clone());
        }
        if let Some((v, at)) = &layer.read_only {
            s.read_only = v.clone();
            from.read_only = Some(at.clone());
        }
        out.report(walk, layer);
        out
    }

    /// The problems of these settings that `layer` (just applied) made.
    fn report(&self, walk: &Walk<'_>, layer: &Layer) {
        let (s, from) = (&self.settings, &self.from);
        let at = |p: &Option<Place>| match p {
            Some(p) if p.file == walk.file() => format!("line {}", p.line),
            Some(p) => p.to_string(),
            None => "built-in".into(),
        };
        if s.network == Network::None && !s.namespaces {
            match (&layer.namespaces, &layer.network) {
                (_, Some((Network::None, p))) => walk.problem(
                    p.line,
                    &p.key,
                    format!(
                        "\"none\" needs the app's own view, which namespaces = false ({}) turns off: the network namespace is part of the view (set namespaces = true here too)",
                        at(&from.namespaces)
                    ),
                ),
                (Some((false, p)), _) => walk.problem(
                    p.line,
                    &p.key,
                    format!(
                        "false turns off the app's own view, but network = \"none\" ({}) needs it: the network namespace is part of the view (set network = \"host\" here too, or keep the view)",
                        at(&from.network)
                    ),
                ),
                _ => {}
            }
        }
        let both = |mine: &Option<(Vec<PathBuf>, Place)>,
                    theirs: &[PathBuf],
                    other: &str,
                    other_at: &Option<Place>| {
            if let Some((paths, p)) = mine {
                for path in paths.iter().filter(|x| theirs.contains(x)) {
                    walk.problem(
                        p.line,
                        &p.key,
                        format!(
                            "{} is also in {other} ({}): a path is added read-write or read-only, not both",
                            path.display(),
                            at(other_at)
                        ),
                    );
                }
            }
        };
        both(&layer.bind, &s.read_only, "read_only", &from.read_only);
        if layer.bind.is_none() {
            both(&layer.read_only, &s.bind, "bind", &from.bind);
        }
    }
}

/// An app that binds its own port (`bind = "port"`, at `bind_at`) cannot
/// have a network namespace: the port would be bound in it, out of the
/// front end's reach. Reported at its `bind` key.
pub fn check_bind(walk: &Walk<'_>, app: &App, bind_at: Option<(usize, String)>, layered: &Layered) {
    if app.bind != Bind::Port || layered.settings.network != Network::None {
        return;
    }
    let Some((line, key)) = bind_at else { return };
    let from = layered
        .from
        .network
        .as_ref()
        .map_or_else(|| "built-in".to_string(), |p| format!("{} at {p}", p.key));
    walk.problem(
        line,
        &key,
        format!(
            "\"port\" needs the machine's network, but the app has network = \"none\" ({from}): the port it binds would be in a network namespace of its own, out of the front end's reach (set network = \"host\" in its isolation table, or let berth bind its socket)"
        ),
    );
}

/// Reads an `isolation` table of a tenant's own file: only what tightens
/// what the administrator's layers give `targets` (the apps, by name, that
/// the table applies to, with their settings). Everything else is refused,
/// at its key.
pub fn read_own(mut t: TableReader<'_>, targets: &[(String, &Settings)]) -> Layer {
    let walk = t.walk();
    let mut layer = Layer::default();
    if let Some(b) = t.boolean("namespaces") {
        if b.value {
            layer.namespaces = Some((true, Place::of(walk, &b)));
        } else {
            walk.problem(
                b.line,
                &b.key,
                format!(
                    "false would turn off the app's own view: only the administrator loosens isolation; {TIGHTEN}"
                ),
            );
        }
    }
    if let Some(s) = read_seccomp(&mut t) {
        if s.value {
            layer.seccomp = Some((true, Place::of(walk, &s)));
        } else {
            walk.problem(
                s.line,
                &s.key,
                format!(
                    "\"off\" would turn off the seccomp filter: only the administrator loosens isolation; {TIGHTEN}"
                ),
            );
        }
    }
    if let Some(n) = read_network(&mut t) {
        let closed = targets
            .iter()
            .find(|(_, s)| s.network == Network::None && n.value == Network::Host);
        match closed {
            Some((who, _)) => walk.problem(
                n.line,
                &n.key,
                format!(
                    "\"host\" would give {who} the network the administrator took away (network = \"none\"): only the administrator loosens isolation; {TIGHTEN}"
                ),
            ),
            None => layer.network = Some((n.value, Place::of(walk, &n))),
        }
    }
    for k in ["allow", "bind", "read_only"] {
        if t.place(k).is_some() {
            t.problem(
                k,
                format!("only the administrator sets {k} (it loosens isolation); {TIGHTEN}"),
            );
        }
        t.skip(k);
    }
    t.finish();
    layer
}

impl Layer {
    /// Applies this layer to `s` (an own file's: it only tightens, and
    /// `--explain` finds its origins itself).
    pub fn apply(&self, s: &mut Settings) {
        if let Some((b, _)) = &self.namespaces {
            s.namespaces = *b;
        }
        if let Some((n, _)) = &self.network {
            s.network = *n;
        }
        if let Some((b, _)) = &self.seccomp {
            s.seccomp = *b;
        }
    }

    /// Where this layer sets `network = "none"`, if it does.
    pub fn closes_network(&self) -> Option<&Place> {
        match &self.network {
            Some((Network::None, p)) => Some(p),
            _ => None,
        }
    }
}

/// What a tenant's own file left inconsistent for `app` by closing its
/// network at `closed` (`network = "none"` of its `[isolation]` or of the
/// app's): the administrator keeps the app's view off, or the app binds its
/// own port. Reported at `closed`.
pub fn check_own(walk: &Walk<'_>, app: &App, closed: &Place) {
    if app.isolation.network != Network::None {
        return;
    }
    let name = &app.name;
    if !app.isolation.namespaces {
        walk.problem(
            closed.line,
            &closed.key,
            format!(
                "\"none\" needs app {name:?}'s own view, which the administrator turned off (namespaces = false): the network namespace is part of the view (write namespaces = true too)"
            ),
        );
    } else if app.bind == Bind::Port {
        walk.problem(
            closed.line,
            &closed.key,
            format!(
                "app {name:?} binds its own port (bind = \"port\"): in a network namespace of its own the front end could not reach it"
            ),
        );
    }
}

/// `[enforce.isolation]`: what every app gets whatever its layers say. It
/// only demands isolation; each key kept with where it was written.
#[derive(Debug, Clone, Default)]
pub struct Enforce {
    /// `namespaces = true`: every app has its view, and it is required.
    pub namespaces: Option<Place>,
    /// `seccomp = "on"`.
    pub seccomp: Option<Place>,
    /// `network = "none"`.
    pub network: Option<Place>,
}

/// What `[enforce.isolation]` takes, in words for its problems.
const DEMANDS: &str = "[enforce.isolation] only demands isolation: namespaces = true, seccomp = \"on\", network = \"none\"";

/// Reads `[enforce.isolation]`.
pub fn read_enforce(mut t: TableReader<'_>) -> Enforce {
    let walk = t.walk();
    let mut e = Enforce::default();
    if let Some(b) = t.boolean("namespaces") {
        if b.value {
            e.namespaces = Some(Place::of(walk, &b));
        } else {
            walk.problem(
                b.line,
                &b.key,
                format!("false would loosen isolation; {DEMANDS} (leave the key out to let each app's layers choose)"),
            );
        }
    }
    if let Some(s) = read_seccomp(&mut t) {
        if s.value {
            e.seccomp = Some(Place::of(walk, &s));
        } else {
            walk.problem(
                s.line,
                &s.key,
                format!("\"off\" would loosen isolation; {DEMANDS} (leave the key out to let each app's layers choose)"),
            );
        }
    }
    if let Some(n) = read_network(&mut t) {
        if n.value == Network::None {
            e.network = Some(Place::of(walk, &n));
        } else {
            walk.problem(
                n.line,
                &n.key,
                format!("\"host\" would loosen isolation; {DEMANDS} (leave the key out to let each app's layers choose)"),
            );
        }
    }
    for k in ["allow", "bind", "read_only"] {
        if t.place(k).is_some() {
            t.problem(
                k,
                format!("is not enforced: {DEMANDS}; set {k} in [defaults.isolation], a tenant's or an app's"),
            );
        }
        t.skip(k);
    }
    if let (Some(p), None) = (&e.network, &e.namespaces) {
        walk.problem(
            p.line,
            &p.key,
            "\"none\" needs every app's own view: the network namespace is part of it (enforce namespaces = true too)",
        );
    }
    t.finish();
    e
}

impl Enforce {
    /// `s` with what is enforced; what changed, as (key, from, to).
    pub fn apply(&self, s: &mut Settings) -> Vec<(&Place, String, String)> {
        let mut changed = Vec::new();
        if let Some(p) = &self.namespaces {
            if !s.namespaces {
                changed.push((p, "false".into(), "true".into()));
                s.namespaces = true;
            }
            s.required = true;
        }
        if let Some(p) = &self.seccomp
            && !s.seccomp
        {
            changed.push((p, "\"off\"".into(), "\"on\"".into()));
            s.seccomp = true;
        }
        if let Some(p) = &self.network
            && s.network != Network::None
        {
            changed.push((p, "\"host\"".into(), "\"none\"".into()));
            s.network = Network::None;
        }
        changed
    }

    /// Applies to each of `t`'s apps (and to what its new apps start from);
    /// returns a note for each value of an app it changed.
    pub fn apply_to(&self, t: &mut Tenant) -> Vec<Problem> {
        self.apply(&mut t.isolation);
        let mut notes = Vec::new();
        for app in &mut t.apps {
            for (p, from, to) in self.apply(&mut app.isolation) {
                notes.push(Problem {
                    file: p.file.clone(),
                    line: p.line,
                    key: p.key.clone(),
                    why: format!(
                        "sets tenant {}'s app {} to {to} (its layers say {from})",
                        t.name, app.name
                    ),
                });
            }
        }
        notes
    }

    /// The place of the enforced key `k` (one of [`KEYS`]), if it is.
    pub fn place(&self, k: &str) -> Option<&Place> {
        match k {
            "namespaces" => self.namespaces.as_ref(),
            "seccomp" => self.seccomp.as_ref(),
            "network" => self.network.as_ref(),
            _ => None,
        }
    }

    /// Apps of the administrator's (and discovery handlers, as
    /// `(name, app)`) that an enforced `network = "none"` would cut off:
    /// they bind their own port. Each is a problem at the enforced key.
    pub fn check_apps<'a>(
        &self,
        apps: impl Iterator<Item = (String, &'a App)>,
        problems: &mut Problems,
    ) {
        let Some(p) = &self.network else { return };
        for (who, app) in apps.filter(|(_, a)| a.bind == Bind::Port) {
            problems.push(
                &p.file,
                p.line,
                &p.key,
                format!(
                    "{who} binds its own port (bind = \"port\", {}): in the network namespace this demands, the front end could not reach it",
                    app.origin
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, Problems, load};

    /// (Run as root, as the suite is: the front end is nobody, the tenants
    /// daemon and bin, min_uid is 1.)
    const SERVER: &str = "[server]\nlisten = [\"127.0.0.1:1\"]\nuser = \"nobody\"\nmin_uid = 1\n";

    /// A tenant running as `daemon`, which every system has, with two CGI
    /// apps (no command: nothing for suEXEC's checks to look at).
    const TENANT: &str = "[tenant.t]\nuser = \"daemon\"\n\
        [tenant.t.app.a]\nprotocol = \"cgi\"\n\
        [tenant.t.app.b]\nprotocol = \"cgi\"\n";

    /// The main file `[server]` + `rest`, in `dir`: its path and what loading
    /// it gives.
    fn load_in(dir: &Path, rest: &str) -> (PathBuf, Result<Config, Problems>) {
        let path = dir.join("berth.toml");
        std::fs::write(&path, format!("{SERVER}{rest}")).unwrap();
        let loaded = load(&path);
        (path, loaded)
    }

    fn loaded(dir: &Path, rest: &str) -> Config {
        load_in(dir, rest).1.unwrap_or_else(|p| panic!("{p}"))
    }

    fn problems(dir: &Path, rest: &str) -> Vec<String> {
        match load_in(dir, rest).1 {
            Ok(_) => panic!("loads:\n{rest}"),
            Err(p) => p.iter().map(ToString::to_string).collect(),
        }
    }

    /// The 1-based line of the first line of `[server]` + `rest` that
    /// contains `needle`.
    fn line(rest: &str, needle: &str) -> usize {
        format!("{SERVER}{rest}")
            .lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} not in:\n{rest}"))
            + 1
    }

    /// Asserts that one of `problems` ends with `:LINE: KEY: WHY...`.
    fn has(problems: &[String], line: usize, key: &str, why: &str) {
        let want = format!(":{line}: {key}: {why}");
        assert!(
            problems.iter().any(|p| p.contains(&want)),
            "no {want:?} in:\n{}",
            problems.join("\n")
        );
    }

    fn app<'a>(cfg: &'a Config, tenant: &str, name: &str) -> &'a Settings {
        let t = cfg.tenants.iter().find(|t| t.name == tenant).unwrap();
        &t.apps.iter().find(|a| a.name == name).unwrap().isolation
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// A key added to the tables and not to `--explain` would be explained
    /// by nothing.
    #[test]
    fn every_isolation_key_is_explained() {
        let shown: Vec<&str> = shown(&Settings::default())
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(shown, KEYS);
        let dir = tempfile::tempdir().unwrap();
        let p = problems(
            dir.path(),
            &format!("{TENANT}[tenant.t.isolation]\nx = 1\n"),
        );
        assert!(
            p[0].ends_with(&format!(
                "unknown key; expected one of: {}",
                KEYS.join(", ")
            )),
            "{p:?}"
        );
    }

    #[test]
    fn isolation_layers_builtin_defaults_tenant_then_app_key_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["share", "ro", "cache"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        let cfg = loaded(d, TENANT);
        assert_eq!(*app(&cfg, "t", "a"), Settings::default(), "built-in");
        assert_eq!(cfg.tenants[0].isolation, Settings::default());

        let rest = format!(
            "[defaults.isolation]\nseccomp = \"off\"\nallow = [\"ptrace\"]\nbind = [\"{d}/share\"]\n\
             network = \"none\"\n\
             {TENANT}\
             [tenant.t.isolation]\nseccomp = \"on\"\nallow = [\"bpf\"]\n\
             [tenant.t.app.a.isolation]\nallow = [\"io_uring_setup\", \"io_uring_enter\"]\n\
             read_only = [\"{d}/ro\"]\nnetwork = \"host\"\n\
             [tenant.u]\nuser = \"bin\"\n\
             [tenant.u.app.c]\nprotocol = \"cgi\"\nisolation = {{ bind = [\"{d}/cache\"] }}\n",
            d = d.display()
        );
        let cfg = loaded(d, &rest);
        let share = vec![d.join("share")];
        // a: its own allow, read_only and network over the tenant's seccomp
        // over the defaults' bind.
        assert_eq!(
            *app(&cfg, "t", "a"),
            Settings {
                namespaces: true,
                network: Network::Host,
                seccomp: true,
                allow: strings(&["io_uring_setup", "io_uring_enter"]),
                bind: share.clone(),
                read_only: vec![d.join("ro")],
                required: false,
            }
        );
        // b: the tenant's over the defaults'.
        let b = Settings {
            namespaces: true,
            network: Network::None,
            seccomp: true,
            allow: strings(&["bpf"]),
            bind: share.clone(),
            read_only: Vec::new(),
            required: false,
        };
        assert_eq!(*app(&cfg, "t", "b"), b);
        assert_eq!(cfg.tenants[0].isolation, b, "what its new apps start from");
        // Another tenant: the defaults', and its app's list replaces theirs.
        let c = app(&cfg, "u", "c");
        assert_eq!(
            (c.seccomp, c.network, &c.allow, &c.bind),
            (
                false,
                Network::None,
                &strings(&["ptrace"]),
                &vec![d.join("cache")]
            )
        );
    }

    #[test]
    fn isolation_keys_refuse_what_they_do_not_take_at_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let rest = format!(
            "[defaults.isolation]\nnamespaces = \"yes\"\nnetwork = \"private\"\nseccomp = true\n\
             allow = [\"read\", \"ptrace\", \"ptrace\"]\nmount = [\"/usr\"]\n{TENANT}\
             [tenant.t.isolation]\nseccomp = \"strict\"\n"
        );
        let p = problems(dir.path(), &rest);
        let l = |n: &str| line(&rest, n);
        has(
            &p,
            l("namespaces = \"yes\""),
            "defaults.isolation.namespaces",
            "expected true or false",
        );
        has(
            &p,
            l("\"private\""),
            "defaults.isolation.network",
            "\"private\": expected \"host\"",
        );
        has(
            &p,
            l("seccomp = true"),
            "defaults.isolation.seccomp",
            "expected \"on\" or \"off\"",
        );
        has(
            &p,
            l("allow ="),
            "defaults.isolation.allow",
            "\"read\" is not a call the seccomp filter refuses",
        );
        has(
            &p,
            l("allow ="),
            "defaults.isolation.allow",
            "\"ptrace\" is listed twice",
        );
        has(
            &p,
            l("mount ="),
            "defaults.isolation.mount",
            "unknown key; expected one of: namespaces",
        );
        has(
            &p,
            l("\"strict\""),
            "tenant.t.isolation.seccomp",
            "\"strict\": expected \"on\" or \"off\"",
        );
        // Nothing long: the message names two calls, not the whole list.
        let allow = p.iter().find(|x| x.contains("\"read\"")).unwrap();
        assert!(allow.len() < 250, "{allow}");
    }

    #[test]
    fn bind_and_read_only_take_existing_plain_absolute_paths_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("real")).unwrap();
        std::fs::write(d.join("real/file"), "x").unwrap();
        std::os::unix::fs::symlink(d.join("real"), d.join("link")).unwrap();
        let d = d.display();
        for (paths, why) in [
            (
                "\"usr/share\"".to_string(),
                "\"usr/share\" must be an absolute path",
            ),
            ("\"/\"".into(), "\"/\" is the whole machine"),
            (format!("\"{d}/real/../real\""), "must be a plain path"),
            (format!("\"{d}/./real\""), "must be a plain path"),
            (format!("\"{d}//real\""), "must be a plain path"),
            (format!("\"{d}/real/\""), "must be a plain path"),
            (
                format!("\"{d}/missing\""),
                "missing: no such file or directory (the view could not be built)",
            ),
            (
                format!("\"{d}/link/file\""),
                "link/file is reached through a symbolic link",
            ),
            (
                format!("\"{d}/real\", \"{d}/real\""),
                "real\" is listed twice",
            ),
        ] {
            for key in ["bind", "read_only"] {
                let rest = format!("{TENANT}[tenant.t.app.a.isolation]\n{key} = [{paths}]\n");
                let p = problems(dir.path(), &rest);
                has(
                    &p,
                    line(&rest, key),
                    &format!("tenant.t.app.a.isolation.{key}"),
                    "",
                );
                assert!(p.iter().any(|x| x.contains(why)), "{paths}: {p:?}");
                assert_eq!(p.len(), 1, "{p:?}");
            }
        }
        // A file is as good as a directory.
        let rest = format!("{TENANT}[tenant.t.app.a.isolation]\nread_only = [\"{d}/real/file\"]\n");
        loaded(dir.path(), &rest);
        // A path is read-write or read-only, not both: reported where the
        // second list is written, in the same table or a later layer.
        let rest = format!(
            "[defaults.isolation]\nbind = [\"{d}/real\"]\n{TENANT}\
             [tenant.t.isolation]\nread_only = [\"{d}/real/file\", \"{d}/real\"]\n"
        );
        let p = problems(dir.path(), &rest);
        has(
            &p,
            line(&rest, "read_only"),
            "tenant.t.isolation.read_only",
            &format!("{d}/real is also in bind (line {})", line(&rest, "bind =")),
        );
        assert_eq!(p.len(), 1, "{p:?}");
    }

    #[test]
    fn network_none_without_the_view_is_refused_at_the_layer_that_made_it() {
        let dir = tempfile::tempdir().unwrap();
        // The defaults close the network; a tenant turns the view off.
        let rest = format!(
            "[defaults.isolation]\nnetwork = \"none\"\n{TENANT}\
             [tenant.t.isolation]\nnamespaces = false\n"
        );
        let p = problems(dir.path(), &rest);
        has(
            &p,
            line(&rest, "namespaces = false"),
            "tenant.t.isolation.namespaces",
            &format!(
                "false turns off the app's own view, but network = \"none\" (line {}) needs it",
                line(&rest, "network")
            ),
        );
        assert_eq!(p.len(), 1, "once, not per app: {p:?}");
        // Both in one app's table: at `network`.
        let rest =
            format!("{TENANT}[tenant.t.app.b.isolation]\nnamespaces = false\nnetwork = \"none\"\n");
        let p = problems(dir.path(), &rest);
        has(
            &p,
            line(&rest, "network"),
            "tenant.t.app.b.isolation.network",
            "\"none\" needs the app's own view, which namespaces = false (line",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        // The view off with the network host's is fine, and so is an app
        // that turns the view back on under a tenant that turned it off.
        loaded(
            dir.path(),
            &format!("{TENANT}[tenant.t.isolation]\nnamespaces = false\n"),
        );
        let cfg = loaded(
            dir.path(),
            &format!(
                "{TENANT}[tenant.t.isolation]\nnamespaces = false\n\
                 [tenant.t.app.a.isolation]\nnamespaces = true\nnetwork = \"none\"\n"
            ),
        );
        assert_eq!(
            (app(&cfg, "t", "a").namespaces, app(&cfg, "t", "a").network),
            (true, Network::None)
        );
        assert!(!app(&cfg, "t", "b").namespaces);
    }

    #[test]
    fn network_none_for_an_app_that_binds_its_own_port_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let port_app = "[tenant.t.app.p]\nprotocol = \"http\"\ncommand = [\"/bin/true\"]\n\
                        dir = \"/\"\nbind = \"port\"\nopen_port = true\n";
        let rest = format!("[defaults.isolation]\nnetwork = \"none\"\n{TENANT}{port_app}");
        let p = problems(dir.path(), &rest);
        has(
            &p,
            line(&rest, "bind = \"port\""),
            "tenant.t.app.p.bind",
            "\"port\" needs the machine's network, but the app has network = \"none\" (defaults.isolation.network at ",
        );
        // Its own isolation table gives it the host's network back.
        let rest = format!(
            "[defaults.isolation]\nnetwork = \"none\"\n{TENANT}{port_app}isolation = {{ network = \"host\" }}\n"
        );
        if let Err(p) = load_in(dir.path(), &rest).1 {
            assert!(
                !p.iter()
                    .any(|x| x.to_string().contains("isolation") || x.key.ends_with(".bind")),
                "{p}"
            );
        }
    }

    #[test]
    fn enforce_isolation_only_demands_isolation() {
        let dir = tempfile::tempdir().unwrap();
        let rest = format!(
            "{TENANT}[enforce.isolation]\nnamespaces = false\nseccomp = \"off\"\nnetwork = \"host\"\n\
             allow = [\"ptrace\"]\nbind = [\"/usr\"]\nread_only = [\"/usr\"]\nhostname = \"x\"\n"
        );
        let p = problems(dir.path(), &rest);
        let l = |n: &str| line(&rest, n);
        has(
            &p,
            l("namespaces = false"),
            "enforce.isolation.namespaces",
            "false would loosen isolation; [enforce.isolation] only demands isolation",
        );
        has(
            &p,
            l("\"off\""),
            "enforce.isolation.seccomp",
            "\"off\" would loosen isolation",
        );
        has(
            &p,
            l("\"host\""),
            "enforce.isolation.network",
            "\"host\" would loosen isolation",
        );
        for k in ["allow", "bind", "read_only"] {
            has(
                &p,
                l(&format!("{k} =")),
                &format!("enforce.isolation.{k}"),
                "is not enforced: [enforce.isolation] only demands",
            );
        }
        has(
            &p,
            l("hostname"),
            "enforce.isolation.hostname",
            "unknown key; expected one of: namespaces, seccomp, network",
        );
        assert_eq!(p.len(), 7, "{p:?}");
        // `network = "none"` needs the view demanded with it.
        let rest = format!("{TENANT}[enforce.isolation]\nnetwork = \"none\"\n");
        let p = problems(dir.path(), &rest);
        has(
            &p,
            line(&rest, "network"),
            "enforce.isolation.network",
            "\"none\" needs every app's own view",
        );
    }

    #[test]
    fn enforce_isolation_overrides_every_app_and_notes_each_change() {
        let dir = tempfile::tempdir().unwrap();
        let rest = format!(
            "[defaults.isolation]\nseccomp = \"off\"\n{TENANT}\
             [tenant.t.app.a.isolation]\nnamespaces = false\nseccomp = \"on\"\n\
             [enforce.isolation]\nnamespaces = true\nseccomp = \"on\"\nnetwork = \"none\"\n"
        );
        let cfg = loaded(dir.path(), &rest);
        for name in ["a", "b"] {
            let s = app(&cfg, "t", name);
            assert_eq!(
                (s.namespaces, s.required, s.seccomp, s.network),
                (true, true, true, Network::None),
                "{name}"
            );
        }
        let t = &cfg.tenants[0].isolation;
        assert!(t.namespaces && t.required && t.seccomp && t.network == Network::None);
        let notes: Vec<String> = cfg.notes.iter().map(ToString::to_string).collect();
        // (The keys of [enforce.isolation], in the order written.)
        let enforce = line(&rest, "[enforce.isolation]");
        let l = |n: &str| match n {
            "namespaces = true" => enforce + 1,
            "seccomp = \"on\"" => enforce + 2,
            _ => enforce + 3,
        };
        let want = [
            format!(
                ":{}: enforce.isolation.namespaces: sets tenant t's app a to true (its layers say false)",
                l("namespaces = true")
            ),
            format!(
                ":{}: enforce.isolation.network: sets tenant t's app a to \"none\" (its layers say \"host\")",
                l("network = \"none\"")
            ),
            format!(
                ":{}: enforce.isolation.seccomp: sets tenant t's app b to \"on\" (its layers say \"off\")",
                l("seccomp = \"on\"")
            ),
            format!(
                ":{}: enforce.isolation.network: sets tenant t's app b to \"none\" (its layers say \"host\")",
                l("network = \"none\"")
            ),
        ];
        for w in &want {
            assert!(
                notes.iter().any(|n| n.ends_with(w.as_str())),
                "{w}\nin {notes:#?}"
            );
        }
        assert_eq!(notes.len(), want.len(), "{notes:#?}");
    }

    #[test]
    fn enforced_network_none_refuses_apps_that_bind_their_own_port() {
        let dir = tempfile::tempdir().unwrap();
        let rest = format!(
            "{TENANT}[tenant.t.app.p]\nprotocol = \"http\"\ncommand = [\"/bin/true\"]\n\
             dir = \"/\"\nbind = \"port\"\nopen_port = true\n\
             [enforce.isolation]\nnamespaces = true\nnetwork = \"none\"\n"
        );
        let p = problems(dir.path(), &rest);
        has(
            &p,
            line(&rest, "network = \"none\""),
            "enforce.isolation.network",
            &format!(
                "tenant t's app p binds its own port (bind = \"port\", {}:{}): in the network namespace this demands, the front end could not reach it",
                dir.path().join("berth.toml").display(),
                line(&rest, "[tenant.t.app.p]")
            ),
        );
    }

    /// What tenant t's own file `text` gives over the administrator's
    /// tenant of `cfg` (changed by `admin` first), or its problems.
    fn own(
        cfg: &Config,
        admin: impl FnOnce(&mut Tenant),
        text: &str,
    ) -> Result<Tenant, Vec<String>> {
        let mut base = cfg.layers.admin[0].clone();
        admin(&mut base);
        let path = base.home.join("berth.toml");
        cfg.layers
            .apply(&base, &path, text, super::super::own::Scope::Tenant)
            .map_err(|p| p.iter().map(ToString::to_string).collect())
    }

    fn of<'a>(t: &'a Tenant, name: &str) -> &'a Settings {
        &t.apps.iter().find(|a| a.name == name).unwrap().isolation
    }

    #[test]
    fn an_own_file_may_tighten_isolation() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = loaded(
            dir.path(),
            &format!(
                "[defaults.isolation]\nseccomp = \"off\"\n{TENANT}\
                 [tenant.t.app.a.isolation]\nnamespaces = false\n"
            ),
        );
        let text = "[isolation]\nseccomp = \"on\"\n\n\
                    [app.a.isolation]\nnamespaces = true\nnetwork = \"none\"\n\n\
                    [app.b]\nmax_processes = 2\nisolation = { network = \"host\" }\n\n\
                    [app.new]\nprotocol = \"cgi\"\nisolation.network = \"none\"\n";
        let t = own(&cfg, |_| {}, text).unwrap_or_else(|p| panic!("{p:#?}"));
        let a = of(&t, "a");
        assert_eq!(
            (a.namespaces, a.network, a.seccomp),
            (true, Network::None, true)
        );
        let b = of(&t, "b");
        assert_eq!(
            (b.namespaces, b.network, b.seccomp),
            (true, Network::Host, true)
        );
        let new = of(&t, "new");
        assert_eq!(
            (new.namespaces, new.network, new.seccomp),
            (true, Network::None, true),
            "a new app starts from the tenant's settings and its [isolation]"
        );
        assert!(t.isolation.seccomp);
    }

    #[test]
    fn an_own_file_that_would_loosen_isolation_is_refused_key_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = loaded(
            dir.path(),
            &format!("{TENANT}[tenant.t.app.b.isolation]\nnetwork = \"none\"\n"),
        );
        let text = "[isolation]\nnamespaces = false\nseccomp = \"off\"\nallow = [\"ptrace\"]\n\
                    bind = [\"/srv\"]\nread_only = [\"/srv\"]\n\n\
                    [app.b.isolation]\nnetwork = \"host\"\n\n\
                    [app.a.isolation]\nnetwork = \"host\"\nseccomp = \"lax\"\n";
        let p = own(&cfg, |_| {}, text).unwrap_err();
        let at = |n: usize, key: &str, why: &str| {
            let want = format!("berth.toml:{n}: {key}: {why}");
            assert!(p.iter().any(|x| x.contains(&want)), "{want}\nin {p:#?}");
        };
        let tighten = "your file may only tighten isolation (namespaces = true, seccomp = \"on\", network = \"none\")";
        at(
            2,
            "isolation.namespaces",
            "false would turn off the app's own view: only the administrator loosens isolation; ",
        );
        at(
            3,
            "isolation.seccomp",
            "\"off\" would turn off the seccomp filter",
        );
        for (n, k) in [(4, "allow"), (5, "bind"), (6, "read_only")] {
            at(
                n,
                &format!("isolation.{k}"),
                &format!("only the administrator sets {k} (it loosens isolation); {tighten}"),
            );
        }
        at(
            9,
            "app.b.isolation.network",
            "\"host\" would give app \"b\" the network the administrator took away (network = \"none\")",
        );
        at(
            13,
            "app.a.isolation.seccomp",
            "\"lax\": expected \"on\" or \"off\"",
        );
        assert_eq!(
            p.len(),
            7,
            "app a's \"host\" is its administrator's already: {p:#?}"
        );
        // The tenant's [isolation] "host" would open b's network too.
        let p = own(&cfg, |_| {}, "[isolation]\nnetwork = \"host\"\n").unwrap_err();
        assert!(
            p[0].contains(":2: isolation.network: \"host\" would give app \"b\""),
            "{p:?}"
        );
        // Without any "none" of the administrator's, "host" is no change.
        let cfg = loaded(dir.path(), TENANT);
        own(&cfg, |_| {}, "[isolation]\nnetwork = \"host\"\n").unwrap();
    }

    #[test]
    fn an_own_file_closing_the_network_of_an_app_that_cannot_have_its_own_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = loaded(
            dir.path(),
            &format!("{TENANT}[tenant.t.app.a.isolation]\nnamespaces = false\n"),
        );
        // The administrator turned a's view off: "none" needs it...
        let p = own(&cfg, |_| {}, "[isolation]\nnetwork = \"none\"\n").unwrap_err();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains(":2: isolation.network: \"none\" needs app \"a\"'s own view, which the administrator turned off (namespaces = false)"),
            "{p:?}"
        );
        // ... which the file may turn on itself.
        let t = own(
            &cfg,
            |_| {},
            "[isolation]\nnetwork = \"none\"\n[app.a.isolation]\nnamespaces = true\n",
        )
        .unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(of(&t, "a").network, Network::None);
        // An app that binds its own port (the administrator's choice).
        let port = |t: &mut Tenant| {
            let b = t.apps.iter_mut().find(|a| a.name == "b").unwrap();
            b.protocol = crate::config::Protocol::Http;
            b.bind = Bind::Port;
        };
        let p = own(&cfg, port, "[app.b.isolation]\nnetwork = \"none\"\n").unwrap_err();
        assert!(
            p[0].contains(
                ":2: app.b.isolation.network: app \"b\" binds its own port (bind = \"port\")"
            ),
            "{p:?}"
        );
    }

    #[test]
    fn locks_cover_an_own_files_isolation_keys() {
        let dir = tempfile::tempdir().unwrap();
        let rest =
            format!("{TENANT}[enforce]\nlocked = [\"isolation\", \"app.*.isolation.seccomp\"]\n");
        let cfg = loaded(dir.path(), &rest);
        let p = own(
            &cfg,
            |_| {},
            "[isolation]\nnetwork = \"none\"\n[app.a.isolation]\nseccomp = \"on\"\nnamespaces = true\n",
        )
        .unwrap_err();
        let locked = format!(
            "locked by the administrator ({}:{})",
            dir.path().join("berth.toml").display(),
            line(&rest, "locked")
        );
        for want in [
            format!(":2: isolation.network: {locked}"),
            format!(":4: app.a.isolation.seccomp: {locked}"),
        ] {
            assert!(p.iter().any(|x| x.contains(&want)), "{want}\nin {p:#?}");
        }
        assert_eq!(p.len(), 2, "namespaces of app a is not locked: {p:#?}");
    }

    #[test]
    fn a_sites_own_file_takes_no_isolation_of_the_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = loaded(dir.path(), TENANT);
        let base = cfg.layers.admin[0].clone();
        let p = cfg
            .layers
            .apply(
                &base,
                &dir.path().join("site/berth.toml"),
                "[isolation]\nnetwork = \"none\"\n",
                super::super::own::Scope::Site(0),
            )
            .unwrap_err();
        assert!(
            p[0].to_string()
                .contains(":1: isolation: a site's berth.toml takes app and route"),
            "{p:?}"
        );
    }

    #[test]
    fn explain_shows_each_apps_isolation_with_its_origin() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let home = d.join("home");
        std::fs::create_dir(&home).unwrap();
        std::fs::create_dir(d.join("share")).unwrap();
        let own_file = home.join("berth.toml");
        std::fs::write(&own_file, "[isolation]\nnetwork = \"none\"\n").unwrap();
        for p in [&home, &own_file] {
            rustix::fs::chown(
                p,
                Some(rustix::fs::Uid::from_raw(1)),
                Some(rustix::fs::Gid::from_raw(1)),
            )
            .unwrap();
        }
        std::fs::set_permissions(&own_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let rest = format!(
            "[defaults.isolation]\nallow = [\"ptrace\"]\n\
             [tenant.t]\nuser = \"daemon\"\nhome = \"{home}\"\nown_config = \"~/berth.toml\"\n\
             [tenant.t.app.a]\nprotocol = \"cgi\"\n[tenant.t.app.b]\nprotocol = \"cgi\"\n\
             [tenant.t.isolation]\nbind = [\"{share}\"]\n\
             [tenant.t.app.a.isolation]\nseccomp = \"off\"\n\
             [enforce.isolation]\nnamespaces = true\nseccomp = \"on\"\n",
            home = home.display(),
            share = d.join("share").display()
        );
        let cfg = loaded(d, &rest);
        let out = crate::config::explain::explain(&cfg, "t").unwrap();
        let main = d.join("berth.toml");
        let main_at = |n: &str| format!("{}:{}", main.display(), line(&rest, n));
        let row = |app: &str, key: &str| -> String {
            let start = out
                .lines()
                .position(|l| l.starts_with(&format!("app {app} ")))
                .unwrap_or_else(|| panic!("no app {app} in:\n{out}"));
            out.lines()
                .skip(start + 1)
                .take_while(|l| l.starts_with("  "))
                .find(|l| l.trim_start().starts_with(&format!("isolation.{key} ")))
                .unwrap_or_else(|| panic!("no isolation.{key} of {app} in:\n{out}"))
                .to_string()
        };
        let has = |app: &str, key: &str, want: &[&str]| {
            let r = row(app, key);
            for w in want {
                assert!(r.contains(w), "{w:?} not in {r:?}:\n{out}");
            }
        };
        has(
            "a",
            "namespaces",
            &[
                "true (required)",
                &format!("enforce {}", main_at("namespaces = true")),
            ],
        );
        has(
            "a",
            "seccomp",
            &[
                "\"on\"",
                &format!(
                    "enforce {} (sets tenant t's app a to \"on\" (its layers say \"off\"))",
                    main_at("seccomp = \"on\"")
                ),
            ],
        );
        has(
            "b",
            "seccomp",
            &[
                "\"on\"",
                &format!("enforce {}", main_at("seccomp = \"on\"")),
            ],
        );
        has(
            "a",
            "network",
            &["\"none\"", &format!("own file {}:2", own_file.display())],
        );
        has(
            "b",
            "allow",
            &["[\"ptrace\"]", &format!("defaults {}", main_at("allow"))],
        );
        has(
            "b",
            "bind",
            &[&format!("admin block {}", main_at("bind ="))],
        );
        has("b", "read_only", &["[]", "built-in"]);
        let refused = &out[out.find("\nrefused").unwrap()..];
        assert!(
            refused.contains("enforce.isolation.seccomp: sets tenant t's app a to \"on\" (its layers say \"off\") (by [enforce.isolation])"),
            "{out}"
        );
    }

    #[test]
    fn discovered_apps_take_the_defaults_isolation_and_what_is_enforced_without_a_note_each() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sites");
        let public = root.join("a.test").join(super::super::discovery::PUBLIC);
        std::fs::create_dir_all(&public).unwrap();
        for p in [root.join("a.test"), public] {
            let id = Some(rustix::fs::Uid::from_raw(2));
            rustix::fs::chown(&p, id, Some(rustix::fs::Gid::from_raw(2))).unwrap();
        }
        let handler = format!(
            "[discovery]\nroot = \"{}\"\n\
             [discovery.handler.php]\nextensions = [\"php\"]\nprotocol = \"fastcgi\"\n\
             command = [\"/bin/sh\"]\n",
            root.display()
        );
        let rest = format!(
            "[defaults.isolation]\nseccomp = \"off\"\nallow = [\"bpf\"]\n{TENANT}\
             [tenant.t.isolation]\nallow = [\"ptrace\"]\n{handler}\
             [enforce.isolation]\nnamespaces = true\n"
        );
        let cfg = loaded(dir.path(), &rest);
        let made = cfg
            .tenants
            .iter()
            .find(|t| t.name == "bin")
            .expect("bin's tenant");
        let want = Settings {
            seccomp: false,
            allow: strings(&["bpf"]),
            required: true,
            ..Settings::default()
        };
        assert_eq!(made.apps[0].isolation, want);
        assert_eq!(made.isolation, want, "what its sites' own apps start from");
        assert!(
            !cfg.notes
                .iter()
                .any(|n| n.key.starts_with("enforce.isolation")),
            "{:?}",
            cfg.notes
        );
        // A handler has no isolation table of its own.
        let rest = format!("{TENANT}{handler}isolation = {{ seccomp = \"off\" }}\n");
        let p = problems(dir.path(), &rest);
        has(
            &p,
            line(&rest, "isolation ="),
            "discovery.handler.php.isolation",
            "discovered apps take [defaults.isolation]",
        );
    }
}
