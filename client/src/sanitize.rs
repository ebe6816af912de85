//! The model's text is untrusted: before it reaches the terminal, every
//! control character but newline and tab is made visible, so that no
//! answer can move the cursor, clear the screen, retitle the window,
//! write to the clipboard (OSC 52) or hide text.

use std::borrow::Cow;

/// `text` with C0 controls (ESC, CR, BEL, ...) other than `\n` and `\t`
/// shown in caret notation (`^[`), DEL as `^?`, and C1 controls (which
/// some terminals obey as 8-bit CSI, OSC, ...) as `<U+009B>`.
pub(crate) fn for_terminal(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if !is_unsafe(c) => out.push(c),
            '\u{7f}' => out.push_str("^?"),
            c if u32::from(c) < 0x20 => {
                out.push('^');
                out.push(char::from(b'@' + c as u8));
            }
            c => out.push_str(&format!("<U+{:04X}>", u32::from(c))),
        }
    }
    Cow::Owned(out)
}

fn is_unsafe(c: char) -> bool {
    c != '\n' && c != '\t' && c.is_control()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_made_visible() {
        assert_eq!(for_terminal("plain\ttext\n"), "plain\ttext\n");
        assert!(matches!(for_terminal("café ☕"), Cow::Borrowed(_)));
        assert_eq!(for_terminal("a\x1b[2Jb"), "a^[[2Jb");
        assert_eq!(for_terminal("\x1b]52;c;ZXZpbA==\x07"), "^[]52;c;ZXZpbA==^G");
        assert_eq!(for_terminal("over\rwrite\x7f"), "over^Mwrite^?");
        assert_eq!(for_terminal("\u{9b}31m"), "<U+009B>31m");
        assert_eq!(for_terminal("\0"), "^@");
    }
}
