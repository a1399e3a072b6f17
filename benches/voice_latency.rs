//! Voice-to-voice latency of a call, by stage, with the local models: from the end of the
//! caller's speech to the first audio frame of the agent's answer.
//!
//! The node runs in this process with the engines `parley serve` loads and its default settings
//! (`voice_common`): whisper tiny.en, Silero VAD, the Piper voice, the local SmolLM2 chat model
//! through candle (one inference thread) and the embedding model, over SQLite in a temporary
//! directory. One agent answers from one uploaded Markdown document (a library's visitor guide)
//! with the default retrieval settings (hybrid search, top 5 passages), at most
//! `ANSWER_TOKENS` tokens per answer, so every turn embeds the question, searches, builds the
//! prompt and generates for real.
//!
//! The caller's questions are synthesised by the Piper voice before the call, resampled to
//! 48 kHz and pushed into the call 20 ms at a time in real time, as the WebRTC transport does.
//! After the greeting, the caller asks a question, waits for the answer to be spoken to the end
//! (the node stored it as played, then the agent was silent for 700 ms), then asks the next; the
//! ten questions are asked in turn.
//! A first call with one question warms the engines up and is not counted.
//!
//! Two measurements per turn:
//! - **Stored (the pipeline's own clock):** the answer's `VoiceTimings`, stored with the message:
//!   the end-of-turn silence window waited for, transcription (queue included), retrieval,
//!   question → first token, synthesis of the first sentence, and `first_audio_ms` = end of the
//!   caller's speech as the VAD saw it → first audio frame of the answer played. The remainder
//!   (first audio − every stage) is the rest of the first sentence's generation plus hand-offs.
//! - **From the outside (the caller's clock):** when the caller pushed the 20 ms frame holding
//!   the last speech sample of its question (the last sample at −30 dBFS or more) → when the
//!   caller received the first agent audio frame with an RMS of −44 dBFS or more. This includes
//!   the silence at the start of the synthesised sentence, which the stored figure does not.
//!
//! Percentiles are nearest-rank (p95 of 20 turns is the 19th smallest).
//!
//! `cargo bench --bench voice_latency` runs it; `PARLEY_BENCH_TURNS` (default 20) sets how many
//! turns are measured and `PARLEY_BENCH_SILENCE_MS` the agent's end-of-turn silence (default as
//! shipped, 700 ms). It skips, saying why, when the models are not installed (`make models`).
//! Without `--bench` (as under `cargo test --all-targets`) it exits at once.

use std::time::Instant;

use anyhow::Result;
use parley_runtime::chat::conversations::{MessageRole, VoiceTimings};

#[path = "voice_common/mod.rs"]
mod voice_common;
use voice_common::facts::{load_average, now_utc};
use voice_common::{env_number, load_models, mean, overlap, percentile, questions, Node};

fn main() -> Result<()> {
    if !std::env::args().any(|argument| argument == "--bench") {
        println!("voice_latency: run it with `cargo bench --bench voice_latency`");
        return Ok(());
    }
    let turns = env_number("PARLEY_BENCH_TURNS", 20)?;
    let shipped = parley_runtime::agents::VoiceSettings::default().end_of_turn_silence_ms;
    let silence_ms = u32::try_from(env_number("PARLEY_BENCH_SILENCE_MS", shipped as usize)?)?;
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(turns, silence_ms))
}

/// One measured turn.
struct Turn {
    question: &'static str,
    /// Caller: last speech sample pushed → first loud agent frame received, in ms.
    outside_ms: Option<f64>,
    heard: Option<String>,
    answer: Option<String>,
    finish_reason: Option<String>,
    voice: Option<VoiceTimings>,
}

