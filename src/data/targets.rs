//! What a sample is trained towards: label vectors read from CSV columns (CheXpert's layout,
//! with uncertain and blank cells kept apart until a [`LabelPolicy`] maps them), class indices,
//! paired target images and masks (files matched by name, listed in a CSV, or circles drawn from
//! nodule coordinates). The loader ([`super::loader`]) turns them into batch tensors.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::dataset::{CsvRow, CsvTable, Dataset, DatasetError, Sample, io, resolve_relative, walk};
use super::decode::{FileKind, file_kind};

/// The 14 CheXpert observations, in the order of its CSV files.
pub const CHEXPERT_LABELS: [&str; 14] = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
];

/// The 5 labels of the CheXpert competition's mean AUROC.
pub const CHEXPERT5_LABELS: [&str; 5] =
    ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"];

/// Why a policy or label set given on the command line cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown {what} `{value}` (expected {expected})")]
    Unknown { what: &'static str, value: String, expected: &'static str },
    #[error("uncertain-label override `{0}` is not LABEL=ones|zeros|ignore")]
    Override(String),
    #[error("uncertain-label override for `{label}`, which is none of the labels ({labels})")]
    NoSuchLabel { label: String, labels: String },
    #[error("empty list of label columns")]
    NoLabels,
}

/// One label cell: CheXpert's 1, 0, -1 (uncertain) or blank (not mentioned in the report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LabelValue {
    Positive,
    Negative,
    Uncertain,
    Blank,
}

impl LabelValue {
    /// `1`, `0`, `-1` (also written `1.0`, `0.0`, `-1.0`, as CheXpert's files do) or an empty
    /// cell; anything else is `None`.
    pub fn parse(cell: &str) -> Option<Self> {
        let cell = cell.trim();
        if cell.is_empty() {
            return Some(Self::Blank);
        }
        let v: f64 = cell.parse().ok()?;
        if v == 1.0 {
            Some(Self::Positive)
        } else if v == 0.0 {
            Some(Self::Negative)
        } else if v == -1.0 {
            Some(Self::Uncertain)
        } else {
            None
        }
    }
}

/// What a sample is trained towards.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// One value per label column, in the order of the label set.
    Labels(Vec<LabelValue>),
    /// Index of the class among the dataset's sorted classes.
    Class(usize),
    /// An image of the same scene (bone suppression: the soft-tissue image).
    Image(PathBuf),
    /// A label map: pixel values are class indices (a 0/255 file reads as 0/1).
    Mask(PathBuf),
    /// A label map drawn from nodule coordinates.
    Circles(CircleMask),
}

/// The kind of target a whole dataset has, which decides the batch tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// `[N, L]` float targets with an `[N, L]` mask.
    Labels(usize),
    /// `[N]` int64 class indices.
    Class,
    /// `[N, 1, S, S]` 0..255, resized and warped bilinearly.
    Image,
    /// `[N, 1, S, S]` class indices, resized and warped by nearest neighbour.
    Mask,
}

impl Target {
    pub fn kind(&self) -> TargetKind {
        match self {
            Self::Labels(v) => TargetKind::Labels(v.len()),
            Self::Class(_) => TargetKind::Class,
            Self::Image(_) => TargetKind::Image,
            Self::Mask(_) | Self::Circles(_) => TargetKind::Mask,
        }
    }

    /// The file read for this target, if it is one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Self::Image(p) | Self::Mask(p) => Some(p),
            _ => None,
        }
    }
}

/// Frontal or lateral, from CheXpert's `Frontal/Lateral` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Projection {
    Frontal,
    Lateral,
}

/// A radiograph's view as a CSV gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct View {
    pub projection: Option<Projection>,
    /// CheXpert's `AP/PA` column, upper case (`AP`, `PA`, `LL`, `RL`); blank for laterals.
    pub ap_pa: Option<String>,
}

/// `--views all|frontal|pa|ap`: which radiographs of a label CSV are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ViewFilter {
    #[default]
    All,
    Frontal,
    Pa,
    Ap,
}

