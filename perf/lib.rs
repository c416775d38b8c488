//! Nothing: this package only holds the benches in `benches/` and the measurement programs beside this file.
