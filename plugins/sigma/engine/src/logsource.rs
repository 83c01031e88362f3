//! Which events a Sigma `logsource` stands for, read from a mapping file
//! (`configs/windows-logsources.yml`, embedded as the default; users may pass their own).
//!
//! An entry maps an exact (product, category, service) triple to one or more [`Variant`]s. A
//! variant is a set of conditions on event fields (Channel, EventID, EventType, Provider_Name, …)
//! plus Sigma-to-event field renames; a rule is compiled once per variant with that variant's
//! renames, and evaluated only on the events the variant's conditions select. process_creation
//! thus runs as "Sysmon 1 with Sysmon names" OR "Security 4688 with Image→NewProcessName, …".
//!
//! A logsource with no entry is *not* run on every event (that would make generic rules match
//! everything, sigma-spec.md H1): the hunt skips such rules and says why.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use crate::corpus::{Buckets, Corpus};
use crate::detection::{Item, Modifier, RawKind, SearchBody};
use crate::event::FieldKey;
use crate::rule::Rule;
use crate::yaml::{Node, NodeValue, parse_stream};

/// The mapping shipped with SigmaForge.
pub const DEFAULT_MAPPING: &str = include_str!("../../../../configs/windows-logsources.yml");
/// Where [`DEFAULT_MAPPING`] comes from, for messages.
pub const DEFAULT_MAPPING_ORIGIN: &str = "configs/windows-logsources.yml (built in)";

/// A problem in a mapping file, located where possible.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappingError {
    pub origin: String,
    pub line: Option<u32>,
    pub column: Option<u32>,
    pub message: String,
}

impl fmt::Display for MappingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.origin, self.message),
            _ => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

impl std::error::Error for MappingError {}

/// One condition of a variant: the event field must have one of `values` (case-insensitive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldCondition {
    pub field: String,
    /// Lowercased and trimmed.
    pub values: Vec<String>,
}

/// One kind of event a logsource stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variant {
    pub name: String,
    pub conditions: Vec<FieldCondition>,
    /// Sigma field name → event field name.
    pub renames: HashMap<String, String>,
    /// Sigma field name → (lower-cased rule value → event value): values that this kind of
    /// event spells differently (4688's MandatoryLabel holds the SID where Sysmon's
    /// IntegrityLevel holds "High").
    pub value_maps: HashMap<String, HashMap<String, String>>,
}

/// The variants of one logsource triple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappingEntry {
    pub product: Option<String>,
    pub category: Option<String>,
    pub service: Option<String>,
    pub variants: Vec<Variant>,
}

impl MappingEntry {
    /// `product=windows category=process_creation` style, for messages.
    pub fn describe(&self) -> String {
        describe_logsource(self.product.as_deref(), self.category.as_deref(), self.service.as_deref())
    }
}

/// Formats a logsource triple for messages.
pub fn describe_logsource(product: Option<&str>, category: Option<&str>, service: Option<&str>) -> String {
    let parts: Vec<String> =
        [("product", product), ("category", category), ("service", service)].into_iter().filter_map(|(k, v)| v.map(|v| format!("{k}={v}"))).collect();
    if parts.is_empty() { "(empty logsource)".into() } else { parts.join(" ") }
}

/// A whole mapping file.
#[derive(Clone, Debug)]
pub struct LogsourceMap {
    pub origin: String,
    entries: Vec<MappingEntry>,
}

impl LogsourceMap {
    /// The built-in mapping.
    pub fn builtin() -> Result<LogsourceMap, MappingError> {
        LogsourceMap::parse(DEFAULT_MAPPING, DEFAULT_MAPPING_ORIGIN)
    }

    pub fn entries(&self) -> &[MappingEntry] {
        &self.entries
    }

    /// The entry for a rule's logsource: same product, category and service (compared without
    /// case; an absent key only matches an absent key).
    pub fn lookup(&self, product: Option<&str>, category: Option<&str>, service: Option<&str>) -> Option<&MappingEntry> {
        self.lookup_index(product, category, service).map(|i| &self.entries[i])
    }

