//! `berth check --tenant NAME --explain`: a tenant's effective configuration,
//! every value with where it comes from (built-in, `[defaults]`, the
//! administrator's block, the tenant's own file, `[enforce]`), each app's
//! isolation with it, and every override that was refused. It answers the question an administrator is
//! asked most: "my setting does nothing".
//!
//! Values are the ones berth runs on (the loaded [`Config`]); origins are
//! found by reading the same files again for the line of each key, last
//! layer first.

use std::collections::HashMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use super::app::{POOL_KEYS, Pool};
use super::own::OwnState;
use super::problem::printable;
use super::reader::Source;
use super::{Action, App, Config, isolation, show_duration};

/// Where each key of one file is, dotted (`tenant.alice.limits.memory`).
struct Lines {
    file: PathBuf,
    keys: HashMap<String, usize>,
}

impl Lines {
    fn read(file: &Path, text: Option<String>) -> Lines {
        let text = text.or_else(|| std::fs::read_to_string(file).ok());
        let mut keys = HashMap::new();
        if let Some(text) = text {
            let src = Source::new(file.to_path_buf(), text);
            if let Ok(doc) = toml_edit::Document::parse(src.text().to_string()) {
                let mut out = Vec::new();
                super::own::leaves_of(&src, doc.as_table(), &mut out);
                for (k, line) in out {
                    keys.entry(k).or_insert(line);
                }
            }
        }
        Lines {
            file: file.to_path_buf(),
            keys,
        }
    }

    fn at(&self, key: &str) -> Option<String> {
        self.keys
            .get(key)
            .map(|line| format!("{}:{line}", self.file.display()))
    }
}

/// The explanation of tenant `name`, or why there is none.
pub fn explain(config: &Config, name: &str) -> Result<String, String> {
    let t = config
        .tenants
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = config.tenants.iter().map(|t| t.name.as_str()).collect();
            format!("no tenant {name:?} (tenants: {})", names.join(", "))
        })?;
    let main = Lines::read(&config.layers.main, None);
    let block = Lines::read(&t.origin.file, None);
    let own = t.own.as_ref().and_then(|o| {
        o.used
            .as_ref()
            .map(|text| Lines::read(&o.path, Some(text.to_string())))
    });
    let prefix = format!("tenant.{name}");
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "tenant {name}: user {} (uid {}, gid {}), home {}",
        t.user,
        t.uid,
        t.gid,
        t.home.display()
    );
    let _ = writeln!(w, "  defined at {}", t.origin);
    match &t.own {
        None => {
            let _ = writeln!(w, "  own file: not allowed (no own_config for this tenant)");
        }
        Some(o) => {
            let _ = writeln!(w, "  own file {}", o.summary());
        }
    }
    if !t.allowed_commands.is_empty() {
        let list: Vec<String> = t
            .allowed_commands
            .iter()
            .map(|c| c.display().to_string())
            .collect();
        let _ = writeln!(w, "  allowed_commands: {}", list.join(", "));
    }
    let locks: Vec<String> = config
        .layers
        .locks
        .iter()
        .chain(&t.locked)
        .map(|l| format!("{} ({}:{})", l.pattern.join("."), l.file.display(), l.line))
        .collect();
    if !locks.is_empty() {
        let _ = writeln!(w, "  locked: {}", locks.join(", "));
    }

    let lowered: Vec<&super::Problem> = config
        .notes
        .iter()
        .filter(|n| n.why.starts_with(&format!("lowers tenant {name}'s ")))
        .collect();
    let changed: Vec<&super::Problem> = config
        .notes
        .iter()
        .filter(|n| n.why.starts_with(&format!("sets tenant {name}'s app ")))
        .collect();
    let _ = writeln!(w, "\nlimits");
    for (k, value) in t.limits.shown() {
        let enforced = lowered
            .iter()
            .find(|n| n.key == format!("enforce.limits.{k}"));
        let origin = match enforced {
            Some(n) => format!("enforce {}:{} ({})", n.file.display(), n.line, n.why),
            None => origin(&[
                (own.as_ref(), format!("limits.{k}"), "own file"),
                (Some(&block), format!("{prefix}.limits.{k}"), "admin block"),
                (Some(&main), format!("defaults.limits.{k}"), "defaults"),
            ]),
        };
        row(w, k, &value, &origin);
    }

    for app in &t.apps {
        let whose = if app.own {
            format!("own file, {}", app.origin)
        } else {
            format!("administrator's, {}", app.origin)
        };
        let _ = writeln!(w, "\napp {} ({whose})", app.name);
        for (k, value) in app_values(app) {
            let own_key = format!("app.{}.{k}", app.name);
            let origin = if POOL_KEYS.contains(&k) {
                let admin_key = (!app.own).then(|| format!("{prefix}.app.{}.{k}", app.name));
                origin(&[
                    (own.as_ref(), own_key, "own file"),
                    (
                        admin_key.as_ref().map(|_| &block),
                        admin_key.unwrap_or_default(),
                        "admin block",
                    ),
                    (Some(&main), format!("defaults.app.{k}"), "defaults"),
                ])
            } else if app.own {
                origin(&[(own.as_ref(), own_key, "own file")])
            } else {
                origin(&[(
                    Some(&block),
                    format!("{prefix}.app.{}.{k}", app.name),
                    "admin block",
                )])
            };
            row(w, k, &value, &origin);
        }
        let handler = config.discovery.as_ref().is_some_and(|d| {
            d.settings.handlers.iter().any(|h| {
                h.app.origin.file == app.origin.file && h.app.origin.line == app.origin.line
            })
        });
        for (k, value) in isolation::shown(&app.isolation) {
            let key = format!("isolation.{k}");
            let note = changed.iter().find(|n| {
                n.key == format!("enforce.isolation.{k}")
                    && n.why
                        .starts_with(&format!("sets tenant {name}'s app {} ", app.name))
            });
            let origin = match (note, config.layers.isolation.place(k)) {
                (Some(n), _) => format!("enforce {}:{} ({})", n.file.display(), n.line, n.why),
                (None, Some(p)) => format!("enforce {p}"),
                (None, None) => {
                    let mut layers = Vec::new();
                    if !handler {
                        layers.push((own.as_ref(), format!("app.{}.{key}", app.name), "own file"));
                        layers.push((own.as_ref(), key.clone(), "own file"));
                        if !app.own {
                            layers.push((
                                Some(&block),
                                format!("{prefix}.app.{}.{key}", app.name),
                                "admin block",
                            ));
                        }
                        layers.push((Some(&block), format!("{prefix}.{key}"), "admin block"));
                    }
                    layers.push((Some(&main), format!("defaults.{key}"), "defaults"));
                    origin(&layers)
                }
            };
            row(w, &key, &value, &origin);
        }
    }

    for site in &t.sites {
        let _ = writeln!(
            w,
            "\nsite {} (root {}, {}:{})",
            site.hosts.join(" "),
            site.root.display(),
            site.lines.file.display(),
            site.lines.hosts
        );
        let mut routes: Vec<_> = site.routes.iter().collect();
        routes.sort_by(|a, b| a.path.cmp(&b.path));
        for r in routes {
            let what = match &r.action {
                Action::Static => "static files".to_string(),
                Action::Redirect { to, status } => {
                    format!("redirect {status} {}", printable(to))
                }
                Action::App { app, extensions } if extensions.is_empty() => format!("app {app}"),
                Action::App { app, extensions } => {
                    format!("app {app} for .{}", extensions.join(" ."))
                }
            };
            let what = match &r.auth {
                Some(a) => format!(
                    "{what}, password ({})",
                    printable(&a.htpasswd.to_string_lossy())
                ),
                None => what,
            };
            let what = match &r.balance {
                Some(b) => format!("{what}, {}", super::cluster::describe(b)),
                None => what,
            };
            let origin = match (&site.own, &t.own, r.own) {
                (Some(o), _, true) => format!("site file {}:{}", o.path.display(), r.line),
                (None, Some(o), true) => format!("own file {}:{}", o.path.display(), r.line),
                _ if site.lines.hosts == 0 => {
                    format!("discovered {}", site.lines.file.display())
                }
                _ => format!("admin block {}:{}", site.lines.file.display(), r.line),
            };
            row(w, &r.path, &what, &origin);
        }
    }

    let refused: Vec<String> = t
        .own_files()
        .filter(|o| matches!(o.state, OwnState::Refused { .. }))
        .flat_map(|o| o.problems.iter().map(|p| p.to_string()))
        .collect();
    let _ = writeln!(w, "\nrefused");
    if refused.is_empty() && lowered.is_empty() && changed.is_empty() {
        let _ = writeln!(w, "  nothing");
    }
    for p in refused {
        let _ = writeln!(w, "  {p}");
    }
    for n in lowered {
        let _ = writeln!(w, "  {n} (by [enforce.limits])");
    }
    for n in changed {
        let _ = writeln!(w, "  {n} (by [enforce.isolation])");
    }
    Ok(out)
}

