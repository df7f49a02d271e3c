//! RUN steps for another architecture under QEMU: Debian's qemu-user-static registered in binfmt_misc by the test for its own duration, an arm64 build, a two-platform push, and what `bkrun doctor` says meanwhile.
//!
//! A test binary of its own: cargo runs test binaries one after another, so while these tests
//! hold the aarch64 handler no other test (which may expect a machine without emulators, as
//! tests/client.rs's refusal check does) runs. Inside this binary the tests take turns.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use common::registry::Registry;
use common::*;

const BINFMT: &str = "/proc/sys/fs/binfmt_misc";
/// Debian's registration line for the handler (qemu-user-static ships it for systemd-binfmt);
/// its flags include F, so the kernel opens the interpreter now and build containers, which
/// do not have it, can still use it.
const DEBIAN_CONF: &str = "/usr/lib/binfmt.d/qemu-aarch64.conf";
const NAME: &str = "qemu-aarch64";

/// The aarch64 handler registered for as long as this lives; removed when dropped (on a panic
/// too) unless it was there before, and binfmt_misc unmounted if it was mounted for it.
struct Qemu {
    _turn: MutexGuard<'static, ()>,
    /// As the kernel shows it: where the emulator was when it was registered.
    interpreter: String,
    registered_here: bool,
    mounted_here: bool,
}

static TURN: Mutex<()> = Mutex::new(());

impl Qemu {
    /// Debian's handler as qemu-user-static ships it, or the one already registered; either
    /// way with the F flag builds need.
    fn register() -> Qemu {
        let q = Qemu::with_flags(None).expect("registered by this call or before it");
        let state = fs::read_to_string(Path::new(BINFMT).join(NAME)).unwrap();
        assert!(
            state.starts_with("enabled") && field(&state, "flags: ").contains('F'),
            "{NAME} is disabled or registered without the F flag, which builds need: {state}"
        );
        q
    }

    /// Debian's handler with `flags` in place of its own; None when a handler of that name was
    /// registered before (it is left as it is) and `flags` were asked for.
    fn with_flags(flags: Option<&str>) -> Option<Qemu> {
        // A test that panicked holding the turn has already dropped its registration.
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        let dir = Path::new(BINFMT);
        let mounted_here = !dir.join("status").exists();
        if mounted_here {
            nix::mount::mount(
                Some("binfmt_misc"),
                BINFMT,
                Some("binfmt_misc"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .expect("cannot mount binfmt_misc (the tests run as root)");
        }
        let handler = dir.join(NAME);
        let registered_here = !handler.exists();
        // Made before registering, so whatever fails from here on still unregisters.
        let mut q = Qemu {
            _turn: turn,
            interpreter: String::new(),
            registered_here,
            mounted_here,
        };
        if !registered_here && flags.is_some() {
            return None;
        }
        if registered_here {
            let line = fs::read_to_string(DEBIAN_CONF)
                .unwrap_or_else(|e| panic!("{DEBIAN_CONF}: {e}: run scripts/setup"));
            let mut line = line.trim().to_string();
            if let Some(flags) = flags {
                // The last field of `:name:type:offset:magic:mask:interpreter:flags`.
                let (head, _) = line.rsplit_once(':').unwrap();
                line = format!("{head}:{flags}");
            }
            fs::write(dir.join("register"), line).expect("cannot register qemu-aarch64");
        }
        q.interpreter = field(&fs::read_to_string(&handler).unwrap(), "interpreter ");
        Some(q)
    }
}

/// The value of a line of a handler's file in binfmt_misc (`flags: `, `interpreter `).
fn field(state: &str, key: &str) -> String {
    state
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_default()
        .to_string()
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if self.registered_here {
            let _ = fs::write(Path::new(BINFMT).join(NAME), "-1");
        }
        if self.mounted_here {
            let _ = nix::mount::umount(BINFMT);
        }
    }
}

/// The arm64 busybox scripts/setup unpacked from Debian's busybox-static.
fn arm64_busybox() -> PathBuf {
    let base = std::env::var_os("BKRUN_TEST_DIR").unwrap_or_else(|| "/var/lib/bkrun-test".into());
    let p = Path::new(&base).join("busybox-arm64/busybox");
    assert!(p.exists(), "{} is missing: run scripts/setup", p.display());
    p
}

fn native_busybox() -> &'static str {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("static busybox missing: run scripts/setup")
}

/// A context with busybox for each platform (`busybox-amd64`, `busybox-arm64`) and a Dockerfile
/// that copies the target's in, and whose RUN step records and prints the machine it ran on.
fn arch_context(sb: &Sandbox) -> PathBuf {
    let ctx = sb.context(
        "ctx",
        "FROM scratch\nARG TARGETARCH\nCOPY busybox-$TARGETARCH /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox uname -m | /bin/busybox tee /machine.txt\"]\n",
    );
    fs::copy(native_busybox(), ctx.join("busybox-amd64")).unwrap();
    fs::copy(arm64_busybox(), ctx.join("busybox-arm64")).unwrap();
    sb.own(&ctx);
    ctx
}

