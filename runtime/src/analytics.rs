//! Conversation analytics and usage for billing.
//!
//! Every finished chat turn updates, in the transaction that stores its answer
//! ([`record_turn`]), the conversation's analytics row (channel, start and end, message counts,
//! language, VADER sentiment of the visitor's messages, whether every turn got a real answer,
//! tokens) and its agent's row for the UTC day. Sentiment is computed from the visitor's text in
//! memory, before the agent's storage tier decides what text is kept, so agents that store
//! metadata only still have analytics; analytics rows never hold text.
//!
//! Readers (viewer and up) read the daily rows ([`daily`]) and the conversation rows
//! ([`conversations`]); owners and admins read the tenant's usage ([`usage`]). The retention
//! sweeper deletes conversation rows after the tenant's `analytics_days` (`retention::sweep`);
//! daily rows are kept. Definitions of every figure: `docs/analytics.md`.

use parley_models::Vader;
use sqlx::AnyConnection;
use time::{Date, Duration, OffsetDateTime};
use uuid::Uuid;

use crate::agents::Agent;
use crate::auth::{Permission, Principal};
use crate::chat::conversations::{Channel, Conversation};
use crate::error::{Error, Result};
use crate::page::{Page, PageRequest};
use crate::{storage, Runtime};

/// The longest range of days one request may cover.
pub const MAX_RANGE_DAYS: i64 = 366;
/// Days covered when the caller gives no `from`.
pub const DEFAULT_RANGE_DAYS: i64 = 30;

/// One conversation's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationAnalytics {
    pub conversation_id: Uuid,
    pub tenant_id: Uuid,
    pub agent_id: Uuid,
    pub channel: Channel,
    /// The agent's language setting when the conversation started.
    pub language: String,
    /// The UTC day (`YYYY-MM-DD`) it started.
    pub day: String,
    pub started_at: OffsetDateTime,
    /// When its last turn finished.
    pub ended_at: OffsetDateTime,
    pub visitor_messages: i64,
    pub agent_messages: i64,
    /// Turns answered by the model (finish reason `stop` or `length`).
    pub answered_turns: i64,
    /// Turns that got the "don't know" message or failed.
    pub unanswered_turns: i64,
    /// Sum and count of the visitor messages' VADER compound scores.
    pub sentiment_sum: f64,
    pub sentiment_count: i64,
    /// The compound score of the visitor's latest scored message.
    pub last_sentiment: Option<f64>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

impl ConversationAnalytics {
    /// From start to the end of the last turn.
    pub fn duration_ms(&self) -> i64 {
        storage::to_millis(self.ended_at) - storage::to_millis(self.started_at)
    }

    /// True when no turn got the "don't know" message or failed.
    pub fn answered(&self) -> bool {
        self.unanswered_turns == 0
    }

    /// The mean VADER compound score of the visitor's messages, when any was scored.
    pub fn mean_sentiment(&self) -> Option<f64> {
        (self.sentiment_count > 0).then(|| self.sentiment_sum / self.sentiment_count as f64)
    }
}

/// One agent's figures for one UTC day. Conversations, answered conversations and durations
/// count on the day a conversation started; messages, turns, sentiment and tokens on the day of
/// each turn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DailyAnalytics {
    pub agent_id: Uuid,
    pub day: String,
    pub conversations: i64,
    pub answered_conversations: i64,
    /// Sum of the durations of the conversations started that day.
    pub duration_ms: i64,
    pub visitor_messages: i64,
    pub agent_messages: i64,
    pub answered_turns: i64,
    pub unanswered_turns: i64,
    pub sentiment_sum: f64,
    pub sentiment_count: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

impl DailyAnalytics {
    /// Answered turns over answered and unanswered turns.
    pub fn answered_rate(&self) -> Option<f64> {
        let turns = self.answered_turns + self.unanswered_turns;
        (turns > 0).then(|| self.answered_turns as f64 / turns as f64)
    }

    pub fn mean_sentiment(&self) -> Option<f64> {
        (self.sentiment_count > 0).then(|| self.sentiment_sum / self.sentiment_count as f64)
    }

    pub fn mean_duration_ms(&self) -> Option<f64> {
        (self.conversations > 0).then(|| self.duration_ms as f64 / self.conversations as f64)
    }

    fn is_empty(&self) -> bool {
        *self == DailyAnalytics { agent_id: self.agent_id, day: self.day.clone(), ..DailyAnalytics::default() }
    }
}

/// A tenant's usage on one UTC day.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DailyUsage {
    pub day: String,
    /// Conversations started.
    pub conversations: i64,
    /// Visitor and agent messages.
    pub messages: i64,
    /// Model tokens (prompt and completion), as counted against the daily budget.
    pub tokens: i64,
}

