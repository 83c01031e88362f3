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

fn civil(secs: u64) -> (i64, u32, u32, u64) {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_timestamp() -> String {
    format_timestamp(now_secs())
}

fn format_timestamp(secs: u64) -> String {
    let (y, m, d, rem) = civil(secs);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `YYYYMMDD-HHMMSS`, for directory names.
fn utc_stamp() -> String {
    let (y, m, d, rem) = civil(now_secs());
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_directory_names() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00Z");
        // 2024-02-29T12:34:56Z (a leap day)
        assert_eq!(format_timestamp(1_709_210_096), "2024-02-29T12:34:56Z");
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
