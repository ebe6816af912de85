//! The files of a causal-LM directory in Hugging Face Optimum's layout:
//! `config.json`, `generation_config.json` (optional), `tokenizer.json`,
//! `tokenizer_config.json` (with `chat_template`; a `chat_template.jinja`
//! beside it takes precedence), onnxruntime-genai's `genai_config.json` (optional) and the
//! ONNX graph.
//!
//! Every file is parsed from the bytes the integrity check hashed when the
//! database covers it, so what is used is what was verified.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The files read from verified bytes, apart from the graph.
pub const METADATA_FILES: [&str; 6] = [
    CONFIG,
    GENERATION_CONFIG,
    TOKENIZER,
    TOKENIZER_CONFIG,
    CHAT_TEMPLATE,
    GENAI_CONFIG,
];
const CONFIG: &str = "config.json";
const GENERATION_CONFIG: &str = "generation_config.json";
const TOKENIZER: &str = "tokenizer.json";
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
const CHAT_TEMPLATE: &str = "chat_template.jinja";
const GENAI_CONFIG: &str = "genai_config.json";

/// A file of the model directory that is missing, unreadable or not what
/// the layout expects; the message names the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", file.display())]
pub struct FileError {
    pub file: PathBuf,
    pub reason: String,
}

/// `config.json`: the architecture, as transformers writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct ArchConfig {
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    pub hidden_size: usize,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
}

impl ArchConfig {
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
}

/// One token id or several, as `eos_token_id` is written.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn ids(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// `generation_config.json`: the sampling defaults the model was published
/// with; requests override them.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerationConfig {
    #[serde(default)]
    pub do_sample: bool,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
}

/// `genai_config.json`, as onnxruntime-genai's model builder writes it; only
/// what changes how the cache is kept is read.
#[derive(Debug, Clone, Default, Deserialize)]
struct GenaiConfig {
    #[serde(default)]
    search: GenaiSearch,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct GenaiSearch {
    /// The graph's attention (GroupQueryAttention) appends to a past buffer
    /// of the whole context in place.
    #[serde(default)]
    past_present_share_buffer: bool,
}

/// A special token as `tokenizer_config.json` writes it: a string or an
/// `AddedToken` object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SpecialToken {
    Text(String),
    Added { content: String },
}

impl SpecialToken {
    pub fn text(&self) -> &str {
        match self {
            SpecialToken::Text(text) | SpecialToken::Added { content: text } => text,
        }
    }
}

/// `chat_template`: one template, or named ones of which `default` is used.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TemplateField {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Debug, Clone, Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

#[derive(Debug, Clone, Deserialize)]
struct TokenizerConfigFile {
    #[serde(default)]
    chat_template: Option<TemplateField>,
    #[serde(default)]
    bos_token: Option<SpecialToken>,
    #[serde(default)]
    eos_token: Option<SpecialToken>,
    /// transformers writes 1e30 for "no limit", hence a float.
    #[serde(default)]
    model_max_length: Option<f64>,
}

/// `tokenizer_config.json`, resolved.
#[derive(Debug, Clone)]
pub struct TokenizerConfig {
    pub chat_template: String,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub model_max_length: Option<usize>,
}

/// Where the graph comes from: the verified bytes, or its path when it has
/// external data beside it (which ONNX Runtime reads relative to the path).
#[derive(Debug)]
pub enum Graph {
    Bytes(Vec<u8>),
    Path(PathBuf),
}

/// Everything in the directory, parsed.
#[derive(Debug)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub arch: ArchConfig,
    pub generation: GenerationConfig,
    pub tokenizer_json: Vec<u8>,
    pub tokenizer: TokenizerConfig,
    /// `genai_config.json` says past and present may share one buffer.
    pub share_kv_buffer: bool,
    pub graph: Graph,
}

