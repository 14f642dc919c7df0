"""HTML pages: one place that draws them, used by every layer that writes one."""
