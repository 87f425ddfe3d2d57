//! FID and KID of generated images, computed as pytorch-fid 0.3.0 and torch-fidelity compute
//! them, from Inception activations (see [`crate::model::FidInception`] for the network).
//!
//! - [`activation_statistics`]: the mean and covariance of activations, as pytorch-fid's
//!   `calculate_activation_statistics` (`np.mean(act, axis=0)`, `np.cov(act, rowvar=False)`:
//!   `N - 1` normalisation), in `f64`.
//! - [`frechet_distance`]: pytorch-fid's `calculate_frechet_distance`,
//!   `|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr sqrtm(sigma1 sigma2)`.
//! - [`kid`] / [`kid_with_subsets`]: torch-fidelity's KID (`metric_kid.py`, itself from
//!   Binkowski et al.'s MMD-GAN code): the unbiased MMD^2 estimate with the polynomial kernel
//!   `k(x, y) = (x.y / d + 1)^3`, averaged over random subsets; mean and population standard
//!   deviation (`np.std`) over the subsets.
//!
//! # The square-root trace
//!
//! pytorch-fid takes the trace of `scipy.linalg.sqrtm(sigma1 @ sigma2)` (a Schur method on a
//! non-symmetric product). Here the same number comes from symmetric decompositions in `f64`
//! (libtorch): with `R1 = sigma1^(1/2)` and `R2 = sigma2^(1/2)` the PSD square roots (from
//! `linalg_eigh`, tiny negative round-off eigenvalues clamped to zero),
//!
//! `tr sqrtm(sigma1 sigma2) = sum_i sqrt(lambda_i(sigma1 sigma2)) = ||R1 R2||_* `
//!
//! (the nuclear norm, the sum of singular values). Why: the trace of the principal square root
//! of any matrix that has one is the sum of the principal square roots of its eigenvalues;
//! `sigma1 sigma2 = R1 (R1 sigma2)` has the eigenvalues of `(R1 sigma2) R1 = R1 R2 R2 R1 =
//! (R1 R2)(R1 R2)^T` (AB and BA share their eigenvalues, singular or not), which are the squared
//! singular values of `R1 R2`: all real and non-negative, so the square root is real and its
//! trace is the sum of those singular values. For positive semi-definite covariances the value is
//! scipy's up to scipy's round-off: 1e-13 relative on full-rank statistics; on rank-deficient
//! ones (fewer samples than dimensions) scipy's Schur method loses about 1e-8 relative on the
//! zero eigenvalues, which this way does not (identical statistics give 1e-13 instead of
//! scipy's 1e-6, relative to the traces).
//!
//! pytorch-fid's two special cases, and how they read here:
//! - A non-finite `sqrtm` ("singular product") makes it retry with `1e-6 * I` added to both
//!   covariances. The same retry is made here when the decompositions fail or give a non-finite
//!   trace. For finite covariances neither happens (nor does scipy 1.17's `sqrtm` return
//!   non-finite values for them: zero, rank-one and disjoint-support products included); inputs
//!   holding NaN or infinity are refused ([`FidError::NonFinite`]) rather than turned into NaN.
//! - A complex `sqrtm` has its real part taken when the imaginary parts of its diagonal are
//!   within `atol = 1e-3`, else it raises. For PSD covariances the square root is real, so this
//!   never applies here. A covariance with an eigenvalue below `-sqrt(f64::EPSILON)` times its
//!   largest magnitude is not PSD (not the output of `np.cov`); its product is then decomposed
//!   as scipy does it, by the general eigenvalues of `sigma1 sigma2`: the trace is the real part
//!   of the sum of their principal square roots, and [`FidError::Imaginary`] is returned when
//!   one of those square roots has an imaginary part beyond 1e-3.
use tch::{Device, Kind, Tensor};

use crate::data::{GreyImage, Rng};

/// pytorch-fid's `eps` of `calculate_frechet_distance`: the diagonal offset of its retry.
pub const FID_OFFSET_EPS: f64 = 1e-6;

/// pytorch-fid's tolerance on the imaginary part of `sqrtm` (`np.allclose(..., atol=1e-3)`).
pub const FID_IMAGINARY_ATOL: f64 = 1e-3;

