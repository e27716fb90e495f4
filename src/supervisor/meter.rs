//! Usage metering: every `meter_interval`, what each tenant and each of its
//! apps used, from their cgroups (memory in use less inactive file cache,
//! peak, CPU, tasks, limit events) and from the front end's request counts,
//! handed to the usage database's writer ([`crate::usage::UsageWriter`]).
//!
//! All of it runs on a thread of its own: reading a thousand tenants' cgroup
//! files, or a slow disk under SQLite, never holds up the supervisor's event
//! loop, which only sends it messages (never blocking: the channel is
//! bounded and a full one drops counts, which are then said lost).
//!
//! Without cgroups a tenant's memory is the sum of the proportional set
//! sizes (PSS) of the processes running as its user, and its CPU what they
//! used while alive (when each tenant has a user of its own; otherwise only
//! requests and traffic are metered).
//!
//! While an admin listener is configured, the meter also builds the
//! expensive part of the status page after each sample (a [`MeterView`]:
//! each tenant's figures now and since berth started, each app's memory,
//! the resident memory of the processes the loop named, each tenant's last
//! 24 hours from [`History`]) and hands it to the supervisor's loop through
//! a channel the loop reads, so no cgroup file and no SQLite query is ever
//! read on the loop. Without metering (`meter_interval = "off"`), it samples
//! for the status page alone, every [`STATUS_INTERVAL`], and writes nothing.
//! The deltas of limit counters between samples become limit events
//! ([`super::events`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tracing::warn;

use super::cgroup::{Cgroups, Group, Kind, Stats};
use super::events;
use crate::ipc::{EventKind, HourPoint, RequestCounts, UsageNow};
use crate::usage::{History, Sample, UsageWriter};

/// Messages waiting for the meter thread, at most.
const BACKLOG: usize = 1024;

/// How often the status page's figures are read when metering is off.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// What the meter read for the status page, after a sample.
#[derive(Debug, Clone, Default)]
pub struct MeterView {
    pub at: Option<SystemTime>,
    pub tenants: HashMap<String, TenantFigures>,
    /// Resident bytes of the processes the loop named ([`Meter::procs`]).
    pub rss: HashMap<u32, u64>,
}

/// One tenant's figures in a [`MeterView`].
#[derive(Debug, Clone, Default)]
pub struct TenantFigures {
    /// None when it is not measured (no cgroups, no user of its own).
    pub usage: Option<UsageNow>,
    /// Each app's group: bytes in use (the working set).
    pub apps: HashMap<String, u64>,
    pub history: Vec<HourPoint>,
}

/// What the meter counted of one tenant since it started.
#[derive(Debug, Clone, Copy, Default)]
struct SinceStart {
    cpu_usec: u64,
    throttled_usec: u64,
    oom_kills: u64,
    memory_events: u64,
    tasks_limit_hits: u64,
    recycles: u64,
}

/// What the meter knows of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeteredTenant {
    pub name: String,
    pub apps: Vec<String>,
    /// Its user's uid when it has one of its own (for the fallback without
    /// cgroups).
    pub uid: Option<u32>,
}

enum Msg {
    Tenants(Vec<MeteredTenant>),
    Front(Vec<(String, RequestCounts)>),
    Recycled(String),
    /// Whether to build [`MeterView`]s (an admin listener is configured).
    Status(bool),
    /// The pids of the app processes running now.
    Procs(Vec<u32>),
    Stop,
}

/// Where the status page's figures go: the channel the supervisor's loop
/// reads, and the usage database the charts are read from once.
pub struct StatusOut {
    pub views: tokio::sync::mpsc::Sender<MeterView>,
    /// None when metering is off.
    pub db: Option<PathBuf>,
    /// Whether views are wanted from the start.
    pub on: bool,
}

