//! The parsed command line mapped into the plain values the modules below read: clap's types
//! stay here, and nothing below src/cli/ derives a clap trait or imports this module.

use crate::config::GlobalFlags;
use crate::kube::KubeFlags;
use crate::request::flags::{BuildFlags, KanikoFlags, PushFlags};

use super::GlobalArgs;

/// `--mode`: [`crate::config::ModeArg`] as clap takes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    #[default]
    Auto,
    Privileged,
    Rootless,
    RootlessStrict,
}

impl From<ModeArg> for crate::config::ModeArg {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Auto => Self::Auto,
            ModeArg::Privileged => Self::Privileged,
            ModeArg::Rootless => Self::Rootless,
            ModeArg::RootlessStrict => Self::RootlessStrict,
        }
    }
}

/// `--worker`: [`crate::config::WorkerArg`] as clap takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkerArg {
    Oci,
    Containerd,
}

impl From<WorkerArg> for crate::config::WorkerArg {
    fn from(w: WorkerArg) -> Self {
        match w {
            WorkerArg::Oci => Self::Oci,
            WorkerArg::Containerd => Self::Containerd,
        }
    }
}

/// `bkrun doctor --format`: [`crate::daemon::doctor::Format`] as clap takes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DoctorFormat {
    #[default]
    Text,
    Json,
}

impl From<DoctorFormat> for crate::daemon::doctor::Format {
    fn from(f: DoctorFormat) -> Self {
        match f {
            DoctorFormat::Text => Self::Text,
            DoctorFormat::Json => Self::Json,
        }
    }
}

impl From<&GlobalArgs> for GlobalFlags {
    fn from(g: &GlobalArgs) -> Self {
        // Every field named, so a new global flag cannot be forgotten here.
        let GlobalArgs {
            mode,
            root,
            config,
            buildkitd_flags,
            ready_timeout,
            lock_timeout,
            min_free_space,
            worker,
            containerd_address,
            containerd_namespace,
            containerd_shared_dir,
            debug,
            timeout,
            wait,
            log_format: _,
            addr,
            route_key,
            tlscacert,
            tlscert,
            tlskey,
            tlsservername,
            tlsdir,
            insecure_plaintext,
            connect_retry,
            as_daemonless_sh,
        } = g.clone();
        GlobalFlags {
            mode: mode.map(Into::into),
            root,
            config,
            buildkitd_flags,
            ready_timeout,
            lock_timeout,
            min_free_space,
            worker: worker.map(Into::into),
            containerd_address,
            containerd_namespace,
            containerd_shared_dir,
            debug,
            timeout,
            wait,
            addr,
            route_key,
            tlscacert,
            tlscert,
            tlskey,
            tlsservername,
            tlsdir,
            insecure_plaintext,
            connect_retry,
            as_daemonless_sh,
        }
    }
}

/// A whole command line (`bkrun build …`) parsed with clap: for tests below src/cli/, which
/// parse through these functions rather than with clap themselves.
pub fn parse<I, T>(argv: I) -> Result<super::Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    <super::Cli as clap::Parser>::try_parse_from(argv)
}

fn not_the(command: &str) -> clap::Error {
    clap::Error::raw(
        clap::error::ErrorKind::InvalidSubcommand,
        format!("not a `bkrun {command}` command line"),
    )
}

/// A whole `bkrun build …` command line, parsed and mapped into [`BuildFlags`].
pub fn parse_build<I, T>(argv: I) -> Result<BuildFlags, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match parse(argv)?.command {
        super::Command::Build(b) => Ok(BuildFlags::from(&*b)),
        _ => Err(not_the("build")),
    }
}

/// A whole `bkrun kaniko …` command line, parsed and mapped into [`KanikoFlags`].
pub fn parse_kaniko<I, T>(argv: I) -> Result<KanikoFlags, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match parse(argv)?.command {
        super::Command::Kaniko(k) => Ok(KanikoFlags::from(&*k)),
        _ => Err(not_the("kaniko")),
    }
}

/// A whole `bkrun push …` command line, parsed and mapped into [`PushFlags`].
pub fn parse_push<I, T>(argv: I) -> Result<PushFlags, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match parse(argv)?.command {
        super::Command::Push(p) => Ok(PushFlags::from(&*p)),
        _ => Err(not_the("push")),
    }
}

/// A whole `bkrun kube …` command line, parsed and mapped into [`KubeFlags`] and the global
/// flags.
pub fn parse_kube<I, T>(argv: I) -> Result<(KubeFlags, GlobalFlags), clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = parse(argv)?;
    match &cli.command {
        super::Command::Kube(k) => Ok((KubeFlags::from(&**k), GlobalFlags::from(&cli.global))),
        _ => Err(not_the("kube")),
    }
}
