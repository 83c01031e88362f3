//! The YAML that rules are written in, read line by line into the same events `saphyr-parser`
//! gives; anything outside that subset makes [`events`] return `None`, and the caller reads the
//! file with `saphyr-parser` instead.
//!
//! Why: a hunt reads thousands of rule files, and `saphyr-parser`'s general scanner (a token
//! queue, simple-key bookkeeping, char-by-char input) was the largest single cost of loading
//! them (about 75 ms of CPU for SigmaHQ's 4.5 MB). Rules use a small, regular part of YAML:
//! block mappings and sequences, one-line scalars (plain, quoted), `|`/`>` block scalars, short
//! one-line flow lists, comments and `---` between documents. This reader accepts exactly that
//! and gives up on everything else (tabs, anchors, aliases, tags, directives, multi-line plain or
//! quoted scalars, nested flow collections, odd indentation, anything that would be a syntax
//! error), so `saphyr-parser` stays the authority on YAML: for every input, this reader either
//! declines or yields `saphyr-parser`'s events, with the same start positions (tests check it
//! on every corpus rule file and on thousands of mutated ones).

use std::borrow::Cow;

use saphyr_parser::{Event, Marker, ScalarStyle, Span};

/// An event with its start position (only the start is set: the tree keeps only starts).
pub(super) type Spanned<'a> = (Event<'a>, Span);

/// Longest implicit key YAML allows (1,024 characters; counted here in bytes, which declines a
/// few more keys to saphyr-parser, never fewer).
const MAX_KEY_BYTES: usize = 1024;

/// The events of `text` if it lies within the subset, else `None`.
pub(super) fn events(text: &str) -> Option<Vec<Spanned<'_>>> {
    if !plain_characters(text) {
        return None;
    }
    // The text after a final newline is not a line.
    let body = text.strip_suffix('\n').unwrap_or(text);
    let lines = body.split('\n').enumerate().map(|(i, raw)| Line::new(i + 1, raw)).collect();
    // About two events per line.
    let out = Vec::with_capacity(body.len() / 16);
    let mut reader = Reader { lines, at: 0, out, depth: 0 };
    reader.stream()?;
    Some(reader.out)
}

/// No tabs, carriage returns, control characters, byte-order marks or the characters YAML
/// treats specially (NEL, line and paragraph separators): the reader's columns and line
/// splitting assume none of them.
fn plain_characters(text: &str) -> bool {
    if text.is_ascii() {
        return !text.bytes().any(|b| (b < 0x20 && b != b'\n') || b == 0x7f);
    }
    !text.chars().any(|c| {
        (c < ' ' && c != '\n') || ('\u{7f}'..='\u{9f}').contains(&c) || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}')
    })
}

/// One line: its number, its indentation (leading spaces) and the text after it. A sequence
/// item's content (`- key: value`) is read as a line of its own, indented to where it starts.
#[derive(Clone, Copy)]
struct Line<'a> {
    no: usize,
    indent: usize,
    text: &'a str,
    /// The whole source line (for a sequence item's content too).
    raw: &'a str,
    /// Whether the whole line is ASCII (columns are then byte offsets).
    ascii: bool,
}

impl<'a> Line<'a> {
    fn new(no: usize, raw: &'a str) -> Self {
        let text = raw.trim_start_matches(' ');
        Line { no, indent: raw.len() - text.len(), text, raw, ascii: raw.is_ascii() }
    }

    /// Empty, spaces only, or a comment.
    fn is_blank(&self) -> bool {
        self.text.is_empty() || self.text.starts_with('#')
    }

    /// The column (in characters, as `saphyr-parser` counts) of byte `offset` of the text.
    fn col(&self, offset: usize) -> usize {
        self.indent + if self.ascii { offset } else { self.text[..offset].chars().count() }
    }

    fn span(&self, offset: usize) -> Span {
        let at = Marker::new(0, self.no, self.col(offset));
        Span::new(at, at)
    }

    fn is_seq_item(&self) -> bool {
        self.text == "-" || self.text.starts_with("- ")
    }
}

