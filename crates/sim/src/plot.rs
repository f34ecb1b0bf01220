//! The sweep as a picture: throughput vs cluster size (left) and cache hit ratio vs cluster size
//! (right), one line per policy. And a lab bench's rows (`baton bench cache`) as bars: requests/s
//! (left) and hit ratio (right) per variant, one colour per requests-per-connection K.
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
/// Height of one bar's row in a bench plot, in pixels.
const BAR_ROW_PX: u32 = 30;

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
    render(path, HEIGHT, &Sweep { reports, title })
}

/// One measured row of a lab bench: a variant at one K.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchBar {
    pub variant: String,
    /// Requests per connection.
    pub k: usize,
    pub requests_per_sec: f64,
    pub hit_percent: f64,
}

/// Draws a lab bench's `rows` to `path`: requests/s and hit ratio per variant, one bar per row
/// (grouped by K, in the order given), coloured by K.
pub fn write_bench_plot(path: &Path, rows: &[BenchBar], title: &str) -> Result<(), PlotError> {
    if rows.is_empty() {
        return Err(PlotError {
            path: path.display().to_string(),
            message: "no rows to plot".into(),
        });
    }
    // Bars are laid out one per row, top to bottom: the picture grows with them.
    let height = (BAR_ROW_PX * rows.len() as u32 + 160).max(HEIGHT);
    render(path, height, &Bars { rows, title })
}

/// A picture, drawn on whichever backend the path asks for.
trait Picture {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

struct Sweep<'a> {
    reports: &'a [RunReport],
    title: &'a str,
}

impl Picture for Sweep<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        draw(root, self.reports, self.title)
    }
}

struct Bars<'a> {
    rows: &'a [BenchBar],
    title: &'a str,
}

impl Picture for Bars<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        draw_bars(root, self.rows, self.title)
    }
}

/// SVG for a `.svg` path, PNG otherwise.
fn render(path: &Path, height: u32, picture: &impl Picture) -> Result<(), PlotError> {
    register_font();
    let fail = |message: String| PlotError {
        path: path.display().to_string(),
        message,
    };
    let is_svg = path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("svg"));
    if is_svg {
        let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
        picture.draw(&root).map_err(fail)?;
        root.present().map_err(|e| fail(e.to_string()))
    } else {
        let root = BitMapBackend::new(path, (WIDTH, height)).into_drawing_area();
        picture.draw(&root).map_err(fail)?;
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

/// The bars' K values in order of first appearance (one colour each).
fn ks(rows: &[BenchBar]) -> Vec<usize> {
    let mut ks: Vec<usize> = Vec::new();
    for row in rows {
        if !ks.contains(&row.k) {
            ks.push(row.k);
        }
    }
    ks
}

fn draw_bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    rows: &[BenchBar],
    title: &str,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root.titled(title, (FONT, 22)).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(WIDTH / 2);
    let max_rps = rows
        .iter()
        .map(|r| r.requests_per_sec)
        .fold(0.0, f64::max)
        .max(1.0);
    bar_panel(
        &left,
        rows,
        "Throughput",
        "requests/s",
        max_rps * 1.15,
        |r| r.requests_per_sec,
        |v| format!("{v:.0}"),
    )?;
    bar_panel(
        &right,
        rows,
        "Cache hit ratio",
        "hit ratio (%)",
        100.0,
        |r| r.hit_percent,
        |v| format!("{v:.1}"),
    )
}

fn bar_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    rows: &[BenchBar],
    caption: &str,
    x_label: &str,
    x_max: f64,
    value: impl Fn(&BenchBar) -> f64,
    text: impl Fn(f64) -> String,
) -> Result<(), String> {
    let n = rows.len();
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 18))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(150)
        // An integer range counts its end as a value: 0..n - 1 is n segments (rows are never
        // empty here).
        .build_cartesian_2d(0.0..x_max, (0..n.saturating_sub(1)).into_segmented())
        .map_err(|e| e.to_string())?;
    // Row 0 at the top, as in the bench's table: segments count upwards, so name them backwards.
    let name = |segment: &SegmentValue<usize>| match segment {
        SegmentValue::CenterOf(i) if *i < n => {
            let row = &rows[n - 1 - i];
            format!("{} K={}", row.variant, row.k)
        }
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(x_label)
        .y_labels(n)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .light_line_style(RGBColor(238, 238, 238))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&name)
        .draw()
        .map_err(|e| e.to_string())?;
    for (index, k) in ks(rows).into_iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let bars: Vec<(usize, f64)> = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.k == k)
            .map(|(i, r)| (n - 1 - i, value(r).max(0.0)))
            .collect();
        chart
            .draw_series(
                Histogram::horizontal(&chart)
                    .style(color.filled())
                    .margin(4)
                    .data(bars.iter().copied()),
            )
            .map_err(|e| e.to_string())?
            .label(format!("K = {k}"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], color.filled()));
        chart
            .draw_series(bars.iter().map(|&(i, v)| {
                // Just right of the bar's end, centred on it (the text's anchor is its top left).
                EmptyElement::at((v, SegmentValue::CenterOf(i)))
                    + Text::new(text(v), (4, -6), (FONT, 12).into_font().color(&BLACK))
            }))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(variant: &str, k: usize, rps: f64, hit: f64) -> BenchBar {
        BenchBar {
            variant: variant.into(),
            k,
            requests_per_sec: rps,
            hit_percent: hit,
        }
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("baton-plot-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn bench_rows_become_bars_in_svg_and_png() {
        let rows = [
            bar("round-robin", 1, 1800.0, 56.3),
            bar("lard-r", 1, 3900.0, 71.5),
            bar("round-robin", 10, 4200.0, 55.0),
            bar("lard-r", 10, 4100.0, 58.2),
        ];
        assert_eq!(ks(&rows), [1, 10]);
        let dir = scratch("bars");
        let svg = dir.join("bench.svg");
        write_bench_plot(&svg, &rows, "cache bench").unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg"));
        for label in ["round-robin K=1", "lard-r K=10", "K = 10", "3900", "71.5"] {
            assert!(text.contains(label), "{label} is drawn");
        }
        let png = dir.join("bench.png");
        write_bench_plot(&png, &rows, "cache bench").unwrap();
        assert_eq!(&std::fs::read(&png).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
        assert!(write_bench_plot(&dir.join("none.png"), &[], "empty").is_err());
        assert!(
            write_bench_plot(&dir.join("no/such/dir.png"), &rows, "x").is_err(),
            "a file that cannot be written is an error"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
