//! The identity in a Kubernetes Secret (`--identity secret:NAMESPACE/NAME`), so every replica,
//! the registration Job and the self-update Job share one identity and it survives pod churn.
//!
//! Two replicas may register at the same moment (with two different tokens, or one token raced
//! by a Job and a pod). The first write wins and everyone else adopts it: creation is a `create`
//! call that fails with 409 AlreadyExists when another writer was first, and every update of an
//! existing Secret carries its `resourceVersion`, so a concurrent writer gets 409 Conflict and
//! re-reads instead of overwriting.
//!
//! Keys: `gateway-id`, `name`, `environments` (one per line), `hub-url`, `tls.key`, `tls.crt`,
//! `ca.crt`. Other keys in a pre-created Secret are left alone. The Secret is never deleted
//! (the chart grants no `delete`): forgetting an identity clears these keys.

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::sync::OnceCell;

use crate::identity::Identity;
use crate::identity::store::{IdentityStore, StoreError};

/// Secret key of the gateway id; its presence is what makes the Secret hold an identity.
pub const KEY_GATEWAY_ID: &str = "gateway-id";
/// Secret key of the display name.
pub const KEY_NAME: &str = "name";
/// Secret key of the environments, one per line.
pub const KEY_ENVIRONMENTS: &str = "environments";
/// Secret key of the hub URL used at registration.
pub const KEY_HUB_URL: &str = "hub-url";
/// Secret key of the private key (PEM), named as in `kubernetes.io/tls` Secrets.
pub const KEY_TLS_KEY: &str = "tls.key";
/// Secret key of the client certificate (PEM).
pub const KEY_TLS_CRT: &str = "tls.crt";
/// Secret key of the hub CA bundle (PEM).
pub const KEY_CA_CRT: &str = "ca.crt";

const OWN_KEYS: [&str; 7] = [
    KEY_GATEWAY_ID,
    KEY_NAME,
    KEY_ENVIRONMENTS,
    KEY_HUB_URL,
    KEY_TLS_KEY,
    KEY_TLS_CRT,
    KEY_CA_CRT,
];

/// How often a write is retried after losing a resourceVersion race before giving up. Each
/// loss means another writer succeeded, so a handful is plenty.
const MAX_CONFLICTS: usize = 8;

/// The identity kept in one Secret.
pub struct SecretStore {
    namespace: String,
    name: String,
    client: OnceCell<kube::Client>,
    /// The Secret's UID as last seen: the instance the hub tells replicas from copies by.
    uid: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl SecretStore {
    /// A store that makes its Kubernetes client from the environment on first use, so that
    /// parsing flags stays free of I/O.
    pub fn lazy(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            client: OnceCell::new(),
            uid: Default::default(),
        }
    }

