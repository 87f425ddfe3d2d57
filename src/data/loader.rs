//! Batches of decoded, resized radiographs from a pool of decode threads.
//!
//! Each epoch visits the dataset in a seeded permutation; batch `b` always holds the same files
//! for the same (seed, epoch), whatever the number of workers, so runs repeat and resume
//! exactly. A file that fails to decode is skipped, counted, reported with its path and
//! replaced by another sample (chosen deterministically), so batch sizes stay constant.
//!
//! Datasets with targets ([`super::targets`]) get them in each batch, in batch order: label
//! vectors mapped by a [`LabelMapping`], class indices, or a paired image / mask decoded and
//! resized with the image (bilinear / nearest). A sample whose target file is unreadable is
//! skipped and replaced as an unreadable image is. With [`Loader::with_joint_augment`], one
//! view per sample is drawn, its geometric steps applied to the target too.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tch::{Device, Kind, Tensor};

use super::augment::{
    AugmentConfig, HostScratch, Interp, Rng, ViewPlan, augment_host, draw_plans, resize_bilinear, warp_host,
};
use super::buffers::BufferPool;
use super::cache::DecodeCache;
use super::dataset::{Dataset, Sample};
use super::decode::decode_file;
use super::targets::{LabelMapping, Target, TargetKind, mask_classes, resize_nearest};

/// Loader settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderConfig {
    pub image_size: i64,
    pub batch_size: usize,
    /// Decode threads.
    pub workers: usize,
    /// Batches decoded ahead of the consumer.
    pub prefetch: usize,
    pub seed: u64,
    pub shuffle: bool,
    /// Drop the last incomplete batch (MoCo needs constant batch sizes).
    pub drop_last: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            image_size: 512,
            batch_size: 256,
            workers: 4,
            prefetch: 4,
            seed: 0,
            shuffle: true,
            drop_last: true,
        }
    }
}

impl LoaderConfig {
    /// A training epoch: shuffled by `seed` and the epoch, whole batches only (the last short
    /// one dropped, as the original DataLoaders do), 4 batches decoded ahead.
    pub fn training(image_size: i64, batch_size: usize, workers: usize, seed: u64) -> Self {
        Self {
            image_size,
            batch_size: batch_size.max(1),
            workers: workers.max(1),
            prefetch: 4,
            seed,
            shuffle: true,
            drop_last: true,
        }
    }

    /// Every file once, in dataset order, the last batch short: evaluation and prediction.
    pub fn in_order(image_size: i64, batch_size: usize, workers: usize) -> Self {
        Self {
            image_size,
            batch_size: batch_size.max(1),
            workers: workers.max(1),
            prefetch: 2,
            seed: 0,
            shuffle: false,
            drop_last: false,
        }
    }
}

/// A file that could not be used, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for Skipped {
    /// `path: reason`, naming the path once: decoding errors already start with it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = self.path.display().to_string();
        if self.reason.starts_with(&path) {
            f.write_str(&self.reason)
        } else {
            write!(f, "{path}: {}", self.reason)
        }
    }
}

/// One batch: `[N, 1, S, S]` float32 in 0..255 on the CPU.
#[derive(Debug)]
pub struct Batch {
    pub index: usize,
    pub images: Tensor,
    /// Dataset indices of the images, in batch order.
    pub samples: Vec<usize>,
    /// Files skipped while building this batch.
    pub skipped: Vec<Skipped>,
    /// Two independently augmented, normalised views (MoCo's query and key), when the loader
    /// augments (see [`Loader::with_augment`]).
    pub views: Option<(Tensor, Tensor)>,
    /// The samples' targets, in batch order, when the dataset has them: `[N, L]` float label
    /// targets, `[N]` int64 class indices, or `[N, 1, S, S]` float paired images (0..255) or
    /// masks (class indices), not augmented.
    pub targets: Option<Tensor>,
    /// `[N, L]`: 1 where a label counts in the loss, 0 where the policy ignores it (label
    /// vectors only).
    pub target_mask: Option<Tensor>,
    /// One augmented view per sample with its target warped alike, when the loader augments
    /// jointly (see [`Loader::with_joint_augment`]).
    pub joint: Option<JointView>,
}

