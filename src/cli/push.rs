//! `bkrun push`'s flags: an OCI archive or layout directory an earlier build wrote, the references to push it to, and the digest files written after (kaniko's and buildx's names).

use std::path::PathBuf;

use clap::Args;

/// Push an image an earlier build exported, byte for byte, with no daemon.
#[derive(Debug, Args, Clone, Default)]
pub struct PushArgs {
    /// The archive (`--output type=oci,dest=FILE`) or layout directory (`type=oci,tar=false`).
    #[arg(value_name = "ARCHIVE_OR_LAYOUT")]
    pub source: PathBuf,
    /// Where to push it, e.g. registry.example.com/app:1 (one or more).
    #[arg(value_name = "REF", required = true)]
    pub references: Vec<String>,
    /// Which image of the layout's index.json, by tag or digest, when it names several.
    #[arg(long, value_name = "TAG|DIGEST")]
    pub image: Option<String>,
    /// Write the pushed digest to FILE (kaniko's --digest-file).
    #[arg(long, value_name = "FILE")]
    pub digest_file: Option<PathBuf>,
    /// Write REPOSITORY@DIGEST for each reference to FILE.
    #[arg(long, value_name = "FILE")]
    pub image_name_with_digest_file: Option<PathBuf>,
    /// Write REFERENCE@DIGEST for each reference to FILE.
    #[arg(long, value_name = "FILE")]
    pub image_name_tag_with_digest_file: Option<PathBuf>,
    /// Write the image ID (the config digest; the index digest for an index) to FILE.
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,
    /// Write what was pushed as JSON to FILE (containerimage.digest, image.name, as a build's).
    #[arg(long, value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
}

impl From<&PushArgs> for crate::request::flags::PushFlags {
    fn from(a: &PushArgs) -> Self {
        move_fields!(a.clone(), PushArgs => crate::request::flags::PushFlags {
            // What is pushed, and where.
            source, references, image,
            // The files written after.
            digest_file, image_name_with_digest_file, image_name_tag_with_digest_file, iidfile,
            metadata_file,
        })
    }
}
