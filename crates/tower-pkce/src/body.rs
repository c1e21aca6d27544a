//! The body types the middleware hands on: the original body, or one it
//! buffered, rewrote or wrote itself.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The request body the inner service receives: the client's body as it
    /// streams in, or a form body the middleware buffered to check.
    pub struct RequestBody<B> {
        #[pin]
        kind: RequestKind<B>,
    }
}

pin_project! {
    #[project = RequestKindProj]
    enum RequestKind<B> {
        Inner { #[pin] body: B },
        Buffered { data: Option<Bytes> },
    }
}

impl<B> RequestBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: RequestKind::Inner { body },
        }
    }

    pub(crate) fn buffered(data: Bytes) -> Self {
        Self {
            kind: RequestKind::Buffered {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// The body's bytes, when the middleware read it whole to check it (a
    /// token request, an authorization form); `None` for a body that
    /// streams from the client, and once the bytes have been taken.
    pub fn as_buffered(&self) -> Option<&Bytes> {
        match &self.kind {
            RequestKind::Buffered { data } => data.as_ref(),
            RequestKind::Inner { .. } => None,
        }
    }
}

impl<B> std::fmt::Debug for RequestBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody").finish_non_exhaustive()
    }
}

impl<B: Body<Data = Bytes>> Body for RequestBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            RequestKindProj::Inner { body } => body.poll_frame(cx),
            RequestKindProj::Buffered { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RequestKind::Inner { body } => body.is_end_stream(),
            RequestKind::Buffered { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RequestKind::Inner { body } => body.size_hint(),
            RequestKind::Buffered { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// The error of a [`ResponseBody`]: the inner body's, or the middleware's
/// own when it cut off a page it could not read whole (see
/// [`PkceLayer::html_scan_limit`](crate::PkceLayer::html_scan_limit)).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// The response body the middleware returns: the inner service's body as
    /// it streams, a rejection, or a page it read (to find a `form_post`
    /// code) and hands on, rewritten or as it was.
    pub struct ResponseBody<B: Body> {
        #[pin]
        kind: ResponseKind<B>,
    }
}

pin_project! {
    #[project = ResponseKindProj]
    enum ResponseKind<B: Body> {
        Inner { #[pin] body: B },
        Full { data: Option<Bytes> },
        Replay {
            frames: VecDeque<Frame<Bytes>>,
            error: Option<B::Error>,
            rest: Option<Pin<Box<B>>>,
            watch: Option<Watch>,
        },
    }
}

/// Watches the rest of a page too large to read whole: past the bound, a
/// page that shows a transaction handle or a code is cut off, since a code
/// beside a handle could not be bound (invariant I2).
#[derive(Debug, Default)]
pub(crate) struct Watch {
    /// The end of the decoded data seen so far, for a sign split across
    /// frames.
    tail: Vec<u8>,
    /// The decoder of a compressed page.
    decoder: Option<crate::coding::Streaming>,
}

/// Enough bytes to hold a handle written with its dot escaped (`&#46;`).
const WATCH_TAIL: usize = 48;

impl Watch {
    /// A watch over a body coded as `decoder` decodes (`None`: not coded).
    pub(crate) fn new(decoder: Option<crate::coding::Streaming>) -> Self {
        Self {
            tail: Vec::new(),
            decoder,
        }
    }

    /// Whether `data`, after what came before it, shows a handle or a
    /// code; a coded body that does not decode counts too.
    pub(crate) fn sees(&mut self, data: &[u8]) -> bool {
        match self.decoder.take() {
            None => self.sees_decoded(data),
            Some(mut decoder) => {
                let seen = decoder.feed(data, &mut |decoded| self.sees_decoded(decoded));
                self.decoder = Some(decoder);
                seen.unwrap_or(true)
            }
        }
    }

    /// Whether what a decoder still held at the end of the body shows one.
    pub(crate) fn sees_at_end(&mut self) -> bool {
        let Some(mut decoder) = self.decoder.take() else {
            return false;
        };
        decoder
            .finish(&mut |decoded| self.sees_decoded(decoded))
            .unwrap_or(true)
    }

    fn sees_decoded(&mut self, data: &[u8]) -> bool {
        let mut window = std::mem::take(&mut self.tail);
        window.extend_from_slice(data);
        let decoded = crate::loose::decode(&window, true);
        let found = crate::handle::count_in(&decoded) > 0
            || crate::loose::count_params(&decoded, b"code") > 0
            || crate::html::name_tokens(&decoded, b"code") > 0;
        let keep = window.len().saturating_sub(WATCH_TAIL);
        window.drain(..keep);
        self.tail = window;
        found
    }
}

#[derive(Debug)]
struct CutOff;

impl std::fmt::Display for CutOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "a page larger than the scan bound shows a transaction handle or a code; cut off",
        )
    }
}

