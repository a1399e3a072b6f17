//! WebSocket chat at `/v1/agents/{public_id}/chat`, speaking the protocol in
//! `docs/chat-protocol.md`.
//!
//! Each connection has one reader (this task) and one writer task fed by a bounded queue: a
//! client that does not read its frames fills the queue and is disconnected, so a slow client
//! cannot grow server memory. Turns run in the runtime, detached from the connection; a
//! forwarding task per turn turns their events into frames.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use parley_runtime::chat::conversations::Channel;
use parley_runtime::chat::conversations::{MessageRole, StoredMessage};
use parley_runtime::chat::engine::{self, Submitted, TurnEvent, TurnSubscription, UserMessage};
use parley_runtime::chat::session::{self, IdentityClaim, Session, SessionRequest};
use parley_runtime::Error;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::chat::{citations_json, own_origin, timestamp};
use crate::problem::ApiError;
use crate::AppState;

/// Invalid frames tolerated per minute before the connection is closed.
const MAX_ERRORS_PER_MINUTE: usize = 20;
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;
/// How long a closing connection waits for its last frames to go out and the client's close.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The handshake: the agent must exist and the browser's origin must be allowed.
pub async fn upgrade(
    State(state): State<AppState>,
    Path(public_id): Path<String>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let agent = match session::find_agent(&state.runtime, &public_id).await {
        Ok(agent) => agent,
        Err(error) => return ApiError::from(error).into_response(),
    };
    let origin = headers.get(header::ORIGIN).and_then(|value| value.to_str().ok());
    let own = own_origin(&state, &headers);
    if !session::origin_allowed(&agent, origin, own.as_deref()) {
        return ApiError::new(StatusCode::FORBIDDEN, "origin_not_allowed", "this origin may not chat with this agent")
            .into_response();
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return ApiError::new(StatusCode::BAD_REQUEST, "websocket_required", rejection.body_text()).into_response()
        }
    };
    let max_frame = state.runtime.settings().chat.max_frame_bytes;
    upgrade
        .max_frame_size(max_frame)
        .max_message_size(max_frame)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .on_upgrade(move |socket| async move { Connection::run(state, agent, socket).await })
}

/// What the writer task sends.
enum Outgoing {
    Frame(String),
    Ping,
    Close(u16, &'static str),
}

/// The writer side of a connection: a bounded queue that never blocks the sender.
#[derive(Clone)]
struct Outbox {
    queue: mpsc::Sender<Outgoing>,
    /// Set when the client stopped reading: the connection ends.
    overflow: tokio::sync::watch::Sender<bool>,
}

impl Outbox {
    fn send(&self, frame: Value) {
        if self.queue.try_send(Outgoing::Frame(frame.to_string())).is_err() {
            self.overflow.send_replace(true);
        }
    }

    fn error(&self, code: &str, message: &str, client_message_id: Option<&str>, fatal: bool) {
        let mut frame = json!({ "type": "error", "code": code, "message": message, "fatal": fatal });
        if let Some(id) = client_message_id {
            frame["client_message_id"] = json!(id);
        }
        self.send(frame);
    }

