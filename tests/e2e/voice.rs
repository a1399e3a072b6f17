//! Voice calls against the real `parley` binary: a WebRTC caller built on the `webrtc` crate
//! (Opus both ways, the `captions` data channel, WHIP signalling) and a Twilio Media Streams
//! client over a signed WebSocket, speaking speech synthesised by `espeak-ng` during the test.
//!
//! A second, independent WebRTC peer, aiortc (Python, `tests/e2e/python/aiortc_call.py`), calls
//! with a WAV file and records the answer.
//!
//! Also: refused offers and streams, corrupt Opus packets, Twilio streams that break the
//! protocol, the per-agent call limit, calls in a row leaving no live call, file descriptor or
//! thread behind, and no audio anywhere on disk after a call.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_OPUS};
use webrtc::api::APIBuilder;
use webrtc::media::Sample;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::{RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType};
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;
use webrtc::track::track_local::TrackLocal;

use crate::binary::Node;
use crate::common::OPERATOR_KEY;

/// What the caller says; the agent's knowledge base answers it.
const QUESTION: &str = "How many days do I have to return an item?";
/// The public URL the phone test's node believes Twilio reaches it at.
const PUBLIC_URL: &str = "https://voice.parley.test";
const TWILIO_TOKEN: &str = "twilio-auth-token-for-tests";
/// A greeting long enough (about 25 s) for a caller to ask over it.
const LONG_GREETING: &str =
    "Hello, and thank you for calling the returns desk. We can help you with returns, refunds, \
    exchanges and deliveries, and with any question about an order you placed with us. Our team is here from nine in \
    the morning until five in the evening on weekdays, and from ten until two on Saturdays. If you have your order \
    number to hand, it helps us find your order quickly. Please tell me what you need today.";
/// How long an answer may take on a small machine (whisper, the local model, the voice).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(180);

