//! A remote voice: the speech endpoint of an OpenAI-compatible server (OpenAI itself, and
//! servers that copy its API), `POST {base_url}/audio/speech` with
//! `{"model", "input", "voice", "response_format"}` and the tenant's key as a bearer token,
//! answered with the whole audio file.
//!
//! Parley asks for `wav` (16-bit mono PCM in a RIFF container) or `pcm` (bare 16-bit
//! little-endian mono samples at [`PCM_SAMPLE_RATE`]) and decodes it here. The answer is bounded
//! in size ([`MAX_AUDIO_BYTES`]) and in time ([`SPEECH_TIMEOUT`] for the whole exchange, retries
//! included); the HTTP client, its retries on 408/429/5xx, the refusal of redirects and the
//! key's redaction from errors are those of the remote language models.

use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use serde_json::json;

use super::{checked_text, Audio, TextToSpeech};
use crate::error::ModelError;
use crate::llm::remote::{base_host, error_chain, HttpRequest, Remote, RemoteSettings};
use crate::llm::BoxFuture;

/// The sample rate of `pcm` answers (OpenAI's speech endpoint: 24 kHz, 16-bit, mono).
pub const PCM_SAMPLE_RATE: u32 = 24_000;
/// Most bytes of audio one answer may have: about two and a half minutes of 24 kHz speech,
/// more than [`super::MAX_TEXT_CHARS`] characters take to say.
pub const MAX_AUDIO_BYTES: usize = 8 * 1024 * 1024;
/// Longest one synthesis may take, from the first connection attempt to the last byte.
pub const SPEECH_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest model or voice name accepted.
const MAX_NAME_CHARS: usize = 200;

/// The audio format asked of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpeechFormat {
    /// A RIFF/WAVE file of 16-bit mono PCM, at whatever rate its header says.
    Wav,
    /// Bare 16-bit little-endian mono samples at [`PCM_SAMPLE_RATE`].
    Pcm,
}

impl SpeechFormat {
    /// The `response_format` value.
    pub fn as_str(self) -> &'static str {
        match self {
            SpeechFormat::Wav => "wav",
            SpeechFormat::Pcm => "pcm",
        }
    }
}

/// A voice behind an OpenAI-compatible speech endpoint.
pub struct OpenAiSpeech {
    remote: Remote,
    id: String,
    model: String,
    voice: String,
    format: SpeechFormat,
    max_audio_bytes: usize,
    timeout: Duration,
}

impl OpenAiSpeech {
    /// The voice `voice` of `model` (e.g. `tts-1`, `alloy`) at `settings.base_url`
    /// (e.g. `http://127.0.0.1:8000/v1`), asked for WAV.
    pub fn new(settings: RemoteSettings, model: &str, voice: &str) -> Result<Self, ModelError> {
        let invalid = |reason: String| ModelError::InvalidRequest { model: "openai_speech".to_owned(), reason };
        let host = base_host(&settings.base_url).map_err(invalid)?;
        for (what, name) in [("model", model), ("voice", voice)] {
            let name = name.trim();
            if name.is_empty() || name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
                return Err(invalid(format!(
                    "the {what} name must be 1 to {MAX_NAME_CHARS} characters without control characters"
                )));
            }
        }
        let (model, voice) = (model.trim().to_owned(), voice.trim().to_owned());
        let id = format!("openai_speech:{host}:{model}:{voice}");
        let remote = Remote::new(id.clone(), settings)?;
        Ok(Self {
            remote,
            id,
            model,
            voice,
            format: SpeechFormat::Wav,
            max_audio_bytes: MAX_AUDIO_BYTES,
            timeout: SPEECH_TIMEOUT,
        })
    }

    /// The same voice asked for `format`.
    pub fn with_format(mut self, format: SpeechFormat) -> Self {
        self.format = format;
        self
    }

    /// The same voice refusing answers larger than `max_audio_bytes`.
    pub fn with_max_audio_bytes(mut self, max_audio_bytes: usize) -> Self {
        self.max_audio_bytes = max_audio_bytes;
        self
    }

    /// The same voice giving up on a synthesis after `timeout` in all.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The settings this voice was made with.
    pub fn settings(&self) -> &RemoteSettings {
        &self.remote.settings
    }

    fn http_request(&self, text: &str) -> Result<HttpRequest, ModelError> {
        let body = json!({
            "model": self.model,
            "input": text,
            "voice": self.voice,
            "response_format": self.format.as_str(),
        });
        let url = format!("{}/audio/speech", self.remote.settings.base_url.trim_end_matches('/'));
        let mut http = HttpRequest::json(url, &body);
        let accept = match self.format {
            SpeechFormat::Wav => "audio/wav",
            SpeechFormat::Pcm => "audio/pcm",
        };
        http.headers.insert(ACCEPT, HeaderValue::from_static(accept));
        if let Some(key) = &self.remote.settings.api_key {
            http.header("authorization", &format!("Bearer {key}"), true)
                .map_err(|reason| ModelError::InvalidRequest { model: self.id.clone(), reason })?;
        }
        Ok(http)
    }

    /// Sends `text` and decodes the answer, within the time limit.
    pub async fn synthesize_remote(&self, text: &str) -> Result<Audio, ModelError> {
        let text = checked_text(&self.id, text)?;
        let http = self.http_request(text)?;
        let exchange = async {
            let mut attempt = 0;
            let response = self.remote.open(&http, &mut attempt).await?;
            self.read_audio(response).await
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(self.remote.unreachable(format!("no complete audio within {:?}", self.timeout))),
        }
    }

    /// Reads and decodes an accepted answer.
    async fn read_audio(&self, mut response: reqwest::Response) -> Result<Audio, ModelError> {
        let too_large = || self.invalid_audio(format!("the audio is larger than {} bytes", self.max_audio_bytes));
        if response.content_length().is_some_and(|length| length > self.max_audio_bytes as u64) {
            return Err(too_large());
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > self.max_audio_bytes {
                        return Err(too_large());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(error) => {
                    return Err(self.remote.unreachable(format!("the audio broke off: {}", error_chain(&error))))
                }
            }
        }
        if content_type.starts_with("application/json") || content_type.starts_with("text/") {
            let excerpt: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            return Err(self.invalid_audio(format!(
                "expected {} audio, got {content_type}: {}",
                self.format.as_str(),
                self.remote.redact(excerpt)
            )));
        }
        let audio = match self.format {
            SpeechFormat::Wav => super::parse_wav(&body).map_err(|reason| self.invalid_audio(reason))?,
            SpeechFormat::Pcm => decode_pcm(&body, PCM_SAMPLE_RATE).map_err(|reason| self.invalid_audio(reason))?,
        };
        if audio.samples.is_empty() || audio.sample_rate == 0 {
            return Err(self.invalid_audio("the audio has no samples".to_owned()));
        }
        Ok(audio)
    }

    fn invalid_audio(&self, reason: String) -> ModelError {
        ModelError::InvalidAudio { provider: self.id.clone(), reason }
    }
}

