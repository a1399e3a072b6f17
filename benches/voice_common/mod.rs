//! What the voice benchmarks (`voice_latency`, `voice_capacity`) share: the node's engines
//! loaded from the model cache as `parley serve` loads them (whisper tiny.en, Silero VAD, the
//! Piper voice with espeak-ng as fallback, the local SmolLM2 chat model through candle, the
//! embedding model), a runtime over SQLite in a temporary directory with one agent answering
//! from an uploaded document, the caller's questions synthesised by the Piper voice, a caller
//! that plays its script into a call in real time and timestamps what it hears, and the
//! process's resident memory.

// Each benchmark binary compiles this module and uses its own part of it.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use parley_config::Settings;
use parley_models::audio::StreamResampler;
use parley_models::tts::TextToSpeech;
use parley_models::{BertEmbedder, Embedder, LocalLanguageModel, LocalModelOptions};
use parley_runtime::agents::{self, Agent, AgentInput, ModelChoice, RetrievalSettings, VoiceSettings};
use parley_runtime::calls::{self, Call, CallEvent, CallObserver, CallRequest, EndReason, Speaker, VoiceEngines};
use parley_runtime::chat::conversations::{Channel, StoredMessage};
use parley_runtime::documents::{self, Content, Format, Upload};
use parley_runtime::storage::Database;
use parley_runtime::{auth, tenants, Runtime};

#[path = "../chat_common/facts.rs"]
pub mod facts;
#[path = "../chat_common/logging.rs"]
mod logging;
use logging::init_logging;

/// The rate calls run at: WebRTC's Opus rate, as the widget's calls do.
pub const CALL_RATE: u32 = 48_000;
/// Samples in one 20 ms frame at [`CALL_RATE`].
pub const FRAME: usize = (CALL_RATE / 50) as usize;
/// An agent frame whose RMS reaches this (of 32,767) is "loud": speech, not the near-silence at
/// the edges of a synthesised sentence. About −44 dBFS.
pub const LOUD_RMS: f64 = 200.0;
/// A question sample whose magnitude reaches this counts as speech when finding where the
/// question's speech ends. About −30 dBFS.
const SPEECH_PEAK: i16 = 1_000;
/// Tokens an answer may have: short spoken answers keep each turn (and the benchmark) short;
/// the time to the first audio does not depend on it.
pub const ANSWER_TOKENS: u32 = 40;
/// How long the agent must be silent before a caller speaks again.
pub const QUIET: Duration = Duration::from_millis(700);
/// Longest wait for any one step of a call, against hangs.
pub const STEP_LIMIT: Duration = Duration::from_secs(180);

/// The agent's document: a small library's help page, uploaded as Markdown.
pub const DOCUMENT: &str = "# Millbrook Public Library: visitor guide\n\n\
## Opening hours\n\nThe library opens at nine in the morning from Monday to Friday and closes at eight in the \
evening. On Saturday it opens at ten and closes at five. On Sunday the library is closed.\n\n\
## Library cards\n\nA library card is free for everyone who lives or works in Millbrook. Bring a photo ID and a \
letter with your address to the front desk, and the card is made while you wait.\n\n\
## Borrowing\n\nMembers can borrow up to twelve items at a time. Books are lent for three weeks, films and \
games for one week. Each loan can be renewed twice, online or at the desk.\n\n\
## Late returns\n\nThe fine for a late book is twenty cents a day, up to five dollars per item. Children's \
books have no late fines.\n\n\
## Printing and computers\n\nPrinting costs ten cents a page in black and white and fifty cents in colour. \
Twenty public computers can be booked for two hours a day.\n\n\
## Wifi\n\nFree wifi covers the whole building. The network is called Millbrook Library and needs no password.\n\n\
## Study rooms\n\nSix study rooms for up to four people can be booked up to a week ahead, for three hours at a \
time, on the website or by phone.\n\n\
## Children\n\nStory time for children under five is every Tuesday and Thursday at half past ten in the \
children's corner.\n\n\
## Parking and transport\n\nThe car park behind the library has forty free spaces for two hours. Bus lines \
four and eleven stop at the main entrance.\n\n\
## Pets\n\nOnly assistance dogs are allowed inside the library.\n";

