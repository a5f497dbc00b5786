"""Training scripts (training/): Algorithm 1 end to end, DDP, resume, tables, clear errors.

Everything runs on tiny toy volumes (16 volumes of 6 x 32 x 32, a bright blob makes class 1) and
tiny models, with one thread, so the whole file takes well under two minutes on two shared cores.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ACATCore.data import synth
from ACATCore.errors import ACATError, ConfigError
from training import augment, cards, config, data, evaluate as E, loop, tables
from training.runtime import Runtime, setup_runtime, shutdown

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(300)


# ------------------------------------------------------------------------------------------------
# fixtures: a toy data set and a tiny config
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_datalist(tmp_path_factory) -> Path:
    from ACATCore.io import write_volume
    from ACATCore.volume import Volume
    out = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    items = []
    for i in range(16):
        label = i % 2
        a = rng.normal(-700, 30, size=(6, 32, 32)).astype(np.float32)
        m = np.zeros(a.shape, np.uint8)
        if label:
            z, y, x = rng.integers(1, 5), rng.integers(6, 26), rng.integers(6, 26)
            m[z - 1:z + 2, y - 4:y + 4, x - 4:x + 4] = 1
            a[m > 0] += 500
        write_volume(Volume(a, spacing=(1, 1, 3)), out / f"v{i}.nii.gz")
        write_volume(Volume(m, spacing=(1, 1, 3)), out / f"m{i}.nii.gz")
        items.append({"image": f"v{i}.nii.gz", "label": label, "mask": f"m{i}.nii.gz",
                      "size_group": "LS-1" if label else ""})
    (out / "datalist.json").write_text(json.dumps({"training": items}))
    return out / "datalist.json"


def tiny_config(datalist: Path, out: Path, **extra) -> dict:
    cfg = {
        "name": "tiny", "task": "lung", "out_dir": str(out), "seeds": [0],
        "data": {"source": "datalist", "datalist": str(datalist), "split": [0.5, 0.25, 0.25],
                 "preprocessing": {"slices": 4, "size": [32, 32]}},
        "baseline": {"model_config": {"block_inplanes": [4, 8, 8, 8], "layers": [1, 1, 1, 1]},
                     "epochs": 2, "lr": 1e-3, "batch_size": 4},
        "autoencoder": {"model_config": {"stem_channels": 4, "blocks_per_stage": 1},
                        "epochs": 1, "lr": 1e-3, "batch_size": 16},
        "saliency": {"options": {"steps": 2}},
        "acat": {"epochs": 1, "lr": 1e-4, "batch_size": 4},
        "evaluate": {"saliency_methods": ["counterfactual", "gradient"], "max_saliency_cases": 2,
                     "variance_cases": 2},
        "runtime": {"threads": 1, "tensorboard": False, "progress": False},
    }
    for key, value in extra.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


def resolved(cfg: dict) -> dict:
    """A config dict as load_config makes it: the defaults under it, validated."""
    return config.validate_config(config.merge(config.DEFAULTS, cfg))


def write_config(cfg: dict, path: Path) -> Path:
    path.write_text(json.dumps(cfg))
    return path


def params(path: Path) -> dict:
    """Trainable parameters of a resume checkpoint."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    return ck["model"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------
# clear errors
# ------------------------------------------------------------------------------------------------
def test_bad_config_values_raise_config_error(tmp_path, toy_datalist):
    with pytest.raises(ConfigError, match="unknown config key 'baseline.epoch'"):
        config.load_config(overrides=["baseline.epoch=3"])
    with pytest.raises(ConfigError, match="task must be"):
        config.load_config(overrides=["task=heart"])
    with pytest.raises(ConfigError, match="data.split"):
        config.load_config(overrides=["data.split=[0.5,0.5,0.5]"])
    with pytest.raises(ConfigError, match="multiples of 4"):
        config.load_config(overrides=["data.preprocessing={\"size\": [30, 32]}"])
    with pytest.raises(ConfigError, match="not found"):
        config.load_config(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        config.load_config(str(bad))
    with pytest.raises(ConfigError, match="unknown competitor"):
        config.load_config(overrides=['competitors=["resnet"]'])
    with pytest.raises(ConfigError, match="acat.start_margin"):
        config.load_config(overrides=["acat.start_margin=-0.1"])
    with pytest.raises(ConfigError, match="acat.validate_start"):
        config.load_config(overrides=['acat.validate_start="yes"'])
    rt = Runtime(device=torch.device("cpu"), world_size=2)
    with pytest.raises(ConfigError, match="multiple of processes"):
        loop.epoch_batches(10, 3, 0, 0, rt)


def test_a_dotted_override_sets_one_entry_of_a_whole_replaced_section():
    """--set saliency.options.target=0 adds to the config file's options (it used to replace them
    all, silently dropping e.g. the FISTA search); --set saliency.options={...} still replaces."""
    path = REPO / "training" / "configs" / "brain_synth_demo.json"
    options = json.loads(path.read_text())["saliency"]["options"]
    assert options, "the demo config names its search options"
    cfg = config.load_config(str(path), ["saliency.options.target=0", "saliency.options.scale=0.15",
                                         "baseline.model_config.pooling=topk"])
    assert cfg["saliency"]["options"] == {**options, "target": 0, "scale": 0.15}
    model_config = json.loads(path.read_text())["baseline"]["model_config"]
    assert cfg["baseline"]["model_config"] == {**model_config, "pooling": "topk"}
    whole = config.load_config(str(path), ['saliency.options={"steps": 3}'])
    assert whole["saliency"]["options"] == {"steps": 3}
    with pytest.raises(ConfigError, match="'steps' is not a section"):
        config.load_config(str(path), ["saliency.options.steps.x=1"])
    with pytest.raises(ConfigError, match="unknown config key 'salience'"):
        config.load_config(str(path), ["salience.options.steps=1"])


def test_synth_options_reach_the_generator_and_the_cache(tmp_path):
    """data.synth_options makes that variant of ACAT-Synth; a changed option regenerates the data."""
    with pytest.raises(ConfigError, match="do not apply to the lung task"):
        config.load_config(overrides=['data.synth_options={"contrast_hu": [5, 9]}'])
    with pytest.raises(ConfigError, match="unknown ACAT-Synth option"):
        config.load_config(overrides=['data.synth_options={"involvment": [0.1, 0.2]}'])
    cfg = config.load_config(overrides=["data.n=4", f"out_dir={json.dumps(str(tmp_path))}",
                                   'data.synth_options={"involvement": [0.2, 0.3]}',
                                   'data.preprocessing={"slices": 4, "size": [32, 32]}'])
    rt = Runtime(device=torch.device("cpu"))
    datalist = json.loads(data.datalist_path(cfg).read_text())
    assert datalist["options"] == {"involvement": [0.2, 0.3]}
    positives = [i for part in ("training", "validation", "test") for i in datalist[part] if i["label"]]
    assert positives and all(i["involvement"] >= 0.2 for i in positives)
    key = json.loads((data.prepare_dataset(cfg, rt) / "meta.json").read_text())["key"]
    cfg["data"]["synth_options"] = {"involvement": [0.05, 0.1]}
    datalist = json.loads(data.datalist_path(cfg).read_text())
    assert datalist["options"] == {"involvement": [0.05, 0.1]}
    assert json.loads((data.prepare_dataset(cfg, rt) / "meta.json").read_text())["key"] != key
    card = cards.model_card(cfg, "baseline", 0, {"train": [1], "val": [1], "test": [1]}, {})
    assert '"involvement": [0.05, 0.1]' in card["data"]["description"]
    assert f"generator version {synth.GENERATOR_VERSION}, seed" in card["data"]["description"]   # seeds' meaning


def test_data_prepared_in_several_processes_is_the_same_as_in_one(tmp_path, toy_datalist):
    """The cache that worker processes write holds the same inputs and masks, in datalist order."""
    arrays = {}
    for workers in (1, 2):
        cfg = resolved(tiny_config(toy_datalist, tmp_path / f"w{workers}"))
        cache = data.prepare_dataset(cfg, Runtime(device=torch.device("cpu")), workers=workers)
        arrays[workers] = [np.load(cache / f) for f in ("x.npy", "mask.npy", "y.npy")]
    for one, two in zip(arrays[1], arrays[2]):
        np.testing.assert_array_equal(one, two)
    x, mask, y = arrays[2]
    blob = x[:, :, 0][mask > 0].mean(), x[:, :, 0][mask == 0].mean()      # class 1's bright blob
    assert y.tolist() == [i % 2 for i in range(16)] and blob[0] > blob[1] + 0.1


def test_script_reports_bad_config_in_one_line(tmp_path):
    cfg = write_config({"task": "lung", "baseline": {"epochs": 0}}, tmp_path / "c.json")
    r = subprocess.run([sys.executable, "-m", "training.train_baseline", "--config", str(cfg)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == \
        "error: baseline.epochs must be a positive integer, not 0"


def test_missing_data_is_a_clear_error(tmp_path, toy_datalist):
    cfg = resolved(tiny_config(tmp_path / "nothing.json", tmp_path / "run"))
    rt = Runtime(device=torch.device("cpu"))
    with pytest.raises(ACATError, match="datalist .* not found"):
        data.load_splits(cfg, rt, 0)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"training": [{"image": "missing.nii.gz", "label": 0}]}))
    cfg["data"]["datalist"] = str(broken)
    with pytest.raises(ACATError, match="missing.nii.gz .* does not exist"):
        data.load_splits(cfg, rt, 0)


