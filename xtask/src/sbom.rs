//! `sbom`: the CycloneDX 1.5 software bill of materials of the Debian
//! package, for the software bundle (`make bundle`).
//!
//! It lists what the package ships and what it needs:
//! - every crate compiled into the four binaries (the normal and build
//!   dependencies of `deepseekd`, `deepseek-audit`, `deepseek-integrity`
//!   and `deepseek-client`, as `cargo metadata` resolves them from
//!   Cargo.lock), with the registry's SHA-256;
//! - the ONNX Runtime wheel whose libraries it ships, with its pinned
//!   SHA-256;
//! - the Debian packages it depends on, as its control file names them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// The binaries' packages, the roots of what is compiled in.
const ROOTS: [&str; 4] = [
    "deepseekd",
    "deepseek-audit",
    "deepseek-integrity",
    "deepseek-client",
];

/// What `sbom` is told.
pub(crate) struct Inputs<'a> {
    pub(crate) deb: &'a Path,
    /// `onnxruntime==1.31.1`.
    pub(crate) wheel: &'a str,
    pub(crate) wheel_sha256: &'a str,
}

fn run(command: &mut Command) -> Result<String> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// The SBOM as JSON.
pub(crate) fn generate(inputs: &Inputs<'_>) -> Result<Value> {
    let control = |field: &str| -> Result<String> {
        Ok(run(Command::new("dpkg-deb")
            .arg("-f")
            .arg(inputs.deb)
            .arg(field))?
        .trim()
        .to_owned())
    };
    let (package, version) = (control("Package")?, control("Version")?);
    let metadata = metadata()?;
    let mut components = crates(&metadata)?;
    components.push(wheel(inputs.wheel, inputs.wheel_sha256)?);
    components.extend(debian(&control("Depends")?));
    Ok(json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "component": {
                "type": "application",
                "bom-ref": format!("pkg:deb/debian/{package}@{version}?arch=amd64"),
                "name": package,
                "version": version,
                "purl": format!("pkg:deb/debian/{package}@{version}?arch=amd64"),
            },
            "tools": { "components": [{ "type": "application", "name": "xtask sbom" }] },
        },
        "components": components,
    }))
}

/// `cargo metadata` of the workspace, resolved for the appliance's target
/// from Cargo.lock.
fn metadata() -> Result<Value> {
    let text = run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["metadata", "--format-version", "1", "--locked"])
            .args(["--filter-platform", "x86_64-unknown-linux-gnu"])
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("..")),
    )?;
    Ok(serde_json::from_str(&text)?)
}

/// Every package reachable from [`ROOTS`] by normal or build dependencies.
fn crates(metadata: &Value) -> Result<Vec<Value>> {
    let packages: BTreeMap<&str, &Value> = metadata["packages"]
        .as_array()
        .context("cargo metadata: no packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: BTreeMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .context("cargo metadata: no resolve")?
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let mut todo: Vec<&str> = packages
        .iter()
        .filter(|(_, p)| ROOTS.contains(&p["name"].as_str().unwrap_or_default()))
        .map(|(id, _)| *id)
        .collect();
    let mut seen = BTreeSet::new();
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes
            .get(id)
            .and_then(|n| n["deps"].as_array())
            .into_iter()
            .flatten()
        {
            let shipped = dep["dep_kinds"].as_array().is_some_and(|kinds| {
                kinds
                    .iter()
                    .any(|k| k["kind"].is_null() || k["kind"] == "build")
            });
            if shipped && let Some(pkg) = dep["pkg"].as_str() {
                todo.push(pkg);
            }
        }
    }
    let checksums = lock_checksums()?;
    Ok(seen
        .into_iter()
        .filter_map(|id| packages.get(id))
        .map(|p| {
            let (name, version) = (
                p["name"].as_str().unwrap_or_default(),
                p["version"].as_str().unwrap_or_default(),
            );
            let purl = format!("pkg:cargo/{name}@{version}");
            let mut component = json!({
                "type": "library",
                "bom-ref": purl,
                "name": name,
                "version": version,
                "purl": purl,
            });
            if let Some(license) = p["license"].as_str() {
                component["licenses"] = json!([{ "expression": license }]);
            }
            if let Some(sum) = checksums.get(&(name.to_owned(), version.to_owned())) {
                component["hashes"] = json!([{ "alg": "SHA-256", "content": sum }]);
            }
            component
        })
        .collect())
}

