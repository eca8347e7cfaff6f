//! Starts with no module registrations and loads the (empty) table: the
//! baseline of `registered`.

include!("../empty.rs");
