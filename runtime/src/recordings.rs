//! Recorded call audio, for agents that opt in (`retention.record_audio`; off by default).
//!
//! Owns: the `Recorder` a call's pipeline feeds (the caller's audio as it reaches the VAD and
//! the agent's audio as played, both at 16 kHz) — one stereo track, left the caller and right
//! the agent, aligned on the call's clock, sealed in segments of [`SEGMENT_SECONDS`] with
//! AES-256-GCM (purpose [`PURPOSE`], the associated data binding tenant, conversation and
//! segment number) and stored as it goes, so a long call holds at most a segment or two in
//! memory; reading a recording back as one WAV file (audited); and sealing segments again
//! after a key rotation.
//!
//! Must not touch: HTTP, or logs of anything recorded. Audio is never written anywhere else: no
//! temporary files, nothing in the clear. A storage error while recording is logged (without
//! content) and the call goes on.

use std::collections::VecDeque;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::audit::{self, AuditRecord};
use crate::auth::{Permission, Principal};
use crate::error::{Error, Result};
use crate::storage::recordings::{self, SegmentLayout, StoredSegment};
use crate::{storage, Runtime};

/// The purpose recorded audio is sealed for.
pub const PURPOSE: &str = "call_recording";
/// The recording's sample rate.
pub const SAMPLE_RATE: u32 = 16_000;
/// Left the caller, right the agent.
pub const CHANNELS: u16 = 2;
/// Call time per sealed segment.
pub const SEGMENT_SECONDS: u32 = 10;
const SEGMENT_FRAMES: usize = (SAMPLE_RATE * SEGMENT_SECONDS) as usize;
/// The least one side may run ahead of the other before the other is taken as silent, in
/// samples (see `Recorder::new`).
const MIN_LEAD: usize = SAMPLE_RATE as usize;
/// Segments waiting to be stored; a recorder whose storage falls further behind drops
/// segments (and logs it) rather than hold more audio.
const WRITE_QUEUE: usize = 3;
/// Segments read per query while sealing again after a key rotation.
const READ_PAGE: i64 = 8;

/// The associated data of a segment: it opens only as this segment of this conversation.
#[must_use]
pub fn context(tenant_id: Uuid, conversation_id: Uuid, segment: u32) -> String {
    format!("{tenant_id}/{conversation_id}/{segment}")
}

/// Records one call: fed both sides' 16 kHz audio while the call runs, then `finish`ed.
pub(crate) struct Recorder {
    call_id: Uuid,
    track: Track,
    writes: mpsc::Sender<Pending>,
    writer: JoinHandle<()>,
}

impl Recorder {
    /// A recorder for the call `call_id` in `conversation_id`; segments are stored by a task
    /// of their own.
    ///
    /// Both sides arrive on their own clocks (the transport's packets, the pipeline's 20 ms
    /// ticks) and either can stall for a while and catch up. A side more than `max_lead_ms`
    /// behind the other (at least a second) is taken as silent — it stopped sending, or its
    /// audio was dropped — and padded, so the other side never piles up; `voice.input_buffer_ms`
    /// is the right bound, as caller audio later than that is dropped before it is heard.
    pub(crate) fn new(
        runtime: Runtime,
        call_id: Uuid,
        tenant_id: Uuid,
        conversation_id: Uuid,
        max_lead_ms: u64,
    ) -> Self {
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        let writer = tokio::spawn(store_segments(runtime, call_id, tenant_id, conversation_id, queue));
        let max_lead = usize::try_from(max_lead_ms.saturating_mul(u64::from(SAMPLE_RATE)) / 1000).unwrap_or(usize::MAX);
        Self { call_id, track: Track::new(max_lead), writes, writer }
    }

    /// The caller's audio, 16 kHz mono in [-1, 1], as the VAD gets it.
    pub(crate) fn caller(&mut self, samples: &[f32]) {
        let segments = self.track.caller(samples);
        self.send(segments);
    }

    /// The agent's audio as played, 16 kHz mono in [-1, 1] (silence included).
    pub(crate) fn agent(&mut self, samples: &[f32]) {
        let segments = self.track.agent(samples);
        self.send(segments);
    }

    fn send(&self, segments: Vec<Pending>) {
        for segment in segments {
            if self.writes.try_send(segment).is_err() {
                tracing::error!(
                    call_id = %self.call_id,
                    "call recording: storage is behind, a segment of the recording was dropped"
                );
            }
        }
    }