    /// The (Channel, EventID) index buckets that rules with these logsources can read: each
    /// variant's channels, with its EventIDs when it names some. `None` when one of them can
    /// read any channel. Other conditions of a variant (a provider name) are not part of a
    /// bucket, so the buckets may hold events no variant selects, never the reverse.
    pub fn buckets_of<'r>(&self, logsources: impl IntoIterator<Item = &'r crate::rule::Logsource>) -> Option<Buckets> {
        let mut seen = vec![false; self.entries.len()];
        let mut out = Buckets::default();
        for ls in logsources {
            let Some(i) = self.lookup_index(ls.product.as_deref(), ls.category.as_deref(), ls.service.as_deref()) else { continue };
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            for variant in &self.entries[i].variants {
                let channel = variant.conditions.iter().find(|c| c.field == "Channel")?;
                let event_ids = variant.conditions.iter().find(|c| c.field == "EventID").map(|c| c.values.as_slice());
                for name in &channel.values {
                    out.add(name, event_ids);
                }
            }
        }
        Some(out)
    }

    /// Like [`LogsourceMap::lookup`], giving the entry's position in [`LogsourceMap::entries`].
    pub fn lookup_index(&self, product: Option<&str>, category: Option<&str>, service: Option<&str>) -> Option<usize> {
        let same = |a: &Option<String>, b: Option<&str>| match (a.as_deref(), b) {
            (None, None) => true,
            (Some(x), Some(y)) => x.eq_ignore_ascii_case(y.trim()),
            _ => false,
        };
        self.entries.iter().position(|e| same(&e.product, product) && same(&e.category, category) && same(&e.service, service))
    }

    /// Why a logsource has no entry: each of its values (product, category, service) that no
    /// entry uses for that key, with the nearest values that key does have. When every value is
    /// known but the combination is not mapped, one [`UnknownLogsource`] with `key: None` names
    /// the nearest mapped combinations instead. Empty when the logsource is mapped.
    pub fn unknown_parts(&self, product: Option<&str>, category: Option<&str>, service: Option<&str>) -> Vec<UnknownLogsource> {
        if self.lookup_index(product, category, service).is_some() {
            return Vec::new();
        }
        /// Reads one logsource key (product, category or service) of a mapping entry.
        type Pick = fn(&MappingEntry) -> &Option<String>;
        fn known(entries: &[MappingEntry], pick: Pick) -> Vec<&str> {
            let mut v: Vec<&str> = entries.iter().filter_map(|e| pick(e).as_deref()).collect();
            v.sort_unstable();
            v.dedup();
            v
        }
        let mut out = Vec::new();
        let keys: [(&'static str, Option<&str>, Pick); 3] =
            [("product", product, |e| &e.product), ("category", category, |e| &e.category), ("service", service, |e| &e.service)];
        for (key, value, pick) in keys {
            let Some(value) = value else { continue };
            let values = known(&self.entries, pick);
            if !values.iter().any(|k| k.eq_ignore_ascii_case(value.trim())) {
                out.push(UnknownLogsource { key: Some(key), value: value.to_string(), nearest: nearest(value, &values) });
            }
        }
        if out.is_empty() {
            let described: Vec<String> = self.entries.iter().map(MappingEntry::describe).collect();
            let candidates: Vec<&str> = described.iter().map(String::as_str).collect();
            out.push(UnknownLogsource {
                key: None,
                value: describe_logsource(product, category, service),
                nearest: nearest(&out_key(product, category, service), &candidates),
            });
        }
        out
    }

    /// Parses a mapping file.
    pub fn parse(text: &str, origin: &str) -> Result<LogsourceMap, MappingError> {
        let err = |node: Option<&Node>, message: String| MappingError {
            origin: origin.to_string(),
            line: node.map(|n| n.pos.line),
            column: node.map(|n| n.pos.column),
            message,
        };
        let stream = parse_stream(text);
        if let Some(e) = stream.error {
            return Err(MappingError {
                origin: origin.to_string(),
                line: e.pos.map(|p| p.line),
                column: e.pos.map(|p| p.column),
                message: format!("YAML error: {}", e.message),
            });
        }
        let [root] = stream.documents.as_slice() else {
            return Err(err(None, format!("expected one YAML document, found {}", stream.documents.len())));
        };
        match root.get("version").and_then(|v| v.scalar_text()) {
            Some(v) if v == "1" => {}
            Some(v) => return Err(err(root.get("version"), format!("unsupported mapping version {v} (this SigmaForge reads version 1)"))),
            None => return Err(err(Some(root), "missing `version: 1`".into())),
        }
        let Some(NodeValue::Seq(items)) = root.get("logsources").map(|n| &n.value) else {
            return Err(err(Some(root), "missing `logsources:` list".into()));
        };
        let mut entries: Vec<MappingEntry> = Vec::new();
        for item in items {
            let logsource = item.get("logsource").ok_or_else(|| err(Some(item), "entry without `logsource:`".into()))?;
            if logsource.as_map().is_none() {
                return Err(err(Some(logsource), format!("`logsource` must be a map, not {}", logsource.kind_name())));
            }
            let key = |k: &str| -> Result<Option<String>, MappingError> {
                match logsource.get(k) {
                    None => Ok(None),
                    Some(n) => n.scalar_text().map(Some).ok_or_else(|| err(Some(n), format!("`{k}` must be a string"))),
                }
            };
            let (product, category, service) = (key("product")?, key("category")?, key("service")?);
            let variants = match item.get("variants") {
                Some(Node { value: NodeValue::Seq(vs), .. }) => {
                    if vs.is_empty() {
                        return Err(err(Some(item), "`variants` is empty".into()));
                    }
                    vs.iter()
                        .enumerate()
                        .map(|(i, v)| {
                            let name = v.get("name").and_then(|n| n.scalar_text()).unwrap_or_else(|| format!("variant {}", i + 1));
                            parse_variant(v, name, &err)
                        })
                        .collect::<Result<Vec<_>, _>>()?
                }
                Some(other) => return Err(err(Some(other), "`variants` must be a list".into())),
                None => vec![parse_variant(item, "default".into(), &err)?],
            };
            let entry = MappingEntry { product, category, service, variants };
            if entries.iter().any(|e| (&e.product, &e.category, &e.service) == (&entry.product, &entry.category, &entry.service)) {
                return Err(err(Some(logsource), format!("logsource {} is mapped twice", entry.describe())));
            }
            entries.push(entry);
        }
        Ok(LogsourceMap { origin: origin.to_string(), entries })
    }
}

/// A logsource value (or combination, `key: None`) the mapping does not know, and the nearest
/// ones it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownLogsource {
    pub key: Option<&'static str>,
    pub value: String,
    pub nearest: Vec<String>,
}

