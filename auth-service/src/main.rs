//! `auth-service` serves the `/auth` API; `auth-service migrate` applies migrations and exits.

use std::process::ExitCode;

use auth_service::{Application, AuthConfig};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match shared::config::load_dotenv().and_then(|()| AuthConfig::from_env()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    shared::telemetry::init(config.debug);
    let outcome = match std::env::args().nth(1).as_deref() {
        Some("migrate") => shared::startup::migrate_only(&config.database).await,
        Some("health") => shared::startup::probe(config.server.port).await,
        None => {
            async {
                let app = Application::build(config).await?;
                app.run_until_stopped().await?;
                Ok(())
            }
            .await
        }
        Some(other) => Err(anyhow::anyhow!(
            "unknown command {other:?}; expected none, `migrate` or `health`"
        )),
    };
    shared::startup::exit_code(outcome)
}