/// The supervisor's handle on the meter thread.
pub struct Meter {
    tx: SyncSender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl Meter {
    /// Starts metering every `interval` into `writer` (both None: metering
    /// is off, and the thread samples only for the status page, every
    /// [`STATUS_INTERVAL`] while `status` wants views).
    pub fn start(
        cgroups: Cgroups,
        writer: Option<(UsageWriter, Duration)>,
        tenants: Vec<MeteredTenant>,
        status: StatusOut,
    ) -> std::io::Result<Meter> {
        let (tx, rx) = std::sync::mpsc::sync_channel(BACKLOG);
        let thread = std::thread::Builder::new()
            .name("meter".into())
            .spawn(move || {
                let (writer, interval) = match writer {
                    Some((w, i)) => (Some(w), Some(i)),
                    None => (None, None),
                };
                let mut m = Metering {
                    cgroups,
                    peaks: HashMap::new(),
                    no_peak: Default::default(),
                    interval,
                    tenants,
                    last: Instant::now(),
                    prev: HashMap::new(),
                    front: HashMap::new(),
                    recycles: HashMap::new(),
                    since_start: HashMap::new(),
                    status,
                    history: None,
                    pids: Vec::new(),
                    measured: Default::default(),
                    view_figures: HashMap::new(),
                    oom_seen: HashMap::new(),
                };
                m.run(&rx, writer.as_ref());
                if let Some(w) = writer {
                    w.shutdown();
                }
            })?;
        Ok(Meter {
            tx,
            thread: Some(thread),
        })
    }

    fn send(&self, msg: Msg) {
        match self.tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => warn!("usage meter is behind; counts dropped"),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// The tenants and apps of a (new) configuration.
    pub fn tenants(&self, tenants: Vec<MeteredTenant>) {
        self.send(Msg::Tenants(tenants));
    }

    /// Request counts from the front end.
    pub fn front(&self, counts: Vec<(String, RequestCounts)>) {
        self.send(Msg::Front(counts));
    }

    /// A process of `tenant` was recycled for its memory.
    pub fn recycled(&self, tenant: &str) {
        self.send(Msg::Recycled(tenant.to_string()));
    }

    /// Whether the status page's figures are wanted (the admin listener
    /// came or went with a reload).
    pub fn status(&self, on: bool) {
        self.send(Msg::Status(on));
    }

    /// The pids of the app processes running now, whose resident memory
    /// the next view carries.
    pub fn procs(&self, pids: Vec<u32>) {
        self.send(Msg::Procs(pids));
    }

    /// Takes a last sample, stores everything and stops.
    pub fn stop(mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Counters of a group as last read, for deltas.
#[derive(Debug, Clone, Copy, Default)]
struct Prev {
    cpu_usec: u64,
    throttled_usec: u64,
    oom_kills: u64,
    memory_events: u64,
    tasks_limit_hits: u64,
}

struct Metering {
    cgroups: Cgroups,
    /// Each group's peak memory file, kept open: a write resets the peak
    /// for reads through the same file (v2), so each interval has its own.
    peaks: HashMap<(String, Option<String>), std::fs::File>,
    /// Groups whose peak cannot be reset.
    no_peak: std::collections::HashSet<(String, Option<String>)>,
    /// `meter_interval` (None: metering is off).
    interval: Option<Duration>,
    tenants: Vec<MeteredTenant>,
    /// When the current interval began.
    last: Instant,
    prev: HashMap<(String, Option<String>), Prev>,
    front: HashMap<String, RequestCounts>,
    recycles: HashMap<String, u64>,
    since_start: HashMap<String, SinceStart>,
    status: StatusOut,
    /// The tenants' last 24 hours, once loaded (while views are wanted
    /// and metering is on).
    history: Option<History>,
    /// The app processes whose memory a view carries.
    pids: Vec<u32>,
    /// Tenants the last sample measured, and what the next view says of
    /// each.
    measured: std::collections::HashSet<String>,
    view_figures: HashMap<String, TenantFigures>,
    /// v1: each tenant's OOM kills the supervisor had found at the last
    /// sample.
    oom_seen: HashMap<String, u64>,
}

impl Metering {
    /// How often to sample: every `meter_interval`; without metering, every
    /// [`STATUS_INTERVAL`] while views are wanted, else never.
    fn period(&self) -> Option<Duration> {
        self.interval.or(self.status.on.then_some(STATUS_INTERVAL))
    }

    fn run(&mut self, rx: &Receiver<Msg>, writer: Option<&UsageWriter>) {
        // Counters start from what the groups hold now: a restart of berth
        // over groups that live on must not count their past again.
        self.load_history(writer);
        self.sample_into(None);
        let mut next = self.period().map(|p| Instant::now() + p);
        loop {
            let msg = match next {
                Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match msg {
                Ok(Msg::Tenants(t)) => self.tenants = t,
                Ok(Msg::Front(counts)) => {
                    // Only configured tenants: names a (compromised) front
                    // end makes up would otherwise pile up here.
                    for (tenant, c) in counts {
                        if self.tenants.iter().any(|t| t.name == tenant) {
                            add(self.front.entry(tenant).or_default(), &c);
                        }
                    }
                }
                Ok(Msg::Recycled(t)) => *self.recycles.entry(t).or_default() += 1,
                Ok(Msg::Status(on)) => {
                    let was = self.status.on;
                    self.status.on = on;
                    if on && !was {
                        self.load_history(writer);
                        // Without metering, a baseline and a first view at
                        // once; with it, a sample now would take counts
                        // from the database's: the view comes with the next.
                        if writer.is_none() {
                            self.sample_into(None);
                        }
                    }
                    if !on {
                        self.history = None;
                    }
                    if self.period().is_none() {
                        next = None;
                    } else if next.is_none() {
                        next = self.period().map(|p| Instant::now() + p);
                    }
                }
                Ok(Msg::Procs(pids)) => self.pids = pids,
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    if writer.is_some() {
                        self.sample_into(writer);
                    }
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.sample_into(writer);
                    let Some(period) = self.period() else {
                        next = None;
                        continue;
                    };
                    // Each sample a little early or late (up to a quarter
                    // of the period): a tenant cannot learn when the next
                    // one comes and hold its memory only between them. The
                    // samples' lengths are measured, so averages stay exact.
                    let mut at = next.unwrap_or_else(Instant::now) + jittered(period);
                    // After a long stall (a suspended machine), no burst of
                    // catch-up samples.
                    if at < Instant::now() {
                        at = Instant::now() + period;
                    }
                    next = Some(at);
                }
            }
        }
    }

    /// Reads the tenants' last 24 hours from the database, once everything
    /// sent to the writer is in it, when views are wanted and metering is
    /// on (the charts then go on from the samples).
    fn load_history(&mut self, writer: Option<&UsageWriter>) {
        let (true, Some(writer), Some(db)) = (self.status.on, writer, &self.status.db) else {
            return;
        };
        writer.flush();
        match History::load(db, SystemTime::now()) {
            Ok(h) => self.history = Some(h),
            Err(e) => {
                warn!("status page: the last 24 hours could not be read: {e}");
                self.history = Some(History::default());
            }
        }
    }

    /// One sample of every tenant and app over the interval since the last,
    /// sent to `writer` (None: not recorded: the baseline at start, or
    /// metering is off). While views are wanted, one goes to the loop.
    fn sample_into(&mut self, writer: Option<&UsageWriter>) {
        let now = Instant::now();
        let seconds = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        let at = SystemTime::now();
        let mut batch = Vec::new();
        self.measured.clear();
        let tenants = std::mem::take(&mut self.tenants);
        // Without cgroups, one walk of /proc for every tenant's user.
        let by_uid = match self.cgroups.kind() {
            Kind::None => uid_stats(tenants.iter().filter_map(|t| t.uid).collect()),
            _ => HashMap::new(),
        };
        for t in &tenants {
            let group = self.cgroups.tenant(&t.name);
            let stats = match &group {
                None => t
                    .uid
                    .map(|uid| by_uid.get(&uid).copied().unwrap_or_default()),
                Some(g) => Some(g.stats()),
            };
            let mut s = Sample::new(&t.name, None, at, seconds);
            if stats.is_some() {
                self.measured.insert(t.name.clone());
            }
            if let Some(stats) = stats {
                self.fill(&mut s, &t.name, None, &stats);
                s.memory_peak = s.memory_peak.max(self.peak(&t.name, None, group.as_ref()));
            }
            if self.cgroups.kind() == Kind::V1 {
                // v1 counts a kill in the victim's leaf only, gone with it:
                // the tenant's are those the supervisor found.
                let now = events::oom_kills(&t.name);
                let before = self.oom_seen.insert(t.name.clone(), now).unwrap_or(0);
                s.oom_kills = now.saturating_sub(before);
            }
            if let Some(c) = self.front.remove(&t.name) {
                s.requests = c.requests;
                s.status_2xx = c.status_2xx;
                s.status_3xx = c.status_3xx;
                s.status_4xx = c.status_4xx;
                s.status_5xx = c.status_5xx;
                s.bytes_in = c.bytes_in;
                s.bytes_out = c.bytes_out;
                s.queue_waits = c.queue_waits;
                s.queue_overflows = c.queue_overflows;
            }
            s.recycles = self.recycles.remove(&t.name).unwrap_or(0);
            batch.push(s);
            for app in &t.apps {
                // An app never started has no group: one stat, not a
                // dozen failed opens per interval.
                let Some(group) = self.cgroups.app(&t.name, app).filter(Group::exists) else {
                    continue;
                };
                let stats = group.stats();
                let mut s = Sample::new(&t.name, Some(app), at, seconds);
                self.fill(&mut s, &t.name, Some(app), &stats);
                s.memory_peak = s
                    .memory_peak
                    .max(self.peak(&t.name, Some(app), Some(&group)));
                batch.push(s);
            }
        }
        self.tenants = tenants;
        // Counts of tenants no longer configured go with them.
        self.front.clear();
        self.recycles.clear();
        self.count_since_start(&batch, seconds);
        if let Some(w) = writer {
            if let Some(h) = &mut self.history {
                for s in &batch {
                    h.add(s);
                }
            }
            w.send(batch);
        }
        self.send_view(at);
    }

    /// Adds the tenants' samples to what was counted since the start, and
    /// says what the limits did ([`events`]). Remembers each tenant's use
    /// now for the view.
    fn count_since_start(&mut self, batch: &[Sample], seconds: f64) {
        self.view_figures.clear();
        for s in batch {
            let Some(app) = &s.app else {
                let t = self.since_start.entry(s.tenant.clone()).or_default();
                t.cpu_usec += s.cpu_usec;
                t.throttled_usec += s.cpu_throttled_usec;
                t.oom_kills += s.oom_kills;
                t.memory_events += s.memory_events;
                t.tasks_limit_hits += s.tasks_limit_hits;
                t.recycles += s.recycles;
                events::record(
                    &s.tenant,
                    None,
                    EventKind::MemoryLimit,
                    s.memory_events,
                    format!(
                        "its processes reached the tenant's memory limit {} time(s) in {seconds:.0} s",
                        s.memory_events
                    ),
                );
                events::record(
                    &s.tenant,
                    None,
                    EventKind::TasksLimit,
                    s.tasks_limit_hits,
                    format!(
                        "{} fork(s) refused at the tenant's tasks limit in {seconds:.0} s",
                        s.tasks_limit_hits
                    ),
                );
                let measured = self.measured.contains(&s.tenant);
                let f = self.view_figures.entry(s.tenant.clone()).or_default();
                f.usage = measured.then(|| UsageNow {
                    memory: s.memory,
                    tasks: u64::from(s.tasks),
                    cpu_cores: if seconds > 0.0 {
                        s.cpu_usec as f64 / 1e6 / seconds
                    } else {
                        0.0
                    },
                    cpu_seconds: t.cpu_usec as f64 / 1e6,
                    cpu_throttled_seconds: t.throttled_usec as f64 / 1e6,
                    oom_kills: t.oom_kills,
                    memory_events: t.memory_events,
                    tasks_limit_hits: t.tasks_limit_hits,
                    recycles: t.recycles,
                });
                continue;
            };
            let f = self.view_figures.entry(s.tenant.clone()).or_default();
            f.apps.insert(app.clone(), s.memory);
        }
        self.since_start
            .retain(|name, _| self.tenants.iter().any(|t| t.name == *name));
    }

    /// The view of the last sample, to the loop (when wanted; a view the
    /// loop has not taken yet is not replaced: the next one comes soon).
    fn send_view(&mut self, at: SystemTime) {
        if !self.status.on {
            return;
        }
        let names: Vec<&str> = self.tenants.iter().map(|t| t.name.as_str()).collect();
        if let Some(h) = &mut self.history {
            h.trim(at, |name| names.contains(&name));
        }
        let mut tenants = std::mem::take(&mut self.view_figures);
        for (name, f) in &mut tenants {
            if let Some(h) = &self.history {
                f.history = h.points(name);
            }
        }
        let rss = self
            .pids
            .iter()
            .filter_map(|&pid| Some((pid, super::apps::resident(pid)?)))
            .collect();
        let view = MeterView {
            at: Some(at),
            tenants,
            rss,
        };
        let _ = self.status.views.try_send(view);
    }

    /// Figures of a group into its sample: levels as read, counters as
    /// deltas from the last reading (a counter that went back, a group made
    /// anew, counts from zero).
    fn fill(&mut self, s: &mut Sample, tenant: &str, app: Option<&str>, stats: &Stats) {
        let key = (tenant.to_string(), app.map(str::to_string));
        let prev = self.prev.insert(
            key,
            Prev {
                cpu_usec: stats.cpu_usec,
                throttled_usec: stats.throttled_usec,
                oom_kills: stats.oom_kills,
                memory_events: stats.memory_events,
                tasks_limit_hits: stats.tasks_limit_hits,
            },
        );
        let p = prev.unwrap_or_default();
        // A group's counters only grow, unless it was made anew (from 0);
        // the processes of a user (no cgroups) take what they used with
        // them when they end: what ended within an interval is not counted.
        let anew = self.cgroups.kind() != Kind::None;
        let delta = |now: u64, before: u64| match now.checked_sub(before) {
            Some(d) => d,
            None if anew => now,
            None => 0,
        };
        s.memory = stats.working_set;
        s.memory_peak = stats.working_set;
        s.tasks = stats.tasks.min(u64::from(u32::MAX)) as u32;
        s.cpu_usec = delta(stats.cpu_usec, p.cpu_usec);
        s.cpu_throttled_usec = delta(stats.throttled_usec, p.throttled_usec);
        s.oom_kills = delta(stats.oom_kills, p.oom_kills);
        s.memory_events = delta(stats.memory_events, p.memory_events);
        s.tasks_limit_hits = delta(stats.tasks_limit_hits, p.tasks_limit_hits);
        if prev.is_none() {
            // The first reading of a group is its baseline, not usage.
            s.cpu_usec = 0;
            s.cpu_throttled_usec = 0;
            s.oom_kills = 0;
            s.memory_events = 0;
            s.tasks_limit_hits = 0;
        }
    }
}

impl Metering {
    /// The group's peak memory since the last call (0 when unknown).
    fn peak(&mut self, tenant: &str, app: Option<&str>, group: Option<&Group>) -> u64 {
        use std::io::{Read, Seek, Write};
        let key = (tenant.to_string(), app.map(str::to_string));
        if self.no_peak.contains(&key) {
            return 0;
        }
        let file = match self.peaks.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let Some(path) = group.and_then(Group::peak_file) else {
                    return 0;
                };
                match std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                {
                    Ok(f) => e.insert(f),
                    Err(_) => return 0,
                }
            }
        };
        let mut text = String::new();
        if file.rewind().is_err() || file.read_to_string(&mut text).is_err() {
            // The group was made anew (a tenant removed and added again):
            // opened again next time.
            self.peaks
                .remove(&(tenant.to_string(), app.map(str::to_string)));
            return 0;
        }
        let peak = text.trim().parse().unwrap_or(0);
        if file.write_all(b"0\n").is_err() {
            // A peak that cannot be reset (v2 before Linux 6.12) is the
            // group's since it was made, not the interval's: the sampled
            // working set stands in for it from now on.
            self.peaks
                .remove(&(tenant.to_string(), app.map(str::to_string)));
            self.no_peak
                .insert((tenant.to_string(), app.map(str::to_string)));
            return 0;
        }
        peak
    }
}

/// The most any count of the front end's may add up to in one interval: far
/// above what a machine serves (the front end is not trusted to keep them
/// small; the database's sums saturate beyond that).
const MAX_COUNT: u64 = 1 << 48;

/// Adds counts, up to [`MAX_COUNT`].
/// `period` moved by up to a quarter of it either way, at random.
fn jittered(period: Duration) -> Duration {
    let mut b = [0u8; 4];
    let r = match rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()) {
        Ok(4) => u32::from_ne_bytes(b),
        _ => return period,
    };
    let quarter = period / 4;
    // 0..=2 quarters, then back by one: -1/4 ..= +1/4.
    period - quarter + quarter.mul_f64(2.0 * f64::from(r) / f64::from(u32::MAX))
}

fn add(into: &mut RequestCounts, c: &RequestCounts) {
    let sum = |a: &mut u64, b: u64| *a = a.saturating_add(b).min(MAX_COUNT);
    sum(&mut into.requests, c.requests);
    sum(&mut into.status_2xx, c.status_2xx);
    sum(&mut into.status_3xx, c.status_3xx);
    sum(&mut into.status_4xx, c.status_4xx);
    sum(&mut into.status_5xx, c.status_5xx);
    sum(&mut into.bytes_in, c.bytes_in);
    sum(&mut into.bytes_out, c.bytes_out);
    sum(&mut into.queue_waits, c.queue_waits);
    sum(&mut into.queue_overflows, c.queue_overflows);
}

/// Without cgroups: for each of `uids`, its processes' PSS summed (memory),
/// the CPU they have used while alive (utime + stime) and their threads, in
/// one walk of /proc.
fn uid_stats(uids: std::collections::HashSet<u32>) -> HashMap<u32, Stats> {
    let mut out: HashMap<u32, Stats> = HashMap::new();
    let tick = rustix::param::clock_ticks_per_second().max(1);
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(st) = std::fs::metadata(e.path()) else {
            continue;
        };
        let uid = std::os::unix::fs::MetadataExt::uid(&st);
        if !uids.contains(&uid) {
            continue;
        }
        let s = out.entry(uid).or_default();
        if let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            s.working_set += kib(&rollup, "Pss:") * 1024;
        }
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some((_, rest)) = stat.rsplit_once(") ")
        {
            // Fields from the state on: utime is the 12th, stime the 13th,
            // num_threads the 18th (of those after the command).
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            s.cpu_usec += (num(11) + num(12)) * 1_000_000 / tick;
            s.tasks += num(17);
        }
    }
    for s in out.values_mut() {
        s.memory = s.working_set;
    }
    out
}