fn scalar(value: Cow<'_, str>, style: ScalarStyle) -> Event<'_> {
    Event::Scalar(value, style, 0, None)
}

struct Reader<'a> {
    lines: Vec<Line<'a>>,
    at: usize,
    out: Vec<Spanned<'a>>,
    /// Collections open: the reader recurses, so past [`super::MAX_DEPTH`] it declines (and
    /// saphyr-parser, which does not recurse, reports the nesting).
    depth: usize,
}

impl<'a> Reader<'a> {
    fn emit(&mut self, event: Event<'a>, line: &Line<'a>, offset: usize) {
        let span = line.span(offset);
        self.out.push((event, span));
    }

    /// The next line that is not blank or a comment, without consuming it.
    fn peek(&mut self) -> Option<Line<'a>> {
        while self.at < self.lines.len() && self.lines[self.at].is_blank() {
            self.at += 1;
        }
        self.lines.get(self.at).copied()
    }

    /// `---` alone on its line (`None`: a line starting with `---` or `...` with more on it, or a
    /// directive, which this reader leaves to `saphyr-parser`).
    fn is_document_marker(line: &Line) -> Option<bool> {
        if line.indent == 0 {
            if line.text.starts_with("---") || line.text.starts_with("...") {
                return (line.text.trim_end_matches(' ') == "---").then_some(true);
            }
            if line.text.starts_with('%') {
                return None;
            }
        }
        Some(false)
    }

    fn stream(&mut self) -> Option<()> {
        let start = Line::new(1, "");
        let last = self.lines.last().copied().unwrap_or(start);
        self.emit(Event::StreamStart, &start, 0);
        while let Some(line) = self.peek() {
            let explicit = Self::is_document_marker(&line)?;
            if explicit {
                self.at += 1;
            }
            // An empty document (`---` with nothing after it) is left to saphyr-parser.
            let first = self.peek()?;
            if Self::is_document_marker(&first)? {
                return None;
            }
            self.emit(Event::DocumentStart(explicit), &first, 0);
            self.block_node(None)?;
            let end = match self.peek() {
                Some(next) if !Self::is_document_marker(&next)? => return None,
                Some(next) => next,
                None => last,
            };
            self.emit(Event::DocumentEnd, &end, 0);
        }
        self.emit(Event::StreamEnd, &last, 0);
        Some(())
    }

    /// A mapping or sequence starting at the next line, indented deeper than `parent`.
    fn block_node(&mut self, parent: Option<usize>) -> Option<()> {
        let line = self.peek()?;
        self.depth += 1;
        if self.depth > super::MAX_DEPTH {
            return None;
        }
        if parent.is_some_and(|p| line.indent <= p) || Self::is_document_marker(&line)? {
            return None;
        }
        if line.is_seq_item() {
            self.block_sequence(line.indent, false)?;
        } else if key_of(line.text).is_some() {
            self.block_mapping(line.indent)?;
        } else {
            return None;
        }
        self.depth -= 1;
        Some(())
    }

    /// A block sequence; `indentless` when it sits at its key's indentation (`key:\n- a`), which
    /// saphyr-parser places at its first item rather than at the first `-`.
    fn block_sequence(&mut self, indent: usize, indentless: bool) -> Option<()> {
        let first = self.peek()?;
        let start = if indentless {
            if nothing_but_a_comment(&first.text[1..]) {
                return None;
            }
            1 + spaces(&first.text[1..])
        } else {
            0
        };
        self.emit(Event::SequenceStart(0, None), &first, start);
        while let Some(line) = self.peek() {
            if Self::is_document_marker(&line)? || line.indent < indent {
                break;
            }
            if line.indent > indent {
                return None;
            }
            if !line.is_seq_item() {
                // The next key of the mapping this sequence is the value of (`key:\n- a\nnext:`).
                break;
            }
            let rest = &line.text[1..];
            if nothing_but_a_comment(rest) {
                // `-` alone: the item is the block below it.
                self.at += 1;
                self.block_node(Some(indent))?;
                continue;
            }
            // The item's content, read as a line of its own where it starts.
            let offset = 1 + spaces(rest);
            let item = Line { indent: line.col(offset), text: &line.text[offset..], ..line };
            self.lines[self.at] = item;
            if item.is_seq_item() || key_of(item.text).is_some() {
                self.block_node(None)?;
            } else {
                self.at += 1;
                self.inline_value(item, 0, indent)?;
            }
        }
        let end = self.peek().or(self.lines.last().copied()).expect("a collection has a line");
        self.emit(Event::SequenceEnd, &end, 0);
        Some(())
    }

    fn block_mapping(&mut self, indent: usize) -> Option<()> {
        let first = self.peek()?;
        self.emit(Event::MappingStart(0, None), &first, 0);
        while let Some(line) = self.peek() {
            if Self::is_document_marker(&line)? || line.indent < indent {
                break;
            }
            if line.indent > indent {
                return None;
            }
            let (key, after) = key_of(line.text)?;
            self.emit(scalar(Cow::Borrowed(key), ScalarStyle::Plain), &line, 0);
            self.at += 1;
            let rest = &line.text[after..];
            if nothing_but_a_comment(rest) {
                match self.peek() {
                    Some(next) if !Self::is_document_marker(&next)? && next.indent > indent => self.block_node(Some(indent))?,
                    // A sequence may sit at its key's indentation.
                    Some(next) if !Self::is_document_marker(&next)? && next.indent == indent && next.is_seq_item() => {
                        self.block_sequence(indent, true)?
                    }
                    // Nothing: null, placed where saphyr-parser places it (on the colon).
                    _ => self.emit(scalar(Cow::Borrowed(""), ScalarStyle::Plain), &line, after - 1),
                }
                continue;
            }
            self.inline_value(line, after + spaces(rest), indent)?;
        }
        let end = self.peek().or(self.lines.last().copied()).expect("a collection has a line");
        self.emit(Event::MappingEnd, &end, 0);
        Some(())
    }

    /// A value written on its line from byte `offset` on (the line is consumed already), inside
    /// a collection indented `parent`.
    fn inline_value(&mut self, line: Line<'a>, offset: usize, parent: usize) -> Option<()> {
        let value = &line.text[offset..];
        let rest = match value.as_bytes()[0] {
            b'\'' => {
                let (text, len) = single_quoted(value)?;
                self.emit(scalar(text, ScalarStyle::SingleQuoted), &line, offset);
                &value[len..]
            }
            b'"' => {
                let (text, len) = double_quoted(value)?;
                self.emit(scalar(text, ScalarStyle::DoubleQuoted), &line, offset);
                &value[len..]
            }
            b'[' => self.flow_collection(&line, offset, false)?,
            b'{' => self.flow_collection(&line, offset, true)?,
            b'|' | b'>' => return self.block_scalar(&line, offset, parent),
            _ => {
                let text = plain_block_scalar(value)?;
                self.emit(scalar(Cow::Borrowed(text), ScalarStyle::Plain), &line, offset);
                &value[text.len()..]
            }
        };
        if !nothing_but_a_comment(rest) {
            return None;
        }
        // A deeper line below continues the value (a multi-line scalar) or is an error.
        match self.peek() {
            Some(next) if next.indent > parent && !Self::is_document_marker(&next)? => None,
            _ => Some(()),
        }
    }

    /// `[a, 'b', "c"]`, or with `mapping` `{key: value, …}` (plain keys), on one line; returns
    /// what follows the closing bracket.
    fn flow_collection(&mut self, line: &Line<'a>, offset: usize, mapping: bool) -> Option<&'a str> {
        let (open, close_event, close) =
            if mapping { (Event::MappingStart(0, None), Event::MappingEnd, b'}') } else { (Event::SequenceStart(0, None), Event::SequenceEnd, b']') };
        self.emit(open, line, offset);
        let text = line.text;
        let mut at = offset + 1;
        let mut first = true;
        loop {
            at += spaces(&text[at..]);
            if first && text.as_bytes().get(at) == Some(&close) {
                break;
            }
            if mapping {
                at = self.flow_scalar(line, at, true)?;
                if !text[at..].starts_with(": ") {
                    return None;
                }
                at += 2;
                at += spaces(&text[at..]);
            }
            at = self.flow_scalar(line, at, false)?;
            at += spaces(&text[at..]);
            match *text.as_bytes().get(at)? {
                b',' => at += 1,
                c if c == close => break,
                _ => return None,
            }
            first = false;
        }
        self.emit(close_event, line, at);
        Some(&text[at + 1..])
    }

    /// One scalar inside a flow collection, from byte `at`; returns where it ends. A key
    /// (`is_key`) must be plain and ends at its `:`.
    fn flow_scalar(&mut self, line: &Line<'a>, at: usize, is_key: bool) -> Option<usize> {
        let text = &line.text[at..];
        let (event, len) = match text.as_bytes().first()? {
            b'\'' if !is_key => {
                let (value, len) = single_quoted(text)?;
                (scalar(value, ScalarStyle::SingleQuoted), len)
            }
            b'"' if !is_key => {
                let (value, len) = double_quoted(text)?;
                (scalar(value, ScalarStyle::DoubleQuoted), len)
            }
            first if starts_plain(*first, text.as_bytes().get(1).copied()) => {
                let end = text.find([',', '[', ']', '{', '}', '#', ':', '\'', '"']).unwrap_or(text.len());
                // A `:` ends a key; anywhere else (and any other stop but `,` `]` `}`) it is more
                // than this reader handles.
                let stop = text.as_bytes().get(end).copied();
                let fine = if is_key { stop == Some(b':') } else { matches!(stop, Some(b',' | b']' | b'}')) };
                let value = text[..end].trim_end_matches(' ');
                if !fine || value.is_empty() {
                    return None;
                }
                (scalar(Cow::Borrowed(value), ScalarStyle::Plain), value.len())
            }
            _ => return None,
        };
        self.emit(event, line, at);
        Some(at + len)
    }

    /// `|` or `>` (with `-` or `+`) and the lines below it indented deeper than `parent`.
    fn block_scalar(&mut self, line: &Line<'a>, offset: usize, parent: usize) -> Option<()> {
        let header = &line.text[offset..];
        let folded = header.starts_with('>');
        let chomp = header.as_bytes().get(1).copied().filter(|c| matches!(c, b'-' | b'+'));
        if !nothing_but_a_comment(&header[1 + chomp.is_some() as usize..]) {
            return None;
        }
        // The first line sets the indentation; leading empty lines are left to saphyr-parser.
        let first = *self.lines.get(self.at)?;
        if first.text.is_empty() || first.indent <= parent {
            return None;
        }
        let indent = first.indent;
        let mut body: Vec<Option<&str>> = Vec::new();
        let mut end = self.at;
        while let Some(l) = self.lines.get(end) {
            if l.text.is_empty() {
                if l.indent > indent {
                    return None;
                }
                body.push(None);
            } else if l.indent >= indent {
                if folded && l.indent > indent {
                    return None;
                }
                // Content keeps the spaces beyond the block's indentation (ASCII spaces: a
                // character boundary).
                body.push(Some(&l.raw[indent..]));
            } else {
                break;
            }
            end += 1;
        }
        let trailing = body.iter().rev().take_while(|l| l.is_none()).count();
        body.truncate(body.len() - trailing);
        let mut value = String::new();
        let mut empties = 0;
        for (i, l) in body.iter().enumerate() {
            match l {
                None => empties += 1,
                Some(text) => {
                    if i > 0 {
                        // Literal: each line break kept. Folded: a single break becomes a
                        // space, and of several the first is dropped.
                        if !folded {
                            value.push('\n');
                        } else if empties == 0 {
                            value.push(' ');
                        }
                        value.extend(std::iter::repeat_n('\n', empties));
                    }
                    empties = 0;
                    value.push_str(text);
                }
            }
        }
        match chomp {
            Some(b'-') => {}
            Some(_) => value.extend(std::iter::repeat_n('\n', 1 + trailing)),
            None => value.push('\n'),
        }
        self.emit(scalar(Cow::Owned(value), if folded { ScalarStyle::Folded } else { ScalarStyle::Literal }), &first, 0);
        self.at = end;
        Some(())
    }
}

