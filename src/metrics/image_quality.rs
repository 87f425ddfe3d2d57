//! Image quality of a predicted image against its target (bone suppression, and any other
//! image-to-image task): PSNR, SSIM and RMSE equal to scikit-image's `peak_signal_noise_ratio`,
//! `structural_similarity` and NumPy's root mean squared error, so that scores compare with
//! papers and Python pipelines that use them. Images are row-major grey values in `f64`.
//!
//! PSNR and SSIM depend on the scale of the values: their `data_range` is the span the pixel
//! type can hold (255 for 8-bit values, 4095 for 12-bit, 1 for floats in 0..1), never the span
//! of one image, which would make scores of different images incomparable. Arguments come as
//! (prediction, target), the reverse of scikit-image's (true, test); NaN pixels give NaN scores.

/// Why a score cannot be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImageQualityError {
    #[error("{pred} predicted pixels for {target} target pixels")]
    Length { pred: usize, target: usize },
    #[error("{pixels} pixels are not a {width} x {height} image")]
    Shape { pixels: usize, width: usize, height: usize },
    #[error("the images have no pixels")]
    Empty,
    /// scikit-image refuses images narrower or lower than the window.
    #[error("a {width} x {height} image is smaller than the {window} x {window} SSIM window")]
    TooSmall { width: usize, height: usize, window: usize },
    /// A range of zero, negative or not finite makes every score meaningless (infinite or NaN);
    /// scikit-image does not check.
    #[error("data range {0} is not a positive finite number")]
    DataRange(f64),
}

/// The local window of SSIM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SsimWindow {
    /// scikit-image's default: a 7 x 7 uniform window, sample covariance (N / (N - 1)).
    Uniform7,
    /// Wang et al. (2004), as scikit-image computes it with `gaussian_weights=True, sigma=1.5,
    /// use_sample_covariance=False`: an 11 x 11 Gaussian window (truncated at 3.5 sigma),
    /// population covariance.
    Gaussian,
}

impl SsimWindow {
    /// The 1-D taps (the 2-D window is their outer product) and the covariance factor.
    fn taps(self) -> (Vec<f64>, f64) {
        match self {
            SsimWindow::Uniform7 => {
                const SIZE: usize = 7;
                let n = (SIZE * SIZE) as f64;
                (vec![1.0 / SIZE as f64; SIZE], n / (n - 1.0))
            }
            SsimWindow::Gaussian => {
                // scipy.ndimage._gaussian_kernel1d(sigma, 0, radius) with truncate = 3.5.
                let (sigma, truncate) = (1.5f64, 3.5f64);
                let radius = (truncate * sigma + 0.5) as i64;
                let sigma2 = sigma * sigma;
                let phi: Vec<f64> =
                    (-radius..=radius).map(|x| (-0.5 / sigma2 * (x * x) as f64).exp()).collect();
                let sum: f64 = phi.iter().sum();
                (phi.iter().map(|p| p / sum).collect(), 1.0)
            }
        }
    }

    /// Side of the window: 7 or 11 pixels. Images must be at least this wide and high, and
    /// the mean leaves out a border of half of it.
    pub fn size(self) -> usize {
        match self {
            SsimWindow::Uniform7 => 7,
            SsimWindow::Gaussian => 11,
        }
    }
}

/// All three scores of one image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageScores {
    pub psnr: f64,
    pub ssim: f64,
    pub rmse: f64,
}

/// Sums in blocks, so that the rounding error grows with the block size plus the number of
/// blocks, not with the pixel count (close to NumPy's pairwise sum on 512 x 512 images).
fn block_sum(values: impl Iterator<Item = f64>) -> f64 {
    const BLOCK: usize = 1024;
    let (mut total, mut block, mut count) = (0.0, 0.0, 0);
    for v in values {
        block += v;
        count += 1;
        if count == BLOCK {
            total += block;
            block = 0.0;
            count = 0;
        }
    }
    total + block
}

fn check_lengths(pred: &[f64], target: &[f64]) -> Result<(), ImageQualityError> {
    if pred.len() != target.len() {
        return Err(ImageQualityError::Length { pred: pred.len(), target: target.len() });
    }
    if pred.is_empty() {
        return Err(ImageQualityError::Empty);
    }
    Ok(())
}

fn check_range(data_range: f64) -> Result<(), ImageQualityError> {
    if data_range.is_finite() && data_range > 0.0 {
        Ok(())
    } else {
        Err(ImageQualityError::DataRange(data_range))
    }
}

/// Mean squared error, `numpy.mean((target - pred) ** 2)`.
fn mse(pred: &[f64], target: &[f64]) -> Result<f64, ImageQualityError> {
    check_lengths(pred, target)?;
    Ok(block_sum(pred.iter().zip(target).map(|(p, t)| (t - p) * (t - p))) / pred.len() as f64)
}

/// Root mean squared error, in the units of the pixel values (any shape: only the pixel
/// counts must agree).
pub fn rmse(pred: &[f64], target: &[f64]) -> Result<f64, ImageQualityError> {
    Ok(mse(pred, target)?.sqrt())
}

