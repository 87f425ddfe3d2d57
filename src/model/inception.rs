//! The Inception-v3 of FID: pytorch-fid 0.3.0's `InceptionV3(output_blocks,
//! resize_input=True, normalize_input=True, use_fid_inception=True)`, layer for layer, so that
//! its weights file `pt_inception-2015-12-05-6726825d.pth` (TensorFlow's 2015-12-05 Inception
//! ported by pytorch-fid) loads as it is, by name:
//!
//! - torchvision's `Inception3` names: `Conv2d_1a_3x3`, `Conv2d_2a_3x3`, `Conv2d_2b_3x3`,
//!   `Conv2d_3b_1x1`, `Conv2d_4a_3x3`, `Mixed_5b` ... `Mixed_7c`, each convolution a
//!   `BasicConv2d` with `conv.weight` (no bias) and `bn.{weight, bias, running_mean,
//!   running_var}` (BatchNorm with `eps = 0.001`), e.g. `Mixed_5b.branch1x1.conv.weight`.
//! - pytorch-fid's patched blocks: `FIDInceptionA` (`Mixed_5b/5c/5d`) and `FIDInceptionC`
//!   (`Mixed_6b..6e`) and `FIDInceptionE_1` (`Mixed_7b`) average-pool their pool branch without
//!   counting the zero padding (`count_include_pad=False`, as TensorFlow); `FIDInceptionE_2`
//!   (`Mixed_7c`) max-pools it. `Mixed_6a` and `Mixed_7a` are torchvision's InceptionB and D.
//!
//! [`StateDict`] lists the tensors the features use, in `state_dict()` order. The file's
//! `fc.{weight, bias}` (the 1008 logits, after the features) and the BatchNorms'
//! `num_batches_tracked` (unused in evaluation) are ignored when present.
//!
//! Forward ([`FidInception::activations`]): bilinear resize to 299 x 299
//! (`align_corners=False`), `2 x - 1`, then the blocks up to the one of the requested
//! dimensionality ([`Dims`]), each in evaluation mode; a feature map larger than 1 x 1 is
//! averaged to 1 x 1 as pytorch-fid's `get_activations` does. Computed in `float32`, as
//! pytorch-fid does.
use std::collections::HashMap;
use std::path::Path;

use tch::nn::{self, Init};
use tch::{Device, Kind, Tensor};

use super::layers::{Conv2d, NamedTensor, StateDict, TensorRole, join, push};
use super::{ModelError, load_state};
use crate::checkpoint::CheckpointError;
use crate::nn::{Conv2dConfig, Resize, upsample_bilinear};

/// The file name pytorch-fid downloads its weights to (`FID_WEIGHTS_URL`'s basename) and finds
/// them by under `$TORCH_HOME/hub/checkpoints/`.
pub const FID_WEIGHTS_FILE: &str = "pt_inception-2015-12-05-6726825d.pth";

/// The feature layer: pytorch-fid's `--dims` and the block it reads
/// (`InceptionV3.BLOCK_INDEX_BY_DIM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dims {
    /// Block 0: after the first max-pool (64 channels, averaged).
    D64,
    /// Block 1: after the second max-pool (192 channels, averaged).
    D192,
    /// Block 2: the input of the auxiliary classifier, after `Mixed_6e` (768, averaged).
    D768,
    /// Block 3: the final average pool (2048): the standard FID features.
    D2048,
}

impl Dims {
    pub const ALL: [Dims; 4] = [Dims::D64, Dims::D192, Dims::D768, Dims::D2048];

    /// `64`, `192`, `768` or `2048`; anything else is `None`.
    pub fn from_dims(dims: usize) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.dims() == dims)
    }

    pub fn dims(self) -> usize {
        match self {
            Self::D64 => 64,
            Self::D192 => 192,
            Self::D768 => 768,
            Self::D2048 => 2048,
        }
    }

    /// pytorch-fid's block index.
    pub fn block(self) -> usize {
        match self {
            Self::D64 => 0,
            Self::D192 => 1,
            Self::D768 => 2,
            Self::D2048 => 3,
        }
    }
}