fn spaces(text: &str) -> usize {
    text.len() - text.trim_start_matches(' ').len()
}

/// What follows a value or indicator on its line is nothing, or a comment (`#` after a space).
fn nothing_but_a_comment(rest: &str) -> bool {
    let after = rest.trim_start_matches(' ');
    after.is_empty() || (after.starts_with('#') && after.len() < rest.len())
}

/// Whether a plain scalar may start with `first` (followed by `second`): not with an indicator,
/// except `-`, `?` and `:` directly followed by a non-space.
fn starts_plain(first: u8, second: Option<u8>) -> bool {
    match first {
        b'-' | b'?' | b':' => second.is_some_and(|c| c != b' '),
        b',' | b'[' | b']' | b'{' | b'}' | b'#' | b'&' | b'*' | b'!' | b'|' | b'>' | b'\'' | b'"' | b'%' | b'@' | b'`' | b' ' => false,
        _ => true,
    }
}

/// `key: …` or `key:` at the end: the key and the byte offset just past the colon.
fn key_of(text: &str) -> Option<(&str, usize)> {
    let bytes = text.as_bytes();
    if !starts_plain(*bytes.first()?, bytes.get(1).copied()) {
        return None;
    }
    let mut from = 0;
    let colon = loop {
        let at = from + memchr::memchr(b':', &bytes[from..])?;
        match bytes.get(at + 1) {
            None | Some(b' ') => break at,
            _ => from = at + 1,
        }
    };
    let key = &text[..colon];
    if key.ends_with(' ') || key.contains(" #") || key.len() > MAX_KEY_BYTES {
        return None;
    }
    Some((key, colon + 1))
}

