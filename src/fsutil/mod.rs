//! BuildKit's fsutil file-transfer protocol (the DiffCopy stream): walking, filtering, sending and receiving trees.
//!
//! The daemon pulls the build context from us (FileSync.DiffCopy, we send) and pushes exported
//! files to us (FileSend.DiffCopy, we receive). This module holds the transport-free logic; the
//! gRPC layer only has to shuttle [`Packet`]s between a stream and the channels used here.

pub mod filter;
mod gore;
pub mod mode;
pub mod pattern;
pub mod receive;
#[cfg(test)]
mod receive_tests;
pub mod send;
pub(crate) mod sys;
#[cfg(test)]
mod transfer_tests;
pub mod walk;

use std::collections::BTreeMap;
use std::path::PathBuf;

/// One file's metadata, field for field the `fsutil.types.Stat` message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatEntry {
    /// Relative path with `/` separators.
    pub path: String,
    /// Go `os.FileMode` bits (see [`mode`]), not a Unix `st_mode`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: i64,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mod_time: i64,
    /// Symlink target, or for a hardlink the path of the first entry sharing the inode.
    pub linkname: String,
    pub devmajor: i64,
    pub devminor: i64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl StatEntry {
    pub fn is_dir(&self) -> bool {
        self.mode & mode::MODE_DIR != 0
    }

    pub fn is_symlink(&self) -> bool {
        self.mode & mode::MODE_SYMLINK != 0
    }
}

/// The `fsutil.types.Packet` message as a Rust enum; the packet id lives inside the variants that use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// `None` is the empty STAT that ends the list.
    Stat(Option<StatEntry>),
    Req {
        id: u32,
    },
    /// Empty `data` ends the file with that id.
    Data {
        id: u32,
        data: bytes::Bytes,
    },
    Fin,
    Err(String),
}

/// Errors of walking, filtering and both ends of the transfer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pattern(#[from] pattern::PatternError),
    #[error("file name is not valid UTF-8: {}", .0.display())]
    NonUtf8(PathBuf),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("error from peer: {0}")]
    Remote(String),
    #[error("transfer stream closed unexpectedly")]
    Closed,
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

pub use receive::{receive, OwnerPolicy, ReceiveOptions};
pub use send::{send, SendOptions, DEFAULT_CHUNK_SIZE};
pub use walk::{walk, walk_collect, Source, WalkOptions};

pub type Result<T, E = Error> = std::result::Result<T, E>;
