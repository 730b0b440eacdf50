"""The 2D three-component Gaussian mixture the toy benchmarks share (as in the tests)."""

MIXTURE = {
    "weights": [0.45, 0.3, 0.25],
    "means": [[-1.2, -0.7], [1.2, -0.7], [0.0, 1.3]],
    "covariances": [
        [[0.09, 0.03], [0.03, 0.04]],
        [[0.04, -0.02], [-0.02, 0.07]],
        [[0.08, 0.0], [0.0, 0.025]],
    ],
}
"""Parameters of ``gmm`` data and of the ``gmm-oracle`` denoiser."""
