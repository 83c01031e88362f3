//! The condition grammar:
//!
//! ```text
//! or_expr  := and_expr ("or" and_expr)*
//! and_expr := not_expr ("and" not_expr)*
//! not_expr := "not" not_expr | primary
//! primary  := "(" or_expr ")" | quant "of" target | IDENT
//! quant    := "1" | "any" | "all"          target := "them" | PATTERN (IDENT with `*`)
//! ```
//! Precedence from loosest to tightest: `or` < `and` < `not` < `x of` < `( )` (spec D13);
//! operators are lowercase only (pySigma rejects `AND`). A `|` starts a Sigma v1 aggregation,
//! which is refused with a pointer to correlation rules.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// A search identifier.
    Ref(String),
    Not(Box<Condition>),
    And(Vec<Condition>),
    Or(Vec<Condition>),
    /// `1 of target` / `any of target`.
    OneOf(Target),
    /// `all of target`.
    AllOf(Target),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Them,
    /// An identifier pattern with `*` wildcards (`selection_*`, `sel*_b`).
    Pattern(String),
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &mut fmt::Formatter<'_>, items: &[Condition], op: &str| -> fmt::Result {
            write!(f, "(")?;
            for (i, c) in items.iter().enumerate() {
                if i > 0 {
                    write!(f, " {op} ")?;
                }
                write!(f, "{c}")?;
            }
            write!(f, ")")
        };
        match self {
            Condition::Ref(n) => write!(f, "{n}"),
            Condition::Not(c) => write!(f, "not {c}"),
            Condition::And(v) => join(f, v, "and"),
            Condition::Or(v) => join(f, v, "or"),
            Condition::OneOf(t) => write!(f, "1 of {t}"),
            Condition::AllOf(t) => write!(f, "all of {t}"),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Them => write!(f, "them"),
            Target::Pattern(p) => write!(f, "{p}"),
        }
    }
}

impl Target {
    /// The search identifiers (from `names`, in order) that this target selects: `them` skips
    /// names starting with `_`, and so does a pattern that does not itself start with `_`.
    pub fn select<'a>(&self, names: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
        match self {
            Target::Them => names.filter(|n| !n.starts_with('_')).collect(),
            Target::Pattern(p) => names.filter(|n| (p.starts_with('_') || !n.starts_with('_')) && glob_match(p.as_bytes(), n.as_bytes())).collect(),
        }
    }
}

/// Full match of `*` wildcards (the only wildcard condition patterns have).
fn glob_match(p: &[u8], s: &[u8]) -> bool {
    // Iterative wildcard match with one backtrack point: linear in practice.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// A condition syntax error: what is wrong and the character offset in the condition text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionError {
    pub offset: usize,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    LParen,
    RParen,
    Word(String),
    Pipe,
}

fn tokenize(text: &str) -> Result<Vec<(Token, usize)>, ConditionError> {
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (off, c) = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push((Token::LParen, off));
                i += 1;
            }
            ')' => {
                out.push((Token::RParen, off));
                i += 1;
            }
            '|' => {
                // A v1 aggregation: the parser reports it; what follows need not tokenize.
                out.push((Token::Pipe, off));
                break;
            }
            c if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '*' => {
                let start = i;
                while i < chars.len() && (chars[i].1.is_ascii_alphanumeric() || matches!(chars[i].1, '_' | '-' | '*')) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().map(|(_, c)| c).collect();
                out.push((Token::Word(word), off));
            }
            other => {
                return Err(ConditionError {
                    offset: off,
                    message: format!("unexpected character '{other}' in the condition (identifiers use letters, digits, '_' and '-')"),
                });
            }
        }
    }
    Ok(out)
}

