//! `chat-service` serves the `/chat` API and persists WebSocket sends;
//! `chat-service migrate` applies migrations and exits; `chat-service upload-origin` prints the
//! origin browsers upload to and download from (nothing when it is the page's own), for the
//! browser app's `Content-Security-Policy`.

use std::process::ExitCode;

use chat_service::{Application, ChatConfig};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match shared::config::load_dotenv().and_then(|()| ChatConfig::from_env()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // Traces only from the server itself, not from its one-shot commands.
    let serving = std::env::args().nth(1).is_none();
    let telemetry = match shared::telemetry::init(config.debug, "chatsphere-chat-service", serving)
    {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match std::env::args().nth(1).as_deref() {
        Some("migrate") => shared::startup::migrate_only(&config.database).await,
        Some("health") => shared::startup::probe(config.server.port).await,
        Some("upload-origin") => match config.storage.browser_origin() {
            Ok(origin) => {
                println!("{}", origin.unwrap_or_default());
                Ok(())
            }
            Err(e) => Err(anyhow::anyhow!("the object store's address: {e}")),
        },
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
            "unknown command {other:?}; expected none, `migrate`, `health` or `upload-origin`"
        )),
    };
    telemetry.shutdown().await;
    shared::startup::exit_code(outcome)
}
