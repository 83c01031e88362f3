//! Turning text into index terms, tuned for security documentation.
//!
//! Terms are lowercase alphanumeric runs, with three additions so that analysts' spellings meet
//! the documents' spellings:
//! - compounds joined by `.`, `-` or `_` are kept whole as well as split: `T1003.001` gives
//!   `t1003`, `001` and `t1003.001`, so a sub-technique id matches exactly while `T1003` still
//!   finds its family; `lsass.exe` gives `lsass`, `exe` and `lsass.exe`; `process_creation` and
//!   document ids such as `win-security-4688` match as one term;
//! - camel case is split as well as kept whole: `CommandLine` gives `commandline`, `command` and
//!   `line`, `EventID` gives `eventid`, `event` and `id`, so "command line" and "event id" match
//!   field names;
//! - a conservative plural stemmer (`events` → `event`, `processes` → `process`, `keys` → `key`)
//!   on purely alphabetic words, never on ids or numbers.
//! English function words are dropped: they are in nearly every document and only cost time.

/// Calls `emit` with each term of `text`, in order. A term may be emitted more than once when
/// it is both a whole compound and a part of one (`T1003` inside `T1003.001`), which is what an
/// exact match should weigh.
pub fn for_each_term(text: &str, mut emit: impl FnMut(&str)) {
    let mut buf = String::new();
    for_each_compound(text, |compound| {
        let mut parts = 0;
        for part in compound.split(is_joiner).filter(|p| !p.is_empty()) {
            parts += 1;
            emit_word(part, &mut buf, &mut emit);
        }
        if parts > 1 {
            buf.clear();
            buf.extend(compound.chars().flat_map(char::to_lowercase));
            emit(&buf);
        }
    });
}

/// The terms of `text` as owned strings (for queries and tests; the index uses [`for_each_term`]).
pub fn terms(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for_each_term(text, |t| out.push(t.to_owned()));
    out
}

fn is_joiner(c: char) -> bool {
    matches!(c, '.' | '-' | '_')
}

/// Runs of alphanumerics joined by single joiners (`attack.t1003.001`, `lsass.exe`,
/// `process_creation`, `4688`); a joiner not between two alphanumerics ends the run (so a
/// sentence's final dot or a dash between words with spaces is a separator).
fn for_each_compound(text: &str, mut f: impl FnMut(&str)) {
    let bytes = text.as_bytes();
    let mut start: Option<usize> = None;
    let mut iter = text.char_indices().peekable();
    while let Some((i, c)) = iter.next() {
        if c.is_alphanumeric() {
            start.get_or_insert(i);
            continue;
        }
        if is_joiner(c)
            && start.is_some()
            && iter.peek().is_some_and(|&(_, next)| next.is_alphanumeric())
        {
            continue;
        }
        if let Some(s) = start.take() {
            f(&text[s..i]);
        }
    }
    if let Some(s) = start {
        f(&text[s..bytes.len()]);
    }
}

/// One alphanumeric word: its lowercase whole, plus its camel-case pieces when it has several.
fn emit_word(word: &str, buf: &mut String, emit: &mut impl FnMut(&str)) {
    buf.clear();
    buf.extend(word.chars().flat_map(char::to_lowercase));
    let pieces = camel_pieces(word);
    if !is_stop_word(buf) {
        let whole = stem(buf);
        emit(whole);
    }
    if pieces.len() > 1 {
        for piece in pieces {
            buf.clear();
            buf.extend(piece.chars().flat_map(char::to_lowercase));
            if buf.len() > 1 && !is_stop_word(buf) {
                emit(stem(buf));
            }
        }
    }
}

