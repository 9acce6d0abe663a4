//! Other hosts, reached over SSH. `protocol` is what a controller and a
//! host say to each other (typed JSON lines, versioned); `serve` is the
//! host's side, `macha remote serve`, which sshd runs as the forced
//! command of the controller's key and which judges every action with
//! the host's own gate; `client` and `fleet` are the controller's
//! sessions with the hosts, and `controller` decides for them.

pub mod client;
pub mod controller;
pub mod fleet;
pub mod protocol;
pub mod serve;
