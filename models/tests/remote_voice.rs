//! The remote voice against a fake OpenAI-compatible speech server: a small HTTP/1.1 server on
//! loopback that records each request and answers from a script — a WAV file espeak-ng writes
//! during the test, bare PCM, error statuses, garbage, oversized audio, an answer that never
//! comes — and the local fallback behind a failing remote voice.
//!
//! espeak-ng makes the audio; without it these tests say so loudly and pass, unless
//! `PARLEY_REQUIRE_MODELS` is set, in which case they fail.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parley_models::tts::openai::{OpenAiSpeech, SpeechFormat, PCM_SAMPLE_RATE};
use parley_models::tts::{parse_wav, EspeakVoice, FallbackVoice, TextToSpeech};
use parley_models::{ModelError, RemoteSettings};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{read_request, Loopback, Recorded};

mod common;

const KEY: &str = "sk-speech-0123456789-secret";
const TEXT: &str = "Your table for four is booked for seven o'clock.";

/// `espeak-ng --stdout` for `text`: a real WAV file, or `None` (after a notice) without espeak-ng.
fn espeak_wav(text: &str) -> Option<Vec<u8>> {
    let output = std::process::Command::new("espeak-ng").args(["--stdout", "-v", "en-us", text]).output();
    match output {
        Ok(output) if output.status.success() && !output.stdout.is_empty() => Some(output.stdout),
        _ if std::env::var_os("PARLEY_REQUIRE_MODELS").is_some() => {
            panic!("PARLEY_REQUIRE_MODELS is set but espeak-ng cannot run (Debian package espeak-ng)")
        }
        _ => {
            eprintln!("SKIPPED: espeak-ng is not installed (Debian package espeak-ng; `make setup`)");
            None
        }
    }
}

/// A WAV's data chunk as it is stored (16-bit little-endian samples), for a `pcm` answer.
fn wav_data(wav: &[u8]) -> Vec<u8> {
    let audio = parse_wav(wav).unwrap();
    audio.samples.iter().flat_map(|sample| ((sample * 32_768.0) as i16).to_le_bytes()).collect()
}

#[derive(Clone, Debug)]
enum Reply {
    /// A complete answer; `chunked` sends it without a length, in two chunks.
    Answer { status: u16, content_type: &'static str, body: Vec<u8>, chunked: bool },
    /// Headers never come; the connection stays open.
    Stall,
}

fn audio_reply(content_type: &'static str, body: Vec<u8>) -> Reply {
    Reply::Answer { status: 200, content_type, body, chunked: false }
}

fn error_reply(status: u16, message: &str) -> Reply {
    let body = json!({ "error": { "message": message, "type": "invalid_request_error" } }).to_string().into_bytes();
    Reply::Answer { status, content_type: "application/json", body, chunked: false }
}

#[derive(Default)]
struct Shared {
    replies: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<Recorded>>,
}

struct FakeSpeechServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _server: Loopback,
}

