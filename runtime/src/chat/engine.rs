//! The turn engine: one visitor message in, one streamed, cited answer out.
//!
//! A turn runs as its own task, detached from the connection that asked for it, so a visitor
//! who reconnects mid-answer loses nothing: the answer is stored when it completes, and a
//! client that re-sends the same client message id attaches to the turn still running (the
//! text so far, then the rest). One turn runs per conversation at a time.
//!
//! Steps: limits (message rate per visitor and per agent, the tenant's daily token budget) →
//! store the visitor's message → retrieve from the agent's knowledge base (nothing relevant:
//! the agent's "don't know" message, no model call) → prompt (`prompt::build`) → generate,
//! streaming deltas → cite (`citations::cite`) → store the answer with its citations, timings
//! and token counts → count the tokens against the budget and add the turn to analytics
//! (`analytics::record_turn`, with the visitor message's sentiment scored in memory).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parley_config::ChatSettings;
use parley_knowledge::{SearchMode, SearchRequest};
use parley_models::llm::{ChatMessage, ChatRole, FinishReason, GenerationParams, GenerationRequest, StreamEvent};
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use crate::agents::Agent;
use crate::chat::citations::{self, Attribution};
use crate::chat::conversations::{Channel, Citation, Conversation, MessageRole, StoredMessage, Timings};
use crate::chat::prompt::{self, Budget, PromptInput};
use crate::chat::session::{self, Session};
use crate::chat::Passage;
use crate::error::{Error, ErrorKind, Result};
use crate::rate_limit::{InMemoryRateLimiter, RateLimiter};
use crate::{storage, Runtime};

/// Earlier messages considered for the prompt (then trimmed to the context budget).
const HISTORY_MESSAGES: i64 = 40;
/// Events buffered per subscriber before it starts missing deltas (`complete` still carries
/// the whole answer).
const EVENT_BUFFER: usize = 1024;

/// What the agent is doing, for typing indicators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnState {
    Searching,
    Thinking,
    Writing,
}

impl TurnState {
    pub fn as_str(self) -> &'static str {
        match self {
            TurnState::Searching => "searching",
            TurnState::Thinking => "thinking",
            TurnState::Writing => "writing",
        }
    }
}

/// Why a turn failed, in terms a visitor may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnFailure {
    pub kind: ErrorKind,
    /// A stable code (`provider_error`, `timeout`, `budget_exceeded`, `model_unavailable`,
    /// `internal`).
    pub code: &'static str,
    /// Safe to show: never provider responses, keys or internal details.
    pub message: String,
}

/// One event of a running turn.
#[derive(Debug, Clone)]
pub enum TurnEvent {
    Status(TurnState),
    Delta(String),
    /// The turn failed; a `Complete` with finish reason `error` follows.
    Failed(TurnFailure),
    /// The stored answer. Always the last event.
    Complete(Arc<StoredMessage>),
}

/// A subscription to a running turn: the answer's text so far, then its further events.
#[derive(Debug)]
pub struct TurnSubscription {
    pub user_message_id: Uuid,
    pub text_so_far: String,
    pub events: broadcast::Receiver<TurnEvent>,
}

/// The result of submitting a visitor message.
#[derive(Debug)]
pub enum Submitted {
    /// The message was answered before (a re-send): the stored message and its answer.
    Answered { user: Box<StoredMessage>, reply: Box<StoredMessage> },
    /// The answer is being written.
    Live(TurnSubscription),
}

/// Gets told about every finished turn (metrics).
pub trait TurnObserver: Send + Sync {
    fn turn_finished(&self, agent: &Agent, channel: Channel, message: &StoredMessage);
}

/// A turn in progress, shared by its task and its subscribers.
struct LiveTurn {
    conversation_id: Uuid,
    /// The answer so far; deltas are broadcast while this lock is held, so a subscriber that
    /// copies it and subscribes under the lock sees every piece exactly once.
    text: Mutex<String>,
    events: broadcast::Sender<TurnEvent>,
    cancel: watch::Sender<bool>,
}

