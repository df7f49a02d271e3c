//! The session's grpc.health.v1 service: the daemon polls it and drops the session when it stops answering.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use crate::proto::grpc::health::v1::health_check_response::ServingStatus;
use crate::proto::grpc::health::v1::health_server::{Health, HealthServer};
use crate::proto::grpc::health::v1::{HealthCheckRequest, HealthCheckResponse};

/// Answers SERVING for the whole server ("") and for each registered service.
#[derive(Clone, Debug, Default)]
pub struct HealthService {
    services: Arc<HashSet<String>>,
}

impl HealthService {
    pub fn new(services: impl IntoIterator<Item = String>) -> Self {
        Self {
            services: Arc::new(services.into_iter().collect()),
        }
    }

    pub fn into_server(self) -> HealthServer<Self> {
        HealthServer::new(self)
    }

    fn status_of(&self, service: &str) -> Option<ServingStatus> {
        (service.is_empty() || self.services.contains(service)).then_some(ServingStatus::Serving)
    }
}

fn reply(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        match self.status_of(&service) {
            Some(status) => Ok(Response::new(reply(status))),
            // Same code the reference health server uses for unknown names.
            None => Err(Status::not_found(format!("unknown service {service}"))),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        let status = self
            .status_of(&service)
            .unwrap_or(ServingStatus::ServiceUnknown);
        // Our status never changes while the session lives, so after the
        // first answer the stream just stays open until the session ends.
        let first = futures::stream::once(async move { Ok(reply(status)) });
        let stream = futures::StreamExt::chain(first, futures::stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serving_for_known_names_only() {
        let h = HealthService::new(["moby.filesync.v1.FileSync".to_string()]);
        for name in ["", "moby.filesync.v1.FileSync"] {
            let resp = h
                .check(Request::new(HealthCheckRequest {
                    service: name.into(),
                }))
                .await
                .unwrap();
            assert_eq!(resp.into_inner().status, ServingStatus::Serving as i32);
        }
        let err = h
            .check(Request::new(HealthCheckRequest {
                service: "x.Y".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
    }
}
