//! A bound on writing: a connection whose writes stall for longer than the limit fails with
//! `TimedOut`, so a client that never reads its answer cannot hold the socket (and the answer's
//! buffers) open.
//!
//! The clock starts when a write first finds the socket full and stops when everything queued
//! has been written (hyper flushes the transport only then). A socket that takes every write at
//! once, the usual case, never touches a timer. When the deadline passes, what the kernel still
//! holds for the client is discarded too: the connection is reset, not closed after its data.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// A transport whose unsent data can be dropped when it closes.
pub trait Discard {
    /// Makes closing reset the connection, freeing what was never sent at once.
    fn discard_unsent_on_close(&self);
}

impl Discard for tokio::net::TcpStream {
    fn discard_unsent_on_close(&self) {
        let _ = self.set_zero_linger();
    }
}

pub struct WriteDeadline<T> {
    inner: T,
    limit: Duration,
    /// Armed while a write has stalled and not everything has been written since.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteDeadline<T> {
    pub fn new(inner: T, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            deadline: None,
        }
    }
}

impl<T: AsyncWrite + Discard + Unpin> WriteDeadline<T> {
    /// Fails once the armed deadline has passed; otherwise registers the task to be woken then.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let passed = self
            .deadline
            .as_mut()
            .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
        if passed {
            self.inner.discard_unsent_on_close();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read its answer in time",
            ));
        }
        Ok(())
    }

    /// A write would block: start the clock unless it is running.
    fn stalled(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.deadline.is_none() {
            self.deadline = Some(Box::pin(tokio::time::sleep_until(
                Instant::now() + self.limit,
            )));
        }
        self.check(cx)
    }

    fn write_with(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        match write(Pin::new(&mut self.inner), cx) {
            Poll::Pending => {
                self.stalled(cx)?;
                Poll::Pending
            }
            ready => ready,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Discard + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .write_with(cx, |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .write_with(cx, |inner, cx| inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        let flushed = Pin::new(&mut this.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            // Everything queued is written: the answer got out in time.
            this.deadline = None;
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    impl Discard for DuplexStream {
        fn discard_unsent_on_close(&self) {}
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_never_reads_fails_the_write_after_the_limit() {
        let (near, _far) = tokio::io::duplex(64);
        let mut io = WriteDeadline::new(near, Duration::from_secs(10));
        let started = Instant::now();
        let err = io.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_reads_in_time_resets_the_clock_for_the_next_answer() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut io = WriteDeadline::new(near, Duration::from_secs(10));
        // Each answer waits 7 s for its reader: within the limit for each, not for both.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            for _ in 0..2 {
                tokio::time::sleep(Duration::from_secs(7)).await;
                far.read_exact(&mut buf).await.unwrap();
            }
        });
        for _ in 0..2 {
            io.write_all(&[0u8; 1024]).await.unwrap();
            io.flush().await.unwrap();
        }
        reader.await.unwrap();
    }
}
