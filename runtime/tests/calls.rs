//! Voice calls driven with real PCM through the real engines: whisper tiny.en, Silero VAD and
//! the Piper voice from the model cache, over SQLite in a temporary directory. The caller's
//! speech is synthesised by the Piper voice during the test and sent in real time, 20 ms at a
//! time, at 48 kHz (WebRTC) or 8 kHz (phone).
//!
//! The agent searches its knowledge base, which holds no documents, so every answer is its
//! fixed "don't know" message, without a language model: the answers are deterministic.
//!
//! Remote voices speak through a fake OpenAI-compatible speech server on loopback that answers
//! with a steady tone, so the audio a caller hears can be told apart from the local voice's.
//!
//! Tests that need the models skip loudly when they are not installed, unless
//! `PARLEY_REQUIRE_MODELS` is set: then they fail.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parley_config::Settings;
use parley_models::audio::StreamResampler;
use parley_models::tts::{EspeakVoice, PiperVoice, TextToSpeech};
use parley_models::vad::SileroVad;
use parley_models::{installed_dir, BertEmbedder, WhisperOptions, WhisperStt, EMBEDDING_PACKAGE, WHISPER_GGML_FILE};
use parley_runtime::agents::{
    self, Agent, AgentInput, AgentRetention, RetrievalSettings, VoiceProvider, VoiceSettings,
};
use parley_runtime::calls::{self, Call, CallEvent, CallRequest, EndReason, Speaker, VoiceEngines};
use parley_runtime::chat::conversations::{Channel, MessageRole, StoredMessage};
use parley_runtime::storage::Database;
use parley_runtime::{auth, provider_keys, recordings, tenants, Runtime};

const DISCLOSURE: &str = "You are talking to an AI assistant. This call is transcribed.";
const GREETING: &str = "Hello, this is the town library.";
/// Long enough to be interrupted in the middle, even when transcription is slow on a busy
/// machine.
const NO_ANSWER: &str = "I'm sorry, I don't know that. I can only answer from the documents of this site, \
     and none of them is about this yet. The library keeps its opening hours, its events and its rules on \
     the notice board by the main entrance. The reading room, the children's corner and the study rooms \
     each have their own schedule, which changes with the seasons and the school holidays. Members can \
     borrow up to ten books at a time and renew them twice. Please ask the staff at the front desk, who \
     will be glad to help you with anything else you need today.";
const QUESTION: &str = "What time does the library open on Sunday morning?";
/// About half a minute of speech with no pause as long as the silence window.
const MONOLOGUE: &str = "Let me tell you about my garden, because it has been quite a year for it. In spring the \
     tomatoes came up early, the beans climbed over the fence, and the roses along the wall opened before \
     anyone expected them. Then the summer turned dry, so every evening I carried water from the rain barrel \
     to the vegetables, one heavy can after another, while the neighbours watched from their porch.";
const INTERRUPTION: &str = "Where can I park my car near the building?";
/// Generous limits against hangs; no test asserts how fast anything is.
const PHASE: Duration = Duration::from_secs(120);

fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TEST_MODELS_DIR") {
        return PathBuf::from(dir);
    }
    PathBuf::from(std::env::var_os("HOME").expect("HOME is not set")).join(".cache/parley/models")
}

/// The engines every test shares (loaded once per test binary), or why they cannot load.
struct Models {
    engines: VoiceEngines,
    piper: PiperVoice,
    embedder: Arc<dyn parley_models::Embedder>,
}

fn models() -> Option<&'static Models> {
    static MODELS: OnceLock<Result<Models, String>> = OnceLock::new();
    let loaded = MODELS.get_or_init(|| {
        let dir = models_dir();
        let failed = |what: &str, error: &dyn std::fmt::Display| format!("{what}: {error}");
        let whisper_dir =
            installed_dir(&dir, &parley_models::WHISPER_TINY_EN_PACKAGE).map_err(|error| failed("whisper", &error))?;
        let whisper = WhisperStt::load(&whisper_dir.join(WHISPER_GGML_FILE), WhisperOptions::default())
            .map_err(|error| failed("whisper", &error))?;
        let vad = SileroVad::installed(&dir).map_err(|error| failed("silero vad", &error))?;
        let piper = PiperVoice::installed(&dir, 1).map_err(|error| failed("piper", &error))?;
        let espeak = EspeakVoice::new("en-us").map_err(|error| failed("espeak-ng", &error))?;
        let embedder_dir = installed_dir(&dir, &EMBEDDING_PACKAGE).map_err(|error| failed("embedder", &error))?;
        let embedder = BertEmbedder::load(&embedder_dir).map_err(|error| failed("embedder", &error))?;
        let voices: Vec<Arc<dyn TextToSpeech>> = vec![Arc::new(piper.clone()), Arc::new(espeak)];
        Ok(Models {
            engines: VoiceEngines { speech_to_text: Arc::new(whisper), vad: Arc::new(vad), voices },
            piper,
            embedder: Arc::new(embedder),
        })
    });
    match loaded {
        Ok(models) => Some(models),
        Err(reason) if std::env::var_os("PARLEY_REQUIRE_MODELS").is_none() => {
            eprintln!("SKIPPED: the voice models are not installed ({reason}); run `make models`");
            None
        }
        Err(reason) => panic!("PARLEY_REQUIRE_MODELS is set but the voice models cannot load: {reason}"),
    }
}

/// A runtime over SQLite in a temporary directory, with one tenant.
struct Node {
    runtime: Runtime,
    principal: auth::Principal,
    _dir: tempfile::TempDir,
    /// One node (one test) at a time: turn-taking is judged by what happens within tens of
    /// milliseconds, which two calls sharing the two cores' whisper and model would blur.
    _one_at_a_time: tokio::sync::MutexGuard<'static, ()>,
}

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn node(embedder: Arc<dyn parley_models::Embedder>, tweak: impl FnOnce(&mut Settings)) -> Node {
    let one_at_a_time = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings { data_dir: dir.path().to_owned(), ..Settings::default() };
    settings.demo.enabled = false;
    // The fake speech servers of these tests listen on loopback.
    settings.models.allow_private_providers = true;
    tweak(&mut settings);
    settings.validate().unwrap();
    let database = Database::connect(&settings.database_url(), settings.database.max_connections).await.unwrap();
    let runtime = Runtime::with_database(settings, database, embedder).await.unwrap();
    let created = tenants::create(&runtime, "Town library").await.unwrap();
    let principal = auth::authenticate(&runtime, &created.owner_key.token).await.unwrap();
    Node { runtime, principal, _dir: dir, _one_at_a_time: one_at_a_time }
}

impl Node {
    async fn agent(&self, voice: VoiceSettings) -> Agent {
        self.agent_with(voice, None).await
    }

    async fn agent_with(&self, voice: VoiceSettings, retention: Option<AgentRetention>) -> Agent {
        let input = AgentInput {
            retention,
            name: Some("Library".to_owned()),
            greeting: Some(GREETING.to_owned()),
            language: Some("en".to_owned()),
            retrieval: Some(RetrievalSettings {
                enabled: true,
                no_answer_message: NO_ANSWER.to_owned(),
                ..RetrievalSettings::default()
            }),
            voice: Some(VoiceSettings { enabled: true, disclosure: DISCLOSURE.to_owned(), ..voice }),
            ..AgentInput::default()
        };
        agents::create(&self.runtime, &self.principal, input).await.unwrap()
    }