/// What callers ask, in turn; each is answered by one section of [`DOCUMENT`].
pub const QUESTIONS: [&str; 10] = [
    "What time does the library open on Saturday?",
    "How many books can I borrow at once?",
    "Is there a car park near the library?",
    "How much is the fine for a late book?",
    "How much does printing cost?",
    "When is story time for children?",
    "How do I get a library card?",
    "Is there free wifi in the building?",
    "Can I book a study room?",
    "Can I bring my dog into the library?",
];

/// A number from the environment, or `default`; at least 1.
pub fn env_number(name: &str, default: usize) -> Result<usize> {
    let value = match std::env::var(name) {
        Ok(value) => value.trim().parse().with_context(|| format!("{name} must be a positive number"))?,
        Err(_) => default,
    };
    if value == 0 {
        bail!("{name} must be at least 1");
    }
    Ok(value)
}

/// The engines a node shares between calls, loaded once.
pub struct Models {
    pub engines: VoiceEngines,
    pub language_model: Arc<LocalLanguageModel>,
    pub embedder: Arc<dyn Embedder>,
    /// The caller's voice (the Piper voice the agent speaks with too).
    pub caller_voice: Arc<dyn TextToSpeech>,
    pub load_seconds: f64,
}

impl Models {
    /// Prints a report's heading and the lines every voice report starts with: date, machine,
    /// build profile, load, engines.
    pub fn print_heading(&self, title: &str, started_at: &str, load_before: &str, load_after: &str) {
        use parley_models::llm::LanguageModel;
        let profile = if cfg!(debug_assertions) { "dev (as `make run` builds)" } else { "bench (release)" };
        println!("### {title}\n");
        println!("- **Date:** {started_at}; **machine:** {}; **build profile:** {profile}.", facts::machine());
        println!("- **Load average** (1, 5, 15 min): {load_before} before, {load_after} after.");
        println!(
            "- **Engines:** {} (1 worker), Silero VAD, {}, local model {} (1 inference thread), all loaded in {:.1} s.",
            self.engines.speech_to_text.model_id(),
            self.caller_voice.voice_id(),
            self.language_model.id(),
            self.load_seconds
        );
    }
}

/// Settings as `parley serve` starts with them (models from `~/.cache/parley/models`).
pub fn node_settings() -> Settings {
    Settings { home_dir: std::env::var_os("HOME").map(PathBuf::from), ..Settings::default() }
}

/// Loads every engine the way `parley serve` does, with the node's default settings; `None`
/// (after saying why) when a model is not installed.
pub fn load_models(bench: &str) -> Result<Option<Models>> {
    let settings = node_settings();
    let models_dir = settings.models_dir();
    let loading = Instant::now();
    let threads = settings.models.local_threads;
    let engines = match VoiceEngines::installed(&models_dir, &settings.voice.speech_to_text_model, threads) {
        Ok(engines) => engines,
        Err(reason) => {
            println!("{bench}: SKIPPED — the voice models are not usable ({reason}); run `make models`");
            return Ok(None);
        }
    };
    let Some(caller_voice) = engines.voices.iter().find(|voice| voice.voice_id().starts_with("piper:")).cloned() else {
        println!("{bench}: SKIPPED — the Piper voice is not installed; run `make models`");
        return Ok(None);
    };
    let chat_dir = match parley_models::installed_dir(&models_dir, &parley_models::CHAT_MODEL_PACKAGE) {
        Ok(dir) => dir,
        Err(error) => {
            println!("{bench}: SKIPPED — the local chat model is not installed ({error}); run `make models`");
            return Ok(None);
        }
    };
    let options = LocalModelOptions {
        inference_threads: settings.models.local_threads,
        queue_capacity: settings.models.local_queue,
        ..LocalModelOptions::default()
    };
    let language_model = Arc::new(LocalLanguageModel::load(&chat_dir, options)?);
    let embedding_dir = match parley_models::installed_dir(&models_dir, &parley_models::EMBEDDING_PACKAGE) {
        Ok(dir) => dir,
        Err(error) => {
            println!("{bench}: SKIPPED — the embedding model is not installed ({error}); run `make models`");
            return Ok(None);
        }
    };
    let embedder: Arc<dyn Embedder> = Arc::new(BertEmbedder::load(&embedding_dir)?);
    Ok(Some(Models { engines, language_model, embedder, caller_voice, load_seconds: loading.elapsed().as_secs_f64() }))
}

/// Counts the spoken answers the node has stored (each once played to its end or cut short).
#[derive(Debug, Default)]
pub struct TimedTurns(AtomicUsize);

