"""Training loop (``loop.py``), dist_checkpointing save/resume (``checkpointing.py``), stop signals (``signals.py``)."""
