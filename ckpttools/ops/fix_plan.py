"""One fix plan for a checkpoint that does not load into a model, proven before it is shown.

The plan is found by the key-matching search (:mod:`ckpttools.ops.keymatch`), then completed
with what the search does not rename: drops of whole subtrees the model lacks or holds in
another shape, missing ``num_batches_tracked`` counters, absent tied aliases and (for timm) a
position embedding resampled to the model's grid. Every step is applied to the checkpoint's
key/shape/dtype table and compared with the model's signature; the counts a step shows are the
counts that comparison produced, and a step that changes nothing is left out.

The same plan object gives the Python snippet, the ``ckpttools remap`` command and the JSON
``plan`` (:func:`ckpttools.ops.plan_text.render_plan` fills them in).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ckpttools.ops.comparison import Comparison, Table, compare_keys
from ckpttools.ops.frameworks import ModelTraits
from ckpttools.ops.keymatch import Move, Rule, apply_rules, search
from ckpttools.ops.model_spec import ModelSignature

NBT = "num_batches_tracked"
_LORA = re.compile(r"(^|\.)lora_[ABab](\.|$)")
# q, k and v stacked along the rows of one tensor (nn.MultiheadAttention's in_proj_, timm's qkv):
# diagnose --checkpoint cuts or stacks them; a plan's renames cannot
FUSED_QKV = re.compile(r"^(?P<head>(?:.*\.)?)(?:in_proj_(?P<mha>weight|bias)"
                       r"|(?:qkv|qkv_proj|Wqkv|wqkv|to_qkv)\.(?P<leaf>weight|bias))$")
# steps the remap command cannot express (the snippet and from_pretrained/create_model can)
SNIPPET_ONLY = ("tie", "copy-embedding", "resample-pos-embed")


@dataclass(frozen=True)
class Counts:
    """A comparison in numbers; ``tied`` counts aliases absent from the checkpoint."""

    matched: int
    missing: int
    unexpected: int
    mismatched: int
    tied: int

    @classmethod
    def of(cls, cmp: Comparison) -> Counts:
        return cls(len(cmp.matched), len(cmp.missing), len(cmp.unexpected),
                   len(cmp.shape_mismatches), len(cmp.tied))

    def loads_strictly(self, allow_tied: bool = False) -> bool:
        """``load_state_dict(strict=True)`` succeeds (absent tied aliases fail it too)."""
        return not (self.missing or self.unexpected or self.mismatched
                    or (self.tied and not allow_tied))

    @property
    def text(self) -> str:
        text = f"{self.missing} missing, {self.unexpected} unexpected, {self.mismatched} shape mismatches"
        return text + (f", {self.tied} tied aliases absent" if self.tied else "")

    def to_dict(self) -> dict[str, int]:
        return {"matched": self.matched, "missing": self.missing, "unexpected": self.unexpected,
                "mismatched": self.mismatched, "tied_absent": self.tied}


@dataclass(frozen=True)
class Source:
    """How to load the state_dict: the file (inside a folder, the member), the nested key and
    the format (``safetensors``, ``safetensors-sharded`` or ``torch``)."""

    path: str
    file: str
    key: str = ""
    fmt: str = "torch"
    origin: str = ""  # "lightning" when the checkpoint carries pytorch-lightning_version

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "file": self.file, "key": self.key or None, "format": self.fmt,
                "origin": self.origin or None}


@dataclass(frozen=True)
class Step:
    """One step of a plan.

    Attributes:
        kind: ``drop``, ``strip-prefix``, ``add-prefix``, ``rename``, ``num-batches-tracked``,
            ``tie``, ``copy-embedding`` or ``resample-pos-embed``.
        args: drop patterns; the prefix; ``REGEX=REPL`` rules; counter keys; ``alias=owner``
            (``output=input`` for ``copy-embedding``); ``key=h,w,prefix_tokens``.
        summary: one sentence.
        after: counts after this step and the ones before it, from the check.
    """

    kind: str
    args: tuple[str, ...]
    summary: str = ""
    after: Counts | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "args": list(self.args), "summary": self.summary,
                "after": self.after.to_dict() if self.after else None}


@dataclass(frozen=True)
class FixPlan:
    """The plan, its proof and its renderings.

    Attributes:
        source: where the state_dict comes from.
        steps: in the order to apply them.
        before / after: counts before any step and after all of them (from the check).
        filled / total: model keys filled with a tensor of the right shape, and all of them.
        left: model keys left at their initialisation.
        allow_tied: absent tied aliases count as loadable (``--allow-tied``).
        traits: the model's framework facts.
        python / command / command_note / advice: the renderings (``plan_text``).
        undecided: moves that fill as many model keys from different checkpoint keys (the
            shapes cannot tell which the file needs); then no plan is shown, only these.
        no_plan: why no plan is shown (a tie above, or no step fills any model key), and
            no_plan_hint what to do instead; empty when there is a plan.
    """

    source: Source
    steps: tuple[Step, ...]
    before: Counts
    after: Counts
    filled: int
    total: int
    left: tuple[str, ...] = ()
    allow_tied: bool = False
    traits: ModelTraits = field(default_factory=ModelTraits)
    python: str = ""
    command: str = ""
    command_note: str = ""
    advice: tuple[dict[str, str], ...] = ()
    undecided: tuple[str, ...] = ()
    no_plan: str = ""
    no_plan_hint: str = ""

    @property
    def strict(self) -> bool:
        """The plan makes ``load_state_dict(strict=True)`` succeed."""
        return self.after.loads_strictly(self.allow_tied or any(s.kind == "tie" for s in self.steps))

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The plan's renames as ``(regex, replacement)`` rules (for ``--suggest-rules``)."""
        return rules_of(self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source.to_dict(), "steps": [s.to_dict() for s in self.steps],
                "before": self.before.to_dict(), "after": self.after.to_dict(),
                "strict": self.strict, "filled": self.filled, "total": self.total,
                "left_initialised": list(self.left), "python": self.python,
                "command": self.command or None, "command_note": self.command_note or None,
                "advice": list(self.advice), "model": self.traits.to_dict(),
                "undecided": list(self.undecided), "no_plan": self.no_plan or None,
                "no_plan_hint": self.no_plan_hint or None}


