//! The names and keys people type for `bkrun kube` checked by Kubernetes' rules (object names, label and annotation keys and values, tolerations), and the keys the generator keeps for itself refused, each error naming the flag and the value.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use k8s_openapi::api::core::v1::Toleration;

/// Label keys the generator sets on every object and selects the pool's pods by.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// The pod template's digest of the ConfigMaps it mounts: a changed bkrun.toml or buildkitd.toml
/// changes the template, so applying it restarts the daemons, which read their files only at start.
pub const CONFIG_ANNOTATION: &str = "bkrun/config-sha256";
/// Keys under this prefix are the generator's, now or later.
const RESERVED_PREFIX: &str = "bkrun/";

/// A DNS-1123 label: lowercase letters, digits and '-', starting and ending alphanumeric; what a
/// namespace, a Service and a StatefulSet pod's host name must be.
pub fn dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters; what most object names
/// (Secrets, ServiceAccounts, ConfigMaps) must be.
pub fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

/// The name part of a qualified key: at most 63 alphanumerics, '-', '_' and '.', starting and
/// ending alphanumeric. Also what a non-empty label value must be.
fn qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A label or annotation key: `name` or `prefix/name`, the prefix a DNS subdomain.
pub fn qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => dns_subdomain(prefix) && qualified_name_part(name),
        None => qualified_name_part(s),
    }
}

/// A label value: empty, or as the name part of a key.
pub fn label_value(s: &str) -> bool {
    s.is_empty() || qualified_name_part(s)
}

/// Which map a `k=v` list fills, for its checks and messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Label,
    Annotation,
    NodeSelector,
    /// A namespace label the NetworkPolicy admits clients from.
    NamespaceSelector,
}

impl MapKind {
    fn what(self) -> &'static str {
        match self {
            MapKind::Label => "label",
            MapKind::Annotation => "annotation",
            MapKind::NodeSelector => "node selector",
            MapKind::NamespaceSelector => "namespace label",
        }
    }
}

/// The `k=v` pairs of a repeated flag, each occurrence also a comma-separated list, as buildx's
/// Kubernetes driver takes its `labels`, `annotations` and `nodeselector` options. Keys and
/// values are checked as the API server would; keys the generator sets are refused.
pub fn key_values(
    flag: &str,
    kind: MapKind,
    values: &[String],
) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for value in values {
        for item in value.split(',') {
            let Some((k, v)) = item.split_once('=') else {
                bail!("{flag} {item:?} is not KEY=VALUE: give e.g. {flag} team=builds");
            };
            if !qualified_name(k) {
                bail!("{flag} {item:?}: {k:?} is not a valid {} key: a name of at most 63 letters, digits, '-', '_' or '.', optionally after a DNS prefix and '/', e.g. example.com/team", kind.what());
            }
            if kind != MapKind::Annotation && !label_value(v) {
                bail!("{flag} {item:?}: {v:?} is not a valid {} value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit", kind.what());
            }
            if !matches!(kind, MapKind::NodeSelector | MapKind::NamespaceSelector) {
                refuse_reserved(flag, kind, k)?;
            }
            // The policy's pairs must all match: two values for one key would admit nobody.
            if let Some(before) = out.get(k).filter(|b| *b != v) {
                if kind == MapKind::NamespaceSelector {
                    bail!("{flag} gives {k:?} two values ({before:?} and {v:?}), which no namespace has at once: keep one");
                }
            }
            out.insert(k.to_string(), v.to_string());
        }
    }
    Ok(out)
}

fn refuse_reserved(flag: &str, kind: MapKind, key: &str) -> Result<()> {
    let why = match key {
        NAME_LABEL | INSTANCE_LABEL if kind == MapKind::Label => {
            "bkrun kube sets it on every object and selects the pool's pods by it"
        }
        CONFIG_ANNOTATION => "bkrun kube sets it to the digest of the mounted configuration",
        _ if key.starts_with(RESERVED_PREFIX) => "keys under bkrun/ are bkrun kube's own",
        _ => return Ok(()),
    };
    bail!(
        "{flag}: the {} {key:?} is reserved and cannot be customized ({why}): choose another key",
        kind.what()
    )
}

/// Tolerations in buildx's notation: `key=K,operator=Exists|Equal,value=V,effect=E,
/// tolerationSeconds=N`, several separated by ';'; checked as the API server checks them.
pub fn tolerations(flag: &str, values: &[String]) -> Result<Vec<Toleration>> {
    let mut out = Vec::new();
    for value in values {
        for spec in value.split(';').filter(|s| !s.is_empty()) {
            out.push(toleration(flag, spec)?);
        }
    }
    Ok(out)
}

