//! The augmentations as batched tensor ops on the training device (a GPU's, in the design):
//! per-pixel steps over the whole batch at once, filters and warps image by image.
use tch::{Device, Kind, Tensor};

use super::{Applied, AugmentConfig, Filter, Interp, Noise, Rng, ViewPlan, draw_plans};
use crate::data::{MEAN, STD};
use crate::device;

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
    remap_with(x, sx, sy, Interp::Bilinear)
}

/// `grid_sampler_2d`'s interpolation mode: 0 bilinear, 1 nearest.
fn mode(interp: Interp) -> i64 {
    match interp {
        Interp::Bilinear => 0,
        Interp::Nearest => 1,
    }
}

/// [`remap`] with the given interpolation.
fn remap_with(x: &Tensor, sx: &Tensor, sy: &Tensor, interp: Interp) -> Tensor {
    let (_, _, h, w) = x.size4().unwrap();
    // align_corners=True maps -1..1 onto pixel centres 0..W-1; reflection about those centres
    // is reflect-101.
    let gx = sx * (2.0 / (w - 1) as f64) - 1.0;
    let gy = sy * (2.0 / (h - 1) as f64) - 1.0;
    let grid = Tensor::stack(&[gx, gy], 3).to_kind(x.kind());
    // grid_sampler_2d: padding 2 = reflection.
    x.grid_sampler_2d(&grid, mode(interp), 2, true)
}

/// Per-image affine warps given as 2x3 matrices `[N, 2, 3]` mapping source to destination pixel
/// coordinates (cv2.warpAffine with INTER_LINEAR and BORDER_REFLECT_101).
pub fn warp_affine(x: &Tensor, matrices: &Tensor) -> Tensor {
    warp_affine_with(x, matrices, Interp::Bilinear)
}

/// [`warp_affine`] with the given interpolation.
fn warp_affine_with(x: &Tensor, matrices: &Tensor, interp: Interp) -> Tensor {
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
    // Padding 2 = reflection (about pixel centres: reflect-101).
    x.grid_sampler_2d(&grid, mode(interp), 2, true)
}

/// Barrel/pincushion distortion with coefficient `k` (k1 = k2 = k) and centre shift
/// (dx, dy) pixels: the map of cv2.initUndistortRectifyMap with fx = fy = W, then remap.
pub fn optical_distortion(x: &Tensor, k: &Tensor, dx: &Tensor, dy: &Tensor) -> Tensor {
    optical_distortion_with(x, k, dx, dy, Interp::Bilinear)
}

/// [`optical_distortion`] with the given interpolation.
fn optical_distortion_with(x: &Tensor, k: &Tensor, dx: &Tensor, dy: &Tensor, interp: Interp) -> Tensor {
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
    remap_with(x, &sx.expand([n, h, w], false), &sy.expand([n, h, w], false), interp)
}

