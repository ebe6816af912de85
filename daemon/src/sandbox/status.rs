//! The kernel's own view of the process (`/proc/self/status`): what the
//! hardening report shows and what each lockdown step is verified against.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

/// The lines of `/proc/self/status` that describe the process's privileges.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProcessStatus {
    pub uid: String,
    pub gid: String,
    pub groups: String,
    pub threads: u32,
    pub cap_inh: String,
    pub cap_prm: String,
    pub cap_eff: String,
    pub cap_bnd: String,
    pub cap_amb: String,
    pub no_new_privs: String,
    pub seccomp: String,
    pub seccomp_filters: String,
}

impl ProcessStatus {
    /// True when every capability set is empty.
    pub fn no_capabilities(&self) -> bool {
        [
            &self.cap_inh,
            &self.cap_prm,
            &self.cap_eff,
            &self.cap_bnd,
            &self.cap_amb,
        ]
        .iter()
        .all(|set| set.trim_start_matches('0').is_empty())
    }

    fn parse(text: &str) -> Self {
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(|value| value.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        Self {
            uid: field("Uid"),
            gid: field("Gid"),
            groups: field("Groups"),
            threads: field("Threads").parse().unwrap_or(0),
            cap_inh: field("CapInh"),
            cap_prm: field("CapPrm"),
            cap_eff: field("CapEff"),
            cap_bnd: field("CapBnd"),
            cap_amb: field("CapAmb"),
            no_new_privs: field("NoNewPrivs"),
            seccomp: field("Seccomp"),
            seccomp_filters: field("Seccomp_filters"),
        }
    }
}

/// `/proc/self/status`, opened once before the lockdown so it stays
/// readable afterwards (Landlock checks at open, and /proc is not granted).
#[derive(Debug)]
pub struct StatusFile(Mutex<File>);

impl StatusFile {
    pub fn open() -> std::io::Result<Self> {
        File::open("/proc/self/status").map(|f| Self(Mutex::new(f)))
    }

    /// Reads the current status (the kernel regenerates it on every read).
    pub fn read(&self) -> std::io::Result<ProcessStatus> {
        let mut file = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        file.seek(SeekFrom::Start(0))?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        Ok(ProcessStatus::parse(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_privilege_lines() {
        let text = "Name:\tdeepseekd\nUid:\t65534\t65534\t65534\t65534\nThreads:\t3\n\
                    CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
                    CapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\n\
                    Seccomp_filters:\t3\n";
        let status = ProcessStatus::parse(text);
        assert_eq!(status.uid, "65534 65534 65534 65534");
        assert_eq!(status.threads, 3);
        assert_eq!(status.no_new_privs, "1");
        assert_eq!(status.seccomp_filters, "3");
        assert!(status.no_capabilities());
        let root = ProcessStatus::parse("CapEff:\t000001ffffffffff\n");
        assert!(!root.no_capabilities());
    }

    #[test]
    fn reads_this_process() {
        let status = StatusFile::open().expect("open").read().expect("read");
        assert!(status.threads >= 1);
        assert!(!status.uid.is_empty());
    }
}
