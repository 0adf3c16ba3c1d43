"""Writes one YAML config per paper setting (configs/paper/) and the CPU-scale ones (configs/cpu/).

    python configs/generate.py

Where the values come from:

- *paper*: SPEC §5, the SuperCM paper's protocol (Oliver et al. 2018): WRN-28-2 (WRN-28-8 for
  CIFAR-100), Adam, batch 50 + 50, 500k iterations, lr × 0.2 at 400k, ramp-up over 200k,
  validation 5000 (7326 for SVHN), weight-EMA 0.99, augmentation drawn once per batch
  (``data.augment_draw: batch``). The CPU-scale configs keep per-image draws (the default).
- *authors*: the authors' released code (``Durgesh93/SuperCM``, commit 192cb88,
  ``lib/config/{none,pl,vat,pi,mt}/config_*.py``), which stores γ (base weight), β and lr as
  base-10 logarithms; :data:`AUTHORS` below copies those logarithms, for **both** arms (with and
  without SuperCM), per dataset, method and, where they differ, label budget. Also theirs:
  Pseudo-Label's and VAT's forms (``variant: authors``: a 10×one-hot/soft target on a second
  pass; KL(p(x + r_adv) ‖ p(x))), the CE baseline's batch of 100 labeled samples and no
  unlabeled ones, BatchNorm momentum 0.1 in the WRN (their BatchNorm drops the 1e-3 it is given).
- *scaled*: the authors average cross-entropy over the whole joined batch with the unlabeled
  half ignored, which halves CE, and every base loss the same way (``(loss * mask).mean()``),
  which halves it too, while L_CM is normalised by the whole batch. In this project's form
  (CE over the labeled samples, L_base over the unlabeled ones) their
  ``CE/2 + β·L_CM + γ·L_base/2`` is ½·(CE + 2β·L_CM + γ·L_base): Adam's step does not change
  when the whole loss is multiplied by a constant, so **β is doubled and δ = γ as given**.
  (The CE baseline, 100 labeled samples and no unlabeled ones, is not halved.)
- *ours*: VAT's ξ = 1e-3 instead of 1e-6 (in float32 a 1e-6 probe returns a noise direction:
  see ``supercm/methods/vat.py``); settings the authors' code has no config for (CIFAR-10 with
  40/250/1000/2000 labels for Pseudo-Label, Π-Model and Mean Teacher: their 600-label values;
  VAT with 40 labels: their 250–2000-label values; CIFAR-100 for Pseudo-Label, Π-Model and Mean
  Teacher: CIFAR-10's 600-label values); everything at CPU scale.
"""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
METHODS = ("supervised", "pseudo_label", "vat", "pi_model", "mean_teacher")

