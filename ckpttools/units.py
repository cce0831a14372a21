"""Sizes and counts as people read them; used by reports and by messages from the operations."""

from __future__ import annotations


def human_bytes(n: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_count(n: int) -> str:
    """``124439808`` -> ``124.4M``."""
    for unit, scale in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def plural(n: int, word: str, many: str | None = None) -> str:
    """``plural(1, "tensor")`` -> ``1 tensor``; ``plural(2, "tensor")`` -> ``2 tensors``."""
    return f"{n} {word if n == 1 else many or word + 's'}"


# words starting with a vowel letter but a consonant sound ("a uint8", "a unique key")
_CONSONANT_SOUND = ("uint", "uni", "use", "usu", "utf", "one")


def with_article(word: str) -> str:
    """``argparse.Namespace`` -> ``an argparse.Namespace``; ``dict`` -> ``a dict``."""
    lowered = word.lower()
    vowel = lowered[:1] in ("a", "e", "i", "o", "u") and not lowered.startswith(_CONSONANT_SOUND)
    return f"{'an' if vowel else 'a'} {word}"
