//! Handshake, framing and authentication behaviour of `Session`, through the public API only.

use std::net::{Ipv4Addr, SocketAddrV4};

use baton_proto::frame::{self, HEADER_LEN, MAX_PAYLOAD_LEN, TAG_LEN};
use baton_proto::{
    BusyReason, Event, HandoffRequest, MAX_NODE_NAME_LEN, MAX_TCP_OPTIONS_LEN, Message, Nonce,
    ProtoError, RefuseReason, Session,
};
use proptest::prelude::*;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
const DIALER_NONCE: Nonce = [0xd1; 16];
const ACCEPTOR_NONCE: Nonce = [0xa7; 16];

/// An established (dialer, acceptor) pair.
fn pair_with(key: &[u8], dialer_nonce: Nonce, acceptor_nonce: Nonce) -> (Session, Session) {
    let (mut dialer, hello) = Session::dialer(key, "dialer-node", dialer_nonce).unwrap();
    let mut acceptor = Session::acceptor(key, "acceptor-node", acceptor_nonce).unwrap();
    let events = acceptor.feed(&hello).unwrap();
    let [Event::Send(hello_ack), Event::Established { peer_name }] = events.as_slice() else {
        panic!("acceptor events: {events:?}");
    };
    assert_eq!(peer_name, "dialer-node");
    let events = dialer.feed(hello_ack).unwrap();
    assert_eq!(
        events,
        vec![Event::Established {
            peer_name: "acceptor-node".to_owned()
        }]
    );
    (dialer, acceptor)
}

fn pair() -> (Session, Session) {
    pair_with(KEY, DIALER_NONCE, ACCEPTOR_NONCE)
}

fn sample_messages() -> Vec<Message> {
    let mut messages = vec![
        Message::HandoffRequest(HandoffRequest {
            id: 7,
            client: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 40000),
            fe_service: SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 80),
            fe_isn: 0xdead_beef,
            fe_tsval: 12345,
            fe_synack_options: vec![
                2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
            ],
            fe_ecn: true,
            syn: vec![0x45; 60],
            segment: vec![0x45; 52],
            data: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            fin: false,
            follow: true,
        }),
        Message::MoveQuiesce {
            id: 7,
            attempt: 8,
            requests: 3,
            segment: vec![0x45; 52],
        },
        Message::MoveQuiet { id: 7, attempt: 8 },
        Message::MoveRelease { id: 7, attempt: 8 },
        Message::MoveResume {
            id: 7,
            attempt: 8,
            segment: vec![0x45; 52],
            data: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        },
        Message::MoveResume {
            id: 7,
            attempt: 9,
            segment: vec![],
            data: vec![],
        },
        Message::HandoffAccepted { id: 7 },
        Message::HandoffAbort { id: u64::MAX },
        Message::ConnClosed { id: 0 },
        Message::DispatchQuery {
            id: 9,
            target: "/img/a.jpg?size=2".into(),
        },
        Message::DispatchAnswer { id: 9, node: 3 },
        Message::Draining,
        Message::NodeStatus {
            drained: true,
            config_digest: 0x0123_4567_89ab_cdef,
        },
        Message::NodeStatus {
            drained: false,
            config_digest: 0,
        },
        Message::Heartbeat {
            load: 3,
            sent_at_ms: 1_700_000_000_000,
            serving: true,
        },
        Message::Capabilities {
            datapath_offers: true,
            followed_offers: true,
        },
        Message::Capabilities {
            datapath_offers: true,
            followed_offers: false,
        },
        Message::Capabilities {
            datapath_offers: false,
            followed_offers: false,
        },
    ];
    messages.extend(RefuseReason::ALL.map(|reason| Message::HandoffRefused { id: 9, reason }));
    messages.extend(BusyReason::ALL.map(|reason| Message::MoveBusy {
        id: 9,
        attempt: 10,
        reason,
    }));
    messages
}