/// Whether the speech models are installed; without them a call cannot start. With
/// `PARLEY_REQUIRE_MODELS` set, their absence fails the test instead of skipping it.
fn voice_models_installed() -> bool {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let models = home.join(".cache/parley/models");
    let names: Vec<String> = std::fs::read_dir(&models)
        .map(|entries| entries.flatten().map(|entry| entry.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let installed = ["whisper-tiny-en", "silero-vad", "onnxruntime"]
        .iter()
        .all(|prefix| names.iter().any(|name| name.starts_with(prefix)));
    if !installed {
        assert!(
            std::env::var_os("PARLEY_REQUIRE_MODELS").is_none(),
            "the voice models are not installed in {models:?}"
        );
        eprintln!("skipping: the voice models are not installed (make models)");
    }
    installed
}

/// A node of the real binary with its own data and temporary directories.
struct VoiceNode {
    node: Option<Node>,
    base: String,
    data_dir: tempfile::TempDir,
    temp_dir: tempfile::TempDir,
    token: String,
}

impl VoiceNode {
    fn start() -> VoiceNode {
        let data_dir = tempfile::tempdir().unwrap();
        let temp_dir = tempfile::tempdir().unwrap();
        let (data, temp) = (data_dir.path().to_owned(), temp_dir.path().to_owned());
        let mut node = Node::start(|command| {
            command
                .arg("--data-dir")
                .arg(&data)
                .env("TMPDIR", &temp)
                .env("PARLEY_OPERATOR_KEY", OPERATOR_KEY)
                .env("PARLEY_SERVER__PUBLIC_URL", PUBLIC_URL)
                .env("PARLEY_RATE_LIMIT__BURST", "10000");
        });
        let base = node.base_url();
        node.drain();
        VoiceNode { node: Some(node), base, data_dir, temp_dir, token: String::new() }
    }

    /// What the node has printed and logged so far, for failure messages and log checks.
    fn log(&mut self) -> String {
        let Some(node) = self.node.as_mut() else { return String::new() };
        format!("{}\n{}", node.drain(), node.log())
    }

    fn pid(&self) -> u32 {
        self.node.as_ref().map(Node::pid).unwrap_or_default()
    }

    async fn call(&self, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = reqwest::Client::new().request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// A tenant with one voice agent (answering from a document about returns); returns the
    /// agent's public id.
    async fn voice_agent(&mut self, voice: Value, allowed_origins: Value) -> String {
        self.voice_agent_with(voice, allowed_origins, json!({})).await
    }

    /// Like `voice_agent`, with more of the agent's settings (`retention`, `greeting`).
    async fn voice_agent_with(&mut self, voice: Value, allowed_origins: Value, more: Value) -> String {
        let (status, tenant) =
            self.call(reqwest::Method::POST, "/admin/v1/tenants", OPERATOR_KEY, Some(json!({ "name": "Voice" }))).await;
        assert_eq!(status, 201, "{tenant}");
        self.token = tenant["owner_key"]["secret"].as_str().unwrap().to_owned();
        let token = self.token.clone();
        let (status, agent) = self
            .call(
                reqwest::Method::POST,
                "/admin/v1/agents",
                &token,
                Some({
                    let mut agent =
                        json!({ "name": "Voice agent", "voice": voice, "allowed_origins": allowed_origins });
                    agent.as_object_mut().unwrap().extend(more.as_object().unwrap().clone());
                    agent
                }),
            )
            .await;
        assert_eq!(status, 201, "{agent}");
        let agent_id = agent["id"].as_str().unwrap();
        let (status, document) = self
            .call(
                reqwest::Method::POST,
                &format!("/admin/v1/agents/{agent_id}/documents"),
                &token,
                Some(json!({ "title": "Returns", "text": "You can return any item within 30 days of delivery for a full refund." })),
            )
            .await;
        assert_eq!(status, 201, "{document}");
        agent["public_id"].as_str().unwrap().to_owned()
    }

    /// Stores the tenant's Twilio credentials; returns the account SID and the answer.
    async fn store_twilio_credentials(&self) -> (String, Value) {
        let account_sid = format!("AC{}", "0123456789abcdef".repeat(2));
        let (status, stored) = self
            .call(
                reqwest::Method::PUT,
                "/admin/v1/telephony/twilio",
                &self.token,
                Some(json!({ "account_sid": account_sid, "auth_token": TWILIO_TOKEN })),
            )
            .await;
        assert_eq!(status, 200, "{stored}");
        (account_sid, stored)
    }

    fn stop(mut self) {
        if let Some(node) = self.node.take() {
            node.terminate();
        }
    }
}

impl Drop for VoiceNode {
    /// A failed test still stops its node.
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            node.kill();
        }
    }
}

/// Speech synthesised by espeak-ng: (samples, rate).
fn synthesise(text: &str) -> (Vec<i16>, u32) {
    let output = std::process::Command::new("espeak-ng").args(["--stdout", "-s", "150", text]).output().unwrap();
    assert!(output.status.success(), "espeak-ng failed");
    let wav = output.stdout;
    assert_eq!(&wav[..4], b"RIFF");
    let rate = u32::from_le_bytes(wav[24..28].try_into().unwrap());
    // espeak-ng writes to a pipe, so the chunk sizes are placeholders: the samples run to the end.
    let data = wav.windows(4).position(|window| window == b"data").unwrap() + 8;
    let samples = wav[data..].chunks_exact(2).map(|pair| i16::from_le_bytes([pair[0], pair[1]])).collect();
    (samples, rate)
}

/// Linear-interpolation resampling, enough for test speech.
fn resample(samples: &[i16], from: u32, to: u32) -> Vec<i16> {
    let length = (samples.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    (0..length)
        .map(|index| {
            let position = index as f64 * f64::from(from) / f64::from(to);
            let left = position.floor() as usize;
            let fraction = position - left as f64;
            let a = f64::from(samples[left.min(samples.len() - 1)]);
            let b = f64::from(samples[(left + 1).min(samples.len() - 1)]);
            (a + (b - a) * fraction) as i16
        })
        .collect()
}

fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|&sample| f64::from(sample).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
}

/// What the caller received.
#[derive(Default)]
struct Received {
    packets: usize,
    /// 20 ms frames of agent audio louder than silence.
    loud_frames: usize,
    messages: Vec<Value>,
}

/// A WebRTC caller: one Opus track each way and the `captions` data channel.
struct RtcCaller {
    connection: Arc<RTCPeerConnection>,
    track: Arc<TrackLocalStaticSample>,
    location: String,
    received: Arc<Mutex<Received>>,
    state: watch::Receiver<RTCPeerConnectionState>,
}

fn opus_capability() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// Posts an SDP offer as is; returns status, headers and body.
async fn post_offer(
    base: &str,
    public_id: &str,
    content_type: &str,
    body: Vec<u8>,
    origin: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut request = reqwest::Client::new()
        .post(format!("{base}/v1/agents/{public_id}/voice"))
        .timeout(Duration::from_secs(60))
        .header("content-type", content_type)
        .body(body);
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

impl RtcCaller {
    /// Offers a call; the refusal's status and problem document when it is not answered.
    async fn call(base: &str, public_id: &str, origin: Option<&str>) -> Result<RtcCaller, (u16, Value)> {
        let mut media = MediaEngine::default();
        media
            .register_codec(
                RTCRtpCodecParameters { capability: opus_capability(), payload_type: 111, ..Default::default() },
                RTPCodecType::Audio,
            )
            .unwrap();
        let api = APIBuilder::new().with_media_engine(media).build();
        let connection = Arc::new(api.new_peer_connection(RTCConfiguration::default()).await.unwrap());
        let track = Arc::new(TrackLocalStaticSample::new(opus_capability(), "caller".to_owned(), "test".to_owned()));
        let sender = connection.add_track(Arc::clone(&track) as Arc<dyn TrackLocal + Send + Sync>).await.unwrap();
        tokio::spawn(async move { while sender.read_rtcp().await.is_ok() {} });
        let received = Arc::new(Mutex::new(Received::default()));
        let captions = connection.create_data_channel("captions", None).await.unwrap();
        let messages = Arc::clone(&received);
        captions.on_message(Box::new(move |message| {
            if let Ok(value) = serde_json::from_slice::<Value>(&message.data) {
                messages.lock().unwrap().messages.push(value);
            }
            Box::pin(async {})
        }));
        let audio = Arc::clone(&received);
        connection.on_track(Box::new(move |track, _, _| {
            let audio = Arc::clone(&audio);
            tokio::spawn(async move {
                let mut decoder = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
                let mut pcm = vec![0i16; 5_760];
                while let Ok((packet, _)) = track.read_rtp().await {
                    let Ok(samples) = decoder.decode(&packet.payload, &mut pcm, false) else { continue };
                    let mut received = audio.lock().unwrap();
                    received.packets += 1;
                    if rms(&pcm[..samples]) > 300.0 {
                        received.loud_frames += 1;
                    }
                }
            });
            Box::pin(async {})
        }));
        let (state_sender, state) = watch::channel(RTCPeerConnectionState::New);
        connection.on_peer_connection_state_change(Box::new(move |new_state| {
            state_sender.send_replace(new_state);
            Box::pin(async {})
        }));
        let offer = connection.create_offer(None).await.unwrap();
        let mut gathered = connection.gathering_complete_promise().await;
        connection.set_local_description(offer).await.unwrap();
        let _ = gathered.recv().await;
        let sdp = connection.local_description().await.unwrap().sdp;
        let (status, headers, body) = post_offer(base, public_id, "application/sdp", sdp.into_bytes(), origin).await;
        if status != 201 {
            let _ = connection.close().await;
            assert_eq!(headers["content-type"], "application/problem+json", "{status}: {body}");
            return Err((status, serde_json::from_str(&body).unwrap()));
        }
        assert_eq!(headers["content-type"], "application/sdp");
        let location = headers["location"].to_str().unwrap().to_owned();
        assert!(location.starts_with("/v1/calls/"), "{location}");
        assert!(body.contains("a=candidate:"), "the answer holds its candidates: {body}");
        connection.set_remote_description(RTCSessionDescription::answer(body).unwrap()).await.unwrap();
        Ok(RtcCaller { connection, track, location, received, state })
    }

    async fn wait_connected(&mut self) {
        tokio::time::timeout(
            Duration::from_secs(30),
            self.state.wait_for(|state| *state == RTCPeerConnectionState::Connected),
        )
        .await
        .expect("the call never connected")
        .unwrap();
    }

    /// Sends speech (48 kHz) as 20 ms Opus frames in real time, then `silence` of quiet.
    async fn speak(&self, speech: &[i16], silence: Duration) {
        let mut encoder = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        let quiet = vec![0i16; (silence.as_millis() as usize) * 48];
        let mut packet = vec![0u8; 1_500];
        let mut clock = tokio::time::interval(Duration::from_millis(20));
        for frame in speech.chunks(960).chain(quiet.chunks(960)) {
            let mut frame = frame.to_vec();
            frame.resize(960, 0);
            let length = encoder.encode(&frame, &mut packet).unwrap();
            clock.tick().await;
            let sample = Sample {
                data: bytes::Bytes::copy_from_slice(&packet[..length]),
                timestamp: SystemTime::now(),
                duration: Duration::from_millis(20),
                ..Default::default()
            };
            self.track.write_sample(&sample).await.unwrap();
        }
    }

    /// Sends `payloads` as they are, one every 20 ms, in the audio track's RTP packets.
    async fn send_payloads(&self, payloads: &[Vec<u8>]) {
        let mut clock = tokio::time::interval(Duration::from_millis(20));
        for payload in payloads {
            clock.tick().await;
            let sample = Sample {
                data: bytes::Bytes::copy_from_slice(payload),
                timestamp: SystemTime::now(),
                duration: Duration::from_millis(20),
                ..Default::default()
            };
            self.track.write_sample(&sample).await.unwrap();
        }
    }

    /// Waits until `done` holds for what was received.
    async fn wait_until(&self, what: &str, timeout: Duration, done: impl Fn(&Received) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let received = self.received.lock().unwrap();
                if done(&received) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: not received within {timeout:?} (packets {}, loud frames {}, messages {:?})",
                    received.packets,
                    received.loud_frames,
                    received.messages
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn hang_up(&self, base: &str) -> u16 {
        reqwest::Client::new().delete(format!("{base}{}", self.location)).send().await.unwrap().status().as_u16()
    }

    async fn close(self) {
        // The caller's own side; a close that hangs must not hang the test.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.connection.close()).await;
    }
}

/// Whether the question is back as the caller's final caption.
fn question_heard(received: &Received) -> bool {
    received.messages.iter().any(is_question_caption)
}

fn is_question_caption(message: &Value) -> bool {
    message["type"] == "caption"
        && message["speaker"] == "caller"
        && message["final"] == true
        && message["text"].as_str().unwrap_or("").to_lowercase().contains("return")
}

fn ended(received: &Received) -> bool {
    received.messages.iter().any(|message| message["type"] == "ended")
}

/// Every file under `root` with its size and modification time.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut files = BTreeMap::new();
    let mut pending = vec![root.to_owned()];
    while let Some(directory) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&directory) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(metadata) = entry.metadata() else { continue };
            if metadata.is_dir() {
                pending.push(path);
            } else {
                files.insert(path, (metadata.len(), metadata.modified().unwrap()));
            }
        }
    }
    files
}

