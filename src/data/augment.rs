//! The CheSS augmentations (recipe steps 2 to 8) as batched tensor ops on the training device,
//! so that on a GPU the CPU only decodes. Parameters are drawn per image from a seeded
//! generator on the host, and Gaussian noise from the device's generator seeded from it, so a
//! run repeats exactly on the same kind of device.
//!
//! Everything is computed in float on 0..255 values (the original rounds to uint8 after each
//! step, which turns small noise and shifts into no-ops); borders are reflect-101 as OpenCV's
//! default, interpolation bilinear.
use tch::{Device, Kind, Tensor};

use super::{MEAN, STD};
use crate::device;

/// Probabilities and ranges of the recipe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AugmentConfig {
    /// Step 2: one of median blur 3x3, motion blur (kernel up to 7), sharpen; weights 1:2:2.
    pub p_blur_sharpen: f64,
    pub motion_blur_max: i64,
    pub sharpen_alpha: (f64, f64),
    pub sharpen_lightness: (f64, f64),
    /// Step 3: brightness +-0.1 of the range, contrast factor 0.8..1.1.
    pub p_brightness_contrast: f64,
    pub brightness: f64,
    pub contrast: (f64, f64),
    /// Step 4: Gaussian noise (variance 0..0.005 of the range) or multiplicative noise 0.9..1.1.
    pub p_noise: f64,
    pub noise_var: f64,
    pub multiplicative: (f64, f64),
    /// Step 5: value shift +-0.1.
    pub p_value_shift: f64,
    pub value_shift: f64,
    /// Step 6: shift +-0.0625, scale +-0.2, rotation +-10 degrees.
    pub p_affine: f64,
    pub shift: f64,
    pub scale: f64,
    pub rotate_deg: f64,
    /// Step 7: optical distortion, distort limit 0.05, shift limit 0.05.
    pub p_optical: f64,
    pub distort: f64,
    pub distort_shift: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            p_blur_sharpen: 0.2,
            motion_blur_max: 7,
            sharpen_alpha: (0.01, 0.2),
            sharpen_lightness: (0.5, 1.0),
            p_brightness_contrast: 0.6,
            brightness: 0.1,
            contrast: (0.8, 1.1),
            p_noise: 0.2,
            noise_var: 0.005,
            multiplicative: (0.9, 1.1),
            p_value_shift: 0.3,
            value_shift: 0.1,
            p_affine: 0.2,
            shift: 0.0625,
            scale: 0.2,
            rotate_deg: 10.0,
            p_optical: 0.2,
            distort: 0.05,
            distort_shift: 0.05,
        }
    }
}

/// Host-side random numbers (SplitMix64), seeded per batch.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// Reflect-101 padding (OpenCV's default border) of `[N, C, H, W]` by `pad` on every side.
fn pad101(x: &Tensor, pad: i64) -> Tensor {
    x.pad([pad, pad, pad, pad], "reflect", None)
}

/// 3x3 median of every pixel with replicated borders, as cv2.medianBlur(ksize=3).
pub fn median3(x: &Tensor) -> Tensor {
    let (n, c, h, w) = x.size4().unwrap();
    let cols =
        x.pad([1, 1, 1, 1], "replicate", None).im2col([3, 3], [1, 1], [0, 0], [1, 1]).view([n, c, 9, h * w]);
    cols.median_dim(2, false).0.view([n, c, h, w])
}

/// Per-image 2-d filtering: `kernels` `[N, k, k]` (odd k), reflect-101 borders
/// (cv2.filter2D on float input). Sparse kernels (motion lines, sharpen) are summed tap by tap
/// over shifted views, which on a CPU beats a one-channel convolution's im2col by far.
pub fn filter(x: &Tensor, kernels: &Tensor) -> Tensor {
    let (n, c, h, w) = x.size4().unwrap();
    let k = kernels.size()[1];
    let taps: Vec<f32> =
        Vec::try_from(kernels.to_kind(Kind::Float).to_device(Device::Cpu).reshape([-1])).unwrap_or_default();
    let nonzero = taps.iter().filter(|&&v| v != 0.0).count();
    let padded = pad101(x, k / 2);
    if n == 1 && nonzero <= 16 {
        let mut out = Tensor::zeros([n, c, h, w], (Kind::Float, x.device()));
        for (t, &v) in taps.iter().enumerate() {
            if v != 0.0 {
                let (r, q) = (t as i64 / k, t as i64 % k);
                let _ = out.g_add_(&(padded.narrow(2, r, h).narrow(3, q, w) * f64::from(v)));
            }
        }
        return out;
    }
    let weight = device::upload(&kernels.to_kind(Kind::Float), x.device())
        .unsqueeze(1)
        .repeat_interleave_self_int(c, 0, None);
    let padded = padded.reshape([1, n * c, h + k - 1, w + k - 1]);
    padded.conv2d(&weight, None::<&Tensor>, [1, 1], [0, 0], [1, 1], n * c).view([n, c, h, w])
}

