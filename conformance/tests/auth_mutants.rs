//! The auth suites can fail: `auth.file` wrapped so that it breaks one
//! rule, and the case that must catch it. The unwrapped module passes the
//! same case, so the failure is the mutation's.

use std::collections::HashMap;
use std::sync::Arc;

use auth_file::fixture::Fixture;
use bindery::Completion;
use bindery_classes::auth::{Action, Auth, AuthHandle, Credentials, Identity, Login};
use bindery_conformance::Case;
use bindery_conformance::auth::{ACCESS, AUTH, Harness, Setup};
use parking_lot::Mutex;

/// How a mutant changes one instance.
type Mutate = fn(AuthHandle) -> AuthHandle;

/// `auth.file` instances, each changed by `mutate`.
struct Files {
    fixture: Fixture,
    mutate: Mutate,
}

impl Harness for Files {
    fn make(&self, s: &Setup) -> Result<AuthHandle, String> {
        let (users, tokens, rules) = parts(s);
        self.fixture
            .make_with_tokens(&users, &tokens, &rules, s.anonymous)
            .map(self.mutate)
    }

    fn change(&self, s: &Setup) -> Result<(), String> {
        let (users, tokens, rules) = parts(s);
        self.fixture.change_with_tokens(&users, &tokens, &rules)
    }
}

type Pairs<'a> = Vec<(&'a str, &'a str)>;

/// Users, tokens and rules as the fixture takes them.
fn parts(s: &Setup) -> (Pairs<'_>, Pairs<'_>, Vec<(&str, Action, &str)>) {
    let rules = s
        .rules
        .iter()
        .map(|r| (r.user.as_str(), r.action, r.pattern.as_str()))
        .collect();
    (pairs(&s.users), pairs(&s.tokens), rules)
}

/// Answers remembered by who, action and path.
type Memo = Mutex<HashMap<(Option<Arc<str>>, Action, String), bool>>;

/// An auth instance with its answers changed.
struct Mutant {
    inner: AuthHandle,
    login: fn(&Credentials, Login) -> Login,
    authorize: fn(&Mutant, &Identity, Action, &str, Completion<bool>),
    memo: Memo,
}

impl Mutant {
    fn new(inner: AuthHandle) -> Mutant {
        Mutant {
            inner,
            login: |_, l| l,
            authorize: |m, who, a, p, done| m.inner.authorize(who, a, p, done),
            memo: Mutex::new(HashMap::new()),
        }
    }
}

impl Auth for Mutant {
    fn authenticate(&self, credentials: Credentials, done: Completion<Login>) {
        let (inner, rx) = Completion::channel();
        let mutate = self.login;
        let presented = credentials.clone();
        self.inner.authenticate(credentials, inner);
        std::thread::spawn(move || {
            if let Ok(outcome) = rx.recv() {
                done.complete(outcome.map(|l| mutate(&presented, l)));
            }
        });
    }

    fn authorize(&self, who: &Identity, action: Action, path: &str, done: Completion<bool>) {
        (self.authorize)(self, who, action, path, done)
    }

    fn generation(&self) -> u64 {
        self.inner.generation()
    }

    fn accepts_tokens(&self) -> bool {
        self.inner.accepts_tokens()
    }
}

/// `name` of `cases` passes on `auth.file` and fails on its mutant.
fn caught(cases: &'static [Case<dyn Harness>], name: &str, mutate: Mutate) -> String {
    let case = cases
        .iter()
        .find(|c| c.name == name)
        .expect("a case of that name");
    let real = Files {
        fixture: Fixture::new(),
        mutate: |a| a,
    };
    if let Err(e) = (case.run)(&real) {
        panic!("control: auth.file fails {name}: {e}");
    }
    let mutant = Files {
        fixture: Fixture::new(),
        mutate,
    };
    match (case.run)(&mutant) {
        Ok(()) => panic!("{name} did not catch the mutant"),
        Err(reason) => reason,
    }
}

#[test]
fn a_module_that_tells_unknown_users_apart_is_caught() {
    let reason = caught(
        ACCESS,
        "unknown_user_and_wrong_password_are_indistinguishable",
        |a| {
            let mut m = Mutant::new(a);
            m.login = |c, l| match (c.username.as_deref(), l) {
                (Some("alice" | "bob"), l) => l,
                (_, Login::BadCredentials) => Login::NotAuthorized,
                (_, l) => l,
            };
            Arc::new(m)
        },
    );
    assert!(reason.contains("unknown user"), "{reason}");
}

#[test]
fn a_module_that_judges_a_filter_by_one_of_its_topics_is_caught() {
    let reason = caught(ACCESS, "a_refused_subscription_receives_nothing", |a| {
        let mut m = Mutant::new(a);
        m.authorize = |m, who, action, path, done| {
            let one = path.replace(['+', '#'], "a");
            m.inner.authorize(who, action, &one, done)
        };
        Arc::new(m)
    });
    assert!(reason.contains("allowed"), "{reason}");
}

#[test]
fn a_module_that_keeps_its_answers_across_reloads_is_caught() {
    let reason = caught(ACCESS, "a_changed_rule_takes_effect_on_reload", |a| {
        let mut m = Mutant::new(a);
        m.authorize = |m, who, action, path, done| {
            let key = (who.user.clone(), action, path.to_owned());
            if let Some(&d) = m.memo.lock().get(&key) {
                return done.succeed(d);
            }
            let (inner, rx) = Completion::channel();
            m.inner.authorize(who, action, path, inner);
            if let Ok(Ok(d)) = rx.recv() {
                m.memo.lock().insert(key, d);
                done.succeed(d);
            }
        };
        Arc::new(m)
    });
    assert!(reason.contains("after the reload"), "{reason}");
}

#[test]
fn a_module_that_lets_a_token_in_under_any_name_is_caught() {
    let reason = caught(ACCESS, "a_token_lets_in_as_its_user_until_revoked", |a| {
        let mut m = Mutant::new(a);
        m.login = |c, l| match (&c.username, &c.token, l) {
            (Some(u), Some(_), Login::BadCredentials) => Login::Accepted(Identity::user(u)),
            (_, _, l) => l,
        };
        Arc::new(m)
    });
    assert!(reason.contains("bob's name"), "{reason}");
}

#[test]
fn a_module_that_lets_anyone_in_without_credentials_is_caught() {
    let reason = caught(
        ACCESS,
        "no_credentials_are_refused_unless_anonymous_is_on",
        |a| {
            let mut m = Mutant::new(a);
            m.login = |_, l| match l {
                Login::NotAuthorized => Login::Accepted(Identity::anonymous()),
                l => l,
            };
            Arc::new(m)
        },
    );
    assert!(reason.contains("no credentials"), "{reason}");
}

#[test]
fn a_module_that_drops_a_question_is_caught() {
    let reason = caught(AUTH, "answers_every_question", |a| {
        let mut m = Mutant::new(a);
        m.authorize = |m, who, action, path, done| {
            if action == Action::Consume {
                drop(done);
                return;
            }
            m.inner.authorize(who, action, path, done)
        };
        Arc::new(m)
    });
    assert!(reason.contains("Dropped"), "{reason}");
}

/// Borrowed pairs.
fn pairs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}