/// Node-local state of the chat engine: turns in progress and message-rate buckets.
pub struct ChatEngine {
    /// Turns in progress by visitor message id.
    live: Mutex<HashMap<Uuid, Arc<LiveTurn>>>,
    /// The visitor message being answered, by conversation.
    busy: Mutex<HashMap<Uuid, Uuid>>,
    /// Conversations being erased: no new turn starts in them.
    erasing: Mutex<HashSet<Uuid>>,
    visitor_limiter: InMemoryRateLimiter,
    agent_limiter: InMemoryRateLimiter,
    observer: Mutex<Option<Arc<dyn TurnObserver>>>,
}

impl std::fmt::Debug for ChatEngine {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let live = self.live.lock().map(|live| live.len()).unwrap_or_default();
        formatter.debug_struct("ChatEngine").field("live_turns", &live).finish_non_exhaustive()
    }
}

impl ChatEngine {
    pub fn new(settings: &ChatSettings) -> Self {
        let per_minute = |count: u32| f64::from(count) / 60.0;
        Self {
            live: Mutex::default(),
            busy: Mutex::default(),
            erasing: Mutex::default(),
            visitor_limiter: InMemoryRateLimiter::new(
                per_minute(settings.visitor_messages_per_minute),
                settings.visitor_messages_per_minute,
            ),
            agent_limiter: InMemoryRateLimiter::new(
                per_minute(settings.agent_messages_per_minute),
                settings.agent_messages_per_minute,
            ),
            observer: Mutex::default(),
        }
    }

    pub fn set_observer(&self, observer: Arc<dyn TurnObserver>) {
        *lock(&self.observer) = Some(observer);
    }

    /// Turns in progress on this node.
    pub fn live_turns(&self) -> usize {
        lock(&self.live).len()
    }

    /// Erasure: stops new turns in these conversations and cancels the ones running; returns
    /// how many were running. [`ChatEngine::answering`] tells when they have ended.
    pub(crate) fn hold(&self, conversations: &[Uuid]) -> usize {
        lock(&self.erasing).extend(conversations.iter().copied());
        let running: Vec<Uuid> = {
            let busy = lock(&self.busy);
            conversations.iter().filter_map(|conversation| busy.get(conversation).copied()).collect()
        };
        let live = lock(&self.live);
        for user_message_id in &running {
            if let Some(turn) = live.get(user_message_id) {
                turn.cancel.send_replace(true);
            }
        }
        running.len()
    }

    /// How many of these conversations still have a turn running.
    pub(crate) fn answering(&self, conversations: &[Uuid]) -> usize {
        let busy = lock(&self.busy);
        conversations.iter().filter(|conversation| busy.contains_key(conversation)).count()
    }

    /// Erasure done (or given up): the conversations are no longer held. Erased ones are gone
    /// from the database, which then refuses their messages.
    pub(crate) fn release(&self, conversations: &[Uuid]) {
        let mut erasing = lock(&self.erasing);
        for conversation in conversations {
            erasing.remove(conversation);
        }
    }

    fn subscribe(&self, user_message_id: Uuid) -> Option<TurnSubscription> {
        let turn = lock(&self.live).get(&user_message_id).cloned()?;
        let text = lock(&turn.text);
        Some(TurnSubscription { user_message_id, text_so_far: text.clone(), events: turn.events.subscribe() })
    }
}

/// A visitor's message.
#[derive(Debug, Clone)]
pub struct UserMessage {
    pub client_message_id: String,
    pub text: String,
}

