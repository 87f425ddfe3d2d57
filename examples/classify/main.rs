//! Fine-tune or linearly evaluate a CheSS encoder (or one from scratch, or ImageNet weights) on
//! labelled radiographs, and judge it: does pretraining help on my labels, and by how much?
//!
//!     classify train --train train.csv --val valid.csv --init chess.pth.tar --out runs/cls
//!     classify eval --model runs/cls/best.pth --data test.csv --out runs/cls/test
//!     classify predict --model runs/cls/best.pth scans/ --out preds.csv --cam cams/
//!     classify compare runs/chess runs/scratch --data test.csv
//!
//! Data: a CSV in CheXpert's layout (`Path`, `Sex`, `Age`, `Frontal/Lateral`, `AP/PA`, label
//! columns with 1 / 0 / -1 / blank) for multi-label, or a folder per class for N-class.
//! `train` writes `OUT/config.json`, `metrics.jsonl`, checkpoints (resume with `--resume auto`;
//! SIGTERM saves and stops), `val/` (metrics.json, predictions.csv, roc.png) after every
//! validation, `best.pth` + `best.json` (best validation mean AUROC), `curves.png`, and with
//! `--test`, `test/`.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use chess::data::{
    BlankPolicy, Dataset, DecodeCache, LabelPolicy, LabelSet, Loader, LoaderConfig, UncertainPolicy,
    ViewFilter,
};
use chess::metrics::{bootstrap_indices, paired_bootstrap_difference};
use chess::model::Arch;
use chess::tasks::classify::data::{SplitOptions, assemble, patient_count, write_file_list};
use chess::tasks::classify::{
    Classification, Classifier, ClassifyConfig, DataOptions, EvalConfig, Labelled, Layout, Mode, ModelCard,
    ReportOptions, balancing_weights, evaluate, light_augment, predict, write_report,
};
use chess::training::{Outcome, Run, RunArgs};
use chess::{Precision, SgdConfig};
use clap::{ArgAction, Args, Parser, Subcommand};
use serde::Serialize;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Chest X-ray classification on a CheSS encoder: train, eval, predict, compare")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fine-tune (or linearly evaluate) a classifier; the best model by validation mean AUROC.
    Train(Box<TrainArgs>),
    /// Metrics of a saved model on a labelled set: metrics.json, predictions.csv, roc.png.
    Eval(EvalArgs),
    /// Probabilities (and Grad-CAM overlays) for images without labels.
    Predict(PredictArgs),
    /// Mean AUROC of two runs' best models on the same images, and its paired bootstrap interval.
    Compare(CompareArgs),
}

/// How labels are read (train, eval and compare alike).
#[derive(Args, Debug, Clone, Serialize)]
struct LabelArgs {
    /// chexpert (the 14), chexpert5 (the competition's 5) or column names `A,B,...`; ignored
    /// for class folders (the folder names are the classes).
    #[arg(long, default_value = "chexpert")]
    labels: String,
    /// Uncertain (-1) labels: ones | zeros | ignore (masked out of the loss and the metrics).
    #[arg(long, default_value = "ones")]
    uncertain: String,
    /// Per-label exceptions: `Edema=ones,Cardiomegaly=zeros`.
    #[arg(long, default_value = "")]
    uncertain_per_label: String,
    /// Blank labels: zeros | ignore.
    #[arg(long, default_value = "zeros")]
    blank: String,
    /// all | frontal | pa | ap, from the CSV's view columns.
    #[arg(long, default_value = "all")]
    views: String,
    /// A regex whose first group (or whole match) in a file's path names the patient
    /// (e.g. `person\d+|NORMAL2-IM-\d+|IM-\d+`); otherwise `--patient-column`, CheXpert's `patientNNNNN`, or
    /// the DICOM PatientID.
    #[arg(long)]
    patient_id: Option<String>,
    /// A CSV column naming the patient.
    #[arg(long)]
    patient_column: Option<String>,
}

impl LabelArgs {
    fn options(&self, labels: Option<&[String]>) -> Result<DataOptions> {
        let policy = LabelPolicy {
            uncertain: self.uncertain.parse::<UncertainPolicy>()?,
            blank: self.blank.parse::<BlankPolicy>()?,
            overrides: Vec::new(),
        }
        .with_overrides(&self.uncertain_per_label)?;
        let labels = match labels {
            Some(names) => LabelSet::Columns(names.to_vec()),
            None => self.labels.parse::<LabelSet>()?,
        };
        let patient_regex = match &self.patient_id {
            Some(re) => Some(regex::Regex::new(re).with_context(|| format!("--patient-id {re}"))?),
            None => None,
        };
        Ok(DataOptions {
            labels: Some(labels),
            policy,
            views: self.views.parse::<ViewFilter>()?,
            patient_column: self.patient_column.clone(),
            patient_regex,
        })
    }
}

