//! Data exports (portability): everything a tenant holds, or everything about one end user,
//! as a zip archive of NDJSON files with a manifest and the JSON Schema they follow
//! (`docs/export-format.md`). With the tenant's model-improvement opt-in on, the tenant's
//! conversations can also be exported as chat fine-tuning JSONL, personal data redacted.
//!
//! A job is created (`create`), runs as a background task that records its progress, and
//! writes the archive under `<data_dir>/exports/<tenant>/` to a temporary name renamed when
//! complete. Archives hold personal data: they expire after `exports.expire_days` and are
//! deleted by [`sweep_expired`]; an erasure deletes the tenant's archives, which may hold what
//! it erased.
//! A node that stops mid-job marks the job failed at the next start ([`recover`]), so no job
//! stays "running" for ever.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::{self, AuditRecord};
use crate::auth::{Permission, Principal};
use crate::chat::conversations::{Conversation, MessageRole, StoredMessage};
use crate::error::{Error, Result};
use crate::page::{Page, PageRequest};
use crate::subjects::{self, Subject};
use crate::{storage, Runtime};

/// The archive format's version, in the manifest.
pub const FORMAT_VERSION: u32 = 1;
const SUBJECT_PURPOSE: &str = "export-subject";
/// Conversations between progress updates.
const PROGRESS_EVERY: u64 = 25;
const PAGE: u32 = 200;
/// Exports a tenant may have queued or running at once.
pub const MAX_UNFINISHED: i64 = 2;

/// What an export is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportScope {
    /// Everything the tenant holds.
    Tenant,
    /// The conversations that belong to or mention one end user.
    EndUser(Subject),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// The data-portability archive.
    Archive,
    /// Chat fine-tuning examples (needs the model-improvement opt-in).
    FineTuning,
}

impl ExportFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Archive => "archive",
            ExportFormat::FineTuning => "fine_tuning",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "archive" => Some(ExportFormat::Archive),
            "fine_tuning" => Some(ExportFormat::FineTuning),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportStatus {
    Queued,
    Running,
    Ready,
    Failed,
    /// The archive was deleted when its time ran out.
    Expired,
}

impl ExportStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportStatus::Queued => "queued",
            ExportStatus::Running => "running",
            ExportStatus::Ready => "ready",
            ExportStatus::Failed => "failed",
            ExportStatus::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Queued, Self::Running, Self::Ready, Self::Failed, Self::Expired]
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

/// How far a job has got. Stored as JSON with the job (a private format).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExportProgress {
    pub conversations_total: u64,
    pub conversations_done: u64,
    pub messages: u64,
    pub documents: u64,
}

/// An export job.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportJob {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// `tenant` or `end_user`.
    pub scope: String,
    /// For end-user exports, what identified them (`email`, …); never the identifier itself.
    pub subject_kind: Option<String>,
    pub format: ExportFormat,
    pub status: ExportStatus,
    pub progress: ExportProgress,
    /// Why a failed job failed.
    pub error: Option<String>,
    pub byte_size: Option<i64>,
    pub sha256: Option<String>,
    pub created_at: OffsetDateTime,
    pub completed_at: Option<OffsetDateTime>,
    pub expires_at: Option<OffsetDateTime>,
}

/// Starts an export job; it runs in the background. End-user exports of a subject the
/// tenant's conversations never saw fail at once (`subject_not_found`); fine-tuning exports
/// need the model-improvement opt-in and cover the whole tenant; a tenant has at most
/// [`MAX_UNFINISHED`] exports queued or running.
pub async fn create(
    runtime: &Runtime,
    principal: &Principal,
    scope: ExportScope,
    format: ExportFormat,
) -> Result<ExportJob> {
    principal.require(Permission::ExportData)?;
    let tenant_id = principal.tenant_id;
    if format == ExportFormat::FineTuning {
        if scope != ExportScope::Tenant {
            return Err(Error::invalid("scope", "fine-tuning exports cover the whole tenant"));
        }
        if !model_improvement_enabled(runtime, tenant_id).await? {
            return Err(Error::ModelImprovementOff);
        }
    }
    let (scope_name, subject_kind, sealed, hash) = match &scope {
        ExportScope::Tenant => ("tenant", None, None, None),
        ExportScope::EndUser(subject) => {
            if subjects::conversations_of(runtime, tenant_id, subject).await?.is_empty() {
                return Err(Error::UnknownSubject { kind: subject.kind() });
            }
            let sealed =
                runtime.secrets().seal(SUBJECT_PURPOSE, &tenant_id.to_string(), subject_bytes(subject).as_bytes());
            ("end_user", Some(subject.kind().to_owned()), Some(sealed), Some(subject.hash(runtime, tenant_id)))
        }
    };
    let job = ExportJob {
        id: Uuid::now_v7(),
        tenant_id,
        scope: scope_name.to_owned(),
        subject_kind,
        format,
        status: ExportStatus::Queued,
        progress: ExportProgress::default(),
        error: None,
        byte_size: None,
        sha256: None,
        created_at: storage::now(),
        completed_at: None,
        expires_at: None,
    };
    let mut transaction = runtime.database().begin().await?;
    storage::tenants::lock(&mut transaction, runtime.database().backend(), tenant_id).await?;
    if storage::exports::unfinished_count(&mut transaction, tenant_id).await? >= MAX_UNFINISHED {
        return Err(Error::Conflict(format!(
            "{MAX_UNFINISHED} exports are already being prepared; wait for one to finish"
        )));
    }
    storage::exports::insert(&mut transaction, &job, sealed.as_deref(), hash.as_deref(), principal.key_id).await?;
    let record = AuditRecord::by_key(principal, "export.create", "export", job.id.to_string()).with_details(json!({
        "scope": scope_name,
        "subject_kind": job.subject_kind,
        "format": format.as_str(),
    }));
    audit::record(&mut transaction, record).await?;
    transaction.commit().await?;

    let task_runtime = runtime.clone();
    let job_id = job.id;
    tokio::spawn(async move {
        if let Err(error) = run(&task_runtime, tenant_id, job_id).await {
            tracing::error!(error = %error, export_id = %job_id, "export failed");
            let _ = fail(&task_runtime, tenant_id, job_id, "the export failed; see the server log").await;
        }
    });
    Ok(job)
}

