//! `--output` values → typed outputs: the exporter, its attributes, and where its result ends up, with the destination checked before a daemon starts.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::csv::{self, parse_bool};
use super::{clip, clip_path, clip_quoted};

/// The exporters BuildKit's daemon has (v0.32.2's worker knows exactly these five; `cacheonly`
/// is buildx's, not the daemon's). `type=registry` is read as buildx reads it: an image, pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    Local,
    Tar,
    Oci,
    Docker,
    Image,
}

impl OutputKind {
    const ALL: [OutputKind; 5] = [
        OutputKind::Local,
        OutputKind::Tar,
        OutputKind::Oci,
        OutputKind::Docker,
        OutputKind::Image,
    ];

    /// The exporter's name, as the daemon takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputKind::Local => "local",
            OutputKind::Tar => "tar",
            OutputKind::Oci => "oci",
            OutputKind::Docker => "docker",
            OutputKind::Image => "image",
        }
    }

    fn parse(s: &str) -> Option<OutputKind> {
        OutputKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// An image archive: a tarball, or with tar=false an OCI layout directory.
    fn is_archive(self) -> bool {
        matches!(self, OutputKind::Oci | OutputKind::Docker)
    }
}

impl fmt::Display for OutputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a result goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub kind: OutputKind,
    pub attrs: BTreeMap<String, String>,
}

impl Output {
    pub fn dest(&self) -> Option<&str> {
        self.attrs.get("dest").map(String::as_str)
    }

    /// tar=false asks an image archive for a directory instead of a tarball.
    fn tar(&self) -> bool {
        self.attrs
            .get("tar")
            .and_then(|v| parse_bool(v))
            .unwrap_or(true)
    }

    /// Where the exporter's output comes back to bkrun, if it does.
    pub fn destination(&self) -> Destination {
        let tarball = |d: Option<&str>| match d {
            None | Some("-") => Destination::Stdout,
            Some(p) => Destination::File(PathBuf::from(p)),
        };
        match (self.kind, self.dest()) {
            (OutputKind::Local, Some(d)) => Destination::Dir(PathBuf::from(d)),
            (OutputKind::Tar, d) => tarball(d),
            (k, d) if k.is_archive() && self.tar() => tarball(d),
            (k, Some(d)) if k.is_archive() => Destination::Layout(PathBuf::from(d)),
            _ => Destination::Daemon,
        }
    }

    /// The exporter attributes sent to the daemon: `dest` is ours to act on, not the daemon's.
    pub fn daemon_attrs(&self) -> BTreeMap<String, String> {
        let mut a = self.attrs.clone();
        if self.destination() != Destination::Daemon {
            a.remove("dest");
        }
        a
    }
}

/// Where an output ends up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Dir(PathBuf),
    File(PathBuf),
    Stdout,
    /// An OCI image-layout directory (`tar=false`), written through the session's content store.
    Layout(PathBuf),
    /// Kept in the daemon (an image in its store, or pushed).
    Daemon,
}

/// Parses one --output value and checks its destination can be written. `stdout_tty`: standard
/// output is a terminal, where no tarball may go.
pub fn parse(s: &str, stdout_tty: bool) -> Result<Output> {
    let (kind, attrs) = kind_and_attrs(s)?;
    check_attrs(kind, &attrs)?;
    let out = Output { kind, attrs };
    check_destination(&out, stdout_tty)?;
    Ok(out)
}

/// The exporter a value names, and its other attributes.
fn kind_and_attrs(s: &str) -> Result<(OutputKind, BTreeMap<String, String>)> {
    let pairs = csv::pairs(s).with_context(|| {
        format!(
            "--output {} is malformed: write it as type=TYPE,key=value,… (quote a field holding commas or quotes whole: \"name=a,b\")",
            clip_quoted(s)
        )
    })?;
    let mut attrs: BTreeMap<String, String> = pairs.into_iter().collect();
    let Some(kind) = attrs.remove("type") else {
        bail!(
            "--output {} has no type: add type=local|tar|oci|docker|image|registry",
            clip_quoted(s)
        );
    };
    let kind = match kind.as_str() {
        // buildx's spelling: the image exporter, pushing unless push= says otherwise. The
        // daemon has no exporter of that name.
        "registry" => {
            attrs.entry("push".into()).or_insert_with(|| "true".into());
            OutputKind::Image
        }
        k => match OutputKind::parse(k) {
            Some(kind) => kind,
            None => {
                let all: Vec<&str> = OutputKind::ALL.iter().map(|k| k.as_str()).collect();
                bail!(
                    "--output type={} is unknown: use one of {}, registry",
                    clip(&kind),
                    all.join(", ")
                );
            }
        },
    };
    Ok((kind, attrs))
}

