//! Targets in the data layer: CheXpert-style label CSVs and their policies, class folders,
//! paired images and masks, masks drawn from nodule coordinates, the loader carrying them in
//! batch order, and joint geometric augmentation.
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chess::data::augment::{Interp, warp_host, warp_planned};
use chess::data::{
    AugmentConfig, Circle, CircleMask, Dataset, DatasetError, HostScratch, LabelCsv, LabelPolicy, LabelSet,
    LabelValue, Loader, LoaderConfig, PolicyError, Projection, Rng, Target, TargetKind, ViewFilter,
    draw_plans, pair_folders,
};
use tch::Tensor;

use LabelValue::{Blank as B, Negative as N, Positive as P, Uncertain as U};

/// The first `n` radiographs of the NORMAL test split (224 x 224 JPEGs), sorted.
fn jpegs(n: usize) -> Vec<PathBuf> {
    let dir = common::data_dir().join("cxr-pneumonia-224/test/NORMAL");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.truncate(n);
    assert_eq!(files.len(), n, "{} holds fewer than {n} images", dir.display());
    files
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("{} -> {}: {e}", from.display(), to.display()));
}

const HEADER: &str = "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,\
Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,\
Fracture,Support Devices";

/// A CheXpert-v1.0-small layout in `root`: real JPEGs under `train/patientNNNNN/studyM/`, and a
/// `train.csv` in CheXpert's dialect (paths from the folder above the CSV, `1.0` / `0.0` /
/// `-1.0` / blank, laterals with a blank AP/PA). Returns the CSV.
fn chexpert(root: &Path) -> PathBuf {
    let base = root.join("CheXpert-v1.0-small");
    let rows = [
        // Path, sex, age, view, AP/PA, then the 14 labels.
        ("patient00001/study1/view1_frontal.jpg", "Female,68,Frontal,AP", "1.0,,,,,-1.0,,,0.0,,1.0,,,"),
        ("patient00001/study1/view2_lateral.jpg", "Female,68,Lateral,", ",,-1.0,1.0,,,,,-1.0,0.0,,,,1.0"),
        ("patient00002/study1/view1_frontal.jpg", "Male,87,Frontal,PA", ",,1.0,0.0,,-1.0,1.0,,,,,,,"),
        ("patient00003/study2/view1_frontal.jpg", "Male,41,Frontal,AP", "0.0,,0.0,,,,,-1.0,1.0,,-1.0,,,0.0"),
    ];
    let mut text = format!("{HEADER}\n");
    for ((rel, meta, labels), jpeg) in rows.iter().zip(jpegs(rows.len())) {
        copy(&jpeg, &base.join("train").join(rel));
        text.push_str(&format!("CheXpert-v1.0-small/train/{rel},{meta},{labels}\n"));
    }
    let csv = base.join("train.csv");
    std::fs::write(&csv, text).unwrap();
    csv
}

fn labels(s: &chess::data::Sample) -> &[LabelValue] {
    match &s.target {
        Some(Target::Labels(v)) => v,
        other => panic!("{}: {other:?}", s.path.display()),
    }
}

