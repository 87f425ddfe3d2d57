//! Learning-rate schedules stepped once per epoch, computing what `torch.optim.lr_scheduler`
//! computes (its recursive "chainable" forms included, whose rounding differs from the closed
//! forms) and saving what its `state_dict()` returns.
//!
//! Like PyTorch's, a scheduler is made from the optimiser, whose lr it sets (and whose
//! `initial_lr` it records), then stepped after each epoch's optimiser steps:
//!
//! ```ignore
//! let mut schedule = CosineAnnealingLr::new(&mut adam, 100, 0.0)?;
//! for epoch in 0..100 {
//!     train_one_epoch(&mut adam)?;
//!     schedule.step_optimizer(&mut adam, None);
//! }
//! ```
//!
//! The recursive forms read "the optimiser's current lr"; here that is the lr the scheduler
//! last returned, which is the same thing unless something else changes the optimiser's lr.
//! (The MoCo pretraining's own per-epoch cosine is [`crate::training::schedule::LrSchedule`],
//! the original's closed form.)
use std::f64::consts::PI;

use super::{OptimError, Optimizer, bad, entry, integer, items, number};
use crate::checkpoint::Value;

/// A learning-rate schedule over epochs, as PyTorch's `LRScheduler` / `ReduceLROnPlateau`.
pub trait LrScheduler {
    /// Ends one epoch (PyTorch's `scheduler.step()` / `scheduler.step(metric)`) and returns the
    /// lr for the next one. `metric` is what [`ReduceLrOnPlateau`] watches (`None` counts as a
    /// bad epoch, as NaN does in PyTorch); the other schedules ignore it.
    fn step(&mut self, metric: Option<f64>) -> f64;

    /// The lr last computed (`get_last_lr()[0]`).
    fn lr(&self) -> f64;

    /// Exactly what PyTorch's `scheduler.state_dict()` returns.
    fn state_dict(&self) -> Value;

    /// Restores what [`LrScheduler::state_dict`] (or PyTorch) wrote. As in PyTorch, this does
    /// not touch the optimiser: its own state dict restores its lr.
    fn load_state_dict(&mut self, state: &Value) -> Result<(), OptimError>;

    /// [`LrScheduler::step`], then sets the optimiser's lr to the result.
    fn step_optimizer(&mut self, optimizer: &mut dyn Optimizer, metric: Option<f64>) -> f64 {
        let lr = self.step(metric);
        optimizer.set_lr(lr);
        lr
    }
}

/// The state `LRScheduler` keeps for every epoch-based schedule (one parameter group).
#[derive(Debug, Clone, PartialEq)]
struct EpochCounter {
    base_lr: f64,
    last_epoch: i64,
    step_count: i64,
    last_lr: f64,
}

impl EpochCounter {
    /// `LRScheduler.__init__` with `last_epoch=-1` up to its initial step: `initial_lr` is set
    /// on the optimiser unless present (`setdefault`), and is the base lr.
    fn new(optimizer: &mut dyn Optimizer) -> Self {
        let base_lr = optimizer.initial_lr().unwrap_or_else(|| optimizer.lr());
        optimizer.set_initial_lr(base_lr);
        Self { base_lr, last_epoch: -1, step_count: 0, last_lr: optimizer.lr() }
    }

    /// `_initial_step`: one step whose lr the schedule computes in its initial mode.
    fn initial_step(&mut self, optimizer: &mut dyn Optimizer, lr: impl Fn(&Self, bool) -> f64) {
        self.step_count += 1;
        self.last_epoch += 1;
        self.last_lr = lr(self, true);
        optimizer.set_lr(self.last_lr);
    }

    fn step(&mut self, lr: impl Fn(&Self, bool) -> f64) -> f64 {
        self.step_count += 1;
        self.last_epoch += 1;
        self.last_lr = lr(self, false);
        self.last_lr
    }

