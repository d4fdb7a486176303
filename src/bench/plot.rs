//! Plots of a benchmark run (plotters): latency distributions (empirical CDFs of TTFT, TPOT, ITL and E2EL)
//! and, for a concurrency sweep, output throughput and median TPOT against concurrency. Each plot is
//! written as SVG and PNG; text uses the bundled DejaVu Sans (PNG rendering needs a font file, and the
//! server must not depend on the host's fonts).

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::stats::Summary;

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const SIZE: (u32, u32) = (1200, 800);

type PlotResult<T> = Result<T, Box<dyn std::error::Error>>;

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bundled font is valid; a failure would only lose text, never the run.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Writes `{stem}.svg` and `{stem}.png` in `dir` with the latency CDFs of one run; returns the paths.
pub fn latency(dir: &Path, stem: &str, summary: &Summary) -> PlotResult<Vec<PathBuf>> {
    register_font();
    let title = format!(
        "Latency distributions (concurrency {})",
        summary
            .max_concurrency
            .map_or_else(|| "unbounded".to_owned(), |c| c.to_string())
    );
    let panels = [
        ("TTFT", &summary.samples.ttft_ms),
        ("TPOT", &summary.samples.tpot_ms),
        ("ITL", &summary.samples.itl_ms),
        ("E2EL", &summary.samples.e2el_ms),
    ];
    write_both(
        dir,
        stem,
        |root| draw_latency(root, &title, &panels),
        |root| draw_latency(root, &title, &panels),
    )
}

fn draw_latency<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    panels: &[(&str, &Vec<f64>); 4],
) -> PlotResult<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 28))?;
    for (area, (name, values)) in root.split_evenly((2, 2)).iter().zip(panels) {
        cdf(area, name, values)?;
    }
    root.present()?;
    Ok(())
}

/// Writes `{stem}.svg` and `{stem}.png` with throughput and median TPOT against concurrency.
pub fn sweep(dir: &Path, stem: &str, summaries: &[Summary]) -> PlotResult<Vec<PathBuf>> {
    register_font();
    let points: Vec<(f64, f64, f64)> = summaries
        .iter()
        .filter_map(|s| {
            s.max_concurrency
                .map(|c| (c as f64, s.output_throughput, s.tpot.median_ms))
        })
        .collect();
    write_both(
        dir,
        stem,
        |root| draw_sweep(root, &points),
        |root| draw_sweep(root, &points),
    )
}

fn draw_sweep<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    points: &[(f64, f64, f64)],
) -> PlotResult<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let root = root.titled("Concurrency sweep", ("sans-serif", 28))?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    let throughput: Vec<(f64, f64)> = points.iter().map(|p| (p.0, p.1)).collect();
    let tpot: Vec<(f64, f64)> = points.iter().map(|p| (p.0, p.2)).collect();
    series(&left, "Output throughput", "tokens/s", &throughput)?;
    series(&right, "Median TPOT", "ms", &tpot)?;
    root.present()?;
    Ok(())
}

/// Renders the same figure to SVG and to PNG.
fn write_both(
    dir: &Path,
    stem: &str,
    svg: impl FnOnce(DrawingArea<SVGBackend<'_>, Shift>) -> PlotResult<()>,
    png: impl FnOnce(DrawingArea<BitMapBackend<'_>, Shift>) -> PlotResult<()>,
) -> PlotResult<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let svg_path = dir.join(format!("{stem}.svg"));
    let png_path = dir.join(format!("{stem}.png"));
    svg(SVGBackend::new(&svg_path, SIZE).into_drawing_area())?;
    png(BitMapBackend::new(&png_path, SIZE).into_drawing_area())?;
    Ok(vec![svg_path, png_path])
}

/// One empirical CDF panel (milliseconds on x, fraction of samples on y).
fn cdf<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    name: &str,
    values: &[f64],
) -> PlotResult<()>
where
    DB::ErrorType: 'static,
{
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let max = sorted.last().copied().unwrap_or(1.0).max(1e-3) * 1.05;
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{name} (n = {})", sorted.len()), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max, 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc("ms")
        .y_desc("fraction ≤ x")
        .label_style(("sans-serif", 14))
        .draw()?;
    let n = sorted.len().max(1) as f64;
    chart.draw_series(LineSeries::new(
        sorted
            .iter()
            .enumerate()
            .map(|(i, &v)| (v, (i + 1) as f64 / n)),
        &BLUE,
    ))?;
    Ok(())
}

/// One line-with-points panel over concurrency.
fn series<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    name: &str,
    unit: &str,
    points: &[(f64, f64)],
) -> PlotResult<()>
where
    DB::ErrorType: 'static,
{
    let x_max = points.iter().map(|p| p.0).fold(1.0, f64::max) * 1.1;
    let y_max = points.iter().map(|p| p.1).fold(1e-3, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(name, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("concurrent requests")
        .y_desc(unit)
        .label_style(("sans-serif", 14))
        .draw()?;
    chart.draw_series(LineSeries::new(points.iter().copied(), &RED))?;
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, RED.filled())))?;
    Ok(())
}
