//! kaniko's executor flags, as `bkrun kaniko` and a bkrun invoked as `executor` take them.

use std::path::PathBuf;

use clap::{ArgAction, Args};

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
    /// bkrun's own (as buildx spells it): an SBOM attestation, true or generator=IMAGE. None
    /// unless asked, so kaniko's digests stay as they were.
    #[arg(long, value_name = "VALUE", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub sbom: Option<String>,
    /// bkrun's own (as buildx spells it): a provenance attestation, true or mode=min|max.
    #[arg(long, value_name = "VALUE", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub provenance: Option<String>,
    /// bkrun's own (as buildx spells it): an attestation, type=sbom|provenance[,k=v…] (repeatable).
    #[arg(long, value_name = "type=…")]
    pub attest: Vec<String>,
    /// bkrun's own: keep RUN --mount=type=cache contents between runs, in a directory or at
    /// registry://REF (kaniko never had this). Also BKRUN_CACHE_MOUNTS.
    #[arg(long, value_name = "DIR|registry://REF")]
    pub cache_mounts: Option<String>,
    /// bkrun's own: the largest cache mount saved, e.g. 512m or 4g (default 2g).
    #[arg(long, value_name = "SIZE")]
    pub cache_mounts_max_size: Option<String>,
    /// bkrun's own: also write the build's summary to FILE (see `bkrun build --summary`).
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
    /// bkrun's own: markdown or json, for --summary FILE.
    #[arg(long, value_name = "FORMAT")]
    pub summary_format: Option<String>,
    /// bkrun's own: Tekton's IMAGE_DIGEST and IMAGE_URL result files, into DIR.
    #[arg(long, value_name = "DIR")]
    pub tekton_results: Option<PathBuf>,
    /// bkrun's own: IMAGE_DIGEST=… and IMAGE_URL=… for GitLab's dotenv report.
    #[arg(long, value_name = "FILE")]
    pub summary_dotenv: Option<PathBuf>,
    /// bkrun's own: cancel the build after DURATION (45m, 1h30m) and exit with 124.
    #[arg(long, value_name = "DURATION")]
    pub build_timeout: Option<String>,
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

impl From<&KanikoArgs> for crate::request::flags::KanikoFlags {
    fn from(a: &KanikoArgs) -> Self {
        // Every field named once, grouped by what the flags say.
        move_fields!(a.clone(), KanikoArgs => crate::request::flags::KanikoFlags {
            // What is built.
            context, dockerfile, build_arg, target, custom_platform, label, reproducible,
            // Where it goes, and the files written after.
            destination, no_push, tar_path, oci_layout_path, compression, digest_file,
            image_name_with_digest_file, image_name_tag_with_digest_file,
            // The registry cache and the registries' settings.
            cache, cache_repo, insecure, insecure_registry, skip_tls_verify,
            skip_tls_verify_registry, registry_mirror, registry_certificate,
            // The executor's own.
            cleanup, verbosity, cache_mounts, cache_mounts_max_size,
            summary, summary_format, tekton_results, summary_dotenv, build_timeout,
            // Attestations, as buildx spells them (none unless asked).
            sbom, provenance, attest,
            // Meaningless under BuildKit: kept to name them in one notice.
            snapshot_mode, single_snapshot, use_new_run, cache_dir, cache_ttl, cache_copy_layers,
            cache_run_layers, compressed_caching, log_timestamp, push_retry,
            image_fs_extract_retry, image_download_retry, kaniko_dir, ignore_path, ignore_var_run,
            skip_unused_stages, skip_push_permission_check, force, no_push_cache,
        })
    }
}
