//! A tensor model (served over KServe v2): its ONNX Runtime sessions, the
//! pool that hands them to requests, and the checks a request must pass
//! before it reaches the runtime.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use ort::environment::Environment;
use ort::session::{RunOptions, Session};
use ort::value::{DynValue, Outlet};
use serde::Serialize;
use tokio::sync::Semaphore;

use super::error::{InferError, LoadError};
use super::pool::Pool;
use super::sessions::{Sessions, admit};
use super::tensor::{DataType, TensorData};
use crate::config::{Device, ModelConfig};

/// The declared type of a model input or output.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    /// -1 where the dimension is dynamic.
    pub shape: Vec<i64>,
    /// The symbolic name of each dimension, empty where it has none.
    #[serde(skip)]
    pub dim_names: Vec<String>,
}

impl Serialize for DataType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// What the daemon knows about a loaded model, shown in its metadata.
#[derive(Debug, Clone)]
pub(crate) struct ModelInfo {
    pub name: String,
    /// The version served, for a model in the store.
    pub version: Option<String>,
    pub path: PathBuf,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// The device the configuration asked for.
    pub requested_device: Device,
    /// The device the model actually runs on.
    pub device: Device,
    /// Why the model runs on the CPU although CUDA was asked for.
    pub cpu_fallback_reason: Option<String>,
    pub sessions: usize,
    pub queue_depth: usize,
    /// How long one inference may take (`infer_timeout_ms`).
    pub infer_timeout: std::time::Duration,
}

/// A named tensor in a request or a response.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NamedTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

/// A loaded model and its pool of sessions.
#[derive(Debug)]
pub(crate) struct Model {
    info: ModelInfo,
    pool: Arc<Pool<Session>>,
    /// Admits running plus queued requests; when none is left the model answers 503.
    admission: Arc<Semaphore>,
}

impl Model {
    /// Builds `sessions` ONNX Runtime sessions for the model from `graph`
    /// and its `external` data (the bytes whose digests were checked; see
    /// [`Sessions::build`]) and warms each up.
    pub(crate) fn load(
        environment: &Environment,
        config: &ModelConfig,
        graph: &[u8],
        external: &[(PathBuf, Arc<[u8]>)],
    ) -> Result<Self, LoadError> {
        let name = config.name.get_ref().as_str().to_owned();
        let Sessions {
            sessions,
            device,
            cpu_fallback_reason,
        } = Sessions::build(environment, config, graph, external, config.sessions.get())?;
        let first = &sessions[0];
        let inputs = specs(&name, "input", first.inputs())?;
        let outputs = specs(&name, "output", first.outputs())?;
        let info = ModelInfo {
            name,
            version: config.version.clone(),
            path: config.onnx(),
            inputs,
            outputs,
            requested_device: config.device,
            device,
            cpu_fallback_reason,
            sessions: sessions.len(),
            queue_depth: config.queue_depth,
            infer_timeout: config.infer_timeout(),
        };
        let mut sessions = sessions;
        if config.warm_up {
            for session in &mut sessions {
                warm_up(&info, session).map_err(|reason| LoadError::WarmUp {
                    model: info.name.clone(),
                    reason,
                })?;
            }
        }
        Ok(Self {
            admission: Arc::new(Semaphore::new(sessions.len() + config.queue_depth)),
            pool: Arc::new(Pool::new(sessions)),
            info,
        })
    }

    pub(crate) fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Requests admitted now, running or queued (at most `sessions +
    /// queue_depth`).
    pub(crate) fn admitted(&self) -> usize {
        (self.info.sessions + self.info.queue_depth)
            .saturating_sub(self.admission.available_permits())
    }

