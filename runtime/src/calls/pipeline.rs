//! One call's pipeline: a single task owns the call's state and reacts to the caller's audio,
//! the 20 ms playout clock, transcriptions, the answer's events and synthesised sentences.
//! Transcription, synthesis and the answer's event stream run in helper tasks held in a
//! `JoinSet`, so nothing outlives the call.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parley_config::VoiceSettings as CallSettings;
use parley_models::audio::StreamResampler;
use parley_models::stt::{TranscribeOptions, Transcript};
use parley_models::tts::TextToSpeech;
use parley_models::vad::{EndOfTurn, EndOfTurnOptions, TurnEvent as VadEvent, VadStream, FRAME_SAMPLES};
use parley_models::ModelError;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use uuid::Uuid;

use super::echo::EchoDetector;
use super::playout::{Frame, Playout, Segment};
use super::text::{is_backchannel, repeats_agent, speakable, spoken_text, SentenceSplitter};
use super::{CallAudioIn, CallEvent, EndReason, Slot, Speaker, VoiceEngines};
use crate::chat::conversations::{StoredMessage, Utterance, VoiceTimings};
use crate::chat::engine::{self, Submitted, TurnEvent, UserMessage};
use crate::chat::session::{self, Session};
use crate::error::Error;
use crate::recordings::Recorder;
use crate::{storage, Runtime};

/// The pipeline's own rate: what the VAD and speech-to-text take.
const RATE: u32 = 16_000;
/// Audio kept from before the detected start of speech (the VAD reports speech once it has
/// lasted a while), in samples.
const PRE_ROLL: usize = RATE as usize * 3 / 10;
/// Audio kept after the detected end of speech, in samples.
const TAIL: usize = RATE as usize / 5;
/// How far the caller's audio may lag the call's clock (network jitter) before the gap is taken
/// for silence.
const SILENT_GAP_MS: u64 = 200;
/// As [`SILENT_GAP_MS`], when the caller's last audio was speech.
const STALLED_GAP_MS: u64 = 1_000;
/// A pause this long (16 kHz samples, 300 ms) starts the early transcription of the utterance:
/// long enough that pauses between words rarely do, short enough to save most of the window.
const EARLY_PAUSE: usize = RATE as usize * 3 / 10;
/// The longest utterance transcribed at once; a longer monologue is transcribed in parts.
const MAX_UTTERANCE: usize = RATE as usize * 28;
/// Echo delays searched, in milliseconds.
const MAX_ECHO_DELAY_MS: u32 = 600;
/// How long the agent's words count as "just said" for the transcript echo check, in ms.
const RECENT_AGENT_MS: u64 = 15_000;
/// Speech frames this long after the caller's last one still keep the agent ducked, in ms.
const DUCK_HOLD_MS: u64 = 300;
/// How long a final transcription is retried while the shared queue is full.
const BUSY_RETRY: Duration = Duration::from_secs(10);
/// How long a call that ends waits for an interrupted answer to be stored.
const END_WAIT: Duration = Duration::from_secs(3);

/// Everything a call's task owns.
pub(super) struct CallContext {
    pub runtime: Runtime,
    pub call_id: Uuid,
    pub session: Session,
    pub engines: Arc<VoiceEngines>,
    pub voice: Arc<dyn TextToSpeech>,
    pub sample_rate: u32,
    pub audio_in: CallAudioIn,
    pub events: mpsc::Sender<CallEvent>,
    pub hung_up: watch::Receiver<bool>,
    pub slot: Slot,
}

/// Runs the call until it ends, then reports the end.
pub(super) async fn run(context: CallContext) {
    let started = Instant::now();
    let mut pipeline = match Pipeline::new(context, started) {
        Ok(pipeline) => pipeline,
        Err(failed) => {
            let (context, reason) = *failed;
            finish(context, started, EndReason::Error(reason)).await;
            return;
        }
    };
    let reason = pipeline.run().await;
    pipeline.wind_down().await;
    let Pipeline { context, tasks, recorder, .. } = pipeline;
    drop(tasks);
    if let Some(recorder) = recorder {
        recorder.finish().await;
    }
    finish(context, started, reason).await;
}

async fn finish(context: CallContext, started: Instant, reason: EndReason) {
    context.audio_in.close();
    if reason != EndReason::HungUp || !context.events.is_closed() {
        let _ = context.events.try_send(CallEvent::Ended(reason.clone()));
    }
    super::call_ended(&context.runtime, &context.session, context.call_id, started.elapsed(), &reason).await;
    drop(context.slot);
}

/// What a helper task reports to the call's task.
enum Report {
    Transcribed {
        kind: Transcription,
        result: Result<Transcript, ModelError>,
        took: Duration,
    },
    Answer {
        reply: u64,
        event: TurnEvent,
    },
    Synthesized {
        generation: u64,
        reply: Option<u64>,
        text: String,
        samples: Vec<f32>,
        took: Duration,
        interruptible: bool,
    },
}

#[derive(Debug, Clone, Copy)]
enum Transcription {
    /// The utterance so far, for a live caption.
    Partial { utterance: u64 },
    /// A whole utterance: the caller's turn.
    Final(FinalTurn),
    /// The utterance as it will be if the caller's pause becomes the end of the turn: its
    /// first `len` samples, the speech and the tail the final transcription would keep.
    Early { utterance: u64, len: usize },
}

/// A transcription started at the caller's pause, before the silence window ends the turn.
/// Its audio is exactly what the final transcription would get when the caller does not speak
/// again, so its transcript stands for the final one and the turn does not wait for whisper
/// after the window.
struct Early {
    utterance: u64,
    len: usize,
    /// Aborted when the caller speaks again (a queued transcription is then skipped).
    task: AbortHandle,
    /// The transcript, once back (before the turn ended).
    result: Option<Result<Transcript, ModelError>>,
    /// The turn ended before the transcript came back: the final's details and its audio (in
    /// case the early transcription fails and must be done again).
    waiting: Option<(FinalTurn, Arc<[f32]>)>,
}

