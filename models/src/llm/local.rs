//! [`LocalLanguageModel`]: a GGUF chat model (llama architecture, ChatML template, e.g.
//! SmolLM2-135M-Instruct) run in-process with candle on the CPU.
//!
//! - The weights are read once and shared by every request; each request clones the model
//!   structure (reference-counted tensors) to get its own, empty KV cache. Tensors in a
//!   quantisation type candle only has a scalar CPU kernel for (Q4_1, Q5_0, Q5_1) are converted
//!   to Q8_0 at load: about 2.5x faster decoding and 3x faster prompt processing for
//!   SmolLM2's Q4_1, at the cost of ~50 MB more memory and answers that are not bit-identical
//!   to the Q4_1 arithmetic.
//! - A prompt that begins like an earlier one (every prompt of an agent opens with Parley's
//!   rules and its persona) resumes from the model's state after that common start instead of
//!   computing it again; the answer is the same bit for bit (see `prefix`).
//! - The context window is the file's `llama.context_length`, capped at candle's
//!   `quantized_llama::MAX_SEQ_LEN` (4096), beyond which its rotary tables do not reach.
//! - Generation runs on dedicated threads fed by a bounded queue: [`LanguageModel::generate`]
//!   waits for a queue slot, so a burst of requests queues instead of thrashing the CPU.
//! - The prompt is ChatML, built from token ids: message content is encoded as plain text, so a
//!   message cannot inject `<|im_end|>` or any other control token.
//! - A stream sends whole UTF-8 characters only, never any part of a stop string, and stops at
//!   the next token once its receiver is dropped.

mod output;
mod prefix;

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fs::File;
use std::hash::BuildHasher;
use std::io::{self, BufReader};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_llama::{self, ModelWeights};
use tokio::sync::mpsc;

use super::gguf_tokenizer::{integer, GgufTokenizer};
use super::{
    BoxFuture, ChatMessage, ChatRole, FinishReason, GenerationParams, GenerationRequest, LanguageModel, StreamEvent,
    TokenStream, Usage,
};
use crate::error::ModelError;
use output::{Step, TextOutput};
use prefix::{chunk_end, PrefixCache, Start};

/// The model file in an installed model directory.
pub const MODEL_FILE: &str = "model.gguf";

/// Events a stream buffers before generation waits for the reader.
const STREAM_CAPACITY: usize = 32;

const IM_START: &str = "<|im_start|>";
const IM_END: &str = "<|im_end|>";
const END_OF_TEXT: &str = "<|endoftext|>";

/// How a [`LocalLanguageModel`] schedules its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalModelOptions {
    /// Requests generated at the same time, each on its own thread (0 counts as 1).
    pub inference_threads: usize,
    /// Accepted requests waiting for a thread; further requests wait in
    /// [`LanguageModel::generate`] (0 counts as 1).
    pub queue_capacity: usize,
    /// Resume prompts from the computed start of earlier prompts that began the same way (on by
    /// default; off only to measure prompt processing from scratch).
    pub reuse_prompt_starts: bool,
}

impl Default for LocalModelOptions {
    fn default() -> Self {
        Self { inference_threads: 1, queue_capacity: 16, reuse_prompt_starts: true }
    }
}

/// A local GGUF chat model. Cheap to share (`Arc<dyn LanguageModel>`); its threads end once it
/// is dropped and their current request is done.
pub struct LocalLanguageModel {
    engine: Arc<Engine>,
    jobs: mpsc::Sender<Job>,
    options: LocalModelOptions,
}

// Sharing one loaded model between tasks is the point; fail the build if that ever breaks.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<LocalLanguageModel>();
};

