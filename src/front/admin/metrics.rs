//! `/metrics`: the [`View`] in the Prometheus text format (0.0.4), encoded by
//! `prometheus-client` from a [`Collector`] that reads the view at the
//! scrape. The figures are berth's own (the supervisor's snapshot, the
//! front end's atomic counters): nothing is recorded through the crate on
//! the request path, where a request costs a few relaxed atomic additions
//! (`front::usage`). The names and what they mean are in `docs/status.md`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::view::{AppView, TenantView, View};

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The view's metrics, as text.
pub fn render(view: View) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Metrics(view)));
    let mut out = String::new();
    // Writing to a String does not fail; an encoder's error would be a bug.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::error!("encoding /metrics failed: {e}");
    }
    out
}

#[derive(Debug)]
struct Metrics(View);

/// One metric family: a descriptor, then one sample per label set that
/// has a value.
pub(super) fn family<L, V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, Option<V>)>,
) -> Result<(), std::fmt::Error>
where
    L: prometheus_client::encoding::EncodeLabelSet,
    V: EncodeGaugeValue + EncodeCounterValue,
{
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let Some(value) = value else { continue };
        let mut sample = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => sample.encode_counter::<NoLabelSet, _, u64>(&value, None)?,
            _ => sample.encode_gauge(&value)?,
        }
    }
    Ok(())
}

impl Metrics {
    /// A metric per tenant (a counter's `name` without `_total`: the
    /// encoder adds it).
    fn tenant_metric<V: EncodeGaugeValue + EncodeCounterValue>(
        &self,
        enc: &mut DescriptorEncoder,
        kind: MetricType,
        name: &str,
        help: &str,
        value: impl Fn(&TenantView) -> Option<V>,
    ) -> Result<(), std::fmt::Error> {
        let samples = self
            .0
            .tenants
            .iter()
            .map(|t| ([("tenant", t.name.as_str())], value(t)));
        family(enc, name, help, kind, samples)
    }

    fn app_metric<V: EncodeGaugeValue + EncodeCounterValue>(
        &self,
        enc: &mut DescriptorEncoder,
        kind: MetricType,
        name: &str,
        help: &str,
        value: impl Fn(&AppView) -> Option<V>,
    ) -> Result<(), std::fmt::Error> {
        let samples = self.0.tenants.iter().flat_map(|t| {
            t.apps.iter().map(|a| {
                (
                    [("tenant", t.name.as_str()), ("app", a.name.as_str())],
                    value(a),
                )
            })
        });
        family(enc, name, help, kind, samples)
    }
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let v = &self.0;
        let e = &mut enc;
        let seconds = |at: &Option<String>| {
            at.as_deref()
                .and_then(|s| s.parse::<jiff::Timestamp>().ok())
                .map(|t| t.as_millisecond() as f64 / 1000.0)
        };
        family(
            e,
            "berth_status_timestamp_seconds",
            "When the supervisor last read the figures below (Unix time).",
            MetricType::Gauge,
            [([("", ""); 0], seconds(&v.figures_at))],
        )?;
        family(
            e,
            "berth_start_time_seconds",
            "When the supervisor started (Unix time).",
            MetricType::Gauge,
            [([("", ""); 0], seconds(&v.started_at))],
        )?;

        // A tenant's cgroup now.
        let usage = |t: &TenantView| t.usage;
        let limits = |t: &TenantView| t.limits.clone();
        self.tenant_metric(
            e,
            MetricType::Gauge,
            "berth_tenant_memory_bytes",
            "Memory in use by the tenant's processes (the working set: less inactive file cache).",
            |t| usage(t).map(|u| u.memory),
        )?;
        self.tenant_metric(
            e,
            MetricType::Gauge,
            "berth_tenant_memory_limit_bytes",
            "The tenant's memory limit (absent: unlimited).",
            |t| limits(t).and_then(|l| l.memory_bytes),
        )?;
        self.tenant_metric(
            e,
            MetricType::Gauge,
            "berth_tenant_cpu_cores",
            "Cores the tenant used over the last meter interval.",
            |t| usage(t).map(|u| u.cpu_cores),
        )?;
        self.tenant_metric(
            e,
            MetricType::Gauge,
            "berth_tenant_cpu_limit_cores",
            "The tenant's CPU limit in cores (absent: unlimited).",
            |t| limits(t).and_then(|l| l.cpu_cores),
        )?;
        self.tenant_metric(
            e,
            MetricType::Gauge,
            "berth_tenant_tasks",
            "Processes and threads of the tenant.",
            |t| usage(t).map(|u| u.tasks),
        )?;
        self.tenant_metric(
            e,
            MetricType::Gauge,
            "berth_tenant_tasks_limit",
            "The tenant's tasks limit (absent: unlimited).",
            |t| limits(t).and_then(|l| l.tasks).map(u64::from),
        )?;
        // Counted by the supervisor since it started.
        self.tenant_metric(
            e,
            MetricType::Counter,
            "berth_tenant_cpu_seconds",
            "CPU time the tenant's processes used since berth started.",
            |t| usage(t).map(|u| u.cpu_seconds),
        )?;
        self.tenant_metric(
            e,
            MetricType::Counter,
            "berth_tenant_cpu_throttled_seconds",
            "Time the tenant's CPU limit held it back since berth started.",
            |t| usage(t).map(|u| u.cpu_throttled_seconds),
        )?;
        self.tenant_metric(
            e,
            MetricType::Counter,
            "berth_tenant_oom_kills",
            "Processes of the tenant the OOM killer ended at its memory limit since berth started.",
            |t| usage(t).map(|u| u.oom_kills),
        )?;
        self.tenant_metric(
            e,
            MetricType::Counter,
            "berth_tenant_memory_limit_events",
            "Times the tenant reached its memory limit since berth started.",
            |t| usage(t).map(|u| u.memory_events),
        )?;
        self.tenant_metric(
            e,
            MetricType::Counter,
            "berth_tenant_tasks_limit_hits",
            "Forks refused at the tenant's tasks limit since berth started.",
            |t| usage(t).map(|u| u.tasks_limit_hits),
        )?;
        self.tenant_metric(
            e,
            MetricType::Counter,
            "berth_tenant_recycles",
            "Processes recycled for process_memory since berth started.",
            |t| usage(t).map(|u| u.recycles),
        )?;

