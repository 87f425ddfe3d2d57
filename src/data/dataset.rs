//! Which files make a dataset: folders searched recursively, CSV files (a `Path`/`path`
//! column, or the first column) and plain lists (one path per line). Relative paths in a list
//! resolve against the list's folder, or the folder above it that holds them.
use std::path::{Path, PathBuf};

use super::decode::is_supported_image;

/// Errors of building a dataset; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {reason}", path.display())]
    List { path: PathBuf, reason: String },
    #[error("no images found in {0}")]
    Empty(String),
}

/// One sample: a file and, for labelled layouts, its class name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub path: PathBuf,
    pub label: Option<String>,
}

/// An ordered list of samples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dataset {
    pub samples: Vec<Sample>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io { path: path.to_path_buf(), source }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DatasetError> {
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(io(dir))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, out)?;
        } else if is_supported_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Splits one CSV line, honouring double quotes.
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().unwrap().push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields.into_iter().map(|f| f.trim().to_string()).collect()
}

fn read_list(path: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let is_csv = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if !is_csv {
        let entries: Vec<PathBuf> =
            lines.filter(|l| !l.starts_with('#')).map(|l| PathBuf::from(l.trim())).collect();
        return Ok(resolve_relative(path, entries));
    }
    let header =
        lines.next().ok_or_else(|| DatasetError::List { path: path.into(), reason: "empty CSV".into() })?;
    let columns = csv_fields(header);
    let (col, skip_header) = match columns.iter().position(|c| c.eq_ignore_ascii_case("path")) {
        Some(i) => (i, true),
        None => (0, false),
    };
    let mut out = Vec::new();
    if !skip_header {
        out.push(PathBuf::from(&columns[0]));
    }
    for (i, line) in lines.enumerate() {
        let fields = csv_fields(line);
        let p = fields.get(col).filter(|p| !p.is_empty()).ok_or_else(|| DatasetError::List {
            path: path.into(),
            reason: format!("line {}: no path in column {}", i + 2, col + 1),
        })?;
        out.push(PathBuf::from(p));
    }
    Ok(resolve_relative(path, out))
}

/// Joins the relative entries of `list` to one base folder: the list's own, unless its first
/// relative entry is missing there and found from a folder above it or from the working
/// directory. Published CSVs name paths from the folder above theirs (CheXpert's `train.csv`
/// inside `CheXpert-v1.0-small/` lists `CheXpert-v1.0-small/train/...`).
fn resolve_relative(list: &Path, entries: Vec<PathBuf>) -> Vec<PathBuf> {
    let own = list.parent().unwrap_or(Path::new(".")).to_path_buf();
    let base = entries.iter().find(|p| p.is_relative()).map_or(own.clone(), |first| {
        let above = own.ancestors().skip(1).map(Path::to_path_buf);
        std::iter::once(own.clone())
            .chain(above)
            .chain(std::env::current_dir().ok())
            .find(|base| base.join(first).exists())
            .unwrap_or(own)
    });
    entries.into_iter().map(|p| if p.is_absolute() { p } else { base.join(p) }).collect()
}

impl Dataset {
    /// Folders (recursive, sorted), CSV files and list files, in the order given.
    pub fn from_sources(sources: &[PathBuf]) -> Result<Self, DatasetError> {
        let mut paths = Vec::new();
        for src in sources {
            if src.is_dir() {
                walk(src, &mut paths)?;
            } else {
                let ext = src.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
                match ext.as_deref() {
                    Some("csv" | "txt" | "lst" | "list") => paths.extend(read_list(src)?),
                    _ if src.exists() => paths.push(src.clone()),
                    _ => {
                        return Err(io(src)(std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "no such file or folder",
                        )));
                    }
                }
            }
        }
        if paths.is_empty() {
            return Err(DatasetError::Empty(
                sources.iter().map(|s| s.display().to_string()).collect::<Vec<_>>().join(", "),
            ));
        }
        Ok(Self { samples: paths.into_iter().map(|path| Sample { path, label: None }).collect() })
    }

    /// A folder of class folders (`root/<class>/...`): samples labelled by their class folder,
    /// classes in sorted order.
    pub fn from_class_folders(root: &Path) -> Result<Self, DatasetError> {
        let mut classes: Vec<PathBuf> = std::fs::read_dir(root)
            .map_err(io(root))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        classes.sort();
        let mut samples = Vec::new();
        for class in classes {
            let label = class.file_name().unwrap().to_string_lossy().into_owned();
            let mut files = Vec::new();
            walk(&class, &mut files)?;
            samples.extend(files.into_iter().map(|path| Sample { path, label: Some(label.clone()) }));
        }
        if samples.is_empty() {
            return Err(DatasetError::Empty(root.display().to_string()));
        }
        Ok(Self { samples })
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Distinct labels, sorted.
    pub fn classes(&self) -> Vec<String> {
        let mut c: Vec<String> = self.samples.iter().filter_map(|s| s.label.clone()).collect();
        c.sort();
        c.dedup();
        c
    }
}
