"""Key matching between a checkpoint and a model: rename rules (``REGEX=REPLACEMENT``, applied
in order with ``re.sub``), rules files, and the search for the mapping that fills the most model
keys with a tensor of the right shape.

The search tries structural candidates only: replace one key prefix by another on the keys that
carry it (any depth: ``module.``, ``_orig_mod.``, ``bert.``, nested combinations), shift the
indices of a ``Sequential``, and rename whole modules whose leaves (``weight``, ``bias``, ...)
have equal names, shapes and dtypes. A leaf name is changed only by a fixed convention, never by
shape (a norm's ``weight`` and ``bias`` have one shape): the ``gamma``/``beta`` of TF ports and
pre-1.0 code are a norm's ``weight``/``bias``, as transformers renames them on load. A
candidate is kept only when it fills more model keys; the simplest plan reaching the best score
wins, because candidates are tried from the simplest kind up and each must strictly improve the
score.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ckpttools.errors import SpecError
from ckpttools.ops.comparison import Comparison, Table, compare_keys
from ckpttools.ops.index_shift import index_shift_candidates, shift_choices
from ckpttools.ops.model_spec import ModelSignature

Shape = tuple[int, ...]
Rule = tuple[str, str]  # (regex, replacement)

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


def escape_repl(text: str) -> str:
    """``text`` as a literal ``re.sub`` replacement."""
    return text.replace("\\", "\\\\")


def prefix_rule(old: str, new: str) -> Rule:
    """The rule replacing prefix ``old`` (``""``: every key) by ``new`` on the keys that carry it."""
    return "^" + re.escape(old), escape_repl(new)


def rename_table(table: Table, rules: Sequence[Rule]) -> Table | None:
    """``table`` with ``rules`` applied to every key; ``None`` when two keys collide."""
    out: Table = {}
    for key, value in table.items():
        new = apply_rules(key, rules)
        if new in out:
            return None
        out[new] = value
    return out


def _score(table: Table, sig: ModelSignature) -> tuple[int, int]:
    cmp = compare_keys(table, sig)
    return len(cmp.matched) + len(cmp.tied), -len(cmp.unexpected)


def _loose(table: Table, cmp: Comparison) -> tuple[list[str], set[str]]:
    """Checkpoint keys not loaded, and model keys not filled (missing or of another shape)."""
    bad = {m.key for m in cmp.shape_mismatches}
    return [k for k in table if k not in cmp.matched], set(cmp.missing) | bad


def prefix_candidates(table: Table, sig: ModelSignature, cmp: Comparison,
                      limit: int = 12) -> list[tuple[str, str]]:
    """Prefix replacements voted for by loose keys: a checkpoint key ``A + s`` and a model key
    ``B + s`` of the same shape, ``s`` the longest shared tail, vote for ``A -> B``."""
    model = sig.by_key()
    ckpt_keys, free = _loose(table, cmp)
    by_tail: dict[str, list[str]] = defaultdict(list)
    for m in free:
        parts = m.split(".")
        for i in range(len(parts)):
            by_tail[".".join(parts[i:])].append(m)
    votes: Counter[tuple[str, str]] = Counter()
    for k in ckpt_keys:
        parts, shape = k.split("."), tuple(table[k][0])
        for i in range(len(parts)):
            tail = ".".join(parts[i:])
            hits = [m for m in by_tail.get(tail, ()) if model[m].shape == shape]
            if not hits:
                continue
            # a one-part tail (``weight``) decides nothing unless it is unique
            if len(hits) <= (1 if i == len(parts) - 1 else 4):
                for m in hits:
                    votes[(k[: len(k) - len(tail)], m[: len(m) - len(tail)])] += 1
            break
    return [(a, b) for (a, b), _ in votes.most_common(limit) if a != b]


def _improve(table: Table, sig: ModelSignature, candidates: Sequence[Sequence[Rule]]
             ) -> tuple[Table, int] | None:
    """The candidate (a list of rules) that improves the score most: the renamed table and
    the candidate's index."""
    found = _best(table, sig, candidates)
    return found[0] if found else None