/// An augmented input and its target moved by the same geometric steps.
#[derive(Debug)]
pub struct JointView {
    /// `[N, 1, S, S]` normalised, as [`Batch::views`]' are.
    pub input: Tensor,
    /// `[N, 1, S, S]` target images (bilinear, 0..255) or masks (nearest, class indices)
    /// after the input's affine warp and optical distortion, and none of its photometric
    /// steps; `None` for label and class targets, which no warp changes.
    pub target: Option<Tensor>,
}

/// The visiting order of `epoch`: a Fisher-Yates permutation seeded by (seed, epoch).
pub fn epoch_order(len: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        let mut rng = Rng::new(seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03));
        for i in (1..len).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
    }
    order
}

/// The generator of batch `b`'s two augmented views in `epoch`: views depend on nothing else,
/// whether they are drawn in the loader threads or on the training device.
pub fn view_rng(seed: u64, epoch: u64, batch: usize) -> Rng {
    Rng::new(seed ^ epoch.rotate_left(40) ^ (batch as u64).wrapping_mul(0x9E37_79B9))
}

/// Produces epochs of batches.
#[derive(Debug, Clone)]
pub struct Loader {
    dataset: Arc<Dataset>,
    config: LoaderConfig,
    cache: Option<Arc<DecodeCache>>,
    augment: Option<AugmentConfig>,
    /// One view per sample, warping its target too, rather than MoCo's two.
    joint: bool,
    pin: bool,
    shard: Shard,
    buffers: BufferPool,
    target_kind: Option<TargetKind>,
    labels: LabelMapping,
    target_cache: Option<Arc<DecodeCache>>,
}

/// This process's part of each global batch in data-parallel training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world_size: usize,
}

impl Shard {
    fn view_rng(self, seed: u64, epoch: u64, b: usize) -> Rng {
        view_rng(seed, epoch, b * self.world_size + self.rank)
    }
}

impl Loader {
    pub fn new(dataset: Arc<Dataset>, config: LoaderConfig) -> Self {
        Self {
            config,
            cache: None,
            augment: None,
            joint: false,
            pin: false,
            shard: Shard { rank: 0, world_size: 1 },
            // Batches in flight hold up to four pooled tensors each (images and two views, or
            // images, targets and their two views).
            buffers: BufferPool::new(4 * (config.prefetch.max(1) + config.workers.max(1) + 2)),
            target_kind: dataset.target_kind(),
            labels: LabelMapping::default(),
            target_cache: None,
            dataset,
        }
    }

    /// How label cells become (target, mask) values; without it, CheSS's U-Ones with blank
    /// as 0 ([`super::targets::LabelPolicy::default`]).
    pub fn with_labels(mut self, mapping: LabelMapping) -> Self {
        self.labels = mapping;
        self
    }

    /// Augments each batch in the loader threads into one view per sample ([`Batch::joint`]),
    /// applying its geometric steps (affine warp, optical distortion) to the sample's paired
    /// image (bilinear) or mask (nearest) with the same plan, and its photometric steps to the
    /// input only: for the downstream tasks. Replaces [`Loader::with_augment`]'s two views.
    pub fn with_joint_augment(mut self, config: AugmentConfig) -> Self {
        self.augment = Some(config);
        self.joint = true;
        self
    }

    /// Reads decoded target files (paired images, mask files) from `cache` and fills it on
    /// first sight, as [`Loader::with_cache`] does for the images; open it for
    /// [`Dataset::target_files`]. Masks drawn from coordinates are not cached (drawing is
    /// cheaper than reading).
    pub fn with_target_cache(mut self, cache: Arc<DecodeCache>) -> Self {
        self.target_cache = Some(cache);
        self
    }

    /// Reads only this rank's share: every rank follows the same seeded order of the whole
    /// dataset, cut into global batches of `batch_size * world_size`, and takes the
    /// `rank`-th slice of `batch_size` of each, so ranks see disjoint files, reshuffled each
    /// epoch, and together exactly the batches one process would read with the global size.
    pub fn with_shard(mut self, rank: usize, world_size: usize) -> Self {
        assert!(rank < world_size, "rank {rank} of {world_size}");
        self.shard = Shard { rank, world_size };
        self
    }

