//! `deepseek-audit verify` against the real kernel, a real locked-down
//! daemon, a real auditor and a real integrity database: each check passes
//! on a sound appliance and fails, with evidence, on a planted fault.
//!
//! The AIRGAP tests run verify in a fresh network namespace (`unshare -n`)
//! and the daemon tests need root (the lockdown, other processes' /proc);
//! without them they skip and say why.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use deepseek_tests::{Auditor, Daemon, binary, is_root, shared_tempdir, workspace};
use nix::sys::signal::Signal;
use serde_json::Value;

/// Whether `unshare -n` and `ip` work here; says why not when they do not.
fn netns_available() -> bool {
    let works = is_root()
        && Command::new("unshare")
            .args(["-n", "ip", "link", "show", "lo"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !works {
        eprintln!(
            "skipped: needs root, `unshare -n` and `ip` (iproute2) to run verify in a fresh network namespace"
        );
    }
    works
}

fn skip_unless_root() -> bool {
    if !is_root() {
        eprintln!(
            "skipped: needs root (the daemon's lockdown, reading another process's /proc/PID/fd)"
        );
    }
    !is_root()
}

/// A verify run: exit code, the parsed JSON report and stderr.
struct Verified {
    code: i32,
    report: Value,
    stderr: String,
}

impl Verified {
    fn check(&self, id: &str) -> &Value {
        self.report["checks"]
            .as_array()
            .and_then(|checks| checks.iter().find(|c| c["id"] == id))
            .unwrap_or_else(|| panic!("no check {id} in {}", self.report))
    }

    fn result(&self, id: &str) -> &str {
        self.check(id)["result"].as_str().expect("result")
    }

    /// [`Verified::expect`] for each (check, result, needle).
    fn expect_all(&self, expectations: &[(&str, &str, &str)]) {
        for (id, result, needle) in expectations {
            self.expect(id, result, needle);
        }
    }

    /// Asserts the result, and that the summary and evidence mention `needle`.
    fn expect(&self, id: &str, result: &str, needle: &str) {
        let check = self.check(id);
        let text = check.to_string();
        assert_eq!(
            check["result"], result,
            "{id}: {text}\nexit code {}, stderr: {}",
            self.code, self.stderr
        );
        assert!(
            text.contains(needle),
            "{id} should mention {needle:?}: {text}"
        );
    }
}

/// Runs `deepseek-audit -c AUDIT_CONFIG verify --format FORMAT` with the
/// profile, under `wrapper` (a shell script in a new network namespace) when
/// given. Returns the exit code, stdout and stderr.
fn verify_raw(
    audit_config: &Path,
    profile: &Path,
    format: &str,
    netns_script: Option<&str>,
) -> (i32, String, String) {
    let verify = format!(
        "{} -c {} verify --profile {} --format {format}",
        binary("deepseek-audit").display(),
        audit_config.display(),
        profile.display()
    );
    let output = match netns_script {
        Some(script) => Command::new("unshare")
            .args(["-n", "sh", "-ec", &format!("{script}\nexec {verify}")])
            .output(),
        None => Command::new("sh").args(["-c", &verify]).output(),
    }
    .expect("run deepseek-audit verify");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn verify(audit_config: &Path, profile: &Path, netns_script: Option<&str>) -> Verified {
    let (code, stdout, stderr) = verify_raw(audit_config, profile, "json", netns_script);
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("verify printed no JSON ({e}): {stdout}\nstderr: {stderr}"));
    Verified {
        code,
        report,
        stderr,
    }
}

fn airgap_profile(dir: &Path) -> PathBuf {
    let profile = dir.join("compliance.toml");
    fs::write(&profile, "[checks]\nselect = [\"AIRGAP\"]\n").expect("profile");
    profile
}

#[test]
fn airgap_passes_in_a_fresh_network_namespace() {
    if !netns_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let v = verify(
        Path::new("/dev/null"),
        &airgap_profile(dir.path()),
        Some("true"),
    );
    v.expect("AIRGAP-INTERFACES", "pass", "netlink link lo");
    v.expect("AIRGAP-ROUTES", "pass", "loopback routes only");
    v.expect("AIRGAP-SOCKETS", "pass", "/proc/net/");
    assert!(
        ["pass", "notapplicable"].contains(&v.result("AIRGAP-RADIOS")),
        "{}",
        v.check("AIRGAP-RADIOS")
    );
    assert_eq!(v.result("HARDEN-CAPS"), "notselected");
    assert_eq!(v.code, 0, "{}", v.report);
    assert_eq!(v.report["verdict"], "pass");
}

#[test]
fn an_interface_that_is_up_fails_airgap_by_name() {
    if !netns_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let v = verify(
        Path::new("/dev/null"),
        &airgap_profile(dir.path()),
        Some("ip link add dsk0 type veth peer name dsk1\nip link set dsk0 up"),
    );
    v.expect("AIRGAP-INTERFACES", "fail", "up: dsk0");
    assert!(
        !v.check("AIRGAP-INTERFACES")["summary"]
            .as_str()
            .expect("summary")
            .contains("dsk1"),
        "dsk1 is down: {}",
        v.check("AIRGAP-INTERFACES")
    );
    v.expect("AIRGAP-ROUTES", "pass", "loopback");
    assert_eq!(v.code, 2);
    assert_eq!(v.report["verdict"], "fail");
}

#[test]
fn a_route_fails_airgap_routes() {
    if !netns_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let v = verify(
        Path::new("/dev/null"),
        &airgap_profile(dir.path()),
        Some(
            "ip link set lo up\nip route add 10.0.0.0/8 dev lo\nip -6 route add 2001:db8::/32 dev lo",
        ),
    );
    v.expect("AIRGAP-ROUTES", "fail", "10.0.0.0/8 dev lo");
    v.expect("AIRGAP-ROUTES", "fail", "2001:db8::/32 dev lo");
    v.expect("AIRGAP-INTERFACES", "pass", "lo");
    assert_eq!(v.code, 2);
}

#[test]
fn a_listening_inet_socket_fails_airgap_sockets_with_its_process() {
    if !netns_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // Port 8080 is 1F90 in /proc/net/tcp; wait until the listener is there.
    let v = verify(
        Path::new("/dev/null"),
        &airgap_profile(dir.path()),
        Some(
            "ip link set lo up\n\
             python3 -c 'import socket,time; s=socket.socket(); s.bind((\"127.0.0.1\", 8080)); s.listen(); time.sleep(30)' &\n\
             for i in $(seq 100); do grep -q ':1F90 ' /proc/net/tcp && break; sleep 0.05; done",
        ),
    );
    v.expect("AIRGAP-SOCKETS", "fail", "tcp 127.0.0.1:8080 LISTEN");
    v.expect("AIRGAP-SOCKETS", "fail", "(python3)");
    v.expect("AIRGAP-INTERFACES", "pass", "lo");
    assert_eq!(v.code, 2);
}

/// A locked-down daemon with a copy of the demo model, a real auditor, and
/// an integrity database covering the model directory (and, when asked, the
/// daemon's binary); plus a profile pointing verify at all of it.
struct Appliance {
    daemon: Daemon,
    /// The model's directory, which a test may change.
    models: tempfile::TempDir,
    integrity_config: PathBuf,
    profile: PathBuf,
    audit_config: PathBuf,
}

impl Appliance {
    fn start(sandbox_extra: &str, cover_binary: bool) -> Self {
        let models = shared_tempdir();
        let model = models.path().join("demo.onnx");
        fs::copy(workspace().join("fixtures/models/demo.onnx"), &model).expect("copy model");
        let table = format!(
            "[[model]]\nname = \"demo\"\npath = \"{}\"\n",
            model.display()
        );
        let daemon = Daemon::spawn_full("", sandbox_extra, "", &table);
        daemon.wait_ready();
        let dir = daemon.dir.path();
        let integrity_config = dir.join("integrity.toml");
        if cover_binary {
            // Add the daemon's binary and re-sign with the same key; the
            // model's digest, which the daemon recorded at load, is unchanged.
            let mut text = fs::read_to_string(&integrity_config).expect("integrity.toml");
            text.push_str(&format!(
                "[[rule]]\npath = \"{}\"\n",
                binary("deepseekd").display()
            ));
            fs::write(&integrity_config, text).expect("integrity.toml");
            integrity(&integrity_config, "update");
        }
        let profile = dir.join("compliance.toml");
        fs::write(
            &profile,
            format!(
                "[files]\ndaemon_config = \"{}\"\nintegrity_config = \"{}\"\n\n[checks]\nselect = [\"INTEG\", \"AUDIT\", \"HARDEN\"]\n\n[users]\naudit = \"root\"\nintegrity = \"root\"\n",
                daemon.config.display(),
                integrity_config.display()
            ),
        )
        .expect("profile");
        let audit_config = daemon.auditor.as_ref().expect("auditor").config.clone();
        Self {
            daemon,
            models,
            integrity_config,
            profile,
            audit_config,
        }
    }

    /// Starts an appliance (unless the test cannot run here) and verifies it.
    fn verified(sandbox_extra: &str) -> Option<Verified> {
        if skip_unless_root() {
            return None;
        }
        Some(Self::start(sandbox_extra, false).verify())
    }

    fn verify(&self) -> Verified {
        verify(&self.audit_config, &self.profile, None)
    }

    fn auditor(&mut self) -> &mut Auditor {
        self.daemon.auditor.as_mut().expect("auditor")
    }
}

fn integrity(config: &Path, command: &str) {
    let output = Command::new(binary("deepseek-integrity"))
        .arg("--config")
        .arg(config)
        .arg(command)
        .output()
        .expect("deepseek-integrity");
    assert!(
        output.status.success(),
        "deepseek-integrity {command}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn a_sound_appliance_passes_and_each_planted_fault_fails_its_check() {
    if skip_unless_root() {
        return;
    }
    let mut a = Appliance::start("", true);
    let pid = a.daemon.pid().to_string();

    let v = a.verify();
    for id in [
        "INTEG-SIGNATURE",
        "INTEG-FILES",
        "INTEG-DAEMON-EXE",
        "INTEG-MODELS",
        "AUDIT-LOG",
        "AUDIT-UNSEALED",
        "AUDIT-SERVICE",
        "AUDIT-PERMISSIONS",
        "AUDIT-SPACE",
        "HARDEN-CAPS",
        "HARDEN-NNP",
        "HARDEN-SECCOMP",
        "HARDEN-LANDLOCK",
        "HARDEN-INET",
        "HARDEN-SOCKET",
        "HARDEN-KEYS",
    ] {
        v.expect(id, "pass", "");
    }
    v.expect("HARDEN-SYSTEMD", "notapplicable", "systemd is not PID 1");
    v.expect(
        "HARDEN-CAPS",
        "pass",
        "the process holding the listening socket",
    );
    v.expect(
        "HARDEN-CAPS",
        "pass",
        &format!("/proc/{pid}/task/*/status CapEff"),
    );
    v.expect("HARDEN-LANDLOCK", "pass", "fully enforced");
    v.expect("INTEG-DAEMON-EXE", "pass", &format!("/proc/{pid}/exe"));
    v.expect("INTEG-MODELS", "pass", "model_load of demo");
    assert_eq!(v.code, 0, "{}", v.report);

    // The socket's mode.
    let socket = a.daemon.socket.clone();
    chmod(&socket, 0o666);
    a.verify()
        .expect("HARDEN-SOCKET", "fail", "\"observed\":\"0666\"");
    chmod(&socket, 0o660);

    // A world-readable key.
    let key = a.auditor().dir.join("audit.key");
    chmod(&key, 0o644);
    let v = a.verify();
    v.expect("HARDEN-KEYS", "fail", "mode 0644 owner root");
    assert_eq!(v.code, 2);
    chmod(&key, 0o600);

    // A retired key, kept for a hand-over, readable by others: guarded
    // like the current one, and its directory like the log's.
    let previous = a.auditor().dir.join("previous.key");
    fs::copy(&key, &previous).expect("copy");
    chmod(&previous, 0o644);
    let audit_toml = fs::read_to_string(&a.audit_config).expect("audit.toml");
    fs::write(
        &a.audit_config,
        format!(
            "{audit_toml}previous_signing_key = \"{}\"\n",
            previous.display()
        ),
    )
    .expect("audit.toml");
    let v = a.verify();
    v.expect("HARDEN-KEYS", "fail", "previous_signing_key");
    v.expect("HARDEN-KEYS", "fail", "previous.key");
    chmod(&previous, 0o606);
    a.verify()
        .expect("AUDIT-PERMISSIONS", "fail", "previous.key");
    fs::write(&a.audit_config, &audit_toml).expect("audit.toml");
    fs::remove_file(&previous).expect("remove");

    // A log file the daemon's user could rewrite.
    let entries = a.auditor().log_dir.join("entries.log");
    chmod(&entries, 0o646);
    a.verify()
        .expect("AUDIT-PERMISSIONS", "fail", "entries.log");
    chmod(&entries, 0o600);

    // A tighter unsealed-tail limit than the log meets.
    let profile = fs::read_to_string(&a.profile).expect("profile");
    fs::write(
        &a.profile,
        format!("{profile}\n[thresholds]\nmax_unsealed_entries = 0\n"),
    )
    .expect("profile");
    a.verify()
        .expect("AUDIT-UNSEALED", "fail", "over the limit of 0");
    fs::write(&a.profile, &profile).expect("profile");

    // A low-water mark above the disk's free space.
    let audit_config = a.audit_config.clone();
    let audit_toml = fs::read_to_string(&audit_config).expect("audit.toml");
    fs::write(
        &audit_config,
        format!("{audit_toml}warn_free_bytes = 9000000000000000000\n"),
    )
    .expect("audit.toml");
    a.verify().expect(
        "AUDIT-SPACE",
        "fail",
        "under warn_free_bytes = 9000000000000000000",
    );
    fs::write(&audit_config, &audit_toml).expect("audit.toml");

    // A file added next to the model.
    let planted = a.models.path().join("extra.onnx");
    fs::write(&planted, b"not reviewed").expect("plant");
    let v = a.verify();
    v.expect("INTEG-FILES", "fail", "extra.onnx");
    v.expect("INTEG-MODELS", "pass", "demo");
    fs::remove_file(&planted).expect("remove");

    // The model changed and the change accepted into the database: the
    // daemon still serves the one it loaded.
    let model = a.models.path().join("demo.onnx");
    let mut bytes = fs::read(&model).expect("model");
    bytes.extend_from_slice(b"\0");
    fs::write(&model, bytes).expect("model");
    integrity(&a.integrity_config, "update");
    let v = a.verify();
    v.expect("INTEG-FILES", "pass", "");
    v.expect(
        "INTEG-MODELS",
        "fail",
        "loaded digests differ from the database: demo",
    );

    // The database altered after signing.
    let database = a.daemon.dir.path().join("integrity.db");
    let mut text = fs::read_to_string(&database).expect("database");
    text = text.replacen("demo.onnx", "demo.onnY", 1);
    fs::write(&database, text).expect("database");
    let v = a.verify();
    v.expect("INTEG-SIGNATURE", "fail", "invalid signature");
    v.expect("INTEG-FILES", "error", "INTEG-SIGNATURE");

    // The auditor stopped.
    let auditor_log = a.auditor().log_dir.clone();
    a.auditor().stop(Signal::SIGTERM);
    a.verify().expect("AUDIT-SERVICE", "fail", "not reachable");

    // An entry edited in the log.
    let entries = auditor_log.join("entries.log");
    let text = fs::read_to_string(&entries).expect("entries");
    fs::write(
        &entries,
        text.replacen("\"model\":\"demo\"", "\"model\":\"dem0\"", 1),
    )
    .expect("tamper");
    let v = a.verify();
    v.expect("AUDIT-LOG", "fail", "an entry between 0 and 2 was changed");
    v.expect("HARDEN-LANDLOCK", "error", "does not verify");
    assert_eq!(v.code, 2);
}

#[test]
fn a_daemon_without_its_lockdown_fails_the_hardening_checks() {
    // The binary is not in this database, which INTEG-DAEMON-EXE names.
    let Some(v) = Appliance::verified("enforce = false") else {
        return;
    };
    v.expect_all(&[
        ("HARDEN-CAPS", "fail", "CapEff"),
        ("HARDEN-CAPS", "fail", "000001ff"),
        ("HARDEN-NNP", "fail", "NoNewPrivs"),
        ("HARDEN-SECCOMP", "fail", "Seccomp"),
        ("HARDEN-LANDLOCK", "fail", "\"observed\":\"off\""),
        (
            "INTEG-DAEMON-EXE",
            "fail",
            "is not in the integrity database",
        ),
    ]);
    v.expect("INTEG-MODELS", "pass", "demo");
    assert_eq!(v.code, 2);
}

#[test]
fn a_seccomp_filter_that_only_logs_fails_harden_seccomp() {
    // The kernel shows Seccomp 2 either way; the start record tells.
    let Some(v) = Appliance::verified("seccomp = \"log\"") else {
        return;
    };
    v.expect_all(&[
        ("HARDEN-SECCOMP", "fail", "the seccomp filter only logs"),
        ("HARDEN-SECCOMP", "fail", "details.seccomp_mode"),
        ("HARDEN-CAPS", "pass", "CapEff"),
        ("HARDEN-LANDLOCK", "pass", "fully enforced"),
    ]);
}

#[test]
fn a_process_holding_an_inet_socket_fails_harden_inet() {
    if skip_unless_root() {
        return;
    }
    let a = Appliance::start("", false);
    let mut listener = Command::new("python3")
        .args([
            "-c",
            "import socket,sys,time; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(('::1', 0)); print('ready', flush=True); time.sleep(30)",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(listener.stdout.as_mut().expect("stdout")),
        &mut line,
    )
    .expect("ready");
    let output = Command::new(binary("deepseek-audit"))
        .arg("-c")
        .arg(&a.audit_config)
        .args([
            "verify",
            "--format",
            "json",
            "--pid",
            &listener.id().to_string(),
            "--profile",
        ])
        .arg(&a.profile)
        .output()
        .expect("verify");
    let _ = listener.kill();
    let _ = listener.wait();
    let v = Verified {
        code: output.status.code().unwrap_or(-1),
        report: serde_json::from_slice(&output.stdout).expect("json"),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    v.expect("HARDEN-INET", "fail", "udp6 [::1]:");
    v.expect("HARDEN-INET", "fail", "given with --pid");
    assert_eq!(v.code, 2);
}

#[test]
fn verify_itself_failing_exits_1_and_list_prints_the_catalog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    fs::write(&bad, "[checks]\nselect = [\"AIRGAP-IFACES\"]\n").expect("profile");
    for (profile, needle) in [
        (
            bad.as_path(),
            "checks.select: unknown check \"AIRGAP-IFACES\"",
        ),
        (
            Path::new("/nonexistent/compliance.toml"),
            "cannot read the profile /nonexistent/compliance.toml",
        ),
    ] {
        let (code, stdout, stderr) = verify_raw(Path::new("/dev/null"), profile, "text", None);
        assert_eq!(code, 1, "{stdout}{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
        assert!(stdout.is_empty(), "no report after an error: {stdout}");
    }
    let list = Command::new(binary("deepseek-audit"))
        .args(["verify", "--list", "--format", "json"])
        .output()
        .expect("list");
    assert!(list.status.success());
    let catalog: Value = serde_json::from_slice(&list.stdout).expect("json");
    let ids: Vec<&str> = catalog
        .as_array()
        .expect("array")
        .iter()
        .map(|c| c["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), 22, "{ids:?}");
    for group in ["AIRGAP-", "INTEG-", "AUDIT-", "HARDEN-"] {
        assert!(ids.iter().any(|id| id.starts_with(group)), "{ids:?}");
    }
    assert!(
        catalog[0]["references"][0]
            .as_str()
            .expect("ref")
            .starts_with("NIST SP 800-53 ")
    );
    let help = Command::new(binary("deepseek-audit"))
        .args(["verify", "--help"])
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    for needle in [
        "--format",
        "--list",
        "--pid",
        "--profile",
        "0   every selected check passed",
        "2   a check failed",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}: {help}");
    }
}

#[test]
fn without_root_the_checks_that_need_it_say_so() {
    if skip_unless_root() {
        return;
    }
    let a = Appliance::start("", false);
    // As `nobody`, the daemon's /proc/PID/fd and exe are out of reach.
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(binary("deepseek-audit"))
        .arg("-c")
        .arg(&a.audit_config)
        .args(["verify", "--pid", &a.daemon.pid().to_string(), "--profile"])
        .arg(&a.profile)
        .output()
        .expect("setpriv");
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("Not checked without root:"), "{text}");
    assert!(text.contains("HARDEN-INET"), "{text}");
}
