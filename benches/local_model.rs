//! The local chat model's speed on a typical retrieval-augmented prompt, beside llama.cpp's
//! `llama-bench` on the same GGUF file in the same run.
//!
//! Parley side: the real local model from the model cache (`LocalLanguageModel::load`, one
//! inference thread, as a node runs it), a prompt built by `parley_runtime::chat::prompt::build`
//! from the default persona, four support-site passages and a question (about 700 tokens),
//! greedy decoding, at most 64 new tokens. One warm-up run, then five measured runs, each a
//! fresh request computed from scratch (`reuse_prompt_starts: false`). Per run: time to first
//! token (request → first text piece: queue, prompt processing, first decoding step), and
//! generation speed ((tokens − 1) / (last piece − first piece)). The prompt-processing rate
//! quoted is prompt tokens / time to first token.
//!
//! Then the same with prompt starts reused, as a node runs: each run's passages come in another
//! order, so what a prompt shares with the one before is the persona and Parley's rules.
//!
//! Reference: `llama-bench -m <same file> -t 2 -p <same prompt token count> -n 64 -r 3 -o json`
//! (`~/.cache/parley/peers/llama.cpp/build/bin/llama-bench`, built by `make llama-server`;
//! `PARLEY_LLAMA_BENCH` names another). When it is missing that part is skipped, saying so.
//!
//! `cargo bench --bench local_model` runs it. Without `--bench` (as under
//! `cargo test --all-targets`) it exits at once.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use parley_config::Settings;
use parley_models::llm::{GenerationParams, GenerationRequest, LanguageModel, StreamEvent};
use parley_models::{LocalLanguageModel, LocalModelOptions};
use parley_runtime::chat::prompt::{self, Budget, PromptInput};
use parley_runtime::chat::Passage;
use serde_json::Value;
use uuid::Uuid;

#[path = "chat_common/facts.rs"]
mod facts;
use facts::{load_average, machine, now_utc};

const MAX_TOKENS: u32 = 64;
const WARM_UP_RUNS: usize = 1;
const MEASURED_RUNS: usize = 5;
/// Threads llama-bench uses (this machine's cores).
const LLAMA_THREADS: usize = 2;
const LLAMA_REPETITIONS: usize = 3;

const PERSONA: &str = parley_runtime::agents::DEFAULT_SYSTEM_PROMPT;
const QUESTION: &str = "My e-bike battery only holds half its charge after a year. Is that covered by the \
                        warranty, and what do I need to send in?";

/// (title, section, text) of the retrieved passages, best first.
const PASSAGES: [(&str, &str, &str); 4] = [
    (
        "Warranty and guarantees",
        "E-bike batteries",
        "Every Voltaro e-bike battery carries a two-year warranty from the date of purchase. During that time \
         we replace a battery free of charge if its capacity drops below 70% of the rated capacity under normal \
         use. Capacity is measured in our workshop with a full charge and discharge cycle, which takes about \
         two working days. A battery that still holds 70% or more is working as designed; we can recalibrate \
         its management system, which often restores the range shown on the display.",
    ),
    (
        "Warranty and guarantees",
        "What the warranty does not cover",
        "The warranty does not cover damage from falls, water immersion, opening the battery case, charging \
         with a charger that is not a Voltaro charger, or storage below -10 °C or above 45 °C. Cosmetic wear \
         such as scratches on the case is not covered either. Batteries used for commercial rental or delivery \
         services have a one-year warranty instead of two.",
    ),
    (
        "Returns and repairs",
        "Sending a battery in",
        "To send a battery in, open a repair request from your account page and choose \"Battery\". You will \
         receive a prepaid shipping label by e-mail within one working day. Pack the battery in its original \
         box or in the free safety bag we post to you on request; lithium batteries must not be shipped in \
         ordinary envelopes. Please include a copy of your receipt and write the frame number of your bike on \
         the repair form, because the warranty is tied to the bike's date of purchase.",
    ),
    (
        "Care guide",
        "Getting the most from your battery",
        "Store the battery at room temperature with a charge between 40% and 70% if you will not ride for \
         several weeks. Avoid leaving it fully charged in a hot car. A battery loses some capacity every year \
         even with good care: after 500 full charge cycles a capacity of about 80% is normal. The display's \
         range estimate adapts to your riding style, so it can vary by several kilometres from day to day.",
    ),
];