fn toleration(flag: &str, spec: &str) -> Result<Toleration> {
    let mut t = Toleration::default();
    for field in spec.split(',') {
        let Some((k, v)) = field.split_once('=') else {
            bail!("{flag} {spec:?}: {field:?} is not FIELD=VALUE: give e.g. {flag} key=dedicated,operator=Equal,value=builds,effect=NoSchedule");
        };
        match k {
            "key" => t.key = Some(v.to_string()),
            "operator" => t.operator = Some(v.to_string()),
            "value" => t.value = Some(v.to_string()),
            "effect" => t.effect = Some(v.to_string()),
            "tolerationSeconds" => {
                t.toleration_seconds = Some(v.parse().map_err(|_| {
                    anyhow::anyhow!("{flag} {spec:?}: tolerationSeconds {v:?} is not a whole number of seconds")
                })?)
            }
            other => bail!("{flag} {spec:?}: unknown field {other:?}: the fields are key, operator, value, effect and tolerationSeconds"),
        }
    }
    let key = t.key.as_deref().unwrap_or("");
    if !key.is_empty() && !qualified_name(key) {
        bail!("{flag} {spec:?}: key {key:?} is not a valid taint key");
    }
    match t.operator.as_deref() {
        None | Some("Equal") => {
            if key.is_empty() {
                bail!("{flag} {spec:?}: a toleration without a key must have operator=Exists (it then tolerates every taint)");
            }
            if !label_value(t.value.as_deref().unwrap_or("")) {
                bail!(
                    "{flag} {spec:?}: value {:?} is not a valid taint value",
                    t.value.as_deref().unwrap_or("")
                );
            }
        }
        Some("Exists") => {
            if t.value.as_deref().is_some_and(|v| !v.is_empty()) {
                bail!("{flag} {spec:?}: operator=Exists takes no value: drop value=…, or use operator=Equal");
            }
        }
        Some(other) => bail!("{flag} {spec:?}: operator {other:?} is neither Exists nor Equal"),
    }
    match t.effect.as_deref() {
        None | Some("") | Some("NoSchedule") | Some("PreferNoSchedule") | Some("NoExecute") => {}
        Some(other) => bail!(
            "{flag} {spec:?}: effect {other:?} is none of NoSchedule, PreferNoSchedule, NoExecute"
        ),
    }
    if t.toleration_seconds.is_some() && t.effect.as_deref() != Some("NoExecute") {
        bail!("{flag} {spec:?}: tolerationSeconds only applies with effect=NoExecute");
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(kind: MapKind, v: &[&str]) -> Result<BTreeMap<String, String>> {
        let v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        key_values("--flag", kind, &v)
    }

    #[test]
    fn names_and_keys_by_the_api_servers_rules() {
        for ok in ["a", "bkrun-builder", "b0", &"a".repeat(63)] {
            assert!(dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!dns_label(bad), "{bad}");
        }
        assert!(dns_subdomain("a.b-c.d"));
        assert!(!dns_subdomain("a..b"));
        for ok in ["team", "Team_1.x", "example.com/team", "a/b"] {
            assert!(qualified_name(ok), "{ok}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "-a",
            "a b",
            "Example.com/a",
            "a/b/c",
            &"a".repeat(64),
        ] {
            assert!(!qualified_name(bad), "{bad}");
        }
        assert!(label_value("") && label_value("v1.2_x") && !label_value("a b"));
    }

    #[test]
    fn lists_repeat_and_split_on_commas_as_buildx_does() {
        let m = kv(MapKind::Label, &["a=1,b=2", "c=", "a=3"]).unwrap();
        assert_eq!(
            m,
            BTreeMap::from([
                ("a".into(), "3".into()),
                ("b".into(), "2".into()),
                ("c".into(), "".into())
            ])
        );
        // Annotation values are free text (but a comma still separates items).
        let m = kv(MapKind::Annotation, &["note=two words=x"]).unwrap();
        assert_eq!(m["note"], "two words=x");
        let e = kv(MapKind::Label, &["novalue"]).unwrap_err().to_string();
        assert!(e.contains("--flag \"novalue\" is not KEY=VALUE"), "{e}");
        let e = kv(MapKind::Label, &["a=two words"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"two words\" is not a valid label value"),
            "{e}"
        );
        let e = kv(MapKind::NodeSelector, &["bad key=x"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"bad key\" is not a valid node selector key"),
            "{e}"
        );
    }

    #[test]
    fn reserved_keys_are_refused_by_name() {
        for (kind, key) in [
            (MapKind::Label, NAME_LABEL),
            (MapKind::Label, INSTANCE_LABEL),
            (MapKind::Annotation, CONFIG_ANNOTATION),
            (MapKind::Label, "bkrun/anything"),
            (MapKind::Annotation, "bkrun/anything"),
        ] {
            let e = kv(kind, &[&format!("{key}=x")]).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{key:?} is reserved and cannot be customized")),
                "{e}"
            );
        }
        // As annotations the selector's label keys are the user's; a node selector may use any key.
        assert!(kv(MapKind::Annotation, &[&format!("{NAME_LABEL}=x")]).is_ok());
        assert!(kv(MapKind::NodeSelector, &[&format!("{NAME_LABEL}=x")]).is_ok());
    }

    #[test]
    fn tolerations_in_buildxs_notation() {
        let v = vec![
            "key=dedicated,operator=Equal,value=builds,effect=NoSchedule;operator=Exists".to_string(),
            "key=node.kubernetes.io/unreachable,operator=Exists,effect=NoExecute,tolerationSeconds=30"
                .to_string(),
        ];
        let t = tolerations("--tolerations", &v).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].key.as_deref(), Some("dedicated"));
        assert_eq!(t[0].effect.as_deref(), Some("NoSchedule"));
        assert_eq!(t[1].operator.as_deref(), Some("Exists"));
        assert_eq!(t[2].toleration_seconds, Some(30));
        for (bad, says) in [
            ("key=a,color=red", "unknown field \"color\""),
            ("key=a,operator=Maybe", "neither Exists nor Equal"),
            ("key=a,effect=Never", "none of NoSchedule"),
            ("key=a,operator=Exists,value=x", "takes no value"),
            ("value=x", "without a key must have operator=Exists"),
            (
                "key=a,tolerationSeconds=5",
                "only applies with effect=NoExecute",
            ),
            (
                "key=a,effect=NoExecute,tolerationSeconds=soon",
                "not a whole number",
            ),
            ("key", "is not FIELD=VALUE"),
        ] {
            let e = tolerations("--tolerations", &[bad.to_string()])
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("--tolerations"), "{e}");
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
