//! The CheSS augmentations (recipe steps 2 to 8), in two implementations that share one
//! random plan per view:
//! - [`augment`] ([`tensor`]): batched libtorch ops on the training device, so that on a GPU
//!   the CPU only decodes;
//! - [`augment_host`] ([`host`]): fused native loops over one image at a time, for the decode
//!   threads of CPU-only training, where a dozen whole-image tensor passes and `grid_sample`
//!   per view would make the augmentations, not the decoding, the bottleneck.
//!
//! Parameters are drawn per image from a seeded generator on the host ([`draw_plans`]), in the
//! same order for both, so the same seed gives the same views from either (within float
//! rounding; Gaussian noise comes from libtorch's generator of the device, so it matches between
//! the two on a CPU, not between a CPU and a GPU).
//!
//! A sample's pair or mask follows its image through the geometric steps alone (affine warp,
//! optical distortion) with the image's plan: [`warp_host`] and [`warp_planned`], bilinear for
//! images and nearest for label maps ([`Interp`]); the photometric steps touch the input only.
//!
//! Everything is computed in float on 0..255 values (the original rounds to uint8 after each
//! step, which turns small noise and shifts into no-ops); borders are reflect-101 as OpenCV's
//! default, interpolation bilinear.
pub mod host;
pub mod tensor;

pub use host::{HostScratch, Interp, augment_host, resize_bilinear, warp_host};
pub use tensor::{
    augment, augment_planned, filter, median3, motion_kernel, optical_distortion, remap, sharpen_kernel,
    warp_affine, warp_planned,
};

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

/// The light geometric augmentation of supervised fine-tuning (classification, bone suppression): the recipe's affine warp (shift 0.0625,
/// scale 0.2, rotation 10 degrees) on half the images; no optical distortion, no photometric
/// steps (they would blur findings a label depends on).
pub fn light_augment() -> AugmentConfig {
    AugmentConfig {
        p_blur_sharpen: 0.0,
        p_brightness_contrast: 0.0,
        p_noise: 0.0,
        p_value_shift: 0.0,
        p_affine: 0.5,
        p_optical: 0.0,
        ..AugmentConfig::default()
    }
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

/// Step 2's choice for one image.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// cv2.medianBlur(ksize=3): replicated borders.
    Median3,
    /// cv2.filter2D with an odd `size x size` kernel (motion line or sharpen), reflect-101
    /// borders, clipped to 0..255.
    Kernel { size: usize, taps: Vec<f32> },
}

/// Step 4's choice for one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Noise {
    /// Additive N(0, sigma^2) per pixel, drawn by libtorch's generator seeded with `seed`.
    Gaussian { sigma: f64, seed: u64 },
    /// One factor for the whole image.
    Multiplicative(f64),
}

/// Everything random about one augmented view: which steps apply, with which parameters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ViewPlan {
    pub filter: Option<Filter>,
    /// `x * alpha + beta` (beta in 0..255 units).
    pub brightness_contrast: Option<(f64, f64)>,
    pub noise: Option<Noise>,
    /// Added, in 0..255 units.
    pub value_shift: Option<f64>,
    /// cv2.warpAffine matrix, source to destination pixels.
    pub affine: Option<[f64; 6]>,
    /// Distortion coefficient and centre shift in pixels.
    pub optical: Option<(f64, f64, f64)>,
}

