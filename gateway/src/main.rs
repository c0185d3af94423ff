//! `gateway` holds WebSocket connections; `gateway health` probes a running one.

use std::process::ExitCode;

use gateway::{Application, GatewayConfig};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match shared::config::load_dotenv().and_then(|()| GatewayConfig::from_env()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // Traces only from the server itself, not from its one-shot commands.
    let serving = std::env::args().nth(1).is_none();
    let telemetry = match shared::telemetry::init(config.debug, "chatsphere-gateway", serving) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match std::env::args().nth(1).as_deref() {
        Some("health") => shared::startup::probe(config.server.port).await,
        None => {
            async {
                Application::build(config)
                    .await?
                    .run_until_stopped()
                    .await?;
                Ok(())
            }
            .await
        }
        Some(other) => Err(anyhow::anyhow!(
            "unknown command {other:?}; expected none or `health`"
        )),
    };
    telemetry.shutdown().await;
    shared::startup::exit_code(outcome)
}
