//! The frontend gateway from the client's side, as buildx drives every build: the Solve is
//! sent with no frontend, and bkrun runs the Dockerfile frontend itself through LLBBridge
//! (calls routed to the build by the `buildkit-controlapi-buildid` header), reads the LLB it
//! returns, solves its own steps beside it, and hands the frontend's result back for export.

use std::collections::HashMap;

use prost::Message;
use tonic::transport::Channel;
use tonic::Status;

use crate::proto::google::rpc::Status as RpcStatus;
use crate::proto::moby::buildkit::v1::frontend::{
    llb_bridge_client::LlbBridgeClient, result, CacheOptionsEntry, Result as GwResult,
    ReturnRequest, SolveRequest,
};
use crate::proto::pb;

/// BuildKit's header naming the build a gateway call belongs to.
const BUILD_ID: &str = "buildkit-controlapi-buildid";

pub struct Gateway {
    client: LlbBridgeClient<Channel>,
    build: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl Gateway {
    /// The gateway of the build whose Solve carries `reference` (a random id: valid ASCII).
    pub fn new(channel: Channel, reference: &str) -> Gateway {
        Gateway {
            client: LlbBridgeClient::new(channel).max_decoding_message_size(64 << 20),
            build: reference.parse().expect("a build ref is ASCII"),
        }
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert(BUILD_ID, self.build.clone());
        r
    }

    /// Runs `frontend` with `opts` (not yet evaluated: the steps run when exported).
    pub async fn frontend(
        &mut self,
        frontend: &str,
        opts: HashMap<String, String>,
        cache_imports: Vec<CacheOptionsEntry>,
    ) -> Result<GwResult, Status> {
        let req = SolveRequest {
            frontend: frontend.to_string(),
            frontend_opt: opts,
            allow_result_return: true,
            allow_result_array_ref: true,
            cache_imports,
            ..Default::default()
        };
        let resp = self.client.solve(self.request(req)).await?.into_inner();
        resp.result
            .ok_or_else(|| Status::internal("the frontend returned no result"))
    }

    /// Solves `def` inside the build and waits for it to finish.
    pub async fn evaluate(&mut self, def: pb::Definition) -> Result<(), Status> {
        let req = SolveRequest {
            definition: Some(def),
            allow_result_return: true,
            allow_result_array_ref: true,
            evaluate: true,
            ..Default::default()
        };
        self.client.solve(self.request(req)).await.map(|_| ())
    }

    /// Hands the build its result (or its error), which ends the gateway's part of it.
    pub async fn finish(&mut self, result: Result<GwResult, Status>) -> Result<(), Status> {
        let req = match result {
            Ok(r) => ReturnRequest {
                result: Some(r),
                error: None,
            },
            Err(status) => ReturnRequest {
                result: None,
                error: Some(rpc_status(&status)),
            },
        };
        self.client.r#return(self.request(req)).await.map(|_| ())
    }
}

/// A gRPC status as google.rpc.Status, its details (BuildKit's source and vertex of a failed
/// step) kept, so the build's error reads as if the frontend had been run by the daemon.
fn rpc_status(status: &Status) -> RpcStatus {
    if let Ok(s) = RpcStatus::decode(status.details()) {
        if s.code != 0 {
            return s;
        }
    }
    RpcStatus {
        code: status.code() as i32,
        message: status.message().to_string(),
        details: Vec::new(),
    }
}

/// The LLB definitions a frontend result holds (one per platform).
pub fn definitions(result: &GwResult) -> Vec<&pb::Definition> {
    match &result.result {
        Some(result::Result::Ref(r)) => r.def.iter().collect(),
        Some(result::Result::Refs(m)) => m.refs.values().filter_map(|r| r.def.as_ref()).collect(),
        _ => Vec::new(),
    }
}
