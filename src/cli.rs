//! The command line: bkrun's own flags and subcommands, and buildctl's build flags, parsed with clap.

use std::path::PathBuf;

use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand};

pub use crate::daemon::mode::ModeArg;

#[derive(Debug, Parser)]
#[command(
    name = "bkrun",
    version,
    about = "Daemonless BuildKit runner: starts an ephemeral buildkitd, runs the build, tears it all down.",
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
    /// Use this existing daemon (unix:///path or tcp://host:port) and start none (also $BKRUN_ADDR; see README for BUILDKIT_HOST).
    #[arg(long, global = true, value_name = "ADDR")]
    pub addr: Option<String>,
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

#[derive(Debug, Subcommand)]
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
    /// Print what the next command will do (start a daemon, and how, or connect, and where the address came from), paths, the daemon's argv.
    Config,
    /// kaniko's executor command line (also what bkrun does when invoked as `executor`, e.g. a
    /// symlink at /kaniko/executor): build the context and push to each --destination.
    Kaniko(Box<KanikoArgs>),
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
        format: crate::doctor::Format,
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
    #[arg(long, value_name = "DURATION", value_parser = crate::gofmt::durations::parse_go_duration)]
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
    #[arg(long, value_name = "SIZE", value_parser = crate::gofmt::sizes::parse_size)]
    pub reserved_space: Option<i64>,
    /// The most the cache may use, e.g. 50GB.
    #[arg(long, value_name = "SIZE", value_parser = crate::gofmt::sizes::parse_size)]
    pub max_used_space: Option<i64>,
    /// Free disk space to keep, e.g. 20GB.
    #[arg(long, value_name = "SIZE", value_parser = crate::gofmt::sizes::parse_size)]
    pub min_free_space: Option<i64>,
    /// Also remove internal and frontend records.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub list: ListArgs,
}

impl PruneArgs {
    /// The request in the daemon's units: bytes and nanoseconds, 0 for "no limit".
    pub fn to_request(&self) -> crate::client::admin::Prune {
        // buildctl truncates MB × 10⁶ to whole bytes.
        let mb = |v: Option<f64>| v.map(|v| (v * 1e6) as i64);
        crate::client::admin::Prune {
            filters: self.list.filter.clone(),
            all: self.all,
            keep_duration: self.keep_duration.unwrap_or(0),
            reserved_space: mb(self.keep_storage_min)
                .or(self.reserved_space)
                .unwrap_or(0),
            max_used_space: mb(self.keep_storage).or(self.max_used_space).unwrap_or(0),
            min_free_space: mb(self.free_storage).or(self.min_free_space).unwrap_or(0),
            verbose: self.list.verbose,
        }
    }
}