/// Bootstrap and subgroup settings of reports.
#[derive(Args, Debug, Clone, Serialize)]
struct ReportArgs {
    /// Bootstrap resamples of the 95 % intervals (0: none).
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    /// Seed of the bootstrap resamples.
    #[arg(long, default_value_t = 0)]
    bootstrap_seed: u64,
    /// CSV columns whose values form subgroups with their own metrics (`Sex,AP/PA`).
    #[arg(long, value_delimiter = ',')]
    by: Vec<String>,
}

impl ReportArgs {
    fn options(&self, source: &Path) -> ReportOptions {
        ReportOptions {
            resamples: self.bootstrap,
            seed: self.bootstrap_seed,
            level: 0.95,
            by: self.by.clone(),
            source: Some(source.to_path_buf()),
        }
    }
}

#[derive(Args, Debug, Serialize)]
struct TrainArgs {
    /// Training images: a label CSV (CheXpert layout) or a folder per class.
    #[arg(long)]
    train: PathBuf,
    /// Validation images (the best model is chosen here); without it, `--val-split` of the
    /// training patients.
    #[arg(long)]
    val: Option<PathBuf>,
    /// Test images, evaluated once with the best model after training.
    #[arg(long)]
    test: Option<PathBuf>,
    /// Share of the training patients held out for validation when `--val` is not given.
    #[arg(long, default_value_t = 0.1)]
    val_split: f64,
    /// Seed of the validation split (kept apart from `--seed`, so every fraction and seed
    /// validates on the same patients).
    #[arg(long, default_value_t = 0)]
    split_seed: u64,
    /// Train on this share of the training images, drawn as whole patients with `--seed`,
    /// keeping at least one positive of every label.
    #[arg(long, default_value_t = 1.0)]
    fraction: f64,
    #[command(flatten)]
    #[serde(flatten)]
    labels: LabelArgs,
    /// `scratch`, or weights to start from: a CheSS/MoCo checkpoint, torchvision ImageNet
    /// weights (conv1 summed to 1 channel), an extracted encoder, a safetensors file.
    #[arg(long, default_value = "scratch")]
    init: String,
    /// finetune (everything trains) | linear (frozen encoder in eval mode, the head alone).
    #[arg(long, default_value = "finetune")]
    mode: String,
    /// resnet18 | resnet34 | resnet50.
    #[arg(long, default_value = "resnet50")]
    arch: String,
    #[arg(long, default_value_t = 512)]
    image_size: i64,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[arg(long, default_value_t = 100)]
    epochs: u64,
    /// A budget of optimisation steps instead of `--epochs`: epochs = steps / batches per epoch,
    /// rounded up to whole epochs (so at least N steps; config.json records the epochs), which
    /// keeps runs on 1 % and on 100 % of the labels about equally long.
    #[arg(long, conflicts_with = "epochs")]
    steps: Option<u64>,
    /// SGD learning rate (default: 1e-3 fine-tuning, 30 linear).
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    #[arg(long, default_value_t = 0.0)]
    wd: f64,
    /// Validate (and step the plateau schedule) after every N epochs and after the last: for
    /// tiny training sets whose epochs are a step or two.
    #[arg(long, default_value_t = 1)]
    val_every: u64,
    /// ReduceLROnPlateau on the validation mean AUROC: factor and patience (validations).
    #[arg(long, default_value_t = 0.5)]
    plateau_factor: f64,
    #[arg(long, default_value_t = 10)]
    plateau_patience: i64,
    /// Weight positives by their rarity (`auto`: negatives/positives per label; N-class:
    /// balanced class weights), or `none`.
    #[arg(long, default_value = "none", value_parser = ["none", "auto"])]
    pos_weight: String,
    /// Light geometric augmentation of the training images (affine warp on half of them).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    augment: bool,
    /// Memory-mapped cache of decoded, resized images (decoded once, not per epoch).
    #[arg(long)]
    cache: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    report: ReportArgs,
    #[command(flatten)]
    #[serde(flatten)]
    run: RunArgs,
}

