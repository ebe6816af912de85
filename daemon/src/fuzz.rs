//! Fuzz targets for the daemon's parsers of request bodies, which any
//! allowed client controls: the KServe v2 inference request (JSON, and the
//! binary tensor extension with `Inference-Header-Content-Length`) and the
//! OpenAI request. Each target takes arbitrary bytes, must never panic, and
//! asserts the parser's invariants itself. docs/development/fuzzing.md has
//! the list; proptest drives them in `cargo test`, libFuzzer in `make fuzz`.
#![forbid(unsafe_code)]

pub use crate::server::kserve::fuzz::{KSERVE_JSON, kserve_body, kserve_request, sample_kserve};
pub use crate::server::openai::fuzz::{OPENAI_SAMPLES, openai_request};
pub use deepseek_integrity::fuzz::{cases, mutate};

/// The seed inputs of every target, `(target, bytes)`.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut json = vec![0];
    json.extend_from_slice(
        KSERVE_JSON
            .replace(
                r#","parameters":{"binary_data_size":7}"#,
                r#","data":["abc"]"#,
            )
            .as_bytes(),
    );
    let mut seeds = vec![
        ("kserve_request", sample_kserve()),
        ("kserve_request", json),
    ];
    seeds.extend(
        OPENAI_SAMPLES
            .iter()
            .map(|s| ("openai_request", s.as_bytes().to_vec())),
    );
    seeds.extend(deepseek_audit::fuzz::seeds());
    seeds.extend(deepseek_integrity::fuzz::seeds());
    seeds
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::engine::TensorData;
    use crate::server::kserve::wire::decode_request;

    fn ops() -> impl Strategy<Value = Vec<(u8, u32, u32)>> {
        proptest::collection::vec(any::<(u8, u32, u32)>(), 1..8)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases(256)))]

        #[test]
        fn fuzz_kserve_request_arbitrary(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            kserve_request(&bytes);
        }

        #[test]
        fn fuzz_kserve_request_mutated(ops in ops()) {
            kserve_request(&mutate(&sample_kserve(), &ops));
            // The same as plain JSON (no binary part).
            kserve_request(&mutate(&seeds()[1].1, &ops));
        }

        /// Every datatype with values at its edges, as numbers and strings.
        #[test]
        fn fuzz_kserve_request_values(
            datatype in proptest::sample::select(&["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "BF16", "FP32", "FP64", "BYTES"][..]),
            values in proptest::collection::vec(prop_oneof![
                any::<f64>().prop_map(|v| serde_json::Number::from_f64(v).map_or_else(|| json!("NaN"), Value::Number)),
                any::<f32>().prop_map(|v| serde_json::Number::from_f64(f64::from(v)).map_or_else(|| json!("Infinity"), Value::Number)),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<bool>().prop_map(Value::from),
                "[a-zA-Z\\u{a0}-\\u{10ffff}]{0,4}".prop_map(Value::from),
                Just(json!("-Infinity")),
            ], 0..6),
        ) {
            let body = json!({"inputs": [{"name": "x", "shape": [values.len()], "datatype": datatype, "data": values}]});
            kserve_body(&serde_json::to_vec(&body).expect("serializes"), None);
        }

        #[test]
        fn fuzz_openai_request_arbitrary(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            openai_request(&bytes);
        }

        #[test]
        fn fuzz_openai_request_mutated(ops in ops(), sample in proptest::sample::select(OPENAI_SAMPLES)) {
            openai_request(&mutate(sample.as_bytes(), &ops));
        }
    }

    /// `cargo test -p deepseekd --lib write_seed_corpus -- --ignored`
    /// rewrites fuzz/corpus/TARGET/seed-N (committed) from [`seeds`].
    #[test]
    #[ignore = "writes fuzz/corpus"]
    fn write_seed_corpus() {
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        let mut counts = std::collections::BTreeMap::new();
        for (target, bytes) in seeds() {
            let n = counts.entry(target).or_insert(0);
            let dir = corpus.join(target);
            std::fs::create_dir_all(&dir).expect("corpus directory");
            std::fs::write(dir.join(format!("seed-{n}")), bytes).expect("seed");
            *n += 1;
        }
    }

    /// Found by `kserve_request`: serde_json's default float parsing is
    /// off by an ulp at times, so a KServe JSON tensor did not decode to
    /// the values the client sent (9.337101078450877e17 as FP64 became
    /// 9.337101078450876e17). serde_json's `float_roundtrip` fixes it.
    #[test]
    fn json_floats_decode_to_the_nearest_value() {
        let texts = [
            "9.337101078450877e17",
            "2.2250738585072014e-308",
            "0.1",
            "1.7976931348623157e308",
            "3.4028235e38",
            "1.5e-7",
        ];
        for text in texts {
            let body = format!(
                r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"FP64","data":[{text}]}},{{"name":"y","shape":[1],"datatype":"FP32","data":[{text}]}}]}}"#
            );
            let request = decode_request(body.as_bytes(), None).expect("decodes");
            let nearest: f64 = text.parse().expect("a float");
            assert_eq!(
                request.inputs[0].data,
                TensorData::Fp64(vec![nearest]),
                "{text}"
            );
            let nearest: f32 = text.parse().expect("a float");
            assert_eq!(
                request.inputs[1].data,
                TensorData::Fp32(vec![nearest]),
                "{text}"
            );
        }
    }

    #[test]
    fn the_seeds_are_accepted() {
        let data = sample_kserve();
        decode_request(&data[5..], Some(KSERVE_JSON.len())).expect("the KServe seed decodes");
        kserve_request(&data);
        for sample in OPENAI_SAMPLES {
            crate::server::openai::fuzz::parses(sample.as_bytes());
            openai_request(sample.as_bytes());
        }
    }
}
