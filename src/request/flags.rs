//! The build grammars' flags as plain values: src/cli/ parses `bkrun build` (buildctl's and
//! buildx's flags) and `bkrun kaniko` (kaniko's executor flags) and maps them into these, which
//! the rest of request/ reads. The fields are named as the flags are; src/cli/build.rs and
//! src/cli/kaniko.rs say what each one means.

use std::path::PathBuf;

/// `bkrun build`'s flags as given, so they can be validated before a daemon starts.
#[derive(Debug, Clone, Default)]
pub struct BuildFlags {
    pub output: Vec<String>,
    pub progress: String,
    pub trace: Option<PathBuf>,
    pub local: Vec<String>,
    pub oci_layout: Vec<String>,
    pub frontend: Option<String>,
    pub opt: Vec<String>,
    pub no_cache: bool,
    pub export_cache: Vec<String>,
    pub import_cache: Vec<String>,
    pub secret: Vec<String>,
    pub allow: Vec<String>,
    pub ssh: Vec<String>,
    pub metadata_file: Option<PathBuf>,
    pub source_policy_file: Option<PathBuf>,
    pub proxy_network: bool,
    pub ref_file: Option<PathBuf>,
    pub registry_auth_tlscontext: Vec<String>,
    pub debug_json_cache_metrics: Option<String>,
    // bkrun's own: cache mounts and the registry cache that outlive the pod.
    pub cache_mounts: Option<String>,
    pub cache_mounts_max_size: Option<String>,
    pub cache: Option<String>,
    pub cache_branch: Option<String>,
    pub cache_default_branch: Option<String>,
    // bkrun's own: the build's summary and result files, and its time limit.
    pub summary: Option<PathBuf>,
    pub summary_format: Option<String>,
    pub tekton_results: Option<PathBuf>,
    pub summary_dotenv: Option<PathBuf>,
    pub build_timeout: Option<String>,
    // buildx's `docker buildx build` flags (docker-style: given with a positional context PATH).
    pub context: Option<String>,
    pub tag: Vec<String>,
    pub file: Option<String>,
    pub build_arg: Vec<String>,
    pub target: Option<String>,
    pub platform: Vec<String>,
    pub push: bool,
    pub load: bool,
    pub cache_from: Vec<String>,
    pub cache_to: Vec<String>,
    pub build_context: Vec<String>,
    pub label: Vec<String>,
    pub annotation: Vec<String>,
    pub no_cache_filter: Vec<String>,
    pub pull: bool,
    pub network: Option<String>,
    pub add_host: Vec<String>,
    pub iidfile: Option<PathBuf>,
    pub provenance: Option<String>,
    pub attest: Vec<String>,
    pub sbom: Option<String>,
    pub quiet: bool,
    pub shm_size: Option<String>,
    pub ulimit: Vec<String>,
    pub builder: Option<String>,
}

/// `bkrun push`'s flags as given.
#[derive(Debug, Clone, Default)]
pub struct PushFlags {
    pub source: PathBuf,
    pub references: Vec<String>,
    pub image: Option<String>,
    pub digest_file: Option<PathBuf>,
    pub image_name_with_digest_file: Option<PathBuf>,
    pub image_name_tag_with_digest_file: Option<PathBuf>,
    pub iidfile: Option<PathBuf>,
    pub metadata_file: Option<PathBuf>,
}

/// kaniko's executor flags as given.
#[derive(Debug, Clone, Default)]
pub struct KanikoFlags {
    pub context: Option<String>,
    pub dockerfile: String,
    pub destination: Vec<String>,
    pub build_arg: Vec<String>,
    pub target: Option<String>,
    pub no_push: bool,
    pub tar_path: Option<PathBuf>,
    pub digest_file: Option<PathBuf>,
    pub image_name_with_digest_file: Option<PathBuf>,
    pub image_name_tag_with_digest_file: Option<PathBuf>,
    pub oci_layout_path: Option<PathBuf>,
    pub cache: bool,
    pub cache_repo: Option<String>,
    pub insecure: bool,
    pub insecure_registry: Vec<String>,
    pub skip_tls_verify: bool,
    pub skip_tls_verify_registry: Vec<String>,
    pub registry_mirror: Vec<String>,
    pub registry_certificate: Vec<String>,
    pub custom_platform: Option<String>,
    pub label: Vec<String>,
    pub reproducible: bool,
    pub compression: Option<String>,
    pub cleanup: bool,
    pub verbosity: String,
    pub cache_mounts: Option<String>,
    pub cache_mounts_max_size: Option<String>,
    pub summary: Option<PathBuf>,
    pub summary_format: Option<String>,
    pub tekton_results: Option<PathBuf>,
    pub summary_dotenv: Option<PathBuf>,
    pub build_timeout: Option<String>,
    pub sbom: Option<String>,
    pub provenance: Option<String>,
    pub attest: Vec<String>,
    // kaniko flags that mean nothing to BuildKit, accepted with one notice.
    pub snapshot_mode: Option<String>,
    pub single_snapshot: Option<String>,
    pub use_new_run: Option<String>,
    pub cache_dir: Option<String>,
    pub cache_ttl: Option<String>,
    pub cache_copy_layers: Option<String>,
    pub cache_run_layers: Option<String>,
    pub compressed_caching: Option<String>,
    pub log_timestamp: Option<String>,
    pub push_retry: Option<String>,
    pub image_fs_extract_retry: Option<String>,
    pub image_download_retry: Option<String>,
    pub kaniko_dir: Option<String>,
    pub ignore_path: Vec<String>,
    pub ignore_var_run: Option<String>,
    pub skip_unused_stages: Option<String>,
    pub skip_push_permission_check: Option<String>,
    pub force: Option<String>,
    pub no_push_cache: Option<String>,
}

impl KanikoFlags {
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
