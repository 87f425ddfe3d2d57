//! Radiographs in: datasets of files, decoding to grey values in the 0..255 display range, a
//! threaded loader, and the fixed transforms every encoder input goes through.
#[cfg(feature = "torch")]
pub mod augment;
#[cfg(feature = "torch")]
pub mod buffers;
pub mod cache;
pub mod dataset;
pub mod decode;
pub mod dicom;
pub mod dicom_write;
pub mod jpeg_extended;
#[cfg(feature = "torch")]
pub mod loader;
pub mod synthetic;
pub mod targets;

#[cfg(feature = "torch")]
use tch::{Device, Kind, Tensor};

#[cfg(feature = "torch")]
pub use augment::{
    AugmentConfig, HostScratch, Interp, Rng, ViewPlan, augment, augment_host, draw_plans, warp_host,
    warp_planned,
};
#[cfg(feature = "torch")]
pub use buffers::BufferPool;
pub use cache::{CacheError, DecodeCache};
pub use dataset::{Dataset, DatasetError, Sample, output_names};
pub use decode::{
    BytesError, DecodeError, FileKind, GreyImage, decode_bytes, decode_file, decode_file_with, decode_files,
    file_kind, is_supported_image, kind_of_bytes,
};
pub use dicom::{DicomInfo, DicomPixels, WindowFallback, Windowing};
#[cfg(feature = "torch")]
pub use loader::{Batch, EpochIter, JointView, Loader, LoaderConfig, Shard, Skipped, view_rng};
pub use targets::{
    BlankPolicy, CHEXPERT_LABELS, CHEXPERT5_LABELS, Circle, CircleMask, LabelCsv, LabelMapping, LabelPolicy,
    LabelSet, LabelValue, Pairing, PolicyError, Projection, Target, TargetKind, UncertainPolicy, View,
    ViewFilter, pair_folders, patient_from_path,
};

/// CheSS normalisation: `x = (x / 255 - MEAN) / STD`.
pub const MEAN: f64 = 0.658;
pub const STD: f64 = 0.221;

/// `[1, H, W]` float tensor of an image, in 0..255.
#[cfg(feature = "torch")]
pub fn to_tensor(img: &GreyImage) -> Tensor {
    Tensor::from_slice(&img.pixels).view([1, img.height as i64, img.width as i64])
}

/// Bilinear resize (half-pixel centres, no antialiasing: OpenCV's INTER_LINEAR, which the
/// original pipeline uses) of `[C, H, W]` or `[N, C, H, W]` to `size x size`; unchanged if
/// already that size.
#[cfg(feature = "torch")]
pub fn resize(x: &Tensor, size: i64) -> Tensor {
    let dims = x.size();
    let (h, w) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    if h == size && w == size {
        return x.shallow_clone();
    }
    let batched = if dims.len() == 3 { x.unsqueeze(0) } else { x.shallow_clone() };
    let out = batched.to_kind(Kind::Float).upsample_bilinear2d([size, size], false, None, None);
    if dims.len() == 3 { out.squeeze_dim(0) } else { out }
}

/// `(x / 255 - MEAN) / STD`.
#[cfg(feature = "torch")]
pub fn normalize(x: &Tensor) -> Tensor {
    (x.to_kind(Kind::Float) / 255.0 - MEAN) / STD
}

/// Decoded images as one normalised `[N, channels, size, size]` batch on `device`; grey is
/// repeated for 3-channel encoders.
#[cfg(feature = "torch")]
pub fn batch(images: &[GreyImage], size: i64, channels: i64, device: Device) -> Tensor {
    let items: Vec<Tensor> = images.iter().map(|img| resize(&to_tensor(img), size)).collect();
    let x = normalize(&Tensor::stack(&items, 0)).to_device(device);
    if channels == 1 { x } else { x.repeat([1, channels, 1, 1]) }
}
