//! Token prices, in USD per million tokens, for the cost columns.
//!
//! From `--price-in/--price-out`, or a prices YAML mapping model names to prices:
//! ```yaml
//! gpt-4o: { input: 2.50, output: 10.00 }
//! Qwen/Qwen3-0.6B: { input: 0, output: 0 }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::policy::Usage;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// USD per million input (prompt) tokens.
    pub input: f64,
    /// USD per million output (completion) tokens.
    pub output: f64,
}

impl Prices {
    pub fn new(input: f64, output: f64) -> Result<Prices> {
        for (name, v) in [("input", input), ("output", output)] {
            if !(v.is_finite() && v >= 0.0) {
                bail!("the {name} price must be a number >= 0 (USD per million tokens), got {v}");
            }
        }
        Ok(Prices { input, output })
    }

    /// USD for this usage.
    pub fn cost(&self, usage: Usage) -> f64 {
        (usage.tokens_in as f64 * self.input + usage.tokens_out as f64 * self.output) / 1e6
    }

    /// The entry for `model` in a prices YAML file.
    pub fn from_file(path: &Path, model: &str) -> Result<Prices> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read prices file {}", path.display()))?;
        let table: BTreeMap<String, Prices> = serde_norway::from_str(&text)
            .with_context(|| format!("prices file {}: expected `<model>: {{input: USD_PER_MTOK, output: USD_PER_MTOK}}` entries", path.display()))?;
        match table.get(model) {
            Some(p) => Prices::new(p.input, p.output).with_context(|| format!("prices file {}, model `{model}`", path.display())),
            None => bail!(
                "prices file {} has no entry for model `{model}` (it has: {})",
                path.display(),
                table.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_per_million_tokens() {
        let p = Prices::new(2.5, 10.0).unwrap();
        let c = p.cost(Usage { tokens_in: 1_000, tokens_out: 200 });
        assert!((c - (0.0025 + 0.002)).abs() < 1e-15, "{c}");
        assert!(Prices::new(-1.0, 0.0).is_err());
    }

    #[test]
    fn prices_file_lookup_names_missing_models() {
        let dir = std::env::temp_dir().join(format!("sf-eval-prices-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("prices.yaml");
        std::fs::write(&f, "gpt-4o: { input: 2.5, output: 10 }\nlocal/qwen: {input: 0, output: 0}\n").unwrap();
        assert_eq!(Prices::from_file(&f, "gpt-4o").unwrap(), Prices { input: 2.5, output: 10.0 });
        let e = format!("{:#}", Prices::from_file(&f, "gpt-5").unwrap_err());
        assert!(e.contains("no entry for model `gpt-5`") && e.contains("gpt-4o"), "{e}");
        std::fs::write(&f, "gpt-4o: { input: 2.5 }\n").unwrap();
        assert!(Prices::from_file(&f, "gpt-4o").is_err());
    }
}
