//! The KServe v2 API of the real daemon, over its real Unix socket, with real
//! ONNX Runtime: correct numbers for every datatype, JSON and binary, and
//! every error status with its message.

use deepseek_tests::{Daemon, get, model_table, post_binary, post_json, request};
use half::{bf16, f16};
use serde_json::{Value, json};

fn daemon() -> Daemon {
    Daemon::start(
        "max_body_bytes = 65536",
        &[
            model_table("demo", "demo.onnx", ""),
            model_table("multi", "multi.onnx", "sessions = 2"),
            model_table("types", "types.onnx", ""),
        ]
        .concat(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_metadata() {
    let d = daemon();
    let live = get(&d.socket, "/v2/health/live").await.expect("live");
    assert_eq!((live.status, live.json()), (200, json!({"live": true})));
    let ready = get(&d.socket, "/v2/health/ready").await.expect("ready");
    assert_eq!((ready.status, ready.json()), (200, json!({"ready": true})));

    let server = get(&d.socket, "/v2").await.expect("server metadata").json();
    assert_eq!(server["name"], "deepseekd");
    assert_eq!(server["extensions"], json!(["binary_tensor_data"]));
    assert_eq!(server["onnxruntime_version"], "1.31.1");

    let meta = get(&d.socket, "/v2/models/multi")
        .await
        .expect("model metadata");
    assert_eq!(meta.status, 200);
    let meta = meta.json();
    assert_eq!(meta["platform"], "onnxruntime_onnx");
    assert_eq!(
        meta["inputs"],
        json!([
            {"name": "a", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "b", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "ids", "datatype": "INT64", "shape": [-1]},
        ])
    );
    assert_eq!(
        meta["outputs"][2],
        json!({"name": "next_ids", "datatype": "INT64", "shape": [-1]})
    );
    assert_eq!(meta["parameters"]["device"], "cpu");
    assert_eq!(meta["parameters"]["cpu_fallback"], false);
    assert_eq!(meta["parameters"]["sessions"], 2);

    let model_ready = get(&d.socket, "/v2/models/demo/ready")
        .await
        .expect("model ready");
    assert_eq!(
        (model_ready.status, model_ready.json()),
        (200, json!({"name": "demo", "ready": true}))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_model_computes_the_right_numbers_from_nested_or_flat_data() {
    let d = daemon();
    for data in [
        json!([[1, 2, 3, 4], [0.5, 0, -1, 1.25]]),
        json!([1, 2, 3, 4, 0.5, 0, -1, 1.25]),
    ] {
        let body = json!({"id": "req-7", "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": data}]});
        let response = post_json(&d.socket, "/v2/models/demo/infer", &body).await;
        assert_eq!(response.status, 200, "{:?}", response.body);
        assert_eq!(response.headers["content-type"], "application/json");
        assert_eq!(
            response.json(),
            json!({
                "model_name": "demo",
                "id": "req-7",
                "outputs": [
                    {"name": "y", "datatype": "FP32", "shape": [2, 4], "data": [3.0, 5.0, 7.0, 9.0, 2.0, 1.0, -1.0, 3.5]},
                    {"name": "row_sum", "datatype": "FP32", "shape": [2, 1], "data": [24.0, 5.5]},
                ]
            })
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn several_inputs_and_selected_outputs_in_the_requested_order() {
    let d = daemon();
    let body = json!({
        "inputs": [
            {"name": "ids", "shape": [2], "datatype": "INT64", "data": [41, 9007199254740993_i64]},
            {"name": "a", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]},
            {"name": "b", "shape": [2, 3], "datatype": "FP32", "data": [0.5, 0.5, 0.5, -1, -1, -1]},
        ],
        "outputs": [{"name": "next_ids"}, {"name": "product"}],
    });
    let response = post_json(&d.socket, "/v2/models/multi/infer", &body).await;
    assert_eq!(response.status, 200, "{:?}", response.body);
    let outputs = &response.json()["outputs"];
    assert_eq!(outputs.as_array().map(Vec::len), Some(2));
    assert_eq!(
        outputs[0],
        json!({"name": "next_ids", "datatype": "INT64", "shape": [2], "data": [42, 9007199254740994_i64]})
    );
    assert_eq!(outputs[1]["data"], json!([0.5, 1.0, 1.5, -4.0, -5.0, -6.0]));
    // An empty batch is a valid batch.
    let empty = json!({"inputs": [
        {"name": "a", "shape": [0, 3], "datatype": "FP32", "data": []},
        {"name": "b", "shape": [0, 3], "datatype": "FP32", "data": []},
        {"name": "ids", "shape": [0], "datatype": "INT64", "data": []},
    ]});
    let response = post_json(&d.socket, "/v2/models/multi/infer", &empty).await;
    assert_eq!(response.status, 200, "{:?}", response.body);
    assert_eq!(response.json()["outputs"][0]["shape"], json!([0, 3]));
}

/// One value list per datatype, at the edges of each type's range.
fn every_datatype() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        ("bool", "BOOL", json!([true, false, true])),
        ("uint8", "UINT8", json!([0, 255, 7])),
        ("uint16", "UINT16", json!([0, 65535, 7])),
        ("uint32", "UINT32", json!([0, 4294967295_u64, 7])),
        ("uint64", "UINT64", json!([0, 18446744073709551615_u64, 7])),
        ("int8", "INT8", json!([-128, 127, -7])),
        ("int16", "INT16", json!([-32768, 32767, -7])),
        ("int32", "INT32", json!([-2147483648_i64, 2147483647, -7])),
        (
            "int64",
            "INT64",
            json!([-9223372036854775808_i64, 9223372036854775807_i64, -7]),
        ),
        ("fp16", "FP16", json!([0.5, -65504.0, "Infinity"])),
        ("bf16", "BF16", json!([0.5, -2.0, "NaN"])),
        ("fp32", "FP32", json!([0.1, -3.4028235e38, "-Infinity"])),
        ("fp64", "FP64", json!([0.1, 1e300, -2.5])),
        ("bytes", "BYTES", json!(["", "héllo wörld", "日本"])),
    ]
}

fn types_request(binary_inputs: bool) -> (Value, Vec<u8>) {
    let mut binary = Vec::new();
    let inputs: Vec<Value> = every_datatype()
        .into_iter()
        .map(|(name, datatype, data)| {
            let mut input =
                json!({"name": format!("{name}_in"), "shape": [3], "datatype": datatype});
            if binary_inputs {
                let start = binary.len();
                encode(datatype, &data, &mut binary);
                input["parameters"] = json!({"binary_data_size": binary.len() - start});
            } else {
                input["data"] = data;
            }
            input
        })
        .collect();
    (json!({"inputs": inputs}), binary)
}

/// Little-endian binary encoding of JSON test values, written independently
/// of the daemon's own encoder.
fn encode(datatype: &str, data: &Value, out: &mut Vec<u8>) {
    for v in data.as_array().expect("array") {
        let float = || match v {
            Value::String(s) if s == "NaN" => f64::NAN,
            Value::String(s) if s == "Infinity" => f64::INFINITY,
            Value::String(s) if s == "-Infinity" => f64::NEG_INFINITY,
            _ => v.as_f64().expect("number"),
        };
        match datatype {
            "BOOL" => out.push(u8::from(v.as_bool().expect("bool"))),
            "UINT8" => out.push(u8::try_from(v.as_u64().expect("u64")).expect("u8")),
            "UINT16" => out.extend(
                u16::try_from(v.as_u64().expect("u64"))
                    .expect("u16")
                    .to_le_bytes(),
            ),
            "UINT32" => out.extend(
                u32::try_from(v.as_u64().expect("u64"))
                    .expect("u32")
                    .to_le_bytes(),
            ),
            "UINT64" => out.extend(v.as_u64().expect("u64").to_le_bytes()),
            "INT8" => out.extend(
                i8::try_from(v.as_i64().expect("i64"))
                    .expect("i8")
                    .to_le_bytes(),
            ),
            "INT16" => out.extend(
                i16::try_from(v.as_i64().expect("i64"))
                    .expect("i16")
                    .to_le_bytes(),
            ),
            "INT32" => out.extend(
                i32::try_from(v.as_i64().expect("i64"))
                    .expect("i32")
                    .to_le_bytes(),
            ),
            "INT64" => out.extend(v.as_i64().expect("i64").to_le_bytes()),
            "FP16" => out.extend(f16::from_f64(float()).to_le_bytes()),
            "BF16" => out.extend(bf16::from_f64(float()).to_le_bytes()),
            "FP32" => out.extend((float() as f32).to_le_bytes()),
            "FP64" => out.extend(float().to_le_bytes()),
            "BYTES" => {
                let s = v.as_str().expect("string").as_bytes();
                out.extend(u32::try_from(s.len()).expect("len").to_le_bytes());
                out.extend(s);
            }
            other => panic!("no encoder for {other}"),
        }
    }
}

/// The JSON the daemon must send back for the test values: the same values,
/// rounded to the type's precision.
fn expected_json(datatype: &str, data: &Value) -> Value {
    match datatype {
        "FP16" => json!([0.5, -65504.0, "Infinity"]),
        "BF16" => json!([0.5, -2.0, "NaN"]),
        "FP32" => json!([0.1, -3.4028235e38, "-Infinity"]),
        _ => data.clone(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_datatype_round_trips_as_json() {
    let d = daemon();
    let (body, _) = types_request(false);
    let response = post_json(&d.socket, "/v2/models/types/infer", &body).await;
    assert_eq!(response.status, 200, "{:?}", response.body);
    let json = response.json();
    for (name, datatype, data) in every_datatype() {
        let output = json["outputs"]
            .as_array()
            .expect("outputs")
            .iter()
            .find(|o| o["name"] == format!("{name}_out"))
            .unwrap_or_else(|| panic!("{name}_out missing"));
        assert_eq!(output["datatype"], datatype);
        assert_eq!(output["shape"], json!([3]));
        assert_eq!(output["data"], expected_json(datatype, &data), "{datatype}");
    }
    let not = json["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .find(|o| o["name"] == "bool_not")
        .cloned();
    assert_eq!(not.expect("bool_not")["data"], json!([false, true, false]));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_datatype_round_trips_as_binary_bit_for_bit() {
    let d = daemon();
    let (mut body, binary) = types_request(true);
    body["parameters"] = json!({"binary_data_output": true});
    let response = post_binary(&d.socket, "/v2/models/types/infer", &body, &binary).await;
    assert_eq!(
        response.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.headers["content-type"], "application/octet-stream");
    let json = response.json();
    let mut offset = 0;
    let blobs = response.binary();
    for output in json["outputs"].as_array().expect("outputs") {
        assert!(
            output.get("data").is_none(),
            "binary output has no JSON data: {output}"
        );
        let size = usize::try_from(
            output["parameters"]["binary_data_size"]
                .as_u64()
                .expect("size"),
        )
        .expect("usize");
        let blob = &blobs[offset..offset + size];
        offset += size;
        let name = output["name"].as_str().expect("name");
        if name == "bool_not" {
            assert_eq!(blob, [0, 1, 0]);
            continue;
        }
        let (_, datatype, data) = every_datatype()
            .into_iter()
            .find(|(n, _, _)| format!("{n}_out") == name)
            .expect("known output");
        let mut expected = Vec::new();
        encode(datatype, &data, &mut expected);
        assert_eq!(blob, expected, "{datatype}");
    }
    assert_eq!(offset, blobs.len(), "no trailing bytes");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_and_binary_inputs_and_outputs_mix() {
    let d = daemon();
    let a: Vec<u8> = [1.0f32, 2.0, 3.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let body = json!({
        "inputs": [
            {"name": "a", "shape": [1, 3], "datatype": "FP32", "parameters": {"binary_data_size": 12}},
            {"name": "b", "shape": [1, 3], "datatype": "FP32", "data": [10, 20, 30]},
            {"name": "ids", "shape": [1], "datatype": "INT64", "data": [1]},
        ],
        "outputs": [{"name": "sum", "parameters": {"binary_data": true}}, {"name": "next_ids"}],
    });
    let response = post_binary(&d.socket, "/v2/models/multi/infer", &body, &a).await;
    assert_eq!(
        response.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&response.body)
    );
    let json = response.json();
    assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 12);
    assert_eq!(json["outputs"][1]["data"], json!([2]));
    let sum: Vec<f32> = response
        .binary()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    assert_eq!(sum, [11.0, 22.0, 33.0]);
}

/// Posts `body` to `model` and returns the status and error message.
async fn error_of(d: &Daemon, model: &str, body: &Value) -> (u16, String) {
    let response = post_json(&d.socket, &format!("/v2/models/{model}/infer"), body).await;
    (response.status, response.error())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_400_naming_the_tensor_and_what_was_expected() {
    let d = daemon();
    let x = |shape: Value, datatype: &str, data: Value| json!({"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]});
    let cases = [
        (
            x(json!([2, 3]), "FP32", json!([1, 2, 3, 4, 5, 6])),
            "input \"x\": expected shape [-1, 4], got [2, 3]",
        ),
        (
            x(json!([4]), "FP32", json!([1, 2, 3, 4])),
            "input \"x\": expected shape [-1, 4], got [4]",
        ),
        (
            x(json!([1, 4]), "FP64", json!([1, 2, 3, 4])),
            "input \"x\": expected datatype FP32, got FP64",
        ),
        (
            x(json!([1, 4]), "FP32", json!([1, 2, 3])),
            "input \"x\": shape [1, 4] needs 4 elements, the data has 3",
        ),
        (
            x(json!([1, 4]), "FP32", json!([1, 2, "three", 4])),
            "input \"x\" (FP32 data): element 2: \"three\" is not a valid value of this datatype",
        ),
        (
            x(json!([1, 4]), "FLOAT32", json!([1, 2, 3, 4])),
            "input \"x\": unknown datatype \"FLOAT32\"",
        ),
        (
            x(json!([1, -4]), "FP32", json!([])),
            "input \"x\": shape [1, -4] has a negative dimension",
        ),
        (
            json!({"inputs": []}),
            "missing input \"x\" (FP32 [-1, 4]) for model \"demo\"",
        ),
        (
            json!({"inputs": [{"name": "z", "shape": [1], "datatype": "FP32", "data": [1]}]}),
            "model \"demo\" has no input \"z\"; its inputs are \"x\"",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}], "outputs": [{"name": "logits"}]}),
            "model \"demo\" has no output \"logits\"; its outputs are \"y\", \"row_sum\"",
        ),
        (
            json!({"input": []}),
            "invalid request JSON: missing field `inputs`",
        ),
    ];
    for (body, expected) in cases {
        let (status, error) = error_of(&d, "demo", &body).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert!(
            error.starts_with(expected),
            "{body}\n  got:      {error}\n  expected: {expected}"
        );
    }
    let (status, error) = error_of(
        &d,
        "multi",
        &json!({"inputs": [
            {"name": "a", "shape": [2, 3], "datatype": "FP32", "data": [0, 0, 0, 0, 0, 0]},
            {"name": "b", "shape": [1, 3], "datatype": "FP32", "data": [0, 0, 0]},
            {"name": "ids", "shape": [2], "datatype": "INT64", "data": [0, 0]}]}),
    )
    .await;
    assert_eq!(
        (status, error.as_str()),
        (
            400,
            "input \"b\": dimension \"batch\" is 1, but input \"a\" has \"batch\" = 2"
        )
    );

    let garbage = request(
        &d.socket,
        "POST",
        "/v2/models/demo/infer",
        &[],
        b"{not json".to_vec(),
    )
    .await
    .expect("request");
    assert_eq!(garbage.status, 400);
    assert!(
        garbage
            .error()
            .starts_with("invalid request JSON: key must be a string at line 1 column 2"),
        "{}",
        garbage.error()
    );

    let bad_header = request(
        &d.socket,
        "POST",
        "/v2/models/demo/infer",
        &[("inference-header-content-length", "12x".to_owned())],
        b"{}".to_vec(),
    )
    .await
    .expect("request");
    assert_eq!(
        (bad_header.status, bad_header.error()),
        (
            400,
            "inference-header-content-length must be a non-negative integer, got \"12x\""
                .to_owned()
        )
    );

    let short = post_binary(
        &d.socket,
        "/v2/models/demo/infer",
        &json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}),
        &[0; 12],
    )
    .await;
    assert_eq!(
        (short.status, short.error()),
        (
            400,
            "input \"x\": binary_data_size is 16 but only 12 bytes of binary data remain"
                .to_owned()
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_models_and_endpoints_get_404_and_wrong_methods_405() {
    let d = daemon();
    let response = post_json(&d.socket, "/v2/models/nope/infer", &json!({"inputs": []})).await;
    assert_eq!(response.status, 404);
    assert_eq!(
        response.error(),
        "unknown model \"nope\"; this daemon serves: demo, multi, types"
    );
    let response = get(&d.socket, "/v2/models/nope").await.expect("metadata");
    assert_eq!(response.status, 404);
    let response = get(&d.socket, "/v3/models").await.expect("v3");
    assert_eq!(
        (response.status, response.error()),
        (404, "no endpoint GET /v3/models".to_owned())
    );
    // Under /v1 (the OpenAI API) errors take OpenAI's shape.
    let response = get(&d.socket, "/v1/nothing").await.expect("v1");
    assert_eq!(response.status, 404);
    assert_eq!(
        response.json()["error"]["message"],
        "no endpoint GET /v1/nothing"
    );
    assert_eq!(response.json()["error"]["type"], "invalid_request_error");
    // A daemon without causal LMs lists none.
    let response = get(&d.socket, "/v1/models").await.expect("v1 models");
    assert_eq!(response.json(), json!({"object": "list", "data": []}));
    let response = get(&d.socket, "/v2/models/demo/infer")
        .await
        .expect("GET infer");
    assert_eq!(
        (response.status, response.error()),
        (405, "/v2/models/demo/infer does not accept GET".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_over_the_limit_get_413_and_the_daemon_keeps_serving() {
    let d = daemon();
    let data: Vec<f32> = vec![1.0; 16 * 1024];
    let body =
        json!({"inputs": [{"name": "x", "shape": [4096, 4], "datatype": "FP32", "data": data}]});
    let response = post_json(&d.socket, "/v2/models/demo/infer", &body).await;
    assert_eq!(response.status, 413);
    assert_eq!(
        response.error(),
        "request body exceeds the limit of 65536 bytes (server.max_body_bytes)"
    );
    // The refusal cost the daemon nothing: the next request is served.
    let ok = json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]});
    assert_eq!(
        post_json(&d.socket, "/v2/models/demo/infer", &ok)
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_run_answers_500_without_internal_detail_and_logs_it() {
    let d = Daemon::start(
        "",
        &model_table("reshape", "reshape.onnx", "warm_up = false"),
    );
    let body = |shape: Value| {
        json!({"inputs": [
            {"name": "x", "shape": [6], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]},
            {"name": "shape", "shape": [2], "datatype": "INT64", "data": shape},
        ]})
    };
    let failed = post_json(&d.socket, "/v2/models/reshape/infer", &body(json!([4, 4]))).await;
    assert_eq!(failed.status, 500);
    assert_eq!(
        failed.json(),
        json!({"error": "inference failed; the daemon's log has the details"})
    );
    let log = d.log();
    assert!(
        log.lines().any(|l| l.contains("inference failed")
            && l.contains("model=reshape")
            && l.contains("Reshape")),
        "ONNX Runtime's detail is in the log:\n{log}"
    );
    let ok = post_json(&d.socket, "/v2/models/reshape/infer", &body(json!([2, 3]))).await;
    assert_eq!(ok.status, 200, "the session survives a failed run");
    assert_eq!(ok.json()["outputs"][0]["shape"], json!([2, 3]));
}

#[tokio::test(flavor = "multi_thread")]
async fn any_host_header_is_accepted() {
    let d = daemon();
    for host in ["localhost", "deepseek.example", "127.0.0.1:9", "x"] {
        let mut connection = deepseek_tests::Connection::open(&d.socket)
            .await
            .expect("connect");
        let response = connection
            .send(
                "GET",
                "/v2/health/live",
                &[("host", host.to_owned())],
                bytes::Bytes::new(),
            )
            .await
            .expect("request");
        assert_eq!(response.status, 200, "Host: {host}");
    }
}
