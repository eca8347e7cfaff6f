//! The auth contract.
//!
//! The harness makes instances of the module under test holding given
//! users and rules ([`Setup`]), and changes them as a reload would
//! ([`Harness::change`]): how users and rules are written down is the
//! module's business (files, a service), so each module brings the
//! adapter. Two lists:
//!
//! - [`AUTH`], for every auth module: every question is answered (never
//!   dropped), from many threads at once; an identity is the name
//!   presented or anonymous; the generation holds still without a change.
//! - [`ACCESS`], for modules that enforce users and rules: the right
//!   password lets in; an unknown user and a wrong password are refused
//!   alike; no credentials are refused unless anonymous access is on; the
//!   rules are followed, nothing else allowed; a bearer token lets in as
//!   its user (if the module takes tokens; if not, every token is bad
//!   credentials), a revoked one no longer; a subscription filter that
//!   could match any topic the user may not subscribe to is refused (so a
//!   refused subscription receives nothing, ever); a changed rule or
//!   password takes effect on reload, and the generation moves with it.
//!
//! Longer than most files here: the class's whole contract in one place,
//! two case lists with their macros.

use std::sync::mpsc::Receiver;
use std::time::Duration;

use bindery::{Completion, Failure};
use bindery_classes::auth::{Action, AuthHandle, Credentials, Identity, Login, Secret};

use crate::{Case, ensure};

/// A rule: `user` (`*`: any authenticated user) may do `action` on paths
/// matching `pattern` (`+` one segment, a final `#` any number).
#[derive(Clone, Debug)]
pub struct Rule {
    /// The user, or `*`.
    pub user: String,
    /// What they may do.
    pub action: Action,
    /// Where.
    pub pattern: String,
}

/// Users, passwords and rules for an instance under test. Anything the
/// rules do not allow is denied.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    /// (user, password).
    pub users: Vec<(String, String)>,
    /// (user, bearer token), for a module that takes tokens
    /// ([`Auth::accepts_tokens`](bindery_classes::auth::Auth::accepts_tokens)).
    pub tokens: Vec<(String, String)>,
    /// What is allowed.
    pub rules: Vec<Rule>,
    /// Connections without credentials are let in, as anonymous.
    pub anonymous: bool,
}

/// What the auth cases get: instances of the module under test.
pub trait Harness {
    /// An instance holding `setup`.
    fn make(&self, setup: &Setup) -> Result<AuthHandle, String>;
    /// Gives the instance last made `setup`'s users and rules, and reloads
    /// the server it lives in as SIGHUP or the management API would.
    fn change(&self, setup: &Setup) -> Result<(), String>;
}

/// The rules of every auth module.
pub const AUTH: &[Case<dyn Harness>] = &[
    Case {
        name: "answers_every_question",
        run: answers_every_question,
    },
    Case {
        name: "an_identity_is_the_name_presented_or_anonymous",
        run: an_identity_is_the_name_presented_or_anonymous,
    },
    Case {
        name: "answers_many_threads_at_once",
        run: answers_many_threads_at_once,
    },
    Case {
        name: "the_generation_holds_still_without_a_change",
        run: the_generation_holds_still_without_a_change,
    },
];

/// The rules of auth modules that enforce users and rules.
pub const ACCESS: &[Case<dyn Harness>] = &[
    Case {
        name: "the_right_password_lets_in",
        run: the_right_password_lets_in,
    },
    Case {
        name: "unknown_user_and_wrong_password_are_indistinguishable",
        run: unknown_user_and_wrong_password_are_indistinguishable,
    },
    Case {
        name: "no_credentials_are_refused_unless_anonymous_is_on",
        run: no_credentials_are_refused_unless_anonymous_is_on,
    },
    Case {
        name: "allows_what_the_rules_allow_and_nothing_else",
        run: allows_what_the_rules_allow_and_nothing_else,
    },
    Case {
        name: "a_refused_subscription_receives_nothing",
        run: a_refused_subscription_receives_nothing,
    },
    Case {
        name: "a_changed_rule_takes_effect_on_reload",
        run: a_changed_rule_takes_effect_on_reload,
    },
    Case {
        name: "a_token_lets_in_as_its_user_until_revoked",
        run: a_token_lets_in_as_its_user_until_revoked,
    },
];

