//! Evaluation metrics. [`knn`]: the weighted kNN monitor of self-supervised pretraining;
//! [`auroc`]: ROC curves and AUROC as scikit-learn computes them.
pub mod auroc;
pub mod knn;

pub use auroc::{RocCurve, RocError, mean_auroc, roc_auc, roc_curve};
pub use knn::{KnnConfig, KnnResult, LabelledSet, knn_predict, knn_top1, top1};
