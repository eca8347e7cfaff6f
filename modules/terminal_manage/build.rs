//! Records the commit the binary is built from, for `GET /v1/system`
//! (nothing when git or the repository is not there).

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for watched in [".git/HEAD", ".git/refs/heads"] {
        let p = root.join(watched);
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(&root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if let Some(c) = commit.filter(|c| !c.is_empty()) {
        println!("cargo:rustc-env=BINDERY_COMMIT={c}");
    }
}