impl TimedTurns {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl CallObserver for TimedTurns {
    fn turn_timed(&self, _: &Agent, _: Channel, _: &parley_runtime::chat::conversations::VoiceTimings) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn call_ended(&self, _: &Agent, _: Channel, _: Duration, _: &EndReason) {}
}

/// A runtime over SQLite in a temporary directory, with the engines set, and one agent that
/// answers calls from [`DOCUMENT`] with the local model.
pub struct Node {
    pub runtime: Runtime,
    pub timed_turns: Arc<TimedTurns>,
    pub principal: auth::Principal,
    pub agent: Agent,
    // Dropped last: the database and indexes live here.
    _data_dir: tempfile::TempDir,
}

impl Node {
    /// Starts the node: the node's default settings, except that the per-conversation message
    /// rate limits are raised out of the way; the agent waits `silence_ms` of silence for the
    /// end of a caller's turn and takes up to `max_calls` calls at once.
    pub async fn start(models: &Models, silence_ms: u32, max_calls: u32) -> Result<Self> {
        init_logging();
        let data_dir = tempfile::tempdir()?;
        let mut settings = Settings { data_dir: data_dir.path().to_owned(), ..node_settings() };
        settings.demo.enabled = false;
        settings.chat.visitor_messages_per_minute = 1_000;
        settings.validate()?;
        let database = Database::connect(&settings.database_url(), settings.database.max_connections).await?;
        let runtime = Runtime::with_database(settings, database, models.embedder.clone()).await?;
        runtime.models().set_local(models.language_model.clone());
        runtime.calls().set_engines(models.engines.clone());
        let timed_turns = Arc::new(TimedTurns::default());
        runtime.calls().set_observer(timed_turns.clone());
        let created = tenants::create(&runtime, "Millbrook library").await?;
        let principal = auth::authenticate(&runtime, &created.owner_key.token).await?;
        let input = AgentInput {
            name: Some("Library desk".to_owned()),
            greeting: Some("Hello, this is the Millbrook library.".to_owned()),
            language: Some("en".to_owned()),
            model: Some(ModelChoice { max_tokens: ANSWER_TOKENS, ..ModelChoice::default() }),
            retrieval: Some(RetrievalSettings::default()),
            voice: Some(VoiceSettings {
                enabled: true,
                end_of_turn_silence_ms: silence_ms,
                max_concurrent_calls: max_calls,
                ..VoiceSettings::default()
            }),
            ..AgentInput::default()
        };
        let agent = agents::create(&runtime, &principal, input).await?;
        let upload = Upload {
            title: Some("Visitor guide".to_owned()),
            source_name: Some("visitor-guide.md".to_owned()),
            language: None,
            content: Content::File { bytes: DOCUMENT.as_bytes().to_vec(), format: Format::Markdown },
        };
        documents::ingest(&runtime, &principal, agent.id, upload).await?;
        Ok(Self { runtime, timed_turns, principal, agent, _data_dir: data_dir })
    }

    /// Starts a call with the agent, at [`CALL_RATE`] over the WebRTC channel.
    pub async fn call(&self) -> Result<Caller> {
        let request = CallRequest {
            channel: Channel::Voice,
            origin: None,
            own_origin: None,
            caller: None,
            sample_rate: CALL_RATE,
        };
        let call = calls::start(&self.runtime, &self.agent.public_id, request).await?;
        Ok(Caller::new(call, Arc::clone(&self.timed_turns)))
    }

    /// The conversation's stored messages.
    pub async fn messages(&self, conversation_id: uuid::Uuid) -> Result<Vec<StoredMessage>> {
        let (_, messages) =
            parley_runtime::chat::conversations::get(&self.runtime, &self.principal, conversation_id).await?;
        Ok(messages)
    }