# The authors' lib/config values, as the base-10 logarithms they store (None: the weight is 0).
# (dataset, method) -> {label budget or "*": {"base": (log γ, log lr), "cm": (log γ, log β, log lr)}}
AUTHORS: dict[tuple[str, str], dict] = {
    ("mnist", "supervised"): {"*": {"base": (None, -2.86), "cm": (None, -0.73, -2.86)}},
    ("svhn", "supervised"): {"*": {"base": (None, -3), "cm": (None, -0.73, -3)}},
    ("cifar10", "supervised"): {"*": {"base": (None, -3.5228), "cm": (None, -0.73, -3.5228)}},
    ("cifar100", "supervised"): {"*": {"base": (None, -3), "cm": (None, -1.8, -3)}},
    ("mnist", "pseudo_label"): {"*": {"base": (-0.73, -3), "cm": (-0.73, 0.48, -3)}},
    ("svhn", "pseudo_label"): {"*": {"base": (-0.73, -3), "cm": (-0.73, 0.48, -3)}},
    ("cifar10", "pseudo_label"): {
        600: {"base": (-0.8751, -2.938), "cm": (-0.7332, 0.4827, -3.5228)},
        4000: {"base": (-0.8751, -3.5228), "cm": (-0.7332, 0.4827, -3.5228)},
    },
    ("mnist", "vat"): {"*": {"base": (-0.4075, -3), "cm": (-0.4075, -0.20, -3)}},
    ("svhn", "vat"): {"*": {"base": (-0.4075, -3), "cm": (-0.4075, -0.20, -3)}},
    ("cifar10", "vat"): {
        250: {"base": (-0.4075, -3.445), "cm": (0.75, -0.20, -3.445)},
        600: {"base": (-0.4075, -3.445), "cm": (0.75, -0.20, -3.445)},
        1000: {"base": (-0.4075, -3.445), "cm": (0.75, -0.20, -3.445)},
        2000: {"base": (-0.4075, -3.445), "cm": (0.75, -0.20, -3.445)},
        4000: {"base": (0.1610, -2.5228), "cm": (0.5674, -0.4201, -2.5228)},
    },
    ("cifar100", "vat"): {"*": {"base": (-0.4075, -3.445), "cm": (0.5674, -0.4201, -3.445)}},
    ("mnist", "pi_model"): {"*": {"base": (-0.70, -3), "cm": (-0.70, -0.7524, -3)}},
    ("svhn", "pi_model"): {"*": {"base": (-0.70, -3), "cm": (-0.70, -0.7524, -3)}},
    ("cifar10", "pi_model"): {"*": {"base": (-0.70, -3), "cm": (-0.70, -0.7524, -3)}},
    ("mnist", "mean_teacher"): {"*": {"base": (-0.81, -3), "cm": (-0.81, -0.89, -3)}},
    ("svhn", "mean_teacher"): {"*": {"base": (-0.81, -3), "cm": (-0.81, -0.89, -3)}},
    ("cifar10", "mean_teacher"): {"*": {"base": (-0.81, -3), "cm": (-0.81, -0.89, -3)}},
}
# Settings the authors' code has no config for (ours), mapped to the one whose values they take.
FALLBACK = {
    ("cifar10", "pseudo_label"): 600,  # 40/250/1000/2000 labels
    ("cifar10", "vat"): 250,  # 40 labels
    ("cifar100", "pseudo_label"): ("cifar10", 600),
    ("cifar100", "pi_model"): ("cifar10", 600),
    ("cifar100", "mean_teacher"): ("cifar10", 600),
}
METHOD_OPTIONS = {  # the authors' values; ξ is ours (see the module docstring)
    "supervised": {},
    "pseudo_label": {"threshold": 0.95, "variant": "authors"},
    "vat": {"xi": 1e-3, "epsilon": 6.0, "power_iterations": 1, "variant": "authors"},
    "pi_model": {},
    "mean_teacher": {"decay": 0.95},
}


def _dec(log10: float | None) -> float:
    """The authors' decoding, ``10**x`` (0 for a missing weight), to 4 significant digits."""
    return 0.0 if log10 is None else float(f"{10.0 ** log10:.4g}")


def authors_values(dataset: str, method: str, labels: int, cm: bool) -> tuple[float, float, float, str]:
    """(β as the authors give it, γ, lr, where from) for one setting and arm."""
    table = AUTHORS.get((dataset, method))
    source = "authors' lib/config"
    if table is None:
        dataset, budget = FALLBACK[(dataset, method)]
        table, source = AUTHORS[(dataset, method)], f"ours: the authors' {dataset} {budget}-label values"
        entry = table.get(budget) or table["*"]
    elif labels in table or "*" in table:
        entry = table.get(labels) or table["*"]
    else:
        budget = FALLBACK[(dataset, method)]
        entry, source = table[budget], f"ours: the authors' {budget}-label values"
    if cm:
        g, b, lr = entry["cm"]
        return _dec(b), _dec(g), _dec(lr), source
    g, lr = entry["base"]
    return 0.0, _dec(g), _dec(lr), source