def rules_of(steps: Sequence[Step]) -> tuple[Rule, ...]:
    """The rename rules of ``steps`` in order: strip, add, then ``rename`` rules."""
    rules: list[Rule] = []
    for s in steps:
        if s.kind == "strip-prefix":
            rules.append(("^" + re.escape(s.args[0]), ""))
        elif s.kind == "add-prefix":
            rules.append(("^", s.args[0].replace("\\", "\\\\")))
        elif s.kind == "rename":
            rules += [_split(r) for r in s.args]
    return tuple(rules)


def _split(rule: str) -> Rule:
    pattern, _, repl = rule.partition("=")  # patterns we write never hold a bare '='
    return pattern, repl


def apply_steps(table: Table, steps: Sequence[Step], sig: ModelSignature) -> Table:
    """The checkpoint table after ``steps``: what ``load_state_dict`` would receive."""
    drops = [re.compile(p) for s in steps if s.kind == "drop" for p in s.args]
    rules = rules_of(steps)
    out: Table = {}
    for key, value in table.items():
        if not any(d.search(key) for d in drops):
            out[apply_rules(key, rules)] = value
    model = sig.by_key()
    for s in steps:
        if s.kind == "num-batches-tracked":
            out.update({k: (model[k].shape, model[k].dtype) for k in s.args})
        elif s.kind in ("tie", "copy-embedding"):
            out.update({a: out[o] for a, o in (t.split("=") for t in s.args) if o in out})
        elif s.kind == "resample-pos-embed":
            key = s.args[0].split("=")[0]
            if key in out:
                out[key] = (model[key].shape, out[key][1])
    return out


WRAPPERS = {"module.": "DataParallel / DistributedDataParallel", "_orig_mod.": "torch.compile",
            "module._orig_mod.": "DistributedDataParallel around torch.compile",
            "_orig_mod.module.": "torch.compile around DistributedDataParallel"}


def _move_summary(m: Move) -> str:
    if m.kind == "prefix":
        origin = f" (saved from {WRAPPERS[m.old]})" if m.old in WRAPPERS else ""
        if not m.new:
            return f"strip '{m.old}' from the keys that carry it{origin}"
        if not m.old:
            return f"add '{m.new}' in front of the keys"
        return f"replace '{m.old}' by '{m.new}' at the start of the keys that carry it"
    if m.kind == "index-shift" and m.old:
        return f"the checkpoint's layers {m.old} are the model's {m.new}"
    if m.kind == "index-shift":
        return f"shift {len(m.rules)} layer indices of a Sequential (a layer added or removed)"
    if m.kind == "legacy-leaf":
        return ("rename the norms' old parameter names gamma -> weight, beta -> bias (TF ports "
                "and code before PyTorch 1.0)")
    return (f"rename {len(m.rules)} modules whose leaves have the same names, shapes and dtypes "
            "in the model")


