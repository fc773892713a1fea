"""Only a checkpoint named by the marker is resumed from; a half-written directory is ignored."""
from __future__ import annotations

import pytest

from megatron_huatuo.training.checkpointing import MARKER, iteration_dir, latest_iteration


def test_unmarked_directory_is_not_resumed(tmp_path):
    iteration_dir(str(tmp_path), 4).mkdir()  # a save killed before the marker was written
    assert latest_iteration(str(tmp_path)) is None
    assert latest_iteration(None) is None


def test_marker_names_the_complete_iteration(tmp_path):
    iteration_dir(str(tmp_path), 2).mkdir()
    iteration_dir(str(tmp_path), 4).mkdir()  # newer but incomplete
    (tmp_path / MARKER).write_text("2\n")
    assert latest_iteration(str(tmp_path)) == 2


def test_bad_marker_names_the_file(tmp_path):
    (tmp_path / MARKER).write_text("two\n")
    with pytest.raises(ValueError, match=MARKER):
        latest_iteration(str(tmp_path))
    (tmp_path / MARKER).write_text("9\n")
    with pytest.raises(FileNotFoundError, match="iter_0000009"):
        latest_iteration(str(tmp_path))