#[test]
fn chexpert_csv_keeps_uncertain_and_blank_apart() {
    let dir = tempfile::tempdir().unwrap();
    let csv = chexpert(dir.path());
    let ds = Dataset::from_label_csv(&csv, &LabelCsv::default()).unwrap();
    assert_eq!(ds.len(), 4);
    let first = dir.path().join("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg");
    assert_eq!(ds.samples[0].path, first, "paths resolve from the folder above the CSV");
    assert_eq!(ds.target_kind(), Some(TargetKind::Labels(14)));
    assert_eq!(labels(&ds.samples[0]), [P, B, B, B, B, U, B, B, N, B, P, B, B, B]);
    assert_eq!(labels(&ds.samples[1]), [B, B, U, P, B, B, B, B, U, N, B, B, B, P]);
    assert_eq!(ds.samples[1].view.projection, Some(Projection::Lateral));
    assert_eq!(ds.samples[1].view.ap_pa, None, "a lateral's blank AP/PA");
    assert_eq!(ds.samples[2].view.ap_pa.as_deref(), Some("PA"));
    let patients: Vec<_> = ds.samples.iter().map(|s| s.patient.as_deref().unwrap()).collect();
    assert_eq!(patients, ["patient00001", "patient00001", "patient00002", "patient00003"]);
    assert_eq!(ds.patients(), ["patient00001", "patient00002", "patient00003"]);

    // The competition's five, in their order (Atelectasis, Cardiomegaly, Consolidation, Edema,
    // Pleural Effusion), read from the same file.
    let five = LabelCsv { labels: "chexpert5".parse().unwrap(), ..LabelCsv::default() };
    let ds5 = Dataset::from_label_csv(&csv, &five).unwrap();
    assert_eq!(labels(&ds5.samples[0]), [N, B, B, U, P]);
    assert_eq!(labels(&ds5.samples[3]), [P, N, B, B, U]);

    // Views.
    let count = |views: ViewFilter| {
        Dataset::from_label_csv(&csv, &LabelCsv { views, ..LabelCsv::default() }).unwrap().len()
    };
    assert_eq!(
        [ViewFilter::All, ViewFilter::Frontal, ViewFilter::Pa, ViewFilter::Ap].map(count),
        [4, 3, 1, 2]
    );
    assert_eq!("frontal".parse::<ViewFilter>().unwrap(), ViewFilter::Frontal);
    assert!("oblique".parse::<ViewFilter>().is_err());
    assert_eq!(ds.clone().filter_views(ViewFilter::Pa).samples[0].path, ds.samples[2].path);
}

#[test]
fn policies_map_cells_to_targets_and_masks() {
    let values = [P, N, U, B, U];
    let names: Vec<String> = ["A", "B", "Edema", "D", "Atelectasis"].map(String::from).to_vec();
    let check = |uncertain: &str, blank: &str, targets: [f32; 5], mask: [f32; 5]| {
        let policy = LabelPolicy {
            uncertain: uncertain.parse().unwrap(),
            blank: blank.parse().unwrap(),
            ..Default::default()
        };
        let (t, m) = policy.for_labels(&names).unwrap().apply(&values);
        assert_eq!(
            (t.as_slice(), m.as_slice()),
            (&targets[..], &mask[..]),
            "--uncertain {uncertain} --blank {blank}"
        );
    };
    check("ones", "zeros", [1., 0., 1., 0., 1.], [1., 1., 1., 1., 1.]);
    check("zeros", "zeros", [1., 0., 0., 0., 0.], [1., 1., 1., 1., 1.]);
    check("ignore", "zeros", [1., 0., 0., 0., 0.], [1., 1., 0., 1., 0.]);
    check("ones", "ignore", [1., 0., 1., 0., 1.], [1., 1., 1., 0., 1.]);
    check("ignore", "ignore", [1., 0., 0., 0., 0.], [1., 1., 0., 0., 0.]);
    // CheSS is U-Ones with blank as 0.
    assert_eq!(
        LabelPolicy::default(),
        LabelPolicy { uncertain: "ones".parse().unwrap(), ..Default::default() }
    );

    // LibAUC's: ones for Edema and Atelectasis, zeros for the others.
    let libauc = LabelPolicy { uncertain: "zeros".parse().unwrap(), ..Default::default() }
        .with_overrides("Edema=ones, atelectasis=ones")
        .unwrap();
    let (t, m) = libauc.for_labels(&names).unwrap().apply(&[U, U, U, U, U]);
    assert_eq!((t, m), (vec![0., 0., 1., 0., 1.], vec![1.; 5]));
    let ignore_edema = LabelPolicy::default().with_overrides("Edema=ignore").unwrap();
    assert_eq!(ignore_edema.for_labels(&names).unwrap().apply(&[U, U, U, B, B]).1, [1., 1., 0., 1., 1.]);

    let typo = LabelPolicy::default().with_overrides("Edemma=ones").unwrap().for_labels(&names).unwrap_err();
    assert!(matches!(&typo, PolicyError::NoSuchLabel { label, .. } if label == "Edemma"), "{typo}");
    assert!(LabelPolicy::default().with_overrides("Edema").is_err());
    assert!(LabelPolicy::default().with_overrides("Edema=maybe").is_err());
    assert!(
        "sometimes".parse::<chess::data::UncertainPolicy>().unwrap_err().to_string().contains("sometimes")
    );
    assert!("ones".parse::<chess::data::BlankPolicy>().is_err(), "blank cells are zeros or ignored");
}

