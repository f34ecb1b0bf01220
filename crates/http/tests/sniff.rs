//! Behaviour of `sniff` on hand-written heads (tables) and generated ones (properties).

use baton_http::{HttpVersion, InvalidReason, Limits, RequestHead, Sniff, sniff};
use proptest::prelude::*;

fn sniff_default(head: &str) -> Sniff {
    sniff(head.as_bytes(), &Limits::default())
}

fn complete(head: &str) -> RequestHead {
    match sniff_default(head) {
        Sniff::Complete(parsed) => parsed,
        other => panic!("expected Complete for {head:?}, got {other:?}"),
    }
}

#[test]
fn valid_heads_table() {
    struct Case {
        head: &'static str,
        method: &'static str,
        target: &'static str,
        version: HttpVersion,
        host: Option<&'static str>,
        content_length: Option<u64>,
        chunked: bool,
        keep_alive: bool,
    }
    let cases = [
        Case {
            head: "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
            method: "GET",
            target: "/",
            version: HttpVersion::Http11,
            host: Some("example.com"),
            content_length: None,
            chunked: false,
            keep_alive: true,
        },
        Case {
            head: "GET /index.html HTTP/1.0\r\n\r\n",
            method: "GET",
            target: "/index.html",
            version: HttpVersion::Http10,
            host: None,
            content_length: None,
            chunked: false,
            keep_alive: false,
        },
        Case {
            head: "GET /a?b=c HTTP/1.0\r\nConnection: Keep-Alive\r\nHost: h:8080\r\n\r\n",
            method: "GET",
            target: "/a?b=c",
            version: HttpVersion::Http10,
            host: Some("h:8080"),
            content_length: None,
            chunked: false,
            keep_alive: true,
        },
        Case {
            head: "POST /upload HTTP/1.1\r\nhost: [::1]:80\r\nContent-Length: 42\r\nConnection: close\r\n\r\n",
            method: "POST",
            target: "/upload",
            version: HttpVersion::Http11,
            host: Some("[::1]:80"),
            content_length: Some(42),
            chunked: false,
            keep_alive: false,
        },
        Case {
            // Identical duplicates, as a list and as repeated lines, are one length (RFC 9110 8.6).
            head: "PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 7, 7\r\ncontent-length: 007\r\n\r\n",
            method: "PUT",
            target: "/x",
            version: HttpVersion::Http11,
            host: Some("h"),
            content_length: Some(7),
            chunked: false,
            keep_alive: true,
        },
        Case {
            head: "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: Chunked\r\n\r\n",
            method: "POST",
            target: "/",
            version: HttpVersion::Http11,
            host: Some("h"),
            content_length: None,
            chunked: true,
            keep_alive: true,
        },
        Case {
            // Leading empty lines and bare LF are tolerated, as httparse does.
            head: "\r\n\nOPTIONS * HTTP/1.1\nHost:   spaced.example   \nConnection: keep-alive, close\n\n",
            method: "OPTIONS",
            target: "*",
            version: HttpVersion::Http11,
            host: Some("spaced.example"),
            content_length: None,
            chunked: false,
            keep_alive: false,
        },
        Case {
            // Empty Host is allowed for targets without an authority.
            head: "CONNECT example.com:443 HTTP/1.1\r\nHost:\r\n\r\n",
            method: "CONNECT",
            target: "example.com:443",
            version: HttpVersion::Http11,
            host: Some(""),
            content_length: None,
            chunked: false,
            keep_alive: true,
        },
    ];
    for case in cases {
        let parsed = complete(case.head);
        assert_eq!(parsed.method, case.method, "{:?}", case.head);
        assert_eq!(parsed.target, case.target, "{:?}", case.head);
        assert_eq!(parsed.version, case.version, "{:?}", case.head);
        assert_eq!(parsed.host.as_deref(), case.host, "{:?}", case.head);
        assert_eq!(
            parsed.content_length, case.content_length,
            "{:?}",
            case.head
        );
        assert_eq!(parsed.chunked, case.chunked, "{:?}", case.head);
        assert_eq!(parsed.keep_alive, case.keep_alive, "{:?}", case.head);
        assert_eq!(parsed.head_len, case.head.len(), "{:?}", case.head);
    }
}

