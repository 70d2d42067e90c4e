//! The channel between hub replicas: a request for a gateway whose session another replica
//! holds is forwarded to it ([`Peers::forward`]) and its answer streamed back, transparently to
//! the API caller. Mutual TLS with certificates from the hub CA: each replica issues itself one
//! marked as a replica's ([`crate::certs::REPLICA_URI`]) at start, shows it as server and as
//! client, and the service ([`PeerService`]) accepts only callers that show one — a gateway's
//! certificate from the same CA is refused.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::Stream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Response, Status};

use super::requests::RequestFailure;
use super::state::HubState;
use crate::wire::proto::hub_peer_client::HubPeerClient;
use crate::wire::proto::hub_peer_server::HubPeer;
use crate::wire::proto::{self, PeerForward, request, response};

/// Pieces an answer travels in between replicas.
const PIECE: usize = 1024 * 1024;
/// Time for the hop itself on top of the request's deadline.
const HOP_MARGIN: Duration = Duration::from_secs(2);

/// The replica side of forwarding: answers other replicas' requests for gateways connected here.
#[derive(Clone)]
pub struct PeerService {
    /// Shared state.
    pub state: Arc<HubState>,
}

type AnswerStream = Pin<Box<dyn Stream<Item = Result<proto::Response, Status>> + Send>>;

#[tonic::async_trait]
impl HubPeer for PeerService {
    type ForwardStream = AnswerStream;

    async fn forward(&self, request: Request<PeerForward>) -> Result<Response<Self::ForwardStream>, Status> {
        let is_replica = request
            .peer_certs()
            .and_then(|certs| certs.first().map(|leaf| crate::certs::is_replica_cert(leaf)))
            .unwrap_or(false);
        if !is_replica {
            return Err(Status::permission_denied("only hub replicas may call this service"));
        }
        let PeerForward { gateway_id, request } = request.into_inner();
        let Some(proto::Request {
            deadline_ms,
            kind: Some(kind),
            ..
        }) = request
        else {
            return Err(Status::invalid_argument("no request"));
        };
        let Some(session) = self.state.sessions.get(&gateway_id) else {
            return Err(Status::not_found(format!(
                "gateway {gateway_id} is not connected to this replica"
            )));
        };
        let deadline = Duration::from_millis(u64::from(deadline_ms).clamp(1, 3_600_000));
        let answer = session.broker.call_bytes(&session.tx, kind, deadline).await;
        let pieces: Vec<Result<proto::Response, Status>> = match answer {
            Ok(bytes) => {
                let count = bytes.len().div_ceil(PIECE).max(1);
                (0..count)
                    .map(|i| {
                        let piece = bytes[i * PIECE..((i + 1) * PIECE).min(bytes.len())].to_vec();
                        Ok(proto::Response {
                            id: 0,
                            result: Some(response::Result::Json(piece)),
                            more: i + 1 < count,
                        })
                    })
                    .collect()
            }
            Err(RequestFailure::Disconnected { .. }) => {
                return Err(Status::not_found(format!("gateway {gateway_id} disconnected")));
            }
            Err(RequestFailure::Timeout(d)) => {
                return Err(Status::deadline_exceeded(format!(
                    "the gateway did not answer within {d:?}"
                )));
            }
            Err(e) => vec![Ok(proto::Response {
                id: 0,
                result: Some(response::Result::Error(e.to_proto())),
                more: false,
            })],
        };
        Ok(Response::new(Box::pin(futures_util::stream::iter(pieces))))
    }
}

/// Connections to the other replicas, by address.
pub struct Peers {
    tls: ClientTlsConfig,
    channels: Mutex<HashMap<String, Channel>>,
    max_answer_bytes: usize,
}