#[test]
fn label_csv_errors_name_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let image = &jpegs(1)[0];
    let csv = dir.path().join("labels.csv");
    let text =
        format!("image,patient_id,Edema,Cardiomegaly\n{0},p1,1,0\n{0},p2,-1,\n{0},p3,2,1\n", image.display());
    std::fs::write(&csv, text).unwrap();
    let spec = LabelCsv {
        labels: "Cardiomegaly, Edema".parse().unwrap(),
        path_column: "image".into(),
        patient_column: Some("patient_id".into()),
        ..LabelCsv::default()
    };
    let err = Dataset::from_label_csv(&csv, &spec).unwrap_err();
    assert!(matches!(err, DatasetError::Csv { line: 4, .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("{}: line 4: column `Edema`: `2` is not 1, 0, -1 or blank", csv.display())
    );

    std::fs::write(
        &csv,
        format!("image,patient_id,Edema,Cardiomegaly\n{0},p1,1,0\n{0},p2,-1,\n", image.display()),
    )
    .unwrap();
    let ds = Dataset::from_label_csv(&csv, &spec).unwrap();
    assert_eq!(labels(&ds.samples[0]), [N, P]);
    assert_eq!(labels(&ds.samples[1]), [B, U]);
    assert_eq!(ds.patients(), ["p1", "p2"], "the patient from its column");

    let missing = LabelCsv { labels: LabelSet::CheXpert5, ..spec.clone() };
    let err = Dataset::from_label_csv(&csv, &missing).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}: line 1: no column `Atelectasis`", csv.display())), "{err}");
    let views = LabelCsv { views: ViewFilter::Frontal, ..spec };
    let err = Dataset::from_label_csv(&csv, &views).unwrap_err().to_string();
    assert!(err.contains("no column `Frontal/Lateral`"), "{err}");
}

#[test]
fn class_folders_give_class_indices() {
    let test = common::data_dir().join("cxr-pneumonia-224/test");
    let ds = Dataset::from_class_folders(&test).unwrap();
    let classes = ds.classes();
    assert_eq!(classes, ["NORMAL", "PNEUMONIA"]);
    assert_eq!(ds.target_kind(), Some(TargetKind::Class));
    for s in &ds.samples {
        let label = s.label.as_deref().unwrap();
        let index = classes.iter().position(|c| c == label).unwrap();
        assert_eq!(s.target, Some(Target::Class(index)), "{}", s.path.display());
    }
}

#[test]
fn class_csv_gives_class_indices_of_sorted_names() {
    let dir = tempfile::tempdir().unwrap();
    let files = jpegs(3);
    let csv = dir.path().join("classes.csv");
    let rows: String = files
        .iter()
        .zip(["pneumonia", "normal", "pneumonia"])
        .map(|(f, c)| format!("{},{c}\n", f.display()))
        .collect();
    std::fs::write(&csv, format!("Path,finding\n{rows}")).unwrap();
    let ds = Dataset::from_class_csv(&csv, "Path", "finding").unwrap();
    assert_eq!(ds.classes(), ["normal", "pneumonia"]);
    let targets: Vec<_> = ds.samples.iter().map(|s| s.target.clone().unwrap()).collect();
    assert_eq!(targets, [Target::Class(1), Target::Class(0), Target::Class(1)]);
    std::fs::write(&csv, format!("Path,finding\n{},\n", files[0].display())).unwrap();
    let err = Dataset::from_class_csv(&csv, "Path", "finding").unwrap_err().to_string();
    assert_eq!(err, format!("{}: line 2: no class in column `finding`", csv.display()));
}

