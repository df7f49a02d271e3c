//! The command line: bkrun's own flags and subcommands, parsed with clap with no I/O; the build grammars' flags live beside it (build.rs: buildctl's and buildx's, kaniko.rs: kaniko's executor).

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

/// Moves every field of a clap struct into the plain struct of the same fields that the modules
/// below src/cli/ read. The pattern and the literal are both exhaustive, so a field added on
/// either side and not listed fails to compile instead of being dropped; a macro, so that each
/// field is named once, in groups, rather than twice in two long lists.
macro_rules! move_fields {
    ($value:expr, $from:path => $to:path { $($field:ident),* $(,)? }) => {{
        let $from { $($field),* } = $value;
        $to { $($field),* }
    }};
}

mod argv;
mod build;
mod kaniko;
mod kube;
mod plain;
mod push;
pub mod slim;

pub use argv::{asks_rootless, daemonless_sh_argv, go_style_flags};
pub use build::BuildArgs;
pub use kaniko::KanikoArgs;
pub use kube::{KubeArgs, KubeKind};
pub use plain::{
    parse, parse_build, parse_kaniko, parse_kube, parse_push, DoctorFormat, ModeArg, WorkerArg,
};
pub use push::PushArgs;

/// bkrun's one-line description (`--help`'s first line; slim.rs's top level has it too).
const ABOUT: &str =
    "Daemonless BuildKit runner: starts an ephemeral buildkitd, runs the build, tears it all down.";

#[derive(Debug, Parser)]
#[command(
    name = "bkrun",
    version,
    about = ABOUT,
    propagate_version = true,
    // As with buildctl, a repeated flag takes its last value (CI scripts append overrides).
    args_override_self = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted before or after the subcommand; `--help` lists them apart from the subcommand's own.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Daemon mode: auto, privileged, rootless or rootless-strict.
    #[arg(long, global = true, value_enum, env = "BKRUN_MODE")]
    pub mode: Option<ModeArg>,
    /// BuildKit state directory (the cache; it survives the run).
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// bkrun.toml to read (default: $BKRUN_CONFIG, then ~/.config/bkrun/bkrun.toml or /etc/bkrun/bkrun.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Extra buildkitd flags, split as a shell would (also $BUILDKITD_FLAGS).
    #[arg(long, global = true, value_name = "FLAGS", allow_hyphen_values = true)]
    pub buildkitd_flags: Option<String>,
    /// Seconds to wait for the daemon to serve before giving up.
    #[arg(long, global = true, value_name = "SECONDS")]
    pub ready_timeout: Option<f64>,
    /// Seconds to wait while another run uses the same state dir (--root); 0: fail at once.
    #[arg(long, global = true, value_name = "SECONDS")]
    pub lock_timeout: Option<f64>,
    /// Warn before starting the daemon when the state dir's filesystem has less free space
    /// than this (default 1GiB; 0: never). For prune, also the free disk space to keep.
    #[arg(long, global = true, value_name = "SIZE")]
    pub min_free_space: Option<String>,
    /// buildkitd's worker: oci (runc, the default) or containerd (the node's containerd runs
    /// the build containers and keeps the images).
    #[arg(long, global = true, value_enum)]
    pub worker: Option<WorkerArg>,
    /// The containerd socket the containerd worker uses (default /run/containerd/containerd.sock).
    #[arg(long, global = true, value_name = "PATH")]
    pub containerd_address: Option<PathBuf>,
    /// The containerd namespace builds and images go to (default buildkit).
    #[arg(long, global = true, value_name = "NAME")]
    pub containerd_namespace: Option<String>,
    /// With --worker containerd: the directory holding the state dir and the daemon's temp
    /// files, which must be the same path on the node (default: the state dir).
    #[arg(long, global = true, value_name = "DIR")]
    pub containerd_shared_dir: Option<PathBuf>,
    /// Verbose output from bkrun, and buildkitd --debug.
    #[arg(long, global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set, default_value_t = false)]
    pub debug: bool,
    /// buildctl's connection timeout in seconds: for a remote daemon, how long to keep
    /// trying (as --connect-retry).
    #[arg(long, global = true, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// buildctl's --wait: keep trying a remote daemon until it answers.
    #[arg(long, global = true)]
    pub wait: bool,
    /// How bkrun's own error lines are written: text, or json (one logrus-style object a line).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Use this existing daemon (unix:///path or tcp://host:port) and start none (also $BKRUN_ADDR; see README for BUILDKIT_HOST). Repeat it, or give a comma list or a pattern such as tcp://bkrun-{0..2}.bkrun:1234, for a pool: each build goes to the daemon its route key picks.
    #[arg(long, global = true, value_name = "ADDR", action = ArgAction::Append)]
    pub addr: Vec<String>,
    /// With a pool of daemons: route by this key instead of the build's context dir and platforms (also $BKRUN_ROUTE_KEY).
    #[arg(long, global = true, value_name = "KEY", env = "BKRUN_ROUTE_KEY")]
    pub route_key: Option<String>,
    /// CA certificate that signed the daemon's certificate (tcp:// addresses).
    #[arg(long, global = true, value_name = "FILE")]
    pub tlscacert: Option<PathBuf>,
    /// Client certificate for mutual TLS.
    #[arg(long, global = true, value_name = "FILE")]
    pub tlscert: Option<PathBuf>,
    /// Client key for mutual TLS.
    #[arg(long, global = true, value_name = "FILE")]
    pub tlskey: Option<PathBuf>,
    /// Name to verify the daemon's certificate against (when it differs from the host).
    #[arg(long, global = true, value_name = "NAME")]
    pub tlsservername: Option<String>,
    /// Directory holding ca.pem, cert.pem and key.pem.
    #[arg(long, global = true, value_name = "DIR")]
    pub tlsdir: Option<PathBuf>,
    /// Allow plaintext gRPC to a tcp:// address that is not loopback.
    #[arg(long, global = true)]
    pub insecure_plaintext: bool,
    /// Seconds to keep retrying a remote daemon that refuses or times out (default 15).
    #[arg(long, global = true, value_name = "SECONDS")]
    pub connect_retry: Option<f64>,
    /// Invoked as buildctl-daemonless.sh, which never reads BUILDKIT_HOST.
    #[arg(skip)]
    pub as_daemonless_sh: bool,
}

