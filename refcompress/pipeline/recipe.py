"""Recipes: a TOML file listing compression stages in order, validated before any work.

    name = "deep-compression"

    [[stage]]
    kind = "prune"            # prune | finetune | distill | quantize | lowrank | encode
    method = "iterative"
    sparsity = 0.95

    [[stage]]
    kind = "quantize"
    method = "share"
    bits = 4

Every stage kind has a schema (key -> type, default, allowed values).  Validation names the
file, the stage (index and kind), the key, the value and what was expected; unknown kinds
and keys are errors, and so are recipes that quantize twice or encode what was never
shared.  Whether a stage can apply to a particular model (e.g. Tucker-2 on a model without
convolutions) is checked by :func:`refcompress.pipeline.compress` before the first stage
runs.
"""

from __future__ import annotations

import math
import numbers
import os
import tomllib
from dataclasses import dataclass, field

from ..errors import ArgumentError

_ANY = object()


def _num(lo=None, hi=None, integer=False, lo_open=False):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or (integer and not isinstance(v, numbers.Integral)):
            return f"a{'n integer' if integer else ' number'}"
        if not math.isfinite(v):
            return "a finite number"
        if lo is not None and (v <= lo if lo_open else v < lo) or hi is not None and v > hi:
            return f"a number in {'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}]"
        return None
    return check


def _choice(*opts):
    def check(v):
        return None if v in opts else "one of " + ", ".join(repr(o) for o in opts)
    return check


def _str_list(v):
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        return None
    return "a list of layer names (strings)"


def _layer_list(v):
    problem = _str_list(v)
    if problem is None and not v:
        return "at least one layer name (leave the key out for every layer)"
    return problem


def _bool(v):
    return None if isinstance(v, bool) else "true or false"


_TRAIN = {"epochs": (_num(0, None, True), 2), "lr": (_num(0, None, lo_open=True), 1e-3),
          "batch_size": (_num(1, None, True), 32)}

SCHEMAS = {
    "prune": {
        "method": (_choice("magnitude", "iterative", "agp", "structured", "nm"), "iterative"),
        "sparsity": (_num(0, 1), 0.9),
        "scope": (_choice("global", "layer"), "layer"),
        "rounds": (_num(1, None, True), 5),
        "criterion": (_choice("l1", "l2", "mean_abs", "apoz", "taylor"), "l1"),
        "n": (_num(1, None, True), 2),
        "m": (_num(1, None, True), 4),
        "max_drop": (_num(0, 1), None),
        "layers": (_layer_list, None),
        **_TRAIN,
    },
    "finetune": dict(_TRAIN),
    "distill": {**_TRAIN, "temperature": (_num(0, None, lo_open=True), 4.0), "alpha": (_num(0, 1), 0.5)},
    "quantize": {
        "method": (_choice("static", "weight_only", "dynamic", "qat", "share", "factored"), "static"),
        "bits": (_num(2, 8, True), 8),
        "act_bits": (_num(2, 8, True), 8),
        "rule": (_choice("float", "fixedpoint"), "float"),
        "per_channel": (_bool, True),
        "group_size": (_num(1, None, True), None),
        "lsq": (_bool, False),
        "exclude": (_str_list, []),
        "layer_bits": (lambda v: None if isinstance(v, dict) and all(
                           isinstance(b, int) and not isinstance(b, bool) and 2 <= b <= 8 for b in v.values())
                       else "a table of layer name = bits (2 to 8)", {}),
        "calibration_samples": (_num(1, None, True), 512),
        **_TRAIN,
    },
    "lowrank": {
        "method": (_choice("svd", "tucker2", "cp"), "svd"),
        "energy": (_num(0, 1, lo_open=True), None),
        "rank": (_num(1, None, True), None),
        "param_fraction": (_num(0, 1, lo_open=True), None),
        "mac_fraction": (_num(0, 1, lo_open=True), None),
        "layers": (_layer_list, None),
        **_TRAIN,
    },
    "encode": {"index_bits": (_num(1, 16, True), 5), "bias_dtype": (_choice("float32", "float16"), "float32")},
}


