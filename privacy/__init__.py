"""Privacy: on-site de-identification (`cxrsynth.privacy.deid`), DP-SGD wiring, the audit and the release gate.

`privacy` imports `cxrsynth`, never the other way round.
"""
