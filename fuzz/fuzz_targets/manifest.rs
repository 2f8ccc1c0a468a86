//! Any bytes as a manifest: parsed, sealed and validated, or refused; never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = walbundle::fuzzing::manifest(data);
});
