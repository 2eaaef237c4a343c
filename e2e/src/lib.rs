//! End-to-end tests of hrl live in `tests/`: real agents on loop devices
//! with the shipper, into the local store and Azurite. This crate has no
//! code of its own.
