//! Recent limit events, for the status page: OOM kills (`apps::oom_check`),
//! processes recycled for `process_memory` (`AppManager::over_memory`), and
//! what the meter finds in the tenants' groups between two samples (memory
//! limit reached, forks refused at `tasks`).
//!
//! The OOM kills found are also counted per tenant, for the meter on
//! cgroup v1 ([`oom_kills`]).
//!
//! Kept in one bounded list, newest first, that any thread may add to (the
//! kill of a stopped process is seen on a thread of its own): at most
//! [`EVENTS_KEPT`], and a repeat of the same kind for the same tenant and
//! app within [`COALESCE`] counts in the event before it instead of pushing
//! others out, so one tenant at its limit all day leaves one line, not fifty.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ipc::{EVENTS_KEPT, EventKind, LimitEvent};

/// Repeats within this of the last one are counted in it.
const COALESCE: Duration = Duration::from_secs(60);

static EVENTS: Mutex<VecDeque<LimitEvent>> = Mutex::new(VecDeque::new());

/// OOM kills recorded per tenant since berth started (see [`oom_kills`]).
static OOM_KILLS: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);

/// `count` events of `kind` happened to `tenant` (in `app`) just now.
pub fn record(tenant: &str, app: Option<&str>, kind: EventKind, count: u64, text: String) {
    if kind == EventKind::OomKill {
        let mut all = OOM_KILLS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *all.get_or_insert_with(HashMap::new)
            .entry(tenant.to_string())
            .or_default() += count;
    }
    record_at(&EVENTS, SystemTime::now(), tenant, app, kind, count, text);
}

/// The OOM kills of `tenant`'s processes that berth found since it started
/// (`apps::oom_check`). On cgroup v1 this is the tenant's count: the kernel
/// counts a kill only in the victim's own group, a leaf that goes with it.
pub fn oom_kills(tenant: &str) -> u64 {
    let all = OOM_KILLS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    all.as_ref()
        .and_then(|m| m.get(tenant).copied())
        .unwrap_or(0)
}

/// The events kept, newest first.
pub fn recent() -> Vec<LimitEvent> {
    EVENTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .cloned()
        .collect()
}

fn record_at(
    events: &Mutex<VecDeque<LimitEvent>>,
    now: SystemTime,
    tenant: &str,
    app: Option<&str>,
    kind: EventKind,
    count: u64,
    text: String,
) {
    if count == 0 {
        return;
    }
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut events = events
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let same = events
        .iter()
        .position(|e| e.kind == kind && e.tenant == tenant && e.app.as_deref() == app);
    if let Some(i) = same
        && now_ms - events[i].at_ms <= COALESCE.as_millis() as i64
        && let Some(mut e) = events.remove(i)
    {
        e.at_ms = now_ms;
        e.count += count;
        e.text = text;
        events.push_front(e);
        return;
    }
    events.push_front(LimitEvent {
        at_ms: now_ms,
        first_ms: now_ms,
        count,
        tenant: tenant.to_string(),
        app: app.map(str::to_string),
        kind,
        text,
    });
    events.truncate(EVENTS_KEPT);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_a_minute_count_in_one_event_and_the_list_stays_bounded() {
        let events = Mutex::new(VecDeque::new());
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let oom = |n: u64| format!("process {n} was killed");
        record_at(
            &events,
            at(0),
            "a",
            Some("py"),
            EventKind::OomKill,
            1,
            oom(1),
        );
        record_at(
            &events,
            at(5),
            "b",
            None,
            EventKind::MemoryLimit,
            7,
            "b".into(),
        );
        record_at(
            &events,
            at(30),
            "a",
            Some("py"),
            EventKind::OomKill,
            1,
            oom(2),
        );
        record_at(
            &events,
            at(31),
            "a",
            Some("cgi"),
            EventKind::OomKill,
            1,
            oom(3),
        );
        record_at(
            &events,
            at(32),
            "a",
            None,
            EventKind::Recycle,
            0,
            "none".into(),
        );
        let list: Vec<_> = events.lock().unwrap().iter().cloned().collect();
        assert_eq!(list.len(), 3, "{list:?}");
        assert_eq!(list[0].app.as_deref(), Some("cgi"));
        let py = &list[1];
        assert_eq!((py.count, py.text.as_str()), (2, "process 2 was killed"));
        assert_eq!(py.first_ms + 30_000, py.at_ms);
        // More than a minute after the last: an event of its own.
        record_at(
            &events,
            at(100),
            "a",
            Some("py"),
            EventKind::OomKill,
            1,
            oom(4),
        );
        assert_eq!(events.lock().unwrap().len(), 4);
        for i in 0..2 * EVENTS_KEPT as u64 {
            let tenant = format!("t{i}");
            record_at(
                &events,
                at(200 + i),
                &tenant,
                None,
                EventKind::TasksLimit,
                1,
                tenant.clone(),
            );
        }
        let list = events.lock().unwrap();
        assert_eq!(list.len(), EVENTS_KEPT);
        assert_eq!(list[0].tenant, format!("t{}", 2 * EVENTS_KEPT - 1));
    }
}
