//! The three plots of the report, drawn into PNG files: fan-out latency against viewers,
//! throughput per component (ours beside the peers'), stored bytes per line per data set
//! (against `zstd -3`). Each draws the median of the runs with a whisker from the
//! smallest to the largest run.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::input::{BytesPerLine, LatencyPoint, Spread, Throughput};

/// The family the font is registered under (`main`).
pub const FONT: &str = "sans-serif";

const OURS: RGBColor = RGBColor(31, 119, 180);
const PEER: RGBColor = RGBColor(150, 150, 150);
/// Colours of the systems of the latency plot, in order of first appearance, logstream
/// always the first.
const SYSTEM_COLORS: [RGBColor; 4] = [
    OURS,
    RGBColor(230, 115, 0),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// plotters' errors carry the backend's error type; the report only prints them.
fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing: {e:?}")
}

/// 1234567 -> "1.23M", 726046 -> "726k", 12.5 -> "12.5", 0.5 -> "0.5".
pub fn human(v: f64) -> String {
    let a = v.abs();
    let (x, suffix) = if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e4 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let ax = x.abs();
    let digits = if ax >= 100.0 || ax == ax.trunc() {
        0
    } else if ax >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{x:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    };
    format!("{s}{suffix}")
}

/// Writes the caption (machine, date, commit) in small grey type on the top strip and
/// returns the area below it.
fn with_caption<'a>(
    root: &DrawingArea<BitMapBackend<'a>, Shift>,
    title: &str,
    caption: &str,
) -> Result<DrawingArea<BitMapBackend<'a>, Shift>> {
    root.fill(&WHITE).map_err(err)?;
    let (top, rest) = root.split_vertically(58);
    top.draw_text(title, &(FONT, 22).into_font().color(&BLACK), (14, 8))
        .map_err(err)?;
    top.draw_text(
        caption,
        &(FONT, 14).into_font().color(&BLACK.mix(0.6)),
        (14, 36),
    )
    .map_err(err)?;
    Ok(rest)
}

/// The lines of the latency plot.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Percentile {
    P50,
    P99,
    Max,
}

impl Percentile {
    fn of(self, p: &LatencyPoint) -> Spread {
        match self {
            Percentile::P50 => p.p50,
            Percentile::P99 => p.p99,
            Percentile::Max => p.max,
        }
    }
}

