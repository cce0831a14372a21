"""The whole message as other logs and terminals hand it over (#16, round 11).

A Windows traceback, a logging or loguru prefix on every line, a terminal's hard wrap at 80 columns,
a JSON-lines log record, a JSON string inside JSON, and ``print(model.load_state_dict(..., strict=False))``
wrapped or logged: nothing is cut, so each must be diagnosed exactly as the message itself. Every
text is the real ``load_state_dict`` error of real modules (the generated corpus's causes).
"""

from __future__ import annotations

import re

import pytest

from ckpttools.ops.diagnose.diagnosis import DECIDED, diagnose_text
from ckpttools.ops.diagnose.error_text import normalize_text, parse_error_text
from tests.ops.diagnose.gen_models import ARCHS
from tests.ops.diagnose.gen_presentations import detectron2, pasted, printed_result, wrapped
from tests.ops.diagnose.generated_corpus import _causes, _raise

pytestmark = [
    pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor, torch.quantize_per_channel:UserWarning"),
]

# causes whose messages carry long key lists, size mismatches, or both
CAUSES = ("dataparallel_checkpoint", "other_count", "renamed_attribute", "modified_network",
          "vocab_parallel_rank0", "conv1d_weights", "lora_checkpoint", "training_dict")
ARCH = {a.name: a for a in ARCHS}


def _texts(arch: str, cause: str) -> tuple[str, str] | None:
    pair = _causes(ARCH[arch])[cause][1]()
    return None if pair is None else (_raise(*pair), _raise(*pair, strict=False))


def _first(text: str) -> tuple[str | None, float]:
    causes = diagnose_text(text).causes
    return (causes[0].label, causes[0].confidence) if causes else (None, 0.0)


@pytest.mark.parametrize("arch", ["convnet", "tinylm", "detr"])
@pytest.mark.parametrize("cause", CAUSES)
def test_a_whole_message_however_handed_over_is_diagnosed_as_itself(arch: str, cause: str) -> None:
    texts = _texts(arch, cause)
    if texts is None or not texts[0].startswith("RuntimeError"):
        pytest.skip(f"{cause} does not apply to {arch}, or its file loads")
    strict, loose = texts
    want = _first(strict)
    assert want[0] is not None
    for how, shown in pasted(strict):
        assert _first(shown) == want, how
    if "size mismatch" not in strict:  # strict=False returns the lists instead of raising
        want = _first(loose)
        for how, shown in printed_result(loose):
            assert _first(shown) == want, how


def test_a_terminal_wrap_inside_a_shape_is_joined_again() -> None:
    strict, _ = _texts("tinylm", "vocab_parallel_rank0")  # type: ignore[misc]
    shown = wrapped(strict)
    assert "torch.Size(\n[" in shown or "]\n)" in shown or "\n" in shown.split("torch.Size")[1]
    assert parse_error_text(shown).mismatched == parse_error_text(strict).mismatched
    assert len(parse_error_text(strict).mismatched) == 2


def test_lines_of_one_width_that_end_records_are_not_joined() -> None:
    # fvcore groups keys per module, one record a line: equal widths by chance, never a wrap
    from tests.ops.diagnose.gen_models import Detector

    model_arch = ARCH["convnet"]
    model, state = Detector(model_arch.make(), model_arch.head), model_arch.make().state_dict()
    own = model.state_dict()
    text = detectron2([k for k in own if k not in state], [k for k in state if k not in own], [])
    widths = [len(line) for line in text.split("\n")]
    assert widths.count(max(widths)) >= 2  # the coincidence this test is about
    assert normalize_text(text) == text


def test_a_message_escaped_twice_is_read_whole() -> None:
    import json

    strict, _ = _texts("convnet", "modified_network")  # type: ignore[misc]
    twice = json.dumps({"summary": {"error": json.dumps({"message": strict})}})
    assert parse_error_text(twice).unexpected == parse_error_text(strict).unexpected != ()


@pytest.mark.parametrize("arch", ["convnet", "unet", "vit"])
def test_a_header_whose_list_is_unreadable_is_not_a_confident_answer(arch: str) -> None:
    # The modified network's message lists its new modules as unexpected keys and one size
    # mismatch; with the list left out only the mismatch is read, which cannot decide the cause.
    strict, _ = _texts(arch, "modified_network")  # type: ignore[misc]
    cut = re.sub(r'(Unexpected key\(s\) in state_dict: )[^\n]*', r"\1<list omitted>", strict)
    assert cut != strict
    parsed = parse_error_text(cut)
    assert parsed.truncated and not parsed.unexpected and parsed.mismatched
    assert _first(cut)[1] < DECIDED
    assert _first(strict) == ("model_code_changed", _first(strict)[1])


@pytest.mark.parametrize("arch", ["mlp", "tinylm"])
def test_every_presentation_handed_over_again_is_never_confidently_wrong(arch: str) -> None:
    # A cut or other loader's text (mmcv, detectron2, a paste from the key) inside a log record,
    # a Windows traceback, a JSON record or pytest's "E" lines: the same answer as the text itself
    # (a terminal's wrap may cost a prose text its confidence, never make it confidently wrong).
    from tests.ops.diagnose.generated_corpus import generate

    own = {how for how, _ in pasted("x")} | {how for how, _ in printed_result("x")}
    cases = [c for c in generate((ARCH[arch],)) if c.name.rsplit("-", 1)[1] not in own][::2]
    assert len(cases) > 40
    for case in cases:
        want = _first(case.text)
        pytest_lines = "\n".join("E       " + line for line in case.text.split("\n"))
        for how, shown in [*pasted(case.text), ("pytest", pytest_lines)]:
            got = _first(shown)
            assert got == want or how == "terminal_wrapped" and got[1] < DECIDED, (case.name, how)
