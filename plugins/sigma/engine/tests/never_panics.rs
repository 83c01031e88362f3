//! Property tests: parsing, compiling and matching never panic, whatever the input (rules come
//! from a language model, so any text is possible).

use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::prelude::*;
use sigma_engine::event::{Event, FieldTable, FileId, Value};
use sigma_engine::{CompileOptions, Document, PlaceholderPolicy, compile, parse_documents};

/// Parses, compiles every rule and runs it on a small event: none of it may panic.
fn exercise(text: &str) {
    let parsed = parse_documents(text, "fuzz.yml");
    let mut table = FieldTable::new();
    let options = CompileOptions { unknown_placeholder: PlaceholderPolicy::MatchNothing, ..Default::default() };
    for doc in &parsed.documents {
        if let Document::Rule(rule) = doc
            && let Ok(c) = compile(rule, &options, &mut |n| table.intern(n))
        {
            let fields = vec![
                (table.intern("Image"), Value::string("C:\\Windows\\System32\\cmd.exe")),
                (table.intern("CommandLine"), Value::string("cmd /c whoami -all")),
                (table.intern("EventID"), Value::int(1)),
                (table.intern("Empty"), Value::null()),
            ];
            let _ = c.matches(&Event::new(FileId(0), 1, Some(0), fields));
        }
    }
    for d in &parsed.diagnostics {
        assert!(!d.message.is_empty());
        let _ = d.to_string();
    }
}

/// A sample of real SigmaHQ rules to mutate (every 25th file, for variety at low cost).
fn corpus() -> &'static [String] {
    static CORPUS: OnceLock<Vec<String>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
            let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
            entries.sort();
            for p in entries {
                if p.is_dir() {
                    walk(&p, out)
                } else if p.extension().is_some_and(|e| e == "yml") {
                    out.push(p)
                }
            }
        }
        let mut files = Vec::new();
        walk(&sigmaforge_data::for_tests().join("sigma/rules/windows"), &mut files);
        files.iter().step_by(25).map(|f| std::fs::read_to_string(f).unwrap()).collect()
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, text: String },
    DuplicateLine { line: usize },
    SwapLines { a: usize, b: usize },
    Truncate { at: usize },
}

fn apply(text: &str, m: &Mutation) -> String {
    let clamp = |i: usize| {
        let mut i = i % (text.len() + 1);
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    match m {
        Mutation::Delete { at, len } => {
            let a = clamp(*at);
            let b = clamp(a + len).max(a);
            format!("{}{}", &text[..a], &text[b..])
        }
        Mutation::Insert { at, text: t } => {
            let a = clamp(*at);
            format!("{}{t}{}", &text[..a], &text[a..])
        }
        Mutation::DuplicateLine { line } => {
            let lines: Vec<&str> = text.lines().collect();
            if lines.is_empty() {
                return text.to_string();
            }
            let i = line % lines.len();
            let mut out = lines.clone();
            out.insert(i, lines[i]);
            out.join("\n")
        }
        Mutation::SwapLines { a, b } => {
            let mut lines: Vec<&str> = text.lines().collect();
            if lines.is_empty() {
                return text.to_string();
            }
            let (a, b) = (a % lines.len(), b % lines.len());
            lines.swap(a, b);
            lines.join("\n")
        }
        Mutation::Truncate { at } => text[..clamp(*at)].to_string(),
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Text that exercises Sigma's special characters and YAML's structure.
    let snippet = prop::sample::select(vec![
        "|",
        "|contains",
        "|re",
        "|all",
        "|base64offset",
        "|windash",
        "|cidr",
        "|expand",
        "|exists",
        "|gt",
        "|fieldref",
        "*",
        "?",
        "\\",
        "\\\\",
        ":",
        " ",
        "- ",
        "\n",
        "\n  ",
        "'",
        "\"",
        "[",
        "]",
        "{",
        "}",
        "&a ",
        "*a",
        "%x%",
        "null",
        "~",
        "1 of ",
        "all of them",
        " and ",
        " or not ",
        "(",
        ")",
        "---\n",
        "condition: ",
        "a{99999}",
        "\u{2014}",
        "\t",
    ])
    .prop_map(str::to_string);
    prop_oneof![
        (any::<usize>(), 0usize..200).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), prop::collection::vec(snippet, 1..4)).prop_map(|(at, t)| Mutation::Insert { at, text: t.concat() }),
        any::<usize>().prop_map(|line| Mutation::DuplicateLine { line }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines { a, b }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        exercise(&text);
    }

    #[test]
    fn yaml_like_text_never_panics(text in "[a-zA-Z0-9_|*?\\\\:'\"\\-\\[\\]{}&%#!>~ \n\t]{0,400}") {
        exercise(&text);
    }

    #[test]
    fn arbitrary_bytes_decoded_lossily_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        exercise(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn mutated_real_rules_never_panic(pick in any::<usize>(), mutations in prop::collection::vec(mutation(), 1..6)) {
        let rules = corpus();
        let mut text = rules[pick % rules.len()].clone();
        for m in &mutations {
            text = apply(&text, m);
        }
        exercise(&text);
    }
}

#[test]
fn generated_detection_bodies_never_panic() {
    // A few hostile shapes spelled out, beyond what random mutation reaches quickly.
    for body in [
        "  s:\n    A|re: '(?P<x>a)(?P<x>b)'\n  condition: s\n",
        "  s:\n    A|windash|contains: ' -a -b -c -d -e -f -g -h'\n  condition: s\n",
        "  s:\n    A|base64offset|contains: ''\n  condition: s\n",
        "  s:\n    A|wide|base64: ''\n  condition: s\n",
        "  s:\n    A|cidr: '::/0'\n  condition: s\n",
        "  s:\n    A|gt: 1e308\n  condition: s\n",
        "  s:\n    A|expand: '%%%a%%b%'\n  condition: s\n",
        "  s:\n    '|re': 'x'\n  condition: s\n",
        "  s:\n    A|hour: 99\n  condition: s\n",
        "  s: ''\n  condition: s\n",
        "  s:\n    - ''\n  condition: s\n",
        "  s:\n    A: '\\\\'\n  condition: s\n",
    ] {
        exercise(&format!("title: t\nlogsource:\n  product: windows\ndetection:\n{body}"));
    }
}
