//! Running rules over a [`Corpus`]: logsource pruning, per-variant compilation, Sigma filters and
//! correlation rules.
//!
//! This is the one implementation of "run a rule over the corpus": `sigmaforge hunt` and the
//! reward (the sigma task, native or in the Wasm plugin) both call it, so the events a reward
//! counts for a rule are exactly the events `hunt` reports for it. The pieces are small and pure
//! so that callers choose how to schedule them: the reward calls [`Hunter::match_rule`] (serial,
//! one rule), the CLI runs [`Hunter::prepare`] and [`Hunter::evaluate`] for many rules on a
//! thread pool and then [`Hunter::finish`] (correlations, `generate`).
//!
//! The module's parts: this file prepares rules and evaluates them over the corpus (with the
//! literal index of [`crate::prefilter`]); `correlation.rs` evaluates correlation rules over
//! those matches and applies `generate`; `rule_set.rs` is the set of rules a hunt runs, loaded the
//! way `check` judges them.
//!
//! A rule is compiled once per variant of its logsource (see [`crate::logsource`]), with that
//! variant's field renames, and evaluated only on the variant's candidate events: the
//! (Channel, EventID) index picks them before any field is read.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::{Deref, Range};
use std::sync::OnceLock;

use crate::corpus::Corpus;
use crate::detection::compile::{CompileOptions, CompiledRule, compile};
use crate::diagnostic::Diagnostic;
use crate::event::FieldKey;
use crate::logsource::{LogsourceMap, UnknownLogsource, describe_logsource};
pub use crate::prefilter::Passes;
use crate::prefilter::{ParallelFor, Prefilter};
use crate::rule::Rule;

mod correlation;
mod rule_set;

pub use rule_set::{LoadedCorrelation, LoadedRule, RuleSet};

/// Why a rule or a correlation cannot run (reported as a skipped rule, or as a zero reward).
#[derive(Clone, Debug, thiserror::Error)]
pub enum HuntError {
    /// The rule's logsource is not in the mapping, so no event is a candidate; `unknown` names
    /// the parts the mapping does not know, with near misses.
    #[error("logsource {logsource} is not in the logsource mapping {mapping}, so the rule matches no event{}", hints(unknown))]
    UnmappedLogsource { logsource: String, mapping: String, unknown: Vec<UnknownLogsource> },
    /// The detection does not compile for one of the logsource's variants.
    #[error(transparent)]
    Compile(#[from] Diagnostic),
    #[error("value_percentile correlations are not supported")]
    UnsupportedCorrelation,
    /// A correlation names a rule (by id or name) that is not a loaded detection rule.
    #[error("references rule {0}, which is not among the loaded rules (or is itself a correlation)")]
    MissingBaseRule(String),
}

fn hints(unknown: &[UnknownLogsource]) -> String {
    unknown.iter().map(|u| format!("; {u}")).collect()
}

/// A rule ready to run: one compiled detection per logsource variant.
#[derive(Debug)]
pub struct PreparedRule {
    /// (mapping entry, variant, compiled detection).
    units: Vec<(usize, usize, CompiledRule)>,
    /// Per unit: the variant's candidates narrowed to the EventIDs the detection requires
    /// (`EventID: 4624` inside a `service: security` rule), when it requires some.
    narrowed: Vec<Option<Vec<u32>>>,
}

impl PreparedRule {
    /// Whether the detection pins EventIDs, so some variant reads only those events.
    pub fn is_narrowed(&self) -> bool {
        self.narrowed.iter().any(Option::is_some)
    }
}

/// Runs rules over one corpus with one logsource mapping.
pub struct Hunter<'a> {
    corpus: Held<'a, Corpus>,
    map: Held<'a, LogsourceMap>,
    options: CompileOptions,
    /// Candidate events (ascending) per mapping entry and variant, once a rule needed them.
    candidates: Vec<OnceLock<Vec<Vec<u32>>>>,
    /// Narrow candidates to the EventIDs a detection pins (off only to prove it changes nothing).
    narrow_by_event_id: bool,
}

/// A value the hunter borrows (the CLI keeps its corpus) or owns (the reward keeps one hunter
/// for the life of the plugin).
enum Held<'a, T> {
    Borrowed(&'a T),
    Owned(Box<T>),
}

impl<T> Deref for Held<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        match self {
            Held::Borrowed(t) => t,
            Held::Owned(t) => t,
        }
    }
}

/// A base rule of a correlation: the rule, its prepared form and its matching events.
pub type BaseRule<'r> = (&'r Rule, &'r PreparedRule, &'r [u32]);

impl Hunter<'static> {
    /// A hunter that owns its corpus and mapping (the reward keeps one for its whole life).
    pub fn owning(corpus: Corpus, map: LogsourceMap, options: CompileOptions) -> Self {
        Self::with(Held::Owned(Box::new(corpus)), Held::Owned(Box::new(map)), options)
    }
}

impl<'a> Hunter<'a> {
    pub fn new(corpus: &'a Corpus, map: &'a LogsourceMap, options: CompileOptions) -> Self {
        Self::with(Held::Borrowed(corpus), Held::Borrowed(map), options)
    }

