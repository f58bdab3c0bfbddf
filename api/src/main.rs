use std::process::ExitCode;

use otp_api::{cli, config::Config, startup::Application};
use otp_shared::telemetry;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // A missing .env is normal; values in the real environment win over it.
    let _ = dotenvy::dotenv();
    if let Some(tool) = cli::requested() {
        // Operator tools log their events (block, unblock) as JSON lines.
        let _telemetry = telemetry::init("otp-api", otp_shared::config::LogFormat::Json);
        return cli::run(tool).await;
    }
    // Listen for signals before anything else, so none is missed during start-up.
    let shutdown = otp_shared::shutdown::signal();
    // The one-process mode needs no settings: it fills in development defaults.
    let args = otp_api::embedded::with_defaults(std::env::args_os().collect());
    let config: Config = otp_shared::settings::parse(args);
    let telemetry = telemetry::init("otp-api", config.process.log_format);
    let result = match Application::build(config).await {
        Ok(app) => app.run_until(shutdown).await,
        Err(e) => Err(e),
    };
    telemetry.finish(result).await
}
