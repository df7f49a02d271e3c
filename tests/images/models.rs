//! The documents in images/ as typed values: Kubernetes kinds through k8s-openapi, and our own strict models of the fields we use of Tekton's Task, cert-manager's Issuer and Certificate, a Buildkite pipeline and a GitLab CI job.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    EnvVar, Pod, PodSpec, SecurityContext, Service, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Parses `doc` as `T`, refusing any field `T` does not know. k8s-openapi's types skip unknown
/// fields as the API server's lenient decoding does, so strictness comes from the round trip:
/// every field of the document must come back when the value is written out again.
pub fn strict<T: DeserializeOwned + Serialize>(doc: &Value, what: &str) -> Result<T, String> {
    let value: T = serde_json::from_value(doc.clone()).map_err(|e| format!("{what}: {e}"))?;
    let back = serde_json::to_value(&value).unwrap();
    let mut lost = Vec::new();
    lost_fields(doc, &back, "", &mut lost);
    if lost.is_empty() {
        Ok(value)
    } else {
        Err(format!(
            "{what}: fields its type does not have (misspelt, or in the wrong place): {}",
            lost.join(", ")
        ))
    }
}

fn lost_fields(orig: &Value, back: &Value, at: &str, out: &mut Vec<String>) {
    match (orig, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (k, v) in o {
                let here = format!("{at}.{k}");
                match b.get(k) {
                    Some(bv) => lost_fields(v, bv, &here, out),
                    None => out.push(here),
                }
            }
        }
        (Value::Array(o), Value::Array(b)) => {
            if o.len() != b.len() {
                out.push(format!("{at} (items)"));
            }
            for (i, (ov, bv)) in o.iter().zip(b).enumerate() {
                lost_fields(ov, bv, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Every document of a YAML file, as JSON values.
pub fn documents(text: &str) -> Result<Vec<Value>, String> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).map_err(|e| e.to_string()))
        .filter(|d| !matches!(d, Ok(Value::Null)))
        .collect()
}

/// One document of images/, parsed by its kind.
#[allow(clippy::large_enum_variant)]
pub enum Doc {
    Pod(Pod),
    Job(Job),
    Deployment(Deployment),
    Service(Service),
    Task(Task),
    Issuer(Issuer),
    Certificate(Certificate),
    Buildkite(BuildkitePipeline),
    Gitlab(BTreeMap<String, GitlabJob>),
}

/// Parses one document of `file` strictly, choosing the type from apiVersion and kind (or, for
/// the CI files, which have none, from the file's name).
pub fn parse(file: &str, doc: &Value) -> Result<Doc, String> {
    let what = file.to_string();
    if file.starts_with("buildkite") {
        return strict(doc, &what).map(Doc::Buildkite);
    }
    if file.starts_with("gitlab") {
        return strict(doc, &what).map(Doc::Gitlab);
    }
    let api = doc["apiVersion"].as_str().unwrap_or("");
    let kind = doc["kind"].as_str().unwrap_or("");
    let what = format!("{file} ({kind})");
    match (api, kind) {
        ("v1", "Pod") => strict(doc, &what).map(Doc::Pod),
        ("batch/v1", "Job") => strict(doc, &what).map(Doc::Job),
        ("apps/v1", "Deployment") => strict(doc, &what).map(Doc::Deployment),
        ("v1", "Service") => strict(doc, &what).map(Doc::Service),
        ("tekton.dev/v1", "Task") => strict(doc, &what).map(Doc::Task),
        ("cert-manager.io/v1", "Issuer") => strict(doc, &what).map(Doc::Issuer),
        ("cert-manager.io/v1", "Certificate") => strict(doc, &what).map(Doc::Certificate),
        _ => Err(format!(
            "{file}: no type for apiVersion {api:?} kind {kind:?}"
        )),
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

// Tekton Pipelines' v1 Task (tektoncd/pipeline pkg/apis/pipeline/v1): the fields images/ uses.

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Task {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: TaskSpec,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TaskSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<ParamSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workspaces: Vec<WorkspaceDeclaration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<TaskResult>,
    pub steps: Vec<Step>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParamSpec {
    pub name: String,
    /// "string" (the default) or "array".
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A string, or a list of strings for an array parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkspaceDeclaration {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub optional: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TaskResult {
    pub name: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Step {
    pub name: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
}

// cert-manager's v1 Issuer and Certificate (cert-manager.io/v1): the fields images/ uses.

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Issuer {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: IssuerSpec,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IssuerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_signed: Option<SelfSignedIssuer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaIssuer>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct SelfSignedIssuer {}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CaIssuer {
    pub secret_name: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Certificate {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: CertificateSpec,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertificateSpec {
    pub secret_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    #[serde(rename = "isCA", default, skip_serializing_if = "is_false")]
    pub is_ca: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usages: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PrivateKey>,
    pub issuer_ref: IssuerRef,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct PrivateKey {
    pub algorithm: String,
    pub size: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct IssuerRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

// A Buildkite pipeline's command steps with the Agent Stack for Kubernetes plugin.

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct BuildkitePipeline {
    pub steps: Vec<BuildkiteStep>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct BuildkiteStep {
    pub label: String,
    pub command: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agents: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    pub plugins: Vec<BuildkitePlugin>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct BuildkitePlugin {
    pub kubernetes: KubernetesPlugin,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesPlugin {
    pub pod_spec: PodSpec,
}

// A GitLab CI job (.gitlab-ci.yml keywords): the ones images/ uses.

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct GitlabJob {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    pub image: GitlabImage,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub before_script: Vec<String>,
    pub script: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<GitlabArtifacts>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct GitlabImage {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct GitlabArtifacts {
    pub paths: Vec<String>,
}