    fn with(corpus: Held<'a, Corpus>, map: Held<'a, LogsourceMap>, options: CompileOptions) -> Self {
        let candidates = map.entries().iter().map(|_| OnceLock::new()).collect();
        Hunter { corpus, map, options, candidates, narrow_by_event_id: true }
    }

    /// Per variant of mapping entry `entry`, the events it stands for; worked out the first time
    /// a rule of that logsource is prepared (in parallel when rules are, and not at all for the
    /// logsources no rule uses).
    fn variant_candidates(&self, entry: usize) -> &[Vec<u32>] {
        self.candidates[entry].get_or_init(|| {
            let entries = self.map.entries();
            entries[entry]
                .variants
                .iter()
                .map(|variant| {
                    // Entries may share a variant's conditions (file_access and file_rename: the
                    // Kernel-File provider, checked on every event): worked out once.
                    let done = entries.iter().zip(&self.candidates).find_map(|(other, lists)| {
                        let lists = lists.get()?;
                        other.variants.iter().position(|v| v.conditions == variant.conditions).map(|at| lists[at].clone())
                    });
                    done.unwrap_or_else(|| variant.candidates(&self.corpus))
                })
                .collect()
        })
    }

    /// The same hunter without EventID narrowing: every rule reads every candidate event of its
    /// logsource. Slower; exists so tests can show the narrowing never changes a result.
    pub fn without_event_id_narrowing(mut self) -> Self {
        self.narrow_by_event_id = false;
        self
    }

    pub fn corpus(&self) -> &Corpus {
        &self.corpus
    }

    pub fn logsources(&self) -> &LogsourceMap {
        &self.map
    }

    pub fn options(&self) -> &CompileOptions {
        &self.options
    }

    /// The events (ascending corpus indices) one detection rule matches, exactly as a hunt over
    /// this corpus reports them for a rule file holding only `rule`; or why the rule cannot run.
    pub fn match_rule(&self, rule: &Rule) -> Result<Vec<u32>, HuntError> {
        self.prepare(rule).map(|p| self.evaluate(&p))
    }

    /// Compiles `rule` for every variant of its logsource. An error says why the rule cannot run:
    /// its logsource has no mapping, or its detection does not compile.
    pub fn prepare(&self, rule: &Rule) -> Result<PreparedRule, HuntError> {
        let ls = &rule.logsource;
        let (p, c, s) = (ls.product.as_deref(), ls.category.as_deref(), ls.service.as_deref());
        let Some(entry_index) = self.map.lookup_index(p, c, s) else {
            return Err(HuntError::UnmappedLogsource {
                logsource: describe_logsource(p, c, s),
                mapping: self.map.origin.clone(),
                unknown: self.map.unknown_parts(p, c, s),
            });
        };
        let entry = &self.map.entries()[entry_index];
        let mut units: Vec<(usize, usize, CompiledRule)> = Vec::with_capacity(entry.variants.len());
        let mut narrowed = Vec::with_capacity(entry.variants.len());
        // The detection as compiled for the first variant that kept the rule's values, with the
        // field names it resolved: another such variant differs in field names only (Security
        // 4688 calls Image NewProcessName), so it re-keys that compile instead of compiling again.
        let mut unmapped: Option<(usize, Vec<(String, FieldKey)>)> = None;
        for (vi, variant) in entry.variants.iter().enumerate() {
            let rule = variant.map_values(rule);
            let kept_values = matches!(rule, Cow::Borrowed(_));
            let resolve = |name: &str| variant.resolve(&self.corpus, name);
            let rekeyed = match &unmapped {
                Some((unit, names)) if kept_values => rekeyed(&units[*unit].2, names, resolve),
                _ => None,
            };
            let compiled = match rekeyed {
                Some(compiled) => compiled,
                None => {
                    let mut names = Vec::new();
                    let compiled = compile(&rule, &self.options, &mut |name| {
                        let key = resolve(name);
                        names.push((name.to_string(), key));
                        key
                    })?;
                    if kept_values && unmapped.is_none() {
                        unmapped = Some((units.len(), names));
                    }
                    compiled
                }
            };
            // A detection that pins EventID lets the index skip every other bucket.
            let event_id = resolve("EventID");
            let pinned = if self.narrow_by_event_id { compiled.required_values(event_id) } else { None };
            narrowed.push(pinned.map(|ids| {
                let ids: Vec<String> = ids.iter().map(|id| id.trim().to_string()).collect();
                let by_id = self.corpus.select(|_, id| ids.iter().any(|want| want == id));
                intersect_sorted(&self.variant_candidates(entry_index)[vi], &by_id)
            }));
            units.push((entry_index, vi, compiled));
        }
        Ok(PreparedRule { units, narrowed })
    }

    /// The events (ascending) a unit of a prepared rule is evaluated on: its variant's
    /// candidates, narrowed to the EventIDs its detection pins.
    fn unit_candidates<'s>(&'s self, entry: usize, variant: usize, narrowed: &'s Option<Vec<u32>>) -> &'s [u32] {
        narrowed.as_deref().unwrap_or(&self.variant_candidates(entry)[variant])
    }

    /// The events (ascending corpus indices) a prepared rule matches.
    pub fn evaluate(&self, rule: &PreparedRule) -> Vec<u32> {
        self.evaluate_passed(rule, |_| None)
    }