fn message_strategy() -> impl Strategy<Value = Message> {
    let addr =
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddrV4::new(ip.into(), port));
    let bytes = |max: usize| proptest::collection::vec(any::<u8>(), 0..=max);
    prop_oneof![
        (
            any::<u64>(),
            addr.clone(),
            addr,
            any::<u32>(),
            any::<u32>(),
            bytes(MAX_TCP_OPTIONS_LEN),
            (any::<bool>(), any::<bool>(), any::<bool>()),
            (bytes(200), bytes(200), bytes(300))
        )
            .prop_map(
                |(
                    id,
                    client,
                    fe_service,
                    fe_isn,
                    fe_tsval,
                    fe_synack_options,
                    (fe_ecn, fin, follow),
                    (syn, segment, data),
                )| {
                    Message::HandoffRequest(HandoffRequest {
                        id,
                        client,
                        fe_service,
                        fe_isn,
                        fe_tsval,
                        fe_synack_options,
                        fe_ecn,
                        syn,
                        segment,
                        data,
                        fin,
                        follow,
                    })
                }
            ),
        (any::<u64>(), any::<u64>(), any::<u32>(), bytes(200)).prop_map(
            |(id, attempt, requests, segment)| Message::MoveQuiesce {
                id,
                attempt,
                requests,
                segment,
            }
        ),
        (any::<u64>(), any::<u64>()).prop_map(|(id, attempt)| Message::MoveQuiet { id, attempt }),
        (
            any::<u64>(),
            any::<u64>(),
            proptest::sample::select(BusyReason::ALL.to_vec())
        )
            .prop_map(|(id, attempt, reason)| Message::MoveBusy {
                id,
                attempt,
                reason
            }),
        (any::<u64>(), any::<u64>()).prop_map(|(id, attempt)| Message::MoveRelease { id, attempt }),
        (any::<u64>(), any::<u64>(), bytes(100), bytes(300)).prop_map(
            |(id, attempt, segment, data)| Message::MoveResume {
                id,
                attempt,
                segment,
                data
            }
        ),
        (any::<bool>(), any::<bool>()).prop_map(|(datapath_offers, followed_offers)| {
            Message::Capabilities {
                datapath_offers,
                followed_offers,
            }
        }),
        any::<u64>().prop_map(|id| Message::HandoffAccepted { id }),
        (
            any::<u64>(),
            proptest::sample::select(RefuseReason::ALL.to_vec())
        )
            .prop_map(|(id, reason)| Message::HandoffRefused { id, reason }),
        any::<u64>().prop_map(|id| Message::HandoffAbort { id }),
        (any::<u64>(), "\\PC{0,200}")
            .prop_map(|(id, target)| Message::DispatchQuery { id, target }),
        (any::<u64>(), any::<u16>()).prop_map(|(id, node)| Message::DispatchAnswer { id, node }),
        any::<u64>().prop_map(|id| Message::ConnClosed { id }),
        (any::<bool>(), any::<u64>()).prop_map(|(drained, config_digest)| {
            Message::NodeStatus {
                drained,
                config_digest,
            }
        }),
        (any::<u32>(), any::<u64>(), any::<bool>()).prop_map(|(load, sent_at_ms, serving)| {
            Message::Heartbeat {
                load,
                sent_at_ms,
                serving,
            }
        }),
    ]
}

/// Feeds `bytes` into `session` in the given pieces and collects all events.
fn feed_pieces(
    session: &mut Session,
    bytes: &[u8],
    cuts: &[usize],
) -> Result<Vec<Event>, ProtoError> {
    let mut events = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
        events.extend(session.feed(&bytes[start..cut])?);
        start = cut;
    }
    Ok(events)
}

#[test]
fn messages_flow_both_ways() {
    let (mut dialer, mut acceptor) = pair();
    for message in sample_messages() {
        let bytes = dialer.encode(&message).unwrap();
        assert_eq!(
            acceptor.feed(&bytes).unwrap(),
            vec![Event::Message(message.clone())]
        );
        let bytes = acceptor.encode(&message).unwrap();
        assert_eq!(dialer.feed(&bytes).unwrap(), vec![Event::Message(message)]);
    }
    assert_eq!(dialer.peer_name(), Some("acceptor-node"));
    assert_eq!(acceptor.peer_name(), Some("dialer-node"));
}

