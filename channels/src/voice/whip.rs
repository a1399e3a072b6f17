//! WebRTC calls signalled the WHIP way: `POST /v1/agents/{public_id}/voice` with an SDP offer
//! answers `201 Created` with the SDP answer and `Location: /v1/calls/{call_id}`;
//! `DELETE /v1/calls/{call_id}` hangs up. Any WebRTC client can call in.
//!
//! The answer is not trickled: Parley waits for ICE gathering (host candidates, the public
//! address of a 1:1 NAT, STUN and TURN servers from `[webrtc]`) so the answer holds every
//! candidate. Media is Opus both ways over DTLS-SRTP: caller packets are decoded to 48 kHz
//! mono PCM and pushed into the call; the agent's 20 ms frames are encoded and sent as they
//! come. A data channel the caller opens with the label `captions` carries captions and the
//! end of the call as JSON.
//!
//! Each call has one task that owns the peer connection: it ends — closing the connection,
//! which ends the track reader and frees every socket — when the agent side ends the call,
//! on `DELETE`, when the peer closes or ICE fails (after `webrtc.disconnected_timeout_seconds`
//! plus `failed_timeout_seconds` without packets), when the caller never connects, or when
//! the node shuts down.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use parley_config::WebrtcSettings;
use parley_runtime::calls::{self, CallEvent, CallRequest, Channel, EndReason};
use tokio::sync::watch;
use webrtc::api::interceptor_registry::configure_rtcp_reports;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_OPUS};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::data_channel::data_channel_state::RTCDataChannelState;
use webrtc::data_channel::RTCDataChannel;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::udp_network::{EphemeralUDP, UDPNetwork};
use webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::interceptor::registry::Registry;
use webrtc::media::Sample;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::{RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType};
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;
use webrtc::track::track_local::TrackLocal;
use webrtc::track::track_remote::TrackRemote;

use super::{captions_message, ended_message};
use crate::problem::ApiError;
use crate::AppState;

/// Opus runs at 48 kHz; the call's PCM does too.
const SAMPLE_RATE: u32 = 48_000;
/// One agent frame: 20 ms at 48 kHz.
const FRAME_SAMPLES: usize = 960;
const FRAME_DURATION: Duration = Duration::from_millis(20);
/// The largest Opus frame (120 ms at 48 kHz), the decoder's output bound.
const MAX_DECODED_SAMPLES: usize = 5_760;
/// Opus's own bound on an encoded packet, comfortably above 20 ms of voice.
const MAX_PACKET_BYTES: usize = 1_500;
/// The payload type Parley offers Opus under (browsers use 111 too; the offer's wins).
const OPUS_PAYLOAD_TYPE: u8 = 111;
/// The data channel label captions travel on.
pub const CAPTIONS_LABEL: &str = "captions";
/// Captions held until the caller's data channel opens; older ones are dropped.
const MAX_PENDING_CAPTIONS: usize = 32;
/// How long closing a peer connection may take.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Seconds a negotiation may take beyond gathering candidates.
const NEGOTIATION_MARGIN_SECONDS: u64 = 10;
/// How long the call's last message waits for a data channel that is still opening.
const LAST_CAPTION_WAIT: Duration = Duration::from_secs(2);

/// Why an offer is refused before a call starts.
fn bad_offer(code: &'static str, detail: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, detail)
}

/// Checks an SDP offer: it parses, it has an audio section, and that section offers Opus.
pub fn check_offer(sdp: &str) -> Result<(), ApiError> {
    let description =
        webrtc::sdp::description::session::SessionDescription::unmarshal(&mut Cursor::new(sdp.as_bytes()))
            .map_err(|_| bad_offer("invalid_sdp", "the body is not a valid SDP offer"))?;
    let audio: Vec<_> =
        description.media_descriptions.iter().filter(|media| media.media_name.media == "audio").collect();
    if audio.is_empty() {
        return Err(bad_offer("no_audio", "the offer has no audio section"));
    }
    let offers_opus = audio.iter().any(|media| {
        media.attributes.iter().any(|attribute| {
            attribute.key == "rtpmap"
                && attribute.value.as_deref().is_some_and(|value| {
                    value
                        .split_whitespace()
                        .nth(1)
                        .is_some_and(|codec| codec.to_ascii_lowercase().starts_with("opus/48000"))
                })
        })
    });
    if !offers_opus {
        return Err(bad_offer("no_opus", "the offer's audio section does not offer Opus"));
    }
    Ok(())
}

