//! MoCo v2: a query encoder trained by SGD, a key encoder that follows it by momentum, and a
//! queue of past keys as negatives for the InfoNCE loss.
use std::sync::Arc;

use tch::{Device, Kind, Reduction, Tensor, nn};

use super::ModelError;
use super::encoder::{Encoder, EncoderConfig, HeadSpec};
use super::layers::{NamedTensor, StateDict, TensorRole, join, push};
use super::resnet::Arch;
use crate::device::{self, Precision};
use crate::distributed::{DataParallel, ProcessGroup};
use crate::optim::{GradScaler, Sgd, SgdConfig};

/// MoCo hyper-parameters; `Default` is the CheSS recipe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MocoConfig {
    pub arch: Arch,
    pub in_channels: i64,
    /// Feature dimension of q and k (128).
    pub dim: i64,
    /// Queue length K (65,536). Need not be a multiple of the batch size.
    pub queue_size: i64,
    /// Key encoder momentum m (0.999).
    pub momentum: f64,
    /// Softmax temperature T (0.2).
    pub temperature: f64,
    /// MLP projection head (MoCo v2) instead of a single linear layer.
    pub mlp: bool,
    /// Split-batch BN sub-batches; 1 is plain BN.
    pub bn_splits: i64,
}

impl Default for MocoConfig {
    fn default() -> Self {
        Self {
            arch: Arch::ResNet50,
            in_channels: 1,
            dim: 128,
            queue_size: 65_536,
            momentum: 0.999,
            temperature: 0.2,
            mlp: true,
            bn_splits: 1,
        }
    }
}

impl MocoConfig {
    pub fn encoder_config(&self) -> EncoderConfig {
        let features = self.arch.feature_dim();
        let head = if self.mlp {
            HeadSpec::Mlp { hidden: features, out: self.dim }
        } else {
            HeadSpec::Linear { out: self.dim }
        };
        EncoderConfig { arch: self.arch, in_channels: self.in_channels, head, bn_splits: self.bn_splits }
    }

    /// Whether batches of `n` images can be trained with this configuration (BatchNorm needs 2
    /// images per split; a batch must fit in the queue). Lets a run refuse a bad batch size
    /// before it starts rather than at its first step.
    pub fn check_batch_size(&self, n: i64) -> Result<(), ModelError> {
        self.validate()?;
        let bad = |m: String| Err(ModelError::Input(m));
        if n < 2 {
            return bad(format!("batch size must be at least 2 for BatchNorm, got {n}"));
        }
        if n % self.bn_splits != 0 || n / self.bn_splits < 2 {
            return bad(format!(
                "batch size {n} must be a multiple of bn splits {} with at least 2 images per split",
                self.bn_splits
            ));
        }
        if n > self.queue_size {
            return bad(format!("batch size {n} exceeds queue size K = {}", self.queue_size));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.dim < 1 {
            return bad(format!("feature dim must be positive, got {}", self.dim));
        }
        if self.queue_size < 4 {
            return bad(format!("queue size K must be at least 4, got {}", self.queue_size));
        }
        if !(0.0..=1.0).contains(&self.momentum) {
            return bad(format!("momentum must be in [0, 1], got {}", self.momentum));
        }
        if self.temperature <= 0.0 {
            return bad(format!("temperature must be positive, got {}", self.temperature));
        }
        if self.bn_splits < 1 {
            return bad(format!("bn splits must be >= 1, got {}", self.bn_splits));
        }
        if self.in_channels != 1 && self.in_channels != 3 {
            return bad(format!("input channels must be 1 or 3, got {}", self.in_channels));
        }
        Ok(())
    }
}

/// The MoCo module; its state names equal PyTorch's MoCo module (`encoder_q.*`, `encoder_k.*`,
/// `queue`, `queue_ptr`), which the original checkpoints prefix with `module.`.
#[derive(Debug)]
pub struct Moco {
    vs: nn::VarStore,
    config: MocoConfig,
    encoder_q: Encoder,
    encoder_k: Encoder,
    queue: Tensor,
    queue_ptr: Tensor,
}

impl Moco {
    /// Fresh model: random query encoder, key encoder copied from it, queue of random unit keys.
    pub fn new(config: MocoConfig, device: Device) -> Result<Self, ModelError> {
        config.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let enc = config.encoder_config();
        let encoder_q = Encoder::new(&(&root / "encoder_q"), enc);
        let encoder_k = Encoder::new(&(&root / "encoder_k"), enc);
        let queue = Tensor::randn([config.dim, config.queue_size], (Kind::Float, device));
        let queue = root.add("queue", normalize(&queue, 0), false);
        let queue_ptr = root.add("queue_ptr", Tensor::zeros([1], (Kind::Int64, device)), false);
        let moco = Self { vs, config, encoder_q, encoder_k, queue, queue_ptr };
        moco.copy_query_to_key();
        for k in moco.encoder_k.parameters() {
            let _ = k.set_requires_grad(false);
        }
        Ok(moco)
    }

