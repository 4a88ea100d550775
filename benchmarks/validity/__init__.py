"""The signal-validity study: does a probattr metric track true convergence? (issue 11)."""
