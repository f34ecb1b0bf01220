//! The chunked transfer coding's lines (RFC 9112 7.1): what a complete chunk-size line says.
//!
//! ```text
//! chunk-size line = chunk-size [ chunk-ext ] CRLF
//! chunk-size      = 1*HEXDIG
//! chunk-ext       = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
//! chunk-ext-name  = token
//! chunk-ext-val   = token / quoted-string
//! ```
//!
//! Extensions are checked against that grammar and otherwise ignored. Like the head sniffer, a
//! bare LF ends a line and a CR anywhere else is an error, so a line never ends somewhere a
//! server would not end it.

use crate::boundary::OpaqueReason;

/// The chunk size announced by `line`, a complete chunk-size line: every byte up to and including
/// the first LF.
pub(crate) fn parse_chunk_line(line: &[u8]) -> Result<u64, OpaqueReason> {
    let Some(content) = line.strip_suffix(b"\n") else {
        return Err(OpaqueReason::ChunkNewLine);
    };
    let content = content.strip_suffix(b"\r").unwrap_or(content);
    if content.iter().any(|&b| b == b'\r' || b == b'\n') {
        return Err(OpaqueReason::ChunkNewLine);
    }
    let digits = content.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(OpaqueReason::ChunkSize);
    }
    // Leading zeros are allowed in any number: only the value has to fit.
    let size = content[..digits]
        .iter()
        .try_fold(0u64, |size, &digit| {
            size.checked_mul(16)?
                .checked_add(u64::from(hex_value(digit)))
        })
        .ok_or(OpaqueReason::ChunkSize)?;
    let extensions = &content[digits..];
    match extensions.first() {
        None => Ok(size),
        Some(b' ' | b'\t' | b';') => {
            check_extensions(extensions)?;
            Ok(size)
        }
        // "5x", "0x5": not a hexadecimal size.
        Some(_) => Err(OpaqueReason::ChunkSize),
    }
}

/// Checks `chunk-ext`, every byte after the chunk size.
fn check_extensions(mut rest: &[u8]) -> Result<(), OpaqueReason> {
    while !rest.is_empty() {
        rest = skip_bws(rest)
            .strip_prefix(b";")
            .ok_or(OpaqueReason::ChunkExtension)?;
        rest = skip_bws(rest);
        let name_len = token_len(rest);
        if name_len == 0 {
            return Err(OpaqueReason::ChunkExtension);
        }
        rest = &rest[name_len..];
        // Whitespace after the name belongs to the next element's BWS unless a value follows.
        if let Some(value) = skip_bws(rest).strip_prefix(b"=") {
            let value = skip_bws(value);
            let value_len = match value.first() {
                Some(b'"') => quoted_string_len(value)?,
                _ => token_len(value),
            };
            if value_len == 0 {
                return Err(OpaqueReason::ChunkExtension);
            }
            rest = &value[value_len..];
        }
    }
    Ok(())
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

/// Strips BWS (SP / HTAB) from the front.
fn skip_bws(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// Length of the `token` (1*tchar, RFC 9110 5.6.2) at the front, 0 if there is none.
fn token_len(bytes: &[u8]) -> usize {
    let is_tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    bytes.iter().take_while(|b| is_tchar(b)).count()
}

/// Length of the `quoted-string` (RFC 9110 5.6.4) at the front, quotes included.
fn quoted_string_len(bytes: &[u8]) -> Result<usize, OpaqueReason> {
    let is_qdtext = |b: u8| matches!(b, b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..);
    let is_escapable = |b: u8| matches!(b, b'\t' | b' ' | 0x21..=0x7e | 0x80..);
    let mut at = 1;
    loop {
        match bytes.get(at) {
            Some(b'"') => return Ok(at + 1),
            Some(b'\\') if bytes.get(at + 1).is_some_and(|&b| is_escapable(b)) => at += 2,
            Some(&b) if is_qdtext(b) => at += 1,
            _ => return Err(OpaqueReason::ChunkExtension),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_lines() {
        let cases: &[(&[u8], u64)] = &[
            (b"0\r\n", 0),
            (b"0\n", 0),
            (b"5\r\n", 5),
            (b"1a\r\n", 0x1a),
            (b"1A\r\n", 0x1a),
            (b"00000000000000000000000000000010\r\n", 16),
            (b"ffffffffffffffff\r\n", u64::MAX),
            (b"5;a\r\n", 5),
            (b"5;a=b\r\n", 5),
            (b"5 ; a = b\t;\tc\r\n", 5),
            (b"5;a=\"\"\r\n", 5),
            (b"5;a=\"x y;z=\\\"\\\\\"\r\n", 5),
            (b"5;a=\"\x80\xff\"\r\n", 5),
            (b"5;!#$%&'*+-.^_`|~09AZaz=!#$%&'*+-.^_`|~09AZaz\r\n", 5),
        ];
        for &(line, size) in cases {
            assert_eq!(
                parse_chunk_line(line),
                Ok(size),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn invalid_lines() {
        use OpaqueReason::*;
        let cases: &[(&[u8], OpaqueReason)] = &[
            (b"\r\n", ChunkSize),
            (b"\n", ChunkSize),
            (b";a\r\n", ChunkSize),
            (b"x\r\n", ChunkSize),
            (b"0x5\r\n", ChunkSize),
            (b"-5\r\n", ChunkSize),
            (b"+5\r\n", ChunkSize),
            (b" 5\r\n", ChunkSize),
            (b"10000000000000000\r\n", ChunkSize),
            (b"5\r\r\n", ChunkNewLine),
            (b"5\r;a\r\n", ChunkNewLine),
            (b"5;a\rb\n", ChunkNewLine),
            (b"5\r", ChunkNewLine),
            (b"5", ChunkNewLine),
            (b"5 \r\n", ChunkExtension),
            (b"5\t\r\n", ChunkExtension),
            (b"5;\r\n", ChunkExtension),
            (b"5;a \r\n", ChunkExtension),
            (b"5;a=b \r\n", ChunkExtension),
            (b"5;=b\r\n", ChunkExtension),
            (b"5;a=\r\n", ChunkExtension),
            (b"5;a=\"b\r\n", ChunkExtension),
            (b"5;a=\"b\\\"\r\n", ChunkExtension),
            (b"5;a=\"b\x7f\"\r\n", ChunkExtension),
            (b"5;a=\"b\"c\r\n", ChunkExtension),
            (b"5;a=b=c\r\n", ChunkExtension),
            (b"5;a b\r\n", ChunkExtension),
            (b"5;a(b)\r\n", ChunkExtension),
            (b"5;a=\0\r\n", ChunkExtension),
            (b"5 a\r\n", ChunkExtension),
        ];
        for &(line, reason) in cases {
            assert_eq!(
                parse_chunk_line(line),
                Err(reason),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }
}
