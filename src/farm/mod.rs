//! A farm of berth nodes (issue 11): membership and load statistics over
//! gossip, and mod_backhand's placement. Work in progress: only the pure
//! placement pipeline so far.

pub mod place;
