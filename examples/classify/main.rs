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
//! `--test`, `test/`. The work is `chess::tasks::classify`; this is its command line.
use anyhow::Result;
use chess::tasks::classify::evaluate::summary_lines;
use chess::tasks::classify::{
    CompareArgs, EvalArgs, PredictArgs, TrainArgs, compare, evaluate_model, predict_files, train,
};
use clap::{Parser, Subcommand};

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

fn main() -> std::process::ExitCode {
    chess::device::keep_freed_host_memory();
    chess::exit_code(match Cli::parse().command {
        Command::Train(a) => run_train(&a),
        Command::Eval(a) => run_eval(&a),
        Command::Predict(a) => run_predict(&a),
        Command::Compare(a) => run_compare(&a),
    })
}

fn run_train(args: &TrainArgs) -> Result<()> {
    let trained = train(args).map_err(anyhow::Error::from_boxed)?;
    if let Some(test) = &trained.test {
        println!("test ({} images), best model of epoch {}:", test.images, test.epoch);
        summary_lines(&test.evaluation).iter().for_each(|l| println!("{l}"));
    }
    if trained.finished && trained.is_main {
        match trained.best {
            Some((epoch, auroc)) => println!(
                "best validation mean AUROC {auroc:.4} at epoch {epoch}: {}",
                args.run.out.join("best.pth").display()
            ),
            None => println!("no validation mean AUROC was defined; no best model"),
        }
    }
    Ok(())
}

fn run_eval(args: &EvalArgs) -> Result<()> {
    let (eval, images) = evaluate_model(args).map_err(anyhow::Error::from_boxed)?;
    println!("{} ({images} images):", args.data.display());
    summary_lines(&eval).iter().for_each(|l| println!("{l}"));
    println!("metrics, predictions and plots: {}", args.out.display());
    Ok(())
}

fn run_predict(args: &PredictArgs) -> Result<()> {
    let predicted = predict_files(args).map_err(anyhow::Error::from_boxed)?;
    println!("{} images: {}", predicted.predictions.rows.len(), args.out.display());
    if let Some(dir) = &args.cam {
        predicted.write_grad_cams(dir, args.cam_label.as_deref()).map_err(anyhow::Error::from_boxed)?;
        println!("Grad-CAM overlays: {}", dir.display());
    }
    Ok(())
}

fn run_compare(args: &CompareArgs) -> Result<()> {
    let comparison = compare(args).map_err(anyhow::Error::from_boxed)?;
    comparison.lines().iter().for_each(|l| println!("{l}"));
    if let Some(out) = &args.out {
        comparison.write(out).map_err(anyhow::Error::from_boxed)?;
    }
    Ok(())
}
