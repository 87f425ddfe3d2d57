//! PNG and TIFF radiographs (8 and 16 bit; TIFF plain, LZW and deflate) made by Pillow from real files,
//! and the names files come with out of archives.
mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use chess::data::{self, FileKind, WindowFallback, Windowing};
use rstest::rstest;

/// The files of `tests/python/image_formats.py`, made once per run from a 15-bit CR DICOM and a
/// chest JPEG of ../shared/data.
fn made() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::fixture_dir("image_formats");
        let data = common::data_dir();
        let dicom = data.join("dicom/RG1_UNCR.dcm");
        let jpeg = data.join("cxr-pneumonia-224/test/NORMAL/IM-0001-0001.jpeg");
        common::run_python("image_formats.py", [dicom.as_path(), &jpeg, &dir]);
        dir
    })
}

fn max_diff(ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len());
    ours.iter().zip(theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

/// Without a window to go by, 16-bit files get what a DICOM without one gets: the percentile
/// clip by default, min-max on request (numpy's values, float32 rounding apart).
#[rstest]
fn sixteen_bit_files_get_the_dicom_fallback(
    #[values("raw16.png", "raw16.tif", "raw16_lzw.tif", "raw16_deflate.tif")] name: &str,
    #[values(WindowFallback::Percentile, WindowFallback::MinMax)] fallback: WindowFallback,
) {
    let path = made().join(name);
    let kind = if name.ends_with(".png") { FileKind::Png } else { FileKind::Tiff };
    assert_eq!(data::file_kind(&path).unwrap(), kind);
    let img = data::decode_file_with(&path, Windowing { ignore_file: false, fallback }).unwrap();
    assert_eq!(img.bit_depth, 16);
    let reference = match fallback {
        WindowFallback::Percentile => "raw16_percentile.npy",
        WindowFallback::MinMax => "raw16_minmax.npy",
    };
    let reference = common::read_npy(&made().join(reference));
    assert_eq!(reference.size(), [i64::from(img.height), i64::from(img.width)]);
    let worst = max_diff(&img.pixels, &Vec::<f32>::try_from(reference.view([-1])).unwrap());
    eprintln!("{name} {fallback:?}: {} x {}, max |diff| {worst}", img.height, img.width);
    assert!(worst <= 1e-3, "{name}: {worst}");
}

#[rstest]
#[case("grey8.png")]
#[case("grey8.tif")]
fn eight_bit_files_keep_their_values(#[case] name: &str) {
    let img = data::decode_file(&made().join(name)).unwrap();
    assert_eq!(img.bit_depth, 8);
    let reference = common::read_npy(&made().join("grey8.npy"));
    assert_eq!(max_diff(&img.pixels, &Vec::<f32>::try_from(reference.view([-1])).unwrap()), 0.0);
}

/// Archive exports name files by SOP instance UID, with no extension, or `.IMA` (Siemens); a
/// folder scan takes them and tells the format by content, and leaves other files (DICOMDIR
/// included: an index) alone.
#[test]
fn folder_scan_takes_the_names_archives_use() {
    let dir = tempfile::tempdir().unwrap();
    let dicom = common::data_dir().join("dicom/nih_dx_implicit_vr.dcm");
    let names = ["1.2.840.113619.2.55.3.604688119.969.1268071029.320", "IM000001", "SCAN.IMA"];
    for name in names {
        std::fs::copy(&dicom, dir.path().join(name)).unwrap();
    }
    std::fs::copy(made().join("raw16_lzw.tif"), dir.path().join("film.TIFF")).unwrap();
    for other in ["notes.txt", "report.pdf", ".DS_Store", "DICOMDIR"] {
        std::fs::write(dir.path().join(other), b"not an image").unwrap();
    }
    let ds = data::Dataset::from_sources(&[dir.path().to_path_buf()]).unwrap();
    let mut found: Vec<String> =
        ds.samples.iter().map(|s| s.path.file_name().unwrap().to_string_lossy().into_owned()).collect();
    found.sort();
    assert_eq!(
        found,
        ["1.2.840.113619.2.55.3.604688119.969.1268071029.320", "IM000001", "SCAN.IMA", "film.TIFF"]
    );
    for s in &ds.samples {
        data::decode_file(&s.path).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Some DICOM files carry a TIFF header in their 128-byte preamble (dual-personality files, as
/// the CR of ../shared/data does): they are DICOM.
#[test]
fn a_tiff_preamble_does_not_hide_dicom() {
    let path = common::data_dir().join("dicom/RG1_UNCR.dcm");
    assert!(std::fs::read(&path).unwrap().starts_with(b"II*\0"));
    assert_eq!(data::file_kind(&path).unwrap(), FileKind::Dicom);
}

/// `decode_files` on several threads: each result where its path was, errors in their place.
#[test]
fn decode_files_keeps_the_order_of_its_paths() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\n not a PNG").unwrap();
    let good: Vec<PathBuf> = ["grey8.png", "grey8.tif", "raw16.png"].iter().map(|n| made().join(n)).collect();
    let paths = [&good[0], &bad, &good[1], &good[2], &bad, &good[0]];
    let paths: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    let results = data::decode_files(&paths, 3);
    assert_eq!(results.len(), paths.len());
    for (path, result) in paths.iter().zip(&results) {
        match data::decode_file(path) {
            Ok(one) => assert_eq!(result.as_ref().unwrap().pixels, one.pixels, "{}", path.display()),
            Err(e) => assert_eq!(result.as_ref().unwrap_err().to_string(), e.to_string()),
        }
    }
}
