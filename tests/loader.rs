//! Datasets and the threaded loader on the shared radiographs: order, determinism, skipping.
mod common;

use std::path::PathBuf;
use std::sync::Arc;

use chess::data::{Dataset, DecodeCache, Loader, LoaderConfig, loader::epoch_order};

fn small(workers: usize, seed: u64) -> LoaderConfig {
    LoaderConfig { image_size: 64, batch_size: 8, workers, prefetch: 2, seed, shuffle: true, drop_last: true }
}

#[test]
fn folders_csv_and_class_layouts() {
    let test = common::data_dir().join("cxr-pneumonia-224/test");
    let all = Dataset::from_sources(std::slice::from_ref(&test)).unwrap();
    let classes = Dataset::from_class_folders(&test).unwrap();
    assert_eq!(all.len(), classes.len());
    assert_eq!(classes.classes(), ["NORMAL", "PNEUMONIA"]);
    assert!(all.samples.windows(2).all(|w| w[0].path < w[1].path), "folders are walked in sorted order");

    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("list.csv");
    let a = &all.samples[0].path;
    let b = &all.samples[1].path;
    std::fs::write(&csv, format!("Sex,Path,Age\nF,\"{}\",40\nM,{},50\n", a.display(), b.display())).unwrap();
    let from_csv = Dataset::from_sources(&[csv]).unwrap();
    assert_eq!(from_csv.samples.iter().map(|s| &s.path).collect::<Vec<_>>(), [a, b]);
    let list = dir.path().join("files.txt");
    std::fs::write(&list, format!("# comment\n{}\n", a.display())).unwrap();
    assert_eq!(Dataset::from_sources(&[list]).unwrap().len(), 1);
    let err = Dataset::from_sources(&[dir.path().join("missing")]).unwrap_err().to_string();
    assert!(err.contains("missing"), "{err}");

    // Relative paths: from the list's folder, or (CheXpert's layout) from the folder above it.
    let root = dir.path().join("CheXpert-v1.0-small");
    let image = root.join("train/patient00001/study1/view1_frontal.jpg");
    std::fs::create_dir_all(image.parent().unwrap()).unwrap();
    std::fs::copy(a, &image).unwrap();
    let csv = root.join("train.csv");
    std::fs::write(&csv, "Path,Sex\nCheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,F\n")
        .unwrap();
    assert_eq!(Dataset::from_sources(&[csv]).unwrap().samples[0].path, image);
    let list = root.join("frontal.txt");
    std::fs::write(&list, "train/patient00001/study1/view1_frontal.jpg\n").unwrap();
    assert_eq!(Dataset::from_sources(&[list]).unwrap().samples[0].path, image);
}

