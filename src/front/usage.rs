//! What each tenant's requests used, counted in the front end and handed to
//! the supervisor every `meter_interval` (as deltas) for the usage database.
//!
//! One [`TenantUsage`] per tenant, kept by name across plans and log
//! reopenings (like the tenants' error logs), so that a reload loses no
//! count. Counting is a few relaxed atomic additions when a response ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use super::tenants::TenantCounters;
use crate::ipc::RequestCounts;

/// One tenant's counters since they were last taken.
#[derive(Debug, Default)]
pub struct TenantUsage {
    requests: AtomicU64,
    status: [AtomicU64; 4],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl TenantUsage {
    /// A response ended: its status, the request body's declared length and
    /// the body bytes sent.
    pub fn record(&self, status: u16, bytes_in: u64, bytes_out: u64) {
        self.requests.fetch_add(1, Relaxed);
        if let Some(c) = (status / 100)
            .checked_sub(2)
            .and_then(|i| self.status.get(i as usize))
        {
            c.fetch_add(1, Relaxed);
        }
        self.bytes_in.fetch_add(bytes_in, Relaxed);
        self.bytes_out.fetch_add(bytes_out, Relaxed);
    }

    /// The counts since the last take, which start again from zero.
    fn take(&self) -> RequestCounts {
        let t = |a: &AtomicU64| a.swap(0, Relaxed);
        RequestCounts {
            requests: t(&self.requests),
            status_2xx: t(&self.status[0]),
            status_3xx: t(&self.status[1]),
            status_4xx: t(&self.status[2]),
            status_5xx: t(&self.status[3]),
            bytes_in: t(&self.bytes_in),
            bytes_out: t(&self.bytes_out),
            queue_waits: 0,
            queue_overflows: 0,
        }
    }
}

static TENANTS: Mutex<Option<HashMap<String, Arc<TenantUsage>>>> = Mutex::new(None);

/// The counters of `tenant` (made on first use).
pub fn of(tenant: &str) -> Arc<TenantUsage> {
    let mut all = TENANTS.lock().expect("usage lock");
    all.get_or_insert_with(HashMap::new)
        .entry(tenant.to_string())
        .or_default()
        .clone()
}

/// Every tenant's counts since the last call (tenants with none left out),
/// with the waits and refusals of their gates ([`super::tenants`], whose
/// counters only grow: `seen` keeps what was taken of them).
pub fn take_all(
    gates: &[(String, Arc<TenantCounters>)],
    seen: &mut HashMap<String, (u64, u64)>,
) -> Vec<(String, RequestCounts)> {
    let mut out: HashMap<String, RequestCounts> = {
        let all = TENANTS.lock().expect("usage lock");
        all.iter()
            .flatten()
            .map(|(name, u)| (name.clone(), u.take()))
            .collect()
    };
    for (name, gate) in gates {
        let now = (gate.queue_waits(), gate.overflows());
        let before = seen.insert(name.clone(), now).unwrap_or((0, 0));
        let c = out.entry(name.clone()).or_default();
        c.queue_waits += now.0.saturating_sub(before.0);
        c.queue_overflows += now.1.saturating_sub(before.1);
    }
    seen.retain(|name, _| gates.iter().any(|(n, _)| n == name));
    out.into_iter()
        .filter(|(_, c)| *c != RequestCounts::default())
        .collect()
}

/// Forgets tenants no longer configured (once their counts were taken).
pub fn retain(tenants: &[String]) {
    let mut all = TENANTS.lock().expect("usage lock");
    if let Some(map) = all.as_mut() {
        map.retain(|name, _| tenants.contains(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_status_class_and_start_again_after_a_take() {
        let u = of("usage-test-tenant");
        u.record(200, 10, 100);
        u.record(304, 0, 0);
        u.record(404, 0, 9);
        u.record(502, 0, 1);
        u.record(101, 0, 0);
        let mut seen = HashMap::new();
        let taken = take_all(&[], &mut seen);
        let (_, c) = taken
            .iter()
            .find(|(n, _)| n == "usage-test-tenant")
            .unwrap();
        assert_eq!(
            *c,
            RequestCounts {
                requests: 5,
                status_2xx: 1,
                status_3xx: 1,
                status_4xx: 1,
                status_5xx: 1,
                bytes_in: 10,
                bytes_out: 110,
                queue_waits: 0,
                queue_overflows: 0,
            }
        );
        assert!(
            !take_all(&[], &mut seen)
                .iter()
                .any(|(n, _)| n == "usage-test-tenant")
        );
    }
}