def _best(table: Table, sig: ModelSignature, candidates: Sequence[Sequence[Rule]],
          agree: Sequence[bool] = ()) -> tuple[tuple[Table, int], list[int]] | None:
    """``_improve``'s answer, and the indices of the candidates that fill as many keys from
    other checkpoint keys (then shapes cannot tell which of them the file means); among those,
    the ones whose names ``agree`` are preferred (names decide where shapes cannot)."""
    base = _score(table, sig)
    scored: list[tuple[tuple[int, int], int, Table]] = []
    for n, rules in enumerate(candidates):
        got = rename_table(table, rules)
        if got is not None:
            scored.append((_score(got, sig), n, got))
    # more keys filled wins; equal fills are no reason to rename anything
    scored = [s for s in scored if s[0][0] > base[0]]
    if not scored:
        return None
    top = max(s[0] for s in scored)
    winners = [(n, got) for score, n, got in scored if score == top]
    winners = [w for w in winners if agree[w[0]]] or winners if agree else winners
    fills = {n: _fills(table, candidates[n], got, sig) for n, got in winners}
    first = winners[0][0]
    return (winners[0][1], first), [n for n, _ in winners if _conflict(fills[n], fills[first])]


def _names_agree(old: str, new: str) -> bool:
    """One prefix is the other with parts taken out (``layers.3._orig_mod.`` and ``layers.3.``,
    ``module.`` and ``""``): a wrapper's name added or removed, no index or name changed."""
    short, long = sorted((old.split(".")[:-1], new.split(".")[:-1]), key=len)
    rest = iter(long)
    return all(part in rest for part in short)


def _fills(table: Table, rules: Sequence[Rule], renamed: Table, sig: ModelSignature
           ) -> dict[str, str]:
    """model key -> the checkpoint key filling it, for every model key the renamed table fills."""
    matched = set(compare_keys(renamed, sig).matched)
    return {new: k for k in table if (new := apply_rules(k, rules)) in matched}


def _conflict(a: dict[str, str], b: dict[str, str]) -> bool:
    """Two fillings disagree: a model key filled from two checkpoint keys, or a checkpoint key
    sent to two model keys (fillings of separate keys both apply, one round after another)."""
    a_from = {k: m for m, k in a.items()}
    return any(b[m] != k for m, k in a.items() if m in b) or \
        any(a_from[k] != m for m, k in b.items() if k in a_from)


def _modules(table: Mapping[str, tuple[tuple[int, ...], str]], keys: Iterable[str]
             ) -> dict[str, frozenset[tuple[str, tuple[int, ...], str]]]:
    out: dict[str, set[tuple[str, tuple[int, ...], str]]] = defaultdict(set)
    for key in keys:
        module, _, leaf = key.rpartition(".")
        if module:
            out[module].add((leaf, tuple(table[key][0]), table[key][1]))
    return {m: frozenset(s) for m, s in out.items()}


def module_rename_candidates(table: Table, sig: ModelSignature, cmp: Comparison) -> list[Rule]:
    """Whole-module renames: a loose checkpoint module and a loose model module whose leaves
    have the same names, shapes and dtypes, paired when that signature is unique on both sides
    or occurs equally often (then in order)."""
    model = {k.key: (k.shape, k.dtype) for k in sig.keys}
    ckpt_keys, free = _loose(table, cmp)
    cm = _modules(table, ckpt_keys)
    mm = _modules(model, [k for k in model if k in free])
    by_c: dict[frozenset[Any], list[str]] = defaultdict(list)
    by_m: dict[frozenset[Any], list[str]] = defaultdict(list)
    for name, s in cm.items():
        by_c[s].append(name)
    for name, s in mm.items():
        by_m[s].append(name)
    pairs: list[tuple[str, str]] = []
    for s, sources in by_c.items():
        targets = by_m.get(s, [])
        if len(sources) == len(targets):
            pairs += [(a, b) for a, b in _pair_by_name(sources, targets) if a != b]
    return [(f"^{re.escape(a)}\\.", escape_repl(f"{b}."))
            for a, b in _whole_parents(pairs, set(cm), set(mm))]


