//! The text report: a heading, the findings grouped by severity (most
//! severe first), one line each and its fix below it, then a count.
//! Colours only for a terminal; control characters in what the audit
//! quotes (file names are the tenants') are written as escapes.

use std::fmt::Write;
use std::path::Path;

use super::{Report, Severity};

pub fn text(report: &Report, config: &Path, fail_on: Severity, colour: bool) -> String {
    let paint = |code: &str, s: &str| {
        if colour {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "berth audit of {}: {}, {}, {} in {}",
        escape(&config.display().to_string()),
        count(report.tenants, "tenant", "tenants"),
        count(report.sites, "site", "sites"),
        count(report.entries, "entry", "entries"),
        count(report.roots, "site root", "site roots"),
    );
    for severity in Severity::ALL {
        let group: Vec<_> = report
            .findings
            .iter()
            .filter(|f| f.severity == severity)
            .collect();
        if group.is_empty() {
            continue;
        }
        let heading = format!("{} ({})", severity.name().to_uppercase(), group.len());
        let _ = writeln!(out, "\n{}", paint(colour_of(severity), &heading));
        for f in group {
            let _ = writeln!(
                out,
                "  {}: {} [{}]",
                escape(&f.place.to_string()),
                escape(&f.what),
                f.check
            );
            let _ = writeln!(out, "      fix: {}", escape(&f.fix));
        }
    }
    let counts: Vec<String> = Severity::ALL
        .iter()
        .map(|s| {
            let n = report.findings.iter().filter(|f| f.severity == *s).count();
            format!("{n} {s}")
        })
        .collect();
    let failing = report.at_or_above(fail_on);
    let _ = writeln!(
        out,
        "\n{}; {failing} at or above {fail_on} (--fail-on): {}",
        counts.join(", "),
        if failing > 0 { "exit 1" } else { "exit 0" }
    );
    out
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn colour_of(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "1;31",
        Severity::High => "31",
        Severity::Medium => "33",
        Severity::Low => "36",
        Severity::Info => "2",
    }
}

/// `s` with control characters as `\xNN` (and `\u{NNNN}` above the C0
/// and C1 sets), so a file name cannot move the cursor or start a line.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
            let n = c as u32;
            if n <= 0xff {
                let _ = write!(out, "\\x{n:02x}");
            } else {
                let _ = write!(out, "\\u{{{n:04x}}}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape("a\x1b[31mb\nc\u{2028}"),
            "a\\x1b[31mb\\x0ac\\u{2028}"
        );
        assert_eq!(escape("plain/päth"), "plain/päth");
    }
}