    /// The generator of this rank's views of batch `b`: ranks draw different augmentations.
    pub fn views_rng(&self, epoch: u64, b: usize) -> Rng {
        self.shard.view_rng(self.config.seed, epoch, b)
    }

    /// Also augments each batch into two views in the loader threads: for CPU-only training,
    /// where the decode threads would otherwise idle while the training thread augments. (On a
    /// GPU, augment on the device instead.) Views depend only on (seed, epoch, batch).
    pub fn with_augment(mut self, config: AugmentConfig) -> Self {
        self.augment = Some(config);
        self.joint = false;
        self
    }

    /// Reads decoded images from `cache` and fills it on first sight: a dataset is decoded
    /// once. Cached values are rounded to u8 (in every epoch, the first one included).
    pub fn with_cache(mut self, cache: Arc<DecodeCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Puts batches (their views, when the loader augments) in page-locked memory, so that a
    /// training thread on a GPU copies them with `non_blocking` and never waits for the GPU to
    /// finish the previous step.
    pub fn with_pinned_memory(mut self) -> Self {
        self.pin = true;
        self
    }

    pub fn config(&self) -> LoaderConfig {
        self.config
    }

    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    /// Batches per epoch (global batches when sharded).
    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.dataset.len(), self.config.batch_size.max(1) * self.shard.world_size);
        if self.config.drop_last { n / b } else { n.div_ceil(b) }
    }

    /// Starts decoding `epoch` from batch `start` (to resume mid-epoch).
    pub fn epoch(&self, epoch: u64, start: usize) -> EpochIter {
        let cfg = self.config;
        let order = Arc::new(epoch_order(self.dataset.len(), cfg.seed, epoch, cfg.shuffle));
        let total = self.batches_per_epoch();
        let (tx, rx) = sync_channel(cfg.prefetch.max(1));
        let shared = Arc::new(Shared {
            next_job: AtomicUsize::new(start),
            yielded: Mutex::new(start),
            advanced: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let window = cfg.prefetch.max(1) + cfg.workers.max(1);
        let workers = (0..cfg.workers.max(1))
            .map(|_| {
                let (tx, shared, order) = (tx.clone(), shared.clone(), order.clone());
                let (augment, joint, pin, shard) = (self.augment, self.joint, self.pin, self.shard);
                let sources = Sources {
                    dataset: self.dataset.clone(),
                    cache: self.cache.clone(),
                    target_cache: self.target_cache.clone(),
                    buffers: self.buffers.clone(),
                    target_kind: self.target_kind,
                    labels: self.labels.clone(),
                };
                std::thread::spawn(move || {
                    let mut scratch = HostScratch::default();
                    loop {
                        let b = shared.next_job.fetch_add(1, Ordering::SeqCst);
                        if b >= total || shared.stop.load(Ordering::SeqCst) {
                            return;
                        }
                        // Stay within `window` batches of the consumer: bounded memory.
                        {
                            let mut yielded = shared.yielded.lock().unwrap();
                            while b >= *yielded + window && !shared.stop.load(Ordering::SeqCst) {
                                yielded = shared.advanced.wait(yielded).unwrap();
                            }
                        }
                        let views = augment.as_ref().map(|aug| Views {
                            config: aug,
                            joint,
                            rng: shard.view_rng(cfg.seed, epoch, b),
                            scratch: &mut scratch,
                        });
                        let mut batch = build_batch(&sources, &order, b, cfg, epoch, shard, views);
                        if pin {
                            // What the consumer uploads: the views if drawn here, else the
                            // images; and the targets. Unpinned memory still works, only with a
                            // synchronous copy.
                            let pinned = |t: &Tensor| {
                                crate::device::pin_memory(t).unwrap_or_else(|_| t.shallow_clone())
                            };
                            match (&mut batch.views, &mut batch.joint) {
                                (Some((q, k)), _) => (*q, *k) = (pinned(q), pinned(k)),
                                (None, Some(j)) => {
                                    j.input = pinned(&j.input);
                                    j.target = j.target.as_ref().map(pinned);
                                }
                                (None, None) => batch.images = pinned(&batch.images),
                            }
                            if batch.joint.as_ref().is_none_or(|j| j.target.is_none()) {
                                batch.targets = batch.targets.as_ref().map(pinned);
                            }
                            batch.target_mask = batch.target_mask.as_ref().map(pinned);
                        }
                        if tx.send(batch).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        EpochIter {
            rx,
            shared,
            workers,
            pending: BTreeMap::new(),
            next: start,
            total,
            skipped: Vec::new(),
            skipped_paths: Default::default(),
        }
    }
}

struct Shared {
    next_job: AtomicUsize,
    yielded: Mutex<usize>,
    advanced: Condvar,
    stop: AtomicBool,
}

/// The elements of a contiguous CPU float tensor.
fn host_slice(t: &Tensor) -> &[f32] {
    assert!(t.kind() == Kind::Float && t.device() == Device::Cpu && t.is_contiguous());
    match t.numel() {
        0 => &[],
        // SAFETY: checked above that the storage holds `numel` contiguous f32 on the host; the
        // borrow of `t` keeps it alive and, being shared, unwritten.
        n => unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, n) },
    }
}

/// What the decode threads read from: shared by all of them.
struct Sources {
    dataset: Arc<Dataset>,
    cache: Option<Arc<DecodeCache>>,
    target_cache: Option<Arc<DecodeCache>>,
    buffers: BufferPool,
    target_kind: Option<TargetKind>,
    labels: LabelMapping,
}

/// How a decode thread augments a batch.
struct Views<'a> {
    config: &'a AugmentConfig,
    joint: bool,
    rng: Rng,
    scratch: &'a mut HostScratch,
}

/// `dst` from cached u8 values.
fn from_bytes(dst: &mut [f32], bytes: &[u8]) {
    dst.iter_mut().zip(bytes).for_each(|(d, &b)| *d = f32::from(b));
}

/// One image as `S x S` values in 0..255 into `dst`: from the cache, or decoded, resized (and
/// cached).
fn load_image(
    dataset: &Dataset,
    cache: Option<&DecodeCache>,
    idx: usize,
    size: usize,
    dst: &mut [f32],
) -> Result<(), String> {
    if let Some(px) = cache.and_then(|c| c.get(idx)) {
        from_bytes(dst, px);
        return Ok(());
    }
    let img = decode_file(&dataset.samples[idx].path).map_err(|e| e.to_string())?;
    resize_bilinear(&img.pixels, img.height as usize, img.width as usize, dst, size, size);
    if let Some(c) = cache {
        let bytes = c.put(idx, dst).map_err(|e| e.to_string())?;
        from_bytes(dst, &bytes);
    }
    Ok(())
}

/// Why a sample cannot give a target of `kind`, if it cannot (checked before any decoding).
fn target_mismatch(sample: &Sample, kind: TargetKind) -> Option<String> {
    let Some(target) = &sample.target else {
        return Some(format!("no target, where the dataset's are {kind:?}"));
    };
    (target.kind() != kind).then(|| format!("a {:?} target, where the dataset's are {kind:?}", target.kind()))
}

/// The `S x S` target plane of a sample with a paired image or mask into `dst`: from the
/// target cache, or decoded and resized (bilinear for images, nearest for masks), or drawn.
/// An error names the file that failed.
fn load_target_plane(
    sample: &Sample,
    cache: Option<&DecodeCache>,
    idx: usize,
    size: usize,
    dst: &mut [f32],
) -> Result<(), Skipped> {
    let (path, mask) = match &sample.target {
        Some(Target::Circles(circles)) => {
            circles.draw_resized(size, size, dst);
            return Ok(());
        }
        Some(Target::Image(p)) => (p, false),
        Some(Target::Mask(p)) => (p, true),
        _ => {
            let reason = "no paired image or mask".to_string();
            return Err(Skipped { path: sample.path.clone(), reason });
        }
    };
    let fail = |reason: String| Skipped { path: path.clone(), reason };
    if let Some(px) = cache.and_then(|c| c.get(idx)) {
        from_bytes(dst, px);
        return Ok(());
    }
    let mut img = decode_file(path).map_err(|e| fail(e.to_string()))?;
    let (h, w) = (img.height as usize, img.width as usize);
    if mask {
        mask_classes(&mut img.pixels);
        resize_nearest(&img.pixels, h, w, dst, size, size);
    } else {
        resize_bilinear(&img.pixels, h, w, dst, size, size);
    }
    if let Some(c) = cache {
        let bytes = c.put(idx, dst).map_err(|e| fail(e.to_string()))?;
        from_bytes(dst, &bytes);
    }
    Ok(())
}

/// Decodes batch `b` (and, given `views`, augments it in this thread).
fn build_batch(
    src: &Sources,
    order: &[usize],
    b: usize,
    cfg: LoaderConfig,
    epoch: u64,
    shard: Shard,
    views: Option<Views<'_>>,
) -> Batch {
    let dataset = &*src.dataset;
    let bs = cfg.batch_size.max(1);
    let size = cfg.image_size as usize;
    let plane = size * size;
    let start = (b * shard.world_size + shard.rank) * bs;
    let positions = start.min(order.len())..(start + bs).min(order.len());
    let mut samples = Vec::with_capacity(positions.len());
    let mut skipped = Vec::new();
    let shape = |n: usize| [n as i64, 1, cfg.image_size, cfg.image_size];
    let kind = src.target_kind;
    let spatial = matches!(kind, Some(TargetKind::Image | TargetKind::Mask));
    let mut planes = if spatial { vec![0f32; positions.len() * plane] } else { Vec::new() };
    let images = src.buffers.tensor(&shape(positions.len()), |pixels| {
        for pos in positions.clone() {
            let mut idx = order[pos];
            let mut rng = Rng::new(cfg.seed ^ (epoch << 32) ^ pos as u64);
            let slot = samples.len();
            let dst = &mut pixels[slot * plane..][..plane];
            // The original replaces an unreadable sample by a random other one; so do we, a
            // few times at most, deterministically. A sample whose target is missing or
            // unreadable is replaced alike.
            for attempt in 0..16 {
                let sample = &dataset.samples[idx];
                let loaded = match kind.and_then(|k| target_mismatch(sample, k)) {
                    Some(reason) => Err(Skipped { path: sample.path.clone(), reason }),
                    None => load_image(dataset, src.cache.as_deref(), idx, size, dst)
                        .map_err(|reason| Skipped { path: sample.path.clone(), reason })
                        .and_then(|()| {
                            if !spatial {
                                return Ok(());
                            }
                            let tdst = &mut planes[slot * plane..][..plane];
                            load_target_plane(sample, src.target_cache.as_deref(), idx, size, tdst)
                        }),
                };
                match loaded {
                    Ok(()) => {
                        samples.push(idx);
                        break;
                    }
                    Err(skip) => {
                        skipped.push(skip);
                        if attempt == 15 {
                            break;
                        }
                        idx = (rng.next_u64() % dataset.len() as u64) as usize;
                    }
                }
            }
        }
        // Mostly unreadable data (an export full of non-image objects) can miss 16 times in a
        // row: the slot repeats an image of this batch instead, so the batch keeps its size
        // (split BN needs it) and the two views still differ.
        let good = samples.len();
        if good > 0 {
            for j in 0..positions.len() - good {
                let (from, to) = ((j % good) * plane..(j % good + 1) * plane, (good + j) * plane);
                pixels.copy_within(from.clone(), to);
                if spatial {
                    planes.copy_within(from, to);
                }
                samples.push(samples[j % good]);
            }
        }
    });
    let n = samples.len();
    let images = if n < positions.len() { images.narrow(0, 0, n as i64).contiguous() } else { images };
    planes.truncate(n * plane);
    let (targets, target_mask) = match kind {
        None => (None, None),
        Some(TargetKind::Labels(l)) => {
            let (mut t, mut m) = (Vec::with_capacity(n * l), Vec::with_capacity(n * l));
            for &idx in &samples {
                if let Some(Target::Labels(values)) = &dataset.samples[idx].target {
                    let (vt, vm) = src.labels.apply(values);
                    t.extend(vt);
                    m.extend(vm);
                }
            }
            let as_tensor = |v: &[f32]| Tensor::from_slice(v).view([n as i64, l as i64]);
            (Some(as_tensor(&t)), Some(as_tensor(&m)))
        }
        Some(TargetKind::Class) => {
            let classes: Vec<i64> = samples
                .iter()
                .map(|&idx| match dataset.samples[idx].target {
                    Some(Target::Class(c)) => c as i64,
                    _ => -1,
                })
                .collect();
            (Some(Tensor::from_slice(&classes)), None)
        }
        Some(TargetKind::Image | TargetKind::Mask) => {
            (Some(src.buffers.tensor(&shape(n), |t| t.copy_from_slice(&planes))), None)
        }
    };
    let (mut views_out, mut joint) = (None, None);
    if let Some(Views { config: aug, joint: one_view, mut rng, scratch }) = views {
        let pixels = host_slice(&images);
        let augmented = |plans: &[ViewPlan], scratch: &mut HostScratch| {
            src.buffers.tensor(&shape(n), |out| {
                for (i, plan) in plans.iter().enumerate() {
                    let (from, to) = (&pixels[i * plane..][..plane], &mut out[i * plane..][..plane]);
                    augment_host(from, size, size, plan, scratch, to);
                }
            })
        };
        if one_view {
            let plans = draw_plans(n, cfg.image_size, cfg.image_size, aug, &mut rng);
            let input = augmented(&plans, scratch);
            let interp = if kind == Some(TargetKind::Mask) { Interp::Nearest } else { Interp::Bilinear };
            let target = spatial.then(|| {
                src.buffers.tensor(&shape(n), |out| {
                    for (i, plan) in plans.iter().enumerate() {
                        let (from, to) = (&planes[i * plane..][..plane], &mut out[i * plane..][..plane]);
                        warp_host(from, size, size, plan, interp, scratch, to);
                    }
                })
            });
            joint = Some(JointView { input, target });
        } else {
            // As the tensor path would: all of the query's parameters, then all of the key's.
            let plans_q = draw_plans(n, cfg.image_size, cfg.image_size, aug, &mut rng);
            let plans_k = draw_plans(n, cfg.image_size, cfg.image_size, aug, &mut rng);
            views_out = Some((augmented(&plans_q, scratch), augmented(&plans_k, scratch)));
        }
    }
    Batch { index: b, images, samples, skipped, views: views_out, targets, target_mask, joint }
}

/// The batches of one epoch, in order.
pub struct EpochIter {
    rx: Receiver<Batch>,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    pending: BTreeMap<usize, Batch>,
    next: usize,
    total: usize,
    skipped: Vec<Skipped>,
    skipped_paths: std::collections::HashSet<PathBuf>,
}

impl EpochIter {
    /// Every file skipped so far in this epoch, once each, in the order first met.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }
}

impl Iterator for EpochIter {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.total {
            return None;
        }
        while !self.pending.contains_key(&self.next) {
            match self.rx.recv() {
                Ok(batch) => {
                    self.pending.insert(batch.index, batch);
                }
                Err(_) => return None,
            }
        }
        let batch = self.pending.remove(&self.next)?;
        self.next += 1;
        *self.shared.yielded.lock().unwrap() = self.next;
        self.shared.advanced.notify_all();
        // Once per file: a retry can land on a file that already failed.
        for s in &batch.skipped {
            if self.skipped_paths.insert(s.path.clone()) {
                self.skipped.push(s.clone());
            }
        }
        Some(batch)
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.advanced.notify_all();
        // Unblock senders, then wait for the threads.
        while self.rx.try_recv().is_ok() {}
        for w in self.workers.drain(..) {
            while !w.is_finished() {
                while self.rx.try_recv().is_ok() {}
                std::thread::yield_now();
            }
            let _ = w.join();
        }
    }
}

/// Per-sample results of a pass that may meet a sample twice (the loader's stand-ins for
/// unreadable files) or never: the dataset indices that have a result and their results, in
/// input order, and `skipped` completed with every sample that got none ("not read").
pub fn gather_by_index<T>(
    found: Vec<Option<T>>,
    dataset: &Dataset,
    mut skipped: Vec<Skipped>,
) -> (Vec<usize>, Vec<T>, Vec<Skipped>) {
    let (mut rows, mut values) = (Vec::new(), Vec::new());
    for (i, v) in found.into_iter().enumerate() {
        if let Some(v) = v {
            rows.push(i);
            values.push(v);
        } else if !skipped.iter().any(|s| s.path == dataset.samples[i].path) {
            skipped.push(Skipped { path: dataset.samples[i].path.clone(), reason: "not read".into() });
        }
    }
    (rows, values, skipped)
}
