//! Acks in batches: one `basic.ack` with `multiple` for every job finished since the last one,
//! instead of one per job (RabbitMQ then settles them in one quorum-queue command).
//!
//! Jobs finish out of order, and `multiple` acks every delivery up to a tag, so a batch only
//! ever covers a run of deliveries that are all finished: it stops at the first one still being
//! worked on, or left for redelivery at shutdown. An ack still follows the ledger's record, as
//! before; it is only sent a little later, together with others. Deliveries put back or
//! dead-lettered are settled one by one by their task, then reported here as settled.
//!
//! One [`Acks`] per channel: the consumer reports each delivery as it hands it out, the tasks
//! report how it ended, and a task of its own sends the acks. Whatever it has accumulated while
//! an ack is being sent goes in the next one, so batches grow with the load and an idle
//! dispatcher acks each job at once.

use std::{collections::BTreeMap, time::Duration};

use lapin::{Acker, options::BasicAckOptions};
use tokio::{sync::mpsc, task::JoinHandle};

/// What happened to a delivery, by delivery tag.
enum Note {
    /// Handed to a task.
    Delivered(u64),
    /// Finished: to be acked.
    Ack(u64, Acker),
    /// Settled by its task already (put back, rejected).
    Settled(u64),
    /// Left unsettled for the broker to redeliver: never covered by a batch.
    Left(u64),
}

/// A delivery in the window, with what acks it (lapin's [`Acker`]).
enum Entry<A> {
    Working,
    Ack(A),
    Settled,
    Left,
}

/// The reporting side, cloned into every delivery's task.
#[derive(Clone)]
pub struct Acks(mpsc::UnboundedSender<Note>);

/// The sending task; [`Flushed::wait`] returns once every [`Acks`] is gone and the last acks
/// were sent.
pub struct Flushed(JoinHandle<()>);

impl Acks {
    pub fn start() -> (Self, Flushed) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(tx), Flushed(tokio::spawn(run(rx))))
    }

    pub fn delivered(&self, tag: u64) {
        let _ = self.0.send(Note::Delivered(tag));
    }

    pub fn ack(&self, tag: u64, acker: Acker) {
        let _ = self.0.send(Note::Ack(tag, acker));
    }

    pub fn settled(&self, tag: u64) {
        let _ = self.0.send(Note::Settled(tag));
    }

    pub fn left(&self, tag: u64) {
        let _ = self.0.send(Note::Left(tag));
    }
}

impl Flushed {
    /// Waits at most `timeout` for the last acks.
    pub async fn wait(self, timeout: Duration) {
        if tokio::time::timeout(timeout, self.0).await.is_err() {
            tracing::warn!(
                "the last acks were not sent in time; those jobs will be redelivered and skipped"
            );
        }
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Note>) {
    let mut window: BTreeMap<u64, Entry<Acker>> = BTreeMap::new();
    let mut notes = Vec::new();
    while rx.recv_many(&mut notes, usize::MAX).await > 0 {
        for note in notes.drain(..) {
            match note {
                Note::Delivered(tag) => window.insert(tag, Entry::Working),
                Note::Ack(tag, acker) => window.insert(tag, Entry::Ack(acker)),
                Note::Settled(tag) => window.insert(tag, Entry::Settled),
                Note::Left(tag) => window.insert(tag, Entry::Left),
            };
        }
        if let Some(last) = finished_run(&mut window) {
            send(&last, true).await;
        }
    }
    // Every task is done. A delivery left for redelivery may hold back finished ones behind
    // it: they are acked one by one.
    for entry in window.into_values() {
        if let Entry::Ack(acker) = entry {
            send(&acker, false).await;
        }
    }
}

/// Takes the run of finished deliveries at the bottom of the window, and gives the acker of
/// the last one to ack in it (the ack with `multiple` covers the others).
fn finished_run<A>(window: &mut BTreeMap<u64, Entry<A>>) -> Option<A> {
    let mut last = None;
    while let Some(first) = window.first_entry() {
        if matches!(first.get(), Entry::Working | Entry::Left) {
            break;
        }
        if let Entry::Ack(acker) = first.remove() {
            last = Some(acker);
        }
    }
    last
}

async fn send(acker: &Acker, multiple: bool) {
    if let Err(e) = acker.ack(BasicAckOptions { multiple }).await {
        // The channel is gone; the broker redelivers and the ledger makes that a no-op.
        tracing::warn!(error = %e, "ack failed; the jobs will be redelivered and skipped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(entries: Vec<(u64, Entry<u64>)>) -> BTreeMap<u64, Entry<u64>> {
        entries.into_iter().collect()
    }

    #[test]
    fn a_batch_covers_only_a_run_of_finished_deliveries() {
        use Entry::*;
        let mut w = window(vec![(1, Ack(1)), (2, Working), (3, Ack(3))]);
        assert_eq!(finished_run(&mut w), Some(1));
        assert_eq!(w.keys().copied().collect::<Vec<_>>(), [2, 3]);
        assert_eq!(finished_run(&mut w), None, "2 is still being worked on");
        w.insert(2, Ack(2));
        assert_eq!(finished_run(&mut w), Some(3), "one ack for 2 and 3");
        assert!(w.is_empty());
    }

    #[test]
    fn a_delivery_left_for_redelivery_is_never_covered() {
        use Entry::*;
        let mut w = window(vec![(1, Settled), (2, Ack(2)), (3, Left), (4, Ack(4))]);
        assert_eq!(finished_run(&mut w), Some(2));
        assert_eq!(finished_run(&mut w), None);
        assert_eq!(w.keys().copied().collect::<Vec<_>>(), [3, 4]);
        // Settled ones alone need no ack.
        let mut w = window(vec![(5, Settled), (6, Working)]);
        assert_eq!(finished_run(&mut w), None);
        assert_eq!(w.keys().copied().collect::<Vec<_>>(), [6]);
    }
}
