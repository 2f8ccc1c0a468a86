//! A bundle's header fields and uncompressed body, made checksum-consistent, so mutations reach
//! the record decoder; decoded fully or refused, never a panic or unbounded allocation.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = walbundle::fuzzing::bundle_raw(data);
});
