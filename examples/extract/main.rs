//! Embeds radiographs with a pretrained encoder: pooled features as a float32 `[N, C]` `.npy`
//! (rows in input order) plus a `.csv` of the paths behind the rows.
//!
//!     extract --weights chess.pth.tar --out features.npy scans/ more/image.png
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chess::DeviceSpec;
use chess::checkpoint::{self, EncoderWeights, LoadOptions};
use chess::data::{self, Dataset, GreyImage};
use chess::model::{Arch, Encoder, EncoderConfig, HeadSpec};
use clap::Parser;
use tch::{Tensor, nn};

#[derive(Parser, Debug)]
#[command(about = "Extract pooled encoder features from images into a .npy file")]
struct Args {
    /// Checkpoint: CheSS MoCo, torchvision, or an extracted encoder (.pth, .pth.tar).
    #[arg(long)]
    weights: PathBuf,
    /// Encoder architecture; detected from the weights when omitted.
    #[arg(long)]
    arch: Option<String>,
    /// Images are resized (bilinear) to N x N unless already that size.
    #[arg(long, default_value_t = 512)]
    image_size: i64,
    /// Output .npy; the .csv of paths is written beside it.
    #[arg(long)]
    out: PathBuf,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Image files, folders (searched recursively, sorted) or CSV/list files.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

fn main() -> std::process::ExitCode {
    chess::exit_code(run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    let device = args.device.parse::<DeviceSpec>()?.resolve()?;
    let ckpt = checkpoint::load(&args.weights)?;
    let weights = EncoderWeights::from_checkpoint(&ckpt)?;
    let arch = match &args.arch {
        Some(a) => a.parse::<Arch>()?,
        None => weights.arch.context("cannot tell the architecture from the weights: pass --arch")?,
    };
    let vs = nn::VarStore::new(device);
    let config = EncoderConfig { arch, in_channels: weights.in_channels, head: HeadSpec::None, bn_splits: 1 };
    let encoder = Encoder::new(&vs.root(), config);
    let report = weights.load_into(&encoder, LoadOptions::default())?;
    eprintln!("{}: {report}", args.weights.display());

    let dataset = Dataset::from_sources(&args.inputs)?;
    let paths: Vec<&Path> = dataset.samples.iter().map(|s| s.path.as_path()).collect();
    let mut features: Vec<f32> = Vec::new();
    let mut rows: Vec<&Path> = Vec::new();
    let mut skipped = 0usize;
    let dim = arch.feature_dim() as usize;
    for chunk in paths.chunks(args.batch_size.max(1)) {
        let mut images: Vec<GreyImage> = Vec::with_capacity(chunk.len());
        let mut names = Vec::with_capacity(chunk.len());
        for path in chunk {
            match data::decode_file(path) {
                Ok(img) => {
                    images.push(img);
                    names.push(*path);
                }
                Err(e) => {
                    eprintln!("skipped: {e}");
                    skipped += 1;
                }
            }
        }
        if images.is_empty() {
            continue;
        }
        let x = data::batch(&images, args.image_size, weights.in_channels, device);
        let f = tch::no_grad(|| encoder.features_t(&x, false)).to_device(tch::Device::Cpu);
        features.extend(Vec::<f32>::try_from(f.flatten(0, -1))?);
        rows.extend(names);
    }
    let features = Tensor::from_slice(&features).view([rows.len() as i64, dim as i64]);
    write_npy_atomically(&features, &args.out).with_context(|| format!("{}", args.out.display()))?;
    let csv_path = args.out.with_extension("csv");
    chess::atomic::write_atomically(&csv_path, |f| -> std::io::Result<()> {
        let mut csv = csv::Writer::from_writer(f);
        csv.write_record(["index", "path"])?;
        for (i, p) in rows.iter().enumerate() {
            csv.write_record([i.to_string(), p.display().to_string()])?;
        }
        csv.flush()
    })
    .with_context(|| format!("{}", csv_path.display()))?;
    println!(
        "wrote {} x {dim} features to {} and paths to {}; skipped {skipped} unreadable file(s)",
        rows.len(),
        args.out.display(),
        csv_path.display()
    );
    Ok(())
}

/// tch's `.npy` writer (format 1.0, C order, little-endian `<f4` for float32) into a file
/// beside `path`, synced, then renamed over it: a killed run leaves the old file or the new
/// one, never half of one.
fn write_npy_atomically(t: &Tensor, path: &Path) -> Result<()> {
    let name = path.file_name().context("no file name")?.to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> Result<()> {
        t.write_npy(&tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
