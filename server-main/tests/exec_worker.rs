//! `worker.exec`, the job runner, with real children (shell scripts
//! written by the tests) working real queues, fed and read over HTTP:
//! exit 0 acks (and replies), a failure is retried, too many deliveries
//! dead-letter, concurrency is honoured, and with the file queue a job
//! interrupted by a server crash runs again after the restart while its
//! child does not outlive the server.

mod common;

use std::path::Path;
use std::time::Duration;

use common::children::{alive, eventually, script};
use common::{Server, TempDir};

/// The default configuration plus a `worker.exec` instance named `jobs`
/// working `queue`, configured by `config` (TOML lines).
fn with_worker(queue: &str, config: &str) -> String {
    common::config(&format!(
        "[instances.jobs]\nmodule = \"worker.exec\"\nbind = [\"{queue}\"]\n\
         [instances.jobs.config]\n{config}\n"
    ))
}

fn publish(server: &Server, path: &str, body: &str) -> String {
    let r = common::agent()
        .post(&server.url(path))
        .set("Content-Type", "text/plain")
        .send_string(body)
        .unwrap();
    assert_eq!(r.status(), 201);
    r.header("Message-Id").unwrap().to_owned()
}

/// Takes the next message of `queue` (waiting up to 20 s) and acks it.
fn take(server: &Server, queue: &str) -> ureq::Response {
    let r = common::agent()
        .get(&server.url(&format!("{queue}?wait=20")))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200, "nothing arrived on {queue}");
    let id = r.header("Message-Id").unwrap().to_owned();
    common::agent()
        .delete(&server.url(&format!("{queue}/messages/{id}")))
        .call()
        .unwrap();
    r
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_job_that_exits_0_is_acked_and_its_stdout_published_with_the_original_id() {
    let dir = TempDir::new();
    let s = script(&dir.0, "job.sh", "printf '%s built' \"$(cat)\"");
    let server = Server::start(&with_worker(
        "/queues/jobs",
        &format!(
            "command = [\"{}\"]\nreply_to = \"/queues/results\"\nreply_content_type = \"text/plain\"",
            s.display()
        ),
    ));
    let id = publish(&server, "/queues/jobs", "release-7");
    let reply = take(&server, "/queues/results");
    assert_eq!(reply.header("Original-Id"), Some(id.as_str()));
    assert_eq!(reply.header("Original-Destination"), Some("/queues/jobs"));
    assert_eq!(reply.header("Content-Type"), Some("text/plain"));
    assert_eq!(reply.into_string().unwrap(), "release-7 built");
    assert!(eventually(|| common::metric(
        &server,
        "bindery_jobs_succeeded_total",
        ""
    )
    .is_some_and(|n| n == 1)));
    assert_eq!(
        common::metric(
            &server,
            "bindery_destination_depth",
            "destination=\"/queues/jobs\""
        ),
        Some(0),
        "acked, not waiting for another try"
    );
}

#[test]
fn a_failed_job_is_tried_again_and_then_dead_lettered_with_the_reason() {
    let dir = TempDir::new();
    let runs = dir.0.join("runs");
    let s = script(
        &dir.0,
        "fail.sh",
        &format!(
            "echo \"$BINDERY_MESSAGE_ID $BINDERY_DELIVERY_COUNT\" >> {}\necho 'disk on fire' >&2\nexit 3",
            runs.display()
        ),
    );
    let server = Server::start(&with_worker(
        "/queues/jobs",
        &format!(
            "command = [\"{}\"]\nmax_deliveries = 2\ndead_letter = \"/queues/dead\"\nretry_delay = \"100ms\"",
            s.display()
        ),
    ));
    let id = publish(&server, "/queues/jobs", "doomed");
    let dead = take(&server, "/queues/dead");
    assert_eq!(dead.header("Original-Id"), Some(id.as_str()));
    assert_eq!(dead.header("Deliveries"), Some("2"));
    assert_eq!(dead.header("Last-Error"), Some("exited with status 3"));
    assert_eq!(dead.into_string().unwrap(), "doomed");
    assert_eq!(lines(&runs), [format!("{id} 1"), format!("{id} 2")]);
    assert_eq!(
        common::metric(&server, "bindery_jobs_failed_total", ""),
        Some(2)
    );
    assert_eq!(
        common::metric(&server, "bindery_jobs_dead_lettered_total", ""),
        Some(1)
    );
}