    fn close(&self, code: u16, reason: &'static str) {
        let _ = self.queue.try_send(Outgoing::Close(code, reason));
    }
}

struct Connection {
    state: AppState,
    agent: parley_runtime::agents::Agent,
    outbox: Outbox,
    session: Option<Session>,
    /// Client message ids of the visitor's messages, by stored message id (for `reply_to`).
    client_ids: HashMap<uuid::Uuid, String>,
    errors: Vec<Instant>,
}

impl Connection {
    async fn run(state: AppState, agent: parley_runtime::agents::Agent, socket: WebSocket) {
        let settings = state.runtime.settings().chat.clone();
        let (mut sink, mut stream) = socket.split();
        let (queue, mut outgoing) = mpsc::channel::<Outgoing>(settings.send_buffer_frames);
        let (overflow, mut overflowed) = tokio::sync::watch::channel(false);
        let writer = tokio::spawn(async move {
            while let Some(item) = outgoing.recv().await {
                match item {
                    Outgoing::Frame(text) => {
                        if sink.send(Message::Text(Utf8Bytes::from(text))).await.is_err() {
                            break;
                        }
                    }
                    Outgoing::Ping => {
                        if sink.send(Message::Ping(Default::default())).await.is_err() {
                            break;
                        }
                    }
                    Outgoing::Close(code, reason) => {
                        let frame = CloseFrame { code, reason: Utf8Bytes::from_static(reason) };
                        let _ = sink.send(Message::Close(Some(frame))).await;
                        break;
                    }
                }
            }
            let _ = sink.close().await;
        });
        state.metrics.chat_connections.inc();
        let mut connection = Connection {
            state: state.clone(),
            agent,
            outbox: Outbox { queue, overflow },
            session: None,
            client_ids: HashMap::new(),
            errors: Vec::new(),
        };
        let idle = Duration::from_secs(settings.idle_timeout_seconds);
        let mut shutdown = state.shutdown.subscribe();
        let mut ping = tokio::time::interval(Duration::from_secs(30));
        ping.tick().await;
        loop {
            tokio::select! {
                frame = tokio::time::timeout(idle, stream.next()) => match frame {
                    Err(_) => {
                        connection.outbox.error("idle_timeout", "the connection was idle for too long", None, true);
                        connection.outbox.close(CLOSE_GOING_AWAY, "idle timeout");
                        break;
                    }
                    Ok(None) => break,
                    Ok(Some(Err(error))) => {
                        if is_too_large(&error) {
                            connection.outbox.error("frame_too_large", "the frame is larger than this server accepts", None, true);
                            connection.outbox.close(CLOSE_TOO_BIG, "frame too large");
                        }
                        break;
                    }
                    Ok(Some(Ok(message))) => {
                        if !connection.handle(message).await {
                            break;
                        }
                    }
                },
                () = async { let _ = overflowed.wait_for(|overflow| *overflow).await; } => {
                    tracing::info!("closing a chat connection whose client does not read its frames");
                    writer.abort();
                    if let Some(session) = &connection.session {
                        engine::connection_closed(&state.runtime, session);
                    }
                    drop(connection);
                    state.metrics.chat_connections.dec();
                    return;
                }
                () = async { let _ = shutdown.wait_for(|stopping| *stopping).await; } => {
                    connection.outbox.close(CLOSE_GOING_AWAY, "server shutting down");
                    break;
                }
                _ = ping.tick() => {
                    let _ = connection.outbox.queue.try_send(Outgoing::Ping);
                }
            }
        }
        if let Some(session) = &connection.session {
            engine::connection_closed(&state.runtime, session);
        }
        drop(connection);
        // Let the writer flush what is queued (the last error, a close frame) while reading and
        // discarding what the client still sends: closing a socket with unread input resets the
        // connection, and the client would lose the frames that explain the close.
        let mut writer = writer;
        let flush = async {
            let _ = (&mut writer).await;
        };
        let drain = async { while let Ok(Some(Ok(_))) = tokio::time::timeout(CLOSE_WAIT, stream.next()).await {} };
        if tokio::time::timeout(CLOSE_WAIT, futures::future::join(flush, drain)).await.is_err() {
            writer.abort();
        }
        state.metrics.chat_connections.dec();
    }

