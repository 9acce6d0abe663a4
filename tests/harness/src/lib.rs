//! Test harness for macha's integration tests: a real systemd booted in a
//! container (`container`), and a faithful Ollama double (`ollama`);
//! journal files of a chosen content (`journal`); a real Chroma server
//! (`chroma`); several hosts with OpenSSH in one network namespace (`fleet`).
pub mod chat;
pub mod chroma;
pub mod container;
pub mod fleet;
pub mod gotify;
pub mod journal;
pub mod llm;
pub mod ollama;
mod serve;
