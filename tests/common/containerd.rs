//! A private containerd for the containerd-worker tests: its own config, root, state and socket in a directory of the test's; stopped and its traces in /run/containerd removed after.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{stop_with_sigterm, wait_until, Sandbox};

/// A private containerd: its root, state and sockets in a directory of the test's.
pub struct Containerd {
    child: Child,
    pub socket: PathBuf,
    /// containerd's root: its content and snapshots, which buildkitd reads by path.
    pub root: PathBuf,
}

const RUN_DIR: &str = "/run/containerd";

/// containerd's shims keep their sockets and FIFOs in /run/containerd whatever the config says:
/// made by this test process, it is removed when the last of its containerds stops (tests run
/// in parallel threads share it).
static RUN_DIR_USERS: std::sync::Mutex<(usize, bool)> = std::sync::Mutex::new((0, false));

impl Containerd {
    pub fn start(dir: &Path) -> Containerd {
        let socket = dir.join("containerd.sock");
        // CRI is off (no Kubernetes here); the opt plugin's path is set, or containerd 1.6
        // creates /opt/containerd.
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{s}\"\n[ttrpc]\n  address = \"{s}.ttrpc\"\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n",
            d = dir.display(),
            s = socket.display()
        );
        fs::write(dir.join("config.toml"), config).unwrap();
        {
            let mut users = RUN_DIR_USERS.lock().unwrap();
            if users.0 == 0 && !Path::new(RUN_DIR).exists() {
                users.1 = true;
                // As on a node, where containerd made it long ago: a pod mounts it.
                fs::create_dir_all(RUN_DIR).unwrap();
            }
            users.0 += 1;
        }
        let log = fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let c = Containerd {
            child,
            socket,
            root: dir.join("root"),
        };
        let up = wait_until(Duration::from_secs(30), || {
            c.ctr(&["version"]).status.success()
        });
        assert!(
            up,
            "containerd did not start: {}",
            fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
        );
        c
    }

    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    /// bkrun with the containerd worker on this containerd.
    pub fn bkrun_in(&self, sb: &Sandbox) -> Command {
        let mut c = sb.bkrun();
        c.args(["--worker", "containerd", "--containerd-address"])
            .arg(&self.socket);
        c
    }

    /// No task, container or temporary lease of a build is left in containerd.
    pub fn assert_no_build_left(&self, namespace: &str) {
        for what in ["tasks", "containers"] {
            let out = self.ctr(&["-n", namespace, what, "ls", "-q"]);
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "",
                "{what} left in containerd"
            );
        }
        let leases = self.ctr(&["-n", namespace, "leases", "ls"]);
        let leases = String::from_utf8_lossy(&leases.stdout).into_owned();
        assert!(
            !leases.contains("buildkit/lease.temporary"),
            "a build's temporary lease is left:\n{leases}"
        );
    }

    /// Stops containerd (SIGTERM, then its exit); dropping it does the same, so a failed
    /// assertion leaves no containerd behind.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = stop_with_sigterm(&mut self.child);
        // Poisoned by another test's panic is still a count.
        let mut users = RUN_DIR_USERS.lock().unwrap_or_else(|e| e.into_inner());
        users.0 -= 1;
        if users.0 == 0 && users.1 {
            let _ = fs::remove_dir_all(RUN_DIR);
            users.1 = false;
        }
    }
}