#[test]
fn pairs_match_by_stem_or_csv_and_report_the_unmatched() {
    let dir = tempfile::tempdir().unwrap();
    let (inputs, targets) = (dir.path().join("radiographs"), dir.path().join("soft_tissue"));
    let files = jpegs(4);
    for (name, src) in ["a", "b", "c"].iter().zip(&files) {
        copy(src, &inputs.join(format!("{name}.jpeg")));
    }
    copy(&files[0], &targets.join("a.jpg"));
    copy(&files[1], &targets.join("sub/b.png"));
    copy(&files[3], &targets.join("d.jpg"));

    let pairing = pair_folders(&inputs, &targets).unwrap();
    assert_eq!(
        pairing.pairs,
        [(inputs.join("a.jpeg"), targets.join("a.jpg")), (inputs.join("b.jpeg"), targets.join("sub/b.png"))]
    );
    assert_eq!(pairing.unmatched_inputs, [inputs.join("c.jpeg")]);
    assert_eq!(pairing.unmatched_targets, [targets.join("d.jpg")]);
    let err = Dataset::from_paired_folders(&inputs, &targets, TargetKind::Image).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DatasetError::Unmatched { .. }), "{err:?}");
    assert!(msg.contains("1 input(s) without a target") && msg.contains("c.jpeg"), "{msg}");
    assert!(msg.contains("1 target(s) without an input") && msg.contains("d.jpg"), "{msg}");

    std::fs::remove_file(inputs.join("c.jpeg")).unwrap();
    std::fs::remove_file(targets.join("d.jpg")).unwrap();
    let ds = Dataset::from_paired_folders(&inputs, &targets, TargetKind::Mask).unwrap();
    assert_eq!(ds.samples[1].target, Some(Target::Mask(targets.join("sub/b.png"))));
    let ds = Dataset::from_paired_folders(&inputs, &targets, TargetKind::Image).unwrap();
    assert_eq!(ds.samples[0].target, Some(Target::Image(targets.join("a.jpg"))));
    assert_eq!(ds.target_files().samples[1].path, targets.join("sub/b.png"));

    // Two files of one stem cannot be told apart.
    copy(&files[0], &targets.join("a.png"));
    let err = pair_folders(&inputs, &targets).unwrap_err().to_string();
    assert!(err.contains("two files of stem `a`"), "{err}");

    // A CSV of pairs, paths relative to it; a missing file names its line.
    let csv = dir.path().join("pairs.csv");
    std::fs::write(
        &csv,
        "input,target\nradiographs/a.jpeg,soft_tissue/a.jpg\nradiographs/b.jpeg,soft_tissue/sub/b.png\n",
    )
    .unwrap();
    let ds = Dataset::from_pair_csv(&csv, TargetKind::Image).unwrap();
    assert_eq!(ds.samples[1].path, inputs.join("b.jpeg"));
    assert_eq!(ds.samples[1].target, Some(Target::Image(targets.join("sub/b.png"))));
    std::fs::write(
        &csv,
        "input,target\nradiographs/a.jpeg,soft_tissue/a.jpg\nradiographs/b.jpeg,soft_tissue/b.png\n",
    )
    .unwrap();
    let err = Dataset::from_pair_csv(&csv, TargetKind::Image).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}: line 3: ", csv.display())) && err.contains("b.png does not exist"),
        "{err}"
    );
    let err = Dataset::from_pair_csv(&csv, TargetKind::Mask).unwrap_err().to_string();
    assert!(err.contains("no column `image`"), "masks are listed as image,mask: {err}");
}

/// Discs of radius r pixels cover pi r^2 pixels to within 1 % (lattice points in a disc of
/// radius >= 20 differ from its area by far less: the error grows like r^(2/3)).
fn assert_disc_area(count: usize, r: f64, what: &str) {
    let area = std::f64::consts::PI * r * r;
    let rel = (count as f64 - area).abs() / area;
    assert!(
        rel < 0.01,
        "{what}: {count} pixels for a disc of radius {r} (area {area:.1}): {:.2} % off",
        rel * 100.0
    );
}

fn ones(v: &[f32]) -> usize {
    v.iter().filter(|&&x| x == 1.0).count()
}

