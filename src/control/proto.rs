//! The control protocol: what `berth ctl` and the supervisor say to each
//! other over the control socket.
//!
//! A connection carries one request and its reply: frames of a 4-byte
//! big-endian length and that many bytes of JSON. A request is a
//! [`Request`] (its protocol version, the tenant it names, a [`Command`]);
//! the answer is one [`ReplyFrame`], or, for `logs --follow`, a first one
//! and then one per batch of new lines until either side closes.
//!
//! The supervisor decodes what any local user sends, so [`decode_request`]
//! takes nothing on trust: a request frame is at most [`MAX_REQUEST`]
//! bytes (a length above it is refused before a byte of the body is read),
//! must be a JSON object with a `version`, and is checked for its version
//! before its command: a `berth ctl` newer than the running berth, or a
//! command this berth does not know, gets a message naming both versions
//! rather than a parse error. `fuzz/fuzz_targets/ctl_decode.rs` feeds it
//! arbitrary bytes.

use serde::{Deserialize, Serialize};

use crate::config::{Limits, Protocol};
use crate::ipc::UsageNow;

/// The version of the protocol this build speaks. Raised whenever a
/// request or reply changes shape.
pub const VERSION: u32 = 1;

/// The largest request frame (its JSON); requests are a few hundred bytes.
pub const MAX_REQUEST: usize = 64 * 1024;

/// The largest reply frame `berth ctl` accepts. Replies are bounded by the
/// supervisor far below it (log lines at [`MAX_LOG_BYTES`]).
pub const MAX_REPLY: usize = 16 << 20;

/// `logs --lines`: the default and the most.
pub const DEFAULT_LINES: u32 = 20;
pub const MAX_LINES: u32 = 10_000;

/// The most bytes of log lines one reply carries (the newest are kept).
pub const MAX_LOG_BYTES: usize = 4 << 20;

/// The longest tenant or app name a request may carry (names in the
/// configuration are far shorter).
const MAX_NAME: usize = 256;

/// The commands of this version, as written on the wire.
pub const COMMANDS: &[&str] = &[
    "status", "restart", "stop", "start", "logs", "reload", "usage", "check",
];

/// What `berth ctl` asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub version: u32,
    /// The tenant acted on: root and admins must name one; a tenant's user
    /// acts on its own (naming it is allowed, naming another is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub command: Command,
}

/// One command of `berth ctl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// The tenant's apps and processes, limits, and usage now.
    Status,
    /// A rolling restart of the app (answered once it is over).
    Restart { app: String },
    /// Stops the app's processes and holds it stopped (503) until `start`.
    Stop { app: String },
    /// Ends a `stop`.
    Start { app: String },
    /// The last lines of the tenant's access log (the requests its routes
    /// send to the app) or, with `error`, of its error log (the app's
    /// lines); with `follow`, then new ones as they come.
    Logs {
        app: String,
        #[serde(default)]
        follow: bool,
        #[serde(default = "default_lines")]
        lines: u32,
        #[serde(default)]
        error: bool,
    },
    /// Reloads the configuration; its problems come back.
    Reload,
    /// The tenant's usage since a time (milliseconds since the Unix epoch;
    /// default: 30 days ago) until now, per app.
    Usage {
        #[serde(default)]
        since_ms: Option<i64>,
    },
    /// Loads the configuration without applying it; the problems that
    /// concern the tenant come back.
    Check,
}

fn default_lines() -> u32 {
    DEFAULT_LINES
}

