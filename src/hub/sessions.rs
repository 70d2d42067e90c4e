//! Live gateway sessions: which gateways are connected, how to reach each one's stream, and
//! how to close them (revocation, takeover by a newer session, hub drain).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::wire::proto::{HubMessage, hub_message};

/// One live session.
#[derive(Clone)]
pub struct LiveSession {
    /// Unique per session.
    pub session_id: String,
    /// Outbound messages to the gateway.
    pub tx: mpsc::Sender<Result<HubMessage, tonic::Status>>,
    /// Cancels the session's reader.
    pub cancel: CancellationToken,
    /// Gateway build version.
    pub version: String,
    /// Protocol version in use.
    pub protocol_version: u32,
    /// Last message from the gateway, Unix seconds.
    pub last_seen: Arc<std::sync::atomic::AtomicI64>,
    /// Requests awaiting the gateway's answer.
    pub broker: Arc<super::requests::Broker>,
    /// Last keepalive round trip seen from the gateway's pings, milliseconds.
    pub rtt_ms: Arc<std::sync::atomic::AtomicI64>,
    /// Where this copy of the identity runs (empty from older gateways).
    pub instance: String,
    /// When the session started, Unix seconds.
    pub started_at: i64,
    /// The gateway's capabilities (empty from gateways before protocol 3).
    pub capabilities: Vec<String>,
    /// How the gateway reaches the hub: `h2` or `websocket` (empty from older gateways).
    pub transport: String,
}

impl LiveSession {
    /// Whether the gateway named this capability in its hello.
    pub fn can(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }
}

/// The registry of live sessions.
#[derive(Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<HashMap<String, LiveSession>>>,
}

impl Sessions {
    /// Registers a session; returns the one it replaces, if any.
    pub fn insert(&self, gateway_id: &str, session: LiveSession) -> Option<LiveSession> {
        self.inner.lock().ok()?.insert(gateway_id.to_owned(), session)
    }

    /// Removes the session if it is still the current one for the gateway.
    pub fn remove_if_current(&self, gateway_id: &str, session_id: &str) -> bool {
        let Ok(mut map) = self.inner.lock() else { return false };
        if map.get(gateway_id).is_some_and(|s| s.session_id == session_id) {
            map.remove(gateway_id);
            true
        } else {
            false
        }
    }

    /// The live session of a gateway.
    pub fn get(&self, gateway_id: &str) -> Option<LiveSession> {
        self.inner.lock().ok()?.get(gateway_id).cloned()
    }

    /// Takes a gateway's session out of the registry.
    pub fn take(&self, gateway_id: &str) -> Option<LiveSession> {
        self.inner.lock().ok()?.remove(gateway_id)
    }

    /// Every live session.
    pub fn all(&self) -> Vec<(String, LiveSession)> {
        self.inner
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// How many gateways are connected.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// True when none is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Ends a session with a final message and status (best effort: the gateway may be gone).
pub async fn close_with(session: &LiveSession, last: hub_message::Body, status: tonic::Status) {
    let _ = session.tx.try_send(Ok(HubMessage { body: Some(last) }));
    let _ = session.tx.try_send(Err(status));
    session.broker.close();
    session.cancel.cancel();
}
