"""From files, a PEFT checkpoint diagnosed against the plain model: the printed merge runs and
gives the trained model's outputs. A file inside the adapter's own folder (PEFT's
``save_pretrained``) names that folder itself; a file of adapter weights alone is merged into a
model that holds its base weights, without a plan that loads nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ckpttools.formats.registry import open_checkpoint
from ckpttools.ops.diagnose.diagnosis import diagnose_checkpoint
from ckpttools.ops.diagnose.fixes import SETTING
from tests.ops.diagnose.test_text_fix_snippets import Net, _outputs, _peft_trained, _run, _seeded

pytestmark = [pytest.mark.frameworks,
              pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning",
                                         "ignore::FutureWarning")]


def _top(path: Path, model: torch.nn.Module):
    with open_checkpoint(str(path)) as reader:
        top = diagnose_checkpoint(reader, model).causes[0]
    assert (top.label, top.confidence >= 0.8) == ("adapter_or_quantization", True), top
    return top


def test_peft_state_dict_file_merges_with_the_adapter_folder_set(tmp_path: Path) -> None:
    trained, adapter_dir = _peft_trained(tmp_path, r=4)
    path = tmp_path / "peft_full.pth"
    torch.save(trained.state_dict(), path)  # base_layer weights and lora_A/lora_B
    top = _top(path, _seeded())
    assert SETTING.match(top.fix_code.split("\n")[0])  # no adapter folder beside the file: asked
    scope = _run(top.fix_code, path, {"model": Net()}, ADAPTER_DIR=str(adapter_dir))
    assert type(scope["model"]) is Net
    assert torch.allclose(_outputs(scope["model"]), _outputs(trained), atol=1e-6)


@pytest.mark.parametrize("given", ["folder", "file"])
def test_adapter_folder_names_itself_and_merges_into_the_base(tmp_path: Path, given: str) -> None:
    trained, adapter_dir = _peft_trained(tmp_path, r=4)
    path = adapter_dir if given == "folder" else adapter_dir / "adapter_model.safetensors"
    top = _top(path, _seeded())
    first = top.fix_code.split("\n")[0]
    assert not SETTING.match(first) and repr(str(adapter_dir)) in first, top.fix_code
    assert "load_state_dict" not in top.fix_code  # the file holds nothing the plain model loads
    scope = {"model": _seeded()}  # the base weights the adapter was trained on
    exec(compile(top.fix_code, "<printed diagnose fix>", "exec"), scope)  # as printed
    assert type(scope["model"]) is Net
    assert torch.allclose(_outputs(scope["model"]), _outputs(trained), atol=1e-6)
