//! bkrun: a daemonless BuildKit runner; the library behind the `bkrun` binary, also used by the tests.

/// `eprintln!` that never panics: when stderr is gone (a `| head` that exited, a closed CI log
/// pipe), bkrun must still stop the daemon and remove what it made. The line is made first and
/// written at once: stderr is unbuffered, so a line formatted straight into it goes out in as
/// many writes as it has pieces (eight for the start-up line), and another process writing to
/// the same CI log can land between them.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut line = format!($($arg)*);
        line.push('\n');
        let _ = std::io::stderr().write_all(line.as_bytes());
    }};
}

/// `eprint!` that never panics, written at once as `say!` is.
#[macro_export]
macro_rules! say_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = std::io::stderr().write_all(format!($($arg)*).as_bytes());
    }};
}

/// `println!` that never panics (a reader that went away is not bkrun's failure).
#[macro_export]
macro_rules! say_out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub mod cachemount;
pub mod cli;
pub mod client;
pub mod config;
pub mod creds;
pub mod daemon;
pub mod fsutil;
pub mod gocompat;
pub mod host;
pub mod kube;
pub mod ocilayout;
pub mod outputs;
pub mod pool;
pub mod progress;
pub mod proto;
pub mod registry;
pub mod request;
pub mod run;
pub mod safefs;
pub mod session;
pub mod summary;
pub mod timeline;
pub mod version;