pub async fn get(runtime: &Runtime, principal: &Principal, export_id: Uuid) -> Result<ExportJob> {
    principal.require(Permission::ExportData)?;
    let mut connection = runtime.database().pool().acquire().await?;
    storage::exports::get(&mut connection, principal.tenant_id, export_id)
        .await?
        .ok_or(Error::NotFound { resource: "export" })
}

pub async fn list(runtime: &Runtime, principal: &Principal, page: PageRequest) -> Result<Page<ExportJob>> {
    principal.require(Permission::ExportData)?;
    let mut connection = runtime.database().pool().acquire().await?;
    let rows = storage::exports::list(&mut connection, principal.tenant_id, &page).await?;
    Ok(Page::from_rows(rows, &page, |job| job.id))
}

/// A ready job's archive file; a job not ready yet is a conflict that says its status.
pub async fn download(runtime: &Runtime, principal: &Principal, export_id: Uuid) -> Result<(ExportJob, PathBuf)> {
    let job = get(runtime, principal, export_id).await?;
    if job.status != ExportStatus::Ready {
        return Err(Error::Conflict(format!("the export is {}, not ready", job.status.as_str())));
    }
    let path = archive_path(runtime, job.tenant_id, job.id);
    if !path.exists() {
        return Err(Error::Conflict("the export's archive is gone (expired or erased)".to_owned()));
    }
    let record = AuditRecord::by_key(principal, "export.download", "export", job.id.to_string());
    let mut transaction = runtime.database().begin().await?;
    audit::record(&mut transaction, record).await?;
    transaction.commit().await?;
    Ok((job, path))
}

/// At start-up: jobs a stopped node left queued or running are marked failed, and their
/// partial files deleted. Returns how many.
pub async fn recover(runtime: &Runtime) -> Result<usize> {
    let interrupted = {
        let mut connection = runtime.database().pool().acquire().await?;
        storage::exports::fail_unfinished(
            &mut connection,
            "interrupted by a restart of the server; create a new export",
            storage::now_millis(),
        )
        .await?
    };
    for (tenant_id, job_id) in &interrupted {
        remove_files(runtime, *tenant_id, *job_id).await;
    }
    Ok(interrupted.len())
}

