"""Tests of ACATCore.models: shapes, the paper's equations, symmetry, gradients, the build contract.

Tiny widths keep it fast on a shared CPU; the paper's input sizes are checked once per baseline/ACAT.
"""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ACATCore.errors import ConfigError, InputError
from ACATCore.models import MODEL_NAMES, build_model, calibrate_batchnorm, combine_mtl
from ACATCore.models.common import SliceAttention, SpatialAttention, modulate

torch.set_num_threads(2)

TINY_BRAIN = {"widths": [4, 4, 6, 6, 8, 8, 8]}
TINY_LUNG = {"block_inplanes": [4, 4, 8, 8], "layers": [1, 1, 1, 1]}
TINY_VIT = {"hidden_size": 32, "mlp_dim": 32, "num_layers": 2, "num_heads": 16, "patch_size": 16}
COMPETITORS = ("smic", "salclassnet", "hsm", "spatt", "seatt", "vit")
SALIENCY_MODELS = {"acat_brain", "acat_lung", "smic", "salclassnet", "hsm"}


def tiny_config(name: str, backbone: str, size=(64, 64)) -> dict:
    if name == "autoencoder":
        return {"stem_channels": 8}
    if name == "vit":
        return {"backbone": backbone, "image_size": list(size), **TINY_VIT}
    cfg = dict(TINY_BRAIN if backbone == "brain" else TINY_LUNG)
    if name in COMPETITORS:
        cfg["backbone"] = backbone
    return cfg


# every (name, backbone) pair of a classifier
CLASSIFIERS = [("brain_mtl", "brain"), ("acat_brain", "brain"), ("lung_resnet50", "lung"), ("acat_lung", "lung")] + \
    [(c, b) for c in COMPETITORS for b in ("brain", "lung")]


def run(model, x, s=None, **kw):
    return model(x, s, **kw) if model.needs_saliency else model(x)


def test_model_names_cover_the_paper():
    assert set(MODEL_NAMES) >= {"brain_mtl", "lung_resnet50", "autoencoder", "acat_brain", "acat_lung", *COMPETITORS}


@pytest.mark.parametrize("name,backbone", CLASSIFIERS + [("autoencoder", None)])
def test_build_round_trip(name, backbone):
    model = build_model(name, **tiny_config(name, backbone))
    assert model.model_name == name
    assert json.loads(json.dumps(model.config)) == model.config  # JSON-serialisable and fully resolved
    again = build_model(model.model_name, **model.config)
    assert again.config == model.config
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert model.needs_saliency == (name in SALIENCY_MODELS)
    if name != "autoencoder":
        assert model.num_classes == (4 if backbone == "brain" else 2)
        assert isinstance(model.cam_layer, nn.Module)
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in model.modules()), "in-place ReLU breaks hooks"


def test_bad_names_and_options():
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("resnet9000")
    with pytest.raises(ConfigError, match="unknown option"):
        build_model("brain_mtl", colour="red")
    with pytest.raises(ConfigError, match="7 entries"):
        build_model("brain_mtl", widths=[4, 4])
    with pytest.raises(ConfigError, match="backbone"):
        build_model("smic", backbone="knee")
    with pytest.raises(ConfigError, match="lung"):
        build_model("spatt", backbone="brain", block_inplanes=[4, 4, 8, 8])
    with pytest.raises(ConfigError, match="attention_pool"):
        build_model("acat_lung", attention_pool="median", **TINY_LUNG)


SIZES = {"brain": [(1, 1, 32, 64), (2, 3, 48, 80)], "lung": [(1, 1, 32, 32), (2, 3, 48, 40)]}


