"""Plots: each writes a real PNG atomically, and bad shapes fail loudly before anything is drawn."""
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from modeling_scegg.visualization import (
    _subsample_per_group,
    plot_attention_maps,
    plot_per_class_accuracy,
    plot_training_curves,
    plot_tsne,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_size: tuple[int, int] = (200, 150)) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1], image.size
    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


@pytest.fixture
def features():
    """Seven classes (odd sizes on purpose), two unseen, D = 13; synthetic features for unseen."""
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=4.0, size=(7, 13))
    real_y = np.repeat(np.arange(7), 9)
    synth_y = np.repeat([2, 5], 11)
    real_x = centres[real_y] + rng.normal(size=(real_y.size, 13))
    synth_x = centres[synth_y] + rng.normal(size=(synth_y.size, 13))
    return real_x, real_y, synth_x, synth_y, [f"class_{i}" for i in range(7)], [2, 5]


def test_tsne_writes_png(features, tmp_path):
    out = plot_tsne(*features, tmp_path / "tsne.png", title="tiny")
    assert out == tmp_path / "tsne.png"
    assert_png(out)


def test_tsne_subsamples_and_is_reproducible(features, tmp_path):
    first = plot_tsne(*features, tmp_path / "a.png", max_points_per_class=4, seed=3)
    second = plot_tsne(*features, tmp_path / "b.png", max_points_per_class=4, seed=3)
    assert first.read_bytes() == second.read_bytes()


def test_tsne_point_budget_caps_every_group_alike():
    """The largest common cap that fits the budget; groups smaller than it stay whole."""
    groups = np.repeat([0, 1, 2], [5, 50, 50])
    keep = _subsample_per_group(groups, 100, np.random.default_rng(0), max_total=40)
    assert np.bincount(groups[keep]).tolist() == [5, 17, 17]  # a cap of 18 would keep 41
    assert len(set(keep.tolist())) == keep.size
    assert np.bincount(groups[_subsample_per_group(groups, 10, np.random.default_rng(0))]).tolist() == [5, 10, 10]


def test_tsne_with_a_point_budget(features, tmp_path):
    assert_png(plot_tsne(*features, tmp_path / "budget.png", max_points=20))
    with pytest.raises(ValueError, match="max_points_per_class and max_points must be >= 1"):
        plot_tsne(*features, tmp_path / "none.png", max_points=0)