#[test]
fn an_arm64_build_runs_its_steps_under_qemu() {
    let _qemu = Qemu::register();
    for mode in ALL_MODES {
        let sb = Sandbox::new(mode);
        let ctx = arch_context(&sb);
        let dest = sb.path("out");
        let t = Instant::now();
        let out = run_ok(
            sb.bkrun()
                .arg("build")
                .args(dockerfile_args(&ctx))
                .args(["--progress=plain", "--opt=platform=linux/arm64"])
                .arg(local_output(&dest)),
        );
        eprintln!("{mode:?}: arm64 build under QEMU in {:?}", t.elapsed());
        assert_eq!(
            fs::read_to_string(dest.join("machine.txt")).unwrap(),
            "aarch64\n",
            "{mode:?}: {}",
            show(&out)
        );
        // The step's own output, as the progress shows it.
        let err = stderr(&out);
        let step = err
            .split("\n\n")
            .find(|b| b.contains("] RUN "))
            .unwrap_or_else(|| panic!("{mode:?}: no RUN step in\n{err}"));
        assert!(step.contains(" aarch64\n"), "{mode:?}: {step}");
        sb.assert_clean();
    }
}

#[test]
fn a_two_platform_push_has_both_in_its_index() {
    let _qemu = Qemu::register();
    let sb = Sandbox::new(Mode::Privileged);
    let reg = Registry::start(&sb);
    let cfg = reg.http_config(&sb);
    let ctx = arch_context(&sb);
    let image = format!("{}/bkrun/multi:1", reg.host());
    let t = Instant::now();
    run_ok(
        with_config(sb.bkrun(), &cfg)
            .arg("build")
            .args(dockerfile_args(&ctx))
            .args(["--progress=plain", "--opt=platform=linux/amd64,linux/arm64"])
            .arg(format!("--output=type=image,name={image},push=true")),
    );
    eprintln!("two-platform build and push in {:?}", t.elapsed());

    let index = reg.manifest("bkrun/multi", "1");
    let mut seen = Vec::new();
    for m in index["manifests"].as_array().unwrap() {
        let arch = m["platform"]["architecture"].as_str().unwrap_or_default();
        if m["platform"]["os"] != "linux" || !["amd64", "arm64"].contains(&arch) {
            continue; // an attestation manifest, had the build made one
        }
        let digest = m["digest"].as_str().unwrap();
        let manifest = reg.manifest("bkrun/multi", digest);
        let top = manifest["layers"].as_array().unwrap().last().unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_string();
        let layer = sb.path(&format!("{arch}.tar.gz"));
        fs::write(&layer, reg.blob("bkrun/multi", &top)).unwrap();
        let machine = std::process::Command::new("tar")
            .arg("-xzOf")
            .arg(&layer)
            .arg("machine.txt")
            .output()
            .unwrap();
        let machine = String::from_utf8_lossy(&machine.stdout).into_owned();
        seen.push((arch.to_string(), machine));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("amd64".to_string(), "x86_64\n".to_string()),
            ("arm64".to_string(), "aarch64\n".to_string())
        ],
        "{index}"
    );
    drop(reg);
    sb.assert_clean();
}

/// Registered without F, the emulator would have to exist inside the build's container: the
/// step fails with a "no such file or directory" for a file that is there. bkrun names the
/// cause before the build starts, and doctor lists the platform as not usable.
#[test]
fn an_emulator_without_the_fix_binary_flag_is_named_before_the_build() {
    let Some(_qemu) = Qemu::with_flags(Some("OP")) else {
        eprintln!("skipped: {NAME} was registered before the test, which leaves it alone");
        return;
    };
    let sb = Sandbox::new(Mode::Privileged);
    let ctx = arch_context(&sb);
    let t = Instant::now();
    let out = run_fails(
        sb.bkrun()
            .arg("build")
            .args(dockerfile_args(&ctx))
            .args(["--progress=plain", "--opt=platform=linux/arm64"]),
    );
    eprintln!("failed arm64 build in {:?}", t.elapsed());
    let err = stderr(&out);
    assert!(
        err.starts_with("bkrun: warning: RUN steps for linux/arm64 will fail: its emulator qemu-aarch64 is registered without the F (fix-binary) flag"),
        "{err}"
    );
    assert!(err.contains("no such file or directory"), "{err}");
    let doctor = run_ok(sb.bkrun().arg("doctor"));
    assert!(
        String::from_utf8_lossy(&doctor.stdout).contains(
            "linux/arm64         not usable (qemu-aarch64: registered without the F (fix-binary) flag"
        ),
        "{}",
        show(&doctor)
    );
    sb.assert_clean();
}

#[test]
fn doctor_lists_arm64_as_runnable_while_qemu_is_registered() {
    let qemu = Qemu::register();
    for mode in [Mode::Privileged, Mode::RootlessStrict] {
        let sb = Sandbox::new(mode);
        let json = run_ok(sb.bkrun().args(["doctor", "--format", "json"]));
        let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        let arm64 = v["platforms"]["emulated"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["handler"] == NAME)
            .unwrap_or_else(|| panic!("{mode:?}: {v}"))
            .clone();
        assert_eq!(arm64["platform"], "linux/arm64", "{arm64}");
        assert_eq!(arm64["usable"], true, "{arm64}");
        let text = run_ok(sb.bkrun().arg("doctor"));
        assert!(
            String::from_utf8_lossy(&text.stdout).contains(&format!(
                "linux/arm64         emulated ({NAME}: {})",
                qemu.interpreter
            )),
            "{mode:?}: {}",
            show(&text)
        );
        sb.assert_clean();
    }
}