impl fmt::Display for UnknownLogsource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.key {
            Some(key) => write!(f, "unknown logsource {key} '{}'", self.value)?,
            None => write!(f, "no mapping for the logsource combination {}", self.value)?,
        }
        match self.nearest.as_slice() {
            [] => Ok(()),
            [one] => write!(f, " (did you mean {one}?)"),
            many => write!(f, " (did you mean {}?)", many.join(" or ")),
        }
    }
}

/// `product=windows category=x` with the parts as they would print in a mapping entry.
fn out_key(product: Option<&str>, category: Option<&str>, service: Option<&str>) -> String {
    let lower = |v: Option<&str>| v.map(|v| v.trim().to_lowercase());
    describe_logsource(lower(product).as_deref(), lower(category).as_deref(), lower(service).as_deref())
}

/// The values of `known` closest to `value` by edit distance (case-insensitive; the ties at the
/// smallest distance, at most three), only when close enough to be a plausible typo (distance at
/// most a third of the longer word, at least 2).
fn nearest(value: &str, known: &[&str]) -> Vec<String> {
    let value = value.trim().to_lowercase();
    let mut scored: Vec<(usize, &str)> = known
        .iter()
        .map(|k| (edit_distance(&value, &k.to_lowercase()), *k))
        .filter(|(d, k)| *d <= (value.chars().count().max(k.chars().count()) / 3).max(2))
        .collect();
    scored.sort();
    let best = scored.first().map_or(0, |(d, _)| *d);
    scored.into_iter().take_while(|(d, _)| *d == best).take(3).map(|(_, k)| k.to_string()).collect()
}

/// Levenshtein distance over chars (short words only: logsource names).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb { prev } else { 1 + prev.min(cur).min(row[j]) };
            prev = cur;
        }
    }
    row[b.len()]
}