/// Bare 16-bit little-endian mono samples at `rate`.
fn decode_pcm(bytes: &[u8], rate: u32) -> Result<Audio, String> {
    if !bytes.len().is_multiple_of(2) {
        return Err(format!("{} bytes is not a whole number of 16-bit samples", bytes.len()));
    }
    let samples =
        bytes.chunks_exact(2).map(|pair| f32::from(i16::from_le_bytes([pair[0], pair[1]])) / 32_768.0).collect();
    Ok(Audio { samples, sample_rate: rate })
}

impl fmt::Debug for OpenAiSpeech {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiSpeech")
            .field("id", &self.id)
            .field("settings", &self.remote.settings)
            .field("format", &self.format)
            .field("max_audio_bytes", &self.max_audio_bytes)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl TextToSpeech for OpenAiSpeech {
    fn voice_id(&self) -> &str {
        &self.id
    }

    fn sample_rate(&self) -> u32 {
        PCM_SAMPLE_RATE
    }

    fn synthesize(&self, text: &str) -> BoxFuture<'_, Result<Audio, ModelError>> {
        let text = text.to_owned();
        Box::pin(async move { self.synthesize_remote(&text).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcm_is_read_as_little_endian_samples() {
        let audio = decode_pcm(&[0, 0, 0, 0x40, 0, 0x80], PCM_SAMPLE_RATE).unwrap();
        assert_eq!(audio, Audio { samples: vec![0.0, 0.5, -1.0], sample_rate: PCM_SAMPLE_RATE });
        assert!(decode_pcm(&[0, 0, 1], PCM_SAMPLE_RATE).unwrap_err().contains("3 bytes"));
    }

    #[test]
    fn names_and_urls_are_checked() {
        let settings = RemoteSettings::new("http://127.0.0.1:8000/v1");
        let voice = OpenAiSpeech::new(settings.clone(), "tts-1", "alloy").unwrap();
        assert_eq!(voice.voice_id(), "openai_speech:127.0.0.1:8000:tts-1:alloy");
        assert!(OpenAiSpeech::new(RemoteSettings::new("ftp://x/v1"), "tts-1", "alloy").is_err());
        assert!(OpenAiSpeech::new(settings.clone(), " ", "alloy").is_err());
        assert!(OpenAiSpeech::new(settings, "tts-1", "al\nloy").is_err());
    }

    #[test]
    fn debug_hides_the_key() {
        let settings = RemoteSettings::new("http://127.0.0.1:8000/v1").with_api_key("sk-secret-speech-key");
        let voice = OpenAiSpeech::new(settings, "tts-1", "alloy").unwrap();
        assert!(!format!("{voice:?}").contains("sk-secret-speech-key"));
        let request = voice.http_request("Hello.").unwrap();
        assert!(!format!("{:?}", request.headers).contains("sk-secret-speech-key"));
        assert_eq!(request.url, "http://127.0.0.1:8000/v1/audio/speech");
    }
}
