"""Key-mapping between a checkpoint and a model: common prefixes, rename rules
(``REGEX=REPLACEMENT``, applied in order with ``re.sub``), rules files, and inferring a mapping
from suffixes, shape signatures and order within modules when no prefix explains a difference.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ckpttools.errors import SpecError

Shape = tuple[int, ...]
Rule = tuple[str, str]  # (regex, replacement)

# A prefix counts as systematic when it is on this share of keys (a stray unprefixed buffer happens).
PREFIX_SHARE = 0.9


def common_prefixes(keys: Iterable[str], share: float = PREFIX_SHARE,
                    depth: int = 3) -> list[str]:
    """Dotted prefixes (``module.``, ``module._orig_mod.``) found on at least ``share`` of keys,
    shortest first."""
    keys = list(keys)
    if not keys:
        return []
    counts: Counter[str] = Counter()
    for key in keys:
        parts = key.split(".")
        for n in range(1, min(depth, len(parts) - 1) + 1):
            counts[".".join(parts[:n]) + "."] += 1
    need = max(1, int(share * len(keys) + 0.999999))
    return sorted((p for p, c in counts.items() if c >= need), key=len)


def parse_rule(text: str) -> Rule:
    """``'^encoder\\.(\\d+)=blocks.\\1'`` -> ``('^encoder\\.(\\d+)', 'blocks.\\1')``.

    The first ``=`` not preceded by a backslash splits pattern and replacement.

    Raises:
        SpecError: no ``=`` or the pattern is not a valid regular expression.
    """
    match = re.search(r"(?<!\\)=", text)
    if match is None:
        raise SpecError(f"{text}: rename rule must be REGEX=REPLACEMENT")
    pattern, repl = text[: match.start()].replace("\\=", "="), text[match.end():]
    try:
        re.compile(pattern)
    except re.error as e:
        raise SpecError(f"{text}: bad regular expression: {e}") from e
    return pattern, repl


def read_rules(path: str) -> list[Rule]:
    """Rules from a file: one ``REGEX=REPLACEMENT`` per line; blank lines and ``#`` comments skipped.

    Raises:
        SpecError: the file cannot be read or a line is not a rule.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise SpecError(f"{path}: cannot read the rules file: {e.strerror}") from e
    rules = []
    for n, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            rules.append(parse_rule(line.strip()))
        except SpecError as e:
            raise SpecError(f"{path}:{n}: {e}") from e
    return rules


def format_rules(rules: Sequence[Rule], header: str = "") -> str:
    """The text of a rules file (what ``read_rules`` reads back)."""
    lines = [f"# {h}" for h in header.splitlines()] if header else []
    lines += [f"{p.replace('=', chr(92) + '=')}={r}" for p, r in rules]
    return "\n".join(lines) + "\n"


def apply_rules(key: str, rules: Sequence[Rule]) -> str:
    """Apply rename rules to one key, in order (each as ``re.sub``)."""
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def prefix_rules(strip: str | None = None, add: str | None = None) -> list[Rule]:
    """Rules for ``--strip-prefix`` (keys without it are left alone) and ``--add-prefix``."""
    rules: list[Rule] = []
    if strip:
        rules.append(("^" + re.escape(strip), ""))
    if add:
        rules.append(("^", add.replace("\\", "\\\\")))
    return rules


@dataclass(frozen=True)
class KeyMapping:
    """An inferred mapping from checkpoint keys to model keys.

    Attributes:
        rules: ``(regex, replacement)`` rules that produce the mapping.
        pairs: ``(checkpoint key, model key)`` pairs the rules map.
        unmatched_checkpoint: checkpoint keys still without a model key.
        unmatched_model: model keys still without a checkpoint key.
    """

    rules: tuple[Rule, ...]
    pairs: tuple[tuple[str, str], ...]
    unmatched_checkpoint: tuple[str, ...]
    unmatched_model: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "rules": [f"{p}={r}" for p, r in self.rules],
            "mapped": len(self.pairs),
            "pairs": [list(p) for p in self.pairs],
            "unmatched_checkpoint": list(self.unmatched_checkpoint),
            "unmatched_model": list(self.unmatched_model),
        }


def _modules(keys: Mapping[str, Shape]) -> dict[str, list[tuple[str, Shape]]]:
    """Keys grouped by module path, in order: ``{"enc.0.attn": [("weight", (8, 8)), ...]}``."""
    out: dict[str, list[tuple[str, Shape]]] = {}
    for key, shape in keys.items():
        module, _, leaf = key.rpartition(".")
        out.setdefault(module, []).append((leaf, shape))
    return out


def _suffix_overlap(a: str, b: str) -> int:
    n = 0
    for x, y in zip(reversed(a.split(".")), reversed(b.split("."))):
        if x != y:
            break
        n += 1
    return n


