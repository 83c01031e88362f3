//! Scoring one completion against one reference: `yaml_valid`, `logsource_correct`, `iou`.
//!
//! A bad completion is never an error: every failure becomes a low score with a `detail` that
//! says why, in terms of what the model wrote (positions are lines of the completion).

use sigma_engine::hunt::Hunter;
use sigma_engine::yaml::{self, NodeValue};
use sigma_engine::{CompileOptions, Document, Logsource, Rule};

use crate::config::COMPONENTS;
use crate::extract::{self, Extracted};

/// The events a rule matches: ascending corpus indices, exactly as
/// [`Hunter::match_rule`] (and so `sigmaforge hunt`) reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventSet(Vec<u32>);

impl EventSet {
    /// From the hunter's result (ascending, unique).
    pub fn from_hunt(events: Vec<u32>) -> Self {
        debug_assert!(events.windows(2).all(|w| w[0] < w[1]));
        EventSet(events)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_slice(&self) -> &[u32] {
        &self.0
    }

    /// |self ∩ other| by a merge of the two sorted lists.
    pub fn intersection_len(&self, other: &EventSet) -> usize {
        let (mut i, mut j, mut n) = (0, 0, 0);
        while i < self.0.len() && j < other.0.len() {
            match self.0[i].cmp(&other.0[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    n += 1;
                    i += 1;
                    j += 1;
                }
            }
        }
        n
    }
}

/// One reward component of one completion (mirrors the WIT record).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ComponentScore {
    pub name: String,
    pub value: f64,
    pub weight: f64,
    pub detail: String,
}

/// What a completion is compared with.
#[derive(Debug, Clone)]
pub struct Reference {
    pub logsource: LogsourceKey,
    pub events: EventSet,
}

/// The parts of a logsource the reward compares (lower-cased, trimmed).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogsourceKey {
    pub product: Option<String>,
    pub category: Option<String>,
    pub service: Option<String>,
}

impl LogsourceKey {
    pub fn of(ls: &Logsource) -> Self {
        Self::from_parts(ls.product.as_deref(), ls.category.as_deref(), ls.service.as_deref())
    }

    fn from_parts(product: Option<&str>, category: Option<&str>, service: Option<&str>) -> Self {
        let norm = |s: Option<&str>| s.map(|s| s.trim().to_lowercase()).filter(|s| !s.is_empty());
        LogsourceKey { product: norm(product), category: norm(category), service: norm(service) }
    }
}

impl std::fmt::Display for LogsourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for (k, v) in [("product", &self.product), ("category", &self.category), ("service", &self.service)] {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        }
        if parts.is_empty() { f.write_str("(empty)") } else { f.write_str(&parts.join(" ")) }
    }
}

/// Title given to rules that only hold `logsource` and `detection`, so they validate.
const FILLED_TITLE: &str = "Generated rule";

pub struct Scorer<'a> {
    pub weights: [f64; 3],
    pub max_completion_bytes: usize,
    pub hunter: &'a Hunter<'a>,
}

impl Scorer<'_> {
    pub fn score(&self, reference: &Reference, completion: &str) -> Vec<ComponentScore> {
        let [valid, logsource, iou] = self.evaluate(reference, completion);
        [valid, logsource, iou]
            .into_iter()
            .zip(COMPONENTS)
            .zip(self.weights)
            .map(|(((value, detail), name), weight)| ComponentScore { name: name.into(), value, weight, detail })
            .collect()
    }

    fn evaluate(&self, reference: &Reference, completion: &str) -> [(f64, String); 3] {
        if completion.len() > self.max_completion_bytes {
            let why = format!(
                "the completion is {} bytes, over the {}-byte limit (config max_completion_bytes); it was not parsed",
                completion.len(),
                self.max_completion_bytes
            );
            return all_zero(why);
        }
        let extracted = extract::extract(completion);
        if extracted.yaml.trim().is_empty() {
            return all_zero("no YAML found in the completion".into());
        }
        let text = prepare(extracted.yaml);

        // The engine's check: the rule `sigmaforge check` accepts and `hunt` runs is the rule
        // called valid here (unresolved `|expand` placeholders are a warning: they match nothing).
        let parsed = sigma_engine::check::check_text(&text, "completion", &CompileOptions::default()).parsed;
        let errors: Vec<String> = parsed.diagnostics.iter().filter(|d| d.is_error()).map(|d| describe(d, &extracted)).collect();
        let rule = parsed.documents.into_iter().find_map(|d| match d {
            Document::Rule(r) => Some(r),
            _ => None,
        });
        let mut notes = String::new();
        if let Some((n, of)) = extracted.document {
            notes.push_str(&format!("; took YAML document {n} of {of}, the first that is a rule, and ignored the others"));
        }
        if let Some(w) = parsed.diagnostics.iter().find(|d| d.code == "unresolved-placeholder") {
            notes.push_str(&format!("; {} (it matches nothing)", w.message));
        }

        let (valid, rule) = match (rule, errors.is_empty()) {
            (Some(rule), true) => ((1.0, format!("valid Sigma rule ({}){notes}", extracted.source)), Some(rule)),
            (None, true) => ((0.0, format!("the YAML is not a detection rule (a correlation or filter, or no document){notes}")), None),
            (_, false) => {
                let more = if errors.len() > 1 { format!(" (+{} more)", errors.len() - 1) } else { String::new() };
                ((0.0, format!("{}{more}{notes}", errors[0])), None)
            }
        };

        let given = match &rule {
            Some(r) => Some(LogsourceKey::of(&r.logsource)),
            None => lenient_logsource(&text),
        };
        let logsource = match given {
            None => (0.0, format!("no logsource found; expected {}", reference.logsource)),
            Some(g) if g == reference.logsource => (1.0, format!("logsource matches: {g}")),
            Some(g) => (0.0, format!("logsource expected {} but given {}", reference.logsource, g)),
        };

        let iou = match &rule {
            None => (0.0, "no valid rule to run".into()),
            Some(rule) => self.iou(rule, reference),
        };
        [valid, logsource, iou]
    }

    fn iou(&self, rule: &Rule, reference: &Reference) -> (f64, String) {
        match self.hunter.match_rule(rule) {
            Err(e) => (0.0, format!("the rule was not run: {e}")),
            Ok(generated) => {
                let generated = EventSet::from_hunt(generated);
                let r = &reference.events;
                let both = generated.intersection_len(r);
                let union = generated.len() + r.len() - both;
                let value = if union == 0 { 0.0 } else { both as f64 / union as f64 };
                // The counts are `sigmaforge hunt`'s: hunting with the completion's rule over the
                // same events reports `generated` matches, with the reference rule `r` matches.
                let detail = format!(
                    "IoU {value:.3}: matched {both} of {} reference events, missed {}, {} false positives ({} events matched; \
                     `sigmaforge hunt` over the task's events reports {} matches for this rule and {} for the reference)",
                    r.len(),
                    r.len() - both,
                    generated.len() - both,
                    generated.len(),
                    generated.len(),
                    r.len()
                );
                (value, detail)
            }
        }
    }
}

