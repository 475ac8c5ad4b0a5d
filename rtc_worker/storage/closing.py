"""A context manager that closes what it holds when its ``with`` block ends."""

from __future__ import annotations

from typing import Self

__all__ = ["Closing"]


class Closing:
    """Base of the file layer's holders of descriptors (roots, handles, partials):
    ``with`` returns the object itself and calls :meth:`close` at the end."""

    def close(self) -> None:
        """Release what is held (idempotent in every subclass)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