    /// Runs one request: waits for a free session (or fails at once with
    /// [`InferError::QueueFull`]), runs it on a blocking thread, and returns
    /// the `outputs` asked for (all of them when empty), in that order.
    pub(crate) async fn infer(
        &self,
        inputs: Vec<NamedTensor>,
        outputs: Vec<String>,
    ) -> Result<Vec<NamedTensor>, InferError> {
        validate(&self.info, &inputs, &outputs).map_err(InferError::BadRequest)?;
        let admitted = admit(&self.admission, &self.info.name)?;
        let mut session = self
            .pool
            .acquire()
            .await
            .map_err(|e| InferError::Runtime(e.to_string()))?;
        let outputs = if outputs.is_empty() {
            self.info.outputs.iter().map(|o| o.name.clone()).collect()
        } else {
            outputs
        };
        let options = Arc::new(RunOptions::new().map_err(|e| InferError::Runtime(e.to_string()))?);
        let _stop = TerminateOnDrop(Arc::clone(&options));
        // The closure owns the lease and the admission, so a client that
        // disconnects mid-run cannot leak a session; `_stop` makes the run
        // itself end early when this future is dropped (client gone,
        // deadline passed), rather than hold the session until it finishes.
        tokio::task::spawn_blocking(move || {
            let _admitted = admitted;
            run_session(&mut session, inputs, &outputs, &options)
        })
        .await
        .map_err(|e| InferError::Runtime(format!("inference task failed: {e}")))?
    }
}

/// Asks ONNX Runtime to stop the run when dropped. It stops between two
/// nodes (a `Loop` body's nodes included), so one long kernel still runs to
/// its end; after the run has ended this does nothing.
struct TerminateOnDrop(Arc<RunOptions>);

impl Drop for TerminateOnDrop {
    fn drop(&mut self) {
        if let Err(e) = self.0.terminate() {
            tracing::warn!(error = %e, "cannot ask ONNX Runtime to stop a run");
        }
    }
}

fn specs(
    model: &str,
    kind: &'static str,
    outlets: &[Outlet],
) -> Result<Vec<TensorSpec>, LoadError> {
    outlets
        .iter()
        .map(|outlet| {
            let (datatype, shape, dim_names) =
                DataType::of_value_type(outlet.dtype()).ok_or_else(|| {
                    LoadError::UnsupportedType {
                        model: model.to_owned(),
                        kind,
                        tensor: outlet.name().to_owned(),
                        found: outlet.dtype().to_string(),
                    }
                })?;
            Ok(TensorSpec {
                name: outlet.name().to_owned(),
                datatype,
                shape,
                dim_names,
            })
        })
        .collect()
}

/// Runs the model once on default-valued inputs (dynamic dimensions set to
/// 1), so the first client request does not pay for lazy initialisation and a
/// model that cannot run is refused at load.
fn warm_up(info: &ModelInfo, session: &mut Session) -> Result<(), String> {
    let inputs = info
        .inputs
        .iter()
        .map(|spec| {
            let shape: Vec<i64> = spec
                .shape
                .iter()
                .map(|&d| if d < 0 { 1 } else { d })
                .collect();
            let len = shape.iter().product::<i64>();
            NamedTensor {
                name: spec.name.clone(),
                data: TensorData::zeros(spec.datatype, usize::try_from(len).unwrap_or(0)),
                shape,
            }
        })
        .collect();
    let outputs: Vec<String> = info.outputs.iter().map(|o| o.name.clone()).collect();
    let options = RunOptions::new().map_err(|e| e.to_string())?;
    run_session(session, inputs, &outputs, &options)
        .map(drop)
        .map_err(|e| match e {
            InferError::BadRequest(m) | InferError::Runtime(m) | InferError::QueueFull(m) => m,
        })
}

