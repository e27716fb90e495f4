//! This node's own figures, as gossip announces them ([`Figures`]): the
//! CPU count, the 1-minute load (`/proc/loadavg`), the fraction of CPU idle
//! since the reading before (`/proc/stat`), total and available memory
//! (`/proc/meminfo`), the request slots the front end reports, and the
//! "arriba" speed figure measured once at start-up ([`arriba`]).
//!
//! The parsers are pure functions of the files' text; [`Sampler`] reads the
//! files and keeps what a figure needs from the reading before.

use std::time::{Duration, Instant};

use super::Figures;

/// Jiffies the CPUs spent, all of them together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// idle and iowait (a CPU waiting on I/O would run something else).
    pub idle: u64,
    /// user, nice, system, irq, softirq and steal (guest time is counted in
    /// user already).
    pub busy: u64,
}

/// The 1-minute load average, the first field of `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Option<f64> {
    text.split_ascii_whitespace()
        .next()?
        .parse::<f64>()
        .ok()
        .filter(|l| l.is_finite() && *l >= 0.0)
}

/// The aggregate `cpu ` line of `/proc/stat`.
pub fn parse_cpu_times(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    if line.split_ascii_whitespace().count() < 5 {
        // Not even user, nice, system and idle.
        return None;
    }
    // Fields a kernel does not have yet count as 0.
    let mut fields = line.split_ascii_whitespace().skip(1);
    let mut next = || -> Option<u64> {
        match fields.next() {
            None => Some(0),
            Some(f) => f.parse().ok(),
        }
    };
    let (user, nice, system, idle) = (next()?, next()?, next()?, next()?);
    let (iowait, irq, softirq, steal) = (next()?, next()?, next()?, next()?);
    Some(CpuTimes {
        idle: idle.saturating_add(iowait),
        busy: [user, nice, system, irq, softirq, steal]
            .iter()
            .fold(0u64, |a, b| a.saturating_add(*b)),
    })
}

/// The fraction of CPU time idle between two readings; None when no time
/// passed (or the counters went back).
pub fn idle_between(before: CpuTimes, after: CpuTimes) -> Option<f64> {
    let idle = after.idle.checked_sub(before.idle)?;
    let busy = after.busy.checked_sub(before.busy)?;
    let total = idle.checked_add(busy).filter(|t| *t > 0)?;
    Some((idle as f64 / total as f64).clamp(0.0, 1.0))
}

/// MemTotal and MemAvailable of `/proc/meminfo`, in bytes (MemFree where
/// the kernel has no MemAvailable, before 3.14).
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let (mut total, mut available, mut free) = (None, None, None);
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "MemTotal" => &mut total,
            "MemAvailable" => &mut available,
            "MemFree" => &mut free,
            _ => continue,
        };
        let mut words = rest.split_ascii_whitespace();
        let value: Option<u64> = words.next().and_then(|v| v.parse().ok());
        let bytes = match words.next() {
            Some("kB") => value.and_then(|v| v.checked_mul(1024)),
            None => value,
            Some(_) => None,
        };
        *slot = bytes;
    }
    Some((total?, available.or(free)?))
}

/// The CPU time this thread has used.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// mod_backhand's "arriba": how fast one CPU of this node is, higher is
/// faster.
///
/// It runs a chain of dependent integer and floating-point steps (a
/// xorshift64 step, then a multiply-add on a double fed by it: the work of
/// an interpreter more than of a vector unit) for 20 ms of this thread's
/// CPU time, or 40 ms of wall time if the machine is too busy to give it
/// that (checked every 10,000 steps, some 25 µs), and counts the steps done
/// per microsecond of CPU time, so a busy machine measures the same speed
/// from fewer samples. About 415 on one core of the 2-core test machine in
/// a release build (a debug build does a quarter of that).
pub fn arriba() -> u32 {
    const BATCH: u32 = 10_000;
    let wall = Instant::now();
    let cpu0 = thread_cpu();
    let (mut x, mut f) = (0x9e37_79b9_7f4a_7c15u64, 1.0f64);
    let mut steps = 0u64;
    let cpu = loop {
        for _ in 0..BATCH {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            f = f * 0.999_999_9 + (x >> 11) as f64 * 1e-17;
        }
        (x, f) = std::hint::black_box((x, f));
        steps += u64::from(BATCH);
        let cpu = thread_cpu().saturating_sub(cpu0);
        if cpu >= Duration::from_millis(20) || wall.elapsed() >= Duration::from_millis(40) {
            break cpu;
        }
    };
    let micros = cpu.as_micros().max(1);
    u32::try_from(u128::from(steps) / micros).unwrap_or(u32::MAX)
}

/// Reads the figures; keeps the previous CPU times for `cpu_idle` and the
/// previous figures for any file that cannot be read or parsed.
#[derive(Debug)]
pub struct Sampler {
    last_cpu: Option<CpuTimes>,
    last: Figures,
}

