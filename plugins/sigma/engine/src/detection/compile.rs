//! Compiling a rule's detection into matchers, and evaluating them on events.
//!
//! Semantics (sigma-spec.md section K): a missing field makes an item false and `not` of it true
//! (two-valued logic); `null` matches an absent field or a null/empty value; keywords match when
//! any value of the event contains them; a multi-valued field matches when any element does;
//! strings compare case-insensitively (against the event's pre-lowered text) unless `cased`;
//! numbers compare by their text, so `EventID: 4688` matches both `4688` and `"4688"`.

use std::collections::HashMap;
use std::net::IpAddr;

use regex::Regex;

use super::condition::Condition;
pub use super::matcher::RegexMemo;
use super::matcher::{AnyOf, REGEX_COST, RegexError, StrMatcher, build_regex, check_regex_syntax, compile_pattern};
use super::modifier::Modifier;
use super::pattern::{EncodeError, Pattern, Tok, Utf16};
use super::timestamp::DateTime;
use super::{Detection, Item, RawKind, SearchBody};
use crate::diagnostic::{Diagnostic, Pos};
use crate::event::{Event, FieldKey, Value, parse_number};
use crate::rule::Rule;

/// What `compile` needs besides the rule.
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// Values for `|expand` placeholders: `"known_cdcs"` (without `%`) → the values it stands for.
    pub placeholders: HashMap<String, Vec<String>>,
    /// What to do with a placeholder that has no configured values.
    pub unknown_placeholder: PlaceholderPolicy,
    /// Shares user regexes between compiles given the same memo (see [`RegexMemo`]).
    pub regexes: Option<RegexMemo>,
}

impl CompileOptions {
    /// The options of every evaluation over events: `hunt`, the reward and `check`'s compile
    /// check. A `|expand` placeholder with no configured values matches nothing, so a rule using
    /// one is valid everywhere (`check` warns about it) and its other selections still run.
    pub fn for_events() -> Self {
        CompileOptions { unknown_placeholder: PlaceholderPolicy::MatchNothing, ..CompileOptions::default() }
    }
}

#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum PlaceholderPolicy {
    /// Refuse the rule with an error naming the placeholder (the spec: a tool that cannot
    /// resolve placeholders must reject the rule).
    #[default]
    Error,
    /// Treat the placeholder as an empty list of values: the value matches nothing.
    MatchNothing,
}

/// A rule's detection, ready to run.
#[derive(Clone, Debug)]
pub struct CompiledRule {
    searches: Vec<CompiledSearch>,
    condition: Expr,
    fields: Vec<FieldKey>,
}

impl CompiledRule {
    /// Whether the rule's detection matches the event (logsource conditions are the caller's).
    pub fn matches(&self, event: &Event) -> bool {
        self.condition.eval(&self.searches, event)
    }

    /// Every field key the detection reads (sorted, unique). Keywords read all fields and add none.
    pub fn fields(&self) -> &[FieldKey] {
        &self.fields
    }

    /// The values (lowercase) that field `key` must have for the rule to match, when the rule's
    /// condition pins it to a fixed set: `Some(["4719"])` for a rule whose every branch says
    /// `EventID: 4719`. `None` when the field is not constrained that way. Lets a caller with an
    /// index (by EventID, say) skip events without touching them: the result is exact for events
    /// whose field has one value, which is how EVTX System fields come.
    pub fn required_values(&self, key: FieldKey) -> Option<Vec<String>> {
        let mut v = self.condition.required(&self.searches, key)?;
        v.sort();
        v.dedup();
        Some(v)
    }

    /// The same detection reading field `key(k)` wherever this one reads `k`: what compiling the
    /// rule again would give with a resolver that renames fields that way (the hunt's logsource
    /// variants differ in field names only, mostly).
    pub fn with_fields(&self, key: &dyn Fn(FieldKey) -> FieldKey) -> CompiledRule {
        let mut out = self.clone();
        out.searches.iter_mut().for_each(|s| s.map_fields(key));
        out.fields.iter_mut().for_each(|k| *k = key(*k));
        out.fields.sort();
        out.fields.dedup();
        out
    }
}

/// Where a [`RequiredLiteral`] must occur: one field's values, or (for keywords) any value.
pub type LiteralField = Option<FieldKey>;

/// A literal (lowercase) that must occur in the lowercased text of a field's value for a
/// detection to match: see [`CompiledRule::required_literals`].
pub type RequiredLiteral<'a> = (LiteralField, &'a str);

