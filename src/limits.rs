//! Request body limits (`max_body`, per route with a server-wide default): a declared
//! `Content-Length` over the limit is refused before anything is forwarded (413); a body of
//! unknown length (chunked) is counted while it streams and cut off at the limit, and the
//! request then ends in 413 too.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::BoxError;

/// The body was over its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request body is larger than the route's max_body")]
pub struct TooLarge;

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

/// A streamed request body that fails once more than `max` bytes went through, and says so
/// through its flag (so that the failed upstream call can be answered 413, not 502).
pub struct Capped<B> {
    inner: B,
    left: u64,
    exceeded: Arc<AtomicBool>,
}

impl<B> Capped<B> {
    pub fn new(inner: B, max: u64) -> (Self, Arc<AtomicBool>) {
        let exceeded = Arc::new(AtomicBool::new(false));
        (
            Capped {
                inner,
                left: max,
                exceeded: exceeded.clone(),
            },
            exceeded,
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
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > self.left {
                        self.exceeded.store(true, Ordering::SeqCst);
                        return Poll::Ready(Some(Err(Box::new(TooLarge))));
                    }
                    self.left -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
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
}
