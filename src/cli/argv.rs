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
