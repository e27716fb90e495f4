//! Each tenant's concurrency in the front end (CloudLinux LVE's "entry
//! processes"): at most the tenant's `concurrency` requests in its apps at
//! once, up to `queue` more waiting, none longer than `queue_timeout`; a
//! request past that is refused with `overflow_status` and `Retry-After`.
//!
//! Request flow position: handler → app route (the script is found and the
//! request body read) → here, a place in the tenant's [`Gate`] → `apps` (a
//! process of the app, or a CGI run, with the app's own bounded queue) →
//! backend. Static files, redirects, auth refusals and scripts that do not
//! exist never come here, so a tenant at its limit still has its static files
//! served at once, and other tenants' gates are not touched at all.
//!
//! - In order: a place that comes free goes to the oldest request still
//!   waiting; a newcomer never takes it first ([`Gate::enter`]).
//! - Held as long as the app works on the request: the [`Entry`] travels with
//!   the app's lease (or the CGI run) and is given back when the process is,
//!   that is when the app has finished its response into berth's buffer
//!   (`buffer`), not when the client has finished reading it: a slow client
//!   holds memory or a temporary file, never a place of its tenant. A
//!   response read at the client's pace (a streaming one, or one past
//!   `max_response_buffer`) holds its process and so its place, and an
//!   upgraded connection (WebSocket through an HTTP app) holds both for its
//!   whole life, as it holds an LVE entry process.
//! - A request that goes away while it waits (the client closed: its future
//!   is dropped) leaves the queue at once; a place handed to it at that very
//!   moment goes on to the next one.
//! - Reloads: [`Tenants::update`] keeps the gate of every tenant that stays
//!   (its places, its queue, its counters) and gives it the new limits. They
//!   apply to requests from then on: places in flight stay valid, and a lower
//!   `concurrency` is reached as they end; requests already waiting keep
//!   their place and their deadline. A removed tenant's gate leaves the
//!   registry; its requests in flight finish with it.
//! - Refusals are counted ([`TenantCounters`], with the requests that had to
//!   wait), and written to the tenant's error log at most once a
//!   [`LOG_EVERY`], each line saying how many were refused since the last
//!   one, so that a flood of refusals does not spend the tenant's error-log
//!   rate that its apps' own lines need.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rustc_hash::FxBuildHasher;
use tokio::sync::oneshot;

use crate::config::Limits;
use crate::ipc::AppId;
use crate::tenant_log::TenantLog;

/// The `Retry-After` of a refused request, in seconds: long enough that a
/// client honouring it does not come straight back into a full queue, short
/// enough that a page is retried while its reader still waits (the
/// requests of a tenant at its limit usually end within a second or two).
pub const RETRY_AFTER: u32 = 2;

/// The most often a gate writes a refusal to its tenant's error log.
pub const LOG_EVERY: Duration = Duration::from_secs(1);

/// Every tenant's gate, by name: shared by all workers, read without a lock.
#[derive(Default)]
pub struct Tenants {
    gates: ArcSwap<HashMap<String, Arc<Gate>, FxBuildHasher>>,
}

impl Tenants {
    /// Takes the tenants of a new plan: `names` and their `limits`, in the
    /// same order. A tenant that stays keeps its gate (see the module doc).
    pub fn update(&self, names: &[String], limits: &[Limits]) {
        let old = self.gates.load();
        let gates = names
            .iter()
            .zip(limits)
            .map(|(name, limits)| {
                let gate = old.get(name).cloned().unwrap_or_else(|| Gate::new(name));
                gate.set_limits(*limits);
                (name.clone(), gate)
            })
            .collect();
        self.gates.store(Arc::new(gates));
    }

    /// The gate of `tenant`, if the plan has it.
    pub fn gate(&self, tenant: &str) -> Option<Arc<Gate>> {
        self.gates.load().get(tenant).cloned()
    }

