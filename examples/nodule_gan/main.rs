//! Nodule generation with SPADE and a CheSS perceptual loss: train on radiographs with nodule
//! masks, generate images from masks, put a nodule into a radiograph, and measure FID/KID.
//!
//!     nodule_gan proxy --source ../shared/data/cxr-pneumonia-224/train --out proxy --size 128
//!     nodule_gan train --images proxy/images --masks proxy/masks --perceptual-weights chess.pth.tar \
//!         --image-size 128 --epochs 20 --decay-epochs 10 --out runs/gan
//!     nodule_gan generate --model runs/gan --masks proxy/masks --out generated/
//!     nodule_gan insert --model runs/gan scan.dcm --at 300,420 --diameter-mm 12 --out scan_nodule.dcm
//!     nodule_gan fid real/ generated/ --inception pt_inception-2015-12-05-6726825d.pth --kid
//!
//! `train` writes `OUT/config.json`, `metrics.jsonl` (G and D losses, each term), checkpoints
//! (resume with `--resume auto`; SIGTERM saves and stops), `latest_net_{G,E,D}.pth` (NVlabs'
//! names), `model.json` and `samples/epoch_NNNN.png`. The work is `chess::tasks::nodule_gan`.
use anyhow::Result;
use chess::data::synthetic::{NoduleConfig, write_nodule_proxy};
use chess::tasks::ProxyArgs;
use chess::tasks::nodule_gan::fid::fid;
use chess::tasks::nodule_gan::generate::{generate, insert};
use chess::tasks::nodule_gan::{FidArgs, GenerateArgs, InsertArgs, TrainArgs, train};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(about = "Nodule generation on chest radiographs (SPADE): train, generate, insert, fid, proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train SPADE on images with nodule masks.
    Train(Box<TrainArgs>),
    /// One generated image per mask.
    Generate(GenerateArgs),
    /// A nodule of a given size where asked, in a radiograph (DICOM out for DICOM in).
    Insert(InsertArgs),
    /// FID (and KID) of two folders of images.
    Fid(FidArgs),
    /// A synthetic PROXY set: real radiographs with simulated nodules, their masks and list.
    Proxy(ProxyArgs),
}

fn main() -> std::process::ExitCode {
    chess::device::keep_freed_host_memory();
    chess::exit_code(match Cli::parse().command {
        Command::Train(a) => run_train(&a),
        Command::Generate(a) => run_generate(&a),
        Command::Insert(a) => run_insert(&a),
        Command::Fid(a) => run_fid(&a),
        Command::Proxy(a) => run_proxy(&a),
    })
}

fn run_train(args: &TrainArgs) -> Result<()> {
    let trained = train(args).map_err(anyhow::Error::from_boxed)?;
    if let Some(line) = trained.checksum {
        println!("{line}");
    }
    Ok(())
}

fn run_generate(args: &GenerateArgs) -> Result<()> {
    let (written, skipped) = generate(args).map_err(anyhow::Error::from_boxed)?;
    let skipped = if skipped > 0 { format!(" ({skipped} unreadable masks skipped)") } else { String::new() };
    println!("{written} generated images{skipped}: {}", args.out.display());
    Ok(())
}

fn run_insert(args: &InsertArgs) -> Result<()> {
    let done = insert(args).map_err(anyhow::Error::from_boxed)?;
    let [x0, y0, x1, y1] = done.bbox;
    println!(
        "{} mm nodule at ({:.1}, {:.1}), bounding box x {x0}..{x1}, y {y0}..{y1}: {} (mask {})",
        done.diameter_mm, done.x, done.y, done.output, done.mask
    );
    Ok(())
}

fn run_fid(args: &FidArgs) -> Result<()> {
    let report = fid(args).map_err(anyhow::Error::from_boxed)?;
    println!("FID: {}", report.fid);
    if let Some((mean, std)) = report.kid {
        println!("KID: {mean} ± {std}");
    }
    eprintln!("{} vs {} images, {} features", report.n_a, report.n_b, report.features);
    Ok(())
}

fn run_proxy(args: &ProxyArgs) -> Result<()> {
    let sources = args.sources()?;
    // A chest film spans about 35 cm: the proxy image's pixels are 350 / size mm (an assumption, in its README).
    let spacing = 350.0 / args.size as f64;
    let report =
        write_nodule_proxy(&sources, &args.out, args.size, spacing, &NoduleConfig::default(), args.seed)?;
    println!(
        "{} proxy images with {} nodules in {} ({} skipped); SYNTHETIC nodules on real radiographs, see its README.md",
        report.written.len(),
        report.nodules,
        args.out.display(),
        report.skipped_count()
    );
    Ok(())
}