/// Sharpen kernel: `(1 - alpha) * identity + alpha * [[-1,-1,-1],[-1,8+lightness,-1],[-1,-1,-1]]`.
pub fn sharpen_kernel(alpha: f64, lightness: f64) -> [f32; 9] {
    let mut k = [-alpha as f32; 9];
    k[4] = ((1.0 - alpha) + alpha * (8.0 + lightness)) as f32;
    k
}

/// A normalised line of length `size` through the centre at `angle_deg`, drawn into a
/// `size x size` kernel (motion blur).
pub fn motion_kernel(size: i64, angle_deg: f64) -> Vec<f32> {
    let s = size as usize;
    let mut k = vec![0f32; s * s];
    let c = (size - 1) as f64 / 2.0;
    let (dx, dy) = (angle_deg.to_radians().cos(), angle_deg.to_radians().sin());
    let steps = 4 * s;
    for i in 0..=steps {
        let t = -c + 2.0 * c * i as f64 / steps as f64;
        let (x, y) = ((c + t * dx).round() as usize, (c + t * dy).round() as usize);
        k[y.min(s - 1) * s + x.min(s - 1)] = 1.0;
    }
    let sum: f32 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= sum);
    k
}

/// Samples `src` at pixel coordinates `(sx, sy)` `[N, H, W]` bilinearly with reflect-101
/// borders (cv2.remap with BORDER_REFLECT_101).
pub fn remap(x: &Tensor, sx: &Tensor, sy: &Tensor) -> Tensor {
    let (_, _, h, w) = x.size4().unwrap();
    // align_corners=True maps -1..1 onto pixel centres 0..W-1; reflection about those centres
    // is reflect-101.
    let gx = sx * (2.0 / (w - 1) as f64) - 1.0;
    let gy = sy * (2.0 / (h - 1) as f64) - 1.0;
    let grid = Tensor::stack(&[gx, gy], 3).to_kind(x.kind());
    // grid_sampler_2d: interpolation 0 = bilinear, padding 2 = reflection.
    x.grid_sampler_2d(&grid, 0, 2, true)
}

/// Per-image affine warps given as 2x3 matrices `[N, 2, 3]` mapping source to destination pixel
/// coordinates (cv2.warpAffine with INTER_LINEAR and BORDER_REFLECT_101).
pub fn warp_affine(x: &Tensor, matrices: &Tensor) -> Tensor {
    let (n, c, h, w) = x.size4().unwrap();
    // src = A^-1 (dst - t) in pixels; in grid_sample's normalised coordinates (align_corners,
    // p = S g + S with S = diag((W-1)/2, (H-1)/2)) that is theta = [S^-1 A^-1 S | S^-1 (A^-1 (s - t) - s)].
    let m = matrices.to_kind(Kind::Double).to_device(Device::Cpu);
    let ainv = m.narrow(2, 0, 2).inverse();
    let t = m.narrow(2, 2, 1);
    let sv = Tensor::from_slice(&[(w - 1) as f64 / 2.0, (h - 1) as f64 / 2.0]).view([1, 2, 1]);
    let s_mat = Tensor::diag_embed(&sv.squeeze_dim(2), 0, -2, -1);
    let s_inv = Tensor::diag_embed(&(1.0 / sv.squeeze_dim(2)), 0, -2, -1);
    let lin = s_inv.matmul(&ainv).matmul(&s_mat);
    let off = s_inv.matmul(&(ainv.matmul(&(&sv - &t)) - &sv));
    let theta = device::upload(&Tensor::cat(&[lin, off], 2).to_kind(x.kind()), x.device());
    let grid = Tensor::affine_grid_generator(&theta, [n, c, h, w], true);
    // interpolation 0 = bilinear, padding 2 = reflection (about pixel centres: reflect-101).
    x.grid_sampler_2d(&grid, 0, 2, true)
}

