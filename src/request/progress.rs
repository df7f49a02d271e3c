//! `--progress` and the environment buildctl's views honour → the progress view and its look, settled before a daemon starts.

use anyhow::{anyhow, bail, Result};

use crate::progress::{Mode, Options, DEFAULT_TAIL_ROWS};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressSpec {
    /// Never `Auto`: plain, tty, rawjson or quiet.
    pub mode: Mode,
    /// Colour finished steps in the tty view (off with NO_COLOR).
    pub color: bool,
    /// Output rows under running steps in the tty view (BUILDKIT_TTY_LOG_LINES).
    pub tail_rows: usize,
    /// Cut plain step names at 72 bytes (PROGRESS_NO_TRUNC=0).
    pub truncate_names: bool,
}

impl ProgressSpec {
    /// The renderer's options for this look; secrets, clock, size and trace are the caller's.
    pub fn options(&self) -> Options {
        Options {
            color: self.color,
            tail_rows: self.tail_rows,
            truncate_names: self.truncate_names,
            ..Options::default()
        }
    }
}

/// Settles `--progress` (`flag`) as buildctl does: BUILDKIT_PROGRESS picks the mode when the flag
/// says auto; auto is then tty on a terminal that is not TERM=dumb, else plain. `env` looks
/// variables up; `stderr_tty` says whether standard error is a terminal.
pub fn resolve(
    flag: &str,
    env: &dyn Fn(&str) -> Option<String>,
    stderr_tty: bool,
) -> Result<ProgressSpec> {
    let mut mode: Mode = flag.parse().map_err(|_| {
        anyhow!("--progress={flag} is not a progress mode: use auto, plain, tty, rawjson or quiet")
    })?;
    if mode == Mode::Auto {
        if let Some(m) = env("BUILDKIT_PROGRESS").and_then(|v| v.parse::<Mode>().ok()) {
            mode = m;
        }
    }
    let mode = mode.resolve(stderr_tty, env("TERM").as_deref());
    if mode == Mode::Tty && !stderr_tty {
        bail!("--progress=tty needs standard error to be a terminal");
    }
    Ok(ProgressSpec {
        mode,
        color: env("NO_COLOR").is_none(),
        tail_rows: env("BUILDKIT_TTY_LOG_LINES")
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(DEFAULT_TAIL_ROWS),
        truncate_names: env("PROGRESS_NO_TRUNC").is_some_and(|v| v == "0"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            vars.iter()
                .find(|(n, v)| *n == k && !v.is_empty())
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn auto_is_tty_on_a_terminal_unless_term_is_dumb() {
        let none = env_of(&[]);
        assert_eq!(resolve("auto", &none, true).unwrap().mode, Mode::Tty);
        assert_eq!(resolve("auto", &none, false).unwrap().mode, Mode::Plain);
        let dumb = env_of(&[("TERM", "dumb")]);
        assert_eq!(resolve("auto", &dumb, true).unwrap().mode, Mode::Plain);
        assert_eq!(resolve("", &none, false).unwrap().mode, Mode::Plain);
    }

    #[test]
    fn buildkit_progress_fills_in_for_auto_only() {
        let env = env_of(&[("BUILDKIT_PROGRESS", "rawjson")]);
        assert_eq!(resolve("auto", &env, true).unwrap().mode, Mode::RawJson);
        assert_eq!(resolve("quiet", &env, true).unwrap().mode, Mode::Quiet);
        let bad = env_of(&[("BUILDKIT_PROGRESS", "fancy")]);
        assert_eq!(resolve("auto", &bad, false).unwrap().mode, Mode::Plain);
    }

    #[test]
    fn tty_needs_a_terminal_and_bad_modes_are_named() {
        let none = env_of(&[]);
        assert_eq!(
            resolve("tty", &none, false).unwrap_err().to_string(),
            "--progress=tty needs standard error to be a terminal"
        );
        let env = env_of(&[("BUILDKIT_PROGRESS", "tty")]);
        assert!(resolve("auto", &env, false).is_err());
        assert!(resolve("fancy", &none, true)
            .unwrap_err()
            .to_string()
            .contains("auto, plain"));
    }

    #[test]
    fn the_look_follows_buildctls_variables() {
        let none = env_of(&[]);
        let p = resolve("plain", &none, false).unwrap();
        assert!(p.color && !p.truncate_names);
        assert_eq!(p.tail_rows, DEFAULT_TAIL_ROWS);
        let env = env_of(&[
            ("NO_COLOR", "1"),
            ("BUILDKIT_TTY_LOG_LINES", "12"),
            ("PROGRESS_NO_TRUNC", "0"),
        ]);
        let p = resolve("plain", &env, false).unwrap();
        assert!(!p.color && p.truncate_names);
        assert_eq!(p.tail_rows, 12);
        let o = p.options();
        assert!(!o.color && o.truncate_names && o.tail_rows == 12);
        let env = env_of(&[("BUILDKIT_TTY_LOG_LINES", "0"), ("PROGRESS_NO_TRUNC", "1")]);
        let p = resolve("plain", &env, false).unwrap();
        assert_eq!(p.tail_rows, DEFAULT_TAIL_ROWS);
        assert!(!p.truncate_names);
    }
}
