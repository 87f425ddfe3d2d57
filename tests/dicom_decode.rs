//! DICOM decoding against pydicom on real chest radiographs (../shared/data/dicom) and on
//! variants transcoded from them: every transfer syntax and pixel layout we claim.
mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use chess::data::{self, FileKind, Windowing, dicom};
use rstest::rstest;

/// (variants folder, pydicom values folder), made once per run.
fn prepared() -> &'static (PathBuf, PathBuf) {
    static DIRS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DIRS.get_or_init(|| {
        let variants = common::fixture_dir("dicom_decode/variants");
        let values = common::fixture_dir("dicom_decode/values");
        let src = common::data_dir().join("dicom");
        common::run_python("dicom_reference.py", [Path::new("variants"), &src, variants.as_path()]);
        let mut files: Vec<PathBuf> = Vec::new();
        for dir in [src.as_path(), variants.as_path()] {
            files.extend(std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()));
        }
        let args =
            [Path::new("values"), values.as_path()].into_iter().chain(files.iter().map(PathBuf::as_path));
        common::run_python("dicom_reference.py", args);
        (variants, values)
    })
}

fn file(name: &str) -> PathBuf {
    let shared = common::data_dir().join("dicom").join(name);
    if shared.exists() { shared } else { prepared().0.join(name) }
}

#[rstest]
#[case::cr_explicit_vr_15bit_mono1("RG1_UNCR.dcm", "1.2.840.10008.1.2.1")]
#[case::cr_j2k_lossless_15bit_mono1("RG1_J2KR.dcm", "1.2.840.10008.1.2.4.90")]
#[case::dx_j2k_12bit_mono1("dx_chest_mono1_12bit_j2kr.dcm", "1.2.840.10008.1.2.4.90")]
#[case::dx_j2k_16bit_mono2("dx_chest_mono2_16bit_j2kr.dcm", "1.2.840.10008.1.2.4.90")]
#[case::dx_implicit_vr_8bit("nih_dx_implicit_vr.dcm", "1.2.840.10008.1.2")]
#[case::implicit_vr("cr_implicit_vr.dcm", "1.2.840.10008.1.2")]
#[case::explicit_big_endian("cr_explicit_big_endian.dcm", "1.2.840.10008.1.2.2")]
#[case::deflated("cr_deflated.dcm", "1.2.840.10008.1.2.1.99")]
#[case::rle("cr_rle.dcm", "1.2.840.10008.1.2.5")]
#[case::j2k_8bit("dx8_j2k_lossless.dcm", "1.2.840.10008.1.2.4.90")]
#[case::no_preamble_no_meta("dx8_no_meta.dcm", "1.2.840.10008.1.2")]
#[case::signed_rescaled("dx16_signed_rescaled.dcm", "1.2.840.10008.1.2.1")]
#[case::voi_lut("cr_voi_lut.dcm", "1.2.840.10008.1.2.1")]
#[case::bits_above_high_bit("dx12_high_bits_set.dcm", "1.2.840.10008.1.2.1")]
#[case::multi_frame("dx8_two_frames.dcm", "1.2.840.10008.1.2.1")]
#[case::rgb("dx8_rgb.dcm", "1.2.840.10008.1.2.1")]
#[case::jpeg_lossless_8bit("jpeg_lossless_8bit.dcm", "1.2.840.10008.1.2.4.70")]
#[case::jpeg_lossless_16bit_signed("jpeg_lossless_16bit_signed.dcm", "1.2.840.10008.1.2.4.70")]
#[case::jpeg_ls_lossless_16bit("jpeg_ls_lossless_16bit.dcm", "1.2.840.10008.1.2.4.80")]
#[case::jpeg_ls_lossless_multiframe("jpeg_ls_lossless_multiframe.dcm", "1.2.840.10008.1.2.4.80")]
#[case::jpeg_ls_near_lossless_8bit("jpeg_ls_near_lossless_8bit.dcm", "1.2.840.10008.1.2.4.81")]
#[case::jpeg_ls_near_lossless_16bit("jpeg_ls_near_lossless_16bit.dcm", "1.2.840.10008.1.2.4.81")]
fn pixel_values_equal_pydicoms(#[case] name: &str, #[case] transfer_syntax: &str) {
    check_against_pydicom(name, transfer_syntax, 0.0);
}

