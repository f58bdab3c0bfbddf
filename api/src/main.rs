use std::process::ExitCode;

use clap::Parser;
use otp_api::{config::Config, startup::Application};
use otp_shared::telemetry;

/// `otp-api healthcheck`: asks this host's API for /readyz (container images carry no curl).
#[derive(Parser)]
#[command(
    name = "otp-api healthcheck",
    about = "Exit 0 when this host's otp-api is ready."
)]
struct Healthcheck {
    /// Port of the API.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    port: u16,
}

#[tokio::main]
async fn main() -> ExitCode {
    // A missing .env is normal; values in the real environment win over it.
    let _ = dotenvy::dotenv();
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "healthcheck")
    {
        let args = Healthcheck::parse_from(std::env::args_os().skip(1));
        return tokio::task::spawn_blocking(move || otp_shared::probe::healthcheck(args.port))
            .await
            .unwrap_or(ExitCode::FAILURE);
    }
    // Listen for signals before anything else, so none is missed during start-up.
    let shutdown = otp_shared::shutdown::signal();
    let config = Config::parse();
    let telemetry = telemetry::init("otp-api", config.log_format);
    let result = match Application::build(config).await {
        Ok(app) => app.run_until(shutdown).await,
        Err(e) => Err(e),
    };
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
