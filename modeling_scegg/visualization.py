"""PNG plots people look at after training: the paper's Fig. 3 and Fig. 4 plus loss and accuracy.

* `plot_tsne` - Fig. 4: t-SNE of real seen, real unseen and synthetic unseen features, to see
  whether generated unseen features land where the real ones do.
* `plot_attention_maps` - Fig. 3: the global map and the top-k attribute attention maps of one
  image over its region grid, optionally overlaid on the image.
* `plot_training_curves` - logged losses, one row per training stage.
* `plot_per_class_accuracy` - sorted per-class accuracy, where mean per-class accuracy hides
  which classes fail.

Figures are built on `matplotlib.figure.Figure` with an explicit Agg canvas rather than pyplot,
so plotting from training code neither switches the caller's global backend nor leaks open
figures. Every PNG is written to a temporary name in the target folder and renamed into place,
so a crash never leaves a truncated plot behind (and never destroys an older one).
"""
from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from .atomic import atomic_path
from .optional import missing_extra
from .pipeline_scegg import scale_to_own_range, upsample_map

try:
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits
except ImportError as error:
    raise missing_extra(error, "plots", "drawing plots (training's plots/, scegg plot)") from None

__all__ = ["plot_attention_maps", "plot_per_class_accuracy", "plot_training_curves", "plot_tsne"]

_SEEN_COLOR = "0.6"
_MAX_LEGEND_CLASSES = 15
_MAX_TITLE_CHARS = 32
_MAX_BAR_LABELS = 60
_DPI = 100
TSNE_MAX_POINTS = 3000  # a few seconds of t-SNE on one core
TSNE_PCA_COMPONENTS = 50
TSNE_ITERATIONS = 500


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------
def _new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure on the Agg canvas (see the module docstring for why)."""
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png_target(path: str | os.PathLike) -> Path:
    """Refuse other suffixes: a file called plot.pdf holding PNG bytes misleads every viewer."""
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png (these plots are PNG files), got {str(target)!r}")
    return target


def _save_atomic(fig: Figure, path: str | os.PathLike) -> Path:
    """Write `fig` as PNG to a temporary sibling, then rename, so readers never see half a file."""
    target = _png_target(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI)
    return target


def _shorten(text: str, limit: int = _MAX_TITLE_CHARS) -> str:
    """Keep labels on one line; cut names end in an ellipsis so the cut is visible."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _wrap_name(text: str, width: int = 26) -> str:
    """Attribute names like 'has_bill_shape::curved_(up_or_down)' differ in their tail, so
    wrap them over two lines (breaking after '::') before anything is cut."""
    lines = textwrap.wrap(text.replace("::", ":: "), width=width, max_lines=2, placeholder="\u2026")
    return "\n".join(line.replace(":: ", "::") for line in lines)


def _as_2d(name: str, value: np.ndarray, expected: str) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape {expected}, got shape {array.shape}")
    return array


def _as_labels(name: str, value: Sequence[int] | np.ndarray, length: int, num_classes: int, rows_of: str) -> np.ndarray:
    """Labels index `class_names`; a length or range error here is a mix-up upstream, not noise."""
    labels = np.asarray(value)
    if labels.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},) to match the rows of {rows_of}, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class ids, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}) (len(class_names)), got values in "
            f"[{labels.min()}, {labels.max()}]"
        )
    return labels


# --------------------------------------------------------------------------------------------
# t-SNE (Fig. 4)
# --------------------------------------------------------------------------------------------
def _subsample_per_group(groups: np.ndarray, max_per_group: int, rng: np.random.Generator,
                         max_total: int | None = None) -> np.ndarray:
    """Cap every group at `max_per_group` points, lowered until all groups together hold at most
    `max_total` (small groups stay whole): t-SNE's time grows with the points, and no class may
    swamp the plot."""
    names, sizes = np.unique(groups, return_counts=True)
    cap = max_per_group
    if max_total is not None:
        while cap > 1 and np.minimum(sizes, cap).sum() > max_total:
            cap -= 1
    keep = []
    for group in names:
        members = np.flatnonzero(groups == group)
        if members.size > cap:
            members = np.sort(rng.choice(members, size=cap, replace=False))
        keep.append(members)
    return np.concatenate(keep) if keep else np.empty(0, dtype=np.int64)


