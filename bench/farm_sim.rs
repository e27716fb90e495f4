//! The farm's placement with figures a second old, simulated (no network):
//! which candidacy functions keep the queues short when every node's load
//! is known only as it was at the last whole second?
//!
//!   cargo run --release --example farm_sim -- [--seconds 20000] [--seed 1]
//!       [--service exp|fixed] [--load queue|loadavg]
//!
//! The model:
//! - 16 nodes, each one server taking one request at a time in the order
//!   they came, at rate 1: service times exponential with mean 1 (`exp`, the
//!   default: each node is an M/M/1 queue when requests are spread at random,
//!   which gives a check against the formulas) or exactly 1 (`fixed`).
//! - Requests arrive as one Poisson stream at 90% of the farm's capacity
//!   (14.4 a second). Arrival times, service times and which front end each
//!   request reaches are drawn from one seeded stream, so every policy gets
//!   the very same requests.
//! - Placement is `berth::farm::place::place`, the function the front end
//!   runs, with the policy's `balance` parsed by `place::parse`. The nodes
//!   are handed to it in the same order every time (as a front end lists
//!   its peers), one CPU each, all heard from within the last second (age
//!   0 to 1 s: `byAge` keeps them all). An empty list serves locally.
//! - Every node's figures are as they were at the last whole second, taken
//!   by every node at the same instant: `load` (and `busy_slots`) is the
//!   number of requests the node held then (`--load queue`, the default), or
//!   the kernel's 1-minute load average of that number, updated every 5 s as
//!   Linux does (`--load loadavg`: what a node really publishes as `load`).
//! - `in_flight` is fresh: what the placing front end has outstanding at each
//!   node now. Two cases, both printed:
//!   - one front end (node 0 places every request): `in_flight` is every
//!     node's true queue;
//!   - 16 front ends (each request reaches one node at random, as with DNS
//!     round robin, and that node places it): each sees only the requests
//!     it placed itself, about a sixteenth of every queue, and is the local
//!     node for its own placements (`byLoad 0.5` lowers its own load).
//!
//! Printed per policy: the queue a request finds at the node it is placed on
//! (requests ahead of it there: mean, p99, max) and its response time (wait
//! plus service, in mean service times: mean, p99), over every request after
//! a warm-up of 100 s.

use std::collections::VecDeque;
use std::time::Instant;

use berth::farm::Figures;
use berth::farm::place::{self, Func, Node, Request};

const NODES: usize = 16;
const UTILISATION: f64 = 0.9;
const WARMUP: f64 = 100.0;

/// The policies compared, as `balance` would be written.
const POLICIES: &[&[&str]] = &[
    &["byRandom"],
    &["byLoad"],
    &["byRandom", "byLoad"],
    &["byLoad", "byInFlight"],
    &["byInFlight", "byLoad"],
    &["byAge 6", "byLoad 0.5", "byInFlight"],
    &["byTwoChoices"],
    &["byInFlight"],
    &["byRandom", "byInFlight"],
    &["byRandom", "byLoad", "byInFlight"],
];

