//! `nodule_gan fid`: the Fréchet distance (and KID) between two folders of images, on
//! pytorch-fid's Inception features or on pooled CheSS ResNet features.
use std::path::{Path, PathBuf};

use tch::{Device, Tensor};

use super::args::FidArgs;
use crate::data::{Dataset, GreyImage, decode_file};
use crate::metrics::fid::{fid_from_activations, grey_to_input, kid};
use crate::model::{Dims, Encoder, EncoderConfig, FID_WEIGHTS_FILE, FidInception, HeadSpec};
use crate::tasks::refuse;
use crate::training::TaskError;

/// Where pytorch-fid publishes its Inception weights (users download it themselves).
pub const FID_WEIGHTS_URL: &str = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth";

/// The distances of two folders.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FidReport {
    pub fid: f64,
    /// (mean, standard deviation) over subsets.
    pub kid: Option<(f64, f64)>,
    pub n_a: usize,
    pub n_b: usize,
    pub features: String,
}

/// The feature extractor of `--features`.
enum Features {
    Inception(FidInception, Dims),
    /// The encoder, its variables and the side images are resized to.
    Chess(Box<Encoder>, tch::nn::VarStore, i64),
}

impl Features {
    /// Features of a batch of equally sized grey images.
    fn of(&self, images: &[GreyImage]) -> Result<Tensor, TaskError> {
        Ok(match self {
            Self::Inception(net, dims) => {
                net.activations(&grey_to_input(images)?.to_device(net.device()), *dims)?
            }
            Self::Chess(enc, vs, size) => {
                let x = crate::data::batch(images, *size, 1, vs.device());
                tch::no_grad(|| enc.trunk().forward_t(&x, false)).to_device(Device::Cpu)
            }
        })
    }
}

/// Image files of a folder, sorted (pytorch-fid takes png and jpg; any decodable image here).
fn files(dir: &Path) -> Result<Vec<PathBuf>, TaskError> {
    if !dir.is_dir() {
        refuse!("{}: not a folder", dir.display());
    }
    Ok(Dataset::from_sources(&[dir.to_path_buf()])?.samples.into_iter().map(|s| s.path).collect())
}

fn activations(features: &Features, files: &[PathBuf], batch: usize) -> Result<Tensor, TaskError> {
    let mut out = Vec::new();
    let mut first: Option<(u32, u32)> = None;
    for chunk in files.chunks(batch.max(1)) {
        let mut images = Vec::with_capacity(chunk.len());
        for path in chunk {
            let img = decode_file(path)?;
            let (w, h) = *first.get_or_insert((img.width, img.height));
            // Inception resizes each image to 299 itself, but a batch must share a size (as
            // pytorch-fid's DataLoader requires); CheSS features resize to one side.
            if matches!(features, Features::Inception(..)) && (img.width, img.height) != (w, h) {
                refuse!(
                    "{}: {} x {} where the folder's first image is {w} x {h}: give images of one size",
                    path.display(),
                    img.width,
                    img.height
                );
            }
            images.push(img);
        }
        out.push(features.of(&images)?);
    }
    Ok(Tensor::cat(&out, 0))
}

pub fn fid(args: &FidArgs) -> Result<FidReport, TaskError> {
    let device = args.device.parse::<crate::DeviceSpec>()?.resolve()?;
    let mut features = match args.features.as_str() {
        "inception" => {
            let Some(path) = &args.inception else {
                refuse!(
                    "--features inception needs --inception PATH: pytorch-fid's {FID_WEIGHTS_FILE}, published at {FID_WEIGHTS_URL} (nothing is downloaded here)"
                )
            };
            let dims = Dims::from_dims(args.dims as usize)
                .ok_or_else(|| format!("--dims {}: expected 64, 192, 768 or 2048", args.dims))?;
            Features::Inception(FidInception::load(path, device)?, dims)
        }
        "chess" => {
            let Some(path) = &args.weights else {
                refuse!("--features chess needs --weights (a CheSS/MoCo checkpoint or encoder)")
            };
            let weights = crate::checkpoint::load_weights(path)?;
            let arch = weights
                .arch
                .ok_or_else(|| format!("{}: not a ResNet-18, -34 or -50 encoder", path.display()))?;
            let vs = tch::nn::VarStore::new(device);
            let enc = Encoder::new(
                &vs.root(),
                EncoderConfig { arch, in_channels: 1, head: HeadSpec::None, bn_splits: 1 },
            );
            weights.load_into(&enc, crate::checkpoint::LoadOptions::default())?;
            Features::Chess(Box::new(enc), vs, 0)
        }
        other => refuse!("--features {other}: expected inception or chess"),
    };
    let (fa, fb) = (files(&args.dir_a)?, files(&args.dir_b)?);
    if fa.len() < 2 || fb.len() < 2 {
        refuse!("{} and {} images: FID needs at least 2 in each folder", fa.len(), fb.len());
    }
    if let Features::Chess(_, _, size) = &mut features {
        // The side of folder A's first image, for both folders.
        *size = match args.size {
            Some(s) if s > 0 => s,
            Some(s) => refuse!("--size {s}: must be positive"),
            None => decode_file(&fa[0])?.height as i64,
        };
    }
    let a = activations(&features, &fa, args.batch_size)?.to_kind(tch::Kind::Double);
    let b = activations(&features, &fb, args.batch_size)?.to_kind(tch::Kind::Double);
    let fid = fid_from_activations(&a, &b)?;
    let kid = if args.kid {
        let n = args.kid_subset_size.min(fa.len()).min(fb.len());
        Some(kid(&a, &b, args.kid_subsets, n, 0)?)
    } else {
        None
    };
    let name = match &features {
        Features::Inception(_, d) => format!("inception-{}", d.dims()),
        Features::Chess(..) => format!("chess-{}", a.size()[1]),
    };
    Ok(FidReport { fid, kid, n_a: fa.len(), n_b: fb.len(), features: name })
}