def _unseen_palette(num: int) -> list:
    """Distinct colours that never include grey, which marks seen classes."""
    if num <= 9:
        base = colormaps["tab10"].colors
        return [c for i, c in enumerate(base) if i != 7][:num]
    if num <= 18:
        base = colormaps["tab20"].colors
        return [c for i, c in enumerate(base) if i not in (14, 15)][:num]
    return [colormaps["turbo"](x) for x in np.linspace(0.05, 0.95, num)]


def _embed_2d(features: np.ndarray, seed: int) -> np.ndarray:
    """t-SNE with a perplexity that is valid for small samples (it must stay below N).

    The features are first projected on their top 50 principal components (sklearn's advice for
    dense data: the neighbour search then works on 50 numbers per point instead of D, and the
    discarded directions are mostly noise), and the optimisation stops after 500 iterations
    (250 exaggerated, 250 free), where sklearn's default runs 1000: past that the map of a few
    thousand points no longer changes in a way the eye sees (benchmarks/bench_plots.py draws both).
    Runs on one OpenMP thread: for the few thousand points this plot is meant for, t-SNE's
    threads mostly spin-wait when anything else (data loaders, another job) holds the cores;
    measured on a busy 2-core machine, 300 points took 22 s with all threads and 1.8 s with one.
    """
    perplexity = min(30.0, max(1.0, (features.shape[0] - 1) / 3.0))
    components = min(TSNE_PCA_COMPONENTS, *features.shape)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed,
                max_iter=TSNE_ITERATIONS)
    with threadpool_limits(limits=1):
        reduced = PCA(n_components=components, random_state=seed).fit_transform(features.astype(np.float32, copy=False))
        return tsne.fit_transform(reduced)


def plot_tsne(
    real_features: np.ndarray,
    real_labels: Sequence[int] | np.ndarray,
    synthetic_features: np.ndarray,
    synthetic_labels: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    unseen_class_ids: Sequence[int],
    path: str | os.PathLike,
    *,
    max_points_per_class: int = 100,
    max_points: int = TSNE_MAX_POINTS,
    seed: int = 0,
    title: str | None = None,
) -> Path:
    """Fig. 4: one t-SNE of real and synthetic features, so their overlap can be judged by eye.

    Real and synthetic features are embedded together (separate embeddings would not share
    coordinates). Dots are real, crosses synthetic; unseen classes get a colour each (a class
    legend is drawn for at most 15 of them), seen classes are grey. Each (real/synthetic, class)
    group is subsampled to `max_points_per_class` with `seed`, which also fixes the t-SNE, and to
    fewer (the same cap for every group) where all groups would hold more than `max_points`.
    Labels are class ids indexing `class_names`. Returns the PNG path.
    """
    real = _as_2d("real_features", real_features, "(N, D)")
    synthetic = np.asarray(synthetic_features)
    if synthetic.ndim != 2 or synthetic.shape[1] != real.shape[1]:
        raise ValueError(
            f"synthetic_features must have shape (M, {real.shape[1]}) (D of real_features), "
            f"got shape {synthetic.shape}"
        )
    num_classes = len(class_names)
    real_y = _as_labels("real_labels", real_labels, real.shape[0], num_classes, "real_features")
    synth_y = _as_labels("synthetic_labels", synthetic_labels, synthetic.shape[0], num_classes, "synthetic_features")
    unseen = _as_labels("unseen_class_ids", unseen_class_ids, len(unseen_class_ids), num_classes, "unseen_class_ids")
    if max_points_per_class < 1 or max_points < 1:
        raise ValueError(f"max_points_per_class and max_points must be >= 1, got {max_points_per_class}, {max_points}")
    if real.shape[1] < 2:
        raise ValueError(f"features need D >= 2 dimensions for a 2-D embedding, got D = {real.shape[1]}")

    features = np.concatenate([real, synthetic]).astype(np.float32)
    labels = np.concatenate([real_y, synth_y])
    is_synthetic = np.concatenate([np.zeros(len(real_y), bool), np.ones(len(synth_y), bool)])
    rng = np.random.default_rng(seed)
    keep = _subsample_per_group(labels * 2 + is_synthetic, max_points_per_class, rng, max_points)
    if keep.size < 3:
        raise ValueError(f"t-SNE needs at least 3 points in total, got {keep.size}")
    if not np.all(np.isfinite(features[keep])):
        raise ValueError("real_features / synthetic_features contain NaN or infinite values")
    xy = _embed_2d(features[keep], seed)
    labels, is_synthetic = labels[keep], is_synthetic[keep]

    fig = _new_figure(9.0, 6.5)
    ax = fig.add_subplot()
    _draw_tsne_points(ax, xy, labels, is_synthetic, set(unseen.tolist()), list(class_names))
    ax.set_title(title or "t-SNE of real and synthetic features")
    ax.set_xticks([])
    ax.set_yticks([])
    return _save_atomic(fig, path)


