"""Why the pre-tokenizer leaves an item out: one exception type with a reason name and a detail for people."""

from __future__ import annotations

REASONS = (
    "malformed_item",
    "non_utf8",
    "empty_conversation",
    "role_order",
    "placeholder_mismatch",
    "no_target",
    "missing_image",
    "unreadable_image",
    "image_too_large",
    "image_too_small",
    "too_long",
)


class Rejected(Exception):
    """An item (or one of its images) that cannot be used; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}; expected one of {REASONS}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple:
        """Picklable with both arguments (rejections travel back from image-decoding worker processes)."""
        return type(self), (self.reason, self.detail)
