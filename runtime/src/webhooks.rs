//! Webhooks: tenants' endpoints, the durable outbox of events, and the delivery worker.
//!
//! An event is written to the outbox (`webhook_messages`, one `webhook_deliveries` row per
//! subscribed endpoint) by [`enqueue`], inside the same transaction as the change it reports,
//! so an event exists exactly when the change committed and survives restarts. The delivery
//! worker ([`spawn_worker`]) takes due deliveries under a lease (so two workers or nodes never
//! send one delivery at once), POSTs the payload signed per the Standard Webhooks scheme
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`), and
//! retries failures with exponential backoff and jitter for `webhooks.retry_window_seconds`
//! from the event. Deliveries of one endpoint with the same ordering key (a conversation id)
//! are sent in order: a later one waits until the earlier one is delivered or failed for good.
//!
//! An endpoint is disabled (audited with actor `system`) when one of its deliveries fails for
//! good and the endpoint accepted no delivery since that delivery's event was created — it
//! failed everything for the whole retry window; a tenant re-enables it with `PATCH`. Target URLs resolving to loopback, private, link-local, metadata or other
//! non-public addresses are refused at registration and at every attempt, and the attempt
//! connects to exactly the addresses checked (no second lookup, so DNS rebinding cannot
//! bypass the check), unless `webhooks.allow_private_targets` is set.
//!
//! Owns: endpoint administration (`/admin/v1/webhooks`), signing secrets (sealed at rest with
//! the node's secrets key, shown once), the outbox, the delivery log, the worker.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use parley_models::net::forbidden_address;
use rand::{Rng, RngCore};
use sha2::Sha256;
use sqlx::AnyConnection;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::{self, AuditRecord};
use crate::auth::{Permission, Principal};
use crate::error::{Error, Result};
use crate::page::{Page, PageRequest};
use crate::{storage, Runtime};

/// The events a tenant can subscribe an endpoint to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Event {
    /// A conversation was created (chat socket or OpenAI-compatible request).
    ConversationStarted,
    /// A chat connection to a conversation closed (see `docs/webhooks.md`).
    ConversationEnded,
    /// A visitor message or an answer was stored.
    MessageCreated,
    /// A document was published to a knowledge base (created or replaced).
    DocumentIndexed,
    /// A data export is ready to download.
    ExportReady,
    /// A data erasure request completed.
    ErasureCompleted,
    /// A voice call started.
    CallStarted,
    /// A voice call ended.
    CallEnded,
}

impl Event {
    pub const ALL: [Event; 8] = [
        Event::ConversationStarted,
        Event::ConversationEnded,
        Event::MessageCreated,
        Event::DocumentIndexed,
        Event::ExportReady,
        Event::ErasureCompleted,
        Event::CallStarted,
        Event::CallEnded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::ConversationStarted => "conversation.started",
            Event::ConversationEnded => "conversation.ended",
            Event::MessageCreated => "message.created",
            Event::DocumentIndexed => "document.indexed",
            Event::ExportReady => "export.ready",
            Event::ErasureCompleted => "erasure.completed",
            Event::CallStarted => "call.started",
            Event::CallEnded => "call.ended",
        }
    }

    pub fn parse(text: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|event| event.as_str() == text)
    }
}

/// A tenant's webhook endpoint (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub url: String,
    pub description: String,
    pub event_types: Vec<Event>,
    pub enabled: bool,
    /// Why deliveries stopped, when `enabled` is false.
    pub disabled_reason: Option<String>,
    /// The first failed attempt since the last successful one.
    pub failing_since: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// An endpoint just created or whose secret was just rotated, with its signing secret
/// (`whsec_…`), shown only this once.
#[derive(Debug, Clone)]
pub struct EndpointWithSecret {
    pub endpoint: WebhookEndpoint,
    pub secret: String,
}

/// What a tenant asks for when registering an endpoint.
#[derive(Debug, Clone, Default)]
pub struct NewEndpoint {
    pub url: String,
    pub description: Option<String>,
    pub event_types: Vec<String>,
}

/// A partial change; absent fields keep their value.
#[derive(Debug, Clone, Default)]
pub struct EndpointUpdate {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    /// `true` re-enables a disabled endpoint; `false` pauses deliveries.
    pub enabled: Option<bool>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Not delivered yet; attempted again at `next_attempt_at`.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Every attempt in the retry window failed.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        [DeliveryStatus::Pending, DeliveryStatus::Delivered, DeliveryStatus::Failed]
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

/// One event's delivery to one endpoint: an entry of the endpoint's delivery log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    /// The event's `webhook-id` (`msg_…`), the same for every endpoint and attempt.
    pub message_id: String,
    pub event_type: String,
    pub ordering_key: Option<String>,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_at: Option<OffsetDateTime>,
    pub last_attempt_at: Option<OffsetDateTime>,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub finished_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
}

pub(crate) const SECRET_PURPOSE: &str = "webhook-secret";
const SECRET_PREFIX: &str = "whsec_";
const SECRET_BYTES: usize = 32;
/// How long the secret replaced by a rotation keeps signing beside the new one.
const PREVIOUS_SECRET_MILLIS: i64 = 24 * 3_600_000;
const MAX_URL_LEN: usize = 2_048;
const MAX_DESCRIPTION_CHARS: usize = 500;
const MAX_ENDPOINTS_PER_TENANT: i64 = 100;
/// Days a finished delivery stays in the log.
const LOG_DAYS: i64 = 30;
/// How often the worker prunes the log, and rows deleted per transaction.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3_600);
const PRUNE_BATCH: i64 = 500;
/// Longest error text kept in the delivery log.
const MAX_ERROR_CHARS: usize = 500;

pub(crate) fn secret_context(tenant_id: Uuid, endpoint_id: Uuid) -> String {
    format!("{tenant_id}/{endpoint_id}")
}

/// A fresh signing secret: `whsec_` and the base64 of 32 random bytes.
fn new_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// The Standard Webhooks signature of one request: `v1,` and the base64 HMAC-SHA256, keyed by
/// the base64-decoded part of the secret after `whsec_`, of `"{id}.{timestamp}.{body}"`.
pub fn sign(secret: &str, message_id: &str, timestamp: i64, body: &str) -> Result<String> {
    let key = STANDARD
        .decode(secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret))
        .map_err(|_| Error::Corrupt("a webhook secret is not base64".to_owned()))?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key)
        .map_err(|_| Error::Corrupt("a webhook secret cannot key HMAC".to_owned()))?;
    mac.update(format!("{message_id}.{timestamp}.{body}").as_bytes());
    Ok(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}

/// A target URL checked for form (http or https, a host, no credentials).
fn parse_url(url: &str) -> Result<reqwest::Url> {
    let url = url.trim();
    if url.is_empty() || url.len() > MAX_URL_LEN {
        return Err(Error::invalid("url", format!("must be 1 to {MAX_URL_LEN} characters")));
    }
    let parsed = reqwest::Url::parse(url).map_err(|error| Error::invalid("url", format!("is not a URL: {error}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::invalid("url", "must use http or https"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Error::invalid("url", "must not contain credentials (user:password@)"));
    }
    if parsed.host().is_none() {
        return Err(Error::invalid("url", "must name a host"));
    }
    Ok(parsed)
}

/// The addresses a delivery to `url` may connect to: every address its host resolves to, all
/// of which must be public unless private targets are allowed.
async fn resolve_target(url: &reqwest::Url, allow_private: bool, within: Duration) -> Result<Vec<SocketAddr>> {
    let port = url.port_or_known_default().unwrap_or(443);
    let addresses: Vec<SocketAddr> = match domain_of(url) {
        None => match url.host_str().map(|host| host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>()) {
            Some(Ok(ip)) => vec![SocketAddr::new(ip, port)],
            _ => return Err(Error::invalid("url", "must name a host")),
        },
        Some(domain) => tokio::time::timeout(within, tokio::net::lookup_host((domain, port)))
            .await
            .map_err(|_| Error::invalid("url", format!("the host {domain:?} did not resolve within {within:?}")))?
            .map_err(|error| Error::invalid("url", format!("the host {domain:?} does not resolve: {error}")))?
            .collect(),
    };
    if addresses.is_empty() {
        return Err(Error::invalid("url", "the host resolves to no address"));
    }
    if !allow_private {
        for address in &addresses {
            if let Some(reason) = forbidden_address(address.ip()) {
                return Err(Error::invalid(
                    "url",
                    format!(
                        "resolves to {}, {reason}; webhooks may only reach public addresses \
                         (the operator can allow private targets with webhooks.allow_private_targets)",
                        address.ip()
                    ),
                ));
            }
        }
    }
    Ok(addresses)
}

/// The URL's host when it is a name rather than an IP address literal.
fn domain_of(url: &reqwest::Url) -> Option<&str> {
    let host = url.host_str()?;
    let literal = host.starts_with('[') || host.parse::<Ipv4Addr>().is_ok();
    (!literal).then_some(host)
}

/// How long a name lookup may take: the connection timeout.
fn resolve_timeout(runtime: &Runtime) -> Duration {
    Duration::from_secs(runtime.settings().webhooks.connect_timeout_seconds)
}

fn validate_description(description: Option<String>) -> Result<String> {
    let description = description.unwrap_or_default().trim().to_owned();
    if description.chars().count() > MAX_DESCRIPTION_CHARS || description.chars().any(char::is_control) {
        return Err(Error::invalid(
            "description",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters without control characters"),
        ));
    }
    Ok(description)
}

fn validate_event_types(names: &[String]) -> Result<Vec<Event>> {
    if names.is_empty() {
        return Err(Error::invalid("event_types", "must name at least one event type"));
    }
    let mut events = BTreeSet::new();
    for name in names {
        let event = Event::parse(name).ok_or_else(|| {
            let known: Vec<&str> = Event::ALL.iter().map(|event| event.as_str()).collect();
            Error::invalid("event_types", format!("unknown event type {name:?}; known: {}", known.join(", ")))
        })?;
        events.insert(event);
    }
    Ok(events.into_iter().collect())
}

/// Registers an endpoint. The signing secret is returned here only.
pub async fn create(runtime: &Runtime, principal: &Principal, new: NewEndpoint) -> Result<EndpointWithSecret> {
    principal.require(Permission::ManageWebhooks)?;
    let url = parse_url(&new.url)?;
    let description = validate_description(new.description)?;
    let event_types = validate_event_types(&new.event_types)?;
    resolve_target(&url, runtime.settings().webhooks.allow_private_targets, resolve_timeout(runtime)).await?;
    let now = storage::now();
    let endpoint = WebhookEndpoint {
        id: Uuid::now_v7(),
        tenant_id: principal.tenant_id,
        url: url.to_string(),
        description,
        event_types,
        enabled: true,
        disabled_reason: None,
        failing_since: None,
        created_at: now,
        updated_at: now,
    };
    let secret = new_secret();
    let sealed =
        runtime.secrets().seal(SECRET_PURPOSE, &secret_context(endpoint.tenant_id, endpoint.id), secret.as_bytes());
    let mut transaction = runtime.database().begin().await?;
    storage::tenants::lock(&mut transaction, runtime.database().backend(), principal.tenant_id).await?;
    if storage::webhooks::count_endpoints(&mut transaction, principal.tenant_id).await? >= MAX_ENDPOINTS_PER_TENANT {
        return Err(Error::Conflict(format!("a tenant may have at most {MAX_ENDPOINTS_PER_TENANT} webhook endpoints")));
    }
    storage::webhooks::insert_endpoint(&mut transaction, &endpoint, &sealed).await?;
    let record = AuditRecord::by_key(principal, "webhook.create", "webhook", endpoint.id.to_string())
        .with_details(serde_json::json!({ "url": endpoint.url, "event_types": event_names(&endpoint.event_types) }));
    audit::record(&mut transaction, record).await?;
    transaction.commit().await?;
    Ok(EndpointWithSecret { endpoint, secret })
}

fn event_names(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|event| event.as_str()).collect()
}

/// The tenant's endpoints, oldest first.
pub async fn list(runtime: &Runtime, principal: &Principal, page: PageRequest) -> Result<Page<WebhookEndpoint>> {
    principal.require(Permission::ReadWebhooks)?;
    let mut connection = runtime.database().pool().acquire().await?;
    let rows = storage::webhooks::list_endpoints(&mut connection, principal.tenant_id, &page).await?;
    Ok(Page::from_rows(rows, &page, |endpoint| endpoint.id))
}

pub async fn get(runtime: &Runtime, principal: &Principal, endpoint_id: Uuid) -> Result<WebhookEndpoint> {
    principal.require(Permission::ReadWebhooks)?;
    let mut connection = runtime.database().pool().acquire().await?;
    storage::webhooks::get_endpoint(&mut connection, principal.tenant_id, endpoint_id)
        .await?
        .ok_or(Error::NotFound { resource: "webhook" })
}

/// Changes an endpoint's URL, description, event types or state. Enabling a disabled endpoint
/// clears its failure state; its pending deliveries are attempted again.
pub async fn update(
    runtime: &Runtime,
    principal: &Principal,
    endpoint_id: Uuid,
    update: EndpointUpdate,
) -> Result<WebhookEndpoint> {
    principal.require(Permission::ManageWebhooks)?;
    let url = match &update.url {
        Some(url) => {
            let parsed = parse_url(url)?;
            resolve_target(&parsed, runtime.settings().webhooks.allow_private_targets, resolve_timeout(runtime))
                .await?;
            Some(parsed.to_string())
        }
        None => None,
    };
    let description = match update.description {
        Some(description) => Some(validate_description(Some(description))?),
        None => None,
    };
    let event_types = match &update.event_types {
        Some(names) => Some(validate_event_types(names)?),
        None => None,
    };
    let mut transaction = runtime.database().begin().await?;
    let mut endpoint = storage::webhooks::get_endpoint(&mut transaction, principal.tenant_id, endpoint_id)
        .await?
        .ok_or(Error::NotFound { resource: "webhook" })?;
    let before = endpoint.clone();
    if let Some(url) = url {
        endpoint.url = url;
    }
    if let Some(description) = description {
        endpoint.description = description;
    }
    if let Some(event_types) = event_types {
        endpoint.event_types = event_types;
    }
    match update.enabled {
        Some(true) => {
            endpoint.enabled = true;
            endpoint.disabled_reason = None;
            endpoint.failing_since = None;
        }
        Some(false) if endpoint.enabled => {
            endpoint.enabled = false;
            endpoint.disabled_reason = Some("disabled by the tenant".to_owned());
        }
        _ => {}
    }
    endpoint.updated_at = storage::now();
    storage::webhooks::update_endpoint(&mut transaction, &endpoint).await?;
    if update.enabled == Some(true) && !before.enabled {
        storage::webhooks::retry_pending_now(&mut transaction, principal.tenant_id, endpoint.id, storage::now_millis())
            .await?;
    }
    let mut changed = Vec::new();
    if before.url != endpoint.url {
        changed.push("url");
    }
    if before.description != endpoint.description {
        changed.push("description");
    }
    if before.event_types != endpoint.event_types {
        changed.push("event_types");
    }
    if before.enabled != endpoint.enabled {
        changed.push("enabled");
    }
    let record = AuditRecord::by_key(principal, "webhook.update", "webhook", endpoint.id.to_string())
        .with_details(serde_json::json!({ "changed": changed, "enabled": endpoint.enabled }));
    audit::record(&mut transaction, record).await?;
    transaction.commit().await?;
    Ok(endpoint)
}

/// Deletes an endpoint with its delivery log; undelivered events to it are dropped.
pub async fn delete(runtime: &Runtime, principal: &Principal, endpoint_id: Uuid) -> Result<()> {
    principal.require(Permission::ManageWebhooks)?;
    let mut transaction = runtime.database().begin().await?;
    if !storage::webhooks::delete_endpoint(&mut transaction, principal.tenant_id, endpoint_id).await? {
        return Err(Error::NotFound { resource: "webhook" });
    }
    audit::record(
        &mut transaction,
        AuditRecord::by_key(principal, "webhook.delete", "webhook", endpoint_id.to_string()),
    )
    .await?;
    transaction.commit().await?;
    Ok(())
}

/// Replaces the endpoint's signing secret and returns the new one (shown only here). For 24
/// hours requests carry signatures under both the new and the previous secret, so a receiver
/// can switch without losing events.
pub async fn rotate_secret(runtime: &Runtime, principal: &Principal, endpoint_id: Uuid) -> Result<EndpointWithSecret> {
    principal.require(Permission::ManageWebhooks)?;
    let tenant_id = principal.tenant_id;
    let secret = new_secret();
    let context = secret_context(tenant_id, endpoint_id);
    let sealed = runtime.secrets().seal(SECRET_PURPOSE, &context, secret.as_bytes());
    let now = storage::now_millis();
    let mut transaction = runtime.database().begin().await?;
    let (current, _, _) = storage::webhooks::secrets(&mut transaction, tenant_id, endpoint_id)
        .await?
        .ok_or(Error::NotFound { resource: "webhook" })?;
    storage::webhooks::set_secret(
        &mut transaction,
        tenant_id,
        endpoint_id,
        &sealed,
        &current,
        now + PREVIOUS_SECRET_MILLIS,
        now,
    )
    .await?;
    let endpoint = storage::webhooks::get_endpoint(&mut transaction, tenant_id, endpoint_id)
        .await?
        .ok_or(Error::NotFound { resource: "webhook" })?;
    audit::record(
        &mut transaction,
        AuditRecord::by_key(principal, "webhook.rotate_secret", "webhook", endpoint_id.to_string()),
    )
    .await?;
    transaction.commit().await?;
    Ok(EndpointWithSecret { endpoint, secret })
}

/// The endpoint's delivery log, newest first.
pub async fn deliveries(
    runtime: &Runtime,
    principal: &Principal,
    endpoint_id: Uuid,
    page: PageRequest,
) -> Result<Page<Delivery>> {
    principal.require(Permission::ReadWebhooks)?;
    let mut connection = runtime.database().pool().acquire().await?;
    if storage::webhooks::get_endpoint(&mut connection, principal.tenant_id, endpoint_id).await?.is_none() {
        return Err(Error::NotFound { resource: "webhook" });
    }
    let rows = storage::webhooks::list_deliveries(&mut connection, principal.tenant_id, endpoint_id, &page).await?;
    Ok(Page::from_rows(rows, &page, |delivery| delivery.id))
}

/// Writes a conversation's event to the outbox in a transaction of its own, for events that
/// report no other change (a call or a connection ending), ordered by the conversation.
pub async fn enqueue_for_conversation(
    runtime: &Runtime,
    conversation: &crate::chat::conversations::Conversation,
    event: Event,
    data: serde_json::Value,
) -> Result<()> {
    let mut transaction = runtime.database().begin().await?;
    let ordering_key = conversation.id.to_string();
    enqueue(&mut transaction, conversation.tenant_id, event, Some(&ordering_key), data).await?;
    transaction.commit().await?;
    Ok(())
}

/// Writes an event to the outbox for every enabled endpoint of the tenant subscribed to it.
/// Call it inside the transaction of the change the event reports. With no subscribed
/// endpoint it costs one indexed read and writes nothing. `ordering_key` (a conversation id)
/// keeps the events of one conversation in order per endpoint; `data` is the payload's `data`.
pub async fn enqueue(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    event: Event,
    ordering_key: Option<&str>,
    data: serde_json::Value,
) -> Result<()> {
    let endpoints = storage::webhooks::enabled_endpoints(connection, tenant_id).await?;
    let targets: Vec<Uuid> = endpoints
        .into_iter()
        .filter(|(_, events)| events.contains(&event))
        .map(|(endpoint_id, _)| endpoint_id)
        .collect();
    if targets.is_empty() {
        return Ok(());
    }
    let now = storage::now();
    let message_id = format!("msg_{}", Uuid::now_v7().simple());
    let payload = serde_json::json!({
        "type": event.as_str(),
        "timestamp": rfc3339(now),
        "data": data,
    })
    .to_string();
    let now_millis = storage::to_millis(now);
    storage::webhooks::insert_message(
        connection,
        tenant_id,
        &message_id,
        event.as_str(),
        &payload,
        ordering_key,
        now_millis,
    )
    .await?;
    for endpoint_id in targets {
        storage::webhooks::insert_delivery(
            connection,
            &storage::webhooks::NewDelivery {
                id: Uuid::now_v7(),
                tenant_id,
                endpoint_id,
                message_id: &message_id,
                event_type: event.as_str(),
                ordering_key,
                created_at: now_millis,
            },
        )
        .await?;
    }
    Ok(())
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

/// The `data` of `conversation.started` and `conversation.ended`.
pub(crate) fn conversation_data(conversation: &crate::chat::conversations::Conversation) -> serde_json::Value {
    serde_json::json!({
        "conversation_id": conversation.id,
        "agent_id": conversation.agent_id,
        "channel": conversation.channel.as_str(),
        "visitor_id": conversation.visitor_id,
        "started_at": rfc3339(conversation.started_at),
    })
}

/// The `data` of `message.created`: the message as stored, so its `text` is what the agent's
/// storage tier kept (redacted, or `null` when no text is stored).
pub(crate) fn message_data(agent_id: Uuid, message: &crate::chat::conversations::StoredMessage) -> serde_json::Value {
    serde_json::json!({
        "message_id": message.id,
        "conversation_id": message.conversation_id,
        "agent_id": agent_id,
        "role": message.role.as_str(),
        "text": message.text,
        "reply_to": message.reply_to,
        "finish_reason": message.finish_reason,
        "created_at": rfc3339(message.created_at),
    })
}

/// The wait before the attempt after `attempts` failed ones: the initial delay doubled per
/// earlier failure, at most the maximum, scaled by `jitter` in 0.8..1.2 (then capped again).
pub fn retry_delay(attempts: u32, initial_ms: u64, max_ms: u64, jitter: f64) -> Duration {
    let exponent = attempts.saturating_sub(1).min(40);
    let base = initial_ms.saturating_mul(1u64 << exponent).min(max_ms);
    let jittered = (base as f64 * jitter.clamp(0.8, 1.2)) as u64;
    Duration::from_millis(jittered.min(max_ms).max(1))
}

/// The delivery worker of this node; stop it with [`WorkerHandle::stop`].
#[derive(Debug)]
pub struct WorkerHandle {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl WorkerHandle {
    /// Stops taking deliveries and waits for attempts in flight (each bounded by
    /// `webhooks.timeout_seconds`); an interrupted attempt is retried when its lease ends.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

/// Starts the delivery worker: it looks for due deliveries every `webhooks.poll_interval_ms`.
pub fn spawn_worker(runtime: &Runtime) -> WorkerHandle {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let runtime = runtime.clone();
    let task = tokio::spawn(async move {
        let owner = Uuid::new_v4().to_string();
        let poll = Duration::from_millis(runtime.settings().webhooks.poll_interval_ms);
        let mut last_prune: Option<std::time::Instant> = None;
        loop {
            if *stopped.borrow() {
                break;
            }
            if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_INTERVAL) {
                last_prune = Some(std::time::Instant::now());
                if let Err(error) = prune(&runtime).await {
                    tracing::error!(error = %error, "pruning the webhook delivery log failed; retrying later");
                }
            }
            let full = match deliver_due(&runtime, &owner).await {
                Ok(full) => full,
                Err(error) => {
                    tracing::error!(error = %error, "webhook delivery round failed; retrying");
                    false
                }
            };
            if !full {
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    changed = stopped.changed() => {
                        // The handle is gone: nobody can stop the worker any more, so it stops.
                        if changed.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    });
    WorkerHandle { stop, task }
}

/// Deletes the delivery log's entries finished more than `LOG_DAYS` ago, in batches.
async fn prune(runtime: &Runtime) -> Result<()> {
    let cutoff = storage::now_millis() - LOG_DAYS * 86_400_000;
    loop {
        let mut transaction = runtime.database().begin().await?;
        let deleted = storage::webhooks::prune_finished(&mut transaction, cutoff, PRUNE_BATCH).await?;
        transaction.commit().await?;
        if deleted < PRUNE_BATCH as u64 {
            return Ok(());
        }
    }
}

/// Attempts one batch of due deliveries concurrently. Returns true when the batch was full
/// (more may be due).
async fn deliver_due(runtime: &Runtime, owner: &str) -> Result<bool> {
    let settings = &runtime.settings().webhooks;
    let limit = settings.max_concurrent_deliveries;
    let now = storage::now_millis();
    let due = {
        let mut connection = runtime.database().pool().acquire().await?;
        storage::webhooks::due_deliveries(&mut connection, now, limit as i64).await?
    };
    let full = due.len() >= limit;
    let lease_until = now + (settings.timeout_seconds as i64 + 30) * 1_000;
    let mut claimed = Vec::new();
    for (tenant_id, delivery_id) in due {
        let mut connection = runtime.database().pool().acquire().await?;
        if storage::webhooks::claim(&mut connection, tenant_id, delivery_id, owner, now, lease_until).await? {
            claimed.push((tenant_id, delivery_id));
        }
    }
    let attempts = claimed.into_iter().map(|(tenant_id, delivery_id)| async move {
        if let Err(error) = attempt(runtime, owner, tenant_id, delivery_id).await {
            tracing::error!(error = %error, %tenant_id, %delivery_id, "webhook attempt could not be recorded");
        }
    });
    futures::future::join_all(attempts).await;
    Ok(full)
}

/// What one attempt ended with.
enum Outcome {
    Delivered { status: u16 },
    Failed { status: Option<u16>, error: String },
}

async fn attempt(runtime: &Runtime, owner: &str, tenant_id: Uuid, delivery_id: Uuid) -> Result<()> {
    let job = {
        let mut connection = runtime.database().pool().acquire().await?;
        storage::webhooks::job(&mut connection, tenant_id, delivery_id).await?
    };
    let Some(job) = job else { return Ok(()) };
    let outcome = send(runtime, &job).await;
    let now = storage::now_millis();
    let settings = &runtime.settings().webhooks;
    let mut transaction = runtime.database().begin().await?;
    match outcome {
        Outcome::Delivered { status } => {
            storage::webhooks::record_delivered(&mut transaction, tenant_id, &job, owner, status, now).await?;
        }
        Outcome::Failed { status, error } => {
            let error: String = error.chars().take(MAX_ERROR_CHARS).collect();
            let attempts = job.attempts + 1;
            let window = settings.retry_window_seconds as i64 * 1_000;
            let final_failure = now >= job.message_created_at + window;
            let next = if final_failure {
                None
            } else {
                let jitter = rand::thread_rng().gen_range(0.8..1.2);
                let delay = retry_delay(attempts, settings.retry_initial_delay_ms, settings.retry_max_delay_ms, jitter);
                Some(now + delay.as_millis() as i64)
            };
            storage::webhooks::record_failed(&mut transaction, tenant_id, &job, owner, status, &error, next, now)
                .await?;
            if final_failure {
                // Nothing accepted since this event was created: the endpoint has failed for
                // the whole retry window.
                let answered = storage::webhooks::delivered_since(
                    &mut transaction,
                    tenant_id,
                    job.endpoint_id,
                    job.message_created_at,
                )
                .await?;
                if !answered {
                    let reason = format!(
                        "no delivery succeeded for {} seconds; last error: {error}",
                        settings.retry_window_seconds
                    );
                    let disabled =
                        storage::webhooks::disable(&mut transaction, tenant_id, job.endpoint_id, &reason, now).await?;
                    if disabled {
                        let record = AuditRecord::by_system(
                            tenant_id,
                            "webhook.disable",
                            "webhook",
                            job.endpoint_id.to_string(),
                        )
                        .with_details(serde_json::json!({ "reason": reason }));
                        audit::record(&mut transaction, record).await?;
                        tracing::warn!(%tenant_id, endpoint_id = %job.endpoint_id, "webhook endpoint disabled after persistent failure");
                    }
                }
            }
        }
    }
    transaction.commit().await?;
    Ok(())
}

/// Sends one attempt: checks the target again, connects only to the checked addresses, and
/// signs the body with the endpoint's secret (and the previous one while it lasts).
async fn send(runtime: &Runtime, job: &storage::webhooks::Job) -> Outcome {
    let settings = &runtime.settings().webhooks;
    let failed = |error: String| Outcome::Failed { status: None, error };
    let url = match parse_url(&job.url) {
        Ok(url) => url,
        Err(error) => return failed(error.to_string()),
    };
    let addresses = match resolve_target(&url, settings.allow_private_targets, resolve_timeout(runtime)).await {
        Ok(addresses) => addresses,
        Err(Error::InvalidInput { reason, .. }) => return failed(format!("target refused: {reason}")),
        Err(error) => return failed(error.to_string()),
    };
    let context = secret_context(job.tenant_id, job.endpoint_id);
    let mut signatures = Vec::new();
    let timestamp = OffsetDateTime::now_utc().unix_timestamp();
    let now = storage::now_millis();
    let mut sealed = vec![job.secret_sealed.as_str()];
    if let (Some(previous), Some(expires)) = (&job.previous_secret_sealed, job.previous_secret_expires_at) {
        if expires > now {
            sealed.push(previous.as_str());
        }
    }
    for sealed in sealed {
        let signature = runtime
            .secrets()
            .open(SECRET_PURPOSE, &context, sealed)
            .map_err(Error::from)
            .and_then(|bytes| String::from_utf8(bytes).map_err(|_| Error::Corrupt("webhook secret".to_owned())))
            .and_then(|secret| sign(&secret, &job.message_id, timestamp, &job.payload));
        match signature {
            Ok(signature) => signatures.push(signature),
            Err(error) => return failed(format!("cannot sign: {error}")),
        }
    }
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(settings.connect_timeout_seconds))
        .timeout(Duration::from_secs(settings.timeout_seconds))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("Parley-Webhooks/", env!("CARGO_PKG_VERSION")));
    if let Some(domain) = domain_of(&url) {
        builder = builder.resolve_to_addrs(domain, &addresses);
    }
    let client = match builder.build() {
        Ok(client) => client,
        Err(error) => return failed(format!("cannot build the HTTP client: {error}")),
    };
    let request = client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &job.message_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signatures.join(" "))
        .body(job.payload.clone());
    match request.send().await {
        Ok(response) => {
            // The body is never read: only the status counts, and an endpoint cannot make the
            // node buffer anything.
            let status = response.status();
            drop(response);
            if status.is_success() {
                Outcome::Delivered { status: status.as_u16() }
            } else {
                Outcome::Failed { status: Some(status.as_u16()), error: format!("the endpoint answered {status}") }
            }
        }
        Err(error) if error.is_timeout() => failed(format!("no answer within {} seconds", settings.timeout_seconds)),
        Err(error) if error.is_connect() => failed(format!("cannot connect: {}", error_chain(&error))),
        Err(error) => failed(format!("request failed: {}", error_chain(&error))),
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_test_vector() {
        let signature = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            r#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(sign("whsec_not base64!", "msg", 1, "{}").is_err());
    }

    #[test]
    fn new_secrets_are_prefixed_random_and_sign() {
        let (first, second) = (new_secret(), new_secret());
        assert_ne!(first, second);
        assert!(first.starts_with("whsec_"));
        assert_eq!(STANDARD.decode(&first[6..]).unwrap().len(), SECRET_BYTES);
        assert!(sign(&first, "msg_x", 1, "{}").unwrap().starts_with("v1,"));
    }

    #[test]
    fn urls_are_checked_for_form() {
        assert!(parse_url("https://example.com/hook").is_ok());
        assert!(parse_url("http://example.com:8080/hook?x=1").is_ok());
        for bad in ["", "ftp://example.com/", "https://user:pass@example.com/", "not a url", "file:///etc/passwd"] {
            assert!(parse_url(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(parse_url(&format!("https://example.com/{}", "a".repeat(MAX_URL_LEN))).is_err());
    }

    #[tokio::test]
    async fn private_targets_are_refused_unless_allowed() {
        let url = parse_url("http://127.0.0.1:9/hook").unwrap();
        let error = resolve_target(&url, false, Duration::from_secs(5)).await.unwrap_err();
        assert!(error.to_string().contains("loopback"), "{error}");
        assert_eq!(
            resolve_target(&url, true, Duration::from_secs(5)).await.unwrap(),
            vec!["127.0.0.1:9".parse().unwrap()]
        );
        let url = parse_url("http://localhost:9/hook").unwrap();
        assert!(resolve_target(&url, false, Duration::from_secs(5)).await.is_err());
        let url = parse_url("http://[::ffff:169.254.169.254]/latest").unwrap();
        assert!(resolve_target(&url, false, Duration::from_secs(5))
            .await
            .unwrap_err()
            .to_string()
            .contains("metadata"));
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_maximum() {
        assert_eq!(retry_delay(1, 5_000, 3_600_000, 1.0), Duration::from_secs(5));
        assert_eq!(retry_delay(2, 5_000, 3_600_000, 1.0), Duration::from_secs(10));
        assert_eq!(retry_delay(5, 5_000, 3_600_000, 1.0), Duration::from_secs(80));
        assert_eq!(retry_delay(30, 5_000, 3_600_000, 1.0), Duration::from_secs(3_600));
        assert_eq!(retry_delay(3, 5_000, 3_600_000, 0.8), Duration::from_secs(16));
        assert_eq!(retry_delay(3, 5_000, 3_600_000, 1.2), Duration::from_secs(24));
        assert_eq!(retry_delay(30, 5_000, 3_600_000, 1.2), Duration::from_secs(3_600));
        assert_eq!(retry_delay(u32::MAX, 5_000, 3_600_000, 1.0), Duration::from_secs(3_600));
        // The schedule covers a day in a bounded number of attempts.
        let mut total = Duration::ZERO;
        let mut attempts = 0;
        while total < Duration::from_secs(86_400) {
            attempts += 1;
            total += retry_delay(attempts, 5_000, 3_600_000, 1.0);
        }
        assert!(attempts < 40, "{attempts}");
    }

    #[test]
    fn event_names_round_trip() {
        for event in Event::ALL {
            assert_eq!(Event::parse(event.as_str()), Some(event));
        }
        assert_eq!(Event::parse("message.deleted"), None);
    }
}
