//! Speech synthesis: text in, mono audio out.
//!
//! [`TextToSpeech`] is what the voice pipeline calls, one sentence at a time as a reply streams.
//! Two voices implement it:
//! - [`PiperVoice`] (feature `onnx`), the local default: the Piper VITS voice from the
//!   [`PIPER_VOICE_PACKAGE`] run with the ONNX runtime. Its input is phonemes: the `espeak-ng`
//!   program writes the text as IPA (`-q --ipa=3 -v <the voice's espeak voice>`), and each IPA
//!   character becomes ids through the voice's `phoneme_id_map` — `^` first, `_` after every
//!   phoneme, `$` last. Characters the map lacks (such as the zero-width joiners espeak-ng puts
//!   inside diphthongs) are skipped.
//! - [`EspeakVoice`], the fallback: `espeak-ng --stdout` itself, its WAV output parsed here.
//! - [`openai::OpenAiSpeech`], a remote voice: an OpenAI-compatible `/audio/speech` endpoint.
//!
//! [`FallbackVoice`] puts a local voice behind a remote one, so that a provider that fails never
//! leaves a caller in silence.
//!
//! espeak-ng is GPL-3, so Parley runs it as a separate program (no shell, the text on its
//! standard input, a time limit) and never links it. Synthesis runs on blocking threads.
//!
//! [`PIPER_VOICE_PACKAGE`]: crate::packages::PIPER_VOICE_PACKAGE

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(feature = "onnx")]
pub use piper::PiperVoice;

use crate::error::ModelError;
use crate::llm::BoxFuture;

pub mod openai;

/// The longest text one call synthesises, in characters (a few sentences; callers split replies
/// at sentence boundaries).
pub const MAX_TEXT_CHARS: usize = 2_000;
/// How long espeak-ng may take for one text.
pub const ESPEAK_TIMEOUT: Duration = Duration::from_secs(20);
/// The espeak-ng program's name.
pub const ESPEAK_PROGRAM: &str = "espeak-ng";
/// The Debian package that provides it.
pub const ESPEAK_PACKAGE: &str = "espeak-ng";

/// Mono audio: samples in −1…1 at `sample_rate` Hz.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
}

impl Audio {
    /// How long the audio plays.
    pub fn duration(&self) -> Duration {
        if self.sample_rate == 0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(self.samples.len() as f64 / f64::from(self.sample_rate))
    }

    /// The root mean square of the samples (0 for silence).
    pub fn rms(&self) -> f32 {
        if self.samples.is_empty() {
            return 0.0;
        }
        let sum: f64 = self.samples.iter().map(|sample| f64::from(*sample) * f64::from(*sample)).sum();
        (sum / self.samples.len() as f64).sqrt() as f32
    }
}

/// A voice: synthesises text into audio.
pub trait TextToSpeech: Send + Sync + std::fmt::Debug {
    /// Names the voice, e.g. `piper:en_US-joe-medium`.
    fn voice_id(&self) -> &str;

    /// The sample rate of the audio this voice produces.
    fn sample_rate(&self) -> u32;

    /// Synthesises `text` (on a blocking thread). Empty text or text longer than
    /// [`MAX_TEXT_CHARS`] is an [`ModelError::InvalidRequest`]; a missing espeak-ng is a
    /// [`ModelError::MissingProgram`].
    fn synthesize(&self, text: &str) -> BoxFuture<'_, Result<Audio, ModelError>>;
}

/// Checks `text` before synthesis; returns it trimmed.
fn checked_text<'a>(voice: &str, text: &'a str) -> Result<&'a str, ModelError> {
    let text = text.trim();
    let invalid = |reason: String| ModelError::InvalidRequest { model: voice.to_owned(), reason };
    if text.is_empty() {
        return Err(invalid("there is no text to speak".to_owned()));
    }
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(invalid(format!("the text has {chars} characters; at most {MAX_TEXT_CHARS} are spoken at once")));
    }
    Ok(text)
}

/// Runs `espeak-ng ARGS` with `text` on its standard input (never a shell, never an argument),
/// within [`ESPEAK_TIMEOUT`]; returns its standard output.
fn run_espeak(args: &[&str], text: &str) -> Result<Vec<u8>, ModelError> {
    run_program(ESPEAK_PROGRAM, args, text)
}

