//! Sigma string values: wildcards, escaping and the value-transforming modifiers.
//!
//! A value is kept as a sequence of [`Tok`]s so that transformations (windash, UTF-16, base64,
//! contains/startswith/endswith) never confuse a literal `*` with a wildcard.

/// Why a value cannot be encoded by `utf16*`/`wide` or `base64*`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("UTF-16 encoding cannot follow windash; put windash after it")]
    Utf16AfterWindash,
    /// The value still has wildcards or windash positions, which have no byte encoding.
    #[error("{modifier} cannot encode wildcards or windash positions; escape '*' and '?' as '\\*' and '\\?' or drop the wildcard")]
    NotLiteral { modifier: &'static str },
}

/// One element of a Sigma string value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tok {
    Lit(char),
    /// `*`: any run of characters, possibly empty.
    Star,
    /// `?`: exactly one character.
    One,
    /// A windash position: any of `-`, `/`, `–`, `—`, `―`.
    Dash,
}

/// The characters a windash position accepts (hyphen, slash, en dash, em dash, horizontal bar).
pub const DASHES: [char; 5] = ['-', '/', '\u{2013}', '\u{2014}', '\u{2015}'];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern(pub Vec<Tok>, pub Encoding);

/// How a value's characters map to bytes when base64 encodes it.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Encoding {
    /// Ordinary text: UTF-8.
    #[default]
    Text,
    /// The output of a UTF-16 modifier: each character is one byte (Latin-1).
    Bytes,
}

