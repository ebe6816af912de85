//! `deepseek-audit verify`: the compliance check ([`crate::compliance`])
//! and its report in the chosen format.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use crate::compliance::{self, format, format::Format};
use crate::exit::fail;

/// Shown after `verify --help`; the same table is in docs/guide/exit-codes.md.
pub(crate) const EXIT_CODES: &str = "\
Exit codes (the OpenSCAP convention):
  0   every selected check passed (or does not apply here)
  1   verify itself failed: unreadable or invalid profile, output not written
  2   a check failed, or could not be decided (error, notchecked)
  64  bad command line";

/// `verify` itself failed (OpenSCAP's 1; a failed check is the report's 2).
const FAILED: u8 = 1;

/// Runs the selected checks, or prints the catalog with `list`; exit 0, 1
/// or 2 as documented in [`EXIT_CODES`].
pub(crate) fn run(
    audit_config: &Path,
    profile_path: &Path,
    format: Format,
    list: bool,
    pid: Option<i32>,
) -> ExitCode {
    if list {
        let catalog = compliance::catalog();
        let output = match format {
            Format::Json => format::catalog_json(&catalog),
            _ => format::catalog_text(&catalog),
        };
        print!("{output}");
        return ExitCode::SUCCESS;
    }
    let profile = match compliance::load_profile(profile_path) {
        Ok(profile) => profile,
        Err(e) => return fail(FAILED, &e),
    };
    let context = compliance::Context::new(
        profile,
        profile_path.to_owned(),
        audit_config.to_owned(),
        pid,
    );
    let report = compliance::run(&context);
    let text = match format {
        Format::Text => format::text(&report, std::io::stdout().is_terminal()),
        Format::Json => format::json(&report),
        Format::Sarif => format::sarif(&report),
        Format::Junit => match format::junit(&report) {
            Ok(xml) => xml,
            Err(e) => return fail(FAILED, &format!("cannot write the JUnit report: {e}")),
        },
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        return fail(FAILED, &format!("cannot write the report: {e}"));
    }
    ExitCode::from(report.exit_code())
}
