//! The platforms this machine can run: its own, and those binfmt_misc hands to a registered emulator (QEMU), read from /proc/sys/fs/binfmt_misc.
//!
//! A handler's platform comes from the ELF header its magic matches (class, byte order and
//! e_machine), not from its name, which varies between installers. Only a handler with the
//! F (fix-binary) flag works for builds: the kernel opened its interpreter when it was
//! registered, so it need not exist inside the build's container.

use std::path::Path;

/// One registered binfmt_misc handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    /// Its name under /proc/sys/fs/binfmt_misc (e.g. `qemu-aarch64`).
    pub name: String,
    pub enabled: bool,
    pub interpreter: String,
    pub flags: String,
    /// The OCI platform of the binaries it runs, when its magic is an ELF header we know.
    pub platform: Option<&'static str>,
}

impl Handler {
    /// The kernel opened the interpreter at registration (flag F): works in any container.
    pub fn fix_binary(&self) -> bool {
        self.flags.contains('F')
    }

    /// Why a build cannot use it, or None when it can.
    pub fn unusable(&self) -> Option<String> {
        if !self.enabled {
            Some(format!(
                "disabled: enable it on the node with `echo 1 > /proc/sys/fs/binfmt_misc/{}`",
                self.name
            ))
        } else if !self.fix_binary() {
            Some("registered without the F (fix-binary) flag, so its interpreter would have to exist inside every build container; register it again with F".into())
        } else {
            None
        }
    }
}

/// What /proc/sys/fs/binfmt_misc says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binfmt {
    /// binfmt_misc is not mounted here (or not readable): what the kernel emulates cannot be
    /// seen, though its handlers still serve this container (they are the kernel's, not a mount's).
    Unavailable,
    Handlers(Vec<Handler>),
}

/// This machine's own platform, as OCI names it.
pub fn native_platform() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "linux/amd64",
        "aarch64" => "linux/arm64",
        "arm" => "linux/arm/v7",
        "x86" => "linux/386",
        "riscv64" => "linux/riscv64",
        "powerpc64" => "linux/ppc64le",
        "s390x" => "linux/s390x",
        _ => "linux/unknown",
    }
}

/// For each platform a build's `platform` option names (`linux/arm64,linux/amd64`) that this
/// machine could run only through a registered emulator it cannot use, why its RUN steps will
/// fail. A platform with no emulator at all is not named: its stages may have no RUN step, and a
/// step that does fail says "exec format error", which the build explains then.
pub fn unusable_platforms(option: &str, binfmt: &Binfmt) -> Vec<String> {
    let Binfmt::Handlers(handlers) = binfmt else {
        return Vec::new();
    };
    let native = os_arch(native_platform());
    let mut out = Vec::new();
    for asked in option.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let want = os_arch(asked);
        if want == native {
            continue;
        }
        let of_it: Vec<&Handler> = handlers
            .iter()
            .filter(|h| h.platform.map(os_arch) == Some(want.clone()))
            .collect();
        if of_it.iter().any(|h| h.unusable().is_none()) {
            continue;
        }
        if let Some(h) = of_it.first() {
            out.push(format!(
                "RUN steps for {asked} will fail: its emulator {} is {}",
                h.name,
                h.unusable().unwrap_or_default()
            ));
        }
    }
    out
}

/// A platform's OS and architecture as OCI names them, whatever spelling was typed (`arm64`,
/// `linux/aarch64`, `linux/arm64/v8` are all linux/arm64); the variant is left out.
fn os_arch(platform: &str) -> (String, String) {
    let parts: Vec<&str> = platform.split('/').collect();
    let (os, arch) = match parts.as_slice() {
        [arch] => ("linux", *arch),
        [os, arch, ..] => (*os, *arch),
        [] => ("linux", ""),
    };
    let arch = match arch.to_ascii_lowercase().as_str() {
        "aarch64" => "arm64".to_string(),
        "x86_64" | "x86-64" => "amd64".to_string(),
        "i386" | "i686" => "386".to_string(),
        "armhf" | "armel" => "arm".to_string(),
        other => other.to_string(),
    };
    (os.to_ascii_lowercase(), arch)
}

/// Reads every handler from `dir` (normally /proc/sys/fs/binfmt_misc).
pub fn read(dir: &Path) -> Binfmt {
    if !dir.join("status").exists() {
        return Binfmt::Unavailable;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Binfmt::Unavailable;
    };
    let mut handlers: Vec<Handler> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "register" || name == "status" {
                return None;
            }
            let text = std::fs::read_to_string(e.path()).ok()?;
            Some(parse(&name, &text))
        })
        .collect();
    handlers.sort_by(|a, b| a.name.cmp(&b.name));
    Binfmt::Handlers(handlers)
}

