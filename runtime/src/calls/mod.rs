//! Voice calls, independent of how the audio travels (WebRTC, phone): a caller's PCM in, the
//! agent's paced PCM, captions and barge-in signals out.
//!
//! A call is a conversation with channel `voice` or `phone`, answered by the chat turn engine
//! (`chat::engine::submit`), so retrieval, prompts, generation, citations and storage are
//! exactly chat's. The pipeline of one call (`pipeline`) runs as one task:
//!
//! caller PCM → 16 kHz mono → Silero VAD → end of turn after the agent's silence window →
//! whisper through the node's one shared model (partial captions while the caller speaks) →
//! the turn engine → the answer split at sentence boundaries (`text`) → the agent's voice →
//! the transport's rate → 20 ms frames sent in real time.
//!
//! The agent's voice is chosen when the call starts: the node's local voice, or the agent's
//! remote OpenAI-compatible voice (the tenant's sealed key) with the local voice behind it, so a
//! provider that is missing or failing never leaves the caller in silence.
//!
//! The agent's disclosure is spoken first in every call. Caller speech over the agent lowers
//! its volume at once; once transcribed, a backchannel ("okay") restores it and anything else
//! interrupts the agent (barge-in), and only what was played is stored as said. The agent's
//! own audio coming back (echo) is recognised by cross-correlation with what was played
//! (`echo`) and, failing that, by its words.
//!
//! No audio is kept unless the agent opts in to recording (`retention.record_audio`): caller
//! audio lives in memory until it is transcribed, agent audio until it is played; neither is
//! logged or written anywhere. With recording on, both sides are also fed to a
//! `recordings::Recorder`, which stores them sealed (AES-256-GCM) in segments, under the
//! agent's audio retention window.

mod echo;
mod pipeline;
mod playout;
mod text;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use parley_models::stt::SpeechToText;
use parley_models::tts::openai::{OpenAiSpeech, SPEECH_TIMEOUT};
use parley_models::tts::{FallbackVoice, TextToSpeech};
use parley_models::vad::SileroVad;
use parley_models::RemoteSettings;
use tokio::sync::{mpsc, watch, Notify};
use uuid::Uuid;

pub use self::echo::EchoDetector;
pub use self::text::{is_backchannel, repeats_agent, SentenceSplitter};
use crate::agents::{Agent, VoiceProvider};
pub use crate::chat::conversations::Channel;
use crate::chat::conversations::VoiceTimings;
use crate::chat::session::{self, SessionRequest};
use crate::error::{Error, Result};
use crate::Runtime;

/// Events queued for the transport before the pipeline skips audio frames for it.
const EVENT_BUFFER: usize = 256;
/// Sample rates a transport may use.
const SAMPLE_RATES: std::ops::RangeInclusive<u32> = 8_000..=48_000;

/// The speech engines every call on this node shares.
#[derive(Debug, Clone)]
pub struct VoiceEngines {
    /// The one loaded speech-to-text model, with its bounded queue.
    pub speech_to_text: Arc<dyn SpeechToText>,
    pub vad: Arc<SileroVad>,
    /// The voices agents speak with, chosen by `agent.voice.voice`; the last is the fallback.
    pub voices: Vec<Arc<dyn TextToSpeech>>,
}

impl VoiceEngines {
    /// Loads the engines from the model cache: the speech-to-text model `model`
    /// (`whisper-tiny.en` or `whisper-base`, one model with one bounded queue), Silero VAD, the
    /// Piper voice and espeak-ng as the fallback voice (`threads` per synthesis). The error says
    /// what is missing.
    #[cfg(feature = "whisper")]
    pub fn installed(models_dir: &std::path::Path, model: &str, threads: usize) -> std::result::Result<Self, String> {
        use parley_models::tts::{EspeakVoice, PiperVoice};
        let whisper_file =
            parley_models::installed_whisper(models_dir, model).map_err(|error| format!("speech-to-text: {error}"))?;
        let whisper = parley_models::WhisperStt::load(&whisper_file, parley_models::WhisperOptions::default())
            .map_err(|error| format!("speech-to-text: {error}"))?;
        let vad = SileroVad::installed(models_dir).map_err(|error| format!("voice activity: {error}"))?;
        let mut voices: Vec<Arc<dyn TextToSpeech>> = Vec::new();
        match PiperVoice::installed(models_dir, threads.max(1)) {
            Ok(piper) => voices.push(Arc::new(piper)),
            Err(error) => tracing::warn!(error = %error, "no Piper voice: calls speak with espeak-ng"),
        }
        match EspeakVoice::new("en-us") {
            Ok(espeak) => voices.push(Arc::new(espeak)),
            Err(error) => tracing::warn!(error = %error, "no espeak-ng fallback voice"),
        }
        if voices.is_empty() {
            return Err("no voice can speak: neither the Piper voice nor espeak-ng is installed".to_owned());
        }
        Ok(Self { speech_to_text: Arc::new(whisper), vad: Arc::new(vad), voices })
    }

