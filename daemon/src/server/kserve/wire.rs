//! The KServe v2 / Open Inference Protocol inference request and response
//! bodies, with the binary tensor data extension: decoded into the engine's
//! tensors, and encoded from them within `server.max_response_bytes`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::codec::{self, Json};
use crate::engine::{DataType, NamedTensor};
use crate::server::http::Bounded;

/// The header that carries the length of the JSON part of a binary request
/// or response.
pub(crate) const HEADER_LENGTH: &str = "inference-header-content-length";

/// A decoded inference request.
#[derive(Debug)]
pub(crate) struct InferRequest {
    pub id: Option<String>,
    pub inputs: Vec<NamedTensor>,
    /// Outputs asked for, in order (empty: all), each with whether it should
    /// come back as binary data.
    pub outputs: Vec<(String, bool)>,
    /// `binary_data_output`: every output binary unless it says otherwise.
    pub binary_by_default: bool,
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(borrow)]
    inputs: Vec<RawInput<'a>>,
    #[serde(default)]
    outputs: Vec<RawOutput>,
}

#[derive(Deserialize)]
struct RawInput<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// Reads a boolean parameter; absent is `None`, any other type an error.
fn bool_parameter(
    parameters: &Map<String, Value>,
    key: &str,
    owner: &str,
) -> Result<Option<bool>, String> {
    match parameters.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(format!(
            "{owner}: parameter {key:?} must be a boolean, got {other}"
        )),
    }
}

/// A request body that cannot be decoded; the message names the input,
/// output or parameter at fault.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct DecodeError(String);

/// Decodes a request body. `json_length` is the value of
/// `Inference-Header-Content-Length`, when the client sent binary data.
pub(crate) fn decode_request(
    body: &[u8],
    json_length: Option<usize>,
) -> Result<InferRequest, DecodeError> {
    decode(body, json_length).map_err(DecodeError)
}

fn decode(body: &[u8], json_length: Option<usize>) -> Result<InferRequest, String> {
    let (json, mut binary) = match json_length {
        Some(len) if len > body.len() => {
            return Err(format!(
                "Inference-Header-Content-Length is {len} but the body has only {} bytes",
                body.len()
            ));
        }
        Some(len) => body.split_at(len),
        None => (body, &[][..]),
    };
    let raw: RawRequest<'_> =
        serde_json::from_slice(json).map_err(|e| format!("invalid request JSON: {e}"))?;
    let binary_by_default =
        bool_parameter(&raw.parameters, "binary_data_output", "request")?.unwrap_or(false);
    let mut inputs = Vec::with_capacity(raw.inputs.len());
    for input in raw.inputs {
        let owner = format!("input {:?}", input.name);
        let datatype = DataType::from_name(&input.datatype).ok_or_else(|| {
            format!(
                "{owner}: unknown datatype {:?}; expected one of {}",
                input.datatype,
                DataType::ALL
                    .iter()
                    .map(|d| d.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let count = element_count(&input.shape).map_err(|e| format!("{owner}: {e}"))?;
        let data = match (input.parameters.get("binary_data_size"), input.data) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{owner}: has both \"data\" and binary_data_size; send one"
                ));
            }
            (None, None) => {
                return Err(format!("{owner}: has no \"data\" and no binary_data_size"));
            }
            (Some(size), None) => {
                let size = size
                    .as_u64()
                    .and_then(|s| usize::try_from(s).ok())
                    .ok_or_else(|| {
                        format!(
                            "{owner}: binary_data_size must be a non-negative integer, got {size}"
                        )
                    })?;
                if size > binary.len() {
                    return Err(format!(
                        "{owner}: binary_data_size is {size} but only {} bytes of binary data remain",
                        binary.len()
                    ));
                }
                let (bytes, rest) = binary.split_at(size);
                binary = rest;
                codec::read_binary(datatype, bytes)
                    .map_err(|e| format!("{owner} ({datatype} binary data): {e}"))?
            }
            (None, Some(data)) => codec::decode_json_data(datatype, data.get(), count)
                .map_err(|e| format!("{owner} ({datatype} data): {e}"))?,
        };
        if data.len() != count {
            return Err(format!(
                "{owner}: shape {:?} needs {count} elements, the data has {}",
                input.shape,
                data.len()
            ));
        }
        inputs.push(NamedTensor {
            name: input.name,
            shape: input.shape,
            data,
        });
    }
    if !binary.is_empty() {
        return Err(format!(
            "{} bytes of binary data follow the last input that declared binary_data_size",
            binary.len()
        ));
    }
    let outputs = raw
        .outputs
        .into_iter()
        .map(|output| {
            let owner = format!("output {:?}", output.name);
            let binary = bool_parameter(&output.parameters, "binary_data", &owner)?
                .unwrap_or(binary_by_default);
            Ok((output.name, binary))
        })
        .collect::<Result<_, String>>()?;
    Ok(InferRequest {
        id: raw.id,
        inputs,
        outputs,
        binary_by_default,
    })
}

