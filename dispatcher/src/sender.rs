//! The provider seam: every SMS provider sends through [`SmsSender`] and classifies its answers
//! into the same [`Attempt`] table (2xx sent; 429, 5xx and no answer retried; a 4xx about the
//! number failed for good; a 4xx about the account unusable, so another provider may try).

use futures_util::future::BoxFuture;

use crate::outcome::Attempt;

pub trait SmsSender: Send + Sync {
    /// The provider's name in settings (`SMS_PROVIDERS`), logs, metrics and the ledger.
    fn name(&self) -> &'static str;

    /// One provider call. `text` holds the code: it is never logged.
    fn send<'a>(&'a self, destination: &'a str, text: &'a str) -> BoxFuture<'a, Attempt>;
}

impl SmsSender for crate::plivo::PlivoClient {
    fn name(&self) -> &'static str {
        "plivo"
    }

    fn send<'a>(&'a self, destination: &'a str, text: &'a str) -> BoxFuture<'a, Attempt> {
        Box::pin(crate::plivo::PlivoClient::send(self, destination, text))
    }
}