    /// Makes the key encoder a copy of the query encoder (parameters and BN buffers), as at
    /// initialisation; used after loading query weights from elsewhere (`--init`).
    pub fn copy_query_to_key(&self) {
        tch::no_grad(|| {
            for (k, q) in self.encoder_k.named_tensors("").into_iter().zip(self.encoder_q.named_tensors("")) {
                k.tensor.shallow_clone().copy_(&q.tensor);
            }
        });
    }

    pub fn config(&self) -> MocoConfig {
        self.config
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn encoder_q(&self) -> &Encoder {
        &self.encoder_q
    }

    pub fn encoder_k(&self) -> &Encoder {
        &self.encoder_k
    }

    /// `[dim, K]` L2-normalised keys (columns).
    pub fn queue(&self) -> &Tensor {
        &self.queue
    }

    /// `[1]` int64: the column the next key is written to.
    pub fn queue_ptr(&self) -> &Tensor {
        &self.queue_ptr
    }

    /// Parameters of the query encoder: what the optimiser updates.
    pub fn query_parameters(&self) -> Vec<Tensor> {
        self.encoder_q.parameters()
    }

    /// `key = m * key + (1 - m) * query` for every parameter (buffers are not averaged: the key
    /// encoder's BN statistics come from its own forward passes, as in MoCo).
    pub fn momentum_update(&self) -> Result<(), ModelError> {
        let (k, q) = (self.encoder_k.parameters(), self.encoder_q.parameters());
        crate::ffi::momentum_update(&k, &q, self.config.momentum).map_err(ModelError::Step)
    }

    /// Writes `keys` `[N, dim]` into the queue at the pointer, wrapping around the end.
    pub fn enqueue(&self, keys: &Tensor) {
        let n = keys.size()[0];
        let k = self.config.queue_size;
        tch::no_grad(|| {
            let idx = (Tensor::arange(n, (Kind::Int64, self.device())) + &self.queue_ptr).remainder(k);
            let _ = self.queue.shallow_clone().index_copy_(1, &idx, &keys.to_kind(Kind::Float).t_());
            let next = (&self.queue_ptr + n).remainder(k);
            self.queue_ptr.shallow_clone().copy_(&next);
        });
    }

    /// InfoNCE logits `[N, 1 + K]`: the positive `q . k` first, then `q` against the queue, over T.
    pub fn logits(&self, q: &Tensor, k: &Tensor) -> Tensor {
        let l_pos = (q * k).sum_dim_intlist(1, true, None);
        let l_neg = q.mm(&self.queue.detach());
        Tensor::cat(&[l_pos, l_neg], 1) / self.config.temperature
    }

    /// Normalised keys of `im_k`, computed under split-BN on a shuffled batch when bn_splits > 1
    /// so that no sub-batch holds the same images for queries and keys (MoCo's shuffle-BN).
    /// The permutation comes from libtorch's CPU generator, so seeded runs repeat on any device.
    fn keys(&self, im_k: &Tensor) -> Tensor {
        tch::no_grad(|| {
            if self.config.bn_splits == 1 {
                return normalize(&self.encoder_k.forward_t(im_k, true), 1);
            }
            let n = im_k.size()[0];
            let perm = device::upload(&Tensor::randperm(n, (Kind::Int64, Device::Cpu)), im_k.device());
            let unperm = perm.argsort(0, false);
            let k = self.encoder_k.forward_t(&im_k.index_select(0, &perm), true);
            normalize(&k, 1).index_select(0, &unperm)
        })
    }

    /// Shuffle-BN across ranks, as the original MoCo: `im_all` is every rank's key views
    /// (all-gathered, `[world * N, ...]`); rank 0 draws one permutation of them, each rank
    /// encodes its slice of the shuffled batch (so no rank normalises its own images), and the
    /// keys of all ranks are gathered back and unshuffled. Returns (this rank's keys, all keys
    /// in rank order). With one process and `bn_splits = world` splits, [`Moco::keys`] computes
    /// the same thing: the same permutation from the same generator, the same chunks.
    fn keys_across(&self, group: &ProcessGroup, im_all: &Tensor) -> Result<(Tensor, Tensor), ModelError> {
        tch::no_grad(|| {
            let n_all = im_all.size()[0];
            let n = n_all / group.world_size() as i64;
            let dev = im_all.device();
            let perm = device::upload(&Tensor::randperm(n_all, (Kind::Int64, Device::Cpu)), dev);
            group.broadcast(std::slice::from_ref(&perm), 0)?;
            let mine = perm.narrow(0, group.rank() as i64 * n, n);
            let k = normalize(&self.encoder_k.forward_t(&im_all.index_select(0, &mine), true), 1);
            let k_all = group.all_gather(&k)?.index_select(0, &perm.argsort(0, false));
            Ok((k_all.narrow(0, group.rank() as i64 * n, n), k_all))
        })
    }

    /// Float buffers (BN running statistics) of both encoders: averaged over ranks after each
    /// step, as one process with split-BN averages them over its splits.
    fn float_buffers(&self) -> Vec<Tensor> {
        let mut out = Vec::new();
        for enc in [&self.encoder_q, &self.encoder_k] {
            out.extend(
                enc.named_tensors("")
                    .into_iter()
                    .filter(|t| t.role == TensorRole::Buffer && t.tensor.is_floating_point())
                    .map(|t| t.tensor),
            );
        }
        out
    }

    /// Converts conv weights to channels_last, as `model.to(memory_format=torch.channels_last)`.
    pub fn set_channels_last(&mut self) -> Result<(), ModelError> {
        let mut tensors: Vec<Tensor> = self.named_tensors("").into_iter().map(|t| t.tensor).collect();
        device::set_channels_last(tensors.iter_mut())?;
        Ok(())
    }
}

impl StateDict for Moco {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        // Own buffers before submodules, as `nn.Module.state_dict()` orders them.
        push(out, prefix, "queue", &self.queue, TensorRole::Buffer);
        push(out, prefix, "queue_ptr", &self.queue_ptr, TensorRole::Buffer);
        self.encoder_q.push_tensors(&join(prefix, "encoder_q"), out);
        self.encoder_k.push_tensors(&join(prefix, "encoder_k"), out);
    }
}

/// `x / max(||x||_2, 1e-12)` along `dim`, as `torch.nn.functional.normalize`.
pub fn normalize(x: &Tensor, dim: i64) -> Tensor {
    let norm = x.norm_scalaropt_dim(2, [dim], true).clamp_min(1e-12).expand_as(x);
    x / norm
}

/// How a step runs: precision of the forward passes and memory format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StepOptions {
    pub precision: Precision,
    pub channels_last: bool,
}