/// Fan-out latency (p50, p99, max) against viewers, one panel per transport and rate,
/// log-log; a ringed point is one where a run lost lines or left viewers unconnected.
pub fn latency(points: &[LatencyPoint], caption: &str, out: &Path) -> Result<()> {
    let mut panels: Vec<(u32, String)> = points
        .iter()
        .map(|p| (p.rate, p.transport.clone()))
        .collect();
    panels.sort();
    panels.dedup();
    let mut systems: Vec<&str> = Vec::new();
    for p in points {
        if !systems.contains(&p.system.as_str()) {
            systems.push(&p.system);
        }
    }
    systems.sort_by_key(|s| *s != "logstream");
    let cols = panels.len().clamp(1, 2);
    let rows = panels.len().div_ceil(cols).max(1);
    let root = BitMapBackend::new(out, ((cols as u32 * 800).max(1000), rows as u32 * 600 + 58))
        .into_drawing_area();
    let area = with_caption(
        &root,
        "Fan-out: agent -> viewer latency against viewers of one deployment",
        caption,
    )?;
    for (panel, (rate, transport)) in area.split_evenly((rows, cols)).iter().zip(&panels) {
        let here: Vec<&LatencyPoint> = points
            .iter()
            .filter(|p| p.rate == *rate && &p.transport == transport)
            .collect();
        let vmin = here.iter().map(|p| p.viewers).min().unwrap_or(1).max(1) as f64;
        let vmax = here.iter().map(|p| p.viewers).max().unwrap_or(1).max(1) as f64;
        let lo = here
            .iter()
            .map(|p| p.p50.min)
            .fold(f64::INFINITY, f64::min)
            .max(0.01);
        let hi = here
            .iter()
            .map(|p| p.max.max)
            .fold(0.0, f64::max)
            .max(lo * 10.0);
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("{} at {rate} lines/s", transport.to_uppercase()),
                (FONT, 18),
            )
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(
                (vmin / 1.6..vmax * 1.6).log_scale(),
                (lo / 2.0..hi * 2.0).log_scale(),
            )
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("viewers of one deployment (log scale)")
            .y_desc("latency, ms (log scale)")
            .x_label_formatter(&|_| String::new())
            .y_label_formatter(&|v| human(*v))
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .light_line_style(BLACK.mix(0.04))
            .bold_line_style(BLACK.mix(0.12))
            .draw()
            .map_err(err)?;
        // The viewer counts measured, as the x labels (the axis' own would be 2000, 3000...).
        let mut counts: Vec<u32> = here.iter().map(|p| p.viewers).collect();
        counts.sort_unstable();
        counts.dedup();
        for v in counts {
            let (px, py) = chart.backend_coord(&(v as f64, lo / 2.0));
            root.draw(&Text::new(
                human(v as f64),
                (px, py + 6),
                (FONT, 14)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Top)),
            ))
            .map_err(err)?;
        }
        if lo / 2.0 < 1000.0 && 1000.0 < hi * 2.0 {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(vmin / 1.6, 1000.0), (vmax * 1.6, 1000.0)],
                    BLACK.mix(0.35).stroke_width(1),
                )))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    "1 s",
                    (vmin / 1.5, 1000.0),
                    (FONT, 13)
                        .into_font()
                        .color(&BLACK.mix(0.5))
                        .pos(Pos::new(HPos::Left, VPos::Bottom)),
                )))
                .map_err(err)?;
        }
        for (si, system) in systems.iter().enumerate() {
            let color = SYSTEM_COLORS[si % SYSTEM_COLORS.len()];
            let mut pts: Vec<&LatencyPoint> = here
                .iter()
                .copied()
                .filter(|p| p.system == *system)
                .collect();
            pts.sort_by_key(|p| p.viewers);
            if pts.is_empty() {
                continue;
            }
            for q in [Percentile::P50, Percentile::P99, Percentile::Max] {
                let get = |p: &LatencyPoint| q.of(p);
                let line: Vec<(f64, f64)> = pts
                    .iter()
                    .map(|p| (p.viewers as f64, get(p).median.max(lo / 2.0)))
                    .collect();
                let style = match q {
                    Percentile::P99 => color.stroke_width(3),
                    Percentile::P50 => color.mix(0.55).stroke_width(1),
                    Percentile::Max => color.mix(0.8).stroke_width(1),
                };
                let label = match q {
                    Percentile::P50 => format!("{system} p50"),
                    Percentile::P99 => format!("{system} p99"),
                    Percentile::Max => format!("{system} max (dashed)"),
                };
                if q == Percentile::Max {
                    chart
                        .draw_series(DashedLineSeries::new(line.clone(), 7, 5, style))
                        .map_err(err)?
                        .label(label)
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
                } else {
                    chart
                        .draw_series(LineSeries::new(line.clone(), style))
                        .map_err(err)?
                        .label(label)
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
                }
                let marker = if q == Percentile::P99 { 4 } else { 3 };
                chart
                    .draw_series(line.iter().map(|&c| Circle::new(c, marker, style.filled())))
                    .map_err(err)?;
                // The spread over runs.
                chart
                    .draw_series(pts.iter().filter(|p| get(p).min < get(p).max).map(|p| {
                        let s = get(p);
                        PathElement::new(
                            vec![
                                (p.viewers as f64, s.min.max(lo / 2.0)),
                                (p.viewers as f64, s.max),
                            ],
                            style,
                        )
                    }))
                    .map_err(err)?;
            }
            chart
                .draw_series(pts.iter().filter(|p| p.incomplete).map(|p| {
                    Circle::new(
                        (p.viewers as f64, p.p99.median.max(lo / 2.0)),
                        10,
                        RED.stroke_width(2),
                    )
                }))
                .map_err(err)?;
        }
        if here.iter().any(|p| p.incomplete) {
            chart
                .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
                .map_err(err)?
                .label("a run lost lines or viewers")
                .legend(|(x, y)| Circle::new((x + 11, y), 6, RED.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// A labelled row of the horizontal bar charts: one or more bars side by side.
struct Group {
    label: String,
    bars: Vec<Bar>,
}

struct Bar {
    value: Spread,
    color: RGBColor,
    /// Written after the bar's end.
    text: String,
}

/// Height in pixels of the plotting area for `groups`.
fn bars_height(groups: &[Group]) -> u32 {
    (group_tops(groups).0 * 22.0) as u32 + 70
}

/// Width in pixels of the labels on the left.
fn label_width(groups: &[Group]) -> u32 {
    groups
        .iter()
        .map(|g| g.label.chars().count() as u32)
        .max()
        .unwrap_or(10)
        * 8
        + 16
}

/// Space between two groups, in bar heights.
const GROUP_GAP: f64 = 0.5;

/// The y axis of the bar charts counts bars: each bar is one unit high, each group
/// `GROUP_GAP` more, the first group at the top. Returns the axis length and each group's
/// top.
fn group_tops(groups: &[Group]) -> (f64, Vec<f64>) {
    let total: f64 = groups.iter().map(|g| g.bars.len() as f64 + GROUP_GAP).sum();
    let mut top = total;
    let tops = groups
        .iter()
        .map(|g| {
            let t = top;
            top -= g.bars.len() as f64 + GROUP_GAP;
            t
        })
        .collect();
    (total, tops)
}

/// Draws the bars, their whiskers (smallest to largest run) and their texts on a chart
/// whose x axis starts at `x0` (`after(x)` is where a text goes after a bar ending at x),
/// and each group's label left of the plotting area on `root` (the chart's y axis has no
/// labels of its own: plotters cannot put a label per band on a continuous axis).
fn draw_bars<X>(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    chart: &mut ChartContext<'_, BitMapBackend<'_>, Cartesian2d<X, RangedCoordf64>>,
    groups: &[Group],
    x0: f64,
    after: impl Fn(f64) -> f64,
) -> Result<()>
where
    X: Ranged<ValueType = f64>,
{
    let (_, tops) = group_tops(groups);
    for (g, group_top) in groups.iter().zip(tops) {
        let top = group_top - GROUP_GAP / 2.0;
        let middle = top - g.bars.len() as f64 / 2.0;
        let (px, py) = chart.backend_coord(&(x0, middle));
        root.draw(&Text::new(
            g.label.clone(),
            (px - 10, py),
            (FONT, 14)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Right, VPos::Center)),
        ))
        .map_err(err)?;
        for (j, b) in g.bars.iter().enumerate() {
            let (y1, y0) = (top - j as f64, top - j as f64 - 1.0);
            let yc = (y0 + y1) / 2.0;
            let (h, inner) = (1.0, 0.1);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, y0 + inner), (b.value.median.max(x0), y1 - inner)],
                    b.color.filled(),
                )))
                .map_err(err)?;
            if b.value.min < b.value.max {
                let cap = h * 0.25;
                chart
                    .draw_series([
                        PathElement::new(
                            vec![(b.value.min.max(x0), yc), (b.value.max, yc)],
                            BLACK.stroke_width(1),
                        ),
                        PathElement::new(
                            vec![
                                (b.value.min.max(x0), yc - cap),
                                (b.value.min.max(x0), yc + cap),
                            ],
                            BLACK.stroke_width(1),
                        ),
                        PathElement::new(
                            vec![(b.value.max, yc - cap), (b.value.max, yc + cap)],
                            BLACK.stroke_width(1),
                        ),
                    ])
                    .map_err(err)?;
            }
            chart
                .draw_series(std::iter::once(Text::new(
                    b.text.clone(),
                    (after(b.value.max.max(b.value.median)), yc),
                    (FONT, 13)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Left, VPos::Center)),
                )))
                .map_err(err)?;
        }
    }
    Ok(())
}

