//! The WS family (seed 003, SPEC §4.2): formats first. The XML reader and writer and the content
//! negotiation both endpoints share live here.

pub mod negotiate;
pub mod xml;
