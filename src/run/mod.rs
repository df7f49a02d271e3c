//! What a bkrun command does, end to end: answer it from the command line alone (meta), or settle the whole invocation once (settle) and run its life cycle (lifecycle: start or connect, work, finish); then no temporary output outlives bkrun, and the exit status is the work's.

use anyhow::Result;

use crate::cli::{Cli, LogFormat};
use crate::host::RealHost;

mod landed;
mod lifecycle;
mod meta;
mod perform;
mod push;
mod report;
mod settle;
mod target;

/// Runs bkrun and returns its exit status.
pub async fn run(cli: Cli) -> i32 {
    let format = cli.global.log_format;
    let code = match meta::answer(&cli) {
        Some(answered) => exit_code(answered.map(|()| 0), format),
        None => exit_code(settle_and_run(&cli).await, format),
    };
    // However the work ended (success, error, failed build, signal), the daemon is gone by
    // now and no temporary output may outlive bkrun.
    for (path, e) in crate::outputs::temps::sweep() {
        crate::say!(
            "bkrun: cannot remove the temporary output {}: {e}: remove it by hand",
            path.display()
        );
    }
    code
}

async fn settle_and_run(cli: &Cli) -> Result<i32> {
    let settled = settle::settle(cli, &RealHost)?;
    crate::timeline::mark("settled");
    match settled {
        settle::Settled::Answered(code) => Ok(code),
        settle::Settled::Run(invocation) => lifecycle::run(*invocation).await,
        // bkrun's own registry client, no daemon: nothing to supervise.
        settle::Settled::Push(job) => push::run(*job).await,
    }
}

/// The exit status for a result; an error is printed first.
fn exit_code(r: Result<i32>, format: LogFormat) -> i32 {
    r.unwrap_or_else(|e| {
        print_error(&e, format);
        1
    })
}

/// One line that says what failed and what to do, then the detail, indented; with
/// `--log-format json`, one object a line as buildctl's logrus writes them.
pub fn print_error(e: &anyhow::Error, format: LogFormat) {
    // Secrets stay out of error lines as they stay out of the progress (a log tail can hold one).
    let masked = crate::progress::mask::masked_error_line;
    if format == LogFormat::Json {
        let msg = e
            .chain()
            .map(|c| masked(&c.to_string()))
            .collect::<Vec<_>>()
            .join("\n");
        let line = serde_json::json!({
            "level": "error",
            "msg": msg,
            // logrus's JSON time: RFC 3339 to the second.
            "time": crate::gocompat::times::rfc3339_nano(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64 * 1_000_000_000)
            ),
        });
        crate::say!("{line}");
        return;
    }
    crate::say!("bkrun: {}", masked(&e.to_string()));
    for cause in e.chain().skip(1) {
        for line in cause.to_string().lines() {
            crate::say!("  {}", masked(line));
        }
    }
}

/// Writes a report to stdout; a reader that went away (`| head`) is not an error.
fn write_stdout(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// A `--debug` line.
fn log(debug: bool, msg: impl FnOnce() -> String) {
    if debug {
        crate::say!("bkrun: {}", msg());
    }
}