#[test]
fn acceptor_messages_may_arrive_with_the_hello_ack() {
    let (mut dialer, hello) = Session::dialer(KEY, "d", DIALER_NONCE).unwrap();
    let mut acceptor = Session::acceptor(KEY, "a", ACCEPTOR_NONCE).unwrap();
    let events = acceptor.feed(&hello).unwrap();
    let Event::Send(mut stream) = events[0].clone() else {
        panic!("{events:?}")
    };
    stream.extend(
        acceptor
            .encode(&Message::HandoffAccepted { id: 1 })
            .unwrap(),
    );
    stream.extend(acceptor.encode(&Message::ConnClosed { id: 1 }).unwrap());
    assert_eq!(
        dialer.feed(&stream).unwrap(),
        vec![
            Event::Established {
                peer_name: "a".to_owned()
            },
            Event::Message(Message::HandoffAccepted { id: 1 }),
            Event::Message(Message::ConnClosed { id: 1 }),
        ]
    );
}

#[test]
fn every_split_of_the_handshake_and_a_message_decodes_identically() {
    let (dialer, hello) = Session::dialer(KEY, "d", DIALER_NONCE).unwrap();
    drop(dialer);
    let whole = Session::acceptor(KEY, "a", ACCEPTOR_NONCE)
        .unwrap()
        .feed(&hello)
        .unwrap();
    for cut in 0..=hello.len() {
        let mut acceptor = Session::acceptor(KEY, "a", ACCEPTOR_NONCE).unwrap();
        assert_eq!(
            feed_pieces(&mut acceptor, &hello, &[cut]).unwrap(),
            whole,
            "cut at {cut}"
        );
    }

    let message = sample_messages().remove(0);
    let (mut dialer, _) = pair();
    let bytes = dialer.encode(&message).unwrap();
    for cut in 0..=bytes.len() {
        let (_, mut acceptor) = pair();
        assert_eq!(
            feed_pieces(&mut acceptor, &bytes, &[cut]).unwrap(),
            vec![Event::Message(message.clone())],
            "cut at {cut}"
        );
    }
}

#[test]
fn byte_by_byte_feeding_decodes_a_stream() {
    let (mut dialer, mut acceptor) = pair();
    let messages = sample_messages();
    let stream: Vec<u8> = messages
        .iter()
        .flat_map(|m| dialer.encode(m).unwrap())
        .collect();
    let cuts: Vec<usize> = (1..stream.len()).collect();
    let events = feed_pieces(&mut acceptor, &stream, &cuts).unwrap();
    let expected: Vec<Event> = messages.into_iter().map(Event::Message).collect();
    assert_eq!(events, expected);
}

#[test]
fn replayed_frame_is_rejected_and_kills_the_session() {
    let (mut dialer, mut acceptor) = pair();
    let bytes = dialer.encode(&Message::HandoffAccepted { id: 1 }).unwrap();
    acceptor.feed(&bytes).unwrap();
    assert_eq!(
        acceptor.feed(&bytes),
        Err(ProtoError::Replay {
            expected: 2,
            got: 1
        })
    );
    assert_eq!(acceptor.feed(&bytes).unwrap_err().kind(), "closed");
    assert!(acceptor.is_dead());
}

#[test]
fn older_frame_is_a_replay_and_skipped_frame_a_bad_counter() {
    let (mut dialer, mut acceptor) = pair();
    let first = dialer.encode(&Message::ConnClosed { id: 1 }).unwrap();
    let second = dialer.encode(&Message::ConnClosed { id: 2 }).unwrap();
    acceptor.feed(&first).unwrap();
    acceptor.feed(&second).unwrap();
    assert_eq!(
        acceptor.feed(&first),
        Err(ProtoError::Replay {
            expected: 3,
            got: 1
        })
    );

    let (mut dialer, mut acceptor) = pair();
    let _lost = dialer.encode(&Message::ConnClosed { id: 1 }).unwrap();
    let second = dialer.encode(&Message::ConnClosed { id: 2 }).unwrap();
    assert_eq!(
        acceptor.feed(&second),
        Err(ProtoError::BadCounter {
            expected: 1,
            got: 2
        })
    );
}

#[test]
fn replayed_hello_after_the_handshake_is_rejected() {
    let (dialer, hello) = Session::dialer(KEY, "d", DIALER_NONCE).unwrap();
    drop(dialer);
    let mut acceptor = Session::acceptor(KEY, "a", ACCEPTOR_NONCE).unwrap();
    acceptor.feed(&hello).unwrap();
    // It is tagged with the cluster key, not the session key.
    assert_eq!(acceptor.feed(&hello), Err(ProtoError::Forged));
}