/// Runs [`AUTH`] as `#[test]`s, one per case, over a [`Harness`]:
///
/// ```text
/// bindery_conformance::auth_suite!(MyHarness::new());
/// ```
#[macro_export]
macro_rules! auth_suite {
    ($harness:expr) => {
        mod conformance_auth {
            #[allow(unused_imports)]
            use super::*;
            $crate::__suite!(
                $crate::auth::AUTH,
                $crate::auth::boxed($harness),
                [
                    answers_every_question,
                    an_identity_is_the_name_presented_or_anonymous,
                    answers_many_threads_at_once,
                    the_generation_holds_still_without_a_change,
                ]
            );
        }
    };
}

/// Runs [`ACCESS`] as `#[test]`s, one per case (with [`auth_suite!`] for
/// a module that enforces users and rules).
#[macro_export]
macro_rules! auth_access_suite {
    ($harness:expr) => {
        mod conformance_auth_access {
            #[allow(unused_imports)]
            use super::*;
            $crate::__suite!(
                $crate::auth::ACCESS,
                $crate::auth::boxed($harness),
                [
                    the_right_password_lets_in,
                    unknown_user_and_wrong_password_are_indistinguishable,
                    no_credentials_are_refused_unless_anonymous_is_on,
                    allows_what_the_rules_allow_and_nothing_else,
                    a_refused_subscription_receives_nothing,
                    a_changed_rule_takes_effect_on_reload,
                    a_token_lets_in_as_its_user_until_revoked,
                ]
            );
        }
    };
}

/// A harness as the suite macros hold it.
pub fn boxed(h: impl Harness + 'static) -> Box<dyn Harness> {
    Box::new(h)
}

impl<H: Harness + ?Sized> Harness for Box<H> {
    fn make(&self, setup: &Setup) -> Result<AuthHandle, String> {
        (**self).make(setup)
    }
    fn change(&self, setup: &Setup) -> Result<(), String> {
        (**self).change(setup)
    }
}

/// How long an answer may take before the case calls it lost.
const ANSWER: Duration = Duration::from_secs(30);

fn wait<T>(rx: Receiver<Result<T, Failure>>, what: &str) -> Result<T, String> {
    match rx.recv_timeout(ANSWER) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(f)) => Err(format!("{what}: failed: {f}")),
        Err(_) => Err(format!("{what}: no answer")),
    }
}

fn login(auth: &AuthHandle, user: Option<&str>, password: Option<&str>) -> Result<Login, String> {
    let credentials = Credentials {
        username: user.map(str::to_owned),
        password: password.map(|p| Secret(p.as_bytes().to_vec())),
        token: None,
        peer: "conformance".into(),
    };
    let (done, rx) = Completion::channel();
    auth.authenticate(credentials, done);
    wait(rx, &format!("login as {user:?}"))
}

fn may(auth: &AuthHandle, user: Option<&str>, action: Action, path: &str) -> Result<bool, String> {
    let who = Identity {
        user: user.map(Into::into),
    };
    let (done, rx) = Completion::channel();
    auth.authorize(&who, action, path, done);
    wait(rx, &format!("{user:?} {} {path}", action.as_str()))
}

fn rule(user: &str, action: Action, pattern: &str) -> Rule {
    Rule {
        user: user.into(),
        action,
        pattern: pattern.into(),
    }
}

/// alice and bob, with rules on /topics/a/ and /queues/b.
fn standard() -> Setup {
    Setup {
        users: vec![
            ("alice".into(), "wonderland-1".into()),
            ("bob".into(), "builder-2".into()),
        ],
        tokens: vec![("alice".into(), "bdy_conformance-alice".into())],
        rules: vec![
            rule("alice", Action::Publish, "/topics/a/#"),
            rule("alice", Action::Subscribe, "/topics/a/#"),
            rule("bob", Action::Consume, "/queues/b"),
            rule("*", Action::Publish, "/topics/public/+"),
        ],
        anonymous: false,
    }
}

fn answers_every_question(h: &dyn Harness) -> Result<(), String> {
    let auth = h.make(&standard())?;
    login(&auth, None, None)?;
    login(&auth, Some("alice"), Some("wonderland-1"))?;
    login(&auth, Some("nobody"), Some(""))?;
    let (done, rx) = Completion::channel();
    auth.authenticate(
        Credentials {
            token: Some(Secret(b"a-token".to_vec())),
            ..Credentials::default()
        },
        done,
    );
    wait(rx, "a bearer token")?;
    for action in [Action::Publish, Action::Subscribe, Action::Consume] {
        may(&auth, Some("alice"), action, "/topics/a/x")?;
        may(&auth, None, action, "/queues/b")?;
        may(&auth, Some("bob"), action, "/topics/#")?;
    }
    Ok(())
}

