//! Reading a knowledge corpus: every `*.jsonl` file of a directory, one JSON document
//! `{"id", "title", "text", "source_url"}` per line.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One searchable document.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Document {
    pub id: String,
    pub title: String,
    pub text: String,
    #[serde(default)]
    pub source_url: String,
}

/// A problem with one line that did not stop the rest of the corpus from loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadWarning {
    pub file: String,
    /// 1-based line number.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for LoadWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// Why a corpus directory cannot be used (bad lines are warnings, not errors).
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("cannot read corpus directory {}: {source}", dir.display())]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot list corpus directory {}: {source}", dir.display())]
    ListDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "corpus directory {} has no *.jsonl files (expected one JSON document per line with \"id\", \"title\", \"text\", \"source_url\")",
        dir.display()
    )]
    NoFiles { dir: PathBuf },
    #[error("cannot read corpus file {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every line was skipped (see the warnings of [`parse_jsonl`]).
    #[error("corpus directory {} holds no valid documents ({skipped} lines skipped)", dir.display())]
    NoDocuments { dir: PathBuf, skipped: usize },
}

/// Documents of a corpus and the lines that were skipped.
#[derive(Debug, Default)]
pub struct Corpus {
    pub documents: Vec<Document>,
    pub warnings: Vec<LoadWarning>,
    /// The files read, in load order.
    pub files: Vec<PathBuf>,
}

/// Reads every `*.jsonl` file directly in `dir`, in file-name order (so document order, and ties
/// in ranking, do not depend on the filesystem). Errors name the directory or file; bad lines
/// are warnings and the rest loads.
pub fn load_dir(dir: &Path) -> Result<Corpus, CorpusError> {
    let entries = std::fs::read_dir(dir).map_err(|source| CorpusError::ReadDir { dir: dir.to_path_buf(), source })?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|source| CorpusError::ListDir { dir: dir.to_path_buf(), source })?.path();
        if path.extension().is_some_and(|x| x == "jsonl") && path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(CorpusError::NoFiles { dir: dir.to_path_buf() });
    }
    files.sort();
    let mut corpus = Corpus::default();
    for path in &files {
        let text = std::fs::read_to_string(path).map_err(|source| CorpusError::ReadFile { path: path.clone(), source })?;
        let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        parse_jsonl(&name, &text, &mut corpus);
    }
    corpus.files = files;
    if corpus.documents.is_empty() {
        return Err(CorpusError::NoDocuments { dir: dir.to_path_buf(), skipped: corpus.warnings.len() });
    }
    Ok(corpus)
}

/// Appends the documents of one JSONL text (`file` names it in warnings). Blank lines are skipped
/// silently; invalid JSON, missing fields and empty ids become warnings.
pub fn parse_jsonl(file: &str, text: &str, corpus: &mut Corpus) {
    // Editors on Windows may start a UTF-8 file with a byte-order mark; it is not part of line 1's JSON.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let warn = |message: String| LoadWarning { file: file.to_owned(), line: n + 1, message };
        match serde_json::from_str::<Document>(line) {
            Ok(doc) if doc.id.trim().is_empty() => corpus.warnings.push(warn("document has an empty \"id\"; skipped".into())),
            Ok(doc) => corpus.documents.push(doc),
            Err(e) => corpus.warnings.push(warn(format!("not a corpus document ({e}); skipped"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_are_warnings_naming_file_and_line() {
        let mut corpus = Corpus::default();
        let text = "\u{feff}{\"id\":\"a\",\"title\":\"A\",\"text\":\"x\",\"source_url\":\"u\"}\n\n{not json\n\
                    {\"id\":\"b\",\"title\":\"B\"}\n{\"id\":\"\",\"title\":\"C\",\"text\":\"y\"}\n\
                    {\"id\":\"d\",\"title\":\"D\",\"text\":\"z\"}\n";
        parse_jsonl("mine.jsonl", text, &mut corpus);
        assert_eq!(corpus.documents.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["a", "d"]);
        let w: Vec<String> = corpus.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].starts_with("mine.jsonl:3: not a corpus document"), "{w:?}");
        assert!(w[1].starts_with("mine.jsonl:4: not a corpus document") && w[1].contains("text"), "{w:?}");
        assert!(w[2].starts_with("mine.jsonl:5: document has an empty"), "{w:?}");
        assert_eq!(corpus.documents[1].source_url, "");
    }

    #[test]
    fn missing_or_empty_directories_are_errors() {
        let err = load_dir(Path::new("/nonexistent/corpus")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/corpus"), "{err}");
        let dir = std::env::temp_dir().join(format!("search-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = load_dir(&dir).unwrap_err();
        assert!(matches!(err, CorpusError::NoFiles { .. }));
        assert!(err.to_string().contains("no *.jsonl files"), "{err}");
        std::fs::write(dir.join("bad.jsonl"), "nope\n").unwrap();
        let err = load_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("no valid documents (1 lines skipped)"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
