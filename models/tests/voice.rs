//! The voice engines with the real models from the model cache: the Piper voice speaks a
//! sentence, Silero VAD hears speech in it (resampled to 16 kHz) and none in silence or faint
//! noise, the end-of-turn detector turns that into one turn, and the espeak-ng fallback speaks.
//!
//! When the model cache lacks the voice packages (or espeak-ng is not installed) these tests say
//! so loudly and pass, unless `PARLEY_REQUIRE_MODELS` is set (`make test` sets it, after
//! installing the models), in which case they fail.
#![cfg(feature = "onnx")]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use parley_models::audio::StreamResampler;
use parley_models::tts::{Audio, EspeakVoice, PiperVoice, TextToSpeech};
use parley_models::vad::{EndOfTurn, EndOfTurnOptions, SileroVad, TurnEvent, FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE};
use parley_models::{installed_dir, ModelError, ONNX_RUNTIME_PACKAGE, PIPER_VOICE_PACKAGE, VAD_PACKAGE};

const SENTENCE: &str = "Thank you for calling. Your table for four is booked for seven o'clock tonight.";

fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TEST_MODELS_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").expect("HOME is not set; set TEST_MODELS_DIR to the models directory");
    PathBuf::from(home).join(".cache/parley/models")
}

/// The models directory when the voice packages and espeak-ng are there; otherwise `None` after
/// a loud notice, or a failure when `PARLEY_REQUIRE_MODELS` is set.
fn voice_models() -> Option<PathBuf> {
    static CHECKED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let checked = CHECKED.get_or_init(|| {
        let dir = models_dir();
        for package in [&ONNX_RUNTIME_PACKAGE, &VAD_PACKAGE, &PIPER_VOICE_PACKAGE] {
            installed_dir(&dir, package).map_err(|error| error.to_string())?;
        }
        match std::process::Command::new("espeak-ng").arg("--version").output() {
            Ok(output) if output.status.success() => Ok(dir),
            _ => Err("espeak-ng is not installed (Debian package espeak-ng; `make setup`)".to_owned()),
        }
    });
    match checked {
        Ok(dir) => Some(dir.clone()),
        Err(reason) if std::env::var_os("PARLEY_REQUIRE_MODELS").is_some() => {
            panic!("PARLEY_REQUIRE_MODELS is set but the voice models cannot run: {reason}")
        }
        Err(reason) => {
            eprintln!("**********************************************************************");
            eprintln!("*** VOICE MODEL TEST SKIPPED: {reason}");
            eprintln!("*** run `make models` (or set PARLEY_REQUIRE_MODELS=1 to fail instead)");
            eprintln!("**********************************************************************");
            None
        }
    }
}

fn piper() -> Option<PiperVoice> {
    static VOICE: OnceLock<PiperVoice> = OnceLock::new();
    let dir = voice_models()?;
    Some(VOICE.get_or_init(|| PiperVoice::installed(&dir, 2).expect("the Piper voice loads")).clone())
}

fn vad() -> Option<SileroVad> {
    static VAD: OnceLock<SileroVad> = OnceLock::new();
    let dir = voice_models()?;
    Some(VAD.get_or_init(|| SileroVad::installed(&dir).expect("Silero VAD loads")).clone())
}

/// The sentence spoken by Piper, synthesised once per test process.
fn spoken_sentence() -> Option<Audio> {
    static AUDIO: OnceLock<Audio> = OnceLock::new();
    let voice = piper()?;
    Some(
        AUDIO
            .get_or_init(|| {
                let started = Instant::now();
                let audio = voice.synthesize_blocking(SENTENCE).expect("Piper speaks");
                eprintln!(
                    "Piper synthesised {:.2} s of speech in {:.2} s",
                    audio.duration().as_secs_f64(),
                    started.elapsed().as_secs_f64()
                );
                audio
            })
            .clone(),
    )
}

/// Speech probabilities of 16 kHz audio, one per frame, from a fresh stream.
fn probabilities(vad: &SileroVad, samples: &[f32]) -> Vec<f32> {
    let mut stream = vad.stream();
    stream.push(samples).expect("VAD runs")
}

