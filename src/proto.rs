//! Generated gRPC/protobuf types for the BuildKit wire contract, one module per proto package.

// Generated code refers across packages with `super::` paths, so the module
// tree must mirror the proto package names exactly. Lints are silenced only on
// the generated modules: we do not control their style.

#[allow(clippy::all)]
pub mod moby {
    pub mod buildkit {
        pub mod v1 {
            tonic::include_proto!("moby.buildkit.v1");
            pub mod frontend {
                tonic::include_proto!("moby.buildkit.v1.frontend");
            }

            pub mod types {
                tonic::include_proto!("moby.buildkit.v1.types");
            }

            pub mod sourcepolicy {
                tonic::include_proto!("moby.buildkit.v1.sourcepolicy");
            }
        }

        pub mod secrets {
            pub mod v1 {
                tonic::include_proto!("moby.buildkit.secrets.v1");
            }
        }
    }

    pub mod filesync {
        pub mod v1 {
            tonic::include_proto!("moby.filesync.v1");
        }
    }

    pub mod sshforward {
        pub mod v1 {
            tonic::include_proto!("moby.sshforward.v1");
        }
    }
}

#[allow(clippy::all)]
pub mod containerd {
    pub mod services {
        pub mod content {
            pub mod v1 {
                tonic::include_proto!("containerd.services.content.v1");
            }
        }
        pub mod leases {
            pub mod v1 {
                tonic::include_proto!("containerd.services.leases.v1");
            }
        }
    }
}

#[allow(clippy::all)]
pub mod pb {
    tonic::include_proto!("pb");
}

#[allow(clippy::all)]
pub mod errdefs {
    tonic::include_proto!("errdefs");
}

#[allow(clippy::all)]
pub mod stack {
    tonic::include_proto!("stack");
}

#[allow(clippy::all)]
pub mod fsutil {
    pub mod types {
        tonic::include_proto!("fsutil.types");
    }
}

#[allow(clippy::all)]
pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

#[allow(clippy::all)]
pub mod grpc {
    pub mod health {
        pub mod v1 {
            tonic::include_proto!("grpc.health.v1");
        }
    }
}

mod service_table {
    include!(concat!(env!("OUT_DIR"), "/service_methods.rs"));
}

/// Method names (not full paths) of a service compiled from our protos, keyed
/// by its full gRPC name such as `moby.filesync.v1.FileSync`.
pub fn service_methods(service: &str) -> Option<&'static [&'static str]> {
    service_table::SERVICE_METHODS
        .iter()
        .find(|(name, _)| *name == service)
        .map(|(_, methods)| *methods)
}

/// Type URL of an [`errdefs::Source`] detail: where in the Dockerfile it failed.
pub const DETAIL_SOURCE: &str = "github.com/moby/buildkit/errdefs.Source+json";
/// Type URL of an [`errdefs::Vertex`] detail: which step failed.
pub const DETAIL_VERTEX: &str = "github.com/moby/buildkit/errdefs.Vertex+json";

/// Decode one detail of a daemon error if it has the given type URL.
///
/// The details come from `google.rpc.Status` (decode `tonic::Status::details()`
/// with [`google::rpc::Status`]); BuildKit fills their `value` with Go's JSON
/// encoding, not protobuf.
pub fn decode_json_detail<T: serde::de::DeserializeOwned>(
    detail: &prost_types::Any,
    type_url: &str,
) -> Option<serde_json::Result<T>> {
    (detail.type_url == type_url).then(|| serde_json::from_slice(&detail.value))
}

