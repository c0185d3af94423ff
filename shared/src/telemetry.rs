//! Logging: human-readable lines when `DEBUG=true`, JSON lines otherwise. `RUST_LOG` overrides
//! the default filter.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. A second call (several services in one test process) is a no-op.
pub fn init(debug: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,fred=warn,tower_http=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if debug {
        builder.with_target(false).try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
}
