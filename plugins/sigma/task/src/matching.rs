//! Running a rule over the whole event corpus: the set of events it matches, each event named
//! by (file, EventRecordID) so that sets from different rules compare by identity.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use sigma_engine::corpus::Corpus;
use sigma_engine::detection::{Condition, Detection, RawKind, SearchBody, Target};
use sigma_engine::logsource::{LogsourceMap, Variant, describe_logsource};
use sigma_engine::{CompileOptions, Rule, compile};

/// Matched events as sorted, de-duplicated (file index, EventRecordID) pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventSet(Vec<(u32, u64)>);

impl EventSet {
    pub fn from_unsorted(mut ids: Vec<(u32, u64)>) -> Self {
        ids.sort_unstable();
        ids.dedup();
        EventSet(ids)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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

    pub fn iter(&self) -> impl Iterator<Item = &(u32, u64)> {
        self.0.iter()
    }
}

/// The corpus plus the logsource mapping: runs single rules.
///
/// Candidate events per logsource variant (the (Channel, EventID) buckets a logsource stands
/// for) are computed once and kept, grouped by EventID: a training batch runs 64 rules over the
/// same few logsources, and most rules pin the EventID, so they only look at those events.
pub struct RuleMatcher {
    pub corpus: Corpus,
    map: LogsourceMap,
    candidates: Mutex<HashMap<(usize, usize), Arc<VariantEvents>>>,
    options: CompileOptions,
    prune_by_event_id: bool,
}

/// The candidate events of one logsource variant, all and by EventID text.
struct VariantEvents {
    all: Vec<u32>,
    by_event_id: HashMap<Box<str>, Vec<u32>>,
}

impl RuleMatcher {
    /// Whether `rule` compiles at all (regex size limits, placeholders, ...), independent of the
    /// corpus: a rule no engine can run is not a valid rule, whatever its YAML looks like.
    pub fn check_compiles(&self, rule: &Rule) -> Result<(), sigma_engine::Diagnostic> {
        compile(rule, &self.options, &mut |_| sigma_engine::event::FieldKey(u32::MAX)).map(|_| ())
    }

    pub fn new(corpus: Corpus, map: LogsourceMap) -> Self {
        RuleMatcher { corpus, map, candidates: Mutex::new(HashMap::new()), options: CompileOptions::default(), prune_by_event_id: true }
    }

    /// The same matcher without EventID pruning (to check that pruning never changes a result).
    pub fn without_pruning(mut self) -> Self {
        self.prune_by_event_id = false;
        self
    }

    /// The events `rule` matches, or why it can't run (an unmapped logsource, a compile error).
    pub fn match_rule(&self, rule: &Rule) -> Result<EventSet, String> {
        let ls = &rule.logsource;
        let (p, c, s) = (ls.product.as_deref(), ls.category.as_deref(), ls.service.as_deref());
        let entry_index = self
            .map
            .lookup_index(p, c, s)
            .ok_or_else(|| format!("its logsource ({}) is not in the logsource mapping, so it matches no event", describe_logsource(p, c, s)))?;
        let entry = &self.map.entries()[entry_index];
        let required_ids = if self.prune_by_event_id { required_event_ids(&rule.detection) } else { None };
        let events = self.corpus.events();
        let mut matched = Vec::new();
        for (variant_index, variant) in entry.variants.iter().enumerate() {
            let compiled = compile(rule, &self.options, &mut |name| variant.resolve(&self.corpus, name)).map_err(|d| d.message)?;
            let candidates = self.candidates_of(entry_index, variant_index, variant);
            let mut check = |list: &[u32]| {
                for &i in list {
                    let e = &events[i as usize];
                    if compiled.matches(e) {
                        matched.push((e.file.0, e.record_id));
                    }
                }
            };
            // Pruning by EventID is only sound when the variant reads EventID unrenamed.
            match &required_ids {
                Some(ids) if variant.event_field("EventID") == "EventID" => {
                    for id in ids {
                        if let Some(list) = candidates.by_event_id.get(id.as_str()) {
                            check(list);
                        }
                    }
                }
                _ => check(&candidates.all),
            }
        }
        Ok(EventSet::from_unsorted(matched))
    }

