//! Request traces: a table of files and the sequence of requests for them.
//!
//! Two sources:
//!
//! - [`synthetic`]: Zipf popularity with parameter alpha over a file set whose sizes follow
//!   SPECweb99's four classes (see [`SPECWEB99_CLASSES`]); deterministic for a seed.
//! - [`parse_clf_line`] / [`load_clf`]: an access log in Common Log Format
//!   (`host ident user [date] "GET /path HTTP/1.0" status bytes`, extra fields such as the
//!   Combined format's referer and agent ignored). The path is the target; a file's size is the
//!   largest byte count logged for it (a whole-file transfer), each request transmits its own
//!   byte count. Only `GET` requests answered `200` with a byte count are replayed: other
//!   statuses carry no file body (304, errors) or only part of one (206), so they tell nothing
//!   about what a cache would hold. Lines that do not parse are skipped and counted.

use std::collections::HashMap;
use std::io::BufRead;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use thiserror::Error;

/// The files a trace refers to, by dense id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileTable {
    names: Vec<String>,
    sizes: Vec<u64>,
}

impl FileTable {
    /// Adds a file and returns its id.
    pub fn push(&mut self, name: String, size: u64) -> u32 {
        let id = u32::try_from(self.names.len()).expect("fewer than 2^32 files");
        self.names.push(name);
        self.sizes.push(size);
        id
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The request target (URL path) of file `id`.
    pub fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    /// The whole file's size in bytes: what a cache miss reads and the cache holds.
    pub fn size(&self, id: u32) -> u64 {
        self.sizes[id as usize]
    }

    /// Sum of all file sizes.
    pub fn total_bytes(&self) -> u64 {
        self.sizes.iter().sum()
    }
}

/// One request of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub file: u32,
    /// Response body bytes sent for this request.
    pub bytes: u64,
}

/// A trace to replay: files and requests in issue order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub files: FileTable,
    pub requests: Vec<Request>,
    /// One line saying where the trace came from, for reports.
    pub description: String,
}

impl Workload {
    /// Bytes of the distinct files the requests touch (the working set).
    pub fn working_set_bytes(&self) -> u64 {
        let mut seen = vec![false; self.files.len()];
        let mut total = 0;
        for request in &self.requests {
            let seen = &mut seen[request.file as usize];
            if !*seen {
                *seen = true;
                total += self.files.size(request.file);
            }
        }
        total
    }

    /// Number of distinct files requested.
    pub fn distinct_files(&self) -> usize {
        let mut seen = vec![false; self.files.len()];
        self.requests
            .iter()
            .filter(|request| !std::mem::replace(&mut seen[request.file as usize], true))
            .count()
    }
}

/// One of SPECweb99's file size classes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SizeClass {
    /// Files are 1 to 9 units long.
    pub unit_bytes: u64,
    /// Share of requests that go to this class.
    pub request_share: f64,
}

/// SPECweb99's classes: 0.1–0.9 KB (35% of requests), 1–9 KB (50%), 10–90 KB (14%),
/// 100–900 KB (1%), each in steps of its unit. Class 0's unit, 0.1 KB, is taken as 102 bytes.
pub const SPECWEB99_CLASSES: [SizeClass; 4] = [
    SizeClass {
        unit_bytes: 102,
        request_share: 0.35,
    },
    SizeClass {
        unit_bytes: 1024,
        request_share: 0.50,
    },
    SizeClass {
        unit_bytes: 10 * 1024,
        request_share: 0.14,
    },
    SizeClass {
        unit_bytes: 100 * 1024,
        request_share: 0.01,
    },
];

/// Parameters of a synthetic trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyntheticSpec {
    /// Number of distinct files.
    pub files: usize,
    /// Zipf exponent: the file of popularity rank k is requested with probability ∝ 1/k^alpha.
    pub alpha: f64,
    pub requests: usize,
    pub seed: u64,
}