def _draw_tsne_points(ax, xy: np.ndarray, labels: np.ndarray, is_synthetic: np.ndarray,
                      unseen: set[int], class_names: list[str]) -> None:
    """Seen first (grey, underneath), then unseen in colour; legends sit outside the axes."""
    seen_mask = ~np.isin(labels, list(unseen))
    for synthetic, marker in ((False, "o"), (True, "x")):
        mask = seen_mask & (is_synthetic == synthetic)
        ax.scatter(xy[mask, 0], xy[mask, 1], s=10, marker=marker, c=_SEEN_COLOR, alpha=0.5, linewidths=0.8)
    shown_unseen = [c for c in sorted(unseen) if np.any(labels == c)]
    colours = dict(zip(shown_unseen, _unseen_palette(len(shown_unseen))))
    for cls in shown_unseen:
        for synthetic, marker, size in ((False, "o", 14), (True, "x", 18)):
            mask = (labels == cls) & (is_synthetic == synthetic)
            ax.scatter(xy[mask, 0], xy[mask, 1], s=size, marker=marker, color=colours[cls], alpha=0.8, linewidths=0.9)

    kinds = [
        Line2D([], [], ls="", marker="o", color=_SEEN_COLOR, label="real seen"),
        Line2D([], [], ls="", marker="o", color="k", label="real unseen"),
        Line2D([], [], ls="", marker="x", color="k", label="synthetic unseen"),
    ]
    if np.any(seen_mask & is_synthetic):
        kinds.append(Line2D([], [], ls="", marker="x", color=_SEEN_COLOR, label="synthetic seen"))
    # figure legends at "outside" locations take part in the constrained layout, so none is clipped
    ax.figure.legend(handles=kinds, loc="outside right upper", fontsize=8, title="points")
    if 0 < len(shown_unseen) <= _MAX_LEGEND_CLASSES:
        classes = [Line2D([], [], ls="", marker="s", color=colours[c], label=_shorten(class_names[c]))
                   for c in shown_unseen]
        ax.figure.legend(handles=classes, loc="outside right lower", fontsize=8, title="unseen classes")


# --------------------------------------------------------------------------------------------
# attention maps (Fig. 3)
# --------------------------------------------------------------------------------------------
def _resolve_grid(grid: tuple[int, int] | None, num_regions: int) -> tuple[int, int]:
    """Region grids are square in practice (14x14, 7x7) but only the caller knows otherwise."""
    if grid is None:
        side = math.isqrt(num_regions)
        if side * side != num_regions:
            raise ValueError(
                f"cannot infer a square region grid from R = {num_regions} regions (not a perfect "
                f"square); pass grid=(H, W) with H * W = {num_regions}"
            )
        return side, side
    if len(grid) != 2 or int(grid[0]) * int(grid[1]) != num_regions or min(grid) < 1:
        raise ValueError(f"grid must be (H, W) with H * W = R = {num_regions}, got {tuple(grid)}")
    return int(grid[0]), int(grid[1])