impl FromStr for ViewFilter {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        match s.to_ascii_lowercase().as_str() {
            "all" => Ok(Self::All),
            "frontal" => Ok(Self::Frontal),
            "pa" => Ok(Self::Pa),
            "ap" => Ok(Self::Ap),
            _ => Err(PolicyError::Unknown {
                what: "view filter",
                value: s.into(),
                expected: "all, frontal, pa or ap",
            }),
        }
    }
}

impl ViewFilter {
    pub fn accepts(self, view: &View) -> bool {
        match self {
            Self::All => true,
            Self::Frontal => view.projection == Some(Projection::Frontal),
            Self::Pa => view.ap_pa.as_deref() == Some("PA"),
            Self::Ap => view.ap_pa.as_deref() == Some("AP"),
        }
    }

    /// The CSV column the filter reads.
    fn column(self) -> Option<&'static str> {
        match self {
            Self::All => None,
            Self::Frontal => Some(FRONTAL_LATERAL),
            Self::Pa | Self::Ap => Some(AP_PA),
        }
    }
}

const FRONTAL_LATERAL: &str = "Frontal/Lateral";
const AP_PA: &str = "AP/PA";

/// `--uncertain`: what a -1 becomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UncertainPolicy {
    /// U-Ones (CheSS): a positive.
    #[default]
    Ones,
    /// U-Zeros: a negative.
    Zeros,
    /// U-Ignore: masked out of the loss.
    Ignore,
}

impl FromStr for UncertainPolicy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        match s.to_ascii_lowercase().as_str() {
            "ones" => Ok(Self::Ones),
            "zeros" => Ok(Self::Zeros),
            "ignore" => Ok(Self::Ignore),
            _ => Err(PolicyError::Unknown {
                what: "uncertain-label policy",
                value: s.into(),
                expected: "ones, zeros or ignore",
            }),
        }
    }
}

/// `--blank`: what an empty cell becomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BlankPolicy {
    /// A negative (CheSS, LibAUC).
    #[default]
    Zeros,
    /// Masked out of the loss (torchxrayvision's NaN).
    Ignore,
}

impl FromStr for BlankPolicy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        match s.to_ascii_lowercase().as_str() {
            "zeros" => Ok(Self::Zeros),
            "ignore" => Ok(Self::Ignore),
            _ => Err(PolicyError::Unknown {
                what: "blank-label policy",
                value: s.into(),
                expected: "zeros or ignore",
            }),
        }
    }
}

/// How label cells become (target, mask) pairs; the default is CheSS's (U-Ones, blank = 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelPolicy {
    pub uncertain: UncertainPolicy,
    /// Per-label exceptions to `uncertain` (LibAUC: ones for Edema and Atelectasis, zeros for
    /// the rest), by label name, ASCII case-insensitive.
    pub overrides: Vec<(String, UncertainPolicy)>,
    pub blank: BlankPolicy,
}

impl LabelPolicy {
    /// Adds overrides written `Label=policy[,Label=policy...]` (`Edema=ones,Atelectasis=ones`).
    pub fn with_overrides(mut self, spec: &str) -> Result<Self, PolicyError> {
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (label, policy) = item.split_once('=').ok_or_else(|| PolicyError::Override(item.into()))?;
            let label = label.trim();
            if label.is_empty() {
                return Err(PolicyError::Override(item.into()));
            }
            self.overrides.push((label.to_string(), policy.trim().parse()?));
        }
        Ok(self)
    }

    /// The policy of each of `labels`, checked: an override naming no label is an error, as a
    /// typo would otherwise silently not apply.
    pub fn for_labels(&self, labels: &[String]) -> Result<LabelMapping, PolicyError> {
        let mut uncertain = vec![self.uncertain; labels.len()];
        for (name, policy) in &self.overrides {
            let i = labels
                .iter()
                .position(|l| l.eq_ignore_ascii_case(name))
                .ok_or_else(|| PolicyError::NoSuchLabel { label: name.clone(), labels: labels.join(", ") })?;
            uncertain[i] = *policy;
        }
        Ok(LabelMapping { uncertain, default: self.uncertain, blank: self.blank })
    }
}

/// A [`LabelPolicy`] resolved for one label set: what each cell becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMapping {
    uncertain: Vec<UncertainPolicy>,
    /// For labels past the end of `uncertain` (a mapping made without names).
    default: UncertainPolicy,
    blank: BlankPolicy,
}

