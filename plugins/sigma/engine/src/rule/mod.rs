//! Sigma documents: rules, correlation rules and filters, parsed from YAML and validated
//! against the Sigma 2.1 specification.

mod attributes;
pub mod correlation;
mod files;
pub mod filter;

pub use files::rule_files;

use crate::detection::{self, Detection, Sink};
use crate::diagnostic::Diagnostic;
use crate::yaml::{self, Node, NodeValue};
pub use attributes::is_uuid;
pub use correlation::{CmpOp, Correlation, CorrelationCondition, CorrelationType, FieldAlias};
pub use filter::{Filter, FilterRules, apply_filter};

/// Everything found in one file.
#[derive(Clone, Debug, Default)]
pub struct ParsedFile {
    /// The documents that have no errors (warnings are allowed), in file order.
    pub documents: Vec<Document>,
    /// Every problem found, errors and warnings, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl ParsedFile {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.documents.iter().filter_map(|d| match d {
            Document::Rule(r) => Some(r),
            _ => None,
        })
    }
}

// A file holds a handful of documents; boxing the rule would only make callers' matches noisier.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Document {
    Rule(Rule),
    Correlation(Correlation),
    Filter(Filter),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Informational,
    Low,
    Medium,
    High,
    Critical,
}

impl Level {
    const ALL: [(&'static str, Level); 5] = [
        ("informational", Level::Informational),
        ("low", Level::Low),
        ("medium", Level::Medium),
        ("high", Level::High),
        ("critical", Level::Critical),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(_, l)| *l == self).unwrap().0
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Stable,
    Test,
    Experimental,
    Deprecated,
    Unsupported,
}

impl Status {
    const ALL: [(&'static str, Status); 5] = [
        ("stable", Status::Stable),
        ("test", Status::Test),
        ("experimental", Status::Experimental),
        ("deprecated", Status::Deprecated),
        ("unsupported", Status::Unsupported),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(_, s)| *s == self).unwrap().0
    }
}

/// `logsource`: which logs a rule applies to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Logsource {
    pub product: Option<String>,
    pub category: Option<String>,
    pub service: Option<String>,
    pub definition: Option<String>,
    /// Other keys, allowed by the spec.
    pub custom: Vec<(String, String)>,
}

/// `related: {id, type}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Related {
    pub id: String,
    /// derived, obsolete, merged, renamed or similar.
    pub kind: String,
}

/// A Sigma detection rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// The file it came from, as given to [`parse_documents`].
    pub origin: String,
    /// 1-based line where the document starts.
    pub line: u32,
    pub title: String,
    pub id: Option<String>,
    pub name: Option<String>,
    pub status: Option<Status>,
    pub level: Option<Level>,
    pub description: Option<String>,
    pub author: Option<String>,
    pub license: Option<String>,
    pub references: Vec<String>,
    pub tags: Vec<String>,
    pub related: Vec<Related>,
    pub date: Option<String>,
    pub modified: Option<String>,
    pub fields: Vec<String>,
    pub falsepositives: Vec<String>,
    pub scope: Vec<String>,
    pub taxonomy: Option<String>,
    pub logsource: Logsource,
    pub detection: Detection,
}

const RULE_KEYS: &[&str] = &[
    "title",
    "id",
    "name",
    "related",
    "taxonomy",
    "status",
    "description",
    "license",
    "author",
    "references",
    "date",
    "modified",
    "logsource",
    "detection",
    "fields",
    "falsepositives",
    "level",
    "tags",
    "scope",
];

/// Parses a file's text, which may hold several YAML documents (`---`). `origin` names the file
/// in diagnostics. Never panics, whatever the input.
pub fn parse_documents(text: &str, origin: &str) -> ParsedFile {
    let mut out = ParsedFile::default();
    let stream = yaml::parse_stream(text.strip_prefix('\u{feff}').unwrap_or(text));
    let nonempty: Vec<&Node> = stream.documents.iter().filter(|d| d.value != NodeValue::Null).collect();
    for doc in &nonempty {
        let mut sink = Sink { origin, diagnostics: &mut out.diagnostics };
        if let Some(d) = parse_document(doc, origin, &mut sink) {
            out.documents.push(d);
        }
    }
    if let Some(e) = stream.error {
        out.diagnostics.push(Diagnostic::error(e.code, origin, e.pos, e.message));
    } else if nonempty.is_empty() {
        out.diagnostics.push(Diagnostic::error("empty-file", origin, None, "the file holds no YAML document (expected a Sigma rule)"));
    }
    out
}