fn all_zero(why: String) -> [(f64, String); 3] {
    [(0.0, why.clone()), (0.0, why.clone()), (0.0, why)]
}

/// A diagnostic in terms of the completion: "line 12:5: message".
fn describe(d: &sigma_engine::Diagnostic, ex: &Extracted<'_>) -> String {
    match (d.line, d.column) {
        (Some(l), Some(c)) => format!("line {}:{c} of the completion: {}", l as usize + ex.first_line - 1, d.message),
        (Some(l), None) => format!("line {} of the completion: {}", l as usize + ex.first_line - 1, d.message),
        _ => d.message.clone(),
    }
}

/// Dedents the YAML (models often indent a whole fenced block) and fills in a title when the
/// model wrote only `logsource` and `detection`. The title is appended, so line numbers of
/// what the model wrote stay the same.
fn prepare(yaml_text: &str) -> String {
    let mut text = dedent(yaml_text);
    let stream = yaml::parse_stream(&text);
    let needs_title = stream.error.is_none()
        && stream.documents.len() == 1
        && stream.documents[0].as_map().is_some_and(|m| !m.iter().any(|e| e.key == "title"))
        && !text.trim_start().starts_with('{');
    if needs_title {
        // A trailing document-end marker would put the title outside the document.
        while text.trim_end().ends_with("...") {
            let cut = text.trim_end().len() - 3;
            text.truncate(cut);
        }
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str("title: ");
        text.push_str(FILLED_TITLE);
        text.push('\n');
    }
    text
}

fn dedent(text: &str) -> String {
    let indent = text.lines().filter(|l| !l.trim().is_empty()).map(|l| l.len() - l.trim_start_matches(' ').len()).min().unwrap_or(0);
    if indent == 0 {
        return text.to_string();
    }
    text.lines().map(|l| if l.len() >= indent { &l[indent..] } else { l.trim_start() }).collect::<Vec<_>>().join("\n")
}

/// The logsource of YAML that is not a valid rule (so a model whose detection is broken still
/// learns whether it picked the right log source).
fn lenient_logsource(text: &str) -> Option<LogsourceKey> {
    let stream = yaml::parse_stream(text);
    let doc = stream.documents.first()?;
    let ls = doc.get("logsource")?;
    ls.as_map()?;
    let field = |k: &str| {
        ls.get(k).and_then(|n| match &n.value {
            NodeValue::Null => None,
            _ => n.scalar_text(),
        })
    };
    Some(LogsourceKey::from_parts(field("product").as_deref(), field("category").as_deref(), field("service").as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedent_and_title() {
        let t = prepare("  logsource:\n    product: windows\n  detection:\n    s: {a: 1}\n    condition: s\n");
        assert!(t.starts_with("logsource:\n  product: windows\n"), "{t}");
        assert!(t.ends_with("\ntitle: Generated rule\n"), "{t}");
        let full = "title: Mine\nlogsource: {product: windows}\ndetection: {s: {a: 1}, condition: s}\n";
        assert_eq!(prepare(full), full);
        assert!(prepare("logsource: {product: windows}\n...\n").ends_with("\ntitle: Generated rule\n"));
    }

    #[test]
    fn lenient_logsource_reads_broken_rules() {
        let k = lenient_logsource("logsource:\n  product: Windows\n  category: process_creation\ndetection: 5\n").unwrap();
        assert_eq!(k, LogsourceKey { product: Some("windows".into()), category: Some("process_creation".into()), service: None });
        assert!(lenient_logsource("logsource: 3").is_none());
        assert!(lenient_logsource(": : :").is_none());
    }
}