#[test]
fn invalid_heads_table() {
    use InvalidReason::*;
    let cases: &[(&str, InvalidReason)] = &[
        ("GET / HTTP/2.0\r\nHost: h\r\n\r\n", Version),
        ("GET / HTTP/1.2\r\nHost: h\r\n\r\n", Version),
        ("GET / FTP/1.1\r\n", Version),
        ("GET  / HTTP/1.1\r\nHost: h\r\n\r\n", RequestLine),
        ("GET / HTTP/1.1 \r\nHost: h\r\n\r\n", NewLine),
        ("G(T / HTTP/1.1\r\nHost: h\r\n\r\n", RequestLine),
        (
            "GET / HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n b\r\n\r\n",
            HeaderName,
        ),
        ("GET / HTTP/1.1\r\nHost : h\r\n\r\n", HeaderName),
        ("GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n", HeaderValue),
        ("GET / HTTP/1.1\rHost: h\r\n\r\n", NewLine),
        ("GET / HTTP/1.1\r\n\r\n", MissingHost),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            DuplicateHost,
        ),
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", InvalidHost),
        ("GET / HTTP/1.1\r\nHost: user@h\r\n\r\n", InvalidHost),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            ConflictingContentLength,
        ),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 2\r\n\r\n",
            ConflictingContentLength,
        ),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n",
            InvalidContentLength,
        ),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
            InvalidContentLength,
        ),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\n",
            InvalidContentLength,
        ),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1 2\r\n\r\n",
            InvalidContentLength,
        ),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n",
            InvalidContentLength,
        ),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1,\r\n\r\n",
            InvalidContentLength,
        ),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551616\r\n\r\n",
            InvalidContentLength,
        ),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            ContentLengthWithTransferEncoding,
        ),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            ContentLengthWithTransferEncoding,
        ),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            UnsupportedTransferEncoding,
        ),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            UnsupportedTransferEncoding,
        ),
        (
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n\r\n",
            UnsupportedTransferEncoding,
        ),
        (
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            UnsupportedTransferEncoding,
        ),
    ];
    for (head, reason) in cases {
        assert_eq!(sniff_default(head), Sniff::Invalid(*reason), "{head:?}");
    }
}

#[test]
fn upgrade_is_any_upgrade_field() {
    let cases = [
        (
            "GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            true,
        ),
        // Without the `upgrade` Connection option a server should ignore it; a lenient one may not.
        ("GET / HTTP/1.1\r\nHost: h\r\nupgrade: h2c\r\n\r\n", true),
        (
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n\r\n",
            false,
        ),
        ("GET / HTTP/1.1\r\nHost: h\r\nX-Upgrade: h2c\r\n\r\n", false),
    ];
    for (head, upgrade) in cases {
        assert_eq!(complete(head).upgrade, upgrade, "{head:?}");
    }
}

#[test]
fn u64_max_content_length_is_accepted() {
    let parsed =
        complete("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551615\r\n\r\n");
    assert_eq!(parsed.content_length, Some(u64::MAX));
}

#[test]
fn cookies_from_all_cookie_headers() {
    let parsed = complete(
        "GET / HTTP/1.1\r\nHost: h\r\nCookie: a=1; b=two;c=\r\nX: y\r\ncookie: flag; =nameless; d=\"q\" ; a=again\r\n\r\n",
    );
    let expected = [
        ("a", "1"),
        ("b", "two"),
        ("c", ""),
        ("d", "\"q\""),
        ("a", "again"),
    ];
    let cookies: Vec<(&str, &str)> = parsed
        .cookies
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    assert_eq!(cookies, expected);
    assert_eq!(
        parsed.cookie("a"),
        Some("1"),
        "the first of duplicate names wins"
    );
    assert_eq!(parsed.cookie("c"), Some(""));
    assert_eq!(parsed.cookie("A"), None, "cookie names are case-sensitive");
    assert_eq!(parsed.cookie("flag"), None);
}

#[test]
fn non_utf8_cookie_is_skipped_not_fatal() {
    let mut head = b"GET / HTTP/1.1\r\nHost: h\r\nCookie: bad=\xff\xfe; good=1\r\n\r\n".to_vec();
    let Sniff::Complete(parsed) = sniff(&head, &Limits::default()) else {
        panic!("obs-text in a cookie value must not reject the request");
    };
    assert_eq!(parsed.cookies, vec![("good".to_owned(), "1".to_owned())]);
    head.truncate(head.len() - 1);
    assert_eq!(sniff(&head, &Limits::default()), Sniff::Incomplete);
}

#[test]
fn incomplete_prefixes() {
    for head in [
        "",
        "G",
        "GET",
        "GET /",
        "GET / HTTP/1.",
        "GET / HTTP/1.1\r",
        "GET / HTTP/1.1\r\nHost: h\r\n\r",
        "\r\n",
    ] {
        assert_eq!(sniff_default(head), Sniff::Incomplete, "{head:?}");
    }
}