    /// A literal index over `rules` (in order; `None` for a rule that did not compile), so that
    /// [`Hunter::evaluate_indexed`] runs each rule only on events that contain one of its
    /// literals. See [`crate::prefilter`].
    pub fn index<'r>(&self, rules: impl IntoIterator<Item = Option<&'r PreparedRule>>) -> RuleIndex {
        self.index_in(rules, &|n, build| (0..n).for_each(build))
    }

    /// [`Hunter::index`], building its automata through `parallel` (see [`Prefilter::new_in`]).
    pub fn index_in<'r>(&self, rules: impl IntoIterator<Item = Option<&'r PreparedRule>>, parallel: ParallelFor) -> RuleIndex {
        let mut offsets = Vec::new();
        // Each unit with the candidates it is evaluated on.
        let mut units: Vec<(&[u32], &CompiledRule)> = Vec::new();
        for rule in rules {
            offsets.push(units.len());
            units.extend(rule.iter().flat_map(|r| r.units.iter().zip(&r.narrowed).map(|((e, v, c), n)| (self.unit_candidates(*e, *v, n), c))));
        }
        let prefilter = Prefilter::new_in(units.iter().map(|(_, c)| *c), parallel);
        // Keyword literals are searched in every value of an event, so only in the events where
        // a unit with keyword literals reads its passes (the union of those units' candidates),
        // and there only in values as long as the shortest keyword of those units: most events
        // are read by one keyword rule for all Windows logs (mimikatz, 9 bytes and more), and
        // most values are shorter than that.
        let keyword_units = prefilter.keyword_units();
        let keyword_lengths = (!keyword_units.is_empty()).then(|| {
            let mut shortest = vec![usize::MAX; self.corpus.len()];
            for (unit, len) in keyword_units {
                for &event in units[unit].0 {
                    shortest[event as usize] = shortest[event as usize].min(len);
                }
            }
            shortest
        });
        RuleIndex { prefilter, offsets, keyword_lengths }
    }

    /// Runs the corpus events in `events` through `index` (all events: `0..corpus().len()`).
    pub fn scan(&self, index: &RuleIndex, events: Range<u32>) -> Passes {
        index.prefilter.scan(&self.corpus, events, index.keyword_lengths.as_deref())
    }

    /// [`Hunter::evaluate`] for the rule at `position` of the indexed rules, on only the
    /// candidates the index passed. Gives exactly `evaluate`'s result.
    pub fn evaluate_indexed(&self, rule: &PreparedRule, index: &RuleIndex, passes: &Passes, position: usize) -> Vec<u32> {
        let first = index.offsets[position];
        self.evaluate_passed(rule, |unit| passes.of(first + unit))
    }

    /// Evaluates each unit of `rule` on its candidates, or on those of them in `passed(unit)`
    /// when that gives a list (ascending).
    fn evaluate_passed<'p>(&self, rule: &PreparedRule, passed: impl Fn(usize) -> Option<&'p [u32]>) -> Vec<u32> {
        let mut out = Vec::new();
        let events = self.corpus.events();
        for (k, ((entry, variant, compiled), narrowed)) in rule.units.iter().zip(&rule.narrowed).enumerate() {
            let candidates = self.unit_candidates(*entry, *variant, narrowed);
            let matches = |i: &u32| compiled.matches(&events[*i as usize]);
            match passed(k) {
                None => out.extend(candidates.iter().copied().filter(matches)),
                // Walk the shorter list and look its events up in the longer one.
                Some(passed) if passed.len() <= candidates.len() => {
                    out.extend(passed.iter().copied().filter(|i| candidates.binary_search(i).is_ok() && matches(i)))
                }
                Some(passed) => out.extend(candidates.iter().copied().filter(|i| passed.binary_search(i).is_ok() && matches(i))),
            }
        }
        if rule.units.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
        out
    }

    /// The logsource variant of `rule` that selected event `index` (its renames say how the rule
    /// names the event's fields); `None` for an event none of its variants selects.
    fn variant_for(&self, rule: &PreparedRule, index: u32) -> Option<&crate::logsource::Variant> {
        rule.units
            .iter()
            .find(|(e, v, _)| self.variant_candidates(*e)[*v].binary_search(&index).is_ok())
            .map(|(e, v, _)| &self.map.entries()[*e].variants[*v])
    }

    /// The event key a Sigma field of `rule` reads on event `index`: the renames of the variant
    /// that selected the event.
    fn field_for_event(&self, rule: &PreparedRule, index: u32, sigma_field: &str) -> FieldKey {
        match self.variant_for(rule, index) {
            Some(v) => v.resolve(&self.corpus, sigma_field),
            None => self.corpus.field_key(sigma_field),
        }
    }

    /// The values (text) of Sigma field `sigma_field` on event `index`, as `rule` reads them
    /// (after its logsource's field renames: `Image` is 4688's `NewProcessName`).
    pub fn values_as_seen(&self, rule: Option<&PreparedRule>, index: u32, sigma_field: &str) -> Vec<&str> {
        let key = match rule {
            Some(r) => self.field_for_event(r, index, sigma_field),
            None => self.corpus.field_key(sigma_field),
        };
        self.corpus.event(index).values(key).map(|v| v.text()).collect()
    }

    /// Every field of event `index` under the name `rule` reads it by (the inverse of its
    /// variant's renames; other fields keep their event names), in the event's order, with all
    /// its values.
    pub fn event_as_seen(&self, rule: Option<&PreparedRule>, index: u32) -> Vec<(String, Vec<&str>)> {
        let variant = rule.and_then(|r| self.variant_for(r, index));
        let mut out: Vec<(String, Vec<&str>)> = Vec::new();
        for (key, value) in self.corpus.event(index).fields() {
            let event_name = self.corpus.table().name(*key);
            // Several Sigma names may map to one event field; the smallest is stable.
            let name = variant
                .and_then(|v| v.renames.iter().filter(|(_, to)| to.as_str() == event_name).map(|(from, _)| from.as_str()).min())
                .unwrap_or(event_name);
            match out.iter_mut().find(|(n, _)| n == name) {
                Some((_, values)) => values.push(value.text()),
                None => out.push((name.to_string(), vec![value.text()])),
            }
        }
        out
    }
    /// Runs every rule and correlation, serially. Matches come back in rule order, events
    /// ascending within a rule.
    pub fn hunt(&self, rules: &RuleSet) -> HuntOutcome {
        let prepared: Vec<Result<PreparedRule, HuntError>> = rules.rules.iter().map(|r| self.prepare(&r.rule)).collect();
        let index = self.index(prepared.iter().map(|p| p.as_ref().ok()));
        let passes = self.scan(&index, 0..self.corpus.len() as u32);
        let matches: Vec<Vec<u32>> =
            prepared.iter().enumerate().map(|(i, p)| p.as_ref().map(|p| self.evaluate_indexed(p, &index, &passes, i)).unwrap_or_default()).collect();
        self.finish(rules, &prepared, matches)
    }
}

