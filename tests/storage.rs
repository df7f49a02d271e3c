//! The state dir's storage on this kernel: a state dir on a nosuid,nodev volume (as COS and Bottlerocket mount an emptyDir) and one on overlayfs (a container's own filesystem), each mounted in a mount namespace of the test's own, so the mounts end with it; bkrun names the snapshotter buildkitd then picks, and warns in one line before a build that would copy every layer.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// `c` run in a new private mount namespace after `script` (sh, run as root) has mounted what
/// it needs there, as the sandbox's user; the mounts go when the last process in it ends.
fn in_mount_namespace(sb: &Sandbox, c: &Command, script: &str) -> Command {
    let mut u = Command::new("/usr/bin/unshare");
    u.args(["--mount", "--propagation", "private", "/bin/sh", "-ec"])
        .arg(format!("{script}\nexec \"$@\""))
        .arg("sh");
    if sb.mode.rootless() {
        let user = nix::unistd::User::from_name(TEST_USER).unwrap().unwrap();
        u.arg("/usr/bin/setpriv")
            .arg(format!("--reuid={}", user.uid))
            .arg(format!("--regid={}", user.gid))
            .arg("--init-groups");
    }
    u.arg(c.get_program()).args(c.get_args()).env_clear();
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            u.env(k, v);
        }
    }
    if let Some(d) = c.get_current_dir() {
        u.current_dir(d);
    }
    u
}

/// bkrun in the sandbox's mode with its state dir at `state`.
fn bkrun_at(sb: &Sandbox, state: &Path) -> Command {
    let mut c = sb.command(&sb.bin);
    c.args(["--mode", sb.mode.flag(), "--root"]).arg(state);
    c
}

/// Hides this machine's fuse-overlayfs (in the namespace only), as in an image without it.
const NO_FUSE: &str = "/bin/mount --bind /dev/null /usr/bin/fuse-overlayfs";

#[test]
fn a_nosuid_nodev_volume_is_named_and_overlayfs_still_chosen() {
    let sb = Sandbox::new(Mode::Privileged);
    let vol = sb.mkdir("vol");
    let mount = format!(
        "{NO_FUSE}\n/bin/mount -t tmpfs -o nosuid,nodev,size=64m tmpfs {}",
        vol.display()
    );
    let state = vol.join("state");
    let mut doctor = bkrun_at(&sb, &state);
    let json = run_ok(&mut in_mount_namespace(
        &sb,
        doctor.args(["doctor", "--format", "json"]),
        &mount,
    ));
    let j: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let s = &j["storage"];
    assert_eq!(s["filesystem"], "tmpfs", "{s}");
    assert_eq!(s["mount"], format!("tmpfs at {}", vol.display()), "{s}");
    assert_eq!(s["nosuid"], true, "{s}");
    assert_eq!(s["nodev"], true, "{s}");
    // Fresh overlay mounts do not inherit the volume's flags: nothing to warn of.
    assert_eq!(s["snapshotter"], "overlayfs", "{s}");
    assert_eq!(s["warnings"], serde_json::json!([]), "{s}");
    let mut config = bkrun_at(&sb, &state);
    let text = run_ok(&mut in_mount_namespace(&sb, config.arg("config"), &mount));
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    let line = format!(
        "state dir fs:    tmpfs (tmpfs at {}), nosuid, nodev\n",
        vol.display()
    );
    assert!(text.contains(&line), "{text}");
    assert!(
        text.contains("snapshotter:     overlayfs (overlayfs works on tmpfs)\n"),
        "{text}"
    );
    // The volume went with the namespace: the sandbox's dir is empty again.
    assert_eq!(std::fs::read_dir(&vol).unwrap().count(), 0);
    sb.assert_clean();
}

#[test]
fn a_state_dir_on_overlayfs_is_warned_of_before_a_privileged_build() {
    overlay_state_dir(Mode::Privileged);
}

#[test]
fn a_state_dir_on_overlayfs_is_warned_of_before_a_rootless_build() {
    overlay_state_dir(Mode::Rootless);
}

/// The state dir on overlayfs (a pod's own filesystem) mounted nosuid,nodev, with no
/// fuse-overlayfs: both warnings come before the build's first step, and buildkitd's own
/// "auto" then chooses native, as bkrun said.
fn overlay_state_dir(mode: Mode) {
    let sb = Sandbox::new(mode);
    for d in ["ovl/lower", "ovl/upper", "ovl/work", "ovl/merged"] {
        sb.mkdir(d);
    }
    let o = sb.path("ovl");
    let mount = format!(
        "{NO_FUSE}\n/bin/mount -t overlay overlay -o lowerdir={0}/lower,upperdir={0}/upper,workdir={0}/work,nosuid,nodev {0}/merged",
        o.display()
    );
    let state = o.join("merged/state");
    let ctx = sb.hello_context();
    let mut build = bkrun_at(&sb, &state);
    build.arg("build").args(sb.build_args(&ctx));
    let out = run_ok(&mut in_mount_namespace(&sb, &build, &mount));
    let err = stderr(&out);
    let native = "bkrun: warning: buildkitd will use the native snapshotter, which copies every layer in full for each step: builds slow down several times and the cache grows (moby/buildkit#2642); the state dir is on overlayfs, as a container's own filesystem is, which overlayfs cannot take as its upper layer, and fuse-overlayfs is not on PATH; mount a volume at";
    let flags = format!("bkrun: warning: the state dir {} is on a nosuid,nodev mount, which the native snapshotter's bind mounts keep: setuid programs (sudo, su, ping) in RUN steps get no privilege, and device files in the image do not open (moby/buildkit#879, #3098); mount its volume without nosuid and nodev\n", state.display());
    let at = |needle: &str| {
        err.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in:\n{err}"))
    };
    let first_step = at("\n#1 ");
    assert!(at(native) < first_step, "{err}");
    assert!(at(&flags) < first_step, "{err}");
    // buildkitd's own choice, kept in the overlay's upper dir after the namespace (and the
    // mount) ended: its snapshots are in runc-native.
    let upper = o.join("upper/state");
    assert!(
        upper.join("runc-native").is_dir(),
        "{:?}",
        describe_tree(&upper)
    );
    assert!(!upper.join("runc-overlayfs").exists());
    sb.assert_clean();
}