fn main() -> Result<()> {
    if !std::env::args().any(|argument| argument == "--bench") {
        println!("local_model: run it with `cargo bench --bench local_model`");
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run())
}

/// One measured answer.
#[derive(Debug, Clone, Copy)]
struct Run {
    first_token: Duration,
    completion_tokens: u32,
    /// From the first text piece to the end of the answer.
    writing: Duration,
    prompt_tokens: u32,
}

impl Run {
    fn tokens_per_second(&self) -> f64 {
        f64::from(self.completion_tokens.saturating_sub(1)) / self.writing.as_secs_f64()
    }
}

async fn run() -> Result<()> {
    let started_at = now_utc();
    let load_before = load_average();
    let settings = Settings { home_dir: std::env::var_os("HOME").map(PathBuf::from), ..Settings::default() };
    let directory = parley_models::installed_dir(&settings.models_dir(), &parley_models::CHAT_MODEL_PACKAGE)
        .context("the chat model is not installed; run `make models`")?;
    let gguf = directory.join(parley_models::llm::local::MODEL_FILE);
    // Every measured prompt is computed from scratch, as llama-bench computes it; the reuse of
    // prompt starts is measured separately below.
    let options = LocalModelOptions { inference_threads: 1, queue_capacity: 4, reuse_prompt_starts: false };
    let loading = Instant::now();
    let model = LocalLanguageModel::load(&directory, options)?;
    let load_seconds = loading.elapsed().as_secs_f64();

    let passages: Vec<Passage> = PASSAGES
        .iter()
        .enumerate()
        .map(|(index, (title, section, text))| Passage {
            number: index + 1,
            document_id: Uuid::now_v7(),
            chunk_id: Uuid::now_v7(),
            title: (*title).to_owned(),
            section: vec![(*section).to_owned()],
            text: (*text).to_owned(),
            score: 0.8 - 0.1 * index as f32,
            snippet: String::new(),
            highlights: Vec::new(),
        })
        .collect();
    // The request with the passages turned by `rotation` (renumbered in their new order).
    let request_for = |model: &LocalLanguageModel, rotation: usize| -> Result<(GenerationRequest, usize)> {
        let mut passages = passages.clone();
        let turn = rotation % passages.len();
        passages.rotate_left(turn);
        for (index, passage) in passages.iter_mut().enumerate() {
            passage.number = index + 1;
        }
        let count = |text: &str| model.count_tokens(text);
        let built = prompt::build(
            &PromptInput {
                persona: PERSONA,
                agent_name: "Voltaro support",
                no_answer_message: "I'm sorry, I don't know that. I can only answer from this site's documents.",
                passages: &passages,
                history: &[],
                question: QUESTION,
            },
            &Budget { context_tokens: model.context_tokens(), answer_tokens: MAX_TOKENS as usize, count: &count },
        );
        if built.passages_used != passages.len() {
            bail!("the prompt kept {} of {} passages", built.passages_used, passages.len());
        }
        let prompt_tokens = model.encode_prompt(&built.messages).len();
        let params =
            GenerationParams { temperature: 0.0, top_p: 1.0, max_tokens: MAX_TOKENS, stop: Vec::new(), seed: None };
        Ok((GenerationRequest { model: String::new(), messages: built.messages, params }, prompt_tokens))
    };
    let (request, prompt_tokens) = request_for(&model, 0)?;

    let mut runs = Vec::new();
    let mut answer = String::new();
    for index in 0..WARM_UP_RUNS + MEASURED_RUNS {
        let (run, text) = generate(&model, &request).await?;
        eprintln!(
            "run {index}: first token {:.0} ms, {} tokens at {:.1} tokens/s",
            run.first_token.as_secs_f64() * 1e3,
            run.completion_tokens,
            run.tokens_per_second()
        );
        if index >= WARM_UP_RUNS {
            runs.push(run);
            answer = text;
        }
    }
    drop(model);

    // The same prompt with a prompt start reused: the model has seen prompts of the same persona
    // and rules before, with the passages in other orders (so what is common ends where the
    // first passage begins, as between two questions to one agent).
    let model = LocalLanguageModel::load(&directory, LocalModelOptions { reuse_prompt_starts: true, ..options })?;
    let mut reuse_runs = Vec::new();
    let mut reused = Vec::new();
    for index in 0..WARM_UP_RUNS + MEASURED_RUNS {
        let (request, _) = request_for(&model, index + 1)?;
        let before = model.reused_prompt_tokens();
        let (run, _) = generate(&model, &request).await?;
        eprintln!(
            "reuse run {index}: first token {:.0} ms, {} prompt tokens reused",
            run.first_token.as_secs_f64() * 1e3,
            model.reused_prompt_tokens() - before
        );
        if index >= WARM_UP_RUNS {
            reused.push((model.reused_prompt_tokens() - before) as f64);
            reuse_runs.push(run);
        }
    }
    drop(model);
    let load_after_parley = load_average();

    let first_token_ms = median(runs.iter().map(|run| run.first_token.as_secs_f64() * 1e3).collect());
    let prompt_rate = median(runs.iter().map(|run| prompt_tokens as f64 / run.first_token.as_secs_f64()).collect());
    let generation_rate = median(runs.iter().map(Run::tokens_per_second).collect());
    let completion_tokens = median(runs.iter().map(|run| f64::from(run.completion_tokens)).collect());
    let reported_prompt_tokens = runs.first().map(|run| run.prompt_tokens).unwrap_or_default();

    println!("### Local model: time to first token and generation speed\n");
    println!("- **Date:** {started_at}; **machine:** {}.", machine());
    println!("- **Load average** (1, 5, 15 min): {load_before} before, {load_after_parley} after Parley's runs.");
    println!(
        "- **Model:** `{}` (loaded in {load_seconds:.1} s), one inference thread; candle's CPU thread pool \
         {}.",
        gguf.display(),
        match std::env::var("CANDLE_NUM_THREADS").or_else(|_| std::env::var("RAYON_NUM_THREADS")) {
            Ok(threads) => format!("set to {threads} threads by the environment"),
            Err(_) => "defaults to the physical cores".to_owned(),
        }
    );
    println!(
        "- **Prompt:** `prompt::build` with the default persona, {} passages and a question: **{prompt_tokens} \
         tokens** as fed to the model (the engine reported {reported_prompt_tokens}). Greedy, at most \
         {MAX_TOKENS} new tokens; the answer had {completion_tokens:.0} tokens. {WARM_UP_RUNS} warm-up run, \
         {MEASURED_RUNS} measured, medians below.",
        passages.len()
    );
    println!("- **Answer** (last run): {:?}", answer.trim());
    println!();
    println!("| engine | prompt tokens/s | generation tokens/s | time to first token |");
    println!("|---|---|---|---|");
    println!(
        "| Parley (candle, `LocalLanguageModel`) | {prompt_rate:.1} (prompt tokens / time to first token) | \
         {generation_rate:.1} | {first_token_ms:.0} ms |"
    );
    println!(
        "| Parley, the prompt's start reused ({:.0} of {prompt_tokens} tokens, median) | – | {:.1} | {:.0} ms |",
        median(reused),
        median(reuse_runs.iter().map(Run::tokens_per_second).collect()),
        median(reuse_runs.iter().map(|run| run.first_token.as_secs_f64() * 1e3).collect())
    );

    let llama_bench = std::env::var_os("PARLEY_LLAMA_BENCH").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        home.join(".cache/parley/peers/llama.cpp/build/bin/llama-bench")
    });
    if !llama_bench.is_file() {
        println!();
        println!(
            "**llama-bench is missing** at `{}` (run `make llama-server`, or set `PARLEY_LLAMA_BENCH`): the \
             reference was skipped.",
            llama_bench.display()
        );
        println!();
        return Ok(());
    }
    let reference = llama_bench_rates(&llama_bench, &gguf, prompt_tokens)?;
    let llama_first_token_ms = prompt_tokens as f64 / reference.prompt.0 * 1e3 + 1e3 / reference.generation.0;
    println!(
        "| llama.cpp `llama-bench` | {:.1} ± {:.1} | {:.1} ± {:.1} | ~{llama_first_token_ms:.0} ms (derived: \
         prompt / pp rate + one token at the tg rate) |",
        reference.prompt.0, reference.prompt.1, reference.generation.0, reference.generation.1
    );
    println!();
    println!(
        "Parley / llama.cpp: prompt processing {:.2}×, generation {:.2}×. Load average after llama-bench: {}.",
        prompt_rate / reference.prompt.0,
        generation_rate / reference.generation.0,
        load_average()
    );
    println!();
    println!("Reference command: `{}`", reference.command);
    println!();
    Ok(())
}

