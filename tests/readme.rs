//! README.md's front page: every command in its ```sh blocks is run by a test (the cheap ones here, as written, in a sandbox; the others by the test named for them, which must exist and hold the line), and every docs/ page is linked from it.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::*;

/// A front-page command's run in this file, in a sandbox made for it.
type Run = fn(&Sandbox, &str);

/// Who runs a front-page command.
enum Cover {
    /// This file, as written, in a privileged sandbox: the function is given both.
    Here(Run),
    /// The test `test` in `file`, which holds the command verbatim (line breaks aside).
    Verbatim {
        file: &'static str,
        test: &'static str,
    },
    /// The test `test` in `file`, in a test world: `differs` says what it changes (a local
    /// registry for a public one, podman for a cluster), and the file must hold each of `holds`.
    Adapted {
        file: &'static str,
        test: &'static str,
        holds: &'static [&'static str],
        differs: &'static str,
    },
    /// CI: `.ci/run` runs this line.
    Ci,
}

const HELLO: &str = "scripts/hello";
const TEST: &str = "scripts/test";
const BUILD: &str = "bkrun build --frontend dockerfile.v0 --local context=. --local dockerfile=. --output type=local,dest=out";
const PUSH: &str = "bkrun build -t registry.example.com/app:1 --push .";
const PUSH_ARCHIVE: &str = "bkrun push app.tar registry.example.com/app:1";
const GITLAB: &str = "buildctl-daemonless.sh build --frontend dockerfile.v0 --local context=. --local dockerfile=. --output type=image,name=$CI_REGISTRY_IMAGE:$CI_COMMIT_SHA,push=true";
const CONFIG: &str = "bkrun config";
const DOCTOR: &str = "bkrun doctor";
const KUBE: &str = "bkrun kube --name builders --namespace ci --replicas 3 | kubectl apply -f -";
const CLIENT: &str = "bkrun --addr tcp://builders.ci.svc:1234 --tlsdir /path/to/client-secret build --frontend dockerfile.v0 --local context=. --local dockerfile=. --output type=local,dest=out";

/// Every command the front page shows, and who runs it.
const COVERED: &[(&str, Cover)] = &[
    (HELLO, Cover::Here(hello)),
    (TEST, Cover::Ci),
    (BUILD, Cover::Here(local_build)),
    (
        PUSH,
        Cover::Adapted {
            file: "tests/grammars.rs",
            test: "docker_style_tag_push_target_args_and_a_named_context",
            holds: &["\"-t\"", "\"--push\""],
            differs: "a registry on 127.0.0.1 (plain HTTP, through bkrun.toml) and a context dir",
        },
    ),
    (
        PUSH_ARCHIVE,
        Cover::Adapted {
            file: "tests/push.rs",
            test: "an_oci_archive_and_its_layout_pushed_to_two_tags_of_a_private_registry",
            holds: &[".arg(\"push\")", "type=oci,dest="],
            differs: "a password-protected TLS registry on 127.0.0.1 and two tags",
        },
    ),
    (
        GITLAB,
        Cover::Verbatim {
            file: "tests/grammars.rs",
            test: "gitlabs_buildkit_page_verbatim_in_rootless_strict",
        },
    ),
    (CONFIG, Cover::Here(config)),
    (DOCTOR, Cover::Here(doctor)),
    (KUBE, Cover::Here(kube)),
    (
        CLIENT,
        Cover::Adapted {
            file: "tests/kube.rs",
            test: "generated_deployment_of_two_daemons_serves_mutual_tls_builds_under_kube_play",
            holds: &["\"--tlsdir\"", "tcp://{ip}:1234", "\"build\""],
            differs: "each pod's address with --tlsservername for the Service's name, and the \
                      client's Secret as --tlsdir",
        },
    ),
];

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Whitespace, and line continuations (a shell's `\` and a Rust string's `\\`), as one space.
fn squeeze(text: &str) -> String {
    text.replace("\\\\\n", " ")
        .replace("\\\n", " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A shell line without its comment: from a `#` that starts a word outside quotes.
fn uncomment(line: &str) -> &str {
    let (mut single, mut double, mut prev) = (false, false, ' ');
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => return &line[..i],
            _ => {}
        }
        prev = c;
    }
    line
}