def test_baseline_that_does_not_fit_is_refused(tmp_path, toy_datalist):
    from ACATCore.models import build_model
    from training.train_acat import build_from_baseline
    cfg = resolved(tiny_config(toy_datalist, tmp_path))
    lung = build_model("lung_resnet50", block_inplanes=[4, 8, 8, 8], layers=[1, 1, 1, 1])
    card = {"task": "lung", "model_config": lung.config}
    net, how = build_from_baseline(cfg, "acat", lung, card)      # fits: both branches copied
    assert "baseline weights" in how
    assert torch.equal(net.trunk[0][0].weight, lung.trunk[0][0].weight)
    assert torch.equal(net.sal_trunk[0][0].weight, lung.trunk[0][0].weight)
    cfg["acat"]["model_config"] = {"block_inplanes": [8, 8, 8, 8]}   # a wider ACAT: no fit
    with pytest.raises(ConfigError, match="does not fit"):
        build_from_baseline(cfg, "acat", lung, card)
    cfg["acat"]["model_config"] = {}
    brain = build_model("brain_mtl", widths=[4, 4, 4, 4, 4, 4, 4])
    with pytest.raises(ConfigError):                                 # a brain baseline for lung
        build_from_baseline(cfg, "acat", brain, {"task": "brain", "model_config": brain.config})
    with pytest.raises(ACATError, match="not found"):
        cards.load_final(tmp_path / "seed0" / "baseline" / "model.safetensors", "baseline")


def test_acat_takes_the_contralateral_option_from_its_baseline(tmp_path, toy_datalist):
    from ACATCore.models import build_model
    from training.train_acat import build_from_baseline
    cfg = resolved(tiny_config(toy_datalist, tmp_path))
    cfg["task"], cfg["acat"]["model"], cfg["acat"]["model_config"] = "brain", "acat_brain", {}
    brain = build_model("brain_mtl", widths=[4, 4, 4, 4, 4, 4, 4], contralateral=True)
    net, how = build_from_baseline(cfg, "acat", brain, {"task": "brain", "model_config": brain.config})
    assert net.config["contralateral"] is True and "baseline weights" in how
    assert torch.equal(net.sal_trunk[0][0].weight, brain.trunk[0][0].weight)   # both branches read 2 channels


def test_competitors_start_from_the_baseline(tmp_path, toy_datalist):
    from ACATCore.models import build_model
    from training.train_acat import build_from_baseline
    cfg = resolved(tiny_config(toy_datalist, tmp_path))
    lung = build_model("lung_resnet50", block_inplanes=[4, 8, 8, 8], layers=[1, 1, 1, 1])
    card = {"task": "lung", "model_config": lung.config}
    x = torch.rand(1, 4, 1, 32, 32)
    for name in ("smic", "hsm", "spatt", "seatt"):
        net, how = build_from_baseline(cfg, name, lung, card)
        assert "baseline weights" in how, name
    # SalClassNet reads (image, saliency) as 2 channels: the image channel gets the baseline's
    # first filters, the saliency channel zeros, so it starts out as the baseline
    net, _ = build_from_baseline(cfg, "salclassnet", lung, card)
    w = net.trunk[0][0].weight
    assert w.shape[1] == 2 and torch.equal(w[:, :1], lung.trunk[0][0].weight)
    assert not w[:, 1:].any()
    lung.eval(), net.eval()
    with torch.no_grad():
        assert torch.allclose(net(x, torch.rand_like(x)), lung(x), atol=1e-5)
    cfg["competitor_config"] = {"vit": {"hidden_size": 16, "mlp_dim": 16, "num_layers": 1,
                                        "num_heads": 2, "patch_size": 8}}
    _, how = build_from_baseline(cfg, "vit", lung, card)
    assert how.startswith("random initialisation")


