//! Voice activity detection: is someone speaking in this stretch of audio, and when has a
//! speaker finished their turn?
//!
//! [`SileroVad`] (feature `onnx`) is the Silero VAD v6 model from the [`VAD_PACKAGE`] run with
//! the ONNX runtime: one loaded model shared by every call, and one [`VadStream`] per audio
//! stream holding what the model carries from frame to frame (its recurrent state and the last
//! 64 samples of the previous frame). A stream takes 16 kHz mono audio in frames of
//! [`FRAME_SAMPLES`] (32 ms) and gives a speech probability per frame.
//!
//! [`EndOfTurn`] is plain Rust and model-independent: it turns those per-frame probabilities
//! into [`TurnEvent`]s — speech started, speech ended — with two thresholds (hysteresis), a
//! minimum speech duration (coughs and clicks are not turns) and a silence window (how long the
//! speaker must be quiet before their turn is over).
//!
//! [`VAD_PACKAGE`]: crate::packages::VAD_PACKAGE

#[cfg(feature = "onnx")]
pub use silero::{SileroVad, VadStream};

/// The sample rate the detector works at.
pub const SAMPLE_RATE: u32 = 16_000;
/// Samples per frame: 32 ms at 16 kHz.
pub const FRAME_SAMPLES: usize = 512;
/// The length of one frame in milliseconds.
pub const FRAME_MS: u32 = (FRAME_SAMPLES as u32 * 1000) / SAMPLE_RATE;

/// How [`EndOfTurn`] decides; all durations in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EndOfTurnOptions {
    /// A frame at or above this probability is speech (and may start a turn).
    pub start_threshold: f32,
    /// A frame below this probability is silence. Between the two thresholds a frame continues
    /// whatever is under way, so a wavering probability does not toggle speech on and off.
    pub end_threshold: f32,
    /// Speech shorter than this (a cough, a click) does not start a turn.
    pub min_speech_ms: u32,
    /// The speaker's turn ends after this much continuous silence.
    pub silence_ms: u32,
}

impl Default for EndOfTurnOptions {
    fn default() -> Self {
        Self { start_threshold: 0.5, end_threshold: 0.35, min_speech_ms: 250, silence_ms: 700 }
    }
}

impl EndOfTurnOptions {
    /// Checks the options: thresholds within 0…1 with `end_threshold <= start_threshold`, and a
    /// silence window of at least one frame.
    pub fn validate(&self) -> Result<(), String> {
        let in_range = |value: f32| (0.0..=1.0).contains(&value);
        if !in_range(self.start_threshold) || !in_range(self.end_threshold) {
            return Err(format!(
                "thresholds must lie between 0 and 1 (start {}, end {})",
                self.start_threshold, self.end_threshold
            ));
        }
        if self.end_threshold > self.start_threshold {
            return Err(format!(
                "the end threshold ({}) must not exceed the start threshold ({})",
                self.end_threshold, self.start_threshold
            ));
        }
        if self.silence_ms < FRAME_MS {
            return Err(format!(
                "the silence window must be at least one frame ({FRAME_MS} ms), not {} ms",
                self.silence_ms
            ));
        }
        Ok(())
    }
}

/// What [`EndOfTurn`] noticed; times are milliseconds since the stream (or the last reset) began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnEvent {
    /// Speech began at `at_ms` (reported once it has lasted the minimum speech duration).
    SpeechStarted { at_ms: u64 },
    /// Speech stopped at `at_ms` (reported once the silence window has passed); the turn lasted
    /// `speech_ms`.
    SpeechEnded { at_ms: u64, speech_ms: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nobody speaks.
    Quiet,
    /// Speech since frame `since`, not long enough yet to be a turn.
    Candidate { since: u64 },
    /// A turn under way since frame `since`; `silent_since` is the first frame of the current
    /// stretch of silence, if any.
    Speaking { since: u64, silent_since: Option<u64> },
}

/// Turns per-frame speech probabilities into speech-start and speech-end events.
#[derive(Debug, Clone)]
pub struct EndOfTurn {
    options: EndOfTurnOptions,
    min_speech_frames: u64,
    silence_frames: u64,
    frame: u64,
    phase: Phase,
}

