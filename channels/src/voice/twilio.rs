//! Phone calls through Twilio Media Streams: `GET /v1/agents/{public_id}/phone/twilio`, the
//! WebSocket a TwiML `<Connect><Stream url="wss://…/v1/agents/{public_id}/phone/twilio">`
//! opens for each call to a number of the tenant's.
//!
//! The handshake is refused (`403`) unless its `X-Twilio-Signature` is Twilio's signature of
//! the URL it connected to, made with the tenant's auth token (stored sealed; set with
//! `PUT /admin/v1/telephony/twilio`). Twilio signs the full URL as it saw it: Parley rebuilds
//! it from `server.public_url` and the request's path and query (a WebSocket upgrade is a
//! `GET`, so no form parameters are signed).
//!
//! Then the protocol: Twilio sends `connected`, `start` (stream and call ids, custom
//! parameters such as the caller's number), `media` (base64 μ-law at 8 kHz, 20 ms each),
//! `mark` (a mark Parley sent has been played), `dtmf` and `stop`. Parley answers with
//! `media` (the agent's voice), `mark` after each stretch of agent audio, and `clear` on
//! barge-in (Twilio then drops the audio it holds and returns the pending marks). An event
//! out of order, broken JSON or base64, or a stream of another account ends the call with a
//! close frame saying why.

use std::collections::VecDeque;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use parley_runtime::calls::{self, CallEvent, CallRequest, Channel};
use parley_runtime::chat::session;
use parley_runtime::telephony;
use serde::Deserialize;
use serde_json::json;
use sha1::Sha1;
use tokio::sync::mpsc;

use super::mulaw;
use crate::problem::ApiError;
use crate::AppState;

/// Twilio streams μ-law at 8 kHz.
const SAMPLE_RATE: u32 = 8_000;
/// Largest WebSocket message accepted from Twilio (a 20 ms media event is about 400 bytes).
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest μ-law payload of one media event: one second of audio.
const MAX_MEDIA_BYTES: usize = 8_000;
/// Agent audio frames between two marks (one second).
const FRAMES_PER_MARK: usize = 50;
/// Marks Parley keeps track of at most; older ones are forgotten.
const MAX_PENDING_MARKS: usize = 64;
/// How long Twilio may take between the upgrade and `start`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames queued for the socket's writer before the connection is considered stuck.
const OUTGOING_QUEUE: usize = 256;
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_ERROR: u16 = 1011;

type HmacSha1 = Hmac<Sha1>;

/// Twilio's request signature: base64 of HMAC-SHA1, keyed by the auth token, over the full
/// URL followed by each POST parameter's name and value, sorted by name.
pub fn signature(auth_token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut mac = keyed(auth_token);
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

fn keyed(auth_token: &str) -> HmacSha1 {
    // HMAC takes keys of every length: this never fails.
    HmacSha1::new_from_slice(auth_token.as_bytes()).expect("HMAC accepts keys of every length")
}

/// Whether `claimed` is Twilio's signature of one of `urls` (no parameters), compared in
/// constant time.
pub fn signature_valid(auth_token: &str, urls: &[String], claimed: &str) -> bool {
    let Ok(claimed) = STANDARD.decode(claimed.trim()) else { return false };
    urls.iter().any(|url| {
        let mut mac = keyed(auth_token);
        mac.update(url.as_bytes());
        mac.verify_slice(&claimed).is_ok()
    })
}

/// The URLs Twilio may have signed for this request: the `wss://` URL it connected to, and
/// the same with `https://` (both from `server.public_url`, or the `Host` header without it).
fn signed_urls(state: &AppState, headers: &HeaderMap, uri: &Uri) -> Vec<String> {
    let path_and_query = uri.path_and_query().map(|value| value.as_str()).unwrap_or_else(|| uri.path());
    let base = match &state.runtime.settings().server.public_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => match crate::chat::own_origin(state, headers) {
            Some(origin) => origin,
            None => return Vec::new(),
        },
    };
    let (scheme, rest) = match base.split_once("://") {
        Some(parts) => parts,
        None => return Vec::new(),
    };
    let (web, socket) = match scheme.to_ascii_lowercase().as_str() {
        "https" | "wss" => ("https", "wss"),
        _ => ("http", "ws"),
    };
    vec![format!("{socket}://{rest}{path_and_query}"), format!("{web}://{rest}{path_and_query}")]
}

