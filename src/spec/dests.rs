//! Destinations checked before any daemon starts: every file and directory a build will write must be writable by bkrun's user, so a wrong path fails in milliseconds, not after the build.

use std::path::Path;

use anyhow::{bail, Result};

use super::build::BuildSpec;
use super::output::{Destination, Output};
use crate::host::{Host, PathKind};
use crate::place::{classify, parent_of, FileTarget};

/// Checks the outputs, `--metadata-file`, `--ref-file` and `--trace` of `spec`.
pub fn check(spec: &BuildSpec, host: &dyn Host) -> Result<()> {
    check_outputs(&spec.outputs, host)?;
    check_files(
        spec.metadata_file.as_deref(),
        spec.ref_file.as_deref(),
        spec.trace.as_deref(),
        host,
    )
}

fn check_outputs(outputs: &[Output], host: &dyn Host) -> Result<()> {
    for out in outputs {
        let what = |d: &Path| format!("--output type={},dest={}", out.kind, d.display());
        match out.destination() {
            Destination::Dir(d) | Destination::Layout(d) => check_dir(&what(&d), &d, host)?,
            Destination::File(f) => {
                // The same refusal `dest=-` meets in output.rs: no tarball on a terminal.
                if classify(&f, host) == FileTarget::Fd(1) && host.stdout_is_terminal() {
                    bail!(
                        "{}: would write a tarball to the terminal: give dest=FILE, or redirect stdout",
                        what(&f)
                    );
                }
                check_file(&what(&f), &f, host)?
            }
            Destination::Stdout | Destination::Daemon => {}
        }
    }
    Ok(())
}

fn check_files(
    metadata: Option<&Path>,
    ref_file: Option<&Path>,
    trace: Option<&Path>,
    host: &dyn Host,
) -> Result<()> {
    for (flag, file) in [("--metadata-file", metadata), ("--ref-file", ref_file)] {
        if let Some(f) = file {
            check_file(&format!("{flag} {}", f.display()), f, host)?;
        }
    }
    if let Some(f) = trace {
        // Appended to where it is: an existing file only has to be writable itself.
        let what = format!("--trace {}", f.display());
        match host.path_kind(f) {
            PathKind::File | PathKind::Special if !host.writable(f) => bail!(
                "{what}: {} is not writable by uid {}: fix its permissions or choose another file",
                f.display(),
                host.euid()
            ),
            PathKind::File | PathKind::Special => {}
            _ => check_file(&what, f, host)?,
        }
    }
    Ok(())
}

/// A directory output: an existing directory must be writable; a missing one is made in its
/// closest existing ancestor, which must be.
fn check_dir(what: &str, d: &Path, host: &dyn Host) -> Result<()> {
    match host.path_kind(d) {
        PathKind::Dir if host.dir_usable(d) => Ok(()),
        PathKind::Dir => unwritable(what, d, host),
        PathKind::File | PathKind::Special => bail!(
            "{what}: {} is not a directory: give a directory (it is created if missing)",
            d.display()
        ),
        PathKind::Missing if host.read_link(d).is_some() => bail!(
            "{what}: {} is a symlink to nothing: remove it or give another directory",
            d.display()
        ),
        PathKind::Missing => {
            let mut a = parent_of(d);
            while host.path_kind(a) == PathKind::Missing
                && a != Path::new(".")
                && a != Path::new("/")
            {
                a = parent_of(a);
            }
            match host.path_kind(a) {
                PathKind::Dir if host.dir_usable(a) => Ok(()),
                PathKind::Dir | PathKind::Missing => unwritable(what, a, host),
                _ => bail!(
                    "{what}: {} is not a directory: give a path under a directory",
                    a.display()
                ),
            }
        }
    }
}

/// A file output: written through a device, FIFO or descriptor, which must be writable, or
/// made beside the file it replaces (a symlink's target), whose directory must be.
fn check_file(what: &str, f: &Path, host: &dyn Host) -> Result<()> {
    match classify(f, host) {
        FileTarget::Fd(_) => Ok(()),
        FileTarget::Through(p) if host.writable(&p) => Ok(()),
        FileTarget::Through(p) => bail!(
            "{what}: {} is not writable by uid {}: fix its permissions or choose another file",
            p.display(),
            host.euid()
        ),
        FileTarget::Dir(p) => bail!("{what}: {} is a directory: give a file path", p.display()),
        FileTarget::Replace(p) => {
            let dir = parent_of(&p);
            match host.path_kind(dir) {
                PathKind::Dir if host.dir_usable(dir) => Ok(()),
                PathKind::Missing => bail!(
                    "{what}: the directory {} does not exist: create it first",
                    dir.display()
                ),
                _ => unwritable(what, dir, host),
            }
        }
    }
}