    /// Handles one frame; false ends the connection.
    async fn handle(&mut self, message: Message) -> bool {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                return self.protocol_error("invalid_frame", "binary frames are not part of this protocol")
            }
            Message::Close(_) => {
                self.outbox.close(CLOSE_NORMAL, "bye");
                return false;
            }
            Message::Ping(_) | Message::Pong(_) => return true,
        };
        let value: Value = match serde_json::from_str(text.as_str()) {
            Ok(value @ Value::Object(_)) => value,
            _ => return self.protocol_error("invalid_json", "the frame is not a JSON object"),
        };
        let Some(kind) = value.get("type").and_then(Value::as_str).map(str::to_owned) else {
            return self.protocol_error("invalid_frame", "the frame has no string `type`");
        };
        match kind.as_str() {
            "hello" => self.hello(value).await,
            "message" => self.message(value).await,
            "cancel" => {
                let runtime = self.state.runtime.clone();
                if let Some(session) = self.started() {
                    engine::cancel(&runtime, session);
                }
                true
            }
            "typing" => true,
            "ping" => {
                let nonce = value.get("nonce").cloned().unwrap_or(Value::Null);
                self.outbox.send(json!({ "type": "pong", "nonce": nonce }));
                true
            }
            _ => self.protocol_error("unknown_type", "`type` names no frame of this protocol"),
        }
    }

    fn started(&mut self) -> Option<&Session> {
        if self.session.is_none() {
            self.protocol_error("not_started", "send `hello` first");
        }
        self.session.as_ref()
    }

    /// Answers an invalid frame; false once too many arrived within a minute.
    fn protocol_error(&mut self, code: &str, message: &str) -> bool {
        let now = Instant::now();
        self.errors.retain(|at| now.duration_since(*at) < Duration::from_secs(60));
        self.errors.push(now);
        if self.errors.len() > MAX_ERRORS_PER_MINUTE {
            self.outbox.error("too_many_errors", "too many invalid frames", None, true);
            self.outbox.close(CLOSE_POLICY, "too many invalid frames");
            return false;
        }
        self.outbox.error(code, message, None, false);
        true
    }

    async fn hello(&mut self, value: Value) -> bool {
        #[derive(Deserialize)]
        struct Identity {
            user_id: String,
            signature: String,
        }
        #[derive(Deserialize)]
        struct Hello {
            visitor_id: Option<String>,
            resume_token: Option<String>,
            identity: Option<Identity>,
        }
        if self.session.is_some() {
            return self.protocol_error("already_started", "the session has started already");
        }
        let hello: Hello = match serde_json::from_value(value) {
            Ok(hello) => hello,
            Err(error) => return self.protocol_error("invalid_frame", &format!("hello: {error}")),
        };
        let request = SessionRequest {
            visitor_id: hello.visitor_id,
            resume_token: hello.resume_token,
            identity: hello
                .identity
                .map(|identity| IdentityClaim { user_id: identity.user_id, signature: identity.signature }),
        };
        match session::start(&self.state.runtime, &self.agent, Channel::Web, request).await {
            Ok(session) => {
                for message in &session.messages {
                    if let (MessageRole::User, Some(client_id)) = (message.role, &message.client_message_id) {
                        self.client_ids.insert(message.id, client_id.clone());
                    }
                }
                let messages: Vec<Value> = session.messages.iter().map(|message| self.message_json(message)).collect();
                self.outbox.send(json!({
                    "type": "session",
                    "conversation_id": session.conversation.id,
                    "resume_token": session.resume_token,
                    "visitor_id": session.conversation.visitor_id,
                    "resumed": session.resumed,
                    "transcript": if session.conversation.stores_text { "stored" } else { "live_only" },
                    "agent": { "name": self.agent.name, "greeting": self.agent.greeting },
                    "messages": messages,
                }));
                self.session = Some(session);
                true
            }
            Err(error) => {
                self.runtime_error(&error, None);
                true
            }
        }
    }

    async fn message(&mut self, value: Value) -> bool {
        #[derive(Deserialize)]
        struct Incoming {
            client_message_id: String,
            text: String,
        }
        if self.started().is_none() {
            return true;
        }
        let incoming: Incoming = match serde_json::from_value(value) {
            Ok(incoming) => incoming,
            Err(error) => return self.protocol_error("invalid_frame", &format!("message: {error}")),
        };
        let Some(session) = self.session.as_ref() else { return true };
        let client_message_id = incoming.client_message_id.clone();
        let submitted = engine::submit(
            &self.state.runtime,
            session,
            UserMessage { client_message_id: incoming.client_message_id, text: incoming.text },
        )
        .await;
        match submitted {
            Ok(Submitted::Answered { user, reply }) => {
                self.outbox
                    .send(json!({ "type": "accepted", "client_message_id": client_message_id, "message_id": user.id }));
                self.outbox.send(complete_json(&reply, &client_message_id));
            }
            Ok(Submitted::Live(subscription)) => {
                self.client_ids.insert(subscription.user_message_id, client_message_id.clone());
                self.outbox.send(json!({
                    "type": "accepted", "client_message_id": client_message_id,
                    "message_id": subscription.user_message_id,
                }));
                tokio::spawn(forward(subscription, client_message_id, self.outbox.clone()));
            }
            Err(error) => self.runtime_error(&error, Some(&client_message_id)),
        }
        true
    }

    fn runtime_error(&self, error: &Error, client_message_id: Option<&str>) {
        let (code, message) = match error {
            Error::InvalidInput { field, .. } if field == "resume_token" => ("invalid_resume_token", error.to_string()),
            Error::InvalidInput { field, .. } if field.starts_with("identity") => {
                ("invalid_identity", error.to_string())
            }
            Error::InvalidInput { .. } => ("invalid_frame", error.to_string()),
            Error::MessageTooLong { .. }
            | Error::NotFound { .. }
            | Error::Busy
            | Error::BudgetExceeded { .. }
            | Error::ModelUnavailable(_)
            | Error::Timeout { .. } => (error.code(), error.to_string()),
            Error::RateLimited { retry_after_seconds } => {
                let mut frame = json!({
                    "type": "error", "code": "rate_limited", "message": error.to_string(),
                    "retry_after_seconds": retry_after_seconds, "fatal": false,
                });
                if let Some(id) = client_message_id {
                    frame["client_message_id"] = json!(id);
                }
                self.outbox.send(frame);
                return;
            }
            _ => {
                tracing::error!(error = %error, "chat request failed");
                ("internal", "an internal error occurred; it has been logged".to_owned())
            }
        };
        self.outbox.error(code, &message, client_message_id, false);
    }

    fn message_json(&self, message: &StoredMessage) -> Value {
        let reply_to = message.reply_to.and_then(|id| self.client_ids.get(&id).cloned());
        json!({
            "id": message.id,
            "role": message.role.as_str(),
            "text": message.text,
            "client_message_id": message.client_message_id,
            "reply_to": reply_to,
            "finish_reason": message.finish_reason,
            "citations": citations_json(&message.citations),
            "created_at": timestamp(message.created_at),
        })
    }
}

