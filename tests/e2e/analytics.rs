//! Conversation analytics and usage: real chat turns with the local model feed per-conversation
//! rows and daily aggregates (also for an agent that stores no text), usage tokens equal the
//! transcripts', the retention sweeper removes old conversation rows and keeps the aggregates,
//! bad query parameters get precise problems — and the VADER scores match the reference
//! Python package's.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use parley_config::Settings;
use parley_models::Vader;
use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};

use crate::both_backends;
use crate::chat::ChatClient;
use crate::common::{Backend, TestServer};

both_backends!(
    turns_feed_analytics_usage_and_retention,
    turns_on_other_days_count_where_they_belong,
    bad_queries_get_precise_problems
);

/// The VADER lexicon from the model cache (`make models`), loaded once.
fn vader() -> Arc<Vader> {
    static VADER: OnceLock<Arc<Vader>> = OnceLock::new();
    VADER
        .get_or_init(|| {
            let settings = Settings { home_dir: std::env::var_os("HOME").map(PathBuf::from), ..Settings::default() };
            let vader = Vader::installed(&settings.models_dir())
                .unwrap_or_else(|error| panic!("the sentiment lexicon is not installed ({error}); run `make models`"));
            Arc::new(vader)
        })
        .clone()
}

const FAQ: &str = "# Zephyr Cafe\n\n## Opening hours\n\nThe Zephyr Cafe opens at 7:30 in the morning on weekdays \
                   and at 9:00 on weekends. It closes at 18:00 every day.\n\n## Payment\n\nThe Zephyr Cafe accepts \
                   cash and cards, but not cheques.";
const POSITIVE: &str = "I love the Zephyr Cafe, the coffee is wonderful! When does it open on weekdays?";
const NEGATIVE: &str = "Paying there was a terrible, awful experience. Does the Zephyr Cafe accept cheques?";
const UNANSWERABLE: &str = "What is the airspeed of an unladen swallow?";
const QUIET: &str = "This is useless and I am really angry!";

async fn create_agent(server: &TestServer, token: &str, body: Value) -> Value {
    let (status, agent) = server.post("/admin/v1/agents", token, body).await;
    assert_eq!(status, 201, "{agent}");
    agent
}

/// One conversation: the messages in order; returns its id and the `complete` frames.
async fn converse(server: &TestServer, agent: &Value, messages: &[&str]) -> (String, Vec<Value>) {
    let (session, completes) = converse_with(server, agent, json!({}), messages).await;
    (session["conversation_id"].as_str().unwrap().to_owned(), completes)
}

/// A conversation opened with `hello`'s fields (a visitor id, a resume token): the session and
/// each answer's `complete` frame.
async fn converse_with(server: &TestServer, agent: &Value, hello: Value, messages: &[&str]) -> (Value, Vec<Value>) {
    let mut client = ChatClient::connect(&server.base, agent["public_id"].as_str().unwrap(), None).await.unwrap();
    // A resumed conversation's messages get ids of their own (a re-sent id is answered from
    // what was stored).
    let prefix = if hello.get("resume_token").is_some() { "r" } else { "c" };
    let session = client.hello(hello).await;
    let mut completes = Vec::new();
    for (index, text) in messages.iter().enumerate() {
        let frames = client.ask(&format!("{prefix}-{index}"), text).await;
        let complete = frames.last().unwrap().clone();
        assert_eq!(complete["type"], "complete", "{frames:?}");
        completes.push(complete);
    }
    (session, completes)
}

fn close(actual: &Value, expected: f64) {
    let actual = actual.as_f64().unwrap_or_else(|| panic!("{actual} is not a number"));
    assert!((actual - expected).abs() < 1e-9, "{actual} != {expected}");
}

fn row<'a>(list: &'a Value, conversation_id: &str) -> &'a Value {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["conversation_id"] == conversation_id)
        .unwrap_or_else(|| panic!("no analytics row for {conversation_id}: {list}"))
}