fn unwritable(what: &str, dir: &Path, host: &dyn Host) -> Result<()> {
    bail!(
        "{what}: cannot create files in {} (uid {} may not write there): choose a writable directory or fix its permissions",
        dir.display(),
        host.euid()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;
    use crate::spec::output::OutputKind;

    fn out(s: &str) -> Output {
        let (kind, dest) = match s.split_once(',') {
            Some((k, d)) => (k, Some(d)),
            None => (s, None),
        };
        let kind = match kind {
            "local" => OutputKind::Local,
            "tar" => OutputKind::Tar,
            "oci" => OutputKind::Oci,
            "docker" => OutputKind::Docker,
            _ => OutputKind::Image,
        };
        let attrs = dest
            .map(|d| ("dest".to_string(), d.to_string()))
            .into_iter()
            .collect();
        Output { kind, attrs }
    }

    fn host() -> FakeHost {
        let mut h = FakeHost::user();
        h.usable_dirs = vec!["/w", "/w/out"];
        h.paths = vec![
            ("/ro", PathKind::Dir),
            ("/dev/null", PathKind::Special),
            ("/dev/full", PathKind::Special),
            ("/ro/real.tar", PathKind::File),
            ("/w/file", PathKind::File),
        ];
        h.links = vec![
            ("/dev/stdout", "/proc/self/fd/1"),
            ("/w/link.tar", "/ro/real.tar"),
        ];
        h.writable = vec!["/dev/null"];
        h
    }

    fn run(outputs: &[&str], metadata: Option<&str>) -> Result<()> {
        let outs: Vec<Output> = outputs.iter().map(|o| out(o)).collect();
        check_outputs(&outs, &host())?;
        check_files(metadata.map(Path::new), None, None, &host())
    }

    fn err(outputs: &[&str], metadata: Option<&str>) -> String {
        run(outputs, metadata).unwrap_err().to_string()
    }

    #[test]
    fn writable_destinations_pass() {
        let ok = |outs: &[&str], m| run(outs, m).unwrap();
        ok(&["tar,/w/x.tar"], Some("/w/m.json"));
        ok(&["tar,/dev/stdout"], Some("/dev/null"));
        ok(&["local,/w/out"], None);
        ok(&["local,/w/new/deeper"], None);
        ok(&["oci,-"], None);
        ok(&["image"], None);
        let mut tty = host();
        tty.tty = true;
        let outs = [out("tar,/dev/stdout")];
        let e = check_outputs(&outs, &tty).unwrap_err().to_string();
        assert!(e.contains("would write a tarball to the terminal"), "{e}");
    }

    #[test]
    fn unwritable_destinations_name_the_flag_and_the_path() {
        assert_eq!(
            err(&["tar,/ro/x.tar"], None),
            "--output type=tar,dest=/ro/x.tar: cannot create files in /ro (uid 1000 may not write there): choose a writable directory or fix its permissions"
        );
        // A link is followed to the file it replaces.
        assert!(err(&["tar,/w/link.tar"], None).contains("cannot create files in /ro"));
        assert!(err(&["local,/ro/out"], None).contains("cannot create files in /ro "));
        assert!(err(&["local,/w/file"], None).contains("/w/file is not a directory"));
        assert!(err(&["docker,/w/out"], None).contains("/w/out is a directory"));
        assert_eq!(
            err(&[], Some("/ro/m.json")),
            "--metadata-file /ro/m.json: cannot create files in /ro (uid 1000 may not write there): choose a writable directory or fix its permissions"
        );
        assert!(err(&[], Some("/dev/full")).contains("/dev/full is not writable by uid 1000"));
        assert!(err(&[], Some("/nope/m.json")).contains("the directory /nope does not exist"));
    }
}
