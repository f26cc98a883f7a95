//! A socket read at a bounded rate: what a slow reader (a phone on a poor link, a busy
//! browser tab) looks like to the server. Reads take at most what a token bucket allows
//! (`rate` bytes a second, bursts of at most [`BURST`] bytes); writes pass through.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The most a throttled reader takes at once after being idle, in bytes.
pub(crate) const BURST: u64 = 4 * 1024;

/// `S`, read at most `rate` bytes a second (`None`: as fast as it comes).
#[derive(Debug)]
pub(crate) struct Throttled<S> {
    inner: S,
    rate: Option<u64>,
    started: Instant,
    /// Bytes read since `started`, plus the allowance given up while idle past `BURST`.
    spent: u64,
    wait: Option<Pin<Box<Sleep>>>,
}

impl<S> Throttled<S> {
    pub(crate) fn new(inner: S, rate: Option<u64>) -> Self {
        Throttled {
            inner,
            rate: rate.filter(|&r| r > 0),
            started: Instant::now(),
            spent: 0,
            wait: None,
        }
    }

    /// How many bytes may be read now: what the rate earned since the start (plus one
    /// burst) less what was spent, at most one burst.
    fn allowance(&mut self, rate: u64) -> u64 {
        let earned = BURST + (self.started.elapsed().as_secs_f64() * rate as f64) as u64;
        if earned > self.spent + BURST {
            self.spent = earned - BURST;
        }
        earned.saturating_sub(self.spent)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Throttled<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(rate) = this.rate else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        loop {
            if let Some(wait) = &mut this.wait {
                ready!(wait.as_mut().poll(cx));
                this.wait = None;
            }
            let allowed = this.allowance(rate);
            if allowed == 0 {
                // Until a burst's worth has been earned, at most a second.
                let secs = (BURST as f64 / rate as f64).min(1.0);
                let until = Instant::now() + Duration::from_secs_f64(secs);
                this.wait = Some(Box::pin(tokio::time::sleep_until(until)));
                continue;
            }
            let n = usize::try_from(allowed)
                .unwrap_or(usize::MAX)
                .min(buf.remaining());
            let mut part = ReadBuf::new(buf.initialize_unfilled_to(n));
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut part))?;
            let got = part.filled().len();
            buf.advance(got);
            this.spent += got as u64;
            return Poll::Ready(Ok(()));
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Throttled<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn reads_take_no_more_than_the_rate_allows() {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        tx.write_all(&[7u8; 40 * 1024]).await.expect("write");
        let mut r = Throttled::new(rx, Some(8 * 1024));
        let mut buf = vec![0u8; 64 * 1024];
        let start = Instant::now();
        let mut total = 0usize;
        while total < 20 * 1024 {
            total += r.read(&mut buf).await.expect("read");
        }
        // One burst, then 8 KiB a second: 20 KiB takes at least 2 s of (paused) time.
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(2), "{took:?}");
        assert!(took < Duration::from_secs(4), "{took:?}");
    }

    #[tokio::test]
    async fn without_a_rate_reads_pass_through() {
        let (mut tx, rx) = tokio::io::duplex(1024);
        tx.write_all(b"hello").await.expect("write");
        let mut r = Throttled::new(rx, None);
        let mut buf = [0u8; 16];
        assert_eq!(r.read(&mut buf).await.expect("read"), 5);
        assert_eq!(&buf[..5], b"hello");
    }
}