impl Default for LabelMapping {
    /// [`LabelPolicy::default`] for any labels.
    fn default() -> Self {
        Self { uncertain: Vec::new(), default: UncertainPolicy::default(), blank: BlankPolicy::default() }
    }
}

impl LabelMapping {
    /// (target, mask) of one cell of label `i`; mask 0 where the policy ignores it.
    pub fn map(&self, i: usize, value: LabelValue) -> (f32, f32) {
        match value {
            LabelValue::Positive => (1.0, 1.0),
            LabelValue::Negative => (0.0, 1.0),
            LabelValue::Uncertain => match self.uncertain.get(i).copied().unwrap_or(self.default) {
                UncertainPolicy::Ones => (1.0, 1.0),
                UncertainPolicy::Zeros => (0.0, 1.0),
                UncertainPolicy::Ignore => (0.0, 0.0),
            },
            LabelValue::Blank => match self.blank {
                BlankPolicy::Zeros => (0.0, 1.0),
                BlankPolicy::Ignore => (0.0, 0.0),
            },
        }
    }

    /// The (targets, mask) vectors of one sample's labels.
    pub fn apply(&self, values: &[LabelValue]) -> (Vec<f32>, Vec<f32>) {
        values.iter().enumerate().map(|(i, &v)| self.map(i, v)).unzip()
    }
}

/// Which label columns to read: `chexpert` (the 14), `chexpert5` (the competition's 5) or a
/// comma-separated list of column names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelSet {
    CheXpert,
    CheXpert5,
    Columns(Vec<String>),
}

impl FromStr for LabelSet {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "chexpert" => Ok(Self::CheXpert),
            "chexpert5" => Ok(Self::CheXpert5),
            _ => {
                let names: Vec<String> =
                    s.split(',').map(str::trim).filter(|c| !c.is_empty()).map(String::from).collect();
                if names.is_empty() { Err(PolicyError::NoLabels) } else { Ok(Self::Columns(names)) }
            }
        }
    }
}

impl LabelSet {
    pub fn names(&self) -> Vec<String> {
        match self {
            Self::CheXpert => CHEXPERT_LABELS.iter().map(|s| s.to_string()).collect(),
            Self::CheXpert5 => CHEXPERT5_LABELS.iter().map(|s| s.to_string()).collect(),
            Self::Columns(c) => c.clone(),
        }
    }
}

/// How a label CSV is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelCsv {
    pub labels: LabelSet,
    pub views: ViewFilter,
    /// The image column (CheXpert: `Path`).
    pub path_column: String,
    /// A column naming the patient; without one, the `patientNNNNN` folder of the path.
    pub patient_column: Option<String>,
}

impl Default for LabelCsv {
    fn default() -> Self {
        Self {
            labels: LabelSet::CheXpert,
            views: ViewFilter::All,
            path_column: "Path".into(),
            patient_column: None,
        }
    }
}

/// CheXpert's patient folder (`patient00001`) among the components of `path`.
pub fn patient_from_path(path: &Path) -> Option<String> {
    path.components().rev().find_map(|c| {
        let name = c.as_os_str().to_str()?;
        let digits = name.get(..7).filter(|p| p.eq_ignore_ascii_case("patient")).map(|_| &name[7..])?;
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| name.to_string())
    })
}

/// The index of column `name`, or an error naming the file, the header's line and the columns
/// it has.
fn require(table: &CsvTable, name: &str) -> Result<usize, DatasetError> {
    table.column(name).ok_or_else(|| {
        table.error(
            table.header.line,
            format!("no column `{name}` (columns: {})", table.header.fields.join(", ")),
        )
    })
}

/// A non-empty path cell of `row`.
fn path_cell(table: &CsvTable, row: &CsvRow, col: usize) -> Result<PathBuf, DatasetError> {
    let cell = &row.fields[col];
    if cell.is_empty() {
        return Err(table.error(row.line, format!("no path in column `{}`", table.header.fields[col])));
    }
    Ok(PathBuf::from(cell))
}