impl CompiledRule {
    /// Literals of which at least one occurs in every event the detection matches, each in the
    /// lowercased text ([`Value::lower`]) of some value of its field (of any field for `None`):
    /// a set an index can test for many rules at once (one Aho-Corasick pass per field value)
    /// before any rule runs. `None` when some way of matching needs no literal (a regex, a
    /// number comparison, `not`, an absent field, a `*` value, ...). For an `and`, the most
    /// selective side's set is kept; for an `or`, the union of every side's.
    pub fn required_literals(&self) -> Option<Vec<RequiredLiteral<'_>>> {
        self.condition.literals(&self.searches)
    }
}

/// How selective a literal set looks: its shortest literal (longer is rarer), then fewer
/// literals. Field literals beat keywords, which every value of an event is searched for.
fn selectivity(set: &[RequiredLiteral<'_>]) -> (usize, usize, std::cmp::Reverse<usize>) {
    let shortest = set.iter().map(|(_, l)| l.len()).min().unwrap_or(0).min(12);
    let on_fields = set.iter().all(|(f, _)| f.is_some()) as usize;
    (shortest, on_fields, std::cmp::Reverse(set.len()))
}

/// The literal set of an `and`: the most selective side's (any side's set is necessary).
fn best_of<'a>(sets: impl Iterator<Item = Option<Vec<RequiredLiteral<'a>>>>) -> Option<Vec<RequiredLiteral<'a>>> {
    sets.flatten().max_by_key(|s| selectivity(s))
}

/// The literal set of an `or`: every side's, or `None` when some side has none.
fn all_of<'a>(sets: impl Iterator<Item = Option<Vec<RequiredLiteral<'a>>>>) -> Option<Vec<RequiredLiteral<'a>>> {
    let mut out = Vec::new();
    for s in sets {
        out.extend(s?);
    }
    Some(out)
}

/// Intersection of optional value sets (`None` = unconstrained).
fn intersect(a: Option<Vec<String>>, b: Option<Vec<String>>) -> Option<Vec<String>> {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(a), Some(b)) => Some(a.into_iter().filter(|x| b.contains(x)).collect()),
    }
}

/// Union of value sets; unconstrained if any side is.
fn union(parts: impl Iterator<Item = Option<Vec<String>>>) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for p in parts {
        out.extend(p?);
    }
    Some(out)
}

/// Compiles `rule`'s detection. `resolve` maps each Sigma field name the rule uses to an event
/// field key (it is called once per distinct name).
pub fn compile(rule: &Rule, options: &CompileOptions, resolve: &mut dyn FnMut(&str) -> FieldKey) -> Result<CompiledRule, Diagnostic> {
    compile_detection(&rule.detection, options, resolve).map_err(|(pos, message)| Diagnostic::error("compile", &rule.origin, Some(pos), message))
}

/// Most values one detection item (one field with its modifiers) may list. Real rules stay far
/// below (the longest SigmaHQ lists have a few hundred); the limit keeps compile time and memory
/// bounded for generated or hostile rules.
pub const MAX_VALUES_PER_FIELD: usize = 100_000;
/// Most pattern characters a rule's detection may compile to, after its modifiers expanded the
/// values (`base64offset` triples them, `windash` gives up to five variants, `wide` doubles…).
pub const MAX_PATTERN_CHARS: usize = 8 << 20;

/// Why one value of a search item cannot be compiled (the item's key and position are added by
/// the caller).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Regex(#[from] RegexError),
    #[error("'{0}' is not a valid CIDR network (e.g. 10.0.0.0/8 or fe80::/10)")]
    CidrAddress(String),
    #[error("'{value}': the prefix length must be 0 to {max}")]
    CidrPrefix { value: String, max: u8 },
    /// An `expand` placeholder with no configured values (under [`PlaceholderPolicy::Error`]).
    #[error(
        "placeholder '%{0}%' has no configured values; give its values in the placeholder configuration (or choose to let unknown placeholders match nothing)"
    )]
    UnknownPlaceholder(String),
    #[error(
        "the detection compiles to more than {MAX_PATTERN_CHARS} pattern characters once its modifiers are applied (the limit per rule); split the rule or shorten its value lists"
    )]
    OverPatternBudget,
}

/// What is left of a rule's [`MAX_PATTERN_CHARS`] while its items are built.
pub(crate) struct PatternBudget {
    left: usize,
    /// Whether string values get their matchers ([`check_detection`] only needs the errors, and
    /// building a matcher cannot fail).
    matchers: bool,
}

impl PatternBudget {
    pub(crate) fn new() -> Self {
        PatternBudget { left: MAX_PATTERN_CHARS, matchers: true }
    }

