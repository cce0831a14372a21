"""Cause rules that compare key structure: renamed keys, changed model code, another model."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace

from ckpttools.ops.diagnose.evidence import WRAPPER_SEGMENTS, Evidence, Finding, segments

_LEGACY_RENAMES = {"gamma": "weight", "beta": "bias", "running_std": "running_var"}
_LEAVES = {"weight", "bias"}


def _leaves(keys: Iterable[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for k in keys:
        mod, _, leaf = k.rpartition(".")
        out.setdefault(mod, set()).add(leaf)
    return out


def rename_pairs(missing: Iterable[str], unexpected: Iterable[str]) -> list[tuple[str, str, int]]:
    """(missing, unexpected, position) pairs that differ in one non-numeric segment only.

    A renamed module keeps its tensors: its leaf names (weight, bias, running_mean ...) must be the
    same on both sides, else it is another layer type at a similar path (another model).
    """
    missing, unexpected = list(missing), list(unexpected)
    leaves_m, leaves_u = _leaves(missing), _leaves(unexpected)
    by_sig: dict[str, str] = {}
    for u in unexpected:
        p = segments(u)
        for i, s in enumerate(p):
            if not s.isdigit():
                by_sig.setdefault(".".join(p[:i] + ["\0"] + p[i + 1:]), u)
    pairs, used, names = [], set(), {}
    for m in missing:
        p = segments(m)
        for i, s in enumerate(p):
            u = by_sig.get(".".join(p[:i] + ["\0"] + p[i + 1:])) if not s.isdigit() else None
            if (u is None or u in used or {s, segments(u)[i]} <= _LEAVES or i == len(p) - 1
                    or leaves_m[m.rpartition(".")[0]] != leaves_u[u.rpartition(".")[0]]
                    or names.setdefault(segments(u)[i], s) != s):
                continue  # a rename maps one name to one name, each key once
            pairs.append((m, u, i))
            used.add(u)
            break
    return pairs


def structure_pairs(missing: Iterable[str], unexpected: Iterable[str]) -> list[tuple[str, str]]:
    """Pairs that differ by one inserted/removed segment or by layer numbers only."""
    miss, unexp = list(missing), list(unexpected)
    u_set, m_set = set(unexp), set(miss)
    masked = {re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.)", "#", u): u for u in unexp}
    pairs = []
    for m in miss:
        p = segments(m)
        drop = next((".".join(p[:i] + p[i + 1:]) for i in range(len(p))
                     if ".".join(p[:i] + p[i + 1:]) in u_set), None)
        if drop is None:
            drop = masked.get(re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.)", "#", m))
        if drop is not None and drop != m:
            pairs.append((m, drop))
    for u in unexp:
        p = segments(u)
        hit = next((".".join(p[:i] + p[i + 1:]) for i in range(len(p))
                    if ".".join(p[:i] + p[i + 1:]) in m_set), None)
        if hit is not None:
            pairs.append((hit, u))
    return list(dict.fromkeys(pairs))


def renamed_keys(ev: Evidence) -> Finding | None:
    """The same tensors under other names (``gamma/beta`` vs ``weight/bias``, renamed modules)."""
    pairs = rename_pairs(ev.missing, ev.unexpected)
    # A rename maps one key to one key; several missing keys onto one unexpected key is a
    # structural change (up2/up3/up4 where the checkpoint has up), not a rename.
    one_to_one = len(pairs) <= 1.5 * len({u for _, u, _ in pairs})
    sides = (len(ev.missing), len(ev.unexpected))
    if pairs and one_to_one and len(pairs) >= max(1, 0.6 * min(sides), 0.3 * max(sides)):
        subs = Counter((segments(u)[i], segments(m)[i]) for m, u, i in pairs)
        return Finding("renamed_keys", 0.86, frozenset(k for m, u, _ in pairs for k in (m, u)),
                       {"renames": [list(s) for s, _ in subs.most_common(4)], "count": len(pairs),
                        "examples": [[u, m] for m, u, _ in pairs[:3]]})
    keys = ev.missing + ev.unexpected
    legacy = [k for k in keys if k.rsplit(".", 1)[-1] in _LEGACY_RENAMES]
    if legacy and len(legacy) >= 0.5 * len(keys):
        names = sorted({k.rsplit(".", 1)[-1] for k in legacy})
        side = "missing" if legacy[0] in ev.missing else "unexpected"
        renames = [[n, _LEGACY_RENAMES[n]] if side == "unexpected" else [_LEGACY_RENAMES[n], n]
                   for n in names]
        return Finding("renamed_keys", 0.82, frozenset(legacy),
                       {"renames": renames, "count": len(legacy), "legacy": True,
                        "examples": legacy[:3]})
    return None


def residual(ev: Evidence, findings: Iterable[Finding]) -> Evidence:
    """The evidence minus every key that a confident finding already explains."""
    explained: set[str] = set()
    for f in findings:
        if f.confidence >= 0.5:
            explained |= f.explains
    return replace(ev, missing=tuple(k for k in ev.missing if k not in explained),
                   unexpected=tuple(k for k in ev.unexpected if k not in explained),
                   mismatched=tuple(m for m in ev.mismatched if m.key not in explained))


def _heads(keys: Iterable[str]) -> set[str]:
    return {next((s for s in segments(k) if s not in WRAPPER_SEGMENTS), k) for k in keys}


def _overlap(ev: Evidence) -> float:
    a, b = _heads(ev.missing), _heads(ev.unexpected)
    return len(a & b) / len(a | b) if a | b else 1.0


def model_code_changed(ev: Evidence) -> Finding | None:
    """The same model class with other submodules than when the checkpoint was saved."""
    keys = ev.missing + ev.unexpected
    if not keys:
        return None
    pairs = structure_pairs(ev.missing, ev.unexpected)
    facts = {"missing": len(ev.missing), "unexpected": len(ev.unexpected),
             "examples_missing": list(ev.missing[:3]), "examples_unexpected": list(ev.unexpected[:3])}
    if pairs and len(pairs) >= 0.5 * min(len(ev.missing), len(ev.unexpected)):
        return Finding("model_code_changed", 0.8, frozenset(keys),
                       {**facts, "moved": [[u, m] for m, u in pairs[:3]]})
    if ev.missing and ev.unexpected:
        if _overlap(ev) < 0.3 and len(keys) >= 6:
            return None  # little in common: the wrong_model rule speaks
        return Finding("model_code_changed", 0.62, frozenset(keys), facts)
    return Finding("model_code_changed", 0.55, frozenset(keys), facts)


def wrong_model(ev: Evidence) -> Finding | None:
    """A checkpoint of another model altogether: little overlap between the key sets."""
    facts = {"missing": len(ev.missing), "unexpected": len(ev.unexpected),
             "examples_missing": list(ev.missing[:3]), "examples_unexpected": list(ev.unexpected[:3])}
    if ev.matched is not None:
        total = ev.matched + len(ev.missing) + len(ev.mismatched)
        share = ev.matched / total if total else 1.0
        if share < 0.3 and (ev.missing or ev.mismatched):
            return Finding("wrong_model", 0.88 - share, frozenset(ev.missing + ev.unexpected),
                           {**facts, "matched": ev.matched, "model_keys": total})
        return None
    if ev.missing and ev.unexpected and len(ev.missing + ev.unexpected) >= 6 and _overlap(ev) < 0.3:
        return Finding("wrong_model", 0.7, frozenset(ev.missing + ev.unexpected), facts)
    return None