impl Dataset {
    /// A CSV with an image column and label columns (CheXpert's `train.csv` / `valid.csv`):
    /// each sample gets [`Target::Labels`] in the order of `spec.labels`, with -1 and blank kept
    /// apart; its view and patient are read too, and rows outside `spec.views` dropped. Relative
    /// paths resolve as in [`Dataset::from_sources`] (CheXpert's from the folder above the CSV).
    pub fn from_label_csv(csv: &Path, spec: &LabelCsv) -> Result<Self, DatasetError> {
        let table = CsvTable::read(csv)?;
        let path_col = require(&table, &spec.path_column)?;
        let names = spec.labels.names();
        let label_cols = names.iter().map(|n| require(&table, n)).collect::<Result<Vec<_>, _>>()?;
        if let Some(needed) = spec.views.column() {
            require(&table, needed)?;
        }
        let frontal_col = table.column(FRONTAL_LATERAL);
        let ap_pa_col = table.column(AP_PA);
        let patient_col = spec.patient_column.as_deref().map(|c| require(&table, c)).transpose()?;

        let mut rows = Vec::with_capacity(table.rows.len());
        for row in &table.rows {
            let path = path_cell(&table, row, path_col)?;
            let mut labels = Vec::with_capacity(label_cols.len());
            for (&col, name) in label_cols.iter().zip(&names) {
                let cell = &row.fields[col];
                labels.push(LabelValue::parse(cell).ok_or_else(|| {
                    table.error(row.line, format!("column `{name}`: `{cell}` is not 1, 0, -1 or blank"))
                })?);
            }
            let projection = match frontal_col.map(|c| row.fields[c].as_str()) {
                None | Some("") => None,
                Some(v) if v.eq_ignore_ascii_case("frontal") => Some(Projection::Frontal),
                Some(v) if v.eq_ignore_ascii_case("lateral") => Some(Projection::Lateral),
                Some(v) => {
                    let reason = format!("column `{FRONTAL_LATERAL}`: `{v}` is neither Frontal nor Lateral");
                    return Err(table.error(row.line, reason));
                }
            };
            let ap_pa = ap_pa_col.map(|c| row.fields[c].to_ascii_uppercase()).filter(|v| !v.is_empty());
            let view = View { projection, ap_pa };
            if !spec.views.accepts(&view) {
                continue;
            }
            let patient = patient_col.map(|c| row.fields[c].clone()).filter(|p| !p.is_empty());
            rows.push((path, labels, view, patient));
        }
        if rows.is_empty() {
            return Err(DatasetError::Empty(format!("{} (views: {:?})", csv.display(), spec.views)));
        }
        let paths = resolve_relative(csv, rows.iter().map(|r| r.0.clone()).collect());
        let samples = paths
            .into_iter()
            .zip(rows)
            .map(|(path, (_, labels, view, patient))| {
                let base = Sample::new(path);
                Sample {
                    target: Some(Target::Labels(labels)),
                    view,
                    patient: patient.or(base.patient.clone()),
                    ..base
                }
            })
            .collect();
        Ok(Self { samples })
    }

    /// A CSV with an image column and a class column (the N-class layout beside class
    /// folders): each sample gets its class name as `label` and, as [`Target::Class`], the
    /// index of that name among the file's distinct classes, sorted (as
    /// [`Dataset::from_class_folders`]); a blank class is an error naming the line.
    pub fn from_class_csv(csv: &Path, path_column: &str, class_column: &str) -> Result<Self, DatasetError> {
        let table = CsvTable::read(csv)?;
        let (path_col, class_col) = (require(&table, path_column)?, require(&table, class_column)?);
        let mut paths = Vec::with_capacity(table.rows.len());
        let mut names = Vec::with_capacity(table.rows.len());
        for row in &table.rows {
            paths.push(path_cell(&table, row, path_col)?);
            let name = &row.fields[class_col];
            if name.is_empty() {
                return Err(table.error(row.line, format!("no class in column `{class_column}`")));
            }
            names.push(name.clone());
        }
        if paths.is_empty() {
            return Err(DatasetError::Empty(csv.display().to_string()));
        }
        let mut classes = names.clone();
        classes.sort();
        classes.dedup();
        let samples = resolve_relative(csv, paths)
            .into_iter()
            .zip(names)
            .map(|(path, name)| {
                let index = classes.binary_search(&name).unwrap_or_default();
                Sample { label: Some(name), target: Some(Target::Class(index)), ..Sample::new(path) }
            })
            .collect();
        Ok(Self { samples })
    }