def test_tsne_rejects_length_mismatches(features, tmp_path):
    real_x, real_y, synth_x, synth_y, names, unseen = features
    with pytest.raises(ValueError, match=r"real_labels must have shape \(63,\).*got shape \(62,\)"):
        plot_tsne(real_x, real_y[:-1], synth_x, synth_y, names, unseen, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"synthetic_labels must have shape \(22,\).*got shape \(23,\)"):
        plot_tsne(real_x, real_y, synth_x, np.append(synth_y, 2), names, unseen, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"synthetic_features must have shape \(M, 13\).*got shape \(22, 12\)"):
        plot_tsne(real_x, real_y, synth_x[:, :12], synth_y, names, unseen, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"real_features must have shape \(N, D\), got shape \(63,\)"):
        plot_tsne(real_x[:, 0], real_y, synth_x, synth_y, names, unseen, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"real_labels must lie in \[0, 6\)"):
        plot_tsne(real_x, real_y, synth_x, synth_y, names[:6], unseen, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_attention_maps_infer_square_grid_and_overlay_image(tmp_path):
    rng = np.random.default_rng(0)
    attention = rng.dirichlet(np.ones(49), size=11)  # A = 11 attributes on a 7 x 7 grid
    names = [f"has_part_{i}::some_rather_long_value_name_{i}" for i in range(11)]
    image = rng.integers(0, 256, size=(90, 120, 3), dtype=np.uint8)
    out = plot_attention_maps(attention, None, names, tmp_path / "att.png", image=image, top_k=3)
    assert_png(out)
    out = plot_attention_maps(attention, None, None, tmp_path / "plain.png", image=Image.fromarray(image), top_k=20)
    assert_png(out)


def test_attention_maps_with_rectangular_grid_and_scores(tmp_path):
    attention = np.full((5, 12), 1 / 12)  # uniform maps (the LEN at initialisation) must not divide by 0
    out = plot_attention_maps(attention, (3, 4), None, tmp_path / "rect.png", scores=np.arange(5.0))
    assert_png(out)


def test_attention_maps_grid_errors(tmp_path):
    attention = np.ones((4, 12)) / 12
    with pytest.raises(ValueError, match=r"R = 12 regions.*not a perfect square"):
        plot_attention_maps(attention, None, None, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"H \* W = R = 12, got \(5, 3\)"):
        plot_attention_maps(attention, (5, 3), None, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\(B, A, R\) = \(2, 4, 12\)"):
        plot_attention_maps(np.stack([attention, attention]), (3, 4), None, tmp_path / "x.png")
    with pytest.raises(ValueError, match="attribute_names must have 4 entries.*got 3"):
        plot_attention_maps(attention, (3, 4), ["a", "b", "c"], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"scores must have shape \(4,\).*got shape \(5,\)"):
        plot_attention_maps(attention, (3, 4), None, tmp_path / "x.png", scores=np.ones(5))
    with pytest.raises(ValueError, match=r"float image values must lie in \[0, 1\]"):
        plot_attention_maps(attention, (3, 4), None, tmp_path / "x.png", image=np.full((8, 8, 3), -1.5))
    assert list(tmp_path.iterdir()) == []


def test_training_curves_one_row_per_stage(tmp_path):
    history = {
        "stage1/loss": [(step, 1.0 / (step + 1)) for step in range(30)],
        "stage3/critic": [(0, -1.0), (5, -0.4), (10, -0.2)],
        "stage3/generator": [(0, 2.0), (5, 1.0), (10, 0.7)],
        "classifier/loss": [(1, 0.9)],
    }
    assert_png(plot_training_curves(history, tmp_path / "curves.png"))
    with pytest.raises(ValueError, match=r"history\['stage2/loss'\] must be a non-empty list of \(step, value\)"):
        plot_training_curves({"stage2/loss": []}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="history is empty"):
        plot_training_curves({}, tmp_path / "bad.png")


def test_per_class_accuracy_accepts_mapping_and_sequence(tmp_path):
    names = [f"bird_{i}" for i in range(5)]
    assert_png(plot_per_class_accuracy({0: 0.5, 3: 0.25, 4: 1.0}, names, tmp_path / "ids.png"))
    assert_png(plot_per_class_accuracy({"zebra": 0.1, "okapi": 0.9}, None, tmp_path / "names.png"))
    assert_png(plot_per_class_accuracy(np.linspace(0, 1, 5), names, tmp_path / "seq.png"))
    many = np.random.default_rng(0).random(75)  # beyond the named-bar limit: bars by rank
    assert_png(plot_per_class_accuracy(many, [f"c{i}" for i in range(75)], tmp_path / "many.png"))
    with pytest.raises(ValueError, match=r"must have shape \(5,\).*got shape \(4,\)"):
        plot_per_class_accuracy([0.1, 0.2, 0.3, 0.4], names, tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"fractions in \[0, 1\], got values in \[12, 80\]"):
        plot_per_class_accuracy([12.0, 80.0, 50.0, 40.0, 30.0], names, tmp_path / "bad.png")


def test_non_png_suffix_is_refused(tmp_path):
    with pytest.raises(ValueError, match="must end in .png"):
        plot_training_curves({"a/loss": [(0, 1.0)]}, tmp_path / "curves.pdf")


def test_failed_save_leaves_no_file_and_keeps_the_old_plot(tmp_path, monkeypatch):
    """A crash half-way through savefig must leave neither a partial plot nor a temporary file,
    and must not clobber the plot an earlier run wrote."""
    history = {"stage1/loss": [(0, 1.0), (1, 0.5)]}
    fresh = tmp_path / "fresh.png"
    existing = tmp_path / "existing.png"
    existing.write_bytes(b"previous plot")

    def failing_savefig(self, fname, **kwargs):
        Path(fname).write_bytes(PNG_SIGNATURE + b"truncated")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", failing_savefig)
    for target in (fresh, existing):
        with pytest.raises(OSError, match="disk full"):
            plot_training_curves(history, target)
    assert not fresh.exists()
    assert existing.read_bytes() == b"previous plot"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.png"]