    fn charge(&mut self, patterns: &[Pattern]) -> Result<(), ValueError> {
        let chars: usize = patterns.iter().map(|p| p.0.len()).sum();
        self.left = self.left.checked_sub(chars).ok_or(ValueError::OverPatternBudget)?;
        Ok(())
    }
}

pub(crate) fn compile_detection(
    detection: &Detection,
    options: &CompileOptions,
    resolve: &mut dyn FnMut(&str) -> FieldKey,
) -> Result<CompiledRule, (Pos, String)> {
    compile_with(detection, options, resolve, PatternBudget::new())
}

/// Whether `detection` compiles with `options`: every error [`compile_detection`] gives, without
/// building the string matchers (`check`'s compile check; the hunt compiles the rule again,
/// once per logsource variant). User regexes are still built, since only building one tells
/// whether it is over the size limit.
pub(crate) fn check_detection(detection: &Detection, options: &CompileOptions) -> Result<(), (Pos, String)> {
    compile_with(detection, options, &mut |_| FieldKey(0), PatternBudget { matchers: false, ..PatternBudget::new() }).map(|_| ())
}

fn compile_with(
    detection: &Detection,
    options: &CompileOptions,
    resolve: &mut dyn FnMut(&str) -> FieldKey,
    mut budget: PatternBudget,
) -> Result<CompiledRule, (Pos, String)> {
    let mut cache: HashMap<String, FieldKey> = HashMap::new();
    let mut fields = Vec::new();
    let mut resolve_once = |name: &str| -> FieldKey {
        if let Some(k) = cache.get(name) {
            return *k;
        }
        let k = resolve(name);
        cache.insert(name.to_string(), k);
        fields.push(k);
        k
    };
    let mut searches = Vec::with_capacity(detection.searches.len());
    for s in &detection.searches {
        searches.push(compile_body(&s.body, Some(options), &mut resolve_once, &mut budget)?);
    }
    let names: Vec<&str> = detection.names().collect();
    let mut condition = Expr::from_condition(&detection.condition, &names);
    // `and` and `or` do not depend on order: the cheap tests run first, so a regex or a
    // keyword search runs only on events the cheap ones let through.
    for search in &mut searches {
        search.order_by_cost();
    }
    condition.order_by_cost(&searches);
    fields.sort();
    fields.dedup();
    Ok(CompiledRule { searches, condition, fields })
}

fn compile_body(
    body: &SearchBody,
    options: Option<&CompileOptions>,
    resolve: &mut dyn FnMut(&str) -> FieldKey,
    budget: &mut PatternBudget,
) -> Result<CompiledSearch, (Pos, String)> {
    Ok(match body {
        SearchBody::AllOf(items) => CompiledSearch::AllOf(items.iter().map(|i| build_item(i, options, resolve, budget)).collect::<Result<_, _>>()?),
        SearchBody::AnyOf(bodies) => {
            CompiledSearch::AnyOf(bodies.iter().map(|b| compile_body(b, options, resolve, budget)).collect::<Result<_, _>>()?)
        }
        SearchBody::Keyword(item) => CompiledSearch::Item(build_item(item, options, resolve, budget)?),
    })
}

#[derive(Clone, Debug)]
enum CompiledSearch {
    AllOf(Vec<CompiledItem>),
    AnyOf(Vec<CompiledSearch>),
    Item(CompiledItem),
}

impl CompiledSearch {
    fn required(&self, key: FieldKey) -> Option<Vec<String>> {
        match self {
            CompiledSearch::AllOf(items) => items.iter().map(|i| i.required(key)).fold(None, intersect),
            CompiledSearch::AnyOf(v) => union(v.iter().map(|s| s.required(key))),
            CompiledSearch::Item(i) => i.required(key),
        }
    }

