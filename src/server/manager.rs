//! The local Manager (being written).