    fn entries(&self) -> Vec<(Value, Value)> {
        vec![
            (Value::str("base_lrs"), Value::List(vec![Value::Float(self.base_lr)])),
            (Value::str("last_epoch"), Value::Int(self.last_epoch)),
            (Value::str("_step_count"), Value::Int(self.step_count)),
            (Value::str("_is_initial"), Value::Bool(false)),
            (Value::str("_get_lr_called_within_step"), Value::Bool(false)),
            (Value::str("_last_lr"), Value::List(vec![Value::Float(self.last_lr)])),
        ]
    }

    fn load(state: &Value) -> Result<Self, OptimError> {
        let what = "the scheduler state";
        Ok(Self {
            base_lr: single_number(entry(state, "base_lrs", what)?, "base_lrs")?,
            last_epoch: integer(entry(state, "last_epoch", what)?, "last_epoch")?,
            step_count: integer(entry(state, "_step_count", what)?, "_step_count")?,
            last_lr: single_number(entry(state, "_last_lr", what)?, "_last_lr")?,
        })
    }
}

/// The one value of a per-group list (schedulers here drive one parameter group).
fn single_number(v: &Value, what: &str) -> Result<f64, OptimError> {
    match items(v, what)? {
        [x] => number(x, what),
        other => Err(bad(format!("'{what}' holds {} values; one parameter group expected", other.len()))),
    }
}

fn invalid(msg: impl Into<String>) -> OptimError {
    OptimError::Invalid(msg.into())
}

/// `CosineAnnealingLR(optimizer, T_max, eta_min)`: the lr follows half a cosine from the base lr
/// down to `eta_min` over `t_max` epochs (then back up, as PyTorch's does past `T_max`).
#[derive(Debug, Clone, PartialEq)]
pub struct CosineAnnealingLr {
    pub t_max: i64,
    pub eta_min: f64,
    counter: EpochCounter,
}

impl CosineAnnealingLr {
    pub fn new(optimizer: &mut dyn Optimizer, t_max: i64, eta_min: f64) -> Result<Self, OptimError> {
        if t_max <= 0 {
            return Err(invalid(format!("T_max {t_max}: must be at least 1")));
        }
        let mut s = Self { t_max, eta_min, counter: EpochCounter::new(optimizer) };
        let (t, e) = (s.t_max, s.eta_min);
        s.counter.initial_step(optimizer, |c, initial| Self::lr_at(c, initial, t, e));
        Ok(s)
    }

    /// `CosineAnnealingLR.get_lr`, branch for branch.
    fn lr_at(c: &EpochCounter, initial: bool, t_max: i64, eta_min: f64) -> f64 {
        let (epoch, t) = (c.last_epoch as f64, t_max as f64);
        if initial {
            c.last_lr
        } else if c.step_count == 1 && c.last_epoch > 0 {
            eta_min + (c.base_lr - eta_min) * (1.0 + (epoch * PI / t).cos()) / 2.0
        } else if (c.last_epoch - 1 - t_max).rem_euclid(2 * t_max) == 0 {
            c.last_lr + (c.base_lr - eta_min) * (1.0 - (PI / t).cos()) / 2.0
        } else {
            (1.0 + (PI * epoch / t).cos()) / (1.0 + (PI * (epoch - 1.0) / t).cos()) * (c.last_lr - eta_min)
                + eta_min
        }
    }
}

impl LrScheduler for CosineAnnealingLr {
    fn step(&mut self, _metric: Option<f64>) -> f64 {
        let (t, e) = (self.t_max, self.eta_min);
        self.counter.step(|c, initial| Self::lr_at(c, initial, t, e))
    }

    fn lr(&self) -> f64 {
        self.counter.last_lr
    }

    fn state_dict(&self) -> Value {
        let mut d = vec![
            (Value::str("T_max"), Value::Int(self.t_max)),
            (Value::str("eta_min"), Value::Float(self.eta_min)),
        ];
        d.extend(self.counter.entries());
        Value::Dict(d)
    }

    fn load_state_dict(&mut self, state: &Value) -> Result<(), OptimError> {
        let what = "the CosineAnnealingLR state";
        let t_max = integer(entry(state, "T_max", what)?, "T_max")?;
        if t_max <= 0 {
            return Err(bad(format!("T_max {t_max}")));
        }
        let eta_min = number(entry(state, "eta_min", what)?, "eta_min")?;
        self.counter = EpochCounter::load(state)?;
        (self.t_max, self.eta_min) = (t_max, eta_min);
        Ok(())
    }
}