def _moves_to_steps(moves: Sequence[Move]) -> list[Step]:
    steps: list[Step] = []
    for m in moves:
        kinds = [s.kind for s in steps]
        summary = _move_summary(m)
        if m.kind == "prefix" and m.old and not m.new and not kinds:
            steps.append(Step("strip-prefix", (m.old,), summary))
        elif m.kind == "prefix" and m.new and not m.old and kinds in ([], ["strip-prefix"]):
            steps.append(Step("add-prefix", (m.new,), summary))
        else:
            steps.append(Step("rename", tuple(f"{p}={r}" for p, r in m.rules), summary))
    return steps


def drop_pattern(keys: Sequence[str], all_keys: Sequence[str]) -> str:
    """A regex matching ``keys`` and no other of ``all_keys``, by the shortest module prefix
    holding only those keys: ``["cls.a.weight", "cls.b"]`` -> ``^(?:cls)(?:\\.|$)``."""
    chosen = set(keys)
    keep = [k for k in all_keys if k not in chosen]
    heads: list[str] = []
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            head = ".".join(parts[:n])
            if not any(k == head or k.startswith(head + ".") for k in keep):
                break
        if not any(head == h or head.startswith(h + ".") for h in heads):
            heads = [h for h in heads if not h.startswith(head + ".")] + [head]
    return "^(?:" + "|".join(re.escape(h) for h in heads) + r")(?:\.|$)"


def _resample_steps(cmp: Comparison, traits: ModelTraits) -> list[Step]:
    """timm's absolute position embedding of another grid: resample it, keep what it learned."""
    if traits.framework != "timm" or not traits.grid:
        return []
    out = []
    for m in cmp.shape_mismatches:
        c, t = m.checkpoint_shape, m.model_shape
        if m.key.rpartition(".")[2] == "pos_embed" and len(c) == len(t) == 3 and c[2] == t[2]:
            grid = ",".join(str(g) for g in traits.grid)
            out.append(Step("resample-pos-embed", (f"{m.key}={grid},{traits.prefix_tokens}",), (
                f"resample {m.key} {list(c)} to the model's {'x'.join(map(str, traits.grid))} grid "
                f"{list(t)} (timm's resample_abs_pos_embed), keeping what it learned")))
    return out


def _tail_steps(table: Table, renames: list[Step], sig: ModelSignature,
                traits: ModelTraits) -> list[Step]:
    """Drops, counters, ties and resampling for what the renames leave."""
    rules = rules_of(renames)
    cmp = compare_keys(apply_steps(table, renames, sig), sig)
    resample = _resample_steps(cmp, traits)
    resampled = {s.args[0].split("=")[0] for s in resample}
    original = {apply_rules(k, rules): k for k in table}
    steps: list[Step] = []
    mism = [original[m.key] for m in cmp.shape_mismatches if m.key not in resampled]
    swapped = sum(m.transposed for m in cmp.shape_mismatches if m.key not in resampled)
    held = "the model holds in another shape (they keep the model's initialisation)" + (
        f"; {swapped} of them stored transposed, (in, out) for (out, in): `ckpttools diagnose "
        "--checkpoint` gives the fix that transposes them" if swapped else "")
    extra = [original[k] for k in cmp.unexpected]
    for keys, what in ((mism, held), (extra, "the model does not have")):
        if keys:
            pattern = drop_pattern(keys, list(table))
            noun = "key" if len(keys) == 1 else "keys"
            if any(_LORA.search(k) for k in keys):  # learned weights, not leftovers: say so
                what += (" (a LoRA adapter's lora_A/lora_B among them: the model loads without "
                         "its fine-tuning; merge the adapter with PEFT to keep it)")
            if any(FUSED_QKV.match(k) for k in keys):
                what += (" (q, k and v stacked in one projection among them: `ckpttools diagnose "
                         "--checkpoint` gives the fix that cuts them into the model's layers)")
            steps.append(Step("drop", (pattern,), f"drop {len(keys)} {noun} {what}: {pattern}"))
    steps += renames
    model = sig.by_key()
    # a counter alone is missing from a norm saved before torch 0.4.1; a norm whose stats are
    # missing too is absent from the file, and its counter is no older-save finding
    missing = set(cmp.missing)
    nbt = tuple(k for k in cmp.missing if k.rpartition(".")[2] == NBT and model[k].kind == "buffer"
                and k.rpartition(".")[0] + ".running_mean" not in missing)
    if nbt:
        steps.append(Step("num-batches-tracked", nbt, (
            f"add the BatchNorm num_batches_tracked counters the checkpoint lacks ({len(nbt)}) "
            "(saved before torch 0.4.1, or trimmed); they count batches, no weights")))
    if cmp.tied:
        a, o = cmp.tied[0]
        steps.append(Step("tie", tuple(f"{a}={o}" for a, o in cmp.tied), (
            f"add the tied aliases the checkpoint leaves out ({len(cmp.tied)}: {a} is {o} ...); "
            "from_pretrained re-ties them itself")))
    return steps + _untied_head(cmp, sig, traits) + resample


