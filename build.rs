//! Puts the git commit the binary is built from into `--version` (`WORKFLOW_METRICS_COMMIT`).

use std::path::Path;
use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|commit| commit.trim().to_owned())
        .filter(|commit| !commit.is_empty())
        .unwrap_or_else(|| "commit unknown".to_owned());
    println!("cargo:rustc-env=WORKFLOW_METRICS_COMMIT={commit}");
    // Built again when HEAD moves (a commit, a checkout); outside a git checkout, only when this
    // file changes (a path that does not exist would rebuild every time).
    let watched: Vec<&str> = [".git/HEAD", ".git/refs/heads", ".git/packed-refs"]
        .into_iter()
        .filter(|path| Path::new(path).exists())
        .collect();
    for path in &watched {
        println!("cargo:rerun-if-changed={path}");
    }
    if watched.is_empty() {
        println!("cargo:rerun-if-changed=build.rs");
    }
}
