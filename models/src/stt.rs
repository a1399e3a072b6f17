//! Speech-to-text: the [`SpeechToText`] trait voice calls transcribe caller audio with, its
//! request and result types, and input validation shared by every engine. The local engine,
//! [`WhisperStt`] (feature `whisper`), runs whisper.cpp on a ggml model made by the install step.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::error::ModelError;
use crate::packages::{installed_dir, WHISPER_GGML_FILE, WHISPER_MODELS};

#[cfg(feature = "whisper")]
mod whisper;
#[cfg(feature = "whisper")]
pub use whisper::{WhisperOptions, WhisperStt, ABORTABLE_SAMPLES};

/// The sample rate every [`SpeechToText`] engine takes audio at: 16 kHz mono `f32` in `[-1, 1]`.
pub const STT_SAMPLE_RATE: u32 = 16_000;

/// How one transcription should run.
#[derive(Debug, Clone, Default)]
pub struct TranscribeOptions {
    /// The spoken language as an ISO 639-1 code (`en`, or a tag such as `en-US` whose primary
    /// subtag is used), typically from the agent's settings. `None` detects it (multilingual
    /// models; English-only models always transcribe English).
    pub language: Option<String>,
    /// Receives each segment as soon as the engine has decoded it, before the whole transcript
    /// is ready, so a caller can show partial text while a long clip is still being processed.
    pub partial: Option<tokio::sync::mpsc::UnboundedSender<Segment>>,
}

/// A stretch of recognised speech with its position in the audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Start, in milliseconds from the start of the audio.
    pub start_ms: u64,
    /// End, in milliseconds from the start of the audio.
    pub end_ms: u64,
    /// The recognised text, trimmed.
    pub text: String,
}

/// The result of a transcription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    /// All segments' text joined with single spaces.
    pub text: String,
    /// The language transcribed (ISO 639-1), as asked or as detected.
    pub language: String,
    /// The segments in order.
    pub segments: Vec<Segment>,
}

/// Turns speech into text. Implementations share one loaded model between all callers.
pub trait SpeechToText: Send + Sync + std::fmt::Debug {
    /// A short name of the model, for logs and errors.
    fn model_id(&self) -> &str;

    /// Transcribes `audio` (16 kHz mono, see [`STT_SAMPLE_RATE`]). The request is validated and
    /// queued when this is called: invalid audio or a full queue fail at once (the latter with
    /// [`ModelError::Busy`]). Dropping the returned future cancels the transcription.
    fn transcribe(
        &self,
        audio: Arc<[f32]>,
        options: TranscribeOptions,
    ) -> BoxFuture<'static, Result<Transcript, ModelError>>;
}

/// Checks that `audio` is something to transcribe: not empty, only finite samples, at most
/// `max_seconds` long at [`STT_SAMPLE_RATE`].
pub fn validate_audio(model: &str, audio: &[f32], max_seconds: f32) -> Result<(), ModelError> {
    let invalid = |reason: String| ModelError::InvalidRequest { model: model.to_owned(), reason };
    if audio.is_empty() {
        return Err(invalid("the audio is empty".to_owned()));
    }
    if let Some(index) = audio.iter().position(|sample| !sample.is_finite()) {
        return Err(invalid(format!("audio sample {index} is not a finite number")));
    }
    let seconds = audio.len() as f64 / STT_SAMPLE_RATE as f64;
    if seconds > max_seconds as f64 {
        return Err(invalid(format!(
            "the audio is {seconds:.1} s long; at most {max_seconds} s can be transcribed at once"
        )));
    }
    Ok(())
}

/// The installed ggml file of the Whisper model named `name` as an agent's
/// `voice.speech_to_text_model` names it (`whisper-tiny.en`, `whisper-base`; see
/// [`WHISPER_MODELS`]), for [`WhisperStt::load`](crate::stt::WhisperStt). An unknown name is an
/// [`ModelError::InvalidRequest`] listing the known ones; a model that is not installed is
/// [`ModelError::NotInstalled`], saying how to install it.
pub fn installed_whisper(models_dir: &Path, name: &str) -> Result<PathBuf, ModelError> {
    let Some((_, package)) = WHISPER_MODELS.iter().find(|(known, _)| *known == name) else {
        let known: Vec<&str> = WHISPER_MODELS.iter().map(|(known, _)| *known).collect();
        return Err(ModelError::InvalidRequest {
            model: name.to_owned(),
            reason: format!("no such speech-to-text model; the local models are {}", known.join(", ")),
        });
    };
    Ok(installed_dir(models_dir, package)?.join(WHISPER_GGML_FILE))
}

/// The primary subtag of a language tag, lowercased (`en-US` → `en`).
pub fn primary_language(tag: &str) -> String {
    tag.trim().split(['-', '_']).next().unwrap_or_default().to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_validation_names_the_problem() {
        let error = validate_audio("m", &[], 10.0).unwrap_err();
        assert!(error.to_string().contains("empty"), "{error}");
        let error = validate_audio("m", &[0.0, f32::NAN], 10.0).unwrap_err();
        assert!(error.to_string().contains("sample 1"), "{error}");
        let error = validate_audio("m", &[0.0, f32::INFINITY], 10.0).unwrap_err();
        assert!(error.to_string().contains("finite"), "{error}");
        let long = vec![0.0; STT_SAMPLE_RATE as usize * 3];
        let error = validate_audio("m", &long, 2.5).unwrap_err();
        assert!(error.to_string().contains("3.0 s"), "{error}");
        validate_audio("m", &long, 3.0).unwrap();
    }

    #[test]
    fn whisper_model_names_map_to_their_installed_files() {
        let models = tempfile::tempdir().unwrap();
        let error = installed_whisper(models.path(), "whisper-large").unwrap_err();
        assert!(matches!(error, ModelError::InvalidRequest { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains("whisper-large") && message.contains("whisper-tiny.en, whisper-base"), "{message}");
        let error = installed_whisper(models.path(), "whisper-base").unwrap_err();
        assert!(matches!(error, ModelError::NotInstalled { .. }), "{error:?}");
        assert!(error.to_string().contains(&models.path().join("whisper-base").display().to_string()), "{error}");
        // An installed model: its stamp, its members and the converted file.
        let dir = models.path().join("whisper-tiny-en");
        let package = crate::packages::WHISPER_TINY_EN_PACKAGE;
        for (_, member) in package.members {
            let path = dir.join(member);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"").unwrap();
        }
        std::fs::write(dir.join(WHISPER_GGML_FILE), b"").unwrap();
        std::fs::write(dir.join(crate::packages::INSTALLED_FILE), package.stamp()).unwrap();
        assert_eq!(installed_whisper(models.path(), "whisper-tiny.en").unwrap(), dir.join(WHISPER_GGML_FILE));
    }

    #[test]
    fn language_tags_reduce_to_their_primary_subtag() {
        assert_eq!(primary_language("en-US"), "en");
        assert_eq!(primary_language(" DE "), "de");
        assert_eq!(primary_language("pt_BR"), "pt");
    }
}