impl std::fmt::Debug for LocalLanguageModel {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LocalLanguageModel")
            .field("id", &self.engine.id)
            .field("path", &self.engine.path)
            .field("context_tokens", &self.engine.context_tokens)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// What the inference threads share: the weights, the tokenizer and the chat format.
struct Engine {
    id: String,
    path: PathBuf,
    /// The loaded model with an empty KV cache; each request works on its own clone.
    weights: ModelWeights,
    tokenizer: GgufTokenizer,
    chat: ChatFormat,
    /// Tokens that end the answer (end of turn, end of text, start of a new turn).
    stop_ids: Vec<u32>,
    context_tokens: usize,
    device: Device,
    /// Prompt starts already computed, for prompts that begin the same way.
    prefixes: PrefixCache,
}

/// ChatML: `<|im_start|>{role}\n{content}<|im_end|>\n` per message, then `<|im_start|>assistant\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChatFormat {
    im_start: u32,
    im_end: u32,
    /// The system message the model's template adds when a conversation starts without one.
    default_system: Option<String>,
}

/// One accepted request.
struct Job {
    prompt: Vec<u32>,
    params: GenerationParams,
    events: mpsc::Sender<Result<StreamEvent, ModelError>>,
    queued_at: Instant,
}

impl LocalLanguageModel {
    /// Loads `model_dir/model.gguf` (llama architecture, byte-level BPE tokenizer, ChatML chat
    /// template) and starts the inference threads. Errors name the file.
    pub fn load(model_dir: &Path, options: LocalModelOptions) -> Result<Self, ModelError> {
        let options = LocalModelOptions {
            inference_threads: options.inference_threads.max(1),
            queue_capacity: options.queue_capacity.max(1),
            ..options
        };
        let path = model_dir.join(MODEL_FILE);
        let invalid = |reason: String| ModelError::InvalidModel { path: path.clone(), reason };
        let file = File::open(&path).map_err(|error| match error.kind() {
            io::ErrorKind::NotFound => ModelError::MissingModelFile { path: path.clone() },
            _ => ModelError::io(&path, error),
        })?;
        let mut reader = BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader)
            .map_err(|error| invalid(format!("not a readable GGUF file: {error}")))?;
        let metadata = &content.metadata;

        let architecture = match metadata.get("general.architecture") {
            Some(Value::String(architecture)) => architecture.clone(),
            _ => return Err(invalid("general.architecture is missing".to_owned())),
        };
        if architecture != "llama" {
            return Err(invalid(format!("architecture `{architecture}` is not supported, only `llama`")));
        }
        let context_key = format!("{architecture}.context_length");
        let trained_context = metadata
            .get(&context_key)
            .and_then(integer)
            .and_then(|length| usize::try_from(length).ok())
            .filter(|length| *length > 0)
            .ok_or_else(|| invalid(format!("{context_key} is missing or not a positive integer")))?;
        // candle's quantized llama precomputes rotary embeddings for MAX_SEQ_LEN positions only.
        let context_tokens = trained_context.min(quantized_llama::MAX_SEQ_LEN);

        let tokenizer = GgufTokenizer::from_gguf_metadata(metadata, &path)?;
        let chat = ChatFormat::from_metadata(metadata, &tokenizer).map_err(invalid)?;
        let stop_ids = stop_ids(&tokenizer);

        let device = Device::Cpu;
        let weights = match convert_slow_tensors(content, &mut reader, &device) {
            Ok((content, mut converted)) => ModelWeights::from_gguf(content, &mut converted, &device),
            Err(error) => Err(error),
        }
        .map_err(|error| invalid(format!("cannot load the weights: {error}")))?;

        let id = format!(
            "local:{}",
            model_dir.file_name().map_or_else(|| "model".into(), |name| name.to_string_lossy().into_owned())
        );
        tracing::info!(
            model = %id,
            path = %path.display(),
            context_tokens,
            trained_context,
            vocab = tokenizer.vocab_size(),
            threads = options.inference_threads,
            queue = options.queue_capacity,
            "local language model loaded"
        );
        let prefixes = PrefixCache::new(options.reuse_prompt_starts);
        let engine =
            Arc::new(Engine { id, path, weights, tokenizer, chat, stop_ids, context_tokens, device, prefixes });