impl Peers {
    /// Clients that trust `ca_pem` and show `cert_pem`/`key_pem` (this replica's certificate).
    pub fn new(ca_pem: &str, cert_pem: &str, key_pem: &str, max_answer_bytes: usize) -> Self {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .identity(Identity::from_pem(cert_pem, key_pem));
        Self {
            tls,
            channels: Mutex::new(HashMap::new()),
            max_answer_bytes,
        }
    }

    fn channel(&self, url: &str) -> Result<Channel, String> {
        if let Some(c) = self.channels.lock().ok().and_then(|c| c.get(url).cloned()) {
            return Ok(c);
        }
        let host = url::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_owned()))
            .ok_or_else(|| format!("invalid peer address {url:?}"))?;
        let channel = Endpoint::from_shared(url.to_owned())
            .map_err(|e| e.to_string())?
            .tls_config(self.tls.clone().domain_name(host))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(3))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .connect_lazy();
        if let Ok(mut c) = self.channels.lock() {
            c.insert(url.to_owned(), channel.clone());
        }
        Ok(channel)
    }

    /// Forgets the connection to a replica (it is gone or was replaced at that address).
    pub fn forget(&self, url: &str) {
        if let Ok(mut c) = self.channels.lock() {
            c.remove(url);
        }
    }

    /// Sends `kind` to `gateway_id`'s session on the replica at `url` and assembles the answer.
    /// A replica that cannot be reached, or no longer holds the session, answers
    /// [`RequestFailure::Disconnected`].
    pub async fn forward(
        &self,
        url: &str,
        gateway_id: &str,
        kind: request::Kind,
        deadline: Duration,
    ) -> Result<Vec<u8>, RequestFailure> {
        let disconnected = || RequestFailure::Disconnected {
            gateway_id: gateway_id.to_owned(),
            last_seen: None,
        };
        let channel = self.channel(url).map_err(|e| {
            tracing::warn!(peer = %url, error = %e, "cannot reach a hub replica");
            disconnected()
        })?;
        let mut client = HubPeerClient::new(channel).max_decoding_message_size(2 * PIECE);
        let mut req = Request::new(PeerForward {
            gateway_id: gateway_id.to_owned(),
            request: Some(proto::Request {
                id: 0,
                deadline_ms: deadline.as_millis().min(u128::from(u32::MAX)) as u32,
                kind: Some(kind),
            }),
        });
        req.set_timeout(deadline + HOP_MARGIN);
        let work = async {
            let mut stream = match client.forward(req).await {
                Ok(s) => s.into_inner(),
                Err(s) => return Err(s),
            };
            let mut answer = Vec::new();
            while let Some(piece) = stream.message().await? {
                match piece.result {
                    Some(response::Result::Json(bytes)) => {
                        if answer.len() + bytes.len() > self.max_answer_bytes {
                            return Ok(Err(RequestFailure::TooLarge(format!(
                                "the gateway's answer exceeds the hub's limit of {} bytes (hub flag --max-answer-bytes)",
                                self.max_answer_bytes
                            ))));
                        }
                        answer.extend_from_slice(&bytes);
                        if !piece.more {
                            return Ok(Ok(answer));
                        }
                    }
                    Some(response::Result::Error(e)) => return Ok(Err(RequestFailure::from_proto(e))),
                    None => return Ok(Err(RequestFailure::Internal("empty answer".into()))),
                }
            }
            Ok(Err(RequestFailure::Internal(
                "the hub replica holding the gateway ended the answer early".into(),
            )))
        };
        match work.await {
            Ok(answer) => answer,
            Err(status) => Err(match status.code() {
                tonic::Code::NotFound => disconnected(),
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => RequestFailure::Timeout(deadline),
                tonic::Code::Unavailable | tonic::Code::Unknown => {
                    tracing::warn!(peer = %url, gateway_id, error = %status.message(), "the hub replica holding the gateway did not answer");
                    disconnected()
                }
                _ => RequestFailure::Internal(format!("hub replica {url}: {}", status.message())),
            }),
        }
    }
}
