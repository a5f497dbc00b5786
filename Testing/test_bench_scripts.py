"""The fresh-case benchmarks (bench/) refuse a bundle they cannot trust in one line, before generating any case."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_brain_names_an_altered_bundle_in_one_line(tmp_path):
    bundle = tmp_path / "brain"
    shutil.copytree(REPO / "Resources" / "models" / "brain", bundle)
    weights = bundle / "classifier.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF                          # one flipped byte in the classifier's weights
    weights.write_bytes(bytes(data))
    run = subprocess.run([sys.executable, str(REPO / "bench" / "bench_brain.py"), "--bundle", str(bundle),
                          "--n", "4", "--rows", "demo", "--threads", "1"],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 2, (run.stdout, run.stderr)
    lines = [line for line in run.stderr.splitlines() if line.strip() and "Warning" not in line]
    assert lines == [lines[0]] and lines[0].startswith("error: classifier.safetensors does not match"), lines
    assert "row" not in run.stdout                        # no table started, no head generated


def test_lung_run_benches_refuse_a_brain_run_in_one_line():
    """The benches that read a finished lung run (bench_lung_peaks, bench_lung_shown_maps) load its config
    through one shared helper and stop with one line, not a traceback, when given a brain run."""
    config = REPO / "training" / "configs" / "brain_synth_demo.json"
    for script in ("bench_lung_peaks.py", "bench_lung_shown_maps.py"):
        run = subprocess.run([sys.executable, str(REPO / "bench" / script), "--config", str(config)],
                             capture_output=True, text=True, cwd=REPO, timeout=300)
        assert run.returncode == 1, (script, run.stdout, run.stderr)
        lines = [line for line in run.stderr.splitlines() if line.strip() and "Warning" not in line]
        assert lines == [f"{config} is a brain run; this benchmark reads lung runs"], (script, lines)


def test_stage_steps_projects_each_stage_from_its_step_time_and_the_config():
    """bench_stage_steps on a shrunken brain config: one row per stage, each projected as seconds x steps x epochs."""
    sys.path.insert(0, str(REPO / "bench"))
    from bench_stage_steps import stage_rows
    from training.config import load_config
    cfg = load_config(str(REPO / "training" / "configs" / "brain_synth_demo.json"),
                      ["data.n=40", "data.preprocessing.slices=2", "data.preprocessing.size=[32,64]",
                       "saliency.batch_size=2", "saliency.options.steps=2", "baseline.epochs=3",
                       "autoencoder.epochs=5"])
    rows = {stage: (s, minutes) for stage, s, minutes in stage_rows(cfg, procs=2, repeats=1)}
    assert list(rows) == ["baseline", "autoencoder", "maps", "acat"]
    train = 28                                               # 70% of 40
    s, minutes = rows["baseline"]
    assert s > 0 and abs(minutes - s * -(-train // 16) * 3 / 60) < 1e-9    # 2 steps of 16 a epoch, 3 epochs
    s, minutes = rows["autoencoder"]
    assert abs(minutes - s * -(-train * 2 // 32) * 5 / 60) < 1e-9          # 56 slices: 2 steps of 32, 5 epochs
    s, minutes = rows["maps"]
    assert abs(minutes - s * 40 / 2 / 60) < 1e-9                            # every volume, over 2 processes


def test_lung_shifts_move_the_breath_and_the_pose_with_their_labels():
    """bench/lung_shifts.py's anatomy shifts: the breath changes the lungs' air-like voxels only, and a turn or a
    flatter chest moves the image, the findings and the lungs together."""
    sys.path.insert(0, str(REPO / "bench"))
    import numpy as np
    from lung_shifts import shifted
    from ACATCore.data import synth
    from ACATCore.volume import Volume
    case = synth.make_case("lung", 4321, 0, 1, options={"involvement": [0.2, 0.3]})
    volume = Volume(case["image"], case["spacing"], case["origin"], case["direction"])
    image = volume.array.astype(np.float64)
    rng = np.random.default_rng(0)
    denser, moved = shifted("lungs+60", volume, case, rng)
    change = denser.array - image
    parenchyma = (case["regions"] > 0) & (case["mask"] == 0)
    assert np.all(np.abs(change[parenchyma] - 60) <= 1) and np.all(change[~parenchyma & (image > -1000)] == 0)
    for name in ("rotate10", "aspect1.15"):
        turned, moved = shifted(name, volume, case, rng)
        lungs, findings = moved["regions"] > 0, moved["mask"] > 0
        assert abs(int(lungs.sum()) - int((case["regions"] > 0).sum())) < 0.05 * lungs.sum()   # area kept
        assert np.median(turned.array[lungs & ~findings]) < -600                             # lungs still air
        assert np.median(turned.array[findings]) > np.median(turned.array[lungs & ~findings]) + 100
        assert not np.array_equal(lungs, case["regions"] > 0)


def test_inserted_lesions_darken_one_hemispheres_parenchyma_across_territories():
    """bench/inserted_lesions.py (bench_brain's insert:* rows): class 1 darkens the patient's left parenchyma only,
    by about the contrast asked inside the lesion, leaves CSF, bone and the other hemisphere as they were, and
    names every territory holding a fifth of the lesion; class 3 gives each side its own lesion."""
    sys.path.insert(0, str(REPO / "bench"))
    import numpy as np
    from inserted_lesions import insert, parenchyma
    from ACATCore.data import synth
    from ACATCore.data.territories import TERRITORIES
    head = synth.make_case("brain", 4321, 0, 0)
    before = head["image"].copy()
    case = insert(head, 1, np.random.default_rng(0), [15, 20], [20, 20])
    change = case["image"].astype(np.float32) - head["image"]
    left = np.isin(head["regions"], [n + 1 for n, t in enumerate(TERRITORIES) if t.endswith("_left")])
    assert case["mask"].sum() > 1000 and (case["mask"] > 0).sum() == (case["mask"][left] > 0).sum()
    assert change.max() <= 0 and np.all(change[~left] == 0)
    assert np.all(change[~parenchyma(head)] == 0)                                # CSF, bone and air untouched
    assert np.median(change[case["mask"] > 0]) < -15                             # 20 HU darker inside, edges fade
    assert case["lesions"] and {les["side"] for les in case["lesions"]} == {"left"}
    held = np.bincount(head["regions"][case["mask"] > 0], minlength=7)[1:]
    named = {les["territory"] for les in case["lesions"]}
    assert named == {t for t, n in zip(TERRITORIES, held) if n >= 0.2 * held.sum()}
    both = insert(head, 3, np.random.default_rng(1), [15, 20], [20, 20])
    assert {les["side"] for les in both["lesions"]} == {"left", "right"}
    assert np.array_equal(head["image"], before) and head["mask"].sum() == 0     # the head given is untouched


def test_classifier_bench_reads_inserted_rows_and_summarises_over_models(monkeypatch, capsys):
    """bench_brain_classifiers.py scores the insert:* rows on bench_brain's own heads (lesions inserted into
    lesion-free heads, not the generator's), and its summary gives each model's accuracy over all seeds'
    heads with the mean and standard error across the models."""
    sys.path.insert(0, str(REPO / "bench"))
    import numpy as np
    import bench_brain
    import bench_brain_classifiers as bbc
    seen = []
    monkeypatch.setattr(bbc, "probabilities", lambda models, case: seen.append(case) or [np.eye(4)[0]] * 2)
    rows = bbc.run([None, None], ["a", "b"], "insert:IS-3", 9400, 4, 3.0)
    labels = bbc.synth.class_plan(4, 4, 9400)
    assert [r["acc"] for r in rows] == [0.25, 0.25] and [r["spec"] for r in rows] == [1.0, 1.0]
    for index, (case, label) in enumerate(zip(seen, labels)):
        made = bench_brain.make_head("insert:IS-3", 9400, index, int(label), {}, None)
        assert np.array_equal(case["image"], made["image"]) and len(case["lesions"]) == (label > 0) + (label == 3)
    bbc.summary({"demo": [[1.0, 0.5], [0.5, 0.5]]}, ["seed0", "seed1"])
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("demo")][0]
    assert line.split() == ["demo", "75.0%", "50.0%", "62.5%", "12.5"]


def test_operating_point_raises_the_odds_of_a_lesion_and_keeps_the_sides_shares():
    """bench_operating_point.py's offset multiplies the odds of "any lesion" by e**offset and leaves how the
    lesion probability splits between left, right and both; offset 0 is the model as trained."""
    sys.path.insert(0, str(REPO / "bench"))
    import numpy as np
    from bench_operating_point import scores, shifted
    p = np.array([[0.5, 0.25, 0.2, 0.05], [0.9, 0.0, 0.1, 0.0]])
    assert np.allclose(shifted(p, 0.0), p, atol=1e-8)
    q = shifted(p, np.log(3.0))                       # odds 1 -> 3 and 1/9 -> 1/3
    assert np.allclose(q[0], [0.25, 0.375, 0.3, 0.075]) and np.allclose(q[1], [0.75, 0.0, 0.25, 0.0], atol=1e-8)
    s = scores(q, np.array([1, 0]), sizes=np.array([3, 0]))
    assert (s["acc"], s["sens"], s["spec"], s["side"], s["IS-3"]) == (1.0, 1.0, 1.0, 1.0, 1.0)
    assert np.isnan(s["IS-4"])


def test_localisation_bench_loads_a_fine_tuned_classifier_and_names_its_searches(tmp_path):
    """bench_autoencoder_localisation's --classifiers takes a training checkpoint of the seed's baseline (the
    training-only lesion-cell head dropped, every other weight the checkpoint's) and --searches config or
    NAME=JSON (the config's options updated), refusing what is not a JSON object in one line."""
    import pytest
    import torch
    sys.path.insert(0, str(REPO / "bench"))
    from bench_autoencoder_localisation import load_classifier, search_options
    own = REPO / "Resources" / "models" / "brain" / "classifier.safetensors"
    weights = {k: v.clone() for k, v in load_classifier("own", own).state_dict().items()}
    name = next(k for k, v in weights.items() if v.is_floating_point() and k.endswith("weight"))
    weights[name] += 1.0
    weights["lesion_cells.weight"] = torch.zeros(1, 64, 1, 1)           # the head that exists only in training
    torch.save({"model": weights, "epoch": 3}, tmp_path / "checkpoint_best.pt")
    tuned = load_classifier(str(tmp_path / "checkpoint_best.pt"), own).state_dict()
    assert "lesion_cells.weight" not in tuned and torch.equal(tuned[name], weights[name])
    assert not torch.equal(tuned[name], load_classifier("own", own).state_dict()[name])
    torch.save({"model": {name: weights[name]}}, tmp_path / "other.pt")   # another network's checkpoint
    with pytest.raises(SystemExit, match="is not a checkpoint of this run's baseline"):
        load_classifier(str(tmp_path / "other.pt"), own)
    config = {"steps": 7, "alpha": 100.0}
    assert search_options("config", config) == ("config", config)
    assert search_options('a1000={"alpha": 1000}', config) == ("a1000", {"steps": 7, "alpha": 1000})
    for bad in ("a1000", 'x={"alpha": 10', "x=[1, 2]"):
        with pytest.raises(SystemExit, match="^error: "):
            search_options(bad, config)
