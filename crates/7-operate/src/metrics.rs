//! `GET /metrics`: the node's counters and gauges in the Prometheus text
//! exposition format (version 0.0.4), which every monitoring stack scrapes.
//!
//! This module only renders; what there is to report comes from the parts
//! that count it (receive's listeners, the queue engine, the process),
//! gathered by the server binary through [`MetricsSource`], so operate
//! depends on none of them.

use crate::api::ControlFuture;

/// Where `GET /metrics` gets its figures, asked at every scrape.
pub trait MetricsSource: Send + Sync + 'static {
    /// Every metric family, in the order to print them.
    fn families(&self) -> ControlFuture<Vec<Family>>;
}

/// Prometheus metric types used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only ever rises (until the process restarts); graphed as a rate.
    Counter,
    /// A value now.
    Gauge,
}

/// One metric family: a name, its help text and type, and its samples.
#[derive(Clone, Debug)]
pub struct Family {
    /// `ferrymail_...`, or `process_...` for the conventional process ones.
    pub name: &'static str,
    /// One line saying what it counts.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// (labels, value) pairs; no labels for a single sample.
    pub samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl Family {
    /// A family with one unlabelled sample.
    pub fn single(name: &'static str, help: &'static str, kind: Kind, value: f64) -> Family {
        Family {
            name,
            help,
            kind,
            samples: vec![(Vec::new(), value)],
        }
    }
}

/// The text format: `# HELP`, `# TYPE`, then one line per sample.
pub fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families {
        let kind = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        out.push_str(&format!("# HELP {} {}\n", f.name, escape_help(f.help)));
        out.push_str(&format!("# TYPE {} {kind}\n", f.name));
        for (labels, value) in &f.samples {
            out.push_str(f.name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&format!("{k}=\"{}\"", escape_label(v)));
                }
                out.push('}');
            }
            out.push(' ');
            out.push_str(&number(*value));
            out.push('\n');
        }
    }
    out
}

/// A sample value: integers without a fraction, as Prometheus prints them.
fn number(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// Label values escape backslash, double quote and line feed.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Help text escapes backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let text = render(&[
            Family::single(
                "ferrymail_a_total",
                "A \\ count\nof things.",
                Kind::Counter,
                3.0,
            ),
            Family {
                name: "ferrymail_b",
                help: "B.",
                kind: Kind::Gauge,
                samples: vec![
                    (vec![("queue", "de\"f\\ault\n".into())], 1.5),
                    (vec![("queue", "x".into()), ("lane", "y".into())], 0.0),
                ],
            },
        ]);
        assert_eq!(
            text,
            "# HELP ferrymail_a_total A \\\\ count\\nof things.\n\
             # TYPE ferrymail_a_total counter\n\
             ferrymail_a_total 3\n\
             # HELP ferrymail_b B.\n\
             # TYPE ferrymail_b gauge\n\
             ferrymail_b{queue=\"de\\\"f\\\\ault\\n\"} 1.5\n\
             ferrymail_b{queue=\"x\",lane=\"y\"} 0\n"
        );
    }

    #[test]
    fn numbers_print_as_prometheus_reads_them() {
        assert_eq!(number(12.0), "12");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(1e20), "100000000000000000000");
    }
}
