//! `classify train` from its flags to its outputs: the sets (fraction, patient split), the
//! loader, the classifier and its initial weights, the task, the run, and the test report of
//! the best model.
use std::path::Path;
use std::sync::Arc;

use serde_json::json;

use super::args::TrainArgs;
use super::data::{SplitOptions, assemble, patient_count, write_file_list};
use super::evaluate::{EvalConfig, Evaluation, judge, load_labelled};
use super::{
    Classification, Classifier, ClassifyConfig, Layout, Mode, ModelCard, balancing_weights, light_augment,
};
use crate::SgdConfig;
use crate::data::{DecodeCache, Loader, LoaderConfig};
use crate::model::Arch;
use crate::tasks::{rank_and_world, refuse};
use crate::training::{Outcome, Run, TaskError, step_seed};

/// How a training run ended.
#[derive(Debug)]
pub struct Trained {
    /// Every epoch ran (false: stopped by a signal or `--max-steps`, resumable).
    pub finished: bool,
    /// This process is rank 0 (or the only one): the one that reports.
    pub is_main: bool,
    /// (epoch, validation mean AUROC) of `best.pth`.
    pub best: Option<(u64, f64)>,
    /// The best model on `--test`, judged once after training (main rank).
    pub test: Option<TestResult>,
}

#[derive(Debug)]
pub struct TestResult {
    pub images: usize,
    pub epoch: u64,
    pub evaluation: Evaluation,
}

/// Trains as the flags say; `best.pth`, reports and curves land in `--out`.
pub fn train(args: &TrainArgs) -> Result<Trained, TaskError> {
    let (device, group) = args.run.device_and_group()?;
    let (rank, world) = rank_and_world(&group);
    let mode: Mode = args.mode.parse()?;
    let arch: Arch = args.arch.parse()?;
    let speed = args.run.speed(device)?;
    let (precision, channels_last) = (speed.precision.value, speed.channels_last.value);
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
        refuse!("--batch-size {} (the global batch) is not a multiple of the {world} ranks", args.batch_size);
    }
    let batch_size = args.batch_size.min(train_set.len() / world.max(1) * world).max(world);
    if mode == Mode::Finetune && batch_size / world < 2 {
        refuse!(
            "a batch of {} image(s) per rank: fine-tuning needs 2 or more for batch norm (--batch-size {}, {} training images, {world} rank(s))",
            batch_size / world,
            args.batch_size,
            train_set.len()
        );
    }
    check_subgroup_columns(args)?;
    let batches = (train_set.len() / batch_size) as u64;
    if batches == 0 {
        refuse!("{} training images: fewer than one batch of {batch_size}", train_set.len());
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
    let loader_cfg = LoaderConfig::training(args.image_size, batch_size / world, workers, args.run.seed);
    let mut loader = Loader::new(Arc::new(train_set.dataset.clone()), loader_cfg).with_shard(rank, world);
    if let Layout::MultiLabel { mapping, .. } = &train_set.layout {
        loader = loader.with_labels(mapping.clone());
    }
    if args.augment {
        loader = loader.with_joint_augment(light_augment());
    }
    if let Some(p) = &args.cache {
        loader = loader.with_cache(Arc::new(DecodeCache::open(p, &train_set.dataset, args.image_size)?));
    }
    assert_eq!(batches, loader.batches_per_epoch() as u64);

    tch::manual_seed(step_seed(args.run.seed, u64::MAX));
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
        channels_last,
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
        channels_last,
        eval: eval_cfg.clone(),
        report: args.report.options(args.val.as_deref().unwrap_or(&args.train)),
        out: out.clone(),
        is_main: run.is_main(),
        card,
        val_every: args.val_every,
        epochs,
    };
    let mut task = Classification::new(model, val_set, config)?;
    run.resume(&mut task, batches)?;
    if let Some(g) = &group {
        task = task.with_data_parallel(g.clone())?;
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
        "speed": speed.to_json(),
    });
    run.write_config(serde_json::to_value(args)?, extra)?;
    if run.is_main() {
        eprintln!(
            "classify {} {} ({}) on {} training images ({} of {} at --fraction {}), {} validation; {} outputs, {batches} batches of {batch_size}, {} px, device {device:?}, {}",
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
            speed.describe()
        );
    }
    let outcome = run.fit(&mut task, batches, |epoch, start| loader.epoch(epoch, start as usize))?;
    let finished = matches!(outcome, Outcome::Finished | Outcome::NothingToDo);
    let test = match (&args.test, run.is_main(), finished) {
        (Some(test), true, true) => Some(judge_test(args, test, &out.join("best.pth"), &eval_cfg)?),
        _ => None,
    };
    Ok(Trained { finished, is_main: run.is_main(), best: task.best(), test })
}

/// `--by` names columns of the validation CSV: checked before hours of training, not after.
fn check_subgroup_columns(args: &TrainArgs) -> Result<(), TaskError> {
    if args.report.by.is_empty() {
        return Ok(());
    }
    let source = args.val.as_deref().unwrap_or(&args.train);
    let table = crate::data::dataset::CsvTable::read(source)
        .map_err(|e| format!("--by reads columns of the validation CSV: {e}"))?;
    for column in &args.report.by {
        if table.column(column).is_none() {
            refuse!(
                "--by {column}: no such column in {} (columns: {})",
                source.display(),
                table.header.fields.join(", ")
            );
        }
    }
    Ok(())
}

/// The best model on the test set, judged once, its report in `OUT/test/`.
fn judge_test(args: &TrainArgs, test: &Path, best: &Path, cfg: &EvalConfig) -> Result<TestResult, TaskError> {
    if !best.exists() {
        refuse!(
            "no best model in {} (no validation had a defined mean AUROC)",
            best.parent().unwrap_or(Path::new(".")).display()
        );
    }
    let (model, card, data) = load_labelled(best, test, &args.labels, cfg.device)?;
    let dir = args.run.out.join("test");
    let evaluation = judge(&model, &card, &data, cfg, &args.report.options(test), &dir)?;
    Ok(TestResult { images: data.len(), epoch: card.epoch.unwrap_or(0), evaluation })
}
