//! The man pages: one page per binary and per subcommand (named as git
//! names them: `deepseek-audit-log-verify.8`), in section 8 for the
//! administrators' binaries and 1 for `deepseek`, the users' client,
//! rendered by
//! `clap_mangen` from the same `clap::Command` that `--help` prints.
//!
//! The page is composed from `clap_mangen`'s pieces rather than taken whole,
//! for what its full page lacks or gets wrong for us: the `after_help` exit
//! code tables become an EXIT STATUS section with one entry per code (whole,
//! `clap_mangen` would fill them into one paragraph under EXTRA), absolute
//! default paths become FILES, and every page gets VERSION and SEE ALSO.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Command;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, italic, roman};

/// System administration commands and daemons.
const ADMIN: &str = "8";
/// User commands.
const USER: &str = "1";
/// The `.TH` manual name: the centre of the page header.
const MANUAL: &str = "deepseek appliance";

/// The binaries that get pages, from their crates' own definitions, each
/// with its section.
fn binaries() -> [(Command, &'static str); 4] {
    [
        (deepseekd::command(), ADMIN),
        (deepseek_audit::command(), ADMIN),
        (deepseek_integrity::command(), ADMIN),
        (deepseek_client::command(), USER),
    ]
}

/// Writes every page into `out_dir` (created if missing); returns their paths.
pub(crate) fn generate(out_dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let date = page_date()?;
    let binaries = binaries();
    let names: Vec<(String, &str)> = binaries
        .iter()
        .map(|(c, section)| (c.get_name().to_owned(), *section))
        .collect();
    let mut written = Vec::new();
    for (cmd, section) in binaries {
        let name = cmd.get_name().to_owned();
        let Some(version) = cmd.get_version().map(ToString::to_string) else {
            bail!("{name} has no version in its clap definition");
        };
        let binary = Binary {
            source: format!("{name} {version}"),
            date: date.clone(),
            section,
            others: names.iter().filter(|(n, _)| *n != name).cloned().collect(),
        };
        // Building sets each subcommand's display name (`deepseek-audit-log`)
        // and usage name (`deepseek-audit log`) from its parents. The `help`
        // subcommands clap would generate are no pages.
        let mut cmd = without_help_subcommand(cmd.bin_name(&name));
        cmd.build();
        let mut pages = Vec::new();
        collect(&cmd, &[], &mut pages);
        for (page_cmd, ancestors) in pages {
            let page = render(page_cmd, &ancestors, &binary)?;
            let path = out_dir.join(format!("{}.{section}", page_name(page_cmd)));
            fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
            written.push(path);
        }
    }
    Ok(written)
}

/// What the pages of one binary share.
struct Binary {
    /// `.TH`'s source, and the VERSION section: what `--version` prints.
    source: String,
    date: String,
    /// The other binaries, for SEE ALSO on the top-level page.
    others: Vec<(String, &'static str)>,
    /// The section of its pages.
    section: &'static str,
}

fn without_help_subcommand(cmd: Command) -> Command {
    cmd.disable_help_subcommand(true)
        .mut_subcommands(without_help_subcommand)
}

/// The page's name, git-style: the command's path joined with dashes.
fn page_name(cmd: &Command) -> &str {
    cmd.get_display_name().unwrap_or_else(|| cmd.get_name())
}

fn visible_subcommands(cmd: &Command) -> impl Iterator<Item = &Command> {
    cmd.get_subcommands().filter(|s| !s.is_hide_set())
}

/// Every command of the tree, parents before children, each with the page
/// names of its ancestors (the binary first).
fn collect<'a>(cmd: &'a Command, ancestors: &[String], out: &mut Vec<(&'a Command, Vec<String>)>) {
    out.push((cmd, ancestors.to_vec()));
    let mut path = ancestors.to_vec();
    path.push(page_name(cmd).to_owned());
    for sub in visible_subcommands(cmd) {
        collect(sub, &path, out);
    }
}

/// The page names of every command below `cmd`, parents before children.
fn descendants(cmd: &Command, out: &mut Vec<String>) {
    for sub in visible_subcommands(cmd) {
        out.push(page_name(sub).to_owned());
        descendants(sub, out);
    }
}

fn render(cmd: &Command, ancestors: &[String], binary: &Binary) -> Result<Vec<u8>> {
    let man = Man::new(cmd.clone())
        .section(binary.section)
        .date(&binary.date)
        .source(&binary.source)
        .manual(MANUAL);
    // Each piece starts with the same preamble (roff's apostrophe string);
    // the page keeps only the first.
    let preamble = Roff::new().render();
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    // No hyphenation: it would break page and option names across lines.
    page.extend_from_slice(b".nh\n");
    let mut piece = |render: &dyn Fn(&mut dyn Write) -> std::io::Result<()>| -> Result<()> {
        let mut buf = Vec::new();
        render(&mut buf)?;
        page.extend_from_slice(buf.strip_prefix(preamble.as_bytes()).unwrap_or(&buf));
        Ok(())
    };
    piece(&|w| man.render_name_section(w))?;
    piece(&|w| man.render_synopsis_section(w))?;
    if cmd.get_about().is_some() || cmd.get_long_about().is_some() {
        piece(&|w| man.render_description_section(w))?;
    }
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        piece(&|w| man.render_options_section(w))?;
    }
    if visible_subcommands(cmd).next().is_some() {
        piece(&|w| man.render_subcommands_section(w))?;
    }
    if let Some(after) = cmd.get_after_long_help().or_else(|| cmd.get_after_help()) {
        match exit_status(&after.to_string()) {
            Some(section) => piece(&|w| section.to_writer(w))?,
            None => piece(&|w| man.render_extra_section(w))?,
        }
    }
    let files = files(cmd);
    if let Some(files) = &files {
        piece(&|w| files.to_writer(w))?;
    }
    let mut tail = Roff::new();
    tail.control("SH", ["VERSION"])
        .text([roman(&binary.source)]);
    // Left-adjusted: justifying a list of long names spreads it thin.
    tail.control("SH", ["SEE ALSO"]).control("ad", ["l"]);
    let mut own = ancestors.to_vec();
    descendants(cmd, &mut own);
    let mut see_also: Vec<(String, &str)> =
        own.into_iter().map(|name| (name, binary.section)).collect();
    if ancestors.is_empty() {
        see_also.extend(binary.others.iter().cloned());
    }
    tail.text(references(&see_also));
    piece(&|w| tail.to_writer(w))?;
    Ok(page)
}

/// `name(8), other(1)`, the names in bold.
fn references(names: &[(String, &str)]) -> Vec<clap_mangen::roff::Inline> {
    let mut inlines = Vec::new();
    for (i, (name, section)) in names.iter().enumerate() {
        if i > 0 {
            inlines.push(roman(", "));
        }
        inlines.push(bold(name));
        inlines.push(roman(format!("({section})")));
    }
    inlines
}

/// An `after_help` exit code table as an EXIT STATUS section, one `.TP`
/// entry per code, the text refilled to the reader's width. The table is
/// what the binaries print (docs/guide/exit-codes.md):
///
/// ```text
/// Exit codes (a note):
///   0   what it means
///   65  a longer meaning
///       continued
/// ```
///
/// Anything else is `None`, and `clap_mangen`'s EXTRA section shows it.
fn exit_status(text: &str) -> Option<Roff> {
    let mut lines = text.lines();
    let intro = lines.next()?;
    if !intro.starts_with("Exit codes") {
        return None;
    }
    let mut entries: Vec<(&str, String)> = Vec::new();
    for line in lines {
        let code_line = line.strip_prefix("  ").filter(|l| !l.starts_with(' '));
        match (code_line, entries.last_mut()) {
            (Some(rest), _) => {
                let (code, meaning) = rest.split_once(' ')?;
                entries.push((code, meaning.trim().to_owned()));
            }
            (None, Some((_, meaning))) if line.starts_with("   ") => {
                meaning.push(' ');
                meaning.push_str(line.trim());
            }
            _ => return None,
        }
    }
    if entries.is_empty() {
        return None;
    }
    let mut roff = Roff::new();
    roff.control("SH", ["EXIT STATUS"]).text([roman(intro)]);
    for (code, meaning) in entries {
        roff.control("TP", [])
            .text([bold(code)])
            .text([roman(meaning)]);
    }
    Some(roff)
}

/// FILES: the absolute paths the options default to (the configuration
/// file, for one), each with its option's help.
fn files(cmd: &Command) -> Option<Roff> {
    let mut roff = Roff::new();
    let mut seen = Vec::new();
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        let Some(long) = arg.get_long() else { continue };
        for default in arg.get_default_values() {
            let path = default.to_string_lossy().into_owned();
            if !path.starts_with('/') || seen.contains(&path) {
                continue;
            }
            if seen.is_empty() {
                roff.control("SH", ["FILES"]);
            }
            let mut help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            if !help.is_empty() && !help.ends_with('.') {
                help.push('.');
            }
            roff.control("TP", []).text([italic(&path)]);
            roff.text([
                roman(format!("{help} The default of ")),
                bold(format!("--{long}")),
                roman("."),
            ]);
            seen.push(path);
        }
    }
    (!seen.is_empty()).then_some(roff)
}

