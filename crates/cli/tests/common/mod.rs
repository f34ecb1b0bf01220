//! Helpers shared by the end-to-end tests.

use baton_lab::Lab;

/// Where node `i`'s datapath is pinned.
pub fn pin_dir(lab: &Lab, i: usize) -> std::path::PathBuf {
    let netns = lab
        .in_node(i, baton_bpf::current_netns_inum)
        .unwrap()
        .expect("the node's namespace inode");
    baton_bpf::pins::dir(netns, "eth0")
}
