//! What a classifier trains and is judged on: label CSVs or class folders read into one
//! [`Labelled`] set, patients named for splits, the validation split and the label fraction.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;

use crate::data::{
    Dataset, DatasetError, FileKind, LabelCsv, LabelMapping, LabelPolicy, LabelSet, PolicyError, Rng, Target,
    ViewFilter, file_kind,
};

/// Why the data of a classification run could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyDataError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("{}: {reason}", path.display())]
    Layout { path: PathBuf, reason: String },
    #[error("{0}")]
    Split(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// Multi-label (a label CSV: sigmoid per label) or N-class (class folders: softmax).
#[derive(Debug, Clone, PartialEq)]
pub enum Layout {
    MultiLabel { labels: Vec<String>, mapping: LabelMapping },
    Classes(Vec<String>),
}

impl Layout {
    /// Label names (multi-label) or class names (N-class): the model's outputs, in order.
    pub fn names(&self) -> &[String] {
        match self {
            Self::MultiLabel { labels, .. } => labels,
            Self::Classes(c) => c,
        }
    }

    pub fn is_multi_label(&self) -> bool {
        matches!(self, Self::MultiLabel { .. })
    }

    /// (targets, mask) of a sample, one value per output: the label policy's values, or the
    /// one-hot class with every entry counted. `None` for a sample without a usable target.
    pub fn target_row(&self, target: Option<&Target>) -> Option<(Vec<f32>, Vec<f32>)> {
        match (self, target?) {
            (Self::MultiLabel { mapping, labels }, Target::Labels(values))
                if values.len() == labels.len() =>
            {
                Some(mapping.apply(values))
            }
            (Self::Classes(c), Target::Class(i)) if *i < c.len() => {
                let mut t = vec![0f32; c.len()];
                t[*i] = 1.0;
                Some((t, vec![1.0; c.len()]))
            }
            _ => None,
        }
    }
}

/// How label files are read and patients named.
#[derive(Debug, Clone, Default)]
pub struct DataOptions {
    pub labels: Option<LabelSet>,
    pub policy: LabelPolicy,
    pub views: ViewFilter,
    /// A CSV column naming the patient.
    pub patient_column: Option<String>,
    /// A pattern whose first group (or whole match) in a file's path names its patient.
    pub patient_regex: Option<Regex>,
}

/// A dataset with its layout: every sample has a target of that layout.
#[derive(Debug, Clone)]
pub struct Labelled {
    pub dataset: Dataset,
    pub layout: Layout,
}

impl Labelled {
    /// A folder of class folders (N-class) or a label CSV (CheXpert's layout, multi-label).
    /// `classes`: the training set's classes, which a validation or test folder must use (its
    /// own folders may be fewer).
    pub fn read(
        source: &Path,
        opts: &DataOptions,
        classes: Option<&[String]>,
    ) -> Result<Self, ClassifyDataError> {
        let mut labelled = if source.is_dir() {
            let mut dataset = Dataset::from_class_folders(source)?;
            let own = dataset.classes();
            let names: Vec<String> = classes.map_or_else(|| own.clone(), <[String]>::to_vec);
            for s in &mut dataset.samples {
                let name = s.label.as_deref().unwrap_or_default();
                let i = names.iter().position(|c| c == name).ok_or_else(|| ClassifyDataError::Layout {
                    path: source.to_path_buf(),
                    reason: format!(
                        "class folder `{name}` is not one of the training classes ({})",
                        names.join(", ")
                    ),
                })?;
                s.target = Some(Target::Class(i));
            }
            if names.len() < 2 {
                return Err(ClassifyDataError::Layout {
                    path: source.to_path_buf(),
                    reason: format!(
                        "{} class folder(s) with images; a classifier needs 2 or more",
                        names.len()
                    ),
                });
            }
            Self { dataset, layout: Layout::Classes(names) }
        } else {
            let spec = LabelCsv {
                labels: opts.labels.clone().unwrap_or(LabelSet::CheXpert),
                views: opts.views,
                patient_column: opts.patient_column.clone(),
                ..LabelCsv::default()
            };
            let dataset = Dataset::from_label_csv(source, &spec)?;
            let labels = spec.labels.names();
            let mapping = opts.policy.for_labels(&labels)?;
            Self { dataset, layout: Layout::MultiLabel { labels, mapping } }
        };
        if let Some(re) = &opts.patient_regex {
            for s in &mut labelled.dataset.samples {
                if let Some(p) = patient_by_regex(re, &s.path) {
                    s.patient = Some(p);
                }
            }
        }
        Ok(labelled)
    }

    pub fn len(&self) -> usize {
        self.dataset.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dataset.is_empty()
    }

    /// The samples at `indices`, in that order, with the same layout.
    pub fn subset(&self, indices: &[usize]) -> Self {
        let samples = indices.iter().map(|&i| self.dataset.samples[i].clone()).collect();
        Self { dataset: Dataset { samples }, layout: self.layout.clone() }
    }

    /// (targets, mask) rows of every sample.
    pub fn target_rows(&self) -> Vec<(Vec<f32>, Vec<f32>)> {
        let n = self.layout.names().len();
        self.dataset
            .samples
            .iter()
            .map(|s| {
                self.layout.target_row(s.target.as_ref()).unwrap_or_else(|| (vec![0.0; n], vec![0.0; n]))
            })
            .collect()
    }

    /// Counted positives of each output.
    pub fn positives(&self) -> Vec<usize> {
        let mut counts = vec![0; self.layout.names().len()];
        for (t, m) in self.target_rows() {
            for (c, (t, m)) in counts.iter_mut().zip(t.iter().zip(&m)) {
                *c += usize::from(*t > 0.5 && *m > 0.5);
            }
        }
        counts
    }

    /// Counted negatives of each output.
    pub fn negatives(&self) -> Vec<usize> {
        let mut counts = vec![0; self.layout.names().len()];
        for (t, m) in self.target_rows() {
            for (c, (t, m)) in counts.iter_mut().zip(t.iter().zip(&m)) {
                *c += usize::from(*t < 0.5 && *m > 0.5);
            }
        }
        counts
    }

    /// The patient of each sample: the CSV column, the regex, CheXpert's `patientNNNNN` folder,
    /// else the DICOM PatientID; a file naming none is its own patient.
    pub fn groups(&self) -> Vec<String> {
        self.dataset
            .samples
            .iter()
            .map(|s| {
                s.patient
                    .clone()
                    .or_else(|| dicom_patient(&s.path))
                    .unwrap_or_else(|| format!("file:{}", s.path.display()))
            })
            .collect()
    }
}

/// The first capture group of `re` in `path` (the whole match without groups).
pub fn patient_by_regex(re: &Regex, path: &Path) -> Option<String> {
    let text = path.to_string_lossy();
    let caps = re.captures(&text)?;
    caps.get(1).or_else(|| caps.get(0)).map(|m| m.as_str().to_string())
}

/// PatientID of a DICOM file, from its header alone.
fn dicom_patient(path: &Path) -> Option<String> {
    if file_kind(path).ok()? != FileKind::Dicom {
        return None;
    }
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
        .open_file(path)
        .ok()?;
    let id = obj.element(dicom_dictionary_std::tags::PATIENT_ID).ok()?.to_str().ok()?.trim().to_string();
    (!id.is_empty()).then(|| format!("dicom:{id}"))
}

/// Patients in a seeded order: (sorted names shuffled by `seed`), with their sample indices.
fn shuffled_groups(groups: &[String], seed: u64) -> Vec<Vec<usize>> {
    let mut by: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, g) in groups.iter().enumerate() {
        by.entry(g).or_default().push(i);
    }
    let mut out: Vec<Vec<usize>> = by.into_values().collect();
    let mut rng = Rng::new(seed);
    for i in (1..out.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        out.swap(i, j);
    }
    out
}