    fn literals(&self) -> Option<Vec<RequiredLiteral<'_>>> {
        match self {
            CompiledSearch::AllOf(items) => best_of(items.iter().map(CompiledItem::literals)),
            CompiledSearch::AnyOf(v) => all_of(v.iter().map(CompiledSearch::literals)),
            CompiledSearch::Item(i) => i.literals(),
        }
    }

    fn map_fields(&mut self, key: &dyn Fn(FieldKey) -> FieldKey) {
        match self {
            CompiledSearch::AllOf(items) => items.iter_mut().for_each(|i| i.map_fields(key)),
            CompiledSearch::AnyOf(v) => v.iter_mut().for_each(|s| s.map_fields(key)),
            CompiledSearch::Item(i) => i.map_fields(key),
        }
    }

    /// A rough cost of evaluating the search on one event (see [`CompiledItem::cost`]).
    fn cost(&self) -> u32 {
        match self {
            CompiledSearch::AllOf(items) => items.iter().map(CompiledItem::cost).sum(),
            CompiledSearch::AnyOf(v) => v.iter().map(CompiledSearch::cost).sum(),
            CompiledSearch::Item(i) => i.cost(),
        }
    }

    /// Puts the cheaper items of each `and`/`or` first (stable: equal costs keep their order).
    fn order_by_cost(&mut self) {
        match self {
            CompiledSearch::AllOf(items) => items.sort_by_cached_key(CompiledItem::cost),
            CompiledSearch::AnyOf(v) => {
                v.iter_mut().for_each(CompiledSearch::order_by_cost);
                v.sort_by_cached_key(CompiledSearch::cost);
            }
            CompiledSearch::Item(_) => {}
        }
    }

    fn eval(&self, event: &Event) -> bool {
        match self {
            CompiledSearch::AllOf(items) => items.iter().all(|i| i.eval(event)),
            CompiledSearch::AnyOf(v) => v.iter().any(|s| s.eval(event)),
            CompiledSearch::Item(i) => i.eval(event),
        }
    }
}

#[derive(Clone, Debug)]
enum Expr {
    Search(usize),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

impl Expr {
    /// References were checked at parse time; `x of` targets expand here.
    fn from_condition(c: &Condition, names: &[&str]) -> Expr {
        let index = |n: &str| names.iter().position(|x| *x == n).expect("condition references were validated at parse time");
        match c {
            Condition::Ref(n) => Expr::Search(index(n)),
            Condition::Not(inner) => Expr::Not(Box::new(Expr::from_condition(inner, names))),
            Condition::And(v) => Expr::And(v.iter().map(|c| Expr::from_condition(c, names)).collect()),
            Condition::Or(v) => Expr::Or(v.iter().map(|c| Expr::from_condition(c, names)).collect()),
            Condition::OneOf(t) => Expr::Or(t.select(names.iter().copied()).into_iter().map(|n| Expr::Search(index(n))).collect()),
            Condition::AllOf(t) => Expr::And(t.select(names.iter().copied()).into_iter().map(|n| Expr::Search(index(n))).collect()),
        }
    }

    fn required(&self, searches: &[CompiledSearch], key: FieldKey) -> Option<Vec<String>> {
        match self {
            Expr::Search(i) => searches[*i].required(key),
            Expr::Not(_) => None,
            Expr::And(v) => v.iter().map(|e| e.required(searches, key)).fold(None, intersect),
            Expr::Or(v) => union(v.iter().map(|e| e.required(searches, key))),
        }
    }

    fn literals<'a>(&self, searches: &'a [CompiledSearch]) -> Option<Vec<RequiredLiteral<'a>>> {
        match self {
            Expr::Search(i) => searches[*i].literals(),
            Expr::Not(_) => None,
            Expr::And(v) => best_of(v.iter().map(|e| e.literals(searches))),
            Expr::Or(v) => all_of(v.iter().map(|e| e.literals(searches))),
        }
    }

    fn cost(&self, searches: &[CompiledSearch]) -> u32 {
        match self {
            Expr::Search(i) => searches[*i].cost(),
            Expr::Not(e) => e.cost(searches),
            Expr::And(v) | Expr::Or(v) => v.iter().map(|e| e.cost(searches)).sum(),
        }
    }

    fn order_by_cost(&mut self, searches: &[CompiledSearch]) {
        match self {
            Expr::Search(_) => {}
            Expr::Not(e) => e.order_by_cost(searches),
            Expr::And(v) | Expr::Or(v) => {
                v.iter_mut().for_each(|e| e.order_by_cost(searches));
                v.sort_by_cached_key(|e| e.cost(searches));
            }
        }
    }

    fn eval(&self, searches: &[CompiledSearch], event: &Event) -> bool {
        match self {
            Expr::Search(i) => searches[*i].eval(event),
            Expr::Not(e) => !e.eval(searches, event),
            Expr::And(v) => v.iter().all(|e| e.eval(searches, event)),
            Expr::Or(v) => v.iter().any(|e| e.eval(searches, event)),
        }
    }
}

