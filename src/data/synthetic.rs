//! Synthetic PROXY data for tasks that have no public paired set here: bone suppression (issue
//! 16) and nodule synthesis (issue 17).
//!
//! **These are not real pairs.** For bone suppression the targets are ordinary radiographs
//! (standing in for soft-tissue images) and the inputs are the same radiographs with
//! synthetic rib and clavicle shadows *added* ([`add_bones`]); a model trained on them learns to
//! remove our drawing, not real bone. For nodules, spherical or elliptical opacities are added
//! inside two ellipses that approximate the lung fields ([`add_nodules`]). Both are for
//! exercising a pipeline end to end (shapes, losses, metrics, files), never for claims about
//! clinical performance: that needs real soft-tissue references (dual-energy subtraction) or
//! real, annotated nodules.
//!
//! Plain Rust on `Vec<f32>` display values (0..255, bright = dense, as [`super::decode`]
//! gives them): no libtorch, so this builds with `--no-default-features`. Everything random is
//! drawn from a SplitMix64 stream seeded by the caller (the same generator as
//! `augment::Rng`, which lives behind the `torch` feature), so one seed gives one image.
//!
//! Geometry is relative to the image: frontal chest radiographs, roughly centred, the thorax
//! inside [`ThoraxBox`]. Images far from that (lateral views, a thorax filling a quarter of the
//! frame) get bones in the wrong place; the proxy does not look for the lungs.
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::dataset::{Dataset, DatasetError};
use super::decode::decode_file;

// ---------------------------------------------------------------------------------------------
// Random numbers
// ---------------------------------------------------------------------------------------------

/// SplitMix64, as `augment::Rng` (which needs the `torch` feature).
#[derive(Debug, Clone)]
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in `range.0 ..= range.1` (the order of the two does not matter).
    fn between(&mut self, range: (f64, f64)) -> f64 {
        self.uniform(range.0.min(range.1), range.0.max(range.1))
    }

    fn int_between(&mut self, range: (usize, usize)) -> usize {
        let (lo, hi) = (range.0.min(range.1), range.0.max(range.1));
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// The seed of one image of a written set: the set's seed mixed with the FNV-1a hash of the
/// image's output name, so an image keeps its drawing whatever else is in the set.
pub fn image_seed(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name.as_bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    SplitMix(seed ^ h).next_u64()
}

// ---------------------------------------------------------------------------------------------
// Geometry shared by both proxies
// ---------------------------------------------------------------------------------------------

/// Where the bony thorax is, as fractions of the image width (`left`, `right`) and height
/// (`top`, `bottom`). Nothing synthetic is ever drawn outside it: the bone layer is multiplied
/// by a mask that is 1 well inside, falls off smoothly over the last `feather` (a fraction of
/// the image's smaller side) and is exactly 0 on and outside the box. `bottom` stands for the
/// costophrenic angles / diaphragm: nothing is drawn below it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThoraxBox {
    pub left: f64,
    pub right: f64,
    pub top: f64,
    pub bottom: f64,
    pub feather: f64,
}

impl Default for ThoraxBox {
    /// Fitted by eye to the frontal radiographs of `cxr-pneumonia-224` (Kermany, paediatric,
    /// squashed to square) and typical adult PA films: shoulders near the top corners, the
    /// costophrenic angles at about 80 % of the height.
    fn default() -> Self {
        Self { left: 0.05, right: 0.95, top: 0.08, bottom: 0.84, feather: 0.04 }
    }
}

impl ThoraxBox {
    /// The confinement mask at pixel centre `(x, y)` of a `width x height` image, in 0..=1.
    pub fn mask(&self, x: f64, y: f64, width: usize, height: usize) -> f64 {
        let (w, h) = (width as f64, height as f64);
        let f = (self.feather * w.min(h)).max(1.0);
        let inside = [x - self.left * w, self.right * w - x, y - self.top * h, self.bottom * h - y];
        inside.iter().map(|&d| smoothstep(0.0, f, d)).fold(1.0, f64::min)
    }

    /// Whether pixel centre `(x, y)` is strictly inside the box (where the mask can be > 0).
    pub fn contains(&self, x: f64, y: f64, width: usize, height: usize) -> bool {
        let (w, h) = (width as f64, height as f64);
        x > self.left * w && x < self.right * w && y > self.top * h && y < self.bottom * h
    }
}

/// An axis-aligned ellipse in fractions of the image (centre `cx`, `cy`; semi-axes `rx` of the
/// width, `ry` of the height).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ellipse {
    pub cx: f64,
    pub cy: f64,
    pub rx: f64,
    pub ry: f64,
}

impl Ellipse {
    /// `((x - cx) / rx)^2 + ((y - cy) / ry)^2` in pixels of a `width x height` image: < 1 inside.
    pub fn level(&self, x: f64, y: f64, width: usize, height: usize) -> f64 {
        let (w, h) = (width as f64, height as f64);
        let dx = (x - self.cx * w) / (self.rx * w);
        let dy = (y - self.cy * h) / (self.ry * h);
        dx * dx + dy * dy
    }
}

fn smoothstep(e0: f64, e1: f64, x: f64) -> f64 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// How much of an added shadow shows where the image is already `value` bright:
/// `1 - (value / 255)^power`, so dark lung gets nearly all of it, the mediastinum part of it and
/// saturated pixels none (where a real film has no headroom left either).
fn headroom(value: f32, power: f64) -> f64 {
    let v = (f64::from(value) / 255.0).clamp(0.0, 1.0);
    1.0 - v.powf(power)
}

