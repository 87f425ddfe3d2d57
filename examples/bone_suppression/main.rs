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
//! and `curves.png`.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use chess::Precision;
use chess::data::synthetic::{BoneConfig as BoneDrawing, write_proxy_pairs};
use chess::data::{Dataset, FileKind, Loader, LoaderConfig, TargetKind, file_kind};
use chess::losses::{Distance, Normalisation, PerceptualLoss, Stage, WeightedLoss};
use chess::metrics::image_quality::{ImageScores, SsimWindow, score_images};
use chess::model::Arch;
use chess::optim::AdamConfig;
use chess::tasks::bone_suppression::{
    BoneArch, BoneCard, BoneNet, BoneSuppression, BoneTaskConfig, PairEval, score_pairs, scores_csv,
};
use chess::training::{Outcome, Run, RunArgs};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use serde_json::json;
use tch::{Device, Kind, Tensor};

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

#[derive(Copy, Clone, Debug, ValueEnum, Serialize)]
enum SsimKind {
    /// scikit-image's default: 7 x 7 uniform window, sample covariance.
    Uniform,
    /// Wang et al. 2004: Gaussian sigma 1.5, population covariance.
    Gaussian,
}

impl SsimKind {
    fn window(self) -> SsimWindow {
        match self {
            Self::Uniform => SsimWindow::Uniform7,
            Self::Gaussian => SsimWindow::Gaussian,
        }
    }
}

#[derive(Args, Debug, Serialize)]
struct TrainArgs {
    /// Input images (with bones); paired with --target by file name.
    #[arg(long, required_unless_present = "pairs")]
    input: Option<PathBuf>,
    /// Target images (soft tissue).
    #[arg(long, requires = "input")]
    target: Option<PathBuf>,
    /// Or a CSV with `input,target` columns.
    #[arg(long, conflicts_with = "input")]
    pairs: Option<PathBuf>,
    /// Held-out validation pairs (folders); without them, --val-split of the pairs.
    #[arg(long, requires = "val_target")]
    val_input: Option<PathBuf>,
    #[arg(long, requires = "val_input")]
    val_target: Option<PathBuf>,
    #[arg(long, default_value_t = 0.1)]
    val_split: f64,
    /// unet-resnet18 | unet-resnet34 | unet-resnet50 | resnet-bs.
    #[arg(long, default_value = "unet-resnet50")]
    arch: String,
    /// ResNet-BS: residual blocks and channels (the paper: 16 and 64).
    #[arg(long, default_value_t = 16)]
    bs_blocks: i64,
    #[arg(long, default_value_t = 64)]
    bs_channels: i64,
    /// `scratch`, or encoder weights for the U-Net (CheSS/MoCo checkpoint, torchvision, extracted).
    #[arg(long, default_value = "scratch")]
    init: String,
    /// Keep the U-Net's encoder frozen (eval-mode BN).
    #[arg(long)]
    freeze_encoder: bool,
    /// Weighted loss terms: l1, mse, ssim, ms-ssim (1 - SSIM, 1 - MS-SSIM; MS-SSIM needs 161 px
    /// or more), perceptual. The literature's: `l1=0.16,ms-ssim=0.84`.
    #[arg(long, default_value = "l1=1")]
    loss: String,
    /// Encoder weights of the perceptual loss (CheSS, ImageNet, any encoder the mapping reads),
    /// or `random` (a randomly initialised ResNet-18, labelled so). Adds `perceptual=W` to the
    /// loss unless it names one.
    #[arg(long)]
    perceptual_weights: Option<String>,
    /// Weight of the perceptual term when `--loss` does not give one.
    #[arg(long, default_value_t = 1.0)]
    perceptual_weight: f64,
    /// Stages and their weights: `stem=0.03125,layer1=0.0625,...`; default SPADE/CheSS's
    /// [1/32, 1/16, 1/8, 1/4, 1] over stem, layer1..4.
    #[arg(long)]
    perceptual_stages: Option<String>,
    /// l1 | mse between features.
    #[arg(long, default_value = "l1")]
    perceptual_distance: String,
    /// chess ((x/255 - 0.658)/0.221, one channel) | imagenet (ImageNet mean/std, grey to 3 channels).
    #[arg(long, default_value = "chess")]
    perceptual_norm: String,
    #[arg(long, default_value_t = 256)]
    image_size: i64,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 100)]
    epochs: u64,
    /// Adam learning rate (betas 0.9, 0.999).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// ReduceLROnPlateau on the validation PSNR.
    #[arg(long, default_value_t = 0.5)]
    plateau_factor: f64,
    #[arg(long, default_value_t = 5)]
    plateau_patience: i64,
    #[arg(long, default_value_t = 1)]
    val_every: u64,
    /// Geometric augmentation (affine warp on half the pairs), applied identically to both images.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    augment: bool,
    #[arg(long, value_enum, default_value = "uniform")]
    ssim: SsimKind,
    #[command(flatten)]
    #[serde(flatten)]
    run: RunArgs,
}

