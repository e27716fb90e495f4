//! The farm on the admin pages: every node with its figures and their age,
//! the nodes whose berth version or configuration differs from this one's
//! (every node of a farm must serve the same configuration), the requests
//! placed on each, and what was refused (gossip datagrams, marks).

use std::fmt::Write as _;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use serde::Serialize;

use super::metrics::family;
use super::page::esc;
use crate::farm::Figures;
use crate::front::farm::FarmRt;

#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    /// This node's name.
    pub node: String,
    pub version: String,
    pub fingerprint: String,
    /// This node first, then the others by name.
    pub nodes: Vec<NodeView>,
    /// Gossip datagrams dropped, by reason.
    pub dropped: Vec<(String, u64)>,
    /// Requests that came with a mark that did not verify (ignored).
    pub marks_refused: u64,
    /// Proxied requests a node could not be reached for, or failed.
    pub handovers_failed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub name: String,
    pub local: bool,
    pub live: bool,
    /// Where requests proxied to it go.
    pub proxy: String,
    /// Seconds since this node got its figures.
    pub age_seconds: f64,
    pub figures: Figures,
    pub version: String,
    pub fingerprint: String,
    /// Its version or configuration is not this node's.
    pub version_differs: bool,
    pub config_differs: bool,
    /// Requests this node placed on it, and has in flight to it now.
    pub placed: u64,
    pub in_flight: u32,
}