impl ModelFiles {
    /// Reads the directory. `verified` holds the bytes the integrity check
    /// hashed, by path; a file not among them is read from disk (only when
    /// integrity is not enforced: otherwise every file of the directory is
    /// verified and the ones read here are kept).
    pub fn read(
        dir: &Path,
        onnx: &Path,
        mut verified: BTreeMap<PathBuf, Vec<u8>>,
    ) -> Result<Self, FileError> {
        let mut take = |name: &str| -> Result<Option<Vec<u8>>, FileError> {
            let path = dir.join(name);
            if let Some(bytes) = verified.remove(&path) {
                return Ok(Some(bytes));
            }
            match std::fs::read(&path) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(FileError {
                    file: path,
                    reason: format!("cannot read: {e}"),
                }),
            }
        };
        let required = |name: &str, bytes: Option<Vec<u8>>| {
            bytes.ok_or_else(|| FileError {
                file: dir.join(name),
                reason: "missing: a causal-lm model directory needs config.json, tokenizer.json \
                         and tokenizer_config.json beside the graph (Hugging Face Optimum's layout)"
                    .to_owned(),
            })
        };
        let arch: ArchConfig = parse(dir, CONFIG, &required(CONFIG, take(CONFIG)?)?)?;
        let generation = match take(GENERATION_CONFIG)? {
            Some(bytes) => parse(dir, GENERATION_CONFIG, &bytes)?,
            None => GenerationConfig::default(),
        };
        let tokenizer_json = required(TOKENIZER, take(TOKENIZER)?)?;
        let raw: TokenizerConfigFile = parse(
            dir,
            TOKENIZER_CONFIG,
            &required(TOKENIZER_CONFIG, take(TOKENIZER_CONFIG)?)?,
        )?;
        let jinja = take(CHAT_TEMPLATE)?;
        let genai: GenaiConfig = match take(GENAI_CONFIG)? {
            Some(bytes) => parse(dir, GENAI_CONFIG, &bytes)?,
            None => GenaiConfig::default(),
        };
        let chat_template = chat_template(dir, raw.chat_template, jinja)?;
        let tokenizer = TokenizerConfig {
            chat_template,
            bos_token: raw.bos_token.map(|t| t.text().to_owned()),
            eos_token: raw.eos_token.map(|t| t.text().to_owned()),
            model_max_length: raw
                .model_max_length
                .filter(|n| (1.0..1e9).contains(n))
                .map(|n| n as usize),
        };
        let graph = match verified.remove(onnx) {
            Some(bytes) => Graph::Bytes(bytes),
            None => {
                std::fs::File::open(onnx).map_err(|e| FileError {
                    file: onnx.to_owned(),
                    reason: format!("cannot read: {e}"),
                })?;
                Graph::Path(onnx.to_owned())
            }
        };
        Ok(Self {
            dir: dir.to_owned(),
            arch,
            generation,
            tokenizer_json,
            tokenizer,
            share_kv_buffer: genai.search.past_present_share_buffer,
            graph,
        })
    }
}

fn parse<T: DeserializeOwned>(dir: &Path, name: &str, bytes: &[u8]) -> Result<T, FileError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| FileError {
        file: dir.join(name),
        reason: match e.path().to_string().as_str() {
            "." => e.inner().to_string(),
            key => format!("{key}: {}", e.inner()),
        },
    })
}

