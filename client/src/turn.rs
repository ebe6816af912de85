//! One question and its streamed answer, written as it comes; Ctrl-C stops
//! it by closing the connection (the daemon then stops generating).

use crate::api::{ChatRequest, Event};
use crate::conversation::MAX_HISTORY_BYTES;
use crate::error::Error;
use crate::http::Daemon;
use crate::render::Renderer;

/// What came of a question.
#[derive(Debug, Default)]
pub(crate) struct Answer {
    /// The answer's text, up to [`MAX_HISTORY_BYTES`] (the rest is shown,
    /// not kept).
    pub(crate) content: String,
    /// The reasoning, likewise bounded.
    pub(crate) reasoning: String,
    /// Stopped with Ctrl-C before the end.
    pub(crate) interrupted: bool,
}

/// Asks `request` and writes the answer with `renderer` until `[DONE]`, an
/// error, or Ctrl-C.
pub(crate) async fn ask(
    daemon: &Daemon,
    request: &ChatRequest<'_>,
    renderer: &mut Renderer,
) -> Result<Answer, Error> {
    let mut answer = Answer::default();
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    let written = |e| Error::Io {
        what: "cannot write the answer",
        source: e,
    };
    let mut stream = tokio::select! {
        stream = daemon.chat(request) => stream?,
        _ = &mut interrupt => {
            answer.interrupted = true;
            renderer.finish(Some("stopped")).map_err(written)?;
            return Ok(answer);
        }
    };
    let mut note = None;
    let (mut reasoning_full, mut content_full) = (false, false);
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            _ = &mut interrupt => {
                answer.interrupted = true;
                note = Some("stopped");
                break;
            }
        };
        match event {
            Ok(Event::Reasoning(text)) => {
                renderer.reasoning(&text).map_err(written)?;
                keep(&mut answer.reasoning, &mut reasoning_full, &text);
            }
            Ok(Event::Answer(text)) => {
                renderer.answer(&text).map_err(written)?;
                keep(&mut answer.content, &mut content_full, &text);
            }
            Ok(Event::Finished(reason)) if reason == "length" => {
                note = Some(
                    "cut short: the token limit (--max-tokens, or the model's context) was reached",
                );
            }
            Ok(Event::Finished(_) | Event::Other) => {}
            Ok(Event::Done) => break,
            Err(e) => {
                // The text so far stays on screen, on lines of its own.
                let _ = renderer.finish(None);
                return Err(e);
            }
        }
    }
    // Closes the connection before anything else: the daemon stops at once.
    drop(stream);
    renderer.finish(note).map_err(written)?;
    Ok(answer)
}

/// Appends `text` to `kept` while it fits in [`MAX_HISTORY_BYTES`]; the
/// first piece that does not ends what is kept (`full`), so that a later,
/// smaller piece cannot leave a hole in the answer the history holds.
fn keep(kept: &mut String, full: &mut bool, text: &str) {
    if *full || kept.len() + text.len() > MAX_HISTORY_BYTES {
        *full = true;
    } else {
        kept.push_str(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_piece_that_does_not_fit_ends_what_is_kept() {
        let (mut kept, mut full) = ("a".repeat(MAX_HISTORY_BYTES - 10), false);
        keep(&mut kept, &mut full, "0123456789-");
        keep(&mut kept, &mut full, "abc");
        assert!(full);
        assert_eq!(kept.len(), MAX_HISTORY_BYTES - 10, "no hole: nothing after");
    }
}