/// Runs `program ARGS --stdin` as [`run_espeak`] describes.
fn run_program(program: &str, args: &[&str], text: &str) -> Result<Vec<u8>, ModelError> {
    let failed = |reason: String| ModelError::Inference { model: program.to_owned(), reason };
    let mut child = Command::new(program)
        .args(args)
        .arg("--stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => {
                ModelError::MissingProgram { program: ESPEAK_PROGRAM.to_owned(), package: ESPEAK_PACKAGE.to_owned() }
            }
            _ => failed(format!("cannot start: {error}")),
        })?;
    // Write and read on their own threads so that neither pipe can fill up and stall the other.
    let mut stdin = child.stdin.take();
    let input = text.to_owned();
    let writer = std::thread::spawn(move || {
        if let Some(stdin) = stdin.as_mut() {
            // A failed write shows up as a failed exit below.
            let _ = stdin.write_all(input.as_bytes());
            let _ = stdin.write_all(b"\n");
        }
    });
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut output = Vec::new();
        if let Some(stdout) = stdout.as_mut() {
            let _ = stdout.read_to_end(&mut output);
        }
        output
    });
    let mut stderr = child.stderr.take();
    let error_reader = std::thread::spawn(move || {
        let mut output = String::new();
        if let Some(stderr) = stderr.as_mut() {
            let _ = stderr.take(4096).read_to_string(&mut output);
        }
        output
    });

    let deadline = Instant::now() + ESPEAK_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!("took longer than {} s and was stopped", ESPEAK_TIMEOUT.as_secs())));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(error) => return Err(failed(error.to_string())),
        }
    };
    let _ = writer.join();
    let output = reader.join().unwrap_or_default();
    let errors = error_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(failed(format!("exited with {status}: {}", errors.trim())));
    }
    Ok(output)
}

/// The IPA of `text` from `espeak-ng -q --ipa=3 -v VOICE`: one line per clause, words separated
/// by spaces.
pub fn phonemize(voice: &str, text: &str) -> Result<String, ModelError> {
    if voice.is_empty()
        || !voice.chars().all(|character| character.is_ascii_alphanumeric() || "-_+".contains(character))
    {
        return Err(ModelError::InvalidRequest {
            model: ESPEAK_PROGRAM.to_owned(),
            reason: format!("`{voice}` is not an espeak-ng voice name"),
        });
    }
    let output = run_espeak(&["-q", "--ipa=3", "-v", voice], text)?;
    String::from_utf8(output).map_err(|_| ModelError::Inference {
        model: ESPEAK_PROGRAM.to_owned(),
        reason: "the phonemes are not UTF-8".to_owned(),
    })
}

/// The fallback voice: espeak-ng's own synthesiser (`espeak-ng --stdout`, 22,050 Hz).
#[derive(Debug, Clone)]
pub struct EspeakVoice {
    voice: String,
    id: String,
}

impl EspeakVoice {
    /// The espeak-ng voice `voice`, e.g. `en-us`. Checks that espeak-ng is installed.
    pub fn new(voice: &str) -> Result<Self, ModelError> {
        phonemize(voice, "ok")?;
        Ok(Self { voice: voice.to_owned(), id: format!("espeak-ng:{voice}") })
    }

    /// Synthesises on the calling thread.
    pub fn synthesize_blocking(&self, text: &str) -> Result<Audio, ModelError> {
        let text = checked_text(&self.id, text)?;
        let wav = run_espeak(&["--stdout", "-v", &self.voice], text)?;
        parse_wav(&wav).map_err(|reason| ModelError::Inference { model: self.id.clone(), reason })
    }
}

impl TextToSpeech for EspeakVoice {
    fn voice_id(&self) -> &str {
        &self.id
    }

    fn sample_rate(&self) -> u32 {
        22_050
    }

    fn synthesize(&self, text: &str) -> BoxFuture<'_, Result<Audio, ModelError>> {
        let voice = self.clone();
        let text = text.to_owned();
        Box::pin(async move { blocking(&self.id, move || voice.synthesize_blocking(&text)).await })
    }
}

