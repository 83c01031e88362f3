//! The best-matching passage of a document, so the model reads the part that answers its query
//! rather than the first lines of a long page.

use std::collections::HashMap;

use crate::tokenize::for_each_term;

/// The passage of `text` of about `max_chars` characters that covers the most query weight
/// (`weights`: query term → idf). Passages start at a line or sentence start; whitespace is
/// collapsed to single spaces; a cut passage ends with "…".
pub fn best_passage(text: &str, weights: &HashMap<String, f32>, max_chars: usize) -> String {
    let segments = segments(text);
    if segments.is_empty() {
        return String::new();
    }
    let (query_terms, weight_of): (Vec<&String>, Vec<f32>) = weights.iter().map(|(t, w)| (t, *w)).unzip();
    let seg_terms: Vec<Vec<usize>> = segments
        .iter()
        .map(|&(s, e)| {
            let mut found = Vec::new();
            for_each_term(&text[s..e], |t| {
                if let Some(pos) = query_terms.iter().position(|k| k.as_str() == t) {
                    found.push(pos);
                }
            });
            found
        })
        .collect();
    let mut best = (0usize, f32::MIN);
    for start in 0..segments.len() {
        let mut seen = vec![false; weight_of.len()];
        let mut hits = 0usize;
        let mut score = 0f32;
        let mut end = start;
        while end < segments.len() && (end == start || segments[end].1 - segments[start].0 <= max_chars) {
            for &t in &seg_terms[end] {
                if !seen[t] {
                    seen[t] = true;
                    score += weight_of[t];
                }
                hits += 1;
            }
            end += 1;
        }
        // Distinct terms dominate; repeated hits break ties; earlier passages win remaining ties.
        let score = score + 0.01 * hits as f32;
        if score > best.1 {
            best = (start, score);
        }
    }
    clip(&text[segments[best.0].0..], max_chars)
}

/// Byte ranges of lines and sentences (split after ". ", "? ", "! " and at newlines).
fn segments(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let sentence_end = matches!(b, b'.' | b'?' | b'!') && bytes.get(i + 1) == Some(&b' ');
        if b == b'\n' || sentence_end {
            let end = i + 1;
            if !text[start..end].trim().is_empty() {
                out.push((start, end));
            }
            start = end;
        }
    }
    if !text[start..].trim().is_empty() {
        out.push((start, text.len()));
    }
    out
}

/// `text` with whitespace collapsed, cut to at most `max_chars` characters at a word boundary.
fn clip(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(max_chars + 4);
    let mut count = 0;
    let mut cut = false;
    for word in text.split_whitespace() {
        let len = word.chars().count();
        let sep = usize::from(count > 0);
        if count + sep + len > max_chars {
            if count == 0 {
                out.extend(word.chars().take(max_chars));
            }
            cut = true;
            break;
        }
        if sep == 1 {
            out.push(' ');
        }
        out.push_str(word);
        count += sep + len;
    }
    if cut {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(terms: &[(&str, f32)]) -> HashMap<String, f32> {
        terms.iter().map(|&(t, w)| (t.to_owned(), w)).collect()
    }

    #[test]
    fn picks_the_passage_with_the_query_terms() {
        let text = "Intro line about nothing.\nMore filler here.\nThe LSASS process memory can be dumped. Then more.";
        let s = best_passage(text, &weights(&[("lsass", 5.0), ("dump", 3.0)]), 40);
        assert!(s.starts_with("The LSASS process memory"), "{s}");
        assert!(s.chars().count() <= 41, "{s}");
    }

    #[test]
    fn clips_at_words_and_collapses_whitespace() {
        assert_eq!(clip("a  b\n\nc d", 100), "a b c d");
        assert_eq!(clip("alpha beta gamma", 11), "alpha beta…");
        assert_eq!(clip("abcdefghijkl", 5), "abcde…");
        assert_eq!(best_passage("", &weights(&[]), 10), "");
    }
}