/// What a final transcription needs besides its audio.
#[derive(Debug, Clone, Copy)]
struct FinalTurn {
    start_ms: u64,
    end_ms: u64,
    end_of_turn_ms: f64,
    detected_at: Instant,
}

/// A sentence for the synthesis task.
struct SpeakRequest {
    generation: u64,
    reply: Option<u64>,
    text: String,
    interruptible: bool,
}

/// The caller's utterance being heard.
struct Heard {
    number: u64,
    start_ms: u64,
    audio: Vec<f32>,
    /// Length of `audio` when the last partial transcription was asked for.
    partial_at: usize,
}

/// A question transcribed and waiting for the turn engine.
struct Question {
    text: String,
    utterance: Utterance,
    end_of_turn_ms: f64,
    transcription_ms: f64,
    detected_at: Instant,
}

/// An answer being spoken (or interrupted and waiting to be stored as heard).
struct Reply {
    number: u64,
    user_message_id: Uuid,
    splitter: SentenceSplitter,
    /// Sentences sent to synthesis and not yet queued for playing.
    synthesizing: usize,
    /// Sentences completely played, in order.
    spoken: Vec<String>,
    complete: Option<Arc<StoredMessage>>,
    interrupted: bool,
    /// The caller's words spoken at the moment of the interruption.
    partial: Option<String>,
    end_of_turn_ms: f64,
    transcription_ms: f64,
    detected_at: Instant,
    first_queued_at: Option<Instant>,
    synthesis_ms: Option<f64>,
    first_audio_at: Option<Instant>,
    start_ms: Option<u64>,
    end_ms: Option<u64>,
}

impl Reply {
    fn done_playing(&self) -> bool {
        self.complete.is_some() && self.synthesizing == 0
    }
}

struct Pipeline {
    context: CallContext,
    settings: CallSettings,
    started: Instant,
    frame_len: usize,
    language: Option<String>,
    tasks: JoinSet<()>,
    reports: mpsc::UnboundedReceiver<Report>,
    report: mpsc::UnboundedSender<Report>,
    speak: mpsc::UnboundedSender<SpeakRequest>,
    /// Sentences sent for synthesis and not yet back: the call is not idle while any wait
    /// (the node's voice may be busy with other calls).
    synthesizing: usize,
    /// Synthesis requests of older generations (before a barge-in) are skipped.
    generation: Arc<AtomicU64>,
    // Caller side.
    resampler: StreamResampler,
    vad: VadStream,
    turn: EndOfTurn,
    vad_pending: Vec<f32>,
    /// 16 kHz samples the VAD has seen (the caller's clock).
    heard_samples: u64,
    /// How far the caller's clock is behind the call's: the call's time before the caller's first
    /// audio, plus every stretch in which the caller sent nothing (a client that stays silent
    /// rather than send silence). Only grows, so audio fed faster than real time keeps its own
    /// timing. Stored utterance times are on the call's clock.
    caller_offset_ms: u64,
    recent: VecDeque<f32>,
    heard: Option<Heard>,
    utterances: u64,
    /// The partial transcription under way, if any.
    partial: Option<AbortHandle>,
    /// Frames since the caller's speech paused (as the end-of-turn detector counts them).
    pause_frames: Option<u64>,
    early: Option<Early>,
    /// Caller speech is being decided on (heard, not yet transcribed): the agent stays ducked.
    deciding: usize,
    last_speech_ms: Option<u64>,
    /// Consecutive caller speech frames (echo excluded).
    speech_run: u32,
    echo: EchoDetector,
    // Agent side.
    playout: Playout,
    reference: StreamResampler,
    frames_played: u64,
    recent_agent: VecDeque<(u64, String)>,
    /// Records the call when the agent opts in (`retention.record_audio`).
    recorder: Option<Recorder>,
    replies: Vec<Reply>,
    replies_started: u64,
    pending: Option<Question>,
    last_activity: Instant,
}

impl Pipeline {
    fn new(context: CallContext, started: Instant) -> Result<Self, Box<(CallContext, String)>> {
        let rate = context.sample_rate;
        let agent = &context.session.agent;
        let options = EndOfTurnOptions {
            silence_ms: agent.voice.end_of_turn_silence_ms.max(parley_models::vad::FRAME_MS),
            ..EndOfTurnOptions::default()
        };
        let parts = (|| -> Result<_, String> {
            let resampler = StreamResampler::new(rate, RATE).map_err(|error| error.to_string())?;
            let reference = StreamResampler::new(rate, RATE).map_err(|error| error.to_string())?;
            let turn = EndOfTurn::new(options)?;
            Ok((resampler, reference, turn))
        })();
        let (resampler, reference, turn) = match parts {
            Ok(parts) => parts,
            Err(reason) => return Err(Box::new((context, reason))),
        };
        let language = Some(parley_models::stt::primary_language(&agent.language)).filter(|code| !code.is_empty());
        let (report, reports) = mpsc::unbounded_channel();
        let (speak, requests) = mpsc::unbounded_channel();
        let generation = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        tasks.spawn(synthesize(context.voice.clone(), rate, requests, report.clone(), generation.clone()));
        let settings = context.runtime.settings().voice.clone();
        let vad = context.engines.vad.stream();
        let recorder = agent.retention.record_audio.then(|| {
            let conversation = &context.session.conversation;
            let max_lead_ms = context.runtime.settings().voice.input_buffer_ms;
            Recorder::new(
                context.runtime.clone(),
                context.call_id,
                conversation.tenant_id,
                conversation.id,
                max_lead_ms,
            )
        });
        Ok(Self {
            recorder,
            settings,
            started,
            frame_len: (rate / 50) as usize,
            language,
            tasks,
            reports,
            report,
            speak,
            synthesizing: 0,
            generation,
            resampler,
            vad,
            turn,
            vad_pending: Vec::with_capacity(FRAME_SAMPLES),
            heard_samples: 0,
            caller_offset_ms: 0,
            recent: VecDeque::with_capacity(PRE_ROLL + FRAME_SAMPLES),
            heard: None,
            utterances: 0,
            partial: None,
            pause_frames: None,
            early: None,
            deciding: 0,
            last_speech_ms: None,
            speech_run: 0,
            echo: EchoDetector::new(MAX_ECHO_DELAY_MS),
            playout: Playout::new((rate / 50) as usize),
            reference,
            frames_played: 0,
            recent_agent: VecDeque::new(),
            replies: Vec::new(),
            replies_started: 0,
            pending: None,
            last_activity: started,
            context,
        })
    }