/// `(name, version)` to the registry checksum Cargo.lock pins.
fn lock_checksums() -> Result<BTreeMap<(String, String), String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let lock: toml::Table = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let packages = lock.get("package").and_then(toml::Value::as_array);
    Ok(packages
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let field = |key| p.get(key).and_then(toml::Value::as_str).map(str::to_owned);
            Some(((field("name")?, field("version")?), field("checksum")?))
        })
        .collect())
}

/// The ONNX Runtime wheel, `NAME==VERSION`, with its pinned SHA-256.
fn wheel(spec: &str, sha256: &str) -> Result<Value> {
    let Some((name, version)) = spec.split_once("==") else {
        bail!("--wheel {spec:?}: expected NAME==VERSION");
    };
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("--wheel-sha256 {sha256:?}: expected 64 hex digits");
    }
    let purl = format!("pkg:pypi/{name}@{version}");
    Ok(json!({
        "type": "library",
        "bom-ref": purl,
        "name": name,
        "version": version,
        "purl": purl,
        "hashes": [{ "alg": "SHA-256", "content": sha256 }],
        "licenses": [{ "license": { "id": "MIT" } }],
        "description": "ONNX Runtime's shared libraries, shipped byte for byte from this wheel",
    }))
}

/// The packages a `Depends:` field names (alternatives each, versions as
/// constraints in the description).
fn debian(depends: &str) -> Vec<Value> {
    let mut seen = BTreeSet::new();
    depends
        .split([',', '|'])
        .filter_map(|d| {
            let d = d.trim();
            let name = d.split([' ', '(', ':']).next()?.trim();
            (!name.is_empty() && seen.insert(name.to_owned())).then(|| {
                let purl = format!("pkg:deb/debian/{name}?arch=amd64");
                json!({
                    "type": "library",
                    "bom-ref": purl,
                    "name": name,
                    "purl": purl,
                    "scope": "required",
                    "description": format!("Debian dependency: {d}"),
                })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_become_one_component_per_package() {
        let parts = debian("libc6 (>= 2.36), libgcc-s1 (>= 4.2) | libgcc1, systemd, libc6");
        let names: Vec<&str> = parts.iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(names, ["libc6", "libgcc-s1", "libgcc1", "systemd"]);
        assert_eq!(
            parts[0]["description"],
            "Debian dependency: libc6 (>= 2.36)"
        );
    }

    #[test]
    fn the_wheel_needs_a_version_and_a_digest() {
        let sum = "5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f";
        let w = wheel("onnxruntime==1.31.1", sum).expect("wheel");
        assert_eq!(w["purl"], "pkg:pypi/onnxruntime@1.31.1");
        assert_eq!(w["hashes"][0]["content"], sum);
        assert!(wheel("onnxruntime", sum).is_err());
        assert!(wheel("onnxruntime==1", "abc").is_err());
    }

    /// The real workspace: the binaries' crates are there with their
    /// registry digests; test-only crates are not.
    #[test]
    fn the_crates_are_those_compiled_into_the_binaries() {
        let crates = crates(&metadata().expect("cargo metadata")).expect("crates");
        let find = |name: &str| crates.iter().find(|c| c["name"] == name);
        for shipped in [
            "deepseekd",
            "ed25519-dalek",
            "tokio",
            "tar",
            "sha2",
            "rustyline",
        ] {
            assert!(find(shipped).is_some(), "{shipped} missing");
        }
        assert!(find("tokio").is_some_and(|c| {
            c["hashes"][0]["content"]
                .as_str()
                .is_some_and(|h| h.len() == 64)
        }));
        for test_only in ["proptest", "tempfile", "xtask", "clap_mangen"] {
            assert!(find(test_only).is_none(), "{test_only} is not shipped");
        }
    }
}