/// The handshake: the agent must exist, its tenant must have stored Twilio credentials, and
/// the request must carry their signature.
pub async fn upgrade(
    State(state): State<AppState>,
    Path(public_id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let agent = match session::find_agent(&state.runtime, &public_id).await {
        Ok(agent) => agent,
        Err(error) => return ApiError::from(error).into_response(),
    };
    let credentials = match telephony::twilio_credentials(&state.runtime, agent.tenant_id).await {
        Ok(Some(credentials)) => credentials,
        Ok(None) => {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "telephony_not_configured",
                "this agent's tenant has no Twilio credentials",
            )
            .into_response()
        }
        Err(error) => return ApiError::from(error).into_response(),
    };
    let claimed = headers.get("x-twilio-signature").and_then(|value| value.to_str().ok()).unwrap_or("");
    if !signature_valid(&credentials.auth_token, &signed_urls(&state, &headers, &uri), claimed) {
        tracing::warn!(tenant_id = %agent.tenant_id, "phone stream refused: bad or missing Twilio signature");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_signature",
            "the X-Twilio-Signature header does not match",
        )
        .into_response();
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return ApiError::new(StatusCode::BAD_REQUEST, "websocket_required", rejection.body_text()).into_response()
        }
    };
    let account_sid = credentials.account_sid;
    upgrade
        .max_frame_size(MAX_MESSAGE_BYTES)
        .max_message_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| async move { run(state, public_id, account_sid, socket).await })
}

