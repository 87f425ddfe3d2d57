//! `load_checkpoint`: reading a CheSS-layout training checkpoint (ResNet-50 MoCo, K = 65,536,
//! SGD momentum: about 300 MB) into memory, `chess::checkpoint::load` against
//! `torch.load(weights_only=True)`. Median of 5 loads each, after one warm-up load (page cache).
mod common;

use std::time::Instant;

use chess::model::{Moco, MocoConfig, MocoTrainer, StepOptions};
use chess::training::{RUN_KEY, RunPosition, RunState};
use chess::{SgdConfig, checkpoint};
use tch::{Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    if !common::benching("load_checkpoint") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let moco = Moco::new(MocoConfig::default(), Device::Cpu)?;
    let mut trainer = MocoTrainer::new(moco, SgdConfig::default(), StepOptions::default())?;
    // One small step, so that the optimiser holds momentum buffers as in a real checkpoint.
    let x = Tensor::randn([2, 1, 32, 32], (Kind::Float, Device::Cpu));
    trainer.step(&x, &x, 0.03)?;
    let state = RunState {
        position: RunPosition { epoch: 1, step: 0 },
        global_step: 1,
        seed: 0,
        scaler: None,
        ..Default::default()
    };
    let path = dir.path().join(state.position.file_name());
    let root = checkpoint::moco::to_value(&trainer, 1, 0.03, vec![(RUN_KEY.to_string(), state.to_value())]);
    checkpoint::save(&path, &root)?;
    let size_mb = std::fs::metadata(&path)?.len() as f64 / 1e6;
    drop(trainer);

    let n = 5;
    let mut times = Vec::new();
    for i in 0..=n {
        let t = Instant::now();
        let ckpt = checkpoint::load(&path)?;
        assert!(ckpt.tensors().len() > 600);
        if i > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let rust = common::median(times);
    let mut cmd = common::python();
    cmd.arg(common::root().join("benches/python/load_checkpoint.py")).arg(&path).arg((n + 1).to_string());
    let python = common::last_json(&common::run(cmd)?)?["median_s"].as_f64().unwrap_or(f64::NAN);
    println!(
        "load_checkpoint: {size_mb:.0} MB file, median {rust:.3} s (rust) vs {python:.3} s (torch.load)"
    );
    common::record(
        "load_checkpoint",
        rust,
        python,
        python / rust,
        "seconds (lower is faster)",
        serde_json::json!({ "file_mb": size_mb }),
    )
}
