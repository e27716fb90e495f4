//! A problem a user caused in a configuration file, and the list of them.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem: `file:line: key: why`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is about the file as a whole (unreadable, ...).
    pub line: usize,
    /// Dotted key path, e.g. `tenant.alice.site[0].root`.
    pub key: String,
    pub why: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.why)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.file.display(),
                self.line,
                self.key,
                self.why
            )
        }
    }
}

/// Every problem found while loading; loading goes on past the first one so the
/// user sees them all at once.
#[derive(Debug, Default, Clone)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn push(
        &mut self,
        file: &Path,
        line: usize,
        key: impl Into<String>,
        why: impl Into<String>,
    ) {
        self.0.push(Problem {
            file: file.to_path_buf(),
            line,
            key: key.into(),
            why: why.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.0.iter()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.0 {
            writeln!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}