/// One compiled `field|modifiers: values` item.
#[derive(Clone, Debug)]
pub(crate) struct CompiledItem {
    /// `None`: a keyword, tested against every value of the event.
    field: Option<FieldKey>,
    /// `neq`: the item's result is negated.
    negate: bool,
    test: Test,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Cmp {
    Eq,
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Cmp {
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Gt => a > b,
            Cmp::Gte => a >= b,
            Cmp::Lt => a < b,
            Cmp::Lte => a <= b,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum RefHow {
    Equal,
    Contains,
    StartsWith,
    EndsWith,
}

#[derive(Clone, Debug)]
enum Test {
    /// Absent field, or a null or empty value.
    Null,
    Exists(bool),
    /// Any value matches any pattern.
    Strings {
        any: AnyOf,
        cased: bool,
    },
    /// `all`: each rule value (its variants ORed) must match some event value.
    StringsAll {
        each: Vec<AnyOf>,
        cased: bool,
    },
    Regex {
        regexes: Vec<Regex>,
        all: bool,
    },
    Cidr {
        nets: Vec<Cidr>,
        all: bool,
    },
    Compare {
        op: Cmp,
        values: Vec<f64>,
        all: bool,
    },
    TimePart {
        part: Modifier,
        op: Cmp,
        values: Vec<f64>,
        all: bool,
    },
    FieldRef {
        refs: Vec<FieldKey>,
        how: RefHow,
        cased: bool,
        all: bool,
    },
}

impl CompiledItem {
    /// The exact values this item pins `key` to, if it is a plain, case-insensitive,
    /// non-negated exact match on that field.
    fn required(&self, key: FieldKey) -> Option<Vec<String>> {
        match (&self.test, self.field, self.negate) {
            (Test::Strings { any, cased: false }, Some(k), false) if k == key => {
                any.exact_values().map(|v| v.into_iter().map(str::to_string).collect())
            }
            _ => None,
        }
    }

    /// See [`CompiledRule::required_literals`]: only plain (not negated) string tests have them.
    fn literals(&self) -> Option<Vec<RequiredLiteral<'_>>> {
        if self.negate {
            return None;
        }
        // `cased` values are matched against the original text; an ASCII literal found there
        // is also found, lowercased, in the lowercased text. Other cased literals are left out.
        fn of(any: &AnyOf, cased: bool, field: LiteralField) -> Option<Vec<RequiredLiteral<'_>>> {
            any.required_literals()?.into_iter().map(|l| (!cased || l.is_ascii()).then_some((field, l))).collect()
        }
        match &self.test {
            Test::Strings { any, cased } => of(any, *cased, self.field),
            Test::StringsAll { each, cased } => best_of(each.iter().map(|a| of(a, *cased, self.field))),
            _ => None,
        }
    }

    fn map_fields(&mut self, key: &dyn Fn(FieldKey) -> FieldKey) {
        self.field = self.field.map(key);
        if let Test::FieldRef { refs, .. } = &mut self.test {
            refs.iter_mut().for_each(|k| *k = key(*k));
        }
    }

    /// A rough cost of evaluating the item on one event, in units of one byte compare: regexes
    /// and `?` globs far above literal tests, keyword items (every value of the event) above
    /// field items.
    fn cost(&self) -> u32 {
        let per_value = match &self.test {
            Test::Null | Test::Exists(_) => 1,
            Test::Compare { .. } | Test::TimePart { .. } | Test::FieldRef { .. } | Test::Cidr { .. } => 2,
            Test::Strings { any, .. } => any.cost(),
            Test::StringsAll { each, .. } => each.iter().map(AnyOf::cost).sum(),
            Test::Regex { regexes, .. } => REGEX_COST * regexes.len() as u32,
        };
        if self.field.is_none() { per_value.saturating_mul(16) } else { per_value }
    }

    #[inline]
    fn eval(&self, event: &Event) -> bool {
        let r = match self.field {
            Some(key) => self.test.eval(event, || event.values(key)),
            None => self.test.eval(event, || event.fields().iter().map(|(_, v)| v)),
        };
        r != self.negate
    }
}

/// `all` or `any` over a list of conditions.
fn quantify<T>(items: &[T], all: bool, f: impl FnMut(&T) -> bool) -> bool {
    if all { items.iter().all(f) } else { items.iter().any(f) }
}

impl Test {
    fn eval<'e, I: Iterator<Item = &'e Value>>(&self, event: &'e Event, values: impl Fn() -> I) -> bool {
        let text = |v: &'e Value, cased: bool| if cased { v.text() } else { v.lower() };
        match self {
            Test::Null => {
                let mut it = values().peekable();
                it.peek().is_none() || values().any(|v| v.is_null() || v.text().is_empty())
            }
            Test::Exists(want) => values().next().is_some() == *want,
            Test::Strings { any, cased } => values().any(|v| any.is_match(text(v, *cased))),
            Test::StringsAll { each, cased } => each.iter().all(|a| values().any(|v| a.is_match(text(v, *cased)))),
            Test::Regex { regexes, all } => quantify(regexes, *all, |r| values().any(|v| r.is_match(v.text()))),
            Test::Cidr { nets, all } => quantify(nets, *all, |n| values().any(|v| v.text().trim().parse::<IpAddr>().is_ok_and(|ip| n.contains(ip)))),
            Test::Compare { op, values: wanted, all } => quantify(wanted, *all, |w| values().any(|v| v.as_f64().is_some_and(|x| op.holds(x, *w)))),
            Test::TimePart { part, op, values: wanted, all } => {
                let parts: Vec<i64> = {
                    let from_field: Vec<i64> = values().filter_map(|v| DateTime::parse(v.text())).map(|d| d.part(*part)).collect();
                    if from_field.is_empty() && values().next().is_none() {
                        event.timestamp_us.map(|us| DateTime::from_unix_micros(us).part(*part)).into_iter().collect()
                    } else {
                        from_field
                    }
                };
                quantify(wanted, *all, |w| parts.iter().any(|p| op.holds(*p as f64, *w)))
            }
            Test::FieldRef { refs, how, cased, all } => quantify(refs, *all, |r| {
                values().any(|v| {
                    let a = text(v, *cased);
                    event.values(*r).any(|w| {
                        let b = text(w, *cased);
                        match how {
                            RefHow::Equal => a == b,
                            RefHow::Contains => memchr::memmem::find(a.as_bytes(), b.as_bytes()).is_some(),
                            RefHow::StartsWith => a.starts_with(b),
                            RefHow::EndsWith => a.ends_with(b),
                        }
                    })
                })
            }),
        }
    }
}

/// An IPv4 or IPv6 network.
#[derive(Clone, Debug)]
struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(s: &str) -> Result<Cidr, ValueError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| ValueError::CidrAddress(s.to_string()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| ValueError::CidrPrefix { value: s.to_string(), max })?,
        };
        Ok(Cidr { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, total: u32, prefix: u8) -> u128 {
            if prefix == 0 { 0 } else { bits >> (total - prefix as u32) }
        }
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => masked(u32::from(net) as u128, 32, self.prefix) == masked(u32::from(ip) as u128, 32, self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => masked(u128::from(net), 128, self.prefix) == masked(u128::from(ip), 128, self.prefix),
            (IpAddr::V4(_), IpAddr::V6(ip)) => ip.to_ipv4_mapped().is_some_and(|v4| self.contains(IpAddr::V4(v4))),
            _ => false,
        }
    }
}