# ------------------------------------------------------------------------------------------------
# determinism, resume, DDP
# ------------------------------------------------------------------------------------------------
def test_batches_are_the_same_on_any_number_of_processes():
    one = Runtime(device=torch.device("cpu"))
    two = [Runtime(device=torch.device("cpu"), rank=r, world_size=2) for r in range(2)]
    single = loop.epoch_batches(13, 4, 7, 3, one, micro_batches=2)
    shards = [loop.epoch_batches(13, 4, 7, 3, rt) for rt in two]
    for step, chunks in enumerate(single):
        assert [c.tolist() for c in chunks] == [shards[r][step][0].tolist() for r in range(2)]
    seen = np.concatenate([c for chunks in loop.epoch_batches(13, 4, 7, 3, one) for c in chunks])
    assert sorted(seen.tolist()) == list(range(13))
    assert not np.array_equal(np.concatenate(loop.epoch_batches(13, 4, 7, 4, one)[0]),
                              np.concatenate(loop.epoch_batches(13, 4, 7, 3, one)[0]))


def test_killed_run_resumes_to_the_same_weights(tmp_path, toy_datalist):
    from training.train_baseline import train_baseline
    epochs = 6
    # uninterrupted reference, in this process
    ref_cfg = resolved(tiny_config(
        toy_datalist, tmp_path / "ref", baseline={"epochs": epochs}))
    rt = setup_runtime(ref_cfg)
    train_baseline(ref_cfg, 0, rt)
    # the same run in a subprocess, killed (SIGKILL) once a checkpoint exists, then resumed
    cfg = tiny_config(toy_datalist, tmp_path / "killed", baseline={"epochs": epochs})
    path = write_config(cfg, tmp_path / "killed.json")
    script = [sys.executable, "-m", "training.train_baseline", "--config", str(path)]
    proc = subprocess.Popen(script, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "seed0" / "baseline" / "checkpoint_last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists(), "the run never wrote a checkpoint"
    stopped = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    assert stopped < epochs - 1, "the run finished before it was killed"
    r = subprocess.run(script + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert f"resumed from {last} at epoch {stopped + 1}" in r.stdout
    a = params(tmp_path / "ref" / "seed0" / "baseline" / "checkpoint_last.pt")
    b = params(last)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = (tmp_path / "killed" / "seed0" / "baseline" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(e) for e in range(epochs)]


def test_channels_last_training_gives_the_contiguous_weights_to_float_rounding(tmp_path):
    cl = torch.channels_last
    weights, formats = {}, {}
    for flag in (True, False):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(2, 8, 3, padding=1), torch.nn.ReLU(),
                                  torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                                  torch.nn.Flatten(), torch.nn.Linear(8, 1))
        seen = formats.setdefault(flag, [])

        def loss(m, b, rt, seen=seen):
            seen.append(m[2].weight.is_contiguous(memory_format=cl) and not m[2].weight.is_contiguous())
            return (m(b["x"]) - 1).pow(2).mean()
        stage = loop.Stage("toy", loss=loss, validate=lambda m, d, rt: {"score": 0.0},
                           get_batch=lambda d, pos, epoch: {"x": d[torch.as_tensor(pos)]})
        hp = config.HyperParams(epochs=2, lr=1e-3, weight_decay=0.0, lr_min=1e-3, batch_size=4)
        data = torch.randn(8, 2, 16, 16, generator=torch.Generator().manual_seed(1))
        model = loop.fit(net, stage, {"train": data, "val": None}, hp,
                         Runtime(device=torch.device("cpu"), progress=False, channels_last=flag),
                         folder=tmp_path / str(flag), seed=0, tensorboard=False)[0]
        weights[flag] = {k: v.clone() for k, v in model.state_dict().items()}
    assert formats[True] and all(formats[True]) and not any(formats[False])
    # Adam moves a weight whose gradient is near zero by up to lr (1e-3) a step whatever its size,
    # so rounding can move such a weight by about lr; a wrong layout would move every weight
    for k, w in weights[False].items():
        torch.testing.assert_close(weights[True][k], w, rtol=1e-3, atol=1e-3, msg=lambda m, k=k: f"{k}: {m}")


def test_channels_last_is_the_cpu_default_and_spares_training_strided_1x1_convolutions(tmp_path, toy_datalist):
    cl = torch.channels_last
    for flag in (True, False):
        rt = setup_runtime(resolved(tiny_config(toy_datalist, tmp_path, runtime={"channels_last": flag})))
        assert rt.channels_last is flag
    assert setup_runtime(resolved(tiny_config(toy_datalist, tmp_path))).channels_last
    rt = Runtime(device=torch.device("cpu"), channels_last=True)
    plain = torch.nn.Sequential(torch.nn.Conv2d(6, 12, 3, stride=2), torch.nn.Conv2d(12, 12, 1))
    strided = torch.nn.Sequential(torch.nn.Conv2d(6, 12, 3), torch.nn.Conv2d(12, 12, 1, stride=2))
    assert rt.place(plain, trains=True)[0].weight.is_contiguous(memory_format=cl)
    assert rt.place(strided, trains=True)[0].weight.is_contiguous()       # crashes oneDNN's weight gradient
    assert not rt.place(strided)[0].weight.is_contiguous()                # no weight gradient: channels-last
    assert rt.place(strided)[0].weight.is_contiguous(memory_format=cl)


@pytest.mark.parametrize("name, model_config, shape", [
    ("autoencoder", {"stem_channels": 8, "blocks_per_stage": 1}, (32, 1, 80, 64)),
    ("lung_resnet50", {"block_inplanes": [8, 16, 32, 64], "layers": [1, 1, 1, 1]}, (4, 3, 1, 64, 64))])
def test_nets_with_strided_shortcuts_train_channels_last_with_the_contiguous_gradients(name, model_config, shape):
    """The autoencoder's and the lung ResNet's strided shortcuts are StridedPointwise (every second pixel, then a
    1x1 convolution), so they train in channels-last: a strided 1x1 convolution's channels-last weight gradient
    crashed the process at these sizes."""
    from ACATCore.models import build_model
    from ACATCore.models.common import StridedPointwise
    from training.runtime import has_strided_1x1
    torch.manual_seed(0)
    net = build_model(name, **model_config).train()
    assert not has_strided_1x1(net) and any(isinstance(m, StridedPointwise) for m in net.modules())
    rt = Runtime(device=torch.device("cpu"), channels_last=True)
    x = torch.rand(shape)
    grads = []
    for copy_ in (copy.deepcopy(net), rt.place(copy.deepcopy(net), trains=True)):
        out = copy_(x)
        (torch.nn.functional.mse_loss(out, x) if name == "autoencoder" else out.logsumexp(-1).sum()).backward()
        grads.append({k: p.grad for k, p in copy_.named_parameters()})
    assert next(copy_.parameters()).is_contiguous(memory_format=torch.channels_last)
    # oneDNN sums in another order: about 1% of the norm (a wrong layout: ~100%); a bias before a BatchNorm has a
    # gradient of zero up to rounding, left out
    compared = [k for k, g in grads[0].items() if g.norm() > 1e-4]
    assert len(compared) > 0.8 * len(grads[0])
    for k in compared:
        assert float((grads[1][k] - grads[0][k]).norm() / grads[0][k].norm()) < 0.03, k


def test_strided_pointwise_is_the_strided_1x1_convolution_it_replaces():
    from ACATCore.models.common import StridedPointwise
    torch.manual_seed(0)
    for bias in (False, True):
        conv = torch.nn.Conv2d(6, 12, 1, stride=2, bias=bias)
        pointwise = StridedPointwise.replacing(conv)
        assert pointwise.weight is conv.weight and set(dict(pointwise.named_parameters())) == \
            set(dict(conv.named_parameters()))
        y = torch.rand(4, 6, 20, 17)
        out = [conv(y), pointwise(y)]
        assert out[0].shape == (4, 12, 10, 9) and torch.allclose(out[0], out[1], atol=1e-6)
        grads = []
        for o in out:
            (o * torch.arange(o.numel()).reshape(o.shape)).sum().backward()
            grads.append(conv.weight.grad.clone())
            conv.zero_grad()
        torch.testing.assert_close(grads[0], grads[1])
    with pytest.raises(ValueError, match="not a plain strided 1x1"):
        StridedPointwise.replacing(torch.nn.Conv2d(6, 12, 3, stride=2))


def _fit_with_scores(folder: Path, scores: list, validate_start: bool, margin: float = 0.0, **hp_extra):
    """loop.fit of a linear model whose validation scores are `scores` in turn (the start's first
    when validate_start; 2 epochs unless hp_extra says otherwise); returns (start weights, fitted
    weights, best metrics, best epoch, log epochs); fit's count of epochs run must match the log."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    given = iter(scores)
    stage = loop.Stage("toy", loss=lambda m, b, rt: (m(b["x"]) - 1).pow(2).mean(),
                       validate=lambda m, d, rt: {"score": next(given)},
                       get_batch=lambda d, pos, epoch: {"x": d[torch.as_tensor(pos)]})
    hp = config.HyperParams(**{"epochs": 2, "lr": 0.1, "weight_decay": 0.0, "lr_min": 0.1, "batch_size": 4,
                               "validate_start": validate_start, "start_margin": margin, **hp_extra})
    model, metrics, best, ran = loop.fit(net, stage, {"train": torch.randn(8, 3), "val": None}, hp,
                                         Runtime(device=torch.device("cpu"), progress=False), folder=folder,
                                         seed=0, tensorboard=False)
    epochs = [r.split(",")[0] for r in (folder / "log.csv").read_text().splitlines()[1:]]
    assert ran == len([e for e in epochs if e != "-1"])
    return start, model.state_dict(), metrics, best, epochs


def test_validate_start_keeps_the_starting_weights_unless_an_epoch_beats_them(tmp_path):
    """acat.validate_start: the weights before training compete as epoch -1 (an identity-start ACAT's
    are its baseline's), so fine-tuning that never beats them on validation changes nothing."""
    start, fitted, metrics, best, epochs = _fit_with_scores(tmp_path / "kept", [0.9, 0.5, 0.9], True)
    assert best == -1 and metrics == {"score": 0.9} and epochs == ["-1", "0", "1"]   # a tie keeps the start
    assert all(torch.equal(fitted[k], start[k]) for k in start)
    start, fitted, metrics, best, epochs = _fit_with_scores(tmp_path / "beaten", [0.5, 0.6, 0.9], True)
    assert best == 1 and metrics == {"score": 0.9} and epochs == ["-1", "0", "1"]
    assert not torch.equal(fitted["weight"], start["weight"])
    start, fitted, metrics, best, epochs = _fit_with_scores(tmp_path / "near", [0.8, 0.81, 0.815], True, 0.02)
    assert best == -1 and metrics == {"score": 0.8}                      # within the margin: the start stays
    assert all(torch.equal(fitted[k], start[k]) for k in start)
    start, fitted, metrics, best, epochs = _fit_with_scores(tmp_path / "clear", [0.8, 0.83, 0.821], True, 0.02)
    assert best == 0 and metrics == {"score": 0.83}                      # beyond it: that epoch
    start, fitted, metrics, best, epochs = _fit_with_scores(tmp_path / "off", [0.5, 0.4], False)
    assert best == 0 and epochs == ["0", "1"]             # without it the first epoch is the floor
    assert not torch.equal(fitted["weight"], start["weight"])


def test_patience_stops_a_stage_that_no_longer_improves_on_validation(tmp_path):
    """<stage>.patience: training stops once that many epochs have passed without a new best (the start
    counts as the best with validate_start), keeping the best; null trains every epoch."""
    scores = [0.8, 0.7, 0.75, 0.79, 0.9, 0.95]                         # the start, then epochs 0-4
    start, fitted, metrics, best, epochs = _fit_with_scores(tmp_path / "p3", scores, True, epochs=5, patience=3)
    assert epochs == ["-1", "0", "1", "2"] and best == -1 and metrics == {"score": 0.8}
    assert all(torch.equal(fitted[k], start[k]) for k in start)
    _, _, metrics, best, epochs = _fit_with_scores(tmp_path / "p4", scores, True, epochs=5, patience=4)
    assert epochs == ["-1", "0", "1", "2", "3", "4"] and best == 4 and metrics == {"score": 0.95}
    _, _, metrics, best, epochs = _fit_with_scores(tmp_path / "all", scores[:4] + [0.7, 0.7], True, epochs=5)
    assert epochs == ["-1", "0", "1", "2", "3", "4"] and best == -1
    _, _, _, best, epochs = _fit_with_scores(tmp_path / "plain", [0.5, 0.6, 0.4, 0.4, 0.9], False, epochs=5,
                                             patience=2)
    assert epochs == ["0", "1", "2", "3"] and best == 1                 # 2 epochs after the best of epoch 1
    with pytest.raises(ConfigError, match="acat.patience"):
        config.load_config(overrides=["acat.patience=0"])
    with pytest.raises(ConfigError, match="autoencoder.cpu_bf16"):
        config.load_config(overrides=["autoencoder.cpu_bf16=1"])


def test_cpu_bf16_autocasts_the_training_steps_only(tmp_path, monkeypatch):
    """<stage>.cpu_bf16: a stage's training steps run under bf16 autocast on a CPU with native bf16 (its
    convolutions and matmuls in bf16, about 1.6x faster for the autoencoder on AVX-512), its validation in
    fp32; in fp32 on a CPU without native bf16 (emulated bf16 is several times slower); off by default."""
    from training import runtime
    for flag, native in ((False, True), (True, True), (True, False)):
        monkeypatch.setattr(runtime, "native_bf16", lambda native=native: native)
        seen = {"train": set(), "val": set()}

        def loss(m, b, rt):
            out = m(b["x"])
            seen["train"].add(out.dtype)
            return (out.float() - 1).pow(2).mean()

        def validate(m, d, rt):
            seen["val"].add(m(d).dtype)
            return {"score": 0.0}
        stage = loop.Stage("toy", loss=loss, validate=validate,
                           get_batch=lambda d, pos, epoch: {"x": d[torch.as_tensor(pos)]})
        hp = config.HyperParams(epochs=1, lr=0.1, weight_decay=0.0, lr_min=0.1, batch_size=4, cpu_bf16=flag)
        loop.fit(torch.nn.Linear(3, 1), stage, {"train": torch.randn(8, 3), "val": torch.randn(4, 3)}, hp,
                 Runtime(device=torch.device("cpu"), progress=False), folder=tmp_path / f"{flag}{native}", seed=0,
                 tensorboard=False)
        assert seen == {"train": {torch.bfloat16 if flag and native else torch.float32}, "val": {torch.float32}}


def test_saliency_cpu_bf16_searches_in_bf16_only_where_the_cpu_has_it(monkeypatch, tmp_path):
    """saliency.cpu_bf16: make_saliency's counterfactual search runs under bf16 autocast when the CPU computes
    bf16 natively (the classifier sees bf16 activations during the search), in fp32 where it would be emulated
    (several times slower) or when off; the maps come back float32 either way and close to fp32's."""
    from training import make_saliency as M, runtime
    cfg = resolved(tiny_config(tmp_path / "none.csv", tmp_path / "run",
                               saliency={"options": {"steps": 3, "alpha": 0.01, "fuse": False}}))  # hooks: convs
    torch.manual_seed(0)
    clf = cards.build(cfg["baseline"]["model"], cfg["baseline"]["model_config"], "lung").eval()
    ae = cards.build("autoencoder", cfg["autoencoder"]["model_config"], "lung").eval()
    rt = Runtime(device=torch.device("cpu"), progress=False)
    x = torch.rand(2, 4, 1, 32, 32)
    seen = set()
    for conv in [m for m in clf.modules() if isinstance(m, torch.nn.Conv3d | torch.nn.Conv2d)]:
        conv.register_forward_hook(lambda m, i, out: seen.add(out.dtype))
    maps = {}
    for flag, native in ((False, True), (True, False), (True, True)):
        monkeypatch.setattr(runtime, "native_bf16", lambda native=native: native)
        cfg["saliency"]["cpu_bf16"] = flag
        seen.clear()
        maps[flag, native] = M.saliency_maps(clf, ae, x, cfg, **M.search_precision(cfg, rt))
        assert maps[flag, native].dtype == torch.float32
        assert (torch.bfloat16 in seen) == (flag and native), (flag, native, seen)
    assert torch.equal(maps[False, True], maps[True, False])              # no native bf16: the fp32 maps
    low, full = maps[True, True].flatten(), maps[False, True].flatten()
    pearson = float(torch.corrcoef(torch.stack([low, full]))[0, 1])          # 0.975 here
    assert pearson > 0.9 and not torch.equal(low, full)
    with pytest.raises(ConfigError, match="saliency.cpu_bf16"):
        config.load_config(overrides=["saliency.cpu_bf16=1"])
    with pytest.raises(ConfigError, match="saliency.cpu_bf16"):
        config.load_config(overrides=["saliency.cpu_bf16=true", "saliency.method=gradient"])


def _ddp_worker(rank, world, port, cfg_path):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    from training.train_baseline import train_baseline
    cfg = config.load_config(cfg_path)
    rt = setup_runtime(cfg)
    try:
        train_baseline(cfg, 0, rt)
    finally:
        shutdown(rt)


def test_two_process_ddp_matches_one_process(tmp_path, toy_datalist):
    """2 gloo processes x batch 4 == 1 process x 2 micro-batches of 4 (the same samples share
    BatchNorm statistics in both). Tolerance: every trained parameter within 1e-5 (float sums in
    another order); BatchNorm running statistics are not compared (DDP keeps rank 0's)."""
    import torch.multiprocessing as mp
    one = tiny_config(toy_datalist, tmp_path / "one",
                      baseline={"batch_size": 8, "micro_batches": 2, "epochs": 2})
    two = tiny_config(toy_datalist, tmp_path / "two", baseline={"batch_size": 8, "epochs": 2})
    # the data cache is prepared once here so that the workers only train
    cfg_one = resolved(one)
    from training.train_baseline import train_baseline
    train_baseline(cfg_one, 0, setup_runtime(cfg_one))
    mp.start_processes(_ddp_worker, args=(2, free_port(), str(write_config(two, tmp_path / "two.json"))),
                       nprocs=2, join=True, start_method="spawn")
    a = params(tmp_path / "one" / "seed0" / "baseline" / "checkpoint_last.pt")
    b = params(tmp_path / "two" / "seed0" / "baseline" / "checkpoint_last.pt")
    from ACATCore.models import build_model
    net = build_model("lung_resnet50", **cfg_one["baseline"]["model_config"])
    names = [n for n, _ in net.named_parameters()]
    init_gap = max(float((a[n] - net.state_dict()[n]).abs().max()) for n in names)
    worst = max(float((a[n] - b[n]).abs().max()) for n in names)
    assert worst < 1e-5, f"DDP differs from one process by {worst}"
    assert init_gap > 1e-3           # and the weights did move
    log = (tmp_path / "two" / "seed0" / "baseline" / "log.csv").read_text()
    assert log.count("\n") == 3      # header + 2 epochs, written once (rank 0)


# ------------------------------------------------------------------------------------------------
# Algorithm 1 end to end and the tables
# ------------------------------------------------------------------------------------------------
def test_algorithm1_end_to_end(tmp_path, toy_datalist):
    from ACATCore.checkpoint import load_bundle, load_model
    from training.run_algorithm1 import run_algorithm1
    from training.export_bundle import export_bundle
    cfg = resolved(tiny_config(toy_datalist, tmp_path / "run", dropout_control=[0.5], limited_data=[4],
                               saliency={"cpu_bf16": True}))      # bf16 search where this CPU has it, else fp32
    rt = setup_runtime(cfg)
    written = run_algorithm1(cfg, rt)
    root = tmp_path / "run" / "seed0"
    from training.runtime import native_bf16
    made = load_model(root / "acat" / "model.safetensors")[1]["data"]["training"]["saliency"]
    assert made["cpu_bf16"] is True                                       # the setting, and what ran:
    assert made["precision"] == ("bf16" if native_bf16() else "fp32")
    for stage in ("baseline", "autoencoder", "acat", "dropout0.5"):
        model, card = load_model(root / stage / "model.safetensors")
        assert card["intended_use"].startswith("Trained on synthetic lesions")
        assert card["data"]["n_train"] == 8 and card["data"]["training"]["seed"] == 0
        assert (root / stage / "checkpoint_best.pt").exists()
        rows = list(csv.DictReader((root / stage / "log.csv").open()))
        assert card["metrics"]["epochs_run"] == sum(int(r["epoch"]) >= 0 for r in rows) > 0
    sal = np.load(root / "saliency" / "test.npy")
    assert sal.shape == (4, 4, 1, 32, 32) and 0 <= sal.min() and sal.max() <= 1
    assert {"table2_accuracy", "table7_sens_spec", "sec44_hit_scores", "table5_iou_dice",
            "table3_variances", "sec47_dropout", "table4_limited"} <= set(written)
    assert load_model(root / "limited4" / "acat" / "model.safetensors")[1]["data"]["n_train"] == 4
    assert "| 4 scans |" in (tmp_path / "run" / "tables" / "table4_limited.md").read_text()
    tables = tmp_path / "run" / "tables"
    assert "| ACAT |" in (tables / "table2_accuracy.md").read_text()
    assert "on positive test scans" in (tables / "sec44_hit_scores.md").read_text()
    assert (tables / "table2_accuracy.csv").read_text().startswith("Model,Accuracy,Seeds")
    assert len(list((tables / "predictions").glob("*.csv"))) == 5    # 3 models + 2 limited
    export_bundle(cfg, 0, tmp_path / "bundle")
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.card["model_name"] == "acat_lung"
    assert "test_accuracy" in bundle.card["metrics"]
    # a second run finds every stage done and retrains nothing
    before = (root / "acat" / "model.safetensors").stat().st_mtime_ns
    run_algorithm1(cfg, rt, tables=False)
    assert (root / "acat" / "model.safetensors").stat().st_mtime_ns == before


def test_saliency_tables_name_the_held_out_split_they_score():
    """evaluate.saliency_splits ["val"] (seed selection by localisation) must not print "test" in the title."""
    from training.evaluate import held_out_names
    assert held_out_names({"evaluate": {"saliency_splits": ["val"]}}) == "validation"
    assert held_out_names({"evaluate": {"saliency_splits": ["val", "test"]}}) == "validation and test"


def test_evaluate_can_score_every_method_on_smoothed_maps():
    """evaluate.smooth_sigma smooths each map in-plane before scoring (a lone bright pixel loses its peak to a
    blob); slices are not mixed; 0 leaves the map as it is; a bad value is refused when the config is read."""
    from training.evaluate import smoothed
    s = np.zeros((3, 16, 16), np.float32)
    s[1, 2, 2] = 1.0                              # a lone pixel
    s[1, 8:13, 8:13] = 0.6                        # a lesion-sized blob
    assert smoothed(s, 0.0) is s
    out = smoothed(s, 2.0)
    assert np.unravel_index(np.argmax(s), s.shape) == (1, 2, 2)
    assert np.unravel_index(np.argmax(out), out.shape) == (1, 10, 10)
    assert not out[0].any() and not out[2].any()
    raw = tiny_config(None, "unused")
    raw["evaluate"] = {"smooth_sigma": -1}
    with pytest.raises(ConfigError, match="evaluate.smooth_sigma: saliency smoothing"):
        resolved(raw)


def test_ablation_retrains_acat_on_its_own_maps_against_the_same_baseline(tmp_path, toy_datalist):
    """training.ablate_acat: a saliency override makes new maps (the card records them), a schedule
    override reuses the seed's maps, and every record scores the one baseline on the one split."""
    from ACATCore.checkpoint import load_model
    from training.ablate_acat import main as ablate, summary
    from training.run_algorithm1 import run_algorithm1
    raw = tiny_config(toy_datalist, tmp_path / "run")
    cfg_path = write_config(raw, tmp_path / "tiny.json")
    run_algorithm1(resolved(raw), setup_runtime(resolved(raw)), tables=False)
    ablate(["--config", str(cfg_path)])
    ablate(["--config", str(cfg_path), "--name", "neg",
            "--set", 'saliency.options={"steps": 2, "alpha": 0.01, "target": 0, "scale": 0.05}'])
    ablate(["--config", str(cfg_path), "--name", "long", "--set", "acat.epochs=2"])
    root = tmp_path / "run" / "seed0"
    own, neg = np.load(root / "saliency" / "test.npy"), np.load(root / "ablation_neg" / "saliency" / "test.npy")
    assert own.shape == neg.shape and neg.max() > 0 and not np.allclose(own, neg)
    assert (root / "ablation_long" / "saliency").is_symlink()
    neg_card = load_model(root / "ablation_neg" / "acat" / "model.safetensors")[1]
    assert neg_card["data"]["training"]["saliency"]["options"] == {"steps": 2, "alpha": 0.01, "target": 0,
                                                                   "scale": 0.05}
    long_card = load_model(root / "ablation_long" / "acat" / "model.safetensors")[1]
    assert long_card["data"]["training"]["hyperparameters"]["epochs"] == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "ablations.jsonl").read_text().splitlines()]
    assert [r["name"] for r in records] == ["config", "neg", "long"]
    assert all(r[s]["baseline"] == records[0][s]["baseline"] for r in records for s in ("val", "test"))
    table = summary(tmp_path / "run" / "ablations.jsonl")
    assert len(table.splitlines()) == 5 and "| neg | 1 |" in table


