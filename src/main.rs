//! The `bkrun` binary: picks the command line grammar from argv[0] and runs on a tokio runtime.

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches};

use bkrun::cli::{daemonless_sh_argv, Cli};

fn main() {
    one_malloc_arena();
    let args: Vec<String> = std::env::args().collect();
    // bkrun run again as the daemon's namespace init: first, while no thread exists yet.
    if args.get(1).map(String::as_str) == Some(bkrun::daemon::nsinit::ARG) {
        bkrun::daemon::nsinit::main(&args[2..]);
    }
    // bkrun run inside a build's container as the cache mounts' seed or save step.
    if args.get(1).map(String::as_str) == Some(bkrun::cachemount::pack::ARG) {
        bkrun::cachemount::pack::main(&args[2..]);
    }
    bkrun::timeline::init();
    let invoked_as = args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .unwrap_or_default();
    // Installed as buildctl-daemonless.sh (a symlink), every argument goes to the build client.
    let as_script = invoked_as == "buildctl-daemonless.sh";
    // As kaniko's `executor` (a symlink at /kaniko/executor), the arguments are kaniko's flags.
    let as_kaniko = invoked_as == "executor";
    let argv = if as_script {
        daemonless_sh_argv(&args[1..])
    } else if as_kaniko {
        let mut a = vec!["bkrun".to_string(), "kaniko".to_string()];
        a.extend(args[1..].iter().cloned());
        a
    } else {
        args
    };
    // While the command line is read: the namespace probe, on the other core, when its answer
    // may pick the mode. A rootless mode asked for runs it only if its daemon's start fails
    // (Plan::start_proves_namespaces), or once the daemon is spawned.
    let env_mode = std::env::var("BKRUN_MODE").ok();
    if !bkrun::cli::asks_rootless(&argv, env_mode.as_deref()) {
        bkrun::host::start_namespace_probe();
    }
    // The invoked subcommand alone when the command line names it plainly; on any error, the
    // whole tree parses again, for the message, the suggestions and the help it has always had.
    let slim = bkrun::cli::slim::command(&argv).and_then(|cmd| {
        cmd.version(bkrun::version::short())
            .try_get_matches_from(&argv)
            .ok()
    });
    let whole = || {
        let mut cmd = Cli::command().version(bkrun::version::short());
        if argv.iter().any(|a| a == "--version") {
            // Only then is buildkitd asked for its version.
            cmd = cmd.long_version(bkrun::version::long());
        }
        cmd.try_get_matches_from(&argv)
    };
    let matches = match slim.map_or_else(whole, Ok) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
                // buildctl (and so the script) and kaniko exit 1 on a usage error; clap's own is 2.
                _ if as_script || as_kaniko => 1,
                _ => e.exit_code(),
            };
            std::process::exit(code);
        }
    };
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    bkrun::timeline::mark("parsed");
    cli.global.as_daemonless_sh = as_script;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime");
    bkrun::timeline::mark("runtime");
    // The top-level future runs on this (main) thread, which is what lets spawned
    // daemons get a parent-death signal that only fires when bkrun itself dies.
    let code = rt.block_on(bkrun::run::run(cli));
    // Dropped, not shut down in the background: a blocking task may still be running a child
    // (`buildkitd --version` for the version cache when the run failed early), and the drop
    // waits for it, so no process of the run outlives bkrun.
    drop(rt);
    bkrun::timeline::report();
    std::process::exit(code);
}

/// glibc gives each thread that allocates an arena of its own, and memory freed by another thread
/// goes back to the arena it came from and stays mapped there: file chunks are read on a blocking
/// thread and freed on a tokio worker. bkrun's threads seldom allocate at once, so one arena costs
/// no measurable time and lowers the peak RSS of a large transfer (BENCHMARKS.md has the figures).
/// MALLOC_ARENA_MAX, when set, wins. musl (the static build) has no arenas. The environment is
/// read here directly, not through host/: this runs before the runtime and any thread exist,
/// which is the only time mallopt may be called.
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; no thread has started yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