/// kaniko's executor flags (GoogleContainerTools/kaniko, archived 2025), so a pipeline switches by
/// changing only its image. Booleans take `--flag=false` as pflag does.
#[derive(Debug, Args, Clone, Default)]
pub struct KanikoArgs {
    /// The build context: a directory, or dir://DIR.
    #[arg(long, short = 'c', value_name = "DIR")]
    pub context: Option<String>,
    /// The Dockerfile, relative to the context unless it exists as given.
    #[arg(long, short = 'f', value_name = "FILE", default_value = "Dockerfile")]
    pub dockerfile: String,
    /// Where to push the image (repeatable).
    #[arg(long, short = 'd', value_name = "IMAGE")]
    pub destination: Vec<String>,
    /// A build argument, K=V (repeatable).
    #[arg(long, value_name = "K=V")]
    pub build_arg: Vec<String>,
    /// The stage to build.
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// Build without pushing.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set, default_value_t = false)]
    pub no_push: bool,
    /// Also write the image as a tarball `docker load` takes.
    #[arg(long, value_name = "FILE")]
    pub tar_path: Option<PathBuf>,
    /// Write the image digest here.
    #[arg(long, value_name = "FILE")]
    pub digest_file: Option<PathBuf>,
    /// Write IMAGE@DIGEST for each destination here.
    #[arg(long, value_name = "FILE")]
    pub image_name_with_digest_file: Option<PathBuf>,
    /// Write IMAGE:TAG@DIGEST for each destination here.
    #[arg(long, value_name = "FILE")]
    pub image_name_tag_with_digest_file: Option<PathBuf>,
    /// Write the image as an OCI layout directory here.
    #[arg(long, value_name = "DIR")]
    pub oci_layout_path: Option<PathBuf>,
    /// Use a registry cache (in --cache-repo).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set, default_value_t = false)]
    pub cache: bool,
    /// The cache's repository (default: the first destination's, plus /cache).
    #[arg(long, value_name = "REPO")]
    pub cache_repo: Option<String>,
    /// Push to the destinations' registries over plain HTTP.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set, default_value_t = false)]
    pub insecure: bool,
    /// A registry to reach over plain HTTP (repeatable).
    #[arg(long, value_name = "HOST")]
    pub insecure_registry: Vec<String>,
    /// Don't verify the destinations' registry certificates.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set, default_value_t = false)]
    pub skip_tls_verify: bool,
    /// A registry whose certificate is not verified (repeatable).
    #[arg(long, value_name = "HOST")]
    pub skip_tls_verify_registry: Vec<String>,
    /// A mirror for docker.io (repeatable).
    #[arg(long, value_name = "HOST")]
    pub registry_mirror: Vec<String>,
    /// A CA for a registry, HOST=FILE (repeatable).
    #[arg(long, value_name = "HOST=FILE")]
    pub registry_certificate: Vec<String>,
    /// The platform to build for, e.g. linux/arm64.
    #[arg(long, value_name = "PLATFORM")]
    pub custom_platform: Option<String>,
    /// An image label, K=V (repeatable).
    #[arg(long, value_name = "K=V")]
    pub label: Vec<String>,
    /// Timestamps at the epoch, for images that are the same bytes every build.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set, default_value_t = false)]
    pub reproducible: bool,
    /// Layer compression: gzip or zstd.
    #[arg(long, value_name = "ALGO")]
    pub compression: Option<String>,
    /// Clean the filesystem at the end (bkrun always leaves nothing behind).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set, default_value_t = false)]
    pub cleanup: bool,
    /// Log level: panic, fatal, error, warn, info, debug or trace.
    #[arg(long, short = 'v', value_name = "LEVEL", default_value = "info")]
    pub verbosity: String,
    /// kaniko flags that mean nothing to BuildKit, accepted with one notice (--snapshot-mode,
    /// --single-snapshot, --use-new-run, --cache-dir, --cache-ttl, …).
    #[arg(long = "snapshot-mode", value_name = "MODE", hide = true)]
    pub snapshot_mode: Option<String>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", hide = true)]
    pub single_snapshot: Option<String>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", hide = true)]
    pub use_new_run: Option<String>,
    #[arg(long, value_name = "DIR", hide = true)]
    pub cache_dir: Option<String>,
    #[arg(long, value_name = "DURATION", hide = true)]
    pub cache_ttl: Option<String>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", hide = true)]
    pub cache_copy_layers: Option<String>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", hide = true)]
    pub cache_run_layers: Option<String>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", hide = true)]
    pub compressed_caching: Option<String>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", hide = true)]
    pub log_timestamp: Option<String>,
    #[arg(long, value_name = "N", hide = true)]
    pub push_retry: Option<String>,
    #[arg(long, value_name = "N", hide = true)]
    pub image_fs_extract_retry: Option<String>,
    #[arg(long, value_name = "N", hide = true)]
    pub image_download_retry: Option<String>,
    #[arg(long, value_name = "DIR", hide = true)]
    pub kaniko_dir: Option<String>,
    #[arg(long, value_name = "PATH", hide = true)]
    pub ignore_path: Vec<String>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", hide = true)]
    pub ignore_var_run: Option<String>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", hide = true)]
    pub skip_unused_stages: Option<String>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", hide = true)]
    pub skip_push_permission_check: Option<String>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", hide = true)]
    pub force: Option<String>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", hide = true)]
    pub no_push_cache: Option<String>,
}

