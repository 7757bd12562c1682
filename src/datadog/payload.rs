//! Wire JSON of `/api/v2/series` (and of `/api/v1/distribution_points`, with `--distributions`),
//! serialised straight from the domain's series (no wire copies), compressed as it is written,
//! and checked against Datadog's two size limits.

use std::io::Write;

use serde::Serialize;

use super::Compression;
use crate::metrics::{MetricKind, Series};

/// Datadog's limits for one `/api/v2/series` request.
pub const MAX_COMPRESSED_BYTES: usize = 512_000;
pub const MAX_RAW_BYTES: usize = 5_242_880;

/// The wire form of a request body, serialised straight from the series (no copies).
struct WirePayload<'a>(&'a [Series]);

impl Serialize for WirePayload<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut payload = serializer.serialize_struct("MetricPayload", 1)?;
        payload.serialize_field("series", &WireList(self.0))?;
        payload.end()
    }
}

struct WireList<'a>(&'a [Series]);

impl Serialize for WireList<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(WireSeries))
    }
}

struct WireSeries<'a>(&'a Series);

impl Serialize for WireSeries<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let series = self.0;
        let mut wire = serializer.serialize_struct("MetricSeries", 5)?;
        wire.serialize_field("metric", &*series.metric)?;
        wire.serialize_field(
            "type",
            &match series.kind {
                MetricKind::Count => 1u8,
                MetricKind::Gauge => 3u8,
                // Never in a v2 body: distributions travel in their own (`encode_distributions`).
                MetricKind::Distribution => 0u8,
            },
        )?;
        wire.serialize_field("points", &WirePoints(&series.points))?;
        wire.serialize_field("tags", &*series.tags)?;
        if let Some(unit) = series.unit {
            wire.serialize_field("unit", unit)?;
        }
        wire.end()
    }
}

struct WirePoints<'a>(&'a [(i64, f64)]);

impl Serialize for WirePoints<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|&(timestamp, value)| WirePoint { timestamp, value }))
    }
}

#[derive(Serialize)]
struct WirePoint {
    timestamp: i64,
    value: f64,
}

/// The JSON body of a `/api/v2/series` request.
pub fn encode_series(series: &[Series]) -> Vec<u8> {
    serde_json::to_vec(&WirePayload(series)).expect("serialising plain structs of strings and numbers cannot fail")
}

/// A compressed request body and the size of the JSON it holds.
#[derive(Debug)]
pub struct Body {
    pub compressed: Vec<u8>,
    pub raw_bytes: usize,
}

/// A body over one of Datadog's limits: the request must be split. `compressed_bytes` is 0 when
/// the uncompressed limit cut the encoding short.
#[derive(Debug)]
pub struct TooLarge {
    pub raw_bytes: usize,
    pub compressed_bytes: usize,
}

/// The wire form of a `/api/v1/distribution_points` body: `{"series":[{"metric", "type":
/// "distribution", "points": [[timestamp, [values...]], ...], "tags"}]}`, a point per timestamp.
struct WireDistributions<'a>(&'a [Series]);

impl Serialize for WireDistributions<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct One<'a>(&'a Series);
        impl Serialize for One<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let series = self.0;
                let mut wire = serializer.serialize_struct("DistributionPointsSeries", 4)?;
                wire.serialize_field("metric", &*series.metric)?;
                wire.serialize_field("type", "distribution")?;
                // The series' points are sorted by time: one wire point per run of one timestamp.
                let points: Vec<(i64, Vec<f64>)> = series
                    .points
                    .chunk_by(|a, b| a.0 == b.0)
                    .map(|run| (run[0].0, run.iter().map(|p| p.1).collect()))
                    .collect();
                wire.serialize_field("points", &points)?;
                wire.serialize_field("tags", &*series.tags)?;
                wire.end()
            }
        }
        let mut payload = serializer.serialize_struct("DistributionPointsPayload", 1)?;
        payload.serialize_field("series", &self.0.iter().map(One).collect::<Vec<_>>())?;
        payload.end()
    }
}

/// The JSON of distribution `series` (`/api/v1/distribution_points`), compressed, within the
/// same limits as series bodies.
pub fn encode_distributions(series: &[Series], compression: Compression) -> Result<Body, TooLarge> {
    compress_json(&WireDistributions(series), compression)
}

/// The JSON of `series`, compressed as it is written: the uncompressed body is never held whole.
pub fn encode_compressed(series: &[Series], compression: Compression) -> Result<Body, TooLarge> {
    compress_json(&WirePayload(series), compression)
}

