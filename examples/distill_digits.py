"""Knowledge distillation on the digits data: the evidence table of docs/distillation.md.

    python examples/distill_digits.py            # 5 seeds (a few minutes on 2 cores)
    python examples/distill_digits.py --quick    # 1 seed, a smoke run

Three experiments, each repeated over seeds (weights and batch order; the data split is
the fixed one of refcompress.data), test accuracy as mean ± std:

(a) compression: a 64-24-10 MLP student (1,810 parameters) vs the 64-300-100-10 teacher
    (52,310, 29x larger), trained on hard labels alone vs with soft targets (KD);
(b) low labels: 10 % of the training labels (stratified, drawn per seed); the teacher
    (small_cnn) and the hard-label student see only those; the KD student also sees the
    other 90 % of the training images, unlabeled, with the teacher's soft targets;
(c) feature distillation between two CNNs (small_cnn teacher, a 4-8 channel student):
    hard labels, + attention transfer, + hints, KD, KD + AT, KD + hints.

Validation accuracy on the fixed validation split picks the epoch in (a) and (c) (early
stopping with the best weights restored); (b) trains a fixed number of epochs, because a
validation set larger than the labeled training set would contradict the setting.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from refcompress import nn
from refcompress.data import load_digits
from refcompress.distill import UNLABELED, Distiller
from refcompress.models import mlp_300_100, small_cnn, train_reference

TEMPERATURE = 4.0
ALPHA = 0.1


def mlp_student(hidden: int, rng) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden, rng=rng), nn.ReLU(),
                         nn.Linear(hidden, 10, rng=rng))


def thin_cnn(rng) -> nn.Sequential:
    # small_cnn's layout with 4 and 8 channels instead of 16 and 32, so the tap names
    # ("2", "5": the ReLUs after each conv) line up with the teacher's.
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, rng=rng), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 8, 3, padding=1, rng=rng), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 10, rng=rng))


def n_params(model) -> int:
    return sum(p.size for p in model.parameters())


def accuracy(model, X, y) -> float:
    return float(nn.evaluate(model, X, y)["accuracy"])


def train_hard(model, X, y, *, seed, epochs, lr, val=None, patience=None, batch_size=32):
    opt = nn.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    nn.fit(model, X, y, optimizer=opt, epochs=epochs, batch_size=batch_size, seed=seed,
           validation_data=val, patience=patience, monitor="val_acc", progress=False)
    return model


def train_distilled(student, teacher, X, y, *, seed, epochs, lr, val=None, patience=None,
                    batch_size=32, **loss):
    d = Distiller(student, teacher, seed=seed, **loss)
    d.fit(X, y, lr=lr, weight_decay=1e-4, epochs=epochs, batch_size=batch_size,
          validation_data=val, patience=patience, monitor="val_acc", progress=False)
    return student


def low_label_subset(y, fraction, seed):
    """Indices of a stratified ``fraction`` of the samples, drawn with ``seed``."""
    rng = np.random.default_rng(10_000 + seed)
    keep = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        k = max(1, int(round(fraction * len(members))))
        keep.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(keep))


def experiment_a(data, seed):
    teacher, t_acc = train_reference("mlp_300_100", seed)
    val = (data.X_val, data.y_val)
    common = dict(seed=seed, epochs=60, lr=3e-3, val=val, patience=10)
    hard = train_hard(mlp_student(24, np.random.default_rng(seed)), data.X_train, data.y_train, **common)
    kd = train_distilled(mlp_student(24, np.random.default_rng(seed)), teacher, data.X_train,
                         data.y_train, alpha=ALPHA, temperature=TEMPERATURE, **common)
    return {"teacher": t_acc, "hard": accuracy(hard, data.X_test, data.y_test),
            "kd": accuracy(kd, data.X_test, data.y_test),
            "sizes": (n_params(teacher), n_params(hard))}


def experiment_b(data, seed):
    idx = low_label_subset(data.y_train, 0.10, seed)
    X_lab, y_lab = data.X_train[idx], data.y_train[idx]
    teacher = train_hard(small_cnn(np.random.default_rng(seed)), X_lab, y_lab, seed=seed,
                         epochs=60, lr=3e-3, batch_size=16)
    teacher.eval()
    hard = train_hard(mlp_student(24, np.random.default_rng(seed)), X_lab, y_lab, seed=seed,
                      epochs=100, lr=3e-3, batch_size=16)
    # every training image, labels only on the 10 %: CE on those, KD on all
    y_partial = np.full(len(data.y_train), UNLABELED, dtype=np.int64)
    y_partial[idx] = y_lab
    kd = train_distilled(mlp_student(24, np.random.default_rng(seed)), teacher, data.X_train,
                         y_partial, seed=seed, epochs=40, lr=3e-3, alpha=ALPHA,
                         temperature=TEMPERATURE)
    return {"teacher": accuracy(teacher, data.X_test, data.y_test),
            "hard": accuracy(hard, data.X_test, data.y_test),
            "kd": accuracy(kd, data.X_test, data.y_test), "n_labels": len(idx)}


C_VARIANTS = {
    "hard labels": dict(alpha=1.0),
    "CE + AT": dict(alpha=1.0, beta=1.0, attention_pairs=[("2", "2"), ("5", "5")]),
    "CE + hints": dict(alpha=1.0, gamma=0.1, hint_pairs=[("5", "5")]),
    "KD": dict(alpha=ALPHA, temperature=TEMPERATURE),
    "KD + AT": dict(alpha=ALPHA, temperature=TEMPERATURE, beta=1.0,
                    attention_pairs=[("2", "2"), ("5", "5")]),
    "KD + hints": dict(alpha=ALPHA, temperature=TEMPERATURE, gamma=0.1, hint_pairs=[("5", "5")]),
}


def experiment_c(data, seed):
    teacher, t_acc = train_reference("small_cnn", seed)
    val = (data.X_val, data.y_val)
    out = {"teacher": t_acc}
    for name, loss in C_VARIANTS.items():
        student = thin_cnn(np.random.default_rng(seed))
        train_distilled(student, teacher, data.X_train, data.y_train, seed=seed, epochs=30,
                        lr=3e-3, val=val, patience=6, **loss)
        out[name] = accuracy(student, data.X_test, data.y_test)
        out["sizes"] = (n_params(teacher), n_params(student))
    return out


def _set_loss(temperature, alpha):
    global TEMPERATURE, ALPHA
    TEMPERATURE, ALPHA = temperature, alpha
    for v in C_VARIANTS.values():
        if v["alpha"] != 1.0:
            v.update(alpha=alpha, temperature=temperature)


def _ms(values):
    v = 100 * np.asarray(values)
    return f"{v.mean():6.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:4.2f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5, help="number of seeds (default 5)")
    ap.add_argument("--quick", action="store_true", help="one seed, for a smoke run")
    ap.add_argument("--only", choices=["a", "b", "c"], help="run one experiment")
    ap.add_argument("--temperature", type=float, default=TEMPERATURE, help="KD temperature T")
    ap.add_argument("--alpha", type=float, default=ALPHA, help="hard-label weight alpha")
    args = ap.parse_args(argv)
    _set_loss(args.temperature, args.alpha)
    seeds = list(range(1 if args.quick else args.seeds))
    data = load_digits()
    runs = {"a": experiment_a, "b": experiment_b, "c": experiment_c}
    todo = [args.only] if args.only else ["a", "b", "c"]
    results = {k: [] for k in todo}
    t0 = time.time()
    for seed in seeds:
        for k in todo:
            results[k].append(runs[k](data, seed))
        print(f"seed {seed} done ({time.time() - t0:.0f} s)", flush=True)

    print(f"\nTest accuracy (%) on digits, mean ± std over {len(seeds)} seed(s) "
          f"{seeds}; T = {TEMPERATURE}, alpha = {ALPHA}\n")
    if "a" in results:
        r = results["a"]
        tp, sp = r[0]["sizes"]
        print(f"(a) compression: MLP 64-24-10 student ({sp:,} params) vs MLP 64-300-100-10 "
              f"teacher ({tp:,}, {tp / sp:.0f}x)")
        print(f"    {'teacher':<34} {_ms([x['teacher'] for x in r])}")
        print(f"    {'student, hard labels':<34} {_ms([x['hard'] for x in r])}")
        print(f"    {'student, KD':<34} {_ms([x['kd'] for x in r])}")
        gain = [x["kd"] - x["hard"] for x in r]
        print(f"    {'KD - hard (per seed)':<34} {_ms(gain)}   KD better in "
              f"{sum(g > 0 for g in gain)}/{len(gain)} seeds\n")
    if "b" in results:
        r = results["b"]
        print(f"(b) low labels: {r[0]['n_labels']} labeled training images (10 %), the other "
              f"{load_digits().sizes()['train'] - r[0]['n_labels']} unlabeled for KD")
        print(f"    {'teacher small_cnn (10 % labels)':<34} {_ms([x['teacher'] for x in r])}")
        print(f"    {'student, hard labels (10 %)':<34} {_ms([x['hard'] for x in r])}")
        print(f"    {'student, KD (+ unlabeled)':<34} {_ms([x['kd'] for x in r])}")
        closed = [(x["kd"] - x["hard"]) / (x["teacher"] - x["hard"]) for x in r
                  if x["teacher"] > x["hard"]]
        if closed:
            print(f"    {'gap closed (KD-hard)/(teacher-hard)':<34} {_ms(closed)}"
                  f"   (mean of ratios; ratio of means "
                  f"{np.mean([x['kd'] - x['hard'] for x in r]) / np.mean([x['teacher'] - x['hard'] for x in r]) * 100:.0f} %)\n")
    if "c" in results:
        r = results["c"]
        tp, sp = r[0]["sizes"]
        print(f"(c) CNN to CNN: thin CNN 4-8 channels ({sp:,} params) from small_cnn ({tp:,})")
        print(f"    {'teacher small_cnn':<34} {_ms([x['teacher'] for x in r])}")
        base = [x["hard labels"] for x in r]
        for name in C_VARIANTS:
            vals = [x[name] for x in r]
            delta = "" if name == "hard labels" else \
                f"   vs hard {_ms(np.subtract(vals, base))}"
            print(f"    {'student, ' + name:<34} {_ms(vals)}{delta}")
    print(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