/// The commands of the ```sh blocks in `markdown`: continuations joined, comments dropped,
/// whitespace squeezed.
fn sh_commands(markdown: &str) -> Vec<String> {
    let (mut commands, mut block, mut pending) = (Vec::new(), None::<String>, String::new());
    for line in markdown.lines() {
        let fence = line.trim_start().starts_with("```");
        match (&block, fence) {
            (None, true) => block = Some(line.trim().trim_start_matches('`').to_string()),
            (Some(_), true) => {
                assert!(pending.is_empty(), "a ```sh block ends in a continuation");
                block = None;
            }
            (Some(lang), false) if lang == "sh" || lang == "bash" || lang == "shell" => {
                if let Some(cont) = line.strip_suffix('\\') {
                    pending.push_str(cont);
                    pending.push(' ');
                    continue;
                }
                pending.push_str(line);
                let command = squeeze(uncomment(&pending));
                pending.clear();
                if !command.is_empty() {
                    commands.push(command);
                }
            }
            _ => {}
        }
    }
    commands
}

/// `markdown` without its rendered examples: blocks fenced with ````markdown (four backticks,
/// so the example's own ``` blocks stay inside), which show what bkrun writes, not commands.
fn without_examples(markdown: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in markdown.lines() {
        match (inside, line.trim()) {
            (false, "````markdown") => inside = true,
            (true, "````") => inside = false,
            (true, l) => assert!(
                !l.starts_with("```sh"),
                "a ```sh block inside a ````markdown example"
            ),
            (false, _) => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    assert!(!inside, "a ````markdown example is not closed");
    out
}

fn front_page_text() -> String {
    without_examples(&read("README.md"))
}

/// The front page's command `want`, as written there (the test fails if it is not).
fn front_page(want: &str) -> String {
    let commands = sh_commands(&front_page_text());
    assert!(
        commands.iter().any(|c| c == want),
        "README.md no longer shows `{want}`: {commands:#?}"
    );
    want.to_string()
}

#[test]
fn every_front_page_command_is_run_by_a_test() {
    let t0 = Instant::now();
    let commands = sh_commands(&front_page_text());
    let known: BTreeSet<&str> = COVERED.iter().map(|(c, _)| *c).collect();
    let uncovered: Vec<&String> = commands
        .iter()
        .filter(|c| !known.contains(c.as_str()))
        .collect();
    assert!(
        uncovered.is_empty(),
        "README.md shows commands no test runs: {uncovered:#?}\nrun each here or name the test \
         that runs it in COVERED (tests/readme.rs)"
    );
    let shown: BTreeSet<&str> = commands.iter().map(String::as_str).collect();
    let stale: Vec<&&str> = known.iter().filter(|c| !shown.contains(**c)).collect();
    assert!(
        stale.is_empty(),
        "COVERED names commands README.md no longer shows: {stale:#?}"
    );

    // The set-up is exactly the two commands, and CI runs the second.
    // Commands cannot hide in other blocks: the front page's are all ```sh (besides the
    // rendered ````markdown examples of what bkrun writes).
    let front = front_page_text();
    let fences: Vec<&str> = front
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("```"))
        .step_by(2)
        .filter(|open| *open != "```sh")
        .collect();
    assert!(
        fences.is_empty(),
        "README.md has blocks other than ```sh: {fences:?}"
    );

    let setup = front_page_text();
    let setup = setup
        .split("## Start here")
        .nth(1)
        .expect("README.md has no \"Start here\" section");
    let setup = &setup[..setup.find("\n## ").unwrap_or(setup.len())];
    assert_eq!(sh_commands(setup), [HELLO, TEST], "the set-up's commands");

    for (command, cover) in COVERED {
        match cover {
            Cover::Here(_) => {}
            Cover::Ci => assert!(
                read(".ci/run").lines().any(|l| l.trim() == *command),
                ".ci/run no longer runs `{command}`"
            ),
            Cover::Verbatim { file, test } => {
                let text = read(file);
                assert!(
                    text.contains(&format!("fn {test}(")),
                    "{file} has no test {test} (it ran `{command}`)"
                );
                assert!(
                    squeeze(&text).contains(command),
                    "{file} no longer holds `{command}` verbatim"
                );
            }
            Cover::Adapted {
                file,
                test,
                holds,
                differs,
            } => {
                let text = read(file);
                assert!(
                    text.contains(&format!("fn {test}(")),
                    "{file} has no test {test} (it ran `{command}` with {differs})"
                );
                for h in *holds {
                    assert!(
                        text.contains(h),
                        "{file} no longer holds {h} (it ran `{command}` with {differs})"
                    );
                }
            }
        }
    }

    // The commands run here, side by side, each in a sandbox of its own. The sandboxes are made
    // first: one copying its bkrun while another thread forks would leave the copy busy
    // (ETXTBSY) for the shell that runs it.
    let here: Vec<(Run, &str, Sandbox)> = COVERED
        .iter()
        .filter_map(|(command, cover)| match cover {
            Cover::Here(run) => Some((*run, *command, Sandbox::new(Mode::Privileged))),
            _ => None,
        })
        .collect();
    std::thread::scope(|s| {
        for (run, command, sb) in &here {
            s.spawn(move || run(sb, command));
        }
    });
    eprintln!("front-page commands run in {:?}", t0.elapsed());
}

/// A sandbox's command run by sh in `dir`, with the sandbox's bkrun first on PATH and a
/// bkrun.toml putting its state dir in the sandbox.
fn sh(sb: &Sandbox, dir: &Path, script: &str) -> Command {
    let cfg = sb.write(
        "bkrun.toml",
        &format!(
            "mode = \"{}\"\nroot = \"{}\"\n",
            sb.mode.flag(),
            sb.path("state").display()
        ),
    );
    let mut c = sb.command("bash");
    c.arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .current_dir(dir)
        .env(
            "PATH",
            format!(
                "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                sb.bin.parent().unwrap().display()
            ),
        )
        .env("BKRUN_CONFIG", cfg);
    c
}

/// scripts/hello: its setup is what scripts/test runs first, and its release build only
/// compiles; the rest (the build of examples/hello and the file it prints) runs here as the
/// script has it, with the test's bkrun for target/release/bkrun.
fn hello(sb: &Sandbox, command: &str) {
    let script = read(command);
    let lines: Vec<&str> = script.lines().collect();
    let built = lines
        .iter()
        .position(|l| l.trim() == "cargo build --release --locked")
        .expect("scripts/hello no longer builds the release binary");
    assert!(
        lines[..built].iter().any(|l| l.trim() == "scripts/setup"),
        "scripts/hello no longer runs scripts/setup first"
    );
    let rest = lines[built + 1..].join("\n");
    assert!(rest.contains("target/release/bkrun build"), "{rest}");
    assert_eq!(
        fs::read_dir(repo("examples/hello")).unwrap().count(),
        1,
        "examples/hello holds more than its Dockerfile: copy it all here"
    );
    sb.write(
        "examples/hello/Dockerfile",
        &read("examples/hello/Dockerfile"),
    );
    let rest = rest.replace("target/release/bkrun", &sb.bin.display().to_string());
    let out = run_ok(&mut sh(sb, &sb.dir, &rest));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.starts_with("hello from bkrun, built in "),
        "{}",
        show(&out)
    );
    sb.assert_clean();
}