/// Fails if any file under the roots holds a WAV or Ogg container, or any stretch of the given
/// audio (as 16-bit little-endian PCM, or raw bytes for μ-law).
fn assert_no_audio(roots: &[&Path], clips: &[Vec<u8>]) {
    for root in roots {
        for path in snapshot(root).keys() {
            let bytes = std::fs::read(path).unwrap_or_default();
            assert!(!bytes.windows(8).any(|window| window == b"WAVEfmt "), "{path:?} holds a WAV file");
            assert!(!bytes.windows(4).any(|window| window == b"OggS"), "{path:?} holds an Ogg stream");
            for clip in clips {
                // Three 64-byte stretches from the loud middle of the clip.
                for start in [clip.len() / 4, clip.len() / 2, clip.len() * 3 / 4] {
                    let needle = &clip[start & !1..(start & !1) + 64];
                    assert!(
                        !bytes.windows(needle.len()).any(|window| window == needle),
                        "{path:?} holds the caller's audio"
                    );
                }
            }
        }
    }
}

fn pcm_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|sample| sample.to_le_bytes()).collect()
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|entries| entries.count()).unwrap_or(0)
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|entries| entries.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_call_is_heard_answered_captioned_and_keeps_no_audio() {
    if !voice_models_installed() {
        return;
    }
    let mut node = VoiceNode::start();
    let public_id = node.voice_agent(json!({ "enabled": true }), json!([])).await;
    let (speech, rate) = synthesise(QUESTION);
    let speech48 = resample(&speech, rate, 48_000);
    // Let the document's indexing settle, so that only the call can write from here on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = [snapshot(node.data_dir.path()), snapshot(node.temp_dir.path())];

    let mut caller = RtcCaller::call(&node.base, &public_id, None).await.unwrap();
    caller.wait_connected().await;
    // The disclosure is spoken first: agent audio arrives before the caller says anything.
    caller.wait_until("the disclosure", Duration::from_secs(60), |received| received.loud_frames > 25).await;
    caller.speak(&speech48, Duration::from_millis(1_500)).await;
    caller.wait_until("the caller's words as a final caption", ANSWER_TIMEOUT, question_heard).await;
    let loud_before_answer = caller.received.lock().unwrap().loud_frames;
    caller
        .wait_until("the agent's spoken answer", ANSWER_TIMEOUT, |received| {
            received.loud_frames > loud_before_answer + 25
                && received.messages.iter().any(|message| message["type"] == "caption" && message["speaker"] == "agent")
        })
        .await;
    assert_eq!(caller.hang_up(&node.base).await, 204);
    caller.wait_until("the end of the call", Duration::from_secs(10), ended).await;
    let messages = caller.received.lock().unwrap().messages.clone();
    assert_eq!(messages.last().unwrap(), &json!({ "type": "ended", "reason": "hung_up" }), "{messages:?}");
    assert_eq!(caller.hang_up(&node.base).await, 404, "a call hangs up once");
    caller.close().await;

    // The call is a conversation on the voice channel, transcribed.
    let token = node.token.clone();
    let (status, conversations) =
        node.call(reqwest::Method::GET, "/admin/v1/conversations?channel=voice", &token, None).await;
    assert_eq!(status, 200, "{conversations}");
    assert_eq!(conversations["items"].as_array().unwrap().len(), 1, "{conversations}");
    // Spoken messages show their place in the call and their language.
    let conversation_id = conversations["items"][0]["id"].as_str().unwrap();
    let (status, transcript) =
        node.call(reqwest::Method::GET, &format!("/admin/v1/conversations/{conversation_id}"), &token, None).await;
    assert_eq!(status, 200, "{transcript}");
    let question = &transcript["messages"][0];
    assert_eq!((&question["role"], &question["language"]), (&json!("user"), &json!("en")), "{transcript}");
    let (start, end) = (question["speech_start_ms"].as_u64().unwrap(), question["speech_end_ms"].as_u64().unwrap());
    let spoken_ms = speech.len() as u64 * 1000 / u64::from(rate);
    // Times count the caller's audio as it arrived (this client sends none before it speaks).
    assert!(end > start + spoken_ms / 2 && end <= start + spoken_ms + 2_000, "{question} for {spoken_ms} ms of speech");

    // No audio anywhere: no file but the database's was written during the call, and no file
    // of the data or temporary directory holds a container or a stretch of the caller's audio.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = [snapshot(node.data_dir.path()), snapshot(node.temp_dir.path())];
    for (before, after) in before.iter().zip(&after) {
        for (path, state) in after {
            let name = path.file_name().unwrap().to_string_lossy();
            if before.get(path) != Some(state) {
                assert!(name.starts_with("parley.db"), "{path:?} was written during the call");
            }
        }
    }
    assert_no_audio(
        &[node.data_dir.path(), node.temp_dir.path()],
        &[pcm_bytes(&speech), pcm_bytes(&speech48), pcm_bytes(&resample(&speech, rate, 16_000))],
    );
    node.stop();
}

