//! With the containerd worker: checks, before any daemon starts, that the shared directory (the state dir, the daemon's temp files) is the same path on the node as here.
//!
//! buildkitd hands the node's containerd mount sources by path: the overlay it mounted for a RUN
//! step's root filesystem (under the state dir), secret tmpfs and SSH sockets (under its
//! TMPDIR). containerd resolves those paths in the node's mount namespace, so in a container they
//! must be a hostPath volume mounted at the path it has on the node, with propagation back to the
//! node (`mountPropagation: Bidirectional`) so the mounts buildkitd makes there reach containerd.
//! Outside a container bkrun shares containerd's view and there is nothing to check.

use std::path::Path;

use anyhow::{bail, Result};

use crate::host::mountinfo::Mount;
use crate::host::{Host, PathKind};

/// Refuses a shared directory containerd cannot see at the same path, naming the pod-spec
/// fields to change. `state_dir` must lie inside `shared` (buildkitd's RUN root filesystems are
/// mounted below the state dir).
pub fn check(host: &dyn Host, shared: &Path, state_dir: &Path) -> Result<()> {
    let (shared, state_dir) = (&lexical(shared), &lexical(state_dir));
    if !state_dir.starts_with(shared) {
        bail!(
            "the state dir {} is not inside --containerd-shared-dir {}: buildkitd mounts the build's root filesystems below the state dir, so containerd must see it too; put the state dir (--root) inside the shared directory",
            state_dir.display(),
            shared.display()
        );
    }
    if !in_container(host) {
        return Ok(());
    }
    let mounts = host.mounts();
    // The state dir may sit on a mount of its own inside the shared dir (an emptyDir at --root):
    // both must pass.
    for dir in [shared, state_dir] {
        if let Some(mount) = containing_mount(&mounts, dir) {
            check_mount(mount, shared)?;
        }
    }
    Ok(())
}

/// One mount that holds part of the shared dir, in a container: from the node, at the same
/// path, shared back to the node.
fn check_mount(mount: &Mount, shared: &Path) -> Result<()> {
    let fix = format!(
        "mount a hostPath volume at {0} whose hostPath.path is {0} too, with mountPropagation: Bidirectional, and nothing else below it (or choose such a directory with --containerd-shared-dir)",
        shared.display()
    );
    if mount.mount_point == Path::new("/") {
        bail!(
            "{} is in this container's own filesystem, which the node's containerd cannot see: {fix}",
            shared.display()
        );
    }
    // A bind mount's root is the directory it came from on its filesystem: a hostPath at the
    // same path has a root that is the mount point or (when the node mounts that part of its
    // tree from another filesystem) a tail of it; an emptyDir's root is the kubelet's pod dir.
    let root = &mount.root;
    let tail = root.strip_prefix("/").unwrap_or(root);
    if !tail.as_os_str().is_empty() && !mount.mount_point.ends_with(tail) {
        bail!(
            "{} is mounted from {} on the node, a different path, so the paths buildkitd hands containerd would not exist there: {fix}",
            mount.mount_point.display(),
            root.display()
        );
    }
    if !mount.optional.iter().any(|o| o.starts_with("shared:")) {
        bail!(
            "{} is not a shared mount, so the root filesystems buildkitd mounts there for RUN steps would not reach the node's containerd: set mountPropagation: Bidirectional on its volumeMount (the pod must be privileged)",
            mount.mount_point.display()
        );
    }
    Ok(())
}