/// `StepLR(optimizer, step_size, gamma)`: the lr is multiplied by `gamma` every `step_size`
/// epochs.
#[derive(Debug, Clone, PartialEq)]
pub struct StepLr {
    pub step_size: i64,
    pub gamma: f64,
    counter: EpochCounter,
}

impl StepLr {
    pub fn new(optimizer: &mut dyn Optimizer, step_size: i64, gamma: f64) -> Result<Self, OptimError> {
        if step_size <= 0 {
            return Err(invalid(format!("step_size {step_size}: must be at least 1")));
        }
        let mut s = Self { step_size, gamma, counter: EpochCounter::new(optimizer) };
        let (n, g) = (s.step_size, s.gamma);
        s.counter.initial_step(optimizer, |c, _| Self::lr_at(c, n, g));
        Ok(s)
    }

    fn lr_at(c: &EpochCounter, step_size: i64, gamma: f64) -> f64 {
        if c.last_epoch == 0 || c.last_epoch.rem_euclid(step_size) != 0 {
            c.last_lr
        } else {
            c.last_lr * gamma
        }
    }
}

impl LrScheduler for StepLr {
    fn step(&mut self, _metric: Option<f64>) -> f64 {
        let (n, g) = (self.step_size, self.gamma);
        self.counter.step(|c, _| Self::lr_at(c, n, g))
    }

    fn lr(&self) -> f64 {
        self.counter.last_lr
    }

    fn state_dict(&self) -> Value {
        let mut d = vec![
            (Value::str("step_size"), Value::Int(self.step_size)),
            (Value::str("gamma"), Value::Float(self.gamma)),
        ];
        d.extend(self.counter.entries());
        Value::Dict(d)
    }

    fn load_state_dict(&mut self, state: &Value) -> Result<(), OptimError> {
        let what = "the StepLR state";
        let step_size = integer(entry(state, "step_size", what)?, "step_size")?;
        if step_size <= 0 {
            return Err(bad(format!("step_size {step_size}")));
        }
        let gamma = number(entry(state, "gamma", what)?, "gamma")?;
        self.counter = EpochCounter::load(state)?;
        (self.step_size, self.gamma) = (step_size, gamma);
        Ok(())
    }
}

/// `MultiStepLR(optimizer, milestones, gamma)`: the lr is multiplied by `gamma` at each milestone
/// epoch (MoCo's `--schedule 120,160`).
#[derive(Debug, Clone, PartialEq)]
pub struct MultiStepLr {
    /// Milestone epochs with how often each was given (PyTorch keeps a `Counter`).
    milestones: Vec<(i64, i64)>,
    pub gamma: f64,
    counter: EpochCounter,
}

impl MultiStepLr {
    pub fn new(optimizer: &mut dyn Optimizer, milestones: &[i64], gamma: f64) -> Result<Self, OptimError> {
        let mut counted: Vec<(i64, i64)> = Vec::new();
        for &m in milestones {
            match counted.iter_mut().find(|(e, _)| *e == m) {
                Some((_, n)) => *n += 1,
                None => counted.push((m, 1)),
            }
        }
        let mut s = Self { milestones: counted, gamma, counter: EpochCounter::new(optimizer) };
        let g = s.gamma;
        let ms = s.milestones.clone();
        s.counter.initial_step(optimizer, |c, _| Self::lr_at(c, &ms, g));
        Ok(s)
    }

    /// Milestone epochs with their multiplicity, in the order given.
    pub fn milestones(&self) -> &[(i64, i64)] {
        &self.milestones
    }

    fn lr_at(c: &EpochCounter, milestones: &[(i64, i64)], gamma: f64) -> f64 {
        match milestones.iter().find(|(e, _)| *e == c.last_epoch) {
            None => c.last_lr,
            // Python's float ** int is C pow on two doubles.
            Some(&(_, n)) => c.last_lr * gamma.powf(n as f64),
        }
    }
}