/// Why a synthetic trace cannot be made.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SyntheticError {
    #[error("a synthetic workload needs at least one file")]
    NoFiles,
    #[error("the Zipf exponent must be finite and >= 0, not {0}")]
    BadAlpha(f64),
}

/// A Zipf/SPECweb99 trace.
///
/// File `id` has popularity rank `id + 1` (id 0 is the most requested). Classes are dealt to
/// ranks, from the most popular down, each to the class furthest below its share of the
/// popularity mass dealt so far; so every class gets its SPECweb99 share of requests (35/50/14/1),
/// popular and unpopular files alike, whatever alpha is, with no dependence on the seed. Within a
/// class a file's size, 1 to 9 units, is drawn uniformly from the seed. Requests are independent
/// draws from the Zipf distribution (no temporal locality beyond popularity).
pub fn synthetic(spec: &SyntheticSpec) -> Result<Workload, SyntheticError> {
    if spec.files == 0 {
        return Err(SyntheticError::NoFiles);
    }
    if !spec.alpha.is_finite() || spec.alpha < 0.0 {
        return Err(SyntheticError::BadAlpha(spec.alpha));
    }
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let weights: Vec<f64> = (1..=spec.files)
        .map(|rank| (rank as f64).powf(-spec.alpha))
        .collect();

    let mut files = FileTable::default();
    let mut dealt_mass = [0.0f64; SPECWEB99_CLASSES.len()];
    let mut cumulative_mass = 0.0;
    for (id, &weight) in weights.iter().enumerate() {
        cumulative_mass += weight;
        let class = (0..SPECWEB99_CLASSES.len())
            .max_by(|&a, &b| {
                let deficit =
                    |c: usize| SPECWEB99_CLASSES[c].request_share * cumulative_mass - dealt_mass[c];
                deficit(a).total_cmp(&deficit(b)).then(b.cmp(&a))
            })
            .expect("four classes");
        dealt_mass[class] += weight;
        let units = rng.gen_range(1..=9u64);
        let size = units * SPECWEB99_CLASSES[class].unit_bytes;
        files.push(format!("/specweb/file{id:07}_class{class}_{units}"), size);
    }

    // Inverse-CDF sampling: a binary search per request.
    let mut cdf = weights;
    let mut running = 0.0;
    for weight in &mut cdf {
        running += *weight;
        *weight = running;
    }
    let total = running;
    let last = spec.files - 1;
    let requests = (0..spec.requests)
        .map(|_| {
            let point = rng.r#gen::<f64>() * total;
            let id = cdf.partition_point(|&c| c <= point).min(last);
            let file = u32::try_from(id).expect("fewer than 2^32 files");
            Request {
                file,
                bytes: files.size(file),
            }
        })
        .collect();
    Ok(Workload {
        description: format!(
            "synthetic: {} files ({:.1} MB), Zipf alpha {}, SPECweb99 size classes, {} requests, seed {}",
            spec.files,
            files.total_bytes() as f64 / MB,
            spec.alpha,
            spec.requests,
            spec.seed
        ),
        files,
        requests,
    })
}

const MB: f64 = 1024.0 * 1024.0;

/// The fields of one Common Log Format line that a trace uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogEntry<'a> {
    pub host: &'a str,
    pub method: &'a str,
    pub target: &'a str,
    pub status: u16,
    /// `None` for `-` (no body sent).
    pub bytes: Option<u64>,
}

/// Why a log line is not Common Log Format.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClfError {
    #[error("no host, ident and user before the date")]
    MissingPrefix,
    #[error("no [date]")]
    MissingDate,
    #[error("no quoted request line after the date")]
    MissingRequest,
    #[error("request line is not `METHOD TARGET [VERSION]`")]
    BadRequestLine,
    #[error("status is not a three-digit number")]
    BadStatus,
    #[error("byte count is neither a number nor `-`")]
    BadBytes,
}