def _untied_head(cmp: Comparison, sig: ModelSignature, traits: ModelTraits) -> list[Step]:
    """A transformers model with its own output embedding, given a file without it whose input
    embedding has its shape: the file was saved with tied embeddings (save_pretrained leaves the
    tied head out), and the model was built with ``tie_word_embeddings=False``."""
    if len(traits.embeddings) != 2:
        return []
    head, embed = traits.embeddings
    model = sig.by_key()
    if head not in cmp.missing or embed not in cmp.matched or model[head].shape != model[embed].shape:
        return []
    return [Step("copy-embedding", (f"{head}={embed}",), (
        f"the checkpoint leaves out {head}, as a save with tied embeddings does, and the model unties "
        f"it (tie_word_embeddings=False): build the model with tie_word_embeddings=True, or load the "
        f"embedding rows ({embed}) into {head} and tie the two again"))]


def _prove(table: Table, steps: Sequence[Step], sig: ModelSignature
           ) -> tuple[list[Step], Comparison]:
    """Each step checked in order; a step that changes nothing is left out."""
    kept: list[Step] = []
    cmp = compare_keys(table, sig)
    for step in steps:
        got = compare_keys(apply_steps(table, [*kept, step], sig), sig)
        if Counts.of(got) == Counts.of(cmp) and got.matched == cmp.matched:
            continue
        kept.append(replace(step, after=Counts.of(got)))
        cmp = got
    return kept, cmp


def find_plan(source: Source, table: Table, sig: ModelSignature, traits: ModelTraits,
              *, allow_tied: bool = False) -> FixPlan:
    """The simplest plan that fills the most model keys, checked step by step.

    Args:
        source: where the state_dict comes from (for the renderings).
        table: the state_dict's ``key -> (shape, dtype)``.
        sig: the model's signature (built on the meta device).
        traits: the model's framework facts (timm's grid, transformers' prefix ...).
        allow_tied: absent tied aliases are fine (``--allow-tied``).

    Returns:
        The plan, without its renderings (``plan_text.render_plan`` adds them); no steps when
        the state_dict loads as it is.
    """
    before = compare_keys(table, sig)
    steps: list[Step] = []
    cmp, undecided = before, tuple[str, ...]()
    if not Counts.of(before).loads_strictly(allow_tied):
        moves, tie = search(table, sig)
        if tie is None:
            renames = _moves_to_steps(moves)
            steps, cmp = _prove(table, _tail_steps(table, renames, sig, traits), sig)
        else:  # a plan would pick one of them blindly: show them, no plan
            undecided = tuple(sorted(_move_summary(m) for m in tie.moves))
    filled = {*cmp.matched, *(a for a, _ in cmp.tied)}
    alias = {k for g in sig.ties for k in g[1:]}
    left = tuple(k.key for k in sig.keys if k.key not in filled and k.key not in alias)
    no_plan, hint = "", ""
    if undecided:
        no_plan = ("these fill as many model keys from different checkpoint keys, and the shapes "
                   "cannot tell which one the checkpoint needs")
        hint = ("apply the one you mean with ckpttools remap (--strip-prefix, --add-prefix, "
                "--rename) and diff its output again")
    elif sig.keys and not filled and not Counts.of(before).loads_strictly(allow_tied):
        # a plan of drops alone loads nothing: not a fix, whatever strict=False says
        steps, cmp = [], before
        no_plan, hint = _fills_nothing(source, table, len(sig.keys))
    plan = FixPlan(source, tuple(steps), Counts.of(before), Counts.of(cmp),
                   len(filled), len(sig.keys), left, allow_tied, traits, undecided=undecided,
                   no_plan=no_plan, no_plan_hint=hint)
    return plan


def _fills_nothing(source: Source, table: Table, total: int) -> tuple[str, str]:
    """Why no plan is shown for a checkpoint that fills none of the model's keys, and what to do."""
    why = (f"no rename or drop makes the checkpoint fill any of the model's {total} keys (it "
           f"holds {len(table)} others)")
    if any(_LORA.search(k) for k in table):
        return why, ("the checkpoint is a LoRA adapter alone: build the model with its base "
                     "weights, then peft.PeftModel.from_pretrained(model, ADAPTER_FOLDER)")
    return why, ("it is another model's file, or its keys are named in a way no prefix or "
                 f"rename maps: see what it holds with {shlex.join(['ckpttools', 'inspect', source.path])}")