async fn run(turns: usize, silence_ms: u32) -> Result<()> {
    let Some(models) = load_models("voice_latency")? else { return Ok(()) };
    let started_at = now_utc();
    let load_before = load_average();
    let node = Node::start(&models, silence_ms, 4).await?;
    let spoken = questions(models.caller_voice.as_ref()).await?;

    // Warm-up: one question in a call of its own.
    let mut warm_up = node.call().await?;
    warm_up.greeted().await?;
    warm_up.ask(&spoken[0]).await?;
    warm_up.hang_up(&node.runtime).await?;
    node.wait_for_no_calls().await?;

    let mut caller = node.call().await?;
    caller.greeted().await?;
    let mut outside = Vec::new();
    let measuring = Instant::now();
    for turn in 0..turns {
        let question = &spoken[turn % spoken.len()];
        let measured = caller.ask(question).await?;
        eprintln!("turn {turn}: {:?} answered {measured:?} ms after the caller stopped speaking", question.text);
        outside.push((question.text, measured));
    }
    let wall = measuring.elapsed();
    let finished = caller.hang_up(&node.runtime).await?;
    node.wait_for_no_calls().await?;
    let load_after = load_average();
    let messages = node.messages(finished.conversation_id).await?;
    node.stop().await;

    let users: Vec<_> = messages.iter().filter(|message| message.role == MessageRole::User).collect();
    let replies: Vec<_> = messages.iter().filter(|message| message.role == MessageRole::Assistant).collect();
    let paired = users.len() == turns && replies.len() == turns;
    let records: Vec<Turn> = outside
        .iter()
        .enumerate()
        .map(|(index, (question, outside_ms))| {
            let reply = replies.get(index).filter(|_| paired);
            Turn {
                question,
                outside_ms: *outside_ms,
                heard: users.get(index).filter(|_| paired).and_then(|message| message.text.clone()),
                answer: reply.and_then(|message| message.text.clone()),
                finish_reason: reply.and_then(|message| message.finish_reason.clone()),
                voice: reply.and_then(|message| message.timings.as_ref()?.voice.clone()),
            }
        })
        .collect();
    // Every stored spoken answer's timings count, paired with a turn or not.
    let voices: Vec<VoiceTimings> =
        replies.iter().filter_map(|message| message.timings.as_ref()?.voice.clone()).collect();

    models.print_heading("Voice-to-voice latency by stage", &started_at, &load_before, &load_after);
    println!(
        "- **Call:** 48 kHz, end-of-turn silence {silence_ms} ms, answers of at most {} tokens from one document \
         (top 5 passages); {turns} turns in {:.0} s after a warm-up call; {} questions heard, {} answers stored{}.",
        voice_common::ANSWER_TOKENS,
        wall.as_secs_f64(),
        finished.heard.len(),
        replies.len(),
        if paired {
            ""
        } else {
            " (turns and stored messages do not pair up: per-turn rows show the caller's side only)"
        }
    );
    println!("- **Caller audio dropped:** {} samples.", finished.dropped_samples);
    let partials: Vec<f64> = finished.first_partials().into_iter().flatten().collect();
    println!(
        "- **Partial captions:** {} of {} questions had a caption of the caller's words before their final one{}.",
        partials.len(),
        finished.asked.len(),
        if partials.is_empty() {
            String::new()
        } else {
            format!(
                "; the first came {:.0} ms after the end of speech at the median (min {:.0}, max {:.0}; negative: \
                 while the caller was still speaking)",
                percentile(&partials, 50.0),
                percentile(&partials, 0.0),
                percentile(&partials, 100.0)
            )
        }
    );
    println!();

    let stage = |pick: &dyn Fn(&VoiceTimings) -> Option<f64>| -> Vec<f64> { voices.iter().filter_map(pick).collect() };
    let rest = |voice: &VoiceTimings| {
        Some(
            voice.first_audio_ms?
                - voice.end_of_turn_ms
                - voice.transcription_ms
                - voice.first_token_ms?
                - voice.synthesis_ms?,
        )
    };
    let outside_ms: Vec<f64> = records.iter().filter_map(|turn| turn.outside_ms).collect();
    let difference: Vec<f64> =
        records.iter().filter_map(|turn| Some(turn.outside_ms? - turn.voice.as_ref()?.first_audio_ms?)).collect();
    let rows: Vec<(&str, Vec<f64>)> = vec![
        ("end of turn: the silence window waited for", stage(&|voice| Some(voice.end_of_turn_ms))),
        (
            "transcription: waited for after the window (whisper starts at the pause)",
            stage(&|voice| Some(voice.transcription_ms)),
        ),
        ("retrieval (embedding + hybrid search)", stage(&|voice| Some(voice.retrieval_ms))),
        ("question → first token (retrieval, prompt, first step)", stage(&|voice| voice.first_token_ms)),
        ("first token → first sentence queued, hand-offs (remainder)", stage(&rest)),
        ("synthesis of the first sentence (Piper)", stage(&|voice| voice.synthesis_ms)),
        ("**voice-to-voice, stored** (`first_audio_ms`)", stage(&|voice| voice.first_audio_ms)),
        ("voice-to-voice less the silence window", stage(&|voice| Some(voice.first_audio_ms? - voice.end_of_turn_ms))),
        ("**voice-to-voice, measured by the caller**", outside_ms.clone()),
        ("caller's figure − stored figure", difference),
    ];
    println!("| stage (ms) | turns | p50 | p95 | mean | min | max |");
    println!("|---|---|---|---|---|---|---|");
    for (label, values) in &rows {
        println!(
            "| {label} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            values.len(),
            percentile(values, 50.0),
            percentile(values, 95.0),
            mean(values),
            percentile(values, 0.0),
            percentile(values, 100.0)
        );
    }
    println!();
    println!(
        "Retrieval is part of \"question → first token\"; the rows above the stored voice-to-voice add up to it.\n"
    );

    let verdict = |label: &str, value: f64, target: f64| {
        let outcome = if value < target { "met" } else { "missed" };
        println!("- {label}: {value:.0} ms against a target under {target:.0} ms: **{outcome}**.");
    };
    verdict("p50 voice-to-voice (caller's clock)", percentile(&outside_ms, 50.0), 800.0);
    verdict("p95 voice-to-voice (caller's clock)", percentile(&outside_ms, 95.0), 1500.0);
    println!();

    println!("Per turn:\n");
    println!("| # | question | heard | answer (finish reason) | stored ms | caller ms |");
    println!("|---|---|---|---|---|---|");
    for (index, turn) in records.iter().enumerate() {
        let heard = turn.heard.clone().unwrap_or_else(|| "–".to_owned());
        let mark = if overlap(turn.question, &heard) >= 0.6 { "" } else { " ⚠" };
        let answer = turn.answer.clone().unwrap_or_else(|| "–".to_owned());
        let answer: String =
            answer.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "/").chars().take(70).collect();
        let answer = answer.replace('<', "&lt;");
        let cell = |value: Option<f64>| value.map_or_else(|| "–".to_owned(), |value| format!("{value:.0}"));
        println!(
            "| {} | {} | {heard}{mark} | {answer}… ({}) | {} | {} |",
            index + 1,
            turn.question,
            turn.finish_reason.as_deref().unwrap_or("–"),
            cell(turn.voice.as_ref().and_then(|voice| voice.first_audio_ms)),
            cell(turn.outside_ms)
        );
    }
    println!();
    println!("⚠: fewer than 60% of the question's words were heard.\n");
    Ok(())
}