#[test]
fn masks_drawn_from_coordinates_have_the_disc_area() {
    // 20 mm at 0.25 mm per pixel: radius 40 pixels.
    let mask = CircleMask {
        width: 600,
        height: 500,
        circles: vec![Circle { x: 200.0, y: 300.0, diameter_mm: 20.0, spacing: (0.25, 0.25) }],
    };
    let full = mask.draw();
    assert_eq!(full.len(), 600 * 500);
    assert!(full.iter().all(|&v| v == 0.0 || v == 1.0));
    assert_disc_area(ones(&full), 40.0, "full resolution");
    assert_eq!(full[300 * 600 + 200], 1.0, "centred on x = column 200, y = row 300");
    assert_eq!(full[300 * 600 + 241], 0.0);
    // Drawn at another size: the full-resolution mask resized by nearest neighbour, exactly.
    let mut small = vec![0f32; 250 * 300];
    mask.draw_resized(250, 300, &mut small);
    let mut resized = vec![0f32; 250 * 300];
    chess::data::targets::resize_nearest(&full, 500, 600, &mut resized, 250, 300);
    assert_eq!(small, resized);

    let dir = tempfile::tempdir().unwrap();
    let dicom = common::data_dir().join("dicom");
    let jpeg = &jpegs(1)[0];
    let csv = dir.path().join("nodules.csv");
    // The 16-bit DX (1420 x 1416, ImagerPixelSpacing 0.4 only): 30 mm = radius 37.5 pixels; the
    // 12-bit one (PixelSpacing 0.16): 12 mm = 37.5 pixels, two nodules far apart; the JPEG with
    // its spacing in the CSV: 10 mm at 0.25 mm = 20 pixels; and a radiograph without nodule.
    let text = format!(
        "image,x,y,diameter_mm,pixel_spacing\n\
         {d}/dx_chest_mono2_16bit_j2kr.dcm,700,600,30,\n\
         {d}/dx_chest_mono1_12bit_j2kr.dcm,500,500,12,\n\
         {j},100,110,10,0.25\n\
         {d}/dx_chest_mono1_12bit_j2kr.dcm,1500,1500,12,\n\
         {d}/nih_dx_implicit_vr.dcm,,,,\n",
        d = dicom.display(),
        j = jpeg.display()
    );
    std::fs::write(&csv, text).unwrap();
    let ds = Dataset::from_circle_csv(&csv).unwrap();
    assert_eq!(ds.len(), 4, "rows of one image merge");
    assert_eq!(ds.target_kind(), Some(TargetKind::Mask));
    let circles = |i: usize| match &ds.samples[i].target {
        Some(Target::Circles(m)) => m.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!((circles(0).width, circles(0).height), (1420, 1416));
    assert_eq!(circles(0).circles[0].spacing, (0.4, 0.4), "from ImagerPixelSpacing");
    assert_disc_area(ones(&circles(0).draw()), 37.5, "DICOM, ImagerPixelSpacing");
    assert_eq!(circles(1).circles.len(), 2);
    assert_disc_area(ones(&circles(1).draw()), 37.5 * 2f64.sqrt(), "two DICOM nodules (twice one's area)");
    assert_eq!((circles(2).width, circles(2).height), (224, 224));
    assert_disc_area(ones(&circles(2).draw()), 20.0, "JPEG with the CSV's spacing");
    assert!(circles(3).circles.is_empty() && ones(&circles(3).draw()) == 0, "no nodule, empty mask");

    // Without a spacing: a DICOM file whose PixelSpacing is 0 and has no ImagerPixelSpacing, and
    // a JPEG; each error names the CSV's line and the file.
    for (i, image) in [dicom.join("RG1_UNCR.dcm"), jpeg.clone()].iter().enumerate() {
        std::fs::write(&csv, format!("image,x,y,diameter_mm\n{},10,10,5\n", image.display())).unwrap();
        let err = Dataset::from_circle_csv(&csv).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}: line 2: {}", csv.display(), image.display())), "{i}: {err}");
        assert!(err.contains("no pixel_spacing"), "{err}");
    }
    std::fs::write(&csv, format!("image,x,y,diameter_mm,pixel_spacing\n{},10,ten,5,0.2\n", jpeg.display()))
        .unwrap();
    let err = Dataset::from_circle_csv(&csv).unwrap_err().to_string();
    assert!(err.ends_with("line 2: column `y`: `ten` is not a number"), "{err}");
}