async fn turns_feed_analytics_usage_and_retention(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    server.runtime.set_sentiment(vader());
    let (_, token) = server.tenant("Analytics").await;
    let (_, other_token) = server.tenant("Elsewhere").await;
    let (_, viewer) = server.key(&token, "viewer").await;
    let model = json!({ "provider": "local", "model": "smollm2-135m-instruct", "temperature": 0.0, "top_p": 1.0, "max_tokens": 24 });
    let cafe = create_agent(&server, &token, json!({ "name": "Cafe", "language": "en", "model": model })).await;
    let cafe_id = cafe["id"].as_str().unwrap().to_owned();
    let (status, document) = server
        .post(&format!("/admin/v1/agents/{cafe_id}/documents"), &token, json!({ "title": "Cafe FAQ", "text": FAQ }))
        .await;
    assert_eq!(status, 201, "{document}");
    let empty = create_agent(&server, &token, json!({ "name": "Empty", "language": "de" })).await;
    let quiet = create_agent(
        &server,
        &token,
        json!({ "name": "Quiet", "retention": { "record_audio": false, "storage_tier": "metadata_only" } }),
    )
    .await;
    // Another tenant's turn must not show up anywhere in this tenant's figures.
    let foreign = server.agent(&other_token, "Foreign").await;
    converse(&server, &foreign, &["Hello, anyone?"]).await;

    let (cafe_conversation, cafe_answers) = converse(&server, &cafe, &[POSITIVE, NEGATIVE]).await;
    let (empty_session, empty_answers) =
        converse_with(&server, &empty, json!({ "visitor_id": "visitor-empty" }), &[UNANSWERABLE]).await;
    let empty_conversation = empty_session["conversation_id"].as_str().unwrap().to_owned();
    assert_eq!(empty_answers[0]["finish_reason"], "no_answer", "{empty_answers:?}");
    let (quiet_conversation, _) = converse(&server, &quiet, &[QUIET]).await;

    let positive = vader().polarity(POSITIVE).compound;
    let negative = vader().polarity(NEGATIVE).compound;
    let angry = vader().polarity(QUIET).compound;
    assert!(positive > 0.5 && negative < -0.5 && angry < -0.5, "{positive} {negative} {angry}");

    // The transcripts: what usage and analytics must add up to.
    let (status, transcript) = server.get(&format!("/admin/v1/conversations/{cafe_conversation}"), &token).await;
    assert_eq!(status, 200, "{transcript}");
    let tokens_of = |transcript: &Value, field: &str| -> i64 {
        transcript["messages"].as_array().unwrap().iter().map(|message| message[field].as_i64().unwrap()).sum()
    };
    let (cafe_prompt, cafe_completion) =
        (tokens_of(&transcript, "prompt_tokens"), tokens_of(&transcript, "completion_tokens"));
    assert!(cafe_prompt > 0 && cafe_completion > 0, "{transcript}");
    let answered_turns = cafe_answers
        .iter()
        .filter(|complete| matches!(complete["finish_reason"].as_str(), Some("stop" | "length")))
        .count() as i64;

    // Per conversation.
    let (status, list) = server.get("/admin/v1/analytics/conversations", &viewer).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["items"].as_array().unwrap().len(), 3, "{list}");
    let row_of_cafe = row(&list, &cafe_conversation);
    assert_eq!(row_of_cafe["agent_id"], cafe_id.as_str());
    assert_eq!(row_of_cafe["channel"], "web");
    assert_eq!(row_of_cafe["language"], "en");
    assert_eq!(row_of_cafe["visitor_messages"], 2);
    assert_eq!(row_of_cafe["agent_messages"], 2);
    assert_eq!(row_of_cafe["answered_turns"], answered_turns);
    assert_eq!(row_of_cafe["answered"], answered_turns == 2);
    close(&row_of_cafe["mean_sentiment"], (positive + negative) / 2.0);
    close(&row_of_cafe["last_sentiment"], negative);
    assert_eq!(row_of_cafe["prompt_tokens"], cafe_prompt);
    assert_eq!(row_of_cafe["completion_tokens"], cafe_completion);
    let started = OffsetDateTime::parse(
        row_of_cafe["started_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let ended = OffsetDateTime::parse(
        row_of_cafe["ended_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(ended > started, "{row_of_cafe}");
    assert_eq!(row_of_cafe["duration_ms"].as_i64().unwrap(), (ended - started).whole_milliseconds() as i64);

    let row_of_empty = row(&list, &empty_conversation);
    assert_eq!(row_of_empty["language"], "de");
    assert_eq!(row_of_empty["answered"], false, "the unanswerable question: {row_of_empty}");
    assert_eq!(
        (row_of_empty["answered_turns"].as_i64(), row_of_empty["unanswered_turns"].as_i64()),
        (Some(0), Some(1))
    );
    assert_eq!(
        (row_of_empty["prompt_tokens"].as_i64(), row_of_empty["completion_tokens"].as_i64()),
        (Some(0), Some(0))
    );

    // The metadata-only agent keeps no text, but its analytics (sentiment included) are there.
    let row_of_quiet = row(&list, &quiet_conversation);
    close(&row_of_quiet["last_sentiment"], angry);
    assert_eq!(row_of_quiet["visitor_messages"], 1);
    let (status, transcript) = server.get(&format!("/admin/v1/conversations/{quiet_conversation}"), &token).await;
    assert_eq!(status, 200);
    assert_eq!(transcript["stores_text"], false);
    assert!(transcript["messages"].as_array().unwrap().iter().all(|message| message["text"].is_null()), "{transcript}");
    assert!(!list.to_string().contains("angry") && !list.to_string().contains("Zephyr"), "analytics hold no text");

    // Pages, and one agent's rows.
    let (_, first) = server.get("/admin/v1/analytics/conversations?limit=2", &token).await;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = server.get(&format!("/admin/v1/analytics/conversations?limit=2&cursor={cursor}"), &token).await;
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert!(second["next_cursor"].is_null());
    let (_, only_cafe) = server.get(&format!("/admin/v1/analytics/conversations?agent_id={cafe_id}"), &token).await;
    assert_eq!(only_cafe["items"].as_array().unwrap().len(), 1);

    // Per agent per day.
    let today = parley_runtime::analytics::day_string(OffsetDateTime::now_utc().date());
    let (status, daily) = server.get(&format!("/admin/v1/analytics?from={today}&to={today}"), &viewer).await;
    assert_eq!(status, 200, "{daily}");
    assert_eq!((daily["from"].as_str(), daily["to"].as_str()), (Some(today.as_str()), Some(today.as_str())));
    assert_eq!(daily["days"].as_array().unwrap().len(), 3, "{daily}");
    let (_, daily) = server.get(&format!("/admin/v1/analytics?agent_id={cafe_id}"), &token).await;
    let days = daily["days"].as_array().unwrap();
    assert_eq!(days.len(), 1, "{daily}");
    let day = &days[0];
    assert_eq!(day["day"], today.as_str());
    assert_eq!(day["conversations"], 1);
    assert_eq!(day["answered_conversations"], i64::from(answered_turns == 2));
    assert_eq!((day["visitor_messages"].as_i64(), day["agent_messages"].as_i64()), (Some(2), Some(2)));
    close(&day["answered_rate"], answered_turns as f64 / 2.0);
    close(&day["mean_sentiment"], (positive + negative) / 2.0);
    assert_eq!(day["scored_messages"], 2);
    assert_eq!(
        (day["prompt_tokens"].as_i64(), day["completion_tokens"].as_i64()),
        (Some(cafe_prompt), Some(cafe_completion))
    );
    assert_eq!(day["total_duration_ms"], row_of_cafe["duration_ms"]);

    // Usage for billing: owners and admins only; tokens are the transcripts'.
    let (status, problem) = server.get("/admin/v1/usage", &viewer).await;
    assert_eq!((status, problem["code"].as_str()), (403, Some("forbidden")));
    let (status, usage) = server.get("/admin/v1/usage", &token).await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["conversations"], 3);
    assert_eq!(usage["messages"], 8);
    assert_eq!(usage["audio_minutes"], 0.0);
    assert_eq!(usage["tokens"], cafe_prompt + cafe_completion, "only the cafe's turns used the model");
    assert_eq!(usage["days"].as_array().unwrap().len(), 1);
    assert_eq!(usage["days"][0]["tokens"], usage["tokens"]);
    let (_, budget) = server.get("/admin/v1/tenant/token-budget", &token).await;
    assert_eq!(budget["used_today"], usage["tokens"], "{budget}");

    // Retention: 30 days of individual rows. Two days on, nothing goes.
    let windows = json!({ "transcript_days": 90, "audio_days": 30, "analytics_days": 30, "audit_days": 730 });
    let (status, _) = server.call(reqwest::Method::PUT, "/admin/v1/retention", Some(&token), Some(windows)).await;
    assert_eq!(status, 200);
    let soon = OffsetDateTime::now_utc() + Duration::days(2);
    let report = parley_runtime::retention::sweep(&server.runtime, soon).await.unwrap();
    assert_eq!(report.analytics_conversations, 0, "{report:?}");
    // 31 days on, this tenant's conversation rows are gone; its daily rows and transcripts stay,
    // and the other tenant (365 days) keeps its row.
    let later = OffsetDateTime::now_utc() + Duration::days(31);
    let report = parley_runtime::retention::sweep(&server.runtime, later).await.unwrap();
    assert_eq!(report.analytics_conversations, 3, "{report:?}");
    assert_eq!(report.conversations, 0, "{report:?}");
    let (_, list) = server.get("/admin/v1/analytics/conversations", &token).await;
    assert!(list["items"].as_array().unwrap().is_empty(), "{list}");
    let (_, daily_after) = server.get(&format!("/admin/v1/analytics?agent_id={cafe_id}"), &token).await;
    assert_eq!(daily_after, daily, "daily aggregates are kept");
    let (_, usage_after) = server.get("/admin/v1/usage", &token).await;
    assert_eq!(usage_after, usage);
    let (status, _) = server.get(&format!("/admin/v1/conversations/{cafe_conversation}"), &token).await;
    assert_eq!(status, 200, "the transcript has its own window");
    let (_, foreign_list) = server.get("/admin/v1/analytics/conversations", &other_token).await;
    assert_eq!(foreign_list["items"].as_array().unwrap().len(), 1, "{foreign_list}");
    let (_, audit) = server.get("/admin/v1/audit-log?limit=200", &token).await;
    let sweep = audit["items"].as_array().unwrap().iter().find(|entry| entry["action"] == "retention.sweep").unwrap();
    assert_eq!(sweep["details"]["analytics_conversations"], 3, "{sweep}");
    // Running again deletes nothing.
    let report = parley_runtime::retention::sweep(&server.runtime, later).await.unwrap();
    assert_eq!(report.analytics_conversations, 0);

    // A swept conversation that goes on is not counted again: its new turn adds to the day's
    // turn figures only, and it gets no new row of its own.
    let empty_id = empty["id"].as_str().unwrap();
    let (_, empty_before) = server.get(&format!("/admin/v1/analytics?agent_id={empty_id}"), &token).await;
    let resume = json!({ "resume_token": empty_session["resume_token"], "visitor_id": "visitor-empty" });
    let (resumed, _) = converse_with(&server, &empty, resume, &[UNANSWERABLE]).await;
    assert_eq!(resumed["conversation_id"], empty_conversation.as_str(), "{resumed}");
    let (_, empty_after) = server.get(&format!("/admin/v1/analytics?agent_id={empty_id}"), &token).await;
    let (before, after) = (&empty_before["days"][0], &empty_after["days"][0]);
    assert_eq!(after["conversations"], before["conversations"], "{empty_after}");
    assert_eq!(after["answered_conversations"], before["answered_conversations"], "{empty_after}");
    assert_eq!(after["total_duration_ms"], before["total_duration_ms"], "{empty_after}");
    assert_eq!(after["visitor_messages"].as_i64(), before["visitor_messages"].as_i64().map(|n| n + 1), "{empty_after}");
    assert_eq!(after["unanswered_turns"].as_i64(), before["unanswered_turns"].as_i64().map(|n| n + 1), "{empty_after}");
    let (_, list) = server.get("/admin/v1/analytics/conversations", &token).await;
    assert!(list["items"].as_array().unwrap().is_empty(), "{list}");
    server.stop().await;
}

/// A conversation that started two days ago: its own figures (count, answered, duration) stay
/// on its start day, each turn's figures go to the turn's day.
async fn turns_on_other_days_count_where_they_belong(backend: Backend) {
    use parley_runtime::analytics::{record_turn, TurnRecord, TurnResult};
    use parley_runtime::auth::{Principal, Role};

    let Some(server) = TestServer::start(backend).await else { return };
    let (tenant_id, token) = server.tenant("Night shift").await;
    let agent = server.agent(&token, "Night owl").await;
    let mut client = ChatClient::connect(&server.base, agent["public_id"].as_str().unwrap(), None).await.unwrap();
    let conversation_id = client.hello(json!({})).await["conversation_id"].as_str().unwrap().parse().unwrap();
    let principal = Principal { tenant_id: tenant_id.parse().unwrap(), key_id: uuid::Uuid::nil(), role: Role::Owner };
    let runtime = &server.runtime;
    let agent =
        parley_runtime::agents::get(runtime, &principal, agent["id"].as_str().unwrap().parse().unwrap()).await.unwrap();
    let (mut conversation, _) =
        parley_runtime::chat::conversations::get(runtime, &principal, conversation_id).await.unwrap();
    let now = OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp()).unwrap();
    conversation.started_at = now - Duration::days(2);
    let turns = [
        (conversation.started_at + Duration::minutes(1), TurnResult::Answered, 0.5, 10, 5),
        (now, TurnResult::Unanswered, -0.25, 0, 0),
    ];
    for (at, result, sentiment, prompt_tokens, completion_tokens) in turns {
        let turn = TurnRecord {
            agent: &agent,
            conversation: &conversation,
            sentiment: Some(sentiment),
            result,
            prompt_tokens,
            completion_tokens,
            at,
        };
        let mut transaction = runtime.database().begin().await.unwrap();
        record_turn(&mut transaction, &turn).await.unwrap();
        transaction.commit().await.unwrap();
    }

    let day = |at: OffsetDateTime| parley_runtime::analytics::day_string(at.date());
    let (start_day, today) = (day(conversation.started_at), day(now));
    let (status, daily) = server.get(&format!("/admin/v1/analytics?from={start_day}&to={today}"), &token).await;
    assert_eq!(status, 200, "{daily}");
    let days = daily["days"].as_array().unwrap();
    assert_eq!(days.len(), 2, "{daily}");
    let (first, last) = (&days[0], &days[1]);
    assert_eq!(first["day"], start_day.as_str());
    assert_eq!(first["conversations"], 1);
    assert_eq!(first["answered_conversations"], 0, "the later unanswered turn made it unanswered");
    assert_eq!(first["total_duration_ms"], 2 * 86_400_000_i64);
    assert_eq!((first["visitor_messages"].as_i64(), first["answered_turns"].as_i64()), (Some(1), Some(1)));
    assert_eq!((first["prompt_tokens"].as_i64(), first["completion_tokens"].as_i64()), (Some(10), Some(5)));
    close(&first["mean_sentiment"], 0.5);
    assert_eq!(last["day"], today.as_str());
    assert_eq!(last["conversations"], 0);
    assert_eq!((last["visitor_messages"].as_i64(), last["unanswered_turns"].as_i64()), (Some(1), Some(1)));
    close(&last["answered_rate"], 0.0);
    close(&last["mean_sentiment"], -0.25);

    let (_, list) = server.get(&format!("/admin/v1/analytics/conversations?from={start_day}"), &token).await;
    let row = row(&list, &conversation_id.to_string());
    assert_eq!(row["duration_ms"], 2 * 86_400_000_i64);
    assert_eq!(row["answered"], false);
    close(&row["mean_sentiment"], 0.125);
    close(&row["last_sentiment"], -0.25);
    // Listed by start day: not in a range that begins after it.
    let (_, list) = server.get(&format!("/admin/v1/analytics/conversations?from={today}"), &token).await;
    assert!(list["items"].as_array().unwrap().is_empty(), "{list}");
    server.stop().await;
}

