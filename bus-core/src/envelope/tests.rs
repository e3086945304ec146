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

#[test]
fn version_two_is_two_fields_and_version_one_six() {
    let names = |version| -> Vec<String> {
        encode(version, parts(&[]))
            .into_iter()
            .map(|(k, _)| k.as_str_lossy().into_owned())
            .collect()
    };
    assert_eq!(names(EnvelopeVersion::V2), ["e", "p"]);
    assert_eq!(
        names(EnvelopeVersion::V1),
        ["v", "id", "type", "ts", "ct", "p"]
    );
    assert_eq!(EnvelopeVersion::default(), EnvelopeVersion::V2);
    let fields = as_bytes(encode(EnvelopeVersion::V2, parts(&[])));
    assert_eq!(
        &fields[0].1[..],
        b"2 0192f3a4-5b6c-7d8e-9f01-23456789abcd 42 json OrderPlaced"
    );
}

#[test]
fn a_type_name_may_contain_spaces_in_version_two() {
    let mut p = parts(&[]);
    p.event_type = "Order Placed v2";
    let env = decode(&as_bytes(encode(EnvelopeVersion::V2, p))).expect("decode");
    assert_eq!(env.event_type, "Order Placed v2");
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
            Just(b"2 id 1 msgpack T".to_vec()),
            Just(b"2 id x json T".to_vec()),
            Just(b"2 id 1 json".to_vec()),
            Just(b"3 id 1 json T".to_vec()),
            Just(b"2  1 json T".to_vec()),
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
    let cases: Vec<Vec<(Bytes, Bytes)>> = vec![
        vec![],
        vec![(Bytes::from_static(b"foo"), Bytes::from_static(b"bar"))],
        vec![(Bytes::from_static(b"v"), Bytes::from_static(b"99"))],
        vec![(
            Bytes::from_static(b"e"),
            Bytes::from_static(b"2 id 1 json T"),
        )],
        vec![
            (
                Bytes::from_static(b"e"),
                Bytes::from_static(b"3 id 1 json T"),
            ),
            (Bytes::from_static(b"p"), Bytes::from_static(b"{}")),
        ],
        vec![
            (
                Bytes::from_static(b"e"),
                Bytes::from_static(b"2 id 1 xml T"),
            ),
            (Bytes::from_static(b"p"), Bytes::from_static(b"{}")),
        ],
        vec![
            (
                Bytes::from_static(b"e"),
                Bytes::from_static(&[
                    b'2', b' ', 0xff, b' ', b'1', b' ', b'j', b's', b'o', b'n', b' ', b'T',
                ]),
            ),
            (Bytes::from_static(b"p"), Bytes::from_static(b"{}")),
        ],
        vec![
            (Bytes::from_static(b"v"), Bytes::from_static(b"1")),
            (Bytes::from_static(b"id"), Bytes::from_static(&[0xff, 0xfe])),
        ],
    ];
    for c in cases {
        assert!(matches!(decode(&c), Err(Error::Decode(_))), "{c:?}");
    }
}
