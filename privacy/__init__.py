"""Privacy: on-site de-identification (`privacy.deid`), DP-SGD wiring, the audit and the release gate.

`privacy` imports `cxrsynth`, never the other way round.
"""