/// Adds `layer` (scaled by [`headroom`]) to `pixels`, clips to 0..255, and returns the result
/// and what was actually added (`result - pixels`, exact after clipping).
fn composite(pixels: &[f32], layer: &[f32], power: f64) -> (Vec<f32>, Vec<f32>) {
    let out: Vec<f32> = pixels
        .iter()
        .zip(layer)
        .map(|(&p, &l)| {
            let add = f64::from(l) * headroom(p, power);
            (f64::from(p) + add).clamp(0.0, 255.0) as f32
        })
        .collect();
    let added = out.iter().zip(pixels).map(|(&o, &p)| (o - p.clamp(0.0, 255.0)).max(0.0)).collect();
    (out, added)
}

/// Separable Gaussian blur (clamped borders), in place; sigma in pixels, nothing below 0.2.
fn gaussian_blur(img: &mut [f32], width: usize, height: usize, sigma: f64) {
    if sigma < 0.2 || width == 0 || height == 0 {
        return;
    }
    let radius = (3.0 * sigma).ceil() as isize;
    let mut taps: Vec<f64> =
        (-radius..=radius).map(|i| (-((i * i) as f64) / (2.0 * sigma * sigma)).exp()).collect();
    let total: f64 = taps.iter().sum();
    taps.iter_mut().for_each(|t| *t /= total);
    let mut tmp = vec![0f32; img.len()];
    for y in 0..height {
        let row = &img[y * width..(y + 1) * width];
        for x in 0..width {
            let mut acc = 0.0;
            for (k, &t) in taps.iter().enumerate() {
                let xx = (x as isize + k as isize - radius).clamp(0, width as isize - 1) as usize;
                acc += t * f64::from(row[xx]);
            }
            tmp[y * width + x] = acc as f32;
        }
    }
    for y in 0..height {
        for x in 0..width {
            let mut acc = 0.0;
            for (k, &t) in taps.iter().enumerate() {
                let yy = (y as isize + k as isize - radius).clamp(0, height as isize - 1) as usize;
                acc += t * f64::from(tmp[yy * width + x]);
            }
            img[y * width + x] = acc as f32;
        }
    }
}