/// A second, independent WebRTC peer: aiortc (`tests/e2e/python/aiortc_call.py`, in the venv
/// `PARLEY_PYTHON` names) calls with a WAV file and records the agent. The question is heard,
/// the call hangs up cleanly, and the recorded answer, transcribed by whisper, says what the
/// agent's captions say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_calls_with_a_wav_file_and_records_the_answer() {
    let Some(engines) = crate::common::voice_engines() else { return };
    let Some(python) = std::env::var_os("PARLEY_PYTHON") else {
        eprintln!("*** SKIPPED: PARLEY_PYTHON not set (make test sets it to a venv with aiortc) ***");
        return;
    };
    let mut node = VoiceNode::start();
    let public_id = node.voice_agent(json!({ "enabled": true }), json!([])).await;
    let dir = tempfile::tempdir().unwrap();
    let (speech, rate) = synthesise(QUESTION);
    // Quiet while the disclosure plays, the question, then quiet while the agent answers.
    let mut samples = vec![0.0f32; rate as usize * 6];
    samples.extend(speech.iter().map(|sample| f32::from(*sample) / 32768.0));
    samples.extend(std::iter::repeat_n(0.0, rate as usize * 60));
    let (speech_wav, reply_wav) = (dir.path().join("question.wav"), dir.path().join("reply.wav"));
    crate::common::write_wav(&speech_wav, &samples, rate);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/python/aiortc_call.py");
    let base = node.base.clone();
    let (script_path, speech_arg, reply_arg) = (script.clone(), speech_wav.clone(), reply_wav.clone());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&python)
            .arg(&script_path)
            .arg(&base)
            .arg(&public_id)
            .arg(&speech_arg)
            .arg(&reply_arg)
            .arg(ANSWER_TIMEOUT.as_secs().to_string())
            .output()
            .unwrap_or_else(|error| panic!("PARLEY_PYTHON={python:?} does not run: {error}"))
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the aiortc peer failed (is aiortc installed in PARLEY_PYTHON's venv? `make pytools`): {stderr}\n{}",
        node.log()
    );
    let result: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| panic!("{error}: {stderr}"));
    assert_eq!(result["status"], 201, "{result}");
    assert_eq!(result["hang_up_status"], 204, "{result}");
    let captions = result["captions"].as_array().unwrap();
    let heard = captions
        .iter()
        .position(is_question_caption)
        .unwrap_or_else(|| panic!("the question was not heard: {result}\n{}", node.log()));
    assert_eq!(captions.last(), Some(&json!({ "type": "ended", "reason": "hung_up" })), "{result}");
    let answer: String = captions[heard + 1..]
        .iter()
        .filter(|caption| caption["speaker"] == "agent" && caption["final"] == true)
        .filter_map(|caption| caption["text"].as_str())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(!answer.is_empty(), "the agent answered: {result}");

    // What aiortc recorded of the answer is what the captions say.
    let reply = parley_models::tts::parse_wav(&std::fs::read(&reply_wav).unwrap()).unwrap();
    assert_eq!(reply.sample_rate, 16_000);
    let from = (result["answer_from_seconds"].as_f64().unwrap() * 16_000.0) as usize;
    let answer_audio: Vec<f32> =
        reply.samples[from.min(reply.samples.len())..].iter().take(16_000 * 25).copied().collect();
    let transcript = engines
        .speech_to_text
        .transcribe(
            answer_audio.into(),
            parley_models::stt::TranscribeOptions { language: Some("en".to_owned()), partial: None },
        )
        .await
        .unwrap();
    let spoken = crate::common::words(&transcript.text);
    let captioned = crate::common::words(&answer);
    let matched = spoken.iter().filter(|word| captioned.contains(word)).count();
    assert!(
        spoken.len() >= 3 && matched * 10 >= spoken.len() * 6,
        "the recorded answer {:?} does not say what the captions say: {answer:?}",
        transcript.text
    );
    node.stop();
}

/// Packets that are not Opus: invalid frame counts, frame lengths past the packet's end and
/// random bytes, ten seconds of them. The node skips what does not decode and the call goes
/// on: the question spoken afterwards is heard and answered, and the node stays healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_opus_packets_are_skipped_and_the_call_goes_on() {
    if !voice_models_installed() {
        return;
    }
    let mut node = VoiceNode::start();
    let public_id = node.voice_agent(json!({ "enabled": true }), json!([])).await;
    let (speech, rate) = synthesise(QUESTION);
    let speech48 = resample(&speech, rate, 48_000);
    let mut caller = RtcCaller::call(&node.base, &public_id, None).await.unwrap();
    caller.wait_connected().await;

    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let payloads: Vec<Vec<u8>> = (0..500)
        .map(|index| match index % 3 {
            // Code 3 with a frame count of zero.
            0 => vec![0x03, 0x00],
            // Code 2 whose first frame is longer than the packet.
            1 => vec![0x02, 0xFB, 0x01, 0x02],
            _ => (0..(random() % 300 + 1)).map(|_| random() as u8).collect(),
        })
        .collect();
    caller.send_payloads(&payloads).await;
    caller.speak(&speech48, Duration::from_millis(1_500)).await;
    caller.wait_until("the caller's words after the corrupt packets", ANSWER_TIMEOUT, question_heard).await;
    let (status, health) = node.call(reqwest::Method::GET, "/healthz", "", None).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(caller.hang_up(&node.base).await, 204);
    caller.wait_until("the end of the call", Duration::from_secs(10), ended).await;
    caller.close().await;
    // The packets that did not decode were counted and skipped.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = node.log();
        if log.contains("caller packets that were not Opus were skipped") {
            break;
        }
        assert!(Instant::now() < deadline, "no note of skipped packets in the log:\n{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_offers_and_refused_callers_get_problem_documents() {
    let mut node = VoiceNode::start();
    let public_id = node.voice_agent(json!({ "enabled": true }), json!(["https://allowed.example"])).await;
    let head = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("text/plain", b"v=0".to_vec(), 415, "unsupported_media_type"),
        ("application/sdp", b"this is not SDP".to_vec(), 400, "invalid_sdp"),
        ("application/sdp", vec![0xFF, 0xFE, 0x00], 400, "invalid_sdp"),
        (
            "application/sdp",
            format!("{head}m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\n")
                .into_bytes(),
            400,
            "no_audio",
        ),
        (
            "application/sdp",
            format!("{head}m=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:0 PCMU/8000\r\n").into_bytes(),
            400,
            "no_opus",
        ),
        ("application/sdp", vec![b'a'; 70_000], 413, "payload_too_large"),
    ];
    for (content_type, body, status, code) in cases {
        let (got, headers, text) = post_offer(&node.base, &public_id, content_type, body, None).await;
        assert_eq!(got, status, "{content_type}: {text}");
        assert_eq!(headers["content-type"], "application/problem+json");
        let problem: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(problem["code"], code, "{problem}");
    }
    // A valid offer: refused for an unknown agent, a page of another origin, an agent without voice.
    let (status, problem) = RtcCaller::call(&node.base, "ag_unknown", None).await.err().unwrap();
    assert_eq!(status, 404, "{problem}");
    let (status, problem) = RtcCaller::call(&node.base, &public_id, Some("https://evil.example")).await.err().unwrap();
    assert_eq!(status, 403, "{problem}");
    let token = node.token.clone();
    let (_, agent) =
        node.call(reqwest::Method::POST, "/admin/v1/agents", &token, Some(json!({ "name": "Silent" }))).await;
    let silent = agent["public_id"].as_str().unwrap();
    let (status, problem) = RtcCaller::call(&node.base, silent, None).await.err().unwrap();
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["code"], "voice_disabled", "{problem}");
    // Hanging up a call that does not exist.
    for path in ["/v1/calls/not-a-call", &format!("/v1/calls/{}", uuid::Uuid::now_v7())] {
        let response = reqwest::Client::new().delete(format!("{}{path}", node.base)).send().await.unwrap();
        assert_eq!(response.status(), 404);
    }
    node.stop();
}