/// The matrix of cv2.getRotationMatrix2D(centre, angle, scale) plus a shift of
/// (dx * W, dy * H): albumentations' ShiftScaleRotate.
pub fn shift_scale_rotate_matrix(w: i64, h: i64, angle_deg: f64, scale: f64, dx: f64, dy: f64) -> [f64; 6] {
    let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
    let (a, b) = (scale * angle_deg.to_radians().cos(), scale * angle_deg.to_radians().sin());
    [a, b, (1.0 - a) * cx - b * cy + dx * w as f64, -b, a, b * cx + (1.0 - a) * cy + dy * h as f64]
}

/// Barrel/pincushion distortion with coefficient `k` (k1 = k2 = k) and centre shift
/// (dx, dy) pixels: the map of cv2.initUndistortRectifyMap with fx = fy = W, then remap.
pub fn optical_distortion(x: &Tensor, k: &Tensor, dx: &Tensor, dy: &Tensor) -> Tensor {
    let (n, _, h, w) = x.size4().unwrap();
    let dev = x.device();
    let f = w as f64;
    let col = |t: &Tensor| device::upload(&t.to_kind(Kind::Float), dev).view([n, 1, 1]);
    let (k, cx, cy) = (col(k), col(dx) + w as f64 * 0.5, col(dy) + h as f64 * 0.5);
    let ys = Tensor::arange(h, (Kind::Float, dev)).view([1, h, 1]);
    let xs = Tensor::arange(w, (Kind::Float, dev)).view([1, 1, w]);
    let u = (xs - &cx) / f;
    let v = (ys - &cy) / f;
    let r2 = &u * &u + &v * &v;
    let factor = 1.0 + &k * &r2 + &k * &r2 * &r2;
    let sx = u * &factor * f + cx;
    let sy = v * &factor * f + cy;
    remap(x, &sx.expand([n, h, w], false), &sy.expand([n, h, w], false))
}

/// Which ops were applied to which image (for previews and tests).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    pub blur_or_sharpen: Vec<usize>,
    pub brightness_contrast: Vec<usize>,
    pub noise: Vec<usize>,
    pub value_shift: Vec<usize>,
    pub affine: Vec<usize>,
    pub optical: Vec<usize>,
}

/// Applies steps 2 to 8 to a batch `[N, 1, H, W]` of 0..255 values on its device, and returns
/// normalised inputs plus what was applied. `rng` draws every parameter.
pub fn augment(x: &Tensor, cfg: &AugmentConfig, rng: &mut Rng) -> (Tensor, Applied) {
    tch::no_grad(|| augment_inner(x, cfg, rng))
}

/// Per-image scalars as a `[N, 1, 1, 1]` float tensor on `dev`.
fn scalars(v: &[f64], dev: Device) -> Tensor {
    device::upload(&Tensor::from_slice(v).to_kind(Kind::Float), dev).view([-1, 1, 1, 1])
}

/// Replaces image `i` of `x` (in place) by `f` of it.
fn apply_one(x: &Tensor, i: usize, f: impl FnOnce(&Tensor) -> Tensor) {
    let mut view = x.narrow(0, i as i64, 1);
    let out = f(&view);
    view.copy_(&out);
}