/// The Sigma field names `rule`'s detection reads, unique, in the order they first appear
/// (keywords read every field and add none).
pub fn detection_fields(rule: &Rule) -> Vec<&str> {
    fn visit<'r>(body: &'r crate::detection::SearchBody, out: &mut Vec<&'r str>) {
        match body {
            crate::detection::SearchBody::AllOf(items) => {
                for field in items.iter().filter_map(|i| i.field.as_deref()) {
                    if !out.contains(&field) {
                        out.push(field);
                    }
                }
            }
            crate::detection::SearchBody::AnyOf(bodies) => bodies.iter().for_each(|b| visit(b, out)),
            crate::detection::SearchBody::Keyword(_) => {}
        }
    }
    let mut out = Vec::new();
    for search in &rule.detection.searches {
        visit(&search.body, &mut out);
    }
    out
}

/// The elements of two ascending lists that are in both.
fn intersect_sorted(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// `compiled` (whose resolver gave `names`) for a variant resolving field names with `resolve`;
/// `None` when two names it read as one field are two fields here (it must be compiled again).
fn rekeyed(compiled: &CompiledRule, names: &[(String, FieldKey)], resolve: impl Fn(&str) -> FieldKey) -> Option<CompiledRule> {
    let mut map: HashMap<FieldKey, FieldKey> = HashMap::with_capacity(names.len());
    for (name, from) in names {
        let to = resolve(name);
        if *map.entry(*from).or_insert(to) != to {
            return None;
        }
    }
    Some(compiled.with_fields(&|key| map.get(&key).copied().unwrap_or(key)))
}

/// A literal index over prepared rules: see [`Hunter::index`].
pub struct RuleIndex {
    prefilter: Prefilter,
    /// Per rule: the number of its first unit (compiled logsource variant) in the prefilter.
    offsets: Vec<usize>,
    /// Per corpus event: the shortest keyword literal searched in its values (`usize::MAX`: none;
    /// see [`Hunter::index_in`]); `None` when no unit has keyword literals.
    keyword_lengths: Option<Vec<usize>>,
}

impl RuleIndex {
    /// How many compiled units (rule × logsource variant) have a literal set, of how many.
    pub fn filtered_units(&self) -> (usize, usize) {
        (self.prefilter.filtered_units(), self.prefilter.units())
    }

    /// Heap bytes held by the index's automata.
    pub fn memory_usage(&self) -> usize {
        self.prefilter.memory_usage()
    }
}

/// A rule that could not run, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub file: String,
    pub title: String,
    pub reason: String,
}

/// What a hunt found: events per rule and per correlation (same order as the [`RuleSet`]).
#[derive(Debug, Default)]
pub struct HuntOutcome {
    pub rule_matches: Vec<Vec<u32>>,
    pub correlation_matches: Vec<Vec<u32>>,
    pub skipped: Vec<Skipped>,
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::json_events::load_json_bytes;

    pub(super) fn corpus(lines: &[String]) -> Corpus {
        let mut b = Corpus::builder();
        b.add(load_json_bytes("t.jsonl", lines.join("\n").as_bytes()));
        b.finish().0
    }

    pub(super) fn sysmon1(id: u64, image: &str, time: &str, user: &str) -> String {
        format!(
            r##"{{"Event":{{"System":{{"Channel":"Microsoft-Windows-Sysmon/Operational","EventID":1,"EventRecordID":{id},"TimeCreated":{{"#attributes":{{"SystemTime":"{time}"}}}}}},"EventData":{{"Image":"{image}","User":"{user}"}}}}}}"##
        )
    }

