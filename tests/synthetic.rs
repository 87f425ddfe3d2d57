//! The synthetic proxy sets of issues 16 (bone suppression) and 17 (nodules): determinism,
//! where and how much is drawn, masks, and the files written.
//!
//! `CHESS_SYNTH_PREVIEW=1` also writes side-by-side previews of three real images to
//! `/tmp/bone-proxy/` and `/tmp/nodule-proxy/` (test `previews`).
use std::path::{Path, PathBuf};

use chess::data::decode_file;
use chess::data::synthetic::{
    BoneConfig, NoduleConfig, ThoraxBox, add_bones, add_nodules, image_seed, resize_bilinear,
    write_nodule_proxy, write_proxy_pairs,
};

fn data_dir() -> PathBuf {
    std::env::var_os("CHESS_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
}

/// Real radiographs: `n` NORMAL and PNEUMONIA training images, spread through the folders.
fn real_images(n: usize) -> Vec<PathBuf> {
    let root = data_dir().join("cxr-pneumonia-224/train");
    let mut out = Vec::new();
    for class in ["NORMAL", "PNEUMONIA"] {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(root.join(class)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let step = files.len() / n.max(1);
        out.extend(files.iter().step_by(step.max(1)).take(n.div_ceil(2)).cloned());
    }
    out.truncate(n);
    out
}

/// A real image resized to `size x size`.
fn real(path: &Path, size: usize) -> Vec<f32> {
    let img = decode_file(path).unwrap();
    resize_bilinear(&img.pixels, img.width as usize, img.height as usize, size, size)
}

/// A plain dark "lung" image with some structure, so headroom scaling is near 1.
fn flat(size: usize, value: f32) -> Vec<f32> {
    vec![value; size * size]
}

#[test]
fn bones_are_deterministic_by_seed() {
    let cfg = BoneConfig::default();
    let img = real(&real_images(1)[0], 256);
    let a = add_bones(&img, 256, 256, &cfg, 7);
    let b = add_bones(&img, 256, 256, &cfg, 7);
    let c = add_bones(&img, 256, 256, &cfg, 8);
    assert_eq!(a, b);
    assert_ne!(a.0, c.0);
    assert_ne!(a.1, c.1);
    assert_ne!(image_seed(1, "a"), image_seed(1, "b"));
    assert_eq!(image_seed(1, "a"), image_seed(1, "a"));
}

/// `input = target + bones`, bones >= 0: the input is never darker than the target, and the
/// layer returned is exactly what was added (clipping included).
#[test]
fn bones_only_add() {
    let cfg = BoneConfig::default();
    for (i, path) in real_images(4).iter().enumerate() {
        for size in [128, 256] {
            let img = real(path, size);
            let (input, bones) = add_bones(&img, size, size, &cfg, i as u64);
            for ((&t, &x), &b) in img.iter().zip(&input).zip(&bones) {
                assert!(b >= 0.0);
                assert!((0.0..=255.0).contains(&x));
                assert!(x >= t - 1e-4, "input {x} < target {t}");
                assert!((t + b - x).abs() < 1e-3, "target {t} + bones {b} != input {x}");
            }
        }
    }
    // Saturated pixels get nothing.
    let (input, bones) = add_bones(&flat(128, 255.0), 128, 128, &cfg, 3);
    assert!(input.iter().all(|&v| v == 255.0));
    assert!(bones.iter().all(|&v| v == 0.0));
}

/// Nothing outside the thorax box (outer margins, below the costophrenic level); the box
/// itself well covered.
#[test]
fn bones_stay_in_the_thorax() {
    let cfg = BoneConfig::default();
    let tb = ThoraxBox::default();
    for size in [128, 256, 512] {
        for seed in 0..6 {
            let (_, bones) = add_bones(&flat(size, 40.0), size, size, &cfg, seed);
            let mut inside_drawn = 0;
            let mut inside = 0;
            for y in 0..size {
                for x in 0..size {
                    let b = bones[y * size + x];
                    let (cx, cy) = (x as f64 + 0.5, y as f64 + 0.5);
                    if tb.contains(cx, cy, size, size) {
                        inside += 1;
                        inside_drawn += usize::from(b > 2.0);
                    } else {
                        assert_eq!(b, 0.0, "bone at ({x}, {y}) of {size}, seed {seed}, outside the thorax");
                    }
                }
            }
            // Everything below 82 % of the height is outside: the abdomen is clear.
            assert!(bones[(size * 85 / 100) * size..].iter().all(|&b| b == 0.0));
            let coverage = inside_drawn as f64 / inside as f64;
            println!("size {size} seed {seed}: {:.1} % of the thorax box has bone > 2", 100.0 * coverage);
            assert!(
                (0.15..0.6).contains(&coverage),
                "size {size} seed {seed}: {coverage:.3} of the thorax has bone"
            );
        }
    }
}

/// Over dark lung the ribs add their configured contrast: the mean over bone pixels within
/// the configured range (less blur, tapering and the marrow's dip), the peak (99th percentile)
/// above its low end and at most twice its high end (where ribs cross, their shadows add);
/// and the layer scales linearly with the contrast asked for.
#[test]
fn bone_contrast_is_in_the_configured_range() {
    let cfg = BoneConfig::default();
    let (lo, hi) = cfg.contrast;
    for size in [128, 256, 512] {
        for seed in 0..8 {
            let (_, bones) = add_bones(&flat(size, 40.0), size, size, &cfg, seed);
            let mut on: Vec<f32> = bones.iter().copied().filter(|&b| b > 1.0).collect();
            on.sort_by(f32::total_cmp);
            let p99 = f64::from(on[on.len() * 99 / 100]);
            let mean = on.iter().map(|&b| f64::from(b)).sum::<f64>() / on.len() as f64;
            println!("size {size} seed {seed}: bone pixels {}, mean {mean:.1}, p99 {p99:.1}", on.len());
            assert!(p99 > 0.6 * lo && p99 < 2.0 * hi, "p99 {p99}");
            assert!(mean > 0.3 * lo && mean < hi, "mean {mean}");
        }
    }
    let fixed = |c: f64| BoneConfig { contrast: (c, c), ..BoneConfig::default() };
    let (_, ten) = add_bones(&flat(256, 40.0), 256, 256, &fixed(10.0), 4);
    let (_, twenty) = add_bones(&flat(256, 40.0), 256, 256, &fixed(20.0), 4);
    for (a, b) in ten.iter().zip(&twenty) {
        assert!((2.0 * a - b).abs() < 1e-3, "{a} x 2 != {b}");
    }
    // On real films the mean added grey level over the whole image is a few levels.
    for (i, path) in real_images(6).iter().enumerate() {
        let img = real(path, 256);
        let (_, bones) = add_bones(&img, 256, 256, &cfg, i as u64);
        let mean = bones.iter().map(|&b| f64::from(b)).sum::<f64>() / bones.len() as f64;
        println!("{}: mean added {mean:.2}", path.display());
        assert!((1.0..10.0).contains(&mean), "mean added {mean}");
    }
}

/// The config switches: no clavicles and no anterior ribs draw less.
#[test]
fn bone_switches_draw_less() {
    let full = BoneConfig::default();
    let bare = BoneConfig { clavicles: false, anterior_ribs: false, ..BoneConfig::default() };
    let sum = |cfg: &BoneConfig| add_bones(&flat(256, 40.0), 256, 256, cfg, 5).1.iter().sum::<f32>();
    assert!(sum(&bare) < 0.9 * sum(&full));
}

#[test]
fn nodules_are_deterministic_by_seed() {
    let cfg = NoduleConfig::default();
    let img = real(&real_images(1)[0], 256);
    let a = add_nodules(&img, 256, 256, 1.2, &cfg, 11);
    let b = add_nodules(&img, 256, 256, 1.2, &cfg, 11);
    let c = add_nodules(&img, 256, 256, 1.2, &cfg, 12);
    assert_eq!(a, b);
    assert_ne!(a.2, c.2);
}

/// Masks are the nodules' outlines (area pi/4 d^2 within 15 %), the opacity is drawn there
/// and nowhere far from them, and every nodule lies inside a lung ellipse.
#[test]
fn nodule_masks_match_the_opacities() {
    let cfg = NoduleConfig::default();
    let (mut seen, mut worst) = (0, 0.0f64);
    for (size, spacing) in [(256, 1.0), (512, 0.6), (384, 0.5)] {
        for seed in 0..25u64 {
            let img = flat(size, 50.0);
            let (out, mask, specs) = add_nodules(&img, size, size, spacing, &cfg, seed);
            assert!((1..=3).contains(&specs.len()), "{} nodules", specs.len());
            assert!(mask.iter().all(|&m| m == 0.0 || m == 1.0));
            let total_mask = mask.iter().filter(|&&m| m == 1.0).count();
            let mut total_expected = 0.0;
            for s in &specs {
                seen += 1;
                assert!((5.0..=30.0).contains(&s.diameter_mm));
                let d_px = s.diameter_mm / spacing;
                let expected = std::f64::consts::FRAC_PI_4 * d_px * d_px;
                total_expected += expected;
                // Mask pixels around this nodule (nodules are kept apart).
                let r = s.semi_axes_px.0 + 1.0;
                let mut area = 0usize;
                for y in (s.y - r).floor() as usize..=((s.y + r).ceil() as usize).min(size - 1) {
                    for x in (s.x - r).floor() as usize..=((s.x + r).ceil() as usize).min(size - 1) {
                        area += usize::from(mask[y * size + x] == 1.0);
                    }
                }
                let err = (area as f64 - expected).abs() / expected;
                worst = worst.max(err);
                assert!(
                    err < 0.15,
                    "d {:.1} mm = {d_px:.1} px: mask {area} px vs {expected:.0}",
                    s.diameter_mm
                );
                // Brighter at the centre, and the centre is in the mask.
                let c = (s.y as usize) * size + s.x as usize;
                assert_eq!(mask[c], 1.0);
                assert!(out[c] - img[c] > 0.5 * s.contrast as f32 * 0.8, "centre adds {}", out[c] - img[c]);
                // Wholly inside its lung ellipse.
                let lung = cfg.lungs[s.lung];
                for k in 0..64 {
                    let th = std::f64::consts::TAU * k as f64 / 64.0;
                    let (u, v) = (s.semi_axes_px.0 * th.cos(), s.semi_axes_px.1 * th.sin());
                    let (x, y) = (
                        s.x + s.angle.cos() * u - s.angle.sin() * v,
                        s.y + s.angle.sin() * u + s.angle.cos() * v,
                    );
                    assert!(
                        lung.level(x, y, size, size) < 1.0 + 1e-9,
                        "nodule outline outside lung {}",
                        s.lung
                    );
                }
            }
            assert!((total_mask as f64 - total_expected).abs() / total_expected < 0.15);
            // Nothing added beyond the edge blur: outside 3 times every nodule's outline (the
            // blur reaches at most 5 px here, less than twice the smallest semi-axis).
            for y in 0..size {
                for x in 0..size {
                    let far = specs.iter().all(|s| s.level(x as f64 + 0.5, y as f64 + 0.5) > 9.0);
                    if far {
                        assert_eq!(
                            out[y * size + x],
                            img[y * size + x],
                            "added at ({x}, {y}) away from nodules"
                        );
                    }
                }
            }
        }
    }
    println!("{seen} nodules, worst mask area error {:.1} %", 100.0 * worst);
    assert!(seen > 100);
}

fn png(path: &Path) -> image::GrayImage {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_luma8()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A folder of 5 real images and one corrupt file.
fn five_and_a_bad_one(dir: &Path) -> Vec<String> {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut stems = Vec::new();
    for path in real_images(5) {
        std::fs::copy(&path, src.join(path.file_name().unwrap())).unwrap();
        stems.push(path.file_stem().unwrap().to_string_lossy().into_owned());
    }
    std::fs::write(src.join("corrupt.png"), b"\x89PNG\r\n\x1a\nthis is not a png at all").unwrap();
    stems.sort();
    stems
}

#[test]
fn write_proxy_pairs_writes_matching_pairs_and_skips_bad_files() {
    let tmp = tempfile::tempdir().unwrap();
    let stems = five_and_a_bad_one(tmp.path());
    let out = tmp.path().join("out");
    let report = write_proxy_pairs(&[tmp.path().join("src")], &out, 128, &BoneConfig::default(), 42).unwrap();
    assert_eq!(report.written.len(), 5);
    assert_eq!(report.skipped_count(), 1);
    assert!(report.skipped[0].0.ends_with("corrupt.png"));
    let expected: Vec<String> = stems.iter().map(|s| format!("{s}.png")).collect();
    assert_eq!(names(&out.join("input")), expected);
    assert_eq!(names(&out.join("target")), expected);
    for name in &expected {
        let (x, t) = (png(&out.join("input").join(name)), png(&out.join("target").join(name)));
        assert_eq!(x.dimensions(), (128, 128));
        assert_eq!(t.dimensions(), (128, 128));
        assert!(x.as_raw().iter().zip(t.as_raw()).all(|(a, b)| a >= b));
        assert!(x.as_raw() != t.as_raw());
    }
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(readme.contains("synthetic proxy"));
    assert!(readme.contains("seed 42"));
    assert!(readme.contains("1 skipped"));
    assert!(readme.contains("dual-energy"));
    // The same seed writes the same files.
    let again = tmp.path().join("again");
    write_proxy_pairs(&[tmp.path().join("src")], &again, 128, &BoneConfig::default(), 42).unwrap();
    for name in &expected {
        assert_eq!(png(&out.join("input").join(name)), png(&again.join("input").join(name)));
    }
}

#[test]
fn write_nodule_proxy_writes_images_masks_and_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let stems = five_and_a_bad_one(tmp.path());
    let out = tmp.path().join("out");
    let report =
        write_nodule_proxy(&[tmp.path().join("src")], &out, 160, 1.5, &NoduleConfig::default(), 9).unwrap();
    assert_eq!(report.written.len(), 5);
    assert_eq!(report.skipped_count(), 1);
    let expected: Vec<String> = stems.iter().map(|s| format!("{s}.png")).collect();
    assert_eq!(names(&out.join("images")), expected);
    assert_eq!(names(&out.join("masks")), expected);
    let csv = std::fs::read_to_string(out.join("nodules.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("image,x,y,diameter_mm,pixel_spacing"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), report.nodules);
    assert!(rows.len() >= 5);
    for row in &rows {
        let name = row[0].strip_prefix("images/").expect("image paths relative to the CSV");
        assert!(expected.contains(&name.to_string()));
        let (x, y): (f64, f64) = (row[1].parse().unwrap(), row[2].parse().unwrap());
        let mask = png(&out.join("masks").join(name));
        assert_eq!(mask.get_pixel(x as u32, y as u32).0[0], 255, "centre of a nodule not in its mask");
        assert_eq!(row[4], "1.5");
    }
    for name in &expected {
        assert!(png(&out.join("masks").join(name)).as_raw().iter().all(|&v| v == 0 || v == 255));
    }
    assert!(std::fs::read_to_string(out.join("README.md")).unwrap().contains("synthetic proxy"));
}

/// Side-by-side previews for looking at (`CHESS_SYNTH_PREVIEW=1`): bones as target | input |
/// bone layer x4, nodules as clean | with nodules | mask outline on the image.
#[test]
fn previews() {
    if std::env::var_os("CHESS_SYNTH_PREVIEW").is_none() {
        return;
    }
    let size = 256;
    let root = data_dir().join("cxr-pneumonia-224/train");
    let picks = [
        root.join("NORMAL/IM-0115-0001.jpeg"),
        root.join("NORMAL/NORMAL2-IM-0838-0001.jpeg"),
        root.join("PNEUMONIA/person1000_bacteria_2931.jpeg"),
    ];
    let bone_dir = Path::new("/tmp/bone-proxy");
    let nod_dir = Path::new("/tmp/nodule-proxy");
    std::fs::create_dir_all(bone_dir).unwrap();
    std::fs::create_dir_all(nod_dir).unwrap();
    let strip = |panels: &[&[f32]], path: &Path| {
        let mut out = image::GrayImage::new((size * panels.len()) as u32, size as u32);
        for (k, p) in panels.iter().enumerate() {
            for y in 0..size {
                for x in 0..size {
                    let v = p[y * size + x].round().clamp(0.0, 255.0) as u8;
                    out.put_pixel((k * size + x) as u32, y as u32, image::Luma([v]));
                }
            }
        }
        out.save(path).unwrap();
    };
    let zoom = |panels: &[&[f32]], cx: usize, cy: usize, path: &Path| {
        let (half, k) = (48usize, 3usize);
        let side = 2 * half * k;
        let mut out =
            image::GrayImage::new((side * panels.len() + 4 * (panels.len() - 1)) as u32, side as u32);
        for (p, panel) in panels.iter().enumerate() {
            for y in 0..side {
                for x in 0..side {
                    let (sx, sy) = (cx - half + x / k, cy - half + y / k);
                    let v = panel[sy * size + sx].round().clamp(0.0, 255.0) as u8;
                    out.put_pixel((p * (side + 4) + x) as u32, y as u32, image::Luma([v]));
                }
            }
        }
        out.save(path).unwrap();
    };
    for (i, path) in picks.iter().enumerate() {
        let img = real(path, size);
        let (input, bones) = add_bones(&img, size, size, &BoneConfig::default(), 100 + i as u64);
        let shown: Vec<f32> = bones.iter().map(|b| b * 4.0).collect();
        strip(&[&img, &input, &shown], &bone_dir.join(format!("preview{i}.png")));
        let (with, mask, specs) =
            add_nodules(&img, size, size, 1.2, &NoduleConfig::default(), 200 + i as u64);
        let outline: Vec<f32> = (0..size * size)
            .map(|k| {
                let (x, y) = (k % size, k / size);
                let edge = mask[k] == 1.0
                    && [(0i64, 1i64), (1, 0), (0, -1), (-1, 0)].iter().any(|(dx, dy)| {
                        let (xx, yy) = (x as i64 + dx, y as i64 + dy);
                        xx < 0
                            || yy < 0
                            || xx >= size as i64
                            || yy >= size as i64
                            || mask[yy as usize * size + xx as usize] == 0.0
                    });
                if edge { 255.0 } else { with[k] }
            })
            .collect();
        strip(&[&img, &with, &outline], &nod_dir.join(format!("preview{i}.png")));
        // 3x zooms (nearest) of 96 x 96 crops: clean | with, around the largest nodule and
        // around the upper right lung for the bones.
        let s0 = specs.iter().max_by(|a, b| a.diameter_mm.total_cmp(&b.diameter_mm)).unwrap();
        zoom(
            &[&img, &with],
            (s0.x as usize).clamp(48, size - 48),
            (s0.y as usize).clamp(48, size - 48),
            &nod_dir.join(format!("zoom{i}.png")),
        );
        zoom(&[&img, &input], size * 3 / 10, size * 4 / 10, &bone_dir.join(format!("zoom{i}.png")));
        println!("{}: nodules {specs:?}", path.display());
    }
    // The same drawing at 128 and 512 px.
    for other in [128usize, 512] {
        let img = real(&picks[0], other);
        let (input, bones) = add_bones(&img, other, other, &BoneConfig::default(), 100);
        let mut out = image::GrayImage::new(3 * other as u32, other as u32);
        for (k, p) in [&img, &input, &bones.iter().map(|b| b * 4.0).collect::<Vec<f32>>()].iter().enumerate()
        {
            for y in 0..other {
                for x in 0..other {
                    let v = p[y * other + x].round().clamp(0.0, 255.0) as u8;
                    out.put_pixel((k * other + x) as u32, y as u32, image::Luma([v]));
                }
            }
        }
        out.save(bone_dir.join(format!("preview0_{other}px.png"))).unwrap();
    }
    let sources: Vec<PathBuf> = picks.to_vec();
    let r = write_proxy_pairs(&sources, &bone_dir.join("set"), size, &BoneConfig::default(), 1).unwrap();
    println!("bone set: {:?}", r.written);
    let r =
        write_nodule_proxy(&sources, &nod_dir.join("set"), size, 1.2, &NoduleConfig::default(), 1).unwrap();
    println!("nodule set: {:?}, {} nodules", r.written, r.nodules);
}