/// Attributes that are mistaken whatever the destination: `output=`, a `tar=` that is no
/// boolean, an empty `dest=`, a `dest=` for the image exporter.
fn check_attrs(kind: OutputKind, attrs: &BTreeMap<String, String>) -> Result<()> {
    if let Some(v) = attrs.get("output") {
        bail!(
            "--output output={} is not an option: you meant dest={}",
            clip(v),
            clip(v)
        );
    }
    if let Some(t) = attrs.get("tar") {
        if parse_bool(t).is_none() {
            bail!(
                "--output tar={} is not a boolean: use tar=true (a tarball) or tar=false (a directory)",
                clip(t)
            );
        }
    }
    // An empty dest would mean the current directory to a local export (BuildKit's client
    // refuses it too) and nothing sensible to the others.
    if out_dest_is_empty(attrs) {
        bail!("--output type={kind},dest= is empty: give dest=DIR (or dest=FILE, dest=- for stdout, for a tarball)");
    }
    if kind == OutputKind::Image {
        if let Some(d) = attrs.get("dest") {
            bail!(
                "--output type=image,dest={}: the image exporter keeps the image in the daemon (or pushes it with push=true) and writes no file: drop dest=, or use type=oci|docker,dest=FILE",
                clip(d)
            );
        }
    }
    Ok(())
}

/// The output's destination can be written: a layout directory, a local directory, or a
/// tarball's file (or stdout when it is no terminal).
fn check_destination(out: &Output, stdout_tty: bool) -> Result<()> {
    let kind = out.kind;
    if let Destination::Layout(d) = out.destination() {
        return check_layout_dir(kind, &d);
    }
    if kind.is_archive() && out.dest().is_none() && !out.tar() {
        bail!("--output type={kind},tar=false needs dest=DIR");
    }
    match (kind, out.dest()) {
        (OutputKind::Local, None) => bail!("--output type=local needs dest=DIR"),
        (OutputKind::Local, Some("-")) => bail!(
            "--output type=local cannot write to stdout: give dest=DIR, or use type=tar,dest=-"
        ),
        (OutputKind::Local, Some(d)) => check_parent("--output type=local", Path::new(d))?,
        (OutputKind::Tar | OutputKind::Oci | OutputKind::Docker, None | Some("-"))
            if stdout_tty =>
        {
            bail!("--output type={kind} would write a tarball to the terminal: give dest=FILE, or redirect stdout");
        }
        (OutputKind::Tar | OutputKind::Oci | OutputKind::Docker, Some(d)) if d != "-" => {
            if Path::new(d).is_dir() {
                bail!(
                    "--output type={kind},dest={}: dest is a directory; give a file path",
                    clip(d)
                );
            }
            check_parent(&format!("--output type={kind}"), Path::new(d))?
        }
        _ => {}
    }
    Ok(())
}

/// A `tar=false` layout's `dest`: a directory, or missing beside an existing parent.
fn check_layout_dir(kind: OutputKind, d: &Path) -> Result<()> {
    if d.as_os_str() == "-" {
        bail!("--output type={kind},tar=false writes a directory: give dest=DIR, not -");
    }
    if d.exists() && !d.is_dir() {
        bail!(
            "--output type={kind},tar=false,dest={}: that is a file; give a directory (it is created if missing)",
            clip_path(d)
        );
    }
    check_parent(&format!("--output type={kind},tar=false"), d)
}

fn out_dest_is_empty(attrs: &BTreeMap<String, String>) -> bool {
    attrs.get("dest").is_some_and(|d| d.is_empty())
}

