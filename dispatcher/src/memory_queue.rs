//! Send jobs through process memory instead of RabbitMQ: [`MemoryQueue`] publishes,
//! [`MemoryConsumer`] hands each job to the worker and does what it says ([`Settle`]): drops
//! it, keeps it among the dead letters, or puts it back (redelivered) when the worker stopped
//! before finishing. Nothing survives the process; one process holds both ends.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::{Semaphore, mpsc};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::worker::{Incoming, Settle, Worker};

/// One queued message: the job's bytes and its headers (request id, resend, trace context).
#[derive(Debug, Clone)]
pub struct Message {
    pub body: Vec<u8>,
    pub headers: HashMap<String, String>,
    pub redelivered: bool,
}

/// A message the worker gave up on, with its reason and the provider attempts made.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message: Message,
    pub reason: String,
    pub attempts: u32,
}

/// The publishing end.
#[derive(Clone)]
pub struct MemoryQueue {
    tx: mpsc::UnboundedSender<Message>,
    dead: Arc<Mutex<Vec<DeadLetter>>>,
}

/// The consuming end.
pub struct MemoryConsumer {
    rx: mpsc::UnboundedReceiver<Message>,
    requeue: mpsc::UnboundedSender<Message>,
    dead: Arc<Mutex<Vec<DeadLetter>>>,
}

/// A queue and its consumer.
pub fn memory_queue() -> (MemoryQueue, MemoryConsumer) {
    let (tx, rx) = mpsc::unbounded_channel();
    let dead = Arc::default();
    let queue = MemoryQueue {
        tx: tx.clone(),
        dead: Arc::clone(&dead),
    };
    let consumer = MemoryConsumer {
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

    /// The dead letters so far.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl MemoryConsumer {
    /// Works on up to `concurrency` jobs at once until `stop` fires. `abort` is passed to the
    /// worker (the end of the shutdown grace period).
    pub async fn run(
        mut self,
        worker: Arc<Worker>,
        concurrency: usize,
        stop: CancellationToken,
        abort: CancellationToken,
        tracker: TaskTracker,
    ) {
        let slots = Arc::new(Semaphore::new(concurrency.max(1)));
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return,
                message = self.rx.recv() => match message {
                    Some(message) => message,
                    None => return,
                },
            };
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
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
                        let letter = DeadLetter {
                            message,
                            reason,
                            attempts,
                        };
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
    }
}
