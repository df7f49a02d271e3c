//! A pool's objects as one multi-document YAML stream, the form `kubectl apply -f -` reads, written with serde_norway from the API types' own serialization (apiVersion and kind included).

use anyhow::{Context, Result};
use serde::Serialize;

use super::{Pool, Workload};

/// The documents of `pool`, each after a `---` line, headed by a comment saying what made them.
pub fn render(pool: &Pool) -> Result<String> {
    let mut out = format!(
        "# A pool of bkrun daemons: the output of `bkrun kube`, bkrun {}.\n",
        crate::version::short()
    );
    for m in &pool.config_maps {
        document(&mut out, m)?;
    }
    document(&mut out, &pool.service)?;
    if let Some(p) = &pool.network_policy {
        document(&mut out, p)?;
    }
    match &pool.workload {
        Workload::Deployment(d) => document(&mut out, d)?,
        Workload::StatefulSet(s) => document(&mut out, s)?,
    }
    Ok(out)
}

fn document(out: &mut String, object: &impl Serialize) -> Result<()> {
    out.push_str("---\n");
    out.push_str(&serde_norway::to_string(object).context("cannot write the objects as YAML")?);
    Ok(())
}
