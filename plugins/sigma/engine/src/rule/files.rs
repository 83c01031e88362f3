//! Finding rule files on disk.

use std::path::{Path, PathBuf};

/// Every `*.yml` / `*.yaml` file under `dir` (recursively), sorted by path so output and task
/// order are stable. An unreadable directory is an error naming it.
pub fn rule_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    collect(dir, &mut out)?;
    out.sort();
    Ok(out)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        // The directory entry says what it is without a lookup; a link is followed.
        let is_dir = match entry.file_type() {
            Ok(t) if !t.is_symlink() => t.is_dir(),
            _ => path.is_dir(),
        };
        if is_dir {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_yaml_files_recursively_in_path_order() {
        let dir = std::env::temp_dir().join(format!("sf-rule-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a")).unwrap();
        for f in ["b.yml", "a/x.yaml", "a.yml", "notes.txt"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let got: Vec<String> = super::rule_files(&dir).unwrap().iter().map(|p| p.strip_prefix(&dir).unwrap().display().to_string()).collect();
        assert_eq!(got, ["a/x.yaml", "a.yml", "b.yml"]);
        assert!(super::rule_files(&dir.join("missing")).unwrap_err().to_string().contains("missing"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
