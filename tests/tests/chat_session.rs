//! `deepseek chat` sessions under a real terminal: tmux runs the real
//! binary, the test types with `send-keys` and reads the screen with
//! `capture-pane`, waiting for what it expects (never for a set time).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use deepseek_tests::{Daemon, binary, gqa_table, llm_fixture, llm_table, post_json};
use serde_json::{Value, json};

use crate::smollm2::{FP32, model_dir};

/// How long the screen may take to show what a test waits for: a hang
/// detector, not a measure of speed.
const PATIENCE: Duration = Duration::from_secs(60);

/// A tmux server of its own (`-S` in a temporary directory) running one
/// command in a 200 x 50 window; the server is killed when dropped, the
/// test failed or not.
struct Tmux {
    _dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Tmux {
    /// Runs `command` (a shell command line), then prints its exit status
    /// and stays, so that the status can be read off the screen.
    fn start(command: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("tmux.sock");
        let tmux = Self { _dir: dir, socket };
        let shell = format!("{command}; echo \"exit status $?\"; sleep 600");
        let output = tmux.run(&["new-session", "-d", "-x", "200", "-y", "50", &shell]);
        assert!(output.status.success(), "tmux: {output:?}");
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(["-f", "/dev/null"])
            .args(args)
            .env("LANG", "C.UTF-8")
            .output()
            .expect("tmux is installed (make deps)")
    }

    /// Types `text` and Enter.
    fn line(&self, text: &str) {
        assert!(self.run(&["send-keys", "-l", text]).status.success());
        self.key("Enter");
    }

    /// Presses `key` (tmux's name: `C-c`, `C-d`, `Enter`).
    fn key(&self, key: &str) {
        assert!(self.run(&["send-keys", key]).status.success());
    }

    /// The whole pane, its history included, wrapped lines joined;
    /// `attributes` keeps the escape sequences of colours and dimming.
    fn screen(&self, attributes: bool) -> String {
        let mut args = vec!["capture-pane", "-p", "-J", "-S", "-"];
        if attributes {
            args.push("-e");
        }
        String::from_utf8_lossy(&self.run(&args).stdout).into_owned()
    }

    /// Waits until the screen satisfies `until`; returns it.
    fn wait(&self, what: &str, until: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let screen = self.screen(false);
            if until(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "waited {PATIENCE:?} for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the screen shows `text`.
    fn wait_for(&self, text: &str) -> String {
        self.wait(&format!("{text:?}"), |s| s.contains(text))
    }

    /// Waits for the `n`th prompt: the answer before it is complete.
    fn wait_prompts(&self, n: usize) -> String {
        self.wait(&format!("prompt {n}"), |s| prompts(s) >= n)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

fn prompts(screen: &str) -> usize {
    screen.lines().filter(|l| l.starts_with(">>>")).count()
}

/// The screen after the last line that starts with `marker`.
fn after<'a>(screen: &'a str, marker: &str) -> &'a str {
    let at = screen.rfind(marker).expect("marker on screen");
    &screen[at..]
}

/// `deepseek chat ARGS` as a shell command line (the paths hold no quote).
fn chat_command(socket: &Path, args: &str) -> String {
    format!(
        "'{}' chat --socket '{}' {args}",
        binary("deepseek").display(),
        socket.display()
    )
}

fn greedy(d: &Daemon, model: &str, messages: Value) -> Value {
    let body = json!({"model": model, "messages": messages, "temperature": 0, "max_tokens": 24});
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let response = runtime.block_on(post_json(&d.socket, "/v1/chat/completions", &body));
    assert_eq!(response.status, 200, "{:?}", response.body);
    response.json()["choices"][0]["message"].clone()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("saved file")).expect("JSON")
}

fn user(content: &str) -> Value {
    json!({"role": "user", "content": content})
}

/// The assistant message as saved: the answer, and its reasoning beside it.
fn assistant(message: &Value) -> Value {
    json!({
        "role": "assistant",
        "content": message["content"].as_str().unwrap_or(""),
        "reasoning_content": message["reasoning_content"],
    })
}

#[test]
fn a_session_answers_remembers_and_obeys_its_commands() {
    let models = [llm_table("tiny-r1", &llm_fixture(), ""), gqa_table()].concat();
    let d = Daemon::start("", &models);
    let files = tempfile::tempdir().expect("tempdir");
    let tmux = Tmux::start(&chat_command(
        &d.socket,
        "-m tiny-r1 --temperature 0 --max-tokens 24",
    ));
    tmux.wait_for("deepseek chat with tiny-r1 on");
    tmux.wait_prompts(1);

    // A question whose answer closes its reasoning within 24 tokens: the
    // reasoning comes first, framed and dimmed, then the answer.
    let first = "Café ☕ — naïve façade? 你好!";
    let one = greedy(&d, "tiny-r1", json!([user(first)]));
    tmux.line(first);
    let screen = tmux.wait_prompts(2);
    let reasoning = one["reasoning_content"].as_str().expect("reasoning");
    let content = one["content"].as_str().expect("an answer");
    let shown = after(&screen, &format!(">>> {first}"));
    let thinking = shown.find("Thinking...\n").expect("the reasoning's frame");
    let done = shown.find("\n...done thinking.\n\n").expect("its end");
    let answer = shown.find(content.trim()).expect("the answer");
    assert!(thinking < done && done < answer, "{shown}");
    assert!(shown[thinking..done].contains(reasoning.trim()), "{shown}");
    let coloured = tmux.screen(true);
    assert!(
        coloured.contains("\x1b[2m"),
        "the reasoning is dimmed: {coloured:?}"
    );

    // A second turn: the first is sent with it (the daemon answers as it
    // does to the whole conversation).
    let second = "And in one word?";
    let two = greedy(
        &d,
        "tiny-r1",
        json!([user(first), {"role": "assistant", "content": content}, user(second)]),
    );
    tmux.line(second);
    tmux.wait_prompts(3);
    let saved = files.path().join("chat.json");
    tmux.line(&format!("/save {}", saved.display()));
    tmux.wait_for(&format!("saved 2 turns to {}", saved.display()));
    assert_eq!(
        read_json(&saved),
        json!({"model": "tiny-r1", "messages": [user(first), assistant(&one), user(second), assistant(&two)]})
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&saved)
        .expect("saved")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    tmux.line(&format!("/save {}", saved.display()));
    tmux.wait_for("exists; nothing written (/save --force FILE replaces it)");

    // /clear, /system, and a question on two lines (a """ block), on the
    // other model.
    tmux.line("/clear");
    tmux.wait_for("conversation cleared");
    tmux.line("/system Answer in French.");
    tmux.wait_for("system prompt set");
    tmux.line("/model");
    tmux.wait("the model list", |s| {
        s.contains("* tiny-r1\n") && s.contains("  tiny-r1-gqa\n")
    });
    tmux.line("/model nope");
    tmux.wait_for("deepseekd does not serve \"nope\"; it serves: tiny-r1, tiny-r1-gqa");
    tmux.line("/model tiny-r1-gqa");
    tmux.wait_for("now asking tiny-r1-gqa");
    let prompts_now = prompts(&tmux.screen(false));
    tmux.line("\"\"\"");
    tmux.line("line one");
    tmux.line("line two\"\"\"");
    tmux.wait_prompts(prompts_now + 1);
    let third = greedy(
        &d,
        "tiny-r1-gqa",
        json!([{"role": "system", "content": "Answer in French."}, user("line one\nline two")]),
    );
    tmux.line(&format!("/save --force {}", saved.display()));
    tmux.wait_for(&format!("saved 1 turns to {}", saved.display()));
    assert_eq!(
        read_json(&saved),
        json!({"model": "tiny-r1-gqa", "messages": [
            {"role": "system", "content": "Answer in French."},
            user("line one\nline two"),
            assistant(&third),
        ]})
    );

    // /think hide: no reasoning on screen for the next answer.
    tmux.line("/think hide");
    tmux.wait_for("reasoning: hide");
    let prompts_now = prompts(&tmux.screen(false));
    tmux.line("Hello!");
    let screen = tmux.wait_prompts(prompts_now + 1);
    assert!(
        !after(&screen, ">>> Hello!").contains("Thinking..."),
        "{screen}"
    );

    // Ctrl-C at the prompt clears the line and keeps the session; Ctrl-D
    // at an empty prompt ends it.
    tmux.run(&["send-keys", "-l", "half a question"]);
    tmux.key("C-c");
    tmux.wait_for("(Ctrl-D or /bye leaves)");
    let prompts_now = prompts(&tmux.screen(false));
    tmux.line("/help");
    tmux.wait_prompts(prompts_now + 1);
    tmux.key("C-d");
    tmux.wait_for("exit status 0");
}

#[test]
fn ctrl_c_stops_an_answer_and_the_daemon_stops_generating_it() {
    let d = Daemon::start("", &llm_table("smollm2", &model_dir(FP32), ""));
    // SmolLM2 repeats on and on (600 tokens and more, greedy): far more
    // than the test lets it write.
    let max_tokens = 4000;
    let tmux = Tmux::start(&chat_command(
        &d.socket,
        &format!("--temperature 0 --max-tokens {max_tokens}"),
    ));
    tmux.wait_prompts(1);
    let question = "Repeat the word hello 3000 times.";
    tmux.line(question);
    tmux.wait("the answer under way", |s| {
        s.contains(question)
            && after(s, question)[question.len()..]
                .split_whitespace()
                .count()
                > 10
    });
    tmux.key("C-c");
    let screen = tmux.wait_prompts(2);
    assert!(after(&screen, question).contains("(stopped)"), "{screen}");

    let auditor = d.auditor.as_ref().expect("auditor");
    let completion = auditor.wait_for("completion", PATIENCE, |e| e["event"] == "completion");
    assert_eq!(
        completion["details"]["finish_reason"], "cancelled",
        "{completion}"
    );
    let tokens = completion["tokens_out"].as_u64().expect("tokens_out");
    assert!(
        tokens < max_tokens,
        "{tokens} tokens: the generation ran on"
    );

    // The session goes on.
    tmux.line("/model");
    tmux.wait_for("* smollm2");
    tmux.wait_prompts(3);
    tmux.key("C-d");
    tmux.wait_for("exit status 0");
}