fn complete_json(reply: &StoredMessage, client_message_id: &str) -> Value {
    json!({
        "type": "complete",
        "reply_to": client_message_id,
        "message_id": reply.id,
        "text": reply.text.clone().unwrap_or_default(),
        "finish_reason": reply.finish_reason.clone().unwrap_or_else(|| "stop".to_owned()),
        "citations": citations_json(&reply.citations),
    })
}

/// Turns a running turn's events into frames for one connection.
async fn forward(mut subscription: TurnSubscription, client_message_id: String, outbox: Outbox) {
    if !subscription.text_so_far.is_empty() {
        outbox.send(json!({
            "type": "delta", "reply_to": client_message_id, "text": subscription.text_so_far,
        }));
    }
    loop {
        match subscription.events.recv().await {
            Ok(TurnEvent::Status(state)) => {
                outbox.send(json!({ "type": "status", "reply_to": client_message_id, "state": state.as_str() }))
            }
            Ok(TurnEvent::Delta(text)) => {
                outbox.send(json!({ "type": "delta", "reply_to": client_message_id, "text": text }))
            }
            Ok(TurnEvent::Failed(failure)) => {
                outbox.error(failure.code, &failure.message, Some(&client_message_id), false)
            }
            Ok(TurnEvent::Complete(reply)) => {
                outbox.send(complete_json(&reply, &client_message_id));
                return;
            }
            // Missed deltas: `complete` carries the whole answer.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                outbox.error("internal", "the answer ended unexpectedly", Some(&client_message_id), false);
                return;
            }
        }
    }
}

fn is_too_large(error: &axum::Error) -> bool {
    let text = error.to_string().to_ascii_lowercase();
    text.contains("too long") || text.contains("too big") || text.contains("capacity") || text.contains("too large")
}