/// Applies steps 2 to 8 to a batch `[N, 1, H, W]` of 0..255 values on its device, and returns
/// normalised inputs plus what was applied. `rng` draws every parameter.
pub fn augment(x: &Tensor, cfg: &AugmentConfig, rng: &mut Rng) -> (Tensor, Applied) {
    let (n, _, h, w) = x.size4().unwrap();
    let plans = draw_plans(n as usize, h, w, cfg, rng);
    (augment_planned(x, &plans), Applied::of(&plans))
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

/// Applies the given plans, one per image of `x` (`[N, 1, H, W]`, 0..255), on its device.
pub fn augment_planned(x: &Tensor, plans: &[ViewPlan]) -> Tensor {
    tch::no_grad(|| {
        let (n, _, h, w) = x.size4().unwrap();
        assert_eq!(n as usize, plans.len(), "one plan per image");
        let dev = x.device();
        // A private copy: both MoCo views are drawn from the same decoded batch.
        let x = x.to_kind(Kind::Float).copy();

        // Step 2, image by image; clipped to the range, as OpenCV saturates uint8 results.
        for (i, plan) in plans.iter().enumerate() {
            match &plan.filter {
                None => {}
                Some(Filter::Median3) => apply_one(&x, i, median3),
                Some(Filter::Kernel { size, taps }) => {
                    let k = Tensor::from_slice(taps).view([1, *size as i64, *size as i64]);
                    apply_one(&x, i, |v| filter(v, &k).clamp(0.0, 255.0));
                }
            }
        }
        // Step 3: `alpha * x + beta`, identity for the others.
        if plans.iter().any(|p| p.brightness_contrast.is_some()) {
            let alpha: Vec<f64> = plans.iter().map(|p| p.brightness_contrast.map_or(1.0, |c| c.0)).collect();
            let beta: Vec<f64> = plans.iter().map(|p| p.brightness_contrast.map_or(0.0, |c| c.1)).collect();
            let _ = x
                .shallow_clone()
                .g_mul_(&scalars(&alpha, dev))
                .g_add_(&scalars(&beta, dev))
                .clamp_(0.0, 255.0);
        }
        // Step 4: Gaussian noise image by image, multiplicative noise over the batch.
        for (i, plan) in plans.iter().enumerate() {
            if let Some(Noise::Gaussian { sigma, seed }) = plan.noise {
                let noise = seeded_randn(h * w, seed, dev).view([1, 1, h, w]);
                apply_one(&x, i, |v| (v + noise * sigma).clamp(0.0, 255.0));
            }
        }
        let factor: Vec<f64> = plans
            .iter()
            .map(|p| match p.noise {
                Some(Noise::Multiplicative(f)) => f,
                _ => 1.0,
            })
            .collect();
        if factor.iter().any(|&f| f != 1.0) {
            let _ = x.shallow_clone().g_mul_(&scalars(&factor, dev)).clamp_(0.0, 255.0);
        }
        // Step 5: value shift.
        if plans.iter().any(|p| p.value_shift.is_some()) {
            let shift: Vec<f64> = plans.iter().map(|p| p.value_shift.unwrap_or(0.0)).collect();
            let _ = x.shallow_clone().g_add_(&scalars(&shift, dev)).clamp_(0.0, 255.0);
        }
        // Steps 6 and 7: warps, image by image.
        for (i, plan) in plans.iter().enumerate() {
            if let Some(m) = plan.affine {
                let m = Tensor::from_slice(&m).view([1, 2, 3]);
                apply_one(&x, i, |v| warp_affine(v, &m));
            }
        }
        for (i, plan) in plans.iter().enumerate() {
            if let Some((k, dx, dy)) = plan.optical {
                let one = |v: f64| Tensor::from_slice(&[v]);
                apply_one(&x, i, |v| optical_distortion(v, &one(k), &one(dx), &one(dy)));
            }
        }
        // Step 8: normalise, in place.
        let _ = x.shallow_clone().g_mul_scalar_(1.0 / (255.0 * STD)).g_sub_scalar_(MEAN / STD);
        x
    })
}

/// The geometric steps of the plans alone (affine warp, then optical distortion), one plan per
/// image of `x` (`[N, C, H, W]`), values not normalised: the tensor path's counterpart of
/// [`super::warp_host`], for a pair or mask warped with its image's plans on the device.
pub fn warp_planned(x: &Tensor, plans: &[ViewPlan], interp: Interp) -> Tensor {
    tch::no_grad(|| {
        let (n, _, _, _) = x.size4().unwrap();
        assert_eq!(n as usize, plans.len(), "one plan per image");
        let x = x.to_kind(Kind::Float).copy();
        for (i, plan) in plans.iter().enumerate() {
            if let Some(m) = plan.affine {
                let m = Tensor::from_slice(&m).view([1, 2, 3]);
                apply_one(&x, i, |v| warp_affine_with(v, &m, interp));
            }
            if let Some((k, dx, dy)) = plan.optical {
                let one = |v: f64| Tensor::from_slice(&[v]);
                apply_one(&x, i, |v| optical_distortion_with(v, &one(k), &one(dx), &one(dy), interp));
            }
        }
        x
    })
}

/// `n` standard normal values from a seed, drawn on `dev` by libtorch's generator for that
/// device: the same values for the same seed on the same kind of device (CPU and CUDA
/// generators differ).
pub(crate) fn seeded_randn(n: i64, seed: u64, dev: Device) -> Tensor {
    let like = Tensor::zeros([0], (Kind::Float, dev));
    crate::ffi::seeded_randn(n, seed, &like).expect("libtorch randn with a private generator")
}