    /// Without the `whisper` feature no speech-to-text model can be loaded.
    #[cfg(not(feature = "whisper"))]
    pub fn installed(_: &std::path::Path, _: &str, _: usize) -> std::result::Result<Self, String> {
        Err("this parley was built without the `whisper` feature".to_owned())
    }

    /// The voice `name` names (`en_US-joe-medium` matches `piper:en_US-joe-medium`), else the
    /// fallback (the last voice).
    pub fn voice(&self, name: &str) -> Option<Arc<dyn TextToSpeech>> {
        let name = name.trim();
        self.voices
            .iter()
            .find(|voice| {
                let id = voice.voice_id();
                id.eq_ignore_ascii_case(name)
                    || id.split_once(':').is_some_and(|(_, short)| short.eq_ignore_ascii_case(name))
            })
            .or_else(|| self.voices.last())
            .cloned()
    }
}

/// Gets told about calls and spoken turns (the node's metrics).
pub trait CallObserver: Send + Sync {
    /// A spoken turn's stages, once its first audio played.
    fn turn_timed(&self, agent: &Agent, channel: Channel, timings: &VoiceTimings);
    /// A call ended after `duration`.
    fn call_ended(&self, agent: &Agent, channel: Channel, duration: Duration, reason: &EndReason);
}

/// Node-local state of voice calls: the engines once loaded, and the live calls.
#[derive(Default)]
pub struct CallEngine {
    engines: RwLock<Option<Arc<VoiceEngines>>>,
    live: Mutex<HashMap<Uuid, LiveCall>>,
    observer: RwLock<Option<Arc<dyn CallObserver>>>,
    stats: Counters,
}

/// Counters of what the node's calls have done, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Caller-side VAD frames recognised as the agent's own audio coming back.
    pub echo_frames: u64,
    /// Agent audio frames played at lowered volume because the caller spoke over them.
    pub ducked_frames: u64,
    /// Times a caller interrupted the agent.
    pub barge_ins: u64,
    /// Caller utterances taken as backchannels (the agent went on).
    pub backchannels: u64,
    /// Caller transcripts ignored because they repeated the agent's own words.
    pub echo_transcripts: u64,
    /// Turns whose transcript was started at the caller's pause, before the silence window
    /// ended the turn (the caller did not speak again in between).
    pub early_transcripts: u64,
}

#[derive(Debug, Default)]
struct Counters {
    echo_frames: AtomicU64,
    ducked_frames: AtomicU64,
    barge_ins: AtomicU64,
    backchannels: AtomicU64,
    echo_transcripts: AtomicU64,
    early_transcripts: AtomicU64,
}

impl std::fmt::Debug for CallEngine {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CallEngine")
            .field("available", &self.available())
            .field("live_calls", &self.live_calls())
            .finish_non_exhaustive()
    }
}

/// A live call as the engine tracks it.
struct LiveCall {
    agent_id: Uuid,
    hang_up: watch::Sender<bool>,
}

