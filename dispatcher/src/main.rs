use std::process::ExitCode;

use otp_dispatcher::{cli, config::Config, startup::Application};
use otp_shared::telemetry;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // A missing .env is normal; values in the real environment win over it.
    let _ = dotenvy::dotenv();
    if let Some(tool) = cli::requested() {
        return otp_shared::config::tool_runtime().block_on(cli::run(tool));
    }
    // The settings pick the runtime (WORKER_THREADS), so they are read before it starts.
    let config: Config = otp_shared::settings::parse(std::env::args_os().collect());
    config.process.clone().block_on(async move {
        // Listen for signals before anything else, so none is missed during start-up.
        let shutdown = otp_shared::shutdown::signal();
        let telemetry = telemetry::init("otp-dispatcher", config.process.log_format);
        let result = match Application::build(config).await {
            Ok(app) => app.run_until(shutdown).await,
            Err(e) => Err(e),
        };
        telemetry.finish(result).await
    })
}
