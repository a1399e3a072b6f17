//! Voice calls over the network: the transports that carry a call's audio between a caller and
//! the call pipeline in `parley_runtime::calls`.
//!
//! - `whip`: WebRTC, signalled the WHIP way (an SDP offer `POST`ed, the answer returned, a
//!   `DELETE` hanging up), Opus over DTLS-SRTP, captions on a data channel.
//! - `twilio`: phone calls through Twilio Media Streams (a signed WebSocket carrying base64
//!   μ-law at 8 kHz).
//! - `mulaw`: the G.711 μ-law codec.
//!
//! Owns: SDP, ICE, codecs, the wire formats of both transports and their HTTP routes.
//! Must not touch: audio beyond one packet or frame in flight — a transport keeps no audio;
//! it decodes into the call and encodes what the call sends, nothing more.

pub mod mulaw;
pub mod twilio;
pub mod whip;

use parley_runtime::calls::{EndReason, Speaker};
use serde_json::json;

/// A caption as the `captions` data channel carries it.
pub fn captions_message(speaker: Speaker, text: &str, is_final: bool) -> String {
    json!({ "type": "caption", "speaker": speaker.as_str(), "text": text, "final": is_final }).to_string()
}

/// The last message on the `captions` data channel.
pub fn ended_message(reason: &EndReason) -> String {
    json!({ "type": "ended", "reason": reason.as_str() }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_have_the_documented_shape() {
        let caption: serde_json::Value =
            serde_json::from_str(&captions_message(Speaker::Caller, "hello \"there\"", false)).unwrap();
        assert_eq!(
            caption,
            json!({ "type": "caption", "speaker": "caller", "text": "hello \"there\"", "final": false })
        );
        let ended: serde_json::Value =
            serde_json::from_str(&ended_message(&EndReason::Error("boom".to_owned()))).unwrap();
        assert_eq!(ended, json!({ "type": "ended", "reason": "error" }));
        assert!(ended_message(&EndReason::Timeout).contains("\"timeout\""));
        assert!(captions_message(Speaker::Agent, "hi", true).contains("\"agent\""));
    }
}
