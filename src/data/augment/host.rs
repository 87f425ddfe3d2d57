//! The augmentations as native loops over one image, for decode threads of CPU-only training.
//!
//! A view is at most a filter pass, one strip-mined pass for the per-pixel steps, and up to two
//! warps, the last pass also normalising, over reusable buffers: no allocation per image and no
//! whole-image temporaries beyond two. The arithmetic follows [`super::tensor`] op for op (same f32
//! operations in the same order), so the two agree to float rounding; the warps compute source
//! coordinates directly in pixels where `grid_sample` goes through normalised ones.
use super::tensor::seeded_randn;
use super::{Filter, Noise, ViewPlan};
use crate::data::{MEAN, STD};

/// Buffers one thread reuses from view to view.
#[derive(Debug)]
pub struct HostScratch {
    /// Use AVX2 where the CPU has it (else the portable loops: same results, for tests).
    simd: bool,
    a: Vec<f32>,
    b: Vec<f32>,
    noise: Vec<f32>,
    padded: Vec<f32>,
    coords: Vec<f32>,
}

/// Runs `$body` compiled for AVX2 and FMA where the CPU has them (std caches the check), else
/// for the baseline x86-64 target (SSE2) the crate is built for. Everything `$body` calls must
/// be `#[inline(always)]` to be compiled for the wider target too. Results are the same either
/// way: Rust never contracts a multiply and an add into an FMA by itself.
macro_rules! with_avx2 {
    (if $allowed:expr; fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {{
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $name($($arg: $ty),*) $body
        #[cfg(target_arch = "x86_64")]
        if $allowed && std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function was compiled for.
            return unsafe { $name($($arg),*) };
        }
        #[allow(unreachable_code)]
        $body
    }};
}

impl Default for HostScratch {
    fn default() -> Self {
        Self {
            simd: true,
            a: Vec::new(),
            b: Vec::new(),
            noise: Vec::new(),
            padded: Vec::new(),
            coords: Vec::new(),
        }
    }
}

impl HostScratch {
    /// Never uses AVX2: the baseline x86-64 code, as on CPUs without it.
    pub fn portable() -> Self {
        Self { simd: false, ..Self::default() }
    }
}

/// Augments `src` (`h x w`, values 0..255) by `plan` into `out`, normalised as the encoder
/// takes it: the per-image equivalent of [`super::tensor::augment_planned`].
pub fn augment_host(
    src: &[f32],
    h: usize,
    w: usize,
    plan: &ViewPlan,
    scratch: &mut HostScratch,
    out: &mut [f32],
) {
    with_avx2!(if scratch.simd; fn augment_avx2(src: &[f32], h: usize, w: usize, plan: &ViewPlan, scratch: &mut HostScratch, out: &mut [f32]) {
        augment_view(src, h, w, plan, scratch, out)
    })
}

/// The body of [`augment_host`], inlined into both its AVX2 and its baseline variant.
#[inline(always)]
fn augment_view(
    src: &[f32],
    h: usize,
    w: usize,
    plan: &ViewPlan,
    scratch: &mut HostScratch,
    out: &mut [f32],
) {
    let n = h * w;
    assert!(src.len() == n && out.len() == n, "{h} x {w} image, {} in, {} out", src.len(), out.len());
    let HostScratch { simd, a, b, noise, padded, coords } = scratch;
    let simd = *simd;
    a.resize(n, 0.0);
    b.resize(n, 0.0);

    if let Some(Noise::Gaussian { seed, .. }) = plan.noise {
        let values = seeded_randn(n as i64, seed, tch::Device::Cpu);
        noise.resize(n, 0.0);
        values.copy_data(noise, n);
    }
    match &plan.filter {
        Some(Filter::Median3) => median3(src, h, w, padded, a),
        Some(Filter::Kernel { size, taps }) => filter(src, h, w, *size, taps, padded, a),
        None => {}
    }
    let filtered = plan.filter.is_some();
    // A warp of a single row or column has nothing to interpolate between.
    let warps = h >= 2 && w >= 2 && (plan.affine.is_some() || plan.optical.is_some());
    if !warps {
        // Steps 3 to 5 and the normalisation in one pass into `out`.
        point_ops(Some(if filtered { a } else { src }), out, plan, noise, true);
        return;
    }
    let pointwise = plan.brightness_contrast.is_some() || plan.noise.is_some() || plan.value_shift.is_some();
    if pointwise {
        point_ops(if filtered { None } else { Some(src) }, a, plan, noise, false);
    }
    let mut staged: &[f32] = if filtered || pointwise { a } else { src };
    // The last warp also normalises.
    if let Some(m) = plan.affine {
        if plan.optical.is_none() {
            return remap::<true>(simd, staged, h, w, out, coords, affine_rows(&m));
        }
        remap::<false>(simd, staged, h, w, b, coords, affine_rows(&m));
        staged = b;
    }
    if let Some(o) = plan.optical {
        remap::<true>(simd, staged, h, w, out, coords, optical_rows(o, h, w));
    }
}