/// Bilinear resize of a `width x height` grey image to `out_w x out_h`, half-pixel centres
/// (OpenCV's INTER_LINEAR, as the training pipeline resizes). Shrinking by 2 or more first
/// averages whole blocks of pixels (dropping the few rows and columns left over) so that large
/// films do not alias; the aspect ratio is not kept (as the pipeline squashes).
pub fn resize_bilinear(pixels: &[f32], width: usize, height: usize, out_w: usize, out_h: usize) -> Vec<f32> {
    assert_eq!(pixels.len(), width * height, "pixels must be width x height");
    if width == out_w && height == out_h {
        return pixels.to_vec();
    }
    if width == 0 || height == 0 || out_w == 0 || out_h == 0 {
        return vec![0.0; out_w * out_h];
    }
    // Block-average by the integer part of the shrink factor (at least 1).
    let fx = (width / out_w.max(1)).max(1);
    let fy = (height / out_h.max(1)).max(1);
    let (src, sw, sh);
    let boxed;
    if fx > 1 || fy > 1 {
        let (bw, bh) = (width / fx, height / fy);
        let mut b = vec![0f32; bw * bh];
        for by in 0..bh {
            for bx in 0..bw {
                let mut acc = 0.0f64;
                for y in by * fy..(by + 1) * fy {
                    for x in bx * fx..(bx + 1) * fx {
                        acc += f64::from(pixels[y * width + x]);
                    }
                }
                b[by * bw + bx] = (acc / (fx * fy) as f64) as f32;
            }
        }
        boxed = b;
        (src, sw, sh) = (&boxed[..], bw, bh);
    } else {
        (src, sw, sh) = (pixels, width, height);
    }
    let mut out = vec![0f32; out_w * out_h];
    let (scale_x, scale_y) = (sw as f64 / out_w as f64, sh as f64 / out_h as f64);
    for oy in 0..out_h {
        let y = ((oy as f64 + 0.5) * scale_y - 0.5).max(0.0);
        let y0 = (y.floor() as usize).min(sh - 1);
        let y1 = (y0 + 1).min(sh - 1);
        let wy = (y - y0 as f64) as f32;
        for ox in 0..out_w {
            let x = ((ox as f64 + 0.5) * scale_x - 0.5).max(0.0);
            let x0 = (x.floor() as usize).min(sw - 1);
            let x1 = (x0 + 1).min(sw - 1);
            let wx = (x - x0 as f64) as f32;
            let top = src[y0 * sw + x0] * (1.0 - wx) + src[y0 * sw + x1] * wx;
            let bottom = src[y1 * sw + x0] * (1.0 - wx) + src[y1 * sw + x1] * wx;
            out[oy * out_w + ox] = top * (1.0 - wy) + bottom * wy;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Bones
// ---------------------------------------------------------------------------------------------

/// How [`add_bones`] draws ribs and clavicles. Ranges are `(min, max)`, drawn once per image
/// (and jittered per bone) from the image's seed. Sizes are fractions of the image so that one
/// configuration works from 128 to 512 px and beyond.
#[derive(Debug, Clone, PartialEq)]
pub struct BoneConfig {
    /// Posterior ribs per side (both sides get the same count).
    pub ribs_per_side: (usize, usize),
    /// Width of a posterior rib, as a fraction of the image height (adult ribs are about 1 cm
    /// on a 35 to 43 cm film).
    pub rib_thickness: (f64, f64),
    /// Peak brightness a posterior rib adds over dark lung, in grey levels (0..255 scale),
    /// before `headroom` and blur.
    pub contrast: (f64, f64),
    /// Cortical rims relative to the marrow between them (1 = flat band).
    pub cortex: f64,
    /// Draw the anterior ribs (fainter, wider, sloping down towards the sternum).
    pub anterior_ribs: bool,
    /// How many ribs, from the top, have a visible anterior part (the lower ones are cartilage
    /// or below the diaphragm).
    pub anterior_count: usize,
    /// Anterior rib contrast relative to the posterior ribs.
    pub anterior_contrast: f64,
    /// Draw the clavicles.
    pub clavicles: bool,
    /// Clavicle contrast relative to the posterior ribs.
    pub clavicle_contrast: f64,
    /// Clavicle width relative to a posterior rib.
    pub clavicle_thickness: f64,
    /// Gaussian blur of the bone layer, sigma as a fraction of the image height.
    pub blur_sigma: (f64, f64),
    /// Where the thorax is; nothing is drawn outside it.
    pub thorax: ThoraxBox,
    /// Random shift of the rib cage (midline, apex, width), as a fraction of the image.
    pub jitter: f64,
    /// Exponent of `headroom`: how fast added contrast fades where the image is bright.
    pub headroom_power: f64,
}

impl Default for BoneConfig {
    /// Tuned by eye on 224 px `cxr-pneumonia-224` films resized to 128 to 512 px: 9 or 10
    /// posterior ribs per side about 2.6 % of the height wide, 14 to 28 grey levels over lung,
    /// rims 30 % brighter than the centre, anterior ribs at 50 % of that, clavicles 1.6 times
    /// as wide and 10 % brighter, a blur of 0.4 to 1 px at 256.
    fn default() -> Self {
        Self {
            ribs_per_side: (9, 10),
            rib_thickness: (0.022, 0.030),
            contrast: (14.0, 28.0),
            cortex: 1.3,
            anterior_ribs: true,
            anterior_count: 6,
            anterior_contrast: 0.5,
            clavicles: true,
            clavicle_contrast: 1.1,
            clavicle_thickness: 1.6,
            blur_sigma: (0.0015, 0.004),
            thorax: ThoraxBox::default(),
            jitter: 0.02,
            headroom_power: 3.0,
        }
    }
}

/// A cubic Bezier sampled at `n + 1` points.
fn bezier(p: [(f64, f64); 4], n: usize) -> Vec<(f64, f64)> {
    (0..=n)
        .map(|i| {
            let t = i as f64 / n as f64;
            let s = 1.0 - t;
            let (a, b, c, d) = (s * s * s, 3.0 * s * s * t, 3.0 * s * t * t, t * t * t);
            (
                a * p[0].0 + b * p[1].0 + c * p[2].0 + d * p[3].0,
                a * p[0].1 + b * p[1].1 + c * p[2].1 + d * p[3].1,
            )
        })
        .collect()
}

/// One bone: a band along a polyline, `radius(t)` and `amplitude(t)` over its arc-length
/// fraction `t` in 0..=1.
struct Band<'a> {
    points: Vec<(f64, f64)>,
    radius: &'a dyn Fn(f64) -> f64,
    amplitude: &'a dyn Fn(f64) -> f64,
    cortex: f64,
}

/// Adds a band to `layer`: across it a flat-topped profile with soft edges (smoothstep over the
/// outer ~25 % of the half-width) and brighter cortical rims near the edges; along it
/// `amplitude(t)` (which tapers the ends).
fn draw_band(layer: &mut [f32], width: usize, height: usize, band: &Band<'_>) {
    let pts = &band.points;
    if pts.len() < 2 {
        return;
    }
    let mut cumulative = vec![0.0f64; pts.len()];
    for i in 1..pts.len() {
        let (dx, dy) = (pts[i].0 - pts[i - 1].0, pts[i].1 - pts[i - 1].1);
        cumulative[i] = cumulative[i - 1] + (dx * dx + dy * dy).sqrt();
    }
    let total = cumulative[pts.len() - 1].max(1e-9);
    let max_r = (0..=20).map(|i| (band.radius)(i as f64 / 20.0)).fold(0.0, f64::max) * 1.1 + 1.0;
    let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        y0 = y0.min(y);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    let px0 = (x0 - max_r).floor().max(0.0) as usize;
    let py0 = (y0 - max_r).floor().max(0.0) as usize;
    let px1 = ((x1 + max_r).ceil().max(0.0) as usize).min(width);
    let py1 = ((y1 + max_r).ceil().max(0.0) as usize).min(height);
    for py in py0..py1 {
        for px in px0..px1 {
            let (x, y) = (px as f64 + 0.5, py as f64 + 0.5);
            let (mut best, mut best_t) = (f64::MAX, 0.0);
            for i in 1..pts.len() {
                let (ax, ay) = pts[i - 1];
                let (bx, by) = pts[i];
                let (vx, vy) = (bx - ax, by - ay);
                let len2 = vx * vx + vy * vy;
                let s =
                    if len2 > 0.0 { (((x - ax) * vx + (y - ay) * vy) / len2).clamp(0.0, 1.0) } else { 0.0 };
                let (dx, dy) = (x - ax - s * vx, y - ay - s * vy);
                let d2 = dx * dx + dy * dy;
                if d2 < best {
                    best = d2;
                    best_t = (cumulative[i - 1] + s * (cumulative[i] - cumulative[i - 1])) / total;
                }
            }
            let r = (band.radius)(best_t).max(0.3);
            let u = best.sqrt() / r;
            if u >= 1.1 {
                continue;
            }
            let body = 1.0 - smoothstep(0.8, 1.08, u);
            let rim = (-((u - 0.8) / 0.13).powi(2)).exp();
            let profile = body * (1.0 + (band.cortex - 1.0) * rim) / band.cortex.max(1.0);
            layer[py * width + px] += ((band.amplitude)(best_t) * profile) as f32;
        }
    }
}

/// Fade-in over `[0, a]` and fade-out over `[1 - b, 1]`.
fn taper(t: f64, a: f64, b: f64) -> f64 {
    smoothstep(0.0, a, t) * smoothstep(1.0, 1.0 - b, t)
}

/// The drawn rib cage of one image, in pixels.
struct Cage {
    /// Midline.
    cx: f64,
    /// Lung apex (top of the first rib's arc).
    apex: f64,
    /// Costophrenic level.
    base: f64,
    /// Half-width of the rib cage at its widest.
    half_width: f64,
    /// Half-width of the spine (where posterior ribs start).
    spine: f64,
}

impl Cage {
    /// Half-width of the rib cage at height `y`: narrow at the apex, full from about halfway
    /// down.
    fn half_width_at(&self, y: f64) -> f64 {
        let s = ((y - self.apex) / (0.55 * (self.base - self.apex))).clamp(0.0, 1.0);
        self.half_width * (0.45 + 0.55 * (s * std::f64::consts::FRAC_PI_2).sin())
    }
}

/// Adds synthetic ribs and clavicles to a `width x height` radiograph (display values 0..255,
/// bright = dense). Returns `(input, bones)`: the radiograph with bones, clipped to 0..255, and
/// the layer that was added (`input - pixels`, so `pixels + bones == input` up to float
/// rounding; zero outside [`BoneConfig::thorax`]). Deterministic in `seed`.
///
/// Per side: `ribs_per_side` posterior ribs as arcs from the spine rising briefly, then running
/// out and curving down along the chest wall, shorter and more curved near the apex; the upper
/// `anterior_count` ribs continue as fainter anterior ribs from the chest wall sloping down
/// towards the sternum and fading where the costal cartilage starts; clavicles as S-shaped bands
/// from near the sternum out and up to the shoulders. Every band has soft edges and cortical
/// rims; the layer is blurred, confined to the thorax box, and added in proportion to the
/// headroom of the pixel under it.
pub fn add_bones(
    pixels: &[f32],
    width: usize,
    height: usize,
    config: &BoneConfig,
    seed: u64,
) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(pixels.len(), width * height, "pixels must be width x height");
    let layer = bone_layer(width, height, config, seed);
    composite(pixels, &layer, config.headroom_power)
}

/// The bone layer of [`add_bones`] before headroom scaling and clipping.
fn bone_layer(width: usize, height: usize, config: &BoneConfig, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix(seed);
    let (w, h) = (width as f64, height as f64);
    let tb = config.thorax;
    let mut jit = |scale: f64| rng.uniform(-1.0, 1.0) * config.jitter * scale;
    let cx = w * (0.5 * (tb.left + tb.right)) + jit(w);
    let apex = h * (tb.top + 0.08) + jit(h);
    let base = h * (tb.bottom - 0.04) + jit(h);
    let half_width = w * (0.5 * (tb.right - tb.left) - 0.07) + jit(w);
    let cage = Cage { cx, apex, base, half_width, spine: 0.04 * w };

    let n = rng.int_between(config.ribs_per_side).max(1);
    let thickness = rng.between(config.rib_thickness) * h;
    let contrast = rng.between(config.contrast);
    let sigma = rng.between(config.blur_sigma) * h;
    let mut layer = vec![0f32; width * height];

    // Medial ends of the posterior ribs, top to bottom, spacing widening slightly downwards.
    let span = cage.base - cage.apex;
    let medial_y: Vec<f64> = (0..n)
        .map(|i| {
            let f = if n == 1 { 0.0 } else { i as f64 / (n - 1) as f64 };
            cage.apex + span * (0.01 + 0.78 * f.powf(1.05))
        })
        .collect();

    for side in [-1.0f64, 1.0] {
        for (i, &y0) in medial_y.iter().enumerate() {
            let f = if n == 1 { 0.0 } else { i as f64 / (n - 1) as f64 };
            let y0 = y0 + rng.uniform(-0.15, 0.15) * thickness;
            let reach = (cage.half_width_at(y0 + 0.1 * span) - cage.spine).max(2.0);
            // Upper ribs arc more tightly; the lower ones run out flatter and then down.
            let droop = (0.5 - 0.2 * f) * rng.uniform(0.9, 1.1);
            let rise = (0.06 + 0.02 * f) * rng.uniform(0.8, 1.2);
            let x = |d: f64| cage.cx + side * (cage.spine + d * reach);
            // The medial end starts over the transverse process, not on one vertical line.
            let start = cage.cx + side * cage.spine * rng.uniform(0.55, 0.95);
            let posterior = bezier(
                [
                    (start, y0),
                    (x(0.40), y0 - rise * reach),
                    (x(0.88), y0 - 0.5 * rise * reach),
                    (x(1.0), y0 + droop * reach),
                ],
                40,
            );
            let lateral = posterior[posterior.len() - 1];
            let r = 0.5 * thickness * (0.9 + 0.25 * f) * rng.uniform(0.92, 1.08);
            let a = contrast * rng.uniform(0.85, 1.15);
            let phase = rng.uniform(0.0, std::f64::consts::TAU);
            let radius = move |t: f64| r * (0.85 + 0.15 * smoothstep(0.0, 0.3, t));
            let amplitude = move |t: f64| {
                // Faded in over the spine, densest where the rib turns along the chest wall
                // (seen edge-on there).
                a * taper(t, 0.22, 0.05)
                    * (1.0 + 0.2 * smoothstep(0.55, 0.9, t))
                    * (1.0 + 0.08 * (std::f64::consts::TAU * 1.5 * t + phase).sin())
                    / 1.2
            };
            draw_band(
                &mut layer,
                width,
                height,
                &Band { points: posterior, radius: &radius, amplitude: &amplitude, cortex: config.cortex },
            );

            if config.anterior_ribs && i < config.anterior_count {
                // From the chest wall just below the posterior rib's end, medially and down
                // (about 30 degrees), fading where cartilage takes over.
                let (lx, ly) = (lateral.0 - side * 0.02 * reach, lateral.1 + 0.02 * reach);
                let medial_x = cage.cx + side * (cage.spine + 0.30 * reach.max(0.5 * cage.half_width));
                let dx = lx - medial_x;
                let len = dx.abs();
                let drop = len * rng.uniform(0.45, 0.6);
                let anterior = bezier(
                    [
                        (lx, ly),
                        (lx - 0.30 * dx, ly + 0.05 * len),
                        (medial_x + 0.35 * dx, ly + drop * 0.85),
                        (medial_x, ly + drop),
                    ],
                    32,
                );
                let ra = r * 1.25;
                let aa = a * config.anterior_contrast;
                let radius = move |_t: f64| ra;
                let amplitude = move |t: f64| aa * taper(t, 0.08, 0.25) * (1.0 - 0.4 * t);
                draw_band(
                    &mut layer,
                    width,
                    height,
                    &Band {
                        points: anterior,
                        radius: &radius,
                        amplitude: &amplitude,
                        cortex: config.cortex * 0.9,
                    },
                );
            }
        }

        if config.clavicles {
            // Medial head beside the sternum a little below the apex, lateral end at the
            // shoulder, about level with the apex and out past the rib cage: nearly horizontal,
            // an S in projection.
            let my = cage.apex + rng.uniform(0.05, 0.08) * h;
            let mx = cage.cx + side * rng.uniform(0.035, 0.05) * w;
            let lx = cage.cx + side * (cage.half_width * rng.uniform(1.0, 1.08));
            let ly = cage.apex + rng.uniform(-0.015, 0.015) * h;
            let len = (lx - mx).abs();
            let bow = rng.uniform(0.05, 0.09) * len;
            let clavicle = bezier(
                [
                    (mx, my),
                    (mx + 0.35 * (lx - mx), my - 0.35 * (my - ly) + bow),
                    (mx + 0.70 * (lx - mx), ly + 0.35 * (my - ly) - bow),
                    (lx, ly),
                ],
                40,
            );
            let rc = 0.5 * thickness * config.clavicle_thickness * rng.uniform(0.92, 1.08);
            let ac = contrast * config.clavicle_contrast * rng.uniform(0.9, 1.1);
            let radius = move |t: f64| rc * (1.15 - 0.3 * t);
            let amplitude = move |t: f64| ac * taper(t, 0.06, 0.08);
            draw_band(
                &mut layer,
                width,
                height,
                &Band { points: clavicle, radius: &radius, amplitude: &amplitude, cortex: config.cortex },
            );
        }
    }

    gaussian_blur(&mut layer, width, height, sigma);
    for y in 0..height {
        for x in 0..width {
            let m = tb.mask(x as f64 + 0.5, y as f64 + 0.5, width, height);
            layer[y * width + x] = (f64::from(layer[y * width + x]) * m).max(0.0) as f32;
        }
    }
    layer
}

// ---------------------------------------------------------------------------------------------
// Nodules
// ---------------------------------------------------------------------------------------------

/// How [`add_nodules`] draws nodules. Ranges are `(min, max)`, drawn per nodule.
#[derive(Debug, Clone, PartialEq)]
pub struct NoduleConfig {
    /// Nodules per image.
    pub count: (usize, usize),
    /// Diameter in mm (of the circle of the same area, for elliptical ones).
    pub diameter_mm: (f64, f64),
    /// Peak brightness over dark lung per 10 mm of diameter, in grey levels: a sphere's
    /// projected thickness, and so its contrast, grows with its size.
    pub contrast_per_10mm: (f64, f64),
    /// Cap on the peak brightness, in grey levels.
    pub max_contrast: f64,
    /// Chance that a nodule is elliptical rather than round.
    pub elliptical: f64,
    /// Largest ratio of long to short axis of an elliptical nodule.
    pub max_axis_ratio: f64,
    /// Edge blur, sigma in mm (at least 0.5 px).
    pub edge_sigma_mm: f64,
    /// The lung fields, image left (the patient's right) first: nodules lie wholly inside one.
    pub lungs: [Ellipse; 2],
    /// Exponent of the headroom scaling (see [`BoneConfig::headroom_power`]).
    pub headroom_power: f64,
}

impl Default for NoduleConfig {
    /// 1 to 3 nodules of 5 to 30 mm, 15 to 25 grey levels per 10 mm at the centre (a 5 mm one is
    /// faint, a 30 mm mass as bright as a rib or brighter: a sphere of soft tissue that thick
    /// attenuates about as much as a rib's bone), half of them elliptical up to 1.5 : 1, and lung fields
    /// fitted by eye to centred frontal films (the left one narrower, for the heart).
    fn default() -> Self {
        Self {
            count: (1, 3),
            diameter_mm: (5.0, 30.0),
            contrast_per_10mm: (15.0, 25.0),
            max_contrast: 70.0,
            elliptical: 0.5,
            max_axis_ratio: 1.5,
            edge_sigma_mm: 0.7,
            lungs: [
                Ellipse { cx: 0.28, cy: 0.47, rx: 0.12, ry: 0.26 },
                Ellipse { cx: 0.71, cy: 0.44, rx: 0.12, ry: 0.23 },
            ],
            headroom_power: 3.0,
        }
    }
}

/// One drawn nodule, in pixels of the image it was drawn on.
#[derive(Debug, Clone, PartialEq)]
pub struct NoduleSpec {
    /// Centre, pixels from the left edge.
    pub x: f64,
    /// Centre, pixels from the top edge.
    pub y: f64,
    /// Diameter of the circle of the same area, in mm.
    pub diameter_mm: f64,
    /// Semi-axes in pixels (`a >= b`); `a == b` for a round nodule.
    pub semi_axes_px: (f64, f64),
    /// Angle of the long axis from the x axis, radians.
    pub angle: f64,
    /// Peak brightness drawn at the centre, grey levels (before headroom scaling).
    pub contrast: f64,
    /// Which of [`NoduleConfig::lungs`] it is in.
    pub lung: usize,
}

impl NoduleSpec {
    /// `rho^2` of pixel centre `(x, y)` in the nodule's own frame: < 1 inside (the mask).
    pub fn level(&self, x: f64, y: f64) -> f64 {
        let (c, s) = (self.angle.cos(), self.angle.sin());
        let (dx, dy) = (x - self.x, y - self.y);
        let (u, v) = (c * dx + s * dy, -s * dx + c * dy);
        (u / self.semi_axes_px.0).powi(2) + (v / self.semi_axes_px.1).powi(2)
    }
}

/// Adds 1 to 3 (see [`NoduleConfig::count`]) nodules to a `width x height` radiograph whose
/// pixels are `pixel_spacing_mm` apart. Returns `(image, mask, nodules)`: the radiograph with
/// nodules, clipped to 0..255; a 0/1 mask, 1 where a pixel centre is inside a nodule's ellipse
/// (so its area is about pi/4 d^2 for d the diameter in pixels); and what was drawn.
///
/// Each nodule is a sphere (or an ellipsoid, its projected outline an ellipse) whose projected
/// thickness `sqrt(1 - rho^2)` sets the added brightness, with the edge blurred a little;
/// centres are drawn uniformly until the whole outline lies inside one lung ellipse and clear
/// of the others. A nodule that does not fit after 500 tries (a large one on a small image)
/// is left out, so fewer may come back than were drawn.
pub fn add_nodules(
    pixels: &[f32],
    width: usize,
    height: usize,
    pixel_spacing_mm: f64,
    config: &NoduleConfig,
    seed: u64,
) -> (Vec<f32>, Vec<f32>, Vec<NoduleSpec>) {
    assert_eq!(pixels.len(), width * height, "pixels must be width x height");
    assert!(pixel_spacing_mm > 0.0, "pixel spacing must be positive");
    let mut rng = SplitMix(seed);
    let count = rng.int_between(config.count);
    let mut specs: Vec<NoduleSpec> = Vec::new();
    for _ in 0..count {
        let diameter_mm = rng.between(config.diameter_mm);
        let radius = 0.5 * diameter_mm / pixel_spacing_mm;
        let ratio = if rng.chance(config.elliptical) {
            rng.uniform(1.0, config.max_axis_ratio.max(1.0))
        } else {
            1.0
        };
        let (a, b) = (radius * ratio.sqrt(), radius / ratio.sqrt());
        let angle = rng.uniform(0.0, std::f64::consts::PI);
        let contrast = (rng.between(config.contrast_per_10mm) * diameter_mm / 10.0).min(config.max_contrast);
        for _ in 0..500 {
            let lung = (rng.next_u64() % 2) as usize;
            let e = config.lungs[lung];
            let x = (e.cx + e.rx * rng.uniform(-1.0, 1.0)) * width as f64;
            let y = (e.cy + e.ry * rng.uniform(-1.0, 1.0)) * height as f64;
            let candidate = NoduleSpec { x, y, diameter_mm, semi_axes_px: (a, b), angle, contrast, lung };
            let fits = outline(&candidate, 32).iter().all(|&(px, py)| e.level(px, py, width, height) < 1.0);
            let clear = specs.iter().all(|s| {
                let d = ((s.x - x).powi(2) + (s.y - y).powi(2)).sqrt();
                d > s.semi_axes_px.0 + a + 1.0
            });
            if fits && clear {
                specs.push(candidate);
                break;
            }
        }
    }

    let mut layer = vec![0f32; width * height];
    let mut mask = vec![0f32; width * height];
    for s in &specs {
        let reach = s.semi_axes_px.0 + 2.0;
        let x0 = (s.x - reach).floor().max(0.0) as usize;
        let y0 = (s.y - reach).floor().max(0.0) as usize;
        let x1 = ((s.x + reach).ceil().max(0.0) as usize).min(width);
        let y1 = ((s.y + reach).ceil().max(0.0) as usize).min(height);
        for py in y0..y1 {
            for px in x0..x1 {
                let (cx, cy) = (px as f64 + 0.5, py as f64 + 0.5);
                if s.level(cx, cy) < 1.0 {
                    mask[py * width + px] = 1.0;
                }
                // Projected thickness, averaged over 4 x 4 sub-pixels so small nodules are smooth.
                let mut acc = 0.0;
                for sy in 0..4 {
                    for sx in 0..4 {
                        let l =
                            s.level(px as f64 + (sx as f64 + 0.5) / 4.0, py as f64 + (sy as f64 + 0.5) / 4.0);
                        acc += (1.0 - l).max(0.0).sqrt();
                    }
                }
                layer[py * width + px] += (s.contrast * acc / 16.0) as f32;
            }
        }
    }
    gaussian_blur(&mut layer, width, height, (config.edge_sigma_mm / pixel_spacing_mm).max(0.5));
    let (image, _) = composite(pixels, &layer, config.headroom_power);
    (image, mask, specs)
}

/// `n` points on a nodule's outline.
fn outline(s: &NoduleSpec, n: usize) -> Vec<(f64, f64)> {
    let (c, si) = (s.angle.cos(), s.angle.sin());
    (0..n)
        .map(|i| {
            let th = std::f64::consts::TAU * i as f64 / n as f64;
            let (u, v) = (s.semi_axes_px.0 * th.cos(), s.semi_axes_px.1 * th.sin());
            (s.x + c * u - si * v, s.y + si * u + c * v)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Writing proxy sets
// ---------------------------------------------------------------------------------------------

/// Why a proxy set could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SyntheticError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: PNG encoding failed: {reason}", path.display())]
    Encode { path: PathBuf, reason: String },
    #[error("image size must be at least 16 px, got {0}")]
    Size(usize),
}

/// What [`write_proxy_pairs`] or [`write_nodule_proxy`] wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyReport {
    /// The output folder.
    pub out: PathBuf,
    /// Output names (without `.png`), in source order.
    pub written: Vec<String>,
    /// Sources that could not be decoded, with the reason; they are skipped.
    pub skipped: Vec<(PathBuf, String)>,
    /// Nodules drawn in all (0 for bone pairs).
    pub nodules: usize,
}

impl ProxyReport {
    pub fn skipped_count(&self) -> usize {
        self.skipped.len()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SyntheticError + '_ {
    move |source| SyntheticError::Io { path: path.to_path_buf(), source }
}

/// Writes an 8-bit grey PNG (values rounded and clipped to 0..255) atomically.
fn write_png(path: &Path, pixels: &[f32], size: usize) -> Result<(), SyntheticError> {
    let bytes: Vec<u8> = pixels.iter().map(|&v| v.round().clamp(0.0, 255.0) as u8).collect();
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        &bytes,
        size as u32,
        size as u32,
        image::ExtendedColorType::L8,
    )
    .map_err(|e| SyntheticError::Encode { path: path.to_path_buf(), reason: e.to_string() })?;
    crate::atomic::write(path, &png).map_err(io_err(path))
}

/// Unique output names: a file's stem, with `-2`, `-3`, ... appended to a repeat.
fn unique_name(path: &Path, used: &mut HashSet<String>) -> String {
    let stem = path.file_stem().map_or_else(|| "image".to_string(), |s| s.to_string_lossy().into_owned());
    let mut name = stem.clone();
    let mut k = 2;
    while !used.insert(name.clone()) {
        name = format!("{stem}-{k}");
        k += 1;
    }
    name
}

/// Decodes every image of `sources` (folders, CSV and list files: [`Dataset::from_sources`])
/// and hands each, resized to `size x size`, to `each` with its unique output name; undecodable
/// files are recorded in the report and skipped.
fn for_each_image(
    sources: &[PathBuf],
    out: &Path,
    size: usize,
    mut each: impl FnMut(&str, &[f32]) -> Result<(), SyntheticError>,
) -> Result<ProxyReport, SyntheticError> {
    if size < 16 {
        return Err(SyntheticError::Size(size));
    }
    let dataset = Dataset::from_sources(sources)?;
    let mut report = ProxyReport { out: out.to_path_buf(), ..ProxyReport::default() };
    let mut used = HashSet::new();
    for sample in &dataset.samples {
        let img = match decode_file(&sample.path) {
            Ok(img) if img.width > 0 && img.height > 0 => img,
            Ok(_) => {
                report.skipped.push((sample.path.clone(), "empty image".into()));
                continue;
            }
            Err(e) => {
                report.skipped.push((sample.path.clone(), e.to_string()));
                continue;
            }
        };
        let pixels = resize_bilinear(&img.pixels, img.width as usize, img.height as usize, size, size);
        let name = unique_name(&sample.path, &mut used);
        each(&name, &pixels)?;
        report.written.push(name);
    }
    Ok(report)
}

fn sources_text(sources: &[PathBuf]) -> String {
    sources.iter().map(|s| format!("- `{}`\n", s.display())).collect()
}

fn skipped_text(report: &ProxyReport) -> String {
    let mut s =
        format!("{} written, {} skipped (undecodable).\n", report.written.len(), report.skipped.len());
    for (path, why) in report.skipped.iter().take(50) {
        let _ = writeln!(s, "- skipped `{}`: {why}", path.display());
    }
    if report.skipped.len() > 50 {
        let _ = writeln!(s, "- ... and {} more", report.skipped.len() - 50);
    }
    s
}

/// Writes a bone-suppression PROXY set: for every decodable image of `sources`, resized to
/// `size x size`, `out/target/<stem>.png` (the radiograph as it is, standing in for a
/// soft-tissue image) and `out/input/<stem>.png` (the same with [`add_bones`]), both 8-bit grey,
/// plus `out/README.md` saying what the set is and is not. Each image's bones come from
/// [`image_seed`]`(seed, name)`. Files are written atomically; a repeated stem gets `-2`, ...
pub fn write_proxy_pairs(
    sources: &[PathBuf],
    out: &Path,
    size: usize,
    config: &BoneConfig,
    seed: u64,
) -> Result<ProxyReport, SyntheticError> {
    let (input, target) = (out.join("input"), out.join("target"));
    for dir in [&input, &target] {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let report = for_each_image(sources, out, size, |name, pixels| {
        let (with_bones, _) = add_bones(pixels, size, size, config, image_seed(seed, name));
        write_png(&target.join(format!("{name}.png")), pixels, size)?;
        write_png(&input.join(format!("{name}.png")), &with_bones, size)
    })?;
    let readme = format!(
        "# Bone-suppression PROXY pairs (synthetic, not real soft-tissue images)\n\n\
         This folder is a **synthetic proxy** for bone suppression, made because no public \
         bone-suppression set was available. It is good for testing a pipeline (file handling, \
         shapes, losses, training loops), **not** for measuring how well real bones are \
         suppressed: a model trained or scored here learns to remove the bones *we drew*.\n\n\
         - `target/<name>.png`: an ordinary chest radiograph, resized to {size} x {size} \
         (bilinear, aspect not kept). It still shows its own real ribs: it stands in for a \
         soft-tissue image but is not one.\n\
         - `input/<name>.png`: the same image with synthetic bone shadows added: per side \
         {ribs:?} posterior ribs (arcs from the spine out and down along the chest wall), \
         fainter anterior ribs sloping towards the sternum, and S-shaped clavicles; bands with \
         soft edges and brighter cortical rims, Gaussian-blurred, confined to the thorax box, \
         added in proportion to the headroom of the pixel under them (`1 - (v/255)^{power}`) and \
         clipped to 0..255. So `input >= target` everywhere, and `input - target` is the bone \
         layer.\n\n\
         Made by `chess::data::synthetic::write_proxy_pairs` with seed {seed} (each image's \
         seed mixes it with the image's name), from:\n\n{sources}\n{skipped}\n\
         Configuration (`BoneConfig`):\n\n```text\n{config:#?}\n```\n\n\
         ## What a real evaluation needs\n\n\
         Real pairs of the same exposure with and without bone: dual-energy subtraction (DES) \
         radiographs, whose soft-tissue image is measured rather than drawn (two-exposure DES \
         needs the pair registered, as the patient moves between shots), or a published \
         processed reference such as BSE-JSRT (the JSRT radiographs with bone shadows \
         eliminated). Numbers from this proxy must not be reported as bone-suppression \
         performance.\n",
        ribs = config.ribs_per_side,
        power = config.headroom_power,
        sources = sources_text(sources),
        skipped = skipped_text(&report),
    );
    let path = out.join("README.md");
    crate::atomic::write(&path, readme.as_bytes()).map_err(io_err(&path))?;
    Ok(report)
}

/// Writes a nodule PROXY set: for every decodable image of `sources`, resized to
/// `size x size` with pixels `pixel_spacing_mm` apart, `out/images/<stem>.png` (with
/// [`add_nodules`]), `out/masks/<stem>.png` (0/255), `out/nodules.csv` (`image,x,y,
/// diameter_mm,pixel_spacing`, the image path relative to the CSV, one row per nodule, x and y in pixels of the written image) and
/// `out/README.md`. Seeds and names as [`write_proxy_pairs`].
pub fn write_nodule_proxy(
    sources: &[PathBuf],
    out: &Path,
    size: usize,
    pixel_spacing_mm: f64,
    config: &NoduleConfig,
    seed: u64,
) -> Result<ProxyReport, SyntheticError> {
    let (images, masks) = (out.join("images"), out.join("masks"));
    for dir in [&images, &masks] {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let mut csv = String::from("image,x,y,diameter_mm,pixel_spacing\n");
    let mut total = 0;
    let mut report = for_each_image(sources, out, size, |name, pixels| {
        let (img, mask, specs) =
            add_nodules(pixels, size, size, pixel_spacing_mm, config, image_seed(seed, name));
        let mask255: Vec<f32> = mask.iter().map(|&m| m * 255.0).collect();
        write_png(&images.join(format!("{name}.png")), &img, size)?;
        write_png(&masks.join(format!("{name}.png")), &mask255, size)?;
        for s in &specs {
            let _ = writeln!(
                csv,
                "images/{name}.png,{:.2},{:.2},{:.2},{pixel_spacing_mm}",
                s.x, s.y, s.diameter_mm
            );
        }
        total += specs.len();
        Ok(())
    })?;
    report.nodules = total;
    let path = out.join("nodules.csv");
    crate::atomic::write(&path, csv.as_bytes()).map_err(io_err(&path))?;
    let readme = format!(
        "# Nodule PROXY set (synthetic nodules on real radiographs)\n\n\
         This folder is a **synthetic proxy**: real chest radiographs with artificial nodules \
         added. It is good for testing a pipeline (a GAN's data loading, masks, metrics), \
         **not** for claims about detecting or synthesising real nodules.\n\n\
         - `images/<name>.png`: the radiograph resized to {size} x {size} (bilinear, aspect \
         not kept), taken to have {pixel_spacing_mm} mm pixels (an assumption, not read from \
         the source), with {count:?} nodules of {diam:?} mm added: spheres or ellipsoids whose \
         projected thickness `sqrt(1 - r^2)` sets the added brightness ({contrast:?} grey levels \
         per 10 mm of diameter at the centre, at most {max}), edges blurred, scaled by the \
         headroom of the pixel under them and clipped to 0..255. Centres were drawn until the \
         whole outline lay inside one of two ellipses approximating the lung fields (not a lung \
         segmentation: a nodule can overlie the heart border or a rib).\n\
         - `masks/<name>.png`: 255 where a pixel centre is inside a nodule's outline, else 0.\n\
         - `nodules.csv`: one row per nodule, `image` relative to this folder, `x`,`y` its centre in pixels of the written image, \
         `diameter_mm` that of the circle of equal area. The source images may contain real \
         lesions that are neither masked nor listed.\n\n\
         {total} nodules. Made by `chess::data::synthetic::write_nodule_proxy` with seed {seed} \
         (each image's seed mixes it with the image's name), from:\n\n{sources}\n{skipped}\n\
         Configuration (`NoduleConfig`):\n\n```text\n{config:#?}\n```\n\n\
         ## What a real evaluation needs\n\n\
         Radiographs with real, annotated nodules (for example JSRT's 154 nodule images with \
         positions and sizes, or LIDC-IDRI cases with CT-confirmed nodules) and a reader study \
         or detector trained on real data; numbers from this proxy must not be reported as \
         nodule performance.\n",
        count = config.count,
        diam = config.diameter_mm,
        contrast = config.contrast_per_10mm,
        max = config.max_contrast,
        sources = sources_text(sources),
        skipped = skipped_text(&report),
    );
    let path = out.join("README.md");
    crate::atomic::write(&path, readme.as_bytes()).map_err(io_err(&path))?;
    Ok(report)
}
