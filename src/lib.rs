//! macha keeps a NixOS host healthy: it watches systemd and the journal,
//! asks a local model what is wrong, and acts only through a typed, gated
//! catalog of actions.
//!
//! The modules follow the pipeline of one cycle:
//! `observe` -> `detect` -> `decide` -> `gate` -> `act` -> `audit`, with
//! `store` holding incident state and the approval queue, `ledger` the
//! automatic actions from before they start to their recorded end, and
//! `cycle` running the stages in order. Beside the pipeline, `ask` answers a
//! person's questions (`macha ask`, `macha-approve discuss`) with
//! read-only tools.

pub mod act;
pub mod approval;
pub mod ask;
pub mod audit;
pub mod bounded;
pub mod carry;
pub mod catalog;
pub mod config;
pub mod cycle;
pub mod daemon;
pub mod decide;
pub mod detect;
pub mod errors;
pub mod eval;
pub mod gate;
pub mod ids;
pub mod investigate;
pub mod ledger;
pub mod logging;
pub mod model;
pub mod note;
pub mod notify;
pub mod observe;
pub mod propose;
pub mod redact;
pub mod repeat;
pub mod report;
pub mod retention;
pub mod rotation;
pub mod service_manager;
pub mod state_dir;
pub mod store;
pub mod storm;
pub mod text;
pub mod unit;