#[derive(Args, Debug, Clone)]
struct Runtime {
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, default_value = "off")]
    amp: String,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long)]
    workers: Option<usize>,
}

impl Runtime {
    fn device(&self) -> Result<Device> {
        Ok(self.device.parse::<chess::DeviceSpec>()?.resolve()?)
    }
    fn workers(&self) -> usize {
        self.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
    }
}

#[derive(Args, Debug)]
struct EvalArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    input: PathBuf,
    #[arg(long)]
    target: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "uniform")]
    ssim: SsimKind,
    /// Side-by-side PNGs for at most this many pairs.
    #[arg(long, default_value_t = 16)]
    side_by_side: usize,
    #[command(flatten)]
    runtime: Runtime,
}

#[derive(Args, Debug)]
struct PredictArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    runtime: Runtime,
}

#[derive(Args, Debug)]
struct ScoreArgs {
    /// Predicted images (any tool's), matched with --target by file name.
    #[arg(long)]
    pred: PathBuf,
    #[arg(long)]
    target: PathBuf,
    /// The scores CSV: name,psnr,ssim,rmse.
    #[arg(long)]
    out: PathBuf,
    /// The images' value range (default: 255 for 8-bit files, 65535 for 16-bit).
    #[arg(long)]
    data_range: Option<f64>,
    #[arg(long, value_enum, default_value = "uniform")]
    ssim: SsimKind,
}

#[derive(Args, Debug)]
struct ProxyArgs {
    /// Real radiographs (folders, files, lists).
    #[arg(long, required = true)]
    source: Vec<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// At most this many images (the first, in sorted order).
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> std::process::ExitCode {
    chess::device::keep_freed_host_memory();
    chess::exit_code(match Cli::parse().command {
        Command::Train(a) => train(*a),
        Command::Eval(a) => eval(a),
        Command::Predict(a) => predict(a),
        Command::Score(a) => score(a),
        Command::Proxy(a) => proxy(a),
    })
}

/// The perceptual loss the flags ask for.
fn perceptual(args: &TrainArgs, device: Device) -> Result<Option<PerceptualLoss>> {
    let Some(source) = &args.perceptual_weights else { return Ok(None) };
    let norm: Normalisation = args.perceptual_norm.parse()?;
    let mut loss = if source == "random" {
        if norm != Normalisation::Chess {
            bail!("--perceptual-weights random is a 1-channel encoder: use --perceptual-norm chess");
        }
        PerceptualLoss::random(Arch::ResNet18, args.run.seed, device)
    } else {
        PerceptualLoss::from_file(source, norm, device)?
    };
    loss.distance = args.perceptual_distance.parse::<Distance>()?;
    if let Some(spec) = &args.perceptual_stages {
        let mut stages = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, w) = item
                .split_once('=')
                .with_context(|| format!("--perceptual-stages: `{item}` is not stage=weight"))?;
            let stage = Stage::ALL
                .into_iter()
                .find(|s| s.name() == name.trim())
                .with_context(|| format!("--perceptual-stages: no stage `{name}` (stem, layer1..layer4)"))?;
            stages.push((
                stage,
                w.trim().parse::<f64>().with_context(|| format!("--perceptual-stages: `{w}`"))?,
            ));
        }
        loss.stages = stages;
    }
    Ok(Some(loss))
}

