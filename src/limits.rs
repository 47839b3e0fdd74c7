//! Request body limits: its size and its pace.
//!
//! - `max_body` (per route, with a server-wide default): a declared `Content-Length` over the
//!   limit is refused before anything is forwarded (413); a body of unknown length (chunked) is
//!   counted while it streams and cut off at the limit, and the request then ends in 413 too.
//! - `server.body_read_timeout`: the longest gap between two reads of the body. A client that
//!   stalls longer gets 408 and its connection closed, and whatever the request held (an
//!   upstream connection, a session lease) is given back, instead of waiting for the client
//!   for ever.
//! - `[[upstream]] body_read_timeout`: the same bound on the upstream's response body
//!   ([`Paced`]). Its head has gone to the client already, so the answer is cut off (the
//!   client sees the body end early), and the upstream connection and the session are given
//!   back.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::BoxError;

/// The body was over its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request body is larger than the route's max_body")]
pub struct TooLarge;

/// The upstream sent no body bytes for longer than its `body_read_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the upstream sent no response body for longer than its body_read_timeout")]
pub struct UpstreamStalled;

/// The client sent no body bytes for longer than `server.body_read_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client sent no request body for longer than server.body_read_timeout")]
pub struct BodyTimeout;

/// What a capped body reports back to the pipeline: which limit it broke, if any (read after a
/// failed upstream call, so that the answer is 413 or 408 rather than the 502 the cut-off body
/// caused upstream), and how many bytes it passed on (the access log's `bytes_in`).
#[derive(Debug, Default)]
pub struct Broken(AtomicU8, AtomicU64);

/// What [`Broken`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    TooLarge,
    Timeout,
}

impl Broken {
    /// The body bytes read from the client so far.
    pub fn bytes_read(&self) -> u64 {
        self.1.load(Ordering::Relaxed)
    }

    pub fn fault(&self) -> Option<Fault> {
        match self.0.load(Ordering::SeqCst) {
            1 => Some(Fault::TooLarge),
            2 => Some(Fault::Timeout),
            _ => None,
        }
    }

    fn set(&self, fault: Fault) {
        let v = match fault {
            Fault::TooLarge => 1,
            Fault::Timeout => 2,
        };
        self.0.store(v, Ordering::SeqCst);
    }
}

/// Checks a declared `Content-Length` against `max`.
pub fn check_declared(headers: &HeaderMap, max: u64) -> Result<(), TooLarge> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > max => Err(TooLarge),
        _ => Ok(()),
    }
}

/// A streamed request body that fails once more than `max` bytes went through, or once the
/// client has sent nothing for `gap`, and says which through its [`Broken`] flag.
pub struct Capped<B> {
    inner: B,
    left: u64,
    broken: Arc<Broken>,
    gap: Gap,
}

/// The read-gap bound of a body: how long it may be waited for without a frame. Only waits
/// count: while the other side is slow to take the body, the body is not polled, and that time
/// is not the sender's. The server's connections use it for writes too (`send_timeout`).
pub(crate) struct Gap {
    gap: Duration,
    /// Since when the body has been waited for without a frame.
    waiting_since: Option<Instant>,
    /// Set on the first wait, then moved to each new wait's deadline.
    timer: Alarm,
}

impl Gap {
    pub(crate) fn new(gap: Duration) -> Gap {
        Gap {
            gap,
            waiting_since: None,
            timer: Alarm::default(),
        }
    }

    /// Polls `inner` for its next frame; once it has been waited for `gap`, the answer is
    /// `stalled()`'s error instead.
    fn poll<B>(
        &mut self,
        inner: Pin<&mut B>,
        cx: &mut Context<'_>,
        stalled: impl FnOnce() -> BoxError,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
    where
        B: HttpBody<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        match inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.progressed();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending if self.stalled(cx) => Poll::Ready(Some(Err(stalled()))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Progress was made: the next wait starts afresh.
    pub(crate) fn progressed(&mut self) {
        self.waiting_since = None;
    }

    /// The body is pending: has it been waited for `gap` already? Arms the timer so that this
    /// task is woken at the deadline.
    pub(crate) fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let now = Instant::now();
        let deadline = *self.waiting_since.get_or_insert(now) + self.gap;
        if now >= deadline {
            return true;
        }
        self.timer.rung(deadline, cx)
    }
}

/// A timer made on the first wait that needs one, then moved to each later deadline: most
/// waits end before any timer is needed, and the rest share one allocation.
#[derive(Default)]
pub(crate) struct Alarm(Option<Pin<Box<Sleep>>>);

impl Alarm {
    /// True once `deadline` has passed; otherwise the timer is set to it and this task is
    /// woken then.
    pub(crate) fn rung(&mut self, deadline: Instant, cx: &mut Context<'_>) -> bool {
        let timer = self
            .0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }

    /// Drops the timer, and its place in the runtime's timer wheel.
    pub(crate) fn disarm(&mut self) {
        self.0 = None;
    }
}

impl<B> Capped<B> {
    pub fn new(inner: B, max: u64, gap: Duration) -> (Self, Arc<Broken>) {
        let broken = Arc::new(Broken::default());
        (
            Capped {
                inner,
                left: max,
                broken: broken.clone(),
                gap: Gap::new(gap),
            },
            broken,
        )
    }
}

impl<B> HttpBody for Capped<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let broken = &this.broken;
        let polled = this.gap.poll(Pin::new(&mut this.inner), cx, || {
            broken.set(Fault::Timeout);
            Box::new(BodyTimeout)
        });
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let n = data.len() as u64;
                if n > this.left {
                    this.broken.set(Fault::TooLarge);
                    return Poll::Ready(Some(Err(Box::new(TooLarge))));
                }
                this.left -= n;
                this.broken.1.fetch_add(n, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An upstream's response body that fails once the upstream has sent nothing for its
/// `body_read_timeout` while the gateway waited.
pub struct Paced<B> {
    inner: B,
    gap: Gap,
}

impl<B> Paced<B> {
    pub fn new(inner: B, gap: Duration) -> Self {
        Paced {
            inner,
            gap: Gap::new(gap),
        }
    }
}

impl<B> HttpBody for Paced<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        this.gap.poll(Pin::new(&mut this.inner), cx, || {
            tracing::warn!("{UpstreamStalled}; the answer is cut off");
            Box::new(UpstreamStalled)
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn declared_lengths() {
        let mut h = HeaderMap::new();
        assert!(check_declared(&h, 10).is_ok());
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        assert!(check_declared(&h, 10).is_ok());
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("11"));
        assert_eq!(check_declared(&h, 10), Err(TooLarge));
    }

    /// A body whose frames come from a channel, so a test decides when the client "sends".
    struct Client(tokio::sync::mpsc::Receiver<Bytes>);

    impl HttpBody for Client {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    async fn next(body: &mut Capped<Client>) -> Option<Result<Frame<Bytes>, BoxError>> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
    }

    const GAP: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn a_client_silent_for_the_gap_breaks_the_body() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (mut body, broken) = Capped::new(Client(rx), 1 << 20, GAP);
        tx.send(Bytes::from_static(b"part")).await.unwrap();
        assert!(next(&mut body).await.unwrap().is_ok());
        // Paused time: the wait auto-advances to the timer, which fires at the gap exactly.
        let started = Instant::now();
        let e = next(&mut body).await.unwrap().unwrap_err();
        assert!(e.is::<BodyTimeout>(), "{e}");
        assert_eq!(Instant::now() - started, GAP);
        assert_eq!(broken.fault(), Some(Fault::Timeout));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_client_is_never_cut_off() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (mut body, broken) = Capped::new(Client(rx), 1 << 20, GAP);
        let sender = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(GAP - Duration::from_secs(1)).await;
                tx.send(Bytes::from_static(b"x")).await.unwrap();
            }
        });
        let mut got = 0;
        while let Some(frame) = next(&mut body).await {
            assert!(frame.is_ok(), "cut off after {got} frames");
            got += 1;
        }
        sender.await.unwrap();
        assert_eq!(got, 10);
        assert_eq!(broken.fault(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_silent_for_the_gap_breaks_its_answer() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut body = Paced::new(Client(rx), GAP);
        tx.send(Bytes::from_static(b"head of the body"))
            .await
            .unwrap();
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        assert!(frame.unwrap().is_ok());
        let started = Instant::now();
        let e = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .await
            .unwrap()
            .unwrap_err();
        assert!(e.is::<UpstreamStalled>(), "{e}");
        assert_eq!(Instant::now() - started, GAP);
    }

    #[tokio::test(start_paused = true)]
    async fn too_much_is_told_apart_from_too_slow() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (mut body, broken) = Capped::new(Client(rx), 3, GAP);
        tx.send(Bytes::from_static(b"four")).await.unwrap();
        let e = next(&mut body).await.unwrap().unwrap_err();
        assert!(e.is::<TooLarge>(), "{e}");
        assert_eq!(broken.fault(), Some(Fault::TooLarge));
    }
}
