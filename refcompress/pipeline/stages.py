"""The stage implementations a recipe names: each takes the model flowing through the
pipeline and returns the next one.  The technique packages stay independent; this module
is where they are composed.

Two models travel together: ``train`` (float, masks attached, what the next training stage
fine-tunes) and ``deploy`` (what the stage's report measures: sparse layers as CSR, shared
weights as codebooks, integer layers).  A stage that ends training (integer conversion)
sets ``train`` to None.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import nn, prune, quant
from ..errors import ArgumentError, ShapeError
from ..quant import convert as qconvert
from ..quant import qat as qqat
from .deep_compression import DeepCompressedConv2d, DeepCompressedLinear


@dataclass
class Context:
    """What stages share: the data, the original model (a distillation teacher), a seed."""

    data: object
    original: nn.Module
    seed: int = 0
    progress: bool = False
    nm: tuple | None = None  # (n, m, layers) of an earlier N:M prune stage: its layers deploy as NMLinear
    factored: dict = field(default_factory=dict)  # layer name -> "stage i (label)" of the lowrank stage that factored it


def _fit(model, ctx, st, epochs=None, lr=None, step_fn=None):
    """AdamW with a cosine-annealed learning rate (the masks, if any, stay enforced)."""
    epochs = st["epochs"] if epochs is None else epochs
    if epochs:
        d = ctx.data
        opt = nn.AdamW(list(model.parameters()), lr=st["lr"] if lr is None else lr, weight_decay=0.0)
        nn.fit(model.train(), d.X_train, d.y_train, optimizer=opt, epochs=epochs, batch_size=st["batch_size"],
               seed=ctx.seed, scheduler=nn.CosineAnnealingLR(opt, T_max=epochs) if step_fn is None else None,
               step_fn=step_fn, progress=ctx.progress)
    return model.eval()


def _val_accuracy(model, ctx):
    return float(nn.evaluate(model.eval(), ctx.data.X_val, ctx.data.y_val)["accuracy"])


def clone_with_masks(model):
    """A copy that keeps pruning masks (re-derived from the zeros the masks left)."""
    copy = qconvert.clone(model)
    masks = {name: m.weight.data != 0 for name, m in prune.masked_layers(model)}
    if masks:
        prune.apply_masks(copy, {n: mk for n, mk in masks.items()})
    return copy


def deploy_view(model, ctx=None):
    """The storage / speed form of a float model: the layers of an earlier N:M prune stage
    (``ctx.nm``) as NMLinear while they keep the pattern and their N:M storage is not larger
    than their CSR storage (``prune.nm_stored_bytes`` <= ``prune.csr_stored_bytes``: a later
    magnitude prune that zeroes far more than N of every M makes CSR the smaller form), other
    pruned Linear layers as CSR (kept dense where less than half is zero: CSR would cost more
    than it saves)."""
    copy = qconvert.clone(model)
    if ctx is not None and ctx.nm is not None:
        from .. import lowrank

        n, m, layers = ctx.nm
        factored = [f for f, x in copy.named_modules()
                    if isinstance(x, (lowrank.LowRankLinear, lowrank.Tucker2Conv2d, lowrank.CPConv2d))]
        keep = []
        for name, layer in copy.named_modules():
            if not (_plain_layer(layer, nn.Linear) and (layers is None or name in layers)) \
                    or any(name.startswith(f + ".") for f in factored):
                continue
            out_f, in_f = layer.weight.shape
            bias = layer.bias is not None
            nnz = int(np.count_nonzero(layer.weight.data))
            if prune.nm_stored_bytes(out_f, in_f, n, m, bias) <= prune.csr_stored_bytes(out_f, in_f, nnz, bias):
                keep.append(name)
        for name in keep:  # layer by layer: one that lost the pattern (e.g. factored since) goes to CSR below
            try:
                copy = prune.to_nm(copy, n, m, layers=[name])
            except (ArgumentError, ShapeError):
                pass
    if any(isinstance(m, nn.Linear) and np.mean(m.weight.data == 0) >= 0.5 for m in copy.modules()):
        copy = prune.to_sparse(copy, min_sparsity=0.5)
    return copy.eval()


# ---- stages --------------------------------------------------------------------------------


def stage_prune(model, st, ctx):
    d = ctx.data
    method, s, layers = st["method"], st["sparsity"], st["layers"]
    if method == "structured":
        prune.structured_prune(model, s, st["criterion"], d.X_train[:512], d.y_train[:512], layers=layers)
        _fit(model, ctx, st)
        return model, model
    if method == "nm":
        prune.nm_prune(model, st["n"], st["m"], layers=layers)
        _fit(model, ctx, st)
        ctx.nm = (st["n"], st["m"], layers)  # later stages' deployed models keep these layers N:M
        return model, prune.to_nm(qconvert.clone(model), st["n"], st["m"], layers=layers).eval()
    if method == "magnitude":
        if st["scope"] == "global":
            prune.global_magnitude_prune(model, s, layers=layers)
        else:
            prune.magnitude_prune(model, amount=s, layers=layers)
        _fit(model, ctx, st)
    elif method == "iterative":
        prune.iterative_prune(model, lambda m, r: _fit(m, ctx, st), lambda m: _val_accuracy(m, ctx),
                              sparsities=prune.geometric_sparsities(s, st["rounds"]), scope=st["scope"],
                              layers=layers, max_drop=st["max_drop"])
    elif method == "agp":
        # Zhu & Gupta: one pruning step per epoch over the first 3/4 of the epochs, the
        # sparsity rising on the cubic schedule while the weights train
        steps_per_epoch = -(-len(d.X_train) // st["batch_size"])
        pruner = prune.AGPPruner(model, s, n_steps=max(st["epochs"] * 3 // 4, 1), frequency=steps_per_epoch,
                                 scope=st["scope"], layers=layers,
                                 normalize="std" if st["scope"] == "global" else "none")
        _fit(model, ctx, st, step_fn=pruner.step_fn())
    return model, deploy_view(model, ctx)


def stage_finetune(model, st, ctx):
    _fit(model, ctx, st)
    return model, deploy_view(model, ctx)


def stage_distill(model, st, ctx):
    from .. import distill

    d = ctx.data
    distill.recover(model, ctx.original, d.X_train, d.y_train, epochs=st["epochs"], lr=st["lr"],
                    temperature=st["temperature"], alpha=st["alpha"], batch_size=st["batch_size"],
                    validation_data=(d.X_val, d.y_val), seed=ctx.seed, progress=ctx.progress)
    return model.eval(), deploy_view(model, ctx)


def _plain_layer(m, kinds=(nn.Linear, nn.Conv2d)):
    """Whether ``m`` is a float Conv2d / Linear (of ``kinds``) a prune or lowrank stage works
    on: subclasses included (a user's ``class MyLinear(nn.Linear)``), but not this library's
    compressed layers that subclass them (QAT, weight-shared and Deep Compression layers)."""
    from ..quant.qat import QATConv2d, QATLinear
    from ..quant.weight_sharing import SharedConv2d
    from .deep_compression import DeepCompressedConv2d

    return isinstance(m, kinds) and not isinstance(m, (QATLinear, QATConv2d, SharedConv2d, DeepCompressedConv2d))


def _output_layer(m):
    """The Conv2d / Linear whose output is ``m``'s output: ``m`` itself, or the last factor
    of a factored layer from a lowrank stage (LowRankLinear.second, Tucker2Conv2d.last,
    CPConv2d.pointwise_out); None for anything else."""
    from .. import lowrank

    if _plain_layer(m):
        return m
    if isinstance(m, (lowrank.LowRankLinear, lowrank.Tucker2Conv2d, lowrank.CPConv2d)):
        last = list(m.children())[-1]
        return last if _plain_layer(last) else None
    return None


def fold_batchnorm_for_sharing(model):
    """A copy of the Sequential ``model`` with every BatchNorm folded (eval statistics) into
    the layer before it: a Conv2d / Linear, or the output factor of a factored layer (a
    factored layer followed by BatchNorm, as a lowrank stage leaves it, computes
    BN(last(...)), so the BatchNorm folds into its last factor).  A BatchNorm after
    anything else is kept."""
    copy = qconvert.clone(model).eval()
    children = list(copy.named_children())
    keep = []
    i = 0
    while i < len(children):
        name, m = children[i]
        nxt = children[i + 1][1] if i + 1 < len(children) else None
        out = _output_layer(m)
        if out is not None and isinstance(nxt, (nn.BatchNorm1d, nn.BatchNorm2d)):
            fused = qconvert._fold(out, nxt)
            if out is m:
                m = fused
            else:
                m.set_submodule(list(m.named_children())[-1][0], fused)
            i += 1
        keep.append(m)
        i += 1
    return nn.Sequential(*keep).eval()


def _share(model, bits, ctx, st):
    """Every (masked) Linear / Conv2d becomes a shared-weight layer (inside a factored
    layer: each of its factors); centroids fine-tuned.  BatchNorm is folded into the layer
    before it first (eval statistics; after a factored layer, into its output factor): the
    shared weights are then the deployed ones, and inference runs no normalisation layers."""
    if isinstance(model, nn.Sequential) and any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model):
        model = fold_batchnorm_for_sharing(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, (nn.Linear, nn.Conv2d)) and not isinstance(m, (quant.SharedLinear, quant.SharedConv2d)):
            mask = prune.get_mask(m)
            mask = None if mask is None and np.all(m.weight.data != 0) else (m.weight.data != 0)
            if mask is not None and not mask.any():
                raise ArgumentError(f"stage {st.index} (quantize): method 'share': layer {name!r} has no nonzero "
                                    "weights left to share (an earlier stage pruned all of them: prune it less, "
                                    "or leave it out of that stage's 'layers')")
            new = (quant.SharedLinear.from_linear(m, bits, mask=mask) if isinstance(m, nn.Linear)
                   else quant.SharedConv2d.from_conv(m, bits, mask=mask))
            model.set_submodule(name, new)
    return _fit(model, ctx, st)


def stage_quantize(model, st, ctx):
    d = ctx.data
    calib = d.X_train[: st["calibration_samples"]]
    method = st["method"]
    if method == "share":
        model = _share(model, st["bits"], ctx, st)
        return model, model
    if method == "weight_only":
        return None, qconvert.quantize_weight_only(model, st["bits"], group_size=st["group_size"],
                                                   exclude=st["exclude"])
    if method == "dynamic":
        return None, qconvert.quantize_dynamic(model, exclude=st["exclude"])
    if method == "factored":
        return None, _quantize_factored(model, calib, st, ctx)
    if method == "qat":
        q = qqat.prepare_qat(model, weight_bits=st["bits"], act_bits=st["act_bits"], lsq=st["lsq"])
        if prune.masked_layers(model):  # a pruned model stays pruned while QAT trains
            prune.apply_masks(q, {n: m.weight.data != 0 for n, m in q.named_modules()
                                  if isinstance(m, (qqat.QATLinear, qqat.QATConv2d))})
        _fit(q, ctx, st)
        return None, qqat.convert_qat(q, rule=st["rule"])
    bits = st["bits"]
    if st["layer_bits"]:  # named layers get their bits, the others the stage's
        bits = {n: st["bits"] for n, m in model.named_children() if isinstance(m, (nn.Conv2d, nn.Linear))}
        bits.update(st["layer_bits"])
    return None, qconvert.quantize_static(model, calib, rule=st["rule"], weight_bits=bits, act_bits=st["act_bits"],
                                          per_channel=st["per_channel"], exclude=st["exclude"])


def _quantize_factored(model, calib, st, ctx=None):
    """The deployable form of ``model`` (:func:`deploy_view`: pruned layers stay sparse)
    with its factored Linear layers (LowRankLinear with dense factors, from an svd stage) in
    int8 (QuantizedLowRankLinear, each calibrated on the inputs that reach it in the float
    model on ``calib``).  A factor pruned to a sparse layer keeps its layer float."""
    from .. import lowrank

    deploy = deploy_view(model, ctx)
    factored = [(n, m) for n, m in deploy.named_modules() if type(m) is lowrank.LowRankLinear]
    names = [n for n, m in factored if m._factors() is not None]
    where = f"stage {st.index} (quantize): method 'factored'"
    if not factored:
        raise ArgumentError(f"{where} found no factored Linear layers (an earlier lowrank stage with method 'svd' "
                            "makes them; it keeps a layer dense when its factors would not be smaller)")
    if not names:
        raise ArgumentError(f"{where}: every factored layer has a factor pruned to >= 50 % zeros, which deploys as "
                            "a sparse float layer: nothing is left to run in int8 (prune the factors less, or drop "
                            "this stage)")
    seen = {n: [] for n in names}
    handles = [deploy.get_submodule(n).register_forward_hook(
        lambda mod, inp, out, n=n: seen[n].append(np.asarray(inp[0], np.float32).reshape(-1, mod.in_features)))
        for n in names]
    try:
        deploy(np.asarray(calib, np.float32))
    finally:
        for h in handles:
            h.remove()
    from ..lowrank import replace_layers

    replace_layers(deploy, {n: lowrank.QuantizedLowRankLinear.from_lowrank(deploy.get_submodule(n),
                                                                          np.concatenate(seen[n]))
                            for n in names})
    return deploy


def _conv_hw(model, x):
    """(input H, W), (output H, W) of every Conv2d, from one forward pass."""
    seen, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: seen.__setitem__(name, (inp[0].shape[2:], out.shape[2:]))))
    try:
        model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def lowrank_targets(model, method):
    """Names of the layers a lowrank stage of ``method`` can factor: Linear layers (svd) or
    ungrouped Conv2d layers (tucker2, cp), not inside a layer factored already."""
    from .. import lowrank

    factored = [n for n, m in model.named_modules()
                if isinstance(m, (lowrank.LowRankLinear, lowrank.Tucker2Conv2d, lowrank.CPConv2d))]
    return [n for n, m in model.named_modules()
            if (_plain_layer(m, nn.Linear) if method == "svd" else _plain_layer(m, nn.Conv2d) and m.groups == 1)
            and not any(n.startswith(f + ".") for f in factored)]


def stage_lowrank(model, st, ctx):
    from .. import lowrank

    shapes = _conv_hw(model, ctx.data.X_train[:1])
    again = [n for n in (st["layers"] or []) if n in ctx.factored]
    if again:  # e.g. an earlier stage without 'layers' factored it: a layer is factored once
        raise ArgumentError(f"stage {st.index} ({st.label()}) key 'layers': layer {again[0]!r} was factored by "
                            f"{ctx.factored[again[0]]} already; a layer is factored once (name it in one stage)")
    targets = [n for n in lowrank_targets(model, st["method"]) if st["layers"] is None or n in st["layers"]]
    plan = {}
    for name in targets:
        layer = model.get_submodule(name)
        if st["method"] == "svd":
            w = layer.weight.data
            if st["rank"] is not None:
                r = st["rank"]
            elif st["energy"] is not None:
                r = lowrank.rank_by_energy(np.linalg.svd(w, compute_uv=False), st["energy"])
            else:  # a Linear's multiply-adds per sample are its weights: mac_fraction = param_fraction
                frac = st["param_fraction"] if st["param_fraction"] is not None else st["mac_fraction"]
                r = max(1, int(frac * w.size / sum(w.shape)))
            r = min(r, min(w.shape))
            if r * sum(w.shape) >= w.size:
                continue  # factoring would not save anything
            plan[name] = {"method": "svd", "rank": r}
        else:
            frac = st["mac_fraction"]  # the only key the validator lets tucker2 / cp have
            hw_in, hw_out = shapes[name]
            if st["method"] == "tucker2":
                plan[name] = {"method": "tucker2",
                              "ranks": lowrank.tucker2_ranks_for_macs(layer.weight.shape, frac, hw_in, hw_out)}
            else:
                # the vertical depthwise conv keeps the input width: (H_out, W_in) after it
                mid = (hw_out[0], hw_in[1])
                plan[name] = {"method": "cp",
                              "rank": lowrank.cp_rank_for_macs(layer.weight.shape, frac, hw_in, mid, hw_out)}
    if plan:
        lowrank.factorize(model, plan)
        ctx.factored.update({n: f"stage {st.index} ({st.label()})" for n in plan})
    _fit(model, ctx, st)
    return model, deploy_view(model, ctx)


def stage_encode(model, st, ctx):
    """Deep Compression storage of every shared layer (relative indices + Huffman)."""
    out = qconvert.clone(model)
    for name, m in list(out.named_modules()):
        if isinstance(m, quant.SharedLinear):
            sw = m.shared()
            new = DeepCompressedLinear.from_weight(sw.dense(), sw.codebook, sw.indices,
                                                   None if m.bias is None else m.bias.data, index_bits=st["index_bits"],
                                                   bias_dtype=st["bias_dtype"])
            out.set_submodule(name, new)
        elif isinstance(m, quant.SharedConv2d):
            out.set_submodule(name, DeepCompressedConv2d.from_conv(m, m.codebook.data, m.indices,
                                                                   index_bits=st["index_bits"]))
    return None, out.eval()


STAGES = {
    "prune": stage_prune,
    "finetune": stage_finetune,
    "distill": stage_distill,
    "quantize": stage_quantize,
    "lowrank": stage_lowrank,
    "encode": stage_encode,
}


def check_applicable(recipe, model) -> None:
    """Refuse, before any work, a stage that cannot apply to ``model``."""
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    has_linear = any(isinstance(m, nn.Linear) for m in model.modules())
    names = {n for n, _ in model.named_modules()}
    for s in recipe.stages:
        where = f"{recipe.source}: stage {s.index} ({s.kind})"
        if s.kind == "lowrank" and s["method"] in ("tucker2", "cp") and not has_conv:
            raise ArgumentError(f"{where}: method {s['method']!r} factors convolutions, and the model has none")
        if s.kind == "lowrank" and s["method"] == "svd" and not has_linear:
            raise ArgumentError(f"{where}: method 'svd' factors Linear layers, and the model has none")
        for key in ("layers", "exclude"):
            unknown = set(s.params.get(key) or []) - names
            if unknown:
                raise ArgumentError(f"{where} key {key!r}: the model has no layers named {sorted(unknown)}")
        if s.kind == "lowrank" and s["layers"]:
            can = lowrank_targets(model, s["method"])
            bad = [n for n in s["layers"] if n not in can]
            if bad:
                what = "Linear layers" if s["method"] == "svd" else "ungrouped Conv2d layers"
                raise ArgumentError(f"{where} key 'layers': method {s['method']!r} factors {what}; {bad} are not "
                                    f"(the model's are {can})")
        if s.kind == "prune" and s["layers"]:
            can = [n for n, m in model.named_modules() if _plain_layer(m)]
            bad = [n for n in s["layers"] if n not in can]
            if bad:
                raise ArgumentError(f"{where} key 'layers': {bad} are not Linear / Conv2d layers of the model, "
                                    f"which a prune stage prunes (the model's are {can})")
        if s.kind == "quantize" and isinstance(model, nn.Sequential):
            weight_layers = {n for n, m in model.named_children() if isinstance(m, (nn.Conv2d, nn.Linear))}
            for key in ("exclude", "layer_bits"):
                bad = set(s.params.get(key) or []) - weight_layers
                if bad:
                    raise ArgumentError(f"{where} key {key!r}: {sorted(bad)} are not Conv2d / Linear layers of the "
                                        f"model (those are {sorted(weight_layers)})")
        if s.kind == "quantize" and s["method"] in ("static", "qat", "weight_only", "dynamic") \
                and not isinstance(model, nn.Sequential):
            raise ArgumentError(f"{where}: integer conversion needs a Sequential chain")