#[tokio::test]
async fn piper_speaks_a_sentence_of_plausible_length() {
    let Some(voice) = piper() else { return };
    assert_eq!(voice.sample_rate(), 22_050);
    assert_eq!(voice.espeak_voice(), "en-us");
    let started = Instant::now();
    let audio = voice.synthesize(SENTENCE).await.expect("Piper speaks");
    eprintln!("synthesis took {:.2} s (async path)", started.elapsed().as_secs_f64());
    assert_eq!(audio.sample_rate, 22_050);
    // 14 words: at 2 to 4 words a second, 3.5 to 7 s; allow a wide margin either side.
    let seconds = audio.duration().as_secs_f64();
    assert!((2.5..=10.0).contains(&seconds), "{seconds} s of audio for a 14-word sentence");
    assert!(audio.rms() > 0.02, "the audio is (nearly) silent: rms {}", audio.rms());
    assert!(audio.samples.iter().all(|sample| sample.is_finite() && sample.abs() <= 1.0));
}

#[test]
fn phoneme_ids_frame_the_phonemes_and_keep_clause_marks() {
    let Some(voice) = piper() else { return };
    // `^`=1, `_`=0, `$`=2, space=3, `,`=8, `.`=10, `h`=20, `ə`=59 in this voice's map.
    let ids = voice.phoneme_ids("hə\nhə\n", "Ha, ha.");
    assert_eq!(ids, vec![1, 0, 20, 0, 59, 0, 8, 0, 3, 0, 20, 0, 59, 0, 10, 0, 2]);
    // Marks that do not line up with espeak-ng's clauses are left out; unknown characters skipped.
    let ids = voice.phoneme_ids("h\u{200d}ə\n", "Dr. Who, hm.");
    assert_eq!(ids, vec![1, 0, 20, 0, 59, 0, 2]);
}

#[tokio::test]
async fn empty_and_overlong_text_is_refused_with_a_reason() {
    let Some(voice) = piper() else { return };
    let error = voice.synthesize("   ").await.unwrap_err();
    assert!(matches!(error, ModelError::InvalidRequest { .. }), "{error:?}");
    assert!(error.to_string().contains("no text"), "{error}");
    let error = voice.synthesize(&"word ".repeat(1_000)).await.unwrap_err();
    assert!(error.to_string().contains("at most 2000"), "{error}");
    // Text that looks like an option is spoken, not obeyed: it goes to espeak-ng's standard input.
    let audio = voice.synthesize("--version -h").await.expect("spoken as words");
    assert!(audio.rms() > 0.01);
}

#[test]
fn the_vad_hears_speech_in_the_sentence_and_none_in_silence_or_faint_noise() {
    let (Some(vad), Some(audio)) = (vad(), spoken_sentence()) else { return };
    let speech = StreamResampler::convert(&audio.samples, audio.sample_rate, SAMPLE_RATE).unwrap();
    let speech_probabilities = probabilities(&vad, &speech);
    let voiced = speech_probabilities.iter().filter(|probability| **probability > 0.5).count();
    assert!(
        voiced * 2 > speech_probabilities.len(),
        "only {voiced} of {} frames of speech were heard as speech: {speech_probabilities:?}",
        speech_probabilities.len()
    );

    let silence = vec![0.0_f32; SAMPLE_RATE as usize * 2];
    let peak = probabilities(&vad, &silence).into_iter().fold(0.0_f32, f32::max);
    assert!(peak < 0.2, "silence scored {peak}");

    // Faint white noise (about −50 dBFS) from a fixed linear congruential generator.
    let mut seed = 0x2545_f491_u32;
    let noise: Vec<f32> = (0..SAMPLE_RATE as usize * 2)
        .map(|_| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 24) as f32 * 0.006 - 0.003
        })
        .collect();
    let peak = probabilities(&vad, &noise).into_iter().fold(0.0_f32, f32::max);
    assert!(peak < 0.3, "faint noise scored {peak}");
}