def test_tables_on_known_inputs(tmp_path):
    recs = [
        {"model": "baseline", "seed": 0, "y": [0, 1, 2, 3], "pred": [0, 1, 1, 3], "size": [0, 1, 2, 4],
         "n_train": None},
        {"model": "baseline", "seed": 1, "y": [0, 1, 2, 3], "pred": [0, 1, 2, 3], "size": [0, 1, 2, 4],
         "n_train": None},
        {"model": "acat", "seed": 0, "y": [0, 0, 1, 1], "pred": [1, 0, 1, 0], "size": [0, 0, 3, 3],
         "n_train": None},
    ]
    header, rows = tables.table_accuracy(recs)
    assert header == ["Model", "Accuracy", "Seeds"]
    # baseline: 75 % and 100 %: mean 87.5 %, SE = std([.75, 1], ddof=1)/sqrt(2) = 12.5 %
    assert rows == [["Baseline", "87.50% (12.50)", "2"], ["ACAT", "50.00%", "1"]]
    _, rows = tables.table_by_size(recs)
    assert rows[0] == ["Baseline", "100.00% (0.00)", "100.00% (0.00)", "50.00% (50.00)", "-",
                       "100.00% (0.00)"]
    assert rows[1] == ["ACAT", "50.00%", "-", "-", "50.00%", "-"]
    _, rows = tables.table_sens_spec(recs)
    # acat: positives {2, 3}: one found -> 50 %; negatives {0, 1}: one right -> 50 %
    assert rows[1] == ["ACAT", "50.00%", "50.00%", "50.00%"]
    assert rows[0][2] == "100.00% (0.00)"     # 'left' called for 'right' still counts as detected
    sal = [{"method": "counterfactual", "seed": 0, "hit": [1, 1, 0, 1], "iou": [.5, .5], "dice": [.6, .8]},
           {"method": "gradcam", "seed": 0, "hit": [0, 0, 0, 1], "iou": [.1, .3], "dice": [.2, .2]}]
    _, rows = tables.table_saliency(sal, ("hit",))
    assert rows[0][1] == "75.00% (25.00)" and rows[1][1] == "25.00% (25.00)" and rows[0][2] == "4"
    _, rows = tables.table_saliency(sal, ("iou", "dice"), pct=False)
    assert rows[0][1:3] == ["0.5000 (0.0000)", "0.7000 (0.1000)"]
    two_seeds = sal + [{"method": "counterfactual", "seed": 1, "hit": [0, 0], "iou": [.1],
                        "dice": [.1]}]
    _, rows = tables.table_saliency(two_seeds, ("hit",))
    assert rows[0][1] == "37.50% (37.50)"    # per-seed means .75 and 0: SE over seeds
    var = [{"model": "baseline", "noised": False, "seed": 0, "variances": [1.0, 2.0]},
           {"model": "acat", "noised": False, "seed": 0, "variances": [0.5, 0.25]},
           {"model": "baseline", "noised": True, "seed": 0, "variances": [4.0, 8.0]}]
    header, rows = tables.table_variances(var)
    assert rows == [["sigma^2,1", "1.000", "0.500", "4.000", "-"],
                    ["sigma^2,2", "2.000", "0.250", "8.000", "-"]]
    lim = [{"model": "baseline", "seed": 0, "y": [0, 1], "pred": [0, 1], "n_train": 50},
           {"model": "baseline", "seed": 0, "y": [0, 1], "pred": [0, 0], "n_train": 100},
           {"model": "acat", "seed": 0, "y": [0, 1], "pred": [1, 0], "n_train": 50}]
    header, rows = tables.table_limited(lim)
    assert header == ["Model", "50 scans", "100 scans"]
    assert rows == [["Baseline", "100.00%", "50.00%"], ["ACAT", "0.00%", "-"]]
    drop = [{"model": "dropout0.6", "seed": 0, "y": [1], "pred": [1]},
            {"model": "baseline", "seed": 0, "y": [1], "pred": [0]},
            {"model": "dropout0.2", "seed": 0, "y": [1], "pred": [0]}]
    _, rows = tables.table_dropout(drop)
    assert [r[0] for r in rows] == ["Baseline", "Baseline + feature dropout p=0.2",
                                    "Baseline + feature dropout p=0.6"]
    md = tables.write_table(tmp_path, "t", "T", tables.table_limited(lim), "note")
    assert md.splitlines()[2] == "| Model | 50 scans | 100 scans |"
    assert (tmp_path / "t.csv").read_text().splitlines()[1] == "Baseline,100.00%,50.00%"
    assert math.isnan(tables.mean_se([])[0])


