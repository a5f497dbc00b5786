"""ACATCore.analyze: one analysis on real CT, every map on the input grid, coverage, cancel, batch."""
from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest
import torch

from ACATCore import analyze, analyze_batch
from ACATCore.errors import ConfigError, InputError, ModelFileError
from ACATCore.io import read_volume
from ACATCore.counterfactual_options import DEFAULT_SEARCH
from ACATCore.pipeline import STAGES, Cancelled, _counterfactual_saliency, load_models
from ACATCore.preprocessing import prepare
from ACATCore.result import ATTENTION_NAMES
from ACATCore.volume import Volume
from pipeline_helpers import LUNG_CLASSES, chest_ct_path, geometry_equal, make_bundle, one_thread


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def lung_bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("lung_bundle"), "lung")


@pytest.fixture(scope="module")
def chest():
    return read_volume(chest_ct_path())


@pytest.fixture(scope="module")
def full_result(lung_bundle, chest):
    events = []
    with one_thread():
        result = analyze(chest, model=lung_bundle, steps=3, progress=lambda s, f: events.append((s, f)))
    return result, events


def test_every_map_on_the_input_grid(full_result, chest):
    result, _ = full_result
    maps = [result.saliency, *result.attention.values(), *result.counterfactuals.values()]
    assert set(result.attention) == set(ATTENTION_NAMES)
    assert list(result.counterfactuals) == LUNG_CLASSES
    for vol in maps:
        assert geometry_equal(vol, chest, exact=True)
        assert vol.array.dtype == np.float32 and np.isfinite(vol.array).all()
    assert 0.0 <= result.saliency.array.min() and result.saliency.array.max() == pytest.approx(1.0)
    assert result.probabilities.shape == (2,) and result.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert result.baseline_probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert result.class_names == LUNG_CLASSES and result.predicted_class in LUNG_CLASSES


def _lungs_of(chest):
    """The lung mask analyze bounds a lung model's maps to, on the chest's own grid."""
    from ACATCore.lung_mask import find_lungs
    from ACATCore.preprocessing import canonical_axes, from_canonical, to_canonical
    canonical = to_canonical(chest)
    return from_canonical(find_lungs(canonical.array, canonical.spacing), *canonical_axes(chest.direction))


def test_full_coverage_sees_every_slice(full_result, chest, lung_bundle):
    result, _ = full_result
    n = chest.shape[0]
    assert result.slices_seen.tolist() == list(range(n))
    assert result.slice_weights.shape == (n,) and np.isfinite(result.slice_weights).all()
    assert result.settings["coverage"] == "full" and len(result.settings["offsets"]) >= int(np.ceil(n / 11))
    # every seen slice that holds lung carries attention, and saliency where its lungs reach beyond the edge
    # band (nothing is left at zero by the merge); the maps are bounded to the lungs, so the slices below
    # them carry none
    from ACATCore.analysis_maps import EDGE_BAND, inner_region
    from ACATCore.pipeline import _input_pixel_sizes
    lungs = _lungs_of(chest)
    sizes = _input_pixel_sizes(prepare(chest, load_models(lung_bundle, "cpu").card["preprocessing"]))
    deep = inner_region(lungs, sizes, EDGE_BAND["lung"]).reshape(n, -1).any(axis=1)
    has_lung = lungs.reshape(n, -1).any(axis=1)
    assert n // 2 <= deep.sum() <= has_lung.sum() < n
    for maps, where in ((result.saliency.array, deep), (result.attention["fused"].array, has_lung)):
        assert (maps.reshape(n, -1).max(axis=1) > 0)[where].all() and not maps[~where].any()


def test_peak_and_counterfactual_in_hu(full_result, chest):
    result, _ = full_result
    i, j, k = result.peak_index
    from ACATCore.analysis_maps import PEAK_TOP, salient_peak
    assert PEAK_TOP["lung"] > 0                     # a lung model: the maximum of the most salient region
    assert (k, j, i) == salient_peak(result.saliency.array, PEAK_TOP["lung"])
    assert np.allclose(result.peak_lps, chest.index_to_physical((i, j, k)))
    for cf in result.counterfactuals.values():      # HU scale, close to the scan, not a [0, 1] image
        assert cf.array.min() < -500 and cf.array.max() > 100
        assert np.abs(cf.array - chest.array).mean() < 100


