//! What a rule matches: every modifier and condition form, each with events that must and must
//! not match (sigma-spec.md sections B, C, D and K).

use std::collections::HashMap;

use sigma_engine::event::{Event, FieldTable, FileId, Value};
use sigma_engine::{CompileOptions, CompiledRule, Document, PlaceholderPolicy, Rule, compile, parse_documents};

fn rule(detection: &str) -> Rule {
    let text = format!("title: t\nlogsource:\n  product: windows\ndetection:\n{detection}");
    let parsed = parse_documents(&text, "test.yml");
    let errors: Vec<String> = parsed.diagnostics.iter().filter(|d| d.is_error()).map(|d| d.to_string()).collect();
    assert!(errors.is_empty(), "rule should be valid:\n{text}\n{errors:#?}");
    match parsed.documents.into_iter().next() {
        Some(Document::Rule(r)) => r,
        other => panic!("expected a rule, got {other:?}"),
    }
}

/// A compiled rule plus the field table its keys live in.
struct Compiled {
    rule: CompiledRule,
    table: FieldTable,
}

fn compiled_with(detection: &str, options: &CompileOptions) -> Compiled {
    let mut table = FieldTable::new();
    let rule = compile(&rule(detection), options, &mut |n| table.intern(n)).expect("compiles");
    Compiled { rule, table }
}

fn compiled(detection: &str) -> Compiled {
    compiled_with(detection, &CompileOptions::default())
}

impl Compiled {
    fn on(&mut self, fields: &[(&str, Value)]) -> bool {
        self.on_at(fields, None)
    }

    fn on_at(&mut self, fields: &[(&str, Value)], timestamp_us: Option<i64>) -> bool {
        let fields = fields.iter().map(|(k, v)| (self.table.intern(k), v.clone())).collect();
        self.rule.matches(&Event::new(FileId(0), 1, timestamp_us, fields))
    }
}

fn s(text: &str) -> Value {
    Value::string(text)
}

// ---------------------------------------------------------------- structure (B2–B5, B13–B14)

#[test]
fn map_is_and() {
    let mut r = compiled("  sel:\n    A: x\n    B: y\n  condition: sel\n");
    assert!(r.on(&[("A", s("x")), ("B", s("y"))]));
    assert!(!r.on(&[("A", s("x")), ("B", s("z"))]));
    assert!(!r.on(&[("A", s("x"))]), "a missing field makes the item false");
}

#[test]
fn list_of_maps_is_or() {
    let mut r = compiled("  sel:\n    - A: x\n    - B: y\n  condition: sel\n");
    assert!(r.on(&[("A", s("x"))]));
    assert!(r.on(&[("B", s("y"))]));
    assert!(!r.on(&[("A", s("y")), ("B", s("x"))]));
}

#[test]
fn value_list_is_or() {
    let mut r = compiled("  sel:\n    A:\n      - x\n      - y\n  condition: sel\n");
    assert!(r.on(&[("A", s("y"))]));
    assert!(!r.on(&[("A", s("z"))]));
}

#[test]
fn keyword_list_searches_every_value_as_substring() {
    let mut r = compiled("  keywords:\n    - 'mimikatz'\n    - 'sekurlsa::'\n  condition: keywords\n");
    assert!(r.on(&[("CommandLine", s("run Mimikatz.exe now"))]));
    assert!(r.on(&[("Other", s("x")), ("Payload", s("sekurlsa::logonpasswords"))]));
    assert!(!r.on(&[("CommandLine", s("notepad"))]));
    let mut single = compiled("  kw: 'evil'\n  condition: kw\n");
    assert!(single.on(&[("A", s("very EVIL thing"))]));
    assert!(!single.on(&[("A", s("good"))]));
}

#[test]
fn keyword_all_map_needs_every_keyword() {
    let mut r = compiled("  keywords:\n    '|all':\n      - 'Remove-MailboxExportRequest'\n      - ' -Identity '\n  condition: keywords\n");
    assert!(r.on(&[("Payload", s("Remove-MailboxExportRequest -Identity x"))]));
    assert!(r.on(&[("A", s("remove-mailboxexportrequest")), ("B", s("a -identity b"))]), "keywords may sit in different fields");
    assert!(!r.on(&[("Payload", s("Remove-MailboxExportRequest"))]));
}

