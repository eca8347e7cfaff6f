//! `auth.allow` against the auth class's suite for every auth module (it
//! enforces nothing, so the access suite is not for it).

use bindery_classes::auth::AuthHandle;
use bindery_conformance::auth::{Harness, Setup};

struct AllowAll;

impl Harness for AllowAll {
    fn make(&self, _: &Setup) -> Result<AuthHandle, String> {
        Ok(std::sync::Arc::new(auth_allow::Allow))
    }

    fn change(&self, _: &Setup) -> Result<(), String> {
        Ok(())
    }
}

bindery_conformance::auth_suite!(AllowAll);