    /// Two folders matched by file stem (name without extension, folders searched
    /// recursively): inputs with their target images (`kind` [`TargetKind::Image`]) or masks
    /// ([`TargetKind::Mask`]). Any file without its counterpart is an error listing them;
    /// [`pair_folders`] gives the pairs and the unmatched files instead.
    pub fn from_paired_folders(
        inputs: &Path,
        targets: &Path,
        kind: TargetKind,
    ) -> Result<Self, DatasetError> {
        let pairing = pair_folders(inputs, targets)?;
        if !pairing.unmatched_inputs.is_empty() || !pairing.unmatched_targets.is_empty() {
            return Err(DatasetError::Unmatched {
                inputs: inputs.into(),
                targets: targets.into(),
                report: pairing.report(),
            });
        }
        Self::from_pairs(pairing.pairs, kind, &inputs.display().to_string())
    }

    /// A CSV of pairs: columns `input,target` (target images) or `image,mask` (masks), paths
    /// relative as in [`Dataset::from_sources`]. A missing file is an error naming its line.
    pub fn from_pair_csv(csv: &Path, kind: TargetKind) -> Result<Self, DatasetError> {
        let table = CsvTable::read(csv)?;
        let (a, b) = match kind {
            TargetKind::Image => ("input", "target"),
            TargetKind::Mask => ("image", "mask"),
            other => {
                let reason = format!("a pair CSV holds images or masks, not {other:?} targets");
                return Err(DatasetError::List { path: csv.into(), reason });
            }
        };
        let (ca, cb) = (require(&table, a)?, require(&table, b)?);
        let mut left = Vec::with_capacity(table.rows.len());
        let mut right = Vec::with_capacity(table.rows.len());
        for row in &table.rows {
            left.push(path_cell(&table, row, ca)?);
            right.push(path_cell(&table, row, cb)?);
        }
        let (left, right) = (resolve_relative(csv, left), resolve_relative(csv, right));
        for ((row, l), r) in table.rows.iter().zip(&left).zip(&right) {
            if let Some(missing) = [l, r].into_iter().find(|p| !p.exists()) {
                return Err(table.error(row.line, format!("{} does not exist", missing.display())));
            }
        }
        Self::from_pairs(left.into_iter().zip(right).collect(), kind, &csv.display().to_string())
    }

    fn from_pairs(
        pairs: Vec<(PathBuf, PathBuf)>,
        kind: TargetKind,
        source: &str,
    ) -> Result<Self, DatasetError> {
        if pairs.is_empty() {
            return Err(DatasetError::Empty(source.into()));
        }
        let samples = pairs
            .into_iter()
            .map(|(input, target)| {
                let target = match kind {
                    TargetKind::Mask => Target::Mask(target),
                    _ => Target::Image(target),
                };
                Sample { target: Some(target), ..Sample::new(input) }
            })
            .collect();
        Ok(Self { samples })
    }

