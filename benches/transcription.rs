//! Speech-to-text accuracy and speed on the speech set in `../shared/eval/speech`, beside
//! whisper.cpp's own `whisper-cli` on the same ggml file, the same clips and the same thread
//! count, in the same run.
//!
//! Model: the installed Whisper model named by the first argument (`whisper-tiny.en`, the
//! default, or `whisper-base`; see `parley_models::WHISPER_MODELS`). A multilingual model is asked
//! for English, as whisper-cli is by default (`-l en`), so neither engine spends a pass detecting
//! the language.
//!
//! Parley side: `WhisperStt::load` on that model's ggml file (2 threads, one worker), each clip
//! decoded from its WAV file here (16-bit PCM or 32-bit float), mixed to mono and resampled to
//! 16 kHz by `audio::StreamResampler` when needed, then
//! `SpeechToText::transcribe`. Its time per clip is measured with the model already loaded.
//!
//! Reference: `whisper-cli -m <same file> -t 2 -f <clip> -nt`, one process per clip
//! (`~/.cache/parley/peers/whisper.cpp/build/bin/whisper-cli`, built by `make whisper-cli`;
//! `PARLEY_WHISPER_CLI` names another). It runs with its own defaults (beam search of 5, flash
//! attention) and with Parley's decoding settings (`-bs 1 -bo 1 -nfa`: greedy, no flash
//! attention), and greedy with flash attention. For each process the wall time (start-up and
//! model load included) and whisper.cpp's own printed total and load times are kept; total minus
//! load is the CLI's time with the model loaded, the figure comparable with Parley's.
//!
//! One warm-up pass, then [`MEASURED_PASSES`] measured passes; in each pass every clip is
//! transcribed by every engine in turn before the next clip, so slow phases of a shared machine
//! hit all engines alike. Per clip the median over passes is kept.
//!
//! Scoring: both the reference text and each transcript are normalised (see [`normalise`]) and
//! compared word by word (Levenshtein distance over words); WER is errors / reference words,
//! over the LibriVox clips and over all clips.
//!
//! `cargo bench --bench transcription [-- whisper-base]` runs it. Without `--bench` (as under
//! `cargo test --all-targets`) it exits at once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use parley_config::Settings;
use parley_models::audio::StreamResampler;
use parley_models::{SpeechToText, TranscribeOptions, WhisperOptions, WhisperStt, STT_SAMPLE_RATE};
use serde_json::Value;

#[path = "chat_common/facts.rs"]
mod facts;
use facts::{load_average, machine, now_utc};

const THREADS: usize = 2;
const WARM_UP_PASSES: usize = 1;
const MEASURED_PASSES: usize = 3;

/// The whisper-cli configurations compared, (label, extra arguments).
const CLI_CONFIGS: [(&str, &[&str]); 3] = [
    ("whisper-cli, its defaults (beam 5, flash attention)", &[]),
    ("whisper-cli, greedy, flash attention (`-bs 1 -bo 1`)", &["-bs", "1", "-bo", "1"]),
    (
        "whisper-cli, Parley's settings (`-bs 1 -bo 1 -nfa`: greedy, no flash attention)",
        &["-bs", "1", "-bo", "1", "-nfa"],
    ),
];

fn main() -> Result<()> {
    if !std::env::args().any(|argument| argument == "--bench") {
        println!("transcription: run it with `cargo bench --bench transcription`");
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run())
}

/// One clip of the speech set.
struct Clip {
    /// Path relative to the speech directory, as in the manifest.
    name: String,
    path: PathBuf,
    reference: String,
    librivox: bool,
    /// 16 kHz mono samples.
    audio: Arc<[f32]>,
}

impl Clip {
    fn seconds(&self) -> f64 {
        self.audio.len() as f64 / f64::from(STT_SAMPLE_RATE)
    }
}

/// One CLI process's timings, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
struct CliTiming {
    wall: f64,
    /// whisper.cpp's printed total (from context creation to the end).
    total: Option<f64>,
    load: Option<f64>,
}

impl CliTiming {
    /// Processing time with the model loaded: printed total minus printed load time.
    fn inference(&self) -> Option<f64> {
        Some(self.total? - self.load?)
    }
}

/// What one engine produced on one clip across the measured passes.
#[derive(Debug, Default, Clone)]
struct ClipResult {
    /// The transcript of the last measured pass.
    text: String,
    /// Whether every pass gave the same transcript.
    stable: bool,
    /// Parley: per-pass milliseconds; CLI: wall milliseconds.
    times: Vec<f64>,
    cli: Vec<CliTiming>,
}

