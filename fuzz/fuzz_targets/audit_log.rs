#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| deepseek_audit::fuzz::audit_log(data));
