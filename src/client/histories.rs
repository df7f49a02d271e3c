//! `prune-histories`: deletes every build-history record that is not pinned, printed as buildctl v0.32.2's `prune-histories` prints it (its table, or a `--format` template per record).
//!
//! buildctl lists the records with EarlyExit (those there are, then the stream ends), deletes
//! each unpinned one and prints it once deleted; a failed deletion is remembered and reported
//! at the end, and the rest go on. The table is flushed after every row, so the header is
//! aligned with the first row only and each later row on its own, which is kept here.

use std::io::Write;

use anyhow::{bail, Result};
use prost_types::Timestamp;
use tonic::transport::Channel;

use super::errors::failed;
use crate::gocompat::tabwriter::{align, TABS};
use crate::gocompat::template::{Field, Template, Value};
use crate::gocompat::times::rfc3339_local;
use crate::proto::google::rpc::Status;
use crate::proto::moby::buildkit::v1::control_client::ControlClient;
use crate::proto::moby::buildkit::v1::{
    BuildHistoryEvent, BuildHistoryEventType, BuildHistoryRecord, BuildHistoryRequest,
    BuildResultInfo, Descriptor, Exporter, UpdateBuildHistoryRequest,
};

const HEADER: &str = "TYPE\tREF\tCREATED\tCOMPLETED\tGENERATION\n";

/// Lists, deletes and prints as buildctl does; `format` was checked by [`parse_format`].
pub async fn prune(
    control: &mut ControlClient<Channel>,
    format: Option<&str>,
    out: &mut impl Write,
) -> Result<()> {
    let template = format.map(Template::parse).transpose()?;
    let mut stream = control
        .listen_build_history(BuildHistoryRequest {
            early_exit: true,
            ..Default::default()
        })
        .await
        .map_err(failed("failed to list build histories"))?
        .into_inner();
    let mut header = Some(HEADER);
    let mut errors = Vec::new();
    while let Some(ev) = stream
        .message()
        .await
        .map_err(failed("listing build histories stopped"))?
    {
        let Some(r) = ev.record.as_ref().filter(|r| !r.pinned) else {
            continue;
        };
        let deleted = control
            .update_build_history(UpdateBuildHistoryRequest {
                r#ref: r.r#ref.clone(),
                delete: true,
            })
            .await;
        if let Err(status) = deleted {
            errors.push(format!(
                "failed to delete build history {}: {}",
                r.r#ref,
                status.message()
            ));
            continue;
        }
        let text = match &template {
            Some(t) => t.execute(&event_value(&ev))? + "\n",
            None => align(
                TABS,
                &format!("{}{}", header.take().unwrap_or(""), row(&ev)),
            ),
        };
        out.write_all(text.as_bytes())?;
        out.flush()?;
    }
    if let (None, Some(h)) = (&template, header) {
        out.write_all(align(TABS, h).as_bytes())?;
    }
    out.flush()?;
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(())
}