    pub(super) fn sec4688(id: u64, image: &str) -> String {
        format!(
            r##"{{"Event":{{"System":{{"Channel":"Security","EventID":"4688","EventRecordID":{id}}},"EventData":{{"NewProcessName":"{image}"}}}}}}"##
        )
    }

    pub(super) fn rules(text: &str) -> RuleSet {
        let mut set = RuleSet::default();
        set.add_file(text, "r.yml");
        set.apply_filters();
        assert!(set.errors.is_empty(), "{:?}", set.errors);
        set
    }

    pub(super) const WHOAMI: &str = "title: Whoami\nid: 11111111-1111-4111-8111-111111111111\nlogsource: {product: windows, category: process_creation}\ndetection:\n  sel:\n    Image|endswith: '\\whoami.exe'\n  condition: sel\n";

    #[test]
    fn candidates_are_worked_out_only_for_the_logsources_rules_use() {
        let c = corpus(&[sysmon1(1, "C:\\\\whoami.exe", "2020-01-01T00:00:00Z", "a"), sec4688(2, "C:\\\\whoami.exe")]);
        let map = LogsourceMap::builtin().unwrap();
        let h = Hunter::new(&c, &map, CompileOptions::default());
        let worked_out = |h: &Hunter| h.candidates.iter().filter(|c| c.get().is_some()).count();
        assert_eq!(worked_out(&h), 0, "nothing before a rule is prepared");
        let set = rules(WHOAMI);
        let prepared = h.prepare(&set.rules[0].rule).unwrap();
        assert_eq!(h.evaluate(&prepared).len(), 2);
        assert_eq!(worked_out(&h), 1, "only process_creation's entry");
        assert!(map.entries().len() > 10, "the built-in mapping has many logsources");
    }

    /// Two logsources with the same conditions (file_access, file_rename) get the same events,
    /// worked out once.
    #[test]
    fn logsources_with_the_same_conditions_share_their_candidates() {
        let kernel_file = |id: u64| {
            format!(
                r##"{{"Event":{{"System":{{"Provider":{{"#attributes":{{"Name":"Microsoft-Windows-Kernel-File"}}}},"Channel":"Microsoft-Windows-Kernel-File/Analytic","EventID":12,"EventRecordID":{id}}},"EventData":{{"FileName":"c:\\x"}}}}}}"##
            )
        };
        let c = corpus(&[sysmon1(1, "C:\\\\whoami.exe", "2020-01-01T00:00:00Z", "a"), kernel_file(2), sec4688(3, "x"), kernel_file(4)]);
        let map = LogsourceMap::builtin().unwrap();
        let h = Hunter::new(&c, &map, CompileOptions::default());
        let access = map.lookup_index(Some("windows"), Some("file_access"), None).unwrap();
        let rename = map.lookup_index(Some("windows"), Some("file_rename"), None).unwrap();
        assert_eq!(map.entries()[access].variants[0].conditions, map.entries()[rename].variants[0].conditions);
        assert_eq!(h.variant_candidates(access), [vec![1, 3]]);
        assert_eq!(h.variant_candidates(rename), [vec![1, 3]]);
        let process = map.lookup_index(Some("windows"), Some("process_creation"), None).unwrap();
        assert_eq!(h.variant_candidates(process), [vec![0], vec![2]]);
    }

    #[test]
    fn process_creation_matches_sysmon_and_renamed_4688_only() {
        let c = corpus(&[
            sysmon1(1, "C:\\\\Windows\\\\System32\\\\whoami.exe", "2020-01-01T00:00:00Z", "a"),
            sec4688(2, "C:\\\\Windows\\\\System32\\\\WHOAMI.EXE"),
            sec4688(3, "C:\\\\Windows\\\\System32\\\\cmd.exe"),
            // Right image, wrong logsource: a Sysmon 3 event must not match a process_creation rule.
            r##"{"Event":{"System":{"Channel":"Microsoft-Windows-Sysmon/Operational","EventID":3,"EventRecordID":4},"EventData":{"Image":"C:\\whoami.exe"}}}"##.to_string(),
        ]);
        let map = LogsourceMap::builtin().unwrap();
        let h = Hunter::new(&c, &map, CompileOptions::default());
        let out = h.hunt(&rules(WHOAMI));
        let ids: Vec<u64> = out.rule_matches[0].iter().map(|&i| c.event(i).record_id).collect();
        assert_eq!(ids, [1, 2]);
    }