def _as_rgb_image(image: np.ndarray | Image.Image) -> Image.Image:
    """An RGB PIL image; float arrays must be un-normalised [0, 1] pixels, not backbone input."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"image must have shape (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"float image values must lie in [0, 1] (plain pixels, not mean/std-normalised "
                f"backbone input), got values in [{low:.3g}, {high:.3g}]"
            )
        array = np.round(array * 255.0)
    return Image.fromarray(array.astype(np.uint8)).convert("RGB")


def _draw_map(ax, values: np.ndarray, image: Image.Image | None, label: str) -> None:
    """Each map gets its own colour range (`scale_to_own_range`), as the pipeline's overlays do."""
    scaled = scale_to_own_range(values)
    if image is None:
        ax.imshow(scaled, cmap="jet", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(image)
        ax.imshow(upsample_map(scaled, image.size), cmap="jet", vmin=0.0, vmax=1.0, alpha=0.5)
    ax.set_title(label, fontsize=8)
    ax.set_axis_off()


def plot_attention_maps(
    attention: np.ndarray,
    grid: tuple[int, int] | None,
    attribute_names: Sequence[str] | None,
    path: str | os.PathLike,
    *,
    image: np.ndarray | Image.Image | None = None,
    scores: np.ndarray | None = None,
    top_k: int = 8,
    title: str | None = None,
) -> Path:
    """Fig. 3 for one image: its global map and the attention maps of its top-k attributes.

    `attention` is (A, R) for one image (take `outputs.attentions[i]` of the model's (B, A, R)).
    Attributes are ranked by `scores` (A,) when given, else by their attention peak. The global
    panel is the mean over all A attribute maps. `grid` is (H, W) with H * W = R, inferred as a
    square when None. With an image the maps are upsampled bilinearly and overlaid on it.
    Returns the PNG path.
    """
    att = np.asarray(attention, dtype=np.float64)
    if att.ndim == 3:
        raise ValueError(f"attention must be (A, R) for one image, got (B, A, R) = {att.shape}; pass attention[i]")
    att = _as_2d("attention", att, "(A, R)")
    num_attributes, num_regions = att.shape
    if num_attributes == 0 or num_regions == 0:
        raise ValueError(f"attention must have A >= 1 attributes and R >= 1 regions, got shape {att.shape}")
    if not np.all(np.isfinite(att)):
        raise ValueError("attention contains NaN or infinite values")
    height, width = _resolve_grid(grid, num_regions)
    names = _attribute_names(attribute_names, num_attributes)
    ranking, score_label = _rank_attributes(att, scores, num_attributes)
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    picked = ranking[: min(top_k, num_attributes)]
    picture = None if image is None else _as_rgb_image(image)

    panels = [("global (mean of %d)" % num_attributes, att.mean(axis=0))]
    panels += [(f"{_wrap_name(names[a])}\n{score_label} {_score_of(att, scores, a):.3g}", att[a]) for a in picked]
    num_panels = len(panels) + (picture is not None)
    ncols = min(num_panels, 5)
    nrows = math.ceil(num_panels / ncols)
    fig = _new_figure(2.4 * ncols, 2.75 * nrows + 0.4)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(num_panels)]
    if picture is not None:
        axes[0].imshow(picture)
        axes[0].set_title("input", fontsize=8)
        axes[0].set_axis_off()
        axes = axes[1:]
    for ax, (label, values) in zip(axes, panels):
        _draw_map(ax, values.reshape(height, width), picture, label)
    fig.suptitle(title or f"Attribute attention, top {len(picked)} by {score_label} (each map scaled to its own range)",
                 fontsize=10)
    return _save_atomic(fig, path)


def _attribute_names(attribute_names: Sequence[str] | None, num_attributes: int) -> list[str]:
    if attribute_names is None:
        return [f"attribute {i}" for i in range(num_attributes)]
    if len(attribute_names) != num_attributes:
        raise ValueError(
            f"attribute_names must have {num_attributes} entries (A of attention), got {len(attribute_names)}"
        )
    return [str(n) for n in attribute_names]


def _rank_attributes(att: np.ndarray, scores: np.ndarray | None, num_attributes: int) -> tuple[np.ndarray, str]:
    """Highest first; a stable sort keeps ties in attribute order so plots are reproducible."""
    if scores is None:
        return np.argsort(-att.max(axis=1), kind="stable"), "peak"
    values = np.asarray(scores, dtype=np.float64)
    if values.shape != (num_attributes,):
        raise ValueError(f"scores must have shape ({num_attributes},) (A of attention), got shape {values.shape}")
    return np.argsort(-values, kind="stable"), "score"


def _score_of(att: np.ndarray, scores: np.ndarray | None, attribute: int) -> float:
    return float(att[attribute].max() if scores is None else np.asarray(scores)[attribute])


# --------------------------------------------------------------------------------------------
# training curves and per-class accuracy
# --------------------------------------------------------------------------------------------
def _as_series(key: str, points: Sequence[tuple[int, float]]) -> np.ndarray:
    series = np.asarray(points, dtype=np.float64)
    if series.ndim != 2 or series.shape[1] != 2 or series.shape[0] == 0:
        raise ValueError(f"history[{key!r}] must be a non-empty list of (step, value) pairs, got shape {series.shape}")
    return series


