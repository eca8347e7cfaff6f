//! One data directory: `[server] data_dir`, overridden by `--data-dir`;
//! modules' relative paths (the durable queue's `dir`, the management
//! token file) resolve under it, and the server says where it is at start.

mod common;

use common::{Server, TempDir, agent, config};

fn publish_durable(s: &Server) {
    let r = agent()
        .post(&s.url("/durable/orders"))
        .set("Content-Type", "text/plain")
        .send_string("kept")
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[test]
fn data_lives_under_the_configured_data_directory() {
    let dir = TempDir::new();
    // The test harness sets `[server] data_dir` to <dir>/data.
    let s = Server::start_at(&dir.0, &config(""), &["--threads", "2"]);
    publish_durable(&s);
    let data = dir.0.join("data");
    assert_eq!(s.data_dir.as_deref(), Some(data.as_path()));
    assert!(data.join("durable").is_dir(), "the journal is in data_dir");
    assert!(data.join("manage.token").is_file(), "so is the token");
}

#[test]
fn the_command_line_moves_all_data_at_once() {
    let dir = TempDir::new();
    let elsewhere = dir.0.join("elsewhere");
    let s = Server::start_at(
        &dir.0,
        &config(""),
        &["--threads", "2", "--data-dir", elsewhere.to_str().unwrap()],
    );
    publish_durable(&s);
    assert_eq!(s.data_dir.as_deref(), Some(elsewhere.as_path()));
    assert!(elsewhere.join("durable").is_dir());
    assert!(elsewhere.join("manage.token").is_file());
    assert!(
        !dir.0.join("data").exists(),
        "nothing went to [server] data_dir"
    );
}

#[test]
fn an_absolute_module_path_is_kept() {
    let dir = TempDir::new();
    let own = dir.0.join("own-queue");
    let text = config("").replace(
        "dir = \"durable\"",
        &format!("dir = {:?}", own.display().to_string()),
    );
    let s = Server::start_at(&dir.0, &text, &["--threads", "2"]);
    publish_durable(&s);
    assert!(own.is_dir());
    assert!(!dir.0.join("data").join("durable").exists());
}