        let (jobs, queue) = mpsc::channel(options.queue_capacity);
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..options.inference_threads {
            let worker_engine = Arc::clone(&engine);
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("parley-llm-{index}"))
                .spawn(move || work(&worker_engine, &queue))
                .map_err(|error| ModelError::Inference {
                    model: engine.id.clone(),
                    reason: format!("cannot start an inference thread: {error}"),
                })?;
        }
        Ok(Self { engine, jobs, options })
    }

    /// The tokenizer rebuilt from the GGUF metadata.
    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.engine.tokenizer
    }

    /// The scheduling options in effect.
    pub fn options(&self) -> LocalModelOptions {
        self.options
    }

    /// The prompt for `messages` as text (ChatML, ending with the assistant's turn header).
    pub fn render_prompt(&self, messages: &[ChatMessage]) -> String {
        self.engine.chat.render(messages)
    }

    /// The prompt's token ids, exactly as [`LanguageModel::generate`] feeds them to the model.
    pub fn encode_prompt(&self, messages: &[ChatMessage]) -> Vec<u32> {
        self.engine.chat.encode(messages, &self.engine.tokenizer)
    }

    /// Prompt tokens whose keys and values came from an earlier prompt that began the same way
    /// instead of being computed, since load.
    pub fn reused_prompt_tokens(&self) -> u64 {
        self.engine.prefixes.reused_tokens()
    }
}

impl LanguageModel for LocalLanguageModel {
    fn id(&self) -> &str {
        &self.engine.id
    }

    fn context_tokens(&self) -> usize {
        self.engine.context_tokens
    }

    fn count_tokens(&self, text: &str) -> usize {
        self.engine.tokenizer.encode(text).len()
    }

    fn generate(&self, request: GenerationRequest) -> BoxFuture<'_, Result<TokenStream, ModelError>> {
        Box::pin(async move {
            let GenerationRequest { messages, params, .. } = request;
            self.engine.validate(&messages, &params)?;
            let prompt = self.encode_prompt(&messages);
            self.engine.check_fits(prompt.len(), params.max_tokens)?;

            let (events, stream) = mpsc::channel(STREAM_CAPACITY);
            let job = Job { prompt, params, events, queued_at: Instant::now() };
            self.jobs.send(job).await.map_err(|_| ModelError::Inference {
                model: self.engine.id.clone(),
                reason: "the inference threads have stopped".to_owned(),
            })?;
            Ok(stream)
        })
    }
}

impl ChatFormat {
    /// Checks that the model's chat template (`tokenizer.chat_template`) is ChatML and that
    /// its markers are control tokens.
    fn from_metadata(metadata: &HashMap<String, Value>, tokenizer: &GgufTokenizer) -> Result<Self, String> {
        let template = match metadata.get("tokenizer.chat_template") {
            Some(Value::String(template)) => template,
            Some(_) => return Err("tokenizer.chat_template is not a string".to_owned()),
            None => return Err("tokenizer.chat_template is missing; only ChatML models are supported".to_owned()),
        };
        if !(template.contains(IM_START) && template.contains(IM_END)) {
            return Err(format!(
                "the chat template is not ChatML (no {IM_START}…{IM_END} turns); only ChatML models are supported"
            ));
        }
        let marker = |text: &str| {
            tokenizer
                .special_token_id(text)
                .ok_or_else(|| format!("the ChatML marker {text} is not a control token of the vocabulary"))
        };
        Ok(Self {
            im_start: marker(IM_START)?,
            im_end: marker(IM_END)?,
            default_system: default_system_prompt(template),
        })
    }

    /// The messages to render: the template's default system message first when the
    /// conversation does not start with a system message.
    fn turns<'a>(&'a self, messages: &'a [ChatMessage]) -> impl Iterator<Item = (&'a str, &'a str)> {
        let default_system = match (&self.default_system, messages.first()) {
            (Some(system), Some(first)) if first.role != ChatRole::System => Some(("system", system.as_str())),
            _ => None,
        };
        default_system
            .into_iter()
            .chain(messages.iter().map(|message| (message.role.as_str(), message.content.as_str())))
    }

    fn render(&self, messages: &[ChatMessage]) -> String {
        let mut prompt = String::new();
        for (role, content) in self.turns(messages) {
            prompt.push_str(&format!("{IM_START}{role}\n{content}{IM_END}\n"));
        }
        prompt.push_str(IM_START);
        prompt.push_str("assistant\n");
        prompt
    }

    /// The prompt's ids. The text between the markers is encoded as plain text, segment by
    /// segment, just as a tokenizer splitting on the markers would.
    fn encode(&self, messages: &[ChatMessage], tokenizer: &GgufTokenizer) -> Vec<u32> {
        let newline = tokenizer.encode("\n");
        let mut ids = Vec::new();
        for (role, content) in self.turns(messages) {
            ids.push(self.im_start);
            ids.extend(tokenizer.encode(&format!("{role}\n{content}")));
            ids.push(self.im_end);
            ids.extend_from_slice(&newline);
        }
        ids.push(self.im_start);
        ids.extend(tokenizer.encode("assistant\n"));
        ids
    }
}