impl ClipResult {
    fn record(&mut self, text: String, pass: usize) {
        if pass == 0 {
            self.stable = true;
        } else if text != self.text {
            self.stable = false;
        }
        self.text = text;
    }
}

async fn run() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let speech_dir = root.join("../shared/eval/speech");
    let manifest = speech_dir.join("manifest.jsonl");
    if !manifest.is_file() {
        println!("transcription: SKIPPED — no speech set at {} (see ../shared/eval/README.md)", manifest.display());
        return Ok(());
    }
    let clips = load_clips(&speech_dir, &manifest)?;

    let started_at = now_utc();
    let load_before = load_average();
    let settings = Settings { home_dir: std::env::var_os("HOME").map(PathBuf::from), ..Settings::default() };
    let model_name = std::env::args()
        .skip(1)
        .find(|argument| !argument.starts_with('-'))
        .unwrap_or_else(|| "whisper-tiny.en".to_owned());
    let model_file = parley_models::installed_whisper(&settings.models_dir(), &model_name)
        .with_context(|| format!("the speech-to-text model {model_name} is not usable"))?;
    let options = WhisperOptions { threads: THREADS, workers: 1, queue_capacity: 4, max_audio_seconds: 300.0 };
    let loading = Instant::now();
    let stt = WhisperStt::load(&model_file, options)?;
    let load_ms = loading.elapsed().as_secs_f64() * 1e3;
    // English, as whisper-cli assumes by default; an English-only model needs no language.
    let language = (!stt.english_only()).then(|| "en".to_owned());

    let cli = std::env::var_os("PARLEY_WHISPER_CLI").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        home.join(".cache/parley/peers/whisper.cpp/build/bin/whisper-cli")
    });
    let cli = cli.is_file().then_some(cli);

    let mut parley: Vec<ClipResult> = vec![ClipResult::default(); clips.len()];
    let mut references: Vec<Vec<ClipResult>> = vec![vec![ClipResult::default(); clips.len()]; CLI_CONFIGS.len()];
    for pass in 0..WARM_UP_PASSES + MEASURED_PASSES {
        let measured = pass >= WARM_UP_PASSES;
        let measured_pass = pass.saturating_sub(WARM_UP_PASSES);
        for (index, clip) in clips.iter().enumerate() {
            let started = Instant::now();
            let options = TranscribeOptions { language: language.clone(), partial: None };
            let transcript = stt.transcribe(Arc::clone(&clip.audio), options).await?;
            let ms = started.elapsed().as_secs_f64() * 1e3;
            eprintln!("pass {pass} {:<55} Parley {ms:7.0} ms  {:?}", clip.name, transcript.text.trim());
            if measured {
                parley[index].record(transcript.text.trim().to_owned(), measured_pass);
                parley[index].times.push(ms);
            }
            let Some(cli) = &cli else { continue };
            for (config, (_, extra)) in CLI_CONFIGS.iter().enumerate() {
                let (text, timing) = run_cli(cli, &model_file, &clip.path, extra)?;
                eprintln!(
                    "pass {pass} {:<55} cli#{config} {:7.0} ms wall, {:?} inference  {text:?}",
                    clip.name,
                    timing.wall,
                    timing.inference()
                );
                if measured {
                    references[config][index].record(text, measured_pass);
                    references[config][index].times.push(timing.wall);
                    references[config][index].cli.push(timing);
                }
            }
        }
    }
    drop(stt);
    let load_after = load_average();

    println!("### Speech-to-text: word error rate and real-time factor\n");
    println!("- **Date:** {started_at}; **machine:** {}.", machine());
    println!("- **Load average** (1, 5, 15 min): {load_before} before, {load_after} after.");
    println!(
        "- **Model:** {model_name}, `{}` (Parley loaded it in {load_ms:.0} ms); {THREADS} threads everywhere; {} clips, {:.1} s of \
         audio; {WARM_UP_PASSES} warm-up pass, {MEASURED_PASSES} measured passes, medians per clip.",
        model_file.display(),
        clips.len(),
        clips.iter().map(Clip::seconds).sum::<f64>()
    );
    match &cli {
        Some(cli) => println!("- **Reference:** `{} -m <model> -t {THREADS} -f <clip> -nt [options]`.", cli.display()),
        None => println!(
            "- **whisper-cli is missing** (run `make whisper-cli`, or set `PARLEY_WHISPER_CLI`): the reference was \
             skipped."
        ),
    }
    println!();

    let librivox_words: usize =
        clips.iter().filter(|clip| clip.librivox).map(|clip| normalise(&clip.reference).len()).sum();
    let all_words: usize = clips.iter().map(|clip| normalise(&clip.reference).len()).sum();
    let audio_seconds: f64 = clips.iter().map(Clip::seconds).sum();
    println!(
        "| engine | WER LibriVox ({librivox_words} words) | WER all ({all_words} words) | time per clip, summed | \
         real-time factor | transcripts stable across passes |"
    );
    println!("|---|---|---|---|---|---|");
    let parley_ms: f64 = parley.iter().map(|result| median(result.times.clone())).sum();
    println!(
        "| Parley `WhisperStt` (model loaded) | {} | {} | {parley_ms:.0} ms | {:.3} | {} |",
        wer_cell(&clips, &parley, true),
        wer_cell(&clips, &parley, false),
        parley_ms / 1e3 / audio_seconds,
        stable_cell(&parley)
    );
    if cli.is_some() {
        for (config, (label, _)) in CLI_CONFIGS.iter().enumerate() {
            let results = &references[config];
            let wall: f64 = results.iter().map(|result| median(result.times.clone())).sum();
            let inference: Option<f64> = results
                .iter()
                .map(|result| result.cli.iter().map(CliTiming::inference).collect::<Option<Vec<f64>>>().map(median))
                .sum();
            let (inference_cell, inference_rtf) = match inference {
                Some(ms) => (format!("{ms:.0} ms"), format!("{:.3}", ms / 1e3 / audio_seconds)),
                None => ("(not printed)".to_owned(), "–".to_owned()),
            };
            println!(
                "| {label}, model loaded (printed total − load) | {} | {} | {inference_cell} | {inference_rtf} | {} |",
                wer_cell(&clips, results, true),
                wer_cell(&clips, results, false),
                stable_cell(results)
            );
            println!(
                "| {label}, whole process (wall, start-up and load included) | 〃 | 〃 | {wall:.0} ms | {:.3} | 〃 |",
                wall / 1e3 / audio_seconds
            );
        }
    }
    println!();

    println!("Per clip (median ms; errors / reference words after normalisation):\n");
    let mut header = "| clip | audio s | Parley ms | Parley errors |".to_owned();
    let mut rule = "|---|---|---|---|".to_owned();
    if cli.is_some() {
        for config in 0..CLI_CONFIGS.len() {
            header.push_str(&format!(" cli#{config} ms (loaded / wall) | cli#{config} errors |"));
            rule.push_str("---|---|");
        }
    }
    println!("{header}\n{rule}");
    for (index, clip) in clips.iter().enumerate() {
        let reference = normalise(&clip.reference);
        let mut row = format!(
            "| {} | {:.2} | {:.0} | {}/{} |",
            clip.name,
            clip.seconds(),
            median(parley[index].times.clone()),
            word_errors(&reference, &normalise(&parley[index].text)),
            reference.len()
        );
        if cli.is_some() {
            for results in &references {
                let result = &results[index];
                let loaded = result
                    .cli
                    .iter()
                    .map(CliTiming::inference)
                    .collect::<Option<Vec<f64>>>()
                    .map(|values| format!("{:.0}", median(values)))
                    .unwrap_or_else(|| "–".to_owned());
                row.push_str(&format!(
                    " {loaded} / {:.0} | {}/{} |",
                    median(result.times.clone()),
                    word_errors(&reference, &normalise(&result.text)),
                    reference.len()
                ));
            }
        }
        println!("{row}");
    }
    println!();
    if cli.is_some() {
        for (config, (label, _)) in CLI_CONFIGS.iter().enumerate() {
            println!("- cli#{config}: {label}");
        }
        println!();
    }

    println!("Transcripts (last pass) that differ from the reference after normalisation:\n");
    let mut engines: Vec<(String, &Vec<ClipResult>)> = vec![("Parley".to_owned(), &parley)];
    if cli.is_some() {
        for (config, results) in references.iter().enumerate() {
            engines.push((format!("cli#{config}"), results));
        }
    }
    for (index, clip) in clips.iter().enumerate() {
        let reference = normalise(&clip.reference);
        for (engine, results) in &engines {
            let hypothesis = normalise(&results[index].text);
            if hypothesis != reference {
                println!(
                    "- {} — {engine}: \"{}\" (reference \"{}\")",
                    clip.name,
                    hypothesis.join(" "),
                    reference.join(" ")
                );
            }
        }
    }
    println!();
    Ok(())
}