fn small(batch: usize, workers: usize) -> LoaderConfig {
    LoaderConfig {
        image_size: 64,
        batch_size: batch,
        workers,
        prefetch: 2,
        seed: 5,
        shuffle: true,
        drop_last: false,
    }
}

fn floats(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.contiguous().view([-1])).unwrap()
}

#[test]
fn loader_batches_carry_each_samples_target_in_order() {
    // Labels: 12 rows (the 4 CheXpert ones three times), shuffled into batches of 5.
    let dir = tempfile::tempdir().unwrap();
    let csv = chexpert(dir.path());
    let text = std::fs::read_to_string(&csv).unwrap();
    let body: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
    std::fs::write(&csv, format!("{HEADER}\n{body}{body}{body}")).unwrap();
    let ds = Arc::new(Dataset::from_label_csv(&csv, &LabelCsv::default()).unwrap());
    assert_eq!(ds.len(), 12);
    let policy = LabelPolicy { uncertain: "ignore".parse().unwrap(), ..Default::default() }
        .with_overrides("Edema=ones")
        .unwrap();
    let mapping = policy.for_labels(&LabelSet::CheXpert.names()).unwrap();
    let batches: Vec<_> =
        Loader::new(ds.clone(), small(5, 2)).with_labels(mapping.clone()).epoch(0, 0).collect();
    assert_eq!(batches.iter().map(|b| b.samples.len()).collect::<Vec<_>>(), [5, 5, 2]);
    let mut seen: Vec<usize> = Vec::new();
    for b in &batches {
        let (t, m) = (b.targets.as_ref().unwrap(), b.target_mask.as_ref().unwrap());
        assert_eq!(t.size(), [b.samples.len() as i64, 14]);
        assert_eq!(t.kind(), tch::Kind::Float);
        let (t, m) = (floats(t), floats(m));
        for (i, &idx) in b.samples.iter().enumerate() {
            let (want_t, want_m) = mapping.apply(labels(&ds.samples[idx]));
            assert_eq!(&t[i * 14..][..14], want_t.as_slice(), "batch {} image {i} (sample {idx})", b.index);
            assert_eq!(&m[i * 14..][..14], want_m.as_slice());
        }
        seen.extend(&b.samples);
    }
    seen.sort();
    assert_eq!(seen, (0..12).collect::<Vec<_>>(), "every sample once");

    // Class folders: int64 class indices.
    let test = common::data_dir().join("cxr-pneumonia-224/test");
    let mut classes = Dataset::from_class_folders(&test).unwrap();
    let keep: Vec<usize> = (0..classes.len()).step_by(classes.len() / 20).collect();
    classes.samples = keep.iter().map(|&i| classes.samples[i].clone()).collect();
    let classes = Arc::new(classes);
    for b in Loader::new(classes.clone(), small(8, 2)).epoch(1, 0) {
        let t = b.targets.unwrap();
        assert_eq!(t.kind(), tch::Kind::Int64);
        let got = Vec::<i64>::try_from(&t).unwrap();
        let want: Vec<i64> = b
            .samples
            .iter()
            .map(|&i| match classes.samples[i].target {
                Some(Target::Class(c)) => c as i64,
                _ => panic!(),
            })
            .collect();
        assert_eq!(got, want);
        assert!(b.target_mask.is_none());
    }
}

/// A folder of inputs and a folder of targets holding the same radiographs (a pair equal to
/// its image), plus `extra` inputs whose target is a broken file.
fn self_pairs(dir: &Path, n: usize, broken: usize) -> (PathBuf, PathBuf) {
    let (inputs, targets) = (dir.join("in"), dir.join("out"));
    for (i, f) in jpegs(n + broken).iter().enumerate() {
        copy(f, &inputs.join(format!("{i:02}.jpeg")));
        if i < n {
            copy(f, &targets.join(format!("{i:02}.jpeg")));
        } else {
            std::fs::create_dir_all(&targets).unwrap();
            std::fs::write(targets.join(format!("{i:02}.png")), b"\x89PNG\r\n\x1a\n truncated").unwrap();
        }
    }
    (inputs, targets)
}