fn run_session(
    session: &mut Session,
    inputs: Vec<NamedTensor>,
    outputs: &[String],
    options: &RunOptions,
) -> Result<Vec<NamedTensor>, InferError> {
    let values = inputs
        .into_iter()
        .map(|input| {
            let value = input
                .data
                .into_value(input.shape)
                .map_err(|e| InferError::BadRequest(format!("input {:?}: {e}", input.name)))?;
            Ok((input.name, value))
        })
        .collect::<Result<Vec<(String, DynValue)>, InferError>>()?;
    let results = session
        .run_with_options(values, options)
        .map_err(|e| match e.code() {
            // The model rejected the values (e.g. shapes that do not broadcast):
            // the client can fix that, so say what the runtime said.
            ort::ErrorCode::InvalidArgument => {
                InferError::BadRequest(format!("the model rejected the inputs: {e}"))
            }
            _ => InferError::Runtime(e.to_string()),
        })?;
    outputs
        .iter()
        .map(|name| {
            let value = results.get(name.as_str()).ok_or_else(|| {
                InferError::Runtime(format!("output {name:?} missing from the run"))
            })?;
            let (shape, data) = TensorData::from_value(value)
                .map_err(|e| InferError::Runtime(format!("output {name:?}: {e}")))?;
            Ok(NamedTensor {
                name: name.clone(),
                shape,
                data,
            })
        })
        .collect()
}

/// The request checks, separate from the pool so they are testable without
/// ONNX Runtime.
fn validate(info: &ModelInfo, inputs: &[NamedTensor], outputs: &[String]) -> Result<(), String> {
    let mut given: HashMap<&str, &NamedTensor> = HashMap::with_capacity(inputs.len());
    for input in inputs {
        if given.insert(&input.name, input).is_some() {
            return Err(format!("input {:?} is given more than once", input.name));
        }
        if !info.inputs.iter().any(|spec| spec.name == input.name) {
            return Err(format!(
                "model {:?} has no input {:?}; its inputs are {}",
                info.name,
                input.name,
                names(&info.inputs)
            ));
        }
    }
    // Sizes seen so far for each named dynamic dimension (e.g. "batch").
    let mut symbols: HashMap<&str, (i64, &str)> = HashMap::new();
    for spec in &info.inputs {
        let input = given.get(spec.name.as_str()).ok_or_else(|| {
            format!(
                "missing input {:?} ({} {}) for model {:?}",
                spec.name,
                spec.datatype,
                shape_text(&spec.shape),
                info.name
            )
        })?;
        if input.data.datatype() != spec.datatype {
            return Err(format!(
                "input {:?}: expected datatype {}, got {}",
                spec.name,
                spec.datatype,
                input.data.datatype()
            ));
        }
        let fits = input.shape.len() == spec.shape.len()
            && input
                .shape
                .iter()
                .zip(&spec.shape)
                .all(|(&got, &want)| got >= 0 && (want < 0 || got == want));
        if !fits {
            return Err(format!(
                "input {:?}: expected shape {}, got {}",
                spec.name,
                shape_text(&spec.shape),
                shape_text(&input.shape)
            ));
        }
        for ((&got, &want), symbol) in input.shape.iter().zip(&spec.shape).zip(&spec.dim_names) {
            if want >= 0 || symbol.is_empty() {
                continue;
            }
            match symbols.get(symbol.as_str()) {
                Some(&(size, other)) if size != got => {
                    return Err(format!(
                        "input {:?}: dimension {symbol:?} is {got}, but input {other:?} has {symbol:?} = {size}",
                        spec.name
                    ));
                }
                Some(_) => {}
                None => {
                    symbols.insert(symbol, (got, &spec.name));
                }
            }
        }
    }
    let mut asked = std::collections::HashSet::with_capacity(outputs.len());
    for output in outputs {
        // Each repeat would be copied into the answer once more: a few bytes
        // of request for gigabytes of response.
        if !asked.insert(output.as_str()) {
            return Err(format!("output {output:?} is asked for more than once"));
        }
        if !info.outputs.iter().any(|spec| &spec.name == output) {
            return Err(format!(
                "model {:?} has no output {output:?}; its outputs are {}",
                info.name,
                names(&info.outputs)
            ));
        }
    }
    Ok(())
}

