//! podman as the tests run it in place of a kubelet: one containers.conf for this machine (runc, rlimits it allows, the capabilities containerd gives a pod) and the command that uses it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The capabilities containerd gives a Kubernetes container that asks for none. They go into
/// containers.conf rather than `--cap-add`: podman makes capabilities added on its command line
/// ambient for a non-root user, which Kubernetes never does.
pub const POD_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// The hard limit of `resource` ("Max open files", …) from /proc/self/limits.
pub fn hard_limit(resource: &str) -> u64 {
    let limits = fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with(resource))
        .unwrap_or_else(|| panic!("no {resource} in /proc/self/limits"));
    let hard = line[resource.len()..].split_whitespace().nth(1).unwrap();
    hard.parse().unwrap_or(u64::MAX)
}

/// podman's configuration for these tests, written once per test process.
pub fn containers_conf() -> &'static Path {
    static CONF: OnceLock<PathBuf> = OnceLock::new();
    CONF.get_or_init(|| {
        // podman's default rlimits (1048576) exceed what a root without CAP_SYS_RESOURCE may set,
        // so ask for this machine's hard limits. podman lowers its own RLIMIT_NPROC before it
        // starts runc (to 32768 on a machine whose kernel.pid_max is 32768), so stay under both.
        let nofile = hard_limit("Max open files");
        let pid_max: u64 = fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let nproc = hard_limit("Max processes").min(pid_max).min(32768);
        let caps: Vec<String> = POD_CAPABILITIES.iter().map(|c| format!("{c:?}")).collect();
        let text = format!(
            "# Written by tests/common/podman.rs.\n[containers]\ndefault_capabilities = [{}]\n\
             default_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n\
             [engine]\n# crun refuses cgroup v1 hybrid hosts; runc is also what Kubernetes' containerd runs.\n\
             runtime = \"runc\"\n",
            caps.join(", ")
        );
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        fs::create_dir_all(dir).unwrap();
        let path = dir.join("pod-containers.conf");
        // Another test binary run may be reading it: replace it whole.
        let tmp = dir.join(format!("pod-containers.conf.{}", std::process::id()));
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, &path).unwrap();
        path
    })
}

pub fn podman() -> Command {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the podman tests run podman as root (scripts/test runs as root)"
    );
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", containers_conf());
    c
}

/// `podman ARGS`, which must succeed: its output (the failure, with podman's own words, panics).
pub fn podman_ok(args: &[&str]) -> std::process::Output {
    let out = podman()
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run podman ({e}): run scripts/setup"));
    assert!(
        out.status.success(),
        "podman {args:?} failed\n{}",
        super::show(&out)
    );
    out
}

/// `podman ARGS`, however it ends.
pub fn podman_out(args: &[&str]) -> std::process::Output {
    podman().args(args).output().unwrap()
}

/// Every container, pod, secret and volume podman has, as (kind, name): what a test's leftover
/// check filters by the names it gave.
pub fn objects() -> Vec<(&'static str, String)> {
    let lists: [(&str, &[&str]); 4] = [
        ("container", &["ps", "--all", "--format", "{{.Names}}"]),
        ("pod", &["pod", "ps", "--format", "{{.Name}}"]),
        ("secret", &["secret", "ls", "--format", "{{.Name}}"]),
        ("volume", &["volume", "ls", "--format", "{{.Name}}"]),
    ];
    let mut all = Vec::new();
    for (kind, args) in lists {
        let out = podman_ok(args);
        for l in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
        {
            all.push((kind, l.to_string()));
        }
    }
    all
}

/// Host processes (not this one) whose command line names `name`, as `process PID: CMDLINE`:
/// conmon names its container on its command line.
pub fn processes_naming(name: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(name) && e.file_name().to_str() != Some(me.as_str()) {
            found.push(format!(
                "process {}: {cmdline}",
                e.file_name().to_string_lossy()
            ));
        }
    }
    found
}
