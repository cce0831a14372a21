"""Readings of a vocabulary's tensors and of a ViT's final norm by libraries' conventions.

One vocabulary is carried by several tensors: the input table, the output layer tied to it or
sized like it, a bias beside that layer. A whole message that lists one of them alone says the
others loaded, so the vocabulary did not change:

- BERT's masked-LM head (``cls.predictions``) ties its decoder to the word embeddings and keeps a
  bias of its own. The bias alone a few rows apart: the tables loaded, and the code sized the bias
  otherwise (a library version that resizes the tables for added tokens but not the bias).
- A transducer's joint network (NeMo's ``joint.joint_net``) outputs the vocabulary and a blank,
  and as many more outputs as the decoder variant predicts (TDT's durations, multi-blank); its
  prediction network's table and a hybrid's CTC decoder count the vocabulary too. The joint's
  output alone: another joint configuration, or a tokenizer, read alike.

An input table alone whose two sizes are an order of magnitude apart is not tokens added to one
vocabulary: the model was built for another dictionary or another text frontend (a preset), which
read alike.

A prefix or prompt encoder's table (P-Tuning v2's and PEFT's ``PrefixEncoder``, PEFT's
``prompt_encoder``) holds one row per virtual token: its rows are the configured prefix length
(``pre_seq_len``, ``num_virtual_tokens``), not a vocabulary or a rank's piece.

A CRF over tags (pytorch-crf's ``start_transitions``, ``end_transitions``, ``transitions``)
counts the tags on each of its axes, as the layer that scores them does on its rows: tensors that
change between the same two counts there are another tag set (a head), not another width.

timm's VisionTransformer puts its final norm after pooling (``fc_norm``) when built with average
pooling (``global_pool='avg'``, MAE's fine-tuning models) and before it (``norm``) with the class
token: the two norms alone, one on each side, are one network built with the other pooling.
"""

from __future__ import annotations

import re
from dataclasses import replace

from ckpttools.ops.diagnose.evidence import Evidence, Finding, ShapeMismatch

_MLM_BIAS = re.compile(r"(^|\.)cls\.predictions\.bias$")
_JOINT_OUT = re.compile(r"(^|\.)joint\.joint_net\.\d+\.(weight|bias)$")
_INPUT_TABLE = re.compile(r"(^|[._])(embed_tokens|word_embeddings|wte|tok_embeddings|tok_emb"
                          r"|embedding|embeddings|src_word_emb|word_emb)\.weight$")
_PROMPT_TABLE = re.compile(r"(^|\.)(prefix_encoder|prompt_encoder|prompt_embeddings?)(\.|$)")
_PROMPT_CLASSES = frozenset({"PrefixEncoder", "PromptEncoder", "PromptEmbedding"})
_ADDED_TOKENS = 8  # a bias this many rows apart: added tokens, not another vocabulary
_OTHER_FRONTEND = 10  # input tables this many times apart: another dictionary or frontend
_NORM_LEAVES = ("weight", "bias")
CANDIDATE = 0.6


def _rows(m: ShapeMismatch) -> tuple[int, int] | None:
    """The two row counts when only the first axis differs."""
    c, s = m.checkpoint_shape, m.model_shape
    if len(c) != len(s) or not c or c[0] == s[0] or c[1:] != s[1:]:
        return None
    return c[0], s[0]


def _whole_sizes_only(ev: Evidence) -> bool:
    return bool(ev.mismatched) and not (ev.truncated or ev.missing or ev.unexpected or ev.lookups
                                        or ev.cut_mismatches)


def bias_alone(ev: Evidence) -> ShapeMismatch | None:
    """The masked-LM head's bias is the only tensor of another size, a few rows apart."""
    if not _whole_sizes_only(ev) or len(ev.mismatched) != 1:
        return None
    m = ev.mismatched[0]
    rows = _rows(m)
    if not _MLM_BIAS.search(m.key) or rows is None or abs(rows[0] - rows[1]) > _ADDED_TOKENS:
        return None
    return m


