//! Reads a proxy's `/metrics` and looks samples up by name and labels.

use std::collections::BTreeMap;
use std::net::SocketAddr;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Scrape {
    /// Fetches `http://{admin}/metrics`.
    pub async fn fetch(admin: SocketAddr) -> anyhow::Result<Scrape> {
        let rsp = crate::client::get(admin, "admin", "/metrics").await?;
        anyhow::ensure!(rsp.status == 200, "GET /metrics answered {}", rsp.status);
        Ok(Scrape::parse(&rsp.body))
    }

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
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Whether any sample named `name` has all of `labels`.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.samples.iter().any(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (head, rest) = match line.find('{') {
        Some(i) => {
            let close = line.rfind('}')?;
            (&line[..i], Some((&line[i + 1..close], &line[close + 1..])))
        }
        None => (line.split_whitespace().next()?, None),
    };
    let (labels, value) = match rest {
        Some((labels, value)) => (parse_labels(labels), value),
        None => (BTreeMap::new(), &line[head.len()..]),
    };
    let value = value.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: head.to_owned(),
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
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = rest.len();
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
        rest = &rest[end.min(rest.len())..];
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
}