/// Parses one condition string.
pub fn parse_condition(text: &str) -> Result<Condition, ConditionError> {
    let tokens = tokenize(text)?;
    if tokens.is_empty() {
        return Err(ConditionError { offset: 0, message: "the condition is empty".into() });
    }
    let mut p = ConditionParser { tokens, at: 0, end: text.len(), depth: 0 };
    let c = p.or_expr()?;
    if let Some((tok, off)) = p.tokens.get(p.at) {
        let message = match tok {
            Token::RParen => "unbalanced ')' in the condition".to_string(),
            Token::Pipe => AGGREGATION_UNSUPPORTED.to_string(),
            Token::Word(w) if matches!(w.as_str(), "AND" | "OR" | "NOT") => {
                format!("operators are lowercase in Sigma: write '{}' instead of '{w}'", w.to_lowercase())
            }
            Token::Word(w) => format!("expected 'and' or 'or' before '{w}'"),
            _ => "unexpected text after the end of the condition".to_string(),
        };
        return Err(ConditionError { offset: *off, message });
    }
    Ok(c)
}

const AGGREGATION_UNSUPPORTED: &str =
    "aggregations ('| count() …') are Sigma v1 syntax and are unsupported: use a correlation rule (type: event_count / value_count)";

/// Nesting limit for parentheses and `not` chains: deep enough for any real rule, shallow enough
/// that the recursive descent cannot overflow the stack (also inside Wasm).
const MAX_CONDITION_DEPTH: usize = 64;

struct ConditionParser {
    tokens: Vec<(Token, usize)>,
    at: usize,
    end: usize,
    depth: usize,
}