/// How a warp resamples: bilinear for images, nearest for label maps (whose values are
/// classes, never to be mixed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Interp {
    #[default]
    Bilinear,
    Nearest,
}

/// The geometric steps of `plan` alone (affine warp, then optical distortion; reflect-101
/// borders) on `src` (`h x w`) into `out`, values not normalised: what an image's pair or mask
/// goes through while the image gets [`augment_host`] with the same plan. With `Bilinear` the
/// arithmetic is the image's, so a pair equal to its image comes out equal to the image's view
/// before normalisation, bit for bit.
pub fn warp_host(
    src: &[f32],
    h: usize,
    w: usize,
    plan: &ViewPlan,
    interp: Interp,
    scratch: &mut HostScratch,
    out: &mut [f32],
) {
    let n = h * w;
    assert!(src.len() == n && out.len() == n, "{h} x {w} image, {} in, {} out", src.len(), out.len());
    let warps = h >= 2 && w >= 2 && (plan.affine.is_some() || plan.optical.is_some());
    if !warps {
        out.copy_from_slice(src);
        return;
    }
    let HostScratch { simd, b, coords, .. } = scratch;
    let simd = *simd;
    b.resize(n, 0.0);
    let both = plan.affine.is_some() && plan.optical.is_some();
    let mut staged: &[f32] = src;
    if let Some(m) = plan.affine {
        let dst: &mut [f32] = if both { b } else { out };
        match interp {
            Interp::Bilinear => remap::<false>(simd, staged, h, w, dst, coords, affine_rows(&m)),
            Interp::Nearest => remap_nearest(staged, h, w, dst, coords, affine_rows(&m)),
        }
        if !both {
            return;
        }
        staged = b;
    }
    if let Some(o) = plan.optical {
        match interp {
            Interp::Bilinear => remap::<false>(simd, staged, h, w, out, coords, optical_rows(o, h, w)),
            Interp::Nearest => remap_nearest(staged, h, w, out, coords, optical_rows(o, h, w)),
        }
    }
}

/// Nearest-neighbour resampling at the coordinates `rows` gives, reflect-101 borders:
/// `grid_sample`'s `nearest` with reflection (coordinates folded, then rounded half to even).
fn remap_nearest(
    src: &[f32],
    h: usize,
    w: usize,
    out: &mut [f32],
    coords: &mut Vec<f32>,
    rows: impl Fn(usize, &mut [f32], &mut [f32]),
) {
    assert!(src.len() == h * w && out.len() == h * w && h >= 2 && w >= 2);
    coords.resize(2 * w, 0.0);
    let (xs, ys) = coords.split_at_mut(w);
    let (xmax, ymax) = ((w - 1) as f32, (h - 1) as f32);
    for (y, orow) in out.chunks_exact_mut(w).enumerate() {
        rows(y, xs, ys);
        for ((o, &sx), &sy) in orow.iter_mut().zip(xs.iter()).zip(ys.iter()) {
            let (sx, sy) = (reflect_coord(sx, xmax), reflect_coord(sy, ymax));
            let (ix, iy) = (sx.round_ties_even() as usize, sy.round_ties_even() as usize);
            *o = src[iy.min(h - 1) * w + ix.min(w - 1)];
        }
    }
}