/// Lossy JPEG: decoders may round the inverse DCT differently (pydicom's own plugins disagree
/// by one grey level), so equality is up to that.
#[test]
fn jpeg_baseline_matches_pydicom_up_to_idct_rounding() {
    check_against_pydicom("dx8_jpeg_baseline.dcm", "1.2.840.10008.1.2.4.50", 1.0);
}

/// 12-bit JPEG extended, decoded by our own decoder (dicom-rs's refuses 12-bit): pydicom
/// decodes it with libjpeg's integer IDCT, ours is float, so values may differ by rounding.
#[test]
fn jpeg_extended_12bit_matches_pydicom_up_to_idct_rounding() {
    check_against_pydicom("jpeg_extended_12bit.dcm", "1.2.840.10008.1.2.4.51", 1.0);
    let px = dicom::read(&file("jpeg_extended_12bit.dcm")).unwrap();
    assert_eq!((px.info.bits_allocated, px.info.bits_stored, px.info.frames), (16, 12, 1));
}

/// The same stream with a scan header libjpeg (so pydicom) refuses: a sequential scan ignores
/// spectral selection, and the values equal those of the well-formed file.
#[test]
fn jpeg_extended_12bit_with_an_odd_scan_header_decodes_like_the_fixed_file() {
    assert!(
        prepared().1.join("jpeg_extended_12bit_odd_scan_header.dcm.error").exists(),
        "pydicom refuses it"
    );
    let odd = dicom::read(&file("jpeg_extended_12bit_odd_scan_header.dcm")).unwrap();
    let fixed = dicom::read(&file("jpeg_extended_12bit.dcm")).unwrap();
    assert_eq!(odd.values, fixed.values);
}

fn check_against_pydicom(name: &str, transfer_syntax: &str, tolerance: f32) {
    let path = file(name);
    assert_eq!(data::file_kind(&path).unwrap(), FileKind::Dicom);
    let px = dicom::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(px.info.transfer_syntax, transfer_syntax);
    let reference = common::read_npy(&prepared().1.join(format!("{name}.npy")));
    assert_eq!(reference.size(), [i64::from(px.info.rows), i64::from(px.info.columns)]);
    let theirs = Vec::<f32>::try_from(reference.view([-1])).unwrap();
    let ours = px.presentation_values();
    let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    eprintln!(
        "{name}: {} x {}, {}, max |diff| vs pydicom {worst}",
        px.info.rows, px.info.columns, px.info.transfer_syntax_name
    );
    assert!(worst <= tolerance, "{name}: decoded values differ from pydicom's by {worst}");
    // Display values stay in range and are not constant.
    let img = data::decode_file(&path).unwrap();
    let (lo, hi) = img.pixels.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    assert!(lo >= 0.0 && hi <= 255.0 && hi - lo > 100.0, "{name}: display range {lo}..{hi}");
}

#[test]
fn the_truncated_file_fails_cleanly() {
    let path = common::data_dir().join("dicom/broken_truncated_j2k.dcm");
    let err = data::decode_file(&path).unwrap_err().to_string();
    eprintln!("{err}");
    assert!(err.starts_with(&path.display().to_string()) && !err.contains('\n'), "{err}");
    assert!(prepared().1.join("broken_truncated_j2k.dcm.error").exists(), "pydicom fails too");
}

