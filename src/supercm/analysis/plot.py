"""Pictures of runs (matplotlib, the optional ``plot`` extra; drawn with the Agg canvas, no display).

* :func:`tsne_figure` — the paper's Figure 4: a 2-D t-SNE of each run's test features,
  coloured by class, runs side by side. The CM head's centroids μ_k are embedded
  *together with* the features (one t-SNE of [h(x_1..x_n); μ_1..μ_K]) so they land
  among the points they summarise, and are drawn as numbered stars. A run trained with
  β = 0 never updates its centroids; it gets none drawn.
* :func:`curves_figure` — learning curves from metrics.jsonl and eval.jsonl: the loss
  terms (CE, L_CM, the base method's loss), the CM energy terms E1..E4, and the
  validation / test accuracy (test is logged only where validation improved).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .runs import LoadedRun, extract_features, read_config, read_jsonl


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _run_title(run_dir: Path) -> str:
    title = run_dir.name
    try:
        title += f"\nβ = {read_config(run_dir).cm.beta:g}"
        s = json.loads((run_dir / "summary.json").read_text())
        title += f", test {100 * s['test_accuracy_at_best_val']:.1f} % (best val)"
    except (OSError, ValueError, KeyError, TypeError):  # TypeError: null (no validation or test split)
        pass
    return title


def embed_with_centroids(features: np.ndarray, centroids: np.ndarray | None, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """One t-SNE of the features and the centroids stacked; returns their 2-D positions apart."""
    from sklearn.manifold import TSNE

    x = features if centroids is None else np.concatenate([features, centroids])
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    y = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(x.astype(np.float32))
    return (y, None) if centroids is None else (y[: len(features)], y[len(features) :])


def tsne_figure(runs: list[LoadedRun], out_path: str | Path, *, max_points: int = 2000, seed: int = 0,
                layer: str = "features") -> Path:
    """Side-by-side t-SNE panels of the runs' test features (at most ``max_points`` each, the same
    seeded subsample for every run of one dataset), coloured by class, centroids as stars."""
    if max_points < 1:
        raise ValueError(f"--max-points must be ≥ 1, got {max_points}")
    fig = _figure(5.2 * len(runs), 5.0)
    what = "test"
    for i, run in enumerate(runs):
        data = run.data
        x, y = data.test_x, data.test_y
        if len(x) == 0 and run.pair is not None:
            # Own folders without data.options.test: no labelled target image; draw the labelled
            # source images instead (coloured by their class), and say so.
            x, y, what = run.pair.source.train_x, run.pair.source.train_y, "source"
        n = len(x)
        if n < 2:
            raise ValueError(f"{run.run_dir}: {n} test images, too few for a t-SNE; draw the learning curves only "
                             f"with --no-tsne")
        keep = np.sort(np.random.default_rng(seed).choice(n, size=min(n, max_points), replace=False))
        feats = extract_features(run.model, x[keep], layer=layer).numpy()
        labels = y[keep].numpy()
        head = run.model.head
        has_centroids = layer == "features" and int(head.num_updates) > 0
        cents = head.centroids.detach().float().numpy() if has_centroids else None
        pts, cpts = embed_with_centroids(feats, cents, seed=seed)
        ax = fig.add_subplot(1, len(runs), i + 1)
        cmap = "tab10" if data.num_classes <= 10 else "tab20"
        ax.scatter(pts[:, 0], pts[:, 1], c=labels, cmap=cmap, s=4, alpha=0.7, linewidths=0,
                   vmin=0, vmax=max(data.num_classes - 1, 1))
        if cpts is not None:
            ax.scatter(cpts[:, 0], cpts[:, 1], marker="*", s=260, c=np.arange(len(cpts)), cmap=cmap,
                       vmin=0, vmax=max(data.num_classes - 1, 1), edgecolors="black", linewidths=1.2, label="centroids μ_k")
            for k, (cx, cy) in enumerate(cpts):
                ax.annotate(str(k), (cx, cy), xytext=(5, 5), textcoords="offset points", fontsize=8, weight="bold")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_title(_run_title(run.run_dir) + ("" if has_centroids or layer != "features" else "\n(β = 0: no centroids)"),
                     fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"t-SNE of {what} {layer} ({min(n, max_points)} points, coloured by class)"
                 + (" — the run has no labelled target test images" if what == "source" else ""), fontsize=10)
    fig.tight_layout()
    out = Path(out_path)
    fig.savefig(out)
    return out


#: (panel title, keys in metrics.jsonl) of the training-curve panels.
LOSS_PANELS = (("losses", ("ce", "cm", "base")), ("CM energy terms", ("e1", "e2", "e3", "e4")))


def _smooth(v: np.ndarray, width: int) -> np.ndarray:
    if width <= 1 or len(v) < width:
        return v
    return np.convolve(v, np.ones(width) / width, mode="valid")


def curves_figure(run_dirs: list[str | Path], out_path: str | Path, *, smooth: int = 10) -> Path:
    """Three panels: loss terms, E1..E4, and validation/test accuracy, one colour per run
    (training scalars as a running mean over ``smooth`` logged points)."""
    fig = _figure(15, 4.2)
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    styles = ("-", "--", ":", "-.")
    for r, run_dir in enumerate(map(Path, run_dirs)):
        color = f"C{r % 10}"
        metrics = read_jsonl(run_dir / "metrics.jsonl")
        for ax, (title, keys) in zip(axes, LOSS_PANELS):
            for j, key in enumerate(keys):
                rows = [(m["iteration"], m[key]) for m in metrics if m.get(key) is not None]
                if not rows:
                    continue
                it, v = map(np.asarray, zip(*rows))
                v = _smooth(v, smooth)
                ax.plot(it[len(it) - len(v):], v, styles[j % 4], color=color, lw=1.2, label=f"{run_dir.name}: {key}")
            ax.set_title(title)
        evals = read_jsonl(run_dir / "eval.jsonl")
        if evals:
            ax = axes[2]
            val = [(e["iteration"], 100 * e["val"]) for e in evals if e.get("val") is not None]
            if val:  # none without a validation split (data.num_validation=0)
                ax.plot(*zip(*val), "-", color=color, lw=1.4, label=f"{run_dir.name}: validation")
            test = [(e["iteration"], 100 * e["test"]) for e in evals if e.get("test") is not None]
            if test:
                ax.plot(*zip(*test), "o", color=color, ms=4, mfc="none", label=f"{run_dir.name}: test (where logged)")
    axes[2].set_title("accuracy %")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    fig.tight_layout()
    out = Path(out_path)
    fig.savefig(out)
    return out