/// Where and how a saved model runs (eval, predict, compare).
#[derive(Args, Debug, Clone)]
struct Runtime {
    /// auto | cpu | cuda | cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// off | bf16 | fp16.
    #[arg(long, default_value = "off")]
    amp: String,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Decode threads (default: all cores).
    #[arg(long)]
    workers: Option<usize>,
}

impl Runtime {
    fn eval_config(&self, image_size: i64) -> Result<EvalConfig> {
        Ok(EvalConfig {
            image_size,
            batch_size: self.batch_size,
            workers: self
                .workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
            precision: self.amp.parse::<Precision>()?,
            channels_last: false,
            device: self.device.parse::<chess::DeviceSpec>()?.resolve()?,
            cache: None,
        })
    }
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// A model saved by `train` (`RUN/best.pth`, with `best.json` beside it).
    #[arg(long)]
    model: PathBuf,
    /// Labelled images: a label CSV or a folder per class.
    #[arg(long)]
    data: PathBuf,
    /// Output folder: metrics.json, predictions.csv, roc.png (confusion.png for classes).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    labels: LabelArgs,
    #[command(flatten)]
    report: ReportArgs,
    #[command(flatten)]
    runtime: Runtime,
}

#[derive(Args, Debug)]
struct PredictArgs {
    #[arg(long)]
    model: PathBuf,
    /// Images: files (DICOM, PNG, JPEG, TIFF), folders, or list files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// The predictions CSV: `Path` then one probability column per label.
    #[arg(long)]
    out: PathBuf,
    /// Write a Grad-CAM overlay per image here (for its top label, or `--cam-label`).
    #[arg(long)]
    cam: Option<PathBuf>,
    #[arg(long, requires = "cam")]
    cam_label: Option<String>,
    #[command(flatten)]
    runtime: Runtime,
}

#[derive(Args, Debug)]
struct CompareArgs {
    /// Run folder (or model file) A.
    run_a: PathBuf,
    /// Run folder (or model file) B.
    run_b: PathBuf,
    /// Labelled images both are judged on.
    #[arg(long)]
    data: PathBuf,
    /// Write the comparison here as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    labels: LabelArgs,
    #[command(flatten)]
    report: ReportArgs,
    #[command(flatten)]
    runtime: Runtime,
}

fn main() -> std::process::ExitCode {
    chess::device::keep_freed_host_memory();
    chess::exit_code(match Cli::parse().command {
        Command::Train(a) => train(*a),
        Command::Eval(a) => eval(a),
        Command::Predict(a) => predict_images(a),
        Command::Compare(a) => compare(a),
    })
}