/// CSV lists are read as CSV: quoted paths holding commas and quotes, CRLF line ends and a
/// UTF-8 byte-order mark (Excel's "CSV UTF-8"); a row of the wrong width is one error naming the
/// file and the line.
#[test]
fn csv_lists_quote_crlf_bom_and_name_broken_lines() {
    let test = common::data_dir().join("cxr-pneumonia-224/test/NORMAL");
    let first = Dataset::from_sources(&[test]).unwrap().samples[0].path.clone();
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("scan, \"left\".jpeg");
    std::fs::copy(&first, &odd).unwrap();

    let quoted = dir.path().join("quoted.csv");
    std::fs::write(&quoted, "Path,Sex\n\"scan, \"\"left\"\".jpeg\",F\n").unwrap();
    assert_eq!(Dataset::from_sources(&[quoted]).unwrap().samples[0].path, odd);

    let excel = dir.path().join("excel.csv");
    let quoted_odd = odd.display().to_string().replace('"', "\"\"");
    let text = format!("\u{feff}Path,Age\r\n\"{quoted_odd}\",40\r\n{},50\r\n\r\n", first.display());
    std::fs::write(&excel, text).unwrap();
    let paths: Vec<PathBuf> =
        Dataset::from_sources(&[excel]).unwrap().samples.into_iter().map(|s| s.path).collect();
    assert_eq!(paths, [odd.clone(), first.clone()], "the BOM is not part of the `Path` header");
    // Without a `Path` header the first column is the path, its first row included.
    let bare = dir.path().join("bare.csv");
    std::fs::write(&bare, format!("\u{feff}{},1\r\n\"{quoted_odd}\",2\r\n", first.display())).unwrap();
    assert_eq!(Dataset::from_sources(&[bare]).unwrap().len(), 2);

    let ragged = dir.path().join("ragged.csv");
    std::fs::write(&ragged, format!("Path,Sex,Age\n{},F,40\n\n{},M\n", first.display(), first.display()))
        .unwrap();
    let err = Dataset::from_sources(std::slice::from_ref(&ragged)).unwrap_err();
    assert!(matches!(err, chess::data::DatasetError::Csv { line: 4, .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("{}: line 4: 2 fields where the header (line 1) has 3", ragged.display())
    );
    let unclosed = dir.path().join("unclosed.csv");
    std::fs::write(&unclosed, format!("Path,Sex\n{},F\n\"{},M\n", first.display(), first.display())).unwrap();
    let err = Dataset::from_sources(std::slice::from_ref(&unclosed)).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}: line 3: ", unclosed.display())), "{err}");
    let empty = dir.path().join("no_path.csv");
    std::fs::write(&empty, format!("Path,Sex\n{},F\n,M\n", first.display())).unwrap();
    let err = Dataset::from_sources(std::slice::from_ref(&empty)).unwrap_err().to_string();
    assert_eq!(err, format!("{}: line 3: no path in column 1", empty.display()));
}

#[test]
fn epochs_are_seeded_permutations() {
    let a = epoch_order(100, 7, 0, true);
    assert_eq!(a, epoch_order(100, 7, 0, true), "same seed and epoch, same order");
    assert_ne!(a, epoch_order(100, 7, 1, true), "reshuffled per epoch");
    assert_ne!(a, epoch_order(100, 8, 0, true), "seeded");
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, (0..100).collect::<Vec<_>>(), "a permutation");
    assert_eq!(epoch_order(5, 7, 3, false), [0, 1, 2, 3, 4]);
}

#[test]
fn batches_do_not_depend_on_the_number_of_workers() {
    let test = common::data_dir().join("cxr-pneumonia-224/test/NORMAL");
    let mut ds = Dataset::from_sources(&[test]).unwrap();
    ds.samples.truncate(44);
    let ds = Arc::new(ds);
    let one = Loader::new(ds.clone(), small(1, 3));
    let two = Loader::new(ds.clone(), small(2, 3));
    assert_eq!(one.batches_per_epoch(), 5, "44 / 8 with drop_last");
    let a: Vec<_> = one.epoch(1, 0).collect();
    let b: Vec<_> = two.epoch(1, 0).collect();
    assert_eq!(a.len(), 5);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.samples, y.samples);
        assert_eq!(x.images.size(), [8, 1, 64, 64]);
        assert!(x.images.equal(&y.images));
    }
    // Augmenting in the loader: two different views per batch, the same for any worker count.
    let aug = chess::data::AugmentConfig::default();
    let va: Vec<_> = Loader::new(ds.clone(), small(1, 3)).with_augment(aug).epoch(1, 0).collect();
    let vb: Vec<_> = Loader::new(ds.clone(), small(2, 3)).with_augment(aug).epoch(1, 0).collect();
    for (x, y) in va.iter().zip(&vb) {
        let ((q1, k1), (q2, k2)) = (x.views.as_ref().unwrap(), y.views.as_ref().unwrap());
        assert!(q1.equal(q2) && k1.equal(k2));
        assert_eq!(q1.size(), [8, 1, 64, 64]);
        assert!(!q1.equal(k1), "query and key views differ");
        // The views the decode threads draw (native kernels) are the tensor path's (tested
        // against OpenCV) with the same generator: same steps, same parameters.
        let mut rng = chess::data::view_rng(3, 1, x.index);
        let (q, _) = chess::data::augment(&x.images, &aug, &mut rng);
        let (k, _) = chess::data::augment(&x.images, &aug, &mut rng);
        for (ours, theirs) in [(q1, &q), (k1, &k)] {
            let max = (ours - theirs).abs().max().double_value(&[]);
            assert!(max < 2e-4, "batch {}: loader views differ from the tensor path by {max}", x.index);
        }
    }
    assert!(a[0].views.is_none(), "no views unless asked");
    // Resuming at batch 3 gives the tail of the same epoch.
    let resumed: Vec<_> = two.epoch(1, 3).collect();
    assert_eq!(resumed.len(), 2);
    assert_eq!(resumed[0].samples, a[3].samples);
    // Dropping an epoch half-way stops its threads (no hang).
    let mut it = two.epoch(2, 0);
    assert!(it.next().is_some());
    drop(it);
}

