//! The bone-suppression networks and the card that says what a saved one is.
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor, nn};

use crate::checkpoint::{self, CheckpointError};
use crate::data::{MEAN, STD};
use crate::model::{Arch, ResNetBs, ResNetBsConfig, StateDict, Unet, UnetConfig};
use crate::training::TaskError;

/// Which network: `unet-resnet18|34|50` or `resnet-bs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BoneArch {
    Unet(#[serde(with = "arch_name")] Arch),
    ResNetBs { blocks: i64, channels: i64 },
}

mod arch_name {
    use crate::model::Arch;
    pub fn serialize<S: serde::Serializer>(a: &Arch, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(a.name())
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Arch, D::Error> {
        let name = <String as serde::Deserialize>::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl BoneArch {
    /// `unet-resnet18`, `unet-resnet34`, `unet-resnet50` or `resnet-bs` (with `blocks` and
    /// `channels`).
    pub fn parse(name: &str, blocks: i64, channels: i64) -> Result<Self, String> {
        match name {
            "resnet-bs" => Ok(Self::ResNetBs { blocks, channels }),
            other => match other.strip_prefix("unet-") {
                Some(arch) => Ok(Self::Unet(Arch::from_str(arch).map_err(|e| e.to_string())?)),
                None => {
                    Err(format!("--arch {other}: unet-resnet18, unet-resnet34, unet-resnet50 or resnet-bs"))
                }
            },
        }
    }

    pub fn name(&self) -> String {
        match self {
            Self::Unet(a) => format!("unet-{}", a.name()),
            Self::ResNetBs { .. } => "resnet-bs".into(),
        }
    }
}

/// What a saved model is, beside its weights (`best.pth` -> `best.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoneCard {
    pub arch: BoneArch,
    pub image_size: i64,
    pub epoch: Option<u64>,
    pub val_psnr: Option<f64>,
    pub val_ssim: Option<f64>,
    pub loss: String,
    pub init: String,
    pub perceptual: Option<String>,
}

impl BoneCard {
    pub fn read(model: &Path) -> Result<Self, CheckpointError> {
        let path = model.with_extension("json");
        let text = std::fs::read_to_string(&path).map_err(|e| CheckpointError::Io(e).in_file(&path))?;
        serde_json::from_str(&text).map_err(|e| CheckpointError::Mapping(format!("{}: {e}", path.display())))
    }

    pub fn write(&self, model: &Path) -> Result<(), CheckpointError> {
        let path = model.with_extension("json");
        let text = serde_json::to_string_pretty(self).expect("a card serialises");
        crate::atomic::write(&path, text.as_bytes()).map_err(|e| CheckpointError::Io(e).in_file(&path))
    }
}

enum Net {
    Unet(Unet),
    ResNetBs(ResNetBs),
}

/// The bone-suppression network and its variables. Input: grey 0..255; output: 0..1.
pub struct BoneNet {
    pub vs: nn::VarStore,
    net: Net,
    pub arch: BoneArch,
}

impl std::fmt::Debug for BoneNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoneNet").field("arch", &self.arch).finish()
    }
}

impl BoneNet {
    /// PyTorch's initialisation, from libtorch's generator (seed it first).
    pub fn new(arch: BoneArch, device: Device) -> Result<Self, TaskError> {
        let vs = nn::VarStore::new(device);
        let net = match arch {
            BoneArch::Unet(encoder) => {
                let config = UnetConfig { encoder, ..UnetConfig::default() };
                Net::Unet(Unet::new(&vs.root(), config)?)
            }
            BoneArch::ResNetBs { blocks, channels } => {
                let config = ResNetBsConfig { blocks, channels, ..ResNetBsConfig::default() };
                Net::ResNetBs(ResNetBs::new(&vs.root(), config)?)
            }
        };
        Ok(Self { vs, net, arch })
    }

    /// A saved model (`best.pth` and its card).
    pub fn load(model: &Path, device: Device) -> Result<(Self, BoneCard), TaskError> {
        let card = BoneCard::read(model)?;
        let net = Self::new(card.arch, device)?;
        let ckpt = checkpoint::load(model)?;
        let tensors: std::collections::HashMap<String, Tensor> = ckpt.root.flatten().into_iter().collect();
        crate::model::load_state(net.module(), "", &tensors)
            .map_err(|e| format!("{}: {e}", model.display()))?;
        Ok((net, card))
    }

    pub(super) fn module(&self) -> &dyn StateDict {
        match &self.net {
            Net::Unet(u) => u,
            Net::ResNetBs(r) => r,
        }
    }

    /// Starts the U-Net's encoder from CheSS, MoCo, torchvision or extracted weights.
    pub fn init_encoder(&self, path: &Path) -> Result<String, TaskError> {
        let Net::Unet(unet) = &self.net else {
            return Err("--init applies to the U-Net's encoder; ResNet-BS has none".into());
        };
        let weights = checkpoint::load_weights(path)?;
        let report = unet
            .load_encoder(&weights, checkpoint::LoadOptions::default())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(report.to_string())
    }

    pub fn freeze_encoder(&self) -> Result<(), TaskError> {
        match &self.net {
            Net::Unet(u) => {
                u.freeze_encoder();
                Ok(())
            }
            Net::ResNetBs(_) => Err("--freeze-encoder applies to the U-Net".into()),
        }
    }

    pub fn parameters(&self) -> Vec<Tensor> {
        match &self.net {
            Net::Unet(u) => u.trainable_parameters(),
            Net::ResNetBs(_) => self
                .module()
                .named_tensors("")
                .into_iter()
                .map(|t| t.tensor)
                .filter(Tensor::requires_grad)
                .collect(),
        }
    }

    pub fn state(&self) -> Vec<Tensor> {
        self.module().named_tensors("").into_iter().map(|t| t.tensor).collect()
    }

    /// The suppressed image in 0..1 from grey 0..255: the U-Net sees CheSS-normalised input
    /// (what its encoder was pretrained on) and ends in a sigmoid; ResNet-BS sees x / 255 and
    /// has its own sigmoid.
    pub fn forward(&self, grey: &Tensor, train: bool) -> Tensor {
        match &self.net {
            Net::Unet(u) => u.forward_t(&((grey / 255.0 - MEAN) / STD), train).sigmoid(),
            Net::ResNetBs(r) => r.forward(&(grey / 255.0)),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        checkpoint::save_state_dict(path, self.module())
    }
}
