//! A problem a user caused in a configuration file, and the list of them.

use std::borrow::Cow;
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
        let (key, why) = (printable(&self.key), printable(&self.why));
        if self.line == 0 {
            write!(f, "{}: {key}: {why}", self.file.display())
        } else {
            write!(f, "{}:{}: {key}: {why}", self.file.display(), self.line)
        }
    }
}

/// `text` with its control characters written as escapes (`\u{1b}`, `\n`):
/// keys and values of a tenant's own file reach the administrator's
/// terminal (`berth check`), where they must not start a line of their own
/// or send the terminal an escape sequence.
pub fn printable(text: &str) -> Cow<'_, str> {
    let escaped = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    if !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if escaped(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_never_writes_a_control_character() {
        let p = Problem {
            file: "own.toml".into(),
            line: 3,
            key: "\u{1b}]0;x\u{7}\nforged: line".into(),
            why: "unknown key\u{9b}2J".into(),
        };
        assert_eq!(
            p.to_string(),
            r"own.toml:3: \u{1b}]0;x\u{7}\nforged: line: unknown key\u{9b}2J"
        );
    }
}
