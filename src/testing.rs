//! Helpers shared by the unit tests of several modules.

use bytes::Bytes;

/// A request body of unknown length, sent in chunks (a chunked or HTTP/2 upload without a
/// declared length).
pub(crate) struct Chunks(pub(crate) Vec<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let next = (!self.0.is_empty()).then(|| self.0.remove(0));
        std::task::Poll::Ready(next.map(|b| Ok(http_body::Frame::data(b))))
    }
}