impl KanikoArgs {
    /// The flags given that change nothing under BuildKit.
    pub fn meaningless(&self) -> Vec<&'static str> {
        [
            ("--snapshot-mode", self.snapshot_mode.is_some()),
            ("--single-snapshot", self.single_snapshot.is_some()),
            ("--use-new-run", self.use_new_run.is_some()),
            ("--cache-dir", self.cache_dir.is_some()),
            ("--cache-ttl", self.cache_ttl.is_some()),
            ("--cache-copy-layers", self.cache_copy_layers.is_some()),
            ("--cache-run-layers", self.cache_run_layers.is_some()),
            ("--compressed-caching", self.compressed_caching.is_some()),
            ("--log-timestamp", self.log_timestamp.is_some()),
            ("--push-retry", self.push_retry.is_some()),
            (
                "--image-fs-extract-retry",
                self.image_fs_extract_retry.is_some(),
            ),
            (
                "--image-download-retry",
                self.image_download_retry.is_some(),
            ),
            ("--kaniko-dir", self.kaniko_dir.is_some()),
            ("--ignore-path", !self.ignore_path.is_empty()),
            ("--ignore-var-run", self.ignore_var_run.is_some()),
            ("--skip-unused-stages", self.skip_unused_stages.is_some()),
            (
                "--skip-push-permission-check",
                self.skip_push_permission_check.is_some(),
            ),
            ("--force", self.force.is_some()),
            ("--no-push-cache", self.no_push_cache.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(f, _)| f)
        .collect()
    }
}

/// buildctl build's flags, kept as given so they can be validated before a daemon starts.
#[derive(Debug, Args, Clone, Default)]
pub struct BuildArgs {
    /// Exports for the result, e.g. type=local,dest=out or type=image,name=…,push=true.
    #[arg(long, short = 'o', value_name = "type=…,k=v")]
    pub output: Vec<String>,
    /// Progress output: auto, plain, tty, rawjson or quiet.
    #[arg(long, default_value = "auto")]
    pub progress: String,
    /// Path to a trace file.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// A local directory the build may read, NAME=DIR.
    #[arg(long, value_name = "NAME=DIR")]
    pub local: Vec<String>,
    /// A local OCI layout the build may read, NAME=DIR.
    #[arg(long, value_name = "NAME=DIR")]
    pub oci_layout: Vec<String>,
    /// The frontend, e.g. dockerfile.v0.
    #[arg(long)]
    pub frontend: Option<String>,
    /// A frontend option, e.g. target=foo or build-arg:foo=bar.
    #[arg(long, value_name = "K=V")]
    pub opt: Vec<String>,
    /// Disable the cache for every step (`--no-cache=false` as buildctl takes it).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set, default_value_t = false)]
    pub no_cache: bool,
    /// Export the build cache, e.g. type=registry,ref=… or type=local,dest=DIR.
    #[arg(long, value_name = "type=…")]
    pub export_cache: Vec<String>,
    /// Import a build cache, e.g. type=registry,ref=… or type=local,src=DIR.
    #[arg(long, value_name = "type=…")]
    pub import_cache: Vec<String>,
    /// A secret for RUN --mount=type=secret: id=X,src=FILE or id=X,env=VAR.
    #[arg(long, value_name = "id=…")]
    pub secret: Vec<String>,
    /// An extra entitlement, e.g. network.host or security.insecure.
    #[arg(long)]
    pub allow: Vec<String>,
    /// SSH agent or key to forward: default or ID=PATH.
    #[arg(long)]
    pub ssh: Vec<String>,
    /// Write build metadata (e.g. the image digest) as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// A source policy JSON file.
    #[arg(long, value_name = "FILE")]
    pub source_policy_file: Option<PathBuf>,
    /// Run the build with proxy network enforcement.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set, default_value_t = false)]
    pub proxy_network: bool,
    /// Write the build ref to FILE.
    #[arg(long, value_name = "FILE")]
    pub ref_file: Option<PathBuf>,
    /// TLS settings for registry authentication, host=…,ca=…,cert=…,key=….
    #[arg(long, value_name = "host=…")]
    pub registry_auth_tlscontext: Vec<String>,
    /// Where to write JSON cache metrics (stdout or stderr).
    #[arg(long, value_name = "WHERE")]
    pub debug_json_cache_metrics: Option<String>,