impl Pattern {
    /// Parses a rule value with Sigma's escaping: `\*` `\?` are literal, `\\` is one backslash,
    /// and a backslash before any other character stays a backslash.
    pub fn parse(s: &str) -> Pattern {
        let mut toks = Vec::with_capacity(s.len());
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' => toks.push(Tok::Star),
                '?' => toks.push(Tok::One),
                '\\' => match chars.peek() {
                    Some(&n @ ('*' | '?' | '\\')) => {
                        chars.next();
                        toks.push(Tok::Lit(n));
                    }
                    _ => toks.push(Tok::Lit('\\')),
                },
                c => toks.push(Tok::Lit(c)),
            }
        }
        Pattern(toks, Encoding::Text)
    }

    /// A value taken literally (numbers, booleans, base64 output, placeholder values).
    pub fn literal(s: &str) -> Pattern {
        Pattern(s.chars().map(Tok::Lit).collect(), Encoding::Text)
    }

    pub fn has_wildcards(&self) -> bool {
        self.0.iter().any(|t| matches!(t, Tok::Star | Tok::One))
    }

    /// The value as plain text when it holds no wildcard or windash position.
    pub fn literal_text(&self) -> Option<String> {
        self.0
            .iter()
            .map(|t| match t {
                Tok::Lit(c) => Some(*c),
                _ => None,
            })
            .collect()
    }

    /// `contains`: `*value*` (no doubled stars).
    pub fn contains(mut self) -> Pattern {
        if self.0.first() != Some(&Tok::Star) {
            self.0.insert(0, Tok::Star);
        }
        if self.0.last() != Some(&Tok::Star) || self.0.len() == 1 {
            self.0.push(Tok::Star);
        }
        self
    }

    pub fn startswith(mut self) -> Pattern {
        if self.0.last() != Some(&Tok::Star) {
            self.0.push(Tok::Star);
        }
        self
    }

    pub fn endswith(mut self) -> Pattern {
        if self.0.first() != Some(&Tok::Star) {
            self.0.insert(0, Tok::Star);
        }
        self
    }

    /// `windash`: every `-` or `/` that starts a word (regex `\B[-/]\b`: no word character
    /// before it, a word character after it) accepts all dash variants.
    pub fn windash(self) -> Pattern {
        let is_word = |t: Option<&Tok>| matches!(t, Some(Tok::Lit(c)) if c.is_alphanumeric() || *c == '_');
        let n = self.0.len();
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let t = &self.0[i];
            let prev = if i == 0 { None } else { self.0.get(i - 1) };
            if matches!(t, Tok::Lit('-' | '/')) && !is_word(prev) && is_word(self.0.get(i + 1)) {
                out.push(Tok::Dash);
            } else {
                out.push(t.clone());
            }
        }
        Pattern(out, self.1)
    }

    /// UTF-16 encodings (`utf16le`/`wide`, `utf16be`, `utf16` with a little-endian BOM): each
    /// literal character becomes its code units' bytes, kept as Latin-1 characters so that later
    /// modifiers (base64) see the bytes.
    pub fn utf16(self, encoding: Utf16) -> Result<Pattern, EncodeError> {
        let mut out = Vec::new();
        if encoding == Utf16::WithBom {
            out.push(Tok::Lit('\u{FF}'));
            out.push(Tok::Lit('\u{FE}'));
        }
        for t in self.0 {
            match t {
                Tok::Lit(c) => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        let [lo, hi] = unit.to_le_bytes();
                        let (a, b) = if encoding == Utf16::BigEndian { (hi, lo) } else { (lo, hi) };
                        out.push(Tok::Lit(a as char));
                        out.push(Tok::Lit(b as char));
                    }
                }
                Tok::Dash => return Err(EncodeError::Utf16AfterWindash),
                other => out.push(other),
            }
        }
        Ok(Pattern(out, Encoding::Bytes))
    }

    /// The bytes of a wildcard-free value.
    fn bytes(&self, modifier: &'static str) -> Result<Vec<u8>, EncodeError> {
        let Some(text) = self.literal_text() else {
            return Err(EncodeError::NotLiteral { modifier });
        };
        match self.1 {
            Encoding::Bytes => Ok(text.chars().map(|c| c as u8).collect()),
            Encoding::Text => Ok(text.into_bytes()),
        }
    }

    /// `base64`: the standard padded encoding of the value.
    pub fn base64(&self) -> Result<Pattern, EncodeError> {
        Ok(Pattern::literal(&base64_encode(&self.bytes("base64")?)))
    }

    /// `base64offset`: the three encodings of the value at byte offsets 0, 1 and 2 of a longer
    /// base64 text, with the characters that depend on neighbouring bytes cut off (pySigma's
    /// algorithm).
    pub fn base64offset(&self) -> Result<Vec<Pattern>, EncodeError> {
        let bytes = self.bytes("base64offset")?;
        let start = [0usize, 2, 3];
        let end_trim = [0usize, 3, 2];
        let mut out = Vec::new();
        for i in 0..3 {
            let mut padded = vec![b' '; i];
            padded.extend_from_slice(&bytes);
            let enc = base64_encode(&padded);
            let trim = end_trim[(bytes.len() + i) % 3];
            let end = enc.len().saturating_sub(trim);
            let s = enc.get(start[i]..end.max(start[i])).unwrap_or("");
            out.push(Pattern::literal(s));
        }
        Ok(out)
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Utf16 {
    LittleEndian,
    BigEndian,
    WithBom,
}

fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use Tok::*;

    #[test]
    fn escaping_follows_the_spec() {
        assert_eq!(Pattern::parse(r"a\*b").0, vec![Lit('a'), Lit('*'), Lit('b')]);
        assert_eq!(Pattern::parse(r"a\?").0, vec![Lit('a'), Lit('?')]);
        assert_eq!(Pattern::parse(r"C:\Windows").0, Pattern::literal(r"C:\Windows").0);
        assert_eq!(Pattern::parse(r"C:\\Windows").0, Pattern::literal(r"C:\Windows").0);
        // `\\*` = backslash + wildcard; `\\\*` = backslash + literal star
        assert_eq!(Pattern::parse(r"\\*").0, vec![Lit('\\'), Star]);
        assert_eq!(Pattern::parse(r"\\\*").0, vec![Lit('\\'), Lit('*')]);
        assert_eq!(Pattern::parse("a?*").0, vec![Lit('a'), One, Star]);
        assert_eq!(Pattern::parse("trailing\\").0, Pattern::literal("trailing\\").0);
    }

    #[test]
    fn contains_startswith_endswith_add_stars_once() {
        assert_eq!(Pattern::parse("x").contains().0, vec![Star, Lit('x'), Star]);
        assert_eq!(Pattern::parse("*x").contains().0, vec![Star, Lit('x'), Star]);
        assert_eq!(Pattern::parse("").contains().0, vec![Star, Star]);
        assert_eq!(Pattern::parse("x").startswith().0, vec![Lit('x'), Star]);
        assert_eq!(Pattern::parse("x").endswith().0, vec![Star, Lit('x')]);
    }

    #[test]
    fn windash_marks_word_starting_dashes_only() {
        let p = Pattern::parse(" -enc /c a-b --x").windash();
        let dashes: Vec<usize> = p.0.iter().enumerate().filter(|(_, t)| **t == Dash).map(|(i, _)| i).collect();
        // " -enc" (1), " /c" (6); "a-b" has a word char before; "--x": only the second dash
        assert_eq!(dashes, vec![1, 6, 14]);
        assert_eq!(Pattern::parse("-x").windash().0[0], Dash);
    }

    #[test]
    fn base64_and_offsets_match_pysigma() {
        assert_eq!(base64_encode(b"ping"), "cGluZw==");
        assert_eq!(Pattern::literal("ping").base64().unwrap(), Pattern::literal("cGluZw=="));
        // the values pySigma computes for base64offset("ping")
        let o: Vec<String> = Pattern::literal("ping").base64offset().unwrap().iter().map(|p| p.literal_text().unwrap()).collect();
        assert_eq!(o, ["cGluZ", "Bpbm", "waW5n"]);
        assert!(Pattern::parse("a*").base64().is_err());
    }

    #[test]
    fn utf16_encodings() {
        let le = Pattern::literal("ab").utf16(Utf16::LittleEndian).unwrap();
        assert_eq!(le.literal_text().unwrap(), "a\0b\0");
        let be = Pattern::literal("a").utf16(Utf16::BigEndian).unwrap();
        assert_eq!(be.literal_text().unwrap(), "\0a");
        let bom = Pattern::literal("a").utf16(Utf16::WithBom).unwrap();
        assert_eq!(bom.literal_text().unwrap(), "\u{FF}\u{FE}a\0");
        // wide|base64: "ab" as UTF-16LE bytes 61 00 62 00
        assert_eq!(le.base64().unwrap().literal_text().unwrap(), "YQBiAA==");
        // base64offset of 'Invoke' in UTF-16LE, as in SigmaHQ PowerShell rules
        let o: Vec<String> = Pattern::literal("Invoke")
            .utf16(Utf16::LittleEndian)
            .unwrap()
            .base64offset()
            .unwrap()
            .iter()
            .map(|p| p.literal_text().unwrap())
            .collect();
        assert_eq!(o, ["SQBuAHYAbwBrAGUA", "kAbgB2AG8AawBlA", "JAG4AdgBvAGsAZQ"]);
    }
}
