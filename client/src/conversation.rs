//! The conversation of one session: the system prompt and the turns so
//! far, sent whole with each question, kept in memory only and bounded,
//! and written to a file only when the user asks (`/save`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::api::{Message, Outgoing, Role};

/// The most text the history keeps (the daemon's default bound on a
/// prompt's text, `max_prompt_bytes`); older turns are dropped first.
pub(crate) const MAX_HISTORY_BYTES: usize = 4 << 20;
/// The most messages the history keeps (the daemon accepts 4096).
pub(crate) const MAX_MESSAGES: usize = 4000;

#[derive(Debug, Default)]
pub(crate) struct Conversation {
    system: Option<String>,
    /// User and assistant messages, alternating, oldest first.
    turns: Vec<Message>,
}

/// Why `/save` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SaveError {
    #[error("{0} exists; nothing written (/save --force FILE replaces it)")]
    Exists(PathBuf),
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

/// The saved file: the model and the messages, OpenAI's shape, each
/// assistant message with its reasoning.
#[derive(Serialize)]
struct Saved<'a> {
    model: &'a str,
    messages: Vec<Message>,
}

impl Conversation {
    pub(crate) fn system(&self) -> Option<&str> {
        self.system.as_deref()
    }

    pub(crate) fn set_system(&mut self, text: Option<String>) {
        self.system = text;
    }

    /// Forgets the turns; the system prompt stays.
    pub(crate) fn clear(&mut self) {
        self.turns.clear();
    }

    /// How many questions were answered so far.
    pub(crate) fn turns(&self) -> usize {
        self.turns.len() / 2
    }

    /// The messages to send with `question`: the system prompt, the turns,
    /// the question; no reasoning.
    pub(crate) fn outgoing<'a>(&'a self, question: &'a str) -> Vec<Outgoing<'a>> {
        let system = self.system.as_deref().map(|content| Outgoing {
            role: Role::System,
            content,
        });
        system
            .into_iter()
            .chain(self.turns.iter().map(Outgoing::from))
            .chain([Outgoing {
                role: Role::User,
                content: question,
            }])
            .collect()
    }

    /// Keeps an answered turn, dropping the oldest turns while the history
    /// is over its bounds; returns how many were dropped.
    pub(crate) fn push(&mut self, question: String, answer: String, reasoning: String) -> usize {
        self.turns.push(Message {
            role: Role::User,
            content: question,
            reasoning_content: None,
        });
        self.turns.push(Message {
            role: Role::Assistant,
            content: answer,
            reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
        });
        let mut dropped = 0;
        while self.turns.len() > 2 && self.over_bounds() {
            self.turns.drain(..2);
            dropped += 1;
        }
        dropped
    }

    fn over_bounds(&self) -> bool {
        let bytes: usize = self
            .turns
            .iter()
            .map(|m| m.content.len() + m.reasoning_content.as_ref().map_or(0, String::len))
            .sum();
        bytes > MAX_HISTORY_BYTES || self.turns.len() > MAX_MESSAGES
    }

    /// Writes the conversation as JSON to `path`, mode 0600, never over an
    /// existing file unless `force` (then it replaces it by a rename, so a
    /// symlink there is replaced, not followed).
    pub(crate) fn save(&self, model: &str, path: &Path, force: bool) -> Result<(), SaveError> {
        let system = self.system.as_ref().map(|content| Message {
            role: Role::System,
            content: content.clone(),
            reasoning_content: None,
        });
        let saved = Saved {
            model,
            messages: system
                .into_iter()
                .chain(self.turns.iter().cloned())
                .collect(),
        };
        let mut json = serde_json::to_vec_pretty(&saved)
            .map_err(|e| SaveError::Write(path.to_owned(), e.into()))?;
        json.push(b'\n');
        let write_new = |target: &Path| -> std::io::Result<()> {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(target)?;
            file.write_all(&json)?;
            file.sync_all()
        };
        // A file this created and could not finish is removed; one that
        // was there already (create_new refused it) is never touched.
        let write_new = |target: &Path| {
            write_new(target).inspect_err(|e| {
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    let _ = fs::remove_file(target);
                }
            })
        };
        if !force {
            return write_new(path).map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => SaveError::Exists(path.to_owned()),
                _ => SaveError::Write(path.to_owned(), e),
            });
        }
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(format!(".tmp-{}", std::process::id()));
        let temporary = PathBuf::from(temporary);
        write_new(&temporary).map_err(|e| SaveError::Write(path.to_owned(), e))?;
        fs::rename(&temporary, path).map_err(|e| {
            let _ = fs::remove_file(&temporary);
            SaveError::Write(path.to_owned(), e)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn answered(n: usize) -> Conversation {
        let mut c = Conversation::default();
        for i in 0..n {
            c.push(format!("q{i}"), format!("a{i}"), format!("r{i}"));
        }
        c
    }

    #[test]
    fn the_history_is_sent_without_reasoning() {
        let mut c = answered(2);
        c.set_system(Some("be brief".into()));
        let sent = serde_json::to_string(&c.outgoing("q2")).expect("json");
        assert_eq!(
            sent,
            r#"[{"role":"system","content":"be brief"},{"role":"user","content":"q0"},{"role":"assistant","content":"a0"},{"role":"user","content":"q1"},{"role":"assistant","content":"a1"},{"role":"user","content":"q2"}]"#
        );
        c.clear();
        assert_eq!(c.turns(), 0);
        assert_eq!(c.outgoing("q").len(), 2);
    }

    #[test]
    fn the_oldest_turns_go_first_past_the_bounds() {
        let mut c = answered(MAX_MESSAGES / 2);
        assert_eq!(c.push("q".into(), "a".into(), String::new()), 1);
        assert_eq!(c.turns(), MAX_MESSAGES / 2);
        assert_eq!(c.outgoing("x")[0].content, "q1");
        let mut c = answered(1);
        let big = "x".repeat(MAX_HISTORY_BYTES / 2 + 1);
        assert_eq!(c.push(big.clone(), big.clone(), String::new()), 1);
        // The last turn stays even alone over the bound: the daemon decides.
        assert_eq!(c.push(big.clone(), big, String::new()), 1);
        assert_eq!(c.turns(), 1);
    }

    #[test]
    fn save_writes_0600_and_never_over_a_file_unless_forced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("chat.json");
        let c = answered(1);
        c.save("tiny-r1", &path, false).expect("save");
        let mode = fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let saved: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).expect("read")).expect("json");
        assert_eq!(saved["model"], "tiny-r1");
        assert_eq!(saved["messages"][1]["reasoning_content"], "r0");
        assert!(saved["messages"][0].get("reasoning_content").is_none());
        assert!(matches!(
            c.save("m", &path, false),
            Err(SaveError::Exists(_))
        ));
        let target = dir.path().join("target");
        fs::write(&target, "keep").expect("write");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        c.save("m", &link, true).expect("forced");
        assert_eq!(fs::read_to_string(&target).expect("read"), "keep");
        assert!(fs::symlink_metadata(&link).expect("meta").is_file());
        // A file where the forced save's temporary would go is not ours:
        // the save fails and leaves it.
        let theirs = dir
            .path()
            .join(format!("chat.json.tmp-{}", std::process::id()));
        fs::write(&theirs, "theirs").expect("write");
        assert!(matches!(
            c.save("m", &path, true),
            Err(SaveError::Write(..))
        ));
        assert_eq!(fs::read_to_string(&theirs).expect("read"), "theirs");
    }
}