async fn bad_queries_get_precise_problems(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (_, token) = server.tenant("Picky").await;
    let cases = [
        ("/admin/v1/analytics?from=2026-13-01", 422, "from"),
        ("/admin/v1/analytics?from=2026-1-5", 422, "from"),
        ("/admin/v1/analytics?to=yesterday", 422, "to"),
        ("/admin/v1/analytics?from=2026-03-02&to=2026-03-01", 422, "to"),
        ("/admin/v1/analytics?from=2025-01-01&to=2026-01-02", 422, "from"),
        ("/admin/v1/analytics?agent_id=not-an-id", 422, "agent_id"),
        ("/admin/v1/analytics/conversations?limit=0", 422, "limit"),
        ("/admin/v1/analytics/conversations?cursor=garbage", 422, "cursor"),
        ("/admin/v1/analytics/conversations?from=2026-02-30", 422, "from"),
        ("/admin/v1/usage?from=2024-01-01&to=2025-06-01", 422, "from"),
        ("/admin/v1/usage?to=2026-01-01T00:00:00Z", 422, "to"),
    ];
    for (path, status, field) in cases {
        let (actual, problem) = server.get(path, &token).await;
        assert_eq!((actual, problem["field"].as_str()), (status, Some(field)), "{path}: {problem}");
    }
    let (status, problem) = server.get("/admin/v1/usage?agent_id=x", &token).await;
    assert_eq!(status, 400, "unknown parameters are refused: {problem}");
    let missing = uuid::Uuid::now_v7();
    let (status, problem) = server.get(&format!("/admin/v1/analytics?agent_id={missing}"), &token).await;
    assert_eq!((status, problem["code"].as_str()), (404, Some("not_found")), "{problem}");
    // A full year is fine, and empty ranges are empty.
    let (status, body) = server.get("/admin/v1/analytics?from=2024-01-01&to=2024-12-31", &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["days"], json!([]));
    let (status, usage) = server.get("/admin/v1/usage?from=2024-01-01&to=2024-01-31", &token).await;
    assert_eq!(status, 200);
    assert_eq!(
        usage,
        json!({ "from": "2024-01-01", "to": "2024-01-31", "conversations": 0, "messages": 0, "audio_minutes": 0.0, "tokens": 0, "days": [] })
    );
    server.stop().await;
}