    /// The call is over: what is held (the shorter side padded with silence) is sealed and
    /// stored, and this returns once every segment is stored.
    pub(crate) async fn finish(mut self) {
        let segments = self.track.finish();
        self.send(segments);
        let Recorder { writes, writer, call_id, .. } = self;
        drop(writes);
        if let Err(error) = writer.await {
            tracing::error!(%call_id, error = %error, "call recording: the storing task failed");
        }
    }
}

/// A segment on its way to storage.
#[derive(Debug, PartialEq)]
struct Pending {
    number: u32,
    start_frame: u64,
    /// Interleaved (caller, agent).
    samples: Vec<i16>,
}

/// Both sides of a call joined into one stereo track, cut into segments.
struct Track {
    /// How far one side may run ahead of the other, in samples.
    max_lead: usize,
    caller: VecDeque<i16>,
    agent: VecDeque<i16>,
    /// The current segment, interleaved (caller, agent).
    segment: Vec<i16>,
    number: u32,
    /// Frames in the segments already cut.
    frames_before: u64,
}

impl Track {
    fn new(max_lead: usize) -> Self {
        Self {
            max_lead: max_lead.max(MIN_LEAD),
            caller: VecDeque::new(),
            agent: VecDeque::new(),
            segment: Vec::new(),
            number: 0,
            frames_before: 0,
        }
    }

    fn caller(&mut self, samples: &[f32]) -> Vec<Pending> {
        self.caller.extend(samples.iter().copied().map(to_i16));
        self.interleave()
    }

    fn agent(&mut self, samples: &[f32]) -> Vec<Pending> {
        self.agent.extend(samples.iter().copied().map(to_i16));
        self.interleave()
    }

    /// Pairs up what both sides have; returns the segments completed.
    fn interleave(&mut self) -> Vec<Pending> {
        // A side that stopped arriving is silent, so the other one never piles up.
        let (caller, agent) = (self.caller.len(), self.agent.len());
        let lead = self.max_lead;
        if caller > agent + lead {
            self.agent.extend(std::iter::repeat_n(0, caller - agent - lead));
        } else if agent > caller + lead {
            self.caller.extend(std::iter::repeat_n(0, agent - caller - lead));
        }
        let mut completed = Vec::new();
        while !self.caller.is_empty() && !self.agent.is_empty() {
            let (Some(caller), Some(agent)) = (self.caller.pop_front(), self.agent.pop_front()) else { break };
            if self.segment.capacity() == 0 {
                self.segment.reserve_exact(SEGMENT_FRAMES * 2);
            }
            self.segment.push(caller);
            self.segment.push(agent);
            if self.segment.len() >= SEGMENT_FRAMES * 2 {
                completed.extend(self.cut());
            }
        }
        completed
    }

    /// The current segment, ready to store.
    fn cut(&mut self) -> Option<Pending> {
        if self.segment.is_empty() {
            return None;
        }
        let samples = std::mem::take(&mut self.segment);
        let pending = Pending { number: self.number, start_frame: self.frames_before, samples };
        self.number += 1;
        self.frames_before += (pending.samples.len() / 2) as u64;
        Some(pending)
    }

    /// Everything held, the shorter side padded with silence.
    fn finish(&mut self) -> Vec<Pending> {
        let (caller, agent) = (self.caller.len(), self.agent.len());
        self.caller.extend(std::iter::repeat_n(0, agent.saturating_sub(caller)));
        self.agent.extend(std::iter::repeat_n(0, caller.saturating_sub(agent)));
        let mut segments = self.interleave();
        segments.extend(self.cut());
        segments
    }
}

fn to_i16(sample: f32) -> i16 {
    (sample.clamp(-1.0, 1.0) * 32767.0).round() as i16
}

/// Seals and stores the segments a recorder sends, in order.
async fn store_segments(
    runtime: Runtime,
    call_id: Uuid,
    tenant_id: Uuid,
    conversation_id: Uuid,
    mut queue: mpsc::Receiver<Pending>,
) {
    while let Some(pending) = queue.recv().await {
        let stored =
            store_segment(&runtime, tenant_id, conversation_id, pending.number, pending.start_frame, &pending.samples)
                .await;
        if let Err(error) = stored {
            tracing::error!(
                %call_id,
                segment = pending.number,
                code = error.code(),
                error = %error,
                "call recording: a segment could not be stored"
            );
        }
    }
}