/// (train, validation) indices: `fraction` of the patients (at least one) drawn with `seed`
/// go to validation, whole; both sides sorted.
pub fn split_by_patient(
    groups: &[String],
    fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>), ClassifyDataError> {
    let shuffled = shuffled_groups(groups, seed);
    if shuffled.len() < 2 {
        return Err(ClassifyDataError::Split(format!(
            "{} patient(s): a validation split needs 2 or more (give --val)",
            shuffled.len()
        )));
    }
    let n_val = ((shuffled.len() as f64 * fraction).round() as usize).clamp(1, shuffled.len() - 1);
    let mut val: Vec<usize> = shuffled[..n_val].iter().flatten().copied().collect();
    let mut train: Vec<usize> = shuffled[n_val..].iter().flatten().copied().collect();
    val.sort_unstable();
    train.sort_unstable();
    Ok((train, val))
}

/// A seeded subset of about `fraction` of the images, drawn as whole patients, with at least one
/// counted positive of every output that has one in the full set (an N-class set: one image of
/// every class). Sorted indices.
pub fn fraction_subset(data: &Labelled, groups: &[String], fraction: f64, seed: u64) -> Vec<usize> {
    if fraction >= 1.0 {
        return (0..data.len()).collect();
    }
    let want = ((data.len() as f64 * fraction).ceil() as usize).max(1);
    let rows = data.target_rows();
    let positive = |i: usize, l: usize| rows[i].0[l] > 0.5 && rows[i].1[l] > 0.5;
    let shuffled = shuffled_groups(groups, seed ^ 0x5EED_F7AC);
    let mut taken = vec![false; shuffled.len()];
    let mut chosen = Vec::new();
    for (g, members) in shuffled.iter().enumerate() {
        if chosen.len() >= want {
            break;
        }
        taken[g] = true;
        chosen.extend(members);
    }
    for l in 0..data.layout.names().len() {
        if chosen.iter().any(|&i| positive(i, l)) {
            continue;
        }
        if let Some(g) =
            (0..shuffled.len()).find(|&g| !taken[g] && shuffled[g].iter().any(|&i| positive(i, l)))
        {
            taken[g] = true;
            chosen.extend(&shuffled[g]);
        }
    }
    chosen.sort_unstable();
    chosen
}