/// Sentences covering VADER's rules: negation, boosters and dampeners, capitals, "but",
/// punctuation, emoticons and emoji, special phrases, "least", neutral text.
const SENTENCES: &[&str] = &[
    "The support team was helpful and friendly.",
    "The support team was not helpful at all.",
    "The food was VERY good.",
    "The food was very good!!!",
    "This is the worst service I have ever had.",
    "I am extremely happy with the result :)",
    "I'm kind of disappointed, to be honest.",
    "The room was nice, but the bed was terrible.",
    "Not bad at all",
    "It isn't a horrible product.",
    "Why is this so complicated???",
    "What time does the shop open?",
    "The parcel arrived on Tuesday.",
    "Honestly, the new update is the bomb!",
    "Yeah right, like that will ever work.",
    "Without a doubt, an excellent choice.",
    "This was the least helpful answer I got.",
    "At least the staff were polite.",
    "I never said it was so good.",
    "The app is sort of useful.",
    "The price is barely acceptable.",
    "WORST. EXPERIENCE. EVER.",
    "I LOVE it, but the delivery was SLOW.",
    "no problem, thanks!",
    "There is no good reason to wait.",
    "Thanks a lot 😀 see you soon 👍",
    "My heart is broken 💔",
    "lol that was hilarious",
    "The checkout keeps failing and I am really frustrated.",
    "Could you please help me reset my password?",
    "The instructions were clear, the setup was quick and the price was fair.",
    "It is neither good nor bad.",
    "I don't hate it.",
    "Great, just great... another delay :(",
    "This product is absolutely amazing, totally worth it!",
    "The waiting music drove me crazy!!",
    "Kiss of death for the project, sadly.",
    "That dessert is to die for.",
    "Your refund has been processed.",
    "I'm somewhat satisfied but not thrilled.",
    "Good, good, but good is not great.",
    "Meh.",
    "",
    "WHY?!?! This is SO frustrating!!!!!",
];

