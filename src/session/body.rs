//! Request bodies the session layer must see whole: a body kept for a replay after a re-login,
//! and a passive login's body, whose `name` is checked before it is forwarded.

use bytes::Bytes;
use http_body_util::BodyExt as _;

use crate::Body;

/// Reads a whole body of at most `max` bytes; `None` when it is larger or fails.
pub(super) async fn read_bounded(mut body: Body, max: usize) -> Option<Bytes> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            if buf.len() + data.len() > max {
                return None;
            }
            buf.extend_from_slice(&data);
        }
    }
    Some(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy;
    use crate::testing::Chunks;

    #[tokio::test]
    async fn a_body_is_read_whole_up_to_its_bound() {
        let chunks = |n| {
            Chunks(vec![Bytes::from_static(b"0123"); n])
                .map_err(|never| match never {})
                .boxed()
        };
        assert_eq!(
            read_bounded(chunks(2), 8).await.as_deref(),
            Some(&b"01230123"[..])
        );
        assert_eq!(read_bounded(chunks(3), 8).await, None, "one byte over");
        assert_eq!(read_bounded(proxy::full(""), 0).await, Some(Bytes::new()));
    }
}
