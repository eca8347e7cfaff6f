//! HTTP Bearer tokens with `auth.file`: `bindery passwd --token` makes one
//! (printed once, only its digest kept), curl with `Authorization: Bearer`
//! gets in as the token's user under that user's ACL rules, a wrong or
//! revoked token gets 401 with `WWW-Authenticate: Bearer ...,
//! error="invalid_token"`, no credentials get both challenges, and a
//! revoked token stops working at the reload (SIGHUP).

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::children::text;
use common::{Server, TempDir};

/// `bindery passwd [args]`.
fn passwd(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_bindery"))
        .arg("passwd")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

/// curl with `args`: the status line's code, the headers and the body.
fn curl(args: &[&str]) -> (u16, String, String) {
    let o = Command::new("curl")
        .args(["-s", "-i"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).replace("\r\n", "\n");
    let (head, body) = out.split_once("\n\n").unwrap_or((&out, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_owned(), body.to_owned())
}

fn server(dir: &Path) -> Server {
    let o = passwd(
        &[dir.join("passwd").to_str().unwrap(), "alice", "--stdin"],
        "wonderland\n",
    );
    assert!(o.status.success(), "{}", text(&o));
    std::fs::write(
        dir.join("acl"),
        "allow * all /queues/users/%u/#\nallow * all /queues/users/%u\n",
    )
    .unwrap();
    let config = common::config(&format!(
        r#"
[instances.users]
module = "auth.file"
[instances.users.config]
password_file = "{}"
acl_file = "{}"
token_file = "{}"

[instances.http.config]
auth = "default"
"#,
        dir.join("passwd").display(),
        dir.join("acl").display(),
        dir.join("tokens").display(),
    ));
    Server::start_at(dir, &config, &["--threads", "2"])
}

/// Makes a token for `user` labelled `label`: the one line on stdout.
fn token(dir: &Path, user: &str, label: &str) -> String {
    let o = passwd(
        &["--token", label, dir.join("tokens").to_str().unwrap(), user],
        "",
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert!(
        out.starts_with("bdy_") && !out.contains('\n'),
        "{}",
        text(&o)
    );
    out
}

#[test]
fn curl_with_a_bearer_token_gets_in_as_its_user_until_revoked() {
    let dir = TempDir::new();
    // Tokens made before the start: the file must exist when it is read.
    let ci = token(&dir.0, "ci-bot", "ci");
    let alice = token(&dir.0, "alice", "laptop");
    let stored = std::fs::read_to_string(dir.0.join("tokens")).unwrap();
    assert!(
        !stored.contains(&ci[4..]) && !stored.contains(&alice[4..]),
        "only digests: {stored}"
    );
    let s = server(&dir.0);
    let bearer = |t: &str| format!("Authorization: Bearer {t}");

    // The token's user (ci-bot has no password at all), under its rules.
    let (code, _, body) = curl(&[
        "-H",
        &bearer(&ci),
        "-d",
        "built",
        &s.url("/queues/users/ci-bot"),
    ]);
    assert!(code < 300, "{code} {body}");
    let (code, _, body) = curl(&["-H", &bearer(&ci), &s.url("/queues/users/ci-bot")]);
    assert_eq!((code, body.as_str()), (200, "built"));
    let (code, _, _) = curl(&["-H", &bearer(&ci), "-d", "x", &s.url("/queues/users/alice")]);
    assert_eq!(code, 403, "ci-bot may not write alice's queue");
    let (code, _, body) = curl(&[
        "-H",
        &bearer(&alice),
        "-d",
        "x",
        &s.url("/queues/users/alice"),
    ]);
    assert!(code < 300, "{code} {body}");
    // Basic still works beside tokens.
    let (code, _, _) = curl(&["-u", "alice:wonderland", &s.url("/queues/users/alice")]);
    assert_eq!(code, 200);

    // A wrong token: 401 with the RFC 6750 challenge.
    let (code, head, _) = curl(&[
        "-H",
        &bearer("bdy_not-a-token"),
        "-d",
        "x",
        &s.url("/queues/users/ci-bot"),
    ]);
    assert_eq!(code, 401);
    assert!(
        head.contains("WWW-Authenticate: Bearer realm=\"bindery\", error=\"invalid_token\""),
        "{head}"
    );
    // No credentials: both schemes offered.
    let (code, head, _) = curl(&["-d", "x", &s.url("/queues/users/ci-bot")]);
    assert_eq!(code, 401);
    assert!(
        head.contains("WWW-Authenticate: Basic realm=\"bindery\""),
        "{head}"
    );
    assert!(
        head.contains("WWW-Authenticate: Bearer realm=\"bindery\""),
        "{head}"
    );

    // Revoked, then SIGHUP: refused from the reload on (a new connection
    // per curl, so nothing cached survives either).
    let o = passwd(
        &[
            "-D",
            "--token",
            "ci",
            dir.0.join("tokens").to_str().unwrap(),
            "ci-bot",
        ],
        "",
    );
    assert!(o.status.success(), "{}", text(&o));
    s.signal("HUP");
    let mut refused = false;
    for _ in 0..100 {
        if curl(&["-H", &bearer(&ci), &s.url("/queues/users/ci-bot")]).0 == 401 {
            refused = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(refused, "the revoked token still lets in after SIGHUP");
    let (code, _, _) = curl(&["-H", &bearer(&alice), &s.url("/queues/users/alice")]);
    assert!(
        code < 300,
        "alice's token is untouched: {code} (204: her queue is empty)"
    );
    let failed = common::metric(&s, "bindery_http_auth_failures_total", "").unwrap();
    assert!(failed >= 2, "{failed}");
}
