//! `berth ctl`: one request over the control socket, its reply printed for
//! people (or, with `--json`, each reply frame as one line of JSON). Exits
//! 0 when the command did what it was asked, 1 when it was refused or
//! failed (the message on stderr).
//!
//! Everything printed from berth (log lines, names, messages) is escaped
//! for the terminal first, as berth escapes its logs: nothing read from a
//! tenant's file can drive the caller's terminal.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use super::proto::{
    self, AppStatus, Command, LogsReply, MAX_REPLY, ProblemsReply, Reply, ReplyFrame, Request,
    TenantStatus, UsageReply,
};
use crate::config::{DEFAULT_SOCKET, Limits, show_size};
use crate::usage::{When, human_bytes};

/// `berth ctl [--socket PATH] [--tenant NAME] [--json] COMMAND ...`
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The control socket (`[server] control_socket` of the running berth)
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The tenant acted on: root and admin_group members name one; a
    /// tenant's user acts on its own
    #[arg(long, value_name = "NAME")]
    pub tenant: Option<String>,
    /// Print each reply as one line of JSON (for scripts)
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum CtlCommand {
    /// The tenant's apps and their processes, its limits, and what it uses now
    Status,
    /// A rolling restart: new processes take the requests once they accept, the
    /// old ones finish theirs; if the new ones fail, the old ones keep serving
    Restart { app: String },
    /// Stop the app's processes and keep it stopped (requests get 503) until `start`
    Stop { app: String },
    /// Let an app stopped by `stop` take requests again
    Start { app: String },
    /// The last lines of the tenant's access log that concern the app (the
    /// requests its routes send to it), or with --error of its error log
    Logs {
        app: String,
        /// Then print new lines as they come, until interrupted
        #[arg(long, short)]
        follow: bool,
        /// How many lines (at most 10000)
        #[arg(long, short = 'n', default_value_t = proto::DEFAULT_LINES, value_name = "N")]
        lines: u32,
        /// The error log instead of the access log
        #[arg(long)]
        error: bool,
    },
    /// Reload berth's configuration; its problems are printed
    Reload,
    /// The tenant's usage per app, from the usage database
    Usage {
        /// Start of the window: RFC 3339, a date, or a time ago (-7d, -1h)
        /// [default: -30d]
        #[arg(long, value_name = "T", allow_hyphen_values = true)]
        since: Option<When>,
    },
    /// Load the configuration without applying it; print its problems
    Check,
}

impl CtlCommand {
    fn request(&self) -> Command {
        match self {
            CtlCommand::Status => Command::Status,
            CtlCommand::Restart { app } => Command::Restart { app: app.clone() },
            CtlCommand::Stop { app } => Command::Stop { app: app.clone() },
            CtlCommand::Start { app } => Command::Start { app: app.clone() },
            CtlCommand::Logs {
                app,
                follow,
                lines,
                error,
            } => Command::Logs {
                app: app.clone(),
                follow: *follow,
                lines: *lines,
                error: *error,
            },
            CtlCommand::Reload => Command::Reload,
            CtlCommand::Usage { since } => Command::Usage {
                since_ms: since.map(|w| crate::usage::to_ms(w.resolve(SystemTime::now()))),
            },
            CtlCommand::Check => Command::Check,
        }
    }
}

/// How long a reply may take (the supervisor's own bound is 60 s).
const REPLY_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs `berth ctl`.
pub fn main(args: CtlArgs) -> ExitCode {
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("berth ctl: {}", terminal(&e));
            ExitCode::from(1)
        }
    }
}

/// Sends the request and prints the replies; whether the command succeeded.
fn run(args: &CtlArgs) -> Result<bool, String> {
    let request = Request {
        version: proto::VERSION,
        tenant: args.tenant.clone(),
        command: args.command.request(),
    };
    let mut stream = connect(&args.socket)?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .and_then(|()| stream.write_all(&proto::encode(&request)))
        .map_err(|e| format!("{}: {e}", args.socket.display()))?;
    let Some(first) = read_reply(&mut stream)? else {
        return Err("berth closed the control connection without an answer".into());
    };
    let ok = first.success();
    print_reply(&first, args.json);
    if let Reply::Logs(LogsReply { follow: true, .. }) = first {
        stream
            .set_read_timeout(None)
            .map_err(|e| format!("{}: {e}", args.socket.display()))?;
        loop {
            match read_reply(&mut stream)? {
                Some(reply) => print_reply(&reply, args.json),
                None => return Err("berth closed the connection (stopping?)".into()),
            }
        }
    }
    Ok(ok)
}

