//! mod_backhand's redirect names: `handover = "redirect name FORMAT"`.
//!
//! In FORMAT, with S the chosen node's name and H the request's host, both
//! split at dots into labels:
//! - `%-NS`: S without its last N labels;
//! - `%NS`: only the first N labels of S;
//! - `%-NH`: only the last N labels of H;
//! - `%NH`: H without its first N labels;
//! - `%S`, `%H`: the whole name; `%%`: a percent sign.
//!
//! So `%-2S.%-2H` for node `www3.sanfran.hosting.com` and host
//! `www.client1.com` gives `www3.sanfran.client1.com`.

/// One piece of a format.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    /// (of the node's name (else the host), minus, N)
    Labels {
        server: bool,
        minus: bool,
        n: usize,
    },
}

fn pieces(format: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = format;
    while let Some(at) = rest.find('%') {
        if at > 0 {
            out.push(Piece::Text(&rest[..at]));
        }
        let spec = &rest[at + 1..];
        if let Some(after) = spec.strip_prefix('%') {
            out.push(Piece::Text("%"));
            rest = after;
            continue;
        }
        let (minus, spec) = match spec.strip_prefix('-') {
            Some(s) => (true, s),
            None => (false, spec),
        };
        let digits = spec.len() - spec.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let n = match &spec[..digits] {
            "" if minus => return Err(format!("{format:?}: `%-` needs a number")),
            "" => None,
            d => Some(
                d.parse::<usize>()
                    .ok()
                    .filter(|n| *n <= 127)
                    .ok_or_else(|| format!("{format:?}: {d} labels is too many"))?,
            ),
        };
        let server = match spec[digits..].chars().next() {
            Some('S') => true,
            Some('H') => false,
            _ => {
                return Err(format!(
                    "{format:?}: after `%` comes [-]N and S (the node's name) or H (the host)"
                ));
            }
        };
        out.push(match n {
            // `%S` / `%H`: the whole name (no label removed).
            None => Piece::Labels {
                server,
                minus: true,
                n: 0,
            },
            Some(n) => Piece::Labels { server, minus, n },
        });
        rest = &spec[digits + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// Checks a format (for the configuration); the error says what is wrong.
pub fn check_format(format: &str) -> Result<(), String> {
    if format.is_empty() {
        return Err("an empty format".into());
    }
    let text: String = pieces(format)?
        .iter()
        .filter_map(|p| match p {
            Piece::Text(t) => Some(*t),
            _ => None,
        })
        .collect();
    match text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '%')))
    {
        Some(c) => Err(format!("{format:?}: {c:?} cannot be part of a host name")),
        None => Ok(()),
    }
}

/// The host name `format` makes of `node` and `host` (a format that does
/// not check is used as it is).
pub fn redirect_name(format: &str, node: &str, host: &str) -> String {
    let Ok(pieces) = pieces(format) else {
        return format.to_string();
    };
    let mut out = String::new();
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Labels { server, minus, n } => {
                let labels: Vec<&str> = if server { node } else { host }.split('.').collect();
                let len = labels.len();
                let kept = match (server, minus) {
                    // %-NS: drop the last N; %NS: keep the first N.
                    (true, true) => &labels[..len.saturating_sub(n)],
                    (true, false) => &labels[..n.min(len)],
                    // %-NH: keep the last N (%H, n = 0: all); %NH: drop the first N.
                    (false, true) if n == 0 => &labels[..],
                    (false, true) => &labels[len.saturating_sub(n)..],
                    (false, false) => &labels[n.min(len)..],
                };
                out.push_str(&kept.join("."));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mod_backhands_example() {
        assert_eq!(
            redirect_name("%-2S.%-2H", "www3.sanfran.hosting.com", "www.client1.com"),
            "www3.sanfran.client1.com"
        );
    }

    #[test]
    fn each_form_on_its_own() {
        let (node, host) = ("a.b.c.d", "w.x.y.z");
        assert_eq!(redirect_name("%-1S", node, host), "a.b.c");
        assert_eq!(redirect_name("%2S", node, host), "a.b");
        assert_eq!(redirect_name("%-3H", node, host), "x.y.z");
        assert_eq!(redirect_name("%1H", node, host), "x.y.z");
        assert_eq!(redirect_name("%S", node, host), node);
        assert_eq!(redirect_name("%H", node, host), host);
        assert_eq!(
            redirect_name("%1S.cluster.%-2H", node, host),
            "a.cluster.y.z"
        );
        assert_eq!(redirect_name("x%%y", node, host), "x%y");
        // More labels than there are: everything, or nothing.
        assert_eq!(redirect_name("%-9S", node, host), "");
        assert_eq!(redirect_name("%9S", node, host), node);
        assert_eq!(redirect_name("%-9H", node, host), host);
        assert_eq!(redirect_name("%9H", node, host), "");
    }

    #[test]
    fn bad_formats_say_why() {
        for bad in ["", "%", "%-S", "%2X", "a/b.%S", "%1000S", "x y"] {
            assert!(check_format(bad).is_err(), "{bad:?}");
        }
        for good in ["%-2S.%-2H", "%S", "node-%1S.example.com", "%%"] {
            assert_eq!(check_format(good), Ok(()), "{good:?}");
        }
    }
}
