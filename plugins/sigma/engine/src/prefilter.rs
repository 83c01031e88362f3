//! A literal index over many rules: which events could each rule match, found in one pass over
//! the events instead of one pass per rule.
//!
//! Most detections can only match an event whose field values contain one of a few literals
//! (`Image|endswith: '\whoami.exe'` needs `\whoami.exe` in `Image`; see
//! [`CompiledRule::required_literals`]). The index merges the literals of every rule into one
//! Aho-Corasick automaton per field (and one for keywords), runs each event's values through
//! them once, and records, per rule, the events where one of its literals occurred. A rule then
//! runs only on those events. A rule without such a literal set runs on all its candidates, as
//! before, so the index never changes a result, only how many events each rule touches.
//!
//! The pass is split by event range ([`Prefilter::scan`]) so that a caller with threads (the
//! CLI) can scan ranges in parallel and [`Passes::append`] the results in order.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::OnceLock;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

use crate::corpus::ABSENT_FIELD;
use crate::corpus::Corpus;
use crate::detection::compile::{CompiledRule, LiteralField};
use crate::event::FieldKey;

/// Longest literal the index searches for, in bytes: a longer one is cut to its first
/// `MAX_LITERAL_BYTES` (at a character boundary). A value holding a literal holds its prefix, so
/// the index still passes every event the rule can match; it may pass a few more, which the rule
/// then rejects. SigmaHQ's `base64offset` and long command-line literals made the command-line
/// automaton 280 KB of patterns, most of its build time.
pub const MAX_LITERAL_BYTES: usize = 24;

/// The keyword automaton (searched in every value of most events) is built as a DFA, faster to
/// search, when its literals are at most this many bytes (SigmaHQ's: about 1.5 KB); other
/// automata are contiguous NFAs: hundreds of small DFAs cost more to build than they save.
const DFA_MAX_BYTES: usize = 4 << 10;

/// Values shorter than this are searched every time; longer ones once per scanned range.
const MEMO_MIN_BYTES: usize = 16;

fn shortened(literal: &str) -> &str {
    if literal.len() <= MAX_LITERAL_BYTES {
        return literal;
    }
    let mut end = MAX_LITERAL_BYTES;
    while !literal.is_char_boundary(end) {
        end -= 1;
    }
    &literal[..end]
}

/// A parallel loop supplied by the caller: `parallel(n, f)` calls `f(i)` once for each `i` in
/// `0..n`, in any order, on any threads.
pub type ParallelFor<'p> = &'p dyn Fn(usize, &(dyn Fn(usize) + Sync));

/// One automaton over the literals of one field (or of keywords), with the units each literal
/// belongs to.
struct FieldScan {
    automaton: AhoCorasick,
    /// The shortest literal's length: a shorter value holds none of them (most values are a few
    /// bytes: `0x0`, `4688`, `-`).
    shortest: usize,
    /// Per pattern id: its length in bytes.
    lengths: Vec<usize>,
    /// Per pattern id: the units that need this literal.
    units: Vec<Vec<u32>>,
}

/// The merged literal sets of many compiled detections ("units"), numbered in the order given.
pub struct Prefilter {
    /// Indexed by `FieldKey.0`.
    by_field: Vec<Option<FieldScan>>,
    keywords: Option<FieldScan>,
    /// Per unit: whether it has a literal set (else it runs on every candidate).
    filtered: Vec<bool>,
}

/// Per unit: the events (ascending) where one of its literals occurred, or `None` for a unit
/// without literals.
#[derive(Debug, Default)]
pub struct Passes {
    lists: Vec<Option<Vec<u32>>>,
}

impl Passes {
    /// Appends the passes of the next event range (ranges must be appended in order).
    pub fn append(&mut self, next: Passes) {
        if self.lists.is_empty() {
            self.lists = next.lists;
            return;
        }
        for (mine, theirs) in self.lists.iter_mut().zip(next.lists) {
            if let (Some(m), Some(t)) = (mine.as_mut(), theirs) {
                m.extend(t);
            }
        }
    }

    /// The events unit `unit` may match (ascending), or `None` when it was not filtered.
    pub fn of(&self, unit: usize) -> Option<&[u32]> {
        self.lists[unit].as_deref()
    }
}