impl Sampler {
    /// Starts with `arriba` (measured by the caller, off the runtime) and
    /// the CPU times now, so the first `cpu_idle` covers the time since
    /// (until then: since boot).
    pub fn new(arriba: u32) -> Sampler {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let now = read("/proc/stat").as_deref().and_then(parse_cpu_times);
        let since_boot = now.and_then(|now| idle_between(CpuTimes { idle: 0, busy: 0 }, now));
        Sampler {
            last_cpu: now,
            last: Figures {
                cpus: u32::try_from(cpus).unwrap_or(u32::MAX),
                arriba,
                cpu_idle: since_boot.unwrap_or(0.0),
                ..Figures::default()
            },
        }
    }

    /// The figures now, with the front end's (busy, free) request slots.
    pub fn sample(&mut self, (busy, free): (u32, u32)) -> Figures {
        if let Some(load) = read("/proc/loadavg").as_deref().and_then(parse_loadavg) {
            self.last.load = load;
        }
        if let Some(now) = read("/proc/stat").as_deref().and_then(parse_cpu_times) {
            if let Some(idle) = self.last_cpu.and_then(|before| idle_between(before, now)) {
                self.last.cpu_idle = idle;
            }
            self.last_cpu = Some(now);
        }
        if let Some((total, available)) = read("/proc/meminfo").as_deref().and_then(parse_meminfo) {
            self.last.mem_total = total;
            self.last.mem_available = available;
        }
        self.last.busy_slots = busy;
        self.last.free_slots = free;
        self.last
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadavg() {
        assert_eq!(parse_loadavg("0.52 0.58 0.59 3/1018 41021\n"), Some(0.52));
        assert_eq!(parse_loadavg("12.00 1 1 1/1 1"), Some(12.0));
        assert_eq!(parse_loadavg(""), None);
        assert_eq!(parse_loadavg("nan 1 1"), None);
        assert_eq!(parse_loadavg("-1 1 1"), None);
        assert_eq!(parse_loadavg("busy"), None);
    }

    const STAT: &str = "\
cpu  3935152 235603 1005091 3224063 58810 0 111649 13960 0 0
cpu0 1967576 117801 502545 1612031 29405 0 55824 6980 0 0
intr 123 0 0
ctxt 456
";

    #[test]
    fn cpu_times() {
        assert_eq!(
            parse_cpu_times(STAT),
            Some(CpuTimes {
                idle: 3224063 + 58810,
                busy: 3935152 + 235603 + 1005091 + 111649 + 13960,
            })
        );
        // An old kernel's four fields.
        assert_eq!(
            parse_cpu_times("cpu 10 0 5 85\n"),
            Some(CpuTimes { idle: 85, busy: 15 })
        );
        assert_eq!(parse_cpu_times("cpu 10 0 5\n"), None);
        assert_eq!(parse_cpu_times("cpu0 1 2 3 4 5\n"), None);
        assert_eq!(parse_cpu_times("cpu  1 2 x 4 5\n"), None);
        assert_eq!(parse_cpu_times(""), None);
        let huge = format!("cpu {m} {m} {m} {m} {m} {m} {m} {m}\n", m = u64::MAX);
        assert_eq!(
            parse_cpu_times(&huge),
            Some(CpuTimes {
                idle: u64::MAX,
                busy: u64::MAX
            })
        );
    }

    #[test]
    fn idle_fraction() {
        let a = CpuTimes {
            idle: 1000,
            busy: 500,
        };
        let b = CpuTimes {
            idle: 1300,
            busy: 600,
        };
        assert_eq!(idle_between(a, b), Some(0.75));
        assert_eq!(idle_between(a, a), None);
        assert_eq!(idle_between(b, a), None);
        let all_busy = CpuTimes {
            idle: 1000,
            busy: 900,
        };
        assert_eq!(idle_between(a, all_busy), Some(0.0));
    }

    #[test]
    fn meminfo() {
        let text = "\
MemTotal:       24683584 kB
MemFree:          839916 kB
MemAvailable:   21597864 kB
Buffers:          123456 kB
";
        assert_eq!(
            parse_meminfo(text),
            Some((24683584 * 1024, 21597864 * 1024))
        );
        // Before MemAvailable existed.
        assert_eq!(
            parse_meminfo("MemTotal: 2048 kB\nMemFree: 1024 kB\n"),
            Some((2048 * 1024, 1024 * 1024))
        );
        assert_eq!(parse_meminfo("MemFree: 1024 kB\n"), None);
        assert_eq!(parse_meminfo("MemTotal: lots kB\nMemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo("MemTotal: 1 MB\nMemFree: 1 kB\n"), None);
        assert_eq!(
            parse_meminfo(&format!("MemTotal: {} kB\nMemFree: 1 kB\n", u64::MAX)),
            None
        );
        assert_eq!(parse_meminfo(""), None);
    }

    #[test]
    fn arriba_is_quick_and_positive() {
        let start = Instant::now();
        let a = arriba();
        // 40 ms of wall time, and one batch after; the bound is for a
        // machine busy enough to stall the thread between batches.
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(a > 0);
    }

    #[test]
    fn the_sampler_reads_this_machine() {
        let mut s = Sampler::new(7);
        let f = s.sample((3, 5));
        assert!(f.cpus >= 1);
        assert_eq!((f.busy_slots, f.free_slots, f.arriba), (3, 5, 7));
        assert!(f.mem_total > 0 && f.mem_available <= f.mem_total);
        assert!((0.0..=1.0).contains(&f.cpu_idle));
        assert!(f.load >= 0.0);
    }
}