#[test]
fn paired_images_and_masks_load_with_their_images() {
    let dir = tempfile::tempdir().unwrap();
    let (inputs, targets) = self_pairs(dir.path(), 10, 2);
    let ds = Arc::new(Dataset::from_paired_folders(&inputs, &targets, TargetKind::Image).unwrap());
    let loader = Loader::new(ds.clone(), LoaderConfig { drop_last: true, ..small(4, 2) });
    let mut epoch = loader.epoch(0, 0);
    let batches: Vec<_> = epoch.by_ref().collect();
    assert_eq!(batches.len(), 3);
    for b in &batches {
        assert_eq!(b.images.size(), [4, 1, 64, 64], "batch size stays constant");
        let t = b.targets.as_ref().unwrap();
        assert!(t.equal(&b.images), "a pair equal to its image resizes to the same values");
        assert!(b.samples.iter().all(|&i| i < 10), "samples with an unreadable pair are replaced");
    }
    let skipped: Vec<_> = epoch.skipped().iter().map(|s| s.path.clone()).collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(
        skipped.iter().all(|p| p.starts_with(&targets) && p.extension().unwrap() == "png"),
        "{skipped:?}"
    );

    // With a target cache: the same targets from the first epoch on.
    let cache_dir = tempfile::tempdir().unwrap();
    let cache =
        chess::data::DecodeCache::open(&cache_dir.path().join("t.cache"), &ds.target_files(), 64).unwrap();
    let cached = Loader::new(ds.clone(), LoaderConfig { drop_last: true, ..small(4, 2) })
        .with_target_cache(Arc::new(cache));
    for epoch in 0..2 {
        for (b, c) in loader.epoch(epoch, 0).zip(cached.epoch(epoch, 0)) {
            assert_eq!(b.samples, c.samples);
            let (t, ct) = (b.targets.unwrap(), c.targets.unwrap());
            let diff = (t - ct).abs().max().double_value(&[]);
            assert!(diff <= 0.5, "cached targets are the rounded ones: {diff}");
        }
    }

    // Masks drawn from coordinates, resized with the image (nearest): 224 px JPEGs at 64 px.
    let csv = dir.path().join("nodules.csv");
    let rows: String = jpegs(6).iter().map(|f| format!("{},112,100,28,0.25\n", f.display())).collect();
    std::fs::write(&csv, format!("image,x,y,diameter_mm,pixel_spacing\n{rows}")).unwrap();
    let masks = Arc::new(Dataset::from_circle_csv(&csv).unwrap());
    for b in Loader::new(masks, small(3, 1)).epoch(0, 0) {
        let t = floats(b.targets.as_ref().unwrap());
        for plane in t.chunks(64 * 64) {
            assert!(plane.iter().all(|&v| v == 0.0 || v == 1.0));
            // Radius 56 px of 224 is 16 px of 64; 1 % would be 8 pixels of ~804, a resized disc
            // differs a little more from pi r^2: 2 %.
            let (count, area) = (ones(plane) as f64, std::f64::consts::PI * 16.0 * 16.0);
            assert!((count - area).abs() / area < 0.02, "{count} pixels, pi r^2 = {area:.1}");
        }
    }
}

/// No photometric step, every warp: what reaches the image reaches its pair.
fn geometric_only() -> AugmentConfig {
    AugmentConfig {
        p_blur_sharpen: 0.0,
        p_brightness_contrast: 0.0,
        p_noise: 0.0,
        p_value_shift: 0.0,
        p_affine: 1.0,
        p_optical: 0.5,
        ..AugmentConfig::default()
    }
}

