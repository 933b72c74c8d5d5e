//! `--compress`: app responses compressed with zstd, brotli or gzip, chosen by the
//! client's Accept-Encoding.
//!
//! Only what is worth it and safe: a compressible media type (text, JSON, JavaScript,
//! XML, SVG…), a body of unknown length or at least `--compress-min-size` bytes, no
//! Content-Encoding of the app's own, not a 206 or other ranged answer, no
//! `Cache-Control: no-transform`. An eligible response gets `Vary: Accept-Encoding`
//! whether or not this client accepts a coding.
//!
//! Streaming must survive compression: whenever the app has nothing more ready (the
//! worker's channel is empty), what was compressed so far is flushed to the client, so a
//! chunk the app yielded is not held back waiting for the next one. A body already
//! complete is compressed in one run, with no flush between its chunks.

use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
    ETAG, HeaderValue,
};
use hyper::http::request::Parts;
use hyper::{HeaderMap, Method, Response, StatusCode};

use super::encoding::{Accepted, Coding, vary_on_accept_encoding};
use crate::config::CompressSettings;
use crate::front::dispatch::body::{ResponseAborted, ResponseBody};
use crate::front::dispatch::channel::Failure;

/// Codings offered for app responses, preferred first when the client likes several
/// equally: zstd and brotli compress better than gzip; zstd is the cheapest to run.
const OFFERED: [Coding; 3] = [Coding::Zstd, Coding::Brotli, Coding::Gzip];

/// Compression levels: fast ones, as the work happens on the front tier's threads.
const GZIP_LEVEL: u32 = 6;
const BROTLI_QUALITY: u32 = 4;
/// Brotli's window, log2 bytes: 256 KiB per response.
const BROTLI_WINDOW: u32 = 18;
const ZSTD_LEVEL: i32 = 3;

/// When compressed output is at least this large it goes out without waiting.
const EMIT_AT: usize = 64 * 1024;

/// The compression of app responses.
pub struct Compression {
    min_size: u64,
}

impl Compression {
    /// Compression as configured.
    pub fn new(settings: &CompressSettings) -> Compression {
        Compression {
            min_size: settings.min_size,
        }
    }

    /// The app's response, compressed if it should be.
    pub fn apply(
        &self,
        request: &Parts,
        mut response: Response<ResponseBody>,
    ) -> Response<ResponseBody> {
        if !self.eligible(response.status(), response.headers()) {
            return response;
        }
        vary_on_accept_encoding(response.headers_mut());
        let Some(coding) =
            Accepted::from_headers(&request.headers).and_then(|a| a.choose(&OFFERED))
        else {
            return response;
        };
        let encoder = match Encoder::new(coding) {
            Ok(encoder) => encoder,
            Err(err) => {
                tracing::error!("cannot start a {} encoder: {err}", coding.token());
                return response;
            }
        };
        let headers = response.headers_mut();
        headers.remove(CONTENT_LENGTH);
        headers.remove(ACCEPT_RANGES);
        headers.insert(CONTENT_ENCODING, coding.header_value());
        // The compressed bytes differ from the app's: its strong ETag becomes weak, as
        // nginx does (RFC 9110 §8.8.3).
        if let Some(etag) = headers.get(ETAG)
            && !etag.as_bytes().starts_with(b"W/")
        {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            if let Ok(weak) = HeaderValue::from_bytes(&weak) {
                headers.insert(ETAG, weak);
            }
        }
        if request.method == Method::HEAD {
            // No body to compress; the headers say what a GET would get.
            return response;
        }
        response.map(|body| {
            ResponseBody::Boxed(
                CompressBody {
                    inner: body,
                    encoder: Some(encoder),
                    unflushed: false,
                }
                .boxed_unsync(),
            )
        })
    }

    fn eligible(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        let has_body = !(status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || status == StatusCode::PARTIAL_CONTENT);
        let small = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|length| length < self.min_size);
        let no_transform = headers.get_all(CACHE_CONTROL).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("no-transform"))
        });
        has_body
            && !small
            && !no_transform
            && !headers.contains_key(CONTENT_ENCODING)
            && !headers.contains_key(CONTENT_RANGE)
            && headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(compressible)
    }
}

/// Whether a media type is worth compressing: text and text-like structured formats;
/// not images, audio, video, archives or fonts that are compressed already, and not
/// server-sent events (kept byte for byte, as proxies expect).
pub fn compressible(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "text/event-stream" {
        return false;
    }
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "application/json"
                | "application/javascript"
                | "application/x-javascript"
                | "application/ecmascript"
                | "application/xml"
                | "application/wasm"
                | "application/yaml"
                | "application/x-yaml"
                | "application/toml"
                | "application/graphql"
                | "application/x-ndjson"
                | "application/vnd.ms-fontobject"
                | "font/ttf"
                | "font/otf"
                | "image/bmp"
                | "image/x-icon"
                | "image/vnd.microsoft.icon"
        )
}