    /// A variant that only renames fields gets the first variant's compile re-keyed: the same
    /// detection a compile of its own gives, field references and keywords included; a rule
    /// naming two fields the variants tell apart differently is compiled again.
    #[test]
    fn renaming_variants_reuse_the_first_compile() {
        let c = corpus(&[sysmon1(1, "C:\\\\x\\\\whoami.exe", "2020-01-01T00:00:00Z", "a"), sec4688(2, "C:\\\\x\\\\whoami.exe")]);
        let map = LogsourceMap::builtin().unwrap();
        let h = Hunter::new(&c, &map, CompileOptions::default());
        let entry = map.lookup_index(Some("windows"), Some("process_creation"), None).unwrap();
        let variants = &map.entries()[entry].variants;
        let detections = [
            "  sel:\n    Image|endswith: '\\whoami.exe'\n    ParentImage|fieldref: Image\n  keywords:\n    - 'x'\n  condition: sel or keywords",
            "  sel:\n    Image|endswith: '\\whoami.exe'\n    CommandLine|contains|all: ['a', 'b']\n  filter:\n    User: 'SYSTEM'\n  condition: sel and not filter",
            // Image and NewProcessName are two fields for Sysmon, one for 4688.
            "  sel:\n    Image: 'a'\n    NewProcessName: 'b'\n  condition: sel",
        ];
        for (i, detection) in detections.into_iter().enumerate() {
            let set = rules(&format!("title: t\nlogsource: {{product: windows, category: process_creation}}\ndetection:\n{detection}\n"));
            let rule = &set.rules[0].rule;
            let prepared = h.prepare(rule).unwrap();
            assert_eq!(prepared.units.len(), variants.len());
            for (unit, variant) in prepared.units.iter().zip(variants) {
                let own = compile(&variant.map_values(rule), h.options(), &mut |n| variant.resolve(&c, n)).unwrap();
                assert_eq!(format!("{:?}", unit.2), format!("{own:?}"), "{detection}");
            }
            // The keyword `x` matches both events (in their image paths).
            assert_eq!(h.evaluate(&prepared), if i == 0 { vec![0, 1] } else { vec![] }, "{detection}");
        }
    }

    /// Keywords are searched only in values at least as long as the shortest keyword of the rules
    /// reading the event: a value exactly as long as a keyword still matches it, per event.
    #[test]
    fn keywords_are_searched_in_values_as_long_as_the_event_s_shortest_keyword() {
        let c = corpus(&[
            sysmon1(1, "whoami", "2020-01-01T00:00:00Z", "a"),
            sysmon1(2, "whoam", "2020-01-01T00:00:01Z", "net"),
            sec4688(3, "net"),
            sec4688(4, "whoami"),
            // A network connection: read by rule 2 only (keyword `tcp`, 3 bytes).
            r##"{"Event":{"System":{"Channel":"Microsoft-Windows-Sysmon/Operational","EventID":3,"EventRecordID":5},"EventData":{"Protocol":"tcp"}}}"##.to_string(),
        ]);
        let text = |n: usize, category: &str, keyword: &str| {
            format!(
                "title: k{n}\nlogsource: {{product: windows, category: {category}}}\ndetection:\n  keywords:\n    - '{keyword}'\n  condition: keywords\n"
            )
        };
        let texts = [text(0, "process_creation", "WHOAMI"), text(1, "process_creation", "net"), text(2, "network_connection", "tcp")];
        let set = rules(&texts.join("---\n"));
        let map = LogsourceMap::builtin().unwrap();
        let h = Hunter::new(&c, &map, CompileOptions::default());
        let prepared: Vec<PreparedRule> = set.rules.iter().map(|r| h.prepare(&r.rule).unwrap()).collect();
        let index = h.index(prepared.iter().map(Some));
        assert_eq!(index.keyword_lengths.as_deref(), Some(&[3, 3, 3, 3, 3][..]));
        // Without rule 1, process creations search only values of 6 bytes or more.
        let two = h.index([Some(&prepared[0]), Some(&prepared[2])]);
        assert_eq!(two.keyword_lengths.as_deref(), Some(&[6, 6, 6, 6, 3][..]));
        let passes = h.scan(&two, 0..c.len() as u32);
        let ids = |events: &[u32]| events.iter().map(|&i| c.event(i).record_id).collect::<Vec<_>>();
        assert_eq!(ids(&h.evaluate_indexed(&prepared[0], &two, &passes, 0)), [1, 4]);
        assert_eq!(ids(&h.evaluate_indexed(&prepared[2], &two, &passes, 1)), [5]);
        let passes = h.scan(&index, 0..c.len() as u32);
        let all: Vec<Vec<u64>> = prepared.iter().enumerate().map(|(i, p)| ids(&h.evaluate_indexed(p, &index, &passes, i))).collect();
        assert_eq!(all, [vec![1, 4], vec![2, 3], vec![5]]);
    }

