#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| deepseekd::fuzz::openai_request(data));
