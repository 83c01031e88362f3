//! The eval's output directory: `report.json`, `report.md`, `report.png`, `completions.jsonl`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::report::{Report, SampleRecord};

pub const REPORT_JSON: &str = "report.json";
pub const REPORT_MD: &str = "report.md";
pub const REPORT_PNG: &str = "report.png";
pub const COMPLETIONS: &str = "completions.jsonl";

/// `evals/<model>-<UTC stamp>`, the model name made safe for a file name.
pub fn default_out_dir(model: &str) -> PathBuf {
    let safe: String = model.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
    PathBuf::from("evals").join(format!("{safe}-{}", utc_stamp()))
}

/// Writes every file; the PNG last, so a plotting problem never costs the numbers.
pub fn write_all(dir: &Path, report: &Report, samples: &[SampleRecord]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the output directory {}", dir.display()))?;
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
    };
    write(REPORT_JSON, serde_json::to_string_pretty(report)?.as_bytes())?;
    write(REPORT_MD, report.to_markdown().as_bytes())?;
    let mut jsonl = Vec::new();
    for s in samples {
        serde_json::to_writer(&mut jsonl, s)?;
        jsonl.write_all(b"\n")?;
    }
    write(COMPLETIONS, &jsonl)?;
    crate::plot::plot_report(report, &dir.join(REPORT_PNG))
}

/// `YYYY-MM-DDTHH:MM:SSZ`, now.
pub fn utc_timestamp() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `YYYYMMDD-HHMMSS`, for directory names.
fn utc_stamp() -> String {
    chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_directory_names() {
        let t = utc_timestamp();
        assert!(t.len() == 20 && t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
        let d = default_out_dir("Qwen/Qwen3 0.6B");
        let name = d.file_name().unwrap().to_str().unwrap();
        assert!(d.starts_with("evals") && name.starts_with("Qwen_Qwen3_0.6B-"), "{}", d.display());
    }

    #[test]
    fn writes_every_file() {
        use crate::report::ReportContext;
        use crate::report::tests_support::{sample, sigma_components};
        let comps = sigma_components();
        let ctx = ReportContext {
            model: "m",
            policy: "p",
            plugin: "sigma",
            split: "test",
            started_at: utc_timestamp(),
            duration_s: 1.0,
            components: &comps,
            prices: None,
            tools: None,
            paraphrase: None,
        };
        let samples = vec![sample("a", 1.0, 1.0, 0.5, 0.3, (1, 2), false, 0), sample("b", 0.0, 0.0, 0.0, 0.0, (0, 0), true, 0)];
        let report = Report::from_samples(&ctx, &samples);
        let dir = std::env::temp_dir().join(format!("sf-eval-output-{}", std::process::id())).join("nested");
        write_all(&dir, &report, &samples).unwrap();
        let back: Report = serde_json::from_str(&std::fs::read_to_string(dir.join(REPORT_JSON)).unwrap()).unwrap();
        assert_eq!(back, report);
        assert!(std::fs::read_to_string(dir.join(REPORT_MD)).unwrap().contains("| m | 0.375 |"));
        let lines: Vec<SampleRecord> =
            std::fs::read_to_string(dir.join(COMPLETIONS)).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines, samples);
        let png = std::fs::read(dir.join(REPORT_PNG)).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 1000);
    }
}