    /// The literal index only skips events a rule cannot match: for rules whose literal sets come
    /// from `and`, `or`, keywords, `cased`, `all` and absent fields, and rules without one (`not`,
    /// regex, a non-ASCII cased value), one indexed hunt gives each rule's unindexed result.
    #[test]
    fn the_literal_index_never_changes_what_a_rule_matches() {
        let c = corpus(&[
            sysmon1(1, "C:\\\\Windows\\\\System32\\\\whoami.exe", "2020-01-01T00:00:00Z", "NT AUTHORITY\\\\SYSTEM"),
            sec4688(2, "C:\\\\Windows\\\\System32\\\\WHOAMI.EXE"),
            sysmon1(3, "C:\\\\Tools\\\\Äpfel.exe", "2020-01-01T00:00:01Z", "admin"),
            sysmon1(4, "C:\\\\Windows\\\\cmd.exe", "2020-01-01T00:00:02Z", "Administrator"),
            sec4688(5, "C:\\\\x\\\\net.exe"),
            // Not a process creation: no keyword rule reads it, so its values are not searched
            // for keywords (and no rule here may match it).
            r##"{"Event":{"System":{"Channel":"Microsoft-Windows-Sysmon/Operational","EventID":3,"EventRecordID":6},"EventData":{"Image":"C:\\whoami.exe"}}}"##.to_string(),
        ]);
        let rule = |n: usize, detection: &str| {
            format!("title: r{n}\nlogsource: {{product: windows, category: process_creation}}\ndetection:\n{detection}\n")
        };
        let texts = [
            rule(0, "  sel:\n    Image|endswith: '\\whoami.exe'\n  condition: sel"),
            rule(1, "  sel:\n    Image|endswith: 'cmd.exe'\n  condition: not sel"),
            rule(2, "  keywords:\n    - 'WHOAMI'\n  condition: keywords"),
            rule(3, "  sel:\n    Image|cased|contains: 'Äpfel'\n  condition: sel"),
            rule(4, "  sel:\n    Image|re: '.*\\\\(cmd|net)\\.exe'\n  sel2:\n    User|contains: 'ADM'\n  condition: sel and sel2"),
            rule(5, "  sel:\n    Image|re: '.*net.*'\n  sel2:\n    User|contains: 'adm'\n  condition: sel or sel2"),
            rule(6, "  sel:\n    NoSuchField: 'x'\n  condition: sel"),
            rule(7, "  sel:\n    Image|contains|all: ['windows', 'system32']\n  condition: sel"),
            rule(8, "  sel:\n    Image|cased|endswith: '\\WHOAMI.EXE'\n  condition: sel"),
            rule(9, "  sel:\n    Image|endswith: '\\whoami.exe'\n  condition: sel"),
            // Literals longer than the index keeps (it searches their first 24 bytes): one found
            // whole, and one whose first 24 bytes occur in events it does not match.
            rule(10, "  sel:\n    Image|contains: 'windows\\system32\\whoami.exe'\n  condition: sel"),
            rule(11, "  sel:\n    Image|endswith: 'c:\\windows\\system32\\whoami.com'\n  condition: sel"),
        ];
        let set = rules(&texts.join("---\n"));
        assert_eq!(set.rules.len(), texts.len());
        let map = LogsourceMap::builtin().unwrap();
        let h = Hunter::new(&c, &map, CompileOptions::default());
        let prepared: Vec<PreparedRule> = set.rules.iter().map(|r| h.prepare(&r.rule).unwrap()).collect();
        let index = h.index(prepared.iter().map(Some));
        // Two variants per rule; rules 1, 3, 4 (the Sysmon side has a literal via sel2 only),
        // 5 have none on some variant.
        let (filtered, units) = index.filtered_units();
        assert_eq!(units, 2 * texts.len());
        assert!(filtered >= 12, "only {filtered} of {units} units have literals");
        // Scanned in two ranges, as the CLI does in parallel.
        // Rule 2's keyword `whoami` (6 bytes) is searched in process creations only.
        let m = usize::MAX;
        assert_eq!(index.keyword_lengths.as_deref(), Some(&[6, 6, 6, 6, 6, m][..]));
        let mut passes = h.scan(&index, 0..2);
        passes.append(h.scan(&index, 2..c.len() as u32));
        let ids = |events: &[u32]| events.iter().map(|&i| c.event(i).record_id).collect::<Vec<_>>();
        let indexed: Vec<Vec<u64>> = prepared.iter().enumerate().map(|(i, p)| ids(&h.evaluate_indexed(p, &index, &passes, i))).collect();
        let plain: Vec<Vec<u64>> = prepared.iter().map(|p| ids(&h.evaluate(p))).collect();
        assert_eq!(indexed, plain);
        let expected: [&[u64]; 12] = [&[1, 2], &[1, 2, 3, 5], &[1, 2], &[3], &[4], &[3, 4, 5], &[], &[1, 2], &[2], &[1, 2], &[1, 2], &[]];
        assert_eq!(indexed, expected.map(|e| e.to_vec()).to_vec());
        assert_eq!(h.hunt(&set).rule_matches.iter().map(|m| ids(m)).collect::<Vec<_>>(), plain);
    }

