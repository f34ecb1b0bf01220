//! The Rust mirrors of the C enums carry the same numbers: reason codes, counters, event kinds and
//! connection states are read out of the C headers and compared, so a renumbering on either side
//! fails here.

use std::collections::HashMap;

use baton_bpf::{CloseCode, ConnState, DropReason, EventKind, Stat};

/// `NAME = value` enum members and `#define NAME value` constants of a C header.
fn c_enum_values(header: &str) -> HashMap<String, u32> {
    let path = format!("{}/c/lib/{header}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let number = |v: &str| match v.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    };
    text.lines()
        .filter_map(|line| {
            let line = line.split("/*").next()?.trim().trim_end_matches(',');
            let (name, value) = match line.strip_prefix("#define ") {
                Some(define) => define.split_once(' ')?,
                None => line.split_once('=')?,
            };
            let name = name.trim();
            let value = number(value.trim())?;
            name.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                .then(|| (name.to_string(), value))
        })
        .collect()
}

fn check(header: &str, pairs: &[(&str, u32)]) {
    let c = c_enum_values(header);
    for (name, rust) in pairs {
        assert_eq!(
            c.get(*name),
            Some(rust),
            "{name} in {header} vs the Rust mirror"
        );
    }
}

#[test]
fn drop_reasons_match() {
    let names = [
        ("DROP_HELD", DropReason::Held),
        ("DROP_SYNACK_HIDDEN", DropReason::SynAckHidden),
        ("DROP_FE_SILENCED", DropReason::FeSilenced),
        ("DROP_BE_SYNACK", DropReason::BeSynAck),
        ("DROP_BE_NOT_READY", DropReason::BeNotReady),
        ("DROP_TUPLE_COLLISION", DropReason::TupleCollision),
        ("DROP_EVENT_LOST", DropReason::EventLost),
        ("DROP_REDIRECT_FAILED", DropReason::RedirectFailed),
        ("DROP_BE_LATE", DropReason::BeLate),
        ("DROP_MOVING", DropReason::Moving),
        ("DROP_OFFER_REJECTED", DropReason::OfferRejected),
    ];
    assert_eq!(names.len(), DropReason::ALL.len());
    let pairs: Vec<(&str, u32)> = names.iter().map(|(n, r)| (*n, *r as u32)).collect();
    check("reasons.h", &pairs);
    check(
        "reasons.h",
        &[("DROP_REASON_MAX", DropReason::ALL.len() as u32 + 1)],
    );
}

#[test]
fn stats_match() {
    check(
        "reasons.h",
        &[
            ("STAT_SYN", Stat::Syn as u32),
            ("STAT_SYN_UNTRACKED", Stat::SynUntracked as u32),
            ("STAT_TABLE_FULL", Stat::TableFull as u32),
            ("STAT_FORWARD_PACKETS", Stat::ForwardPackets as u32),
            ("STAT_FORWARD_BYTES", Stat::ForwardBytes as u32),
            ("STAT_TO_SERVER_PACKETS", Stat::ToServerPackets as u32),
            ("STAT_TO_CLIENT_PACKETS", Stat::ToClientPackets as u32),
            ("STAT_TO_CLIENT_BYTES", Stat::ToClientBytes as u32),
            ("STAT_CLIENT_BYTES_SENT", Stat::ClientBytesSent as u32),
            ("STAT_EVENTS", Stat::Events as u32),
            ("STAT_MALFORMED", Stat::Malformed as u32),
            ("STAT_HANDSHAKE_ABSORBED", Stat::HandshakeAbsorbed as u32),
            ("STAT_DECIDED_LOCAL", Stat::DecidedLocal as u32),
            ("STAT_BE_LIVE", Stat::BeLive as u32),
            ("STAT_SERVING_OPENED", Stat::ServingOpened as u32),
            ("STAT_SERVING_CLOSED", Stat::ServingClosed as u32),
            ("STAT_LISTEN_OPENED", Stat::ListenOpened as u32),
            ("STAT_LISTEN_CLOSED", Stat::ListenClosed as u32),
            ("STAT_FAIL_OPEN", Stat::FailOpen as u32),
            ("STAT_NEXT_HEADS_HELD", Stat::NextHeadsHeld as u32),
            ("STAT_RESPONSE_HEADS", Stat::ResponseHeads as u32),
            ("STAT_RESPONSES_OPAQUE", Stat::ResponsesOpaque as u32),
            ("STAT_DP_OFFERS", Stat::DpOffers as u32),
            ("STAT_DP_TAKEN", Stat::DpTaken as u32),
            ("STAT_DP_REFUSED", Stat::DpRefused as u32),
            ("STAT_DP_RETURNED", Stat::DpReturned as u32),
            ("STAT_NEXT_HEADS_STAYED", Stat::NextHeadsStayed as u32),
            ("STAT_MAX", Stat::COUNT),
        ],
    );
}

#[test]
fn event_kinds_and_states_match() {
    check(
        "events.h",
        &[
            ("EV_HELD_PACKET", EventKind::HeldPacket as u32),
            ("EV_BE_SYNACK", EventKind::BeSynAck as u32),
            ("EV_CLOSED", EventKind::Closed as u32),
            ("EV_BE_LIVE", EventKind::BeLive as u32),
            ("EV_NEXT_HEAD", EventKind::NextHead as u32),
            ("EV_DP_OFFERED", EventKind::DpOffered as u32),
            ("EV_DP_TAKEN", EventKind::DpTaken as u32),
            ("EV_DP_RETURNED", EventKind::DpReturned as u32),
            ("EV_NEXT_HEAD_STAYED", EventKind::NextHeadStayed as u32),
            ("EV_DP_FOLLOWED_HERE", EventKind::DpFollowedHere as u32),
            ("CLOSE_GONE", CloseCode::Gone as u32),
            ("CLOSE_TIME_WAIT", CloseCode::TimeWait as u32),
            ("CLOSE_UNSURE", CloseCode::Unsure as u32),
        ],
    );
    check(
        "conn.h",
        &[
            ("FE_SYN", ConnState::FeSyn as u32),
            ("FE_HOLD", ConnState::FeHold as u32),
            ("FE_FORWARD", ConnState::FeForward as u32),
            ("BE_SYN_SENT", ConnState::BeSynSent as u32),
            ("BE_REPLAYED", ConnState::BeReplayed as u32),
            ("BE_ESTABLISHED", ConnState::BeEstablished as u32),
            ("ROLE_FE", baton_bpf::ConnRole::Fe as u32),
            ("ROLE_BE", baton_bpf::ConnRole::Be as u32),
            ("DECIDE_AGENT", baton_bpf::DecideMode::Agent as u32),
            ("DECIDE_HASH", baton_bpf::DecideMode::Hash as u32),
            (
                "DECIDE_ROUND_ROBIN",
                baton_bpf::DecideMode::RoundRobin as u32,
            ),
            ("DECIDE_HASH_STAYS", baton_bpf::DecideMode::HashStays as u32),
            ("HASH_RENDEZVOUS", baton_bpf::HashKind::Rendezvous as u32),
            ("HASH_BOUNDED", baton_bpf::HashKind::Bounded as u32),
        ],
    );
}

#[test]
fn conn_flags_match() {
    use baton_bpf::conn_flags::*;
    check(
        "conn.h",
        &[
            ("CONN_CLIENT_FIN", CLIENT_FIN),
            ("CONN_SERVER_FIN", SERVER_FIN),
            ("CONN_RST", RST),
            ("CONN_CLOSE_REPORTED", CLOSE_REPORTED),
            ("CONN_SYNACK_SEEN", SYNACK_SEEN),
            ("CONN_AGENT_HOLDS", AGENT_HOLDS),
            ("CONN_LIVE_REPORTED", LIVE_REPORTED),
            ("CONN_DP_OFFER", DP_OFFER),
            ("CONN_DP_TAKEN", DP_TAKEN),
            ("CONN_DP_LIVE", DP_LIVE),
            ("CONN_TCP_CLOSED", TCP_CLOSED),
            ("SYN_NO_WSCALE", u32::from(baton_bpf::SynDigest::NO_WSCALE)),
            ("SYN_SACK_OK", u32::from(baton_bpf::SynDigest::SACK_OK)),
            ("SYN_TS_OK", u32::from(baton_bpf::SynDigest::TS_OK)),
        ],
    );
}

/// A datapath refusal carries the mesh's refusal code: the agent reads one as the other.
#[test]
fn refusal_codes_are_the_mesh_codes() {
    use baton_proto::RefuseReason;
    check(
        "reasons.h",
        &[
            ("REFUSE_COLLISION", RefuseReason::Collision.code().into()),
            (
                "REFUSE_OPTION_MISMATCH",
                RefuseReason::OptionMismatch.code().into(),
            ),
            ("REFUSE_OVERLOADED", RefuseReason::Overloaded.code().into()),
            ("REFUSE_INTERNAL", RefuseReason::Internal.code().into()),
            ("REFUSE_NO_LISTENER", RefuseReason::NoListener.code().into()),
        ],
    );
}

#[test]
fn follow_flags_match() {
    use baton_bpf::{responses_flags, watch_flags};
    check(
        "conn.h",
        &[
            ("WATCH_HEADS", watch_flags::HEADS),
            ("WATCH_FROZEN", watch_flags::FROZEN),
            ("WATCH_AGENT_HEAD", watch_flags::AGENT_HEAD),
            ("WATCH_NO_NODE", u32::from(baton_bpf::Watch::NO_NODE)),
            ("RESP_OPAQUE", responses_flags::OPAQUE),
            ("RESP_OPAQUE", baton_bpf::RESP_OPAQUE),
        ],
    );
}

#[test]
fn sizes_match() {
    use baton_bpf::sizes::*;
    check(
        "sizes.h",
        &[
            ("CONNS_MAX", CONNS_MAX),
            ("SERVICE_PORTS_MAX", SERVICE_PORTS_MAX as u32),
            ("DP_NODES_MAX", DP_NODES_MAX as u32),
            ("EVENT_CAPTURE_MAX", EVENT_CAPTURE_MAX as u32),
            ("HEAD_SCAN_MAX", HEAD_SCAN_MAX as u32),
            ("METHOD_MAX", METHOD_MAX as u32),
            ("RESPONSE_SCAN_MAX", RESPONSE_SCAN_MAX as u32),
            ("OFFER_KEY_LEN", OFFER_KEY_LEN as u32),
            ("REFUSED_OFFERS_MAX", REFUSED_OFFERS_MAX),
            ("BOUNDED_VNODES", BOUNDED_VNODES as u32),
            ("BOUNDED_SEARCH_STEPS", BOUNDED_SEARCH_STEPS as u32),
        ],
    );
    // `(4 << 20)` is an expression the simple reader above does not evaluate.
    let path = format!("{}/c/lib/sizes.h", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains("#define EVENTS_RING_BYTES (4 << 20)"));
    assert_eq!(EVENTS_RING_BYTES, 4 << 20);
    assert!(text.contains("#define QUIET_RING_BYTES (1 << 20)"));
    assert_eq!(QUIET_RING_BYTES, 1 << 20);
    assert!(text.contains("#define BOUNDED_RING_MAX (DP_NODES_MAX * BOUNDED_VNODES)"));
    assert_eq!(BOUNDED_RING_MAX, DP_NODES_MAX * BOUNDED_VNODES);
    // The datapath's ring is the agent's, and its search covers it.
    assert_eq!(BOUNDED_VNODES as u32, baton_policy::VIRTUAL_NODES);
    const { assert!(1usize << (BOUNDED_SEARCH_STEPS - 1) >= BOUNDED_RING_MAX) };
}
