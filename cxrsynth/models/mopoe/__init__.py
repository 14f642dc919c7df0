"""mopoe family: exposes `Model` once built."""