#[test]
fn null_matches_absent_null_or_empty() {
    let mut r = compiled("  sel:\n    A: null\n  condition: sel\n");
    assert!(r.on(&[]));
    assert!(r.on(&[("A", Value::null())]));
    assert!(r.on(&[("A", s(""))]));
    assert!(!r.on(&[("A", s("x"))]));
}

#[test]
fn empty_string_needs_a_present_empty_field() {
    let mut r = compiled("  sel:\n    A: ''\n  condition: sel\n");
    assert!(r.on(&[("A", s(""))]));
    assert!(!r.on(&[]));
    assert!(!r.on(&[("A", s("x"))]));
}

#[test]
fn numbers_and_booleans_compare_as_strings() {
    let mut r = compiled("  sel:\n    EventID: 4688\n  condition: sel\n");
    assert!(r.on(&[("EventID", Value::int(4688))]));
    assert!(r.on(&[("EventID", s("4688"))]));
    assert!(!r.on(&[("EventID", Value::int(46880))]));
    let mut quoted = compiled("  sel:\n    EventID: '4688'\n  condition: sel\n");
    assert!(quoted.on(&[("EventID", Value::int(4688))]));
    let mut b = compiled("  sel:\n    Flag: true\n  condition: sel\n");
    assert!(b.on(&[("Flag", Value::bool(true))]));
    assert!(b.on(&[("Flag", s("True"))]));
    assert!(!b.on(&[("Flag", Value::bool(false))]));
}

#[test]
fn strings_are_case_insensitive_and_anchored() {
    let mut r = compiled("  sel:\n    Image: 'C:\\Windows\\System32\\cmd.exe'\n  condition: sel\n");
    assert!(r.on(&[("Image", s("c:\\windows\\system32\\CMD.EXE"))]));
    assert!(!r.on(&[("Image", s("c:\\windows\\system32\\cmd.exe.bak"))]), "no wildcard: the whole value must match");
}

#[test]
fn multi_valued_fields_match_on_any_element() {
    let mut r = compiled("  sel:\n    Data: 'b'\n  condition: sel\n");
    assert!(r.on(&[("Data", s("a")), ("Data", s("b"))]));
    assert!(!r.on(&[("Data", s("a")), ("Data", s("c"))]));
}

// ---------------------------------------------------------------- wildcards and escaping (B10–B12)

#[test]
fn wildcards_and_escapes() {
    let mut star = compiled("  sel:\n    Image: 'C:\\Windows\\\\*\\whoami.exe'\n  condition: sel\n");
    assert!(star.on(&[("Image", s("C:\\Windows\\System32\\whoami.exe"))]));
    assert!(!star.on(&[("Image", s("C:\\Windows\\System32\\whoami.exe2"))]));
    let mut q = compiled("  sel:\n    A: 'who?mi'\n  condition: sel\n");
    assert!(q.on(&[("A", s("whoami"))]));
    assert!(!q.on(&[("A", s("whoaami"))]));
    let mut literal = compiled("  sel:\n    A: 'a\\*b'\n  condition: sel\n");
    assert!(literal.on(&[("A", s("a*b"))]));
    assert!(!literal.on(&[("A", s("aXb"))]));
    let mut lq = compiled("  sel:\n    A: 'a\\?b'\n  condition: sel\n");
    assert!(lq.on(&[("A", s("a?b"))]));
    assert!(!lq.on(&[("A", s("aXb"))]));
}

// ---------------------------------------------------------------- modifiers (C)

#[test]
fn contains_startswith_endswith() {
    let mut c = compiled("  sel:\n    A|contains: 'mid'\n  condition: sel\n");
    assert!(c.on(&[("A", s("xxMIDxx"))]));
    assert!(!c.on(&[("A", s("mi d"))]));
    let mut st = compiled("  sel:\n    A|startswith: 'pre'\n  condition: sel\n");
    assert!(st.on(&[("A", s("PREfix"))]));
    assert!(!st.on(&[("A", s("xpre"))]));
    let mut en = compiled("  sel:\n    A|endswith: '.exe'\n  condition: sel\n");
    assert!(en.on(&[("A", s("a.EXE"))]));
    assert!(!en.on(&[("A", s("a.exe.txt"))]));
    let mut wild = compiled("  sel:\n    A|contains: 'a*c'\n  condition: sel\n");
    assert!(wild.on(&[("A", s("xxabbbcxx"))]), "wildcards inside a contains value still apply");
}