/// Deletes the archives whose time ran out at `now`; returns how many. Called by the
/// retention sweeper.
pub async fn sweep_expired(runtime: &Runtime, now: OffsetDateTime) -> Result<u64> {
    let mut deleted = 0;
    loop {
        let expired = {
            let mut connection = runtime.database().pool().acquire().await?;
            storage::exports::expired(&mut connection, storage::to_millis(now), 200).await?
        };
        if expired.is_empty() {
            break;
        }
        for (tenant_id, job_id) in expired {
            remove_files(runtime, tenant_id, job_id).await;
            let mut transaction = runtime.database().begin().await?;
            storage::exports::mark_expired(&mut transaction, tenant_id, job_id).await?;
            let record = AuditRecord::by_system(tenant_id, "export.expire", "export", job_id.to_string());
            audit::record(&mut transaction, record).await?;
            transaction.commit().await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Erasure step: deletes every export job and archive of the tenant, since any of them may
/// hold erased data (an end user's archive includes conversations that mention others).
/// Running jobs are stopped: they notice at completion and delete what they wrote.
pub(crate) async fn delete_all_of_tenant(runtime: &Runtime, tenant_id: Uuid) -> Result<u64> {
    let jobs = {
        let mut connection = runtime.database().pool().acquire().await?;
        storage::exports::live_jobs(&mut connection, tenant_id).await?
    };
    let mut deleted = 0;
    for job_id in jobs {
        let mut connection = runtime.database().pool().acquire().await?;
        if storage::exports::delete(&mut connection, tenant_id, job_id).await? {
            deleted += 1;
        }
        drop(connection);
        remove_files(runtime, tenant_id, job_id).await;
    }
    Ok(deleted)
}

/// Erasure of a whole tenant: its exports directory.
pub(crate) async fn remove_tenant_files(runtime: &Runtime, tenant_id: Uuid) -> Result<()> {
    let directory = tenant_directory(runtime, tenant_id);
    match tokio::fs::remove_dir_all(&directory).await {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error.into()),
        _ => Ok(()),
    }
}

/// Whether the tenant's conversations may be used for model improvement (off by default).
pub async fn model_improvement(runtime: &Runtime, principal: &Principal) -> Result<bool> {
    principal.require(Permission::ReadTenant)?;
    model_improvement_enabled(runtime, principal.tenant_id).await
}

/// Turns the tenant's model-improvement opt-in on or off. Owner only; audited.
pub async fn set_model_improvement(runtime: &Runtime, principal: &Principal, enabled: bool) -> Result<bool> {
    principal.require(Permission::ManageDataUse)?;
    let mut transaction = runtime.database().begin().await?;
    let before = storage::exports::model_improvement(&mut transaction, principal.tenant_id)
        .await?
        .ok_or(Error::NotFound { resource: "tenant" })?;
    storage::exports::set_model_improvement(&mut transaction, principal.tenant_id, enabled).await?;
    let record = AuditRecord::by_key(principal, "tenant.model_improvement", "tenant", principal.tenant_id.to_string())
        .with_details(json!({ "before": before, "after": enabled }));
    audit::record(&mut transaction, record).await?;
    transaction.commit().await?;
    Ok(enabled)
}

async fn model_improvement_enabled(runtime: &Runtime, tenant_id: Uuid) -> Result<bool> {
    let mut connection = runtime.database().pool().acquire().await?;
    Ok(storage::exports::model_improvement(&mut connection, tenant_id).await?.unwrap_or(false))
}

fn subject_bytes(subject: &Subject) -> String {
    format!("{}:{}", subject.kind(), subject.value())
}

fn tenant_directory(runtime: &Runtime, tenant_id: Uuid) -> PathBuf {
    runtime.settings().data_dir.join("exports").join(tenant_id.to_string())
}

fn archive_path(runtime: &Runtime, tenant_id: Uuid, job_id: Uuid) -> PathBuf {
    tenant_directory(runtime, tenant_id).join(format!("{job_id}.zip"))
}

fn work_directory(runtime: &Runtime, tenant_id: Uuid, job_id: Uuid) -> PathBuf {
    tenant_directory(runtime, tenant_id).join(format!("{job_id}.work"))
}

fn partial_path(runtime: &Runtime, tenant_id: Uuid, job_id: Uuid) -> PathBuf {
    tenant_directory(runtime, tenant_id).join(format!("{job_id}.zip.part"))
}

/// Deletes a job's archive and any partial files; failures are logged (the files hold
/// personal data, so a leftover is worth knowing about).
async fn remove_files(runtime: &Runtime, tenant_id: Uuid, job_id: Uuid) {
    for path in [archive_path(runtime, tenant_id, job_id), partial_path(runtime, tenant_id, job_id)] {
        if let Err(error) = tokio::fs::remove_file(&path).await {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::error!(error = %error, path = %path.display(), "cannot delete an export file");
            }
        }
    }
    let work = work_directory(runtime, tenant_id, job_id);
    if let Err(error) = tokio::fs::remove_dir_all(&work).await {
        if error.kind() != std::io::ErrorKind::NotFound {
            tracing::error!(error = %error, path = %work.display(), "cannot delete an export's work files");
        }
    }
}

async fn fail(runtime: &Runtime, tenant_id: Uuid, job_id: Uuid, reason: &str) -> Result<()> {
    let mut connection = runtime.database().pool().acquire().await?;
    storage::exports::fail(&mut connection, tenant_id, job_id, reason, storage::now_millis()).await?;
    drop(connection);
    remove_files(runtime, tenant_id, job_id).await;
    Ok(())
}

/// One NDJSON file being written: its records, bytes and SHA-256.
struct NdjsonFile {
    name: &'static str,
    record_type: &'static str,
    path: PathBuf,
    writer: BufWriter<File>,
    hasher: Sha256,
    records: u64,
    bytes: u64,
}

impl NdjsonFile {
    fn create(directory: &Path, name: &'static str, record_type: &'static str) -> Result<Self> {
        let path = directory.join(name);
        let writer = BufWriter::new(File::create(&path)?);
        Ok(Self { name, record_type, path, writer, hasher: Sha256::new(), records: 0, bytes: 0 })
    }

    fn write(&mut self, record: &Value) -> Result<()> {
        let mut line = serde_json::to_vec(record).map_err(|error| Error::Corrupt(error.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        self.hasher.update(&line);
        self.records += 1;
        self.bytes += line.len() as u64;
        Ok(())
    }

    fn finish(mut self) -> Result<(Value, PathBuf)> {
        self.writer.flush()?;
        let entry = json!({
            "name": self.name,
            "record_type": self.record_type,
            "records": self.records,
            "bytes": self.bytes,
            "sha256": hex::encode(self.hasher.finalize()),
        });
        Ok((entry, self.path))
    }
}

fn timestamp(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.unix_timestamp().to_string())
}

async fn run(runtime: &Runtime, tenant_id: Uuid, job_id: Uuid) -> Result<()> {
    let (job, subject) = {
        let mut connection = runtime.database().pool().acquire().await?;
        if !storage::exports::transition(
            &mut connection,
            tenant_id,
            job_id,
            ExportStatus::Queued,
            ExportStatus::Running,
        )
        .await?
        {
            return Ok(());
        }
        let job = storage::exports::get(&mut connection, tenant_id, job_id)
            .await?
            .ok_or(Error::NotFound { resource: "export" })?;
        let subject = match storage::exports::subject_sealed(&mut connection, tenant_id, job_id).await? {
            Some(sealed) => {
                let bytes = runtime.secrets().open(SUBJECT_PURPOSE, &tenant_id.to_string(), &sealed)?;
                let text = String::from_utf8(bytes).map_err(|_| Error::Corrupt("export subject".to_owned()))?;
                let (kind, value) = text.split_once(':').ok_or_else(|| Error::Corrupt("export subject".to_owned()))?;
                Some(Subject::new(kind, value)?)
            }
            None => None,
        };
        (job, subject)
    };
    let work = work_directory(runtime, tenant_id, job_id);
    tokio::fs::create_dir_all(&work).await?;
    let written = match job.format {
        ExportFormat::Archive => write_archive_files(runtime, &job, subject.as_ref(), &work).await?,
        ExportFormat::FineTuning => write_fine_tuning_files(runtime, &job, &work).await?,
    };
    let manifest = json!({
        "format": "parley-export",
        "format_version": FORMAT_VERSION,
        "export_id": job.id,
        "tenant_id": tenant_id,
        "scope": job.scope,
        "subject_kind": job.subject_kind,
        "content": job.format.as_str(),
        "created_at": timestamp(job.created_at),
        "completed_at": timestamp(storage::now()),
        "files": written.iter().map(|(entry, _)| entry.clone()).collect::<Vec<_>>(),
    });
    let partial = partial_path(runtime, tenant_id, job_id);
    let final_path = archive_path(runtime, tenant_id, job_id);
    let paths: Vec<(String, PathBuf)> = written
        .iter()
        .map(|(entry, path)| (entry["name"].as_str().unwrap_or_default().to_owned(), path.clone()))
        .collect();
    let (byte_size, sha256) = {
        let partial = partial.clone();
        tokio::task::spawn_blocking(move || zip_archive(&partial, &manifest, &paths))
            .await
            .map_err(|error| Error::Corrupt(format!("export task: {error}")))??
    };
    tokio::fs::rename(&partial, &final_path).await?;
    tokio::fs::remove_dir_all(&work).await?;
    let now = storage::now();
    let expires = now + time::Duration::days(i64::from(runtime.settings().exports.expire_days));
    let mut transaction = runtime.database().begin().await?;
    let completed = storage::exports::complete(
        &mut transaction,
        tenant_id,
        job_id,
        &format!("{job_id}.zip"),
        byte_size,
        &sha256,
        storage::to_millis(now),
        storage::to_millis(expires),
    )
    .await?;
    if completed {
        let data = serde_json::json!({
            "export_id": job_id,
            "bytes": byte_size,
            "sha256": sha256,
            "expires_at": expires.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        });
        crate::webhooks::enqueue(&mut transaction, tenant_id, crate::webhooks::Event::ExportReady, None, data).await?;
    }
    transaction.commit().await?;
    if !completed {
        // An erasure deleted the job while it ran: its archive may hold erased data.
        remove_files(runtime, tenant_id, job_id).await;
    }
    Ok(())
}

fn zip_archive(partial: &Path, manifest: &Value, files: &[(String, PathBuf)]) -> Result<(i64, String)> {
    let zip_error = |error: zip::result::ZipError| Error::Io(std::io::Error::other(error));
    let file = File::create(partial)?;
    let mut archive = zip::ZipWriter::new(BufWriter::new(file));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated).large_file(true);
    let pretty = |value: &Value| serde_json::to_vec_pretty(value).map_err(|error| Error::Corrupt(error.to_string()));
    archive.start_file("manifest.json", options).map_err(zip_error)?;
    archive.write_all(&pretty(manifest)?)?;
    archive.start_file("schema.json", options).map_err(zip_error)?;
    archive.write_all(&pretty(&schema())?)?;
    for (name, path) in files {
        archive.start_file(name.as_str(), options).map_err(zip_error)?;
        std::io::copy(&mut File::open(path)?, &mut archive)?;
    }
    let mut writer = archive.finish().map_err(zip_error)?;
    writer.flush()?;
    let file = writer.into_inner().map_err(|error| Error::Io(error.into_error()))?;
    file.sync_all()?;
    drop(file);
    let mut hasher = Sha256::new();
    let mut reader = File::open(partial)?;
    let size = std::io::copy(&mut reader, &mut hasher)?;
    Ok((size as i64, hex::encode(hasher.finalize())))
}

async fn save_progress(runtime: &Runtime, job: &ExportJob, progress: &ExportProgress) -> Result<()> {
    let mut connection = runtime.database().pool().acquire().await?;
    storage::exports::set_progress(&mut connection, job.tenant_id, job.id, progress).await
}

/// The conversations an export covers: the subject's, or every one of the tenant's.
async fn conversations_for(runtime: &Runtime, tenant_id: Uuid, subject: Option<&Subject>) -> Result<Vec<Uuid>> {
    match subject {
        Some(subject) => subjects::conversations_of(runtime, tenant_id, subject).await,
        None => {
            let mut connection = runtime.database().pool().acquire().await?;
            storage::erasure::conversations_of_tenant(&mut connection, tenant_id).await
        }
    }
}

async fn write_archive_files(
    runtime: &Runtime,
    job: &ExportJob,
    subject: Option<&Subject>,
    work: &Path,
) -> Result<Vec<(Value, PathBuf)>> {
    let tenant_id = job.tenant_id;
    let mut progress = ExportProgress::default();
    let mut written = Vec::new();
    let mut connection = runtime.database().pool().acquire().await?;
    if subject.is_none() {
        let mut file = NdjsonFile::create(work, "tenant.ndjson", "tenant")?;
        let tenant =
            storage::tenants::get(&mut connection, tenant_id).await?.ok_or(Error::NotFound { resource: "tenant" })?;
        let retention = storage::retention::get(&mut connection, tenant_id).await?.unwrap_or_default();
        let model_improvement = storage::exports::model_improvement(&mut connection, tenant_id).await?.unwrap_or(false);
        file.write(&json!({
            "id": tenant.id,
            "name": tenant.name,
            "created_at": timestamp(tenant.created_at),
            "updated_at": timestamp(tenant.updated_at),
            "retention": retention,
            "model_improvement": model_improvement,
        }))?;
        written.push(file.finish()?);

        let mut file = NdjsonFile::create(work, "agents.ndjson", "agent")?;
        for agent in crate::agents::all_of_tenant(&mut connection, tenant_id, usize::MAX).await? {
            file.write(&json!({
                "id": agent.id,
                "public_id": agent.public_id,
                "name": agent.name,
                "system_prompt": agent.system_prompt,
                "greeting": agent.greeting,
                "language": agent.language,
                "model": agent.model,
                "retrieval": agent.retrieval,
                "voice": agent.voice,
                "retention": agent.retention,
                "allowed_origins": agent.allowed_origins,
                "widget": agent.widget,
                "created_at": timestamp(agent.created_at),
                "updated_at": timestamp(agent.updated_at),
            }))?;
        }
        written.push(file.finish()?);

        let mut file = NdjsonFile::create(work, "documents.ndjson", "document")?;
        for (document_id, _, _) in parley_knowledge::storage::published_documents(&mut connection, tenant_id).await? {
            let Some(document) =
                parley_knowledge::storage::get_document(&mut connection, tenant_id, document_id).await?
            else {
                continue;
            };
            let agents = parley_knowledge::storage::agents_of(&mut connection, tenant_id, document_id).await?;
            file.write(&json!({
                "id": document.id,
                "agent_ids": agents,
                "title": document.title,
                "source_name": document.source_name,
                "format": document.format,
                "language": document.language,
                "content_sha256": document.content_sha256,
                "byte_size": document.byte_size,
                "created_at": timestamp(document.created_at),
                "updated_at": timestamp(document.updated_at),
                "text": document.text.unwrap_or_default(),
            }))?;
            progress.documents += 1;
        }
        written.push(file.finish()?);
    }
    drop(connection);

    let conversation_ids = conversations_for(runtime, tenant_id, subject).await?;
    progress.conversations_total = conversation_ids.len() as u64;
    save_progress(runtime, job, &progress).await?;
    let mut conversations = NdjsonFile::create(work, "conversations.ndjson", "conversation")?;
    let mut messages = NdjsonFile::create(work, "messages.ndjson", "message")?;
    // Recorded calls are listed, not copied: an archive is a file in the clear, and recorded
    // audio is only ever stored sealed. Each is fetched through the admin API.
    let mut recordings = NdjsonFile::create(work, "recordings.ndjson", "recording")?;
    for conversation_id in conversation_ids {
        let mut connection = runtime.database().pool().acquire().await?;
        let Some(conversation) = storage::conversations::get(&mut connection, tenant_id, conversation_id).await? else {
            continue;
        };
        conversations.write(&conversation_record(&conversation))?;
        for message in storage::conversations::messages(&mut connection, tenant_id, conversation_id, None).await? {
            messages.write(&message_record(&message))?;
            progress.messages += 1;
        }
        let layout = storage::recordings::layout(&mut connection, tenant_id, conversation_id).await?;
        if !layout.is_empty() {
            let frames = crate::recordings::total_frames(&layout);
            recordings.write(&json!({
                "conversation_id": conversation_id,
                "segments": layout.len(),
                "duration_ms": frames * 1000 / u64::from(crate::recordings::SAMPLE_RATE),
                "sample_rate": crate::recordings::SAMPLE_RATE,
                "channels": crate::recordings::CHANNELS,
                "download_path": format!("/admin/v1/conversations/{conversation_id}/recording"),
            }))?;
        }
        drop(connection);
        progress.conversations_done += 1;
        if progress.conversations_done.is_multiple_of(PROGRESS_EVERY) {
            save_progress(runtime, job, &progress).await?;
        }
    }
    written.push(conversations.finish()?);
    written.push(messages.finish()?);
    written.push(recordings.finish()?);

    if subject.is_none() {
        let mut file = NdjsonFile::create(work, "audit_log.ndjson", "audit_entry")?;
        let mut after = None;
        loop {
            let page = PageRequest { limit: PAGE, after };
            let mut connection = runtime.database().pool().acquire().await?;
            let rows = storage::audit::list(&mut connection, tenant_id, &page).await?;
            let page = Page::from_rows(rows, &page, |entry| entry.id);
            for entry in &page.items {
                file.write(&json!({
                    "id": entry.id,
                    "actor_key_id": entry.actor_key_id,
                    "actor_role": entry.actor_role,
                    "action": entry.action,
                    "target_type": entry.target_type,
                    "target_id": entry.target_id,
                    "details": entry.details,
                    "created_at": timestamp(entry.created_at),
                }))?;
            }
            if page.next_cursor.is_none() {
                break;
            }
            after = page.items.last().map(|entry| entry.id);
        }
        written.push(file.finish()?);
    }
    save_progress(runtime, job, &progress).await?;
    Ok(written)
}

fn conversation_record(conversation: &Conversation) -> Value {
    json!({
        "id": conversation.id,
        "agent_id": conversation.agent_id,
        "channel": conversation.channel.as_str(),
        "visitor_id": conversation.visitor_id,
        "identity": conversation.identity,
        "stores_text": conversation.stores_text,
        "started_at": timestamp(conversation.started_at),
        "last_activity_at": timestamp(conversation.last_activity_at),
    })
}

fn message_record(message: &StoredMessage) -> Value {
    json!({
        "id": message.id,
        "conversation_id": message.conversation_id,
        "role": message.role.as_str(),
        "text": message.text,
        "reply_to": message.reply_to,
        "finish_reason": message.finish_reason,
        "citations": message.citations.iter().map(|citation| json!({
            "marker": citation.marker,
            "document_id": citation.document_id,
            "title": citation.title,
            "snippet": citation.snippet,
        })).collect::<Vec<_>>(),
        "model": message.model,
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
        "created_at": timestamp(message.created_at),
        "speech_start_ms": message.utterance.as_ref().map(|utterance| utterance.start_ms),
        "speech_end_ms": message.utterance.as_ref().map(|utterance| utterance.end_ms),
        "language": message.utterance.as_ref().and_then(|utterance| utterance.language.as_deref()),
    })
}

/// Fine-tuning examples: one line per conversation with stored text, the agent's persona as
/// the system message and each answered question as a user/assistant pair, every text redacted.
async fn write_fine_tuning_files(runtime: &Runtime, job: &ExportJob, work: &Path) -> Result<Vec<(Value, PathBuf)>> {
    let tenant_id = job.tenant_id;
    let agents: BTreeMap<Uuid, String> = {
        let mut connection = runtime.database().pool().acquire().await?;
        crate::agents::all_of_tenant(&mut connection, tenant_id, usize::MAX)
            .await?
            .into_iter()
            .map(|agent| (agent.id, agent.system_prompt))
            .collect()
    };
    let conversation_ids = conversations_for(runtime, tenant_id, None).await?;
    let mut progress = ExportProgress { conversations_total: conversation_ids.len() as u64, ..Default::default() };
    save_progress(runtime, job, &progress).await?;
    let mut file = NdjsonFile::create(work, "fine_tuning.jsonl", "fine_tuning_example")?;
    for conversation_id in conversation_ids {
        let mut connection = runtime.database().pool().acquire().await?;
        let conversation = storage::conversations::get(&mut connection, tenant_id, conversation_id).await?;
        let messages = storage::conversations::messages(&mut connection, tenant_id, conversation_id, None).await?;
        drop(connection);
        progress.conversations_done += 1;
        let Some(conversation) = conversation.filter(|conversation| conversation.stores_text) else { continue };
        if let Some(example) = fine_tuning_example(agents.get(&conversation.agent_id).map(String::as_str), &messages) {
            progress.messages += example["messages"].as_array().map(Vec::len).unwrap_or(0) as u64;
            file.write(&example)?;
        }
        if progress.conversations_done.is_multiple_of(PROGRESS_EVERY) {
            save_progress(runtime, job, &progress).await?;
        }
    }
    save_progress(runtime, job, &progress).await?;
    Ok(vec![file.finish()?])
}

/// A conversation as one chat fine-tuning example, or `None` when no question was answered.
fn fine_tuning_example(system_prompt: Option<&str>, messages: &[StoredMessage]) -> Option<Value> {
    let redacted = |text: &str| crate::redact::redact(text).text;
    let mut lines = Vec::new();
    if let Some(prompt) = system_prompt.filter(|prompt| !prompt.trim().is_empty()) {
        lines.push(json!({ "role": "system", "content": redacted(prompt) }));
    }
    let mut pairs = 0;
    for question in messages.iter().filter(|message| message.role == MessageRole::User) {
        let answer = messages.iter().find(|message| {
            message.reply_to == Some(question.id)
                && matches!(message.finish_reason.as_deref(), Some("stop" | "length" | "no_answer"))
        });
        let (Some(asked), Some(answered)) = (&question.text, answer.and_then(|answer| answer.text.as_ref())) else {
            continue;
        };
        lines.push(json!({ "role": "user", "content": redacted(asked) }));
        lines.push(json!({ "role": "assistant", "content": redacted(answered) }));
        pairs += 1;
    }
    (pairs > 0).then(|| json!({ "messages": lines }))
}

/// The JSON Schema (2020-12) of the manifest (the root) and of every record type (`$defs`),
/// shipped in each archive as `schema.json`.
pub fn schema() -> Value {
    let timestamp = json!({ "type": "string", "format": "date-time" });
    let uuid = json!({ "type": "string", "format": "uuid" });
    let nullable = |schema: &Value| json!({ "anyOf": [schema, { "type": "null" }] });
    let text = json!({ "type": "string" });
    let count = json!({ "type": "integer", "minimum": 0 });
    let object = json!({ "type": "object" });
    let record = |required: &[&str], properties: Value| json!({ "type": "object", "required": required, "properties": properties, "additionalProperties": false });
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:parley:export:1",
        "title": "Parley export archive",
        "description": "The root schema describes manifest.json; $defs describe one record of each NDJSON file, named by the manifest's record_type.",
        "$ref": "#/$defs/manifest",
        "$defs": {
            "manifest": record(
                &["format", "format_version", "export_id", "tenant_id", "scope", "subject_kind", "content", "created_at", "completed_at", "files"],
                json!({
                    "format": { "const": "parley-export" },
                    "format_version": { "const": FORMAT_VERSION },
                    "export_id": uuid,
                    "tenant_id": uuid,
                    "scope": { "enum": ["tenant", "end_user"] },
                    "subject_kind": { "enum": ["visitor_id", "identity", "email", "phone", null] },
                    "content": { "enum": ["archive", "fine_tuning"] },
                    "created_at": timestamp,
                    "completed_at": timestamp,
                    "files": { "type": "array", "items": record(
                        &["name", "record_type", "records", "bytes", "sha256"],
                        json!({
                            "name": text,
                            "record_type": { "enum": ["tenant", "agent", "document", "conversation", "message", "recording", "audit_entry", "fine_tuning_example"] },
                            "records": count,
                            "bytes": count,
                            "sha256": { "type": "string", "pattern": "^[0-9a-f]{64}$" },
                        }),
                    ) },
                }),
            ),
            "tenant": record(
                &["id", "name", "created_at", "updated_at", "retention", "model_improvement"],
                json!({
                    "id": uuid, "name": text, "created_at": timestamp, "updated_at": timestamp,
                    "retention": object, "model_improvement": { "type": "boolean" },
                }),
            ),
            "agent": record(
                &["id", "public_id", "name", "system_prompt", "greeting", "language", "model", "retrieval", "voice", "retention", "allowed_origins", "widget", "created_at", "updated_at"],
                json!({
                    "id": uuid, "public_id": text, "name": text, "system_prompt": text, "greeting": text,
                    "language": text, "model": object, "retrieval": object, "voice": object, "retention": object,
                    "allowed_origins": { "type": "array", "items": text }, "widget": object,
                    "created_at": timestamp, "updated_at": timestamp,
                }),
            ),
            "document": record(
                &["id", "agent_ids", "title", "source_name", "format", "language", "content_sha256", "byte_size", "created_at", "updated_at", "text"],
                json!({
                    "id": uuid, "agent_ids": { "type": "array", "items": uuid }, "title": text,
                    "source_name": nullable(&text), "format": text, "language": text,
                    "content_sha256": text, "byte_size": count, "created_at": timestamp, "updated_at": timestamp,
                    "text": text,
                }),
            ),
            "conversation": record(
                &["id", "agent_id", "channel", "visitor_id", "identity", "stores_text", "started_at", "last_activity_at"],
                json!({
                    "id": uuid, "agent_id": uuid, "channel": { "enum": ["web", "api", "voice", "phone"] },
                    "visitor_id": text, "identity": nullable(&text), "stores_text": { "type": "boolean" },
                    "started_at": timestamp, "last_activity_at": timestamp,
                }),
            ),
            "message": record(
                &["id", "conversation_id", "role", "text", "reply_to", "finish_reason", "citations", "model", "prompt_tokens", "completion_tokens", "created_at", "speech_start_ms", "speech_end_ms", "language"],
                json!({
                    "id": uuid, "conversation_id": uuid, "role": { "enum": ["user", "assistant"] },
                    "text": nullable(&text), "reply_to": nullable(&uuid), "finish_reason": nullable(&text),
                    "citations": { "type": "array", "items": record(
                        &["marker", "document_id", "title", "snippet"],
                        json!({ "marker": count, "document_id": uuid, "title": text, "snippet": text }),
                    ) },
                    "model": nullable(&text), "prompt_tokens": count, "completion_tokens": count,
                    "created_at": timestamp, "speech_start_ms": nullable(&count), "speech_end_ms": nullable(&count),
                    "language": nullable(&text),
                }),
            ),
            "recording": record(
                &["conversation_id", "segments", "duration_ms", "sample_rate", "channels", "download_path"],
                json!({
                    "conversation_id": uuid, "segments": count, "duration_ms": count,
                    "sample_rate": { "const": crate::recordings::SAMPLE_RATE },
                    "channels": { "const": crate::recordings::CHANNELS },
                    "download_path": text,
                }),
            ),
            "audit_entry": record(
                &["id", "actor_key_id", "actor_role", "action", "target_type", "target_id", "details", "created_at"],
                json!({
                    "id": uuid, "actor_key_id": nullable(&uuid), "actor_role": text, "action": text,
                    "target_type": text, "target_id": text, "details": object, "created_at": timestamp,
                }),
            ),
            "fine_tuning_example": record(
                &["messages"],
                json!({ "messages": { "type": "array", "minItems": 2, "items": record(
                    &["role", "content"],
                    json!({ "role": { "enum": ["system", "user", "assistant"] }, "content": text }),
                ) } }),
            ),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(role: MessageRole, text: &str, reply_to: Option<Uuid>, finish: Option<&str>) -> StoredMessage {
        StoredMessage {
            id: Uuid::now_v7(),
            tenant_id: Uuid::nil(),
            conversation_id: Uuid::nil(),
            role,
            text: Some(text.to_owned()),
            client_message_id: None,
            reply_to,
            finish_reason: finish.map(str::to_owned),
            citations: Vec::new(),
            model: None,
            timings: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            created_at: OffsetDateTime::UNIX_EPOCH,
            utterance: None,
        }
    }

    #[test]
    fn fine_tuning_examples_pair_answered_questions_and_redact() {
        let question = message(MessageRole::User, "I'm jane@example.com, where is my order?", None, None);
        let answer = message(MessageRole::Assistant, "It ships tomorrow.", Some(question.id), Some("stop"));
        let unanswered = message(MessageRole::User, "hello?", None, None);
        let failed = message(MessageRole::Assistant, "", Some(unanswered.id), Some("error"));
        let example =
            fine_tuning_example(Some("You help shoppers."), &[question, answer, unanswered.clone(), failed.clone()])
                .unwrap();
        assert_eq!(
            example,
            json!({ "messages": [
                { "role": "system", "content": "You help shoppers." },
                { "role": "user", "content": "I'm [email], where is my order?" },
                { "role": "assistant", "content": "It ships tomorrow." },
            ] })
        );
        assert_eq!(fine_tuning_example(None, &[unanswered, failed]), None);
    }

    /// Spoken messages carry their place in the call and language; typed ones carry nulls; both
    /// have exactly the fields the schema lists.
    #[test]
    fn message_records_carry_utterance_times_and_language() {
        let mut spoken = message(MessageRole::User, "What time do you open?", None, None);
        spoken.utterance = Some(crate::chat::conversations::Utterance {
            start_ms: 4_120,
            end_ms: 6_480,
            language: Some("en".to_owned()),
        });
        let record = message_record(&spoken);
        assert_eq!(
            (&record["speech_start_ms"], &record["speech_end_ms"], &record["language"]),
            (&json!(4_120), &json!(6_480), &json!("en"))
        );
        let typed = message_record(&message(MessageRole::User, "Hello", None, None));
        assert_eq!(
            (&typed["speech_start_ms"], &typed["speech_end_ms"], &typed["language"]),
            (&Value::Null, &Value::Null, &Value::Null)
        );
        let definition = &schema()["$defs"]["message"];
        let mut required: Vec<&str> =
            definition["required"].as_array().unwrap().iter().map(|name| name.as_str().unwrap()).collect();
        required.sort_unstable();
        for record in [record, typed] {
            let mut fields: Vec<&str> = record.as_object().unwrap().keys().map(String::as_str).collect();
            fields.sort_unstable();
            assert_eq!(fields, required);
        }
        assert_eq!(definition["properties"]["speech_start_ms"]["anyOf"][0]["type"], "integer");
    }

    #[test]
    fn statuses_and_formats_round_trip() {
        for status in ["queued", "running", "ready", "failed", "expired"] {
            assert_eq!(ExportStatus::parse(status).unwrap().as_str(), status);
        }
        for format in ["archive", "fine_tuning"] {
            assert_eq!(ExportFormat::parse(format).unwrap().as_str(), format);
        }
        assert_eq!(schema()["$defs"]["manifest"]["properties"]["format_version"]["const"], FORMAT_VERSION);
    }
}
