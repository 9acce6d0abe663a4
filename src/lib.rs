//! macha keeps a NixOS host healthy: it watches systemd and the journal,
//! asks a local model what is wrong, and acts only through a typed, gated
//! catalog of actions.
//!
//! The modules are layered in the order of the pipeline of one cycle, and
//! none imports one above it (`tests/layers.rs`): the foundations
//! (`errors`, `ids`, `bounded`, `text`, `unit`, `redact`, `repeat`,
//! `state_dir`, `rotation`, `service_manager`, `logging`), then `catalog`
//! (what can ever happen), `config`, and the stages `observe` -> `detect`
//! -> `decide` (through `model`, with `investigate`'s probes) -> `gate` ->
//! `act` -> the records (`audit`, `store`, `ledger`, `note`, `propose`,
//! `report`) -> `carry` (carry out, queue the undo, record) -> `notify`;
//! on top `cycle` runs the stages in order, `approval` is the approval
//! workflow, `retention` keeps the state directory in bounds and `daemon`
//! is the loop. Beside the pipeline, `ask` answers a person's questions
//! (`macha ask`, `macha-approve discuss`) with read-only tools, and `eval`
//! measures a model against fixtures.

pub mod act;
pub mod alerts;
pub mod approval;
pub mod ask;
pub mod audit;
pub mod bounded;
pub mod carry;
pub mod catalog;
pub mod config;
pub mod counters;
pub mod cycle;
pub mod daemon;
pub mod decide;
pub mod detect;
pub mod elsewhere;
pub mod errors;
pub mod eval;
pub mod exporter;
pub mod gate;
pub mod ids;
pub mod investigate;
pub mod kb;
pub mod ledger;
pub mod logging;
pub mod memory;
pub mod model;
pub mod note;
pub mod notify;
pub mod observe;
pub mod propose;
pub mod redact;
pub mod remember;
pub mod remote;
pub mod repeat;
pub mod report;
pub mod retention;
pub mod rotation;
pub mod service_manager;
pub mod sqlite;
pub mod sshkey;
pub mod state_dir;
pub mod store;
pub mod storm;
pub mod suspect;
pub mod text;
pub mod unit;
pub mod watch;
