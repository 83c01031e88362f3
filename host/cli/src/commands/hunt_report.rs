//! How `sigmaforge hunt` prints its matches: a table, JSON Lines (`--json`) or a CSV timeline
//! (`--csv`); `--full` adds the matched event; `--level` / `--status` keep some rules' matches.
//!
//! The event is shown as the rule sees it: under the Sigma field names the rule's logsource
//! variant maps (a Security 4688 event shows `Image`, not `NewProcessName`), which the engine's
//! [`Hunter::event_as_seen`] works out.
//!
//! CSV is written by hand (quote a cell holding `,`, `"` or a line break; double the quotes):
//! RFC 4180 needs nothing more, so no dependency is added for it.

use std::io::Write;
use std::time::Duration;

use serde_json::{Map, Value, json};
use sigma_engine::corpus::Corpus;
use sigma_engine::hunt::{HuntError, HuntOutcome, Hunter, PreparedRule, RuleSet, detection_fields};

/// The System elements of a Windows event, as the engine flattens them (`Tag` and
/// `Tag_Attribute`); every other field is event data.
const SYSTEM_FIELDS: &[&str] = &[
    "Provider_Name",
    "Provider_Guid",
    "Provider_EventSourceName",
    "EventID",
    "EventID_Qualifiers",
    "Version",
    "Level",
    "Task",
    "Opcode",
    "Keywords",
    "TimeCreated_SystemTime",
    "EventRecordID",
    "Correlation_ActivityID",
    "Correlation_RelatedActivityID",
    "Execution_ProcessID",
    "Execution_ThreadID",
    "Channel",
    "Computer",
    "Security_UserID",
];

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// Which rules' matches are reported (empty: all).
pub struct Selection {
    pub levels: Vec<String>,
    pub statuses: Vec<String>,
}

impl Selection {
    fn keeps(&self, level: Option<&str>, status: Option<&str>) -> bool {
        let fits = |wanted: &[String], value: Option<&str>| wanted.is_empty() || value.is_some_and(|v| wanted.iter().any(|w| w == v));
        fits(&self.levels, level) && fits(&self.statuses, status)
    }
}

/// Everything needed to print a hunt's matches.
pub struct Report<'a> {
    pub rules: &'a RuleSet,
    pub prepared: &'a [Result<PreparedRule, HuntError>],
    pub outcome: &'a HuntOutcome,
    pub hunter: &'a Hunter<'a>,
    pub selection: &'a Selection,
    pub full: bool,
}

/// One reported match: a detection rule's or a correlation's.
struct Hit<'a> {
    rule_id: Option<&'a str>,
    file: &'a str,
    title: &'a str,
    level: Option<&'static str>,
    correlation: Option<&'static str>,
    /// The rule's compiled form (detection rules that ran); names the event's fields.
    prepared: Option<&'a PreparedRule>,
    /// The Sigma fields the rule reads: its detection's (for a correlation: group-by and
    /// condition field).
    fields: Vec<&'a str>,
    event: u32,
}