fn train(args: TrainArgs) -> Result<()> {
    let (device, group) = args.run.device_and_group()?;
    let (rank, world) = group.as_ref().map_or((0, 1), |g| (g.rank(), g.world_size()));
    let mode: Mode = args.mode.parse().map_err(anyhow::Error::msg)?;
    let arch: Arch = args.arch.parse()?;
    let precision = args.run.precision()?;
    let opts = args.labels.options(None)?;
    let split = SplitOptions {
        val_split: args.val_split,
        split_seed: args.split_seed,
        fraction: args.fraction,
        fraction_seed: args.run.seed,
    };
    let sets = assemble(&args.train, args.val.as_deref(), &opts, split)?;
    let (train_set, val_set) = (&sets.train, &sets.val);
    if !args.batch_size.is_multiple_of(world) {
        bail!("--batch-size {} (the global batch) is not a multiple of the {world} ranks", args.batch_size);
    }
    let batch_size = args.batch_size.min(train_set.len() / world.max(1) * world).max(world);
    if mode == Mode::Finetune && batch_size / world < 2 {
        bail!(
            "a batch of {} image(s) per rank: fine-tuning needs 2 or more for batch norm (--batch-size {}, {} training images, {world} rank(s))",
            batch_size / world,
            args.batch_size,
            train_set.len()
        );
    }
    if !args.report.by.is_empty() {
        let source = args.val.as_deref().unwrap_or(&args.train);
        let table = chess::data::dataset::CsvTable::read(source)
            .map_err(|e| anyhow::anyhow!("--by reads columns of the validation CSV: {e}"))?;
        for column in &args.report.by {
            if table.column(column).is_none() {
                bail!(
                    "--by {column}: no such column in {} (columns: {})",
                    source.display(),
                    table.header.fields.join(", ")
                );
            }
        }
    }
    let batches = (train_set.len() / batch_size) as u64;
    if batches == 0 {
        bail!("{} training images: fewer than one batch of {batch_size}", train_set.len());
    }
    let epochs = args.steps.map_or(args.epochs, |s| s.div_ceil(batches));
    let mut run =
        Run::new(args.run.out.clone(), args.run.run_config(epochs, batch_size), group.clone(), device)?;
    let out = args.run.out.clone();
    if run.is_main() {
        write_file_list(&out.join("train_files.csv"), train_set, &sets.train_groups)?;
        write_file_list(&out.join("val_files.csv"), val_set, &sets.val_groups)?;
    }
    let workers = args.run.workers();
    let cache = match &args.cache {
        Some(p) => Some(Arc::new(DecodeCache::open(p, &train_set.dataset, args.image_size)?)),
        None => None,
    };
    let loader_cfg = LoaderConfig {
        image_size: args.image_size,
        batch_size: batch_size / world,
        workers,
        prefetch: 4,
        seed: args.run.seed,
        shuffle: true,
        drop_last: true,
    };
    let mut loader = Loader::new(Arc::new(train_set.dataset.clone()), loader_cfg).with_shard(rank, world);
    if let Layout::MultiLabel { mapping, .. } = &train_set.layout {
        loader = loader.with_labels(mapping.clone());
    }
    if args.augment {
        loader = loader.with_joint_augment(light_augment());
    }
    if let Some(c) = &cache {
        loader = loader.with_cache(c.clone());
    }
    assert_eq!(batches, loader.batches_per_epoch() as u64);

    tch::manual_seed(chess::training::step_seed(args.run.seed, u64::MAX));
    let names = train_set.layout.names().to_vec();
    let model = Classifier::new(arch, names.len() as i64, train_set.layout.is_multi_label(), device);
    if args.init != "scratch" {
        let report = model.init_from(Path::new(&args.init))?;
        if run.is_main() {
            eprintln!("init {}: {report}", args.init);
        }
    } else if mode == Mode::Linear && run.is_main() {
        eprintln!("warning: --mode linear from scratch trains a head on random features");
    }
    let defaults = mode.default_sgd();
    let sgd =
        SgdConfig { lr: args.lr.unwrap_or(defaults.lr), momentum: args.momentum, weight_decay: args.wd };
    let balance = (args.pos_weight == "auto").then(|| balancing_weights(train_set));
    let eval_cfg = EvalConfig {
        image_size: args.image_size,
        batch_size: (batch_size / world).max(16),
        workers,
        precision,
        channels_last: args.run.channels_last,
        device,
        cache: None,
    };
    let card = ModelCard {
        arch: arch.name().to_string(),
        labels: names.clone(),
        multi_label: train_set.layout.is_multi_label(),
        image_size: args.image_size,
        thresholds: None,
        epoch: None,
        val_mean_auroc: None,
        mode: mode.name().into(),
        init: args.init.clone(),
    };
    let config = ClassifyConfig {
        mode,
        sgd,
        plateau_factor: args.plateau_factor,
        plateau_patience: args.plateau_patience,
        balance: balance.clone(),
        precision,
        channels_last: args.run.channels_last,
        eval: eval_cfg.clone(),
        report: args.report.options(args.val.as_deref().unwrap_or(&args.train)),
        out: out.clone(),
        is_main: run.is_main(),
        card,
        val_every: args.val_every,
        epochs,
    };
    let mut task = Classification::new(model, val_set, config).map_err(anyhow::Error::from_boxed)?;
    run.resume(&mut task, batches)?;
    if let Some(g) = &group {
        task = task.with_data_parallel(g.clone()).map_err(anyhow::Error::from_boxed)?;
    }
    let extra = json!({
        "labels": names,
        "layout": if train_set.layout.is_multi_label() { "multi-label" } else { "classes" },
        "train_images": train_set.len(),
        "train_patients": patient_count(&sets.train_groups, &(0..sets.train_groups.len()).collect::<Vec<_>>()),
        "train_pool_images": sets.train_pool,
        "val_images": val_set.len(),
        "train_positives": train_set.positives(),
        "val_positives": val_set.positives(),
        "balance_weights": balance,
        "epochs": epochs,
        "sgd": {"lr": sgd.lr, "momentum": sgd.momentum, "weight_decay": sgd.weight_decay},
        "recipe": "CheSS classification (Cho et al., 2023)",
    });
    run.write_config(serde_json::to_value(&args)?, extra)?;
    if run.is_main() {
        eprintln!(
            "classify {} {} ({}) on {} training images ({} of {} at --fraction {}), {} validation; {} outputs, {batches} batches of {batch_size}, {} px, device {device:?}, amp {}",
            mode.name(),
            args.arch,
            if args.init == "scratch" { "scratch".to_string() } else { format!("init {}", args.init) },
            train_set.len(),
            train_set.len(),
            sets.train_pool,
            args.fraction,
            val_set.len(),
            names.len(),
            args.image_size,
            args.run.amp
        );
    }
    let outcome = run.fit(&mut task, batches, |epoch, start| loader.epoch(epoch, start as usize))?;
    let finished = matches!(outcome, Outcome::Finished | Outcome::NothingToDo);
    if let (Some(test), true, true) = (&args.test, run.is_main(), finished) {
        let best = out.join("best.pth");
        if !best.exists() {
            bail!("no best model in {} (no validation had a defined mean AUROC)", out.display());
        }
        let (model, card) = Classifier::load(&best, device)?;
        let opts =
            args.labels.options(Some(&card.labels).filter(|_| card.multi_label).map(|l| l.as_slice()))?;
        let data = Labelled::read(test, &opts, (!card.multi_label).then_some(card.labels.as_slice()))?;
        fits(&card, &data, test)?;
        let report = args.report.options(test);
        let dir = out.join("test");
        let eval = judge(&model, &card, &data, &eval_cfg, &report, &dir)?;
        println!("test ({} images), best model of epoch {}:", data.len(), card.epoch.unwrap_or(0));
        for line in chess::tasks::classify::evaluate::summary_lines(&eval) {
            println!("{line}");
        }
    }
    if run.is_main() && finished {
        match task.best() {
            Some((epoch, auroc)) => println!(
                "best validation mean AUROC {auroc:.4} at epoch {epoch}: {}",
                out.join("best.pth").display()
            ),
            None => println!("no validation mean AUROC was defined; no best model"),
        }
    }
    Ok(())
}