/// With `f32::min`/`max` (not a comparison and a select, which the compiler turns into masked
/// stores of only the swapped lanes: slow on AMD).
#[inline(always)]
fn min_max(a: f32, b: f32) -> (f32, f32) {
    (a.min(b), a.max(b))
}

/// Step 8 in f32, as libtorch computes `x * (1 / (255 STD)) - MEAN / STD`.
#[inline(always)]
fn normalise(v: f32) -> f32 {
    v * NORM_SCALE - NORM_OFFSET
}

const NORM_SCALE: f32 = (1.0 / (255.0 * STD)) as f32;
const NORM_OFFSET: f32 = (MEAN / STD) as f32;

#[inline(always)]
fn clip(v: f32) -> f32 {
    // Comparisons rather than f32::max/min, whose NaN handling costs a blend per lane.
    let v = if v > 0.0 { v } else { 0.0 };
    if v < 255.0 { v } else { 255.0 }
}

/// Steps 3 to 5 (and 8 when `normalise`) on `dst`, read from `src` if given, else in place;
/// strip by strip, so that each step's pass runs over L1-resident values.
#[inline(always)]
fn point_ops(src: Option<&[f32]>, dst: &mut [f32], plan: &ViewPlan, noise: &[f32], normalise_out: bool) {
    const STRIP: usize = 2048;
    let contrast = plan.brightness_contrast.map(|(a, b)| (a as f32, b as f32));
    let shift = plan.value_shift.map(|s| s as f32);
    // `v = f(v)` over the strip, reading `from` instead on the strip's first pass (which saves
    // a copy of the image).
    macro_rules! pass {
        ($strip:ident, $from:ident, |$v:ident| $f:expr) => {
            match $from.take() {
                Some(from) => $strip.iter_mut().zip(from).for_each(|(o, &$v)| *o = $f),
                None => $strip.iter_mut().for_each(|o| {
                    let $v = *o;
                    *o = $f
                }),
            }
        };
    }
    for (k, strip) in dst.chunks_mut(STRIP).enumerate() {
        let mut from = src.map(|s| &s[k * STRIP..][..strip.len()]);
        if let Some((alpha, beta)) = contrast {
            pass!(strip, from, |v| clip(v * alpha + beta));
        }
        match plan.noise {
            Some(Noise::Gaussian { sigma, .. }) => {
                let sigma = sigma as f32;
                let z = &noise[k * STRIP..][..strip.len()];
                match from.take() {
                    Some(from) => {
                        strip.iter_mut().zip(from).zip(z).for_each(|((o, &v), &z)| *o = clip(v + z * sigma))
                    }
                    None => strip.iter_mut().zip(z).for_each(|(v, &z)| *v = clip(*v + z * sigma)),
                }
            }
            Some(Noise::Multiplicative(f)) => {
                let f = f as f32;
                pass!(strip, from, |v| clip(v * f));
            }
            None => {}
        }
        if let Some(shift) = shift {
            pass!(strip, from, |v| clip(v + shift));
        }
        if normalise_out {
            pass!(strip, from, |v| normalise(v));
        } else if let Some(from) = from {
            strip.copy_from_slice(from);
        }
    }
}

/// Index `i` of a reflect-101 extension of `0..n` (OpenCV's default border), `|i| < n`.
#[inline(always)]
fn reflect101(i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        0
    } else if i < 0 {
        (-i).min(n - 1) as usize
    } else if i >= n {
        (2 * (n - 1) - i).max(0) as usize
    } else {
        i as usize
    }
}

