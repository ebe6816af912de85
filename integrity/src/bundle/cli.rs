//! `deepseek-integrity bundle ...`: the commands over this module. None
//! needs the configuration: bundles are made on a staging machine and
//! checked anywhere.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::create::{CreateOptions, create};
use super::error::BundleError;
use super::manifest::Kind;
use super::read::{ReleaseKeys, Signed, verify};
use crate::exit::Exit;
use crate::keys;
use crate::note::NoteSigner;

/// Where the appliance pins its release keys, one `NAME.pub` each.
pub const RELEASE_KEYS_DIR: &str = "/etc/deepseek/release-keys";

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Create a release key (a C2SP note signer, mode 0600) and its
    /// verifier key `OUT.pub`, to pin in /etc/deepseek/release-keys/.
    Keygen {
        /// The key's name, shown in every verification (e.g. `release-2026`).
        #[arg(long)]
        name: String,
        /// Where to write the signing key.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
    },
    /// Make a signed bundle of a directory's regular files (staging machine).
    Create(CreateArgs),
    /// Verify a bundle as it streams, against pinned release keys; with
    /// `--extract`, also unpack it, only once every file matched.
    Verify {
        /// The bundle, or `-` for standard input.
        bundle: PathBuf,
        /// A release verifier key file; repeatable. Default: every `*.pub`
        /// in /etc/deepseek/release-keys.
        #[arg(long, value_name = "PATH")]
        key: Vec<PathBuf>,
        /// Unpack into this directory, which must not exist.
        #[arg(long, value_name = "DIR")]
        extract: Option<PathBuf>,
    },
}

/// `bundle create`'s arguments.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Model or software name (letters, digits, `.`, `_`, `-`, `+`).
    #[arg(long)]
    name: String,
    /// Version (the same characters).
    #[arg(long)]
    version: String,
    /// What the bundle carries: a model directory, or packages with their
    /// SBOM.
    #[arg(long, value_enum)]
    kind: Kind,
    /// The release key (`bundle keygen`).
    #[arg(long, value_name = "PATH")]
    key: PathBuf,
    /// A CycloneDX SBOM to carry as `sbom.cdx.json`.
    #[arg(long, value_name = "PATH")]
    sbom: Option<PathBuf>,
    /// The bundle to write (never over an existing file).
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// The directory whose files the bundle carries.
    source: PathBuf,
}

/// Runs a bundle command; its exit code.
pub fn run(command: &BundleCommand, json: bool) -> u8 {
    let result = match command {
        BundleCommand::Keygen { name, out } => keygen(name, out),
        BundleCommand::Create(args) => make(args, json),
        BundleCommand::Verify {
            bundle,
            key,
            extract,
        } => check(bundle, key, extract.as_deref(), json),
    };
    match result {
        Ok(()) => Exit::Ok as u8,
        Err(e) => {
            eprintln!("deepseek-integrity: error: {e}");
            e.exit() as u8
        }
    }
}

fn keygen(name: &str, out: &Path) -> Result<(), BundleError> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed)
        .map_err(|e| BundleError::Key(format!("the system has no randomness: {e}")))?;
    let signer = NoteSigner::from_seed(name, seed).map_err(|e| BundleError::Key(e.to_string()))?;
    let public = out.with_extension("pub");
    if public == out {
        return Err(BundleError::KeyFile(format!(
            "--out {}: the signing key cannot end in .pub, the name of its verifier key",
            out.display()
        )));
    }
    keys::write_secret(out, &signer.to_string())?;
    keys::write_verifier_file(&public, &signer.verifier().to_string(), out)?;
    println!("wrote release key {} (mode 0600)", out.display());
    println!(
        "wrote verifier key {} (pin it in {RELEASE_KEYS_DIR}/)",
        public.display()
    );
    println!("{}", signer.verifier());
    Ok(())
}

fn make(args: &CreateArgs, json: bool) -> Result<(), BundleError> {
    let text = keys::read_secret(&args.key)?;
    let signer = NoteSigner::parse(&text)
        .map_err(|e| BundleError::Key(format!("{}: {e}", args.key.display())))?;
    let created = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let builder = format!(
        "{}@{}",
        std::env::var("USER").unwrap_or_else(|_| "root".into()),
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default()
    );
    let options = CreateOptions {
        name: &args.name,
        version: &args.version,
        kind: args.kind,
        created,
        builder,
        sbom: args.sbom.as_deref(),
    };
    let (manifest, digest) = create(&args.source, &options, &signer, &args.out)?;
    report(
        json,
        "created",
        &args.out,
        &Signed {
            manifest,
            digest,
            signer: signer.verifier().to_string(),
        },
    );
    Ok(())
}

fn check(
    bundle: &Path,
    key: &[PathBuf],
    extract: Option<&Path>,
    json: bool,
) -> Result<(), BundleError> {
    let keys = if key.is_empty() {
        ReleaseKeys::from_dir(Path::new(RELEASE_KEYS_DIR))?
    } else {
        ReleaseKeys::from_files(key)?
    };
    let verified = if bundle == Path::new("-") {
        verify(std::io::stdin().lock(), &keys, extract)?
    } else {
        let file = std::fs::File::open(bundle).map_err(super::error::io("read", bundle))?;
        verify(
            std::io::BufReader::with_capacity(1 << 20, file),
            &keys,
            extract,
        )?
    };
    report(json, "verified", bundle, &verified.signed);
    if let Some(dir) = extract
        && !json
    {
        println!("extracted to {}", dir.display());
    }
    Ok(())
}

fn report(json: bool, what: &str, bundle: &Path, verified: &Signed) {
    let manifest = &verified.manifest;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "bundle": bundle.display().to_string(),
                "result": what,
                "digest": format!("sha256:{}", verified.digest),
                "signer": verified.signer,
                "manifest": manifest,
            })
        );
    } else {
        println!(
            "{what} {}: {} {} {}, {} files, {} bytes, digest sha256:{}, signed by {}",
            bundle.display(),
            manifest.kind.name(),
            manifest.name,
            manifest.version,
            manifest.files.len(),
            manifest.bytes(),
            verified.digest,
            verified.signer
        );
    }
}