/// Seals and stores segment `number` of a conversation's recording: `samples` interleaved
/// 16 kHz stereo (caller, agent), starting `start_frame` frames into the call.
pub async fn store_segment(
    runtime: &Runtime,
    tenant_id: Uuid,
    conversation_id: Uuid,
    number: u32,
    start_frame: u64,
    samples: &[i16],
) -> Result<()> {
    let mut bytes = Vec::with_capacity(samples.len() * 2);
    for sample in samples {
        bytes.extend_from_slice(&sample.to_le_bytes());
    }
    let secrets = runtime.secrets();
    let sealed_audio = secrets.seal_bytes(PURPOSE, &context(tenant_id, conversation_id, number), &bytes);
    drop(bytes);
    let segment = StoredSegment {
        tenant_id,
        conversation_id,
        segment: number,
        start_ms: start_frame * 1000 / u64::from(SAMPLE_RATE),
        sample_rate: SAMPLE_RATE,
        channels: CHANNELS,
        frames: (samples.len() / usize::from(CHANNELS)) as u64,
        key_id: secrets.key_id().to_owned(),
        sealed_audio,
        created_at: storage::now_millis(),
    };
    let mut connection = runtime.database().pool().acquire().await?;
    recordings::insert(&mut connection, &segment).await
}

/// A conversation's recording being read as one WAV file (16-bit PCM, 16 kHz, left the
/// caller, right the agent), a segment at a time: memory holds one segment (about 640 kB)
/// whatever the call's length. A segment that is missing (it could not be stored) is silence,
/// so both sides stay aligned.
#[derive(Debug)]
pub struct RecordingReader {
    runtime: Runtime,
    tenant_id: Uuid,
    conversation_id: Uuid,
    header: Option<Vec<u8>>,
    layout: VecDeque<SegmentLayout>,
    /// Frames produced so far (gaps included).
    frames: u64,
    total_frames: u64,
}

impl RecordingReader {
    /// The size of the whole WAV file, in bytes.
    #[must_use]
    pub fn byte_len(&self) -> u64 {
        WAV_HEADER_LEN as u64 + self.total_frames * FRAME_BYTES
    }

    /// The next piece of the file (the header first, then one segment at a time); `None` at
    /// the end.
    ///
    /// # Errors
    ///
    /// A segment deleted meanwhile (retention, erasure) or one that does not open.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        if let Some(header) = self.header.take() {
            return Ok(Some(header));
        }
        let Some(next) = self.layout.pop_front() else {
            return Ok(None);
        };
        let segment = {
            let mut connection = self.runtime.database().pool().acquire().await?;
            let after = next.segment.checked_sub(1);
            recordings::segments(&mut connection, self.tenant_id, self.conversation_id, after, 1).await?
        };
        let Some(segment) = segment.into_iter().find(|segment| segment.segment == next.segment) else {
            return Err(Error::NotFound { resource: "recording" });
        };
        let context = context(self.tenant_id, self.conversation_id, segment.segment);
        let audio = self.runtime.secrets().open_bytes(PURPOSE, &context, &segment.sealed_audio)?;
        if audio.len() as u64 != next.frames * FRAME_BYTES {
            return Err(Error::Corrupt(format!("call_recordings: segment {} has the wrong length", next.segment)));
        }
        let start_frame = next.start_ms * u64::from(SAMPLE_RATE) / 1000;
        let gap = start_frame.saturating_sub(self.frames);
        let mut chunk = vec![0u8; usize::try_from(gap * FRAME_BYTES).unwrap_or(0)];
        chunk.extend_from_slice(&audio);
        self.frames += gap + next.frames;
        Ok(Some(chunk))
    }
}

/// Bytes per stereo 16-bit frame.
const FRAME_BYTES: u64 = CHANNELS as u64 * 2;
const WAV_HEADER_LEN: usize = 44;

/// How many frames a recording's file holds: up to the end of its last segment.
pub(crate) fn total_frames(layout: &[SegmentLayout]) -> u64 {
    layout
        .iter()
        .map(|segment| segment.start_ms * u64::from(SAMPLE_RATE) / 1000 + segment.frames)
        .max()
        .unwrap_or_default()
}

/// Opens a conversation's recording for reading; the read is audited.
///
/// # Errors
///
/// `NotFound` when the conversation (of the caller's tenant) has no recording.
pub async fn open(runtime: &Runtime, principal: &Principal, conversation_id: Uuid) -> Result<RecordingReader> {
    principal.require(Permission::ReadConversations)?;
    let tenant_id = principal.tenant_id;
    let layout = {
        let mut connection = runtime.database().pool().acquire().await?;
        recordings::layout(&mut connection, tenant_id, conversation_id).await?
    };
    if layout.is_empty() {
        return Err(Error::NotFound { resource: "recording" });
    }
    if let Some(other) =
        layout.iter().find(|segment| segment.sample_rate != SAMPLE_RATE || segment.channels != CHANNELS)
    {
        return Err(Error::Corrupt(format!("call_recordings: segment {} has another format", other.segment)));
    }
    let total_frames = total_frames(&layout);
    let mut transaction = runtime.database().begin().await?;
    let details = serde_json::json!({
        "segments": layout.len(),
        "duration_ms": total_frames * 1000 / u64::from(SAMPLE_RATE),
    });
    let record =
        AuditRecord::by_key(principal, "conversation.recording.read", "conversation", conversation_id.to_string())
            .with_details(details);
    audit::record(&mut transaction, record).await?;
    transaction.commit().await?;
    Ok(RecordingReader {
        runtime: runtime.clone(),
        tenant_id,
        conversation_id,
        header: Some(wav_header(total_frames * FRAME_BYTES, SAMPLE_RATE, CHANNELS)),
        layout: layout.into(),
        frames: 0,
        total_frames,
    })
}

