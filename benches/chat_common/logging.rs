//! The node's log for a benchmark run, on request.

/// Logs the node's events to stderr when `PARLEY_LOG` holds a filter (e.g. `warn`).
pub fn init_logging() {
    if let Ok(filter) = std::env::var("PARLEY_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}
