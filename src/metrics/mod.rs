//! Evaluation metrics. [`knn`]: the weighted kNN monitor of self-supervised pretraining;
//! [`auroc`]: ROC curves and AUROC as scikit-learn computes them; [`classification`]: threshold
//! metrics, the Youden threshold, confusion matrix and accuracy; [`bootstrap`]: seeded bootstrap
//! intervals of AUROC, per label, of the mean, and paired between two models; [`image_quality`]:
//! PSNR, SSIM and RMSE of image-to-image tasks (bone suppression) as scikit-image computes them;
//! [`fid`]: FID as pytorch-fid 0.3.0 and KID as torch-fidelity compute them, from Inception
//! activations.
pub mod auroc;
pub mod bootstrap;
pub mod classification;
pub mod fid;
pub mod image_quality;
pub mod knn;

pub use auroc::{RocCurve, RocError, mean_auroc, roc_auc, roc_curve};
pub use bootstrap::{
    AurocIntervals, Interval, PairedDifference, bootstrap_auroc, bootstrap_indices,
    paired_bootstrap_difference, percentile_interval,
};
pub use classification::{ThresholdMetrics, accuracy, confusion_matrix, threshold_metrics, youden_threshold};
pub use fid::{
    FidError, KidSubset, activation_statistics, fid_from_activations, frechet_distance, grey_to_input, kid,
    kid_subsets, kid_with_subsets,
};
pub use image_quality::{ImageQualityError, ImageScores, SsimWindow, psnr, rmse, score_images, ssim};
pub use knn::{KnnConfig, KnnResult, LabelledSet, knn_predict, knn_top1, top1};
