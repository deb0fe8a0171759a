//! The SVG chart: arrivals, backlog and replicas over time, one line per policy.

use std::path::Path;

use plotters::prelude::*;

use super::model::Outcome;
use super::trace::Trace;

/// Points per line at most: longer runs are cut into buckets (arrivals averaged to a rate,
/// backlog and replicas at their bucket maximum so no peak is lost), which keeps a day-long
/// chart a few hundred kilobytes.
const MAX_POINTS: usize = 1200;

const ARRIVALS: RGBColor = RGBColor(90, 90, 90);
/// One colour per row (keda-default, keda-tuned, ebb, …, oracle).
const COLORS: [RGBColor; 6] = [
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(127, 127, 127),
];

pub fn write(path: &Path, trace: &Trace, outcomes: &[Outcome]) -> Result<(), Box<dyn std::error::Error>> {
    let len = trace.arrivals.len().max(1);
    let bucket = len.div_ceil(MAX_POINTS).max(1);
    // Hours for runs longer than 4 h, minutes otherwise.
    let (unit, per_unit) = if len > 4 * 3600 { ("hours", 3600.0) } else { ("minutes", 60.0) };
    let x_max = len as f64 / per_unit;
    let x = |i: usize| (i * bucket) as f64 / per_unit;

    let arrivals: Vec<(f64, f64)> = trace
        .arrivals
        .chunks(bucket)
        .enumerate()
        .map(|(i, c)| (x(i), c.iter().sum::<u64>() as f64 / c.len() as f64))
        .collect();
    let peaks = |v: &[f64]| -> Vec<(f64, f64)> {
        v.chunks(bucket).enumerate().map(|(i, c)| (x(i), c.iter().copied().fold(0.0, f64::max))).collect()
    };
    let backlogs: Vec<Vec<(f64, f64)>> =
        outcomes.iter().map(|o| peaks(&o.backlog.iter().map(|&b| b as f64).collect::<Vec<_>>())).collect();
    let replicas: Vec<Vec<(f64, f64)>> =
        outcomes.iter().map(|o| peaks(&o.replicas.iter().map(|&r| f64::from(r)).collect::<Vec<_>>())).collect();

    let root = SVGBackend::new(path, (1000, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&format!("ebb simulate: {} trace", trace.name), ("sans-serif", 20))?;
    let panels = root.split_evenly((3, 1));

    let y_top = |lines: &[Vec<(f64, f64)>]| {
        let m = lines.iter().flatten().map(|&(_, y)| y).fold(0.0, f64::max);
        if m > 0.0 { m * 1.08 } else { 1.0 }
    };
    let lines = [
        ("arrivals (msg/s)", vec![("arrivals".to_string(), ARRIVALS, arrivals)]),
        (
            "backlog (messages)",
            outcomes
                .iter()
                .zip(backlogs)
                .enumerate()
                .map(|(i, (o, l))| (o.policy.to_string(), COLORS[i % COLORS.len()], l))
                .collect(),
        ),
        (
            "replicas (spec.replicas)",
            outcomes
                .iter()
                .zip(replicas)
                .enumerate()
                .map(|(i, (o, l))| (o.policy.to_string(), COLORS[i % COLORS.len()], l))
                .collect(),
        ),
    ];
    for (panel, (title, series)) in panels.iter().zip(lines) {
        let top = y_top(&series.iter().map(|(_, _, l)| l.clone()).collect::<Vec<_>>());
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 15))
            .margin(8)
            .margin_right(24)
            .x_label_area_size(32)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..top)?;
        chart.configure_mesh().x_desc(unit).max_light_lines(0).draw()?;
        for (name, color, points) in series {
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.85)).draw()?;
    }
    root.present()?;
    Ok(())
}