/// splitmix64: small, seeded, good enough for a simulation.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }

    /// Exponential with the given rate.
    fn exp(&mut self, rate: f64) -> f64 {
        -self.unit().ln() / rate
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Service {
    Exponential,
    Fixed,
}

#[derive(Clone, Copy, PartialEq)]
enum LoadFigure {
    Queue,
    LoadAvg,
}

struct Options {
    seconds: f64,
    seed: u64,
    service: Service,
    load: LoadFigure,
}

struct Job {
    /// The front end that placed it.
    from: usize,
    arrived: f64,
    service: f64,
}

/// What one run measured.
struct Outcome {
    /// found[k]: how many requests found k requests ahead of them.
    found: Vec<u64>,
    /// Response times (arrival to end of service).
    response: Vec<f64>,
}

impl Outcome {
    fn requests(&self) -> u64 {
        self.found.iter().sum()
    }

    fn found_mean(&self) -> f64 {
        let sum: f64 = self
            .found
            .iter()
            .enumerate()
            .map(|(k, &c)| k as f64 * c as f64)
            .sum();
        sum / self.requests().max(1) as f64
    }

    fn found_quantile(&self, q: f64) -> usize {
        let want = (q * self.requests() as f64).ceil() as u64;
        let mut seen = 0;
        for (k, &c) in self.found.iter().enumerate() {
            seen += c;
            if seen >= want {
                return k;
            }
        }
        self.found.len().saturating_sub(1)
    }

    fn found_max(&self) -> usize {
        self.found.iter().rposition(|&c| c > 0).unwrap_or(0)
    }

    /// Mean and p99 of the response times (sorts them).
    fn response_mean_p99(&mut self) -> (f64, f64) {
        let r = &mut self.response;
        if r.is_empty() {
            return (0.0, 0.0);
        }
        r.sort_unstable_by(f64::total_cmp);
        let mean = r.iter().sum::<f64>() / r.len() as f64;
        let i = ((0.99 * r.len() as f64).ceil() as usize).clamp(1, r.len()) - 1;
        (mean, r[i])
    }
}

/// One run: every request of `opts.seconds` placed by `funcs`, with one front
/// end (`fronts` = 1, node 0) or one per node (`fronts` = NODES).
fn simulate(opts: &Options, funcs: &[Func], fronts: usize) -> Outcome {
    let rate = UTILISATION * NODES as f64;
    // Requests (when, how long, to which front end) and placement's random
    // numbers come from separate streams: every policy gets the same requests.
    let mut requests = Rng(opts.seed);
    let mut choices = Rng(opts.seed ^ 0x5eed_0fc4_01ce_5eed);
    let mut queues: Vec<VecDeque<Job>> = (0..NODES).map(|_| VecDeque::new()).collect();
    let mut done_at = [f64::INFINITY; NODES];
    let mut in_flight = vec![[0u32; NODES]; fronts];
    let mut loadavg = [0.0f64; NODES];
    let names: Vec<String> = (0..NODES).map(|i| format!("n{i:02}")).collect();
    let mut nodes: Vec<Node> = (0..NODES)
        .map(|i| Node {
            name: &names[i],
            local: false,
            age: 0.0,
            figures: Figures {
                cpus: 1,
                load: 0.0,
                cpu_idle: 1.0,
                busy_slots: 0,
                free_slots: 1,
                mem_total: 1 << 30,
                mem_available: 1 << 29,
                arriba: 0,
            },
            in_flight: 0,
        })
        .collect();
    let no_cookie = |_: &str| None;
    let mut out = Outcome {
        found: Vec::new(),
        response: Vec::new(),
    };
    let mut next_arrival = requests.exp(rate);
    let mut next_tick = 1.0;
    let mut tick = 0u64;
    loop {
        let (dn, dt) = done_at
            .iter()
            .copied()
            .enumerate()
            .fold(
                (0, f64::INFINITY),
                |m, (i, t)| if t < m.1 { (i, t) } else { m },
            );
        let now = next_arrival.min(dt).min(next_tick);
        if now > opts.seconds {
            break;
        }
        if now == next_tick {
            // Every node renews its figures at the whole second.
            tick += 1;
            for (i, node) in nodes.iter_mut().enumerate() {
                let held = queues[i].len();
                if tick.is_multiple_of(5) {
                    // Linux's calc_load: every 5 s, with exp(-5/60) for 1 min.
                    let e = (-5.0f64 / 60.0).exp();
                    loadavg[i] = loadavg[i] * e + held as f64 * (1.0 - e);
                }
                node.figures.load = match opts.load {
                    LoadFigure::Queue => held as f64,
                    LoadFigure::LoadAvg => loadavg[i],
                };
                node.figures.busy_slots = held.min(1) as u32;
                node.figures.free_slots = 1 - node.figures.busy_slots;
                node.figures.cpu_idle = if held == 0 { 1.0 } else { 0.0 };
            }
            next_tick += 1.0;
        } else if now == dt {
            let job = queues[dn]
                .pop_front()
                .expect("a node that finishes holds a job");
            in_flight[job.from][dn] -= 1;
            if job.arrived >= WARMUP {
                out.response.push(now - job.arrived);
            }
            done_at[dn] = queues[dn]
                .front()
                .map_or(f64::INFINITY, |j| now + j.service);
        } else {
            let from = if fronts == 1 {
                0
            } else {
                requests.below(fronts)
            };
            let service = match opts.service {
                Service::Exponential => requests.exp(1.0),
                Service::Fixed => 1.0,
            };
            for (i, node) in nodes.iter_mut().enumerate() {
                node.local = i == from;
                node.in_flight = in_flight[from][i];
                // Figures made at the last whole second.
                node.age = now - (next_tick - 1.0);
            }
            let mut random = |n: usize| choices.below(n.max(1));
            let mut req = Request {
                cookie: &no_cookie,
                random: &mut random,
            };
            let chosen = place::place(&nodes, funcs, &mut req)
                .first()
                .copied()
                .unwrap_or(from);
            let ahead = queues[chosen].len();
            if now >= WARMUP {
                if out.found.len() <= ahead {
                    out.found.resize(ahead + 1, 0);
                }
                out.found[ahead] += 1;
            }
            if ahead == 0 {
                done_at[chosen] = now + service;
            }
            queues[chosen].push_back(Job {
                from,
                arrived: now,
                service,
            });
            in_flight[from][chosen] += 1;
            next_arrival = now + requests.exp(rate);
        }
    }
    out
}

fn usage() -> ! {
    eprintln!(
        "usage: farm_sim [--seconds N] [--seed N] [--service exp|fixed] [--load queue|loadavg]"
    );
    std::process::exit(2)
}

fn options() -> Options {
    let mut opts = Options {
        seconds: 20_000.0,
        seed: 1,
        service: Service::Exponential,
        load: LoadFigure::Queue,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        let bad = |what: &str| -> ! {
            eprintln!("farm_sim: {flag}: {value:?} is not {what}");
            std::process::exit(2)
        };
        match flag.as_str() {
            "--seconds" => {
                opts.seconds = value
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s > WARMUP * 2.0)
                    .unwrap_or_else(|| bad("a number of seconds above 200"))
            }
            "--seed" => opts.seed = value.parse().unwrap_or_else(|_| bad("a number")),
            "--service" => {
                opts.service = match value.as_str() {
                    "exp" => Service::Exponential,
                    "fixed" => Service::Fixed,
                    _ => bad("exp or fixed"),
                }
            }
            "--load" => {
                opts.load = match value.as_str() {
                    "queue" => LoadFigure::Queue,
                    "loadavg" => LoadFigure::LoadAvg,
                    _ => bad("queue or loadavg"),
                }
            }
            _ => usage(),
        }
    }
    opts
}

