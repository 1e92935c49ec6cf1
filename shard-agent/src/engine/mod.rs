//! The engines shardcut supports, each a folder holding all of its phases
//! (preflight, cut, dump, schema, capture, restore, replay, read-back and
//! its wire client), behind the interface in [`interface`].
//!
//! Adding an engine: a new folder with a unit struct implementing
//! [`Driver`] and its [`CutSession`], and one line in [`driver`].

pub mod interface;
pub mod mysql;
pub mod postgres;

use topology::Engine;

pub use interface::{CatchUp, CutSession, Driver, StreamServer};

/// The driver of `engine`: the one place an engine is chosen.
pub fn driver(engine: Engine) -> &'static dyn Driver {
    match engine {
        Engine::Mysql => &mysql::driver::Mysql,
        Engine::Postgres => &postgres::driver::Postgres,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_is_registered_under_its_own_name() {
        for engine in [Engine::Mysql, Engine::Postgres] {
            assert_eq!(driver(engine).kind(), engine);
        }
    }
}
