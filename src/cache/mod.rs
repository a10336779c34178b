//! The hard-negative cache (work in progress).