/// A tenant's usage over a range of days, for billing.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub from: String,
    pub to: String,
    pub conversations: i64,
    pub messages: i64,
    /// Call audio; 0 until voice calls exist.
    pub audio_minutes: f64,
    pub tokens: i64,
    /// Days with any usage, in order.
    pub days: Vec<DailyUsage>,
}

/// An inclusive range of UTC days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayRange {
    pub from: Date,
    pub to: Date,
}

impl DayRange {
    /// Parses `from` and `to` (`YYYY-MM-DD`). Without `to`, today (UTC); without `from`, the 30
    /// days ending at `to`. `to` must not be before `from`, and the range covers at most 366 days.
    pub fn parse(from: Option<&str>, to: Option<&str>, today: Date) -> Result<DayRange> {
        let to = match to {
            Some(text) => parse_day("to", text)?,
            None => today,
        };
        let from = match from {
            Some(text) => parse_day("from", text)?,
            None => to
                .checked_sub(Duration::days(DEFAULT_RANGE_DAYS - 1))
                .ok_or_else(|| Error::invalid("to", "is too early"))?,
        };
        if to < from {
            return Err(Error::invalid("to", "must not be before from"));
        }
        if (to - from).whole_days() + 1 > MAX_RANGE_DAYS {
            return Err(Error::invalid("from", format!("the range may cover at most {MAX_RANGE_DAYS} days")));
        }
        Ok(DayRange { from, to })
    }

    fn bounds(&self) -> (String, String) {
        (day_string(self.from), day_string(self.to))
    }
}

fn parse_day(field: &str, text: &str) -> Result<Date> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    if text.len() != 10 {
        return Err(Error::invalid(field, "must be a date as YYYY-MM-DD"));
    }
    Date::parse(text, &format).map_err(|_| Error::invalid(field, "must be a date as YYYY-MM-DD"))
}

/// A date as `YYYY-MM-DD`.
pub fn day_string(date: Date) -> String {
    format!("{:04}-{:02}-{:02}", date.year(), u8::from(date.month()), date.day())
}

/// Today's UTC date.
pub fn today() -> Date {
    OffsetDateTime::now_utc().date()
}

/// How a turn ended, for analytics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnResult {
    /// The model answered (`stop` or `length`).
    Answered,
    /// The agent's "don't know" message, or a failure.
    Unanswered,
    /// The visitor stopped the answer: neither answered nor unanswered.
    Cancelled,
}

impl TurnResult {
    /// From a stored answer's finish reason.
    pub fn of_finish_reason(finish_reason: &str) -> TurnResult {
        match finish_reason {
            "stop" | "length" => TurnResult::Answered,
            "cancelled" => TurnResult::Cancelled,
            _ => TurnResult::Unanswered,
        }
    }
}

/// One finished turn, as analytics sees it.
#[derive(Debug, Clone)]
pub struct TurnRecord<'a> {
    pub agent: &'a Agent,
    pub conversation: &'a Conversation,
    /// The VADER compound score of the visitor's message, when sentiment is loaded.
    pub sentiment: Option<f64>,
    pub result: TurnResult,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// When the answer was stored.
    pub at: OffsetDateTime,
}