/// Builds one item, within the rule's `budget`. `options` is `None` for the validation pass at
/// parse time: placeholders are then left unexpanded.
pub(crate) fn build_item(
    item: &Item,
    options: Option<&CompileOptions>,
    resolve: &mut dyn FnMut(&str) -> FieldKey,
    budget: &mut PatternBudget,
) -> Result<CompiledItem, (Pos, String)> {
    let mods = &item.modifiers;
    let has = |m: Modifier| mods.contains(&m);
    let all = has(Modifier::All);
    let negate = has(Modifier::Neq);
    let cased = has(Modifier::Cased);
    let key_name = || {
        let mut k = item.field.clone().unwrap_or_default();
        for m in mods {
            k.push('|');
            k.push_str(m.name());
        }
        k
    };
    let err = |pos: Pos, msg: String| (pos, format!("'{}': {msg}", key_name()));
    if let Some(extra) = item.values.get(MAX_VALUES_PER_FIELD) {
        let message =
            format!("{} values, over the limit of {MAX_VALUES_PER_FIELD} values per field; split the list over several rules", item.values.len());
        return Err(err(extra.pos, message));
    }
    let field = item.field.as_deref().map(&mut *resolve);

    let test = if item.values.len() == 1 && item.values[0].kind == RawKind::Null {
        Test::Null
    } else if has(Modifier::Exists) {
        let v = &item.values[0];
        if item.values.len() != 1 || v.kind != RawKind::Bool {
            return Err(err(v.pos, "'exists' takes a single true or false".into()));
        }
        Test::Exists(v.text == "true")
    } else if has(Modifier::Re) {
        let mut regexes = Vec::new();
        for v in &item.values {
            if options.is_none() {
                // Validation pass: syntax only. Compiling Unicode-heavy patterns costs up to
                // ~70 ms each, so it is done once, by `compile`.
                check_regex_syntax(&v.text).map_err(|e| err(v.pos, e.to_string()))?;
                continue;
            }
            let (ignore_case, multi_line, dot_all) = (has(Modifier::IgnoreCase), has(Modifier::Multiline), has(Modifier::DotAll));
            let r = match options.and_then(|o| o.regexes.as_ref()) {
                Some(memo) => memo.build(&v.text, ignore_case, multi_line, dot_all),
                None => build_regex(&v.text, ignore_case, multi_line, dot_all),
            };
            regexes.push(r.map_err(|e| err(v.pos, e.to_string()))?);
        }
        Test::Regex { regexes, all }
    } else if has(Modifier::Cidr) {
        let mut nets = Vec::new();
        for v in &item.values {
            nets.push(Cidr::parse(&v.text).map_err(|e| err(v.pos, e.to_string()))?);
        }
        Test::Cidr { nets, all }
    } else if let Some(part) = mods.iter().copied().find(|m| m.is_time_part()) {
        let op = comparison(mods).unwrap_or(Cmp::Eq);
        Test::TimePart { part, op, values: numbers(item, &key_name())?, all }
    } else if let Some(op) = comparison(mods) {
        Test::Compare { op, values: numbers(item, &key_name())?, all }
    } else if has(Modifier::FieldRef) {
        let mut refs = Vec::new();
        for v in &item.values {
            if v.text.contains(['*', '?']) || v.text.is_empty() {
                return Err(err(v.pos, format!("'fieldref' takes the name of another field, without wildcards (got '{}')", v.text)));
            }
            refs.push(resolve(&v.text));
        }
        let how = if has(Modifier::Contains) {
            RefHow::Contains
        } else if has(Modifier::StartsWith) {
            RefHow::StartsWith
        } else if has(Modifier::EndsWith) {
            RefHow::EndsWith
        } else {
            RefHow::Equal
        };
        Test::FieldRef { refs, how, cased, all }
    } else {
        let mut per_value = Vec::with_capacity(item.values.len());
        for v in &item.values {
            let patterns = transform(item, v, options).map_err(|e| err(v.pos, e.to_string()))?;
            budget.charge(&patterns).map_err(|e| err(v.pos, e.to_string()))?;
            // The validation pass (no options) only needs the transformation's errors; building
            // matchers cannot fail, so it is skipped there.
            if options.is_some() && budget.matchers {
                per_value.push(patterns.iter().flat_map(|p| compile_pattern(p, cased)).collect::<Vec<StrMatcher>>());
            }
        }
        if all {
            Test::StringsAll { each: per_value.into_iter().map(AnyOf::new).collect(), cased }
        } else {
            Test::Strings { any: AnyOf::new(per_value.into_iter().flatten().collect()), cased }
        }
    };
    Ok(CompiledItem { field, negate, test })
}