/// Predicts `data`, judges it with the card's thresholds and writes the report to `dir`.
fn judge(
    model: &Classifier,
    card: &ModelCard,
    data: &Labelled,
    cfg: &EvalConfig,
    report: &ReportOptions,
    dir: &Path,
) -> Result<chess::tasks::classify::Evaluation> {
    let pred = predict(model, &data.dataset, cfg).map_err(anyhow::Error::from_boxed)?;
    for s in &pred.skipped {
        eprintln!("skipped {s}");
    }
    let thresholds = card.thresholds.clone();
    let eval = evaluate(data, &pred, thresholds.as_deref(), report).map_err(anyhow::Error::from_boxed)?;
    for w in &eval.warnings {
        eprintln!("warning: {w}");
    }
    write_report(dir, data, &pred, &eval).map_err(anyhow::Error::from_boxed)?;
    Ok(eval)
}

/// A saved model and the labelled set to judge it on, read with its own labels.
fn model_and_data(
    model: &Path,
    data: &Path,
    labels: &LabelArgs,
    device: tch::Device,
) -> Result<(Classifier, ModelCard, Labelled)> {
    let (classifier, card) = Classifier::load(model, device)?;
    let opts = labels.options(card.multi_label.then_some(card.labels.as_slice()))?;
    let set = Labelled::read(data, &opts, (!card.multi_label).then_some(card.labels.as_slice()))?;
    fits(&card, &set, data)?;
    Ok((classifier, card, set))
}

/// A set judged by a model must have its kind of targets: label CSV for a multi-label model,
/// class folders for an N-class one.
fn fits(card: &ModelCard, set: &Labelled, data: &Path) -> Result<()> {
    if set.layout.is_multi_label() != card.multi_label {
        let (model, data_kind) =
            if card.multi_label { ("multi-label", "class folders") } else { ("N-class", "a label CSV") };
        bail!("{}: {data_kind}, but the model is {model} ({})", data.display(), card.labels.join(", "));
    }
    Ok(())
}

