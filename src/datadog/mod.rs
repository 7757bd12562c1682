//! The Datadog API, split as Vector splits its Datadog metrics sink: `payload` (wire JSON,
//! compression, size limits), `client` (URLs, headers, HTTP), `error` (status classification).
//! The only module that knows Datadog's HTTP. The request and response contract is
//! `/api/v2/series` of Datadog's OpenAPI spec (see ../shared/datadog/ in the project's workspace).

use std::fmt;

mod client;
mod error;
mod payload;

pub use client::{series_url, site_url, Accepted, Client};
pub use error::DatadogError;
pub use payload::{
    encode_compressed, encode_distributions, encode_series, Body, TooLarge, MAX_COMPRESSED_BYTES, MAX_RAW_BYTES,
};

/// The sites Datadog's API client knows; `--site` accepts these.
pub const SITES: &[&str] = &[
    "datadoghq.com",
    "us3.datadoghq.com",
    "us5.datadoghq.com",
    "ap1.datadoghq.com",
    "ap2.datadoghq.com",
    "uk1.datadoghq.com",
    "datadoghq.eu",
    "ddog-gov.com",
    "us2.ddog-gov.com",
];

/// The API key. It has no `Display`, and its `Debug` never shows it.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: String) -> ApiKey {
        ApiKey(key)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl ApiKey {
    /// The key itself, for the one header that carries it.
    fn expose(&self) -> &str {
        &self.0
    }
}

/// `Content-Encoding` of the series body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// zstd level 3 (`Content-Encoding: zstd1`): the default, fastest for its size.
    Zstd,
    /// gzip level 6.
    Gzip,
    /// zlib (`Content-Encoding: deflate`) level 6.
    Deflate,
}

impl Compression {
    pub fn header(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd1",
            Compression::Gzip => "gzip",
            Compression::Deflate => "deflate",
        }
    }

    /// An encoder writing into memory at the level this tool uses (zstd 3, gzip and zlib 6).
    ///
    /// # Errors
    /// Only zstd's context allocation can fail.
    pub fn encoder(self, capacity: usize) -> std::io::Result<Encoder> {
        let out = Vec::with_capacity(capacity);
        Ok(match self {
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(out, 3)?),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(out, flate2::Compression::new(6))),
            Compression::Deflate => Encoder::Deflate(flate2::write::ZlibEncoder::new(out, flate2::Compression::new(6))),
        })
    }

    /// Compresses a whole body at once (the benchmark's floor; requests stream through
    /// [`encode_compressed`]).
    ///
    /// # Errors
    /// Only an encoder failure; writing into memory does not fail otherwise.
    pub fn compress(self, raw: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut encoder = self.encoder(raw.len() / 8)?;
        std::io::Write::write_all(&mut encoder, raw)?;
        encoder.finish()
    }
}

/// A compressing writer into memory, one of the three codecs.
pub enum Encoder {
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Deflate(flate2::write::ZlibEncoder<Vec<u8>>),
}

impl Encoder {
    /// Ends the stream and returns the compressed bytes.
    ///
    /// # Errors
    /// Only an encoder failure.
    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Zstd(encoder) => encoder.finish(),
            Encoder::Gzip(encoder) => encoder.finish(),
            Encoder::Deflate(encoder) => encoder.finish(),
        }
    }

    fn inner(&mut self) -> &mut dyn std::io::Write {
        match self {
            Encoder::Zstd(encoder) => encoder,
            Encoder::Gzip(encoder) => encoder,
            Encoder::Deflate(encoder) => encoder,
        }
    }
}

impl std::io::Write for Encoder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner().flush()
    }
}