/// A streaming encoder writing into a buffer that is drained as output is sent.
enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    fn new(coding: Coding) -> io::Result<Encoder> {
        Ok(match coding {
            Coding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(GZIP_LEVEL),
            )),
            Coding::Brotli => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                16 * 1024,
                BROTLI_QUALITY,
                BROTLI_WINDOW,
            ))),
            Coding::Zstd => {
                Encoder::Zstd(zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)?)
            }
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Encoder::Gzip(e) => e,
            Encoder::Brotli(e) => e.as_mut(),
            Encoder::Zstd(e) => e,
        }
    }

    fn output(&mut self) -> &mut Vec<u8> {
        match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Brotli(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        }
    }

    /// The compressed bytes produced so far.
    fn take(&mut self) -> Bytes {
        Bytes::from(std::mem::take(self.output()))
    }

    /// Ends the stream; the last compressed bytes.
    fn finish(self) -> io::Result<Bytes> {
        let rest = match self {
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Brotli(e) => e.into_inner(),
            Encoder::Zstd(e) => e.finish()?,
        };
        Ok(Bytes::from(rest))
    }
}

/// An app's body, compressed on the way out.
struct CompressBody {
    inner: ResponseBody,
    /// None once the stream is finished.
    encoder: Option<Encoder>,
    /// Input written since the last flush.
    unflushed: bool,
}

fn aborted(err: io::Error) -> ResponseAborted {
    ResponseAborted(Failure::Aborted(format!("compressing the response: {err}")))
}

impl Body for CompressBody {
    type Data = Bytes;
    type Error = ResponseAborted;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseAborted>>> {
        let this = &mut *self;
        loop {
            let Some(encoder) = this.encoder.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        // Trailers pass through as they are.
                        Err(frame) => return Poll::Ready(Some(Ok(frame))),
                    };
                    if data.is_empty() {
                        continue;
                    }
                    if let Err(err) = encoder.writer().write_all(&data) {
                        return Poll::Ready(Some(Err(aborted(err))));
                    }
                    this.unflushed = true;
                    if encoder.output().len() >= EMIT_AT {
                        return Poll::Ready(Some(Ok(Frame::data(encoder.take()))));
                    }
                }
                Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(err))),
                Poll::Ready(None) => {
                    let Some(encoder) = this.encoder.take() else {
                        return Poll::Ready(None);
                    };
                    return match encoder.finish() {
                        Ok(rest) if rest.is_empty() => Poll::Ready(None),
                        Ok(rest) => Poll::Ready(Some(Ok(Frame::data(rest)))),
                        Err(err) => Poll::Ready(Some(Err(aborted(err)))),
                    };
                }
                Poll::Pending => {
                    // Nothing more is ready from the app: send what it gave so far.
                    if this.unflushed {
                        this.unflushed = false;
                        if let Err(err) = encoder.writer().flush() {
                            return Poll::Ready(Some(Err(aborted(err))));
                        }
                    }
                    let out = encoder.take();
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn types() {
        for yes in [
            "text/html; charset=utf-8",
            "text/plain",
            "TEXT/CSS",
            "application/json",
            "application/ld+json",
            "image/svg+xml",
            "application/javascript",
            "application/rss+xml",
        ] {
            assert!(compressible(yes), "{yes}");
        }
        for no in [
            "image/png",
            "image/jpeg",
            "application/octet-stream",
            "application/zip",
            "font/woff2",
            "video/mp4",
            "text/event-stream",
            "",
        ] {
            assert!(!compressible(no), "{no}");
        }
    }

    fn roundtrip(coding: Coding, pieces: &[&[u8]]) -> Vec<u8> {
        let mut encoder = Encoder::new(coding).unwrap();
        let mut out = Vec::new();
        for piece in pieces {
            encoder.writer().write_all(piece).unwrap();
            encoder.writer().flush().unwrap();
            let flushed = encoder.take();
            // Every flushed piece is decodable on its own up to that point.
            assert!(!flushed.is_empty());
            out.extend_from_slice(&flushed);
        }
        out.extend_from_slice(&encoder.finish().unwrap());
        out
    }

    #[test]
    fn codings_roundtrip() {
        let text = b"hello hello hello hello, compressed world\n".repeat(50);
        let pieces: [&[u8]; 2] = [&text, b"the end"];
        let expected = [&text[..], b"the end"].concat();

        let gz = roundtrip(Coding::Gzip, &pieces);
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, expected);

        let zst = roundtrip(Coding::Zstd, &pieces);
        assert_eq!(zstd::stream::decode_all(&zst[..]).unwrap(), expected);

        let br = roundtrip(Coding::Brotli, &pieces);
        let mut plain = Vec::new();
        brotli::Decompressor::new(&br[..], 4096)
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, expected);
        assert!(br.len() < expected.len() / 4);
    }
}