impl std::fmt::Display for Dims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.dims())
    }
}

/// torchvision's `BasicConv2d`: convolution without bias, BatchNorm (`eps = 0.001`), ReLU;
/// evaluation mode only.
#[derive(Debug)]
struct BasicConv2d {
    conv: Conv2d,
    bn_weight: Tensor,
    bn_bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

const BN_EPS: f64 = 0.001;

impl BasicConv2d {
    fn new(
        p: &nn::Path,
        c_in: i64,
        c_out: i64,
        kernel: [i64; 2],
        stride: i64,
        padding: [i64; 2],
    ) -> Result<Self, ModelError> {
        let config =
            Conv2dConfig { kernel, stride: [stride, stride], padding, bias: false, ..Conv2dConfig::new(1) };
        let conv = Conv2d::with_config(p / "conv", c_in, c_out, config)?;
        let bn = p / "bn";
        Ok(Self {
            conv,
            bn_weight: bn.var("weight", &[c_out], Init::Const(1.0)),
            bn_bias: bn.var("bias", &[c_out], Init::Const(0.0)),
            running_mean: bn.zeros_no_train("running_mean", &[c_out]),
            running_var: bn.ones_no_train("running_var", &[c_out]),
        })
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        let mut ys = self.conv.forward(xs).batch_norm(
            Some(&self.bn_weight),
            Some(&self.bn_bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            false,
            0.1,
            BN_EPS,
            true,
        );
        let _ = ys.relu_();
        ys
    }
}

impl StateDict for BasicConv2d {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        self.conv.push_tensors(&join(prefix, "conv"), out);
        let bn = join(prefix, "bn");
        push(out, &bn, "weight", &self.bn_weight, TensorRole::Parameter);
        push(out, &bn, "bias", &self.bn_bias, TensorRole::Parameter);
        push(out, &bn, "running_mean", &self.running_mean, TensorRole::Buffer);
        push(out, &bn, "running_var", &self.running_var, TensorRole::Buffer);
    }
}

/// Named `BasicConv2d`s of one block, in registration order.
#[derive(Debug)]
struct Convs(Vec<(&'static str, BasicConv2d)>);

impl Convs {
    fn get(&self, name: &str) -> &BasicConv2d {
        &self.0.iter().find(|(n, _)| *n == name).expect("a block's own layer name").1
    }

    /// Applies the named layers in turn.
    fn chain(&self, xs: &Tensor, names: &[&str]) -> Tensor {
        names.iter().fold(xs.shallow_clone(), |x, n| self.get(n).forward(&x))
    }
}

impl StateDict for Convs {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        for (name, layer) in &self.0 {
            layer.push_tensors(&join(prefix, name), out);
        }
    }
}

/// `(name, c_in, c_out, kernel (h, w), stride, padding (h, w))` of one layer.
type Spec = (&'static str, i64, i64, [i64; 2], i64, [i64; 2]);

fn convs(p: &nn::Path, specs: &[Spec]) -> Result<Convs, ModelError> {
    specs
        .iter()
        .map(|&(name, c_in, c_out, k, s, pad)| {
            Ok((name, BasicConv2d::new(&(p / name), c_in, c_out, k, s, pad)?))
        })
        .collect::<Result<Vec<_>, ModelError>>()
        .map(Convs)
}

/// TensorFlow's average pool of the pool branches (`count_include_pad=False`).
fn avg_pool_tf(xs: &Tensor) -> Tensor {
    xs.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None)
}

fn max_pool_3x3_s2(xs: &Tensor) -> Tensor {
    xs.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
}

/// The mixed blocks, each with its forward as pytorch-fid runs it.
#[derive(Debug)]
enum Mixed {
    /// `FIDInceptionA`.
    A(Convs),
    /// torchvision's `InceptionB` (`Mixed_6a`).
    B(Convs),
    /// `FIDInceptionC`.
    C(Convs),
    /// torchvision's `InceptionD` (`Mixed_7a`).
    D(Convs),
    /// `FIDInceptionE_1` (average pool without padding) or `FIDInceptionE_2` (max pool).
    E { convs: Convs, max_pool: bool },
}

const K1: [i64; 2] = [1, 1];
const K3: [i64; 2] = [3, 3];
const K5: [i64; 2] = [5, 5];
const K1X7: [i64; 2] = [1, 7];
const K7X1: [i64; 2] = [7, 1];
const K1X3: [i64; 2] = [1, 3];
const K3X1: [i64; 2] = [3, 1];
const P0: [i64; 2] = [0, 0];
const P1: [i64; 2] = [1, 1];

impl Mixed {
    fn a(p: &nn::Path, c_in: i64, pool_features: i64) -> Result<Self, ModelError> {
        Ok(Self::A(convs(
            p,
            &[
                ("branch1x1", c_in, 64, K1, 1, P0),
                ("branch5x5_1", c_in, 48, K1, 1, P0),
                ("branch5x5_2", 48, 64, K5, 1, [2, 2]),
                ("branch3x3dbl_1", c_in, 64, K1, 1, P0),
                ("branch3x3dbl_2", 64, 96, K3, 1, P1),
                ("branch3x3dbl_3", 96, 96, K3, 1, P1),
                ("branch_pool", c_in, pool_features, K1, 1, P0),
            ],
        )?))
    }

    fn b(p: &nn::Path, c_in: i64) -> Result<Self, ModelError> {
        Ok(Self::B(convs(
            p,
            &[
                ("branch3x3", c_in, 384, K3, 2, P0),
                ("branch3x3dbl_1", c_in, 64, K1, 1, P0),
                ("branch3x3dbl_2", 64, 96, K3, 1, P1),
                ("branch3x3dbl_3", 96, 96, K3, 2, P0),
            ],
        )?))
    }

    fn c(p: &nn::Path, c_in: i64, c7: i64) -> Result<Self, ModelError> {
        Ok(Self::C(convs(
            p,
            &[
                ("branch1x1", c_in, 192, K1, 1, P0),
                ("branch7x7_1", c_in, c7, K1, 1, P0),
                ("branch7x7_2", c7, c7, K1X7, 1, [0, 3]),
                ("branch7x7_3", c7, 192, K7X1, 1, [3, 0]),
                ("branch7x7dbl_1", c_in, c7, K1, 1, P0),
                ("branch7x7dbl_2", c7, c7, K7X1, 1, [3, 0]),
                ("branch7x7dbl_3", c7, c7, K1X7, 1, [0, 3]),
                ("branch7x7dbl_4", c7, c7, K7X1, 1, [3, 0]),
                ("branch7x7dbl_5", c7, 192, K1X7, 1, [0, 3]),
                ("branch_pool", c_in, 192, K1, 1, P0),
            ],
        )?))
    }

    fn d(p: &nn::Path, c_in: i64) -> Result<Self, ModelError> {
        Ok(Self::D(convs(
            p,
            &[
                ("branch3x3_1", c_in, 192, K1, 1, P0),
                ("branch3x3_2", 192, 320, K3, 2, P0),
                ("branch7x7x3_1", c_in, 192, K1, 1, P0),
                ("branch7x7x3_2", 192, 192, K1X7, 1, [0, 3]),
                ("branch7x7x3_3", 192, 192, K7X1, 1, [3, 0]),
                ("branch7x7x3_4", 192, 192, K3, 2, P0),
            ],
        )?))
    }

    fn e(p: &nn::Path, c_in: i64, max_pool: bool) -> Result<Self, ModelError> {
        let convs = convs(
            p,
            &[
                ("branch1x1", c_in, 320, K1, 1, P0),
                ("branch3x3_1", c_in, 384, K1, 1, P0),
                ("branch3x3_2a", 384, 384, K1X3, 1, [0, 1]),
                ("branch3x3_2b", 384, 384, K3X1, 1, [1, 0]),
                ("branch3x3dbl_1", c_in, 448, K1, 1, P0),
                ("branch3x3dbl_2", 448, 384, K3, 1, P1),
                ("branch3x3dbl_3a", 384, 384, K1X3, 1, [0, 1]),
                ("branch3x3dbl_3b", 384, 384, K3X1, 1, [1, 0]),
                ("branch_pool", c_in, 192, K1, 1, P0),
            ],
        )?;
        Ok(Self::E { convs, max_pool })
    }

    fn convs(&self) -> &Convs {
        match self {
            Self::A(c) | Self::B(c) | Self::C(c) | Self::D(c) | Self::E { convs: c, .. } => c,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let outputs = match self {
            Self::A(c) => vec![
                c.chain(x, &["branch1x1"]),
                c.chain(x, &["branch5x5_1", "branch5x5_2"]),
                c.chain(x, &["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]),
                c.chain(&avg_pool_tf(x), &["branch_pool"]),
            ],
            Self::B(c) => vec![
                c.chain(x, &["branch3x3"]),
                c.chain(x, &["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]),
                max_pool_3x3_s2(x),
            ],
            Self::C(c) => vec![
                c.chain(x, &["branch1x1"]),
                c.chain(x, &["branch7x7_1", "branch7x7_2", "branch7x7_3"]),
                c.chain(
                    x,
                    &[
                        "branch7x7dbl_1",
                        "branch7x7dbl_2",
                        "branch7x7dbl_3",
                        "branch7x7dbl_4",
                        "branch7x7dbl_5",
                    ],
                ),
                c.chain(&avg_pool_tf(x), &["branch_pool"]),
            ],
            Self::D(c) => vec![
                c.chain(x, &["branch3x3_1", "branch3x3_2"]),
                c.chain(x, &["branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"]),
                max_pool_3x3_s2(x),
            ],
            Self::E { convs: c, max_pool } => {
                let b3 = c.chain(x, &["branch3x3_1"]);
                let b3 = Tensor::cat(&[c.chain(&b3, &["branch3x3_2a"]), c.chain(&b3, &["branch3x3_2b"])], 1);
                let bd = c.chain(x, &["branch3x3dbl_1", "branch3x3dbl_2"]);
                let bd =
                    Tensor::cat(&[c.chain(&bd, &["branch3x3dbl_3a"]), c.chain(&bd, &["branch3x3dbl_3b"])], 1);
                let pooled = if *max_pool {
                    x.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false)
                } else {
                    avg_pool_tf(x)
                };
                vec![c.chain(x, &["branch1x1"]), b3, bd, c.chain(&pooled, &["branch_pool"])]
            }
        };
        Tensor::cat(&outputs, 1)
    }
}

/// pytorch-fid's FID Inception-v3 (module documentation), evaluation only.
#[derive(Debug)]
pub struct FidInception {
    /// `Conv2d_1a_3x3`, `Conv2d_2a_3x3`, `Conv2d_2b_3x3`, `Conv2d_3b_1x1`, `Conv2d_4a_3x3`.
    stem: Convs,
    /// `Mixed_5b` ... `Mixed_7c` by name.
    mixed: Vec<(&'static str, Mixed)>,
    device: Device,
}

impl FidInception {
    /// The network with PyTorch's default initialisation (weights to be loaded), on `p`'s
    /// device.
    pub fn new(p: &nn::Path) -> Result<Self, ModelError> {
        let stem = convs(
            p,
            &[
                ("Conv2d_1a_3x3", 3, 32, K3, 2, P0),
                ("Conv2d_2a_3x3", 32, 32, K3, 1, P0),
                ("Conv2d_2b_3x3", 32, 64, K3, 1, P1),
                ("Conv2d_3b_1x1", 64, 80, K1, 1, P0),
                ("Conv2d_4a_3x3", 80, 192, K3, 1, P0),
            ],
        )?;
        let mixed = vec![
            ("Mixed_5b", Mixed::a(&(p / "Mixed_5b"), 192, 32)?),
            ("Mixed_5c", Mixed::a(&(p / "Mixed_5c"), 256, 64)?),
            ("Mixed_5d", Mixed::a(&(p / "Mixed_5d"), 288, 64)?),
            ("Mixed_6a", Mixed::b(&(p / "Mixed_6a"), 288)?),
            ("Mixed_6b", Mixed::c(&(p / "Mixed_6b"), 768, 128)?),
            ("Mixed_6c", Mixed::c(&(p / "Mixed_6c"), 768, 160)?),
            ("Mixed_6d", Mixed::c(&(p / "Mixed_6d"), 768, 160)?),
            ("Mixed_6e", Mixed::c(&(p / "Mixed_6e"), 768, 192)?),
            ("Mixed_7a", Mixed::d(&(p / "Mixed_7a"), 768)?),
            ("Mixed_7b", Mixed::e(&(p / "Mixed_7b"), 1280, false)?),
            ("Mixed_7c", Mixed::e(&(p / "Mixed_7c"), 2048, true)?),
        ];
        Ok(Self { stem, mixed, device: p.device() })
    }

    /// Copies a state dict's tensors in by name ([`load_state`]): every tensor of
    /// [`StateDict`] must be there with its shape; others (`fc.*`, `num_batches_tracked`) are
    /// ignored.
    pub fn load_state(&self, source: &HashMap<String, Tensor>) -> Result<(), ModelError> {
        load_state(self, "", source)
    }

    /// The network with the weights of a `torch.save` state dict (pytorch-fid's
    /// [`FID_WEIGHTS_FILE`], or one saved the same way), read by [`crate::checkpoint::load`],
    /// on `device`.
    pub fn load(path: impl AsRef<Path>, device: Device) -> Result<Self, CheckpointError> {
        let path = path.as_ref();
        let checkpoint = crate::checkpoint::load(path)?;
        let source: HashMap<String, Tensor> = checkpoint.tensors().into_iter().collect();
        let vs = nn::VarStore::new(device);
        let model = Self::new(&vs.root())
            .and_then(|m| m.load_state(&source).map(|()| m))
            .map_err(|e| CheckpointError::Mapping(format!("{}: {e}", path.display())))?;
        // Inference only: no parameter needs a gradient.
        for t in model.named_tensors("") {
            let _ = t.tensor.shallow_clone().requires_grad_(false);
        }
        Ok(model)
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Activations `[N, dims]` (`float32`, on the model's device) of `images` `[N, 3, H, W]`
    /// with values in 0..1 (any float kind, any device, any size; grey images with their value
    /// in the three channels, as `PIL.Image.convert("RGB")` makes them): pytorch-fid's
    /// `InceptionV3([block])` output, averaged to 1 x 1 as its `get_activations` does. The whole
    /// batch runs at once (each image is resized to 299 x 299 first, so memory grows with the
    /// batch, not with the image size): callers choose the batch size.
    pub fn activations(&self, images: &Tensor, dims: Dims) -> Result<Tensor, ModelError> {
        let size = images.size();
        if size.len() != 4 || size[1] != 3 || size[0] < 1 {
            return Err(ModelError::Input(format!("images must be [N, 3, H, W] with N >= 1, got {size:?}")));
        }
        if !images.is_floating_point() {
            return Err(ModelError::Input(format!(
                "images must hold floats in 0..1, got {:?}",
                images.kind()
            )));
        }
        let out = tch::no_grad(|| {
            let x = images.to_device(self.device).to_kind(Kind::Float);
            let x = upsample_bilinear(&x, Resize::Size([299, 299]), false);
            let x = x * 2.0 - 1.0;
            // Block 0.
            let x = self.stem.chain(&x, &["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"]);
            let mut x = max_pool_3x3_s2(&x);
            if dims.block() >= 1 {
                x = max_pool_3x3_s2(&self.stem.chain(&x, &["Conv2d_3b_1x1", "Conv2d_4a_3x3"]));
            }
            let blocks = [(2, 0..8), (3, 8..11)];
            for (block, range) in blocks {
                if dims.block() < block {
                    break;
                }
                for (_, m) in &self.mixed[range] {
                    x = m.forward(&x);
                }
            }
            x.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
        });
        Ok(out)
    }
}

impl StateDict for FidInception {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        self.stem.push_tensors(prefix, out);
        for (name, m) in &self.mixed {
            m.convs().push_tensors(&join(prefix, name), out);
        }
    }
}