/// Adds a finished turn to its conversation's row and to the agent's daily rows; runs inside
/// the transaction that stores the answer.
pub async fn record_turn(connection: &mut AnyConnection, turn: &TurnRecord<'_>) -> Result<()> {
    let conversation = turn.conversation;
    let tenant_id = conversation.tenant_id;
    let previous = storage::analytics::get_conversation(connection, tenant_id, conversation.id).await?;
    if previous.is_none() && storage::conversations::answer_count(connection, tenant_id, conversation.id).await? > 1 {
        // The conversation was counted at its first turn and its row since swept (its analytics
        // window passed while it went on): only the turn's own day figures are added, so the
        // conversation, its duration and whether it was answered are not counted twice. Its
        // individual row is not made again.
        let turned = turn_figures(turn, conversation.agent_id);
        return storage::analytics::add_daily(connection, tenant_id, &turned).await;
    }
    let mut row = previous.clone().unwrap_or_else(|| ConversationAnalytics {
        conversation_id: conversation.id,
        tenant_id,
        agent_id: conversation.agent_id,
        channel: conversation.channel,
        language: turn.agent.language.clone(),
        day: day_string(conversation.started_at.date()),
        started_at: conversation.started_at,
        ended_at: conversation.started_at,
        visitor_messages: 0,
        agent_messages: 0,
        answered_turns: 0,
        unanswered_turns: 0,
        sentiment_sum: 0.0,
        sentiment_count: 0,
        last_sentiment: None,
        prompt_tokens: 0,
        completion_tokens: 0,
    });
    row.ended_at = row.ended_at.max(turn.at);
    row.visitor_messages += 1;
    row.agent_messages += 1;
    let (answered, unanswered) = match turn.result {
        TurnResult::Answered => (1, 0),
        TurnResult::Unanswered => (0, 1),
        TurnResult::Cancelled => (0, 0),
    };
    row.answered_turns += answered;
    row.unanswered_turns += unanswered;
    if let Some(score) = turn.sentiment {
        row.sentiment_sum += score;
        row.sentiment_count += 1;
        row.last_sentiment = Some(score);
    }
    row.prompt_tokens += turn.prompt_tokens;
    row.completion_tokens += turn.completion_tokens;
    storage::analytics::put_conversation(connection, &row).await?;

    // The conversation's own figures change on the day it started…
    let was_answered = previous.as_ref().map(|previous| previous.answered());
    let started = DailyAnalytics {
        agent_id: row.agent_id,
        day: row.day.clone(),
        conversations: i64::from(previous.is_none()),
        answered_conversations: i64::from(row.answered()) - i64::from(was_answered.unwrap_or(false)),
        duration_ms: row.duration_ms() - previous.as_ref().map(ConversationAnalytics::duration_ms).unwrap_or(0),
        ..DailyAnalytics::default()
    };
    // …and the turn's on the day of the turn.
    let turned = turn_figures(turn, row.agent_id);
    if started.day == turned.day {
        let merged = DailyAnalytics {
            conversations: started.conversations,
            answered_conversations: started.answered_conversations,
            duration_ms: started.duration_ms,
            ..turned
        };
        storage::analytics::add_daily(connection, tenant_id, &merged).await?;
    } else {
        if !started.is_empty() {
            storage::analytics::add_daily(connection, tenant_id, &started).await?;
        }
        storage::analytics::add_daily(connection, tenant_id, &turned).await?;
    }
    Ok(())
}

/// A turn's own figures, on the day of the turn.
fn turn_figures(turn: &TurnRecord<'_>, agent_id: Uuid) -> DailyAnalytics {
    let (answered, unanswered) = match turn.result {
        TurnResult::Answered => (1, 0),
        TurnResult::Unanswered => (0, 1),
        TurnResult::Cancelled => (0, 0),
    };
    DailyAnalytics {
        agent_id,
        day: day_string(turn.at.date()),
        visitor_messages: 1,
        agent_messages: 1,
        answered_turns: answered,
        unanswered_turns: unanswered,
        sentiment_sum: turn.sentiment.unwrap_or(0.0),
        sentiment_count: i64::from(turn.sentiment.is_some()),
        prompt_tokens: turn.prompt_tokens,
        completion_tokens: turn.completion_tokens,
        ..DailyAnalytics::default()
    }
}

/// The VADER compound score of a visitor's message, when the runtime has sentiment loaded.
pub fn sentiment_of(vader: Option<&Vader>, text: &str) -> Option<f64> {
    vader.map(|vader| vader.polarity(text).compound)
}

/// Daily rows of the caller's tenant over `range`, optionally of one agent (which must exist).
pub async fn daily(
    runtime: &Runtime,
    principal: &Principal,
    agent_id: Option<Uuid>,
    range: DayRange,
) -> Result<Vec<DailyAnalytics>> {
    principal.require(Permission::ReadAnalytics)?;
    let mut connection = runtime.database().pool().acquire().await?;
    if let Some(agent_id) = agent_id {
        require_agent(&mut connection, principal.tenant_id, agent_id).await?;
    }
    let (from, to) = range.bounds();
    storage::analytics::daily(&mut connection, principal.tenant_id, agent_id, &from, &to).await
}

/// Conversation rows of the caller's tenant started within `range`, optionally of one agent,
/// in id (start) order, one page at a time.
pub async fn conversations(
    runtime: &Runtime,
    principal: &Principal,
    agent_id: Option<Uuid>,
    range: DayRange,
    page: PageRequest,
) -> Result<Page<ConversationAnalytics>> {
    principal.require(Permission::ReadAnalytics)?;
    let mut connection = runtime.database().pool().acquire().await?;
    if let Some(agent_id) = agent_id {
        require_agent(&mut connection, principal.tenant_id, agent_id).await?;
    }
    let (from, to) = range.bounds();
    let rows = storage::analytics::conversations(
        &mut connection,
        principal.tenant_id,
        agent_id,
        &from,
        &to,
        page.after,
        page.fetch_limit(),
    )
    .await?;
    Ok(Page::from_rows(rows, &page, |row| row.conversation_id))
}

