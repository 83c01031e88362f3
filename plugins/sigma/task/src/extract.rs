//! Finding the rule YAML inside a model's completion.
//!
//! Models wrap their answer in many ways: a `<think>…</think>` block first, prose before and
//! after, one or several Markdown fences (```` ```yaml ````, ```` ```yml ````, bare ```` ``` ````).
//! Extraction is purely textual and linear in the completion's length, so hostile completions
//! cost no more than reading them.

/// The YAML text chosen from a completion, and where it came from (for diagnostics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted<'a> {
    pub yaml: &'a str,
    pub source: Source,
    /// 1-based line of the completion on which `yaml` starts, so that parser positions can be
    /// reported relative to what the model wrote.
    pub first_line: usize,
    /// When the chosen text held several YAML documents (`---`): which one was taken (1-based)
    /// and how many non-empty ones there were. `None` for a single document.
    pub document: Option<(usize, usize)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The n-th (1-based) of `of` fenced blocks.
    Fence { n: usize, of: usize },
    /// Unfenced text starting at the first top-level Sigma key.
    Bare,
    /// Nothing looked like YAML; the whole (think-stripped) completion is used.
    Whole,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Fence { n, of } => write!(f, "fenced block {n} of {of}"),
            Source::Bare => f.write_str("unfenced YAML"),
            Source::Whole => f.write_str("whole completion"),
        }
    }
}

/// Top-level keys that mark the start of a Sigma rule in unfenced text.
const RULE_KEYS: &[&str] = &["title", "id", "name", "status", "description", "logsource", "detection"];

/// Extracts the rule YAML from `completion`: the chosen block (see the module docs), narrowed
/// to its first YAML document that is a rule.
pub fn extract(completion: &str) -> Extracted<'_> {
    let mut e = extract_block(completion);
    let documents = yaml_documents(e.yaml);
    if documents.len() > 1 {
        let pick = documents.iter().position(|(_, d)| is_rule_document(d)).unwrap_or(0);
        let (line, text) = documents[pick];
        e = Extracted { yaml: text, first_line: e.first_line + line, document: Some((pick + 1, documents.len())), ..e };
    } else if let [(line, text)] = documents.as_slice() {
        e = Extracted { yaml: text, first_line: e.first_line + line, ..e };
    }
    e
}

/// The non-empty YAML documents of `text`, split at the document markers `---` and `...` at the
/// start of a line (YAML ends any block there, so a textual split is exact), each with its
/// line offset in `text`. A `--- key: value` line keeps what follows the marker.
fn yaml_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let (mut start, mut start_line, mut pos) = (0, 0, 0);
    let mut push = |from: usize, to: usize, line: usize| {
        let doc = &text[from..to];
        if doc.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')) {
            docs.push((line, doc));
        }
    };
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let line_start = pos;
        pos += line.len();
        let bare = line.trim_end();
        let marker = bare == "---" || bare == "..." || bare.starts_with("--- ") || bare.starts_with("---\t");
        if !marker {
            continue;
        }
        push(start, line_start, start_line);
        if bare.starts_with("--- ") || bare.starts_with("---\t") {
            // Content on the marker line belongs to the new document.
            start = line_start + 4;
        } else {
            start = pos;
        }
        start_line = if start == pos { n + 1 } else { n };
    }
    push(start, text.len(), start_line);
    docs
}

/// Whether one YAML document looks like a detection rule: a top-level `detection:` key.
fn is_rule_document(doc: &str) -> bool {
    doc.lines().any(|l| l.trim_end().strip_prefix("detection").is_some_and(|rest| rest.trim_start().starts_with(':')))
}

/// The YAML text of a completion before it is split into documents.
fn extract_block(completion: &str) -> Extracted<'_> {
    let (body, body_offset) = strip_think(completion);
    let line_of = |s: &str| line_number(completion, body_offset + offset_in(body, s));

    let fences = fenced_blocks(body);
    if !fences.is_empty() {
        let pick = pick_fence(&fences);
        let block = fences[pick];
        return Extracted {
            yaml: block.text,
            source: Source::Fence { n: pick + 1, of: fences.len() },
            first_line: line_of(block.text),
            document: None,
        };
    }
    if let Some(bare) = bare_yaml(body) {
        return Extracted { yaml: bare, source: Source::Bare, first_line: line_of(bare), document: None };
    }
    let whole = body.trim();
    Extracted { yaml: whole, source: Source::Whole, first_line: line_of(whole), document: None }
}