/// A conversation's whole recording as one WAV file in memory (see `open`, which reads it a
/// segment at a time).
///
/// # Errors
///
/// As `open` and `RecordingReader::next_chunk`.
pub async fn wav(runtime: &Runtime, principal: &Principal, conversation_id: Uuid) -> Result<Vec<u8>> {
    let mut reader = open(runtime, principal, conversation_id).await?;
    let mut file = Vec::with_capacity(usize::try_from(reader.byte_len()).unwrap_or(0));
    while let Some(chunk) = reader.next_chunk().await? {
        file.extend_from_slice(&chunk);
    }
    Ok(file)
}

/// The 44-byte header of a RIFF WAVE file of `data_len` bytes of 16-bit little-endian PCM.
#[must_use]
pub fn wav_header(data_len: u64, sample_rate: u32, channels: u16) -> Vec<u8> {
    let data_len = u32::try_from(data_len).unwrap_or(u32::MAX);
    let block_align = channels * 2;
    let mut header = Vec::with_capacity(WAV_HEADER_LEN);
    header.extend_from_slice(b"RIFF");
    header.extend_from_slice(&data_len.saturating_add(36).to_le_bytes());
    header.extend_from_slice(b"WAVEfmt ");
    header.extend_from_slice(&16u32.to_le_bytes());
    header.extend_from_slice(&1u16.to_le_bytes());
    header.extend_from_slice(&channels.to_le_bytes());
    header.extend_from_slice(&sample_rate.to_le_bytes());
    header.extend_from_slice(&(sample_rate * u32::from(block_align)).to_le_bytes());
    header.extend_from_slice(&block_align.to_le_bytes());
    header.extend_from_slice(&16u16.to_le_bytes());
    header.extend_from_slice(b"data");
    header.extend_from_slice(&data_len.to_le_bytes());
    header
}

