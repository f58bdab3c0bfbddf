//! Random identifiers: UUID v4 from rand's thread-local CSPRNG (ChaCha, reseeded from the OS),
//! not a `getrandom` system call per id as `Uuid::new_v4` makes. A request takes three.

use rand::RngExt;
use uuid::Uuid;

/// A random (version 4) UUID.
pub fn random_uuid() -> Uuid {
    uuid::Builder::from_random_bytes(rand::rng().random()).into_uuid()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_are_version_4_and_distinct() {
        let ids: HashSet<Uuid> = (0..10_000).map(|_| random_uuid()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in &ids {
            assert_eq!(id.get_version(), Some(uuid::Version::Random));
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        }
    }
}
