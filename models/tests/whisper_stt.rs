//! The real speech-to-text models (Whisper tiny.en and the multilingual Whisper base, converted
//! from CTranslate2 to ggml by the install step) end to end: the converted files' headers and
//! tensors, the converter's errors on broken input, transcription of speech synthesised with
//! espeak-ng at test time (scored by word error rate), language detection by the multilingual
//! model, the shared worker queue (concurrency, a full queue, cancellation), partial segments and
//! input validation.
//!
//! A model that is not installed skips these tests with a loud message, unless
//! `PARLEY_REQUIRE_MODELS` is set (as `make test` does after installing the models): then it fails.
#![cfg(feature = "whisper")]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parley_models::whisper_convert::{convert_ct2_to_ggml, GGML_MAGIC};
use parley_models::{
    installed_dir, installed_whisper, ModelError, SpeechToText, TranscribeOptions, WhisperOptions, WhisperStt,
    STT_SAMPLE_RATE, WHISPER_GGML_FILE, WHISPER_TINY_EN_PACKAGE,
};

const ANSWER_TIMEOUT: Duration = Duration::from_secs(180);

const SENTENCE: &str = "The quick brown fox jumps over the lazy dog. Please call me back tomorrow morning.";

fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TEST_MODELS_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").expect("HOME is not set; set TEST_MODELS_DIR to the models directory");
    PathBuf::from(home).join(".cache/parley/models")
}

/// The installed ggml file of the Whisper model `name`, or `None` (after a loud message) when it
/// is missing and the models are not required.
fn installed_model(name: &str) -> Option<PathBuf> {
    match installed_whisper(&models_dir(), name) {
        Ok(path) => Some(path),
        Err(error) if std::env::var_os("PARLEY_REQUIRE_MODELS").is_none() => {
            eprintln!("SKIPPED: the speech-to-text model {name} is not installed ({error}); run `make models`");
            None
        }
        Err(error) => {
            panic!("the speech-to-text model {name} is not installed: {error}\nrun `make models` to install it")
        }
    }
}

/// The installed model directory, or `None` (after a loud message) when it is missing and the
/// models are not required.
fn model_dir() -> Option<PathBuf> {
    match installed_dir(&models_dir(), &WHISPER_TINY_EN_PACKAGE) {
        Ok(dir) => Some(dir),
        Err(error) if std::env::var_os("PARLEY_REQUIRE_MODELS").is_none() => {
            eprintln!("SKIPPED: the speech-to-text model is not installed ({error}); run `make models`");
            None
        }
        Err(error) => panic!("the speech-to-text model is not installed: {error}\nrun `make models` to install it"),
    }
}

fn load(options: WhisperOptions) -> Option<WhisperStt> {
    let path = model_dir()?.join(WHISPER_GGML_FILE);
    Some(WhisperStt::load(&path, options).unwrap_or_else(|error| panic!("cannot load {}: {error}", path.display())))
}

fn shared() -> Option<Arc<WhisperStt>> {
    static MODEL: OnceLock<Option<Arc<WhisperStt>>> = OnceLock::new();
    MODEL
        .get_or_init(|| load(WhisperOptions { threads: 2, workers: 2, ..WhisperOptions::default() }).map(Arc::new))
        .clone()
}

async fn transcribe(
    stt: &dyn SpeechToText,
    audio: Arc<[f32]>,
    options: TranscribeOptions,
) -> Result<parley_models::Transcript, ModelError> {
    tokio::time::timeout(ANSWER_TIMEOUT, stt.transcribe(audio, options)).await.expect("transcription timed out")
}

// ---------- audio helpers ----------

/// Samples of a mono WAV file (16-bit PCM or 32-bit float) and its sample rate.
fn read_wav(bytes: &[u8]) -> (Vec<f32>, u32) {
    assert!(bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WAVE", "not a WAV file");
    let mut position = 12;
    let (mut format, mut channels, mut rate, mut bits) = (0u16, 0u16, 0u32, 0u16);
    while position + 8 <= bytes.len() {
        let id = &bytes[position..position + 4];
        let size = u32::from_le_bytes(bytes[position + 4..position + 8].try_into().unwrap()) as usize;
        let body = &bytes[position + 8..(position + 8 + size).min(bytes.len())];
        if id == b"fmt " {
            format = u16::from_le_bytes([body[0], body[1]]);
            channels = u16::from_le_bytes([body[2], body[3]]);
            rate = u32::from_le_bytes(body[4..8].try_into().unwrap());
            bits = u16::from_le_bytes([body[14], body[15]]);
        } else if id == b"data" {
            assert_eq!(channels, 1, "mono WAV expected");
            let samples = match (format, bits) {
                (1, 16) => body.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0).collect(),
                (3, 32) => body.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
                other => panic!("unsupported WAV format {other:?}"),
            };
            return (samples, rate);
        }
        position += 8 + size + (size & 1);
    }
    panic!("WAV file without data");
}

