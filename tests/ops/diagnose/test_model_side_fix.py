"""From files, layers saved reparametrized (spectral_norm, weight_norm, old and new forms) or
quantized (quantize_dynamic) into the plain model: the cause's fix gives the model's layers the
same form and loads every weight, proven on the model before it is shown. The plan alone drops
those weights; the fix runs as printed and the loaded model computes what the saved one did."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.nn.utils import parametrizations

from ckpttools.cli.main import cli

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning",
                                        "ignore::FutureWarning")


class Plain(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _layer(form: Callable[[nn.Module], nn.Module]) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        model = Plain()
        model.fc1 = form(model.fc1)  # type: ignore[assignment]
        return model
    return make


def _quantized() -> nn.Module:
    return torch.ao.quantization.quantize_dynamic(Plain(), {nn.Linear}, dtype=torch.qint8)


SAVED = {
    "spectral_norm": _layer(torch.nn.utils.spectral_norm),
    "weight_norm": _layer(torch.nn.utils.weight_norm),
    "parametrizations.spectral_norm": _layer(parametrizations.spectral_norm),
    "parametrizations.weight_norm": _layer(parametrizations.weight_norm),
    "quantize_dynamic": _quantized,
}


def _diagnose(path: Path, *args: str) -> dict:
    r = CliRunner().invoke(cli, ["diagnose", "--checkpoint", str(path), "--model",
                                 f"{__file__}:Plain", *args, "--format", "json"])
    return json.loads(r.stdout)


@pytest.mark.parametrize("plain_dict", [False, True], ids=["state_dict", "plain_dict"])
@pytest.mark.parametrize("form", sorted(SAVED))
def test_layers_saved_in_another_form_keep_their_weights(tmp_path: Path, form: str,
                                                         plain_dict: bool) -> None:
    """Saved as ``state_dict()`` returns it, and as a plain dict (which drops the format versions
    that quantized layers read)."""
    torch.manual_seed(0)
    saved = SAVED[form]().eval()
    x = torch.randn(3, 8)
    with torch.no_grad():
        saved(x)  # a forward pass, as training leaves the power-iteration state
        expected = saved(x)
    path = tmp_path / "saved.pth"
    torch.save(dict(saved.state_dict()) if plain_dict else saved.state_dict(), path)
    data = _diagnose(path)
    cause = data["causes"][0]
    assert cause["confidence"] >= 0.8 and cause["fix"]["command"] is None
    assert data["plan"]["left_initialised"]  # the plan alone leaves those weights initialised
    assert cause["fix"]["code"] != data["plan"]["python"]
    scope = {"model": Plain().eval()}
    exec(cause["fix"]["code"], scope)  # as printed: a strict load
    with torch.no_grad():
        torch.testing.assert_close(scope["model"](x), expected)


def test_unproven_form_keeps_the_plan(tmp_path: Path) -> None:
    """A spectral-normed layer of another width: the same change does not give the checkpoint's
    shapes, so the fix shown is the plan (which says what it leaves initialised)."""
    saved = Plain(width=10)
    saved.fc1 = torch.nn.utils.spectral_norm(saved.fc1)
    path = tmp_path / "saved.pth"
    torch.save(saved.state_dict(), path)
    data = _diagnose(path)
    assert all(c["fix"]["code"] == data["plan"]["python"] for c in data["causes"])


def test_unknown_parametrization_gets_no_model_change(tmp_path: Path) -> None:
    """parametrizations.weight.original alone (orthogonal, or a user's own): which one to apply
    is not in the keys."""
    saved = _layer(parametrizations.orthogonal)()
    path = tmp_path / "saved.pth"
    torch.save(saved.state_dict(), path)
    data = _diagnose(path)
    assert data["causes"] and all(c["fix"]["code"] == data["plan"]["python"]
                                  for c in data["causes"])
