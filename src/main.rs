//! The `bkrun` binary: picks the command line grammar from argv[0] and runs on a tokio runtime.

use clap::Parser;

use bkrun::cli::{daemonless_sh_argv, Cli};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let invoked_as = args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .unwrap_or_default();
    // Installed as buildctl-daemonless.sh (a symlink), every argument goes to the build client.
    let as_script = invoked_as == "buildctl-daemonless.sh";
    let argv = if as_script {
        daemonless_sh_argv(&args[1..])
    } else {
        args
    };
    let mut cli = Cli::parse_from(argv);
    cli.global.as_daemonless_sh = as_script;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime");
    // The top-level future runs on this (main) thread, which is what lets spawned
    // daemons get a parent-death signal that only fires when bkrun itself dies.
    let code = rt.block_on(bkrun::run::run(cli));
    drop(rt);
    std::process::exit(code);
}