impl Prefilter {
    /// Builds the index over `units` (one compiled detection each); a unit without a literal set
    /// runs everywhere.
    pub fn new<'a>(units: impl IntoIterator<Item = &'a CompiledRule>) -> Prefilter {
        Self::new_in(units, &|n, build| (0..n).for_each(build))
    }

    /// [`Prefilter::new`], building the per-field automata through `parallel`, which must call
    /// its second argument once for each number below its first, in any order and on any
    /// threads (the CLI passes a rayon loop; the library has no thread pool of its own). The
    /// automata are independent; the largest is started first.
    pub fn new_in<'a>(units: impl IntoIterator<Item = &'a CompiledRule>, parallel: ParallelFor) -> Prefilter {
        // Each unit's literal set, as searched: lowercase, cut to `MAX_LITERAL_BYTES` (in
        // parallel: walking thousands of detections is half the index's build time).
        let units: Vec<&CompiledRule> = units.into_iter().collect();
        type LiteralSet = Option<Vec<(LiteralField, String)>>;
        let sets: Vec<OnceLock<LiteralSet>> = units.iter().map(|_| OnceLock::new()).collect();
        parallel(units.len(), &|i| {
            // Uncased literals are lowercase already; cased ones are ASCII (see
            // `required_literals`), so ASCII lowercasing matches `Value::lower`.
            let set = units[i].required_literals().map(|set| set.into_iter().map(|(f, l)| (f, shortened(l).to_ascii_lowercase())).collect());
            let _ = sets[i].set(set);
        });
        // Per field: its distinct literals (in order of first use) with, for each, the units
        // that need it.
        type Group = (Vec<String>, Vec<Vec<u32>>, HashMap<String, usize, foldhash::fast::RandomState>);
        let mut grouped: BTreeMap<LiteralField, Group> = BTreeMap::new();
        let mut filtered = Vec::with_capacity(units.len());
        for (unit, set) in sets.into_iter().enumerate() {
            let set = set.into_inner().expect("`parallel` visits every unit");
            filtered.push(set.is_some());
            for (field, literal) in set.into_iter().flatten() {
                let (patterns, units, seen) = grouped.entry(field).or_default();
                let at = match seen.get(literal.as_str()) {
                    Some(&at) => at,
                    None => {
                        seen.insert(literal.clone(), patterns.len());
                        patterns.push(literal);
                        units.push(Vec::new());
                        units.len() - 1
                    }
                };
                if units[at].last() != Some(&(unit as u32)) {
                    units[at].push(unit as u32);
                }
            }
        }
        // No event has the field ABSENT_FIELD, so its literals never occur: leave them out.
        let mut jobs: Vec<(LiteralField, Vec<String>, Vec<Vec<u32>>)> =
            grouped.into_iter().filter(|(f, _)| *f != Some(ABSENT_FIELD)).map(|(f, (p, u, _))| (f, p, u)).collect();
        jobs.sort_by_key(|(_, patterns, _)| std::cmp::Reverse(patterns.iter().map(String::len).sum::<usize>()));
        let built: Vec<OnceLock<AhoCorasick>> = jobs.iter().map(|_| OnceLock::new()).collect();
        parallel(jobs.len(), &|i| {
            // Overlapping search needs the standard match semantics. A contiguous NFA: a DFA
            // over thousands of literals costs ~100 MB to build for little search speed here.
            let bytes: usize = jobs[i].1.iter().map(String::len).sum();
            let keywords = jobs[i].0.is_none();
            let kind = if keywords && bytes <= DFA_MAX_BYTES { AhoCorasickKind::DFA } else { AhoCorasickKind::ContiguousNFA };
            let automaton = AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .kind(Some(kind))
                .build(&jobs[i].1)
                .expect("literal automaton: the patterns are bounded by the rules' own limits");
            let _ = built[i].set(automaton);
        });
        let mut by_field: Vec<Option<FieldScan>> = Vec::new();
        let mut keywords = None;
        for ((field, patterns, units), automaton) in jobs.into_iter().zip(built) {
            let automaton = automaton.into_inner().expect("`parallel` builds every automaton");
            let lengths: Vec<usize> = patterns.iter().map(String::len).collect();
            let shortest = lengths.iter().copied().min().unwrap_or(0);
            let scan = FieldScan { automaton, shortest, lengths, units };
            match field {
                None => keywords = Some(scan),
                Some(FieldKey(k)) => {
                    let k = k as usize;
                    if by_field.len() <= k {
                        by_field.resize_with(k + 1, || None);
                    }
                    by_field[k] = Some(scan);
                }
            }
        }
        Prefilter { by_field, keywords, filtered }
    }

    /// Heap bytes held by the automata (the unit lists not counted).
    pub fn memory_usage(&self) -> usize {
        self.by_field.iter().flatten().chain(&self.keywords).map(|s| s.automaton.memory_usage()).sum()
    }

    /// How many units the index was built over.
    pub fn units(&self) -> usize {
        self.filtered.len()
    }

    /// How many units have a literal set.
    pub fn filtered_units(&self) -> usize {
        self.filtered.iter().filter(|f| **f).count()
    }

    /// The units with a keyword literal (ascending), each with the length of its shortest
    /// keyword literal: their literals are searched in every value, and a value shorter than
    /// every keyword literal of the units reading an event cannot hold one.
    pub fn keyword_units(&self) -> Vec<(usize, usize)> {
        let Some(keywords) = &self.keywords else { return Vec::new() };
        let mut shortest: BTreeMap<usize, usize> = BTreeMap::new();
        for (units, &len) in keywords.units.iter().zip(&keywords.lengths) {
            for &unit in units {
                let at = shortest.entry(unit as usize).or_insert(len);
                *at = (*at).min(len);
            }
        }
        shortest.into_iter().collect()
    }

    /// Runs the events in `events` through the index. With `keyword_lengths` (indexed by corpus
    /// event), keyword literals are searched only in the values of an event at least as long as
    /// its entry (`usize::MAX`: not at all); a caller passes, per event, the shortest keyword
    /// literal of the units in [`Prefilter::keyword_units`] that have it as a candidate, since
    /// a unit's passes are only read for its own candidates.
    pub fn scan<'c>(&self, corpus: &'c Corpus, events: Range<u32>, keyword_lengths: Option<&[usize]>) -> Passes {
        let mut lists: Vec<Option<Vec<u32>>> = self.filtered.iter().map(|f| f.then(Vec::new)).collect();
        // The last event each unit was recorded for, so a unit is recorded once per event.
        let mut last: Vec<u32> = vec![u32::MAX; self.filtered.len()];
        // Event logs repeat their longer values (image paths, command lines, users, hosts): the
        // literals found in each (automaton, value) are kept for the rest of the range, as a
        // span of `found`, so a repeated value is hashed instead of searched again.
        let mut memo: HashMap<(u32, &'c str), (u32, u32), foldhash::fast::RandomState> = HashMap::default();
        let mut found: Vec<u32> = Vec::new();
        let mut record = |id: u32, scan: &FieldScan, text: &'c str, index: u32| {
            if text.len() < scan.shortest {
                return;
            }
            // Short values are searched each time, their finds dropped after use.
            let (start, end, transient) = if text.len() < MEMO_MIN_BYTES {
                let start = found.len() as u32;
                found.extend(scan.automaton.find_overlapping_iter(text).map(|m| m.pattern().as_u32()));
                (start, found.len() as u32, true)
            } else {
                let (start, end) = *memo.entry((id, text)).or_insert_with(|| {
                    let start = found.len() as u32;
                    found.extend(scan.automaton.find_overlapping_iter(text).map(|m| m.pattern().as_u32()));
                    (start, found.len() as u32)
                });
                (start, end, false)
            };
            for &pattern in &found[start as usize..end as usize] {
                for &unit in &scan.units[pattern as usize] {
                    if last[unit as usize] != index {
                        last[unit as usize] = index;
                        lists[unit as usize].as_mut().expect("units with literals are filtered").push(index);
                    }
                }
            }
            if transient {
                found.truncate(start as usize);
            }
        };
        for index in events {
            let keywords_from = keyword_lengths.map_or(0, |lengths| lengths.get(index as usize).copied().unwrap_or(0));
            for (key, value) in corpus.event(index).fields() {
                if let Some(Some(scan)) = self.by_field.get(key.0 as usize) {
                    record(key.0, scan, value.lower(), index);
                }
                if let Some(scan) = &self.keywords
                    && value.lower().len() >= keywords_from
                {
                    record(u32::MAX, scan, value.lower(), index);
                }
            }
        }
        Passes { lists }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_literals_are_cut_to_their_first_bytes_at_a_character_boundary() {
        assert_eq!(shortened("short"), "short");
        let exact = "a".repeat(MAX_LITERAL_BYTES);
        assert_eq!(shortened(&exact), exact);
        assert_eq!(shortened(&format!("{exact}tail")), exact);
        // 'é' is two bytes: cutting inside it would not be a string.
        let cut = format!("{}é-more", "a".repeat(MAX_LITERAL_BYTES - 1));
        assert_eq!(shortened(&cut), "a".repeat(MAX_LITERAL_BYTES - 1));
    }
}