/// Why a distance cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum FidError {
    #[error("shape: {0}")]
    Shape(String),
    #[error("{0} holds NaN or infinite values")]
    NonFinite(&'static str),
    /// pytorch-fid's `ValueError('Imaginary component ...')`.
    #[error("imaginary component {0} in the square root of sigma1 sigma2 (covariances not PSD)")]
    Imaginary(f64),
    #[error("the matrix square root failed even with the {FID_OFFSET_EPS} diagonal offset: {0}")]
    SquareRoot(String),
    #[error("KID: {0}")]
    Kid(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

fn check_finite(what: &'static str, v: &[f64]) -> Result<(), FidError> {
    if v.iter().all(|x| x.is_finite()) { Ok(()) } else { Err(FidError::NonFinite(what)) }
}

/// `np.mean(act, axis=0)` and `np.cov(act, rowvar=False)` of activations `[N, d]` (any float
/// kind, any device), in `f64`: the mean, and the `d x d` covariance row-major with `N - 1`
/// normalisation. Needs `N >= 2` (numpy returns NaN for one sample).
pub fn activation_statistics(acts: &Tensor) -> Result<(Vec<f64>, Vec<f64>), FidError> {
    let size = acts.size();
    if size.len() != 2 {
        return Err(FidError::Shape(format!("activations must be [N, d], got {size:?}")));
    }
    let (n, d) = (size[0], size[1]);
    if n < 2 || d < 1 {
        return Err(FidError::Shape(format!(
            "statistics need N >= 2 samples of d >= 1 values, got [{n}, {d}]"
        )));
    }
    let (mu, sigma) = tch::no_grad(|| -> Result<(Tensor, Tensor), FidError> {
        let x = acts.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?;
        let mu = x.f_mean_dim(0, false, None::<Kind>)?;
        let centred = x.f_sub(&mu)?;
        // numpy: `c = dot(X, X.T); c *= np.true_divide(1, fact)`.
        let sigma = centred.f_tr()?.f_matmul(&centred)?.f_mul_scalar(1.0 / (n - 1) as f64)?;
        Ok((mu, sigma.f_contiguous()?))
    })?;
    let mu = Vec::<f64>::try_from(&mu)?;
    let sigma = Vec::<f64>::try_from(&sigma.f_view(-1)?)?;
    check_finite("activations", &mu)?;
    Ok((mu, sigma))
}

/// The Frechet distance between `N(mu1, sigma1)` and `N(mu2, sigma2)` as pytorch-fid 0.3.0's
/// `calculate_frechet_distance`; covariances are `d x d` row-major and symmetric (their lower
/// triangles are decomposed). See the module documentation for the square-root trace and the
/// special cases.
pub fn frechet_distance(
    mu1: &[f64],
    sigma1: &[f64],
    mu2: &[f64],
    sigma2: &[f64],
    d: usize,
) -> Result<f64, FidError> {
    if mu1.len() != d || mu2.len() != d {
        return Err(FidError::Shape(format!(
            "mean vectors of {} and {} values for d = {d}",
            mu1.len(),
            mu2.len()
        )));
    }
    if sigma1.len() != d * d || sigma2.len() != d * d {
        return Err(FidError::Shape(format!(
            "covariances of {} and {} values for d = {d} (d x d = {})",
            sigma1.len(),
            sigma2.len(),
            d * d
        )));
    }
    if d == 0 {
        return Err(FidError::Shape("d = 0".into()));
    }
    check_finite("mu1", mu1)?;
    check_finite("mu2", mu2)?;
    check_finite("sigma1", sigma1)?;
    check_finite("sigma2", sigma2)?;
    let s1 = Tensor::from_slice(sigma1).view([d as i64, d as i64]);
    let s2 = Tensor::from_slice(sigma2).view([d as i64, d as i64]);
    let tr_covmean = match trace_sqrt_product(&s1, &s2) {
        Ok(t) if t.is_finite() => t,
        Err(e @ FidError::Imaginary(_)) => return Err(e),
        // pytorch-fid: "fid calculation produces singular product; adding eps to diagonal".
        _ => {
            let offset = Tensor::eye(d as i64, (Kind::Double, Device::Cpu)) * FID_OFFSET_EPS;
            match trace_sqrt_product(&(&s1 + &offset), &(&s2 + &offset)) {
                Ok(t) if t.is_finite() => t,
                Ok(t) => return Err(FidError::SquareRoot(format!("trace {t}"))),
                Err(e) => return Err(FidError::SquareRoot(e.to_string())),
            }
        }
    };
    let diff_sq: f64 = mu1.iter().zip(mu2).map(|(a, b)| (a - b) * (a - b)).sum();
    let trace = |s: &[f64]| (0..d).map(|i| s[i * d + i]).sum::<f64>();
    Ok(diff_sq + trace(sigma1) + trace(sigma2) - 2.0 * tr_covmean)
}

/// The PSD square root `V diag(sqrt(max(w, 0))) V^T` of a symmetric matrix, and whether it is
/// positive semi-definite up to round-off (no eigenvalue below `-sqrt(eps) * max |w|`).
fn psd_sqrt(s: &Tensor) -> Result<(Tensor, bool), FidError> {
    let (w, v) = s.f_linalg_eigh("L")?;
    let min = w.f_min()?.f_double_value(&[])?;
    let max_abs = w.f_abs()?.f_max()?.f_double_value(&[])?;
    let psd = min >= -f64::EPSILON.sqrt() * max_abs;
    let root = v.f_mul(&w.f_clamp_min(0.0)?.f_sqrt()?.f_unsqueeze(0)?)?.f_matmul(&v.f_tr()?)?;
    Ok((root, psd))
}

/// `tr sqrtm(s1 s2)` (real part), see the module documentation.
fn trace_sqrt_product(s1: &Tensor, s2: &Tensor) -> Result<f64, FidError> {
    tch::no_grad(|| {
        let (r1, psd1) = psd_sqrt(s1)?;
        let (r2, psd2) = psd_sqrt(s2)?;
        if psd1 && psd2 {
            let nuclear = r1.f_matmul(&r2)?.f_linalg_norm_ord_str(
                "nuc",
                [-2i64, -1].as_slice(),
                false,
                None::<Kind>,
            )?;
            return Ok(nuclear.f_double_value(&[])?);
        }
        // Not covariances: scipy's principal square root, by its eigenvalues.
        let eig = s1.f_matmul(s2)?.f_linalg_eigvals()?.f_view_as_real()?.f_contiguous()?;
        let pairs = Vec::<f64>::try_from(&eig.f_view(-1)?)?;
        let mut real = 0.0;
        let mut worst_imag: f64 = 0.0;
        for z in pairs.chunks_exact(2) {
            let (re, im) = principal_sqrt(z[0], z[1]);
            real += re;
            worst_imag = worst_imag.max(im.abs());
        }
        if worst_imag > FID_IMAGINARY_ATOL {
            return Err(FidError::Imaginary(worst_imag));
        }
        Ok(real)
    })
}

/// The principal square root of `re + i im` (non-negative real part).
fn principal_sqrt(re: f64, im: f64) -> (f64, f64) {
    let r = re.hypot(im);
    let a = ((r + re) / 2.0).max(0.0).sqrt();
    let b = ((r - re) / 2.0).max(0.0).sqrt();
    (a, if im < 0.0 { -b } else { b })
}

/// FID between two sets of activations `[N, d]`: [`activation_statistics`] of each, then
/// [`frechet_distance`] (pytorch-fid's `calculate_fid_given_paths` after its activations).
pub fn fid_from_activations(a: &Tensor, b: &Tensor) -> Result<f64, FidError> {
    let (mu1, s1) = activation_statistics(a)?;
    let (mu2, s2) = activation_statistics(b)?;
    if mu1.len() != mu2.len() {
        return Err(FidError::Shape(format!("activations of {} and {} dimensions", mu1.len(), mu2.len())));
    }
    frechet_distance(&mu1, &s1, &mu2, &s2, mu1.len())
}

/// 8-bit grey images (values 0..255, as [`crate::data::decode_file`] gives) as the network's
/// input `[N, 3, H, W]` in 0..1: what pytorch-fid's `ImagePathDataset` makes of an 8-bit grey
/// file (`Image.open(path).convert('RGB')`, which copies the grey value to the three channels,
/// then `ToTensor()`, `uint8 / 255` in `float32`). The images must share one size.
pub fn grey_to_input(images: &[GreyImage]) -> Result<Tensor, FidError> {
    let Some(first) = images.first() else {
        return Err(FidError::Shape("no images".into()));
    };
    let (w, h) = (first.width, first.height);
    let mut pixels = Vec::with_capacity(images.len() * (w * h) as usize);
    for (i, img) in images.iter().enumerate() {
        if (img.width, img.height) != (w, h) || img.pixels.len() != (w * h) as usize {
            return Err(FidError::Shape(format!(
                "image {i} is {} x {}, image 0 is {w} x {h}: batches need one size",
                img.width, img.height
            )));
        }
        // The 8-bit value pytorch-fid would read from the file.
        pixels.extend(img.pixels.iter().map(|&v| v.round().clamp(0.0, 255.0) as u8));
    }
    let t = Tensor::from_slice(&pixels)
        .view([images.len() as i64, 1, h as i64, w as i64])
        .f_to_kind(Kind::Float)?
        .f_div_scalar(255.0)?;
    Ok(t.f_expand([-1, 3, -1, -1], false)?.f_contiguous()?)
}

/// One KID subset pair: indices into the first and the second feature set, equally many.
pub type KidSubset = (Vec<usize>, Vec<usize>);

/// `count` draws without replacement of `k` of `0..n`, each a partial Fisher-Yates shuffle.
fn choose(rng: &mut Rng, n: usize, k: usize) -> Vec<usize> {
    let mut pool: Vec<usize> = (0..n).collect();
    for i in 0..k {
        // Uniform in i..n by a widening multiply (bias below 2^-64 * n).
        let j = i + ((u128::from(rng.next_u64()) * (n - i) as u128) >> 64) as usize;
        pool.swap(i, j);
    }
    pool.truncate(k);
    pool
}

/// The subsets of [`kid`]: `subsets` pairs of `subset_size` distinct indices into `0..n1` and
/// `0..n2`, drawn with the crate's [`Rng`] seeded with `seed` (torch-fidelity draws
/// `rng.choice(n, subset_size, replace=False)` from numpy's `RandomState(seed)`; the draws are the
/// same in distribution, not in value).
pub fn kid_subsets(
    n1: usize,
    n2: usize,
    subsets: usize,
    subset_size: usize,
    seed: u64,
) -> Result<Vec<KidSubset>, FidError> {
    if subsets == 0 {
        return Err(FidError::Kid("at least one subset is needed".into()));
    }
    if subset_size < 2 {
        return Err(FidError::Kid(format!(
            "subset size {subset_size}: the unbiased estimate needs 2 or more"
        )));
    }
    if subset_size > n1 || subset_size > n2 {
        // torch-fidelity's check, with its message's meaning.
        return Err(FidError::Kid(format!(
            "subset size {subset_size} is larger than the number of samples (input 1: {n1}, input 2: {n2})"
        )));
    }
    let mut rng = Rng::new(seed);
    Ok((0..subsets).map(|_| (choose(&mut rng, n1, subset_size), choose(&mut rng, n2, subset_size))).collect())
}

/// torch-fidelity's `polynomial_kernel(X, Y)`: `(X Y^T / d + 1)^3`.
fn polynomial_kernel(x: &Tensor, y: &Tensor, gamma: f64) -> Result<Tensor, FidError> {
    Ok(x.f_matmul(&y.f_tr()?)?.f_mul_scalar(gamma)?.f_add_scalar(1.0)?.f_pow_tensor_scalar(3)?)
}

/// torch-fidelity's `mmd2(K_XX, K_XY, K_YY)` with `mmd_est='unbiased'`.
fn mmd2_unbiased(k_xx: &Tensor, k_xy: &Tensor, k_yy: &Tensor) -> Result<f64, FidError> {
    let m = k_xx.size()[0] as f64;
    let off_diagonal_sum = |k: &Tensor| -> Result<f64, FidError> {
        let sums = k.f_sum_dim_intlist(1, false, None::<Kind>)?.f_sub(&k.f_diagonal(0, 0, 1)?)?;
        Ok(sums.f_sum(None::<Kind>)?.f_double_value(&[])?)
    };
    let kt_xx = off_diagonal_sum(k_xx)?;
    let kt_yy = off_diagonal_sum(k_yy)?;
    let k_xy_sum = k_xy.f_sum_dim_intlist(0, false, None::<Kind>)?.f_sum(None::<Kind>)?.f_double_value(&[])?;
    Ok((kt_xx + kt_yy) / (m * (m - 1.0)) - 2.0 * k_xy_sum / (m * m))
}

/// KID over given subsets: for each pair, the unbiased MMD^2 between `feats_a[first]` and
/// `feats_b[second]` under the polynomial kernel (degree 3, `gamma = 1/d`, `coef0 = 1`), as
/// torch-fidelity's `kid_features_to_metric`; returns `(mean, std)` over the subsets, the
/// standard deviation with `ddof = 0` (`np.std`). Computed in `f64` (torch-fidelity computes in
/// the features' dtype, `float32` for its own extractor, so its values carry `float32` rounding).
pub fn kid_with_subsets(
    feats_a: &Tensor,
    feats_b: &Tensor,
    subsets: &[KidSubset],
) -> Result<(f64, f64), FidError> {
    let (sa, sb) = (feats_a.size(), feats_b.size());
    if sa.len() != 2 || sb.len() != 2 || sa[1] != sb[1] || sa[1] < 1 {
        return Err(FidError::Shape(format!("features must be [N1, d] and [N2, d], got {sa:?} and {sb:?}")));
    }
    if subsets.is_empty() {
        return Err(FidError::Kid("at least one subset is needed".into()));
    }
    let gamma = 1.0 / sa[1] as f64;
    let mmds = tch::no_grad(|| -> Result<Vec<f64>, FidError> {
        let a = feats_a.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?;
        let b = feats_b.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?;
        let mut mmds = Vec::with_capacity(subsets.len());
        for (i, (ia, ib)) in subsets.iter().enumerate() {
            if ia.len() != ib.len() || ia.len() < 2 {
                return Err(FidError::Kid(format!(
                    "subset {i} has {} and {} indices: both need the same size, at least 2",
                    ia.len(),
                    ib.len()
                )));
            }
            if ia.iter().any(|&k| k as i64 >= sa[0]) || ib.iter().any(|&k| k as i64 >= sb[0]) {
                return Err(FidError::Kid(format!(
                    "subset {i} has an index beyond {} or {} samples",
                    sa[0], sb[0]
                )));
            }
            let idx = |v: &[usize]| Tensor::from_slice(&v.iter().map(|&k| k as i64).collect::<Vec<_>>());
            let f1 = a.f_index_select(0, &idx(ia))?;
            let f2 = b.f_index_select(0, &idx(ib))?;
            let k_11 = polynomial_kernel(&f1, &f1, gamma)?;
            let k_22 = polynomial_kernel(&f2, &f2, gamma)?;
            let k_12 = polynomial_kernel(&f1, &f2, gamma)?;
            mmds.push(mmd2_unbiased(&k_11, &k_12, &k_22)?);
        }
        Ok(mmds)
    })?;
    let n = mmds.len() as f64;
    let mean = mmds.iter().sum::<f64>() / n;
    let std = (mmds.iter().map(|m| (m - mean) * (m - mean)).sum::<f64>() / n).sqrt();
    Ok((mean, std))
}

/// KID with `subsets` random subsets of `subset_size` samples each ([`kid_subsets`] with
/// `seed`), then [`kid_with_subsets`]. torch-fidelity's defaults are 100 subsets of 1000.
pub fn kid(
    feats_a: &Tensor,
    feats_b: &Tensor,
    subsets: usize,
    subset_size: usize,
    seed: u64,
) -> Result<(f64, f64), FidError> {
    let (sa, sb) = (feats_a.size(), feats_b.size());
    if sa.len() != 2 || sb.len() != 2 {
        return Err(FidError::Shape(format!("features must be [N1, d] and [N2, d], got {sa:?} and {sb:?}")));
    }
    let chosen = kid_subsets(sa[0] as usize, sb[0] as usize, subsets, subset_size, seed)?;
    kid_with_subsets(feats_a, feats_b, &chosen)
}