/// Reads the manifest and decodes every clip.
fn load_clips(speech_dir: &Path, manifest: &Path) -> Result<Vec<Clip>> {
    let text = std::fs::read_to_string(manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let mut clips = Vec::new();
    for (number, line) in text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()) {
        let entry: Value =
            serde_json::from_str(line).with_context(|| format!("{} line {}", manifest.display(), number + 1))?;
        let field = |name: &str| {
            entry[name]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("{} line {}: no {name:?}", manifest.display(), number + 1))
        };
        let name = field("file")?;
        let path = speech_dir.join(&name);
        let (samples, rate) = read_wav(&path)?;
        let audio =
            if rate == STT_SAMPLE_RATE { samples } else { StreamResampler::convert(&samples, rate, STT_SAMPLE_RATE)? };
        clips.push(Clip {
            librivox: name.starts_with("librivox/"),
            name,
            path,
            reference: field("text")?,
            audio: audio.into(),
        });
    }
    if clips.is_empty() {
        bail!("{} lists no clips", manifest.display());
    }
    Ok(clips)
}

/// Decodes a RIFF WAVE file of 16-bit PCM or 32-bit float samples into mono f32 samples and
/// their rate; channels are averaged.
fn read_wav(path: &Path) -> Result<(Vec<f32>, u32)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_wav(&bytes).with_context(|| format!("decoding {}", path.display()))
}