/// The build of use 1, in a directory holding a Dockerfile.
fn local_build(sb: &Sandbox, command: &str) {
    let command = front_page(command);
    let app = sb.context("app", "FROM scratch\nCOPY greeting.txt /\n");
    sb.write("app/greeting.txt", "hello\n");
    let out = run_ok(&mut sh(sb, &app, &command));
    assert!(
        stderr(&out).contains("starting buildkitd"),
        "{}",
        show(&out)
    );
    assert_eq!(
        fs::read_to_string(app.join("out/greeting.txt")).unwrap(),
        "hello\n"
    );
    sb.assert_clean();
}

/// `bkrun config` (use 4): what the next command does, from the sandbox's bkrun.toml; no daemon.
fn config(sb: &Sandbox, command: &str) {
    let t0 = Instant::now();
    let out = run_ok(&mut sh(sb, &sb.dir, &front_page(command)));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("start buildkitd, privileged")
            && text.contains(&sb.path("state").display().to_string()),
        "{text}"
    );
    sb.assert_no_daemon_started(t0);
    sb.assert_clean();
}

/// `bkrun doctor` (use 4): each mode's verdict, privileged usable here (CI runs as root); no
/// daemon.
fn doctor(sb: &Sandbox, command: &str) {
    let t0 = Instant::now();
    let out = run_ok(&mut sh(sb, &sb.dir, &front_page(command)));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("privileged") && l.contains("yes")),
        "{text}"
    );
    sb.assert_no_daemon_started(t0);
    sb.assert_clean();
}

