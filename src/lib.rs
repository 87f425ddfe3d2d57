//! chess-rs: CheSS, the chest X-ray foundation model (MoCo v2 on a ResNet), on libtorch.
//!
//! Map of the crate:
//! - [`data`]: decoding radiographs to grey 0..255 values; resize and CheSS normalisation.
//! - [`device`]: device choice (`auto | cpu | cuda[:N]`), autocast precision, channels_last, seeds.
//! - [`model`]: torchvision-named ResNet encoders and heads, split-batch BN, and [`model::moco`]
//!   (queue, momentum encoder, InfoNCE, the whole training step).
//! - [`distributed`]: multi-process data parallelism on libtorch's c10d (Gloo, NCCL), launched
//!   by torchrun; [`distributed::DataParallel`] for any model.
//! - [`atomic`]: files written whole or not at all (temporary file, fsync, rename).
//! - [`checkpoint`]: `torch.save` files read and written in Rust (zip and legacy formats,
//!   whitelisted unpickling), weight mapping into encoders, MoCo checkpoints in the original layout.
//! - [`training`]: the home of a training run, shared by every program: run folder
//!   (`config.json`, `metrics.jsonl`, atomic checkpoints, `--resume auto`), the epoch loop around
//!   a task, progress and throughput, stop signals agreed across ranks, the shared flags, and
//!   the exact-resume rule.
//! - [`tasks`]: each program's step, checkpoint and evaluation as a [`training::Task`]
//!   (MoCo pretraining so far).
//! - [`losses`]: image losses for bone suppression: L1, MSE, SSIM and MS-SSIM (as pytorch-msssim),
//!   a perceptual loss on a frozen encoder, and weighted sums given as `l1=0.16,ms-ssim=0.84`.
//! - [`metrics`]: evaluation (the kNN monitor of pretraining).
//! - [`optim`]: SGD, Adam and AdamW, learning-rate schedules and fp16 loss scaling, with state in
//!   PyTorch's `state_dict()` layout for checkpoints.
//! - [`panics`]: decoder panics caught without a word on stderr.
//! - [`plot`]: PNG figures (training and ROC curves, confusion, Grad-CAM, grids), bundled font.
//!
//! Everything on libtorch sits behind the default feature `torch`; without it the crate is the
//! image decoders ([`data`] less the loader and augmentations) and [`atomic`].
pub mod atomic;
#[cfg(feature = "torch")]
pub mod checkpoint;
pub mod data;
#[cfg(feature = "torch")]
pub mod device;
#[cfg(feature = "torch")]
pub mod distributed;
#[cfg(feature = "torch")]
mod ffi;
#[cfg(feature = "torch")]
pub mod losses;
#[cfg(feature = "torch")]
pub mod metrics;
#[cfg(feature = "torch")]
pub mod model;
#[cfg(feature = "torch")]
pub mod nn;
#[cfg(feature = "torch")]
pub mod optim;
pub mod panics;
#[cfg(feature = "torch")]
pub mod plot;
#[cfg(feature = "torch")]
pub mod tasks;
#[cfg(feature = "torch")]
pub mod training;

/// Version of the libtorch this crate was built against (from the wheel's `version.py`).
#[cfg(feature = "torch")]
pub const LIBTORCH_VERSION: &str = env!("CHESS_LIBTORCH_VERSION");

#[cfg(feature = "torch")]
pub use device::{DeviceSpec, Precision};
#[cfg(feature = "torch")]
pub use model::{Arch, Encoder, EncoderConfig, HeadSpec, Moco, MocoConfig, MocoTrainer};
#[cfg(feature = "torch")]
pub use optim::{Adam, AdamConfig, LrScheduler, Optimizer, Sgd, SgdConfig};

/// How a command-line run ends: on failure, one line `error: what: why` on stderr and exit
/// code 1, whatever `RUST_BACKTRACE` says (a user with a bad file needs its name, not a stack).
/// Each cause is named once: the errors of this crate already print their source in their own
/// message, where `{:#}` would repeat it.
pub fn exit_code<E: AsRef<dyn std::error::Error>>(result: Result<(), E>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_line(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

fn error_line(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line = format!("{line}: {text}");
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::data;

    #[test]
    fn error_line_names_each_cause_once() {
        let io = std::io::Error::other("disk on fire");
        let typed = data::DatasetError::Io { path: "/x/files.txt".into(), source: io };
        assert_eq!(super::error_line(&typed), "/x/files.txt: disk on fire");
        #[derive(Debug, thiserror::Error)]
        #[error("reading the data list")]
        struct Context(#[source] data::DatasetError);
        let io = std::io::Error::other("disk on fire");
        let outer = Context(data::DatasetError::Io { path: "/x/files.txt".into(), source: io });
        assert_eq!(super::error_line(&outer), "reading the data list: /x/files.txt: disk on fire");
    }
}