#[test]
fn frame_from_another_session_is_forged() {
    let (mut dialer_one, _) = pair_with(KEY, DIALER_NONCE, ACCEPTOR_NONCE);
    let (_, mut acceptor_two) = pair_with(KEY, [1; 16], ACCEPTOR_NONCE);
    let bytes = dialer_one
        .encode(&Message::HandoffAccepted { id: 1 })
        .unwrap();
    assert_eq!(acceptor_two.feed(&bytes), Err(ProtoError::Forged));
}

#[test]
fn frame_reflected_to_its_sender_is_forged() {
    let (mut dialer, _) = pair();
    let bytes = dialer.encode(&Message::HandoffAccepted { id: 1 }).unwrap();
    assert_eq!(dialer.feed(&bytes), Err(ProtoError::Forged));
}

#[test]
fn hello_ack_cannot_answer_another_hello() {
    let (_, hello) = Session::dialer(KEY, "d", DIALER_NONCE).unwrap();
    let mut acceptor = Session::acceptor(KEY, "a", ACCEPTOR_NONCE).unwrap();
    let events = acceptor.feed(&hello).unwrap();
    let Event::Send(hello_ack) = &events[0] else {
        panic!("{events:?}")
    };
    let (mut other_dialer, _) = Session::dialer(KEY, "d", [2; 16]).unwrap();
    assert_eq!(other_dialer.feed(hello_ack), Err(ProtoError::Forged));
}

#[test]
fn wrong_cluster_key_fails_the_handshake() {
    let other_key = b"fedcba9876543210fedcba9876543210";
    let (_, hello) = Session::dialer(other_key, "d", DIALER_NONCE).unwrap();
    let mut acceptor = Session::acceptor(KEY, "a", ACCEPTOR_NONCE).unwrap();
    let error = acceptor.feed(&hello).unwrap_err();
    assert_eq!(error, ProtoError::Forged);
    assert_eq!(error.kind(), "forged");
    assert!(!acceptor.is_established());

    let (_, right_hello) = Session::dialer(KEY, "d", DIALER_NONCE).unwrap();
    let mut acceptor = Session::acceptor(KEY, "a", ACCEPTOR_NONCE).unwrap();
    let Event::Send(hello_ack) = acceptor.feed(&right_hello).unwrap().remove(0) else {
        panic!()
    };
    let (mut wrong_dialer, _) = Session::dialer(other_key, "d", DIALER_NONCE).unwrap();
    assert_eq!(wrong_dialer.feed(&hello_ack), Err(ProtoError::Forged));
}

#[test]
fn messages_before_the_handshake_are_refused() {
    let (mut dialer, _) = Session::dialer(KEY, "d", DIALER_NONCE).unwrap();
    assert_eq!(
        dialer.encode(&Message::HandoffAccepted { id: 1 }),
        Err(ProtoError::NotEstablished)
    );
    let mut acceptor = Session::acceptor(KEY, "a", ACCEPTOR_NONCE).unwrap();
    assert_eq!(
        acceptor.encode(&Message::HandoffAccepted { id: 1 }),
        Err(ProtoError::NotEstablished)
    );
    // A dialer's Hello fed to a dialer is not the HelloAck it waits for.
    let (_, hello) = Session::dialer(KEY, "x", DIALER_NONCE).unwrap();
    assert_eq!(dialer.feed(&hello), Err(ProtoError::Forged));
}

#[test]
fn bad_configuration_is_a_typed_error() {
    assert_eq!(
        Session::dialer(b"short", "d", DIALER_NONCE).unwrap_err(),
        ProtoError::InvalidKey
    );
    assert_eq!(
        Session::acceptor(b"", "a", ACCEPTOR_NONCE).unwrap_err(),
        ProtoError::InvalidKey
    );
    assert_eq!(
        Session::dialer(KEY, "", DIALER_NONCE).unwrap_err(),
        ProtoError::InvalidNodeName
    );
    let long = "n".repeat(MAX_NODE_NAME_LEN + 1);
    assert_eq!(
        Session::acceptor(KEY, &long, ACCEPTOR_NONCE).unwrap_err(),
        ProtoError::InvalidNodeName
    );
    let longest = "n".repeat(MAX_NODE_NAME_LEN);
    assert!(Session::dialer(KEY, &longest, DIALER_NONCE).is_ok());
}

