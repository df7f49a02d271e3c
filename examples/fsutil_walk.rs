//! Writes the fsutil tests' awkward tree (every kind of entry, odd names, modes, times, xattrs) into DIR and prints bkrun's walk of it, one entry a line, to diff by hand against what Go's tonistiigi/fsutil walker sends for the same tree.
//!
//! `cargo run --example fsutil_walk -- DIR` (as root for the device node).

use std::path::Path;

use bkrun::fsutil::walk::{testtree, walk_collect, WalkOptions};

fn main() {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: fsutil_walk DIR (a directory to create the tree in)");
        std::process::exit(2);
    };
    let root = Path::new(&dir);
    if let Err(e) = std::fs::create_dir_all(root) {
        eprintln!("fsutil_walk: cannot create {}: {e}", root.display());
        std::process::exit(1);
    }
    testtree::build(root);
    let entries = match walk_collect(root, &WalkOptions::default()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("fsutil_walk: cannot walk {}: {e}", root.display());
            std::process::exit(1);
        }
    };
    for s in entries {
        println!(
            "{:?} {:o} {} {} {} {} {:?} {} {} {:?}",
            s.path,
            s.mode,
            s.uid,
            s.gid,
            s.size,
            s.mod_time,
            s.linkname,
            s.devmajor,
            s.devminor,
            s.xattrs
        );
    }
}