@pytest.mark.parametrize("name,backbone", CLASSIFIERS)
def test_classifier_shapes(name, backbone):
    for b, s, h, w in SIZES[backbone]:
        torch.manual_seed(0)
        model = build_model(name, **tiny_config(name, backbone, (h, w)) if name != "vit" else
                            {**tiny_config(name, backbone), "image_size": [h, w], "patch_size": 8})
        model.eval()
        x = torch.rand(b, s, 1, h, w)
        sal = torch.rand_like(x)
        seen = {}

        def hook(module, inputs, output):
            seen["cam"] = output.shape

        handle = model.cam_layer.register_forward_hook(hook)
        with torch.no_grad():
            logits = run(model, x, sal)
            cf = model.counterfactual_logits(x, sal) if model.needs_saliency else model.counterfactual_logits(x)
        handle.remove()
        assert logits.shape == (b, model.num_classes)
        assert torch.isfinite(logits).all()
        assert cf.shape == (b, 2)
        cam = seen["cam"]
        assert len(cam) == 4 and cam[0] == b * s
        if backbone == "brain":
            # 4-class log-probabilities, P(none) = P(no lesion)
            assert torch.allclose(logits.exp().sum(-1), torch.ones(b), atol=1e-5)
            lesion, side = model.forward_heads(x, sal) if model.needs_saliency else model.forward_heads(x)
            assert lesion.shape == (b, 2) and side.shape == (b, 3)
            assert torch.allclose(logits[:, 0], torch.log_softmax(lesion, -1)[:, 0], atol=1e-6)
            assert torch.allclose(cf, lesion)


def test_combine_mtl_is_the_product_rule():
    lesion, side = torch.randn(5, 2), torch.randn(5, 3)
    p = combine_mtl(lesion, side).exp()
    pl, ps = lesion.softmax(-1), side.softmax(-1)
    assert torch.allclose(p[:, 0], pl[:, 0], atol=1e-6)
    assert torch.allclose(p[:, 1:], pl[:, 1:2] * ps, atol=1e-6)
    assert torch.allclose(p.sum(-1), torch.ones(5), atol=1e-6)


@pytest.mark.parametrize("backbone", ["brain", "lung"])
def test_acat_intermediates(backbone):
    name = f"acat_{backbone}"
    h, w = (48, 96) if backbone == "brain" else (64, 48)
    model = build_model(name, **tiny_config(name, backbone)).eval()
    x = torch.rand(2, 3, 1, h, w)
    with torch.no_grad():
        logits, inter = model(x, torch.rand_like(x), return_intermediates=True)
        plain = model(x, torch.rand_like(x))
    assert logits.shape == plain.shape == (2, model.num_classes)
    assert set(inter) == {"early", "middle", "late", "fused", "slice_weights"}
    sizes = []
    for key in ("early", "middle", "late", "fused"):
        m = inter[key]
        assert m.shape[:3] == (2, 3, 1), key
        assert m.min() >= 0 and m.max() <= 1, key  # sigmoid masks (fused too, by default)
        sizes.append(m.shape[-2] * m.shape[-1])
    assert sizes[0] > sizes[1] > sizes[2] >= sizes[3]  # coarser and coarser
    assert inter["slice_weights"].shape == (2, 3)
    assert torch.allclose(inter["slice_weights"].sum(1), torch.ones(2), atol=1e-5)  # normalised by default


@pytest.mark.parametrize("backbone", ["brain", "lung"])
def test_acat_identity_start_is_the_baseline_until_trained(backbone):
    tiny = TINY_BRAIN if backbone == "brain" else TINY_LUNG
    base = build_model("brain_mtl" if backbone == "brain" else "lung_resnet50", **tiny).eval()
    h, w = (48, 96) if backbone == "brain" else (32, 32)
    x = torch.rand(2, 3, 1, h, w)
    for start, same in (("paper", False), ("identity", True)):
        torch.manual_seed(1)
        model = build_model(f"acat_{backbone}", start=start, **tiny)
        model.init_from_baseline(base)
        model.eval()
        with torch.no_grad():
            diff = (model(x, torch.rand_like(x)) - base(x)).abs().max()
        assert (diff < 1e-5) == same, (start, float(diff))
    # the gates learn: one step of a loss moves them off zero, and the card keeps the option
    model.train()
    loss = nn.functional.cross_entropy(model(x, torch.rand_like(x)), torch.tensor([1, 0]))
    loss.backward()
    assert model.gates.grad is not None and model.gates.grad.abs().sum() > 0
    assert model.config["start"] == "identity" and "start" not in build_model(f"acat_{backbone}", **tiny).config
    with pytest.raises(ConfigError, match="normalise_slice_weights"):
        build_model(f"acat_{backbone}", start="identity", normalise_slice_weights=False, **tiny)