#[test]
fn oversized_fields_are_refused_without_advancing_the_counter() {
    let (mut dialer, mut acceptor) = pair();
    let mut request = sample_messages().remove(0);
    if let Message::HandoffRequest(HandoffRequest {
        fe_synack_options, ..
    }) = &mut request
    {
        *fe_synack_options = vec![1; MAX_TCP_OPTIONS_LEN + 1];
    }
    assert!(matches!(
        dialer.encode(&request),
        Err(ProtoError::FieldTooLong {
            field: "fe_synack_options",
            len: 41,
            max: 40
        })
    ));
    if let Message::HandoffRequest(HandoffRequest {
        fe_synack_options,
        syn,
        ..
    }) = &mut request
    {
        fe_synack_options.clear();
        *syn = vec![0; usize::from(u16::MAX) + 1];
    }
    assert!(matches!(
        dialer.encode(&request),
        Err(ProtoError::FieldTooLong { field: "syn", .. })
    ));
    // The failed encodes used no counter: the next frame is still number 1.
    let bytes = dialer.encode(&Message::HandoffAbort { id: 3 }).unwrap();
    assert_eq!(
        acceptor.feed(&bytes).unwrap(),
        vec![Event::Message(Message::HandoffAbort { id: 3 })]
    );
}

#[test]
fn largest_packets_fit_in_one_frame() {
    let (mut dialer, mut acceptor) = pair();
    let mut request = sample_messages().remove(0);
    if let Message::HandoffRequest(HandoffRequest {
        syn,
        segment,
        data,
        fe_synack_options,
        ..
    }) = &mut request
    {
        *syn = vec![0x45; usize::from(u16::MAX)];
        *segment = vec![0x45; usize::from(u16::MAX)];
        *data = vec![b'x'; baton_proto::MAX_HANDOFF_DATA_LEN];
        *fe_synack_options = vec![1; MAX_TCP_OPTIONS_LEN];
    }
    let bytes = dialer.encode(&request).unwrap();
    assert_eq!(
        acceptor.feed(&bytes).unwrap(),
        vec![Event::Message(request)]
    );
}

#[test]
fn oversized_length_is_rejected_from_the_header_alone() {
    let (_, mut acceptor) = pair();
    let mut header = Vec::new();
    header.extend_from_slice(&frame::MAGIC);
    header.push(frame::VERSION);
    header.push(frame::kind::HEARTBEAT);
    header.extend_from_slice(&u32::try_from(MAX_PAYLOAD_LEN + 1).unwrap().to_be_bytes());
    // Only 8 bytes: the length is known, nothing else is needed to refuse it.
    let error = acceptor.feed(&header).unwrap_err();
    assert_eq!(
        error,
        ProtoError::TooLarge {
            len: (MAX_PAYLOAD_LEN + 1) as u64
        }
    );
    assert_eq!(error.kind(), "too_large");
}

#[test]
fn junk_is_rejected_at_the_first_wrong_byte() {
    let mut acceptor = Session::acceptor(KEY, "a", ACCEPTOR_NONCE).unwrap();
    assert_eq!(acceptor.feed(b"G"), Err(ProtoError::BadMagic));
    let mut acceptor = Session::acceptor(KEY, "a", ACCEPTOR_NONCE).unwrap();
    assert_eq!(acceptor.feed(b"BT"), Ok(vec![]));
    assert_eq!(acceptor.feed(&[1]), Err(ProtoError::Version(1)));
}