def test_progress_stages_in_order_and_monotonic(full_result):
    _, events = full_result
    stages = [s for s, _ in events]
    order = sorted(set(stages) - {"done"}, key=stages.index)         # by first appearance
    assert order == [s for s in STAGES if s != "write"]
    assert stages[-1] == "done" and events[-1][1] == 1.0
    fractions = [f for _, f in events]
    assert all(b >= a for a, b in zip(fractions, fractions[1:]))
    result, _ = full_result
    assert set(result.timings) == set(order)


def test_a_slab_card_sees_every_slice_in_one_sampling(tmp_path, chest):
    bundle = make_bundle(tmp_path / "slab", "lung", preprocessing_extra={"slab": True})
    result = analyze(chest, model=bundle, steps=2)              # coverage "full" by default
    assert result.settings["offsets"] == [0.0]
    np.testing.assert_array_equal(result.slices_seen, np.arange(chest.shape[0]))
    assert np.isfinite(result.slice_weights).all()
    moved = np.abs(result.counterfactuals["findings"].array - chest.array).max(axis=(1, 2))
    assert (moved > 0).sum() > 11            # the change reaches more slices than the 11 model slices


def test_sampled_coverage_marks_unseen_slices(lung_bundle, chest):
    result = analyze(chest, model=lung_bundle, coverage="sampled", steps=2)
    seen = result.slices_seen
    assert 0 < len(seen) <= 11
    unseen = np.setdiff1d(np.arange(chest.shape[0]), seen)
    assert np.isnan(result.slice_weights[unseen]).all() and np.isfinite(result.slice_weights[seen]).all()
    assert not result.saliency.array[unseen].any()
    for cf in result.counterfactuals.values():
        assert np.array_equal(cf.array[unseen], chest.array[unseen].astype(np.float32))


def test_saliency_is_the_saliency_modules(lung_bundle, chest):
    """The pipeline's saliency (computed from the same run as the counterfactual images) equals
    ACATCore.saliency.compute_saliency("counterfactual") on the same input."""
    from ACATCore.saliency import compute_saliency
    bundle = load_models(lung_bundle, "cpu")
    x = prepare(chest, bundle.card["preprocessing"]).tensor[None]
    ours, cf, recon = _counterfactual_saliency(bundle, x, 3, 100.0, None, {}, lambda f: None, lambda: None)
    theirs = compute_saliency("counterfactual", bundle.classifier, x, bundle.autoencoder, steps=3, alpha=100.0,
                              **DEFAULT_SEARCH)
    assert cf.shape == (1, 2, *x.shape[1:]) and recon.shape == x.shape
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_acat_reads_the_map_its_card_names(lung_bundle, chest):
    """A card whose training maps were the negative-target map at a fixed scale makes analyze feed ACAT
    exactly compute_saliency(target=0, scale=...) of the same search; a paper card feeds the
    class-agnostic map unchanged; a target outside the classes is a ModelFileError."""
    from ACATCore.pipeline import acat_saliency
    from ACATCore.saliency import compute_saliency
    bundle = load_models(lung_bundle, "cpu")
    x = prepare(chest, bundle.card["preprocessing"]).tensor[None]
    sal, cf, recon = _counterfactual_saliency(bundle, x, 3, 100.0, None, {}, lambda f: None, lambda: None)
    assert acat_saliency(bundle.card, cf, recon, sal) is sal
    card = {"data": {"training": {"saliency": {"options": {"target": 0, "scale": 0.05}}}}}
    ours = acat_saliency(card, cf, recon, sal)
    theirs = compute_saliency("counterfactual", bundle.classifier, x, bundle.autoencoder, target=0, scale=0.05,
                              steps=3, alpha=100.0, **DEFAULT_SEARCH)
    assert torch.allclose(ours, theirs, atol=1e-4)       # float32 rounding of the search, times 1 / 0.05
    assert 0 < float(ours.max()) <= 1 and not torch.allclose(ours, sal, atol=1e-3)
    card["data"]["training"]["saliency"]["options"]["target"] = 5
    with pytest.raises(ModelFileError, match="target 5"):
        acat_saliency(card, cf, recon, sal)
    smoothed = {"data": {"training": {"saliency": {"options": {"smooth_sigma": 2.0}}}}}
    theirs = compute_saliency("counterfactual", bundle.classifier, x, bundle.autoencoder, smooth_sigma=2.0,
                              steps=3, alpha=100.0, **DEFAULT_SEARCH)
    assert torch.allclose(acat_saliency(smoothed, cf, recon, sal), theirs, atol=1e-4)   # trained smoothed: fed smoothed