/// One handler file's text, as the kernel writes it.
pub fn parse(name: &str, text: &str) -> Handler {
    let mut h = Handler {
        name: name.to_string(),
        enabled: false,
        interpreter: String::new(),
        flags: String::new(),
        platform: None,
    };
    let mut offset = 0usize;
    let mut magic = None;
    for line in text.lines() {
        if line == "enabled" {
            h.enabled = true;
        } else if let Some(v) = line.strip_prefix("interpreter ") {
            h.interpreter = v.to_string();
        } else if let Some(v) = line.strip_prefix("flags:") {
            h.flags = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("offset ") {
            offset = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("magic ") {
            magic = hex(v.trim());
        }
    }
    if offset == 0 {
        h.platform = magic.as_deref().and_then(elf_platform);
    }
    h
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// The platform of the ELF header `magic` begins with: its class (byte 4), byte order (byte 5)
/// and e_machine (bytes 18–19).
fn elf_platform(magic: &[u8]) -> Option<&'static str> {
    if magic.len() < 20 || &magic[..4] != b"\x7fELF" {
        return None;
    }
    let (class64, little) = (magic[4] == 2, magic[5] == 1);
    let machine = if little {
        u16::from_le_bytes([magic[18], magic[19]])
    } else {
        u16::from_be_bytes([magic[18], magic[19]])
    };
    Some(match (machine, class64, little) {
        (0x3e, true, true) => "linux/amd64",
        (0x03, false, true) => "linux/386",
        (0xb7, true, true) => "linux/arm64",
        (0x28, false, true) => "linux/arm/v7",
        (0xf3, true, true) => "linux/riscv64",
        (0x15, true, true) => "linux/ppc64le",
        (0x16, true, false) => "linux/s390x",
        (0x08, false, false) => "linux/mips",
        (0x08, false, true) => "linux/mipsle",
        (0x08, true, true) => "linux/mips64le",
        (0x102, true, true) => "linux/loong64",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As the kernel shows qemu-user-static's aarch64 handler, registered with F.
    const AARCH64: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POCF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n";

    #[test]
    fn a_handler_is_known_by_its_elf_header() {
        let h = parse("qemu-aarch64", AARCH64);
        assert_eq!(h.platform, Some("linux/arm64"));
        assert!(h.enabled && h.fix_binary() && h.unusable().is_none());
        let riscv = "enabled\ninterpreter /usr/bin/qemu-riscv64-static\nflags: OC\noffset 0\nmagic 7f454c460201010000000000000000000200f300\n";
        let h = parse("riscv", riscv);
        assert_eq!(h.platform, Some("linux/riscv64"));
        assert!(h.unusable().unwrap().contains("F (fix-binary)"));
        let s390x = "disabled\ninterpreter /usr/bin/qemu-s390x-static\nflags: F\noffset 0\nmagic 7f454c46020201000000000000000000000200160000\n";
        let h = parse("qemu-s390x", s390x);
        assert_eq!(h.platform, Some("linux/s390x"));
        assert!(h.unusable().unwrap().starts_with("disabled: enable it"));
    }

    #[test]
    fn other_handlers_have_no_platform() {
        let jar = "enabled\ninterpreter /usr/bin/jexec\nflags: \noffset 0\nmagic 504b0304\n";
        assert_eq!(parse("jar", jar).platform, None);
        let shifted = AARCH64.replace("offset 0", "offset 2");
        assert_eq!(parse("odd", &shifted).platform, None);
    }

    // linux/arm64 is a foreign platform only on an x86_64 machine, the one bkrun is built for.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn only_platforms_whose_emulator_is_unusable_are_named() {
        let without_f = AARCH64.replace("flags: POCF", "flags: PO");
        let arm = |text: &str| Binfmt::Handlers(vec![parse("qemu-aarch64", text)]);
        let named = unusable_platforms("linux/amd64, linux/arm64/v8", &arm(&without_f));
        assert_eq!(named.len(), 1, "{named:?}");
        assert!(
            named[0].starts_with("RUN steps for linux/arm64/v8 will fail: its emulator qemu-aarch64 is registered without the F (fix-binary) flag"),
            "{named:?}"
        );
        assert_eq!(unusable_platforms("aarch64", &arm(&without_f)).len(), 1);
        // Usable, native, or not emulated at all: nothing to say before the build.
        assert!(unusable_platforms("linux/arm64", &arm(AARCH64)).is_empty());
        assert!(unusable_platforms(native_platform(), &arm(&without_f)).is_empty());
        assert!(unusable_platforms("linux/s390x", &arm(&without_f)).is_empty());
        assert!(unusable_platforms("linux/arm64", &Binfmt::Unavailable).is_empty());
    }

    #[test]
    fn a_directory_without_status_is_not_binfmt_misc() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(d.path()), Binfmt::Unavailable);
        std::fs::write(d.path().join("status"), "enabled\n").unwrap();
        std::fs::write(d.path().join("register"), "").unwrap();
        std::fs::write(d.path().join("qemu-aarch64"), AARCH64).unwrap();
        let Binfmt::Handlers(h) = read(d.path()) else {
            panic!("handlers expected")
        };
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].platform, Some("linux/arm64"));
    }
}
