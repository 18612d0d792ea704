//! The Prometheus text exposition (format 0.0.4) of every declared metric: `# HELP` and
//! `# TYPE` per family, then its series, in catalog order. Names come from the catalog's
//! [`Naming`] rule, applied here, when `/metrics` is rendered.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::catalog::{self, Kind, Metric, Naming, Storage};

/// Renders every metric with at least one series. `sampled` holds the values of the metrics
/// read at scrape time (the process metrics), which have no registered series.
pub fn render(naming: Naming, sampled: &[(&'static Metric, f64)]) -> String {
    render_metrics(catalog::ALL, naming, sampled)
}

fn render_metrics(
    metrics: &[&'static Metric],
    naming: Naming,
    sampled: &[(&'static Metric, f64)],
) -> String {
    let mut out = String::with_capacity(16 * 1024);
    for metric in metrics {
        if let Some((_, value)) = sampled.iter().find(|(m, _)| std::ptr::eq(*m, *metric)) {
            let name = metric.exported_name(naming);
            header(&mut out, metric, &name);
            let _ = writeln!(out, "{name} {}", float(*value));
            continue;
        }
        let series = metric.series();
        if series.is_empty() {
            continue;
        }
        let name = metric.exported_name(naming);
        header(&mut out, metric, &name);
        for s in &series {
            let labels = label_pairs(metric.labels, &s.values);
            match (&s.storage, metric.kind) {
                (Storage::Value(v), Kind::Counter) => {
                    let _ = writeln!(
                        out,
                        "{name}{} {}",
                        braces(&labels),
                        v.load(Ordering::Relaxed)
                    );
                }
                (Storage::Value(v), _) => {
                    let value = f64::from_bits(v.load(Ordering::Relaxed));
                    let _ = writeln!(out, "{name}{} {}", braces(&labels), float(value));
                }
                (Storage::Histogram(h), _) => {
                    let mut cumulative = 0;
                    for (i, bound) in h.bounds.iter().enumerate() {
                        cumulative += h.counts[i].load(Ordering::Relaxed);
                        let le = with_label(&labels, "le", &float(*bound));
                        let _ = writeln!(out, "{name}_bucket{{{le}}} {cumulative}");
                    }
                    // Read the count after the buckets: a value recorded in between then shows
                    // in `count` (and `+Inf`) but not yet in a bucket, never the other way.
                    let count = h.count.load(Ordering::Relaxed);
                    let le = with_label(&labels, "le", "+Inf");
                    let _ = writeln!(out, "{name}_bucket{{{le}}} {}", count.max(cumulative));
                    let sum = f64::from_bits(h.sum.load(Ordering::Relaxed));
                    let _ = writeln!(out, "{name}_sum{} {}", braces(&labels), float(sum));
                    let _ = writeln!(
                        out,
                        "{name}_count{} {}",
                        braces(&labels),
                        count.max(cumulative)
                    );
                }
            }
        }
    }
    out
}

fn header(out: &mut String, metric: &Metric, name: &str) {
    let help = metric.help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {}", metric.kind.prometheus_type());
}

/// `k1="v1",k2="v2"`, values escaped.
fn label_pairs(names: &[&str], values: &[Box<str>]) -> String {
    let mut out = String::new();
    for (name, value) in names.iter().zip(values) {
        if !out.is_empty() {
            out.push(',');
        }
        let _ = write!(out, "{name}=\"{}\"", escape(value));
    }
    out
}

fn braces(pairs: &str) -> String {
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{pairs}}}")
    }
}

fn with_label(pairs: &str, name: &str, value: &str) -> String {
    if pairs.is_empty() {
        format!("{name}=\"{value}\"")
    } else {
        format!("{pairs},{name}=\"{value}\"")
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value as Prometheus writes one (`+Inf`, `-Inf`, `NaN` spelled its way).
fn float(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registered_counter_is_shown_with_help_type_and_escaped_labels() {
        catalog::RECEIVER_REJECTED_REQUESTS
            .counter(&["grpc", "say \"hi\"\\"])
            .increment(3);
        let text = render(Naming::PROMETHEUS, &[]);
        assert!(text.contains(
            "# HELP tailgate_receiver_rejected_requests_total Requests refused as invalid"
        ));
        assert!(text.contains("# TYPE tailgate_receiver_rejected_requests_total counter\n"));
        assert!(text.contains(
            "tailgate_receiver_rejected_requests_total{transport=\"grpc\",reason=\"say \\\"hi\\\"\\\\\"} 3\n"
        ));
        let text = render(Naming::COLLECTOR_DEFAULT, &[]);
        assert!(text.contains("# TYPE tailgate_receiver_rejected_requests counter\n"));
    }

    static LATENESS: Metric = Metric::for_test(
        "tailgate_test_lateness",
        Kind::Histogram,
        "s",
        &["shard"],
        &[0.001, 0.005, 10.0],
    );

    #[test]
    fn a_histogram_is_shown_with_cumulative_buckets_sum_and_count() {
        let h = LATENESS.histogram(&["1"]);
        h.record(0.003);
        h.record(20.0);
        let text = render_metrics(&[&LATENESS], Naming::PROMETHEUS, &[]);
        let expected = "\
# HELP tailgate_test_lateness_seconds A test metric.
# TYPE tailgate_test_lateness_seconds histogram
tailgate_test_lateness_seconds_bucket{shard=\"1\",le=\"0.001\"} 0
tailgate_test_lateness_seconds_bucket{shard=\"1\",le=\"0.005\"} 1
tailgate_test_lateness_seconds_bucket{shard=\"1\",le=\"10\"} 1
tailgate_test_lateness_seconds_bucket{shard=\"1\",le=\"+Inf\"} 2
tailgate_test_lateness_seconds_sum{shard=\"1\"} 20.003
tailgate_test_lateness_seconds_count{shard=\"1\"} 2
";
        assert_eq!(text, expected);
    }

    #[test]
    fn sampled_process_values_are_shown_as_floats() {
        let text = render(
            Naming::PROMETHEUS,
            &[
                (&catalog::PROCESS_CPU_SECONDS, 1.25),
                (&catalog::PROCESS_MEMORY_RSS, 4096.0),
            ],
        );
        assert!(text.contains("# TYPE otelcol_process_cpu_seconds_total counter\notelcol_process_cpu_seconds_total 1.25\n"));
        assert!(text.contains("otelcol_process_memory_rss_bytes 4096\n"));
        assert!(
            !text.contains("otelcol_process_uptime"),
            "not sampled, not shown"
        );
    }
}
