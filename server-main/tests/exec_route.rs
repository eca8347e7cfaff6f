//! `route.exec` with real children: shell scripts written by the tests,
//! reached with curl and raw sockets through the HTTP terminal. Streaming
//! before exit, 50 MB through every pipe at once, timeouts, clients that
//! leave, the concurrency limit, hostile placeholders, grandchildren that
//! hold the pipes, status mapping, the output cap, backpressure, and a
//! route that would shadow a driver's path.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::children::{alive, eventually, script};
use common::{Server, TempDir};

/// A server with one `route.exec` instance named `run` bound to `key`,
/// configured by `config` (TOML lines).
fn serve(key: &str, config: &str) -> Server {
    Server::start(&common::config(&format!(
        "[instances.http.config]\nmax_body_bytes = 62914560\n\n\
         [instances.run]\nmodule = \"route.exec\"\nbind = [\"{key}\"]\n\
         [instances.run.config]\n{config}\n"
    )))
}

fn command(script: &Path) -> String {
    format!("command = [\"{}\"]", script.display())
}

/// Children of `pid` that have exited and were not reaped.
fn zombies(pid: u32) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (state, ppid) = (fields.next(), fields.next());
        if state == Some("Z") && ppid == Some(&pid.to_string()) {
            found.push(stat);
        }
    }
    found
}

/// Reads a file the script writes (its pid), waiting for it.
fn read_when_there(path: &Path) -> String {
    assert!(
        eventually(|| std::fs::read_to_string(path).is_ok_and(|s| s.ends_with('\n'))),
        "{} never appeared",
        path.display()
    );
    std::fs::read_to_string(path).unwrap()
}

fn get(server: &Server, path: &str) -> (u16, String, Vec<(String, String)>) {
    match common::agent().get(&server.url(path)).call() {
        Ok(r) => {
            let headers = r
                .headers_names()
                .into_iter()
                .map(|n| (n.clone(), r.header(&n).unwrap_or("").to_owned()))
                .collect();
            (r.status(), r.into_string().unwrap(), headers)
        }
        Err(ureq::Error::Status(code, r)) => {
            let headers = r
                .headers_names()
                .into_iter()
                .map(|n| (n.clone(), r.header(&n).unwrap_or("").to_owned()))
                .collect();
            (code, r.into_string().unwrap_or_default(), headers)
        }
        Err(e) => panic!("transport error: {e}"),
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[test]
fn output_streams_to_the_client_before_the_command_exits() {
    let dir = TempDir::new();
    let go = dir.0.join("go");
    let s = script(
        &dir.0,
        "stream.sh",
        &format!(
            "echo first\nwhile [ ! -f {go} ]; do sleep 0.05; done\necho second",
            go = go.display()
        ),
    );
    let server = serve("GET /stream", &command(&s));
    let mut conn = TcpStream::connect(server.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    conn.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(conn);
    let mut seen = String::new();
    while !seen.contains("first\n") {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "closed: {seen}");
        seen.push_str(&line);
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("Transfer-Encoding: chunked"), "{seen}");
    // The command is still waiting for `go`: what arrived came before exit.
    assert!(!go.exists());
    std::fs::write(&go, "").unwrap();
    while !seen.ends_with("0\r\n\r\n") {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "closed: {seen}");
        seen.push_str(&line);
    }
    assert!(seen.contains("second\n"), "{seen}");
    assert!(server.healthy());
}

#[test]
fn fifty_megabytes_on_stdin_stdout_and_stderr_at_once_do_not_deadlock() {
    let dir = TempDir::new();
    let counted = dir.0.join("stdin-bytes");
    let s = script(
        &dir.0,
        "pipes.sh",
        &format!(
            "head -c 52428800 /dev/zero &\nhead -c 52428800 /dev/zero >&2 &\n\
             wc -c > {counted}\nwait",
            counted = counted.display()
        ),
    );
    let body = dir.0.join("body");
    std::fs::write(&body, vec![b'x'; 52_428_800]).unwrap();
    let server = serve(
        "POST /pipes",
        &format!("{}\ntimeout = \"120s\"", command(&s)),
    );
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "120", "-o", "/dev/null"])
        .args(["-w", "%{http_code} %{size_download}"])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(server.url("/pipes"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        said,
        "200 52428800",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&counted).unwrap().trim(),
        "52428800"
    );
}