fn parse_variant(node: &Node, name: String, err: &dyn Fn(Option<&Node>, String) -> MappingError) -> Result<Variant, MappingError> {
    let mut conditions = Vec::new();
    match node.get("conditions") {
        Some(c) => {
            let map = c.as_map().ok_or_else(|| err(Some(c), "`conditions` must be a map of field: value(s)".into()))?;
            for entry in map {
                let values = match &entry.value.value {
                    NodeValue::Seq(items) => items
                        .iter()
                        .map(|v| v.scalar_text().ok_or_else(|| err(Some(v), format!("values of `{}` must be scalars", entry.key))))
                        .collect::<Result<Vec<_>, _>>()?,
                    _ => vec![entry.value.scalar_text().ok_or_else(|| err(Some(&entry.value), format!("`{}` needs a value", entry.key)))?],
                };
                let values = values.into_iter().map(|v| v.trim().to_lowercase()).collect();
                conditions.push(FieldCondition { field: entry.key.clone(), values });
            }
        }
        None => return Err(err(Some(node), "entry without `conditions:` (write `conditions: {}` for every event)".into())),
    }
    let mut renames = HashMap::new();
    if let Some(f) = node.get("fields") {
        let map = f.as_map().ok_or_else(|| err(Some(f), "`fields` must be a map of Sigma field: event field".into()))?;
        for entry in map {
            let target =
                entry.value.scalar_text().ok_or_else(|| err(Some(&entry.value), format!("rename of `{}` must be a field name", entry.key)))?;
            renames.insert(entry.key.clone(), target);
        }
    }
    let mut value_maps = HashMap::new();
    if let Some(v) = node.get("values") {
        let map = v.as_map().ok_or_else(|| err(Some(v), "`values` must be a map of Sigma field: {rule value: event value}".into()))?;
        for entry in map {
            let inner = entry
                .value
                .as_map()
                .ok_or_else(|| err(Some(&entry.value), format!("`values` of `{}` must be a map of rule value: event value", entry.key)))?;
            let mut pairs = HashMap::new();
            for pair in inner {
                let to = pair
                    .value
                    .scalar_text()
                    .ok_or_else(|| err(Some(&pair.value), format!("the event value for `{}: {}` must be a scalar", entry.key, pair.key)))?;
                pairs.insert(pair.key.to_lowercase(), to);
            }
            value_maps.insert(entry.key.clone(), pairs);
        }
    }
    Ok(Variant { name, conditions, renames, value_maps })
}