/// The number of elements a shape holds, refusing negative dimensions and overflow.
fn element_count(shape: &[i64]) -> Result<usize, String> {
    shape.iter().try_fold(1usize, |count, &dim| {
        let dim = usize::try_from(dim)
            .map_err(|_| format!("shape {shape:?} has a negative dimension"))?;
        count.checked_mul(dim).ok_or_else(|| {
            format!("shape {shape:?} holds more elements than this machine can address")
        })
    })
}

/// One output tensor of a response.
#[derive(Serialize)]
struct ResponseOutput<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Json<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParameters>,
}

#[derive(Serialize)]
struct BinaryParameters {
    binary_data_size: usize,
}

#[derive(Serialize)]
struct Response<'a> {
    model_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<ResponseOutput<'a>>,
}

/// An encoded response body, and the JSON length to send in
/// `Inference-Header-Content-Length` when binary data follows it.
#[derive(Debug)]
pub(crate) struct EncodedResponse {
    pub body: Vec<u8>,
    pub json_length: Option<usize>,
}

/// The response would be larger than `server.max_response_bytes`.
#[derive(Debug, thiserror::Error)]
#[error(
    "the response would exceed the limit of {limit} bytes (server.max_response_bytes); \
     ask for fewer outputs or send fewer elements"
)]
pub(crate) struct ResponseTooLarge {
    pub limit: usize,
}

