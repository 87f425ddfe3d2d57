//! The library's training run driven by a task of the test's own (no binary spawned): a small
//! two-layer classifier on synthetic data with two optimisers (Adam for the body, AdamW with
//! GAN betas for the head) and a StepLR schedule. Stopped by SIGTERM mid-epoch and resumed, it
//! repeats the uninterrupted run's losses bit for bit, and its checkpoint loads in PyTorch.
//!
//! One test only in this binary: it raises SIGTERM in its own process.
mod common;

use std::path::Path;

use chess::checkpoint::{Checkpoint, StateReader, StateWriter, Value};
use chess::data::Skipped;
use chess::model::Linear;
use chess::optim::{Adam, AdamConfig, LrScheduler, Optimizer, StepLr};
use chess::training::{Outcome, Run, RunBatch, RunConfig, RunState, StepAt, StepOutput, Task, TaskError};
use serde_json::json;
use tch::{Device, Kind, Reduction, Tensor, nn};

const N: i64 = 96;
const BATCH: i64 = 8;
const EPOCHS: u64 = 3;

struct ToyBatch {
    index: usize,
    x: Tensor,
    y: Tensor,
}

impl RunBatch for ToyBatch {
    fn index(&self) -> usize {
        self.index
    }
    fn images(&self) -> usize {
        self.x.size()[0] as usize
    }
    fn skipped(&self) -> &[Skipped] {
        &[]
    }
}

/// 96 points in 16-d, two classes by the sign of a fixed projection; each epoch in its own
/// seeded order, so that batches depend only on (epoch, batch).
fn epoch_batches(x: &Tensor, y: &Tensor, epoch: u64, start: u64) -> impl Iterator<Item = ToyBatch> {
    let order = chess::data::loader::epoch_order(N as usize, 7, epoch, true);
    let order = Tensor::from_slice(&order.iter().map(|&i| i as i64).collect::<Vec<_>>());
    let (x, y) = (x.index_select(0, &order), y.index_select(0, &order));
    (start as i64..N / BATCH).map(move |b| ToyBatch {
        index: b as usize,
        x: x.narrow(0, b * BATCH, BATCH),
        y: y.narrow(0, b * BATCH, BATCH),
    })
}

struct Classifier {
    _vs: nn::VarStore,
    body: Linear,
    head: Linear,
    opt_body: Adam,
    opt_head: Adam,
    schedule: StepLr,
    /// Raise SIGTERM during this global step.
    sigterm_at: Option<u64>,
}

impl Classifier {
    fn new(sigterm_at: Option<u64>) -> Self {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let body = Linear::new(vs.root() / "body", 16, 32);
        let head = Linear::new(vs.root() / "head", 32, 2);
        let mut opt_body = Adam::new(
            vec![body.weight.shallow_clone(), body.bias.shallow_clone()],
            AdamConfig { lr: 1e-2, weight_decay: 1e-4, ..AdamConfig::adam() },
        );
        let opt_head = Adam::new(
            vec![head.weight.shallow_clone(), head.bias.shallow_clone()],
            AdamConfig { lr: 4e-3, betas: (0.0, 0.9), ..AdamConfig::adamw() },
        );
        let schedule = StepLr::new(&mut opt_body, 1, 0.5).unwrap();
        Self { _vs: vs, body, head, opt_body, opt_head, schedule, sigterm_at }
    }
}

impl Task for Classifier {
    type Batch = ToyBatch;

    fn step(&mut self, batch: ToyBatch, at: StepAt) -> Result<StepOutput, TaskError> {
        // Dropout draws from libtorch's generator, which the run reseeds before every step.
        let hidden = self.body.forward(&batch.x).relu().dropout(0.2, true);
        let logits = self.head.forward(&hidden);
        let loss = logits.cross_entropy_loss::<Tensor>(&batch.y, None, Reduction::Mean, -100, 0.0);
        self.opt_body.zero_grad();
        self.opt_head.zero_grad();
        loss.backward();
        self.opt_body.step()?;
        self.opt_head.step()?;
        if self.sigterm_at == Some(at.global_step) {
            signal_hook::low_level::raise(signal_hook::consts::SIGTERM)?;
        }
        Ok(StepOutput {
            values: vec![("loss", loss.detach())],
            extra: vec![("lr", json!(self.opt_body.lr()))],
        })
    }

