"""transformers' load report pasted without its key list (frozen7's imagen33, #16).

A T5 model built from a tiny config (no download) is saved whole and loaded as its encoder alone:
transformers 4.x reported the decoder and LM head as unused (its wording, over the real key
lists). Pasted as its first sentence only, the report is the expected one, not a failure: a
candidate, with nothing to change.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ckpttools.ops.diagnose.diagnosis import diagnose_text
from tests.ops.diagnose.gen_presentations import transformers4_report
from tests.ops.diagnose.gen_transformers import _v4_lists

pytestmark = pytest.mark.frameworks

_T5 = dict(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
           decoder_start_token_id=0)


def _first_sentence(report: str) -> str:
    """The report as a thread quotes it: its first sentence, up to the list."""
    line = next(ln for ln in report.splitlines() if "not used" in ln)
    return line.split(": [")[0]


def _assert_candidate(text: str) -> None:
    assert ": [" not in text and "UNEXPECTED" not in text, text  # no key list, no table rows
    result = diagnose_text(text)
    top = result.causes[0]
    assert top.label == "new_task_head" and not result.decided, (text, top)
    assert "nothing to change" in top.fix_code


def test_an_encoder_loaded_from_a_whole_t5_in_4x_wording_without_its_list(tmp_path: Path) -> None:
    # transformers 4.x warned so (the thread's 4.19.2); 5.x ignores T5's decoder for the encoder
    from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration

    torch.manual_seed(0)
    whole = T5ForConditionalGeneration(T5Config(**_T5))
    whole.save_pretrained(tmp_path)
    encoder = T5EncoderModel.from_pretrained(tmp_path)
    missing, unexpected, mismatched = _v4_lists(whole, encoder)
    assert unexpected and not missing and not mismatched  # the decoder and LM head, unused
    _assert_candidate(_first_sentence(transformers4_report("T5EncoderModel", "t5-large", missing,
                                                           unexpected, mismatched)))
    # nothing to change indeed: the encoder loaded every weight it has from the whole model
    own = whole.state_dict()
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, own[key]), key


def test_a_newly_initialized_report_without_its_list_is_not_read_as_a_new_head() -> None:
    # 4.x words resized heads and new heads alike up to the list: "newly initialized because the
    # shapes did not match" is a head of another size
    text = ("Some weights of BertForSequenceClassification were not initialized from the model "
            "checkpoint at ./checkpoint-500 and are newly initialized because the shapes did not match")
    assert all(c.label != "new_task_head" for c in diagnose_text(text).causes)