fn parse_wav(bytes: &[u8]) -> Result<(Vec<f32>, u32)> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        bail!("not a RIFF WAVE file");
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let mut format = None;
    let mut position = 12;
    while position + 8 <= bytes.len() {
        let id = &bytes[position..position + 4];
        let size = u32_at(position + 4) as usize;
        let body = position + 8;
        let end = body.checked_add(size).filter(|&end| end <= bytes.len()).context("a chunk runs past the end")?;
        match id {
            b"fmt " => {
                if size < 16 {
                    bail!("fmt chunk too short");
                }
                let mut tag = u16_at(body);
                if tag == 0xFFFE && size >= 40 {
                    // WAVE_FORMAT_EXTENSIBLE: the real format is the sub-format GUID's first two bytes.
                    tag = u16_at(body + 24);
                }
                format = Some((tag, u16_at(body + 2), u32_at(body + 4), u16_at(body + 14)));
            }
            b"data" => {
                let (tag, channels, rate, bits) = format.context("data chunk before the fmt chunk")?;
                let channels = usize::from(channels.max(1));
                let data = &bytes[body..end];
                let samples: Vec<f32> = match (tag, bits) {
                    (1, 16) => data
                        .chunks_exact(2)
                        .map(|pair| f32::from(i16::from_le_bytes([pair[0], pair[1]])) / 32768.0)
                        .collect(),
                    (3, 32) => data
                        .chunks_exact(4)
                        .map(|quad| f32::from_le_bytes([quad[0], quad[1], quad[2], quad[3]]))
                        .collect(),
                    _ => bail!("unsupported sample format (tag {tag}, {bits} bits)"),
                };
                let mono =
                    samples.chunks_exact(channels).map(|frame| frame.iter().sum::<f32>() / channels as f32).collect();
                return Ok((mono, rate));
            }
            _ => {}
        }
        position = end + (size & 1);
    }
    bail!("no data chunk")
}

/// Runs whisper-cli on one clip; returns its transcript and timings.
fn run_cli(cli: &Path, model: &Path, clip: &Path, extra: &[&str]) -> Result<(String, CliTiming)> {
    let started = Instant::now();
    let output = Command::new(cli)
        .arg("-m")
        .arg(model)
        .args(["-t", &THREADS.to_string()])
        .arg("-f")
        .arg(clip)
        .arg("-nt")
        .args(extra)
        .output()
        .with_context(|| format!("running {}", cli.display()))?;
    let wall = started.elapsed().as_secs_f64() * 1e3;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("{} failed ({}): {}", cli.display(), output.status, stderr.trim());
    }
    let text = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let timing = CliTiming { wall, total: printed_ms(&stderr, "total time"), load: printed_ms(&stderr, "load time") };
    Ok((text, timing))
}

