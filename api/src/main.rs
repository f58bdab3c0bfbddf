use clap::Parser;
use otp_api::{config::Config, startup::Application};
use otp_shared::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // A missing .env is normal; values in the real environment win over it.
    let _ = dotenvy::dotenv();
    // Listen for signals before anything else, so none is missed during start-up.
    let shutdown = otp_shared::shutdown::signal();
    let config = Config::parse();
    let _telemetry = telemetry::init("otp-api", config.log_format);
    let app = Application::build(config).await?;
    app.run_until(shutdown).await
}