PAPER_DATA = {  # name: (backbone, validation, label budgets)
    "mnist": ("wrn28_2", 5000, (100, 1000)),
    "svhn": ("wrn28_2", 7326, (250, 1000)),
    "cifar10": ("wrn28_2", 5000, (40, 250, 600, 1000, 2000, 4000)),
    "cifar100": ("wrn28_8", 5000, (2500, 10000)),
}


def paper_config(dataset: str, labels: int, method: str, cm: bool) -> tuple[dict, str]:
    backbone, val, _ = PAPER_DATA[dataset]
    beta, gamma, lr, source = authors_values(dataset, method, labels, cm)
    m = {"name": method, "delta": gamma if method != "supervised" else 1.0, "rampup": 200_000}
    if METHOD_OPTIONS[method]:
        m["options"] = dict(METHOD_OPTIONS[method])
    if cm:
        note = (f"beta {beta:g}, base weight {gamma:g}, lr {lr:g} ({source}); beta doubled, base weight not "
                f"(the authors halve CE and the base loss alike: see configs/generate.py)")
    else:
        note = f"without SuperCM: base weight {gamma:g}, lr {lr:g} ({source})"
    batch_labeled, batch_unlabeled = 50, 50
    if method == "supervised" and not cm:
        batch_labeled, batch_unlabeled = 100, 0  # the authors' CE baseline: 100 labeled, no unlabeled
        note += "; batch 100 labeled + 0 unlabeled (authors)"
    data = {"name": dataset, "num_labeled": labels, "num_validation": val, "augment_draw": "batch"}
    if dataset == "svhn" and method in ("pseudo_label", "vat", "mean_teacher"):
        data["augmentation"] = {"flip": True, "crop_pad": 2, "noise_std": 0.15}  # SPEC §5: all three for PL/VAT/MT
    cfg = {
        "data": data,
        "model": {"backbone": backbone, "options": {"bn_momentum": 0.1}},
        "cm": {"beta": round(2 * beta, 6), "centroids": "paper", "features": "reuse"},
        "method": m,
        "optim": {"lr": lr, "weight_decay": 0.0, "decay_at": 400_000, "decay_factor": 0.2},
        "train": {"iterations": 500_000, "batch_labeled": batch_labeled, "batch_unlabeled": batch_unlabeled,
                  "eval_every": 5000, "checkpoint_every": 5000, "log_every": 100, "ema_decay": 0.99},
    }
    return cfg, note


# CPU scale: the MNIST settings of the paper on the offline datasets, small CNN, short schedule (ours).
CPU_ITERATIONS = 1000
CPU_DATA = {"mnist10k": 500, "fashion_mnist": 1000}  # validation size


def cpu_config(dataset: str, method: str, cm: bool) -> tuple[dict, str]:
    cfg, note = paper_config("mnist", 100, method, cm)
    it = CPU_ITERATIONS
    cfg["data"] = {"name": dataset, "num_labeled": 100, "num_validation": CPU_DATA[dataset]}
    cfg["model"] = {"backbone": "cnn", "options": {"width": 16, "convs_per_block": 1}}  # BatchNorm momentum 0.1
    cfg["method"]["rampup"] = int(0.4 * it)
    cfg["optim"].update(lr=1e-3, decay_at=int(0.8 * it))
    cfg["train"].update(iterations=it, eval_every=100, checkpoint_every=500, log_every=10)
    note = (
        f"CPU scale (ours): {dataset}, 100 labels, small CNN, {it} iterations, lr 1e-3 for all, ramp-up and lr decay at "
        f"the paper's fractions (40 %, 80 %); everything else from the MNIST 100-label setting: " + note
    )
    return cfg, note


