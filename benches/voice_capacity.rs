//! How many calls this machine carries at once before the call pipeline falls behind real
//! time, and the memory each call takes beyond the shared models.
//!
//! The node is the one of `voice_latency` (`voice_common`): the engines `parley serve` loads
//! with its default settings (whisper tiny.en with one worker, Silero VAD, the Piper voice, the
//! local SmolLM2 model with one inference thread, the embedding model), SQLite in a temporary
//! directory, one agent answering from one uploaded document, 48 kHz calls. Callers, node and
//! models share the machine's cores.
//!
//! **Capacity.** For N in `PARLEY_BENCH_CALLS` (default 1,2,3,4,6,8), N calls run at once.
//! Call i starts i·P/N seconds after the first, so the questions of different calls are spread
//! over time as independent callers' would be. Each caller waits for the agent's disclosure and
//! greeting, then plays a fixed script in real time, 20 ms at a time: Q questions
//! (`PARLEY_BENCH_QUESTIONS`, default 3), each at the start of its own slot of P seconds
//! (`PARLEY_BENCH_SLOT_SECONDS`, default 25), silence for the rest of the slot. The caller does
//! not wait for the agent: the next question comes when its slot starts.
//!
//! A turn's **real-time factor** is the time from the first sample of the question to the first
//! loud agent audio frame after its speech ended (RMS −44 dBFS or more), divided by the slot P:
//! the share of the caller's time the node needs to hear the question, wait for the end of the
//! turn, transcribe, search, generate the first sentence, synthesise it and start speaking. A
//! turn with no answer before the call ends counts as infinite. The node **keeps up with N
//! calls** when, for every turn of every call, the factor is at most 1 (the answer began before
//! the caller's next question), the answer was generated and spoken to its end before the next
//! question (its stored finish reason is not `interrupted`, `cancelled` or `error`), every
//! question was heard and answered once, and no caller audio was dropped
//! (`CallAudioIn::dropped_samples`, the pipeline's input buffer overflowing). The capacity is the
//! largest N that keeps up; the ramp stops at the first N that does not.
//!
//! **Memory.** `VmRSS` and `RssAnon` of this process (`/proc/self/status`), which holds the node,
//! the models and the callers:
//! - baseline: models loaded, one warm-up call answered and hung up, 0 calls live;
//! - idle: `PARLEY_BENCH_IDLE_CALLS` calls (default 20) live at once, each greeted and then fed
//!   silence in real time; per call = (idle − baseline) / calls;
//! - talking: the peak over the capacity run with N calls (sampled every 250 ms). The table gives
//!   (peak − `VmRSS` just before the level) / N, which includes the shared engines' working memory
//!   while they answer (the language model's caches, whisper's and Piper's buffers): an upper
//!   bound, loosest at small N. The figure per talking call is the largest step between two
//!   levels that ran, (peak at the larger N − peak at the smaller N) / the calls added, leaving
//!   out the first step when there are more: the first also holds the shared memory that grows
//!   once when calls first overlap (seen: +85 MB from 1 to 2 calls, then 0–5 MB per call).
//!
//! A turn's answer is the first loud agent frame after the question's speech ended that follows
//! 600 ms without loud frames (`voice_common::answer_onset`), so an earlier answer still playing
//! is not taken for it.
//!
//! `cargo bench --bench voice_capacity` runs it (about 2 minutes per N with the defaults).
//! It skips, saying why, when the models are not installed (`make models`). Without `--bench`
//! (as under `cargo test --all-targets`) it exits at once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use parley_runtime::chat::conversations::{MessageRole, VoiceTimings};
use tokio::sync::watch;

#[path = "voice_common/mod.rs"]
mod voice_common;
use voice_common::facts::{load_average, now_utc};
use voice_common::{
    env_number, load_models, megabytes, millis, percentile, questions, Finished, Memory, Node, Spoken, STEP_LIMIT,
};

/// Calls the agent accepts at once: out of the way.
const MAX_CALLS: u32 = 1_000;