    async fn run(&mut self) -> EndReason {
        let agent = self.context.session.agent.clone();
        for sentence in sentences(&agent.voice.disclosure) {
            self.say(None, sentence, false);
        }
        for sentence in sentences(&agent.greeting) {
            self.say(None, sentence, true);
        }
        let deadline =
            tokio::time::Instant::from_std(self.started + Duration::from_secs(self.settings.max_call_seconds));
        let idle = Duration::from_secs(self.settings.idle_timeout_seconds);
        let mut clock = tokio::time::interval(Duration::from_millis(20));
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut hung_up = self.context.hung_up.clone();
        let events = self.context.events.clone();
        let audio_in = self.context.audio_in.clone();
        loop {
            let step = tokio::select! {
                biased;
                () = async { drop(hung_up.wait_for(|hung_up| *hung_up).await) } => return EndReason::HungUp,
                () = events.closed() => return EndReason::HungUp,
                () = tokio::time::sleep_until(deadline) => return EndReason::Timeout,
                _ = clock.tick() => self.tick(),
                Some(report) = self.reports.recv() => self.on_report(report).await,
                () = audio_in.ready() => self.hear(),
            };
            self.store_replies().await;
            if let Err(reason) = step {
                tracing::warn!(call_id = %self.context.call_id, reason = %reason, "call failed");
                return EndReason::Error("the call's audio could not be processed".to_owned());
            }
            if self.last_activity.elapsed() >= idle && !self.busy() {
                return EndReason::Timeout;
            }
        }
    }

    /// True while the agent is answering or speaking, or the caller is being heard.
    fn busy(&self) -> bool {
        !self.playout.is_empty()
            || self.synthesizing > 0
            || self.replies.iter().any(|reply| reply.complete.is_none())
            || self.heard.is_some()
            || self.deciding > 0
            || self.pending.is_some()
    }

    fn now_ms(&self) -> u64 {
        self.frames_played * 20
    }

    /// One tick of the 20 ms clock: the next frame of the agent's audio, if any.
    fn tick(&mut self) -> Result<(), String> {
        self.hear()?;
        self.fill_silence()?;
        let ducked = self.ducked() && !self.playout.is_empty();
        let gain = if ducked { self.settings.duck_gain } else { 1.0 };
        if ducked {
            self.count(|stats| &stats.ducked_frames);
        }
        let frame = self.playout.next_frame(gain);
        let played: Vec<f32> = match &frame {
            Some(frame) => frame.samples.iter().map(|sample| f32::from(*sample) / 32768.0).collect(),
            None => vec![0.0; self.frame_len],
        };
        let reference = self.reference.push(&played).map_err(|error| error.to_string())?;
        if let Some(recorder) = &mut self.recorder {
            recorder.agent(&reference);
        }
        self.echo.played(&reference);
        self.frames_played += 1;
        if let Some(frame) = frame {
            self.last_activity = Instant::now();
            self.played(frame);
        }
        Ok(())
    }

    fn ducked(&self) -> bool {
        self.deciding > 0
            || self.heard.is_some()
            || self.last_speech_ms.is_some_and(|last| self.caller_ms().saturating_sub(last) < DUCK_HOLD_MS)
    }

    fn played(&mut self, frame: Frame) {
        let Frame { samples, started, finished } = frame;
        for segment in started {
            self.send(CallEvent::Caption { speaker: Speaker::Agent, text: segment.text.clone(), is_final: true });
            let now_ms = self.now_ms();
            self.recent_agent.push_back((now_ms, segment.text.clone()));
            if let Some(reply) = segment.reply.and_then(|number| self.reply_mut(number)) {
                if reply.first_audio_at.is_none() {
                    reply.first_audio_at = Some(Instant::now());
                    reply.start_ms = Some(now_ms);
                }
            }
        }
        // The transport skips a frame it cannot take now rather than fall behind real time.
        if self.context.events.try_send(CallEvent::Audio(samples)).is_err() {
            tracing::debug!(call_id = %self.context.call_id, "the transport is behind: an audio frame was skipped");
        }
        let end_ms = self.now_ms();
        while self.recent_agent.front().is_some_and(|(at, _)| end_ms.saturating_sub(*at) > RECENT_AGENT_MS) {
            self.recent_agent.pop_front();
        }
        for segment in finished {
            let Some(number) = segment.reply else { continue };
            if let Some(reply) = self.reply_mut(number) {
                reply.spoken.push(segment.text);
                reply.end_ms = Some(end_ms);
            }
        }
    }