/// `Path,patient` of the chosen samples, so a run records exactly what it trained on.
pub fn write_file_list(path: &Path, data: &Labelled, groups: &[String]) -> Result<(), ClassifyDataError> {
    let mut text = String::from("Path,patient\n");
    for (s, g) in data.dataset.samples.iter().zip(groups) {
        text.push_str(&csv_field(&s.path.to_string_lossy()));
        text.push(',');
        text.push_str(&csv_field(g));
        text.push('\n');
    }
    crate::atomic::write(path, text.as_bytes())
        .map_err(|source| ClassifyDataError::Io { path: path.to_path_buf(), source })
}

pub use crate::data::dataset::csv_field;

/// Distinct patients among `indices`.
pub fn patient_count(groups: &[String], indices: &[usize]) -> usize {
    indices.iter().map(|&i| groups[i].as_str()).collect::<BTreeSet<_>>().len()
}

/// The sets of a training run: training (after the label fraction), validation (given, or a
/// patient split of the training file drawn with `split_seed`, the same for every fraction)
/// and their patients.
#[derive(Debug, Clone)]
pub struct Assembled {
    pub train: Labelled,
    pub val: Labelled,
    pub train_groups: Vec<String>,
    pub val_groups: Vec<String>,
    /// Images of the training side before the fraction was drawn.
    pub train_pool: usize,
}

/// How the sets are drawn.
#[derive(Debug, Clone, Copy)]
pub struct SplitOptions {
    pub val_split: f64,
    pub split_seed: u64,
    pub fraction: f64,
    pub fraction_seed: u64,
}

pub fn assemble(
    train: &Path,
    val: Option<&Path>,
    opts: &DataOptions,
    split: SplitOptions,
) -> Result<Assembled, ClassifyDataError> {
    if !(split.fraction > 0.0 && split.fraction <= 1.0) {
        return Err(ClassifyDataError::Split(format!("--fraction {}: must be in (0, 1]", split.fraction)));
    }
    let full = Labelled::read(train, opts, None)?;
    let groups = full.groups();
    let (pool, val, val_groups) = match val {
        Some(v) => {
            let classes = match &full.layout {
                Layout::Classes(c) => Some(c.as_slice()),
                Layout::MultiLabel { .. } => None,
            };
            let val = Labelled::read(v, opts, classes)?;
            if val.layout.names() != full.layout.names()
                || val.layout.is_multi_label() != full.layout.is_multi_label()
            {
                return Err(ClassifyDataError::Layout {
                    path: v.to_path_buf(),
                    reason: format!(
                        "its labels ({}) are not the training set's ({}): give both as label CSVs or both as class folders",
                        val.layout.names().join(", "),
                        full.layout.names().join(", ")
                    ),
                });
            }
            let vg = val.groups();
            ((0..full.len()).collect::<Vec<_>>(), val, vg)
        }
        None => {
            let (t, v) = split_by_patient(&groups, split.val_split, split.split_seed)?;
            let vg = v.iter().map(|&i| groups[i].clone()).collect();
            (t, full.subset(&v), vg)
        }
    };
    let pool_data = full.subset(&pool);
    let pool_groups: Vec<String> = pool.iter().map(|&i| groups[i].clone()).collect();
    let chosen = fraction_subset(&pool_data, &pool_groups, split.fraction, split.fraction_seed);
    Ok(Assembled {
        train: pool_data.subset(&chosen),
        train_groups: chosen.iter().map(|&i| pool_groups[i].clone()).collect(),
        val,
        val_groups,
        train_pool: pool.len(),
    })
}
