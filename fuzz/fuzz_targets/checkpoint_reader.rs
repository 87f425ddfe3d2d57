//! Any byte string given to the checkpoint reader yields a value or an error: never a panic,
//! a hang or an allocation beyond what the input can back.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ckpt) = chess::checkpoint::load_bytes(data) {
        let _ = ckpt.tensors();
    }
});