fn connect(path: &Path) -> Result<UnixStream, String> {
    UnixStream::connect(path).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound => {
                " (is berth running, with this control_socket? --socket names another)"
            }
            std::io::ErrorKind::ConnectionRefused => {
                " (nothing listens there: berth is not running)"
            }
            _ => "",
        };
        format!("cannot connect to {}: {e}{hint}", path.display())
    })
}

/// One reply frame, or None when berth closed the connection between
/// frames. A frame of another protocol version is an error naming both.
fn read_reply(stream: &mut UnixStream) -> Result<Option<Reply>, String> {
    let mut header = [0u8; 4];
    match stream.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(format!("reading berth's answer: {e}")),
    }
    let len = proto::frame_len(header, MAX_REPLY).map_err(|e| format!("berth's answer: {e}"))?;
    let mut body = vec![0; len];
    stream
        .read_exact(&mut body)
        .map_err(|e| format!("reading berth's answer: {e}"))?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("berth's answer is not JSON: {e}"))?;
    let version = value.get("version").and_then(serde_json::Value::as_u64);
    if version != Some(u64::from(proto::VERSION)) {
        let theirs = version.map_or_else(|| "no version".to_string(), |v| v.to_string());
        return Err(format!(
            "berth answered in control protocol {theirs}, this berth ctl speaks {}: use the berth ctl of the running berth's version",
            proto::VERSION
        ));
    }
    let frame: ReplyFrame = serde_json::from_value(value).map_err(|e| {
        format!(
            "berth's answer (control protocol {}) is not one this berth ctl knows: {e}",
            proto::VERSION
        )
    })?;
    Ok(Some(frame.reply))
}