    /// Waits until no call is live any more.
    pub async fn wait_for_no_calls(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.runtime.calls().live_calls() > 0 {
            if Instant::now() > deadline {
                bail!("{} calls still live a minute after hanging up", self.runtime.calls().live_calls());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    pub async fn stop(self) {
        self.runtime.database().close().await;
    }
}

/// A question as the caller says it: 16-bit PCM at [`CALL_RATE`].
#[derive(Clone)]
pub struct Spoken {
    pub text: &'static str,
    pub samples: Arc<[i16]>,
    /// Index of the last sample of speech (the last whose magnitude reaches −30 dBFS).
    pub speech_end: usize,
}

impl Spoken {
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / f64::from(CALL_RATE)
    }
}

/// Every question of [`QUESTIONS`], synthesised by the Piper voice.
pub async fn questions(voice: &dyn TextToSpeech) -> Result<Vec<Spoken>> {
    let mut spoken = Vec::new();
    for text in QUESTIONS {
        let audio = voice.synthesize(text).await?;
        let samples = StreamResampler::convert(&audio.samples, audio.sample_rate, CALL_RATE)?;
        let samples: Vec<i16> = samples.iter().map(|sample| (sample.clamp(-1.0, 1.0) * 32767.0) as i16).collect();
        let speech_end = samples
            .iter()
            .rposition(|sample| sample.unsigned_abs() >= SPEECH_PEAK.unsigned_abs())
            .with_context(|| format!("the synthesised question {text:?} is silent"))?;
        spoken.push(Spoken { text, samples: samples.into(), speech_end });
    }
    Ok(spoken)
}

pub fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|sample| f64::from(*sample).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
}

/// One question as the caller played it.
#[derive(Debug, Clone, Copy)]
pub struct Asked {
    /// When its first sample was pushed.
    pub started: Option<Instant>,
    /// When the 20 ms frame holding its last speech sample was pushed.
    pub speech_ended: Option<Instant>,
    /// Where it starts and where its speech ends, in samples of the caller's stream.
    start_sample: u64,
    end_sample: u64,
}

/// A piece of a caller's script: a question's samples (shared, not copied) or silence.
struct Part {
    samples: Option<Arc<[i16]>>,
    len: usize,
    /// Samples of this part already pushed.
    position: usize,
}

/// The caller's side of a call: every 20 ms the next 20 ms of its script (silence once the
/// script is empty) is pushed into the call, and the call's events are timestamped as they
/// arrive. The script holds its questions' audio by reference, so a long script costs no
/// memory in the process being measured.
pub struct Caller {
    pub call: Call,
    timed_turns: Arc<TimedTurns>,
    script: VecDeque<Part>,
    /// Samples pushed so far.
    pushed: u64,
    clock: tokio::time::Interval,
    pub asked: Vec<Asked>,
    /// When each loud agent audio frame arrived.
    pub loud_frames: Vec<Instant>,
    /// When the last agent audio frame (loud or not) arrived.
    pub last_audio: Option<Instant>,
    /// Final caller captions: what the node heard.
    pub heard: Vec<String>,
    /// When each caller caption arrived: (partial or final, when).
    pub caller_captions: Vec<(bool, Instant)>,
    pub agent_captions: usize,
    pub ended: bool,
    /// Why the call ended, when it ended on its own.
    pub end_reason: Option<EndReason>,
}

impl Caller {
    fn new(call: Call, timed_turns: Arc<TimedTurns>) -> Self {
        let mut clock = tokio::time::interval(Duration::from_millis(20));
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        Self {
            call,
            timed_turns,
            script: VecDeque::new(),
            pushed: 0,
            clock,
            asked: Vec::new(),
            loud_frames: Vec::new(),
            last_audio: None,
            heard: Vec::new(),
            caller_captions: Vec::new(),
            agent_captions: 0,
            ended: false,
            end_reason: None,
        }
    }

    /// Queues `question` after what is queued.
    pub fn say(&mut self, question: &Spoken) {
        let start_sample = self.pushed + self.queued() as u64;
        self.asked.push(Asked {
            started: None,
            speech_ended: None,
            start_sample,
            end_sample: start_sample + question.speech_end as u64,
        });
        let len = question.samples.len();
        self.script.push_back(Part { samples: Some(Arc::clone(&question.samples)), len, position: 0 });
    }

    /// Queues `duration` of silence after what is queued.
    pub fn pause(&mut self, duration: Duration) {
        let samples = (duration.as_secs_f64() * f64::from(CALL_RATE)).round() as usize;
        self.script.push_back(Part { samples: None, len: samples, position: 0 });
    }

    /// Samples queued and not yet pushed.
    pub fn queued(&self) -> usize {
        self.script.iter().map(|part| part.len - part.position).sum()
    }

