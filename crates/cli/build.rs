//! Puts the git commit the binary is built from into `BATON_GIT_COMMIT` (for `baton --version`):
//! `git rev-parse --short HEAD`, or "unknown" where there is no git or no repository (a source
//! tarball, a vendored build), which must still build.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_string())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    if commit.is_some() {
        // Rebuild when HEAD moves: HEAD itself (a checkout), the branch it names (a commit), and
        // packed-refs (where a branch may live after `git gc`).
        let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(branch);
        }
        for name in watched {
            let path = git(&["rev-parse", "--path-format=absolute", "--git-path", &name]);
            if let Some(path) = path.filter(|p| PathBuf::from(p).exists()) {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    println!(
        "cargo:rustc-env=BATON_GIT_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
}
