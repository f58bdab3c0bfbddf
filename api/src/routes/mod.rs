//! HTTP routes. Handlers only translate between HTTP and [`crate::service`].

mod health;
mod otp;
mod strict;

pub use health::HealthApi;
pub use otp::OtpApi;

use poem_openapi::Tags;

#[derive(Tags)]
pub enum ApiTags {
    /// Issue and verify one-time passwords.
    Otp,
    /// Liveness and readiness probes.
    Health,
}