        // The front end's: its gate now, and its requests since it started.
        self.tenant_metric(
            e,
            MetricType::Gauge,
            "berth_tenant_in_flight",
            "Requests in the tenant's apps now (holding one of its concurrency places).",
            |t| Some(u64::from(t.in_flight)),
        )?;
        self.tenant_metric(
            e,
            MetricType::Gauge,
            "berth_tenant_concurrency_limit",
            "The tenant's concurrency.",
            |t| limits(t).map(|l| u64::from(l.concurrency)),
        )?;
        self.tenant_metric(
            e,
            MetricType::Gauge,
            "berth_tenant_queue_waiting",
            "Requests waiting for one of the tenant's places now (the queue's depth).",
            |t| Some(u64::from(t.waiting)),
        )?;
        self.tenant_metric(
            e,
            MetricType::Gauge,
            "berth_tenant_queue_limit",
            "The tenant's queue.",
            |t| limits(t).map(|l| u64::from(l.queue)),
        )?;
        self.tenant_metric(
            e,
            MetricType::Counter,
            "berth_tenant_queue_waits",
            "Requests that had to wait for a place.",
            |t| Some(t.queue_waits),
        )?;
        self.tenant_metric(
            e,
            MetricType::Counter,
            "berth_tenant_queue_overflows",
            "Requests refused at the tenant's limit (overflow_status).",
            |t| Some(t.queue_overflows),
        )?;
        let samples = v.tenants.iter().flat_map(|t| {
            t.requests
                .by_class
                .iter()
                .map(|(class, n)| ([("tenant", t.name.as_str()), ("class", class)], Some(*n)))
        });
        family(
            e,
            "berth_tenant_requests",
            "Requests to the tenant's sites, by status class.",
            MetricType::Counter,
            samples,
        )?;
        self.tenant_metric(
            e,
            MetricType::Counter,
            "berth_tenant_request_bytes",
            "Request body bytes the tenant's sites received (as declared).",
            |t| Some(t.requests.bytes_in),
        )?;
        self.tenant_metric(
            e,
            MetricType::Counter,
            "berth_tenant_response_bytes",
            "Response body bytes the tenant's sites sent.",
            |t| Some(t.requests.bytes_out),
        )?;
        let mut m = e.encode_descriptor(
            "berth_request_duration_seconds",
            "How long the tenant's requests took, from the request's head to the response's last byte.",
            None,
            MetricType::Histogram,
        )?;
        for t in &v.tenants {
            let r = &t.requests;
            // The encoder takes each bucket's own count and adds them up.
            let mut before = 0;
            let buckets: Vec<(f64, u64)> = r
                .duration_buckets
                .iter()
                .map(|&(bound, cumulative)| {
                    let own = cumulative - before;
                    before = cumulative;
                    (bound, own)
                })
                .collect();
            let labels = [("tenant", t.name.as_str())];
            // (The buckets' total, not `r.total`: both were read while
            // requests ended, and `_count` must be the `+Inf` bucket.)
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                r.duration_seconds_sum,
                before,
                &buckets,
                None,
            )?;
        }

        // Apps.
        self.app_metric(
            e,
            MetricType::Gauge,
            "berth_app_processes",
            "Processes of the app running now (CGI: scripts running).",
            |a| {
                Some(if a.protocol == "cgi" {
                    u64::from(a.cgi_running)
                } else {
                    a.processes.len() as u64
                })
            },
        )?;
        self.app_metric(
            e,
            MetricType::Gauge,
            "berth_app_busy_processes",
            "Processes of the app serving a request now.",
            |a| Some(a.processes.iter().filter(|p| p.in_flight > 0).count() as u64),
        )?;
        self.app_metric(
            e,
            MetricType::Gauge,
            "berth_app_max_processes",
            "The app's max_processes.",
            |a| a.max_processes.map(u64::from),
        )?;
        self.app_metric(
            e,
            MetricType::Gauge,
            "berth_app_memory_bytes",
            "Memory in use by the app's processes (its cgroup; absent without cgroups).",
            |a| a.memory,
        )?;
        self.app_metric(
            e,
            MetricType::Gauge,
            "berth_app_queue_waiting",
            "Requests waiting for one of the app's processes now.",
            |a| Some(u64::from(a.waiting)),
        )?;
        self.app_metric(
            e,
            MetricType::Counter,
            "berth_app_requests",
            "Requests the app's processes served (CGI: scripts started).",
            |a| Some(a.requests),
        )?;
        if let Some(c) = &v.cluster {
            super::cluster::metrics(e, c)?;
        }
        Ok(())
    }
}
