//! `[defaults.limits]`, `[tenant.T.limits]` and `[enforce.limits]`: what each
//! tenant may use. The supervisor applies them to every app process and CGI
//! script it starts (cgroup, rlimits) and the front end to the tenant's
//! requests (`concurrency`, `queue`).
//!
//! Layering: built-in defaults ([`Limits::default`]) → `[defaults.limits]` →
//! the tenant's `limits` table → `[enforce.limits]`, a ceiling: the smaller
//! value wins, and `berth check` notes every value it lowers.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::reader::{At, TableReader};
use super::{bounded, duration, show_size};

/// The limits of one tenant. `None` is "unlimited".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// All of the tenant's processes together, bytes (the cgroup's
    /// `memory.max`, swap held to the same).
    pub memory: Option<u64>,
    /// One process, bytes: above it after a request, the process is retired
    /// gracefully and a new one takes its place.
    pub process_memory: Option<u64>,
    /// Processes and threads together (`pids.max`).
    pub tasks: Option<u32>,
    /// Cores, in thousandths (`cpu.max`): 500 is half a core.
    pub cpu_millis: Option<u32>,
    /// RLIMIT_NOFILE, soft and hard, of each process: set in the child before
    /// exec, so apps never inherit the front end's (raised) limit.
    pub open_files: u64,
    /// The tenant's requests in its apps at once (entry processes); static
    /// files do not count.
    pub concurrency: u32,
    /// Requests waiting for one of those places; past it, `overflow_status`.
    pub queue: u32,
    /// The longest a request waits in that queue.
    pub queue_timeout: Duration,
    /// The status of a request refused at the limit (503, or LVE's 508, or
    /// 429), with `Retry-After`.
    pub overflow_status: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: Some(1 << 30),
            process_memory: None,
            tasks: Some(256),
            // Unlimited: being in a cpu cgroup at all costs throughput
            // (docs/limits.md); a tenant given a `cpu` limit pays it.
            cpu_millis: None,
            open_files: 1024,
            concurrency: 32,
            queue: 64,
            queue_timeout: Duration::from_secs(30),
            overflow_status: 503,
        }
    }
}

/// The most `open_files` may be: the kernel's default `fs.nr_open`, above
/// which no hard limit can be set.
const MAX_OPEN_FILES: i64 = 1 << 20;
/// Fewer descriptors than this and an interpreter cannot even start.
const MIN_OPEN_FILES: i64 = 16;
/// Below this a tenant's interpreters cannot start (php-cgi alone takes ~10 MiB).
const MIN_MEMORY: u64 = 16 << 20;
/// Below this one process cannot serve a request.
const MIN_PROCESS_MEMORY: u64 = 4 << 20;
/// The largest memory figure berth writes (1 TiB).
const MAX_MEMORY: u64 = 1 << 40;
/// A shell and the program it starts.
const MIN_TASKS: i64 = 4;
const MAX_TASKS: i64 = 4_194_304;
/// `cpu.max` takes a quota of at least 1 ms per 100 ms period.
const MIN_CPU: f64 = 0.01;
const MAX_CPU: f64 = 4096.0;

/// The word that lifts a limit (for `memory`, `process_memory`, `tasks`, `cpu`).
const UNLIMITED: &str = "unlimited";

impl Limits {
    /// Every key with its value as a user writes it, in the documented
    /// order (for `berth check --explain` and `berth ctl status`).
    pub fn shown(&self) -> Vec<(&'static str, String)> {
        let unlimited = || UNLIMITED.to_string();
        let size = |v: Option<u64>| v.map_or_else(unlimited, show_size);
        vec![
            ("memory", size(self.memory)),
            ("process_memory", size(self.process_memory)),
            (
                "tasks",
                self.tasks.map_or_else(unlimited, |n| n.to_string()),
            ),
            (
                "cpu",
                self.cpu_millis
                    .map_or_else(unlimited, |m| format!("{}", f64::from(m) / 1000.0)),
            ),
            ("open_files", self.open_files.to_string()),
            ("concurrency", self.concurrency.to_string()),
            ("queue", self.queue.to_string()),
            ("queue_timeout", super::show_duration(self.queue_timeout)),
            ("overflow_status", self.overflow_status.to_string()),
        ]
    }

