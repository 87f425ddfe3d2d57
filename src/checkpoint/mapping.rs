//! From whatever a user brings (a CheSS MoCo checkpoint, a torchvision ImageNet state dict, an
//! extracted encoder, a fine-tuned model) to the tensors of an [`Encoder`].
use std::collections::{BTreeSet, HashMap};
use std::fmt;

use tch::Tensor;

use super::{Checkpoint, CheckpointError, Format, Value};
use crate::model::{Arch, Encoder, HeadSpec, StateDict};

/// The encoder part of a checkpoint, prefix removed.
#[derive(Debug)]
pub struct EncoderWeights {
    tensors: HashMap<String, Tensor>,
    /// Entries of the state dict outside the encoder (key encoder, queue, ...).
    others: usize,
    pub prefix: String,
    pub head: HeadSpec,
    pub in_channels: i64,
    pub arch: Option<Arch>,
    pub format: Format,
}

/// How strictly to load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Accept missing backbone tensors (they keep their initial values).
    pub partial: bool,
}

/// What a load did, printed as one line.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub loaded: usize,
    pub ignored: usize,
    pub missing: Vec<String>,
    pub head: HeadSpec,
    pub prefix: String,
    pub format: Format,
    /// `conv1` adapted between 3 and 1 input channels.
    pub conv1_adapted: Option<(i64, i64)>,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "loaded {}, ignored {}, missing {}", self.loaded, self.ignored, self.missing.len())?;
        if let Some(first) = self.missing.first() {
            write!(f, " (first: {first})")?;
        }
        write!(f, "; head: {}", self.head)?;
        let prefix = if self.prefix.is_empty() { "none" } else { self.prefix.as_str() };
        write!(f, "; prefix: {prefix}")?;
        if let Some((from, to)) = self.conv1_adapted {
            write!(f, "; conv1 adapted from {from} to {to} channel(s)")?;
        }
        let format = match self.format {
            Format::Zip => "torch zip format",
            Format::Legacy => "torch legacy format",
        };
        write!(f, "; source: {format}")
    }
}

/// Prefixes, most specific first: DDP-wrapped MoCo, MoCo, DDP, plain torchvision.
const PREFIXES: [&str; 4] = ["module.encoder_q.", "encoder_q.", "module.", ""];

/// The state dict inside a checkpoint: `state_dict`, `model` or `state` entries, or the root.
fn state_dict(root: &Value) -> Result<&Value, CheckpointError> {
    for key in ["state_dict", "model", "model_state_dict", "state"] {
        if let Some(v @ (Value::Dict(_) | Value::OrderedDict(_))) = root.get(key) {
            return Ok(v);
        }
    }
    match root {
        Value::Dict(_) | Value::OrderedDict(_) => Ok(root),
        other => Err(CheckpointError::Mapping(format!(
            "checkpoint holds a {}, not a state dict",
            other.type_name()
        ))),
    }
}

impl EncoderWeights {
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<Self, CheckpointError> {
        let sd = state_dict(&ckpt.root)?;
        let all: Vec<(String, Tensor)> = sd.flatten();
        let names: BTreeSet<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        let prefix = PREFIXES
            .iter()
            .find(|p| names.contains(format!("{p}conv1.weight").as_str()))
            .ok_or_else(|| {
                CheckpointError::Mapping("no ResNet found: no 'conv1.weight' under any known prefix".into())
            })?
            .to_string();
        let tensors: HashMap<String, Tensor> = all
            .iter()
            .filter_map(|(n, t)| n.strip_prefix(&prefix).map(|n| (n.to_string(), t.shallow_clone())))
            .collect();
        let others = all.len() - tensors.len();
        let dim0 = |n: &str| tensors.get(n).map(|t| t.size()[0]);
        let head = match (dim0("fc.0.weight"), dim0("fc.2.weight"), dim0("fc.weight")) {
            (Some(hidden), Some(out), _) => HeadSpec::Mlp { hidden, out },
            (_, _, Some(out)) => HeadSpec::Linear { out },
            _ => HeadSpec::None,
        };
        let in_channels = tensors["conv1.weight"].size()[1];
        let layer3_blocks = tensors
            .keys()
            .filter_map(|n| n.strip_prefix("layer3.")?.split('.').next())
            .collect::<BTreeSet<_>>()
            .len();
        let bottleneck = tensors.contains_key("layer1.0.conv3.weight");
        let arch = match (bottleneck, layer3_blocks) {
            (false, 2) => Some(Arch::ResNet18),
            (false, 6) => Some(Arch::ResNet34),
            (true, 6) => Some(Arch::ResNet50),
            _ => None,
        };
        Ok(Self { tensors, others, prefix, head, in_channels, arch, format: ckpt.format })
    }

    /// Tensors under their encoder names (prefix removed).
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    /// Copies the weights into `encoder`. Backbone tensors must all be present (unless
    /// `options.partial`) with matching shapes; `conv1` is adapted between 1 and 3 channels
    /// (RGB summed into grey, grey spread over RGB); head tensors load when shapes match and
    /// otherwise keep their initial values (a new head for a new task).
    pub fn load_into(&self, encoder: &Encoder, options: LoadOptions) -> Result<LoadReport, CheckpointError> {
        let targets = encoder.named_tensors("");
        let mut used = BTreeSet::new();
        let mut missing = Vec::new();
        let mut conv1_adapted = None;
        let mut pending = Vec::new();
        for target in &targets {
            let is_head = target.name.starts_with("fc.");
            let Some(src) = self.tensors.get(&target.name) else {
                if !is_head {
                    missing.push(target.name.clone());
                }
                continue;
            };
            let (want, have) = (target.tensor.size(), src.size());
            let value = if want == have {
                src.shallow_clone()
            } else if target.name == "conv1.weight"
                && want.len() == 4
                && have.len() == 4
                && want[0] == have[0]
                && want[2..] == have[2..]
            {
                conv1_adapted = Some((have[1], want[1]));
                match (have[1], want[1]) {
                    (3, 1) => src.sum_dim_intlist(1, true, src.kind()),
                    (1, 3) => src.repeat([1, 3, 1, 1]) / 3.0,
                    _ => return Err(shape_error(&target.name, &want, &have)),
                }
            } else if is_head {
                continue;
            } else {
                return Err(shape_error(&target.name, &want, &have));
            };
            used.insert(target.name.clone());
            pending.push((target.tensor.shallow_clone(), value));
        }
        if !missing.is_empty() && !options.partial {
            return Err(CheckpointError::Mapping(format!(
                "{} backbone tensor(s) missing (first: {}); pass the partial-load option to accept",
                missing.len(),
                missing[0]
            )));
        }
        tch::no_grad(|| -> Result<(), CheckpointError> {
            for (mut dst, src) in pending {
                dst.f_copy_(&src)?;
            }
            Ok(())
        })?;
        Ok(LoadReport {
            loaded: used.len(),
            ignored: self.tensors.len() - used.len() + self.others,
            missing,
            head: self.head,
            prefix: self.prefix.clone(),
            format: self.format,
            conv1_adapted,
        })
    }
}

fn shape_error(name: &str, want: &[i64], have: &[i64]) -> CheckpointError {
    CheckpointError::Mapping(format!("tensor '{name}' has shape {have:?}, the encoder expects {want:?}"))
}
