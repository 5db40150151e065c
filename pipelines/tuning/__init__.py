"""Ray Tune: sweeps over a space of settings, studies that rerun a paper's ablation, their tables and figures."""
