//! `report.png`: the reward and its component means as bars (left), latency p50/p95 (right);
//! and the comparison of several reports (training stages) as grouped bars.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::report::Report;

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("plot: {e}")
}

/// Draws one vertical bar chart into `area`.
fn bars(area: &DrawingArea<BitMapBackend, plotters::coord::Shift>, title: &str, bars: &[(String, f64)], y_max: f64, with_text: bool) -> Result<()> {
    let n = bars.len().max(1);
    let mut builder = ChartBuilder::on(area);
    builder.margin(16);
    if with_text {
        builder.caption(title, ("sans-serif", 20)).x_label_area_size(36).y_label_area_size(48);
    }
    let mut chart = builder.build_cartesian_2d(0f64..n as f64, 0f64..y_max).map_err(err)?;
    let mut mesh = chart.configure_mesh();
    mesh.disable_x_mesh().x_labels(0);
    if with_text {
        mesh.label_style(("sans-serif", 13));
    } else {
        mesh.y_labels(0);
    }
    mesh.draw().map_err(err)?;
    for (i, (label, value)) in bars.iter().enumerate() {
        let x = i as f64;
        let color = Palette99::pick(i).to_rgba();
        chart.draw_series(std::iter::once(Rectangle::new([(x + 0.15, 0.0), (x + 0.85, value.max(0.0))], color.filled()))).map_err(err)?;
        if with_text {
            let style = TextStyle::from(("sans-serif", 13).into_font())
                .pos(plotters::style::text_anchor::Pos::new(plotters::style::text_anchor::HPos::Center, plotters::style::text_anchor::VPos::Bottom));
            chart
                .draw_series(std::iter::once(Text::new(format!("{label} {value:.3}"), (x + 0.5, value.max(0.0) + y_max * 0.01), style)))
                .map_err(err)?;
        }
    }
    Ok(())
}

pub fn plot_report(report: &Report, path: &Path) -> Result<()> {
    let with_text = sigmaforge_plot::register_font();
    let root = BitMapBackend::new(path, (1400, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(900);

    let mut reward_bars = vec![(format!("reward (max {:.2})", report.max_reward), report.mean_reward)];
    reward_bars.extend(report.ordered_components().into_iter().map(|(k, v)| (k.to_string(), v)));
    let y_max = reward_bars.iter().map(|(_, v)| *v).fold(report.max_reward.max(1.0), f64::max) * 1.1;
    let title = format!("{} — {} samples, {} failed", report.model, report.samples, report.failed);
    bars(&left, &title, &reward_bars, y_max, with_text)?;

    let latency = vec![("p50 s".to_string(), report.latency_p50_s.unwrap_or(0.0)), ("p95 s".to_string(), report.latency_p95_s.unwrap_or(0.0))];
    let l_max = latency.iter().map(|(_, v)| *v).fold(0.0, f64::max).max(1e-3) * 1.2;
    bars(&right, "latency (answered samples)", &latency, l_max, with_text)?;
    root.present().map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

/// "100 tasks each", or each report's count in order ("100 / 300 / 300 tasks") when they differ.
fn task_counts(reports: &[Report]) -> String {
    match reports.first() {
        Some(first) if reports.iter().all(|r| r.samples == first.samples) => format!("{} tasks each", first.samples),
        _ => format!("{} tasks", reports.iter().map(|r| r.samples.to_string()).collect::<Vec<_>>().join(" / ")),
    }
}

/// Several reports side by side (e.g. base → SFT → GRPO): for the reward and each component, one
/// bar per report, in the order given; the reward bars carry their 95 % bootstrap interval.
pub fn plot_comparison(reports: &[Report], path: &Path) -> Result<()> {
    let with_text = sigmaforge_plot::register_font();
    let Some(first) = reports.first() else { return Err(anyhow!("no reports to plot")) };
    let mut groups: Vec<String> = vec!["reward".into()];
    groups.extend(first.ordered_components().into_iter().map(|(k, _)| k.to_string()));
    let value = |r: &Report, g: &str| if g == "reward" { r.mean_reward } else { r.components.get(g).copied().unwrap_or(0.0) };
    let y_max = reports.iter().map(|r| r.reward_ci95.map_or(r.mean_reward, |c| c[1]).max(r.max_reward)).fold(1.0, f64::max) * 1.1;
    let root = BitMapBackend::new(path, (320 * groups.len() as u32 + 200, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(16);
    if with_text {
        let title = format!("{} — {} split, {}", first.plugin, first.split, task_counts(reports));
        builder.caption(title, ("sans-serif", 22)).x_label_area_size(40).y_label_area_size(48);
    }
    let mut chart = builder.build_cartesian_2d(0f64..groups.len() as f64, 0f64..y_max).map_err(err)?;
    let mut mesh = chart.configure_mesh();
    mesh.disable_x_mesh().x_labels(0);
    if with_text {
        mesh.label_style(("sans-serif", 13));
    } else {
        mesh.y_labels(0);
    }
    mesh.draw().map_err(err)?;
    let width = 0.8 / reports.len() as f64;
    for (ri, r) in reports.iter().enumerate() {
        let color = Palette99::pick(ri).to_rgba();
        for (gi, g) in groups.iter().enumerate() {
            let x0 = gi as f64 + 0.1 + ri as f64 * width;
            let v = value(r, g).max(0.0);
            let bar = chart.draw_series(std::iter::once(Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], color.filled()))).map_err(err)?;
            if gi == 0 && with_text {
                bar.label(r.model.clone()).legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
            }
            if g == "reward"
                && let Some([lo, hi]) = r.reward_ci95
            {
                let xm = x0 + width * 0.45;
                chart.draw_series(std::iter::once(PathElement::new(vec![(xm, lo), (xm, hi)], BLACK.stroke_width(2)))).map_err(err)?;
            }
            if with_text {
                let style = TextStyle::from(("sans-serif", 12).into_font()).pos(plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Bottom,
                ));
                let top = if g == "reward" { r.reward_ci95.map_or(v, |c| c[1].max(v)) } else { v };
                chart.draw_series(std::iter::once(Text::new(format!("{v:.2}"), (x0 + width * 0.45, top + y_max * 0.01), style))).map_err(err)?;
            }
        }
    }
    if with_text {
        for (gi, g) in groups.iter().enumerate() {
            let style = TextStyle::from(("sans-serif", 15).into_font())
                .pos(plotters::style::text_anchor::Pos::new(plotters::style::text_anchor::HPos::Center, plotters::style::text_anchor::VPos::Top));
            chart.draw_series(std::iter::once(Text::new(g.clone(), (gi as f64 + 0.5, 0.0), style))).map_err(err)?;
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).label_font(("sans-serif", 14)).draw().map_err(err)?;
    }
    root.present().map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}