fn eval(args: EvalArgs) -> Result<()> {
    let cfg0 = args.runtime.eval_config(0)?;
    let (model, card, data) = model_and_data(&args.model, &args.data, &args.labels, cfg0.device)?;
    let cfg = EvalConfig { image_size: card.image_size, ..cfg0 };
    let eval = judge(&model, &card, &data, &cfg, &args.report.options(&args.data), &args.out)?;
    println!("{} ({} images):", args.data.display(), data.len());
    for line in chess::tasks::classify::evaluate::summary_lines(&eval) {
        println!("{line}");
    }
    println!("metrics, predictions and plots: {}", args.out.display());
    Ok(())
}

/// `RUN/best.pth` for a run folder, the path itself for a model file.
fn model_path(p: &Path) -> PathBuf {
    if p.is_dir() { p.join("best.pth") } else { p.to_path_buf() }
}

fn compare(args: CompareArgs) -> Result<()> {
    let cfg0 = args.runtime.eval_config(0)?;
    let (path_a, path_b) = (model_path(&args.run_a), model_path(&args.run_b));
    let (model_a, card_a, data) = model_and_data(&path_a, &args.data, &args.labels, cfg0.device)?;
    let (model_b, card_b) = Classifier::load(&path_b, cfg0.device)?;
    if card_a.labels != card_b.labels || card_a.multi_label != card_b.multi_label {
        bail!("{} and {} predict different labels", path_a.display(), path_b.display());
    }
    let pa = predict(&model_a, &data.dataset, &EvalConfig { image_size: card_a.image_size, ..cfg0.clone() })
        .map_err(anyhow::Error::from_boxed)?;
    let pb = predict(&model_b, &data.dataset, &EvalConfig { image_size: card_b.image_size, ..cfg0 })
        .map_err(anyhow::Error::from_boxed)?;
    if pa.rows != pb.rows {
        bail!("the two models read different images of {}", args.data.display());
    }
    let targets = data.target_rows();
    let truth: Vec<Vec<bool>> =
        pa.rows.iter().map(|&i| targets[i].0.iter().map(|&v| v > 0.5).collect()).collect();
    let mask: Vec<Vec<bool>> =
        pa.rows.iter().map(|&i| targets[i].1.iter().map(|&v| v > 0.5).collect()).collect();
    if pa.rows.is_empty() {
        bail!("no image of {} could be read", args.data.display());
    }
    if args.report.bootstrap == 0 {
        bail!("compare needs bootstrap resamples for its intervals (--bootstrap 1000)");
    }
    let indices = bootstrap_indices(pa.rows.len(), args.report.bootstrap, args.report.bootstrap_seed);
    let diff = paired_bootstrap_difference(&pa.probs, &pb.probs, &truth, &mask, &indices, 0.95);
    let opts = ReportOptions { resamples: 0, ..ReportOptions::default() };
    let ea = evaluate(&data, &pa, None, &opts).map_err(anyhow::Error::from_boxed)?;
    let eb = evaluate(&data, &pb, None, &opts).map_err(anyhow::Error::from_boxed)?;
    let fmt = |v: Option<f64>| v.map_or("   n/a".to_string(), |v| format!("{v:.4}"));
    println!(
        "A = {}\nB = {}\n{} images of {}",
        path_a.display(),
        path_b.display(),
        pa.rows.len(),
        args.data.display()
    );
    let width = card_a.labels.iter().map(String::len).max().unwrap_or(4).max(8);
    println!("  {:<width$}  {:>7}  {:>7}  {:>8}  95 % paired bootstrap interval", "label", "A", "B", "A - B");
    let mut per_label = serde_json::Map::new();
    for (l, name) in card_a.labels.iter().enumerate() {
        let (d, ci) = match &diff.per_label[l] {
            Some((d, i)) => (format!("{d:+.4}"), format!("[{:+.4}, {:+.4}]", i.low, i.high)),
            None => ("n/a".into(), String::new()),
        };
        println!("  {name:<width$}  {:>7}  {:>7}  {d:>8}  {ci}", fmt(ea.auroc[l]), fmt(eb.auroc[l]));
        per_label.insert(
            name.clone(),
            json!({"a": ea.auroc[l], "b": eb.auroc[l], "difference": diff.per_label[l].as_ref().map(|x| x.0),
                   "ci": diff.per_label[l].as_ref().map(|x| [x.1.low, x.1.high])}),
        );
    }
    let (md, mci) = match &diff.mean {
        Some((d, i)) => (format!("{d:+.4}"), format!("[{:+.4}, {:+.4}]", i.low, i.high)),
        None => ("n/a".into(), String::new()),
    };
    println!("  {:<width$}  {:>7}  {:>7}  {md:>8}  {mci}", "mean", fmt(ea.mean_auroc), fmt(eb.mean_auroc));
    if let Some(out) = &args.out {
        let j = json!({
            "a": path_a, "b": path_b, "data": args.data, "n": pa.rows.len(),
            "labels": card_a.labels, "per_label": per_label,
            "mean_auroc": {"a": ea.mean_auroc, "b": eb.mean_auroc, "difference": diff.mean.as_ref().map(|x| x.0),
                           "ci": diff.mean.as_ref().map(|x| [x.1.low, x.1.high])},
            "bootstrap": {"resamples": indices.len(), "seed": args.report.bootstrap_seed, "level": 0.95, "paired": true},
        });
        chess::atomic::write(out, serde_json::to_string_pretty(&j)?.as_bytes())
            .with_context(|| out.display().to_string())?;
    }
    Ok(())
}