/// Throughput per component, one panel per unit, log x: ours in blue, peers in grey.
pub fn throughput(rows: &[Throughput], caption: &str, out: &Path) -> Result<()> {
    let mut units: Vec<&str> = Vec::new();
    for r in rows {
        if !units.contains(&r.unit.as_str()) {
            units.push(&r.unit);
        }
    }
    let panels: Vec<(&str, Vec<Group>)> = units
        .iter()
        .map(|unit| {
            let mut groups: Vec<Group> = Vec::new();
            for r in rows.iter().filter(|r| r.unit == *unit) {
                let bar = Bar {
                    value: r.value,
                    color: if r.peer { PEER } else { OURS },
                    text: format!("{} {}", r.system, human(r.value.median)),
                };
                match groups.iter_mut().find(|g| g.label == r.component) {
                    Some(g) => g.bars.push(bar),
                    None => groups.push(Group {
                        label: r.component.clone(),
                        bars: vec![bar],
                    }),
                }
            }
            (*unit, groups)
        })
        .collect();
    let heights: Vec<u32> = panels.iter().map(|(_, g)| bars_height(g)).collect();
    let lw = panels
        .iter()
        .map(|(_, g)| label_width(g))
        .max()
        .unwrap_or(100);
    let root =
        BitMapBackend::new(out, (1400, heights.iter().sum::<u32>() + 58)).into_drawing_area();
    let mut rest = with_caption(
        &root,
        "Throughput per component: logstream (blue) and the peer measured in the same run (grey)",
        caption,
    )?;
    for ((unit, groups), h) in panels.iter().zip(&heights) {
        let (panel, below) = rest.split_vertically(*h);
        rest = below;
        let lo = groups
            .iter()
            .flat_map(|g| &g.bars)
            .map(|b| b.value.min)
            .fold(f64::INFINITY, f64::min)
            .max(1e-3);
        let hi = groups
            .iter()
            .flat_map(|g| &g.bars)
            .map(|b| b.value.max)
            .fold(0.0, f64::max);
        let x0 = 10f64.powf((lo / 2.0).log10().floor());
        let x1 = hi * 12.0;
        let mut chart = ChartBuilder::on(&panel)
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(lw)
            .build_cartesian_2d((x0..x1).log_scale(), 0.0..group_tops(groups).0)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_labels(6)
            .x_desc(format!(
                "{unit} (log scale; whiskers: smallest and largest run)"
            ))
            .x_label_formatter(&|v| human(*v))
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .light_line_style(BLACK.mix(0.04))
            .bold_line_style(BLACK.mix(0.12))
            .draw()
            .map_err(err)?;
        draw_bars(&root, &mut chart, groups, x0, |x| x * 1.12)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Stored bytes per line per data set: the store (blue) beside `zstd -3` of the raw file
/// (grey), linear x.
pub fn bytes_per_line(rows: &[BytesPerLine], caption: &str, out: &Path) -> Result<()> {
    let groups: Vec<Group> = rows
        .iter()
        .map(|r| Group {
            label: r.dataset.clone(),
            bars: vec![
                Bar {
                    value: r.store,
                    color: OURS,
                    text: format!("store {:.1}", r.store.median),
                },
                Bar {
                    value: r.zstd,
                    color: PEER,
                    text: format!("zstd -3 {:.1}", r.zstd.median),
                },
            ],
        })
        .collect();
    let h = bars_height(&groups);
    let root = BitMapBackend::new(out, (1200, h + 58)).into_drawing_area();
    let area = with_caption(
        &root,
        "Bytes per stored line per data set: logstream's store (blue) against zstd -3 of the raw file (grey)",
        caption,
    )?;
    let hi = rows
        .iter()
        .map(|r| r.store.max.max(r.zstd.max))
        .fold(0.0, f64::max)
        .max(1.0);
    let mut chart = ChartBuilder::on(&area)
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(label_width(&groups))
        .build_cartesian_2d(0.0..hi * 1.3, 0.0..group_tops(&groups).0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc("bytes per line on disk (segments + index; zstd level 3)")
        .x_label_formatter(&|v| human(*v))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(BLACK.mix(0.04))
        .bold_line_style(BLACK.mix(0.12))
        .draw()
        .map_err(err)?;
    draw_bars(&root, &mut chart, &groups, 0.0, |x| x + hi * 0.01)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_numbers_are_short() {
        assert_eq!(human(1_750_686.0), "1.75M");
        assert_eq!(human(726_046.0), "726k");
        assert_eq!(human(12_500.0), "12.5k");
        assert_eq!(human(5_000.0), "5000");
        assert_eq!(human(28.41), "28.4");
        assert_eq!(human(0.5), "0.5");
        assert_eq!(human(1000.0), "1000");
    }

    #[test]
    fn bar_groups_stack_from_the_top_one_unit_per_bar() {
        let g = |bars: usize| Group {
            label: String::new(),
            bars: (0..bars)
                .map(|_| Bar {
                    value: Spread {
                        median: 1.0,
                        min: 1.0,
                        max: 1.0,
                    },
                    color: OURS,
                    text: String::new(),
                })
                .collect(),
        };
        let (total, tops) = group_tops(&[g(2), g(5), g(1)]);
        assert_eq!(total, 9.5, "8 bars and 3 gaps");
        assert_eq!(tops, vec![9.5, 7.0, 1.5]);
    }
}
