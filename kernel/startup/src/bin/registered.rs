//! Starts with 10,000 generated module registrations and loads them: a
//! position-independent executable, as Cargo links one by default.

include!("../registered.rs");