# The FixMatch family (issue 20). Published (Sohn et al. 2020; Wang et al. 2023; USB's configs): τ = 0.95,
# μ = 7 unlabeled per labeled, λ_u = 1 (method.delta) with no ramp-up, RandAugment (FixMatch's list, random
# magnitudes) + Cutout, FreeMatch's EMA 0.999 and fairness weight 0.001 (USB's CIFAR/SVHN configs).
FIXMATCH_METHODS = ("fixmatch", "freematch")
FIXMATCH_OPTIONS = {
    "fixmatch": {"threshold": 0.95, "num_ops": 2, "cutout": 0.5, "pixel_min": -1.0, "pixel_max": 1.0},
    "freematch": {"ema": 0.999, "fairness_weight": 0.001, "num_ops": 2, "cutout": 0.5, "pixel_min": -1.0,
                  "pixel_max": 1.0},
}
FIXMATCH_MU = 7
# Ours (CPU scale): 16 labeled per batch (USB: 64) so that a step of 16 + 112 + 112 strong views fits a CPU
# benchmark; Adam 1e-3 and the 1000-iteration schedule of the other CPU configs; β of SuperCM not published
# for these methods: the CE + SuperCM MNIST β (authors' 0.186, doubled as the CE + CM CPU config), not tuned.
FIXMATCH_CPU_BATCH = 16
FIXMATCH_CPU_BETA = 0.3724


def fixmatch_cpu_config(dataset: str, method: str, cm: bool) -> tuple[dict, str]:
    it = CPU_ITERATIONS
    cfg = {
        "data": {"name": dataset, "num_labeled": 100, "num_validation": CPU_DATA[dataset]},
        "model": {"backbone": "cnn", "options": {"width": 16, "convs_per_block": 1}},
        "cm": {"beta": FIXMATCH_CPU_BETA if cm else 0.0, "centroids": "paper", "features": "reuse",
               "centroid_source": "labeled"},
        "method": {"name": method, "delta": 1.0, "rampup": 0, "options": dict(FIXMATCH_OPTIONS[method])},
        "optim": {"lr": 1e-3, "weight_decay": 0.0, "decay_at": int(0.8 * it), "decay_factor": 0.2},
        "train": {"iterations": it, "batch_labeled": FIXMATCH_CPU_BATCH, "batch_unlabeled": FIXMATCH_MU * FIXMATCH_CPU_BATCH,
                  "eval_every": 100, "checkpoint_every": 500, "log_every": 10, "ema_decay": 0.99},
    }
    published = ("tau 0.95, mu 7, lambda_u 1 without ramp-up" if method == "fixmatch"
                 else "EMA 0.999, fairness weight 0.001, mu 7, lambda_u 1 without ramp-up")
    note = (f"CPU scale, {dataset}, 100 labels, {method}{' + SuperCM' if cm else ''}. Published: {published}, "
            f"RandAugment (2 ops, random magnitudes) + Cutout (0.5). Ours: small CNN, batch {FIXMATCH_CPU_BATCH} + "
            f"{FIXMATCH_MU * FIXMATCH_CPU_BATCH} (USB: 64 + 448), Adam 1e-3 with lr x 0.2 at 80 %, {it} iterations, "
            f"weight-EMA 0.99 tracked" + (f", beta {FIXMATCH_CPU_BETA} (the CE + SuperCM MNIST beta; not published for "
                                           f"this method, not tuned); cm.centroid_source=labeled+pseudo is the "
                                           f"benchmark's third arm" if cm else ""))
    return cfg, note


# USB's classic-CV recipe for GPU users (its config/classic_cv/{fixmatch,freematch}/*.yaml): WRN-28-2, SGD
# 0.03, momentum 0.9, Nesterov, weight decay 5e-4, cosine decay cos(7πk/16K), batch 64 + 448, 2^20 iterations ("1M" in the papers),
# weight-EMA 0.999, RandAugment with 3 operations, flip + reflect-pad-4 crop for CIFAR-10 (crop only for SVHN).
USB_DATA = {  # name: (label budgets, validation, data section extras)
    "cifar10": ((40, 250, 4000), 5000, {"options": {"preprocess": "unit"}, "augmentation": {"flip": True, "crop_pad": 4}}),
    "svhn": ((40, 250, 1000), 7326, {"augmentation": {"crop_pad": 4}}),
}
USB_ITERATIONS = 2**20


