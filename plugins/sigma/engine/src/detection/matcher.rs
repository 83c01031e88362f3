//! Compiled string matchers.
//!
//! Every rule value is compiled once into the cheapest primitive that decides it, working on the
//! event's pre-lowered text (or the original text for `cased`): byte equality, prefix and suffix
//! compares, `memchr::memmem` finders for `contains`, an in-order finder chain for `*` globs, an
//! Aho-Corasick automaton for long OR lists of `contains` values, and an anchored regex only for
//! values with `?` or many windash positions. These primitives stay within ~2x of native speed
//! in Wasm with simd128, unlike `str::contains` (see the crate docs).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use aho_corasick::{AhoCorasick, AhoCorasickKind};
use memchr::memmem::Finder;
use regex::Regex;

use super::pattern::{DASHES, Pattern, Tok};

/// Regex limits (Unicode `\w{1,64}` in a SigmaHQ rule needs ~2 MiB): enough for any real rule, small enough that `a{1000}{1000}` is refused quickly
/// instead of compiling for seconds or allocating gigabytes.
pub const REGEX_SIZE_LIMIT: usize = 8 << 20;
const REGEX_NEST_LIMIT: u32 = 100;

/// Why a user regex (`re` modifier) is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegexError {
    #[error("the regular expression is too large (it would use more than 8 MiB compiled; check repetition counts such as {{1000}})")]
    TooLarge,
    /// A syntax error, with the regex crate's explanation on one line.
    #[error("invalid regular expression: {0}")]
    Invalid(String),
}

/// Builds a user regex (`re` modifier) with the engine's limits.
pub fn build_regex(pattern: &str, ignore_case: bool, multi_line: bool, dot_all: bool) -> Result<Regex, RegexError> {
    regex::RegexBuilder::new(pattern)
        .case_insensitive(ignore_case)
        .multi_line(multi_line)
        .dot_matches_new_line(dot_all)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .nest_limit(REGEX_NEST_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => RegexError::TooLarge,
            other => RegexError::Invalid(one_line(&other.to_string())),
        })
}

/// User regexes (`re`) built once and shared by every compile that is given the same memo in its
/// [`super::compile::CompileOptions`]: the CLI compiles each rule several times (`check`'s
/// validation, then once per logsource variant), and compiling a Unicode-heavy regex costs far
/// more than cloning it. Failed builds are not kept (they fail again, with the same error). The
/// memo lives as long as the options that hold it; the reward, which compiles rules for its
/// whole life, does not use one.
#[derive(Clone, Debug, Default)]
pub struct RegexMemo(Arc<Mutex<HashMap<RegexKey, Regex>>>);

/// A user regex's pattern and its (ignore case, multi-line, dot matches newline) flags.
type RegexKey = (String, [bool; 3]);

impl RegexMemo {
    /// [`build_regex`], or a clone of the regex an earlier call built from the same pattern and
    /// flags.
    pub fn build(&self, pattern: &str, ignore_case: bool, multi_line: bool, dot_all: bool) -> Result<Regex, RegexError> {
        let key = (pattern.to_string(), [ignore_case, multi_line, dot_all]);
        if let Some(regex) = self.0.lock().ok().and_then(|memo| memo.get(&key).cloned()) {
            return Ok(regex);
        }
        let regex = build_regex(pattern, ignore_case, multi_line, dot_all)?;
        if let Ok(mut memo) = self.0.lock() {
            memo.insert(key, regex.clone());
        }
        Ok(regex)
    }
}