impl LrScheduler for MultiStepLr {
    fn step(&mut self, _metric: Option<f64>) -> f64 {
        let g = self.gamma;
        let ms = &self.milestones;
        self.counter.step(|c, _| Self::lr_at(c, ms, g))
    }

    fn lr(&self) -> f64 {
        self.counter.last_lr
    }

    /// `milestones` is written as a plain dict `{epoch: count}`: this crate's pickler writes no
    /// `collections.Counter`, and PyTorch's `MultiStepLR.step()` reads a dict the same way.
    fn state_dict(&self) -> Value {
        let milestones = self.milestones.iter().map(|&(e, n)| (Value::Int(e), Value::Int(n))).collect();
        let mut d = vec![
            (Value::str("milestones"), Value::Dict(milestones)),
            (Value::str("gamma"), Value::Float(self.gamma)),
        ];
        d.extend(self.counter.entries());
        Value::Dict(d)
    }

    fn load_state_dict(&mut self, state: &Value) -> Result<(), OptimError> {
        let what = "the MultiStepLR state";
        let m = entry(state, "milestones", what)?;
        let milestones = match m.as_dict() {
            Some(d) => d
                .iter()
                .map(|(k, v)| Ok((integer(k, "milestone")?, integer(v, "milestone count")?)))
                .collect::<Result<Vec<_>, OptimError>>()?,
            None => return Err(bad(format!("'milestones' is a {}, not a dict", m.type_name()))),
        };
        let gamma = number(entry(state, "gamma", what)?, "gamma")?;
        self.counter = EpochCounter::load(state)?;
        (self.milestones, self.gamma) = (milestones, gamma);
        Ok(())
    }
}

/// Which epoch the GAN recipes' linear decay starts at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearDecayRule {
    /// pix2pix / CycleGAN's `lambda_rule`, `1 - max(0, e + 1 - n) / (decay + 1)`: the first
    /// decayed epoch is `n`, and the lr reaches 0 after epoch `n + decay`.
    Pix2pix,
    /// NVlabs SPADE's `update_learning_rate` (`lr -= lr0 / niter_decay` after each epoch past
    /// `niter`), in closed form `1 - max(0, e - n) / decay`: the first decayed epoch is `n + 1`,
    /// the last `n + decay - 1` runs at `lr0 / decay`. (SPADE's TTUR halves G's and doubles D's
    /// lr; give each optimiser its own scheduler.)
    Spade,
}

/// A constant lr for `n_epochs`, then linear decay to 0 over `n_epochs_decay` (the GAN recipes),
/// saved as PyTorch's `LambdaLR` with that function; clamped at 0 past the end (the Python
/// lambdas would go negative).
#[derive(Debug, Clone, PartialEq)]
pub struct LinearDecayLr {
    pub n_epochs: i64,
    pub n_epochs_decay: i64,
    pub rule: LinearDecayRule,
    counter: EpochCounter,
}

impl LinearDecayLr {
    pub fn new(
        optimizer: &mut dyn Optimizer,
        n_epochs: i64,
        n_epochs_decay: i64,
        rule: LinearDecayRule,
    ) -> Result<Self, OptimError> {
        let min_decay = if rule == LinearDecayRule::Spade { 1 } else { 0 };
        if n_epochs < 0 || n_epochs_decay < min_decay {
            return Err(invalid(format!("linear decay over {n_epochs} + {n_epochs_decay} epochs")));
        }
        let mut s = Self { n_epochs, n_epochs_decay, rule, counter: EpochCounter::new(optimizer) };
        let (n, d) = (n_epochs, n_epochs_decay);
        s.counter.initial_step(optimizer, |c, _| c.base_lr * decay_factor(rule, n, d, c.last_epoch));
        Ok(s)
    }

    /// The `LambdaLR` multiplier at `epoch` (0-based).
    pub fn factor(&self, epoch: i64) -> f64 {
        decay_factor(self.rule, self.n_epochs, self.n_epochs_decay, epoch)
    }
}

