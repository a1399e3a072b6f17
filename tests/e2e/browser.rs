//! The widget in a real browser: Debian's Chromium driven over WebDriver (chromedriver), the
//! protocol spoken with plain HTTP+JSON. The demo page is opened, a question is asked through
//! the widget's own input, the streamed answer and its source appear, and a reload resumes the
//! conversation.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{Backend, TestServer};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver process and one headless Chromium session.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    client: reqwest::Client,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium. `None` (with a loud note) when neither is
    /// installed and `PARLEY_REQUIRE_BROWSER` is unset; `make test` installs both and sets it.
    pub async fn start() -> Option<Self> {
        Self::start_with_args(&[]).await
    }

    /// As [`Browser::start`], with more Chromium command-line switches.
    pub async fn start_with_args(extra: &[String]) -> Option<Self> {
        let installed = std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists();
        if !installed {
            if std::env::var_os("PARLEY_REQUIRE_BROWSER").is_some() {
                panic!("{CHROMIUM} or {CHROMEDRIVER} is missing; `make setup` installs chromium and chromium-driver");
            }
            eprintln!("*** SKIPPED browser test: {CHROMIUM} / {CHROMEDRIVER} not installed (run `make setup`) ***");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(response) = client.get(format!("{base}/status")).send().await {
                let status: Value = response.json().await.unwrap_or_default();
                if status["value"]["ready"] == true {
                    break;
                }
            }
            assert!(started.elapsed() < Duration::from_secs(30), "chromedriver did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut args: Vec<String> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--window-size=1280,900",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend_from_slice(extra);
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        }}});
        let response: Value =
            client.post(format!("{base}/session")).json(&capabilities).send().await.unwrap().json().await.unwrap();
        let session = response["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {response}"));
        Some(Self { session: session.to_owned(), driver, base, client })
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let response: Value = self.client.request(method, url).json(&body).send().await.unwrap().json().await.unwrap();
        if let Some(error) = response["value"].get("error") {
            panic!("WebDriver {path}: {error} {}", response["value"]["message"]);
        }
        response["value"].clone()
    }

    pub async fn open(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", json!({ "url": url })).await;
    }

    pub async fn refresh(&self) {
        self.command(reqwest::Method::POST, "/refresh", json!({})).await;
    }

    /// Runs `script` (a function body) in the page and returns its result.
    pub async fn script(&self, script: &str, args: Value) -> Value {
        self.command(reqwest::Method::POST, "/execute/sync", json!({ "script": script, "args": args })).await
    }

    /// Polls `script` until it returns something other than null/false, or panics after `limit`.
    pub async fn wait_for(&self, what: &str, script: &str, limit: Duration) -> Value {
        let started = Instant::now();
        loop {
            let value = self.script(script, json!([])).await;
            if !(value.is_null() || value == false) {
                return value;
            }
            assert!(started.elapsed() < limit, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Browser {
    /// Ends the browser session first (a panicking test never reached its own cleanup, and
    /// killing chromedriver alone would leave Chromium running), then the driver.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let address = self.base.trim_start_matches("http://").to_owned();
        if let Ok(mut stream) = std::net::TcpStream::connect(&address) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let _ = stream.read_to_end(&mut Vec::new());
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// JavaScript: the widget's shadow root.
const ROOT: &str =
    "const host = document.querySelector('parley-chat') || document.getElementById('parley-chat-root'); \
                    const root = host && host.shadowRoot;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widget_answers_with_sources_and_resumes_after_reload() {
    let Some(browser) = Browser::start().await else { return };
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let (_, token) = server.tenant("Widget").await;
    let (status, agent) = server
        .post(
            "/admin/v1/agents",
            &token,
            json!({
                "name": "Cafe helper",
                "model": { "provider": "local", "model": "smollm2-135m-instruct", "temperature": 0.0, "top_p": 1.0, "max_tokens": 40 },
                "widget": { "title": "Zephyr help", "primary_color": "#aa3300", "text_color": "#ffffff",
                            "disclosure": "You are chatting with an AI assistant.", "privacy_url": "/privacy",
                            "placeholder": "Ask about the cafe" },
            }),
        )
        .await;
    assert_eq!(status, 201, "{agent}");
    let agent_id = agent["id"].as_str().unwrap();
    let public_id = agent["public_id"].as_str().unwrap();
    let text = "The Zephyr Cafe opens at 7:30 in the morning on weekdays and at 9:00 on weekends.";
    let (status, _) = server
        .post(
            &format!("/admin/v1/agents/{agent_id}/documents"),
            &token,
            json!({ "title": "Opening hours", "text": text }),
        )
        .await;
    assert_eq!(status, 201);

    browser.open(&format!("{}/demo/{public_id}", server.base)).await;
    // The panel opens by itself on the demo page and connects; it tells visitors about the AI.
    let disclosure = browser
        .wait_for(
            "the widget's disclosure",
            &format!("{ROOT} const part = root && root.querySelector('[data-part=disclosure]'); return part && part.textContent;"),
            Duration::from_secs(30),
        )
        .await;
    assert!(disclosure.as_str().unwrap().contains("AI assistant"), "{disclosure}");
    browser
        .wait_for(
            "a connection",
            "return window.ParleyChat && window.ParleyChat.state().connected;",
            Duration::from_secs(30),
        )
        .await;

    // Record the assistant bubble's states, to see it stream before it completes.
    browser
        .script(
            &format!(
                "{ROOT} window.__states = []; new MutationObserver(() => {{ \
                   root.querySelectorAll('[data-part=message][data-role=assistant]').forEach(m => window.__states.push(m.dataset.state)); \
                 }}).observe(root, {{ subtree: true, childList: true, attributes: true, characterData: true }}); return true;"
            ),
            json!([]),
        )
        .await;
    // Ask through the widget's own input and send button.
    browser
        .script(
            &format!(
                "{ROOT} const input = root.querySelector('[data-part=input]'); input.focus(); \
                 input.value = arguments[0]; input.dispatchEvent(new Event('input', {{ bubbles: true }})); \
                 root.querySelector('[data-part=send]').click(); return true;"
            ),
            json!(["When does the Zephyr Cafe open on weekdays?"]),
        )
        .await;
    let answer = browser
        .wait_for(
            "a complete answer",
            &format!(
                "{ROOT} const done = root.querySelector('[data-part=message][data-role=assistant][data-state=complete]'); \
                 return done && done.textContent;"
            ),
            Duration::from_secs(240),
        )
        .await;
    assert!(!answer.as_str().unwrap().trim().is_empty());
    let states = browser.script("return window.__states;", json!([])).await;
    assert!(states.as_array().unwrap().iter().any(|state| state == "streaming"), "never streamed: {states}");
    let sources = browser
        .script(
            &format!("{ROOT} return Array.from(root.querySelectorAll('[data-part=source]')).map(s => s.textContent);"),
            json!([]),
        )
        .await;
    let sources = sources.as_array().unwrap();
    assert!(!sources.is_empty(), "the answer shows no source: {answer}");
    assert!(sources.iter().all(|source| source.as_str().unwrap().contains("Opening hours")), "{sources:?}");

    // Reload: the conversation resumes with both messages, once each.
    browser.refresh().await;
    let restored = browser
        .wait_for(
            "the resumed conversation",
            &format!(
                "{ROOT} if (!root) return null; const messages = root.querySelectorAll('[data-part=message][data-state=complete]'); \
                 const texts = Array.from(messages).map(m => m.dataset.role); \
                 return texts.length >= 2 ? texts : null;"
            ),
            Duration::from_secs(30),
        )
        .await;
    let roles: Vec<&str> = restored.as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(roles.iter().filter(|role| **role == "user").count(), 1, "{roles:?}");
    assert_eq!(roles.iter().filter(|role| **role == "assistant").count(), 1, "{roles:?}");
    let state = browser.script("return window.ParleyChat.state();", json!([])).await;
    let (_, list) = server.get("/admin/v1/conversations", &token).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "the reload resumed, not restarted: {state}");
    server.stop().await;
}

/// JavaScript run before the call: every remote audio track the page receives is also recorded
/// at 16 kHz through Web Audio (`window.__parleyHeard`), and the sample count at which the
/// first agent caption after the caller's question arrived is noted, so the answer can be cut
/// out.
const RECORD_THE_AGENT: &str = "
  const heard = (window.__parleyHeard = {
    chunks: [], length: 0, rate: 0, asked: false, answerFrom: null, spoken: false, lastLoud: 0,
  });
  const Base = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends Base {
    constructor(...args) {
      super(...args);
      this.addEventListener('track', (event) => {
        const stream = event.streams[0] || new MediaStream([event.track]);
        const context = new AudioContext({ sampleRate: 16000 });
        heard.rate = context.sampleRate;
        const source = context.createMediaStreamSource(stream);
        const tap = context.createScriptProcessor(4096, 1, 1);
        tap.onaudioprocess = (e) => {
          const block = new Float32Array(e.inputBuffer.getChannelData(0));
          heard.chunks.push(block);
          heard.length += block.length;
          const loud = block.some((x) => Math.abs(x) > 0.02);
          if (loud) heard.lastLoud = heard.length;
          if (loud && heard.answerFrom !== null) heard.spoken = true;
        };
        source.connect(tap);
        tap.connect(context.destination);
        context.resume();
      });
    }
    createDataChannel(...args) {
      const channel = super.createDataChannel(...args);
      channel.addEventListener('message', (e) => {
        try {
          const m = JSON.parse(e.data);
          if (m.type !== 'caption') return;
          if (m.speaker === 'caller' && m.final !== false) heard.asked = true;
          // An agent caption comes as its sentence starts playing; half a second of slack.
          if (m.speaker === 'agent' && heard.asked && heard.answerFrom === null) {
            heard.answerFrom = Math.max(0, heard.length - heard.rate / 2);
          }
        } catch (error) {}
      });
      return channel;
    }
  };
  return true;";

/// A question spoken by espeak-ng, after enough silence for the agent's disclosure and followed
/// by silence, as a 16-bit mono WAV for Chromium's fake microphone.
fn spoken_question(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let voice = dir.join("voice.wav");
    let status = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "140", "-w"])
        .arg(&voice)
        .arg(text)
        .status()
        .expect("espeak-ng runs (make setup installs it)");
    assert!(status.success());
    let audio = parley_models::tts::parse_wav(&std::fs::read(&voice).unwrap()).unwrap();
    let rate = audio.sample_rate;
    let mut samples = vec![0.0f32; rate as usize * 8];
    samples.extend_from_slice(&audio.samples);
    samples.extend(std::iter::repeat_n(0.0, rate as usize * 60));
    let path = dir.join("question.wav");
    crate::common::write_wav(&path, &samples, rate);
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widget_calls_the_agent_with_live_captions() {
    let Some(engines) = crate::common::voice_engines() else { return };
    let audio_dir = tempfile::tempdir().unwrap();
    let question = spoken_question(audio_dir.path(), "What time does the Zephyr Cafe open on weekdays?");
    let Some(browser) = Browser::start_with_args(&[
        "--use-fake-ui-for-media-stream".to_owned(),
        "--use-fake-device-for-media-stream".to_owned(),
        format!("--use-file-for-fake-audio-capture={}%noloop", question.display()),
        "--autoplay-policy=no-user-gesture-required".to_owned(),
    ])
    .await
    else {
        return;
    };
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    server.runtime.calls().set_engines(engines.clone());
    let (_, token) = server.tenant("Caller").await;
    let (status, agent) = server
        .post(
            "/admin/v1/agents",
            &token,
            json!({
                "name": "Cafe line",
                "model": { "provider": "local", "model": "smollm2-135m-instruct", "temperature": 0.0, "top_p": 1.0, "max_tokens": 40 },
                "voice": { "enabled": true, "speech_to_text_model": "whisper-tiny.en", "voice": "en_US-joe-medium",
                           "max_concurrent_calls": 2, "end_of_turn_silence_ms": 700,
                           "disclosure": "You are talking to an AI assistant. This call is transcribed." },
            }),
        )
        .await;
    assert_eq!(status, 201, "{agent}");
    let agent_id = agent["id"].as_str().unwrap();
    let public_id = agent["public_id"].as_str().unwrap();
    let text = "The Zephyr Cafe opens at 7:30 in the morning on weekdays and at 9:00 on weekends.";
    let (status, _) = server
        .post(
            &format!("/admin/v1/agents/{agent_id}/documents"),
            &token,
            json!({ "title": "Opening hours", "text": text }),
        )
        .await;
    assert_eq!(status, 201);

    browser.open(&format!("{}/demo/{public_id}", server.base)).await;
    browser.script(RECORD_THE_AGENT, json!([])).await;
    // The Call button shows only for an agent that takes calls.
    browser
        .wait_for(
            "the Call button",
            &format!("{ROOT} const b = root && root.querySelector('[data-part=call]'); return b && !b.hidden;"),
            Duration::from_secs(30),
        )
        .await;
    browser.script(&format!("{ROOT} root.querySelector('[data-part=call]').click(); return true;"), json!([])).await;
    browser
        .wait_for(
            "a connected call",
            "const s = window.ParleyChat.state().call; return s && s.state === 'connected';",
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(server.runtime.calls().live_calls(), 1);
    let metrics = server.client.get(format!("{}/metrics", server.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("parley_live_calls 1"), "{metrics}");

    // The disclosure is spoken (and captioned) first; then the caller's question is transcribed
    // and the agent answers it.
    let captions = browser
        .wait_for(
            "the caller's question and the agent's answer",
            "const s = window.ParleyChat.state().call; if (!s) return null; \
             const i = s.captions.findIndex(c => c.speaker === 'caller' && c.final); \
             return i >= 0 && s.captions.slice(i + 1).some(c => c.speaker === 'agent') ? s.captions : null;",
            Duration::from_secs(240),
        )
        .await;
    let captions = captions.as_array().unwrap();
    assert_eq!(captions[0]["speaker"], "agent", "{captions:?}");
    assert!(captions[0]["text"].as_str().unwrap().contains("AI assistant"), "{captions:?}");
    let asked = captions.iter().find(|c| c["speaker"] == "caller" && c["final"] == true).unwrap();
    let asked = asked["text"].as_str().unwrap().to_lowercase();
    assert!(asked.contains("open") && asked.contains("weekday"), "transcribed as {asked:?}");

    // What the browser played of the answer, transcribed by whisper, says what the captions say
    // and holds the document's answer.
    browser
        .wait_for(
            "the answer to finish playing",
            "const r = window.__parleyHeard; return r.answerFrom !== null && r.spoken && \
             r.length - r.lastLoud > 3 * r.rate;",
            Duration::from_secs(120),
        )
        .await;
    let recorded = browser
        .script(
            "const r = window.__parleyHeard; const all = new Int16Array(r.length); let at = 0; \
             for (const chunk of r.chunks) { for (const x of chunk) all[at++] = Math.max(-1, Math.min(1, x)) * 32767; } \
             const answer = all.subarray(r.answerFrom, Math.min(r.length, r.answerFrom + 25 * r.rate)); \
             let binary = ''; const bytes = new Uint8Array(answer.buffer, answer.byteOffset, answer.byteLength); \
             for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000)); \
             return { rate: r.rate, pcm: btoa(binary) };",
            json!([]),
        )
        .await;
    assert_eq!(recorded["rate"], 16_000, "{}", recorded["rate"]);
    let pcm = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(recorded["pcm"].as_str().unwrap()).unwrap()
    };
    let played: Vec<f32> =
        pcm.chunks_exact(2).map(|pair| f32::from(i16::from_le_bytes([pair[0], pair[1]])) / 32768.0).collect();
    let options = parley_models::stt::TranscribeOptions { language: Some("en".to_owned()), partial: None };
    let peak = played.iter().fold(0.0f32, |peak, sample| peak.max(sample.abs()));
    let rms = (played.iter().map(|sample| f64::from(*sample).powi(2)).sum::<f64>() / played.len().max(1) as f64).sqrt();
    eprintln!("the browser recorded {} samples of the answer, peak {peak:.3}, rms {rms:.4}", played.len());
    if let Some(dir) = std::env::var_os("PARLEY_KEEP_BROWSER_AUDIO") {
        crate::common::write_wav(&std::path::Path::new(&dir).join("browser-answer.wav"), &played, 16_000);
    }
    let heard = engines.speech_to_text.transcribe(played.into(), options).await.unwrap().text;
    let captioned = browser
        .script(
            "const s = window.ParleyChat.state().call; const i = s.captions.findIndex(c => c.speaker === 'caller' && c.final); \
             return s.captions.slice(i + 1).filter(c => c.speaker === 'agent').map(c => c.text).join(' ');",
            json!([]),
        )
        .await;
    let (heard_words, captioned_words) =
        (crate::common::words(&heard), crate::common::words(captioned.as_str().unwrap()));
    let matched = heard_words.iter().filter(|word| captioned_words.contains(word)).count();
    assert!(
        heard_words.len() >= 3 && matched * 10 >= heard_words.len() * 6,
        "the browser played {heard:?}, the captions say {captioned}"
    );
    assert!(
        heard_words.iter().any(|word| ["7", "730", "seven", "weekdays", "weekday"].contains(&word.as_str())),
        "the browser played {heard:?}, which is not the document's answer (captions: {captioned})"
    );

    // Mute, then hang up from the widget: the server's call ends and frees its slot.
    browser.script(&format!("{ROOT} root.querySelector('[data-part=mute]').click(); return true;"), json!([])).await;
    let muted = browser.script("return window.ParleyChat.state().call.muted;", json!([])).await;
    assert_eq!(muted, true);
    browser.script(&format!("{ROOT} root.querySelector('[data-part=hangup]').click(); return true;"), json!([])).await;
    let started = Instant::now();
    while server.runtime.calls().live_calls() > 0 {
        assert!(started.elapsed() < Duration::from_secs(20), "the call did not end on the server");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bar_hidden =
        browser.script(&format!("{ROOT} return root.querySelector('[data-part=call-bar]').hidden;"), json!([])).await;
    assert_eq!(bar_hidden, true);

    // The node's metrics time each stage of the spoken turn and count the call's end.
    let metrics = server.client.get(format!("{}/metrics", server.base)).send().await.unwrap().text().await.unwrap();
    for stage in ["end_of_turn", "transcription", "retrieval", "first_audio"] {
        let series = format!("parley_voice_turn_stage_seconds_count{{channel=\"voice\",stage=\"{stage}\"}}");
        assert!(metrics.lines().any(|line| line.starts_with(&series) && !line.ends_with(" 0")), "{series}: {metrics}");
    }
    assert!(metrics.contains("parley_calls_ended_total{channel=\"voice\",reason=\"hung_up\"} 1"), "{metrics}");
    assert!(metrics.contains("parley_live_calls 0"), "{metrics}");

    // The call is a conversation on the voice channel with the question stored as text.
    let (_, list) = server.get("/admin/v1/conversations", &token).await;
    let call =
        list["items"].as_array().unwrap().iter().find(|c| c["channel"] == "voice").expect("a voice conversation");
    let (_, detail) = server.get(&format!("/admin/v1/conversations/{}", call["id"].as_str().unwrap()), &token).await;
    let stored = detail.to_string().to_lowercase();
    assert!(stored.contains("weekday"), "{detail}");
    server.stop().await;
}