def test_reoriented_input_gives_the_same_analysis(lung_bundle, chest):
    """The same voxels stored in another axis order and direction: same probabilities, and each
    map is the same map, stored the same way as the input."""
    arr = np.ascontiguousarray(np.flip(chest.array, axis=2))           # i reversed
    direction = chest.direction.copy()
    direction[:, 0] *= -1
    origin = chest.index_to_physical((chest.shape[2] - 1, 0, 0))
    flipped = Volume(arr, spacing=chest.spacing, origin=origin, direction=direction)
    a = analyze(chest, model=lung_bundle, coverage="sampled", steps=2)
    b = analyze(flipped, model=lung_bundle, coverage="sampled", steps=2)
    assert np.allclose(a.probabilities, b.probabilities, atol=1e-5)
    assert np.allclose(np.flip(a.saliency.array, axis=2), b.saliency.array, atol=1e-5)
    assert np.allclose(a.peak_lps, b.peak_lps)


def test_input_is_never_modified(lung_bundle, chest, tmp_path):
    path = chest_ct_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    vol = read_volume(path)
    before = vol.array.copy()
    analyze(vol, model=lung_bundle, coverage="sampled", steps=1)
    analyze(path, model=lung_bundle, coverage="sampled", steps=1)
    assert np.array_equal(vol.array, before)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_cancel_stops_with_cancelled_and_writes_nothing(lung_bundle, chest, tmp_path):
    cancel = threading.Event()

    def progress(stage, fraction):
        if stage == "counterfactuals":
            cancel.set()

    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        analyze(chest, model=lung_bundle, steps=2, progress=progress, cancel=cancel, out=out)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    already = threading.Event()
    already.set()
    with pytest.raises(Cancelled):
        analyze(chest, model=lung_bundle, cancel=already)


def test_bad_inputs_raise_their_error(lung_bundle, tmp_path):
    with pytest.raises(InputError):
        analyze(np.zeros((64, 64)), model=lung_bundle)
    nan = np.full((12, 32, 32), -1000.0)
    nan[3, 3, 3] = np.nan
    with pytest.raises(InputError):
        analyze(nan, model=lung_bundle)
    with pytest.raises(InputError):
        analyze(tmp_path / "missing.nrrd", model=lung_bundle)
    with pytest.raises(ModelFileError):
        analyze(chest_ct_path(), model=tmp_path)              # a folder that is no bundle
    with pytest.raises(ConfigError):
        analyze(chest_ct_path(), model=lung_bundle, coverage="some")
    with pytest.raises(ConfigError):
        analyze(chest_ct_path(), model=lung_bundle, steps=-1)


def test_analyze_batch_records_errors_and_goes_on(lung_bundle, chest, tmp_path):
    bad = tmp_path / "flat.nrrd"
    from ACATCore.io import write_volume
    write_volume(Volume(np.zeros((12, 16, 16), np.int16)), bad)
    items = analyze_batch([chest_ct_path(), bad], model=lung_bundle, coverage="sampled", steps=1)
    assert [it.name for it in items] == ["CTChest4", "flat"]
    assert items[0].error is None and items[0].result is not None
    assert items[0].summary["predicted_class"] in LUNG_CLASSES
    assert items[1].result is None and "InputError" in items[1].error