#[test]
fn a_job_that_fails_once_succeeds_on_its_next_delivery_and_is_acked_once() {
    let dir = TempDir::new();
    let runs = dir.0.join("runs");
    let s = script(
        &dir.0,
        "flaky.sh",
        &format!(
            "echo \"$BINDERY_DELIVERY_COUNT\" >> {}\n[ \"$BINDERY_DELIVERY_COUNT\" -ge 2 ]",
            runs.display()
        ),
    );
    let server = Server::start(&with_worker(
        "/queues/jobs",
        &format!("command = [\"{}\"]\nretry_delay = \"100ms\"", s.display()),
    ));
    publish(&server, "/queues/jobs", "x");
    assert!(eventually(|| common::metric(
        &server,
        "bindery_jobs_succeeded_total",
        ""
    ) == Some(1)));
    assert_eq!(lines(&runs), ["1", "2"]);
    assert_eq!(
        common::metric(&server, "bindery_jobs_failed_total", ""),
        Some(1)
    );
}

#[test]
fn concurrency_bounds_the_commands_running_at_once() {
    let dir = TempDir::new();
    let go = dir.0.join("go");
    let done = dir.0.join("done");
    let s = script(
        &dir.0,
        "wait.sh",
        &format!(
            "while [ ! -f {go} ]; do sleep 0.05; done\nprintf '%s\\n' \"$(cat)\" >> {done}",
            go = go.display(),
            done = done.display()
        ),
    );
    let server = Server::start(&with_worker(
        "/queues/jobs",
        &format!("command = [\"{}\"]\nconcurrency = 3", s.display()),
    ));
    for i in 0..5 {
        publish(&server, "/queues/jobs", &format!("job{i}"));
    }
    assert!(eventually(|| common::metric(
        &server,
        "bindery_jobs_running",
        ""
    ) == Some(3)));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(common::metric(&server, "bindery_jobs_running", ""), Some(3));
    assert_eq!(
        common::metric(
            &server,
            "bindery_destination_depth",
            "destination=\"/queues/jobs\""
        ),
        Some(2),
        "three leased, two waiting"
    );
    std::fs::write(&go, "").unwrap();
    assert!(eventually(|| common::metric(
        &server,
        "bindery_jobs_succeeded_total",
        ""
    ) == Some(5)));
    let mut seen = lines(&done);
    seen.sort();
    assert_eq!(seen, ["job0", "job1", "job2", "job3", "job4"]);
}

#[test]
fn with_the_file_queue_a_job_cut_by_a_crash_runs_again_after_the_restart() {
    let dir = TempDir::new();
    let gate = dir.0.join("gate");
    let pids = dir.0.join("pids");
    let finished = dir.0.join("finished");
    // The first run of each job waits (so the crash interrupts it); runs
    // after the gate file exists go straight through.
    let s = script(
        &dir.0,
        "durable.sh",
        &format!(
            "echo $$ >> {pids}\nwhile [ ! -f {gate} ]; do sleep 0.05; done\nprintf '%s\\n' \"$(cat)\" >> {finished}",
            pids = pids.display(),
            gate = gate.display(),
            finished = finished.display()
        ),
    );
    let config = with_worker(
        "/durable/jobs",
        &format!("command = [\"{}\"]\nconcurrency = 2", s.display()),
    );
    let server = Server::start_at(&dir.0, &config, &["--threads", "2"]);
    publish(&server, "/durable/jobs", "a");
    publish(&server, "/durable/jobs", "b");
    assert!(eventually(|| lines(&pids).len() == 2));
    let first = lines(&pids);
    server.kill9();
    // The children do not outlive the server (parent-death signal).
    for pid in &first {
        assert!(
            eventually(|| !alive(pid)),
            "job pid {pid} outlived a kill -9 of the server"
        );
    }
    assert!(lines(&finished).is_empty());
    std::fs::write(&gate, "").unwrap();
    let server = Server::start_at(&dir.0, &config, &["--threads", "2"]);
    assert!(
        eventually(|| lines(&finished).len() == 2),
        "{:?}",
        lines(&finished)
    );
    let mut done = lines(&finished);
    done.sort();
    assert_eq!(done, ["a", "b"]);
    assert!(eventually(|| common::metric(
        &server,
        "bindery_jobs_succeeded_total",
        ""
    ) == Some(2)));
}

#[test]
fn configuration_mistakes_name_the_field() {
    let dir = TempDir::new();
    for (config, field) in [
        ("command = []", "command"),
        ("command = [\"true\"]\nmax_deliveries = 3", "dead_letter"),
        (
            "command = [\"true\"]\ntimeout = \"10s\"\nlease = \"5s\"",
            "lease",
        ),
        (
            "command = [\"true\"]\ntimeout = \"soon\"",
            "\"soon\" is not a duration",
        ),
        ("command = [\"true\"]\nconcurency = 2", "concurency"),
    ] {
        let path = dir.0.join("bindery.toml");
        std::fs::write(
            &path,
            with_worker("/queues/jobs", config)
                .replace("bindery-data", &dir.0.join("data").display().to_string()),
        )
        .unwrap();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_bindery"))
            .arg("--config")
            .arg(&path)
            .arg("--check-config")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{config}: {err}");
        assert!(
            err.contains("\"jobs\"") && err.contains(field),
            "{config}: {err}"
        );
    }
}
