//! The store of a running `mayfly serve`, opened through the library the
//! way an admin command opens it: a second handle on the same database,
//! as another replica of a shared database holds one.

use super::server::Mayfly;

impl Mayfly {
    /// The server's store (its database must exist: the server has run).
    pub fn open_store(&self) -> mayfly::store::Store {
        let cfg = mayfly::config::Config::load(Some(self.config_path()), &|_| None)
            .expect("load the server's mayfly.toml");
        mayfly::store::open(&mayfly::store::StoreConfig::from_config(
            &cfg,
            mayfly::store::OpenMode::Existing,
        ))
        .expect("open the server's store")
    }

    /// Writes `beat` into the server's store, as the replica it names
    /// would, and returns the row it replaced.
    pub fn write_heartbeat(
        &self,
        beat: mayfly::replica::Heartbeat,
    ) -> Option<mayfly::replica::Heartbeat> {
        let store = self.open_store();
        mayfly::store::block_on(store.replicas().heartbeat(beat))
            .expect("a runtime for the store")
            .expect("heartbeat stored")
    }
}
