//! `[defaults.limits]` and `[tenant.T.limits]`: what each tenant's processes
//! may use, applied by the supervisor to every app process and CGI script it
//! starts.
//!
//! Layering, last wins: built-in defaults ([`Limits::default`]) →
//! `[defaults.limits]` → the tenant's `limits` table. Only `open_files` so far;
//! every other key in these tables is reported as unknown.

use super::bounded;
use super::reader::TableReader;

/// The limits of one tenant's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// RLIMIT_NOFILE, soft and hard, of each process: set in the child before
    /// exec, so apps never inherit the front end's (raised) limit.
    pub open_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { open_files: 1024 }
    }
}

/// The most `open_files` may be: the kernel's default `fs.nr_open`, above
/// which no hard limit can be set.
const MAX_OPEN_FILES: i64 = 1 << 20;
/// Fewer descriptors than this and an interpreter cannot even start.
const MIN_OPEN_FILES: i64 = 16;

/// Reads a `limits` table over `base`.
pub fn read_limits(mut t: TableReader<'_>, base: Limits) -> Limits {
    let walk = t.walk();
    let mut limits = base;
    if let Some(n) = bounded(
        walk,
        t.integer("open_files"),
        MIN_OPEN_FILES,
        MAX_OPEN_FILES,
    ) {
        limits.open_files = n as u64;
    }
    t.finish();
    limits
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

    #[test]
    fn limits_tables_refuse_other_keys_and_out_of_range_values() {
        let problems = load(&format!(
            "[defaults.limits]\nmemory = \"1GiB\"\n{TENANT}[tenant.t.limits]\nopen_files = 8\n"
        ))
        .unwrap_err();
        let text = problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            text.contains(":5: defaults.limits.memory: unknown key; expected one of: open_files"),
            "{text}"
        );
        assert!(
            text.contains(":9: tenant.t.limits.open_files: must be between 16 and 1048576"),
            "{text}"
        );
    }
}
