//! Leaving nothing behind: the guard that ends the children, unmounts and removes the work dir whatever way the bench ends, and clearing dirs between runs.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use bkrun::host::mountinfo;

use crate::procs;

/// Ends our children, unmounts and removes the work dir when the bench ends, also on error or panic.
pub struct Guard {
    pub work: PathBuf,
    pub mounted: Option<PathBuf>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Longer than bkrun's own 10 s stop grace, so a bkrun can still stop its daemon in order.
        procs::end_all(Duration::from_secs(15));
        unmount_under(&self.work);
        if let Some(m) = &self.mounted {
            if let Err(e) = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH) {
                if e != nix::errno::Errno::EINVAL {
                    eprintln!("compare: cannot unmount {}: {e}", m.display());
                }
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.work) {
            eprintln!("compare: cannot remove {}: {e}", self.work.display());
        }
    }
}

/// Unmounts everything mounted at or below `dir`, deepest first (a snapshot mount buildkitd left
/// behind would otherwise keep a state dir from being removed).
fn unmount_under(dir: &Path) {
    let Ok(mounts) = mountinfo::read_self() else {
        return;
    };
    let here = mounts.iter().filter(|m| m.mount_point.starts_with(dir));
    for p in mountinfo::deepest_first(here.map(|m| m.mount_point.as_path())) {
        let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Removes a state or output dir between runs (unmounting anything a daemon left inside it).
pub fn clear(dir: &Path) -> Result<()> {
    if dir.exists() {
        unmount_under(dir);
        fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    Ok(())
}
