#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| zstore_fuzz::strings(data));