/// Draws the plans of `n` views of `h x w` images, step by step over the batch.
pub fn draw_plans(n: usize, h: i64, w: i64, cfg: &AugmentConfig, rng: &mut Rng) -> Vec<ViewPlan> {
    let mut plans = vec![ViewPlan::default(); n];
    // Step 2: median / motion blur / sharpen, weights 1:2:2.
    let kmax = cfg.motion_blur_max.max(3) | 1;
    for plan in plans.iter_mut() {
        if !rng.chance(cfg.p_blur_sharpen) {
            continue;
        }
        let pick = rng.unit() * 5.0;
        plan.filter = Some(if pick < 1.0 {
            Filter::Median3
        } else if pick < 3.0 {
            let sizes: Vec<i64> = (3..=kmax).step_by(2).collect();
            let size = sizes[(rng.next_u64() % sizes.len() as u64) as usize];
            Filter::Kernel { size: size as usize, taps: motion_kernel(size, rng.uniform(0.0, 180.0)) }
        } else {
            let alpha = rng.uniform(cfg.sharpen_alpha.0, cfg.sharpen_alpha.1);
            let lightness = rng.uniform(cfg.sharpen_lightness.0, cfg.sharpen_lightness.1);
            Filter::Kernel { size: 3, taps: sharpen_kernel(alpha, lightness).to_vec() }
        });
    }
    // Step 3: brightness and contrast.
    for plan in plans.iter_mut() {
        if rng.chance(cfg.p_brightness_contrast) {
            let alpha = rng.uniform(cfg.contrast.0, cfg.contrast.1);
            plan.brightness_contrast = Some((alpha, rng.uniform(-cfg.brightness, cfg.brightness) * 255.0));
        }
    }
    // Step 4: Gaussian or multiplicative noise.
    for plan in plans.iter_mut() {
        if rng.chance(cfg.p_noise) {
            plan.noise = Some(if rng.chance(0.5) {
                let sigma = rng.uniform(0.0, cfg.noise_var).sqrt() * 255.0;
                Noise::Gaussian { sigma, seed: rng.next_u64() }
            } else {
                Noise::Multiplicative(rng.uniform(cfg.multiplicative.0, cfg.multiplicative.1))
            });
        }
    }
    // Step 5: value shift.
    for plan in plans.iter_mut() {
        if rng.chance(cfg.p_value_shift) {
            plan.value_shift = Some(rng.uniform(-cfg.value_shift, cfg.value_shift) * 255.0);
        }
    }
    // Step 6: shift, scale, rotate.
    for plan in plans.iter_mut() {
        if rng.chance(cfg.p_affine) {
            let angle = rng.uniform(-cfg.rotate_deg, cfg.rotate_deg);
            let scale = rng.uniform(1.0 - cfg.scale, 1.0 + cfg.scale);
            let dx = rng.uniform(-cfg.shift, cfg.shift);
            let dy = rng.uniform(-cfg.shift, cfg.shift);
            plan.affine = Some(shift_scale_rotate_matrix(w, h, angle, scale, dx, dy));
        }
    }
    // Step 7: optical distortion.
    for plan in plans.iter_mut() {
        if rng.chance(cfg.p_optical) {
            let k = rng.uniform(-cfg.distort, cfg.distort);
            let dx = rng.uniform(-cfg.distort_shift, cfg.distort_shift) * w as f64;
            let dy = rng.uniform(-cfg.distort_shift, cfg.distort_shift) * h as f64;
            plan.optical = Some((k, dx, dy));
        }
    }
    plans
}

/// The matrix of cv2.getRotationMatrix2D(centre, angle, scale) plus a shift of
/// (dx * W, dy * H): albumentations' ShiftScaleRotate.
pub fn shift_scale_rotate_matrix(w: i64, h: i64, angle_deg: f64, scale: f64, dx: f64, dy: f64) -> [f64; 6] {
    let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
    let (a, b) = (scale * angle_deg.to_radians().cos(), scale * angle_deg.to_radians().sin());
    [a, b, (1.0 - a) * cx - b * cy + dx * w as f64, -b, a, b * cx + (1.0 - a) * cy + dy * h as f64]
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

impl Applied {
    pub fn of(plans: &[ViewPlan]) -> Self {
        let which = |f: &dyn Fn(&ViewPlan) -> bool| -> Vec<usize> {
            plans.iter().enumerate().filter(|(_, p)| f(p)).map(|(i, _)| i).collect()
        };
        Self {
            blur_or_sharpen: which(&|p| p.filter.is_some()),
            brightness_contrast: which(&|p| p.brightness_contrast.is_some()),
            noise: which(&|p| p.noise.is_some()),
            value_shift: which(&|p| p.value_shift.is_some()),
            affine: which(&|p| p.affine.is_some()),
            optical: which(&|p| p.optical.is_some()),
        }
    }
}