/// Seeded (train, validation) split of pairs by index.
fn split(n: usize, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = chess::data::Rng::new(seed ^ 0xB0E5);
    for i in (1..n).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let n_val = ((n as f64 * fraction).round() as usize).clamp(1, n.saturating_sub(1).max(1));
    let (mut val, mut train) = (order[..n_val].to_vec(), order[n_val..].to_vec());
    val.sort_unstable();
    train.sort_unstable();
    (train, val)
}

fn subset(d: &Dataset, idx: &[usize]) -> Dataset {
    Dataset { samples: idx.iter().map(|&i| d.samples[i].clone()).collect() }
}

fn train(args: TrainArgs) -> Result<()> {
    let (device, group) = args.run.device_and_group()?;
    let (rank, world) = group.as_ref().map_or((0, 1), |g| (g.rank(), g.world_size()));
    let arch = BoneArch::parse(&args.arch, args.bs_blocks, args.bs_channels).map_err(anyhow::Error::msg)?;
    let all = match (&args.input, &args.target, &args.pairs) {
        (Some(i), Some(t), _) => Dataset::from_paired_folders(i, t, TargetKind::Image)?,
        (_, _, Some(csv)) => Dataset::from_pair_csv(csv, TargetKind::Image)?,
        _ => bail!("give --input and --target folders, or --pairs CSV"),
    };
    let (train_set, val_set) = match (&args.val_input, &args.val_target) {
        (Some(i), Some(t)) => (all, Dataset::from_paired_folders(i, t, TargetKind::Image)?),
        _ => {
            if all.len() < 2 {
                bail!(
                    "{} pair(s): too few to hold out a validation split (give --val-input/--val-target)",
                    all.len()
                );
            }
            let (t, v) = split(all.len(), args.val_split, args.run.seed);
            (subset(&all, &t), subset(&all, &v))
        }
    };
    if args.image_size % 32 != 0 && matches!(arch, BoneArch::Unet(_)) {
        bail!("--image-size {}: the U-Net needs a multiple of 32", args.image_size);
    }
    let batch_size = args.batch_size.min(train_set.len() / world * world).max(world);
    let batches = (train_set.len() / batch_size) as u64;
    if batches == 0 {
        bail!("{} training pairs: fewer than one batch of {batch_size}", train_set.len());
    }
    let mut run =
        Run::new(args.run.out.clone(), args.run.run_config(args.epochs, batch_size), group.clone(), device)?;
    let precision = args.run.precision()?;
    if precision == Precision::Fp16 {
        bail!(
            "--amp fp16 needs loss scaling, which bone_suppression does not do: use --amp bf16 (same range as fp32)"
        );
    }
    let mut loss: WeightedLoss = args.loss.parse()?;
    let perceptual = perceptual(&args, device)?;
    if perceptual.is_some() && !loss.needs_perceptual() {
        loss = format!("{},perceptual={}", args.loss, args.perceptual_weight).parse()?;
    }
    if loss.needs_perceptual() && perceptual.is_none() {
        bail!("--loss has a perceptual term: give --perceptual-weights PATH (or `random`)");
    }
    let loader_cfg = LoaderConfig {
        image_size: args.image_size,
        batch_size: batch_size / world,
        workers: args.run.workers(),
        prefetch: 4,
        seed: args.run.seed,
        shuffle: true,
        drop_last: true,
    };
    let mut loader = Loader::new(Arc::new(train_set.clone()), loader_cfg).with_shard(rank, world);
    if args.augment {
        loader = loader.with_joint_augment(chess::tasks::classify::light_augment());
    }
    tch::manual_seed(chess::training::step_seed(args.run.seed, u64::MAX));
    let net = BoneNet::new(arch, device).map_err(anyhow::Error::from_boxed)?;
    if args.init != "scratch" {
        let report = net.init_encoder(Path::new(&args.init)).map_err(anyhow::Error::from_boxed)?;
        if run.is_main() {
            eprintln!("init {}: {report}", args.init);
        }
    }
    if args.freeze_encoder {
        net.freeze_encoder().map_err(anyhow::Error::from_boxed)?;
    }
    let perceptual_source = perceptual.as_ref().map(|p| p.source().to_string());
    if let (Some(s), true) = (&perceptual_source, run.is_main()) {
        eprintln!("perceptual loss: {s}");
    }
    let card = BoneCard {
        arch,
        image_size: args.image_size,
        epoch: None,
        val_psnr: None,
        val_ssim: None,
        loss: loss.to_string(),
        init: args.init.clone(),
        perceptual: perceptual_source.clone(),
    };
    let config = BoneTaskConfig {
        adam: AdamConfig { lr: args.lr, ..AdamConfig::adam() },
        plateau_factor: args.plateau_factor,
        plateau_patience: args.plateau_patience,
        loss: loss.clone(),
        perceptual,
        precision,
        eval: PairEval {
            image_size: args.image_size,
            batch_size: (batch_size / world).max(4),
            workers: args.run.workers(),
            precision,
            device,
            window: args.ssim.window(),
        },
        out: args.run.out.clone(),
        is_main: run.is_main(),
        card,
        val_every: args.val_every,
        epochs: args.epochs,
    };
    let mut task = BoneSuppression::new(net, &val_set, config).map_err(anyhow::Error::from_boxed)?;
    run.resume(&mut task, batches)?;
    if let Some(g) = &group {
        task = task.with_data_parallel(g.clone()).map_err(anyhow::Error::from_boxed)?;
    }
    let extra = json!({
        "train_pairs": train_set.len(), "val_pairs": val_set.len(), "loss": loss.to_string(),
        "perceptual": perceptual_source, "arch": arch.name(),
    });
    run.write_config(serde_json::to_value(&args)?, extra)?;
    if run.is_main() {
        eprintln!(
            "bone suppression {} on {} pairs ({} validation), loss {loss}, {batches} batches of {batch_size}, {} px, device {device:?}, amp {}",
            arch.name(),
            train_set.len(),
            val_set.len(),
            args.image_size,
            args.run.amp
        );
    }
    let outcome = run.fit(&mut task, batches, |epoch, start| loader.epoch(epoch, start as usize))?;
    if run.is_main() && matches!(outcome, Outcome::Finished | Outcome::NothingToDo) {
        match task.best() {
            Some((e, p)) => println!(
                "best validation PSNR {p:.3} dB at epoch {e}: {}",
                args.run.out.join("best.pth").display()
            ),
            None => println!("no validation PSNR; no best model"),
        }
    }
    Ok(())
}