/// Stores the visitor's message and starts its answer — or, for a client message id already
/// seen in this conversation, returns the stored answer or attaches to the running turn.
pub async fn submit(runtime: &Runtime, session: &Session, message: UserMessage) -> Result<Submitted> {
    let engine = runtime.chat_engine();
    let conversation = &session.conversation;
    let client_message_id = message.client_message_id.trim().to_owned();
    if client_message_id.is_empty()
        || client_message_id.len() > 64
        || client_message_id.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(Error::invalid("client_message_id", "must be 1 to 64 characters without spaces"));
    }
    let text = message.text.trim().to_owned();
    if text.is_empty() {
        return Err(Error::invalid("text", "must not be empty"));
    }
    let max_chars = runtime.settings().chat.max_message_chars;
    if text.chars().count() > max_chars {
        return Err(Error::MessageTooLong { max_chars });
    }

    let mut connection = runtime.database().pool().acquire().await?;
    if let Some(user) = storage::conversations::message_by_client_id(
        &mut connection,
        conversation.tenant_id,
        conversation.id,
        &client_message_id,
    )
    .await?
    {
        if let Some(reply) =
            storage::conversations::reply_to(&mut connection, conversation.tenant_id, conversation.id, user.id).await?
        {
            return Ok(Submitted::Answered { user: Box::new(user), reply: Box::new(reply) });
        }
        if let Some(subscription) = engine.subscribe(user.id) {
            return Ok(Submitted::Live(subscription));
        }
        // Stored but never answered (the node stopped mid-turn): answer it now.
        drop(connection);
        let question = user.text.clone().unwrap_or_else(|| text.clone());
        let history = history_for(runtime, session, Some(user.id)).await?;
        return start_turn(runtime, session, user, question, history).await.map(Submitted::Live);
    }

    let agent = &session.agent;
    let visitor_key = limiter_key(&[agent.id.as_bytes(), conversation.visitor_id.as_bytes()]);
    engine
        .visitor_limiter
        .check(visitor_key)
        .map_err(|retry_after_seconds| Error::RateLimited { retry_after_seconds })?;
    engine.agent_limiter.check(agent.id).map_err(|retry_after_seconds| Error::RateLimited { retry_after_seconds })?;
    if lock(&engine.busy).contains_key(&conversation.id) {
        return Err(Error::Busy);
    }
    check_budget(runtime, &mut connection, conversation.tenant_id).await?;
    // Never hold a pooled connection while taking another: with every connection held by a
    // request waiting for a second one, the pool would deadlock under load.
    drop(connection);

    if lock(&engine.erasing).contains(&conversation.id) {
        return Err(conversation_erased());
    }
    let user = visitor_message(session, &text, client_message_id);
    let history = history_for(runtime, session, None).await?;
    {
        let mut transaction = runtime.database().begin().await?;
        // Touch first: an erased conversation is gone, and its message is refused.
        if !storage::conversations::touch(
            &mut transaction,
            conversation.tenant_id,
            conversation.id,
            storage::now_millis(),
        )
        .await?
        {
            return Err(conversation_erased());
        }
        storage::conversations::insert_message(&mut transaction, &user).await?;
        message_created(&mut transaction, session.agent.id, &user).await?;
        transaction.commit().await?;
    }
    start_turn(runtime, session, user, text, history).await.map(Submitted::Live)
}

/// Stops the answer being written in the session's conversation, if any. The answer is
/// stored with what was written so far and finish reason `cancelled`.
pub fn cancel(runtime: &Runtime, session: &Session) -> bool {
    let engine = runtime.chat_engine();
    let Some(user_message_id) = lock(&engine.busy).get(&session.conversation.id).copied() else { return false };
    let Some(turn) = lock(&engine.live).get(&user_message_id).cloned() else { return false };
    turn.cancel.send_replace(true);
    true
}

/// Reports that a chat connection holding the session's conversation closed: emits
/// `conversation.ended` once no answer is being written in it any more (so the event follows
/// every `message.created` of the connection), waiting at most the turn timeout.
pub fn connection_closed(runtime: &Runtime, session: &Session) {
    let runtime = runtime.clone();
    let conversation = session.conversation.clone();
    tokio::spawn(async move {
        let engine = runtime.chat_engine();
        let deadline = Instant::now() + Duration::from_secs(runtime.settings().chat.turn_timeout_seconds + 10);
        while lock(&engine.busy).contains_key(&conversation.id) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let emitted: Result<()> = async {
            let mut data = crate::webhooks::conversation_data(&conversation);
            data["ended_at"] = serde_json::Value::String(
                storage::now().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            );
            crate::webhooks::enqueue_for_conversation(
                &runtime,
                &conversation,
                crate::webhooks::Event::ConversationEnded,
                data,
            )
            .await
        }
        .await;
        if let Err(error) = emitted {
            tracing::error!(error = %error, conversation_id = %conversation.id, "cannot record conversation.ended");
        }
    });
}

