"""Analyses built on the engine: relative Hessians and LEP, memorization, the paper's theorems, Newton
fidelity, influence-guided subsampling."""
