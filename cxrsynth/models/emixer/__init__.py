"""emixer family: exposes `Model` once built."""
