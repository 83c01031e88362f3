//! What personas may know about a reference rule, read from the engine's parsed [`Rule`].

use sigma_engine::detection::{Detection, Item, RawKind, SearchBody};
use sigma_engine::{Level, Rule};

use crate::persona::{Indicators, RuleMeta};

/// Fields whose values name files an incident responder would see on a host.
const ARTIFACT_FIELDS: &[&str] = &[
    "Image",
    "ParentImage",
    "TargetImage",
    "SourceImage",
    "OriginalFileName",
    "ImageLoaded",
    "TargetFilename",
    "NewProcessName",
    "ParentProcessName",
    "ProcessName",
    "Application",
    "ServiceFileName",
    "ImagePath",
];

/// File extensions that make a value look like a file an analyst would name.
const FILE_EXTENSIONS: &[&str] =
    &[".exe", ".dll", ".sys", ".ps1", ".bat", ".cmd", ".vbs", ".js", ".hta", ".scr", ".cpl", ".msi", ".lnk", ".dmp", ".kdbx"];

pub fn rule_meta(rule: &Rule) -> RuleMeta {
    let mut indicators = Indicators::default();
    for item in items(&rule.detection) {
        let Some(field) = item.field.as_deref() else { continue };
        for v in &item.values {
            if v.kind == RawKind::Null || v.text.is_empty() {
                continue;
            }
            match field {
                "EventID" => push_unique(&mut indicators.event_ids, v.text.clone()),
                "Channel" => push_unique(&mut indicators.channels, v.text.clone()),
                f if ARTIFACT_FIELDS.contains(&f) => {
                    if let Some(shown) = file_name(&v.text)
                        && !indicators.artifacts.iter().any(|(s, _)| s.eq_ignore_ascii_case(&shown))
                    {
                        indicators.artifacts.push((shown, v.text.clone()));
                    }
                }
                _ => {}
            }
        }
    }
    RuleMeta {
        title: rule.title.clone(),
        description: rule.description.clone().unwrap_or_default(),
        level: rule.level.map(level_name).unwrap_or("").to_string(),
        tags: rule.tags.clone(),
        product: rule.logsource.product.clone(),
        category: rule.logsource.category.clone(),
        service: rule.logsource.service.clone(),
        falsepositives: rule.falsepositives.clone(),
        indicators,
    }
}

pub fn level_name(level: Level) -> &'static str {
    match level {
        Level::Informational => "informational",
        Level::Low => "low",
        Level::Medium => "medium",
        Level::High => "high",
        Level::Critical => "critical",
    }
}

/// Every string value the rule's detection compares with (keywords included), as written.
pub fn detection_values(detection: &Detection) -> Vec<String> {
    let mut out = Vec::new();
    for item in items(detection) {
        for v in &item.values {
            if v.kind != RawKind::Null && !v.text.is_empty() {
                push_unique(&mut out, v.text.clone());
            }
        }
    }
    out
}

/// Every item of every search, in source order.
fn items(detection: &Detection) -> Vec<&Item> {
    fn walk<'a>(body: &'a SearchBody, out: &mut Vec<&'a Item>) {
        match body {
            SearchBody::AllOf(items) => out.extend(items.iter()),
            SearchBody::AnyOf(bodies) => bodies.iter().for_each(|b| walk(b, out)),
            SearchBody::Keyword(item) => out.push(item),
        }
    }
    let mut out = Vec::new();
    for s in &detection.searches {
        walk(&s.body, &mut out);
    }
    out
}

/// `\mshta.exe`, `*\rundll32.exe`, `C:\Windows\x.dll` → the bare file name, if the value names a file.
fn file_name(value: &str) -> Option<String> {
    let v = value.trim_matches('*');
    let base = v.rsplit(['\\', '/']).next().unwrap_or(v).trim_matches('*');
    let lower = base.to_ascii_lowercase();
    let ok = base.len() > 4 && !base.contains(['*', '?', ' ', '%']) && FILE_EXTENSIONS.iter().any(|ext| lower.ends_with(ext));
    ok.then(|| base.to_string())
}

fn push_unique(list: &mut Vec<String>, value: String) {
    if !list.contains(&value) {
        list.push(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_recognised() {
        assert_eq!(file_name("\\mshta.exe").as_deref(), Some("mshta.exe"));
        assert_eq!(file_name("*\\Temp\\evil.dll").as_deref(), Some("evil.dll"));
        assert_eq!(file_name("C:\\Windows\\System32\\"), None);
        assert_eq!(file_name(" -enc "), None);
        assert_eq!(file_name("\\*.exe"), None);
    }

    #[test]
    fn meta_and_values_come_from_the_rule() {
        let yaml = "title: T\ndescription: Detects things\nlevel: high\ntags: [attack.t1218.005]\n\
            logsource: {product: windows, category: process_creation}\n\
            detection:\n  sel:\n    Image|endswith: '\\mshta.exe'\n    CommandLine|contains: ['vbscript', 'javascript']\n  ev:\n    EventID: 1\n  condition: sel and ev\n";
        let parsed = sigma_engine::parse_documents(yaml, "t.yml");
        let Some(sigma_engine::Document::Rule(rule)) = parsed.documents.first() else { panic!("{:?}", parsed.diagnostics) };
        let m = rule_meta(rule);
        assert_eq!(m.level, "high");
        assert_eq!(m.indicators.event_ids, ["1"]);
        assert_eq!(m.indicators.artifacts, [("mshta.exe".to_string(), "\\mshta.exe".to_string())]);
        assert_eq!(detection_values(&rule.detection), ["\\mshta.exe", "vbscript", "javascript", "1"]);
    }
}