#[test]
fn all_ands_the_values() {
    let mut r = compiled("  sel:\n    A|contains|all:\n      - 'one'\n      - 'two'\n  condition: sel\n");
    assert!(r.on(&[("A", s("two and one"))]));
    assert!(!r.on(&[("A", s("one only"))]));
}

#[test]
fn long_contains_lists_use_the_same_semantics() {
    let values: String = (0..40).map(|i| format!("      - 'needle{i}'\n")).collect();
    let mut r = compiled(&format!("  sel:\n    A|contains:\n{values}  condition: sel\n"));
    assert!(r.on(&[("A", s("xxNEEDLE37xx"))]));
    assert!(!r.on(&[("A", s("needle"))]));
}

#[test]
fn base64_and_base64offset() {
    let mut b = compiled("  sel:\n    A|base64: 'ping'\n  condition: sel\n");
    assert!(b.on(&[("A", s("cGluZw=="))]));
    assert!(!b.on(&[("A", s("ping"))]));
    let mut off = compiled("  sel:\n    A|base64offset|contains: 'ping'\n  condition: sel\n");
    // base64 of "ping", " ping", "  ping" embedded in longer text
    for encoded in ["cGluZw==", "IHBpbmc=", "ICBwaW5n"] {
        assert!(off.on(&[("A", s(&format!("x {encoded} y")))]), "{encoded}");
    }
    assert!(!off.on(&[("A", s("cG9uZw=="))]));
}

#[test]
fn utf16_encodings_before_base64() {
    let mut wide = compiled("  sel:\n    A|wide|base64offset|contains: 'Invoke'\n  condition: sel\n");
    assert!(wide.on(&[("A", s("powershell -enc SQBuAHYAbwBrAGUALQBYAA=="))]));
    assert!(!wide.on(&[("A", s("SW52b2tl"))]), "plain UTF-8 base64 of Invoke");
    let mut le = compiled("  sel:\n    A|utf16le|base64: 'ab'\n  condition: sel\n");
    assert!(le.on(&[("A", s("YQBiAA=="))]));
    let mut be = compiled("  sel:\n    A|utf16be|base64: 'ab'\n  condition: sel\n");
    assert!(be.on(&[("A", s("AGEAYg=="))]));
    let mut bom = compiled("  sel:\n    A|utf16|base64: 'ab'\n  condition: sel\n");
    assert!(bom.on(&[("A", s("//5hAGIA"))]));
}

#[test]
fn windash_accepts_every_dash_variant() {
    let mut r = compiled("  sel:\n    CommandLine|windash|contains: ' -encodedcommand '\n  condition: sel\n");
    for d in ["-", "/", "\u{2013}", "\u{2014}", "\u{2015}"] {
        assert!(r.on(&[("CommandLine", s(&format!("powershell {d}EncodedCommand abc")))]), "{d}");
    }
    assert!(!r.on(&[("CommandLine", s("powershell EncodedCommand abc"))]));
    let mut many = compiled("  sel:\n    CommandLine|windash|contains: ' -a -b -c'\n  condition: sel\n");
    assert!(many.on(&[("CommandLine", s("x /a \u{2013}b -c"))]));
    assert!(!many.on(&[("CommandLine", s("x +a -b -c"))]));
}