/// Start a WebRTC call (WHIP): the SDP offer in, the SDP answer (all candidates gathered) out.
#[utoipa::path(post, path = "/v1/agents/{public_id}/voice", tag = "voice",
    params(("public_id" = String, Path, description = "The agent's public id")),
    request_body(content = String, content_type = "application/sdp", description = "The SDP offer: an audio section with Opus, optionally a `captions` data channel"),
    responses(
        (status = 201, body = String, content_type = "application/sdp", description = "The SDP answer",
         headers(("location" = String, description = "`/v1/calls/{call_id}`: DELETE hangs up"))),
        (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 503, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn offer(
    State(state): State<AppState>,
    Path(public_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let origin = headers.get(header::ORIGIN).and_then(|value| value.to_str().ok()).map(str::to_owned);
    let mut response = match answer(&state, &public_id, &headers, body, origin.clone()).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    cors(&mut response, origin.as_deref());
    response
}

/// Browsers calling from another origin ask first (the offer's content type is not a simple one).
pub async fn preflight(headers: HeaderMap) -> Response {
    let origin = headers.get(header::ORIGIN).and_then(|value| value.to_str().ok());
    let mut response = StatusCode::NO_CONTENT.into_response();
    cors(&mut response, origin);
    let response_headers = response.headers_mut();
    response_headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST, DELETE, OPTIONS"));
    response_headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("content-type"));
    response_headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    response
}

/// Cross-origin reads of the answer (the agent's allowed origins are checked by the runtime
/// before any call starts; a refused origin gets its `403` readable).
fn cors(response: &mut Response, origin: Option<&str>) {
    let Some(origin) = origin.and_then(|origin| HeaderValue::from_str(origin).ok()) else { return };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("location"));
    headers.insert(header::VARY, HeaderValue::from_static("origin"));
}

async fn answer(
    state: &AppState,
    public_id: &str,
    headers: &HeaderMap,
    body: Body,
    origin: Option<String>,
) -> Result<Response, ApiError> {
    let settings = state.runtime.settings().webrtc.clone();
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("application/sdp") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the offer must be sent as application/sdp",
        ));
    }
    let bytes = axum::body::to_bytes(body, settings.max_offer_bytes).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the offer is larger than {} bytes", settings.max_offer_bytes),
        )
    })?;
    let sdp = String::from_utf8(bytes.to_vec()).map_err(|_| bad_offer("invalid_sdp", "the offer is not UTF-8"))?;
    check_offer(&sdp)?;
    let offer =
        RTCSessionDescription::offer(sdp).map_err(|_| bad_offer("invalid_sdp", "the body is not a valid SDP offer"))?;

    let request = CallRequest {
        channel: Channel::Voice,
        origin,
        own_origin: crate::chat::own_origin(state, headers),
        caller: None,
        sample_rate: SAMPLE_RATE,
    };
    let call = calls::start(&state.runtime, public_id, request).await?;
    let call_id = call.id;
    // Negotiation runs as its own task: if the caller drops the request half-way, the call still
    // either runs (and ends when nobody connects) or is hung up, and the peer connection closed.
    let task_state = state.clone();
    let negotiation = tokio::spawn(async move {
        // A negotiation that stalls (it has been seen to, rarely, inside the WebRTC stack) is
        // abandoned, dropping its peer connection, and the caller may try again.
        let limit = Duration::from_secs(settings.gather_timeout_seconds + NEGOTIATION_MARGIN_SECONDS);
        let connected = tokio::time::timeout(limit, connect(&settings, offer)).await.unwrap_or_else(|_| {
            tracing::warn!(%call_id, "voice call negotiation stalled; abandoned");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "negotiation_timeout",
                "the call could not be set up in time; try again",
            )
            .with_retry_after(1))
        });
        match connected {
            Ok(peer) => {
                let answer = peer.answer.clone();
                tracing::info!(%call_id, conversation_id = %call.conversation_id, "voice call answered");
                tokio::spawn(run_call(task_state, settings, call, peer));
                Ok(answer)
            }
            Err(failure) => {
                calls::hang_up(&task_state.runtime, call_id);
                drop(call);
                Err(failure)
            }
        }
    });
    let answer_sdp = negotiation.await.map_err(|_| ApiError::internal())??;
    let mut response = (StatusCode::CREATED, answer_sdp).into_response();
    let response_headers = response.headers_mut();
    response_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/sdp"));
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/calls/{call_id}")) {
        response_headers.insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Hang up a call.