def _match_modules(ckpt: dict[str, list[tuple[str, Shape]]],
                   model: dict[str, list[tuple[str, Shape]]]) -> list[tuple[str, str]]:
    """Pair checkpoint modules with model modules of the same shape signature: by order when a
    signature occurs equally often on both sides, else by the longest common path suffix."""
    def sig(items: list[tuple[str, Shape]]) -> tuple[Shape, ...]:
        return tuple(s for _, s in items)

    by_sig_c: dict[tuple[Shape, ...], list[str]] = {}
    by_sig_m: dict[tuple[Shape, ...], list[str]] = {}
    for m, items in ckpt.items():
        by_sig_c.setdefault(sig(items), []).append(m)
    for m, items in model.items():
        by_sig_m.setdefault(sig(items), []).append(m)
    pairs: list[tuple[str, str]] = []
    for s, targets in by_sig_m.items():
        sources = by_sig_c.get(s, [])
        if len(sources) == len(targets):
            pairs += zip(sources, targets)
            continue
        for t in targets:
            scored = sorted(((_suffix_overlap(c, t), c) for c in sources), reverse=True)
            if scored and scored[0][0] > 0 and (len(scored) == 1 or scored[1][0] < scored[0][0]):
                pairs.append((scored[0][1], t))
                sources = [c for c in sources if c != scored[0][1]]
    return pairs


_DIGITS = re.compile(r"^\d+$")


def _rule_for(src: str, dst: str) -> Rule:
    """A rule turning ``src`` into ``dst``, with the differing leading part only, and layer
    numbers that appear on both sides generalised to ``(\\d+)``."""
    a, b = src.split("."), dst.split(".")
    common = _suffix_overlap(src, dst)
    keep = min(common, len(a) - 1, len(b) - 1)
    head_a, head_b = a[: len(a) - keep], b[: len(b) - keep]
    nums_a = [p for p in head_a if _DIGITS.match(p)]
    nums_b = [p for p in head_b if _DIGITS.match(p)]
    general = bool(nums_a) and nums_a == nums_b
    pat_parts, rep_parts, group = [], [], 0
    for p in head_a:
        if general and _DIGITS.match(p):
            group += 1
            pat_parts.append(r"(\d+)")
        else:
            pat_parts.append(re.escape(p))
    group = 0
    for p in head_b:
        if general and _DIGITS.match(p):
            group += 1
            rep_parts.append(f"\\{group}")
        else:
            rep_parts.append(p.replace("\\", "\\\\"))
    end = r"\." if keep else "$"
    return "^" + r"\.".join(pat_parts) + end, ".".join(rep_parts) + ("." if keep else "")


def _key_pairs(ckpt: Mapping[str, Shape], model: Mapping[str, Shape]) -> list[tuple[str, str]]:
    cm, mm = _modules(ckpt), _modules(model)
    pairs: list[tuple[str, str]] = []
    for c_mod, m_mod in _match_modules(cm, mm):
        # same shape signature: leaves pair up by position (``gamma`` -> ``weight`` included)
        for (c_leaf, _), (m_leaf, _) in zip(cm[c_mod], mm[m_mod]):
            pairs.append((f"{c_mod}.{c_leaf}".lstrip("."), f"{m_mod}.{m_leaf}".lstrip(".")))
    return pairs


def infer_mapping(ckpt: Mapping[str, Shape], model: Mapping[str, Shape]) -> KeyMapping:
    """Infer rename rules from unexpected checkpoint keys to missing model keys.

    Args:
        ckpt: checkpoint keys the model does not have, with shapes, in file order.
        model: model keys the checkpoint does not have, with shapes, in model order.

    Returns:
        The rules and what they map; a rule that would send a key anywhere but its pair, or
        collide, is left out.
    """
    rules: list[Rule] = []
    for src, dst in _key_pairs(ckpt, model):
        rule = _rule_for(src, dst)
        if rule not in rules and apply_rules(src, [*rules, rule]) == dst:
            rules.append(rule)
    rules = _verified(rules, ckpt, model)
    mapped = {k: apply_rules(k, rules) for k in ckpt}
    pairs = tuple((k, v) for k, v in mapped.items() if v in model and model[v] == ckpt[k])
    done_c = {k for k, _ in pairs}
    done_m = {v for _, v in pairs}
    return KeyMapping(tuple(rules), pairs, tuple(k for k in ckpt if k not in done_c),
                      tuple(k for k in model if k not in done_m))


def _verified(rules: list[Rule], ckpt: Mapping[str, Shape],
              model: Mapping[str, Shape]) -> list[Rule]:
    """Drop rules that send keys to wrong shapes or make two keys collide."""
    for _ in range(len(rules)):
        mapped = {k: apply_rules(k, rules) for k in ckpt}
        counts = Counter(mapped.values())
        bad = {k for k, v in mapped.items()
               if v != k and (counts[v] > 1 or (v in model and model[v] != ckpt[k]))}
        if not bad:
            break
        culprits = {r for r in rules for k in bad if re.search(r[0], k)}
        rules = [r for r in rules if r not in culprits]
    return rules
