"""Core maths, no I/O: heads (closed form and autodiff), curvature, influence kernels, solvers, full-model
influence."""