    /// Sysmon's IntegrityLevel "High" is 4688's MandatoryLabel S-1-16-12288 (sigma-spec.md I3).
    #[test]
    fn integrity_level_values_are_mapped_to_mandatory_label_sids_on_4688() {
        let sec = |id: u64, label: &str| {
            format!(
                r##"{{"Event":{{"System":{{"Channel":"Security","EventID":4688,"EventRecordID":{id}}},"EventData":{{"NewProcessName":"C:\\x\\whoami.exe","MandatoryLabel":"{label}"}}}}}}"##
            )
        };
        let c = corpus(&[
            r##"{"Event":{"System":{"Channel":"Microsoft-Windows-Sysmon/Operational","EventID":1,"EventRecordID":1},"EventData":{"Image":"C:\\x\\whoami.exe","IntegrityLevel":"High"}}}"##.to_string(),
            sec(2, "S-1-16-12288"),
            sec(3, "S-1-16-8192"),
            r##"{"Event":{"System":{"Channel":"Microsoft-Windows-Sysmon/Operational","EventID":1,"EventRecordID":4},"EventData":{"Image":"C:\\x\\whoami.exe","IntegrityLevel":"Medium"}}}"##.to_string(),
        ]);
        let map = LogsourceMap::builtin().unwrap();
        let h = Hunter::new(&c, &map, CompileOptions::default());
        let set = rules(
            "title: Elevated whoami\nlogsource: {product: windows, category: process_creation}\ndetection:\n  sel:\n    Image|endswith: '\\whoami.exe'\n    IntegrityLevel: high\n  condition: sel\n",
        );
        let out = h.hunt(&set);
        let ids: Vec<u64> = out.rule_matches[0].iter().map(|&i| c.event(i).record_id).collect();
        assert_eq!(ids, [1, 2]);
        // With a modifier the value is not an exact level, so it is left alone (and 4688 cannot match it).
        let set = rules(
            "title: T\nlogsource: {product: windows, category: process_creation}\ndetection:\n  sel:\n    IntegrityLevel|contains: Hig\n  condition: sel\n",
        );
        let ids: Vec<u64> = h.hunt(&set).rule_matches[0].iter().map(|&i| c.event(i).record_id).collect();
        assert_eq!(ids, [1]);
    }
    #[test]
    fn a_matched_event_is_shown_with_the_field_names_the_rule_reads() {
        let c = corpus(&[sysmon1(1, "C:\\\\x\\\\whoami.exe", "2020-01-01T00:00:00Z", "a"), sec4688(2, "C:\\\\x\\\\whoami.exe")]);
        let map = LogsourceMap::builtin().unwrap();
        let h = Hunter::new(&c, &map, CompileOptions::default());
        let set = rules(WHOAMI);
        assert_eq!(detection_fields(&set.rules[0].rule), ["Image"]);
        let prepared = h.prepare(&set.rules[0].rule).unwrap();
        assert_eq!(h.evaluate(&prepared), [0, 1]);
        // The 4688 event's NewProcessName is the rule's Image.
        assert_eq!(h.values_as_seen(Some(&prepared), 1, "Image"), ["C:\\x\\whoami.exe"]);
        let seen = h.event_as_seen(Some(&prepared), 1);
        assert!(seen.iter().any(|(n, v)| n == "Image" && v == &["C:\\x\\whoami.exe"]), "{seen:?}");
        assert!(!seen.iter().any(|(n, _)| n == "NewProcessName"), "{seen:?}");
        // Without a rule: the event's own names.
        assert!(h.event_as_seen(None, 1).iter().any(|(n, _)| n == "NewProcessName"));
    }

    #[test]
    fn event_id_pinned_by_the_detection_narrows_candidates_without_changing_results() {
        let c = corpus(&[
            sec4688(1, "a"),
            r##"{"Event":{"System":{"Channel":"Security","EventID":4624,"EventRecordID":2},"EventData":{"LogonType":"3"}}}"##.to_string(),
            r##"{"Event":{"System":{"Channel":"Security","EventID":"4625","EventRecordID":3},"EventData":{"LogonType":"3"}}}"##.to_string(),
        ]);
        let map = LogsourceMap::builtin().unwrap();
        let h = Hunter::new(&c, &map, CompileOptions::default());
        let set = rules(
            "title: Logons\nlogsource: {product: windows, service: security}\ndetection:\n  sel:\n    EventID: [4624, 4625]\n    LogonType: 3\n  not4625:\n    EventID: 4625\n  condition: sel and not not4625\n",
        );
        let prepared = h.prepare(&set.rules[0].rule).unwrap();
        assert_eq!(prepared.narrowed[0].as_deref(), Some(&[1u32, 2][..]));
        let ids: Vec<u64> = h.evaluate(&prepared).iter().map(|&i| c.event(i).record_id).collect();
        assert_eq!(ids, [2]);
    }

    #[test]
    fn unmapped_logsource_is_skipped_with_a_reason() {
        let c = corpus(&[sysmon1(1, "x", "2020-01-01T00:00:00Z", "a")]);
        let map = LogsourceMap::builtin().unwrap();
        let h = Hunter::new(&c, &map, CompileOptions::default());
        let set = rules("title: L\nlogsource: {product: linux, category: process_creation}\ndetection:\n  sel:\n    Image: x\n  condition: sel\n");
        let out = h.hunt(&set);
        assert!(out.rule_matches[0].is_empty());
        assert_eq!(out.skipped.len(), 1);
        assert!(out.skipped[0].reason.contains("product=linux category=process_creation"), "{}", out.skipped[0].reason);
    }

    #[test]
    fn filters_apply_to_the_rules_they_name() {
        let c = corpus(&[
            sysmon1(1, "C:\\\\a\\\\whoami.exe", "2020-01-01T00:00:00Z", "alice"),
            sysmon1(2, "C:\\\\b\\\\whoami.exe", "2020-01-01T00:00:00Z", "bob"),
        ]);
        let map = LogsourceMap::builtin().unwrap();
        let h = Hunter::new(&c, &map, CompileOptions::default());
        let text = format!(
            "{WHOAMI}---\ntitle: Not bob\nlogsource: {{product: windows, category: process_creation}}\nfilter:\n  rules: [11111111-1111-4111-8111-111111111111]\n  selection:\n    User: bob\n  condition: not selection\n"
        );
        let set = rules(&text);
        let out = h.hunt(&set);
        let ids: Vec<u64> = out.rule_matches[0].iter().map(|&i| c.event(i).record_id).collect();
        assert_eq!(ids, [1]);
    }
}
