//! Parley's own voice heard by Parley's own ears: the Piper voice speaks a sentence, the
//! streaming resampler brings it to 16 kHz, and Whisper tiny.en transcribes it back. The word
//! error rate stays low, so the synthesis, the resampler and the recogniser agree end to end.
//!
//! Skips loudly when the models are not installed, unless `PARLEY_REQUIRE_MODELS` is set (as
//! `make test` does): then it fails.
#![cfg(all(feature = "onnx", feature = "whisper"))]

use std::path::PathBuf;
use std::sync::Arc;

use parley_models::audio::StreamResampler;
use parley_models::tts::PiperVoice;
use parley_models::{
    installed_dir, SpeechToText, TranscribeOptions, WhisperOptions, WhisperStt, PIPER_VOICE_PACKAGE, STT_SAMPLE_RATE,
    WHISPER_GGML_FILE, WHISPER_TINY_EN_PACKAGE,
};

const SENTENCE: &str = "Our office opens early in the morning and closes late in the afternoon on weekdays.";

fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TEST_MODELS_DIR") {
        return PathBuf::from(dir);
    }
    PathBuf::from(std::env::var_os("HOME").expect("HOME is not set")).join(".cache/parley/models")
}

/// Lower-case words without punctuation.
fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|word| word.chars().filter(|c| c.is_alphanumeric()).collect::<String>().to_lowercase())
        .filter(|word| !word.is_empty())
        .collect()
}

/// Word-level edit distance over the reference's length.
fn word_error_rate(reference: &str, hypothesis: &str) -> f64 {
    let (reference, hypothesis) = (words(reference), words(hypothesis));
    let mut previous: Vec<usize> = (0..=hypothesis.len()).collect();
    for (i, expected) in reference.iter().enumerate() {
        let mut current = vec![i + 1; hypothesis.len() + 1];
        for (j, actual) in hypothesis.iter().enumerate() {
            current[j + 1] =
                (previous[j] + usize::from(expected != actual)).min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[hypothesis.len()] as f64 / reference.len().max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whisper_transcribes_what_piper_says() {
    let dir = models_dir();
    let installed = [&PIPER_VOICE_PACKAGE, &WHISPER_TINY_EN_PACKAGE]
        .iter()
        .map(|package| installed_dir(&dir, package))
        .collect::<Result<Vec<_>, _>>();
    let whisper_dir = match installed {
        Ok(dirs) => dirs[1].clone(),
        Err(error) if std::env::var_os("PARLEY_REQUIRE_MODELS").is_none() => {
            eprintln!("*** SPEECH ROUND TRIP SKIPPED: {error}; run `make models` ***");
            return;
        }
        Err(error) => panic!("PARLEY_REQUIRE_MODELS is set but a voice model is missing: {error}"),
    };
    let voice = PiperVoice::installed(&dir, 2).expect("the Piper voice loads");
    let spoken = voice.synthesize_blocking(SENTENCE).expect("Piper speaks");
    let audio = StreamResampler::convert(&spoken.samples, spoken.sample_rate, STT_SAMPLE_RATE).expect("resampling");
    let stt = WhisperStt::load(
        &whisper_dir.join(WHISPER_GGML_FILE),
        WhisperOptions { threads: 2, workers: 1, ..WhisperOptions::default() },
    )
    .expect("whisper loads");
    let options = TranscribeOptions { language: Some("en".into()), ..TranscribeOptions::default() };
    let transcript = stt.transcribe(Arc::from(audio), options).await.expect("whisper transcribes");
    let error_rate = word_error_rate(SENTENCE, &transcript.text);
    eprintln!("heard {:?}: word error rate {error_rate:.3}", transcript.text);
    assert!(error_rate <= 0.15, "Whisper heard {:?} for {SENTENCE:?} (WER {error_rate:.3})", transcript.text);
    assert_eq!(transcript.language, "en");
}