def test_energy_in_lesion():
    s = np.zeros((2, 4, 4))
    mask = np.zeros((2, 4, 4), bool)
    mask[0, :2] = True
    s[0, 0, 0], s[1, 3, 3] = 3.0, 1.0
    assert E.energy_in(s, mask) == 0.75
    assert E.energy_in(np.ones_like(s), mask) == mask.mean()       # uniform map: chance level
    assert E.energy_in(np.zeros_like(s), mask) == 0.0


def test_lesion_region_for_hit_score():
    mask = np.zeros((2, 4, 4), np.uint8)
    mask[0, 1, 1] = 3                       # a lesion in territory 3
    regions = np.zeros((2, 4, 4), np.uint8)
    regions[:, :2] = 3
    regions[:, 2:] = 1
    brain = E.lesion_region(mask, regions, "brain")
    assert brain.sum() == 16 and brain[:, :2].all()
    assert E.lesion_region(mask, regions, "lung").sum() == 1


def test_augmentation_moves_image_and_saliency_together_and_keeps_the_background():
    import torch
    x = torch.zeros(3, 4, 1, 32, 24)
    x[:, :, :, 8:20, 6:14] = 0.5                                   # a "brain" on a zero background
    batch = {"x": x.clone(), "saliency": x.clone(), "y": torch.zeros(3, dtype=torch.long)}
    spatial = {"prob": 1.0, "rotate_deg": 15, "scale": 0.1, "translate": 0.1}
    out = augment.augment_batch(dict(batch), spatial, [4, 7, 9], seed=0, epoch=1)
    assert not torch.equal(out["x"], x)
    assert torch.allclose(out["x"], out["saliency"])                # one transform for both
    again = augment.augment_batch(dict(batch), spatial, [4, 7, 9], seed=0, epoch=1)
    assert torch.equal(again["x"], out["x"])                        # seeded: a resume repeats it
    intensity = augment.augment_batch(dict(batch), {"prob": 0.0, "gain": 0.1, "offset": 0.05, "noise": 0.02},
                                [4, 7, 9], seed=0, epoch=1)
    assert (intensity["x"][x == 0] == 0).all()                      # outside the brain stays 0
    assert not torch.equal(intensity["x"][x > 0], x[x > 0])
    assert augment.augment_batch(dict(batch), None, [4, 7, 9], 0, 1)["x"] is batch["x"]


