//! The fuzz target `openai_request` (docs/development/fuzzing.md): the body
//! of `/v1/chat/completions` and `/v1/completions`, up to the point where
//! the model is needed. Here, as a child of `openai`, because the request
//! type is private; `crate::fuzz` drives it.

use axum::http::StatusCode;

use super::prepare::{asked_logprobs, refuse_unsupported};
use super::wire::{Endpoint, MAX_PARAM_BYTES, parse_body};

/// Chat and completion bodies, with every field the parser knows: the
/// seeds of `openai_request`.
pub const OPENAI_SAMPLES: &[&str] = &[
    r#"{"model":"tiny-r1","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi"}]}],"max_tokens":16,"temperature":0.7,"top_p":0.9,"top_k":40,"min_p":0.05,"presence_penalty":0.5,"frequency_penalty":-0.5,"seed":-3,"stop":["\n\n","</s>"],"stop_token_ids":[1,2],"ignore_eos":false,"stream":true,"stream_options":{"include_usage":true},"n":1,"logprobs":true,"top_logprobs":3,"tools":[],"response_format":{"type":"text"},"reasoning_format":"deepseek","logit_bias":{},"user":"ignored"}"#,
    r#"{"model":"tiny-r1","prompt":"Once upon a time","max_completion_tokens":4,"stop":"\u2014","echo":false,"logprobs":2}"#,
    r#"{"model":"tiny-r1","prompt":["one"],"suffix":null,"temperature":2.0}"#,
];

/// Any body is parsed or refused with a 400 whose error serializes and
/// names a bounded parameter (it is echoed to the client and recorded in
/// the audit log as `details.error_param`); a parsed one goes through the checks of
/// unsupported fields and of logprobs, as either endpoint. Never a panic.
pub fn openai_request(data: &[u8]) {
    match parse_body(data) {
        Ok(body) => {
            let _ = refuse_unsupported(&body);
            for endpoint in [Endpoint::Chat, Endpoint::Completions] {
                let _ = asked_logprobs(endpoint, &body);
            }
        }
        Err(error) => {
            assert_eq!(error.status, StatusCode::BAD_REQUEST);
            assert!(!error.message.is_empty());
            if let Some(param) = &error.param {
                assert!(
                    param.len() <= MAX_PARAM_BYTES,
                    "an error names a parameter of {} bytes",
                    param.len()
                );
            }
            serde_json::to_vec(&error.body()).expect("errors serialize");
        }
    }
}

/// Panics unless `data` parses: the seeds must reach past the parser.
#[cfg(test)]
pub(crate) fn parses(data: &[u8]) {
    if let Err(error) = parse_body(data) {
        panic!("{}", error.message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by this target: an error inside an unknown field (ignored,
    /// but still parsed) was named by the field's key, as long as the
    /// client made it, in the 400 and in the audit record's `error_param`.
    #[test]
    fn an_error_in_an_unknown_field_names_it_cut() {
        let key = "k\u{e9}".repeat(40_000);
        let body = format!(r#"{{"model":"m","{key}":[1,"#);
        let error = parse_body(body.as_bytes()).expect_err("truncated");
        let param = error.param.expect("names the field");
        assert!(param.len() <= MAX_PARAM_BYTES, "{}", param.len());
        assert!(
            param.starts_with("k\u{e9}k") && param.ends_with("..."),
            "{param}"
        );
        openai_request(body.as_bytes());
    }
}
