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
//!
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
/// sentence's final dot or a dash between words with spaces is a separator). Scans bytes and
/// decodes only non-ASCII characters: this loop sees every byte of the corpus at load time.
fn for_each_compound(text: &str, mut f: impl FnMut(&str)) {
    let bytes = text.as_bytes();
    let alnum_at = |i: usize| -> (bool, usize) {
        match bytes.get(i) {
            None => (false, 0),
            Some(&b) if b < 0x80 => (b.is_ascii_alphanumeric(), 1),
            Some(_) => {
                let c = text[i..].chars().next().expect("i is a char boundary");
                (c.is_alphanumeric(), c.len_utf8())
            }
        }
    };
    let mut start: Option<usize> = None;
    let mut i = 0;
    while i < bytes.len() {
        let (alnum, width) = alnum_at(i);
        if alnum {
            start.get_or_insert(i);
        } else if start.is_some() && bytes[i] < 0x80 && is_joiner(bytes[i] as char) && alnum_at(i + 1).0 {
            // a joiner inside a compound
        } else if let Some(s) = start.take() {
            f(&text[s..i]);
        }
        i += width;
    }
    if let Some(s) = start {
        f(&text[s..]);
    }
}

/// One alphanumeric word: its lowercase whole, plus its camel-case pieces when it has several.
fn emit_word(word: &str, buf: &mut String, emit: &mut impl FnMut(&str)) {
    buf.clear();
    if !word.is_ascii() {
        // Non-ASCII words are folded whole; camel-case splitting is for ASCII field names.
        buf.extend(word.chars().flat_map(char::to_lowercase));
        if !is_stop_word(buf) {
            emit(stem(buf));
        }
        return;
    }
    buf.push_str(word);
    buf.make_ascii_lowercase();
    if !is_stop_word(buf) {
        emit(stem(buf));
    }
    let mut piece = |piece: &str, buf: &mut String| {
        buf.clear();
        buf.push_str(piece);
        buf.make_ascii_lowercase();
        if buf.len() > 1 && !is_stop_word(buf) {
            emit(stem(buf));
        }
    };
    // Camel-case pieces: `CommandLine` → Command, Line; `EventID` → Event, ID; `IDNumber` → ID,
    // Number; `NTLMv2` stays whole. Digits stay with their letters.
    let b = word.as_bytes();
    let lower_at = |k: usize| b.get(k).is_some_and(u8::is_ascii_lowercase);
    let mut start = 0;
    for i in 1..b.len() {
        let (prev, c) = (b[i - 1], b[i]);
        let boundary = (prev.is_ascii_lowercase() && c.is_ascii_uppercase())
            || (prev.is_ascii_uppercase() && c.is_ascii_uppercase() && lower_at(i + 1) && lower_at(i + 2) && i > start);
        if boundary {
            piece(&word[start..i], buf);
            start = i;
        }
    }
    if start > 0 {
        piece(&word[start..], buf);
    }
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
        "a" | "an"
            | "and"
            | "are"
            | "as"
            | "at"
            | "be"
            | "been"
            | "by"
            | "can"
            | "for"
            | "from"
            | "has"
            | "have"
            | "in"
            | "into"
            | "is"
            | "it"
            | "its"
            | "of"
            | "on"
            | "or"
            | "that"
            | "the"
            | "their"
            | "this"
            | "to"
            | "was"
            | "were"
            | "which"
            | "will"
            | "with"
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