def test_new_lr_gives_the_fresh_attention_tensors_their_own_rate():
    """acat.new_lr: the tensors ACAT did not take from the baseline (attention, fusion, gates, slice MLP)
    learn at new_lr, the rest at lr; without it one group."""
    from ACATCore.models import build_model
    from training.train_acat import build_from_baseline
    tiny = {"block_inplanes": [4, 4, 8, 8], "layers": [1, 1, 1, 1]}
    base = build_model("lung_resnet50", **tiny)
    cfg = config.load_config(None, ["task=lung", 'acat.model_config={"start": "identity"}'])
    net, _ = build_from_baseline(cfg, "acat", base, {"model_config": tiny, "task": "lung"})
    fresh = set(net.fresh_parameters)
    assert "gates" in fresh and any(n.startswith("attention.") for n in fresh)
    assert not any(n.startswith(("trunk.", "sal_trunk.", "heads.")) for n in fresh)
    hp = config.HyperParams(epochs=1, lr=1e-4, weight_decay=0.0, lr_min=0.0, batch_size=2, new_lr=1e-2)
    groups = loop.param_groups(net, hp)
    assert len(groups) == 2 and groups[1]["lr"] == 1e-2
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in net.parameters())
    plain = loop.param_groups(net, config.HyperParams(epochs=1, lr=1e-4, weight_decay=0.0, lr_min=0.0, batch_size=2))
    assert len(plain) == 1
    with pytest.raises(ConfigError, match="new_lr"):
        config.load_config(None, ["acat.new_lr=-1"])


