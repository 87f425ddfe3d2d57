//! Networks: the ResNet encoders, their heads and the MoCo v2 model around them; the FID
//! Inception-v3 of pytorch-fid ([`FidInception`]).
mod encoder;
pub mod gradcam;
pub mod inception;
mod layers;
pub mod moco;
mod resnet;
pub mod resnet_bs;
pub mod spade;
pub mod unet;

use std::collections::HashMap;

use tch::Tensor;

pub use encoder::{Encoder, EncoderConfig, HeadSpec};
pub use gradcam::{grad_cam, predict_probabilities};
pub use inception::{Dims, FID_WEIGHTS_FILE, FidInception};
pub use layers::{BatchNorm2d, Conv2d, Linear, NamedTensor, StateDict, TensorRole};
pub use moco::{Moco, MocoConfig, MocoTrainer, StepOptions, StepStats, StepValues};
pub use resnet::{Arch, ResNet};
pub use resnet_bs::{ResNetBs, ResNetBsConfig};
pub use spade::{ConvEncoder, MultiscaleDiscriminator, SpadeConfig, SpadeGenerator, SpadeNorm};
pub use unet::{Unet, UnetConfig};

/// Errors of model construction, state exchange and training steps.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown architecture '{0}': expected resnet18, resnet34 or resnet50")]
    UnknownArch(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("state is missing {} tensor(s), first: {}", .0.len(), .0[0])]
    MissingTensors(Vec<String>),
    #[error("tensor '{name}' has shape {found:?}, the model expects {expected:?}")]
    ShapeMismatch { name: String, expected: Vec<i64>, found: Vec<i64> },
    #[error("training step failed: {0}")]
    Step(String),
    #[error(transparent)]
    Layer(#[from] crate::nn::NnError),
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    #[error(transparent)]
    Distributed(#[from] crate::distributed::DistError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Copies `source` tensors into a module's state by name (`prefix` is prepended to the
/// module's own names). Every tensor of the module must be present with its exact shape;
/// extra source entries are ignored. Dtype and device are converted to the module's.
pub fn load_state<M: StateDict + ?Sized>(
    module: &M,
    prefix: &str,
    source: &HashMap<String, Tensor>,
) -> Result<(), ModelError> {
    let targets = module.named_tensors(prefix);
    let missing: Vec<String> =
        targets.iter().filter(|t| !source.contains_key(&t.name)).map(|t| t.name.clone()).collect();
    if !missing.is_empty() {
        return Err(ModelError::MissingTensors(missing));
    }
    for target in &targets {
        let src = &source[&target.name];
        if src.size() != target.tensor.size() {
            return Err(ModelError::ShapeMismatch {
                name: target.name.clone(),
                expected: target.tensor.size(),
                found: src.size(),
            });
        }
    }
    tch::no_grad(|| {
        for target in targets {
            let src = &source[&target.name];
            target.tensor.shallow_clone().f_copy_(src)?;
        }
        Ok(())
    })
}

/// A module's state as (name, tensor) pairs in `state_dict()` order; tensors are detached copies.
pub fn state_dict<M: StateDict + ?Sized>(module: &M, prefix: &str) -> Vec<(String, Tensor)> {
    module.named_tensors(prefix).into_iter().map(|t| (t.name, t.tensor.detach().copy())).collect()
}
