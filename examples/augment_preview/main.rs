//! Writes a PNG grid of one radiograph's augmented views (recipe steps 1 to 7), to check by
//! eye what the pretraining sees.
//!
//!     augment_preview scan.dcm --out views.png --views 8
use std::path::PathBuf;

use anyhow::{Context, Result};
use chess::data::{self, AugmentConfig, MEAN, Rng, STD};
use clap::Parser;
use tch::{Kind, Tensor};

#[derive(Parser, Debug)]
#[command(about = "PNG grid of augmented views of one image (first tile: unaugmented)")]
struct Args {
    image: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 8)]
    views: i64,
    #[arg(long, default_value_t = 512)]
    image_size: i64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Apply every step to every view (probabilities 1) to see each op at work.
    #[arg(long)]
    all: bool,
}

fn main() -> std::process::ExitCode {
    chess::exit_code(run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    let img = data::decode_file(&args.image)?;
    let x = data::resize(&data::to_tensor(&img), args.image_size).unsqueeze(0);
    let mut cfg = AugmentConfig::default();
    if args.all {
        cfg.p_blur_sharpen = 1.0;
        cfg.p_brightness_contrast = 1.0;
        cfg.p_noise = 1.0;
        cfg.p_value_shift = 1.0;
        cfg.p_affine = 1.0;
        cfg.p_optical = 1.0;
    }
    let batch = x.repeat([args.views, 1, 1, 1]);
    let (views, applied) = data::augment(&batch, &cfg, &mut Rng::new(args.seed));
    let pixels = ((views * STD + MEAN) * 255.0).clamp(0.0, 255.0);
    let tiles = Tensor::cat(&[x, pixels], 0).to_kind(Kind::Uint8); // [V+1, 1, S, S]
    let n = tiles.size()[0];
    let cols = (n as f64).sqrt().ceil() as i64;
    let rows = (n + cols - 1) / cols;
    let s = args.image_size;
    let canvas = Tensor::zeros([rows * s, cols * s], (Kind::Uint8, tch::Device::Cpu));
    for i in 0..n {
        let (r, c) = (i / cols, i % cols);
        canvas.narrow(0, r * s, s).narrow(1, c * s, s).copy_(&tiles.get(i).get(0));
    }
    let bytes: Vec<u8> = Vec::try_from(canvas.view([-1]))?;
    image::save_buffer(&args.out, &bytes, (cols * s) as u32, (rows * s) as u32, image::ExtendedColorType::L8)
        .with_context(|| format!("{}", args.out.display()))?;
    println!("wrote {} ({} views + original); applied: {applied:?}", args.out.display(), args.views);
    Ok(())
}