/// Peak signal-to-noise ratio in dB, `skimage.metrics.peak_signal_noise_ratio(target, pred,
/// data_range=data_range)` = 10 log10(data_range² / MSE): infinite for identical images.
pub fn psnr(pred: &[f64], target: &[f64], data_range: f64) -> Result<f64, ImageQualityError> {
    check_range(data_range)?;
    let mse = mse(pred, target)?;
    Ok(10.0 * (data_range * data_range / mse).log10())
}

/// scipy.ndimage's mode `reflect` (half-sample symmetric: `d c b a | a b c d | d c b a`).
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let m = i.rem_euclid(2 * n);
    (if m < n { m } else { 2 * n - 1 - m }) as usize
}

/// Correlates a `width x height` image with `taps` along the columns, then along the rows, as
/// scipy.ndimage filters axis 0 then axis 1, with `reflect` borders.
fn filter(image: &[f64], width: usize, height: usize, taps: &[f64]) -> Vec<f64> {
    let r = (taps.len() / 2) as isize;
    let mut columns = vec![0.0; image.len()];
    for (y, out) in columns.chunks_exact_mut(width).enumerate() {
        for (k, &tap) in taps.iter().enumerate() {
            let src = reflect(y as isize + k as isize - r, height);
            for (o, &v) in out.iter_mut().zip(&image[src * width..(src + 1) * width]) {
                *o += tap * v;
            }
        }
    }
    let mut out = vec![0.0; image.len()];
    let mut padded = vec![0.0; width + taps.len() - 1];
    for (row, out) in columns.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        for (i, p) in padded.iter_mut().enumerate() {
            *p = row[reflect(i as isize - r, width)];
        }
        for (x, o) in out.iter_mut().enumerate() {
            *o = taps.iter().zip(&padded[x..]).map(|(t, v)| t * v).sum();
        }
    }
    out
}

/// Mean structural similarity, `skimage.metrics.structural_similarity(target, pred,
/// data_range=data_range)` for [`SsimWindow::Uniform7`] (K1 = 0.01, K2 = 0.03), with
/// `gaussian_weights=True, sigma=1.5, use_sample_covariance=False` for
/// [`SsimWindow::Gaussian`]. Local statistics come from the window filtered over the whole
/// image (reflected borders); the mean leaves out a border of half a window, where they are
/// least reliable. 1 for identical images; symmetric in `pred` and `target`.
pub fn ssim(
    pred: &[f64],
    target: &[f64],
    width: usize,
    height: usize,
    data_range: f64,
    window: SsimWindow,
) -> Result<f64, ImageQualityError> {
    check_lengths(pred, target)?;
    if width.checked_mul(height) != Some(pred.len()) {
        return Err(ImageQualityError::Shape { pixels: pred.len(), width, height });
    }
    let size = window.size();
    if width < size || height < size {
        return Err(ImageQualityError::TooSmall { width, height, window: size });
    }
    check_range(data_range)?;
    let (taps, cov_norm) = window.taps();
    debug_assert_eq!(taps.len(), size);
    let f = |image: &[f64]| filter(image, width, height, &taps);
    let product = |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(a, b)| a * b).collect() };
    // skimage's im1 is the target, im2 the prediction; every step below is symmetric.
    let (ux, uy) = (f(target), f(pred));
    let uxx = f(&product(target, target));
    let uyy = f(&product(pred, pred));
    let uxy = f(&product(target, pred));
    let c1 = (0.01 * data_range).powi(2);
    let c2 = (0.03 * data_range).powi(2);
    let pad = (size - 1) / 2;
    let local = (pad..height - pad).flat_map(|y| (pad..width - pad).map(move |x| y * width + x)).map(|i| {
        let (ux, uy) = (ux[i], uy[i]);
        let vx = cov_norm * (uxx[i] - ux * ux);
        let vy = cov_norm * (uyy[i] - uy * uy);
        let vxy = cov_norm * (uxy[i] - ux * uy);
        let (a1, a2) = (2.0 * ux * uy + c1, 2.0 * vxy + c2);
        let (b1, b2) = (ux * ux + uy * uy + c1, vx + vy + c2);
        (a1 * a2) / (b1 * b2)
    });
    let count = (width - 2 * pad) * (height - 2 * pad);
    Ok(block_sum(local) / count as f64)
}

/// PSNR, SSIM (with `window`) and RMSE of one predicted image against its target.
pub fn score_images(
    pred: &[f64],
    target: &[f64],
    width: usize,
    height: usize,
    data_range: f64,
    window: SsimWindow,
) -> Result<ImageScores, ImageQualityError> {
    let ssim = ssim(pred, target, width, height, data_range, window)?;
    let mse = mse(pred, target)?;
    Ok(ImageScores { psnr: 10.0 * (data_range * data_range / mse).log10(), ssim, rmse: mse.sqrt() })
}
