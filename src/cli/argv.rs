//! Command lines rewritten before clap sees them: buildctl-daemonless.sh's, and buildctl's one-dash long flags.

use clap::CommandFactory;

use super::Cli;

/// Rewrites a `buildctl-daemonless.sh ARGS…` command line into bkrun's: everything goes to the
/// build client, so `build …` becomes `bkrun build …` and `debug workers` becomes `bkrun debug workers`.
/// buildctl's own global flags that bkrun also has (`--debug`) are kept; others are refused by clap.
pub fn daemonless_sh_argv(args: &[String]) -> Vec<String> {
    let mut out = vec!["bkrun".to_string()];
    out.extend(go_style_flags(args));
    out
}

/// buildctl's flag library also takes long flags with one dash (`-frontend dockerfile.v0`,
/// `-opt=k=v`): those become `--frontend`… when the word is one of bkrun's long flags. Short
/// flags (`-o`, `-v`) and values are left alone; so is everything after `--`.
pub fn go_style_flags(args: &[String]) -> Vec<String> {
    let mut longs = Vec::new();
    fn collect(cmd: &clap::Command, into: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            if let Some(l) = a.get_long() {
                into.push(l.to_string());
            }
        }
        for sub in cmd.get_subcommands() {
            collect(sub, into);
        }
    }
    // Built first: the subcommands' arguments are deferred until then.
    let mut cli = Cli::command();
    cli.build();
    collect(&cli, &mut longs);
    let mut out = Vec::with_capacity(args.len());
    let mut rest = false;
    for a in args {
        rest |= a == "--";
        let word = a
            .strip_prefix('-')
            .filter(|w| !rest && !w.starts_with('-'))
            .map(|w| w.split_once('=').map_or(w, |(n, _)| n));
        match word {
            Some(name) if name.len() > 1 && longs.iter().any(|l| l == name) => {
                out.push(format!("-{a}"))
            }
            _ => out.push(a.clone()),
        }
    }
    out
}

/// Whether the command line `argv` (after the rewrites above), or BKRUN_MODE's value `env` when
/// the line has no --mode, asks for a rootless mode: then bkrun's namespace probe can wait
/// until the daemon is spawned (host::start_namespace_probe). Read before clap, which is what
/// the probe would overlap; a wrong answer (a `--mode` that is another flag's value) only moves
/// when the probe runs, never what it answers or what bkrun does with it.
pub fn asks_rootless(argv: &[String], env: Option<&str>) -> bool {
    let mut asked = env;
    let mut words = argv.iter().skip(1);
    while let Some(w) = words.next() {
        match w.as_str() {
            "--" => break,
            "--mode" => asked = words.next().map(String::as_str),
            _ => {
                if let Some(v) = w.strip_prefix("--mode=") {
                    asked = Some(v);
                }
            }
        }
    }
    matches!(asked, Some("rootless" | "rootless-strict"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rootless_mode_is_seen_on_the_line_or_in_the_environment() {
        let line = |s: &str| -> Vec<String> { s.split(' ').map(String::from).collect() };
        assert!(asks_rootless(&line("bkrun --mode rootless build ."), None));
        assert!(asks_rootless(
            &line("bkrun build --mode=rootless-strict ."),
            None
        ));
        // The last --mode wins, as clap has it; the line wins over the environment.
        assert!(!asks_rootless(
            &line("bkrun --mode rootless --mode auto build ."),
            None
        ));
        assert!(!asks_rootless(
            &line("bkrun --mode privileged build"),
            Some("rootless")
        ));
        assert!(asks_rootless(&line("bkrun build ."), Some("rootless")));
        assert!(!asks_rootless(&line("bkrun build ."), None));
        // After `--` the words are a program's (bkrun exec), not bkrun's flags.
        assert!(!asks_rootless(
            &line("bkrun exec -- tool --mode rootless"),
            None
        ));
    }
}
