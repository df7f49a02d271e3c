//! OCI image-layout directories named on the command line: `--oci-layout ID=DIR` inputs the frontend reads, and the `--output type=oci,tar=false,dest=DIR` directory the exporter fills.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use base64::Engine as _;
use serde_json::Value;

use crate::ocilayout::index::Name;
use crate::ocilayout::{Index, LocalStore};

/// The exporter-response keys with the exported image's descriptor (base64 JSON) and its names.
const RESPONSE_DESCRIPTOR: &str = "containerimage.descriptor";
const RESPONSE_NAMES: &str = "image.name";
/// The daemon writes an OCI layout output into the session store with this id.
const EXPORT_STORE_ID: &str = "export";
/// `--oci-layout` stores are asked for as this prefix plus their id.
const INPUT_STORE_PREFIX: &str = "oci:";

#[derive(Default)]
pub struct Layouts {
    stores: HashMap<String, Arc<LocalStore>>,
    export: Option<PathBuf>,
}

impl Layouts {
    /// Opens the input layouts and creates the output directory, if any.
    pub fn prepare(inputs: &BTreeMap<String, PathBuf>, output: Option<&Path>) -> Result<Layouts> {
        let mut l = Layouts::default();
        for (id, dir) in inputs {
            l.stores.insert(
                format!("{INPUT_STORE_PREFIX}{id}"),
                Arc::new(LocalStore::new(dir)),
            );
        }
        if let Some(asked) = output {
            // Walked once by descriptor (no link another user planted is followed), and used
            // by the path as walked from then on.
            let dir = crate::outputs::tree::layout_dir(asked).with_context(|| {
                format!("cannot use the OCI layout directory {}", asked.display())
            })?;
            l.stores
                .insert(EXPORT_STORE_ID.to_string(), Arc::new(LocalStore::new(&dir)));
            l.export = Some(dir);
        }
        Ok(l)
    }

    pub fn stores(&self) -> impl Iterator<Item = (&String, &Arc<LocalStore>)> {
        self.stores.iter()
    }

    /// After a successful build: the exported image goes into the output's index.json under
    /// its names (or the tag `latest` when it has none), as buildctl records it.
    pub fn finish(&self, response: &HashMap<String, String>) -> Result<()> {
        let Some(dir) = &self.export else {
            return Ok(());
        };
        let encoded = response.get(RESPONSE_DESCRIPTOR).with_context(|| {
            format!(
                "the daemon did not say which image it wrote to {}",
                dir.display()
            )
        })?;
        let descriptor: Value = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .context("the daemon's image descriptor is not base64 JSON")?;
        let names: Vec<Name> = match response.get(RESPONSE_NAMES) {
            Some(n) if !n.is_empty() => n.split(',').map(|n| Name::Image(n.into())).collect(),
            _ => vec![Name::Tag("latest".into())],
        };
        Index::new(dir).put(&descriptor, &names).with_context(|| {
            format!(
                "the image was written to {} but its index.json could not be updated",
                dir.display()
            )
        })
    }

    /// Removes unfinished writes; committed blobs stay.
    pub fn close(&self) {
        for s in self.stores.values() {
            s.close();
        }
    }
}