fn decay_factor(rule: LinearDecayRule, n: i64, decay: i64, epoch: i64) -> f64 {
    let f = match rule {
        LinearDecayRule::Pix2pix if epoch < n => 1.0,
        LinearDecayRule::Pix2pix => 1.0 - (epoch - n + 1) as f64 / (decay + 1) as f64,
        LinearDecayRule::Spade if epoch <= n => 1.0,
        LinearDecayRule::Spade => 1.0 - (epoch - n) as f64 / decay as f64,
    };
    f.max(0.0)
}

impl LrScheduler for LinearDecayLr {
    fn step(&mut self, _metric: Option<f64>) -> f64 {
        let (rule, n, d) = (self.rule, self.n_epochs, self.n_epochs_decay);
        self.counter.step(|c, _| c.base_lr * decay_factor(rule, n, d, c.last_epoch))
    }

    fn lr(&self) -> f64 {
        self.counter.last_lr
    }

    fn state_dict(&self) -> Value {
        let mut d = self.counter.entries();
        d.push((Value::str("lr_lambdas"), Value::List(vec![Value::None])));
        Value::Dict(d)
    }

    /// The schedule's shape is code in PyTorch (the lambda) and configuration here: only the
    /// counters are restored.
    fn load_state_dict(&mut self, state: &Value) -> Result<(), OptimError> {
        self.counter = EpochCounter::load(state)?;
        Ok(())
    }
}

/// Whether a lower or a higher metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlateauMode {
    Min,
    Max,
}

/// How much better a metric must be to count as an improvement: relative to the best, or
/// absolute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThresholdMode {
    Rel,
    Abs,
}

/// `ReduceLROnPlateau`'s arguments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlateauConfig {
    pub mode: PlateauMode,
    /// New lr = lr * factor (< 1).
    pub factor: f64,
    /// Bad epochs tolerated before reducing.
    pub patience: i64,
    pub threshold: f64,
    pub threshold_mode: ThresholdMode,
    /// Epochs after a reduction during which bad epochs are not counted.
    pub cooldown: i64,
    pub min_lr: f64,
    /// Reductions smaller than this are skipped.
    pub eps: f64,
}

impl Default for PlateauConfig {
    /// PyTorch's defaults: min, factor 0.1, patience 10, threshold 1e-4 rel, no cooldown.
    fn default() -> Self {
        Self {
            mode: PlateauMode::Min,
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            threshold_mode: ThresholdMode::Rel,
            cooldown: 0,
            min_lr: 0.0,
            eps: 1e-8,
        }
    }
}

/// `ReduceLROnPlateau`: the lr is multiplied by `factor` when the metric has not improved for
/// more than `patience` epochs.
#[derive(Debug, Clone, PartialEq)]
pub struct ReduceLrOnPlateau {
    pub config: PlateauConfig,
    best: f64,
    num_bad_epochs: i64,
    cooldown_counter: i64,
    last_epoch: i64,
    last_lr: f64,
}

impl ReduceLrOnPlateau {
    pub fn new(optimizer: &mut dyn Optimizer, config: PlateauConfig) -> Result<Self, OptimError> {
        if config.factor >= 1.0 {
            return Err(invalid(format!("plateau factor {}: must be < 1", config.factor)));
        }
        let mut s = Self {
            config,
            best: 0.0,
            num_bad_epochs: 0,
            cooldown_counter: 0,
            last_epoch: 0,
            last_lr: optimizer.lr(),
        };
        s.best = s.mode_worse();
        Ok(s)
    }

    fn mode_worse(&self) -> f64 {
        match self.config.mode {
            PlateauMode::Min => f64::INFINITY,
            PlateauMode::Max => f64::NEG_INFINITY,
        }
    }

    /// The best metric so far.
    pub fn best(&self) -> f64 {
        self.best
    }

    pub fn num_bad_epochs(&self) -> i64 {
        self.num_bad_epochs
    }

    fn is_better(&self, a: f64) -> bool {
        let (best, th) = (self.best, self.config.threshold);
        match (self.config.mode, self.config.threshold_mode) {
            (PlateauMode::Min, ThresholdMode::Rel) => a < best * (1.0 - th),
            (PlateauMode::Min, ThresholdMode::Abs) => a < best - th,
            (PlateauMode::Max, ThresholdMode::Rel) => a > best * (th + 1.0),
            (PlateauMode::Max, ThresholdMode::Abs) => a > best + th,
        }
    }
}

