//! Destinations checked before any daemon starts: every file and directory a build will write is proved writable by making (and removing) a temporary beside it, under the same rules for shared directories the writer applies, so a wrong path fails in milliseconds, not after the build.

use std::path::Path;

use anyhow::{bail, Result};

use super::docker::AfterBuild;
use super::output::{Destination, Output};
use crate::host::Host;
use crate::outputs::tree::DirTarget;
use crate::outputs::{file_target, FileTarget};

/// Checks the files written after the build (buildx's --iidfile, kaniko's digest files) as
/// [`check_files`] checks the others.
pub fn check_after(after: &AfterBuild, host: &dyn Host) -> Result<()> {
    let files = [
        ("--iidfile", &after.iidfile),
        ("--digest-file", &after.digest_file),
        (
            "--image-name-with-digest-file",
            &after.name_with_digest_file,
        ),
        (
            "--image-name-tag-with-digest-file",
            &after.name_tag_with_digest_file,
        ),
    ];
    for (flag, file) in files {
        if let Some(f) = file {
            check_file(&format!("{flag} {}", f.display()), f, host, true)?;
        }
    }
    Ok(())
}

/// Checks the outputs a build writes (`--output`).
pub fn check_outputs(outputs: &[Output], host: &dyn Host) -> Result<()> {
    for out in outputs {
        let what = |d: &Path| format!("--output type={},dest={}", out.kind, d.display());
        match out.destination() {
            Destination::Dir(d) | Destination::Layout(d) => {
                if let Err(e) = DirTarget::probe(&d) {
                    bail!("{}: {e}", what(&d));
                }
            }
            Destination::File(f) => check_file(&what(&f), &f, host, false)?,
            Destination::Stdout | Destination::Daemon => {}
        }
    }
    Ok(())
}

/// Checks `--metadata-file`, `--ref-file` and `--trace`.
pub fn check_files(
    metadata: Option<&Path>,
    ref_file: Option<&Path>,
    trace: Option<&Path>,
    host: &dyn Host,
) -> Result<()> {
    for (flag, file) in [("--metadata-file", metadata), ("--ref-file", ref_file)] {
        if let Some(f) = file {
            check_file(&format!("{flag} {}", f.display()), f, host, true)?;
        }
    }
    if let Some(f) = trace {
        // Appended to where it is: an existing file only has to be writable itself.
        check_append(&format!("--trace {}", f.display()), f)?;
    }
    Ok(())
}

/// Checks the summary's files: `--summary`, `--summary-dotenv`, Tekton's two result files,
/// and $GITHUB_STEP_SUMMARY (appended to).
pub fn check_summary(s: &super::summary::SummarySpec, host: &dyn Host) -> Result<()> {
    let tekton = s.tekton_results.as_ref();
    let files = [
        ("--summary", s.file.clone()),
        ("--summary-dotenv", s.dotenv.clone()),
        ("--tekton-results", tekton.map(|d| d.join("IMAGE_DIGEST"))),
        ("--tekton-results", tekton.map(|d| d.join("IMAGE_URL"))),
    ];
    for (flag, file) in files {
        if let Some(f) = file {
            check_file(&format!("{flag} {}", f.display()), &f, host, true)?;
        }
    }
    if let Some(g) = &s.github {
        check_append(&format!("$GITHUB_STEP_SUMMARY {}", g.display()), g)?;
    }
    Ok(())
}

/// A whole file: written through a device, FIFO or descriptor, which must be writable, or made
/// beside the file it replaces (a symlink's target), where a file must be makeable. `text`:
/// a report, fine on a terminal (a tarball is not).
fn check_file(what: &str, f: &Path, host: &dyn Host, text: bool) -> Result<()> {
    match file_target(f) {
        // The same refusal `dest=-` meets in output.rs: no tarball on a terminal.
        Ok(FileTarget::Fd(1)) if !text && host.stdout_is_terminal() => bail!(
            "{what}: would write a tarball to the terminal: give dest=FILE, or redirect stdout"
        ),
        Ok(FileTarget::Fd(_)) => Ok(()),
        Ok(FileTarget::Through(e)) if e.writable() => Ok(()),
        Ok(FileTarget::Through(e)) => bail!(
            "{what}: {} is not writable by uid {}: fix its permissions or choose another file",
            e.path.display(),
            host.euid()
        ),
        Ok(FileTarget::Replace(b)) => match b.probe() {
            Ok(()) => Ok(()),
            Err(e) => bail!("{what}: {e}"),
        },
        Err(e) => bail!("{what}: {e}"),
    }
}

