//! The lab's web root: a few files whose content is a pure function of their path, so a test can
//! compute the expected bytes (and their sha256) without a network.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// The files every lab serves: URL path and length in bytes.
pub const LAB_FILES: &[(&str, usize)] = &[
    ("/f/1k", 1024),
    ("/f/100k", 102_400),
    ("/f/10m", 10_485_760),
    ("/index.html", 4096),
];

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The deterministic content of the lab file at `path`, `len` bytes long.
///
/// Printable text (a 64-character alphabet, a newline every 64 bytes) drawn from a splitmix64
/// stream seeded by the path, so it is not trivially compressible and two paths differ. A shorter
/// `len` gives a prefix of a longer one.
pub fn file_content(path: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    ContentStream::new(path).fill(&mut out, len);
    out
}

/// [`file_content`] of a path, produced piecewise: the bytes the stream appends, in any number
/// of pieces, are exactly `file_content(path, n)` for the `n` appended so far. How the static
/// server sends generated objects of up to 16 MiB without holding one whole in memory.
#[derive(Debug, Clone)]
pub struct ContentStream {
    state: u64,
    word: u64,
    pos: usize,
}

impl ContentStream {
    /// The stream of `path`'s content, at its first byte.
    pub fn new(path: &str) -> Self {
        ContentStream {
            state: fnv1a(path.as_bytes()),
            word: 0,
            pos: 0,
        }
    }

    /// How many bytes the stream has produced.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Appends the next `n` bytes of the content to `out`.
    pub fn fill(&mut self, out: &mut Vec<u8>, n: usize) {
        out.reserve(n);
        for _ in 0..n {
            let pos = self.pos;
            if pos.is_multiple_of(8) {
                self.word = splitmix64(&mut self.state);
            }
            let byte = (self.word >> ((pos % 8) * 8)) as u8;
            out.push(if pos % 64 == 63 {
                b'\n'
            } else {
                ALPHABET[(byte & 63) as usize]
            });
            self.pos += 1;
        }
    }
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The content of a lab file ([`LAB_FILES`]), computed once per process; `None` for other paths.
pub fn lab_file(path: &str) -> Option<&'static [u8]> {
    static FILES: OnceLock<Vec<OnceLock<Vec<u8>>>> = OnceLock::new();
    let files = FILES.get_or_init(|| LAB_FILES.iter().map(|_| OnceLock::new()).collect());
    let k = LAB_FILES.iter().position(|(p, _)| *p == path)?;
    Some(files[k].get_or_init(|| file_content(LAB_FILES[k].0, LAB_FILES[k].1)))
}

/// The expected sha256 (hex) of a lab file, or `None` if `path` is not in [`LAB_FILES`].
/// Computed once per process.
pub fn expected_sha256(path: &str) -> Option<String> {
    static HASHES: OnceLock<Vec<OnceLock<String>>> = OnceLock::new();
    let hashes = HASHES.get_or_init(|| LAB_FILES.iter().map(|_| OnceLock::new()).collect());
    let k = LAB_FILES.iter().position(|(p, _)| *p == path)?;
    Some(
        hashes[k]
            .get_or_init(|| sha256_hex(lab_file(path).expect("a lab file")))
            .clone(),
    )
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