#[test]
fn regex_is_case_sensitive_search_with_flags() {
    let mut r = compiled("  sel:\n    A|re: 'ab+c'\n  condition: sel\n");
    assert!(r.on(&[("A", s("xxabbbcxx"))]), "unanchored search");
    assert!(!r.on(&[("A", s("ABC"))]), "case-sensitive by default");
    let mut i = compiled("  sel:\n    A|re|i: '^abc$'\n  condition: sel\n");
    assert!(i.on(&[("A", s("ABC"))]));
    assert!(!i.on(&[("A", s("xABC"))]));
    let mut m = compiled("  sel:\n    A|re|m: '^two$'\n  condition: sel\n");
    assert!(m.on(&[("A", s("one\ntwo\nthree"))]));
    let mut no_m = compiled("  sel:\n    A|re: '^two$'\n  condition: sel\n");
    assert!(!no_m.on(&[("A", s("one\ntwo\nthree"))]));
    let mut dot = compiled("  sel:\n    A|re|s: 'a.b'\n  condition: sel\n");
    assert!(dot.on(&[("A", s("a\nb"))]));
    let mut no_s = compiled("  sel:\n    A|re: 'a.b'\n  condition: sel\n");
    assert!(!no_s.on(&[("A", s("a\nb"))]));
}

#[test]
fn cidr_v4_and_v6() {
    let mut r = compiled("  sel:\n    Ip|cidr:\n      - '10.0.0.0/8'\n      - 'fe80::/10'\n  condition: sel\n");
    assert!(r.on(&[("Ip", s("10.1.2.3"))]));
    assert!(r.on(&[("Ip", s("fe80::1"))]));
    assert!(r.on(&[("Ip", s("::ffff:10.0.0.1"))]), "IPv4-mapped IPv6");
    assert!(!r.on(&[("Ip", s("11.0.0.1"))]));
    assert!(!r.on(&[("Ip", s("2001:db8::1"))]));
    assert!(!r.on(&[("Ip", s("not an ip"))]));
    let mut all = compiled("  sel:\n    Ip|cidr: '0.0.0.0/0'\n  condition: sel\n");
    assert!(all.on(&[("Ip", s("1.2.3.4"))]));
}

#[test]
fn exists_true_and_false() {
    let mut yes = compiled("  sel:\n    A|exists: true\n  condition: sel\n");
    assert!(yes.on(&[("A", s(""))]));
    assert!(!yes.on(&[("B", s("x"))]));
    let mut no = compiled("  sel:\n    A|exists: false\n  condition: sel\n");
    assert!(no.on(&[("B", s("x"))]));
    assert!(!no.on(&[("A", s("x"))]));
}

#[test]
fn cased_compares_the_original_text() {
    let mut r = compiled("  sel:\n    A|cased: 'CmD'\n  condition: sel\n");
    assert!(r.on(&[("A", s("CmD"))]));
    assert!(!r.on(&[("A", s("cmd"))]));
    let mut c = compiled("  sel:\n    A|contains|cased: 'X*Y'\n  condition: sel\n");
    assert!(c.on(&[("A", s("aXbYc"))]));
    assert!(!c.on(&[("A", s("axbyc"))]));
}

#[test]
fn fieldref_compares_two_fields() {
    let mut eq = compiled("  sel:\n    A|fieldref: B\n  condition: sel\n");
    assert!(eq.on(&[("A", s("Same")), ("B", s("same"))]));
    assert!(!eq.on(&[("A", s("one")), ("B", s("two"))]));
    assert!(!eq.on(&[("A", s("one"))]), "the other field is missing");
    let mut ends = compiled("  sel:\n    ParentImage|fieldref|endswith: Image\n  condition: sel\n");
    assert!(ends.on(&[("ParentImage", s("c:\\x\\a.exe")), ("Image", s("a.exe"))]));
    assert!(!ends.on(&[("ParentImage", s("c:\\x\\a.exe")), ("Image", s("b.exe"))]));
    let mut neq = compiled("  sel:\n    A|fieldref|neq: B\n  condition: sel\n");
    assert!(neq.on(&[("A", s("one")), ("B", s("two"))]));
    assert!(!neq.on(&[("A", s("one")), ("B", s("one"))]));
}

