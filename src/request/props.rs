//! Property tests of every flag parser in request/: generated values never panic, every refusal is one line that names its flag, and no value is echoed whole.

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

use super::flags::BuildFlags;
use super::{build, cache, csv, output, secret, ssh};
use crate::config::Settings;
use crate::host::fake::FakeHost;

/// Enough cases to find the awkward inputs, few enough that the whole file runs in seconds.
fn config() -> Config {
    Config {
        cases: 256,
        // A failure is reported with its minimal input; no regression files are left in src/.
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    }
}

/// The longest refusal any parser may print: a few clipped values and the advice around them.
const MAX_MESSAGE: usize = 4096;

/// Keys the grammars know, so generated values get past the first checks often.
const KEYS: &[&str] = &[
    "type", "dest", "src", "source", "id", "env", "ref", "mode", "tag", "tar", "name", "push",
    "reset", "raw", "output", "digest", "Type", "",
];
const VALUES: &[&str] = &[
    "local",
    "tar",
    "oci",
    "docker",
    "image",
    "registry",
    "cacheonly",
    "inline",
    "file",
    "env",
    "min",
    "max",
    "true",
    "false",
    "-",
    "",
    ".",
    "/",
    "/dev/null",
    "/no/such/dir/x",
    "r/c:1",
    "Foo/Bar",
    "café",
    "a\"b",
    "x\ny",
];

/// A field as a user might type it: known or arbitrary key and value, sometimes quoted Go-style.
fn field() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        prop::sample::select(KEYS).prop_map(str::to_string),
        "[a-z\"=, ]{0,6}"
    ];
    let value = prop_oneof![
        prop::sample::select(VALUES).prop_map(str::to_string),
        any::<String>(),
        "[a-z0-9/.\",= -]{0,12}",
    ];
    (key, value, any::<bool>(), any::<bool>()).prop_map(|(k, v, has_eq, quoted)| {
        let f = if has_eq { format!("{k}={v}") } else { k };
        if quoted {
            format!("\"{}\"", f.replace('"', "\"\""))
        } else {
            f
        }
    })
}

/// A whole flag value: fields joined by commas, or anything at all.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(field(), 0..5).prop_map(|f| f.join(",")),
        1 => any::<String>(),
        1 => "[a-z=,\" \\n]{0,20}",
    ]
}

fn no_env(_: &str) -> Option<String> {
    None
}

/// A refusal must be one line that names `flag` (the rest of the chain is detail, indented).
fn check_refusal(flag: &str, input: &str, e: &anyhow::Error) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    prop_assert!(msg.contains(flag), "{input:?}: {msg}");
    prop_assert!(!msg.contains('\n'), "{input:?}: {msg}");
    prop_assert!(msg.len() <= MAX_MESSAGE, "{input:?}: {} bytes", msg.len());
    Ok(())
}

