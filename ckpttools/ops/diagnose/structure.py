"""Cause rules that compare key structure: renamed keys, changed model code, another model."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace

from ckpttools.ops.keymatch import LEGACY_LEAVES
from ckpttools.ops.diagnose.evidence import Evidence, Finding, numel, segments
from ckpttools.ops.diagnose.prose_names import WRAPPER_SEGMENTS

# a norm's old names (the plan renames gamma/beta by the same convention), and old BatchNorm's
_LEGACY_RENAMES = {**LEGACY_LEAVES, "running_std": "running_var"}
_LEAVES = {"weight", "bias"}
_BARE_LEAVES = frozenset({"weight", "bias", "running_mean", "running_var", "num_batches_tracked"})


def _leaves(keys: Iterable[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for k in keys:
        mod, _, leaf = k.rpartition(".")
        # BatchNorm fills a missing num_batches_tracked itself, so torch reports it on the
        # checkpoint's side only: a renamed BatchNorm still has the same tensors.
        out.setdefault(mod, set()).update({leaf} - {"num_batches_tracked"})
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


def _numbered_siblings(pairs: list[tuple[str, str, int]], missing: Iterable[str]) -> bool:
    """A renamed-to name has unpaired siblings by number in the model (``up`` -> ``up2`` while
    ``up3``, ``up4`` are missing too): several modules where one was, not a rename."""
    digits, paired = re.compile(r"\d+"), {m for m, _, _ in pairs}
    names = {(tuple(segments(m)[:i]), segments(m)[i]) for m, _, i in pairs}
    for key in missing:
        p = segments(key)
        if key not in paired and any(
                len(p) > len(head) and tuple(p[:len(head)]) == head and p[len(head)] != name
                and digits.search(name) and digits.sub("#", p[len(head)]) == digits.sub("#", name)
                for head, name in names):
            return True
    return False


def numbered_copies(ev: Evidence) -> Finding | None:
    """The model holds numbered copies (``up2``, ``up3``, ``up4``) of one checkpoint module
    (``up``) with the same inner keys: a variant built with more of them (scales, heads)."""
    if not ev.missing or not ev.unexpected or ev.truncated:
        return None
    digits = re.compile(r"(?<=[A-Za-z_])\d+$")
    for u in ev.unexpected:
        p = segments(u)
        for i, name in enumerate(p[:-1]):
            head, tail = p[:i], p[i + 1:]
            copies = {segments(m)[i] for m in ev.missing if segments(m)[:i] == head
                      and len(segments(m)) > i and digits.sub("", segments(m)[i]) == name
                      and segments(m)[i] != name and segments(m)[i + 1:] == tail}
            if len(copies) >= 2:
                keys = [k for k in ev.missing + ev.unexpected if segments(k)[:i] == head]
                return Finding("architecture_variant", 0.7, frozenset(keys),
                               {"kind": "copies", "module": ".".join(p[:i + 1]),
                                "copies": sorted(copies), "count": len(keys)})
    return None


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


def inserted_segment(missing: Iterable[str], unexpected: Iterable[str], cut: bool = False
                     ) -> tuple[str, str, list[str], list[tuple[str, str]]] | None:
    """``(name, side, modules, pairs)``: one module name inserted into every key of one side.

    ``conv1.weight`` -> ``conv1.lin.weight`` (a layer that now keeps its weight in a submodule):
    every key pairs with exactly one key of the other side that has the same name added at one
    inner position, and no key is left over. ``side`` holds the longer keys, ``modules`` are the
    modules the name goes after. Not a layer index (a moved Sequential layer) and not a first
    segment (a prefix). In a ``cut`` text the keys shown on the longer side must all pair, into
    keys shown on the other side (the rest of a list may be cut away).
    """
    missing, unexpected = list(missing), list(unexpected)
    if not missing or not unexpected or (len(missing) != len(unexpected) and not cut):
        return None
    for side, long, short in (("missing", missing, unexpected), ("unexpected", unexpected, missing)):
        short_set, names, paired, modules = set(short), set(), {}, set()
        for key in long:
            p = segments(key)
            hits = [(p[i], ".".join(p[:i] + p[i + 1:]), ".".join(p[:i])) for i in range(1, len(p) - 1)
                    if ".".join(p[:i] + p[i + 1:]) in short_set]
            if len(hits) != 1 or hits[0][0].isdigit() or hits[0][0] in WRAPPER_SEGMENTS:
                break
            names.add(hits[0][0])
            paired[key] = hits[0][1]
            modules.add(hits[0][2])
        else:
            targets = set(paired.values())
            if len(names) == 1 and len(targets) == len(paired) and (targets == short_set or cut):
                return names.pop(), side, sorted(modules), list(paired.items())
    return None


def moved_prefix(missing: Iterable[str], unexpected: Iterable[str]
                 ) -> tuple[str, str, list[tuple[str, str]]] | None:
    """``(old, new, pairs)``: one leading path renamed to another (``layer1.0`` -> ``extractor.4``).

    Each missing key pairs with the unexpected key that shares its longest tail of three or more
    segments; the heads must map one way for all of them. Heads equal but for their numbers are an
    index shift (model_code_changed), and an empty head a prefix (prefix_added/missing).
    """
    missing, tails = list(missing), {}
    for u in unexpected:
        p = segments(u)
        for i in range(1, len(p) - 2):
            tails.setdefault(".".join(p[i:]), u)
    maps: Counter[tuple[str, str]] = Counter()
    pairs: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for m in missing:
        p = segments(m)
        hit = next(((".".join(p[:i]), tails[t]) for i in range(1, len(p) - 2)
                    if (t := ".".join(p[i:])) in tails), None)
        if hit is None or not any(not s.isdigit() for s in segments(m)[len(segments(hit[0])):-1]):
            continue
        old = hit[1][: len(hit[1]) - len(m) + len(hit[0])]
        key = (old, hit[0])
        maps[key] += 1
        pairs.setdefault(key, []).append((m, hit[1]))
    if not maps:
        return None
    (old, new), _ = maps.most_common(1)[0]
    digits = re.compile(r"\d+")
    if digits.sub("#", old) == digits.sub("#", new) or old in WRAPPER_SEGMENTS or new in WRAPPER_SEGMENTS:
        return None
    found = pairs[(old, new)]
    if len({u for _, u in found}) < len(found):
        return None  # several model keys onto one checkpoint key: a structural change, no rename
    # siblings of the new path by number left unpaired (up -> up2, with up3, up4 new): several
    # modules where one was, another structure
    paired, mask = {m for m, _ in found}, digits.sub("#", new)
    if any(digits.sub("#", ".".join(segments(m)[:len(segments(new))])) == mask
           and not m.startswith(new + ".") for m in missing if m not in paired):
        return None
    return old, new, found


def renamed_keys(ev: Evidence) -> Finding | None:
    """The same tensors under other names (``gamma/beta`` vs ``weight/bias``, renamed modules)."""
    # The same name inserted in several modules: a layer class that now keeps its tensors in a
    # submodule (every instance moved alike). In one module only, the code wrapped that module
    # (a Linear head that became a Sequential): model_code_changed reads that.
    if (inserted := inserted_segment(ev.missing, ev.unexpected, ev.truncated)) and len(inserted[2]) >= 2:
        name, side, modules, pairs = inserted
        pairs = pairs if side == "missing" else [(m, u) for u, m in pairs]  # (missing, unexpected)
        # checkpoint name -> model name, per module and leaf seen moving: conv1.weight ->
        # conv1.lin.weight (or back); a leaf not shown moving (a bias the layer still keeps at
        # conv1.bias) keeps its name
        leaves = sorted({m.rpartition(".")[2] for m, _ in pairs})
        renames = [[f"{a}.{leaf}", f"{a}.{name}.{leaf}"] if side == "missing" else
                   [f"{a}.{name}.{leaf}", f"{a}.{leaf}"] for a in modules for leaf in leaves]
        return Finding("renamed_keys", 0.85, frozenset(ev.missing + ev.unexpected),
                       {"renames": renames, "segment": name, "side": side, "count": len(pairs),
                        "examples": [[u, m] for m, u in pairs[:3]]})
    pairs = rename_pairs(ev.missing, ev.unexpected)
    # A rename maps one key to one key; several missing keys onto one unexpected key is a
    # structural change (up2/up3/up4 where the checkpoint has up), not a rename.
    one_to_one = len(pairs) <= 1.5 * len({u for _, u, _ in pairs}) and not _numbered_siblings(
        pairs, ev.missing)
    sides = (len(ev.missing), len(ev.unexpected))
    if pairs and one_to_one and len(pairs) >= max(1, 0.6 * min(sides), 0.3 * max(sides)):
        subs = Counter((segments(u)[i], segments(m)[i]) for m, u, i in pairs)
        return Finding("renamed_keys", 0.86, frozenset(k for m, u, _ in pairs for k in (m, u)),
                       {"renames": [list(s) for s, _ in subs.most_common(4)], "count": len(pairs),
                        "examples": [[u, m] for m, u, _ in pairs[:3]]})
    sides = (len(ev.missing), len(ev.unexpected))
    moved = moved_prefix(ev.missing, ev.unexpected)
    if moved and len(moved[2]) >= max(2, 0.6 * min(sides)):
        old, new, pairs = moved
        # the keys under either path are the rename's, paired or not (a cut list hides partners)
        under = [k for k in ev.missing if k.startswith(new + ".")] + [
            k for k in ev.unexpected if k.startswith(old + ".")]
        return Finding("renamed_keys", 0.84, frozenset(under),
                       {"renames": [[old, new]], "count": len(pairs), "prefix_rename": True,
                        "examples": [[u, m] for m, u in pairs[:3]]})
    keys = ev.missing + ev.unexpected
    legacy = [k for k in keys if k.rsplit(".", 1)[-1] in _LEGACY_RENAMES]
    # A norm's old names come in pairs (gamma with beta) or sit in a norm by name; a lone gamma
    # elsewhere is usually a parameter of its own (ConvNeXt/CaiT layer scale), not a rename.
    leaves = _leaves(legacy)
    normal = [k for k in legacy if {"gamma", "beta"} <= leaves[k.rpartition(".")[0]]
              or re.search(r"(norm|bn|ln)\w*$", k.rpartition(".")[0], re.I)]
    if legacy and len(legacy) >= 0.5 * len(keys):
        names = {k.rsplit(".", 1)[-1] for k in legacy}
        # a norm saved with gamma has beta beside it, though a cut text may show only one
        names = sorted(names | {"gamma", "beta"} if names & {"gamma", "beta"} else names)
        side = "missing" if legacy[0] in ev.missing else "unexpected"
        renames = [[n, _LEGACY_RENAMES[n]] if side == "unexpected" else [_LEGACY_RENAMES[n], n]
                   for n in names]
        return Finding("renamed_keys", 0.82 if len(normal) >= 0.5 * len(legacy) else 0.5,
                       frozenset(legacy), {"renames": renames, "count": len(legacy), "legacy": True,
                                           "examples": legacy[:3]})
    return None


def residual(ev: Evidence, findings: Iterable[Finding]) -> Evidence:
    """The evidence minus every key that a confident finding already explains."""
    explained: set[str] = set()
    for f in findings:
        if f.confidence >= 0.5:
            explained |= f.explains
    # a model key the explained fix fills counts as matched: the rest is judged against the
    # whole model (two head keys left after a prefix fix are not "0 of 2 keys in the file")
    matched = None if ev.matched is None else ev.matched + sum(k in explained for k in ev.missing)
    return replace(ev, missing=tuple(k for k in ev.missing if k not in explained),
                   unexpected=tuple(k for k in ev.unexpected if k not in explained),
                   mismatched=tuple(m for m in ev.mismatched if m.key not in explained),
                   matched=matched)


def _heads(keys: Iterable[str]) -> set[str]:
    return {next((s for s in segments(k) if s not in WRAPPER_SEGMENTS), k) for k in keys}


def _overlap(ev: Evidence) -> float:
    a, b = _heads(ev.missing), _heads(ev.unexpected)
    return len(a & b) / len(a | b) if a | b else 1.0


def model_code_changed(ev: Evidence) -> Finding | None:
    """The same model class with other submodules than when the checkpoint was saved."""
    keys = ev.missing + ev.unexpected
    if not keys:
        # Tensors of another rank at the same paths (a bias where a weight was): layers of another
        # kind sit at these indices, which moved; the key lists that would show it are not shown.
        ranks = [m for m in ev.mismatched if len(m.model_shape) != len(m.checkpoint_shape)]
        if ranks and len(ranks) == len(ev.mismatched):
            # the same elements in another shape (a scalar saved as [1], a bias as [1, N]): a view
            same = all(numel(m.model_shape) == numel(m.checkpoint_shape) for m in ranks)
            return Finding("model_code_changed", 0.6, frozenset(m.key for m in ranks),
                           {"missing": 0, "unexpected": 0, "examples_missing": [],
                            "examples_unexpected": [],
                            "reshaped": {m.key: list(m.model_shape) for m in ranks} if same else {}})
        return None
    pairs = _moved_pairs(ev)
    facts = {"missing": len(ev.missing), "unexpected": len(ev.unexpected),
             "examples_missing": list(ev.missing[:3]), "examples_unexpected": list(ev.unexpected[:3])}
    if pairs and len(pairs) >= 0.5 * min(len(ev.missing), len(ev.unexpected)):
        paired = {k for pair in pairs for k in pair}
        return Finding("model_code_changed", 0.8, frozenset(keys),
                       {**facts, "moved": [[u, m] for m, u in pairs[:3]],
                        "unpaired": len(set(keys) - paired),
                        "paired_modules": sorted({top_module(k) for k in paired})})
    if ev.missing and ev.unexpected:
        if _overlap(ev) < 0.3 and len(keys) >= 6:
            return None  # little in common: the wrong_model rule speaks
        return Finding("model_code_changed", 0.62, frozenset(keys), facts)
    return Finding("model_code_changed", 0.55, frozenset(keys), facts)


def _moved_pairs(ev: Evidence) -> list[tuple[str, str]]:
    """(model key, checkpoint key) of tensors that moved. From files, the moves of the fix plan's
    renames, proven on shapes (a norm inserted before a conv shares the conv's bias shape: a
    pairing by names alone would move the conv onto the norm); from text, key pairs that differ
    by a segment or by layer numbers."""
    if ev.source == "files":
        # the moves of keys still to explain (a layer moved onto another's index is a shape
        # mismatch there), by a relation of this rule: layer numbers, or a segment added
        left = {*ev.missing, *ev.unexpected, *(m.key for m in ev.mismatched)}
        return [(new, old) for old, new in ev.moves if (new in left or old in left)
                and structure_pairs([new], [old])]
    return structure_pairs(ev.missing, ev.unexpected)


def strip_wrappers(key: str) -> str:
    return ".".join(s for s in segments(key) if s not in WRAPPER_SEGMENTS)


def prefix_matches(extra: Iterable[str], base: Iterable[str]) -> tuple[str, bool, list[str]]:
    """Which prefix (or inner wrapper segment) turns ``extra`` keys into ``base`` keys."""
    base_set, counts, hits = set(base), Counter[tuple[str, bool]](), {}
    for key in extra:
        parts = segments(key)
        for n in (1, 2, 3):
            # a model's own ``weight`` (ArcFace's, no module) ends every layer's key: only a
            # wrapper's prefix maps onto it (``module.weight``)
            if (len(parts) > n and ".".join(parts[n:]) in base_set
                    and (len(parts) > n + 1 or parts[-1] not in _BARE_LEAVES
                         or parts[0] in WRAPPER_SEGMENTS)):
                found = (".".join(parts[:n]) + ".", False)
                break
        else:
            inner = [s for s in parts if s in WRAPPER_SEGMENTS]
            if not inner or strip_wrappers(key) not in base_set:
                continue
            found = (inner[0] + ".", True)
        counts[found] += 1
        hits.setdefault(found, []).append(key)
    if not counts:
        return "", False, []
    (prefix, infix), _ = counts.most_common(1)[0]
    return prefix, infix, hits[(prefix, infix)]


def top_module(key: str) -> str:
    """The first segment of a key that is not a wrapper's (``module.fc.weight`` -> ``fc``)."""
    return next((s for s in segments(key) if s not in WRAPPER_SEGMENTS), key)