def fixmatch_paper_config(dataset: str, labels: int, method: str, cm: bool) -> tuple[dict, str]:
    _, val, extra = USB_DATA[dataset]
    options = {**FIXMATCH_OPTIONS[method], "num_ops": 3}
    cfg = {
        "data": {"name": dataset, "num_labeled": labels, "num_validation": val, **extra},
        "model": {"backbone": "wrn28_2", "options": {"bn_momentum": 0.001}},
        "cm": {"beta": FIXMATCH_CPU_BETA if cm else 0.0, "centroids": "paper", "features": "reuse",
               "centroid_source": "labeled"},
        "method": {"name": method, "delta": 1.0, "rampup": 0, "options": options},
        "optim": {"name": "sgd", "lr": 0.03, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
                  "schedule": "cosine"},
        "train": {"iterations": USB_ITERATIONS, "batch_labeled": 64, "batch_unlabeled": 64 * FIXMATCH_MU,
                  "eval_every": 5120, "checkpoint_every": 5120, "log_every": 256, "ema_decay": 0.999},
    }
    note = (f"{dataset}, {labels} labels, {method}{' + SuperCM' if cm else ''}: USB's classic-CV settings (WRN-28-2, "
            f"SGD 0.03 momentum 0.9 Nesterov, weight decay 5e-4, cosine decay lr x cos(7 pi k / 16 K), batch 64 + 448, "
            f"2^20 iterations = the papers' 1M, weight-EMA 0.999, RandAugment 3 ops + Cutout, threshold/EMA/fairness as "
            f"published; validation held out: ours, USB has none){'; the CIFAR-10 pixels scaled to [-1, 1] (USB: mean/std normalisation), not the paper protocol GCN + ZCA, on which RandAugment means nothing' if dataset == 'cifar10' else ''}"
            + (f"; beta {FIXMATCH_CPU_BETA}: ours, not tuned" if cm else ""))
    return cfg, note


