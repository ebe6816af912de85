//! Workspace tasks that are no part of any shipped binary, run as
//! `cargo run -p xtask -- TASK`: `man OUT_DIR` writes the Debian package's
//! man pages from the binaries' own clap definitions, so they cannot drift
//! from `--help`; `structure` checks the layout rules of
//! docs/development/code-structure.md; `sbom` writes the Debian package's
//! CycloneDX SBOM for the software bundle.
#![forbid(unsafe_code)]

mod man;
mod sbom;
mod structure;

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo run -p xtask -- man OUT_DIR
       cargo run -p xtask -- structure [ROOT]
       cargo run -p xtask -- sbom DEB NAME==VERSION WHEEL_SHA256 OUT

Tasks:
  man OUT_DIR  write the man pages of deepseekd, deepseek-audit and
               deepseek-integrity (section 8) and deepseek (section 1), one
               per command and subcommand, as plain
               roff files in OUT_DIR (created if missing). The date in the
               pages is SOURCE_DATE_EPOCH's when it is set, else today's.
  structure [ROOT]
               check the layout rules of docs/development/code-structure.md
               in the workspace at ROOT (this one by default): no source
               file over 600 lines, no unsafe outside daemon/src/sys/, no
               import cycle between the modules of a crate. Prints each
               breach and exits 1 if there is one.
  sbom DEB NAME==VERSION WHEEL_SHA256 OUT
               write the CycloneDX 1.5 SBOM of the Debian package DEB to OUT:
               the crates compiled into the binaries (from Cargo.lock, with
               their registry SHA-256), the ONNX Runtime wheel NAME==VERSION
               with its pinned WHEEL_SHA256, and the Debian packages DEB
               depends on.";

/// sysexits' EX_USAGE, as the shipped binaries use it.
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match args.as_slice() {
        [task, out_dir] if task == "man" => match man::generate(Path::new(out_dir)) {
            Ok(pages) => {
                for page in pages {
                    println!("{}", page.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("xtask: error: {e:#}");
                ExitCode::FAILURE
            }
        },
        [task, root @ ..] if task == "structure" && root.len() <= 1 => {
            let root = root.first().map_or_else(
                || Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
                std::path::PathBuf::from,
            );
            match structure::check(&root) {
                Ok(report) if report.is_empty() => ExitCode::SUCCESS,
                Ok(report) => {
                    eprint!("{report}");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("xtask: error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        [task, deb, wheel, sha256, out] if task == "sbom" => {
            let (Some(wheel), Some(sha256)) = (wheel.to_str(), sha256.to_str()) else {
                eprintln!("{USAGE}");
                return ExitCode::from(EX_USAGE);
            };
            let inputs = sbom::Inputs {
                deb: Path::new(deb),
                wheel,
                wheel_sha256: sha256,
            };
            let written = sbom::generate(&inputs).and_then(|sbom| {
                let mut text = serde_json::to_string_pretty(&sbom)?;
                text.push('\n');
                std::fs::write(out, text)?;
                Ok(())
            });
            match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("xtask: error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        [flag] if flag == "-h" || flag == "--help" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(EX_USAGE)
        }
    }
}
