//! Reading `/metrics`: the exposition text parsed into samples, each a metric name, its exact
//! label set and its value. Tests name a sample the way the exposition writes it,
//! `name{label="value",...}`; the labels match as a set (in any order), never as a prefix.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One scrape of `/metrics`.
pub struct Metrics {
    text: String,
    samples: Vec<Sample>,
}

/// GET `{admin}/metrics`, parsed.
pub async fn scrape(admin: &str) -> Metrics {
    let r = super::get(&format!("{admin}/metrics"), &[]).await;
    assert_eq!(r.status, 200, "{admin}/metrics: {}", r.text());
    Metrics::parse(&r.text())
}

impl Metrics {
    /// Parses an exposition; panics on a line that is not a comment, blank or a sample.
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (name, labels, rest) =
                    series(l).unwrap_or_else(|| panic!("not a sample line: {l}"));
                let value = rest
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no value in: {l}"));
                Sample {
                    name,
                    labels,
                    value,
                }
            })
            .collect();
        Metrics {
            text: text.to_owned(),
            samples,
        }
    }

    /// The exposition as it was served.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The value of the sample `sample` names (`name` or `name{label="value",...}`): the same
    /// name and exactly the same labels. `None` when there is no such sample.
    pub fn value(&self, sample: &str) -> Option<f64> {
        let (name, labels, rest) =
            series(sample).unwrap_or_else(|| panic!("not a sample name: {sample}"));
        assert!(rest.trim().is_empty(), "a value in a sample name: {sample}");
        let mut found = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == labels);
        let first = found.next().map(|s| s.value);
        assert!(found.next().is_none(), "`{sample}` appears twice");
        first
    }

    /// The whole-number value of `sample` (a counter, or a gauge that counts); 0 when the
    /// sample is absent, as a labelled counter is until it is first incremented.
    pub fn count(&self, sample: &str) -> u64 {
        let v = self.value(sample).unwrap_or(0.0);
        assert!(
            v >= 0.0 && v.fract() == 0.0,
            "`{sample}` is {v}, not a count"
        );
        v as u64
    }

    /// The values label `label` takes, over every sample.
    pub fn label_values(&self, label: &str) -> BTreeSet<&str> {
        self.samples
            .iter()
            .filter_map(|s| s.labels.get(label).map(String::as_str))
            .collect()
    }

    /// Every sample of the metric `name`, whatever its labels.
    pub fn samples<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }
}

impl fmt::Debug for Metrics {
    /// The exposition itself, so that a failed wait shows the last scrape as it was.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Splits `name{label="value",...} rest` into the name, the labels and the rest.
fn series(line: &str) -> Option<(String, BTreeMap<String, String>, &str)> {
    let end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..end];
    if name.is_empty() {
        return None;
    }
    let mut labels = BTreeMap::new();
    let Some(mut rest) = line[end..].strip_prefix('{') else {
        return Some((name.to_owned(), labels, &line[end..]));
    };
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Some((name.to_owned(), labels, after));
        }
        let (key, after) = rest.split_once('=')?;
        let quoted = after.trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let close = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        if labels.insert(key.trim().to_owned(), value).is_some() {
            return None;
        }
        rest = quoted[close + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

#[test]
fn samples_match_by_name_and_exact_label_set() {
    let m = Metrics::parse(
        "# HELP x_total X.\n# TYPE x_total counter\nx_total{a=\"1\",b=\"2\"} 3\nx_total{a=\"1\"} 20\nx_total{a=\"q\\\"u,o}te\"} 4\nup 1\n",
    );
    assert_eq!(m.value(r#"x_total{b="2",a="1"}"#), Some(3.0));
    assert_eq!(m.value(r#"x_total{a="1"}"#), Some(20.0));
    assert_eq!(m.value(r#"x_total{a="q\"u,o}te"}"#), Some(4.0));
    assert_eq!(m.value("x_total"), None);
    assert_eq!(m.count(r#"x_total{a="2"}"#), 0);
    assert_eq!(m.count("up"), 1);
    assert_eq!(m.samples("x_total").count(), 3);
    assert_eq!(m.label_values("a"), BTreeSet::from(["1", "q\"u,o}te"]));
}