#[test]
fn joint_augmentation_warps_pairs_and_masks_as_their_images() {
    let dir = tempfile::tempdir().unwrap();
    let (inputs, targets) = self_pairs(dir.path(), 8, 0);
    let ds = Arc::new(Dataset::from_paired_folders(&inputs, &targets, TargetKind::Image).unwrap());
    let (scale, offset) =
        ((1.0 / (255.0 * chess::data::STD)) as f32, (chess::data::MEAN / chess::data::STD) as f32);
    for b in Loader::new(ds.clone(), small(4, 2)).with_joint_augment(geometric_only()).epoch(0, 0) {
        assert!(b.views.is_none(), "one view, not MoCo's two");
        let joint = b.joint.as_ref().unwrap();
        let target = joint.target.as_ref().unwrap();
        assert_eq!(target.size(), [4, 1, 64, 64]);
        assert!(!target.equal(b.targets.as_ref().unwrap()), "the pair is warped");
        // The pair is the image: its warp, normalised as the input is, is the input exactly.
        let normalised: Vec<f32> = floats(target).iter().map(|&v| v * scale - offset).collect();
        assert_eq!(normalised, floats(&joint.input), "batch {}", b.index);
    }
    // Photometric steps reach the input only.
    let full = AugmentConfig { p_brightness_contrast: 1.0, ..geometric_only() };
    for b in Loader::new(ds.clone(), small(4, 1)).with_joint_augment(full).epoch(0, 0) {
        let joint = b.joint.unwrap();
        let normalised: Vec<f32> =
            floats(joint.target.as_ref().unwrap()).iter().map(|&v| v * scale - offset).collect();
        assert_ne!(normalised, floats(&joint.input));
    }

    // Masks stay binary under nearest warps; the default pipeline (photometric steps on) never
    // touches them.
    let csv = dir.path().join("nodules.csv");
    let rows: String = jpegs(8).iter().map(|f| format!("{},112,100,28,0.25\n", f.display())).collect();
    std::fs::write(&csv, format!("image,x,y,diameter_mm,pixel_spacing\n{rows}")).unwrap();
    let masks = Arc::new(Dataset::from_circle_csv(&csv).unwrap());
    let aug = AugmentConfig { p_affine: 1.0, p_optical: 1.0, ..AugmentConfig::default() };
    for b in Loader::new(masks, small(4, 2)).with_joint_augment(aug).epoch(0, 0) {
        let warped = floats(b.joint.unwrap().target.as_ref().unwrap());
        assert!(warped.iter().all(|&v| v == 0.0 || v == 1.0), "a mask stays binary");
        let before = floats(b.targets.as_ref().unwrap());
        assert!(ones(&warped) > 0 && warped != before, "moved, not lost");
    }

    // The tensor path warps alike: bilinear to float rounding, nearest on all but pixels whose
    // source falls within rounding of a half-pixel (at most 0.5 %).
    let images = Dataset::from_sources(&[inputs]).unwrap();
    let img = chess::data::batch(
        &[chess::data::decode_file(&images.samples[0].path).unwrap()],
        64,
        1,
        tch::Device::Cpu,
    );
    let img = (img * chess::data::STD + chess::data::MEAN) * 255.0;
    let mask = img.ge(128.0).to_kind(tch::Kind::Float);
    let plans = draw_plans(
        1,
        64,
        64,
        &AugmentConfig { p_affine: 1.0, p_optical: 1.0, ..Default::default() },
        &mut Rng::new(3),
    );
    let mut scratch = HostScratch::default();
    for (x, interp, tolerance) in [(&img, Interp::Bilinear, 0.0), (&mask, Interp::Nearest, 0.005)] {
        let mut out = vec![0f32; 64 * 64];
        warp_host(&floats(x), 64, 64, &plans[0], interp, &mut scratch, &mut out);
        let theirs = floats(&warp_planned(x, &plans, interp));
        let (max, differ) = out.iter().zip(&theirs).fold((0f32, 0usize), |(m, n), (a, b)| {
            ((a - b).abs().max(m), n + usize::from((a - b).abs() > 1e-3))
        });
        match interp {
            Interp::Bilinear => assert!(max < 0.05, "bilinear warps differ by {max} (of 255)"),
            Interp::Nearest => {
                assert!(theirs.iter().all(|&v| v == 0.0 || v == 1.0));
                assert!(differ as f64 <= tolerance * 4096.0, "{differ} of 4096 pixels differ");
            }
        }
    }
}
