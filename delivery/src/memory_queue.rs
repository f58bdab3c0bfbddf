//! Send jobs through process memory instead of RabbitMQ: [`MemoryQueue`] publishes and keeps
//! the dead letters, [`MemoryConsumer`] hands each job to the worker and does what it says
//! ([`Settle`]): drops it, keeps it among the dead letters, or puts it back (redelivered) when
//! the worker stopped before finishing. Nothing survives the process; one process holds both
//! ends. The same seam as RabbitMQ's ([`crate::source`]).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use futures_util::future::BoxFuture;
use otp_shared::backend::Unavailable;
use time::OffsetDateTime;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    outcome::Settle,
    source::{DeadLetter, DeadLetters, JobSource},
    worker::{Incoming, Worker},
};

/// One queued message: the job's bytes and its headers (request id, resend, trace context).
#[derive(Debug, Clone)]
pub struct Message {
    pub body: Vec<u8>,
    pub headers: HashMap<String, String>,
    pub redelivered: bool,
}

/// The publishing end.
#[derive(Clone)]
pub struct MemoryQueue {
    tx: mpsc::UnboundedSender<Message>,
    dead: Arc<Mutex<Vec<DeadLetter>>>,
}

/// The consuming end.
pub struct MemoryConsumer {
    concurrency: usize,
    rx: mpsc::UnboundedReceiver<Message>,
    requeue: mpsc::UnboundedSender<Message>,
    dead: Arc<Mutex<Vec<DeadLetter>>>,
}

/// A queue and its consumer, working on up to `concurrency` jobs at once.
pub fn memory_queue(concurrency: usize) -> (MemoryQueue, MemoryConsumer) {
    let (tx, rx) = mpsc::unbounded_channel();
    let dead = Arc::default();
    let queue = MemoryQueue {
        tx: tx.clone(),
        dead: Arc::clone(&dead),
    };
    let consumer = MemoryConsumer {
        concurrency: concurrency.max(1),
        rx,
        requeue: tx,
        dead,
    };
    (queue, consumer)
}

impl MemoryQueue {
    /// Queues a message; false once the consumer is gone.
    pub fn publish(&self, message: Message) -> bool {
        self.tx.send(message).is_ok()
    }
}

impl DeadLetters for MemoryQueue {
    fn list(&self, limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>, Unavailable>> {
        Box::pin(async move {
            let dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
            Ok(dead.iter().take(limit).cloned().collect())
        })
    }
}

impl JobSource for MemoryConsumer {
    /// Nothing: the worker's tasks hold what they need.
    type Held = ();

    fn consume(
        mut self,
        worker: Arc<Worker>,
        stop: CancellationToken,
        abort: CancellationToken,
        tracker: TaskTracker,
    ) -> BoxFuture<'static, Option<()>> {
        Box::pin(async move {
            let slots = Arc::new(Semaphore::new(self.concurrency));
            loop {
                let message = tokio::select! {
                    _ = stop.cancelled() => return None,
                    message = self.rx.recv() => match message {
                        Some(message) => message,
                        None => return None,
                    },
                };
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    return None;
                };
                let (worker, abort) = (Arc::clone(&worker), abort.clone());
                let (requeue, dead) = (self.requeue.clone(), Arc::clone(&self.dead));
                tracker.spawn(async move {
                    let _slot = slot;
                    let header = |name: &str| message.headers.get(name).cloned();
                    let incoming = Incoming {
                        body: &message.body,
                        redelivered: message.redelivered,
                        header: &header,
                    };
                    match worker.handle(incoming, abort).await {
                        Settle::Ack => {}
                        Settle::DeadLetter { reason, attempts } => {
                            tracing::warn!(%reason, "job dead-lettered (kept in memory)");
                            let now = OffsetDateTime::now_utc();
                            let letter =
                                DeadLetter::new(&message.body, reason, Some(now), Some(attempts));
                            dead.lock().unwrap_or_else(|e| e.into_inner()).push(letter);
                        }
                        Settle::Leave => {
                            let _ = requeue.send(Message {
                                redelivered: true,
                                ..message
                            });
                        }
                    }
                });
            }
        })
    }

    fn release((): ()) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}
