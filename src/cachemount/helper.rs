//! The root filesystem of bkrun's own seed and save steps: a private directory holding a copy of
//! the running bkrun (and, for a dynamically linked build, its loader and libraries), served to
//! the daemon as a local dir. No image from a registry is needed, in any mode or worker.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::llb::{LIB_DIR, ROOT_BIN};
use super::pack::ARG;
use crate::outputs::temps::{private_dir, Temp};

/// The session's name for the helper dir.
pub const LOCAL: &str = "bkrun-cachemounts";

pub struct Helper {
    path: PathBuf,
    _dir: Temp,
    /// What comes before ARG: the binary, or the loader and its arguments then the binary.
    prefix: Vec<String>,
}

impl Helper {
    /// Copies the running bkrun (by /proc/self/exe, the very file running: no path is
    /// resolved) into a new 0700 directory. The step's root is writable, so the runtime makes
    /// the mount points it needs below /.bkrun.
    pub fn make() -> Result<Helper> {
        let (path, dir) = private_dir("bkrun-cachemounts-")
            .context("cannot make a temp dir for the cache mounts' helper (check TMPDIR)")?;
        let root = path.join(".bkrun");
        let mk = |p: &Path| fs::DirBuilder::new().mode(0o755).recursive(true).create(p);
        for sub in ["seeds", "out", "lib"] {
            mk(&root.join(sub))?;
        }
        for sub in ["proc", "dev", "sys", "tmp", "etc"] {
            mk(&path.join(sub))?;
        }
        let exe = File::open("/proc/self/exe").context("cannot open /proc/self/exe")?;
        copy_to(exe, &path.join(&ROOT_BIN[1..]), 0o755)?;
        let mut prefix = vec![ROOT_BIN.to_string()];
        if let Some(interp) = interpreter(&mut File::open("/proc/self/exe")?)? {
            prefix = with_libraries(&path, &interp)?;
        }
        Ok(Helper {
            path,
            _dir: dir,
            prefix,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The step's argv for `bkrun __cache-mounts ARGS…`.
    pub fn argv(&self, args: &[String]) -> Vec<String> {
        let mut v = self.prefix.clone();
        v.push(ARG.to_string());
        v.extend(args.iter().cloned());
        v
    }
}

fn copy_to(mut from: File, to: &Path, mode: u32) -> Result<()> {
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(to)
        .with_context(|| format!("cannot write {}", to.display()))?;
    io::copy(&mut from, &mut out).with_context(|| format!("cannot write {}", to.display()))?;
    Ok(())
}

/// The ELF interpreter (PT_INTERP) of a dynamically linked executable; None for a static one.
fn interpreter(f: &mut File) -> io::Result<Option<String>> {
    let mut h = [0u8; 64];
    f.read_exact(&mut h)?;
    // 64-bit little-endian ELF only (the targets bkrun is built for).
    if &h[..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return Ok(None);
    }
    let phoff = u64::from_le_bytes(h[0x20..0x28].try_into().unwrap());
    let phentsize = u16::from_le_bytes([h[0x36], h[0x37]]) as u64;
    let phnum = u16::from_le_bytes([h[0x38], h[0x39]]) as u64;
    for i in 0..phnum {
        let mut ph = [0u8; 56];
        f.seek(SeekFrom::Start(phoff + i * phentsize))?;
        f.read_exact(&mut ph)?;
        const PT_INTERP: u32 = 3;
        if u32::from_le_bytes(ph[..4].try_into().unwrap()) != PT_INTERP {
            continue;
        }
        let off = u64::from_le_bytes(ph[8..16].try_into().unwrap());
        let size = u64::from_le_bytes(ph[32..40].try_into().unwrap()).min(4096);
        let mut name = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(off))?;
        f.read_exact(&mut name)?;
        let name = String::from_utf8_lossy(&name)
            .trim_end_matches('\0')
            .to_string();
        return Ok(Some(name));
    }
    Ok(None)
}

/// Copies the loader and every shared library this process has mapped into LIB_DIR (a
/// development build; the released binary is static) and returns the argv prefix that runs
/// bkrun through that loader.
fn with_libraries(root: &Path, interp: &str) -> Result<Vec<String>> {
    let lib = root.join(&LIB_DIR[1..]);
    let maps = fs::read_to_string("/proc/self/maps").context("cannot read /proc/self/maps")?;
    let mut libs: Vec<PathBuf> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/') && (p.ends_with(".so") || p.contains(".so.")))
        .map(PathBuf::from)
        .collect();
    libs.push(PathBuf::from(interp));
    libs.sort();
    libs.dedup();
    for l in &libs {
        let Some(name) = l.file_name() else { continue };
        let to = lib.join(name);
        if to.exists() {
            continue;
        }
        let f = File::open(l).with_context(|| format!("cannot read {}", l.display()))?;
        copy_to(f, &to, 0o755)?;
    }
    let loader = Path::new(interp)
        .file_name()
        .map(|n| format!("{LIB_DIR}/{}", n.to_string_lossy()))
        .unwrap_or_default();
    Ok(vec![
        loader,
        "--library-path".into(),
        LIB_DIR.into(),
        ROOT_BIN.into(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helper_dir_runs_bkrun_as_it_is_linked() {
        let h = Helper::make().unwrap();
        let bin = h.path().join(".bkrun/bkrun");
        assert!(bin.is_file());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(h.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let argv = h.argv(&["seed".into()]);
        assert_eq!(argv[argv.len() - 2], ARG);
        // The test binary is dynamically linked: its loader comes first, copied beside it.
        if argv[0] != ROOT_BIN {
            assert_eq!(argv[1], "--library-path");
            assert!(h.path().join(&argv[0][1..]).is_file());
        }
    }
}
