//! Reading the proxies' Prometheus/OpenMetrics text: samples by name and labels, and
//! the same maths as Prometheus's `increase` and `histogram_quantile`.

use std::collections::BTreeMap;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map(String::as_str).unwrap_or("")
    }

    fn matches(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.name == name && labels.iter().all(|(k, v)| self.label(k) == *v)
    }
}

/// One scrape of a `/metrics` page.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Scrape {
    /// Parses the text exposition; lines that are not samples are skipped.
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(parse_line)
            .collect();
        Scrape {
            samples,
            text: text.to_owned(),
        }
    }

    /// The sum of every sample named `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// Whether any sample named `name` has all of `labels`.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.matching(name, labels).next().is_some()
    }

    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.matches(name, labels))
    }

    /// Cumulative histogram buckets `(le, count)` of `{name}_bucket`, summed over every
    /// series with `labels`, sorted by bound.
    pub fn buckets(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut by_le: BTreeMap<OrderedBound, f64> = BTreeMap::new();
        for s in self.matching(&bucket, labels) {
            let le = match s.label("le") {
                "+Inf" => f64::INFINITY,
                le => match le.parse() {
                    Ok(v) => v,
                    Err(_) => continue,
                },
            };
            *by_le.entry(OrderedBound(le)).or_default() += s.value;
        }
        by_le.into_iter().map(|(le, c)| (le.0, c)).collect()
    }
}

/// Bucket bounds ordered for a map (bounds are never NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrderedBound(f64);

impl Eq for OrderedBound {}

impl PartialOrd for OrderedBound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrderedBound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The growth of a counter between two readings, as Prometheus's `increase` treats a
/// reset (a lower later value): the later value counts from zero.
pub fn increase(before: f64, after: f64) -> f64 {
    if after >= before {
        after - before
    } else {
        after
    }
}

/// Bucket-wise growth between two cumulative histograms (same bounds expected; bounds
/// only in `after` count from zero).
pub fn bucket_increase(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(le, count)| {
            let old = before
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0.0, |(_, c)| *c);
            (le, increase(old, count))
        })
        .collect()
}

/// The `q` quantile (0..=1) of cumulative buckets, interpolated linearly inside the
/// bucket as Prometheus's `histogram_quantile` does. `None` without observations.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total;
    let mut lower_bound = 0.0;
    let mut lower_count = 0.0;
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                // Above the highest finite bound: report that bound.
                return Some(lower_bound);
            }
            let in_bucket = count - lower_count;
            if in_bucket <= 0.0 {
                return Some(le);
            }
            return Some(lower_bound + (le - lower_bound) * (rank - lower_count) / in_bucket);
        }
        lower_bound = le;
        lower_count = count;
    }
    Some(lower_bound)
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, labels, value) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (
                &line[..open],
                parse_labels(&line[open + 1..close]),
                &line[close + 1..],
            )
        }
        None => {
            let name = line.split_whitespace().next()?;
            (name, BTreeMap::new(), &line[name.len()..])
        }
    };
    let value = value.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',').trim().to_owned();
        let mut value = String::new();
        let mut end = rest.len();
        let mut chars = rest[eq + 2..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = eq + 2 + i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key, value);
        rest = &rest[end..];
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples() {
        let s = Scrape::parse(
            "# TYPE request counter\nrequest_total{direction=\"inbound\",authority=\"a,b\\\"c\"} 3\nprocess_open_fds 12\n# EOF\n",
        );
        assert_eq!(s.sum("request_total", &[("direction", "inbound")]), 3.0);
        assert_eq!(s.sum("request_total", &[("authority", "a,b\"c")]), 3.0);
        assert_eq!(s.sum("process_open_fds", &[]), 12.0);
        assert_eq!(s.sum("request_total", &[("direction", "outbound")]), 0.0);
    }

    #[test]
    fn quantiles_match_prometheus() {
        let s = Scrape::parse(
            "lat_bucket{le=\"1.0\"} 0\nlat_bucket{le=\"10.0\"} 50\nlat_bucket{le=\"100.0\"} 100\nlat_bucket{le=\"+Inf\"} 100\n",
        );
        let b = s.buckets("lat", &[]);
        assert_eq!(b.len(), 4);
        assert_eq!(histogram_quantile(0.5, &b), Some(10.0));
        assert_eq!(histogram_quantile(0.25, &b), Some(5.5));
        assert_eq!(histogram_quantile(0.99, &b), Some(98.2));
        assert_eq!(
            histogram_quantile(0.5, &[(1.0, 0.0), (f64::INFINITY, 0.0)]),
            None
        );
    }

    #[test]
    fn increase_handles_resets() {
        assert_eq!(increase(5.0, 8.0), 3.0);
        assert_eq!(increase(5.0, 2.0), 2.0);
        let d = bucket_increase(
            &[(1.0, 2.0), (f64::INFINITY, 4.0)],
            &[(1.0, 3.0), (f64::INFINITY, 9.0)],
        );
        assert_eq!(d, vec![(1.0, 1.0), (f64::INFINITY, 5.0)]);
    }
}