/// cv2.filter2D on float input, reflect-101 borders, clipped to 0..255; taps summed in
/// row-major order over shifted rows, as the tensor path does (row by row here, so that the
/// output row stays in L1 while the taps accumulate).
#[inline(always)]
fn filter(
    src: &[f32],
    h: usize,
    w: usize,
    size: usize,
    taps: &[f32],
    padded: &mut Vec<f32>,
    out: &mut [f32],
) {
    let p = size / 2;
    let pw = w + 2 * p;
    padded.clear();
    padded.reserve(pw * (h + 2 * p));
    for y in 0..h + 2 * p {
        let row = &src[reflect101(y as isize - p as isize, h) * w..][..w];
        padded.extend((0..p).map(|i| row[reflect101(i as isize - p as isize, w)]));
        padded.extend_from_slice(row);
        padded.extend((0..p).map(|i| row[reflect101((w + i) as isize, w)]));
    }
    let taps: Vec<(usize, usize, f32)> =
        taps.iter().enumerate().filter(|(_, v)| **v != 0.0).map(|(t, &v)| (t / size, t % size, v)).collect();
    for (y, orow) in out.chunks_exact_mut(w).enumerate() {
        orow.fill(0.0);
        for &(r, q, v) in &taps {
            let from = &padded[(y + r) * pw + q..][..w];
            orow.iter_mut().zip(from).for_each(|(o, &s)| *o += s * v);
        }
        orow.iter_mut().for_each(|v| *v = clip(*v));
    }
}

/// cv2.medianBlur(ksize=3): replicated borders; a 19-exchange median network (Devillard's
/// opt_med9, exact) run across whole rows, so that every exchange is a vector min and max.
#[inline(always)]
fn median3(src: &[f32], h: usize, w: usize, padded: &mut Vec<f32>, out: &mut [f32]) {
    let pw = w + 2;
    padded.clear();
    padded.reserve(pw * (h + 2) + 9 * w);
    for y in 0..h + 2 {
        let row = &src[(y.saturating_sub(1)).min(h - 1) * w..][..w];
        padded.push(row[0]);
        padded.extend_from_slice(row);
        padded.push(row[w - 1]);
    }
    // Nine lanes after the padded image: the 3x3 neighbourhoods of one row.
    padded.resize(pw * (h + 2) + 9 * w, 0.0);
    let (padded, lanes) = padded.split_at_mut(pw * (h + 2));
    const NETWORK: [(usize, usize); 19] = [
        (1, 2),
        (4, 5),
        (7, 8),
        (0, 1),
        (3, 4),
        (6, 7),
        (1, 2),
        (4, 5),
        (7, 8),
        (0, 3),
        (5, 8),
        (4, 7),
        (3, 6),
        (1, 4),
        (2, 5),
        (4, 7),
        (4, 2),
        (6, 4),
        (4, 2),
    ];
    for (y, orow) in out.chunks_exact_mut(w).enumerate() {
        for (k, lane) in lanes.chunks_exact_mut(w).enumerate() {
            lane.copy_from_slice(&padded[(y + k / 3) * pw + k % 3..][..w]);
        }
        for (i, j) in NETWORK {
            // Lane j is after lane i, except in (4, 2) and (6, 4), where the smaller value
            // goes to the later lane.
            let (lo, hi) = (i.min(j), i.max(j));
            let (first, second) = lanes.split_at_mut(hi * w);
            let (p, q) = (&mut first[lo * w..][..w], &mut second[..w]);
            if i < j {
                p.iter_mut().zip(q.iter_mut()).for_each(|(p, q)| (*p, *q) = min_max(*p, *q));
            } else {
                p.iter_mut().zip(q.iter_mut()).for_each(|(p, q)| (*q, *p) = min_max(*p, *q));
            }
        }
        orow.copy_from_slice(&lanes[4 * w..][..w]);
    }
}