/// A plain scalar in block context, up to a comment or the end of the line (trailing spaces
/// dropped). `None` for what would be a mapping (`a: b` as a value) or is not plain.
fn plain_block_scalar(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    if !starts_plain(bytes[0], bytes.get(1).copied()) {
        return None;
    }
    let end = text.find(" #").unwrap_or(text.len());
    let value = text[..end].trim_end_matches(' ');
    if value.contains(": ") || value.ends_with(':') {
        return None;
    }
    Some(value)
}

/// `'…'` closed on this line (`''` is a quote): the value and the bytes it spans.
fn single_quoted(text: &str) -> Option<(Cow<'_, str>, usize)> {
    let body = &text[1..];
    let mut value: Option<String> = None;
    let mut from = 0;
    loop {
        let at = from + body[from..].find('\'')?;
        if body.as_bytes().get(at + 1) == Some(&b'\'') {
            value.get_or_insert_with(String::new).push_str(&body[from..=at]);
            from = at + 2;
            continue;
        }
        let len = 1 + at + 1;
        return Some(match value {
            None => (Cow::Borrowed(&body[..at]), len),
            Some(mut v) => {
                v.push_str(&body[from..at]);
                (Cow::Owned(v), len)
            }
        });
    }
}

/// `"…"` closed on this line, with YAML's escapes: the value and the bytes it spans.
fn double_quoted(text: &str) -> Option<(Cow<'_, str>, usize)> {
    let body = &text[1..];
    let end = body.find(['"', '\\'])?;
    if body.as_bytes()[end] == b'"' {
        return Some((Cow::Borrowed(&body[..end]), end + 2));
    }
    let mut value = String::from(&body[..end]);
    let mut chars = body[end..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((Cow::Owned(value), 1 + end + i + 1)),
            '\\' => {
                let (_, e) = chars.next()?;
                let hex = |n: usize, chars: &mut std::str::CharIndices| -> Option<char> {
                    let mut code = 0u32;
                    for _ in 0..n {
                        code = code * 16 + chars.next()?.1.to_digit(16)?;
                    }
                    char::from_u32(code)
                };
                value.push(match e {
                    '0' => '\0',
                    'a' => '\u{7}',
                    'b' => '\u{8}',
                    't' => '\t',
                    'n' => '\n',
                    'v' => '\u{b}',
                    'f' => '\u{c}',
                    'r' => '\r',
                    'e' => '\u{1b}',
                    ' ' => ' ',
                    '"' => '"',
                    '/' => '/',
                    '\\' => '\\',
                    'N' => '\u{85}',
                    '_' => '\u{a0}',
                    'L' => '\u{2028}',
                    'P' => '\u{2029}',
                    'x' => hex(2, &mut chars)?,
                    'u' => hex(4, &mut chars)?,
                    'U' => hex(8, &mut chars)?,
                    _ => return None,
                });
            }
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use saphyr_parser::Parser;

    use super::*;

    /// An event as the tree builder sees it: its kind and value, and the start position of the
    /// events whose position becomes a node's.
    fn describe(event: &Event, span: &Span) -> Option<String> {
        let at = |name: &str| format!("{name} @{}:{}", span.start.line(), span.start.col());
        Some(match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing => return None,
            Event::DocumentStart(_) => "document".into(),
            Event::DocumentEnd => "document end".into(),
            Event::Scalar(value, style, anchor, tag) => at(&format!("scalar {value:?} {style:?} {anchor} {}", tag.is_some())),
            Event::SequenceStart(anchor, _) => at(&format!("sequence {anchor}")),
            Event::SequenceEnd => "sequence end".into(),
            Event::MappingStart(anchor, _) => at(&format!("mapping {anchor}")),
            Event::MappingEnd => "mapping end".into(),
            Event::Alias(id) => at(&format!("alias {id}")),
        })
    }

    /// saphyr-parser's events, or `None` on a syntax error.
    fn reference(text: &str) -> Option<Vec<String>> {
        let mut out = Vec::new();
        for item in Parser::new_from_str(text) {
            let (event, span) = item.ok()?;
            out.extend(describe(&event, &span));
        }
        Some(out)
    }

    fn simple(text: &str) -> Option<Vec<String>> {
        events(text).map(|events| events.iter().filter_map(|(e, s)| describe(e, s)).collect())
    }

    /// The reader declines, or it gives saphyr-parser's events.
    fn agrees(text: &str) -> Result<bool, String> {
        let Some(ours) = simple(text) else { return Ok(false) };
        match reference(text) {
            Some(theirs) if theirs == ours => Ok(true),
            Some(theirs) => {
                let at = ours.iter().zip(&theirs).position(|(a, b)| a != b).unwrap_or(ours.len().min(theirs.len()));
                Err(format!("events differ at #{at}: ours {:?}, saphyr-parser {:?}", ours.get(at), theirs.get(at)))
            }
            None => Err("accepted a text saphyr-parser refuses".into()),
        }
    }

    fn corpus_files() -> Vec<PathBuf> {
        let data = sigmaforge_data::for_tests();
        let mut files: Vec<PathBuf> = ["sigma/rules", "sigma/rules-emerging-threats", "sigma/rules-threat-hunting", "sigma-regression"]
            .iter()
            .flat_map(|d| crate::rule_files(&data.join(d)).unwrap())
            .collect();
        files.sort();
        files
    }

    #[test]
    fn the_subset_rules_are_written_in() {
        let text = "\
title: a # comment
empty:
next: 1
list:
- a
-   'b''s'
nested:
    sel:
        Image|endswith: x
        url: http://a:b
    condition: sel
seqmap:
  - k: v
    k2: \"v\\t2\\u00e9\"
  - - x
  -
    deep: y
desc: |
  line1

    indented
  # not a comment
keep: |+
  a

fold: >-
  a
  b

  c
flow: [a, \"b\", 'c d']
fm: {a: b, c: 'd'}
none: []
ümlaut: ü x
last:
---
second: document
";
        assert_eq!(agrees(text), Ok(true));
        let ours = simple(text).unwrap();
        assert!(ours.contains(&"scalar \"line1\\n\\n  indented\\n# not a comment\\n\" Literal 0 false @19:2".to_string()), "{ours:#?}");
    }

    #[test]
    fn deep_nesting_is_declined_not_a_stack_overflow() {
        let deep = format!("{}x\n", "- ".repeat(200_000));
        assert_eq!(simple(&deep), None);
        let stairs: String = (0..2000).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect();
        assert_eq!(simple(&stairs), None);
        let fine = format!("{}x\n", "- ".repeat(crate::yaml::MAX_DEPTH - 1));
        assert_eq!(agrees(&fine), Ok(true));
    }

    #[test]
    fn what_it_declines() {
        for text in [
            "a: &x 1\nb: *x\n",
            "a: !!str 1\n",
            "a:\n\tb: 1\n",
            "a: b\n  c\n",
            "a: 'b\n  c'\n",
            "a: [b,\n  c]\n",
            "a: b: c\n",
            "? a\n: b\n",
            "%YAML 1.2\n---\na: 1\n",
            "a: 1\n...\n",
            "---\n---\na: 1\n",
            "a: |2\n   x\n",
            "a:\n  b: 1\n c: 2\n",
            "- a\nb: 1\n",
            "'quoted key': 1\n",
            "a: \"bad \\q escape\"\n",
            "a: 1\r\nb: 2\r\n",
            "\u{feff}a: 1\n",
        ] {
            assert_eq!(simple(text), None, "{text:?}");
        }
    }

    /// Every rule file of the corpora (SigmaHQ's and its regression suite's): the reader reads
    /// nearly all of them, each exactly as saphyr-parser does.
    #[test]
    fn every_corpus_rule_file_reads_as_saphyr_parser_reads_it() {
        let files = corpus_files();
        assert!(files.len() > 2900, "{} rule files", files.len());
        let mut read = 0;
        let mut declined = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            match agrees(&text) {
                Ok(true) => read += 1,
                Ok(false) => declined.push(f.display().to_string()),
                Err(e) => panic!("{}: {e}", f.display()),
            }
        }
        let share = read as f64 / files.len() as f64;
        assert!(share >= 0.97, "read {read} of {} files; declined e.g. {:?}", files.len(), &declined[..declined.len().min(10)]);
    }

    /// Rule files edited at random (a character deleted, inserted or replaced by one YAML cares
    /// about, a line doubled or re-indented): whatever the reader accepts, saphyr-parser reads
    /// the same way; what saphyr-parser refuses, the reader declines.
    #[test]
    fn mutated_rule_files_read_as_saphyr_parser_reads_them_or_are_declined() {
        let files = corpus_files();
        let mut next = crate::test_support::xorshift(0x9e37_79b9_7f4a_7c15);
        const PIECES: [&str; 22] =
            [" ", "  ", ":", ": ", "-", "- ", "#", " #", "'", "\"", "\\", "[", "]", "{", "}", ",", "|", ">", "\n", "\n  ", "&", "é"];
        let (mut accepted, mut total) = (0, 0);
        for _ in 0..4000 {
            let f = &files[next() as usize % files.len()];
            let text = std::fs::read_to_string(f).unwrap();
            let mut chars: Vec<char> = text.chars().collect();
            for _ in 0..1 + next() % 3 {
                let at = next() as usize % chars.len().max(1);
                match next() % 5 {
                    0 => {
                        chars.remove(at.min(chars.len() - 1));
                    }
                    1 | 2 => {
                        let piece = PIECES[next() as usize % PIECES.len()];
                        chars.splice(at..at, piece.chars());
                    }
                    3 => {
                        let piece = PIECES[next() as usize % PIECES.len()];
                        chars.splice(at..(at + 1).min(chars.len()), piece.chars());
                    }
                    _ => {
                        // Double or re-indent the line holding `at`.
                        let start = chars[..at].iter().rposition(|&c| c == '\n').map_or(0, |p| p + 1);
                        let end = chars[at..].iter().position(|&c| c == '\n').map_or(chars.len(), |p| at + p + 1);
                        let line: Vec<char> = chars[start..end].to_vec();
                        if next().is_multiple_of(2) {
                            chars.splice(start..start, line);
                        } else {
                            chars.splice(start..start, "  ".chars());
                        }
                    }
                }
            }
            let mutated: String = chars.into_iter().collect();
            total += 1;
            match agrees(&mutated) {
                Ok(true) => accepted += 1,
                Ok(false) => {}
                Err(e) => panic!("{} mutated:\n{mutated}\n{e}", f.display()),
            }
        }
        // Most edits leave valid YAML the reader still reads: the comparison is not vacuous.
        assert!(accepted * 3 > total, "the reader accepted only {accepted} of {total} mutated files");
    }
}