/// The pages' date: SOURCE_DATE_EPOCH's when it is set, so that a package
/// build is reproducible (reproducible-builds.org), else today's (UTC).
fn page_date() -> Result<String> {
    let seconds = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => value
            .trim()
            .parse::<i64>()
            .with_context(|| format!("SOURCE_DATE_EPOCH={value:?} is not a number of seconds"))?,
        Err(std::env::VarError::NotPresent) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .context("the clock is before 1970")?;
            i64::try_from(now.as_secs()).context("the clock is too far ahead")?
        }
        Err(e) => bail!("SOURCE_DATE_EPOCH: {e}"),
    };
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    Ok(format!("{year:04}-{month:02}-{day:02}"))
}

/// Year, month, day of a day count since 1970-01-01 (proleptic Gregorian),
/// Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }

    #[test]
    fn exit_code_table_becomes_entries() {
        let roff = exit_status("Exit codes (a note):\n  0   fine\n  65  a long\n      reason\n")
            .expect("a table");
        let text = roff.to_roff();
        assert!(
            text.contains(".SH \"EXIT STATUS\"\nExit codes (a note):\n"),
            "{text}"
        );
        assert!(text.contains(".TP\n\\fB0\\fR\nfine\n"), "{text}");
        assert!(text.contains(".TP\n\\fB65\\fR\na long reason\n"), "{text}");
    }

    #[test]
    fn other_after_help_is_left_to_clap_mangen() {
        assert!(exit_status("See also the manual.").is_none());
        assert!(exit_status("Exit codes:\nnot indented").is_none());
    }
}
