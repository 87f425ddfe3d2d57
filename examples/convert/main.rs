//! Converts checkpoints between PyTorch (`.pth`, `.pth.tar`) and safetensors, optionally keeping
//! only the encoder (CheSS transfer: `module.encoder_q.` without `fc`).
//!
//!     convert chess.pth.tar chess_encoder.safetensors --encoder-only
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chess::checkpoint::{self, Checkpoint, EncoderWeights, Format, Value};
use chess::model::{Encoder, EncoderConfig, HeadSpec, StateDict};
use clap::Parser;
use tch::{Tensor, nn};

#[derive(Parser, Debug)]
#[command(about = "Convert checkpoints: .pth/.pth.tar <-> .safetensors")]
struct Args {
    /// Input checkpoint (.pth, .pth.tar, .pt or .safetensors).
    input: PathBuf,
    /// Output file; its extension picks the format (.pth/.pth.tar/.pt or .safetensors).
    output: PathBuf,
    /// Keep only the encoder backbone: prefix removed, projection/classifier head dropped.
    #[arg(long)]
    encoder_only: bool,
}

fn is_safetensors(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "safetensors")
}

fn is_torch(p: &Path) -> bool {
    let name = p.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    [".pth", ".pth.tar", ".pt", ".tar", ".ckpt", ".bin"].iter().any(|e| name.ends_with(e))
}

fn read(path: &Path) -> Result<Checkpoint> {
    if is_safetensors(path) {
        let tensors = Tensor::read_safetensors(path).with_context(|| format!("{}", path.display()))?;
        let entries = tensors.into_iter().map(|(k, t)| (Value::Str(k), Value::Tensor(t))).collect();
        return Ok(Checkpoint { root: Value::OrderedDict(entries), format: Format::Zip });
    }
    Ok(checkpoint::load(path)?)
}

fn main() -> std::process::ExitCode {
    chess::exit_code(run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    if !is_safetensors(&args.output) && !is_torch(&args.output) {
        bail!(
            "{}: unknown output extension (use .pth, .pth.tar, .pt or .safetensors)",
            args.output.display()
        );
    }
    let ckpt = read(&args.input)?;
    let root = if args.encoder_only {
        let w = EncoderWeights::from_checkpoint(&ckpt)?;
        let names = backbone_order(&w);
        println!(
            "encoder: {} tensors, prefix '{}', head {} dropped, {} input channel(s)",
            names.len(),
            w.prefix,
            w.head,
            w.in_channels
        );
        Value::OrderedDict(
            names
                .into_iter()
                .map(|n| {
                    let t = Value::Tensor(w.tensors()[&n].shallow_clone());
                    (Value::Str(n), t)
                })
                .collect(),
        )
    } else {
        ckpt.root
    };
    let tensors = root.flatten();
    if is_safetensors(&args.output) {
        let owned: Vec<(String, Tensor)> = tensors.into_iter().map(|(n, t)| (n, t.contiguous())).collect();
        Tensor::write_safetensors(&owned, &args.output)
            .with_context(|| format!("{}", args.output.display()))?;
        println!("wrote {} tensors to {}", owned.len(), args.output.display());
    } else {
        checkpoint::save(&args.output, &root)?;
        println!("wrote {} tensors to {}", tensors.len(), args.output.display());
    }
    Ok(())
}

/// Backbone tensor names in torchvision's order (that of a freshly built encoder of the
/// detected architecture), so the file reads like `torchvision.models.resnet50().state_dict()`.
fn backbone_order(w: &EncoderWeights) -> Vec<String> {
    let present = |n: &String| w.tensors().contains_key(n);
    match w.arch {
        Some(arch) => {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let cfg = EncoderConfig { arch, in_channels: w.in_channels, head: HeadSpec::None, bn_splits: 1 };
            let enc = Encoder::new(&vs.root(), cfg);
            enc.named_tensors("").into_iter().map(|t| t.name).filter(present).collect()
        }
        None => {
            let mut names: Vec<String> =
                w.tensors().keys().filter(|n| !n.starts_with("fc.")).cloned().collect();
            names.sort();
            names
        }
    }
}