    /// Plays the script and listens until `done` holds (checked after every frame and event),
    /// the call ends, or `limit` passes; false when the limit passed first.
    pub async fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Caller) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !done(self) {
            if self.ended {
                return false;
            }
            tokio::select! {
                _ = self.clock.tick() => self.push_frame(),
                event = self.call.events.recv() => self.on_event(event),
                () = tokio::time::sleep_until(deadline) => return false,
            }
        }
        true
    }

    /// Plays the script until the agent has been silent for `quiet` with nothing left to say.
    pub async fn until_quiet(&mut self, quiet: Duration, limit: Duration) -> bool {
        let since = Instant::now();
        self.run_until(limit, |caller| {
            let last = caller.last_audio.unwrap_or(since).max(since);
            caller.script.is_empty() && last.elapsed() >= quiet
        })
        .await
    }

    /// The next 20 ms of the script, silence where it runs out.
    fn next_frame(&mut self) -> Vec<i16> {
        let mut frame = Vec::with_capacity(FRAME);
        while frame.len() < FRAME {
            let Some(part) = self.script.front_mut() else { break };
            let take = (FRAME - frame.len()).min(part.len - part.position);
            match &part.samples {
                Some(samples) => frame.extend_from_slice(&samples[part.position..part.position + take]),
                None => frame.resize(frame.len() + take, 0),
            }
            part.position += take;
            if part.position == part.len {
                self.script.pop_front();
            }
        }
        frame.resize(FRAME, 0);
        frame
    }

    fn push_frame(&mut self) {
        let frame = self.next_frame();
        let (from, to) = (self.pushed, self.pushed + FRAME as u64);
        self.call.audio_in.push(&frame);
        let now = Instant::now();
        for asked in &mut self.asked {
            if asked.started.is_none() && (from..to).contains(&asked.start_sample) {
                asked.started = Some(now);
            }
            if asked.speech_ended.is_none() && (from..to).contains(&asked.end_sample) {
                asked.speech_ended = Some(now);
            }
        }
        self.pushed = to;
    }

    fn on_event(&mut self, event: Option<CallEvent>) {
        let now = Instant::now();
        match event {
            None => self.ended = true,
            Some(CallEvent::Ended(reason)) => {
                self.ended = true;
                self.end_reason = Some(reason);
            }
            Some(CallEvent::Audio(frame)) => {
                self.last_audio = Some(now);
                if rms(&frame) >= LOUD_RMS {
                    self.loud_frames.push(now);
                }
            }
            Some(CallEvent::Caption { speaker: Speaker::Caller, text, is_final }) => {
                self.caller_captions.push((is_final, now));
                if is_final {
                    self.heard.push(text);
                }
            }
            Some(CallEvent::Caption { speaker: Speaker::Agent, is_final: true, .. }) => self.agent_captions += 1,
            Some(CallEvent::Caption { .. } | CallEvent::Clear) => {}
        }
    }

    /// The first loud agent frame of an answer that starts after `after`; see [`answer_onset`].
    pub fn answer_after(&self, after: Instant) -> Option<Instant> {
        answer_onset(&self.loud_frames, after)
    }

    /// Waits for the disclosure and greeting to be spoken to the end.
    pub async fn greeted(&mut self) -> Result<()> {
        if !self.run_until(STEP_LIMIT, |caller| caller.last_audio.is_some()).await
            || !self.until_quiet(QUIET, STEP_LIMIT).await
        {
            bail!(
                "the agent's greeting never finished (audio heard: {}, call ended: {:?})",
                self.last_audio.is_some(),
                self.end_reason
            );
        }
        Ok(())
    }

    /// Asks `question` now and waits until its answer has been spoken to the end (the node
    /// stored it as played) and the agent is quiet; returns the time from the end of the
    /// question's speech to the answer's first loud frame, in ms, or `None` when no answer came
    /// within [`STEP_LIMIT`]. For one call at a time: any call's stored answer counts.
    pub async fn ask(&mut self, question: &Spoken) -> Result<Option<f64>> {
        let stored_before = self.timed_turns.count();
        self.say(question);
        let index = self.asked.len() - 1;
        let answered_at = |caller: &Caller| {
            let ended = caller.asked[index].speech_ended?;
            Some((ended, caller.answer_after(ended)?))
        };
        if !self.run_until(STEP_LIMIT, |caller| answered_at(caller).is_some()).await {
            eprintln!("no answer to {:?} within {STEP_LIMIT:?}", question.text);
            return Ok(None);
        }
        let measured = answered_at(self).map(|(ended, answered)| millis(answered.duration_since(ended)));
        if !self.run_until(STEP_LIMIT, |caller| caller.timed_turns.count() > stored_before).await {
            bail!("the answer to {:?} was not stored within {STEP_LIMIT:?}", question.text);
        }
        if !self.until_quiet(QUIET, STEP_LIMIT).await {
            bail!("the answer to {:?} was still playing after {STEP_LIMIT:?}", question.text);
        }
        Ok(measured)
    }