def test_acat_authors_flags():
    model = build_model("acat_lung", attention_batchnorm=True, fused_sigmoid=False, normalise_slice_weights=False,
                        slice_attention="joint", num_slices=3, **TINY_LUNG).eval()
    assert isinstance(model.attention[0].norm, nn.BatchNorm2d)
    x = torch.rand(2, 3, 1, 32, 32)
    with torch.no_grad():
        _, inter = model(x, torch.rand_like(x), return_intermediates=True)
    w = inter["slice_weights"]
    assert (w > 0).all() and (w < 1).all() and not torch.allclose(w.sum(1), torch.ones(2))
    with pytest.raises(InputError, match="3 slices"):
        model(torch.rand(1, 4, 1, 32, 32), torch.rand(1, 4, 1, 32, 32))
    with pytest.raises(ConfigError, match="num_slices"):
        build_model("acat_lung", slice_attention="joint", **TINY_LUNG)


def test_slice_attention_module():
    att = SliceAttention(6, hidden=5).eval()
    feats = torch.randn(2, 4, 6)
    pooled, w = att(feats)
    assert w.shape == (2, 4) and torch.allclose(w.sum(1), torch.ones(2))
    assert torch.allclose(pooled, (w.unsqueeze(-1) * feats).sum(1))
    names = [type(m).__name__ for m in att.mlp]
    assert names == ["Linear", "LeakyReLU", "Dropout", "Linear"] and att.mlp[2].p == 0.1


def test_equations_1_2_on_a_module():
    """G = F + F*S (Eq. 1 + skip) and dG/dtheta = dF/dtheta (S + 1) (Eq. 2), S from the saliency branch."""
    torch.manual_seed(1)
    model = build_model("acat_brain", **TINY_BRAIN).eval()
    image_layer, sal_layer, att = model.trunk[0], model.sal_trunk[0], model.attention[0]
    x, s = torch.rand(3, 1, 32, 16), torch.rand(3, 1, 32, 16)
    f = image_layer(x)  # F(theta)
    mask = att(sal_layer(s))  # S_s(eta)
    g = modulate(f, mask)
    assert mask.shape == (3, 1) + f.shape[2:]
    assert torch.allclose(g, f + f * mask)
    theta = [p for p in image_layer.parameters()]
    v = torch.randn_like(g)  # an arbitrary upstream gradient
    dg = torch.autograd.grad((g * v).sum(), theta, retain_graph=True)
    df_scaled = torch.autograd.grad((f * v * (mask.detach() + 1)).sum(), theta)
    for a, b in zip(dg, df_scaled):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    # and the mask does not depend on the image parameters
    assert all(gr is None for gr in torch.autograd.grad(mask.sum(), theta, allow_unused=True))


def test_spatial_attention_pooling_options():
    feats = torch.randn(2, 5, 6, 7)
    for pool in ("max", "avg"):
        att = SpatialAttention(pool)
        with torch.no_grad():
            att.conv.weight.zero_()
            att.conv.weight[0, 0, 1, 1] = 1.0
            att.conv.bias.zero_()
        expected = feats.amax(1, keepdim=True) if pool == "max" else feats.mean(1, keepdim=True)
        assert torch.allclose(att(feats), torch.sigmoid(expected))


@pytest.mark.parametrize("backbone", ["brain", "lung"])
def test_gradients_reach_both_branches(backbone):
    name = f"acat_{backbone}"
    model = build_model(name, **tiny_config(name, backbone)).train()
    x = torch.rand(2, 2, 1, 32, 64)
    sal = torch.rand_like(x).requires_grad_(True)
    model(x, sal).sum().backward()
    for part in ("trunk", "sal_trunk", "attention", "fusion", "slice_attention", "heads"):
        params = [(n, p) for n, p in model.named_parameters() if n.startswith(part + ".")]
        assert params, part
        for n, p in params:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
    assert sal.grad is not None and sal.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["smic", "hsm", "salclassnet"])
def test_competitors_use_the_saliency(name):
    torch.manual_seed(0)
    model = build_model(name, **tiny_config(name, "brain")).eval()
    x = torch.rand(1, 2, 1, 32, 64)
    sal = torch.rand_like(x).requires_grad_(True)
    out = model(x, sal)
    out.sum().backward()
    assert sal.grad.abs().sum() > 0


def _train_bn_stats(model, x, s=None):
    """Give BatchNorm real running statistics (the defaults make an untrained net's eval features vanish)."""
    batches = [x + 0.1 * torch.rand_like(x) for _ in range(2)]
    calibrate_batchnorm(model, [(b, s) if model.needs_saliency else b for b in batches])