fn names(specs: &[TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| format!("{:?}", s.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `[-1, 4]` style, as the metadata shows shapes.
pub(super) fn shape_text(shape: &[i64]) -> String {
    format!("{shape:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ModelInfo {
        let spec = |name: &str, datatype, shape: &[i64], dims: &[&str]| TensorSpec {
            name: name.to_owned(),
            datatype,
            shape: shape.to_vec(),
            dim_names: dims.iter().map(|d| (*d).to_owned()).collect(),
        };
        ModelInfo {
            name: "multi".to_owned(),
            version: None,
            path: PathBuf::from("/m.onnx"),
            inputs: vec![
                spec("a", DataType::Fp32, &[-1, 3], &["batch", ""]),
                spec("ids", DataType::Int64, &[-1], &["batch"]),
            ],
            outputs: vec![spec("sum", DataType::Fp32, &[-1, 3], &["batch", ""])],
            requested_device: Device::Cpu,
            device: Device::Cpu,
            cpu_fallback_reason: None,
            sessions: 1,
            queue_depth: 1,
            infer_timeout: std::time::Duration::from_secs(60),
        }
    }

    fn tensor(name: &str, shape: &[i64], data: TensorData) -> NamedTensor {
        NamedTensor {
            name: name.to_owned(),
            shape: shape.to_vec(),
            data,
        }
    }

    fn good() -> Vec<NamedTensor> {
        vec![
            tensor("a", &[2, 3], TensorData::Fp32(vec![0.0; 6])),
            tensor("ids", &[2], TensorData::Int64(vec![1, 2])),
        ]
    }

    #[test]
    fn accepts_a_matching_request() {
        assert_eq!(validate(&info(), &good(), &["sum".to_owned()]), Ok(()));
    }

    #[test]
    fn names_the_tensor_and_the_expected_shape() {
        let mut inputs = good();
        inputs[0] = tensor("a", &[2, 4], TensorData::Fp32(vec![0.0; 8]));
        assert_eq!(
            validate(&info(), &inputs, &[]),
            Err("input \"a\": expected shape [-1, 3], got [2, 4]".to_owned())
        );
    }

    #[test]
    fn names_the_expected_datatype() {
        let mut inputs = good();
        inputs[1] = tensor("ids", &[2], TensorData::Int32(vec![1, 2]));
        assert_eq!(
            validate(&info(), &inputs, &[]),
            Err("input \"ids\": expected datatype INT64, got INT32".to_owned())
        );
    }

    #[test]
    fn shared_dynamic_dimensions_must_agree() {
        let mut inputs = good();
        inputs[1] = tensor("ids", &[3], TensorData::Int64(vec![1, 2, 3]));
        assert_eq!(
            validate(&info(), &inputs, &[]),
            Err(
                "input \"ids\": dimension \"batch\" is 3, but input \"a\" has \"batch\" = 2"
                    .to_owned()
            )
        );
    }

    #[test]
    fn missing_unknown_and_duplicate_inputs_are_named() {
        let err = validate(&info(), &good()[..1], &[]).expect_err("missing");
        assert_eq!(
            err,
            "missing input \"ids\" (INT64 [-1]) for model \"multi\""
        );
        let mut inputs = good();
        inputs.push(tensor("b", &[1], TensorData::Fp32(vec![0.0])));
        let err = validate(&info(), &inputs, &[]).expect_err("unknown");
        assert_eq!(
            err,
            "model \"multi\" has no input \"b\"; its inputs are \"a\", \"ids\""
        );
        let mut inputs = good();
        inputs.push(inputs[0].clone());
        let err = validate(&info(), &inputs, &[]).expect_err("duplicate");
        assert_eq!(err, "input \"a\" is given more than once");
    }

    #[test]
    fn duplicate_output_is_named() {
        let outputs = ["sum".to_owned(), "sum".to_owned()];
        let err = validate(&info(), &good(), &outputs).expect_err("duplicate output");
        assert_eq!(err, "output \"sum\" is asked for more than once");
    }

    #[test]
    fn unknown_output_is_named() {
        let err = validate(&info(), &good(), &["prob".to_owned()]).expect_err("unknown output");
        assert_eq!(
            err,
            "model \"multi\" has no output \"prob\"; its outputs are \"sum\""
        );
    }
}
