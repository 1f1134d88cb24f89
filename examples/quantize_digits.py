"""Quantization evidence on digits: what each method buys, mean over seeds.

    .venv/bin/python examples/quantize_digits.py [--seeds 5] [--quick]

Per seed the two reference models are trained (refcompress.models.train_reference), then:
  * int8 static PTQ (uint8 activations, int8 per-channel weights, int32 bias) by both
    requantization rules -- test accuracy and stored weight bytes vs fp32 (weights and
    their scales; the whole model's bytes too), and with one weight scale per layer;
  * int4 weight-only (per channel, and group-wise 4 for the MLP: 4 divides 64, 300 and 100);
  * W4A4 on the CNN: PTQ against QAT (3 epochs, STE) and QAT with LSQ;
  * 3-bit Deep Compression weight sharing of the MLP, before and after centroid fine-tuning;
  * the fake-quant simulation against the integer model it converts to (W4A4 QAT and W8A8):
    agreement of predicted classes and max |logit difference|;
  * 4-bit per-tensor weights of the CNN: nearest rounding, + cross-layer equalization,
    + bias correction, AdaRound.
Goals (issue): int8 PTQ <= 0.3 pp loss and >= 3.9x fewer weight bytes; W4A4 QAT within
1 pp of fp32; int4 weight-only <= 0.5 pp; 3-bit sharing <= 0.5 pp.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from refcompress import nn
from refcompress.data import load_digits
from refcompress.models import train_reference
from refcompress.quant import SharedLinear, convert as C, qat


def model_bytes(model) -> int:
    """Bytes of everything the model stores (every parameter and buffer, as saved)."""
    return sum(a.nbytes for a in model.state_dict().values())


def weight_bytes(model) -> int:
    """Bytes of the weight tensors as stored, with what is needed to read them back
    (int8 codes + their scales; codebook + packed indices); biases and activation qparams
    are not weights."""
    total = 0
    for _, m in model.named_modules():
        if isinstance(m, SharedLinear):
            total += m.shared().stored_bytes()
        elif hasattr(m, "weight_q"):
            total += m.weight_q.nbytes + m.weight_scale.nbytes
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            total += m.weight.data.nbytes
    return total


def share_mlp(model, bits, d, finetune_epochs, seed):
    """Replace every Linear by a SharedLinear with 2^bits shared weights; fine-tune centroids."""
    shared = C.clone(model)
    for name, m in list(shared.named_children()):
        if isinstance(m, nn.Linear):
            shared[int(name)] = SharedLinear.from_linear(m, bits)
    before = acc(shared, d)
    if finetune_epochs:
        shared.train()
        nn.fit(shared, d.X_train, d.y_train, optimizer=nn.AdamW(list(shared.parameters()), lr=1e-4, weight_decay=0),
               epochs=finetune_epochs, batch_size=32, seed=seed, progress=False)
        shared.eval()
    return before, shared


def acc(model, d) -> float:
    return float(nn.evaluate(model.eval(), d.X_test, d.y_test)["accuracy"])


def agreement(sim, integer, x):
    a, b = sim.eval()(x), integer(x)
    return float(np.mean(a.argmax(1) == b.argmax(1))), float(np.abs(a - b).max())


def run_seed(seed, d, qat_epochs):
    r = {}
    calib = d.X_train[:512]
    mlp, r["mlp fp32"] = train_reference("mlp_300_100", seed, data=d)
    cnn, r["cnn fp32"] = train_reference("small_cnn", seed, data=d)
    for tag, model in (("mlp", mlp), ("cnn", cnn)):
        folded = C.fold_batchnorm(model)
        for rule in ("float", "fixedpoint"):
            q = C.quantize_static(model, calib, rule=rule)
            r[f"{tag} int8 static ({rule})"] = acc(q, d)
        r[f"{tag} weight bytes ratio"] = weight_bytes(folded) / weight_bytes(q)
        r[f"{tag} model bytes ratio"] = model_bytes(folded) / model_bytes(q)
        qt = C.quantize_static(model, calib, per_channel=False)
        r[f"{tag} int8 static per-tensor w"] = acc(qt, d)
        r[f"{tag} weight bytes ratio per-tensor"] = weight_bytes(folded) / weight_bytes(qt)
        r[f"{tag} int4 weight-only"] = acc(C.quantize_weight_only(model, 4), d)
    r["mlp int4 weight-only g4"] = acc(C.quantize_weight_only(mlp, 4, group_size=4), d)  # 4 divides 64, 300, 100
    # W4A4 on the CNN
    r["cnn W4A4 PTQ"] = acc(C.quantize_static(cnn, calib, weight_bits=4, act_bits=4), d)
    for lsq in (False, True):
        q = qat.prepare_qat(cnn, weight_bits=4, act_bits=4, lsq=lsq)
        nn.fit(q, d.X_train, d.y_train, optimizer=nn.AdamW(list(q.parameters()), lr=5e-4, weight_decay=0),
               epochs=qat_epochs, batch_size=32, seed=seed, progress=False)
        integer = qat.convert_qat(q)
        r[f"cnn W4A4 QAT{' LSQ' if lsq else ''} (integer)"] = acc(integer, d)
        if not lsq:
            r["sim/int agree W4A4"], r["sim/int max|dlogit| W4A4"] = agreement(q, integer, d.X_test)
    q8 = qat.prepare_qat(cnn, weight_bits=8, act_bits=8)
    for s in range(0, 512, 64):  # calibrate the fake quantizers' ranges without training
        q8(calib[s:s + 64])
    r["sim/int agree W8A8"], r["sim/int max|dlogit| W8A8"] = agreement(q8, qat.convert_qat(q8), d.X_test)
    # 3-bit weight sharing
    before, shared = share_mlp(mlp, 3, d, 2, seed)
    r["mlp 3-bit sharing"], r["mlp 3-bit sharing + centroid ft"] = before, acc(shared, d)
    r["mlp 3-bit sharing bytes ratio"] = weight_bytes(mlp) / weight_bytes(shared)
    # 4-bit per-tensor weights with the corrections
    eq = C.cross_layer_equalize(cnn)
    r["cnn W4 per-tensor nearest"] = acc(C.quantize_weights_corrected(cnn, calib, 4), d)
    r["cnn W4 + CLE"] = acc(C.quantize_weights_corrected(eq, calib, 4), d)
    r["cnn W4 + CLE + bias corr."] = acc(C.quantize_weights_corrected(eq, calib, 4, bias_correction=True), d)
    r["cnn W4 AdaRound"] = acc(C.quantize_weights_corrected(cnn, calib, 4, adaround=True), d)
    r["cnn W3 per-tensor nearest"] = acc(C.quantize_weights_corrected(cnn, calib, 3), d)
    r["cnn W3 + CLE + bias corr."] = acc(C.quantize_weights_corrected(eq, calib, 3, bias_correction=True), d)
    r["cnn W3 AdaRound"] = acc(C.quantize_weights_corrected(cnn, calib, 3, adaround=True), d)
    return r


GOALS = {  # row -> (baseline row, max loss in pp) for the pass/fail column
    "mlp int8 static (float)": ("mlp fp32", 0.3), "mlp int8 static (fixedpoint)": ("mlp fp32", 0.3),
    "cnn int8 static (float)": ("cnn fp32", 0.3), "cnn int8 static (fixedpoint)": ("cnn fp32", 0.3),
    "mlp int8 static per-tensor w": ("mlp fp32", 0.3), "cnn int8 static per-tensor w": ("cnn fp32", 0.3),
    "mlp int4 weight-only": ("mlp fp32", 0.5), "cnn int4 weight-only": ("cnn fp32", 0.5),
    "cnn W4A4 QAT (integer)": ("cnn fp32", 1.0), "cnn W4A4 QAT LSQ (integer)": ("cnn fp32", 1.0),
    "mlp 3-bit sharing + centroid ft": ("mlp fp32", 0.5),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="one seed, one QAT epoch")
    args = ap.parse_args(argv)
    seeds = 1 if args.quick else args.seeds
    d = load_digits()
    t0 = time.time()
    results = [run_seed(s, d, 1 if args.quick else 3) for s in range(seeds)]
    keys = list(results[0])
    print(f"quantization on digits, mean over {seeds} seed(s) ({time.time() - t0:.0f} s)\n")
    print(f"{'row':<36} {'mean':>9} {'std':>8}  goal")
    print("-" * 72)
    for k in keys:
        v = np.array([r[k] for r in results])
        is_acc = not any(w in k for w in ("ratio", "dlogit", "agree"))
        mean, std = (100 * v.mean(), 100 * v.std()) if is_acc else (v.mean(), v.std())
        goal = ""
        if k in GOALS:
            base, budget = GOALS[k]
            loss = 100 * (np.mean([r[base] for r in results]) - v.mean())
            goal = f"loss {loss:+.2f} pp (<= {budget}) {'ok' if loss <= budget else 'MISSED'}"
        elif "weight bytes ratio" in k:
            goal = f">= 3.9x {'ok' if mean >= 3.9 else 'MISSED'}"
        unit = "%" if is_acc else ""
        print(f"{k:<36} {mean:>8.2f}{unit or ' '} {std:>7.2f}  {goal}")


if __name__ == "__main__":
    main()