#[test]
fn a_timeout_answers_504_and_kills_the_whole_process_group() {
    let dir = TempDir::new();
    let pids = dir.0.join("pids");
    let s = script(
        &dir.0,
        "slow.sh",
        &format!(
            "sleep 300 &\necho $$ $! > {pids}\necho started >&2\nwait",
            pids = pids.display()
        ),
    );
    let server = serve(
        "GET /slow",
        &format!("{}\ntimeout = \"1s\"\nkill_grace = \"1s\"", command(&s)),
    );
    let (status, body, _) = get(&server, "/slow");
    assert_eq!(status, 504, "{body}");
    assert!(
        body.contains("timed out") && body.contains("started"),
        "{body}"
    );
    let pids = read_when_there(&pids);
    for pid in pids.split_whitespace() {
        assert!(eventually(|| !alive(pid)), "pid {pid} outlived its timeout");
    }
    assert_eq!(common::metric(&server, "bindery_exec_running", ""), Some(0));
    assert!(
        eventually(|| zombies(server.pid()).is_empty()),
        "{:?}",
        zombies(server.pid())
    );
}

#[test]
fn a_client_that_leaves_stops_the_command_and_its_children() {
    let dir = TempDir::new();
    let pids = dir.0.join("pids");
    let s = script(
        &dir.0,
        "forever.sh",
        &format!(
            "sleep 300 &\necho $$ $! > {pids}\necho working\nwait",
            pids = pids.display()
        ),
    );
    let server = serve("GET /forever", &command(&s));
    let mut conn = TcpStream::connect(server.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    conn.write_all(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("working") {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    let pids = read_when_there(&pids);
    drop(conn);
    for pid in pids.split_whitespace() {
        assert!(eventually(|| !alive(pid)), "pid {pid} outlived its client");
    }
    assert!(eventually(|| common::metric(
        &server,
        "bindery_exec_running",
        ""
    ) == Some(0)));
    assert!(server.healthy());
}

#[test]
fn past_max_concurrent_requests_get_503_with_retry_after() {
    let dir = TempDir::new();
    let go = dir.0.join("go");
    let s = script(
        &dir.0,
        "wait.sh",
        &format!(
            "echo waiting\nwhile [ ! -f {go} ]; do sleep 0.05; done\necho done",
            go = go.display()
        ),
    );
    let server = serve("GET /wait", &format!("{}\nmax_concurrent = 1", command(&s)));
    let url = server.url("/wait");
    let first = std::thread::spawn(move || {
        let r = common::agent().get(&url).call().unwrap();
        (r.status(), r.into_string().unwrap())
    });
    assert!(eventually(|| common::metric(
        &server,
        "bindery_exec_running",
        ""
    ) == Some(1)));
    let (status, body, headers) = get(&server, "/wait");
    assert_eq!(status, 503, "{body}");
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    assert!(body.contains("busy"), "{body}");
    std::fs::write(&go, "").unwrap();
    assert_eq!(first.join().unwrap(), (200, "waiting\ndone\n".into()));
    assert_eq!(
        common::metric(&server, "bindery_exec_busy_total", ""),
        Some(1)
    );
}

#[test]
fn hostile_placeholder_values_are_refused_before_anything_runs() {
    let dir = TempDir::new();
    let ran = dir.0.join("ran");
    let s = script(
        &dir.0,
        "greet.sh",
        &format!(
            "echo \"$1\" >> {ran}\necho \"hello $1\"",
            ran = ran.display()
        ),
    );
    let server = serve(
        "GET /greet/{name}",
        &format!(
            "command = [\"{}\", \"{{name}}\"]\nplaceholders = {{ name = \"[a-z]{{1,32}}\" }}",
            s.display()
        ),
    );
    let long = "a".repeat(300);
    for bad in [
        "a;id",
        "%24(id)",
        "..",
        "%2E%2E",
        "..%2F..%2Fetc",
        "a%00b",
        "-rf",
        "%zz",
        long.as_str(),
        "ABC",
    ] {
        // Raw bytes: a URL library would resolve `..` before sending.
        let answer = server.raw(
            format!("GET /greet/{bad} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(10),
        );
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        assert!(head.starts_with("HTTP/1.1 400"), "{bad}: {answer}");
        assert!(body.contains("{name}"), "{bad}: {body}");
    }
    assert!(!ran.exists(), "a command ran for a refused value");
    assert_eq!(get(&server, "/greet/world").1, "hello world\n");
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "world\n");
    assert_eq!(
        common::metric(&server, "bindery_exec_refused_total", ""),
        Some(10)
    );
}

#[test]
fn a_grandchild_holding_the_pipes_does_not_hold_the_answer() {
    let dir = TempDir::new();
    let pid = dir.0.join("grandchild");
    let s = script(
        &dir.0,
        "leave.sh",
        &format!(
            "sleep 300 &\necho $! > {pid}\necho done",
            pid = pid.display()
        ),
    );
    let server = serve("GET /leave", &command(&s));
    // Answered once the child exits (plus exit_delay), though the
    // grandchild keeps stdout open; and the grandchild is stopped.
    let (status, body, _) = get(&server, "/leave");
    assert_eq!((status, body.as_str()), (200, "done\n"));
    let pid = read_when_there(&pid);
    assert!(
        eventually(|| !alive(&pid)),
        "the grandchild {pid} was left running"
    );
}

#[test]
fn exit_codes_map_to_statuses_and_errors_carry_the_stderr_tail() {
    let dir = TempDir::new();
    let s = script(
        &dir.0,
        "fail.sh",
        "echo \"no such package: $BINDERY_PATH\" >&2\nexit \"${1:-1}\"",
    );
    let config = |extra: &str| {
        format!(
            "command = [\"{}\", \"{{query.code}}\"]\nplaceholders = {{ \"query.code\" = \"[0-9]\" }}\n\
             status = {{ \"3\" = 404 }}\n{extra}",
            s.display()
        )
    };
    let server = serve("GET /fail", &config(""));
    let (status, body, _) = get(&server, "/fail?code=3");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("exited with status 3"), "{body}");
    assert!(body.contains("no such package: /fail"), "{body}");
    let (status, body, _) = get(&server, "/fail?code=1");
    assert_eq!(status, 500, "{body}");
    assert_eq!(get(&server, "/fail?code=0").0, 200);
    assert_eq!(get(&server, "/fail").0, 400, "a required query value");
    drop(server);
    let quiet = serve("GET /fail", &config("stderr_in_errors = false"));
    let (status, body, _) = get(&quiet, "/fail?code=3");
    assert_eq!(status, 404);
    assert!(!body.contains("no such package"), "{body}");
}

#[test]
fn the_body_goes_to_stdin_and_request_metadata_to_the_environment() {
    let dir = TempDir::new();
    let s = script(
        &dir.0,
        "echo.sh",
        "cat\necho\necho \"$BINDERY_METHOD $BINDERY_PATH $BINDERY_QUERY $BINDERY_CONTENT_LENGTH $BINDERY_HEADER_X_REQUEST_ID $GREETING\"\n\
         env | grep -c '^HOME=' || true",
    );
    let server = serve(
        "POST /echo/",
        &format!(
            "{}\nheaders = [\"X-Request-Id\"]\nenv = {{ GREETING = \"hi\" }}\ncontent_type = \"text/plain\"",
            command(&s)
        ),
    );
    let r = common::agent()
        .post(&server.url("/echo/a/b?x=1"))
        .set("X-Request-Id", "req-7")
        .send_string("hello")
        .unwrap();
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(
        r.into_string().unwrap(),
        "hello\nPOST /echo/a/b x=1 5 req-7 hi\n0\n",
        "the environment is cleared but for PATH and what is listed"
    );
}

#[test]
fn output_past_the_limit_is_cut_with_a_marker() {
    let dir = TempDir::new();
    let s = script(&dir.0, "big.sh", "head -c 100000 /dev/zero | tr '\\0' a");
    let server = serve(
        "GET /big",
        &format!("{}\nmax_output_bytes = 1000", command(&s)),
    );
    let (status, body, _) = get(&server, "/big");
    assert_eq!(status, 200);
    assert!(body.starts_with(&"a".repeat(1000)), "{}", &body[..50]);
    assert!(
        !body[..1001].contains("aaaa\n["),
        "exactly 1000 bytes before the marker"
    );
    assert!(
        body[1000..].contains("[bindery: output cut at 1000 bytes"),
        "{}",
        &body[1000..]
    );
}

#[test]
fn a_client_that_stops_reading_holds_the_command_back_not_the_servers_memory() {
    let dir = TempDir::new();
    let s = script(&dir.0, "flood.sh", "head -c 300000000 /dev/zero");
    let server = serve(
        "GET /flood",
        &format!(
            "{}\ntimeout = \"120s\"\nmax_output_bytes = 400000000",
            command(&s)
        ),
    );
    let stalled = common::stalled_socket(server.addr);
    (&stalled)
        .write_all(b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(eventually(|| common::metric(
        &server,
        "bindery_exec_running",
        ""
    ) == Some(1)));
    // Unthrottled, 300 MB from /dev/zero takes well under a second; the
    // command stays blocked on its pipe while the client does not read.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(common::metric(&server, "bindery_exec_running", ""), Some(1));
    let rss = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_owned()))
        .unwrap();
    let kb: u64 = rss.trim_end_matches(" kB").parse().unwrap();
    assert!(
        kb < 100_000,
        "the server holds {kb} kB for a stalled client"
    );
    // Reading it all gets every byte.
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let mut reader = &stalled;
    reader
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
        if buf[..n].ends_with(b"0\r\n\r\n") {
            break;
        }
    }
    assert!(total > 300_000_000, "{total}");
}