# Domain adaptation on the offline shifts (issue 9): the field's protocol where it applies (SPEC §6;
# tllib), at CPU scale (ours). SuperCM's UDA code is not public, so β is ours (see UDA_BETA).
# Domain adaptation on the offline digit shifts (issue 17): the DANN paper's digit protocol, from
# scratch on its small network (SPEC §6, "The digit protocol of the DANN paper"), at CPU scale.
# Published (Ganin & Lempitsky 2015; Ganin et al. JMLR 2016): the MNIST network (backbone
# ganin_mnist, 768-d features), the domain classifier with one hidden layer of 100 and no BatchNorm,
# λ_p = 2/(1+e^(-10p)) - 1 and η_p = 0.01/(1+10p)^0.75 over progress p = i/T, SGD momentum 0.9.
# Ours: batch 32 + 32 (the paper: 64 + 64), Nesterov and weight decay 1e-3 (the field's optimiser, as in
# the Office configs), no label predictor MLP (the CM head classifies the 768 features), the length
# (UDA_ITERATIONS), the source-validation size, and SuperCM's β (the paper gives no UDA β).
# The shipped small CNN is not offered for UDA: its 64 globally pooled BatchNorm features faced a
# discriminator 47× its size, and DANN on it fell to 26.7 % (issue 17); see BENCHMARKS.md.
#: The source-validation size (class-balanced, held out of the source's training rows) is ours: as many as
#: the source allows without starving training, because the source-validation rule ranks iterates whose
#: source accuracy is 97-99 %, where 500 images have a standard error of 0.5-0.7 points (BENCHMARKS,
#: issue 17 §2). mnist10k's source half has 4,002 digits (1,000 held out), mnist10k's whole training split
#: 8,000 and synth_digits 10,000 (2,000 each); optdigits' 1,198 training digits keep 200 as before.
UDA_PAIRS = {  # source, target, source-validation size (class-balanced)
    "mnist10k-to-mnistm_style": ("mnist10k", "mnistm_style", 1000),
    "mnist10k-to-mnistm_pool": ("mnist10k", "mnistm_pool", 1000),
    "mnist10k-to-optdigits": ("mnist10k", "optdigits", 2000),
    "optdigits-to-mnist10k": ("optdigits", "mnist10k", 200),
    "synth_digits-to-mnist10k": ("synth_digits", "mnist10k", 2000),
}
UDA_METHODS = {  # file stem: (base method, regularisers)
    "source_only": ("supervised", []),
    "dann": ("dann", []),
    "mcc": ("mcc", []),
    "bnm": ("bnm", []),
    "dann+mcc": ("dann", [{"name": "mcc", "weight": 1.0}]),
    "dann+bnm": ("dann", [{"name": "bnm", "weight": 1.0}]),
}
UDA_ITERATIONS = 3000  # ours (2 CPU cores): the length at which issue 17 measured DANN 74.6 vs source only 61.4
UDA_BETA = 0.3  # ours: the paper's UDA β is not published; not tuned (left for `supercm tune` on source validation)
#: DANN's domain classifier in the paper's digit experiments: one hidden layer of 100, no BatchNorm;
#: λ over training progress with γ = 10 (published).
DIGIT_DANN = {"hidden": 100, "depth": 1, "batch_norm": False, "dropout": 0.0, "lambda_schedule": "progress",
              "lambda_gamma": 10.0}


def _uda_method(stem: str) -> tuple[dict, list]:
    """The method section and regularisers of a UDA config: the field's weight 1, no ramp (DANN
    ramps through λ(i)), MCC at T = 2.5."""
    method, regs = UDA_METHODS[stem]
    m = {"name": method, "delta": 1.0, "rampup": 0}
    if method == "mcc":
        m["options"] = {"temperature": 2.5}
    return m, regs


def _field_optim(backbone_lr_mult: float) -> dict:
    """The field's optimiser (SPEC §6, tllib): SGD 0.01, momentum 0.9, Nesterov, wd 1e-3, annealed."""
    return {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3,
            "schedule": "annealed", "anneal_gamma": 0.001, "anneal_power": 0.75, "backbone_lr_mult": backbone_lr_mult}


def _field_config(data: dict, model: dict, stem: str, cm: bool, *, backbone_lr_mult: float, iterations: int,
                  eval_every: int, log_every: int) -> dict:
    """A UDA config with the field's common protocol (every method differs in its loss only): the
    method's section, the field's optimiser, batch 32 + 32, no weight EMA; SuperCM at UDA_BETA."""
    m, regs = _uda_method(stem)
    return {
        "data": data,
        "model": model,
        "cm": {"beta": UDA_BETA if cm else 0.0, "centroids": "paper", "features": "reuse"},
        "method": m,
        "regularisers": regs,
        "optim": _field_optim(backbone_lr_mult=backbone_lr_mult),
        "train": {"iterations": iterations, "batch_labeled": 32, "batch_unlabeled": 32, "eval_every": eval_every,
                  "checkpoint_every": 1000, "log_every": log_every, "ema_decay": 0.0},
    }


def _cm_note(cm: bool) -> str:
    return f" + SuperCM (beta {UDA_BETA:g}, ours: the paper gives no UDA beta)" if cm else ""


