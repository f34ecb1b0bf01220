//! What serving one request costs a node, in CPU and disk time.
//!
//! The defaults are the simulator parameters of Pai, Aron, Banga, Svendsen, Druschel, Zwaenepoel,
//! Nahum, "Locality-Aware Request Distribution in Cluster-based Network Servers" (ASPLOS 1998,
//! section 4.1), which they measured on their own server (Flash/Apache on 300 MHz Pentium II
//! machines):
//!
//! | step | cost | resource |
//! | --- | --- | --- |
//! | connection establishment | 145 µs | CPU |
//! | connection teardown | 145 µs | CPU |
//! | transmit processing | 40 µs per 512 bytes | CPU |
//! | disk read, first access | 28 ms (two seeks plus rotational latency) | disk |
//! | disk transfer | 410 µs per 4 KB (about 10 MB/s) | disk |
//! | disk read, per further 44 KB beyond the first 44 KB | 14 ms (one more seek plus rotation) | disk |
//!
//! KB is 1024 bytes. A partial unit costs a whole one (a 513-byte response is two 512-byte
//! transmit units; a 45 KB file pays one extra 14 ms): data moves in packets and blocks. Times are
//! integer nanoseconds so that a simulation is exactly reproducible.

/// Per-request service demands; [`CostModel::default`] is Pai et al.'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostModel {
    /// CPU time to accept a connection (ns).
    pub connect_ns: u64,
    /// CPU time to close a connection (ns).
    pub teardown_ns: u64,
    /// CPU time per `transmit_unit_bytes` of response sent (ns).
    pub transmit_ns_per_unit: u64,
    pub transmit_unit_bytes: u64,
    /// Disk time before the first byte of a file that is not cached (ns).
    pub disk_latency_ns: u64,
    /// Disk time per `disk_block_bytes` read (ns).
    pub disk_ns_per_block: u64,
    pub disk_block_bytes: u64,
    /// Disk time per further `disk_seek_span_bytes` beyond the first span: a large file is not
    /// contiguous, so each span costs one more seek and rotation (ns).
    pub disk_extra_seek_ns: u64,
    pub disk_seek_span_bytes: u64,
    /// Before a miss is read: the wait for a distant origin (ns). A delay, not a resource: the
    /// origin answers many fetches at once. 0 by default (the file is on the node's disk).
    pub origin_latency_ns: u64,
    /// CPU time the accepting node spends handing a connection to another node (ns): the
    /// distributor's cost, 0 by default (the LARD paper's front end is free).
    pub handoff_ns: u64,
}

impl Default for CostModel {
    fn default() -> Self {
        CostModel {
            connect_ns: 145_000,
            teardown_ns: 145_000,
            transmit_ns_per_unit: 40_000,
            transmit_unit_bytes: 512,
            disk_latency_ns: 28_000_000,
            disk_ns_per_block: 410_000,
            disk_block_bytes: 4 * 1024,
            disk_extra_seek_ns: 14_000_000,
            disk_seek_span_bytes: 44 * 1024,
            origin_latency_ns: 0,
            handoff_ns: 0,
        }
    }
}

impl CostModel {
    /// A cache tier in front of a distant origin (`baton bench cache`'s lab): a miss waits
    /// `origin_delay_ns` for the origin and reads nothing from a local disk (the cache lives in
    /// memory); every request costs `request_cpu_ns` of CPU at the node that serves it, one
    /// handed to another node also `handoff_ns` at the node that accepted it.
    pub fn cache_tier(origin_delay_ns: u64, request_cpu_ns: u64, handoff_ns: u64) -> Self {
        CostModel {
            connect_ns: request_cpu_ns,
            teardown_ns: 0,
            transmit_ns_per_unit: 0,
            transmit_unit_bytes: 512,
            disk_latency_ns: 0,
            disk_ns_per_block: 0,
            disk_block_bytes: 4 * 1024,
            disk_extra_seek_ns: 0,
            disk_seek_span_bytes: 44 * 1024,
            origin_latency_ns: origin_delay_ns,
            handoff_ns,
        }
    }
}

impl CostModel {
    /// CPU time to send a response of `bytes`.
    pub fn transmit_cpu_ns(&self, bytes: u64) -> u64 {
        bytes.div_ceil(self.transmit_unit_bytes.max(1)) * self.transmit_ns_per_unit
    }

    /// All the CPU time of one request whose response is `bytes`: connect, transmit, teardown.
    pub fn request_cpu_ns(&self, bytes: u64) -> u64 {
        self.connect_ns + self.transmit_cpu_ns(bytes) + self.teardown_ns
    }

    /// Disk time to read a whole file of `bytes` into the cache.
    pub fn disk_read_ns(&self, bytes: u64) -> u64 {
        let blocks = bytes.div_ceil(self.disk_block_bytes.max(1));
        let extra_spans = bytes
            .saturating_sub(self.disk_seek_span_bytes)
            .div_ceil(self.disk_seek_span_bytes.max(1));
        self.disk_latency_ns
            + blocks * self.disk_ns_per_block
            + extra_spans * self.disk_extra_seek_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KB: u64 = 1024;

    #[test]
    fn cached_8kb_file_costs_connect_teardown_and_16_transmit_units() {
        let cost = CostModel::default();
        assert_eq!(cost.request_cpu_ns(8 * KB), (145 + 145 + 16 * 40) * 1_000);
    }

    #[test]
    fn transmit_rounds_partial_packets_up() {
        let cost = CostModel::default();
        assert_eq!(cost.transmit_cpu_ns(0), 0);
        assert_eq!(cost.transmit_cpu_ns(1), 40_000);
        assert_eq!(cost.transmit_cpu_ns(512), 40_000);
        assert_eq!(cost.transmit_cpu_ns(513), 80_000);
    }

    #[test]
    fn miss_of_100kb_pays_latency_25_blocks_and_two_extra_seeks() {
        let cost = CostModel::default();
        // 100 KB = 25 blocks of 4 KB; 56 KB beyond the first 44 KB = two more 44 KB spans.
        let expected_us = 28_000 + 25 * 410 + 2 * 14_000;
        assert_eq!(cost.disk_read_ns(100 * KB), expected_us * 1_000);
    }

    #[test]
    fn small_miss_pays_no_extra_seek() {
        let cost = CostModel::default();
        assert_eq!(cost.disk_read_ns(44 * KB), (28_000 + 11 * 410) * 1_000);
        assert_eq!(
            cost.disk_read_ns(44 * KB + 1),
            (28_000 + 12 * 410 + 14_000) * 1_000
        );
        assert_eq!(cost.disk_read_ns(1), (28_000 + 410) * 1_000);
    }
}