    /// The message records of a tenant export, once it is ready.
    async fn exported_messages(&self) -> Vec<serde_json::Value> {
        use parley_runtime::exports::{self, ExportFormat, ExportScope, ExportStatus};
        use std::io::Read;
        let job =
            exports::create(&self.runtime, &self.principal, ExportScope::Tenant, ExportFormat::Archive).await.unwrap();
        let deadline = Instant::now() + PHASE;
        loop {
            let job = exports::get(&self.runtime, &self.principal, job.id).await.unwrap();
            match job.status {
                ExportStatus::Ready => break,
                ExportStatus::Queued | ExportStatus::Running if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => panic!("the export did not finish: {job:?}"),
            }
        }
        let (_, path) = exports::download(&self.runtime, &self.principal, job.id).await.unwrap();
        let mut archive = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
        let mut text = String::new();
        archive.by_name("messages.ndjson").unwrap().read_to_string(&mut text).unwrap();
        text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    }

    async fn messages(&self, conversation_id: uuid::Uuid) -> Vec<StoredMessage> {
        let (_, messages) =
            parley_runtime::chat::conversations::get(&self.runtime, &self.principal, conversation_id).await.unwrap();
        messages
    }
}

fn request(sample_rate: u32) -> CallRequest {
    CallRequest {
        channel: if sample_rate == 8_000 { Channel::Phone } else { Channel::Voice },
        origin: None,
        own_origin: None,
        caller: None,
        sample_rate,
    }
}

/// `text` spoken by the Piper voice, as 16-bit PCM at `rate`.
async fn speech(models: &Models, text: &str, rate: u32) -> Vec<i16> {
    let audio = models.piper.synthesize(text).await.unwrap();
    let samples = StreamResampler::convert(&audio.samples, audio.sample_rate, rate).unwrap();
    samples.iter().map(|sample| (sample.clamp(-1.0, 1.0) * 32767.0) as i16).collect()
}

fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|sample| f64::from(*sample).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
}

/// Plays the caller's side of a call in real time: every 20 ms the next 20 ms of the script
/// (silence when it is empty), mixed with the agent's audio fed back when `echo` is set.
struct Caller {
    call: Call,
    rate: u32,
    script: VecDeque<i16>,
    /// The agent's frames to feed back: (the tick due, samples).
    echo: Option<(u64, f32)>,
    echo_queue: VecDeque<(u64, Vec<i16>)>,
    tick: u64,
    started: Instant,
    events: Vec<(u64, CallEvent)>,
    /// Ticks at which the script's speech started.
    spoke_at: Vec<u64>,
    ended: Option<EndReason>,
    /// False for a client that sends nothing while its script is silent, as WebRTC clients
    /// with discontinuous transmission do.
    sends_silence: bool,
}

impl Caller {
    fn new(call: Call, rate: u32) -> Self {
        Self {
            call,
            rate,
            script: VecDeque::new(),
            echo: None,
            echo_queue: VecDeque::new(),
            tick: 0,
            started: Instant::now(),
            events: Vec::new(),
            spoke_at: Vec::new(),
            ended: None,
            sends_silence: true,
        }
    }

    fn frame_len(&self) -> usize {
        (self.rate / 50) as usize
    }

    /// Queues `speech` after what is queued, then `silence_ms` of silence.
    fn say(&mut self, speech: &[i16], silence_ms: usize) {
        self.spoke_at.push(self.tick + (self.script.len() / self.frame_len()) as u64);
        self.script.extend(speech.iter().copied());
        self.script.extend(std::iter::repeat_n(0, self.rate as usize * silence_ms / 1000));
    }

    /// Runs until `done` holds (checked after every event and tick) or the call ends.
    async fn run_until(&mut self, mut done: impl FnMut(&Caller) -> bool) {
        let deadline = tokio::time::Instant::now() + PHASE;
        let mut clock = tokio::time::interval(Duration::from_millis(20));
        while !done(self) && self.ended.is_none() {
            tokio::select! {
                _ = clock.tick() => {
                    let len = self.frame_len();
                    let mut chunk: Vec<i16> = (0..len).map(|_| self.script.pop_front().unwrap_or(0)).collect();
                    while self.echo_queue.front().is_some_and(|(due, _)| *due <= self.tick) {
                        let (_, frame) = self.echo_queue.pop_front().unwrap();
                        let gain = self.echo.map_or(0.0, |(_, gain)| gain);
                        for (out, sample) in chunk.iter_mut().zip(frame) {
                            *out = out.saturating_add((f32::from(sample) * gain) as i16);
                        }
                    }
                    if self.sends_silence || chunk.iter().any(|sample| *sample != 0) {
                        self.call.audio_in.push(&chunk);
                    }
                    self.tick += 1;
                }
                event = self.call.events.recv() => {
                    let Some(event) = event else { panic!("the events ended without `Ended`") };
                    if let CallEvent::Audio(frame) = &event {
                        assert_eq!(frame.len(), self.frame_len(), "an audio frame is exactly 20 ms");
                        if let Some((delay, _)) = self.echo {
                            self.echo_queue.push_back((self.tick + delay, frame.clone()));
                        }
                        // Paced: never more frames than 20 ms periods have passed (plus a little
                        // slack for timer granularity).
                        let frames = self.events.iter().filter(|(_, e)| matches!(e, CallEvent::Audio(_))).count() as u128;
                        assert!(frames <= self.started.elapsed().as_millis() / 20 + 10, "audio comes faster than real time");
                    }
                    if let CallEvent::Ended(reason) = &event {
                        self.ended = Some(reason.clone());
                    }
                    self.events.push((self.tick, event));
                }
                () = tokio::time::sleep_until(deadline) => panic!("the call did not get there in {PHASE:?}; events so far: {:?}", self.summary()),
            }
        }
    }

    fn captions(&self, speaker: Speaker, is_final: bool) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|(_, event)| match event {
                CallEvent::Caption { speaker: who, text, is_final: f } if *who == speaker && *f == is_final => {
                    Some(text.clone())
                }
                _ => None,
            })
            .collect()
    }

    fn has_caption(&self, speaker: Speaker, starting: &str) -> bool {
        self.captions(speaker, true).iter().any(|text| text.starts_with(starting))
    }

    /// How many times the answer's last sentence has been spoken.
    fn answers_finished(&self) -> usize {
        self.captions(Speaker::Agent, true)
            .iter()
            .filter(|text| text.ends_with("anything else you need today."))
            .count()
    }

    fn cleared(&self) -> bool {
        self.events.iter().any(|(_, event)| *event == CallEvent::Clear)
    }

    /// Ticks since the last agent audio frame (everything queued has played).
    fn quiet_for(&self, ticks: u64) -> bool {
        let last = self.events.iter().rev().find(|(_, event)| matches!(event, CallEvent::Audio(_)));
        last.is_some_and(|(at, _)| self.tick >= at + ticks) && self.script.is_empty()
    }

    fn summary(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|(_, event)| !matches!(event, CallEvent::Audio(_)))
            .map(|(tick, event)| format!("{tick}: {event:?}"))
            .collect()
    }

    async fn hang_up(&mut self, runtime: &Runtime) {
        assert!(calls::hang_up(runtime, self.call.id));
        self.run_until(|_| false).await;
        assert_eq!(self.ended, Some(EndReason::HungUp), "{:?}", self.summary());
        assert!(self.call.events.recv().await.is_none(), "`Ended` is the last event");
    }
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|word| word.chars().filter(|c| c.is_alphanumeric()).collect::<String>().to_lowercase())
        .filter(|word| !word.is_empty())
        .collect()
}

/// Words of `expected` found in `heard`, as a fraction.
fn overlap(expected: &str, heard: &str) -> f64 {
    let heard = words(heard);
    let expected = words(expected);
    expected.iter().filter(|word| heard.contains(word)).count() as f64 / expected.len().max(1) as f64
}