    /// Requests in the tenants' apps now, and how many more their
    /// `concurrency` allows (what a farm's node announces as its busy and
    /// free slots). Once an interval: takes each gate's lock briefly.
    pub fn slots(&self) -> (u32, u32) {
        let (mut busy, mut free) = (0u32, 0u32);
        for gate in self.gates.load().values() {
            let in_flight = gate.counters.in_flight();
            let places = gate.lock().limits.concurrency;
            busy = busy.saturating_add(in_flight);
            free = free.saturating_add(places.saturating_sub(in_flight));
        }
        (busy, free)
    }

    /// Every tenant's counters, for metering: the same `Arc` for as long as
    /// the tenant stays in the configuration, so a reader may keep them.
    pub fn counters(&self) -> Vec<(String, Arc<TenantCounters>)> {
        self.gates
            .load()
            .iter()
            .map(|(name, gate)| (name.clone(), gate.counters.clone()))
            .collect()
    }
}

/// What a tenant's requests in its apps did, since the tenant's gate was made
/// (when berth started, or when a reload added the tenant). Counters only
/// grow; a reader takes differences.
#[derive(Debug, Default)]
pub struct TenantCounters {
    in_flight: AtomicU32,
    waiting: AtomicU32,
    queue_waits: AtomicU64,
    overflows: AtomicU64,
}

impl TenantCounters {
    /// Requests holding one of the tenant's places now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests waiting for a place now (the queue's depth).
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Requests that found every place taken and had to wait (whether they
    /// got one or not).
    pub fn queue_waits(&self) -> u64 {
        self.queue_waits.load(Ordering::Relaxed)
    }

    /// Requests refused: past the queue, or after waiting `queue_timeout`.
    pub fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }
}

/// One tenant's places.
pub struct Gate {
    tenant: String,
    state: Mutex<State>,
    counters: Arc<TenantCounters>,
}

struct State {
    limits: Limits,
    /// Places held ([`Entry`]s alive, handed-out ones not read yet included).
    in_flight: u32,
    /// Requests waiting, oldest first, each with its number (increasing, so
    /// one that goes away is found by a binary search).
    waiters: VecDeque<(u64, oneshot::Sender<Entry>)>,
    next_waiter: u64,
    /// Refusals not written to the error log yet.
    unlogged: u64,
    /// No refusal line before then.
    quiet_until: Option<Instant>,
}

/// A place in a tenant's gate, given back when dropped.
pub struct Entry {
    gate: Arc<Gate>,
    /// Taken back by hand under the gate's lock (see [`Gate::admit`]): the
    /// drop does nothing.
    defused: bool,
}

impl Drop for Entry {
    fn drop(&mut self) {
        if !self.defused {
            self.gate.release();
        }
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Entry({})", self.gate.tenant)
    }
}

/// A request refused at its tenant's limit.
#[derive(Debug)]
pub struct Overflow {
    pub tenant: String,
    /// `overflow_status` at the time.
    pub status: u16,
    pub why: Why,
}

/// Why a request got no place.
#[derive(Debug, PartialEq, Eq)]
pub enum Why {
    /// Every place was taken and `queue` requests were waiting already.
    QueueFull { concurrency: u32, queue: u32 },
    /// It waited `queue_timeout` and no place came free.
    Waited { concurrency: u32, timeout: Duration },
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::QueueFull {
                concurrency,
                queue: 0,
            } => write!(
                f,
                "every place is taken (concurrency = {concurrency}) and none may wait \
                 (queue = 0)"
            ),
            Why::QueueFull { concurrency, queue } => write!(
                f,
                "every place is taken (concurrency = {concurrency}) and the queue is full \
                 ({queue} waiting)"
            ),
            Why::Waited {
                concurrency,
                timeout,
            } => write!(
                f,
                "every place (concurrency = {concurrency}) stayed taken for queue_timeout \
                 ({timeout:?})"
            ),
        }
    }
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tenant {}: {}", self.tenant, self.why)
    }
}