/// The caller's tenant's usage over `range`: conversations, messages, audio minutes and model
/// tokens, in total and per day.
pub async fn usage(runtime: &Runtime, principal: &Principal, range: DayRange) -> Result<Usage> {
    principal.require(Permission::ReadUsage)?;
    let mut connection = runtime.database().pool().acquire().await?;
    let (from, to) = range.bounds();
    let mut days = storage::analytics::usage_by_day(&mut connection, principal.tenant_id, &from, &to).await?;
    for (day, tokens) in storage::usage::between(&mut connection, principal.tenant_id, &from, &to).await? {
        match days.iter_mut().find(|usage| usage.day == day) {
            Some(usage) => usage.tokens = tokens,
            None => days.push(DailyUsage { day, tokens, ..DailyUsage::default() }),
        }
    }
    days.sort_by(|a, b| a.day.cmp(&b.day));
    Ok(Usage {
        conversations: days.iter().map(|day| day.conversations).sum(),
        messages: days.iter().map(|day| day.messages).sum(),
        audio_minutes: 0.0,
        tokens: days.iter().map(|day| day.tokens).sum(),
        from,
        to,
        days,
    })
}

async fn require_agent(connection: &mut AnyConnection, tenant_id: Uuid, agent_id: Uuid) -> Result<()> {
    match storage::agents::get(connection, tenant_id, agent_id).await? {
        Some(_) => Ok(()),
        None => Err(Error::NotFound { resource: "agent" }),
    }
}

#[cfg(test)]
mod tests {
    use time::macros::date;

    use super::*;

    #[test]
    fn day_ranges_default_and_are_bounded() {
        let today = date!(2026 - 03 - 15);
        let range = DayRange::parse(None, None, today).unwrap();
        assert_eq!(range, DayRange { from: date!(2026 - 02 - 14), to: today });
        let range = DayRange::parse(Some("2026-01-01"), Some("2026-01-01"), today).unwrap();
        assert_eq!(range.bounds(), ("2026-01-01".to_owned(), "2026-01-01".to_owned()));
        assert!(DayRange::parse(Some("2025-01-01"), Some("2025-12-31"), today).is_ok());
        assert!(DayRange::parse(Some("2024-01-01"), Some("2024-12-31"), today).is_ok(), "a leap year is 366 days");
        let field = |result: Result<DayRange>| match result {
            Err(Error::InvalidInput { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(DayRange::parse(Some("2025-01-01"), Some("2026-01-02"), today)), "from");
        assert_eq!(field(DayRange::parse(Some("2026-01-02"), Some("2026-01-01"), today)), "to");
        assert_eq!(field(DayRange::parse(Some("2026-1-2"), None, today)), "from");
        assert_eq!(field(DayRange::parse(Some("2026-02-30"), None, today)), "from");
        assert_eq!(field(DayRange::parse(None, Some("yesterday"), today)), "to");
        assert_eq!(field(DayRange::parse(None, Some("2026-01-01T00:00:00Z"), today)), "to");
        // The earliest dates do not overflow.
        assert_eq!(DayRange::parse(None, Some("0000-01-01"), today).unwrap().to, date!(0000 - 01 - 01));
        assert_eq!(field(DayRange::parse(None, Some("-9999-01-01"), today)), "to");
    }

    #[test]
    fn finish_reasons_map_to_answered_or_not() {
        assert_eq!(TurnResult::of_finish_reason("stop"), TurnResult::Answered);
        assert_eq!(TurnResult::of_finish_reason("length"), TurnResult::Answered);
        assert_eq!(TurnResult::of_finish_reason("no_answer"), TurnResult::Unanswered);
        assert_eq!(TurnResult::of_finish_reason("error"), TurnResult::Unanswered);
        assert_eq!(TurnResult::of_finish_reason("cancelled"), TurnResult::Cancelled);
    }

    #[test]
    fn derived_figures() {
        let daily = DailyAnalytics {
            conversations: 2,
            duration_ms: 3000,
            answered_turns: 3,
            unanswered_turns: 1,
            sentiment_sum: 1.0,
            sentiment_count: 4,
            ..DailyAnalytics::default()
        };
        assert_eq!(daily.answered_rate(), Some(0.75));
        assert_eq!(daily.mean_sentiment(), Some(0.25));
        assert_eq!(daily.mean_duration_ms(), Some(1500.0));
        assert_eq!(DailyAnalytics::default().answered_rate(), None);
        assert!(DailyAnalytics { day: "2026-01-01".into(), ..DailyAnalytics::default() }.is_empty());
    }
}
