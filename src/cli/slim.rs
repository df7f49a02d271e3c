//! The parse of a command line that names its subcommand plainly: bkrun's top level with that one subcommand, not the whole tree.
//!
//! clap copies every global flag into every subcommand before it parses (24 flags into each of
//! bkrun's 17 subcommands), which was most of main → parsed. A command line whose words before
//! the subcommand are all global flags needs only the subcommand it names; anything else (a
//! help or version request, an unknown flag, a buildctl subcommand passed through, a typo) gets
//! `None` and the whole tree, so its errors and help read as before.

use clap::{CommandFactory, Parser, Subcommand};

use super::{Command, GlobalArgs, ABOUT};

/// bkrun's top level alone: `Cli`'s settings and global flags, no subcommand. Its attributes
/// are `Cli`'s; a test holds the two equal.
#[derive(Parser)]
#[command(name = "bkrun", version, about = ABOUT, propagate_version = true, args_override_self = true)]
struct Top {
    #[command(flatten)]
    _global: GlobalArgs,
}

/// The top level with only the subcommand `argv` invokes, when every word before that
/// subcommand is a global flag or a global flag's value.
pub fn command(argv: &[String]) -> Option<clap::Command> {
    let top = Top::command();
    let mut words = argv.iter().skip(1);
    while let Some(word) = words.next() {
        let Some(flag) = word.strip_prefix("--") else {
            if word.starts_with('-') {
                // A short flag: bkrun's globals have none; -h and -V want the whole tree.
                return None;
            }
            let all = Command::augment_subcommands(clap::Command::new("bkrun"));
            let sub = all.find_subcommand(word)?.clone();
            return Some(
                top.subcommand(sub)
                    .subcommand_required(true)
                    .arg_required_else_help(true),
            );
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, _)) => (n, true),
            None => (flag, false),
        };
        let arg = top.get_arguments().find(|a| a.get_long() == Some(name))?;
        if !inline && arg.get_action().takes_values() && !arg.is_require_equals_set() {
            // The value is the next word, whatever it looks like.
            words.next()?;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::super::Cli;
    use super::*;

    fn argv(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_top_level_has_clis_settings_and_flags() {
        let (top, cli) = (Top::command(), Cli::command());
        assert_eq!(top.get_name(), cli.get_name());
        assert_eq!(top.get_version(), cli.get_version());
        assert_eq!(
            top.get_about().map(|s| s.to_string()),
            cli.get_about().map(|s| s.to_string())
        );
        assert_eq!(
            top.is_propagate_version_set(),
            cli.is_propagate_version_set()
        );
        assert_eq!(top.is_args_override_self(), cli.is_args_override_self());
        let longs = |c: &clap::Command| -> Vec<String> {
            c.get_arguments()
                .map(|a| format!("{:?} {:?}", a.get_long(), a.is_global_set()))
                .collect()
        };
        assert_eq!(longs(&top), longs(&cli));
    }

    #[test]
    fn a_slim_parse_reads_as_the_whole_trees() {
        for line in [
            "bkrun build --frontend=dockerfile.v0 --local context=. --local dockerfile=.",
            "bkrun --mode rootless --root /x build --debug --opt k=v --progress=plain",
            "bkrun --mode=privileged --debug b --frontend dockerfile.v0 --debug=false",
            "bkrun --root build build --frontend dockerfile.v0",
            "bkrun --buildkitd-flags --oci-worker-gc=false daemon --listen tcp://0.0.0.0:1234",
            "bkrun --addr tcp://a:1 --addr tcp://b:1 --route-key k du",
            "bkrun --min-free-space 2GiB prune",
            "bkrun debug workers --root /y",
            "bkrun --config /c.toml config",
            "bkrun du --mode rootless-strict",
            "bkrun kaniko --context dir:///x --destination r/x:1 --no-push",
            "bkrun doctor",
        ] {
            let a = argv(line);
            let cmd = command(&a).unwrap_or_else(|| panic!("no slim command for {line}"));
            let slim = cmd.try_get_matches_from(&a).expect(line);
            let slim = Cli::from_arg_matches(&slim).expect(line);
            let whole = <Cli as clap::Parser>::try_parse_from(&a).expect(line);
            assert_eq!(format!("{slim:?}"), format!("{whole:?}"), "{line}");
        }
    }

    #[test]
    fn the_whole_tree_reads_the_rest() {
        for line in [
            "bkrun",
            "bkrun --help",
            "bkrun -h build",
            "bkrun --version",
            "bkrun --bogus build",
            "bkrun --root",
            "bkrun ls",
            "bkrun help build",
            "bkrun -- build",
            "bkrun --frontend dockerfile.v0 build",
        ] {
            assert!(command(&argv(line)).is_none(), "{line}");
        }
    }

    #[test]
    fn a_slim_parse_that_fails_fails_as_the_whole_tree_would() {
        // main falls back to the whole tree on any error, for its message; the slim parse
        // must not accept what the whole tree refuses.
        for line in [
            "bkrun build --bogus",
            "bkrun --mode nope build",
            "bkrun build --help",
        ] {
            let a = argv(line);
            if let Some(cmd) = command(&a) {
                assert!(cmd.try_get_matches_from(&a).is_err(), "{line}");
            }
            assert!(<Cli as clap::Parser>::try_parse_from(&a).is_err(), "{line}");
        }
    }
}