def joint_alone(ev: Evidence) -> list[ShapeMismatch]:
    """Every tensor of another size is a transducer joint's output layer, by rows only."""
    mm = list(ev.mismatched)
    if not _whole_sizes_only(ev) or not all(_JOINT_OUT.search(m.key) and _rows(m) for m in mm):
        return []
    return mm if len({_rows(m) for m in mm}) == 1 else []


def other_frontend(ev: Evidence) -> list[ShapeMismatch]:
    """Every tensor of another size is an input table, its rows an order of magnitude apart."""
    mm = list(ev.mismatched)
    if not _whole_sizes_only(ev) or not all(_INPUT_TABLE.search(m.key) for m in mm):
        return []
    rows = {_rows(m) for m in mm}
    if len(rows) != 1 or (pair := rows.pop()) is None or min(pair) == 0:
        return []
    return mm if max(pair) >= _OTHER_FRONTEND * min(pair) else []


def prompt_table(ev: Evidence) -> list[ShapeMismatch]:
    """Every tensor of another size is a prefix/prompt encoder's table, by rows only: the key
    names the encoder, or the message names its class and the key is its table."""
    mm = list(ev.mismatched)
    own = (ev.class_name or "") in _PROMPT_CLASSES
    if not mm or not all(_rows(m) and len(m.model_shape) == 2 and (
            _PROMPT_TABLE.search(m.key) or (own and m.key.startswith("embedding"))) for m in mm):
        return []
    return mm


_CRF = re.compile(r"(^|\.)(start_transitions|end_transitions|transitions)$")


def crf_tags(ev: Evidence) -> list[ShapeMismatch]:
    """Every tensor of another size is a CRF's or the tag scorer's, between the same two counts on
    every axis that differs (rows of the scorer, both axes of the transitions)."""
    mm = list(ev.mismatched)
    if not any(_CRF.search(m.key) for m in mm):
        return []
    pairs = set()
    for m in mm:
        c, s = m.checkpoint_shape, m.model_shape
        if len(c) != len(s):
            return []
        diff = [(a, b) for a, b in zip(c, s) if a != b]
        square = _CRF.search(m.key) and len(diff) == len(c)  # (n,) or (n, n): every axis counts tags
        if not diff or not (square or _rows(m)):
            return []
        pairs.update(diff)
    return mm if len(pairs) == 1 else []


def pooled_norm(ev: Evidence) -> tuple[str, str] | None:
    """(checkpoint's norm, model's norm) when the only keys shown are a ViT's final norm on one
    side and its pooled norm on the other (``norm.*`` against ``fc_norm.*``, the same prefix)."""
    if ev.mismatched or ev.lookups or not (ev.missing and ev.unexpected):
        return None

    def norm_of(keys: tuple[str, ...] | list[str]) -> str | None:
        mods = {k.rpartition(".")[0] for k in keys}
        leaves = {k.rpartition(".")[2] for k in keys}
        if len(mods) != 1 or not leaves <= set(_NORM_LEAVES):
            return None
        mod = mods.pop()
        return mod if mod.rpartition(".")[2] in ("norm", "fc_norm") else None

    ckpt, model = norm_of(ev.unexpected), norm_of(ev.missing)
    if ckpt is None or model is None:
        return None
    c_pre, _, c_name = ckpt.rpartition(".")
    m_pre, _, m_name = model.rpartition(".")
    return (ckpt, model) if c_pre == m_pre and {c_name, m_name} == {"norm", "fc_norm"} else None


