//! Property tests: arbitrary bytes fed to every reader of untrusted input
//! (a repository's manifests, chunks and capture segments; a server's
//! packets, messages, rows and binlog events). Each must answer with a
//! value or an error, never panic, and never hand out more than the bound
//! it was given.

use std::collections::HashMap;

use proptest::prelude::*;
use tokio::io::AsyncWriteExt;

use crate::capture::{load_segment, SegmentMeta};
use crate::dump::chunk::{compress, decompress_bounded, RowDigest};
use crate::engine::mysql::replay::next_event;
use crate::engine::mysql::value::decode_line;
use crate::engine::mysql::wire::binary::{column_def, encode_row, encode_text_row};
use crate::engine::mysql::wire::handshake::parse_greeting;
use crate::engine::mysql::wire::packet::PacketStream;
use crate::engine::postgres::binary_copy::{BinaryCopy, Column};
use crate::engine::postgres::binary_load::BinaryLoad;
use crate::engine::postgres::replay::{describe, next_record, Reader};
use crate::engine::postgres::wire::frame::{header, Frames};
use crate::manifest::{Manifest, Mark, ShardManifest};
use crate::position::Position;
use crate::repo::{MemoryRepository, Repository};
use crate::tls::Stream;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

/// Bytes that look like a zstd frame more often than chance would have it:
/// a real frame of some data, cut and with a few bytes flipped.
fn damaged_frame() -> impl Strategy<Value = Vec<u8>> {
    (bytes(4096), any::<usize>(), bytes(8), any::<u16>()).prop_map(|(data, cut, flips, at)| {
        let mut f = compress(&data, topology::Compression::Zstd(1)).unwrap_or_default();
        if !f.is_empty() {
            f.truncate(cut % (f.len() + 1));
        }
        for (i, b) in flips.iter().enumerate() {
            if !f.is_empty() {
                let n = f.len();
                f[(usize::from(at) + i * 7) % n] ^= b;
            }
        }
        f
    })
}

/// Serves `data` to one client on loopback, then closes.
fn serve_bytes(rt: &tokio::runtime::Runtime, data: Vec<u8>) -> std::net::SocketAddr {
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            if let Ok((mut s, _)) = l.accept().await {
                drop(s.write_all(&data).await);
                drop(s.shutdown().await);
            }
        });
        addr
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn manifests_marks_and_segment_descriptions_parse_or_refuse(data in bytes(2048)) {
        drop(serde_json::from_slice::<Manifest>(&data));
        drop(serde_json::from_slice::<ShardManifest>(&data));
        drop(serde_json::from_slice::<Mark>(&data));
        drop(serde_json::from_slice::<SegmentMeta>(&data));
        drop(serde_json::from_slice::<Position>(&data));
    }

    #[test]
    fn chunks_decompress_within_their_declared_size(
        data in prop_oneof![bytes(4096), damaged_frame()],
        limit in 0u64..65536,
    ) {
        if let Ok(out) = decompress_bounded(&data, limit) {
            prop_assert!(out.len() as u64 <= limit);
        }
    }

    #[test]
    fn capture_segments_load_or_are_refused_by_name(
        stored in prop_oneof![bytes(2048), damaged_frame()],
        raw_size in 0u64..65536,
    ) {
        let repo = MemoryRepository::default();
        let key = "capture/s/binlog/0000000000000000.zst";
        repo.put(key, &stored).expect("put");
        let pos = Position::Postgres {
            lsn: crate::position::Lsn(0),
        };
        // The checksum matches the stored bytes: only the content is hostile.
        let meta = SegmentMeta {
            key: key.into(),
            transactions: 1,
            bytes_raw: raw_size,
            bytes_stored: stored.len() as u64,
            xxh3: crate::checksum::xxh3_hex(&stored),
            raw_xxh3: "0".into(),
            ..SegmentMeta::unstored(("s", "binlog"), (0, 0), pos.clone(), pos)
        };
        match load_segment(&repo, &meta) {
            Ok(raw) => prop_assert!(raw.len() as u64 <= raw_size),
            Err(e) => prop_assert!(e.to_string().contains(key), "{e}"),
        }
    }

    #[test]
    fn mysql_greetings_column_definitions_and_rows_decode_or_refuse(
        greeting in bytes(512),
        defs in proptest::collection::vec(bytes(128), 0..6),
        row in bytes(1024),
    ) {
        drop(parse_greeting(&greeting));
        let cols: Vec<_> = defs.iter().filter_map(|d| column_def(d).ok()).collect();
        let mut out = Vec::new();
        if encode_row(&mut out, &row, &cols).is_ok() {
            // A row's line is built from the payload's own bytes (escaped
            // at most twofold) and each column's text form.
            prop_assert!(out.len() <= 2 * row.len() + 64 * (cols.len() + 1));
        }
        // The same payload as a text-protocol row, over the columns that
        // may be read as text.
        let text: Vec<_> = cols.iter().copied().filter(|c| c.text_exact()).collect();
        out.clear();
        if encode_text_row(&mut out, &row, &text).is_ok() {
            prop_assert!(out.len() <= 2 * row.len() + 64 * (text.len() + 1));
        }
    }

    #[test]
    fn postgres_binary_copy_streams_hash_rows_or_refuse(
        kinds in proptest::collection::vec(0usize..10, 1..6),
        data in bytes(4096),
        cut in any::<usize>(),
        header in any::<bool>(),
    ) {
        use Column::*;
        let all = [Int2, Int4, Int8, Bool, Text, Numeric, Date, Timestamp, TimestampTz, Text];
        let columns: Vec<Column> = kinds.iter().map(|k| all[*k]).collect();
        // Half the streams start with a valid header, so that the tuples
        // after it are parsed too.
        let mut stream = Vec::new();
        if header {
            stream.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
            stream.extend_from_slice(&[0; 8]);
        }
        stream.extend_from_slice(&data);
        let cut = cut % (stream.len() + 1);
        let mut digest = RowDigest::default();
        let mut parser = BinaryCopy::new(columns);
        let fed = parser
            .feed(&mut digest, &stream[..cut])
            .and_then(|()| parser.feed(&mut digest, &stream[cut..]))
            .and_then(|()| parser.finish());
        // Every row takes its field count and a length per field at least.
        prop_assert!(digest.rows as usize <= stream.len() / 6);
        drop(fed);
    }

    /// A chunk's text, turned into binary tuples for a load: mostly the
    /// bytes COPY text is made of, so that whole lines get through too.
    #[test]
    fn postgres_chunk_lines_turn_into_tuples_or_refuse(
        kinds in proptest::collection::vec(0usize..9, 1..6),
        text in proptest::collection::vec(
            prop_oneof![
                4 => proptest::sample::select(b"0123456789-.: \t\n\\NBCtfnr+a\xc3\xa9".to_vec()),
                1 => any::<u8>(),
            ],
            0..2048,
        ),
    ) {
        let columns: Vec<Column> = kinds.iter().map(|k| Column::ALL[*k]).collect();
        let width = columns.len();
        let load = BinaryLoad::new(columns).expect("1 to 5 columns");
        let mut out = Vec::new();
        if let Ok(lines) = load.rows(&text, 1, &mut out) {
            // Per field at most its length word, an 8-byte value or a
            // numeric's header and a group more than its text.
            prop_assert!(out.len() <= lines * (2 + 16 * width) + text.len());
            prop_assert_eq!(lines, memchr::memchr_iter(b'\n', &text).count() + usize::from(!text.ends_with(b"\n") && !text.is_empty()));
        }
    }

    #[test]
    fn canonical_lines_split_back_into_fields(line in bytes(1024)) {
        let fields = decode_line(&line);
        prop_assert!(fields.len() <= line.len() + 1);
    }

    #[test]
    fn binlog_segments_split_into_events_or_refuse(data in bytes(4096)) {
        let mut reader = mysql_common::binlog::EventStreamReader::new(
            mysql_async::binlog::BinlogVersion::Version4,
        );
        let mut rest = &data[..];
        while rest.len() >= 19 {
            match next_event(rest) {
                Ok((event, after)) => {
                    prop_assert!(event.len() >= 19 && event.len() <= rest.len());
                    drop(reader.read(event));
                    rest = after;
                }
                Err(_) => break,
            }
        }
    }

    #[test]
    fn pgoutput_segments_split_into_records_and_messages_or_refuse(data in bytes(4096)) {
        let mut at = 0;
        let mut relations = HashMap::new();
        while at < data.len() {
            let Some((_, message, next)) = next_record(&data, at) else {
                break;
            };
            prop_assert!(next > at && next <= data.len());
            at = next;
            let mut r = Reader::new(message, 1);
            match message.first() {
                Some(b'R') => drop(describe(&mut r, &mut relations)),
                Some(_) => drop(r.tuple()),
                None => {}
            }
        }
    }

    #[test]
    fn postgres_message_headers_refuse_impossible_lengths(h in proptest::array::uniform5(any::<u8>())) {
        if let Ok((_, len)) = header(&h) {
            prop_assert!(len <= 1 << 30);
        }
    }
}

