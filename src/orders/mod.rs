//! Levelled work orders.

pub mod book;