impl ClusterView {
    pub fn build(farm: &FarmRt) -> ClusterView {
        let peers = farm.peers();
        let placed = farm.placed();
        let flights = farm.in_flight();
        let version = env!("CARGO_PKG_VERSION").to_string();
        let fingerprint = peers
            .iter()
            .find(|p| p.local)
            .map_or_else(|| farm.plan.fingerprint.clone(), |p| p.fingerprint.clone());
        let mut nodes: Vec<NodeView> = peers
            .iter()
            .map(|p| NodeView {
                name: p.name.clone(),
                local: p.local,
                live: p.live || p.local,
                proxy: p.proxy.to_string(),
                age_seconds: p.age,
                figures: p.figures,
                version_differs: p.version != version,
                config_differs: p.fingerprint != fingerprint,
                version: p.version.clone(),
                fingerprint: p.fingerprint.clone(),
                placed: placed
                    .iter()
                    .find(|(n, _)| *n == p.name)
                    .map_or(0, |(_, c)| *c),
                in_flight: flights
                    .iter()
                    .find(|(n, _)| *n == p.name)
                    .map_or(0, |(_, c)| *c),
            })
            .collect();
        nodes.sort_by(|a, b| b.local.cmp(&a.local).then_with(|| a.name.cmp(&b.name)));
        ClusterView {
            node: farm.name().to_string(),
            version,
            fingerprint,
            nodes,
            dropped: farm
                .dropped()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            marks_refused: farm
                .marks_refused
                .load(std::sync::atomic::Ordering::Relaxed),
            handovers_failed: farm
                .handovers_failed
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// The cluster's section of the HTML page.
pub fn render(out: &mut String, c: &ClusterView) {
    let _ = writeln!(
        out,
        "<h2>Cluster</h2>\n<p class=\"meta\">This node: <b>{}</b>, berth {}, configuration {}</p>",
        esc(&c.node),
        esc(&c.version),
        esc(&c.fingerprint)
    );
    let differ: Vec<&str> = c
        .nodes
        .iter()
        .filter(|n| n.live && (n.version_differs || n.config_differs))
        .map(|n| n.name.as_str())
        .collect();
    if !differ.is_empty() {
        let _ = writeln!(
            out,
            "<p class=\"bad\">Not the same configuration or version as this node: {} \
             (every node of a farm must serve the same configuration)</p>",
            esc(&differ.join(", "))
        );
    }
    out.push_str(
        "<table><thead><tr><th>node</th><th>state</th><th>figures age</th><th>load / CPUs</th>\
         <th>CPU idle</th><th>busy / free slots</th><th>memory available</th><th>arriba</th>\
         <th>placed here</th><th>in flight</th><th>version</th><th>configuration</th>\
         </tr></thead><tbody>\n",
    );
    for n in &c.nodes {
        let f = &n.figures;
        let state = match (n.local, n.live) {
            (true, _) => "this node",
            (false, true) => "alive",
            (false, false) => "dead",
        };
        let mark = |differs: bool| if differs { " class=\"bad\"" } else { "" };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{state}</td><td class=\"n\">{:.1} s</td><td class=\"n\">{:.2} / {}</td>\
             <td class=\"n\">{:.0}%</td><td class=\"n\">{} / {}</td><td class=\"n\">{} of {} MiB</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td{}>{}</td><td{}>{}{}</td></tr>",
            esc(&n.name),
            n.age_seconds,
            f.load,
            f.cpus,
            f.cpu_idle * 100.0,
            f.busy_slots,
            f.free_slots,
            f.mem_available >> 20,
            f.mem_total >> 20,
            f.arriba,
            n.placed,
            n.in_flight,
            mark(n.version_differs),
            esc(&n.version),
            mark(n.config_differs),
            esc(&n.fingerprint),
            if n.config_differs { " (differs)" } else { "" },
        );
    }
    out.push_str("</tbody></table>\n");
    let dropped: u64 = c.dropped.iter().map(|(_, n)| n).sum();
    let _ = writeln!(
        out,
        "<p class=\"meta\">Gossip datagrams dropped: {dropped}{}; marks refused: {}; \
         handovers failed: {}</p>",
        if dropped > 0 {
            format!(
                " ({})",
                c.dropped
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(k, n)| format!("{} {n}", esc(k)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            String::new()
        },
        c.marks_refused,
        c.handovers_failed
    );
}

/// The cluster's metrics.
pub fn metrics(e: &mut DescriptorEncoder, c: &ClusterView) -> Result<(), std::fmt::Error> {
    let node = |n: &NodeView| [("node", n.name.clone())];
    family(
        e,
        "berth_cluster_node_up",
        "1 while the failure detector holds the node alive (this node: always).",
        MetricType::Gauge,
        c.nodes.iter().map(|n| (node(n), Some(u64::from(n.live)))),
    )?;
    family(
        e,
        "berth_cluster_node_age_seconds",
        "Seconds since this node got the node's figures.",
        MetricType::Gauge,
        c.nodes.iter().map(|n| (node(n), Some(n.age_seconds))),
    )?;
    family(
        e,
        "berth_cluster_node_load",
        "The node's 1-minute load average, as it announced it.",
        MetricType::Gauge,
        c.nodes.iter().map(|n| (node(n), Some(n.figures.load))),
    )?;
    family(
        e,
        "berth_cluster_node_busy_slots",
        "Requests in flight in the node's apps, as it announced them.",
        MetricType::Gauge,
        c.nodes
            .iter()
            .map(|n| (node(n), Some(u64::from(n.figures.busy_slots)))),
    )?;
    family(
        e,
        "berth_cluster_node_config_differs",
        "1 when the node's configuration fingerprint or berth version is not this node's.",
        MetricType::Gauge,
        c.nodes.iter().map(|n| {
            (
                node(n),
                Some(u64::from(n.config_differs || n.version_differs)),
            )
        }),
    )?;
    family(
        e,
        "berth_cluster_placed_requests",
        "Requests this node placed on the node (itself included) since it started.",
        MetricType::Counter,
        c.nodes.iter().map(|n| (node(n), Some(n.placed))),
    )?;
    family(
        e,
        "berth_cluster_in_flight_requests",
        "Requests this node has in flight to the node now.",
        MetricType::Gauge,
        c.nodes
            .iter()
            .map(|n| (node(n), Some(u64::from(n.in_flight)))),
    )?;
    family(
        e,
        "berth_cluster_dropped_datagrams",
        "Gossip datagrams dropped since start, by reason.",
        MetricType::Counter,
        c.dropped
            .iter()
            .map(|(reason, n)| ([("reason", reason.clone())], Some(*n))),
    )?;
    family(
        e,
        "berth_cluster_marks_refused",
        "Requests whose farm mark did not verify (the mark was ignored).",
        MetricType::Counter,
        [([("", ""); 0], Some(c.marks_refused))],
    )?;
    family(
        e,
        "berth_cluster_handovers_failed",
        "Requests for which another node could not be reached, or failed.",
        MetricType::Counter,
        [([("", ""); 0], Some(c.handovers_failed))],
    )
}
