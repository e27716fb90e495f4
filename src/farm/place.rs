//! Placement: mod_backhand's candidacy functions, as one pure function.
//!
//! Per route, `balance = ["byAge 6", "byLoad 0.5", ...]` is an ordered list
//! of functions; each takes the candidate list left by the one before and
//! filters or reorders it. The first node left serves the request; an
//! empty list serves locally. Nothing here reads a clock, a socket or a
//! random source of its own: [`place`] gets them as arguments, so every
//! function is tested with fixed inputs.
//!
//! The functions and what they mean (mod_backhand's, plus two of berth's):
//! - `byAge [secs]`: drops nodes whose figures are older than `secs`
//!   (default 20).
//! - `byLoad [bias]`: ascending load average per CPU; the local node's load
//!   is lowered by `bias` first, so it keeps requests it is nearly best for.
//! - `byBusyChildren [bias]`: ascending busy request slots, same bias.
//! - `byCPU`: most idle CPU first.
//! - `byRandom`: a shuffle.
//! - `byLogWindow`: keeps the first max(1, floor(log2 n)).
//! - `byCost`: the cost-benefit rule of Amir, Awerbuch et al. Per node, the
//!   cost of a resource at utilisation u is n^u (n: the number of nodes), and
//!   a node's cost is the sum over CPU and memory. The request goes where the
//!   cost rises least when the request's share is added:
//!   `Δ = n^(u_cpu + δ_cpu) − n^u_cpu + n^(u_mem + δ_mem) − n^u_mem`, with
//!   δ the share one request takes of that node (one busy slot of its
//!   slots, for both; see [`marginal_cost`]). Ascending Δ.
//! - `byHostname REGEX`: keeps nodes whose name matches.
//! - `bySession [COOKIE]`: only the node the cookie names, if it is still
//!   a candidate (mod_backhand's "reduces the list"), else the list as it
//!   is. berth reads only cookies it signed (`sticky = true`).
//! - `addSelf` / `removeSelf`: puts the local node in front / takes it out.
//! - `byInFlight`: ascending by this node's own count of requests in flight
//!   to each node (fresh, unlike every node's figures, which are up to a
//!   second old: stops herding).
//! - `byTwoChoices`: the power of two random choices: of two nodes drawn
//!   from the list, the one with fewer requests in flight from here first.

use std::cmp::Ordering;

use super::Figures;

/// What one node last announced, and what this node knows of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Node<'a> {
    pub name: &'a str,
    /// Whether it is this node.
    pub local: bool,
    /// Seconds since its figures were made (as this node reckons).
    pub age: f64,
    pub figures: Figures,
    /// Requests this node has in flight to it now.
    pub in_flight: u32,
}

impl Node<'_> {
    /// Load per CPU.
    fn load_per_cpu(&self) -> f64 {
        self.figures.load / f64::from(self.figures.cpus.max(1))
    }

    /// (Saturating: the two come from another node, any u32 each.)
    fn slots(&self) -> u32 {
        self.figures
            .busy_slots
            .saturating_add(self.figures.free_slots)
    }
}

/// One candidacy function, parsed from `balance`.
#[derive(Debug, Clone)]
pub enum Func {
    ByAge(f64),
    ByLoad(f64),
    ByBusyChildren(f64),
    ByCpu,
    ByRandom,
    ByLogWindow,
    ByCost,
    ByHostname(regex_lite::Regex),
    BySession(String),
    AddSelf,
    RemoveSelf,
    ByInFlight,
    ByTwoChoices,
}

impl PartialEq for Func {
    fn eq(&self, other: &Func) -> bool {
        format!("{self:?}") == format!("{other:?}")
    }
}

/// The default `byAge`.
pub const DEFAULT_AGE: f64 = 20.0;
/// The default `bySession` cookie.
pub const DEFAULT_COOKIE: &str = "berth_node";

