//! Correlation rules over the matches of their base rules (event_count, value_count,
//! value_sum/avg, temporal, temporal_ordered), and `generate`: which base rules report on their own.

use std::collections::{HashMap, HashSet};

use super::{BaseRule, HuntError, HuntOutcome, Hunter, PreparedRule, RuleSet, Skipped};
use crate::rule::{Correlation, CorrelationType};

/// One base-rule match in a correlation: (timestamp, rule position, event, group key, value of
/// `condition.field`).
type CorrelationRow = (i64, usize, u32, Vec<String>, Option<String>);

impl Hunter<'_> {
    /// Evaluates a correlation over the matches of its base rules. `base` looks a referenced rule
    /// up by id or name and gives its prepared form and matches. Returns the events that take
    /// part in a triggering group/window (ascending), or why the correlation cannot run.
    pub fn correlate<'r>(&self, correlation: &Correlation, base: &dyn Fn(&str) -> Option<BaseRule<'r>>) -> Result<Vec<u32>, HuntError> {
        if correlation.kind == CorrelationType::ValuePercentile {
            return Err(HuntError::UnsupportedCorrelation);
        }
        let span_us = i64::try_from(correlation.timespan_secs).unwrap_or(i64::MAX / 2_000_000) * 1_000_000;
        let mut rows: Vec<CorrelationRow> = Vec::new();
        for (pos, reference) in correlation.rules.iter().enumerate() {
            let (rule, prepared, matches) = base(reference).ok_or_else(|| HuntError::MissingBaseRule(reference.clone()))?;
            let alias_field = |name: &str| -> String {
                correlation
                    .aliases
                    .iter()
                    .find(|a| a.name == name)
                    .and_then(|a| a.per_rule.iter().find(|(r, _)| Some(r.as_str()) == rule.id.as_deref() || Some(r.as_str()) == rule.name.as_deref()))
                    .map_or_else(|| name.to_string(), |(_, f)| f.clone())
            };
            let value_of = |index: u32, field: &str| -> Option<String> {
                let key = self.field_for_event(prepared, index, &alias_field(field));
                self.corpus.event(index).values(key).next().map(|v| v.text().to_string())
            };
            for &index in matches {
                let Some(ts) = self.corpus.event(index).timestamp_us else { continue };
                let group = correlation.group_by.iter().map(|g| value_of(index, g).unwrap_or_default()).collect();
                let value = correlation.condition.as_ref().and_then(|c| c.field.as_deref()).and_then(|f| value_of(index, f));
                rows.push((ts, pos, index, group, value));
            }
        }
        let mut groups: HashMap<Vec<String>, Vec<usize>> = HashMap::new();
        rows.sort_by_key(|r| (r.0, r.2));
        for (i, row) in rows.iter().enumerate() {
            groups.entry(row.3.clone()).or_default().push(i);
        }
        let nrules = correlation.rules.len();
        let holds = |n: f64| correlation.condition.as_ref().is_none_or(|c| c.holds(n));
        let mut hit: HashSet<u32> = HashSet::new();
        for members in groups.values() {
            let at = |k: usize| &rows[members[k]];
            let mut end = 0usize;
            for start in 0..members.len() {
                while end < members.len() && at(end).0 - at(start).0 <= span_us {
                    end += 1;
                }
                let window = start..end;
                let fires = match correlation.kind {
                    CorrelationType::EventCount => holds(window.len() as f64),
                    CorrelationType::ValueCount => {
                        let distinct: HashSet<&str> = window.clone().filter_map(|k| at(k).4.as_deref()).collect();
                        holds(distinct.len() as f64)
                    }
                    CorrelationType::ValueSum | CorrelationType::ValueAvg => {
                        let nums: Vec<f64> = window.clone().filter_map(|k| at(k).4.as_deref().and_then(crate::event::parse_number)).collect();
                        let sum: f64 = nums.iter().sum();
                        let v = if correlation.kind == CorrelationType::ValueSum || nums.is_empty() { sum } else { sum / nums.len() as f64 };
                        !nums.is_empty() && holds(v)
                    }
                    CorrelationType::Temporal => {
                        let distinct: HashSet<usize> = window.clone().map(|k| at(k).1).collect();
                        match &correlation.condition {
                            Some(_) => holds(distinct.len() as f64),
                            None => distinct.len() == nrules,
                        }
                    }
                    CorrelationType::TemporalOrdered => {
                        // Rules must appear in the listed order, starting at this window's first event.
                        let mut next = 0usize;
                        for k in window.clone() {
                            if next < nrules && at(k).1 == next {
                                next += 1;
                            }
                        }
                        at(start).1 == 0
                            && match &correlation.condition {
                                Some(_) => holds(next as f64),
                                None => next == nrules,
                            }
                    }
                    CorrelationType::ValuePercentile => false,
                };
                if fires {
                    hit.extend(window.map(|k| at(k).2));
                }
            }
        }
        let mut out: Vec<u32> = hit.into_iter().collect();
        out.sort_unstable();
        Ok(out)
    }

    /// Applies correlations and `generate` to per-rule results (computed serially or in parallel).
    pub fn finish(&self, rules: &RuleSet, prepared: &[Result<PreparedRule, HuntError>], matches: Vec<Vec<u32>>) -> HuntOutcome {
        let mut skipped = Vec::new();
        for (r, p) in rules.rules.iter().zip(prepared) {
            if let Err(why) = p {
                skipped.push(Skipped { file: r.file.clone(), title: r.rule.title.clone(), reason: why.to_string() });
            }
        }
        let find =
            |reference: &str| rules.rules.iter().position(|r| r.rule.id.as_deref() == Some(reference) || r.rule.name.as_deref() == Some(reference));
        let base = |reference: &str| {
            let i = find(reference)?;
            let p = prepared[i].as_ref().ok()?;
            Some((&rules.rules[i].rule, p, matches[i].as_slice()))
        };
        let mut hidden = HashSet::new();
        let mut correlation_hits = Vec::new();
        for c in &rules.correlations {
            if !c.correlation.generate {
                hidden.extend(c.correlation.rules.iter().filter_map(|r| find(r)));
            }
            match self.correlate(&c.correlation, &base) {
                Ok(events) => correlation_hits.push(events),
                Err(why) => {
                    skipped.push(Skipped { file: c.file.clone(), title: c.correlation.title.clone(), reason: why.to_string() });
                    correlation_hits.push(Vec::new());
                }
            }
        }
        // A rule referenced only by `generate: false` correlations reports nothing on its own.
        for c in rules.correlations.iter().filter(|c| c.correlation.generate) {
            for r in &c.correlation.rules {
                if let Some(i) = find(r) {
                    hidden.remove(&i);
                }
            }
        }
        let rule_matches = matches.into_iter().enumerate().map(|(i, m)| if hidden.contains(&i) { Vec::new() } else { m }).collect();
        HuntOutcome { rule_matches, correlation_matches: correlation_hits, skipped }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{WHOAMI, corpus, rules, sysmon1};
    use crate::CompileOptions;
    use crate::corpus::Corpus;
    use crate::hunt::{HuntOutcome, Hunter};
    use crate::logsource::LogsourceMap;

    fn correlation_corpus() -> Corpus {
        corpus(&[
            sysmon1(1, "C:\\\\whoami.exe", "2020-01-01T00:00:00Z", "alice"),
            sysmon1(2, "C:\\\\whoami.exe", "2020-01-01T00:00:30Z", "alice"),
            sysmon1(3, "C:\\\\whoami.exe", "2020-01-01T00:00:50Z", "alice"),
            sysmon1(4, "C:\\\\whoami.exe", "2020-01-01T00:00:10Z", "bob"),
            sysmon1(5, "C:\\\\whoami.exe", "2020-01-01T01:00:00Z", "alice"),
            sysmon1(6, "C:\\\\net.exe", "2020-01-01T00:00:20Z", "bob"),
            sysmon1(7, "C:\\\\net.exe", "2020-01-01T00:00:05Z", "alice"),
        ])
    }

    const NET: &str = "title: Net\nname: net\nlogsource: {product: windows, category: process_creation}\ndetection:\n  sel:\n    Image|endswith: '\\net.exe'\n  condition: sel\n";

    fn correlate(corr: &str) -> (Vec<u64>, HuntOutcome, Corpus) {
        let c = correlation_corpus();
        let map = LogsourceMap::builtin().unwrap();
        let h = Hunter::new(&c, &map, CompileOptions::default());
        let set = rules(&format!("{WHOAMI}---\n{NET}---\n{corr}"));
        let out = h.hunt(&set);
        let ids = out.correlation_matches[0].iter().map(|&i| c.event(i).record_id).collect();
        (ids, out, c)
    }

    #[test]
    fn event_count_per_group_within_timespan() {
        let (ids, out, _) = correlate(
            "title: Many whoami\ncorrelation:\n  type: event_count\n  rules: [11111111-1111-4111-8111-111111111111]\n  group-by: [User]\n  timespan: 1m\n  condition: {gte: 3}\n",
        );
        // alice has 3 within a minute (1, 2, 3); event 5 is an hour later; bob has one.
        assert_eq!(ids, [1, 2, 3]);
        assert!(out.rule_matches[0].is_empty(), "generate: false hides the base rule's own matches");
        assert_eq!(out.rule_matches[1].len(), 2, "a rule no correlation references still reports");
    }

    #[test]
    fn value_count_temporal_and_temporal_ordered() {
        let (ids, _, _) = correlate(
            "title: Users\ncorrelation:\n  type: value_count\n  rules: [net]\n  group-by: [Image]\n  timespan: 1m\n  condition: {field: User, gte: 2}\n",
        );
        assert_eq!(ids, [6, 7]);
        let (ids, _, _) = correlate(
            "title: Both\ncorrelation:\n  type: temporal\n  rules: [net, 11111111-1111-4111-8111-111111111111]\n  group-by: [User]\n  timespan: 15s\n",
        );
        // alice: net at :05 and whoami at :00 (within 15 s); bob: whoami :10 and net :20.
        assert_eq!(ids, [1, 4, 6, 7]);
        let (ids, _, _) = correlate(
            "title: Net then whoami\ncorrelation:\n  type: temporal_ordered\n  rules: [net, 11111111-1111-4111-8111-111111111111]\n  group-by: [User]\n  timespan: 30s\n",
        );
        // Only alice has net (:05) followed by whoami (:30) within 30 s; bob's order is reversed.
        assert_eq!(ids, [2, 7]);
    }

    #[test]
    fn correlation_of_a_missing_rule_is_skipped() {
        let (ids, out, _) = correlate(
            "title: Ghost\ncorrelation:\n  type: event_count\n  rules: [ghost]\n  group-by: [User]\n  timespan: 1m\n  condition: {gte: 1}\n",
        );
        assert!(ids.is_empty());
        assert!(out.skipped.iter().any(|s| s.reason.contains("ghost")));
    }
}
