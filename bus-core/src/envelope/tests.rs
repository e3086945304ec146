use super::*;

fn as_bytes(fields: Vec<(Key, Value)>) -> Vec<(Bytes, Bytes)> {
    fields
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::Bytes(b) => b,
                Value::String(s) => s.into_inner(),
                Value::Integer(i) => Bytes::from(i.to_string()),
                other => panic!("unexpected {other:?}"),
            };
            (Bytes::copy_from_slice(k.as_bytes()), v)
        })
        .collect()
}

fn parts<'a>(headers: &'a [(String, String)]) -> Parts<'a> {
    Parts {
        event_id: "0192f3a4-5b6c-7d8e-9f01-23456789abcd",
        event_type: "OrderPlaced",
        published_at_ms: 42,
        codec: Codec::Json,
        payload: b"{}".to_vec(),
        headers,
    }
}

#[test]
fn both_versions_round_trip() {
    let h = vec![("traceparent".to_owned(), "00-abc".to_owned())];
    for version in [EnvelopeVersion::V1, EnvelopeVersion::V2] {
        let fields = as_bytes(encode(version, parts(&h)));
        let env = decode(&fields).expect("decode");
        assert_eq!(env.event_id, "0192f3a4-5b6c-7d8e-9f01-23456789abcd");
        assert_eq!(env.event_type, "OrderPlaced");
        assert_eq!(env.published_at_ms, 42);
        assert_eq!(env.codec, Codec::Json);
        assert_eq!(&env.payload[..], b"{}");
        assert_eq!(env.headers, h);
        assert_eq!(
            identify(&fields),
            (
                Some("0192f3a4-5b6c-7d8e-9f01-23456789abcd".to_owned()),
                Some("OrderPlaced".to_owned())
            )
        );
    }
}

fn names(fields: &[(Key, Value)]) -> Vec<String> {
    fields
        .iter()
        .map(|(k, _)| k.as_str_lossy().into_owned())
        .collect()
}

#[test]
fn version_two_is_one_field_and_version_one_six() {
    let v2 = encode(EnvelopeVersion::V2, parts(&[]));
    assert_eq!(names(&v2), ["e"]);
    let v1 = encode(EnvelopeVersion::V1, parts(&[]));
    assert_eq!(names(&v1), ["v", "id", "type", "ts", "ct", "p"]);
    assert_eq!(EnvelopeVersion::default(), EnvelopeVersion::V2);
    let fields = as_bytes(v2);
    assert_eq!(
        &fields[0].1[..],
        b"2 0192f3a4-5b6c-7d8e-9f01-23456789abcd 42 json OrderPlaced\n{}"
    );
}

#[test]
fn a_type_name_may_contain_spaces_in_version_two() {
    let mut p = parts(&[]);
    p.event_type = "Order Placed v2";
    let env = decode(&as_bytes(encode(EnvelopeVersion::V2, p))).expect("decode");
    assert_eq!(env.event_type, "Order Placed v2");
}

#[test]
fn a_type_name_with_a_line_feed_is_written_as_version_one() {
    let mut p = parts(&[]);
    p.event_type = "Order\nPlaced";
    let fields = encode(EnvelopeVersion::V2, p);
    assert_eq!(names(&fields)[0], "v");
    let env = decode(&as_bytes(fields)).expect("decode");
    assert_eq!(env.event_type, "Order\nPlaced");
}

