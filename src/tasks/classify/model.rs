//! The classifier: a 1-channel ResNet with `fc` as its head (torchvision's names, so `best.pth`
//! loads into `torchvision.models.resnetNN` with a 1-channel `conv1`), and its card
//! (`best.json`: what the outputs mean, the input size, the validation thresholds).
pub use crate::checkpoint::load_weights;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};

use crate::checkpoint::{self, CheckpointError, LoadOptions, LoadReport};
use crate::model::{Arch, Encoder, EncoderConfig, HeadSpec, StateDict};

/// What a saved classifier is, beside its weights (`best.pth` -> `best.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub arch: String,
    /// Output names: labels (multi-label) or classes (N-class).
    pub labels: Vec<String>,
    pub multi_label: bool,
    pub image_size: i64,
    /// Per output, the Youden threshold chosen on the validation set (applied unchanged to
    /// evaluation and test sets); null for a label whose validation AUROC was undefined.
    pub thresholds: Option<Vec<Option<f64>>>,
    /// Epoch (1-based) and validation mean AUROC of the saved weights.
    pub epoch: Option<u64>,
    pub val_mean_auroc: Option<f64>,
    /// `finetune` or `linear`; where the encoder came from.
    pub mode: String,
    pub init: String,
}

impl ModelCard {
    /// The card beside a model file: `X.json` for `X.pth`.
    pub fn path_for(model: &Path) -> PathBuf {
        model.with_extension("json")
    }

    pub fn read(model: &Path) -> Result<Self, CheckpointError> {
        let path = Self::path_for(model);
        let text = std::fs::read_to_string(&path).map_err(|e| CheckpointError::Io(e).in_file(&path))?;
        serde_json::from_str(&text).map_err(|e| CheckpointError::Mapping(format!("{}: {e}", path.display())))
    }

    pub fn write(&self, model: &Path) -> Result<(), CheckpointError> {
        let path = Self::path_for(model);
        let text = serde_json::to_string_pretty(self).expect("a card serialises");
        crate::atomic::write(&path, text.as_bytes()).map_err(|e| CheckpointError::Io(e).in_file(&path))
    }
}

/// A classifier and the variables it lives in.
pub struct Classifier {
    pub vs: nn::VarStore,
    pub net: Encoder,
    pub multi_label: bool,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("net", &self.net.config())
            .field("multi_label", &self.multi_label)
            .finish()
    }
}

impl Classifier {
    /// torchvision's initialisation (from libtorch's generator: seed it first).
    pub fn new(arch: Arch, outputs: i64, multi_label: bool, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let config =
            EncoderConfig { arch, in_channels: 1, head: HeadSpec::Linear { out: outputs }, bn_splits: 1 };
        let net = Encoder::new(&vs.root(), config);
        Self { vs, net, multi_label }
    }

    /// A saved classifier: `best.pth` (any state dict with `conv1` ... `fc`) and its card.
    pub fn load(model: &Path, device: Device) -> Result<(Self, ModelCard), CheckpointError> {
        let card = ModelCard::read(model)?;
        let arch: Arch =
            card.arch.parse().map_err(|e| CheckpointError::Mapping(format!("{}: {e}", model.display())))?;
        let classifier = Self::new(arch, card.labels.len() as i64, card.multi_label, device);
        let weights = load_weights(model)?;
        if weights.head != (HeadSpec::Linear { out: card.labels.len() as i64 }) {
            return Err(CheckpointError::Mapping(format!(
                "{}: head {} does not fit the {} outputs of its card",
                model.display(),
                weights.head,
                card.labels.len()
            ))
            .in_file(model));
        }
        weights.load_into(&classifier.net, LoadOptions::default()).map_err(|e| e.in_file(model))?;
        Ok((classifier, card))
    }

    /// Starts the encoder from `path` (CheSS/MoCo checkpoint, torchvision ImageNet weights,
    /// extracted encoder, safetensors); the head keeps its initial values unless it fits.
    pub fn init_from(&self, path: &Path) -> Result<LoadReport, CheckpointError> {
        let weights = load_weights(path)?;
        if let Some(arch) = weights.arch
            && arch != self.net.config().arch
        {
            return Err(CheckpointError::Mapping(format!(
                "{} holds a {}, not the {} asked for (--arch)",
                path.display(),
                arch.name(),
                self.net.config().arch.name()
            )));
        }
        weights.load_into(&self.net, LoadOptions::default()).map_err(|e| e.in_file(path))
    }

    /// Linear evaluation's head: N(0, 0.01) weights and zero bias, as MoCo's `main_lincls.py`.
    pub fn reset_head(&self) {
        tch::no_grad(|| {
            for (name, mut t) in self.vs.variables() {
                if name == "fc.weight" {
                    let _ = t.normal_(0.0, 0.01);
                } else if name == "fc.bias" {
                    let _ = t.zero_();
                }
            }
        });
    }

    /// Freezes everything but `fc`; returns the head's parameters.
    pub fn freeze_encoder(&mut self) -> Vec<Tensor> {
        let mut head = Vec::new();
        for (name, mut t) in self.vs.variables() {
            if name.starts_with("fc.") {
                head.push(t);
            } else {
                let _ = t.requires_grad_(false);
            }
        }
        head.sort_by_key(|t| t.size().len() == 1); // weight, then bias
        head
    }

    /// Parameters in `state_dict()` order (what the optimiser steps and checkpoints index).
    pub fn parameters(&self) -> Vec<Tensor> {
        self.net
            .named_tensors("")
            .into_iter()
            .filter(|t| t.tensor.requires_grad())
            .map(|t| t.tensor)
            .collect()
    }

    /// Every tensor that ranks must hold equal (parameters and buffers).
    pub fn state(&self) -> Vec<Tensor> {
        self.net.named_tensors("").into_iter().map(|t| t.tensor).collect()
    }

    /// Logits; with `frozen`, the encoder runs in eval mode without gradients (linear probe).
    pub fn logits(&self, x: &Tensor, train: bool, frozen: bool) -> Tensor {
        if frozen {
            let features = tch::no_grad(|| self.net.features_t(x, false));
            self.net.head_forward(&features)
        } else {
            self.net.forward_t(x, train)
        }
    }

    /// Probabilities from logits: sigmoid per label, or softmax over classes.
    pub fn probabilities(&self, logits: &Tensor) -> Tensor {
        let logits = logits.to_kind(Kind::Float);
        if self.multi_label { logits.sigmoid() } else { logits.softmax(-1, Kind::Float) }
    }

    /// The weights as `torch.save(model.state_dict())` writes them, atomically.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        checkpoint::save_state_dict(path, &self.net)
    }
}