/// Checks a user regex's syntax without compiling it (the parse-time validation; compiling is
/// what `compile` does, and it also enforces the size limit).
pub fn check_regex_syntax(pattern: &str) -> Result<(), RegexError> {
    regex_syntax::ParserBuilder::new()
        .nest_limit(REGEX_NEST_LIMIT)
        .build()
        .parse(pattern)
        .map(|_| ())
        .map_err(|e| RegexError::Invalid(one_line(&e.to_string())))
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// One compiled value.
#[derive(Clone, Debug)]
pub enum StrMatcher {
    /// `*`: any value.
    Any,
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    /// Boxed: a finder is ~300 bytes and would bloat every matcher in a list.
    Contains(Box<Finder<'static>>),
    /// `prefix*mid1*mid2*suffix` (boxed: rare, and it would double the size of every matcher).
    Glob(Box<Glob>),
    /// An anchored regex for `?` and many windash positions, built on first use (boxed: rare).
    Regex(Box<LazyRegex>),
}

/// A regex compiled the first time a value is tested against it: a hunt over thousands of rules
/// tests most of them on no event at all (the literal index rules their events out), so most
/// never pay for compiling. Building cannot fail here (see `regex_of`).
#[derive(Clone, Debug)]
pub struct LazyRegex {
    source: String,
    built: OnceLock<Regex>,
}

impl LazyRegex {
    fn get(&self) -> &Regex {
        // Only literals and fixed classes: this cannot fail unless the value is absurdly long, in
        // which case the limit error surfaces as a never-matching value rather than a panic.
        self.built.get_or_init(|| {
            regex::RegexBuilder::new(&self.source)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .unwrap_or_else(|_| Regex::new("[^\\s\\S]").expect("static regex"))
        })
    }
}

impl StrMatcher {
    #[inline]
    pub fn is_match(&self, text: &str) -> bool {
        match self {
            StrMatcher::Any => true,
            StrMatcher::Exact(s) => text == &**s,
            StrMatcher::Prefix(s) => text.as_bytes().starts_with(s.as_bytes()),
            StrMatcher::Suffix(s) => text.as_bytes().ends_with(s.as_bytes()),
            StrMatcher::Contains(f) => f.find(text.as_bytes()).is_some(),
            StrMatcher::Glob(g) => {
                let Glob { prefix, middles, suffix } = &**g;
                let b = text.as_bytes();
                if b.len() < prefix.len() + suffix.len() || !b.starts_with(prefix.as_bytes()) || !b.ends_with(suffix.as_bytes()) {
                    return false;
                }
                let mut rest = &b[prefix.len()..b.len() - suffix.len()];
                for f in middles {
                    match f.find(rest) {
                        Some(i) => rest = &rest[i + f.needle().len()..],
                        None => return false,
                    }
                }
                true
            }
            StrMatcher::Regex(r) => r.get().is_match(text),
        }
    }
}

impl StrMatcher {
    /// A literal that every text this matcher accepts contains (the longest one it knows), or
    /// `None` when it accepts texts without a common literal (`*`, the empty value, a regex).
    pub fn required_literal(&self) -> Option<&str> {
        let lit = match self {
            StrMatcher::Any | StrMatcher::Regex(_) => return None,
            StrMatcher::Exact(s) | StrMatcher::Prefix(s) | StrMatcher::Suffix(s) => &**s,
            StrMatcher::Contains(f) => std::str::from_utf8(f.needle()).ok()?,
            StrMatcher::Glob(g) => {
                let mut best: &str = &g.prefix;
                for m in &g.middles {
                    let m = std::str::from_utf8(m.needle()).ok()?;
                    if m.len() > best.len() {
                        best = m;
                    }
                }
                if g.suffix.len() > best.len() { &g.suffix } else { best }
            }
        };
        (!lit.is_empty()).then_some(lit)
    }
}

/// A `*` glob: the middles are found in order, without overlapping, between prefix and suffix.
#[derive(Clone, Debug)]
pub struct Glob {
    prefix: Box<str>,
    middles: Vec<Finder<'static>>,
    suffix: Box<str>,
}

/// Most windash positions expanded into literal variants (5^2 = 25 variants); more positions
/// compile to a regex with a character class instead.
const MAX_EXPANDED_DASHES: usize = 2;

/// Lowercases the literals of a pattern (for case-insensitive matching against pre-lowered text).
fn lowered(p: &Pattern) -> Vec<Tok> {
    let mut out = Vec::with_capacity(p.0.len());
    for t in &p.0 {
        match t {
            Tok::Lit(c) => out.extend(c.to_lowercase().map(Tok::Lit)),
            other => out.push(other.clone()),
        }
    }
    out
}

/// Compiles a pattern into one or more matchers (several when windash positions are expanded);
/// the value matches when any of them does.
pub fn compile_pattern(p: &Pattern, cased: bool) -> Vec<StrMatcher> {
    let dashes = p.0.iter().filter(|t| **t == Tok::Dash).count();
    if dashes == 0 && !p.0.contains(&Tok::One) {
        // Nearly every value: one `*` glob, lowercased as it is split (no token copies).
        return vec![compile_star_glob(&p.0, !cased)];
    }
    let toks = if cased { p.0.clone() } else { lowered(p) };
    if dashes > MAX_EXPANDED_DASHES || toks.contains(&Tok::One) {
        return vec![regex_of(&toks)];
    }
    expand_dashes(&toks).iter().map(|v| compile_star_glob(v, false)).collect()
}

fn expand_dashes(toks: &[Tok]) -> Vec<Vec<Tok>> {
    let mut variants: Vec<Vec<Tok>> = vec![Vec::with_capacity(toks.len())];
    for t in toks {
        if *t == Tok::Dash {
            variants = variants
                .into_iter()
                .flat_map(|v| {
                    DASHES.iter().map(move |d| {
                        let mut v = v.clone();
                        v.push(Tok::Lit(*d));
                        v
                    })
                })
                .collect();
        } else {
            for v in &mut variants {
                v.push(t.clone());
            }
        }
    }
    variants
}

/// Compiles a pattern whose only wildcard is `*`, lowercasing its literals with `lower`.
fn compile_star_glob(toks: &[Tok], lower: bool) -> StrMatcher {
    let mut segments: Vec<String> = vec![String::with_capacity(toks.len())];
    for t in toks {
        match t {
            Tok::Lit(c) => {
                let segment = segments.last_mut().expect("starts with one segment");
                if !lower || c.is_ascii() {
                    segment.push(if lower { c.to_ascii_lowercase() } else { *c });
                } else {
                    segment.extend(c.to_lowercase());
                }
            }
            Tok::Star => segments.push(String::new()),
            Tok::One | Tok::Dash => unreachable!("compile_pattern routes these elsewhere"),
        }
    }
    if segments.len() == 1 {
        return StrMatcher::Exact(segments.pop().unwrap().into());
    }
    let prefix = segments.remove(0);
    let suffix = segments.pop().unwrap();
    let middles: Vec<String> = segments.into_iter().filter(|s| !s.is_empty()).collect();
    match (prefix.is_empty(), middles.len(), suffix.is_empty()) {
        (true, 0, true) => StrMatcher::Any,
        (false, 0, true) => StrMatcher::Prefix(prefix.into()),
        (true, 0, false) => StrMatcher::Suffix(suffix.into()),
        (true, 1, true) => StrMatcher::Contains(Box::new(Finder::new(middles[0].as_bytes()).into_owned())),
        _ => StrMatcher::Glob(Box::new(Glob {
            prefix: prefix.into(),
            middles: middles.iter().map(|m| Finder::new(m.as_bytes()).into_owned()).collect(),
            suffix: suffix.into(),
        })),
    }
}

/// An anchored regex for patterns with `?` or many windash positions. `*` and `?` span newlines.
fn regex_of(toks: &[Tok]) -> StrMatcher {
    let mut re = String::from("(?s)^");
    for t in toks {
        match t {
            Tok::Lit(c) => re.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
            Tok::Star => re.push_str(".*"),
            Tok::One => re.push('.'),
            Tok::Dash => re.push_str("[-/\u{2013}\u{2014}\u{2015}]"),
        }
    }
    re.push('$');
    StrMatcher::Regex(Box::new(LazyRegex { source: re, built: OnceLock::new() }))
}

/// The needles of an any-of `contains` list without those that contain a shorter one as a
/// prefix or a suffix (a text that contains `x10` contains `x1`), sorted and deduplicated.
///
/// Besides matching less, this keeps building the automaton fast: aho-corasick 1.1's builder
/// moves match states to the front of its state table with a remap whose cost grows with the
/// square of the longest permutation cycle, and a list like `x0`..`x99999` (each value a prefix
/// of ten others) made one cycle of every state: 100,000 values took over a minute. Sorting
/// finds every prefix relation in O(n log n): a needle is redundant when the last needle kept
/// before it in sorted order is its prefix; suffixes the same way on reversed bytes.
fn without_redundant_needles(needles: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    fn drop_extensions(mut needles: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        needles.sort_unstable();
        needles.dedup();
        let mut kept: Vec<Vec<u8>> = Vec::with_capacity(needles.len());
        for needle in needles {
            if kept.last().is_none_or(|k| !needle.starts_with(k)) {
                kept.push(needle);
            }
        }
        kept
    }
    let reversed = |list: Vec<Vec<u8>>| {
        list.into_iter().map(|mut n| {
            n.reverse();
            n
        })
    };
    let without_prefixed = drop_extensions(needles);
    reversed(drop_extensions(reversed(without_prefixed).collect())).collect()
}

/// An OR over many compiled values, with `contains` literals merged into one Aho-Corasick
/// automaton when there are enough of them to pay for it.
#[derive(Clone, Debug)]
pub struct AnyOf {
    /// The `contains` needles merged into one automaton (empty below [`AHO_CORASICK_MIN`]).
    needles: Vec<Box<str>>,
    /// Their total length: what building their automaton costs, in the unit of
    /// [`AnyOf::searched`] (see [`AnyOf::contains_any`]).
    needle_bytes: usize,
    /// How many texts were searched needle by needle, before the automaton was built.
    searched: Counter,
    /// Their automaton, built once it pays for itself.
    contains: OnceLock<Contains>,
    /// Long lists of exact values (hashes, user names, …) as one hash lookup.
    exact: Option<HashSet<Box<str>, foldhash::fast::RandomState>>,
    others: Vec<StrMatcher>,
}

/// A relaxed atomic count that clones as a fresh zero (a clone is a new matcher with its own
/// history; the count only decides when to build).
#[derive(Debug, Default)]
struct Counter(AtomicUsize);

impl Clone for Counter {
    fn clone(&self) -> Self {
        Counter::default()
    }
}

/// The search behind an [`AnyOf`]'s needles.
#[derive(Clone, Debug)]
enum Contains {
    Automaton(AhoCorasick),
    /// When the automaton cannot be built (it never could for real rules): one finder each.
    Finders(Vec<Finder<'static>>),
}

/// The rough cost of one regex test, in units of one byte compare (see `AnyOf::cost`).
pub(crate) const REGEX_COST: u32 = 64;

/// From this many `contains` literals on, one automaton beats a loop of memmem finders.
const AHO_CORASICK_MIN: usize = 4;
/// From this many exact values on, hashing the event value beats comparing it to each.
const HASH_SET_MIN: usize = 16;

impl AnyOf {
    pub fn new(matchers: Vec<StrMatcher>) -> AnyOf {
        let n_exact = matchers.iter().filter(|m| matches!(m, StrMatcher::Exact(_))).count();
        let (exact, matchers) = if n_exact >= HASH_SET_MIN {
            let (ex, rest): (Vec<_>, Vec<_>) = matchers.into_iter().partition(|m| matches!(m, StrMatcher::Exact(_)));
            let set = ex
                .into_iter()
                .map(|m| match m {
                    StrMatcher::Exact(s) => s,
                    _ => unreachable!("partitioned on Exact"),
                })
                .collect();
            (Some(set), rest)
        } else {
            (None, matchers)
        };
        let n_contains = matchers.iter().filter(|m| matches!(m, StrMatcher::Contains(_))).count();
        if n_contains < AHO_CORASICK_MIN {
            return AnyOf { needles: Vec::new(), needle_bytes: 0, searched: Counter::default(), contains: OnceLock::new(), exact, others: matchers };
        }
        let mut needles: Vec<Vec<u8>> = Vec::new();
        let mut others = Vec::new();
        for m in matchers {
            match m {
                StrMatcher::Contains(f) => needles.push(f.needle().to_vec()),
                other => others.push(other),
            }
        }
        // Needles come from `&str` patterns, so they are UTF-8.
        let needles: Vec<Box<str>> = without_redundant_needles(needles).into_iter().map(|n| String::from_utf8_lossy(&n).into()).collect();
        let needle_bytes = needles.iter().map(|n| n.len()).sum();
        AnyOf { needles, needle_bytes, searched: Counter::default(), contains: OnceLock::new(), exact, others }
    }

    /// Whether `text` contains one of the needles.
    ///
    /// Building the automaton costs about as much as comparing every needle with one text per
    /// byte of needles (measured on SigmaHQ's lists: 17 ms for the 4,432 hashes of
    /// `driver_load_win_vuln_drivers`, ~80 ns per needle byte, and ~60 ns per needle compared).
    /// A list is often searched in only a handful of texts (a hunt's literal index passes a rule
    /// only the events holding one of its literals; the 4,432 hashes meet 8 events in our
    /// corpus), so the needles are first compared one by one, and the automaton is built once
    /// that has cost as much as building it would have: the rent-or-buy rule, never more than
    /// twice the cost of the better choice made in hindsight.
    fn contains_any(&self, text: &str) -> bool {
        let search = match self.contains.get() {
            Some(search) => search,
            None => {
                let searched = self.searched.0.fetch_add(1, Ordering::Relaxed);
                if searched.saturating_mul(self.needles.len()) < self.needle_bytes {
                    return self.needles.iter().any(|n| memchr::memmem::find(text.as_bytes(), n.as_bytes()).is_some());
                }
                self.contains()
            }
        };
        match search {
            Contains::Automaton(ac) => ac.is_match(text.as_bytes()),
            Contains::Finders(finders) => finders.iter().any(|f| f.find(text.as_bytes()).is_some()),
        }
    }

    /// The needles' search, built on first call.
    fn contains(&self) -> &Contains {
        self.contains.get_or_init(|| {
            // A contiguous NFA builds several times faster than the DFA the builder would pick
            // for short lists and searches nearly as fast.
            match AhoCorasick::builder().kind(Some(AhoCorasickKind::ContiguousNFA)).build(self.needles.iter().map(|n| n.as_bytes())) {
                Ok(ac) => Contains::Automaton(ac),
                Err(_) => Contains::Finders(self.needles.iter().map(|n| Finder::new(n.as_bytes()).into_owned()).collect()),
            }
        })
    }

    /// The values this set accepts when it only accepts exact values (no wildcards, no
    /// contains), for index lookups; `None` otherwise.
    pub fn exact_values(&self) -> Option<Vec<&str>> {
        if !self.needles.is_empty() {
            return None;
        }
        let mut out: Vec<&str> = self.exact.iter().flatten().map(|s| &**s).collect();
        for m in &self.others {
            match m {
                StrMatcher::Exact(s) => out.push(s),
                _ => return None,
            }
        }
        Some(out)
    }

    /// Literals of which every text this set accepts contains at least one (one per value), or
    /// `None` when some value accepts texts without a literal (`*`, an empty value, a regex).
    /// Lets a caller skip texts that contain none of them without running the matchers.
    pub fn required_literals(&self) -> Option<Vec<&str>> {
        let mut out: Vec<&str> = self.needles.iter().map(|n| &**n).collect();
        for e in self.exact.iter().flatten() {
            if e.is_empty() {
                return None;
            }
            out.push(e);
        }
        for m in &self.others {
            out.push(m.required_literal()?);
        }
        Some(out)
    }

    /// A rough cost of one [`AnyOf::is_match`] (see `CompiledItem::cost`): a hash lookup or one
    /// automaton pass for the merged values, then each other matcher.
    pub fn cost(&self) -> u32 {
        let merged = u32::from(self.exact.is_some()) + if self.needles.is_empty() { 0 } else { 4 };
        let others: u32 = self
            .others
            .iter()
            .map(|m| match m {
                StrMatcher::Any | StrMatcher::Exact(_) | StrMatcher::Prefix(_) | StrMatcher::Suffix(_) => 1,
                StrMatcher::Contains(_) => 2,
                StrMatcher::Glob(_) => 3,
                StrMatcher::Regex(_) => REGEX_COST,
            })
            .sum();
        (merged + others).max(1)
    }

    #[inline]
    pub fn is_match(&self, text: &str) -> bool {
        if let Some(set) = &self.exact
            && set.contains(text)
        {
            return true;
        }
        if !self.needles.is_empty() && self.contains_any(text) {
            return true;
        }
        self.others.iter().any(|m| m.is_match(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, text: &str) -> bool {
        compile_pattern(&Pattern::parse(pattern), false).iter().any(|m| m.is_match(&text.to_lowercase()))
    }

    #[test]
    fn wildcards_anywhere() {
        // `\\*` is a backslash then a wildcard; `\*` would be a literal star (spec B12).
        assert!(m(r"C:\Windows\\*\whoami.exe", r"c:\windows\system32\whoami.exe"));
        assert!(!m(r"C:\Windows\\*\whoami.exe", r"c:\windows\system32\whoami.exe.bak"));
        assert!(m(r"C:\Windows\*\whoami.exe", r"c:\windows*\whoami.exe"));
        assert!(!m(r"C:\Windows\*\whoami.exe", r"c:\windows\system32\whoami.exe"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(m("a*b*c", "abc"));
        assert!(!m("a*b*c", "acb"));
        assert!(!m("ab*ba", "aba"), "prefix and suffix must not overlap");
        assert!(m("who?mi", "whoami"));
        assert!(!m("who?mi", "whomi"));
        assert!(m("*", ""));
        assert!(m("", ""));
        assert!(!m("", "x"));
        assert!(m("a*", "a\nb"), "* spans newlines");
        assert!(m("a?b", "a\nb"), "? matches a newline");
    }

    #[test]
    fn escaped_wildcards_are_literal() {
        assert!(m(r"a\*b", "a*b"));
        assert!(!m(r"a\*b", "axb"));
        assert!(m(r"a\?b", "a?b"));
        assert!(!m(r"a\?b", "axb"));
        assert!(m(r"x\\*", r"x\anything"));
        assert!(!m(r"x\\*", "xanything"));
    }

    #[test]
    fn windash_variants_and_regex_fallback() {
        let p = Pattern::parse(" -a -b -c").windash();
        let ms = compile_pattern(&p, false);
        assert_eq!(ms.len(), 1, "three dashes use a regex");
        assert!(ms[0].is_match(" \u{2014}a /b \u{2015}c"));
        let p = Pattern::parse("*-enc*").windash();
        let ms = compile_pattern(&p, false);
        assert_eq!(ms.len(), 5);
        for d in ["-", "/", "\u{2013}", "\u{2014}", "\u{2015}"] {
            assert!(ms.iter().any(|m| m.is_match(&format!("powershell {d}enc abc"))), "{d}");
        }
        assert!(!ms.iter().any(|m| m.is_match("powershell +enc")));
    }

    #[test]
    fn any_of_uses_aho_corasick_for_long_contains_lists() {
        let pats = ["*alpha*", "*beta*", "*gamma*", "*delta*", "exact", "pre*"];
        let ms: Vec<_> = pats.iter().flat_map(|p| compile_pattern(&Pattern::parse(p), false)).collect();
        let any = AnyOf::new(ms);
        assert_eq!(any.needles.len(), 4);
        assert!(any.contains.get().is_none(), "the automaton is built once it pays");
        assert!(any.is_match("xxgammaxx"));
        assert!(any.is_match("exact"));
        assert!(any.is_match("prefix"));
        assert!(!any.is_match("exactly"));
        assert!(!any.is_match("nothing"));
    }

    #[test]
    fn any_of_compares_needles_one_by_one_until_the_automaton_pays() {
        // 100 needles of 8 bytes: the automaton costs 800 needle comparisons, 8 texts' worth.
        let pats: Vec<String> = (0..100).map(|i| format!("*needle{i:02}*")).collect();
        let ms: Vec<_> = pats.iter().flat_map(|p| compile_pattern(&Pattern::parse(p), false)).collect();
        let any = AnyOf::new(ms);
        assert_eq!((any.needles.len(), any.needle_bytes), (100, 800));
        let texts = ["xx needle42 xx", "nothing here", "needle99", "needle1", "a needle00", "zz", "needle7x"];
        let expected = [true, false, true, false, true, false, false];
        for round in 0..3 {
            for (text, want) in texts.iter().zip(expected) {
                assert_eq!(any.is_match(text), want, "{text:?} in round {round}");
            }
            // The first round (7 texts, 700 comparisons) stays below the build cost; the
            // second round's second text reaches it.
            assert_eq!(any.contains.get().is_some(), round > 0, "round {round}");
        }
        assert!(matches!(any.contains.get(), Some(Contains::Automaton(_))));
        // A clone counts its own texts.
        assert_eq!(any.clone().searched.0.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn uncased_values_lowercase_beyond_ascii() {
        assert!(m("*ÄPFEL*", "Ein Äpfel-Baum"));
        assert!(m("C:\\ÜBER\\x*", "c:\\über\\x.exe"));
        // 'İ' lowercases to two characters (i + combining dot).
        assert!(m("İx", "İX"));
        assert!(!m("İx", "ix"));
        // The same through the regex path (`?`).
        assert!(m("ÄB?X", "äb/x"));
    }

    #[test]
    fn needles_that_extend_a_shorter_one_are_dropped() {
        let needles = ["x1", "x10", "ax1", "x2", "b", "cb", "x1", "zz"].map(|n| n.as_bytes().to_vec()).to_vec();
        let mut kept: Vec<String> = without_redundant_needles(needles).into_iter().map(|n| String::from_utf8(n).unwrap()).collect();
        kept.sort();
        // "x10" starts with "x1", "cb" ends with "b"; "ax1" only contains "x1" in its middle
        // once reversed… it ends with it: dropped too.
        assert_eq!(kept, ["b", "x1", "x2", "zz"]);
    }

    #[test]
    fn any_of_hashes_long_exact_lists() {
        let mut ms: Vec<_> = (0..20).flat_map(|i| compile_pattern(&Pattern::parse(&format!("user{i}")), false)).collect();
        ms.extend(compile_pattern(&Pattern::parse("*.exe"), false));
        let any = AnyOf::new(ms);
        assert!(any.exact.is_some());
        assert!(any.is_match("user7"));
        assert!(any.is_match("x.exe"));
        assert!(!any.is_match("user77"));
    }

    #[test]
    fn a_regex_memo_builds_each_pattern_once_and_keeps_no_failure() {
        let memo = RegexMemo::default();
        let a = memo.build("ab+c", true, false, false).unwrap();
        assert!(a.is_match("xABBCx"));
        assert!(memo.build("ab+c", true, false, false).unwrap().is_match("abc"));
        assert!(!memo.build("ab+c", false, false, false).unwrap().is_match("ABC"), "other flags, other regex");
        assert_eq!(memo.0.lock().unwrap().len(), 2);
        assert_eq!(memo.build("a{1000}{1000}", false, false, false).unwrap_err(), RegexError::TooLarge);
        assert_eq!(memo.build("(unclosed", false, false, false).unwrap_err(), build_regex("(unclosed", false, false, false).unwrap_err());
        assert_eq!(memo.0.lock().unwrap().len(), 2);
    }

    #[test]
    fn huge_regex_repetition_is_refused_quickly() {
        let t = std::time::Instant::now();
        let e = build_regex("a{1000}{1000}", false, false, false).unwrap_err();
        assert_eq!(e, RegexError::TooLarge);
        assert!(e.to_string().contains("too large"), "{e}");
        assert!(t.elapsed().as_secs() < 2);
        assert!(build_regex("(unclosed", false, false, false).unwrap_err().to_string().contains("invalid regular expression"));
        assert!(build_regex("abc", true, false, false).unwrap().is_match("xABCx"));
    }
}
