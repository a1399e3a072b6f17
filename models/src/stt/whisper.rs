//! [`WhisperStt`]: local speech-to-text with whisper.cpp (through whisper-rs) on a ggml model.
//!
//! One model is loaded once and shared by every caller. A fixed number of worker threads, each
//! with its own decoding state, take requests from a bounded queue: a full queue refuses a
//! request at once with [`ModelError::Busy`] instead of growing without bound. Dropping a
//! request's future cancels it: a queued request is skipped; a running one longer than
//! [`ABORTABLE_SAMPLES`] is aborted at whisper.cpp's next check (shorter ones finish in well
//! under a second and their result is discarded). whisper.cpp's own log lines go to `tracing`,
//! not to stderr.
//!
//! whisper-rs 0.16 never frees the closures given to `FullParams`' callbacks (a few dozen bytes
//! each), so they are installed only where they pay for themselves: the abort check for long
//! audio, the segment callback when the caller asked for partial segments.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;

use futures::future::BoxFuture;
use tokio::sync::oneshot;
use whisper_rs::{
    FullParams, SamplingStrategy, SegmentCallbackData, WhisperContext, WhisperContextParameters, WhisperState,
};

use super::{primary_language, validate_audio, Segment, SpeechToText, TranscribeOptions, Transcript, STT_SAMPLE_RATE};
use crate::error::ModelError;

/// whisper.cpp transcribes nothing from less than a second of audio; shorter clips are padded
/// with silence to this many samples.
const MIN_SAMPLES: usize = STT_SAMPLE_RATE as usize * 11 / 10;

/// Requests longer than this (one 30 s Whisper window) can be aborted while they run.
pub const ABORTABLE_SAMPLES: usize = STT_SAMPLE_RATE as usize * 30;

/// How [`WhisperStt`] runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WhisperOptions {
    /// CPU threads each transcription uses.
    pub threads: usize,
    /// Transcriptions that run at the same time (each worker holds its own decoding state,
    /// tens of MB for tiny/base models).
    pub workers: usize,
    /// Requests that may wait for a free worker; one more is refused with [`ModelError::Busy`].
    pub queue_capacity: usize,
    /// Longest audio accepted in one request, in seconds.
    pub max_audio_seconds: f32,
}

impl Default for WhisperOptions {
    fn default() -> Self {
        let cores = thread::available_parallelism().map(|cores| cores.get()).unwrap_or(1);
        Self { threads: cores.min(4), workers: 1, queue_capacity: 16, max_audio_seconds: 300.0 }
    }
}

/// A queued transcription.
struct Job {
    audio: Arc<[f32]>,
    language: Option<String>,
    partial: Option<tokio::sync::mpsc::UnboundedSender<Segment>>,
    cancelled: Arc<AtomicBool>,
    reply: oneshot::Sender<Result<Transcript, ModelError>>,
}

/// Sets the cancel flag when the caller's future is dropped before the answer arrived.
struct CancelOnDrop {
    cancelled: Option<Arc<AtomicBool>>,
}

impl CancelOnDrop {
    /// The answer arrived: nothing left to cancel.
    fn disarm(mut self) {
        self.cancelled = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(cancelled) = &self.cancelled {
            cancelled.store(true, Ordering::Relaxed);
        }
    }
}

/// Local speech-to-text with one shared whisper.cpp model; see the module docs.
pub struct WhisperStt {
    model_id: String,
    path: PathBuf,
    options: WhisperOptions,
    english_only: bool,
    jobs: SyncSender<Job>,
    cancelled: Arc<AtomicU64>,
}

impl std::fmt::Debug for WhisperStt {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("WhisperStt")
            .field("model_id", &self.model_id)
            .field("path", &self.path)
            .field("options", &self.options)
            .field("english_only", &self.english_only)
            .finish()
    }
}

impl WhisperStt {
    /// Loads the ggml model at `path` once and starts `options.workers` worker threads.
    pub fn load(path: &Path, options: WhisperOptions) -> Result<Self, ModelError> {
        let invalid = |reason: String| ModelError::InvalidModel { path: path.to_path_buf(), reason };
        if options.threads == 0 || options.workers == 0 {
            return Err(invalid("threads and workers must be at least 1".to_owned()));
        }
        if !(options.max_audio_seconds.is_finite() && options.max_audio_seconds > 0.0) {
            return Err(invalid("max_audio_seconds must be a positive number".to_owned()));
        }
        if !path.is_file() {
            return Err(ModelError::MissingModelFile { path: path.to_path_buf() });
        }
        whisper_rs::install_logging_hooks();
        let mut parameters = WhisperContextParameters::default();
        parameters.use_gpu(false);
        let context = WhisperContext::new_with_params(path, parameters)
            .map_err(|error| invalid(format!("whisper.cpp cannot load it as a ggml Whisper model ({error})")))?;
        let english_only = !context.is_multilingual();
        let model_id = path
            .parent()
            .and_then(|dir| dir.file_name())
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "whisper".to_owned());

