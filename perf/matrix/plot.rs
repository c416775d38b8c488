//! PNG charts for the perf matrix: throughput and CPU cost per record against record size.
//!
//! Drawn with `plotters` (pure Rust: bitmap backend, `ab_glyph` text). No font is bundled: the
//! first TrueType font found on the system is registered as "sans-serif" at run time, and
//! without one the charts are still written, only without any text.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// One line of a chart: a label and (record size in bytes, value) points.
pub struct Series {
    /// The legend entry.
    pub label: String,
    /// (record size in bytes, value) pairs, in any order.
    pub points: Vec<(f64, f64)>,
}

/// Image size in pixels.
const WIDTH: u32 = 1400;
const HEIGHT: u32 = 560;
/// Fonts tried first, before any other `*.ttf` under [`FONT_DIR`].
const PREFERRED_FONTS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
];
const FONT_DIR: &str = "/usr/share/fonts";
/// The family every text style below asks for.
const FAMILY: &str = "sans-serif";
/// Distinct colours for successive series (the same order in both charts).
const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Writes a PNG (about 1400x560) with two side-by-side charts sharing the x axis "record size (bytes)"
/// (categorical: one evenly spaced, labelled slot per distinct size, e.g. 100 and 1024):
/// left "throughput (M records/s)" from `throughput`, right "CPU µs per record" from `cpu`.
/// Each series is a coloured line with point markers and a legend. `title` goes on top.
pub fn write_png(
    path: &Path,
    title: &str,
    throughput: &[Series],
    cpu: &[Series],
) -> Result<(), String> {
    let text = font_registered();
    // The x axis is categorical: one evenly spaced slot per distinct record size.
    let mut sizes: Vec<f64> =
        throughput.iter().chain(cpu).flat_map(|s| s.points.iter().map(|p| p.0)).collect();
    sizes.sort_by(f64::total_cmp);
    sizes.dedup();

    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| format!("drawing {}: {e}", path.display()))?;
    let body = if text {
        root.margin(8, 0, 0, 0)
            .titled(title, (FAMILY, 24).into_font())
            .map_err(|e| format!("drawing the title of {}: {e}", path.display()))?
    } else {
        root.margin(20, 0, 0, 0)
    };
    let (left, right) = body.split_horizontally(WIDTH / 2);
    draw_chart(&left, "throughput (M records/s)", throughput, &sizes, text)
        .map_err(|e| format!("drawing the throughput chart of {}: {e}", path.display()))?;
    draw_chart(&right, "CPU µs per record", cpu, &sizes, text)
        .map_err(|e| format!("drawing the CPU chart of {}: {e}", path.display()))?;
    root.present().map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Draws one chart of `series` over the categorical record-size axis `sizes`.
fn draw_chart(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    y_desc: &str,
    series: &[Series],
    sizes: &[f64],
    text: bool,
) -> Result<(), String> {
    let slots = i32::try_from(sizes.len()).map_err(|_| "too many record sizes".to_string())?;
    let y_max = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0, f64::max);
    let y_max = if y_max > 0.0 && y_max.is_finite() { y_max * 1.15 } else { 1.0 };
    // Slot i (0-based) is sizes[i]; the empty slots -1 and `slots` pad either side.
    let slot_of = |size: f64| sizes.iter().position(|&s| s == size).map_or(0, |i| i as i32);

    let mut builder = ChartBuilder::on(area);
    builder.margin(16);
    if text {
        builder.caption(y_desc, (FAMILY, 20)).x_label_area_size(50).y_label_area_size(70);
    }
    let mut chart = builder
        .build_cartesian_2d((-1..slots.max(1)).with_key_points((0..slots).collect()), 0.0..y_max)
        .map_err(|e| e.to_string())?;

    let mut mesh = chart.configure_mesh();
    mesh.max_light_lines(1)
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(210, 210, 210));
    if text {
        let x_label = |x: &i32| label_of(sizes, *x);
        mesh.x_desc("record size (bytes)")
            .y_desc(y_desc)
            .x_label_formatter(&x_label)
            .y_labels(8)
            .label_style((FAMILY, 15))
            .axis_desc_style((FAMILY, 16))
            .draw()
            .map_err(|e| e.to_string())?;
    } else {
        // Axes carry tick labels, which need a font: draw the grid only.
        mesh.disable_x_axis().disable_y_axis().draw().map_err(|e| e.to_string())?;
    }

    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut points: Vec<(i32, f64)> = s.points.iter().map(|&(x, y)| (slot_of(x), y)).collect();
        points.sort_by_key(|p| p.0);
        let drawn = chart
            .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))
            .map_err(|e| e.to_string())?;
        if text {
            drawn.label(s.label.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        }
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled())))
            .map_err(|e| e.to_string())?;
    }

    if text && !series.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font((FAMILY, 15))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The tick label for categorical slot `x`: its record size, or nothing for the padding slots.
fn label_of(sizes: &[f64], x: i32) -> String {
    match usize::try_from(x).ok().and_then(|i| sizes.get(i)) {
        Some(size) if size.fract() == 0.0 => format!("{size:.0}"),
        Some(size) => format!("{size}"),
        None => String::new(),
    }
}

/// Registers a system TrueType font as "sans-serif" once per process; false if none loads.
fn font_registered() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let register = |path: &Path| {
            let Ok(bytes) = std::fs::read(path) else { return false };
            // plotters keeps fonts for the life of the process, so the bytes must be 'static.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            register_font(FAMILY, FontStyle::Normal, bytes).is_ok()
        };
        if PREFERRED_FONTS.iter().any(|p| register(Path::new(p))) {
            return true;
        }
        let mut found = Vec::new();
        find_ttf(Path::new(FONT_DIR), 0, &mut found);
        found.sort();
        found.iter().any(|p| register(p))
    })
}

/// Collects every `*.ttf` under `dir` (a bounded depth, so a symlink loop cannot hang us).
fn find_ttf(dir: &Path, depth: usize, found: &mut Vec<PathBuf>) {
    if depth > 8 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            find_ttf(&path, depth + 1, found);
        } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("ttf")) {
            found.push(path);
        }
    }
}