/// "LAYER FILE:LINE" of the first layer (last applied) that sets its key,
/// else "built-in".
fn origin(layers: &[(Option<&Lines>, String, &str)]) -> String {
    for (lines, key, name) in layers {
        if let Some(at) = lines.and_then(|l| l.at(key)) {
            return format!("{name} {at}");
        }
    }
    "built-in".to_string()
}

fn row(w: &mut String, key: &str, value: &str, origin: &str) {
    let _ = writeln!(w, "  {key:<20} {value:<28} {origin}");
}

/// An app's keys and values as a user writes them.
fn app_values(app: &App) -> Vec<(&'static str, String)> {
    let mut out = vec![
        ("protocol", format!("{:?}", app.protocol).to_lowercase()),
        ("command", format!("{:?}", app.command)),
        ("dir", app.dir.display().to_string()),
    ];
    if !app.env.is_empty() {
        let env: Vec<String> = app.env.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        out.push(("env", env.join(" ")));
    }
    out.extend(pool_values(&app.pool));
    out
}

fn pool_values(p: &Pool) -> Vec<(&'static str, String)> {
    vec![
        ("min_processes", p.min_processes.to_string()),
        ("max_processes", p.max_processes.to_string()),
        ("concurrency", p.concurrency.to_string()),
        ("idle_timeout", show_duration(p.idle_timeout)),
        ("max_requests", p.max_requests.to_string()),
        ("start_timeout", show_duration(p.start_timeout)),
        ("stop_timeout", show_duration(p.stop_timeout)),
        ("timeout", show_duration(p.timeout)),
        ("queue", p.queue.to_string()),
        ("request_buffering", p.request_buffering.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    /// A key added to the pool and not here would be explained by nothing.
    #[test]
    fn every_pool_key_is_explained() {
        let shown: Vec<&str> = super::pool_values(&Default::default())
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(shown, super::POOL_KEYS);
    }
}
