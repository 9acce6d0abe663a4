//! Test harness for macha's integration tests: a real systemd booted in a
//! container (`container`), and a faithful Ollama double (`ollama`).
pub mod container;
pub mod gotify;
pub mod ollama;
mod serve;
