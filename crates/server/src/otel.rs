//! OpenTelemetry export (cargo feature `otel`): every interval, the job metrics are
//! POSTed as an OTLP/HTTP JSON `ExportMetricsServiceRequest` to `<endpoint>/v1/metrics`,
//! the encoding every OpenTelemetry Collector accepts. Counters are cumulative monotonic
//! sums from the server's start, depths gauges, wait and run times explicit-bucket
//! histograms (the same buckets as `/metrics`). A failed export is logged and the next
//! interval sends the (cumulative) values again.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_core::Millis;

use crate::broker::{system_now_ms, Broker};
use crate::metrics::Export;

/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

fn nanos(ms: Millis) -> String {
    (i128::from(ms) * 1_000_000).to_string()
}

fn attributes(pairs: &[(&str, &str)]) -> Value {
    Value::Array(
        pairs
            .iter()
            .map(|(key, value)| json!({ "key": key, "value": { "stringValue": value } }))
            .collect(),
    )
}

/// The export as an OTLP JSON request (64-bit integers as strings, per the protobuf
/// JSON mapping).
pub fn request(export: &Export, start_ms: Millis, now_ms: Millis) -> Value {
    let (start, now) = (nanos(start_ms), nanos(now_ms));
    let mut jobs = Vec::new();
    for (queue, kind, outcome, value) in export.totals() {
        jobs.push(json!({
            "attributes": attributes(&[("queue", queue), ("kind", kind), ("outcome", outcome)]),
            "startTimeUnixNano": start, "timeUnixNano": now, "asInt": value.to_string(),
        }));
    }
    let mut depth = Vec::new();
    let (mut wait, mut run) = (Vec::new(), Vec::new());
    for queue in export.queues() {
        for (state, count) in queue.counts {
            depth.push(json!({
                "attributes": attributes(&[("queue", queue.name), ("state", state)]),
                "timeUnixNano": now, "asInt": count.to_string(),
            }));
        }
        for (points, histogram) in [(&mut wait, &queue.wait), (&mut run, &queue.run)] {
            points.push(json!({
                "attributes": attributes(&[("queue", queue.name)]),
                "startTimeUnixNano": start, "timeUnixNano": now,
                "count": histogram.count.to_string(),
                "sum": histogram.sum_s,
                "bucketCounts": histogram.bucket_counts.iter().map(u64::to_string).collect::<Vec<_>>(),
                "explicitBounds": histogram.bounds_s,
            }));
        }
    }
    let histogram = |name: &str, description: &str, points: Vec<Value>| {
        json!({
            "name": name, "description": description, "unit": "s",
            "histogram": { "aggregationTemporality": 2, "dataPoints": points },
        })
    };
    json!({
        "resourceMetrics": [{
            "resource": { "attributes": attributes(&[("service.name", "sluice")]) },
            "scopeMetrics": [{
                "scope": { "name": "sluice", "version": env!("CARGO_PKG_VERSION") },
                "metrics": [
                    {
                        "name": "sluice.jobs",
                        "description": "Jobs by queue, kind and what happened to them.",
                        "unit": "{job}",
                        "sum": { "aggregationTemporality": 2, "isMonotonic": true, "dataPoints": jobs },
                    },
                    {
                        "name": "sluice.queue.jobs",
                        "description": "Jobs in each state now.",
                        "unit": "{job}",
                        "gauge": { "dataPoints": depth },
                    },
                    histogram("sluice.job.wait", "Time from a job being due to its lease.", wait),
                    histogram("sluice.job.run", "Time from a lease to its ack, fail or expiry.", run),
                ],
            }],
        }],
    })
}

/// Exports every `interval` until `stop` turns true.
pub async fn exporter(
    broker: Arc<Broker>,
    endpoint: String,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let url = format!("{}/v1/metrics", endpoint.trim_end_matches('/'));
    let http = match reqwest::Client::builder().timeout(EXPORT_TIMEOUT).build() {
        Ok(http) => http,
        Err(error) => {
            tracing::error!(%error, "cannot build the OTLP exporter's HTTP client");
            return;
        }
    };
    let start_ms = system_now_ms();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let export = broker
            .read_with_metrics(|s, metrics, now| Ok((metrics.export(s, now), now)))
            .await;
        let Ok((export, now)) = export else {
            continue;
        };
        let body = request(&export, start_ms, now).to_string();
        let sent = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => tracing::warn!(status = %response.status(), url, "OTLP export refused"),
            Err(error) => tracing::warn!(%error, url, "OTLP export failed"),
        }
    }
}