def test_gate_reach_says_when_identity_gates_cannot_move():
    """Adam moves a gate by about lr a step: 20 epochs of 42 steps at 1e-4 reach 0.084 (the recipe whose
    ACAT stayed at its baseline even fed the true masks), new_lr 1e-2 reaches 8.4."""
    from training.train_acat import gate_reach
    hp = config.HyperParams(epochs=20, lr=1e-4, weight_decay=0.0, lr_min=0.0, batch_size=16)
    assert gate_reach(hp, 672) == pytest.approx(20 * 42 * 1e-4)
    assert gate_reach(hp, 673) == pytest.approx(20 * 43 * 1e-4)          # a last partial batch is a step
    assert gate_reach(dataclasses.replace(hp, new_lr=1e-2), 672) == pytest.approx(8.4)


def test_control_maps_are_the_lesion_a_decoy_or_noise():
    from training.make_control_saliency import control_maps
    masks = np.zeros((2, 3, 16, 16), np.uint8)
    masks[1, 1, 4:8, 4:8] = 2                         # volume 1 has a lesion on slice 1
    maps = control_maps("mask", masks, (2, 3, 1, 16, 16), np.random.default_rng(0)).astype(np.float32)
    assert maps.shape == (2, 3, 1, 16, 16) and not maps[0].any()
    assert maps[1].max() == 1.0 and maps[1, 1, 0, 6, 6] > 0.5 and maps[1, 1, 0, 14, 14] == 0
    decoy = control_maps("decoy", masks, (2, 3, 1, 16, 16), np.random.default_rng(0)).astype(np.float32)
    np.testing.assert_array_equal(decoy[0], maps[1])      # the lesion-free volume borrows a lesion's map
    np.testing.assert_array_equal(decoy[1], maps[1])
    noise = control_maps("noise", masks, (2, 3, 1, 16, 16), np.random.default_rng(0)).astype(np.float32)
    assert noise.min() == 0.0 and noise.max() == 1.0 and noise.std() > 0.05


