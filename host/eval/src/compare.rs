//! Several reports as one Markdown table, models as rows (the layout of the reference work's
//! tables: reward, YAML valid, logsource accuracy, IoU, perfect rules, latency, cost).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::report::{Report, opt};

/// Reads a `report.json`, or the `report.json` inside a directory.
pub fn load_report(path: &Path) -> Result<Report> {
    let file: PathBuf = if path.is_dir() { path.join("report.json") } else { path.to_path_buf() };
    let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read report {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a sigmaforge eval report.json", file.display()))
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |x| format!("{:.1}%", 100.0 * x))
}

fn cost(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |x| format!("${x:.5}"))
}

/// The comparison table. A "Tool calls" column appears when any report offered tools.
pub fn markdown_table(reports: &[Report]) -> String {
    let with_tools = reports.iter().any(|r| r.tools.is_some());
    let mut md = String::from(
        "| Model | Reward | Reward 95% CI | YAML valid | Logsource acc. | IoU | Perfect | p50 latency (s) | p95 latency (s) | Cost/query | Samples | Failed |",
    );
    md.push_str(if with_tools { " Tool calls |\n" } else { "\n" });
    md.push_str("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    md.push_str(if with_tools { "---:|\n" } else { "\n" });
    for r in reports {
        md.push_str(&format!(
            "| {} | {:.3} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.model.replace('|', "\\|"),
            r.mean_reward,
            r.reward_ci95.map_or_else(|| "—".to_string(), |[lo, hi]| format!("[{lo:.3}, {hi:.3}]")),
            pct(r.yaml_valid_rate),
            pct(r.logsource_accuracy),
            opt(r.mean_iou, 3),
            pct(r.perfect_share),
            opt(r.latency_p50_s, 2),
            opt(r.latency_p95_s, 2),
            cost(r.cost_per_query_usd),
            r.samples,
            r.failed
        ));
        if with_tools {
            md.push_str(&format!(" {} |", r.tools.as_ref().map_or_else(|| "—".to_string(), |t| pct(Some(t.tool_call_share)))));
        }
        md.push('\n');
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prices::Prices;
    use crate::report::{ReportContext, tests_support};

    #[test]
    fn table_has_one_row_per_model_and_formats_rates() {
        let comps = tests_support::sigma_components();
        let ctx = |model: &'static str, prices| ReportContext {
            model,
            policy: "p",
            plugin: "sigma",
            split: "test",
            started_at: String::new(),
            duration_s: 0.0,
            components: &comps,
            prices,
            tools: None,
            paraphrase: None,
        };
        let a = Report::from_samples(
            &ctx("gpt-x", Some(Prices { input: 1.0, output: 1.0 })),
            &[
                tests_support::sample("t1", 1.0, 1.0, 1.0, 1.5, (500, 500), false, 0),
                tests_support::sample("t2", 1.0, 0.0, 0.0, 2.5, (500, 500), false, 0),
            ],
        );
        let b = Report::from_samples(&ctx("small|model", None), &[tests_support::sample("t1", 0.0, 0.0, 0.0, 0.2, (1, 1), true, 0)]);
        let md = markdown_table(&[a.clone(), b]);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines.len(), 4, "{md}");
        assert!(!lines[0].contains("Tool calls"));
        let [lo, hi] = a.reward_ci95.expect("two samples have an interval");
        assert!(lo <= a.mean_reward && a.mean_reward <= hi, "[{lo}, {hi}]");
        assert_eq!(lines[2], format!("| gpt-x | 0.600 | [{lo:.3}, {hi:.3}] | 100.0% | 50.0% | 0.500 | 50.0% | 2.00 | 2.45 | $0.00100 | 2 | 0 |"));
        assert_eq!(lines[3], "| small\\|model | 0.000 | — | 0.0% | 0.0% | 0.000 | 0.0% | n/a | n/a | n/a | 1 | 1 |");

        let dir = std::env::temp_dir().join(format!("sf-eval-compare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("report.json"), serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(load_report(&dir).unwrap(), a);
        std::fs::write(dir.join("bad.json"), "{}").unwrap();
        let e = format!("{:#}", load_report(&dir.join("bad.json")).unwrap_err());
        assert!(e.contains("bad.json is not a sigmaforge eval report.json"), "{e}");
        assert!(load_report(&dir.join("missing.json")).is_err());
    }
}