def test_brain_head_ct_reports_territory_or_says_why(tmp_path):
    from ACATCore.data.synth import make_case
    from ACATCore.data.territories import TERRITORIES
    bundle = make_bundle(tmp_path / "brain", "brain")
    case = make_case("brain", 0, 0, 1, "IS-4")
    head = Volume(case["image"], spacing=case["spacing"], origin=case["origin"])
    result = analyze(head, model=bundle, coverage="sampled", steps=2)
    assert result.class_names == ["no lesion", "left", "right", "both"]
    assert list(result.counterfactuals) == ["no lesion", "lesion"]
    assert result.probabilities.shape == (4,)
    assert geometry_equal(result.saliency, head)
    if result.peak_territory is None:
        assert any("territory" in w or "posterior fossa" in w for w in result.warnings)
    else:
        assert result.peak_territory in TERRITORIES


def test_a_card_with_brain_only_slab_means_is_analysed_with_them(tmp_path):
    """The card's ``slab_mean`` reaches the model input: the baseline probabilities analyze reports are
    the classifier's on ``prepare`` with the card's spec, not on the plain slab mean."""
    from ACATCore.data.synth import make_case
    case = make_case("brain", 0, 0, 0, None, options={"acquisition": {"slice_mm": 5.0}})
    head = Volume(case["image"], spacing=case["spacing"], origin=case["origin"])
    extra = {"brain_extraction": True, "slab": True, "slab_mean": "brain"}
    bundle = load_models(make_bundle(tmp_path / "brain", "brain", preprocessing_extra=extra), "cpu")
    result = analyze(head, model=bundle, coverage="sampled", steps=1)
    spec = bundle.card["preprocessing"]
    for mean, same in (("brain", True), ("all", False)):
        with torch.no_grad():
            x = prepare(head, {**spec, "slab_mean": mean}).tensor[None]
            p = torch.softmax(bundle.classifier(x), dim=1)[0].numpy()
        assert np.allclose(p, result.baseline_probabilities, atol=1e-5) == same, (mean, p)


def test_peak_territory_finds_the_lesion_territory():
    """A saliency peak placed inside a synthetic lesion is reported in that lesion's territory."""
    from ACATCore.data.synth import make_case
    from ACATCore.data.territories import peak_territory
    case = make_case("brain", 0, 1, 2, "IS-4")
    head = Volume(case["image"], spacing=case["spacing"], origin=case["origin"])
    lesion = case["lesions"][0]
    k, j, i = lesion["centre_kji"]
    name, note = peak_territory(head, (i, j, k))
    assert note is None and name == lesion["territory"]


def test_cancel_takes_effect_inside_the_counterfactual_search(lung_bundle, chest):
    """Cancel is checked at every counterfactual step, not only between stages."""
    cancel = threading.Event()
    seen = []

    def progress(stage, fraction):
        seen.append(stage)
        if stage == "counterfactuals" and seen.count("counterfactuals") == 4:
            cancel.set()

    bundle = load_models(lung_bundle, "cpu")
    with pytest.raises(Cancelled):
        analyze(chest, model=bundle, coverage="sampled", steps=50, progress=progress, cancel=cancel)
    assert seen.count("counterfactuals") == 4                     # stopped at the next check
    assert not bundle.classifier.training and all(not p.requires_grad for p in bundle.classifier.parameters())


def test_models_stay_in_eval_mode_and_frozen(lung_bundle, chest):
    bundle = load_models(lung_bundle, "cpu")
    analyze(chest, model=bundle, coverage="sampled", steps=1)
    for net in (bundle.classifier, bundle.autoencoder, bundle.acat):
        assert not any(m.training for m in net.modules())
        assert not any(p.requires_grad for p in net.parameters())


