//! Datasets and the threaded loader on the shared radiographs: order, determinism, skipping.
mod common;

use std::path::PathBuf;
use std::sync::Arc;

use chess::data::{Dataset, Loader, LoaderConfig, loader::epoch_order};

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
    // Resuming at batch 3 gives the tail of the same epoch.
    let resumed: Vec<_> = two.epoch(1, 3).collect();
    assert_eq!(resumed.len(), 2);
    assert_eq!(resumed[0].samples, a[3].samples);
    // Dropping an epoch half-way stops its threads (no hang).
    let mut it = two.epoch(2, 0);
    assert!(it.next().is_some());
    drop(it);
}

#[test]
fn unreadable_files_are_skipped_counted_and_replaced() {
    let src = common::data_dir().join("cxr-pneumonia-224/test/NORMAL");
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&src).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files.iter().take(14) {
        std::fs::copy(f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
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