/// The call limit, then twenty calls in a row, half hung up and half abandoned: no descriptor
/// or thread is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_limit_and_twenty_calls_in_a_row_leave_nothing_behind() {
    let rounds = 20;
    if !voice_models_installed() {
        return;
    }
    let mut node = VoiceNode::start();
    let public_id = node.voice_agent(json!({ "enabled": true, "max_concurrent_calls": 1 }), json!([])).await;
    let pid = node.pid();

    // One call at a time for this agent: a second is refused while the first is live.
    let mut first = RtcCaller::call(&node.base, &public_id, None).await.unwrap();
    first.wait_connected().await;
    let (status, problem) = RtcCaller::call(&node.base, &public_id, None).await.err().unwrap();
    assert_eq!(status, 429, "{problem}");
    assert_eq!(problem["code"], "call_limit", "{problem}");
    assert_eq!(first.hang_up(&node.base).await, 204);
    first.wait_until("the end of the call", Duration::from_secs(10), ended).await;
    first.close().await;

    // Idle threads of the blocking pool leave after ten seconds: measure once they have.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let (descriptors_before, threads_before) = (open_descriptors(pid), threads(pid));
    let mut stalled = 0;
    for round in 0..rounds {
        // The slot of the previous call is freed once its end is noticed, or this call gets 429.
        let mut caller = call_when_free(&node.base, &public_id, round, &mut stalled).await;
        let connected = tokio::time::timeout(
            Duration::from_secs(30),
            caller.state.wait_for(|state| *state == RTCPeerConnectionState::Connected),
        )
        .await
        .is_ok_and(|state| state.is_ok());
        assert!(connected, "call {round} never connected\n{}", node.log());
        caller.wait_until("agent audio", Duration::from_secs(60), |received| received.packets > 5).await;
        if round % 2 == 0 {
            assert_eq!(caller.hang_up(&node.base).await, 204);
            caller.wait_until("the end of the call", Duration::from_secs(10), ended).await;
        }
        // Odd rounds: the caller just goes away, and the node notices the peer closing.
        caller.close().await;
    }
    // The last call's slot is free too.
    let last = call_when_free(&node.base, &public_id, rounds, &mut stalled).await;
    assert_eq!(last.hang_up(&node.base).await, 204);
    last.close().await;
    assert_eq!(stalled, 0, "negotiations abandoned with 503");
    tokio::time::sleep(Duration::from_secs(15)).await;
    let (descriptors_after, threads_after) = (open_descriptors(pid), threads(pid));
    assert!(
        descriptors_after <= descriptors_before + 4,
        "open file descriptors grew from {descriptors_before} to {descriptors_after}"
    );
    assert!(threads_after <= threads_before + 2, "threads grew from {threads_before} to {threads_after}");
    node.stop();
}

/// Calls the agent, retrying while its one slot is still taken by the previous call (whose end
/// the node notices within the ICE timeouts at most).
/// A negotiation the node abandoned (503 `negotiation_timeout`) is retried and counted in
/// `stalled`.
async fn call_when_free(base: &str, public_id: &str, round: usize, stalled: &mut usize) -> RtcCaller {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match RtcCaller::call(base, public_id, None).await {
            Ok(caller) => return caller,
            Err((429, _)) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(500)).await,
            Err((503, problem)) if problem["code"] == "negotiation_timeout" && *stalled < 2 => *stalled += 1,
            Err((status, problem)) => panic!("call {round}: {status} {problem}"),
        }
    }
}

