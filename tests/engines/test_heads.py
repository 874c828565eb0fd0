"""Fusion heads, all held to the same checks for any number of modalities M: shape, masking, the
all-absent row, gradients, ONNX parity. M = 4 is there to show a new modality needs no head change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tinymodels import HEAD_CONFIGS, HEAD_IDS, randomize, tiny_spec

from fusionstream.engines.export import export_graph
from fusionstream.engines.fusion import HEADS, FusionHead, fixed_arity, make_head
from fusionstream.engines.model import MultimodalModel, modality_dropout
from fusionstream.engines.spec import FUSION_HEADS

D, C, B = 16, 5, 6

heads = pytest.mark.parametrize(("name", "options"), HEAD_CONFIGS, ids=HEAD_IDS)
any_m = pytest.mark.parametrize("m", [1, 2, 3, 4], ids=lambda m: f"M{m}")


def build(name: str, options: dict[str, Any], m: int = 3, seed: int = 0) -> FusionHead:
    torch.manual_seed(seed)
    return randomize(make_head(name, D, C, modalities=m, **options)).eval()


def embeddings(m: int = 3, size: int = B, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(size, D, generator=generator) for _ in range(m)]


def all_masks(m: int) -> torch.Tensor:
    """Every presence pattern of M columns, twice, so each modality is absent in some rows and present in others."""
    rows = [[(i >> (m - 1 - c)) & 1 for c in range(m)] for i in range(2**m)]
    return torch.tensor(rows * 2, dtype=torch.float32)


def test_registry_matches_spec() -> None:
    assert tuple(HEADS) == FUSION_HEADS  # model.json validation uses FUSION_HEADS without importing torch
    with pytest.raises(ValueError, match="unknown fusion head"):
        make_head("nope", D, C)
    with pytest.raises(ValueError, match="at least 1"):
        make_head("concat", D, C, modalities=0)


@heads
@any_m
def test_output_shape_and_finite(name: str, options: dict[str, Any], m: int) -> None:
    head = build(name, options, m)
    logits = head(*embeddings(m), torch.ones(B, m))
    assert logits.shape == (B, C)
    assert torch.isfinite(logits).all()


@heads
def test_the_number_of_embeddings_is_checked(name: str, options: dict[str, Any]) -> None:
    head = build(name, options, 2)
    with pytest.raises(ValueError, match=f"{name} head built for 2 modalities: .* got 4 tensors"):
        head(*embeddings(3), torch.ones(B, 3))


@heads
@any_m
@pytest.mark.parametrize("junk", [1e6, -1e6, float("nan"), float("inf")], ids=["big", "-big", "nan", "inf"])
def test_absent_modality_has_no_influence(name: str, options: dict[str, Any], m: int, junk: float) -> None:
    head = build(name, options, m)
    masks = all_masks(m)
    emb = embeddings(m, len(masks))
    with torch.no_grad():
        reference = head(*emb, masks)
        for column in range(m):
            absent = masks[:, column] == 0
            spoiled = [e.clone() for e in emb]
            spoiled[column][absent] = junk
            torch.testing.assert_close(head(*spoiled, masks), reference, rtol=0, atol=1e-6)
    assert torch.isfinite(reference).all()


@heads
@any_m
def test_present_modalities_do_influence(name: str, options: dict[str, Any], m: int) -> None:
    # The converse of the test above, so a head that ignored everything could not pass both.
    head = build(name, options, m)
    emb = embeddings(m)
    mask = torch.ones(B, m)
    with torch.no_grad():
        reference = head(*emb, mask)
        for column in range(m):
            changed = [e.clone() for e in emb]
            changed[column] = torch.randn(B, D) * 3
            assert not torch.allclose(head(*changed, mask), reference)


@heads
@any_m
def test_all_absent_rows_are_finite_and_constant(name: str, options: dict[str, Any], m: int) -> None:
    head = build(name, options, m)
    emb = embeddings(m)
    emb[0][0] = float("nan")
    with torch.no_grad():
        logits = head(*emb, torch.zeros(B, m))
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, logits[:1].expand(B, C))  # learned "nothing", independent of inputs


@heads
@any_m
def test_forward_train_gives_scalar_aux_loss(name: str, options: dict[str, Any], m: int) -> None:
    head = build(name, options, m).train()
    logits, aux = head.forward_train(*embeddings(m), all_masks(m).repeat(B, 1)[:B])
    assert logits.shape == (B, C)
    assert aux.shape == () and torch.isfinite(aux) and aux >= 0
    if name == "vae":
        assert aux > 0  # KL + reconstruction


@heads
def test_per_modality_parameters_follow_m(name: str, options: dict[str, Any]) -> None:
    # Built for 3, a head has exactly the parameters it always had (the shipped model.pt loads into it:
    # test_encoders.py); each extra modality adds the same per-modality parameters, nothing else changes.
    shapes = {m: {k: tuple(v.shape) for k, v in build(name, options, m).state_dict().items()} for m in (2, 3, 4)}
    grown = {k for k in shapes[4] if k not in shapes[3] or shapes[4][k] != shapes[3][k]}
    assert grown, "nothing in the head depends on the number of modalities"
    for k in grown - set(shapes[3]):  # new entries are a per-modality module's (…s.3.…)
        assert ".3." in k, k
    for k in grown & set(shapes[3]):  # resized entries grew linearly in M
        step = np.subtract(shapes[4][k], shapes[3][k])
        assert (np.subtract(shapes[3][k], shapes[2][k]) == step).all(), k


@heads
def test_gradients_reach_every_encoder(name: str, options: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = MultimodalModel(tiny_spec(name, fusion_options=options)).train()
    spec = model.spec
    video = torch.rand(4, *spec.input_shapes["video"])
    audio = torch.rand(4, *spec.input_shapes["audio"]) * 2 - 1
    text = torch.randint(1, spec.text_buckets, (4, spec.text_max_len))
    logits, aux = model.forward_train(video, audio, text, torch.ones(4, 3))
    (torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])) + aux).backward()
    for part in (*model.encoders.values(), model.head):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), f"no gradient reaches {type(part).__name__}"


@heads
@pytest.mark.parametrize("m", [2, 3], ids=lambda m: f"M{m}")
def test_onnx_export_parity(name: str, options: dict[str, Any], m: int, tmp_path: Path) -> None:
    import onnxruntime as ort

    head = build(name, options, m)
    fusion = fixed_arity(head, m).eval()  # torch.export binds inputs to named parameters
    names = [f"emb{i}" for i in range(m)]
    path = export_graph(fusion, (*embeddings(m, 2), torch.ones(2, m)), tmp_path / "fusion.onnx",
                        input_names=[*names, "mask"], output_name="logits")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    masks = all_masks(m)
    for size, seed in ((1, 2), (5, 3), (len(masks), 4)):
        emb = embeddings(m, size, seed)
        mask = masks if size == len(masks) else (torch.rand(size, m) < 0.6).float()
        for column in range(m):
            emb[column][mask[:, column] == 0] = float("nan")  # ONNX Runtime must mask exactly like torch
        with torch.no_grad():
            expected = torch.softmax(head(*emb, mask), dim=-1).numpy()
        feeds = {n: e.numpy() for n, e in zip(names, emb, strict=True)} | {"mask": mask.numpy()}
        got = torch.softmax(torch.from_numpy(session.run(["logits"], feeds)[0]), dim=-1).numpy()
        assert got.shape == (size, C) and np.isfinite(got).all()
        assert np.abs(got - expected).max() / np.abs(expected).max() <= 1e-4


def test_weighted_weights_renormalise_over_present() -> None:
    for m in (2, 4):
        masks = all_masks(m)
        weights = build("weighted", {}, m).modality_weights(masks)
        np.testing.assert_allclose(weights.sum(1).detach().numpy(), masks.amax(1).numpy(), rtol=1e-6)
        assert (weights[masks == 0] == 0).all()


def test_decision_vote_follows_a_lone_modality() -> None:
    head = build("decision", {"combine": "vote"})
    emb = embeddings()
    mask = torch.tensor([[0.0, 1.0, 0.0]]).expand(B, 3)
    with torch.no_grad():
        probs = torch.softmax(head(*emb, mask), dim=-1)
        own = head.modality_probs(*emb, mask)[:, 1]
    assert torch.equal(probs.argmax(1), own.argmax(1))
    assert (probs.amax(1) > 0.99).all()  # one vote is a unanimous vote


def test_vae_all_absent_posterior_is_the_prior() -> None:
    head = build("vae", {})
    mu, logvar = head.posterior(*embeddings(), torch.zeros(B, 3))
    assert torch.equal(mu, torch.zeros_like(mu)) and torch.equal(logvar, torch.zeros_like(logvar))


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_modality_dropout(p: float) -> None:
    mask = all_masks(3).repeat(50, 1)
    dropped = modality_dropout(mask, p, generator=torch.Generator().manual_seed(0))
    assert ((dropped == 1) <= (mask == 1)).all()  # never invents a modality
    had_any = mask.amax(1) > 0
    assert (dropped[had_any].amax(1) == 1).all()  # keep_one: never empties a row
    if p == 0.0:
        assert torch.equal(dropped, mask)
    if p == 1.0:
        assert (dropped[had_any].sum(1) == 1).all()
    assert torch.equal(modality_dropout(mask, 1.0, keep_one=False), torch.zeros_like(mask))
