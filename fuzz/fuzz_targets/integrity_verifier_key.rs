#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| deepseek_integrity::fuzz::integrity_verifier_key(data));