fn comparison(mods: &[Modifier]) -> Option<Cmp> {
    mods.iter().find_map(|m| match m {
        Modifier::Gt => Some(Cmp::Gt),
        Modifier::Gte => Some(Cmp::Gte),
        Modifier::Lt => Some(Cmp::Lt),
        Modifier::Lte => Some(Cmp::Lte),
        _ => None,
    })
}

fn numbers(item: &Item, key: &str) -> Result<Vec<f64>, (Pos, String)> {
    let mut out = Vec::new();
    for v in &item.values {
        match (v.kind, parse_number(&v.text)) {
            (RawKind::Number, Some(n)) => out.push(n),
            _ => {
                return Err((v.pos, format!("'{key}': numeric and time modifiers need a number, got '{}' (quoted numbers are strings)", v.text)));
            }
        }
    }
    Ok(out)
}

/// Applies the value-transforming modifiers in the order written and returns the patterns the
/// value stands for (several after `base64offset`, `expand`).
fn transform(item: &Item, v: &super::RawValue, options: Option<&CompileOptions>) -> Result<Vec<Pattern>, ValueError> {
    let base = match v.kind {
        RawKind::String => Pattern::parse(&v.text),
        _ => Pattern::literal(&v.text),
    };
    let mut patterns = vec![base];
    let mut positioned = false;
    for m in &item.modifiers {
        patterns = match m {
            Modifier::Expand => match options {
                None => patterns,
                Some(o) => {
                    let mut out = Vec::new();
                    for p in patterns {
                        out.extend(expand_placeholders(p, o)?);
                    }
                    out
                }
            },
            Modifier::Windash => patterns.into_iter().map(Pattern::windash).collect(),
            Modifier::Utf16le | Modifier::Wide => utf16_all(patterns, Utf16::LittleEndian)?,
            Modifier::Utf16be => utf16_all(patterns, Utf16::BigEndian)?,
            Modifier::Utf16 => utf16_all(patterns, Utf16::WithBom)?,
            Modifier::Base64 => patterns.iter().map(Pattern::base64).collect::<Result<_, _>>()?,
            Modifier::Base64Offset => {
                let mut out = Vec::new();
                for p in &patterns {
                    out.extend(p.base64offset()?);
                }
                out
            }
            Modifier::Contains => {
                positioned = true;
                patterns.into_iter().map(Pattern::contains).collect()
            }
            Modifier::StartsWith => {
                positioned = true;
                patterns.into_iter().map(Pattern::startswith).collect()
            }
            Modifier::EndsWith => {
                positioned = true;
                patterns.into_iter().map(Pattern::endswith).collect()
            }
            _ => patterns,
        };
    }
    // Keywords are searched for inside the event's values ("applied to the full log message").
    if item.field.is_none() && !positioned {
        patterns = patterns.into_iter().map(Pattern::contains).collect();
    }
    Ok(patterns)
}