/// Seals a dialer-to-acceptor frame by the documented derivation, independently of the crate,
/// to make frames that `encode` never produces (unknown kinds, bad payloads).
fn seal_with_session_key(
    dialer_nonce: &Nonce,
    acceptor_nonce: &Nonce,
    kind: u8,
    counter: u64,
    payload: &[u8],
) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    use sha2::Sha256;
    let mut derive = Hmac::<Sha256>::new_from_slice(KEY).unwrap();
    derive.update(b"baton/1 d2a");
    derive.update(dialer_nonce);
    derive.update(acceptor_nonce);
    let session_key = derive.finalize().into_bytes();
    let mut frame = Vec::new();
    frame.extend_from_slice(b"BT");
    frame.push(2);
    frame.push(kind);
    frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&counter.to_be_bytes());
    frame.extend_from_slice(payload);
    let mut mac = Hmac::<Sha256>::new_from_slice(&session_key).unwrap();
    mac.update(&frame);
    frame.extend_from_slice(&mac.finalize().into_bytes()[..16]);
    frame
}

#[test]
fn session_keys_follow_the_documented_derivation() {
    let (mut dialer, _) = pair();
    let message = Message::HandoffAccepted { id: 5 };
    let expected = seal_with_session_key(
        &DIALER_NONCE,
        &ACCEPTOR_NONCE,
        frame::kind::HANDOFF_ACCEPTED,
        1,
        &message.encode_payload().unwrap(),
    );
    assert_eq!(dialer.encode(&message).unwrap(), expected);
}

#[test]
fn unknown_kind_from_a_newer_peer_is_ignored_not_fatal() {
    let (_, mut acceptor) = pair();
    let newer = seal_with_session_key(&DIALER_NONCE, &ACCEPTOR_NONCE, 0x7f, 1, b"future stuff");
    assert_eq!(
        acceptor.feed(&newer).unwrap(),
        vec![Event::Ignored { kind: 0x7f }]
    );
    // The counter advanced past it, and the session still works.
    let next = seal_with_session_key(
        &DIALER_NONCE,
        &ACCEPTOR_NONCE,
        frame::kind::CONN_CLOSED,
        2,
        &9u64.to_be_bytes(),
    );
    assert_eq!(
        acceptor.feed(&next).unwrap(),
        vec![Event::Message(Message::ConnClosed { id: 9 })]
    );
    // Replaying the ignored frame is still a replay.
    assert_eq!(
        acceptor.feed(&newer),
        Err(ProtoError::Replay {
            expected: 3,
            got: 1
        })
    );
}

#[test]
fn authentic_handshake_kind_after_the_handshake_is_fatal() {
    let (_, mut acceptor) = pair();
    let hello_again =
        seal_with_session_key(&DIALER_NONCE, &ACCEPTOR_NONCE, frame::kind::HELLO, 1, &[]);
    assert_eq!(
        acceptor.feed(&hello_again),
        Err(ProtoError::UnexpectedKind(frame::kind::HELLO))
    );
}

#[test]
fn authentic_but_malformed_payloads_are_malformed() {
    let cases: &[(u8, &[u8])] = &[
        (frame::kind::HANDOFF_ACCEPTED, &[0; 7]),
        (frame::kind::HANDOFF_ACCEPTED, &[0; 9]),
        (frame::kind::HANDOFF_REFUSED, &[0; 9]),
        (frame::kind::HANDOFF_REFUSED, &[0, 0, 0, 0, 0, 0, 0, 0, 8]),
        (
            frame::kind::HEARTBEAT,
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        ),
        (frame::kind::HEARTBEAT, &[0; 11]),
    ];
    for &(kind, payload) in cases {
        let (_, mut acceptor) = pair();
        let frame = seal_with_session_key(&DIALER_NONCE, &ACCEPTOR_NONCE, kind, 1, payload);
        let error = acceptor.feed(&frame).unwrap_err();
        assert_eq!(
            error.kind(),
            "malformed",
            "kind {kind} payload {payload:?}: {error}"
        );
    }
}

#[test]
fn refuse_reason_codes_are_fixed() {
    let codes: Vec<u8> = RefuseReason::ALL.iter().map(|r| r.code()).collect();
    assert_eq!(codes, [1, 2, 3, 4, 5, 6, 7]);
    for code in [0u8, 8, 255] {
        assert_eq!(
            RefuseReason::try_from(code),
            Err(ProtoError::UnknownRefuseReason(code))
        );
    }
    for reason in RefuseReason::ALL {
        assert_eq!(RefuseReason::try_from(reason.code()), Ok(reason));
    }
}

