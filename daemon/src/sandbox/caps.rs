//! Step 4: no capability in any set. The bounding set is emptied first,
//! while the process may still hold CAP_SETPCAP (before the user switch).

use caps::CapSet;

use super::error::SandboxError;

const STEP: &str = "4 drop capabilities";

/// Empties the bounding set. Needs CAP_SETPCAP unless it is already empty.
pub(super) fn drop_bounding() -> Result<(), SandboxError> {
    let bounding =
        caps::read(None, CapSet::Bounding).map_err(|e| SandboxError::new(STEP, e.to_string()))?;
    if bounding.is_empty() {
        return Ok(());
    }
    caps::clear(None, CapSet::Bounding).map_err(|e| {
        SandboxError::new(
            STEP,
            format!(
                "cannot empty the bounding set ({e}): start deepseekd as root (it switches to sandbox.user) \
                 or with an empty bounding set (systemd CapabilityBoundingSet=)"
            ),
        )
    })
}

fn held(set: CapSet) -> Result<caps::CapsHashSet, SandboxError> {
    caps::read(None, set).map_err(|e| SandboxError::new(STEP, format!("reading {set:?}: {e}")))
}

/// Empties the ambient, inheritable, effective and permitted sets, skipping
/// any already empty (systemd may have removed `capset` from the syscalls
/// the daemon may make), then checks that all five sets are empty.
pub(super) fn drop_all() -> Result<String, SandboxError> {
    drop_bounding()?;
    let sets = [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ];
    for set in sets {
        if !held(set)?.is_empty() {
            caps::clear(None, set)
                .map_err(|e| SandboxError::new(STEP, format!("clearing {set:?}: {e}")))?;
        }
    }
    for set in sets.into_iter().chain([CapSet::Bounding]) {
        let held = held(set)?;
        if !held.is_empty() {
            return Err(SandboxError::new(
                STEP,
                format!("{set:?} still holds {held:?}"),
            ));
        }
    }
    Ok("effective, permitted, inheritable, ambient and bounding sets empty".to_owned())
}