#[test]
fn windowing_follows_the_file_then_the_fallback() {
    // MONOCHROME1 with a file window: bright is dense after inversion.
    let px = dicom::read(&file("RG1_UNCR.dcm")).unwrap();
    let (display, how) = px.display(Windowing::default());
    assert!(how.starts_with("file window c=15000 w=30000"), "{how}");
    let (c, w) = px.info.window.unwrap();
    for (v, d) in px.values.iter().zip(&display).step_by(9973) {
        let expected = (1.0 - dicom::window(f64::from(*v), c, w, dicom::VoiFunction::Linear)) * 255.0;
        assert!((f64::from(*d) - expected).abs() < 1e-3);
    }
    // A VOI LUT goes before the window: pydicom's apply_voi_lut, to float rounding.
    let px = dicom::read(&file("cr_voi_lut.dcm")).unwrap();
    let (display, how) = px.display(Windowing::default());
    assert_eq!(how, "file VOI LUT");
    let theirs = common::read_npy(&prepared().1.join("cr_voi_lut.dcm.voi.npy"));
    let theirs = Vec::<f32>::try_from(theirs.view([-1])).unwrap();
    let worst = display.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-3, "VOI LUT display differs from pydicom's by {worst}");
    // No window in the file: percentile clip, or min-max on request.
    let px = dicom::read(&file("nih_dx_implicit_vr.dcm")).unwrap();
    let (_, how) = px.display(Windowing::default());
    assert!(how.starts_with("percentile 0.5-99.5"), "{how}");
    let minmax = Windowing { ignore_file: true, fallback: dicom::WindowFallback::MinMax };
    let (display, how) = px.display(minmax);
    assert!(how.starts_with("min-max [0, 252]"), "{how}");
    let max = display.iter().cloned().fold(0.0f32, f32::max);
    assert_eq!(max, 255.0);
    // A window that misses the data entirely (stream offset by 2^15) falls back, and says so.
    let px = dicom::read(&file("dx_chest_mono2_16bit_j2kr.dcm")).unwrap();
    let (_, how) = px.display(Windowing::default());
    assert!(how.contains("misses the data"), "{how}");
    // The linear window of PS3.3 C.11.2.1.2.
    assert_eq!(dicom::window(99.5, 100.0, 1.0, dicom::VoiFunction::Linear), 0.0);
    assert_eq!(dicom::window(100.0, 100.0, 1.0, dicom::VoiFunction::Linear), 1.0);
    assert!((dicom::window(100.0, 100.5, 3.0, dicom::VoiFunction::Linear) - 0.5).abs() < 1e-12);
}

#[test]
fn inspect_reports_and_fails_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("v.npy");
    let png = dir.path().join("v.png");
    let out = common::example("inspect")
        .arg(file("RG1_J2KR.dcm"))
        .arg("--npy")
        .arg(&npy)
        .arg("--png")
        .arg(&png)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for needle in [
        "1955 x 1841",
        "15 stored of 16",
        "MONOCHROME1",
        "1.2.840.10008.1.2.4.90",
        "center 15000 width 30000",
    ] {
        assert!(text.contains(needle), "{needle} missing in:\n{text}");
    }
    let values = common::read_npy(&npy);
    assert_eq!(values.size(), [1955, 1841]);
    assert!(values.equal(&common::read_npy(&prepared().1.join("RG1_J2KR.dcm.npy"))));
    assert_eq!(image::open(&png).unwrap().dimensions_grey(), (1841, 1955));

    let broken = common::data_dir().join("dicom/broken_truncated_j2k.dcm");
    let out = common::example("inspect").arg(&broken).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("broken_truncated_j2k.dcm: cannot decode pixel data"), "{err}");
}

trait Dimensions {
    fn dimensions_grey(&self) -> (u32, u32);
}

impl Dimensions for image::DynamicImage {
    fn dimensions_grey(&self) -> (u32, u32) {
        assert_eq!(self.color(), image::ColorType::L8);
        (self.width(), self.height())
    }
}

/// Damaged 12-bit streams end in an error or in some image, never in a panic or a hang.
#[test]
fn damaged_12bit_jpeg_streams_never_panic() {
    let bytes = std::fs::read(file("jpeg_extended_12bit.dcm")).unwrap();
    let start = bytes.windows(3).position(|w| w == [0xFF, 0xD8, 0xFF]).unwrap();
    let end = bytes.windows(2).rposition(|w| w == [0xFF, 0xD9]).unwrap() + 2;
    let stream = &bytes[start..end];
    let clean = chess::data::jpeg_extended::decode(stream).unwrap();
    assert_eq!((clean.width, clean.height, clean.precision), (256, 1024, 12));
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut ok, mut failed) = (0, 0);
    for i in 0..300 {
        let mut damaged = stream.to_vec();
        match i % 3 {
            0 => damaged.truncate((next() as usize) % stream.len()),
            1 => {
                for _ in 0..4 {
                    let at = (next() as usize) % damaged.len();
                    damaged[at] = next() as u8;
                }
            }
            _ => {
                let at = ((next() as usize) % 300).min(damaged.len() - 1); // headers
                damaged[at] ^= 0xFF;
            }
        }
        match std::panic::catch_unwind(|| chess::data::jpeg_extended::decode(&damaged)) {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(_)) => failed += 1,
            Err(_) => panic!("case {i} panicked"),
        }
    }
    eprintln!("300 damaged streams: {ok} decoded to some image, {failed} refused");
}