/// Source coordinates of one destination row under a cv2.warpAffine matrix (source to
/// destination): `A^-1 ((x, y) - t)`, linear along the row.
fn affine_rows(m: &[f64; 6]) -> impl Fn(usize, &mut [f32], &mut [f32]) {
    let det = m[0] * m[4] - m[1] * m[3];
    let (i00, i01, i10, i11) = (m[4] / det, -m[1] / det, -m[3] / det, m[0] / det);
    let (tx, ty) = (m[2], m[5]);
    move |y, xs, ys| {
        let dy = y as f64 - ty;
        for (x, (sx, sy)) in xs.iter_mut().zip(ys.iter_mut()).enumerate() {
            let dx = x as f64 - tx;
            *sx = (i00 * dx + i01 * dy) as f32;
            *sy = (i10 * dx + i11 * dy) as f32;
        }
    }
}

/// Source coordinates of one row under the optical distortion (k, centre shift dx, dy), as
/// [`super::tensor::optical_distortion`] computes them in f32.
fn optical_rows((k, dx, dy): (f64, f64, f64), h: usize, w: usize) -> impl Fn(usize, &mut [f32], &mut [f32]) {
    let f = w as f32;
    let (k, cx, cy) = (k as f32, dx as f32 + w as f32 * 0.5, dy as f32 + h as f32 * 0.5);
    move |y, xs, ys| {
        let v = (y as f32 - cy) / f;
        for (x, (sx, sy)) in xs.iter_mut().zip(ys.iter_mut()).enumerate() {
            let u = (x as f32 - cx) / f;
            let r2 = u * u + v * v;
            let factor = 1.0 + k * r2 + k * r2 * r2;
            *sx = u * factor * f + cx;
            *sy = v * factor * f + cy;
        }
    }
}

/// `grid_sample`'s reflection about the first and last pixel centres (align_corners): the
/// coordinates folded into `[0, xmax] x [0, ymax]`. Out of line and cold: inlined, the
/// compiler computes it for every pixel to vectorise the branch away, which triples the cost
/// of a warp.
#[cold]
#[inline(never)]
fn fold(x: f32, y: f32, xmax: f32, ymax: f32) -> (f32, f32) {
    (reflect_coord(x, xmax), reflect_coord(y, ymax))
}

fn reflect_coord(x: f32, max: f32) -> f32 {
    if max <= 0.0 {
        return 0.0;
    }
    let x = x.abs();
    // Truncation is floor here (x >= 0), without a libm call on the baseline target.
    let flips = (x / max) as i64;
    let extra = x - flips as f32 * max;
    let r = if flips % 2 == 0 { extra } else { max - extra };
    r.clamp(0.0, max)
}

/// Bilinear resampling of `src` at the source coordinates `rows` gives for each destination
/// row, reflect-101 borders (cv2.remap / warpAffine with INTER_LINEAR and BORDER_REFLECT_101);
/// normalises on the way out when `NORMALISE`.
#[inline(always)]
fn remap<const NORMALISE: bool>(
    simd: bool,
    src: &[f32],
    h: usize,
    w: usize,
    out: &mut [f32],
    coords: &mut Vec<f32>,
    rows: impl Fn(usize, &mut [f32], &mut [f32]),
) {
    assert!(src.len() == h * w && out.len() == h * w && h >= 2 && w >= 2);
    coords.resize(2 * w, 0.0);
    let (xs, ys) = coords.split_at_mut(w);
    #[cfg(target_arch = "x86_64")]
    let avx2 = simd && std::is_x86_feature_detected!("avx2") && h * w < i32::MAX as usize;
    for (y, orow) in out.chunks_exact_mut(w).enumerate() {
        rows(y, xs, ys);
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU has AVX2 and the image has fewer than 2^31 pixels.
            unsafe { remap_row_avx2::<NORMALISE>(src, h, w, xs, ys, orow) };
            continue;
        }
        for ((o, &sx), &sy) in orow.iter_mut().zip(xs.iter()).zip(ys.iter()) {
            *o = sample::<NORMALISE>(src, h, w, sx, sy);
        }
    }
}

