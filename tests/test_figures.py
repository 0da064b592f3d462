import struct
import sys

import numpy as np
import pytest

from inspector.errors import ConfigurationError
from inspector.evaluation import expected_calibration_error, reliability_bins
from inspector.figures import plot_confusion_matrix, plot_history, plot_reliability

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    """(width, height) from the IHDR chunk; checks the magic bytes on the way."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def check_png(path, min_bytes=10_000):
    assert path.is_file()
    assert path.stat().st_size > min_bytes
    width, height = png_size(path)
    assert width >= 400 and height >= 400
    return width, height


def test_plot_confusion_matrix_writes_png(tmp_path):
    classes = ["free", "scratch", "dent", "crack", "inclusion_long_name"]
    confusion = np.array(
        [
            [120, 3, 0, 1, 0],
            [4, 80, 2, 0, 1],
            [0, 5, 60, 0, 0],
            [2, 0, 0, 44, 3],
            [0, 0, 0, 0, 0],
        ]
    )
    out = plot_confusion_matrix(confusion, classes, tmp_path / "nested" / "dir" / "cm.png")
    assert out == tmp_path / "nested" / "dir" / "cm.png"
    check_png(out)


def test_plot_confusion_matrix_accepts_lists_and_rejects_bad_shape(tmp_path):
    out = plot_confusion_matrix([[3, 1], [0, 4]], ["ok", "nok"], tmp_path / "cm.png")
    check_png(out)
    with pytest.raises(ConfigurationError):
        plot_confusion_matrix([[3, 1], [0, 4]], ["a", "b", "c"], tmp_path / "bad.png")


def test_plot_reliability_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.34, 1.0, 2000)
    probs = np.stack([conf, (1 - conf) / 2, (1 - conf) / 2], axis=1)
    labels = (rng.uniform(size=2000) >= conf**1.5).astype(np.int64)  # over-confident
    bins = reliability_bins(probs, labels)
    ece = expected_calibration_error(probs, labels)
    out = plot_reliability(bins, ece, tmp_path / "rel" / "reliability.png")
    check_png(out)


def test_plot_reliability_with_empty_bins(tmp_path):
    bins = reliability_bins(np.array([[0.9, 0.1]]), np.array([0]), n_bins=10)
    check_png(plot_reliability(bins, 0.1, tmp_path / "one.png"), min_bytes=5_000)


def test_plot_history_writes_png(tmp_path):
    history = [
        {
            "epoch": e,
            "train_loss": 1.5 / e,
            "val_loss": 1.6 / e + 0.05,
            "val_accuracy": 1 - 0.5 / e,
            "val_macro_f1": 1 - 0.6 / e,
            "lr": 1e-3 * 0.5 ** (e // 3),
        }
        for e in range(1, 13)
    ]
    out = plot_history(history, tmp_path / "h" / "history.png")
    width, height = check_png(out)
    assert width > height  # two panels side by side


def test_plot_history_tolerates_missing_keys(tmp_path):
    history = [{"epoch": 1, "train_loss": 1.0}, {"train_loss": 0.8, "val_accuracy": 0.7}, {}]
    check_png(plot_history(history, tmp_path / "partial.png"), min_bytes=5_000)
    check_png(plot_history([], tmp_path / "empty.png"), min_bytes=5_000)


def test_figures_leave_no_pyplot_state(tmp_path):
    plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b"], tmp_path / "cm.png")
    plot_history([{"epoch": 1, "train_loss": 1.0}], tmp_path / "h.png")
    # drawing never needs pyplot, so it is never imported (no global figures to leak)
    assert (
        "matplotlib.pyplot" not in sys.modules or not sys.modules["matplotlib.pyplot"].get_fignums()
    )


def test_a_sets_history_runs_its_networks_in_turn_along_the_axis(tmp_path):
    from inspector.figures import _series

    rows = [{"member": m, "epoch": e, "val_loss": 1.0 / e} for m in (1, 2) for e in (1, 2, 3)]
    xs, ys = _series(rows, "val_loss")
    # Epochs 1-3 of the second network come after the first's, with a gap in the line.
    assert xs == [1, 2, 3, 3.5, 4, 5, 6]
    assert np.isnan(ys[3]) and int(np.isnan(ys).sum()) == 1
    single = [{"epoch": e, "val_loss": 1.0} for e in (1, 2)]
    assert _series(single, "val_loss")[0] == [1, 2]
    assert plot_history(rows, tmp_path / "h.png").stat().st_size > 0