/// Band-limited resampling with a Hann-windowed sinc (32 taps a side), cut off just below the
/// lower of the two Nyquist frequencies.
fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to {
        return input.to_vec();
    }
    let ratio = to as f64 / from as f64;
    let cutoff = 0.95 * ratio.min(1.0);
    let half_width = 32.0 / cutoff;
    let output_len = (input.len() as f64 * ratio).floor() as usize;
    (0..output_len)
        .map(|n| {
            let centre = n as f64 / ratio;
            let first = (centre - half_width).ceil().max(0.0) as usize;
            let last = ((centre + half_width).floor() as usize).min(input.len() - 1);
            let mut sum = 0.0;
            for (k, sample) in input.iter().enumerate().take(last + 1).skip(first) {
                let x = centre - k as f64;
                let sinc = if x == 0.0 {
                    1.0
                } else {
                    (std::f64::consts::PI * cutoff * x).sin() / (std::f64::consts::PI * cutoff * x)
                };
                let window = 0.5 + 0.5 * (std::f64::consts::PI * x / half_width).cos();
                sum += *sample as f64 * cutoff * sinc * window;
            }
            sum as f32
        })
        .collect()
}

/// `text` spoken by espeak-ng (US English), at 16 kHz.
fn speak(text: &str) -> Arc<[f32]> {
    speak_in("en-us", text)
}

/// `text` spoken by espeak-ng with `voice` (a language such as `de`), at 16 kHz.
fn speak_in(voice: &str, text: &str) -> Arc<[f32]> {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("speech.wav");
    let status = Command::new("espeak-ng")
        .args(["-v", voice, "-w"])
        .arg(&wav)
        .arg(text)
        .status()
        .expect("espeak-ng is not installed: run `make setup`");
    assert!(status.success(), "espeak-ng failed");
    let (samples, rate) = read_wav(&fs::read(&wav).unwrap());
    resample(&samples, rate, STT_SAMPLE_RATE).into()
}

fn spoken_sentence() -> Arc<[f32]> {
    static AUDIO: OnceLock<Arc<[f32]>> = OnceLock::new();
    Arc::clone(AUDIO.get_or_init(|| speak(SENTENCE)))
}