#[test]
fn a_route_over_a_drivers_path_is_refused_naming_both() {
    let dir = TempDir::new();
    let config = common::config(
        "[instances.shadow]\nmodule = \"route.exec\"\nbind = [\"GET /queues/list\"]\n\
         [instances.shadow.config]\ncommand = [\"true\"]\n",
    );
    let path = dir.0.join("bindery.toml");
    std::fs::write(
        &path,
        config.replace("bindery-data", &dir.0.join("data").display().to_string()),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_bindery"))
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("GET /queues/list") && err.contains("/queues/") && err.contains("\"queues\""),
        "{err}"
    );
}

#[test]
fn stderr_lines_reach_the_instances_log() {
    let dir = TempDir::new();
    let s = script(
        &dir.0,
        "chatty.sh",
        "echo 'warming up the flux' >&2\necho ok",
    );
    let server = serve("GET /chatty", &command(&s));
    assert_eq!(get(&server, "/chatty").1, "ok\n");
    let url = format!("http://{}", server.manage.unwrap());
    let logs = || {
        let out = Command::new(env!("CARGO_BIN_EXE_bindery"))
            .args(["ctl", "--url", &url, "--token-file"])
            .arg(&server.token_file)
            .args(["logs", "run"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        eventually(|| logs().contains("stderr: warming up the flux")),
        "{}",
        logs()
    );
}