def _pair_by_name(sources: list[str], targets: list[str]) -> list[tuple[str, str]]:
    """Modules of one signature paired by their names: each source with the target its name is
    most like, when that target is its own and strictly the closest. Shapes cannot tell ``query``
    from ``key``, nor ``layernorm_before`` from ``layernorm_after``, and neither can their order:
    names that do not decide pair nothing (the keys stay unmatched). A target that is the
    source with parts added (PEFT's ``q_proj`` -> ``q_proj.base_layer``) is its own when it is
    the only one: a longer name would lose on likeness to a sibling (``k_proj``)."""
    if len(sources) == 1:
        return [(sources[0], targets[0])]
    pairs = []
    for a in sources:
        agree = [b for b in targets if _names_agree(a + ".", b + ".")]
        if len(agree) == 1:
            pairs.append((a, agree[0]))
            continue
        ratios = sorted(((SequenceMatcher(None, a, b).ratio(), b) for b in targets), reverse=True)
        if ratios[0][0] == ratios[1][0]:
            return []
        pairs.append((a, ratios[0][1]))
    return pairs if len({b for _, b in pairs}) == len(pairs) else []


# Share of the keys a prefix replacement moves that must land on a model key of their shape:
# a whole subtree moves (``bert.``), not a stray module that happens to fit (``cls.*.dense``).
LANDING_SHARE = 0.75


def _lands(table: Table, sig: ModelSignature, old: str, new: str) -> bool:
    """Most keys under ``old`` land on a model key of their shape, and most loose model keys
    under ``new`` get filled: whole subtrees correspond."""
    model = sig.by_key()
    moved = [k for k in table if k.startswith(old)]
    filled = {new + k[len(old):] for k in moved
              if (t := model.get(new + k[len(old):])) is not None and t.shape == tuple(table[k][0])}
    loose = {k for k in compare_keys(table, sig).missing if k.startswith(new)} | filled
    return bool(moved) and len(filled) >= LANDING_SHARE * len(moved) and \
        len(filled) >= LANDING_SHARE * len(loose)


def _whole_parents(pairs: list[tuple[str, str]], loose_c: set[str], loose_m: set[str]
                   ) -> list[tuple[str, str]]:
    """Module renames whose loose siblings are all renamed too, on both sides: a parent moves
    as a whole, or (at the top level) a module on its own."""
    sources, targets = {a for a, _ in pairs}, {b for _, b in pairs}

    def whole(module: str, loose: set[str], renamed: set[str]) -> bool:
        parent = module.rpartition(".")[0]
        return not parent or {m for m in loose if m.rpartition(".")[0] == parent} <= renamed

    return [(a, b) for a, b in pairs if whole(a, loose_c, sources) and whole(b, loose_m, targets)]


@dataclass(frozen=True)
class Move:
    """One accepted candidate: a prefix replacement (``old`` -> ``new``) or other rules."""

    kind: str  # prefix | index-shift | module-rename | legacy-leaf
    rules: tuple[Rule, ...]
    old: str = ""
    new: str = ""


@dataclass(frozen=True)
class Tie:
    """Moves that fill as many model keys as each other, from different checkpoint keys: the
    shapes cannot tell which one the checkpoint needs, so none of them is chosen."""

    moves: tuple[Move, ...]
    filled: int


def search_moves(table: Table, sig: ModelSignature, rounds: int = 4) -> list[Move]:
    """The moves of :func:`search` (empty up to a tie's when one leaves the choice open)."""
    return search(table, sig, rounds)[0]