    /// A store using `client`.
    pub fn new(client: kube::Client, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            client: OnceCell::new_with(Some(client)),
            uid: Default::default(),
        }
    }

    async fn api(&self) -> Result<Api<Secret>, StoreError> {
        let client = self
            .client
            .get_or_try_init(|| async { crate::kube::client().await })
            .await
            .map_err(|e| StoreError::Kube {
                location: self.describe(),
                action: "connect",
                reason: e.to_string(),
            })?;
        Ok(Api::namespaced(client.clone(), &self.namespace))
    }

    fn kube_error(&self, action: &'static str, e: &kube::Error) -> StoreError {
        StoreError::Kube {
            location: self.describe(),
            action,
            reason: crate::kube::describe(e),
        }
    }

    async fn get(&self, api: &Api<Secret>) -> Result<Option<Secret>, StoreError> {
        let secret = api.get_opt(&self.name).await.map_err(|e| self.kube_error("get", &e))?;
        if let Some(s) = &secret {
            self.saw(s);
        }
        Ok(secret)
    }

    fn saw(&self, secret: &Secret) {
        if let Some(uid) = secret.metadata.uid.as_ref().filter(|u| !u.is_empty())
            && let Ok(mut slot) = self.uid.lock()
        {
            *slot = Some(uid.clone());
        }
    }

    fn decode(&self, secret: &Secret) -> Result<Option<Identity>, StoreError> {
        let Some(data) = secret.data.as_ref() else {
            return Ok(None);
        };
        let text = |key: &str| -> Result<Option<String>, StoreError> {
            data.get(key)
                .map(|b| {
                    String::from_utf8(b.0.clone()).map_err(|_| StoreError::Corrupt {
                        location: self.describe(),
                        reason: format!("key {key} is not UTF-8"),
                    })
                })
                .transpose()
        };
        let Some(gateway_id) = text(KEY_GATEWAY_ID)?.filter(|s| !s.trim().is_empty()) else {
            return Ok(None);
        };
        let required = |key: &str| -> Result<String, StoreError> {
            text(key)?
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| StoreError::Corrupt {
                    location: self.describe(),
                    reason: format!("key {key} is missing"),
                })
        };
        Ok(Some(Identity {
            gateway_id: gateway_id.trim().to_owned(),
            name: text(KEY_NAME)?.unwrap_or_default(),
            environments: text(KEY_ENVIRONMENTS)?
                .unwrap_or_default()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
            hub_url: text(KEY_HUB_URL)?.unwrap_or_default(),
            key_pem: crate::secret::Secret::new(required(KEY_TLS_KEY)?),
            cert_pem: required(KEY_TLS_CRT)?,
            ca_pem: required(KEY_CA_CRT)?,
        }))
    }

    fn new_secret(&self, identity: &Identity) -> Secret {
        let mut data = BTreeMap::new();
        fill(&mut data, identity);
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([
                    ("app.kubernetes.io/part-of".to_owned(), "argocd-gateway".to_owned()),
                    ("app.kubernetes.io/component".to_owned(), "identity".to_owned()),
                ])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(data),
            ..Secret::default()
        }
    }

    /// Writes `identity` into `existing` (keeping its metadata, type and foreign keys) with
    /// `existing`'s resourceVersion as the precondition. `Ok(false)` means another writer
    /// changed the Secret first.
    async fn update(&self, api: &Api<Secret>, mut existing: Secret, identity: &Identity) -> Result<bool, StoreError> {
        fill(existing.data.get_or_insert_with(BTreeMap::new), identity);
        self.put(api, existing).await
    }

    async fn put(&self, api: &Api<Secret>, secret: Secret) -> Result<bool, StoreError> {
        // Without a resourceVersion the API server would accept an unconditional update, which
        // is exactly the lost-update race this store exists to prevent.
        if secret
            .metadata
            .resource_version
            .as_deref()
            .unwrap_or_default()
            .is_empty()
        {
            return Err(StoreError::Corrupt {
                location: self.describe(),
                reason: "the API server returned the Secret without a resourceVersion".into(),
            });
        }
        match api.replace(&self.name, &PostParams::default(), &secret).await {
            Ok(_) => Ok(true),
            Err(e) if crate::kube::is_status(&e, 409) => Ok(false),
            Err(e) => Err(self.kube_error("update", &e)),
        }
    }

    fn too_many_conflicts(&self) -> StoreError {
        StoreError::Kube {
            location: self.describe(),
            action: "update",
            reason: format!("{MAX_CONFLICTS} conflicting writes in a row; something else keeps changing this Secret"),
        }
    }

    async fn create_identity(&self, identity: &Identity) -> Result<Identity, StoreError> {
        let api = self.api().await?;
        for _ in 0..MAX_CONFLICTS {
            match api.create(&PostParams::default(), &self.new_secret(identity)).await {
                Ok(created) => {
                    self.saw(&created);
                    return Ok(identity.clone());
                }
                Err(e) if crate::kube::is_status(&e, 409) => {}
                Err(e) => return Err(self.kube_error("create", &e)),
            }
            // Someone created the Secret first: adopt its identity, or fill it if it is empty
            // (pre-created by an operator, or cleared after a revocation).
            let Some(existing) = self.get(&api).await? else {
                continue;
            };
            if let Some(stored) = self.decode(&existing)? {
                tracing::info!(gateway_id = %stored.gateway_id, store = %self.describe(), "another replica stored an identity first; using it");
                return Ok(stored);
            }
            if self.update(&api, existing, identity).await? {
                return Ok(identity.clone());
            }
        }
        Err(self.too_many_conflicts())
    }

    async fn replace_identity(&self, identity: &Identity) -> Result<(), StoreError> {
        let api = self.api().await?;
        for _ in 0..MAX_CONFLICTS {
            let Some(existing) = self.get(&api).await? else {
                // Deleted behind our back: creating it again keeps the renewed identity.
                match api.create(&PostParams::default(), &self.new_secret(identity)).await {
                    Ok(_) => return Ok(()),
                    Err(e) if crate::kube::is_status(&e, 409) => continue,
                    Err(e) => return Err(self.kube_error("create", &e)),
                }
            };
            if self.update(&api, existing, identity).await? {
                return Ok(());
            }
        }
        Err(self.too_many_conflicts())
    }

    async fn remove_identity(&self, gateway_id: &str) -> Result<(), StoreError> {
        let api = self.api().await?;
        for _ in 0..MAX_CONFLICTS {
            let Some(mut existing) = self.get(&api).await? else {
                return Ok(());
            };
            let stored = existing
                .data
                .as_ref()
                .and_then(|d| d.get(KEY_GATEWAY_ID))
                .map(|b| String::from_utf8_lossy(&b.0).trim().to_owned());
            if stored.as_deref() != Some(gateway_id) {
                return Ok(());
            }
            if let Some(data) = existing.data.as_mut() {
                for key in OWN_KEYS {
                    data.remove(key);
                }
            }
            if self.put(&api, existing).await? {
                return Ok(());
            }
        }
        Err(self.too_many_conflicts())
    }
}

fn fill(data: &mut BTreeMap<String, ByteString>, identity: &Identity) {
    let mut set = |k: &str, v: &str| {
        data.insert(k.to_owned(), ByteString(v.as_bytes().to_vec()));
    };
    set(KEY_GATEWAY_ID, &identity.gateway_id);
    set(KEY_NAME, &identity.name);
    set(KEY_ENVIRONMENTS, &identity.environments.join("\n"));
    set(KEY_HUB_URL, &identity.hub_url);
    set(KEY_TLS_KEY, identity.key_pem.expose());
    set(KEY_TLS_CRT, &identity.cert_pem);
    set(KEY_CA_CRT, &identity.ca_pem);
}

impl IdentityStore for SecretStore {
    fn describe(&self) -> String {
        format!("secret:{}/{}", self.namespace, self.name)
    }

    fn instance(&self) -> String {
        // A copy of the Secret in another cluster (or namespace) is another object with another
        // UID; replicas sharing this Secret share it.
        self.uid.lock().ok().and_then(|u| u.clone()).unwrap_or_default()
    }

    fn load(&self) -> BoxFuture<'_, Result<Option<Identity>, StoreError>> {
        Box::pin(async move {
            let api = self.api().await?;
            match self.get(&api).await? {
                Some(secret) => self.decode(&secret),
                None => Ok(None),
            }
        })
    }

    fn create<'a>(&'a self, identity: &'a Identity) -> BoxFuture<'a, Result<Identity, StoreError>> {
        Box::pin(self.create_identity(identity))
    }

    fn replace<'a>(&'a self, identity: &'a Identity) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.replace_identity(identity))
    }

    fn remove<'a>(&'a self, gateway_id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.remove_identity(gateway_id))
    }
}