proptest! {
    // Each case opens a loopback connection: fewer of them.
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn mysql_packet_streams_from_a_hostile_server_end_in_an_error(data in bytes(4096)) {
        let rt = runtime();
        let addr = serve_bytes(&rt, data);
        rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let mut p = PacketStream::new(Stream::Plain(tcp));
            // Sequence numbers are the server's too: follow what it sends.
            for _ in 0..10_000 {
                if p.read().await.is_err() {
                    break;
                }
            }
        });
    }

    #[test]
    fn postgres_message_streams_from_a_hostile_server_end_in_an_error(data in bytes(4096)) {
        let rt = runtime();
        let addr = serve_bytes(&rt, data);
        rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let mut f = Frames::new(Stream::Plain(tcp));
            for _ in 0..10_000 {
                if f.advance().await.is_err() {
                    break;
                }
            }
        });
    }
}

/// A stream state or segment description far larger than any shardcut
/// writes (planted in the repository) is refused by its size, naming it,
/// before anything parses it: `list_segments` reads every description of
/// a stream, and every capture, status and restore reads the states.
#[test]
fn oversized_capture_documents_are_refused_by_size() {
    use crate::capture::{keys, list_segments, CaptureError, StreamState, DOCUMENT_MAX};
    let repo = MemoryRepository::default();
    let planted = vec![b' '; usize::try_from(DOCUMENT_MAX).unwrap() + 1];
    let description = format!("{}g000001-000001.json", keys::segments("s", "app"));
    repo.put(&description, &planted).unwrap();
    repo.put(&keys::state("s", "app"), &planted).unwrap();
    for (key, err) in [
        (
            description.clone(),
            list_segments(&repo, "s", "app").unwrap_err(),
        ),
        (
            keys::state("s", "app"),
            StreamState::load(&repo, "s", "app").unwrap_err(),
        ),
    ] {
        match &err {
            CaptureError::Corrupt { key: k, what } => {
                assert_eq!(k, &key);
                assert!(what.contains("not read"), "{what}");
            }
            other => panic!("{key}: {other}"),
        }
    }
}