def test_targets_one_at_a_time_give_the_same_maps(lung_bundle, chest):
    """A small pixel budget runs the counterfactual targets one at a time: same result."""
    bundle = load_models(lung_bundle, "cpu")
    x = prepare(chest, bundle.card["preprocessing"]).tensor[None]
    noop = (lambda f: None, lambda: None)
    together = _counterfactual_saliency(bundle, x, 3, 100.0, None, {}, *noop)
    apart = _counterfactual_saliency(bundle, x, 3, 100.0, None, {}, *noop, pixel_budget=x.numel() - 1)
    for a, b in zip(together, apart):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def test_channels_last_gives_the_same_maps(lung_bundle):
    """The CPU speed-up (channels-last weights) does not change the analysis."""
    from ACATCore.checkpoint import load_bundle
    chest = read_volume(chest_ct_path())
    fast_bundle = load_bundle(lung_bundle)
    fast = analyze(chest, model=fast_bundle, coverage="sampled", steps=3, channels_last=True)
    assert next(fast_bundle.classifier.parameters()).is_contiguous(memory_format=torch.channels_last)
    plain_bundle = load_bundle(lung_bundle)
    plain = analyze(chest, model=plain_bundle, coverage="sampled", steps=3, channels_last=False)
    weight = next(plain_bundle.classifier.parameters())
    assert weight.dim() == 4 and weight.is_contiguous()           # really the plain layout
    assert np.allclose(fast.probabilities, plain.probabilities, atol=1e-5)
    # float32 rounding differs between the layouts, and the adaptive FISTA search amplifies it (here up to
    # about 3e-3 of the map's max): the same map, not the same bits
    assert np.allclose(fast.saliency.array, plain.saliency.array, atol=1e-2)
    assert np.corrcoef(fast.saliency.array.ravel(), plain.saliency.array.ravel())[0, 1] > 0.9999
    assert fast.peak_index == plain.peak_index


def test_search_defaults_and_early_stop(lung_bundle, chest):
    """analyze runs the FAST search (FISTA, 7 steps) without early stop by default; early_stop=P stops a
    counterfactual at p >= P; the pipeline's saliency is compute_saliency's with the same options."""
    from ACATCore.counterfactual_options import FAST_SEARCH, FAST_STEPS, PAPER_SEARCH
    from ACATCore.saliency import compute_saliency
    assert DEFAULT_SEARCH == FAST_SEARCH and FAST_SEARCH["optimizer"] == "fista"
    bundle = load_models(lung_bundle, "cpu")
    res = analyze(chest, model=bundle, coverage="sampled")
    assert res.settings["early_stop"] is None and res.settings["steps"] == FAST_STEPS
    assert res.settings["search"]["optimizer"] == "fista"
    early = analyze(chest, model=bundle, coverage="sampled", steps=3, early_stop=0.6,
                    counterfactual_options=PAPER_SEARCH)
    assert early.settings["early_stop"] == 0.6 and early.settings["search"]["optimizer"] == "sgd"
    x = prepare(chest, bundle.card["preprocessing"]).tensor[None]
    for options in (PAPER_SEARCH, FAST_SEARCH):
        ours, _, _ = _counterfactual_saliency(bundle, x, 3, 100.0, 0.6, options, lambda f: None, lambda: None)
        theirs = compute_saliency("counterfactual", bundle.classifier, x, bundle.autoencoder, steps=3, stop_at=0.6,
                                  **options)
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_decoder_chunks_bound_the_brain_and_change_nothing(lung_bundle, chest):
    from ACATCore.pipeline import decode_chunk_for
    assert decode_chunk_for(torch.zeros(1, 11, 1, 128, 128)) is None           # lung: whole
    assert decode_chunk_for(torch.zeros(1, 11, 1, 400, 500)) == 4              # brain: 4 slices
    bundle = load_models(lung_bundle, "cpu")
    x = prepare(chest, bundle.card["preprocessing"]).tensor[None]
    noop = (lambda f: None, lambda: None)
    whole = _counterfactual_saliency(bundle, x, 3, 100.0, None, {}, *noop)
    parts = _counterfactual_saliency(bundle, x, 3, 100.0, None, {"decode_chunk": 2}, *noop)
    for a, b in zip(whole, parts):
        assert torch.allclose(a, b, atol=1e-5)


def test_smoothing_moves_the_peak_from_a_lone_pixel_to_the_lesion():
    """The shown map's peak: a lone bright pixel (decoder noise) beats a broad region of slightly lower
    values in the raw map, not once smoothed; 0 leaves the map as it is."""
    from ACATCore.analysis_maps import shown_saliency
    sal = torch.zeros(1, 3, 1, 40, 40)
    sal[0, 1, 0, 20:30, 20:30] = 0.8                      # the lesion: a 10 x 10 region
    sal[0, 1, 0, 5, 5] = 1.0                              # one pixel of noise
    assert shown_saliency(sal, 0.0) is sal
    shown = shown_saliency(sal, 2.0)
    _, s, _, y, x = np.unravel_index(int(shown.argmax()), shown.shape)
    assert s == 1 and 20 <= y < 30 and 20 <= x < 30
    assert float(shown.max()) == pytest.approx(1.0)
    assert float(shown[0, 0].abs().max()) == 0.0 and float(shown[0, 2].abs().max()) == 0.0   # slices not mixed