def search(table: Table, sig: ModelSignature, rounds: int = 4) -> tuple[list[Move], Tie | None]:
    """The moves that fill the most model keys with a tensor of the right shape.

    Prefix replacements are tried first (greedily, several rounds for nested combinations),
    then index shifts, then whole-module renames; each must fill more keys than before.

    Args:
        table: the checkpoint's ``key -> (shape, dtype)``.
        sig: the model's signature.
        rounds: prefix rounds.

    Returns:
        The moves, in the order to apply their rules (``apply_rules``), and the tie that
        stopped the search, if one did (then the moves are those found before it).
    """
    moves: list[Move] = []
    original = table
    for _ in range(rounds):
        pairs = prefix_candidates(table, sig, compare_keys(table, sig))
        pairs = [(a, b) for a, b in pairs if _lands(table, sig, a, b)]
        found = _best(table, sig, [[prefix_rule(a, b)] for a, b in pairs],
                      [_names_agree(a, b) for a, b in pairs])
        if found is None:
            break
        (table, n), rivals = found
        if rivals:
            tied = [Move("prefix", (prefix_rule(*pairs[i]),), *pairs[i]) for i in [n, *rivals]]
            return moves, Tie(tuple(tied), _score(table, sig)[0])
        moves.append(Move("prefix", (prefix_rule(*pairs[n]),), *pairs[n]))
    for ways in index_shift_candidates(table, sig):
        found = _improve(table, sig, ways)
        if found:
            table = found[0]
            moves.append(Move("index-shift", tuple(ways[found[1]])))
    tie = _shift_tie(original, table, sig)
    if tie is not None:
        return moves, tie
    renames = module_rename_candidates(table, sig, compare_keys(table, sig))
    if renames and _improve(table, sig, [renames]):
        needed = _needed(sig, table, renames)
        moves.append(Move("module-rename", tuple(needed)))
        table = rename_table(table, needed) or table
    legacy = legacy_leaf_rules(table, sig)
    if legacy and _improve(table, sig, [legacy]):
        moves.append(Move("legacy-leaf", tuple(legacy)))
    return moves, None


def _shift_tie(original: Table, table: Table, sig: ModelSignature) -> Tie | None:
    """The moves shifted a ``Sequential`` whose layers the shapes align in two ways."""
    found = shift_choices(original, table, sig)
    if found is None:
        return None
    saved, choices = found
    return Tie(tuple(Move("index-shift", (), saved, c) for c in choices), _score(table, sig)[0])


# Old names of a norm's parameters, by convention (not by shape: both have one shape).
LEGACY_LEAVES = {"gamma": "weight", "beta": "bias"}


def legacy_leaf_rules(table: Table, sig: ModelSignature) -> list[Rule]:
    """Rules renaming loose ``gamma``/``beta`` keys to the free model key ``weight``/``bias``
    of the same module and shape: one rule per leaf name when no loaded key carries it, else
    one per module."""
    cmp = compare_keys(table, sig)
    ckpt_keys, free = _loose(table, cmp)
    model = {k.key: k.shape for k in sig.keys}
    moves: list[tuple[str, str, str]] = []  # (module, old leaf, new leaf)
    for key in ckpt_keys:
        module, _, leaf = key.rpartition(".")
        new = LEGACY_LEAVES.get(leaf)
        target = f"{module}.{new}" if module else new
        if new is not None and target in free and model[target] == table[key][0]:
            moves.append((module, leaf, new))
    if not moves:
        return []
    chosen = {f"{m}.{o}" for m, o, _ in moves if m}
    carriers = {k for k in table if "." in k and k.rpartition(".")[2] in LEGACY_LEAVES}
    if len(chosen) == len(moves) and chosen == carriers:  # a rule per leaf renames just these
        return [(f"\\.{old}$", f".{new}") for old, new in LEGACY_LEAVES.items()
                if any(o == old for _, o, _ in moves)]
    return [(f"^{re.escape(m)}\\.{o}$" if m else f"^{o}$", escape_repl(f"{m}.{n}" if m else n))
            for m, o, n in moves]


def _needed(sig: ModelSignature, table: Table, renames: list[Rule]) -> list[Rule]:
    """The renames each of which fills a key (a rename that fills nothing is never shown)."""
    keep = list(renames)
    for rule in renames:
        trial = [r for r in keep if r != rule]
        with_it, without = rename_table(table, keep), rename_table(table, trial)
        if with_it is not None and without is not None and \
                _score(without, sig)[0] >= _score(with_it, sig)[0]:
            keep = trial
    return keep