/// Seals every segment not under the current key again; returns (resealed, unreadable) and
/// adds per-tenant counts.
pub(crate) async fn reseal(
    runtime: &Runtime,
    per_tenant: &mut std::collections::BTreeMap<Uuid, u64>,
) -> Result<(u64, u64)> {
    let secrets = runtime.secrets();
    let (mut resealed, mut unreadable) = (0, 0);
    let mut after = None;
    loop {
        let mut connection = runtime.database().pool().acquire().await?;
        let page = recordings::stale(&mut connection, secrets.key_id(), after, READ_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some((last.conversation_id, last.segment));
        for segment in &page {
            let context = context(segment.tenant_id, segment.conversation_id, segment.segment);
            let audio = match secrets.open_bytes(PURPOSE, &context, &segment.sealed_audio) {
                Ok(audio) => audio,
                Err(error) => {
                    tracing::warn!(tenant_id = %segment.tenant_id, %error, "a recording segment opens under no key");
                    unreadable += 1;
                    continue;
                }
            };
            let again = secrets.seal_bytes(PURPOSE, &context, &audio);
            if recordings::replace(&mut connection, segment, secrets.key_id(), again).await? {
                resealed += 1;
                *per_tenant.entry(segment.tenant_id).or_default() += 1;
            }
        }
    }
    Ok((resealed, unreadable))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(value: i16) -> f32 {
        f32::from(value) / 32767.0
    }

    #[test]
    fn both_sides_are_interleaved_in_step_caller_left() {
        let mut track = Track::new(MIN_LEAD);
        assert!(track.caller(&[level(1), level(2), level(3)]).is_empty());
        assert!(track.agent(&[level(-1), level(-2)]).is_empty());
        assert!(track.agent(&[level(-3), level(-4)]).is_empty());
        let segments = track.finish();
        assert_eq!(segments, vec![Pending { number: 0, start_frame: 0, samples: vec![1, -1, 2, -2, 3, -3, 0, -4] }]);
        assert!(track.finish().is_empty(), "nothing is left");
    }

    #[test]
    fn segments_are_cut_every_ten_seconds_and_numbered_with_their_start() {
        let mut track = Track::new(MIN_LEAD);
        let second = vec![0.25f32; SAMPLE_RATE as usize];
        let mut segments = Vec::new();
        for _ in 0..25 {
            segments.extend(track.agent(&second));
            segments.extend(track.caller(&second));
        }
        assert_eq!(segments.len(), 2);
        segments.extend(track.finish());
        let summary: Vec<(u32, u64, usize)> =
            segments.iter().map(|segment| (segment.number, segment.start_frame, segment.samples.len() / 2)).collect();
        assert_eq!(
            summary,
            [
                (0, 0, SEGMENT_FRAMES),
                (1, SEGMENT_FRAMES as u64, SEGMENT_FRAMES),
                (2, 2 * SEGMENT_FRAMES as u64, SEGMENT_FRAMES / 2)
            ]
        );
        assert!(segments.iter().all(|segment| segment.samples.iter().all(|sample| *sample == to_i16(0.25))));
    }

    #[test]
    fn a_side_that_stops_arriving_is_silence_and_memory_stays_bounded() {
        let mut track = Track::new(MIN_LEAD);
        // The agent's clock runs while the transport sends nothing of the caller for 30 s.
        let frame = vec![0.5f32; 320];
        let mut segments = Vec::new();
        for _ in 0..1_500 {
            segments.extend(track.agent(&frame));
            assert!(track.agent.len() <= MIN_LEAD + 320, "held {}", track.agent.len());
        }
        assert_eq!(segments.len(), 2, "the agent's 30 s went on being recorded");
        assert!(segments[0].samples.chunks(2).all(|pair| pair == [0, to_i16(0.5)]));
        // When the caller comes back, their audio follows the silence in step.
        segments.extend(track.caller(&[level(9); 10]));
        segments.extend(track.finish());
        let frames: usize = segments.iter().map(|segment| segment.samples.len() / 2).sum();
        assert_eq!(frames, 1_500 * 320);
        let last = segments.last().unwrap();
        let tail = &last.samples[last.samples.len() - 2 * MIN_LEAD..];
        assert_eq!(&tail[..20], [9, to_i16(0.5)].repeat(10).as_slice());
    }

    #[test]
    fn samples_are_clamped_into_sixteen_bits() {
        assert_eq!(to_i16(2.0), 32767);
        assert_eq!(to_i16(-2.0), -32767);
        assert_eq!(to_i16(0.0), 0);
    }

    #[test]
    fn a_wav_header_has_the_riff_layout() {
        let file = wav_header(8, SAMPLE_RATE, CHANNELS);
        assert_eq!(file.len(), WAV_HEADER_LEN);
        assert_eq!(&file[..4], b"RIFF");
        assert_eq!(u32::from_le_bytes(file[4..8].try_into().unwrap()), 36 + 8);
        assert_eq!(&file[8..16], b"WAVEfmt ");
        assert_eq!(u16::from_le_bytes([file[22], file[23]]), 2);
        assert_eq!(u32::from_le_bytes(file[24..28].try_into().unwrap()), 16_000);
        assert_eq!(u32::from_le_bytes(file[28..32].try_into().unwrap()), 64_000, "bytes per second");
        assert_eq!(&file[36..40], b"data");
        assert_eq!(u32::from_le_bytes(file[40..44].try_into().unwrap()), 8);
    }

    #[test]
    fn a_segment_opens_only_in_its_own_place() {
        let (tenant, conversation) = (Uuid::now_v7(), Uuid::now_v7());
        assert_ne!(context(tenant, conversation, 0), context(tenant, conversation, 1));
        assert_ne!(context(tenant, conversation, 0), context(Uuid::now_v7(), conversation, 0));
    }

    #[test]
    fn a_side_that_stalls_and_catches_up_within_the_lead_stays_in_step() {
        let mut track = Track::new(3 * SAMPLE_RATE as usize);
        let frame = vec![0.5f32; 320];
        let mut segments = Vec::new();
        // The caller's audio stalls for two seconds, then arrives all at once.
        for _ in 0..100 {
            segments.extend(track.agent(&frame));
        }
        segments.extend(track.caller(&vec![0.25f32; 100 * 320]));
        segments.extend(track.finish());
        assert_eq!(segments.len(), 1);
        let samples = &segments[0].samples;
        assert_eq!(samples.len(), 2 * 100 * 320, "nothing was padded");
        assert!(samples.chunks(2).all(|pair| pair == [to_i16(0.25), to_i16(0.5)]));
    }
}