def test_misplaced_decoys_point_a_fraction_of_the_lesions_elsewhere():
    """--misplaced F: a fraction F of the lesion volumes get another lesion's map, never their own."""
    from training.make_control_saliency import control_maps
    masks = np.zeros((10, 2, 16, 16), np.uint8)
    for i in range(8):                                # 8 lesion volumes, each its own place; 2 lesion-free
        masks[i, i % 2, i:i + 3, 2 * i:2 * i + 3] = 1
    own = control_maps("decoy", masks, (10, 2, 1, 16, 16), np.random.default_rng(0)).astype(np.float32)
    maps = control_maps("decoy", masks, (10, 2, 1, 16, 16), np.random.default_rng(0), 0.25).astype(np.float32)
    at_home = [np.array_equal(maps[i], own[i]) for i in range(8)]
    assert sum(at_home) == 6                          # 2 of 8 moved
    for i in np.flatnonzero(~np.array(at_home)):      # a moved one carries another lesion's map
        assert any(np.array_equal(maps[i], own[j]) for j in range(8) if j != i)
    assert all(maps[i].max() == 1.0 for i in range(10))


def test_focus_maps_keep_the_brightest_region_as_one_blob():
    from training.make_control_saliency import FOCUS_FRACTION, focus_maps
    rng = np.random.default_rng(0)
    maps = (0.3 * rng.random((2, 3, 1, 32, 32))).astype(np.float16)
    maps[0, 2, 0, 20:26, 5:11] = 1.0                  # a bright patch on slice 2 among weak noise
    focused = focus_maps(maps).astype(np.float32)
    assert focused.shape == maps.shape and focused.max(axis=(1, 2, 3, 4)).tolist() == [1.0, 1.0]
    peak = np.unravel_index(int(np.argmax(focused[0])), focused[0].shape)
    assert peak[0] == 2 and 20 <= peak[2] < 26 and 5 <= peak[3] < 11
    assert focused[0, 0].max() < 0.05                 # the noise elsewhere is gone
    assert (focused[0] > 0.5).mean() < 3 * FOCUS_FRACTION
