//! The commands answered from the command line alone, with no settings, host facts or daemon: shell completions, the man page, and `bkrun kube`'s objects.

use anyhow::Result;
use clap::CommandFactory;

use super::write_stdout;
use crate::cli::{Cli, Command, GlobalArgs, KubeArgs};

/// The answer to `command` when it is one of these: its printout is written and its result
/// returned; None for every other command.
pub(super) fn answer(cli: &Cli) -> Option<Result<()>> {
    match &cli.command {
        Command::Completion { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "bkrun", &mut out);
            write_stdout(&String::from_utf8_lossy(&out));
            Some(Ok(()))
        }
        Command::Man => {
            let mut out = Vec::new();
            let page = clap_mangen::Man::new(Cli::command().version(crate::version::short()));
            Some(match page.render(&mut out) {
                Ok(()) => {
                    write_stdout(&String::from_utf8_lossy(&out));
                    Ok(())
                }
                Err(e) => Err(anyhow::anyhow!("cannot render the man page: {e}")),
            })
        }
        // Prints objects for a cluster: nothing of this machine's is asked.
        Command::Kube(k) => Some(kube(k, &cli.global)),
        _ => None,
    }
}

/// `bkrun kube`: the objects on stdout, and on stderr where clients connect and what the server
/// certificate must name.
fn kube(args: &KubeArgs, global: &GlobalArgs) -> Result<()> {
    let options = crate::kube::Options::from_args(&args.into(), &global.into())?;
    let text = crate::kube::yaml::render(&crate::kube::pool(&options))?;
    write_stdout(&text);
    let addrs = crate::kube::client_addresses(&options);
    let hosts: Vec<&str> = addrs
        .iter()
        .filter_map(|a| a.strip_prefix("tcp://")?.rsplit_once(':').map(|(h, _)| h))
        .collect();
    // A large StatefulSet's names follow one pattern: the first and the last say it.
    let span = |v: &[&str]| match v {
        [first, .., last] if v.len() > 3 => format!("{first} … {last}"),
        _ => v.join(", "),
    };
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    if addrs.is_empty() {
        // A StatefulSet of no replicas: nothing to connect to yet.
        return Ok(());
    }
    match &options.tls_secret {
        Some(secret) => crate::say!(
            "bkrun: clients connect to {} with --tlsdir holding a client certificate signed by the CA (ca.crt) of Secret {secret}, whose tls.crt must name {} (or the name clients give as --tlsservername)",
            span(&addrs),
            span(&hosts)
        ),
        None => crate::say!(
            "bkrun: clients connect to {} with --insecure-plaintext: any pod that reaches them can run builds",
            span(&addrs)
        ),
    }
    Ok(())
}