/// Parses `host ident user [date] "METHOD TARGET VERSION" status bytes [anything]`.
pub fn parse_clf_line(line: &str) -> Result<LogEntry<'_>, ClfError> {
    let open = line.find('[').ok_or(ClfError::MissingDate)?;
    let prefix: Vec<&str> = line[..open].split_whitespace().collect();
    let host = match prefix.as_slice() {
        [host, _ident, _user] => *host,
        _ => return Err(ClfError::MissingPrefix),
    };
    let close = open + line[open..].find(']').ok_or(ClfError::MissingDate)?;
    let rest = line[close + 1..].trim_start();
    let quoted = rest.strip_prefix('"').ok_or(ClfError::MissingRequest)?;
    let end = closing_quote(quoted).ok_or(ClfError::MissingRequest)?;
    let request_line = &quoted[..end];
    let mut parts = request_line.split_whitespace();
    let (method, target) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        // HTTP/0.9 request lines have no version.
        (Some(method), Some(target), _, None) => (method, target),
        _ => return Err(ClfError::BadRequestLine),
    };
    let mut fields = quoted[end + 1..].split_whitespace();
    let status = fields
        .next()
        .filter(|s| s.len() == 3)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or(ClfError::BadStatus)?;
    let bytes = match fields.next() {
        Some("-") => None,
        Some(count) => Some(count.parse::<u64>().map_err(|_| ClfError::BadBytes)?),
        None => return Err(ClfError::BadBytes),
    };
    Ok(LogEntry {
        host,
        method,
        target,
        status,
        bytes,
    })
}

/// The index of the first unescaped `"` in `text`.
fn closing_quote(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (index, byte) in text.bytes().enumerate() {
        match byte {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => return Some(index),
            _ => {}
        }
    }
    None
}

/// What [`load_clf`] did with the lines it read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClfStats {
    pub lines: u64,
    /// Lines that are not Common Log Format (blank lines included).
    pub malformed: u64,
    /// Well-formed lines left out: not a `GET` answered `200` with a byte count.
    pub filtered: u64,
    /// Lines turned into requests.
    pub replayed: u64,
}