#[test]
fn payloads_may_hold_line_feeds_and_be_empty() {
    for payload in [b"a\nb\n".to_vec(), Vec::new(), vec![b'\n'; 3]] {
        let mut p = parts(&[]);
        p.payload = payload.clone();
        let env = decode(&as_bytes(encode(EnvelopeVersion::V2, p))).expect("decode");
        assert_eq!(&env.payload[..], &payload[..]);
    }
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    /// Field names the decoder knows, plus anything else.
    fn name() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"v".to_vec()),
            Just(b"id".to_vec()),
            Just(b"type".to_vec()),
            Just(b"ts".to_vec()),
            Just(b"ct".to_vec()),
            Just(b"p".to_vec()),
            Just(b"to".to_vec()),
            Just(b"h:x".to_vec()),
            Just(b"e".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..12),
        ]
    }

    /// Values: the expected ones, invalid UTF-8, numbers out of range, large blobs.
    fn value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"1".to_vec()),
            Just(b"msgpack".to_vec()),
            Just(b"json".to_vec()),
            Just(b"2 id 1 msgpack T\n\x80".to_vec()),
            Just(b"2 id 1 msgpack T".to_vec()),
            Just(b"2 id x json T\n{}".to_vec()),
            Just(b"2 id 1 json\n{}".to_vec()),
            Just(b"3 id 1 json T\n{}".to_vec()),
            Just(b"2  1 json T\n{}".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"99999999999999999999999".to_vec()),
            Just(vec![0xff, 0xfe, 0xfd]),
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::collection::vec(any::<u8>(), 0..8_000),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Never a panic: an envelope or a typed decode error, and a decodable envelope's
        /// payload never panics the codecs either.
        #[test]
        fn any_field_map_decodes_or_is_a_typed_error(
            fields in proptest::collection::vec((name(), value()), 0..16)
        ) {
            let fields: Vec<(Bytes, Bytes)> = fields
                .into_iter()
                .map(|(k, v)| (Bytes::from(k), Bytes::from(v)))
                .collect();
            let _ = addressed_to(&fields);
            match decode(&fields) {
                Ok(env) => {
                    let r = env.codec.decode::<serde_json::Value>(&env.payload);
                    prop_assert!(r.is_ok() || matches!(r, Err(Error::Decode(_))));
                }
                Err(e) => prop_assert!(matches!(e, Error::Decode(_)), "{e:?}"),
            }
        }

        /// Payloads of any bytes, and deeply nested ones, never panic either codec.
        #[test]
        fn any_payload_is_a_value_or_a_decode_error(
            payload in proptest::collection::vec(any::<u8>(), 0..512),
            depth in 0usize..5000,
        ) {
            for codec in [Codec::MessagePack, Codec::Json] {
                let r = codec.decode::<serde_json::Value>(&payload);
                prop_assert!(r.is_ok() || matches!(r, Err(Error::Decode(_))));
            }
            let mut nested = vec![0x91u8; depth];
            nested.push(0xc0);
            let r = Codec::MessagePack.decode::<serde_json::Value>(&nested);
            prop_assert!(r.is_ok() || matches!(r, Err(Error::Decode(_))));
            let json = "[".repeat(depth) + &"]".repeat(depth);
            let r = Codec::Json.decode::<serde_json::Value>(json.as_bytes());
            prop_assert!(r.is_ok() || matches!(r, Err(Error::Decode(_))));
        }
    }
}

#[test]
fn foreign_entries_are_decode_errors() {
    let e = |v: &'static [u8]| vec![(Bytes::from_static(b"e"), Bytes::from_static(v))];
    let cases: Vec<Vec<(Bytes, Bytes)>> = vec![
        vec![],
        vec![(Bytes::from_static(b"foo"), Bytes::from_static(b"bar"))],
        vec![(Bytes::from_static(b"v"), Bytes::from_static(b"99"))],
        // Version 2 without the line feed, of another version, with an unknown codec, with an
        // id that is not UTF-8, with an empty part, with a time that is not a number.
        e(b"2 id 1 json T"),
        e(b"3 id 1 json T\n{}"),
        e(b"2 id 1 xml T\n{}"),
        e(b"2 \xff 1 json T\n{}"),
        e(b"2 id  json T\n{}"),
        e(b"2 id x json T\n{}"),
        vec![
            (Bytes::from_static(b"v"), Bytes::from_static(b"1")),
            (Bytes::from_static(b"id"), Bytes::from_static(&[0xff, 0xfe])),
        ],
    ];
    for c in cases {
        assert!(matches!(decode(&c), Err(Error::Decode(_))), "{c:?}");
    }
}
