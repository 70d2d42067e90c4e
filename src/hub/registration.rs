//! The registration gRPC service: a one-hour, single-use token and a CSR become a gateway id
//! and a client certificate; an authenticated gateway renews its certificate; `self-update`
//! asks for the desired gateway version (and says when it holds back); a gateway deregisters
//! itself; a failed registration preflight is recorded on its token.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use super::state::HubState;
use super::store::{CertRecord, GatewayRecord, NewGateway, TokenCheck, TokenState};
use crate::wire::ErrorCode;
use crate::wire::assertion::Purpose;
use crate::wire::proto::registration_server::Registration;
use crate::wire::proto::{
    DeregisterRequest, DeregisterResponse, GetDesiredVersionRequest, GetDesiredVersionResponse, PreflightAck,
    PreflightReport, RegisterRequest, RegisterResponse, RenewRequest, RenewResponse,
};

/// The registration service.
#[derive(Clone)]
pub struct RegistrationService {
    /// Shared state.
    pub state: Arc<HubState>,
}

fn new_gateway_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 8];
    rand::rng().fill_bytes(&mut b);
    format!("gw-{}", hex::encode(b))
}

/// Splits `<id>.<secret>` and hashes the secret.
pub fn token_parts(token: &str) -> Option<(String, Vec<u8>)> {
    let (id, secret) = token.trim().split_once('.')?;
    if id.is_empty() || secret.is_empty() {
        return None;
    }
    Some((id.to_owned(), Sha256::digest(secret.as_bytes()).to_vec()))
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        let req = request.into_inner();
        let unknown = || ErrorCode::TokenUnknown.status(tonic::Code::Unauthenticated, "unknown registration token");
        let (token_id, hash) = token_parts(&req.token).ok_or_else(unknown)?;
        let gateway_id = new_gateway_id();
        let issued = self
            .state
            .ca
            .sign_client_csr(&req.csr_pem, &gateway_id, self.state.client_cert_ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let now = jiff::Timestamp::now().as_second();
        let (gid, info, req_name, req_envs) = (
            gateway_id.clone(),
            issued.info.clone(),
            req.name.clone(),
            req.environments.clone(),
        );
        let web_url = req.argocd_web_url.clone();
        let version = req.gateway_version.clone();
        let (check, created) = self
            .state
            .store
            .register_with_token(
                token_id.clone(),
                hash,
                now,
                Box::new(move |token_name, token_envs| {
                    let name = [req_name.as_str(), token_name, gid.as_str()]
                        .into_iter()
                        .find(|s| !s.is_empty())
                        .unwrap_or_default();
                    Ok(NewGateway {
                        gateway: GatewayRecord {
                            id: gid.clone(),
                            name: name.to_owned(),
                            environments: if req_envs.is_empty() {
                                token_envs.to_vec()
                            } else {
                                req_envs
                            },
                            argocd_web_url: web_url,
                            created_at: now,
                            last_seen_at: Some(now),
                            version,
                            protocol_version: 0,
                            certificate_expires_at: Some(info.not_after.as_second()),
                        },
                        cert: CertRecord {
                            fingerprint: info.fingerprint.hex().to_owned(),
                            gateway_id: gid,
                            public_key: info.public_key.clone(),
                            not_after: info.not_after.as_second(),
                            retire_after: None,
                        },
                    })
                }),
            )
            .await
            .map_err(HubState::internal)?;
        match (check, created) {
            (TokenCheck::Consumed { .. }, Some(new)) => {
                tracing::info!(gateway_id = %new.gateway.id, name = %new.gateway.name, token_id = %token_id, "gateway registered");
                super::lifecycle::on_registered(&self.state, &token_id).await;
                Ok(Response::new(RegisterResponse {
                    gateway_id: new.gateway.id,
                    certificate_pem: issued.pem,
                    ca_bundle_pem: self.state.ca.cert_pem().to_owned(),
                    name: new.gateway.name,
                    environments: new.gateway.environments,
                }))
            }
            (TokenCheck::Expired, _) => {
                Err(ErrorCode::TokenExpired.status(tonic::Code::Unauthenticated, "the registration token has expired"))
            }
            (TokenCheck::Used, _) => {
                Err(ErrorCode::TokenUsed
                    .status(tonic::Code::PermissionDenied, "the registration token was already used"))
            }
            _ => Err(unknown()),
        }
    }

    async fn renew(&self, request: Request<RenewRequest>) -> Result<Response<RenewResponse>, Status> {
        let gateway_id = self.state.authenticate(&request, Purpose::Renew).await?;
        let req = request.into_inner();
        let issued = self
            .state
            .ca
            .sign_client_csr(&req.csr_pem, &gateway_id, self.state.client_cert_ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.state
            .store
            .add_certificate(
                CertRecord {
                    fingerprint: issued.info.fingerprint.hex().to_owned(),
                    gateway_id: gateway_id.clone(),
                    public_key: issued.info.public_key.clone(),
                    not_after: issued.info.not_after.as_second(),
                    retire_after: None,
                },
                jiff::Timestamp::now().as_second() + self.state.renewal_grace.as_secs() as i64,
            )
            .await
            .map_err(HubState::internal)?;
        tracing::info!(gateway_id = %gateway_id, not_after = %issued.info.not_after, "renewed a gateway certificate");
        Ok(Response::new(RenewResponse {
            certificate_pem: issued.pem,
            ca_bundle_pem: self.state.ca.cert_pem().to_owned(),
        }))
    }

    /// The gateway proves who it is with a version-purpose assertion, so an assertion captured
    /// here cannot open a tunnel or renew a certificate.
    async fn get_desired_version(
        &self,
        request: Request<GetDesiredVersionRequest>,
    ) -> Result<Response<GetDesiredVersionResponse>, Status> {
        let gateway_id = self.state.authenticate(&request, Purpose::Version).await?;
        let held = request.get_ref().update_held.trim();
        let held = (!held.is_empty()).then(|| held.chars().take(1024).collect::<String>());
        if let Some(reason) = &held {
            tracing::info!(gateway_id = %gateway_id, reason = %reason, "gateway holds its self-update");
        }
        self.state
            .store
            .set_update_hold(gateway_id.clone(), held, jiff::Timestamp::now().as_second())
            .await
            .map_err(HubState::internal)?;
        let version = self
            .state
            .store
            .setting(super::api::version::SETTING_KEY)
            .await
            .map_err(HubState::internal)?;
        tracing::info!(
            gateway_id = %gateway_id,
            current = %request.get_ref().current_version,
            desired = version.as_deref().unwrap_or("-"),
            "gateway asked for the desired version"
        );
        Ok(Response::new(GetDesiredVersionResponse {
            desired_version: version.unwrap_or_default(),
        }))
    }

    /// The gateway removes itself (the chart's pre-delete hook); a deregister-purpose assertion,
    /// so no assertion captured elsewhere can delete a gateway.
    async fn deregister(&self, request: Request<DeregisterRequest>) -> Result<Response<DeregisterResponse>, Status> {
        let gateway_id = self.state.authenticate(&request, Purpose::Deregister).await?;
        let given = request.get_ref().reason.trim();
        let reason = if given.is_empty() {
            "deregistered by the gateway itself".to_owned()
        } else {
            format!(
                "deregistered by the gateway itself: {}",
                given.chars().take(256).collect::<String>()
            )
        };
        super::lifecycle::remove(&self.state, &gateway_id, reason, false)
            .await
            .map_err(HubState::internal)?;
        Ok(Response::new(DeregisterResponse {}))
    }

    /// Records a failed registration preflight on the token's progress, leaving it unused.
    async fn report_preflight(&self, request: Request<PreflightReport>) -> Result<Response<PreflightAck>, Status> {
        let req = request.into_inner();
        let unknown = || ErrorCode::TokenUnknown.status(tonic::Code::Unauthenticated, "unknown registration token");
        let (token_id, hash) = token_parts(&req.token).ok_or_else(unknown)?;
        let now = jiff::Timestamp::now().as_second();
        match self
            .state
            .store
            .check_token(token_id.clone(), hash, now)
            .await
            .map_err(HubState::internal)?
        {
            TokenState::Active => {}
            TokenState::Unknown => return Err(unknown()),
            TokenState::Expired => {
                return Err(
                    ErrorCode::TokenExpired.status(tonic::Code::Unauthenticated, "the registration token has expired")
                );
            }
            TokenState::Used => {
                return Err(ErrorCode::TokenUsed
                    .status(tonic::Code::PermissionDenied, "the registration token was already used"));
            }
        }
        let rows: Vec<String> = req
            .failed
            .iter()
            .take(20)
            .map(|r| {
                let mut line = format!("{}: {}", r.name, r.detail);
                if !r.fix.is_empty() {
                    line.push_str(&format!(" (fix: {})", r.fix));
                }
                line
            })
            .collect();
        let mut message = format!(
            "the registration preflight failed, so the token was not used: {}",
            if rows.is_empty() {
                "no detail".to_owned()
            } else {
                rows.join("; ")
            }
        );
        if message.len() > 4096 {
            let mut cut = 4096;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        tracing::info!(token_id = %token_id, "a registration preflight failed");
        self.state
            .store
            .record_step(token_id, super::lifecycle::USED, "failed", message, now)
            .await
            .map_err(HubState::internal)?;
        Ok(Response::new(PreflightAck {}))
    }
}