    /// Takes the caller's queued audio through the resampler, the echo detector and the VAD.
    fn hear(&mut self) -> Result<(), String> {
        let samples = self.context.audio_in.take();
        if samples.is_empty() {
            return Ok(());
        }
        let samples: Vec<f32> = samples.iter().map(|sample| f32::from(*sample) / 32768.0).collect();
        let audio = self.resampler.push(&samples).map_err(|error| error.to_string())?;
        // The last of these samples arrived now: the caller's clock is at least the call's.
        let queued = self.heard_samples + (self.vad_pending.len() + audio.len()) as u64;
        let behind = self.now_ms().saturating_sub(queued * 1000 / u64::from(RATE));
        self.caller_offset_ms = self.caller_offset_ms.max(behind);
        self.feed(&audio)
    }

    /// A caller being heard who sends nothing (WebRTC clients may stop sending while silent)
    /// is heard as silent: once the caller's audio lags the call's clock by more than
    /// [`SILENT_GAP_MS`] in a pause, or [`STALLED_GAP_MS`] in the middle of speech (audio late
    /// by less is waited for rather than cut with silence), silence fills the gap, so the end of
    /// their turn is detected.
    fn fill_silence(&mut self) -> Result<(), String> {
        if self.heard.is_none() {
            return Ok(());
        }
        let allowed = if self.pause_frames.is_some() { SILENT_GAP_MS } else { STALLED_GAP_MS };
        let queued = self.heard_samples + self.vad_pending.len() as u64;
        let caller_ms = self.call_ms(queued * 1000 / u64::from(RATE));
        let behind = self.now_ms().saturating_sub(caller_ms);
        if behind <= allowed {
            return Ok(());
        }
        let missing = usize::try_from((behind - SILENT_GAP_MS) * u64::from(RATE) / 1000).unwrap_or(0);
        self.feed(&vec![0.0; missing])
    }

    /// 16 kHz caller audio into the recording and, 32 ms at a time, the VAD.
    fn feed(&mut self, audio: &[f32]) -> Result<(), String> {
        if let Some(recorder) = &mut self.recorder {
            recorder.caller(audio);
        }
        self.vad_pending.extend_from_slice(audio);
        let frames = self.vad_pending.len() / FRAME_SAMPLES;
        let pending = std::mem::take(&mut self.vad_pending);
        for frame in pending.chunks_exact(FRAME_SAMPLES).take(frames) {
            self.hear_frame(frame)?;
        }
        self.vad_pending = pending[frames * FRAME_SAMPLES..].to_vec();
        Ok(())
    }

    fn caller_ms(&self) -> u64 {
        self.heard_samples * 1000 / u64::from(RATE)
    }

    /// A time on the caller's clock as a time since the call started.
    fn call_ms(&self, caller_ms: u64) -> u64 {
        caller_ms + self.caller_offset_ms
    }

    fn hear_frame(&mut self, frame: &[f32]) -> Result<(), String> {
        self.echo.heard(frame);
        let probability = self.vad.frame_probability(frame).map_err(|error| error.to_string())?;
        let options = self.turn.options();
        // The agent's own audio coming back is not the caller speaking.
        let echo = probability >= options.end_threshold && self.echo.is_echo();
        if echo {
            self.count(|stats| &stats.echo_frames);
        }
        let probability = if echo { 0.0 } else { probability };
        self.heard_samples += FRAME_SAMPLES as u64;
        self.recent.extend(frame.iter().copied());
        let excess = self.recent.len().saturating_sub(PRE_ROLL + FRAME_SAMPLES);
        self.recent.drain(..excess);
        if let Some(heard) = &mut self.heard {
            heard.audio.extend_from_slice(frame);
        }
        // The pause as the end-of-turn detector counts it: from the first silent frame until speech.
        self.pause_frames = if probability >= options.start_threshold {
            None
        } else if probability < options.end_threshold || self.pause_frames.is_some() {
            Some(self.pause_frames.map_or(1, |frames| frames + 1))
        } else {
            None
        };
        // The caller speaks again: an early transcription of the pause is of no use.
        if self.pause_frames.is_none() {
            if let Some(early) = self.early.take_if(|early| early.result.is_none() && early.waiting.is_none()) {
                early.task.abort();
            }
        }
        // Two speech frames in a row (64 ms) duck the agent: a single stray frame does not.
        self.speech_run = if probability >= options.start_threshold { self.speech_run + 1 } else { 0 };
        if self.speech_run >= 2 {
            self.last_speech_ms = Some(self.caller_ms());
            self.last_activity = Instant::now();
        }
        match self.turn.push(probability) {
            Some(VadEvent::SpeechStarted { at_ms }) => {
                let keep = usize::try_from((self.caller_ms().saturating_sub(at_ms)) * u64::from(RATE) / 1000)
                    .unwrap_or(usize::MAX)
                    .saturating_add(PRE_ROLL / 3)
                    .min(self.recent.len());
                let audio: Vec<f32> = self.recent.iter().skip(self.recent.len() - keep).copied().collect();
                self.utterances += 1;
                let start_ms = self.call_ms(at_ms.saturating_sub(100));
                self.heard = Some(Heard { number: self.utterances, start_ms, audio, partial_at: 0 });
            }
            Some(VadEvent::SpeechEnded { at_ms, .. }) => {
                let end_of_turn_ms = self.caller_ms().saturating_sub(at_ms) as f64;
                if let Some(mut heard) = self.heard.take() {
                    // Keep a short tail after the end of speech, drop the rest of the silence.
                    let silence = usize::try_from(self.caller_ms().saturating_sub(at_ms) * u64::from(RATE) / 1000)
                        .unwrap_or(usize::MAX);
                    let keep = heard.audio.len().saturating_sub(silence.saturating_sub(TAIL));
                    heard.audio.truncate(keep.max(1));
                    let turn = FinalTurn {
                        start_ms: heard.start_ms,
                        end_ms: self.call_ms(at_ms),
                        end_of_turn_ms,
                        detected_at: Instant::now(),
                    };
                    self.end_turn(heard, turn);
                }
            }
            None => {
                self.maybe_early();
                self.maybe_partial();
            }
        }
        Ok(())
    }

