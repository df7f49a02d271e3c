//! `bkrun build`'s flags: buildctl's build grammar, and buildx's for a docker-style build with a context PATH.

use std::path::PathBuf;

use clap::{ArgAction, Args};

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

    // bkrun's own: pods that start warm (docs/caching.md).
    /// Keep RUN --mount=type=cache contents between runs: a directory (a PVC, a CI cache dir) or
    /// registry://REF (an OCI artifact). Also BKRUN_CACHE_MOUNTS and cache_mounts in bkrun.toml.
    #[arg(
        long,
        value_name = "DIR|registry://REF",
        help_heading = "Warm start (bkrun's own)"
    )]
    pub cache_mounts: Option<String>,
    /// The largest cache mount saved, e.g. 512m or 4g (default 2g); a larger one is not saved.
    #[arg(long, value_name = "SIZE", help_heading = "Warm start (bkrun's own)")]
    pub cache_mounts_max_size: Option<String>,
    /// The registry cache in one flag: import REF:<branch> then REF:<default branch>, export
    /// REF:<branch> with mode=max. A REF with a tag is used as it is.
    #[arg(long, value_name = "REF", help_heading = "Warm start (bkrun's own)")]
    pub cache: Option<String>,
    /// The branch --cache tags with (default: the CI's variables, then the checkout's HEAD).
    #[arg(long, value_name = "NAME", help_heading = "Warm start (bkrun's own)")]
    pub cache_branch: Option<String>,
    /// The branch --cache falls back to (default: the CI's variable, then main).
    #[arg(long, value_name = "NAME", help_heading = "Warm start (bkrun's own)")]
    pub cache_default_branch: Option<String>,

    // bkrun's own: the build's summary where the CI shows it (docs/summary.md).
    /// Also write the build's summary to FILE (Markdown, or --summary-format json); by default
    /// it goes only where the CI shows it ($GITHUB_STEP_SUMMARY, a Buildkite annotation);
    /// `none`: nowhere.
    #[arg(long, value_name = "FILE", help_heading = "Summary (bkrun's own)")]
    pub summary: Option<PathBuf>,
    /// The form of --summary FILE: markdown (default) or json (a stable schema for tools).
    #[arg(long, value_name = "FORMAT", help_heading = "Summary (bkrun's own)")]
    pub summary_format: Option<String>,
    /// Tekton: write the image's IMAGE_DIGEST and IMAGE_URL result files into DIR.
    #[arg(long, value_name = "DIR", help_heading = "Summary (bkrun's own)")]
    pub tekton_results: Option<PathBuf>,
    /// GitLab: write IMAGE_DIGEST=… and IMAGE_URL=… to FILE for artifacts:reports:dotenv.
    #[arg(long, value_name = "FILE", help_heading = "Summary (bkrun's own)")]
    pub summary_dotenv: Option<PathBuf>,
    /// Cancel the build after DURATION (Go's syntax: 45m, 1h30m) and exit with 124.
    #[arg(long, value_name = "DURATION", help_heading = "Summary (bkrun's own)")]
    pub build_timeout: Option<String>,

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
    /// Provenance attestation: true, false, or attributes such as mode=max (docker-style builds
    /// of an image get buildx's mode=min,inline-only=true unless false; any grammar).
    #[arg(long, value_name = "VALUE", num_args = 0..=1, require_equals = true, default_missing_value = "true", help_heading = "Docker-style (buildx) options")]
    pub provenance: Option<String>,
    /// An attestation: type=provenance[,mode=min|max] or type=sbom[,generator=IMAGE] (any grammar).
    #[arg(
        long,
        value_name = "type=…",
        help_heading = "Docker-style (buildx) options"
    )]
    pub attest: Vec<String>,
    /// SBOM attestation: true, false, or attributes such as generator=IMAGE (the scanner image
    /// the daemon pulls; BuildKit's default is docker/buildkit-syft-scanner; any grammar).
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

impl From<&BuildArgs> for crate::request::flags::BuildFlags {
    fn from(a: &BuildArgs) -> Self {
        // Every field named once, grouped as the flags' help is.
        move_fields!(a.clone(), BuildArgs => crate::request::flags::BuildFlags {
            // buildctl's: the frontend, its inputs and options, the outputs and caches.
            frontend, opt, local, oci_layout, output, no_cache, export_cache, import_cache,
            // buildctl's: what the build's steps may use.
            secret, ssh, allow, source_policy_file, proxy_network,
            registry_auth_tlscontext,
            // bkrun's own: cache mounts and the registry cache that outlive the pod.
            cache_mounts, cache_mounts_max_size, cache, cache_branch, cache_default_branch,
            // bkrun's own: the summary, the result files, the time limit.
            summary, summary_format, tekton_results, summary_dotenv, build_timeout,
            // buildctl's: what is shown and written beside the build.
            progress, trace, metadata_file, ref_file, debug_json_cache_metrics,
            // buildx's docker-style grammar: context, Dockerfile, the frontend's and RUN's options.
            context, file, build_arg, target, platform, label, annotation, build_context,
            no_cache_filter, pull, network, add_host, shm_size, ulimit,
            // buildx's: names, push, caches, attestations, the ID; --load and --builder refused.
            tag, push, load, cache_from, cache_to, iidfile, provenance, attest, sbom, quiet,
            builder,
        })
    }
}
