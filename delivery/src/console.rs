//! An SMS "provider" that prints each message to standard output: the destination masked and
//! the text whole, code included. It exists for trying the service by hand on one machine
//! (the in-memory mode), where reading the code off the console is the point; it is never a
//! production provider.

use std::io::Write;

use futures_util::future::BoxFuture;
use otp_shared::phone::mask_e164;

use crate::{outcome::Attempt, sender::SmsSender};

pub struct ConsoleSink;

impl SmsSender for ConsoleSink {
    fn name(&self) -> &'static str {
        "console"
    }

    fn send<'a>(&'a self, destination: &'a str, text: &'a str) -> BoxFuture<'a, Attempt> {
        let id = otp_shared::ids::random_uuid().to_string();
        let line = format!(
            "[console SMS {id}] to {}: {}\n",
            mask_e164(destination),
            text.replace('\n', " / ")
        );
        let mut out = std::io::stdout().lock();
        let written = out.write_all(line.as_bytes()).and_then(|()| out.flush());
        Box::pin(async move {
            match written {
                Ok(()) => Attempt::Sent {
                    provider_id: Some(id),
                },
                Err(e) => Attempt::Retry {
                    reason: format!("console unwritable: {e}"),
                    after: None,
                },
            }
        })
    }
}