/// Lower-cased words without punctuation.
fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .chars()
        .map(|ch| if ch.is_alphanumeric() || ch == '\'' { ch } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Word error rate of `hypothesis` against `reference`: word-level edit distance over reference length.
fn word_error_rate(reference: &str, hypothesis: &str) -> f64 {
    let (reference, hypothesis) = (words(reference), words(hypothesis));
    let mut previous: Vec<usize> = (0..=hypothesis.len()).collect();
    for (i, expected) in reference.iter().enumerate() {
        let mut current = vec![i + 1; hypothesis.len() + 1];
        for (j, actual) in hypothesis.iter().enumerate() {
            let substitution = previous[j] + usize::from(expected != actual);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[hypothesis.len()] as f64 / reference.len().max(1) as f64
}

#[test]
fn word_error_rate_counts_edits_per_reference_word() {
    assert_eq!(word_error_rate("Hello, world!", "hello world"), 0.0);
    assert_eq!(word_error_rate("a b c d", "a x c"), 0.5);
    assert_eq!(word_error_rate("a b", "a b c d"), 1.0);
}

#[test]
fn resampling_keeps_a_tone_and_its_length() {
    let tone: Vec<f32> =
        (0..22_050).map(|n| (2.0 * std::f32::consts::PI * 440.0 * n as f32 / 22_050.0).sin()).collect();
    let resampled = resample(&tone, 22_050, 16_000);
    assert_eq!(resampled.len(), 16_000);
    for (n, sample) in resampled.iter().enumerate().skip(100).take(15_800) {
        let expected = (2.0 * std::f32::consts::PI * 440.0 * n as f32 / 16_000.0).sin();
        assert!((sample - expected).abs() < 0.01, "sample {n}: {sample} vs {expected}");
    }
}

// ---------- the converted file ----------

fn read_i32(bytes: &[u8], at: &mut usize) -> i32 {
    let value = i32::from_le_bytes(bytes[*at..*at + 4].try_into().unwrap());
    *at += 4;
    value
}

/// Walks a ggml Whisper file; returns its hyperparameters and tensor names, checking that the
/// tensors fill the file exactly.
fn parse_ggml(bytes: &[u8]) -> (Vec<i32>, Vec<String>, i32) {
    let mut at = 0;
    assert_eq!(read_i32(bytes, &mut at) as u32, GGML_MAGIC);
    let hparams: Vec<i32> = (0..11).map(|_| read_i32(bytes, &mut at)).collect();
    let (mels, bins) = (read_i32(bytes, &mut at), read_i32(bytes, &mut at));
    assert_eq!((mels, bins), (80, 201));
    at += (mels * bins * 4) as usize;
    let vocab = read_i32(bytes, &mut at);
    for _ in 0..vocab {
        let len = read_i32(bytes, &mut at) as usize;
        at += len;
    }
    let mut names = Vec::new();
    while at < bytes.len() {
        let dims = read_i32(bytes, &mut at) as usize;
        let name_len = read_i32(bytes, &mut at) as usize;
        let ftype = read_i32(bytes, &mut at);
        let elements: usize = (0..dims).map(|_| read_i32(bytes, &mut at) as usize).product();
        let name = String::from_utf8(bytes[at..at + name_len].to_vec()).unwrap();
        at += name_len;
        at += elements * if ftype == 0 { 4 } else { 2 };
        let vector = dims == 1 || name.starts_with("encoder.conv") && name.ends_with(".bias");
        if vector || name.ends_with("positional_embedding") {
            assert_eq!(ftype, 0, "{name} must be f32");
        } else {
            assert_eq!(ftype, 1, "{name} must be f16");
        }
        names.push(name);
    }
    assert_eq!(at, bytes.len(), "the tensors must fill the file exactly");
    (hparams, names, vocab)
}

#[test]
fn the_installed_ggml_file_has_tiny_en_hparams_and_every_tensor() {
    let Some(dir) = model_dir() else { return };
    let bytes = fs::read(dir.join(WHISPER_GGML_FILE)).unwrap();
    let (hparams, names, vocab) = parse_ggml(&bytes);
    assert_eq!(vocab, 50_257, "regular tokens of the GPT-2 English vocabulary");
    assert_eq!(hparams, [51_864, 1500, 384, 6, 4, 448, 384, 6, 4, 80, 1]);
    assert_eq!(names.len(), 4 * 15 + 4 * 24 + 11);
    for name in [
        "encoder.conv1.bias",
        "encoder.blocks.3.attn.key.weight",
        "decoder.blocks.0.cross_attn.value.bias",
        "decoder.ln.weight",
    ] {
        assert!(names.iter().any(|candidate| candidate == name), "{name} missing");
    }
    assert!(!names.iter().any(|name| name.ends_with("attn.key.bias")), "key biases are dropped");
}

#[test]
fn converting_again_gives_the_same_bytes_and_broken_input_a_clear_error() {
    let Some(dir) = model_dir() else { return };
    let scratch = tempfile::tempdir().unwrap();
    let output = scratch.path().join("out").join("ggml.bin");
    let summary = convert_ct2_to_ggml(&dir.join("ct2"), &output).unwrap();
    assert_eq!(summary.tensors, 167);
    assert_eq!(summary.hparams.n_vocab, 51_864);
    assert_eq!(fs::read(&output).unwrap(), fs::read(dir.join(WHISPER_GGML_FILE)).unwrap());

    // A truncated model.bin: an error naming the file, and no output, partial or whole.
    let broken = scratch.path().join("broken");
    fs::create_dir(&broken).unwrap();
    fs::copy(dir.join("ct2/tokenizer.json"), broken.join("tokenizer.json")).unwrap();
    let model = fs::read(dir.join("ct2/model.bin")).unwrap();
    fs::write(broken.join("model.bin"), &model[..model.len() / 2]).unwrap();
    let target = scratch.path().join("broken-out").join("ggml.bin");
    let error = convert_ct2_to_ggml(&broken, &target).unwrap_err();
    assert!(matches!(error, ModelError::InvalidModel { .. }), "{error:?}");
    assert!(error.to_string().contains("ends early"), "{error}");
    let leftovers = fs::read_dir(target.parent().unwrap()).map(|entries| entries.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "nothing may be left behind");

    // Not a CTranslate2 file at all.
    fs::write(broken.join("model.bin"), b"GGUF not a ctranslate2 model at all").unwrap();
    let error = convert_ct2_to_ggml(&broken, &target).unwrap_err();
    assert!(matches!(error, ModelError::InvalidModel { .. }), "{error:?}");

    // A missing tokenizer.
    fs::remove_file(broken.join("tokenizer.json")).unwrap();
    let error = convert_ct2_to_ggml(&broken, &target).unwrap_err();
    assert!(matches!(error, ModelError::MissingModelFile { .. }), "{error:?}");
}

#[test]
fn loading_a_file_that_is_not_a_model_fails_cleanly() {
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("ggml-model.bin");
    fs::write(&path, b"definitely not a model").unwrap();
    let error = WhisperStt::load(&path, WhisperOptions::default()).unwrap_err();
    assert!(matches!(error, ModelError::InvalidModel { .. }), "{error:?}");
    let error = WhisperStt::load(&scratch.path().join("absent.bin"), WhisperOptions::default()).unwrap_err();
    assert!(matches!(error, ModelError::MissingModelFile { .. }), "{error:?}");
}

// ---------- transcription ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthesised_speech_is_transcribed_with_a_low_word_error_rate() {
    let Some(stt) = shared() else { return };
    let audio = spoken_sentence();
    let started = Instant::now();
    let transcript = transcribe(stt.as_ref(), Arc::clone(&audio), TranscribeOptions::default()).await.unwrap();
    let elapsed = started.elapsed();
    let wer = word_error_rate(SENTENCE, &transcript.text);
    eprintln!(
        "transcribed {:.2} s of speech in {:.2} s: {:?} (WER {:.1}%)",
        audio.len() as f64 / STT_SAMPLE_RATE as f64,
        elapsed.as_secs_f64(),
        transcript.text,
        wer * 100.0
    );
    assert!(wer <= 0.15, "WER {wer} for {:?}", transcript.text);
    assert_eq!(transcript.language, "en");
    assert!(!transcript.segments.is_empty());
    let last = transcript.segments.last().unwrap();
    assert!(last.end_ms > 1000 && last.end_ms <= audio.len() as u64 * 1000 / 16_000 + 1000, "{last:?}");
}

const JFK_REFERENCE: &str =
    "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.";

/// The speech set's `jfk.wav` at 16 kHz, or `None` (after a message) when the set is not there.
fn jfk_audio() -> Option<Arc<[f32]>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/eval/speech/samples/jfk.wav");
    let Ok(bytes) = fs::read(&path) else {
        eprintln!("SKIPPED: {} is not there", path.display());
        return None;
    };
    let (samples, rate) = read_wav(&bytes);
    Some(resample(&samples, rate, STT_SAMPLE_RATE).into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jfk_sample_is_transcribed_when_present() {
    let Some(stt) = shared() else { return };
    let Some(audio) = jfk_audio() else { return };
    let seconds = audio.len() as f64 / STT_SAMPLE_RATE as f64;
    let started = Instant::now();
    let transcript = transcribe(stt.as_ref(), audio, TranscribeOptions::default()).await.unwrap();
    eprintln!(
        "transcribed {seconds:.2} s of jfk.wav in {:.2} s: {:?}",
        started.elapsed().as_secs_f64(),
        transcript.text
    );
    let wer = word_error_rate(JFK_REFERENCE, &transcript.text);
    assert!(wer <= 0.05, "WER {wer} for {:?}", transcript.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_segments_arrive_before_the_transcript() {
    let Some(stt) = shared() else { return };
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let options = TranscribeOptions { language: Some("en-US".to_owned()), partial: Some(sender) };
    let transcript = transcribe(stt.as_ref(), spoken_sentence(), options).await.unwrap();
    let mut partial = Vec::new();
    // The engine lets go of the sender once the request is done, so the stream ends.
    while let Some(segment) = tokio::time::timeout(ANSWER_TIMEOUT, receiver.recv()).await.unwrap() {
        partial.push(segment);
    }
    assert_eq!(partial, transcript.segments);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_the_model_and_all_succeed() {
    let Some(stt) = shared() else { return };
    let audio = spoken_sentence();
    let requests = (0..4).map(|_| transcribe(stt.as_ref(), Arc::clone(&audio), TranscribeOptions::default()));
    let transcripts = futures::future::join_all(requests).await;
    let first = transcripts[0].as_ref().unwrap().text.clone();
    for transcript in transcripts {
        assert_eq!(transcript.unwrap().text, first, "greedy decoding gives every caller the same text");
    }
}

/// Transcribes, retrying briefly while the worker is still skipping a cancelled request.
async fn transcribe_when_free(stt: &WhisperStt, audio: Arc<[f32]>) -> parley_models::Transcript {
    for _ in 0..100 {
        match transcribe(stt, Arc::clone(&audio), TranscribeOptions::default()).await {
            Err(ModelError::Busy { .. }) => tokio::time::sleep(Duration::from_millis(50)).await,
            other => return other.unwrap(),
        }
    }
    panic!("the worker stayed busy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_and_a_dropped_request_is_cancelled() {
    let Some(stt) = load(WhisperOptions { threads: 2, workers: 1, queue_capacity: 1, ..WhisperOptions::default() })
    else {
        return;
    };
    let audio = spoken_sentence();
    // One running, one waiting: the third is refused at once.
    let running = stt.transcribe(Arc::clone(&audio), TranscribeOptions::default());
    // Once the worker has taken the first request, exactly one more fits in the queue.
    let waiting = loop {
        let mut candidate = stt.transcribe(Arc::clone(&audio), TranscribeOptions::default());
        match futures::poll!(&mut candidate) {
            std::task::Poll::Pending => break candidate,
            std::task::Poll::Ready(Err(ModelError::Busy { .. })) => tokio::time::sleep(Duration::from_millis(10)).await,
            std::task::Poll::Ready(other) => panic!("the second request should wait, not {other:?}"),
        }
    };
    let refused = stt.transcribe(Arc::clone(&audio), TranscribeOptions::default());
    let error = refused.await.unwrap_err();
    assert!(matches!(error, ModelError::Busy { .. }), "{error:?}");
    assert!(error.to_string().contains("busy"), "{error}");

    // Dropping the waiting request means it is skipped, not run.
    drop(waiting);
    let started = Instant::now();
    let first = tokio::time::timeout(ANSWER_TIMEOUT, running).await.unwrap().unwrap();
    let after = transcribe_when_free(&stt, Arc::clone(&audio)).await;
    assert_eq!(first.text, after.text);
    eprintln!("two transcriptions after the refusal took {:.2} s", started.elapsed().as_secs_f64());

    // A long running request dropped part-way is aborted; the worker serves the next one.
    let long: Arc<[f32]> =
        audio.iter().copied().cycle().take(parley_models::stt::ABORTABLE_SAMPLES * 2).collect::<Vec<_>>().into();
    let dropped = stt.transcribe(long, TranscribeOptions::default());
    let _ = tokio::time::timeout(Duration::from_millis(300), dropped).await;
    let started = Instant::now();
    let again = transcribe_when_free(&stt, audio).await;
    assert_eq!(again.text, first.text);
    eprintln!("after aborting a long request, the next took {:.2} s", started.elapsed().as_secs_f64());
    // The waiting request that was skipped and the long one that was aborted.
    assert_eq!(stt.cancelled(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_audio_and_languages_are_refused_with_a_reason() {
    let Some(stt) = shared() else { return };
    let cases = [
        (Vec::new(), None, "empty"),
        (vec![0.0, f32::NAN, 0.0], None, "sample 1"),
        (vec![0.0; 16_000 * 301], None, "at most 300 s"),
        (vec![0.0; 16_000], Some("de"), "only transcribes English"),
        (vec![0.0; 16_000], Some("klingon"), "unknown language"),
    ];
    for (audio, language, expected) in cases {
        let audio: Arc<[f32]> = audio.into();
        let options = TranscribeOptions { language: language.map(str::to_owned), partial: None };
        let error = stt.transcribe(audio, options).await.unwrap_err();
        assert!(matches!(error, ModelError::InvalidRequest { .. }), "{error:?}");
        assert!(error.to_string().contains(expected), "{error} should say {expected:?}");
    }
    // Very short audio is padded, not refused: a fraction of a second of silence gives no words.
    let transcript = transcribe(stt.as_ref(), vec![0.0; 4000].into(), TranscribeOptions::default()).await.unwrap();
    assert!(words(&transcript.text).len() <= 3, "{:?}", transcript.text);
}

// ---------- the multilingual base model ----------

const GERMAN_SENTENCE: &str =
    "Guten Morgen. Ich möchte gerne einen Termin für nächste Woche vereinbaren, am liebsten am Dienstag.";

fn shared_base() -> Option<Arc<WhisperStt>> {
    static MODEL: OnceLock<Option<Arc<WhisperStt>>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = installed_model("whisper-base")?;
            let options = WhisperOptions { threads: 2, workers: 1, ..WhisperOptions::default() };
            let stt = WhisperStt::load(&path, options)
                .unwrap_or_else(|error| panic!("cannot load {}: {error}", path.display()));
            Some(Arc::new(stt))
        })
        .clone()
}

#[test]
fn the_installed_base_ggml_file_has_multilingual_hparams_and_every_tensor() {
    let Some(path) = installed_model("whisper-base") else { return };
    let bytes = fs::read(&path).unwrap();
    let (hparams, names, vocab) = parse_ggml(&bytes);
    assert_eq!(hparams, [51_865, 1500, 512, 8, 6, 448, 512, 8, 6, 80, 1]);
    assert_eq!(vocab, 50_258, "the multilingual vocabulary's regular tokens and end-of-text");
    assert_eq!(names.len(), 6 * 15 + 6 * 24 + 11);
    for name in ["encoder.blocks.5.attn.key.weight", "decoder.blocks.5.cross_attn.value.bias", "decoder.ln.bias"] {
        assert!(names.iter().any(|candidate| candidate == name), "{name} missing");
    }
    // Only the ggml file is kept whole: the joined CTranslate2 model is removed after conversion.
    let dir = path.parent().unwrap();
    assert!(!dir.join("ct2/model.bin").exists());
    assert!(dir.join("ct2/model.bin.part1").is_file() && dir.join("ct2/model.bin.part2").is_file());
}

#[test]
fn an_unknown_model_name_lists_the_known_ones() {
    let error = installed_whisper(&models_dir(), "whisper-huge").unwrap_err();
    assert!(matches!(error, ModelError::InvalidRequest { .. }), "{error:?}");
    assert!(error.to_string().contains("whisper-tiny.en, whisper-base"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_transcribes_the_jfk_sample_and_detects_english() {
    let Some(stt) = shared_base() else { return };
    assert!(!stt.english_only());
    let Some(audio) = jfk_audio() else { return };
    let started = Instant::now();
    let transcript = transcribe(stt.as_ref(), audio, TranscribeOptions::default()).await.unwrap();
    eprintln!("base transcribed jfk.wav in {:.2} s: {:?}", started.elapsed().as_secs_f64(), transcript.text);
    let wer = word_error_rate(JFK_REFERENCE, &transcript.text);
    assert!(wer <= 0.05, "WER {wer} for {:?}", transcript.text);
    assert_eq!(transcript.language, "en", "detected, not assumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_detects_german_and_transcribes_it_when_asked() {
    let Some(stt) = shared_base() else { return };
    let audio = speak_in("de", GERMAN_SENTENCE);
    let detected = transcribe(stt.as_ref(), Arc::clone(&audio), TranscribeOptions::default()).await.unwrap();
    eprintln!("base heard {:?} in {:?}", detected.text, detected.language);
    assert_eq!(detected.language, "de", "{:?}", detected.text);

    let options = TranscribeOptions { language: Some("de-DE".to_owned()), partial: None };
    let asked = transcribe(stt.as_ref(), audio, options).await.unwrap();
    eprintln!("base transcribed German as {:?} (WER {:.2})", asked.text, word_error_rate(GERMAN_SENTENCE, &asked.text));
    assert_eq!(asked.language, "de");
    // espeak-ng's German is robotic; most words still come through.
    let wer = word_error_rate(GERMAN_SENTENCE, &asked.text);
    assert!(wer <= 0.5, "WER {wer} for {:?}", asked.text);
    let heard = words(&asked.text);
    assert!(heard.iter().any(|word| word == "termin" || word == "woche" || word == "morgen"), "{heard:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_refuses_an_unknown_language() {
    let Some(stt) = shared_base() else { return };
    let options = TranscribeOptions { language: Some("klingon".to_owned()), partial: None };
    let error = stt.transcribe(vec![0.0; 16_000].into(), options).await.unwrap_err();
    assert!(matches!(error, ModelError::InvalidRequest { .. }), "{error:?}");
    assert!(error.to_string().contains("unknown language"), "{error}");
}
