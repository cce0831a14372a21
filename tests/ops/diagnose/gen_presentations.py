"""The same load failure as other loaders print it (PyTorch <= 0.3, mmcv/mmengine, detectron2/fvcore,
transformers 4.x) or as a reporter tells it in a sentence.

Each function takes the real model and the real state passed to it, computes the key lists the
way that loader does (missing, unexpected, shapes that differ) and formats them with that
loader's own message strings. They complement :func:`generated_corpus.presentations`, which
varies how PyTorch's current message was pasted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from torch import nn


def _lists(model: nn.Module, state: Any) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in own
                  if k in state and hasattr(state[k], "shape") and state[k].shape != own[k].shape]
    return missing, unexpected, mismatched


def _size(shape: tuple) -> str:
    return f"torch.Size([{', '.join(map(str, shape))}])"


def pytorch03(missing: list[str], unexpected: list[str], mismatched: list) -> str:
    """``Module.load_state_dict`` of PyTorch <= 0.3: it stops at the first problem it meets."""
    if unexpected:
        return "KeyError: " + str(KeyError('unexpected key "%s" in state_dict' % unexpected[0]))
    if mismatched:
        key, ckpt, model = mismatched[0]
        return (f"RuntimeError: While copying the parameter named {key}, whose dimensions in the "
                f"model are {_size(model)} and whose dimensions in the checkpoint are {_size(ckpt)}.")
    return "KeyError: " + str(KeyError('missing keys in state_dict: "%s"' % set(missing)))


def mmcv(missing: list[str], unexpected: list[str], mismatched: list) -> str:
    """mmcv/mmengine ``load_state_dict``: torch's size lines, then its own key lists."""
    msgs = [f"size mismatch for {k}: copying a param with shape {_size(c)} from checkpoint, the "
            f"shape in current model is {_size(m)}." for k, c, m in mismatched]
    if unexpected:
        msgs.append(f"unexpected key in source state_dict: {', '.join(unexpected)}\n")
    missing = [k for k in missing if "num_batches_tracked" not in k]  # mmcv ignores these
    if missing:
        msgs.append(f"missing keys in source state_dict: {', '.join(missing)}\n")
    return "\n".join(["The model and loaded state dict do not match exactly\n"] + msgs) if msgs else ""


def _grouped(keys: list[str]) -> list[str]:
    """fvcore's ``_group_checkpoint_keys``: ``prefix.{bias, weight}`` per module."""
    groups: dict[str, list[str]] = {}
    for k in keys:
        # fvcore groups a key without a dot under itself, with no leaves: ``cls_token`` alone
        head, _, leaf = k.rpartition(".") if "." in k else (k, "", "")
        groups.setdefault(head, []).extend([leaf] if leaf else [])
    return [f"{h}.{{{', '.join(sorted(v))}}}" if len(v) > 1 else f"{h}.{v[0]}" if v else h
            for h, v in groups.items()]


def detectron2(missing: list[str], unexpected: list[str], mismatched: list, old: bool = False) -> str:
    """fvcore's ``Checkpointer``: skipped shapes, then missing and unused keys, grouped by module.

    ``old``: the wording of fvcore before 2020 ("Unable to load ... in the model!").
    """
    if unexpected and all(k.startswith("module.") for k in unexpected) and not mismatched:
        return ""  # fvcore strips a leading "module." itself: this checkpoint would load
    lines = [f"Unable to load '{k}' to the model due to incompatible shapes: {c} in the checkpoint "
             f"but {m} in the model!" if old else
             f"Skip loading parameter '{k}' to the model due to incompatible shapes: {c} in the "
             f"checkpoint but {m} in the model! You might want to double check if this is expected."
             for k, c, m in mismatched]
    missing = missing + [k for k, _, _ in mismatched]  # skipped tensors stay uninitialised
    if missing:
        lines += ["Some model parameters or buffers are not found in the checkpoint:"] + _grouped(missing)
    if unexpected:
        lines += ["The checkpoint state_dict contains keys that are not used by the model:"]
        lines += [f"  {g}" for g in _grouped(unexpected)]
    return "\n".join(lines)


def prose(missing: list[str], unexpected: list[str], mismatched: list, keys_first: bool = False) -> str:
    """The failure told in a sentence with two example keys per side, as people write it."""
    m, u = ", ".join(f"`{k}`" for k in missing[:2]), ", ".join(f"`{k}`" for k in unexpected[:2])
    out = []
    if missing and unexpected:
        out.append(f"When I load the checkpoint, keys like {m} are missing and keys like {u} are "
                   "unexpected." if keys_first else
                   f"When I load the checkpoint I get missing keys like {m} and unexpected keys like {u}.")
    elif missing or unexpected:
        out.append(f"Loading the weights says these keys are {'missing' if missing else 'unexpected'}: "
                   f"{m or u}.")
    if mismatched:
        k, c, s = mismatched[0]
        out.append(f"It also says size mismatch for {k}: my model has {_size(s)} but the checkpoint "
                   f"has {_size(c)}." if keys_first else
                   f"It also says size mismatch for {k}: the checkpoint has {_size(c)} and the model "
                   f"{_size(s)}.")
    return " ".join(out)