/// One bilinear sample at (sx, sy), folded into the image first where needed.
#[inline(always)]
fn sample<const NORMALISE: bool>(src: &[f32], h: usize, w: usize, sx: f32, sy: f32) -> f32 {
    let (xmax, ymax) = ((w - 1) as f32, (h - 1) as f32);
    // Inside, with both neighbours inside (the common case): no folding, no clamping.
    let inside = sx >= 0.0 && sx < xmax && sy >= 0.0 && sy < ymax;
    let (sx, sy) = if inside { (sx, sy) } else { fold(sx, sy, xmax, ymax) };
    // Non-negative here, so truncation is floor (which the baseline x86-64 target has no
    // instruction for).
    let (ix, iy) = (sx as usize, sy as usize);
    let (fx, fy) = (sx - ix as f32, sy - iy as f32);
    let i = iy * w + ix;
    let (dx, dy) = (usize::from(ix + 1 < w), if iy + 1 < h { w } else { 0 });
    assert!(i + dy + dx < src.len());
    // SAFETY: checked just above (ix <= w - 1 and iy <= h - 1 after folding, and dx, dy step
    // to the next column or row only where there is one).
    let (a, b, c, d) = unsafe {
        (
            *src.get_unchecked(i),
            *src.get_unchecked(i + dx),
            *src.get_unchecked(i + dy),
            *src.get_unchecked(i + dy + dx),
        )
    };
    let v = a * ((1.0 - fx) * (1.0 - fy)) + b * (fx * (1.0 - fy)) + c * ((1.0 - fx) * fy) + d * (fx * fy);
    if NORMALISE { normalise(v) } else { v }
}

/// [`remap`] over one row, 8 pixels at a time with AVX2 gathers where all 8 sample inside
/// the image, pixel by pixel where some need folding. The arithmetic is [`sample`]'s, lane by
/// lane (mul and add, no FMA), so results do not depend on the CPU.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn remap_row_avx2<const NORMALISE: bool>(
    src: &[f32],
    h: usize,
    w: usize,
    xs: &[f32],
    ys: &[f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (xmax, ymax) = (_mm256_set1_ps((w - 1) as f32), _mm256_set1_ps((h - 1) as f32));
    let (zero, one, width) = (_mm256_setzero_ps(), _mm256_set1_ps(1.0), _mm256_set1_epi32(w as i32));
    let (scale, offset) = (_mm256_set1_ps(NORM_SCALE), _mm256_set1_ps(NORM_OFFSET));
    let mut x = 0;
    while x + 8 <= out.len() {
        // SAFETY: x + 8 <= len of xs, ys and out (all w long); gathers read inside src, below.
        unsafe {
            let sx = _mm256_loadu_ps(xs.as_ptr().add(x));
            let sy = _mm256_loadu_ps(ys.as_ptr().add(x));
            let inside = _mm256_and_ps(
                _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(sx, zero), _mm256_cmp_ps::<_CMP_LT_OQ>(sx, xmax)),
                _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(sy, zero), _mm256_cmp_ps::<_CMP_LT_OQ>(sy, ymax)),
            );
            if _mm256_movemask_ps(inside) != 0xFF {
                for k in x..x + 8 {
                    out[k] = sample::<NORMALISE>(src, h, w, xs[k], ys[k]);
                }
                x += 8;
                continue;
            }
            let (ix, iy) = (_mm256_cvttps_epi32(sx), _mm256_cvttps_epi32(sy));
            let fx = _mm256_sub_ps(sx, _mm256_cvtepi32_ps(ix));
            let fy = _mm256_sub_ps(sy, _mm256_cvtepi32_ps(iy));
            // 0 <= ix < w - 1 and 0 <= iy < h - 1: all four neighbours are in the image.
            let i = _mm256_add_epi32(_mm256_mullo_epi32(iy, width), ix);
            // Each pixel's left and right neighbours are adjacent: one 64-bit gather fetches
            // both (half the gathered elements of four 32-bit gathers), then they are split.
            let (a, b) = gather_pairs(src.as_ptr(), i);
            let (c, d) = gather_pairs(src.as_ptr().add(w), i);
            let (gx, gy) = (_mm256_sub_ps(one, fx), _mm256_sub_ps(one, fy));
            let mut v = _mm256_mul_ps(a, _mm256_mul_ps(gx, gy));
            v = _mm256_add_ps(v, _mm256_mul_ps(b, _mm256_mul_ps(fx, gy)));
            v = _mm256_add_ps(v, _mm256_mul_ps(c, _mm256_mul_ps(gx, fy)));
            v = _mm256_add_ps(v, _mm256_mul_ps(d, _mm256_mul_ps(fx, fy)));
            if NORMALISE {
                v = _mm256_sub_ps(_mm256_mul_ps(v, scale), offset);
            }
            _mm256_storeu_ps(out.as_mut_ptr().add(x), v);
        }
        x += 8;
    }
    for k in x..out.len() {
        out[k] = sample::<NORMALISE>(src, h, w, xs[k], ys[k]);
    }
}