/// Removes reasoning: everything up to the last `</think>` (this also covers chat templates that
/// open the `<think>` in the prompt), and an unclosed trailing `<think>…` (a truncated thought).
/// Returns the rest and its byte offset in `text`.
fn strip_think(text: &str) -> (&str, usize) {
    let mut start = 0;
    if let Some(end) = rfind_ci(text, "</think>") {
        start = end + "</think>".len();
    }
    let rest = &text[start..];
    let rest = match find_ci(rest, "<think>") {
        Some(open) => &rest[..open],
        None => rest,
    };
    (rest, start)
}

#[derive(Debug, Clone, Copy)]
struct Fence<'a> {
    lang: &'a str,
    text: &'a str,
}

/// Every ``` or ~~~ fenced block; an unclosed last fence runs to the end (truncated output).
fn fenced_blocks(text: &str) -> Vec<Fence<'_>> {
    let mut blocks = Vec::new();
    let mut open: Option<(&str, &str, usize)> = None; // (marker, lang, content start)
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let line_start = pos;
        pos += line.len();
        let trimmed = line.trim_start();
        let marker = if trimmed.starts_with("```") {
            "```"
        } else if trimmed.starts_with("~~~") {
            "~~~"
        } else {
            continue;
        };
        match open {
            None => {
                let lang = trimmed[3..].trim_start_matches(['`', '~']).trim();
                open = Some((marker, lang, pos));
            }
            Some((m, lang, content_start)) if m == marker => {
                blocks.push(Fence { lang, text: &text[content_start..line_start] });
                open = None;
            }
            Some(_) => {}
        }
    }
    if let Some((_, lang, content_start)) = open {
        blocks.push(Fence { lang, text: &text[content_start..] });
    }
    blocks
}