/// What one step reports. Tensors stay on the device so that a step never waits for the GPU;
/// read them with [`StepStats::values`] when logging.
#[derive(Debug)]
pub struct StepStats {
    pub loss: Tensor,
    /// Percentage of queries whose positive ranks first among the `1 + K` logits.
    pub top1: Tensor,
    /// Percentage whose positive is among the five largest logits.
    pub top5: Tensor,
    /// False when fp16 loss scaling found inf/NaN gradients and the update was skipped.
    pub applied: bool,
}

/// [`StepStats`] read back to the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepValues {
    pub loss: f64,
    pub top1: f64,
    pub top5: f64,
}

impl StepStats {
    pub fn values(&self) -> StepValues {
        StepValues {
            loss: self.loss.double_value(&[]),
            top1: self.top1.double_value(&[]),
            top5: self.top5.double_value(&[]),
        }
    }
}

/// The model with its optimiser: [`MocoTrainer::step`] is one whole MoCo v2 iteration.
#[derive(Debug)]
pub struct MocoTrainer {
    pub model: Moco,
    pub optimizer: Sgd,
    options: StepOptions,
    scaler: Option<GradScaler>,
    ddp: Option<DataParallel>,
    micro_batches: i64,
}

/// What the forward and backward passes of a step leave for the update and the report.
struct Passes {
    loss: Tensor,
    top1: Tensor,
    top5: Tensor,
    /// Every key of the step, in batch order: what is enqueued.
    k_all: Tensor,
}