/// The literal system message a ChatML template adds when the conversation has none, as in
/// `{{ '<|im_start|>system\nYou are a helpful AI assistant…<|im_end|>\n' }}`. `None` when the
/// template's first system turn is not a plain string literal.
fn default_system_prompt(template: &str) -> Option<String> {
    let header = format!("{IM_START}system");
    let after_header = &template[template.find(&header)? + header.len()..];
    let body = after_header.strip_prefix("\\n").or_else(|| after_header.strip_prefix('\n'))?;
    let literal = &body[..body.find(IM_END)?];
    let mut text = String::with_capacity(literal.len());
    let mut characters = literal.chars();
    while let Some(character) = characters.next() {
        match character {
            '\\' => match characters.next()? {
                'n' => text.push('\n'),
                't' => text.push('\t'),
                other @ ('\\' | '\'' | '"') => text.push(other),
                _ => return None,
            },
            // Anything that ends the literal or starts an expression: not a fixed message.
            '\'' | '"' | '{' | '}' => return None,
            other => text.push(other),
        }
    }
    (!text.trim().is_empty()).then_some(text)
}

/// Quantisation types whose CPU dot products have only candle's scalar kernel (no AVX/NEON):
/// several times slower than Q8_0's.
const SLOW_CPU_TYPES: [GgmlDType; 3] = [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1];

/// Reads every tensor of the file once and converts the ones stored in a [`SLOW_CPU_TYPES`]
/// type to Q8_0 (which has SIMD kernels, and loses nothing noticeable: 8 bits per weight where
/// the source had 4 or 5). Returns the file's description rewritten for the converted tensors,
/// and an in-memory reader holding them, for [`ModelWeights::from_gguf`].
fn convert_slow_tensors<R: io::Read + io::Seek>(
    content: gguf_file::Content,
    reader: &mut R,
    device: &Device,
) -> candle_core::Result<(gguf_file::Content, io::Cursor<Vec<u8>>)> {
    let mut data = Vec::new();
    let mut tensor_infos = HashMap::with_capacity(content.tensor_infos.len());
    let mut converted = 0;
    for (name, info) in &content.tensor_infos {
        let mut tensor = info.read(reader, content.tensor_data_offset, device)?;
        if SLOW_CPU_TYPES.contains(&info.ggml_dtype) && tensor.shape().dims().last().is_some_and(|k| k % 32 == 0) {
            tensor = QTensor::quantize(&tensor.dequantize(device)?, GgmlDType::Q8_0)?;
            converted += 1;
        }
        let offset = data.len() as u64;
        data.extend_from_slice(&tensor.data()?);
        tensor_infos.insert(
            name.clone(),
            gguf_file::TensorInfo { ggml_dtype: tensor.dtype(), shape: tensor.shape().clone(), offset },
        );
    }
    if converted > 0 {
        tracing::debug!(tensors = converted, "converted slow-on-CPU quantised tensors to Q8_0");
    }
    let content =
        gguf_file::Content { magic: content.magic, metadata: content.metadata, tensor_infos, tensor_data_offset: 0 };
    Ok((content, io::Cursor::new(data)))
}

