"""Save and restore param pytrees with orbax-checkpoint (bit-exact, dtype-preserving)."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

__all__ = ["save_params", "restore_params"]


def save_params(path: str | os.PathLike, params: dict, *, force: bool = False) -> str:
    """Write ``params`` to directory ``path`` (absolute or relative; created).

    Args:
      force: overwrite an existing checkpoint at ``path``.

    Returns:
      the absolute checkpoint path.

    Raises:
      FileExistsError: ``path`` exists and ``force`` is False.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not force:
        raise FileExistsError(f"{path}: checkpoint already exists (pass force=True to overwrite)")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, params, force=force)
    return path


def restore_params(path: str | os.PathLike, like: dict | None = None) -> dict:
    """Read params saved by :func:`save_params`.

    Args:
      like: optional pytree of arrays (or ``jax.ShapeDtypeStruct``) giving the expected structure,
        shapes and dtypes; without it the stored structure is returned as is.

    Raises:
      FileNotFoundError: no checkpoint at ``path``.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no checkpoint")
    target = None
    if like is not None:
        target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), like)
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(path, target)
