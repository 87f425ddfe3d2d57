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
    let flat: Vec<f32> = Vec::try_from(x.view([-1])).unwrap();
    chess::npy::write_f32(&input, &[h as usize, w as usize], &flat).unwrap();
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