/// The tokens that end an answer: the file's end-of-sequence token and the ChatML turn markers.
fn stop_ids(tokenizer: &GgufTokenizer) -> Vec<u32> {
    let mut ids: Vec<u32> = tokenizer.eos_token_id().into_iter().collect();
    for marker in [IM_END, END_OF_TEXT, IM_START] {
        if let Some(id) = tokenizer.special_token_id(marker) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

impl Engine {
    fn invalid_request(&self, reason: String) -> ModelError {
        ModelError::InvalidRequest { model: self.id.clone(), reason }
    }

    fn inference_error(&self, error: impl std::fmt::Display) -> ModelError {
        ModelError::Inference { model: self.id.clone(), reason: error.to_string() }
    }

    fn validate(&self, messages: &[ChatMessage], params: &GenerationParams) -> Result<(), ModelError> {
        if messages.is_empty() {
            return Err(self.invalid_request("the conversation has no messages".to_owned()));
        }
        if !(params.temperature.is_finite() && params.temperature >= 0.0) {
            return Err(self.invalid_request(format!("temperature {} is not a number >= 0", params.temperature)));
        }
        if !(params.top_p > 0.0 && params.top_p <= 1.0) {
            return Err(self.invalid_request(format!("top_p {} is not in (0, 1]", params.top_p)));
        }
        if params.max_tokens == 0 {
            return Err(self.invalid_request("max_tokens must be at least 1".to_owned()));
        }
        Ok(())
    }

    fn check_fits(&self, prompt_tokens: usize, max_tokens: u32) -> Result<(), ModelError> {
        let max_tokens = max_tokens as usize;
        if prompt_tokens.saturating_add(max_tokens) > self.context_tokens {
            return Err(self.invalid_request(format!(
                "the prompt is {prompt_tokens} tokens; with max_tokens {max_tokens} it exceeds the context \
                 window of {} tokens (at most {} prompt tokens)",
                self.context_tokens,
                self.context_tokens.saturating_sub(max_tokens)
            )));
        }
        Ok(())
    }

    /// Generates one answer, sending its events as it goes. Returns early, without error, when
    /// the receiver is dropped.
    fn run(&self, job: &Job) -> Result<(), ModelError> {
        let started = Instant::now();
        let queue_wait = started.duration_since(job.queued_at);
        let params = &job.params;
        let Start { mut model, mut position, keep_at } = self.prefixes.start(&job.prompt, &self.weights);
        let mut sampler = LogitsProcessor::from_sampling(params.seed.unwrap_or_else(random_seed), sampling(params));
        let mut output = TextOutput::new(&params.stop);
        let prompt_tokens = job.prompt.len();

        let reused = position;
        let mut logits = None;
        while position < prompt_tokens {
            if job.events.is_closed() {
                return Ok(());
            }
            let end = chunk_end(position, prompt_tokens);
            let input = Tensor::new(&job.prompt[position..end], &self.device).and_then(|input| input.unsqueeze(0));
            logits =
                Some(input.and_then(|input| model.forward(&input, position)).map_err(|e| self.inference_error(e))?);
            position = end;
            if keep_at == Some(position) {
                self.prefixes.keep(&job.prompt[..position], model.clone());
            }
        }
        let mut logits = logits.ok_or_else(|| self.inference_error("empty prompt"))?;
        let prefill = started.elapsed();

        let mut completion_tokens: u32 = 0;
        let finish_reason = loop {
            let next =
                logits.squeeze(0).and_then(|logits| sampler.sample(&logits)).map_err(|e| self.inference_error(e))?;
            completion_tokens += 1;
            if self.stop_ids.contains(&next) {
                break FinishReason::Stop;
            }
            if !self.tokenizer.is_control(next) {
                let (text, stopped) = match output.push(self.tokenizer.token_bytes(next)) {
                    Step::Continue(text) => (text, false),
                    Step::Stop(text) => (text, true),
                };
                if let Some(text) = text {
                    if job.events.blocking_send(Ok(StreamEvent::Text(text))).is_err() {
                        return Ok(());
                    }
                }
                if stopped {
                    break FinishReason::Stop;
                }
            }
            if completion_tokens >= params.max_tokens {
                break FinishReason::Length;
            }
            if job.events.is_closed() {
                return Ok(());
            }
            let input = Tensor::new(&[next], &self.device).and_then(|input| input.unsqueeze(0));
            logits = input.and_then(|input| model.forward(&input, position)).map_err(|e| self.inference_error(e))?;
            position += 1;
        };
        if let Some(text) = output.finish() {
            if job.events.blocking_send(Ok(StreamEvent::Text(text))).is_err() {
                return Ok(());
            }
        }

        let decoding = started.elapsed().saturating_sub(prefill);
        tracing::debug!(
            model = %self.id,
            prompt_tokens,
            reused_prompt_tokens = reused,
            completion_tokens,
            ?finish_reason,
            queue_ms = queue_wait.as_millis() as u64,
            prefill_ms = prefill.as_millis() as u64,
            tokens_per_second = tokens_per_second(completion_tokens, decoding),
            "local generation finished"
        );
        let usage = Usage { prompt_tokens: saturating_u32(prompt_tokens), completion_tokens };
        // The receiver may be gone by now; nothing left to stop.
        let _ = job.events.blocking_send(Ok(StreamEvent::Done { finish_reason, usage }));
        Ok(())
    }
}

/// An inference thread: takes queued requests one at a time until the model is dropped.
fn work(engine: &Engine, queue: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        // Holding the lock while waiting is fine: the other threads would wait for a job anyway.
        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).blocking_recv();
        let Some(job) = job else {
            return;
        };
        if job.events.is_closed() {
            // Cancelled while queued.
            continue;
        }
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| engine.run(&job)));
        let error = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(error)) => error,
            Err(panic) => {
                let reason = panic
                    .downcast_ref::<&str>()
                    .map(|text| (*text).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                engine.inference_error(format!("generation panicked: {reason}"))
            }
        };
        tracing::warn!(model = %engine.id, %error, "local generation failed");
        let _ = job.events.blocking_send(Err(error));
    }
}

