//! One call's pipeline task.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parley_models::tts::TextToSpeech;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::{CallAudioIn, CallEvent, EndReason, Slot, VoiceEngines};
use crate::chat::session::Session;
use crate::Runtime;

/// Everything a call's task owns.
pub(super) struct CallContext {
    pub runtime: Runtime,
    pub call_id: Uuid,
    pub session: Session,
    pub engines: Arc<VoiceEngines>,
    pub voice: Arc<dyn TextToSpeech>,
    pub sample_rate: u32,
    pub audio_in: CallAudioIn,
    pub events: mpsc::Sender<CallEvent>,
    pub hung_up: watch::Receiver<bool>,
    pub slot: Slot,
}

/// Runs the call until it ends, then reports the end.
pub(super) async fn run(mut context: CallContext) {
    let started = Instant::now();
    let settings = context.runtime.settings().voice.clone();
    let deadline = tokio::time::Instant::from_std(started + Duration::from_secs(settings.max_call_seconds));
    let reason = tokio::select! {
        _ = context.hung_up.wait_for(|hung_up| *hung_up) => EndReason::HungUp,
        () = context.events.closed() => EndReason::HungUp,
        () = tokio::time::sleep_until(deadline) => EndReason::Timeout,
    };
    finish(context, started, reason).await;
}

async fn finish(context: CallContext, started: Instant, reason: EndReason) {
    context.audio_in.close();
    let _ = context.events.try_send(CallEvent::Ended(reason.clone()));
    super::call_ended(&context.runtime, &context.session, context.call_id, started.elapsed(), &reason).await;
    drop(context.slot);
}