/// Speaks with `primary` until it fails once, then with `fallback`: the sentence that failed is
/// spoken again by the fallback, and so is everything after it, so one call does not wait on a
/// failing provider sentence after sentence nor switch voices back and forth. Make one per call.
#[derive(Debug)]
pub struct FallbackVoice {
    primary: Arc<dyn TextToSpeech>,
    fallback: Arc<dyn TextToSpeech>,
    failed: AtomicBool,
}

impl FallbackVoice {
    pub fn new(primary: Arc<dyn TextToSpeech>, fallback: Arc<dyn TextToSpeech>) -> Self {
        Self { primary, fallback, failed: AtomicBool::new(false) }
    }

    /// True once the primary voice has failed and the fallback speaks.
    pub fn fell_back(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

impl TextToSpeech for FallbackVoice {
    fn voice_id(&self) -> &str {
        if self.fell_back() {
            self.fallback.voice_id()
        } else {
            self.primary.voice_id()
        }
    }

    fn sample_rate(&self) -> u32 {
        if self.fell_back() {
            self.fallback.sample_rate()
        } else {
            self.primary.sample_rate()
        }
    }

    fn synthesize(&self, text: &str) -> BoxFuture<'_, Result<Audio, ModelError>> {
        let text = text.to_owned();
        Box::pin(async move {
            if !self.fell_back() {
                match self.primary.synthesize(&text).await {
                    Ok(audio) => return Ok(audio),
                    // Text no voice can speak is the caller's mistake, not the provider's.
                    Err(error @ ModelError::InvalidRequest { .. }) => return Err(error),
                    Err(error) => {
                        tracing::warn!(
                            voice = self.primary.voice_id(),
                            fallback = self.fallback.voice_id(),
                            error = %error,
                            "the voice failed; speaking with the fallback voice from now on"
                        );
                        self.failed.store(true, Ordering::Relaxed);
                    }
                }
            }
            self.fallback.synthesize(&text).await
        })
    }
}

/// Runs `work` on tokio's blocking threads.
async fn blocking<T: Send + 'static>(
    model: &str,
    work: impl FnOnce() -> Result<T, ModelError> + Send + 'static,
) -> Result<T, ModelError> {
    tokio::task::spawn_blocking(work).await.map_err(|error| ModelError::Inference {
        model: model.to_owned(),
        reason: format!("the synthesis thread failed: {error}"),
    })?
}

