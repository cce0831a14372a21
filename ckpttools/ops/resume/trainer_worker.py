"""The fresh process of a trainer resume: build the recipe's trainer on an empty folder and resume
from CKPT through the framework's own path.

``python -m ckpttools.ops.resume.trainer_worker RECIPE FRAMEWORK CKPT OUTPUT_DIR ERROR_FILE``;
on failure the whole error message (every line) goes to ERROR_FILE and the exit code is 3.
"""

from __future__ import annotations

import sys
import traceback


def resume(recipe: str, framework: str, checkpoint: str, output_dir: str) -> None:
    """Build the trainer and resume; what the framework writes lands in ``output_dir``."""
    from ckpttools.ops.resume.recipe import _import

    module = _import(recipe)
    trainer = module.build_trainer(output_dir)
    if framework == "hf-trainer":
        trainer.train(resume_from_checkpoint=checkpoint)
        return
    datamodule = module.build_datamodule() if hasattr(module, "build_datamodule") else None
    trainer.fit(module.build_module(), datamodule=datamodule, ckpt_path=checkpoint)


def main(argv: list[str]) -> int:
    recipe, framework, checkpoint, output_dir, error_file = argv
    try:
        resume(recipe, framework, checkpoint, output_dir)
    except BaseException as e:  # noqa: BLE001 - any failure of the recipe is reported whole
        traceback.print_exc()
        with open(error_file, "w", encoding="utf-8") as f:
            f.write(f"{type(e).__name__}: {e}")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