impl Command {
    /// The command's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Status => "status",
            Command::Restart { .. } => "restart",
            Command::Stop { .. } => "stop",
            Command::Start { .. } => "start",
            Command::Logs { .. } => "logs",
            Command::Reload => "reload",
            Command::Usage { .. } => "usage",
            Command::Check => "check",
        }
    }

    /// The command as `berth ctl` would be given it, for the audit log.
    pub fn describe(&self) -> String {
        match self {
            Command::Restart { app } | Command::Stop { app } | Command::Start { app } => {
                format!("{} {app}", self.name())
            }
            Command::Logs {
                app,
                follow,
                lines,
                error,
            } => {
                let mut s = format!("logs {app} --lines {lines}");
                if *error {
                    s.push_str(" --error");
                }
                if *follow {
                    s.push_str(" --follow");
                }
                s
            }
            Command::Usage { since_ms: Some(ms) } => format!("usage --since {}", show_ms(*ms)),
            _ => self.name().to_string(),
        }
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 (UTC).
pub fn show_ms(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => t.to_string(),
        Err(_) => format!("{ms} ms after the Unix epoch"),
    }
}

/// One frame of the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyFrame {
    pub version: u32,
    pub reply: Reply,
}

/// What the supervisor answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Status(Box<TenantStatus>),
    /// `restart`, `stop`, `start`: what was done.
    Done {
        message: String,
    },
    Reload(ProblemsReply),
    Check(ProblemsReply),
    /// `logs`: the last lines (oldest first), and whether more follow.
    Logs(LogsReply),
    /// `logs --follow`: lines written since the last frame.
    More {
        lines: Vec<String>,
    },
    Usage(UsageReply),
    /// The caller may not do this.
    Refused {
        message: String,
    },
    /// It was allowed, and did not work.
    Failed {
        message: String,
    },
    /// The request was in another version of the protocol, or named a
    /// command this berth does not know.
    Unsupported {
        message: String,
        berth_version: u32,
        request_version: u32,
    },
}

impl Reply {
    /// Whether `berth ctl` exits 0 on it.
    pub fn success(&self) -> bool {
        match self {
            Reply::Refused { .. } | Reply::Failed { .. } | Reply::Unsupported { .. } => false,
            Reply::Reload(r) | Reply::Check(r) => r.ok,
            _ => true,
        }
    }
}

/// `status`: one tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantStatus {
    pub tenant: String,
    pub user: String,
    pub uid: u32,
    pub limits: Limits,
    /// The meter's last figures (None before its first sample, or when the
    /// tenant is not measured).
    pub usage: Option<UsageNow>,
    /// When they were read, milliseconds since the Unix epoch.
    pub measured_ms: Option<i64>,
    pub apps: Vec<AppStatus>,
}

/// One app in [`TenantStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppStatus {
    pub name: String,
    pub protocol: Protocol,
    /// Held stopped by `berth ctl stop`.
    pub stopped: bool,
    pub max_processes: u32,
    /// Bytes its cgroup holds (None without cgroups).
    pub memory: Option<u64>,
    pub processes: Vec<ProcessStatus>,
    /// CGI scripts running now.
    pub cgi_running: u32,
    /// The last thing that went wrong (milliseconds since the epoch, what).
    pub last_problem: Option<(i64, String)>,
}

/// One process of an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessStatus {
    pub slot: u32,
    pub pid: u32,
    pub uid: u32,
    /// Resident bytes, as the meter last read them.
    pub memory: Option<u64>,
    pub started_ms: i64,
    /// The kernel's state of it (`/proc/PID/stat`: running, sleeping, ...).
    pub state: Option<String>,
    /// Found above `process_memory`: retired once its requests end.
    pub recycling: bool,
}

/// `reload` and `check`: whether it went through, and the problems.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProblemsReply {
    /// `reload`: the new configuration is in use; `check`: it would load.
    pub ok: bool,
    /// One line each (`file:line: key: why`): of the tenant's own file
    /// (for a tenant's user), of the whole configuration (for root or an
    /// admin).
    pub problems: Vec<String>,
    /// What happened, in a sentence.
    pub message: String,
}

/// `logs`: the lines (oldest first) and where they come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogsReply {
    pub file: String,
    pub lines: Vec<String>,
    /// Whether `More` frames follow (`--follow`).
    pub follow: bool,
    /// What "the app's lines" means for this log.
    pub note: String,
}

