//! `registered` linked with `-no-pie` (see build.rs): the loader has no
//! descriptor pointers to relocate at start.

include!("../registered.rs");