impl CallEngine {
    /// Makes the speech engines available to calls (start-up, after loading the models).
    pub fn set_engines(&self, engines: VoiceEngines) {
        *self.engines.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(engines));
    }

    /// True once the speech engines are loaded.
    pub fn available(&self) -> bool {
        self.engines().is_some()
    }

    /// Calls in progress on this node.
    pub fn live_calls(&self) -> usize {
        lock(&self.live).len()
    }

    /// What the node's calls have done so far.
    pub fn stats(&self) -> CallStats {
        let stats = &self.stats;
        CallStats {
            echo_frames: stats.echo_frames.load(Ordering::Relaxed),
            ducked_frames: stats.ducked_frames.load(Ordering::Relaxed),
            barge_ins: stats.barge_ins.load(Ordering::Relaxed),
            backchannels: stats.backchannels.load(Ordering::Relaxed),
            echo_transcripts: stats.echo_transcripts.load(Ordering::Relaxed),
            early_transcripts: stats.early_transcripts.load(Ordering::Relaxed),
        }
    }

    /// Registers who is told about calls and spoken turns.
    pub fn set_observer(&self, observer: Arc<dyn CallObserver>) {
        *self.observer.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(observer);
    }

    fn engines(&self) -> Option<Arc<VoiceEngines>> {
        self.engines.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn observer(&self) -> Option<Arc<dyn CallObserver>> {
        self.observer.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Takes a slot for a call with `agent`, unless it has `max` live calls already.
    fn reserve(&self, agent: &Agent) -> Result<(Uuid, watch::Receiver<bool>)> {
        let mut live = lock(&self.live);
        let max = agent.voice.max_concurrent_calls;
        let count = live.values().filter(|call| call.agent_id == agent.id).count();
        if u32::try_from(count).unwrap_or(u32::MAX) >= max {
            return Err(Error::CallLimit { max });
        }
        let id = Uuid::now_v7();
        let (hang_up, hung_up) = watch::channel(false);
        live.insert(id, LiveCall { agent_id: agent.id, hang_up });
        Ok((id, hung_up))
    }

    fn release(&self, call_id: Uuid) {
        lock(&self.live).remove(&call_id);
    }
}

/// Frees a call's slot when dropped, however the call ends.
struct Slot {
    runtime: Runtime,
    call_id: Uuid,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.runtime.calls().release(self.call_id);
    }
}

/// What a transport asks for when a call comes in.
#[derive(Debug, Clone)]
pub struct CallRequest {
    /// `Channel::Voice` (WebRTC) or `Channel::Phone`.
    pub channel: Channel,
    /// The browser's `Origin` header (WebRTC), checked like chat's.
    pub origin: Option<String>,
    /// The server's own origin (its pages may always call).
    pub own_origin: Option<String>,
    /// Phone calls: the caller's number, if known.
    pub caller: Option<String>,
    /// The PCM rate the transport delivers and wants back (48,000 for Opus, 8,000 for phone
    /// μ-law), 8,000 to 48,000 Hz.
    pub sample_rate: u32,
}

/// Who speaks in a caption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    Caller,
    Agent,
}

impl Speaker {
    pub fn as_str(self) -> &'static str {
        match self {
            Speaker::Caller => "caller",
            Speaker::Agent => "agent",
        }
    }
}

/// Why a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The caller hung up (`hang_up`, or the transport went away).
    HungUp,
    /// The call reached its longest duration or was idle too long.
    Timeout,
    /// The pipeline failed; the message is safe to show.
    Error(String),
}

impl EndReason {
    /// `hung_up`, `timeout` or `error`.
    pub fn as_str(&self) -> &'static str {
        match self {
            EndReason::HungUp => "hung_up",
            EndReason::Timeout => "timeout",
            EndReason::Error(_) => "error",
        }
    }
}

/// What the transport sends the caller, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum CallEvent {
    /// Agent audio: exactly 20 ms at the call's sample rate, emitted in real time.
    Audio(Vec<i16>),
    /// Barge-in: discard agent audio already buffered downstream.
    Clear,
    /// A caption; caller captions are partial (`is_final` false) while the caller speaks.
    Caption { speaker: Speaker, text: String, is_final: bool },
    /// Always the last event.
    Ended(EndReason),
}

/// A call in progress. Dropping it (its `events`) ends the call.
#[derive(Debug)]
pub struct Call {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub audio_in: CallAudioIn,
    pub events: mpsc::Receiver<CallEvent>,
}

/// The caller's audio into a call's pipeline. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CallAudioIn {
    inner: Arc<AudioQueue>,
}

#[derive(Debug)]
struct AudioQueue {
    samples: Mutex<AudioBuffer>,
    capacity: usize,
    dropped: AtomicU64,
    ready: Notify,
}

