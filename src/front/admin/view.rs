//! What the admin pages show: the supervisor's last [`StatusSnapshot`]
//! joined with what only the front end knows (each process's requests and
//! state, each tenant's requests in flight and waiting, request counts and
//! durations). `/status.json` is this, serialised; `/status` and
//! `/metrics` render it.
//!
//! Built per admin request from copies: the apps' lock and the usage
//! registry's are held while their figures are copied, nothing longer.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::super::Shared;
use super::super::apps::AppFront;
use super::super::usage::{self, CLASSES, DURATION_BOUNDS};
use crate::config::{Limits, Protocol};
use crate::ipc::{AppId, HourPoint, LimitEvent, StatusSnapshot, UsageNow};

/// Everything the admin pages show.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    /// When this view was made (RFC 3339).
    pub generated_at: String,
    /// When the supervisor read its figures; None before its first
    /// snapshot (the first `meter_interval` after a start).
    pub figures_at: Option<String>,
    /// How old those figures are, in seconds.
    pub figures_age_seconds: Option<f64>,
    pub started_at: Option<String>,
    /// The cgroup backend: "v2", "v1" or "none".
    pub cgroups: Option<String>,
    /// None: metering is off (no usage database, no charts).
    pub meter_interval_seconds: Option<f64>,
    pub tenants: Vec<TenantView>,
    /// Newest first.
    pub events: Vec<EventView>,
    /// The farm (`[cluster]`); None on a node of its own.
    pub cluster: Option<super::cluster::ClusterView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantView {
    pub name: String,
    pub user: Option<String>,
    pub uid: Option<u32>,
    pub limits: Option<LimitsView>,
    /// What its cgroup holds now, and its limit events since the
    /// supervisor started (None: not measured).
    pub usage: Option<UsageNow>,
    /// Requests in its apps now, holding one of its `concurrency` places.
    pub in_flight: u32,
    /// Requests waiting for a place: the queue's depth.
    pub waiting: u32,
    /// Requests that had to wait, and requests refused at its limit,
    /// since the front end started.
    pub queue_waits: u64,
    pub queue_overflows: u64,
    pub requests: RequestsView,
    pub apps: Vec<AppView>,
    /// Hourly points over the last 24 hours, oldest first.
    pub history: Vec<HourView>,
}

/// One hour of a tenant's usage.
#[derive(Debug, Clone, Serialize)]
pub struct HourView {
    /// The hour's start (RFC 3339), and in milliseconds since the epoch.
    pub hour: String,
    pub hour_ms: i64,
    /// Time-weighted average over the covered time.
    pub memory_avg_bytes: u64,
    pub memory_peak_bytes: u64,
    pub cpu_seconds: f64,
    /// Seconds of the hour the samples cover.
    pub covered_seconds: f64,
}

impl From<&HourPoint> for HourView {
    fn from(p: &HourPoint) -> HourView {
        HourView {
            hour: show_ms(p.hour_ms),
            hour_ms: p.hour_ms,
            memory_avg_bytes: p.memory_avg,
            memory_peak_bytes: p.memory_peak,
            cpu_seconds: p.cpu_seconds,
            covered_seconds: p.covered_s,
        }
    }
}

/// The limits in the units people write them in.
#[derive(Debug, Clone, Serialize)]
pub struct LimitsView {
    pub memory_bytes: Option<u64>,
    pub process_memory_bytes: Option<u64>,
    pub tasks: Option<u32>,
    pub cpu_cores: Option<f64>,
    pub open_files: u64,
    pub concurrency: u32,
    pub queue: u32,
    pub queue_timeout_seconds: f64,
    pub overflow_status: u16,
}