fn main() -> Result<()> {
    if !std::env::args().any(|argument| argument == "--bench") {
        println!("voice_capacity: run it with `cargo bench --bench voice_capacity`");
        return Ok(());
    }
    let levels: Vec<usize> = std::env::var("PARLEY_BENCH_CALLS")
        .unwrap_or_else(|_| "1,2,3,4,6,8".to_owned())
        .split(',')
        .map(|level| level.trim().parse::<usize>().context("PARLEY_BENCH_CALLS is a list of numbers like 1,2,4"))
        .collect::<Result<_>>()?;
    if levels.contains(&0) || levels.is_empty() {
        bail!("PARLEY_BENCH_CALLS must list numbers of calls of at least 1");
    }
    let plan = Plan {
        levels,
        questions: env_number("PARLEY_BENCH_QUESTIONS", 3)?,
        slot: Duration::from_secs(env_number("PARLEY_BENCH_SLOT_SECONDS", 25)? as u64),
        idle_calls: env_number("PARLEY_BENCH_IDLE_CALLS", 20)?,
    };
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(plan))
}

struct Plan {
    levels: Vec<usize>,
    questions: usize,
    slot: Duration,
    idle_calls: usize,
}

/// What one capacity level gave.
struct Level {
    calls: usize,
    turns: usize,
    /// Per turn: real-time factor (infinite when unanswered).
    factors: Vec<f64>,
    /// Per answered turn: the caller's voice-to-voice time, ms.
    voice_to_voice: Vec<f64>,
    heard_ok: bool,
    answers_stored: usize,
    /// Answers not generated and spoken to the end within their slot.
    cut_short: usize,
    dropped_samples: u64,
    voices: Vec<VoiceTimings>,
    /// Before the level's calls started, and the highest while they ran.
    before: Memory,
    peak: Memory,
    load_after: String,
}

impl Level {
    fn keeps_up(&self) -> bool {
        self.heard_ok
            && self.answers_stored == self.turns
            && self.cut_short == 0
            && self.dropped_samples == 0
            && self.factors.iter().all(|factor| *factor <= 1.0)
    }
}