/// Go's JSON encodes byte slices as standard base64 (null when nil).
pub(crate) fn go_json_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    use base64::Engine as _;
    let text: Option<String> = serde::Deserialize::deserialize(d)?;
    base64::engine::general_purpose::STANDARD
        .decode(text.unwrap_or_default())
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::fsutil::types::{packet::PacketType, Packet, Stat};
    use super::grpc::health::v1::{health_check_response::ServingStatus, HealthCheckResponse};
    use super::moby::buildkit::v1 as control;
    use super::pb;
    use prost::Message;

    fn roundtrip<M: Message + Default + PartialEq + std::fmt::Debug>(m: &M) -> Vec<u8> {
        let bytes = m.encode_to_vec();
        assert_eq!(&M::decode(bytes.as_slice()).unwrap(), m);
        bytes
    }

    // Expected bytes are hand-assembled from the upstream field numbers, so a
    // renumbered field in our .proto files fails here rather than on the wire.
    #[test]
    fn service_table_lists_methods() {
        assert_eq!(
            super::service_methods("moby.filesync.v1.FileSync"),
            Some(&["DiffCopy", "TarStream"][..])
        );
        assert_eq!(
            super::service_methods("grpc.health.v1.Health"),
            Some(&["Check", "Watch"][..])
        );
        assert_eq!(super::service_methods("nope.Nope"), None);
    }

    #[test]
    fn packet_encoding_is_pinned() {
        let p = Packet {
            r#type: PacketType::PacketData as i32,
            stat: None,
            id: 5,
            data: b"hi".to_vec(),
        };
        assert_eq!(
            roundtrip(&p),
            [0x08, 0x02, 0x18, 0x05, 0x22, 0x02, b'h', b'i']
        );

        let req = Packet {
            r#type: PacketType::PacketReq as i32,
            id: 300,
            ..Default::default()
        };
        assert_eq!(roundtrip(&req), [0x08, 0x01, 0x18, 0xac, 0x02]);
    }

    #[test]
    fn stat_encoding_is_pinned() {
        let s = Stat {
            path: "a".into(),
            mode: 0o644,
            mod_time: 1,
            linkname: "l".into(),
            ..Default::default()
        };
        assert_eq!(
            roundtrip(&s),
            [0x0a, 0x01, b'a', 0x10, 0xa4, 0x03, 0x30, 0x01, 0x3a, 0x01, b'l']
        );
    }

    #[test]
    fn bytes_message_and_health_are_pinned() {
        let m = control::BytesMessage {
            data: b"ab".to_vec(),
        };
        assert_eq!(roundtrip(&m), [0x0a, 0x02, b'a', b'b']);

        let h = HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        };
        assert_eq!(roundtrip(&h), [0x08, 0x01]);
    }

    #[test]
    fn solve_request_fields_are_pinned() {
        let r = control::SolveRequest {
            session: "s".into(),
            frontend: "f".into(),
            exporters: vec![control::Exporter {
                r#type: "t".into(),
                attrs: Default::default(),
            }],
            ..Default::default()
        };
        assert_eq!(
            roundtrip(&r),
            [0x2a, 0x01, b's', 0x32, 0x01, b'f', 0x6a, 0x03, 0x0a, 0x01, b't']
        );
    }

    #[test]
    fn status_and_source_ranges_roundtrip() {
        let log = control::VertexLog {
            vertex: "v".into(),
            timestamp: None,
            stream: 2,
            msg: b"x".to_vec(),
        };
        assert_eq!(
            roundtrip(&log),
            [0x0a, 0x01, b'v', 0x18, 0x02, 0x22, 0x01, b'x']
        );

        let src = super::errdefs::Source {
            info: Some(pb::SourceInfo {
                filename: "Dockerfile".into(),
                data: b"FROM x\n".to_vec(),
                definition: None,
                language: "Dockerfile".into(),
            }),
            ranges: vec![pb::Range {
                start: Some(pb::Position {
                    line: 1,
                    character: 0,
                }),
                end: Some(pb::Position {
                    line: 1,
                    character: 6,
                }),
            }],
        };
        let bytes = roundtrip(&src);
        // ranges is field 2 of errdefs.Source; start/end are 1/2 of pb.Range.
        let tail = [
            0x12, 0x0a, 0x0a, 0x02, 0x08, 0x01, 0x12, 0x04, 0x08, 0x01, 0x10, 0x06,
        ];
        assert!(bytes.ends_with(&tail), "{bytes:02x?}");
    }

    #[test]
    fn source_detail_decodes_from_go_json() {
        use prost::Message as _;
        // Shaped like encoding/json output of BuildKit's errdefs.Source.
        let json = br#"{"info":{"filename":"Dockerfile","data":"RlJPTSB4ClJVTiBmYWxzZQo=","definition":{"def":["AA=="]},"language":"Dockerfile"},"ranges":[{"start":{"line":2},"end":{"line":2,"character":9}}]}"#;
        let status = super::google::rpc::Status {
            code: 2,
            message: "process did not complete successfully".into(),
            details: vec![prost_types::Any {
                type_url: super::DETAIL_SOURCE.into(),
                value: json.to_vec(),
            }],
        };
        let status = super::google::rpc::Status::decode(status.encode_to_vec().as_slice()).unwrap();
        let detail = &status.details[0];
        assert!(
            super::decode_json_detail::<super::errdefs::Vertex>(detail, super::DETAIL_VERTEX)
                .is_none()
        );
        let src: super::errdefs::Source = super::decode_json_detail(detail, super::DETAIL_SOURCE)
            .unwrap()
            .unwrap();
        let info = src.info.unwrap();
        assert_eq!(info.filename, "Dockerfile");
        assert_eq!(info.data, b"FROM x\nRUN false\n");
        let range = &src.ranges[0];
        assert_eq!(range.start.unwrap().line, 2);
        assert_eq!(range.start.unwrap().character, 0);
        assert_eq!(range.end.unwrap().character, 9);
    }
}