fn print_reply(reply: &Reply, json: bool) {
    if json {
        let line = serde_json::to_string(reply).expect("replies serialize");
        println!("{line}");
        if !reply.success() {
            eprint!("{}", terminal(&failure(reply)));
        }
        return;
    }
    if !reply.success() {
        eprint!("{}", terminal(&failure(reply)));
        return;
    }
    let text = match reply {
        Reply::Status(s) => status_text(s),
        Reply::Done { message } => format!("{message}\n"),
        Reply::Reload(r) | Reply::Check(r) => format!("{}\n", r.message),
        Reply::Logs(l) => {
            if l.lines.is_empty() && !l.follow {
                eprintln!("({}: no lines; it keeps {})", l.file, l.note);
            }
            lines_text(&l.lines)
        }
        Reply::More { lines } => lines_text(lines),
        Reply::Usage(u) => usage_text(u),
        Reply::Refused { .. } | Reply::Failed { .. } | Reply::Unsupported { .. } => String::new(),
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(terminal(&text).as_bytes());
    let _ = out.flush();
}

/// What a reply that is not a success says, for stderr.
fn failure(reply: &Reply) -> String {
    match reply {
        Reply::Refused { message } => format!("berth ctl: refused: {message}\n"),
        Reply::Failed { message } | Reply::Unsupported { message, .. } => {
            format!("berth ctl: {message}\n")
        }
        Reply::Reload(r) | Reply::Check(r) => problems_text(r),
        _ => String::new(),
    }
}

fn problems_text(r: &ProblemsReply) -> String {
    let mut s = String::new();
    for p in &r.problems {
        let _ = writeln!(s, "{p}");
    }
    let _ = writeln!(s, "{}", r.message);
    s
}

fn lines_text(lines: &[String]) -> String {
    let mut s = String::new();
    for l in lines {
        s.push_str(l);
        s.push('\n');
    }
    s
}

/// `text` with control characters (but newlines and tabs) as `\xNN`.
fn terminal(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        crate::tenant_log::escape_into(&mut out, line.as_bytes());
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// "3d 4h", "2h 5m", "4m 10s", "12s".
fn ago(ms: i64) -> String {
    let s = (crate::usage::to_ms(SystemTime::now()) - ms).max(0) / 1000;
    match s {
        s if s >= 86_400 => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

fn limits_text(l: &Limits) -> String {
    let size = |v: Option<u64>| v.map_or_else(|| "unlimited".into(), show_size);
    format!(
        "memory {}, process_memory {}, tasks {}, cpu {}, open_files {}, concurrency {}, queue {} (then {} after {:?})",
        size(l.memory),
        size(l.process_memory),
        l.tasks
            .map_or_else(|| "unlimited".into(), |t| t.to_string()),
        l.cpu_millis.map_or_else(
            || "unlimited".into(),
            |m| format!("{} cores", f64::from(m) / 1000.0)
        ),
        l.open_files,
        l.concurrency,
        l.queue,
        l.overflow_status,
        l.queue_timeout,
    )
}

fn status_text(s: &TenantStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "tenant {}: user {} (uid {})", s.tenant, s.user, s.uid);
    let _ = writeln!(out, "limits: {}", limits_text(&s.limits));
    match (&s.usage, s.measured_ms) {
        (Some(u), at) => {
            let when = at.map_or_else(String::new, |ms| format!(" (measured {} ago)", ago(ms)));
            let _ = writeln!(
                out,
                "now: memory {}, {} tasks, {:.2} cores{when}",
                human_bytes(u.memory),
                u.tasks,
                u.cpu_cores
            );
            let _ = writeln!(
                out,
                "since berth started: {:.1} s of CPU ({:.1} s throttled), {} OOM kills, {} times at the memory limit, {} forks refused at tasks, {} processes recycled",
                u.cpu_seconds,
                u.cpu_throttled_seconds,
                u.oom_kills,
                u.memory_events,
                u.tasks_limit_hits,
                u.recycles
            );
        }
        (None, Some(_)) => {
            let _ = writeln!(out, "now: not measured (no cgroup or user of its own)");
        }
        (None, None) => {
            let _ = writeln!(out, "now: no figures yet (the meter has not sampled)");
        }
    }
    if s.apps.is_empty() {
        let _ = writeln!(out, "no apps");
    }
    for a in &s.apps {
        app_text(&mut out, a);
    }
    out
}

fn app_text(out: &mut String, a: &AppStatus) {
    let protocol = format!("{:?}", a.protocol).to_lowercase();
    let memory = a
        .memory
        .map_or_else(String::new, |m| format!(", {}", human_bytes(m)));
    if a.stopped {
        let _ = writeln!(
            out,
            "app {} ({protocol}): stopped by berth ctl stop: requests get 503 until `berth ctl start {}`",
            a.name, a.name
        );
    } else if a.protocol == crate::config::Protocol::Cgi {
        let _ = writeln!(
            out,
            "app {} (cgi): {} script(s) running, at most {}{memory}",
            a.name, a.cgi_running, a.max_processes
        );
    } else {
        let _ = writeln!(
            out,
            "app {} ({protocol}): {} of at most {} processes{memory}",
            a.name,
            a.processes.len(),
            a.max_processes
        );
    }
    for p in &a.processes {
        let _ = writeln!(
            out,
            "  process {}: pid {}, uid {}, {}, up {}{}{}",
            p.slot,
            p.pid,
            p.uid,
            p.state.as_deref().unwrap_or("gone"),
            ago(p.started_ms),
            p.memory
                .map_or_else(String::new, |m| format!(", {}", human_bytes(m))),
            if p.recycling {
                ", recycling (above process_memory)"
            } else {
                ""
            }
        );
    }
    if let Some((at, what)) = &a.last_problem {
        let _ = writeln!(out, "  last problem, {} ago: {what}", ago(*at));
    }
}

fn usage_text(u: &UsageReply) -> String {
    let at = |ms: i64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    crate::usage::Report {
        since: at(u.since_ms),
        until: at(u.until_ms),
        window_seconds: u.window_seconds,
        rows: u.rows.clone(),
    }
    .table()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_berth_sends_cannot_drive_the_terminal() {
        assert_eq!(terminal("a\x1b[2Jb\nc\td\r"), "a\\x1b[2Jb\nc\td\\x0d");
    }

    #[test]
    fn a_status_reads_for_people() {
        let s = TenantStatus {
            tenant: "ta".into(),
            user: "berth-ta".into(),
            uid: 1001,
            limits: Limits::default(),
            usage: None,
            measured_ms: None,
            apps: vec![AppStatus {
                name: "php".into(),
                protocol: crate::config::Protocol::FastCgi,
                stopped: false,
                max_processes: 4,
                memory: Some(3 << 20),
                processes: vec![proto::ProcessStatus {
                    slot: 2,
                    pid: 4242,
                    uid: 1001,
                    memory: Some(1 << 20),
                    started_ms: crate::usage::to_ms(SystemTime::now()) - 65_000,
                    state: Some("sleeping".into()),
                    recycling: false,
                }],
                cgi_running: 0,
                last_problem: None,
            }],
        };
        let text = status_text(&s);
        assert!(
            text.contains("tenant ta: user berth-ta (uid 1001)"),
            "{text}"
        );
        assert!(text.contains("limits: memory 1GiB"), "{text}");
        assert!(
            text.contains("app php (fastcgi): 1 of at most 4 processes, 3.0 MiB"),
            "{text}"
        );
        assert!(
            text.contains("process 2: pid 4242, uid 1001, sleeping, up 1m 5s, 1.0 MiB"),
            "{text}"
        );
    }
}