fn utf16_all(patterns: Vec<Pattern>, enc: Utf16) -> Result<Vec<Pattern>, EncodeError> {
    patterns.into_iter().map(|p| p.utf16(enc)).collect()
}

/// Replaces each `%name%` with every configured value of `name` (all combinations when a value
/// holds several placeholders).
fn expand_placeholders(p: Pattern, options: &CompileOptions) -> Result<Vec<Pattern>, ValueError> {
    let toks = &p.0;
    let mut i = 0;
    while i < toks.len() {
        if toks[i] == Tok::Lit('%') {
            let name: Option<String> = toks[i + 1..]
                .iter()
                .take_while(|t| **t != Tok::Lit('%'))
                .map(|t| match t {
                    Tok::Lit(c) if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') => Some(*c),
                    _ => None,
                })
                .collect();
            let end = i + 1 + name.as_ref().map_or(0, String::len);
            if let Some(name) = name.filter(|n| !n.is_empty() && end < toks.len()) {
                let values: &[String] = match options.placeholders.get(&name) {
                    Some(v) => v,
                    None if options.unknown_placeholder == PlaceholderPolicy::MatchNothing => &[],
                    None => return Err(ValueError::UnknownPlaceholder(name)),
                };
                // Expand the rest first, so that text inside a substituted value is never
                // mistaken for another placeholder.
                let tails = expand_placeholders(Pattern(toks[end + 1..].to_vec(), p.1), options)?;
                let mut out = Vec::new();
                for value in values {
                    for tail in &tails {
                        let mut t = toks[..i].to_vec();
                        t.extend(value.chars().map(Tok::Lit));
                        t.extend_from_slice(&tail.0);
                        out.push(Pattern(t, p.1));
                    }
                }
                return Ok(out);
            }
        }
        i += 1;
    }
    Ok(vec![p])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::{Document, parse_documents};

    fn compiled(detection: &str) -> CompiledRule {
        let text = format!("title: t\nlogsource: {{product: windows}}\ndetection:\n{detection}\n");
        let parsed = parse_documents(&text, "t.yml");
        let Some(Document::Rule(rule)) = parsed.documents.first() else { panic!("{:?}", parsed.diagnostics) };
        let mut names: Vec<String> = Vec::new();
        compile(rule, &CompileOptions::default(), &mut |name| {
            let at = names.iter().position(|n| n == name).unwrap_or_else(|| {
                names.push(name.to_string());
                names.len() - 1
            });
            FieldKey(at as u32)
        })
        .unwrap()
    }

    /// Regexes and keywords run after the literal tests of the same `and`/`or` and search.
    #[test]
    fn cheap_tests_run_first() {
        let rule = compiled(
            "  sel_re:\n    CommandLine|re: 'a.*b'\n    Image|endswith: '\\x.exe'\n  keywords:\n    - 'evil'\n  sel_img:\n    Image: 'c:\\x.exe'\n  condition: sel_re and keywords and sel_img",
        );
        let Expr::And(parts) = &rule.condition else { panic!("{:?}", rule.condition) };
        // sel_img (one exact value: 1), the keyword (one needle in every value: 2 x 16), then
        // sel_re (a suffix and a regex: 1 + 64).
        assert!(matches!(parts[..], [Expr::Search(2), Expr::Search(1), Expr::Search(0)]), "{parts:?}");
        let CompiledSearch::AllOf(items) = &rule.searches[0] else { panic!() };
        assert!(matches!(items[0].test, Test::Strings { .. }) && matches!(items[1].test, Test::Regex { .. }), "{items:?}");
    }
}
