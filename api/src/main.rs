use std::process::ExitCode;

use otp_api::{cli, config::Config, startup::Application};
use otp_shared::telemetry;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // A missing .env is normal; values in the real environment win over it.
    let _ = dotenvy::dotenv();
    if let Some(tool) = cli::requested() {
        return otp_shared::config::tool_runtime().block_on(async {
            // Operator tools log their events (block, unblock) as JSON lines.
            let _telemetry = telemetry::init("otp-api", otp_shared::config::LogFormat::Json);
            cli::run(tool).await
        });
    }
    // The one-process mode needs no settings: it fills in development defaults. The settings
    // pick the runtime (WORKER_THREADS), so they are read before it starts.
    let args = otp_api::embedded::with_defaults(std::env::args_os().collect());
    let config: Config = otp_shared::settings::parse(args);
    config.process.clone().block_on(async move {
        // Listen for signals before anything else, so none is missed during start-up.
        let shutdown = otp_shared::shutdown::signal();
        let telemetry = telemetry::init("otp-api", config.process.log_format);
        let result = match Application::build(config).await {
            Ok(app) => app.run_until(shutdown).await,
            Err(e) => Err(e),
        };
        telemetry.finish(result).await
    })
}