async fn run(plan: Plan) -> Result<()> {
    let Some(models) = load_models("voice_capacity")? else { return Ok(()) };
    let started_at = now_utc();
    let load_before = load_average();
    let silence_ms = parley_runtime::agents::VoiceSettings::default().end_of_turn_silence_ms;
    let node = Arc::new(Node::start(&models, silence_ms, MAX_CALLS).await?);
    let spoken: Arc<Vec<Spoken>> = Arc::new(questions(models.caller_voice.as_ref()).await?);
    if let Some(long) = spoken.iter().find(|question| question.seconds() >= plan.slot.as_secs_f64()) {
        bail!("the question {:?} lasts {:.1} s, longer than a slot", long.text, long.seconds());
    }

    // Warm-up: one question in a call of its own, then the baseline.
    let mut warm_up = node.call().await?;
    warm_up.greeted().await?;
    warm_up.ask(&spoken[0]).await?;
    warm_up.hang_up(&node.runtime).await?;
    node.wait_for_no_calls().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline = Memory::now()?;

    // Idle calls.
    eprintln!("{} idle calls", plan.idle_calls);
    let (idle, idle_live, after_idle) = idle_memory(&node, plan.idle_calls).await?;

    // Capacity ramp.
    let mut levels = Vec::new();
    for &calls in &plan.levels {
        eprintln!("{calls} calls talking");
        let level = capacity_level(&node, &spoken, calls, plan.questions, plan.slot).await?;
        let keeps_up = level.keeps_up();
        eprintln!(
            "{calls} calls: keeps up {keeps_up}, factors {:?}",
            level.factors.iter().map(|factor| format!("{factor:.2}")).collect::<Vec<_>>()
        );
        levels.push(level);
        if !keeps_up {
            break;
        }
    }
    let load_after = load_average();
    if let Ok(node) = Arc::try_unwrap(node) {
        node.stop().await;
    }

    models.print_heading("Concurrent calls and memory per call", &started_at, &load_before, &load_after);
    println!(
        "- **Script per call:** {} questions, one every {} s (slot); calls started {}/N s apart; answers of at most {} \
         tokens; end-of-turn silence {silence_ms} ms.",
        plan.questions,
        plan.slot.as_secs(),
        plan.slot.as_secs(),
        voice_common::ANSWER_TOKENS
    );
    println!();

    println!(
        "| calls | turns | answered in their slot | real-time factor p50 / p95 / max | voice-to-voice p50 / p95 (ms) | \
         transcription p95 (ms) | question → first token p95 (ms) | answers cut short | caller audio dropped | peak \
         VmRSS (MB) | (peak − VmRSS before) / calls (MB) | load after | keeps up |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for level in &levels {
        let answered = level.factors.iter().filter(|factor| **factor <= 1.0).count();
        let factor = |p: f64| {
            let value = percentile(&level.factors, p);
            if value.is_finite() {
                format!("{value:.2}")
            } else {
                "∞".to_owned()
            }
        };
        let transcription: Vec<f64> = level.voices.iter().map(|voice| voice.transcription_ms).collect();
        let first_token: Vec<f64> = level.voices.iter().filter_map(|voice| voice.first_token_ms).collect();
        println!(
            "| {} | {} | {answered} | {} / {} / {} | {:.0} / {:.0} | {:.0} | {:.0} | {} | {} | {:.1} | {:.1} | {} | {} |",
            level.calls,
            level.turns,
            factor(50.0),
            factor(95.0),
            factor(100.0),
            percentile(&level.voice_to_voice, 50.0),
            percentile(&level.voice_to_voice, 95.0),
            percentile(&transcription, 95.0),
            percentile(&first_token, 95.0),
            level.cut_short,
            level.dropped_samples,
            megabytes(level.peak.rss),
            megabytes(level.peak.rss.saturating_sub(level.before.rss)) / level.calls as f64,
            level.load_after,
            if level.keeps_up() { "yes" } else { "**no**" }
        );
    }
    println!();
    let capacity = levels.iter().take_while(|level| level.keeps_up()).map(|level| level.calls).last();
    match capacity {
        Some(calls) if levels.iter().all(Level::keeps_up) => println!(
            "**Capacity: at least {calls} calls** (every level tried kept up; try larger values of PARLEY_BENCH_CALLS).\n"
        ),
        Some(calls) => println!("**Capacity: {calls} calls at once** (the next level tried did not keep up).\n"),
        None => println!("**Capacity: below one call** (a single call did not keep up).\n"),
    }

    println!("| process memory | VmRSS MB | RssAnon MB | live calls |");
    println!("|---|---|---|---|");
    println!(
        "| baseline: models loaded, warm-up call over | {:.1} | {:.1} | 0 |",
        megabytes(baseline.rss),
        megabytes(baseline.anonymous)
    );
    println!(
        "| {} idle calls (greeted, silence streaming in) | {:.1} | {:.1} | {idle_live} |",
        plan.idle_calls,
        megabytes(idle.rss),
        megabytes(idle.anonymous)
    );
    println!("| after they hung up | {:.1} | {:.1} | 0 |", megabytes(after_idle.rss), megabytes(after_idle.anonymous));
    println!();
    let per_idle = megabytes(idle.rss.saturating_sub(baseline.rss)) / plan.idle_calls as f64;
    let outcome = |megabytes: f64| if megabytes < 20.0 { "met" } else { "missed" };
    println!(
        "- Per idle call: **{per_idle:.2} MB** VmRSS beyond the shared models: target under 20 MB **{}**.",
        outcome(per_idle)
    );
    // At one level the rise above the RSS before it is mostly the shared engines' working memory;
    // from one level to the next, the peaks differ by what the extra calls hold. The first step
    // also holds the shared memory that grows once when calls first overlap (the local model's
    // kept prompt starts, allocator pools), so the per-call figure comes from the later steps.
    let steps: Vec<(usize, usize, f64)> = levels
        .windows(2)
        .map(|pair| {
            let rise = pair[1].peak.rss as f64 - pair[0].peak.rss as f64;
            (pair[0].calls, pair[1].calls, rise / (1024.0 * 1024.0) / (pair[1].calls as f64 - pair[0].calls as f64))
        })
        .collect();
    let listed: Vec<String> =
        steps.iter().map(|(from, to, per_call)| format!("{from} → {to} calls: {per_call:.2} MB")).collect();
    match steps.as_slice() {
        [] => println!(
            "- Per talking call: not measured; it needs two levels that run (one level's rise above the RSS before \
             it is mostly the shared engines' working memory)."
        ),
        [(_, _, only)] => println!(
            "- Per talking call, the one step between levels (it also holds the shared memory that grows once when \
             calls first overlap): **{only:.2} MB** (peak at the larger N − peak at the smaller N) / the calls \
             added: target under 20 MB **{}**.",
            outcome(*only)
        ),
        [_, later @ ..] => {
            let per_talking = later.iter().map(|(_, _, per_call)| *per_call).fold(f64::MIN, f64::max);
            println!(
                "- Per talking call, the largest step after the first: **{per_talking:.2} MB** (peak at the larger N \
                 − peak at the smaller N) / the calls added: target under 20 MB **{}**. Steps: {}; the first also \
                 holds the shared memory that grows once when calls first overlap.",
                outcome(per_talking),
                listed.join(", ")
            );
        }
    }
    println!();
    Ok(())
}

