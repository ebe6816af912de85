//! Fuzz targets for the daemon's parsers of request bodies, which any
//! allowed client controls: the KServe v2 inference request (JSON, and the
//! binary tensor extension with `Inference-Header-Content-Length`) and the
//! OpenAI request. Each target takes arbitrary bytes, must never panic, and
//! asserts the parser's invariants itself. docs/development/fuzzing.md has
//! the list; proptest drives them in `cargo test`, libFuzzer in `make fuzz`.

use serde_json::{Value, json};

use crate::engine::{NamedTensor, TensorData};
use crate::server::kserve::{InferRequest, decode_request};

pub use crate::server::openai::fuzz::openai_request;
pub use deepseek_integrity::fuzz::{cases, mutate};

/// A request of every shape the decoder handles: nested FP16 data with a
/// special float, a BYTES input in binary, outputs with parameters.
pub const KSERVE_JSON: &str = r#"{"id":"a","inputs":[{"name":"x","shape":[2,2],"datatype":"FP16","data":[[1,2],[3,"NaN"]]},{"name":"f","shape":[3],"datatype":"FP32","data":[1.5e-7,-0.0,"-Infinity"]},{"name":"b","shape":[1],"datatype":"BOOL","data":[true]},{"name":"s","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":7}}],"outputs":[{"name":"y","parameters":{"binary_data":true}}],"parameters":{"binary_data_output":false}}"#;

/// [`KSERVE_JSON`] with its binary part: the seed of `kserve_request`,
/// as that target reads its input (see [`kserve_request`]).
pub fn sample_kserve() -> Vec<u8> {
    let mut data = vec![1];
    data.extend_from_slice(&(KSERVE_JSON.len() as u32).to_le_bytes());
    data.extend_from_slice(KSERVE_JSON.as_bytes());
    data.extend_from_slice(&[3, 0, 0, 0, b'a', b'b', b'c']);
    data
}

/// Target `kserve_request`. The first byte picks the framing: odd, the
/// next four bytes (little-endian) are `Inference-Header-Content-Length`
/// and the rest the body; even, the rest is a JSON body. See
/// [`kserve_body`] for what is asserted.
pub fn kserve_request(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match rest.split_first_chunk::<4>() {
        Some((length, body)) if mode & 1 == 1 => {
            kserve_body(body, Some(u32::from_le_bytes(*length) as usize));
        }
        _ => kserve_body(rest, None),
    }
}

/// A body is decoded or refused with a message, never a panic. A decoded
/// request has exactly as many elements as each shape says, no more in all
/// than the body has bytes (every element costs at least one), and comes
/// back the same through the binary extension and through JSON `data` as
/// the daemon writes it.
pub fn kserve_body(body: &[u8], json_length: Option<usize>) {
    let request = match decode_request(body, json_length) {
        Ok(request) => request,
        Err(message) => {
            assert!(!message.is_empty());
            return;
        }
    };
    let mut elements = 0usize;
    for input in &request.inputs {
        let count = input
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
            .expect("an accepted shape has non-negative dimensions that fit");
        assert_eq!(input.data.len(), count, "input {:?}", input.name);
        elements += count;
    }
    assert!(
        elements <= body.len(),
        "{elements} elements from {} bytes",
        body.len()
    );

    let (binary, length) = encode_binary(&request);
    let again = decode_request(&binary, Some(length)).expect("re-encoded as binary decodes");
    assert_same(&request, &again, true);
    let json = serde_json::to_vec(&encode_json(&request)).expect("serializes");
    let again = decode_request(&json, None).expect("re-encoded as JSON decodes");
    assert_same(&request, &again, false);
}

fn header(request: &InferRequest, inputs: Vec<Value>) -> Value {
    let outputs: Vec<Value> = request
        .outputs
        .iter()
        .map(|(name, binary)| json!({"name": name, "parameters": {"binary_data": binary}}))
        .collect();
    json!({
        "id": request.id,
        "inputs": inputs,
        "outputs": outputs,
        "parameters": {"binary_data_output": request.binary_by_default},
    })
}

/// The request with every input as binary data after the JSON.
fn encode_binary(request: &InferRequest) -> (Vec<u8>, usize) {
    let mut data = Vec::new();
    let inputs = request
        .inputs
        .iter()
        .map(|input| {
            let before = data.len();
            input.data.write_binary(&mut data);
            json!({
                "name": input.name,
                "shape": input.shape,
                "datatype": input.data.datatype().name(),
                "parameters": {"binary_data_size": data.len() - before},
            })
        })
        .collect();
    let mut body = serde_json::to_vec(&header(request, inputs)).expect("serializes");
    let length = body.len();
    body.extend_from_slice(&data);
    (body, length)
}

/// The request with every input as JSON `data`, written as the daemon
/// writes output tensors.
fn encode_json(request: &InferRequest) -> Value {
    let inputs = request
        .inputs
        .iter()
        .map(|input| {
            json!({
                "name": input.name,
                "shape": input.shape,
                "datatype": input.data.datatype().name(),
                "data": input.data,
            })
        })
        .collect();
    header(request, inputs)
}

/// The same request; elements compared bit for bit, except that through
/// JSON every NaN is the one NaN JSON can spell.
fn assert_same(a: &InferRequest, b: &InferRequest, exact: bool) {
    assert_eq!(a.id, b.id);
    assert_eq!(a.outputs, b.outputs);
    assert_eq!(a.binary_by_default, b.binary_by_default);
    assert_eq!(a.inputs.len(), b.inputs.len());
    for (x, y) in a.inputs.iter().zip(&b.inputs) {
        assert_eq!((&x.name, &x.shape), (&y.name, &y.shape));
        assert_eq!(x.data.datatype(), y.data.datatype());
        if exact || !has_nan(x) {
            let (mut p, mut q) = (Vec::new(), Vec::new());
            x.data.write_binary(&mut p);
            y.data.write_binary(&mut q);
            assert!(p == q, "input {:?} changed on the way round", x.name);
        }
    }
}

fn has_nan(tensor: &NamedTensor) -> bool {
    match &tensor.data {
        TensorData::Fp16(v) => v.iter().any(|x| x.is_nan()),
        TensorData::Bf16(v) => v.iter().any(|x| x.is_nan()),
        TensorData::Fp32(v) => v.iter().any(|x| x.is_nan()),
        TensorData::Fp64(v) => v.iter().any(|x| x.is_nan()),
        _ => false,
    }
}

/// Chat and completion bodies, with every field the parser knows: the
/// seeds of `openai_request`.
pub const OPENAI_SAMPLES: &[&str] = &[
    r#"{"model":"tiny-r1","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi"}]}],"max_tokens":16,"temperature":0.7,"top_p":0.9,"top_k":40,"min_p":0.05,"presence_penalty":0.5,"frequency_penalty":-0.5,"seed":-3,"stop":["\n\n","</s>"],"stop_token_ids":[1,2],"ignore_eos":false,"stream":true,"stream_options":{"include_usage":true},"n":1,"logprobs":false,"tools":[],"response_format":{"type":"text"},"reasoning_format":"deepseek","logit_bias":{},"user":"ignored"}"#,
    r#"{"model":"tiny-r1","prompt":"Once upon a time","max_completion_tokens":4,"stop":"\u2014","echo":false}"#,
    r#"{"model":"tiny-r1","prompt":["one"],"suffix":null,"temperature":2.0}"#,
];

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

    use super::*;

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
