"""What to tell the user when a job fails: what happened and what to do."""

from __future__ import annotations

__all__ = ["failure_message"]


def _out_of_memory(err: BaseException) -> bool:
    return type(err).__name__ == "OutOfMemoryError" or "out of memory" in str(err).lower()


def failure_message(err: BaseException) -> str:
    """One or two sentences for a job's failure ``err``; prompts and labels are always kept."""
    text = " ".join(str(err).split())
    if isinstance(err, ValueError | FileNotFoundError):
        return text or type(err).__name__
    if isinstance(err, MemoryError) or _out_of_memory(err):
        return (
            f"Out of memory ({type(err).__name__}). The slices already written are kept. Choose "
            "a smaller input size, propagate fewer slices at a time, or use the CPU device."
        )
    return (
        f"SAM 2 failed ({type(err).__name__}: {text}). Your prompts and labels are kept; try "
        "again, or report the problem with this message."
    )