/// Reads a mono 16-bit PCM WAV file (what `espeak-ng --stdout` writes). A data chunk whose
/// length is unknown (espeak-ng writes 0x7fffffff when streaming) runs to the end of the input.
pub fn parse_wav(bytes: &[u8]) -> Result<Audio, String> {
    let u16_at = |at: usize| bytes.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| bytes.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if bytes.get(0..4) != Some(b"RIFF") || bytes.get(8..12) != Some(b"WAVE") {
        return Err("not a RIFF/WAVE file".to_owned());
    }
    let mut at = 12;
    let mut format: Option<(u16, u16, u32, u16)> = None;
    while let (Some(id), Some(size)) = (bytes.get(at..at + 4), u32_at(at + 4)) {
        let body = at + 8;
        match id {
            b"fmt " => {
                let (Some(tag), Some(channels), Some(rate), Some(bits)) =
                    (u16_at(body), u16_at(body + 2), u32_at(body + 4), u16_at(body + 14))
                else {
                    return Err("truncated fmt chunk".to_owned());
                };
                format = Some((tag, channels, rate, bits));
            }
            b"data" => {
                let Some((tag, channels, rate, bits)) = format else {
                    return Err("data chunk before fmt chunk".to_owned());
                };
                if tag != 1 || channels != 1 || bits != 16 {
                    return Err(format!("unsupported WAV format {tag}, {channels} channels, {bits} bits"));
                }
                let end = body.saturating_add(size as usize).min(bytes.len());
                let data = bytes.get(body..end).unwrap_or_default();
                let samples = data
                    .chunks_exact(2)
                    .map(|pair| f32::from(i16::from_le_bytes([pair[0], pair[1]])) / 32_768.0)
                    .collect();
                return Ok(Audio { samples, sample_rate: rate });
            }
            _ => {}
        }
        at = body.saturating_add(size as usize).saturating_add(size as usize % 2);
    }
    Err("no data chunk".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(channels: u16, bits: u16, rate: u32, samples: &[i16], data_size: Option<u32>) -> Vec<u8> {
        let data: Vec<u8> = samples.iter().flat_map(|sample| sample.to_le_bytes()).collect();
        let mut bytes = b"RIFF".to_vec();
        bytes.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        bytes.extend_from_slice(b"WAVEfmt ");
        bytes.extend_from_slice(&16_u32.to_le_bytes());
        bytes.extend_from_slice(&1_u16.to_le_bytes());
        bytes.extend_from_slice(&channels.to_le_bytes());
        bytes.extend_from_slice(&rate.to_le_bytes());
        bytes.extend_from_slice(&(rate * 2).to_le_bytes());
        bytes.extend_from_slice(&2_u16.to_le_bytes());
        bytes.extend_from_slice(&bits.to_le_bytes());
        bytes.extend_from_slice(b"LIST");
        bytes.extend_from_slice(&3_u32.to_le_bytes());
        bytes.extend_from_slice(b"abc\0");
        bytes.extend_from_slice(b"data");
        bytes.extend_from_slice(&data_size.unwrap_or(data.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&data);
        bytes
    }

    #[test]
    fn wav_samples_are_read_past_other_chunks() {
        let audio = parse_wav(&wav(1, 16, 22_050, &[0, 16_384, -32_768], None)).unwrap();
        assert_eq!(audio, Audio { samples: vec![0.0, 0.5, -1.0], sample_rate: 22_050 });
        // A streamed WAV's unknown data length runs to the end.
        let audio = parse_wav(&wav(1, 16, 22_050, &[1, 2], Some(0x7fff_ffff))).unwrap();
        assert_eq!(audio.samples.len(), 2);
    }

    #[test]
    fn odd_wavs_are_refused_with_a_reason() {
        assert!(parse_wav(b"not audio").unwrap_err().contains("RIFF"));
        assert!(parse_wav(&wav(2, 16, 22_050, &[0, 0], None)).unwrap_err().contains("2 channels"));
        let mut truncated = wav(1, 16, 22_050, &[0], None);
        truncated.truncate(30);
        assert!(parse_wav(&truncated).is_err());
    }

    #[test]
    fn a_missing_program_names_its_package() {
        let error = run_program("parley-no-such-program", &[], "hello").unwrap_err();
        assert!(matches!(error, ModelError::MissingProgram { .. }), "{error:?}");
        let error =
            ModelError::MissingProgram { program: ESPEAK_PROGRAM.to_owned(), package: ESPEAK_PACKAGE.to_owned() };
        assert!(error.to_string().contains("Debian package espeak-ng"), "{error}");
    }

    #[test]
    fn text_is_checked_before_synthesis() {
        assert_eq!(checked_text("v", "  Hello.  ").unwrap(), "Hello.");
        assert!(checked_text("v", " \n ").is_err());
        assert!(checked_text("v", &"é".repeat(MAX_TEXT_CHARS)).is_ok());
        assert!(checked_text("v", &"é".repeat(MAX_TEXT_CHARS + 1)).is_err());
        assert!(matches!(phonemize("en-us --path=/", "x"), Err(ModelError::InvalidRequest { .. })));
    }
}

#[cfg(feature = "onnx")]
mod piper {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};

    use ort::environment::Environment;
    use ort::session::Session;
    use ort::value::{Tensor, TensorElementType};

    use super::{blocking, checked_text, phonemize, Audio, TextToSpeech};
    use crate::error::ModelError;
    use crate::llm::BoxFuture;
    use crate::onnx::{environment, expect_tensor, load_session};
    use crate::packages::{installed_dir, PIPER_VOICE_PACKAGE};

    /// The voice's model file inside the installed package directory.
    pub const MODEL_FILE: &str = "en_US-joe-medium.onnx";
    /// The voice's configuration inside the installed package directory.
    pub const CONFIG_FILE: &str = "en_US-joe-medium.onnx.json";

    /// A Piper voice, loaded once and shared; one synthesis runs at a time.
    #[derive(Debug, Clone)]
    pub struct PiperVoice {
        inner: Arc<Inner>,
    }

    #[derive(Debug)]
    struct Inner {
        id: String,
        path: PathBuf,
        sample_rate: u32,
        espeak_voice: String,
        /// noise_scale, length_scale, noise_w.
        scales: [f32; 3],
        phoneme_ids: HashMap<char, Vec<i64>>,
        session: Mutex<Session>,
    }

    #[derive(serde::Deserialize)]
    struct Config {
        audio: AudioConfig,
        espeak: EspeakConfig,
        inference: InferenceConfig,
        phoneme_id_map: HashMap<String, Vec<i64>>,
        #[serde(default)]
        num_speakers: Option<u32>,
    }

    #[derive(serde::Deserialize)]
    struct AudioConfig {
        sample_rate: u32,
    }

    #[derive(serde::Deserialize)]
    struct EspeakConfig {
        voice: String,
    }

    #[derive(serde::Deserialize)]
    struct InferenceConfig {
        noise_scale: f32,
        length_scale: f32,
        noise_w: f32,
    }

    impl PiperVoice {
        /// Loads the installed [`PIPER_VOICE_PACKAGE`] from the model cache under `models_dir`,
        /// with the ONNX runtime from the same cache; `threads` is how many threads one synthesis uses.
        pub fn installed(models_dir: &Path, threads: usize) -> Result<Self, ModelError> {
            let environment = environment(models_dir)?;
            let dir = installed_dir(models_dir, &PIPER_VOICE_PACKAGE)?;
            Self::load(&environment, &dir.join(MODEL_FILE), &dir.join(CONFIG_FILE), threads)
        }

        /// Loads the voice model `onnx` with its configuration `json`, checking the model's
        /// inputs (`input`, `input_lengths`, `scales`) and that the voice has one speaker.
        pub fn load(environment: &Environment, onnx: &Path, json: &Path, threads: usize) -> Result<Self, ModelError> {
            let invalid = |reason: String| ModelError::InvalidModel { path: json.to_path_buf(), reason };
            let text = std::fs::read_to_string(json).map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => ModelError::MissingModelFile { path: json.to_path_buf() },
                _ => ModelError::io(json, error),
            })?;
            let config: Config = serde_json::from_str(&text).map_err(|error| invalid(error.to_string()))?;
            if config.num_speakers.unwrap_or(1) != 1 {
                return Err(invalid(format!(
                    "{} speakers; only single-speaker voices are supported",
                    config.num_speakers.unwrap_or(1)
                )));
            }
            if config.audio.sample_rate == 0 {
                return Err(invalid("sample_rate is 0".to_owned()));
            }
            let mut phoneme_ids = HashMap::new();
            for (phoneme, ids) in config.phoneme_id_map {
                let mut characters = phoneme.chars();
                match (characters.next(), characters.next()) {
                    (Some(character), None) if !ids.is_empty() => {
                        phoneme_ids.insert(character, ids);
                    }
                    _ => {
                        return Err(invalid(format!("phoneme_id_map entry `{phoneme}` is not one character with ids")))
                    }
                }
            }
            for marker in ['^', '_', '$'] {
                if !phoneme_ids.contains_key(&marker) {
                    return Err(invalid(format!("phoneme_id_map has no `{marker}`")));
                }
            }

            let session = load_session(environment, onnx, threads)?;
            let inputs = session.inputs();
            expect_tensor(onnx, "input", inputs, "input", TensorElementType::Int64, 2)?;
            expect_tensor(onnx, "input", inputs, "input_lengths", TensorElementType::Int64, 1)?;
            expect_tensor(onnx, "input", inputs, "scales", TensorElementType::Float32, 1)?;
            if session.outputs().is_empty() {
                return Err(ModelError::InvalidModel {
                    path: onnx.to_path_buf(),
                    reason: "the model has no output".to_owned(),
                });
            }
            let name = onnx.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default();
            Ok(Self {
                inner: Arc::new(Inner {
                    id: format!("piper:{name}"),
                    path: onnx.to_path_buf(),
                    sample_rate: config.audio.sample_rate,
                    espeak_voice: config.espeak.voice,
                    scales: [config.inference.noise_scale, config.inference.length_scale, config.inference.noise_w],
                    phoneme_ids,
                    session: Mutex::new(session),
                }),
            })
        }

        /// The espeak-ng voice the phonemes come from, e.g. `en-us`.
        pub fn espeak_voice(&self) -> &str {
            &self.inner.espeak_voice
        }

        /// The phoneme ids of `ipa` (espeak-ng's output for `text`): `^`, then each known
        /// character followed by `_`, then `$`. espeak-ng writes one line per clause and drops
        /// the punctuation that ended it; when the clause marks in `text` line up with the lines,
        /// each line gets its mark back (the voice pauses and intones by them), otherwise clauses
        /// are joined by a space.
        pub fn phoneme_ids(&self, ipa: &str, text: &str) -> Vec<i64> {
            let map = &self.inner.phoneme_ids;
            let lines: Vec<&str> = ipa.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
            let marks = clause_marks(text);
            let marks: Vec<Option<char>> = if marks.len() == lines.len() {
                marks.into_iter().map(Some).collect()
            } else if marks.len() + 1 == lines.len() {
                marks.into_iter().map(Some).chain([None]).collect()
            } else {
                vec![None; lines.len()]
            };
            let mut phonemes = String::new();
            for (index, (line, mark)) in lines.iter().zip(marks).enumerate() {
                phonemes.push_str(line);
                phonemes.extend(mark);
                if index + 1 < lines.len() {
                    phonemes.push(' ');
                }
            }
            let pad = map.get(&'_').map(Vec::as_slice).unwrap_or_default();
            let mut ids = map.get(&'^').cloned().unwrap_or_default();
            ids.extend_from_slice(pad);
            for phoneme in phonemes.chars().filter_map(|character| map.get(&character)) {
                ids.extend_from_slice(phoneme);
                ids.extend_from_slice(pad);
            }
            ids.extend(map.get(&'$').cloned().unwrap_or_default());
            ids
        }

        /// Synthesises on the calling thread.
        pub fn synthesize_blocking(&self, text: &str) -> Result<Audio, ModelError> {
            let inner = &self.inner;
            let text = checked_text(&inner.id, text)?;
            let ipa = phonemize(&inner.espeak_voice, text)?;
            let ids = self.phoneme_ids(&ipa, text);
            let failed = |reason: String| ModelError::Inference { model: inner.path.display().to_string(), reason };
            if ids.len() <= 3 {
                return Err(ModelError::InvalidRequest {
                    model: inner.id.clone(),
                    reason: "the text has nothing to pronounce".to_owned(),
                });
            }
            let length = ids.len() as i64;
            let input = Tensor::from_array(([1_i64, length], ids)).map_err(|error| failed(error.to_string()))?;
            let lengths = Tensor::from_array(([1_i64], vec![length])).map_err(|error| failed(error.to_string()))?;
            let scales =
                Tensor::from_array(([3_i64], inner.scales.to_vec())).map_err(|error| failed(error.to_string()))?;
            let mut session = inner.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let outputs = session
                .run(ort::inputs!["input" => input, "input_lengths" => lengths, "scales" => scales])
                .map_err(|error| failed(error.to_string()))?;
            let (_, samples) = outputs[0].try_extract_tensor::<f32>().map_err(|error| failed(error.to_string()))?;
            let mut samples = samples.to_vec();
            drop(outputs);
            drop(session);
            // Keep the waveform within −1…1 without changing quieter output.
            let peak = samples.iter().fold(0.0_f32, |peak, sample| peak.max(sample.abs()));
            if peak > 1.0 {
                samples.iter_mut().for_each(|sample| *sample /= peak);
            }
            Ok(Audio { samples, sample_rate: inner.sample_rate })
        }
    }

    /// The punctuation marks that end clauses in `text` (followed by a space or the end), in order.
    fn clause_marks(text: &str) -> Vec<char> {
        let characters: Vec<char> = text.chars().collect();
        characters
            .iter()
            .enumerate()
            .filter(|(index, character)| {
                ",.?!;:".contains(**character) && characters.get(index + 1).is_none_or(|next| next.is_whitespace())
            })
            .map(|(_, character)| *character)
            .collect()
    }

    impl TextToSpeech for PiperVoice {
        fn voice_id(&self) -> &str {
            &self.inner.id
        }

        fn sample_rate(&self) -> u32 {
            self.inner.sample_rate
        }

        fn synthesize(&self, text: &str) -> BoxFuture<'_, Result<Audio, ModelError>> {
            let voice = self.clone();
            let text = text.to_owned();
            Box::pin(async move { blocking(&self.inner.id, move || voice.synthesize_blocking(&text)).await })
        }
    }
}