/// Parses one entry of `balance` ("byLoad 0.5"); the error says why.
pub fn parse(entry: &str) -> Result<Func, String> {
    let mut parts = entry.split_whitespace();
    let name = parts.next().ok_or("an empty function")?;
    let arg = parts.next();
    if parts.next().is_some() {
        return Err(format!("{name}: one argument at most"));
    }
    let number = |default: f64| -> Result<f64, String> {
        match arg {
            None => Ok(default),
            Some(a) => a
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("{name}: {a:?} is not a number of 0 or more")),
        }
    };
    let none = |f: Func| -> Result<Func, String> {
        match arg {
            None => Ok(f),
            Some(_) => Err(format!("{name} takes no argument")),
        }
    };
    match name {
        "byAge" => Ok(Func::ByAge(number(DEFAULT_AGE)?)),
        "byLoad" => Ok(Func::ByLoad(number(0.0)?)),
        "byBusyChildren" => Ok(Func::ByBusyChildren(number(0.0)?)),
        "byCPU" => none(Func::ByCpu),
        "byRandom" => none(Func::ByRandom),
        "byLogWindow" => none(Func::ByLogWindow),
        "byCost" => none(Func::ByCost),
        "byHostname" => {
            let re = arg.ok_or("byHostname needs a regular expression")?;
            regex_lite::Regex::new(re)
                .map(Func::ByHostname)
                .map_err(|e| format!("byHostname: {e}"))
        }
        "bySession" => Ok(Func::BySession(arg.unwrap_or(DEFAULT_COOKIE).to_string())),
        "addSelf" => none(Func::AddSelf),
        "removeSelf" => none(Func::RemoveSelf),
        "byInFlight" => none(Func::ByInFlight),
        "byTwoChoices" => none(Func::ByTwoChoices),
        other => Err(format!("{other}: no such candidacy function")),
    }
}

/// What a request brings to placement besides the nodes.
pub struct Request<'a> {
    /// The value of each cookie the request sent, by name.
    pub cookie: &'a dyn Fn(&str) -> Option<String>,
    /// Random numbers in 0..n, for `byRandom` and `byTwoChoices`.
    pub random: &'a mut dyn FnMut(usize) -> usize,
}

/// The candidate list after `funcs`, indices into `nodes`, best first.
/// The list starts as every node (the local one included) in the order
/// given. An empty result means: serve locally.
pub fn place(nodes: &[Node], funcs: &[Func], req: &mut Request<'_>) -> Vec<usize> {
    let mut list: Vec<usize> = (0..nodes.len()).collect();
    for f in funcs {
        list = apply(nodes, f, list, req);
    }
    list
}

fn apply(nodes: &[Node], f: &Func, mut list: Vec<usize>, req: &mut Request<'_>) -> Vec<usize> {
    let by = |list: &mut Vec<usize>, key: &dyn Fn(&Node) -> f64| {
        // Stable: ties keep the order the list had.
        list.sort_by(|&a, &b| {
            key(&nodes[a])
                .partial_cmp(&key(&nodes[b]))
                .unwrap_or(Ordering::Equal)
        });
    };
    match f {
        Func::ByAge(secs) => list.retain(|&i| nodes[i].local || nodes[i].age <= *secs),
        Func::ByLoad(bias) => by(&mut list, &|n| {
            n.load_per_cpu() - if n.local { *bias } else { 0.0 }
        }),
        Func::ByBusyChildren(bias) => by(&mut list, &|n| {
            f64::from(n.figures.busy_slots) - if n.local { *bias } else { 0.0 }
        }),
        Func::ByCpu => by(&mut list, &|n| -n.figures.cpu_idle),
        Func::ByRandom => {
            // Fisher-Yates with the caller's numbers.
            for i in (1..list.len()).rev() {
                let j = (req.random)(i + 1).min(i);
                list.swap(i, j);
            }
        }
        Func::ByLogWindow => {
            let n = list.len();
            if n > 0 {
                let keep = (usize::BITS - 1 - n.leading_zeros()).max(1) as usize;
                list.truncate(keep);
            }
        }
        Func::ByCost => {
            let n = nodes.len().max(2) as f64;
            by(&mut list, &|node| marginal_cost(node, n));
        }
        Func::ByHostname(re) => list.retain(|&i| re.is_match(nodes[i].name)),
        Func::BySession(cookie) => {
            if let Some(name) = (req.cookie)(cookie)
                && let Some(pos) = list.iter().position(|&i| nodes[i].name == name)
            {
                list = vec![list[pos]];
            }
        }
        Func::AddSelf => {
            if let Some(me) = nodes.iter().position(|n| n.local) {
                list.retain(|&i| i != me);
                list.insert(0, me);
            }
        }
        Func::RemoveSelf => list.retain(|&i| !nodes[i].local),
        Func::ByInFlight => by(&mut list, &|n| f64::from(n.in_flight)),
        Func::ByTwoChoices => {
            if list.len() >= 2 {
                let a = (req.random)(list.len()).min(list.len() - 1);
                let mut b = (req.random)(list.len() - 1).min(list.len() - 2);
                if b >= a {
                    b += 1;
                }
                let (first, second) = if nodes[list[b]].in_flight < nodes[list[a]].in_flight {
                    (list[b], list[a])
                } else {
                    (list[a], list[b])
                };
                list.retain(|&i| i != first && i != second);
                list.insert(0, second);
                list.insert(0, first);
            }
        }
    }
    list
}