impl LrScheduler for ReduceLrOnPlateau {
    fn step(&mut self, metric: Option<f64>) -> f64 {
        let current = metric.unwrap_or(f64::NAN);
        self.last_epoch += 1;
        if self.is_better(current) {
            self.best = current;
            self.num_bad_epochs = 0;
        } else {
            self.num_bad_epochs += 1;
        }
        if self.cooldown_counter > 0 {
            self.cooldown_counter -= 1;
            self.num_bad_epochs = 0;
        }
        if self.num_bad_epochs > self.config.patience {
            let old = self.last_lr;
            let new = (old * self.config.factor).max(self.config.min_lr);
            if old - new > self.config.eps {
                self.last_lr = new;
            }
            self.cooldown_counter = self.config.cooldown;
            self.num_bad_epochs = 0;
        }
        self.last_lr
    }

    fn lr(&self) -> f64 {
        self.last_lr
    }

    fn state_dict(&self) -> Value {
        let c = &self.config;
        let mode = match c.mode {
            PlateauMode::Min => "min",
            PlateauMode::Max => "max",
        };
        let threshold_mode = match c.threshold_mode {
            ThresholdMode::Rel => "rel",
            ThresholdMode::Abs => "abs",
        };
        Value::Dict(vec![
            (Value::str("factor"), Value::Float(c.factor)),
            (Value::str("default_min_lr"), Value::Float(c.min_lr)),
            (Value::str("min_lrs"), Value::List(vec![Value::Float(c.min_lr)])),
            (Value::str("patience"), Value::Int(c.patience)),
            (Value::str("cooldown"), Value::Int(c.cooldown)),
            (Value::str("eps"), Value::Float(c.eps)),
            (Value::str("last_epoch"), Value::Int(self.last_epoch)),
            (Value::str("_last_lr"), Value::List(vec![Value::Float(self.last_lr)])),
            (Value::str("mode_worse"), Value::Float(self.mode_worse())),
            (Value::str("mode"), Value::str(mode)),
            (Value::str("threshold"), Value::Float(c.threshold)),
            (Value::str("threshold_mode"), Value::str(threshold_mode)),
            (Value::str("best"), Value::Float(self.best)),
            (Value::str("cooldown_counter"), Value::Int(self.cooldown_counter)),
            (Value::str("num_bad_epochs"), Value::Int(self.num_bad_epochs)),
        ])
    }

    fn load_state_dict(&mut self, state: &Value) -> Result<(), OptimError> {
        let what = "the ReduceLROnPlateau state";
        let text = |key: &str| -> Result<String, OptimError> {
            let v = entry(state, key, what)?;
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad(format!("'{key}' is a {}, not a str", v.type_name())))
        };
        let mode = match text("mode")?.as_str() {
            "min" => PlateauMode::Min,
            "max" => PlateauMode::Max,
            other => return Err(bad(format!("mode '{other}'"))),
        };
        let threshold_mode = match text("threshold_mode")?.as_str() {
            "rel" => ThresholdMode::Rel,
            "abs" => ThresholdMode::Abs,
            other => return Err(bad(format!("threshold_mode '{other}'"))),
        };
        let num = |key: &str| number(entry(state, key, what)?, key);
        let int = |key: &str| integer(entry(state, key, what)?, key);
        let config = PlateauConfig {
            mode,
            factor: num("factor")?,
            patience: int("patience")?,
            threshold: num("threshold")?,
            threshold_mode,
            cooldown: int("cooldown")?,
            min_lr: single_number(entry(state, "min_lrs", what)?, "min_lrs")?,
            eps: num("eps")?,
        };
        *self = Self {
            config,
            best: num("best")?,
            num_bad_epochs: int("num_bad_epochs")?,
            cooldown_counter: int("cooldown_counter")?,
            last_epoch: int("last_epoch")?,
            last_lr: single_number(entry(state, "_last_lr", what)?, "_last_lr")?,
        };
        Ok(())
    }
}