/// `input | output | target | |difference|` (difference x4 for visibility), 0..255.
fn side_by_side(input: &Tensor, output: &Tensor, target: &Tensor) -> Result<image::GrayImage> {
    let size = input.size();
    let (h, w) = (size[0] as u32, size[1] as u32);
    let diff = ((output - target).abs() * 4.0).clamp(0.0, 255.0);
    let tiles: Vec<(Vec<f32>, u32, u32)> = [input, output, target, &diff]
        .into_iter()
        .map(|t| Ok((Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1))?, w, h)))
        .collect::<Result<_>>()?;
    Ok(chess::plot::image_grid(&tiles, 4, 4))
}

fn stem(p: &Path) -> String {
    p.file_stem().map_or("image".into(), |s| s.to_string_lossy().into_owned())
}

fn eval(args: EvalArgs) -> Result<()> {
    let device = args.runtime.device()?;
    let (net, card) = BoneNet::load(&args.model, device).map_err(anyhow::Error::from_boxed)?;
    let pairs = Dataset::from_paired_folders(&args.input, &args.target, TargetKind::Image)?;
    let cfg = PairEval {
        image_size: card.image_size,
        batch_size: args.runtime.batch_size,
        workers: args.runtime.workers(),
        precision: args.runtime.amp.parse::<Precision>()?,
        device,
        window: args.ssim.window(),
    };
    let sbs = args.out.join("side_by_side");
    std::fs::create_dir_all(&sbs).with_context(|| sbs.display().to_string())?;
    let mut shown = 0;
    let scores = score_pairs(&net, &pairs, &cfg, |idx, input, output, target| {
        if shown < args.side_by_side {
            shown += 1;
            let img = side_by_side(input, output, target).map_err(|e| e.to_string())?;
            chess::plot::write_png(&sbs.join(format!("{}.png", stem(&pairs.samples[idx].path))), &img)?;
        }
        Ok(())
    })
    .map_err(anyhow::Error::from_boxed)?;
    for s in &scores.skipped {
        eprintln!("skipped {s}");
    }
    let names: Vec<String> = scores.rows.iter().map(|&i| stem(&pairs.samples[i].path)).collect();
    chess::atomic::write(&args.out.join("scores.csv"), scores_csv(&names, &scores.scores).as_bytes())?;
    let means = scores.means().context("no pair could be read")?;
    let metrics = json!({
        "n": scores.rows.len(), "psnr": means.psnr, "ssim": means.ssim, "rmse": means.rmse,
        "data_range": 255, "ssim_window": format!("{:?}", args.ssim), "image_size": card.image_size,
        "model": args.model, "skipped": scores.skipped.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    });
    chess::atomic::write(&args.out.join("metrics.json"), serde_json::to_string_pretty(&metrics)?.as_bytes())?;
    print_means(scores.rows.len(), &means);
    println!("scores, metrics and side-by-side images: {}", args.out.display());
    Ok(())
}