#[utoipa::path(delete, path = "/v1/calls/{call_id}", tag = "voice",
    params(("call_id" = String, Path, description = "From the `Location` of the call's answer")),
    responses((status = 204), (status = 404, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn hang_up(State(state): State<AppState>, Path(call_id): Path<String>, headers: HeaderMap) -> Response {
    let origin = headers.get(header::ORIGIN).and_then(|value| value.to_str().ok()).map(str::to_owned);
    let mut response = match uuid::Uuid::parse_str(&call_id) {
        Ok(call_id) if calls::hang_up(&state.runtime, call_id) => StatusCode::NO_CONTENT.into_response(),
        _ => ApiError::not_found("call").into_response(),
    };
    cors(&mut response, origin.as_deref());
    response
}

/// A negotiated peer connection and what the call task needs of it.
struct Peer {
    connection: Arc<RTCPeerConnection>,
    answer: String,
    track: Arc<TrackLocalStaticSample>,
    /// The caller's audio track, once it arrives.
    remote_track: watch::Receiver<Option<Arc<TrackRemote>>>,
    state: watch::Receiver<RTCPeerConnectionState>,
    captions: Arc<Mutex<Option<Arc<RTCDataChannel>>>>,
}

fn setting_engine(settings: &WebrtcSettings) -> Result<SettingEngine, ApiError> {
    let mut engine = SettingEngine::default();
    // Callers' mDNS host names are not resolved: their packets reveal their address anyway
    // (peer-reflexive candidates), and no multicast socket is opened per call.
    engine.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    if let Some(ip) = &settings.public_ip {
        engine.set_nat_1to1_ips(vec![ip.clone()], RTCIceCandidateType::Host);
    }
    if settings.udp_port_min != 0 {
        let ports = EphemeralUDP::new(settings.udp_port_min, settings.udp_port_max).map_err(|error| {
            tracing::error!(%error, "webrtc.udp_port_min/max rejected by the ICE agent");
            ApiError::internal()
        })?;
        engine.set_udp_network(UDPNetwork::Ephemeral(ports));
    }
    engine.set_ice_timeouts(
        Some(Duration::from_secs(settings.disconnected_timeout_seconds)),
        Some(Duration::from_secs(settings.failed_timeout_seconds)),
        Some(Duration::from_secs(2)),
    );
    Ok(engine)
}

fn opus_capability() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: SAMPLE_RATE,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// The ICE servers every call's peer connection is configured with: the STUN servers, and the
/// TURN servers with their credentials (opened at start-up when they were sealed).
pub fn ice_servers(settings: &WebrtcSettings) -> Vec<RTCIceServer> {
    let mut servers = Vec::new();
    if !settings.stun_servers.is_empty() {
        servers.push(RTCIceServer { urls: settings.stun_servers.clone(), ..Default::default() });
    }
    for turn in &settings.turn_servers {
        servers.push(RTCIceServer {
            urls: turn.urls.clone(),
            username: turn.username.clone(),
            credential: turn.credential.clone(),
        });
    }
    servers
}

/// Builds the peer connection, applies the offer and gathers candidates into the answer.
async fn connect(settings: &WebrtcSettings, offer: RTCSessionDescription) -> Result<Peer, ApiError> {
    let internal = |error: webrtc::Error| {
        tracing::error!(%error, "webrtc set-up failed");
        ApiError::internal()
    };
    let mut media = MediaEngine::default();
    media
        .register_codec(
            RTCRtpCodecParameters {
                capability: opus_capability(),
                payload_type: OPUS_PAYLOAD_TYPE,
                ..Default::default()
            },
            RTPCodecType::Audio,
        )
        .map_err(internal)?;
    let registry = configure_rtcp_reports(Registry::new());
    let api = APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(setting_engine(settings)?)
        .build();
    let configuration = RTCConfiguration { ice_servers: ice_servers(settings), ..Default::default() };
    let connection = Arc::new(api.new_peer_connection(configuration).await.map_err(internal)?);
    match negotiate(settings, &connection, offer).await {
        Ok(peer) => Ok(peer),
        Err(error) => {
            let _ = tokio::time::timeout(CLOSE_WAIT, connection.close()).await;
            Err(error)
        }
    }
}

async fn negotiate(
    settings: &WebrtcSettings,
    connection: &Arc<RTCPeerConnection>,
    offer: RTCSessionDescription,
) -> Result<Peer, ApiError> {
    let internal = |error: webrtc::Error| {
        tracing::error!(%error, "webrtc set-up failed");
        ApiError::internal()
    };
    let track = Arc::new(TrackLocalStaticSample::new(opus_capability(), "agent".to_owned(), "parley".to_owned()));
    let sender =
        connection.add_track(Arc::clone(&track) as Arc<dyn TrackLocal + Send + Sync>).await.map_err(internal)?;
    // RTCP from the caller must be read for the interceptors to work; the loop ends when the
    // connection closes.
    tokio::spawn(async move { while sender.read_rtcp().await.is_ok() {} });

    let (remote_sender, remote_track) = watch::channel(None);
    connection.on_track(Box::new(move |track, _receiver, _transceiver| {
        if track.kind() == RTPCodecType::Audio {
            remote_sender.send_replace(Some(track));
        }
        Box::pin(async {})
    }));
    let (state_sender, state) = watch::channel(RTCPeerConnectionState::New);
    connection.on_peer_connection_state_change(Box::new(move |new_state| {
        state_sender.send_replace(new_state);
        Box::pin(async {})
    }));
    let captions: Arc<Mutex<Option<Arc<RTCDataChannel>>>> = Arc::default();
    let captions_slot = Arc::clone(&captions);
    connection.on_data_channel(Box::new(move |channel| {
        if channel.label() == CAPTIONS_LABEL {
            *captions_slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(channel);
        }
        Box::pin(async {})
    }));

    connection.set_remote_description(offer).await.map_err(|error| {
        tracing::info!(%error, "offer refused");
        bad_offer("invalid_sdp", "the offer cannot be answered")
    })?;
    let answer = connection.create_answer(None).await.map_err(|error| {
        tracing::info!(%error, "no answer to the offer");
        bad_offer("invalid_sdp", "the offer cannot be answered")
    })?;
    let mut gathered = connection.gathering_complete_promise().await;
    connection.set_local_description(answer).await.map_err(internal)?;
    // Wait for every candidate (non-trickle), but not forever: a STUN or TURN server that does
    // not answer must not hold the caller.
    let _ = tokio::time::timeout(Duration::from_secs(settings.gather_timeout_seconds), gathered.recv()).await;
    let answer = connection.local_description().await.ok_or_else(ApiError::internal)?.sdp;
    Ok(Peer { connection: Arc::clone(connection), answer, track, remote_track, state, captions })
}

/// The call's task: relays the agent's events to the caller and the caller's audio to the
/// call, then tears everything down.
async fn run_call(state: AppState, settings: WebrtcSettings, call: calls::Call, peer: Peer) {
    let calls::Call { id: call_id, audio_in, mut events, .. } = call;
    let Peer { connection, track, mut remote_track, state: mut peer_state, captions, .. } = peer;
    let mut shutdown = state.shutdown.subscribe();
    let mut encoder = match opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip) {
        Ok(encoder) => Some(encoder),
        Err(error) => {
            tracing::error!(%error, "opus encoder unavailable");
            None
        }
    };
    let mut pending_captions: Vec<String> = Vec::new();
    let mut reader: Option<tokio::task::JoinHandle<()>> = None;
    let corrupt = Arc::new(AtomicU64::new(0));
    let connect_deadline = tokio::time::sleep(Duration::from_secs(settings.connect_timeout_seconds));
    tokio::pin!(connect_deadline);
    let mut connected = false;
    let mut remote_track_open = true;
    let mut packet = vec![0u8; MAX_PACKET_BYTES];
    // Captions said before the caller's data channel opened leave as soon as it is open.
    let mut flush = tokio::time::interval(Duration::from_millis(100));
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ending: Option<&'static str> = loop {
        tokio::select! {
            _ = flush.tick(), if !pending_captions.is_empty() => {
                flush_captions(&captions, &mut pending_captions).await;
            }
            event = events.recv() => match event {
                Some(CallEvent::Audio(samples)) => {
                    let Some(encoder) = encoder.as_mut() else { continue };
                    if samples.len() != FRAME_SAMPLES {
                        tracing::debug!(%call_id, samples = samples.len(), "agent frame of unexpected length skipped");
                        continue;
                    }
                    match encoder.encode(&samples, &mut packet) {
                        Ok(length) => {
                            let sample = Sample {
                                data: Bytes::copy_from_slice(&packet[..length]),
                                timestamp: SystemTime::now(),
                                duration: FRAME_DURATION,
                                ..Default::default()
                            };
                            // Before the caller connects there is nowhere to send; the frame is dropped.
                            let _ = track.write_sample(&sample).await;
                        }
                        Err(error) => tracing::warn!(%call_id, %error, "opus encoding failed"),
                    }
                }
                // Nothing is buffered on Parley's side of WebRTC: frames leave as they come.
                Some(CallEvent::Clear) => {}
                Some(CallEvent::Caption { speaker, text, is_final }) => {
                    send_caption(&captions, &mut pending_captions, captions_message(speaker, &text, is_final)).await;
                }
                Some(CallEvent::Ended(reason)) => {
                    send_last_caption(&captions, &mut pending_captions, ended_message(&reason)).await;
                    // Let the last message leave before the connection closes.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break None;
                }
                None => break None,
            },
            changed = remote_track.changed(), if remote_track_open => {
                if changed.is_err() {
                    remote_track_open = false;
                    continue;
                }
                let track = remote_track.borrow_and_update().clone();
                if let (Some(track), None) = (track, reader.as_ref()) {
                    reader = Some(tokio::spawn(read_caller_audio(track, audio_in.clone(), Arc::clone(&corrupt))));
                }
            }
            changed = peer_state.changed() => {
                if changed.is_err() {
                    break Some("peer connection gone");
                }
                let now = *peer_state.borrow_and_update();
                match now {
                    RTCPeerConnectionState::Connected => connected = true,
                    RTCPeerConnectionState::Failed => break Some("connection failed"),
                    RTCPeerConnectionState::Closed => break Some("peer closed"),
                    _ => {}
                }
            }
            () = &mut connect_deadline, if !connected => break Some("caller never connected"),
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break Some("node shutting down");
                }
            }
        }
    };
    if let Some(why) = ending {
        tracing::info!(%call_id, why, "voice call ending");
        // The agent side ends with `Ended`, which is no longer read: the call ends either way.
        calls::hang_up(&state.runtime, call_id);
        send_last_caption(&captions, &mut pending_captions, ended_message(&EndReason::HungUp)).await;
    }
    drop(events);
    drop(audio_in);
    let channel = captions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    if let Some(channel) = channel {
        let _ = tokio::time::timeout(Duration::from_secs(1), channel.close()).await;
    }
    // Closing waits for the transports to stop; it must not hold the call's task forever.
    match tokio::time::timeout(CLOSE_WAIT, connection.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%call_id, %error, "closing the peer connection"),
        Err(_) => tracing::warn!(%call_id, "the peer connection did not close in time"),
    }
    if let Some(reader) = reader {
        // The reader ends once the connection is closed; make sure it does.
        reader.abort();
        let _ = reader.await;
    }
    let corrupt = corrupt.load(Ordering::Relaxed);
    if corrupt > 0 {
        tracing::info!(%call_id, corrupt, "caller packets that were not Opus were skipped");
    }
    tracing::info!(%call_id, "voice call closed");
}