#[test]
fn expand_uses_configured_placeholders() {
    let det = "  sel:\n    Host|expand: '%servers%'\n  condition: sel\n";
    let opts = CompileOptions { placeholders: HashMap::from([("servers".into(), vec!["dc1".into(), "dc2*".into()])]), ..Default::default() };
    let mut r = compiled_with(det, &opts);
    assert!(r.on(&[("Host", s("DC1"))]));
    assert!(!r.on(&[("Host", s("dc2x"))]), "placeholder values are literal");
    assert!(r.on(&[("Host", s("dc2*"))]));
    assert!(!r.on(&[("Host", s("%servers%"))]));

    let e = compile(&rule(det), &CompileOptions::default(), &mut |_| sigma_engine::event::FieldKey(0)).unwrap_err();
    assert!(e.message.contains("placeholder '%servers%' has no configured values"), "{}", e.message);

    let nothing = CompileOptions { unknown_placeholder: PlaceholderPolicy::MatchNothing, ..Default::default() };
    let mut r = compiled_with(det, &nothing);
    assert!(!r.on(&[("Host", s("dc1"))]));
    assert!(!r.on(&[("Host", s("%servers%"))]));
}

#[test]
fn numeric_comparisons() {
    let mut gt = compiled("  sel:\n    N|gt: 10\n  condition: sel\n");
    assert!(gt.on(&[("N", Value::int(11))]));
    assert!(gt.on(&[("N", s("0x10"))]), "hex event values parse");
    assert!(!gt.on(&[("N", Value::int(10))]));
    assert!(!gt.on(&[("N", s("eleven"))]));
    let mut gte = compiled("  sel:\n    N|gte: 10\n  condition: sel\n");
    assert!(gte.on(&[("N", Value::int(10))]));
    let mut lt = compiled("  sel:\n    N|lt: -1.5\n  condition: sel\n");
    assert!(lt.on(&[("N", s("-2"))]));
    assert!(!lt.on(&[("N", s("-1.5"))]));
    let mut lte = compiled("  sel:\n    N|lte: 3\n  condition: sel\n");
    assert!(lte.on(&[("N", s("3.0"))]));
    assert!(!lte.on(&[("N", s("3.1"))]));
}

#[test]
fn neq_negates_the_item() {
    let mut r = compiled("  sel:\n    A|neq: x\n  condition: sel\n");
    assert!(r.on(&[("A", s("y"))]));
    assert!(!r.on(&[("A", s("X"))]));
    assert!(r.on(&[]), "a missing field differs from x");
    let mut list = compiled("  sel:\n    A|neq:\n      - x\n      - y\n  condition: sel\n");
    assert!(list.on(&[("A", s("z"))]));
    assert!(!list.on(&[("A", s("y"))]), "NOT (x OR y)");
}

#[test]
fn time_modifiers_read_a_timestamp() {
    let mut hour = compiled("  sel:\n    UtcTime|hour: 23\n  condition: sel\n");
    assert!(hour.on(&[("UtcTime", s("2019-03-19 23:34:25.123"))]));
    assert!(!hour.on(&[("UtcTime", s("2019-03-19 22:34:25.123"))]));
    assert!(!hour.on(&[("UtcTime", s("not a time"))]));
    // 2019-03-19T23:34:25Z as the event's own timestamp when the field is absent
    assert!(hour.on_at(&[], Some(1_553_038_465_000_000)));
    let mut late = compiled("  sel:\n    T|hour|gte: 20\n  condition: sel\n");
    assert!(late.on(&[("T", s("2020-01-01T21:00:00Z"))]));
    assert!(!late.on(&[("T", s("2020-01-01T19:59:59Z"))]));
    for (m, v, text) in [
        ("minute", "34", "2019-03-19T23:34:25Z"),
        ("day", "19", "2019-03-19T23:34:25Z"),
        ("week", "12", "2019-03-19T23:34:25Z"),
        ("month", "3", "2019-03-19T23:34:25Z"),
        ("year", "2019", "2019-03-19T23:34:25Z"),
    ] {
        let mut r = compiled(&format!("  sel:\n    T|{m}: {v}\n  condition: sel\n"));
        assert!(r.on(&[("T", s(text))]), "{m}");
        assert!(!r.on(&[("T", s("2001-11-05T01:01:01Z"))]), "{m}");
    }
}

// ---------------------------------------------------------------- conditions (D, B17)

fn three() -> &'static str {
    "  a:\n    A: 1\n  b:\n    B: 1\n  c:\n    C: 1\n"
}