def plot_training_curves(
    history: Mapping[str, Sequence[tuple[int, float]]],
    path: str | os.PathLike,
    *,
    title: str | None = None,
) -> Path:
    """Logged losses against step: one row per stage (the key's prefix before "/"), one panel per
    series, because stages have unrelated scales and a shared axis would flatten all but one.
    Returns the PNG path."""
    if not history:
        raise ValueError("history is empty: nothing to plot")
    rows: dict[str, list[tuple[str, np.ndarray]]] = {}
    for key, points in history.items():
        rows.setdefault(key.split("/", 1)[0], []).append((key, _as_series(key, points)))
    ncols = max(len(series) for series in rows.values())
    fig = _new_figure(3.6 * ncols, 2.6 * len(rows) + 0.4)
    for r, series in enumerate(rows.values()):
        for c, (key, values) in enumerate(series):
            ax = fig.add_subplot(len(rows), ncols, r * ncols + c + 1)
            ax.plot(values[:, 0], values[:, 1], lw=1.0, marker="." if len(values) < 30 else None)
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    fig.suptitle(title or "Training curves", fontsize=11)
    return _save_atomic(fig, path)


def _accuracy_table(per_class_accuracy: Mapping | Sequence[float] | np.ndarray,
                    class_names: Sequence[str] | None) -> tuple[list[str], np.ndarray]:
    """Names and accuracies from either a {class id or name: accuracy} mapping or a list aligned
    with `class_names`."""
    if isinstance(per_class_accuracy, Mapping):
        names, values = [], []
        for key, value in per_class_accuracy.items():
            if isinstance(key, (int, np.integer)):
                if class_names is None or not 0 <= key < len(class_names):
                    raise ValueError(f"per_class_accuracy key {key} is not a valid index into class_names")
                key = class_names[key]
            names.append(str(key))
            values.append(value)
        accuracies = np.asarray(values, dtype=np.float64)
    else:
        accuracies = np.asarray(per_class_accuracy, dtype=np.float64)
        if class_names is None or accuracies.shape != (len(class_names),):
            expected = "(len(class_names),)" if class_names is None else f"({len(class_names)},)"
            raise ValueError(
                f"per_class_accuracy as a sequence must have shape {expected} to align with "
                f"class_names, got shape {accuracies.shape}"
            )
        names = [str(n) for n in class_names]
    if accuracies.size == 0:
        raise ValueError("per_class_accuracy is empty: nothing to plot")
    if not np.all((accuracies >= 0.0) & (accuracies <= 1.0)):
        raise ValueError(
            f"per_class_accuracy values must be fractions in [0, 1], got values in "
            f"[{np.nanmin(accuracies):.3g}, {np.nanmax(accuracies):.3g}]"
        )
    return names, accuracies


def plot_per_class_accuracy(
    per_class_accuracy: Mapping[str | int, float] | Sequence[float] | np.ndarray,
    class_names: Sequence[str] | None,
    path: str | os.PathLike,
    *,
    title: str | None = None,
) -> Path:
    """Per-class top-1 accuracy (fractions in [0, 1]) sorted best first, with the mean per-class
    accuracy as a dashed line. Mapping keys are class ids into `class_names` or names
    themselves (then `class_names` may be None); a sequence aligns with `class_names`. Up to 60
    classes are named on horizontal bars; beyond that (CUB, SUN) names would be unreadable and
    the bars are plotted by rank. Returns the PNG path."""
    names, accuracies = _accuracy_table(per_class_accuracy, class_names)
    order = np.argsort(-accuracies, kind="stable")
    mean = float(accuracies.mean())
    if len(names) <= _MAX_BAR_LABELS:
        fig = _new_figure(7.0, 1.2 + 0.22 * len(names))
        ax = fig.add_subplot()
        positions = np.arange(len(names))
        ax.barh(positions, 100 * accuracies[order], color="tab:blue")
        ax.set_yticks(positions, [_shorten(names[i]) for i in order], fontsize=7)
        ax.invert_yaxis()
        ax.axvline(100 * mean, color="tab:red", ls="--", lw=1, label=f"mean {100 * mean:.1f}%")
        ax.set_xlabel("top-1 accuracy (%)")
        ax.set_xlim(0, 100)
    else:
        fig = _new_figure(10.0, 4.5)
        ax = fig.add_subplot()
        ax.bar(np.arange(len(names)), 100 * accuracies[order], width=1.0, color="tab:blue")
        ax.axhline(100 * mean, color="tab:red", ls="--", lw=1, label=f"mean {100 * mean:.1f}%")
        ax.set_xlabel(f"{len(names)} classes, sorted by accuracy")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_xlim(-0.5, len(names) - 0.5)
    ax.legend(loc="lower right" if len(names) <= _MAX_BAR_LABELS else "upper right", fontsize=8)
    ax.set_title(title or "Per-class accuracy")
    return _save_atomic(fig, path)