/// Sends a caption on the caller's data channel, or holds it until the channel opens.
async fn send_caption(captions: &Arc<Mutex<Option<Arc<RTCDataChannel>>>>, pending: &mut Vec<String>, message: String) {
    let channel = captions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let open = channel.filter(|channel| channel.ready_state() == RTCDataChannelState::Open);
    let Some(channel) = open else {
        if pending.len() == MAX_PENDING_CAPTIONS {
            pending.remove(0);
        }
        pending.push(message);
        return;
    };
    for held in pending.drain(..) {
        let _ = channel.send_text(held).await;
    }
    let _ = channel.send_text(message).await;
}

/// Sends the captions held while the caller's data channel was not open yet, once it is.
async fn flush_captions(captions: &Arc<Mutex<Option<Arc<RTCDataChannel>>>>, pending: &mut Vec<String>) {
    let channel = captions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    if let Some(channel) = channel.filter(|channel| channel.ready_state() == RTCDataChannelState::Open) {
        for held in pending.drain(..) {
            let _ = channel.send_text(held).await;
        }
    }
}

/// Sends the call's last message: when the caller's data channel is still opening (a call hung
/// up right after it connected), waits for it a little, so the caller learns why the call ended.
async fn send_last_caption(
    captions: &Arc<Mutex<Option<Arc<RTCDataChannel>>>>,
    pending: &mut Vec<String>,
    message: String,
) {
    let deadline = tokio::time::Instant::now() + LAST_CAPTION_WAIT;
    while tokio::time::Instant::now() < deadline {
        let state = captions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|channel| channel.ready_state());
        // Not announced yet, or announced and still opening: wait; open or closing: go on.
        if matches!(state, Some(RTCDataChannelState::Open | RTCDataChannelState::Closing | RTCDataChannelState::Closed))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    send_caption(captions, pending, message).await;
}