fn parse_document(doc: &Node, origin: &str, sink: &mut Sink) -> Option<Document> {
    if doc.as_map().is_none() {
        sink.error("not-a-rule", doc.pos, format!("a Sigma document must be a YAML map of attributes, not {}", doc.kind_name()));
        return None;
    }
    let errors_before = sink.diagnostics.iter().filter(|d| d.is_error()).count();
    let document = if doc.get("correlation").is_some() {
        correlation::parse(doc, origin, sink).map(Document::Correlation)
    } else if doc.get("filter").is_some() {
        filter::parse(doc, origin, sink).map(Document::Filter)
    } else if doc.get("action").is_some() {
        sink.error(
            "legacy-collection",
            doc.pos,
            "'action' rule collections (action: global / reset / repeat) are Sigma v1 and unsupported; write each rule as its own document",
        );
        None
    } else if doc.get("detection").is_none() && doc.get("title").is_none() && doc.get("logsource").is_none() {
        sink.error("not-a-rule", doc.pos, "this YAML document is not a Sigma rule: it has no 'title', 'logsource' or 'detection'");
        None
    } else {
        parse_rule(doc, origin, sink).map(Document::Rule)
    };
    let errors_after = sink.diagnostics.iter().filter(|d| d.is_error()).count();
    if errors_after > errors_before { None } else { document }
}

fn parse_rule(doc: &Node, origin: &str, sink: &mut Sink) -> Option<Rule> {
    let title = attributes::title(doc, sink);
    let id = attributes::id(doc, sink);
    let name = attributes::name(doc, sink);
    let status = attributes::enumerated(doc, "status", &Status::ALL, sink);
    let level = attributes::enumerated(doc, "level", &Level::ALL, sink);
    let description = attributes::opt_string(doc, "description", sink);
    attributes::length_limit(doc, "description", 65_535, sink);
    let author = attributes::opt_string(doc, "author", sink);
    let license = attributes::opt_string(doc, "license", sink);
    let references = attributes::string_list(doc, "references", sink);
    let tags = attributes::tags(doc, sink);
    let related = attributes::related(doc, sink);
    let date = attributes::date(doc, "date", sink);
    let modified = attributes::date(doc, "modified", sink);
    if let (Some(d), Some(m)) = (&date, &modified)
        && m < d
    {
        sink.warning("modified-before-date", doc.get("modified").unwrap().pos, format!("'modified' ({m}) is earlier than 'date' ({d})"));
    }
    let fields = attributes::string_list(doc, "fields", sink);
    let falsepositives = falsepositives(doc, sink);
    let scope = attributes::string_list(doc, "scope", sink);
    let taxonomy = attributes::opt_string(doc, "taxonomy", sink);
    if let Some(t) = &taxonomy
        && t != "sigma"
    {
        sink.warning(
            "foreign-taxonomy",
            doc.get("taxonomy").unwrap().pos,
            format!("taxonomy '{t}': field names are matched as written, without mapping them to the Sigma taxonomy"),
        );
    }
    attributes::warn_unknown_keys(doc, RULE_KEYS, sink);
    let logsource = attributes::logsource(doc, sink);
    let detection = match doc.get("detection") {
        Some(d) => detection::parse_detection(d, sink),
        None => {
            sink.error("missing-detection", doc.pos, "the rule has no 'detection' (required)");
            None
        }
    };
    Some(Rule {
        origin: origin.to_string(),
        line: doc.pos.line,
        title,
        id,
        name,
        status,
        level,
        description,
        author,
        license,
        references,
        tags,
        related,
        date,
        modified,
        fields,
        falsepositives,
        scope,
        taxonomy,
        logsource: logsource?,
        detection: detection?,
    })
}

/// `falsepositives`: a list of strings (a single string is tolerated with a warning).
fn falsepositives(doc: &Node, sink: &mut Sink) -> Vec<String> {
    if let Some(n) = doc.get("falsepositives")
        && let NodeValue::String(s) = &n.value
    {
        sink.warning("falsepositives-not-a-list", n.pos, "'falsepositives' should be a list of strings");
        return vec![s.clone()];
    }
    let list = attributes::string_list(doc, "falsepositives", sink);
    if let Some(NodeValue::Seq(nodes)) = doc.get("falsepositives").map(|n| &n.value) {
        for (s, n) in list.iter().zip(nodes) {
            if s.chars().count() < 2 {
                sink.warning("short-falsepositive", n.pos, format!("false positive '{s}' is shorter than 2 characters"));
            }
        }
    }
    list
}