/// Waits until the node's metrics count no live call.
async fn wait_for_no_live_calls(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
        if metrics.lines().any(|line| line == "parley_live_calls 0") {
            return;
        }
        assert!(Instant::now() < deadline, "calls are still live: {metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

type HmacSha1 = Hmac<sha1::Sha1>;

fn twilio_signature(url: &str) -> String {
    let mut mac = HmacSha1::new_from_slice(TWILIO_TOKEN.as_bytes()).unwrap();
    mac.update(url.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Twilio's first two events on a stream: `connected`, then `start` (μ-law at 8 kHz).
fn start_events(account_sid: &str, stream_sid: &str, parameters: Value) -> [Value; 2] {
    [
        json!({ "event": "connected", "protocol": "Call", "version": "1.0.0" }),
        json!({
            "event": "start", "sequenceNumber": "1", "streamSid": stream_sid,
            "start": {
                "accountSid": account_sid, "streamSid": stream_sid, "callSid": "CA0001", "tracks": ["inbound"],
                "customParameters": parameters,
                "mediaFormat": { "encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1 }
            }
        }),
    ]
}

/// Sends `codes` (μ-law at 8 kHz) as Twilio `media` events in real time, 20 ms each; the task
/// gives the writer back when done (or when the stream closed).
fn send_media<W>(mut writer: W, codes: Vec<u8>, stream_sid: &'static str) -> tokio::task::JoinHandle<W>
where
    W: futures::Sink<tungstenite::Message> + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut clock = tokio::time::interval(Duration::from_millis(20));
        for (chunk_index, chunk) in codes.chunks(160).enumerate() {
            clock.tick().await;
            let media = json!({
                "event": "media", "sequenceNumber": (chunk_index + 2).to_string(), "streamSid": stream_sid,
                "media": { "track": "inbound", "chunk": (chunk_index + 1).to_string(),
                           "timestamp": (chunk_index * 20).to_string(), "payload": STANDARD.encode(chunk) }
            });
            if writer.send(tungstenite::Message::Text(media.to_string().into())).await.is_err() {
                break;
            }
        }
        writer
    })
}

/// How far behind its arrival a `TwilioPhone` plays the agent's audio: the network and
/// Twilio's buffer. Longer than the node's one second between marks, so a clear while the
/// agent speaks always finds a mark in the buffer.
const PHONE_DELAY: Duration = Duration::from_millis(1_500);

/// What a `TwilioPhone` holds, has played and has seen.
#[derive(Default)]
struct PhoneState {
    /// μ-law still to be said into the microphone.
    microphone: std::collections::VecDeque<u8>,
    /// The agent's audio (`Some`: one frame) and marks (`None`), with when each arrived.
    buffer: std::collections::VecDeque<(Instant, Option<Vec<i16>>, Option<String>)>,
    /// Loud frames of agent audio played.
    loud_played: usize,
    /// Marks sent back once the audio before them had played.
    marks_played: Vec<String>,
    /// Marks sent back because a `clear` dropped them.
    marks_cleared: Vec<String>,
    clears: usize,
    /// Frames of agent audio a `clear` dropped.
    frames_cleared: usize,
    /// Events that are not Twilio's protocol, or broken.
    unexpected: Vec<String>,
    /// Asked to hang up: a `stop` event goes out on the next tick.
    stop: bool,
    /// Set once the stream closed, with the node's close frame if it sent one.
    closed: Option<Option<tungstenite::protocol::CloseFrame>>,
}

/// A phone on a Twilio Media Stream, played as Twilio plays one: the microphone goes out as a
/// `media` event every 20 ms (silence while nobody speaks); the agent's audio plays
/// `PHONE_DELAY` after it arrived; a `mark` goes back once the audio before it has played,
/// and a `clear` drops the buffered audio and sends back every mark it held.
struct TwilioPhone {
    state: Arc<Mutex<PhoneState>>,
    task: tokio::task::JoinHandle<()>,
}

impl TwilioPhone {
    fn start(
        socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
        account_sid: &str,
        stream_sid: &'static str,
        parameters: Value,
    ) -> TwilioPhone {
        let state = Arc::new(Mutex::new(PhoneState::default()));
        let shared = Arc::clone(&state);
        let [connected, start] = start_events(account_sid, stream_sid, parameters);
        let stop = json!({ "event": "stop", "streamSid": stream_sid,
                           "stop": { "accountSid": account_sid, "callSid": "CA0001" } });
        let task = tokio::spawn(async move {
            let text = |value: Value| tungstenite::Message::Text(value.to_string().into());
            let (mut writer, mut reader) = socket.split();
            for event in [connected, start] {
                if writer.send(text(event)).await.is_err() {
                    return;
                }
            }
            let mark = |name: String| json!({ "event": "mark", "streamSid": stream_sid, "mark": { "name": name } });
            let mut clock = tokio::time::interval(Duration::from_millis(20));
            let mut chunk = 0u64;
            let mut stopped = false;
            loop {
                let mut out = Vec::new();
                tokio::select! {
                    _ = clock.tick(), if !stopped => {
                        let mut state = shared.lock().unwrap();
                        if state.stop {
                            stopped = true;
                            out.push(stop.clone());
                        } else {
                            chunk += 1;
                            let take = state.microphone.len().min(160);
                            let mut codes: Vec<u8> = state.microphone.drain(..take).collect();
                            codes.resize(160, 0xFF);
                            out.push(json!({
                                "event": "media", "streamSid": stream_sid,
                                "media": { "track": "inbound", "chunk": chunk.to_string(),
                                           "timestamp": (chunk * 20).to_string(), "payload": STANDARD.encode(&codes) }
                            }));
                            while state.buffer.front().is_some_and(|(arrived, _, _)| arrived.elapsed() >= PHONE_DELAY) {
                                match state.buffer.pop_front() {
                                    Some((_, Some(frame), _)) if rms(&frame) > 300.0 => state.loud_played += 1,
                                    Some((_, None, Some(name))) => {
                                        state.marks_played.push(name.clone());
                                        out.push(mark(name));
                                    }
                                    _ => {}
                                }
                            }
                        }
                    }
                    message = reader.next() => {
                        let mut state = shared.lock().unwrap();
                        let message = match message {
                            Some(Ok(message)) => message,
                            Some(Err(_)) | None => {
                                state.closed = Some(None);
                                return;
                            }
                        };
                        let event: Value = match message {
                            tungstenite::Message::Close(frame) => {
                                state.closed = Some(frame);
                                return;
                            }
                            tungstenite::Message::Text(text) => match serde_json::from_str(text.as_str()) {
                                Ok(event) => event,
                                Err(_) => {
                                    state.unexpected.push(format!("not JSON: {text}"));
                                    continue;
                                }
                            },
                            _ => continue,
                        };
                        if event["streamSid"] != stream_sid {
                            state.unexpected.push(format!("another stream: {event}"));
                        }
                        match event["event"].as_str().unwrap_or_default() {
                            "media" => {
                                match event["media"]["payload"].as_str().map(|payload| STANDARD.decode(payload)) {
                                    Some(Ok(codes)) if codes.len() == 160 => {
                                        let frame = parley_channels::voice::mulaw::decode(&codes);
                                        state.buffer.push_back((Instant::now(), Some(frame), None));
                                    }
                                    _ => state.unexpected.push(format!("not 20 ms of μ-law: {event}")),
                                }
                            }
                            "mark" => match event["mark"]["name"].as_str() {
                                Some(name) => state.buffer.push_back((Instant::now(), None, Some(name.to_owned()))),
                                None => state.unexpected.push(format!("a mark without a name: {event}")),
                            },
                            "clear" => {
                                state.clears += 1;
                                let dropped: Vec<_> = state.buffer.drain(..).collect();
                                for (_, frame, name) in dropped {
                                    state.frames_cleared += usize::from(frame.is_some());
                                    if let Some(name) = name {
                                        state.marks_cleared.push(name.clone());
                                        out.push(mark(name));
                                    }
                                }
                            }
                            _ => state.unexpected.push(format!("not Twilio's protocol: {event}")),
                        }
                    }
                }
                for event in out {
                    if writer.send(text(event)).await.is_err() {
                        return;
                    }
                }
            }
        });
        TwilioPhone { state, task }
    }

    /// Says `samples` (8 kHz) into the microphone: sent as μ-law in real time from the next tick.
    fn say(&self, samples: &[i16]) {
        self.state.lock().unwrap().microphone.extend(parley_channels::voice::mulaw::encode(samples));
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PhoneState> {
        self.state.lock().unwrap()
    }

    async fn wait_until(&self, what: &str, timeout: Duration, done: impl Fn(&PhoneState) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let state = self.state();
                if done(&state) {
                    return;
                }
                assert!(state.closed.is_none(), "the stream closed ({:?}) while waiting for {what}", state.closed);
                assert!(
                    Instant::now() < deadline,
                    "no {what} in {timeout:?}: {} loud frames played, {} clears, unexpected {:?}",
                    state.loud_played,
                    state.clears,
                    state.unexpected
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `stop` and waits for the node to close the stream; returns what the phone saw.
    async fn hang_up(self) -> PhoneState {
        self.state().stop = true;
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the node closes the stream after stop")
            .unwrap();
        std::mem::take(&mut *self.state.lock().unwrap())
    }
}

/// Connects like Twilio does: a WebSocket with `X-Twilio-Signature` over the URL it was given.
async fn twilio_connect(
    base: &str,
    public_id: &str,
    signature: Option<String>,
) -> Result<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>, u16> {
    let path = format!("/v1/agents/{public_id}/phone/twilio");
    let mut request = format!("{}{path}", base.replacen("http://", "ws://", 1)).into_client_request().unwrap();
    if let Some(signature) = signature {
        request.headers_mut().insert("x-twilio-signature", signature.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(error) => panic!("{error}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_stream_is_signed_heard_and_answered_in_mulaw() {
    let mut node = VoiceNode::start();
    let voice = json!({ "enabled": true, "disclosure": "This call is transcribed." });
    let public_id =
        node.voice_agent_with(voice, json!(["https://allowed.example"]), json!({ "greeting": LONG_GREETING })).await;
    let signed_url = format!("{}/v1/agents/{public_id}/phone/twilio", PUBLIC_URL.replacen("https://", "wss://", 1));

    // Without stored credentials, nothing is accepted.
    assert_eq!(twilio_connect(&node.base, &public_id, Some(twilio_signature(&signed_url))).await.err(), Some(403));
    let token = node.token.clone();
    let (account_sid, stored) = node.store_twilio_credentials().await;
    assert!(!stored.to_string().contains(TWILIO_TOKEN), "the token is never returned: {stored}");
    // A wrong or missing signature is refused before the upgrade.
    assert_eq!(twilio_connect(&node.base, &public_id, None).await.err(), Some(403));
    let wrong = twilio_signature(&format!("{signed_url}?tampered=1"));
    assert_eq!(twilio_connect(&node.base, &public_id, Some(wrong)).await.err(), Some(403));
    if !voice_models_installed() {
        node.stop();
        return;
    }

    // A phone, played as Twilio plays one, asks over the greeting: the node clears what Twilio
    // holds, the phone returns the marks it held, and the question is answered.
    let socket = twilio_connect(&node.base, &public_id, Some(twilio_signature(&signed_url))).await.unwrap();
    let phone = TwilioPhone::start(socket, &account_sid, "MZ0001", json!({ "From": "+15550100" }));
    // The short disclosure (about 2 s), then 3 s into the greeting.
    phone.wait_until("the greeting", Duration::from_secs(60), |state| state.loud_played >= 250).await;
    let (speech, rate) = synthesise(QUESTION);
    phone.say(&resample(&speech, rate, 8_000));
    phone.wait_until("a clear over the greeting", ANSWER_TIMEOUT, |state| state.clears > 0).await;
    let after_clear = phone.state().loud_played;
    phone
        .wait_until("the agent's answer after the clear", ANSWER_TIMEOUT, |state| state.loud_played >= after_clear + 50)
        .await;
    let state = phone.hang_up().await;
    eprintln!(
        "phone: {} loud frames played, {} clear(s) dropping {} frames, marks back after playing {:?}, on clear {:?}",
        state.loud_played, state.clears, state.frames_cleared, state.marks_played, state.marks_cleared
    );
    assert!(
        !state.marks_cleared.is_empty() && !state.marks_played.is_empty(),
        "marks went back both after playing and on clear: {:?} / {:?}",
        state.marks_played,
        state.marks_cleared
    );
    assert!(state.frames_cleared > 0, "the clear dropped the greeting's buffered audio");
    assert!(state.unexpected.is_empty(), "{:?}", state.unexpected);
    // The node closed the stream once the call had ended, and the question was heard.
    assert!(matches!(state.closed, Some(Some(_))), "{:?}\n{}", state.closed, node.log());
    let (status, conversations) =
        node.call(reqwest::Method::GET, "/admin/v1/conversations?channel=phone", &token, None).await;
    assert_eq!(status, 200, "{conversations}");
    assert_eq!(conversations["items"].as_array().unwrap().len(), 1, "{conversations}");
    let conversation_id = conversations["items"][0]["id"].as_str().unwrap();
    let (status, transcript) =
        node.call(reqwest::Method::GET, &format!("/admin/v1/conversations/{conversation_id}"), &token, None).await;
    assert_eq!(status, 200, "{transcript}");
    let heard = transcript["messages"][0]["text"].as_str().unwrap_or_default();
    let said = crate::common::words(QUESTION);
    let heard_words = crate::common::words(heard);
    let matched = said.iter().filter(|word| heard_words.contains(word)).count();
    assert!(matched * 10 >= said.len() * 6, "the question as stored: {transcript}");
    assert_eq!(transcript["messages"][1]["role"], "assistant", "{transcript}");
    let send = |value: Value| tungstenite::Message::Text(value.to_string().into());

    // A stream that breaks the protocol is closed with a reason: media before `start`, broken
    // base64 in a started stream, broken JSON, and `start` twice.
    let start = json!({
        "event": "start", "sequenceNumber": "1", "streamSid": "MZ0002",
        "start": { "accountSid": account_sid, "streamSid": "MZ0002", "callSid": "CA0002", "tracks": ["inbound"],
                   "mediaFormat": { "encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1 } }
    });
    let media = |payload: &str| json!({ "event": "media", "streamSid": "MZ0002", "media": { "track": "inbound", "payload": payload } });
    let broken: [(&str, Vec<tungstenite::Message>); 4] = [
        ("media before start", vec![send(media("////"))]),
        (
            "media payload is not base64",
            vec![send(start.clone()), send(media(&STANDARD.encode([0xFFu8; 160]))), send(media("%%% not base64"))],
        ),
        ("not JSON", vec![send(start.clone()), tungstenite::Message::Text("{\"event\": \"media\", ".into())]),
        ("start twice", vec![send(start.clone()), send(start.clone())]),
    ];
    for (case, messages) in broken {
        let mut socket = twilio_connect(&node.base, &public_id, Some(twilio_signature(&signed_url))).await.unwrap();
        for message in messages {
            socket.send(message).await.unwrap();
        }
        let close = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match socket.next().await {
                    // The agent may already have started speaking on a started stream.
                    Some(Ok(tungstenite::Message::Text(_))) => continue,
                    other => return other,
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{case}: the stream was not closed"));
        match close {
            Some(Ok(tungstenite::Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 1008, "{case}: {frame:?}");
                assert!(!frame.reason.is_empty(), "{case}: the close frame says why");
            }
            other => panic!("{case}: expected a policy close, got {other:?}"),
        }
    }
    wait_for_no_live_calls(&node.base).await;
    let (status, health) = node.call(reqwest::Method::GET, "/healthz", "", None).await;
    assert_eq!(status, 200, "{health}");
    node.stop();
}

/// Sends a signed Twilio stream's `connected` and `start` events, then `codes` (μ-law at
/// 8 kHz) in real time; reads the agent's audio until `loud` loud frames came, then stops the
/// stream and waits for the node to close it.
async fn twilio_call(node: &mut VoiceNode, public_id: &str, account_sid: &str, codes: Vec<u8>, loud: usize) {
    let signed_url = format!("{}/v1/agents/{public_id}/phone/twilio", PUBLIC_URL.replacen("https://", "wss://", 1));
    let socket = twilio_connect(&node.base, public_id, Some(twilio_signature(&signed_url))).await.unwrap();
    let send = |value: Value| tungstenite::Message::Text(value.to_string().into());
    let (mut writer, mut reader) = socket.split();
    for event in start_events(account_sid, "MZ0002", json!({})) {
        writer.send(send(event)).await.unwrap();
    }
    let sender = send_media(writer, codes, "MZ0002");
    let mut loud_frames = 0;
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    while loud_frames < loud {
        let message = tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), reader.next())
            .await
            .unwrap_or_else(|_| panic!("only {loud_frames} loud frames of agent audio"))
            .expect("the stream closed")
            .unwrap();
        let tungstenite::Message::Text(text) = message else { continue };
        let event: Value = serde_json::from_str(text.as_str()).unwrap();
        if event["event"] == "media" {
            let codes = STANDARD.decode(event["media"]["payload"].as_str().unwrap()).unwrap();
            if rms(&parley_channels::voice::mulaw::decode(&codes)) > 300.0 {
                loud_frames += 1;
            }
        }
    }
    let mut writer = sender.await.unwrap();
    let stop = json!({ "event": "stop", "sequenceNumber": "9999", "streamSid": "MZ0002",
                       "stop": { "accountSid": account_sid, "callSid": "CA0001" } });
    writer.send(send(stop)).await.unwrap();
    while let Some(Ok(message)) = reader.next().await {
        if matches!(message, tungstenite::Message::Close(_)) {
            break;
        }
    }
}

/// Whisper tiny.en from the model cache, loaded in the test for checking what was recorded.
fn whisper() -> parley_models::WhisperStt {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let dir = parley_models::installed_dir(&home.join(".cache/parley/models"), &parley_models::WHISPER_TINY_EN_PACKAGE)
        .unwrap();
    parley_models::WhisperStt::load(
        &dir.join(parley_models::WHISPER_GGML_FILE),
        parley_models::WhisperOptions::default(),
    )
    .unwrap()
}

async fn transcribe(whisper: &parley_models::WhisperStt, samples: &[i16]) -> String {
    use parley_models::SpeechToText;
    let audio: Vec<f32> = samples.iter().map(|sample| f32::from(*sample) / 32768.0).collect();
    let options = parley_models::TranscribeOptions { language: Some("en".to_owned()), partial: None };
    whisper.transcribe(audio.into(), options).await.unwrap().text.to_lowercase()
}

/// Three 32-sample stretches (64 bytes) around the loudest samples of three parts of `samples`.
fn loud_probes(samples: &[i16]) -> Vec<Vec<u8>> {
    let third = samples.len() / 3;
    (0..3)
        .map(|part| {
            let range = part * third + 16..(part + 1) * third - 16;
            let loudest = range.max_by_key(|index| samples[*index].unsigned_abs()).unwrap();
            pcm_bytes(&samples[loudest - 16..loudest + 16])
        })
        .collect()
}

/// An agent that records calls: a phone call's recording comes back from the admin API as a
/// 16 kHz stereo WAV file whose left channel says what the caller said and whose right channel
/// holds the agent's voice; on disk the audio is only ever sealed — no stretch of it, no
/// container, in any file of the data or temporary directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_call_comes_back_as_wav_and_is_sealed_on_disk() {
    if !voice_models_installed() {
        return;
    }
    let mut node = VoiceNode::start();
    let retention = json!({ "record_audio": true, "audio_days": 7, "storage_tier": "full" });
    let public_id =
        node.voice_agent_with(json!({ "enabled": true }), json!([]), json!({ "retention": retention })).await;
    let token = node.token.clone();
    let (account_sid, _) = node.store_twilio_credentials().await;
    let (speech, rate) = synthesise(QUESTION);
    let mut codes = vec![0xFF; 8_000 * 7];
    codes.extend(parley_channels::voice::mulaw::encode(&resample(&speech, rate, 8_000)));
    codes.extend(std::iter::repeat_n(0xFF, 8_000 * 2));
    twilio_call(&mut node, &public_id, &account_sid, codes, 150).await;

    let (status, conversations) =
        node.call(reqwest::Method::GET, "/admin/v1/conversations?channel=phone", &token, None).await;
    assert_eq!(status, 200, "{conversations}");
    let conversation_id = conversations["items"][0]["id"].as_str().unwrap().to_owned();
    let url = format!("{}/admin/v1/conversations/{conversation_id}/recording", node.base);
    let response = reqwest::Client::new().get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "audio/wav");
    let wav = response.bytes().await.unwrap().to_vec();
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(&wav[8..16], b"WAVEfmt ");
    let field16 = |at: usize| u16::from_le_bytes([wav[at], wav[at + 1]]);
    let field32 = |at: usize| u32::from_le_bytes(wav[at..at + 4].try_into().unwrap());
    assert_eq!((field16(20), field16(22), field32(24), field16(34)), (1, 2, 16_000, 16), "16 kHz stereo PCM");
    assert_eq!(&wav[36..40], b"data");
    assert_eq!(field32(40) as usize, wav.len() - 44);
    let samples: Vec<i16> = wav[44..].chunks_exact(2).map(|pair| i16::from_le_bytes([pair[0], pair[1]])).collect();
    let left: Vec<i16> = samples.iter().step_by(2).copied().collect();
    let right: Vec<i16> = samples.iter().skip(1).step_by(2).copied().collect();
    assert!(left.len() > 16_000 * 9, "the whole call was recorded: {} samples", left.len());

    // The caller's channel: silent for the first seconds, then the question, in words.
    assert!(rms(&left[..16_000 * 6]) < 100.0, "the caller was silent first: {}", rms(&left[..16_000 * 6]));
    let speech_samples = speech.len() * 16_000 / rate as usize;
    let asked = &left[16_000 * 6..(16_000 * 8 + speech_samples).min(left.len())];
    let whisper = whisper();
    let heard = transcribe(&whisper, asked).await;
    assert!(heard.contains("return") && heard.contains("days"), "the caller's channel says {heard:?}");
    // The agent's channel: the disclosure while the caller was silent.
    let said = transcribe(&whisper, &right[..16_000 * 7]).await;
    assert!(said.contains("assistant") || said.contains("transcribed"), "the agent's channel says {said:?}");

    // The read is audited.
    let (_, audit) = node.call(reqwest::Method::GET, "/admin/v1/audit-log?limit=50", &token, None).await;
    assert!(audit.to_string().contains("conversation.recording.read"), "{audit}");

    // Nothing of it in the clear on disk: no container, no stretch of either channel.
    let mut clips = loud_probes(asked);
    clips.extend(loud_probes(&right[..16_000 * 7]));
    clips.retain(|clip| {
        let samples: Vec<i16> = clip.chunks_exact(2).map(|pair| i16::from_le_bytes([pair[0], pair[1]])).collect();
        rms(&samples) > 1_000.0
    });
    assert!(clips.len() >= 4, "loud stretches of both sides to look for: {}", clips.len());
    // And as the track holds them: both channels interleaved, around the loudest moments.
    for range in [16_000 * 6..left.len().min(16_000 * 8 + speech_samples), 0..16_000 * 7] {
        let loudest = range.clone().max_by_key(|index| left[*index].unsigned_abs().max(right[*index].unsigned_abs()));
        let at = loudest.unwrap().clamp(range.start + 8, range.end - 8);
        clips.push(pcm_bytes(&samples[2 * (at - 8)..2 * (at + 8)]));
    }
    for root in [node.data_dir.path(), node.temp_dir.path()] {
        for path in snapshot(root).keys() {
            let bytes = std::fs::read(path).unwrap_or_default();
            assert!(!bytes.windows(8).any(|window| window == b"WAVEfmt "), "{path:?} holds a WAV file");
            for clip in &clips {
                assert!(
                    !bytes.windows(clip.len()).any(|window| window == clip.as_slice()),
                    "{path:?} holds call audio"
                );
            }
        }
    }
    node.stop();
}

/// A sealed TURN credential is opened at start-up, and the opened credential is what the WebRTC
/// ICE configuration of every call gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_turn_credential_reaches_the_ice_configuration() {
    let key = [42u8; parley_runtime::secrets::KEY_LEN];
    let sealed = parley_runtime::secrets::Secrets::from_key(key).seal_turn_credential("turn-secret-in-process");
    let server = crate::common::TestServer::start_with(crate::common::Backend::Sqlite, |settings| {
        settings.secrets.key = Some(STANDARD.encode(key));
        settings.webrtc.turn_servers = vec![
            parley_config::TurnServer {
                urls: vec!["turn:turn.example.net:3478".to_owned()],
                username: "parley".to_owned(),
                credential: sealed.clone(),
            },
            parley_config::TurnServer {
                urls: vec!["turns:turn.example.net:5349".to_owned()],
                username: "plain".to_owned(),
                credential: "plain-credential".to_owned(),
            },
        ];
    })
    .await
    .unwrap();
    let servers = parley_channels::voice::whip::ice_servers(&server.runtime.settings().webrtc);
    let credentials: Vec<(&str, &str)> =
        servers.iter().map(|server| (server.username.as_str(), server.credential.as_str())).collect();
    assert_eq!(credentials, [("parley", "turn-secret-in-process"), ("plain", "plain-credential")]);
    server.stop().await;
}