def test_the_input_grid_map_keeps_changes_outside_the_organ_out_of_it():
    """The shown map on the input grid: a strong change just outside the organ (chest wall, skull) would
    take the smoothed peak to the organ's edge if smoothed before being bounded; dropped first, the
    lesion inside keeps the peak. Outside ``keep`` the map is 0, its max is 1, slices are not mixed,
    a target whose counterfactual did not move (early stop) does not dilute the other."""
    from ACATCore.analysis_maps import input_grid_saliency
    keep = np.zeros((3, 40, 40), bool)
    keep[:, 10:30, 10:30] = True
    lesion = np.zeros((3, 40, 40), np.float32)
    lesion[1, 18:24, 18:24] = 100.0                       # HU: the change inside the organ
    wall = lesion.copy()
    wall[1, 10:30, 4:10] = 600.0                          # a far larger change just outside it
    sigmas = (0.0, 3.0, 3.0)
    from scipy import ndimage
    bled = np.where(keep, ndimage.gaussian_filter(np.abs(wall), sigmas), 0)   # smoothed, then bounded
    assert np.unravel_index(int(np.argmax(bled)), bled.shape)[2] == 10      # the organ's edge
    shown = input_grid_saliency([wall, np.zeros_like(wall)], sigmas, keep)
    k, j, i = np.unravel_index(int(np.argmax(shown)), shown.shape)
    assert k == 1 and 18 <= j < 24 and 18 <= i < 24
    assert shown.max() == pytest.approx(1.0) and not shown[~keep].any()
    assert not shown[0].any() and not shown[2].any()
    np.testing.assert_allclose(shown, input_grid_saliency([lesion], sigmas, keep), atol=1e-6)
    raw = input_grid_saliency([lesion, 0.5 * lesion], (0.0, 0.0, 0.0))      # 0: the paper's map, unsmoothed
    np.testing.assert_allclose(raw, lesion / 100.0, atol=1e-6)


def test_the_edge_band_is_measured_in_model_grid_pixels_in_plane():
    """``inner_region``: the voxels farther than ``band`` model pixels from the mask's edge, in-plane only;
    anisotropic pixels count by their own size; band 0 is the mask itself."""
    from ACATCore.analysis_maps import inner_region
    keep = np.zeros((4, 30, 40), bool)
    keep[1:3, 5:25, 5:35] = True
    inner = inner_region(keep, (None, 0.5, 0.25), 2.0)     # rows 4 px, columns 8 px per 2 model pixels
    rows, cols = np.nonzero(inner[1])
    assert rows.min() == 5 + 4 and rows.max() == 24 - 4 and cols.min() == 5 + 8 and cols.max() == 34 - 8
    assert (inner[1] == inner[2]).all() and not inner[0].any() and not inner[3].any()   # slices not crossed
    assert inner_region(keep, (None, 0.5, 0.25), 0.0) is keep
    sliver = np.zeros_like(keep)
    sliver[1, 10:13, 5:35] = True                                   # 3 rows: nothing 2 model pixels in
    assert inner_region(sliver, (None, 0.5, 0.25), 2.0) is sliver   # the band never empties the map
    moved = inner_region(np.moveaxis(keep, 0, 2), (0.5, 0.25, None), 2.0)                # slice axis last
    assert (moved == np.moveaxis(inner, 0, 2)).all()