/// A table row: type, ref, created and completed (local time, empty when unset), generation.
fn row(ev: &BuildHistoryEvent) -> String {
    let r = ev.record.clone().unwrap_or_default();
    let time = |t: &Option<Timestamp>| t.as_ref().map(rfc3339_local).unwrap_or_default();
    format!(
        "{}\t{}\t{}\t{}\t{}\n",
        type_name(ev.r#type),
        r.r#ref,
        time(&r.created_at),
        time(&r.completed_at),
        r.generation
    )
}

/// The event type as Go's generated `String()` names it (the number when unknown).
fn type_name(t: i32) -> String {
    BuildHistoryEventType::try_from(t)
        .map(|t| t.as_str_name().to_string())
        .unwrap_or_else(|_| t.to_string())
}

/// Parses a `--format` value and checks its field paths against the event's Go struct, so a
/// template that cannot run is refused before anything is deleted (buildctl finds out after
/// deleting the first record).
pub fn parse_format(format: &str) -> Result<String> {
    // One message, not a context chain: bkrun prints an error's outermost message only.
    let t = Template::parse(format).map_err(|e| anyhow::anyhow!("--format: {e}"))?;
    // Every message present, so only unknown fields and unprintable values fail here.
    let d = || Some(Descriptor::default());
    let info = BuildResultInfo {
        result_deprecated: d(),
        ..Default::default()
    };
    let sample = BuildHistoryEvent {
        r#type: 0,
        record: Some(BuildHistoryRecord {
            error: Some(Status::default()),
            created_at: Some(Timestamp::default()),
            completed_at: Some(Timestamp::default()),
            logs: d(),
            result: Some(info),
            trace: d(),
            external_error: d(),
            ..Default::default()
        }),
    };
    t.execute(&event_value(&sample))
        .map(|_| format.to_string())
        .map_err(|e| anyhow::anyhow!("--format {format:?}: {e}"))
}

/// The event as Go's `controlapi.BuildHistoryEvent`: field names, json tags and order from the
/// generated struct (api/services/control/control.pb.go).
fn event_value(ev: &BuildHistoryEvent) -> Value {
    Value::Struct(Some(vec![
        Field::new(
            "Type",
            "type",
            Value::Enum(ev.r#type.into(), type_name(ev.r#type)),
        ),
        Field::new("Record", "record", opt(&ev.record, record_value)),
    ]))
}

fn record_value(r: &BuildHistoryRecord) -> Vec<Field> {
    vec![
        Field::new("Ref", "Ref", Value::Str(r.r#ref.clone())),
        Field::new("Frontend", "Frontend", Value::Str(r.frontend.clone())),
        Field::new("FrontendAttrs", "FrontendAttrs", strings(&r.frontend_attrs)),
        Field::new(
            "Exporters",
            "Exporters",
            Value::List(r.exporters.iter().map(exporter_value).collect()),
        ),
        Field::new("Error", "error", opt(&r.error, status_value)),
        Field::new(
            "CreatedAt",
            "CreatedAt",
            opt(&r.created_at, timestamp_value),
        ),
        Field::new(
            "CompletedAt",
            "CompletedAt",
            opt(&r.completed_at, timestamp_value),
        ),
        Field::new("Logs", "logs", opt(&r.logs, descriptor_value)),
        Field::new(
            "ExporterResponse",
            "ExporterResponse",
            strings(&r.exporter_response),
        ),
        Field::new("Result", "Result", opt(&r.result, result_value)),
        Field::new(
            "Results",
            "Results",
            Value::Map(
                r.results
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::Struct(Some(result_value(v)))))
                    .collect(),
            ),
        ),
        Field::new("Generation", "Generation", Value::Int(r.generation.into())),
        Field::new("Trace", "trace", opt(&r.trace, descriptor_value)),
        Field::new("Pinned", "pinned", Value::Bool(r.pinned)),
        Field::new(
            "NumCachedSteps",
            "numCachedSteps",
            Value::Int(r.num_cached_steps.into()),
        ),
        Field::new(
            "NumTotalSteps",
            "numTotalSteps",
            Value::Int(r.num_total_steps.into()),
        ),
        Field::new(
            "NumCompletedSteps",
            "numCompletedSteps",
            Value::Int(r.num_completed_steps.into()),
        ),
        Field::new(
            "ExternalError",
            "externalError",
            opt(&r.external_error, descriptor_value),
        ),
        Field::new(
            "NumWarnings",
            "numWarnings",
            Value::Int(r.num_warnings.into()),
        ),
    ]
}

/// A message field: Go holds it as a pointer, nil when absent.
fn opt<T>(v: &Option<T>, f: impl Fn(&T) -> Vec<Field>) -> Value {
    Value::Struct(v.as_ref().map(f))
}

fn strings(m: &std::collections::HashMap<String, String>) -> Value {
    Value::Map(
        m.iter()
            .map(|(k, v)| (k.clone(), Value::Str(v.clone())))
            .collect(),
    )
}

fn exporter_value(e: &Exporter) -> Value {
    Value::Struct(Some(vec![
        Field::new("Type", "Type", Value::Str(e.r#type.clone())),
        Field::new("Attrs", "Attrs", strings(&e.attrs)),
    ]))
}

fn status_value(s: &Status) -> Vec<Field> {
    let details = s
        .details
        .iter()
        .map(|a| {
            Value::Struct(Some(vec![
                Field::new("TypeUrl", "type_url", Value::Str(a.type_url.clone())),
                Field::new("Value", "value", Value::Bytes(a.value.clone())),
            ]))
        })
        .collect();
    vec![
        Field::new("Code", "code", Value::Int(s.code.into())),
        Field::new("Message", "message", Value::Str(s.message.clone())),
        Field::new("Details", "details", Value::List(details)),
    ]
}

fn timestamp_value(t: &Timestamp) -> Vec<Field> {
    vec![
        Field::new("Seconds", "seconds", Value::Int(t.seconds)),
        Field::new("Nanos", "nanos", Value::Int(t.nanos.into())),
    ]
}

fn descriptor_value(d: &Descriptor) -> Vec<Field> {
    vec![
        Field::new("MediaType", "media_type", Value::Str(d.media_type.clone())),
        Field::new("Digest", "digest", Value::Str(d.digest.clone())),
        Field::new("Size", "size", Value::Int(d.size)),
        Field::new("Annotations", "annotations", strings(&d.annotations)),
    ]
}

fn result_value(r: &BuildResultInfo) -> Vec<Field> {
    let descriptor = |d: &Descriptor| Value::Struct(Some(descriptor_value(d)));
    vec![
        Field::new(
            "ResultDeprecated",
            "ResultDeprecated",
            opt(&r.result_deprecated, descriptor_value),
        ),
        Field::new(
            "Attestations",
            "Attestations",
            Value::List(r.attestations.iter().map(descriptor).collect()),
        ),
        Field::new(
            "Results",
            "Results",
            Value::Map(
                r.results
                    .iter()
                    .map(|(k, v)| (k.to_string(), descriptor(v)))
                    .collect(),
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: i64, nanos: i32) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos })
    }

    /// A record as buildkitd v0.32.2 sent it for `FROM scratch` + `COPY f /`.
    fn recorded() -> BuildHistoryEvent {
        let mut exporter_response = std::collections::HashMap::new();
        exporter_response.insert(
            "refs.platforms".to_string(),
            r#"{"Platforms":[{"ID":"linux/amd64","Platform":{"architecture":"amd64","os":"linux"}}]}"#.to_string(),
        );
        exporter_response.insert(
            "verifier.requestopts".to_string(),
            r#"{"Platforms":["linux/amd64"],"Labels":{},"Request":""}"#.to_string(),
        );
        let mut annotations = std::collections::HashMap::new();
        annotations.insert(
            "in-toto.io/predicate-type".to_string(),
            "https://slsa.dev/provenance/v1".to_string(),
        );
        BuildHistoryEvent {
            r#type: BuildHistoryEventType::Complete as i32,
            record: Some(BuildHistoryRecord {
                r#ref: "0ejrye8m3zbkx977rcjgp4x5x".into(),
                frontend: "dockerfile.v0".into(),
                created_at: ts(1796106649, 601775737),
                completed_at: ts(1796106649, 693825562),
                logs: Some(Descriptor {
                    media_type: "application/vnd.buildkit.status.v0".into(),
                    digest: "sha256:f76d85c7d3ba6f2aa34e28dbe159f4d1867849a2c6b47ad511903490ae533a9e".into(),
                    size: 1866,
                    annotations: Default::default(),
                }),
                exporter_response,
                result: Some(BuildResultInfo {
                    attestations: vec![Descriptor {
                        media_type: "application/vnd.in-toto+json".into(),
                        digest: "sha256:7668736b383da675c697c60be24805f4c175b0b3fe9bf425ea475dad78071a75".into(),
                        size: 6850,
                        annotations,
                    }],
                    ..Default::default()
                }),
                num_cached_steps: 1,
                num_total_steps: 4,
                num_completed_steps: 4,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn json_is_byte_identical_to_buildctl_s() {
        // buildctl prune-histories --format '{{json .}}' printed this for the same record
        // (less its long containerimage.config exporter response, left out of recorded()).
        let want = r#"{"type":1,"record":{"Ref":"0ejrye8m3zbkx977rcjgp4x5x","Frontend":"dockerfile.v0","CreatedAt":{"seconds":1796106649,"nanos":601775737},"CompletedAt":{"seconds":1796106649,"nanos":693825562},"logs":{"media_type":"application/vnd.buildkit.status.v0","digest":"sha256:f76d85c7d3ba6f2aa34e28dbe159f4d1867849a2c6b47ad511903490ae533a9e","size":1866},"ExporterResponse":{"refs.platforms":"{\"Platforms\":[{\"ID\":\"linux/amd64\",\"Platform\":{\"architecture\":\"amd64\",\"os\":\"linux\"}}]}","verifier.requestopts":"{\"Platforms\":[\"linux/amd64\"],\"Labels\":{},\"Request\":\"\"}"},"Result":{"Attestations":[{"media_type":"application/vnd.in-toto+json","digest":"sha256:7668736b383da675c697c60be24805f4c175b0b3fe9bf425ea475dad78071a75","size":6850,"annotations":{"in-toto.io/predicate-type":"https://slsa.dev/provenance/v1"}}]},"numCachedSteps":1,"numTotalSteps":4,"numCompletedSteps":4}}"#;
        let t = Template::parse("{{json .}}").unwrap();
        assert_eq!(t.execute(&event_value(&recorded())).unwrap(), want);
        let t = Template::parse("json").unwrap();
        assert_eq!(t.execute(&event_value(&recorded())).unwrap(), want);
        let t = Template::parse("{{.Type}} {{.Record.Ref}} {{.Record.CreatedAt.Seconds}}").unwrap();
        assert_eq!(
            t.execute(&event_value(&recorded())).unwrap(),
            "COMPLETE 0ejrye8m3zbkx977rcjgp4x5x 1796106649"
        );
    }

    #[test]
    fn rows_name_the_type_and_leave_missing_times_empty() {
        let mut ev = recorded();
        let r = ev.record.as_mut().unwrap();
        r.generation = 3;
        r.completed_at = None;
        let created = rfc3339_local(&Timestamp {
            seconds: 1796106649,
            nanos: 0,
        });
        assert_eq!(
            row(&ev),
            format!("COMPLETE\t0ejrye8m3zbkx977rcjgp4x5x\t{created}\t\t3\n")
        );
        ev.r#type = 7;
        assert!(row(&ev).starts_with("7\t"));
        assert_eq!(type_name(BuildHistoryEventType::Started as i32), "STARTED");
    }

    #[test]
    fn formats_are_checked_against_the_record_before_anything_is_deleted() {
        for ok in [
            "json",
            "{{json .}}",
            "{{.Record.Ref}}",
            "{{.Record.Error.Message}} {{json .Record.Result.ResultDeprecated}}",
            "{{.Record.ExternalError.Size}}",
        ] {
            assert_eq!(parse_format(ok).unwrap(), ok);
        }
        for bad in [
            "{{.Record.Nope}}",
            "{{.Record.Logs}}",
            "{{range .}}{{end}}",
            "{{.Ref}}",
        ] {
            assert!(parse_format(bad).is_err(), "{bad}");
        }
    }
}