impl From<&Limits> for LimitsView {
    fn from(l: &Limits) -> LimitsView {
        LimitsView {
            memory_bytes: l.memory,
            process_memory_bytes: l.process_memory,
            tasks: l.tasks,
            cpu_cores: l.cpu_millis.map(|m| f64::from(m) / 1000.0),
            open_files: l.open_files,
            concurrency: l.concurrency,
            queue: l.queue,
            queue_timeout_seconds: l.queue_timeout.as_secs_f64(),
            overflow_status: l.overflow_status,
        }
    }
}

/// A tenant's requests since the front end started.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestsView {
    pub total: u64,
    /// By status class: "1xx" … "5xx", "other".
    pub by_class: std::collections::BTreeMap<&'static str, u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// How long they took: per upper bound in seconds, the requests that
    /// took at most it (cumulative, as Prometheus counts); the last bound
    /// is infinity, written `null` in JSON.
    pub duration_buckets: Vec<(f64, u64)>,
    pub duration_seconds_sum: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppView {
    pub name: String,
    pub protocol: &'static str,
    pub max_processes: Option<u32>,
    /// Bytes its cgroup holds now.
    pub memory: Option<u64>,
    /// Requests waiting for one of its processes.
    pub waiting: u32,
    /// Requests served (CGI: scripts started) since the front end started.
    pub requests: u64,
    pub cgi_running: u32,
    pub last_problem: Option<ProblemView>,
    pub processes: Vec<ProcessView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProblemView {
    pub at: String,
    pub text: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessView {
    pub slot: u32,
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    /// "starting", "idle", "busy", "draining" or "recycling".
    pub state: &'static str,
    /// Requests it is serving now, and has served.
    pub in_flight: u32,
    pub requests_served: u64,
    /// Resident bytes.
    pub memory: Option<u64>,
    pub started_at: Option<String>,
    pub uptime_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    pub at: String,
    pub first_at: String,
    #[serde(flatten)]
    pub event: LimitEvent,
}

impl View {
    /// The view of `snapshot` (the supervisor's last, if any) and of the
    /// front end's own state now.
    pub fn build(snapshot: Option<&StatusSnapshot>, shared: &Shared) -> View {
        let now = SystemTime::now();
        let now_ms = ms(now);
        let apps = shared.apps.status();
        let totals = usage::all_totals();
        let gates: HashMap<String, _> = shared.tenants.counters().into_iter().collect();
        let tenant_front = |name: &str, t: &mut TenantView| {
            if let Some(g) = gates.get(name) {
                t.in_flight = g.in_flight();
                t.waiting = g.waiting();
                t.queue_waits = g.queue_waits();
                t.queue_overflows = g.overflows();
            }
            if let Some(u) = totals.get(name) {
                t.requests = requests_view(u);
            }
        };
        let mut tenants = Vec::new();
        match snapshot {
            Some(snap) => {
                for ts in &snap.tenants {
                    let mut t = TenantView {
                        name: ts.name.clone(),
                        user: Some(ts.user.clone()),
                        uid: Some(ts.uid),
                        limits: Some(LimitsView::from(&ts.limits)),
                        usage: ts.usage,
                        in_flight: 0,
                        waiting: 0,
                        queue_waits: 0,
                        queue_overflows: 0,
                        requests: RequestsView::default(),
                        apps: Vec::new(),
                        history: ts.history.iter().map(HourView::from).collect(),
                    };
                    tenant_front(&ts.name, &mut t);
                    for a in &ts.apps {
                        let id = AppId {
                            tenant: ts.name.clone(),
                            app: a.name.clone(),
                        };
                        let front = apps.get(&id).cloned().unwrap_or_default();
                        t.apps.push(app_view(a, &front, now_ms));
                    }
                    tenants.push(t);
                }
            }
            // Before the supervisor's first figures: what the front end
            // knows, its tenants' gates.
            None => {
                let mut names: Vec<&String> = gates.keys().collect();
                names.sort();
                for name in names {
                    let mut t = TenantView {
                        name: name.clone(),
                        user: None,
                        uid: None,
                        limits: None,
                        usage: None,
                        in_flight: 0,
                        waiting: 0,
                        queue_waits: 0,
                        queue_overflows: 0,
                        requests: RequestsView::default(),
                        apps: Vec::new(),
                        history: Vec::new(),
                    };
                    tenant_front(name, &mut t);
                    tenants.push(t);
                }
            }
        }
        View {
            generated_at: show_ms(now_ms),
            figures_at: snapshot.map(|s| show_ms(s.at_ms)),
            figures_age_seconds: snapshot.map(|s| (now_ms - s.at_ms).max(0) as f64 / 1000.0),
            started_at: snapshot.map(|s| show_ms(s.started_ms)),
            cgroups: snapshot.map(|s| s.cgroups.clone()),
            meter_interval_seconds: snapshot.and_then(|s| s.meter_interval_s),
            tenants,
            events: snapshot
                .map(|s| {
                    s.events
                        .iter()
                        .map(|e| EventView {
                            at: show_ms(e.at_ms),
                            first_at: show_ms(e.first_ms),
                            event: e.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            cluster: shared
                .farm
                .load()
                .as_deref()
                .map(super::cluster::ClusterView::build),
        }
    }
}

fn requests_view(t: &usage::Totals) -> RequestsView {
    let mut cumulative = 0;
    let mut buckets = Vec::with_capacity(t.duration.len());
    for (i, n) in t.duration.iter().enumerate() {
        cumulative += n;
        let bound = DURATION_BOUNDS.get(i).copied().unwrap_or(f64::INFINITY);
        buckets.push((bound, cumulative));
    }
    RequestsView {
        total: t.requests(),
        by_class: CLASSES.iter().copied().zip(t.class).collect(),
        bytes_in: t.bytes_in,
        bytes_out: t.bytes_out,
        duration_buckets: buckets,
        duration_seconds_sum: t.duration_usec as f64 / 1e6,
    }
}

/// An app of the snapshot joined with the front end's view of its pool:
/// the supervisor's processes (pid, uid, memory, uptime) with the front
/// end's (state, requests), by slot.
fn app_view(a: &crate::ipc::AppStatus, front: &AppFront, now_ms: i64) -> AppView {
    let processes = a
        .processes
        .iter()
        .map(|p| {
            let f = front.processes.iter().find(|f| f.slot == p.slot);
            let state = match f {
                _ if p.recycling => "recycling",
                Some(f) if f.draining => "draining",
                Some(f) if f.active > 0 => "busy",
                Some(f) if f.fresh => "starting",
                Some(_) => "idle",
                // Started for `min_processes` and not yet announced, or
                // on its way out.
                None => "idle",
            };
            ProcessView {
                slot: p.slot,
                pid: Some(p.pid),
                uid: Some(p.uid),
                state,
                in_flight: f.map_or(0, |f| f.active),
                requests_served: f.map_or(0, |f| f.served),
                memory: p.memory,
                started_at: Some(show_ms(p.started_ms)),
                uptime_seconds: Some((now_ms - p.started_ms).max(0) as f64 / 1000.0),
            }
        })
        .collect();
    AppView {
        name: a.name.clone(),
        protocol: protocol_name(a.protocol),
        max_processes: Some(a.max_processes),
        memory: a.memory,
        waiting: front.waiting,
        requests: front.requests,
        cgi_running: a.cgi_running.max(front.cgi_running),
        last_problem: a.last_problem.as_ref().map(|(at, text)| ProblemView {
            at: show_ms(*at),
            text: text.clone(),
        }),
        processes,
    }
}

/// The protocol as the configuration writes it.
pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::FastCgi => "fastcgi",
        Protocol::Http => "http",
        Protocol::Cgi => "cgi",
    }
}

/// Milliseconds since the Unix epoch.
pub fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 in UTC.
pub fn show_ms(ms: i64) -> String {
    crate::usage::show_time(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}
