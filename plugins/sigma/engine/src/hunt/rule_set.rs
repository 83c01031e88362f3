//! The rules of a hunt: detection rules, correlations and filters, loaded the way `check` judges
//! them, with each Sigma filter applied to the rules it names.

use std::collections::HashSet;

use crate::check::{CheckedFile, check_text, keep_valid};
use crate::detection::compile::CompileOptions;
use crate::rule::{Correlation, Document, Filter, Rule, apply_filter};

/// A detection rule and the file it came from (as the user named it).
#[derive(Clone, Debug)]
pub struct LoadedRule {
    pub file: String,
    pub rule: Rule,
}

#[derive(Clone, Debug)]
pub struct LoadedCorrelation {
    pub file: String,
    pub correlation: Correlation,
}

/// The rules of a hunt, with Sigma filters already applied to the rules they name.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    pub rules: Vec<LoadedRule>,
    pub correlations: Vec<LoadedCorrelation>,
    pub filters: Vec<(String, Filter)>,
    /// Problems that stopped a rule from loading, as `file:line:col: error: message`.
    pub errors: Vec<String>,
    /// Rule files with at least one document that failed to load.
    pub failed_files: usize,
}

impl RuleSet {
    /// Loads checked files (see [`crate::check`]) the way `check` judges them: a document
    /// `check` reports an error for (in its file, or across files: a duplicate id, a correlation
    /// cycle) is left out with that error, everything else loads; then filters are applied.
    pub fn from_checked(mut files: Vec<CheckedFile>) -> RuleSet {
        let across = keep_valid(&mut files);
        let mut set = RuleSet::default();
        let mut failed: HashSet<String> = HashSet::new();
        for f in files {
            if f.parsed.has_errors() {
                failed.insert(f.origin.clone());
            }
            set.add_parsed(f.parsed, &f.origin);
        }
        for d in across.iter().filter(|d| d.is_error()) {
            if failed.insert(d.origin.clone()) {
                set.failed_files += 1;
            }
            set.errors.push(d.to_string());
        }
        set.apply_filters();
        set
    }

    /// Adds the documents of one rule file, checked on its own ([`check_text`]; cross-file
    /// checks need [`RuleSet::from_checked`]). Documents with errors are left out and their
    /// errors recorded; the others load. Call [`RuleSet::apply_filters`] after the last file.
    pub fn add_file(&mut self, text: &str, file: &str) {
        self.add_parsed(check_text(text, file, &CompileOptions::default()).parsed, file);
    }

    /// Like [`RuleSet::add_file`] for a file parsed elsewhere.
    pub fn add_parsed(&mut self, parsed: crate::rule::ParsedFile, file: &str) {
        let errors: Vec<_> = parsed.diagnostics.iter().filter(|d| d.is_error()).collect();
        if !errors.is_empty() {
            self.failed_files += 1;
            self.errors.extend(errors.iter().map(|d| d.to_string()));
        }
        for doc in parsed.documents {
            match doc {
                Document::Rule(rule) => self.rules.push(LoadedRule { file: file.to_string(), rule }),
                Document::Correlation(correlation) => self.correlations.push(LoadedCorrelation { file: file.to_string(), correlation }),
                Document::Filter(filter) => self.filters.push((file.to_string(), filter)),
            }
        }
    }

    /// Applies every loaded filter to the rules it names. A filter that does not fit a rule it
    /// names is reported as an error.
    pub fn apply_filters(&mut self) {
        for (file, filter) in &self.filters {
            for loaded in &mut self.rules {
                if filter.applies_to(&loaded.rule) {
                    match apply_filter(&loaded.rule, filter) {
                        Ok(r) => loaded.rule = r,
                        Err(d) => self.errors.push(format!("{file}: filter {:?}: {d}", filter.title)),
                    }
                }
            }
        }
    }

    /// Number of detection rules plus correlations that loaded.
    pub fn loaded(&self) -> usize {
        self.rules.len() + self.correlations.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hunt::tests::WHOAMI;

    #[test]
    fn rules_check_rejects_stay_out_of_the_hunt() {
        let checked = |texts: &[&str]| -> Vec<CheckedFile> {
            texts.iter().enumerate().map(|(i, t)| check_text(t, &format!("r{i}.yml"), &CompileOptions::default())).collect()
        };
        // The same id twice: the first loads, the second is an error, as `check` says.
        let set = RuleSet::from_checked(checked(&[WHOAMI, WHOAMI]));
        assert_eq!(set.rules.len(), 1);
        assert_eq!((set.failed_files, set.errors.len()), (1, 1), "{:?}", set.errors);
        assert!(set.errors[0].starts_with("r1.yml:1:1: error: rule id"), "{:?}", set.errors);
        // A placeholder without values: valid (a warning for `check`), so it loads.
        let set = RuleSet::from_checked(checked(&[&WHOAMI.replace("Image|endswith: '\\whoami.exe'", "Image|expand: '%tools%'")]));
        assert_eq!((set.rules.len(), set.errors.len()), (1, 0), "{:?}", set.errors);
    }
}