/// One event from Twilio. Unknown events are ignored, as Twilio may add some.
#[derive(Debug, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
enum Inbound {
    Connected {},
    Start {
        start: StartInfo,
    },
    Media {
        media: MediaInfo,
    },
    Mark {
        mark: MarkInfo,
    },
    Dtmf {},
    Stop {},
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartInfo {
    stream_sid: String,
    #[serde(default)]
    account_sid: Option<String>,
    #[serde(default)]
    call_sid: Option<String>,
    #[serde(default)]
    custom_parameters: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    media_format: Option<MediaFormat>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MediaFormat {
    encoding: String,
    sample_rate: u32,
    channels: u32,
}

#[derive(Debug, Deserialize)]
struct MediaInfo {
    payload: String,
    #[serde(default)]
    track: Option<String>,
}

#[derive(Debug, Deserialize)]
struct MarkInfo {
    name: String,
}

/// Why a stream was closed by Parley.
struct Refusal {
    code: u16,
    reason: &'static str,
}

impl Refusal {
    fn policy(reason: &'static str) -> Refusal {
        Refusal { code: CLOSE_POLICY, reason }
    }
}

async fn run(state: AppState, public_id: String, account_sid: String, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let (outgoing, mut queue) = mpsc::channel::<Message>(OUTGOING_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(message) = queue.recv().await {
            let closing = matches!(message, Message::Close(_));
            if sink.send(message).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let outcome = converse(&state, &public_id, &account_sid, &mut stream, &outgoing).await;
    let (code, reason) = match outcome {
        Ok(()) => (CLOSE_NORMAL, "call ended"),
        Err(refusal) => (refusal.code, refusal.reason),
    };
    let _ = outgoing.try_send(Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) })));
    drop(outgoing);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

/// Reads Twilio's events until `start`, starts the call, then relays both ways until either
/// side ends it.
async fn converse(
    state: &AppState,
    public_id: &str,
    account_sid: &str,
    stream: &mut futures::stream::SplitStream<WebSocket>,
    outgoing: &mpsc::Sender<Message>,
) -> Result<(), Refusal> {
    let start = tokio::time::timeout(START_TIMEOUT, async {
        loop {
            match next_event(stream).await? {
                Some(Inbound::Connected {} | Inbound::Dtmf {} | Inbound::Other) => continue,
                Some(Inbound::Start { start }) => return Ok(start),
                Some(Inbound::Stop {}) | None => return Err(Refusal { code: CLOSE_NORMAL, reason: "stream stopped" }),
                Some(Inbound::Media { .. } | Inbound::Mark { .. }) => {
                    return Err(Refusal::policy("media before start"))
                }
            }
        }
    })
    .await
    .map_err(|_| Refusal::policy("no start event"))??;
    if start.account_sid.as_deref().is_some_and(|sid| sid != account_sid) {
        return Err(Refusal::policy("stream of another Twilio account"));
    }
    if let Some(format) = &start.media_format {
        if !format.encoding.eq_ignore_ascii_case("audio/x-mulaw")
            || format.sample_rate != SAMPLE_RATE
            || format.channels != 1
        {
            return Err(Refusal::policy("only audio/x-mulaw at 8000 Hz mono is supported"));
        }
    }
    let caller = start.custom_parameters.get("From").and_then(|value| value.as_str()).map(str::to_owned);
    let request =
        CallRequest { channel: Channel::Phone, origin: None, own_origin: None, caller, sample_rate: SAMPLE_RATE };
    let call = match calls::start(&state.runtime, public_id, request).await {
        Ok(call) => call,
        Err(error) => {
            tracing::info!(code = error.code(), "phone call refused");
            return Err(Refusal { code: CLOSE_POLICY, reason: refusal_reason(error.code()) });
        }
    };
    tracing::info!(call_id = %call.id, conversation_id = %call.conversation_id, call_sid = ?start.call_sid, "phone call started");
    let stream_sid = start.stream_sid;
    let calls::Call { id: call_id, audio_in, mut events, .. } = call;
    let mut frames_since_mark = 0usize;
    let mut mark_counter = 0u64;
    let mut pending_marks: VecDeque<String> = VecDeque::new();
    let send = |message: serde_json::Value| -> Result<(), Refusal> {
        outgoing
            .try_send(Message::Text(Utf8Bytes::from(message.to_string())))
            .map_err(|_| Refusal { code: CLOSE_ERROR, reason: "stream not reading" })
    };
    let result = loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(CallEvent::Audio(samples)) => {
                    let payload = STANDARD.encode(mulaw::encode(&samples));
                    if let Err(refusal) = send(json!({ "event": "media", "streamSid": stream_sid, "media": { "payload": payload } })) {
                        break Err(refusal);
                    }
                    frames_since_mark += 1;
                    if frames_since_mark >= FRAMES_PER_MARK {
                        frames_since_mark = 0;
                        mark_counter += 1;
                        let name = format!("agent-{mark_counter}");
                        if send(json!({ "event": "mark", "streamSid": stream_sid, "mark": { "name": name } })).is_ok() {
                            if pending_marks.len() == MAX_PENDING_MARKS {
                                pending_marks.pop_front();
                            }
                            pending_marks.push_back(name);
                        }
                    }
                }
                Some(CallEvent::Clear) => {
                    frames_since_mark = 0;
                    if let Err(refusal) = send(json!({ "event": "clear", "streamSid": stream_sid })) {
                        break Err(refusal);
                    }
                }
                // Captions travel on WebRTC's data channel; a phone has none.
                Some(CallEvent::Caption { .. }) => {}
                Some(CallEvent::Ended(reason)) => {
                    tracing::info!(%call_id, reason = reason.as_str(), "phone call ended by the agent side");
                    break Ok(());
                }
                None => break Ok(()),
            },
            inbound = next_event(stream) => match inbound {
                Ok(Some(Inbound::Media { media })) => {
                    if media.track.as_deref().is_some_and(|track| track != "inbound") {
                        continue;
                    }
                    match decode_payload(&media.payload) {
                        Ok(samples) => audio_in.push(&samples),
                        Err(refusal) => break Err(refusal),
                    }
                }
                Ok(Some(Inbound::Mark { mark })) => {
                    // A mark comes back once the audio before it has played, or on `clear`.
                    if let Some(position) = pending_marks.iter().position(|name| *name == mark.name) {
                        pending_marks.drain(..=position);
                    }
                }
                Ok(Some(Inbound::Start { .. })) => break Err(Refusal::policy("second start event")),
                Ok(Some(Inbound::Connected {} | Inbound::Dtmf {} | Inbound::Other)) => {}
                Ok(Some(Inbound::Stop {}) | None) => {
                    calls::hang_up(&state.runtime, call_id);
                    break Ok(());
                }
                Err(refusal) => break Err(refusal),
            },
        }
    };
    // Dropping the call's events ends it if it is still running; the hang-up makes it end now.
    calls::hang_up(&state.runtime, call_id);
    drop(events);
    drop(audio_in);
    result
}