fn print_means(n: usize, m: &ImageScores) {
    println!("{n} images: PSNR {:.3} dB, SSIM {:.4}, RMSE {:.3}", m.psnr, m.ssim, m.rmse);
}

/// Whether a source image holds more than 8 bits (16-bit PNG/TIFF, DICOM over 8 bits stored).
fn is_deep(path: &Path) -> bool {
    match file_kind(path) {
        Ok(FileKind::Dicom) => dicom_object::OpenFileOptions::new()
            .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
            .open_file(path)
            .ok()
            .and_then(|o| o.element(dicom_dictionary_std::tags::BITS_STORED).ok()?.to_int::<u16>().ok())
            .is_some_and(|b| b > 8),
        _ => image::ImageReader::open(path)
            .ok()
            .and_then(|r| r.with_guessed_format().ok())
            .and_then(|r| r.decode().ok())
            .is_some_and(|i| {
                matches!(
                    i.color(),
                    image::ColorType::L16
                        | image::ColorType::La16
                        | image::ColorType::Rgb16
                        | image::ColorType::Rgba16
                )
            }),
    }
}

fn predict(args: PredictArgs) -> Result<()> {
    let device = args.runtime.device()?;
    let (net, card) = BoneNet::load(&args.model, device).map_err(anyhow::Error::from_boxed)?;
    std::fs::create_dir_all(&args.out).with_context(|| args.out.display().to_string())?;
    let dataset = Dataset::from_sources(&args.images)?;
    let mut written = 0;
    for sample in &dataset.samples {
        let path = &sample.path;
        let img = match chess::data::decode_file(path) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("skipped {}: {e}", path.display());
                continue;
            }
        };
        let (w, h) = (img.width as i64, img.height as i64);
        let x = chess::data::resize(&chess::data::to_tensor(&img), card.image_size)
            .unsqueeze(0)
            .to_device(device);
        let out = tch::no_grad(|| net.forward(&x, false));
        // Back to the input's own size.
        let out = out
            .to_kind(Kind::Float)
            .upsample_bilinear2d([h, w], false, None, None)
            .clamp(0.0, 1.0)
            .to_device(Device::Cpu);
        let values = Vec::<f32>::try_from(out.flatten(0, -1))?;
        let name = stem(path);
        let png = args.out.join(format!("{name}.png"));
        if is_deep(path) {
            let px: Vec<u16> = values.iter().map(|v| (v * 65535.0).round() as u16).collect();
            let buf = image::ImageBuffer::<image::Luma<u16>, _>::from_raw(w as u32, h as u32, px)
                .context("image size")?;
            buf.save(&png).with_context(|| png.display().to_string())?;
        } else {
            let px: Vec<u8> = values.iter().map(|v| (v * 255.0).round() as u8).collect();
            let buf = image::GrayImage::from_raw(w as u32, h as u32, px).context("image size")?;
            chess::plot::write_png(&png, &buf)?;
        }
        if file_kind(path).ok() == Some(FileKind::Dicom) {
            // Apart from the PNGs, so that `score` can match the PNGs by name.
            let dicom_dir = args.out.join("dicom");
            std::fs::create_dir_all(&dicom_dir).with_context(|| dicom_dir.display().to_string())?;
            let dcm = dicom_dir.join(format!("{name}.dcm"));
            let derived = chess::data::dicom_write::DerivedImage {
                pixels: &values,
                width: w as usize,
                height: h as usize,
                kind: "BONE_SUPPRESSED",
                derivation: &format!(
                    "bone suppression by chess-rs {} ({})",
                    env!("CARGO_PKG_VERSION"),
                    card.arch.name()
                ),
            };
            chess::data::dicom_write::write_derived_dicom(path, &dcm, &derived)?;
        }
        written += 1;
    }
    println!("{written} suppressed images: {}", args.out.display());
    Ok(())
}