/// buildctl's --log-format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
    /// kaniko's default; bkrun writes text.
    Color,
}

/// The supervised daemon's extra listeners, for a sidecar or a shared builder.
#[derive(Debug, Args, Clone, Default)]
pub struct DaemonArgs {
    /// Also listen here, e.g. tcp://0.0.0.0:1234 (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<String>,
    /// Server certificate for TCP listeners.
    #[arg(long, value_name = "FILE", requires = "tls_server_key")]
    pub tls_server_cert: Option<PathBuf>,
    /// Server key for TCP listeners.
    #[arg(long, value_name = "FILE", requires = "tls_server_cert")]
    pub tls_server_key: Option<PathBuf>,
    /// CA whose client certificates are accepted (mutual TLS).
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
}

// Deferred: each subcommand's arguments are built only when it is the one invoked (main →
// parsed 0.90 → 0.61 ms, n=25 interleaved); whatever walks the whole tree calls `Command::build`
// first.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Build with an ephemeral daemon; takes buildctl's build flags.
    #[command(visible_alias = "b", args_override_self = true)]
    Build(Box<BuildArgs>),
    /// Start the daemon, run CMD with BUILDKIT_HOST set, tear down; exit with CMD's status.
    Exec {
        /// The command and its arguments (after `--`).
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<String>,
    },
    /// Run the supervised daemon in the foreground until SIGTERM; prints its address once ready.
    Daemon(DaemonArgs),
    /// Ask the daemon about itself: `debug workers`, `debug info`.
    Debug {
        #[command(subcommand)]
        command: DebugCommand,
    },
    /// Show the build cache's disk usage, as `buildctl du` does.
    Du(ListArgs),
    /// Remove build cache, as `buildctl prune` does; lists what was removed and the total.
    Prune(PruneArgs),
    /// Delete the build histories that are not pinned, as `buildctl prune-histories` does.
    PruneHistories {
        /// A Go template per deleted record: {{json .}} (or json) and fields such as {{.Record.Ref}}.
        #[arg(long, value_name = "TEMPLATE")]
        format: Option<String>,
    },
    /// Print what the next command will do (start a daemon, and how, or connect, and where the address came from), paths, the daemon's argv, and where registry logins come from.
    Config,
    /// kaniko's executor command line (also what bkrun does when invoked as `executor`, e.g. a
    /// symlink at /kaniko/executor): build the context and push to each --destination.
    Kaniko(Box<KanikoArgs>),
    /// Push an image an earlier build exported (an OCI archive or layout directory) to one or
    /// more references, byte for byte, with the logins and registry settings a build uses;
    /// starts no daemon.
    Push(Box<PushArgs>),
    /// Print the Kubernetes objects (YAML) of a pool of bkrun daemons serving builds over mutual
    /// TLS: ConfigMaps, a Service, and a Deployment or a StatefulSet. Also uses the global
    /// --buildkitd-flags (the daemons' buildkitd flags) and --insecure-plaintext (serve without TLS).
    Kube(Box<KubeArgs>),
    /// Print a shell completion script, e.g. `bkrun completion bash > /etc/bash_completion.d/bkrun`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print bkrun's man page (roff), e.g. `bkrun man > /usr/local/share/man/man1/bkrun.1`.
    Man,
    /// Check what this machine or container allows: each mode's verdict, the change that would make it work, versions. Starts no daemon; exits 1 when no mode can work.
    Doctor {
        /// text, or json for tools.
        #[arg(long, value_enum, default_value = "text")]
        format: DoctorFormat,
        /// Print, instead of the report, an AppArmor profile that lets rootlesskit, buildkitd
        /// and bkrun create user namespaces where Ubuntu's
        /// kernel.apparmor_restrict_unprivileged_userns=1 refuses them, with the commands that
        /// load it.
        #[arg(long, conflicts_with = "format")]
        apparmor_profile: bool,
    },
}