    /// A CSV of nodules, `image,x,y,diameter_mm[,pixel_spacing]`: each image (rows of one image
    /// merge, in the order first met) gets a [`Target::Circles`] mask, one disc per row of
    /// `diameter_mm` centred on pixel (x, y) of the image. Pixel spacing (mm per pixel, one
    /// value or `row\column`) comes from the column, else from the DICOM file's PixelSpacing
    /// or ImagerPixelSpacing; a row with x, y and diameter blank is an image without nodule.
    /// Image sizes are read from the file headers here, so that the mask can be drawn at the
    /// image's resolution even when its pixels come from the decode cache.
    pub fn from_circle_csv(csv: &Path) -> Result<Self, DatasetError> {
        let table = CsvTable::read(csv)?;
        let image = require(&table, "image")?;
        let (cx, cy, cd) = (require(&table, "x")?, require(&table, "y")?, require(&table, "diameter_mm")?);
        let spacing_col = table.column("pixel_spacing");
        let raw: Vec<PathBuf> =
            table.rows.iter().map(|r| path_cell(&table, r, image)).collect::<Result<_, _>>()?;
        let paths = resolve_relative(csv, raw);
        let mut order: Vec<PathBuf> = Vec::new();
        let mut masks: HashMap<PathBuf, CircleMask> = HashMap::new();
        for (row, path) in table.rows.iter().zip(paths) {
            let cells = [cx, cy, cd].map(|c| row.fields[c].as_str());
            let mask = match masks.get_mut(&path) {
                Some(m) => m,
                None => {
                    let (width, height) =
                        image_size(&path).map_err(|reason| table.error(row.line, reason))?;
                    order.push(path.clone());
                    masks.entry(path.clone()).or_insert(CircleMask { width, height, circles: Vec::new() })
                }
            };
            if cells.iter().all(|c| c.is_empty()) {
                continue;
            }
            let mut values = [0f64; 3];
            for ((v, cell), name) in values.iter_mut().zip(cells).zip(["x", "y", "diameter_mm"]) {
                *v = cell.parse().ok().filter(|v: &f64| v.is_finite()).ok_or_else(|| {
                    table.error(row.line, format!("column `{name}`: `{cell}` is not a number"))
                })?;
            }
            if values[2] <= 0.0 {
                return Err(
                    table.error(row.line, format!("column `diameter_mm`: `{}` is not positive", cells[2]))
                );
            }
            let spacing = match spacing_col.map(|c| row.fields[c].as_str()).filter(|c| !c.is_empty()) {
                Some(cell) => parse_spacing(cell).ok_or_else(|| {
                    table.error(
                        row.line,
                        format!("column `pixel_spacing`: `{cell}` is not one or two positive numbers"),
                    )
                })?,
                None => dicom_spacing(&path).map_err(|reason| table.error(row.line, reason))?,
            };
            mask.circles.push(Circle { x: values[0], y: values[1], diameter_mm: values[2], spacing });
        }
        if order.is_empty() {
            return Err(DatasetError::Empty(csv.display().to_string()));
        }
        let samples = order
            .into_iter()
            .map(|path| {
                let mask = masks.remove(&path).unwrap_or_default();
                Sample { target: Some(Target::Circles(mask)), ..Sample::new(path) }
            })
            .collect();
        Ok(Self { samples })
    }

    /// The kind of target the dataset carries (that of its first sample), if any.
    pub fn target_kind(&self) -> Option<TargetKind> {
        self.samples.first()?.target.as_ref().map(Target::kind)
    }

    /// The files the targets are read from, as a dataset of the same length (a sample without
    /// a target file keeps its own path): what a decode cache of the targets is opened for.
    pub fn target_files(&self) -> Dataset {
        let samples = self
            .samples
            .iter()
            .map(|s| Sample::new(s.target.as_ref().and_then(Target::file).unwrap_or(&s.path).to_path_buf()))
            .collect();
        Dataset { samples }
    }

    /// Keeps the samples whose view `filter` accepts.
    pub fn filter_views(mut self, filter: ViewFilter) -> Self {
        self.samples.retain(|s| filter.accepts(&s.view));
        self
    }

    /// Distinct patients, sorted.
    pub fn patients(&self) -> Vec<String> {
        let mut p: Vec<String> = self.samples.iter().filter_map(|s| s.patient.clone()).collect();
        p.sort();
        p.dedup();
        p
    }
}

/// `0.143` or `0.143\0.139` (row, column spacing in mm), as DICOM writes PixelSpacing.
pub fn parse_spacing(cell: &str) -> Option<(f64, f64)> {
    let values: Vec<f64> =
        cell.split(['\\', ' ']).filter(|s| !s.is_empty()).map(|v| v.parse().ok()).collect::<Option<_>>()?;
    let ok = |v: f64| v.is_finite() && v > 0.0;
    match values.as_slice() {
        [v] if ok(*v) => Some((*v, *v)),
        [r, c] if ok(*r) && ok(*c) => Some((*r, *c)),
        _ => None,
    }
}