def uda_config(pair: str, stem: str, cm: bool) -> tuple[dict, str]:
    source, target, val = UDA_PAIRS[pair]
    cfg = _field_config({"name": source, "target": target, "num_validation": val},
                        {"backbone": "ganin_mnist", "options": {}}, stem, cm,
                        backbone_lr_mult=1.0, iterations=UDA_ITERATIONS, eval_every=250, log_every=10)
    cfg["optim"].update(schedule="progress")  # η_p = 0.01/(1 + 10p)^0.75 (published); anneal_gamma unused
    if cfg["method"]["name"] == "dann":
        cfg["method"]["options"] = dict(DIGIT_DANN)
    forward = "source rows only (the field's source only: BatchNorm of source statistics; "\
        "method.options.forward=joined is the AdaBN-like variant)" if stem == "source_only" and not cm else ""
    note = (
        f"domain adaptation {source} -> {target}, {stem}{_cm_note(cm)}. "
        f"Published (DANN paper, digit protocol, SPEC §6): the MNIST network (ganin_mnist, 768-d), SGD lr 0.01 "
        f"momentum 0.9, eta_p = 0.01/(1+10p)^0.75 and lambda_p = 2/(1+e^(-10p)) - 1 over progress p = i/T, "
        f"domain classifier one hidden layer of 100 without BatchNorm, weights 1; MCC T = 2.5 (its paper). "
        f"Ours: batch 32 + 32 (paper 64 + 64), Nesterov, weight decay 1e-3, the CM head as the classifier on the "
        f"768 features (no 100-100 label MLP), {UDA_ITERATIONS} iterations, {val} class-balanced source samples "
        f"held out for the source-validation rule" + (f"; the model sees the {forward}" if forward else "")
    )
    return cfg, note


# The Office benchmarks (issue 12 §4): every task of the paper's UDA tables, with the field's common
# protocol (SPEC §6, tllib's DANN recipe) for every method, so the methods differ in their loss only.
OFFICE = {  # benchmark: (dataset prefix, {code: domain}, tasks, iterations, source-validation per class)
    "office31": ("office31", {"A": "amazon", "D": "dslr", "W": "webcam"},
                 ["A-W", "D-W", "W-D", "A-D", "D-A", "W-A"], 20_000, 3),
    "officehome": ("officehome", {"Ar": "art", "Cl": "clipart", "Pr": "product", "Rw": "real_world"},
                   [f"{s}-{t}" for s in ("Ar", "Cl", "Pr", "Rw") for t in ("Ar", "Cl", "Pr", "Rw") if s != t],
                   30_000, 3),
    "imageclef": ("imageclef", {"C": "c", "I": "i", "P": "p"},
                  ["I-P", "P-I", "I-C", "C-I", "C-P", "P-C"], 20_000, 5),
    "office_caltech": ("office_caltech", {"A": "amazon", "C": "caltech", "D": "dslr", "W": "webcam"},
                       [f"{s}-{t}" for s in "ACDW" for t in "ACDW" if s != t], 20_000, 3),
}
OFFICE_CLASSES = {"office31": 31, "officehome": 65, "imageclef": 12, "office_caltech": 10}
OFFICE_METHODS = ("source_only", "dann", "mcc", "bnm")