/// The most plausible block: the last one that holds a `detection:` key, else the last one
/// labelled YAML, else the last one. "Last" because models usually refine towards the end.
fn pick_fence(fences: &[Fence<'_>]) -> usize {
    let is_yaml_lang = |f: &Fence<'_>| {
        let l = f.lang.to_ascii_lowercase();
        l.is_empty() || l == "yaml" || l == "yml" || l == "sigma"
    };
    let has_key = |f: &Fence<'_>, key: &str| f.text.lines().any(|l| l.trim_start().starts_with(key));
    let last = |pred: &dyn Fn(&Fence<'_>) -> bool| fences.iter().rposition(pred);
    last(&|f| is_yaml_lang(f) && has_key(f, "detection:"))
        .or_else(|| last(&|f| has_key(f, "detection:")))
        .or_else(|| last(&|f| is_yaml_lang(f) && has_key(f, "logsource:")))
        .or_else(|| last(&is_yaml_lang))
        .unwrap_or(fences.len() - 1)
}

/// Unfenced YAML: from the first line that is a top-level Sigma key (or a `---` document start
/// followed by one) up to the first unindented line that cannot belong to a YAML mapping
/// (prose after the rule).
fn bare_yaml(text: &str) -> Option<&str> {
    let mut pos = 0;
    let mut start = None;
    let mut end = text.len();
    for line in text.split_inclusive('\n') {
        let line_start = pos;
        pos += line.len();
        let content = line.trim_end();
        match start {
            None => {
                if is_rule_key_line(content) {
                    start = Some(line_start);
                }
            }
            Some(_) => {
                if !continues_yaml(content) {
                    end = line_start;
                    break;
                }
            }
        }
    }
    let start = start?;
    Some(text[start..end].trim_end())
}

fn is_rule_key_line(line: &str) -> bool {
    let line = line.strip_prefix("--- ").unwrap_or(line);
    RULE_KEYS.iter().any(|k| line.strip_prefix(k).is_some_and(|rest| rest.starts_with(':')))
}

/// Whether an unfenced line can still be part of the YAML document.
fn continues_yaml(line: &str) -> bool {
    if line.is_empty() || line.starts_with([' ', '\t', '#', '-']) {
        return true;
    }
    // An unindented `key:` (no spaces in the key, so "Note: this rule…" prose still ends it
    // unless it is a single word, which a mapping key may well be).
    match line.split_once(':') {
        Some((key, _)) => !key.is_empty() && !key.contains(char::is_whitespace),
        None => false,
    }
}

fn find_ci(haystack: &str, needle: &str) -> Option<usize> {
    haystack.as_bytes().windows(needle.len()).position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

fn rfind_ci(haystack: &str, needle: &str) -> Option<usize> {
    haystack.as_bytes().windows(needle.len()).rposition(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Byte offset of `part` (a subslice) inside `whole`.
fn offset_in(whole: &str, part: &str) -> usize {
    (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize).min(whole.len())
}

fn line_number(text: &str, byte: usize) -> usize {
    1 + text.as_bytes()[..byte.min(text.len())].iter().filter(|&&b| b == b'\n').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: &str =
        "logsource:\n  product: windows\n  category: process_creation\ndetection:\n  sel:\n    Image|endswith: '\\mshta.exe'\n  condition: sel\n";

    #[test]
    fn plain_yaml_is_taken_whole() {
        let e = extract(RULE);
        assert_eq!(e.yaml, RULE.trim_end());
        assert_eq!(e.source, Source::Bare);
        assert_eq!(e.first_line, 1);
    }

    #[test]
    fn think_block_and_fence_are_stripped() {
        let c = format!("<think>\nMaybe ```yaml\ndetection: wrong\n``` hmm\n</think>\nHere is the rule:\n```yaml\n{RULE}```\nIt detects mshta.");
        let e = extract(&c);
        assert_eq!(e.yaml, RULE);
        assert_eq!(e.source, Source::Fence { n: 1, of: 1 });
        assert_eq!(e.first_line, 8);
    }

    #[test]
    fn unclosed_think_at_end_is_dropped_and_template_opened_think_is_handled() {
        let c = format!("{RULE}<think>I could also");
        assert_eq!(extract(&c).yaml, RULE.trim_end());
        let c = format!("reasoning without opening tag</think>\n{RULE}");
        assert_eq!(extract(&c).yaml, RULE.trim_end());
    }

    #[test]
    fn last_fence_with_detection_wins() {
        let c = format!("First try:\n```yaml\ndetection:\n  a: 1\n```\nBetter:\n```yaml\n{RULE}```\nFields used:\n```\nImage\n```\n");
        let e = extract(&c);
        assert_eq!(e.yaml, RULE);
        assert_eq!(e.source, Source::Fence { n: 2, of: 3 });
    }

    #[test]
    fn unlabelled_and_unclosed_fences_work() {
        let c = format!("```\n{RULE}```");
        assert_eq!(extract(&c).yaml, RULE);
        let c = format!("```yml\n{RULE}");
        assert_eq!(extract(&c).yaml, RULE);
    }

    #[test]
    fn prose_around_bare_yaml_is_cut() {
        let c = format!("Sure! This rule catches mshta.\n\n{RULE}\nThis rule detects mshta launching scripts.\n");
        let e = extract(&c);
        assert_eq!(e.yaml, RULE.trim_end());
        assert_eq!(e.first_line, 3);
    }

    #[test]
    fn the_first_yaml_document_that_is_a_rule_is_taken() {
        // A trailing document marker: the rule alone, no second document.
        let c = format!("{RULE}---\n");
        let e = extract(&c);
        assert_eq!(e.yaml, RULE);
        assert_eq!(e.document, None);
        // A leading marker and a trailing second document (a note about the rule).
        let c = format!("---\n{RULE}---\nnotes: this rule looks for mshta\n");
        let e = extract(&c);
        assert_eq!(e.yaml, RULE);
        assert_eq!((e.first_line, e.document), (2, Some((1, 2))));
        // The rule second, after a document that is not one.
        let c = format!("```yaml\nfields: [Image]\n---\n{RULE}...\n```\n");
        let e = extract(&c);
        assert_eq!(e.yaml, RULE);
        assert_eq!((e.first_line, e.document), (4, Some((2, 2))));
        // Content on the marker line belongs to the document.
        let e = extract("--- logsource: {product: windows}\ndetection: {s: {a: 1}, condition: s}\n---\nx: 1\n");
        assert!(e.yaml.starts_with("logsource:"), "{:?}", e.yaml);
        assert_eq!(e.document, Some((1, 2)));
    }

    #[test]
    fn prose_only_falls_back_to_whole_text() {
        let e = extract("  I cannot write that rule.  ");
        assert_eq!(e.yaml, "I cannot write that rule.");
        assert_eq!(e.source, Source::Whole);
    }
}
