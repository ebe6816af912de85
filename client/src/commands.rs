//! The commands of an interactive session: a line that starts with `/`.

use std::path::PathBuf;

use crate::render::Reasoning;

/// What `/help` prints.
pub(crate) const HELP: &str = "\
Commands:
  /model            list the daemon's chat models (* is the one asked)
  /model NAME       ask NAME from now on (the conversation is kept)
  /system           show the system prompt
  /system TEXT      set the system prompt
  /clear            forget the conversation (the system prompt stays)
  /clear system     remove the system prompt
  /think            show how the model's reasoning is shown
  /think show|dim|hide   show the reasoning, dimmed, or not at all
  /save FILE        write the conversation as JSON to FILE (mode 0600;
                    never over an existing file)
  /save --force FILE     the same, replacing FILE
  /help             this list
  /bye              leave (or Ctrl-D at an empty prompt)
Input: Enter sends. End a line with \\ to go on to the next line, or put
the text between \"\"\" and \"\"\". Ctrl-C stops an answer, or clears the line.
";

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Command {
    ListModels,
    Model(String),
    ShowSystem,
    System(String),
    Clear,
    ClearSystem,
    ShowThink,
    Think(Reasoning),
    Save { path: PathBuf, force: bool },
    Help,
    Bye,
}

/// `line` as a command: `None` when it is not one (no leading `/`), an
/// error message when it is a command used wrongly.
pub(crate) fn parse(line: &str) -> Option<Result<Command, String>> {
    let line = line.trim();
    let rest = line.strip_prefix('/')?;
    let (name, argument) = rest
        .split_once(char::is_whitespace)
        .map_or((rest, ""), |(n, a)| (n, a.trim()));
    Some(match (name, argument) {
        ("model", "") => Ok(Command::ListModels),
        ("model", name) => Ok(Command::Model(name.to_owned())),
        ("system", "") => Ok(Command::ShowSystem),
        ("system", text) => Ok(Command::System(text.to_owned())),
        ("clear", "") => Ok(Command::Clear),
        ("clear", "system") => Ok(Command::ClearSystem),
        ("think", "") => Ok(Command::ShowThink),
        ("think", style) => style
            .parse()
            .map(Command::Think)
            .map_err(|()| format!("/think takes show, dim or hide, not {style:?}")),
        ("save", argument) => save(argument),
        ("help" | "?", "") => Ok(Command::Help),
        ("bye" | "exit" | "quit", "") => Ok(Command::Bye),
        _ => Err(format!("unknown command /{rest}; /help lists the commands")),
    })
}

fn save(argument: &str) -> Result<Command, String> {
    let (force, file) = match argument.strip_prefix("--force") {
        Some(file) if file.is_empty() || file.starts_with(char::is_whitespace) => {
            (true, file.trim())
        }
        _ => (false, argument),
    };
    if file.is_empty() {
        return Err("/save needs a file: /save FILE".to_owned());
    }
    let path = match (file.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(file),
    };
    Ok(Command::Save { path, force })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command {
        parse(line).expect("a command").expect("valid")
    }

    #[test]
    fn commands_parse() {
        assert_eq!(parse("hello /model"), None);
        assert_eq!(ok("/model"), Command::ListModels);
        assert_eq!(ok("/model  smollm2 "), Command::Model("smollm2".into()));
        assert_eq!(
            ok("/system Be brief. "),
            Command::System("Be brief.".into())
        );
        assert_eq!(ok("/system"), Command::ShowSystem);
        assert_eq!(ok("/clear"), Command::Clear);
        assert_eq!(ok("/clear system"), Command::ClearSystem);
        assert_eq!(ok("/think hide"), Command::Think(Reasoning::Hide));
        assert_eq!(ok("/bye"), Command::Bye);
        assert_eq!(
            ok("/save my chat.json"),
            Command::Save {
                path: "my chat.json".into(),
                force: false
            }
        );
        assert_eq!(
            ok("/save --force /tmp/c.json"),
            Command::Save {
                path: "/tmp/c.json".into(),
                force: true
            }
        );
        assert_eq!(
            ok("/save --forced.json"),
            Command::Save {
                path: "--forced.json".into(),
                force: false
            }
        );
        for wrong in [
            "/save",
            "/save --force",
            "/think loud",
            "/nope",
            "/clear all",
        ] {
            assert!(parse(wrong).expect("a command").is_err(), "{wrong}");
        }
    }
}
