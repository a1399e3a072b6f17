//! Parley's model-facing traits and engines: speech-to-text, language models (local and
//! remote, streaming), embeddings, text-to-speech and voice activity detection.
//!
//! Owns: loading model files from the model cache and running inference. Heavy engines sit
//! behind cargo features that the `parley` binary enables by default.
//!
//! Must not touch: HTTP server code, storage, tenants — a model knows nothing of who asks.
//!
//! The engines arrive with the chat and voice work; this crate currently holds only the
//! layout so that dependencies already point the right way (`knowledge → models → config`).
