//! The status snapshot the supervisor sends the front end for its admin
//! pages ([`crate::ipc::StatusSnapshot`], `docs/status.md`): the meter's
//! last [`MeterView`] (read on the meter thread: cgroup figures, memory of
//! processes, the last 24 hours) joined on the loop with what only the loop
//! knows, cheaply: the configuration's tenants and limits, each app's
//! processes, and the recent limit events. Nothing here reads a file.

use std::time::SystemTime;

use super::apps::AppManager;
use super::meter::MeterView;
use crate::config::Config;
use crate::ipc::{AppId, StatusSnapshot, TenantStatus};

/// The snapshot of `config`'s tenants with `view`'s figures.
pub fn snapshot(
    config: &Config,
    apps: &AppManager,
    view: &MeterView,
    started: SystemTime,
    cgroups: &str,
) -> StatusSnapshot {
    let ms = crate::usage::to_ms;
    let tenants = config
        .tenants
        .iter()
        .map(|t| {
            let figures = view.tenants.get(&t.name);
            TenantStatus {
                name: t.name.clone(),
                user: t.user.clone(),
                uid: t.uid,
                limits: t.limits,
                usage: figures.and_then(|f| f.usage),
                apps: t
                    .apps
                    .iter()
                    .filter_map(|a| {
                        let id = AppId {
                            tenant: t.name.clone(),
                            app: a.name.clone(),
                        };
                        let memory = figures.and_then(|f| f.apps.get(&a.name).copied());
                        apps.status(&id, &view.rss, memory)
                    })
                    .collect(),
                history: figures.map(|f| f.history.clone()).unwrap_or_default(),
            }
        })
        .collect();
    StatusSnapshot {
        at_ms: ms(view.at.unwrap_or_else(SystemTime::now)),
        started_ms: ms(started),
        cgroups: cgroups.to_string(),
        meter_interval_s: config.server.meter_interval.map(|d| d.as_secs_f64()),
        tenants,
        events: super::events::recent(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Limits, Protocol};
    use crate::ipc::{
        AppStatus, EVENTS_KEPT, EventKind, HourPoint, LimitEvent, ProcessStatus, UsageNow,
    };

    /// A snapshot of 1,000 tenants, each with two apps of two processes,
    /// 24 hours of history and long names, with the most events: its frame
    /// is far below `ipc`'s largest, and the outbox keeps one.
    #[test]
    fn a_snapshot_of_a_thousand_tenants_fits_a_frame_and_replaces_an_unsent_one() {
        let hour = 1_800_000_000_000;
        let app = |name: &str| AppStatus {
            name: name.into(),
            protocol: Protocol::FastCgi,
            max_processes: 8,
            memory: Some(123_456_789),
            processes: (1..=2)
                .map(|slot| ProcessStatus {
                    slot,
                    pid: 4_000_000,
                    uid: 1_000_000,
                    memory: Some(98_765_432),
                    started_ms: hour,
                    recycling: false,
                })
                .collect(),
            cgi_running: 0,
            last_problem: Some((
                hour,
                "process 3 exited (signal: 9 (SIGKILL)) after 2.1s".into(),
            )),
        };
        let tenants = (0..1000)
            .map(|i| TenantStatus {
                name: format!("tenant-with-a-long-name-{i:05}"),
                user: format!("berth-tenant-{i:05}"),
                uid: 100_000 + i as u32,
                limits: Limits::default(),
                usage: Some(UsageNow {
                    memory: 512 << 20,
                    tasks: 42,
                    cpu_cores: 0.123456,
                    cpu_seconds: 123456.789,
                    cpu_throttled_seconds: 12.5,
                    oom_kills: 3,
                    memory_events: 1234,
                    tasks_limit_hits: 5,
                    recycles: 2,
                }),
                apps: vec![app("php"), app("blog")],
                history: (0..24)
                    .map(|h| HourPoint {
                        hour_ms: hour + h * 3_600_000,
                        memory_avg: 400 << 20,
                        memory_peak: 500 << 20,
                        cpu_seconds: 1234.567,
                        covered_s: 3600.0,
                    })
                    .collect(),
            })
            .collect();
        let snapshot = StatusSnapshot {
            at_ms: hour,
            started_ms: hour,
            cgroups: "v1".into(),
            meter_interval_s: Some(10.0),
            tenants,
            events: (0..EVENTS_KEPT)
                .map(|i| LimitEvent {
                    at_ms: hour,
                    first_ms: hour,
                    count: 12,
                    tenant: format!("tenant-with-a-long-name-{i:05}"),
                    app: Some("php".into()),
                    kind: EventKind::OomKill,
                    text: "process 3 was killed by the OOM killer: the tenant reached its memory limit (512MiB); requests it was serving got 502".into(),
                })
                .collect(),
        };
        let msg = crate::ipc::ToFront::Status(Box::new(snapshot));
        let t0 = std::time::Instant::now();
        let bytes = serde_json::to_vec(&msg).unwrap().len();
        eprintln!(
            "a status snapshot of 1,000 tenants: {bytes} bytes, encoded in {:?}",
            t0.elapsed()
        );
        assert!(bytes < 8 << 20, "{bytes} bytes");
        let mut out = crate::ipc::Outbox::new(crate::ipc::OUTBOX_LIMIT);
        for _ in 0..20 {
            out.push(&msg, Vec::new()).unwrap();
        }
        assert!(out.bytes() < bytes + 16, "{} bytes queued", out.bytes());
    }
}
