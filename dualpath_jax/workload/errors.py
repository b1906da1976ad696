"""The error every trace loader raises for a bad file, and the warning for what it leaves out."""

from __future__ import annotations

__all__ = ["TraceFormatError", "TraceSkipWarning"]


class TraceFormatError(ValueError):
    """A trace file that cannot be used, with where and why.

    Attributes:
      path: the file.
      where: the location inside it: ``"line 17"`` (JSON lines), ``"requests[3]"`` or
        ``"requests[7].requests[2]"`` (nested sub-agent request), or ``""`` for the whole file.
      field: the offending field (``"in"``, ``"t"``, ``"hash_ids"``...) or ``""``.
      value: the offending value (``None`` if not applicable).

    The message reads ``"<path>: <where>: <field>: <problem> (got <value>)"``.
    """

    def __init__(self, path, where: str, field: str, problem: str, value=None, *, show_value: bool = True):
        self.path = str(path)
        self.where = where
        self.field = field
        self.value = value
        parts = [self.path] + [p for p in (where, field) if p]
        suffix = f" (got {value!r})" if show_value and value is not None else ""
        super().__init__(": ".join(parts) + f": {problem}{suffix}")


class TraceSkipWarning(UserWarning):
    """A trace file's records that a loader leaves out, named with their count and the first one's
    location (e.g. requests recorded with no input tokens: nothing to prefill)."""