fn sampling(params: &GenerationParams) -> Sampling {
    let temperature = f64::from(params.temperature);
    if temperature <= 0.0 {
        Sampling::ArgMax
    } else if params.top_p < 1.0 {
        Sampling::TopP { p: f64::from(params.top_p), temperature }
    } else {
        Sampling::All { temperature }
    }
}

fn random_seed() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    RandomState::new().hash_one(now)
}

fn tokens_per_second(tokens: u32, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        f64::from(tokens) / seconds
    } else {
        0.0
    }
}

fn saturating_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn finds_the_default_system_prompt() {
        assert_eq!(
            default_system_prompt(SMOLLM_TEMPLATE).as_deref(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
        let escaped = SMOLLM_TEMPLATE.replace('\n', "\\n");
        assert_eq!(
            default_system_prompt(&escaped).as_deref(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
    }

    #[test]
    fn a_template_without_a_fixed_system_prompt_has_none() {
        let plain = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}";
        assert_eq!(default_system_prompt(plain), None);
        let variable = "{% if messages[0]['role'] == 'system' %}{{ '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}{% endif %}";
        assert_eq!(default_system_prompt(variable), None);
    }

    fn format(default_system: Option<&str>) -> ChatFormat {
        ChatFormat { im_start: 1, im_end: 2, default_system: default_system.map(str::to_owned) }
    }

    #[test]
    fn renders_chatml_with_the_default_system_prompt_only_when_needed() {
        let user = ChatMessage::new(ChatRole::User, "Hi");
        assert_eq!(
            format(Some("Be nice.")).render(std::slice::from_ref(&user)),
            "<|im_start|>system\nBe nice.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let system = ChatMessage::new(ChatRole::System, "Be brief.");
        assert_eq!(
            format(Some("Be nice.")).render(&[system, user.clone()]),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(format(None).render(&[user]), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn sampling_follows_the_parameters() {
        let mut params = GenerationParams { temperature: 0.0, ..GenerationParams::default() };
        assert_eq!(sampling(&params), Sampling::ArgMax);
        params.temperature = 0.7;
        params.top_p = 0.9;
        assert!(matches!(sampling(&params), Sampling::TopP { .. }));
        params.top_p = 1.0;
        assert!(matches!(sampling(&params), Sampling::All { .. }));
    }
}