#[test]
fn size_limit_is_exact() {
    let head = "GET /0123456789 HTTP/1.1\r\nHost: h\r\n\r\n";
    let exact = Limits {
        max_head_bytes: head.len(),
        ..Limits::default()
    };
    assert!(matches!(sniff(head.as_bytes(), &exact), Sniff::Complete(_)));
    // One byte short of the limit the head may still complete.
    assert_eq!(
        sniff(&head.as_bytes()[..head.len() - 1], &exact),
        Sniff::Incomplete
    );

    let short = Limits {
        max_head_bytes: head.len() - 1,
        ..Limits::default()
    };
    assert_eq!(
        sniff(head.as_bytes(), &short),
        Sniff::Invalid(InvalidReason::TooLarge)
    );
    // A prefix as long as the limit, not yet complete, can never complete within it.
    assert_eq!(
        sniff(&head.as_bytes()[..head.len() - 1], &short),
        Sniff::Invalid(InvalidReason::TooLarge)
    );
    assert_eq!(
        sniff(&head.as_bytes()[..head.len() - 2], &short),
        Sniff::Incomplete
    );
}

#[test]
fn endless_empty_lines_hit_the_size_limit() {
    let limits = Limits::default();
    let blank = "\r\n".repeat(limits.max_head_bytes);
    assert_eq!(
        sniff(blank.as_bytes(), &limits),
        Sniff::Invalid(InvalidReason::TooLarge)
    );
}

#[test]
fn header_count_limit_is_exact() {
    let limits = Limits {
        max_headers: 3,
        ..Limits::default()
    };
    let three = "GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n";
    assert!(matches!(
        sniff(three.as_bytes(), &limits),
        Sniff::Complete(_)
    ));
    let four = "GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    assert_eq!(
        sniff(four.as_bytes(), &limits),
        Sniff::Invalid(InvalidReason::TooManyHeaders)
    );
}