impl std::error::Error for CutOff {}

impl<B: Body> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: ResponseKind::Inner { body },
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        Self {
            kind: ResponseKind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// Frames already read, then whatever `rest` still yields (or `error`).
    pub(crate) fn replay(
        frames: VecDeque<Frame<Bytes>>,
        error: Option<B::Error>,
        rest: Option<Pin<Box<B>>>,
    ) -> Self {
        Self {
            kind: ResponseKind::Replay {
                frames,
                error,
                rest,
                watch: None,
            },
        }
    }

    /// As [`replay`](Self::replay), with what `rest` yields watched for a
    /// transaction handle.
    pub(crate) fn watched(frames: VecDeque<Frame<Bytes>>, rest: Pin<Box<B>>, watch: Watch) -> Self {
        Self {
            kind: ResponseKind::Replay {
                frames,
                error: None,
                rest: Some(rest),
                watch: Some(watch),
            },
        }
    }
}

impl<B: Body> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            ResponseKindProj::Inner { body } => body.poll_frame(cx).map_err(Into::into),
            ResponseKindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ResponseKindProj::Replay {
                frames,
                error,
                rest,
                watch,
            } => {
                if let Some(frame) = frames.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                if let Some(e) = error.take() {
                    return Poll::Ready(Some(Err(e.into())));
                }
                let Some(body) = rest else {
                    return Poll::Ready(None);
                };
                let polled = body.as_mut().poll_frame(cx).map_err(Into::into);
                let seen = match (&polled, watch.as_mut()) {
                    (Poll::Ready(Some(Ok(frame))), Some(watch)) => {
                        frame.data_ref().is_some_and(|d| watch.sees(d))
                    }
                    (Poll::Ready(None), Some(watch)) => watch.sees_at_end(),
                    _ => false,
                };
                if seen {
                    tracing::warn!(
                        "a page larger than the scan bound shows a handle or a code; cut off"
                    );
                    *rest = None;
                    return Poll::Ready(Some(Err(Box::new(CutOff))));
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ResponseKind::Inner { body } => body.is_end_stream(),
            ResponseKind::Full { data } => data.is_none(),
            ResponseKind::Replay {
                frames,
                error,
                rest,
                ..
            } => {
                frames.is_empty()
                    && error.is_none()
                    && rest.as_ref().is_none_or(|b| b.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResponseKind::Inner { body } => body.size_hint(),
            ResponseKind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ResponseKind::Replay {
                frames,
                rest,
                error,
                ..
            } => {
                let buffered: u64 = frames
                    .iter()
                    .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
                    .sum();
                match rest {
                    // Trailers go out only with a body of unknown length
                    // (chunked), so the length is not told. Nor is it for a
                    // body that failed after these frames: told as exact, a
                    // server frames the cut body as whole, and its error is
                    // never seen.
                    None if error.is_some() || frames.iter().any(Frame::is_trailers) => {
                        let mut hint = SizeHint::new();
                        hint.set_lower(buffered);
                        hint
                    }
                    None => SizeHint::with_exact(buffered),
                    Some(body) => {
                        let inner = body.size_hint();
                        let mut hint = SizeHint::new();
                        hint.set_lower(inner.lower().saturating_add(buffered));
                        if let Some(upper) = inner.upper() {
                            hint.set_upper(upper.saturating_add(buffered));
                        }
                        hint
                    }
                }
            }
        }
    }
}

/// What reading a body up to a bound found.
pub(crate) enum Collected<B: Body> {
    /// The whole body: its data and trailers.
    Complete {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// More than the bound: the frames read so far and the unread rest.
    Over {
        frames: VecDeque<Frame<Bytes>>,
        rest: Pin<Box<B>>,
    },
    /// The body failed after these frames.
    Failed {
        frames: VecDeque<Frame<Bytes>>,
        error: B::Error,
    },
}

/// Reads `body` until it ends or more than `limit` bytes arrived.
pub(crate) async fn collect_bounded<B: Body<Data = Bytes>>(body: B, limit: usize) -> Collected<B> {
    use http_body_util::BodyExt;

    let mut body = Box::pin(body);
    let mut frames = VecDeque::new();
    let mut len = 0usize;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(error)) => return Collected::Failed { frames, error },
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    len = len.saturating_add(data.len());
                }
                frames.push_back(frame);
                if len > limit {
                    return Collected::Over { frames, rest: body };
                }
            }
        }
    }
    let mut trailers: Option<HeaderMap> = None;
    let mut chunks: Vec<Bytes> = Vec::with_capacity(frames.len());
    for frame in frames {
        match frame.into_data() {
            Ok(data) => chunks.push(data),
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers.get_or_insert_with(HeaderMap::new).extend(t);
                }
            }
        }
    }
    let data = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut all = Vec::with_capacity(len);
            for c in &chunks {
                all.extend_from_slice(c);
            }
            Bytes::from(all)
        }
    };
    Collected::Complete { data, trailers }
}

