"""Two output sizes that are both hidden widths: a projection into another model's width.

Found on the ninth held-out set (``tests/data/diagnose/frozen9``) after its before-tuning score
was recorded: three of its five confident wrong answers were one layer's weight and bias read as
a classifier of another size, where the layer projects into another model's hidden width
(MiniGPT-4's ``llama_proj``, 4096 against 5120 for a 7B or 13B language model; Qwen2-VL's
``visual.merger.mlp.2``, 2048 against 1280). The relation holds for every model:

- hidden widths are set in multiples of 128 (768, 1280, 2048, 4096, 5120: the sizes matrix
  kernels are tiled for), and a layer that writes one has another width when the model it feeds
  has another size;
- class and label counts are what a data set has (10, 80, 81, 751, 1000, 21843, a character set
  of 6857): two counts that are both multiples of 128 are rare, and vocabularies padded to 128
  (32128, 50304) sit in layers with a vocabulary name, which this relation does not read.

So for a layer with no head or vocabulary name whose two output sizes are both multiples of
128, the width of a model it projects into is the first candidate and the head of another size
the second; the text cannot tell them apart, and the decisive files are named by the command.
"""

from __future__ import annotations

__all__ = ["WIDTH_HEAD", "WIDTH_READING", "hidden_width_sizes"]

_TILE = 128  # the multiple hidden widths are set in
_SMALLEST = 256  # below this, a multiple of 128 is as likely a count (128 classes, 256 bins)
WIDTH_READING = 0.65  # the width: first candidate, below the decision threshold
WIDTH_HEAD = 0.55  # the head of another size: second candidate


def hidden_width_sizes(sizes: tuple[int, int]) -> bool:
    """Both output sizes of a layer are hidden widths (multiples of 128, 256 and up).

    Args:
        sizes: the layer's output size in the checkpoint and in the model.

    Returns:
        True when both read as widths; read only for a layer with no head or vocabulary name.
    """
    return sizes[0] != sizes[1] and all(n >= _SMALLEST and n % _TILE == 0 for n in sizes)