    fn maybe_partial(&mut self) {
        let interval = self.settings.partial_interval_ms;
        let end_ms = self.call_ms(self.caller_ms());
        let Some(heard) = &mut self.heard else { return };
        if heard.audio.len() >= MAX_UTTERANCE {
            // A monologue: transcribe what was said so far as a turn and go on listening.
            let audio = std::mem::take(&mut heard.audio);
            let next = Heard { number: heard.number, start_ms: end_ms, audio: Vec::new(), partial_at: 0 };
            let done = Heard { number: heard.number, start_ms: heard.start_ms, audio, partial_at: 0 };
            self.utterances += 1;
            self.heard = Some(Heard { number: self.utterances, ..next });
            self.transcribe_final(done, end_ms, 0.0);
            return;
        }
        let step = usize::try_from(interval * u64::from(RATE) / 1000).unwrap_or(usize::MAX);
        // Nothing new to caption while the caller pauses; the pause's early transcription needs
        // the shared model more.
        let early_running = self.early.as_ref().is_some_and(|early| early.result.is_none());
        let pausing = self.pause_frames.is_some();
        if interval == 0
            || self.partial.is_some()
            || early_running
            || pausing
            || heard.audio.len() < heard.partial_at + step
        {
            return;
        }
        heard.partial_at = heard.audio.len();
        let audio: Arc<[f32]> = heard.audio.as_slice().into();
        let number = heard.number;
        self.partial = Some(self.transcribe(audio, Transcription::Partial { utterance: number }, false));
    }

    fn transcribe_final(&mut self, heard: Heard, end_ms: u64, end_of_turn_ms: f64) {
        let turn = FinalTurn { start_ms: heard.start_ms, end_ms, end_of_turn_ms, detected_at: Instant::now() };
        self.transcribe_turn(heard.audio.into(), turn);
    }

    fn transcribe_turn(&mut self, audio: Arc<[f32]>, turn: FinalTurn) {
        self.deciding += 1;
        self.transcribe(audio, Transcription::Final(turn), true);
    }

    /// Once the caller has paused for [`EARLY_PAUSE`], transcribes the utterance as the turn
    /// would end now (when the shared model has room), so that a pause
    /// which becomes the end of the turn finds its transcript ready or under way.
    fn maybe_early(&mut self) {
        let Some(pause) = self.pause_frames else { return };
        let Some(heard) = &self.heard else { return };
        let silence = usize::try_from(pause).unwrap_or(usize::MAX).saturating_mul(FRAME_SAMPLES);
        if silence < EARLY_PAUSE.max(TAIL) {
            return;
        }
        // The same all through one pause: audio and silence grow together.
        let len = heard.audio.len().saturating_sub(silence - TAIL).max(1);
        if self.early.as_ref().is_some_and(|early| early.utterance == heard.number && early.len == len) {
            return;
        }
        let audio: Arc<[f32]> = heard.audio[..len].into();
        let utterance = heard.number;
        // A partial caption still waiting for the model would only delay this one.
        if let Some(partial) = self.partial.take() {
            partial.abort();
        }
        let task = self.transcribe(audio, Transcription::Early { utterance, len }, false);
        self.early = Some(Early { utterance, len, task, result: None, waiting: None });
    }

    /// The caller's turn has ended: its transcript is the early one when the caller did not
    /// speak again since it was started, else it is transcribed now.
    fn end_turn(&mut self, heard: Heard, turn: FinalTurn) {
        let early = self.early.take_if(|early| early.utterance == heard.number && early.len == heard.audio.len());
        let Some(mut early) = early else {
            self.transcribe_turn(heard.audio.into(), turn);
            return;
        };
        self.count(|stats| &stats.early_transcripts);
        match early.result.take() {
            Some(Ok(transcript)) => {
                drop(heard);
                self.deciding += 1;
                let kind = Transcription::Final(turn);
                let _ = self.report.send(Report::Transcribed { kind, result: Ok(transcript), took: Duration::ZERO });
            }
            Some(Err(_)) => self.transcribe_turn(heard.audio.into(), turn),
            None => {
                // Still being transcribed: wait for it (the agent stays ducked meanwhile).
                self.deciding += 1;
                early.waiting = Some((turn, heard.audio.into()));
                self.early = Some(early);
            }
        }
    }

    /// Transcribes on the shared model in a helper task; a final transcription waits for room
    /// in the shared queue, a partial one is skipped when there is none.
    fn transcribe(&mut self, audio: Arc<[f32]>, kind: Transcription, retry: bool) -> AbortHandle {
        let speech_to_text = self.context.engines.speech_to_text.clone();
        let report = self.report.clone();
        let language = self.language.clone();
        self.tasks.spawn(async move {
            let started = Instant::now();
            let result = loop {
                let options = TranscribeOptions { language: language.clone(), partial: None };
                match speech_to_text.transcribe(audio.clone(), options).await {
                    Err(ModelError::Busy { .. }) if retry && started.elapsed() < BUSY_RETRY => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    result => break result,
                }
            };
            // The audio is dropped here, once transcribed.
            drop(audio);
            let _ = report.send(Report::Transcribed { kind, result, took: started.elapsed() });
        })
    }