/// `decode_bytes` is what `decode_file` does, from memory: the same images for every kind of
/// file (DICOM with and without meta group, 12-bit JPEG, JPEG), the same errors less the name.
#[test]
fn decode_bytes_equals_decode_file() {
    let jpeg = common::data_dir().join("cxr-pneumonia-224/test/NORMAL/IM-0001-0001.jpeg");
    let files = [
        file("nih_dx_implicit_vr.dcm"),
        file("dx8_no_meta.dcm"),
        file("jpeg_extended_12bit.dcm"),
        file("cr_rle.dcm"),
        jpeg,
    ];
    for windowing in
        [Windowing::default(), Windowing { ignore_file: true, fallback: dicom::WindowFallback::MinMax }]
    {
        for path in &files {
            let bytes = std::fs::read(path).unwrap();
            let from_bytes = data::decode_bytes(&bytes, windowing).unwrap();
            assert_eq!(from_bytes, data::decode_file_with(path, windowing).unwrap(), "{}", path.display());
        }
    }
    let broken = common::data_dir().join("dicom/broken_truncated_j2k.dcm");
    let err = data::decode_bytes(&std::fs::read(&broken).unwrap(), Windowing::default()).unwrap_err();
    assert_eq!(data::decode_file(&broken).unwrap_err().to_string(), format!("{}: {err}", broken.display()));
    assert_eq!(data::decode_bytes(b"hello", Windowing::default()), Err(data::BytesError::Unsupported));
}

/// dicom-rs's RLE decoder panics on a truncated fragment: the guard turns that into an error.
#[test]
fn a_decoder_panic_is_an_error() {
    let dir = common::fixture_dir("dicom_decode/truncated_rle");
    let src = common::data_dir().join("dicom/nih_dx_implicit_vr.dcm");
    common::run_python("truncated_rle.py", [src.as_path(), dir.as_path()]);
    let whole = dicom::read(&dir.join("rle_whole.dcm")).unwrap();
    assert_eq!(whole.values.len(), 1024 * 1024);
    let err = dicom::read(&dir.join("rle_truncated.dcm")).unwrap_err();
    assert!(err.starts_with("decoder failed: index out of bounds"), "{err}");
    // The guard leaves panics outside it alone.
    assert!(std::panic::catch_unwind(|| panic!("outside")).is_err());
}

/// A DICOM file in memory: preamble, a meta group naming `transfer_syntax`, then `data_set`.
fn dicom_bytes(transfer_syntax: &str, data_set: &[u8]) -> Vec<u8> {
    let mut uid = transfer_syntax.as_bytes().to_vec();
    if uid.len() % 2 == 1 {
        uid.push(0);
    }
    let mut meta = vec![0x02, 0x00, 0x10, 0x00, b'U', b'I'];
    meta.extend((uid.len() as u16).to_le_bytes());
    meta.extend(uid);
    let mut out = vec![0u8; 128];
    out.extend(b"DICM");
    out.extend([0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0]);
    out.extend((meta.len() as u32).to_le_bytes());
    out.extend(meta);
    out.extend(data_set);
    out
}

