"""Evaluation of a synthetic dataset against real data: fidelity, diversity, utility, reports.

`run_evaluation(synthetic_dir, real_dir, out_dir)` writes `metrics.json` and `index.html`;
`cxrsynth evaluate` is its command line.
"""
