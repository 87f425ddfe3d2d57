//! Any byte string given to the image decoders (DICOM of every supported transfer syntax,
//! headerless data sets, 12-bit JPEG extended, PNG, JPEG, TIFF) yields an image or an error:
//! never a panic outside the decoder guard, a hang or an allocation beyond a sane bound.
#![no_main]
use chess::data::{WindowFallback, Windowing, decode_bytes, jpeg_extended};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Both windowing policies, chosen by the input so that runs are reproducible.
    let windowing = Windowing {
        ignore_file: data.len() % 2 == 1,
        fallback: if data.len() % 4 >= 2 { WindowFallback::MinMax } else { WindowFallback::Percentile },
    };
    if let Ok(img) = decode_bytes(data, windowing) {
        assert_eq!(img.pixels.len(), img.width as usize * img.height as usize);
    }
    // Our own 12-bit JPEG decoder, directly: inside `decode_bytes` it runs in the guard.
    if data.starts_with(&[0xFF, 0xD8]) {
        let _ = jpeg_extended::decode(data);
    }
});