/// The next event, `None` when the socket closed.
async fn next_event(stream: &mut futures::stream::SplitStream<WebSocket>) -> Result<Option<Inbound>, Refusal> {
    loop {
        let Some(message) = stream.next().await else { return Ok(None) };
        let text = match message {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(_)) | Err(_) => return Ok(None),
            Ok(Message::Binary(_)) => return Err(Refusal::policy("binary messages are not part of the protocol")),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
        };
        return serde_json::from_str::<Inbound>(text.as_str())
            .map(Some)
            .map_err(|_| Refusal::policy("malformed event"));
    }
}

fn decode_payload(payload: &str) -> Result<Vec<i16>, Refusal> {
    if payload.len() > MAX_MEDIA_BYTES * 4 / 3 + 4 {
        return Err(Refusal::policy("media payload too large"));
    }
    let codes = STANDARD.decode(payload).map_err(|_| Refusal::policy("media payload is not base64"))?;
    Ok(mulaw::decode(&codes))
}

/// Close reasons for refused calls (close frames carry at most 123 bytes of reason).
fn refusal_reason(code: &str) -> &'static str {
    match code {
        "not_found" => "unknown agent",
        "voice_disabled" => "voice is disabled for this agent",
        "call_limit" => "the agent has too many calls",
        "voice_unavailable" => "voice is unavailable",
        _ => "the call could not start",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in Twilio's security documentation: auth token `12345`, this URL and these
    /// POST parameters give this signature.
    #[test]
    fn matches_the_documented_example() {
        let params = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ];
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(signature("12345", url, &params), "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        // Parameter order does not matter: they are sorted.
        let mut reversed = params;
        reversed.reverse();
        assert_eq!(signature("12345", url, &reversed), "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
    }

    #[test]
    fn a_get_signature_covers_the_url_alone() {
        let url = "wss://parley.example.com/v1/agents/ag_1/phone/twilio";
        let signed = signature("token", url, &[]);
        assert!(signature_valid("token", &[url.to_owned()], &signed));
        assert!(signature_valid("token", &["https://x".to_owned(), url.to_owned()], &signed));
        assert!(!signature_valid("other", &[url.to_owned()], &signed));
        assert!(!signature_valid("token", &[format!("{url}?x=1")], &signed));
        assert!(!signature_valid("token", &[url.to_owned()], "not base64!"));
        assert!(!signature_valid("token", &[url.to_owned()], ""));
        assert!(!signature_valid("token", &[], &signed));
    }

    #[test]
    fn parses_twilio_events() {
        let start: Inbound = serde_json::from_str(
            r#"{"event":"start","sequenceNumber":"1","streamSid":"MZ1","start":{"accountSid":"AC1","streamSid":"MZ1",
            "callSid":"CA1","tracks":["inbound"],"customParameters":{"From":"+15550100"},
            "mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}"#,
        )
        .unwrap();
        let Inbound::Start { start } = start else { panic!("not a start event") };
        assert_eq!(start.stream_sid, "MZ1");
        assert_eq!(start.custom_parameters["From"], "+15550100");
        let media: Inbound = serde_json::from_str(
            r#"{"event":"media","streamSid":"MZ1","media":{"track":"inbound","chunk":"1","timestamp":"5","payload":"//8="}}"#,
        )
        .unwrap();
        let Inbound::Media { media } = media else { panic!("not a media event") };
        assert_eq!(decode_payload(&media.payload).ok(), Some(vec![0, 0]));
        assert!(matches!(serde_json::from_str::<Inbound>(r#"{"event":"stop","stop":{}}"#), Ok(Inbound::Stop {})));
        assert!(matches!(serde_json::from_str::<Inbound>(r#"{"event":"future"}"#), Ok(Inbound::Other)));
        assert!(serde_json::from_str::<Inbound>(r#"{"event":"media"}"#).is_err());
        assert!(decode_payload("%%%").is_err());
    }
}
