"""The JSON report of ``inspect`` encodes tensor records itself; it must say what the generic
encoder would say, for every key a real file can hold."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from ckpttools.formats.registry import open_checkpoint
from ckpttools.ops.inspect import inspect_checkpoint, tensor_dict
from ckpttools.render import to_json
from ckpttools.render.inspect import render_inspect, tensor_json

# keys that a naive encoder gets wrong: quotes, backslashes, control characters, non-ASCII,
# and the record separator itself
AWKWARD_KEYS = ['plain.weight', 'quote".bias', 'back\\slash', 'tab\tnew\nline', 'ünï.çødé',
                'emoji.🙂', '}, {"key": "x"', '\x00nul', '']


def test_tensor_records_match_the_generic_encoder(tmp_path):
    state = {k: torch.zeros(2, 3, dtype=torch.float16) for k in AWKWARD_KEYS if k}
    state["scalar"] = torch.tensor(1.5)
    state["empty"] = torch.zeros(0, 4, dtype=torch.int64)
    path = tmp_path / "awkward.safetensors"
    save_file(state, str(path))
    torch.save(state, tmp_path / "awkward.pth")
    for file in (path, tmp_path / "awkward.pth"):
        with open_checkpoint(str(file)) as reader:
            result = inspect_checkpoint(reader)
        for t in result.tensors:
            assert tensor_json(t) == json.dumps(tensor_dict(t), sort_keys=True, ensure_ascii=False)
        report = render_inspect(result, "json")
        assert report == to_json(result.to_dict())
        assert json.loads(report)["tensors"] == [tensor_dict(t) for t in result.tensors]


def test_no_tensors_is_an_empty_list(tmp_path):
    torch.save({"epoch": 3}, tmp_path / "meta.pth")
    with open_checkpoint(str(tmp_path / "meta.pth")) as reader:
        result = inspect_checkpoint(reader)
    assert json.loads(render_inspect(result, "json"))["tensors"] == []
    assert render_inspect(result, "json") == to_json(result.to_dict())
