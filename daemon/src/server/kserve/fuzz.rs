//! The fuzz target `kserve_request` (docs/development/fuzzing.md): the
//! inference request body, JSON and binary. Here, beside the codec it
//! drives; `crate::fuzz` re-exports it.

use serde_json::{Value, json};

use super::codec::{self, Json};
use super::wire::{InferRequest, decode_request};
use crate::engine::{NamedTensor, TensorData};

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
            assert!(!message.to_string().is_empty());
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
            codec::write_binary(&input.data, &mut data);
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
                "data": Json(&input.data),
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
            codec::write_binary(&x.data, &mut p);
            codec::write_binary(&y.data, &mut q);
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