        let (jobs, receiver) = mpsc::sync_channel::<Job>(options.queue_capacity);
        let receiver = Arc::new(Mutex::new(receiver));
        let cancelled = Arc::new(AtomicU64::new(0));
        for index in 0..options.workers {
            let state =
                context.create_state().map_err(|error| invalid(format!("cannot create a decoding state ({error})")))?;
            let receiver = Arc::clone(&receiver);
            let worker = Worker { threads: options.threads, english_only, cancelled: Arc::clone(&cancelled) };
            thread::Builder::new()
                .name(format!("whisper-{index}"))
                .spawn(move || worker.serve(state, &receiver))
                .map_err(|error| ModelError::Inference {
                    model: "whisper".to_owned(),
                    reason: format!("cannot start a worker thread: {error}"),
                })?;
        }
        tracing::info!(model = %path.display(), english_only, workers = options.workers, threads = options.threads, "whisper model loaded");
        Ok(Self { model_id, path: path.to_path_buf(), options, english_only, jobs, cancelled })
    }

    /// Whether the model only knows English (`*.en` models).
    pub fn english_only(&self) -> bool {
        self.english_only
    }

    /// How many requests were dropped by their callers before they finished (skipped while
    /// queued, or aborted while running).
    pub fn cancelled(&self) -> u64 {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// The options the engine was loaded with.
    pub fn options(&self) -> WhisperOptions {
        self.options
    }

    /// The language to ask whisper.cpp for, after checking the requested one.
    fn language_for(&self, requested: Option<&str>) -> Result<Option<String>, ModelError> {
        let invalid = |reason: String| ModelError::InvalidRequest { model: self.model_id.clone(), reason };
        let Some(requested) = requested else {
            return Ok(self.english_only.then(|| "en".to_owned()));
        };
        let language = primary_language(requested);
        if whisper_rs::get_lang_id(&language).is_none() {
            return Err(invalid(format!("unknown language {requested:?}")));
        }
        if self.english_only && language != "en" {
            return Err(invalid(format!("this model only transcribes English, not {requested:?}")));
        }
        Ok(Some(language))
    }
}

impl SpeechToText for WhisperStt {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn transcribe(
        &self,
        audio: Arc<[f32]>,
        options: TranscribeOptions,
    ) -> BoxFuture<'static, Result<Transcript, ModelError>> {
        let submitted = validate_audio(&self.model_id, &audio, self.options.max_audio_seconds)
            .and_then(|()| self.language_for(options.language.as_deref()))
            .and_then(|language| {
                let (reply, answer) = oneshot::channel();
                let cancelled = Arc::new(AtomicBool::new(false));
                let job = Job { audio, language, partial: options.partial, cancelled: Arc::clone(&cancelled), reply };
                match self.jobs.try_send(job) {
                    Ok(()) => Ok((answer, CancelOnDrop { cancelled: Some(cancelled) })),
                    Err(TrySendError::Full(_)) => Err(ModelError::Busy {
                        model: self.model_id.clone(),
                        reason: format!(
                            "all {} speech-to-text workers are busy and {} requests are waiting",
                            self.options.workers, self.options.queue_capacity
                        ),
                    }),
                    Err(TrySendError::Disconnected(_)) => Err(ModelError::Inference {
                        model: self.model_id.clone(),
                        reason: "the speech-to-text workers have stopped".to_owned(),
                    }),
                }
            });
        let model = self.model_id.clone();
        Box::pin(async move {
            let (answer, guard) = submitted?;
            let result = answer.await.unwrap_or_else(|_| {
                Err(ModelError::Inference { model, reason: "the speech-to-text worker stopped".to_owned() })
            });
            guard.disarm();
            result
        })
    }
}

/// What a worker thread needs besides its decoding state.
struct Worker {
    threads: usize,
    english_only: bool,
    cancelled: Arc<AtomicU64>,
}