/// Camel-case pieces: `CommandLine` → [Command, Line], `EventID` → [Event, ID],
/// `TargetUserSID` → [Target, User, SID], `NTLMv2` → [NTLMv2]. Digits stay with their letters.
fn camel_pieces(word: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = word.char_indices().collect();
    let mut pieces = Vec::new();
    let mut start = 0;
    for w in 1..chars.len() {
        let (i, c) = chars[w];
        let prev = chars[w - 1].1;
        let lower_at = |k: usize| chars.get(k).is_some_and(|&(_, n)| n.is_lowercase());
        let boundary = (prev.is_lowercase() && c.is_uppercase())
            // the end of an acronym: "IDNumber" splits before the "N" of "Number" (but "NTLMv2" stays)
            || (prev.is_uppercase() && c.is_uppercase() && lower_at(w + 1) && lower_at(w + 2) && i > start);
        if boundary {
            pieces.push(&word[start..i]);
            start = i;
        }
    }
    pieces.push(&word[start..]);
    pieces
}

/// Conservative English plural stemming of alphabetic words; anything with a digit is left alone.
fn stem(word: &mut String) -> &str {
    let n = word.len();
    if n <= 3 || !word.bytes().all(|b| b.is_ascii_lowercase()) {
        return word;
    }
    if word.ends_with("sses") || word.ends_with("xes") || word.ends_with("ches") || word.ends_with("shes") {
        word.truncate(n - 2);
    } else if word.ends_with("ies") && n > 4 {
        word.truncate(n - 3);
        word.push('y');
    } else if word.ends_with('s') && !(word.ends_with("ss") || word.ends_with("us") || word.ends_with("is")) {
        word.truncate(n - 1);
    }
    word
}

/// Words too common to help ranking. Kept short on purpose: "not", "no", "new", "all", "any" stay
/// because they carry meaning in event titles ("A new process has been created").
fn is_stop_word(word: &str) -> bool {
    matches!(
        word,
        "a" | "an" | "and" | "are" | "as" | "at" | "be" | "been" | "by" | "can" | "for" | "from" | "has" | "have"
            | "in" | "into" | "is" | "it" | "its" | "of" | "on" | "or" | "that" | "the" | "their" | "this" | "to"
            | "was" | "were" | "which" | "will" | "with"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attack_ids_match_whole_and_by_family() {
        assert_eq!(terms("T1003.001"), ["t1003", "001", "t1003.001"]);
        assert_eq!(terms("attack.t1003.001,"), ["attack", "t1003", "001", "attack.t1003.001"]);
        assert_eq!(terms("T1003"), ["t1003"]);
    }

    #[test]
    fn event_ids_and_field_names() {
        assert_eq!(terms("IDNumber NTLMv2"), ["idnumber", "id", "number", "ntlmv2"]);
        assert_eq!(terms("EventID 4688"), ["eventid", "event", "id", "4688"]);
        assert_eq!(terms("event id 4688"), ["event", "id", "4688"]);
        assert_eq!(terms("CommandLine"), ["commandline", "command", "line"]);
        assert_eq!(terms("TargetUserSID"), ["targetusersid", "target", "user", "sid"]);
    }

    #[test]
    fn sentences_and_paths_split_cleanly() {
        assert_eq!(terms("Dumps lsass.exe. Then exits"), ["dump", "lsass", "exe", "lsass.exe", "then", "exit"]);
        assert_eq!(terms(r"HKLM\Software\Run"), ["hklm", "software", "run"]);
        assert_eq!(terms("process_creation"), ["process", "creation", "process_creation"]);
        assert_eq!(terms("win-security-4688 - x"), ["win", "security", "4688", "win-security-4688", "x"]);
        assert_eq!(terms("The process of the keys"), ["process", "key"]);
        assert_eq!(terms("processes policies"), ["process", "policy"]);
        assert_eq!(terms("%%1842"), ["1842"]);
    }

    #[test]
    fn non_ascii_text_does_not_panic() {
        assert_eq!(terms("Ünïcode wörds—ok"), ["ünïcode", "wörds", "ok"]);
        assert!(terms("... !!! ---").is_empty());
    }
}
