//! The daemons' `/metrics` texts: scraped, a metric summed across daemons, and the end-to-end
//! latency histogram with its quantiles.

use testkit::http_get;

/// The `/metrics` text of each ops address (empty for one that does not answer).
pub async fn scrape(addrs: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(addrs.len());
    for a in addrs {
        out.push(
            http_get(a, "/metrics")
                .await
                .map(|r| r.1)
                .unwrap_or_default(),
        );
    }
    out
}

/// The sum of every sample of `name` in a `/metrics` text (so concatenated texts sum across
/// daemons).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The end-to-end latency histogram of a `/metrics` text, cumulative: (upper bound s, count),
/// the buckets of concatenated texts summed.
pub fn buckets(text: &str) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for l in text
        .lines()
        .filter(|l| l.starts_with("sluice_end_to_end_latency_seconds_bucket{"))
    {
        let Some(le) = l.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::INFINITY)
        };
        let v: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        match out.iter_mut().find(|(b, _)| *b == le) {
            Some(e) => e.1 += v,
            None => out.push((le, v)),
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The smallest bucket bound holding the `p` quantile of the counts in `b` (cumulative).
pub fn quantile(b: &[(f64, f64)], p: f64) -> Option<f64> {
    let total = b.last()?.1;
    if total <= 0.0 {
        return None;
    }
    b.iter().find(|(_, c)| *c >= total * p).map(|(le, _)| *le)
}

/// The counts of `b` less those of `a`, bucket by bucket (what a histogram saw between two
/// scrapes).
pub fn delta(a: &[(f64, f64)], b: &[(f64, f64)]) -> Vec<(f64, f64)> {
    b.iter()
        .map(|(le, c)| {
            (
                *le,
                c - a.iter().find(|(l, _)| l == le).map_or(0.0, |x| x.1),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "sluice_events_written_total 120\n\
        sluice_end_to_end_latency_seconds_bucket{le=\"0.1\"} 50\n\
        sluice_end_to_end_latency_seconds_bucket{le=\"0.25\"} 99\n\
        sluice_end_to_end_latency_seconds_bucket{le=\"+Inf\"} 100\n\
        sluice_events_written_total_extra 7\n";

    #[test]
    fn metrics_are_read_by_exact_name_and_summed() {
        assert_eq!(metric(TEXT, "sluice_events_written_total"), 120.0);
        let two = format!("{TEXT}{TEXT}");
        assert_eq!(metric(&two, "sluice_events_written_total"), 240.0);
    }

    #[test]
    fn histogram_quantiles_are_bucket_bounds() {
        let b = buckets(&format!("{TEXT}{TEXT}"));
        assert_eq!(b, vec![(0.1, 100.0), (0.25, 198.0), (f64::INFINITY, 200.0)]);
        assert_eq!(quantile(&b, 0.5), Some(0.1));
        assert_eq!(quantile(&b, 0.99), Some(0.25));
        assert_eq!(quantile(&[], 0.5), None);
        let d = delta(&buckets(TEXT), &b);
        assert_eq!(d, vec![(0.1, 50.0), (0.25, 99.0), (f64::INFINITY, 100.0)]);
    }
}
