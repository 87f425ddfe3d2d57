//! Bone suppression: train an image-to-image model on radiograph pairs (with bones -> without),
//! score it with PSNR, SSIM and RMSE as scikit-image computes them, and apply it to new images.
//!
//!     bone_suppression train --input pairs/input --target pairs/target --arch unet-resnet18 \
//!         --init chess.pth.tar --loss l1=0.16,ms-ssim=0.84 --perceptual-weights chess.pth.tar \
//!         --out runs/bs
//!     bone_suppression eval --model runs/bs/best.pth --input test/input --target test/target --out runs/bs/test
//!     bone_suppression predict --model runs/bs/best.pth scans/ --out suppressed/
//!     bone_suppression score --pred other_tool/ --target test/target --out scores.csv
//!     bone_suppression proxy --source ../shared/data/cxr-pneumonia-224/train --out proxy --size 128
//!
//! `train` writes `OUT/config.json`, `metrics.jsonl` (loss and each term), checkpoints (resume
//! with `--resume auto`; SIGTERM saves and stops), `best.pth` + `best.json` (best validation PSNR)
//! and `curves.png`. The work is `chess::tasks::bone_suppression`; this is its command line.
use anyhow::Result;
use chess::data::synthetic::{BoneConfig, write_proxy_pairs};
use chess::metrics::image_quality::ImageScores;
use chess::tasks::ProxyArgs;
use chess::tasks::bone_suppression::{
    EvalArgs, PredictArgs, ScoreArgs, TrainArgs, evaluate_model, mean_scores, predict_files, score_folders,
    train,
};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(about = "Bone suppression on chest radiographs: train, eval, predict, score, proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train on pairs; the best model by validation PSNR.
    Train(Box<TrainArgs>),
    /// PSNR, SSIM, RMSE of a model on pairs: scores.csv, metrics.json, side-by-side PNGs.
    Eval(EvalArgs),
    /// Suppressed images (PNG; for DICOM inputs also OUT/dicom/<name>.dcm).
    Predict(PredictArgs),
    /// PSNR, SSIM, RMSE of any two folders of images matched by name.
    Score(ScoreArgs),
    /// A synthetic PROXY pair set: real radiographs as targets, with bone-like bands added as inputs.
    Proxy(ProxyArgs),
}

fn main() -> std::process::ExitCode {
    chess::device::keep_freed_host_memory();
    chess::exit_code(match Cli::parse().command {
        Command::Train(a) => run_train(&a),
        Command::Eval(a) => run_eval(&a),
        Command::Predict(a) => run_predict(&a),
        Command::Score(a) => run_score(&a),
        Command::Proxy(a) => run_proxy(&a),
    })
}

fn run_train(args: &TrainArgs) -> Result<()> {
    let trained = train(args).map_err(anyhow::Error::from_boxed)?;
    if trained.finished && trained.is_main {
        match trained.best {
            Some((e, p)) => println!(
                "best validation PSNR {p:.3} dB at epoch {e}: {}",
                args.run.out.join("best.pth").display()
            ),
            None => println!("no validation PSNR; no best model"),
        }
    }
    Ok(())
}

fn print_means(n: usize, m: &ImageScores) {
    println!("{n} images: PSNR {:.3} dB, SSIM {:.4}, RMSE {:.3}", m.psnr, m.ssim, m.rmse);
}

fn run_eval(args: &EvalArgs) -> Result<()> {
    let done = evaluate_model(args).map_err(anyhow::Error::from_boxed)?;
    print_means(done.scores.rows.len(), &done.means);
    println!("scores, metrics and side-by-side images: {}", args.out.display());
    Ok(())
}

fn run_predict(args: &PredictArgs) -> Result<()> {
    let done = predict_files(args).map_err(anyhow::Error::from_boxed)?;
    let skipped =
        if done.skipped > 0 { format!(" ({} unreadable, skipped)", done.skipped) } else { String::new() };
    println!("{} suppressed images{skipped}: {}", done.written, args.out.display());
    Ok(())
}

fn run_score(args: &ScoreArgs) -> Result<()> {
    let (_, scores) = score_folders(args).map_err(anyhow::Error::from_boxed)?;
    match mean_scores(&scores) {
        Some(m) => print_means(scores.len(), &m),
        None => println!("0 images could be scored"),
    }
    Ok(())
}

fn run_proxy(args: &ProxyArgs) -> Result<()> {
    let sources = args.sources()?;
    let report = write_proxy_pairs(&sources, &args.out, args.size, &BoneConfig::default(), args.seed)?;
    println!(
        "{} proxy pairs in {} ({} skipped); SYNTHETIC bones on real radiographs, see its README.md",
        report.written.len(),
        args.out.display(),
        report.skipped_count()
    );
    Ok(())
}