fn augment_inner(x: &Tensor, cfg: &AugmentConfig, rng: &mut Rng) -> (Tensor, Applied) {
    let (n, _, h, w) = x.size4().unwrap();
    let n = n as usize;
    let dev = x.device();
    // A private copy: both MoCo views are drawn from the same decoded batch.
    let x = x.to_kind(Kind::Float).copy();
    let mut applied = Applied::default();

    // Step 2: median / motion blur / sharpen, weights 1:2:2; each on its own image.
    let kmax = cfg.motion_blur_max.max(3) | 1;
    for i in 0..n {
        if !rng.chance(cfg.p_blur_sharpen) {
            continue;
        }
        applied.blur_or_sharpen.push(i);
        let pick = rng.unit() * 5.0;
        if pick < 1.0 {
            apply_one(&x, i, median3);
            continue;
        }
        let (kernel, size) = if pick < 3.0 {
            let sizes: Vec<i64> = (3..=kmax).step_by(2).collect();
            let size = sizes[(rng.next_u64() % sizes.len() as u64) as usize];
            (motion_kernel(size, rng.uniform(0.0, 180.0)), size)
        } else {
            let alpha = rng.uniform(cfg.sharpen_alpha.0, cfg.sharpen_alpha.1);
            let lightness = rng.uniform(cfg.sharpen_lightness.0, cfg.sharpen_lightness.1);
            (sharpen_kernel(alpha, lightness).to_vec(), 3)
        };
        let k = Tensor::from_slice(&kernel).view([1, size, size]);
        // Clipped to the range, as OpenCV saturates uint8 results.
        apply_one(&x, i, |v| filter(v, &k).clamp(0.0, 255.0));
    }

    // Step 3: brightness and contrast, `alpha * x + beta * 255`, identity for the others.
    let (mut alpha, mut beta) = (vec![1.0; n], vec![0.0; n]);
    for i in 0..n {
        if rng.chance(cfg.p_brightness_contrast) {
            applied.brightness_contrast.push(i);
            alpha[i] = rng.uniform(cfg.contrast.0, cfg.contrast.1);
            beta[i] = rng.uniform(-cfg.brightness, cfg.brightness) * 255.0;
        }
    }
    if !applied.brightness_contrast.is_empty() {
        let _ =
            x.shallow_clone().g_mul_(&scalars(&alpha, dev)).g_add_(&scalars(&beta, dev)).clamp_(0.0, 255.0);
    }

    // Step 4: Gaussian or multiplicative noise.
    let mut factor = vec![1.0; n];
    let mut gauss = Vec::new();
    for (i, f) in factor.iter_mut().enumerate() {
        if rng.chance(cfg.p_noise) {
            applied.noise.push(i);
            if rng.chance(0.5) {
                gauss.push((i, rng.uniform(0.0, cfg.noise_var).sqrt() * 255.0, rng.next_u64()));
            } else {
                *f = rng.uniform(cfg.multiplicative.0, cfg.multiplicative.1);
            }
        }
    }
    for (i, sigma, seed) in gauss {
        let noise = seeded_randn(h * w, seed, dev).view([1, 1, h, w]);
        apply_one(&x, i, |v| (v + noise * sigma).clamp(0.0, 255.0));
    }
    if factor.iter().any(|&f| f != 1.0) {
        let _ = x.shallow_clone().g_mul_(&scalars(&factor, dev)).clamp_(0.0, 255.0);
    }

    // Step 5: value shift.
    let mut shift = vec![0.0; n];
    for (i, s) in shift.iter_mut().enumerate() {
        if rng.chance(cfg.p_value_shift) {
            applied.value_shift.push(i);
            *s = rng.uniform(-cfg.value_shift, cfg.value_shift) * 255.0;
        }
    }
    if !applied.value_shift.is_empty() {
        let _ = x.shallow_clone().g_add_(&scalars(&shift, dev)).clamp_(0.0, 255.0);
    }

    // Step 6: shift, scale, rotate.
    for i in 0..n {
        if rng.chance(cfg.p_affine) {
            applied.affine.push(i);
            let angle = rng.uniform(-cfg.rotate_deg, cfg.rotate_deg);
            let scale = rng.uniform(1.0 - cfg.scale, 1.0 + cfg.scale);
            let dx = rng.uniform(-cfg.shift, cfg.shift);
            let dy = rng.uniform(-cfg.shift, cfg.shift);
            let m =
                Tensor::from_slice(&shift_scale_rotate_matrix(w, h, angle, scale, dx, dy)).view([1, 2, 3]);
            apply_one(&x, i, |v| warp_affine(v, &m));
        }
    }

    // Step 7: optical distortion.
    for i in 0..n {
        if rng.chance(cfg.p_optical) {
            applied.optical.push(i);
            let k = Tensor::from_slice(&[rng.uniform(-cfg.distort, cfg.distort)]);
            let dx = Tensor::from_slice(&[rng.uniform(-cfg.distort_shift, cfg.distort_shift) * w as f64]);
            let dy = Tensor::from_slice(&[rng.uniform(-cfg.distort_shift, cfg.distort_shift) * h as f64]);
            apply_one(&x, i, |v| optical_distortion(v, &k, &dx, &dy));
        }
    }

    // Step 8: normalise, in place.
    let _ = x.shallow_clone().g_mul_scalar_(1.0 / (255.0 * STD)).g_sub_scalar_(MEAN / STD);
    (x, applied)
}

/// `n` standard normal values from a seed, drawn on `dev` by libtorch's generator for that
/// device: the same values for the same seed on the same kind of device (CPU and CUDA
/// generators differ).
fn seeded_randn(n: i64, seed: u64, dev: Device) -> Tensor {
    let like = Tensor::zeros([0], (Kind::Float, dev));
    crate::ffi::seeded_randn(n, seed, &like).expect("libtorch randn with a private generator")
}
