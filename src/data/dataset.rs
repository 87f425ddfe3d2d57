//! Which files make a dataset: folders searched recursively, CSV files (a `Path`/`path`
//! column, or the first column; read by [`CsvTable`]) and plain lists (one path per line).
//! Relative paths in a list resolve against the list's folder, or the folder above it that
//! holds them. Layouts with targets (label columns, pairs, masks) are read by
//! [`super::targets`].
use std::path::{Path, PathBuf};

use super::decode::is_supported_image;
use super::targets::{Target, View, patient_from_path};

/// Errors of building a dataset; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {reason}", path.display())]
    List { path: PathBuf, reason: String },
    /// A CSV row that cannot be used; `line` counts from 1.
    #[error("{}: line {line}: {reason}", path.display())]
    Csv { path: PathBuf, line: u64, reason: String },
    #[error("no images found in {0}")]
    Empty(String),
    /// Paired folders whose files do not all match by name.
    #[error("{} and {}: {report}", inputs.display(), targets.display())]
    Unmatched { inputs: PathBuf, targets: PathBuf, report: String },
}

/// One sample: a file, and what the layout says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub path: PathBuf,
    /// Class name, for class-folder layouts.
    pub label: Option<String>,
    /// What the sample is trained towards, for layouts that have targets.
    pub target: Option<Target>,
    /// The projection, from a CSV's `Frontal/Lateral` and `AP/PA` columns.
    pub view: View,
    /// From a CSV column, else the `patientNNNNN` folder of the path (CheXpert's layout):
    /// splits by patient keep a patient's studies on one side.
    pub patient: Option<String>,
}

impl Sample {
    /// A file without target or view; the patient from its path, when it names one.
    pub fn new(path: PathBuf) -> Self {
        let patient = patient_from_path(&path);
        Self { path, label: None, target: None, view: View::default(), patient }
    }
}

/// An ordered list of samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dataset {
    pub samples: Vec<Sample>,
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io { path: path.to_path_buf(), source }
}

pub(crate) fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DatasetError> {
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

/// A CSV file read whole (with the `csv` crate: quoted fields, doubled quotes, CRLF or LF, a
/// UTF-8 byte-order mark): its first row and the rows under it, every one with as many fields
/// as the first, fields trimmed, whitespace-only lines skipped. The first row is the header
/// when the file has one; a file without one (the path column first) reads its first path
/// from it. Label columns are read from here as the paths are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvTable {
    pub path: PathBuf,
    pub header: CsvRow,
    pub rows: Vec<CsvRow>,
}

/// One row of a [`CsvTable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvRow {
    /// Line of the file (from 1) where the row starts.
    pub line: u64,
    pub fields: Vec<String>,
}

impl CsvTable {
    /// Reads `path`; a row with another number of fields than the first is an error naming
    /// the file and the row's line.
    pub fn read(path: &Path) -> Result<Self, DatasetError> {
        let bytes = std::fs::read(path).map_err(io(path))?;
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(bytes);
        let mut rows = Vec::new();
        for record in reader.records() {
            let record = record.map_err(|e| csv_error(path, bytes, e))?;
            let line = record.position().map_or(0, |pos| record_line(bytes, pos));
            let fields: Vec<String> = record.iter().map(str::to_string).collect();
            if let [only] = fields.as_slice()
                && only.is_empty()
            {
                continue;
            }
            rows.push(CsvRow { line, fields });
        }
        let mut rows = rows.into_iter();
        let header = rows
            .next()
            .ok_or_else(|| DatasetError::List { path: path.into(), reason: "empty CSV".into() })?;
        let table = Self { path: path.into(), rows: rows.collect(), header };
        let width = table.header.fields.len();
        if let Some(row) = table.rows.iter().find(|r| r.fields.len() != width) {
            let n = row.fields.len();
            let fields = if n == 1 { "field" } else { "fields" };
            let reason = format!("{n} {fields} where the header (line {}) has {width}", table.header.line);
            return Err(table.error(row.line, reason));
        }
        Ok(table)
    }

    /// The column whose header is `name` (ASCII case-insensitive).
    pub fn column(&self, name: &str) -> Option<usize> {
        self.header.fields.iter().position(|c| c.eq_ignore_ascii_case(name))
    }

    /// An error about line `line` of this file.
    pub fn error(&self, line: u64, reason: impl Into<String>) -> DatasetError {
        DatasetError::Csv { path: self.path.clone(), line, reason: reason.into() }
    }
}