/// Opens `count` calls, waits until each has been greeted, reads the memory with all of them
/// live and silent, hangs them up and reads it again. Returns (idle, live calls seen, after).
async fn idle_memory(node: &Arc<Node>, count: usize) -> Result<(Memory, usize, Memory)> {
    let (hang_up, hang_up_now) = watch::channel(false);
    let (ready, mut readies) = tokio::sync::mpsc::channel::<()>(count);
    let mut tasks = Vec::new();
    for _ in 0..count {
        let node = Arc::clone(node);
        let hang_up_now = hang_up_now.clone();
        let ready = ready.clone();
        tasks.push(tokio::spawn(async move {
            let mut caller = node.call().await?;
            caller.greeted().await?;
            let _ = ready.send(()).await;
            caller.run_until(Duration::from_secs(3600), |_| *hang_up_now.borrow()).await;
            caller.hang_up(&node.runtime).await
        }));
    }
    drop(ready);
    for _ in 0..count {
        if readies.recv().await.is_none() {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = Memory::now()?;
    let live = node.runtime.calls().live_calls();
    hang_up.send_replace(true);
    for task in tasks {
        task.await??;
    }
    node.wait_for_no_calls().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok((idle, live, Memory::now()?))
}

/// Runs `calls` talking calls at once; see the module's documentation.
async fn capacity_level(
    node: &Arc<Node>,
    spoken: &Arc<Vec<Spoken>>,
    calls: usize,
    questions: usize,
    slot: Duration,
) -> Result<Level> {
    let before = Memory::now()?;
    let (stop_sampling, mut sampling_stopped) = watch::channel(false);
    let sampler = tokio::spawn(async move {
        let mut peak = Memory::now().unwrap_or_default();
        loop {
            tokio::select! {
                _ = sampling_stopped.wait_for(|stopped| *stopped) => return peak,
                () = tokio::time::sleep(Duration::from_millis(250)) => {
                    if let Ok(now) = Memory::now() {
                        if now.rss > peak.rss {
                            peak = now;
                        }
                    }
                }
            }
        }
    });
    let stagger = slot / u32::try_from(calls)?;
    let mut tasks = Vec::new();
    for call in 0..calls {
        let (node, spoken) = (Arc::clone(node), Arc::clone(spoken));
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(stagger * u32::try_from(call)?).await;
            let mut caller = node.call().await?;
            caller.greeted().await?;
            for question in 0..questions {
                let question = &spoken[(call + question) % spoken.len()];
                caller.say(question);
                caller.pause(slot - Duration::from_secs_f64(question.seconds()));
            }
            let limit = slot * u32::try_from(questions)? + STEP_LIMIT;
            if !caller.run_until(limit, |caller| caller.queued() == 0).await {
                bail!("a caller's script did not play to its end");
            }
            caller.hang_up(&node.runtime).await
        }));
    }
    let mut finished: Vec<Finished> = Vec::new();
    for task in tasks {
        finished.push(task.await??);
    }
    node.wait_for_no_calls().await?;
    stop_sampling.send_replace(true);
    let peak = sampler.await?;

    let mut level = Level {
        calls,
        turns: calls * questions,
        factors: Vec::new(),
        voice_to_voice: Vec::new(),
        heard_ok: true,
        answers_stored: 0,
        cut_short: 0,
        dropped_samples: 0,
        voices: Vec::new(),
        before,
        peak,
        load_after: load_average(),
    };
    for call in &finished {
        level.dropped_samples += call.dropped_samples;
        level.heard_ok &= call.heard.len() == questions;
        for asked in &call.asked {
            let (Some(started), Some(ended)) = (asked.started, asked.speech_ended) else {
                level.factors.push(f64::INFINITY);
                continue;
            };
            match call.answer_after(ended) {
                Some(answered) => {
                    level.factors.push(answered.duration_since(started).as_secs_f64() / slot.as_secs_f64());
                    level.voice_to_voice.push(millis(answered.duration_since(ended)));
                }
                None => level.factors.push(f64::INFINITY),
            }
        }
        let messages = node.messages(call.conversation_id).await?;
        for reply in messages.iter().filter(|message| message.role == MessageRole::Assistant) {
            level.answers_stored += 1;
            if matches!(reply.finish_reason.as_deref(), Some("interrupted" | "cancelled" | "error")) {
                level.cut_short += 1;
            }
            if let Some(voice) = reply.timings.as_ref().and_then(|timings| timings.voice.clone()) {
                level.voices.push(voice);
            }
        }
    }
    Ok(level)
}