#[test]
fn kind_codes_are_fixed() {
    use frame::kind::*;
    assert_eq!(
        [
            HELLO,
            HELLO_ACK,
            HANDOFF_REQUEST,
            HANDOFF_ACCEPTED,
            HANDOFF_REFUSED,
            HANDOFF_ABORT,
            CONN_CLOSED,
            HEARTBEAT
        ],
        [0x01, 0x02, 0x10, 0x11, 0x12, 0x13, 0x14, 0x20]
    );
}

#[test]
fn header_layout_is_as_documented() {
    let (mut dialer, _) = pair();
    let bytes = dialer
        .encode(&Message::Heartbeat {
            load: 1,
            sent_at_ms: 2,
            serving: true,
        })
        .unwrap();
    assert_eq!(&bytes[frame::MAGIC_OFFSET..frame::MAGIC_OFFSET + 2], b"BT");
    assert_eq!(bytes[frame::VERSION_OFFSET], 2);
    assert_eq!(bytes[frame::KIND_OFFSET], frame::kind::HEARTBEAT);
    assert_eq!(
        &bytes[frame::LENGTH_OFFSET..frame::COUNTER_OFFSET],
        &13u32.to_be_bytes()
    );
    assert_eq!(
        &bytes[frame::COUNTER_OFFSET..HEADER_LEN],
        &1u64.to_be_bytes()
    );
    assert_eq!(
        &bytes[HEADER_LEN..HEADER_LEN + 13],
        &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 1]
    );
    assert_eq!(bytes.len(), HEADER_LEN + 13 + TAG_LEN);
}

/// Feeds a corrupted frame; it must fail as a non-authentic frame. A corrupted length may first
/// leave the session waiting for more bytes: then complete the claimed frame with zeros.
fn assert_corruption_detected(
    session: &mut Session,
    corrupted: &[u8],
) -> Result<(), TestCaseError> {
    let error = match session.feed(corrupted) {
        Ok(events) => {
            prop_assert!(events.is_empty(), "corrupted frame produced {:?}", events);
            let padding = vec![0u8; HEADER_LEN + MAX_PAYLOAD_LEN + TAG_LEN];
            match session.feed(&padding) {
                Ok(events) => {
                    return Err(TestCaseError::fail(format!("padding produced {events:?}")));
                }
                Err(error) => error,
            }
        }
        Err(error) => error,
    };
    prop_assert!(
        matches!(
            error,
            ProtoError::Forged
                | ProtoError::BadMagic
                | ProtoError::Version(_)
                | ProtoError::TooLarge { .. }
        ),
        "unexpected error {:?}",
        error
    );
    prop_assert!(matches!(
        error.kind(),
        "forged" | "malformed" | "version" | "too_large"
    ));
    Ok(())
}

#[test]
fn every_flipped_bit_of_every_sample_frame_is_detected() {
    for message in sample_messages() {
        let (mut dialer, _) = pair();
        let bytes = dialer.encode(&message).unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut corrupted = bytes.clone();
            corrupted[bit / 8] ^= 1 << (bit % 8);
            let (_, mut acceptor) = pair();
            assert_corruption_detected(&mut acceptor, &corrupted)
                .unwrap_or_else(|e| panic!("{message:?}, bit {bit}: {e}"));
        }
    }
}