#[test]
fn not_binds_tighter_than_and_tighter_than_or() {
    let mut r = compiled(&format!("{}  condition: a or b and c\n", three()));
    assert!(r.on(&[("A", s("1"))]));
    assert!(!r.on(&[("B", s("1"))]));
    assert!(r.on(&[("B", s("1")), ("C", s("1"))]));
    let mut n = compiled(&format!("{}  condition: not a and b\n", three()));
    assert!(n.on(&[("B", s("1"))]));
    assert!(!n.on(&[("A", s("1")), ("B", s("1"))]));
    let mut p = compiled(&format!("{}  condition: (a or b) and c\n", three()));
    assert!(!p.on(&[("A", s("1"))]));
    assert!(p.on(&[("A", s("1")), ("C", s("1"))]));
}

#[test]
fn not_of_a_missing_field_is_true() {
    let mut r = compiled("  sel:\n    A: x\n  filter:\n    B: y\n  condition: sel and not filter\n");
    assert!(r.on(&[("A", s("x"))]), "two-valued logic: the filter's field is missing, so 'not filter' holds");
    assert!(!r.on(&[("A", s("x")), ("B", s("y"))]));
}

#[test]
fn one_of_and_all_of_patterns() {
    let det = "  sel_a:\n    A: 1\n  sel_b:\n    B: 1\n  other:\n    C: 1\n";
    let mut one = compiled(&format!("{det}  condition: 1 of sel_*\n"));
    assert!(one.on(&[("B", s("1"))]));
    assert!(!one.on(&[("C", s("1"))]));
    let mut any = compiled(&format!("{det}  condition: any of sel_*\n"));
    assert!(any.on(&[("A", s("1"))]));
    let mut all = compiled(&format!("{det}  condition: all of sel_*\n"));
    assert!(all.on(&[("A", s("1")), ("B", s("1"))]));
    assert!(!all.on(&[("A", s("1"))]));
    let mut mid = compiled(&format!("{det}  condition: 1 of s*_b\n"));
    assert!(mid.on(&[("B", s("1"))]));
    assert!(!mid.on(&[("A", s("1"))]));
}

#[test]
fn them_skips_underscore_identifiers() {
    let det = "  a:\n    A: 1\n  _helper:\n    H: 1\n";
    let mut one = compiled(&format!("{det}  condition: 1 of them\n"));
    assert!(one.on(&[("A", s("1"))]));
    assert!(!one.on(&[("H", s("1"))]));
    let mut all = compiled(&format!("{det}  condition: all of them\n"));
    assert!(all.on(&[("A", s("1"))]), "_helper is not part of 'them'");
    let mut explicit = compiled(&format!("{det}  condition: a and _helper\n"));
    assert!(!explicit.on(&[("A", s("1"))]));
    assert!(explicit.on(&[("A", s("1")), ("H", s("1"))]));
}

#[test]
fn condition_list_is_ored() {
    let mut r = compiled(&format!("{}  condition:\n    - a and b\n    - c\n", three()));
    assert!(r.on(&[("C", s("1"))]));
    assert!(r.on(&[("A", s("1")), ("B", s("1"))]));
    assert!(!r.on(&[("A", s("1"))]));
}

#[test]
fn compiled_rules_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<CompiledRule>();
}

#[test]
fn required_values_pin_a_field_only_when_every_branch_does() {
    let req = |det: &str| {
        let c = compiled(det);
        let key = c.table.get("EventID").expect("the rule uses EventID");
        c.rule.required_values(key)
    };
    let two = "  a:\n    EventID: 4719\n    X: 1\n  b:\n    EventID:\n      - 4720\n      - 4721\n";
    assert_eq!(req(&format!("{two}  condition: a or b\n")), Some(vec!["4719".into(), "4720".into(), "4721".into()]));
    assert_eq!(req(&format!("{two}  condition: a and not b\n")), Some(vec!["4719".into()]));
    assert_eq!(req(&format!("{two}  c:\n    Y: 2\n  condition: a or c\n")), None, "branch c does not pin EventID");
    assert_eq!(req("  a:\n    EventID|contains: 47\n  condition: a\n"), None);
    assert_eq!(req("  a:\n    EventID|neq: 4719\n  condition: a\n"), None);
    assert_eq!(req(&format!("{two}  condition: a and b\n")), Some(vec![]), "contradictory: can never match");
}
