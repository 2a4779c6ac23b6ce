//! Subcommands of the binary besides `serve`. Client commands talk to a
//! running server through the generated clients; offline ones call the
//! library directly.

pub mod backup;
pub mod restore;
