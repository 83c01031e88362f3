//! Value modifiers (`field|mod1|mod2`): names, and which combinations make sense.

use std::fmt;

/// Why a modifier name or a modifier chain is not accepted. The rule parser reports the two
/// kinds under different diagnostic codes (`unknown-modifier`, `bad-modifier-combination`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModifierError {
    #[error("empty modifier (two '|' in a row, or a trailing '|')")]
    Empty,
    /// A Hayabusa-only modifier, with the Sigma spelling to use instead.
    #[error("'{name}' is a Hayabusa extension, not a Sigma modifier; {instead}")]
    Hayabusa { name: String, instead: &'static str },
    #[error("modifier '{name}' must be written in lowercase ('{}')", name.to_lowercase())]
    NotLowercase { name: String },
    #[error("unknown modifier '{0}'")]
    Unknown(String),
    /// Known modifiers that have no meaning together (the message says which and why).
    #[error("{0}")]
    Combination(String),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Modifier {
    Contains,
    StartsWith,
    EndsWith,
    All,
    Base64,
    Base64Offset,
    Utf16le,
    Utf16be,
    Utf16,
    Wide,
    Windash,
    Re,
    /// `re|i`
    IgnoreCase,
    /// `re|m`
    Multiline,
    /// `re|s`
    DotAll,
    Cidr,
    Exists,
    Cased,
    FieldRef,
    Expand,
    Gt,
    Gte,
    Lt,
    Lte,
    Neq,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Modifier {
    /// Parses one modifier name as written in a rule (case-sensitive, like pySigma).
    pub fn parse(name: &str) -> Result<Modifier, ModifierError> {
        use Modifier::*;
        Ok(match name {
            "contains" => Contains,
            "startswith" => StartsWith,
            "endswith" => EndsWith,
            "all" => All,
            "base64" => Base64,
            "base64offset" => Base64Offset,
            "utf16le" => Utf16le,
            "utf16be" => Utf16be,
            "utf16" => Utf16,
            "wide" => Wide,
            "windash" => Windash,
            "re" => Re,
            "i" | "ignorecase" => IgnoreCase,
            "m" | "multiline" => Multiline,
            "s" | "dotall" => DotAll,
            "cidr" => Cidr,
            "exists" => Exists,
            "cased" => Cased,
            "fieldref" => FieldRef,
            "expand" => Expand,
            "gt" => Gt,
            "gte" => Gte,
            "lt" => Lt,
            "lte" => Lte,
            "neq" => Neq,
            "minute" => Minute,
            "hour" => Hour,
            "day" => Day,
            "week" => Week,
            "month" => Month,
            "year" => Year,
            "" => return Err(ModifierError::Empty),
            "equalsfield" | "endswithfield" | "fieldrefstartswith" | "fieldrefendswith" | "fieldrefcontains" => {
                return Err(ModifierError::Hayabusa {
                    name: name.to_string(),
                    instead: "use 'fieldref' (combined with startswith/endswith/contains)",
                });
            }
            "reignorecase" | "remultiline" | "resingleline" => {
                return Err(ModifierError::Hayabusa { name: name.to_string(), instead: "write 're|i', 're|m' or 're|s'" });
            }
            "allOnly" => return Err(ModifierError::Hayabusa { name: name.to_string(), instead: "use a keyword map '|all'" }),
            other if other != other.to_lowercase() && Modifier::parse(&other.to_lowercase()).is_ok() => {
                return Err(ModifierError::NotLowercase { name: other.to_string() });
            }
            other => return Err(ModifierError::Unknown(other.to_string())),
        })
    }

    pub fn name(self) -> &'static str {
        use Modifier::*;
        match self {
            Contains => "contains",
            StartsWith => "startswith",
            EndsWith => "endswith",
            All => "all",
            Base64 => "base64",
            Base64Offset => "base64offset",
            Utf16le => "utf16le",
            Utf16be => "utf16be",
            Utf16 => "utf16",
            Wide => "wide",
            Windash => "windash",
            Re => "re",
            IgnoreCase => "i",
            Multiline => "m",
            DotAll => "s",
            Cidr => "cidr",
            Exists => "exists",
            Cased => "cased",
            FieldRef => "fieldref",
            Expand => "expand",
            Gt => "gt",
            Gte => "gte",
            Lt => "lt",
            Lte => "lte",
            Neq => "neq",
            Minute => "minute",
            Hour => "hour",
            Day => "day",
            Week => "week",
            Month => "month",
            Year => "year",
        }
    }

    pub fn is_time_part(self) -> bool {
        matches!(self, Modifier::Minute | Modifier::Hour | Modifier::Day | Modifier::Week | Modifier::Month | Modifier::Year)
    }

    pub fn is_numeric_comparison(self) -> bool {
        matches!(self, Modifier::Gt | Modifier::Gte | Modifier::Lt | Modifier::Lte)
    }

    pub fn is_position(self) -> bool {
        matches!(self, Modifier::Contains | Modifier::StartsWith | Modifier::EndsWith)
    }

    fn is_regex_flag(self) -> bool {
        matches!(self, Modifier::IgnoreCase | Modifier::Multiline | Modifier::DotAll)
    }
}

impl fmt::Display for Modifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Checks that a modifier chain is one a Sigma engine can give a meaning to. `is_keyword` is true
/// for keyword items (no field name).
pub fn check_combination(mods: &[Modifier], is_keyword: bool) -> Result<(), ModifierError> {
    use Modifier::*;
    let invalid = |message: String| Err(ModifierError::Combination(message));
    let has = |m: Modifier| mods.contains(&m);
    for (i, m) in mods.iter().enumerate() {
        if mods[..i].contains(m) {
            return invalid(format!("modifier '{m}' is given twice"));
        }
    }
    let positions: Vec<_> = mods.iter().filter(|m| m.is_position()).collect();
    if positions.len() > 1 {
        return invalid(format!("modifiers '{}' and '{}' cannot be combined: pick one", positions[0], positions[1]));
    }
    let others = |allowed: &[Modifier]| mods.iter().find(|m| !allowed.contains(m)).copied();

    if let Some(pos) = mods.iter().position(|m| m.is_regex_flag())
        && (!has(Re) || mods.iter().position(|m| *m == Re).unwrap() > pos)
    {
        return invalid(format!("modifier '{}' is a regular-expression flag and must follow 're' (e.g. 're|i')", mods[pos]));
    }
    if has(Re)
        && let Some(m) = others(&[Re, IgnoreCase, Multiline, DotAll, All, Neq])
    {
        return invalid(format!("'re' takes the value as a regular expression and cannot be combined with '{m}'"));
    }
    if has(Cidr) {
        if is_keyword {
            return invalid("'cidr' needs a field name".into());
        }
        if let Some(m) = others(&[Cidr, All, Neq]) {
            return invalid(format!("'cidr' cannot be combined with '{m}'"));
        }
    }
    if has(Exists) {
        if is_keyword {
            return invalid("'exists' needs a field name".into());
        }
        if let Some(m) = others(&[Exists]) {
            return invalid(format!("'exists' cannot be combined with other modifiers (found '{m}')"));
        }
    }
    if has(FieldRef) {
        if is_keyword {
            return invalid("'fieldref' needs a field name".into());
        }
        if let Some(m) = others(&[FieldRef, Contains, StartsWith, EndsWith, Neq, All, Cased]) {
            return invalid(format!("'fieldref' cannot be combined with '{m}'"));
        }
    }
    let comparisons: Vec<_> = mods.iter().filter(|m| m.is_numeric_comparison()).collect();
    if comparisons.len() > 1 {
        return invalid(format!("'{}' and '{}' cannot be combined on one value; use two selections", comparisons[0], comparisons[1]));
    }
    let time_parts: Vec<_> = mods.iter().filter(|m| m.is_time_part()).collect();
    if time_parts.len() > 1 {
        return invalid(format!("only one time modifier per value (found '{}' and '{}')", time_parts[0], time_parts[1]));
    }
    if (!comparisons.is_empty() || !time_parts.is_empty()) && is_keyword {
        return invalid("numeric and time modifiers need a field name".into());
    }
    if let Some(t) = time_parts.first() {
        let t_at = mods.iter().position(|m| m == *t).unwrap();
        if let Some(m) = others(&[**t, Gt, Gte, Lt, Lte, Neq, All]) {
            return invalid(format!("time modifier '{t}' cannot be combined with '{m}'"));
        }
        if let Some(c) = comparisons.first()
            && mods.iter().position(|m| m == *c).unwrap() < t_at
        {
            return invalid(format!("'{c}' must come after the time modifier '{t}'"));
        }
    } else if let Some(c) = comparisons.first()
        && let Some(m) = others(&[**c, Neq, All])
    {
        return invalid(format!("numeric comparison '{c}' cannot be combined with '{m}'"));
    }
    let encoders = [Base64, Base64Offset];
    if mods.iter().filter(|m| encoders.contains(m)).count() > 1 {
        return invalid("'base64' and 'base64offset' cannot be combined".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(s: &str) -> Result<(), ModifierError> {
        let mods: Result<Vec<_>, _> = s.split('|').map(Modifier::parse).collect();
        check_combination(&mods?, false)
    }

    #[test]
    fn valid_chains() {
        for c in [
            "contains",
            "contains|all",
            "windash|contains",
            "wide|base64offset|contains",
            "re",
            "re|i",
            "re|i|m|s",
            "cidr",
            "exists",
            "fieldref",
            "fieldref|endswith",
            "gt",
            "hour",
            "hour|gte",
            "contains|cased",
            "neq",
            "contains|expand",
        ] {
            assert_eq!(chain(c), Ok(()), "{c}");
        }
    }

    #[test]
    fn invalid_chains_explain_themselves() {
        for (c, needle) in [
            ("contains|re", "regular expression"),
            ("i", "must follow 're'"),
            ("i|re", "must follow 're'"),
            ("contains|startswith", "pick one"),
            ("exists|contains", "exists"),
            ("cidr|contains", "cidr"),
            ("gt|lt", "cannot be combined"),
            ("contains|gt", "numeric comparison"),
            ("gte|hour", "must come after"),
            ("base64|base64offset", "cannot be combined"),
            ("contains|contains", "twice"),
            ("fieldref|base64", "fieldref"),
        ] {
            let e = chain(c).unwrap_err().to_string();
            assert!(e.contains(needle), "{c}: {e}");
        }
    }

    #[test]
    fn unknown_and_hayabusa_modifiers_are_rejected() {
        assert!(Modifier::parse("conatins").unwrap_err().to_string().contains("unknown modifier"));
        assert!(Modifier::parse("equalsfield").unwrap_err().to_string().contains("Hayabusa"));
        assert!(Modifier::parse("reignorecase").unwrap_err().to_string().contains("re|i"));
        assert!(Modifier::parse("Contains").unwrap_err().to_string().contains("lowercase"));
        assert_eq!(Modifier::parse("ignorecase"), Ok(Modifier::IgnoreCase));
    }
}
