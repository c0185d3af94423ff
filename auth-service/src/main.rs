//! `auth-service` serves the `/auth` API; `auth-service migrate` applies migrations and exits;
//! `auth-service admin grant|revoke USERNAME` gives or takes the admin role.

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
    // Traces only from the server itself, not from its one-shot commands.
    let serving = std::env::args().nth(1).is_none();
    let telemetry = match shared::telemetry::init(config.debug, "chatsphere-auth-service", serving)
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
        Some("admin") => admin(&config, std::env::args().skip(2).collect()).await,
        None => {
            async {
                let app = Application::build(config).await?;
                app.run_until_stopped().await?;
                Ok(())
            }
            .await
        }
        Some(other) => Err(anyhow::anyhow!(
            "unknown command {other:?}; expected none, `migrate`, `health` or `admin`"
        )),
    };
    telemetry.shutdown().await;
    shared::startup::exit_code(outcome)
}

/// `admin grant USERNAME` / `admin revoke USERNAME`.
async fn admin(config: &AuthConfig, args: Vec<String>) -> anyhow::Result<()> {
    let (on, username) = match args.as_slice() {
        [verb, username] if verb == "grant" => (true, username),
        [verb, username] if verb == "revoke" => (false, username),
        _ => anyhow::bail!("usage: auth-service admin grant|revoke USERNAME"),
    };
    let db = shared::startup::migrated_pool(&config.database).await?;
    if !shared::admin::set_role(&db, username, on).await? {
        anyhow::bail!("no user named {username:?}");
    }
    println!(
        "{username}: admin role {}",
        if on { "granted" } else { "revoked" }
    );
    Ok(())
}
