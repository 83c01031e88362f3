//! Problems found in a rule file, kept as data so that `sigmaforge check`, `hunt` and the reward
//! plugin can each present them their own way.

use std::fmt;

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The rule is invalid: it does not load.
    Error,
    /// A style or portability problem: the rule still loads and runs.
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// A 1-based line:column position in a rule file.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    pub fn new(line: u32, column: u32) -> Self {
        Pos { line, column }
    }
}

/// One problem, located in its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// A stable kebab-case identifier of the kind of problem (`yaml-syntax`, `unknown-modifier`, …),
    /// for tools that filter or count diagnostics.
    pub code: &'static str,
    /// What is wrong, in words a detection engineer understands.
    pub message: String,
    /// The file (as the caller named it).
    pub origin: String,
    /// 1-based line, when known.
    pub line: Option<u32>,
    /// 1-based column, when known.
    pub column: Option<u32>,
}

impl Diagnostic {
    pub fn error(code: &'static str, origin: &str, pos: Option<Pos>, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, code, origin, pos, message)
    }

    pub fn warning(code: &'static str, origin: &str, pos: Option<Pos>, message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, code, origin, pos, message)
    }

    fn new(severity: Severity, code: &'static str, origin: &str, pos: Option<Pos>, message: impl Into<String>) -> Self {
        Diagnostic { severity, code, message: message.into(), origin: origin.to_string(), line: pos.map(|p| p.line), column: pos.map(|p| p.column) }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The diagnostic as one JSON object: `file`, `line`, `column` (null when unknown), `severity`,
    /// `code`, `message`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "file": self.origin,
            "line": self.line,
            "column": self.column,
            "severity": self.severity.as_str(),
            "code": self.code,
            "message": self.message,
        })
    }
}

/// `path:line:col: error: message` (the position parts are left out when unknown), the format
/// compilers use so that editors can jump to the spot.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}: {} [{}]", self.severity.as_str(), self.message, self.code)
    }
}

impl std::error::Error for Diagnostic {}