#[derive(Debug, Default)]
struct AudioBuffer {
    samples: std::collections::VecDeque<i16>,
    closed: bool,
}

impl CallAudioIn {
    fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(AudioQueue {
                samples: Mutex::default(),
                capacity: capacity.max(1),
                dropped: AtomicU64::new(0),
                ready: Notify::new(),
            }),
        }
    }

    /// Queues mono PCM at the call's sample rate, any length. Never blocks: when the pipeline
    /// falls behind, the oldest samples are dropped (and counted). Audio for a call that has
    /// ended is discarded.
    pub fn push(&self, samples: &[i16]) {
        if samples.is_empty() {
            return;
        }
        {
            let mut buffer = lock(&self.inner.samples);
            if buffer.closed {
                return;
            }
            buffer.samples.extend(samples.iter().copied());
            let excess = buffer.samples.len().saturating_sub(self.inner.capacity);
            if excess > 0 {
                buffer.samples.drain(..excess);
                self.inner.dropped.fetch_add(excess as u64, Ordering::Relaxed);
            }
        }
        self.inner.ready.notify_one();
    }

    /// Samples dropped so far because the pipeline fell behind.
    pub fn dropped_samples(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Everything queued so far.
    fn take(&self) -> Vec<i16> {
        lock(&self.inner.samples).samples.drain(..).collect()
    }

    /// Waits until samples may be queued.
    async fn ready(&self) {
        self.inner.ready.notified().await;
    }

    /// Ends the queue: later pushes are discarded and held audio is dropped.
    fn close(&self) {
        let mut buffer = lock(&self.inner.samples);
        buffer.closed = true;
        buffer.samples = std::collections::VecDeque::new();
    }
}

/// Starts a call with the agent `public_id` names: checks it takes calls from this origin and
/// has a free slot, creates the conversation, sends `call.started`, and starts the pipeline.
pub async fn start(runtime: &Runtime, public_id: &str, request: CallRequest) -> Result<Call> {
    let agent = session::find_agent(runtime, public_id).await?;
    if !agent.voice.enabled {
        return Err(Error::VoiceDisabled);
    }
    if !session::origin_allowed(&agent, request.origin.as_deref(), request.own_origin.as_deref()) {
        return Err(Error::PermissionDenied { role: "this origin", action: "call this agent" });
    }
    if !SAMPLE_RATES.contains(&request.sample_rate) {
        return Err(Error::invalid("sample_rate", "must be between 8000 and 48000 Hz"));
    }
    let Some(engines) = runtime.calls().engines() else {
        return Err(Error::VoiceUnavailable("the speech models are not loaded".to_owned()));
    };
    let local_voice =
        engines.voice(&agent.voice.voice).ok_or_else(|| Error::VoiceUnavailable("no voice is loaded".to_owned()))?;
    let (call_id, hung_up) = runtime.calls().reserve(&agent)?;
    let slot = Slot { runtime: runtime.clone(), call_id };
    let voice = agent_voice(runtime, &agent, local_voice).await;
    let session = session::start(runtime, &agent, request.channel, SessionRequest::default()).await?;
    let mut data = crate::webhooks::conversation_data(&session.conversation);
    data["call_id"] = serde_json::Value::String(call_id.to_string());
    if let Some(caller) = &request.caller {
        data["caller"] = serde_json::Value::String(caller.clone());
    }
    crate::webhooks::enqueue_for_conversation(
        runtime,
        &session.conversation,
        crate::webhooks::Event::CallStarted,
        data,
    )
    .await?;
    let settings = &runtime.settings().voice;
    let capacity =
        usize::try_from(u64::from(request.sample_rate) * settings.input_buffer_ms / 1000).unwrap_or(usize::MAX);
    let audio_in = CallAudioIn::new(capacity);
    let (events, receiver) = mpsc::channel(EVENT_BUFFER);
    let conversation_id = session.conversation.id;
    let context = pipeline::CallContext {
        runtime: runtime.clone(),
        call_id,
        session,
        engines,
        voice,
        sample_rate: request.sample_rate,
        audio_in: audio_in.clone(),
        events,
        hung_up,
        slot,
    };
    tokio::spawn(pipeline::run(context));
    Ok(Call { id: call_id, conversation_id, audio_in, events: receiver })
}