async fn wait_for_no_calls(runtime: &Runtime) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while runtime.calls().live_calls() > 0 {
        assert!(Instant::now() < deadline, "calls still live: {}", runtime.calls().live_calls());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A whole call: disclosure first, the question transcribed and stored with its times (since
/// the call's start, whether or not the caller sent audio while silent) and language, the answer
/// spoken and stored with its voice timings.
async fn question_and_answer(rate: u32, sends_silence: bool) {
    let Some(models) = models() else { return };
    let node = node(models.embedder.clone(), |_| {}).await;
    node.runtime.calls().set_engines(models.engines.clone());
    let agent = node.agent(VoiceSettings::default()).await;
    let question = speech(models, QUESTION, rate).await;
    let call = calls::start(&node.runtime, &agent.public_id, request(rate)).await.unwrap();
    let conversation_id = call.conversation_id;
    assert_eq!(node.runtime.calls().live_calls(), 1);
    let mut caller = Caller::new(call, rate);
    caller.sends_silence = sends_silence;

    // The disclosure comes first, before the greeting.
    caller.run_until(|caller| caller.has_caption(Speaker::Agent, "Hello")).await;
    let agent_captions = caller.captions(Speaker::Agent, true);
    assert_eq!(
        agent_captions[..2],
        ["You are talking to an AI assistant.", "This call is transcribed."],
        "{agent_captions:?}"
    );
    let first_audio = caller.events.iter().position(|(_, event)| matches!(event, CallEvent::Audio(_))).unwrap();
    let first_caption = caller.events.iter().position(|(_, event)| matches!(event, CallEvent::Caption { .. })).unwrap();
    assert!(first_caption < first_audio, "the disclosure's caption comes with its first audio");

    caller.run_until(|caller| caller.quiet_for(25)).await;
    let asked_at = caller.tick;
    caller.say(&question, 0);
    caller.run_until(|caller| caller.has_caption(Speaker::Agent, "I'm sorry")).await;
    let heard = caller.captions(Speaker::Caller, true);
    assert_eq!(heard.len(), 1, "one caller utterance: {heard:?}");
    assert!(overlap(QUESTION, &heard[0]) >= 0.6, "the question was heard as {heard:?}");
    let partials = caller.captions(Speaker::Caller, false);
    eprintln!("partial captions while the caller spoke: {partials:?}");
    assert!(!caller.cleared(), "nothing interrupted");

    caller.run_until(|caller| caller.answers_finished() == 1 && caller.quiet_for(25)).await;
    let spoken = caller.captions(Speaker::Agent, true).join(" ");
    assert!(spoken.ends_with("anything else you need today."), "the whole answer was spoken: {spoken}");
    caller.hang_up(&node.runtime).await;
    wait_for_no_calls(&node.runtime).await;

    let messages = node.messages(conversation_id).await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    let (user, reply) = (&messages[0], &messages[1]);
    assert_eq!(user.role, MessageRole::User);
    assert!(overlap(QUESTION, user.text.as_deref().unwrap()) >= 0.6, "{:?}", user.text);
    let utterance = user.utterance.clone().expect("the question's place in the call is stored");
    let asked_ms = asked_at * 20;
    let question_ms = (question.len() as u64 * 1000) / u64::from(rate);
    assert!(
        utterance.start_ms + 300 >= asked_ms && utterance.start_ms <= asked_ms + 1000,
        "{utterance:?} asked at {asked_ms}"
    );
    assert!(
        utterance.end_ms > utterance.start_ms + question_ms / 2 && utterance.end_ms <= asked_ms + question_ms + 1000,
        "{utterance:?}"
    );
    assert_eq!(utterance.language.as_deref(), Some("en"));

    assert_eq!(reply.role, MessageRole::Assistant);
    assert_eq!(reply.finish_reason.as_deref(), Some("no_answer"));
    assert_eq!(reply.text.as_deref(), Some(NO_ANSWER));
    let spoken_at = reply.utterance.clone().expect("the answer's place in the call is stored");
    assert!(spoken_at.start_ms >= utterance.end_ms && spoken_at.end_ms > spoken_at.start_ms, "{spoken_at:?}");
    let voice = reply.timings.as_ref().and_then(|timings| timings.voice.clone()).expect("voice timings are stored");
    assert!(voice.end_of_turn_ms >= 600.0, "{voice:?}");
    // The question was transcribed from the caller's pause on, so the turn waited for whisper
    // only as long as it was still busy once the silence window closed.
    assert!(voice.transcription_ms >= 0.0 && voice.synthesis_ms.is_some(), "{voice:?}");
    assert_eq!(node.runtime.calls().stats().early_transcripts, 1, "the pause's transcript was the turn's");
    assert!(voice.first_audio_ms.unwrap() >= voice.end_of_turn_ms + voice.transcription_ms, "{voice:?}");

    // The tenant's export carries both messages' places in the call and language.
    let exported = node.exported_messages().await;
    assert_eq!(exported.len(), 2, "{exported:?}");
    for (record, message) in exported.iter().zip(&messages) {
        let utterance = message.utterance.as_ref().unwrap();
        assert_eq!(record["id"], message.id.to_string());
        assert_eq!(
            (&record["speech_start_ms"], &record["speech_end_ms"], &record["language"]),
            (&utterance.start_ms.into(), &utterance.end_ms.into(), &serde_json::json!(utterance.language)),
            "{record}"
        );
    }

    // The agent did not opt in to recording: no audio was kept.
    let error = recordings::wav(&node.runtime, &node.principal, conversation_id).await.unwrap_err();
    assert_eq!(error.code(), "not_found", "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webrtc_call_at_48_khz_is_heard_answered_and_stored() {
    // A browser with discontinuous transmission sends nothing until the caller speaks.
    question_and_answer(48_000, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_call_at_8_khz_is_heard_answered_and_stored() {
    question_and_answer(8_000, true).await;
}

/// A long utterance is captioned while the caller speaks: partial captions, each words of the
/// utterance so far, arrive before the final one, and the final one is the whole utterance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_utterance_is_captioned_while_it_is_spoken() {
    let Some(models) = models() else { return };
    let node = node(models.embedder.clone(), |_| {}).await;
    node.runtime.calls().set_engines(models.engines.clone());
    let agent = node.agent(VoiceSettings::default()).await;
    let rate = 16_000;
    let said = "Let me tell you about my garden, because it has been quite a year for it. In spring the tomatoes \
         came up early, the beans climbed over the fence, and the roses along the wall opened before anyone \
         expected them.";
    let speech = speech(models, said, rate).await;
    let call = calls::start(&node.runtime, &agent.public_id, request(rate)).await.unwrap();
    let mut caller = Caller::new(call, rate);
    caller.run_until(|caller| caller.has_caption(Speaker::Agent, "Hello") && caller.quiet_for(10)).await;
    caller.say(&speech, 0);
    caller.run_until(|caller| !caller.captions(Speaker::Caller, true).is_empty()).await;
    let partials = caller.captions(Speaker::Caller, false);
    assert!(!partials.is_empty(), "no partial caption while {} s of speech were heard", speech.len() / rate as usize);
    let heard = words(&caller.captions(Speaker::Caller, true)[0]);
    assert!(overlap(said, &heard.join(" ")) >= 0.6, "the final caption: {heard:?}");
    for partial in &partials {
        assert!(overlap(partial, said) >= 0.6, "a partial caption {partial:?} is not what was said");
    }
    caller.hang_up(&node.runtime).await;
}

/// The caller asks, then talks over the answer: the agent's audio is lowered at once, then
/// cleared, and only what was played is stored, marked interrupted; the new question is
/// answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_over_the_answer_interrupts_it() {
    let Some(models) = models() else { return };
    let node = node(models.embedder.clone(), |settings| settings.webhooks.allow_private_targets = true).await;
    node.runtime.calls().set_engines(models.engines.clone());
    let agent = node.agent(VoiceSettings::default()).await;
    let endpoint = parley_runtime::webhooks::NewEndpoint {
        url: "http://127.0.0.1:9/parley".to_owned(),
        description: None,
        event_types: vec!["message.created".to_owned()],
    };
    parley_runtime::webhooks::create(&node.runtime, &node.principal, endpoint).await.unwrap();
    let rate = 48_000;
    let (question, interruption) = (speech(models, QUESTION, rate).await, speech(models, INTERRUPTION, rate).await);
    let call = calls::start(&node.runtime, &agent.public_id, request(rate)).await.unwrap();
    let conversation_id = call.conversation_id;
    let mut caller = Caller::new(call, rate);
    caller.run_until(|caller| caller.has_caption(Speaker::Agent, "Hello")).await;
    caller.run_until(|caller| caller.quiet_for(10)).await;
    caller.say(&question, 0);
    caller.run_until(|caller| caller.has_caption(Speaker::Agent, "I'm sorry")).await;
    // A second into the answer, the caller speaks again.
    let answer_from = caller.events.len();
    let until = caller.tick + 50;
    caller.run_until(|caller| caller.tick >= until).await;
    let interrupted_at = caller.tick;
    caller.say(&interruption, 0);
    caller.run_until(|caller| caller.cleared()).await;
    let cleared_at = caller.events.iter().position(|(_, event)| *event == CallEvent::Clear).unwrap();

    // Frames played while the caller spoke (from 200 ms in) were lowered.
    let frames = |from: u64, to: u64, range: std::ops::Range<usize>| -> Vec<i16> {
        caller.events[range]
            .iter()
            .filter(|(tick, _)| (from..to).contains(tick))
            .filter_map(|(_, event)| match event {
                CallEvent::Audio(frame) => Some(frame.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    };
    let before = frames(interrupted_at.saturating_sub(40), interrupted_at, answer_from..cleared_at);
    let during = frames(interrupted_at + 10, u64::MAX, answer_from..cleared_at);
    assert!(!during.is_empty(), "the answer went on playing until the interruption was transcribed");
    assert!(rms(&during) < rms(&before) * 0.6, "ducked {} vs {} before", rms(&during), rms(&before));
    assert!(node.runtime.calls().stats().ducked_frames > 0);

    // The new question is answered in turn.
    caller.run_until(|caller| caller.answers_finished() == 1 && caller.quiet_for(25)).await;
    caller.hang_up(&node.runtime).await;
    assert_eq!(node.runtime.calls().stats().barge_ins, 1);

    let messages = node.messages(conversation_id).await;
    assert_eq!(messages.len(), 4, "{messages:?}");
    let first_answer = &messages[1];
    assert_eq!(first_answer.finish_reason.as_deref(), Some("interrupted"));
    let said = first_answer.text.clone().unwrap();
    assert!(said.starts_with("I'm sorry, I don't know that."), "{said}");
    assert!(said.len() < NO_ANSWER.len() && !said.contains("front desk"), "only what was played is stored: {said}");
    assert!(overlap(INTERRUPTION, messages[2].text.as_deref().unwrap()) >= 0.6, "{:?}", messages[2].text);
    assert_eq!(messages[3].finish_reason.as_deref(), Some("no_answer"));
    assert_eq!(messages[3].text.as_deref(), Some(NO_ANSWER));

    // `message.created` tells of each message once, an answer as it was heard.
    let payloads: Vec<String> = sqlx::query_scalar(
        "SELECT payload FROM webhook_messages WHERE event_type = 'message.created' ORDER BY created_at, id",
    )
    .fetch_all(node.runtime.database().pool())
    .await
    .unwrap();
    let events: Vec<serde_json::Value> =
        payloads.iter().map(|payload| serde_json::from_str(payload).unwrap()).collect();
    assert_eq!(events.len(), messages.len(), "{events:?}");
    for message in &messages {
        let event = events
            .iter()
            .find(|event| event["data"]["message_id"] == message.id.to_string())
            .unwrap_or_else(|| panic!("no message.created for {message:?}"));
        assert_eq!(event["data"]["text"].as_str(), message.text.as_deref(), "{event}");
        assert_eq!(event["data"]["finish_reason"].as_str(), message.finish_reason.as_deref(), "{event}");
    }
}

/// "Okay" over the answer is a backchannel: the volume comes back and the agent goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backchannel_lets_the_agent_go_on() {
    let Some(models) = models() else { return };
    let node = node(models.embedder.clone(), |_| {}).await;
    node.runtime.calls().set_engines(models.engines.clone());
    let agent = node.agent(VoiceSettings::default()).await;
    let rate = 48_000;
    let (question, okay) = (speech(models, QUESTION, rate).await, speech(models, "Okay.", rate).await);
    let call = calls::start(&node.runtime, &agent.public_id, request(rate)).await.unwrap();
    let conversation_id = call.conversation_id;
    let mut caller = Caller::new(call, rate);
    caller.run_until(|caller| caller.has_caption(Speaker::Agent, "Hello")).await;
    caller.run_until(|caller| caller.quiet_for(10)).await;
    caller.say(&question, 0);
    caller.run_until(|caller| caller.has_caption(Speaker::Agent, "I'm sorry")).await;
    let until = caller.tick + 50;
    caller.run_until(|caller| caller.tick >= until).await;
    caller.say(&okay, 0);
    caller.run_until(|caller| caller.cleared() || (caller.answers_finished() == 1 && caller.quiet_for(25))).await;
    assert!(!caller.cleared(), "{:?}", caller.summary());
    let spoken = caller.captions(Speaker::Agent, true).join(" ");
    assert!(spoken.ends_with("anything else you need today."), "the agent went on to the end: {spoken}");
    caller.hang_up(&node.runtime).await;
    assert_eq!(node.runtime.calls().stats().backchannels, 1);
    assert_eq!(node.runtime.calls().stats().barge_ins, 0);
    let messages = node.messages(conversation_id).await;
    assert_eq!(messages.len(), 2, "the backchannel is no question: {messages:?}");
    assert_eq!(messages[1].text.as_deref(), Some(NO_ANSWER));
    assert_eq!(messages[1].finish_reason.as_deref(), Some("no_answer"));
}

/// The agent's own audio fed back 200 ms later at half amplitude is no caller speech: no
/// utterance, no ducking, no barge-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_own_echo_is_not_the_caller() {
    let Some(models) = models() else { return };
    let node = node(models.embedder.clone(), |_| {}).await;
    node.runtime.calls().set_engines(models.engines.clone());
    let agent = node.agent(VoiceSettings::default()).await;
    let rate = 48_000;
    let call = calls::start(&node.runtime, &agent.public_id, request(rate)).await.unwrap();
    let conversation_id = call.conversation_id;
    let mut caller = Caller::new(call, rate);
    caller.echo = Some((10, 0.5));
    caller.run_until(|caller| caller.has_caption(Speaker::Agent, "Hello")).await;
    caller.run_until(|caller| caller.quiet_for(75)).await;
    let stats = node.runtime.calls().stats();
    let frames = caller.events.iter().filter(|(_, event)| matches!(event, CallEvent::Audio(_))).count() as u64;
    caller.hang_up(&node.runtime).await;
    assert!(stats.echo_frames > 10, "the echo was recognised: {stats:?}");
    assert!(
        stats.ducked_frames * 10 <= frames,
        "the agent was barely ducked by its echo: {stats:?} of {frames} frames"
    );
    assert_eq!(stats.barge_ins, 0);
    assert!(caller.captions(Speaker::Caller, true).is_empty(), "{:?}", caller.summary());
    assert!(!caller.cleared());
    assert!(node.messages(conversation_id).await.is_empty(), "no caller utterance was stored");
}

/// Calls end by hang-up, by dropping the call, by the idle timeout and by the longest
/// duration; each frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_end_cleanly_and_leave_nothing_behind() {
    let Some(models) = models() else { return };
    let node = node(models.embedder.clone(), |settings| {
        settings.voice.idle_timeout_seconds = 2;
        settings.voice.max_call_seconds = 30;
    })
    .await;
    node.runtime.calls().set_engines(models.engines.clone());
    let agent = node.agent(VoiceSettings { max_concurrent_calls: 2, ..VoiceSettings::default() }).await;
    for round in 0..6 {
        let call = calls::start(&node.runtime, &agent.public_id, request(8_000)).await.unwrap();
        let mut caller = Caller::new(call, 8_000);
        caller.run_until(|caller| caller.events.iter().any(|(_, event)| matches!(event, CallEvent::Audio(_)))).await;
        match round % 3 {
            0 => caller.hang_up(&node.runtime).await,
            1 => drop(caller),
            _ => {
                // Nobody speaks: once the agent is done, the idle timeout ends the call.
                caller.run_until(|_| false).await;
                assert_eq!(caller.ended, Some(EndReason::Timeout));
            }
        }
        wait_for_no_calls(&node.runtime).await;
    }
    assert!(!calls::hang_up(&node.runtime, uuid::Uuid::now_v7()), "an unknown call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_lasts_at_most_the_longest_duration() {
    let Some(models) = models() else { return };
    let node = node(models.embedder.clone(), |settings| settings.voice.max_call_seconds = 2).await;
    node.runtime.calls().set_engines(models.engines.clone());
    let agent = node.agent(VoiceSettings::default()).await;
    let call = calls::start(&node.runtime, &agent.public_id, request(48_000)).await.unwrap();
    let mut caller = Caller::new(call, 48_000);
    caller.run_until(|_| false).await;
    assert_eq!(caller.ended, Some(EndReason::Timeout));
    wait_for_no_calls(&node.runtime).await;
}

/// A ten-minute monologue, fed fifty times faster than real time: the call neither ends nor
/// holds more than its input buffer, the speech is transcribed in parts no longer than whisper
/// takes at once, and the call still hangs up cleanly; the node takes the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_minute_monologue_fed_fast_is_transcribed_in_parts() {
    let Some(models) = models() else { return };
    let node = node(models.embedder.clone(), |_| {}).await;
    node.runtime.calls().set_engines(models.engines.clone());
    let agent = node.agent(VoiceSettings::default()).await;
    let rate = 16_000;
    let paragraph = speech(models, MONOLOGUE, rate).await;
    let total = rate as usize * 600;
    let monologue: Vec<i16> = paragraph.iter().copied().cycle().take(total).collect();

    let call = calls::start(&node.runtime, &agent.public_id, request(rate)).await.unwrap();
    let conversation_id = call.conversation_id;
    let mut caller = Caller::new(call, rate);
    // One second of speech every 20 ms.
    let mut clock = tokio::time::interval(Duration::from_millis(20));
    let mut chunks = monologue.chunks(rate as usize);
    loop {
        tokio::select! {
            _ = clock.tick() => match chunks.next() {
                Some(chunk) => caller.call.audio_in.push(chunk),
                None => break,
            },
            event = caller.call.events.recv() => {
                let event = event.expect("the events ended during the monologue");
                assert!(!matches!(event, CallEvent::Ended(_)), "the call ended during the monologue: {event:?}");
                caller.events.push((caller.tick, event));
            }
        }
    }
    let dropped = caller.call.audio_in.dropped_samples();
    let bound = u64::from(rate) * node.runtime.settings().voice.input_buffer_ms / 1000;
    eprintln!("monologue: {dropped} of {total} samples dropped (input buffer {bound} samples)");

    // Then quiet, in real time, until the caller's speech is stored; then hang up.
    caller.run_until(|caller| caller.has_caption(Speaker::Caller, "")).await;
    caller.hang_up(&node.runtime).await;
    wait_for_no_calls(&node.runtime).await;
    let messages = node.messages(conversation_id).await;
    let heard: Vec<_> = messages.iter().filter(|message| message.role == MessageRole::User).collect();
    assert!(!heard.is_empty(), "some of the monologue is stored");
    for message in &heard {
        let utterance = message.utterance.as_ref().expect("a spoken message has its times");
        assert!(
            utterance.end_ms - utterance.start_ms <= 28_000 + 1_000,
            "a part longer than whisper takes at once: {utterance:?}"
        );
        assert!(overlap(message.text.as_deref().unwrap_or(""), MONOLOGUE) > 0.5, "{:?}", message.text);
    }
    let next = calls::start(&node.runtime, &agent.public_id, request(rate)).await.unwrap();
    assert!(calls::hang_up(&node.runtime, next.id));
    let mut next = Caller::new(next, rate);
    next.run_until(|_| false).await;
    assert_eq!(next.ended, Some(EndReason::HungUp));
}

/// A spoken turn's prompt keeps within the agent's `voice.prompt_tokens`, while the same
/// question in a chat gets the model's whole context: a caller hears nothing until the model
/// has read the prompt. The answers come from the local model over a knowledge base whose
/// passages all match the question.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoken_turns_get_a_tighter_prompt_than_chat() {
    use parley_runtime::agents::ModelChoice;
    use parley_runtime::chat::engine::{self, Submitted, TurnEvent, UserMessage};
    use parley_runtime::chat::session::{self, SessionRequest};
    use parley_runtime::documents::{self, Content, Upload};
    let Some(models) = models() else { return };
    let node = node(models.embedder.clone(), |_| {}).await;
    let chat_model = installed_dir(&models_dir(), &parley_models::CHAT_MODEL_PACKAGE).unwrap();
    let options = parley_models::LocalModelOptions { inference_threads: 1, queue_capacity: 4, ..Default::default() };
    node.runtime.models().set_local(Arc::new(parley_models::LocalLanguageModel::load(&chat_model, options).unwrap()));
    let input = AgentInput {
        name: Some("Library".to_owned()),
        language: Some("en".to_owned()),
        model: Some(ModelChoice { max_tokens: 4, temperature: 0.0, ..ModelChoice::default() }),
        voice: Some(VoiceSettings { enabled: true, prompt_tokens: 300, ..VoiceSettings::default() }),
        ..AgentInput::default()
    };
    let agent = agents::create(&node.runtime, &node.principal, input).await.unwrap();
    let rooms = ["reading room", "children's corner", "study rooms", "music library", "map room", "archive"];
    let text: String = rooms
        .iter()
        .map(|room| {
            format!(
                "# Opening hours of the {room}\n\nThe library's {room} opens at nine on Sunday morning and closes at \
                 five in the afternoon. On public holidays the {room} keeps its Sunday opening hours, and during \
                 the school holidays it opens an hour earlier on weekdays. The staff of the {room} answer questions \
                 about opening hours at the front desk.\n\n"
            )
        })
        .collect();
    let upload = Upload {
        title: Some("Opening hours".to_owned()),
        source_name: None,
        language: None,
        content: Content::Text(text),
    };
    documents::ingest(&node.runtime, &node.principal, agent.id, upload).await.unwrap();

    let mut prompt_tokens = Vec::new();
    for channel in [Channel::Web, Channel::Voice] {
        let request = SessionRequest { visitor_id: None, resume_token: None, identity: None };
        let session = session::start(&node.runtime, &agent, channel, request).await.unwrap();
        let message = UserMessage { client_message_id: format!("ask-{}", channel.as_str()), text: QUESTION.to_owned() };
        let Submitted::Live(mut subscription) = engine::submit(&node.runtime, &session, message).await.unwrap() else {
            panic!("a new question is answered live");
        };
        let reply = loop {
            match tokio::time::timeout(PHASE, subscription.events.recv()).await {
                Ok(Ok(TurnEvent::Complete(reply))) => break reply,
                Ok(Ok(_)) => {}
                other => panic!("the {channel:?} turn did not complete: {other:?}"),
            }
        };
        assert!(matches!(reply.finish_reason.as_deref(), Some("stop" | "length")), "{reply:?}");
        prompt_tokens.push(reply.prompt_tokens);
    }
    let (chat, spoken) = (prompt_tokens[0], prompt_tokens[1]);
    // The budget counts the chat template's tokens around each message approximately.
    let slack = 2 * parley_runtime::chat::prompt::MESSAGE_OVERHEAD_TOKENS as u32;
    assert!(spoken <= 300 + slack, "the spoken prompt holds {spoken} tokens, over the agent's 300");
    assert!(chat > spoken + 100, "the chat prompt ({chat}) carries more passages than the spoken one ({spoken})");
}

/// The agent's call limit, voice switched off, origins, and a node without the models.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_refused_with_precise_errors() {
    let Some(models) = models() else { return };
    let node = node(models.embedder.clone(), |_| {}).await;
    let agent = node.agent(VoiceSettings { max_concurrent_calls: 1, ..VoiceSettings::default() }).await;
    let error = calls::start(&node.runtime, &agent.public_id, request(48_000)).await.unwrap_err();
    assert_eq!(error.code(), "voice_unavailable", "{error}");
    assert!(!node.runtime.calls().available());
    node.runtime.calls().set_engines(models.engines.clone());
    assert!(node.runtime.calls().available());

    let first = calls::start(&node.runtime, &agent.public_id, request(48_000)).await.unwrap();
    let error = calls::start(&node.runtime, &agent.public_id, request(48_000)).await.unwrap_err();
    assert_eq!(error.code(), "call_limit", "{error}");
    assert_eq!(error.kind(), parley_runtime::ErrorKind::RateLimited);
    assert_eq!(node.runtime.calls().live_calls(), 1);
    drop(first);
    wait_for_no_calls(&node.runtime).await;
    let again = calls::start(&node.runtime, &agent.public_id, request(48_000)).await.unwrap();
    assert!(calls::hang_up(&node.runtime, again.id));
    drop(again);
    wait_for_no_calls(&node.runtime).await;

    let error = calls::start(&node.runtime, "no-such-agent", request(48_000)).await.unwrap_err();
    assert_eq!(error.code(), "not_found");
    let error = calls::start(&node.runtime, &agent.public_id, request(4_000)).await.unwrap_err();
    assert_eq!(error.code(), "invalid_input");
    let silent = node.agent(VoiceSettings { enabled: false, ..VoiceSettings::default() }).await;
    let off = agents::update(
        &node.runtime,
        &node.principal,
        silent.id,
        AgentInput {
            voice: Some(VoiceSettings { enabled: false, ..VoiceSettings::default() }),
            ..AgentInput::default()
        },
    )
    .await
    .unwrap();
    let error = calls::start(&node.runtime, &off.public_id, request(48_000)).await.unwrap_err();
    assert_eq!(error.code(), "voice_disabled");
    let guarded = agents::update(
        &node.runtime,
        &node.principal,
        agent.id,
        AgentInput { allowed_origins: Some(vec!["https://library.example".to_owned()]), ..AgentInput::default() },
    )
    .await
    .unwrap();
    let mut foreign = request(48_000);
    foreign.origin = Some("https://elsewhere.example".to_owned());
    let error = calls::start(&node.runtime, &guarded.public_id, foreign).await.unwrap_err();
    assert_eq!(error.kind(), parley_runtime::ErrorKind::PermissionDenied);
    let mut own = request(48_000);
    own.origin = Some("https://library.example".to_owned());
    let call = calls::start(&node.runtime, &guarded.public_id, own).await.unwrap();
    drop(call);
    wait_for_no_calls(&node.runtime).await;
}

// ---------------------------------------------------------------------------------------------
// Remote voices

const SPEECH_KEY: &str = "sk-speech-test-0123456789";
/// Every answer of the fake speech server: a 440 Hz tone this long, at 24 kHz.
const TONE_MS: usize = 800;
const TONE_AMPLITUDE: f64 = 0.4;

/// What the fake speech server answers.
#[derive(Clone, Copy)]
enum SpeechReply {
    /// 200 with the tone as a WAV file.
    Tone,
    /// 500 with an error object.
    Failure,
    /// The tone, after this many milliseconds.
    SlowTone(u64),
}

/// One request the fake speech server received: its path, headers and JSON body.
type SpeechRequest = (String, std::collections::HashMap<String, String>, serde_json::Value);

/// A fake OpenAI-compatible speech server on loopback (the remote provider's side of the
/// socket, which Parley does not own): records every request and answers each the same way.
struct SpeechServer {
    base_url: String,
    requests: Arc<std::sync::Mutex<Vec<SpeechRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SpeechServer {
    async fn start(reply: SpeechReply) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(answer_speech(socket, reply, Arc::clone(&recorded)));
            }
        });
        Self { base_url, requests, task }
    }

    fn requests(&self) -> Vec<SpeechRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// The texts asked for, in order.
    fn inputs(&self) -> Vec<String> {
        self.requests().iter().map(|(_, _, body)| body["input"].as_str().unwrap_or_default().to_owned()).collect()
    }

    fn settings(&self) -> VoiceSettings {
        VoiceSettings {
            provider: VoiceProvider::Openai,
            model: Some("tts-1".to_owned()),
            remote_voice: Some("nova".to_owned()),
            base_url: Some(self.base_url.clone()),
            ..VoiceSettings::default()
        }
    }
}