#[test]
fn speech_then_silence_is_one_turn_and_it_ends_after_the_silence_window() {
    let (Some(vad), Some(audio)) = (vad(), spoken_sentence()) else { return };
    let speech = StreamResampler::convert(&audio.samples, audio.sample_rate, SAMPLE_RATE).unwrap();
    let lead = SAMPLE_RATE as usize / 2;
    let mut samples = vec![0.0_f32; lead];
    samples.extend_from_slice(&speech);
    samples.extend(vec![0.0_f32; SAMPLE_RATE as usize * 2]);

    let silence_ms = 800;
    let mut turn = EndOfTurn::new(EndOfTurnOptions { silence_ms, ..EndOfTurnOptions::default() }).unwrap();
    let mut stream = vad.stream();
    let mut events = Vec::new();
    // Fed in 20 ms pieces, as a call delivers it.
    for (piece_index, piece) in samples.chunks(320).enumerate() {
        for probability in stream.push(piece).unwrap() {
            if let Some(event) = turn.push(probability) {
                events.push((event, piece_index));
            }
        }
    }
    assert_eq!(events.len(), 2, "{events:?}");
    let TurnEvent::SpeechStarted { at_ms: start } = events[0].0 else { panic!("{events:?}") };
    let TurnEvent::SpeechEnded { at_ms: end, speech_ms } = events[1].0 else { panic!("{events:?}") };
    // The turn starts near the end of the lead-in silence and ends near the end of the speech.
    let speech_end_ms = ((lead + speech.len()) * 1000 / SAMPLE_RATE as usize) as u64;
    assert!(start.abs_diff(500) <= 200, "speech started at {start} ms");
    assert!(end.abs_diff(speech_end_ms) <= 400, "speech ended at {end} ms, audio at {speech_end_ms} ms");
    assert_eq!(speech_ms, end - start);
    // The end is reported once the silence window has passed, not before.
    let reported_ms = (events[1].1 as u64 + 1) * 20;
    assert!(reported_ms >= end + u64::from(silence_ms), "reported at {reported_ms} ms");
    assert!(reported_ms <= end + u64::from(silence_ms) + 2 * u64::from(FRAME_MS) + 20, "reported at {reported_ms} ms");
}

#[test]
fn a_frame_of_the_wrong_size_is_refused() {
    let Some(vad) = vad() else { return };
    let mut stream = vad.stream();
    let error = stream.frame_probability(&[0.0; 480]).unwrap_err();
    assert!(error.to_string().contains(&FRAME_SAMPLES.to_string()), "{error}");
    assert!(stream.frame_probability(&[0.0; FRAME_SAMPLES]).is_ok());
}

#[test]
fn a_model_with_other_inputs_is_refused_at_load() {
    let Some(dir) = voice_models() else { return };
    let environment = parley_models::onnx::environment(&dir).unwrap();
    let piper = installed_dir(&dir, &PIPER_VOICE_PACKAGE).unwrap().join("en_US-joe-medium.onnx");
    let error = SileroVad::load(&environment, &piper).unwrap_err();
    assert!(matches!(error, ModelError::InvalidModel { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("en_US-joe-medium.onnx")
            && message.contains("input `input` is")
            && message.contains("expected a rank-2 f32 tensor"),
        "{message}"
    );
    let missing = dir.join("no-such-model.onnx");
    assert!(matches!(SileroVad::load(&environment, &missing), Err(ModelError::MissingModelFile { .. })));
}

#[tokio::test]
async fn the_espeak_fallback_speaks() {
    let Some(_) = voice_models() else { return };
    let voice = EspeakVoice::new("en-us").expect("espeak-ng is installed");
    let audio = voice.synthesize(SENTENCE).await.expect("espeak-ng speaks");
    assert_eq!(audio.sample_rate, 22_050);
    let seconds = audio.duration().as_secs_f64();
    assert!((2.5..=12.0).contains(&seconds), "{seconds} s");
    assert!(audio.rms() > 0.02, "rms {}", audio.rms());
    let error = voice.synthesize("").await.unwrap_err();
    assert!(matches!(error, ModelError::InvalidRequest { .. }), "{error:?}");
    assert!(matches!(EspeakVoice::new("en-us; rm -rf /"), Err(ModelError::InvalidRequest { .. })));
}