fn compress_json(payload: &impl Serialize, compression: Compression) -> Result<Body, TooLarge> {
    /// Counts what passes through, and refuses to go past Datadog's uncompressed limit.
    struct Counted<W> {
        inner: W,
        bytes: usize,
    }
    impl<W: Write> Write for Counted<W> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.bytes + buf.len() > MAX_RAW_BYTES {
                self.bytes += buf.len();
                return Err(std::io::Error::other("over Datadog's uncompressed limit"));
            }
            let written = self.inner.write(buf)?;
            self.bytes += written;
            Ok(written)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }
    let cut = |raw_bytes| TooLarge { raw_bytes, compressed_bytes: 0 };
    let encoder = compression.encoder(64 * 1024).map_err(|_| cut(0))?;
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, Counted { inner: encoder, bytes: 0 });
    let written = serde_json::to_writer(&mut out, payload).is_ok() && out.flush().is_ok();
    let counted = out.into_inner().map_err(|error| cut(error.into_inner().get_ref().bytes))?;
    let raw_bytes = counted.bytes;
    if !written {
        return Err(cut(raw_bytes));
    }
    let compressed = counted.inner.finish().map_err(|_| cut(raw_bytes))?;
    if compressed.len() > MAX_COMPRESSED_BYTES {
        return Err(TooLarge { raw_bytes, compressed_bytes: compressed.len() });
    }
    Ok(Body { compressed, raw_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_series_as_the_spec_says() {
        let series = [Series {
            metric: "m".into(),
            kind: MetricKind::Gauge,
            unit: Some("second"),
            tags: vec!["a:b".to_owned()].into(),
            points: vec![(10, 1.5)],
        }];
        assert_eq!(
            String::from_utf8(encode_series(&series)).unwrap(),
            r#"{"series":[{"metric":"m","type":3,"points":[{"timestamp":10,"value":1.5}],"tags":["a:b"],"unit":"second"}]}"#
        );
    }

    #[test]
    fn distributions_group_the_values_of_one_timestamp_into_one_point() {
        use std::io::Read;
        let series = [Series {
            metric: "m.distribution".into(),
            kind: MetricKind::Distribution,
            unit: None,
            tags: vec!["a:b".to_owned()].into(),
            points: vec![(10, 1.5), (10, 2.0), (12, 3.0)],
        }];
        let body = encode_distributions(&series, Compression::Deflate).unwrap();
        let mut json = String::new();
        flate2::read::ZlibDecoder::new(&body.compressed[..]).read_to_string(&mut json).unwrap();
        assert_eq!(
            json,
            r#"{"series":[{"metric":"m.distribution","type":"distribution","points":[[10,[1.5,2.0]],[12,[3.0]]],"tags":["a:b"]}]}"#
        );
    }

    #[test]
    fn streamed_bodies_decode_to_the_encoded_json_within_limits() {
        use std::io::Read;
        let series: Vec<Series> = (0..500)
            .map(|index| Series {
                metric: "github.actions.workflow_run.total".into(),
                kind: MetricKind::Count,
                unit: None,
                tags: vec![format!("repository_name:repo-{index}"), "event:push".to_owned()].into(),
                points: vec![(1_700_000_000 + index, 1.0)],
            })
            .collect();
        let json = encode_series(&series);
        for compression in [Compression::Zstd, Compression::Gzip, Compression::Deflate] {
            let body = encode_compressed(&series, compression).unwrap();
            assert_eq!(body.raw_bytes, json.len());
            let mut out = Vec::new();
            match compression {
                Compression::Zstd => out = zstd::decode_all(&body.compressed[..]).unwrap(),
                Compression::Gzip => drop(flate2::read::GzDecoder::new(&body.compressed[..]).read_to_end(&mut out)),
                Compression::Deflate => {
                    drop(flate2::read::ZlibDecoder::new(&body.compressed[..]).read_to_end(&mut out))
                }
            }
            assert_eq!(out, json, "{compression:?}");
        }
        // Over 5,242,880 bytes of JSON: cut short, reported too large.
        let huge: Vec<Series> = (0..40_000).map(|index| series[index % 500].clone()).collect();
        let too_large = encode_compressed(&huge, Compression::Zstd).unwrap_err();
        assert!(too_large.raw_bytes > MAX_RAW_BYTES && too_large.compressed_bytes == 0, "{too_large:?}");
        // Random tags do not compress: over 512,000 bytes compressed, under the raw limit.
        let mut rng = fastrand::Rng::with_seed(1);
        let noisy: Vec<Series> = (0..9_000)
            .map(|_| Series {
                tags: vec![(0..80).map(|_| rng.alphanumeric()).collect::<String>()].into(),
                ..series[0].clone()
            })
            .collect();
        let too_large = encode_compressed(&noisy, Compression::Zstd).unwrap_err();
        assert!(
            too_large.raw_bytes <= MAX_RAW_BYTES && too_large.compressed_bytes > MAX_COMPRESSED_BYTES,
            "{too_large:?}"
        );
    }

    #[test]
    fn compression_round_trips() {
        use std::io::Read;
        let raw = b"{\"series\":[]}".repeat(100);
        let zstd = Compression::Zstd.compress(&raw).unwrap();
        assert_eq!(zstd::decode_all(&zstd[..]).unwrap(), raw);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&Compression::Gzip.compress(&raw).unwrap()[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, raw);
        out.clear();
        flate2::read::ZlibDecoder::new(&Compression::Deflate.compress(&raw).unwrap()[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, raw);
    }
}
