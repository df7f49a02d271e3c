//! The destination of a receive as directory descriptors: its root, the directories the transfer made or merged into (with the inode each is), and the chain of open directories to the one last used, each component checked again on reuse.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use super::protocol;
use crate::fsutil::sys::{self, FileId};
use crate::fsutil::{Error, Result};

/// One open directory on the way down from the root.
pub(super) struct Level {
    name: String,
    fd: OwnedFd,
    id: FileId,
}

/// The destination as descriptors: the root, the directories of this transfer by path (with
/// the inode each one is), and the chain of open directories to the one last used, which
/// walker order keeps mostly right.
pub(super) struct Tree {
    pub dest: PathBuf,
    pub root: OwnedFd,
    pub known: HashMap<String, FileId>,
    pub chain: Vec<Level>,
}

impl Tree {
    pub fn shown(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.dest.clone()
        } else {
            self.dest.join(rel)
        }
    }

    /// The directory `path` (relative, "" for the root), which must be one this transfer made
    /// or merged into. Every component kept open from before is looked up again in its parent
    /// and must still be the same inode: one renamed away (even out of the tree) and replaced,
    /// by a symlink or anything else, fails the transfer instead of receiving its writes.
    pub fn dir(&mut self, path: &str) -> Result<BorrowedFd<'_>> {
        let comps: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path.split('/').collect()
        };
        let keep = self
            .chain
            .iter()
            .zip(&comps)
            .take_while(|(l, c)| l.name == **c)
            .count();
        self.chain.truncate(keep);
        for i in 0..keep {
            let parent = match i {
                0 => self.root.as_fd(),
                _ => self.chain[i - 1].fd.as_fd(),
            };
            sys::check_at(parent, &self.chain[i].name, self.chain[i].id)
                .map_err(|e| Error::io("check", self.shown(&comps[..=i].join("/")), e))?;
        }
        for i in keep..comps.len() {
            let prefix = comps[..=i].join("/");
            let Some(&want) = self.known.get(&prefix) else {
                return protocol(format!("{prefix:?} is not a directory of this transfer"));
            };
            let parent = match i {
                0 => self.root.as_fd(),
                _ => self.chain[i - 1].fd.as_fd(),
            };
            let (fd, id) = sys::open_dir_path(parent, comps[i])
                .map_err(|e| Error::io("open", self.shown(&prefix), e))?;
            if id != want {
                return Err(Error::io("open", self.shown(&prefix), sys::replaced()));
            }
            self.chain.push(Level {
                name: comps[i].to_string(),
                fd,
                id,
            });
        }
        Ok(self
            .chain
            .last()
            .map_or(self.root.as_fd(), |l| l.fd.as_fd()))
    }

    /// Like [`Tree::dir`], as a descriptor of its own (for a second directory at once).
    pub fn dir_owned(&mut self, path: &str) -> Result<OwnedFd> {
        let shown = self.shown(path);
        self.dir(path)?
            .try_clone_to_owned()
            .map_err(|e| Error::io("dup", shown, e))
    }
}