impl Drop for SpeechServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer_speech(
    socket: tokio::net::TcpStream,
    reply: SpeechReply,
    requests: Arc<std::sync::Mutex<Vec<SpeechRequest>>>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let mut reader = tokio::io::BufReader::new(socket);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
        return;
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_owned();
    let mut headers = std::collections::HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        match line.trim_end().split_once(':') {
            Some((name, value)) => headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned()),
            None => break,
        };
    }
    let length = headers.get("content-length").and_then(|length| length.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).await.is_err() {
        return;
    }
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    requests.lock().unwrap().push((path, headers, body));
    if let SpeechReply::SlowTone(delay_ms) = reply {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    let (status, content_type, body) = match reply {
        SpeechReply::Tone | SpeechReply::SlowTone(_) => ("200 OK", "audio/wav", tone_wav()),
        SpeechReply::Failure => {
            ("500 Internal Server Error", "application/json", br#"{"error":{"message":"speech is down"}}"#.to_vec())
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut socket = reader.into_inner();
    let _ = socket.write_all(head.as_bytes()).await;
    let _ = socket.write_all(&body).await;
    let _ = socket.shutdown().await;
}

/// The tone as a 16-bit mono WAV file at 24 kHz.
fn tone_wav() -> Vec<u8> {
    let rate = 24_000_u32;
    let samples = rate as usize * TONE_MS / 1000;
    let data: Vec<u8> = (0..samples)
        .map(|n| {
            let phase = 2.0 * std::f64::consts::PI * 440.0 * n as f64 / f64::from(rate);
            (TONE_AMPLITUDE * phase.sin() * 32_767.0) as i16
        })
        .flat_map(i16::to_le_bytes)
        .collect();
    let mut wav = b"RIFF".to_vec();
    wav.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    for field in [16_u32.to_le_bytes().to_vec(), 1_u16.to_le_bytes().to_vec(), 1_u16.to_le_bytes().to_vec()] {
        wav.extend_from_slice(&field);
    }
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(rate * 2).to_le_bytes());
    wav.extend_from_slice(&2_u16.to_le_bytes());
    wav.extend_from_slice(&16_u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(data.len() as u32).to_le_bytes());
    wav.extend_from_slice(&data);
    wav
}

/// The RMS of every agent audio frame with sound in it (above −40 dBFS), in order.
fn loud_frame_levels(caller: &Caller) -> Vec<f64> {
    caller
        .events
        .iter()
        .filter_map(|(_, event)| match event {
            CallEvent::Audio(frame) => Some(rms(frame)),
            _ => None,
        })
        .filter(|level| *level > 327.0)
        .collect()
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// How much the frames' levels vary (standard deviation over mean): a steady tone barely, speech a lot.
fn level_variation(levels: &[f64]) -> f64 {
    let mean = levels.iter().sum::<f64>() / levels.len().max(1) as f64;
    let variance = levels.iter().map(|level| (level - mean).powi(2)).sum::<f64>() / levels.len().max(1) as f64;
    variance.sqrt() / mean.max(f64::MIN_POSITIVE)
}

/// An agent with a remote voice speaks with the provider's audio: the disclosure and greeting
/// the caller hears are the server's tone, sentence by sentence, and every request carried the
/// tenant's key, the agent's model and voice, and the sentence; the answer is spoken the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_remote_voice_speaks_with_the_providers_audio() {
    let Some(models) = models() else { return };
    let server = SpeechServer::start(SpeechReply::Tone).await;
    let node = node(models.embedder.clone(), |_| {}).await;
    node.runtime.calls().set_engines(models.engines.clone());
    provider_keys::set(&node.runtime, &node.principal, "openai_compatible", SPEECH_KEY).await.unwrap();
    let agent = node.agent(server.settings()).await;
    let rate = 48_000;
    let question = speech(models, QUESTION, rate).await;
    let call = calls::start(&node.runtime, &agent.public_id, request(rate)).await.unwrap();
    let mut caller = Caller::new(call, rate);
    caller.run_until(|caller| caller.has_caption(Speaker::Agent, "Hello") && caller.quiet_for(10)).await;

    assert_eq!(server.inputs(), ["You are talking to an AI assistant.", "This call is transcribed.", GREETING]);
    for (path, headers, body) in server.requests() {
        assert_eq!(path, "/v1/audio/speech");
        assert_eq!(headers["authorization"], format!("Bearer {SPEECH_KEY}"));
        assert_eq!(
            (&body["model"], &body["voice"], &body["response_format"]),
            (&"tts-1".into(), &"nova".into(), &"wav".into())
        );
    }
    // Three sentences of the tone were played: as many frames, at the tone's level, steady.
    let levels = loud_frame_levels(&caller);
    let tone_frames = 3 * TONE_MS / 20;
    assert!(levels.len().abs_diff(tone_frames) <= 4, "{} loud frames, {tone_frames} expected", levels.len());
    let tone_rms = TONE_AMPLITUDE * 32_767.0 / std::f64::consts::SQRT_2;
    assert!((median(&levels) - tone_rms).abs() < tone_rms * 0.05, "level {} vs {tone_rms}", median(&levels));
    assert!(level_variation(&levels) < 0.1, "the tone is steady: {}", level_variation(&levels));

    // The answer is asked for sentence by sentence.
    caller.say(&question, 0);
    caller.run_until(|caller| caller.has_caption(Speaker::Agent, "I'm sorry")).await;
    let inputs = server.inputs();
    assert_eq!(inputs[3], "I'm sorry, I don't know that.", "{inputs:?}");
    caller.hang_up(&node.runtime).await;
}

/// A call whose voice is slow to speak is not idle while its sentences wait for synthesis: with
/// a one-second idle timeout and a voice taking 2.5 s a sentence, the disclosure and greeting
/// are all played before the silent caller's call times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_for_its_voice_is_not_idle() {
    let Some(models) = models() else { return };
    let server = SpeechServer::start(SpeechReply::SlowTone(2_500)).await;
    let node = node(models.embedder.clone(), |settings| settings.voice.idle_timeout_seconds = 1).await;
    node.runtime.calls().set_engines(models.engines.clone());
    provider_keys::set(&node.runtime, &node.principal, "openai_compatible", SPEECH_KEY).await.unwrap();
    let agent = node.agent(server.settings()).await;
    let rate = 48_000;
    let call = calls::start(&node.runtime, &agent.public_id, request(rate)).await.unwrap();
    let mut caller = Caller::new(call, rate);
    caller.run_until(|_| false).await;
    assert_eq!(caller.ended, Some(EndReason::Timeout), "{:?}", caller.summary());
    let spoken = caller.captions(Speaker::Agent, true);
    assert_eq!(spoken, ["You are talking to an AI assistant.", "This call is transcribed.", GREETING]);
    let levels = loud_frame_levels(&caller);
    assert!(levels.len().abs_diff(3 * TONE_MS / 20) <= 4, "{} loud frames: all three sentences played", levels.len());
}

/// A remote voice without the tenant's key, or whose provider fails, leaves the call to the
/// local voice: the caller hears speech (not silence, not the provider's audio).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_voice_that_cannot_speak_falls_back_to_the_local_voice() {
    let Some(models) = models() else { return };
    let node = node(models.embedder.clone(), |_| {}).await;
    node.runtime.calls().set_engines(models.engines.clone());
    let rate = 48_000;
    for key_stored in [false, true] {
        let server = SpeechServer::start(SpeechReply::Failure).await;
        if key_stored {
            provider_keys::set(&node.runtime, &node.principal, "openai_compatible", SPEECH_KEY).await.unwrap();
        }
        let agent = node.agent(server.settings()).await;
        let call = calls::start(&node.runtime, &agent.public_id, request(rate)).await.unwrap();
        let mut caller = Caller::new(call, rate);
        caller.run_until(|caller| caller.has_caption(Speaker::Agent, "Hello") && caller.quiet_for(10)).await;
        let levels = loud_frame_levels(&caller);
        // The local voice's disclosure and greeting: seconds of speech whose level varies.
        assert!(levels.len() > 100, "key stored {key_stored}: only {} loud frames", levels.len());
        assert!(level_variation(&levels) > 0.2, "key stored {key_stored}: {}", level_variation(&levels));
        let requests = server.requests();
        if key_stored {
            // The provider was tried (one retry), failed, and was not asked again.
            assert_eq!(requests.len(), 2, "{requests:?}");
            assert_eq!(requests[0].1["authorization"], format!("Bearer {SPEECH_KEY}"));
        } else {
            assert!(requests.is_empty(), "without a key the provider is never asked: {requests:?}");
        }
        caller.hang_up(&node.runtime).await;
        wait_for_no_calls(&node.runtime).await;
    }
}