    fn candidates_of(&self, entry: usize, variant_index: usize, variant: &Variant) -> Arc<VariantEvents> {
        let mut cache = self.candidates.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .entry((entry, variant_index))
            .or_insert_with(|| {
                let all = variant.candidates(&self.corpus);
                let key = self.corpus.field_key("EventID");
                let mut by_event_id: HashMap<Box<str>, Vec<u32>> = HashMap::new();
                for &i in &all {
                    for v in self.corpus.event(i).values(key) {
                        by_event_id.entry(v.text().trim().into()).or_default().push(i);
                    }
                }
                Arc::new(VariantEvents { all, by_event_id })
            })
            .clone()
    }
}

/// The EventIDs an event must have for `detection` to match it, when the condition pins them
/// (e.g. `selection and not filter` with `EventID: 4720` in `selection`); `None` when it doesn't.
/// Only plain equality items count (no modifiers), so the pruning never changes a result.
pub fn required_event_ids(detection: &Detection) -> Option<Vec<String>> {
    let search_ids = |name: &str| -> Option<Vec<String>> {
        let search = detection.searches.iter().find(|s| s.name == name)?;
        body_ids(&search.body)
    };
    let ids = condition_ids(&detection.condition, &search_ids, &detection.searches)?;
    let mut ids: Vec<String> = ids.into_iter().collect();
    ids.sort();
    Some(ids)
}

fn body_ids(body: &SearchBody) -> Option<Vec<String>> {
    match body {
        SearchBody::AllOf(items) => items.iter().find_map(|item| {
            let plain = item.field.as_deref() == Some("EventID") && item.modifiers.is_empty();
            let values: Option<Vec<String>> = item
                .values
                .iter()
                .map(|v| {
                    if v.kind == RawKind::Number || (v.kind == RawKind::String && !v.text.contains(['*', '?', '\\'])) {
                        Some(v.text.trim().to_string())
                    } else {
                        None
                    }
                })
                .collect();
            if plain { values } else { None }
        }),
        SearchBody::AnyOf(bodies) => {
            let mut all = Vec::new();
            for b in bodies {
                all.extend(body_ids(b)?);
            }
            Some(all)
        }
        SearchBody::Keyword(_) => None,
    }
}

fn condition_ids(
    c: &Condition,
    search_ids: &dyn Fn(&str) -> Option<Vec<String>>,
    searches: &[sigma_engine::detection::Search],
) -> Option<HashSet<String>> {
    let matching = |t: &Target| -> Vec<&str> {
        searches
            .iter()
            .map(|s| s.name.as_str())
            .filter(|n| match t {
                Target::Them => !n.starts_with('_'),
                Target::Pattern(p) => glob(p, n),
            })
            .collect()
    };
    match c {
        Condition::Ref(name) => search_ids(name).map(|v| v.into_iter().collect()),
        Condition::Not(_) => None,
        Condition::And(parts) => {
            let sets: Vec<HashSet<String>> = parts.iter().filter_map(|p| condition_ids(p, search_ids, searches)).collect();
            sets.into_iter().reduce(|a, b| a.intersection(&b).cloned().collect())
        }
        Condition::Or(parts) => union_all(parts.iter().map(|p| condition_ids(p, search_ids, searches))),
        Condition::OneOf(t) => union_all(matching(t).into_iter().map(|n| search_ids(n).map(|v| v.into_iter().collect()))),
        Condition::AllOf(t) => matching(t)
            .into_iter()
            .filter_map(|n| search_ids(n).map(|v| v.into_iter().collect::<HashSet<String>>()))
            .reduce(|a, b| a.intersection(&b).cloned().collect()),
    }
}

/// The union when every part is pinned; `None` as soon as one part is not.
fn union_all(parts: impl Iterator<Item = Option<HashSet<String>>>) -> Option<HashSet<String>> {
    let mut out = HashSet::new();
    let mut any = false;
    for p in parts {
        out.extend(p?);
        any = true;
    }
    any.then_some(out)
}

/// `*`-wildcard match of a search-identifier pattern.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else { return false };
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob(rest, &tail[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intersection_of_sorted_sets() {
        let a = EventSet::from_unsorted(vec![(1, 5), (0, 3), (1, 5), (2, 1)]);
        let b = EventSet::from_unsorted(vec![(2, 1), (0, 3), (0, 4)]);
        assert_eq!(a.len(), 3);
        assert_eq!(a.intersection_len(&b), 2);
        assert_eq!(b.intersection_len(&EventSet::default()), 0);
    }

    fn ids(yaml: &str) -> Option<Vec<String>> {
        let text = format!("title: t\nlogsource: {{product: windows, service: security}}\ndetection:\n{yaml}");
        let parsed = sigma_engine::parse_documents(&text, "t.yml");
        let Some(sigma_engine::Document::Rule(r)) = parsed.documents.first() else { panic!("{:?}", parsed.diagnostics) };
        required_event_ids(&r.detection)
    }

    #[test]
    fn event_ids_pinned_by_the_condition() {
        let v = |s: &[&str]| Some(s.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        assert_eq!(ids("  sel: {EventID: 4720, X: y}\n  f: {X: z}\n  condition: sel and not f\n"), v(&["4720"]));
        assert_eq!(ids("  sel: {EventID: [4624, 4625]}\n  condition: sel\n"), v(&["4624", "4625"]));
        assert_eq!(ids("  a: {EventID: 1}\n  b: {EventID: 2}\n  condition: a or b\n"), v(&["1", "2"]));
        assert_eq!(ids("  s_a: {EventID: 1}\n  s_b: {EventID: 2}\n  condition: 1 of s_*\n"), v(&["1", "2"]));
        assert_eq!(ids("  a: {EventID: 1}\n  b: {X: 2}\n  condition: a or b\n"), None);
        assert_eq!(ids("  a: {EventID|gt: 1}\n  condition: a\n"), None);
        assert_eq!(ids("  a: {EventID: 1}\n  condition: not a\n"), None);
        assert_eq!(ids("  a:\n    - {EventID: 1}\n    - {EventID: 5, X: y}\n  condition: a\n"), v(&["1", "5"]));
        assert!(glob("sel*_b", "sel_x_b") && !glob("sel*", "fil") && glob("*", ""));
    }
}
