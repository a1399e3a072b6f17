//! Parley's model-facing traits and engines: speech-to-text, language models (local and
//! remote, streaming), embeddings, sentiment (VADER), text-to-speech and voice activity detection.
//!
//! Owns: installing model packages into the model cache ([`packages`]), loading model files
//! from it and running inference ([`embed`], [`vad`], [`tts`]), resampling audio ([`audio`]). Heavy
//! engines sit behind cargo features (`candle`, `onnx`)
//! that the `parley` binary enables by default.
//!
//! Must not touch: HTTP server code, storage, tenants — a model knows nothing of who asks.

pub mod audio;
pub mod embed;
pub mod error;
pub mod llm;
pub mod net;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod packages;
pub mod sentiment;
pub mod stt;
pub mod tts;
pub mod vad;
pub mod whisper_convert;

#[cfg(feature = "candle")]
pub use embed::BertEmbedder;
pub use embed::{dot, Embedder};
pub use error::ModelError;
#[cfg(feature = "candle")]
pub use llm::local::{LocalLanguageModel, LocalModelOptions};
pub use llm::{anthropic::Anthropic, openai::OpenAiCompatible, openai::RemoteSettings};
pub use packages::{
    install, installed_dir, Installed, ModelPackage, Wheel, CHAT_MODEL_PACKAGE, EMBEDDING_PACKAGE, PACKAGES,
    WHISPER_BASE_PACKAGE, WHISPER_GGML_FILE, WHISPER_MODELS, WHISPER_TINY_EN_PACKAGE,
};
pub use packages::{ONNX_RUNTIME_PACKAGE, PIPER_VOICE_PACKAGE, VAD_PACKAGE};
pub use sentiment::{Scores, Vader, SENTIMENT_PACKAGE};
pub use stt::{installed_whisper, Segment, SpeechToText, TranscribeOptions, Transcript, STT_SAMPLE_RATE};
#[cfg(feature = "whisper")]
pub use stt::{WhisperOptions, WhisperStt};
