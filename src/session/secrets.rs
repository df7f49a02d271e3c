//! The session's Secrets service: hands `--secret` values to `RUN --mount=type=secret` steps, by id.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::proto::moby::buildkit::secrets::v1::secrets_server::{Secrets, SecretsServer};
use crate::proto::moby::buildkit::secrets::v1::{GetSecretRequest, GetSecretResponse};

#[derive(Clone, Default)]
pub struct SecretsProvider {
    by_id: Arc<HashMap<String, Vec<u8>>>,
}

impl SecretsProvider {
    /// Serves each secret's value (already read) by its id.
    pub fn new(by_id: HashMap<String, Vec<u8>>) -> Self {
        SecretsProvider {
            by_id: Arc::new(by_id),
        }
    }

    pub fn into_server(self) -> SecretsServer<Self> {
        SecretsServer::new(self)
    }
}

#[tonic::async_trait]
impl Secrets for SecretsProvider {
    async fn get_secret(
        &self,
        request: Request<GetSecretRequest>,
    ) -> Result<Response<GetSecretResponse>, Status> {
        let id = request.into_inner().id;
        match self.by_id.get(&id) {
            Some(data) => Ok(Response::new(GetSecretResponse { data: data.clone() })),
            // NotFound is what the daemon expects for a secret the client does not have.
            None => Err(Status::not_found(format!(
                "secret {id} not found: pass --secret id={id},src=FILE"
            ))),
        }
    }
}