/// The voice a call with `agent` speaks with: the local voice, or the agent's remote voice with
/// the local one behind it. A remote voice that cannot be set up (no provider key stored, a key
/// that cannot be opened, a bad URL) is logged and the local voice speaks: a caller never gets
/// silence because of a provider.
async fn agent_voice(runtime: &Runtime, agent: &Agent, local: Arc<dyn TextToSpeech>) -> Arc<dyn TextToSpeech> {
    match agent.voice.provider {
        VoiceProvider::Local => local,
        VoiceProvider::Openai => match remote_voice(runtime, agent).await {
            Ok(remote) => Arc::new(FallbackVoice::new(remote, local)),
            Err(reason) => {
                tracing::warn!(
                    agent_id = %agent.id,
                    tenant_id = %agent.tenant_id,
                    fallback = local.voice_id(),
                    reason = %reason,
                    "the agent's remote voice is unavailable; the call speaks with the local voice"
                );
                local
            }
        },
    }
}

/// The agent's OpenAI-compatible voice with the tenant's sealed `openai_compatible` key.
async fn remote_voice(runtime: &Runtime, agent: &Agent) -> std::result::Result<Arc<dyn TextToSpeech>, String> {
    let settings = &agent.voice;
    let (Some(model), Some(voice), Some(base_url)) = (&settings.model, &settings.remote_voice, &settings.base_url)
    else {
        return Err("the agent's voice names no model, voice or base URL".to_owned());
    };
    let key_name = crate::provider_keys::provider_name(crate::agents::ModelProvider::OpenaiCompatible)
        .ok_or_else(|| "the OpenAI-compatible provider takes no key".to_owned())?;
    let api_key = crate::provider_keys::plaintext(runtime, agent.tenant_id, key_name)
        .await
        .map_err(|error| format!("the tenant's {key_name} key cannot be read: {error}"))?
        .ok_or_else(|| format!("no {key_name} provider key is stored for this tenant"))?;
    let models = &runtime.settings().models;
    let remote = RemoteSettings {
        base_url: base_url.clone(),
        api_key: Some(api_key),
        connect_timeout: Duration::from_secs(models.remote_connect_timeout_seconds),
        read_timeout: Duration::from_secs(models.remote_read_timeout_seconds).min(SPEECH_TIMEOUT),
        // A caller is waiting: one quick retry, then the local voice.
        max_retries: 1,
        initial_backoff: Duration::from_millis(200),
        public_addresses_only: !models.allow_private_providers,
    };
    let speech = OpenAiSpeech::new(remote, model, voice).map_err(|error| error.to_string())?;
    Ok(Arc::new(speech))
}

/// Hangs up the call `call_id` (its pipeline ends with `Ended(HungUp)`); false if no such
/// call is live on this node.
pub fn hang_up(runtime: &Runtime, call_id: Uuid) -> bool {
    match lock(&runtime.calls().live).get(&call_id) {
        Some(call) => {
            call.hang_up.send_replace(true);
            true
        }
        None => false,
    }
}

/// Reports a call's end: `call.ended` (with its duration and reason), `conversation.ended`
/// once no answer is being written any more, and the observer.
async fn call_ended(
    runtime: &Runtime,
    session: &crate::chat::session::Session,
    call_id: Uuid,
    duration: Duration,
    reason: &EndReason,
) {
    let conversation = &session.conversation;
    let recorded: Result<()> = async {
        let mut data = crate::webhooks::conversation_data(conversation);
        data["call_id"] = serde_json::Value::String(call_id.to_string());
        data["duration_ms"] = serde_json::Value::from(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
        data["reason"] = serde_json::Value::String(reason.as_str().to_owned());
        crate::webhooks::enqueue_for_conversation(runtime, conversation, crate::webhooks::Event::CallEnded, data).await
    }
    .await;
    if let Err(error) = recorded {
        tracing::error!(error = %error, %call_id, "cannot record call.ended");
    }
    crate::chat::engine::connection_closed(runtime, session);
    if let Some(observer) = runtime.calls().observer() {
        observer.call_ended(&session.agent, conversation.channel, duration, reason);
    }
    tracing::info!(%call_id, conversation_id = %conversation.id, reason = reason.as_str(), duration_ms = duration.as_millis() as u64, "call ended");
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
