//! The Redis service-discovery registry: sorted set `gatehouse:registry:<service>`.