def revise_vocab(findings: list[Finding], ev: Evidence) -> list[Finding]:
    """Head and rename findings lowered where the relations above read the keys otherwise."""
    counted = bool(bias_alone(ev) or joint_alone(ev))
    frontend = bool(other_frontend(ev))
    norms = pooled_norm(ev) is not None
    prompt = bool(prompt_table(ev))
    tags = bool(crf_tags(ev))
    out = []
    for f in findings:
        if tags and f.label == "architecture_variant" and f.facts.get("kind") == "width":
            f = replace(f, confidence=min(f.confidence, CANDIDATE))
        if prompt and f.label in ("head_size_mismatch", "partitioned_checkpoint"):
            f = replace(f, confidence=min(f.confidence, CANDIDATE))
        elif f.label == "head_size_mismatch" and counted:
            f = replace(f, confidence=min(f.confidence, CANDIDATE))
        elif f.label == "head_size_mismatch" and frontend:
            f = replace(f, confidence=min(f.confidence, 0.7))
        elif f.label == "renamed_keys" and norms:
            f = replace(f, confidence=min(f.confidence, CANDIDATE))
        out.append(f)
    return out


def _config(conf: float, mm: list[ShapeMismatch], setting: str) -> Finding:
    """architecture_variant for a setting read off these tensors (words, no code)."""
    return Finding("architecture_variant", conf, frozenset(m.key for m in mm),
                   {"kind": "config", "setting": setting, "examples": [m.key for m in mm]})


# (what finds the table, the reading's confidence, what its rows are read as)
_TABLE_SETTINGS = (
    (joint_alone, 0.7,
     "the transducer's joint output ({layer}) has {c} outputs in the checkpoint and {s} in the model "
     "while the vocabulary's other tables loaded: another decoder variant (TDT durations, "
     "multi-blank) counts outputs beyond the tokens and the blank; a tokenizer of another size "
     "reads the same"),
    (other_frontend, 0.65,
     "{key} indexes {c} symbols in the checkpoint and {s} in the model, an order of magnitude "
     "apart: the model was built for another text frontend or dictionary (a preset's symbol set), "
     "not for a few added tokens"),
    (prompt_table, 0.75,
     "{key} holds {c} virtual tokens in the checkpoint and {s} in the model: the prefix was "
     "trained with another length (pre_seq_len, num_virtual_tokens); build the prefix encoder "
     "with the checkpoint's"),
)


def _table_settings(ev: Evidence) -> list[Finding]:
    """The settings a table's rows are read as: a joint's outputs, a frontend, a prefix length."""
    out = []
    for find, conf, text in _TABLE_SETTINGS:
        if mm := find(ev):
            c, s = _rows(mm[0]) or (0, 0)
            key = mm[0].key
            out.append(_config(conf, mm, text.format(key=key, layer=key.rpartition(".")[0], c=c, s=s)))
    return out


def vocab_findings(ev: Evidence) -> list[Finding]:
    """The findings these relations support (rule order, not ranked)."""
    out = []
    if (m := bias_alone(ev)) is not None:
        c, s = m.checkpoint_shape[0], m.model_shape[0]
        out.append(Finding("model_code_changed", 0.7, frozenset({m.key}),
                           {"missing": 0, "unexpected": 0, "examples_missing": [],
                            "examples_unexpected": [], "bias_only": [m.key, c, s]}))
    out += _table_settings(ev)
    if mm := crf_tags(ev):
        first = ([m for m in mm if not _CRF.search(m.key)] or mm)[0]
        out.append(Finding("head_size_mismatch", 0.85, frozenset(m.key for m in mm),
                           {"keys": [m.key for m in mm], "checkpoint_size": first.checkpoint_shape[0],
                            "model_size": first.model_shape[0], "vocab": False, "padded": False,
                            "levels": False, "crf": True}))
    if (pair := pooled_norm(ev)) is not None:
        ckpt, model = pair
        pooled = "the checkpoint" if ckpt.endswith("fc_norm") else "the model"
        setting = (f"the final norm is {ckpt} in the checkpoint and {model} in the model: {pooled} "
                   "was built with average pooling (timm's global_pool='avg', fc_norm after pooling), "
                   "the other with the class token (norm before pooling)")
        out.append(Finding("architecture_variant", 0.86, frozenset(ev.missing + ev.unexpected),
                           {"kind": "config", "setting": setting,
                            "examples": [*ev.unexpected[:1], *ev.missing[:1]]}))
    return out
