//! gatehouse gateway library