/// Go's encoding/csv writer's quoting, for the round trip.
fn go_quote(f: &str) -> String {
    if f.is_empty() || f.contains(['"', ',', '\n', '\r']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f.to_string()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn csv_without_quotes_splits_on_every_comma(s in "[a-z=, \\n]{0,30}") {
        let line = s.strip_suffix('\n').unwrap_or(&s);
        match csv::fields(&s) {
            Ok(f) => prop_assert_eq!(f, line.split(',').collect::<Vec<_>>()),
            Err(e) => {
                prop_assert!(line.is_empty(), "{s:?}: {e}");
            }
        }
    }

    #[test]
    fn csv_reads_back_what_gos_writer_quotes(f in prop::collection::vec(any::<String>(), 1..5)) {
        let line: Vec<String> = f.iter().map(|x| go_quote(x)).collect();
        prop_assert_eq!(csv::fields(&line.join(",")).unwrap(), f);
    }

    #[test]
    fn csv_never_panics_and_quotes_inside_a_field_are_refused(s in value()) {
        if let Ok(fields) = csv::fields(&s) {
            // A quote survives only by being doubled inside a quoted field.
            let quotes: usize = fields.iter().map(|f| f.matches('"').count()).sum();
            prop_assert!(quotes * 2 <= s.matches('"').count(), "{s:?}: {fields:?}");
        }
    }

    #[test]
    fn outputs_are_refused_naming_the_flag(s in value(), tty in any::<bool>()) {
        if let Err(e) = output::parse(&s, tty) {
            check_refusal("--output", &s, &e)?;
        }
    }

    #[test]
    fn caches_are_refused_naming_the_flag(s in value()) {
        if let Err(e) = cache::parse_import(&s) {
            check_refusal("--import-cache", &s, &e)?;
        }
        if let Err(e) = cache::parse_export(&s) {
            check_refusal("--export-cache", &s, &e)?;
        }
    }

    #[test]
    fn secrets_are_refused_naming_the_flag(s in value()) {
        if let Err(e) = secret::parse(&s, &no_env) {
            check_refusal("--secret", &s, &e)?;
        }
    }

    #[test]
    fn ssh_values_are_refused_naming_the_flag(s in value()) {
        if let Err(e) = ssh::parse(&s, &no_env) {
            check_refusal("--ssh", &s, &e)?;
        }
    }

    #[test]
    fn a_build_is_refused_naming_the_flag_at_fault(
        local in prop::collection::vec(value(), 0..2),
        opt in prop::collection::vec(value(), 0..2),
        oci_layout in prop::collection::vec(value(), 0..2),
        out in prop::collection::vec(value(), 0..2),
        secret in prop::collection::vec(value(), 0..2),
        ssh in prop::collection::vec(value(), 0..2),
        import_cache in prop::collection::vec(value(), 0..2),
        export_cache in prop::collection::vec(value(), 0..2),
    ) {
        let args = BuildFlags {
            frontend: Some("dockerfile.v0".into()),
            progress: "plain".into(),
            local,
            opt,
            oci_layout,
            output: out,
            secret,
            ssh,
            import_cache,
            export_cache,
            ..Default::default()
        };
        if let Err(e) = build::resolve(&args, &settings(), &FakeHost::user()) {
            let msg = e.to_string();
            let flags = ["--local", "--opt", "--oci-layout", "--output", "--secret", "--ssh",
                "--import-cache", "--export-cache"];
            prop_assert!(flags.iter().any(|f| msg.contains(f)), "{args:?}: {msg}");
            prop_assert!(!msg.contains('\n') && msg.len() <= MAX_MESSAGE, "{msg}");
        }
    }
}

/// bkrun.toml with nothing in it.
fn settings() -> Settings {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("bkrun.toml");
    std::fs::write(&path, "").unwrap();
    let args = crate::config::GlobalFlags {
        config: Some(path),
        ..Default::default()
    };
    Settings::load(&args, &FakeHost::user()).unwrap()
}

/// A 100 KB value is cut in every parser's refusal, wherever in the value it sits.
#[test]
fn long_values_are_never_echoed_whole() {
    let long = "x".repeat(100_000);
    let cases: Vec<(&str, String)> = vec![
        ("--output", format!("type={long}")),
        ("--output", format!("type=local,dest=/no/such/{long}")),
        ("--output", format!("type=tar,tar={long}")),
        ("--output", format!("{long}\"")),
        ("--import-cache", format!("type=registry,ref={long}")),
        ("--export-cache", format!("type=local,dest=/x,mode={long}")),
        ("--secret", format!("id={long},src=/no/such/file")),
        ("--secret", format!("id=a,{long}=b")),
        ("--ssh", format!("{long}=/no/such/key")),
    ];
    for (flag, v) in cases {
        let e = match flag {
            "--output" => output::parse(&v, false).unwrap_err(),
            "--import-cache" => cache::parse_import(&v).unwrap_err(),
            "--export-cache" => cache::parse_export(&v).unwrap_err(),
            "--secret" => secret::parse(&v, &no_env).unwrap_err(),
            _ => ssh::parse(&v, &no_env).unwrap_err(),
        };
        let msg = e.to_string();
        assert!(
            msg.starts_with(flag) && msg.len() < 1000 && msg.contains("bytes)"),
            "{flag}: {msg}"
        );
    }
}

/// Flags of `bkrun build` (buildctl's and docker-style) that take a value a parser checks.
const BUILD_FLAGS: &[&str] = &[
    "--output",
    "--opt",
    "--local",
    "--secret",
    "--ssh",
    "--import-cache",
    "--export-cache",
    "--oci-layout",
    "--build-arg",
    "--tag",
    "--build-context",
    "--attest",
    "--annotation",
    "--platform",
    "--cache-from",
    "--cache-to",
    "--shm-size",
    "--label",
];

/// A whole `bkrun build` or `bkrun kaniko` command line as parsed by clap: (flag, value) pairs.
fn flags(names: &'static [&'static str]) -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(
        (
            prop::sample::select(names).prop_map(str::to_string),
            value(),
        ),
        0..4,
    )
}

/// A refusal from the grammar layer names some flag (or the context argument it is about).
fn names_a_flag(msg: &str) -> bool {
    msg.contains("--") || msg.contains("-t ") || msg.contains("context")
}

proptest! {
    #![proptest_config(Config { cases: 128, ..config() })]

    #[test]
    fn docker_style_and_buildctl_lines_are_refused_naming_a_flag(
        pairs in flags(BUILD_FLAGS),
        docker_style in any::<bool>(),
    ) {
        let ctx = tempfile::tempdir().unwrap();
        std::fs::write(ctx.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        let mut argv = vec!["bkrun".to_string(), "build".to_string(), "--frontend=dockerfile.v0".to_string()];
        for (f, v) in &pairs {
            argv.push(format!("{f}={v}"));
        }
        if docker_style {
            argv.push(ctx.path().display().to_string());
        }
        // clap's own refusals (a value it cannot take) are clap's, printed with usage.
        let Ok(b) = crate::cli::parse_build(&argv) else { return Ok(()) };
        let result = super::docker::normalize(&b, &mut std::io::empty())
            .and_then(|n| build::resolve(&n.args, &settings(), &FakeHost::user()));
        if let Err(e) = result {
            let msg = e.to_string();
            prop_assert!(names_a_flag(&msg), "{argv:?}: {msg}");
            prop_assert!(!msg.contains('\n') && msg.len() <= MAX_MESSAGE, "{argv:?}: {msg}");
        }
    }

    #[test]
    fn kaniko_lines_are_refused_naming_a_flag(
        pairs in flags(&["--destination", "--build-arg", "--cache-repo", "--target", "--tar-path", "--dockerfile"]),
    ) {
        let ctx = tempfile::tempdir().unwrap();
        std::fs::write(ctx.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        let mut argv = vec!["bkrun".to_string(), "kaniko".to_string(), format!("--context={}", ctx.path().display())];
        for (f, v) in &pairs {
            argv.push(format!("{f}={v}"));
        }
        let Ok(k) = crate::cli::parse_kaniko(&argv) else { return Ok(()) };
        if let Err(e) = super::kaniko::translate(&k) {
            let msg = e.to_string();
            prop_assert!(names_a_flag(&msg), "{argv:?}: {msg}");
            prop_assert!(!msg.contains('\n') && msg.len() <= MAX_MESSAGE, "{argv:?}: {msg}");
        }
    }
}
