//! `/status`: the [`View`] as one HTML page a person reads at a glance,
//! without JavaScript: a table of the tenants (memory against the limit as
//! a bar, CPU, tasks, requests in flight and waiting, OOM kills, a chart
//! of the last 24 hours as inline SVG), each tenant's apps and processes,
//! and the recent limit events. It reloads itself every 10 seconds.
//!
//! Every string from the view is escaped ([`esc`]): names come from the
//! configuration, texts from the supervisor, and neither is trusted to be
//! free of markup. Numbers are formatted here; nothing else reaches the page.

use std::fmt::Write as _;

use super::view::{AppView, HourView, TenantView, View, show_ms};
use crate::usage::human_bytes;

/// The chart's size, in CSS pixels.
const CHART_W: f64 = 192.0;
const CHART_H: f64 = 40.0;
/// Above this share of its limit, a bar is drawn as a warning.
const HOT: f64 = 0.9;

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .4em}
h3{font-size:1em;margin:1.2em 0 .3em}
.meta{color:#555;margin:0}
table{border-collapse:collapse;margin:.3em 0}
th,td{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:left;vertical-align:middle;white-space:nowrap}
td.text{white-space:normal}
th{background:#f4f4f4;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{display:inline-block;width:8em;height:.8em;background:#e6e6e6;vertical-align:middle;margin-right:.4em}
.bar span{display:block;height:100%;background:#3a7bd5}
.bar.hot span{background:#d53a3a}
.bad{color:#b00;font-weight:600}
.problem{color:#a33}
.muted{color:#888}
svg{display:block}
.mem{fill:none;stroke:#3a7bd5;stroke-width:1.5}
.cpu{fill:none;stroke:#e08a1e;stroke-width:1.5}
.mem-dot{fill:#3a7bd5}.cpu-dot{fill:#e08a1e}
.frame{fill:#fafafa;stroke:#ddd}
";

/// The whole page.
pub fn render(v: &View) -> String {
    let mut out = String::with_capacity(4096 + v.tenants.len() * 2048);
    out.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <meta http-equiv=\"refresh\" content=\"10\"><title>berth status</title><style>",
    );
    out.push_str(STYLE);
    out.push_str("</style></head><body>\n<h1>berth status</h1>\n");
    header(&mut out, v);
    if let Some(c) = &v.cluster {
        super::cluster::render(&mut out, c);
    }
    tenants(&mut out, v);
    apps(&mut out, v);
    events(&mut out, v);
    out.push_str("</body></html>\n");
    out
}

fn header(out: &mut String, v: &View) {
    let _ = write!(
        out,
        "<p class=\"meta\">Page made {}",
        esc(&when(&v.generated_at))
    );
    match (&v.figures_at, v.figures_age_seconds) {
        (Some(at), Some(age)) => {
            let _ = write!(out, "; figures read {} ({age:.0} s ago)", esc(&when(at)));
        }
        _ => out.push_str("; waiting for the supervisor's first figures"),
    }
    if let Some(started) = &v.started_at {
        let _ = write!(out, "; berth up since {}", esc(&when(started)));
    }
    out.push_str(".</p>\n<p class=\"meta\">");
    if let Some(cg) = &v.cgroups {
        let _ = write!(out, "cgroups: {}; ", esc(cg));
    }
    match v.meter_interval_seconds {
        Some(s) => {
            let _ = write!(out, "usage metered every {s} s");
        }
        None if v.figures_at.is_some() => out.push_str("usage metering is off (no charts)"),
        None => {}
    }
    out.push_str(".</p>\n");
}

fn tenants(out: &mut String, v: &View) {
    out.push_str("<h2>Tenants</h2>\n");
    if v.tenants.is_empty() {
        out.push_str("<p class=\"muted\">No tenants are configured.</p>\n");
        return;
    }
    let now = super::view::ms(std::time::SystemTime::now());
    let this_hour = now - now.rem_euclid(3_600_000);
    out.push_str(
        "<table><thead><tr><th>tenant</th><th>user</th><th>memory</th><th>CPU</th>\
         <th>tasks</th><th>in flight</th><th>waiting</th><th>requests</th>\
         <th>OOM kills</th><th>memory and CPU, last 24 h</th></tr></thead><tbody>\n",
    );
    for t in &v.tenants {
        let limits = t.limits.as_ref();
        let _ = write!(
            out,
            "<tr><td><a href=\"#t-{id}\">{name}</a></td><td>{user}</td><td>",
            id = esc(&t.name),
            name = esc(&t.name),
            user = match (&t.user, t.uid) {
                (Some(u), Some(uid)) => format!("{} ({uid})", esc(u)),
                _ => String::new(),
            },
        );
        match &t.usage {
            Some(u) => memory_cell(out, u.memory, limits.and_then(|l| l.memory_bytes)),
            None => out.push_str("<span class=\"muted\">not measured</span>"),
        }
        out.push_str("</td><td class=\"n\">");
        if let Some(u) = &t.usage {
            let _ = write!(out, "{:.2}", u.cpu_cores);
            match limits.and_then(|l| l.cpu_cores) {
                Some(c) => {
                    let _ = write!(out, " / {c} cores");
                }
                None => out.push_str(" cores"),
            }
        }
        out.push_str("</td><td class=\"n\">");
        if let Some(u) = &t.usage {
            let _ = write!(out, "{}", u.tasks);
            if let Some(max) = limits.and_then(|l| l.tasks) {
                let _ = write!(out, " / {max}");
            }
        }
        let _ = write!(out, "</td><td class=\"n\">{}", t.in_flight);
        if let Some(l) = limits {
            let _ = write!(out, " / {}", l.concurrency);
        }
        let _ = write!(out, "</td><td class=\"n\">{}", t.waiting);
        if let Some(l) = limits {
            let _ = write!(out, " / {}", l.queue);
        }
        let _ = write!(
            out,
            "</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>",
            t.requests.total,
            t.usage.map_or(0, |u| u.oom_kills),
        );
        chart(out, t, v.meter_interval_seconds.is_some(), this_hour);
        out.push_str("</td></tr>\n");
    }
    out.push_str(
        "</tbody></table>\n<p class=\"meta\">Charts: one point an hour over the last 24 hours; \
         <span style=\"color:#3a7bd5\">average memory</span> against the memory limit, \
         <span style=\"color:#e08a1e\">CPU cores</span> against the CPU limit \
         (or the highest hour, when higher or unlimited).</p>\n",
    );
}

/// "210.5 MiB / 512 MiB" after a bar of the share.
fn memory_cell(out: &mut String, used: u64, limit: Option<u64>) {
    match limit {
        Some(limit) if limit > 0 => {
            let share = used as f64 / limit as f64;
            let _ = write!(
                out,
                "<span class=\"bar{}\" title=\"{:.0}% of the limit\"><span style=\"width:{:.1}%\"></span></span>{} / {}",
                if share > HOT { " hot" } else { "" },
                share * 100.0,
                (share * 100.0).min(100.0),
                human_bytes(used),
                human_bytes(limit),
            );
        }
        _ => {
            let _ = write!(out, "{} (no limit)", human_bytes(used));
        }
    }
}

/// The tenant's last 24 hours: average memory (blue) against its limit or
/// the highest hour, and CPU (orange) against its cores or the busiest
/// hour, one point an hour, the last at `this_hour` (its start).
fn chart(out: &mut String, t: &TenantView, metering: bool, this_hour: i64) {
    let points = &t.history;
    if points.is_empty() {
        out.push_str(if metering {
            "<span class=\"muted\">no samples yet</span>"
        } else {
            "<span class=\"muted\">metering off</span>"
        });
        return;
    }
    let first = this_hour - 23 * 3_600_000;
    let cores = |p: &HourView| {
        if p.covered_seconds > 0.0 {
            p.cpu_seconds / p.covered_seconds
        } else {
            0.0
        }
    };
    let limits = t.limits.as_ref();
    let peak_mem = points.iter().map(|p| p.memory_avg_bytes).max().unwrap_or(0);
    let peak_cpu = points.iter().map(cores).fold(0.0, f64::max);
    let mem_top = peak_mem
        .max(limits.and_then(|l| l.memory_bytes).unwrap_or(0))
        .max(1) as f64;
    let cpu_top = peak_cpu
        .max(limits.and_then(|l| l.cpu_cores).unwrap_or(0.0))
        .max(0.01);
    // (Points stay clear of the edges, where half a dot would be cut off.)
    let x = |p: &HourView| {
        let share = (p.hour_ms - first).max(0) as f64 / (23.0 * 3_600_000.0);
        3.0 + share.min(1.0) * (CHART_W - 6.0)
    };
    let y = |share: f64| CHART_H - 2.0 - share.clamp(0.0, 1.0) * (CHART_H - 4.0);
    let _ = write!(
        out,
        "<svg width=\"{CHART_W}\" height=\"{CHART_H}\" viewBox=\"0 0 {CHART_W} {CHART_H}\" role=\"img\">\
         <title>{} hour(s) from {}: memory (blue) up to {} on average in an hour, CPU (orange) up to {peak_cpu:.2} cores</title>\
         <rect class=\"frame\" x=\"0\" y=\"0\" width=\"{CHART_W}\" height=\"{CHART_H}\"/>",
        points.len(),
        esc(&show_ms(points[0].hour_ms)),
        human_bytes(peak_mem),
    );
    let mem: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (x(p), y(p.memory_avg_bytes as f64 / mem_top)))
        .collect();
    let cpu: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (x(p), y(cores(p) / cpu_top)))
        .collect();
    for (class, line) in [("mem", mem), ("cpu", cpu)] {
        if let [(x, y)] = line[..] {
            let _ = write!(
                out,
                "<circle class=\"{class}-dot\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2\"/>"
            );
            continue;
        }
        let _ = write!(out, "<polyline class=\"{class}\" points=\"");
        for (x, y) in line {
            let _ = write!(out, "{x:.1},{y:.1} ");
        }
        out.push_str("\"/>");
    }
    out.push_str("</svg>");
}

fn apps(out: &mut String, v: &View) {
    out.push_str("<h2>Apps and processes</h2>\n");
    for t in &v.tenants {
        let _ = writeln!(out, "<h3 id=\"t-{}\">{}</h3>", esc(&t.name), esc(&t.name));
        if t.apps.is_empty() {
            out.push_str("<p class=\"muted\">No apps.</p>\n");
            continue;
        }
        out.push_str(
            "<table><thead><tr><th>app</th><th>protocol</th><th>process</th><th>pid</th>\
             <th>uid</th><th>state</th><th>requests served</th><th>memory</th>\
             <th>uptime</th></tr></thead><tbody>\n",
        );
        for a in &t.apps {
            app_rows(out, a);
        }
        out.push_str("</tbody></table>\n");
        for a in &t.apps {
            if let Some(p) = &a.last_problem {
                let _ = writeln!(
                    out,
                    "<p class=\"problem\">{}: last problem at {}: {}</p>",
                    esc(&a.name),
                    esc(&when(&p.at)),
                    esc(&p.text)
                );
            }
        }
    }
}

fn app_rows(out: &mut String, a: &AppView) {
    let summary = |out: &mut String| {
        let _ = write!(out, "<td>{}</td><td>{}</td>", esc(&a.name), esc(a.protocol));
    };
    if a.processes.is_empty() {
        out.push_str("<tr>");
        summary(out);
        let what = if a.protocol == "cgi" {
            format!("{} script(s) running", a.cgi_running)
        } else {
            "no process running".to_string()
        };
        let _ = writeln!(
            out,
            "<td colspan=\"4\" class=\"muted\">{what}; {} waiting</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td></td></tr>",
            a.waiting,
            a.requests,
            a.memory.map(human_bytes).unwrap_or_default(),
        );
        return;
    }
    for p in &a.processes {
        out.push_str("<tr>");
        summary(out);
        let _ = writeln!(
            out,
            "<td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            p.slot,
            p.pid.map(|n| n.to_string()).unwrap_or_default(),
            p.uid.map(|n| n.to_string()).unwrap_or_default(),
            esc(p.state),
            p.requests_served,
            p.memory.map(human_bytes).unwrap_or_default(),
            p.uptime_seconds.map(uptime).unwrap_or_default(),
        );
    }
}

fn events(out: &mut String, v: &View) {
    out.push_str("<h2>Recent limit events</h2>\n");
    if v.events.is_empty() {
        out.push_str("<p class=\"muted\">None since berth started.</p>\n");
        return;
    }
    out.push_str(
        "<table><thead><tr><th>last at</th><th>tenant</th><th>app</th><th>event</th>\
         <th>times</th><th>what happened</th></tr></thead><tbody>\n",
    );
    for e in &v.events {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"text\">{}</td></tr>",
            esc(&when(&e.at)),
            esc(&e.event.tenant),
            esc(e.event.app.as_deref().unwrap_or("")),
            esc(e.event.kind.name()),
            e.event.count,
            esc(&e.event.text),
        );
    }
    out.push_str("</tbody></table>\n");
}

/// An RFC 3339 time of the view as people read it: `2026-12-01 18:18:14 UTC`.
fn when(rfc3339: &str) -> String {
    match rfc3339.get(..19) {
        Some(s) if rfc3339.ends_with('Z') => format!("{} UTC", s.replacen('T', " ", 1)),
        _ => rfc3339.to_string(),
    }
}

/// "3d 4h", "2h 5m", "5m 10s", "12s".
fn uptime(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {}s", s % 60),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// `s` as HTML text or a quoted attribute value: `&`, `<`, `>`, `"` and
/// `'` become references, and control characters are dropped.
pub fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    if !s
        .chars()
        .any(|c| matches!(c, '&' | '<' | '>' | '"' | '\'') || c.is_control())
    {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::super::view::{EventView, LimitsView, ProblemView, ProcessView, RequestsView};
    use super::*;
    use crate::ipc::{EventKind, LimitEvent, UsageNow};

    const MARKUP: &str = "<script>alert('x')</script>\"&";

    /// A view of one tenant whose every string is markup, with a full day
    /// of history.
    fn hostile_view() -> View {
        let now = super::super::view::ms(std::time::SystemTime::now());
        let hour = now - now.rem_euclid(3_600_000);
        let history = (0..24)
            .map(|i| HourView {
                hour: show_ms(hour - (23 - i) * 3_600_000),
                hour_ms: hour - (23 - i) * 3_600_000,
                memory_avg_bytes: (i as u64 + 1) << 20,
                memory_peak_bytes: 30 << 20,
                cpu_seconds: 36.0 * i as f64,
                covered_seconds: 3600.0,
            })
            .collect();
        let at = show_ms(now);
        View {
            generated_at: at.clone(),
            figures_at: Some(at.clone()),
            figures_age_seconds: Some(1.0),
            started_at: Some(at.clone()),
            cgroups: Some(MARKUP.into()),
            meter_interval_seconds: Some(10.0),
            tenants: vec![TenantView {
                name: MARKUP.into(),
                user: Some(MARKUP.into()),
                uid: Some(1000),
                limits: Some(LimitsView::from(&crate::config::Limits {
                    memory: Some(32 << 20),
                    ..Default::default()
                })),
                usage: Some(UsageNow {
                    memory: 31 << 20,
                    tasks: 3,
                    cpu_cores: 0.5,
                    ..Default::default()
                }),
                in_flight: 1,
                waiting: 2,
                queue_waits: 3,
                queue_overflows: 0,
                requests: RequestsView::default(),
                apps: vec![AppView {
                    name: MARKUP.into(),
                    protocol: "http",
                    max_processes: Some(2),
                    memory: Some(1 << 20),
                    waiting: 0,
                    requests: 7,
                    cgi_running: 0,
                    last_problem: Some(ProblemView {
                        at: at.clone(),
                        text: format!("program /home/{MARKUP}.pl is writable by others"),
                    }),
                    processes: vec![ProcessView {
                        slot: 1,
                        pid: Some(4242),
                        uid: Some(1000),
                        state: "busy",
                        in_flight: 1,
                        requests_served: 7,
                        memory: Some(5 << 20),
                        started_at: Some(at.clone()),
                        uptime_seconds: Some(4000.0),
                    }],
                }],
                history,
            }],
            events: vec![EventView {
                at: at.clone(),
                first_at: at,
                event: LimitEvent {
                    at_ms: now,
                    first_ms: now,
                    count: 2,
                    tenant: MARKUP.into(),
                    app: Some(MARKUP.into()),
                    kind: EventKind::OomKill,
                    text: MARKUP.into(),
                },
            }],
            // What another node announces is its own to say: a node with
            // the secret may publish anything as its name or version.
            cluster: Some(super::super::cluster::ClusterView {
                node: "a".into(),
                version: "0.1.0".into(),
                fingerprint: "f00".into(),
                nodes: vec![super::super::cluster::NodeView {
                    name: MARKUP.into(),
                    local: false,
                    live: true,
                    proxy: "127.0.0.2:80".into(),
                    age_seconds: 1.0,
                    figures: Default::default(),
                    version: MARKUP.into(),
                    fingerprint: MARKUP.into(),
                    version_differs: true,
                    config_differs: true,
                    placed: 1,
                    in_flight: 0,
                }],
                dropped: vec![(MARKUP.into(), 1)],
                marks_refused: 0,
                handovers_failed: 0,
            }),
        }
    }

    #[test]
    fn markup_in_names_and_texts_is_escaped_and_the_chart_is_drawn() {
        let html = render(&hostile_view());
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("alert('x')"), "{html}");
        let escaped = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;";
        // Name (link, anchor, heading, app, event), user, cgroups, the
        // problem's text and the event's.
        assert!(html.matches(escaped).count() >= 9 + 5, "{html}");
        assert!(html.contains("Not the same configuration"), "{html}");
        assert!(html.contains(&format!("href=\"#t-{escaped}\"")), "{html}");
        assert!(html.contains("<polyline class=\"mem\" points=\""), "{html}");
        assert!(html.contains("<polyline class=\"cpu\" points=\""), "{html}");
        // 31 of 32 MiB: a bar past 90%, drawn as a warning.
        assert!(html.contains("<span class=\"bar hot\""), "{html}");
        assert!(html.contains("31.0 MiB / 32.0 MiB"), "{html}");
        assert!(html.contains("1h 6m"), "{html}");
    }

    #[test]
    fn the_escape_leaves_plain_text_alone() {
        assert!(matches!(esc("alice"), std::borrow::Cow::Borrowed("alice")));
        assert_eq!(esc("a<b>&\"c'\u{7}"), "a&lt;b&gt;&amp;&quot;c&#39;");
    }
}
