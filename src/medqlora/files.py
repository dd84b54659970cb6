"""The names of the files a run directory holds (runs.py reads and writes them), importable without Lightning."""

METRICS_FILE = "metrics.csv"  # CSVLogger's: losses, accuracy, lr, memory per step
CONFIG_FILE = "config.yaml"  # LightningCLI's: every resolved value
MEMORY_FILE = "memory.json"  # PeakMemory's: peak memory, its split, wall time
DATA_CARD = "data_card"  # the data module's: data_card.json and data_card.md
PROGRESS_FILE = "training_state.json"  # in an adapter directory: optimizer step N of M when it was written
PREDICTIONS_FILE = "predictions.jsonl"  # `medqlora predict`'s: one line per row of the split it scores