/// (width, height) of an image from its header.
fn image_size(path: &Path) -> Result<(u32, u32), String> {
    let kind = file_kind(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if kind == FileKind::Dicom {
        let obj = dicom_header(path)?;
        let get = |tag| obj.element(tag).ok().and_then(|e| e.to_int::<u32>().ok());
        use dicom_dictionary_std::tags;
        return match (get(tags::COLUMNS), get(tags::ROWS)) {
            (Some(w), Some(h)) if w > 0 && h > 0 => Ok((w, h)),
            _ => Err(format!("{}: no Rows and Columns in the DICOM header", path.display())),
        };
    }
    image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| e.to_string())
        .and_then(|r| r.into_dimensions().map_err(|e| e.to_string()))
        .map_err(|e| format!("{}: cannot read the image size: {e}", path.display()))
}

fn dicom_header(path: &Path) -> Result<dicom_object::DefaultDicomObject, String> {
    dicom_object::OpenFileOptions::new()
        .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| format!("{}: cannot read the DICOM header: {e}", path.display()))
}

/// PixelSpacing, else ImagerPixelSpacing, of a DICOM file; an error naming the file otherwise.
pub fn dicom_spacing(path: &Path) -> Result<(f64, f64), String> {
    use dicom_dictionary_std::tags;
    let none = || format!("{}: no pixel_spacing in the CSV and the file is not DICOM", path.display());
    if file_kind(path).map_err(|e| format!("{}: {e}", path.display()))? != FileKind::Dicom {
        return Err(none());
    }
    let obj = dicom_header(path)?;
    [tags::PIXEL_SPACING, tags::IMAGER_PIXEL_SPACING]
        .into_iter()
        .find_map(|tag| {
            let v = obj.element(tag).ok()?.to_multi_float64().ok()?;
            parse_spacing(&v.iter().map(f64::to_string).collect::<Vec<_>>().join("\\"))
        })
        .ok_or_else(|| {
            format!(
                "{}: no pixel_spacing in the CSV and no PixelSpacing or ImagerPixelSpacing in the file",
                path.display()
            )
        })
}

/// One nodule: centre in pixels of the image (x right, y down, pixel centres at integers),
/// diameter in mm, (row, column) spacing in mm per pixel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Circle {
    pub x: f64,
    pub y: f64,
    pub diameter_mm: f64,
    pub spacing: (f64, f64),
}

impl Circle {
    /// Whether the centre of pixel (px, py) lies in the disc (an ellipse in pixels when rows
    /// and columns are spaced differently).
    fn contains(&self, px: f64, py: f64) -> bool {
        let (rx, ry) = (self.diameter_mm / 2.0 / self.spacing.1, self.diameter_mm / 2.0 / self.spacing.0);
        let (u, v) = ((px - self.x) / rx, (py - self.y) / ry);
        u * u + v * v <= 1.0
    }
}

/// Discs on an image of `width x height` pixels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CircleMask {
    pub width: u32,
    pub height: u32,
    pub circles: Vec<Circle>,
}

impl CircleMask {
    /// The mask at the image's resolution: 1 in a disc, 0 elsewhere.
    pub fn draw(&self) -> Vec<f32> {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut out = vec![0f32; w * h];
        self.draw_into(&nearest_indices(h, h), &nearest_indices(w, w), &mut out);
        out
    }

    /// The mask at `oh x ow`: exactly [`Self::draw`] then [`resize_nearest`], without the
    /// full-resolution image.
    pub fn draw_resized(&self, oh: usize, ow: usize, out: &mut [f32]) {
        let (w, h) = (self.width as usize, self.height as usize);
        assert_eq!(out.len(), oh * ow, "{oh} x {ow} mask");
        self.draw_into(&nearest_indices(h, oh), &nearest_indices(w, ow), out);
    }

    fn draw_into(&self, rows: &[usize], cols: &[usize], out: &mut [f32]) {
        out.fill(0.0);
        if cols.is_empty() {
            return;
        }
        for (orow, &sy) in out.chunks_exact_mut(cols.len()).zip(rows) {
            for (o, &sx) in orow.iter_mut().zip(cols) {
                if self.circles.iter().any(|c| c.contains(sx as f64, sy as f64)) {
                    *o = 1.0;
                }
            }
        }
    }
}

