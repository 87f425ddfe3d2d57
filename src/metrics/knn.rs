//! Weighted k-nearest-neighbour accuracy of frozen features: the monitor of self-supervised
//! runs (Wu et al. 2018, InstDisc; used by the MoCo demos). Each validation image takes the k
//! training images of highest cosine similarity, each voting for its class with weight
//! `exp(sim / T)`; the class with the largest sum wins.
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use crate::data::{self, Dataset, DatasetError, Loader, LoaderConfig, Skipped};
use crate::device::{self, Precision};
use crate::model::Encoder;

/// k and the vote temperature (20 and 0.07 in the MoCo demos).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnnConfig {
    pub k: i64,
    pub temperature: f64,
}

impl Default for KnnConfig {
    fn default() -> Self {
        Self { k: 20, temperature: 0.07 }
    }
}

/// Predicted class per row of `query` `[M, D]` from `bank` `[N, D]` with labels `[N]` (int64,
/// 0..classes). Features are L2-normalised here, so similarities are cosines.
pub fn knn_predict(bank: &Tensor, labels: &Tensor, query: &Tensor, classes: i64, cfg: KnnConfig) -> Tensor {
    tch::no_grad(|| {
        let bank = crate::model::moco::normalize(&bank.to_kind(Kind::Float), 1);
        let query = crate::model::moco::normalize(&query.to_kind(Kind::Float), 1);
        let k = cfg.k.min(bank.size()[0]);
        let sim = query.mm(&bank.tr());
        let (top, idx) = sim.topk(k, 1, true, true);
        let weights = (top / cfg.temperature).exp();
        let neighbour_labels =
            labels.to_device(idx.device()).index_select(0, &idx.reshape([-1])).view([-1, k]);
        let votes = Tensor::zeros([query.size()[0], classes], (Kind::Float, query.device()));
        let votes = votes.scatter_add(1, &neighbour_labels, &weights);
        votes.argmax(1, false)
    })
}

/// Share of `predicted` equal to `truth`, in percent.
pub fn top1(predicted: &Tensor, truth: &Tensor) -> f64 {
    let hits = predicted.to_device(Device::Cpu).eq_tensor(&truth.to_device(Device::Cpu));
    hits.to_kind(Kind::Float).mean(Kind::Float).double_value(&[]) * 100.0
}

/// Labelled images as features: a class-folder dataset read by the batch loader.
#[derive(Debug)]
pub struct LabelledSet {
    loader: Loader,
    labels: Tensor,
}

impl LabelledSet {
    /// `root/<class>/...`; `classes` fixes the label order (pass the training set's classes to
    /// the validation set). Unknown classes are an error.
    pub fn new(
        root: &std::path::Path,
        classes: Option<&[String]>,
        config: LoaderConfig,
    ) -> Result<Self, DatasetError> {
        let dataset = Dataset::from_class_folders(root)?;
        let own = dataset.classes();
        let classes = classes.map(<[String]>::to_vec).unwrap_or(own);
        let mut labels = Vec::with_capacity(dataset.len());
        for s in &dataset.samples {
            let label = s.label.as_deref().unwrap_or_default();
            let Some(i) = classes.iter().position(|c| c == label) else {
                return Err(DatasetError::List {
                    path: root.to_path_buf(),
                    reason: format!("class '{label}' is not among the training classes {classes:?}"),
                });
            };
            labels.push(i as i64);
        }
        let config = LoaderConfig { shuffle: false, drop_last: false, ..config };
        Ok(Self { loader: Loader::new(Arc::new(dataset), config), labels: Tensor::from_slice(&labels) })
    }

    pub fn classes(&self) -> Vec<String> {
        self.loader.dataset().classes()
    }

    pub fn len(&self) -> usize {
        self.loader.dataset().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pooled, normalised backbone features `[N, D]` on `device` (eval mode, no augmentation)
    /// with their labels; an unreadable image is replaced by the loader and reported.
    pub fn features(&self, encoder: &Encoder, precision: Precision) -> (Tensor, Tensor, Vec<Skipped>) {
        let dev = encoder_device(encoder);
        let mut feats = Vec::new();
        let mut labels = Vec::new();
        let mut epoch = self.loader.epoch(0, 0);
        for batch in epoch.by_ref() {
            let x = data::normalize(&batch.images).to_device(dev);
            let x = if encoder.config().in_channels == 3 { x.repeat([1, 3, 1, 1]) } else { x };
            let f = tch::no_grad(|| device::autocast(dev, precision, || encoder.features_t(&x, false)))
                .expect("autocast on the encoder's device");
            feats.push(crate::model::moco::normalize(&f.to_kind(Kind::Float), 1));
            let idx: Vec<i64> = batch.samples.iter().map(|&i| i as i64).collect();
            labels.push(self.labels.index_select(0, &Tensor::from_slice(&idx)));
        }
        let skipped = epoch.skipped().to_vec();
        (Tensor::cat(&feats, 0), Tensor::cat(&labels, 0), skipped)
    }
}

fn encoder_device(encoder: &Encoder) -> Device {
    use crate::model::StateDict;
    encoder.named_tensors("").first().map(|t| t.tensor.device()).unwrap_or(Device::Cpu)
}

/// kNN top-1 (percent) of `encoder` on `val`, with `train` as the memory bank.
pub fn knn_top1(
    encoder: &Encoder,
    train: &LabelledSet,
    val: &LabelledSet,
    cfg: KnnConfig,
    precision: Precision,
) -> KnnResult {
    let (bank, bank_labels, mut skipped) = train.features(encoder, precision);
    let (query, truth, s2) = val.features(encoder, precision);
    skipped.extend(s2);
    let classes = train.classes().len() as i64;
    let predicted = knn_predict(&bank, &bank_labels, &query, classes, cfg);
    KnnResult {
        top1: top1(&predicted, &truth),
        train: bank.size()[0] as usize,
        val: query.size()[0] as usize,
        skipped,
    }
}

/// What a kNN evaluation measured.
#[derive(Debug, Clone)]
pub struct KnnResult {
    pub top1: f64,
    pub train: usize,
    pub val: usize,
    pub skipped: Vec<Skipped>,
}