impl MocoTrainer {
    /// Also turns on cudnn autotuning when the model lives on a GPU.
    pub fn new(mut model: Moco, sgd: SgdConfig, options: StepOptions) -> Result<Self, ModelError> {
        device::prepare(model.device());
        if options.channels_last {
            model.set_channels_last()?;
        }
        let optimizer = Sgd::new(model.query_parameters(), sgd);
        let scaler = (options.precision == Precision::Fp16).then(GradScaler::default);
        Ok(Self { model, optimizer, options, scaler, ddp: None, micro_batches: 1 })
    }

    /// Trains data-parallel in `group`: every step then averages gradients, BN statistics and
    /// the reported loss over the ranks, computes keys with shuffle-BN across ranks and
    /// enqueues the keys of all ranks. Each rank passes its own share of the global batch.
    /// Rank 0's model and optimiser state are first copied to every rank (as DDP does at
    /// construction), so ranks start identical whatever they loaded.
    pub fn with_process_group(mut self, group: Arc<ProcessGroup>) -> Result<Self, ModelError> {
        if self.micro_batches > 1 {
            return Err(ModelError::Config("micro-batches are for one process, not a process group".into()));
        }
        let mut state: Vec<Tensor> = self.model.named_tensors("").into_iter().map(|t| t.tensor).collect();
        state.extend(self.optimizer.momentum_buffers().iter().flatten().map(Tensor::shallow_clone));
        self.ddp = Some(DataParallel::new(group, self.optimizer.params(), &state)?);
        Ok(self)
    }

    /// Trains each batch as `n` micro-batches, one after another, exactly as `n` ranks of a
    /// process group would: keys by shuffle-BN across the micro-batches, each micro-batch
    /// normalised by its own BN statistics from the step's running statistics, gradients,
    /// running statistics and reported values averaged. One process then takes the steps of `n`
    /// GPUs with the same arithmetic (kernels see the ranks' batch shapes), in about 1/n of the
    /// activation memory.
    pub fn with_micro_batches(mut self, n: i64) -> Result<Self, ModelError> {
        if n < 1 {
            return Err(ModelError::Config(format!("micro-batches must be at least 1, got {n}")));
        }
        if n > 1 && self.ddp.is_some() {
            return Err(ModelError::Config("micro-batches are for one process, not a process group".into()));
        }
        self.micro_batches = n;
        Ok(self)
    }

    pub fn options(&self) -> StepOptions {
        self.options
    }

    /// fp16 loss scaler state, when training in fp16.
    pub fn scaler(&self) -> Option<&GradScaler> {
        self.scaler.as_ref()
    }

    pub fn scaler_mut(&mut self) -> Option<&mut GradScaler> {
        self.scaler.as_mut()
    }

    fn group(&self) -> Option<&ProcessGroup> {
        self.ddp.as_ref().map(|d| d.group().as_ref())
    }