/// For each of `output` indices, the source index whose pixel holds its centre (half-pixel
/// centres, PyTorch's `nearest-exact`), in exact integer arithmetic.
fn nearest_indices(input: usize, output: usize) -> Vec<usize> {
    (0..output).map(|i| (((2 * i + 1) * input) / (2 * output)).min(input.saturating_sub(1))).collect()
}

/// Nearest-neighbour resize of `src` (`h x w`) into `out` (`oh x ow`) with half-pixel centres
/// (PyTorch's `nearest-exact`): values are copied, never mixed, so a mask keeps its classes and
/// stays aligned with a bilinear resize of its image.
pub fn resize_nearest(src: &[f32], h: usize, w: usize, out: &mut [f32], oh: usize, ow: usize) {
    assert!(src.len() == h * w && out.len() == oh * ow, "resize {h} x {w} -> {oh} x {ow}");
    let (rows, cols) = (nearest_indices(h, oh), nearest_indices(w, ow));
    for (orow, &sy) in out.chunks_exact_mut(ow).zip(&rows) {
        let srow = &src[sy * w..][..w];
        for (o, &sx) in orow.iter_mut().zip(&cols) {
            *o = srow[sx];
        }
    }
}

/// Mask pixel values as class indices: a file holding only 0 and 255 (a binary mask saved as
/// an 8-bit image) becomes 0 and 1; any other file keeps its values.
pub fn mask_classes(pixels: &mut [f32]) {
    if pixels.contains(&255.0) && pixels.iter().all(|&v| v == 0.0 || v == 255.0) {
        pixels.iter_mut().for_each(|v| *v = if *v > 0.0 { 1.0 } else { 0.0 });
    }
}

/// Pairs of two folders, matched by file stem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pairing {
    /// (input, target), in the sorted order of the inputs.
    pub pairs: Vec<(PathBuf, PathBuf)>,
    pub unmatched_inputs: Vec<PathBuf>,
    pub unmatched_targets: Vec<PathBuf>,
}

impl Pairing {
    /// Which files have no counterpart (the first few of each side, and how many).
    pub fn report(&self) -> String {
        let list = |files: &[PathBuf]| {
            let shown: Vec<String> = files.iter().take(5).map(|p| p.display().to_string()).collect();
            let more = files.len().saturating_sub(5);
            let more = if more > 0 { format!(" and {more} more") } else { String::new() };
            format!("{}{more}", shown.join(", "))
        };
        let mut parts = Vec::new();
        if !self.unmatched_inputs.is_empty() {
            parts.push(format!(
                "{} input(s) without a target: {}",
                self.unmatched_inputs.len(),
                list(&self.unmatched_inputs)
            ));
        }
        if !self.unmatched_targets.is_empty() {
            parts.push(format!(
                "{} target(s) without an input: {}",
                self.unmatched_targets.len(),
                list(&self.unmatched_targets)
            ));
        }
        if parts.is_empty() { format!("{} pairs, all matched", self.pairs.len()) } else { parts.join("; ") }
    }
}

/// The images of `dir` (recursive) by stem; two files of one stem are an error naming both.
fn by_stem(dir: &Path) -> Result<BTreeMap<String, PathBuf>, DatasetError> {
    if !dir.is_dir() {
        return Err(io(dir)(std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder")));
    }
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    let mut out = BTreeMap::new();
    for path in files {
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(first) = out.insert(stem.clone(), path.clone()) {
            let reason = format!("two files of stem `{stem}`: {} and {}", first.display(), path.display());
            return Err(DatasetError::List { path: dir.into(), reason });
        }
    }
    Ok(out)
}

/// Matches the images of `inputs` and `targets` (folders, recursive) by file stem.
pub fn pair_folders(inputs: &Path, targets: &Path) -> Result<Pairing, DatasetError> {
    let (mut left, right) = (by_stem(inputs)?, by_stem(targets)?);
    let mut pairing = Pairing::default();
    for (stem, target) in right {
        match left.remove(&stem) {
            Some(input) => pairing.pairs.push((input, target)),
            None => pairing.unmatched_targets.push(target),
        }
    }
    pairing.unmatched_inputs = left.into_values().collect();
    pairing.pairs.sort();
    Ok(pairing)
}
