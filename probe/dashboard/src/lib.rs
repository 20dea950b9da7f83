//! `upstreamtop`: a live terminal dashboard of nginx's upstreams.
//!
//! [`source`] fetches reports, [`state`] keeps what the operator sees and
//! selected, [`board`] merges hosts into rows, [`view`] draws them with
//! ratatui and [`plain`] prints them as text. [`run`] ties them together.

pub mod board;
pub mod cli;
pub mod plain;
pub mod run;
pub mod sanitize;
pub mod source;
pub mod state;
pub mod view;

pub use cli::Args;
pub use run::run;