/// Found by fuzzing: dicom-rs allocates and zeroes each value at its declared length before
/// reading it, so a damaged length field cost up to 4 GiB for a 10 kB file. Declared lengths
/// beyond the input are refused first (explicit and implicit VR, meta group or not).
#[test]
fn declared_lengths_beyond_the_file_are_refused_before_allocating() {
    let windowing = Windowing::default();
    // (7FE0,0010) OW claiming 4 GiB - 16, in explicit VR little endian.
    let mut ds = vec![0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0];
    ds.extend(0xFFFF_FFF0u32.to_le_bytes());
    ds.extend([0u8; 16]);
    let err =
        data::decode_bytes(&dicom_bytes("1.2.840.10008.1.2.1", &ds), windowing).unwrap_err().to_string();
    assert_eq!(err, "element (7FE0,0010) declares 4294967280 bytes, the file holds 16 after it");
    // A bare implicit VR data set (no meta group), (0008,0016) claiming 4 GiB - 65536.
    let mut bare = vec![0x08, 0x00, 0x16, 0x00];
    bare.extend(0xFFFF_0000u32.to_le_bytes());
    bare.extend(b"1.2.3.4\0");
    let err = data::decode_bytes(&bare, windowing).unwrap_err().to_string();
    assert!(err.starts_with("element (0008,0016) declares 4294901760 bytes"), "{err}");
    // Within a sequence item, in the meta group, and in a deflated data set.
    let mut nested = vec![0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF];
    nested.extend([0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
    nested.extend([0x08, 0x00, 0x50, 0x11, b'U', b'N', 0, 0]);
    nested.extend(0x7FFF_FFFFu32.to_le_bytes());
    let err = data::decode_bytes(&dicom_bytes("1.2.840.10008.1.2.1", &nested), windowing).unwrap_err();
    assert!(err.to_string().starts_with("element (0008,1150) declares 2147483647"), "{err}");
    let mut meta = dicom_bytes("1.2.840.10008.1.2.1", &[]);
    meta[140..144].copy_from_slice(&40u32.to_le_bytes()); // group length: more elements follow
    meta.extend([0x02, 0x00, 0x12, 0x00, b'U', b'I', 0xFF, 0xFF]);
    let err = data::decode_bytes(&meta, windowing).unwrap_err().to_string();
    assert!(err.starts_with("element (0002,0012) declares 65535 bytes"), "{err}");
    let deflated = {
        use dicom_encoding::TransferSyntaxIndex;
        use dicom_encoding::transfer_syntax::Codec;
        use std::io::Write;
        let registry = dicom_transfer_syntax_registry::TransferSyntaxRegistry;
        let Codec::Dataset(Some(adapter)) = registry.get("1.2.840.10008.1.2.1.99").unwrap().codec() else {
            panic!("deflate is built in")
        };
        let mut out = Vec::new();
        let mut z = adapter.adapt_writer(Box::new(&mut out));
        z.write_all(&ds).unwrap();
        drop(z);
        out
    };
    let err = data::decode_bytes(&dicom_bytes("1.2.840.10008.1.2.1.99", &deflated), windowing).unwrap_err();
    assert!(err.to_string().starts_with("element (7FE0,0010) declares 4294967280"), "{err}");
    // Second find: the basic offset table (first item of encapsulated pixel data), which
    // dicom-rs reserves as that many u32 values: 672 MiB declared asked for 2.6 GiB. Later
    // fragments may run past the end of a cut file (it is read as far as it goes).
    let mut encapsulated = vec![0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF];
    encapsulated.extend([0xFE, 0xFF, 0x00, 0xE0]);
    encapsulated.extend(0x2A00_0000u32.to_le_bytes());
    encapsulated.extend([0u8; 64]);
    let err = data::decode_bytes(&dicom_bytes("1.2.840.10008.1.2.5", &encapsulated), windowing).unwrap_err();
    assert!(err.to_string().starts_with("element (FFFE,E000) declares 704643072 bytes"), "{err}");
    // Third find: a UL of 2 bytes. dicom-rs reads binary numbers whole (none here) and takes
    // the 2 bytes left for the next header, whose "length" then came from the pixel data
    // header after it; the check follows dicom-rs there.
    let mut short_ul = vec![0x28, 0x00, 0x02, 0x01, b'U', b'L', 2, 0, 0, 0];
    short_ul.extend(&encapsulated[..12]);
    short_ul.extend([0u8; 64]);
    let err = data::decode_bytes(&dicom_bytes("1.2.840.10008.1.2.5", &short_ul), windowing).unwrap_err();
    assert!(err.to_string().starts_with("element (0000,7FE0) declares 4294901760 bytes"), "{err}");
}

/// Fourth find of fuzzing: dicom-rs sizes an RLE frame's segment table by the count in its
/// first 4 bytes before anything else (16 GiB for a damaged count); more than 15 is refused.
#[test]
fn rle_segment_counts_beyond_15_are_refused() {
    let mut bytes = std::fs::read(file("cr_rle.dcm")).unwrap();
    let at = bytes.windows(4).rposition(|w| w == [0xE0, 0x7F, 0x10, 0x00]).unwrap();
    let table = u32::from_le_bytes(bytes[at + 16..at + 20].try_into().unwrap()) as usize;
    let frame = at + 20 + table + 8;
    assert_eq!(bytes[frame..frame + 4], [2, 0, 0, 0], "16-bit grey: two segments");
    bytes[frame..frame + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    let err = data::decode_bytes(&bytes, Windowing::default()).unwrap_err().to_string();
    assert_eq!(err, "RLE frame header declares 4294967280 segments (at most 15)");
}

/// An edit of the display image written back as stored values (what `nodule_gan insert` does
/// to a DICOM): every pixel left alone keeps its raw value, and the edited ones display as
/// edited through the file's own window, LUT or fallback, to one grey level.
#[rstest]
#[case::cr_15bit_mono1_window("RG1_UNCR.dcm")]
#[case::cr_15bit_mono1_voi_lut("cr_voi_lut.dcm")]
#[case::dx_12bit_mono1_window("dx_chest_mono1_12bit_j2kr.dcm")]
#[case::dx_16bit_mono2_window("dx_chest_mono2_16bit_j2kr.dcm")]
#[case::dx_8bit_no_window("nih_dx_implicit_vr.dcm")]
#[case::signed_rescaled("dx16_signed_rescaled.dcm")]
fn an_edit_written_back_displays_as_edited(#[case] name: &str) {
    use chess::data::dicom_write::{DerivedImage, DerivedPixels, write_derived_dicom};
    let path = file(name);
    let px = dicom::read(&path).unwrap();
    let (display, how) = px.display(Windowing::default());
    let (w, h) = (px.info.columns as usize, px.info.rows as usize);
    // Two 40 x 40 boxes: one in the image, one around its darkest pixel (clipped by the window
    // or the fallback range wherever the file has such pixels).
    let darkest = (0..w * h).min_by(|&a, &b| display[a].total_cmp(&display[b])).unwrap();
    let corner = |c: usize, n: usize| c.saturating_sub(20).min(n - 40);
    let boxes = [(w / 3, h / 3), (corner(darkest % w, w), corner(darkest / w, h))];
    let inside = |i: usize| {
        boxes.iter().any(|&(x, y)| (x..x + 40).contains(&(i % w)) && (y..y + 40).contains(&(i / w)))
    };
    let clipped = (0..w * h).filter(|&i| inside(i) && (display[i] <= 0.0 || display[i] >= 255.0)).count();
    // A checkerboard of +-25 grey levels in the boxes.
    let edited: Vec<f32> = display
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            if inside(i) {
                (d + if (i % w + i / w) % 2 == 0 { 25.0 } else { -25.0 }).clamp(0.0, 255.0)
            } else {
                d
            }
        })
        .collect();
    let stored = px.stored_after_edit(Windowing::default(), &display, &edited);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("edited.dcm");
    let image = DerivedImage {
        pixels: DerivedPixels::Stored(&stored),
        width: w,
        height: h,
        kind: "EDITED",
        derivation: "test edit",
    };
    write_derived_dicom(&path, &out, &image).unwrap();
    let back = dicom::read(&out).unwrap();
    assert_eq!(
        (
            back.info.bits_stored,
            back.info.signed,
            &back.info.photometric,
            back.info.rescale_slope,
            back.info.window
        ),
        (px.info.bits_stored, px.info.signed, &px.info.photometric, px.info.rescale_slope, px.info.window)
    );
    let (again, how_again) = back.display(Windowing::default());
    assert_eq!(how_again, how, "the same display mapping");
    let (mut worst, mut moved) = (0f32, 0usize);
    for i in 0..w * h {
        if inside(i) {
            worst = worst.max((again[i] - edited[i]).abs());
            moved += usize::from(back.values[i] != px.values[i]);
        } else {
            assert_eq!(back.values[i], px.values[i], "pixel {i} outside the edit");
        }
    }
    eprintln!(
        "{name}: {how}; worst display error in the edit {worst:.3} ({clipped} clipped pixels edited), {moved} raw values moved"
    );
    assert!(worst <= 1.0, "edited pixels display {worst} grey levels off");
    assert!(moved > 1600, "only {moved} raw values moved");
}