    /// The amounts in `mine` that are above `admin`'s: (key, mine, admin's),
    /// as a user writes them. A tenant's own file may only lower them
    /// (`overflow_status` is no amount: it may choose it).
    pub fn raised(admin: &Limits, mine: &Limits) -> Vec<(&'static str, String, String)> {
        fn above<T: PartialOrd>(mine: Option<T>, admin: Option<T>) -> bool {
            match (mine, admin) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(m), Some(a)) => m > a,
            }
        }
        let checks = [
            above(mine.memory, admin.memory),
            above(mine.process_memory, admin.process_memory),
            above(mine.tasks, admin.tasks),
            above(mine.cpu_millis, admin.cpu_millis),
            mine.open_files > admin.open_files,
            mine.concurrency > admin.concurrency,
            mine.queue > admin.queue,
            mine.queue_timeout > admin.queue_timeout,
        ];
        let (a, m) = (admin.shown(), mine.shown());
        checks
            .iter()
            .zip(a.into_iter().zip(m))
            .filter(|(up, _)| **up)
            .map(|(_, ((k, a), (_, m)))| (k, m, a))
            .collect()
    }
}

/// Reads a `limits` table over `base`.
pub fn read_limits(mut t: TableReader<'_>, base: Limits) -> Limits {
    let mut l = base;
    if let Some(v) = memory(&mut t, "memory", MIN_MEMORY) {
        l.memory = v;
    }
    if let Some(v) = memory(&mut t, "process_memory", MIN_PROCESS_MEMORY) {
        l.process_memory = v;
    }
    if let Some(v) = tasks(&mut t) {
        l.tasks = v;
    }
    if let Some(v) = cpu(&mut t) {
        l.cpu_millis = v;
    }
    read_common(&mut t, &mut l);
    if let Some(s) = t.integer("overflow_status") {
        match s.value {
            429 | 500..=599 => l.overflow_status = s.value as u16,
            _ => t
                .walk()
                .problem(s.line, &s.key, "must be 429 or a 5xx status"),
        }
    }
    t.finish();
    l
}

/// The keys `[enforce.limits]` shares with the tenants' tables.
fn read_common(t: &mut TableReader<'_>, l: &mut Limits) {
    let walk = t.walk();
    if let Some(n) = bounded(
        walk,
        t.integer("open_files"),
        MIN_OPEN_FILES,
        MAX_OPEN_FILES,
    ) {
        l.open_files = n as u64;
    }
    if let Some(n) = bounded(walk, t.integer("concurrency"), 1, 100_000) {
        l.concurrency = n as u32;
    }
    if let Some(n) = bounded(walk, t.integer("queue"), 0, 1_000_000) {
        l.queue = n as u32;
    }
    if let Some(d) = duration(walk, t.string("queue_timeout")) {
        l.queue_timeout = d;
    }
}

/// `memory` or `process_memory`: a size or "unlimited". None when absent or
/// invalid (a problem is reported), Some(None) for "unlimited".
fn memory(t: &mut TableReader<'_>, k: &'static str, min: u64) -> Option<Option<u64>> {
    if t.peek_str(k).is_some_and(|s| s == UNLIMITED) {
        t.string(k);
        return Some(None);
    }
    let at = t.size(k)?;
    if at.value < min || at.value > MAX_MEMORY {
        t.walk().problem(
            at.line,
            &at.key,
            format!(
                "must be between {} and {}, or \"unlimited\"",
                show_size(min),
                show_size(MAX_MEMORY)
            ),
        );
        return None;
    }
    Some(Some(at.value))
}

fn tasks(t: &mut TableReader<'_>) -> Option<Option<u32>> {
    if t.peek_str("tasks").is_some_and(|s| s == UNLIMITED) {
        t.string("tasks");
        return Some(None);
    }
    let at = t.integer("tasks")?;
    if at.value < MIN_TASKS || at.value > MAX_TASKS {
        t.walk().problem(
            at.line,
            &at.key,
            format!("must be between {MIN_TASKS} and {MAX_TASKS}, or \"unlimited\""),
        );
        return None;
    }
    Some(Some(at.value as u32))
}

