//! Panics of third-party decoders caught without a word on stderr.
//!
//! dicom-rs panics on some damaged files (a truncated RLE Lossless frame, for one). The decoders
//! catch that and return an error, which the caller prints as one line naming the file; but
//! Rust's default panic hook would still print the panic message (and, with `RUST_BACKTRACE=1`,
//! a backtrace) before the catch, once per bad file and decode thread. [`catch_quietly`] runs a
//! closure under a panic hook that is silent while the current thread is inside it, and hands
//! every other panic to the hook that was installed before (the default one, or libFuzzer's,
//! which aborts), so panics elsewhere still print, and still abort a fuzz run.
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe, PanicHookInfo};
use std::sync::Once;

thread_local! {
    /// How many [`catch_quietly`] calls the current thread is inside.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

static INSTALL: Once = Once::new();

/// Installs, once per process, the hook that is silent inside [`catch_quietly`] and delegates
/// to the previously installed hook everywhere else. A hook set later by someone else replaces
/// it (and then guarded panics print again, but are still caught).
fn install_hook() {
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info: &PanicHookInfo<'_>| {
            let guarded = DEPTH.try_with(Cell::get).unwrap_or(0) > 0;
            if !guarded || reported_under_fuzzing(info) {
                previous(info);
            }
        }));
    });
}

/// Under a fuzzer (`cfg(fuzzing)`, which cargo-fuzz sets), a panic raised by this crate's own
/// code still goes to the fuzzer's hook even inside the guard: the guard is for damaged input
/// that trips third-party decoders (crates.io sources), not for hiding our own bugs.
#[cfg(fuzzing)]
fn reported_under_fuzzing(info: &PanicHookInfo<'_>) -> bool {
    info.location().is_some_and(|l| {
        let file = l.file().replace('\\', "/");
        !file.contains("/.cargo/registry/") && !file.contains("/.cargo/git/") && !file.starts_with("/rustc/")
    })
}

#[cfg(not(fuzzing))]
fn reported_under_fuzzing(_: &PanicHookInfo<'_>) -> bool {
    false
}

/// Decrements the depth when the guarded call ends, by return or by unwinding.
struct Depth;

impl Depth {
    fn enter() -> Self {
        DEPTH.with(|d| d.set(d.get() + 1));
        Depth
    }
}

impl Drop for Depth {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get() - 1));
    }
}

/// Runs `f`, catching a panic as `Err(message)` without printing anything. Other threads, and
/// this one outside the call, keep their normal panic output.
pub fn catch_quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_hook();
    let _depth = Depth::enter();
    // Callers hand over what they own or read only; nothing half-updated outlives the call.
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into())
    })
}

#[cfg(test)]
mod tests {
    use super::catch_quietly;

    #[test]
    fn returns_the_value_or_the_panic_message() {
        assert_eq!(catch_quietly(|| 7), Ok(7));
        let n = 3;
        assert_eq!(catch_quietly(|| -> u8 { panic!("bad frame {n}") }), Err("bad frame 3".into()));
        assert_eq!(catch_quietly(|| -> u8 { panic!("static") }), Err("static".into()));
        // Nested guards unwind their depth properly: after both, the thread is unguarded again.
        let inner = catch_quietly(|| catch_quietly(|| -> u8 { panic!("inner") }));
        assert_eq!(inner, Ok(Err("inner".into())));
        assert_eq!(super::DEPTH.with(std::cell::Cell::get), 0);
    }
}