#[test]
fn huge_configured_limits_do_not_allocate_tables() {
    let limits = Limits {
        max_head_bytes: usize::MAX,
        max_headers: usize::MAX,
    };
    assert!(matches!(
        sniff(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", &limits),
        Sniff::Complete(_)
    ));
    let zero = Limits {
        max_head_bytes: 0,
        max_headers: 0,
    };
    assert_eq!(sniff(b"", &zero), Sniff::Invalid(InvalidReason::TooLarge));
}

#[test]
fn invalid_reason_labels_are_distinct() {
    use InvalidReason::*;
    let all = [
        TooLarge,
        TooManyHeaders,
        RequestLine,
        Version,
        HeaderName,
        HeaderValue,
        NewLine,
        InvalidContentLength,
        ConflictingContentLength,
        ContentLengthWithTransferEncoding,
        UnsupportedTransferEncoding,
        MissingHost,
        DuplicateHost,
        InvalidHost,
    ];
    let labels: std::collections::HashSet<&str> = all.iter().map(InvalidReason::as_str).collect();
    assert_eq!(labels.len(), all.len());
}

/// A generated valid head: its bytes and what `sniff` must report for it.
#[derive(Debug, Clone)]
struct GeneratedHead {
    bytes: Vec<u8>,
    expected: RequestHead,
}

#[derive(Debug, Clone)]
enum Framing {
    None,
    Length(u64, u8),
    Chunked,
}

fn header_name_case(name: &str, upper: bool) -> String {
    if upper {
        name.to_ascii_uppercase()
    } else {
        name.to_owned()
    }
}

fn generated_head() -> impl Strategy<Value = GeneratedHead> {
    let method = prop_oneof![
        Just("GET".to_owned()),
        Just("POST".to_owned()),
        Just("HEAD".to_owned()),
        "[A-Z]{1,10}",
    ];
    let target = prop_oneof![
        "/[A-Za-z0-9/._~%?=&;:@!$'()*+,-]{0,80}",
        Just("*".to_owned())
    ];
    let cookie = ("[A-Za-z0-9_]{1,8}", "[A-Za-z0-9_./%-]{0,12}");
    let framing = prop_oneof![
        Just(Framing::None),
        (any::<u64>(), 1u8..=3).prop_map(|(n, copies)| Framing::Length(n, copies)),
        Just(Framing::Chunked),
    ];
    (
        method,
        target,
        any::<bool>(),
        proptest::option::of("[a-z0-9.-]{1,30}(:[0-9]{1,5})?"),
        proptest::collection::vec(("X-[A-Za-z0-9-]{1,12}", "[!-~]([ -~]{0,30}[!-~])?"), 0..8),
        proptest::collection::vec(proptest::collection::vec(cookie, 1..4), 0..3),
        framing,
        proptest::option::of(prop_oneof![
            Just("close"),
            Just("keep-alive"),
            Just("Upgrade")
        ]),
        (0usize..3, any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(method, target, http11, host, extra, cookie_headers, framing, connection, style)| {
                let (empty_lines, bare_lf, upper_names) = style;
                let eol = if bare_lf { "\n" } else { "\r\n" };
                let version = if http11 {
                    HttpVersion::Http11
                } else {
                    HttpVersion::Http10
                };
                // HTTP/1.1 requires Host; HTTP/1.0 does not allow chunked.
                let host = if http11 {
                    Some(host.unwrap_or_else(|| "h".to_owned()))
                } else {
                    host
                };
                let framing = match framing {
                    Framing::Chunked if !http11 => Framing::None,
                    other => other,
                };

                let mut head = eol.repeat(empty_lines);
                head += &format!("{method} {target} HTTP/1.{}{eol}", u8::from(http11));
                if let Some(host) = &host {
                    head += &format!("{}: {host}{eol}", header_name_case("Host", upper_names));
                }
                for (name, value) in &extra {
                    head += &format!("{name}: {value}{eol}");
                }
                let mut cookies = Vec::new();
                for pairs in &cookie_headers {
                    let joined: Vec<String> =
                        pairs.iter().map(|(n, v)| format!("{n}={v}")).collect();
                    head += &format!(
                        "{}: {}{eol}",
                        header_name_case("Cookie", upper_names),
                        joined.join("; ")
                    );
                    cookies.extend(pairs.iter().cloned());
                }
                let (content_length, chunked) = match framing {
                    Framing::None => (None, false),
                    Framing::Length(n, copies) => {
                        for _ in 0..copies {
                            head += &format!(
                                "{}: {n}{eol}",
                                header_name_case("Content-Length", upper_names)
                            );
                        }
                        (Some(n), false)
                    }
                    Framing::Chunked => {
                        head += &format!(
                            "{}: chunked{eol}",
                            header_name_case("Transfer-Encoding", upper_names)
                        );
                        (None, true)
                    }
                };
                let keep_alive = match connection {
                    Some(option) => {
                        head += &format!("Connection: {option}{eol}");
                        match option {
                            "close" => false,
                            "keep-alive" => true,
                            _ => http11,
                        }
                    }
                    None => http11,
                };
                head += eol;
                let expected = RequestHead {
                    method,
                    target,
                    version,
                    host,
                    cookies,
                    content_length,
                    chunked,
                    keep_alive,
                    upgrade: false,
                    head_len: head.len(),
                };
                GeneratedHead {
                    bytes: head.into_bytes(),
                    expected,
                }
            },
        )
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048),
                                   max_head_bytes in 0usize..4096, max_headers in 0usize..100) {
        let _ = sniff(&bytes, &Limits { max_head_bytes, max_headers });
        let _ = sniff(&bytes, &Limits::default());
    }

    #[test]
    fn mutated_valid_heads_never_panic(head in generated_head(), index in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = head.bytes;
        let at = index.index(bytes.len());
        bytes[at] = byte;
        let _ = sniff(&bytes, &Limits::default());
    }

    #[test]
    fn every_prefix_is_incomplete_and_the_whole_is_complete(head in generated_head()) {
        let limits = Limits::default();
        for split in 0..head.bytes.len() {
            prop_assert_eq!(sniff(&head.bytes[..split], &limits), Sniff::Incomplete, "prefix of {} bytes", split);
        }
        prop_assert_eq!(sniff(&head.bytes, &limits), Sniff::Complete(head.expected));
    }

    #[test]
    fn bytes_after_the_head_do_not_matter(head in generated_head(), body in proptest::collection::vec(any::<u8>(), 1..9000)) {
        let limits = Limits::default();
        let mut with_body = head.bytes.clone();
        with_body.extend_from_slice(&body);
        prop_assert_eq!(sniff(&with_body, &limits), sniff(&head.bytes, &limits));
        prop_assert_eq!(sniff(&with_body, &limits), Sniff::Complete(head.expected));
    }

    #[test]
    fn a_head_longer_than_the_limit_is_too_large(head in generated_head()) {
        let limits = Limits { max_head_bytes: head.bytes.len() - 1, ..Limits::default() };
        prop_assert_eq!(sniff(&head.bytes, &limits), Sniff::Invalid(InvalidReason::TooLarge));
    }
}