/// The file or directory `p` can be created: its parent directory exists.
pub fn check_parent(what: &str, p: &Path) -> Result<()> {
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        bail!(
            "{what},dest={}: its parent directory {} does not exist; create it first",
            clip_path(p),
            clip_path(parent)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_output(s: &str) -> Result<Output> {
        parse(s, false)
    }

    #[test]
    fn outputs_are_checked() {
        assert_eq!(
            parse_output("type=local,dest=.").unwrap().kind,
            OutputKind::Local
        );
        assert_eq!(parse_output("type=tar,dest=-").unwrap().dest(), Some("-"));
        assert!(parse_output("dest=x")
            .unwrap_err()
            .to_string()
            .contains("no type"));
        assert!(parse_output("type=zip,dest=x")
            .unwrap_err()
            .to_string()
            .contains("unknown"));
        assert!(parse_output("type=local")
            .unwrap_err()
            .to_string()
            .contains("dest=DIR"));
        assert!(parse_output("type=tar,dest=/no/such/dir/x.tar")
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        assert!(parse_output("type=oci,dest=/tmp")
            .unwrap_err()
            .to_string()
            .contains("directory"));
    }

    #[test]
    fn kinds_are_named_as_buildctl_names_them() {
        let e = parse_output("type=zip").unwrap_err().to_string();
        assert_eq!(
            e,
            "--output type=zip is unknown: use one of local, tar, oci, docker, image, registry"
        );
        // The daemon has no cacheonly exporter (that is buildx's), and registry is an image pushed.
        assert!(parse_output("type=cacheonly").is_err());
        let r = parse_output("type=registry,name=r/a:1").unwrap();
        assert_eq!(
            (r.kind, r.attrs["push"].as_str()),
            (OutputKind::Image, "true")
        );
        let r = parse_output("type=registry,name=r/a:1,push=false").unwrap();
        assert_eq!(r.attrs["push"], "false");
        // Only a terminal on stdout refuses a tarball there.
        let e = parse("type=oci", true).unwrap_err().to_string();
        assert!(e.contains("would write a tarball to the terminal"), "{e}");
        assert_eq!(
            parse("type=oci", false).unwrap().destination(),
            Destination::Stdout
        );
    }

    #[test]
    fn empty_or_misplaced_dests_and_quotes_are_refused() {
        for v in [
            "type=local,dest=",
            "type=tar,dest=",
            "type=oci,tar=false,dest=",
        ] {
            let e = parse_output(v).unwrap_err().to_string();
            assert!(e.contains("dest= is empty"), "{v}: {e}");
        }
        let e = parse_output("type=image,name=a,dest=x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("drop dest="), "{e}");
        let e = parse_output(r#"type=local,dest="a"b""#).unwrap_err();
        assert!(e.to_string().starts_with("--output "), "{e}");
        assert_eq!(
            e.root_cause().to_string(),
            "parse error on line 1, column 17: bare \" in non-quoted-field"
        );
        assert!(parse_output("type=local,dest=a,dest=b").is_err());
        let long = format!("type=local,dest={}", "x/".repeat(50_000));
        let e = parse_output(&long).unwrap_err().to_string();
        assert!(e.len() < 1000 && e.contains("(100000 bytes)"), "{e}");
    }

    #[test]
    fn destinations_and_daemon_attrs() {
        let o = parse_output("type=local,dest=out").unwrap();
        assert_eq!(o.destination(), Destination::Dir("out".into()));
        assert!(o.daemon_attrs().is_empty());
        let o = parse_output("type=oci,dest=x.tar,rewrite-timestamp=true").unwrap();
        assert_eq!(o.destination(), Destination::File("x.tar".into()));
        assert_eq!(
            o.daemon_attrs().keys().collect::<Vec<_>>(),
            ["rewrite-timestamp"]
        );
        let o = parse_output("type=image,name=a/b").unwrap();
        assert_eq!(o.destination(), Destination::Daemon);
        assert_eq!(
            parse_output("type=oci,dest=x,tar=false")
                .unwrap()
                .destination(),
            Destination::Layout("x".into())
        );
        assert!(!parse_output("type=oci,dest=x,tar=false")
            .unwrap()
            .daemon_attrs()
            .contains_key("dest"));
        assert!(parse_output("type=oci,tar=false")
            .unwrap_err()
            .to_string()
            .contains("needs dest=DIR"));
        assert!(parse_output("type=oci,dest=x,tar=maybe").is_err());
        assert!(parse_output("type=tar,output=x")
            .unwrap_err()
            .to_string()
            .contains("dest=x"));
    }
}