# The keys each method of a stage kind takes (the others it ignores, or the validator refuses
# them): a sweep point that sets a stage's method drops the recipe's other keys.
_T = ("epochs", "lr", "batch_size")
METHOD_KEYS = {
    "prune": {
        "magnitude": {"sparsity", "scope", "layers", *_T},
        "iterative": {"sparsity", "scope", "rounds", "max_drop", "layers", *_T},
        "agp": {"sparsity", "scope", "layers", *_T},
        "structured": {"sparsity", "criterion", "layers", *_T},
        "nm": {"n", "m", "layers", *_T},
    },
    "quantize": {
        "static": {"bits", "act_bits", "rule", "per_channel", "exclude", "layer_bits", "calibration_samples"},
        "weight_only": {"bits", "group_size", "exclude"},
        "dynamic": {"exclude"},
        "qat": {"bits", "act_bits", "lsq", "rule", *_T},
        "share": {"bits", *_T},
        "factored": {"calibration_samples"},
    },
    "lowrank": {
        "svd": {"energy", "rank", "param_fraction", "mac_fraction", "layers", *_T},
        "tucker2": {"mac_fraction", "layers", *_T},
        "cp": {"mac_fraction", "layers", *_T},
    },
}


@dataclass
class Stage:
    kind: str
    params: dict
    index: int
    given: frozenset = frozenset()  # the keys the recipe sets (the others are defaults)

    def __getitem__(self, key):
        return self.params[key]

    def label(self) -> str:
        m = self.params.get("method")
        return f"{self.kind}" + (f":{m}" if m else "")


@dataclass
class Recipe:
    name: str
    stages: list = field(default_factory=list)
    source: str = "<dict>"


def _err(source, where, msg):
    raise ArgumentError(f"{source}: {where}: {msg}")