/// The value in kB of a `Key:   N kB` line.
fn kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_come_at_unpredictable_times_within_a_quarter_of_the_period() {
        // A tenant that knew when the next sample comes could hold its
        // memory only between samples and be billed for a quarter of it.
        let p = Duration::from_secs(10);
        let times: Vec<Duration> = (0..200).map(|_| jittered(p)).collect();
        assert!(
            times.iter().all(|t| (p * 3 / 4..=p * 5 / 4).contains(t)),
            "{times:?}"
        );
        let early = times.iter().filter(|t| **t < p).count();
        assert!((40..160).contains(&early), "{early} of 200 early");
    }

    #[test]
    fn a_front_end_cannot_make_the_meter_keep_made_up_tenants_or_huge_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(crate::usage::DB_FILE);
        let writer = UsageWriter::spawn(path.clone(), 7, 400).unwrap();
        let tenant = MeteredTenant {
            name: "a".into(),
            apps: Vec::new(),
            uid: None,
        };
        let (views, _rx) = tokio::sync::mpsc::channel(1);
        let status = StatusOut {
            views,
            db: None,
            on: false,
        };
        let meter = Meter::start(
            Cgroups::none("test"),
            Some((writer, Duration::from_secs(3600))),
            vec![tenant],
            status,
        )
        .unwrap();
        let huge = RequestCounts {
            requests: u64::MAX,
            status_2xx: u64::MAX,
            ..RequestCounts::default()
        };
        let made_up: Vec<(String, RequestCounts)> =
            (0..1000).map(|i| (format!("x{i}"), huge)).collect();
        meter.front(vec![("a".into(), huge), ("a".into(), huge)]);
        meter.front(made_up);
        meter.stop();
        let q = crate::usage::Query {
            since: SystemTime::now() - Duration::from_secs(3600),
            until: SystemTime::now() + Duration::from_secs(60),
            tenant: None,
            per_app: false,
        };
        let report = crate::usage::report(&path, &q).unwrap();
        let names: Vec<&str> = report.rows.iter().map(|r| r.tenant.as_str()).collect();
        assert_eq!(names, ["a"]);
        assert_eq!(report.rows[0].requests, MAX_COUNT);
    }
}