    async fn on_report(&mut self, report: Report) -> Result<(), String> {
        match report {
            Report::Transcribed { kind: Transcription::Partial { utterance }, result, .. } => {
                self.partial = None;
                let current = self.heard.as_ref().is_some_and(|heard| heard.number == utterance);
                if let (true, Ok(transcript)) = (current, result) {
                    let text = spoken_text(&transcript.text);
                    if !text.is_empty() && !self.is_agent_echo(&text) {
                        self.send(CallEvent::Caption { speaker: Speaker::Caller, text, is_final: false });
                    }
                }
            }
            Report::Transcribed { kind: Transcription::Early { utterance, len }, result, .. } => {
                let Some(mut early) = self.early.take_if(|early| early.utterance == utterance && early.len == len)
                else {
                    // The caller spoke again: this transcript is not the turn's.
                    return Ok(());
                };
                match early.waiting.take() {
                    Some((turn, audio)) => match result {
                        Ok(transcript) => {
                            drop(audio);
                            let waited = turn.detected_at.elapsed();
                            self.on_final(turn, Ok(transcript), waited).await;
                        }
                        Err(_) => {
                            // Not transcribed early (the shared model had no room): now, then.
                            self.deciding = self.deciding.saturating_sub(1);
                            self.transcribe_turn(audio, turn);
                        }
                    },
                    None => {
                        early.result = Some(result);
                        self.early = Some(early);
                    }
                }
            }
            Report::Transcribed { kind: Transcription::Final(turn), result, took } => {
                self.on_final(turn, result, took).await;
            }
            Report::Answer { reply, event } => self.on_answer(reply, event).await,
            Report::Synthesized { generation, reply, text, samples, took, interruptible } => {
                self.synthesizing = self.synthesizing.saturating_sub(1);
                if let Some(number) = reply {
                    if let Some(reply) = self.reply_mut(number) {
                        reply.synthesizing = reply.synthesizing.saturating_sub(1);
                        if reply.synthesis_ms.is_none() {
                            reply.synthesis_ms = Some(took.as_secs_f64() * 1e3);
                        }
                    }
                }
                if generation == self.generation.load(Ordering::SeqCst) {
                    self.playout.push(Segment { reply, text, samples, interruptible });
                }
            }
        }
        Ok(())
    }

    /// A turn's transcript is back; `waited` is how long the turn waited for it after its end.
    async fn on_final(&mut self, turn: FinalTurn, result: Result<Transcript, ModelError>, waited: Duration) {
        self.deciding = self.deciding.saturating_sub(1);
        match result {
            Ok(transcript) => {
                let FinalTurn { start_ms, end_ms, end_of_turn_ms, detected_at } = turn;
                let question = Question {
                    text: spoken_text(&transcript.text),
                    utterance: Utterance { start_ms, end_ms, language: Some(transcript.language) },
                    end_of_turn_ms,
                    transcription_ms: waited.as_secs_f64() * 1e3,
                    detected_at,
                };
                self.decide(question).await;
            }
            Err(error) => {
                tracing::warn!(call_id = %self.context.call_id, error = %error, "a caller utterance could not be transcribed");
            }
        }
    }

    /// What a transcribed utterance is: nothing, the agent's own words, a backchannel, or a
    /// turn (interrupting the agent if it is speaking).
    async fn decide(&mut self, question: Question) {
        if question.text.is_empty() {
            return;
        }
        if self.is_agent_echo(&question.text) {
            tracing::debug!(call_id = %self.context.call_id, "a transcript repeating the agent was taken for echo");
            self.count(|stats| &stats.echo_transcripts);
            return;
        }
        let agent_active = self.playout.has_interruptible()
            || self.replies.iter().any(|reply| !reply.interrupted && !reply.done_playing());
        self.send(CallEvent::Caption { speaker: Speaker::Caller, text: question.text.clone(), is_final: true });
        if agent_active && is_backchannel(&question.text, &self.settings.backchannels) {
            self.count(|stats| &stats.backchannels);
            return;
        }
        if agent_active {
            self.barge_in();
        }
        self.pending = Some(question);
        self.submit_pending().await;
    }

    fn is_agent_echo(&self, text: &str) -> bool {
        let said: Vec<&str> = self.recent_agent.iter().map(|(_, text)| text.as_str()).collect();
        let playing = self.playout.current().map(|(segment, _)| segment.text.as_str());
        let said = said.into_iter().chain(playing).collect::<Vec<_>>().join(" ");
        repeats_agent(text, &said)
    }

    /// The caller interrupts: drop the agent's queued audio, stop the answer, and keep only
    /// what was played as said.
    fn barge_in(&mut self) {
        let playing = self.playout.current().map(|(segment, played)| (segment.reply, segment.text.clone(), played));
        if self.playout.playing_uninterruptible() && !self.playout.has_interruptible() {
            return;
        }
        self.playout.clear_interruptible();
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.send(CallEvent::Clear);
        self.count(|stats| &stats.barge_ins);
        let end_ms = self.now_ms();
        let mut cancel = false;
        for reply in self.replies.iter_mut().filter(|reply| !reply.interrupted) {
            reply.interrupted = true;
            reply.synthesizing = 0;
            if let Some((Some(number), text, played)) = &playing {
                if *number == reply.number {
                    reply.partial = Some(played_words(text, *played));
                    reply.end_ms = Some(end_ms);
                }
            }
            cancel |= reply.complete.is_none();
        }
        if cancel {
            engine::cancel(&self.context.runtime, &self.context.session);
        }
    }