fn cpu(t: &mut TableReader<'_>) -> Option<Option<u32>> {
    if t.peek_str("cpu").is_some_and(|s| s == UNLIMITED) {
        t.string("cpu");
        return Some(None);
    }
    let at = t.number("cpu")?;
    if !(MIN_CPU..=MAX_CPU).contains(&at.value) {
        t.walk().problem(
            at.line,
            &at.key,
            format!("must be between {MIN_CPU} and {MAX_CPU} cores (0.5 is half a core), or \"unlimited\""),
        );
        return None;
    }
    Some(Some((at.value * 1000.0).round() as u32))
}

/// `[enforce.limits]`: ceilings over every tenant's effective limits. Each
/// is kept with where it was written, for `berth check`'s notes.
#[derive(Debug, Clone, Default)]
pub struct Ceiling {
    memory: Option<At<u64>>,
    process_memory: Option<At<u64>>,
    tasks: Option<At<u64>>,
    cpu_millis: Option<At<u64>>,
    open_files: Option<At<u64>>,
    concurrency: Option<At<u64>>,
    queue: Option<At<u64>>,
    queue_timeout: Option<At<u64>>,
}

/// A value that `[enforce.limits]` lowered, for `berth check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lowered {
    /// The line of the ceiling, and its key (`enforce.limits.memory`).
    pub line: usize,
    pub key: String,
    pub tenant: String,
    pub from: String,
    pub to: String,
}

/// Reads `[enforce.limits]`. Ceilings are values: "unlimited" is no ceiling
/// (leave the key out).
pub fn read_ceiling(mut t: TableReader<'_>) -> Ceiling {
    let mut c = Ceiling::default();
    let keep = |t: &TableReader<'_>, k: &str, value: u64| {
        t.place(k).map(|(line, key)| At { value, line, key })
    };
    let no_ceiling = |t: &TableReader<'_>, k: &str| {
        t.problem(k, "a ceiling is a value; leave the key out for none")
    };
    match memory(&mut t, "memory", MIN_MEMORY) {
        Some(Some(v)) => c.memory = keep(&t, "memory", v),
        Some(None) => no_ceiling(&t, "memory"),
        None => {}
    }
    match memory(&mut t, "process_memory", MIN_PROCESS_MEMORY) {
        Some(Some(v)) => c.process_memory = keep(&t, "process_memory", v),
        Some(None) => no_ceiling(&t, "process_memory"),
        None => {}
    }
    match tasks(&mut t) {
        Some(Some(v)) => c.tasks = keep(&t, "tasks", v.into()),
        Some(None) => no_ceiling(&t, "tasks"),
        None => {}
    }
    match cpu(&mut t) {
        Some(Some(v)) => c.cpu_millis = keep(&t, "cpu", v.into()),
        Some(None) => no_ceiling(&t, "cpu"),
        None => {}
    }
    let mut l = Limits::default();
    read_common(&mut t, &mut l);
    c.open_files = keep(&t, "open_files", l.open_files);
    c.concurrency = keep(&t, "concurrency", l.concurrency.into());
    c.queue = keep(&t, "queue", l.queue.into());
    c.queue_timeout = keep(&t, "queue_timeout", l.queue_timeout.as_millis() as u64);
    t.finish();
    c
}