/// Reads a Common Log Format log into a trace of at most `max_requests` requests.
pub fn load_clf(
    reader: impl BufRead,
    max_requests: usize,
    source: &str,
) -> std::io::Result<(Workload, ClfStats)> {
    let mut stats = ClfStats::default();
    let mut files = FileTable::default();
    let mut file_ids: HashMap<String, u32> = HashMap::new();
    let mut requests = Vec::new();
    let mut raw = Vec::new();
    let mut reader = reader;
    while requests.len() < max_requests {
        raw.clear();
        if reader.read_until(b'\n', &mut raw)? == 0 {
            break;
        }
        // Logs are not always valid UTF-8: what is not is replaced, and only then copied.
        let line = String::from_utf8_lossy(&raw);
        stats.lines += 1;
        let entry = match parse_clf_line(line.trim_end()) {
            Ok(entry) => entry,
            Err(_) => {
                stats.malformed += 1;
                continue;
            }
        };
        let bytes = match entry {
            LogEntry {
                method: "GET",
                status: 200,
                bytes: Some(bytes),
                ..
            } => bytes,
            _ => {
                stats.filtered += 1;
                continue;
            }
        };
        let file = match file_ids.get(entry.target) {
            Some(&id) => {
                // A whole file is at least as large as any response that sent it.
                if bytes > files.sizes[id as usize] {
                    files.sizes[id as usize] = bytes;
                }
                id
            }
            None => {
                let id = files.push(entry.target.to_owned(), bytes);
                file_ids.insert(entry.target.to_owned(), id);
                id
            }
        };
        requests.push(Request { file, bytes });
        stats.replayed += 1;
    }
    let description = format!(
        "log {source}: {} requests for {} files ({:.1} MB); {} lines read, {} malformed, {} not a GET answered 200",
        requests.len(),
        files.len(),
        files.total_bytes() as f64 / MB,
        stats.lines,
        stats.malformed,
        stats.filtered
    );
    Ok((
        Workload {
            files,
            requests,
            description,
        },
        stats,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(files: usize, alpha: f64, requests: usize, seed: u64) -> SyntheticSpec {
        SyntheticSpec {
            files,
            alpha,
            requests,
            seed,
        }
    }

    fn class_of(size: u64) -> usize {
        SPECWEB99_CLASSES
            .iter()
            .rposition(|class| size >= class.unit_bytes)
            .unwrap()
    }

    #[test]
    fn rank_one_file_is_the_most_requested() {
        let workload = synthetic(&spec(1000, 1.0, 200_000, 7)).unwrap();
        let mut counts = vec![0u64; workload.files.len()];
        for request in &workload.requests {
            counts[request.file as usize] += 1;
        }
        let top = counts.iter().enumerate().max_by_key(|&(_, c)| c).unwrap().0;
        assert_eq!(top, 0);
        // Zipf with alpha 1: rank 1 gets twice rank 2's and ten times rank 10's requests.
        let ratio_2 = counts[0] as f64 / counts[1] as f64;
        let ratio_10 = counts[0] as f64 / counts[9] as f64;
        assert!((1.8..2.2).contains(&ratio_2), "rank1/rank2 = {ratio_2}");
        assert!((8.5..11.5).contains(&ratio_10), "rank1/rank10 = {ratio_10}");
        // And the share of rank 1 is 1/H(1000) = 13.4%.
        let share = counts[0] as f64 / workload.requests.len() as f64;
        assert!((0.128..0.140).contains(&share), "rank-1 share {share}");
    }

    #[test]
    fn class_mix_is_near_specweb99() {
        for alpha in [0.6, 1.0] {
            let workload = synthetic(&spec(5000, alpha, 200_000, 3)).unwrap();
            let mut per_class = [0u64; 4];
            for request in &workload.requests {
                per_class[class_of(request.bytes)] += 1;
            }
            let total = workload.requests.len() as f64;
            for (class, &count) in per_class.iter().enumerate() {
                let share = count as f64 / total;
                let expected = SPECWEB99_CLASSES[class].request_share;
                assert!(
                    (share - expected).abs() < 0.015,
                    "alpha {alpha} class {class}: {share:.3} vs {expected}"
                );
            }
        }
    }

    #[test]
    fn sizes_are_whole_units_of_their_class() {
        let workload = synthetic(&spec(2000, 1.0, 10, 1)).unwrap();
        for id in 0..workload.files.len() as u32 {
            let size = workload.files.size(id);
            let unit = SPECWEB99_CLASSES[class_of(size)].unit_bytes;
            assert_eq!(size % unit, 0);
            assert!((1..=9).contains(&(size / unit)), "size {size}");
        }
    }

    #[test]
    fn same_seed_same_trace_other_seed_other_trace() {
        let a = synthetic(&spec(500, 0.9, 5000, 42)).unwrap();
        let b = synthetic(&spec(500, 0.9, 5000, 42)).unwrap();
        let c = synthetic(&spec(500, 0.9, 5000, 43)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.requests, c.requests);
    }

    #[test]
    fn rejects_empty_file_set_and_bad_alpha() {
        assert_eq!(synthetic(&spec(0, 1.0, 1, 1)), Err(SyntheticError::NoFiles));
        assert!(matches!(
            synthetic(&spec(10, f64::NAN, 1, 1)),
            Err(SyntheticError::BadAlpha(_))
        ));
        assert!(matches!(
            synthetic(&spec(10, -1.0, 1, 1)),
            Err(SyntheticError::BadAlpha(_))
        ));
    }

    #[test]
    fn parses_common_and_combined_lines() {
        let line = r#"192.168.1.20 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326"#;
        assert_eq!(
            parse_clf_line(line),
            Ok(LogEntry {
                host: "192.168.1.20",
                method: "GET",
                target: "/apache_pb.gif",
                status: 200,
                bytes: Some(2326),
            })
        );
        let combined = r#"h - - [01/Jul/1995:00:00:01 -0400] "GET /a/b.html?x=1 HTTP/1.1" 200 6245 "http://ref/" "Mozilla/5.0 (X11)""#;
        let entry = parse_clf_line(combined).unwrap();
        assert_eq!(entry.target, "/a/b.html?x=1");
        assert_eq!(entry.bytes, Some(6245));
        let http09 = r#"h - - [01/Jul/1995:00:00:01 -0400] "GET /old" 200 10"#;
        assert_eq!(parse_clf_line(http09).unwrap().target, "/old");
        let no_body = r#"h - - [01/Jul/1995:00:00:01 -0400] "GET /x HTTP/1.0" 304 -"#;
        assert_eq!(parse_clf_line(no_body).unwrap().bytes, None);
        let escaped = r#"h - - [d] "GET /say\"hi\" HTTP/1.0" 200 5"#;
        assert_eq!(parse_clf_line(escaped).unwrap().target, r#"/say\"hi\""#);
    }

    #[test]
    fn rejects_bad_lines() {
        let cases = [
            ("", ClfError::MissingDate),
            ("garbage", ClfError::MissingDate),
            (r#"h - [d] "GET / HTTP/1.0" 200 1"#, ClfError::MissingPrefix),
            (r#"h - - [d "GET / HTTP/1.0" 200 1"#, ClfError::MissingDate),
            (
                r#"h - - [d] GET / HTTP/1.0 200 1"#,
                ClfError::MissingRequest,
            ),
            (
                r#"h - - [d] "GET / HTTP/1.0 200 1"#,
                ClfError::MissingRequest,
            ),
            (r#"h - - [d] "GET" 200 1"#, ClfError::BadRequestLine),
            (
                r#"h - - [d] "GET / HTTP/1.0 x" 200 1"#,
                ClfError::BadRequestLine,
            ),
            (r#"h - - [d] "GET / HTTP/1.0" OK 1"#, ClfError::BadStatus),
            (r#"h - - [d] "GET / HTTP/1.0" 2000 1"#, ClfError::BadStatus),
            (r#"h - - [d] "GET / HTTP/1.0" 200 12k"#, ClfError::BadBytes),
            (r#"h - - [d] "GET / HTTP/1.0" 200"#, ClfError::BadBytes),
        ];
        for (line, expected) in cases {
            assert_eq!(parse_clf_line(line), Err(expected), "{line:?}");
        }
    }

    #[test]
    fn load_clf_counts_skips_and_sizes_files_by_their_largest_transfer() {
        let log = concat!(
            "a - - [d] \"GET /x HTTP/1.0\" 200 100\n",
            "not a log line\n",
            "a - - [d] \"GET /y HTTP/1.0\" 200 50\n",
            "a - - [d] \"GET /x HTTP/1.0\" 304 -\n",
            "a - - [d] \"POST /form HTTP/1.0\" 200 10\n",
            "a - - [d] \"GET /x HTTP/1.0\" 200 300\n",
            "\n",
            "a - - [d] \"GET /missing HTTP/1.0\" 404 200\n",
            "a - - [d] \"GET /y HTTP/1.0\" 200 50\n",
        );
        let (workload, stats) = load_clf(log.as_bytes(), usize::MAX, "test").unwrap();
        assert_eq!(
            stats,
            ClfStats {
                lines: 9,
                malformed: 2,
                filtered: 3,
                replayed: 4,
            }
        );
        assert_eq!(workload.files.len(), 2);
        assert_eq!(workload.files.name(0), "/x");
        assert_eq!(workload.files.size(0), 300);
        assert_eq!(workload.files.size(1), 50);
        let bytes: Vec<u64> = workload.requests.iter().map(|r| r.bytes).collect();
        assert_eq!(bytes, [100, 50, 300, 50]);
        assert_eq!(workload.working_set_bytes(), 350);
        assert_eq!(workload.distinct_files(), 2);

        let (capped, _) = load_clf(log.as_bytes(), 2, "test").unwrap();
        assert_eq!(capped.requests.len(), 2);
    }
}