/// Rust's scores match the `vaderSentiment` package's (`PARLEY_PYTHON`, a venv made by `make
/// pytools`) on every sentence, to ±0.001.
#[tokio::test]
async fn vader_matches_the_reference_package() {
    let Some(python) = std::env::var_os("PARLEY_PYTHON") else {
        eprintln!(
            "*** SKIPPED: PARLEY_PYTHON not set (make test sets it to a venv with the vaderSentiment package) ***"
        );
        return;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/python/vader_scores.py");
    let mut child = tokio::process::Command::new(&python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("PARLEY_PYTHON={python:?} does not run: {error}"));
    let input = serde_json::to_vec(SENTENCES).unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&input).await.unwrap();
    }
    let output = child.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "the reference VADER package did not run (is vaderSentiment installed in PARLEY_PYTHON's environment? \
         run `make pytools`): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let expected: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(expected.len(), SENTENCES.len());
    let vader = vader();
    let mut mismatches = Vec::new();
    for (sentence, expected) in SENTENCES.iter().zip(&expected) {
        let scores = vader.polarity(sentence);
        for (name, actual) in
            [("neg", scores.neg), ("neu", scores.neu), ("pos", scores.pos), ("compound", scores.compound)]
        {
            let reference = expected[name].as_f64().unwrap();
            if (actual - reference).abs() > 0.001 {
                mismatches.push(format!("{sentence:?} {name}: parley {actual:.4}, package {reference:.4}"));
            }
        }
    }
    assert!(mismatches.is_empty(), "VADER scores differ from the package's:\n{}", mismatches.join("\n"));
    // The sentences are not all alike: both signs and neutral text occur.
    let compounds: Vec<f64> = SENTENCES.iter().map(|sentence| vader.polarity(sentence).compound).collect();
    assert!(compounds.iter().any(|c| *c > 0.5) && compounds.iter().any(|c| *c < -0.5));
    assert!(compounds.iter().filter(|c| **c == 0.0).count() >= 3);
}