def office_config(bench: str, task: str, stem: str, cm: bool) -> tuple[dict, str]:
    prefix, codes, _, iterations, per_class = OFFICE[bench]
    s, t = task.split("-")
    cfg = _field_config({"name": f"{prefix}_{codes[s]}", "target": f"{prefix}_{codes[t]}", "root": None,
                         "num_validation": per_class * OFFICE_CLASSES[bench], "options": {"size": 256, "crop": 224}},
                        {"backbone": "resnet50", "options": {"weights": "imagenet1k_v1", "bottleneck": 256}}, stem, cm,
                        backbone_lr_mult=0.1, iterations=iterations, eval_every=1000, log_every=100)
    note = (
        f"{bench} {s} -> {t}, {stem}{_cm_note(cm)}. "
        f"The field's common protocol (SPEC §6, tllib): ResNet-50 with torchvision's IMAGENET1K_V1 weights, "
        f"bottleneck Linear(2048, 256)-BN-ReLU, backbone lr x 0.1, SGD 0.01, momentum 0.9, Nesterov, weight decay "
        f"1e-3, lr0 (1 + 0.001 i)^-0.75 every step, batch 32 + 32, resize 256x256 -> RandomResizedCrop(224) -> flip "
        f"(test: centre crop 224), DANN lambda(i) = 2/(1+e^(-i/1000)) - 1 with a 1024-wide discriminator, MCC T = 2.5, "
        f"weights 1, {iterations} iterations. tllib's MCC recipe differs (lr 0.005, batch 36, bottleneck 1024/2048); "
        f"one protocol for every method is ours. Ours too: {per_class} source images per class held out for the "
        f"source-validation rule (tllib trains on every source image and selects on the target test set). "
        f"Set data.root to the folder holding the dataset (see supercm.data.images)"
    )
    return cfg, note


def image_folder_config(stem: str, cm: bool) -> tuple[dict, str]:
    """A user's own two folders with the Office protocol (Office-31's length)."""
    cfg, _ = office_config("office31", "A-W", stem, cm)
    cfg["data"] = {"name": "image_folder", "target": "image_folder", "num_validation": 0,
                   "options": {"size": 256, "crop": 224}}
    note = (
        f"your own images, {stem}{' + SuperCM (beta %g, ours)' % UDA_BETA if cm else ''}, with the Office-31 protocol "
        f"(see the office31-* configs). Give the folders: data.options.source=DIR (one sub-folder per class, or a "
        f"'path label' list), data.options.target=DIR (any images, no labels read), optionally data.options.test=DIR "
        f"(labelled target images: without it no target test accuracy is reported). data.num_validation=0 keeps every "
        f"source image for training (no source-validation rule); set it to a multiple of your class count to hold some out"
    )
    return cfg, note


def write(path: Path, cfg: dict, note: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Generated by configs/generate.py; edit that file, not this one.\n# " + note + "\n"
    path.write_text(header + yaml.safe_dump(cfg, sort_keys=False))


def write_pair(folder: str, stem: str, build, *args) -> int:
    """``build(*args, cm)`` without and with SuperCM, written as ``folder/stem[-cm].yaml``; the count written."""
    for cm in (False, True):
        cfg, note = build(*args, cm)
        write(HERE / folder / f"{stem}{'-cm' if cm else ''}.yaml", cfg, note)
    return 2


def main() -> None:
    n = 0
    for dataset, (_, _, budgets) in PAPER_DATA.items():
        for labels in budgets:
            for method in METHODS:
                n += write_pair("paper", f"{dataset}-{labels}-{method}", paper_config, dataset, labels, method)
    for dataset in CPU_DATA:
        for method in METHODS:
            n += write_pair("cpu", f"{dataset}-{method}", cpu_config, dataset, method)
        for method in FIXMATCH_METHODS:
            n += write_pair("cpu", f"{dataset}-{method}", fixmatch_cpu_config, dataset, method)
    for dataset, (budgets, _, _) in USB_DATA.items():
        for labels in budgets:
            for method in FIXMATCH_METHODS:
                n += write_pair("paper", f"{dataset}-{labels}-{method}", fixmatch_paper_config, dataset, labels, method)
    for pair in UDA_PAIRS:
        for stem in UDA_METHODS:
            n += write_pair("uda", f"{pair}-{stem}", uda_config, pair, stem)
    for bench, (_, _, tasks, _, _) in OFFICE.items():
        for task in tasks:
            for stem in OFFICE_METHODS:
                n += write_pair("uda", f"{bench}-{task.replace('-', '-to-')}-{stem}", office_config, bench, task, stem)
    n += write_pair("uda", "image_folder-dann", image_folder_config, "dann")
    print(f"wrote {n} configs under {HERE}")


if __name__ == "__main__":
    main()