/// `bkrun debug …`: answered by bkrun itself, except the rarer subcommands, which buildctl runs.
#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// List the daemon's workers and their platforms.
    Workers(ListArgs),
    /// Show the daemon's BuildKit version.
    Info,
    /// Any other `buildctl debug` subcommand, handed to buildctl with BUILDKIT_HOST set.
    #[command(external_subcommand)]
    Buildctl(Vec<String>),
}

/// Flags shared by the listing commands, spelled as in buildctl.
#[derive(Debug, Args, Clone, Default)]
pub struct ListArgs {
    /// A containerd-style filter, e.g. type==regular; repeat to combine.
    #[arg(long, short = 'f', value_name = "FILTER")]
    pub filter: Vec<String>,
    /// Every field of every record.
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

/// buildctl prune's flags. Its storage limits are in MB; the newer names take sizes with units.
#[derive(Debug, Args, Clone, Default)]
pub struct PruneArgs {
    /// Keep records used more recently than this, e.g. 48h or 90m.
    #[arg(long, value_name = "DURATION", value_parser = crate::gocompat::durations::parse_go_duration)]
    pub keep_duration: Option<i64>,
    /// Keep the cache below this many MB (the same limit as --max-used-space).
    #[arg(long, value_name = "MB", conflicts_with = "max_used_space")]
    pub keep_storage: Option<f64>,
    /// Always allow the cache this many MB (the same limit as --reserved-space).
    #[arg(long, value_name = "MB", conflicts_with = "reserved_space")]
    pub keep_storage_min: Option<f64>,
    /// Prune until this many MB of disk are free (the same limit as --min-free-space).
    #[arg(long, value_name = "MB", conflicts_with = "min_free_space")]
    pub free_storage: Option<f64>,
    /// Cache that is never pruned, e.g. 10GB or 2GiB.
    #[arg(long, value_name = "SIZE", value_parser = crate::gocompat::sizes::parse_size)]
    pub reserved_space: Option<i64>,
    /// The most the cache may use, e.g. 50GB.
    #[arg(long, value_name = "SIZE", value_parser = crate::gocompat::sizes::parse_size)]
    pub max_used_space: Option<i64>,
    // No --min-free-space of its own: the global one (a size, e.g. 20GB) is prune's too, which
    // settle reads. One flag, one value; and with subcommands deferred, an argument of the same
    // name would clash with the global one propagated in.
    /// Also remove internal and frontend records.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub list: ListArgs,
}

impl From<&PruneArgs> for crate::client::admin::PruneFlags {
    fn from(p: &PruneArgs) -> Self {
        crate::client::admin::PruneFlags {
            filters: p.list.filter.clone(),
            all: p.all,
            verbose: p.list.verbose,
            keep_duration: p.keep_duration,
            keep_storage: p.keep_storage,
            keep_storage_min: p.keep_storage_min,
            free_storage: p.free_storage,
            reserved_space: p.reserved_space,
            max_used_space: p.max_used_space,
            min_free_space: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(args).unwrap()
    }

    #[test]
    fn global_flags_before_or_after_the_subcommand() {
        let a = parse(&[
            "bkrun",
            "--mode",
            "rootless",
            "build",
            "--frontend",
            "dockerfile.v0",
        ]);
        let b = parse(&[
            "bkrun",
            "build",
            "--frontend",
            "dockerfile.v0",
            "--mode",
            "rootless",
        ]);
        assert_eq!(a.global.mode, Some(ModeArg::Rootless));
        assert_eq!(b.global.mode, Some(ModeArg::Rootless));
    }

    #[test]
    fn exec_takes_everything_after_the_double_dash() {
        let c = parse(&[
            "bkrun", "exec", "--", "buildctl", "--addr", "x", "build", "--debug",
        ]);
        match c.command {
            Command::Exec { command } => {
                assert_eq!(command, ["buildctl", "--addr", "x", "build", "--debug"])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn build_flags_round_trip_to_buildctl() {
        let c = parse(&[
            "bkrun",
            "build",
            "--frontend=dockerfile.v0",
            "--local",
            "context=.",
            "--local",
            "dockerfile=.",
            "-o",
            "type=local,dest=out",
            "--opt",
            "build-arg:A=b c",
            "--no-cache",
        ]);
        let Command::Build(b) = c.command else {
            panic!()
        };
        assert_eq!(
            b.to_buildctl_args(),
            [
                "--output=type=local,dest=out",
                "--local=context=.",
                "--local=dockerfile=.",
                "--opt=build-arg:A=b c",
                "--frontend=dockerfile.v0",
                "--progress=auto",
                "--no-cache"
            ]
        );
    }

    #[test]
    fn debug_workers_and_info_are_native_other_debug_commands_go_to_buildctl() {
        let c = Cli::try_parse_from(daemonless_sh_argv(&[
            "debug".into(),
            "workers".into(),
            "-v".into(),
            "--filter".into(),
            "a,b".into(),
        ]))
        .unwrap();
        let Command::Debug {
            command: DebugCommand::Workers(l),
        } = c.command
        else {
            panic!("{:?}", c.command)
        };
        assert!(l.verbose);
        // buildctl does not split filters on commas.
        assert_eq!(l.filter, ["a,b"]);
        assert!(matches!(
            parse(&["bkrun", "debug", "info"]).command,
            Command::Debug {
                command: DebugCommand::Info
            }
        ));
        match parse(&["bkrun", "debug", "histories", "--format", "json"]).command {
            Command::Debug {
                command: DebugCommand::Buildctl(a),
            } => assert_eq!(a, ["histories", "--format", "json"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn prune_limits_in_buildctl_units_or_with_units() {
        let c = parse(&[
            "bkrun",
            "prune",
            "--keep-duration",
            "48h",
            "--keep-storage",
            "1.5",
            "--reserved-space",
            "2GB",
            "--free-storage=10",
            "-f",
            "type==regular",
            "--all",
            "-v",
        ]);
        let Command::Prune(p) = c.command else {
            panic!()
        };
        assert_eq!(
            crate::client::admin::Prune::from(&crate::client::admin::PruneFlags::from(&p)),
            crate::client::admin::Prune {
                filters: vec!["type==regular".into()],
                all: true,
                keep_duration: 48 * 3_600_000_000_000,
                reserved_space: 2_000_000_000,
                max_used_space: 1_500_000,
                min_free_space: 10_000_000,
                verbose: true,
            }
        );
        assert!(Cli::try_parse_from([
            "bkrun",
            "prune",
            "--keep-storage=1",
            "--max-used-space=1GB"
        ])
        .is_err());
        // prune's --min-free-space is the global flag: settle hands its size to the prune.
        let c = parse(&["bkrun", "prune", "--min-free-space", "20GB"]);
        assert_eq!(c.global.min_free_space.as_deref(), Some("20GB"));
        assert!(matches!(c.command, Command::Prune(_)));
        assert!(Cli::try_parse_from([
            "bkrun",
            "prune",
            "--free-storage=1",
            "--min-free-space=1GB"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["bkrun", "prune", "--keep-duration=soon"]).is_err());
    }

    #[test]
    fn go_style_single_dash_flags_and_bool_values_as_buildctl_takes_them() {
        let argv: Vec<String> = [
            "build",
            "-frontend",
            "dockerfile.v0",
            "-opt=filename=Dockerfile",
            "-o",
            "type=local,dest=out",
            "--no-cache=false",
            "-debug",
        ]
        .map(String::from)
        .to_vec();
        let c = Cli::try_parse_from(daemonless_sh_argv(&argv)).unwrap();
        assert!(c.global.debug);
        let Command::Build(b) = c.command else {
            panic!()
        };
        assert_eq!(b.frontend.as_deref(), Some("dockerfile.v0"));
        assert_eq!(b.opt, ["filename=Dockerfile"]);
        assert_eq!(b.output, ["type=local,dest=out"]);
        assert!(!b.no_cache);
        let c = parse(&["bkrun", "build", "--no-cache"]);
        let Command::Build(b) = c.command else {
            panic!()
        };
        assert!(b.no_cache);
        // After `--` nothing is rewritten: exec's command keeps its own flags.
        assert_eq!(
            go_style_flags(&["exec".into(), "--".into(), "-frontend".into()]),
            ["exec", "--", "-frontend"]
        );
    }

    #[test]
    fn unknown_build_flag_is_refused() {
        assert!(Cli::try_parse_from(["bkrun", "build", "--frobnicate"]).is_err());
    }
}
