//! Line-chart grids and the plot font, shared by the trainer's `metrics.png` and eval's report
//! plots (so that eval needs nothing from the trainer to draw).
//!
//! Library choice: `plotters` with the bitmap backend only; text is drawn with `ab_glyph` from a
//! system font found at run time, which avoids pulling in fontconfig and its C libraries.

use std::fs;
use std::path::Path;

use anyhow::Result;

/// System fonts tried for the plot's text, in order ($SIGMAFORGE_PLOT_FONT first). Without
/// any, the plot is drawn without text.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Registers the first usable system font as plotters' "sans-serif" (once per process); false
/// when none is found, and plots are then drawn without text.
pub fn register_font() -> bool {
    use std::sync::OnceLock;
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let env = std::env::var("SIGMAFORGE_PLOT_FONT").ok();
        for path in env.iter().map(String::as_str).chain(FONT_CANDIDATES.iter().copied()) {
            if let Ok(bytes) = fs::read(path) {
                // plotters keeps registered fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// One panel of a plot: its title and its named series (one value per step).
pub type Panel<'a> = (&'a str, Vec<(String, Vec<f64>)>);

/// Draws `panels` in a `grid` (rows, columns) of line charts over `steps` into a PNG of `size`
/// pixels; non-finite values are left out of a line.
pub fn plot_panels(steps: &[f64], panels: &[Panel<'_>], grid: (usize, usize), size: (u32, u32), path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let with_text = register_font();
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    let areas = root.split_evenly(grid);
    let (x0, x1) = (steps.first().copied().unwrap_or(0.0), steps.last().copied().unwrap_or(1.0).max(steps.first().copied().unwrap_or(0.0) + 1.0));
    for (area, (title, series)) in areas.iter().zip(panels) {
        let all: Vec<f64> = series.iter().flat_map(|(_, v)| v.iter().copied()).filter(|v| v.is_finite()).collect();
        let (mut y0, mut y1) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        if !y0.is_finite() {
            (y0, y1) = (0.0, 1.0);
        }
        if (y1 - y0).abs() < 1e-12 {
            y0 -= 0.5;
            y1 += 0.5;
        }
        let pad = (y1 - y0) * 0.05;
        let mut builder = ChartBuilder::on(area);
        builder.margin(10);
        if with_text {
            builder.caption(*title, ("sans-serif", 18)).x_label_area_size(28).y_label_area_size(52);
        }
        let mut chart = builder.build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad)).map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        let mut mesh = chart.configure_mesh();
        if with_text {
            mesh.x_desc("step").label_style(("sans-serif", 12));
        } else {
            mesh.disable_x_mesh().disable_y_mesh().x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        for (i, (name, values)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points: Vec<(f64, f64)> = steps.iter().copied().zip(values.iter().copied()).filter(|(_, v)| v.is_finite()).collect();
            let drawn = chart.draw_series(LineSeries::new(points, color.stroke_width(2))).map_err(|e| anyhow::anyhow!("plot: {e}"))?;
            if with_text && series.len() > 1 {
                drawn.label(name.as_str()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            }
        }
        if with_text && series.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 12))
                .draw()
                .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        }
    }
    root.present().map_err(|e| anyhow::anyhow!("cannot write plot {}: {e}", path.display()))?;
    Ok(())
}