/// `p` with `.` and `..` resolved by name (the directories may not exist yet), so
/// `/srv/x/../shared` is judged as `/srv/shared`.
fn lexical(p: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Whether this process runs in a container rather than on the node itself: the variable the
/// kubelet sets in every pod, podman's marker file, or a root filesystem that is an overlay (an
/// image's layers). Not /.dockerenv: machines made from a Docker image keep it (this one does).
fn in_container(host: &dyn Host) -> bool {
    host.path_kind(Path::new("/run/.containerenv")) != PathKind::Missing
        || host.env("KUBERNETES_SERVICE_HOST").is_some()
        || host
            .mounts()
            .iter()
            .rev()
            .find(|m| m.mount_point == Path::new("/"))
            .is_some_and(|m| m.fs_type == "overlay")
}

/// The mount `dir` lies on: the one with the longest mount point above it, the last of equals
/// (a mount stacked on another hides it).
fn containing_mount<'a>(mounts: &'a [Mount], dir: &Path) -> Option<&'a Mount> {
    mounts
        .iter()
        .filter(|m| dir.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.components().count())
        .and_then(|best| {
            mounts
                .iter()
                .rev()
                .find(|m| m.mount_point == best.mount_point)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;
    use std::path::PathBuf;

    fn mount(root: &str, at: &str, optional: &[&str], fs_type: &str) -> Mount {
        Mount {
            id: 1,
            parent: 1,
            device: (0, 1),
            root: PathBuf::from(root),
            mount_point: PathBuf::from(at),
            options: "rw".into(),
            optional: optional.iter().map(|s| s.to_string()).collect(),
            fs_type: fs_type.into(),
            source: "x".into(),
            super_options: "rw".into(),
        }
    }

    /// A pod: overlay root, and the given mounts over it.
    fn pod(mounts: Vec<Mount>) -> FakeHost {
        let mut h = FakeHost::root();
        h.mount_table = [vec![mount("/", "/", &[], "overlay")], mounts].concat();
        h
    }

    fn err(h: &FakeHost, shared: &str, state: &str) -> String {
        check(h, Path::new(shared), Path::new(state))
            .unwrap_err()
            .to_string()
    }

    const STATE: &str = "/var/lib/buildkit";

    #[test]
    fn on_the_node_itself_any_directory_holding_the_state_dir_does() {
        let mut h = FakeHost::root();
        h.mount_table = vec![mount("/", "/", &[], "ext4")];
        check(&h, Path::new(STATE), Path::new(STATE)).unwrap();
        check(&h, Path::new("/var/lib"), Path::new(STATE)).unwrap();
        let e = err(&h, "/srv/shared", STATE);
        assert!(
            e.starts_with(
                "the state dir /var/lib/buildkit is not inside --containerd-shared-dir /srv/shared"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_hostpath_at_the_same_path_with_bidirectional_propagation_does() {
        let h = pod(vec![mount(STATE, STATE, &["shared:7"], "ext4")]);
        check(&h, Path::new(STATE), Path::new(STATE)).unwrap();
        // The node mounts /var from its own disk: the bind's root is the tail below /var.
        let h = pod(vec![mount("/lib/buildkit", STATE, &["shared:7"], "xfs")]);
        check(&h, Path::new(STATE), Path::new(STATE)).unwrap();
    }

    #[test]
    fn the_containers_own_filesystem_is_refused_naming_the_pod_spec_fields() {
        let h = pod(vec![]);
        let e = err(&h, STATE, STATE);
        assert!(
            e.starts_with("/var/lib/buildkit is in this container's own filesystem"),
            "{e}"
        );
        assert!(
            e.contains(
                "hostPath.path is /var/lib/buildkit too, with mountPropagation: Bidirectional"
            ),
            "{e}"
        );
    }

    #[test]
    fn an_emptydir_or_a_hostpath_at_another_path_is_refused() {
        let h = pod(vec![mount(
            "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/cache",
            STATE,
            &["shared:7"],
            "ext4",
        )]);
        let e = err(&h, STATE, STATE);
        assert!(e.contains("is mounted from /var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/cache on the node, a different path"), "{e}");
    }

    #[test]
    fn a_private_mount_is_refused_naming_mount_propagation() {
        let h = pod(vec![mount(STATE, STATE, &[], "ext4")]);
        let e = err(&h, STATE, STATE);
        assert!(
            e.contains("is not a shared mount") && e.contains("mountPropagation: Bidirectional"),
            "{e}"
        );
        // A later mount at the same point hides the earlier one.
        let h = pod(vec![
            mount(STATE, STATE, &["shared:7"], "ext4"),
            mount(STATE, STATE, &[], "ext4"),
        ]);
        assert!(err(&h, STATE, STATE).contains("is not a shared mount"));
    }

    #[test]
    fn an_emptydir_at_the_state_dir_inside_a_good_shared_dir_is_refused() {
        let shared = "/var/lib/bkrun-containerd";
        let state = "/var/lib/bkrun-containerd/buildkit";
        let h = pod(vec![
            mount(shared, shared, &["shared:7"], "ext4"),
            mount(
                "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/c",
                state,
                &[],
                "ext4",
            ),
        ]);
        let e = err(&h, shared, state);
        assert!(
            e.starts_with("/var/lib/bkrun-containerd/buildkit is mounted from /var/lib/kubelet"),
            "{e}"
        );
        // Dots are resolved by name before anything is compared.
        let h = pod(vec![mount(shared, shared, &["shared:7"], "ext4")]);
        check(
            &h,
            Path::new("/var/lib/x/../bkrun-containerd"),
            Path::new(state),
        )
        .unwrap();
        let e = err(&h, shared, "/var/lib/bkrun-containerd/../buildkit");
        assert!(e.contains("is not inside --containerd-shared-dir"), "{e}");
    }

    #[test]
    fn a_container_is_known_by_its_marker_file_or_the_kubelets_variable() {
        let mut h = FakeHost::root();
        h.mount_table = vec![mount("/", "/", &[], "ext4")];
        assert!(!in_container(&h));
        h.paths = vec![("/run/.containerenv", PathKind::File)];
        assert!(in_container(&h));
        h.paths = vec![("/.dockerenv", PathKind::File)];
        assert!(!in_container(&h));
        h.env.push(("KUBERNETES_SERVICE_HOST", "10.0.0.1"));
        assert!(in_container(&h));
    }
}
