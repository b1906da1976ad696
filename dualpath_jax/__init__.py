"""DualPath (arXiv 2602.21548) in JAX: a real engine and a cluster simulator sharing one scheduler."""

from dualpath_jax import native  # noqa: F401  (first: checks an opt-in compiled build before any module loads)