impl ConditionParser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(t, _)| t)
    }

    fn offset(&self) -> usize {
        self.tokens.get(self.at).map(|(_, o)| *o).unwrap_or(self.end)
    }

    fn err<T>(&self, message: impl Into<String>) -> Result<T, ConditionError> {
        Err(ConditionError { offset: self.offset(), message: message.into() })
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(x)) if x == w)
    }

    fn enter(&mut self) -> Result<(), ConditionError> {
        self.depth += 1;
        if self.depth > MAX_CONDITION_DEPTH {
            return self.err(format!("the condition nests deeper than {MAX_CONDITION_DEPTH} levels"));
        }
        Ok(())
    }

    fn or_expr(&mut self) -> Result<Condition, ConditionError> {
        let mut items = vec![self.and_expr()?];
        while self.is_word("or") {
            self.at += 1;
            items.push(self.and_expr()?);
        }
        Ok(if items.len() == 1 { items.pop().unwrap() } else { Condition::Or(items) })
    }

    fn and_expr(&mut self) -> Result<Condition, ConditionError> {
        let mut items = vec![self.not_expr()?];
        while self.is_word("and") {
            self.at += 1;
            items.push(self.not_expr()?);
        }
        Ok(if items.len() == 1 { items.pop().unwrap() } else { Condition::And(items) })
    }

    fn not_expr(&mut self) -> Result<Condition, ConditionError> {
        if self.is_word("not") {
            self.at += 1;
            self.enter()?;
            let inner = self.not_expr()?;
            self.depth -= 1;
            return Ok(Condition::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Condition, ConditionError> {
        match self.peek().cloned() {
            None => self.err("the condition ends where a search identifier or '(' was expected"),
            Some(Token::LParen) => {
                self.at += 1;
                self.enter()?;
                let inner = self.or_expr()?;
                self.depth -= 1;
                if self.peek() != Some(&Token::RParen) {
                    return self.err("missing ')' in the condition");
                }
                self.at += 1;
                Ok(inner)
            }
            Some(Token::RParen) => self.err("unexpected ')' where a search identifier was expected"),
            Some(Token::Pipe) => self.err(AGGREGATION_UNSUPPORTED),
            Some(Token::Word(w)) => {
                match w.as_str() {
                    "and" | "or" => return self.err(format!("'{w}' needs a search identifier before it")),
                    "not" => unreachable!("handled by not_expr"),
                    "AND" | "OR" | "NOT" => {
                        return self.err(format!("operators are lowercase in Sigma: write '{}' instead of '{w}'", w.to_lowercase()));
                    }
                    "of" | "them" => return self.err(format!("'{w}' must follow '1 of' or 'all of'")),
                    _ => {}
                }
                let quantifier = matches!(w.as_str(), "1" | "all" | "any");
                let next_is_of = matches!(self.tokens.get(self.at + 1), Some((Token::Word(x), _)) if x == "of");
                if quantifier && next_is_of {
                    self.at += 2;
                    let target = match self.peek().cloned() {
                        Some(Token::Word(t)) if t == "them" => Target::Them,
                        Some(Token::Word(t)) if !matches!(t.as_str(), "and" | "or" | "not" | "of") => Target::Pattern(t),
                        _ => {
                            return self.err(format!("'{w} of' needs 'them' or an identifier pattern such as 'selection_*'"));
                        }
                    };
                    self.at += 1;
                    return Ok(if w == "all" { Condition::AllOf(target) } else { Condition::OneOf(target) });
                }
                if next_is_of {
                    return self.err(format!("'{w} of' is not valid: Sigma allows only '1 of', 'any of' and 'all of'"));
                }
                if w.contains('*') {
                    return self.err(format!("wildcard '{w}' is only allowed after '1 of' or 'all of'"));
                }
                self.at += 1;
                Ok(Condition::Ref(w))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        parse_condition(s).unwrap().to_string()
    }

    #[test]
    fn precedence_not_and_or() {
        assert_eq!(p("a or b and c"), "(a or (b and c))");
        assert_eq!(p("not a and b"), "(not a and b)");
        assert_eq!(p("a and not b or c"), "((a and not b) or c)");
        assert_eq!(p("(a or b) and c"), "((a or b) and c)");
        assert_eq!(p("not not a"), "not not a");
        assert_eq!(p("a and b and c"), "(a and b and c)");
    }

    #[test]
    fn quantifiers() {
        assert_eq!(parse_condition("1 of sel*").unwrap(), Condition::OneOf(Target::Pattern("sel*".into())));
        assert_eq!(parse_condition("any of sel*").unwrap(), Condition::OneOf(Target::Pattern("sel*".into())));
        assert_eq!(parse_condition("all of them").unwrap(), Condition::AllOf(Target::Them));
        assert_eq!(p("sel and not 1 of filter_*"), "(sel and not 1 of filter_*)");
        assert_eq!(p("1 of them and not all of f*"), "(1 of them and not all of f*)");
    }

    #[test]
    fn identifiers_allow_dash_digits_and_leading_underscore() {
        assert_eq!(parse_condition("_private-1").unwrap(), Condition::Ref("_private-1".into()));
        assert_eq!(parse_condition("1").unwrap(), Condition::Ref("1".into()));
    }

    #[test]
    fn syntax_errors_are_explained() {
        for (c, needle) in [
            ("(sel and not filter", "missing ')'"),
            ("sel)", "unbalanced ')'"),
            ("sel and", "ends where"),
            ("sel AND filter", "lowercase"),
            ("sel filter", "expected 'and' or 'or'"),
            ("sel | count() > 5", "correlation rule"),
            ("2 of sel*", "only '1 of'"),
            ("sel*", "only allowed after"),
            ("", "empty"),
            ("sel & x", "unexpected character"),
            ("1 of", "needs 'them'"),
        ] {
            let e = parse_condition(c).unwrap_err();
            assert!(e.message.contains(needle), "{c}: {}", e.message);
        }
        let deep = format!("{}a{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(parse_condition(&deep).unwrap_err().message.contains("deeper"));
        let nots = "not ".repeat(10_000) + "a";
        assert!(parse_condition(&nots).unwrap_err().message.contains("deeper"));
    }

    #[test]
    fn target_selection_rules() {
        let names = ["sel_a", "sel_b", "_hidden", "_sel_x", "filter", "x_sel_b"];
        let pick = |t: Target| t.select(names.iter().copied());
        assert_eq!(pick(Target::Them), ["sel_a", "sel_b", "filter", "x_sel_b"]);
        assert_eq!(pick(Target::Pattern("sel*".into())), ["sel_a", "sel_b"]);
        assert_eq!(pick(Target::Pattern("*sel*_b".into())), ["sel_b", "x_sel_b"]);
        assert_eq!(pick(Target::Pattern("_*".into())), ["_hidden", "_sel_x"]);
        assert!(pick(Target::Pattern("nomatch*".into())).is_empty());
    }
}
