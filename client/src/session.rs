//! What a chat starts from, in a session or for one question: the daemon,
//! the model (checked against what it serves), the settings, the question.

use std::io::{IsTerminal, Read};

use crate::api::Sampling;
use crate::cli::ChatArgs;
use crate::error::Error;
use crate::http::Daemon;
use crate::input::MAX_QUESTION_BYTES;
use crate::render::Reasoning;

/// The settings of a chat, some changed by a session's commands.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) daemon: Daemon,
    pub(crate) model: String,
    pub(crate) system: Option<String>,
    pub(crate) sampling: Sampling,
    /// As asked on the command line; each mode has its default.
    pub(crate) reasoning: Option<Reasoning>,
    /// Colour allowed: no `--no-color`, no `NO_COLOR`.
    pub(crate) colour: bool,
}

impl Session {
    /// Connects (listing the models) and picks the model.
    pub(crate) async fn start(args: ChatArgs) -> Result<Self, Error> {
        let daemon = Daemon::new(args.socket);
        let model = choose_model(args.model, &daemon.models().await?)?;
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Ok(Self {
            daemon,
            model,
            system: args.system,
            sampling: Sampling {
                max_tokens: args.max_tokens,
                temperature: args.temperature,
                seed: args.seed,
            },
            reasoning: args.reasoning,
            colour: !args.no_color && !no_color,
        })
    }
}

/// The model `named`, if the daemon serves it, or else its only one.
pub(crate) fn choose_model(named: Option<String>, served: &[String]) -> Result<String, Error> {
    let list = || served.join(", ");
    match (named, served) {
        (Some(name), _) if served.contains(&name) => Ok(name),
        (Some(name), []) => Err(Error::NoModel(format!(
            "deepseekd serves no chat model, so not {name:?}"
        ))),
        (Some(name), _) => Err(Error::NoModel(format!(
            "deepseekd does not serve {name:?}; it serves: {}",
            list()
        ))),
        (None, [only]) => Ok(only.clone()),
        (None, []) => Err(Error::NoModel("deepseekd serves no chat model".to_owned())),
        (None, _) => Err(Error::NoModel(format!(
            "deepseekd serves several chat models; name one with -m: {}",
            list()
        ))),
    }
}

/// The question of a command line: its words, or else, when stdin is not
/// a terminal, all of stdin. `None`: a session.
pub(crate) fn question(words: &[String]) -> Result<Option<String>, Error> {
    let text = if !words.is_empty() {
        words.join(" ")
    } else if std::io::stdin().is_terminal() {
        return Ok(None);
    } else {
        read_bounded(std::io::stdin().lock())?
    };
    if text.len() > MAX_QUESTION_BYTES {
        return Err(too_long());
    }
    if text.trim().is_empty() {
        return Err(Error::Question("empty".to_owned()));
    }
    Ok(Some(text))
}

fn too_long() -> Error {
    Error::Question(format!(
        "over the limit of {MAX_QUESTION_BYTES} bytes (1 MiB); nothing was sent"
    ))
}

/// All of `input`, refused past [`MAX_QUESTION_BYTES`] without reading
/// further.
fn read_bounded(input: impl Read) -> Result<String, Error> {
    let mut bytes = Vec::new();
    input
        .take(MAX_QUESTION_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| Error::Io {
            what: "cannot read the question from stdin",
            source,
        })?;
    if bytes.len() > MAX_QUESTION_BYTES {
        return Err(too_long());
    }
    String::from_utf8(bytes).map_err(|_| Error::Question("not UTF-8 text".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn the_model_is_the_named_one_or_the_only_one() {
        let two = served(&["smollm2", "tiny-r1"]);
        assert_eq!(
            choose_model(Some("tiny-r1".into()), &two).expect("named"),
            "tiny-r1"
        );
        assert_eq!(choose_model(None, &served(&["a"])).expect("only"), "a");
        let several = choose_model(None, &two).expect_err("several").to_string();
        assert!(
            several.ends_with("name one with -m: smollm2, tiny-r1"),
            "{several}"
        );
        let unknown = choose_model(Some("nope".into()), &two)
            .expect_err("unknown")
            .to_string();
        assert!(
            unknown.contains("does not serve \"nope\"; it serves: smollm2, tiny-r1"),
            "{unknown}"
        );
        assert!(choose_model(None, &[]).is_err());
    }

    #[test]
    fn stdin_is_read_up_to_its_bound() {
        let exact = vec![b'x'; MAX_QUESTION_BYTES];
        assert_eq!(
            read_bounded(&exact[..]).expect("at the bound").len(),
            MAX_QUESTION_BYTES
        );
        let over = vec![b'x'; MAX_QUESTION_BYTES + 1];
        assert!(matches!(read_bounded(&over[..]), Err(Error::Question(_))));
        assert!(matches!(
            read_bounded(&b"\xff"[..]),
            Err(Error::Question(_))
        ));
    }
}
