//! Any bytes as a bundle file: decoded fully or refused, never a panic or unbounded allocation.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = walbundle::fuzzing::bundle(data);
});
