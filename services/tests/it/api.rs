//! API behaviour tests.