/// A WAV file's 16-bit PCM, checked to be 16 kHz stereo: (left, right).
fn stereo_wav(file: &[u8]) -> (Vec<i16>, Vec<i16>) {
    assert_eq!(&file[..4], b"RIFF");
    assert_eq!(&file[8..16], b"WAVEfmt ");
    let field16 = |at: usize| u16::from_le_bytes([file[at], file[at + 1]]);
    let field32 = |at: usize| u32::from_le_bytes([file[at], file[at + 1], file[at + 2], file[at + 3]]);
    assert_eq!(field32(4) as usize, file.len() - 8, "the RIFF size");
    assert_eq!((field16(20), field16(22), field32(24), field16(34)), (1, 2, 16_000, 16), "PCM, stereo, 16 kHz, 16 bit");
    assert_eq!(&file[36..40], b"data");
    assert_eq!(field32(40) as usize, file.len() - 44, "the data size");
    let samples: Vec<i16> = file[44..].chunks_exact(2).map(|pair| i16::from_le_bytes([pair[0], pair[1]])).collect();
    (samples.iter().step_by(2).copied().collect(), samples.iter().skip(1).step_by(2).copied().collect())
}

async fn transcribe(models: &Models, samples: &[i16]) -> String {
    let audio: Vec<f32> = samples.iter().map(|sample| f32::from(*sample) / 32768.0).collect();
    let options = parley_models::stt::TranscribeOptions { language: Some("en".to_owned()), partial: None };
    models.engines.speech_to_text.transcribe(audio.into(), options).await.unwrap().text
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// With `retention.record_audio` on, the call is recorded: one 16 kHz stereo track, the
/// caller on the left where the caller spoke, the agent on the right as played, sealed in
/// segments of at most ten seconds; read back as a WAV file (audited), and nowhere in the
/// clear on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_call_is_sealed_and_reads_back_as_aligned_stereo() {
    let Some(models) = models() else { return };
    let node = node(models.embedder.clone(), |_| {}).await;
    node.runtime.calls().set_engines(models.engines.clone());
    let retention = AgentRetention { record_audio: true, ..AgentRetention::default() };
    let agent = node.agent_with(VoiceSettings::default(), Some(retention)).await;
    let rate = 48_000;
    let question = speech(models, QUESTION, rate).await;
    let call = calls::start(&node.runtime, &agent.public_id, request(rate)).await.unwrap();
    let conversation_id = call.conversation_id;
    let mut caller = Caller::new(call, rate);
    caller.run_until(|caller| caller.has_caption(Speaker::Agent, "Hello")).await;
    caller.run_until(|caller| caller.quiet_for(25)).await;
    let asked_ms = caller.tick * 20;
    caller.say(&question, 0);
    caller.run_until(|caller| caller.has_caption(Speaker::Agent, "I'm sorry")).await;
    let until = caller.tick + 50;
    caller.run_until(|caller| caller.tick >= until).await;
    let first_audio_tick = caller.events.iter().find(|(_, event)| matches!(event, CallEvent::Audio(_))).unwrap().0;
    caller.hang_up(&node.runtime).await;
    wait_for_no_calls(&node.runtime).await;

    let wav = recordings::wav(&node.runtime, &node.principal, conversation_id).await.unwrap();
    let (left, right) = stereo_wav(&wav);
    assert_eq!(left.len(), right.len());
    let duration_ms = left.len() as u64 / 16;
    let called_ms = caller.tick * 20;
    assert!(
        duration_ms + 2_000 >= called_ms && duration_ms <= called_ms + 2_000,
        "the recording lasts as long as the call: {duration_ms} ms for {called_ms} ms"
    );

    // The caller's side: silence until the question, then the question, where it was asked
    // (on a busy machine either side may lag the other a little).
    let question_ms = question.len() as u64 * 1000 / u64::from(rate);
    let ms = |at: u64| (at * 16) as usize;
    let onset_ms = (asked_ms.saturating_sub(2_000) / 20..duration_ms / 20)
        .map(|window| window * 20)
        .find(|at| rms(&left[ms(*at)..ms(at + 20)]) > 300.0)
        .expect("the question is on the caller's channel");
    assert!(
        onset_ms + 1_000 >= asked_ms && onset_ms <= asked_ms + 1_500,
        "the question starts at {onset_ms} ms in the recording, asked at {asked_ms} ms"
    );
    assert!(rms(&left[..ms(onset_ms.saturating_sub(500))]) < 50.0, "the caller was silent before asking");
    let spoken = &left[ms(onset_ms.saturating_sub(300))..ms(onset_ms + question_ms + 500).min(left.len())];
    let heard = transcribe(models, spoken).await;
    assert!(overlap(QUESTION, &heard) >= 0.6, "the caller's channel says {heard:?}");

    // The agent's side: the disclosure from its first frame, as played.
    let first_ms = first_audio_tick * 20;
    assert!(rms(&right[..ms(first_ms.saturating_sub(500))]) < 50.0, "nothing played before the first frame");
    let disclosure = &right[ms(first_ms)..ms(first_ms + 6_000)];
    let said = transcribe(models, disclosure).await;
    assert!(overlap(DISCLOSURE, &said) >= 0.6, "the agent's channel says {said:?}");
    let asking = &right[ms(onset_ms)..ms(onset_ms + question_ms * 3 / 4)];
    assert!(rms(asking) < 50.0, "the agent was quiet while the caller asked: rms {}", rms(asking));

    // Stored in sealed segments of at most ten seconds, in order, under the node's key.
    let mut connection = node.runtime.database().pool().acquire().await.unwrap();
    let segments = parley_runtime::storage::recordings::segments(
        &mut connection,
        node.principal.tenant_id,
        conversation_id,
        None,
        100,
    )
    .await
    .unwrap();
    drop(connection);
    assert_eq!(segments.len() as u64, duration_ms.div_ceil(10_000), "{} segments", segments.len());
    for (index, segment) in segments.iter().enumerate() {
        assert_eq!(segment.segment as usize, index);
        assert_eq!(segment.start_ms, index as u64 * 10_000);
        assert!(segment.frames <= 160_000);
        assert_eq!(segment.key_id, node.runtime.secrets().key_id());
    }

    // The read is audited.
    let page = node.runtime.page_request(Some(100), None).unwrap();
    let audit = parley_runtime::audit::list(&node.runtime, &node.principal, page).await.unwrap();
    let read = audit.items.iter().find(|entry| entry.action == "conversation.recording.read").expect("audited");
    assert_eq!(read.target_id, conversation_id.to_string());

    // No stretch of the recorded audio is anywhere on disk in the clear.
    // The probe: 16 samples around the loudest sample of the question.
    let from = ms(onset_ms);
    let loudest = (from..ms(onset_ms + question_ms)).max_by_key(|index| left[*index].unsigned_abs()).unwrap();
    let start = loudest - 8;
    let stereo: Vec<u8> = left[start..start + 16]
        .iter()
        .zip(&right[start..start + 16])
        .flat_map(|(caller, agent)| [caller.to_le_bytes(), agent.to_le_bytes()].concat())
        .collect();
    let mono: Vec<u8> = left[start..start + 16].iter().flat_map(|sample| sample.to_le_bytes()).collect();
    let agent_mono: Vec<u8> =
        right[ms(first_ms + 1_000)..ms(first_ms + 1_000) + 16].iter().flat_map(|sample| sample.to_le_bytes()).collect();
    assert!(rms(&left[start..start + 16]) > 100.0, "the probe is speech");
    for file in files_under(node._dir.path()) {
        let bytes = std::fs::read(&file).unwrap();
        for needle in [&stereo, &mono, &agent_mono] {
            assert!(
                !bytes.windows(needle.len()).any(|window| window == needle.as_slice()),
                "recorded audio in the clear in {}",
                file.display()
            );
        }
    }
}