@pytest.mark.parametrize("pooling", [{}, {"pooling": "topk", "topk": 3}, {"contralateral": True}])
def test_brain_mtl_mirroring_swaps_left_and_right(pooling):
    torch.manual_seed(0)
    model = build_model("brain_mtl", **TINY_BRAIN, **pooling)
    x = torch.rand(2, 3, 1, 32, 64)
    x[..., :20] += 0.5  # make the sides differ
    _train_bn_stats(model, x)
    mirrored = torch.flip(x, dims=[-1])
    with torch.no_grad():
        out, out_m = model(x), model(mirrored)
        (les, side), (les_m, side_m) = model.forward_heads(x), model.forward_heads(mirrored)
    assert not torch.allclose(out[:, 1], out[:, 2], atol=1e-4)  # left and right do differ here
    assert torch.allclose(out_m, out[:, [0, 2, 1, 3]], atol=1e-6)  # (none, left, right, both) -> (none, right, left, both)
    assert torch.allclose(les_m, les, atol=1e-6)
    assert torch.allclose(side_m, side[:, [1, 0, 2]], atol=1e-6)


def test_acat_brain_mirroring_is_symmetric_too():
    torch.manual_seed(0)
    model = build_model("acat_brain", **TINY_BRAIN)
    x = torch.rand(1, 2, 1, 32, 64)
    sal = torch.rand_like(x)
    _train_bn_stats(model, x, sal)
    with torch.no_grad():
        out, inter = model(x, sal, return_intermediates=True)
        out_m, inter_m = model(torch.flip(x, [-1]), torch.flip(sal, [-1]), return_intermediates=True)
    assert torch.allclose(out_m, out[:, [0, 2, 1, 3]], atol=1e-6)
    assert torch.allclose(inter_m["early"], torch.flip(inter["early"], [-1]), atol=1e-6)
    assert torch.allclose(inter_m["slice_weights"], inter["slice_weights"], atol=1e-6)


def test_hemisphere_split_puts_patient_right_first():
    from ACATCore.models.common import merge_hemispheres, split_hemispheres
    x = torch.arange(2 * 1 * 2 * 6, dtype=torch.float32).reshape(2, 1, 2, 6)
    halves = split_hemispheres(x)
    assert torch.equal(halves[:2], x[..., :3])  # right side: columns < W/2, unchanged
    assert torch.equal(halves[2:], torch.flip(x[..., 3:], [-1]))  # left side, mirrored
    assert torch.equal(merge_hemispheres(halves), x)


def test_input_validation_is_one_clear_error():
    model = build_model("brain_mtl", **TINY_BRAIN)
    with pytest.raises(InputError, match=r"expected x of shape \(B, S, 1, H, W\)"):
        model(torch.rand(2, 1, 32, 64))
    with pytest.raises(InputError, match="even"):
        model(torch.rand(1, 1, 1, 32, 65))
    with pytest.raises(InputError, match="too small"):
        model(torch.rand(1, 1, 1, 16, 64))
    with pytest.raises(InputError, match="floating"):
        model(torch.zeros(1, 1, 1, 32, 64, dtype=torch.int64))
    acat = build_model("acat_lung", **TINY_LUNG)
    x = torch.rand(1, 2, 1, 32, 32)
    with pytest.raises(InputError, match="saliency"):
        acat(x)
    with pytest.raises(InputError, match="saliency of the image's shape"):
        acat(x, torch.rand(1, 3, 1, 32, 32))
    for msg in (str(e) for e in [InputError("x")]):
        assert "\n" not in msg


def test_init_from_baseline_copies_both_branches():
    for backbone, base_name, cfg in (("brain", "brain_mtl", TINY_BRAIN), ("lung", "lung_resnet50", TINY_LUNG)):
        baseline = build_model(base_name, **cfg)
        for p in baseline.parameters():
            nn.init.normal_(p)
        acat = build_model(f"acat_{backbone}", **cfg)
        kept = acat.init_from_baseline(baseline)
        base_sd, acat_sd = baseline.state_dict(), acat.state_dict()
        for k, v in base_sd.items():
            assert torch.equal(acat_sd[k], v), k  # image branch and heads
            if k.startswith("trunk.") and "sal_" + k in acat_sd:
                assert torch.equal(acat_sd["sal_" + k], v), k  # saliency branch
        assert any(k.startswith("sal_trunk.") for k in acat_sd)
        assert all(k.split(".")[0] in ("attention", "fusion", "slice_attention") for k in kept)
    with pytest.raises(ConfigError, match="does not fit"):
        build_model("acat_brain", **TINY_BRAIN).init_from_baseline(build_model("brain_mtl"))
    with pytest.raises(ConfigError, match="brain_mtl"):
        build_model("acat_brain", **TINY_BRAIN).init_from_baseline(build_model("lung_resnet50", **TINY_LUNG))
    smic = build_model("smic", backbone="lung", **TINY_LUNG)
    base = build_model("lung_resnet50", **TINY_LUNG)
    smic.init_from_baseline(base)
    assert torch.equal(smic.heads[1].weight, base.heads[1].weight)