/// `usage`: the rows of `berth usage` for the tenant and its apps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageReply {
    pub since_ms: i64,
    pub until_ms: i64,
    pub window_seconds: f64,
    pub rows: Vec<crate::usage::Row>,
}

/// Why a request could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("a request frame of {len} bytes is larger than the {max} allowed")]
    TooLarge { len: u64, max: usize },
    #[error("the request ended after {got} of {want} bytes")]
    Truncated { got: usize, want: usize },
    #[error("not a control protocol request: {why}")]
    Garbage { why: String },
    #[error(
        "berth ctl speaks control protocol {theirs}, this berth speaks {ours}: use the berth ctl of the running berth's version"
    )]
    Version { theirs: u32, ours: u32 },
    #[error(
        "this berth (control protocol {ours}) has no command {name:?} (berth ctl speaks protocol {theirs}); its commands: {}",
        COMMANDS.join(", ")
    )]
    UnknownCommand {
        name: String,
        theirs: u32,
        ours: u32,
    },
    #[error("invalid {command} request: {why}")]
    Invalid { command: String, why: String },
}

impl DecodeError {
    /// The reply that says so.
    pub fn reply(&self) -> Reply {
        let message = self.to_string();
        match self {
            DecodeError::Version { theirs, ours }
            | DecodeError::UnknownCommand { theirs, ours, .. } => Reply::Unsupported {
                message,
                berth_version: *ours,
                request_version: *theirs,
            },
            _ => Reply::Failed { message },
        }
    }
}

/// The length a frame header announces, if it is at most `max`.
pub fn frame_len(header: [u8; 4], max: usize) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(header) as u64;
    if len > max as u64 {
        return Err(DecodeError::TooLarge { len, max });
    }
    Ok(len as usize)
}

/// One frame of `msg`: its length, then its JSON.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let json = serde_json::to_vec(msg).expect("control messages serialize");
    let mut out = Vec::with_capacity(4 + json.len());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out
}

/// A whole request frame at the start of `buf` (header and body): the
/// request and the bytes it took. What [`decode_request`] refuses, and a
/// buffer that ends before the frame does, is an error.
pub fn decode_frame(buf: &[u8]) -> Result<(Request, usize), DecodeError> {
    let Some(header) = buf.first_chunk::<4>() else {
        return Err(DecodeError::Truncated {
            got: buf.len(),
            want: 4,
        });
    };
    let len = frame_len(*header, MAX_REQUEST)?;
    let body = &buf[4..];
    if body.len() < len {
        return Err(DecodeError::Truncated {
            got: body.len(),
            want: len,
        });
    }
    Ok((decode_request(&body[..len])?, 4 + len))
}

/// A request from the JSON of its frame: the version is looked at first,
/// then the command's name, then the whole.
pub fn decode_request(body: &[u8]) -> Result<Request, DecodeError> {
    let garbage = |why: String| DecodeError::Garbage { why };
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| garbage(format!("not JSON ({e})")))?;
    let serde_json::Value::Object(map) = &value else {
        return Err(garbage("not a JSON object".into()));
    };
    let theirs = map
        .get("version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| garbage("no protocol version".into()))?;
    let theirs = u32::try_from(theirs).unwrap_or(u32::MAX);
    if theirs != VERSION {
        return Err(DecodeError::Version {
            theirs,
            ours: VERSION,
        });
    }
    let name = match map.get("command") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(o)) if o.len() == 1 => {
            o.keys().next().cloned().unwrap_or_default()
        }
        _ => return Err(garbage("no command".into())),
    };
    if !COMMANDS.contains(&name.as_str()) {
        let mut name = name;
        name.truncate(name.floor_char_boundary(MAX_NAME));
        return Err(DecodeError::UnknownCommand {
            name,
            theirs,
            ours: VERSION,
        });
    }
    let invalid = |why: String| DecodeError::Invalid {
        command: name.clone(),
        why,
    };
    let request: Request = serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
    validate(&request).map_err(invalid)?;
    Ok(request)
}