/// Why [`collect_request`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestBodyError {
    /// More than the bound arrived.
    TooLarge,
    /// The body failed.
    Unreadable,
    /// The body ended with trailer fields.
    Trailers,
}

/// Reads a request body's data until it ends, up to `limit` bytes. It reads
/// as [`collect_bounded`] does, but keeps nothing to hand on after a
/// failure, so it needs no box and no frame queue. Trailers are refused: a
/// server that merges them into the header fields would read a request the
/// checks never saw.
pub(crate) async fn collect_request<B: Body<Data = Bytes>>(
    body: B,
    limit: usize,
) -> Result<Bytes, RequestBodyError> {
    use http_body_util::BodyExt;

    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut joined: Option<Vec<u8>> = None;
    let mut len = 0usize;
    while let Some(frame) = body.as_mut().frame().await {
        let frame = frame.map_err(|_| RequestBodyError::Unreadable)?;
        let Ok(data) = frame.into_data() else {
            return Err(RequestBodyError::Trailers);
        };
        len = len.saturating_add(data.len());
        if len > limit {
            return Err(RequestBodyError::TooLarge);
        }
        match (&mut joined, first.take()) {
            (Some(all), _) => all.extend_from_slice(&data),
            (None, None) => first = Some(data),
            (None, Some(earlier)) => {
                let mut all = Vec::with_capacity(len);
                all.extend_from_slice(&earlier);
                all.extend_from_slice(&data);
                joined = Some(all);
            }
        }
    }
    Ok(match (joined, first) {
        (Some(all), _) => Bytes::from(all),
        (None, Some(data)) => data,
        (None, None) => Bytes::new(),
    })
}

/// A complete body handed on as frames: its data, then its trailers.
pub(crate) fn frames_of(data: Bytes, trailers: Option<HeaderMap>) -> VecDeque<Frame<Bytes>> {
    let mut frames = VecDeque::with_capacity(2);
    if !data.is_empty() {
        frames.push_back(Frame::data(data));
    }
    if let Some(t) = trailers {
        frames.push_back(Frame::trailers(t));
    }
    frames
}