def test_conv_layer_pools_before_its_relu_with_the_same_numbers_and_gradients():
    """The brain trunk's layer pools before its ReLU (a quarter of the ReLU's work): conv-BN-ReLU-pool's
    outputs and gradients exactly, and still no in-place ReLU and the same parameter names."""
    from ACATCore.models.backbones import ConvLayer
    torch.manual_seed(0)
    layer = ConvLayer(3, 8, pool=True).train()
    assert [type(m).__name__ for m in layer] == ["Conv2d", "BatchNorm2d", "MaxPool2d", "ReLU"]
    assert not layer[3].inplace and set(dict(layer.named_parameters())) == {"0.weight", "1.weight", "1.bias"}
    paper_order = nn.Sequential(layer[0], layer[1], nn.ReLU(), nn.MaxPool2d(2))
    x = torch.randn(4, 3, 20, 16)
    outs, grads = [], []
    for net in (layer, paper_order):
        out = net(x)
        (out * torch.linspace(-1, 2, out.numel()).reshape(out.shape)).sum().backward()
        outs.append(out.detach())
        grads.append(layer[0].weight.grad.clone())
        layer.zero_grad()
    assert outs[0].shape == (4, 8, 10, 8) and (outs[0] == 0).any() and torch.equal(outs[0], outs[1])
    torch.testing.assert_close(grads[0], grads[1])
    assert [type(m).__name__ for m in ConvLayer(3, 8, pool=False)] == ["Conv2d", "BatchNorm2d", "ReLU"]


def test_autoencoder():
    ae = build_model("autoencoder")
    assert ae.config == {"stem_channels": 128, "encoder_channels": [6, 12, 16], "decoder_channels": [16, 12, 12],
                         "blocks_per_stage": 2}
    ae = build_model("autoencoder", stem_channels=8).eval()
    x = torch.rand(3, 1, 32, 40)
    with torch.no_grad():
        z = ae.encode(x)
        assert z.shape == (3, 16, 8, 10)
        assert ae.decode(z).shape == x.shape and ae(x).shape == x.shape
        vol = torch.rand(2, 3, 1, 32, 40)
        assert ae.encode(vol).shape == (2, 3, 16, 8, 10) and ae(vol).shape == vol.shape
        assert torch.allclose(ae(vol)[1], ae(vol[1]), atol=1e-5)
    ups = [m for m in ae.decoder.modules() if isinstance(m, nn.Upsample)]
    assert len(ups) == 2 and all(u.mode == "nearest" for u in ups)
    with pytest.raises(InputError, match="divisible by 4"):
        ae.encode(torch.rand(1, 1, 30, 40))
    with pytest.raises(InputError, match="latent"):
        ae.decode(torch.rand(1, 3, 8, 8))