impl Ceiling {
    /// Lowers `l` to the ceilings; returns what it lowered.
    pub fn apply(&self, tenant: &str, l: &mut Limits) -> Vec<Lowered> {
        let mut out = Vec::new();
        let mut note = |c: &At<u64>, from: String, to: String| {
            out.push(Lowered {
                line: c.line,
                key: c.key.clone(),
                tenant: tenant.to_string(),
                from,
                to,
            })
        };
        let unlimited = || UNLIMITED.to_string();
        let size = |v: Option<u64>| v.map_or_else(unlimited, show_size);
        if let Some(c) = &self.memory
            && l.memory.is_none_or(|m| m > c.value)
        {
            note(c, size(l.memory), show_size(c.value));
            l.memory = Some(c.value);
        }
        if let Some(c) = &self.process_memory
            && l.process_memory.is_none_or(|m| m > c.value)
        {
            note(c, size(l.process_memory), show_size(c.value));
            l.process_memory = Some(c.value);
        }
        if let Some(c) = &self.tasks
            && l.tasks.is_none_or(|m| u64::from(m) > c.value)
        {
            note(
                c,
                l.tasks.map_or_else(unlimited, |v| v.to_string()),
                c.value.to_string(),
            );
            l.tasks = Some(c.value as u32);
        }
        let cores = |m: u64| format!("{}", m as f64 / 1000.0);
        if let Some(c) = &self.cpu_millis
            && l.cpu_millis.is_none_or(|m| u64::from(m) > c.value)
        {
            note(
                c,
                l.cpu_millis.map_or_else(unlimited, |m| cores(m.into())),
                cores(c.value),
            );
            l.cpu_millis = Some(c.value as u32);
        }
        if let Some(c) = &self.open_files
            && l.open_files > c.value
        {
            note(c, l.open_files.to_string(), c.value.to_string());
            l.open_files = c.value;
        }
        if let Some(c) = &self.concurrency
            && u64::from(l.concurrency) > c.value
        {
            note(c, l.concurrency.to_string(), c.value.to_string());
            l.concurrency = c.value as u32;
        }
        if let Some(c) = &self.queue
            && u64::from(l.queue) > c.value
        {
            note(c, l.queue.to_string(), c.value.to_string());
            l.queue = c.value as u32;
        }
        let ms = |m: u64| format!("{m}ms");
        if let Some(c) = &self.queue_timeout
            && l.queue_timeout.as_millis() as u64 > c.value
        {
            note(c, ms(l.queue_timeout.as_millis() as u64), ms(c.value));
            l.queue_timeout = Duration::from_millis(c.value);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    /// Loads a main file made of `[server]` and `rest`.
    fn load(rest: &str) -> Result<crate::config::Config, crate::config::Problems> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.toml");
        std::fs::write(
            &path,
            format!("[server]\nlisten = [\"127.0.0.1:1\"]\nuser = \"daemon\"\n{rest}"),
        )
        .unwrap();
        crate::config::load(&path)
    }

    fn open_files(rest: &str) -> u64 {
        let cfg = load(rest).unwrap_or_else(|p| panic!("{p:?}"));
        cfg.tenants[0].limits.open_files
    }

    /// A tenant running as `nobody`, which every system has.
    const TENANT: &str = "[tenant.t]\nuser = \"nobody\"\n";

    #[test]
    fn open_files_layers_builtin_defaults_then_the_tenant() {
        assert_eq!(open_files(TENANT), 1024);
        let defaults = "[defaults.limits]\nopen_files = 2048\n";
        assert_eq!(open_files(&format!("{defaults}{TENANT}")), 2048);
        let own = "[tenant.t.limits]\nopen_files = 512\n";
        assert_eq!(open_files(&format!("{defaults}{TENANT}{own}")), 512);
        assert_eq!(open_files(&format!("{TENANT}{own}")), 512);
    }

    fn limits(rest: &str) -> super::Limits {
        let cfg = load(rest).unwrap_or_else(|p| panic!("{p}"));
        cfg.tenants[0].limits
    }

    fn problems(rest: &str) -> String {
        load(rest)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn every_limit_layers_builtin_defaults_then_defaults_then_the_tenant() {
        let builtin = limits(TENANT);
        assert_eq!(builtin, super::Limits::default());
        let defaults = "[defaults.limits]\nmemory = \"512MiB\"\nprocess_memory = \"256MiB\"\n\
                        tasks = 64\ncpu = 1\nconcurrency = 16\nqueue = 8\nqueue_timeout = \"5s\"\n\
                        overflow_status = 508\n";
        let l = limits(&format!("{defaults}{TENANT}"));
        assert_eq!(l.memory, Some(512 << 20));
        assert_eq!(l.process_memory, Some(256 << 20));
        assert_eq!(l.tasks, Some(64));
        assert_eq!(l.cpu_millis, Some(1000));
        assert_eq!(
            (
                l.concurrency,
                l.queue,
                l.queue_timeout.as_secs(),
                l.overflow_status
            ),
            (16, 8, 5, 508)
        );
        let own = "[tenant.t.limits]\nmemory = \"unlimited\"\ncpu = 0.25\ntasks = \"unlimited\"\nqueue = 0\n";
        let l = limits(&format!("{defaults}{TENANT}{own}"));
        assert_eq!(l.memory, None);
        assert_eq!(l.cpu_millis, Some(250));
        assert_eq!(l.tasks, None);
        assert_eq!(l.queue, 0);
        assert_eq!(
            l.process_memory,
            Some(256 << 20),
            "kept from [defaults.limits]"
        );
    }

    #[test]
    fn enforce_is_a_ceiling_and_check_notes_what_it_lowered() {
        let enforce = "[enforce.limits]\nmemory = \"1GiB\"\ncpu = 0.5\nconcurrency = 8\n";
        let own = "[tenant.t.limits]\nmemory = \"2GiB\"\ncpu = 0.25\nconcurrency = \"x\"\n";
        // A tenant asking for more is lowered, one asking for less keeps it.
        let text = format!("{TENANT}[tenant.t.limits]\nmemory = \"2GiB\"\ncpu = 0.25\n{enforce}");
        let cfg = load(&text).unwrap_or_else(|p| panic!("{p}"));
        let l = cfg.tenants[0].limits;
        assert_eq!(l.memory, Some(1 << 30));
        assert_eq!(l.cpu_millis, Some(250));
        assert_eq!(l.concurrency, 8, "the built-in 32 is above the ceiling");
        let notes: Vec<String> = cfg.notes.iter().map(ToString::to_string).collect();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0]
                .ends_with(":10: enforce.limits.memory: lowers tenant t's value from 2GiB to 1GiB"),
            "{notes:?}"
        );
        assert!(
            notes[1].contains("enforce.limits.concurrency: lowers tenant t's value from 32 to 8"),
            "{notes:?}"
        );
        // "unlimited" is no ceiling, and a tenant's unlimited is lowered.
        let text = problems(&format!(
            "{TENANT}{own}[enforce.limits]\nmemory = \"unlimited\"\n"
        ));
        assert!(
            text.contains("enforce.limits.memory: a ceiling is a value"),
            "{text}"
        );
        assert!(
            text.contains("tenant.t.limits.concurrency: expected an integer"),
            "{text}"
        );
        let cfg = load(&format!(
            "{TENANT}[tenant.t.limits]\ntasks = \"unlimited\"\n[enforce.limits]\ntasks = 100\n"
        ))
        .unwrap();
        assert_eq!(cfg.tenants[0].limits.tasks, Some(100));
        assert!(
            cfg.notes[0].why.contains("from unlimited to 100"),
            "{:?}",
            cfg.notes
        );
    }

