//! Batches of decoded, resized radiographs from a pool of decode threads.
//!
//! Each epoch visits the dataset in a seeded permutation; batch `b` always holds the same files
//! for the same (seed, epoch), whatever the number of workers, so runs repeat and resume
//! exactly. A file that fails to decode is skipped, counted, reported with its path and
//! replaced by another sample (chosen deterministically), so batch sizes stay constant.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tch::{Device, Kind, Tensor};

use super::augment::{AugmentConfig, HostScratch, Rng, augment_host, draw_plans, resize_bilinear};
use super::buffers::BufferPool;
use super::cache::DecodeCache;
use super::dataset::Dataset;
use super::decode::decode_file;

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
    pin: bool,
    shard: Shard,
    buffers: BufferPool,
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
            dataset,
            config,
            cache: None,
            augment: None,
            pin: false,
            shard: Shard { rank: 0, world_size: 1 },
            // Batches in flight hold three tensors each (images and two views).
            buffers: BufferPool::new(3 * (config.prefetch.max(1) + config.workers.max(1) + 2)),
        }
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

    pub fn shard(&self) -> Shard {
        self.shard
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
                let (tx, shared, order, dataset) =
                    (tx.clone(), shared.clone(), order.clone(), self.dataset.clone());
                let (cache, augment, pin, shard) = (self.cache.clone(), self.augment, self.pin, self.shard);
                let buffers = self.buffers.clone();
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
                        let views = augment
                            .as_ref()
                            .map(|aug| (aug, shard.view_rng(cfg.seed, epoch, b), &mut scratch));
                        let mut batch = build_batch(
                            &dataset,
                            cache.as_deref(),
                            &buffers,
                            &order,
                            b,
                            cfg,
                            epoch,
                            shard,
                            views,
                        );
                        if pin {
                            // What the consumer uploads: the views if drawn here, else the
                            // images. Unpinned memory still works, only with a synchronous copy.
                            let pinned = |t: &Tensor| {
                                crate::device::pin_memory(t).unwrap_or_else(|_| t.shallow_clone())
                            };
                            match &mut batch.views {
                                Some((q, k)) => (*q, *k) = (pinned(q), pinned(k)),
                                None => batch.images = pinned(&batch.images),
                            }
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

/// One image as `S x S` values in 0..255 into `dst`: from the cache, or decoded, resized (and
/// cached).
fn load_image(
    dataset: &Dataset,
    cache: Option<&DecodeCache>,
    idx: usize,
    size: usize,
    dst: &mut [f32],
) -> Result<(), String> {
    let from_bytes =
        |dst: &mut [f32], bytes: &[u8]| dst.iter_mut().zip(bytes).for_each(|(d, &b)| *d = f32::from(b));
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

/// Decodes batch `b` (and, given `views`, draws its two augmented views in this thread).
#[allow(clippy::too_many_arguments)]
fn build_batch(
    dataset: &Dataset,
    cache: Option<&DecodeCache>,
    buffers: &BufferPool,
    order: &[usize],
    b: usize,
    cfg: LoaderConfig,
    epoch: u64,
    shard: Shard,
    views: Option<(&AugmentConfig, Rng, &mut HostScratch)>,
) -> Batch {
    let bs = cfg.batch_size.max(1);
    let size = cfg.image_size as usize;
    let plane = size * size;
    let start = (b * shard.world_size + shard.rank) * bs;
    let positions = start.min(order.len())..(start + bs).min(order.len());
    let mut samples = Vec::with_capacity(positions.len());
    let mut skipped = Vec::new();
    let shape = |n: usize| [n as i64, 1, cfg.image_size, cfg.image_size];
    let images = buffers.tensor(&shape(positions.len()), |pixels| {
        for pos in positions.clone() {
            let mut idx = order[pos];
            let mut rng = Rng::new(cfg.seed ^ (epoch << 32) ^ pos as u64);
            let dst = &mut pixels[samples.len() * plane..][..plane];
            // The original replaces an unreadable sample by a random other one; so do we, a
            // few times at most, deterministically.
            for attempt in 0..16 {
                match load_image(dataset, cache, idx, size, dst) {
                    Ok(()) => {
                        samples.push(idx);
                        break;
                    }
                    Err(reason) => {
                        skipped.push(Skipped { path: dataset.samples[idx].path.clone(), reason });
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
                pixels.copy_within((j % good) * plane..(j % good + 1) * plane, (good + j) * plane);
                samples.push(samples[j % good]);
            }
        }
    });
    let n = samples.len();
    let images = if n < positions.len() { images.narrow(0, 0, n as i64).contiguous() } else { images };
    let views = views.map(|(aug, mut rng, scratch)| {
        // As the tensor path would: all of the query's parameters, then all of the key's.
        let plans_q = draw_plans(n, cfg.image_size, cfg.image_size, aug, &mut rng);
        let plans_k = draw_plans(n, cfg.image_size, cfg.image_size, aug, &mut rng);
        let src = host_slice(&images);
        let mut view = |plans: &[super::augment::ViewPlan]| {
            buffers.tensor(&shape(n), |out| {
                for (i, plan) in plans.iter().enumerate() {
                    let (from, to) = (&src[i * plane..][..plane], &mut out[i * plane..][..plane]);
                    augment_host(from, size, size, plan, scratch, to);
                }
            })
        };
        (view(&plans_q), view(&plans_k))
    });
    Batch { index: b, images, samples, skipped, views }
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