fn an_identity_is_the_name_presented_or_anonymous(h: &dyn Harness) -> Result<(), String> {
    let auth = h.make(&standard())?;
    for (user, password) in [
        (Some("alice"), Some("wonderland-1")),
        (Some("bob"), Some("wrong")),
        (None, None),
    ] {
        if let Login::Accepted(who) = login(&auth, user, password)? {
            ensure!(
                who.user.as_deref() == user || who.user.is_none(),
                "presented {user:?}, known as {:?}",
                who.user
            );
        }
    }
    Ok(())
}

fn answers_many_threads_at_once(h: &dyn Harness) -> Result<(), String> {
    let auth = h.make(&standard())?;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let auth = auth.clone();
            std::thread::spawn(move || -> Result<(), String> {
                for i in 0..4 {
                    let password = if (t + i) % 2 == 0 {
                        "wonderland-1"
                    } else {
                        "no"
                    };
                    login(&auth, Some("alice"), Some(password))?;
                    may(
                        &auth,
                        Some("alice"),
                        Action::Publish,
                        &format!("/topics/a/{t}/{i}"),
                    )?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "a thread panicked".to_owned())??;
    }
    Ok(())
}

fn the_generation_holds_still_without_a_change(h: &dyn Harness) -> Result<(), String> {
    let auth = h.make(&standard())?;
    let before = auth.generation();
    login(&auth, Some("alice"), Some("wonderland-1"))?;
    may(&auth, Some("alice"), Action::Publish, "/topics/a/x")?;
    ensure!(
        auth.generation() == before,
        "the generation moved from {before} to {} with no change",
        auth.generation()
    );
    Ok(())
}

fn the_right_password_lets_in(h: &dyn Harness) -> Result<(), String> {
    let auth = h.make(&standard())?;
    for (user, password) in [("alice", "wonderland-1"), ("bob", "builder-2")] {
        let got = login(&auth, Some(user), Some(password))?;
        ensure!(
            got == Login::Accepted(Identity::user(user)),
            "{user} with the right password: {got:?}"
        );
    }
    Ok(())
}

fn unknown_user_and_wrong_password_are_indistinguishable(h: &dyn Harness) -> Result<(), String> {
    let auth = h.make(&standard())?;
    let wrong = login(&auth, Some("alice"), Some("wonderland-2"))?;
    let unknown = login(&auth, Some("mallory"), Some("wonderland-1"))?;
    let empty = login(&auth, Some("alice"), Some(""))?;
    let none = login(&auth, Some("alice"), None)?;
    ensure!(
        wrong == Login::BadCredentials,
        "a wrong password: {wrong:?}, want BadCredentials"
    );
    for (what, got) in [
        ("an unknown user", unknown),
        ("an empty password", empty),
        ("no password", none),
    ] {
        ensure!(
            got == wrong,
            "{what}: {got:?}, but a wrong password: {wrong:?}"
        );
    }
    Ok(())
}

fn no_credentials_are_refused_unless_anonymous_is_on(h: &dyn Harness) -> Result<(), String> {
    let auth = h.make(&standard())?;
    let got = login(&auth, None, None)?;
    ensure!(got == Login::NotAuthorized, "no credentials: {got:?}");
    let auth = h.make(&Setup {
        anonymous: true,
        ..standard()
    })?;
    let got = login(&auth, None, None)?;
    ensure!(
        got == Login::Accepted(Identity::anonymous()),
        "no credentials, anonymous on: {got:?}"
    );
    ensure!(
        !may(&auth, None, Action::Publish, "/topics/a/x")?,
        "anonymous may publish where only alice may"
    );
    Ok(())
}

fn allows_what_the_rules_allow_and_nothing_else(h: &dyn Harness) -> Result<(), String> {
    use Action::*;
    let auth = h.make(&standard())?;
    let expect = [
        (Some("alice"), Publish, "/topics/a/x", true),
        (Some("alice"), Publish, "/topics/a/x/y", true),
        (Some("alice"), Subscribe, "/topics/a/x", true),
        (Some("alice"), Consume, "/topics/a/x", false),
        (Some("alice"), Publish, "/topics/b/x", false),
        (Some("alice"), Consume, "/queues/b", false),
        (Some("bob"), Consume, "/queues/b", true),
        (Some("bob"), Consume, "/queues/b2", false),
        (Some("bob"), Consume, "/queues/b/deeper", false),
        (Some("bob"), Publish, "/topics/a/x", false),
        (Some("bob"), Publish, "/topics/public/news", true),
        (Some("bob"), Publish, "/topics/public/news/x", false),
        (None, Publish, "/topics/public/news", false),
        (None, Subscribe, "/topics/a/x", false),
    ];
    for (user, action, path, want) in expect {
        let got = may(&auth, user, action, path)?;
        ensure!(
            got == want,
            "{user:?} {} {path}: {}",
            action.as_str(),
            if got { "allowed" } else { "refused" }
        );
    }
    Ok(())
}

fn a_refused_subscription_receives_nothing(h: &dyn Harness) -> Result<(), String> {
    let auth = h.make(&standard())?;
    for (filter, want) in [
        ("/topics/a/#", true),
        ("/topics/a/+", true),
        ("/topics/a/+/x", true),
        // Each of these could match a topic alice may not subscribe to.
        ("/topics/#", false),
        ("/topics/+", false),
        ("/topics/+/x", false),
        ("/topics/b/#", false),
        ("/#", false),
        ("/+/a/x", false),
    ] {
        let got = may(&auth, Some("alice"), Action::Subscribe, filter)?;
        ensure!(
            got == want,
            "alice subscribing to {filter}: {}",
            if got { "allowed" } else { "refused" }
        );
    }
    Ok(())
}

fn token(auth: &AuthHandle, user: Option<&str>, token: &str) -> Result<Login, String> {
    let credentials = Credentials {
        username: user.map(str::to_owned),
        token: Some(Secret(token.as_bytes().to_vec())),
        peer: "conformance".into(),
        ..Credentials::default()
    };
    let (done, rx) = Completion::channel();
    auth.authenticate(credentials, done);
    wait(rx, "a bearer token")
}

fn a_token_lets_in_as_its_user_until_revoked(h: &dyn Harness) -> Result<(), String> {
    let auth = h.make(&standard())?;
    let alice = "bdy_conformance-alice";
    if !auth.accepts_tokens() {
        let got = token(&auth, None, alice)?;
        ensure!(
            got == Login::BadCredentials,
            "a module that takes no tokens let one in: {got:?}"
        );
        return Ok(());
    }
    let got = token(&auth, None, alice)?;
    ensure!(
        got == Login::Accepted(Identity::user("alice")),
        "alice's token: {got:?}"
    );
    for (user, t, what) in [
        (None, "bdy_conformance-alicf", "a wrong token"),
        (None, "", "an empty token"),
        (None, "wonderland-1", "alice's password as a token"),
        (Some("bob"), alice, "alice's token with bob's name"),
    ] {
        let got = token(&auth, user, t)?;
        ensure!(got == Login::BadCredentials, "{what}: {got:?}");
    }
    h.change(&Setup {
        tokens: Vec::new(),
        ..standard()
    })?;
    let got = token(&auth, None, alice)?;
    ensure!(
        got == Login::BadCredentials,
        "alice's token after it was revoked and reloaded: {got:?}"
    );
    Ok(())
}

fn a_changed_rule_takes_effect_on_reload(h: &dyn Harness) -> Result<(), String> {
    let auth = h.make(&standard())?;
    ensure!(
        may(&auth, Some("alice"), Action::Publish, "/topics/a/x")?,
        "alice may publish on /topics/a/ before the change"
    );
    let before = auth.generation();
    let mut next = standard();
    next.rules[0] = rule("alice", Action::Publish, "/topics/c/#");
    next.users[1].1 = "builder-3".into();
    h.change(&next)?;
    ensure!(
        auth.generation() != before,
        "the generation did not move with the change"
    );
    ensure!(
        !may(&auth, Some("alice"), Action::Publish, "/topics/a/x")?,
        "alice may still publish on /topics/a/ after the reload"
    );
    ensure!(
        may(&auth, Some("alice"), Action::Publish, "/topics/c/x")?,
        "alice may not publish on /topics/c/ after the reload"
    );
    let old = login(&auth, Some("bob"), Some("builder-2"))?;
    ensure!(
        old == Login::BadCredentials,
        "bob's old password after the reload: {old:?}"
    );
    let new = login(&auth, Some("bob"), Some("builder-3"))?;
    ensure!(
        new == Login::Accepted(Identity::user("bob")),
        "bob's new password after the reload: {new:?}"
    );
    Ok(())
}