def test_paper_sizes():
    """Default (paper) configurations at the paper's input sizes: shapes only, one slice, no gradients."""
    torch.manual_seed(0)
    with torch.no_grad():
        brain = build_model("brain_mtl").eval()
        assert brain(torch.rand(1, 1, 1, 400, 500)).shape == (1, 4)
        acat = build_model("acat_brain").eval()
        x = torch.rand(1, 1, 1, 400, 500)
        _, inter = acat(x, torch.rand_like(x), return_intermediates=True)
        assert inter["early"].shape == (1, 1, 1, 200, 250)
        assert inter["fused"].shape[-2:] == inter["late"].shape[-2:]  # conv 6-7 do not pool
        lung = build_model("acat_lung").eval()
        blocks = [b for layer in (lung.trunk[1], lung.trunk[2], lung.trunk[3], lung.trunk[4]) for b in layer]
        assert len(blocks) == 16 and type(blocks[0]).__name__ == "ResNetBottleneck"  # [3, 4, 6, 3]
        assert lung.heads[1].in_features == 2048
        x = torch.rand(1, 1, 1, 128, 128)
        _, inter = lung(x, torch.rand_like(x), return_intermediates=True)
        assert [tuple(inter[k].shape[-2:]) for k in ("early", "middle", "late", "fused")] == \
            [(32, 32), (16, 16), (8, 8), (4, 4)]  # fused 4x4 at 128x128, as in the authors' code
        vit = build_model("vit", backbone="lung").eval()
        assert len(vit.vit.blocks) == 6 and vit.vit.blocks[0].attn.num_heads == 16
        assert vit(x).shape == (1, 2)
        vit_brain = build_model("vit", backbone="brain")
        assert vit_brain.config["patch_size"] == 50 and vit_brain.config["image_size"] == [400, 500]


def test_contralateral_branches_see_the_mirrored_other_side():
    from ACATCore.models.common import split_hemispheres, split_hemispheres_contralateral
    x = torch.rand(2, 1, 4, 6)
    pairs, halves = split_hemispheres_contralateral(x), split_hemispheres(x)
    assert pairs.shape == (4, 2, 4, 3)
    assert torch.equal(pairs[:, :1], halves)                          # channel 0: the branch's own side
    assert torch.equal(pairs[:2, 1:], torch.flip(x[..., 3:], [-1]))   # right branch: the left side, mirrored
    assert torch.equal(pairs[2:, 1:], x[..., :3])                     # left branch: the right side
    # a lesion on one side changes the other side's branch input too (the comparison), not its own channel
    lesion = x.clone()
    lesion[0, ..., 1, 0] -= 0.5                                        # first scan, patient's right, column 0
    changed = (split_hemispheres_contralateral(lesion) != pairs).flatten(2).any(-1)
    assert changed.tolist() == [[True, False], [False, False], [False, True], [False, False]]


def test_contralateral_option_reaches_the_card_and_acat(tmp_path):
    from ACATCore.checkpoint import load_model, save_model
    torch.manual_seed(0)
    base = build_model("brain_mtl", **TINY_BRAIN, contralateral=True).eval()
    assert base.config["contralateral"] is True and base.trunk[0][0].in_channels == 2
    assert "contralateral" not in build_model("brain_mtl", **TINY_BRAIN).config   # paper cards unchanged
    x = torch.rand(2, 3, 1, 32, 64)
    save_model(base, tmp_path / "m.safetensors")
    loaded, card = load_model(tmp_path / "m.safetensors")
    assert card["model_config"]["contralateral"] is True
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x), base(x), atol=1e-6)
        acat = build_model("acat_brain", **TINY_BRAIN, contralateral=True, start="identity")
        kept = acat.init_from_baseline(base)                        # both branches take the 2-channel conv
        assert not any(k.startswith(("trunk.", "sal_trunk.", "heads.")) for k in kept), kept
        assert torch.allclose(acat.eval()(x, torch.rand_like(x)), base(x), atol=1e-5)
    with pytest.raises(ConfigError, match="brain models only"):
        build_model("acat_lung", contralateral=True, block_inplanes=[4, 4, 8, 8], layers=[1, 1, 1, 1])
    with pytest.raises(ConfigError, match="true or false"):
        build_model("brain_mtl", **TINY_BRAIN, contralateral="yes")


def test_topk_pooling_keeps_local_evidence_that_the_mean_dilutes():
    from ACATCore.models.common import spatial_pool
    fmap = torch.zeros(1, 2, 16, 16)
    fmap[0, 0, 3:5, 3:5] = 1.0                       # a lesion 2 x 2 cells wide in channel 0
    assert spatial_pool(fmap, "topk", 4)[0, 0] == 1.0 and spatial_pool(fmap, "mean")[0, 0] < 0.02
    model = build_model("brain_mtl", **TINY_BRAIN, pooling="topk", topk=5)
    assert model.config["pooling"] == "topk" and model.config["topk"] == 5
    assert "pooling" not in build_model("brain_mtl", **TINY_BRAIN).config      # paper cards unchanged
    with pytest.raises(ConfigError, match="pooling"):
        build_model("brain_mtl", **TINY_BRAIN, pooling="max")