def megatron_core(mismatched: list) -> str:
    """Megatron-Core's distributed checkpoint load (NeMo, Megatron-LM): it stops at the first
    tensor whose global shape differs, printing the shapes as tuples."""
    key, ckpt, model = mismatched[0]
    return (f"megatron.core.dist_checkpointing.core.CheckpointingException: Global shape mismatch for "
            f"loaded ({ckpt}) and expected ({model}) tensor for key {key}")


def other_loaders(model: nn.Module, state: Any) -> Iterator[tuple[str, str, bool]]:
    """(name, text, decidable) for each loader format that can show this failure."""
    if not isinstance(state, dict) or any(isinstance(v, dict) for v in state.values()):
        return  # these loaders read flat state_dicts; a training dict fails before any key list
    lists = _lists(model, state)
    if not any(lists):
        return
    yield "pytorch03", pytorch03(*lists), False  # one key or one shape: the relation is not shown
    yield "prose", prose(*lists), False  # two keys per side: examples, not the relation
    yield "prose_keys_first", prose(*lists, keys_first=True), False
    if lists[2]:
        yield "megatron_core", megatron_core(lists[2]), False  # the first shape only
    for name, text in (("mmcv", mmcv(*lists)), ("detectron2", detectron2(*lists)),
                       ("detectron2_2019", detectron2(*lists, old=True) if lists[2] else "")):
        if text:
            yield name, text, True


def transformers4_report(cls: str, path: str, missing: list[str], unexpected: list[str],
                         mismatched: list) -> str:
    """transformers 4.x ``from_pretrained`` warnings (``_load_pretrained_model``), as logged."""
    out = []
    if unexpected:
        out.append(
            f"Some weights of the model checkpoint at {path} were not used when initializing {cls}: "
            f"{unexpected}\n- This IS expected if you are initializing {cls} from the checkpoint of a "
            "model trained on another task or with another architecture (e.g. initializing a "
            "BertForSequenceClassification model from a BertForPreTraining model).\n- This IS NOT "
            f"expected if you are initializing {cls} from the checkpoint of a model that you expect "
            "to be exactly identical (initializing a BertForSequenceClassification model from a "
            "BertForSequenceClassification model).")
    if missing:
        out.append(f"Some weights of {cls} were not initialized from the model checkpoint at {path} "
                   f"and are newly initialized: {missing}\nYou should probably TRAIN this model on a "
                   "down-stream task to be able to use it for predictions and inference.")
    if mismatched:
        lines = "\n".join(f"- {k}: found shape {_size(c)} in the checkpoint and {_size(m)} in the "
                          "model instantiated" for k, c, m in mismatched)
        out.append(f"Some weights of {cls} were not initialized from the model checkpoint at {path} "
                   f"and are newly initialized because the shapes did not match:\n{lines}\nYou should "
                   "probably TRAIN this model on a down-stream task to be able to use it for "
                   "predictions and inference.")
    return "\n".join(out)


_WINDOWS_TRACE = ('Traceback (most recent call last):\r\n  File "C:\\Users\\dev\\project\\train.py", line 88, '
                  'in <module>\r\n    model.load_state_dict(checkpoint)\r\n  File "C:\\Users\\dev\\miniconda3\\'
                  'envs\\torch\\lib\\site-packages\\torch\\nn\\modules\\module.py", line 2593, in '
                  'load_state_dict\r\n    raise RuntimeError(\r\n')


def wrapped(text: str, width: int = 80) -> str:
    """Hard-wrapped as a terminal of ``width`` columns copies it: keys broken mid-name."""
    return "\n".join("\n".join(line[i:i + width] for i in range(0, len(line), width)) or line
                     for line in text.split("\n"))


def pasted(text: str) -> Iterator[tuple[str, str]]:
    """(name, text): the whole message as other logs and terminals hand it over; nothing is cut,
    so each must be diagnosed as the message itself is."""
    yield "windows_traceback", _WINDOWS_TRACE + text.replace("\n", "\r\n")
    yield "logging_prefix", "\n".join(f"2026-01-05 12:00:{i % 60:02d},{i * 37 % 1000:03d} - train - ERROR - "
                                      f"{line}" for i, line in enumerate(text.split("\n")))
    yield "loguru_prefix", "\n".join(f"2026-01-05 12:00:01.234 | ERROR    | __main__:main:42 - {line}"
                                     for line in text.split("\n"))
    yield "terminal_wrapped", wrapped(text)
    # a JSON-lines log (Lightning's or W&B's structured output): one record holds the message
    yield "jsonl_record", ('{"level": "INFO", "message": "Restoring states from the checkpoint path"}\n'
                           + json.dumps({"level": "ERROR", "logger": "lightning.pytorch", "message": text}))
    # a run summary that stores the error record as a JSON string: escaped twice
    yield "json_in_json", json.dumps({"summary": {"error": json.dumps({"message": text})}})


def printed_result(repr_text: str) -> Iterator[tuple[str, str]]:
    """(name, text): what ``print(model.load_state_dict(sd, strict=False))`` shows,
    ``_IncompatibleKeys(missing_keys=[...], unexpected_keys=[...])``, as pasted."""
    yield "incompatible_keys", repr_text
    yield "incompatible_keys_wrapped", wrapped(repr_text)
    yield "incompatible_keys_log", "\n".join(f"[2026-01-05 12:00:00] INFO {line}"
                                             for line in ("loaded:\n" + repr_text).split("\n"))