/// Generates one answer; returns its timings and text.
async fn generate(model: &LocalLanguageModel, request: &GenerationRequest) -> Result<(Run, String)> {
    let started = Instant::now();
    let mut stream = model.generate(request.clone()).await?;
    let mut first = None;
    let mut text = String::new();
    while let Some(event) = stream.recv().await {
        match event? {
            StreamEvent::Text(piece) => {
                first.get_or_insert_with(Instant::now);
                text.push_str(&piece);
            }
            StreamEvent::Done { usage, .. } => {
                let done = Instant::now();
                let first = first.context("the answer is empty")?;
                let run = Run {
                    first_token: first - started,
                    completion_tokens: usage.completion_tokens,
                    writing: done - first,
                    prompt_tokens: usage.prompt_tokens,
                };
                return Ok((run, text));
            }
        }
    }
    bail!("the answer ended without `Done`")
}

/// llama-bench's rates: (mean, standard deviation) tokens/s.
struct Reference {
    command: String,
    prompt: (f64, f64),
    generation: (f64, f64),
}

fn llama_bench_rates(llama_bench: &Path, gguf: &Path, prompt_tokens: usize) -> Result<Reference> {
    let arguments = [
        "-m".to_owned(),
        gguf.display().to_string(),
        "-t".to_owned(),
        LLAMA_THREADS.to_string(),
        "-p".to_owned(),
        prompt_tokens.to_string(),
        "-n".to_owned(),
        MAX_TOKENS.to_string(),
        "-r".to_owned(),
        LLAMA_REPETITIONS.to_string(),
        "-o".to_owned(),
        "json".to_owned(),
    ];
    let command = format!("{} {}", llama_bench.display(), arguments.join(" "));
    eprintln!("running {command}");
    let output = std::process::Command::new(llama_bench).args(&arguments).output()?;
    if !output.status.success() {
        bail!("llama-bench failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    let results: Value = serde_json::from_slice(&output.stdout).context("llama-bench's output is not JSON")?;
    let mut prompt = None;
    let mut generation = None;
    for result in results.as_array().into_iter().flatten() {
        let rate = (result["avg_ts"].as_f64().unwrap_or(0.0), result["stddev_ts"].as_f64().unwrap_or(0.0));
        match (result["n_prompt"].as_u64(), result["n_gen"].as_u64()) {
            (Some(prompt_count), Some(0)) if prompt_count > 0 => prompt = Some(rate),
            (Some(0), Some(generated)) if generated > 0 => generation = Some(rate),
            _ => {}
        }
    }
    Ok(Reference {
        command,
        prompt: prompt.context("no prompt-processing result from llama-bench")?,
        generation: generation.context("no generation result from llama-bench")?,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        length if length % 2 == 1 => values[length / 2],
        length => (values[length / 2 - 1] + values[length / 2]) / 2.0,
    }
}