impl Variant {
    /// `rule` with the values this variant spells differently replaced (see `value_maps`).
    /// Only exact-match items (no modifiers, or only `cased`) are mapped: a `contains: High`
    /// has no SID counterpart. Borrowed when nothing changes.
    pub fn map_values<'r>(&self, rule: &'r Rule) -> Cow<'r, Rule> {
        fn visit(body: &mut SearchBody, maps: &HashMap<String, HashMap<String, String>>, changed: &mut bool) {
            match body {
                SearchBody::AllOf(items) => items.iter_mut().for_each(|i| map_item(i, maps, changed)),
                SearchBody::AnyOf(bodies) => bodies.iter_mut().for_each(|b| visit(b, maps, changed)),
                SearchBody::Keyword(_) => {}
            }
        }
        fn map_item(item: &mut Item, maps: &HashMap<String, HashMap<String, String>>, changed: &mut bool) {
            let Some(map) = item.field.as_deref().and_then(|f| maps.get(f)) else { return };
            if !item.modifiers.iter().all(|m| matches!(m, Modifier::Cased)) {
                return;
            }
            for v in &mut item.values {
                if v.kind == RawKind::String
                    && let Some(to) = map.get(&v.text.to_lowercase())
                {
                    v.text = to.clone();
                    *changed = true;
                }
            }
        }
        if self.value_maps.is_empty() {
            return Cow::Borrowed(rule);
        }
        let mut mapped = rule.clone();
        let mut changed = false;
        for search in &mut mapped.detection.searches {
            visit(&mut search.body, &self.value_maps, &mut changed);
        }
        if changed { Cow::Owned(mapped) } else { Cow::Borrowed(rule) }
    }

    /// The event field a Sigma field name means for this variant.
    pub fn event_field<'a>(&'a self, sigma_field: &'a str) -> &'a str {
        self.renames.get(sigma_field).map_or(sigma_field, String::as_str)
    }

    /// The key of a Sigma field in `corpus` for this variant (renames applied).
    pub fn resolve(&self, corpus: &Corpus, sigma_field: &str) -> FieldKey {
        corpus.field_key(self.event_field(sigma_field))
    }

    /// Indices (ascending) of the corpus events this variant stands for. Channel and EventID
    /// conditions pick index buckets without touching events; the others are checked per event.
    pub fn candidates(&self, corpus: &Corpus) -> Vec<u32> {
        let by = |name: &str| self.conditions.iter().find(|c| c.field == name);
        let (channel, event_id) = (by("Channel"), by("EventID"));
        let selected = corpus
            .select(|ch, id| channel.is_none_or(|c| c.values.iter().any(|v| v == ch)) && event_id.is_none_or(|c| c.values.iter().any(|v| v == id)));
        let rest: Vec<(FieldKey, &[String])> = self
            .conditions
            .iter()
            .filter(|c| c.field != "Channel" && c.field != "EventID")
            .map(|c| (corpus.field_key(&c.field), c.values.as_slice()))
            .collect();
        if rest.is_empty() {
            return selected;
        }
        selected
            .into_iter()
            .filter(|&i| {
                let event = corpus.event(i);
                rest.iter().all(|(key, values)| event.values(*key).any(|v| values.iter().any(|want| v.lower().trim() == want)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json_events::load_json_bytes;

    #[test]
    fn builtin_mapping_parses_and_maps_process_creation_to_two_variants() {
        let map = LogsourceMap::builtin().unwrap();
        let pc = map.lookup(Some("windows"), Some("process_creation"), None).unwrap();
        assert_eq!(pc.variants.len(), 2);
        let sec = &pc.variants[1];
        assert_eq!(sec.event_field("Image"), "NewProcessName");
        assert_eq!(sec.event_field("ParentImage"), "ParentProcessName");
        assert_eq!(sec.event_field("CommandLine"), "CommandLine");
        assert!(map.lookup(Some("Windows"), None, Some("Security")).is_some(), "lookup ignores case");
        assert!(map.lookup(Some("linux"), Some("process_creation"), None).is_none());
        assert!(map.lookup(Some("windows"), Some("process_creation"), Some("sysmon")).is_none());
    }

    #[test]
    fn buckets_of_a_rule_set_are_its_variants_channels_and_event_ids() {
        let map = LogsourceMap::builtin().unwrap();
        let ls = |category: Option<&str>, service: Option<&str>| crate::rule::Logsource {
            product: Some("windows".into()),
            category: category.map(str::to_string),
            service: service.map(str::to_string),
            ..Default::default()
        };
        let pc = map.buckets_of(&[ls(Some("process_creation"), None)]).unwrap();
        assert_eq!(pc.channels().collect::<Vec<_>>(), ["microsoft-windows-sysmon/operational", "security"]);
        assert!(pc.accepts("microsoft-windows-sysmon/operational", "1") && pc.accepts("security", "4688"));
        assert!(!pc.accepts("security", "4624") && !pc.accepts("microsoft-windows-sysmon/operational", "3") && !pc.accepts("system", "1"));
        // A whole channel (service: security) takes every EventID of it, whatever else is there.
        let both = map.buckets_of(&[ls(Some("process_creation"), None), ls(None, Some("security"))]).unwrap();
        assert!(both.accepts("security", "4624") && both.accepts("security", "4688") && !both.accepts("microsoft-windows-sysmon/operational", "3"));
        // An unmapped logsource adds nothing.
        let none = map.buckets_of(&[ls(Some("no_such_category"), None)]).unwrap();
        assert_eq!(none.channels().count(), 0);
    }

    #[test]
    fn candidates_use_channel_event_id_and_other_conditions() {
        let events = [
            r##"{"Event":{"System":{"Channel":"Microsoft-Windows-Sysmon/Operational","EventID":12,"EventRecordID":1},"EventData":{"EventType":"CreateKey"}}}"##,
            r##"{"Event":{"System":{"Channel":"Microsoft-Windows-Sysmon/Operational","EventID":"12","EventRecordID":2},"EventData":{"EventType":"DeleteValue"}}}"##,
            r##"{"Event":{"System":{"Channel":"Microsoft-Windows-Sysmon/Operational","EventID":13,"EventRecordID":3}}}"##,
            r##"{"Event":{"System":{"Channel":"Security","EventID":4688,"EventRecordID":4}}}"##,
            r##"{"Event":{"System":{"Channel":"Microsoft-Windows-Sysmon/Operational","EventID":1,"EventRecordID":5}}}"##,
        ]
        .join("\n");
        let mut b = Corpus::builder();
        b.add(load_json_bytes("e.jsonl", events.as_bytes()));
        let (corpus, _) = b.finish();
        let map = LogsourceMap::builtin().unwrap();
        let cands = |cat: &str| -> Vec<Vec<u32>> {
            map.lookup(Some("windows"), Some(cat), None).unwrap().variants.iter().map(|v| v.candidates(&corpus)).collect()
        };
        assert_eq!(cands("registry_add"), [vec![0]]);
        assert_eq!(cands("registry_delete"), [vec![1]]);
        assert_eq!(cands("registry_event"), [vec![0, 1, 2]]);
        assert_eq!(cands("process_creation"), [vec![4], vec![3]]);
        let all = map.lookup(Some("windows"), None, None).unwrap();
        assert_eq!(all.variants[0].candidates(&corpus).len(), 5);
    }

    #[test]
    fn unknown_logsource_values_name_the_key_and_the_nearest_known_values() {
        let map = LogsourceMap::builtin().unwrap();
        assert!(map.unknown_parts(Some("windows"), Some("process_creation"), None).is_empty());
        let u = map.unknown_parts(Some("windwos"), Some("proccess_creation"), None);
        assert_eq!(u.len(), 2, "{u:?}");
        assert_eq!((u[0].key, u[0].value.as_str(), u[0].nearest.first().map(String::as_str)), (Some("product"), "windwos", Some("windows")));
        assert_eq!(u[1].to_string(), "unknown logsource category 'proccess_creation' (did you mean process_creation?)");
        // Every value known, the combination not mapped: the nearest mapped combinations.
        let u = map.unknown_parts(Some("windows"), Some("process_creation"), Some("security"));
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].key, None);
        assert!(u[0].to_string().contains("product=windows category=process_creation"), "{}", u[0]);
        // Nothing close: no guess.
        assert!(map.unknown_parts(Some("windows"), Some("zzzzzzzzzzzzzzzz"), None)[0].nearest.is_empty());
    }

    #[test]
    fn bad_mapping_files_give_located_errors() {
        let cases = [
            ("logsources: []", "version"),
            ("version: 2\nlogsources: []", "unsupported mapping version 2"),
            ("version: 1\nlogsources:\n  - logsource: {product: windows}\n", "conditions"),
            (
                "version: 1\nlogsources:\n  - logsource: {product: windows}\n    conditions: {}\n  - logsource: {product: windows}\n    conditions: {}\n",
                "mapped twice",
            ),
            ("version: 1\nlogsources:\n  - logsource: {product: windows}\n    conditions: {EventID: [1, [2]]}\n", "scalars"),
            ("version: 1\nlogsources: [\n", "YAML"),
        ];
        for (text, expected) in cases {
            let e = LogsourceMap::parse(text, "m.yml").unwrap_err();
            assert!(e.to_string().contains(expected), "{text:?} -> {e}");
            assert!(e.to_string().starts_with("m.yml"), "{e}");
        }
    }

    /// Every logsource the SigmaHQ Windows rules use has an entry (rule files are scanned here with
    /// a light reading of their `logsource:` block so this test does not depend on the rule parser).
    #[test]
    fn every_sigmahq_windows_logsource_is_mapped() {
        let map = LogsourceMap::builtin().unwrap();
        let root = sigmaforge_data::for_tests().join("sigma");
        // The rule folders; meta/ holds converter configs, not rules.
        let files: Vec<_> =
            ["rules", "rules-emerging-threats", "rules-threat-hunting"].iter().flat_map(|d| crate::rule_files(&root.join(d)).unwrap()).collect();
        assert_eq!(files.len(), 2858, "the SigmaHQ snapshot holds 2,858 Windows rules");
        let mut missing = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            for doc in parse_stream(&text).documents {
                let Some(ls) = doc.get("logsource") else { continue };
                let get = |k: &str| ls.get(k).and_then(|n| n.scalar_text());
                let (p, c, s) = (get("product"), get("category"), get("service"));
                if map.lookup(p.as_deref(), c.as_deref(), s.as_deref()).is_none() {
                    missing.push(format!("{}: {}", f.display(), describe_logsource(p.as_deref(), c.as_deref(), s.as_deref())));
                }
            }
        }
        assert!(missing.is_empty(), "unmapped logsources:\n{}", missing.join("\n"));
    }
}