    fn check_batch(&self, im_q: &Tensor, im_k: &Tensor) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Input(m));
        let (sq, sk) = (im_q.size(), im_k.size());
        if sq.len() != 4 || sq != sk {
            return bad(format!("views must be [N, C, H, W] of equal shape, got {sq:?} and {sk:?}"));
        }
        let cfg = self.model.config;
        if sq[1] != cfg.in_channels {
            return bad(format!("views have {} channels, the encoder takes {}", sq[1], cfg.in_channels));
        }
        let world = self.group().map_or(1, |g| g.world_size() as i64);
        let m = self.micro_batches;
        if sq[0] % m != 0 {
            return bad(format!("batch size {} is not a multiple of the {m} micro-batches", sq[0]));
        }
        cfg.check_batch_size(sq[0] / m)?;
        cfg.check_batch_size(sq[0] * world)
    }

    /// One MoCo v2 iteration: query and key forwards, InfoNCE loss, backward, SGD step with
    /// learning rate `lr`, momentum update of the key encoder, enqueue of the keys.
    ///
    /// The key encoder is updated after the SGD step rather than before the key forward as in
    /// the original code; both orders feed the same key weights to every key forward.
    ///
    /// In a process group (see [`MocoTrainer::with_process_group`]) `im_q` and `im_k` are this
    /// rank's share of the global batch; the step is then that of one process on the global
    /// batch with as many micro-batches as ranks (see [`MocoTrainer::with_micro_batches`]):
    /// bit for bit with two ranks, whose gradient sum has one order.
    pub fn step(&mut self, im_q: &Tensor, im_k: &Tensor, lr: f64) -> Result<StepStats, ModelError> {
        self.check_batch(im_q, im_k)?;
        let dev = self.model.device();
        let prepare = |x: &Tensor| -> Result<Tensor, ModelError> {
            let x = x.to_device(dev).to_kind(Kind::Float);
            Ok(if self.options.channels_last { device::to_channels_last(&x)? } else { x })
        };
        let im_q = prepare(im_q)?;
        let im_k = match self.group() {
            Some(g) => prepare(&g.all_gather(&im_k.to_device(dev).to_kind(Kind::Float))?)?,
            None => prepare(im_k)?,
        };

        self.optimizer.zero_grad();
        let passes = if self.micro_batches > 1 {
            self.micro_batch_passes(&im_q, &im_k)?
        } else {
            self.passes(&im_q, &im_k)?
        };
        let applied = match &mut self.scaler {
            Some(scaler) => {
                let finite = scaler.unscale_and_update(&self.optimizer.grads());
                if finite {
                    self.optimizer.step(lr).map_err(ModelError::Step)?;
                }
                finite
            }
            None => {
                self.optimizer.step(lr).map_err(ModelError::Step)?;
                true
            }
        };
        self.model.momentum_update()?;
        self.model.enqueue(&passes.k_all);

        let Passes { loss, top1, top5, .. } = passes;
        if let Some(ddp) = &self.ddp {
            let g = ddp.group();
            ddp.average_buffers(&self.model.float_buffers())?;
            tch::no_grad(|| -> Result<(), ModelError> {
                let stats = Tensor::stack(
                    &[loss.to_kind(Kind::Float), top1.shallow_clone(), top5.shallow_clone()],
                    0,
                );
                g.all_reduce_mean(std::slice::from_ref(&stats))?;
                loss.shallow_clone().copy_(&stats.get(0));
                top1.shallow_clone().copy_(&stats.get(1));
                top5.shallow_clone().copy_(&stats.get(2));
                Ok(())
            })?;
        }
        Ok(StepStats { loss, top1, top5, applied })
    }

    /// Backward of `loss` (scaled in fp16); in a process group, gradients are averaged over the
    /// ranks while it runs (see GradReducer).
    fn backward(&self, loss: &Tensor) -> Result<(), ModelError> {
        let loss = match &self.scaler {
            Some(scaler) => scaler.scale_loss(loss),
            None => loss.shallow_clone(),
        };
        match &self.ddp {
            Some(ddp) => ddp.backward(&loss)?,
            None => loss.backward(),
        }
        Ok(())
    }

    /// The forward and backward passes of the whole batch (this rank's share in a group).
    fn passes(&self, im_q: &Tensor, im_k: &Tensor) -> Result<Passes, ModelError> {
        let (model, dev) = (&self.model, self.model.device());
        let (loss, logits, k_all) = device::autocast(dev, self.options.precision, || {
            let q = normalize(&model.encoder_q.forward_t(im_q, true), 1);
            let (k, k_all) = match self.group() {
                Some(g) => model.keys_across(g, im_k)?,
                None => {
                    let k = model.keys(im_k);
                    (k.shallow_clone(), k)
                }
            };
            let logits = model.logits(&q, &k);
            Ok::<_, ModelError>((info_nce(&logits), logits, k_all))
        })??;
        self.backward(&loss)?;
        let (top1, top5) = tch::no_grad(|| topk_of_positive(&logits.detach()));
        Ok(Passes { loss: loss.detach(), top1, top5, k_all })
    }

    /// [`MocoTrainer::passes`] as `micro_batches` ranks would run them (see
    /// [`MocoTrainer::with_micro_batches`]); each micro-batch's graph is freed before the next.
    fn micro_batch_passes(&self, im_q: &Tensor, im_k: &Tensor) -> Result<Passes, ModelError> {
        let (model, dev) = (&self.model, self.model.device());
        let m = self.micro_batches;
        let n = im_q.size()[0] / m;
        let keys = BufferRounds::new(&model.encoder_k);
        // As `keys_across`: one permutation of the whole batch from the CPU generator; each
        // micro-batch encodes its slice of the shuffled batch.
        let k_all = device::autocast(dev, self.options.precision, || {
            tch::no_grad(|| {
                let perm = device::upload(&Tensor::randperm(n * m, (Kind::Int64, Device::Cpu)), dev);
                let slices: Vec<Tensor> = (0..m)
                    .map(|r| {
                        keys.restore();
                        let k =
                            model.encoder_k.forward_t(&im_k.index_select(0, &perm.narrow(0, r * n, n)), true);
                        keys.record();
                        normalize(&k, 1)
                    })
                    .collect();
                Tensor::cat(&slices, 0).index_select(0, &perm.argsort(0, false))
            })
        })?;
        keys.average();

        let queries = BufferRounds::new(&model.encoder_q);
        let mut stats = Vec::with_capacity(m as usize);
        for r in 0..m {
            queries.restore();
            let (loss, logits) = device::autocast(dev, self.options.precision, || {
                let q = normalize(&model.encoder_q.forward_t(&im_q.narrow(0, r * n, n), true), 1);
                let logits = model.logits(&q, &k_all.narrow(0, r * n, n));
                (info_nce(&logits), logits)
            })?;
            self.backward(&loss)?;
            queries.record();
            let (top1, top5) = tch::no_grad(|| topk_of_positive(&logits.detach()));
            stats.push(Tensor::stack(&[loss.detach().to_kind(Kind::Float), top1, top5], 0));
        }
        queries.average();
        // Averages as a process group's all-reduce does: the sum, then a division by the count.
        tch::no_grad(|| {
            for g in self.optimizer.grads() {
                let _ = g.shallow_clone().g_div_scalar_(m);
            }
        });
        let stats = tch::no_grad(|| sum_in_order(&stats) / m);
        Ok(Passes { loss: stats.get(0), top1: stats.get(1), top5: stats.get(2), k_all })
    }
}

