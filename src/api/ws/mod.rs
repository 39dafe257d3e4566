//! The WS family (seed 003, SPEC §4.2): the endpoints, and the XML reader and writer and the
//! content negotiation they share.

pub mod endpoints;
pub mod negotiate;
pub mod xml;