/// `(p[i], p[i + 1])` for the 8 indices `i`, as two vectors.
///
/// # Safety
/// AVX2, and `p[i]`, `p[i + 1]` readable for every index.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gather_pairs(
    p: *const f32,
    i: std::arch::x86_64::__m256i,
) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
    use std::arch::x86_64::*;
    let p = p as *const f64;
    // SAFETY: per the contract; an f64 read at float index i covers floats i and i + 1
    // (unaligned gathers are allowed).
    let (lo, hi) = unsafe {
        (
            _mm256_castpd_ps(_mm256_i32gather_pd::<4>(p, _mm256_castsi256_si128(i))),
            _mm256_castpd_ps(_mm256_i32gather_pd::<4>(p, _mm256_extracti128_si256::<1>(i))),
        )
    };
    // lo = [a0 b0 a1 b1 | a2 b2 a3 b3], hi = [a4 b4 a5 b5 | a6 b6 a7 b7].
    let a = _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi); // [a0 a1 a4 a5 | a2 a3 a6 a7]
    let b = _mm256_shuffle_ps::<0b11_01_11_01>(lo, hi);
    let order = |v: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)));
    (order(a), order(b))
}

/// Bilinear resize of `src` (`h x w`) into `out` (`oh x ow`) with half-pixel centres and no
/// antialiasing (OpenCV's INTER_LINEAR), computed as libtorch's `upsample_bilinear2d`
/// (align_corners false) does: same f32 source indices, weights and summation order.
pub fn resize_bilinear(src: &[f32], h: usize, w: usize, out: &mut [f32], oh: usize, ow: usize) {
    assert!(src.len() == h * w && out.len() == oh * ow, "resize {h} x {w} -> {oh} x {ow}");
    if (h, w) == (oh, ow) {
        out.copy_from_slice(src);
        return;
    }
    let (xs, ys) = (linear_taps(w, ow), linear_taps(h, oh));
    // Each source row interpolated along x once; two of them make an output row.
    let mut rows = vec![0f32; h * ow];
    for (row, srow) in rows.chunks_exact_mut(ow).zip(src.chunks_exact(w)) {
        for (o, &(i0, i1, w0, w1)) in row.iter_mut().zip(&xs) {
            *o = srow[i0] * w0 + srow[i1] * w1;
        }
    }
    for (orow, &(i0, i1, w0, w1)) in out.chunks_exact_mut(ow).zip(&ys) {
        let (r0, r1) = (&rows[i0 * ow..][..ow], &rows[i1 * ow..][..ow]);
        for ((o, &a), &b) in orow.iter_mut().zip(r0).zip(r1) {
            *o = a * w0 + b * w1;
        }
    }
}

/// Per output index: the two source indices and their weights (libtorch's
/// `area_pixel_compute_source_index` and `guard_index_and_lambda`, in f32).
fn linear_taps(input: usize, output: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| {
            let real = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (real.floor() as usize).min(input - 1);
            let lambda = (real - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            (i0, i1, 1.0 - lambda, lambda)
        })
        .collect()
}