/// Encodes the outputs, each as JSON `data` or as binary data after the JSON
/// according to `binary` (same order as `outputs`), into one buffer of at
/// most `limit` bytes. What cannot fit is refused before the buffer grows
/// past the limit: binary sizes are exact and every JSON element takes at
/// least two bytes, so most oversized answers are refused before encoding.
pub(crate) fn encode_response(
    model_name: &str,
    id: Option<&str>,
    outputs: &[NamedTensor],
    binary: &[bool],
    limit: usize,
) -> Result<EncodedResponse, ResponseTooLarge> {
    let too_large = ResponseTooLarge { limit };
    let mut binary_len = 0usize;
    let mut at_least = 0usize;
    let mut entries = Vec::with_capacity(outputs.len());
    for (output, &as_binary) in outputs.iter().zip(binary) {
        let (data, parameters) = if as_binary {
            let size = codec::binary_len(&output.data);
            binary_len = binary_len.saturating_add(size);
            at_least = at_least.saturating_add(size);
            (
                None,
                Some(BinaryParameters {
                    binary_data_size: size,
                }),
            )
        } else {
            at_least = at_least.saturating_add(output.data.len().saturating_mul(2));
            (Some(Json(&output.data)), None)
        };
        entries.push(ResponseOutput {
            name: &output.name,
            datatype: output.data.datatype().name(),
            shape: &output.shape,
            data,
            parameters,
        });
    }
    if at_least > limit {
        return Err(too_large);
    }
    let response = Response {
        model_name,
        id,
        outputs: entries,
    };
    let mut body = Vec::new();
    let json_limit = limit - binary_len;
    match serde_json::to_writer(Bounded::new(&mut body, json_limit), &response) {
        Ok(()) => {}
        Err(e) if e.is_io() => return Err(too_large),
        Err(e) => unreachable!("a response serializes (all keys are strings): {e}"),
    }
    let json_length = (binary.iter().any(|&b| b)).then_some(body.len());
    body.reserve_exact(binary_len);
    for (output, _) in outputs.iter().zip(binary).filter(|(_, b)| **b) {
        codec::write_binary(&output.data, &mut body);
    }
    Ok(EncodedResponse { body, json_length })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::TensorData;

    fn decode(json: &str) -> Result<InferRequest, String> {
        decode_request(json.as_bytes(), None).map_err(|e| e.to_string())
    }

    #[test]
    fn nested_and_flat_data_decode_alike() {
        let nested = decode(
            r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3.5,-4]]}]}"#,
        )
        .expect("nested decodes");
        let flat = decode(
            r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3.5,-4]}]}"#,
        )
        .expect("flat decodes");
        assert_eq!(nested.inputs, flat.inputs);
        assert_eq!(
            flat.inputs[0].data,
            TensorData::Fp32(vec![1.0, 2.0, 3.5, -4.0])
        );
    }

    #[test]
    fn element_count_must_match_shape() {
        let err = decode(
            r#"{"inputs":[{"name":"x","shape":[2,3],"datatype":"INT64","data":[1,2,3,4,5]}]}"#,
        )
        .expect_err("short data");
        assert_eq!(
            err,
            "input \"x\": shape [2, 3] needs 6 elements, the data has 5"
        );
    }

    #[test]
    fn out_of_range_and_wrong_kind_values_are_located() {
        let err =
            decode(r#"{"inputs":[{"name":"x","shape":[2],"datatype":"UINT8","data":[1,300]}]}"#)
                .expect_err("300 is no u8");
        assert_eq!(
            err, "input \"x\" (UINT8 data): element 1: 300 is not a valid value of this datatype",
            "{err}"
        );
        let err = decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["a"]}]}"#)
            .expect_err("string is no float");
        assert!(
            err.contains("element 0: \"a\" is not a valid value"),
            "{err}"
        );
    }

    #[test]
    fn unknown_datatype_lists_the_valid_ones() {
        let err = decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FLOAT","data":[1]}]}"#)
            .expect_err("FLOAT is not KServe");
        assert!(
            err.starts_with("input \"x\": unknown datatype \"FLOAT\"; expected one of BOOL, UINT8"),
            "{err}"
        );
    }

    #[test]
    fn binary_inputs_are_cut_from_the_tail_in_order() {
        let json = r#"{"inputs":[
            {"name":"a","shape":[2],"datatype":"INT16","parameters":{"binary_data_size":4}},
            {"name":"b","shape":[1],"datatype":"FP64","data":[0.5]},
            {"name":"c","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":7}}]}"#;
        let mut body = json.as_bytes().to_vec();
        body.extend_from_slice(&[1, 0, 0xff, 0xff]);
        body.extend_from_slice(&[3, 0, 0, 0, b'a', b'b', b'c']);
        let request = decode_request(&body, Some(json.len())).expect("decodes");
        assert_eq!(request.inputs[0].data, TensorData::Int16(vec![1, -1]));
        assert_eq!(request.inputs[1].data, TensorData::Fp64(vec![0.5]));
        assert_eq!(
            request.inputs[2].data,
            TensorData::Bytes(vec!["abc".into()])
        );
        let err = super::decode(&body[..body.len() - 1], Some(json.len())).expect_err("short");
        assert_eq!(
            err,
            "input \"c\": binary_data_size is 7 but only 6 bytes of binary data remain"
        );
    }

    #[test]
    fn response_puts_binary_outputs_after_the_json() {
        let outputs = vec![
            NamedTensor {
                name: "y".into(),
                shape: vec![2],
                data: TensorData::Fp32(vec![1.5, 2.0]),
            },
            NamedTensor {
                name: "n".into(),
                shape: vec![1],
                data: TensorData::Int8(vec![-1]),
            },
        ];
        let encoded =
            encode_response("m", Some("r1"), &outputs, &[true, false], 1 << 20).expect("fits");
        let json_length = encoded.json_length.expect("binary response");
        let json: Value = serde_json::from_slice(&encoded.body[..json_length]).expect("json");
        assert_eq!(json["id"], "r1");
        assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(json["outputs"][1]["data"], serde_json::json!([-1]));
        assert_eq!(
            &encoded.body[json_length..],
            &[0, 0, 0xc0, 0x3f, 0, 0, 0, 0x40]
        );
    }

    #[test]
    fn the_response_limit_is_exact_for_json_and_binary() {
        let outputs = vec![NamedTensor {
            name: "y".into(),
            shape: vec![3],
            data: TensorData::Int32(vec![1, 2, 3]),
        }];
        for binary in [true, false] {
            let whole = encode_response("m", None, &outputs, &[binary], usize::MAX)
                .expect("unbounded")
                .body
                .len();
            let at_limit =
                encode_response("m", None, &outputs, &[binary], whole).expect("fits exactly");
            assert_eq!(at_limit.body.len(), whole);
            let err = encode_response("m", None, &outputs, &[binary], whole - 1)
                .expect_err("one byte over");
            assert_eq!(err.limit, whole - 1);
        }
        // Refused from the element count alone, before encoding.
        let huge = vec![NamedTensor {
            name: "y".into(),
            shape: vec![1000],
            data: TensorData::Int8(vec![0; 1000]),
        }];
        assert!(encode_response("m", None, &huge, &[false], 1999).is_err());
        assert!(encode_response("m", None, &huge, &[true], 999).is_err());
    }

    /// Fuzz smoke for the request decoder, which reads bytes from any
    /// allowed client: arbitrary bodies and header lengths, and valid
    /// requests with bytes flipped, must give an error or a request, never a
    /// panic (or an allocation sized by the client's claimed shape).
    mod fuzz {
        use proptest::prelude::*;

        use super::super::decode_request;

        const VALID: &str = r#"{"id":"a","inputs":[{"name":"x","shape":[2,2],"datatype":"FP16","data":[[1,2],[3,"NaN"]]},{"name":"s","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":7}}],"outputs":[{"name":"y","parameters":{"binary_data":true}}],"parameters":{"binary_data_output":false}}"#;

        fn valid_body() -> Vec<u8> {
            let mut body = VALID.as_bytes().to_vec();
            body.extend_from_slice(&[3, 0, 0, 0, b'a', b'b', b'c']);
            body
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512), len in proptest::option::of(0usize..600)) {
                let _ = decode_request(&body, len);
            }

            #[test]
            fn mutated_valid_requests_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), len_delta in -8i64..8) {
                let mut body = valid_body();
                for (index, byte) in flips {
                    let i = index.index(body.len());
                    body[i] = byte;
                }
                let len = usize::try_from(VALID.len() as i64 + len_delta).ok();
                let _ = decode_request(&body, len);
            }

            #[test]
            fn huge_claimed_shapes_are_refused_not_allocated(dim in 1u64 << 20..u64::MAX) {
                let body = format!(r#"{{"inputs":[{{"name":"x","shape":[{dim},{dim}],"datatype":"FP32","data":[1]}}]}}"#);
                prop_assert!(decode_request(body.as_bytes(), None).is_err());
            }
        }

        #[test]
        fn the_seed_request_is_valid() {
            let body = valid_body();
            decode_request(&body, Some(VALID.len())).expect("seed decodes");
        }
    }
}
