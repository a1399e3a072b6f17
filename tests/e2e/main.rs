//! End-to-end tests: the real router over real sockets (SQLite and PostgreSQL), and the real
//! `parley` binary as a user runs it.

mod common;

mod admin_api;
mod analytics;
mod backup;
mod bad_input;
mod binary;
mod browser;
mod chat;
mod chat_remote;
mod isolation;
mod keyring;
mod knowledge;
mod knowledge_binary;
mod lifecycle;
mod matrix;
mod retention;
mod samples;
mod storage;
mod tidy;
mod voice;
mod webhooks;
