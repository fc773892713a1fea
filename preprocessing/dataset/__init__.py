"""Dataset preparation: plain documents -> Megatron .bin/.idx (``tokenize``); pairs + SFT -> the one-stage
directory with loss masks and the saved priority order (``build``); ``inspect``. See ``docs/dataset.md``."""