impl Gate {
    fn new(tenant: &str) -> Arc<Gate> {
        Arc::new(Gate {
            tenant: tenant.to_string(),
            state: Mutex::new(State {
                limits: Limits::default(),
                in_flight: 0,
                waiters: VecDeque::new(),
                next_waiter: 0,
                unlogged: 0,
                quiet_until: None,
            }),
            counters: Arc::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing is left half-done under this lock by a panic that matters
        // more than serving on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tenant's counters.
    pub fn counters(&self) -> &Arc<TenantCounters> {
        &self.counters
    }

    /// New limits (a reload). A higher `concurrency` lets waiting requests
    /// in at once.
    fn set_limits(self: &Arc<Self>, limits: Limits) {
        let mut st = self.lock();
        st.limits = limits;
        self.admit(&mut st);
    }

    /// A place for a request to `app`: at once while the tenant has one free
    /// and nobody waits, else after the requests that came before it, within
    /// `queue_timeout`. A refusal is counted and written to `log` (at most
    /// once a [`LOG_EVERY`]). Dropping the future leaves the queue.
    pub async fn enter(
        self: &Arc<Self>,
        app: &AppId,
        log: Option<&Arc<TenantLog>>,
    ) -> Result<Entry, Overflow> {
        let (seq, rx, timeout) = {
            let mut st = self.lock();
            let Limits {
                concurrency, queue, ..
            } = st.limits;
            if st.in_flight < concurrency && st.waiters.is_empty() {
                st.in_flight += 1;
                self.publish(&st);
                return Ok(Entry {
                    gate: self.clone(),
                    defused: false,
                });
            }
            if st.waiters.len() >= queue as usize {
                return Err(self.refuse(st, Why::QueueFull { concurrency, queue }, app, log));
            }
            let seq = st.next_waiter;
            st.next_waiter += 1;
            let (tx, rx) = oneshot::channel();
            st.waiters.push_back((seq, tx));
            self.counters.queue_waits.fetch_add(1, Ordering::Relaxed);
            self.publish(&st);
            (seq, rx, st.limits.queue_timeout)
        };
        let mut waiting = Waiting {
            gate: self,
            seq,
            rx: Some(rx),
        };
        let rx = waiting.rx.as_mut().expect("set above");
        if let Ok(Ok(entry)) = tokio::time::timeout(timeout, rx).await {
            // Taken off the queue when it was handed the place.
            waiting.rx = None;
            return Ok(entry);
        }
        drop(waiting);
        let st = self.lock();
        let why = Why::Waited {
            concurrency: st.limits.concurrency,
            timeout,
        };
        Err(self.refuse(st, why, app, log))
    }

    /// Counts a refusal and, when the log has been quiet long enough, writes
    /// it with the number of refusals since the last line.
    fn refuse(
        &self,
        mut st: MutexGuard<'_, State>,
        why: Why,
        app: &AppId,
        log: Option<&Arc<TenantLog>>,
    ) -> Overflow {
        self.counters.overflows.fetch_add(1, Ordering::Relaxed);
        let status = st.limits.overflow_status;
        st.unlogged += 1;
        let now = Instant::now();
        let write = log.is_some() && st.quiet_until.is_none_or(|t| now >= t);
        let refused = if write {
            st.quiet_until = Some(now + LOG_EVERY);
            std::mem::take(&mut st.unlogged)
        } else {
            0
        };
        drop(st);
        if let Some(log) = log.filter(|_| write) {
            let mut line = format!("berth: request refused with {status}: {why}");
            if refused > 1 {
                line.push_str(&format!(
                    "; {} more refused since the last such line",
                    refused - 1
                ));
            }
            log.line(&app.to_string(), line.as_bytes());
        }
        Overflow {
            tenant: self.tenant.clone(),
            status,
            why,
        }
    }

    /// A place comes back.
    fn release(self: &Arc<Self>) {
        let mut st = self.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        self.admit(&mut st);
    }

    /// Hands the free places to the oldest waiting requests. One that is gone
    /// (its receiver dropped) is skipped and its place taken back here, not
    /// by the entry's drop, which would take the lock again.
    fn admit(self: &Arc<Self>, st: &mut State) {
        while st.in_flight < st.limits.concurrency {
            let Some((_, w)) = st.waiters.pop_front() else {
                break;
            };
            st.in_flight += 1;
            let entry = Entry {
                gate: self.clone(),
                defused: false,
            };
            if let Err(mut back) = w.send(entry) {
                back.defused = true;
                st.in_flight -= 1;
            }
        }
        self.publish(st);
    }

    /// Copies the gauges where [`TenantCounters`] readers see them.
    fn publish(&self, st: &State) {
        self.counters
            .in_flight
            .store(st.in_flight, Ordering::Relaxed);
        self.counters
            .waiting
            .store(st.waiters.len() as u32, Ordering::Relaxed);
    }
}

/// A request in a gate's queue. Dropped before it got its place (timed out,
/// or the request went away), it leaves the queue; a place handed to it in
/// that moment goes back with its receiver, to the next one.
struct Waiting<'a> {
    gate: &'a Arc<Gate>,
    seq: u64,
    rx: Option<oneshot::Receiver<Entry>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(rx) = self.rx.take() else { return };
        {
            let mut st = self.gate.lock();
            if let Ok(i) = st.waiters.binary_search_by_key(&self.seq, |(s, _)| *s) {
                st.waiters.remove(i);
                self.gate.publish(&st);
            }
        }
        // Outside the lock: an entry in it is released through it.
        drop(rx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(concurrency: u32, queue: u32, queue_timeout: Duration) -> Limits {
        Limits {
            concurrency,
            queue,
            queue_timeout,
            ..Limits::default()
        }
    }

    /// The registry with one tenant `t` and its gate.
    fn gate(l: Limits) -> (Tenants, Arc<Gate>) {
        let tenants = Tenants::default();
        tenants.update(&["t".to_string()], &[l]);
        let gate = tenants.gate("t").unwrap();
        (tenants, gate)
    }

    fn app() -> AppId {
        AppId {
            tenant: "t".into(),
            app: "a".into(),
        }
    }

    const LONG: Duration = Duration::from_secs(60);

    /// Starts a request for a place; once it has one, its `name` goes to
    /// `got` and the task returns the entry.
    fn waiter(
        gate: &Arc<Gate>,
        name: u32,
        got: &tokio::sync::mpsc::UnboundedSender<u32>,
    ) -> tokio::task::JoinHandle<Result<Entry, Overflow>> {
        let (gate, got) = (gate.clone(), got.clone());
        tokio::spawn(async move {
            let entry = gate.enter(&app(), None).await;
            if entry.is_ok() {
                let _ = got.send(name);
            }
            entry
        })
    }

    /// Waits until `n` requests wait in `gate`.
    async fn until_waiting(gate: &Gate, n: u32) {
        while gate.counters.waiting() != n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn places_go_to_waiting_requests_in_the_order_they_came() {
        let (_t, gate) = gate(limits(1, 10, LONG));
        let first = gate.enter(&app(), None).await.unwrap();
        let (got_tx, mut got) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for name in 1..=3 {
            tasks.push(waiter(&gate, name, &got_tx));
            until_waiting(&gate, name).await;
        }
        // A newcomer queues behind them, even when a place is free for a
        // moment.
        drop(first);
        let mut order = Vec::new();
        for task in tasks {
            let entry = task.await.unwrap().expect("a place");
            order.push(got.recv().await.unwrap());
            drop(entry);
        }
        assert_eq!(order, [1, 2, 3]);
        assert_eq!(gate.counters.in_flight(), 0);
        assert_eq!(gate.counters.queue_waits(), 3);
        assert_eq!(gate.counters.overflows(), 0);
    }

    #[tokio::test]
    async fn a_newcomer_does_not_take_a_place_before_those_waiting() {
        let (_t, gate) = gate(limits(1, 10, LONG));
        let first = gate.enter(&app(), None).await.unwrap();
        let (got_tx, _got) = tokio::sync::mpsc::unbounded_channel();
        let queued = waiter(&gate, 1, &got_tx);
        until_waiting(&gate, 1).await;
        drop(first);
        // The place was handed to the waiting request (which has not run
        // yet): a newcomer must wait.
        let newcomer =
            tokio::time::timeout(Duration::from_millis(50), gate.enter(&app(), None)).await;
        assert!(newcomer.is_err(), "the newcomer got in first");
        assert!(queued.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn past_the_queue_a_request_is_refused_at_once() {
        let (_t, gate) = gate(Limits {
            overflow_status: 508,
            ..limits(1, 1, LONG)
        });
        let _first = gate.enter(&app(), None).await.unwrap();
        let (got_tx, _got) = tokio::sync::mpsc::unbounded_channel();
        let _queued = waiter(&gate, 1, &got_tx);
        until_waiting(&gate, 1).await;
        let refused = tokio::time::timeout(Duration::from_secs(10), gate.enter(&app(), None))
            .await
            .expect("refused at once, not after a wait")
            .unwrap_err();
        assert_eq!(refused.status, 508);
        assert_eq!(
            refused.why,
            Why::QueueFull {
                concurrency: 1,
                queue: 1
            }
        );
        assert_eq!(gate.counters.overflows(), 1);
        assert_eq!(
            gate.counters.queue_waits(),
            1,
            "the refused one never waited"
        );
    }

    #[tokio::test]
    async fn a_queue_of_zero_refuses_whatever_finds_every_place_taken() {
        let (_t, gate) = gate(limits(2, 0, LONG));
        let _a = gate.enter(&app(), None).await.unwrap();
        let b = gate.enter(&app(), None).await.unwrap();
        assert!(gate.enter(&app(), None).await.is_err());
        drop(b);
        assert!(gate.enter(&app(), None).await.is_ok(), "a place came free");
    }

    #[tokio::test]
    async fn a_wait_ends_at_queue_timeout() {
        let (_t, gate) = gate(limits(1, 5, Duration::from_millis(50)));
        let _first = gate.enter(&app(), None).await.unwrap();
        // Generous: the wait is 50 ms.
        let waited = tokio::time::timeout(Duration::from_secs(10), gate.enter(&app(), None))
            .await
            .expect("the wait is bounded by queue_timeout")
            .unwrap_err();
        assert_eq!(
            waited.why,
            Why::Waited {
                concurrency: 1,
                timeout: Duration::from_millis(50)
            }
        );
        assert_eq!(gate.counters.waiting(), 0, "it left the queue");
        assert_eq!(gate.counters.queue_waits(), 1);
        assert_eq!(gate.counters.overflows(), 1);
    }

    #[tokio::test]
    async fn a_request_that_goes_away_while_waiting_leaves_the_queue_at_once() {
        let (_t, gate) = gate(limits(1, 1, LONG));
        let first = gate.enter(&app(), None).await.unwrap();
        let (got_tx, mut got) = tokio::sync::mpsc::unbounded_channel();
        let gone = waiter(&gate, 1, &got_tx);
        until_waiting(&gate, 1).await;
        gone.abort();
        let _ = gone.await;
        assert_eq!(gate.counters.waiting(), 0, "its place in the queue is free");
        // So the next one queues rather than being refused, and gets the
        // place when it comes free.
        let next = waiter(&gate, 2, &got_tx);
        until_waiting(&gate, 1).await;
        drop(first);
        assert!(next.await.unwrap().is_ok());
        assert_eq!(got.recv().await, Some(2));
        assert_eq!(gate.counters.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_place_handed_to_a_request_that_went_away_goes_to_the_next() {
        let (_t, gate) = gate(limits(1, 5, LONG));
        let first = gate.enter(&app(), None).await.unwrap();
        // Two requests queue; the first goes away after its place was handed
        // to it but before it looked (its receiver dropped with the entry).
        let (tx1, rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        {
            let mut st = gate.lock();
            st.waiters.push_back((100, tx1));
            st.waiters.push_back((101, tx2));
        }
        drop(first);
        assert_eq!(gate.counters.in_flight(), 1, "handed to the first");
        drop(rx1);
        let entry = rx2.try_recv().expect("passed on to the next");
        assert_eq!(gate.counters.in_flight(), 1);
        drop(entry);
        assert_eq!(gate.counters.in_flight(), 0, "and nothing leaked");
    }

    #[tokio::test]
    async fn a_reload_applies_new_limits_to_new_requests_and_keeps_places_in_flight() {
        let (tenants, gate) = gate(limits(2, 5, LONG));
        let a = gate.enter(&app(), None).await.unwrap();
        let b = gate.enter(&app(), None).await.unwrap();
        // Lowered to 1: both places stay valid; a new request waits until
        // fewer than 1 are in flight.
        tenants.update(&["t".to_string()], &[limits(1, 5, LONG)]);
        assert!(Arc::ptr_eq(&gate, &tenants.gate("t").unwrap()), "kept");
        drop(a);
        let (got_tx, _got) = tokio::sync::mpsc::unbounded_channel();
        let queued = waiter(&gate, 1, &got_tx);
        until_waiting(&gate, 1).await;
        assert_eq!(gate.counters.in_flight(), 1);
        // Raised to 3: the waiting request gets in at once, and so does a new one.
        tenants.update(&["t".to_string()], &[limits(3, 5, LONG)]);
        let c = queued.await.unwrap().expect("let in by the new limit");
        let d = tokio::time::timeout(Duration::from_secs(10), gate.enter(&app(), None))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(gate.counters.in_flight(), 3);
        drop((b, c, d));
        assert_eq!(gate.counters.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_tenant_removed_by_a_reload_finishes_its_requests() {
        let (tenants, gate) = gate(limits(1, 5, LONG));
        let counters = tenants.counters();
        let first = gate.enter(&app(), None).await.unwrap();
        let (got_tx, _got) = tokio::sync::mpsc::unbounded_channel();
        let queued = waiter(&gate, 1, &got_tx);
        until_waiting(&gate, 1).await;
        tenants.update(&[], &[]);
        assert!(tenants.gate("t").is_none());
        drop(first);
        assert!(
            queued.await.unwrap().is_ok(),
            "the waiting one still got in"
        );
        assert_eq!(counters[0].1.queue_waits(), 1);
    }

    #[tokio::test]
    async fn refusals_are_logged_once_a_second_with_the_count_of_the_others() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let log = TenantLog::new("t-gate-log", Default::default());
        log.reopen(file.reopen().unwrap());
        let (_t, gate) = gate(limits(1, 0, LONG));
        let _held = gate.enter(&app(), None).await.unwrap();
        for _ in 0..3 {
            assert!(gate.enter(&app(), Some(&log)).await.is_err());
        }
        // A second later (made so), the next refusal writes a line again.
        gate.lock().quiet_until = None;
        assert!(gate.enter(&app(), Some(&log)).await.is_err());
        crate::tenant_log::flush_all();
        let text = std::fs::read_to_string(file.path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].ends_with(
                "[t/a] berth: request refused with 503: every place is taken \
                 (concurrency = 1) and none may wait (queue = 0)"
            ),
            "{text}"
        );
        assert!(
            lines[1].ends_with("; 2 more refused since the last such line"),
            "{text}"
        );
        assert_eq!(gate.counters.overflows(), 4, "every refusal is counted");
    }

    #[tokio::test]
    async fn tenants_have_gates_of_their_own() {
        let tenants = Tenants::default();
        let names = ["a".to_string(), "b".to_string()];
        tenants.update(&names, &[limits(1, 0, LONG), limits(1, 0, LONG)]);
        let a = tenants.gate("a").unwrap();
        let _held = a.enter(&app(), None).await.unwrap();
        assert!(a.enter(&app(), None).await.is_err(), "a is full");
        let b = tenants.gate("b").unwrap();
        assert!(b.enter(&app(), None).await.is_ok(), "b is not");
    }
}