def recipe_from_dict(data: dict, source: str = "<dict>") -> Recipe:
    """Validate a recipe already parsed from TOML (or built in code)."""
    if not isinstance(data, dict):
        _err(source, "recipe", f"expected a table, got {type(data).__name__}")
    unknown = set(data) - {"name", "stage", "description"}
    if unknown:
        if data.get("model") == "bert":
            _err(source, "recipe", "model = \"bert\" is a transformer recipe: it is read by "
                 "refcompress.pipeline.transformer.load_transformer_recipe (refcompress compress minilm -r ...)")
        _err(source, "recipe", f"unknown top-level keys {sorted(unknown)} (expected name, description, [[stage]])")
    stages_raw = data.get("stage")
    if not isinstance(stages_raw, list) or not stages_raw:
        _err(source, "stage", "expected at least one [[stage]] table")
    stages = []
    for i, raw in enumerate(stages_raw):
        where = f"stage {i + 1}"
        if not isinstance(raw, dict):
            _err(source, where, f"expected a table, got {type(raw).__name__}")
        kind = raw.get("kind")
        if kind not in SCHEMAS:
            _err(source, f"{where} key 'kind'", f"expected one of {sorted(SCHEMAS)}, got {kind!r}")
        schema = SCHEMAS[kind]
        params = {}
        for key, value in raw.items():
            if key == "kind":
                continue
            if key not in schema:
                _err(source, f"{where} ({kind}) key {key!r}", f"unknown key; expected one of {sorted(schema)}")
            problem = schema[key][0](value)
            if problem:
                _err(source, f"{where} ({kind}) key {key!r}", f"expected {problem}, got {value!r}")
            params[key] = value
        for key, (_, default) in schema.items():
            params.setdefault(key, default)
        stages.append(Stage(kind, params, i + 1, frozenset(k for k in raw if k != "kind")))
    quantizers = [s for s in stages if s.kind == "quantize"]
    if len(quantizers) > 1:
        _err(source, f"stage {quantizers[1].index} (quantize)",
             f"the recipe already quantizes in stage {quantizers[0].index}; a model is quantized once")
    q = quantizers[0] if quantizers else None
    # stages after which the model is no longer a float model that trains
    final = [x for x in stages if x.kind == "encode" or (x.kind == "quantize" and x["method"] != "share")]
    for s in stages:
        where = f"stage {s.index} ({s.kind})"
        if final and s.index > final[0].index:
            _err(source, where, f"comes after stage {final[0].index} ({final[0].label()}), which ends the float "
                 "model: integer, weight-only and encoded models are not trained further")
        if s.kind == "encode" and not (q and q["method"] == "share" and q.index < s.index):
            _err(source, where, "needs an earlier quantize stage with method = 'share'")
        if s.kind in ("prune", "lowrank") and q and q["method"] == "share" and q.index < s.index:
            _err(source, where, f"comes after the weight sharing of stage {q.index}; prune and factor before sharing")
        if s.kind == "lowrank" and q and q["method"] in ("static", "dynamic", "weight_only", "qat") and s.index < q.index:
            _err(source, where, f"factored layers have no form of method {q['method']!r} (stage {q.index}); "
                 "quantize the factors with method = 'factored' (int8) or 'share', or factor without quantizing")
        if s.kind == "quantize" and s["method"] == "factored":
            if not any(x.kind == "lowrank" and x["method"] == "svd" and x.index < s.index for x in stages):
                _err(source, where, "method 'factored' quantizes factored Linear layers: it needs an earlier "
                     "lowrank stage with method = 'svd'")
            if s["bits"] != 8 or s["act_bits"] != 8:
                _err(source, where, f"method 'factored' is int8 (bits = 8, act_bits = 8), got bits = {s['bits']}, "
                     f"act_bits = {s['act_bits']}")
        if s.kind == "lowrank" and sum(s[k] is not None for k in ("energy", "rank", "param_fraction", "mac_fraction")) != 1:
            _err(source, where, "set exactly one of energy, rank, param_fraction, mac_fraction")
        if s.kind == "lowrank" and s["method"] in ("tucker2", "cp"):
            for key in ("energy", "rank", "param_fraction"):
                if s[key] is not None:
                    _err(source, f"{where} key {key!r}", f"method {s['method']!r} chooses its ranks by the "
                         "fraction of the convolution's multiply-adds it keeps: set mac_fraction instead")
        if s.kind == "lowrank":
            # a later stage of the same family factors the layers the earlier ones left
            # (lowrank_targets skips factored layers); a layer is factored once
            family = ("svd",) if s["method"] == "svd" else ("tucker2", "cp")
            for x in stages:
                if x.kind == "lowrank" and x.index < s.index and x["method"] in family and s["layers"]:
                    both = [n for n in s["layers"] if x["layers"] is not None and n in x["layers"]]
                    if both:
                        _err(source, f"{where} key 'layers'", f"layer {both[0]!r} is factored by stage {x.index} "
                             f"({x.label()}) already; a layer is factored once (name it in one stage)")
        if s.kind == "prune" and s["method"] == "agp" and s["epochs"] < 2:
            _err(source, f"{where} key 'epochs'", f"the gradual schedule needs at least 2 epochs, got {s['epochs']}")
        if (s.kind == "distill" or (s.kind == "quantize" and s["method"] == "qat")) and s["epochs"] < 1:
            _err(source, f"{where} key 'epochs'", f"expected at least 1 epoch for {s.label()}, got {s['epochs']}")
        if s.kind == "quantize" and s["method"] != "static" and not s["per_channel"]:
            _err(source, f"{where} key 'per_channel'", f"only method 'static' offers per-layer weight scales, "
                 f"not {s['method']!r}")
        if s.kind == "quantize" and s["method"] in ("qat", "share", "factored") and (s["exclude"] or s["layer_bits"]):
            every = "every factored Linear layer" if s["method"] == "factored" else "every layer"
            _err(source, where, f"method {s['method']!r} quantizes {every}; 'exclude' applies to static, "
                 "weight_only and dynamic, 'layer_bits' to static")
        if s.kind == "quantize" and s["method"] in ("weight_only", "dynamic") and s["layer_bits"]:
            _err(source, f"{where} key 'layer_bits'", f"method {s['method']!r} quantizes every layer it converts "
                 "at one bit width; per-layer bits are offered by method 'static'")
        if s.kind == "quantize" and s["method"] == "dynamic" and s["bits"] != 8:
            _err(source, f"{where} key 'bits'", f"method 'dynamic' is int8 (bits = 8), got {s['bits']}")
        if s.kind == "quantize" and s["method"] in ("static", "weight_only", "dynamic", "factored"):
            trained = sorted(set(_TRAIN) & s.given)
            if trained:
                _err(source, f"{where} key {trained[0]!r}", f"method {s['method']!r} converts the model without "
                     "training it; epochs, lr and batch_size apply to methods 'share' and 'qat' (or add a "
                     "finetune stage before this one)")
    name = data.get("name", os.path.splitext(os.path.basename(source))[0])
    if not isinstance(name, str):
        _err(source, "key 'name'", f"expected a string, got {name!r}")
    return Recipe(name, stages, source)


def load_recipe(path) -> Recipe:
    """Read and validate a TOML recipe file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ArgumentError(f"recipe: no such file {path!r}") from None
    except OSError as exc:
        raise ArgumentError(f"recipe: cannot read {path!r}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ArgumentError(f"{path}: not valid TOML ({exc})") from None
    return recipe_from_dict(data, path)
