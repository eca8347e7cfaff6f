//! `auth.allow`: allows every connection and every action.
//!
//! A terminal with no `auth` behaves the same; this module exists to name
//! that choice explicitly in a configuration (and as the simplest
//! implementation of the auth class). A client that presents a user name is
//! known by it (its password is not checked); one that presents none is
//! anonymous.
//!
//! Configuration: none.

use bindery::Completion;
use bindery_classes::auth::{self, Action, Auth, Credentials, Identity, Login};
use serde::Deserialize;

bindery::module! {
    class: bindery_classes::class::Auth,
    name: "allow",
    description: "allows every connection and every action",
    main: module_main,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {}

fn module_main(
    reg: &mut bindery::Registrar<'_, bindery_classes::class::Auth>,
) -> Result<(), bindery::BoxError> {
    auth::register(reg, |cx| {
        let _: Config = cx.config().parse()?;
        Ok(Allow)
    });
    Ok(())
}

/// Allows everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct Allow;

impl Auth for Allow {
    fn authenticate(&self, credentials: Credentials, done: Completion<Login>) {
        done.succeed(Login::Accepted(match credentials.username {
            Some(user) => Identity::user(&user),
            None => Identity::anonymous(),
        }));
    }

    fn authorize(&self, _: &Identity, _: Action, _: &str, done: Completion<bool>) {
        done.succeed(true);
    }
}