/// How much a node's cost rises by taking one more request (byCost): the
/// cost of a resource at utilisation u is n^u; one request takes one slot's
/// share of CPU and of memory on that node.
pub fn marginal_cost(node: &Node, n: f64) -> f64 {
    let slots = f64::from(node.slots().max(1));
    let share = 1.0 / slots;
    let u_cpu = (1.0 - node.figures.cpu_idle).clamp(0.0, 1.0);
    let u_mem = if node.figures.mem_total == 0 {
        1.0
    } else {
        1.0 - node.figures.mem_available as f64 / node.figures.mem_total as f64
    }
    .clamp(0.0, 1.0);
    let rise = |u: f64| n.powf(u + share) - n.powf(u);
    rise(u_cpu) + rise(u_mem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, local: bool) -> Node<'_> {
        Node {
            name,
            local,
            age: 1.0,
            figures: Figures {
                cpus: 2,
                load: 1.0,
                cpu_idle: 0.5,
                busy_slots: 4,
                free_slots: 12,
                mem_total: 1 << 30,
                mem_available: 1 << 29,
                arriba: 0,
            },
            in_flight: 0,
        }
    }

    fn run(
        nodes: &[Node],
        funcs: &[&str],
        cookie: Option<(&str, &str)>,
        rolls: &[usize],
    ) -> Vec<String> {
        let funcs: Vec<Func> = funcs.iter().map(|f| parse(f).unwrap()).collect();
        let cookie_fn = move |name: &str| {
            cookie
                .filter(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        };
        let mut rolls = rolls.iter().copied();
        let mut random = move |n: usize| rolls.next().unwrap_or(0) % n.max(1);
        let mut req = Request {
            cookie: &cookie_fn,
            random: &mut random,
        };
        place(nodes, &funcs, &mut req)
            .into_iter()
            .map(|i| nodes[i].name.to_string())
            .collect()
    }

    fn three() -> Vec<Node<'static>> {
        let mut a = node("a", true);
        let mut b = node("b", false);
        let mut c = node("c", false);
        a.figures.load = 2.0;
        b.figures.load = 1.0;
        c.figures.load = 3.0;
        vec![a, b, c]
    }

    #[test]
    fn parsing_takes_the_names_and_arguments_and_says_what_is_wrong() {
        assert_eq!(parse("byAge").unwrap(), Func::ByAge(20.0));
        assert_eq!(parse("byAge 6").unwrap(), Func::ByAge(6.0));
        assert_eq!(parse("byLoad 0.5").unwrap(), Func::ByLoad(0.5));
        assert_eq!(
            parse("bySession").unwrap(),
            Func::BySession("berth_node".into())
        );
        for (bad, why) in [
            ("byFoo", "no such candidacy function"),
            ("byLoad x", "not a number"),
            ("byLoad -1", "not a number"),
            ("byCPU 3", "takes no argument"),
            ("byHostname", "needs a regular expression"),
            ("byHostname (", "byHostname:"),
            ("byAge 1 2", "one argument at most"),
            ("", "an empty function"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn no_functions_and_no_nodes() {
        assert_eq!(run(&three(), &[], None, &[]), ["a", "b", "c"]);
        assert_eq!(
            run(&[], &["byLoad", "byCost", "byTwoChoices"], None, &[]),
            Vec::<String>::new()
        );
        assert_eq!(
            run(
                &[node("a", true)],
                &["byLogWindow", "byTwoChoices"],
                None,
                &[]
            ),
            ["a"]
        );
    }

    #[test]
    fn by_age_drops_stale_nodes_and_all_stale_leaves_self() {
        let mut n = three();
        n[1].age = 7.0;
        assert_eq!(run(&n, &["byAge 6"], None, &[]), ["a", "c"]);
        n[2].age = 30.0;
        assert_eq!(run(&n, &["byAge"], None, &[]), ["a", "b"]);
        let mut stale = three();
        for s in &mut stale {
            s.age = 100.0;
        }
        assert_eq!(run(&stale, &["byAge 6"], None, &[]), ["a"]);
        assert_eq!(
            run(&stale, &["removeSelf", "byAge 6"], None, &[]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn by_load_orders_by_load_per_cpu_and_the_bias_keeps_requests_local() {
        assert_eq!(run(&three(), &["byLoad"], None, &[]), ["b", "a", "c"]);
        // a: 2/2 = 1.0, b: 0.5. A bias of 0.5 makes a tie: a keeps its place
        // ahead (stable); 0.6 puts it first outright.
        assert_eq!(run(&three(), &["byLoad 0.6"], None, &[]), ["a", "b", "c"]);
        let mut n = three();
        n[1].figures.cpus = 0; // never divide by zero
        assert_eq!(run(&n, &["byLoad"], None, &[])[0], "a");
    }

    #[test]
    fn by_busy_children_by_cpu_and_by_in_flight() {
        let mut n = three();
        n[0].figures.busy_slots = 5;
        n[1].figures.busy_slots = 9;
        n[2].figures.busy_slots = 1;
        assert_eq!(run(&n, &["byBusyChildren"], None, &[]), ["c", "a", "b"]);
        assert_eq!(run(&n, &["byBusyChildren 10"], None, &[]), ["a", "c", "b"]);
        n[0].figures.cpu_idle = 0.1;
        n[1].figures.cpu_idle = 0.9;
        n[2].figures.cpu_idle = 0.5;
        assert_eq!(run(&n, &["byCPU"], None, &[]), ["b", "c", "a"]);
        n[0].in_flight = 3;
        n[1].in_flight = 0;
        n[2].in_flight = 1;
        assert_eq!(run(&n, &["byInFlight"], None, &[]), ["b", "c", "a"]);
    }

    #[test]
    fn by_log_window_keeps_floor_log2_n_at_least_one() {
        let labels: Vec<String> = (0..16).map(|i| format!("n{i}")).collect();
        let names: Vec<Node> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| node(l, i == 0))
            .collect();
        for (n, keep) in [(1, 1), (2, 1), (3, 1), (4, 2), (7, 2), (8, 3), (16, 4)] {
            assert_eq!(
                run(&names[..n], &["byLogWindow"], None, &[]).len(),
                keep,
                "{n}"
            );
        }
    }

    #[test]
    fn by_hostname_and_self() {
        assert_eq!(run(&three(), &["byHostname ^[bc]$"], None, &[]), ["b", "c"]);
        assert_eq!(run(&three(), &["removeSelf"], None, &[]), ["b", "c"]);
        assert_eq!(
            run(&three(), &["byLoad", "addSelf"], None, &[]),
            ["a", "b", "c"]
        );
        assert_eq!(
            run(&three(), &["removeSelf", "addSelf"], None, &[]),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn by_session_keeps_only_the_named_node_if_it_is_still_a_candidate() {
        let f = ["byLoad", "bySession"];
        assert_eq!(run(&three(), &f, Some(("berth_node", "c")), &[]), ["c"]);
        // Functions after it see the one node only.
        assert_eq!(
            run(
                &three(),
                &["bySession", "byRandom"],
                Some(("berth_node", "b")),
                &[0, 0, 0]
            ),
            ["b"]
        );
        assert_eq!(
            run(&three(), &f, Some(("berth_node", "zz")), &[]),
            ["b", "a", "c"]
        );
        assert_eq!(
            run(
                &three(),
                &["removeSelf", "bySession"],
                Some(("berth_node", "a")),
                &[]
            ),
            ["b", "c"]
        );
        assert_eq!(
            run(&three(), &["bySession sid"], Some(("sid", "c")), &[]),
            ["c"]
        );
    }

    #[test]
    fn by_random_shuffles_with_the_given_numbers() {
        let n = three();
        assert_eq!(run(&n, &["byRandom"], None, &[0, 0]), ["b", "c", "a"]);
        assert_eq!(run(&n, &["byRandom"], None, &[2, 1]), ["a", "b", "c"]);
    }

    #[test]
    fn two_choices_takes_the_less_loaded_of_two_draws_first() {
        let mut n = three();
        n[0].in_flight = 5;
        n[1].in_flight = 1;
        n[2].in_flight = 9;
        // Draws: a (0) and then c (index 1 of the rest -> 2).
        assert_eq!(run(&n, &["byTwoChoices"], None, &[0, 1]), ["a", "c", "b"]);
        // a and b: b has fewer in flight.
        assert_eq!(run(&n, &["byTwoChoices"], None, &[0, 0]), ["b", "a", "c"]);
        // Ties keep the first draw first.
        n[1].in_flight = 5;
        assert_eq!(run(&n, &["byTwoChoices"], None, &[0, 0]), ["a", "b", "c"]);
    }

    #[test]
    fn by_cost_prefers_the_node_whose_cost_rises_least() {
        let mut n = three();
        // b is busy on CPU, c nearly full of memory, a in between.
        n[1].figures.cpu_idle = 0.05;
        n[2].figures.mem_available = n[2].figures.mem_total / 20;
        n[0].figures.cpu_idle = 0.6;
        assert_eq!(run(&n, &["byCost"], None, &[])[0], "a");
        // The rise is convex: the same share costs more on a busier node.
        let idle = node("x", false);
        let mut busy = node("y", false);
        busy.figures.cpu_idle = 0.1;
        assert!(marginal_cost(&busy, 3.0) > marginal_cost(&idle, 3.0));
    }
}
