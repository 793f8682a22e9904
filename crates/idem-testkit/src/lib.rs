//! Test helpers shared by the proxy and the library: the SPEC suite over HTTP
//! ([`spec`], [`spec_tests!`]), a real counting upstream ([`upstream`]) and a small
//! client ([`client`]). Not published.

pub mod client;
pub mod postgres;
pub mod redb;
pub mod spec;
pub mod upstream;

pub use client::{Client, Resp};
pub use spec::{Front, On, Start, Target};
pub use upstream::CountingUpstream;