def test_the_shown_lung_map_leaves_out_the_lungs_edge(lung_bundle, chest):
    """A lung model's shown map is zero outside the lungs and within ``EDGE_BAND`` model pixels of their
    edge, but not all zero; ``smoothing=0`` (the paper's map) keeps the whole lungs; the band is in
    model pixels, converted by the crop box."""
    from ACATCore.analysis_maps import EDGE_BAND
    from ACATCore.pipeline import _input_pixel_sizes
    bundle = load_models(lung_bundle, "cpu")
    p = prepare(chest, bundle.card["preprocessing"])
    sizes = _input_pixel_sizes(p)
    (j0, j1, i0, i1), (h, w) = p.box, p.tensor.shape[-2:]
    assert sizes[p.slice_axis] is None and sizes[p.perm[1]] == pytest.approx(h / (j1 - j0))
    assert sizes[p.perm[2]] == pytest.approx(w / (i1 - i0)) and sizes[p.perm[1]] < 1   # a crop larger than 64 px
    shown = analyze(chest, model=lung_bundle, coverage="sampled", steps=2)
    raw = analyze(chest, model=lung_bundle, coverage="sampled", steps=2, smoothing=0)
    lungs = _lungs_of(chest)
    from scipy import ndimage
    band = EDGE_BAND["lung"] / max(sizes[p.perm[1]], sizes[p.perm[2]])      # input pixels, at least
    cross = np.array([ndimage.generate_binary_structure(2, 1)])                   # in-plane, 4-connected
    edge = lungs & ~ndimage.binary_erosion(lungs, cross, iterations=int(band))     # Euclid <= band there
    assert shown.saliency.array.max() == pytest.approx(1.0)
    assert not shown.saliency.array[~lungs].any() and not shown.saliency.array[edge].any()
    assert raw.saliency.array[edge].any()


def test_the_peak_is_the_maximum_of_the_most_salient_region():
    """A broad region of slightly lower values (the lesion) wins the peak over a brighter lone speck and
    over a brighter but smaller region; within the winner the peak is its own maximum."""
    from ACATCore.analysis_maps import salient_peak
    sal = np.random.default_rng(0).uniform(0, 0.3, (20, 60, 60)).astype(np.float32)
    sal[8:12, 30:40, 30:40] = 0.8                         # the lesion: 400 voxels
    sal[10, 35, 36] = 0.85                                # its own maximum
    sal[3, 5, 5] = 1.0                                    # a lone speck of noise, the global max
    sal[15:17, 50:53, 10:13] = 0.95                       # a small bright patch: 18 voxels
    assert np.unravel_index(int(np.argmax(sal)), sal.shape) == (3, 5, 5)
    assert salient_peak(sal) == (10, 35, 36)
    assert salient_peak(np.zeros((4, 5, 5), np.float32)) is None
    one = np.zeros((4, 5, 5), np.float32)
    one[2, 3, 1] = 0.5
    assert salient_peak(one) == (2, 3, 1)
    assert salient_peak(sal, top=0) == (3, 5, 5)          # 0: the plain arg-max


def test_the_shown_map_is_smoothed_and_acat_reads_its_own(lung_bundle, chest):
    raw = analyze(chest, model=lung_bundle, coverage="sampled", steps=2, smoothing=0)
    shown = analyze(chest, model=lung_bundle, coverage="sampled", steps=2)
    assert raw.settings["smoothing"] == 0 and shown.settings["smoothing"] > 0
    np.testing.assert_allclose(shown.probabilities, raw.probabilities, atol=1e-6)   # ACAT's input unchanged
    a, b = raw.saliency.array, shown.saliency.array
    seen = raw.slices_seen
    assert float(b.max()) == pytest.approx(1.0) and not np.allclose(a, b)

    # mean in-plane gradient inside the lungs of the seen slices (the maps end at the lung mask's edge)
    from scipy import ndimage
    lungs = _lungs_of(chest)
    inside = ndimage.binary_erosion(lungs, np.ones((1, 5, 5), bool))[seen]

    def roughness(m):
        m = m[seen]
        dx = np.abs(np.diff(m, axis=-1))[inside[..., 1:] & inside[..., :-1]]
        dy = np.abs(np.diff(m, axis=-2))[inside[:, 1:] & inside[:, :-1]]
        return float(dx.mean() + dy.mean())
    assert roughness(b) < roughness(a)
    for bad in (-1, float("nan"), True, "2", 100):
        with pytest.raises(ConfigError, match="smoothing"):
            analyze(chest, model=lung_bundle, coverage="sampled", steps=1, smoothing=bad)
