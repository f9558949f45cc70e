//! The run's chart: throughput and end-to-end latency over time, as SVG.

use crate::metrics::{delta, quantile};
use crate::sampler::Sample;

/// An axis label: a whole number with thousands separators (`1,250,000`).
fn thousands(v: f64) -> String {
    use num_format::{Locale, ToFormattedString};
    (v.round() as i64).to_formatted_string(&Locale::en)
}

/// Throughput (accepted and stored events/s) and end-to-end latency (p50, p99 of each second)
/// over time, as SVG.
pub fn chart(path: &str, samples: &[Sample]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let mut thr: Vec<(f64, f64, f64)> = Vec::new();
    let mut lat: Vec<(f64, f64, f64)> = Vec::new();
    for w in samples.windows(2) {
        let dt = (w[1].t - w[0].t).max(1e-3);
        thr.push((
            w[1].t,
            (w[1].accepted - w[0].accepted) / dt,
            (w[1].written - w[0].written) / dt,
        ));
        let d = delta(&w[0].buckets, &w[1].buckets);
        if let (Some(a), Some(b)) = (quantile(&d, 0.5), quantile(&d, 0.99)) {
            if a.is_finite() && b.is_finite() {
                lat.push((w[1].t, a * 1000.0, b * 1000.0));
            }
        }
    }
    let t_max = samples.last().map_or(1.0, |s| s.t).max(1.0);
    let y_max = thr.iter().map(|(_, a, b)| a.max(*b)).fold(1.0, f64::max) * 1.1;
    let l_max = lat.iter().map(|(_, _, b)| *b).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (900, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(360);
    let mut c = ChartBuilder::on(&top)
        .caption("Throughput (events/s)", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
    c.configure_mesh()
        .x_desc("seconds")
        .y_label_formatter(&|v| thousands(*v))
        .draw()?;
    c.draw_series(LineSeries::new(thr.iter().map(|(t, a, _)| (*t, *a)), &BLUE))?
        .label("accepted")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    c.draw_series(LineSeries::new(thr.iter().map(|(t, _, s)| (*t, *s)), &RED))?
        .label("stored")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    c.configure_series_labels().border_style(BLACK).draw()?;
    let mut c = ChartBuilder::on(&bottom)
        .caption(
            "End-to-end latency, receive to commit (ms, per second)",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..l_max)?;
    c.configure_mesh()
        .x_desc("seconds")
        .y_label_formatter(&|v| thousands(*v))
        .draw()?;
    c.draw_series(LineSeries::new(
        lat.iter().map(|(t, p, _)| (*t, *p)),
        &GREEN,
    ))?
    .label("p50")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    c.draw_series(LineSeries::new(
        lat.iter().map(|(t, _, p)| (*t, *p)),
        &MAGENTA,
    ))?
    .label("p99")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], MAGENTA));
    c.configure_series_labels().border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels_carry_thousands_separators() {
        assert_eq!(thousands(1_250_000.4), "1,250,000");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(12_000.0), "12,000");
    }
}
