//! `auth.file` against the auth class's suites, through instances over
//! files of their own (`auth_file::fixture`), changed by a real reload.

use auth_file::fixture::Fixture;
use bindery_classes::auth::{Action, AuthHandle};
use bindery_conformance::auth::{Harness, Setup};

/// The suites' harness over a [`Fixture`].
struct Files(Fixture);

/// Users and rules as the fixture takes them.
type Parts<'a> = (
    Vec<(&'a str, &'a str)>,
    Vec<(&'a str, &'a str)>,
    Vec<(&'a str, Action, &'a str)>,
);

fn parts(s: &Setup) -> Parts<'_> {
    let (users, tokens) = (pairs(&s.users), pairs(&s.tokens));
    let rules = s
        .rules
        .iter()
        .map(|r| (r.user.as_str(), r.action, r.pattern.as_str()))
        .collect();
    (users, tokens, rules)
}

impl Harness for Files {
    fn make(&self, s: &Setup) -> Result<AuthHandle, String> {
        let (users, tokens, rules) = parts(s);
        self.0
            .make_with_tokens(&users, &tokens, &rules, s.anonymous)
    }

    fn change(&self, s: &Setup) -> Result<(), String> {
        let (users, tokens, rules) = parts(s);
        self.0.change_with_tokens(&users, &tokens, &rules)
    }
}

bindery_conformance::auth_suite!(Files(Fixture::new()));
bindery_conformance::auth_access_suite!(Files(Fixture::new()));

/// Borrowed pairs.
fn pairs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}