/// A time whisper.cpp prints at exit, such as `whisper_print_timings:    total time =   612.34 ms`.
fn printed_ms(log: &str, what: &str) -> Option<f64> {
    log.lines().filter(|line| line.contains("whisper_print_timings")).find_map(|line| {
        let rest = line.split_once(what)?.1;
        let value = rest.trim_start().strip_prefix('=')?.trim_start();
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Normalises text for scoring: lower case; `Mr.`/`Mrs.`/`Dr.` spelled out (mister, missus,
/// doctor); hyphens and dashes split words; other punctuation is dropped except apostrophes
/// inside words; whole numbers written in digits (commas allowed) are spelled out in words
/// ("42" → "forty two", "1,000" → "one thousand"). Returns the words.
fn normalise(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let spaced: String =
        lower.chars().map(|c| if c == '-' || c == '–' || c == '—' || c == '/' { ' ' } else { c }).collect();
    let mut words = Vec::new();
    for raw in spaced.split_whitespace() {
        let stripped = raw.trim_matches(|c: char| !c.is_alphanumeric());
        match stripped {
            "mr" => words.push("mister".to_owned()),
            "mrs" => words.push("missus".to_owned()),
            "dr" => words.push("doctor".to_owned()),
            _ => {
                let digits: String = stripped.chars().filter(|c| *c != ',').collect();
                if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
                    if let Ok(number) = digits.parse::<u64>() {
                        words.extend(spell(number).split_whitespace().map(str::to_owned));
                        continue;
                    }
                }
                let cleaned: String =
                    stripped.chars().filter(|c| c.is_alphanumeric() || *c == '\'' || *c == '’').collect();
                let cleaned = cleaned.replace('’', "'");
                if !cleaned.is_empty() {
                    words.push(cleaned);
                }
            }
        }
    }
    words
}

/// A whole number in English words, without "and" ("one hundred one").
fn spell(number: u64) -> String {
    const ONES: [&str; 20] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
    ];
    const TENS: [&str; 10] = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"];
    const SCALES: [(u64, &str); 4] =
        [(1_000_000_000_000, "trillion"), (1_000_000_000, "billion"), (1_000_000, "million"), (1_000, "thousand")];
    if number < 20 {
        return ONES[number as usize].to_owned();
    }
    if number < 100 {
        let tens = TENS[(number / 10) as usize];
        return if number.is_multiple_of(10) {
            tens.to_owned()
        } else {
            format!("{tens} {}", ONES[(number % 10) as usize])
        };
    }
    if number < 1000 {
        let hundreds = format!("{} hundred", ONES[(number / 100) as usize]);
        return if number.is_multiple_of(100) { hundreds } else { format!("{hundreds} {}", spell(number % 100)) };
    }
    for (scale, name) in SCALES {
        if number >= scale {
            let head = format!("{} {name}", spell(number / scale));
            return if number.is_multiple_of(scale) { head } else { format!("{head} {}", spell(number % scale)) };
        }
    }
    unreachable!("every number of 1000 or more has a scale")
}

/// Word-level Levenshtein distance: substitutions + deletions + insertions.
fn word_errors(reference: &[String], hypothesis: &[String]) -> usize {
    let mut previous: Vec<usize> = (0..=hypothesis.len()).collect();
    for (i, word) in reference.iter().enumerate() {
        let mut current = vec![i + 1; hypothesis.len() + 1];
        for (j, other) in hypothesis.iter().enumerate() {
            let substitution = previous[j] + usize::from(word != other);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[hypothesis.len()]
}

/// "errors/words = percent" over the LibriVox clips (`librivox_only`) or all clips.
fn wer_cell(clips: &[Clip], results: &[ClipResult], librivox_only: bool) -> String {
    let (mut errors, mut words) = (0, 0);
    for (clip, result) in clips.iter().zip(results) {
        if librivox_only && !clip.librivox {
            continue;
        }
        let reference = normalise(&clip.reference);
        errors += word_errors(&reference, &normalise(&result.text));
        words += reference.len();
    }
    format!("{errors}/{words} = {:.1}%", 100.0 * errors as f64 / words.max(1) as f64)
}

fn stable_cell(results: &[ClipResult]) -> String {
    let stable = results.iter().filter(|result| result.stable).count();
    format!("{stable}/{}", results.len())
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}