    fn end_epoch(
        &mut self,
        _epoch: u64,
        _means: &chess::training::EpochMeans,
        _log: &mut chess::training::MetricsLog,
    ) -> Result<Vec<(&'static str, serde_json::Value)>, TaskError> {
        let lr = self.schedule.step_optimizer(&mut self.opt_body, None);
        Ok(vec![("next_lr", json!(lr))])
    }

    fn checkpoint(&self, state: &RunState) -> Result<Value, TaskError> {
        Ok(StateWriter::new()
            .model("body", &self.body)
            .model("head", &self.head)
            .optimizer("body", &self.opt_body)
            .optimizer("head", &self.opt_head)
            .scheduler("body", &self.schedule)
            .finish(state))
    }

    fn restore(&mut self, ckpt: &Checkpoint, _batches_per_epoch: u64) -> Result<RunState, TaskError> {
        let state = StateReader::new(ckpt)?;
        state.model("body", &self.body)?;
        state.model("head", &self.head)?;
        state.optimizer("body", &mut self.opt_body)?;
        state.optimizer("head", &mut self.opt_head)?;
        state.scheduler("body", &mut self.schedule)?;
        Ok(state.run()?)
    }
}

fn run(out: &Path, sigterm_at: Option<u64>, resume: bool) -> Outcome {
    tch::manual_seed(42);
    let x = Tensor::randn([N, 16], (Kind::Float, Device::Cpu));
    let y =
        x.matmul(&Tensor::linspace(-1.0, 1.0, 16, (Kind::Float, Device::Cpu))).gt(0.0).to_kind(Kind::Int64);
    let config = RunConfig {
        epochs: EPOCHS,
        log_every: 1,
        save_every_epochs: 1,
        save_every_iters: 0,
        max_steps: None,
        seed: 3,
        resume: resume.then(|| "auto".to_string()),
        batch_images: BATCH as usize,
    };
    let mut task = Classifier::new(sigterm_at);
    let mut run = Run::new(out.to_path_buf(), config, None, Device::Cpu).unwrap();
    run.resume(&mut task, (N / BATCH) as u64).unwrap();
    run.write_config(json!({"test": "training_run"}), json!({})).unwrap();
    run.fit(&mut task, (N / BATCH) as u64, |e, s| epoch_batches(&x, &y, e, s)).unwrap()
}

#[test]
fn a_generic_run_stopped_by_sigterm_resumes_exactly_and_its_checkpoint_loads_in_pytorch() {
    let reference = common::fixture_dir("training_run/reference");
    assert_eq!(run(&reference, None, false), Outcome::Finished);
    let full = common::losses(&reference);
    assert_eq!(full.len(), (EPOCHS * (N / BATCH) as u64) as usize);

    let stopped = common::fixture_dir("training_run/stopped");
    assert_eq!(run(&stopped, Some(17), false), Outcome::Stopped);
    let (position, path) = chess::training::latest_checkpoint(&stopped).unwrap().unwrap();
    assert_eq!((position.epoch, position.step), (1, 6), "saved after the signalled step: {}", path.display());
    assert_eq!(run(&stopped, None, true), Outcome::Finished);
    common::assert_losses_equal(("stopped and resumed", &common::losses(&stopped)), ("uninterrupted", &full));
    // The stopped epoch's record averages all its steps, those before the stop too.
    let keys = ["loss", "steps"];
    assert_eq!(common::epoch_values(&stopped, &keys), common::epoch_values(&reference, &keys));

    // The schedule halved the body's lr after each epoch in both.
    let epochs: Vec<f64> = common::metrics(&stopped)
        .iter()
        .filter(|m| m["kind"] == "epoch")
        .map(|m| m["next_lr"].as_f64().unwrap())
        .collect();
    assert_eq!(epochs, [5e-3, 2.5e-3, 1.25e-3]);

    // PyTorch: torch.load(weights_only=True), both modules' and both Adams' load_state_dict,
    // the scheduler's, with the state the run ended in.
    let last = reference.join(chess::training::RunPosition { epoch: EPOCHS, step: 0 }.file_name());
    let said = common::run_python("training_state.py", [last.to_str().unwrap()]);
    eprintln!("{said}");
    assert!(
        said.contains("loaded: models body, head; optimizers body (Adam), head (AdamW); schedulers body"),
        "{said}"
    );
}