fn chat_template(
    dir: &Path,
    field: Option<TemplateField>,
    jinja: Option<Vec<u8>>,
) -> Result<String, FileError> {
    let error = |name: &str, reason: &str| FileError {
        file: dir.join(name),
        reason: reason.to_owned(),
    };
    // `chat_template.jinja` wins, as in transformers (which lets it clobber
    // the config's): an operator gives a model another template (the tools
    // template the package ships) by placing the file, which the integrity
    // database then covers like the others.
    match (field, jinja) {
        (_, Some(bytes)) => {
            String::from_utf8(bytes).map_err(|_| error(CHAT_TEMPLATE, "not UTF-8 text"))
        }
        (Some(TemplateField::One(template)), None) => Ok(template),
        (Some(TemplateField::Named(named)), None) => named
            .into_iter()
            .find(|t| t.name == "default")
            .map(|t| t.template)
            .ok_or_else(|| {
                error(
                    TOKENIZER_CONFIG,
                    "chat_template: a list of named templates without one named \"default\"",
                )
            }),
        (None, None) => Err(error(
            TOKENIZER_CONFIG,
            "chat_template: missing (and no chat_template.jinja beside it); the chat API needs the model's template",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::engine::llm::test_support::dir as fixture;

    #[test]
    fn reads_the_fixture() {
        let dir = fixture();
        let files =
            ModelFiles::read(&dir, &dir.join("model.onnx"), BTreeMap::new()).expect("fixture");
        assert_eq!(files.arch.num_hidden_layers, 2);
        assert_eq!(files.arch.kv_heads(), 2);
        assert_eq!(files.arch.head_dim(), 16);
        assert_eq!(files.arch.max_position_embeddings, 256);
        assert!(files.generation.do_sample);
        assert_eq!(files.generation.temperature, Some(0.6));
        assert_eq!(files.tokenizer.model_max_length, Some(256));
        assert_eq!(
            files.tokenizer.bos_token.as_deref(),
            Some("<｜begin▁of▁sentence｜>")
        );
        assert!(files.tokenizer.chat_template.contains("raise_exception"));
        assert!(matches!(files.graph, Graph::Path(_)));
        assert!(!files.share_kv_buffer);
        let gqa = dir.with_file_name("tiny-r1-gqa");
        let files = ModelFiles::read(&gqa, &gqa.join("model.onnx"), BTreeMap::new()).expect("gqa");
        assert!(files.share_kv_buffer);
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for name in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(fixture().join(name), tmp.path().join(name)).expect("copy");
        }
        let onnx = tmp.path().join("model.onnx");
        let err = ModelFiles::read(tmp.path(), &onnx, BTreeMap::new()).expect_err("no graph");
        assert_eq!(err.file, onnx);
        std::fs::write(&onnx, b"").expect("graph");
        std::fs::write(
            tmp.path().join("config.json"),
            br#"{"num_hidden_layers": "two"}"#,
        )
        .expect("config");
        let err = ModelFiles::read(tmp.path(), &onnx, BTreeMap::new()).expect_err("bad config");
        assert!(
            err.to_string()
                .contains("config.json: num_hidden_layers: invalid type: string \"two\""),
            "{err}"
        );
        std::fs::remove_file(tmp.path().join("tokenizer.json")).expect("rm");
        std::fs::copy(
            fixture().join("config.json"),
            tmp.path().join("config.json"),
        )
        .expect("cp");
        let err = ModelFiles::read(tmp.path(), &onnx, BTreeMap::new()).expect_err("no tokenizer");
        assert!(err.to_string().contains("tokenizer.json: missing"), "{err}");
    }

    #[test]
    fn verified_bytes_win_over_the_disk() {
        let dir = fixture();
        let onnx = dir.join("model.onnx");
        let mut verified = BTreeMap::new();
        verified.insert(onnx.clone(), b"graph".to_vec());
        verified.insert(
            dir.join("generation_config.json"),
            br#"{"do_sample": false}"#.to_vec(),
        );
        let files = ModelFiles::read(&dir, &onnx, verified).expect("fixture");
        assert!(matches!(files.graph, Graph::Bytes(ref b) if b == b"graph"));
        assert!(!files.generation.do_sample);
    }

    #[test]
    fn chat_template_jinja_takes_precedence_as_in_transformers() {
        let dir = fixture();
        let onnx = dir.join("model.onnx");
        let mut verified = BTreeMap::new();
        verified.insert(dir.join(CHAT_TEMPLATE), b"{{ tools }}".to_vec());
        let files = ModelFiles::read(&dir, &onnx, verified).expect("fixture");
        assert_eq!(files.tokenizer.chat_template, "{{ tools }}");
    }
}