/// `bkrun kube … | kubectl apply -f -` (use 5): the objects are printed here as written; no
/// cluster is at hand, so `kubectl apply` is what tests/kube.rs plays the printout with podman
/// kube play for.
fn kube(sb: &Sandbox, command: &str) {
    let command = front_page(command);
    let printing = command
        .strip_suffix(" | kubectl apply -f -")
        .expect("the kube line pipes into kubectl apply");
    let mut c = sb.command("bash");
    c.arg("-c").arg(printing).env(
        "PATH",
        format!("{}:/usr/bin:/bin", sb.bin.parent().unwrap().display()),
    );
    let out = run_ok(&mut c);
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Service", "Deployment"], "{text}");
    for d in &docs {
        assert_eq!(d["metadata"]["name"].as_str(), Some("builders"), "{text}");
        assert_eq!(d["metadata"]["namespace"].as_str(), Some("ci"), "{text}");
    }
    assert_eq!(docs[1]["spec"]["replicas"].as_u64(), Some(3), "{text}");
    let notes = stderr(&out);
    assert!(
        notes.contains("builders-tls") && notes.contains("builders.ci.svc:1234"),
        "{notes}"
    );
    assert!(
        read("tests/kube.rs").contains("\"kube\", \"play\""),
        "tests/kube.rs no longer plays bkrun kube's printout"
    );
}

/// The relative links of README.md and docs/*.md reach a file (and a heading there, given an
/// anchor), and the front page links to every page of docs/.
#[test]
fn front_page_links_every_docs_page_and_no_link_is_broken() {
    let mut pages = vec![PathBuf::from("README.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(repo("docs"))
        .unwrap()
        .flatten()
        .map(|e| Path::new("docs").join(e.file_name()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    pages.extend(docs.iter().cloned());
    let front = read("README.md");
    for page in &docs {
        assert!(
            front.contains(&format!("]({})", page.display())),
            "README.md does not link to {}",
            page.display()
        );
    }
    let mut broken = Vec::new();
    for page in &pages {
        let text = read(&page.display().to_string());
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let file = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            let path = repo(&file.display().to_string());
            if !path.exists() {
                broken.push(format!("{}: {target} (no such file)", page.display()));
            } else if !anchor.is_empty()
                && !anchors(&fs::read_to_string(&path).unwrap()).contains(anchor)
            {
                broken.push(format!("{}: {target} (no such heading)", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links: {broken:#?}");
}

/// The targets of `[text](target)` links outside code blocks and code spans.
fn links(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let plain: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
            .join("");
        let mut rest = plain.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    out
}

/// The anchors GitHub gives a page's headings: lower case, punctuation other than `-` and `_`
/// dropped, spaces as `-`.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        out.insert(slug);
    }
    out
}
