"""Property: no plan ever maps a key to a different leaf name or a different shape, over key
tables of real models and random perturbations of them (issue #12). The one leaf rename is a
convention: a norm's old ``gamma``/``beta`` become its ``weight``/``bias``, never the other way."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from ckpttools.ops.fix_plan import Source, apply_steps, find_plan, rules_of
from ckpttools.ops.frameworks import ModelTraits
from ckpttools.ops.keymatch import LEGACY_LEAVES, apply_rules
from ckpttools.ops.model_spec import ModelSignature, signature_of_model
from tests._models import TinyNet

Table = dict[str, tuple[tuple[int, ...], str]]
PREFIXES = ["module.", "_orig_mod.", "model.", "module._orig_mod.", "backbone.", "net.encoder."]


def _signature(model: nn.Module) -> ModelSignature:
    return signature_of_model(model)


def _meta(factory: Any, **kwargs: Any) -> nn.Module:
    with torch.device("meta"):
        return factory(**kwargs)


def _table(sig: ModelSignature) -> Table:
    return {k.key: (k.shape, k.dtype) for k in sig.keys}


@st.composite
def perturbed(draw: Any, table: Table) -> Table:
    keys = list(table)
    out = dict(table)
    if draw(st.booleans()):  # a wrapper prefix on all keys or on most of them
        prefix = draw(st.sampled_from(PREFIXES))
        spare = draw(st.sets(st.sampled_from(keys), max_size=2))
        out = {(k if k in spare else prefix + k): v for k, v in out.items()}
    for key in draw(st.sets(st.sampled_from(list(out)), max_size=3)):  # dropped keys
        out.pop(key, None)
    for key in draw(st.sets(st.sampled_from(list(out)), max_size=2)):  # resized tensors
        shape, dtype = out[key]
        if shape:
            out[key] = ((shape[0] + draw(st.integers(1, 3)), *shape[1:]), dtype)
    if draw(st.booleans()):  # a module renamed, leaves kept
        module = draw(st.sampled_from(sorted({k.rpartition(".")[0] for k in out if "." in k})))
        new = draw(st.sampled_from(["renamed", "old_block", "layers"]))
        out = {(new + k[len(module):] if k.startswith(module + ".") else k): v
               for k, v in out.items()}
    if draw(st.booleans()):  # a norm saved under its old names (TF ports, before PyTorch 1.0)
        norms = sorted({k.rpartition(".")[0] for k in out if k.endswith("running_mean")})
        if norms:
            norm = draw(st.sampled_from(norms))
            old = {f"{norm}.weight": f"{norm}.gamma", f"{norm}.bias": f"{norm}.beta"}
            out = {old.get(k, k): v for k, v in out.items()}
    extra = draw(st.integers(0, 2))
    for n in range(extra):  # keys the model never had
        out[f"aux.extra{n}.weight"] = ((3, n + 1), "float32")
    return out


def _check(table: Table, sig: ModelSignature) -> None:
    plan = find_plan(Source("x.pth", "x.pth"), table, sig, ModelTraits())
    if plan.no_plan:  # shown only as the reason: no step, and nothing a step could fill
        assert not plan.steps and (plan.undecided or plan.filled == 0), plan
        return
    model = sig.by_key()
    drops = [re.compile(p) for s in plan.steps if s.kind == "drop" for p in s.args]
    rules = rules_of(plan.steps)
    for key, (shape, _) in table.items():
        if any(d.search(key) for d in drops):
            continue
        new = apply_rules(key, rules)
        leaf = key.rpartition(".")[2]
        assert new.rpartition(".")[2] == LEGACY_LEAVES.get(leaf, leaf) or \
            new.rpartition(".")[2] == leaf, (key, new)
        if new in model:
            assert model[new].shape == tuple(shape), (key, new)
    assert plan.after.mismatched == 0
    # the counts shown are those of the table the plan produces
    assert len(apply_steps(table, plan.steps, sig)) >= plan.after.matched


TINY = _signature(_meta(TinyNet, depth=3))
SEQ = _signature(_meta(lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8),
                                             nn.BatchNorm1d(8), nn.Linear(8, 2))))


@pytest.mark.parametrize("sig", [TINY, SEQ], ids=["tinynet", "sequential"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_plans_keep_leaf_names_and_shapes(sig: ModelSignature, data: st.DataObject) -> None:
    _check(data.draw(perturbed(_table(sig))), sig)


@pytest.mark.frameworks
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_plans_on_bert_tables(data: st.DataObject) -> None:
    from tests import _fw_models as fw

    tables = {"mlm": _table(_signature(_meta(fw.bert_mlm))),
              "cls": _table(_signature(_meta(fw.bert_cls)))}
    target = _signature(_meta(fw.bert_model))
    source = data.draw(st.sampled_from(sorted(tables)))
    _check(data.draw(perturbed(tables[source])), target)