impl EndOfTurn {
    /// A detector with `options` (checked with [`EndOfTurnOptions::validate`]).
    pub fn new(options: EndOfTurnOptions) -> Result<Self, String> {
        options.validate()?;
        let frames = |ms: u32| u64::from(ms.div_ceil(FRAME_MS));
        Ok(Self {
            options,
            min_speech_frames: frames(options.min_speech_ms).max(1),
            silence_frames: frames(options.silence_ms).max(1),
            frame: 0,
            phase: Phase::Quiet,
        })
    }

    /// The options in effect.
    pub fn options(&self) -> EndOfTurnOptions {
        self.options
    }

    /// True while a turn is under way (started and not yet ended).
    pub fn is_speaking(&self) -> bool {
        matches!(self.phase, Phase::Speaking { .. })
    }

    /// Forgets everything; times start again at zero.
    pub fn reset(&mut self) {
        self.frame = 0;
        self.phase = Phase::Quiet;
    }

    /// Feeds the next frame's speech probability; returns the event it completes, if any.
    pub fn push(&mut self, probability: f32) -> Option<TurnEvent> {
        let frame = self.frame;
        self.frame += 1;
        let speech = probability >= self.options.start_threshold;
        let silence = probability < self.options.end_threshold || probability.is_nan();
        let (phase, event) = match self.phase {
            Phase::Quiet if speech => self.candidate(frame, frame),
            Phase::Quiet => (Phase::Quiet, None),
            Phase::Candidate { .. } if silence => (Phase::Quiet, None),
            Phase::Candidate { since } => self.candidate(since, frame),
            Phase::Speaking { since, silent_since } => {
                let silent_since = if speech {
                    None
                } else if silence {
                    Some(silent_since.unwrap_or(frame))
                } else {
                    silent_since
                };
                match silent_since {
                    Some(start) if frame + 1 - start >= self.silence_frames => (
                        Phase::Quiet,
                        Some(TurnEvent::SpeechEnded { at_ms: ms(start), speech_ms: ms(start) - ms(since) }),
                    ),
                    _ => (Phase::Speaking { since, silent_since }, None),
                }
            }
        };
        self.phase = phase;
        event
    }

    /// Speech since `since` seen up to `frame`: a turn once it is long enough.
    fn candidate(&self, since: u64, frame: u64) -> (Phase, Option<TurnEvent>) {
        if frame + 1 - since >= self.min_speech_frames {
            (Phase::Speaking { since, silent_since: None }, Some(TurnEvent::SpeechStarted { at_ms: ms(since) }))
        } else {
            (Phase::Candidate { since }, None)
        }
    }
}

/// The start of frame `frame` in milliseconds.
fn ms(frame: u64) -> u64 {
    frame * u64::from(FRAME_MS)
}

