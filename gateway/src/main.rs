//! `gateway` holds WebSocket connections.

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
    shared::telemetry::init(config.debug);
    let outcome = async {
        Application::build(config)
            .await?
            .run_until_stopped()
            .await?;
        Ok(())
    }
    .await;
    shared::startup::exit_code(outcome)
}