impl FakeSpeechServer {
    /// Answers with `replies` in order, then with the last one again and again.
    async fn start(replies: Vec<Reply>) -> Self {
        let shared = Arc::new(Shared { replies: Mutex::new(replies.into()), ..Shared::default() });
        let server = Arc::clone(&shared);
        let server = Loopback::start(move |socket| serve(socket, Arc::clone(&server))).await;
        Self { addr: server.addr, shared, _server: server }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    fn settings(&self) -> RemoteSettings {
        RemoteSettings {
            base_url: format!("http://{}/v1", self.addr),
            api_key: Some(KEY.to_owned()),
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(5),
            max_retries: 2,
            initial_backoff: Duration::from_millis(10),
            public_addresses_only: false,
        }
    }

    fn voice(&self) -> OpenAiSpeech {
        OpenAiSpeech::new(self.settings(), "tts-1", "alloy").unwrap()
    }
}

async fn serve(mut socket: TcpStream, shared: Arc<Shared>) {
    let Some(request) = read_request(&mut socket).await else { return };
    shared.requests.lock().unwrap().push(request);
    let reply = {
        let mut replies = shared.replies.lock().unwrap();
        if replies.len() > 1 {
            replies.pop_front()
        } else {
            replies.front().cloned()
        }
    };
    match reply {
        None | Some(Reply::Stall) => {
            // Hold the connection until the client gives up and closes it.
            let mut buf = [0u8; 64];
            while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
        }
        Some(Reply::Answer { status, content_type, body, chunked }) => {
            let mut head =
                format!("HTTP/1.1 {status} Scripted\r\nContent-Type: {content_type}\r\nConnection: close\r\n");
            if chunked {
                head.push_str("Transfer-Encoding: chunked\r\n\r\n");
                let _ = socket.write_all(head.as_bytes()).await;
                for part in body.chunks(body.len().div_ceil(2).max(1)) {
                    let mut chunk = format!("{:x}\r\n", part.len()).into_bytes();
                    chunk.extend_from_slice(part);
                    chunk.extend_from_slice(b"\r\n");
                    if socket.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                let _ = socket.write_all(b"0\r\n\r\n").await;
            } else {
                head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&body).await;
            }
            let _ = socket.shutdown().await;
        }
    }
}

#[tokio::test]
async fn a_wav_answer_is_the_audio_and_the_request_is_openai_shaped() {
    let Some(wav) = espeak_wav(TEXT) else { return };
    let expected = parse_wav(&wav).unwrap();
    let server = FakeSpeechServer::start(vec![audio_reply("audio/wav", wav)]).await;
    let voice = server.voice();
    let audio = voice.synthesize(&format!("  {TEXT} ")).await.unwrap();
    assert_eq!(audio, expected);
    assert!(audio.duration() > Duration::from_secs(1) && audio.rms() > 0.01, "{:?}", audio.duration());

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/v1/audio/speech"));
    assert_eq!(request.headers["authorization"], format!("Bearer {KEY}"));
    assert_eq!(request.headers["content-type"], "application/json");
    assert_eq!(
        request.body,
        json!({ "model": "tts-1", "input": TEXT, "voice": "alloy", "response_format": "wav" }),
        "the text is sent trimmed"
    );
}

#[tokio::test]
async fn a_pcm_answer_is_read_at_24_khz_even_in_chunks() {
    let Some(wav) = espeak_wav(TEXT) else { return };
    let pcm = wav_data(&wav);
    let server = FakeSpeechServer::start(vec![Reply::Answer {
        status: 200,
        content_type: "application/octet-stream",
        body: pcm.clone(),
        chunked: true,
    }])
    .await;
    let voice = server.voice().with_format(SpeechFormat::Pcm);
    let audio = voice.synthesize(TEXT).await.unwrap();
    assert_eq!(audio.sample_rate, PCM_SAMPLE_RATE);
    assert_eq!(audio.samples.len(), pcm.len() / 2);
    assert_eq!(audio.samples, parse_wav(&wav).unwrap().samples);
    assert_eq!(server.requests()[0].body["response_format"], "pcm");
}

#[tokio::test]
async fn a_refused_key_is_a_provider_error_without_retries_or_the_key() {
    let server = FakeSpeechServer::start(vec![error_reply(401, &format!("Incorrect API key provided: {KEY}"))]).await;
    let error = server.voice().synthesize(TEXT).await.unwrap_err();
    match &error {
        ModelError::Provider { status: 401, message, .. } => {
            assert!(message.starts_with("Incorrect API key provided"), "{message}");
        }
        other => panic!("expected a 401 provider error, got {other:?}"),
    }
    assert!(!error.to_string().contains(KEY), "{error}");
    assert_eq!(server.requests().len(), 1, "a refused key is not retried");
}

#[tokio::test]
async fn a_failing_server_is_retried_then_a_provider_error() {
    let server = FakeSpeechServer::start(vec![error_reply(500, "the speech backend is down")]).await;
    let error = server.voice().synthesize(TEXT).await.unwrap_err();
    assert!(
        matches!(&error, ModelError::Provider { status: 500, message, .. } if message == "the speech backend is down"),
        "{error:?}"
    );
    assert_eq!(server.requests().len(), 3, "the first attempt and two retries");

    // A failure then a success: the retry's audio is the answer.
    let Some(wav) = espeak_wav("Hello.") else { return };
    let server = FakeSpeechServer::start(vec![error_reply(503, "busy"), audio_reply("audio/wav", wav.clone())]).await;
    assert_eq!(server.voice().synthesize("Hello.").await.unwrap(), parse_wav(&wav).unwrap());
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn garbage_is_invalid_audio() {
    for (reply, expected) in [
        (audio_reply("audio/wav", b"this is not a wave file at all".to_vec()), "RIFF"),
        (audio_reply("application/json", br#"{"status":"queued"}"#.to_vec()), "application/json"),
        (audio_reply("audio/wav", Vec::new()), "RIFF"),
    ] {
        let server = FakeSpeechServer::start(vec![reply]).await;
        let error = server.voice().synthesize(TEXT).await.unwrap_err();
        match &error {
            ModelError::InvalidAudio { reason, .. } => assert!(reason.contains(expected), "{reason}"),
            other => panic!("expected invalid audio, got {other:?}"),
        }
        assert_eq!(server.requests().len(), 1, "bad audio is not retried");
    }
    // PCM with half a sample.
    let server = FakeSpeechServer::start(vec![audio_reply("audio/pcm", vec![0, 0, 0])]).await;
    let error = server.voice().with_format(SpeechFormat::Pcm).synthesize(TEXT).await.unwrap_err();
    assert!(matches!(&error, ModelError::InvalidAudio { reason, .. } if reason.contains("3 bytes")), "{error:?}");
}

#[tokio::test]
async fn oversized_audio_is_refused_with_or_without_a_length() {
    let Some(wav) = espeak_wav(TEXT) else { return };
    let limit = wav.len() / 2;
    for chunked in [false, true] {
        let reply = Reply::Answer { status: 200, content_type: "audio/wav", body: wav.clone(), chunked };
        let server = FakeSpeechServer::start(vec![reply]).await;
        let error = server.voice().with_max_audio_bytes(limit).synthesize(TEXT).await.unwrap_err();
        assert!(
            matches!(&error, ModelError::InvalidAudio { reason, .. } if reason.contains(&format!("larger than {limit} bytes"))),
            "chunked {chunked}: {error:?}"
        );
    }
    // The same audio within the limit is fine.
    let server = FakeSpeechServer::start(vec![audio_reply("audio/wav", wav.clone())]).await;
    assert!(server.voice().with_max_audio_bytes(wav.len()).synthesize(TEXT).await.is_ok());
}

#[tokio::test]
async fn a_server_that_never_answers_or_is_not_there_is_unreachable() {
    let server = FakeSpeechServer::start(vec![Reply::Stall]).await;
    let voice = server.voice().with_timeout(Duration::from_millis(300));
    let error = voice.synthesize(TEXT).await.unwrap_err();
    assert!(
        matches!(&error, ModelError::Unreachable { reason, .. } if reason.contains("no complete audio within")),
        "{error:?}"
    );

    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let settings = RemoteSettings { max_retries: 0, ..RemoteSettings::new(format!("http://{addr}/v1")) };
    let error = OpenAiSpeech::new(settings, "tts-1", "alloy").unwrap().synthesize(TEXT).await.unwrap_err();
    assert!(matches!(error, ModelError::Unreachable { .. }), "{error:?}");
}

#[tokio::test]
async fn empty_text_is_refused_before_any_request() {
    let server = FakeSpeechServer::start(vec![error_reply(500, "unused")]).await;
    let error = server.voice().synthesize("  \n ").await.unwrap_err();
    assert!(matches!(error, ModelError::InvalidRequest { .. }), "{error:?}");
    assert!(server.requests().is_empty());
}

/// A remote voice that fails hands the sentence, and every later one, to the local voice.
#[tokio::test]
async fn the_fallback_speaks_when_the_remote_voice_fails() {
    if espeak_wav(TEXT).is_none() {
        return;
    }
    let espeak = Arc::new(EspeakVoice::new("en-us").unwrap());
    let server = FakeSpeechServer::start(vec![error_reply(401, "no such key")]).await;
    let voice = FallbackVoice::new(Arc::new(server.voice()), espeak.clone());
    assert!(voice.voice_id().starts_with("openai_speech:"));
    let audio = voice.synthesize(TEXT).await.unwrap();
    assert!(voice.fell_back());
    assert_eq!(voice.voice_id(), "espeak-ng:en-us");
    assert_eq!(audio, espeak.synthesize(TEXT).await.unwrap(), "the fallback's audio");
    assert!(voice.synthesize("And the next sentence.").await.is_ok());
    assert_eq!(server.requests().len(), 1, "the failing provider is not asked again");

    // A working remote voice keeps speaking.
    let remote_wav = espeak_wav("Hello there.").unwrap();
    let server = FakeSpeechServer::start(vec![audio_reply("audio/wav", remote_wav.clone())]).await;
    let voice = FallbackVoice::new(Arc::new(server.voice()), espeak);
    assert_eq!(voice.synthesize("Hello there.").await.unwrap(), parse_wav(&remote_wav).unwrap());
    assert_eq!(voice.synthesize("Hello there.").await.unwrap(), parse_wav(&remote_wav).unwrap());
    assert!(!voice.fell_back());
    assert_eq!(server.requests().len(), 2);
}