#[cfg(feature = "onnx")]
mod silero {
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};

    use ort::environment::Environment;
    use ort::session::Session;
    use ort::value::{Tensor, TensorElementType};

    use super::{FRAME_SAMPLES, SAMPLE_RATE};
    use crate::error::ModelError;
    use crate::onnx::{environment, expect_tensor, load_session};
    use crate::packages::{installed_dir, VAD_PACKAGE};

    /// The model file inside the installed package directory.
    pub const MODEL_FILE: &str = "silero_vad.onnx";
    /// Samples of the previous frame the model sees before each new frame.
    const CONTEXT_SAMPLES: usize = 64;
    /// The recurrent state: 2 × batch 1 × 128.
    const STATE_LEN: usize = 2 * 128;

    /// The Silero VAD model, loaded once and shared by every [`VadStream`].
    #[derive(Debug, Clone)]
    pub struct SileroVad {
        inner: Arc<Inner>,
    }

    #[derive(Debug)]
    struct Inner {
        path: PathBuf,
        /// Running a session needs exclusive access; one frame takes well under a millisecond.
        session: Mutex<Session>,
    }

    impl SileroVad {
        /// Loads the installed [`VAD_PACKAGE`] from the model cache under `models_dir`, with the
        /// ONNX runtime from the same cache.
        pub fn installed(models_dir: &Path) -> Result<Self, ModelError> {
            let environment = environment(models_dir)?;
            Self::load(&environment, &installed_dir(models_dir, &VAD_PACKAGE)?.join(MODEL_FILE))
        }

        /// Loads the model at `path` and checks that its inputs and outputs are the ones a v6
        /// Silero model has (`input` [batch, samples], `state` [2, batch, 128], `sr` scalar;
        /// `output` [batch, 1], `stateN`).
        pub fn load(environment: &Environment, path: &Path) -> Result<Self, ModelError> {
            let session = load_session(environment, path, 1)?;
            let inputs = session.inputs();
            expect_tensor(path, "input", inputs, "input", TensorElementType::Float32, 2)?;
            expect_tensor(path, "input", inputs, "state", TensorElementType::Float32, 3)?;
            expect_tensor(path, "input", inputs, "sr", TensorElementType::Int64, 0)?;
            let outputs = session.outputs();
            expect_tensor(path, "output", outputs, "output", TensorElementType::Float32, 2)?;
            expect_tensor(path, "output", outputs, "stateN", TensorElementType::Float32, 3)?;
            Ok(Self { inner: Arc::new(Inner { path: path.to_path_buf(), session: Mutex::new(session) }) })
        }

        /// A new stream with fresh state, for one speaker's audio.
        pub fn stream(&self) -> VadStream {
            VadStream {
                vad: self.clone(),
                state: vec![0.0; STATE_LEN],
                context: vec![0.0; CONTEXT_SAMPLES],
                pending: Vec::with_capacity(FRAME_SAMPLES),
            }
        }

        fn model(&self) -> String {
            self.inner.path.display().to_string()
        }

        /// One model step: `window` is the context followed by a frame.
        fn run(&self, window: Vec<f32>, state: &mut [f32]) -> Result<f32, ModelError> {
            let failed = |reason: String| ModelError::Inference { model: self.model(), reason };
            let input = Tensor::from_array(([1_i64, window.len() as i64], window))
                .map_err(|error| failed(error.to_string()))?;
            let state_in =
                Tensor::from_array(([2_i64, 1, 128], state.to_vec())).map_err(|error| failed(error.to_string()))?;
            let rate =
                Tensor::from_array(((), vec![i64::from(SAMPLE_RATE)])).map_err(|error| failed(error.to_string()))?;
            let mut session = self.inner.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let outputs = session
                .run(ort::inputs!["input" => input, "state" => state_in, "sr" => rate])
                .map_err(|error| failed(error.to_string()))?;
            let (_, probability) =
                outputs["output"].try_extract_tensor::<f32>().map_err(|error| failed(format!("output: {error}")))?;
            let (_, next_state) =
                outputs["stateN"].try_extract_tensor::<f32>().map_err(|error| failed(format!("stateN: {error}")))?;
            if next_state.len() != state.len() {
                return Err(failed(format!("stateN has {} values, expected {}", next_state.len(), state.len())));
            }
            state.copy_from_slice(next_state);
            probability.first().copied().ok_or_else(|| failed("empty output".to_owned()))
        }
    }

    /// One audio stream's detector state: 16 kHz mono samples in, one speech probability per
    /// 512-sample frame out.
    #[derive(Debug)]
    pub struct VadStream {
        vad: SileroVad,
        state: Vec<f32>,
        context: Vec<f32>,
        /// Samples of an incomplete frame, waiting for the rest.
        pending: Vec<f32>,
    }

    impl VadStream {
        /// The speech probability (0…1) of exactly one frame of [`FRAME_SAMPLES`] samples.
        pub fn frame_probability(&mut self, frame: &[f32]) -> Result<f32, ModelError> {
            if frame.len() != FRAME_SAMPLES {
                return Err(ModelError::InvalidRequest {
                    model: self.vad.model(),
                    reason: format!("a frame has {FRAME_SAMPLES} samples at 16 kHz, not {}", frame.len()),
                });
            }
            let mut window = Vec::with_capacity(CONTEXT_SAMPLES + FRAME_SAMPLES);
            window.extend_from_slice(&self.context);
            window.extend_from_slice(frame);
            let probability = self.vad.run(window, &mut self.state)?;
            self.context.copy_from_slice(&frame[FRAME_SAMPLES - CONTEXT_SAMPLES..]);
            Ok(probability)
        }

        /// Feeds any number of samples; returns the probability of every frame they complete
        /// (samples left over wait for the next call).
        pub fn push(&mut self, samples: &[f32]) -> Result<Vec<f32>, ModelError> {
            let mut probabilities = Vec::with_capacity((self.pending.len() + samples.len()) / FRAME_SAMPLES);
            let mut rest = samples;
            while !rest.is_empty() {
                let take = (FRAME_SAMPLES - self.pending.len()).min(rest.len());
                self.pending.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if self.pending.len() == FRAME_SAMPLES {
                    let frame = std::mem::take(&mut self.pending);
                    probabilities.push(self.frame_probability(&frame)?);
                    self.pending = frame;
                    self.pending.clear();
                }
            }
            Ok(probabilities)
        }

        /// Forgets the audio seen so far (a new utterance from scratch).
        pub fn reset(&mut self) {
            self.state.iter_mut().for_each(|value| *value = 0.0);
            self.context.iter_mut().for_each(|value| *value = 0.0);
            self.pending.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(silence_ms: u32) -> EndOfTurn {
        EndOfTurn::new(EndOfTurnOptions { silence_ms, ..EndOfTurnOptions::default() }).unwrap()
    }

    fn feed(detector: &mut EndOfTurn, probabilities: &[f32]) -> Vec<TurnEvent> {
        probabilities.iter().filter_map(|probability| detector.push(*probability)).collect()
    }

    #[test]
    fn speech_then_a_long_silence_is_one_turn() {
        let mut turn = detector(320);
        let mut input = vec![0.01; 10];
        input.extend(vec![0.9; 20]);
        input.extend(vec![0.02; 15]);
        let events = feed(&mut turn, &input);
        assert_eq!(
            events,
            vec![
                TurnEvent::SpeechStarted { at_ms: 10 * 32 },
                TurnEvent::SpeechEnded { at_ms: 30 * 32, speech_ms: 20 * 32 }
            ]
        );
        assert!(!turn.is_speaking());
    }

    #[test]
    fn a_pause_shorter_than_the_window_does_not_end_the_turn() {
        let mut turn = detector(320);
        let mut input = vec![0.9; 10];
        input.extend(vec![0.1; 9]); // 288 ms < 320 ms
        input.extend(vec![0.9; 10]);
        let events = feed(&mut turn, &input);
        assert_eq!(events, vec![TurnEvent::SpeechStarted { at_ms: 0 }]);
        assert!(turn.is_speaking());
        // The silence window counts from the start of the last pause only.
        let events = feed(&mut turn, &[0.1; 10]);
        assert_eq!(events, vec![TurnEvent::SpeechEnded { at_ms: 29 * 32, speech_ms: 29 * 32 }]);
    }

    #[test]
    fn a_short_burst_is_not_a_turn() {
        let mut turn = detector(320);
        // 250 ms needs 8 frames; 5 loud frames then silence are a click.
        let events = feed(&mut turn, &[0.95, 0.95, 0.95, 0.95, 0.95, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert!(events.is_empty(), "{events:?}");
        assert!(!turn.is_speaking());
    }

    #[test]
    fn probabilities_between_the_thresholds_neither_start_nor_break_a_turn() {
        let mut turn = detector(320);
        assert!(feed(&mut turn, &[0.4; 30]).is_empty(), "0.4 is below the start threshold");
        let mut input = vec![0.9; 8];
        input.extend(vec![0.4; 30]); // wavering but above the end threshold: still speaking
        let events = feed(&mut turn, &input);
        assert_eq!(events, vec![TurnEvent::SpeechStarted { at_ms: 30 * 32 }]);
        assert!(turn.is_speaking());
        // A started silence is not interrupted by a wavering frame.
        let mut input = vec![0.1; 5];
        input.push(0.4);
        input.extend(vec![0.1; 4]);
        let events = feed(&mut turn, &input);
        assert_eq!(events, vec![TurnEvent::SpeechEnded { at_ms: 68 * 32, speech_ms: 38 * 32 }]);
    }

    #[test]
    fn reset_starts_the_clock_again() {
        let mut turn = detector(320);
        feed(&mut turn, &[0.9; 10]);
        turn.reset();
        assert!(!turn.is_speaking());
        assert_eq!(feed(&mut turn, &[0.9; 8]), vec![TurnEvent::SpeechStarted { at_ms: 0 }]);
    }

    #[test]
    fn bad_options_are_refused_with_a_reason() {
        let options = EndOfTurnOptions { start_threshold: 0.3, end_threshold: 0.5, ..EndOfTurnOptions::default() };
        assert!(EndOfTurn::new(options).unwrap_err().contains("must not exceed"));
        let options = EndOfTurnOptions { start_threshold: 1.5, ..EndOfTurnOptions::default() };
        assert!(EndOfTurn::new(options).unwrap_err().contains("between 0 and 1"));
        let options = EndOfTurnOptions { silence_ms: 10, ..EndOfTurnOptions::default() };
        assert!(EndOfTurn::new(options).unwrap_err().contains("at least one frame"));
    }
}