/// Answers a conversation whose history the client supplies (the OpenAI-compatible endpoint):
/// the last message is the question; earlier user and assistant messages are the history.
pub async fn answer_stateless(
    runtime: &Runtime,
    session: &Session,
    history: Vec<ChatMessage>,
    question: String,
    sampling: Sampling,
) -> Result<TurnSubscription> {
    let mut session = session.clone();
    sampling.apply(&mut session.agent.model)?;
    let session = &session;
    let client_message_id = format!("api-{}", Uuid::now_v7());
    let agent = &session.agent;
    let engine = runtime.chat_engine();
    engine.agent_limiter.check(agent.id).map_err(|retry_after_seconds| Error::RateLimited { retry_after_seconds })?;
    let conversation = &session.conversation;
    let max_chars = runtime.settings().chat.max_message_chars;
    if question.chars().count() > max_chars {
        return Err(Error::MessageTooLong { max_chars });
    }
    let mut connection = runtime.database().pool().acquire().await?;
    check_budget(runtime, &mut connection, conversation.tenant_id).await?;
    let user = visitor_message(session, &question, client_message_id);
    drop(connection);
    {
        let mut transaction = runtime.database().begin().await?;
        storage::conversations::insert_message(&mut transaction, &user).await?;
        message_created(&mut transaction, agent.id, &user).await?;
        transaction.commit().await?;
    }
    start_turn(runtime, session, user, question, history).await
}

/// Sampling a client of the OpenAI-compatible endpoint may ask for, within the agent's own
/// settings: fewer answer tokens than the agent allows, another temperature or top-p.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sampling {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
}

impl Sampling {
    /// Checks the ranges, so a bad request is refused before anything is stored.
    pub fn validate(self) -> Result<()> {
        if self.max_tokens == Some(0) {
            return Err(Error::invalid("max_tokens", "must be at least 1"));
        }
        if self.temperature.is_some_and(|temperature| !(0.0..=2.0).contains(&temperature)) {
            return Err(Error::invalid("temperature", "must be between 0 and 2"));
        }
        if self.top_p.is_some_and(|top_p| !(top_p > 0.0 && top_p <= 1.0)) {
            return Err(Error::invalid("top_p", "must be greater than 0 and at most 1"));
        }
        Ok(())
    }

    fn apply(self, model: &mut crate::agents::ModelChoice) -> Result<()> {
        self.validate()?;
        if let Some(max_tokens) = self.max_tokens {
            model.max_tokens = model.max_tokens.min(max_tokens);
        }
        if let Some(temperature) = self.temperature {
            model.temperature = temperature;
        }
        if let Some(top_p) = self.top_p {
            model.top_p = top_p;
        }
        Ok(())
    }
}

/// A visitor's message as stored: its text as the agent's storage tier allows.
fn visitor_message(session: &Session, text: &str, client_message_id: String) -> StoredMessage {
    let conversation = &session.conversation;
    StoredMessage {
        id: Uuid::now_v7(),
        tenant_id: conversation.tenant_id,
        conversation_id: conversation.id,
        role: MessageRole::User,
        text: session::text_to_store(&session.agent, conversation, text),
        client_message_id: Some(client_message_id),
        reply_to: None,
        finish_reason: None,
        citations: Vec::new(),
        model: None,
        timings: None,
        prompt_tokens: 0,
        completion_tokens: 0,
        created_at: storage::now(),
        utterance: None,
    }
}

async fn check_budget(runtime: &Runtime, connection: &mut sqlx::AnyConnection, tenant_id: Uuid) -> Result<()> {
    let budget = crate::tenants::token_budget_on(runtime, connection, tenant_id).await?;
    if budget.used_today >= budget.daily_token_budget {
        return Err(Error::BudgetExceeded { budget: budget.daily_token_budget });
    }
    Ok(())
}

/// The UTC day token usage is counted under.
pub(crate) fn today() -> String {
    crate::analytics::day_string(crate::analytics::today())
}