/// The buffers of an encoder (BN running statistics, batch counters) over the micro-batches of
/// a step: each micro-batch starts from the step's values, as each rank does; afterwards the
/// floating-point ones are averaged, as ranks average them, and the counters keep one step's
/// increment.
struct BufferRounds {
    buffers: Vec<Tensor>,
    start: Vec<Tensor>,
    ends: std::cell::RefCell<Vec<Vec<Tensor>>>,
}

impl BufferRounds {
    fn new(encoder: &Encoder) -> Self {
        let buffers: Vec<Tensor> = encoder
            .named_tensors("")
            .into_iter()
            .filter(|t| t.role == TensorRole::Buffer)
            .map(|t| t.tensor)
            .collect();
        let start = tch::no_grad(|| buffers.iter().map(Tensor::copy).collect());
        Self { buffers, start, ends: Default::default() }
    }

    fn restore(&self) {
        tch::no_grad(|| {
            for (b, s) in self.buffers.iter().zip(&self.start) {
                b.shallow_clone().copy_(s);
            }
        });
    }

    fn record(&self) {
        self.ends.borrow_mut().push(tch::no_grad(|| self.buffers.iter().map(Tensor::copy).collect()));
    }

    fn average(self) {
        let ends = self.ends.into_inner();
        let count = ends.len() as i64;
        tch::no_grad(|| {
            for (i, b) in self.buffers.iter().enumerate() {
                let values: Vec<Tensor> = ends.iter().map(|e| e[i].shallow_clone()).collect();
                let value =
                    if b.is_floating_point() { sum_in_order(&values) / count } else { values[0].copy() };
                b.shallow_clone().copy_(&value);
            }
        });
    }
}

/// `x[0] + x[1] + ...`, left to right.
fn sum_in_order(xs: &[Tensor]) -> Tensor {
    xs[1..].iter().fold(xs[0].copy(), |acc, x| acc + x)
}

/// The InfoNCE loss: cross-entropy with the positive in column 0, averaged over the queries.
fn info_nce(logits: &Tensor) -> Tensor {
    let labels = Tensor::zeros([logits.size()[0]], (Kind::Int64, logits.device()));
    logits.cross_entropy_loss::<Tensor>(&labels, None, Reduction::Mean, -100, 0.0)
}

/// Top-1 and top-5 accuracy (percent) of the positive, which sits in column 0.
fn topk_of_positive(logits: &Tensor) -> (Tensor, Tensor) {
    let k = logits.size()[1].min(5);
    let (_, idx) = logits.topk(k, 1, true, true);
    let hit = idx.eq(0);
    let top1 = hit.narrow(1, 0, 1).to_kind(Kind::Float).sum(Kind::Float) * 100.0 / logits.size()[0] as f64;
    let top5 = hit.to_kind(Kind::Float).sum(Kind::Float) * 100.0 / logits.size()[0] as f64;
    (top1, top5)
}