    // buildx's `docker buildx build` flags (docker-style: given with a positional context PATH).
    /// Docker-style: the build context, a directory, or `-` for a tar archive or a Dockerfile on stdin.
    #[arg(value_name = "PATH", help_heading = "Docker-style (buildx) options")]
    pub context: Option<String>,
    /// Name and tag of the image, e.g. registry/app:1 (repeatable).
    #[arg(
        long,
        short = 't',
        value_name = "NAME",
        help_heading = "Docker-style (buildx) options"
    )]
    pub tag: Vec<String>,
    /// The Dockerfile (default PATH/Dockerfile; `-` reads it from stdin).
    #[arg(
        long,
        short = 'f',
        value_name = "FILE",
        help_heading = "Docker-style (buildx) options"
    )]
    pub file: Option<String>,
    /// A build argument, K=V (also in buildctl's grammar, as GitLab's documentation uses it).
    #[arg(long, value_name = "K=V")]
    pub build_arg: Vec<String>,
    /// The stage to build.
    #[arg(
        long,
        value_name = "STAGE",
        help_heading = "Docker-style (buildx) options"
    )]
    pub target: Option<String>,
    /// Target platforms, e.g. linux/amd64,linux/arm64 (repeatable).
    #[arg(
        long,
        value_name = "PLATFORM",
        help_heading = "Docker-style (buildx) options"
    )]
    pub platform: Vec<String>,
    /// Push the image named by --tag (as --output type=registry).
    #[arg(long, help_heading = "Docker-style (buildx) options")]
    pub push: bool,
    /// Refused: there is no docker daemon to load into; use --output type=docker,dest=FILE.
    #[arg(long, help_heading = "Docker-style (buildx) options")]
    pub load: bool,
    /// Import a build cache, buildx's grammar (type=registry,ref=… or a bare ref).
    #[arg(
        long,
        value_name = "CACHE",
        help_heading = "Docker-style (buildx) options"
    )]
    pub cache_from: Vec<String>,
    /// Export the build cache, buildx's grammar.
    #[arg(
        long,
        value_name = "CACHE",
        help_heading = "Docker-style (buildx) options"
    )]
    pub cache_to: Vec<String>,
    /// A named context: NAME=PATH, NAME=docker-image://REF or NAME=oci-layout://DIR[:TAG|@DIGEST].
    #[arg(
        long,
        value_name = "NAME=VALUE",
        help_heading = "Docker-style (buildx) options"
    )]
    pub build_context: Vec<String>,
    /// An image label, K=V.
    #[arg(
        long,
        value_name = "K=V",
        help_heading = "Docker-style (buildx) options"
    )]
    pub label: Vec<String>,
    /// An annotation on the image, K=V or TYPE:K=V (manifest, index, manifest-descriptor, index-descriptor).
    #[arg(
        long,
        value_name = "K=V",
        help_heading = "Docker-style (buildx) options"
    )]
    pub annotation: Vec<String>,
    /// Stages not to cache (repeatable).
    #[arg(
        long,
        value_name = "STAGE",
        help_heading = "Docker-style (buildx) options"
    )]
    pub no_cache_filter: Vec<String>,
    /// Always look for newer versions of the base images.
    #[arg(long, help_heading = "Docker-style (buildx) options")]
    pub pull: bool,
    /// The network mode of RUN steps: default, none or host.
    #[arg(
        long,
        value_name = "MODE",
        help_heading = "Docker-style (buildx) options"
    )]
    pub network: Option<String>,
    /// An /etc/hosts entry for RUN steps, HOST:IP (repeatable).
    #[arg(
        long,
        value_name = "HOST:IP",
        help_heading = "Docker-style (buildx) options"
    )]
    pub add_host: Vec<String>,
    /// Write the image's ID (its digest) to FILE.
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "Docker-style (buildx) options"
    )]
    pub iidfile: Option<PathBuf>,
    /// Provenance attestation: true, false, mode=min or mode=max.
    #[arg(long, value_name = "VALUE", num_args = 0..=1, require_equals = true, default_missing_value = "true", help_heading = "Docker-style (buildx) options")]
    pub provenance: Option<String>,
    /// An attestation, e.g. type=provenance,mode=max (SBOMs need a scanner image and are refused).
    #[arg(
        long,
        value_name = "type=…",
        help_heading = "Docker-style (buildx) options"
    )]
    pub attest: Vec<String>,
    /// Refused: an SBOM needs a scanner image, which can't be pulled here.
    #[arg(long, value_name = "VALUE", num_args = 0..=1, require_equals = true, default_missing_value = "true", help_heading = "Docker-style (buildx) options")]
    pub sbom: Option<String>,
    /// Only print the image ID at the end (progress quiet).
    #[arg(long, short = 'q', help_heading = "Docker-style (buildx) options")]
    pub quiet: bool,
    /// /dev/shm size for RUN steps, e.g. 128m.
    #[arg(
        long,
        value_name = "SIZE",
        help_heading = "Docker-style (buildx) options"
    )]
    pub shm_size: Option<String>,
    /// A ulimit for RUN steps, e.g. nofile=1024:1024 (repeatable).
    #[arg(
        long,
        value_name = "NAME=SOFT:HARD",
        help_heading = "Docker-style (buildx) options"
    )]
    pub ulimit: Vec<String>,
    /// Refused: buildx builders don't exist here; use --addr for a remote daemon.
    #[arg(
        long,
        value_name = "NAME",
        help_heading = "Docker-style (buildx) options"
    )]
    pub builder: Option<String>,
}