/// What the types cannot say: names of a sane length, `lines` in range.
fn validate(r: &Request) -> Result<(), String> {
    let name_ok = |what: &str, s: &str| {
        if s.is_empty() || s.len() > MAX_NAME {
            Err(format!("{what} must be 1 to {MAX_NAME} bytes long"))
        } else {
            Ok(())
        }
    };
    if let Some(t) = &r.tenant {
        name_ok("the tenant's name", t)?;
    }
    match &r.command {
        Command::Restart { app } | Command::Stop { app } | Command::Start { app } => {
            name_ok("the app's name", app)
        }
        Command::Logs { app, lines, .. } => {
            name_ok("the app's name", app)?;
            if !(1..=MAX_LINES).contains(lines) {
                return Err(format!("lines must be between 1 and {MAX_LINES}"));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(command: Command) -> Request {
        Request {
            version: VERSION,
            tenant: Some("alice".into()),
            command,
        }
    }

    #[test]
    fn every_command_goes_through_a_frame_and_back() {
        let commands = [
            Command::Status,
            Command::Restart { app: "php".into() },
            Command::Stop { app: "php".into() },
            Command::Start { app: "php".into() },
            Command::Logs {
                app: "php".into(),
                follow: true,
                lines: 5,
                error: true,
            },
            Command::Reload,
            Command::Usage {
                since_ms: Some(1_800_000_000_000),
            },
            Command::Check,
        ];
        assert_eq!(commands.len(), COMMANDS.len());
        for c in commands {
            assert!(COMMANDS.contains(&c.name()));
            let r = request(c);
            let frame = encode(&r);
            assert_eq!(decode_frame(&frame), Ok((r, frame.len())));
        }
    }

    #[test]
    fn a_truncated_frame_is_an_error_at_every_cut() {
        let frame = encode(&request(Command::Stop { app: "php".into() }));
        for cut in 0..frame.len() {
            assert!(
                matches!(
                    decode_frame(&frame[..cut]),
                    Err(DecodeError::Truncated { .. })
                ),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_its_body() {
        let mut frame = (1u32 << 30).to_be_bytes().to_vec();
        frame.extend_from_slice(b"{");
        assert_eq!(
            decode_frame(&frame),
            Err(DecodeError::TooLarge {
                len: 1 << 30,
                max: MAX_REQUEST
            })
        );
        assert!(frame_len([0xff; 4], MAX_REQUEST).is_err());
        assert_eq!(
            frame_len((MAX_REQUEST as u32).to_be_bytes(), MAX_REQUEST),
            Ok(MAX_REQUEST)
        );
    }

    #[test]
    fn another_version_is_named_with_ours_before_the_command_is_read() {
        for (json, theirs) in [
            (r#"{"version":2,"command":"status"}"#, 2),
            (
                r#"{"version":2,"command":{"rollback":{"to":"yesterday"}}}"#,
                2,
            ),
            (r#"{"version":0,"command":"status"}"#, 0),
            (r#"{"version":99999999999,"command":"status"}"#, u32::MAX),
        ] {
            let e = decode_request(json.as_bytes()).unwrap_err();
            assert_eq!(
                e,
                DecodeError::Version {
                    theirs,
                    ours: VERSION
                },
                "{json}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("protocol {theirs}")) && msg.contains("speaks 1"),
                "{msg}"
            );
            assert!(matches!(e.reply(), Reply::Unsupported { .. }));
        }
    }

    #[test]
    fn an_unknown_command_is_named_with_the_commands_this_berth_has() {
        let e = decode_request(br#"{"version":1,"command":{"rollback":{"to":"x"}}}"#).unwrap_err();
        assert!(matches!(&e, DecodeError::UnknownCommand { name, .. } if name == "rollback"));
        let msg = e.to_string();
        assert!(
            msg.contains("\"rollback\"") && msg.contains("status, restart"),
            "{msg}"
        );
        let e = decode_request(br#"{"version":1,"command":"shutdown"}"#).unwrap_err();
        assert!(matches!(e, DecodeError::UnknownCommand { .. }));
        // A name of a megabyte is not repeated whole.
        let long = format!(r#"{{"version":1,"command":"{}"}}"#, "x".repeat(100_000));
        let e = decode_request(long.as_bytes()).unwrap_err();
        assert!(e.to_string().len() < 1000);
    }

    #[test]
    fn garbage_is_refused_with_what_was_wrong() {
        for (input, why) in [
            (&b""[..], "not JSON"),
            (b"\xff\xfe\x00garbage", "not JSON"),
            (b"{\"version\":1,\"command\":\"status\"", "not JSON"),
            (b"[1,2,3]", "not a JSON object"),
            (b"\"status\"", "not a JSON object"),
            (b"{\"command\":\"status\"}", "no protocol version"),
            (
                b"{\"version\":\"1\",\"command\":\"status\"}",
                "no protocol version",
            ),
            (
                b"{\"version\":-1,\"command\":\"status\"}",
                "no protocol version",
            ),
            (b"{\"version\":1}", "no command"),
            (b"{\"version\":1,\"command\":42}", "no command"),
            (b"{\"version\":1,\"command\":{}}", "no command"),
        ] {
            let e = decode_request(input).unwrap_err();
            assert!(
                matches!(&e, DecodeError::Garbage { why: w } if w.contains(why)),
                "{:?}: {e}",
                String::from_utf8_lossy(input)
            );
        }
        // Deeply nested JSON is refused, not a stack overflow.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(decode_request(deep.as_bytes()).is_err());
    }

    #[test]
    fn a_known_command_with_bad_fields_is_invalid() {
        for json in [
            r#"{"version":1,"command":{"stop":{}}}"#,
            r#"{"version":1,"command":{"stop":{"app":7}}}"#,
            r#"{"version":1,"command":{"stop":{"app":""}}}"#,
            r#"{"version":1,"command":{"stop":{"app":"php","sudo":true}}}"#,
            r#"{"version":1,"command":{"logs":{"app":"php","lines":0}}}"#,
            r#"{"version":1,"command":{"logs":{"app":"php","lines":10001}}}"#,
            r#"{"version":1,"command":"status","tenant":""}"#,
            r#"{"version":1,"command":"status","as_root":true}"#,
        ] {
            assert!(
                matches!(
                    decode_request(json.as_bytes()),
                    Err(DecodeError::Invalid { .. })
                ),
                "{json}"
            );
        }
        let long = format!(
            r#"{{"version":1,"command":{{"stop":{{"app":"{}"}}}}}}"#,
            "a".repeat(300)
        );
        assert!(matches!(
            decode_request(long.as_bytes()),
            Err(DecodeError::Invalid { .. })
        ));
    }

    #[test]
    fn logs_defaults_to_twenty_lines_of_the_access_log() {
        let r = decode_request(br#"{"version":1,"command":{"logs":{"app":"php"}}}"#).unwrap();
        assert_eq!(
            r.command,
            Command::Logs {
                app: "php".into(),
                follow: false,
                lines: DEFAULT_LINES,
                error: false
            }
        );
        assert_eq!(r.tenant, None);
    }

    #[test]
    fn replies_go_through_json_and_back() {
        let replies = [
            Reply::Done {
                message: "stopped".into(),
            },
            Reply::Refused {
                message: "no".into(),
            },
            Reply::More {
                lines: vec!["a".into()],
            },
            Reply::Reload(ProblemsReply {
                ok: false,
                problems: vec!["x:1: k: why".into()],
                message: "refused".into(),
            }),
        ];
        for reply in replies {
            let frame = ReplyFrame {
                version: VERSION,
                reply,
            };
            let json = serde_json::to_vec(&frame).unwrap();
            assert_eq!(serde_json::from_slice::<ReplyFrame>(&json).unwrap(), frame);
        }
    }
}