/// A file appended to: the one there must open for appending, or one must be makeable.
fn check_append(what: &str, f: &Path) -> Result<()> {
    match file_target(f) {
        Ok(FileTarget::Fd(_)) => Ok(()),
        Ok(FileTarget::Through(e)) if e.writable() => Ok(()),
        Ok(FileTarget::Through(e)) => bail!(
            "{what}: {} is not writable by uid {}: fix its permissions or choose another file",
            e.path.display(),
            nix::unistd::geteuid()
        ),
        Ok(FileTarget::Replace(b)) => match b.probe_append() {
            Ok(()) => Ok(()),
            Err(e) => bail!("{what}: {e}"),
        },
        Err(e) => bail!("{what}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;
    use crate::request::output::OutputKind;

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

    fn run(outputs: &[String], metadata: Option<String>) -> Result<()> {
        let outs: Vec<Output> = outputs.iter().map(|o| out(o)).collect();
        let h = FakeHost::user();
        check_outputs(&outs, &h)?;
        check_files(metadata.as_deref().map(Path::new), None, None, &h)
    }

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writable_destinations_pass_and_leave_nothing() {
        let d = tempfile::tempdir().unwrap();
        let w = d.path().display().to_string();
        std::fs::create_dir(d.path().join("out")).unwrap();
        let ok = |outs: &[String], m: Option<String>| run(outs, m).unwrap();
        ok(&[format!("tar,{w}/x.tar")], Some(format!("{w}/m.json")));
        ok(&["tar,/dev/stdout".into()], Some("/dev/null".into()));
        ok(&[format!("local,{w}/out")], None);
        ok(&[format!("local,{w}/new/deeper")], None);
        ok(&["oci,-".into()], None);
        ok(&["image".into()], None);
        assert_eq!(names(d.path()), ["out"]);
        let tty = FakeHost {
            tty: true,
            ..FakeHost::user()
        };
        let outs = [out("tar,/dev/stdout")];
        let e = check_outputs(&outs, &tty).unwrap_err().to_string();
        assert!(e.contains("would write a tarball to the terminal"), "{e}");
    }

    #[test]
    fn unwritable_destinations_name_the_flag_and_the_path() {
        // Nothing can be created in sysfs, even by root, whatever access(2) says.
        let e = run(&["tar,/sys/x.tar".into()], None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--output type=tar,dest=/sys/x.tar: cannot create files in /sys (uid "),
            "{e}"
        );
        assert!(
            e.ends_with("choose a writable directory or fix its permissions"),
            "{e}"
        );
        let e = run(&["local,/sys/out".into()], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot create files in /sys "), "{e}");
        let d = tempfile::tempdir().unwrap();
        let w = d.path().display();
        std::fs::write(d.path().join("file"), "x").unwrap();
        std::fs::create_dir(d.path().join("dir")).unwrap();
        let e = run(&[format!("local,{w}/file")], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("file exists and is not a directory"), "{e}");
        let e = run(&[format!("docker,{w}/dir")], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("dir is a directory"), "{e}");
        let e = run(&[], Some("/sys/m.json".into()))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--metadata-file /sys/m.json: cannot create files in /sys"),
            "{e}"
        );
        let e = run(&[], Some("/nope/m.json".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("the directory /nope does not exist"), "{e}");
        let e = check_append("--trace /sys/t", Path::new("/sys/t"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot create files in /sys"), "{e}");
    }
}