impl BuildArgs {
    /// The flags in buildctl's spelling, for handing the build to buildctl.
    pub fn to_buildctl_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        let mut many = |name: &str, vals: &[String]| {
            for v in vals {
                a.push(format!("--{name}={v}"));
            }
        };
        many("output", &self.output);
        many("local", &self.local);
        many("oci-layout", &self.oci_layout);
        many("opt", &self.opt);
        many("export-cache", &self.export_cache);
        many("import-cache", &self.import_cache);
        many("secret", &self.secret);
        many("allow", &self.allow);
        many("ssh", &self.ssh);
        many("registry-auth-tlscontext", &self.registry_auth_tlscontext);
        let one = |name: &str, val: Option<String>| val.map(|v| format!("--{name}={v}"));
        a.extend(one("frontend", self.frontend.clone()));
        a.push(format!("--progress={}", self.progress));
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        a.extend(one("trace", path(&self.trace)));
        a.extend(one("metadata-file", path(&self.metadata_file)));
        a.extend(one("source-policy-file", path(&self.source_policy_file)));
        a.extend(one("ref-file", path(&self.ref_file)));
        a.extend(one(
            "debug-json-cache-metrics",
            self.debug_json_cache_metrics.clone(),
        ));
        if self.no_cache {
            a.push("--no-cache".into());
        }
        if self.proxy_network {
            a.push("--proxy-network".into());
        }
        a
    }
}

/// Rewrites a `buildctl-daemonless.sh ARGS…` command line into bkrun's: everything goes to the
/// build client, so `build …` becomes `bkrun build …` and `debug workers` becomes `bkrun debug workers`.
/// buildctl's own global flags that bkrun also has (`--debug`) are kept; others are refused by clap.
pub fn daemonless_sh_argv(args: &[String]) -> Vec<String> {
    let mut out = vec!["bkrun".to_string()];
    out.extend(go_style_flags(args));
    out
}

/// buildctl's flag library also takes long flags with one dash (`-frontend dockerfile.v0`,
/// `-opt=k=v`): those become `--frontend`… when the word is one of bkrun's long flags. Short
/// flags (`-o`, `-v`) and values are left alone; so is everything after `--`.
pub fn go_style_flags(args: &[String]) -> Vec<String> {
    let mut longs = Vec::new();
    fn collect(cmd: &clap::Command, into: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            if let Some(l) = a.get_long() {
                into.push(l.to_string());
            }
        }
        for sub in cmd.get_subcommands() {
            collect(sub, into);
        }
    }
    collect(&Cli::command(), &mut longs);
    let mut out = Vec::with_capacity(args.len());
    let mut rest = false;
    for a in args {
        rest |= a == "--";
        let word = a
            .strip_prefix('-')
            .filter(|w| !rest && !w.starts_with('-'))
            .map(|w| w.split_once('=').map_or(w, |(n, _)| n));
        match word {
            Some(name) if name.len() > 1 && longs.iter().any(|l| l == name) => {
                out.push(format!("-{a}"))
            }
            _ => out.push(a.clone()),
        }
    }
    out
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
            p.to_request(),
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