fn predict_images(args: PredictArgs) -> Result<()> {
    let cfg0 = args.runtime.eval_config(0)?;
    let (model, card) = Classifier::load(&args.model, cfg0.device)?;
    let cfg = EvalConfig { image_size: card.image_size, ..cfg0 };
    let dataset = Dataset::from_sources(&args.images)?;
    let pred = predict(&model, &dataset, &cfg).map_err(anyhow::Error::from_boxed)?;
    for s in &pred.skipped {
        eprintln!("skipped {s}");
    }
    chess::tasks::classify::evaluate::write_predictions(&args.out, &dataset, &pred, &card.labels)
        .map_err(anyhow::Error::from_boxed)?;
    println!("{} images: {}", pred.rows.len(), args.out.display());
    let Some(dir) = &args.cam else { return Ok(()) };
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let asked = match &args.cam_label {
        Some(l) => Some(
            card.labels
                .iter()
                .position(|c| c.eq_ignore_ascii_case(l))
                .with_context(|| format!("--cam-label {l}: not one of {}", card.labels.join(", ")))?,
        ),
        None => None,
    };
    let loader_cfg = LoaderConfig {
        image_size: card.image_size,
        batch_size: 8,
        workers: cfg.workers,
        prefetch: 2,
        seed: 0,
        shuffle: false,
        drop_last: false,
    };
    let loader = Loader::new(Arc::new(dataset.clone()), loader_cfg);
    let row_of: std::collections::HashMap<usize, usize> =
        pred.rows.iter().enumerate().map(|(r, &i)| (i, r)).collect();
    let mut written = std::collections::HashSet::new();
    for batch in loader.epoch(0, 0) {
        let good = batch.samples.len() as i64;
        if good == 0 {
            continue;
        }
        let grey = batch.images.narrow(0, 0, good);
        let classes: Vec<i64> = batch
            .samples
            .iter()
            .map(|i| asked.unwrap_or_else(|| row_of.get(i).map_or(0, |&r| argmax(&pred.probs[r]))) as i64)
            .collect();
        let x = chess::data::normalize(&grey).to_device(cfg.device);
        let cams = chess::model::gradcam::grad_cam(&model.net, &x, &classes).to_device(tch::Device::Cpu);
        let size = card.image_size as u32;
        for (j, &idx) in batch.samples.iter().enumerate() {
            if !written.insert(idx) {
                continue;
            }
            let g = Vec::<f32>::try_from(grey.get(j as i64).flatten(0, -1))?;
            let h = Vec::<f32>::try_from(cams.get(j as i64).flatten(0, -1).to_kind(tch::Kind::Float))?;
            let overlay = chess::plot::heatmap_overlay(&g, size, size, &h, 0.4);
            let stem = dataset.samples[idx]
                .path
                .file_stem()
                .map_or("image".into(), |s| s.to_string_lossy().into_owned());
            let label = sanitize(&card.labels[classes[j] as usize]);
            let path = dir.join(format!("{stem}_cam_{label}.png"));
            overlay.save(&path).with_context(|| path.display().to_string())?;
        }
    }
    println!("Grad-CAM overlays: {}", dir.display());
    Ok(())
}

fn argmax(v: &[f64]) -> usize {
    v.iter().enumerate().fold(0, |best, (i, &x)| if x > v[best] { i } else { best })
}

/// A label as part of a file name.
fn sanitize(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}