impl Worker {
    /// Takes jobs until the engine is dropped and the queue closes.
    fn serve(self, mut state: WhisperState, receiver: &Mutex<Receiver<Job>>) {
        loop {
            let job = {
                let receiver = receiver.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                match receiver.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            };
            if job.cancelled.load(Ordering::Relaxed) || job.reply.is_closed() {
                self.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let started = std::time::Instant::now();
            let result = run(&mut state, &job, self.threads, self.english_only);
            if matches!(&result, Err(Aborted)) {
                self.cancelled.fetch_add(1, Ordering::Relaxed);
            }
            let result = result.map_err(|error| match error {
                Aborted => ModelError::Inference {
                    model: "whisper".to_owned(),
                    reason: "the transcription was cancelled".to_owned(),
                },
                Failed(error) => error,
            });
            tracing::debug!(
                audio_ms = job.audio.len() as u64 * 1000 / STT_SAMPLE_RATE as u64,
                elapsed_ms = started.elapsed().as_millis() as u64,
                ok = result.is_ok(),
                "transcription finished"
            );
            let _ = job.reply.send(result);
        }
    }
}

/// Why [`run`] produced no transcript.
enum RunError {
    /// The caller went away and whisper.cpp stopped early.
    Aborted,
    Failed(ModelError),
}
use RunError::{Aborted, Failed};

fn run(state: &mut WhisperState, job: &Job, threads: usize, english_only: bool) -> Result<Transcript, RunError> {
    let failed = |reason: String| Failed(ModelError::Inference { model: "whisper".to_owned(), reason });
    let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
    params.set_n_threads(threads.min(i32::MAX as usize) as i32);
    params.set_translate(false);
    params.set_no_context(true);
    params.set_print_special(false);
    params.set_print_progress(false);
    params.set_print_realtime(false);
    params.set_print_timestamps(false);
    match job.language.as_deref() {
        Some(language) => params.set_language(Some(language)),
        None => params.set_language(Some("auto")),
    }
    if job.audio.len() > ABORTABLE_SAMPLES {
        let cancelled = Arc::clone(&job.cancelled);
        // Boxed as `dyn FnMut`: whisper-rs 0.16 calls the abort callback through that type, so
        // handing it anything else would be read as the wrong type.
        let abort: Box<dyn FnMut() -> bool> = Box::new(move || cancelled.load(Ordering::Relaxed));
        params.set_abort_callback_safe(abort);
    }
    // whisper-rs never frees a segment callback, so the callback reaches the caller's sender
    // through a slot that is emptied after the run: the sender itself is dropped as usual.
    let partial_slot = Arc::new(Mutex::new(job.partial.clone()));
    if job.partial.is_some() {
        let slot = Arc::clone(&partial_slot);
        params.set_segment_callback_safe(move |data: SegmentCallbackData| {
            let text = data.text.trim();
            let slot = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let (Some(partial), false) = (slot.as_ref(), text.is_empty()) {
                let _ = partial.send(Segment {
                    start_ms: centiseconds_to_ms(data.start_timestamp),
                    end_ms: centiseconds_to_ms(data.end_timestamp),
                    text: text.to_owned(),
                });
            }
        });
    }

    let padded: Vec<f32>;
    let audio: &[f32] = if job.audio.len() < MIN_SAMPLES {
        padded = job.audio.iter().copied().chain(std::iter::repeat(0.0)).take(MIN_SAMPLES).collect();
        &padded
    } else {
        &job.audio
    };
    let outcome = state.full(params, audio);
    partial_slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
    if outcome.is_err() && job.cancelled.load(Ordering::Relaxed) {
        return Err(Aborted);
    }
    outcome.map_err(|error| failed(format!("whisper.cpp failed: {error}")))?;

    let mut segments = Vec::new();
    for segment in state.as_iter() {
        let text = segment.to_str_lossy().map_err(|error| failed(format!("cannot read a segment: {error}")))?;
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        segments.push(Segment {
            start_ms: centiseconds_to_ms(segment.start_timestamp()),
            end_ms: centiseconds_to_ms(segment.end_timestamp()),
            text: text.to_owned(),
        });
    }
    let language = if english_only {
        "en".to_owned()
    } else {
        match job.language.clone() {
            Some(language) => language,
            None => whisper_rs::get_lang_str(state.full_lang_id_from_state()).unwrap_or("und").to_owned(),
        }
    };
    let text = segments.iter().map(|segment| segment.text.as_str()).collect::<Vec<_>>().join(" ");
    Ok(Transcript { text, language, segments })
}

/// whisper.cpp's timestamps are in units of 10 ms.
fn centiseconds_to_ms(value: i64) -> u64 {
    value.max(0) as u64 * 10
}
