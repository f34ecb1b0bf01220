//! The sweep as a picture: throughput vs cluster size (left) and cache hit ratio vs cluster size
//! (right), one line per policy.
//!
//! A path ending in `.svg` gets SVG (text left to the viewer's fonts); anything else gets PNG,
//! its text drawn with DejaVu Sans embedded in the binary (the `dejavu` crate) through
//! `ab_glyph`, so neither format needs fonts or font libraries on the machine.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use thiserror::Error;

use crate::engine::RunReport;

/// The family name the embedded font is registered under.
const FONT: &str = "sans-serif";
const WIDTH: u32 = 1400;
/// ColorBrewer's Set1 (distinct at a glance; no pale yellow on white), repeated if needed.
const COLORS: [RGBColor; 8] = [
    RGBColor(228, 26, 28),
    RGBColor(55, 126, 184),
    RGBColor(77, 175, 74),
    RGBColor(152, 78, 163),
    RGBColor(255, 127, 0),
    RGBColor(166, 86, 40),
    RGBColor(247, 129, 191),
    RGBColor(110, 110, 110),
];
const HEIGHT: u32 = 560;

/// Drawing failed (writing the file included).
#[derive(Debug, Error)]
#[error("plot {path}: {message}")]
pub struct PlotError {
    pub path: String,
    pub message: String,
}

fn register_font() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // DejaVu Sans is a valid TrueType font, so this cannot fail; if it somehow did, text
        // would be missing, which plotters reports as a drawing error below.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Draws `reports` (a sweep: several policies over several node counts) to `path`.
pub fn write_plot(path: &Path, reports: &[RunReport], title: &str) -> Result<(), PlotError> {
    register_font();
    let fail = |message: String| PlotError {
        path: path.display().to_string(),
        message,
    };
    let is_svg = path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("svg"));
    if is_svg {
        let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, reports, title).map_err(fail)?;
        root.present().map_err(|e| fail(e.to_string()))
    } else {
        let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, reports, title).map_err(fail)?;
        root.present().map_err(|e| fail(e.to_string()))
    }
}

/// The policies in order of first appearance, each with its runs sorted by node count.
fn series(reports: &[RunReport]) -> Vec<(&str, Vec<&RunReport>)> {
    let mut series: Vec<(&str, Vec<&RunReport>)> = Vec::new();
    for report in reports {
        match series.iter_mut().find(|(name, _)| *name == report.policy) {
            Some((_, runs)) => runs.push(report),
            None => series.push((&report.policy, vec![report])),
        }
    }
    for (_, runs) in &mut series {
        runs.sort_by_key(|run| run.nodes);
    }
    series
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    reports: &[RunReport],
    title: &str,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root.titled(title, (FONT, 22)).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(WIDTH / 2);
    let series = series(reports);
    let max_nodes = reports.iter().map(|r| r.nodes).max().unwrap_or(1) as f64;
    let max_rps = reports
        .iter()
        .map(|r| r.throughput_rps)
        .fold(0.0, f64::max)
        .max(1.0);
    panel(
        &left,
        &series,
        "Throughput",
        "requests/s",
        max_nodes,
        0.0..max_rps * 1.08,
        |r| r.throughput_rps,
    )?;
    // Hit ratios sit in a narrow band near the top: start the axis a little below the lowest.
    let min_hit = reports
        .iter()
        .map(|r| r.hit_ratio * 100.0)
        .fold(100.0, f64::min);
    let hit_floor = ((min_hit - 5.0) / 10.0).floor().clamp(0.0, 9.0) * 10.0;
    panel(
        &right,
        &series,
        "Cache hit ratio",
        "hit ratio (%)",
        max_nodes,
        hit_floor..100.5,
        |r| r.hit_ratio * 100.0,
    )
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    series: &[(&str, Vec<&RunReport>)],
    caption: &str,
    y_label: &str,
    max_nodes: f64,
    y_range: std::ops::Range<f64>,
    value: impl Fn(&RunReport) -> f64,
) -> Result<(), String> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 18))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(0.0..max_nodes + 0.5, y_range)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("nodes")
        .y_desc(y_label)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .light_line_style(RGBColor(238, 238, 238))
        // Node counts are whole: label only the ticks that fall on one.
        .x_label_formatter(&|x| {
            if x.fract() == 0.0 {
                format!("{x:.0}")
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(|e| e.to_string())?;
    for (index, (name, runs)) in series.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let points: Vec<(f64, f64)> = runs.iter().map(|r| (r.nodes as f64, value(r))).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|point| Circle::new(point, 4, color.filled())),
            )
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| e.to_string())
}