proptest! {
    #[test]
    fn every_message_round_trips(message in message_strategy()) {
        let payload = message.encode_payload().unwrap();
        prop_assert_eq!(Message::decode(message.kind(), &payload), Ok(message.clone()));

        let (mut dialer, mut acceptor) = pair();
        let bytes = dialer.encode(&message).unwrap();
        prop_assert_eq!(acceptor.feed(&bytes).unwrap(), vec![Event::Message(message.clone())]);
        let bytes = acceptor.encode(&message).unwrap();
        prop_assert_eq!(dialer.feed(&bytes).unwrap(), vec![Event::Message(message)]);
    }

    #[test]
    fn a_stream_split_anywhere_decodes_identically(
        messages in proptest::collection::vec(message_strategy(), 1..6),
        cut_fractions in proptest::collection::vec(0.0f64..1.0, 0..12),
    ) {
        let (mut dialer, hello) = Session::dialer(KEY, "d", DIALER_NONCE).unwrap();
        let mut acceptor = Session::acceptor(KEY, "a", ACCEPTOR_NONCE).unwrap();
        let Event::Send(hello_ack) = acceptor.feed(&hello).unwrap().remove(0) else { panic!() };
        let mut stream = hello_ack;
        for message in &messages {
            stream.extend(acceptor.encode(message).unwrap());
        }
        let mut cuts: Vec<usize> = cut_fractions.iter().map(|f| (f * stream.len() as f64) as usize).collect();
        cuts.sort_unstable();
        let mut expected = vec![Event::Established { peer_name: "a".to_owned() }];
        expected.extend(messages.into_iter().map(Event::Message));
        prop_assert_eq!(feed_pieces(&mut dialer, &stream, &cuts).unwrap(), expected);
    }

    #[test]
    fn any_flipped_bit_in_a_message_frame_is_detected(message in message_strategy(), bit in any::<prop::sample::Index>()) {
        let (mut dialer, mut acceptor) = pair();
        let mut bytes = dialer.encode(&message).unwrap();
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        assert_corruption_detected(&mut acceptor, &bytes)?;
    }

    #[test]
    fn any_flipped_bit_in_the_handshake_is_detected(bit in any::<prop::sample::Index>(), in_ack in any::<bool>()) {
        let (mut dialer, mut hello) = Session::dialer(KEY, "d", DIALER_NONCE).unwrap();
        let mut acceptor = Session::acceptor(KEY, "a", ACCEPTOR_NONCE).unwrap();
        if in_ack {
            let Event::Send(mut hello_ack) = acceptor.feed(&hello).unwrap().remove(0) else { panic!() };
            let bit = bit.index(hello_ack.len() * 8);
            hello_ack[bit / 8] ^= 1 << (bit % 8);
            assert_corruption_detected(&mut dialer, &hello_ack)?;
        } else {
            let bit = bit.index(hello.len() * 8);
            hello[bit / 8] ^= 1 << (bit % 8);
            assert_corruption_detected(&mut acceptor, &hello)?;
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
        let (mut dialer_waiting, _) = Session::dialer(KEY, "d", DIALER_NONCE).unwrap();
        let mut acceptor_waiting = Session::acceptor(KEY, "a", ACCEPTOR_NONCE).unwrap();
        let (mut dialer, mut acceptor) = pair();
        for chunk in &chunks {
            let _ = dialer_waiting.feed(chunk);
            let _ = acceptor_waiting.feed(chunk);
            let _ = dialer.feed(chunk);
            let _ = acceptor.feed(chunk);
        }
    }

    #[test]
    fn arbitrary_frames_with_valid_headers_never_panic(kind in any::<u8>(), counter in any::<u64>(), payload in proptest::collection::vec(any::<u8>(), 0..128), tag in any::<[u8; 16]>()) {
        let mut frame = Vec::new();
        frame.extend_from_slice(b"BT");
        frame.push(frame::VERSION);
        frame.push(kind);
        frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(&counter.to_be_bytes());
        frame.extend_from_slice(&payload);
        frame.extend_from_slice(&tag);
        let (_, mut acceptor) = pair();
        // A random tag is a forgery, whatever the rest says.
        prop_assert_eq!(acceptor.feed(&frame), Err(ProtoError::Forged));
    }

    #[test]
    fn decode_never_panics_and_is_canonical(kind in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(message) = Message::decode(kind, &payload) {
            prop_assert_eq!(message.kind(), kind);
            prop_assert_eq!(message.encode_payload().unwrap(), payload);
        }
    }

    #[test]
    fn authentic_frames_with_arbitrary_payloads_never_panic(kind in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..300)) {
        let (_, mut acceptor) = pair();
        let frame = seal_with_session_key(&DIALER_NONCE, &ACCEPTOR_NONCE, kind, 1, &payload);
        match acceptor.feed(&frame) {
            Ok(events) => {
                prop_assert_eq!(events.len(), 1);
                match &events[0] {
                    Event::Message(message) => prop_assert_eq!(Message::decode(kind, &payload), Ok(message.clone())),
                    Event::Ignored { kind: ignored } => prop_assert_eq!(*ignored, kind),
                    other => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
                }
            }
            Err(error) => prop_assert!(matches!(error.kind(), "malformed" | "unexpected_kind"), "{:?}", error),
        }
    }
}