    /// Hangs up and reads the events to the end.
    pub async fn hang_up(mut self, runtime: &Runtime) -> Result<Finished> {
        calls::hang_up(runtime, self.call.id);
        let drained = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(event) = self.call.events.recv().await {
                self.on_event(Some(event));
            }
        })
        .await;
        if drained.is_err() {
            bail!("the call did not end within 30 s of hanging up");
        }
        Ok(Finished {
            conversation_id: self.call.conversation_id,
            dropped_samples: self.call.audio_in.dropped_samples(),
            asked: self.asked,
            loud_frames: self.loud_frames,
            heard: self.heard,
            caller_captions: self.caller_captions,
        })
    }
}

/// What a caller kept of a call once it ended.
pub struct Finished {
    pub conversation_id: uuid::Uuid,
    pub dropped_samples: u64,
    pub asked: Vec<Asked>,
    pub loud_frames: Vec<Instant>,
    pub heard: Vec<String>,
    /// When each caller caption arrived: (final, when).
    pub caller_captions: Vec<(bool, Instant)>,
}

impl Finished {
    /// For each question asked: how long after its speech ended the first partial caption of
    /// it came (negative: while it was still being said), `None` when its final caption came
    /// first.
    pub fn first_partials(&self) -> Vec<Option<f64>> {
        self.asked
            .iter()
            .map(|asked| {
                let (started, ended) = (asked.started?, asked.speech_ended?);
                let captions = self.caller_captions.iter().filter(|(_, at)| *at >= started);
                let (is_final, at) = captions.clone().next()?;
                if *is_final {
                    return None;
                }
                Some(if *at >= ended { millis(at.duration_since(ended)) } else { -millis(ended.duration_since(*at)) })
            })
            .collect()
    }

    /// The first loud agent frame of an answer that starts after `after`; see [`answer_onset`].
    pub fn answer_after(&self, after: Instant) -> Option<Instant> {
        answer_onset(&self.loud_frames, after)
    }
}

/// A gap in the agent's loud audio at least this long separates two answers; the pauses between
/// the sentences of one answer are shorter.
const ANSWER_GAP: Duration = Duration::from_millis(600);

/// The first loud frame at or after `after` that follows at least [`ANSWER_GAP`] without loud
/// frames: the start of the next answer, not the rest of an answer still playing when the
/// caller finished speaking (which happens only when the node is behind).
pub fn answer_onset(loud_frames: &[Instant], after: Instant) -> Option<Instant> {
    let first = loud_frames.partition_point(|at| *at < after);
    (first..loud_frames.len())
        .find(|&index| index == 0 || loud_frames[index].duration_since(loud_frames[index - 1]) >= ANSWER_GAP)
        .map(|index| loud_frames[index])
}

/// The process's resident memory, from `/proc/self/status`, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss: u64,
    pub anonymous: u64,
}

impl Memory {
    pub fn now() -> Result<Self> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        let field = |name: &str| -> Result<u64> {
            let line = status.lines().find(|line| line.starts_with(name)).with_context(|| format!("no {name}"))?;
            let kilobytes: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse()?;
            Ok(kilobytes * 1024)
        };
        Ok(Self { rss: field("VmRSS:")?, anonymous: field("RssAnon:")? })
    }
}

pub fn megabytes(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The nearest-rank percentile `p` (0–100) of `values`: the smallest value with at least p% of
/// the values at or below it.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Words of `expected` found in `heard`, as a fraction.
pub fn overlap(expected: &str, heard: &str) -> f64 {
    let words = |text: &str| -> Vec<String> {
        text.split_whitespace()
            .map(|word| word.chars().filter(|c| c.is_alphanumeric()).collect::<String>().to_lowercase())
            .filter(|word| !word.is_empty())
            .collect()
    };
    let (expected, heard) = (words(expected), words(heard));
    expected.iter().filter(|word| heard.contains(word)).count() as f64 / expected.len().max(1) as f64
}