/// Earlier turns for the prompt: the stored transcript (complete answers and the messages they
/// answer), or the live history of a conversation that stores no text.
async fn history_for(runtime: &Runtime, session: &Session, before: Option<Uuid>) -> Result<Vec<ChatMessage>> {
    let conversation = &session.conversation;
    if !conversation.stores_text {
        return Ok(lock(&session.live_history).clone());
    }
    let mut connection = runtime.database().pool().acquire().await?;
    let stored = storage::conversations::messages(
        &mut connection,
        conversation.tenant_id,
        conversation.id,
        Some(HISTORY_MESSAGES),
    )
    .await?;
    let answered: HashMap<Uuid, &StoredMessage> = stored
        .iter()
        .filter(|message| matches!(message.finish_reason.as_deref(), Some("stop" | "length" | "no_answer")))
        .filter_map(|message| message.reply_to.map(|id| (id, message)))
        .collect();
    let mut history = Vec::new();
    for message in &stored {
        if before.is_some_and(|before| message.id >= before) {
            break;
        }
        if message.role != MessageRole::User {
            continue;
        }
        let (Some(question), Some(answer)) = (&message.text, answered.get(&message.id).and_then(|a| a.text.as_ref()))
        else {
            continue;
        };
        history.push(ChatMessage::new(ChatRole::User, question.clone()));
        history.push(ChatMessage::new(ChatRole::Assistant, answer.clone()));
    }
    Ok(history)
}

async fn start_turn(
    runtime: &Runtime,
    session: &Session,
    user: StoredMessage,
    question: String,
    history: Vec<ChatMessage>,
) -> Result<TurnSubscription> {
    let engine = runtime.chat_engine();
    let conversation_id = session.conversation.id;
    {
        let mut busy = lock(&engine.busy);
        if busy.contains_key(&conversation_id) {
            return Err(Error::Busy);
        }
        if lock(&engine.erasing).contains(&conversation_id) {
            return Err(conversation_erased());
        }
        busy.insert(conversation_id, user.id);
    }
    let (events, receiver) = broadcast::channel(EVENT_BUFFER);
    let (cancel, cancelled) = watch::channel(false);
    let turn = Arc::new(LiveTurn { conversation_id, text: Mutex::default(), events, cancel });
    lock(&engine.live).insert(user.id, turn.clone());
    let subscription = TurnSubscription { user_message_id: user.id, text_so_far: String::new(), events: receiver };

    let runtime = runtime.clone();
    let session = session.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let outcome = run_turn(&runtime, &session, &turn, &user, &question, history, cancelled, started).await;
        finish_turn(&runtime, &session, &turn, &user, &question, outcome, started).await;
    });
    Ok(subscription)
}

/// What generation produced, before it is stored.
struct Outcome {
    text: String,
    finish_reason: &'static str,
    passages: Vec<Passage>,
    model: Option<String>,
    failure: Option<TurnFailure>,
    retrieval_ms: f64,
    first_token_at: Option<Instant>,
    prompt_tokens: u32,
    completion_tokens: u32,
}