    #[test]
    fn limits_refuse_values_out_of_range_with_the_place() {
        let text = problems(&format!(
            "{TENANT}[tenant.t.limits]\nmemory = \"1MiB\"\ncpu = \"fast\"\ntasks = 2\n\
             overflow_status = 200\nqueue_timeout = \"soon\"\nprocess_memory = \"lots\"\n"
        ));
        for want in [
            ":7: tenant.t.limits.memory: must be between 16MiB and 1TiB, or \"unlimited\"",
            ":8: tenant.t.limits.cpu: expected a number, found string",
            ":9: tenant.t.limits.tasks: must be between 4 and 4194304",
            ":10: tenant.t.limits.overflow_status: must be 429 or a 5xx status",
            ":11: tenant.t.limits.queue_timeout: \"soon\" is not a duration",
            ":12: tenant.t.limits.process_memory: is not a size",
        ] {
            assert!(text.contains(want), "{want}\n in:\n{text}");
        }
        let text = problems(&format!("{TENANT}[tenant.t.limits]\ncpu = 0.001\n"));
        assert!(
            text.contains("tenant.t.limits.cpu: must be between 0.01 and 4096 cores"),
            "{text}"
        );
    }

    #[test]
    fn limits_tables_refuse_other_keys_and_out_of_range_values() {
        let problems = load(&format!(
            "[defaults.limits]\nmemroy = \"1GiB\"\n{TENANT}[tenant.t.limits]\nopen_files = 8\n"
        ))
        .unwrap_err();
        let text = problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            text.contains(
                ":5: defaults.limits.memroy: unknown key; expected one of: memory, process_memory"
            ),
            "{text}"
        );
        assert!(
            text.contains(":9: tenant.t.limits.open_files: must be between 16 and 1048576"),
            "{text}"
        );
    }
}
