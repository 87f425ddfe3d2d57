//! Each augmentation op against OpenCV with the same parameters, and the pipeline's
//! probabilities, seeding and ranges.
mod common;

use std::path::PathBuf;
use std::process::Command;

use chess::data::augment::{self, AugmentConfig, Rng};
use chess::data::{self, MEAN, STD};
use tch::{Device, Kind, Tensor};

fn radiograph() -> Tensor {
    let dir = common::data_dir().join("cxr-pneumonia-224/test/PNEUMONIA");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let img = data::decode_file(&files[0]).unwrap();
    data::to_tensor(&img).unsqueeze(0)
}

fn diffs(ours: &Tensor, theirs: &Tensor) -> (f64, f64) {
    let d = (ours.to_kind(Kind::Double).view([-1]) - theirs.to_kind(Kind::Double).view([-1])).abs();
    (d.max().double_value(&[]), d.mean(Kind::Double).double_value(&[]))
}

#[test]
fn ops_match_opencv() {
    let x = radiograph();
    let (h, w) = (x.size()[2], x.size()[3]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.npy");
    x.view([h, w]).to_kind(Kind::Float).write_npy(&input).unwrap();
    let sharpen = augment::sharpen_kernel(0.15, 0.7);
    let motion = augment::motion_kernel(5, 30.0);
    let (angle, scale, dx, dy) = (7.5, 1.1, 0.05, -0.03);
    let (k, odx, ody) = (0.04, 6.0, -4.0);
    let params = format!(
        "{{\"sharpen\": {:?}, \"motion\": {:?}, \"angle\": {angle}, \"scale\": {scale}, \"dx\": {dx}, \"dy\": {dy}, \"k\": {k}, \"odx\": {odx}, \"ody\": {ody}}}",
        sharpen.chunks(3).map(|r| r.to_vec()).collect::<Vec<_>>(),
        motion.chunks(5).map(|r| r.to_vec()).collect::<Vec<_>>()
    );
    let pfile = dir.path().join("params.json");
    std::fs::write(&pfile, params).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/augment_reference.py");
    let ok =
        Command::new(common::python()).arg(script).arg(&input).arg(dir.path()).arg(&pfile).status().unwrap();
    assert!(ok.success());
    let refn = |n: &str| common::read_npy(&dir.path().join(format!("{n}.npy")));

    let (max, _) = diffs(&augment::median3(&x), &refn("median"));
    eprintln!("median 3x3 vs cv2.medianBlur: max |diff| {max}");
    assert_eq!(max, 0.0);

    for (name, kernel, size) in [("sharpen", sharpen.to_vec(), 3), ("motion", motion.clone(), 5)] {
        let ours = augment::filter(&x, &Tensor::from_slice(&kernel).view([1, size, size]));
        let (max, _) = diffs(&ours, &refn(name));
        eprintln!("{name} vs cv2.filter2D: max |diff| {max:.2e}");
        assert!(max < 1e-3, "{name}: {max}");
    }
    assert!((motion.iter().sum::<f32>() - 1.0).abs() < 1e-6);

    let m = augment::shift_scale_rotate_matrix(w, h, angle, scale, dx, dy);
    let (mmax, _) = diffs(&Tensor::from_slice(&m), &refn("affine_matrix"));
    assert!(mmax < 1e-9, "matrix differs from cv2.getRotationMatrix2D: {mmax}");
    let ours = augment::warp_affine(&x, &Tensor::from_slice(&m).view([1, 2, 3]));
    let (max, mean) = diffs(&ours, &refn("affine"));
    eprintln!("shift-scale-rotate vs cv2.warpAffine: max |diff| {max:.3}, mean {mean:.4}");
    // OpenCV quantises sampling positions to 1/32 pixel; we do not.
    assert!(mean < 0.1 && max < 4.0, "affine: mean {mean}, max {max}");

    let one = |v: f64| Tensor::from_slice(&[v]);
    let ours = augment::optical_distortion(&x, &one(k), &one(odx), &one(ody));
    let (max, mean) = diffs(&ours, &refn("optical"));
    eprintln!("optical distortion vs cv2.initUndistortRectifyMap+remap: max |diff| {max:.3}, mean {mean:.4}");
    assert!(mean < 0.1 && max < 4.0, "optical: mean {mean}, max {max}");
}

#[test]
fn pipeline_is_seeded_normalised_and_follows_the_probabilities() {
    let x = radiograph().repeat([64, 1, 1, 1]);
    let cfg = AugmentConfig::default();
    let (a, applied) = augment::augment(&x, &cfg, &mut Rng::new(5));
    let (b, _) = augment::augment(&x, &cfg, &mut Rng::new(5));
    let (c, _) = augment::augment(&x, &cfg, &mut Rng::new(6));
    assert!(a.equal(&b), "same seed, same views");
    assert!(!a.equal(&c), "another seed, other views");
    assert_eq!(a.size(), x.size());
    // Untouched images are just normalised.
    let touched: std::collections::BTreeSet<usize> = [
        &applied.blur_or_sharpen,
        &applied.brightness_contrast,
        &applied.noise,
        &applied.value_shift,
        &applied.affine,
        &applied.optical,
    ]
    .into_iter()
    .flatten()
    .copied()
    .collect();
    let plain = (x.get(0) / 255.0 - MEAN) / STD;
    for i in 0..64 {
        if !touched.contains(&i) {
            assert!(a.get(i as i64).allclose(&plain, 1e-6, 1e-6, false), "image {i}");
        }
    }
    // Frequencies over many draws match the recipe's probabilities.
    let mut rng = Rng::new(11);
    let small = Tensor::zeros([256, 1, 8, 8], (Kind::Float, Device::Cpu)) + 128.0;
    let mut counts = [0usize; 6];
    for _ in 0..8 {
        let (_, ap) = augment::augment(&small, &cfg, &mut rng);
        for (c, v) in counts.iter_mut().zip([
            ap.blur_or_sharpen.len(),
            ap.brightness_contrast.len(),
            ap.noise.len(),
            ap.value_shift.len(),
            ap.affine.len(),
            ap.optical.len(),
        ]) {
            *c += v;
        }
    }
    let rates: Vec<f64> = counts.iter().map(|&c| c as f64 / 2048.0).collect();
    eprintln!("applied rates: {rates:?}");
    for (rate, p) in rates.iter().zip([0.2, 0.6, 0.2, 0.3, 0.2, 0.2]) {
        assert!((rate - p).abs() < 0.04, "rate {rate} vs p {p}");
    }
    // Values stay in the normalised 0..255 range.
    let lo = (0.0 / 255.0 - MEAN) / STD;
    let hi = (255.0 / 255.0 - MEAN) / STD;
    assert!(a.min().double_value(&[]) >= lo - 1e-4 && a.max().double_value(&[]) <= hi + 1e-4);
}

/// The native per-image kernels the CPU loader uses against the batched tensor ops (each
/// tested against OpenCV above), plan by plan, on a real radiograph at 512 px.
#[test]
fn host_path_matches_the_tensor_path() {
    use augment::{Filter, HostScratch, Noise, ViewPlan};
    let x = radiograph();
    let (h, w) = (x.size()[2] as usize, x.size()[3] as usize);
    let src: Vec<f32> = Vec::try_from(x.view([-1])).unwrap();

    // Resize, up and down, square and not: libtorch's upsample_bilinear2d.
    for (oh, ow) in [(512, 512), (300, 200), (97, 131)] {
        let mut ours = vec![0f32; oh * ow];
        augment::resize_bilinear(&src, h, w, &mut ours, oh, ow);
        let theirs = x.upsample_bilinear2d([oh as i64, ow as i64], false, None, None);
        let (max, _) = diffs(&Tensor::from_slice(&ours), &theirs);
        eprintln!("resize {h}x{w} -> {oh}x{ow} vs upsample_bilinear2d: max |diff| {max:.2e}");
        assert!(max < 1e-3, "resize to {oh}x{ow}: {max}");
    }

    let s = 512usize;
    let big = data::resize(&x, s as i64);
    let pixels: Vec<f32> = Vec::try_from(big.view([-1])).unwrap();
    let affine = augment::shift_scale_rotate_matrix(s as i64, s as i64, -8.0, 0.85, 0.05, -0.06);
    let single = [
        ("identity", ViewPlan::default()),
        ("median", ViewPlan { filter: Some(Filter::Median3), ..Default::default() }),
        (
            "motion 7",
            ViewPlan {
                filter: Some(Filter::Kernel { size: 7, taps: augment::motion_kernel(7, 63.0) }),
                ..Default::default()
            },
        ),
        (
            "sharpen",
            ViewPlan {
                filter: Some(Filter::Kernel { size: 3, taps: augment::sharpen_kernel(0.2, 0.5).to_vec() }),
                ..Default::default()
            },
        ),
        ("contrast", ViewPlan { brightness_contrast: Some((1.08, -20.0)), ..Default::default() }),
        ("gauss", ViewPlan { noise: Some(Noise::Gaussian { sigma: 15.0, seed: 42 }), ..Default::default() }),
        ("multiplicative", ViewPlan { noise: Some(Noise::Multiplicative(1.09)), ..Default::default() }),
        ("value shift", ViewPlan { value_shift: Some(-25.0), ..Default::default() }),
        ("affine", ViewPlan { affine: Some(affine), ..Default::default() }),
        ("optical", ViewPlan { optical: Some((-0.05, 20.0, -15.0)), ..Default::default() }),
        (
            "all",
            ViewPlan {
                filter: Some(Filter::Kernel { size: 3, taps: augment::sharpen_kernel(0.1, 0.9).to_vec() }),
                brightness_contrast: Some((0.85, 10.0)),
                noise: Some(Noise::Gaussian { sigma: 5.0, seed: 7 }),
                value_shift: Some(12.0),
                affine: Some(affine),
                optical: Some((0.05, -10.0, 5.0)),
            },
        ),
    ];
    let mut scratch = HostScratch::default();
    let mut portable = HostScratch::portable();
    let (mut out, mut out_portable) = (vec![0f32; s * s], vec![0f32; s * s]);
    for (name, plan) in &single {
        augment::augment_host(&pixels, s, s, plan, &mut scratch, &mut out);
        // The AVX2 and the baseline code do the same f32 operations in the same order.
        augment::augment_host(&pixels, s, s, plan, &mut portable, &mut out_portable);
        assert!(out == out_portable, "{name}: AVX2 and portable code differ");
        let theirs = augment::tensor::augment_planned(&big, std::slice::from_ref(plan));
        let (max, mean) = diffs(&Tensor::from_slice(&out), &theirs);
        eprintln!("host {name} vs tensor ops: max |diff| {max:.2e}, mean {mean:.2e} (normalised units)");
        // Normalised units: 1 grey level is 1 / (255 * 0.221) = 0.018. Pointwise steps and
        // filters agree to f32 rounding; warps to well under a grey level (source coordinates
        // in pixels here, through normalised grid coordinates there).
        let tol = if plan.affine.is_some() || plan.optical.is_some() { 2e-4 } else { 1e-5 };
        assert!(max < tol, "{name}: max {max}");
    }

    // Seeded random plans, as the loader draws them: a batch of 16 views.
    let batch = big.repeat([16, 1, 1, 1]);
    let plans = augment::draw_plans(16, s as i64, s as i64, &AugmentConfig::default(), &mut Rng::new(3));
    let theirs = augment::tensor::augment_planned(&batch, &plans);
    let mut ours = vec![0f32; 16 * s * s];
    for (plan, o) in plans.iter().zip(ours.chunks_exact_mut(s * s)) {
        augment::augment_host(&pixels, s, s, plan, &mut scratch, o);
    }
    let (max, mean) = diffs(&Tensor::from_slice(&ours), &theirs);
    eprintln!("host vs tensor, 16 random views: max |diff| {max:.2e}, mean {mean:.2e}");
    assert!(max < 2e-4 && mean < 1e-6, "random views: max {max}, mean {mean}");
}