fn main() {
    let opts = options();
    let start = Instant::now();
    let policies: Vec<(String, Vec<Func>)> = POLICIES
        .iter()
        .map(|p| {
            let funcs = p
                .iter()
                .map(|f| place::parse(f).unwrap_or_else(|e| panic!("{f}: {e}")))
                .collect();
            (p.join(", "), funcs)
        })
        .collect();
    println!(
        "{NODES} nodes of one server each, service times {} (mean 1), Poisson arrivals at {:.0}% \
         ({:.1}/s);\nfigures renewed at every whole second: load = {}; {} s simulated after a \
         {WARMUP} s warm-up, seed {}",
        match opts.service {
            Service::Exponential => "exponential",
            Service::Fixed => "fixed",
        },
        UTILISATION * 100.0,
        UTILISATION * NODES as f64,
        match opts.load {
            LoadFigure::Queue => "the requests the node held then",
            LoadFigure::LoadAvg => "the 1-minute load average of them (Linux's, every 5 s)",
        },
        opts.seconds - WARMUP,
        opts.seed,
    );
    println!(
        "queue: requests ahead of a request at the node it is placed on; response: its wait + \
         service, in mean service times"
    );
    for (fronts, title) in [
        (
            1,
            "one front end (node 0 places every request: in_flight = every node's true queue)",
        ),
        (
            NODES,
            "16 front ends (each node places the requests it receives, 1/16 each: in_flight = its own share)",
        ),
    ] {
        println!("\n{title}");
        println!(
            "{:<38} {:>10} {:>6} {:>6} {:>14} {:>7}",
            "balance", "queue mean", "p99", "max", "response mean", "p99"
        );
        for (name, funcs) in &policies {
            let mut o = simulate(&opts, funcs, fronts);
            let (rmean, rp99) = o.response_mean_p99();
            println!(
                "{:<38} {:>10.2} {:>6} {:>6} {:>14.2} {:>7.2}",
                name,
                o.found_mean(),
                o.found_quantile(0.99),
                o.found_max(),
                rmean,
                rp99
            );
        }
    }
    if opts.service == Service::Exponential {
        // Spread at random, each node is an M/M/1 queue at utilisation ρ: a
        // request finds k ahead with probability (1-ρ)ρ^k, its response time
        // is exponential with rate 1-ρ.
        let rho = UTILISATION;
        let p99_found = ((0.01f64).ln() / rho.ln()).ceil() - 1.0;
        println!(
            "\ncheck, byRandom against M/M/1 at {rho}: queue mean {:.2}, p99 {p99_found:.0}; \
             response mean {:.2}, p99 {:.2}\n(a queue at 90% drifts for minutes: byRandom's \
             figures move by about 10% from seed to seed at 20000 s, the others' far less)",
            rho / (1.0 - rho),
            1.0 / (1.0 - rho),
            (100.0f64).ln() / (1.0 - rho),
        );
    }
    println!("({:.1} s)", start.elapsed().as_secs_f64());
}