/// Raw values of an image file as saved (8-bit: 0..255; 16-bit: 0..65535), its width, height
/// and natural range; DICOM through the display windowing (0..255).
fn raw_values(path: &Path) -> Result<(Vec<f64>, usize, usize, f64)> {
    if file_kind(path).ok() == Some(FileKind::Dicom) {
        let img = chess::data::decode_file(path)?;
        return Ok((
            img.pixels.iter().map(|&v| f64::from(v)).collect(),
            img.width as usize,
            img.height as usize,
            255.0,
        ));
    }
    let img = image::ImageReader::open(path)?
        .with_guessed_format()?
        .decode()
        .with_context(|| path.display().to_string())?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    Ok(match img.color() {
        image::ColorType::L16
        | image::ColorType::La16
        | image::ColorType::Rgb16
        | image::ColorType::Rgba16 => {
            (img.to_luma16().into_raw().into_iter().map(f64::from).collect(), w, h, 65535.0)
        }
        _ => (img.to_luma8().into_raw().into_iter().map(f64::from).collect(), w, h, 255.0),
    })
}

fn score(args: ScoreArgs) -> Result<()> {
    let pairing = chess::data::pair_folders(&args.pred, &args.target)?;
    if pairing.pairs.is_empty() {
        bail!("no file of {} matches one of {} by name", args.pred.display(), args.target.display());
    }
    if !pairing.unmatched_inputs.is_empty() || !pairing.unmatched_targets.is_empty() {
        eprintln!("warning: {}", pairing.report());
    }
    let (mut names, mut scores) = (Vec::new(), Vec::new());
    for (pred, target) in &pairing.pairs {
        let read = raw_values(pred).and_then(|p| Ok((p, raw_values(target)?)));
        let ((p, pw, ph, pr), (t, tw, th, _)) = match read {
            Ok(v) => v,
            Err(e) => {
                eprintln!("skipped {}: {e:#}", pred.display());
                continue;
            }
        };
        if (pw, ph) != (tw, th) {
            eprintln!("skipped {}: {pw} x {ph}, its target {tw} x {th}", pred.display());
            continue;
        }
        let range = args.data_range.unwrap_or(pr);
        scores.push(score_images(&p, &t, pw, ph, range, args.ssim.window())?);
        names.push(stem(pred));
    }
    chess::atomic::write(&args.out, scores_csv(&names, &scores).as_bytes())
        .with_context(|| args.out.display().to_string())?;
    let n = scores.len() as f64;
    let mean = |f: fn(&ImageScores) -> f64| scores.iter().map(f).sum::<f64>() / n;
    print_means(
        scores.len(),
        &ImageScores { psnr: mean(|s| s.psnr), ssim: mean(|s| s.ssim), rmse: mean(|s| s.rmse) },
    );
    Ok(())
}

fn proxy(args: ProxyArgs) -> Result<()> {
    let mut sources =
        Dataset::from_sources(&args.source)?.samples.into_iter().map(|s| s.path).collect::<Vec<_>>();
    if let Some(n) = args.limit {
        sources.truncate(n);
    }
    let report = write_proxy_pairs(&sources, &args.out, args.size, &BoneDrawing::default(), args.seed)?;
    println!(
        "{} proxy pairs in {} ({} skipped); SYNTHETIC bones on real radiographs, see its README.md",
        report.written.len(),
        args.out.display(),
        report.skipped_count()
    );
    Ok(())
}
