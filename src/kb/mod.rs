//! The incident memory's knowledge base: what happened before, kept where macha can search it.
pub mod chroma;
