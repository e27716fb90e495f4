//! What each tenant's requests used, counted in the front end: handed to the
//! supervisor every `meter_interval` (as deltas) for the usage database, and
//! read as they are by `/metrics` (`admin`), with a histogram of how long
//! the requests took.
//!
//! One [`TenantUsage`] per tenant, kept by name across plans and log
//! reopenings (like the tenants' error logs), so that a reload loses no
//! count. Counting is five relaxed atomic additions when a response ends;
//! the counters only grow, and the metering takes differences
//! ([`take_all`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::tenants::TenantCounters;
use crate::ipc::RequestCounts;

/// The upper bounds of the request-duration histogram's buckets, in
/// seconds (Prometheus's default buckets); a last one takes the rest.
pub const DURATION_BOUNDS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// [`DURATION_BOUNDS`] in microseconds, as requests are measured.
const BOUNDS_USEC: [u64; 11] = [
    5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000,
];

/// Status classes counted apart: 1xx to 5xx, and any other status.
pub const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// One tenant's counters since the front end started (or the tenant was
/// added).
#[derive(Debug, Default)]
pub struct TenantUsage {
    /// Responses by [`CLASSES`].
    class: [AtomicU64; 6],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Requests by how long they took, from the head read to the last
    /// byte of the response handed to the kernel: one per bound of
    /// [`DURATION_BOUNDS`] (those that took at most it, and more than the
    /// one before), then those that took longer.
    duration: [AtomicU64; 12],
    duration_usec: AtomicU64,
}

/// A copy of one tenant's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub class: [u64; 6],
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Per bucket, not cumulative.
    pub duration: [u64; 12],
    pub duration_usec: u64,
}

impl Totals {
    pub fn requests(&self) -> u64 {
        self.class.iter().sum()
    }
}

impl TenantUsage {
    /// Request body bytes berth read from a client, as they come.
    pub fn received(&self, n: u64) {
        self.bytes_in.fetch_add(n, Relaxed);
    }

    /// A response ended: its status, the body bytes sent and how long the
    /// request took.
    pub fn record(&self, status: u16, bytes_out: u64, took: Duration) {
        let class = match status / 100 {
            c @ 1..=5 => c as usize - 1,
            _ => 5,
        };
        self.class[class].fetch_add(1, Relaxed);
        self.bytes_out.fetch_add(bytes_out, Relaxed);
        let usec = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_USEC
            .iter()
            .position(|&b| usec <= b)
            .unwrap_or(BOUNDS_USEC.len());
        self.duration[bucket].fetch_add(1, Relaxed);
        self.duration_usec.fetch_add(usec, Relaxed);
    }

    /// The counters as they are now.
    pub fn totals(&self) -> Totals {
        let load = |a: &AtomicU64| a.load(Relaxed);
        Totals {
            class: self.class.each_ref().map(load),
            bytes_in: load(&self.bytes_in),
            bytes_out: load(&self.bytes_out),
            duration: self.duration.each_ref().map(load),
            duration_usec: load(&self.duration_usec),
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

/// Every tenant's counters now.
pub fn all_totals() -> HashMap<String, Totals> {
    let all = TENANTS.lock().expect("usage lock");
    all.iter()
        .flatten()
        .map(|(name, u)| (name.clone(), u.totals()))
        .collect()
}

/// What [`take_all`] took last, per tenant: its counters and its gate's.
#[derive(Debug, Default)]
pub struct Seen(HashMap<String, (Totals, (u64, u64))>);

/// Every tenant's counts since the last call (tenants with none left out),
/// with the waits and refusals of their gates ([`super::tenants`]). Both
/// only grow; `seen` keeps what was taken of them. A counter found lower
/// than it was (the tenant was removed and added again) counts from zero.
pub fn take_all(
    gates: &[(String, Arc<TenantCounters>)],
    seen: &mut Seen,
) -> Vec<(String, RequestCounts)> {
    let delta = |now: u64, before: u64| now.checked_sub(before).unwrap_or(now);
    let mut out: HashMap<String, RequestCounts> = HashMap::new();
    let totals = all_totals();
    for (name, &t) in &totals {
        let before = seen.0.get(name).map(|s| s.0).unwrap_or_default();
        let class = |i: usize| delta(t.class[i], before.class[i]);
        let c = RequestCounts {
            requests: (0..CLASSES.len()).map(class).sum(),
            status_2xx: class(1),
            status_3xx: class(2),
            status_4xx: class(3),
            status_5xx: class(4),
            bytes_in: delta(t.bytes_in, before.bytes_in),
            bytes_out: delta(t.bytes_out, before.bytes_out),
            queue_waits: 0,
            queue_overflows: 0,
        };
        seen.0.entry(name.clone()).or_default().0 = t;
        out.insert(name.clone(), c);
    }
    for (name, gate) in gates {
        let now = (gate.queue_waits(), gate.overflows());
        let entry = seen.0.entry(name.clone()).or_default();
        let before = std::mem::replace(&mut entry.1, now);
        let c = out.entry(name.clone()).or_default();
        c.queue_waits += delta(now.0, before.0);
        c.queue_overflows += delta(now.1, before.1);
    }
    seen.0
        .retain(|name, _| totals.contains_key(name) || gates.iter().any(|(n, _)| n == name));
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
        let ms = Duration::from_millis;
        u.received(4);
        u.record(200, 100, ms(1));
        u.received(6);
        u.record(304, 0, ms(7));
        u.record(404, 9, ms(30));
        u.record(502, 1, ms(20_000));
        u.record(101, 0, ms(5));
        let gate = Arc::new(TenantCounters::default());
        let gates = [("usage-test-tenant".to_string(), gate)];
        let mut seen = Seen::default();
        let taken = take_all(&gates, &mut seen);
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
            !take_all(&gates, &mut seen)
                .iter()
                .any(|(n, _)| n == "usage-test-tenant")
        );
        u.record(200, 1, ms(1));
        let again = take_all(&gates, &mut seen);
        let (_, c) = again
            .iter()
            .find(|(n, _)| n == "usage-test-tenant")
            .unwrap();
        assert_eq!((c.requests, c.status_2xx, c.bytes_out), (1, 1, 1));
        // The totals stay whole for /metrics: 1 ms and 5 ms in the first
        // bucket (at most 5 ms), 7 ms in the second, 20 s past the last.
        let t = u.totals();
        assert_eq!(t.requests(), 6);
        assert_eq!(t.class, [1, 2, 1, 1, 1, 0]);
        assert_eq!(t.duration, [3, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(t.duration_usec, 20_044_000);
    }
}
