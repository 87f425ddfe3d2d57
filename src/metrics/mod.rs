//! Evaluation metrics. [`knn`]: the weighted kNN monitor of self-supervised pretraining.
pub mod knn;

pub use knn::{KnnConfig, KnnResult, LabelledSet, knn_predict, knn_top1, top1};
