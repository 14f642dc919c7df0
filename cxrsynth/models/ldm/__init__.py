"""ldm family: exposes `Model` once built."""