def part_of_model(prefix: str, hits: Iterable[str], missing: Iterable[str]) -> bool:
    """The model keys under ``prefix`` are one submodule of several: the file holds that part only.

    A wrapper prefix (``module.``, ``_orig_mod.``) covers every key of the model; a named one
    (``backbone.``, ``module.vgg.``) that leaves other top-level modules missing (neck, heads)
    means the checkpoint is a backbone's, passed where the whole model's was expected.
    """
    part = [s for s in segments(prefix.rstrip(".")) if s not in WRAPPER_SEGMENTS]
    hit_set = set(hits)
    others = {top_module(k) for k in missing if k not in hit_set} - {part[0] if part else ""}
    return bool(part) and len(others) >= 1 and sum(k not in hit_set for k in missing) >= 2


def part_checkpoint(ev: Evidence) -> Finding | None:
    """A backbone's (or another part's) checkpoint loaded into the whole model (a detector)."""
    prefix, infix, hits = prefix_matches(ev.missing, ev.unexpected)
    if infix or not hits or not part_of_model(prefix, hits, ev.missing):
        return None
    if len(hits) < 0.5 * len(ev.unexpected):
        return None  # most checkpoint keys do not map under the part: not this part's file
    rest = [k for k in ev.missing if k not in set(hits)]
    return Finding("wrong_model", 0.85, frozenset(ev.missing + ev.unexpected),
                   {"missing": len(ev.missing), "unexpected": len(ev.unexpected),
                    "examples_missing": list(ev.missing[:3]),
                    "examples_unexpected": list(ev.unexpected[:3]), "part": prefix,
                    "not_in_file": sorted({top_module(k) for k in rest})[:4]})


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
