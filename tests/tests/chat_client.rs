//! `deepseek chat` (client/), the real binary against the real daemon and
//! auditor on the tiny R1-style fixture (and SmolLM2 where an answer must
//! last): one question for scripts, as an allowed user and as others, with
//! the daemon or the auditor down; and sessions under a real terminal
//! (tmux), driven by keystrokes and read off the screen.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use deepseek_tests::{
    Auditor, Daemon, binary, gqa_table, is_root, llm_fixture, llm_table, ort_library, post_json,
    shared_tempdir, write_config_audited,
};
use serde_json::{Value, json};

const MODEL: &str = "tiny-r1";
/// Its answer to this question closes the reasoning within 24 tokens.
const QUESTION: &str = "Café ☕ — naïve façade? 你好!";
/// A uid and gid no account has: outside every allow-list and group.
const STRANGER: u32 = 23_456;
const NOGROUP: u32 = 65_534;

fn tiny_r1() -> Daemon {
    Daemon::start("", &llm_table(MODEL, &llm_fixture(), ""))
}

/// `deepseek chat --socket SOCKET ARGS`.
fn chat(socket: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(binary("deepseek"));
    command
        .arg("chat")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("DEEPSEEK_MODEL")
        .env_remove("NO_COLOR");
    command
}

/// Runs `command` with `stdin` as its input; its output.
fn run(command: &mut Command, stdin: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn deepseek");
    let mut input = child.stdin.take().expect("stdin");
    // A refused question is not read to its end: the pipe may break.
    let _ = input.write_all(stdin);
    drop(input);
    child.wait_with_output().expect("deepseek output")
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exited")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The daemon's whole answer to `messages`, greedy, 24 tokens: what the
/// client must have shown.
fn answer(d: &Daemon, messages: Value) -> Value {
    let body = json!({"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 24});
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let response = runtime.block_on(post_json(&d.socket, "/v1/chat/completions", &body));
    assert_eq!(response.status, 200, "{:?}", response.body);
    response.json()["choices"][0]["message"].clone()
}

const GREEDY: [&str; 4] = ["--temperature", "0", "--max-tokens", "24"];

#[test]
fn a_question_from_the_command_line_or_stdin_is_answered_on_stdout() {
    let d = tiny_r1();
    let expected = answer(&d, json!([{"role": "user", "content": QUESTION}]));
    let content = expected["content"]
        .as_str()
        .expect("the answer closes its reasoning");
    let reasoning = expected["reasoning_content"].as_str().expect("reasoning");

    // The only model is the default; the reasoning is left out, and
    // stderr only says that max_tokens cut the answer.
    let cut = "(cut short: the token limit (--max-tokens, or the model's context) was reached)\n";
    let by_argument = run(chat(&d.socket, &GREEDY).arg(QUESTION), b"");
    assert_eq!(code(&by_argument), 0, "{}", text(&by_argument.stderr));
    assert_eq!(text(&by_argument.stdout), format!("{content}\n"));
    assert_eq!(text(&by_argument.stderr), cut);

    // From stdin, the reasoning asked for: on stderr.
    let by_stdin = run(
        chat(&d.socket, &GREEDY).args(["-m", MODEL, "--reasoning", "show"]),
        QUESTION.as_bytes(),
    );
    assert_eq!(code(&by_stdin), 0, "{}", text(&by_stdin.stderr));
    assert_eq!(text(&by_stdin.stdout), format!("{content}\n"));
    assert_eq!(text(&by_stdin.stderr), format!("{reasoning}\n{cut}"));

    // Each request was recorded, streamed.
    let auditor = d.auditor.as_ref().expect("auditor");
    let completions = auditor
        .entries()
        .into_iter()
        .filter(|e| e["event"] == "completion")
        .count();
    assert_eq!(completions, 2);
}

#[test]
fn bad_questions_and_unknown_models_are_refused_with_their_codes() {
    let d = tiny_r1();
    let over = vec![b'x'; (1 << 20) + 1];
    let cases: [(&[&str], &[u8], i32, &str); 5] = [
        (
            &[],
            &over,
            65,
            "the question is over the limit of 1048576 bytes",
        ),
        (&[], b" \n", 65, "the question is empty"),
        (&[], b"\xff\xfe", 65, "the question is not UTF-8 text"),
        (
            &["-m", "nope", "hi"],
            b"",
            64,
            "no model to ask: deepseekd does not serve \"nope\"; it serves: tiny-r1",
        ),
        (
            &["--max-tokens", "1000", "hi"],
            b"",
            65,
            "the conversation is too long for the model's context",
        ),
    ];
    for (args, stdin, expected, message) in cases {
        let output = run(&mut chat(&d.socket, args), stdin);
        let stderr = text(&output.stderr);
        assert_eq!(code(&output), expected, "{args:?}: {stderr}");
        assert!(stderr.starts_with("deepseek: error: "), "{stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty());
    }
    // The daemon's own words follow ours.
    let output = run(&mut chat(&d.socket, &["--max-tokens", "1000", "hi"]), b"");
    assert!(
        text(&output.stderr)
            .contains("deepseekd said: This model's maximum context length is 256 tokens"),
        "{}",
        text(&output.stderr)
    );
    let usage = run(&mut chat(&d.socket, &["--max-tokens", "0", "hi"]), b"");
    assert_eq!(code(&usage), 64, "{}", text(&usage.stderr));
}

#[test]
fn several_models_and_none_named_is_a_usage_error_listing_them() {
    let models = [llm_table(MODEL, &llm_fixture(), ""), gqa_table()].concat();
    let d = Daemon::start("", &models);
    let output = run(&mut chat(&d.socket, &["hi"]), b"");
    assert_eq!(code(&output), 64);
    assert!(
        text(&output.stderr).contains(
            "deepseekd serves several chat models; name one with -m: tiny-r1, tiny-r1-gqa"
        ),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn a_daemon_that_is_not_running_is_named_with_what_to_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = run(&mut chat(&dir.path().join("none.sock"), &["hi"]), b"");
    assert_eq!(code(&missing), 69);
    let stderr = text(&missing.stderr);
    assert!(stderr.contains("deepseekd is not running:"), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(stderr.contains("systemctl status deepseekd"), "{stderr}");
    // A socket left behind, nothing listening on it.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    let refused = run(&mut chat(&stale, &["hi"]), b"");
    assert_eq!(code(&refused), 69);
    assert!(
        text(&refused.stderr).contains("nothing listens on"),
        "{}",
        text(&refused.stderr)
    );
}

#[test]
fn with_the_auditor_down_the_refusal_says_so() {
    let mut d = tiny_r1();
    d.auditor
        .as_mut()
        .expect("auditor")
        .stop(nix::sys::signal::Signal::SIGKILL);
    let output = run(&mut chat(&d.socket, &["hi"]), b"");
    let stderr = text(&output.stderr);
    assert_eq!(code(&output), 69, "{stderr}");
    assert!(
        stderr.contains("requests are refused until it records again"),
        "{stderr}"
    );
    assert!(
        stderr.contains("deepseekd said: the audit log did not record this request"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

/// A daemon serving tiny-r1 whose socket (mode 0660, group `nogroup`, as
/// root starts it) admits the group `nogroup`: as the packaged daemon
/// admits the group `deepseek`.
fn daemon_for_group(server_extra: &str) -> Daemon {
    let dir = shared_tempdir();
    let socket = dir.path().join("deepseekd.sock");
    let auditor = Auditor::start(&dir.path().join("audit"));
    let config = write_config_audited(
        dir.path(),
        &socket,
        &ort_library(),
        &format!("socket_group = \"nogroup\"\n{server_extra}"),
        "",
        &llm_table(MODEL, &llm_fixture(), ""),
        &auditor.table(),
    );
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replacen("allowed_groups = []", "allowed_groups = [\"nogroup\"]", 1),
    )
    .expect("config");
    let mut d = Daemon::spawn_with_config(dir, socket, config, &[]);
    d.auditor = Some(auditor);
    d.wait_ready();
    d
}

/// `deepseek chat` as `uid` with primary group `gid` (and no other).
fn chat_as(uid: u32, gid: u32, socket: &Path, args: &[&str]) -> Output {
    let mut command = chat(socket, args);
    command.uid(uid).gid(gid).env("HOME", "/nonexistent");
    run(&mut command, b"")
}

#[test]
fn a_member_of_the_group_is_answered_and_others_are_told_why_not() {
    if !is_root() {
        eprintln!("skipped: running as other users needs root");
        return;
    }
    let d = daemon_for_group("");
    let expected = answer(&d, json!([{"role": "user", "content": QUESTION}]));
    let asked = [&GREEDY[..], &[QUESTION]].concat();
    let member = chat_as(STRANGER, NOGROUP, &d.socket, &asked);
    assert_eq!(code(&member), 0, "{}", text(&member.stderr));
    assert_eq!(
        text(&member.stdout),
        format!("{}\n", expected["content"].as_str().expect("an answer"))
    );

    // Not in the group: the socket's mode refuses the connection.
    let outsider = chat_as(STRANGER, STRANGER, &d.socket, &["hi"]);
    let stderr = text(&outsider.stderr);
    assert_eq!(code(&outsider), 77, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "permission denied on {}: are you in the deepseek group? Check with `id -nG`",
            d.socket.display()
        )),
        "{stderr}"
    );

    // A socket anyone may connect to: the daemon's allow-list refuses (403).
    let open = daemon_for_group("socket_mode = 0o666\nallow_world_connect = true");
    let outsider = chat_as(STRANGER, STRANGER, &open.socket, &["hi"]);
    let stderr = text(&outsider.stderr);
    assert_eq!(code(&outsider), 77, "{stderr}");
    assert!(
        stderr.contains("permission denied by deepseekd"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "deepseekd said: uid {STRANGER} gid {STRANGER} is not allowed to use this socket"
        )),
        "{stderr}"
    );
}