impl<'a> Report<'a> {
    fn corpus(&self) -> &'a Corpus {
        self.hunter.corpus()
    }

    fn hits(&self) -> Vec<Hit<'a>> {
        let mut out = Vec::new();
        for ((r, m), prepared) in self.rules.rules.iter().zip(&self.outcome.rule_matches).zip(self.prepared) {
            if !self.selection.keeps(r.rule.level.map(|l| l.as_str()), r.rule.status.map(|s| s.as_str())) {
                continue;
            }
            let fields = detection_fields(&r.rule);
            out.extend(m.iter().map(|&event| Hit {
                rule_id: r.rule.id.as_deref(),
                file: &r.file,
                title: &r.rule.title,
                level: r.rule.level.map(|l| l.as_str()),
                correlation: None,
                prepared: prepared.as_ref().ok(),
                fields: fields.clone(),
                event,
            }));
        }
        for (loaded, m) in self.rules.correlations.iter().zip(&self.outcome.correlation_matches) {
            let c = &loaded.correlation;
            if !self.selection.keeps(c.level.map(|l| l.as_str()), c.status.map(|s| s.as_str())) {
                continue;
            }
            let fields: Vec<&str> = c.group_by.iter().map(String::as_str).chain(c.condition.as_ref().and_then(|k| k.field.as_deref())).collect();
            out.extend(m.iter().map(|&event| Hit {
                rule_id: c.id.as_deref(),
                file: &loaded.file,
                title: &c.title,
                level: c.level.map(|l| l.as_str()),
                correlation: Some(c.kind.as_str()),
                prepared: None,
                fields: fields.clone(),
                event,
            }));
        }
        out
    }

    /// Writes the matches; returns how many were written.
    pub fn write(&self, out: &mut impl Write, format: Format) -> std::io::Result<usize> {
        let hits = self.hits();
        match format {
            Format::Json => self.write_json(out, &hits),
            Format::Table => self.write_table(out, &hits),
            Format::Csv => self.write_csv(out, &hits),
        }
    }

    fn system(&self, event: u32, name: &str) -> Option<&'a str> {
        let corpus = self.corpus();
        corpus.event(event).values(corpus.field_key(name)).next().map(|v| v.text())
    }

    /// `Name=value` for each field the rule reads that the event has (multiple values joined
    /// with `|`).
    fn detection_values(&self, hit: &Hit<'_>) -> Vec<(String, String)> {
        hit.fields
            .iter()
            .filter_map(|f| {
                let values = self.hunter.values_as_seen(hit.prepared, hit.event, f);
                (!values.is_empty()).then(|| (f.to_string(), values.join("|")))
            })
            .collect()
    }

    /// `{"System": {...}, "EventData": {...}}` with the rule's field names; a field with several
    /// values is an array.
    fn event_json(&self, hit: &Hit<'_>) -> Value {
        let (mut system, mut data) = (Map::new(), Map::new());
        for (name, values) in self.hunter.event_as_seen(hit.prepared, hit.event) {
            let value = match values.as_slice() {
                [one] => json!(one),
                many => json!(many),
            };
            let target = if SYSTEM_FIELDS.contains(&name.as_str()) { &mut system } else { &mut data };
            target.insert(name, value);
        }
        json!({ "System": system, "EventData": data })
    }

    fn write_json(&self, out: &mut impl Write, hits: &[Hit<'_>]) -> std::io::Result<usize> {
        let corpus = self.corpus();
        for hit in hits {
            let event = corpus.event(hit.event);
            let mut line = json!({
                "rule_id": hit.rule_id,
                "rule": hit.file,
                "title": hit.title,
                "level": hit.level,
                "file": corpus.file_name(event.file),
                "record_id": event.record_id,
                "event_id": self.system(hit.event, "EventID"),
                "channel": self.system(hit.event, "Channel"),
                "timestamp": self.system(hit.event, "TimeCreated_SystemTime"),
            });
            if let Some(kind) = hit.correlation {
                line["correlation"] = json!(kind);
            }
            if self.full {
                line["event"] = self.event_json(hit);
            }
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
        }
        Ok(hits.len())
    }

    fn write_csv(&self, out: &mut impl Write, hits: &[Hit<'_>]) -> std::io::Result<usize> {
        let mut rows: Vec<[String; 8]> = hits
            .iter()
            .map(|hit| {
                let fields = self.detection_values(hit).into_iter().map(|(n, v)| format!("{n}: {v}")).collect::<Vec<_>>().join("; ");
                let title = match hit.correlation {
                    Some(kind) => format!("{} [{kind}]", hit.title),
                    None => hit.title.to_string(),
                };
                let event = self.corpus().event(hit.event);
                [
                    self.system(hit.event, "TimeCreated_SystemTime").unwrap_or("").to_string(),
                    title,
                    hit.level.unwrap_or("").to_string(),
                    self.system(hit.event, "Channel").unwrap_or("").to_string(),
                    self.system(hit.event, "EventID").unwrap_or("").to_string(),
                    self.system(hit.event, "Computer").unwrap_or("").to_string(),
                    fields,
                    format!("{}#{}", self.corpus().file_name(event.file), event.record_id),
                ]
            })
            .collect();
        // A timeline: by time (ISO 8601 text sorts in time order), events without one last.
        rows.sort_by(|a, b| (a[0].is_empty(), &a[0], &a[1]).cmp(&(b[0].is_empty(), &b[0], &b[1])));
        write_csv_row(out, &["timestamp", "rule", "level", "channel", "event_id", "computer", "fields", "event"])?;
        for row in &rows {
            write_csv_row(out, &row.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        Ok(rows.len())
    }

    fn write_table(&self, out: &mut impl Write, hits: &[Hit<'_>]) -> std::io::Result<usize> {
        let corpus = self.corpus();
        let rows: Vec<Vec<String>> = hits
            .iter()
            .map(|hit| {
                let event = corpus.event(hit.event);
                let title = match hit.correlation {
                    Some(kind) => format!("{} [{kind}]", hit.title),
                    None => hit.title.to_string(),
                };
                let mut row = vec![
                    self.system(hit.event, "TimeCreated_SystemTime").unwrap_or("-").to_string(),
                    hit.level.unwrap_or("-").to_string(),
                    title,
                    corpus.file_name(event.file).to_string(),
                    event.record_id.to_string(),
                ];
                if self.full {
                    row.push(self.detection_values(hit).into_iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("  "));
                }
                row
            })
            .collect();
        if rows.is_empty() {
            writeln!(out, "no matches")?;
            return Ok(0);
        }
        let mut header = vec!["timestamp", "level", "rule", "file", "record"];
        if self.full {
            header.push("fields");
        }
        let columns = header.len();
        // The fields column is last and not cut: it is what --full is for.
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                let widest = rows.iter().map(|r| r[c].chars().count()).chain([header[c].len()]).max().unwrap_or(0);
                if c == 5 { widest } else { widest.min(70) }
            })
            .collect();
        let line = |out: &mut dyn Write, cells: &[&str]| -> std::io::Result<()> {
            let mut text = String::new();
            for (c, cell) in cells.iter().enumerate() {
                let cell: String = if cell.chars().count() > widths[c] {
                    format!("{}…", cell.chars().take(widths[c] - 1).collect::<String>())
                } else {
                    cell.to_string()
                };
                if c == 4 {
                    text.push_str(&format!("{cell:>w$}  ", w = widths[c]));
                } else {
                    text.push_str(&format!("{cell:<w$}  ", w = widths[c]));
                }
            }
            writeln!(out, "{}", text.trim_end())
        };
        line(out, &header)?;
        line(out, &widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().iter().map(String::as_str).collect::<Vec<_>>())?;
        for r in &rows {
            line(out, &r.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        Ok(rows.len())
    }
}

fn write_csv_row(out: &mut impl Write, cells: &[&str]) -> std::io::Result<()> {
    let quoted: Vec<String> =
        cells.iter().map(|c| if c.contains([',', '"', '\n', '\r']) { format!("\"{}\"", c.replace('"', "\"\"")) } else { c.to_string() }).collect();
    writeln!(out, "{}", quoted.join(","))
}

pub struct Summary<'a> {
    pub rules: &'a RuleSet,
    pub outcome: &'a HuntOutcome,
    pub corpus: &'a Corpus,
    pub files: usize,
    /// Files left unread because they hold no channel the rules read.
    pub unread: usize,
    /// Records of the files read left out because no rule reads their (Channel, EventID).
    pub skipped: u64,
    pub matches: usize,
    pub load_time: Duration,
    pub total_time: Duration,
}

impl std::fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let firing = self.outcome.rule_matches.iter().chain(&self.outcome.correlation_matches).filter(|m| !m.is_empty()).count();
        writeln!(f)?;
        writeln!(
            f,
            "rules:   {} loaded ({} detection, {} correlation, {} filters), {} files with errors, {} skipped",
            self.rules.loaded(),
            self.rules.rules.len(),
            self.rules.correlations.len(),
            self.rules.filters.len(),
            self.rules.failed_files,
            self.outcome.skipped.len()
        )?;
        write!(f, "events:  {} from {} files (loaded in {:.2?})", self.corpus.len(), self.files - self.unread, self.load_time)?;
        if self.unread > 0 {
            write!(f, "; {} files hold no channel these rules read and were not parsed", self.unread)?;
        }
        if self.skipped > 0 {
            write!(f, "; {} records of channels and EventIDs these rules do not read were left out", self.skipped)?;
        }
        let damaged = self.corpus.damaged_files();
        if !damaged.is_empty() {
            let total = |count: fn(&sigma_engine::corpus::FileIntegrity) -> u64| damaged.iter().map(count).sum::<u64>();
            write!(
                f,
                "; {} files not intact: {} records recovered, {} lost, {} duplicates dropped",
                damaged.len(),
                total(|i| i.recovered),
                total(|i| i.lost),
                total(|i| i.duplicates)
            )?;
        }
        writeln!(f)?;
        writeln!(f, "matches: {} from {firing} rules", self.matches)?;
        write!(f, "time:    {:.2?}", self.total_time)
    }
}