    async fn submit_pending(&mut self) {
        if self.replies.iter().any(|reply| reply.complete.is_none()) {
            // The previous answer is still being written (or stopped): this one follows it.
            return;
        }
        let Some(question) = self.pending.take() else { return };
        self.replies_started += 1;
        let number = self.replies_started;
        let message = UserMessage {
            client_message_id: format!("call-{}-{number}", self.context.call_id.simple()),
            text: question.text.clone(),
        };
        match engine::submit(&self.context.runtime, &self.context.session, message).await {
            Ok(Submitted::Live(subscription)) => {
                let user_message_id = subscription.user_message_id;
                let report = self.report.clone();
                let mut events = subscription.events;
                self.tasks.spawn(async move {
                    loop {
                        match events.recv().await {
                            Ok(event) => {
                                let last = matches!(event, TurnEvent::Complete(_));
                                if report.send(Report::Answer { reply: number, event }).is_err() || last {
                                    break;
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(broadcast::error::RecvError::Closed) => break,
                        }
                    }
                });
                self.store_utterance(user_message_id, &question.utterance).await;
                self.replies.push(Reply {
                    number,
                    user_message_id,
                    splitter: SentenceSplitter::answer(),
                    synthesizing: 0,
                    spoken: Vec::new(),
                    complete: None,
                    interrupted: false,
                    partial: None,
                    end_of_turn_ms: question.end_of_turn_ms,
                    transcription_ms: question.transcription_ms,
                    detected_at: question.detected_at,
                    first_queued_at: None,
                    synthesis_ms: None,
                    first_audio_at: None,
                    start_ms: None,
                    end_ms: None,
                });
            }
            Ok(Submitted::Answered { .. }) => {}
            Err(Error::Busy) => self.pending = Some(question),
            Err(error) => {
                tracing::warn!(call_id = %self.context.call_id, error = %error, code = error.code(), "a caller's question was refused");
                let sorry = match error {
                    Error::RateLimited { .. } | Error::BudgetExceeded { .. } => {
                        "I'm sorry, I can't answer more questions right now."
                    }
                    _ => "I'm sorry, I can't answer that right now.",
                };
                self.say(None, sorry.to_owned(), true);
            }
        }
    }

    async fn on_answer(&mut self, number: u64, event: TurnEvent) {
        let Some(index) = self.replies.iter().position(|reply| reply.number == number) else { return };
        match event {
            TurnEvent::Status(_) => {}
            TurnEvent::Delta(piece) => {
                if self.replies[index].interrupted {
                    return;
                }
                let sentences = self.replies[index].splitter.push(&piece);
                for sentence in sentences {
                    self.say(Some(number), sentence, true);
                }
            }
            TurnEvent::Failed(failure) => {
                if !self.replies[index].interrupted {
                    self.say(None, failure.message, true);
                }
            }
            TurnEvent::Complete(message) => {
                if !self.replies[index].interrupted {
                    if let Some(rest) = self.replies[index].splitter.finish() {
                        self.say(Some(number), rest, true);
                    }
                }
                self.replies[index].complete = Some(message);
                self.submit_pending().await;
            }
        }
    }

    /// Queues a sentence for synthesis (then playing).
    fn say(&mut self, reply: Option<u64>, sentence: String, interruptible: bool) {
        let text = speakable(&sentence);
        if text.is_empty() {
            return;
        }
        if let Some(reply) = reply.and_then(|number| self.reply_mut(number)) {
            reply.synthesizing += 1;
            reply.first_queued_at.get_or_insert_with(Instant::now);
        }
        let generation = self.generation.load(Ordering::SeqCst);
        if self.speak.send(SpeakRequest { generation, reply, text, interruptible }).is_ok() {
            self.synthesizing += 1;
        }
    }

    fn reply_mut(&mut self, number: u64) -> Option<&mut Reply> {
        self.replies.iter_mut().find(|reply| reply.number == number)
    }

    /// Stores every answer that is complete and either fully played or interrupted, as it was
    /// heard, and reports its timings.
    async fn store_replies(&mut self) {
        let mut index = 0;
        while index < self.replies.len() {
            let reply = &self.replies[index];
            let playing = self.playout.has_reply(reply.number);
            let finished = reply.complete.is_some() && (reply.interrupted || (reply.done_playing() && !playing));
            if finished {
                let reply = self.replies.remove(index);
                self.store_reply(reply, false).await;
            } else {
                index += 1;
            }
        }
    }

    async fn store_reply(&mut self, reply: Reply, call_ending: bool) {
        let Some(complete) = reply.complete.clone() else { return };
        let runtime = &self.context.runtime;
        let session = &self.context.session;
        let cut_short = reply.interrupted || call_ending;
        let mut message = (*complete).clone();
        let mut said = reply.spoken.join(" ");
        if cut_short {
            if let Some(partial) = &reply.partial {
                if !partial.is_empty() {
                    if !said.is_empty() {
                        said.push(' ');
                    }
                    said.push_str(partial);
                }
            }
            message.finish_reason = Some("interrupted".to_owned());
            message.text = session::text_to_store(&session.agent, &session.conversation, &said);
        } else {
            message.text = session::text_to_store(
                &session.agent,
                &session.conversation,
                complete.text.as_deref().unwrap_or_default(),
            );
        }
        let first_audio_ms = reply
            .first_audio_at
            .map(|at| reply.end_of_turn_ms + at.duration_since(reply.detected_at).as_secs_f64() * 1e3);
        let voice = VoiceTimings {
            end_of_turn_ms: reply.end_of_turn_ms,
            transcription_ms: reply.transcription_ms,
            retrieval_ms: complete.timings.as_ref().map(|timings| timings.retrieval_ms).unwrap_or_default(),
            first_token_ms: complete.timings.as_ref().and_then(|timings| timings.first_token_ms),
            synthesis_ms: reply.synthesis_ms,
            first_audio_ms,
        };
        let mut timings = message.timings.clone().unwrap_or_default();
        timings.voice = Some(voice.clone());
        message.timings = Some(timings);
        if let Some(start_ms) = reply.start_ms {
            message.utterance = Some(Utterance {
                start_ms,
                end_ms: reply.end_ms.unwrap_or(start_ms).max(start_ms),
                language: self.language.clone(),
            });
        }
        // The answer as heard and its `message.created`, in one transaction.
        let stored: crate::Result<()> = async {
            let mut transaction = runtime.database().begin().await?;
            if storage::conversations::set_spoken_reply(&mut transaction, &message).await? {
                crate::chat::engine::message_created(&mut transaction, session.agent.id, &message).await?;
            }
            transaction.commit().await?;
            Ok(())
        }
        .await;
        if let Err(error) = stored {
            tracing::error!(call_id = %self.context.call_id, error = %error, "cannot store a spoken answer as heard");
        }
        if first_audio_ms.is_some() {
            if let Some(observer) = runtime.calls().observer() {
                observer.turn_timed(&session.agent, session.conversation.channel, &voice);
            }
        }
        let _ = reply.user_message_id;
    }

    async fn store_utterance(&self, message_id: Uuid, utterance: &Utterance) {
        let stored: crate::Result<()> = async {
            let mut connection = self.context.runtime.database().pool().acquire().await?;
            storage::conversations::set_utterance(
                &mut connection,
                self.context.session.conversation.tenant_id,
                message_id,
                utterance,
            )
            .await
        }
        .await;
        if let Err(error) = stored {
            tracing::error!(call_id = %self.context.call_id, error = %error, "cannot store an utterance's times");
        }
    }

    fn count(&self, counter: impl FnOnce(&super::Counters) -> &AtomicU64) {
        counter(&self.context.runtime.calls().stats).fetch_add(1, Ordering::Relaxed);
    }

    fn send(&self, event: CallEvent) {
        if self.context.events.try_send(event).is_err() {
            tracing::debug!(call_id = %self.context.call_id, "the transport is behind: an event was skipped");
        }
    }

    /// The call is over: stop the answer being written, and store what was heard of it.
    async fn wind_down(&mut self) {
        self.context.audio_in.close();
        self.heard = None;
        self.early = None;
        self.recent.clear();
        if let Some((Some(number), text, played)) =
            self.playout.current().map(|(segment, played)| (segment.reply, segment.text.clone(), played))
        {
            let end_ms = self.now_ms();
            if let Some(reply) = self.reply_mut(number) {
                reply.partial = Some(played_words(&text, played));
                reply.end_ms = Some(end_ms);
            }
        }
        self.playout.clear_interruptible();
        if self.replies.iter().any(|reply| reply.complete.is_none()) {
            engine::cancel(&self.context.runtime, &self.context.session);
            let deadline = tokio::time::Instant::now() + END_WAIT;
            while self.replies.iter().any(|reply| reply.complete.is_none()) {
                match tokio::time::timeout_at(deadline, self.reports.recv()).await {
                    Ok(Some(Report::Answer { reply, event: TurnEvent::Complete(message) })) => {
                        if let Some(reply) = self.reply_mut(reply) {
                            reply.complete = Some(message);
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let replies = std::mem::take(&mut self.replies);
        for reply in replies {
            let finished = !reply.interrupted && reply.done_playing() && reply.partial.is_none();
            self.store_reply(reply, !finished).await;
        }
    }
}

/// The first words of `text`, in proportion to the fraction `played` of its audio.
fn played_words(text: &str, played: f32) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let count = ((words.len() as f32) * played.clamp(0.0, 1.0)).round() as usize;
    words[..count.min(words.len())].join(" ")
}

/// A text split into sentences.
fn sentences(text: &str) -> Vec<String> {
    let mut splitter = SentenceSplitter::new();
    let mut sentences = splitter.push(text);
    sentences.extend(splitter.finish());
    sentences
}

/// The call's synthesis task: sentences in order through the agent's voice, resampled to the
/// call's rate. Requests of an older generation (before a barge-in) are skipped.
async fn synthesize(
    voice: Arc<dyn TextToSpeech>,
    rate: u32,
    mut requests: mpsc::UnboundedReceiver<SpeakRequest>,
    report: mpsc::UnboundedSender<Report>,
    generation: Arc<AtomicU64>,
) {
    while let Some(request) = requests.recv().await {
        let started = Instant::now();
        let samples = if request.generation < generation.load(Ordering::SeqCst) {
            Vec::new()
        } else {
            match voice.synthesize(&request.text).await {
                Ok(audio) => match StreamResampler::convert(&audio.samples, audio.sample_rate, rate) {
                    Ok(samples) => samples,
                    Err(error) => {
                        tracing::warn!(error = %error, "cannot resample synthesised speech");
                        Vec::new()
                    }
                },
                Err(error) => {
                    tracing::warn!(voice = voice.voice_id(), error = %error, "cannot synthesise a sentence");
                    Vec::new()
                }
            }
        };
        let sent = report.send(Report::Synthesized {
            generation: request.generation,
            reply: request.reply,
            text: request.text,
            samples,
            took: started.elapsed(),
            interruptible: request.interruptible,
        });
        if sent.is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn played_words_follow_the_played_fraction() {
        assert_eq!(played_words("one two three four", 0.5), "one two");
        assert_eq!(played_words("one two three four", 0.0), "");
        assert_eq!(played_words("one two three four", 1.0), "one two three four");
        assert_eq!(played_words("", 0.7), "");
    }

    #[test]
    fn disclosures_split_into_sentences() {
        assert_eq!(
            sentences("You are talking to an AI assistant. This call is transcribed."),
            vec!["You are talking to an AI assistant.", "This call is transcribed."]
        );
        assert!(sentences("  ").is_empty());
    }
}
