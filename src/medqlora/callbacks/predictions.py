"""`medqlora predict`'s output: one JSON line per row of the split it scores, in the run directory.

Lightning's own `BasePredictionWriter`, writing each batch's rows as they come (nothing held in memory) to
`predictions.jsonl` (`predictions-rank<N>.jsonl` on rank N > 0 of a multi-GPU run).
"""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from medqlora.files import PREDICTIONS_FILE


class PredictionsJSONL(BasePredictionWriter):
    """Writes `QLoRAModule.predict_step`'s rows (row_id, supervised tokens, accuracy, prediction, target) as JSON
    lines into the run directory, and says where when done."""

    def __init__(self):
        super().__init__(write_interval="batch")
        self.path: Path | None = None
        self.rows = 0

    def on_predict_start(self, trainer, pl_module) -> None:
        directory = Path(trainer.log_dir or trainer.default_root_dir)
        directory.mkdir(parents=True, exist_ok=True)
        name = PREDICTIONS_FILE if trainer.global_rank == 0 else f"predictions-rank{trainer.global_rank}.jsonl"
        self.path, self.rows = directory / name, 0
        self.path.write_text("")

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        with open(self.path, "a", encoding="utf-8") as f:
            for row in prediction:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.rows += len(prediction)

    def on_predict_end(self, trainer, pl_module) -> None:
        rank_zero_info(f"medqlora: predictions for {self.rows} rows written to {self.path}")