#[allow(clippy::too_many_arguments)]
async fn run_turn(
    runtime: &Runtime,
    session: &Session,
    turn: &LiveTurn,
    user: &StoredMessage,
    question: &str,
    history: Vec<ChatMessage>,
    mut cancelled: watch::Receiver<bool>,
    started: Instant,
) -> Outcome {
    let agent = &session.agent;
    let mut outcome = Outcome {
        text: String::new(),
        finish_reason: "error",
        passages: Vec::new(),
        model: None,
        failure: None,
        retrieval_ms: 0.0,
        first_token_at: None,
        prompt_tokens: 0,
        completion_tokens: 0,
    };
    let _ = user;

    if agent.retrieval.enabled {
        let _ = turn.events.send(TurnEvent::Status(TurnState::Searching));
        let request = SearchRequest {
            tenant_id: agent.tenant_id,
            agent_id: agent.id,
            language: agent.language.clone(),
            query: question.to_owned(),
            top_k: agent.retrieval.top_k as usize,
            min_score: agent.retrieval.min_score,
            mode: SearchMode::Hybrid,
            fusion: agent.retrieval.fusion(),
        };
        let retrieval_started = Instant::now();
        let hits = runtime.knowledge().search(&request).await;
        outcome.retrieval_ms = retrieval_started.elapsed().as_secs_f64() * 1e3;
        match hits {
            Ok(hits) if hits.is_empty() => {
                let text = agent.retrieval.no_answer_message.clone();
                publish_delta(turn, &text);
                outcome.text = text;
                outcome.finish_reason = "no_answer";
                outcome.first_token_at = Some(Instant::now());
                return outcome;
            }
            Ok(hits) => {
                outcome.passages = hits
                    .into_iter()
                    .enumerate()
                    .map(|(index, hit)| Passage {
                        number: index + 1,
                        document_id: hit.document_id,
                        chunk_id: hit.chunk_id,
                        title: hit.document_title,
                        section: hit.section_path,
                        text: hit.text,
                        score: hit.score,
                        snippet: hit.snippet.text,
                        highlights: hit.snippet.highlights,
                    })
                    .collect();
            }
            Err(error) => {
                outcome.failure = Some(failure_of(&Error::from(error)));
                return outcome;
            }
        }
    }

    let model = match runtime.models().for_agent(runtime, agent).await {
        Ok(model) => model,
        Err(error) => {
            outcome.failure = Some(failure_of(&error));
            return outcome;
        }
    };
    outcome.model = Some(model.id().to_owned());
    let count = |text: &str| model.count_tokens(text);
    let built = prompt::build(
        &PromptInput {
            persona: &agent.system_prompt,
            agent_name: &agent.name,
            no_answer_message: &agent.retrieval.no_answer_message,
            passages: &outcome.passages,
            history: &history,
            question,
        },
        &Budget {
            context_tokens: if session.conversation.channel.is_spoken() {
                let spoken = agent.voice.prompt_tokens as usize + agent.model.max_tokens as usize;
                model.context_tokens().min(spoken)
            } else {
                model.context_tokens()
            },
            answer_tokens: agent.model.max_tokens as usize,
            count: &count,
        },
    );
    outcome.passages.truncate(built.passages_used);
    outcome.prompt_tokens = u32::try_from(built.prompt_tokens).unwrap_or(u32::MAX);
    let _ = turn.events.send(TurnEvent::Status(TurnState::Thinking));

    let request = GenerationRequest {
        model: agent.model.model.clone(),
        messages: built.messages,
        params: GenerationParams {
            temperature: agent.model.temperature,
            top_p: agent.model.top_p,
            max_tokens: agent.model.max_tokens,
            stop: Vec::new(),
            seed: None,
        },
    };
    let timeout = Duration::from_secs(runtime.settings().chat.turn_timeout_seconds);
    let deadline = tokio::time::Instant::from_std(started + timeout);
    let generation = async {
        let mut stream = model.generate(request).await?;
        loop {
            tokio::select! {
                event = stream.recv() => match event {
                    Some(Ok(StreamEvent::Text(piece))) => {
                        if outcome.first_token_at.is_none() {
                            outcome.first_token_at = Some(Instant::now());
                            let _ = turn.events.send(TurnEvent::Status(TurnState::Writing));
                        }
                        publish_delta(turn, &piece);
                        outcome.text.push_str(&piece);
                    }
                    Some(Ok(StreamEvent::Done { finish_reason, usage })) => {
                        outcome.finish_reason = match finish_reason {
                            FinishReason::Stop => "stop",
                            FinishReason::Length => "length",
                        };
                        if usage.prompt_tokens > 0 {
                            outcome.prompt_tokens = usage.prompt_tokens;
                        }
                        outcome.completion_tokens = usage.completion_tokens;
                        return Ok(());
                    }
                    Some(Err(error)) => return Err(Error::from(error)),
                    None => {
                        return Err(Error::Provider(parley_models::ModelError::StreamBroken {
                            provider: model.id().to_owned(),
                            reason: "the answer ended without completing".to_owned(),
                        }))
                    }
                },
                _ = cancelled.wait_for(|cancelled| *cancelled) => {
                    outcome.finish_reason = "cancelled";
                    // Dropping the stream stops generation.
                    return Ok(());
                }
            }
        }
    };
    let result = match tokio::time::timeout_at(deadline, generation).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout { seconds: timeout.as_secs() }),
    };
    if let Err(error) = result {
        outcome.finish_reason = "error";
        outcome.failure = Some(failure_of(&error));
    }
    if outcome.completion_tokens == 0 && !outcome.text.is_empty() {
        outcome.completion_tokens = u32::try_from(model.count_tokens(&outcome.text)).unwrap_or(u32::MAX);
    }
    if outcome.finish_reason == "stop" && citations::is_no_answer(&outcome.text, &agent.retrieval.no_answer_message) {
        outcome.finish_reason = "no_answer";
    }
    outcome
}