/// Decodes the caller's Opus packets into the call until the track ends. Packets that do not
/// decode are skipped and counted in `corrupt` (the call's task logs the count at the end).
async fn read_caller_audio(track: Arc<TrackRemote>, audio_in: calls::CallAudioIn, corrupt: Arc<AtomicU64>) {
    let mut decoder = match opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono) {
        Ok(decoder) => decoder,
        Err(error) => {
            tracing::error!(%error, "opus decoder unavailable");
            return;
        }
    };
    let mut pcm = vec![0i16; MAX_DECODED_SAMPLES];
    while let Ok((packet, _attributes)) = track.read_rtp().await {
        if packet.payload.is_empty() {
            continue;
        }
        match decoder.decode(&packet.payload, &mut pcm, false) {
            Ok(samples) => audio_in.push(&pcm[..samples.min(pcm.len())]),
            Err(_) => {
                corrupt.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER_HEAD: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

    #[test]
    fn offers_are_checked_for_audio_and_opus() {
        let opus =
            format!("{OFFER_HEAD}m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2\r\n");
        assert!(check_offer(&opus).is_ok());
        let pcmu_only =
            format!("{OFFER_HEAD}m=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:0 PCMU/8000\r\n");
        assert_eq!(check_offer(&pcmu_only).unwrap_err().code(), "no_opus");
        let video =
            format!("{OFFER_HEAD}m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\n");
        assert_eq!(check_offer(&video).unwrap_err().code(), "no_audio");
        assert_eq!(check_offer("hello").unwrap_err().code(), "invalid_sdp");
        assert_eq!(check_offer("").unwrap_err().code(), "invalid_sdp");
    }

    #[test]
    fn opus_round_trips_a_tone_at_48_khz() {
        let mut encoder = opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip).unwrap();
        let mut decoder = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono).unwrap();
        let mut packet = vec![0u8; MAX_PACKET_BYTES];
        let mut pcm = vec![0i16; MAX_DECODED_SAMPLES];
        let mut energy = 0f64;
        for frame in 0..10 {
            let tone: Vec<i16> = (0..FRAME_SAMPLES)
                .map(|i| {
                    let t = (frame * FRAME_SAMPLES + i) as f64 / f64::from(SAMPLE_RATE);
                    (8_000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
                })
                .collect();
            let length = encoder.encode(&tone, &mut packet).unwrap();
            let samples = decoder.decode(&packet[..length], &mut pcm, false).unwrap();
            assert_eq!(samples, FRAME_SAMPLES);
            energy += pcm[..samples].iter().map(|&s| f64::from(s).powi(2)).sum::<f64>();
        }
        // The decoded tone carries energy comparable to the input's (8000 / √2 RMS).
        let rms = (energy / (10.0 * FRAME_SAMPLES as f64)).sqrt();
        assert!(rms > 3_000.0 && rms < 8_000.0, "rms {rms}");
    }
}