/// A temporary folder holding copies of the first `n` NORMAL radiographs of the test split.
fn radiographs(n: usize) -> tempfile::TempDir {
    let src = common::data_dir().join("cxr-pneumonia-224/test/NORMAL");
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&src).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files.iter().take(n) {
        std::fs::copy(f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    dir
}

#[test]
fn unreadable_files_are_skipped_counted_and_replaced() {
    let dir = radiographs(14);
    std::fs::write(dir.path().join("zz_broken.jpeg"), b"\xff\xd8\xff\xe0 truncated").unwrap();
    std::fs::write(dir.path().join("zz_empty.dcm"), b"").unwrap();
    let ds = Arc::new(Dataset::from_sources(&[dir.path().to_path_buf()]).unwrap());
    assert_eq!(ds.len(), 16);
    let loader = Loader::new(ds, small(2, 1));
    let mut epoch = loader.epoch(0, 0);
    let batches: Vec<_> = epoch.by_ref().collect();
    assert_eq!(batches.len(), 2);
    assert!(batches.iter().all(|b| b.images.size()[0] == 8), "batch size stays constant");
    let skipped = epoch.skipped();
    let names: Vec<String> =
        skipped.iter().map(|s| s.path.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert!(
        names.contains(&"zz_broken.jpeg".to_string()) && names.contains(&"zz_empty.dcm".to_string()),
        "{skipped:?}"
    );
    assert!(
        skipped.iter().all(|s| s.reason.contains(&*s.path.display().to_string())),
        "reasons name the file"
    );
}

/// Data nearly all unreadable (3 radiographs among 61 non-image files): slots that miss 16
/// times repeat an image of their batch, so every batch keeps its size and holds only the
/// readable files.
#[test]
fn mostly_unreadable_data_still_gives_full_batches() {
    let dir = radiographs(3);
    for i in 0..61 {
        std::fs::write(dir.path().join(format!("object{i:02}.dcm")), b"not an image").unwrap();
    }
    let ds = Arc::new(Dataset::from_sources(&[dir.path().to_path_buf()]).unwrap());
    let readable: Vec<usize> =
        (0..ds.len()).filter(|&i| ds.samples[i].path.extension().is_some_and(|e| e == "jpeg")).collect();
    let loader = Loader::new(ds, small(2, 1));
    let batches: Vec<_> = loader.epoch(0, 0).collect();
    assert_eq!(batches.len(), 8);
    for b in &batches {
        assert_eq!(b.images.size()[0], 8, "batch {} keeps its size", b.index);
        assert_eq!(b.samples.len(), 8);
        assert!(b.samples.iter().all(|i| readable.contains(i)), "{:?}", b.samples);
    }
    // A repeated file's slots hold the same image (8 slots, 3 files: every batch repeats).
    let b = &batches[0];
    let (i, j) = (0..8)
        .flat_map(|i| (i + 1..8).map(move |j| (i, j)))
        .find(|&(i, j)| b.samples[i] == b.samples[j])
        .unwrap();
    assert!(b.images.get(i as i64).equal(&b.images.get(j as i64)));
}

#[test]
fn the_cache_decodes_each_file_once_and_is_rebuilt_when_stale() {
    let src = common::data_dir().join("cxr-pneumonia-224/test/PNEUMONIA");
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&src).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files.iter().take(24) {
        std::fs::copy(f, images.join(f.file_name().unwrap())).unwrap();
    }
    let ds = Arc::new(Dataset::from_sources(std::slice::from_ref(&images)).unwrap());
    let path = dir.path().join("decoded.cache");
    let cfg = small(2, 4);

    let cache = Arc::new(DecodeCache::open(&path, &ds, 64).unwrap());
    assert_eq!(cache.filled(), 0);
    let cached = Loader::new(ds.clone(), cfg).with_cache(cache.clone());
    let first: Vec<_> = cached.epoch(0, 0).collect();
    assert_eq!(cache.filled(), 24, "one epoch fills the cache");
    // Cached values are the decoded ones rounded to u8.
    let plain: Vec<_> = Loader::new(ds.clone(), cfg).epoch(0, 0).collect();
    for (a, b) in first.iter().zip(&plain) {
        assert_eq!(a.samples, b.samples);
        let d = (&a.images - &b.images).abs().max().double_value(&[]);
        assert!(d <= 0.5 + 1e-4, "rounding only: {d}");
    }
    // With the sources gone, the next epoch still loads everything: nothing is decoded again.
    std::fs::remove_dir_all(&images).unwrap();
    let mut again = cached.epoch(0, 0);
    let second: Vec<_> = again.by_ref().collect();
    assert!(again.skipped().is_empty());
    for (a, b) in first.iter().zip(&second) {
        assert!(a.images.equal(&b.images));
    }
    drop((again, cached, cache));
    // Reopened for the same files it keeps its contents; for another size, or once damaged, it
    // starts again instead of being misread.
    std::fs::create_dir(&images).unwrap();
    for f in files.iter().take(24) {
        std::fs::copy(f, images.join(f.file_name().unwrap())).unwrap();
    }
    let ds = Arc::new(Dataset::from_sources(std::slice::from_ref(&images)).unwrap());
    let fresh = DecodeCache::open(&path, &ds, 64).unwrap();
    assert_eq!(fresh.filled(), 0, "copied files have new modification times: rebuilt");
    drop(fresh);
    let other_size = DecodeCache::open(&path, &ds, 32).unwrap();
    assert_eq!(other_size.filled(), 0);
    let loader =
        Loader::new(ds.clone(), LoaderConfig { image_size: 32, ..cfg }).with_cache(Arc::new(other_size));
    assert_eq!(loader.epoch(0, 0).count(), 3);
    let kept = DecodeCache::open(&path, &ds, 32).unwrap();
    assert_eq!(kept.filled(), 24, "same files and size: kept");
    drop(kept);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(100).unwrap();
    drop(f);
    assert_eq!(DecodeCache::open(&path, &ds, 32).unwrap().filled(), 0, "damaged: rebuilt");
}

#[test]
fn batch_buffers_are_recycled_when_libtorch_frees_them() {
    use chess::data::BufferPool;
    let pool = BufferPool::new(2);
    let t = pool.tensor(&[2, 3], |v| v.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32));
    assert_eq!(Vec::<f32>::try_from(t.view([-1])).unwrap(), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    let view = t.narrow(0, 1, 1);
    drop(t);
    assert_eq!(pool.free(), 0, "a view still holds the storage");
    assert_eq!((&view * 2.0).sum(tch::Kind::Float).double_value(&[]), 24.0);
    // The last reference dropped on another thread gives the buffer back.
    std::thread::spawn(move || drop(view)).join().unwrap();
    assert_eq!(pool.free(), 1);
    let again =
        pool.tensor(&[6], |v| assert_eq!(v, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "the same buffer, reused"));
    assert_eq!(pool.free(), 0);
    // The pool keeps at most `keep` buffers; the rest are freed.
    let more: Vec<_> = (0..4).map(|_| pool.tensor(&[6], |v| v.fill(1.0))).collect();
    drop((again, more));
    assert_eq!(pool.free(), 2);
}