async fn finish_turn(
    runtime: &Runtime,
    session: &Session,
    turn: &LiveTurn,
    user: &StoredMessage,
    question: &str,
    outcome: Outcome,
    started: Instant,
) {
    let engine = runtime.chat_engine();
    let conversation: &Conversation = &session.conversation;
    let citations = if matches!(outcome.finish_reason, "stop" | "length" | "cancelled") {
        citations::cite(&outcome.text, &outcome.passages)
            .into_iter()
            .filter_map(|cited| {
                let passage = outcome.passages.iter().find(|passage| passage.number == cited.number)?;
                Some(Citation {
                    marker: passage.number,
                    document_id: passage.document_id,
                    title: passage.title.clone(),
                    section: passage.section.clone(),
                    snippet: passage.snippet.clone(),
                    highlights: passage.highlights.clone(),
                    score: passage.score,
                    attribution: match cited.how {
                        Attribution::Marker => "marker".to_owned(),
                        Attribution::Overlap { .. } => "overlap".to_owned(),
                    },
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let total = started.elapsed();
    let tokens_per_second = outcome.first_token_at.and_then(|first| {
        let writing = first.elapsed().as_secs_f64();
        (outcome.completion_tokens > 1 && writing > 0.0).then(|| f64::from(outcome.completion_tokens - 1) / writing)
    });
    let timings = Timings {
        retrieval_ms: outcome.retrieval_ms,
        first_token_ms: outcome.first_token_at.map(|first| first.duration_since(started).as_secs_f64() * 1e3),
        tokens_per_second,
        total_ms: total.as_secs_f64() * 1e3,
        voice: None,
    };
    let reply = StoredMessage {
        id: Uuid::now_v7(),
        tenant_id: conversation.tenant_id,
        conversation_id: conversation.id,
        role: MessageRole::Assistant,
        text: Some(outcome.text.clone()),
        client_message_id: None,
        reply_to: Some(user.id),
        finish_reason: Some(outcome.finish_reason.to_owned()),
        citations,
        model: outcome.model.clone(),
        timings: Some(timings),
        prompt_tokens: outcome.prompt_tokens,
        completion_tokens: outcome.completion_tokens,
        created_at: storage::now(),
        utterance: None,
    };
    let stored =
        StoredMessage { text: session::text_to_store(&session.agent, conversation, &outcome.text), ..reply.clone() };
    // Scored from the visitor's text in memory, whatever the storage tier keeps of it.
    let sentiment = crate::analytics::sentiment_of(runtime.sentiment().as_deref(), question);
    if let Err(error) = store_reply(runtime, session, &stored, sentiment).await {
        tracing::error!(error = %error, conversation_id = %conversation.id, "cannot store an answer");
    }
    if !conversation.stores_text && matches!(outcome.finish_reason, "stop" | "length" | "no_answer") {
        let mut history = lock(&session.live_history);
        history.push(ChatMessage::new(ChatRole::User, question.to_owned()));
        history.push(ChatMessage::new(ChatRole::Assistant, outcome.text.clone()));
        let excess = history.len().saturating_sub(HISTORY_MESSAGES as usize);
        history.drain(..excess);
    }
    if let Some(observer) = lock(&engine.observer).clone() {
        observer.turn_finished(&session.agent, conversation.channel, &reply);
    }
    {
        // Remove the turn before the last events, so a re-send after `complete` finds the
        // stored answer rather than a finished turn.
        lock(&engine.live).remove(&user.id);
        let mut busy = lock(&engine.busy);
        if busy.get(&turn.conversation_id) == Some(&user.id) {
            busy.remove(&turn.conversation_id);
        }
    }
    if let Some(failure) = outcome.failure {
        let _ = turn.events.send(TurnEvent::Failed(failure));
    }
    let _ = turn.events.send(TurnEvent::Complete(Arc::new(reply)));
}

/// Emits `message.created` for a message just stored, in the transaction that stored it.
pub(crate) async fn message_created(
    connection: &mut sqlx::AnyConnection,
    agent_id: Uuid,
    message: &StoredMessage,
) -> Result<()> {
    let ordering_key = message.conversation_id.to_string();
    crate::webhooks::enqueue(
        connection,
        message.tenant_id,
        crate::webhooks::Event::MessageCreated,
        Some(&ordering_key),
        crate::webhooks::message_data(agent_id, message),
    )
    .await
}

/// Stores the answer with its `message.created` event, counts its tokens for the day and adds
/// the turn to analytics, in one transaction.
async fn store_reply(
    runtime: &Runtime,
    session: &Session,
    reply: &StoredMessage,
    sentiment: Option<f64>,
) -> Result<()> {
    let mut transaction = runtime.database().begin().await?;
    if !storage::conversations::touch(&mut transaction, reply.tenant_id, reply.conversation_id, storage::now_millis())
        .await?
    {
        tracing::info!(conversation_id = %reply.conversation_id, "the conversation was erased while answering");
        return Ok(());
    }
    storage::conversations::insert_message(&mut transaction, reply).await?;
    // A spoken answer's `message.created` leaves once the call knows what was heard of it
    // (`calls::pipeline`), with the text as stored then.
    if !session.conversation.channel.is_spoken() {
        message_created(&mut transaction, session.agent.id, reply).await?;
    }
    let tokens = i64::from(reply.prompt_tokens) + i64::from(reply.completion_tokens);
    if tokens > 0 {
        storage::usage::add(&mut transaction, reply.tenant_id, &today(), tokens).await?;
    }
    let turn = crate::analytics::TurnRecord {
        agent: &session.agent,
        conversation: &session.conversation,
        sentiment,
        result: crate::analytics::TurnResult::of_finish_reason(reply.finish_reason.as_deref().unwrap_or("error")),
        prompt_tokens: i64::from(reply.prompt_tokens),
        completion_tokens: i64::from(reply.completion_tokens),
        at: reply.created_at,
    };
    crate::analytics::record_turn(&mut transaction, &turn).await?;
    transaction.commit().await?;
    Ok(())
}

fn publish_delta(turn: &LiveTurn, piece: &str) {
    let mut text = lock(&turn.text);
    text.push_str(piece);
    let _ = turn.events.send(TurnEvent::Delta(piece.to_owned()));
}

/// What a visitor is told about a failure; details go to the log only.
fn failure_of(error: &Error) -> TurnFailure {
    let kind = error.kind();
    let message = match kind {
        ErrorKind::ModelUnavailable => "The assistant's language model is not available right now.".to_owned(),
        ErrorKind::ProviderFailed => "The assistant's language model failed while answering.".to_owned(),
        ErrorKind::Timeout => "The answer took too long and was stopped.".to_owned(),
        ErrorKind::BudgetExceeded => error.to_string(),
        _ => "The assistant could not answer because of an internal error.".to_owned(),
    };
    if matches!(kind, ErrorKind::Internal | ErrorKind::Unavailable | ErrorKind::ProviderFailed) {
        tracing::warn!(error = %error, "chat turn failed");
    }
    let code = match kind {
        ErrorKind::ModelUnavailable => "model_unavailable",
        ErrorKind::ProviderFailed => "provider_error",
        ErrorKind::Timeout => "timeout",
        ErrorKind::BudgetExceeded => "budget_exceeded",
        _ => "internal",
    };
    TurnFailure { kind, code, message }
}

/// A rate-limit bucket key from several parts.
fn limiter_key(parts: &[&[u8]]) -> Uuid {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::from_bytes(bytes)
}

/// What a visitor is told when their conversation was erased.
fn conversation_erased() -> Error {
    Error::NotFound { resource: "conversation" }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
