//! `empty` linked with `-no-pie` (see build.rs): the baseline of
//! `registered_nopie`.

include!("../empty.rs");