/// The line a record starts on. The `csv` crate gives the line where it began looking for the
/// record, before the blank lines it skips; like it, lines are counted by `\n`.
fn record_line(bytes: &[u8], pos: &csv::Position) -> u64 {
    let blank = bytes.get(pos.byte() as usize..).unwrap_or_default();
    let skipped = blank.iter().take_while(|&&b| b == b'\r' || b == b'\n').filter(|&&b| b == b'\n');
    pos.line() + skipped.count() as u64
}

fn csv_error(path: &Path, bytes: &[u8], e: csv::Error) -> DatasetError {
    let line = e.position().map_or(0, |pos| record_line(bytes, pos));
    let reason = match e.kind() {
        csv::ErrorKind::Utf8 { err, .. } => format!("field {} is not UTF-8", err.field() + 1),
        _ => e.to_string(),
    };
    match e.into_kind() {
        csv::ErrorKind::Io(source) => DatasetError::Io { path: path.into(), source },
        _ => DatasetError::Csv { path: path.into(), line, reason },
    }
}

fn read_list(path: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let is_csv = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if !is_csv {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let entries: Vec<PathBuf> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| PathBuf::from(l.trim()))
            .collect();
        return Ok(resolve_relative(path, entries));
    }
    let table = CsvTable::read(path)?;
    // A `Path` column, or else the first column of a file without a header.
    let (col, rows): (usize, Vec<&CsvRow>) = match table.column("path") {
        Some(i) => (i, table.rows.iter().collect()),
        None => (0, std::iter::once(&table.header).chain(&table.rows).collect()),
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let p = &row.fields[col];
        if p.is_empty() {
            return Err(table.error(row.line, format!("no path in column {}", col + 1)));
        }
        out.push(PathBuf::from(p));
    }
    Ok(resolve_relative(path, out))
}

/// Joins the relative entries of `list` to one base folder: the list's own, unless its first
/// relative entry is missing there and found from a folder above it or from the working
/// directory. Published CSVs name paths from the folder above theirs (CheXpert's `train.csv`
/// inside `CheXpert-v1.0-small/` lists `CheXpert-v1.0-small/train/...`).
pub(crate) fn resolve_relative(list: &Path, entries: Vec<PathBuf>) -> Vec<PathBuf> {
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

/// A CSV field, quoted when it must be.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// A name per sample for the files written from it (`<name>.png`, `<name>_cam_X.png`): its file
/// stem, with `_2`, `_3`, ... on the later of several files that share one (`a/1.dcm`,
/// `b/1.dcm`), so that no output overwrites another.
pub fn output_names(dataset: &Dataset) -> Vec<String> {
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let mut taken: std::collections::HashSet<String> = std::collections::HashSet::new();
    dataset
        .samples
        .iter()
        .map(|s| {
            let stem = s.path.file_stem().map_or("image".into(), |s| s.to_string_lossy().into_owned());
            let count = seen.entry(stem.clone()).or_insert(0);
            let mut name = stem.clone();
            while !taken.insert(name.clone()) {
                *count += 1;
                name = format!("{stem}_{}", *count + 1);
            }
            name
        })
        .collect()
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
        Ok(Self { samples: paths.into_iter().map(Sample::new).collect() })
    }

    /// A folder of class folders (`root/<class>/...`): samples labelled by their class folder,
    /// classes in sorted order, each with its class index as [`Target::Class`].
    pub fn from_class_folders(root: &Path) -> Result<Self, DatasetError> {
        let mut classes: Vec<PathBuf> = std::fs::read_dir(root)
            .map_err(io(root))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        classes.sort();
        let mut samples = Vec::new();
        let mut index = 0;
        for class in classes {
            let Some(label) = class.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
            let mut files = Vec::new();
            walk(&class, &mut files)?;
            if files.is_empty() {
                // An empty folder is no class: indices stay those of `classes()`.
                continue;
            }
            samples.extend(files.into_iter().map(|path| Sample {
                label: Some(label.clone()),
                target: Some(Target::Class(index)),
                ..Sample::new(path)
            }));
            index += 1;
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

#[cfg(test)]
mod output_name_tests {
    use super::*;

    #[test]
    fn shared_stems_get_numbered() {
        let samples = ["a/1.dcm", "b/1.dcm", "c/2.png", "d/1.png"]
            .iter()
            .map(|p| Sample::new(PathBuf::from(p)))
            .collect();
        let names = output_names(&Dataset { samples });
        assert_eq!(names, vec!["1", "1_2", "2", "1_3"]);
    }
}
