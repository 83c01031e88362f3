//! Running a rule over the whole event corpus: the set of events it matches, each event named
//! by (file, EventRecordID) so that sets from different rules compare by identity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sigma_engine::corpus::Corpus;
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
/// for) are computed once and kept: a training batch runs 64 rules over the same few logsources.
pub struct RuleMatcher {
    pub corpus: Corpus,
    map: LogsourceMap,
    candidates: Mutex<HashMap<(usize, usize), Arc<Vec<u32>>>>,
    options: CompileOptions,
}

impl RuleMatcher {
    pub fn new(corpus: Corpus, map: LogsourceMap) -> Self {
        RuleMatcher { corpus, map, candidates: Mutex::new(HashMap::new()), options: CompileOptions::default() }
    }

    /// The events `rule` matches, or why it can't run (an unmapped logsource, a compile error).
    pub fn match_rule(&self, rule: &Rule) -> Result<EventSet, String> {
        let ls = &rule.logsource;
        let entry = self.map.lookup(ls.product.as_deref(), ls.category.as_deref(), ls.service.as_deref()).ok_or_else(|| {
            format!(
                "its logsource ({}) is not one the logsource mapping knows, so it matches no event",
                describe_logsource(ls.product.as_deref(), ls.category.as_deref(), ls.service.as_deref())
            )
        })?;
        // The entry's position keys the candidate cache (entries are never added after load).
        let entry_index = self.map.entries().iter().position(|e| std::ptr::eq(e, entry)).unwrap_or(usize::MAX);
        let events = self.corpus.events();
        let mut matched = Vec::new();
        for (variant_index, variant) in entry.variants.iter().enumerate() {
            let compiled = compile(rule, &self.options, &mut |name| variant.resolve(&self.corpus, name)).map_err(|d| d.message)?;
            let candidates = self.candidates_of(entry_index, variant_index, variant);
            for &i in candidates.iter() {
                let e = &events[i as usize];
                if compiled.matches(e) {
                    matched.push((e.file.0, e.record_id));
                }
            }
        }
        Ok(EventSet::from_unsorted(matched))
    }

    fn candidates_of(&self, entry: usize, variant_index: usize, variant: &Variant) -> Arc<Vec<u32>> {
        let mut cache = self.candidates.lock().unwrap_or_else(|p| p.into_inner());
        cache.entry((entry, variant_index)).or_insert_with(|| Arc::new(variant.candidates(&self.corpus))).clone()
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
}
